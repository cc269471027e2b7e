"""Solvers for Kα = 1/α (S4–S5, docs/math.md): one idea, so one module of ~560 lines.

All solvers share one problem definition (:mod:`namex_ref.nash.problem`), return a
:class:`~namex_ref.nash.result.NashSolution`, and agree on α up to their tolerances:

========== ================================================================ ===============
method     what                                                             batch / device
========== ================================================================ ===============
newton     damped Newton on f(α) (S5), float64, fraction-to-boundary        any, any device
closed_form N = 2 closed form (S11, ``proofs/s11_two_experts.py``)          any, any device
cvxpy      α-form ½‖Fα‖² − Σ log α_i with Clarabel — the trusted oracle      loop, CPU
primal     S3 in ΔE with Clarabel, α_i = 1/u_i (S7) — checks S4 itself      loop, CPU
ccp        Navon et al.'s sequential convex programme with ECOS (baseline)   loop, CPU
========== ================================================================ ===============

cvxpy and scipy are imported inside the oracle solvers only.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from namex_ref.nash import fused
from namex_ref.nash.problem import (
    ROUNDING_CAP,
    ROUNDING_FACTOR,
    as_gram_tensor,
    check_gram,
    converged_mask,
    normalise_gram,
    raise_if_infeasible,
    scaled_gradient,
    scaled_residual,
)
from namex_ref.nash.result import BargainInputError, InfeasibleBargainError, NashSolution

__all__ = [
    "CCP_MAX_STEPS",
    "RESIDUAL_TOL",
    "ROUNDING_CAP",
    "ROUNDING_FACTOR",
    "SOLVERS",
    "NewtonBackend",
    "SolverName",
    "solve_ccp",
    "solve_closed_form",
    "solve_cvxpy",
    "solve_nash",
    "solve_newton",
    "solve_primal",
]

SolverName = Literal["newton", "closed_form", "cvxpy", "primal", "ccp"]
#: How ``solve_newton`` runs its loop: batched torch operators, the fused CPU kernel, or the
#: fused kernel wherever it applies.
NewtonBackend = Literal["auto", "eager", "fused"]
SOLVERS: tuple[SolverName, ...] = ("newton", "closed_form", "cvxpy", "primal", "ccp")

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
#: Conic oracles (Clarabel) are asked for gaps/feasibility to 1e-12. Measured accuracy: median
#: residual ~1e-9 on well-conditioned K, but on singular or ill-conditioned K̂ (duplicate
#: experts, cond ~1e12) Clarabel stops "optimal_inaccurate" at residuals up to 3.8e-6
#: (hypothesis runs, tests/test_nash_solvers.py) — an interior-point limit on exponential cones.
ORACLE_SOLVER_TOL = 1e-12
#: Residual accepted from the conic oracles: 2.6× the largest shortfall measured above
#: (3.8e-6). By the residual rule α is still checked to √N·1e-5 ≈ 3e-5 relative, far tighter
#: than any difference between merging methods.
ORACLE_RESIDUAL_TOL = 1e-5
#: Navon et al.'s constants, kept as they are for a faithful baseline: at most 20 convex
#: solves, stop when ‖K̃α − 1/(α + 1e-10)‖ < 1e-3 or ‖Δα‖ < 1e-6, ECOS with 100 iterations.
CCP_MAX_STEPS = 20
CCP_RESIDUAL_STOP = 1e-3
CCP_STEP_STOP = 1e-6
CCP_RECIPROCAL_EPS = 1e-10
CCP_ECOS_MAX_ITERS = 100


# --------------------------------------------------------------------------------------------
# Newton (torch, batched, any device)
# --------------------------------------------------------------------------------------------


def _check_alpha0(alpha0: Any, batch: torch.Size, *, check_values: bool) -> Tensor:
    """Validate a warm start: a tensor broadcastable to the batch's (..., N), and (when
    ``check_values``; one host synchronisation) finite and > 0 everywhere."""
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
    has a pivot ≤ 0 or whose step becomes non-finite (an indefinite K; both backends test the
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
    CPU kernel (:mod:`namex_ref.nash.fused`; ~100× less dispatch at batch 1, tested against
    "eager" as its oracle to the residual rule); "auto" (default) takes "fused" whenever
    :func:`~namex_ref.nash.fused.fused_available` allows it (CPU tensors without autograd,
    numba installed, N ≤ ``FUSED_MAX_N``, no ``record_history``) and "eager" otherwise.

    Returns a :class:`NashSolution` with ``alpha`` (..., N) float64 in K's units.
    """
    if backend not in ("auto", "eager", "fused"):
        raise ValueError(f"backend must be 'auto', 'eager' or 'fused'; got {backend!r}")
    a0t = alpha0 if alpha0 is None or isinstance(alpha0, Tensor) else None
    use_fused = (
        not record_history
        and K.shape[-1] <= fused.FUSED_MAX_N
        and (alpha0 is None or a0t is not None)
        and fused.fused_available(K, a0t)
    )
    if backend == "fused" and not use_fused:
        raise ValueError(
            "backend='fused' needs CPU tensors without autograd, numba installed, "
            f"N ≤ {fused.FUSED_MAX_N} and record_history=False; use backend='auto' to fall "
            "back to the eager path."
        )
    if use_fused and backend != "eager":
        return _solve_newton_fused(K, tol, max_iter, alpha0, fixed_iterations)
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
    else:
        a0 = _check_alpha0(alpha0, batch, check_values=fixed_iterations is None)
        a0 = a0.to(device=Kh.device, dtype=torch.float64).expand(batch)
        start_ok = (torch.isfinite(a0) & (a0 > 0)).all(-1, keepdim=True)
        a = torch.where(start_ok, a0 / d, 1.0)
        # Exact line search along the warm start's ray: f(s·a) = ½s²·aᵀK̂a − N log s + const is
        # minimal at s = √(N / aᵀK̂a) (S7: αᵀKα = N at the solution). This removes a wrong
        # overall scale, which damped Newton would otherwise shed one unit of α̂ per step.
        q = (a * (Kh @ a[..., None])[..., 0]).sum(-1, keepdim=True)
        scale = torch.where(q > 0, (n / q.clamp_min(torch.finfo(torch.float64).tiny)).sqrt(), 1.0)
        a = (a * scale).clone()
    n_steps = max_iter if fixed_iterations is None else fixed_iterations
    history: list[Tensor] = []

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
        a_new = a * (1.0 + t[..., None] * z)
        # A failed factorisation or a non-finite step (only for an indefinite K, i.e.
        # unvalidated bad input) freezes the problem; it is reported as α = 1, residual inf
        # below, as the fused kernel does (its pivot test is the same condition).
        broken = broken | (info != 0) | ~(torch.isfinite(a_new) & (a_new > 0)).all(-1)
        a = torch.where((done | broken)[..., None], a, a_new)
        r = scaled_gradient(Kh, a)
        res = r.abs().amax(-1)
        if record_history:
            history.append(res)
    ok = valid & ~broken & torch.isfinite(res)
    alpha = torch.where(ok[..., None], a * d, 1.0)
    res = torch.where(ok, res, math.inf)
    converged = converged_mask(Kh, a, res, tol) & ok
    hist = torch.stack(history) if record_history and history else None
    if fixed_iterations is not None:
        status = "fixed_iterations"
    else:
        status = "converged" if bool(converged.all()) else "max_iter"
    return NashSolution(alpha, res, converged, it, "newton", status, hist)


