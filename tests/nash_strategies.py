"""Hypothesis strategies for feasible Nash bargaining problems (S2, S6, docs/math.md).

Every strategy returns ``(G, K)`` with G a float64 torch tensor of shape (d, N) (domain vectors
τ_i as columns) and K = GᵀG (N, N). All generated problems have a bargain (S6):

* ``gaussian_problems``: full-rank Gaussian G with d ≥ N, so K ≻ 0 and no v ≥ 0, v ≠ 0 has Gv = 0.
* ``cone_problems``: τ_i = w + noise_i with ⟨τ_i, w⟩ > 0 for every i (enforced), so ΔE = w gives
  every expert positive utility (S6); d < N is allowed, K is then singular but feasible.
* ``scaled_problems``: either of the above with columns rescaled by c_i = 10**U(lo, hi).

The hard strategies at the end (``antiparallel_problems``, ``wide_cone_problems``,
``hard_problems``) are the exception: they straddle the S6 boundary on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

__all__ = [
    "HARD_N_MAX",
    "antiparallel_G",
    "antiparallel_problems",
    "cone_G",
    "cone_problems",
    "feasible_problems",
    "gaussian_G",
    "gaussian_problems",
    "hard_problems",
    "rescale_columns",
    "scaled_problems",
    "spread_norms",
    "well_scaled_problems",
    "wide_cone_G",
    "wide_cone_problems",
]


def gaussian_G(n: int, d: int, seed: int) -> np.ndarray:
    """Full-rank Gaussian (d, N), d ≥ N (rank N with probability 1)."""
    assert d >= n
    return np.random.default_rng(seed).standard_normal((d, n))


def cone_G(n: int, d: int, seed: int, spread: float = 0.5) -> np.ndarray:
    """Experts in a cone around a unit vector w: τ_i = w + spread·noise_i, ⟨τ_i, w⟩ > 0."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    noise = rng.standard_normal((d, n))
    noise -= np.outer(w, w @ noise)  # orthogonal to w: ⟨τ_i, w⟩ = 1 exactly
    G = w[:, None] + spread * noise / np.linalg.norm(noise, axis=0, keepdims=True).clip(1e-300)
    assert np.all(w @ G > 0)
    return G


