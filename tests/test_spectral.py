"""S19: step matrices, spectral radius, simulated rates, and the grid findings (float64).

Independent references used here (none copied from the code's output):
- the matrix R and cubic of S19, typed in from docs/math.md §4;
- the heavy-ball factorisation (λ − β)(λ² − (1 + β − γh)λ + β) for real β (docs/math.md §4);
- closed forms: β = 0 ⇒ ρ = max_h |1 − γh|; H = cI, real underdamped β ⇒ ρ = √β; heavy-ball
  optimum over real β for H = cI, ρ* = |1 − √(γc)| at β* = (1 − √(γc))²; bilinear game,
  β = 0 ⇒ ρ = √(1 + γ²σ²);
- the triple-root solution of the cubic for H = cI, solved here from its three matching
  equations.

Eigenvalue conditioning. A simple eigenvalue of R moves by ≈ κ·eps·‖R‖ under rounding, with κ
growing like 1/δ as another root approaches at distance δ; at a double root (heavy ball at
critical damping, or β = 0 with γh = 1) it moves by ≈ √(eps‖R‖) ~ 1e-8, at a triple root by
≈ (eps‖R‖)^{1/3} ~ 1e-5. The matrix-vs-cubic test therefore uses a tolerance computed from the
root gaps of each cubic (:func:`rho_tolerance`) instead of one fixed number, and the defective
cases are pinned separately with their own √eps / ∛eps tolerances.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from namex_ref.momentum import (
    complex_momentum_step,
    equivalent_complex_beta,
    quaternion_momentum_step,
)
from namex_ref.spectral import (
    PAPER_PHASES,
    best_on_grid,
    bilinear_game_matrix,
    cooperative_matrix,
    cubic_coefficients,
    fitted_rate,
    momentum_grid_main,
    momentum_matrix,
    plot_rho_grid,
    quaternion_momentum_matrix,
    rho_grid,
    simulate,
    spectral_radius,
    spectral_radius_from_cubic,
)

EPS = float(np.finfo(np.float64).eps)
#: Relative agreement of the fitted tail rate with ρ(R). Measured over ~100 random (H, β, γ)
#: with ρ in (0.2, 0.97), runs to a 1e-120 decay: worst 0.3 % (close subdominant moduli and
#: the j^k factor of near-defective modes bias a finite tail). 1 % leaves margin.
RATE_RTOL = 1e-2
#: Near-defective matrices: double root ⇒ error ~ √(eps‖R‖) ≈ 1.5e-8‖R‖^½; we allow 100×.
DOUBLE_ROOT_TOL = 100 * math.sqrt(EPS)
#: Triple root ⇒ error ~ (eps‖R‖)^{1/3} ≈ 6e-6; we allow 30×.
TRIPLE_ROOT_TOL = 30 * EPS ** (1 / 3)

seeds = st.integers(0, 2**32 - 1)


def spec_matrix(H: np.ndarray, beta: complex, gamma: float) -> np.ndarray:
    """R exactly as written in docs/math.md §4 (S19, real γ)."""
    d = H.shape[0]
    eye = np.eye(d)
    gb = gamma * beta
    return np.block(
        [
            [beta.real * eye, -beta.imag * eye, -H],
            [beta.imag * eye, beta.real * eye, np.zeros((d, d))],
            [gb.real * eye, -gb.imag * eye, eye - gamma * H],
        ]
    )


def spec_cubic(h: complex, beta: complex, gamma: float) -> np.ndarray:
    """docs/math.md §4 cubic: λ³ − (1 + 2Reβ − γh)λ² + (|β|² + 2Reβ − γh Reβ)λ − |β|²."""
    a, m = beta.real, abs(beta) ** 2
    return np.array([1, -(1 + 2 * a - gamma * h), m + 2 * a - gamma * h * a, -m], dtype=complex)


def rho_tolerance(h_eigs: np.ndarray, beta: complex, gamma: complex, scale: float) -> float:
    """Error bound for ρ from LAPACK on R, from the root geometry of each cubic.

    For the dominant root λ of each cubic: other roots at distances δ1 ≤ δ2. Both within 1e-2
    ⇒ near-triple, (eps·s)^{1/3}; otherwise max(eps·s/δ1, √(eps·s)) (a simple root's
    condition grows like 1/δ1 until the pair behaves like a double root). ×100 margin.
    """
    tol = 0.0
    for h in h_eigs:
        r = np.roots(spec_cubic(complex(h), complex(beta), complex(gamma).real))
        lam = r[np.argmax(np.abs(r))]
        gaps = np.sort(np.abs(r - lam))[1:]
        if gaps[1] < 1e-2:
            t = (EPS * scale) ** (1 / 3)
        else:
            t = max(EPS * scale / max(gaps[0], 1e-300), math.sqrt(EPS * scale))
        tol = max(tol, 100 * t)
    return tol


def random_h(seed: int, kind: str, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, eigenvalues): symmetric with spectrum in [−0.5, 3], or a bilinear game."""
    rng = np.random.default_rng(seed)
    if kind == "bilinear":
        sig = rng.uniform(0.1, 2.0, size=max(1, d // 2))
        return bilinear_game_matrix(sig), np.concatenate([1j * sig, -1j * sig])
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    h = rng.uniform(-0.5, 3.0, size=d)
    return Q @ np.diag(h) @ Q.T, h.astype(complex)


def complex_state(mu: torch.Tensor, e: torch.Tensor) -> np.ndarray:
    return np.concatenate([mu[..., 0].numpy(), mu[..., 1].numpy(), e.numpy()])


# ----------------------------------------------------------------------------- matrix = step


@settings(max_examples=60, deadline=None)
@given(
    seed=seeds, d=st.integers(1, 4), m=st.floats(0.0, 1.5), phi=st.floats(-math.pi, math.pi),
    g_re=st.floats(-2.0, 2.0), g_im=st.sampled_from([0.0, 0.7, -1.3]),
)
def test_matrix_is_one_complex_step(
    seed: int, d: int, m: float, phi: float, g_re: float, g_im: float
) -> None:
    """s' = R s equals one S17 step with ΔE = −H(E − E*), for any μ (not only μ = 0)."""
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(d, d))
    beta = m * complex(math.cos(phi), math.sin(phi))
    gamma = complex(g_re, g_im)
    mu = torch.from_numpy(rng.normal(size=(d, 2)))
    e = torch.from_numpy(rng.normal(size=d))
    mu1, e1 = complex_momentum_step(mu, -(torch.from_numpy(H) @ e), e, beta=beta, gamma=gamma)
    R = momentum_matrix(H, beta, gamma)
    assert R.shape == (3 * d, 3 * d)
    s = complex_state(mu, e)
    scale = (1 + np.abs(R).sum(1).max()) * (1 + np.abs(s).max())
    np.testing.assert_allclose(R @ s, complex_state(mu1, e1), rtol=0, atol=64 * EPS * scale)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=st.integers(1, 4), m=st.floats(0.0, 1.5), phi=st.floats(-math.pi, math.pi),
       gamma=st.floats(-2.0, 2.0))
