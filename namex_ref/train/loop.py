"""The training loop: :func:`train` (one run of :class:`TrainConfig`) -> :class:`TrainResult`.

AdamW (weight decay on matrices only), linear warmup then cosine decay, global-norm gradient
clipping, metrics as JSONL (:mod:`namex_ref.train.metrics`), periodic evaluation on the
validation split, atomic checksummed safetensors checkpoints (the previous one kept), exact
resume, plots at the end, and progress lines (a tqdm bar on a terminal; otherwise a line every
``log_every`` steps on stdout; always appended to ``train.log`` in the run folder).

Resume (``train(config, resume=True)``) loads ``checkpoint.safetensors``; when it is missing,
corrupt or torn it falls back to ``checkpoint.prev.safetensors`` and says so. Without any
checkpoint ``resume=True`` is an error and ``resume="if-present"`` starts afresh. A run may be
resumed with more ``steps`` than it was started with: the lr schedule keeps the checkpoint's
length (``schedule_steps``), and the steps beyond it run at the floor lr, so the extended run
equals, bit for bit on CPU, a fresh run with ``steps`` = the new total and ``schedule_steps`` =
the old one. Every other field that changes the trajectory is refused, naming the flag.

Host synchronisation happens only at log / eval / checkpoint steps: per-step observables are
accumulated in device tensors (sums, running maxima, a cumulative fallback count and the first
step with a non-finite loss) and read when a metrics line is written.

Distributed: run the same entry point under ``torchrun --nproc_per_node=W``; the process group
(gloo on CPU, nccl on CUDA) is created from the torchrun environment
(:mod:`namex_ref.train.distributed`). Every rank draws the same global batch and keeps its slice
(:func:`namex_ref.train.data.batch_for_step`), DDP averages the gradients, so the update equals
the single-process one up to reduction order. All ranks compute the same α, because α depends
only on the (replicated) parameters. Only rank 0 writes files. SMoE's balance loss is computed
per rank on the rank's tokens, so SMoE under DDP is not the same objective as one process with
the global batch; merging methods have no such term.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from namex_ref.data import eval_windows
from namex_ref.models.gpt import ModelConfig, ModelOutput, MoEGPT
from namex_ref.train.checkpoint import (
    Checkpoint,
    CorruptCheckpointError,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from namex_ref.train.config import RUN_CONTROL_FIELDS, TrainConfig, flag_name
from namex_ref.train.data import batch_for_step, load_token_data, unigram_perplexity
from namex_ref.train.distributed import Distributed, resolve_device, setup_distributed
from namex_ref.train.metrics import append_jsonl, clean_json, read_jsonl, truncate_after

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "METRICS_NAME",
    "PREVIOUS_NAME",
    "RESULT_NAME",
    "NonFiniteLossError",
    "TrainResult",
    "build_model",
    "evaluate",
    "lr_at",
    "model_config_of",
    "read_result",
    "require_out_folder",
    "resolve_device",
    "train",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
"""The latest checkpoint of a run folder."""
PREVIOUS_NAME = "checkpoint.prev.safetensors"
"""The checkpoint before the latest (the fallback when the latest is corrupt or missing)."""
LOG_NAME = "train.log"
"""The progress log of a run folder (announcements, a line per log step, evaluations)."""
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished run (also written as ``result.json`` in the run folder).

    valid_loss / valid_ppl: mean next-token cross-entropy (nats) / its exponential over the
    deterministic validation windows (:func:`namex_ref.data.eval_windows`).
    unigram_ppl: the validation perplexity of the training split's unigram distribution.
    seconds_per_step: mean wall time of a training step (evaluation and checkpoints excluded),
        over all the processes that trained this run (resumes included).
    fallbacks: singular-bargain fallbacks summed over layers and all steps.
    """

    config: TrainConfig
    out: str
    steps: int
    valid_loss: float
    valid_ppl: float
    unigram_ppl: float
    train_loss: float
    seconds_per_step: float
    train_seconds: float
    fallbacks: int
    n_params: int
    device: str
    world_size: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        values = dict(d)
        values["config"] = TrainConfig.from_dict(values["config"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def read_result(out: str | os.PathLike[str]) -> TrainResult | None:
    """The :class:`TrainResult` of a finished run folder, or ``None`` if it has not finished."""
    path = Path(out) / RESULT_NAME
    if not path.is_file():
        return None
    return TrainResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of ``step`` (1-based): linear warmup to ``lr`` over W steps, then cosine
    decay to ``lr * min_lr_ratio`` at step H, and ``lr * min_lr_ratio`` after H.

    H = ``config.schedule_length`` (``schedule_steps``, or ``steps`` when that is 0) and
    W = ``config.effective_warmup`` = min(``warmup``, H).
    """
    horizon, warmup = config.schedule_length, config.effective_warmup
    if warmup and step <= warmup:
        return config.lr * step / warmup
    span = max(horizon - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on tensors with ≥ 2 dims (matrices, embeddings), none on the rest."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def build_model(config: TrainConfig) -> nn.Module:
    """The model of a run, on the CPU, initialised from the current torch seed:
    :class:`~namex_ref.models.gpt.MoEGPT` of ``config.model_config()``, or for a ``hf_model``
    run the converted Hugging Face model (:func:`namex_ref.hf.training.build_model`). Both
    take ``(idx, targets, collect_stats=...)`` and return a
    :class:`~namex_ref.models.gpt.ModelOutput`; ``model.config`` is a
    :class:`~namex_ref.models.gpt.ModelConfig` (:func:`model_config_of`)."""
    if config.hf_model:
        from namex_ref.hf.training import build_model as build_hf

        return build_hf(config)
    return MoEGPT(config.model_config())


def model_config_of(model: nn.Module) -> ModelConfig:
    """The :class:`~namex_ref.models.gpt.ModelConfig` of a model from :func:`build_model`."""
    cfg = model.__dict__.get("config")
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"{type(model).__name__} has no ModelConfig 'config'")
    return cfg


def _model_name(config: TrainConfig) -> str:
    return f"model {config.hf_model!r}" if config.hf_model else f"preset {config.preset}"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ids: Tensor,
    *,
    batch_size: int,
    max_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, Tensor]:
    """Mean next-token cross-entropy over the deterministic windows of ``ids`` (N,), and the
    per-layer expert cosine similarity (L,).

    Windows: :func:`namex_ref.data.eval_windows` with T = the model's seq_len (full windows
    only), stacked ``batch_size`` at a time; the first ``max_batches`` stacks (0 = all). Rank r
    of W evaluates stacks r, r+W, …; the token-weighted sum is all-reduced.
    """
    was_training = model.training
    model.eval()
    mcfg = model_config_of(model)
    T = mcfg.seq_len
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [Σ ce·tokens, tokens]
    cosine = torch.full((mcfg.n_layer,), math.nan)
    for k, batch in enumerate(eval_windows(ids, T, batch_size, drop_last=True)):
        if max_batches and k >= max_batches:
            break
        if k == 0:
            out = model(batch.x[:1].to(device), collect_stats=True)
            cosine = out.stats.cosine.detach().double().cpu()
        if k % world_size != rank:
            continue
        x, y = batch.x.to(device), batch.y.to(device)
        out = model(x, y)
        assert out.ce is not None
        total[0] += out.ce.double() * y.numel()
        total[1] += y.numel()
    if world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    n = float(total[1])
    if n == 0:
        raise ValueError("the validation split holds no full window of seq_len tokens")
    return float(total[0]) / n, cosine


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy that does not wait for the device (pinned memory, non_blocking)."""
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _nested(t: Tensor) -> Any:
    return clean_json(t.detach().double().cpu().tolist())


def _nonfinite_hint(what: str, step: int, config: TrainConfig,
                    last_ckpt: tuple[Path, int] | None) -> NonFiniteLossError:
    """The error for a non-finite loss or state first seen at ``step``; the checkpoint named is
    the last one written, always at a step before ``step`` (checkpoints are written only after
    every loss up to their step was checked finite and the state is finite)."""
    if last_ckpt is not None and last_ckpt[1] < step:
        where = (f"the last checkpoint, {str(last_ckpt[0])!r} (step {last_ckpt[1]}), was "
                 f"written before it and can be resumed with --resume (same configuration)")
    else:
        where = "no checkpoint was written before it"
    return NonFiniteLossError(
        f"{what} at step {step} (method {config.method!r}, preset {config.preset!r}, lr "
        f"{lr_at(step, config):.3g}). Hint: start a new run (another {flag_name('out')}) with "
        f"a lower {flag_name('lr')}, {flag_name('grad_clip')} > 0, or "
        f"{flag_name('singular_policy')} ridge; {where}."
    )


def _check_finite(first_bad: Tensor, config: TrainConfig,
                  last_ckpt: tuple[Path, int] | None = None) -> None:
    bad = int(first_bad)
    if bad >= 0:
        raise _nonfinite_hint("non-finite training loss", bad, config, last_ckpt)


def _state_is_finite(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter and every floating optimizer-state tensor is finite.

    The flags are reduced per device and never moved: optimizer state need not live with the
    parameters (AdamW keeps its ``step`` counters on the CPU when the parameters are on CUDA,
    and a user's optimizer may offload its moments). One host sync per device; called at
    checkpoint steps only.
    """
    by_device: dict[torch.device, list[Tensor]] = {}
    tensors: list[Tensor] = list(model.parameters())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, Tensor) and v.is_floating_point()]
    for t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(flags).all()) for flags in by_device.values())


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Trajectory fields of a config dict, with ``steps`` replaced by the schedule length (a
    run may be extended; what must not change is the schedule it was trained under)."""
    full = {**TrainConfig().to_dict(), **values}  # fields added since the checkpoint: defaults
    horizon = full["schedule_steps"] or full["steps"]
    out = {k: v for k, v in full.items() if k not in RUN_CONTROL_FIELDS and k != "steps"}
    out["schedule_steps"] = horizon
    return out


def _config_mismatch(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    old, new = _comparable(saved), _comparable(config.to_dict())
    return [
        f"{flag_name(k)}: checkpoint {old.get(k)!r} != requested {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def require_out_folder(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``path`` as a folder that exists or can be created.

    Raises:
        ValueError: ``path``, or a parent of it, is an existing file (names ``flag``).
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(
            f"{flag}: {str(target)!r} is an existing file, not a folder; choose a folder path "
            f"(it is created when missing)"
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{flag}: {str(parent)!r} (part of {str(target)!r}) is a file, not a "
                    f"folder; choose another folder path"
                )
            break
    return target


class _Reporter:
    """Progress and announcements: appended to ``train.log`` (rank 0) and echoed to stdout
    (``echo``; through tqdm while a bar is shown); notes and warnings also go to stderr."""

    def __init__(self, log: Path | None, echo: bool, prefix: str, main: bool = True) -> None:
        self.log, self.echo, self.prefix, self.main = log, echo, prefix, main
        self.bar: Any = None

    def _line(self, text: str) -> str:
        return f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{self.prefix}] {text}"

    def _file(self, line: str) -> None:
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def __call__(self, text: str, *, screen: bool = True) -> None:
        line = self._line(text)
        self._file(line)
        if not (self.echo and screen):
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def note(self, text: str) -> None:
        """A note the user must see even without progress output (stderr and the log)."""
        if not self.main:  # one copy per run, not one per DDP rank
            return
        line = self._line(text)
        self._file(line)
        print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    s = round(seconds) if math.isfinite(seconds) else 0
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _load_resume_point(
    out: Path, main: bool, say: _Reporter
) -> tuple[Checkpoint | None, Path | None]:
    """The checkpoint to resume from: the latest, or (when it is missing, corrupt or torn) the
    previous one, with a message; ``(None, None)`` when the folder holds neither."""
    latest, previous = out / CHECKPOINT_NAME, out / PREVIOUS_NAME
    problem = ""
    if latest.is_file():
        try:
            return load_checkpoint(latest), latest
        except CorruptCheckpointError as exc:
            problem = str(exc)
    elif previous.is_file():
        problem = f"{str(latest)!r} is missing (the run was stopped while replacing it)"
    if not previous.is_file():
        if problem:
            raise CorruptCheckpointError(
                f"{problem}; there is no previous checkpoint to fall back to, so this run "
                f"cannot be resumed: start it again in another --out folder"
            )
        return None, None
    try:
        ckpt = load_checkpoint(previous)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(
            f"{problem}; the previous checkpoint is unusable too: {exc}"
        ) from exc
    if main and latest.is_file():
        latest.replace(latest.with_name(latest.name + ".corrupt"))  # kept for inspection
    say.note(f"warning: {problem}; resuming from the previous checkpoint {str(previous)!r} "
             f"(step {ckpt.step}) instead")
    return ckpt, previous


def train(config: TrainConfig, *, resume: bool | Literal["if-present"] = False) -> TrainResult:
    """Train one model as ``config`` says; write metrics, checkpoints, plots, train.log and
    result.json to ``config.out``; return the :class:`TrainResult`.

    resume: ``True`` continues from ``out/checkpoint.safetensors`` (or, when that is missing or
    corrupt, from ``out/checkpoint.prev.safetensors``, with a message) and is an error when
    there is neither; ``"if-present"`` starts afresh instead. On CPU the continued run is
    bit-identical to an uninterrupted one. ``steps`` may grow (see the module docstring); a
    checkpoint of a different configuration otherwise (any trajectory field: all but
    out/device/progress/cache_dir/threads) is refused with ``ValueError`` naming the flags.
    Without ``resume``, a folder that already holds a checkpoint is refused.

    Raises:
        NonFiniteLossError: the loss or the state became NaN/inf (checked at log and
            checkpoint steps); the message names the last checkpoint written before it.
        CorruptCheckpointError: no usable checkpoint to resume (names the files).
        CheckpointWriteError: a checkpoint could not be written (an ``OSError``; the previous
            one is intact).
        ValueError: bad configuration, refused resume, too little data, --out is a file.
    """
    ctx = setup_distributed(config.device)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, resume, ctx)
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool | Literal["if-present"],
           ctx: Distributed) -> TrainResult:
    config.require_used_overrides()
    device = resolve_device(config.device, ctx.local_rank)
    out = require_out_folder(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    prev_path = out / PREVIOUS_NAME
    metrics_path = out / METRICS_NAME
    interactive = sys.stdout.isatty() and sys.stderr.isatty()
    say = _Reporter(out / LOG_NAME if ctx.main else None, config.progress and ctx.main,
                    f"{config.method} s{config.seed}", main=ctx.main)
    for name, every in (("ckpt_every", config.ckpt_every), ("eval_every", config.eval_every)):
        if every % config.log_every:
            raise ValueError(
                f"{flag_name(name)}={every} must be a multiple of --log-every={config.log_every} "
                f"(metrics are written, and devices synchronised, at log steps only)"
            )
    if config.batch_size % ctx.world:
        raise ValueError(
            f"--batch-size={config.batch_size} must be divisible by the number of processes "
            f"({ctx.world})"
        )

    ckpt: Checkpoint | None = None
    ckpt_source: Path | None = None
    if not resume:
        if ckpt_path.is_file() or prev_path.is_file():
            raise ValueError(
                f"{str(out)!r} already holds a checkpoint; pass resume=True (CLI: --resume) to "
                f"continue it, or choose another out folder (CLI: --out)"
            )
    else:
        ckpt, ckpt_source = _load_resume_point(out, ctx.main, say)
        if ckpt is None and resume != "if-present":
            raise ValueError(
                f"--resume: {str(out)!r} holds no checkpoint ({CHECKPOINT_NAME} or "
                f"{PREVIOUS_NAME}) to resume; drop --resume to start a fresh run there, or "
                f"pass --resume-if-present to resume only when there is one"
            )
    extended_from = 0
    if ckpt is not None:
        saved = {**TrainConfig().to_dict(), **ckpt.config}
        horizon = saved["schedule_steps"] or saved["steps"]
        if saved["steps"] != config.steps:
            extended_from = int(saved["steps"])
            # --schedule-steps left at 0 on a run of another length: keep the saved schedule
            if config.schedule_steps == 0 and horizon != config.steps:
                config = dataclasses.replace(config, schedule_steps=horizon)
        problems = _config_mismatch(ckpt.config, config)
        if problems:
            raise ValueError(
                "refusing to resume with a different configuration: " + "; ".join(problems)
            )
        if ckpt.step > config.steps:
            raise ValueError(
                f"--steps: the checkpoint is at step {ckpt.step}, beyond the requested "
                f"--steps {config.steps}; ask for at least {ckpt.step} steps"
            )

    # The model first (a Hugging Face model fixes the vocabulary and the window), then the
    # data: rank 0 builds the cache first, the others then read it.
    torch.manual_seed(config.seed)
    model = build_model(config)
    mcfg = model_config_of(model)
    T = mcfg.seq_len
    if ctx.main:
        data = load_token_data(config, spec=mcfg)
    ctx.barrier()
    if not ctx.main:
        data = load_token_data(config, spec=mcfg)
    if data.vocab_size > mcfg.vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {data.vocab_size} exceeds the model's {mcfg.vocab_size}"
        )
    train_ids = data.train  # batches are gathered on the CPU, then copied without a sync
    valid_ids = data.valid
    unigram = unigram_perplexity(data.train, data.valid, mcfg.vocab_size)

    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95), eps=1e-8
    )
    start = 0
    fallbacks_done = 0
    step_time = 0.0  # wall seconds of training steps (evaluation excluded), over all resumes
    steps_run = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optim_state)
        restore_rng(ckpt)
        start = ckpt.step
        fallbacks_done = int(ckpt.counters.get("fallbacks", 0))
        step_time = float(ckpt.counters.get("step_seconds", 0.0))
        steps_run = int(ckpt.counters.get("steps_timed", 0))
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (out / RESULT_NAME).unlink(missing_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        if ckpt is None:
            metrics_path.unlink(missing_ok=True)
            (out / LOG_NAME).unlink(missing_ok=True)
            say(f"fresh start: {config.steps} steps, method {config.method}, "
                f"{_model_name(config)} ({n_params / 1e6:.2f}M parameters), batch "
                f"{config.batch_size}, device {device}, {ctx.world} process(es); writing to "
                f"{str(out)!r}")
        else:
            truncate_after(metrics_path, start)
            say(f"resuming from step {start} of {config.steps} (checkpoint "
                f"{str(ckpt_source)!r})")
            present = {int(r["step"]) for r in read_jsonl(metrics_path)}
            lost = [k for k in range(config.log_every, start + 1, config.log_every)
                    if k not in present]
            if lost:
                say.note(f"warning: {METRICS_NAME} lacks the lines of steps "
                         f"{', '.join(map(str, lost))} (at or before the checkpoint, so they are "
                         f"not trained again); the run continues from step {start}")
            if not ckpt.verified:
                say.note(f"note: {str(ckpt_source)!r} predates checkpoint checksums; loaded "
                         f"without verification")
            if extended_from:
                say(f"extending a run of {extended_from} steps to {config.steps}; the lr "
                    f"schedule keeps its length of {config.schedule_length} steps, later steps "
                    f"run at the floor lr {config.lr * config.min_lr_ratio:.3g}")
        if config.warmup > config.schedule_length:
            say.note(f"note: {flag_name('warmup')} {config.warmup} is longer than the "
                     f"{config.schedule_length}-step lr schedule; warmup clamped to "
                     f"{config.effective_warmup} steps")
    if ctx.world > 1:
        find_unused = mcfg.merge.spec.kind == "topk"  # idle experts get no gradient
        net: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )
    else:
        net = model
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip > 0 else math.inf

    show = config.progress and ctx.main and interactive
    bar: Any = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=f"{config.method} s{config.seed}",
                   dynamic_ncols=True)
        say.bar = bar
    last_ckpt: tuple[Path, int] | None = (
        None if ckpt is None or ckpt_source is None else (ckpt_source, start)
    )

    # Device accumulators (read at log steps only).
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, aux
    res_max = torch.full((), -math.inf, dtype=torch.float64, device=device)  # no bargain: -inf
    fallbacks = torch.full((), fallbacks_done, dtype=torch.int64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    grad_norm = torch.zeros((), device=device)
    alphas = torch.zeros(0)
    n_in_interval = 0
    t_run = time.perf_counter()
    t_interval = t_run
    model.train()
    for step in range(start + 1, config.steps + 1):
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batch_for_step(
            train_ids, seed=config.seed, step=step, batch_size=config.batch_size, seq_len=T,
            rank=ctx.rank, world_size=ctx.world,
        )
        x, y = _to_device(batch.x, device), _to_device(batch.y, device)
        out_: ModelOutput = net(x, y)
        loss, ce = out_.loss, out_.ce
        assert loss is not None and ce is not None  # targets were given
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

        d_loss = loss.detach()
        sums += torch.stack([d_loss, ce.detach(), out_.aux_loss.detach()]).double()
        stats = out_.stats
        r = stats.residuals.detach().double()
        res_max = torch.maximum(res_max, torch.where(r.isnan(), -math.inf, r).max())
        fallbacks += stats.fallbacks.sum()
        first_bad = torch.where(
            (~torch.isfinite(d_loss)) & (first_bad < 0), torch.full_like(first_bad, step),
            first_bad,
        )
        alphas = stats.alphas.detach()
        n_in_interval += 1
        if bar is not None:
            bar.update(1)

        log_now = step % config.log_every == 0 or step == config.steps
        eval_now = config.eval_every > 0 and step % config.eval_every == 0
        ckpt_now = (config.ckpt_every > 0 and step % config.ckpt_every == 0) or (
            step == config.steps
        )
        if not (log_now or ckpt_now):
            continue
        if ctx.world > 1:
            dist.all_reduce(sums)
            sums /= ctx.world
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        _check_finite(first_bad, config, last_ckpt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        interval = now - t_interval
        step_time += interval
        steps_run += n_in_interval
        record: dict[str, Any] = {}
        if log_now:
            mean = (sums / n_in_interval).tolist()
            rm = float(res_max)
            record = {
                "step": step,
                "loss": mean[0],
                "ce": mean[1],
                "aux": mean[2],
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": n_in_interval * config.batch_size * T / interval,
                "step_s": interval / n_in_interval,
                "elapsed_s": now - t_run,
                "alpha": _nested(alphas) if alphas.numel() else None,
                "residual_max": rm if math.isfinite(rm) else None,
                "fallbacks": int(fallbacks),
            }
            if bar is not None:
                bar.set_postfix(loss=f"{mean[0]:.3f}", lr=f"{lr:.2e}")
            run_s = now - t_run
            eta = run_s / (step - start) * (config.steps - step)
            say(f"step {step}/{config.steps} loss {mean[0]:.4f} lr {lr:.3g} tokens/s "
                f"{record['tokens_per_s']:.0f} elapsed {_clock(run_s)} eta {_clock(eta)}",
                screen=bar is None)
        if eval_now:
            vloss, cos = evaluate(
                model, valid_ids, batch_size=config.batch_size,
                max_batches=config.eval_batches, rank=ctx.rank, world_size=ctx.world,
            )
            record.update(valid_loss=vloss, valid_ppl=math.exp(vloss), cosine=_nested(cos))
            say(f"step {step}/{config.steps} evaluation: valid loss {vloss:.4f} perplexity "
                f"{math.exp(vloss):.2f}")
        if ctx.main and record:
            append_jsonl(metrics_path, record)
        if ckpt_now and not _state_is_finite(model, optimizer):
            raise _nonfinite_hint("non-finite parameters or optimizer state", step, config,
                                  last_ckpt)
        if ckpt_now and ctx.main:
            save_checkpoint(
                ckpt_path, model=model, optimizer=optimizer, step=step,
                config=config.to_dict(),
                counters={"fallbacks": int(fallbacks), "step_seconds": step_time,
                          "steps_timed": steps_run},
                previous=prev_path,
            )
        if ckpt_now:
            last_ckpt = (ckpt_path, step)
        sums.zero_()
        res_max.fill_(-math.inf)
        n_in_interval = 0
        t_interval = time.perf_counter()
    train_seconds = time.perf_counter() - t_run
    if bar is not None:
        bar.close()

    span = ("the whole validation split" if config.final_eval_batches == 0
            else f"{config.final_eval_batches} validation batches")
    say(f"final evaluation on {span}")
    vloss, _ = evaluate(
        model, valid_ids, batch_size=config.batch_size, max_batches=config.final_eval_batches,
        rank=ctx.rank, world_size=ctx.world,
    )
    say(f"final: valid loss {vloss:.4f} perplexity {math.exp(vloss):.2f} (unigram perplexity "
        f"{unigram:.1f})")
    records = read_jsonl(metrics_path) if ctx.main else []
    last_loss = next((float(r["loss"]) for r in reversed(records) if r.get("loss") is not None),
                     math.nan)
    result = TrainResult(
        config=config,
        out=str(out),
        steps=config.steps,
        valid_loss=vloss,
        valid_ppl=math.exp(vloss),
        unigram_ppl=unigram,
        train_loss=last_loss,
        seconds_per_step=step_time / steps_run if steps_run else math.nan,
        train_seconds=train_seconds,
        fallbacks=int(fallbacks),
        n_params=n_params,
        device=str(device),
        world_size=ctx.world,
    )
    if ctx.main:
        from namex_ref.train.plots import plot_run

        plot_run(records, out, title=f"{config.method} (seed {config.seed})")
        exported = ""
        if config.hf_model:
            from namex_ref.hf.training import MODEL_DIR, HFCausalLM, export

            assert isinstance(model, HFCausalLM)
            export(model, config, out / MODEL_DIR)
            exported = f", {MODEL_DIR}/ (namex_ref.hf.load)"
        tmp = out / f".{RESULT_NAME}.tmp"
        tmp.write_text(json.dumps(clean_json(result.to_dict()), indent=2) + "\n")
        os.replace(tmp, out / RESULT_NAME)
        say(f"wrote {str(out)!r}: {RESULT_NAME}, {METRICS_NAME}, {LOG_NAME}, {CHECKPOINT_NAME}, "
            f"loss.png, alpha.png, cosine.png{exported}")
    ctx.barrier()
    return result
