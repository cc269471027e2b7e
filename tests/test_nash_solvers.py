"""Property tests of the Nash bargaining solvers (S4–S11 and §2 "Solvers" of docs/math.md).

Tolerance rule used throughout (derivation)
-------------------------------------------
Let α solve Kα = 1/α exactly and let α' = α∘(1 + z) be another candidate whose scale-free
residual vector is r'_i = α'_i (Kα')_i − 1. Work in unit-diagonal units (S9; the rule is
scale-free). Expanding to first order in z, with D = diag(α) and using α_i(Kα)_i = 1:

    r'_i = α_i(1+z_i) Σ_j K_ij α_j (1+z_j) − 1 ≈ z_i + Σ_j α_i K_ij α_j z_j = ((DKD + I) z)_i.

So z = M⁻¹ r' with M = DKD + I, whose eigenvalues are ≥ 1 (DKD is PSD). Hence
max_i |z_i| ≤ ‖z‖₂ ≤ ‖r'‖₂ ≤ √N · max_i |r'_i| = √N · res'. Two candidates with residuals r1, r2
therefore agree in relative α to ≈ √N (r1 + r2). We use

    rtol = 2 · √N · (r1 + r2) + 1e-12

(factor 2 for the second-order terms; 1e-12 for float64 rounding of α itself), with r1, r2 the
residuals the solvers REPORT (``sol.residual``), and separately assert that each reported
residual is below that solver's documented tolerance, so the rule cannot be satisfied vacuously
by a large residual.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from namex_ref.nash import nash_bargain, scaled_residual, solve_nash
from namex_ref.nash.newton import RESIDUAL_TOL
from namex_ref.nash.oracles import ORACLE_RESIDUAL_TOL, solve_ccp, solve_primal
from namex_ref.nash.problem import ROUNDING_CAP, ROUNDING_FACTOR, residual_floor
from tests.nash_strategies import (
    cone_G,
    cone_problems,
    feasible_problems,
    gaussian_G,
    gaussian_problems,
    rescale_columns,
    well_scaled_problems,
)

SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CCP = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])


EPS = float(np.finfo(np.float64).eps)


def rule_rtol(n: int, r1: float, r2: float) -> float:
    """Agreement tolerance of two solutions with scale-free residuals r1, r2 (module docstring)."""
    return 2.0 * math.sqrt(n) * (float(r1) + float(r2)) + 1e-12


def newton_tol(K: torch.Tensor, alpha: torch.Tensor) -> float:
    """Newton's documented stopping rule: RESIDUAL_TOL, or 8× the float64 rounding floor of the
    residual when that is larger, capped at 1e-6 (solvers.ROUNDING_FACTOR / ROUNDING_CAP)."""
    floor = float(residual_floor(K.double(), alpha.double()))
    return max(RESIDUAL_TOL, min(ROUNDING_FACTOR * floor, ROUNDING_CAP))


def assert_agree(a1: torch.Tensor, a2: torch.Tensor, rtol: float) -> None:
    rel = ((a1 - a2).abs() / a2.abs()).max().item()
    assert rel <= rtol, f"relative disagreement {rel:.3e} > rtol {rtol:.3e}"


#: Looser bound on an oracle residual that still keeps the residual rule meaningful
#: (rtol ≲ 2√8·2e-4 ≈ 1e-3). Clarabel is documented to reach ORACLE_RESIDUAL_TOL; on singular or
#: ill-conditioned K it stopped "optimal_inaccurate" at 1e-6…4e-6 (now within the raised 1e-5; see
#: regressions below). The properties then require that shortfall to be VISIBLE: converged is
#: False exactly when the residual exceeds ORACLE_RESIDUAL_TOL.
ORACLE_VISIBLE_BOUND = 1e-4


def check_oracle(sol) -> None:
    """Oracle residual ≤ its documented tolerance, or the shortfall is visible (module note)."""
    res = float(sol.residual.max())
    assert bool(sol.converged.all()) == (res <= ORACLE_RESIDUAL_TOL), (sol.status, res)
    if res > ORACLE_RESIDUAL_TOL:
        assert "inaccurate" in sol.status and res <= ORACLE_VISIBLE_BOUND, (sol.status, res)


def newton(K: torch.Tensor, **kw):
    sol = solve_nash(K, method="newton", **kw)
    assert bool(sol.converged.all())
    assert float(sol.residual.max()) <= newton_tol(K, sol.alpha)
    return sol


# ------------------------------------------------------------------------------------------
# Newton on its own: S4, S7
# ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("newton_backend")  # both Newton backends (conftest)
@given(feasible_problems())
def test_newton_residual_and_s7_identities(problem):
    """S4, S7: Newton reaches residual ≤ RESIDUAL_TOL (1e-10) on (a) Gaussian, (b) cone and
    (c) rescaled problems; α > 0; u = Gᵀ(Gα) = 1/α and ‖Gα‖² = N, evaluated from G directly.

    Tolerances: α_i u_i − 1 computed from G differs from the K-based residual only by rounding
    of Gα (~1e-13 relative here), so rtol = residual + 1e-9; ‖Gα‖² = Σ α_i(Kα)_i = N + Σ r_i,
    so |‖Gα‖² − N| ≤ N·residual (+ 1e-9 for rounding).
    """
    G, K = problem
    n = K.shape[0]
    sol = solve_nash(K)
    res = float(sol.residual)
    # every generated problem is well enough conditioned for the plain tolerance
    assert res <= RESIDUAL_TOL, res
    assert bool(sol.converged)
    a = sol.alpha
    assert a.dtype == torch.float64 and bool((a > 0).all()) and bool(torch.isfinite(a).all())
    dE = G @ a
    u = G.T @ dE
    assert torch.allclose(u * a, torch.ones(n, dtype=torch.float64), rtol=0, atol=res + 1e-9)
    assert abs(float(dE @ dE) - n) <= n * res + 1e-9


# ------------------------------------------------------------------------------------------
# Newton vs independent oracles
# ------------------------------------------------------------------------------------------


@SLOW
@given(feasible_problems())
def test_newton_vs_cvxpy_oracle(problem):
    """§2 Solvers: Newton and the Clarabel α-form oracle agree by the residual rule;
    the oracle's residual ≤ ORACLE_RESIDUAL_TOL (1e-5, its documented acceptance)."""
    _, K = problem
    s1 = newton(K)
    s2 = solve_nash(K, method="cvxpy")
    check_oracle(s2)
    assert_agree(s1.alpha, s2.alpha, rule_rtol(K.shape[0], s1.residual, s2.residual))


