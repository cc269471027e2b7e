"""Contracts of the slow oracle solvers (cvxpy, primal, ccp; §2 "Solvers" of docs/math.md).

Checked against independent oracles (``tests.oracles.positive_root``: scipy's MINPACK on S4) and
the documented behaviour: batch bookkeeping of the shared loop (statuses joined sorted with "/",
the largest iteration count, per-problem ``converged``, batch indices in errors), the mapping of
a non-optimal conic status to the S6 certificate or a RuntimeError (statuses simulated by
replacing the solve), and Navon et al.'s stopping rules of the CCP (at most ``max_steps`` convex
solves, residual test ‖K̃α − 1/(α + 1e-10)‖ < 1e-3 with K̃ = K/‖K‖_F, step test ‖Δα‖ < 1e-6, the
previous α kept on a solver error and counted in ``status``, ``history`` one entry per solve).
Convex solves are counted and recorded by a spy wrapped around the cached CCP sub-problem, so the
expected counts and iterates come from ECOS itself, not from the code under test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import torch

from namex_ref.nash import oracles, solve_nash
from namex_ref.nash.oracles import (
    CCP_RESIDUAL_STOP,
    ORACLE_RESIDUAL_TOL,
    solve_ccp,
    solve_cvxpy,
    solve_primal,
)
from namex_ref.nash.result import InfeasibleBargainError
from tests.oracles import positive_root


def gram(G: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(G.T @ G)


def feasible_G(seed: int, n: int = 4, d: int = 6) -> np.ndarray:
    """Gaussian experts with column norms spread over [0.5, 3] (full rank, feasible: S6)."""
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(d, n))
    return G / np.linalg.norm(G, axis=0) * rng.uniform(0.5, 3.0, size=n)


def rel_err(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - b) / b))


#: Relative agreement with the root finder: by the residual rule of tests/test_nash_solvers.py
#: (rtol = 2√N·(r1 + r2)), an oracle residual ≤ ORACLE_RESIDUAL_TOL = 1e-5 at N = 4 allows 4e-5;
#: the wrong answers the tests guard against are off by ≥ 1e-2.
ALPHA_RTOL = 2 * math.sqrt(4) * ORACLE_RESIDUAL_TOL


# ------------------------------------------------------------------------------------------
# cvxpy and primal against the independent root
# ------------------------------------------------------------------------------------------


def test_cvxpy_and_primal_agree_with_independent_root() -> None:
    """S4/S5 (cvxpy) and S3/S7 (primal, with the factor of K̂ and with the real G whose columns
    have norms ≠ 1, S9): α matches scipy's root, the status is Clarabel's "optimal", the
    iteration count is Clarabel's (an interior-point solve takes ≥ 1 iteration) and the
    problem is converged."""
    G = feasible_G(0)
    K = gram(G)
    ref = positive_root(K.numpy())
    for sol in (solve_cvxpy(K), solve_primal(K), solve_primal(K, G=torch.from_numpy(G))):
        assert rel_err(sol.alpha, ref) <= ALPHA_RTOL, sol.method
        assert sol.status in ("optimal", "optimal_inaccurate"), sol.status
        assert sol.iterations >= 1
        assert sol.alpha.dtype == torch.float64 and sol.alpha.shape == (4,)
        assert bool(sol.converged)


def test_oracles_on_rank_deficient_gram() -> None:
    """Singular K̂ (N = 4 experts in a 2-D cone: feasible, rank 2): eigh returns eigenvalues of
    ±1e-16 for the null space, which the factor F (FᵀF = K̂) must treat as 0, not NaN. Both
    conic oracles still agree with the root finder."""
    rng = np.random.default_rng(0)
    G = np.abs(rng.normal(size=(2, 4)))
    K = gram(G)
    Kh = K / torch.sqrt(torch.diagonal(K)[:, None] * torch.diagonal(K)[None, :])
    assert float(torch.linalg.eigvalsh(Kh).min()) < 0  # the fixture hits the clamp
    ref = positive_root(K.numpy())
    for sol in (solve_cvxpy(K), solve_primal(K)):
        assert bool(torch.isfinite(sol.alpha).all())
        assert rel_err(sol.alpha, ref) <= ALPHA_RTOL, sol.method


def test_primal_uses_G_only_for_an_unbatched_problem() -> None:
    """solve_primal's ``G`` belongs to a single problem; in a batch it is ignored and every
    problem is solved from its own K (each agrees with its own root)."""
    G1, G2 = feasible_G(1), feasible_G(2)
    Ks = torch.stack([gram(G1), gram(G2)])
    sol = solve_primal(Ks, G=torch.from_numpy(G1))
    for i in range(2):
        assert rel_err(sol.alpha[i], positive_root(Ks[i].numpy())) <= ALPHA_RTOL, i


# ------------------------------------------------------------------------------------------
# The shared batch loop, with a stub single-problem oracle
# ------------------------------------------------------------------------------------------


def test_loop_batch_bookkeeping() -> None:
    """_loop (shared by cvxpy/primal/ccp): each problem of a 2-D batch (2, 3) is handed over as
    a float64 CPU (N, N) matrix with its unravelled batch index; α keeps the batch shape; the
    status is the sorted distinct statuses joined with "/", iterations the largest count, and
    converged is per problem (the stub returns the exact root for some problems only)."""
    G = feasible_G(3)
    K1 = gram(G)
    ref = torch.from_numpy(positive_root(K1.numpy()))
    Ks = K1.expand(2, 3, 4, 4).to(torch.float32).to(torch.float64)  # float32-exact values
    K32 = Ks.to(torch.float32)
    ref32 = torch.from_numpy(positive_root(K32[0, 0].double().numpy()))
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []
    names = ["s5", "s3", "s0", "s4", "s1", "s2"]
    nits = [3, 7, 0, 5, 2, 1]

    def one(Kb: torch.Tensor, idx: tuple[int, ...]) -> tuple[torch.Tensor, int, str]:
        seen.append((Kb.dtype, idx))
        k = len(seen) - 1
        return (ref32 if k % 2 == 0 else 2 * ref32), nits[k], names[k]

    sol = oracles._loop(K32, one, "stub")
    assert seen == [(torch.float64, (i, j)) for i in range(2) for j in range(3)]
    assert sol.alpha.shape == (2, 3, 4) and sol.alpha.dtype == torch.float64
    assert sol.status == "s0/s1/s2/s3/s4/s5"
    assert sol.iterations == 7
    assert sol.converged.tolist() == [[True, False, True], [False, True, False]]
    assert sol.method == "stub"
    assert rel_err(ref32, ref.numpy()) < 1e-5  # the float32 rounding of K barely moves α

    zero = oracles._loop(K1, lambda Kb, idx: (ref, 0, "x"), "stub")
    assert zero.iterations == 0 and zero.status == "x" and zero.alpha.shape == (4,)


# ------------------------------------------------------------------------------------------
# Non-optimal conic statuses (simulated) → S6 certificate or RuntimeError
# ------------------------------------------------------------------------------------------


def fake_status(status: str) -> Callable[[Any], None]:
    def solve(prob: Any) -> None:
        prob._status = status

    return solve


@pytest.mark.parametrize("solve", [solve_cvxpy, solve_primal], ids=["cvxpy", "primal"])
def test_non_optimal_status_on_feasible_problem_raises(
    solve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status other than optimal/optimal_inaccurate on a feasible bargain is a RuntimeError
    naming the method and the status (not a crash on a missing point)."""
    monkeypatch.setattr(oracles, "_solve_clarabel", fake_status("solver_error"))
    name = "cvxpy" if solve is solve_cvxpy else "primal"
    with pytest.raises(RuntimeError, match=rf"^{name}: solver returned status 'solver_error'"):
        solve(gram(feasible_G(4)))