def test_matrix_equals_spec_for_real_gamma(
    seed: int, d: int, m: float, phi: float, gamma: float
) -> None:
    """The code's R is docs/math.md §4's R (real γ): the documented matrix is the derived step."""
    H = np.random.default_rng(seed).normal(size=(d, d))
    beta = m * complex(math.cos(phi), math.sin(phi))
    np.testing.assert_allclose(
        momentum_matrix(H, beta, gamma), spec_matrix(H, beta, gamma), rtol=4 * EPS, atol=0
    )


@settings(max_examples=40, deadline=None)
@given(seed=seeds, d=st.integers(1, 3), norm=st.floats(0.0, 1.5), gamma=st.floats(-2.0, 2.0))
def test_quaternion_matrix_is_one_quaternion_step(
    seed: int, d: int, norm: float, gamma: float
) -> None:
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(d, d))
    raw = rng.normal(size=4)
    bq = tuple(float(x) for x in norm * raw / np.linalg.norm(raw))
    mu = torch.from_numpy(rng.normal(size=(d, 4)))
    e = torch.from_numpy(rng.normal(size=d))
    mu1, e1 = quaternion_momentum_step(mu, -(torch.from_numpy(H) @ e), e, beta=bq, gamma=gamma)
    Q = quaternion_momentum_matrix(H, bq, gamma)
    assert Q.shape == (5 * d, 5 * d)
    s = np.concatenate([mu[:, c].numpy() for c in range(4)] + [e.numpy()])
    s1 = np.concatenate([mu1[:, c].numpy() for c in range(4)] + [e1.numpy()])
    scale = (1 + np.abs(Q).sum(1).max()) * (1 + np.abs(s).max())
    np.testing.assert_allclose(Q @ s, s1, rtol=0, atol=64 * EPS * scale)


# ----------------------------------------------------------------------------- ρ: matrix = cubic


@settings(max_examples=80, deadline=None)
@given(
    seed=seeds, kind=st.sampled_from(["symmetric", "bilinear"]), d=st.integers(1, 4),
    m=st.floats(0.0, 0.999), phi=st.floats(-math.pi, math.pi), gamma=st.floats(0.0, 2.0),
)
def test_rho_matrix_equals_rho_cubic(
    seed: int, kind: str, d: int, m: float, phi: float, gamma: float
) -> None:
    """spec(R) = ∪_h roots of the cubic (S19). H normal (symmetric or bilinear blocks), so
    the only ill-conditioning is the cubic's own root clustering (see rho_tolerance)."""
    H, hs = random_h(seed, kind, d)
    beta = m * complex(math.cos(phi), math.sin(phi))
    R = momentum_matrix(H, beta, gamma)
    rho_m = spectral_radius(R)
    rho_c = spectral_radius_from_cubic(hs, beta, gamma)
    tol = rho_tolerance(hs, beta, gamma, float(np.linalg.norm(R, 2)))
    assert abs(rho_m - rho_c) <= tol, (rho_m, rho_c, tol)
    # the code's cubic is the documented S19 cubic (real γ), coefficient by coefficient
    for h in hs:
        np.testing.assert_allclose(
            cubic_coefficients(complex(h), beta, gamma), spec_cubic(complex(h), beta, gamma),
            rtol=0, atol=16 * EPS * (1 + abs(h)) * (1 + gamma),
        )


@settings(max_examples=30, deadline=None)
@given(seed=seeds, m=st.floats(0.05, 0.95), phi=st.floats(-math.pi, math.pi),
       g=st.complex_numbers(max_magnitude=2.0, allow_nan=False, allow_infinity=False))
def test_rho_matrix_equals_cubic_complex_gamma(seed: int, m: float, phi: float, g: complex) -> None:
    """Our complex-γ extension: R with I − Re(γ)H and the cubic with Re(γβ̄) agree."""
    H, hs = random_h(seed, "symmetric", 3)
    beta = m * complex(math.cos(phi), math.sin(phi))
    R = momentum_matrix(H, beta, g)
    tol = rho_tolerance(hs, beta, g, float(np.linalg.norm(R, 2)))  # same root geometry bound
    got = np.sort_complex(np.linalg.eigvals(R))
    want = np.concatenate([np.roots(cubic_coefficients(complex(h), beta, g)) for h in hs])
    # every eigenvalue of R is a root of some cubic (multiset match via nearest neighbours)
    for lam in got:
        assert np.min(np.abs(want - lam)) <= max(tol, TRIPLE_ROOT_TOL)
    assert abs(spectral_radius(R) - spectral_radius_from_cubic(hs, beta, g)) <= max(
        tol, TRIPLE_ROOT_TOL
    )


@settings(max_examples=40, deadline=None)
@given(beta=st.floats(-0.99, 0.99), gamma=st.floats(0.0, 2.0), h=st.floats(-1.0, 3.0))
def test_real_beta_cubic_factorises_as_heavy_ball(beta: float, gamma: float, h: float) -> None:
    """docs/math.md §4: real β ⇒ cubic = (λ − β)(λ² − (1 + β − γh)λ + β)."""
    want = np.polymul([1.0, -beta], [1.0, -(1 + beta - gamma * h), beta])
    np.testing.assert_allclose(
        cubic_coefficients(h, beta, gamma).real, want, rtol=0, atol=16 * EPS * (2 + abs(gamma * h))
    )


