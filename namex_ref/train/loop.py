"""The training loop: :func:`train` (one run of :class:`TrainConfig`) -> :class:`TrainResult`.

AdamW (weight decay on matrices only), linear warmup then cosine decay
(:mod:`namex_ref.train.schedule`), global-norm gradient clipping, metrics as JSONL
(:mod:`namex_ref.train.metrics`), periodic evaluation on the validation split, atomic
checksummed safetensors checkpoints (the previous one kept), exact resume
(:mod:`namex_ref.train.resume`), plots at the end, and progress lines (a tqdm bar on a terminal;
otherwise a line every ``log_every`` steps on stdout; always appended to ``train.log`` in the
run folder).

The model comes from the :class:`~namex_ref.train.builder.ModelBuilder` the caller hands in
(the GPT presets by default; ``namex_ref.hf.training`` provides one for Hugging Face models).

Resume (``train(config, resume=True)``) loads ``checkpoint.safetensors``; when it is missing,
corrupt or torn it falls back to ``checkpoint.prev.safetensors`` and says so. Without any
checkpoint ``resume=True`` is an error and ``resume="if-present"`` starts afresh. A run may be
resumed with more ``steps`` than it was started with (:mod:`namex_ref.train.resume`).

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

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from namex_ref.models.gpt import ModelOutput
from namex_ref.train.builder import GPT_BUILDER, ModelBuilder, build_gpt, model_config_of
from namex_ref.train.checkpoint import restore_rng, save_checkpoint
from namex_ref.train.config import TrainConfig, flag_name
from namex_ref.train.data import batch_for_step, load_run_data, unigram_perplexity
from namex_ref.train.distributed import Distributed, resolve_device, setup_distributed
from namex_ref.train.evaluation import evaluate
from namex_ref.train.health import (
    NonFiniteLossError,
    check_finite,
    nonfinite_error,
    state_is_finite,
)
from namex_ref.train.interrupt import (
    Interrupts,
    TrainingInterrupted,
    catch_interrupts,
    interrupted_message,
)
from namex_ref.train.interval import Interval, mean_output, nested_list
from namex_ref.train.metrics import append_jsonl, read_jsonl, truncate_after
from namex_ref.train.precision import Precision
from namex_ref.train.reporter import Reporter, clock
from namex_ref.train.resume import ResumePoint, StartMode, announce_resume, plan_resume
from namex_ref.train.run import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    METRICS_NAME,
    PREVIOUS_NAME,
    RESULT_NAME,
    SetAside,
    TrainResult,
    read_result,
    require_out_folder,
    write_result,
)
from namex_ref.train.schedule import lr_at, make_optimizer, set_lr
from namex_ref.train.tensorboard import ScalarWriter, require_tensorboard

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "METRICS_NAME",
    "PREVIOUS_NAME",
    "RESULT_NAME",
    "NonFiniteLossError",
    "TrainResult",
    "build_gpt",
    "evaluate",
    "lr_at",
    "model_config_of",
    "read_result",
    "require_out_folder",
    "resolve_device",
    "train",
]


def train(config: TrainConfig, *, resume: StartMode = False,
          builder: ModelBuilder = GPT_BUILDER) -> TrainResult:
    """Train one model as ``config`` says; write metrics, checkpoints, plots, train.log and
    result.json to ``config.out``; return the :class:`TrainResult`.

    resume: ``True`` continues from ``out/checkpoint.safetensors`` (or, when that is missing or
    corrupt, from ``out/checkpoint.prev.safetensors``, with a message) and is an error when
    there is neither; ``"if-present"`` starts afresh instead. On CPU the continued run is
    bit-identical to an uninterrupted one. ``steps`` may grow (see the module docstring); a
    checkpoint of a different configuration otherwise (any trajectory field: all but
    :data:`~namex_ref.train.config.RUN_CONTROL_FIELDS`, the folders, device, threads, progress
    and the log / eval / checkpoint intervals, which may change and are announced) is refused
    with ``ValueError`` naming the flags.
    Without ``resume``, a folder that already holds a checkpoint is refused; ``"overwrite"``
    starts afresh there, keeping the old run's files in ``out/.replaced`` until the new run's
    first checkpoint is written (moved back if the new run fails before).
    builder: where the model comes from (:class:`~namex_ref.train.builder.ModelBuilder`); the
    GPT presets by default. A ``hf_model`` run needs ``namex_ref.hf.training.HF_BUILDER``
    (or call ``namex_ref.hf.training.train``).

    Signals: SIGINT or SIGTERM stops the run after the current step with a checkpoint
    (:mod:`namex_ref.train.interrupt`); a second one exits at once.

    Raises:
        TrainingInterrupted: the run stopped on SIGINT/SIGTERM; the checkpoint of the step it
            reached is written (``exit_status`` 130 / 143 for the CLI).
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
        with catch_interrupts() as interrupts:
            return _train(config, resume, ctx, builder, interrupts)
    finally:
        torch.set_num_threads(threads)
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: StartMode, ctx: Distributed,
           builder: ModelBuilder, interrupts: Interrupts) -> TrainResult:
    """Check the request, open the run, train its remaining steps, finish; on a signal, stop
    after the current step with a checkpoint."""
    run = _Run.open(config, resume, ctx, builder)
    tb = run.tb or contextlib.nullcontext()  # closed at the end, on a signal and on an error
    with run.aside or contextlib.nullcontext(), tb:  # --overwrite: old run back on failure
        for step in range(run.start + 1, run.config.steps + 1):
            run.step(step)
            log_now, eval_now, ckpt_now = run.due(step)
            if log_now or ckpt_now:
                run.close_interval(step, log_now=log_now, eval_now=eval_now, ckpt_now=ckpt_now)
            signum = run.signalled(interrupts, log_now)
            if signum:
                run.interrupt(step, signum, checkpointed=ckpt_now)
    return run.finish()


