"""Solvers for Kα = 1/α (S4–S5, docs/math.md): the one entry point that validates and dispatches.

All solvers share one problem definition (:mod:`namex_ref.nash.problem`), return a
:class:`~namex_ref.nash.result.NashSolution`, and agree on α up to their tolerances:

=========== ================================================================ ===============
method      what (module)                                                    batch / device
=========== ================================================================ ===============
newton      damped Newton on f(α) (S5), float64, fraction-to-boundary        any, any device
            (:mod:`~namex_ref.nash.newton`, fused CPU kernel in ``fused``)
closed_form N = 2 closed form (S11, :mod:`~namex_ref.nash.closed_form`)       any, any device
cvxpy       α-form ½‖Fα‖² − Σ log α_i with Clarabel — the trusted oracle      loop, CPU
primal      S3 in ΔE with Clarabel, α_i = 1/u_i (S7) — checks S4 itself      loop, CPU
ccp         Navon et al.'s sequential convex programme with ECOS (baseline)   loop, CPU
=========== ================================================================ ===============

The last three live in :mod:`namex_ref.nash.oracles` (cvxpy and scipy are imported there only).
The solvers and their constants are re-exported here, where they were defined before the
split, so ``from namex_ref.nash.solvers import solve_newton`` keeps working.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from namex_ref.nash import closed_form, newton, oracles
from namex_ref.nash.closed_form import *  # noqa: F403 - re-exported: closed_form.__all__
from namex_ref.nash.closed_form import solve_closed_form
from namex_ref.nash.newton import *  # noqa: F403 - re-exported: newton.__all__
from namex_ref.nash.newton import check_alpha0, solve_newton
from namex_ref.nash.oracles import *  # noqa: F403 - re-exported: oracles.__all__
from namex_ref.nash.oracles import solve_ccp, solve_cvxpy, solve_primal
from namex_ref.nash.problem import (
    ROUNDING_CAP,
    ROUNDING_FACTOR,
    as_gram_tensor,
    check_gram,
    raise_if_infeasible,
)
from namex_ref.nash.result import NashSolution

__all__ = [
    "ROUNDING_CAP",
    "ROUNDING_FACTOR",
    "SOLVERS",
    "SolverName",
    "solve_nash",
    *closed_form.__all__,
    *newton.__all__,
    *oracles.__all__,
]

SolverName = Literal["newton", "closed_form", "cvxpy", "primal", "ccp"]
SOLVERS: tuple[SolverName, ...] = ("newton", "closed_form", "cvxpy", "primal", "ccp")


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
        options["alpha0"] = check_alpha0(options["alpha0"], K64.shape[:-1], check_values=True)
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