def test_defective_cases_are_only_sqrt_eps_accurate() -> None:
    """Double roots: ρ from LAPACK and from numpy.roots agree with the exact value only to
    ~√eps — the reason the general test cannot use a 1e-12 tolerance."""
    # heavy ball at critical damping, H = cI: double root √β* = 1 − √(γc)
    for gc in (0.3, 1.5, 2.0):
        beta = (1 - math.sqrt(gc)) ** 2
        exact = abs(1 - math.sqrt(gc))
        H = cooperative_matrix(1.0, 3)
        assert abs(spectral_radius(momentum_matrix(H, beta, gc)) - exact) <= DOUBLE_ROOT_TOL
        assert abs(spectral_radius_from_cubic([1.0], beta, gc) - exact) <= DOUBLE_ROOT_TOL
    # β = 0, γc = 1: R is nilpotent (R² = 0 on this H), ρ = 0 exactly
    R = momentum_matrix(cooperative_matrix(2.0, 2), 0.0, 0.5)
    np.testing.assert_allclose(R @ R, 0.0, atol=0)
    assert spectral_radius(R) <= DOUBLE_ROOT_TOL


# ----------------------------------------------------------------------------- grid


def test_rho_grid_matches_pointwise() -> None:
    rng = np.random.default_rng(3)
    hs = np.array([0.3, 1.7, 0.8j, -0.8j])
    moduli, phases, gammas = rng.uniform(0, 0.99, 4), rng.uniform(-3, 3, 5), [0.2, 0.9]
    grid = rho_grid(hs, moduli, phases, gammas)
    assert grid.shape == (4, 5, 2)
    H = np.zeros((4, 4))
    H[0, 0], H[1, 1] = 0.3, 1.7
    H[2:, 2:] = bilinear_game_matrix([0.8])
    for i, m in enumerate(moduli):
        for j, p in enumerate(phases):
            for k, g in enumerate(gammas):
                beta = m * complex(math.cos(p), math.sin(p))
                want = spectral_radius_from_cubic(hs, beta, g)
                assert abs(grid[i, j, k] - want) <= 1e-10
                assert abs(spectral_radius(momentum_matrix(H, beta, g)) - want) <= 1e-8


@settings(max_examples=25, deadline=None)
@given(seed=seeds, norm=st.floats(0.05, 0.95), gamma=st.floats(0.05, 1.5),
       kind=st.sampled_from(["symmetric", "bilinear"]))
def test_quaternion_rho_equals_complex_rho(seed: int, norm: float, gamma: float, kind: str) -> None:
    """S18 fact in spectral form: ρ(Q(β)) = ρ(R(β_c)). The extra buffer modes orthogonal to
    span{1, Im β} have eigenvalues β_c, β̄_c, and |β_c| ≤ |β|^{2/3} ≤ ρ(R) (product of roots)."""
    rng = np.random.default_rng(seed)
    H, hs = random_h(seed, kind, 2)
    raw = rng.normal(size=4)
    bq = tuple(float(x) for x in norm * raw / np.linalg.norm(raw))
    bc = equivalent_complex_beta(bq)
    rq = spectral_radius(quaternion_momentum_matrix(H, bq, gamma))
    R = momentum_matrix(H, bc, gamma)
    tol = max(rho_tolerance(hs, bc, gamma, float(np.linalg.norm(R, 2))), 1e-10)
    assert abs(rq - spectral_radius(R)) <= tol


# ----------------------------------------------------------------------------- simulated rates


@settings(max_examples=12, deadline=None)
@given(seed=seeds, kind=st.sampled_from(["symmetric", "bilinear"]), m=st.floats(0.1, 0.95),
       phi=st.floats(-math.pi, math.pi), gamma=st.floats(0.05, 1.0))
def test_simulated_rate_matches_rho(
    seed: int, kind: str, m: float, phi: float, gamma: float
) -> None:
    """Lorraine et al. Thm 1 made concrete: iterating complex_momentum_step on ΔE = −H(E − E*)
    decays at the rate ρ(R). Fit over the last half of a run to a 1e-120 decay."""
    rng = np.random.default_rng(seed)
    H = rng.normal(size=(3, 3))
    H = H @ H.T / 3 + 0.2 * np.eye(3) if kind == "symmetric" else bilinear_game_matrix([1.0])
    beta = m * complex(math.cos(phi), math.sin(phi))
    rho = spectral_radius(momentum_matrix(H, beta, gamma))
    assume(0.2 < rho < 0.95)
    steps = math.ceil(math.log(1e-120) / math.log(rho))
    e0 = rng.normal(size=H.shape[0])
    for observable in ("error", "state"):
        rate = fitted_rate(simulate(H, beta, gamma, e0, steps, observable=observable))
        assert abs(rate / rho - 1) <= RATE_RTOL, (observable, rate, rho)


def test_simulated_rate_quaternion_and_divergent() -> None:
    """Same for S18 (rate = ρ of the 5-block matrix), and for a divergent case (ρ > 1)."""
    rng = np.random.default_rng(11)
    H = rng.normal(size=(3, 3))
    H = H @ H.T / 3 + 0.2 * np.eye(3)
    bq = (0.5, 0.3, -0.2, 0.4)
    rho = spectral_radius(quaternion_momentum_matrix(H, bq, 0.4))
    steps = math.ceil(math.log(1e-120) / math.log(rho))
    rate = fitted_rate(simulate(H, bq, 0.4, rng.normal(size=3), steps, observable="state"))
    assert abs(rate / rho - 1) <= RATE_RTOL
    Hb = bilinear_game_matrix([1.0])
    rho = spectral_radius(momentum_matrix(Hb, 0.5, 0.5))  # real β on a bilinear game
    assert rho > 1
    rate = fitted_rate(simulate(Hb, 0.5, 0.5, np.array([1.0, 0.0]), 300, observable="state"))
    assert abs(rate / rho - 1) <= RATE_RTOL


# ----------------------------------------------------------------------------- bilinear game

