"""Which Hugging Face sparse MoE blocks :func:`namex_ref.hf.convert` replaces, described by the
experts interface and a family adapter for the router (docs/hf.md).

A block is found by its structure, not its class: a module with a ``gate`` (router) and an
``experts`` module in transformers 5.x's experts interface: exactly two parameters,
``gate_up_proj`` (N, 2I, H) and ``down_proj`` (N, H, I), and an elementwise ``act_fn``, so
expert i is f_i(x) = W_down,i (act(W_gate,i x) ∘ W_up,i x). What differs between families is
the router and the parts around the experts; a :class:`Family` describes them:

- the score of expert i from the router logit l_i = w_i·x: softmax over the N experts
  (Qwen2/3-MoE, Mixtral, OLMoE, DeepSeek-V2) or an elementwise sigmoid (DeepSeek-V3, GLM-4-MoE);
- the token top-k: renormalised to sum 1 or not; group-limited (the experts in ``n_group``
  groups, only the best ``topk_group`` groups eligible; a group's score is its best expert's,
  DeepSeek-V2, or the sum of its best two, DeepSeek-V3); a score-correction bias b added to the
  scores for the choice only (DeepSeek-V3's auxiliary-loss-free balancing);
- the routed scaling factor c multiplying the routed output;
- the shared experts: none, gated by sigmoid(x w_sg) (Qwen2-MoE), or ungated (DeepSeek, GLM).

The pass-through ("smoe") runs the block's own router and experts, so it reproduces the model
whatever the rule. The merging methods use the rule through :func:`merge_scores`: the family's
scores of a segment mean, restricted to the ``merge_top_k`` experts the family's own choice rule
picks (bias and groups included), normalised to sum 1 (S13's convex combination); the merged
expert's output is multiplied by c, as the routed output is in the model.

A block whose router has no adapter, or whose experts carry more than the two matrices (GPT-OSS:
expert biases and a clamped, gated activation), raises :class:`UnsupportedFamilyError` naming the
supported routers: merging biases b_i − b_m and a clamp that is not elementwise in one matrix
needs a decision on what the merged expert is (docs/hf.md, "Unsupported families").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FAMILIES", "Family", "UnsupportedFamilyError", "family_of", "find_blocks",
           "merge_scores", "select_experts"]


class UnsupportedFamilyError(ValueError):
    """A sparse MoE block that no family adapter describes; the message lists the supported."""


@dataclass(frozen=True)
class Family:
    """The router and the parts around the experts of one family (module docstring).

    name: the family (``model_type`` of its config); scoring: "softmax" or "sigmoid";
    top_k: k of the token top-k; renormalise: the token top-k weights divided by their sum;
    n_group, topk_group: group-limited top-k (1, 1: none); group_score: "max" (DeepSeek-V2) or
    "top2-sum" (DeepSeek-V3); correction_bias: the router's ``e_score_correction_bias`` (N,)
    float32 is added for the choice; scaling: the routed scaling factor c;
    float32_logits: the router computes its logits in float32 (DeepSeek, GLM);
    shared: "none", "gated" (``shared_expert`` + ``shared_expert_gate``) or "ungated"
    (``shared_experts``); activation: the experts' ``hidden_act``.
    """

    name: str
    scoring: Literal["softmax", "sigmoid"]
    top_k: int
    renormalise: bool
    n_group: int = 1
    topk_group: int = 1
    group_score: Literal["max", "top2-sum"] = "max"
    correction_bias: bool = False
    scaling: float = 1.0
    float32_logits: bool = False
    shared: Literal["none", "gated", "ungated"] = "none"
    activation: str = "silu"


def _softmax_topk(name: str, gate: Any, block: Any) -> Family:
    renorm = bool(getattr(gate, "norm_topk_prob", True))  # Mixtral: always renormalised
    return Family(name, "softmax", int(gate.top_k), renorm, shared=_shared(block))


def _softmax_grouped(name: str, gate: Any, block: Any) -> Family:
    grouped = gate.topk_method == "group_limited_greedy"
    return Family(
        name, "softmax", int(gate.top_k), False,
        n_group=int(gate.num_group) if grouped else 1,
        topk_group=int(gate.topk_group) if grouped else 1,
        group_score="max", scaling=float(gate.routed_scaling_factor), float32_logits=True,
        shared=_shared(block),
    )


def _sigmoid_grouped(name: str, gate: Any, block: Any) -> Family:
    return Family(
        name, "sigmoid", int(gate.top_k), bool(gate.norm_topk_prob),
        n_group=int(gate.num_group), topk_group=int(gate.topk_group),
        group_score="top2-sum", correction_bias=True,
        scaling=float(gate.routed_scaling_factor), float32_logits=True,
        shared=_shared(block),
    )


FAMILIES: dict[str, str] = {
    "Qwen2MoeTopKRouter": "qwen2_moe",
    "Qwen3MoeTopKRouter": "qwen3_moe",
    "MixtralTopKRouter": "mixtral",
    "OlmoeTopKRouter": "olmoe",
    "DeepseekV2TopkRouter": "deepseek_v2",
    "DeepseekV3TopkRouter": "deepseek_v3",
    "Glm4MoeTopkRouter": "glm4_moe",
}
"""Router classes (transformers 5.x) with a family adapter, and their family."""

_ADAPTERS: dict[str, Callable[[str, Any, Any], Family]] = {
    "qwen2_moe": _softmax_topk,  # + the gated shared expert
    "qwen3_moe": _softmax_topk,
    "mixtral": _softmax_topk,
    "olmoe": _softmax_topk,
    "deepseek_v2": _softmax_grouped,
    "deepseek_v3": _sigmoid_grouped,
    "glm4_moe": _sigmoid_grouped,
}


def _shared(block: Any) -> Literal["none", "gated", "ungated"]:
    if getattr(block, "shared_expert", None) is not None:
        return "gated" if getattr(block, "shared_expert_gate", None) is not None else "ungated"
    return "ungated" if getattr(block, "shared_experts", None) is not None else "none"


def _experts_interface(experts: nn.Module) -> bool:
    """True when ``experts`` holds the 3-D SwiGLU stacks (module docstring) and nothing more."""
    params = dict(experts.named_parameters(recurse=True))
    gu, down = params.get("gate_up_proj"), params.get("down_proj")
    if gu is None or down is None or gu.dim() != 3 or down.dim() != 3:
        return False
    n, two_i, h = gu.shape
    return (set(params) == {"gate_up_proj", "down_proj"} and tuple(down.shape) == (n, h, two_i // 2)
            and two_i % 2 == 0 and callable(getattr(experts, "act_fn", None)))


def find_blocks(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    """Every sparse MoE block of ``model`` in module order, as (parent, attribute name, block):
    a module with an ``experts`` child that has a 3-D ``gate_up_proj`` parameter."""
    found: list[tuple[nn.Module, str, Any]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            experts = getattr(child, "experts", None)
            gu = getattr(experts, "gate_up_proj", None)
            if isinstance(experts, nn.Module) and isinstance(gu, Tensor) and gu.dim() == 3:
                found.append((parent, name, child))
    return found


def family_of(block: nn.Module) -> Family:
    """The :class:`Family` of a block found by :func:`find_blocks`.

    Raises:
        UnsupportedFamilyError: no adapter for its router, or experts outside the interface
            (biases, a clamped activation, another layout); the message lists the supported.
    """
    gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
    kind = type(block).__name__
    supported = f"supported families: {', '.join(sorted(_ADAPTERS))} (transformers 5.x)"
    if experts is None or not _experts_interface(experts):
        extra = sorted(set(dict(experts.named_parameters()) if experts is not None else {})
                       - {"gate_up_proj", "down_proj"})
        raise UnsupportedFamilyError(
            f"{kind}: its experts are not plain SwiGLU stacks gate_up_proj (N, 2I, H) and "
            f"down_proj (N, H, I){f' (extra parameters: {extra})' if extra else ''}; merging "
            f"expert biases or a clamped activation is not defined here (docs/hf.md, "
            f"'Unsupported families'); {supported}"
        )
    name = FAMILIES.get(type(gate).__name__)
    if name is None:
        raise UnsupportedFamilyError(
            f"{kind}: no family adapter for its router {type(gate).__name__}; {supported}"
        )
    fam = _ADAPTERS[name](name, gate, block)
    return Family(**{**fam.__dict__, "activation": _act_name(experts)})


def _act_name(experts: Any) -> str:
    act = experts.act_fn
    return str(getattr(getattr(act, "__class__", None), "__name__", "act"))


def router_logits(family: Family, weight: Tensor, x: Tensor) -> Tensor:
    """The router logits l = x Wᵀ (…, N) of inputs x (…, H), in float32 for the families whose
    router computes them there, else in x's dtype (as the pretrained router)."""
    if family.float32_logits:
        return F.linear(x.float(), weight.float())
    return F.linear(x, weight)


