"""Resuming a run: which checkpoint to load (the latest, else the previous one), whether the
requested configuration may continue it, and what the user is told.

A run may be resumed with more ``steps`` than it was started with: the lr schedule keeps the
checkpoint's length (``schedule_steps``), and the steps beyond it run at the floor lr, so the
extended run equals, bit for bit on CPU, a fresh run with ``steps`` = the new total and
``schedule_steps`` = the old one. Every other field that changes the trajectory is refused,
naming the flag. The run-control fields (:data:`~namex_ref.train.config.RUN_CONTROL_FIELDS`:
intervals of logging, evaluation and checkpoints, threads, progress, tensorboard, device,
folders) may change; the changes are announced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from namex_ref.train.checkpoint import Checkpoint, CorruptCheckpointError, load_checkpoint
from namex_ref.train.config import RUN_CONTROL_FIELDS, TrainConfig, flag_name
from namex_ref.train.metrics import read_jsonl
from namex_ref.train.reporter import Reporter
from namex_ref.train.run import CHECKPOINT_NAME, METRICS_NAME, PREVIOUS_NAME

__all__ = ["ResumePoint", "StartMode", "announce_resume", "config_mismatch", "load_resume_point",
           "operational_changes", "plan_resume"]


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: ``config`` (``schedule_steps`` filled in when a run is extended),
    the checkpoint and its file (``None`` for a fresh start), and ``extended_from`` (the
    checkpoint's ``steps`` when more are asked for, else 0)."""

    config: TrainConfig
    ckpt: Checkpoint | None = None
    source: Path | None = None
    extended_from: int = 0
    changed: tuple[str, ...] = ()
    """Run-control fields changed since the checkpoint, as "--flag old -> new"."""

    @property
    def step(self) -> int:
        """The last step already trained (0 for a fresh start)."""
        return 0 if self.ckpt is None else self.ckpt.step


def load_resume_point(
    out: Path, main: bool, say: Reporter
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


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Trajectory fields of a config dict, with ``steps`` replaced by the schedule length (a
    run may be extended; what must not change is the schedule it was trained under)."""
    full = {**TrainConfig().to_dict(), **values}  # fields added since the checkpoint: defaults
    horizon = full["schedule_steps"] or full["steps"]
    out = {k: v for k, v in full.items() if k not in RUN_CONTROL_FIELDS and k != "steps"}
    out["schedule_steps"] = horizon
    return out


def operational_changes(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """"--flag old -> new" for each :data:`~namex_ref.train.config.RUN_CONTROL_FIELDS` field
    where ``config`` differs from the checkpoint's (allowed on resume, and announced)."""
    old, new = {**TrainConfig().to_dict(), **saved}, config.to_dict()
    return [f"{flag_name(k)} {old[k]!r} -> {new[k]!r}"
            for k in sorted(RUN_CONTROL_FIELDS) if old[k] != new[k]]


def config_mismatch(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """One line per trajectory field where ``config`` differs from the checkpoint's."""
    old, new = _comparable(saved), _comparable(config.to_dict())
    return [
        f"{flag_name(k)}: checkpoint {old.get(k)!r} != requested {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


StartMode = bool | Literal["if-present", "overwrite"]
"""How a run treats its folder: ``False`` fresh (refused when it holds a checkpoint), ``True``
resume, ``"if-present"`` resume when there is a checkpoint, ``"overwrite"`` fresh, the old run
set aside until the new one's first checkpoint (:class:`~namex_ref.train.run.SetAside`)."""


def plan_resume(config: TrainConfig, resume: StartMode, out: Path,
                main: bool, say: Reporter) -> ResumePoint:
    """The :class:`ResumePoint` of a run asked for with ``resume`` (see :func:`~namex_ref.train.
    train`).

    Raises:
        ValueError: a fresh run in a folder that holds a checkpoint; ``resume=True`` without
            one; a trajectory field changed; fewer steps than the checkpoint's.
        CorruptCheckpointError: no usable checkpoint (names the files).
    """
    if resume == "overwrite":
        return ResumePoint(config)
    if not resume:
        if (out / CHECKPOINT_NAME).is_file() or (out / PREVIOUS_NAME).is_file():
            raise ValueError(
                f"{str(out)!r} already holds a checkpoint: continue it with --resume "
                f"(API: resume=True), replace it with --overwrite (resume='overwrite'), or "
                f"choose another --out folder"
            )
        return ResumePoint(config)
    ckpt, source = load_resume_point(out, main, say)
    if ckpt is None:
        if resume != "if-present":
            raise ValueError(
                f"--resume: {str(out)!r} holds no checkpoint ({CHECKPOINT_NAME} or "
                f"{PREVIOUS_NAME}) to resume; drop --resume to start a fresh run there, or "
                f"pass --resume-if-present to resume only when there is one"
            )
        return ResumePoint(config)
    saved = {**TrainConfig().to_dict(), **ckpt.config}
    horizon = saved["schedule_steps"] or saved["steps"]
    extended_from = 0
    if saved["steps"] != config.steps:
        extended_from = int(saved["steps"])
        # --schedule-steps left at 0 on a run of another length: keep the saved schedule
        if config.schedule_steps == 0 and horizon != config.steps:
            config = dataclasses.replace(config, schedule_steps=horizon)
    problems = config_mismatch(ckpt.config, config)
    if problems:
        raise ValueError(
            "refusing to resume with a different configuration: " + "; ".join(problems)
        )
    if ckpt.step > config.steps:
        raise ValueError(
            f"--steps: the checkpoint is at step {ckpt.step}, beyond the requested "
            f"--steps {config.steps}; ask for at least {ckpt.step} steps"
        )
    return ResumePoint(config, ckpt, source, extended_from,
                       tuple(operational_changes(ckpt.config, config)))


def announce_resume(point: ResumePoint, metrics_path: Path, say: Reporter) -> None:
    """Rank 0's messages on resuming: the step and file, lines missing from the metrics, an
    unverified (legacy) checkpoint, an extended run."""
    config, ckpt, start = point.config, point.ckpt, point.step
    assert ckpt is not None
    say(f"resuming from step {start} of {config.steps} (checkpoint {str(point.source)!r})")
    if point.changed:
        say(f"run settings changed since the checkpoint (they do not change the trajectory): "
            f"{', '.join(point.changed)}")
    every = int({**TrainConfig().to_dict(), **ckpt.config}["log_every"])  # the lines written
    present = {int(r["step"]) for r in read_jsonl(metrics_path)}
    lost = [k for k in range(every, start + 1, every) if k not in present]
    if lost:
        say.note(f"warning: {METRICS_NAME} lacks the lines of steps "
                 f"{', '.join(map(str, lost))} (at or before the checkpoint, so they are "
                 f"not trained again); the run continues from step {start}")
    if not ckpt.verified:
        say.note(f"note: {str(point.source)!r} predates checkpoint checksums; loaded "
                 f"without verification")
    if point.extended_from:
        say(f"extending a run of {point.extended_from} steps to {config.steps}; the lr "
            f"schedule keeps its length of {config.schedule_length} steps, later steps "
            f"run at the floor lr {config.lr * config.min_lr_ratio:.3g}")