@pytest.mark.parametrize("solve", [solve_cvxpy, solve_primal], ids=["cvxpy", "primal"])
def test_non_optimal_status_on_infeasible_problem_gives_certificate(
    solve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """S6: an infeasible status in a (2, 3) batch whose problem (1, 2) has anti-parallel experts
    raises InfeasibleBargainError for that problem, with its unravelled index and the
    certificate v ≥ 0, Σv = 1, Gv = 0 (checked on the experts themselves)."""
    G = feasible_G(5, n=3)
    bad = G.copy()
    bad[:, 1] = -0.5 * bad[:, 0]
    Ks = gram(G).expand(2, 3, 3, 3).clone()
    Ks[1, 2] = gram(bad)
    real = oracles._solve_clarabel
    calls: list[int] = []

    def fake(prob: Any) -> None:  # Clarabel on the 5 feasible problems, "infeasible" on the last
        calls.append(1)
        if len(calls) == 6:
            prob._status = "infeasible"
        else:
            real(prob)

    monkeypatch.setattr(oracles, "_solve_clarabel", fake)
    with pytest.raises(InfeasibleBargainError, match=r"\(problem \(1, 2\)\)") as info:
        solve(Ks)
    err = info.value
    assert err.batch_index == (1, 2)
    v = err.certificate.numpy()
    assert np.all(v >= 0) and v.sum() == pytest.approx(1.0, abs=1e-12)
    # HiGHS solves the LP to ~1e-9; the experts have norms ≤ 3
    assert np.linalg.norm(bad @ v) <= 1e-7


@pytest.mark.parametrize("solve", [solve_cvxpy, solve_primal], ids=["cvxpy", "primal"])
def test_unreported_iteration_count_is_zero(
    solve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A solver that does not report its iteration count contributes 0 (not an invented 1)."""
    real = oracles._solve_clarabel

    def no_stats(prob: Any) -> None:
        real(prob)
        prob._solver_stats = dataclasses.replace(prob._solver_stats, num_iters=None)

    monkeypatch.setattr(oracles, "_solve_clarabel", no_stats)
    K = gram(feasible_G(6))
    sol = solve(K)
    assert sol.iterations == 0
    assert rel_err(sol.alpha, positive_root(K.numpy())) <= ALPHA_RTOL


@pytest.mark.parametrize("solve", [solve_cvxpy, solve_primal], ids=["cvxpy", "primal"])
def test_non_positive_solver_point_keeps_alpha_positive(
    solve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NashSolution.alpha is finite and > 0 everywhere: if the conic solver reports "optimal"
    with a zero coordinate (α̂_1 = 0 for cvxpy, ΔE = 0 so u = 0 for primal), α stays finite
    and positive and the problem is not converged."""
    real = oracles._solve_clarabel

    def zero_point(prob: Any) -> None:
        real(prob)
        var = prob.variables()[0]
        value = np.zeros(var.shape) if solve is solve_primal else var.value.copy()
        value[0] = 0.0
        var.save_value(value)

    monkeypatch.setattr(oracles, "_solve_clarabel", zero_point)
    sol = solve(gram(feasible_G(7)))
    assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all()), sol.alpha
    assert not bool(sol.converged)


# ------------------------------------------------------------------------------------------
# CCP (Navon et al.'s baseline)
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Spy:
    """Wraps the cached CCP sub-problem's solve: counts calls, records ECOS's points, and can
    raise SolverError or overwrite the point on chosen calls (1-based)."""

    alpha: Any
    calls: int = 0
    points: list[np.ndarray] = dataclasses.field(default_factory=list)
    statuses: list[str] = dataclasses.field(default_factory=list)
    raise_on: tuple[int, ...] = ()
    overwrite: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


@pytest.fixture
def ccp_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Spy]]:
    def install(n: int) -> Spy:
        # rebuild the (lru-cached) sub-problem inside this test, so that a line-coverage based
        # test selection (tools/mutation.py) credits these tests with _ccp_problem's lines
        oracles._ccp_problem.cache_clear()
        prob, alpha, *_ = oracles._ccp_problem(n)
        spy = Spy(alpha)
        real = prob.solve

        def solve(*args: Any, **kwargs: Any) -> Any:
            spy.calls += 1
            assert kwargs.get("solver") == cp.ECOS and kwargs.get("max_iters") == 100
            if spy.calls in spy.raise_on:
                raise cp.error.SolverError("simulated")
            out = real(*args, **kwargs)
            if spy.calls in spy.overwrite:
                alpha.save_value(spy.overwrite[spy.calls])
            spy.points.append(np.array(alpha.value))
            spy.statuses.append(str(prob.status))
            return out

        monkeypatch.setattr(prob, "solve", solve)
        return spy

    yield install