@SLOW
@given(feasible_problems())
def test_newton_vs_primal_with_real_G(problem):
    """S3 vs S4: the primal ΔE-problem solved on the real τ (solve_primal(K, G=G)) gives
    α_i = 1/u_i agreeing with Newton by the residual rule; primal residual ≤ ORACLE_RESIDUAL_TOL
    (1e-5)."""
    G, K = problem
    s1 = newton(K)
    s2 = solve_primal(K, G=G)
    check_oracle(s2)
    assert_agree(s1.alpha, s2.alpha, rule_rtol(K.shape[0], s1.residual, s2.residual))


def s11_polynomial_oracle(K: torch.Tensor) -> tuple[np.ndarray, float]:
    """Positive root of the S4 system for N = 2, solved numerically at 100 digits (mpmath).

    k11 x² + k12 xy = 1 and k22 y² + k12 xy = 1 (x = α_1, y = α_2, K's exact float64 values).
    Eliminating y = (1 − k11 x²)/(k12 x) from the first leaves the quartic
    (k11² k22 − k11 k12²) x⁴ − 2 k11 k22 x² + k22 = 0, whose roots ``mpmath.polyroots`` finds
    (no closed form is used); the root with x, y > 0 that satisfies both equations to 1e-40 is
    the bargain. Returns (α (2,), 1 + ρ) with ρ = k12/√(k11 k22), also at 100 digits.

    Why 100 digits: y is recovered through a division by k12·x, so an error ε in x becomes
    ~ε/k12 in y. For nearly decoupled experts (k12 ~ 1e-15; the quartic then has two nearly
    double roots) 50 digits left the equations satisfied only to ~1e-35, so no root passed the
    1e-40 check (found by the ci-random hypothesis profile).
    """
    import mpmath

    with mpmath.workdps(100):
        k11, k12, k22 = (mpmath.mpf(float(K[i, j])) for i, j in ((0, 0), (0, 1), (1, 1)))
        one_plus_rho = 1 + k12 / mpmath.sqrt(k11 * k22)
        if k12 == 0:  # S8: the system decouples
            return np.array([float(1 / mpmath.sqrt(k11)), float(1 / mpmath.sqrt(k22))]), 1.0
        coeffs = [k11**2 * k22 - k11 * k12**2, 0, -2 * k11 * k22, 0, k22]
        while coeffs[0] == 0:  # exactly singular K: the quartic drops to a quadratic
            coeffs = coeffs[2:]
        found = []
        for root in mpmath.polyroots(coeffs, maxsteps=200, extraprec=200):
            if abs(mpmath.im(root)) > mpmath.mpf(10) ** -30 or mpmath.re(root) <= 0:
                continue
            x = mpmath.re(root)
            y = (1 - k11 * x**2) / (k12 * x)
            eqs = (k11 * x**2 + k12 * x * y - 1, k22 * y**2 + k12 * x * y - 1)
            if y > 0 and max(abs(e) for e in eqs) < mpmath.mpf(10) ** -40:
                found.append((float(x), float(y)))
        assert len(found) == 1, found  # the bargain is unique (S5)
        return np.array(found[0]), float(one_plus_rho)


