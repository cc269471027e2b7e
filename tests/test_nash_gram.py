"""Domain vectors and Gram matrices (S1, S2): accepted forms, precision and every input check.

Oracles: Gram entries are computed here as float64 dot products of the flattened vectors; the
precision claims are checked against that reference with the bound of the claimed precision
(float32 accumulation: relative 1e-6 of max K_ii for d ≤ 4096; a bfloat16 accumulation would
be off by ~1e-2).
"""

from __future__ import annotations

import pytest
import torch

from namex_ref.nash import BargainInputError, domain_vectors, gram_matrix
from namex_ref.nash.gram import HALF_CHUNK_ELEMENTS


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref(*mats: torch.Tensor) -> torch.Tensor:
    """K = Σ_m K_m in float64 from the flattened per-matrix vectors (S2)."""
    flat = torch.cat([t.double().reshape(t.shape[0], -1) for t in mats], 1)
    return flat @ flat.T


def test_low_precision_is_accumulated_in_float32() -> None:
    """bfloat16 and float16 τ give a float32 K within d·u·max K_ii of the float64 Gram of the
    same (rounded) values (u = 2⁻²⁴, Higham's γ_d bound for a d-term float32 dot product of
    non-negative-dominated sums: 2.4e-4 relative for d = 4096); a bfloat16 or float16 matmul
    would round every entry to 8 or 11 bits (≥ 4.9e-4 relative)."""
    d = 4096
    t = torch.randn(4, d, generator=_gen(0)) + 1.0
    for dtype in (torch.bfloat16, torch.float16):
        tq = t.to(dtype)
        K = gram_matrix(tq)
        assert K.dtype == torch.float32
        ref = _ref(tq)
        bound = d * 2.0**-24 * float(ref.diagonal().max())
        assert float((K.double() - ref).abs().max()) <= bound


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gram_over_several_chunks(dtype: torch.dtype) -> None:
    """τ longer than one conversion chunk (3 chunks, the last partial), single and batched
    (batch_dims=1): the same γ_d float32 bound against the float64 Gram of the rounded values
    as the one-chunk test above."""
    n = 4
    d = 2 * (HALF_CHUNK_ELEMENTS // n) + 123
    t = (torch.randn(n, d, generator=_gen(7)) + 1.0).to(dtype)
    K = gram_matrix(t)
    ref = _ref(t)
    assert K.dtype == torch.float32
    assert float((K.double() - ref).abs().max()) <= d * 2.0**-24 * float(ref.diagonal().max())
    h = d // 2
    tb = torch.stack([t[:, :h], t[:, h : 2 * h]])  # (2, N, d/2): each problem in 3 chunks
    Kb = gram_matrix(tb, batch_dims=1)
    for b in range(2):
        ref_b = _ref(tb[b])
        bound = h * 2.0**-24 * float(ref_b.diagonal().max())
        assert float((Kb[b].double() - ref_b).abs().max()) <= bound


@pytest.mark.parametrize("batch", [0, 2])
def test_low_precision_gram_never_copies_tau_to_float32(batch: int) -> None:
    """No single allocation during the bfloat16 Gram reaches the size of a float32 copy of τ
    (torch.profiler's per-operator CPU memory): only the 1 MiB chunk buffer is allocated, also
    when a batch of problems shares it (batch_dims=1: the chunk is split over every row)."""
    from torch.profiler import ProfilerActivity, profile

    n, d = 4, 4 * HALF_CHUNK_ELEMENTS  # a float32 copy would be 16 MiB
    shape = (n, d) if batch == 0 else (batch, n, d // batch)
    t = torch.randn(shape, generator=_gen(8)).to(torch.bfloat16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        gram_matrix(t, batch_dims=0 if batch == 0 else 1)
    biggest = max(ev.cpu_memory_usage for ev in prof.events())
    assert 4 * HALF_CHUNK_ELEMENTS == 2**20  # the 1 MiB float32 scratch gram.py documents
    assert 0 < biggest <= 4 * HALF_CHUNK_ELEMENTS + 4096 < 4 * n * d


def test_low_precision_gram_with_more_rows_than_the_chunk_holds() -> None:
    """A batch with more rows (problems × N) than the chunk has elements is converted one
    column at a time: each entry is a sum of two products of bfloat16 values; the products are
    exact in float32 (8-bit significands give 16-bit products) and the one float32 addition of
    two non-negative terms rounds by at most u = 2⁻²⁴ relative."""
    rows = HALF_CHUNK_ELEMENTS + 1
    t = torch.randn(rows, 1, 2, generator=_gen(13)).to(torch.bfloat16)  # (B, N = 1, d = 2)
    K = gram_matrix(t, batch_dims=1)
    ref = (t.double() ** 2).sum(-1, keepdim=True)
    assert K.dtype == torch.float32 and K.shape == (rows, 1, 1)
    torch.testing.assert_close(K.double(), ref, rtol=2.0**-24, atol=0)


def test_mixed_precision_matrices_keep_the_first_matrix_precision() -> None:
    """K's dtype is the accumulation dtype of the first matrix (float32 unless float64), for
    both granularities; the float64 matrix is rounded into it, not the other way round."""
    a = torch.randn(3, 5, generator=_gen(1))
    b = torch.randn(3, 4, 2, generator=_gen(2), dtype=torch.float64)
    assert gram_matrix([a, b]).dtype == torch.float32
    assert gram_matrix([a, b], granularity="matrix").dtype == torch.float32
    assert gram_matrix([b, a]).dtype == torch.float64
    torch.testing.assert_close(gram_matrix([b, a]), _ref(b, a), rtol=1e-6, atol=1e-6)


def test_matrix_granularity_stacks_per_matrix_grams() -> None:
    a = torch.randn(3, 5, generator=_gen(3), dtype=torch.float64)
    b = torch.randn(3, 4, 2, generator=_gen(4), dtype=torch.float64)
    K = gram_matrix([a, b], granularity="matrix")
    assert K.shape == (2, 3, 3)
    torch.testing.assert_close(K[0], _ref(a), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(K[1], _ref(b), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gram_matrix([a, b]), _ref(a, b), rtol=1e-14, atol=1e-14)


def test_unknown_granularity_raises() -> None:
    with pytest.raises(ValueError, match="granularity"):
        gram_matrix(torch.randn(3, 4), granularity="layer")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("taus", "match"),
    [
        ([torch.randn(3, 4), "not a tensor"], "entry 1 is str, not a Tensor"),
        ([torch.randn(3, 4), torch.randn(2, 4)], "matrix 1 has 2 experts but matrix 0 has 3"),
        ([torch.randn(3, 4), torch.ones(3, 4, dtype=torch.int64)], "entry 1 has dtype torch.int64"),
        ([torch.randn(3, 4, dtype=torch.complex64)], "entry 0 has dtype torch.complex64"),
    ],
)
def test_stack_checks_name_the_entry(taus: list[object], match: str) -> None:
    with pytest.raises(BargainInputError, match=match):
        gram_matrix(taus)  # type: ignore[arg-type]


def test_float8_experts_accumulate_in_float32() -> None:
    """float8 τ (a floating dtype torch's CPU matmul does not take) is converted and its Gram
    accumulated in float32: within the γ_d float32 bound of the float64 Gram of its values."""
    t = torch.randn(3, 16, generator=_gen(14)).to(torch.float8_e4m3fn)
    K = gram_matrix(t)
    td = t.double()
    ref = td @ td.T
    bound = 16 * 2.0**-24 * float((td**2).sum(-1).max())
    assert K.dtype == torch.float32
    assert float((K.double() - ref).abs().max()) <= bound


def test_batch_dims_zero_is_the_plain_gram() -> None:
    """batch_dims=0 (no batch dimension) is allowed and equals the default call."""
    t = torch.randn(3, 5, generator=_gen(12))
    torch.testing.assert_close(gram_matrix(t, batch_dims=0), gram_matrix(t), rtol=0, atol=0)


def test_batched_gram_per_problem_and_with_two_batch_dims() -> None:
    t = torch.randn(2, 3, 4, 6, generator=_gen(5), dtype=torch.float64)
    K = gram_matrix(t, batch_dims=2)
    assert K.shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(K[i, j], _ref(t[i, j]), rtol=1e-14, atol=1e-13)
    K1 = gram_matrix(t, batch_dims=1)  # (2, N=3, P=(4, 6))
    assert K1.shape == (2, 3, 3)
    torch.testing.assert_close(K1[1], _ref(t[1]), rtol=1e-14, atol=1e-12)
    assert gram_matrix(t.float(), batch_dims=2).dtype == torch.float32


@pytest.mark.parametrize(
    ("taus", "batch_dims", "match"),
    [
        ([torch.randn(2, 3, 4)], 1, "single tensor"),
        (torch.randn(2, 3, 4), -1, "non-negative int"),
        (torch.randn(2, 3, 4), True, "non-negative int"),
        (torch.randn(2, 3, 4), 1.0, "non-negative int"),
        (torch.randn(3, 4), 1, "at least 3 dimensions"),
        (torch.randn(2, 3), 1, "at least 3 dimensions"),
        (torch.ones(2, 3, 4, dtype=torch.int32), 1, "dtype torch.int32"),
        (torch.randn(2, 3, 4, dtype=torch.complex64), 1, "dtype torch.complex64"),
        (torch.randn(2, 0, 4), 1, "empty"),
    ],
)
def test_batch_dims_checks(taus: object, batch_dims: object, match: str) -> None:
    with pytest.raises(BargainInputError, match=match):
        gram_matrix(taus, batch_dims=batch_dims)  # type: ignore[arg-type]


def test_batch_dims_needs_expert_granularity() -> None:
    with pytest.raises(BargainInputError, match="granularity='expert'"):
        gram_matrix(torch.randn(2, 3, 4), batch_dims=1, granularity="matrix")


def test_domain_vectors_tensor_form_checks_the_base_shape() -> None:
    E = torch.randn(3, 4, 5, generator=_gen(6))
    b = torch.randn(4, 5, generator=_gen(7))
    tau = domain_vectors(E, b)
    for i in range(3):
        assert torch.equal(tau[i], E[i] - b)
    with pytest.raises(BargainInputError, match=r"base expert shape \(5, 4\)") as exc:
        domain_vectors(E, b.T)
    assert "weight matrix" not in str(exc.value)
