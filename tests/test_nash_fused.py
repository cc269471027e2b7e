"""The fused CPU kernels (namex_ref.nash.fused) against the eager torch path as their oracle
(S4–S5, S9; docs/math.md §7 "The residual rule").

``solve_newton(backend="fused")`` and ``bargain_alpha``'s fused path run the same algorithm as
the eager torch loop in a different summation order, so they are compared by the project's
residual rule, not bit for bit: both report residuals within their tolerance, the same converged
flags, and α equal to rtol = 2√N(r₁ + r₂) + 1e-12 (§7). The eager path is itself tested against
numpy's step-by-step specification (tests/test_nash_newton.py) and the independent MINPACK root
(tests/oracles.py), which is also used directly below.

Problems: well-conditioned Gaussian Gram matrices, ill-conditioned ones (nearly collinear
experts, d < N so K is singular but feasible, expert norms over six decades), N 2…16, batch 1…64,
float32 and float64 inputs, adaptive and fixed-iteration mode, with and without warm starts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from namex_ref.benchmarks.syncs import count_sync_ops
from namex_ref.merging.plan import bargain_alpha
from namex_ref.nash import fused
from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.problem import converged_mask, scaled_residual
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
)
from tests.oracles import fallback_alpha, positive_root

pytestmark = pytest.mark.skipif(not fused.NUMBA_AVAILABLE, reason="numba not installed")

#: The eager path rounds K̂α in a different order: its converged flags can only differ where a
#: residual sits within rounding of the threshold, which these problems (20+ steps, quadratic
#: convergence) never approach; see test_flags_are_far_from_the_threshold.
KINDS = ("gaussian", "collinear", "singular", "spread")


def _gram(kind: str, n: int, seed: int) -> np.ndarray:
    """One feasible K = GᵀG (N, N) of the given kind (all have a bargain, S6)."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        G = rng.standard_normal((n + 8, n))
    else:
        d = max(1, n // 2) if kind == "singular" else n + 4
        w = rng.standard_normal(d)
        w /= np.linalg.norm(w)
        spread = 1e-3 if kind == "collinear" else 0.7
        noise = rng.standard_normal((d, n))
        noise -= np.outer(w, w @ noise)  # ⟨τ_i, w⟩ = 1: every expert gains along w (S6)
        G = w[:, None] + spread * noise / np.linalg.norm(noise, axis=0).clip(1e-300)
    if kind == "spread":
        G = G * 10.0 ** rng.uniform(-3, 3, n)[None, :]
    K = G.T @ G
    return 0.5 * (K + K.T)


def _batch(kinds: list[str], n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([_gram(k, n, seed + i) for i, k in enumerate(kinds)]))


def _assert_same_solution(K: torch.Tensor, eager, fast) -> None:  # type: ignore[no-untyped-def]
    """The residual rule of docs/math.md §7, plus equal flags and shapes."""
    assert fast.alpha.shape == eager.alpha.shape and fast.alpha.dtype == torch.float64
    assert torch.equal(fast.converged, eager.converged)
    assert bool((torch.isfinite(fast.alpha) & (fast.alpha > 0)).all())
    n = K.shape[-1]
    both = eager.converged & fast.converged
    K64 = K.to(torch.float64)
    # the reported residual is the scale-free residual of the returned α (recomputed here)
    torch.testing.assert_close(scaled_residual(K64, fast.alpha)[both], fast.residual[both],
                               rtol=0, atol=1e-13)
    # converged means the shared rule holds for the returned α
    assert bool(converged_mask(K64, fast.alpha, fast.residual, RESIDUAL_TOL)[both].all())
    rtol = 2 * math.sqrt(n) * (eager.residual + fast.residual) + 1e-12
    rel = ((fast.alpha - eager.alpha).abs() / eager.alpha).amax(-1)
    assert bool((rel[both] <= rtol[both]).all()), (rel[both], rtol[both])


#: The fused iterates equal the eager ones to this relative tolerance at every step, for every
#: problem, converged or not: the kernels sum K̂α and the Cholesky's inner products in a
#: different order (≤ 16 terms), and the damped Newton map carries that rounding on without
#: amplifying it much on these problems (measured ≤ 1.4e-15 over 150 random batches × 21 steps,
#: float32 and float64 K, with and without warm starts). 1e-12 leaves a factor ~700.
ITERATE_RTOL = 1e-12


@given(
    n=st.integers(2, 16),
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=64),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    fixed=st.sampled_from([None, 20, 3]),
    warm=st.booleans(),
)
def test_fused_newton_matches_eager(n: int, kinds: list[str], seed: int, dtype: torch.dtype,
                                    fixed: int | None, warm: bool) -> None:
    """The fused iterate after k steps equals the eager one for every k up to the steps taken
    and for every problem of the batch, converged or not (ITERATE_RTOL); the final solutions
    obey the residual rule; adaptive mode stops after as many steps as the eager loop."""
    K = _batch(kinds, n, seed).to(dtype)
    a0 = None
    if warm:  # a positive warm start of the wrong scale, one per problem
        a0 = torch.from_numpy(np.random.default_rng(seed).uniform(0.1, 3.0, (len(kinds), n)))
    eager = solve_newton(K, fixed_iterations=fixed, alpha0=a0, backend="eager")
    fast = solve_newton(K, fixed_iterations=fixed, alpha0=a0, backend="fused")
    _assert_same_solution(K, eager, fast)
    torch.testing.assert_close(fast.alpha, eager.alpha, rtol=ITERATE_RTOL, atol=0)
    if fixed is None:  # in fixed mode both report `fixed` by definition: the iterates decide
        assert fast.iterations == eager.iterations and fast.status == eager.status
    for k in range(eager.iterations):
        e = solve_newton(K, fixed_iterations=k, alpha0=a0, backend="eager")
        f = solve_newton(K, fixed_iterations=k, alpha0=a0, backend="fused")
        torch.testing.assert_close(f.alpha, e.alpha, rtol=ITERATE_RTOL, atol=0,
                                   msg=lambda m, k=k: f"after {k} steps: {m}")
        assert torch.equal(f.converged, e.converged), k
    if dtype == torch.float64 and fixed != 3 and not warm:
        # from α̂ = 1 every float64 problem here converges within 20 steps (float32 rounding of
        # K can break feasibility; a warm start off by 10³ per expert needs more damped steps)
        assert bool(fast.converged.all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 5, 16])
