r"""Cross-layer tracking metric: how far the propagated base expert is from its α-weighted target.

With α and the experts of layer l frozen, the bargained update (S16) is linear in the base:

    ΔE^(l) = Σ_i α_i (E_i^(l) − E_m^(l)) = c (Ē_α^(l) − E_m^(l)),
    c = Σ_i α_i,   Ē_α^(l) = Σ_i α_i E_i^(l) / Σ_i α_i,                                  (T1)

so Ē_α^(l) is the fixed point of that layer's linearisation, the H = cI case of S19. The metric
(ours) of a propagation is, per MoE layer l,

    err_l = ‖E_m^(l) − Ē_α^(l)‖ / ‖Ē_α^(l)‖,                                              (T2)

with every weight matrix of an expert concatenated into one vector. ``studies/crosslayer.py``
sweeps it over the momentum coefficient β (S17); :func:`namex_ref.merging.plan.propagate`
produces the bases and α it is applied to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["alpha_target", "tracking_errors"]


def alpha_target(experts: Sequence[Tensor], alpha: Tensor) -> list[Tensor]:
    """Ē_α = Σ_i α_i E_i / Σ_i α_i per weight matrix (T1), the fixed point of H = cI (S16, S19).

    experts: per matrix (N, *P_m), any real floating dtype; alpha: (N,) finite, > 0. Returns per
    matrix (*P_m) in the experts' dtype (the weights α/Σα are formed in float64).
    """
    a = alpha.detach().to(torch.float64)
    if a.ndim != 1 or a.shape[0] != experts[0].shape[0]:
        raise ValueError(
            f"alpha must have shape ({experts[0].shape[0]},), got {tuple(alpha.shape)}"
        )
    if not bool(torch.isfinite(a).all()) or not bool((a > 0).all()):
        raise ValueError(f"alpha must be finite and > 0, got {a.tolist()}")
    w = a / a.sum()
    return [torch.tensordot(w.to(E.dtype), E.detach(), dims=1) for E in experts]


def _flat(mats: Sequence[Tensor]) -> Tensor:
    """The matrices of one expert as one float64 vector (d,)."""
    return torch.cat([m.detach().reshape(-1).to(torch.float64) for m in mats])


def tracking_errors(
    bases: Sequence[Sequence[Tensor]],
    experts: Sequence[Sequence[Tensor]],
    alphas: Tensor,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(abs_error, rel_error, target_norm), each (L,) float64: (T2) at each of L layers.

    bases: per layer the base E_m^(l), per matrix (*P_m); experts: per layer, per matrix
    (N, *P_m); alphas: (L, N) the α in force at each layer (S16). abs = ‖E_m − Ē_α‖,
    rel = abs / ‖Ē_α‖, norms over all matrices together, in float64.
    """
    L = len(experts)
    if len(bases) != L or alphas.shape[0] != L:
        raise ValueError(
            f"need one base and one α row per layer: {len(bases)} bases, {alphas.shape[0]} α "
            f"rows, {L} layers"
        )
    abs_err = np.empty(L)
    tnorm = np.empty(L)
    for l in range(L):
        target = _flat(alpha_target(experts[l], alphas[l]))
        abs_err[l] = float(torch.linalg.vector_norm(_flat(bases[l]) - target))
        tnorm[l] = float(torch.linalg.vector_norm(target))
    return abs_err, abs_err / tnorm, tnorm
