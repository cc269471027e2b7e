"""The NAMEx merging layer in place of a Hugging Face sparse MoE block (S12–S18):
:class:`HFMergedMoE`.

An expert of the supported families is SwiGLU, f_i(x) = W_down,i (act(W_gate,i x) ∘ W_up,i x),
with W_gate and W_up the two halves of ``gate_up_proj[i]`` (2I, H) and W_down = ``down_proj[i]``
(H, I) (transformers 5.x experts interface). In the merging core an expert is the matrix list
[W_gate (I, H), W_up (I, H), W_down (H, I)], so S1's τ, S2's Gram K = Σ_m τ_m τ_mᵀ and S16's α
run over all three matrices (one α per expert). The block keeps the pretrained ``gate``
(router) and ``experts`` modules themselves (same parameters, no copy), adds the base expert and
the Kronecker curvature operators of the method, and merges with
:func:`namex_ref.merging.functional.merged_linear`; the base-expert chain (S15–S18) is built once
per forward pass by :func:`namex_ref.merging.functional.propagate` in a forward pre-hook on the
converted model (:mod:`namex_ref.hf.convert`).

Starting function (η = 1, ``kronecker_terms`` = 1, the defaults): "smoe" is the pretrained model
itself (its own token top-k routing and expert kernels). Every merging method starts as the
score-weighted average expert of S13, Ê = Σ_i s_i E_i per causal segment (with M_i = I and
Σ_i s_i = 1, S14 gives E_m + Σ_i s_i (E_i − E_m) = Σ_i s_i E_i whatever the base), the scores
being the pretrained router's softmax on the previous segment's mean (uniform on segment 0).

CAMEx-code options of :class:`MergeConfig` (docs/math.md §6, "CAMEx options on a converted
model"): ``sign_mask``, ``term_dropout``, ``gate="noisy-top-k"``, ``router_per_matrix``,
``base_init="expert0"`` and ``kronecker_terms`` run through the functions the GPT layer uses
(:func:`namex_ref.merging.functional.masked_deltas`, ``gated_scores``, ``term_dropout``), in its
random-draw order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.hf.base import initial_base
from namex_ref.hf.decode import SegmentState
from namex_ref.hf.families import Family, family_of, merge_scores, router_logits
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.functional import (
    LayerTerms,
    gated_scores,
    masked_deltas,
    merged_linear,
    noisy_unit_gates,
    term_dropout,
)
from namex_ref.merging.layers import KroneckerCurvature
from namex_ref.merging.routing import segment_means, unit_means

__all__ = ["HFMergedMoE"]


def _zero_linear(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> nn.Linear:
    """A bias-free n_in → n_out router with zero weights."""
    lin = nn.Linear(n_in, n_out, bias=False, device=device, dtype=dtype)
    nn.init.zeros_(lin.weight)
    return lin


class _RouterLogits(nn.Module):
    """x ↦ x Wᵀ with the pretrained router's weight W (N, H), for the noisy gate: for a sigmoid
    family log σ(x Wᵀ), so that a softmax over the chosen logits is the family's normalised
    sigmoid score (:func:`~namex_ref.hf.families.merge_scores`)."""

    def __init__(self, weight: Tensor, family: Family) -> None:
        super().__init__()
        self.weight = weight
        self.family = family

    def forward(self, x: Tensor) -> Tensor:
        out = router_logits(self.family, self.weight, x)
        return F.logsigmoid(out.float()) if self.family.scoring == "sigmoid" else out



class HFMergedMoE(nn.Module):
    """A Hugging Face sparse MoE block run by a merging method of docs/math.md §3.

    ``gate`` and ``experts`` are the pretrained modules (the same parameters); ``shared_expert``
    and ``shared_expert_gate`` (Qwen2-MoE) are kept and added as in the original block,
    y = routed(x) + sigmoid(x w_sg) · shared(x). Methods with a base expert own ``base_gate_up``
    (2I, H) and ``base_down`` (H, I) (layer 0 only for first-layer methods), CAMEx-family
    methods three :class:`~namex_ref.merging.layers.KroneckerCurvature` operators (gate, up,
    down). ``merge_top_k``: keep only the k largest scores of each segment, renormalised (the
    CAMEx code merges only the top k when 2k < N); ``None`` merges all N experts.

    CAMEx options (docs/math.md §6): ``noise_router`` (H → N) for ``gate="noisy-top-k"``;
    ``router_hidden`` (I → N, and ``noise_router_hidden``) for ``router_per_matrix``: W_down's
    router on the segment means of the merged hidden act(W_gate x) ∘ (W_up x); all start at
    zero weights. ``aux_loss``: the noisy gate's balance loss of the last forward (0 for the
    softmax gate). ``base_init="expert0"``: the base is a copy of expert 0 (τ_0 = 0).

    Cached decoding (docs/math.md §6, "Cached decoding of a converted model"). With a KV cache
    transformers feeds only the new tokens, which do not contain the previous segment that
    S13's causal scores need. For "segment" routing the model's pre-hook therefore hands each
    block the offset (the cache length) and the block's state for that cache: the scores of
    the current segment and its block inputs so far (fewer than ``segment_len``). A token at
    absolute position t is then merged with the scores of segment ⌊t/S⌋, from the mean of
    segment ⌊t/S⌋ − 1 over the same block inputs the full forward averages: the logits equal
    those of the uncached forward on the whole sequence up to float rounding (tests/
    test_hf_generate.py). The state lives with the cache object (a new or empty cache starts
    afresh); a cache reordered (beam search), cropped or filled elsewhere is refused with a
    ``ValueError``, as is a non-empty cache with "sequence" routing (not causal).
    """

    def __init__(
        self,
        block: Any,
        config: MergeConfig,
        *,
        has_base: bool,
        base_rule: str = "perturbed-mean",
        seed: int = 0,
        merge_top_k: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.family = family_of(block)
        self.gate: Any = block.gate
        self.experts: Any = block.experts
        # the shared experts keep their module names (and so their checkpoint keys)
        self.shared_expert: nn.Module | None = getattr(block, "shared_expert", None)
        self.shared_expert_gate: nn.Module | None = getattr(block, "shared_expert_gate", None)
        self.shared_experts: nn.Module | None = getattr(block, "shared_experts", None)
        self.jitter_noise = float(getattr(block, "jitter_noise", 0.0) or 0.0)
        self.merge_top_k = merge_top_k
        self.intermediate = int(self.experts.down_proj.shape[-1])
        hidden = int(self.experts.down_proj.shape[1])
        n = config.n_experts
        self.base_gate_up: nn.Parameter | None = None
        self.base_down: nn.Parameter | None = None
        if has_base:
            if config.base_init == "expert0":  # CAMEx's init_res: τ_0 = 0 at conversion
                b = [E.detach()[0].clone() for E in self.experts_list()]
            else:
                b = initial_base(self.experts_list(), base_rule, seed=seed)
            self.base_gate_up = nn.Parameter(torch.cat([b[0], b[1]], 0))
            self.base_down = nn.Parameter(b[2])
        self.curvature: nn.ModuleList | None = None
        if config.spec.curvature:
            rank, r = config.curvature_rank, config.kronecker_terms
            dev, dt = self.experts.down_proj.device, self.experts.down_proj.dtype
            i_dim = self.intermediate
            self.curvature = nn.ModuleList(
                [
                    KroneckerCurvature(n, i_dim, hidden, rank, r),
                    KroneckerCurvature(n, i_dim, hidden, rank, r),
                    KroneckerCurvature(n, hidden, i_dim, rank, r),
                ]
            ).to(device=dev, dtype=dt)
            for mod in self.curvature:
                setattr(mod, "recompute", config.merge_memory != "eager")  # noqa: B010
        dev, dt = self.experts.down_proj.device, self.experts.down_proj.dtype
        # CAMEx options (docs/math.md §6, "CAMEx options on a converted model"); the new
        # routers start at zero weights: the second router then gives W_down uniform scores
        # (softmax of zero logits), the noise routers σ = softplus(0) + 1e-2 (Shazeer et al.)
        self.router_hidden: nn.Linear | None = None
        if config.router_per_matrix:
            self.router_hidden = _zero_linear(self.intermediate, n, dev, dt)
        self.noise_router: nn.Linear | None = None
        self.noise_router_hidden: nn.Linear | None = None
        if config.gate == "noisy-top-k":
            self.noise_router = _zero_linear(hidden, n, dev, dt)
            if config.router_per_matrix:
                self.noise_router_hidden = _zero_linear(self.intermediate, n, dev, dt)
        # balance loss of the noisy gate in the last forward (0 for the softmax gate), read by
        # namex_ref.hf.training.HFCausalLM; None before a merging forward
        self.aux_loss: Tensor | None = None
        self.terms: LayerTerms | None = None  # set by convert's pre-hook for each forward
        # cached decoding, set by the pre-hook for each forward: the number of tokens before
        # this call and their segment state (None for offset 0), or None when not tracked
        self.decode: tuple[int, SegmentState | None] | None = None
        self.next_state: SegmentState | None = None  # after this call; read by the post-hook

    def experts_list(self) -> list[Tensor]:
        """Per-matrix expert stacks [W_gate (N, I, H), W_up (N, I, H), W_down (N, H, I)]:
        views of the pretrained ``gate_up_proj`` and ``down_proj`` (no copy)."""
        gu, i_dim = self.experts.gate_up_proj, self.intermediate
        return [gu[:, :i_dim], gu[:, i_dim:], self.experts.down_proj]

    def base(self) -> list[Tensor] | None:
        """The learned base expert [(I, H), (I, H), (H, I)], or None."""
        if self.base_gate_up is None or self.base_down is None:
            return None
        i_dim = self.intermediate
        return [self.base_gate_up[:i_dim], self.base_gate_up[i_dim:], self.base_down]

    def curve(self, taus: list[Tensor]) -> list[Tensor]:
        """M_i(τ_i) for the three matrices (identity for methods without curvature, S14)."""
        if self.curvature is None:
            return taus
        return [m(t) for m, t in zip(self.curvature, taus, strict=True)]

    def forward(self, hidden_states: Tensor) -> Tensor:
        """hidden_states (B, T, H) → (B, T, H), as the replaced block."""
        B, T, H = hidden_states.shape
        flat = hidden_states.reshape(-1, H)
        if self.config.spec.kind == "topk":
            x = hidden_states
            if self.training and self.jitter_noise > 0:  # Mixtral's router jitter
                x = x * torch.empty_like(x).uniform_(1 - self.jitter_noise, 1 + self.jitter_noise)
            xf = x.reshape(-1, H)
            _, weights, index = self.gate(xf)
            routed: Tensor = self.experts(xf, index, weights)
        else:
            routed = self._merged(hidden_states).reshape(-1, H)
            if self.family.scaling != 1.0:  # the routed scaling factor c of the family
                routed = routed * self.family.scaling
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            routed = routed + shared
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(flat)
        return routed.reshape(B, T, H)

    def _scores(self, x: Tensor) -> Tensor:
        """The merge scores (B, S, N) of :meth:`_route` (its balance loss dropped)."""
        return self._route(x)[0]

    def _route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (B, S, N) of the pretrained router (S13; the noisy gate for
        ``gate="noisy-top-k"``, :func:`gated_scores`) after ``merge_top_k``, and the gate's
        balance loss. The softmax gate: the family's merge scores (:meth:`_unit_scores`) of
        the unit means (:func:`unit_means`), after segment 0's uniform scores."""
        cfg = self.config
        if self.noise_router is not None:
            router = _RouterLogits(self.gate.weight, self.family)
            s, aux = gated_scores(x, router, self.noise_router, cfg, training=self.training)
            return self._top_k(s), aux
        s = self._unit_scores(unit_means(x, cfg.routing, cfg.segment_len))  # (B, U, N)
        if cfg.routing == "segment":
            s = torch.cat([self._first_scores(x), s], 1)
        return s, x.new_zeros(())

    def _top_k(self, s: Tensor) -> Tensor:
        """``merge_top_k``: the k largest scores of each row, renormalised (s unchanged for
        None)."""
        k = self.merge_top_k
        if k is not None and k < self.config.n_experts:
            top, idx = s.float().topk(k, dim=-1)
            s32 = torch.zeros_like(s, dtype=torch.float32).scatter(-1, idx, top)
            s = (s32 / s32.sum(-1, keepdim=True)).to(s.dtype)
        return s

    def _unit_scores(self, means: Tensor) -> Tensor:
        """Scores (B, U, N) of the segments that follow the segments with these means
        (B, U, H): the family's merge scores (:func:`~namex_ref.hf.families.merge_scores`:
        softmax, or sigmoid normalised to sum 1; ``merge_top_k`` chosen by the family's rule,
        correction bias and groups included), float32, cast back; for the softmax family and
        ``merge_top_k`` None this is :func:`segment_scores`'s softmax. The noisy gate: its
        gates, then ``merge_top_k``."""
        if self.noise_router is not None:  # noisy gate (no noise in eval mode)
            router = _RouterLogits(self.gate.weight, self.family)
            probs, _ = noisy_unit_gates(
                means, router, self.noise_router, self.config, training=self.training
            )
            return self._top_k(probs.to(means.dtype))
        logits = router_logits(self.family, self.gate.weight, means)
        bias = getattr(self.gate, "e_score_correction_bias", None)
        k = self.merge_top_k if self.merge_top_k != self.config.n_experts else None
        s = merge_scores(self.family, logits, k, bias if self.family.correction_bias else None)
        return s.to(means.dtype)

    def _first_scores(self, x: Tensor) -> Tensor:
        """Scores (B, 1, N) of segment 0: uniform 1/N (then ``merge_top_k``)."""
        n = self.config.n_experts
        s = torch.full((x.shape[0], 1, n), 1.0 / n, device=x.device)
        return self._top_k(s.to(x.dtype))

    def _merged(self, x: Tensor) -> Tensor:
        """S13–S18 per causal segment: Ŵ = base + η Σ_i s_i deltas_i for each of the three
        matrices (:func:`merged_linear`), then W_down (act(W_gate x) ∘ W_up x). With a
        non-empty cache (offset > 0) see :meth:`_merged_cached`."""
        cfg = self.config
        decode = self.decode
        if decode is not None and decode[0] > 0:
            return self._merged_cached(x, *decode)
        B, T, H = x.shape
        S_len = cfg.segment_len if cfg.routing == "segment" else T
        # the random draws in training, in MoEFeedForward's order: "dare" masks, gate noise,
        # term-dropout mask (then the second router's, in _ffn)
        deltas = self._deltas((B, -(-T // S_len)))
        scores, aux = self._route(x)  # (B, S, N)
        S = scores.shape[1]
        xs = F.pad(x, (0, 0, 0, S * S_len - T)).reshape(B, S, S_len, H)
        y, aux2 = self._ffn(xs, scores, deltas, T)  # (B, S, L, H)
        self.aux_loss = aux + aux2
        if decode is not None:  # the first call of a cache: keep the state for the next one
            with torch.no_grad():
                full = T // S_len
                last = x[:, (full - 1) * S_len : full * S_len]
                nxt = self._first_scores(x) if full == 0 else self._unit_scores(
                    segment_means(last, S_len))
                self.next_state = SegmentState(T, x[:, full * S_len :].detach().clone(), nxt)
        return y.reshape(B, S * S_len, H)[:, :T]

    def _merged_cached(self, x: Tensor, offset: int, state: SegmentState | None) -> Tensor:
        """The new tokens x (B, T, H) at absolute positions offset … offset + T − 1.

        With r = offset mod S and the stored tail (the r block inputs of the current segment),
        ext = [tail, x] starts on a segment boundary: ext's segment 0 keeps the stored scores,
        its segment k ≥ 1 gets the scores of the mean of its segment k − 1 (S13). The first
        min(S − r, T) new tokens are merged with the stored scores, the rest segment by segment;
        the tail is never run through the experts again."""
        cfg = self.config
        B, T, H = x.shape
        S_len = cfg.segment_len
        if state is None or state.offset != offset or state.tail.shape[0] != B:
            raise RuntimeError(
                "HFMergedMoE: no segment state for this cache position; call the model "
                "converted by namex_ref.hf.convert (its pre-hook hands the state over)"
            )
        r = state.tail.shape[1]
        ext = torch.cat([state.tail.to(x.dtype), x], 1)  # (B, r + T, H), segment aligned
        full = (r + T) // S_len  # complete segments of ext
        scores = state.scores.to(x.dtype)
        if full:
            means = segment_means(ext[:, : full * S_len], S_len)  # (B, full, H)
            scores = torch.cat([scores, self._unit_scores(means)], 1)  # (B, full + 1, N)
        head = min(S_len - r, T) if r else 0
        parts = []
        deltas = self._deltas()
        if head:
            xs = x[:, :head].reshape(B, 1, head, H)
            parts.append(self._ffn(xs, scores[:, :1], deltas)[0].reshape(B, head, H))
        rest = T - head
        if rest:
            n, first = math.ceil(rest / S_len), 1 if r else 0
            xs = F.pad(x[:, head:], (0, 0, 0, n * S_len - rest)).reshape(B, n, S_len, H)
            y = self._ffn(xs, scores[:, first : first + n], deltas)[0].reshape(B, n * S_len, H)
            parts.append(y[:, :rest])
        self.next_state = SegmentState(
            offset + T, ext[:, full * S_len :].detach().clone(),
            scores[:, full : full + 1].detach(),
        )
        return torch.cat(parts, 1)

    def _terms(self) -> LayerTerms:
        terms = self.terms
        if terms is None:
            raise RuntimeError(
                "HFMergedMoE: no merge terms; call the model converted by namex_ref.hf.convert "
                "(its forward pre-hook builds them), not the block alone"
            )
        return terms

    def _deltas(self, units: tuple[int, int] | None = None) -> list[Tensor]:
        """The merge terms of the three matrices after ``sign_mask`` (:func:`masked_deltas`:
        "ties" masks from τ on this layer's base, "dare" masks in training only; per routing
        unit of ``units`` = (B, S) with ``dare_granularity="segment"``)."""
        return masked_deltas(self._terms(), self.experts_list(), self.config,
                             training=self.training, units=units)

    def _ffn(
        self, xs: Tensor, scores: Tensor, deltas: list[Tensor], T: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The merged SwiGLU expert of each routing unit: xs (B, S, L, H), scores (B, S, N),
        deltas from :meth:`_deltas` → ((B, S, L, H), the second router's balance loss).

        W_gate and W_up are merged with ``scores`` after ``term_dropout``. With
        ``router_per_matrix`` W_down is merged with the scores of the second router on the
        hidden activations act(W_gate x) ∘ (W_up x) of the first T tokens (segment means,
        :func:`gated_scores`, then ``merge_top_k`` and its own term-dropout mask); T = None is
        the cached path, where ``router_per_matrix`` is refused."""
        terms = self._terms()
        cfg = self.config
        eta = 1.0 if terms.base is None else cfg.eta
        bases: list[Tensor | None] = list(terms.base) if terms.base is not None else [None] * 3
        rec = cfg.merge_memory != "eager"
        unmasked = deltas is terms.deltas  # recompute in backward only the unmasked terms

        def lin(m: int, inp: Tensor, s: Tensor) -> Tensor:
            return merged_linear(
                inp, bases[m], deltas[m], s, eta,
                recompute_deltas=self._redo(m, bases[m]) if unmasked else None, recompute=rec,
            )

        train, p = self.training, cfg.term_dropout
        s1 = term_dropout(scores, p, training=train)
        h = self.experts.act_fn(lin(0, xs, s1)) * lin(1, xs, s1)  # (B, S, L, I)
        s2, aux = s1, xs.new_zeros((), dtype=torch.float32)
        if self.router_hidden is not None:
            if T is None:
                raise RuntimeError("router_per_matrix: cached decoding is refused by convert")
            B, S, L, I = h.shape
            hidden = h.reshape(B, S * L, I)[:, :T]  # (B, T, I), real tokens only
            sc2, aux = gated_scores(
                hidden, self.router_hidden, self.noise_router_hidden, cfg, training=train
            )
            s2 = term_dropout(self._top_k(sc2), p, training=train)
        out: Tensor = lin(2, h, s2)  # (B, S, L, H)
        return out, aux

    def _redo(self, m: int, base: Tensor | None) -> Callable[[], Tensor] | None:
        """``merge_memory="recompute"``: the merge term M(E − E_m) of matrix m rebuilt from the
        parameters in backward (as the GPT layer does), refused if one changed in place."""
        if self.config.merge_memory != "recompute" or base is None:
            return None
        curv = None if self.curvature is None else self.curvature[m]
        sources = [self.experts_list()[m], base, *([] if curv is None else curv.parameters())]
        versions = [t._version for t in sources]

        def redo() -> Tensor:
            if [t._version for t in sources] != versions:
                raise RuntimeError(
                    "merge_memory='recompute': an expert, base or curvature parameter was "
                    "modified in place between forward and backward; call backward first, or "
                    "use merge_memory='keep-deltas'"
                )
            with torch.autocast(base.device.type, enabled=False):  # as _merge_plan formed it
                tau = self.experts_list()[m] - base
                out: Tensor = tau if curv is None else curv(tau)
            return out

        return redo

