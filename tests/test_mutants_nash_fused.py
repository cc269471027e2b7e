"""The fused CPU kernels (namex_ref.nash.fused) at the points the full mutation run left
unpinned (results/mutation.md, nash/fused at 50fdb90): each test names the rule it pins and its
oracle, which is never the kernel itself: a closed form (S8: α_i = 1/√K_ii for a diagonal K),
numpy (np.linalg.cholesky), the float64 eager loop of namex_ref.nash.newton (the same algorithm
as batched torch operators; its constants are read by both paths at call time, so a test may
set them for both), or the documented rule written out by hand.

The kernels run as plain Python under NUMBA_DISABLE_JIT=1 (how tools/mutation.py runs them)
and compiled otherwise; every test here passes both ways, and the few that only mean something
compiled (numba's dispatchers) skip under NUMBA_DISABLE_JIT.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch

from namex_ref.nash import fused, newton
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.problem import ROUNDING_CAP, ROUNDING_FACTOR
from tests.oracles import positive_root

pytestmark = pytest.mark.skipif(not fused.NUMBA_AVAILABLE, reason="numba not installed")

#: The eager path's constants, as its callers pass them to the kernels.
CONSTS: dict[str, float] = {
    "tol": RESIDUAL_TOL, "factor": ROUNDING_FACTOR, "cap": ROUNDING_CAP,
    "frac": newton.FRACTION_TO_BOUNDARY, "full_dec": newton.FULL_STEP_DECREMENT,
}
ZERO_RTOL, CANCEL_RTOL = 1e-12, 1e-6  # merging.plan's ZERO_EXPERT_RTOL, UNIFORM_CANCEL_RTOL


def _jit_disabled() -> bool:
    import numba

    return bool(getattr(numba.config, "DISABLE_JIT", False))


def _fresh_module(monkeypatch: pytest.MonkeyPatch, *, env: str | None,
                  without_numba: bool = False) -> types.ModuleType:
    """Execute fused.py's code (as imported: under tools/mutation.py, the mutant's) into a new
    module object, with NAMEX_NUMBA_CACHE set to ``env`` (None: unset) and optionally with
    ``import numba`` failing. sys.modules keeps the imported module."""
    if env is None:
        monkeypatch.delenv("NAMEX_NUMBA_CACHE", raising=False)
    else:
        monkeypatch.setenv("NAMEX_NUMBA_CACHE", env)
    if without_numba:
        monkeypatch.setitem(sys.modules, "numba", None)  # import numba → ImportError
    spec = fused.__spec__
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- module set-up: the disk-cache switch, the no-numba fallback, warmup -------------------


@pytest.mark.parametrize(("env", "cache"), [(None, True), ("1", True), ("0", False)])
def test_numba_cache_switch(monkeypatch: pytest.MonkeyPatch, env: str | None,
                            cache: bool) -> None:
    """The module docstring: NAMEX_NUMBA_CACHE=0 compiles without numba's disk cache; unset
    (or any other value) keeps it. Compiled, the dispatchers carry the choice."""
    module = _fresh_module(monkeypatch, env=env)
    assert module._CACHE is cache
    if not _jit_disabled():
        caching = type(module._residual._cache).__name__ != "NullCache"
        assert caching is cache


def test_without_numba_every_call_takes_the_eager_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where numba cannot be imported the module still imports: NUMBA_AVAILABLE is False,
    the kernels are the plain functions (``_njit`` is the identity), fused_available() is
    False, and warmup() is a no-op that calls no kernel."""
    module = _fresh_module(monkeypatch, env=None, without_numba=True)
    assert module.NUMBA_AVAILABLE is False and module.numba is None
    assert isinstance(module._residual, types.FunctionType)
    assert module.fused_available() is False

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("warmup ran a kernel without numba")

    setattr(module, "newton_kernel", boom)  # noqa: B010 - a fresh module object
    setattr(module, "bargain_kernel", boom)  # noqa: B010
    assert module.warmup() is None


def test_kernels_are_compiled_when_numba_is_on() -> None:
    """With numba installed and its JIT on, every kernel is a numba dispatcher (compiled on
    first use); under NUMBA_DISABLE_JIT there is nothing to check."""
    if _jit_disabled():
        pytest.skip("NUMBA_DISABLE_JIT=1: numba.njit is the identity")
    from numba.core.dispatcher import Dispatcher

    for kernel in (fused._residual, fused._converged, fused._unit_start, fused._cholesky,
                   fused._direction, fused._newton_one, fused._newton_batch, fused._bargain):
        assert isinstance(kernel, Dispatcher)


