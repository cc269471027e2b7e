"""Newton's algorithm, step by step, against its specification computed here in numpy (S4, S5).

``solve_newton`` documents a damped Newton method on f(α) = ½αᵀKα − Σ log α_i (S5): Newton
direction Δ = −(∇²f)⁻¹∇f, decrement λ = √(∇fᵀ(∇²f)⁻¹∇f), step 1/(1 + λ) while λ > 0.25 and 1
after, started at α̂ = 1 in unit-diagonal units (S9). The iterates are read off the solver by
running it for k = 0, 1, 2, … fixed iterations, and each step is recomputed here from K and the
previous iterate with numpy's own linear algebra — so a wrong decrement, damping rule, threshold
or triangular solve is caught at the step where it happens, not only as "slower".

The fraction-to-boundary rule (0.99) is never active for N ≤ 1089, so it is not observable
here. Proof: with M = DK̂D + I ⪰ I and r = M1 − 2·1 (because r = α̂∘(K̂α̂) − 1 = (M − I)1 − 1),
the step z = −M⁻¹r = −1 + 2M⁻¹1 has ‖z‖₂ ≤ 3√N, and λ² = zᵀMz ≥ ‖z‖₂². A step t·z_i < −0.99
needs |z_i| > 0.99(1 + λ) ≥ 0.99(1 + ‖z‖₂), so ‖z‖₂ > 99, i.e. N > 1089.

Tolerances: one step is recomputed from the same α in float64 by LAPACK (numpy) instead of the
solver's multiplicative-form Cholesky; the two differ by rounding amplified by the condition
number of ∇²f in the α̂ scaling, ≤ 1e3 for the problems below: 1e-10 relative on the step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from namex_ref.nash import solve_nash
from namex_ref.nash.closed_form import solve_closed_form
from namex_ref.nash.newton import solve_newton
from namex_ref.nash.problem import infeasibility_certificate, residual_floor
from tests.oracles import positive_root

# Every test runs through both Newton backends (tests/conftest.py): the fused CPU default and
# the eager torch loop that CUDA tensors take, against the same oracles.
pytestmark = pytest.mark.usefixtures("newton_backend")


def _problem(n: int, d: int, seed: int, spread: float = 1.0, scale: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    G = w[:, None] + spread * rng.standard_normal((d, n))
    G = G * 10.0 ** rng.uniform(-scale, scale, n)[None, :]
    return G.T @ G


def _iterates(K: np.ndarray, steps: int) -> list[np.ndarray]:
    Kt = torch.from_numpy(K)
    out = [solve_newton(Kt, fixed_iterations=k).alpha.numpy() for k in range(steps + 1)]
    return out


def _spec_step(K: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, float]:
    """One step of the documented damped Newton method, in numpy."""
    g = K @ a - 1.0 / a
    H = K + np.diag(a**-2.0)
    delta = -np.linalg.solve(H, g)
    lam = math.sqrt(max(float(-g @ delta), 0.0))
    t = 1.0 / (1.0 + lam) if lam > 0.25 else 1.0
    return a + t * delta, lam


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_every_newton_step_is_the_specified_damped_step(n: int, seed: int) -> None:
    K = _problem(n, n + 3, seed, spread=1.5)
    its = _iterates(K, 12)
    d = 1.0 / np.sqrt(np.diag(K))
    np.testing.assert_allclose(its[0], d, rtol=1e-15)  # α̂ = 1 start (exact for S8)
    lams = []
    for k in range(12):
        want, lam = _spec_step(K, its[k])
        lams.append(lam)
        if lam < 1e-7:  # converged: the solver freezes solved problems
            break
        np.testing.assert_allclose(its[k + 1], want, rtol=1e-10, err_msg=f"step {k}")
    assert lams[-1] < 1e-7, lams  # reached the solution within 12 steps


def test_damped_and_full_steps_both_occur() -> None:
    """The problems above exercise both regimes: λ > 0.25 (damped) and λ ≤ 0.25 (full)."""
    K = _problem(5, 8, 0, spread=1.5)
    its = _iterates(K, 12)
    lams = [_spec_step(K, a)[1] for a in its]
    assert max(lams) > 0.25 and min(lams) < 0.25, lams


def test_adaptive_iteration_count_and_status() -> None:
    """Adaptive mode stops at the first iterate whose residual passes (S4 residual ≤ 1e-10):
    its iteration count is the first k where the recomputed residual of iterate k does."""
    K = _problem(6, 9, 1, spread=1.5)
    its = _iterates(K, 15)
    res = [float(np.max(np.abs(a * (K @ a) - 1))) for a in its]
    first = next(k for k, r in enumerate(res) if r <= 1e-10)
    sol = solve_newton(torch.from_numpy(K))
    assert sol.iterations == first and sol.status == "converged" and bool(sol.converged)
    capped = solve_newton(torch.from_numpy(K), max_iter=first - 1)
    assert capped.status == "max_iter" and not bool(capped.converged)
    assert capped.iterations == first - 1
    fixed = solve_newton(torch.from_numpy(K), fixed_iterations=3)
    assert fixed.status == "fixed_iterations" and fixed.iterations == 3


def test_pinned_accuracy_against_independent_root() -> None:
    """Accuracy pinned by its own number (not the code's RESIDUAL_TOL): residual ≤ 1e-10 and α
    within 1e-9 relative of scipy's root, on problems with norms spread over 1e-2…1e2."""
    for seed in range(8):
        K = _problem(7, 10, seed)
        sol = solve_nash(torch.from_numpy(K))
        a = sol.alpha.numpy()
        assert float(np.max(np.abs(a * (K @ a) - 1))) <= 1e-10
        np.testing.assert_allclose(a, positive_root(K), rtol=1e-9)


@pytest.mark.parametrize("lone", [0, 2, 4])
def test_block_diagonal_with_a_single_expert_block(lone: int) -> None:
    """Expert ``lone`` is orthogonal to all others: K is block diagonal and the blocks decouple,
    α_lone = 1/‖τ_lone‖ (S8) and the rest is the bargain of the others alone (scipy root)."""
    rng = np.random.default_rng(lone)
    n, d = 5, 9
    G = rng.standard_normal((d, n)) + 2.0 * rng.standard_normal(d)[:, None]
    G[:, lone] = 0.0
    G[-1, :] = 0.0
    G[-1, lone] = 3.0  # τ_lone = 3·e_d, orthogonal to every other τ
    K = G.T @ G
    others = [i for i in range(n) if i != lone]
    want = np.empty(n)
    want[lone] = 1.0 / 3.0
    want[others] = positive_root(K[np.ix_(others, others)])
    for sol in (solve_nash(torch.from_numpy(K)), solve_newton(torch.from_numpy(K))):
        assert bool(sol.converged)
        np.testing.assert_allclose(sol.alpha.numpy(), want, rtol=1e-9)


def test_two_orthogonal_experts_closed_form_and_newton() -> None:
    K = torch.tensor([[4.0, 0.0], [0.0, 0.25]], dtype=torch.float64)
    for sol in (solve_closed_form(K), solve_newton(K)):
        np.testing.assert_allclose(sol.alpha.numpy(), [0.5, 2.0], rtol=1e-15)
        assert bool(sol.converged)


def test_residual_floor_formula() -> None:
    """residual_floor = eps·N·max_i α_i(|K|α)_i, recomputed here."""
    K = _problem(4, 6, 3)
    a = positive_root(K)
    want = np.finfo(np.float64).eps * 4 * np.max(a * (np.abs(K) @ a))
    got = float(residual_floor(torch.from_numpy(K), torch.from_numpy(a)))
    assert got == pytest.approx(want, rel=1e-14, abs=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("infeasible", [False, True])
def test_certificate_lp_is_optimal(seed: int, infeasible: bool) -> None:
    """The S6 LP's v̂ minimises ‖K̂v‖∞ over the simplex: checked against cvxpy (Clarabel), an
    independent solver of the same convex problem, to 1e-6 absolute (both solvers' accuracy)."""
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    G = rng.standard_normal((6, 5))  # rank 5: no v ≥ 0, v ≠ 0 with Gv = 0 (feasible)
    if infeasible:
        G[:, 4] = -(G[:, :4] @ rng.uniform(0.2, 1.0, 4))  # 0 in the cone: no bargain (S6)
    K = G.T @ G
    v, dist = infeasibility_certificate(torch.from_numpy(K))
    norms = np.sqrt(np.diag(K))
    Kh = K / np.outer(norms, norms)
    vh = v.numpy() * norms
    vh = vh / vh.sum()
    x = cp.Variable(5, nonneg=True)
    prob = cp.Problem(cp.Minimize(cp.norm(Kh @ x, "inf")), [cp.sum(x) == 1])
    prob.solve(solver=cp.CLARABEL)
    assert float(np.max(np.abs(Kh @ vh))) == pytest.approx(prob.value, abs=1e-6)
    assert dist == pytest.approx(float(vh @ Kh @ vh), abs=1e-15)
    if infeasible:
        assert dist <= 1e-9
    else:
        assert prob.value > 1e-3 and dist > 1e-9


@pytest.mark.parametrize("c", [1e-4, 1e-2, 1e2, 1e4])
def test_warm_start_with_a_wrong_overall_scale_costs_nothing(c: float) -> None:
    """A warm start c·α* (the right direction, the wrong scale) is rescaled to the minimum of f
    on its ray, s = √(N/α0ᵀKα0), which is α* itself (S7: α*ᵀKα* = N): at most one step, and α
    equals the independent root. Before, c = 100 needed ~108 damped steps (> the 100 allowed)."""
    K = _problem(6, 9, 4)
    want = positive_root(K)
    sol = solve_nash(torch.from_numpy(K), alpha0=torch.from_numpy(c * want))
    assert bool(sol.converged) and sol.iterations <= 1, (sol.iterations, sol.status)
    np.testing.assert_allclose(sol.alpha.numpy(), want, rtol=1e-9)


def test_scaled_gradient_is_alpha_times_autograd_gradient_of_f() -> None:
    """S5: scaled_gradient(K, α) = α∘∇f with f(α) = ½αᵀKα − Σ log α_i differentiated here by
    autograd (an independent route to ∇f), and it vanishes at the independent root (S4)."""
    from namex_ref.nash.problem import scaled_gradient

    K = torch.from_numpy(_problem(5, 7, 5))
    a = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    a.requires_grad_(True)
    f = 0.5 * a @ K @ a - a.log().sum()
    (g,) = torch.autograd.grad(f, a)
    torch.testing.assert_close(scaled_gradient(K, a.detach()), a.detach() * g, rtol=1e-13,
                               atol=1e-13)
    root_ = torch.from_numpy(positive_root(K.numpy()))
    assert float(scaled_gradient(K, root_).abs().max()) <= 1e-12


# ------------------------------------------------------------------------------------------
# Warm starts: forms, shapes, and invalid values in the no-synchronisation mode
# ------------------------------------------------------------------------------------------


def test_alpha0_forms_and_broadcasting() -> None:
    """alpha0 may be a list, an (N,) tensor shared by a batch, or one row per problem; the
    answer is the independent root either way (S4)."""
    K1, K2 = _problem(3, 5, 6), _problem(3, 5, 7)
    Kb = torch.from_numpy(np.stack([K1, K2]))
    want = np.stack([positive_root(K1), positive_root(K2)])
    for a0 in ([1.0, 2.0, 3.0], torch.tensor([1.0, 2.0, 3.0]), torch.ones(1, 3),
               torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])):
        sol = solve_nash(Kb, alpha0=a0)
        np.testing.assert_allclose(sol.alpha.numpy(), want, rtol=1e-9)