def np_residual(K: np.ndarray, a: np.ndarray) -> float:
    """max_i |α_i(Kα)_i − 1| in numpy (S4)."""
    return float(np.max(np.abs(a * (K @ a) - 1.0)))


def badly_scaled_K() -> torch.Tensor:
    """N = 4 experts with norms 1e-2…1e2: Navon's iteration does not stop in 3 solves."""
    G = feasible_G(8)
    return gram(G * np.array([1e-2, 1.0, 1e2, 10.0]))


@pytest.mark.parametrize("max_steps", [1, 3])
def test_ccp_max_steps_and_history(max_steps: int, ccp_spy: Callable[[int], Spy]) -> None:
    """At most ``max_steps`` convex solves; when no rule fires it stops with "max_steps", makes
    exactly that many ECOS calls, reports them as ``iterations``, returns the last iterate
    |α_new| and, with record_history, one residual per solve: the S4 residual of each ECOS
    point, recomputed here in numpy. No solver error, so no solver_errors tag."""
    K = badly_scaled_K()
    spy = ccp_spy(4)
    sol = solve_ccp(K, max_steps=max_steps, record_history=True)
    assert spy.calls == max_steps == sol.iterations
    assert sol.status == f"max_steps:{spy.statuses[-1]}"
    assert not bool(sol.converged)
    np.testing.assert_array_equal(sol.alpha.numpy(), np.abs(spy.points[-1]))
    assert isinstance(sol.history, torch.Tensor) and sol.history.dtype == torch.float64
    expected = [np_residual(K.numpy(), np.abs(p)) for p in spy.points]
    np.testing.assert_allclose(sol.history.numpy(), expected, rtol=1e-12, atol=0)


