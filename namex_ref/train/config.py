"""Training configuration: one frozen dataclass, validated on construction, and the command-line
flags derived from its fields (so ``namex train`` and :func:`namex_ref.train.train` agree).

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
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from namex_ref.checks import require_int, require_real
from namex_ref.merging.config import CAMEX_PAPER, METHODS
from namex_ref.models.gpt import PRESETS, ModelConfig, preset
from namex_ref.train.distributed import DEVICE_HELP, check_device_name

__all__ = [
    "MERGE_OVERRIDES",
    "MERGE_PRESETS",
    "PRESET_VALUE",
    "RUN_CONTROL_FIELDS",
    "TrainConfig",
    "add_config_arguments",
    "config_from_args",
    "flag_name",
    "ignored_overrides",
]

DataSource = Literal["builtin", "wikitext"]
BaseRule = Literal["perturbed-mean", "mean", "zero"]
PrecisionName = Literal["fp32", "bf16", "fp16"]

MERGE_OVERRIDES: tuple[str, ...] = (
    "beta_abs",
    "beta_phase",
    "alpha_interval",
    "singular_policy",
    "gamma",
    "eta",
    "newton_iterations",
    "balance_coef",
    "kronecker_terms",
    "term_dropout",
    "sign_mask",
    "dare_keep",
    "gate",
    "gate_top_k",
    "router_per_matrix",
    "base_init",
    "expert_bias",
    "segment_len",
)
"""TrainConfig fields that, when not ``None``, override the preset's MergeConfig field."""

# What a method must do for an override to have any effect (MethodSpec of namex_ref.merging):
# the reason is printed when the override is refused.
# The CAMEx options (kronecker_terms, sign_mask, gate, ...) are refused for methods that cannot
# use them by MergeConfig's own validation; balance_coef also weighs the noisy gate's loss.
_OVERRIDE_USE: dict[str, tuple[Any, str]] = {
    "balance_coef": (
        lambda sp, ov: sp.kind == "topk" or ov.get("gate") == "noisy-top-k",
        "has no load-balancing loss (smoe, or a merging method with --gate noisy-top-k)",
    ),
    "eta": (
        lambda sp, ov: sp.kind == "merge" and sp.base != "none",
        "merges without a base expert",
    ),
    "gamma": (lambda sp, ov: sp.propagation != "none", "propagates no base expert"),
    "beta_abs": (lambda sp, ov: sp.momentum == "complex", "uses no complex momentum"),
    "beta_phase": (lambda sp, ov: sp.momentum == "complex", "uses no complex momentum"),
    "alpha_interval": (
        lambda sp, ov: sp.propagation == "nash" and sp.resolve == "interval",
        "does not re-solve α every Δl layers",
    ),
    "singular_policy": (lambda sp, ov: sp.propagation == "nash", "solves no Nash bargain"),
    "segment_len": (lambda sp, ov: sp.kind != "topk", "routes each token, not segments"),
    "newton_iterations": (lambda sp, ov: sp.propagation == "nash", "solves no Nash bargain"),
}


def ignored_overrides(method: str, overrides: dict[str, Any]) -> dict[str, str]:
    """The merge overrides (field -> reason) that ``method`` would ignore.

    Example: ``ignored_overrides("smoe", {"singular_policy": "raise"})`` ->
    ``{"singular_policy": "solves no Nash bargain"}``.
    """
    from namex_ref.merging.config import METHOD_TABLE

    spec = METHOD_TABLE[method]
    return {
        k: _OVERRIDE_USE[k][1]
        for k, v in overrides.items()
        if v is not None and k in _OVERRIDE_USE and not _OVERRIDE_USE[k][0](spec, overrides)
    }

MERGE_PRESETS: dict[str, dict[str, object]] = {"camex-paper": CAMEX_PAPER}
"""Named bundles of MergeConfig overrides (``--merge-preset``); explicit overrides win."""