def test_fused_newton_against_the_independent_root(kind: str, n: int) -> None:
    """α of the fused kernel equals scipy's MINPACK root (tests/oracles.py) to the residual
    rule: the kernel is right on its own, not only equal to the eager path."""
    K = torch.from_numpy(_gram(kind, n, 7))
    sol = solve_newton(K, fixed_iterations=20, backend="fused")
    want = positive_root(K.numpy())
    assert bool(sol.converged) and float(sol.residual) <= RESIDUAL_TOL
    np.testing.assert_allclose(sol.alpha.numpy(), want,
                               rtol=2 * math.sqrt(n) * (float(sol.residual) + 1e-12) + 1e-12)


def test_flags_are_far_from_the_threshold() -> None:
    """Why equal flags are a fair demand: on the problems above the converged residuals are
    ≥ 10× below the tolerance (measured: ≤ 2.9e-12), while the two paths' residuals differ by
    rounding (≤ ~1e-13 on these problems)."""
    K = _batch(list(KINDS) * 8, 16, 3)
    sol = solve_newton(K, fixed_iterations=20, backend="fused")
    assert float(sol.residual.max()) <= RESIDUAL_TOL / 10


def test_fused_iterates_equal_eager_iterates_step_by_step() -> None:
    """After k = 0…8 fixed steps the two paths agree to rounding at every k (the damped phase,
    the switch to full steps and the freezing of converged problems happen at the same step)."""
    K = _batch(["spread", "singular", "collinear", "gaussian"], 6, 11)
    for k in range(9):
        e = solve_newton(K, fixed_iterations=k, backend="eager").alpha
        f = solve_newton(K, fixed_iterations=k, backend="fused").alpha
        torch.testing.assert_close(f, e, rtol=1e-9, atol=0)


