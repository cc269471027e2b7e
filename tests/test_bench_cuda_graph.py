"""CUDA-graph capture of the real training forward (benchmarks/graphs.py): ``MoEGPT.forward`` with
``propagate``, ``bargain_alpha`` (fixed-iteration Newton, S4–S5) and the momentum step of the
base expert (S16–S18). Capture succeeds only if nothing in it synchronises with the host;
replays must equal the eager forward, also after new tokens are copied into the static inputs
and after an optimizer step changed the parameters in place. The capture needs CUDA (skipped
cleanly without it); the captured function and the argument checks are tested on CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from namex_ref.benchmarks.graphs import capture_forward, training_forward
from namex_ref.benchmarks.syncs import count_sync_ops
from namex_ref.merging.config import METHODS
from namex_ref.models.gpt import MoEGPT, preset
from namex_ref.nash.newton import RESIDUAL_TOL

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

B, T = 2, 16
#: Replay and eager run the same kernels on the same data: float32 activations agree to
#: rounding of possibly different reduction orders; α (float64) to 1e-12.
RTOL_F32, RTOL_F64 = 1e-5, 1e-12


def _model(method: str, device: str) -> MoEGPT:
    cfg = dataclasses.replace(preset("tiny", method), n_layer=3)
    torch.manual_seed(0)
    return MoEGPT(cfg).to(device)


def _tokens(model: MoEGPT, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = model.config.vocab_size
    return (torch.randint(0, v, (B, T), generator=g).to(device),
            torch.randint(0, v, (B, T), generator=g).to(device))


@pytest.mark.parametrize("method", ["namex-full", "namex-q"])
def test_training_forward_on_cpu_is_the_model_forward(method: str) -> None:
    """The captured function is the model's own forward: same loss, a bargain solved at every
    layer (NAMEx-Full re-solves each layer) to Newton's tolerance, no fallback, and no
    host-synchronising operator (the condition for a capture)."""
    model = _model(method, "cpu")
    idx, tgt = _tokens(model, 0, "cpu")
    loss, ce, alphas, residuals, fallbacks = training_forward(model, idx, tgt)
    out = model(idx, tgt)
    assert out.loss is not None
    torch.testing.assert_close(loss, out.loss, rtol=0, atol=0)
    assert out.ce is not None
    torch.testing.assert_close(ce, out.ce, rtol=0, atol=0)
    assert alphas.shape == (3, model.config.merge.n_experts)
    if method == "namex-full":
        assert bool((residuals <= RESIDUAL_TOL).all()) and not bool(fallbacks.any())
    assert bool(torch.isfinite(alphas[0]).all()) and bool((alphas[0] > 0).all())
    assert sum(count_sync_ops(lambda: training_forward(model, idx, tgt)).values()) == 0


def test_capture_rejects_cpu_tensors() -> None:
    model = _model("namex-full", "cpu")
    idx, tgt = _tokens(model, 0, "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        capture_forward(model, idx, tgt)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graph_replay_matches_the_eager_forward(method: str) -> None:
    """Every method's training forward is captured and replays as the eager forward: SMoE (its
    static-shape dispatch), NAMEx-Full (a bargain at every layer), NAMEx-Full-Mom and NAMEx-Q
    (the complex and quaternion momentum steps of the base expert, S17–S18), and the rest."""
    model = _model(method, "cuda")
    idx, tgt = _tokens(model, 0, "cuda")
    cap = capture_forward(model, idx, tgt)

    def check() -> None:
        cap.graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            want = training_forward(model, cap.idx, cap.targets)
        got = (cap.loss, cap.ce, cap.alphas, cap.residuals, cap.fallbacks)
        for g, w in zip(got, want, strict=True):
            if w.dtype == torch.float64:
                torch.testing.assert_close(g, w, rtol=RTOL_F64, atol=0, equal_nan=True)
            elif w.dtype == torch.bool:
                assert torch.equal(g, w)
            else:
                torch.testing.assert_close(g, w, rtol=RTOL_F32, atol=1e-6)
        assert bool((cap.residuals[~torch.isnan(cap.residuals)] <= RESIDUAL_TOL).all())

    check()
    loss0, alpha0 = cap.loss.clone(), cap.alphas.clone()
    idx2, tgt2 = _tokens(model, 1, "cuda")  # new tokens into the static inputs
    cap.idx.copy_(idx2)
    cap.targets.copy_(tgt2)
    check()
    assert not torch.equal(cap.loss, loss0)
    # one optimizer step updates the parameters in place: the replay re-solves the bargains
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    out = model(cap.idx, cap.targets)
    assert out.loss is not None
    out.loss.backward()
    opt.step()
    check()
    assert not torch.equal(cap.alphas[0], alpha0[0])