RUN_CONTROL_FIELDS: frozenset[str] = frozenset(
    {"out", "device", "progress", "cache_dir", "threads", "log_every", "eval_every",
     "ckpt_every"}
)
"""Fields that do not change the training trajectory (where the run writes, how it reports,
evaluates and checkpoints, on which device and how many threads); a resumed run may change
them, and the change is announced. Every other field is a trajectory field: a resume that
changes one is refused (except ``steps``, which may grow). Note: another device or thread count
reorders floating-point reductions, so the continued run is then equal to an uninterrupted one
only to rounding."""


def flag_name(field: str) -> str:
    """The command-line flag of a TrainConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on. Defaults: the tiny preset on the built-in corpus,
    sized so one run takes well under a minute on 2 CPU cores (docs/guide.md).

    preset / method: the model (:data:`namex_ref.models.gpt.PRESETS`) and merging method
        (:data:`namex_ref.merging.config.METHODS`).
    seed: model initialisation and batch sampling; batch ``k`` is a pure function of
        ``(seed, k)`` (resume is exact).
    grad_accum: micro-batches per step (K): each step draws K·``batch_size`` windows, runs them
        ``batch_size`` at a time and adds the gradients (losses divided by K), so the update is
        that of ``batch_size`` = K·``batch_size`` without accumulation, to float rounding
        (exactly the same windows; SMoE's balance loss and the noisy gate are per micro-batch).
    steps, batch_size (global, split evenly over DDP ranks), lr (peak), warmup (linear, steps;
    clamped to the schedule's length, with a printed note), min_lr_ratio (cosine decays to
    ``lr * min_lr_ratio`` at the schedule's last step), schedule_steps (length of the lr
    schedule; 0 = ``steps``; steps beyond it run at the floor lr; a resumed run that asks for
    more steps keeps its checkpoint's schedule this way), weight_decay (AdamW, on matrices
    only), grad_clip (global norm; 0 = no clipping, the norm is still logged).
    precision: "fp32" (default), "bf16" or "fp16": the forward under autocast to that dtype
        (fp16 with a gradient scaler); parameters, AdamW state and the merge plan stay float32
        (the bargain float64). :mod:`namex_ref.train.precision`.
    eval_every (steps; 0 = only the final evaluation), eval_batches (batches of validation
        windows per periodic evaluation), final_eval_batches (0 = the whole validation split).
    log_every (steps between metric lines and host synchronisations), ckpt_every (steps between
        checkpoints; the final step is always checkpointed; 0 = final only).
    device: "cpu", "cuda" or "auto" (cuda when available). threads: torch CPU threads during the
        run; 0 = torch's default (all cores). Default 1: the tiny preset's kernels are so small
        that 2 threads gain only ~1.5x on an idle 2-core machine and lose 4-8x when other
        processes share the cores (OpenMP barriers); use 0 for the larger presets on a CPU.
        progress: tqdm bar (only on a TTY).
    out: run folder (metrics.jsonl, checkpoint.safetensors, result.json, plots).
    data: "builtin" (World English Bible, split val_frac/test_frac) or "wikitext" (raw files in
        wikitext_dir; max_chars per file, 0 = all). corpus_chars: use only the first characters
        of the built-in corpus (0 = all; for quick tests). cache_dir: tokenizer and token-id
        cache ("" = ``$NAMEX_CACHE`` or ``~/.cache/namex-ref``).
    beta_abs ... balance_coef: optional MergeConfig overrides (``None`` = the preset's value).
    kronecker_terms ... expert_bias: optional overrides of the CAMEx-code options of
        :class:`~namex_ref.merging.config.MergeConfig` (``None`` = the preset's value).
    merge_preset: a named bundle of MergeConfig overrides applied before the explicit ones;
        "camex-paper" is :data:`~namex_ref.merging.config.CAMEX_PAPER` (the CAMEx scripts'
        rank_c 8, TIES, noisy gate with k = N, ...). ``None`` = none.
    segment_len: tokens per causal routing segment (merging methods; ``None`` = the preset's,
        32 for Hugging Face models).
    seq_len: tokens per training window; 0 = the preset's ``seq_len`` (GPT), or
        min(128, ``max_position_embeddings``) for a Hugging Face model.
    hf_model: a local Hugging Face MoE model folder (``save_pretrained`` output: config.json and
        safetensors; Qwen2-MoE, Mixtral or OLMoE) to convert (:func:`namex_ref.hf.convert`) and
        fine-tune instead of building the GPT preset; "" = the GPT. Needs the ``hf`` extra. The
        converted, fine-tuned model is written to ``out/model`` (:func:`namex_ref.hf.load`).
    base_rule, merge_top_k: the initial base expert (:data:`namex_ref.hf.BASE_RULES`) and the
        number of experts merged per segment (0 = all) of a ``hf_model`` conversion; refused
        without ``hf_model``.
    """

    preset: str = "tiny"
    method: str = "namex-full-mom"
    seed: int = 0
    steps: int = 400
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    warmup: int = 40
    min_lr_ratio: float = 0.1
    schedule_steps: int = 0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: PrecisionName = "fp32"
    eval_every: int = 50
    eval_batches: int = 4
    final_eval_batches: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    device: str = "auto"
    threads: int = 1
    progress: bool = True
    out: str = "runs/train"
    data: DataSource = "builtin"
    wikitext_dir: str = ""
    max_chars: int = 0
    corpus_chars: int = 0
    val_frac: float = 0.05
    test_frac: float = 0.05
    cache_dir: str = ""
    beta_abs: float | None = None
    beta_phase: float | None = None
    alpha_interval: int | None = None
    singular_policy: Literal["raise", "ridge", "uniform"] | None = None
    gamma: float | None = None
    eta: float | None = None
    newton_iterations: int | None = None
    balance_coef: float | None = None
    kronecker_terms: int | None = None
    term_dropout: float | None = None
    sign_mask: Literal["none", "ties", "dare"] | None = None
    dare_keep: float | None = None
    gate: Literal["softmax", "noisy-top-k"] | None = None
    gate_top_k: int | None = None
    router_per_matrix: bool | None = None
    base_init: Literal["independent", "expert0"] | None = None
    expert_bias: bool | None = None
    merge_preset: Literal["camex-paper"] | None = None
    segment_len: int | None = None
    seq_len: int = 0
    hf_model: str = ""
    base_rule: BaseRule = "perturbed-mean"
    merge_top_k: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"--preset: unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}"
            )
        if self.method not in METHODS:
            raise ValueError(
                f"--method: unknown method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        for name, value in (("seed", self.seed), ("max_chars", self.max_chars),
                            ("corpus_chars", self.corpus_chars), ("warmup", self.warmup),
                            ("eval_every", self.eval_every), ("ckpt_every", self.ckpt_every),
                            ("final_eval_batches", self.final_eval_batches),
                            ("threads", self.threads), ("schedule_steps", self.schedule_steps)):
            require_int(flag_name(name), value, low=0)
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size),
                            ("grad_accum", self.grad_accum),
                            ("eval_batches", self.eval_batches), ("log_every", self.log_every)):
            require_int(flag_name(name), value, low=1)
        require_real(flag_name("lr"), self.lr, low=0, low_open=True)
        require_real(flag_name("weight_decay"), self.weight_decay, low=0)
        require_real(flag_name("grad_clip"), self.grad_clip, low=0)
        require_real(flag_name("min_lr_ratio"), self.min_lr_ratio, low=0, high=1)
        for name in ("val_frac", "test_frac"):
            require_real(flag_name(name), getattr(self, name), low=0, high=0.5, low_open=True,
                         high_open=True)
        check_device_name(self.device)
        if self.precision not in get_args(PrecisionName):
            raise ValueError(
                f"--precision must be one of {', '.join(get_args(PrecisionName))}, got "
                f"{self.precision!r}"
            )
        if self.data not in get_args(DataSource):
            raise ValueError(f"--data must be 'builtin' or 'wikitext', got {self.data!r}")
        if self.data == "wikitext" and not self.wikitext_dir:
            raise ValueError("--wikitext-dir is required with --data wikitext")
        if not self.out:
            raise ValueError("--out must name a folder, got ''")
        if self.merge_preset is not None and self.merge_preset not in MERGE_PRESETS:
            raise ValueError(
                f"--merge-preset: unknown {self.merge_preset!r}; choose one of "
                f"{', '.join(MERGE_PRESETS)} or none"
            )
        require_int(flag_name("seq_len"), self.seq_len, low=0)
        require_int(flag_name("merge_top_k"), self.merge_top_k, low=0)
        if self.base_rule not in get_args(BaseRule):
            raise ValueError(
                f"--base-rule: unknown rule {self.base_rule!r}; choose one of "
                f"{', '.join(get_args(BaseRule))}"
            )
        if not self.hf_model:
            for name in ("base_rule", "merge_top_k"):
                if getattr(self, name) != _DEFAULTS[name]:
                    raise ValueError(
                        f"{flag_name(name)}: applies to Hugging Face models only (with "
                        f"--hf-model); the GPT presets do not use it, drop it"
                    )
        elif self.preset != _DEFAULTS["preset"]:
            raise ValueError(
                "--preset: a --hf-model run takes its architecture from the model folder; "
                "drop --preset"
            )
        if not self.hf_model:  # a Hugging Face model's MergeConfig is checked when it is built
            try:
                self.model_config()
            except ValueError as exc:
                raise self.named_error(exc) from exc

    def named_error(self, exc: ValueError) -> ValueError:
        """``exc`` (a MergeConfig validation error) prefixed with the flag it concerns."""
        named = [flag_name(k) for k in self.merge_overrides() if k in str(exc)]
        where = named[0] if named else "--method/--preset"
        return ValueError(f"{where}: {exc}")

    @property
    def schedule_length(self) -> int:
        """Steps of the lr schedule: ``schedule_steps``, or ``steps`` when that is 0."""
        return self.schedule_steps or self.steps

    @property
    def effective_warmup(self) -> int:
        """``warmup`` clamped to :attr:`schedule_length` (the lr schedule uses this)."""
        return min(self.warmup, self.schedule_length)

    def require_used_overrides(self) -> None:
        """Refuse merge overrides that :attr:`method` ignores (``ValueError`` naming the flag);
        :func:`namex_ref.train.train` calls this first, ``compare`` drops them per method."""
        ignored = ignored_overrides(self.method, self.merge_overrides())
        if ignored:
            name, why = next(iter(ignored.items()))
            where = flag_name(name)
            if getattr(self, name) is None:  # set by the --merge-preset bundle, not by the user
                where = f"--merge-preset {self.merge_preset} (sets {name})"
            raise ValueError(
                f"{where}: method {self.method!r} {why}, so this option would be "
                f"ignored; drop it or choose a method that uses it"
            )

    def merge_overrides(self) -> dict[str, Any]:
        """The MergeConfig fields this config overrides: the ``merge_preset`` bundle, then the
        non-``None`` override fields."""
        bundle = dict(MERGE_PRESETS.get(self.merge_preset or "", {}))
        explicit = {k: getattr(self, k) for k in MERGE_OVERRIDES if getattr(self, k) is not None}
        return {**bundle, **explicit}

    def model_config(self) -> ModelConfig:
        """The preset's :class:`ModelConfig` with this method, the merge overrides and
        ``seq_len`` (when not 0). For a ``hf_model`` run the loop describes the converted model
        instead (:func:`namex_ref.hf.training.build_model`)."""
        cfg = preset(self.preset, self.method, **self.merge_overrides())
        return dataclasses.replace(cfg, seq_len=self.seq_len) if self.seq_len else cfg

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**values)

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that determine the trajectory (all but :data:`RUN_CONTROL_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL_FIELDS}


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


# ----------------------------------------------------------------------------- command line


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