@pytest.mark.parametrize("bad", ["nan_off", "inf_diag", "zero_diag"])
@pytest.mark.parametrize("fixed", [None, 20])
def test_invalid_problems_as_eager(bad: str, fixed: int | None) -> None:
    """No bargain at all (NaN, Inf, zero diagonal; unvalidated): α = 1 exactly, residual inf,
    not converged, and the valid problem of the same batch is solved as alone."""
    K = _batch(["gaussian", "gaussian"], 3, 5)
    if bad == "nan_off":
        K[1, 0, 1] = K[1, 1, 0] = math.nan
    elif bad == "inf_diag":
        K[1, 2, 2] = math.inf
    else:
        K[1, 2, :] = 0.0
        K[1, :, 2] = 0.0
    for backend in ("eager", "fused"):
        sol = solve_newton(K, fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
        assert sol.alpha[1].tolist() == [1.0, 1.0, 1.0] and math.isinf(float(sol.residual[1]))
        assert sol.converged.tolist() == [True, False]
        np.testing.assert_allclose(sol.alpha[0].numpy(), positive_root(K[0].numpy()),
                                   rtol=1e-9)
        # alone, such a problem takes no step at all (it is swapped for the identity, S8)
        alone = solve_newton(K[1], fixed_iterations=fixed, backend=backend)  # type: ignore[arg-type]
        assert alone.iterations == (0 if fixed is None else fixed)
        assert alone.alpha.tolist() == [1.0, 1.0, 1.0]


def test_indefinite_and_overflowing_problems_stay_finite() -> None:
    """An indefinite K (Cholesky pivot ≤ 0) or anti-parallel experts (α̂ doubles until the step
    overflows): the problem is frozen, reported as α = 1, residual inf, not converged, and the
    adaptive loop stops before its cap of 100 steps."""
    ind = torch.tensor([[1.0, -3.0, 0.0], [-3.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                       dtype=torch.float64)
    anti = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    for K in (ind, anti):
        sol = solve_newton(K, backend="fused")
        assert not bool(sol.converged) and sol.iterations < 100 and sol.status == "max_iter"
        assert bool(torch.isfinite(sol.alpha).all()) and bool((sol.alpha > 0).all())
    sol = solve_newton(anti, backend="fused")
    assert sol.alpha.tolist() == [1.0, 1.0] and math.isinf(float(sol.residual))
    # where the iterate overflows depends on rounding near float64's max (~54 doublings): the
    # two paths may freeze one step apart
    assert abs(sol.iterations - solve_newton(anti, backend="eager").iterations) <= 1


def test_warm_starts_as_eager() -> None:
    """A warm start is rescaled on its ray (0 steps: exactly the eager start); in fixed mode an
    invalid start (zero, negative, NaN) starts that problem from α̂ = 1; a (N,) start broadcasts
    over the batch; adaptive mode rejects an invalid start like the eager path."""
    K = _batch(["gaussian", "spread", "singular"], 4, 2)
    a0 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 1.0], [math.nan, 1.0, 1.0, 1.0]],
                      dtype=torch.float64)
    inf_start = torch.tensor([[1.0, math.inf, 1.0, 1.0]] * 3, dtype=torch.float64)
    for k in (0, 20):
        e = solve_newton(K, alpha0=a0, fixed_iterations=k, backend="eager")
        f = solve_newton(K, alpha0=a0, fixed_iterations=k, backend="fused")
        torch.testing.assert_close(f.alpha, e.alpha, rtol=1e-12, atol=0)
        e = solve_newton(K, alpha0=inf_start, fixed_iterations=k, backend="eager")
        f = solve_newton(K, alpha0=inf_start, fixed_iterations=k, backend="fused")
        torch.testing.assert_close(f.alpha, e.alpha, rtol=1e-12, atol=0)
    shared = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    e = solve_newton(K, alpha0=shared, backend="eager")
    f = solve_newton(K, alpha0=shared, backend="fused")
    _assert_same_solution(K, e, f)
    with pytest.raises(BargainInputError, match="positive"):
        solve_newton(K, alpha0=a0.abs().nan_to_num(1.0) - 1.0, backend="fused")


@pytest.mark.parametrize("c", [1e-3, 0.5, 1e3])
def test_scale_invariance(c: float) -> None:
    """S9: K → cK gives α → α/√c, for diagonals below and above 1 (both backends)."""
    K = _batch(["gaussian", "spread", "singular"], 5, 21)
    base = solve_newton(K, fixed_iterations=20, backend="eager").alpha
    for backend in ("eager", "fused"):
        sol = solve_newton(c * K, fixed_iterations=20, backend=backend)  # type: ignore[arg-type]
        assert bool(sol.converged.all())
        torch.testing.assert_close(sol.alpha, base / math.sqrt(c), rtol=1e-9, atol=0)


