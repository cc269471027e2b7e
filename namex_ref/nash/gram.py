"""Domain vectors and Gram matrices (SPEC S1–S2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from namex_ref.nash.result import BargainInputError

__all__ = ["Granularity", "domain_vectors", "gram_matrix", "stack_domain_vectors"]

Granularity = Literal["expert", "matrix"]


def domain_vectors(experts: Tensor, base: Tensor) -> Tensor:
    """S1: τ_i = E_i − E_m.

    experts: (N, *P) stacked expert parameters; base: (*P) the base expert. Returns (N, *P).
    """
    if experts.shape[1:] != base.shape:
        raise BargainInputError(
            f"base expert shape {tuple(base.shape)} does not match the experts' shape "
            f"{tuple(experts.shape)}; expected experts = [N, *base.shape]."
        )
    return experts - base


def stack_domain_vectors(taus: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Normalise the accepted forms of τ to a list of (N, d_m) matrices, one per weight matrix.

    ``taus``: a (N, d) tensor (already flattened experts), or a sequence of per-matrix tensors
    of shape (N, *P_m) — the m-th weight matrix of all N experts. Raises
    :class:`BargainInputError` on an empty input, N mismatch between matrices or a 1-D tensor.
    """
    mats = [taus] if isinstance(taus, Tensor) else list(taus)
    if not mats:
        raise BargainInputError("no domain vectors given: pass an [N, d] tensor or a list of "
                                "per-matrix [N, ...] tensors.")
    out = []
    n = None
    for m, t in enumerate(mats):
        if not isinstance(t, Tensor):
            raise BargainInputError(f"domain vectors entry {m} is {type(t).__name__}, not a Tensor")
        if t.ndim < 2:
            raise BargainInputError(
                f"domain vectors entry {m} has shape {tuple(t.shape)}; expected [N, ...] with the "
                "expert index first (N ≥ 2)."
            )
        if n is None:
            n = t.shape[0]
        elif t.shape[0] != n:
            raise BargainInputError(
                f"weight matrix {m} has {t.shape[0]} experts but matrix 0 has {n}; every entry "
                "must stack the same experts along dim 0."
            )
        if t.is_complex() or not t.is_floating_point():
            raise BargainInputError(f"domain vectors entry {m} has dtype {t.dtype}; use floats.")
        out.append(t.reshape(t.shape[0], -1))
    return out


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32 (bf16/fp16 matmuls would
    round K to 8–11 bits; float32 keeps Gram entries to ~1e-7 relative)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_matrix(
    taus: Tensor | Sequence[Tensor], *, granularity: Granularity = "expert"
) -> Tensor:
    """S2: K = GᵀG, K_ij = ⟨τ_i, τ_j⟩ over flattened parameters.

    taus: (N, d) or a sequence of per-matrix (N, *P_m) tensors (see
    :func:`stack_domain_vectors`). ``granularity="expert"`` (default): one bargain per expert
    across all its matrices, K = Σ_m K_m (N, N) — equal to the Gram matrix of the concatenated
    vectors. ``"matrix"``: one bargain per weight matrix, K of shape (M, N, N).
    Accumulates in float32 (float64 for float64 input).
    """
    mats = stack_domain_vectors(taus)
    grams = []
    for t in mats:
        t = t.to(_accumulate_dtype(t.dtype))
        grams.append(t @ t.T)
    if granularity == "expert":
        K = grams[0]
        for g in grams[1:]:
            K = K + g.to(K.dtype)
        return K
    if granularity == "matrix":
        return torch.stack([g.to(grams[0].dtype) for g in grams])
    raise ValueError(f"granularity must be 'expert' or 'matrix'; got {granularity!r}")