def select_experts(family: Family, scores: Tensor, k: int, bias: Tensor | None) -> Tensor:
    """The family's choice of k experts: indices (R, k) of scores (R, N) float32 (softmax or
    sigmoid), with the correction ``bias`` (N,) added for the choice and the group limit
    (``n_group`` groups of N / n_group, the best ``topk_group`` by max or top-2 sum eligible)."""
    key = scores if bias is None else scores + bias.to(scores.dtype)
    g = family.n_group
    if g > 1:
        R, N = key.shape
        grouped = key.reshape(R, g, N // g)  # (R, G, N/G)
        gs = (grouped.max(-1).values if family.group_score == "max"
              else grouped.topk(2, dim=-1).values.sum(-1))  # (R, G)
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter(
            1, gs.topk(family.topk_group, dim=-1).indices, True)
        key = key.masked_fill(~keep[:, :, None].expand(R, g, N // g).reshape(R, N), -torch.inf)
    return key.topk(k, dim=-1).indices


def merge_scores(
    family: Family, logits: Tensor, k: int | None, bias: Tensor | None = None
) -> Tensor:
    """Merge scores (…, N) float32 from router logits (…, N): the family's scores (softmax, or
    sigmoid), kept on the k experts :func:`select_experts` picks (all N for k = None) and
    normalised to sum 1. For softmax and k = None this is softmax(l) (S13)."""
    lf = logits.float()
    if family.scoring == "softmax":
        s = F.softmax(lf, dim=-1)
    else:
        s = torch.sigmoid(lf)
    n = s.shape[-1]
    if k is not None and k < n:
        flat = s.reshape(-1, n)
        idx = select_experts(family, flat, k, bias)
        flat = torch.zeros_like(flat).scatter(-1, idx, flat.gather(-1, idx))
        s = flat.reshape(s.shape)
    elif family.scoring == "softmax":
        return s
    return s / s.sum(-1, keepdim=True)