BILINEAR_MODULI = np.linspace(0.0, 0.99, 34)
BILINEAR_GAMMAS = np.linspace(0.05, 2.0, 12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_bilinear_real_beta_never_converges(sigma: float) -> None:
    """Real β (φ ∈ {0, π}), any |β| and γ on the grid: ρ ≥ 1. Proof: for h = ±iσ the cubic is
    (λ − β)·q(λ), q = λ² + c1λ + β, c1 = −(1 + β) ± iγσ; Schur–Cohn needs
    |c1 − c̄1β| < 1 − β² for both roots of q inside the disk, but
    |c1 − c̄1β| = (1 + β)·√((1 − β)² + γ²σ²) ≥ 1 − β²."""
    hs = [1j * sigma, -1j * sigma]
    rho = rho_grid(hs, BILINEAR_MODULI, [0.0, math.pi], BILINEAR_GAMMAS)
    assert rho.min() >= 1 - 1e-12
    # β = 0: ρ = |1 − iγσ| = √(1 + γ²σ²)
    want = np.sqrt(1 + (BILINEAR_GAMMAS * sigma) ** 2)
    np.testing.assert_allclose(rho[0, 0, :], want, rtol=1e-12)


def test_bilinear_nonzero_phase_converges() -> None:
    """σ = 1, γ = 0.5: some β = |β|e^{iφ}, φ ∉ {0, π}, has ρ < 1 (this 100×181 grid finds 0.902
    at |β| = 0.68, |φ| = 64°; the fine optimum is 0.889 at 0.672, 62.7°); simulation confirms
    decay, while real β with the same modulus grows."""
    sigma, gamma = 1.0, 0.5
    H = bilinear_game_matrix([sigma])
    moduli = np.linspace(0.0, 0.99, 100)
    phases = np.linspace(-math.pi, math.pi, 181)
    grid = rho_grid([1j * sigma, -1j * sigma], moduli, phases, [gamma])[:, :, 0]
    m, phi, rho = best_on_grid(grid, moduli, phases)
    assert rho < 0.95
    assert math.radians(30) < abs(phi) < math.radians(150)
    beta = m * complex(math.cos(phi), math.sin(phi))
    assert abs(spectral_radius(momentum_matrix(H, beta, gamma)) - rho) <= 1e-8
    e0 = np.array([1.0, -0.5])
    err = simulate(H, beta, gamma, e0, 400)
    assert err[-1] <= 1e-12 * err[0]  # ρ^400 ≈ 1e-17
    # equivalent quaternion β (any unit pure direction) converges the same way
    u = np.array([1.0, 2.0, -2.0]) / 3.0
    bq = (beta.real, *(abs(beta.imag) * u))
    err_q = simulate(H, bq, gamma, e0, 400)
    np.testing.assert_allclose(err_q, err, rtol=1e-9, atol=1e-300)
    for real_beta in (m, -m):
        assert spectral_radius(momentum_matrix(H, real_beta, gamma)) > 1
        assert simulate(H, real_beta, gamma, e0, 400)[-1] > err[0]
    # the paper's phases (|φ| ≤ 30°) do not reach ρ < 1 here at any |β|
    paper = rho_grid([1j * sigma, -1j * sigma], moduli, list(PAPER_PHASES), [gamma])
    assert paper.min() > 1


# ----------------------------------------------------------------------------- H = cI (NAMEx)


def test_cooperative_closed_forms() -> None:
    """Frozen-α NAMEx, H = cI: β = 0 ⇒ ρ = |1 − γc| (plain NAMEx); real underdamped β ⇒
    ρ = √β (heavy ball); independent of the dimension of H."""
    for c, gamma in ((1.0, 0.3), (2.0, 0.9), (0.5, 3.0)):
        H = cooperative_matrix(c, 3)
        assert abs(spectral_radius(momentum_matrix(H, 0.0, gamma)) - abs(1 - gamma * c)) <= 1e-12
    for beta, gc in ((0.5, 0.5), (0.8, 1.2), (0.3, 1.0)):
        assert (1 + beta - gc) ** 2 < 4 * beta  # underdamped
        assert abs(spectral_radius(momentum_matrix(cooperative_matrix(1.0, 2), beta, gc))
                   - math.sqrt(beta)) <= 1e-12


@pytest.mark.parametrize("gc", [1.0, 1.5, 2.0, 3.0])
def test_cooperative_real_beta_optimal_when_gamma_c_at_least_one(gc: float) -> None:
    """γc ≥ 1: no β in the disk (polar grid) beats the heavy-ball optimum ρ* = |1 − √(γc)|
    (attained by real β* = (1 − √(γc))²). Tolerance DOUBLE_ROOT_TOL: grid points next to the
    defective β* carry √eps eigenvalue error."""
    moduli = np.linspace(0.0, 0.99, 120)
    phases = np.linspace(-math.pi, math.pi, 181)
    grid = rho_grid([1.0], moduli, phases, [gc])
    rho_star = abs(1 - math.sqrt(gc))
    assert grid.min() >= rho_star - DOUBLE_ROOT_TOL
    beta_star = (1 - math.sqrt(gc)) ** 2
    assert abs(spectral_radius_from_cubic([1.0], beta_star, gc) - rho_star) <= DOUBLE_ROOT_TOL


def triple_root_beta(gc: float) -> tuple[complex, float]:
    """β with cubic = (λ − r)³ for H = cI, γc = gc (derived here, not by the code).

    Matching coefficients: 3r = 1 + 2a − gc, 3r² = |β|² + 2a − gc·a, r³ = |β|²  ⇒
    a = (3r − 1 + gc)/2 and r³ − 3r² + (2 − gc)(3r − 1 + gc)/2 = 0; take the root with
    b² = r³ − a² > 0 and r < 1.
    """
    coeffs = [1.0, -3.0, 1.5 * (2 - gc), -(2 - gc) * (1 - gc) / 2]
    for r in np.roots(coeffs):
        if abs(r.imag) < 1e-12 and 0 < r.real < 1:
            rr = float(r.real)
            a = (3 * rr - 1 + gc) / 2
            b2 = rr**3 - a * a
            if b2 > 0:
                return complex(a, -math.sqrt(b2)), rr
    raise AssertionError(f"no complex triple-root β for gc={gc}")


@pytest.mark.parametrize("gc", [0.1, 0.3, 0.5, 0.9])
def test_cooperative_complex_beta_beats_real_when_gamma_c_below_one(gc: float) -> None:
    """FINDING: for H = cI real β is NOT optimal when γc < 1. The triple-root β (non-real)
    reaches ρ = r < |1 − √(γc)| = best real ρ, e.g. γc = 0.3: 0.386 vs 0.452; the simulated
    rates confirm it."""
    beta_t, r = triple_root_beta(gc)
    assert beta_t.imag != 0 and abs(beta_t) < 1
    best_real = abs(1 - math.sqrt(gc))
    assert r < best_real - 0.01
    H = cooperative_matrix(1.0, 2)
    assert abs(spectral_radius(momentum_matrix(H, beta_t, gc)) - r) <= TRIPLE_ROOT_TOL
    # the best real β on a fine grid is the heavy-ball closed form, not better
    reals = np.linspace(-0.99, 0.99, 1981)
    rho_real = rho_grid([1.0], np.abs(reals), [0.0, math.pi], [gc])[:, :, 0].min()
    assert rho_real >= best_real - DOUBLE_ROOT_TOL
    # simulated: the complex β decays faster than the optimal real β
    e0 = np.array([1.0, -2.0])
    steps = max(40, math.ceil(math.log(1e-100) / math.log(r)))
    rate_c = fitted_rate(simulate(H, beta_t, gc, e0, steps, observable="state"))
    beta_star = (1 - math.sqrt(gc)) ** 2
    rate_r = fitted_rate(simulate(H, beta_star, gc, e0, steps, observable="state"))
    assert rate_c < rate_r - 0.005
    # the j²ρ^j transient of a triple root biases the log-slope by ≈ 2/j (≈ 0.04 at j ≈ 50)
    assert abs(math.log(rate_c) - math.log(r)) <= 0.1


def test_cooperative_best_phase_at_fixed_modulus() -> None:
    """At a fixed |β|: for γc ∈ {2, 3} the best phase is real (0 or π) for every |β| on the
    grid; for γc = 0.5, |β| = 0.18 it is not (a phase near ±35° beats φ ∈ {0, π} by ≈ 0.1)."""
    moduli = np.linspace(0.01, 0.99, 99)
    phases = np.linspace(-math.pi, math.pi, 361)
    for gc in (2.0, 3.0):
        grid = rho_grid([1.0], moduli, phases, [gc])[:, :, 0]
        real = rho_grid([1.0], moduli, [0.0, math.pi], [gc])[:, :, 0]
        assert np.all(grid.min(1) >= real.min(1) - DOUBLE_ROOT_TOL)
    grid = rho_grid([1.0], [0.18], phases, [0.5])[0, :, 0]
    real = rho_grid([1.0], [0.18], [0.0, math.pi], [0.5])[0, :, 0].min()
    j = int(np.argmin(grid))
    assert math.radians(10) < abs(phases[j]) < math.radians(170)
    assert grid[j] < real - 0.05


# ----------------------------------------------------------------------------- fitted_rate, plots


def test_fitted_rate_exact_geometric() -> None:
    j = np.arange(200)
    assert abs(fitted_rate(3.0 * 0.8**j) - 0.8) <= 1e-12
    # a decaying transient (ratio 0.3/0.8) is negligible on the last half
    assert abs(fitted_rate(0.8**j + 0.3**j) - 0.8) <= 1e-12
    assert abs(fitted_rate(1.1**j) - 1.1) <= 1e-12


@pytest.mark.parametrize(
    ("errors", "kwargs"),
    [([1.0, 0.5], {}), ([1.0, 0.5, 0.0, 0.0], {}), ([1.0, 0.5, 0.25], {"tail_fraction": 0.0}),
     ([1.0, float("nan"), 0.5, 0.2], {"tail_fraction": 1.0})],
)
def test_fitted_rate_rejects(errors: list[float], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        fitted_rate(errors, **kwargs)


def test_plot_and_grid_main(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path))
    moduli = np.linspace(0, 0.99, 12)
    phases = np.linspace(-math.pi, math.pi, 13)
    p = plot_rho_grid([("H = cI", [1.0]), ("bilinear", [1j, -1j])], moduli, phases, 0.5,
                      out / "sub" / "rho.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    path, table = momentum_grid_main(out, n_moduli=12, n_phases=13)
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert "H = cI" in table and "bilinear" in table and "best real" in table


_FIRST_VALIDATION_CASES = [
    (lambda: momentum_matrix(np.zeros((2, 3)), 0.5, 1.0), "(2, 3)"),
    (lambda: momentum_matrix(np.eye(2), complex("nan"), 1.0), "nan"),
    (lambda: quaternion_momentum_matrix(np.eye(2), (0.5, 0, 0, 0), 1j), "1j"),  # type: ignore[arg-type]
    (lambda: simulate(np.eye(2), 0.5, 1.0, np.ones(2), 0), "steps=0"),
    (lambda: simulate(np.eye(2), 0.5, 1.0, np.ones(3), 5), "(3,)"),
    (lambda: rho_grid([1.0], [-0.1], [0.0], [1.0]), "-0.1"),
    (lambda: momentum_grid_main(".", h_kind="saddle"), "saddle"),  # type: ignore[arg-type]
    (lambda: momentum_grid_main(".", gamma=-1.0), "-1.0"),
    (lambda: best_on_grid(np.zeros((2, 2)), [0.1], [0.0, 1.0]), "(1, 2)"),
]


# ----------------------------------------------------------------------------- more validation
# Found by mutation testing (tools/mutation.py): every documented ValueError below was
# unreachable from the earlier tests, so deleting the check went unnoticed (S19 tools).


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        *_FIRST_VALIDATION_CASES,
        (lambda: momentum_matrix(np.array([[np.inf]]), 0.5, 1.0), "H must be finite"),
        (lambda: spectral_radius(np.array([[1.0, np.nan], [0.0, 1.0]])), "H must be finite"),
        (lambda: momentum_matrix(np.eye(2), 0.5, complex("nan")), "gamma must be finite"),
        (lambda: cubic_coefficients(complex("inf"), 0.5, 1.0), "h must be finite"),
        (lambda: spectral_radius_from_cubic([], 0.5, 1.0), "non-empty 1-D array"),
        (lambda: spectral_radius_from_cubic(np.ones((2, 2)), 0.5, 1.0), "got shape (2, 2)"),
        (lambda: rho_grid([np.inf], [0.5], [0.0], [1.0]), "h_eigs must be"),
        (lambda: rho_grid([], [0.5], [0.0], [1.0]), "h_eigs must be"),
        (lambda: rho_grid([[1.0]], [0.5], [0.0], [1.0]), "h_eigs must be"),
        (lambda: rho_grid([1.0], [], [0.0], [1.0]), "moduli must be a non-empty"),
        (lambda: rho_grid([1.0], [0.5], [np.nan], [1.0]), "phases must be a non-empty"),
        (lambda: rho_grid([1.0], [0.5], [0.0], [[1.0]]), "gammas must be a non-empty"),
        (lambda: bilinear_game_matrix([]), "sigmas must be a non-empty"),
        (lambda: cooperative_matrix(math.inf), "c must be finite"),
        (lambda: cooperative_matrix(1.0, 0), "dim must be >= 1, got dim=0"),
        (lambda: simulate(np.eye(2), 0.5, 1.0, np.ones(2), 5, observable="energy"),  # type: ignore[arg-type]
         "'energy'"),
        (lambda: simulate(np.eye(2), 0.5, 1.0, np.ones(2), True), "steps=True"),
        (lambda: simulate(np.eye(2), 0.5, 1.0, np.ones(2), 2.0), "steps=2.0"),  # type: ignore[arg-type]
        (lambda: simulate(np.eye(2), (0.5, 0.0, 0.0, 0.0), 0.5j, np.ones(2), 3),
         "S18 uses a real step gamma"),
        (lambda: fitted_rate([1.0, 0.5, 0.25], tail_fraction=1.5), "tail_fraction=1.5"),
        (lambda: fitted_rate(np.ones((3, 3))), "got shape (3, 3)"),
        (lambda: plot_rho_grid([], [0.5], [0.0], 0.5, "unused.png"), "panels must not be empty"),
        (lambda: momentum_grid_main(".", n_moduli=1), "n_moduli=1"),
        (lambda: momentum_grid_main(".", n_phases=True), "n_phases=True"),
        (lambda: momentum_grid_main(".", n_phases=5.0), "n_phases=5.0"),  # type: ignore[arg-type]
        (lambda: momentum_grid_main(".", gamma=math.nan), "gamma=nan"),
        (lambda: momentum_grid_main(".", gamma=0.0), "gamma=0.0"),
    ],
)
def test_validation_names_the_problem(
    call: object, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "." above: nothing is written into the checkout
    with pytest.raises(ValueError, match=re.escape(shown)):
        call()  # type: ignore[operator]


# ----------------------------------------------------------------------------- grid table, plot


#: The phases swept in the NAMEx paper (S17): 0, ±15°, ±30°, in this order.
PAPER_PHASES_DEG = (0, 15, -15, 30, -30)


def test_paper_phases() -> None:
    assert [math.degrees(p) for p in PAPER_PHASES] == pytest.approx(PAPER_PHASES_DEG, abs=1e-12)


def _spec_rho(h_eigs: list[complex], beta: complex, gamma: float) -> float:
    """ρ from numpy.roots of the docs/math.md §4 cubic typed in above (independent of rho_grid)."""
    return max(float(np.abs(np.roots(spec_cubic(h, beta, gamma))).max()) for h in h_eigs)


_ROW = re.compile(
    r"^  (best on grid|best real β|paper φ=\s*([+-]\d+)°)\s+\|β\|=([\d.]+)"
    r"(?:\s+φ=\s*([+-][\d.]+)°)?\s+ρ=([\d.]+)$"
)


@pytest.mark.parametrize(
    ("h_kind", "titles", "h_eigs"),
    [
        ("cooperative", ["H = cI, c = 2 (frozen-α NAMEx)  (γ = 0.25)"], [[2.0]]),
        ("bilinear", ["bilinear game, eigenvalues ±0.5i  (γ = 0.25)"], [[0.5j, -0.5j]]),
        ("both", ["H = cI, c = 2 (frozen-α NAMEx)  (γ = 0.25)",
                  "bilinear game, eigenvalues ±0.5i  (γ = 0.25)"], [[2.0], [0.5j, -0.5j]]),
        ("defaults", ["H = cI, c = 1 (frozen-α NAMEx)  (γ = 0.5)",
                      "bilinear game, eigenvalues ±1i  (γ = 0.5)"], [[1.0], [1j, -1j]]),
    ],
)
def test_grid_table_matches_the_spec_cubic(
    tmp_path: Path, h_kind: str, titles: list[str], h_eigs: list[list[complex]]
) -> None:
    """Every number in the momentum-grid table (S19) is recomputed here from the S19 cubic:
    the grid minimum, the best real β (φ ∈ {0, π}) and the best |β| at each paper phase.
    The table prints ρ to 5 decimals, |β| to 3 and φ to 0.1°, hence the tolerances.
    "defaults": the documented defaults (both panels, c = σ = 1, γ = 0.5, a 50 × 73 grid)."""
    if h_kind == "defaults":
        gamma, n_m, n_p = 0.5, 50, 73
        path, table = momentum_grid_main(tmp_path)
    else:
        gamma, n_m, n_p = 0.25, 7, 9
        path, table = momentum_grid_main(tmp_path, h_kind=h_kind, c=2.0, sigma=0.5,  # type: ignore[arg-type]
                                         gamma=gamma, n_moduli=n_m, n_phases=n_p)
    assert path == tmp_path / "rho_grid.png" and path.read_bytes()[:4] == b"\x89PNG"
    moduli = [0.99 * i / (n_m - 1) for i in range(n_m)]
    phases = [-math.pi + 2 * math.pi * j / (n_p - 1) for j in range(n_p)]
    lines = table.splitlines()
    assert len(lines) == 8 * len(titles)
    for block, (title, hs) in enumerate(zip(titles, h_eigs, strict=True)):
        head, *rows = lines[8 * block: 8 * block + 8]
        assert head == title

        def rho(m: float, phi: float, hs: list[complex] = hs) -> float:
            return _spec_rho(hs, m * complex(math.cos(phi), math.sin(phi)), gamma)

        parsed = [_ROW.match(r) for r in rows]
        assert all(parsed), rows
        kinds = [p.group(1) for p in parsed if p]
        assert kinds[:2] == ["best on grid", "best real β"]
        wanted_phases = list(PAPER_PHASES_DEG)
        assert [int(p.group(2)) for p in parsed[2:] if p] == wanted_phases
        for p, candidates in zip(
            parsed,
            [[(m, phi) for m in moduli for phi in phases],
             [(m, phi) for m in moduli for phi in (0.0, math.pi)]]
            + [[(m, math.radians(phi)) for m in moduli] for phi in PAPER_PHASES_DEG],
            strict=True,
        ):
            assert p is not None
            best = min(rho(m, phi) for m, phi in candidates)
            assert abs(float(p.group(5)) - best) <= 6e-6
            shown_m = float(p.group(3))
            m, phi = min(candidates, key=lambda c: (abs(c[0] - shown_m), 0.0))
            if p.group(4) is not None:  # the row also shows φ: the point must be on the grid
                shown_phi = math.radians(float(p.group(4)))
                m, phi = min(candidates, key=lambda c: abs(c[0] - shown_m) + abs(
                    (c[1] - shown_phi + math.pi) % (2 * math.pi) - math.pi))
                assert abs(math.degrees(phi) - float(p.group(4))) <= 0.051
            assert abs(m - shown_m) <= 5e-4
            assert abs(rho(m, phi) - float(p.group(5))) <= 6e-6


def test_plot_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented content of each panel (S19): ρ over |β| × φ (degrees) with a colormap
    diverging at ρ = 1, the ρ = 1 contour when ρ crosses 1, the best grid point as a star and
    the paper's phases as dotted vertical lines; one colorbar per panel."""
    saved: list[Figure] = []
    original = Figure.savefig

    def spy(self: Figure, *args: object, **kwargs: object) -> None:
        saved.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Figure, "savefig", spy)
    moduli = np.linspace(0.0, 0.99, 12)
    phases = np.linspace(-math.pi, math.pi, 13)
    gamma = 0.5
    # ρ crosses 1 (first two); ρ > 1 everywhere (bilinear, γσ = 4); ρ < 1 everywhere
    # (H = cI, γc = 0.5, |β| ≤ 0.54)
    panels = [("coop", [1.0]), ("bilinear", [1j, -1j]), ("above", [8j, -8j]), ("below", [1.0])]
    plot_rho_grid(panels[:2], moduli, phases, gamma, tmp_path / "rho.png")
    plot_rho_grid(panels[2:3], moduli, phases, gamma, tmp_path / "above.png")
    plot_rho_grid(panels[3:], moduli[:7], phases, gamma, tmp_path / "below.png")
    assert len(saved) == 3
    checked = 0
    for fig, fig_panels, mods in zip(saved, (panels[:2], panels[2:3], panels[3:]),
                                     (moduli, moduli, moduli[:7]), strict=True):
        checked += _check_plot(fig, fig_panels, mods, phases, gamma)
    assert checked == 4