def test_warmup_runs_every_entry_point_the_package_compiles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """warmup() runs Newton without and with a warm start (two array layouts, two compiled
    signatures) and the bargain kernel; compiled, a later solve of either kind then adds no
    signature (nothing left to compile in a timed region)."""
    calls: list[tuple[str, bool]] = []
    real_newton, real_bargain = fused.newton_kernel, fused.bargain_kernel

    def newton_spy(K: torch.Tensor, alpha0: torch.Tensor | None, *a: Any, **k: Any) -> Any:
        calls.append(("newton", alpha0 is not None))
        return real_newton(K, alpha0, *a, **k)

    def bargain_spy(*a: Any, **k: Any) -> Any:
        calls.append(("bargain", True))
        return real_bargain(*a, **k)

    monkeypatch.setattr(fused, "newton_kernel", newton_spy)
    monkeypatch.setattr(fused, "bargain_kernel", bargain_spy)
    fused.warmup()
    assert {("newton", False), ("newton", True), ("bargain", True)} <= set(calls)
    monkeypatch.undo()
    if _jit_disabled():
        return
    before = len(fused._newton_batch.signatures)
    K = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    solve_newton(K, backend="fused")
    solve_newton(K, alpha0=torch.ones(2, dtype=torch.float64), backend="fused")
    assert len(fused._newton_batch.signatures) == before


# ---- the rounding floor's scale, the certifiability limit ----------------------------------


def test_residual_scale_of_a_small_alpha() -> None:
    """_residual's second value is max_i α_i(|K̂|α)_i, below 1 here (K̂ = I, α = (0.1, 0.2):
    0.04); a maximum that started at 1 would report 1."""
    a = np.array([0.1, 0.2])
    res, top = fused._residual(np.eye(2), a, np.empty(2))
    assert top == pytest.approx(0.2 * 0.2, rel=1e-15)
    assert res == pytest.approx(1 - 0.1 * 0.1, rel=1e-15)


def test_certifiability_limit_is_tol_when_tol_exceeds_the_cap() -> None:
    """problem.converged_mask: 8·floor ≤ max(tol, cap). N = 2, top = 2²⁸: 8·floor = 2⁻²⁰,
    between cap = 2⁻²¹ and tol = 2⁻¹⁹, so the limit is tol and a residual of tol converges."""
    tol, cap, top = 2.0**-19, 2.0**-21, 2.0**28
    assert 8 * np.finfo(np.float64).eps * 2 * top == 2.0**-20
    assert fused._converged(2, tol, top, tol, 8.0, cap)
    assert not fused._converged(2, np.nextafter(tol, 1.0), top, tol, 8.0, cap)


# ---- the Cholesky factor and the Newton direction -------------------------------------------


def _factor(a: list[float], Kh: list[list[float]]) -> tuple[bool, np.ndarray, np.ndarray]:
    n = len(a)
    M, d2 = np.full((n, n), np.nan), np.full(n, np.nan)
    ok = fused._cholesky(np.array(a), np.array(Kh), M, d2)
    return bool(ok), M, d2


