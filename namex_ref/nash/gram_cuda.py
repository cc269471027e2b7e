"""The Gram matrix K = GᵀG (S2) at memory speed on CUDA: split-K GEMMs with float32 output.

On a GPU the CPU path's ideas cost bandwidth (issue 25, measured on an H200): converting
bfloat16 τ to float32 in 1 MiB chunks read τ at 13–21 GB/s (0.3–0.4 % of HBM), and one plain
GEMM of a skinny (N, P) × (P, N) product (N ≤ 16, P in the millions) leaves most of the GPU
idle: its N×N output is one tile, so the whole P-long reduction runs on a handful of SMs.

Here, for CUDA tensors:

- half inputs (bfloat16/float16) go straight into the GEMM with float32 accumulation and a
  float32 result (``torch.bmm(..., out_dtype=torch.float32)``, CUDA-only in torch 2.13): no
  converted copy of τ is ever made;
- the P dimension is split into S column blocks of ≥ :data:`SPLIT_K_COLUMNS` columns (a
  strided view, no copy), the S partial Grams (S, N, N) come from one batched GEMM, and their
  sum is K (split-K): S ≈ P / 16384 up to :data:`SPLIT_K_MAX` gives hundreds of independent
  GEMM tiles, several per SM on a 132-SM GPU, each streaming ≥ 16384 columns (32 KiB of bf16
  per row) so the reads stay long and coalesced;
- the S2 Gram of a whole expert (K = Σ_m τ_m τ_mᵀ over its weight matrices) collects every
  matrix's partials and reduces them with one sum: each byte of τ is read once.

Precision: every entry is a float32 sum of float32 products of exactly representable inputs,
first over a block of c = ⌊P/S⌋ columns, then over S (+1 for the tail) partials, so
|K̃_ij − K_ij| ≤ γ_{c+S+1}·Σ_k |τ_ik τ_jk| ≤ (c + S + 1)·u·max_i K_ii to first order
(u = 2⁻²⁴, Higham's bound for a sum split in two stages), tighter than the one-shot GEMM's
γ_P. tests/test_nash_gram_cuda.py checks this bound on CPU (where the half GEMM with a float32
output does not exist and :func:`_mm_f32` upcasts instead) against a float64 oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "SPLIT_K_COLUMNS",
    "SPLIT_K_MAX",
    "batched_gram",
    "expert_gram",
    "split_count",
    "split_k_gram",
]

#: Columns per split-K block at least: long coalesced reads per GEMM tile (see module doc).
SPLIT_K_COLUMNS = 2**14
#: At most this many blocks: ~8 tiles per SM on a 132-SM GPU; the partials' (S, N, N) float32
#: sum then reads S·N²·4 bytes, ≤ 1 MiB for N = 16, next to ≥ 32 MiB of τ.
SPLIT_K_MAX = 1024
_HALF = (torch.bfloat16, torch.float16)


def split_count(d: int) -> int:
    """Number of column blocks S for P = d columns: ⌊d / SPLIT_K_COLUMNS⌋ in [1, SPLIT_K_MAX]."""
    return max(1, min(SPLIT_K_MAX, d // SPLIT_K_COLUMNS))


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else gives a float32 K (as ``gram._accumulate_dtype``)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """Batched a @ b (S, N, c) × (S, c, N) with K's accumulation dtype. Half inputs on CUDA: one
    GEMM with float32 accumulation and output (``out_dtype``); on CPU, where that overload is
    missing in torch 2.13, the inputs are upcast (the same float32 arithmetic, a copy: only the
    tests call this on CPU). float32/float64 inputs: a plain batched GEMM."""
    out = _out_dtype(a.dtype)
    if a.dtype in _HALF:
        if a.device.type == "cuda":
            return torch.bmm(a, b, out_dtype=out)
        return torch.bmm(a.to(out), b.to(out))
    if a.dtype != out:  # float8 and other narrow floats: upcast (no float32-output GEMM)
        a, b = a.to(out), b.to(out)
    return torch.bmm(a, b)


def _partials(t: Tensor, splits: int) -> Tensor:
    """(S or S + 1, N, N) partial Grams of t (N, d): S blocks of c = ⌊d/S⌋ columns as one
    strided view (no copy) through one batched GEMM, plus the tail of d − S·c columns."""
    n, d = t.shape
    if t.stride(1) != 1:
        t = t.contiguous()
    c = d // splits
    body = t[:, : splits * c].view(n, splits, c).transpose(0, 1)  # (S, N, c), a view
    parts = _mm_f32(body, body.mT)
    if splits * c < d:
        tail = t[None, :, splits * c :]  # (1, N, d − S·c)
        parts = torch.cat((parts, _mm_f32(tail, tail.mT)))
    return parts


def split_k_gram(t: Tensor, splits: int | None = None) -> Tensor:
    """K = t tᵀ (S2) of t (N, d) by split-K: Σ_s t_s t_sᵀ over column blocks t_s.

    ``splits``: S (default :func:`split_count`). Half inputs give float32 K (accumulated in
    float32, no converted copy on CUDA), float64 gives float64, others float32. → (N, N).
    """
    if t.ndim != 2:
        raise ValueError(f"split_k_gram takes one (N, d) matrix; got shape {tuple(t.shape)}")
    s = split_count(t.shape[1]) if splits is None else splits
    if not 1 <= s <= max(1, t.shape[1]):
        raise ValueError(f"splits must be in [1, d = {t.shape[1]}]; got {s}")
    return _partials(t, s).sum(0)


def expert_gram(mats: Sequence[Tensor]) -> Tensor:
    """S2 at expert granularity in one pass: K = Σ_m τ_m τ_mᵀ for per-matrix (N, d_m) τ_m.

    Every matrix's split-K partials are collected and reduced by one sum, so each byte of τ is
    read once and nothing is converted or concatenated. The result has the first matrix's
    accumulation dtype (float64 for float64, float32 otherwise), as ``gram_matrix``'s. → (N, N).
    """
    out = _out_dtype(mats[0].dtype)
    parts = [_partials(t, split_count(t.shape[1])).to(out) for t in mats]
    return torch.cat(parts).sum(0)


def batched_gram(t: Tensor) -> Tensor:
    """K_b = t_b t_bᵀ for a batch t (*B, N, d) → (*B, N, N): one batched GEMM (batches give the
    GPU its parallelism; no split), half inputs with float32 accumulation and output."""
    flat = t.reshape(-1, *t.shape[-2:])
    return _mm_f32(flat, flat.mT).reshape(*t.shape[:-1], t.shape[-2])
