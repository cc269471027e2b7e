"""The fused GPU kernels (namex_ref.nash.fused_gpu / fused_triton) against the eager torch path
as their oracle (S4–S5, S9; docs/math.md §7 "The residual rule"), as tests/test_nash_fused.py
does for the CPU kernel.

Without CUDA the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set below
before the first launch) on CPU tensors; with CUDA they are compiled and run on the device. The
eager path is itself tested against numpy's step-by-step specification and an independent
MINPACK root (tests/oracles.py), used directly below too.

Compared, per problem: the converged flag and the step count (so ``iterations`` and ``status``
of ``solve_newton`` are the same), α by the residual rule (rtol = 2√N(r₁ + r₂) + 1e-12), the
reported residual equal to the residual of the returned α recomputed in float64 (atol 1e-13:
N ≤ 64 terms of size ≤ 1 rounded at 1.1e-16, ×8 for the recomputation's own rounding).

Cost: the interpreter runs each program's Newton loop in Python, ~0.02–0.3 s per Newton step per
problem for N 2–64 on the 2-core dev machine, so the default cases are small (N ≤ 16, batch
≤ 4) and the broad sweep (N 2–64, batch 1–4096) is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from namex_ref.merging.functional import (
    UNIFORM_CANCEL_RTOL,
    ZERO_EXPERT_RTOL,
    bargain_alpha,
)
from namex_ref.nash import fused, fused_gpu
from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.problem import ROUNDING_CAP, ROUNDING_FACTOR, converged_mask, scaled_residual
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
)
from namex_ref.nash.solvers import (
    FRACTION_TO_BOUNDARY,
    FULL_STEP_DECREMENT,
    NEWTON_MAX_ITER,
    RESIDUAL_TOL,
    solve_newton,
)
from tests.oracles import fallback_alpha, positive_root
from tests.test_nash_fused import CASES, KINDS, _batch, _taus

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels' first (lazy) import

pytestmark = pytest.mark.skipif(not fused_gpu.TRITON_AVAILABLE, reason="triton not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONSTANTS = {"tol": RESIDUAL_TOL, "factor": ROUNDING_FACTOR, "cap": ROUNDING_CAP,
             "frac": FRACTION_TO_BOUNDARY, "full_dec": FULL_STEP_DECREMENT}
#: The reported residual is that of the returned α (module docstring).
RESIDUAL_ATOL = 1e-13


def _gpu(K: torch.Tensor, fixed: int | None = None,
         a0: torch.Tensor | None = None) -> dict[str, object]:
    """The kernel's outputs on the device, back on the CPU, with ``solve_newton``'s
    iterations/status rule (adaptive: the largest step count; fixed: the budget)."""
    steps_budget = NEWTON_MAX_ITER if fixed is None else fixed
    a0d = None if a0 is None else a0.to(DEVICE)
    alpha, res, conv, steps = fused_gpu.newton_kernel(K.to(DEVICE), a0d, steps_budget,
                                                      **CONSTANTS)
    conv = conv.cpu()
    if fixed is None:
        it = int(steps.max()) if steps.numel() else 0
        status = "converged" if bool(conv.all()) else "max_iter"
    else:
        it, status = fixed, "fixed_iterations"
    return {"alpha": alpha.cpu(), "residual": res.cpu(), "converged": conv,
            "steps": steps.cpu(), "iterations": it, "status": status}


def _assert_same(K: torch.Tensor, eager, got: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    """Same verdict, status and iterations as the eager solver; α by the residual rule."""
    alpha, res, conv = got["alpha"], got["residual"], got["converged"]
    assert alpha.shape == eager.alpha.shape and alpha.dtype == torch.float64
    assert torch.equal(conv, eager.converged)
    assert got["iterations"] == eager.iterations and got["status"] == eager.status
    assert bool((torch.isfinite(alpha) & (alpha > 0)).all())
    n = K.shape[-1]
    K64 = K.to(torch.float64)
    both = eager.converged & conv
    torch.testing.assert_close(scaled_residual(K64, alpha)[both], res[both], rtol=0,
                               atol=RESIDUAL_ATOL)
    assert bool(converged_mask(K64, alpha, res, RESIDUAL_TOL)[both].all())
    rtol = 2 * math.sqrt(n) * (eager.residual + res) + 1e-12
    rel = ((alpha - eager.alpha).abs() / eager.alpha).amax(-1)
    assert bool((rel[both] <= rtol[both]).all()), (rel[both], rtol[both])
    # unconverged problems (ill-conditioned float32 inputs, short budgets) are not frozen at
    # a verdict yet: there the kernel's iterate equals the eager iterate to rounding
    torch.testing.assert_close(alpha[~both], eager.alpha[~both], rtol=1e-6, atol=0)


def _warm(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.1, 3.0, shape))


@settings(max_examples=8)
@given(
    n=st.integers(2, 8),
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    fixed=st.sampled_from([None, 20, 3]),
    warm=st.booleans(),
)
def test_gpu_newton_matches_eager(n: int, kinds: list[str], seed: int, dtype: torch.dtype,
                                  fixed: int | None, warm: bool) -> None:
    K = _batch(kinds, n, seed).to(dtype)
    a0 = _warm(seed, (len(kinds), n)) if warm else None
    eager = solve_newton(K, fixed_iterations=fixed, alpha0=a0, backend="eager")
    _assert_same(K, eager, _gpu(K, fixed, a0))


@pytest.mark.parametrize("n", [2, 13])
def test_gpu_newton_against_the_independent_root(n: int) -> None:
    """α equals scipy's MINPACK root (tests/oracles.py) to the residual rule, for every kind of
    K in one batch (N = 13: a tile of 16 with 3 padded rows)."""
    K = _batch(list(KINDS), n, 7)
    got = _gpu(K, 20)
    assert bool(got["converged"].all()) and float(got["residual"].max()) <= RESIDUAL_TOL
    for p in range(K.shape[0]):
        want = positive_root(K[p].numpy())
        rtol = 2 * math.sqrt(n) * (float(got["residual"][p]) + 1e-12) + 1e-12
        np.testing.assert_allclose(got["alpha"][p].numpy(), want, rtol=rtol)


def test_gpu_iterates_equal_eager_iterates_step_by_step() -> None:
    """After k = 0…6 fixed steps the two paths agree to rounding at every k (the damped phase,
    the switch to full steps, the fraction-to-boundary rule and freezing happen at the same
    step)."""
    K = _batch(["spread", "singular", "collinear", "gaussian"], 5, 11)
    for k in range(7):
        e = solve_newton(K, fixed_iterations=k, backend="eager").alpha
        torch.testing.assert_close(_gpu(K, k)["alpha"], e, rtol=1e-9, atol=0)


@pytest.mark.parametrize("bad", ["nan_off", "inf_diag", "zero_diag"])
def test_invalid_problems_as_eager(bad: str) -> None:
    """No bargain at all (NaN, Inf, zero diagonal; unvalidated): α = 1 exactly, residual inf,
    not converged, no step taken, and the valid problem of the batch solved as alone."""
    K = _batch(["gaussian", "gaussian"], 3, 5)
    if bad == "nan_off":
        K[1, 0, 1] = K[1, 1, 0] = math.nan
    elif bad == "inf_diag":
        K[1, 2, 2] = math.inf
    else:
        K[1, 2, :] = 0.0
        K[1, :, 2] = 0.0
    got = _gpu(K)
    assert got["alpha"][1].tolist() == [1.0, 1.0, 1.0]
    assert math.isinf(float(got["residual"][1]))
    assert got["converged"].tolist() == [True, False] and int(got["steps"][1]) == 0
    np.testing.assert_allclose(got["alpha"][0].numpy(), positive_root(K[0].numpy()), rtol=1e-9)
    _assert_same(K, solve_newton(K, backend="eager"), got)


def test_indefinite_and_antiparallel_problems_stay_finite() -> None:
    """An indefinite K (Cholesky pivot ≤ 0) or anti-parallel experts (α̂ doubles until the step
    overflows): frozen, reported as α = 1, residual inf, not converged, before the cap. Here
    the reference is the CPU kernel: the eager loop does not see a failed ``cholesky_ex`` and
    runs an indefinite K to its cap (unvalidated input; both fused kernels stop)."""
    ind = torch.tensor([[1.0, -3.0, 0.0], [-3.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                       dtype=torch.float64)
    anti = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    for K in (ind, anti):
        got = _gpu(K)
        assert not bool(got["converged"]) and got["iterations"] < NEWTON_MAX_ITER
        assert got["alpha"].tolist() == [1.0] * K.shape[0]
        assert math.isinf(float(got["residual"]))
        # where the iterate overflows depends on rounding near float64's max: ±1 step
        cpu = solve_newton(K, backend="fused")
        assert abs(got["iterations"] - cpu.iterations) <= 1


def test_warm_starts_as_eager() -> None:
    """A warm start is rescaled on its ray (0 steps: exactly the eager start); an invalid start
    (zero, NaN, inf) starts that problem from α̂ = 1; a (N,) start broadcasts over the batch."""
    K = _batch(["gaussian", "spread", "singular"], 4, 2)
    a0 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 1.0], [math.nan, 1.0, 1.0, 1.0]],
                      dtype=torch.float64)
    inf_start = torch.tensor([[1.0, math.inf, 1.0, 1.0]] * 3, dtype=torch.float64)
    for start in (a0, inf_start):
        for k in (0, 20):
            e = solve_newton(K, alpha0=start, fixed_iterations=k, backend="eager")
            torch.testing.assert_close(_gpu(K, k, start)["alpha"], e.alpha, rtol=1e-12, atol=0)
    shared = torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    _assert_same(K, solve_newton(K, alpha0=shared, backend="eager"), _gpu(K, None, shared))


def test_scale_invariance_and_shapes() -> None:
    """S9: K → cK gives α → α/√c; batch dims (2, 2) are kept; an empty batch launches
    nothing."""
    K = _batch(["gaussian", "spread", "singular", "collinear"], 3, 21).reshape(2, 2, 3, 3)
    base = _gpu(K, 20)
    assert base["alpha"].shape == (2, 2, 3) and base["converged"].shape == (2, 2)
    for c in (1e-3, 1e3):
        torch.testing.assert_close(_gpu(c * K, 20)["alpha"], base["alpha"] / math.sqrt(c),
                                   rtol=1e-9, atol=0)
    empty = _gpu(torch.zeros(0, 3, 3, dtype=torch.float64))
    assert empty["alpha"].shape == (0, 3) and empty["iterations"] == 0


def test_zero_steps_and_refusals() -> None:
    K = _batch(["gaussian"], 3, 1)[0]
    for fixed in (0, None):
        got = _gpu(K, fixed) if fixed == 0 else fused_gpu.newton_kernel(
            K.to(DEVICE), None, 0, **CONSTANTS)
        alpha = got["alpha"] if isinstance(got, dict) else got[0].cpu()
        assert alpha.tolist() == (1.0 / K.diagonal().sqrt()).tolist()
    with pytest.raises(ValueError, match="N ≤ 64"):
        fused_gpu.newton_kernel(torch.eye(65, dtype=torch.float64, device=DEVICE), None, 1,
                                **CONSTANTS)
    with pytest.raises(ValueError, match="unknown policy"):
        fused_gpu.bargain_kernel(K.to(DEVICE), "median", 1e-3, 20, zero_rtol=1e-12,
                                 cancel_rtol=1e-6, **CONSTANTS)


def test_only_cuda_tensors_are_routed_to_the_gpu_kernel() -> None:
    """``gpu_fused_available``: CUDA tensors without autograd only (CPU stays on numba)."""
    K = torch.eye(3)
    assert not fused_gpu.gpu_fused_available(K)
    if torch.cuda.is_available():
        assert fused_gpu.gpu_fused_available(K.cuda())
        assert not fused_gpu.gpu_fused_available(K.cuda().requires_grad_(True))


# --------------------------------------------------------------------------------------------
# bargain_alpha after the Gram matrix, every singular policy, a batch of cases in one launch
# --------------------------------------------------------------------------------------------

BARGAIN = {"ridge": 1e-3, "n_steps": 20}


def _bargain_gpu(Ks: torch.Tensor, policy: str) -> tuple[torch.Tensor, ...]:
    out = fused_gpu.bargain_kernel(Ks.to(DEVICE), policy, BARGAIN["ridge"], BARGAIN["n_steps"],
                                   zero_rtol=ZERO_EXPERT_RTOL, cancel_rtol=UNIFORM_CANCEL_RTOL,
                                   **CONSTANTS)
    return tuple(t.cpu() for t in out)


@pytest.mark.parametrize("policy", ["ridge", "uniform", "raise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_bargain_matches_eager(policy: str, dtype: torch.dtype) -> None:
    """Every case of tests/test_nash_fused.py (zero experts, all zero, NaN, anti-parallel,
    cancelling, tiny) in one launch: α, residual and fallback as ``bargain_alpha``'s eager
    path; for "raise", ok is the eager path's "no fallback" and α its Newton α."""
    n = 4
    taus = [_taus(case, n, 3, dtype) for case in CASES]
    Ks = torch.stack([gram_matrix([t.reshape(n, -1) for t in ts]) for ts in taus])
    alpha, residual, fallback, ok = _bargain_gpu(Ks, policy)
    for p, ts in enumerate(taus):
        e = bargain_alpha(ts, singular_policy="uniform" if policy == "raise" else policy,
                          backend="eager")
        assert bool(fallback[p]) == bool(e.fallback) and bool(ok[p]) == (not bool(e.fallback))
        if math.isnan(float(e.residual)):
            assert math.isnan(float(residual[p]))
        else:
            assert float(residual[p]) == pytest.approx(float(e.residual), rel=1e-6, abs=1e-13)
        if policy != "raise" or bool(ok[p]):
            torch.testing.assert_close(alpha[p], e.alpha, rtol=2 * math.sqrt(n) * 1e-10 + 1e-12,
                                       atol=0)
        assert bool(torch.isfinite(alpha[p]).all()) and bool((alpha[p] > 0).all())