def test_ccp_history_only_when_asked_and_unbatched() -> None:
    """``history`` is None without record_history, and for a batch (it is per problem)."""
    K = badly_scaled_K()
    assert solve_ccp(K, max_steps=1).history is None
    assert solve_ccp(torch.stack([K, K]), max_steps=1, record_history=True).history is None
    assert solve_ccp(torch.stack([K]), max_steps=1, record_history=True).history is not None


def test_ccp_zero_steps() -> None:
    """max_steps = 0: no convex solve, iterations 0, α = the start (1), not converged."""
    sol = solve_ccp(badly_scaled_K(), max_steps=0)
    assert sol.iterations == 0 and sol.status == "max_steps:optimal"
    np.testing.assert_array_equal(sol.alpha.numpy(), np.ones(4))
    assert not bool(sol.converged)


def well_scaled_K(scale: float) -> torch.Tensor:
    """A feasible K with ‖K‖_F = scale."""
    K = gram(feasible_G(9))
    return K / torch.linalg.norm(K) * scale


def test_ccp_residual_rule_uses_frobenius_scaled_K(ccp_spy: Callable[[int], Spy]) -> None:
    """The residual test is ‖K̃α − 1/(α + 1e-10)‖ < 1e-3 with K̃ = K/‖K‖_F and fires on the
    iterate α_t BEFORE the step (the returned α is that iterate). With ‖K‖_F = 4, K̃β = 1/β at
    β = 2α* (α* the bargain of K); start at β(1 + 1e-5·i): the residual test fires at step 1
    (‖·‖ ≈ 1e-4 < 1e-3) while the step test could not (‖Δα‖ ≫ 1e-6); α = alpha0 exactly, the
    rule fired (status "stopped") but α is 2α*, so not converged (docstring note)."""
    K = well_scaled_K(4.0)
    beta = 2.0 * positive_root(K.numpy()) * (1 + 1e-5 * np.arange(4))
    Kt = K.numpy() / np.linalg.norm(K.numpy())
    assert np.linalg.norm(Kt @ beta - 1 / (beta + 1e-10)) < CCP_RESIDUAL_STOP / 5
    spy = ccp_spy(4)
    sol = solve_ccp(K, alpha0=torch.from_numpy(beta))
    assert spy.calls == 1 and sol.iterations == 1
    assert np.linalg.norm(spy.points[0] - beta) > 1e-5  # the step test alone would not fire
    np.testing.assert_array_equal(sol.alpha.numpy(), beta)
    assert sol.status == "stopped:optimal"
    assert not bool(sol.converged)