@given(feasible_problems(2, 2))
def test_closed_form_two_experts(problem):
    """S11: the closed form equals the positive root of the S4 polynomial system, found
    numerically by mpmath (``s11_polynomial_oracle``), and agrees with Newton (residual rule).

    Tolerance from the conditioning of the formula α_i = (K_ii(1 + ρ))^{-1/2}: evaluating ρ in
    float64 costs ~3 eps relative (a product, a square root, a division), i.e. an absolute
    error ≤ 3 eps in 1 + ρ, which moves α by ½·3 eps/(1 + ρ) relative; the final product and
    rsqrt add ~3 eps. So rtol = 2 eps/(1 + ρ) + 4 eps, doubled for safety: 4 eps/(1 + ρ) + 8 eps
    (≈ 4e-15 for the cone problems here, 1 + ρ ≥ 0.4; ~1e-9 at 1 + ρ = 1e-6).
    """
    _, K = problem
    s_cf = solve_nash(K, method="closed_form")
    s_nt = newton(K)
    exact, one_plus_rho = s11_polynomial_oracle(K)
    rtol = 4 * EPS / one_plus_rho + 8 * EPS
    assert_agree(s_cf.alpha, torch.from_numpy(exact), rtol)
    assert float(s_cf.residual) <= newton_tol(K, s_cf.alpha)
    assert bool(s_cf.converged)
    assert_agree(s_cf.alpha, s_nt.alpha, rule_rtol(2, s_cf.residual, s_nt.residual))


def test_closed_form_near_anti_parallel_matches_polynomial_root():
    """S11 at 1 + ρ = 1e-2…1e-8 (α̂ up to 1e4): the same oracle and tolerance rule as above,
    in the regime where the tolerance is dominated by the conditioning term 4 eps/(1 + ρ)."""
    for k in range(2, 9):
        phi = 2.0 * math.asin(math.sqrt(10.0**-k / 2.0))
        G = torch.tensor([[1.0, -math.cos(phi)], [0.0, math.sin(phi)]], dtype=torch.float64)
        G = G * torch.tensor([3e-3, 2e2], dtype=torch.float64)
        K = G.T @ G
        exact, one_plus_rho = s11_polynomial_oracle(K)
        s_cf = solve_nash(K, method="closed_form")
        assert_agree(s_cf.alpha, torch.from_numpy(exact), 4 * EPS / one_plus_rho + 8 * EPS)