def test_batch_shapes_and_empty_batch() -> None:
    K = _batch(["gaussian"] * 6, 3, 9).reshape(2, 3, 3, 3)
    sol = solve_newton(K, backend="fused")
    assert sol.alpha.shape == (2, 3, 3) and sol.residual.shape == (2, 3)
    assert sol.converged.shape == (2, 3) and bool(sol.converged.all())
    empty = solve_newton(torch.zeros(0, 3, 3, dtype=torch.float64), backend="fused")
    assert empty.alpha.shape == (0, 3) and empty.iterations == 0


def test_zero_steps() -> None:
    K = _batch(["gaussian"], 3, 1)[0]
    for fixed, max_iter in ((0, 100), (None, 0)):
        sol = solve_newton(K, fixed_iterations=fixed, max_iter=max_iter, backend="fused")
        assert sol.iterations == 0
        assert sol.alpha.tolist() == (1.0 / K.diagonal().sqrt()).tolist()


def test_dispatch() -> None:
    """auto takes the fused kernel only where it applies; fused refuses otherwise."""
    K = _batch(["gaussian"], 4, 0)[0]
    Kg = K.clone().requires_grad_(True)
    sol = solve_newton(Kg, fixed_iterations=5)  # autograd: the eager path, α carries a graph
    assert sol.alpha.requires_grad
    assert not solve_newton(K, fixed_iterations=5).alpha.requires_grad
    assert solve_newton(K, record_history=True).history is not None
    with pytest.raises(ValueError, match="backend='fused' needs"):
        solve_newton(Kg, backend="fused")
    with pytest.raises(ValueError, match="backend='fused' needs"):
        solve_newton(K, backend="fused", record_history=True)
    assert bool(solve_newton(torch.eye(64, dtype=torch.float64), backend="fused").converged)
    assert fused.FUSED_MAX_N == 64  # the documented bound (docs/math.md §2)
    big = torch.eye(fused.FUSED_MAX_N + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend='fused' needs"):
        solve_newton(big, backend="fused")
    assert bool(solve_newton(big).converged)  # auto: eager above FUSED_MAX_N
    with pytest.raises(ValueError, match="backend must be"):
        solve_newton(K, backend="numba")  # type: ignore[arg-type]


def test_without_numba_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    K = _batch(["spread"], 5, 4)[0]
    want = solve_newton(K, fixed_iterations=20, backend="eager")
    monkeypatch.setattr(fused, "NUMBA_AVAILABLE", False)
    assert not fused.fused_available(K)
    got = solve_newton(K, fixed_iterations=20)
    torch.testing.assert_close(got.alpha, want.alpha, rtol=0, atol=0)  # the eager path itself
    with pytest.raises(ValueError, match="backend='fused' needs"):
        solve_newton(K, backend="fused")
    taus = [torch.randn(3, 10, generator=torch.Generator().manual_seed(0))]
    eager = bargain_alpha(taus, backend="eager")
    torch.testing.assert_close(bargain_alpha(taus).alpha, eager.alpha, rtol=0, atol=0)


def _torch_ops(fn) -> int:  # type: ignore[no-untyped-def]
    """Number of torch operator calls (profiler events, CPU activity) in ``fn()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(int(ev.count) for ev in prof.key_averages())


def test_fused_paths_dispatch_no_operator_per_step() -> None:
    """What the fused kernels are for (module docstring): the whole iteration is one compiled
    call, so the torch operators dispatched (and with them any host synchronisation, none of
    which a CPU kernel can need) do not grow with the number of Newton steps: 2 and 40 fixed
    steps dispatch the same count, for ``solve_newton`` and for ``bargain_alpha``. The eager
    loop, which dispatches ~15 operators per step, is the control: its count grows.
    (Replaces a count of sync operators alone, which a numba kernel cannot call.)"""
    K = _batch(["gaussian"], 8, 0)[0]
    taus = [torch.randn(8, 16, 4, generator=torch.Generator().manual_seed(1))]

    def newton(k: int, backend: str):  # type: ignore[no-untyped-def]
        return lambda: solve_newton(K, fixed_iterations=k, backend=backend)  # type: ignore[arg-type]

    def bargain(k: int, backend: str):  # type: ignore[no-untyped-def]
        return lambda: bargain_alpha(taus, newton_iterations=k, backend=backend)  # type: ignore[arg-type]

    for make in (newton, bargain):
        assert _torch_ops(make(2, "auto")) == _torch_ops(make(40, "auto"))
        assert _torch_ops(make(40, "eager")) > _torch_ops(make(2, "eager")) + 38 * 5
    # after the Gram matrix, bargain_alpha is one kernel call too: at most three fused Newton
    # calls' worth of operators (measured: 26 beyond the Gram's 10, one fused solve_newton 11;
    # the eager masks and policies around a fused Newton dispatch 156)
    mats = [t.reshape(8, -1) for t in taus]
    assert _torch_ops(bargain(40, "auto")) <= (_torch_ops(lambda: gram_matrix(mats))
                                               + 3 * _torch_ops(newton(40, "auto")))
    assert sum(count_sync_ops(newton(40, "auto")).values()) == 0


# --------------------------------------------------------------------------------------------
# bargain_alpha: the fused kernel against the eager code under every singular policy
# --------------------------------------------------------------------------------------------

POLICIES = ("ridge", "uniform", "raise")


def _taus(case: str, n: int, seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t1 = torch.randn(n, 12, 5, generator=g, dtype=torch.float64)
    t2 = torch.randn(n, 5, 12, generator=g, dtype=torch.float64)
    if case == "zero_expert":
        t1[1] = 0.0
        t2[1] = 0.0
    elif case == "all_zero":
        t1.zero_()
        t2.zero_()
    elif case == "nan":
        t1[0, 0, 0] = math.nan
    elif case == "antiparallel":  # expert 1 = −expert 0: no bargain (S6)
        t1[1] = -t1[0]
        t2[1] = -t2[0]
    elif case == "cancel":  # Σ_i τ_i = 0 (the uniform policy's cap)
        t1[-1] = -t1[:-1].sum(0)
        t2[-1] = -t2[:-1].sum(0)
    elif case == "small_zero_expert":  # K_ii ≪ 1 everywhere, one expert zero
        t1 = 1e-3 * t1
        t2 = 1e-3 * t2
        t1[2] = 0.0
        t2[2] = 0.0
    elif case == "tiny":  # a real but tiny expert, above the zero-expert threshold
        t1[0] *= 1e-5
        t2[0] *= 1e-5
    return [t1.to(dtype), t2.to(dtype)]


CASES = ("plain", "zero_expert", "small_zero_expert", "all_zero", "nan", "antiparallel",
         "cancel", "tiny")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_bargain_alpha_matches_eager(case: str, policy: str, dtype: torch.dtype) -> None:
    n = 4
    taus = _taus(case, n, 3, dtype)
    errors = (BargainInputError, DegenerateExpertError, InfeasibleBargainError,
              NashConvergenceError)
    results = {}
    for backend in ("eager", "auto"):
        try:
            results[backend] = bargain_alpha(taus, singular_policy=policy, backend=backend)  # type: ignore[arg-type]
        except errors as err:
            results[backend] = err  # type: ignore[assignment]
    e, f = results["eager"], results["auto"]
    if isinstance(e, Exception):
        assert type(f) is type(e) and str(f) == str(e)
        return
    assert not isinstance(f, Exception)
    assert f.alpha.dtype == torch.float64 and f.alpha.shape == (n,)
    assert f.residual.shape == () and f.fallback.shape == () and f.fallback.dtype == torch.bool
    assert bool(f.fallback) == bool(e.fallback)
    if math.isnan(float(e.residual)):
        assert math.isnan(float(f.residual))
    else:
        assert float(f.residual) == pytest.approx(float(e.residual), rel=1e-6, abs=1e-13)
    torch.testing.assert_close(f.alpha, e.alpha, rtol=2 * math.sqrt(n) * 1e-10 + 1e-12, atol=0)
    assert bool(torch.isfinite(f.alpha).all()) and bool((f.alpha > 0).all())


@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_fused_fallbacks_against_the_independent_oracle(policy: str) -> None:
    """A zero expert: the fused α is the policy's α computed by tests/oracles.py."""
    taus = _taus("zero_expert", 4, 8, torch.float64)
    K = sum(t.reshape(4, -1) @ t.reshape(4, -1).T for t in taus)
    got = bargain_alpha(taus, singular_policy=policy, backend="fused")
    assert bool(got.fallback)
    np.testing.assert_allclose(got.alpha.numpy(), fallback_alpha(K.numpy(), policy, zero=1),
                               rtol=1e-9)


def test_bargain_alpha_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend must be"):
        bargain_alpha(_taus("plain", 3, 0, torch.float32), backend="numba")  # type: ignore[arg-type]


def test_warmup_compiles_without_error() -> None:
    fused.warmup()