def test_ccp_from_ones_converges_to_the_root() -> None:
    """§2: with ‖K‖_F = 1 (where Navon's residual test is consistent) the iteration from α = 1
    stops by its rule and α agrees with scipy's root; the solution is float64."""
    K = well_scaled_K(1.0)
    sol = solve_ccp(K)
    assert sol.status.startswith("stopped:") and bool(sol.converged)
    assert rel_err(sol.alpha, positive_root(K.numpy())) <= ALPHA_RTOL


def test_ccp_warm_start_at_the_root_in_float32(ccp_spy: Callable[[int], Spy]) -> None:
    """alpha0 (any float dtype) is the first iterate: started at the root of K (‖K‖_F = 1) the
    rule fires at once, iterations = 1, and α is alpha0 itself converted to float64 (the
    NashSolution contract); alpha0 is not modified."""
    K = well_scaled_K(1.0)
    a0 = torch.from_numpy(positive_root(K.numpy())).to(torch.float32)
    keep = a0.clone()
    spy = ccp_spy(4)
    sol = solve_ccp(K, alpha0=a0)
    assert spy.calls == 1 and sol.iterations == 1 and sol.status == "stopped:optimal"
    assert sol.alpha.dtype == torch.float64
    np.testing.assert_array_equal(sol.alpha.numpy(), keep.double().numpy())
    assert torch.equal(a0, keep)


def test_ccp_batch_reports_largest_step_count(ccp_spy: Callable[[int], Spy]) -> None:
    """A batch (stopping at once from the root | running to max_steps) reports iterations =
    max over the problems, both statuses sorted, converged per problem."""
    K = well_scaled_K(1.0)
    a0 = torch.from_numpy(positive_root(K.numpy()))
    Kbad = badly_scaled_K()
    Kbad = Kbad / torch.linalg.norm(Kbad)
    # a0 is far from Kbad's root: the residual test does not fire there within 3 steps
    spy = ccp_spy(4)
    sol = solve_ccp(torch.stack([K, Kbad]), alpha0=a0, max_steps=3)
    assert spy.calls == 1 + 3 and sol.iterations == 3
    assert sol.status == "/".join(sorted([f"stopped:{spy.statuses[0]}",
                                          f"max_steps:{spy.statuses[-1]}"]))
    assert sol.converged.tolist() == [True, False]


def test_ccp_solver_error_keeps_previous_alpha(ccp_spy: Callable[[int], Spy]) -> None:
    """A SolverError keeps the previous α (Nash-MTL's ``except``): Δα = 0, so the step test
    stops the iteration there, and the error is counted in ``status``."""
    K = badly_scaled_K()
    spy = ccp_spy(4)
    spy.raise_on = (3,)
    sol = solve_ccp(K, record_history=True)
    assert spy.calls == 3 and sol.iterations == 3
    assert sol.status == "stopped:solver_error:solver_errors=1"
    np.testing.assert_array_equal(sol.alpha.numpy(), np.abs(spy.points[1]))
    assert sol.history is not None and sol.history.shape == (3,)