def _solve_newton_fused(
    K: Tensor, tol: float, max_iter: int, alpha0: Tensor | None, fixed_iterations: int | None
) -> NashSolution:
    """``solve_newton`` through :func:`namex_ref.nash.fused.newton_kernel` (same contract)."""
    batch = K.shape[:-1]
    if alpha0 is not None:
        alpha0 = _check_alpha0(alpha0, batch, check_values=fixed_iterations is None)
    n_steps = max_iter if fixed_iterations is None else fixed_iterations
    alpha, res, converged, steps = fused.newton_kernel(
        K, alpha0, n_steps, tol=tol, factor=ROUNDING_FACTOR, cap=ROUNDING_CAP,
        frac=FRACTION_TO_BOUNDARY, full_dec=FULL_STEP_DECREMENT)
    if fixed_iterations is not None:
        return NashSolution(alpha, res, converged, fixed_iterations, "newton",
                            "fixed_iterations")
    it = int(steps.max()) if steps.numel() else 0
    status = "converged" if bool(converged.all()) else "max_iter"
    return NashSolution(alpha, res, converged, it, "newton", status)


# --------------------------------------------------------------------------------------------
# Closed form, N = 2 (S11)
# --------------------------------------------------------------------------------------------


def solve_closed_form(K: Tensor) -> NashSolution:
    """Two experts (S11): α_i = 1 / √(K_ii (1 + ρ)), ρ = K_12 / √(K_11 K_22).

    Derived in ``proofs/s11_two_experts.py``. K: (..., 2, 2) float. A bargain exists iff
    ρ > −1 (the experts are not anti-parallel, S6); ρ ≤ −1 + 1e-12 raises
    :class:`InfeasibleBargainError` with certificate v ∝ (1/‖τ_1‖, 1/‖τ_2‖).
    """
    if K.shape[-1] != 2:
        raise ValueError(f"closed_form solves N = 2 only (S11); got N = {K.shape[-1]}.")
    K64 = K.to(torch.float64)
    k11, k22, k12 = K64[..., 0, 0], K64[..., 1, 1], K64[..., 0, 1]
    rho = k12 / (k11 * k22).sqrt()  # NaN for a zero/non-finite diagonal: caught by solve_nash
    bad = rho <= -1.0 + 1e-12
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
        v = torch.stack([k11[idx].rsqrt(), k22[idx].rsqrt()])
        raise InfeasibleBargainError(
            f"No Nash bargain exists{f' (problem {idx})' if idx else ''}: the two experts are "
            f"anti-parallel (cosine {rho[idx].item():.12f}), so no update improves both (S6, S11).",
            certificate=v / v.sum(),
            batch_index=idx,
            distance=float((0.5 * (1.0 + rho[idx])).clamp_min(0.0)),  # ‖(τ̂_1 + τ̂_2)/2‖²
        )
    alpha = torch.stack([k11, k22], -1).mul(1.0 + rho[..., None]).rsqrt()
    res = scaled_residual(K64, alpha)
    converged = converged_mask(K64, alpha, res, RESIDUAL_TOL)  # the same rule as Newton's
    return NashSolution(alpha, res, converged, 0, "closed_form", "closed_form")