def test_cholesky_factor_is_numpys_lower_factor() -> None:
    """_cholesky writes L (lower, M = D K̂ D + I = LLᵀ) over M and 1/L_jj into d2: compared
    with np.linalg.cholesky on a positive definite M whose first pivot is 0.5 (K̂ here is any
    symmetric matrix: a pivot in (0, 1] is a valid one) and whose factor has a 3×3 fill."""
    a = [1.0, 2.0, 0.5]
    Kh = [[-0.5, 0.1, 0.3], [0.1, 0.4, -0.2], [0.3, -0.2, 2.0]]
    ok, M, d2 = _factor(a, Kh)
    full = np.array(a)[:, None] * np.array(Kh) * np.array(a)[None, :] + np.eye(3)
    L = np.linalg.cholesky(full)
    assert ok and L[0, 0] ** 2 == pytest.approx(0.5)
    np.testing.assert_allclose(np.tril(M), L, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(d2, 1 / np.diag(L), rtol=1e-14)


@pytest.mark.parametrize(("a", "Kh", "why"), [
    ([1.0, 1.0], [[3.0, 4.0], [4.0, 3.0]], "pivot exactly 0"),  # L = [[2, 0], [2, 0]]: 4 - 2² = 0
    ([1e200, 1.0], [[1e100, 0.0], [0.0, 1.0]], "pivot overflows to inf"),
    ([1.0, 1.0], [[1.0, 0.0], [0.0, np.nan]], "pivot NaN"),
])
def test_cholesky_refuses_a_pivot_that_is_not_finite_and_positive(
        a: list[float], Kh: list[list[float]], why: str) -> None:
    """The docstring's rule: False on a pivot that is not finite and > 0 (the pivots here are
    exact: 4 − (4/2)² = 0; 1e200·1e100·1e200 + 1 = inf)."""
    with np.errstate(all="ignore"):
        ok, _, _ = _factor(a, Kh)
    assert not ok, why


def test_newton_decrement_propagates_nan() -> None:
    """_direction: z = −(LLᵀ)⁻¹r and λ = √(−rᵀz); L = I gives z = −r, λ = ‖r‖ = 5 for
    r = (3, 4), and a NaN residual gives λ = NaN (NaN propagates, it is not read as 0)."""
    M, d2, z = np.eye(2), np.ones(2), np.empty(2)
    assert fused._direction(M, d2, np.array([3.0, 4.0]), z) == 5.0
    assert z.tolist() == [-3.0, -4.0]
    assert math.isnan(fused._direction(M, d2, np.array([np.nan, 0.0]), z))


# ---- starts: invalid problems, tiny and overflowing warm starts ----------------------------


def _both(K: torch.Tensor, **kw: Any) -> tuple[Any, Any]:
    return (solve_newton(K, backend="eager", **kw), solve_newton(K, backend="fused", **kw))


@pytest.mark.parametrize("a0", [[1.0, 2.0], [1e-170, 1e-170]])
def test_an_invalid_problem_iterates_on_the_identity_like_the_eager_loop(a0: list[float]) -> None:
    """K_11 = 0 (no bargain): K̂ = I and D = I, the warm start is taken as is (1e-170: its
    αᵀα underflows to 0, so no ray search) and Newton runs on K̂ = I; the answer is α = 1,
    residual inf, and the eager loop (the oracle) takes the same number of steps (1134 from
    1e-170, where α̂ grows by ~√2 a step)."""
    K = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    eager, fast = _both(K, alpha0=torch.tensor(a0, dtype=torch.float64), max_iter=2000)
    assert fast.alpha.tolist() == [1.0, 1.0] and math.isinf(float(fast.residual))
    assert fast.iterations == eager.iterations > 0


def test_a_warm_start_whose_ray_product_is_subnormal_still_converges() -> None:
    """K = diag(4, 16), α0 = (2.5e-155, 1.25e-155): α̂0 = (5e-155, 5e-155), α̂ᵀK̂α̂ = 5e-309
    (subnormal, > 0). The ray search divides by max(q, tiny), a finite scale: the solve
    converges to the closed form α = (1/2, 1/4) (S8), to the residual's tolerance (diagonal
    K: α_i²K_ii = 1 + r_i, so α is within r/2 relative). N/q itself would overflow to inf."""
    K = torch.tensor([[4.0, 0.0], [0.0, 16.0]], dtype=torch.float64)
    a0 = torch.tensor([2.5e-155, 1.25e-155], dtype=torch.float64)
    assert 2 / (2 * 5e-155**2) == math.inf
    sol = solve_newton(K, alpha0=a0, backend="fused")
    assert bool(sol.converged) and float(sol.residual) <= RESIDUAL_TOL
    np.testing.assert_allclose(sol.alpha.numpy(), [0.5, 0.25], rtol=RESIDUAL_TOL)


def test_a_warm_start_that_overflows_to_inf_is_no_start() -> None:
    """K = diag(1e300, 1), α0 = (1e200, 1): α̂0_0 = 1e200·1e150 = inf (the ray product is NaN,
    so no rescaling). An infinite start is broken before any step: α = 1, residual inf,
    0 steps, as in the eager loop."""
    K = torch.tensor([[1e300, 0.0], [0.0, 1.0]], dtype=torch.float64)
    eager, fast = _both(K, alpha0=torch.tensor([1e200, 1.0], dtype=torch.float64))
    assert fast.alpha.tolist() == [1.0, 1.0] and math.isinf(float(fast.residual))
    assert fast.iterations == eager.iterations == 0


# ---- the step: fraction to boundary, the broken-step guard ---------------------------------

_K3 = [[1.0, 0.9, 0.5], [0.9, 1.0, 0.3], [0.5, 0.3, 2.0]]


@pytest.mark.parametrize("steps", [1, 3])
def test_fraction_to_boundary_caps_the_step(monkeypatch: pytest.MonkeyPatch,
                                            steps: int) -> None:
    """With the fraction-to-boundary at 0.05 (set for both paths), the first step of α̂_0
    from 1 is capped at 1 − 0.05 (its unconstrained step goes to 0.78); the fused α equals
    the eager loop's after 1 and 3 steps."""
    monkeypatch.setattr(newton, "FRACTION_TO_BOUNDARY", 0.05)
    K = torch.tensor(_K3, dtype=torch.float64)
    eager, fast = _both(K, fixed_iterations=steps)
    if steps == 1:
        assert float(fast.alpha[0]) == pytest.approx(0.95, rel=1e-15)
    np.testing.assert_allclose(fast.alpha.numpy(), eager.alpha.numpy(), rtol=1e-13)


def test_a_step_past_the_boundary_breaks_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """With full Newton steps (no damping) and no fraction-to-boundary (set for both paths),
    the first step from α̂ = 1 of this K = GGᵀ makes α̂_4 negative: 1 + z_4 = 2[(K̂ + I)⁻¹1]_4
    < 0 (numpy). The problem is broken: α = 1, residual inf, as in the eager loop."""
    G = np.array([[-1.2, 2.7, -0.4, 0.8], [-0.8, 0.4, -1.3, -0.7], [-0.2, -0.7, -0.2, 1.0],
                  [-1.3, -1.2, 0.0, -0.6], [-1.0, 0.1, -0.6, 0.3], [0.0, -0.2, -0.1, 1.0]])
    K = G @ G.T
    d = 1 / np.sqrt(np.diag(K))
    assert np.linalg.solve(d[:, None] * K * d[None, :] + np.eye(6), np.ones(6))[4] < 0
    monkeypatch.setattr(newton, "FULL_STEP_DECREMENT", 1e300)
    monkeypatch.setattr(newton, "FRACTION_TO_BOUNDARY", 2.0)
    for fixed in (1, 3):
        eager, fast = _both(torch.from_numpy(K), fixed_iterations=fixed)
        assert eager.alpha.tolist() == [1.0] * 6 and math.isinf(float(eager.residual))
        assert fast.alpha.tolist() == [1.0] * 6 and math.isinf(float(fast.residual))


# ---- the Python entry points: shapes, dtypes, layouts ---------------------------------------


def test_newton_kernel_shapes_follow_the_batch() -> None:
    """newton_kernel's contract: α (..., N), residual, converged, steps (...) for K
    (..., N, N): () for one problem, (2, 3) for a (2, 3) batch; a batch of 6 problems of
    N = 2 (more problems than N) is solved problem by problem (positive_root, MINPACK)."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(2, 3, 5, 2, generator=g, dtype=torch.float64)
    K = G.mT @ G
    alpha, res, conv, steps = fused.newton_kernel(K[0, 0], None, 50, **CONSTS)
    assert (alpha.shape, res.shape, conv.shape, steps.shape) == ((2,), (), (), ())
    alpha, res, conv, steps = fused.newton_kernel(K, None, 50, **CONSTS)
    assert (alpha.shape, res.shape, conv.shape, steps.shape) == ((2, 3, 2), (2, 3), (2, 3),
                                                                 (2, 3))
    assert bool(conv.all()) and steps.dtype == torch.int64
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(alpha[i, j].numpy(), positive_root(K[i, j].numpy()),
                                       rtol=1e-9)


def test_a_bfloat16_warm_start_is_read_in_float64() -> None:
    """alpha0 may have any float dtype (solve_newton passes it on unconverted): a bfloat16
    warm start gives the α of the float64 copy of its values, and the eager loop's."""
    K = torch.tensor(_K3, dtype=torch.float64)
    a0 = torch.tensor([0.3, 2.0, 0.7], dtype=torch.bfloat16)
    half = solve_newton(K, alpha0=a0, fixed_iterations=2, backend="fused")
    wide = solve_newton(K, alpha0=a0.double(), fixed_iterations=2, backend="fused")
    eager = solve_newton(K, alpha0=a0.double(), fixed_iterations=2, backend="eager")
    assert torch.equal(half.alpha, wide.alpha)
    np.testing.assert_allclose(half.alpha.numpy(), eager.alpha.numpy(), rtol=1e-13)


def test_as_f64_numpy_is_c_contiguous() -> None:
    """_as_f64_numpy: a C-contiguous float64 array with t's values, also for a transposed
    (non-contiguous) float64 tensor."""
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3).T
    out = fused._as_f64_numpy(t)
    assert out.flags.c_contiguous and out.dtype == np.float64
    assert out.tolist() == t.tolist()


