"""CUDA-graph capture of one fixed-iteration Newton solve + merge (S2, S4–S5, S14 with M_i = I):
capture succeeds only if nothing in it synchronises with the host, and replays must equal the
eager computation, also after new inputs are copied into the static tensors. Needs CUDA."""

from __future__ import annotations

import pytest
import torch

from namex_ref.benchmarks.graphs import bargain_and_merge, capture_bargain
from namex_ref.nash.solvers import RESIDUAL_TOL

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N, F, C, B = 4, 32, 16, 3
#: Replay and eager run the same kernels on the same data, so results agree to rounding of
#: possibly different reduction orders (float32 merge; float64 α).
RTOL_F32, RTOL_F64 = 1e-6, 1e-12


def _inputs(seed: int, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    taus = [torch.randn(N, F, C, generator=g), torch.randn(N, C, F, generator=g)]
    base = [torch.randn(F, C, generator=g), torch.randn(C, F, generator=g)]
    scores = torch.softmax(torch.randn(B, 2, N, generator=g), -1)
    return ([t.to(device) for t in taus], [b.to(device) for b in base], scores.to(device))


def test_capture_rejects_cpu_tensors() -> None:
    taus, base, scores = _inputs(0, "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        capture_bargain(taus, base, scores)


def test_eager_bargain_and_merge_on_cpu() -> None:
    """The captured function itself (on CPU): α solves S4, merged = base + Σ s_i τ_i."""
    taus, base, scores = _inputs(0, "cpu")
    alpha, residual, merged = bargain_and_merge(taus, base, scores)
    assert float(residual) <= RESIDUAL_TOL and bool((alpha > 0).all())
    expected = base[0] + torch.einsum("bsn,nfc->bsfc", scores, taus[0])
    torch.testing.assert_close(merged[0], expected, rtol=RTOL_F32, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_matches_eager() -> None:
    taus, base, scores = _inputs(0, "cuda")
    cap = capture_bargain(taus, base, scores, iterations=20)
    cap.graph.replay()
    torch.cuda.synchronize()
    alpha, _, merged = bargain_and_merge(taus, base, scores, 20)
    torch.testing.assert_close(cap.alpha, alpha, rtol=RTOL_F64, atol=0)
    assert float(cap.residual) <= RESIDUAL_TOL
    for m_g, m_e in zip(cap.merged, merged, strict=True):
        torch.testing.assert_close(m_g, m_e, rtol=RTOL_F32, atol=1e-6)
    # new data into the static inputs, replay, compare with eager on the new data
    taus2, base2, scores2 = _inputs(1, "cuda")
    for dst, src in zip([*cap.taus, *cap.base, cap.scores], [*taus2, *base2, scores2],
                        strict=True):
        dst.copy_(src)
    cap.graph.replay()
    torch.cuda.synchronize()
    alpha2, _, merged2 = bargain_and_merge(taus2, base2, scores2, 20)
    torch.testing.assert_close(cap.alpha, alpha2, rtol=RTOL_F64, atol=0)
    assert not torch.allclose(alpha2, alpha)
    for m_g, m_e in zip(cap.merged, merged2, strict=True):
        torch.testing.assert_close(m_g, m_e, rtol=RTOL_F32, atol=1e-6)
