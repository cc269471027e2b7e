"""User-facing bargain over domain vectors: α, ΔE and utilities (S1–S4, S7; docs/math.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from namex_ref.checks import require_real
from namex_ref.nash.gram import Granularity, gram_matrix, stack_domain_vectors
from namex_ref.nash.result import (
    BargainInputError,
    DegenerateExpertError,
    InfeasibleBargainError,
    NashConvergenceError,
    NashSolution,
)
from namex_ref.nash.solvers import SolverName, solve_nash

__all__ = ["BargainResult", "nash_bargain"]


@dataclass(frozen=True)
class BargainResult:
    """A solved bargain over N experts.

    Attributes:
        alpha: (N,) for ``granularity="expert"``, (M, N) for ``"matrix"``; float64.
        delta: ΔE = (ε/√N) Σ_i α_i τ_i, one tensor per weight matrix, each shaped like the input
            matrix without its expert dim (P_m), in the dtype of the input.
        utilities: u_i = τ_iᵀΔE, (N,) or (M, N), float64 — computed from τ and ΔE directly, so
            α_i u_i = ε/√N (S7: = 1 for the default radius) is an independent check.
        residual: scale-free residual max_i |α_i(Kα)_i − 1| of the solve; () or (M,).
        solution: the full :class:`NashSolution`.
    """

    alpha: Tensor
    delta: list[Tensor]
    utilities: Tensor
    residual: Tensor
    solution: NashSolution


def nash_bargain(
    taus: Tensor | Sequence[Tensor],
    *,
    method: SolverName = "newton",
    granularity: Granularity = "expert",
    radius: float | None = None,
    require_converged: bool = True,
    **options: Any,
) -> BargainResult:
    """Nash bargaining over domain vectors (S3–S4): α with Kα = 1/α and ΔE = (ε/√N)·Gα.

    Args:
        taus: (N, d) tensor of flattened domain vectors τ_i = E_i − E_m, or a sequence of
            per-weight-matrix tensors (N, *P_m) of the same N experts.
        method: solver (see :data:`namex_ref.nash.solvers.SOLVERS`).
        granularity: "expert" — one α for all matrices of an expert (K = Σ_m K_m, S2);
            "matrix" — one bargain per weight matrix.
        radius: ball radius ε of S3; ``None`` (our convention, default) gives the unscaled S4
            solution ΔE = Gα with ‖ΔE‖ = √N.
        require_converged: raise :class:`NashConvergenceError` if the solver stopped short of
            its tolerance (default); ``False`` returns the result with ``solution.converged``.
        options: forwarded to the solver.

    Raises:
        BargainInputError, DegenerateExpertError (naming the expert with τ_i = 0, or with
        NaN/Inf), InfeasibleBargainError (S6, with a certificate), NashConvergenceError.
    """
    mats = stack_domain_vectors(taus)
    n = mats[0].shape[0]
    # N < 2, asymmetry and PSD are checked once, by check_gram inside solve_nash.
    for m, t in enumerate(mats):
        finite = torch.isfinite(t).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            raise BargainInputError(
                f"domain vector of expert {i} (weight matrix {m}) contains NaN/Inf; check that "
                "expert's parameters and the base expert."
            )
    K = gram_matrix(mats, granularity=granularity)
    if not bool(torch.isfinite(K).all()):
        biggest = max(float(t.abs().max()) for t in mats)
        raise BargainInputError(
            f"the Gram matrix K = GᵀG overflowed in {K.dtype} (the domain vectors are finite, "
            f"but their largest entry is {biggest:.3g}, so ‖τ_i‖² exceeds "
            f"{torch.finfo(K.dtype).max:.3g}). Rescale the domain vectors (α scales inversely, "
            "S9) or pass them in float64."
        )
    diag = K.diagonal(dim1=-2, dim2=-1)
    if bool((diag == 0).any()):
        idx = (diag == 0).nonzero()[0].tolist()
        i = idx[-1]
        own = mats if granularity == "expert" else [mats[idx[0]]]  # the matrices K_ii sums
        if any(bool((t[i] != 0).any()) for t in own):
            norm = max(float(t[i].abs().max()) for t in own)
            raise BargainInputError(
                f"‖τ_{i}‖² underflowed to 0 in {K.dtype}: expert {i}'s domain vector is not "
                f"zero (largest entry {norm:.3g}) but its squared norm is below "
                f"{torch.finfo(K.dtype).tiny:.3g}. Rescale the domain vectors (α scales "
                "inversely, S9) or pass them in float64."
            )
        cert = torch.zeros(n, dtype=torch.float64)
        cert[i] = 1.0
        where = f" in weight matrix {idx[0]}" if granularity == "matrix" else ""
        raise DegenerateExpertError(
            f"expert {i} equals the base expert (τ_{i} = 0{where}): its utility is 0 for every "
            "update, so no bargain exists (S6). Initialise experts independently of the base, "
            "or use the merging layer's 'ridge'/'uniform' policy.",
            certificate=cert,
        )
    if method == "primal" and granularity == "expert" and "G" not in options:
        options["G"] = torch.cat(mats, dim=1).T  # (d, N): the real τ, not a factor of K
    d = sum(t.shape[1] for t in mats)
    try:
        sol = solve_nash(K, method=method, **options)
    except InfeasibleBargainError as err:
        if n > d:  # more experts than dimensions: often τ given as (d, N)
            err.args = (
                f"{err.args[0]} Note: τ has N = {n} experts (rows) but only d = {d} parameters "
                f"each; if the experts are the columns, pass the transpose (shape ({d}, {n}) → "
                f"({n}, {d})).",
                *err.args[1:],
            )
        raise
    if require_converged and not sol.all_converged:
        raise NashConvergenceError(
            f"{method} stopped at residual {float(sol.residual.max()):.3e} after "
            f"{sol.iterations} iterations ({sol.status}); pass require_converged=False to "
            "inspect it, or use method='newton'."
        )
    if radius is not None:
        radius = require_real("radius", radius, low=0, low_open=True)
    scale = 1.0 if radius is None else radius / math.sqrt(n)
    alpha = sol.alpha  # (N,) or (M, N)
    deltas: list[Tensor] = []
    u = torch.zeros_like(alpha)
    for m, t in enumerate(mats):
        a = alpha if granularity == "expert" else alpha[m]
        dm = scale * (a.to(t.device, torch.float64) @ t.to(torch.float64))  # (d_m,)
        um = t.to(torch.float64) @ dm  # (N,) contribution of matrix m to u_i
        if granularity == "expert":
            u = u + um
        else:
            u[m] = um
        shape = taus[m].shape[1:] if not isinstance(taus, Tensor) else taus.shape[1:]
        deltas.append(dm.to(t.dtype).reshape(shape))
    return BargainResult(alpha, deltas, u, sol.residual, sol)
