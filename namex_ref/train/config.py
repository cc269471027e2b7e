"""Training configuration: one frozen dataclass, validated on construction. The command-line
flags are derived from its fields in :mod:`namex_ref.train.flags` (so ``namex train`` and
:func:`namex_ref.train.train` agree).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from namex_ref.checks import require_int, require_real
from namex_ref.merging.config import CAMEX_PAPER, METHODS
from namex_ref.models.gpt import PRESETS, ModelConfig, preset
from namex_ref.train.distributed import check_device_name

__all__ = [
    "MERGE_OVERRIDES",
    "MERGE_PRESETS",
    "RUN_CONTROL_FIELDS",
    "TrainConfig",
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
     "ckpt_every", "tensorboard"}
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
        progress: tqdm bar (only on a TTY). tensorboard: also write the metrics records as
        TensorBoard scalars under ``out/tensorboard`` (the optional extra ``tensorboard``;
        :mod:`namex_ref.train.tensorboard`).
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
    tensorboard: bool = False
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
