"""Domain vectors and Gram matrices (S1–S2, docs/math.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import torch
from torch import Tensor

from namex_ref.checks import is_int
from namex_ref.nash import gram_cuda
from namex_ref.nash.result import BargainInputError

__all__ = [
    "HALF_CHUNK_ELEMENTS",
    "Granularity",
    "domain_vectors",
    "gram_matrix",
    "off_diagonal_mean",
    "stack_domain_vectors",
]

Granularity = Literal["expert", "matrix"]


@overload
def domain_vectors(experts: Tensor, base: Tensor) -> Tensor: ...


@overload
def domain_vectors(experts: Sequence[Tensor], base: Sequence[Tensor]) -> list[Tensor]: ...


def domain_vectors(
    experts: Tensor | Sequence[Tensor], base: Tensor | Sequence[Tensor]
) -> Tensor | list[Tensor]:
    """S1: τ_i = E_i − E_m.

    experts: (N, *P) stacked expert parameters and base (*P), or — for experts made of several
    weight matrices — a sequence of per-matrix (N, *P_m) tensors and a sequence of the base's
    (*P_m) matrices. Returns (N, *P), or the list of per-matrix (N, *P_m) domain vectors.
    """
    if isinstance(experts, Tensor) != isinstance(base, Tensor):
        raise BargainInputError(
            "experts and base must both be tensors or both be sequences of per-matrix tensors."
        )
    if isinstance(experts, Tensor):
        assert isinstance(base, Tensor)
        _check_base(experts, base, None)
        return experts - base
    assert not isinstance(base, Tensor)
    if len(experts) != len(base):
        raise BargainInputError(
            f"{len(experts)} expert matrices but {len(base)} base matrices; pass one base matrix "
            "per weight matrix of the experts."
        )
    for m, (E, b) in enumerate(zip(experts, base, strict=True)):
        _check_base(E, b, m)
    return [E - b for E, b in zip(experts, base, strict=True)]


def _check_base(experts: Tensor, base: Tensor, m: int | None) -> None:
    if experts.shape[1:] != base.shape:
        where = "" if m is None else f" (weight matrix {m})"
        raise BargainInputError(
            f"base expert shape {tuple(base.shape)} does not match the experts' shape "
            f"{tuple(experts.shape)}{where}; expected experts = [N, *base.shape]."
        )


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
        if t.numel() == 0:
            raise BargainInputError(
                f"domain vectors entry {m} is empty (shape {tuple(t.shape)}): a bargain needs "
                "N ≥ 2 experts with at least one parameter each."
            )
        out.append(t.reshape(t.shape[0], -1))
    return out


#: bfloat16/float16 τ is converted to float32 in chunks of this many elements (a 1 MiB float32
#: scratch buffer, cache-resident) and each chunk's Gram is added to K: K is accumulated in
#: float32 without a float32 copy of τ (which would cost twice τ's size in memory traffic and
#: allocation). torch has no CPU matmul with a float32 output for half inputs (aten::mm.dtype
#: is CUDA-only in torch 2.13).
HALF_CHUNK_ELEMENTS = 2**18


def _half_gram(t: Tensor) -> Tensor:
    """K = t tᵀ in float32 for a bfloat16/float16 t (..., N, d), converted chunk by chunk along
    d. The sum of the chunks' float32 Grams is a d-term float32 summation like the one-shot
    product, so the same error bound (γ_d·max K_ii, tests/test_nash_gram.py) holds."""
    *lead, n, d = t.shape
    rows = n
    for b in lead:
        rows *= b
    w = max(1, min(d, HALF_CHUNK_ELEMENTS // max(rows, 1)))
    K = torch.zeros((*lead, n, n), dtype=torch.float32, device=t.device)
    buf = torch.empty((*lead, n, w), dtype=torch.float32, device=t.device)
    for s in range(0, d, w):
        c = buf[..., : min(w, d - s)]
        c.copy_(t[..., s : s + w])
        if c.ndim == 2:
            K.addmm_(c, c.T)
        else:
            K.add_(c @ c.mT)
    return K


def _gram_of(t: Tensor) -> Tensor:
    """t tᵀ over the last dim of t (..., N, d), accumulated in ``_accumulate_dtype``, also
    under autocast (which would otherwise round a float32 product's inputs to 8–11 bits). CUDA
    tensors take :mod:`namex_ref.nash.gram_cuda` (split-K, half inputs straight into a GEMM
    with a float32 output); the CPU path below is unchanged."""
    with torch.autocast(t.device.type, enabled=False):
        if t.device.type == "cuda":
            return gram_cuda.split_k_gram(t) if t.ndim == 2 else gram_cuda.batched_gram(t)
        if t.dtype in (torch.bfloat16, torch.float16):
            return _half_gram(t)
        t = t.to(_accumulate_dtype(t.dtype))
        return t @ t.mT


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32 (bf16/fp16 matmuls would
    round K to 8–11 bits; float32 keeps Gram entries to ~1e-7 relative)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_matrix(
    taus: Tensor | Sequence[Tensor],
    *,
    granularity: Granularity = "expert",
    batch_dims: int = 0,
) -> Tensor:
    """S2: K = GᵀG, K_ij = ⟨τ_i, τ_j⟩ over flattened parameters.

    taus: (N, d) or a sequence of per-matrix (N, *P_m) tensors (see
    :func:`stack_domain_vectors`). ``granularity="expert"`` (default): one bargain per expert
    across all its matrices, K = Σ_m K_m (N, N) — equal to the Gram matrix of the concatenated
    vectors. ``"matrix"``: one bargain per weight matrix, K of shape (M, N, N).
    Accumulates in float32 (float64 for float64 input); bfloat16/float16 τ is converted to
    float32 chunk by chunk (``HALF_CHUNK_ELEMENTS``), never as a whole copy.

    Batches: a single tensor with more than two dimensions is ambiguous — (B, N, d) problems or
    one weight matrix (N, out, in) of N experts — and raises unless ``batch_dims`` says which:
    with ``batch_dims=b``, a tensor (*B, N, *P) with b leading batch dimensions gives one
    (N, N) Gram per problem, K of shape (*B, N, N). Wrap a single weight-matrix stack in a list
    (``[t]``) to keep the (N, *P) reading.
    """
    if batch_dims:
        return _batched_gram(taus, batch_dims, granularity)
    if isinstance(taus, Tensor) and taus.ndim > 2:
        raise BargainInputError(
            f"gram_matrix got one tensor of shape {tuple(taus.shape)}: is that a batch of "
            f"problems {tuple(taus.shape[:-2])} × (N, d), or one weight matrix of "
            f"N = {taus.shape[0]} experts? Pass batch_dims={taus.ndim - 2} for the batch "
            "(K of shape (..., N, N)), or [tensor] (a list of per-matrix [N, ...] tensors) for "
            "the weight matrix."
        )
    mats = stack_domain_vectors(taus)
    if granularity == "expert" and mats[0].device.type == "cuda":
        with torch.autocast("cuda", enabled=False):
            return gram_cuda.expert_gram(mats)  # S2 in one pass over τ
    grams = []
    for t in mats:
        grams.append(_gram_of(t))
    if granularity == "expert":
        K = grams[0]
        for g in grams[1:]:
            K = K + g.to(K.dtype)
        return K
    if granularity == "matrix":
        return torch.stack([g.to(grams[0].dtype) for g in grams])
    raise ValueError(f"granularity must be 'expert' or 'matrix'; got {granularity!r}")


def _batched_gram(
    taus: Tensor | Sequence[Tensor], batch_dims: int, granularity: Granularity
) -> Tensor:
    """``gram_matrix`` for one tensor (*B, N, *P) with ``batch_dims`` = len(B) → (*B, N, N)."""
    if not isinstance(taus, Tensor):
        raise BargainInputError("batch_dims applies to a single tensor (*B, N, d), not a list.")
    if not is_int(batch_dims) or batch_dims < 0:  # BargainInputError, like every input check here
        raise BargainInputError(f"batch_dims must be a non-negative int; got {batch_dims!r}")
    if taus.ndim < batch_dims + 2:
        raise BargainInputError(
            f"batch_dims={batch_dims} needs a tensor of at least {batch_dims + 2} dimensions "
            f"(*B, N, d); got shape {tuple(taus.shape)}."
        )
    if granularity != "expert":
        raise BargainInputError("batch_dims works with granularity='expert' only.")
    stack_domain_vectors([taus])  # the dtype and emptiness checks of every route
    lead = taus.shape[: batch_dims + 1]  # (*B, N)
    return _gram_of(taus.reshape(*lead, -1))  # (*B, N, d) → (*B, N, N)


def off_diagonal_mean(m: Tensor) -> Tensor:
    """Mean of the off-diagonal entries of a square matrix m (..., N, N) → (...).

    A masked sum over a static shape, not boolean-mask indexing (``m[~eye]``), whose output
    size is data-dependent: that would make the host wait for the device (a sync per call on
    CUDA, and no CUDA-graph capture). NaN for N = 1 (no off-diagonal entry), as the mean of
    nothing; a NaN off the diagonal propagates, one on the diagonal does not.
    """
    n = m.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=m.device)
    return torch.where(off, m, torch.zeros_like(m)).sum((-2, -1)) / (n * (n - 1))
