"""Convert the sparse MoE blocks of Hugging Face models to the NAMEx merging layer (S12–S18).

Supported: ``Qwen2MoeSparseMoeBlock`` (routed experts plus the shared expert and its sigmoid
shared gate, kept as they are), ``MixtralSparseMoeBlock`` and ``OlmoeSparseMoeBlock`` of
transformers 5.x. An expert there is SwiGLU, f_i(x) = W_down,i (act(W_gate,i x) ∘ W_up,i x), with
W_gate and W_up the two halves of ``gate_up_proj[i]`` (2I, H) and W_down = ``down_proj[i]`` (H, I).
In the merging core an expert is the matrix list [W_gate (I, H), W_up (I, H), W_down (H, I)], so
S1's τ, S2's Gram K = Σ_m τ_m τ_mᵀ and S16's α run over all three matrices (one α per expert).

The replacement :class:`HFMergedMoE` keeps the pretrained ``gate`` (router) and ``experts``
modules themselves (same parameters, no copy), adds the base expert and the Kronecker curvature
operators of the method, and merges with :func:`namex_ref.merging.functional.merged_linear`; the
base-expert chain (S15–S18) is built once per forward pass by
:func:`namex_ref.merging.functional.propagate` in a forward pre-hook on the converted model.

Starting function (η = 1, ``kronecker_terms`` = 1, the defaults): "smoe" is the pretrained model
itself (its own token top-k routing and expert kernels). Every merging method starts as the
score-weighted average expert of S13, Ê = Σ_i s_i E_i per causal segment (with M_i = I and
Σ_i s_i = 1, S14 gives E_m + Σ_i s_i (E_i − E_m) = Σ_i s_i E_i whatever the base), the scores
being the pretrained router's softmax on the previous segment's mean (uniform on segment 0).

CAMEx-code options of :class:`MergeConfig` (docs/math.md §6, "CAMEx options on a converted
model"): ``sign_mask``, ``term_dropout``, ``gate="noisy-top-k"``, ``router_per_matrix``,
``base_init="expert0"`` and ``kronecker_terms`` run through the functions the GPT layer uses
(:func:`namex_ref.merging.functional.masked_deltas`, ``gated_scores``, ``term_dropout``), in its
random-draw order. ``expert_bias`` is refused: the pretrained SwiGLU experts have no biases.

Generation with a KV cache (``use_cache=True``) is exact for "segment" routing: the blocks keep
the segment state of each cache (docs/math.md §6, "Cached decoding of a converted model";
:class:`HFMergedMoE`); beam search, a cropped or foreign cache, and "sequence" routing with a
non-empty cache raise ``ValueError`` naming ``use_cache=False``.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.merging.config import MergeConfig
from namex_ref.merging.functional import (
    LayerTerms,
    MergePlan,
    gated_scores,
    masked_deltas,
    merged_linear,
    noisy_unit_gates,
    propagate,
    term_dropout,
)
from namex_ref.merging.layers import KroneckerCurvature
from namex_ref.merging.routing import segment_means

__all__ = [
    "BASE_RULES",
    "FAMILIES",
    "HF_EXTRA_HINT",
    "HFMergedMoE",
    "MissingExtraError",
    "convert",
    "converted_blocks",
    "initial_base",
    "load",
    "require_transformers",
    "save",
]

HF_EXTRA_HINT = "pip install -e '.[hf]'"
"""The install command of the optional extra that brings transformers."""

FAMILIES: dict[str, str] = {
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "MixtralSparseMoeBlock": "mixtral",
    "OlmoeSparseMoeBlock": "olmoe",
}
"""Sparse MoE block classes that :func:`convert` replaces, and their model family."""

BASE_RULES = ("perturbed-mean", "mean", "zero")
"""Initial base expert rules (docs/math.md §6, "Base expert of a converted model")."""

_META_FILE = "namex_hf.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHTS_FILE = "namex_model.safetensors"
# MergeConfig options of the GPT merging layer that the HF layer does not implement, and why.
_UNSUPPORTED = {
    "expert_bias": (
        False,
        "the pretrained SwiGLU experts of Qwen2-MoE, Mixtral and OLMoE have no biases, so "
        "there is no b_i to form b_i − b_m from (new zero biases would be a different model)",
    ),
}


class MissingExtraError(ImportError):
    """transformers is not installed: the ``hf`` extra is missing."""


def require_transformers() -> Any:
    """Import and return transformers, or raise :class:`MissingExtraError` naming the extra."""
    try:
        import transformers
    except ImportError as err:
        raise MissingExtraError(
            "namex_ref.hf needs Hugging Face transformers, which is not installed; install the "
            f"optional extra with `{HF_EXTRA_HINT}` (transformers==5.23.0)"
        ) from err
    return transformers


def _zero_linear(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> nn.Linear:
    """A bias-free n_in → n_out router with zero weights."""
    lin = nn.Linear(n_in, n_out, bias=False, device=device, dtype=dtype)
    nn.init.zeros_(lin.weight)
    return lin


class _RouterLogits(nn.Module):
    """x ↦ x Wᵀ with the pretrained router's weight W (N, H), for the segment router."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.linear(x, self.weight)
        return out


