"""A small decoder-only GPT whose every feed-forward block is an MoE layer (docs/math.md §3).

Pre-LayerNorm blocks (causal self-attention, then :class:`MoEFeedForward`), learned positions,
tied input/output embeddings. Before the blocks run, :func:`namex_ref.merging.plan.propagate`
builds every layer's merge terms from the parameters alone (the base-expert chain of S15–S18
does not depend on the tokens), so the chain is computed once per forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from namex_ref.checks import require_int, require_real
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.layers import INIT_STD, MoEFeedForward
from namex_ref.merging.plan import LayerTerms, MergePlan, cosine_matrix, propagate
from namex_ref.nash.gram import domain_vectors, off_diagonal_mean
from namex_ref.regions import PROPAGATION, region

__all__ = ["PRESETS", "MoEGPT", "ModelConfig", "ModelOutput", "count_parameters", "preset"]


@dataclass(frozen=True)
class ModelConfig:
    """Transformer shape plus the MoE layer's :class:`MergeConfig`.

    vocab_size V, d_model C, n_layer L (every block is MoE), n_head, d_ff F (expert hidden
    width), seq_len T_max (positions), dropout.
    """

    vocab_size: int = 2048
    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 128
    seq_len: int = 128
    dropout: float = 0.0
    merge: MergeConfig = field(default_factory=MergeConfig)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "seq_len"):
            require_int(name, getattr(self, name), low=1)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        require_real("dropout", self.dropout, low=0, high=1, high_open=True)
        if not isinstance(self.merge, MergeConfig):
            raise ValueError(f"merge must be a MergeConfig, got {type(self.merge).__name__}")

    def with_method(self, method: str, **merge_overrides: Any) -> ModelConfig:
        """A copy with another merging method (and optional MergeConfig overrides)."""
        merge = dataclasses.replace(self.merge, method=method, **merge_overrides)  # type: ignore[arg-type]
        return dataclasses.replace(self, merge=merge)


# Presets. tiny: trains in about a minute on 2 CPU cores; small ≈ 70M and medium ≈ 216M
# parameters (the paper's WikiText-103 size) for a GPU; counts are checked in the tests.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=2048,
        d_model=64,
        n_layer=4,
        n_head=4,
        d_ff=128,
        seq_len=128,
        merge=MergeConfig(n_experts=4, segment_len=32),
    ),
    "small": ModelConfig(
        vocab_size=16384,
        d_model=512,
        n_layer=6,
        n_head=8,
        d_ff=1024,
        seq_len=512,
        merge=MergeConfig(n_experts=8, segment_len=128),
    ),
    "medium": ModelConfig(
        vocab_size=32768,
        d_model=512,
        n_layer=8,
        n_head=8,
        d_ff=1408,
        seq_len=512,
        merge=MergeConfig(n_experts=16, segment_len=128),
    ),
}


def preset(name: str, method: str | None = None, **merge_overrides: Any) -> ModelConfig:
    """A preset's ModelConfig, optionally with another method / MergeConfig overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if method is None and not merge_overrides:
        return cfg
    return cfg.with_method(method or cfg.merge.method, **merge_overrides)


def count_parameters(config: ModelConfig) -> int:
    """Number of trainable parameters, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = MoEGPT(config)
    return int(sum(p.numel() for p in model.parameters()))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C = config.d_model
        self.n_head = config.n_head
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.dropout = config.dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, T, D)
        out: Tensor = self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return out


class Block(nn.Module):
    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        spec = config.merge.spec
        has_base = spec.base == "per-layer" or (spec.base == "first-layer" and index == 0)
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.moe = MoEFeedForward(config.d_model, config.d_ff, config.merge, has_base=has_base)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, terms: LayerTerms | None) -> tuple[Tensor, Tensor]:
        x = x + self.drop(self.attn(self.ln1(x)))
        out = self.moe(self.ln2(x), terms)
        return x + self.drop(out.y), out.aux_loss


class LayerStats(NamedTuple):
    """Observables of one forward pass, as tensors (read them when logging; no host sync here).

    alphas (L, N), residuals (L,), fallbacks (L,) bool, base_norms (L,): see
    :class:`~namex_ref.merging.plan.MergePlan`. cosine: (L,) mean off-diagonal cosine
    similarity between the layer's domain vectors τ_i (methods with a base) or experts E_i
    (SMoE, SMEAR), as in the paper's Fig. 1; NaN unless ``collect_stats``.
    """

    alphas: Tensor
    residuals: Tensor
    fallbacks: Tensor
    base_norms: Tensor
    cosine: Tensor


class ModelOutput(NamedTuple):
    """logits (B, T, V); loss: () mean next-token cross-entropy + auxiliary loss, or None
    without targets; ce: () the cross-entropy alone; aux_loss: () summed balance losses."""

    logits: Tensor
    loss: Tensor | None
    ce: Tensor | None
    aux_loss: Tensor
    stats: LayerStats


class MoEGPT(nn.Module):
    """Decoder-only MoE transformer; ``forward(idx, targets)`` → :class:`ModelOutput`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear) and "router" not in name:
                nn.init.normal_(mod.weight, std=INIT_STD)
            if isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, std=INIT_STD)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight"):  # GPT-2 residual scaling
                nn.init.normal_(p, std=INIT_STD / math.sqrt(2 * config.n_layer))

    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.moe for b in self.blocks if isinstance(b, Block)]

    def merge_plan(self) -> MergePlan:
        """Every layer's merge terms from the current parameters (S13–S18), in the parameters'
        precision whatever the autocast state (the bargain in float64; docs/math.md, "Mixed
        precision")."""
        layers = self.moe_layers()
        with torch.autocast(self.tok.weight.device.type, enabled=False), region(PROPAGATION):
            return propagate(
                [m.experts() for m in layers],
                [m.base() for m in layers],
                self.config.merge,
                curvature=[m.curve for m in layers],
            )

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, *, collect_stats: bool = False
    ) -> ModelOutput:
        """idx: (B, T) int64 token ids, T ≤ seq_len; targets: (B, T) or None."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.seq_len:
            raise ValueError(
                f"sequence length {T} exceeds the model's seq_len {self.config.seq_len}"
            )
        plan = self.merge_plan()
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos)[None])  # (B, T, C)
        aux = x.new_zeros(())
        for block, terms in zip(self.blocks, plan.terms, strict=True):
            x, a = block(x, terms)
            aux = aux + a
        logits = self.head(self.ln_f(x))  # (B, T, V)
        ce = loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
            loss = ce + aux
        cos = torch.full_like(plan.residuals, math.nan)
        if collect_stats:
            for l, terms in enumerate(plan.terms):
                mats = (
                    terms.deltas
                    if terms.base is None
                    else domain_vectors(self.moe_layers()[l].experts(), terms.base)
                )
                cos[l] = off_diagonal_mean(cosine_matrix(mats))
        stats = LayerStats(plan.alphas, plan.residuals, plan.fallbacks, plan.base_norms, cos)
        return ModelOutput(logits, loss, ce, aux, stats)