@pytest.mark.parametrize(
    ("a0", "match"),
    [
        ("abc", "array-like"),
        (torch.ones(4, 3), "shape"),
        (torch.ones(2, 1, 3), "shape"),
        (torch.ones(()), "shape"),
        (torch.ones(3, dtype=torch.complex128), "real"),
    ],
)
def test_alpha0_rejections(a0: object, match: str) -> None:
    Kb = torch.from_numpy(np.stack([_problem(3, 5, 6), _problem(3, 5, 7)]))
    with pytest.raises(Exception, match=match) as exc:
        solve_newton(Kb, alpha0=a0)  # type: ignore[arg-type]
    assert type(exc.value).__name__ == "BargainInputError"


def test_invalid_warm_start_in_fixed_mode_starts_from_one() -> None:
    """fixed_iterations reads nothing back, so an invalid warm start cannot raise there: the
    problem with a non-positive or NaN start is started from α̂ = 1 instead, i.e. exactly as the
    valid warm start α0 = 1/√K_ii (the same iterates, bit for bit); a valid row of the same
    batch keeps its own warm start."""
    K = np.stack([_problem(3, 5, 8), _problem(3, 5, 9)])
    Kt = torch.from_numpy(K)
    unit = torch.from_numpy(1.0 / np.sqrt(np.stack([np.diag(k) for k in K])))  # α̂ = 1
    a0 = torch.tensor([[1.0, -1.0, 1.0], [math.nan, 1.0, 1.0]], dtype=torch.float64)
    for steps in (1, 2):
        got = solve_newton(Kt, alpha0=a0, fixed_iterations=steps).alpha
        same = solve_newton(Kt, alpha0=unit, fixed_iterations=steps).alpha
        torch.testing.assert_close(got, same, rtol=0, atol=0)
    mixed = torch.stack([torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), a0[1]])
    warm = solve_newton(Kt, alpha0=mixed, fixed_iterations=1).alpha
    own = solve_newton(Kt[0], alpha0=mixed[0], fixed_iterations=1).alpha
    torch.testing.assert_close(warm[0], own, rtol=1e-15, atol=0)  # batched vs single LAPACK
    assert not torch.equal(warm[0], solve_newton(Kt, alpha0=unit, fixed_iterations=1).alpha[0])
    torch.testing.assert_close(warm[1], solve_newton(Kt, alpha0=unit, fixed_iterations=1).alpha[1],
                               rtol=0, atol=0)
    sol = solve_newton(Kt, alpha0=a0, fixed_iterations=30)
    np.testing.assert_allclose(sol.alpha.numpy(), np.stack([positive_root(k) for k in K]),
                               rtol=1e-9)
