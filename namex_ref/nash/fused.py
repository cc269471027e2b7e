"""Fused CPU kernels for small bargains: Newton's whole iteration (S4–S5) in one compiled call.

``solve_newton`` (:mod:`namex_ref.nash.newton`) runs damped Newton as a sequence of batched
torch operators. For the bargains the training loop solves — one N×N problem per layer, N ≤ 16,
20 fixed steps — each step is ~300 flops but ~15 operator dispatches, so the eager loop costs
~1.5 ms of dispatch for ~2 µs of arithmetic. The kernels here run the *same* algorithm, step by
step, as loops compiled by numba (``@njit(cache=True)``: compiled on first use, then loaded
from numba's on-disk cache), on numpy views of CPU tensors:

- :func:`newton_kernel`: a batch (B, N, N) of problems, every problem iterated on its own
  (adaptive: until the shared convergence rule holds, at most ``max_iter`` steps; fixed: the
  same, since a converged problem is frozen in the eager loop as well), returning α, the
  per-problem residuals, converged flags and steps.
- :func:`bargain_kernel`: what ``merging.plan.bargain_alpha`` does after the Gram matrix
  (zero-expert and finiteness masks, the fixed-budget solve, the singular-bargain policy), for
  one layer.

Per step, exactly as the eager loop (docstring of ``solve_newton``): unit-diagonal K̂ (S9),
M = DK̂D + I, its Cholesky factor, two triangular solves for z, the Newton decrement λ, step
1/(1 + λ) while λ > ``FULL_STEP_DECREMENT`` and 1 after, fraction-to-boundary, freezing of
converged and broken problems, and the shared rule of ``problem.converged_mask``. Every tuning
constant is passed in by the caller (the eager path's own constants), so both paths share one
definition. Results agree with the eager path to the residual rule of docs/math.md §7 (the
summation order differs, so not bit for bit); tests/test_nash_fused.py checks that against the
eager path as the oracle.

The eager path stays the fallback: CUDA tensors, inputs that require grad, ``record_history``,
inside ``torch.compile`` or CUDA-graph capture, N > :data:`FUSED_MAX_N`, or numba not
installed (:func:`fused_available`). There is nothing to synchronise on a CPU, and no operator
of :data:`namex_ref.benchmarks.syncs.SYNC_OPS` is called.

Set the environment variable ``NAMEX_NUMBA_CACHE=0`` to compile without numba's disk cache
(numba's cache key hashes the bytecode but not its constants, so a hand-edited constant could
be served stale). Mutation testing (tools/mutation.py) runs with ``NUMBA_DISABLE_JIT=1``: the
kernels then run as plain Python with the same semantics, visible to its line tracer.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FUSED_MAX_N",
    "NUMBA_AVAILABLE",
    "bargain_kernel",
    "fused_available",
    "newton_kernel",
    "warmup",
]

#: Largest N the fused kernels take: their Cholesky is the unblocked O(N³) loop, which beats
#: LAPACK's dispatch for small N; above this the eager (LAPACK) path is used.
FUSED_MAX_N = 64

#: True when numba imported: the fused kernels are used (``fused_available``); False means
#: every call takes the eager torch path.
NUMBA_AVAILABLE: bool
numba: Any
try:  # numba is a dependency (pyproject); without it every call takes the eager path
    import numba

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None
    NUMBA_AVAILABLE = False

_CACHE = os.environ.get("NAMEX_NUMBA_CACHE", "1") != "0"
_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)
_POLICY_CODES = {"ridge": 0, "uniform": 1, "raise": 2}


def _njit(fn: Any) -> Any:
    """``numba.njit(cache=True, error_model="numpy")`` (IEEE division, no Python
    ZeroDivisionError checks; no fastmath, so NaN/Inf tests stay exact) when numba is
    installed; the plain function otherwise."""
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(cache=_CACHE, error_model="numpy")(fn)


_HOST = torch.device("cpu")


def fused_available(*tensors: Tensor | None) -> bool:
    """True when the fused kernels may serve these tensors: numba installed, every tensor on
    the CPU without autograd, and not inside ``torch.compile`` tracing. Reads no tensor
    values (no synchronisation). "On the CPU" means the device ``cpu`` itself: the device
    detector (:mod:`namex_ref.devicecheck`) stands in for a GPU with ``cpu:0``, and must see
    the path a GPU takes."""
    if not NUMBA_AVAILABLE or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None and (t.device != _HOST or t.requires_grad):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Kernels (numba nopython). Scratch arrays are passed in so a batch allocates once.
# --------------------------------------------------------------------------------------------


@_njit
def _residual(Kh: Any, a: Any, r: Any) -> tuple[float, float]:  # pragma: no cover - compiled
    """r = α∘(K̂α) − 1 (``problem.scaled_gradient``). Returns (max_i |r_i|, max_i α_i(|K̂|α)_i),
    the residual and the scale of its rounding floor (``problem.residual_floor``); NaN
    propagates into both."""
    n = a.shape[0]
    res = 0.0
    top = 0.0
    for i in range(n):
        s = 0.0
        sa = 0.0
        for j in range(n):
            s += Kh[i, j] * a[j]
            sa += abs(Kh[i, j]) * a[j]
        r[i] = a[i] * s - 1.0
        v = abs(r[i])
        if v > res or v != v:
            res = v if res == res else res
        v = a[i] * sa
        if v > top or v != v:
            top = v if top == top else top
    return res, top


@_njit
def _converged(n: int, res: float, top: float, tol: float, factor: float,
               cap: float) -> bool:  # pragma: no cover - compiled
    """``problem.converged_mask`` for one problem: residual ≤ max(tol, 8·floor) and
    8·floor ≤ max(tol, cap), floor = eps·N·max_i α_i(|K̂|α)_i (``residual_floor``)."""
    floor8 = factor * (_EPS * n * top)
    limit = tol if tol > cap else cap
    if not floor8 <= limit:  # also False for a NaN floor: never converged
        return False
    thr = floor8 if floor8 > tol else tol
    return res <= thr


@_njit
def _unit_start(K: Any, a0: Any, use_a0: bool, Kh: Any, d: Any,
                a: Any) -> bool:  # pragma: no cover - compiled
    """Unit-diagonal form and starting point of one problem K (N, N), as ``newton._start``.

    Writes K̂ = DKD into ``Kh``, D's diagonal into ``d`` and the start α̂ into ``a``: 1 (S8), or
    the warm start ``a0`` in K̂'s units scaled by the exact line search s = √(N / α̂ᵀK̂α̂) along
    its ray. Returns whether K is a bargain at all (finite, diagonal > 0); if not, K̂ = I."""
    n = K.shape[0]
    valid = True
    for i in range(n):
        if not K[i, i] > 0.0:
            valid = False
        for j in range(n):
            if not np.isfinite(K[i, j]):
                valid = False
    for i in range(n):
        d[i] = 1.0 / math.sqrt(K[i, i]) if valid else 1.0
    for i in range(n):
        for j in range(n):
            if valid:
                Kh[i, j] = d[i] * K[i, j] * d[j]
            else:
                Kh[i, j] = 1.0 if i == j else 0.0
    start_ok = use_a0
    if use_a0:
        for i in range(n):
            if not (np.isfinite(a0[i]) and a0[i] > 0.0):
                start_ok = False
    for i in range(n):
        a[i] = a0[i] / d[i] if start_ok else 1.0
    if use_a0:  # exact line search along the start's ray: s = √(N / αᵀK̂α)
        q = 0.0
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += Kh[i, j] * a[j]
            q += a[i] * s
        scale = math.sqrt(n / max(q, _TINY)) if q > 0.0 else 1.0
        for i in range(n):
            a[i] = a[i] * scale
    return valid


@_njit
def _cholesky(a: Any, Kh: Any, M: Any, d2: Any) -> bool:  # pragma: no cover - compiled
    """Cholesky of M = D K̂ D + I (eigenvalues ≥ 1), D = diag(α̂): the lower factor L is written
    over M, the reciprocals of its diagonal into ``d2`` (one division per pivot). Returns False
    on a pivot that is not finite and > 0 (an indefinite K)."""
    n = a.shape[0]
    for i in range(n):
        for j in range(i + 1):
            M[i, j] = a[i] * Kh[i, j] * a[j] + (1.0 if i == j else 0.0)
    for j in range(n):
        s = M[j, j]
        for k in range(j):
            s -= M[j, k] * M[j, k]
        if not (s > 0.0 and s < np.inf):
            return False
        M[j, j] = math.sqrt(s)
        inv = 1.0 / M[j, j]
        d2[j] = inv
        for i in range(j + 1, n):
            t = M[i, j]
            for k in range(j):
                t -= M[i, k] * M[j, k]
            M[i, j] = t * inv
    return True


@_njit
def _direction(M: Any, d2: Any, r: Any, z: Any) -> float:  # pragma: no cover - compiled
    """Newton direction z = −(LLᵀ)⁻¹r (two triangular solves on :func:`_cholesky`'s factor,
    written into ``z``) and the Newton decrement λ = √(−rᵀz), returned (NaN propagates)."""
    n = r.shape[0]
    for i in range(n):  # L y = r
        s = r[i]
        for k in range(i):
            s -= M[i, k] * z[k]
        z[i] = s * d2[i]
    for i in range(n - 1, -1, -1):  # Lᵀ w = y, z = −w
        s = z[i]
        for k in range(i + 1, n):
            s -= M[k, i] * z[k]
        z[i] = s * d2[i]
    lam2 = 0.0
    for i in range(n):
        z[i] = -z[i]
        lam2 -= r[i] * z[i]
    return math.sqrt(lam2) if lam2 > 0.0 else (0.0 if lam2 == lam2 else lam2)


@_njit
def _newton_one(K: Any, a0: Any, use_a0: bool, n_steps: int, tol: float, factor: float,
                cap: float, frac: float, full_dec: float, alpha: Any, Kh: Any, d: Any,
                a: Any, r: Any, M: Any, z: Any,
                d2: Any) -> tuple[float, bool, int]:  # pragma: no cover - compiled
    """Damped Newton on one problem K (N, N), as ``solve_newton`` (see its docstring).

    Writes α (in K's units) into ``alpha``; returns (residual, converged, steps taken). A
    problem that is no bargain (non-finite entry, diagonal ≤ 0) or whose step breaks (a
    non-positive Cholesky pivot or a non-finite/non-positive iterate, i.e. an indefinite K)
    gives α = 1, residual inf, not converged."""
    n = K.shape[0]
    valid = _unit_start(K, a0, use_a0, Kh, d, a)
    res, top = _residual(Kh, a, r)
    broken = False  # a start rescaled to α̂ = 0 or inf (αᵀK̂α overflowed): no start at all
    for i in range(n):
        if not (np.isfinite(a[i]) and a[i] > 0.0):
            broken = True
    steps = 0
    for it in range(1, n_steps + 1):
        if broken or _converged(n, res, top, tol, factor, cap):
            break
        steps = it
        if not _cholesky(a, Kh, M, d2):
            broken = True
            continue
        lam = _direction(M, d2, r, z)
        t = 1.0 / (1.0 + lam) if lam > full_dec else 1.0
        for i in range(n):  # fraction to boundary on 1 + t z_i > 0
            if z[i] < 0.0:
                t = min(t, -frac / z[i])
        good = True
        for i in range(n):
            v = a[i] * (1.0 + t * z[i])
            if not (np.isfinite(v) and v > 0.0):
                good = False
            alpha[i] = v
        if good:
            for i in range(n):
                a[i] = alpha[i]
        else:
            broken = True
        res, top = _residual(Kh, a, r)
    ok = valid and not broken and np.isfinite(res)
    conv = ok and _converged(n, res, top, tol, factor, cap)
    for i in range(n):
        alpha[i] = a[i] * d[i] if ok else 1.0
    return (res if ok else np.inf), conv, steps


@_njit
def _newton_batch(K: Any, a0: Any, use_a0: bool, n_steps: int, tol: float, factor: float,
                  cap: float, frac: float, full_dec: float) -> Any:  # pragma: no cover
    """:func:`_newton_one` over a batch K (B, N, N), a0 (B, N) → (α, residual, converged,
    steps)."""
    b, n = K.shape[0], K.shape[1]
    alpha = np.empty((b, n))
    res = np.empty(b)
    conv = np.empty(b, dtype=np.bool_)
    steps = np.zeros(b, dtype=np.int64)
    Kh = np.empty((n, n))
    M = np.empty((n, n))
    d, a, r, z, d2 = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for p in range(b):
        res[p], conv[p], steps[p] = _newton_one(
            K[p], a0[p], use_a0, n_steps, tol, factor, cap, frac, full_dec, alpha[p], Kh, d,
            a, r, M, z, d2)
    return alpha, res, conv, steps


@_njit
def _bargain(K: Any, policy: int, ridge: float, n_steps: int, tol: float, factor: float,
             cap: float, frac: float, full_dec: float, zero_rtol: float,
             cancel_rtol: float) -> Any:  # pragma: no cover - compiled
    """``bargain_alpha`` after the Gram matrix, for one K (N, N) float64.

    Returns (α (N,), residual, fallback, alpha_main (N,), ok): α after the policy (policy 0
    "ridge", 1 "uniform"; for 2 "raise" α is the Newton α), the residual of the Newton α on
    the true K (NaN for a non-finite K), fallback = not ok."""
    n = K.shape[0]
    finite = True
    K0 = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            v = K[i, j]
            if np.isfinite(v):
                K0[i, j] = v
            else:
                finite = False
                K0[i, j] = 0.0
    top = -np.inf
    dsum = 0.0
    for i in range(n):
        top = max(top, K0[i, i])
        dsum += K0[i, i]
    scale = max(top, _TINY)
    any_zero = False
    Ks = K0.copy()
    for i in range(n):
        if K0[i, i] <= zero_rtol * scale:
            any_zero = True
            Ks[i, i] = K0[i, i] + scale
    Kh = np.empty((n, n))
    M = np.empty((n, n))
    d, a, r, z, d2 = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    main = np.empty(n)
    none = np.empty(0)
    _, conv, _ = _newton_one(Ks, none, False, n_steps, tol, factor, cap, frac, full_dec,
                             main, Kh, d, a, r, M, z, d2)
    ok = conv and finite and not any_zero  # (_newton_one's α is finite by construction)
    residual = np.nan
    if finite:
        residual = 0.0
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += K0[i, j] * main[j]
            v = abs(main[i] * s - 1.0)
            if v > residual or v != v:
                residual = v if residual == residual else residual
    alpha = main.copy()
    if policy == 2 or ok:
        return alpha, residual, not ok, main, ok
    if policy == 0:  # ridge: K' + λ·mean(diag K)·I
        lam = ridge * max(dsum / n, _TINY)
        for i in range(n):
            Ks[i, i] = Ks[i, i] + lam
        _newton_one(Ks, none, False, n_steps, tol, factor, cap, frac, full_dec, alpha, Kh, d,
                    a, r, M, z, d2)
    else:  # uniform: α_i = √(N / max(1ᵀK1, ρ·tr K))
        total = 0.0
        for i in range(n):
            for j in range(n):
                total += K0[i, j]
        floor = max(cancel_rtol * dsum, _TINY)
        c = math.sqrt(n / max(total, floor))
        for i in range(n):
            alpha[i] = c
    if not top > 0.0:  # every τ_i = 0: ΔE = 0 whatever α is; α = 1 (bargain_alpha's rule)
        for i in range(n):
            alpha[i] = 1.0
    # α is finite here by construction (Newton's α, or c ≤ √(N / tiny)), so bargain_alpha's
    # final nan_to_num has nothing to replace
    return alpha, residual, True, main, ok


# --------------------------------------------------------------------------------------------
# Python entry points
# --------------------------------------------------------------------------------------------


def newton_kernel(
    K: Tensor, alpha0: Tensor | None, n_steps: int, *, tol: float, factor: float, cap: float,
    frac: float, full_dec: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run fused Newton on K (..., N, N) (CPU, any float dtype, solved in float64).

    ``alpha0``: None or a tensor broadcastable to (..., N) (already shape-checked by the
    caller). The constants are ``solve_newton``'s. Returns (α (..., N) float64,
    residual (...), converged (...) bool, steps (...) int64), all on the CPU.
    """
    batch = tuple(K.shape[:-2])
    n = K.shape[-1]
    # numpy views and reshapes: ~10× cheaper than torch's dispatch for these tiny arrays
    Kn = _as_f64_numpy(K).reshape(-1, n, n)
    if alpha0 is None:
        a0 = np.empty((Kn.shape[0], 0))
        use = False
    else:
        a0 = np.broadcast_to(_as_f64_numpy(alpha0), (*batch, n)).reshape(-1, n)
        use = True
    alpha, res, conv, steps = _newton_batch(Kn, a0, use, int(n_steps), float(tol),
                                            float(factor), float(cap), float(frac),
                                            float(full_dec))
    return (torch.from_numpy(alpha.reshape(*batch, n)), torch.from_numpy(res.reshape(batch)),
            torch.from_numpy(conv.reshape(batch)), torch.from_numpy(steps.reshape(batch)))


def _as_f64_numpy(t: Tensor) -> Any:
    """A C-contiguous float64 numpy array with t's values (a view when t already is one)."""
    if t.dtype != torch.float64:
        t = t.to(torch.float64)
    return np.ascontiguousarray(t.detach().numpy())


def bargain_kernel(
    K: Tensor, policy: str, ridge: float, n_steps: int, *, tol: float, factor: float,
    cap: float, frac: float, full_dec: float, zero_rtol: float, cancel_rtol: float,
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """The no-raise part of ``bargain_alpha`` on one Gram matrix K (N, N) (CPU).

    Returns (α (N,) float64, residual () float64, fallback () bool, ok): for policy "raise"
    α is the Newton α and ``ok`` says whether it can be returned as is (else the caller runs
    the validated slow path). ``ok`` is a Python bool read from the kernel's own output (a CPU
    value: no device synchronisation).
    """
    Kn = _as_f64_numpy(K)
    alpha, residual, fallback, _, ok = _bargain(
        Kn, _POLICY_CODES[policy], float(ridge), int(n_steps), float(tol), float(factor),
        float(cap), float(frac), float(full_dec), float(zero_rtol), float(cancel_rtol))
    return (torch.from_numpy(alpha), torch.tensor(residual, dtype=torch.float64),
            torch.tensor(fallback), bool(ok))


def warmup() -> None:
    """Compile (or load from numba's cache) every kernel signature the package uses, so that
    no timed region pays for compilation. A no-op without numba."""
    if not NUMBA_AVAILABLE:
        return
    K = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    common = {"tol": 1e-10, "factor": 8.0, "cap": 1e-6, "frac": 0.99, "full_dec": 0.25}
    newton_kernel(K, None, 2, **common)
    newton_kernel(K, torch.ones(2, dtype=torch.float64), 2, **common)
    for k in (K, K.float()):
        bargain_kernel(k, "ridge", 1e-3, 2, zero_rtol=1e-12, cancel_rtol=1e-6, **common)