# ---- the bargain kernel: policies, the zero-expert rule, the ridge floor --------------------


def _bargain(K: list[list[float]], policy: str, *, ridge: float = 1e-3,
             zero_rtol: float = ZERO_RTOL) -> tuple[list[float], float, bool, bool]:
    alpha, residual, fallback, ok = fused.bargain_kernel(
        torch.tensor(K, dtype=torch.float64), policy, ridge, 20, zero_rtol=zero_rtol,
        cancel_rtol=CANCEL_RTOL, **CONSTS)
    return alpha.tolist(), float(residual), bool(fallback), ok


def test_bargain_policies_on_a_zero_expert() -> None:
    """K = diag(4, 0): expert 1 is zero, so K' = diag(4, 0 + 4) is solved (α = (1/2, 1/2),
    S8) and the result is not ok (residual on K: |α_1·0 − 1| = 1). "raise" returns that
    Newton α for the caller's slow path; "ridge" solves K' + 1e-3·mean(4, 0)·I (α_i =
    1/√4.002); "uniform" α_i = √(N / 1ᵀK1) = √(2/4)."""
    K = [[4.0, 0.0], [0.0, 0.0]]
    want = {"raise": 0.5, "ridge": 1 / math.sqrt(4.002), "uniform": math.sqrt(0.5)}
    for policy, a in want.items():
        alpha, residual, fallback, ok = _bargain(K, policy)
        np.testing.assert_allclose(alpha, [a, a], rtol=1e-14, err_msg=policy)
        assert residual == 1.0 and fallback and not ok
    alpha_t, _, _, main, ok = fused._bargain(np.array(K), 0, 1e-3, 20, CONSTS["tol"],
                                             CONSTS["factor"], CONSTS["cap"], CONSTS["frac"],
                                             CONSTS["full_dec"], ZERO_RTOL, CANCEL_RTOL)
    assert main.tolist() == [0.5, 0.5] and not ok  # the Newton α, kept beside the ridge α
    np.testing.assert_allclose(alpha_t, want["ridge"], rtol=1e-14)