def _check_plot(fig: Figure, panels: list[tuple[str, list[complex]]], moduli: np.ndarray,
                phases: np.ndarray, gamma: float) -> int:
    from matplotlib.colors import TwoSlopeNorm

    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == len(panels) and len(fig.axes) == 2 * len(panels)  # + one colorbar each
    for ax in axes:  # one row of panels, side by side
        assert ax.get_position().height > 0.5
    assert [ax.get_position().x0 for ax in axes] == sorted(ax.get_position().x0 for ax in axes)
    for ax, (title, hs) in zip(axes, panels, strict=True):
        # independent ρ on the grid (S19 cubic, numpy.roots)
        want = np.array([[_spec_rho(hs, m * complex(math.cos(p), math.sin(p)), gamma)
                          for p in phases] for m in moduli])
        (mesh,) = [c for c in ax.collections if c.get_array() is not None
                   and np.size(c.get_array()) == want.size]
        np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(want.shape), want,
                                   rtol=0, atol=1e-9)
        norm = mesh.norm
        assert isinstance(norm, TwoSlopeNorm) and norm.vcenter == 1.0
        assert norm.vmin is not None and norm.vmax is not None
        assert norm.vmin < 1.0 < norm.vmax
        # the colour range is the data's range, widened only as far as ρ = 1
        assert norm.vmin == pytest.approx(min(want.min(), 1.0), abs=1e-5)
        assert norm.vmax == pytest.approx(max(want.max(), 1.0), abs=1e-5)
        crosses = want.min() < 1.0 < want.max()
        contours = [c for c in ax.collections if hasattr(c, "levels")]
        assert (len(contours) == 1 and list(contours[0].levels) == [1.0]) if crosses \
            else not contours
        stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
        (star,) = stars
        i, j = np.unravel_index(int(np.argmin(want)), want.shape)
        assert list(star.get_xdata()) == [pytest.approx(math.degrees(phases[j]))]
        assert list(star.get_ydata()) == [pytest.approx(moduli[i])]
        verticals = sorted(float(ln.get_xdata()[0]) for ln in ax.lines
                           if ln.get_linestyle() == ":")
        assert verticals == pytest.approx(sorted(PAPER_PHASES_DEG))
        assert ax.get_title().startswith(f"{title}\nγ=0.5, min ρ={want.min():.4f}")
        assert "phase" in ax.get_xlabel() and ax.get_ylabel() == "|β|"
        x0, x1 = ax.get_xlim()
        assert x0 <= -179 and x1 >= 179  # the φ axis is in degrees
    return len(axes)


