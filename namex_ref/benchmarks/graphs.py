"""CUDA-graph capture of one NAMEx bargain: Gram (S2), fixed-iteration Newton (S4–S5, no host
synchronisation) and the merge Ê = E_m + Σ_i s_i τ_i (S14 with M_i = I).

A CUDA graph records kernels once and replays them without the CPU; capture fails if any
operator synchronises with the host, so a successful capture is the proof that the training
loop's bargain is sync-free on CUDA. Needs a CUDA device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from namex_ref.merging.functional import merge_weights
from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.solvers import solve_newton

__all__ = ["CapturedBargain", "bargain_and_merge", "capture_bargain"]


def bargain_and_merge(taus: Sequence[Tensor], base: Sequence[Tensor], scores: Tensor,
                      iterations: int = 20) -> tuple[Tensor, Tensor, list[Tensor]]:
    """α of the bargain of ``taus`` (per-matrix (N, *P_m)) by ``iterations`` Newton steps, its
    residual, and the merged weights base_m + Σ_i s_i τ_{m,i} for ``scores`` (..., N).
    Returns (α (N,) float64, residual () float64, [merged (..., *P_m)])."""
    K = gram_matrix(list(taus)).to(torch.float64)
    sol = solve_newton(K, fixed_iterations=iterations)
    merged = [merge_weights(b, t, scores, 1.0) for b, t in zip(base, taus, strict=True)]
    return sol.alpha, sol.residual, merged


@dataclass(frozen=True)
class CapturedBargain:
    """A captured graph with its static inputs and outputs: copy new values into ``taus`` /
    ``base`` / ``scores`` in place, call ``graph.replay()``, read ``alpha``/``residual``/
    ``merged``."""

    graph: torch.cuda.CUDAGraph
    taus: list[Tensor]
    base: list[Tensor]
    scores: Tensor
    alpha: Tensor
    residual: Tensor
    merged: list[Tensor]


def capture_bargain(taus: Sequence[Tensor], base: Sequence[Tensor], scores: Tensor,
                    iterations: int = 20, warmup: int = 3) -> CapturedBargain:
    """Capture :func:`bargain_and_merge` on CUDA tensors into a CUDA graph (after ``warmup``
    eager runs on a side stream, as torch.cuda.graphs requires). Raises ``ValueError`` for
    non-CUDA inputs; a host-synchronising operator makes the capture itself fail."""
    if not all(t.is_cuda for t in (*taus, *base, scores)):
        raise ValueError("capture_bargain needs CUDA tensors (taus, base and scores)")
    s_taus = [t.clone() for t in taus]
    s_base = [b.clone() for b in base]
    s_scores = scores.clone()
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            bargain_and_merge(s_taus, s_base, s_scores, iterations)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        alpha, residual, merged = bargain_and_merge(s_taus, s_base, s_scores, iterations)
    return CapturedBargain(graph, s_taus, s_base, s_scores, alpha, residual, merged)
