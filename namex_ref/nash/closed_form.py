"""Two experts in closed form (S11, docs/math.md; derived in ``proofs/s11_two_experts.py``).

Batched, any device, float64; judged by the same convergence rule as Newton's
(:func:`~namex_ref.nash.problem.converged_mask` at :data:`~namex_ref.nash.newton.RESIDUAL_TOL`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from namex_ref.nash.newton import RESIDUAL_TOL
from namex_ref.nash.problem import converged_mask, scaled_residual
from namex_ref.nash.result import InfeasibleBargainError, NashSolution

__all__ = ["solve_closed_form"]


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