def test_zero_expert_threshold_is_inclusive() -> None:
    """bargain_alpha's rule: expert i is zero when K_ii ≤ zero_rtol·max_j K_jj, equality
    included. K = diag(4, 1) with zero_rtol = 1/4: expert 1 sits on the threshold, so it is
    zero (K' = diag(4, 5), α = (1/2, 1/√5), not ok); one ulp lower it is a plain bargain
    (α = (1/2, 1), ok)."""
    K = [[4.0, 0.0], [0.0, 1.0]]
    alpha, _, fallback, ok = _bargain(K, "raise", zero_rtol=0.25)
    np.testing.assert_allclose(alpha, [0.5, 1 / math.sqrt(5)], rtol=1e-14)
    assert fallback and not ok
    alpha, residual, fallback, ok = _bargain(K, "raise", zero_rtol=float(np.nextafter(0.25, 0)))
    np.testing.assert_allclose(alpha, [0.5, 1.0], rtol=1e-14)
    assert ok and not fallback and residual <= RESIDUAL_TOL


def test_ridge_scale_is_floored_at_tiny() -> None:
    """"ridge" adds λ = ridge·max(mean diag K, tiny) (bargain_alpha's floor). K = diag(1e-310,
    0): the mean 5e-311 is subnormal, so λ = 1e-3·tiny, not 1e-3·5e-311 (α_0 would move by
    10%); K' = diag(1e-310 + λ, tiny + λ) (expert 1 zero, raised by max(K_00, tiny) = tiny)."""
    tiny = float(np.finfo(np.float64).tiny)
    lam = 1e-3 * tiny
    alpha, _, fallback, ok = _bargain([[1e-310, 0.0], [0.0, 0.0]], "ridge")
    assert fallback and not ok
    np.testing.assert_allclose(alpha, [1 / math.sqrt(1e-310 + lam), 1 / math.sqrt(tiny + lam)],
                               rtol=1e-12)


def test_uniform_floor_is_at_least_tiny() -> None:
    """"uniform": α_i = √(N / max(1ᵀK1, max(ρ·tr K, tiny))) (bargain_alpha's floors). Two
    cancelling experts of K_ii = 1e-303 (normal numbers): 1ᵀK1 = 0 and ρ·tr K = 2e-309 is
    subnormal, so the floor is tiny and α_i = √(2/tiny) (√(2/2e-309) would be 3.3× larger)."""
    tiny = float(np.finfo(np.float64).tiny)
    alpha, _, fallback, ok = _bargain([[1e-303, -1e-303], [-1e-303, 1e-303]], "uniform")
    assert fallback and not ok
    np.testing.assert_allclose(alpha, [math.sqrt(2 / tiny)] * 2, rtol=1e-14)