def test_ccp_zero_coordinate_is_floored(ccp_spy: Callable[[int], Spy]) -> None:
    """NashSolution.alpha > 0: if ECOS returns a point with an exact zero coordinate and the
    next solve fails (so that point is returned), the zero is floored to a tiny positive."""
    K = badly_scaled_K()
    spy = ccp_spy(4)
    spy.overwrite = {1: np.array([0.0, 1.0, 2.0, 3.0])}
    spy.raise_on = (2,)
    sol = solve_ccp(K)
    assert sol.status == "stopped:solver_error:solver_errors=1"
    assert bool((sol.alpha > 0).all()) and float(sol.alpha[0]) < 1e-250
    np.testing.assert_array_equal(sol.alpha.numpy()[1:], [1.0, 2.0, 3.0])



def test_ccp_residual_rule_is_strict_at_its_threshold(ccp_spy: Callable[[int], Spy]) -> None:
    """The residual test is strict (< 1e-3) and uses 1/(α + 1e-10): K = I (N = 2), started at a
    point where ‖K̃α − 1/(α + 1e-10)‖ is exactly 1e-3 in float64 (found by a scan; asserted
    below with the same expression), the test does not fire, ECOS's point (≈ 1, the root of K,
    far from α_t ≈ 2^(1/4)) does not trigger the step test, and one step ends at "max_steps"."""
    K = torch.eye(2, dtype=torch.float64)
    a0 = np.array([1.1899144319544852, 1.189207185661042])
    Kn = K.numpy()
    assert np.linalg.norm(Kn / float(np.linalg.norm(Kn)) @ a0 - 1 / (a0 + 1e-10)) == 1e-3
    spy = ccp_spy(2)
    sol = solve_ccp(K, alpha0=torch.from_numpy(a0.copy()), max_steps=1)
    assert spy.calls == 1 and sol.status == f"max_steps:{spy.statuses[0]}"
    assert np.linalg.norm(spy.points[0] - a0) > 0.1
    np.testing.assert_array_equal(sol.alpha.numpy(), np.abs(spy.points[0]))


def test_ccp_step_rule_is_strict_at_its_threshold(ccp_spy: Callable[[int], Spy]) -> None:
    """The step test is strict (‖Δα‖ < 1e-6): a step of exactly 1e-6 (ECOS's point replaced by
    α_t + 1e-6·e_1, exact in float64) does not stop the iteration; the residual test cannot fire
    at α_t (its first coordinate 1e-6 makes 1/α_t ≈ 1e6)."""
    K = badly_scaled_K()
    a0 = np.array([1e-6, 1.0, 1.0, 1.0])
    step = np.array([2e-6, 1.0, 1.0, 1.0])
    assert np.linalg.norm(step - a0) == 1e-6
    spy = ccp_spy(4)
    spy.overwrite = {1: step}
    sol = solve_ccp(K, alpha0=torch.from_numpy(a0), max_steps=1)
    assert spy.calls == 1 and sol.status.startswith("max_steps:"), sol.status
    np.testing.assert_array_equal(sol.alpha.numpy(), step)
    np.testing.assert_array_equal(a0, [1e-6, 1.0, 1.0, 1.0])  # alpha0's memory is not written


def test_ccp_continues_from_the_absolute_value(ccp_spy: Callable[[int], Spy]) -> None:
    """ECOS may return a slightly negative coordinate for the nonneg variable (within its
    feasibility tolerance); the iteration continues from |α_new| (Nash-MTL) and ``history``
    reports the residual of that point. Exaggerated here (−0.5) to be visible."""
    K = badly_scaled_K()
    spy = ccp_spy(4)
    spy.overwrite = {1: np.array([-0.5, 1.0, 2.0, 3.0])}
    sol = solve_ccp(K, max_steps=1, record_history=True)
    np.testing.assert_array_equal(sol.alpha.numpy(), [0.5, 1.0, 2.0, 3.0])
    assert sol.history is not None
    expected = np_residual(K.numpy(), np.array([0.5, 1.0, 2.0, 3.0]))
    assert float(sol.history[0]) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("solve", [solve_cvxpy, solve_primal, solve_ccp],
                         ids=["cvxpy", "primal", "ccp"])
