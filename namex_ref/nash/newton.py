"""Damped Newton for Kα = 1/α (S4–S5, docs/math.md): the default solver and its backend switch.

:func:`solve_newton` minimises f(α) = ½αᵀKα − Σ log α_i in float64, batched, on any device.
Two backends run the same algorithm: "eager" (batched torch operators, this module) and
"fused" (one compiled kernel per batch: numba on CPU, :mod:`namex_ref.nash.fused`; Triton on
CUDA, :mod:`namex_ref.nash.fused_gpu`); "auto" picks a fused kernel wherever
:func:`~namex_ref.nash.fused.fused_available` or
:func:`~namex_ref.nash.fused_gpu.gpu_fused_available` allows it. The tuning
constants live here and are passed to the kernel, so both backends share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from namex_ref.nash import fused, fused_gpu
from namex_ref.nash.problem import (
    ROUNDING_CAP,
    ROUNDING_FACTOR,
    converged_mask,
    normalise_gram,
    scaled_gradient,
)
from namex_ref.nash.result import BargainInputError, NashSolution

__all__ = [
    "FRACTION_TO_BOUNDARY",
    "FULL_STEP_DECREMENT",
    "NEWTON_MAX_ITER",
    "RESIDUAL_TOL",
    "NewtonBackend",
    "check_alpha0",
    "solve_newton",
]

#: How ``solve_newton`` runs its loop: batched torch operators, the fused CPU kernel, or the
#: fused kernel wherever it applies.
NewtonBackend = Literal["auto", "eager", "fused"]
#: A fused kernel's signature (``fused.newton_kernel``, ``fused_gpu.newton_kernel``):
#: (K, alpha0, n_steps, *, tol, factor, cap, frac, full_dec) → (α, residual, converged, steps).
Kernel = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]

#: Newton's stopping tolerance on max_i |α_i(Kα)_i − 1|. Rounding of α_i(Kα)_i in float64 is
#: ~N·eps·max_i α_i Σ_j |K_ij| α_j ≈ 1e-14 for well-conditioned K; 1e-10 leaves four orders for
#: cancellation in ill-conditioned K (cond(K̂) up to ~1e12 still converges, see tests).
RESIDUAL_TOL = 1e-10
#: Adaptive Newton's iteration cap. Damped phase: f decreases by ≥ 0.25 − log 1.25 ≈ 0.027 per
#: step (self-concordance), quadratic convergence after; typical problems need 5–10 steps.
NEWTON_MAX_ITER = 100
#: Fraction-to-boundary: a step may cover at most this fraction of the distance to α_i = 0.
FRACTION_TO_BOUNDARY = 0.99
#: Newton decrement below which full steps are taken (quadratic-convergence region of a
#: self-concordant function: λ < (3 − √5)/2 ≈ 0.38; 0.25 is the textbook choice).
FULL_STEP_DECREMENT = 0.25


def check_alpha0(alpha0: Any, batch: torch.Size, *, check_values: bool) -> Tensor:
    """Validate a warm start: a tensor broadcastable to the batch's (..., N), and (when
    ``check_values``; one host synchronisation) finite and > 0 everywhere.

    Raises :class:`BargainInputError` naming the wrong shape, dtype or value."""
    if not isinstance(alpha0, Tensor):
        try:
            alpha0 = torch.as_tensor(np.asarray(alpha0, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise BargainInputError(f"alpha0 must be array-like; got {type(alpha0)!r}") from exc
    a0: Tensor = alpha0
    n = batch[-1]
    if alpha0.ndim == 0 or alpha0.shape[-1] != n or alpha0.ndim > len(batch) or any(
        s not in (1, b) for s, b in zip(alpha0.shape[::-1], batch[::-1], strict=False)
    ):
        raise BargainInputError(
            f"alpha0 has shape {tuple(alpha0.shape)}; it must broadcast to the batch's α shape "
            f"{tuple(batch)} (one positive weight per expert, N = {n})."
        )
    if alpha0.is_complex():
        raise BargainInputError("alpha0 must be real; got a complex tensor.")
    if check_values:
        a = alpha0.to(torch.float64)
        if not bool(torch.isfinite(a).all()):
            raise BargainInputError(f"alpha0 must be finite; got {alpha0.tolist()}.")
        if not bool((a > 0).all()):
            raise BargainInputError(
                f"alpha0 must be positive (the bargain's α lies in the open orthant, S4); got "
                f"{alpha0.tolist()}."
            )
    return a0


def solve_newton(
    K: Tensor,
    *,
    tol: float = RESIDUAL_TOL,
    max_iter: int = NEWTON_MAX_ITER,
    alpha0: Tensor | None = None,
    fixed_iterations: int | None = None,
    record_history: bool = False,
    backend: NewtonBackend = "auto",
) -> NashSolution:
    """Damped Newton on f(α) = ½αᵀKα − Σ log α_i (S5); ∇f = 0 ⇔ Kα = 1/α (S4).

    K: (..., N, N) symmetric PSD with positive diagonal (validated by ``solve_nash``), any float
    dtype and device; solved in float64. ``alpha0``: optional warm start (..., N), > 0.

    The problem is first put in unit-diagonal form K̂ (S9), started at α̂ = 1 (exact when K is
    diagonal, S8) or at the warm start rescaled to the minimum of f on its ray,
    s·α0 with s = √(N / α0ᵀKα0) (so a warm start with the wrong overall scale costs nothing).
    Each step solves the Newton system in multiplicative form:
    with D = diag(α̂) and r = α̂∘(K̂α̂) − 1 (the scale-free residual vector),

        (D K̂ D + I) z = −r,   step = α̂∘z,

    which is D(∇²f)D z = −D∇f; its matrix has eigenvalues ≥ 1, so the Cholesky factorisation is
    well-conditioned even when K is singular or α is large. The step length is 1/(1 + λ) while
    the Newton decrement λ = √(rᵀ(DK̂D + I)⁻¹r) exceeds 0.25 (damped phase; α at most doubles per
    step), then 1; a fraction-to-boundary rule (0.99) keeps α > 0 in all cases.

    Convergence: the shared rule :func:`~namex_ref.nash.problem.converged_mask` — residual ≤
    ``tol``, or ≤ 8× its own float64 rounding floor when that is larger (near-infeasible
    problems with large α̂), and only while 8× the floor is ≤ 1e-6 (else not certifiable).

    Guarantees on any input, validated or not: α is finite and > 0. A problem that is no
    bargain at all (a non-finite entry or a non-positive diagonal, only reachable with
    ``solve_nash(validate=False)`` or by calling this function directly), whose Newton matrix
    has a pivot ≤ 0 or whose step becomes non-finite (an indefinite K; every backend tests the
    same two conditions), or whose warm start rescales to a zero or non-finite α̂ (αᵀK̂α
    overflowed, e.g. ``alpha0`` = 1e154) is returned as α = 1, residual = inf,
    converged = False, without affecting the rest of the batch. An invalid ``alpha0`` (wrong
    shape; in adaptive mode also non-finite or ≤ 0) raises :class:`BargainInputError`; in
    fixed-iteration mode, where values are not read back, a problem with an invalid warm start
    starts from α̂ = 1 instead.

    Modes:
        adaptive (default): stop when every problem has converged or after ``max_iter`` steps; one
            host synchronisation per step.
        ``fixed_iterations=n``: exactly n steps with no host synchronisation (usable inside CUDA
            graphs and training loops); problems that reach ``tol`` are frozen; per-problem
            residuals and ``converged`` flags are still returned as tensors.

    Backends (``backend``): "eager" runs the loop below as batched torch operators (any device,
    autograd, ``record_history``); "fused" runs the same algorithm per problem in one compiled
    kernel: numba's on CPU tensors (:mod:`namex_ref.nash.fused`; ~100× less dispatch at batch
    1), Triton's on CUDA tensors (:mod:`namex_ref.nash.fused_gpu`; one launch, capturable in a
    CUDA graph with ``fixed_iterations``, one read-back per adaptive solve), both tested
    against "eager" as their oracle to the residual rule; "auto" (default) takes "fused"
    whenever :func:`~namex_ref.nash.fused.fused_available` or
    :func:`~namex_ref.nash.fused_gpu.gpu_fused_available` allows it (no autograd, numba or
    triton installed, N ≤ ``FUSED_MAX_N``, no ``record_history``) and "eager" otherwise.

    Returns a :class:`NashSolution` with ``alpha`` (..., N) float64 in K's units.
    """
    kernel = _takes_fused(K, alpha0, record_history, backend)
    if kernel is not None:
        return _solve_newton_fused(K, tol, max_iter, alpha0, fixed_iterations, kernel)
    p = _start(K, alpha0, check_values=fixed_iterations is None)
    n_steps = max_iter if fixed_iterations is None else fixed_iterations
    history: list[Tensor] = []
    a, Kh = p.a, p.Kh
    r = scaled_gradient(Kh, a)
    res = r.abs().amax(-1)
    # a warm start whose ray search overflowed (α̂ = 0 or not finite) is no start at all
    broken = ~(torch.isfinite(a) & (a > 0)).all(-1)
    it = 0
    for it in range(1, n_steps + 1):
        done = converged_mask(Kh, a, res, tol) | broken
        if fixed_iterations is None and bool(done.all()):
            it -= 1
            break
        step, factored = _newton_step(Kh, a, r, p.eye)
        a_new = a * (1.0 + step)
        # A failed factorisation or a non-finite step (only for an indefinite K, i.e.
        # unvalidated bad input) freezes the problem; it is reported as α = 1, residual inf
        # below, as the fused kernels do (their pivot test is the same condition).
        broken = broken | ~factored | ~(torch.isfinite(a_new) & (a_new > 0)).all(-1)
        a = torch.where((done | broken)[..., None], a, a_new)
        r = scaled_gradient(Kh, a)
        res = r.abs().amax(-1)
        if record_history:
            history.append(res)
    ok = p.valid & ~broken & torch.isfinite(res)
    alpha = torch.where(ok[..., None], a * p.d, 1.0)
    res = torch.where(ok, res, math.inf)
    converged = converged_mask(Kh, a, res, tol) & ok
    hist = torch.stack(history) if record_history and history else None
    if fixed_iterations is not None:
        status = "fixed_iterations"
    else:
        status = "converged" if bool(converged.all()) else "max_iter"
    return NashSolution(alpha, res, converged, it, "newton", status, hist)


def _takes_fused(K: Tensor, alpha0: Any, record_history: bool, backend: str) -> Kernel | None:
    """The fused kernel that runs this call — numba's on CPU tensors, Triton's on CUDA
    tensors (:mod:`namex_ref.nash.fused_gpu`) — or None for the eager loop (reads no tensor
    values).

    Raises ValueError for an unknown ``backend``, or for "fused" where no kernel can serve
    the call (the message names the conditions and the "auto" fallback)."""
    if backend not in ("auto", "eager", "fused"):
        raise ValueError(f"backend must be 'auto', 'eager' or 'fused'; got {backend!r}")
    a0t = alpha0 if alpha0 is None or isinstance(alpha0, Tensor) else None
    eligible = (not record_history and K.shape[-1] <= fused.FUSED_MAX_N
                and (alpha0 is None or a0t is not None))
    kernel: Kernel | None = None
    if eligible and fused.fused_available(K, a0t):
        kernel = fused.newton_kernel
    elif eligible and fused_gpu.gpu_fused_available(K, a0t):
        kernel = fused_gpu.newton_kernel
    if backend == "fused" and kernel is None:
        raise ValueError(
            "backend='fused' needs CPU tensors without autograd and numba installed (or CUDA "
            f"tensors and triton installed), N ≤ {fused.FUSED_MAX_N} and record_history=False; "
            "use backend='auto' to fall back to the eager path."
        )
    return None if backend == "eager" else kernel


@dataclass(frozen=True)
class _Start:
    """The eager loop's starting point: K̂ (..., N, N) and α̂ (..., N) in unit-diagonal units,
    d (..., N) mapping α = d·α̂ back, valid (...) the problems that are bargains, eye (N, N)."""

    Kh: Tensor
    d: Tensor
    a: Tensor
    valid: Tensor
    eye: Tensor


def _start(K: Tensor, alpha0: Tensor | None, *, check_values: bool) -> _Start:
    """Unit-diagonal form (S9) and the starting α̂: 1 (S8), or the warm start on its best ray."""
    K64 = K.to(torch.float64)
    n = K64.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=K64.device)
    # Problems that are not bargains at all (non-finite entries, a non-positive diagonal: only
    # reachable unvalidated) are swapped for the identity so they cannot poison the batch, and
    # are reported as α = 1, residual = inf, converged = False. No host synchronisation.
    valid = torch.isfinite(K64).all(-1).all(-1) & (K64.diagonal(dim1=-2, dim2=-1) > 0).all(-1)
    K64 = torch.where(valid[..., None, None], K64, eye)
    Kh, d = normalise_gram(K64)
    batch = Kh.shape[:-1]
    if alpha0 is None:
        a = torch.ones(batch, dtype=torch.float64, device=Kh.device)
        return _Start(Kh, d, a, valid, eye)
    a0 = check_alpha0(alpha0, batch, check_values=check_values)
    a0 = a0.to(device=Kh.device, dtype=torch.float64).expand(batch)
    start_ok = (torch.isfinite(a0) & (a0 > 0)).all(-1, keepdim=True)
    a = torch.where(start_ok, a0 / d, 1.0)
    # Exact line search along the warm start's ray: f(s·a) = ½s²·aᵀK̂a − N log s + const is
    # minimal at s = √(N / aᵀK̂a) (S7: αᵀKα = N at the solution). This removes a wrong
    # overall scale, which damped Newton would otherwise shed one unit of α̂ per step.
    q = (a * (Kh @ a[..., None])[..., 0]).sum(-1, keepdim=True)
    scale = torch.where(q > 0, (n / q.clamp_min(torch.finfo(torch.float64).tiny)).sqrt(), 1.0)
    return _Start(Kh, d, (a * scale).clone(), valid, eye)


def _newton_step(Kh: Tensor, a: Tensor, r: Tensor, eye: Tensor) -> tuple[Tensor, Tensor]:
    """One damped Newton step in multiplicative form: returns (t·z, factorisation succeeded),
    so α̂_new = α̂∘(1 + t·z); the flag (...,) is False where a pivot of DK̂D + I is ≤ 0.

    Kh (..., N, N), a = α̂ (..., N), r = α̂∘(K̂α̂) − 1 (..., N), all float64; z solves
    (DK̂D + I) z = −r, t = 1/(1 + λ) above ``FULL_STEP_DECREMENT`` and 1 below, capped by the
    fraction-to-boundary rule. No host synchronisation."""
    M = a[..., :, None] * Kh * a[..., None, :] + eye  # D K̂ D + I, eigenvalues ≥ 1
    L, info = torch.linalg.cholesky_ex(M)  # info > 0: a pivot ≤ 0, M (so K) indefinite
    # Two triangular solves instead of torch.cholesky_solve: on CPU the latter reads a
    # status scalar back (aten::_local_scalar_dense, one host sync per step; measured in
    # results/step.md); the triangular solves do not.
    y = torch.linalg.solve_triangular(L, r[..., None], upper=False)
    z = -torch.linalg.solve_triangular(L.mT, y, upper=True)[..., 0]
    lam = (-(r * z).sum(-1)).clamp_min(0.0).sqrt()  # Newton decrement
    t = torch.where(lam > FULL_STEP_DECREMENT, 1.0 / (1.0 + lam), torch.ones_like(lam))
    # fraction to boundary on 1 + t z_i > 0
    neg = torch.where(z < 0, -FRACTION_TO_BOUNDARY / z, torch.full_like(z, math.inf))
    t = torch.minimum(t, neg.amin(-1))
    step: Tensor = t[..., None] * z
    return step, info == 0


def _solve_newton_fused(
    K: Tensor, tol: float, max_iter: int, alpha0: Tensor | None, fixed_iterations: int | None,
    kernel: Kernel,
) -> NashSolution:
    """``solve_newton`` through a fused kernel (:func:`namex_ref.nash.fused.newton_kernel` or
    :func:`namex_ref.nash.fused_gpu.newton_kernel`; same contract). Fixed budget: nothing is
    read back. Adaptive: the largest step count and the all-converged flag, in one read-back
    (on CUDA, the solve's one synchronisation)."""
    batch = K.shape[:-1]
    if alpha0 is not None:
        alpha0 = check_alpha0(alpha0, batch, check_values=fixed_iterations is None)
    n_steps = max_iter if fixed_iterations is None else fixed_iterations
    alpha, res, converged, steps = kernel(
        K, alpha0, n_steps, tol=tol, factor=ROUNDING_FACTOR, cap=ROUNDING_CAP,
        frac=FRACTION_TO_BOUNDARY, full_dec=FULL_STEP_DECREMENT)
    if fixed_iterations is not None:
        return NashSolution(alpha, res, converged, fixed_iterations, "newton",
                            "fixed_iterations")
    it, all_converged = 0, True
    if steps.numel():
        it, done = torch.stack((steps.max(), converged.all().to(steps.dtype))).tolist()
        all_converged = bool(done)
    status = "converged" if all_converged else "max_iter"
    return NashSolution(alpha, res, converged, int(it), "newton", status)
