"""CAMEx options of the merging layers (docs/math.md §6, "CAMEx options"): the noisy top-k
gate, term dropout and the "ties" / "dare" masks on the merge terms.

Pure functions on router modules and tensors; :class:`~namex_ref.merging.layers.MoEFeedForward`
and the Hugging Face block call them in the same order (see below).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.plan import LayerTerms
from namex_ref.merging.routing import (
    cv_squared,
    noisy_top_k_gating,
    segment_scores,
    sequence_scores,
    unit_means,
)
from namex_ref.nash.gram import domain_vectors

__all__ = [
    "gated_scores",
    "masked_deltas",
    "noisy_unit_gates",
    "term_dropout",
]


# ---- CAMEx-code options shared by the merging layers (docs/math.md §6, "CAMEx options") ------
# MoEFeedForward (GPT) and HFMergedMoE (Hugging Face) both call these, in the same order, so the
# random draws of a training step are the same sequence in both: the "dare" masks (one per
# matrix), the first router's gate noise, its term-dropout mask, then the second router's
# (``router_per_matrix``) noise and mask.


def noisy_unit_gates(
    u: Tensor,
    router: torch.nn.Module,
    noise_router: torch.nn.Module,
    config: MergeConfig,
    *,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """The noisy top-k gate (``gate="noisy-top-k"``) on routing-unit inputs u (B, U, C).

    Returns gates (B, U, N) float32 (:func:`~namex_ref.merging.routing.noisy_top_k_gating` with
    k = ``config.gate_k``, ε = ``torch.randn`` drawn only when ``training``) and the balance
    loss balance_coef·(cv²(Σ_units gates) + cv²(load)) (Shazeer et al.; 0 for U·B < 2 units).
    """
    B, U, _ = u.shape
    n = config.n_experts
    clean: Tensor = router(u).reshape(B * U, n)
    raw: Tensor = noise_router(u).reshape(B * U, n)
    noise = torch.randn(clean.shape, device=clean.device) if training else None
    gated = noisy_top_k_gating(clean, raw, config.gate_k, noise)
    aux = config.balance_coef * (cv_squared(gated.gates.sum(0)) + cv_squared(gated.load))
    return gated.gates.reshape(B, U, n), aux


def gated_scores(
    h: Tensor,
    router: torch.nn.Module,
    noise_router: torch.nn.Module | None,
    config: MergeConfig,
    *,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """Router scores (B, S, N) of the merging methods (S13) and the gate's balance loss.

    h: (B, T, C) the router's input. ``config.gate == "softmax"``:
    :func:`~namex_ref.merging.routing.segment_scores` / ``sequence_scores``, loss 0.
    "noisy-top-k": :func:`noisy_unit_gates` on the same unit means (segment 0 keeps the uniform
    1/N, S13's causal convention), noise only in training. Scores in h's dtype.
    """
    if config.gate == "softmax":
        if config.routing == "segment":
            scores = segment_scores(h, router, config.segment_len, config.n_experts)
            return scores, h.new_zeros(())
        return sequence_scores(h, router), h.new_zeros(())
    if noise_router is None:
        raise ValueError("gate='noisy-top-k' needs a noise router (noise_router is None)")
    u = unit_means(h, config.routing, config.segment_len)  # (B, U, C); U = 0 for one segment
    gates, aux = noisy_unit_gates(u, router, noise_router, config, training=training)
    if config.routing == "segment":
        n = config.n_experts
        first = torch.full((h.shape[0], 1, n), 1.0 / n, device=h.device)
        gates = torch.cat([first, gates], dim=1)
    return gates.to(h.dtype), aux


def term_dropout(scores: Tensor, p: float, *, training: bool) -> Tensor:
    """``term_dropout``: Dropout2d of the merge terms s_i·M_i(τ_i) per (routing unit, expert),
    as a mask on the (B, S, N) scores: s_i·m_i/(1 − p), m_i ~ Bernoulli(1 − p) drawn with
    ``bernoulli_``. Identity in eval mode or for p = 0."""
    if not training or p == 0.0:
        return scores
    keep = torch.empty_like(scores).bernoulli_(1.0 - p)
    return scores * keep / (1.0 - p)


def masked_deltas(
    terms: LayerTerms,
    experts: Sequence[Tensor],
    config: MergeConfig,
    *,
    training: bool,
    units: tuple[int, int] | None = None,
) -> list[Tensor]:
    """The merge terms of S14 after ``config.sign_mask``; ``terms.deltas`` itself when unmasked.

    "ties": deltas_i × [sign τ_i = sign Σ_j τ_j] element-wise (τ_i = E_i − E_m from S1 on the
    layer's base ``terms.base``, no grad), train and eval. "dare": deltas_i × Bernoulli(dare_keep)
    element-wise (``bernoulli_``, one draw per matrix in order, no rescaling), training only.
    With ``dare_granularity="segment"`` each routing unit gets its own masks: the terms come back
    per unit, (B, S, N, *P) for ``units`` = (B, S), one ``bernoulli_`` draw per matrix.
    The τ of the bargain (S16) are not touched: they are formed in :func:`propagate`.
    """
    if config.sign_mask == "none" or terms.base is None:
        return terms.deltas
    if config.sign_mask == "ties":
        with torch.no_grad():
            taus = domain_vectors(list(experts), terms.base)
            masks = [(t.sign() == t.sum(0).sign()).to(t.dtype) for t in taus]
        return [d * m for d, m in zip(terms.deltas, masks, strict=True)]
    if not training:
        return terms.deltas
    if config.dare_granularity == "segment":
        if units is None:
            raise ValueError("dare_granularity='segment' needs the routing units (B, S) of "
                             "this forward; cached decoding in training mode has none")
        return [d * torch.empty((*units, *d.shape), dtype=d.dtype, device=d.device)
                .bernoulli_(config.dare_keep) for d in terms.deltas]
    return [d * torch.empty_like(d).bernoulli_(config.dare_keep) for d in terms.deltas]