# ----------------------------------------------------------------------------- inputs and edges
# More cases found by mutation testing: accepted input forms (ArrayLike, scalars, float32),
# boundary values of the documented ranges, and the exact norms simulate returns (S19).


def test_array_likes_and_scalars_are_accepted() -> None:
    """Lists, scalars and integer arrays are ArrayLike inputs; the results equal the S19
    formulas evaluated here."""
    np.testing.assert_array_equal(momentum_matrix([[2]], 0.5, 1.0),
                                  spec_matrix(np.array([[2.0]]), 0.5, 1.0))
    beta, gamma = 0.3 + 0.4j, 0.7
    assert spectral_radius_from_cubic(2.0, beta, gamma) == pytest.approx(
        _spec_rho([2.0], beta, gamma), abs=1e-12)
    grid = rho_grid(2.0, 0.5, 0.25, 0.7)  # all four axes as scalars
    assert grid.shape == (1, 1, 1)
    assert grid[0, 0, 0] == pytest.approx(
        _spec_rho([2.0], 0.5 * complex(math.cos(0.25), math.sin(0.25)), 0.7), abs=1e-12)
    assert best_on_grid([[0.3, 0.2], [0.1, 0.4]], [0.5, 0.9], [0.0, 1.0]) == (0.9, 0.0, 0.1)
    np.testing.assert_array_equal(cooperative_matrix(2.0), [[2.0]])  # dim defaults to 1