def test_oracles_return_on_the_input_device(solve: Callable[..., Any], batched: bool) -> None:
    """The oracles solve on CPU but return α, residual and converged on K's device. The batch
    case matters for ccp: its per-problem stop flags are gathered on CPU and combined with
    ``converged`` (on K's device); a 0-d CPU flag combines with a CUDA tensor, a (B,) one does
    not, so only a batch shows a missing move to K's device."""
    K = gram(feasible_G(10))
    K = (torch.stack([K, gram(feasible_G(11))]) if batched else K).cuda()
    sol = solve(K)
    assert sol.alpha.device == K.device and sol.converged.device == K.device
    assert sol.residual.device == K.device
    assert sol.converged.shape == K.shape[:-2]


def ccp_subproblem(K: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Navon et al.'s convex sub-problem at α_prev, written out here and solved with Clarabel
    (a different solver): min Σ_i (K̃α)_i + gᵀ(α − α_prev)/c s.t. log α_i + log (Kα)_i ≥ 0,
    α ≥ 0, with c = ‖K‖_F, K̃ = K/c and g = 1/α_prev + K̃ᵀ(1/(K̃α_prev)) the gradient of
    Σ log α_i + log (K̃α)_i at α_prev."""
    c = float(np.linalg.norm(K))
    Kt = K / c
    g = 1.0 / prev + Kt.T @ (1.0 / (Kt @ prev))
    a = cp.Variable(K.shape[0], nonneg=True)
    cons = [cp.log(a[i]) + cp.log(K[i] @ a) >= 0 for i in range(K.shape[0])]
    cp.Problem(cp.Minimize(cp.sum(Kt @ a) + g @ (a - prev) / c), cons).solve(solver=cp.CLARABEL)
    return np.asarray(a.value)


@pytest.mark.parametrize("start", [1.0, 0.5])
def test_ccp_first_step_solves_the_documented_subproblem(
    start: float, ccp_spy: Callable[[int], Spy]
) -> None:
    """The first convex solve from α_prev = alpha0 returns the minimiser of the sub-problem as
    documented (Clarabel on an independent formulation). ‖K‖_F ≈ 12.7 ≠ 1, so the scale c
    matters, and from these starts not every constraint is active at the minimiser, so both
    terms of g matter (measured: a wrong g or c moves it by 7–60 %; from other starts, e.g.
    (0.4, 0.7, 1.3, 0.9), all constraints are active and the minimiser is the bargain itself,
    whatever the objective). ECOS and Clarabel each reach ~1e-8 here; 1e-5 leaves room."""
    K = gram(feasible_G(3))
    prev = np.full(4, start)
    expected = ccp_subproblem(K.numpy(), prev)
    spy = ccp_spy(4)
    solve_ccp(K, alpha0=torch.from_numpy(prev), max_steps=1)
    assert spy.calls == 1
    np.testing.assert_allclose(spy.points[0], expected, rtol=1e-5, atol=0)


def test_ccp_batched_warm_start_is_per_problem() -> None:
    """solve_nash validates alpha0 as broadcastable to (..., N); for ccp a (B, N) alpha0 gives
    problem b the start alpha0[b] (regression: every problem was handed the whole (B, N)).
    Started at each problem's own root (‖K_b‖_F = 1, so the residual test is consistent) each
    stops at step 1 and returns its start."""
    K2 = gram(feasible_G(3))
    Ks = torch.stack([well_scaled_K(1.0), K2 / torch.linalg.norm(K2)])
    a0 = torch.stack([torch.from_numpy(positive_root(Ks[i].numpy())) for i in range(2)])
    sol = solve_nash(Ks, method="ccp", alpha0=a0)
    assert sol.iterations == 1 and sol.converged.tolist() == [True, True]
    np.testing.assert_array_equal(sol.alpha.numpy(), a0.numpy())
