"""Time and memory of merging over the top k of N experts (``merge_top_k``; DeepSeek-V3 routes 8
of 256) on one merged matrix of a tiny hidden size, forward and backward, in the same run (ratios,
not absolute speed claims).

Paths. "merged_linear": the layer's path (:func:`~namex_ref.merging.functional.merged_linear`,
the one a converted block uses): Ŵ[b,s] = base + Σ_i s[b,s,i] D_i formed as one (B·S, N) @
(N, P) product, so per segment only one merged (out, in) weight exists, and backward forms it
again instead of saving it. "materialised": the naive einsum that forms every segment's N scaled
terms s[b,s,i] D_i, (B, S, N, out, in), before summing them; autograd saves it.

Memory is measured two ways on the CPU: the bytes autograd keeps for backward (saved-tensor
hooks, distinct storages) and the bytes allocated over forward + backward (the profiler's
``self_cpu_memory_usage``, positive entries). The expert terms D (N, out, in) exist in both paths
(the bargain needs every τ_i); what differs is the per-segment work.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from namex_ref.merging.functional import merged_linear

__all__ = ["TopKMergeRow", "format_table", "topk_merge_table"]


@dataclass(frozen=True)
class TopKMergeRow:
    """One path at one expert count: fwd+bwd median milliseconds, bytes saved for backward,
    bytes allocated over forward + backward, and the max |Δy| to merged_linear."""

    n_experts: int
    path: str
    ms: float
    saved_bytes: int
    allocated_bytes: int
    max_abs_diff: float


def _backward(y: Tensor) -> None:
    torch.autograd.backward(y.sum())


def _saved_bytes(fn: Any) -> tuple[Tensor, int]:
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y: Tensor = fn()
    return y, sum(seen.values())


def _allocated_bytes(fn: Any) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _backward(fn())
    return sum(max(int(e.self_cpu_memory_usage), 0) for e in prof.key_averages())


def _materialised(x: Tensor, base: Tensor, deltas: Tensor, scores: Tensor) -> Tensor:
    terms = scores[..., None, None] * deltas  # (B, S, N, out, in): N terms per segment
    return torch.einsum("bslc,bsfc->bslf", x, base + terms.sum(2))


def topk_merge_table(
    n_experts: tuple[int, ...] = (64, 256),
    *,
    k: int = 8,
    hidden: int = 64,
    inter: int = 32,
    batch: int = 2,
    seq: int = 256,
    segment_len: int = 32,
    repeats: int = 5,
    seed: int = 0,
) -> list[TopKMergeRow]:
    """For each N: x (batch, S, segment_len, hidden), deltas (N, inter, hidden), a base, and
    scores with k non-zeros per segment (renormalised random); both paths run forward and
    backward ``repeats`` times (after one warm-up), float32, CPU."""
    gen = torch.Generator().manual_seed(seed)
    S = seq // segment_len
    rows = []
    for n in n_experts:
        x = torch.randn(batch, S, segment_len, hidden, generator=gen, requires_grad=True)
        base = torch.randn(inter, hidden, generator=gen, requires_grad=True)
        deltas = torch.randn(n, inter, hidden, generator=gen, requires_grad=True)
        raw = torch.rand(batch, S, n, generator=gen)
        keep = raw.topk(k, -1).indices
        s = torch.zeros_like(raw).scatter(-1, keep, raw.gather(-1, keep))
        scores = (s / s.sum(-1, keepdim=True)).requires_grad_()
        paths = {
            "merged_linear": partial(merged_linear, x, base, deltas, scores, 1.0),
            "materialised": partial(_materialised, x, base, deltas, scores),
        }
        ref = paths["merged_linear"]().detach()
        for name, fn in paths.items():
            _backward(fn())  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _backward(fn())
                times.append(1e3 * (time.perf_counter() - t0))
            y, saved = _saved_bytes(fn)
            rows.append(TopKMergeRow(
                n, name, statistics.median(times), saved, _allocated_bytes(fn),
                float((y.detach() - ref).abs().max()),
            ))
    return rows


def format_table(rows: list[TopKMergeRow]) -> str:
    """A markdown table of :func:`topk_merge_table` rows."""
    lines = ["| N | path | fwd+bwd ms | saved for backward KiB | allocated KiB | max abs Δy |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.n_experts} | {r.path} | {r.ms:.2f} | {r.saved_bytes / 1024:.0f} | "
                     f"{r.allocated_bytes / 1024:.0f} | {r.max_abs_diff:.1e} |")
    return "\n".join(lines)