def _check_request(config: TrainConfig, ctx: Distributed) -> None:
    """Refuse what no run can do: ignored merge overrides, intervals that are not multiples of
    ``log_every``, a batch that does not split over the processes."""
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


_HOST = torch.device("cpu")


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy that does not wait for the device (pinned memory, non_blocking)."""
    if device == _HOST:  # the host itself (the device detector's stand-in GPU is cpu:0)
        return t
    if torch.cuda.is_available():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class _Run:
    """One training run between its steps: the model (and its DDP wrapper), the optimizer,
    the data, the device accumulators and the cumulative counters that checkpoints carry."""

    def __init__(self, point: ResumePoint, ctx: Distributed, device: torch.device, out: Path,
                 say: Reporter, builder: ModelBuilder, mode: StartMode = False) -> None:
        config = self.config = point.config
        self.ctx, self.device, self.out, self.say, self.builder = ctx, device, out, say, builder
        # The model first (a Hugging Face model fixes the vocabulary and the window), then data.
        torch.manual_seed(config.seed)
        model = builder.build(config)
        self.mcfg = model_config_of(model)
        self.data = load_run_data(config, self.mcfg, ctx)  # batches gathered on the CPU
        self.unigram = unigram_perplexity(self.data.train, self.data.valid, self.mcfg.vocab_size)
        self.model = model.to(device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, config)
        self.precision = Precision(config.precision, device)
        ckpt, self.start = point.ckpt, point.step
        counters = {} if ckpt is None else ckpt.counters
        if ckpt is not None:
            self.model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(ckpt.optim_state)
            self.precision.load_state_dict(counters.get("grad_scaler", {}))
            restore_rng(ckpt, device=device, rank=ctx.rank)  # rank r: its own device generator
        self.step_time = float(counters.get("step_seconds", 0.0))  # over all resumes
        self.steps_run = int(counters.get("steps_timed", 0))
        self.aside: SetAside | None = None
        if ctx.main:
            if mode == "overwrite":
                self.aside = SetAside(out)
            self._prepare_folder(point)
        self.tb = ScalarWriter(out, self.start) if ctx.main and config.tensorboard else None
        self.net = self._wrap(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.clip = config.grad_clip if config.grad_clip > 0 else math.inf
        if config.progress and ctx.main and sys.stdout.isatty() and sys.stderr.isatty():
            say.open_bar(config.steps, self.start, f"{config.method} s{config.seed}")
        self.last_ckpt: tuple[Path, int] | None = (
            None if point.source is None else (point.source, self.start)
        )
        self.acc = Interval(device, int(counters.get("fallbacks", 0)))
        self.acc.load_state(counters.get("interval", {}), ctx.main)
        self.lr = 0.0
        self.t_run = self.t_interval = time.perf_counter()
        self.model.train()

    @classmethod
    def open(cls, config: TrainConfig, resume: StartMode, ctx: Distributed,
             builder: ModelBuilder) -> _Run:
        """Check ``config``, decide where to start (:func:`~namex_ref.train.resume.
        plan_resume`), build everything."""
        config.require_used_overrides()
        device = resolve_device(config.device, ctx.local_rank)
        out = require_out_folder(config.out)
        say = Reporter(out / LOG_NAME if ctx.main else None, config.progress and ctx.main,
                       f"{config.method} s{config.seed}", main=ctx.main)
        _check_request(config, ctx)
        if config.tensorboard:
            require_tensorboard()  # fail before any work when the extra is missing
        point = plan_resume(config, resume, out, ctx.main, say)
        return cls(point, ctx, device, out, say, builder, resume)

    def _prepare_folder(self, point: ResumePoint) -> None:
        """Rank 0: write config.json, drop a stale result and temporary files, start the log
        and metrics afresh (a fresh run) or cut them back to the checkpoint (a resumed one)."""
        config, out, say = self.config, self.out, self.say
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (out / RESULT_NAME).unlink(missing_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        accum = f" x {config.grad_accum} accumulated" if config.grad_accum > 1 else ""
        if point.ckpt is None:
            (out / METRICS_NAME).unlink(missing_ok=True)
            (out / LOG_NAME).unlink(missing_ok=True)
            say(f"fresh start: {config.steps} steps, method {config.method}, "
                f"{self.builder.describe(config)} ({self.n_params / 1e6:.2f}M parameters), "
                f"batch {config.batch_size}{accum}, device {self.device}, {self.ctx.world} "
                f"process(es); writing to {str(out)!r}")
        else:
            truncate_after(out / METRICS_NAME, self.start)
            announce_resume(point, out / METRICS_NAME, say)
        if config.warmup > config.schedule_length:
            say.note(f"note: {flag_name('warmup')} {config.warmup} is longer than the "
                     f"{config.schedule_length}-step lr schedule; warmup clamped to "
                     f"{config.effective_warmup} steps")

    def _wrap(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or under several processes its DDP wrapper."""
        if self.ctx.world == 1:
            return model
        find_unused = self.mcfg.merge.spec.kind == "topk"  # idle experts get no gradient
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )

    def step(self, step: int) -> None:
        """One AdamW update on the batch of ``step`` (:func:`~namex_ref.train.data.
        batch_for_step`), at the lr of :func:`~namex_ref.train.schedule.lr_at`, the forward
        under the run's :class:`~namex_ref.train.precision.Precision`; no host sync (except
        fp16's scaler). With ``grad_accum`` K the batch of K·``batch_size`` windows is run as
        K micro-batches whose gradients add up (each loss divided by K): the update of one
        K-times larger batch, to float rounding."""
        config, k = self.config, self.config.grad_accum
        self.lr = lr_at(step, config)
        set_lr(self.optimizer, self.lr)
        batch = batch_for_step(
            self.data.train, seed=config.seed, step=step, batch_size=config.batch_size * k,
            seq_len=self.mcfg.seq_len, rank=self.ctx.rank, world_size=self.ctx.world,
        )
        self.optimizer.zero_grad(set_to_none=True)
        micro = batch.x.shape[0] // k
        outs: list[ModelOutput] = []
        for j in range(k):
            rows = slice(j * micro, (j + 1) * micro)
            x = _to_device(batch.x[rows], self.device)
            y = _to_device(batch.y[rows], self.device)
            with self._gradient_sync(last=j == k - 1):
                with self.precision.autocast():
                    out: ModelOutput = self.net(x, y)
                assert out.loss is not None and out.ce is not None  # targets were given
                self.precision.backward(out.loss if k == 1 else out.loss / k)
            outs.append(out)
        self.precision.unscale(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.precision.step(self.optimizer)
        self.acc.add(step, outs[0] if k == 1 else mean_output(outs), grad_norm)
        if self.say.bar is not None:
            self.say.bar.update(1)

    def _gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients on the last micro-batch of a step only (``no_sync``)."""
        if last or not isinstance(self.net, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.net.no_sync()

    def due(self, step: int) -> tuple[bool, bool, bool]:
        """Whether ``step`` writes a metrics line, evaluates, checkpoints (the last step always
        logs and checkpoints)."""
        config, last = self.config, step == self.config.steps
        log_now = step % config.log_every == 0 or last
        eval_now = config.eval_every > 0 and step % config.eval_every == 0
        ckpt_now = (config.ckpt_every > 0 and step % config.ckpt_every == 0) or last
        return log_now, eval_now, ckpt_now

    def close_interval(self, step: int, *, log_now: bool, eval_now: bool,
                       ckpt_now: bool) -> None:
        """The host sync of a log or checkpoint step: check the losses, time the interval,
        write the metrics line (with the evaluation), checkpoint, start the next interval."""
        self.acc.all_reduce(self.ctx.world)
        check_finite(self.acc.first_bad, self.config, self.last_ckpt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds = now - self.t_interval
        self.step_time += seconds
        self.steps_run += self.acc.timed
        record = self.report(step, seconds, now) if log_now else {}
        if eval_now:
            record.update(self.evaluate(step))
        if self.ctx.main and record:
            append_jsonl(self.out / METRICS_NAME, record)
            if self.tb is not None:  # the same record, as TensorBoard scalars
                self.tb.write(record)
        self.acc.reset()  # before the checkpoint: this interval is written, not carried over
        if ckpt_now:
            self.checkpoint(step)
        self.t_interval = time.perf_counter()

    def report(self, step: int, seconds: float, now: float) -> dict[str, Any]:
        """The metrics line of ``step``, shown on the bar or as a progress line."""
        config = self.config
        record = self.acc.record(step, self.lr, seconds, now - self.t_run,
                                 config.batch_size * config.grad_accum * self.mcfg.seq_len)
        bar = self.say.bar
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{self.lr:.2e}")
        run_s = now - self.t_run
        eta = run_s / (step - self.start) * (config.steps - step)
        self.say(f"step {step}/{config.steps} loss {record['loss']:.4f} lr {self.lr:.3g} "
                 f"tokens/s {record['tokens_per_s']:.0f} elapsed {clock(run_s)} eta "
                 f"{clock(eta)}", screen=bar is None)
        return record

    def evaluate(self, step: int) -> dict[str, Any]:
        """The periodic evaluation's fields (:data:`~namex_ref.train.metrics.EVAL_FIELDS`)."""
        with self.precision.autocast():
            vloss, cos = evaluate(
                self.model, self.data.valid, batch_size=self.config.batch_size,
                max_batches=self.config.eval_batches, rank=self.ctx.rank,
                world_size=self.ctx.world,
            )
        self.say(f"step {step}/{self.config.steps} evaluation: valid loss {vloss:.4f} "
                 f"perplexity {math.exp(vloss):.2f}")
        return {"valid_loss": vloss, "valid_ppl": math.exp(vloss), "cosine": nested_list(cos)}

    def checkpoint(self, step: int) -> None:
        """Check the whole state finite, then (rank 0) write the checkpoint of ``step``."""
        if not state_is_finite(self.model, self.optimizer):
            raise nonfinite_error("non-finite parameters or optimizer state", step,
                                  self.config, self.last_ckpt)
        path = self.out / CHECKPOINT_NAME
        counters = self._counters()  # on every rank: a partial interval is all-reduced
        device_rng = self.ctx.device_rng_states(self.device)  # every rank: a collective
        if self.ctx.main:
            save_checkpoint(
                path, model=self.model, optimizer=self.optimizer, step=step,
                config=self.config.to_dict(), counters=counters,
                previous=self.out / PREVIOUS_NAME, device_rng=device_rng,
            )
        self.last_ckpt = (path, step)
        if self.aside is not None:  # --overwrite: the new run has a checkpoint now
            self.aside.drop()
            self.aside = None

    def _counters(self) -> dict[str, Any]:
        """What a checkpoint carries beside the tensors: cumulative counters, (fp16) the
        gradient scaler's state and (a run stopped between log steps) the partial interval."""
        counters: dict[str, Any] = {"fallbacks": int(self.acc.fallbacks),
                                    "step_seconds": self.step_time,
                                    "steps_timed": self.steps_run}
        extra = {"grad_scaler": self.precision.state_dict(),
                 "interval": self.acc.state(self.ctx.world)}
        return counters | {k: v for k, v in extra.items() if v}

    def signalled(self, interrupts: Interrupts, log_now: bool) -> int:
        """The signal that stops the run after this step, or 0. One process: the handler's
        flag after every step (no sync). Several: the ranks agree at log steps (an all-reduce
        of the flag, beside the log step's other reductions), so all stop at the same step."""
        if self.ctx.world == 1:
            return interrupts.signum
        if not log_now:
            return 0
        flag = torch.full((), interrupts.signum, dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)

    def interrupt(self, step: int, signum: int, *, checkpointed: bool) -> None:
        """Stop on ``signum`` after ``step``: checkpoint it (unless this step just did, with
        the partial interval's sums), say so on the terminal and in train.log, and raise
        :class:`~namex_ref.train.interrupt.TrainingInterrupted`."""
        if not checkpointed:
            if self.ctx.world > 1:
                dist.all_reduce(self.acc.first_bad, op=dist.ReduceOp.MAX)
            check_finite(self.acc.first_bad, self.config, self.last_ckpt)
            now = time.perf_counter()
            self.step_time += now - self.t_interval
            self.steps_run += self.acc.timed
            self.acc.timed, self.t_interval = 0, now
            self.checkpoint(step)
        self.say.close_bar()
        self.say.note(interrupted_message(step, self.config.steps))
        raise TrainingInterrupted(signum, step, self.config.steps,
                                  str(self.out / CHECKPOINT_NAME))

    def finish(self) -> TrainResult:
        """The final evaluation, the :class:`TrainResult`, and (rank 0) the plots, the
        builder's export and ``result.json``."""
        config, ctx, say = self.config, self.ctx, self.say
        train_seconds = time.perf_counter() - self.t_run
        say.close_bar()
        span = ("the whole validation split" if config.final_eval_batches == 0
                else f"{config.final_eval_batches} validation batches")
        say(f"final evaluation on {span}")
        with self.precision.autocast():
            vloss, _ = evaluate(
                self.model, self.data.valid, batch_size=config.batch_size,
                max_batches=config.final_eval_batches, rank=ctx.rank, world_size=ctx.world,
            )
        say(f"final: valid loss {vloss:.4f} perplexity {math.exp(vloss):.2f} (unigram "
            f"perplexity {self.unigram:.1f})")
        records = read_jsonl(self.out / METRICS_NAME) if ctx.main else []
        last_loss = next((float(r["loss"]) for r in reversed(records)
                          if r.get("loss") is not None), math.nan)
        result = TrainResult(
            config=config, out=str(self.out), steps=config.steps, valid_loss=vloss,
            valid_ppl=math.exp(vloss), unigram_ppl=self.unigram, train_loss=last_loss,
            seconds_per_step=self.step_time / self.steps_run if self.steps_run else math.nan,
            train_seconds=train_seconds, fallbacks=int(self.acc.fallbacks),
            n_params=self.n_params, device=str(self.device), world_size=ctx.world,
        )
        if ctx.main:
            self._write_outputs(result, records)
        ctx.barrier()
        return result

    def _write_outputs(self, result: TrainResult, records: list[dict[str, Any]]) -> None:
        from namex_ref.train.plots import plot_run

        config, out = self.config, self.out
        plot_run(records, out, title=f"{config.method} (seed {config.seed})")
        exported = ""
        if self.builder.export is not None:
            note = self.builder.export(self.model, config, out)
            exported = f", {note}" if note else ""
        write_result(out, result)
        self.say(f"wrote {str(out)!r}: {RESULT_NAME}, {METRICS_NAME}, {LOG_NAME}, "
                 f"{CHECKPOINT_NAME}, loss.png, alpha.png, cosine.png{exported}")