# --------------------------------------------------------------------------------------------
# cvxpy oracles (CPU, one problem at a time)
# --------------------------------------------------------------------------------------------


def _cvxpy() -> Any:
    """cvxpy, imported lazily (oracle-only dependency) and typed as Any (partial stubs)."""
    return importlib.import_module("cvxpy")


def _solve_clarabel(prob: Any) -> None:
    """Solve with Clarabel at the oracle tolerance. "optimal_inaccurate" warnings are silenced
    because the status is kept in ``NashSolution.status`` and the residual is always checked."""
    cp = _cvxpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=ORACLE_SOLVER_TOL,
                   tol_gap_rel=ORACLE_SOLVER_TOL, tol_feas=ORACLE_SOLVER_TOL)


def _factor(Kh: Tensor) -> Tensor:
    """F with FᵀF = K̂ (N×N), from the eigendecomposition (works for singular K̂)."""
    w, V = torch.linalg.eigh(Kh)
    F: Tensor = w.clamp_min(0.0).sqrt()[:, None] * V.T
    return F


def _loop(
    K: Tensor, one: Callable[[Tensor, tuple[int, ...]], tuple[Tensor, int, str]], method: str
) -> NashSolution:
    """Apply a single-problem oracle over the batch dims of K (..., N, N)."""
    K64 = K.to(torch.float64).cpu()
    batch = K64.shape[:-2]
    flat = K64.reshape(-1, *K64.shape[-2:])
    alphas, iters, statuses = [], 0, set()
    for b in range(flat.shape[0]):
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(b), batch)) if batch else ()
        a, nit, st = one(flat[b], idx)
        alphas.append(a)
        iters = max(iters, nit)
        statuses.add(st)
    alpha = torch.stack(alphas).reshape(*batch, K64.shape[-1]).to(K.device)
    res = scaled_residual(K.to(torch.float64), alpha)
    status = "/".join(sorted(statuses))
    K64c = K.to(torch.float64)
    converged = converged_mask(K64c, alpha.to(torch.float64), res, ORACLE_RESIDUAL_TOL)
    return NashSolution(alpha, res, converged, iters, method, status)