def test_rho_grid_computes_in_float64_for_float32_axes() -> None:
    """float32 moduli/phases are converted to float64 first: the grid equals the S19 cubic
    evaluated at the same (exactly widened) values to 1e-12, far below float32 rounding."""
    moduli = np.array([0.3, 0.7, 0.95], dtype=np.float32)
    phases = np.array([-2.0, 0.1, 1.3], dtype=np.float32)
    grid = rho_grid([0.4, 1.9], moduli, phases, [0.8])
    for i, m in enumerate(moduli.astype(np.float64)):
        for j, p in enumerate(phases.astype(np.float64)):
            beta = m * complex(math.cos(p), math.sin(p))
            assert abs(grid[i, j, 0] - _spec_rho([0.4, 1.9], beta, 0.8)) <= 1e-12


def test_zero_eigenvalue_gives_rho_one() -> None:
    """h = 0: the cubic is (λ − 1)(λ² − 2aλ + |β|²), so ρ = max(1, |β|) = 1 for |β| < 1."""
    grid = rho_grid([0.0], [0.0, 0.5, 0.9], [0.0, 2.0], [0.5])
    np.testing.assert_allclose(grid, 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda: quaternion_momentum_matrix(np.array([[np.inf]]), (0.5, 0, 0, 0), 1.0),
         "H must be finite"),
        (lambda: quaternion_momentum_matrix(np.zeros((1, 2)), (0.5, 0, 0, 0), 1.0),
         "square (d, d)"),
        (lambda: quaternion_momentum_matrix(np.eye(2), (0.5, 0, 0, 0), math.nan),
         "gamma must be finite"),
        (lambda: cubic_coefficients(1.0, complex("nan"), 1.0), "beta must be finite"),
        (lambda: cubic_coefficients(1.0, 0.5, math.inf), "gamma must be finite"),
        (lambda: simulate(np.eye(1), (0.5, 0.0, 0.0, 0.0), complex(0.5, math.nan), [1.0], 2),
         "gamma must be finite"),
        (lambda: momentum_grid_main(".", gamma=math.inf), "gamma=inf"),
    ],
)
def test_more_validation(
    call: object, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(shown)):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("beta", [0.5 - 0.25j, (0.5, 0.25, -0.5, 0.125)])