def rescale_columns(G: np.ndarray, seed: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    """Multiply column i by c_i = 10**U(lo, hi)."""
    c = 10.0 ** np.random.default_rng(seed + 1).uniform(lo, hi, G.shape[1])
    return G * c[None, :]


def _pack(G: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    Gt = torch.from_numpy(np.ascontiguousarray(G, dtype=np.float64))
    return Gt, Gt.T @ Gt


@st.composite
def gaussian_problems(draw: st.DrawFn, n_min: int = 2, n_max: int = 8):
    n = draw(st.integers(n_min, n_max))
    d = draw(st.integers(n, n + 12))
    seed = draw(st.integers(0, 2**32 - 1))
    return _pack(gaussian_G(n, d, seed))


@st.composite
def cone_problems(draw: st.DrawFn, n_min: int = 2, n_max: int = 8):
    n = draw(st.integers(n_min, n_max))
    d = draw(st.integers(2, n + 6))  # d < N allowed: singular but feasible K
    seed = draw(st.integers(0, 2**32 - 1))
    spread = draw(st.floats(0.05, 2.0))
    return _pack(cone_G(n, d, seed, spread))


@st.composite
def scaled_problems(draw: st.DrawFn, n_min: int = 2, n_max: int = 8,
                    lo: float = -2.0, hi: float = 2.0):
    G, _ = draw(st.one_of(gaussian_problems(n_min, n_max), cone_problems(n_min, n_max)))
    seed = draw(st.integers(0, 2**32 - 1))
    return _pack(rescale_columns(G.numpy(), seed, lo, hi))


def feasible_problems(n_min: int = 2, n_max: int = 8):
    """Any of (a) Gaussian, (b) cone, (c) rescaled columns."""
    return st.one_of(
        gaussian_problems(n_min, n_max), cone_problems(n_min, n_max),
        scaled_problems(n_min, n_max),
    )


@st.composite
def well_scaled_problems(draw: st.DrawFn, n_min: int = 2, n_max: int = 8):
    """Column norms in [0.5, 2] (for the CCP baseline, which is only reliable there)."""
    G, _ = draw(st.one_of(gaussian_problems(n_min, n_max), cone_problems(n_min, n_max)))
    seed = draw(st.integers(0, 2**32 - 1))
    Gn = G.numpy() / np.linalg.norm(G.numpy(), axis=0, keepdims=True)
    c = np.random.default_rng(seed).uniform(0.5, 2.0, Gn.shape[1])
    return _pack(Gn * c[None, :])


# ------------------------------------------------------------------------------------------
# The hard region (near-infeasible problems, issue "near-infeasible regime")
# ------------------------------------------------------------------------------------------
#
# Every hard strategy returns ``(G, K)`` like the ones above, but the problems need NOT have a
# bargain: they sit on both sides of the S6 boundary, where the solvers switch from the
# residual test to the rounding-floor test (α̂ large) and then to the S6 linear programme.
# Knobs: cosines down to −1 + 1e-12, cone apex angles up to π − 2e-6, expert norms spread over
# 1e-6…1e6 and N up to 33.

#: Expert norms ‖τ_i‖ = 10**U(−NORM_DECADES, NORM_DECADES): 1e-6…1e6, so K spans 1e-12…1e12.
NORM_DECADES = 6.0
#: Largest N drawn (one past the 32 of the slow sweep, to leave the powers of two).
HARD_N_MAX = 33


def antiparallel_G(delta: float, n_extra: int, d: int, seed: int, extra: str = "wedge",
                   spread: float = 0.5) -> np.ndarray:
    """(d, 2 + n_extra): τ_0, τ_1 with cosine exactly −1 + δ (up to float64 rounding of cos φ),
    plus ``n_extra`` further unit experts, all columns of unit norm (rescale separately).

    τ_0 = e_0, τ_1 = −cos φ e_0 + sin φ e_1 with φ = 2·asin(√(δ/2)), so 1 + cos∠ = 1 − cos φ = δ.
    The wedge where both utilities are positive is around w ∝ (φ/2) e_0 + e_1. ``extra``:
    "wedge": τ_k = w + spread·noise_k (noise ⊥ w, so ⟨τ_k, w⟩ > 0: the bargain still exists, S6);
    "gauss": Gaussian directions (usually puts 0 in the cone: no bargain).
    """
    assert d >= 2 and 0.0 < delta <= 2.0
    rng = np.random.default_rng(seed)
    phi = 2.0 * math.asin(math.sqrt(delta / 2.0))
    G = np.zeros((d, 2 + n_extra))
    G[0, 0] = 1.0
    G[0, 1], G[1, 1] = -math.cos(phi), math.sin(phi)
    if n_extra:
        if extra == "wedge":
            w = np.zeros(d)
            w[0], w[1] = phi / 2.0, 1.0
            w /= np.linalg.norm(w)
            noise = rng.standard_normal((d, n_extra))
            noise -= np.outer(w, w @ noise)
            noise /= np.linalg.norm(noise, axis=0, keepdims=True).clip(1e-300)
            X = w[:, None] + spread * noise
        else:
            X = rng.standard_normal((d, n_extra))
        G[:, 2:] = X / np.linalg.norm(X, axis=0, keepdims=True)
    return G


def wide_cone_G(etas: np.ndarray, d: int, seed: int) -> np.ndarray:
    """(d, N) unit experts τ_i = η_i w + √(1 − η_i²) u_i with w = e_0, u_i ⊥ w random unit.

    η_i = cos of the angle between τ_i and the cone's axis: η_i → 0⁺ opens the apex angle to π
    (all η_i > 0: the bargain exists, ΔE = w, S6); η_i < 0 puts τ_i slightly past the half-space
    (the bargain may or may not exist: the LP decides). In d = 2 every u_i is ±e_1, so pairs are
    anti-parallel up to ≈ η_i η_j, the hardest case.
    """
    rng = np.random.default_rng(seed)
    n = etas.shape[0]
    U = rng.standard_normal((d - 1, n))
    U /= np.linalg.norm(U, axis=0, keepdims=True).clip(1e-300)
    G = np.zeros((d, n))
    G[0] = etas
    G[1:] = U * np.sqrt(np.clip(1.0 - etas**2, 0.0, None))
    return G


def spread_norms(G: np.ndarray, seed: int, decades: float = NORM_DECADES) -> np.ndarray:
    """Rescale column i to norm 10**U(−decades, decades) (S9: the bargain only rescales)."""
    c = 10.0 ** np.random.default_rng(seed + 2).uniform(-decades, decades, G.shape[1])
    return G / np.linalg.norm(G, axis=0, keepdims=True) * c[None, :]


@st.composite
def antiparallel_problems(draw: st.DrawFn, n_max: int = HARD_N_MAX, log_delta_min: float = -12.0):
    """A nearly anti-parallel pair, 1 + cos = δ = 10**U(log_delta_min, 0), plus up to n_max − 2
    other experts (in the pair's feasible wedge or Gaussian), norms over 1e-6…1e6."""
    log_delta = draw(st.floats(log_delta_min, 0.0))
    n_extra = draw(st.integers(0, n_max - 2))
    d = draw(st.integers(2, min(n_extra + 4, 12)))
    extra = draw(st.sampled_from(["wedge", "gauss"]))
    spread = draw(st.floats(0.01, 2.0))
    seed = draw(st.integers(0, 2**32 - 1))
    G = antiparallel_G(10.0**log_delta, n_extra, d, seed, extra, spread)
    return _pack(spread_norms(G, seed))


@st.composite
def wide_cone_problems(draw: st.DrawFn, n_max: int = HARD_N_MAX, log_eta_min: float = -6.0):
    """A cone of N ≤ n_max experts whose apex angle tends to π: η_i = ±10**U(log_eta_min, 0)
    (a "straddle" draws some η_i < 0), d in 2…6, norms over 1e-6…1e6."""
    n = draw(st.integers(2, n_max))
    d = draw(st.integers(2, 6))
    mode = draw(st.sampled_from(["inside", "straddle"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed + 3)
    etas = 10.0 ** rng.uniform(log_eta_min, 0.0, n)
    if mode == "straddle":
        flip = rng.random(n) < draw(st.floats(0.05, 0.5))
        etas = np.where(flip, -etas, etas)
    return _pack(spread_norms(wide_cone_G(etas, d, seed), seed))


def hard_problems(n_max: int = HARD_N_MAX):
    """Either hard family (near-anti-parallel pairs, wide cones)."""
    return st.one_of(antiparallel_problems(n_max), wide_cone_problems(n_max))