def _conic_status_check(status: str, K: Tensor, idx: tuple[int, ...], method: str) -> None:
    """Map a non-optimal conic status to the S6 certificate or a clear error."""
    if status in ("optimal", "optimal_inaccurate"):
        return
    raise_if_infeasible(K, idx)  # raises when no bargain exists
    raise RuntimeError(f"{method}: solver returned status {status!r} on a feasible bargain {idx}")


def solve_cvxpy(K: Tensor) -> NashSolution:
    """Trusted slow oracle: min ½‖Fα̂‖² − Σ log α̂_i (S5) over α̂ > 0 with Clarabel; α = Dα̂.

    K: (..., N, N) float, solved one problem at a time on CPU in float64. F is a square factor of
    the unit-diagonal K̂ = FᵀF (eigendecomposition, so singular K̂ is fine). Unbounded or
    infeasible solver statuses are turned into :class:`InfeasibleBargainError` via the S6 LP.
    """
    cp = _cvxpy()

    def one(Kb: Tensor, idx: tuple[int, ...]) -> tuple[Tensor, int, str]:
        Kh, d = normalise_gram(Kb)
        F = _factor(Kh).numpy()
        a = cp.Variable(Kb.shape[0])
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(F @ a) - cp.sum(cp.log(a))))
        _solve_clarabel(prob)
        _conic_status_check(prob.status, Kb, idx, "cvxpy")
        nit = int(prob.solver_stats.num_iters or 0)
        return torch.from_numpy(a.value).clamp_min(1e-300) * d, nit, str(prob.status)

    return _loop(K, one, "cvxpy")


def solve_primal(K: Tensor, G: Tensor | None = None) -> NashSolution:
    """S3 itself: max Σ log(τ̂_iᵀΔE) s.t. ‖ΔE‖ ≤ √N with Clarabel; then α_i = 1/(‖τ_i‖ u_i).

    K: (N, N) (or batched) float. ``G``: optional (d, N) domain vectors as columns for a single
    problem (small d); without it, a square factor of K̂ stands in for Ĝ (by the orthogonal
    invariance of S9 the bargain depends on K only). Columns are normalised to unit length
    (S9 rescaling) before solving. With ε = √N, ΔE* = Gα and α_i = 1/u_i (S4, S7).
    """
    cp = _cvxpy()

    def one(Kb: Tensor, idx: tuple[int, ...]) -> tuple[Tensor, int, str]:
        Kh, d = normalise_gram(Kb)
        n = Kb.shape[0]
        if G is not None and not idx:
            Gh = (G.to(torch.float64).cpu() * d[None, :]).numpy()  # unit columns
        else:
            Gh = _factor(Kh).numpy()
        x = cp.Variable(Gh.shape[0])
        u = Gh.T @ x
        prob = cp.Problem(cp.Maximize(cp.sum(cp.log(u))), [cp.norm(x, 2) <= math.sqrt(n)])
        _solve_clarabel(prob)
        _conic_status_check(prob.status, Kb, idx, "primal")
        u_val = torch.from_numpy(Gh.T @ x.value)
        nit = int(prob.solver_stats.num_iters or 0)
        return u_val.clamp_min(1e-300).reciprocal() * d, nit, str(prob.status)

    return _loop(K, one, "primal")


