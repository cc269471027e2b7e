"""The command-line flags of :class:`~namex_ref.train.config.TrainConfig`, derived from its fields.

Every field becomes a flag ``--field-name`` (``--field_name`` is accepted too) whose type is the
field's annotation: ``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``), a
``Literal`` (choices) or ``X | None``: ``preset`` gives ``None`` for a MergeConfig override
(:data:`PRESET_VALUE`, the preset's value), ``none`` for the other optional fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from namex_ref.merging.config import METHODS
from namex_ref.models.gpt import PRESETS
from namex_ref.train.config import MERGE_OVERRIDES, TrainConfig, flag_name
from namex_ref.train.distributed import DEVICE_HELP

__all__ = ["PRESET_VALUE", "add_config_arguments", "config_from_args"]


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _scalar_parser(tp: Any) -> tuple[Any, list[str] | None]:
    """(argparse type, choices) for a non-optional annotation."""
    if get_origin(tp) is Literal:
        choices = [str(c) for c in get_args(tp)]
        return str, choices
    if tp is bool:
        return _parse_bool, None
    if tp in (int, float, str):
        return tp, None
    raise TypeError(f"no command-line parser for annotation {tp!r}")


PRESET_VALUE = "preset"
"""The command-line value of a MergeConfig override flag (``--gate``, ``--beta-abs``, ...) that
keeps the preset's value, i.e. the field's ``None``. Not ``none``: ``--sign-mask none`` is a
real choice (no mask), and ``--gate none`` read as "no gate" while it kept the preset's gate."""


def _optional(parse: Any, choices: list[str] | None, flag: str, *, override: bool) -> Any:
    """Parser of an ``X | None`` field's flag: ``preset`` (a merge override) or ``none`` (any
    other optional field) gives ``None``; for a numeric or boolean override ``none`` is read
    as ``preset`` too (it has no other meaning there)."""
    keep = PRESET_VALUE if override else "none"

    def convert(text: str) -> Any:
        low = text.strip().lower()
        if low == keep or (low == "none" and choices is None):
            return None
        if choices is not None and text not in choices:
            hint = ""
            if low == "none":
                hint = f"; {flag} has no 'none' ({keep} keeps the preset's value)"
            raise argparse.ArgumentTypeError(
                f"choose one of {', '.join(choices)} or {keep}, got {text!r}{hint}"
            )
        return parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