@pytest.mark.parametrize("policy", ["ridge", "uniform"])
def test_gpu_fallbacks_against_the_independent_oracle(policy: str) -> None:
    """A zero expert: the kernel's α is the policy's α computed by tests/oracles.py."""
    taus = _taus("zero_expert", 4, 8, torch.float64)
    K = sum(t.reshape(4, -1) @ t.reshape(4, -1).T for t in taus)
    alpha, _, fallback, _ = _bargain_gpu(K, policy)
    assert bool(fallback)
    np.testing.assert_allclose(alpha.numpy(), fallback_alpha(K.numpy(), policy, zero=1),
                               rtol=1e-9)


# --------------------------------------------------------------------------------------------
# CUDA graphs (needs a GPU)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_capture_in_a_cuda_graph() -> None:
    """Both launchers read nothing back, so they capture; replays equal the eager launch, also
    after new K are copied into the static input."""
    K = _batch(list(KINDS), 8, 3).cuda()
    fused_gpu.newton_kernel(K, None, 20, **CONSTANTS)  # compile outside the capture
    fused_gpu.bargain_kernel(K.float(), "ridge", 1e-3, 20, zero_rtol=ZERO_EXPERT_RTOL,
                             cancel_rtol=UNIFORM_CANCEL_RTOL, **CONSTANTS)
    static = K.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_gpu.newton_kernel(static, None, 20, **CONSTANTS)
        bout = fused_gpu.bargain_kernel(static.float(), "ridge", 1e-3, 20,
                                        zero_rtol=ZERO_EXPERT_RTOL,
                                        cancel_rtol=UNIFORM_CANCEL_RTOL, **CONSTANTS)
    for seed in (3, 4):
        static.copy_(_batch(list(KINDS), 8, seed).cuda())
        graph.replay()
        want = fused_gpu.newton_kernel(static, None, 20, **CONSTANTS)
        bwant = fused_gpu.bargain_kernel(static.float(), "ridge", 1e-3, 20,
                                         zero_rtol=ZERO_EXPERT_RTOL,
                                         cancel_rtol=UNIFORM_CANCEL_RTOL, **CONSTANTS)
        for a, b in zip((*out, *bout), (*want, *bwant), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------------------------
# The broad sweep (slow: the interpreter)
# --------------------------------------------------------------------------------------------


@st.composite
def _sizes(draw: st.DrawFn) -> tuple[int, int]:
    """(N, batch) with N 2–64 and batch 1–4096, the batch bounded by the interpreter's cost
    (~N² per problem step) where no GPU runs the kernel."""
    n = draw(st.integers(2, 64))
    cap = 4096 if torch.cuda.is_available() else max(1, 64 // n)
    return n, draw(st.integers(1, cap))


@pytest.mark.slow
@settings(max_examples=20)
@given(
    size=_sizes(),
    seed=st.integers(0, 2**31),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    fixed=st.sampled_from([None, 20, 3]),
    warm=st.booleans(),
)
def test_gpu_newton_sweep(size: tuple[int, int], seed: int, dtype: torch.dtype,
                          fixed: int | None, warm: bool) -> None:
    n, batch = size
    kinds = [KINDS[(seed + i) % len(KINDS)] for i in range(batch)]
    K = _batch(kinds, n, seed).to(dtype)
    a0 = _warm(seed, (batch, n)) if warm else None
    eager = solve_newton(K, fixed_iterations=fixed, alpha0=a0, backend="eager")
    _assert_same(K, eager, _gpu(K, fixed, a0))


@pytest.mark.slow
def test_gpu_newton_large_batch() -> None:
    """Batch 1500 (program ids far past any small-batch indexing slip, and not a power of
    two), N = 3, a warm start per problem, zero steps: every problem's start (read through its
    own K and α0 offsets) equals the eager start. (Steps cost ~0.1 s per problem in the
    interpreter; indexing is what a large batch adds. Batch 4096 took 280 s of the CI's slow
    budget on a loaded machine for no more indexing coverage; on a GPU, make gpu-check runs
    the capture and benchmark rows at batch 65536.)"""
    kinds = [KINDS[i % len(KINDS)] for i in range(1500)]
    K = _batch(kinds, 3, 0)
    a0 = _warm(1, (1500, 3))
    e = solve_newton(K, fixed_iterations=0, alpha0=a0, backend="eager")
    got = _gpu(K, 0, a0)
    torch.testing.assert_close(got["alpha"], e.alpha, rtol=1e-12, atol=0)
    assert torch.equal(got["converged"], e.converged)


# --------------------------------------------------------------------------------------------
# The dispatch: solve_newton and bargain_alpha route CUDA tensors to the kernels
# --------------------------------------------------------------------------------------------


def _route_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make "auto" take the GPU kernels for this device's tensors (CPU under the interpreter:
    the numba kernel is switched off and the CUDA check accepts them)."""
    monkeypatch.setattr(fused, "fused_available", lambda *t: False)
    monkeypatch.setattr(fused_gpu, "gpu_fused_available",
                        lambda *t: all(x is None or not x.requires_grad for x in t))


def test_solve_newton_takes_the_gpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """``solve_newton(backend="auto")`` on the device's tensors: the kernel's verdict, status
    and iterations are the eager solver's (adaptive with a warm start, and fixed)."""
    K = _batch(["gaussian", "spread", "singular"], 4, 5).to(DEVICE)
    a0 = _warm(5, (3, 4)).to(DEVICE)
    want = [solve_newton(K, alpha0=a0, backend="eager"),
            solve_newton(K, fixed_iterations=3, backend="eager")]
    calls: list[int] = []
    kernel = fused_gpu.newton_kernel

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        calls.append(1)
        return kernel(*args, **kwargs)  # type: ignore[arg-type]

    _route_here(monkeypatch)
    monkeypatch.setattr(fused_gpu, "newton_kernel", counted)
    got = [solve_newton(K, alpha0=a0), solve_newton(K, fixed_iterations=3, backend="fused")]
    assert len(calls) == 2
    for e, g in zip(want, got, strict=True):
        assert g.iterations == e.iterations and g.status == e.status
        assert torch.equal(g.converged.cpu(), e.converged.cpu())
        _assert_same(K.cpu(), e, {"alpha": g.alpha.cpu(), "residual": g.residual.cpu(),
                                  "converged": g.converged.cpu(), "iterations": g.iterations,
                                  "status": g.status})


@pytest.mark.parametrize("policy", ["ridge", "raise"])
def test_bargain_alpha_takes_the_gpu_kernel(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bargain_alpha`` on the device's tensors: one kernel launch; a failed bargain under
    "raise" goes to the validated slow path and raises what the eager path raises."""
    plain = [t.to(DEVICE) for t in _taus("plain", 4, 3, torch.float32)]
    zero = [t.to(DEVICE) for t in _taus("antiparallel", 4, 3, torch.float32)]
    want = bargain_alpha(plain, singular_policy=policy, backend="eager")
    errors = (BargainInputError, DegenerateExpertError, InfeasibleBargainError,
              NashConvergenceError)
    try:
        bad_want: object = bargain_alpha(zero, singular_policy=policy, backend="eager")
    except errors as err:
        bad_want = err
    calls: list[int] = []
    kernel = fused_gpu.bargain_kernel

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        calls.append(1)
        return kernel(*args, **kwargs)  # type: ignore[arg-type]

    _route_here(monkeypatch)
    monkeypatch.setattr(fused_gpu, "bargain_kernel", counted)
    got = bargain_alpha(plain, singular_policy=policy)
    assert len(calls) == 1
    assert not bool(got.fallback) and bool(got.fallback) == bool(want.fallback)
    torch.testing.assert_close(got.alpha, want.alpha, rtol=2 * math.sqrt(4) * 1e-10 + 1e-12,
                               atol=0)
    if isinstance(bad_want, Exception):
        with pytest.raises(type(bad_want)):
            bargain_alpha(zero, singular_policy=policy)
    else:
        bad = bargain_alpha(zero, singular_policy=policy)
        assert bool(bad.fallback) and bool(bad_want.fallback)  # type: ignore[attr-defined]
        torch.testing.assert_close(bad.alpha, bad_want.alpha, rtol=1e-9, atol=0)  # type: ignore[attr-defined]