@functools.lru_cache(maxsize=32)
def _ccp_problem(n: int) -> tuple[Any, Any, Any, Any, Any]:
    """Navon et al.'s convex sub-problem for N = n, built once from cvxpy Parameters.

    Variable α ≥ 0; parameters K̃ = K/c, α_prev, c = ‖K‖_F. Sub-problem:
        min Σ_i (K̃α)_i + φ_lin(α)/c  s.t.  −log(α_i c) − log((K̃α)_i) ≤ 0   (i.e. α_i(Kα)_i ≥ 1)
    with φ_lin(α) = (1/α_prev + K̃ (1/(K̃α_prev)))ᵀ(α − α_prev) the linearisation of
    Σ log α_i + log(K̃α)_i at α_prev. Not DPP: cvxpy re-canonicalises at every solve.
    """
    import numpy as np

    cp = _cvxpy()

    alpha = cp.Variable(n, nonneg=True)
    K_t = cp.Parameter((n, n), value=np.eye(n))
    prev = cp.Parameter(n, value=np.ones(n))
    c = cp.Parameter(1, value=np.ones(1))
    K_prev = K_t @ prev
    phi_tag = 1 / prev + (1 / K_prev) @ K_t
    phi_lin = phi_tag @ (alpha - prev)
    K_alpha = K_t @ alpha
    cons = [-cp.log(alpha[i] * c) - cp.log(K_alpha[i]) <= 0 for i in range(n)]
    prob = cp.Problem(cp.Minimize(cp.sum(K_alpha) + phi_lin / c), cons)
    return prob, alpha, K_t, prev, c


