"""Routers: token-level top-k with the load-balancing loss (S12), and segment/sequence scores for
the merging methods (S13–S18). Router softmax runs in float32 and is cast back.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TopKRouting",
    "load_balancing_loss",
    "segment_means",
    "segment_scores",
    "sequence_scores",
    "top_k_routing",
]


class TopKRouting(NamedTuple):
    """Token-level routing (S12).

    gates: (..., k) renormalised softmax weights of the chosen experts, in the input dtype.
    experts: (..., k) int64 expert indices.
    probs: (..., N) float32 full softmax (for the balance loss).
    """

    gates: Tensor
    experts: Tensor
    probs: Tensor


def top_k_routing(logits: Tensor, k: int) -> TopKRouting:
    """Softmax over N experts in float32, keep the k largest, renormalise (Mixtral convention).

    logits: (..., N) any float dtype. Returns :class:`TopKRouting`.
    """
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    probs = F.softmax(logits.float(), dim=-1)
    top, idx = probs.topk(k, dim=-1)
    gates = (top / top.sum(-1, keepdim=True)).to(logits.dtype)
    return TopKRouting(gates, idx, probs)


def load_balancing_loss(probs: Tensor, experts: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer load-balancing loss, eqs. (4)–(6): N · Σ_i f_i P_i.

    probs: (..., N) router softmax; experts: (..., k) chosen indices. f_i is the fraction of the
    T·k assignments that go to expert i, P_i the mean router probability of expert i over the
    T tokens. Equals 1 for perfectly uniform routing. Returns a float32 scalar.
    """
    p = probs.reshape(-1, n_experts)
    counts = F.one_hot(experts.reshape(-1), n_experts).to(p.dtype).sum(0)  # (N,)
    f = counts / counts.sum()
    return n_experts * (f * p.mean(0)).sum()


def segment_means(h: Tensor, segment_len: int) -> Tensor:
    """Mean of h over consecutive segments of ``segment_len`` tokens.

    h: (B, T, C). Returns (B, S, C) with S = ⌈T / segment_len⌉; the last segment may be shorter
    and is averaged over its own length.
    """
    B, T, C = h.shape
    S = math.ceil(T / segment_len)
    pad = S * segment_len - T
    hp = F.pad(h, (0, 0, 0, pad)).reshape(B, S, segment_len, C)  # (B, S, L, C)
    lengths = torch.full((S,), float(segment_len), dtype=h.dtype, device=h.device)
    lengths[-1] = segment_len - pad
    return hp.sum(2) / lengths[None, :, None]


def segment_scores(h: Tensor, router: torch.nn.Module, segment_len: int, n_experts: int) -> Tensor:
    """Causal segment routing (Lory; our convention for segment 0).

    h: (B, T, C) layer input, S = ⌈T / segment_len⌉ segments (the last may be shorter). Segment
    k ≥ 1 gets s = softmax(router(mean of segment k − 1)) (softmax in float32), so every token's
    merged expert depends only on tokens of earlier segments; segment 0 gets uniform scores 1/N
    (our convention). Routing segment 0 with scores from its own mean instead (even with the
    gradient stopped) would let a later token of segment 0 change the output at an earlier
    position; we keep the forward pass strictly causal. The router therefore gets no gradient
    from segment 0, and the mean of the last segment is never used.
    Returns (B, S, N) in h's dtype, rows summing to 1.
    """
    means = segment_means(h, segment_len)  # (B, S, C)
    probs = F.softmax(router(means[:, :-1]).float(), dim=-1)  # (B, S-1, N)
    first = torch.full((h.shape[0], 1, n_experts), 1.0 / n_experts, device=h.device)  # (B, 1, N)
    return torch.cat([first, probs], dim=1).to(h.dtype)  # (B, S, N)


def sequence_scores(h: Tensor, router: torch.nn.Module) -> Tensor:
    """Per-sequence routing (classification): s = softmax(router(mean_t h)).

    h: (B, T, C) → (B, 1, N); not causal (every token sees the whole sequence).
    """
    return F.softmax(router(h.mean(1, keepdim=True)).float(), dim=-1).to(h.dtype)
