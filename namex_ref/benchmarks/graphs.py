"""CUDA-graph capture of the real training forward: ``MoEGPT.forward`` on a batch, i.e. the merge
plan (``merging.plan.propagate``: domain vectors, ``bargain_alpha`` with fixed-iteration
Newton — S4–S5, no host synchronisation — and the momentum step of the base expert, S16–S18),
every merged MoE layer (S14), attention and the loss.

A CUDA graph records kernels once and replays them without the CPU; capture fails if any
operator synchronises with the host, so a successful capture is the proof that the training
loop's forward is sync-free on CUDA. Parameters are read in place, so after an optimizer step
(which updates them in place) a replay runs the new bargains. The capture runs under
``torch.no_grad()`` (forward only: evaluation, or the forward half of a step whose backward is
run by ``torch.cuda.make_graphed_callables``). Every method can be captured: SMoE's dispatch
off the host has static shapes (``merging.layers.top_k_dense``), NAMEx-Q's constant β enters the
Hamilton product as four Python floats, and the segment lengths are made by fills, not by an
indexed write. ``namex_ref.devicecheck`` checks the same conditions on a CPU-only machine.

The CPU parts (:func:`training_forward`, the argument checks) are tested on any machine; the
capture itself needs a CUDA device (``tests/test_bench_cuda_graph.py`` skips without one).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import Tensor

from namex_ref.models.gpt import MoEGPT

__all__ = ["CapturedForward", "capture_forward", "graph_vs_eager_rows", "training_forward"]


def training_forward(model: MoEGPT, idx: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
    """The forward of one training step, as tensors: (loss, cross-entropy, α (L, N),
    residuals (L,), fallbacks (L,)) of ``model(idx, targets)`` — the function that
    :func:`capture_forward` records."""
    out = model(idx, targets)
    assert out.loss is not None and out.ce is not None  # targets were given
    return out.loss, out.ce, out.stats.alphas, out.stats.residuals, out.stats.fallbacks


@dataclass(frozen=True)
class CapturedForward:
    """A captured forward with its static inputs and outputs: copy new tokens into ``idx`` /
    ``targets`` in place (or update the model's parameters in place), call ``graph.replay()``,
    then read ``loss``, ``ce``, ``alphas``, ``residuals``, ``fallbacks``."""

    graph: torch.cuda.CUDAGraph
    model: MoEGPT
    idx: Tensor
    targets: Tensor
    loss: Tensor
    ce: Tensor
    alphas: Tensor
    residuals: Tensor
    fallbacks: Tensor


def _check_cuda(model: MoEGPT, idx: Tensor, targets: Tensor) -> None:
    if not (idx.is_cuda and targets.is_cuda):
        raise ValueError("capture_forward needs CUDA tensors (idx and targets)")
    if not all(p.is_cuda for p in model.parameters()):
        raise ValueError("capture_forward needs the model on CUDA (model.to('cuda'))")


def capture_forward(model: MoEGPT, idx: Tensor, targets: Tensor,
                    warmup: int = 3) -> CapturedForward:
    """Capture :func:`training_forward` of ``model`` on CUDA tensors into a CUDA graph, after
    ``warmup`` eager runs on a side stream (as torch.cuda.graphs requires: lazy initialisation
    and allocator warm-up stay out of the graph). Raises ``ValueError`` for CPU inputs; a
    host-synchronising operator or a host-to-device copy makes the capture itself fail."""
    _check_cuda(model, idx, targets)
    s_idx = idx.clone()
    s_tgt = targets.clone()
    with torch.no_grad():
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                training_forward(model, s_idx, s_tgt)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, ce, alphas, residuals, fallbacks = training_forward(model, s_idx, s_tgt)
    return CapturedForward(graph, model, s_idx, s_tgt, loss, ce, alphas, residuals, fallbacks)


def graph_vs_eager_rows(model: MoEGPT, idx: Tensor, targets: Tensor, *,
                        repeats: int = 20) -> list[list[str]]:
    """Median time of the eager forward (no grad) against the replay of its CUDA graph, timed
    interleaved with CUDA events (rows of a table: what, median ms, × eager)."""
    from namex_ref.benchmarks.common import interleaved_times

    cap = capture_forward(model, idx, targets)

    def eager() -> None:
        with torch.no_grad():
            training_forward(model, idx, targets)

    times = interleaved_times({"eager forward": eager, "CUDA graph replay": cap.graph.replay},
                              idx.device, repeats=repeats)
    ref = statistics.median(times["eager forward"])
    return [[k, f"{statistics.median(v) * 1e3:.3f}", f"{statistics.median(v) / ref:.2f}"]
            for k, v in times.items()]