def solve_ccp(
    K: Tensor, *, max_steps: int = CCP_MAX_STEPS, alpha0: Tensor | None = None,
    record_history: bool = False,
) -> NashSolution:
    """Navon et al.'s sequential convex iteration (Nash-MTL), the paper's solver (baseline).

    K: (..., N, N) float; one problem at a time on CPU with ECOS (warm start, 100 iterations).
    Starts at α = 1 (Nash-MTL's first call) or ``alpha0``; at most 20 convex solves; stops when
    ‖K̃α − 1/(α + 1e-10)‖ < 1e-3 or ‖α_new − α_prev‖ < 1e-6, returning the iterate at which the
    test fired, as Nash-MTL does. ``converged`` is True when that rule fired within ``max_steps``.

    Note (faithfulness): the residual test uses K̃ = K/‖K‖_F while the constraint uses K, so it
    is satisfied at the true solution only when ‖K‖_F ≈ 1; in practice the step rule stops the
    iteration. A solver error keeps the previous α (as Nash-MTL's ``except``) but is counted in
    ``status`` instead of being hidden. The scale-free ``residual`` reports what was reached.
    """
    import numpy as np

    cp = _cvxpy()

    hist_all: list[list[float]] = []
    stopped_flags: list[bool] = []  # per problem: did Navon et al.'s stopping rule fire?

    def one(Kb: Tensor, idx: tuple[int, ...]) -> tuple[Tensor, int, str]:
        n = Kb.shape[0]
        prob, alpha, K_t, prev, c = _ccp_problem(n)
        Knp = Kb.numpy()
        cval = float(np.linalg.norm(Knp))
        K_t.value = Knp / cval
        c.value = np.array([cval])
        if alpha0 is None:
            a_t = np.ones(n)
        else:  # this problem's own row of a warm start that broadcasts to the batch (..., N)
            a0 = alpha0.to(torch.float64).cpu().expand(*K.shape[:-1])
            a_t = a0[idx].numpy().copy()
        stopped, errors, steps, status = False, 0, 0, "optimal"
        hist: list[float] = []
        for steps in range(1, max_steps + 1):  # noqa: B007 - `steps` is reported
            alpha.value = a_t
            prev.value = a_t
            try:
                with warnings.catch_warnings():  # non-DPP re-canonicalisation: documented above
                    warnings.simplefilter("ignore", UserWarning)
                    prob.solve(solver=cp.ECOS, warm_start=True, max_iters=CCP_ECOS_MAX_ITERS)
                status = str(prob.status)
            except cp.error.SolverError:
                errors += 1
                alpha.value = a_t
                status = "solver_error"
            new = alpha.value
            if new is None:  # ECOS gave no point: Nash-MTL's rule stops and keeps α_t
                stopped, status = True, f"{status}:no_solution"
                break
            hist.append(float(scaled_residual(Kb, torch.from_numpy(np.abs(new) + 1e-300))))
            if ( np.linalg.norm(Knp / cval @ a_t - 1 / (a_t + CCP_RECIPROCAL_EPS))
                < CCP_RESIDUAL_STOP
                or np.linalg.norm(new - a_t) < CCP_STEP_STOP
            ):
                stopped = True
                break
            a_t = np.abs(new)
        hist_all.append(hist)
        stopped_flags.append(stopped)
        tag = ("stopped" if stopped else "max_steps") + f":{status}"
        if errors:
            tag += f":solver_errors={errors}"
        out = torch.from_numpy(np.clip(a_t, 1e-300, None))
        return out, steps, tag

    sol = _loop(K, one, "ccp")
    stopped = torch.tensor(stopped_flags).reshape(sol.converged.shape).to(sol.converged.device)
    hist = None
    if record_history and len(hist_all) == 1:
        hist = torch.tensor(hist_all[0], dtype=torch.float64)
    converged = sol.converged & stopped
    return NashSolution(
        sol.alpha, sol.residual, converged, sol.iterations, "ccp", sol.status, hist
    )


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def solve_nash(
    K: Any,
    *,
    method: SolverName = "newton",
    validate: bool = True,
    **options: Any,
) -> NashSolution:
    """Solve Kα = 1/α (S4) for a batch of Gram matrices with the chosen solver.

    Args:
        K: array-like (numpy, torch, lists) of shape (..., N, N), N ≥ 2: K = GᵀG of the domain
            vectors (S2). Any float dtype; the solve runs in float64. Batched for every method
            (the oracles loop on CPU).
        method: one of ``SOLVERS``: "newton" (default), "closed_form" (N = 2), "cvxpy",
            "primal", "ccp".
        validate: check shape, finiteness, symmetry, PSD and zero experts first (host
            synchronisation); ``False`` skips it (training loops with ``fixed_iterations``).
        options: passed to the solver (e.g. ``tol``, ``max_iter``, ``alpha0``,
            ``fixed_iterations``, ``record_history`` for Newton; ``G`` for primal).

    Returns:
        NashSolution with ``alpha`` (..., N) float64 on K's device.

    Raises:
        BargainInputError: invalid K (message names the expert / entry and what to do).
        DegenerateExpertError: an expert with τ_i = 0.
        InfeasibleBargainError: no bargain exists (S6); ``.certificate`` holds v.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {SOLVERS}")
    Kt = as_gram_tensor(K)
    K64 = check_gram(Kt) if validate else Kt.to(torch.float64)
    solver: dict[str, Callable[..., NashSolution]] = {
        "newton": solve_newton, "closed_form": solve_closed_form, "cvxpy": solve_cvxpy,
        "primal": solve_primal, "ccp": solve_ccp,
    }
    if validate and options.get("alpha0") is not None:
        options["alpha0"] = _check_alpha0(options["alpha0"], K64.shape[:-1], check_values=True)
    sol = solver[method](K64, **options)
    if validate and not sol.all_converged:
        _certify_unconverged(K64, sol)
    return _never_nan(sol)


def _never_nan(sol: NashSolution) -> NashSolution:
    """The last guard of every solver path (no host synchronisation): a problem whose α is not
    finite and positive is returned as α = 1, residual = inf, converged = False."""
    ok = (torch.isfinite(sol.alpha) & (sol.alpha > 0)).all(-1)
    return dataclasses.replace(
        sol,
        alpha=torch.where(ok[..., None], sol.alpha, torch.ones_like(sol.alpha)),
        residual=torch.where(ok, sol.residual, math.inf),
        converged=sol.converged & ok,
    )


def _certify_unconverged(K: Tensor, sol: NashSolution) -> None:
    """Run the S6 LP on every unconverged problem and raise with its certificate when no bargain
    exists. Newton converges on every feasible problem (self-concordance), so for Newton an
    unconverged problem is infeasible or nearly so; the conic oracles may instead report
    "optimal" on an infeasible problem with a meaningless α, which this catches too."""
    for row in (~sol.converged).nonzero().tolist():
        idx = tuple(int(i) for i in row)
        raise_if_infeasible(K[idx].cpu(), idx)
