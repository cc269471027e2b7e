"""Hypothesis strategies for feasible Nash bargaining problems (SPEC S2, S6).

Every strategy returns ``(G, K)`` with G a float64 torch tensor of shape (d, N) (domain vectors
τ_i as columns) and K = GᵀG (N, N). All generated problems have a bargain (S6):

* ``gaussian_problems``: full-rank Gaussian G with d ≥ N, so K ≻ 0 and no v ≥ 0, v ≠ 0 has Gv = 0.
* ``cone_problems``: τ_i = w + noise_i with ⟨τ_i, w⟩ > 0 for every i (enforced), so ΔE = w gives
  every expert positive utility (S6); d < N is allowed, K is then singular but feasible.
* ``scaled_problems``: either of the above with columns rescaled by c_i = 10**U(lo, hi).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

__all__ = [
    "cone_G",
    "cone_problems",
    "feasible_problems",
    "gaussian_G",
    "gaussian_problems",
    "rescale_columns",
    "scaled_problems",
    "well_scaled_problems",
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