def test_simulate_one_step_norms(beta: complex | tuple[float, ...]) -> None:
    """steps = 1 (the smallest allowed): μ¹ = 0, so μ² = ΔE = −H e⁰ and e¹ = e⁰ − γ H e⁰ for any
    β (S17/S18). "error" returns (‖e⁰‖, ‖e¹‖), "state" (‖e⁰‖, ‖(μ², e¹)‖); list inputs."""
    H = [[0.5, 0.25], [0.0, 0.75]]
    e0 = [0.375, -0.5]  # dyadic: every quantity below is exact
    gamma = 0.5
    delta = -np.array(H) @ np.array(e0)
    e1 = np.array(e0) + gamma * delta
    err = simulate(H, beta, gamma, e0, 1)
    assert err.shape == (2,)
    assert err.tolist() == pytest.approx([math.hypot(*e0), math.hypot(*e1)], rel=1e-15)
    state = simulate(H, beta, gamma, e0, 1, observable="state")
    assert state.tolist() == pytest.approx(
        [math.hypot(*e0), math.hypot(*delta, *e1)], rel=1e-15)  # μ² = (ΔE, 0, ...)


def test_simulate_from_zero_and_tiny_errors() -> None:
    """e⁰ = 0 stays 0 (no 0/0 in the rescaled norm); ‖e⁰‖ = 1e-200 is not lost to underflow."""
    assert simulate(np.eye(2), 0.5, 0.5, np.zeros(2), 3).tolist() == [0.0] * 4
    tiny = simulate(np.eye(2), 0.0, 0.5, np.array([3e-200, 4e-200]), 1)
    assert tiny.tolist() == pytest.approx([5e-200, 2.5e-200], rel=1e-15)  # e¹ = e⁰/2


def test_fitted_rate_uses_at_least_three_points() -> None:
    """Fits the last max(3, ⌈f·n⌉) points; least squares through 3 equally spaced points has
    slope (y₃ − y₁)/2, so the rate is √(e₃/e₁). Three entries and f = 1 are allowed."""
    assert fitted_rate([1.0, 0.5, 0.25, 0.2]) == pytest.approx(math.sqrt(0.2 / 0.5), rel=1e-12)
    assert fitted_rate([1.0, 0.5, 0.25]) == pytest.approx(0.5, rel=1e-12)
    assert fitted_rate([1.0, 0.5, 0.25, 0.125], tail_fraction=1.0) == pytest.approx(0.5, rel=1e-12)


def test_grid_main_smallest_grid(tmp_path: Path) -> None:
    """n_moduli = n_phases = 2 is the smallest grid allowed (|β| ∈ {0, 0.99}, φ ∈ {−π, π})."""
    _, table = momentum_grid_main(tmp_path, h_kind="cooperative", n_moduli=2, n_phases=2)
    assert len(table.splitlines()) == 8
