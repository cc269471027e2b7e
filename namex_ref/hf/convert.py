"""Convert the sparse MoE blocks of Hugging Face models to the NAMEx merging layer (S12–S18),
and save and load converted models.

Supported: the sparse MoE blocks of transformers 5.x whose experts follow the experts interface
and whose router has a family adapter (:mod:`namex_ref.hf.families`: Qwen2-MoE, Qwen3-MoE,
Mixtral, OLMoE, DeepSeek-V2, DeepSeek-V3, GLM-4-MoE; shared experts and router biases are kept as
they are; docs/hf.md). :func:`convert` replaces each block in
place by :class:`~namex_ref.hf.block.HFMergedMoE` and hooks the model's forward: the pre-hook
builds the base-expert chain (S15–S18, :func:`namex_ref.merging.functional.propagate`) once per
forward pass and hands each block its cached-decoding state (:mod:`namex_ref.hf.decode`), the
post-hook records the next state.

``expert_bias`` is refused: the pretrained SwiGLU experts have no biases. Generation with a KV
cache (``use_cache=True``) is exact for "segment" routing (docs/math.md §6, "Cached decoding of a
converted model"); beam search, a cropped or foreign cache, and "sequence" routing with a
non-empty cache raise ``ValueError`` naming ``use_cache=False``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from namex_ref.hf.auto import mark_converted, register
from namex_ref.hf.block import HFMergedMoE
from namex_ref.hf.decode import decode_states, record_states
from namex_ref.hf.extra import from_pretrained_quietly, require_transformers
from namex_ref.hf.families import FAMILIES, family_of, find_blocks
from namex_ref.merging.config import MergeConfig
from namex_ref.merging.functional import MergePlan, propagate

__all__ = ["convert", "converted_blocks", "is_converted_folder", "load", "save"]

_META_FILE = "namex_hf.json"  # the first save format (before from_pretrained), still read
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_WEIGHTS_FILE = "namex_model.safetensors"
# MergeConfig options of the GPT merging layer that the HF layer does not implement, and why.
_UNSUPPORTED = {
    "expert_bias": (
        False,
        "the pretrained SwiGLU experts of the supported families have no biases, so "
        "there is no b_i to form b_i − b_m from (new zero biases would be a different model)",
    ),
}


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



def _pre_hook(model: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    blocks = converted_blocks(model)
    if blocks[0].config.spec.kind == "topk":
        return
    if kwargs.get("output_router_logits"):
        raise ValueError(
            f"output_router_logits=True: method {blocks[0].config.method!r} merges experts and "
            "has no token top-k router logits (no load-balancing loss); leave it False"
        )
    decode = decode_states(model, len(blocks), blocks[0].config, args, kwargs)
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
    record_states(model, states, output)


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
    a model without MoE blocks, an already converted model or an unsupported option, and
    :class:`~namex_ref.hf.families.UnsupportedFamilyError` (a ``ValueError``) for a block no
    family adapter describes (its message lists the supported families).
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
    targets: list[tuple[nn.Module, str, Any]] = find_blocks(model)
    if not targets:
        raise ValueError(
            f"no supported sparse MoE block in {type(model).__name__} (no module with experts "
            f"in the transformers 5.x experts interface); supported families: "
            f"{', '.join(sorted(set(FAMILIES.values())))} (transformers 5.x)"
        )
    families = [family_of(block) for _, _, block in targets]  # refused before any change
    n = int(targets[0][2].experts.gate_up_proj.shape[0])
    k = families[0].top_k
    with torch.device("cpu"):  # its checks read values; from_pretrained builds under "meta"
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
    options = {  # what from_pretrained needs to convert a fresh model the same way
        "method": method, "base_rule": base_rule, "seed": seed, "merge_top_k": merge_top_k,
        **merge_options,
    }
    model.__dict__["namex_options"] = options
    mark_converted(model, families[0].name, options)
    return model


def save(model: Any, directory: str | Path, *, tokenizer_from: str | Path | None = None) -> Path:
    """Write a converted model to ``directory`` with ``model.save_pretrained``: ``config.json``
    (``model_type = "namex_<family>"``, the conversion options in its ``namex`` field) and
    ``model.safetensors`` (``save_original_format=False``: the parameters' own names and
    layout), which ``AutoModelForCausalLM.from_pretrained(directory)`` reads back
    once :mod:`namex_ref.hf` is imported (:mod:`namex_ref.hf.auto`; :func:`load` is that call).
    ``tokenizer_from``: a folder whose tokenizer files (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, those present) are copied along, for
    ``namex generate`` and ``namex eval``."""
    require_transformers()
    if not converted_blocks(model):
        raise ValueError("save() writes a model converted by namex_ref.hf.convert")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # the parameters as they are: transformers would otherwise write the checkpoint layout of
    # the source family (e.g. Mixtral's per-expert w1/w2/w3), which no loader maps back to a
    # converted model type
    model.save_pretrained(out, save_original_format=False)
    if tokenizer_from is not None:
        for name in _TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file():
                shutil.copy2(Path(tokenizer_from) / name, out / name)
    return out


def is_converted_folder(directory: str | Path) -> bool:
    """True when ``directory`` holds a model written by :func:`save`: its ``config.json`` has a
    ``model_type`` "namex_<family>", or it is a folder of the first format (``namex_hf.json``)."""
    src = Path(directory)
    if (src / _META_FILE).is_file():
        return True
    try:
        kind = json.loads((src / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(kind, str) and kind.startswith("namex_")


def load(directory: str | Path) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(directory)`` (local files only) of a folder written
    by :func:`save`, in eval mode. A folder of the first format (``namex_hf.json`` beside
    ``namex_model.safetensors``) is read as before: the architecture from ``config.json``,
    converted with the saved options, then every parameter from the file."""
    register()
    src = Path(directory)
    if (src / _META_FILE).is_file():
        return _load_format1(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(
            f"{src / 'config.json'} not found: {src} was not written by namex_ref.hf.save"
        )
    model: nn.Module = from_pretrained_quietly(str(src))
    if not converted_blocks(model):
        raise ValueError(
            f"{src} holds a model that was not converted by namex_ref.hf.convert (model_type "
            f"{getattr(model.config, 'model_type', '?')!r}); convert it first"
        )
    return model.eval()


def _load_format1(src: Path) -> nn.Module:
    transformers = require_transformers()
    from safetensors.torch import load_model

    meta = json.loads((src / _META_FILE).read_text())
    config = transformers.AutoConfig.from_pretrained(str(src), local_files_only=True)
    model: nn.Module = transformers.AutoModelForCausalLM.from_config(config)
    model.to(getattr(torch, meta["dtype"]))
    convert(model, **meta["options"])
    load_model(model, str(src / _WEIGHTS_FILE))
    model.eval()
    return model
