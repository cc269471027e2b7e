"""The CUDA Gram path (namex_ref.nash.gram_cuda, S2): split-K products with float32 output.

Oracle: K computed here in float64 from the flattened vectors (their values rounded to the input
dtype first, so only the accumulation is tested). Bound, per entry (module docstring of
gram_cuda): |K̃_ij − K_ij| ≤ (c + S + 1)·u·max_i K_ii with c = ⌊d/S⌋ columns per block, S blocks
and u the unit roundoff of the accumulation dtype: 2⁻²⁴ for float32/bfloat16/float16 inputs
(accumulated in float32), 2⁻⁵³ for float64. A bfloat16 or float16 accumulation would be off by
≥ 2⁻⁹ relative, far outside it. The split-K code runs on CPU tensors here (the half GEMM with a
float32 output is CUDA-only in torch 2.13, so on CPU the blocks are upcast; the blocking, the
tail and the reduction are the same code); the CUDA tests run the real path when a GPU is lent.
"""

from __future__ import annotations

import pytest
import torch

from namex_ref.nash import gram_cuda
from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.gram_cuda import (
    SPLIT_K_COLUMNS,
    SPLIT_K_MAX,
    batched_gram,
    expert_gram,
    split_count,
    split_k_gram,
)

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-24, torch.float16: 2.0**-24,
                 torch.float64: 2.0**-53}


def _tau(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0).to(dtype)


def _ref(*mats: torch.Tensor) -> torch.Tensor:
    flat = torch.cat([t.double().reshape(t.shape[0], -1) for t in mats], 1)
    return flat @ flat.T


def _within_bound(K: torch.Tensor, ref: torch.Tensor, terms: int, dtype: torch.dtype) -> None:
    bound = terms * UNIT_ROUNDOFF[dtype] * float(ref.diagonal().max())
    err = float((K.double() - ref).abs().max())
    assert err <= bound, (err, bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 7, 64])
def test_split_k_gram_against_float64(dtype: torch.dtype, splits: int) -> None:
    """Any S (1, S with a tail, many small blocks): float32 K for float32 and half inputs,
    float64 for float64, within the two-stage bound."""
    n, d = 6, 5000
    t = _tau(n, d, dtype)
    K = split_k_gram(t, splits)
    assert K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert K.shape == (n, n)
    _within_bound(K, _ref(t), d // splits + splits + 1, dtype)


def test_split_k_gram_blocks_are_views_of_a_strided_input() -> None:
    """A column slice (row stride ≠ d) and a transposed input give the same K as a contiguous
    copy (the blocks are strided views; a non-unit column stride is made contiguous)."""
    big = _tau(4, 3000, torch.float32, 1)
    t = big[:, 100:2600]
    want = split_k_gram(t.contiguous(), 5)
    torch.testing.assert_close(split_k_gram(t, 5), want, rtol=0, atol=0)
    tt = t.T.contiguous().T  # column stride 4
    torch.testing.assert_close(split_k_gram(tt, 5), want, rtol=0, atol=0)


def test_split_count() -> None:
    """S = ⌊d / SPLIT_K_COLUMNS⌋ clamped to [1, SPLIT_K_MAX]."""
    assert split_count(1) == 1 and split_count(SPLIT_K_COLUMNS - 1) == 1
    assert split_count(5 * SPLIT_K_COLUMNS + 3) == 5
    assert split_count(10 * SPLIT_K_MAX * SPLIT_K_COLUMNS) == SPLIT_K_MAX


def test_split_k_gram_refusals() -> None:
    with pytest.raises(ValueError, match=r"one \(N, d\) matrix"):
        split_k_gram(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="splits must be"):
        split_k_gram(torch.ones(2, 3), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_gram_is_the_sum_over_matrices(dtype: torch.dtype) -> None:
    """S2 at expert granularity: Σ_m τ_m τ_mᵀ over matrices of different sizes (one below a
    block, one with a tail), within the bound of the largest matrix's two-stage sum plus the
    M-term sum across matrices."""
    sizes = (17, SPLIT_K_COLUMNS * 3 + 11, 4000)
    # the short matrix is scaled up so that each matrix's share of K is far above the bound
    mats = [_tau(5, d, dtype, s) * (100.0 if d == 17 else 1.0) for s, d in enumerate(sizes)]
    K = expert_gram(mats)
    assert K.dtype == torch.float32 and K.shape == (5, 5)
    worst = max(d // split_count(d) + split_count(d) + 1 for d in sizes)
    _within_bound(K, _ref(*mats), worst + len(mats), dtype)


def test_batched_gram_per_problem() -> None:
    t = _tau(2 * 3 * 4, 50, torch.bfloat16).reshape(2, 3, 4, 50)
    K = batched_gram(t)
    assert K.shape == (2, 3, 4, 4) and K.dtype == torch.float32
    for i in range(2):
        for j in range(3):
            _within_bound(K[i, j], _ref(t[i, j]), 51, torch.bfloat16)


def test_cpu_path_does_not_use_the_cuda_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors keep gram.py's own path (chunked conversion for halves)."""
    def boom(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("gram_cuda used for CPU tensors")

    for name in ("split_k_gram", "expert_gram", "batched_gram"):
        monkeypatch.setattr(gram_cuda, name, boom)
    t = _tau(3, 100, torch.bfloat16)
    gram_matrix(t)
    gram_matrix([t, t])
    gram_matrix(t[None], batch_dims=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_matrix_on_cuda(dtype: torch.dtype) -> None:
    """gram_matrix on CUDA: the split-K path, same bound, for one matrix, several matrices
    (expert granularity) and a batch. TF32 is switched off for the float32 GEMM (it would
    round inputs to 10 bits)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        d = 3 * SPLIT_K_COLUMNS + 5
        t = _tau(8, d, dtype)
        s = split_count(d)
        _within_bound(gram_matrix(t.cuda()).cpu(), _ref(t), d // s + s + 1, dtype)
        u = _tau(8, 999, dtype, 3)
        K = gram_matrix([t.cuda(), u.cuda()]).cpu()
        _within_bound(K, _ref(t, u), d // s + s + 1 + 999 + 2, dtype)
        Kb = gram_matrix(t.reshape(2, 4, d).cuda(), batch_dims=1).cpu()
        _within_bound(Kb[1], _ref(t[4:]), d + 1, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