def initial_base(
    experts: list[Tensor], rule: str = "perturbed-mean", *, seed: int = 0
) -> list[Tensor]:
    """The initial base expert E_m of a converted layer, per matrix (*P_m), no grad.

    experts: per-matrix (N, *P_m). With c_i = E_i − Ē (Ē the mean expert, all matrices
    flattened together) and s² = (1/N) Σ_i ‖c_i‖²:

    - "perturbed-mean" (default): E_m = Ē + u, u a seeded Gaussian direction with its
      projection on span{c_i} removed and ‖u‖ = s. Then τ_i = c_i − u and, u being orthogonal
      to every c_i, K = CCᵀ + s²·11ᵀ: positive definite when the c_i span N − 1 dimensions
      (generic), with the uniform direction at the experts' own scale (N s² = tr CCᵀ).
    - "mean": E_m = Ē. Then Σ_i τ_i = 0, K1 = 0, and the uniform vector is an S6 certificate:
      no bargain exists (kept to show why it is not the default).
    - "zero": E_m = 0, τ_i = E_i; K PD when the experts are independent, but ill conditioned
      for experts with a large common part (upcycled models).

    Raises:
        ValueError: an unknown rule; or "perturbed-mean" for experts of P ≤ N − 1 parameters
            (all matrices together), where the c_i can span every direction, so no direction
            orthogonal to them exists (the projected u would be rounding noise, or exactly 0).
    """
    if rule not in BASE_RULES:
        raise ValueError(f"unknown base rule {rule!r}; choose one of {', '.join(BASE_RULES)}")
    with torch.no_grad():
        if rule == "zero":
            return [torch.zeros_like(E[0]) for E in experts]
        means = [E.mean(0) for E in experts]
        if rule == "mean":
            return means
        n, p = experts[0].shape[0], sum(E[0].numel() for E in experts)
        if p < n:
            raise ValueError(
                f"base_rule='perturbed-mean': an expert has {p} parameters, at most N - 1 = "
                f"{n - 1}, so the {n} centred experts can span every direction and no direction "
                "orthogonal to them is left; use base_rule='zero' or 'mean'"
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # float32 work copies (float64 for float64 experts): one layer's centred experts at a
        # time, the only transient expert-sized memory of a conversion
        acc = torch.float64 if experts[0].dtype == torch.float64 else torch.float32
        us = [torch.randn(m.shape, generator=gen, dtype=acc).to(m.device) for m in means]
        cs = [(E.to(acc) - m.to(acc)).reshape(E.shape[0], -1)
              for E, m in zip(experts, means, strict=True)]
        gram = sum(c @ c.T for c in cs)  # CCᵀ (N, N)
        proj = sum(c @ u.reshape(-1) for c, u in zip(cs, us, strict=True))  # C u (N,)
        assert isinstance(gram, Tensor) and isinstance(proj, Tensor)
        # u ← u − Cᵀ (CCᵀ)⁺ C u
        w = (torch.linalg.pinv(gram.double(), hermitian=True) @ proj.double()).to(acc)
        us = [(u.reshape(-1) - c.T @ w).reshape(u.shape) for u, c in zip(us, cs, strict=True)]
        s2 = float(gram.diagonal().mean())
        unorm = math.sqrt(sum(float((u**2).sum()) for u in us))
        scale = math.sqrt(s2) / max(unorm, 1e-300)
        return [(m.to(acc) + scale * u).to(m.dtype) for m, u in zip(means, us, strict=True)]


@dataclass
class _SegmentState:
    """Causal segment routing of one block after its first ``offset`` tokens (cached decoding).

    tail: (B, offset mod S, H) the block inputs of the current, still partial segment;
    scores: (B, 1, N) the scores of segment ⌊offset / S⌋ (from the mean of the segment before
    it, uniform for segment 0), after ``merge_top_k``. Detached: decoding state, no gradient.
    """

    offset: int
    tail: Tensor
    scores: Tensor


@dataclass
class _CacheEntry:
    """The blocks' segment states that belong to one transformers cache object, the cache
    length they were recorded at, and a weak reference to the cache's first key tensor then
    (a new tensor there means the cache was reordered or rebuilt outside this model)."""

    states: list[_SegmentState]
    offset: int
    keys: weakref.ReferenceType[Tensor] | None


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
        self.family = FAMILIES[type(block).__name__]
        self.gate: Any = block.gate
        self.experts: Any = block.experts
        self.shared_expert: nn.Module | None = getattr(block, "shared_expert", None)
        self.shared_expert_gate: nn.Module | None = getattr(block, "shared_expert_gate", None)
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
        self.decode: tuple[int, _SegmentState | None] | None = None
        self.next_state: _SegmentState | None = None  # after this call; read by the post-hook

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
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            shared = self.shared_expert(flat)
            routed = routed + torch.sigmoid(self.shared_expert_gate(flat)) * shared
        return routed.reshape(B, T, H)

    def _scores(self, x: Tensor) -> Tensor:
        """The merge scores (B, S, N) of :meth:`_route` (its balance loss dropped)."""
        return self._route(x)[0]

    def _route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (B, S, N) of the pretrained router (S13; the noisy gate for
        ``gate="noisy-top-k"``, :func:`gated_scores`) after ``merge_top_k``, and the gate's
        balance loss."""
        router = _RouterLogits(self.gate.weight)
        s, aux = gated_scores(x, router, self.noise_router, self.config, training=self.training)
        return self._top_k(s), aux

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
        (B, U, H), as :func:`segment_scores` forms them (float32 softmax, cast back)."""
        router = _RouterLogits(self.gate.weight)
        if self.noise_router is not None:  # noisy gate (no noise in eval mode)
            probs, _ = noisy_unit_gates(
                means, router, self.noise_router, self.config, training=self.training
            )
        else:
            probs = F.softmax(router(means).float(), dim=-1)
        return self._top_k(probs.to(means.dtype))

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
                self.next_state = _SegmentState(T, x[:, full * S_len :].detach().clone(), nxt)
        return y.reshape(B, S * S_len, H)[:, :T]

    def _merged_cached(self, x: Tensor, offset: int, state: _SegmentState | None) -> Tensor:
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
        self.next_state = _SegmentState(
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


def converted_blocks(model: nn.Module) -> list[HFMergedMoE]:
    """The converted MoE blocks of ``model`` in module order (= layer order)."""
    return [m for m in model.modules() if isinstance(m, HFMergedMoE)]


def _merge_plan(model: nn.Module) -> MergePlan:
    """The merge plan in the parameters' precision, outside autocast (as
    :meth:`namex_ref.models.gpt.MoEGPT.merge_plan`)."""
    blocks = converted_blocks(model)
    config = blocks[0].config
    experts = [b.experts_list() for b in blocks]
    with torch.autocast(experts[0][0].device.type, enabled=False):
        return propagate(
            experts,
            [b.base() for b in blocks],
            config,
            curvature=[b.curve for b in blocks],
        )


def _first_keys(cache: Any) -> Tensor | None:
    """The key tensor of the cache's first layer (transformers 5.x ``Cache.layers``), if any."""
    layers = getattr(cache, "layers", None)
    keys = getattr(layers[0], "keys", None) if layers else None
    return keys if isinstance(keys, Tensor) else None


def _cache_registry(model: nn.Module) -> weakref.WeakKeyDictionary[Any, _CacheEntry]:
    reg: weakref.WeakKeyDictionary[Any, _CacheEntry] | None = model.__dict__.get("namex_caches")
    if reg is None:
        reg = weakref.WeakKeyDictionary()
        model.__dict__["namex_caches"] = reg
    return reg


def _decode_states(
    model: nn.Module, blocks: list[HFMergedMoE], args: Any, kwargs: dict[str, Any]
) -> tuple[int, list[_SegmentState | None]] | None:
    """The cache offset of this call and each block's segment state, or None when no cache is
    used; refuses a non-empty cache the blocks cannot continue exactly."""
    try:
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except TypeError:  # let the model's own forward report the bad call
        bound = kwargs
    cache = bound.get("past_key_values")
    use_cache = bound.get("use_cache")
    if use_cache is None:
        use_cache = getattr(getattr(model, "config", None), "use_cache", False)
    if cache is None and not use_cache:
        return None
    past = 0
    if cache is not None:
        length = getattr(cache, "get_seq_length", None)
        if length is None:
            raise ValueError(
                f"past_key_values of type {type(cache).__name__} is not a transformers Cache; "
                "pass a Cache (e.g. DynamicCache) or use_cache=False"
            )
        past = int(length())
    config = blocks[0].config
    if past == 0:
        return (0, [None] * len(blocks)) if config.routing == "segment" else None
    method = config.method
    if config.router_per_matrix:
        raise ValueError(
            f"method {method!r} with router_per_matrix=True cannot continue from a non-empty "
            "past_key_values (W_down's router reads the previous segment's hidden activations, "
            "which the segment state does not keep); call the model on the whole sequence "
            "with use_cache=False"
        )
    if config.routing != "segment":
        raise ValueError(
            f"method {method!r} with routing='sequence' cannot continue from a non-empty "
            "past_key_values (every token's scores use the whole sequence's mean); call the "
            "model on the whole sequence with use_cache=False"
        )
    entry = _cache_registry(model).get(cache)
    if entry is None:
        raise ValueError(
            f"past_key_values holds {past} tokens that this converted model did not process "
            f"itself; method {method!r} needs its own segment state for them (docs/math.md §6, "
            "cached decoding): start from an empty cache, or pass use_cache=False"
        )
    if entry.offset != past or (entry.keys is not None and entry.keys() is not _first_keys(cache)):
        raise ValueError(
            f"past_key_values was changed outside this model's forward (cropped, reordered for "
            f"beam search, or otherwise rebuilt: {past} tokens, {entry.offset} when this "
            f"model last wrote it); method {method!r} cannot continue it exactly. Use "
            "num_beams=1 without assistant or contrastive decoding, or use_cache=False"
        )
    return past, list(entry.states)


def _pre_hook(model: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    blocks = converted_blocks(model)
    if blocks[0].config.spec.kind == "topk":
        return
    if kwargs.get("output_router_logits"):
        raise ValueError(
            f"output_router_logits=True: method {blocks[0].config.method!r} merges experts and "
            "has no token top-k router logits (no load-balancing loss); leave it False"
        )
    decode = _decode_states(model, blocks, args, kwargs)
    plan = _merge_plan(model)
    for i, (b, t) in enumerate(zip(blocks, plan.terms, strict=True)):
        b.terms = t
        b.aux_loss = None
        b.decode = None if decode is None else (decode[0], decode[1][i])
        b.next_state = None
    model.__dict__["namex_plan"] = plan  # observables (α, residuals, fallbacks) of the last forward


def _post_hook(model: nn.Module, args: Any, output: Any) -> None:
    blocks = converted_blocks(model)
    states = [b.next_state for b in blocks]
    for b in blocks:
        b.terms = None
        b.decode = None
        b.next_state = None
    cache = getattr(output, "past_key_values", None)
    if cache is None or any(st is None for st in states):
        return
    offset = int(cache.get_seq_length())
    if any(st is not None and st.offset != offset for st in states):
        return  # not a cache this model filled in step with its blocks: nothing to continue
    keys = _first_keys(cache)
    _cache_registry(model)[cache] = _CacheEntry(
        [st for st in states if st is not None], offset,
        None if keys is None else weakref.ref(keys),
    )


def convert(
    model: nn.Module,
    method: str = "namex-full-mom",
    *,
    base_rule: str = "perturbed-mean",
    seed: int = 0,
    merge_top_k: int | None = None,
    **merge_options: Any,
) -> nn.Module:
    """Replace every supported sparse MoE block of ``model`` in place; returns ``model``.

    method: a method of :data:`namex_ref.merging.config.METHODS`; merge_options: further
    :class:`MergeConfig` fields (``segment_len``, ``beta_abs``, ``singular_policy``, ...).
    ``n_experts`` and ``top_k`` come from the model. base_rule: :data:`BASE_RULES`
    (:func:`initial_base`), applied to layer 0 for first-layer methods and to every layer for
    per-layer ones. merge_top_k: see :class:`HFMergedMoE`. For merging methods the model's
    ``output_router_logits`` is set to False (no token top-k router, no balance loss).
    Cached generation (``use_cache=True``) gives the uncached logits for "segment" routing
    (:class:`HFMergedMoE`, "Cached decoding"); the cases it cannot continue raise ``ValueError``.

    The routed experts stay the pretrained parameters (no copy is made; one layer's base expert
    is the only new expert-sized tensor, formed one layer at a time). Raises ``ValueError`` for
    a model without supported blocks, an already converted model or an unsupported option.
    """
    require_transformers()
    if converted_blocks(model):
        raise ValueError("this model is already converted by namex_ref.hf.convert")
    for key, (default, why) in _UNSUPPORTED.items():
        if key in merge_options and merge_options[key] != default:
            raise ValueError(
                f"{key}={merge_options[key]!r} is not supported on Hugging Face models: {why}; "
                f"leave it at {default!r}"
            )
    if merge_options.get("base_init") == "expert0" and base_rule != "perturbed-mean":
        raise ValueError(
            f"base_init='expert0' sets the base expert to a copy of expert 0, so "
            f"base_rule={base_rule!r} would be ignored; pass one of them"
        )
    targets: list[tuple[nn.Module, str, Any]] = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child).__name__ in FAMILIES
    ]
    if not targets:
        raise ValueError(
            f"no supported sparse MoE block in {type(model).__name__}; supported: "
            f"{', '.join(FAMILIES)} (transformers 5.x)"
        )
    n = int(targets[0][2].gate.weight.shape[0])
    k = int(targets[0][2].gate.top_k)
    config = MergeConfig(method=method, n_experts=n, top_k=k, **merge_options)  # type: ignore[arg-type]
    if merge_top_k is not None and not 1 <= merge_top_k <= n:
        raise ValueError(f"merge_top_k must be in [1, {n}] or None, got {merge_top_k}")
    base_src = config.spec.base
    for layer, (parent, name, block) in enumerate(targets):
        has_base = base_src == "per-layer" or (base_src == "first-layer" and layer == 0)
        new = HFMergedMoE(
            block, config, has_base=has_base, base_rule=base_rule, seed=seed + layer,
            merge_top_k=merge_top_k,
        )
        new.train(block.training)  # the model's mode (the noisy gate draws noise in training)
        setattr(parent, name, new)  # the old block is dropped here, one layer at a time
    hf_config: Any = getattr(model, "config", None)
    if config.spec.kind != "topk" and getattr(hf_config, "output_router_logits", False):
        # the top-k balance loss has no meaning for a merged expert (the GPT merging layer's
        # softmax gate has none either), and transformers would find no router logits
        hf_config.output_router_logits = False
    model.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    model.register_forward_hook(_post_hook)
    model.__dict__["namex_options"] = {  # what load() needs to convert a fresh model the same way
        "method": method, "base_rule": base_rule, "seed": seed, "merge_top_k": merge_top_k,
        **merge_options,
    }
    return model


def save(model: Any, directory: str | Path, *, tokenizer_from: str | Path | None = None) -> Path:
    """Write a converted model to ``directory``: the transformers config (``config.json``), all
    parameters (``namex_model.safetensors``) and the conversion options (``namex_hf.json``).
    :func:`load` reads it back. ``tokenizer_from``: a folder whose tokenizer files
    (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``, those present)
    are copied along, for ``namex generate``."""
    require_transformers()
    from safetensors.torch import save_model

    if not converted_blocks(model):
        raise ValueError("save() writes a model converted by namex_ref.hf.convert")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    save_model(model, str(out / _WEIGHTS_FILE))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    meta = {"options": model.namex_options, "dtype": dtype, "format": 1}
    (out / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if tokenizer_from is not None:
        for name in _TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file():
                shutil.copy2(Path(tokenizer_from) / name, out / name)
    return out


def load(directory: str | Path) -> nn.Module:
    """Read a model written by :func:`save`: the architecture from ``config.json`` (no
    download), converted with the saved options, then every parameter from the file."""
    transformers = require_transformers()
    from safetensors.torch import load_model

    src = Path(directory)
    meta_path = src / _META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: {src} was not written by namex_ref.hf.save"
        )
    meta = json.loads(meta_path.read_text())
    config = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True)
    model: nn.Module = transformers.AutoModelForCausalLM.from_config(config)
    model.to(getattr(torch, meta["dtype"]))
    convert(model, **meta["options"])
    load_model(model, str(src / _WEIGHTS_FILE))
    model.eval()
    return model

