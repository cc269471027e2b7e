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
    "CV_EPSILON",
    "NOISE_EPSILON",
    "NoisyGates",
    "TopKRouting",
    "cv_squared",
    "load_balancing_loss",
    "noisy_top_k_gating",
    "segment_means",
    "segment_scores",
    "sequence_scores",
    "top_k_routing",
    "unit_means",
]

NOISE_EPSILON = 1e-2
"""Floor of the noisy gate's noise scale, softplus(x̄W_noise) + 1e-2 (Shazeer et al.; CAMEx)."""
CV_EPSILON = 1e-10
"""cv²(x) = var(x) / (mean(x)² + 1e-10): the guard of Shazeer et al.'s importance loss."""


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
    # (S,) segment lengths, built from two fills: writing the last one by index would copy a
    # Python number to the device, which a CUDA-graph capture refuses (tests/test_devicecheck).
    full = torch.full((S - 1,), float(segment_len), dtype=h.dtype, device=h.device)
    last = torch.full((1,), float(segment_len - pad), dtype=h.dtype, device=h.device)
    lengths = torch.cat((full, last))
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


def unit_means(h: Tensor, routing: str, segment_len: int) -> Tensor:
    """The inputs of the router for the merging methods: (B, S − 1, C) means of segments
    0 … S − 2 for "segment" routing (segment k + 1 is merged with the scores of segment k, as in
    :func:`segment_scores`), or the (B, 1, C) sequence mean for "sequence" routing."""
    if routing == "segment":
        return segment_means(h, segment_len)[:, :-1]
    return h.mean(1, keepdim=True)


class NoisyGates(NamedTuple):
    """Noisy top-k gating of R routing units (Shazeer et al. 2017).

    gates: (R, N) float32, softmax over the k largest logits, 0 elsewhere; rows sum to 1.
    load: (N,) float32 smooth load (Σ over units of P(expert in the top k)) when noise is given
        and k < N, else the count of units with a non-zero gate.
    """

    gates: Tensor
    load: Tensor


def noisy_top_k_gating(
    clean: Tensor, noise_logits: Tensor, k: int, noise: Tensor | None
) -> NoisyGates:
    """Shazeer et al.'s noisy top-k gate, as the CAMEx code uses it.

    clean: (R, N) logits x̄W_g; noise_logits: (R, N) x̄W_noise; noise: (R, N) standard normal
    draws in training, ``None`` in evaluation. With σ = softplus(x̄W_noise) + 1e-2 the logits
    are clean + noise·σ; the gate is the softmax of the k largest (zeros elsewhere). In training
    with k < N the load is Σ_r Φ((clean − θ)/σ), θ the (k+1)-th largest noisy logit of the row
    for an expert inside the top k and the k-th largest for one outside; otherwise it is the
    count of rows where the gate is non-zero. Computed in float32.
    """
    n = clean.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    clean = clean.float()
    sigma = F.softplus(noise_logits.float()) + NOISE_EPSILON
    logits = clean if noise is None else clean + noise.float() * sigma
    top, idx = logits.topk(min(k + 1, n), dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, idx[:, :k], F.softmax(top[:, :k], dim=-1))
    if noise is not None and k < n:
        inside = logits > top[:, k : k + 1]
        p_in = torch.special.ndtr((clean - top[:, k : k + 1]) / sigma)  # Φ, standard normal
        p_out = torch.special.ndtr((clean - top[:, k - 1 : k]) / sigma)
        load = torch.where(inside, p_in, p_out).sum(0)
    else:
        load = (gates > 0).to(gates.dtype).sum(0)
    return NoisyGates(gates, load)


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation var(x)/(mean(x)² + 1e-10), unbiased variance, in
    float32; 0 for a single entry (Shazeer et al.'s importance and load losses)."""
    x = x.float()
    if x.numel() < 2:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + CV_EPSILON)