_HELP: dict[str, str] = {
    "preset": "model preset: " + ", ".join(PRESETS),
    "method": "merging method: " + ", ".join(METHODS),
    "seed": "model initialisation and batch order; batch k is a function of (seed, k)",
    "steps": "training steps; a finished run resumed with more steps continues (docs/guide.md)",
    "batch_size": "global batch (split over DDP ranks); per micro-batch with --grad-accum",
    "grad_accum": "micro-batches of --batch-size per step, gradients summed: the update of a "
    "K-times larger batch with the memory of one",
    "lr": "peak learning rate (AdamW)",
    "warmup": "linear warmup steps, clamped to the schedule length (a note is printed)",
    "min_lr_ratio": "the cosine decays to lr * this at the schedule's end",
    "schedule_steps": "length of the lr schedule; 0 = --steps; later steps use the floor lr",
    "weight_decay": "AdamW weight decay on matrices and embeddings",
    "grad_clip": "global gradient-norm clip; 0 = no clipping",
    "precision": "fp32, or autocast to bf16 (recommended on CUDA) or fp16 (with a gradient "
    "scaler); weights, optimizer state and the bargain stay fp32/fp64 (docs/training.md)",
    "eval_every": "steps between validation evaluations; 0 = only the final one",
    "eval_batches": "validation batches per periodic evaluation",
    "final_eval_batches": "0 = the whole validation split",
    "log_every": "steps between metrics lines (and progress lines when stdout is no TTY)",
    "ckpt_every": "steps between checkpoints; the last step is always saved; 0 = last only",
    "device": DEVICE_HELP,
    "threads": "torch CPU threads; 0 = torch's default",
    "progress": "tqdm bar on a terminal, progress lines otherwise (train.log is always written)",
    "tensorboard": "also write the metrics as TensorBoard scalars to OUT/tensorboard (needs "
    "the extra: pip install 'namex-ref[tensorboard]')",
    "out": "run folder: metrics.jsonl, train.log, checkpoints, plots, result.json",
    "data": "builtin (World English Bible) or wikitext (raw files in --wikitext-dir)",
    "wikitext_dir": "folder holding the WikiText-103 raw files (with --data wikitext)",
    "max_chars": "read at most this many characters per WikiText file; 0 = all",
    "corpus_chars": "use only the first characters of the built-in corpus; 0 = all",
    "val_frac": "fraction of the built-in corpus held out for validation",
    "test_frac": "fraction of the built-in corpus held out for testing",
    "cache_dir": "tokenizer / token-id cache; '' = $NAMEX_CACHE or ~/.cache/namex-ref",
    "beta_abs": "|beta| of the complex momentum (namex-mom, namex-full-mom; S17)",
    "beta_phase": "phase of the complex momentum in radians (S17)",
    "alpha_interval": "re-solve alpha every this many MoE layers (the -full methods)",
    "singular_policy": "what a layer does when its bargain has no solution (namex methods)",
    "gamma": "propagation step gamma (S15-S18; methods that propagate a base expert)",
    "eta": "merge step eta (S14; methods with a base expert)",
    "newton_iterations": "fixed Newton budget per bargain solve (namex methods)",
    "balance_coef": "weight of the load-balancing loss (smoe; for a --hf-model run, of the "
    "model's own router loss)",
    "kronecker_terms": "Kronecker curvature terms per expert and weight matrix, M_i = "
    "Σ_j (A_ij⊗B_ij) τ_i (C_ij⊗D_ij)ᵀ (CAMEx's rank_c; methods with curvature: camex, ep-camex, "
    "namex*; docs/math.md §6)",
    "term_dropout": "in training, drop each (segment, expert) merge term with this probability "
    "and scale the kept ones by 1/(1 − p) (CAMEx's Dropout2d); 0 = off",
    "sign_mask": "mask on the merge terms: none (no mask), ties (keep the entries of τ_i whose "
    "sign agrees with Σ_j τ_j) or dare (a Bernoulli(--dare-keep) mask, training only)",
    "dare_keep": "keep probability of --sign-mask dare, in (0, 1] (the preset's: 0.9)",
    "gate": "router of the merging methods: softmax (the plain router softmax) or noisy-top-k "
    "(Shazeer et al.'s noisy gate over the --gate-top-k best experts, with a --balance-coef "
    "loss)",
    "gate_top_k": "k of --gate noisy-top-k (the preset's: all experts)",
    "router_per_matrix": "one router per expert weight matrix, the second reading the hidden "
    "activations (CAMEx's c_proj router); true/false",
    "base_init": "initial base expert: independent (its own N(0, 0.02²) draw) or expert0 (a "
    "copy of expert 0, CAMEx's init_res)",
    "expert_bias": "give the experts and the base expert biases, merged like the weights "
    "(CAMEx's bias terms); true/false",
    "merge_preset": "a bundle of the CAMEx options above: camex-paper = the CAMEx language-model "
    "script's (8 Kronecker terms, ties, noisy-top-k, one router per matrix, expert0, biases); "
    "explicit flags win; none = no bundle",
    "segment_len": "tokens per causal routing segment (merging methods; 32 for --hf-model)",
    "seq_len": "tokens per training window; 0 = the preset's (128 for --hf-model)",
    "hf_model": "fine-tune this local Hugging Face MoE model folder (Qwen2-MoE, Mixtral, "
    "OLMoE; save_pretrained output) instead of the GPT preset; needs the hf extra",
    "base_rule": "initial base expert of a --hf-model conversion (docs/math.md, section 6)",
    "merge_top_k": "merge only the k highest-scored experts per segment; 0 = all (--hf-model)",
}


def add_config_arguments(
    parser: argparse.ArgumentParser, *, exclude: frozenset[str] = frozenset()
) -> None:
    """Add one flag per :class:`TrainConfig` field (except ``exclude``), default = field default.

    Flags left unset parse to the field default, so ``TrainConfig(**parsed)`` equals the API
    default. Types come from the annotations (see module docstring).
    """
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        names = [flag_name(f.name)]
        if "_" in f.name:
            names.append("--" + f.name)
        help_default = f"{_HELP.get(f.name, '')} (default: {f.default!r})".strip()
        if tp is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                help=help_default,
            )
            continue
        args = get_args(tp)
        optional = (get_origin(tp) in (Union, types.UnionType)) and type(None) in args
        if optional:
            inner = [a for a in args if a is not type(None)]
            inner_tp = inner[0] if len(inner) == 1 else Union[tuple(inner)]  # noqa: UP007
            parse, choices = _scalar_parser(inner_tp)
            override = f.name in MERGE_OVERRIDES
            keep = PRESET_VALUE if override else "none"
            what = " = the preset's value" if override else ""
            parser.add_argument(
                *names, dest=f.name, default=f.default,
                type=_optional(parse, choices, flag_name(f.name), override=override),
                metavar=f"{{{','.join([*(choices or []), keep])}}}" if choices else None,
                help=f"{_HELP.get(f.name, '')} (default: {keep}{what})".strip(),
            )
        else:
            parse, choices = _scalar_parser(tp)
            parser.add_argument(
                *names, dest=f.name, type=parse, choices=choices, default=f.default,
                help=help_default,
            )


def config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """A :class:`TrainConfig` from parsed flags (``fixed`` values take precedence)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    values.update(fixed)
    return TrainConfig(**values)