# ------------------------------------------------------------------------------------------
# S8, S9
# ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("newton_backend")  # both Newton backends (conftest)
@given(st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_s8_diagonal(n, seed):
    """S8: diagonal K ⇒ α_i = 1/‖τ_i‖ = 1/√K_ii. Newton's default start α̂ = 1 IS this answer,
    so the solve is started elsewhere: α0 = 10**U(−2, 1)/√K_ii per expert, and it must take at
    least one step. (The warm start's overall scale is corrected by an exact line search on
    its ray; what remains, experts far ABOVE their answer relative to the others, converges
    only additively in the damped phase, about one unit of α̂ per step, so the spread is kept
    within 10**U(−2, 1).)
    Tolerance: the residual rule against the exact answer (residual 0), plus 2 eps for
    rounding 1/√K_ii."""
    rng = np.random.default_rng(seed)
    diag = 10.0 ** rng.uniform(-4, 4, n)
    K = torch.diag(torch.from_numpy(diag))
    exact = torch.from_numpy(1.0 / np.sqrt(diag))
    alpha0 = exact * torch.from_numpy(10.0 ** rng.uniform(-2, 1, n))
    sol = solve_nash(K, alpha0=alpha0)
    assert sol.iterations >= 1 and bool(sol.converged)
    assert float(sol.residual) <= RESIDUAL_TOL
    assert_agree(sol.alpha, exact, rule_rtol(n, sol.residual, 0.0) + 2 * EPS)


@given(feasible_problems(), st.randoms(use_true_random=False))
def test_s9_permutation(problem, rnd):
    """S9: permuting experts permutes α. Compared on the original K by the residual rule
    (the permuted solution's residual is re-evaluated on K)."""
    _, K = problem
    n = K.shape[0]
    p = list(range(n))
    rnd.shuffle(p)
    p = torch.tensor(p)
    s = newton(K)
    sp = newton(K[p][:, p])
    back = torch.empty_like(sp.alpha)
    back[p] = sp.alpha
    r2 = float(scaled_residual(K, back))
    assert r2 <= newton_tol(K, back) * 1.01
    assert_agree(back, s.alpha, rule_rtol(n, s.residual, r2))


@given(feasible_problems(), st.integers(0, 2**32 - 1))
def test_s9_orthogonal_map(problem, seed):
    """S9: τ_i → Qτ_i with orthogonal Q (QR of a Gaussian) leaves α unchanged. QᵀQ = I only to
    rounding, so the transformed solution's residual is re-evaluated on the original K and the
    residual rule applies on that one K."""
    G, K = problem
    d, n = G.shape
    Q, _ = torch.linalg.qr(torch.from_numpy(np.random.default_rng(seed).standard_normal((d, d))))
    GQ = Q @ G
    s = newton(K)
    sq = newton(GQ.T @ GQ)
    r2 = float(scaled_residual(K, sq.alpha))
    assert r2 <= 1e-9, r2
    assert_agree(sq.alpha, s.alpha, rule_rtol(n, s.residual, r2))


@given(feasible_problems(), st.integers(0, 2**32 - 1))
def test_s9_rescaling(problem, seed):
    """S9: τ_i → c_i τ_i maps α_i → α_i/c_i and leaves ΔE* = Gα unchanged (via nash_bargain).

    ΔE tolerance: ΔE' − ΔE = G diag(α) z with ‖z‖₂ ≤ √N(r1 + r2) (rule), and
    ‖G diag(α)‖₂ ≤ ‖G diag(α)‖_F = √(Σ α_i² K_ii).
    """
    G, K = problem
    n = K.shape[0]
    c = torch.from_numpy(10.0 ** np.random.default_rng(seed).uniform(-2, 2, n))
    b = nash_bargain(G.T)
    bc = nash_bargain((G * c[None, :]).T)
    back = bc.alpha * c  # should equal α
    r2 = float(scaled_residual(K, back))
    assert r2 <= 1e-9, r2
    assert_agree(back, b.alpha, rule_rtol(n, b.residual, r2))
    z2 = 2 * math.sqrt(n) * (float(b.residual) + r2) + 1e-12
    frob = float(torch.sqrt((b.alpha**2 * torch.diagonal(K)).sum()))
    diff = float((bc.delta[0] - b.delta[0]).norm())
    assert diff <= z2 * frob + 1e-12 * math.sqrt(n), diff


# ------------------------------------------------------------------------------------------
# S10: Pareto optimality
# ------------------------------------------------------------------------------------------


def on_ball(G: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = √N·Gα/‖Gα‖ on the S3 ball (ε = √N) and its utilities u = Gᵀx. For the bargain
    ‖Gα‖ = √N already (S7); any other α > 0 is scaled onto the ball the same way."""
    n = G.shape[1]
    x = G @ alpha
    x = x / np.linalg.norm(x) * math.sqrt(n)
    return x, G.T @ x


def pareto_gap(G: np.ndarray, alpha: np.ndarray) -> float:
    """S10 with ECOS (an interior-point code independent of Newton and of Clarabel, which the
    oracles use): (max Σ_i u_i(y) s.t. Gᵀy ≥ u, ‖y‖ ≤ √N) / Σu − 1 at the point x of
    ``on_ball``; ≈ 0 iff nothing dominates x. The constraint is relaxed by 1e-9·|u| so the
    (nearly single-point) feasible set is not empty."""
    import cvxpy as cp

    n = G.shape[1]
    _, u = on_ball(G, alpha)
    y = cp.Variable(G.shape[0])
    prob = cp.Problem(cp.Maximize(cp.sum(G.T @ y)),
                      [G.T @ y >= u - 1e-9 * np.abs(u), cp.norm(y, 2) <= math.sqrt(n)])
    prob.solve(solver=cp.ECOS)
    assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
    return float(prob.value / u.sum() - 1.0)


def nash_gap(G: np.ndarray, alpha: np.ndarray) -> float:
    """The S3 optimality certificate of the Nash product, which Pareto optimality lacks: x
    maximises Σ log u_i on the ball iff max_{‖y‖≤√N} Σ_i u_i(y)/u_i(x) = N (first-order
    condition of a concave function on a convex set). The left side is the maximum of the linear
    function yᵀG(1/u) on the ball, √N‖G(1/u)‖ (Cauchy–Schwarz, no solver). Returns it / N − 1:
    0 at the bargain, 1/cos θ − 1 > 0 elsewhere (θ = angle between x and G(1/u))."""
    n = G.shape[1]
    _, u = on_ball(G, alpha)
    return float(math.sqrt(n) * np.linalg.norm(G @ (1.0 / u)) / n - 1.0)


def nash_gap_tol(K: torch.Tensor, alpha: torch.Tensor, residual: float) -> float:
    """Bound on ``nash_gap`` for an α with scale-free residual r: 1/u ∝ α∘(1 − r') with
    |r'| ≤ r(1 + 2r), so sin θ ≤ r'·‖G diag α‖_F/‖Gα‖ = r'·√(Σ α̂_i²)/√(Σ α_i(Kα)_i) and the gap
    ≈ θ²/2; plus 1e-13 for evaluating √N‖G(1/u)‖ in float64 (d- and N-term sums, ~(d+N)·eps)."""
    ahat2 = float((alpha**2 * torch.diagonal(K)).sum())
    n = K.shape[0]
    sin = residual * (1 + 2 * residual) * math.sqrt(ahat2 / (n * (1 - residual)))
    return sin**2 + 1e-13


def check_s10(G: torch.Tensor, K: torch.Tensor, alpha: torch.Tensor, residual: float) -> None:
    """S10 (Pareto, ECOS, rtol 1e-6: ECOS's default tolerances ~1e-8 degrade to ~1e-7 on this
    degenerate programme, measured ≤ 5e-8) and the Nash certificate (tolerance derived in
    ``nash_gap_tol``)."""
    assert abs(pareto_gap(G.numpy(), alpha.numpy())) <= 1e-6
    gap = nash_gap(G.numpy(), alpha.numpy())
    assert gap <= nash_gap_tol(K, alpha, residual), gap


@SLOW
@given(st.one_of(gaussian_problems(), cone_problems()))
def test_s10_pareto_and_nash_certificates(problem):
    """S10 + S3: ΔE* = Gα is Pareto optimal (no point of the ball dominates it; ECOS) AND it is
    the maximiser of the Nash product (first-order certificate). Pareto optimality alone holds
    for EVERY α > 0 scaled onto the ball (x = Gα is then a positive combination of the τ_i, the
    KKT condition of a weighted-sum maximiser), so only the second check pins the bargain; see
    test_s10_certificates_reject_a_wrong_alpha."""
    G, K = problem
    sol = newton(K)
    check_s10(G, K, sol.alpha, float(sol.residual))


def test_s10_certificates_reject_a_wrong_alpha():
    """The S10/S3 checks run on a wrong α (the bargain perturbed by 1 %, scaled onto the ball):
    the Pareto check still passes (why it cannot certify α), the Nash check fails — measured
    gaps 1.5e-9…5e-2 against tolerances ~1e-13; and the brute-force search below finds a point
    with a larger Σ u_i/u*_i. Fixed Gaussian and cone problems, N = 2…7."""
    rng = np.random.default_rng(0)
    for seed in range(6):
        n = 2 + seed
        Gn = gaussian_G(n, n + 3, seed) if seed % 2 else cone_G(n, n + 1, seed)
        G = torch.from_numpy(Gn)
        K = G.T @ G
        sol = newton(K)
        check_s10(G, K, sol.alpha, float(sol.residual))  # the bargain passes
        wrong = sol.alpha * torch.from_numpy(1.0 + 1e-2 * rng.standard_normal(n)).abs()
        assert abs(pareto_gap(Gn, wrong.numpy())) <= 1e-6  # a wrong α is Pareto optimal too
        # as if a solver returned `wrong` while reporting the bargain's residual
        with pytest.raises(AssertionError):
            check_s10(G, K, wrong, float(sol.residual))
        if seed >= 3:  # gaps ≥ 1e-6 there: large enough for random search to see
            with pytest.raises(AssertionError):
                bruteforce_s10(Gn, wrong.numpy(), float(sol.residual), seed)


def bruteforce_s10(G: np.ndarray, alpha: np.ndarray, residual: float, seed: int) -> None:
    """20000 points y on the ball (half of them near x = ΔE*): none dominates u* = Gᵀx by more
    than 1e-9·max|u*| (S10), and none has Σ u_i(y)/u*_i above N by more than the Nash-gap
    tolerance (``nash_gap_tol``) plus the rounding of the sample sums, (d + N)·eps·√N·Σ α̂_i
    relative (S3 certificate)."""
    d, n = G.shape
    x, u_star = on_ball(G, alpha)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((20000, d))
    near = 10.0 ** rng.uniform(-8, -1, (10000, 1)) * rng.standard_normal((10000, d))
    X[10000:] = x / np.linalg.norm(x) + near
    X = X / np.linalg.norm(X, axis=1, keepdims=True) * math.sqrt(n)
    U = X @ G
    tol = 1e-9 * float(np.abs(u_star).max())
    dominating = (U >= u_star).all(1) & (U > u_star + tol).any(1)
    assert not bool(dominating.any())
    Gt = torch.from_numpy(G)
    ahat = alpha * np.linalg.norm(G, axis=0)
    bound = nash_gap_tol(Gt.T @ Gt, torch.from_numpy(alpha), residual) + (
        (d + n) * EPS * math.sqrt(n) * float(ahat.sum()))
    best = float((U / u_star).sum(1).max())
    assert best <= n * (1 + bound), (best / n - 1, bound)


@given(st.one_of(gaussian_problems(), cone_problems()), st.integers(0, 2**32 - 1))
@settings(max_examples=10, deadline=None)
def test_s10_pareto_bruteforce(problem, seed):
    """S10 and the S3 certificate by random search (``bruteforce_s10``) at the bargain."""
    G, K = problem
    sol = newton(K)
    bruteforce_s10(G.numpy(), sol.alpha.numpy(), float(sol.residual), seed)


# ------------------------------------------------------------------------------------------
# CCP baseline
# ------------------------------------------------------------------------------------------


@CCP
@given(well_scaled_problems(2, 8))
def test_ccp_well_scaled_agrees(problem):
    """§2 CCP: on well-scaled experts (norms in [0.5, 2]) the baseline either reports converged
    and then agrees with Newton by the residual rule with its OWN reported residual
    (≤ ORACLE_RESIDUAL_TOL = 1e-5), or its failure is visible (converged False, true residual
    > 1e-5). Measured: ~37/40 converge; failures seen: ECOS "unbounded" (no point), duplicate
    experts stuck at residual 1.0 (and a stop by its own rule at 1.2e-6, a failure only under
    the former 1e-6 acceptance). The convergence RATE is asserted in
    test_ccp_well_scaled_mostly_converges."""
    _, K = problem
    s = solve_nash(K, method="ccp")
    true_res = float(scaled_residual(K, s.alpha))
    if not bool(s.converged):
        assert true_res > ORACLE_RESIDUAL_TOL, (s.status, true_res)
        return
    assert float(s.residual) <= ORACLE_RESIDUAL_TOL
    sn = newton(K)
    assert_agree(s.alpha, sn.alpha, rule_rtol(K.shape[0], s.residual, sn.residual))


def test_ccp_well_scaled_mostly_converges():
    """§2 CCP (docs/math.md, Solvers: ~1e-7 in 2 solves on well-scaled experts): on 20 fixed
    full-rank Gaussian problems with unit-norm experts, N = 2…8, at least 16 converge (measured
    37/40 on a mixed sample incl. singular cones; the bound leaves room for ECOS variations)."""
    ok = 0
    for seed in range(20):
        n = 2 + seed % 7
        G = torch.from_numpy(gaussian_G(n, n + 3, 1000 + seed))
        G = G / G.norm(dim=0)
        K = G.T @ G
        s = solve_nash(K, method="ccp")
        if bool(s.converged):
            ok += 1
            sn = newton(K)
            assert_agree(s.alpha, sn.alpha, rule_rtol(n, s.residual, sn.residual))
    assert ok >= 16, ok


#: Well-scaled N = 8 problem (column norms in [0.5, 2]) found by hypothesis on which ECOS returns
#: no solution in the CCP's first sub-problem (exact float64 values).
CCP_ECOS_NONE_K = [
    [
        2.118312960991818, 0.345154736339752, -0.045476021291888484, -0.19884717503102076,
        -1.0848081133863177, 0.5073964352019197, 0.15872846077627195, -0.44717014078520373,
    ],
    [
        0.345154736339752, 0.8184460302236997, -0.15710445898016093, 0.1362878100083179,
        -0.0028734400052956716, -0.28481418850657825, 0.3022398862521975, -0.641780937178145,
    ],
    [
        -0.045476021291888484, -0.15710445898016093, 0.3152376526477294, 0.10018834267213164,
        0.054057177594486756, 0.1793239285636491, -0.46415992119769145, -0.10421503176761579,
    ],
    [
        -0.19884717503102076, 0.1362878100083179, 0.10018834267213164, 0.27540606944916246,
        0.3024709759404847, -0.024232630164724683, -0.37961860418980076, -0.34045748448261814,
    ],
    [
        -1.0848081133863177, -0.0028734400052956716, 0.054057177594486756, 0.3024709759404847,
        2.9580744432303625, -1.7112577927251955, -0.05797712589254228, -0.2933650828065887,
    ],
    [
        0.5073964352019197, -0.28481418850657825, 0.1793239285636491, -0.024232630164724683,
        -1.7112577927251955, 3.4936595395826533, -0.9312418470179692, -0.39787227387323965,
    ],
    [
        0.15872846077627195, 0.3022398862521975, -0.46415992119769145, -0.37961860418980076,
        -0.05797712589254228, -0.9312418470179692, 1.987969333642228, 0.9941672580844829,
    ],
    [
        -0.44717014078520373, -0.641780937178145, -0.10421503176761579, -0.34045748448261814,
        -0.2933650828065887, -0.39787227387323965, 0.9941672580844829, 2.5416166145728285,
    ],
]


def test_ccp_ecos_no_solution_is_visible():
    """§2 CCP / result.py: failure is always visible (converged False), never an exception
    from inside the baseline nor a silent wrong answer. Regression: solve_ccp used to crash with
    TypeError (np.abs(None)) when ECOS returned no point (here: "unbounded" on the first
    sub-problem of a feasible, well-scaled problem)."""
    K = torch.tensor(CCP_ECOS_NONE_K, dtype=torch.float64)
    s = solve_nash(K, method="ccp")
    res = float(scaled_residual(K, s.alpha))
    assert res == pytest.approx(float(s.residual), rel=1e-9, abs=0)
    assert res > ORACLE_RESIDUAL_TOL  # the baseline really failed here ...
    assert not bool(s.converged), (s.status, res)  # ... and says so
    assert bool(torch.isfinite(s.alpha).all()) and bool((s.alpha > 0).all())


BAD_SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", BAD_SEEDS)
def test_ccp_badly_scaled_failure_is_visible(seed):
    """§2 CCP: with norms spread over 1e-2…1e2 and N = 8 the baseline may fail (docs/math.md,
    Solvers: residual 0.5–3.4); whenever its residual is > ORACLE_RESIDUAL_TOL (1e-5) it must say
    converged=False, never a silent wrong answer. Also its reported residual must be the true one,
    recomputed here."""
    n = 8
    G = rescale_columns(gaussian_G(n, 16, seed), seed)
    Gt = torch.from_numpy(G)
    K = Gt.T @ Gt
    s = solve_nash(K, method="ccp")
    true_res = float(scaled_residual(K, s.alpha))
    assert abs(true_res - float(s.residual)) <= 1e-12 + 1e-9 * true_res
    if true_res > ORACLE_RESIDUAL_TOL:
        assert not bool(s.converged), (s.status, true_res)
    else:
        sn = newton(K)
        assert_agree(s.alpha, sn.alpha, rule_rtol(n, s.residual, sn.residual))


# ------------------------------------------------------------------------------------------
# Batching, fixed iterations, dtypes, warm start, history
# ------------------------------------------------------------------------------------------


@st.composite
def batches(draw):
    n = draw(st.integers(2, 8))
    b = draw(st.integers(1, 5))
    Ks = []
    for _ in range(b):
        seed = draw(st.integers(0, 2**32 - 1))
        kind = draw(st.sampled_from(["gauss", "cone", "scaled"]))
        if kind == "gauss":
            G = gaussian_G(n, n + 3, seed)
        elif kind == "cone":
            G = cone_G(n, max(2, n - 2), seed)
        else:
            G = rescale_columns(cone_G(n, n + 1, seed), seed)
        Gt = torch.from_numpy(G)
        Ks.append(Gt.T @ Gt)
    return torch.stack(Ks)


@pytest.mark.usefixtures("newton_backend")  # both Newton backends (conftest)
@given(batches())
def test_batched_equals_unbatched(Kb):
    """§2 batched Newton: a (B, N, N) batch equals stacking single solves (residual rule);
    fixed_iterations=30 (no host sync) gives a per-problem converged tensor and the same α."""
    n = Kb.shape[-1]
    sb = solve_nash(Kb)
    assert sb.alpha.shape == Kb.shape[:-1] and sb.converged.shape == Kb.shape[:1]
    sf = solve_nash(Kb, fixed_iterations=30, validate=False)
    assert sf.converged.shape == Kb.shape[:1] and bool(sf.converged.all())
    for i in range(Kb.shape[0]):
        si = newton(Kb[i])
        assert_agree(sb.alpha[i], si.alpha, rule_rtol(n, sb.residual[i], si.residual))
        assert_agree(sf.alpha[i], si.alpha, rule_rtol(n, sf.residual[i], si.residual))
        assert float(sf.residual[i]) <= newton_tol(Kb[i], sf.alpha[i])


@pytest.mark.usefixtures("newton_backend")  # both Newton backends (conftest)
def test_fixed_iterations_mixed_feasible_infeasible():
    """§2 fixed-iteration mode, validate=False: a batch with one feasible and one infeasible
    (anti-parallel, S6) problem returns finite positive α for both, converged False only for the
    infeasible one, and no exception or NaN."""
    G = torch.from_numpy(gaussian_G(3, 5, 7))
    K_ok = G.T @ G
    t = torch.from_numpy(np.random.default_rng(3).standard_normal(5))
    Gbad = torch.stack([t, -2.0 * t, torch.from_numpy(np.random.default_rng(4).standard_normal(5))],
                       1)
    K_bad = Gbad.T @ Gbad
    sol = solve_nash(torch.stack([K_ok, K_bad]), fixed_iterations=30, validate=False)
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
    assert bool(torch.isfinite(sol.residual).all())
    assert sol.converged.tolist() == [True, False]


def input_rounding_rtol(K: torch.Tensor, alpha: torch.Tensor, dtype: torch.dtype) -> float:
    """Relative change of α caused by rounding K to ``dtype`` (first order, derivation).

    Rounding to nearest gives K̃ = K + ΔK with |ΔK_ij| ≤ u|K_ij|, u = eps(dtype)/2. Differentiating
    Kα = 1/α: (K + diag α⁻²) dα = −ΔK α; with dα = α∘z and D = diag α this is
    (DKD + I) z = −α∘(ΔK α). The matrix has eigenvalues ≥ 1 (module docstring), so
    max_i |z_i| ≤ ‖α∘(ΔK α)‖₂ ≤ u·‖α∘(|K|α)‖₂ — the conditioning of the bargain at α, in
    scale-free form (S9). Doubled for the second-order terms (valid while the bound ≪ 1).
    """
    u = float(torch.finfo(dtype).eps) / 2
    return 2 * u * float((alpha * (K.abs() @ alpha)).norm())


def scipy_bargain(K: np.ndarray) -> np.ndarray:
    """Independent float64 solution of Kα = 1/α (S4): MINPACK's hybrid root finder from the S8
    point 1/√K_ii; its own residual is checked (≤ 1e-13), not its status."""
    from scipy.optimize import root

    a = root(lambda a: a * (K @ a) - 1.0, 1.0 / np.sqrt(np.diag(K)), method="hybr", tol=1e-14).x
    assert np.all(a > 0) and np_residual(K, a) <= 1e-13
    return np.asarray(a)


def np_residual(K: np.ndarray, a: np.ndarray) -> float:
    """max_i |α_i(Kα)_i − 1| in numpy (S4, S7)."""
    return float(np.abs(a * (K @ a) - 1.0).max())


@pytest.mark.usefixtures("newton_backend")  # both Newton backends (conftest)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    """§2: float32/float16/bfloat16 K are accepted and solved in float64 (α is float64): α solves
    the ROUNDED K (residual re-evaluated in numpy), and differs from the bargain of the float64
    K (scipy's root finder, ``scipy_bargain``) by no more than rounding K's entries explains
    (``input_rounding_rtol``: 2.7e-7 / 2.2e-3 / 1.7e-2 here; measured errors 1.7e-8 / 1.3e-4 /
    7.5e-4) plus the residual rule. The bound is not vacuous: the rounding really moves α
    (error > 0) and α moved by 2× the bound fails."""
    G = torch.from_numpy(cone_G(5, 12, 11, spread=0.5))
    K64 = G.T @ G
    K = K64.to(dtype)
    s = solve_nash(K)
    assert s.alpha.dtype == torch.float64 and bool(s.converged)
    res = np_residual(K.double().numpy(), s.alpha.numpy())  # on the rounded values
    assert res <= newton_tol(K.double(), s.alpha), res
    true = torch.from_numpy(scipy_bargain(K64.numpy()))
    rtol = input_rounding_rtol(K64, true, dtype) + rule_rtol(5, res, 1e-13)
    assert rtol < 0.05  # first-order regime
    err = ((s.alpha - true).abs() / true).max().item()
    assert 0 < err <= rtol, (err, rtol)
    with pytest.raises(AssertionError):
        assert_agree(true * (1 + 2 * rtol), true, rtol)


@given(feasible_problems())
def test_warm_start_and_history(problem):
    """§2 Newton: warm start at the solution takes 0 iterations; record_history has one entry
    per iteration, ends at or below the tolerance, and decreases monotonically once in the
    quadratic region (residual < 0.1)."""
    _, K = problem
    s = solve_nash(K, record_history=True)
    assert solve_nash(K, alpha0=s.alpha).iterations == 0
    if s.iterations == 0:
        assert s.history is None
        return
    h = s.history
    assert h is not None and h.shape[0] == s.iterations
    assert float(h[-1]) <= newton_tol(K, s.alpha)
    assert float(h[-1]) == pytest.approx(float(s.residual), rel=1e-6, abs=0)
    tail = h[h < 0.1]
    if tail.numel() > 1:
        assert bool((tail[1:] < tail[:-1]).all()), h.tolist()


@SLOW
@given(st.integers(2, 8), st.integers(0, 2**32 - 1))
def test_ill_conditioned_cone(n, seed):
    """§2 Newton: cone experts with spread 1e-6 (cond(K̂) ~ 1e12) converge under Newton's
    rounding-aware rule and agree with the cvxpy oracle by the residual rule."""
    G = torch.from_numpy(cone_G(n, n + 2, seed, spread=1e-6))
    K = G.T @ G
    s = newton(K)
    so = solve_nash(K, method="cvxpy")
    check_oracle(so)
    assert_agree(s.alpha, so.alpha, rule_rtol(n, s.residual, so.residual))


# Regressions: Clarabel reached only 1.6e-6…3.8e-6 on these; ORACLE_RESIDUAL_TOL was raised
# from 1e-6 to 1e-5 with that measurement as the written reason (namex_ref/nash/solvers.py).
@pytest.mark.parametrize(
    "G",
    [
        # duplicate experts in d = 2 (rank-1 K), found by hypothesis (cone strategy, d = 2)
        torch.tensor([[0.8705, 0.8705], [-0.5520, -0.5520]], dtype=torch.float64),
        # cone spread 1e-6, N = 2 (cond(K̂) ~ 1e12), found by hypothesis
        torch.from_numpy(cone_G(2, 4, 17131827, spread=1e-6)),
    ],
    ids=["duplicate-rank1", "cone-1e-6"],
)
def test_cvxpy_oracle_meets_its_tolerance_regressions(G):
    """§2 cvxpy oracle: residual ≤ ORACLE_RESIDUAL_TOL on feasible problems."""
    sol = solve_nash(G.T @ G, method="cvxpy")
    assert float(sol.residual) <= ORACLE_RESIDUAL_TOL, (sol.status, float(sol.residual))


def test_ccp_batched_converged_is_per_problem():
    """Batched ccp reports converged per problem, equal to solving each problem alone (a batch
    mixing a well-scaled problem with a badly scaled one must not mark both unconverged)."""
    rng = np.random.default_rng(1)
    G_bad = rng.normal(size=(64, 8)) * 10.0 ** rng.uniform(-2, 2, size=8)
    G_good = rng.normal(size=(64, 8))
    Ks = torch.from_numpy(np.stack([G_good.T @ G_good, G_bad.T @ G_bad]))
    batched = solve_ccp(Ks)
    alone = torch.stack([solve_ccp(Ks[i]).converged for i in range(2)])
    assert torch.equal(batched.converged, alone)
    assert bool(alone[0]) and not bool(alone[1])  # the fixture really mixes the two cases
