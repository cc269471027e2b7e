"""The slow oracle solvers of Kα = 1/α (S3–S5, docs/math.md): cvxpy (conic), primal, CCP.

One problem at a time on the CPU in float64, each returning a
:class:`~namex_ref.nash.result.NashSolution` judged by the shared convergence rule at
:data:`ORACLE_RESIDUAL_TOL`:

========== ================================================================ ===============
method     what                                                             batch / device
========== ================================================================ ===============
cvxpy      α-form ½‖Fα‖² − Σ log α_i with Clarabel — the trusted oracle      loop, CPU
primal     S3 in ΔE with Clarabel, α_i = 1/u_i (S7) — checks S4 itself      loop, CPU
ccp        Navon et al.'s sequential convex programme with ECOS (baseline)   loop, CPU
========== ================================================================ ===============

cvxpy is imported inside these solvers only (an oracle-only dependency).
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from namex_ref.nash.problem import (
    converged_mask,
    normalise_gram,
    raise_if_infeasible,
    scaled_residual,
)
from namex_ref.nash.result import NashSolution

__all__ = [
    "CCP_ECOS_MAX_ITERS",
    "CCP_MAX_STEPS",
    "CCP_RECIPROCAL_EPS",
    "CCP_RESIDUAL_STOP",
    "CCP_STEP_STOP",
    "ORACLE_RESIDUAL_TOL",
    "ORACLE_SOLVER_TOL",
    "solve_ccp",
    "solve_cvxpy",
    "solve_primal",
]

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
#: Navon et al.'s residual stop: ‖K̃α − 1/(α + ε)‖ below this, with K̃ = K/‖K‖_F.
CCP_RESIDUAL_STOP = 1e-3
#: Navon et al.'s step stop: ‖α_new − α_prev‖ below this.
CCP_STEP_STOP = 1e-6
#: The ε of Navon et al.'s 1/(α + ε) in the residual stop.
CCP_RECIPROCAL_EPS = 1e-10
#: ECOS's iteration limit per convex solve (Navon et al.'s setting).
CCP_ECOS_MAX_ITERS = 100


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
