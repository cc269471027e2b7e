"""A run folder: the names of its files, the :class:`TrainResult` it ends with, and the check
that ``--out`` can be one.

Files: ``checkpoint.safetensors`` (latest) and ``checkpoint.prev.safetensors`` (the one before),
``metrics.jsonl`` (:mod:`namex_ref.train.metrics`), ``train.log`` (announcements and progress),
``config.json`` and, once the run has finished, ``result.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from namex_ref.train.config import TrainConfig
from namex_ref.train.metrics import clean_json

__all__ = [
    "ASIDE_NAME",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "LOG_NAME",
    "METRICS_NAME",
    "PREVIOUS_NAME",
    "RESULT_NAME",
    "SetAside",
    "TrainResult",
    "read_result",
    "require_out_folder",
    "write_result",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
"""The latest checkpoint of a run folder."""
PREVIOUS_NAME = "checkpoint.prev.safetensors"
"""The checkpoint before the latest (the fallback when the latest is corrupt or missing)."""
LOG_NAME = "train.log"
"""The progress log of a run folder (announcements, a line per log step, evaluations)."""
METRICS_NAME = "metrics.jsonl"
"""The metrics of a run folder, one JSON object per log step (:mod:`namex_ref.train.metrics`)."""
RESULT_NAME = "result.json"
"""The :class:`TrainResult` of a finished run (written last, atomically)."""
CONFIG_NAME = "config.json"
"""The :class:`~namex_ref.train.config.TrainConfig` of the run's latest start."""
ASIDE_NAME = ".replaced"
"""Where ``--overwrite`` keeps the old run's files until the new run's first checkpoint."""
_RUN_FILES = (CHECKPOINT_NAME, PREVIOUS_NAME, f"{CHECKPOINT_NAME}.corrupt", METRICS_NAME,
              LOG_NAME, CONFIG_NAME, RESULT_NAME, "loss.png", "alpha.png", "cosine.png", "model")


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


def write_result(out: Path, result: TrainResult) -> None:
    """``out/result.json`` written atomically (temporary file, then ``os.replace``)."""
    tmp = out / f".{RESULT_NAME}.tmp"
    tmp.write_text(json.dumps(clean_json(result.to_dict()), indent=2) + "\n")
    os.replace(tmp, out / RESULT_NAME)


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


class SetAside:
    """``--overwrite``: move the run files of ``out`` (checkpoints, metrics, log, config,
    result, plots, an exported ``model/``; nothing else) into ``out/.replaced``.

    :meth:`drop` deletes them (called once the new run's first checkpoint is written). Used as
    a context manager around the new run: when the block raises before :meth:`drop`, the new
    run's files are removed and the old ones moved back, so a failed start loses nothing.
    ``main=False`` (DDP ranks other than 0) does nothing.
    """

    def __init__(self, out: Path, main: bool = True) -> None:
        self.out, self.aside = out, out / ASIDE_NAME
        self.moved: list[str] = []
        if not main:
            return
        shutil.rmtree(self.aside, ignore_errors=True)  # left by an earlier failed restore
        self.aside.mkdir(parents=True)
        for name in _RUN_FILES:
            if (out / name).exists():
                os.replace(out / name, self.aside / name)
                self.moved.append(name)

    def drop(self) -> None:
        """The new run has a checkpoint: delete the old run."""
        if self.moved or self.aside.exists():
            shutil.rmtree(self.aside, ignore_errors=True)
        self.moved = []

    def __enter__(self) -> SetAside:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None or not self.aside.exists():
            return
        for name in _RUN_FILES:  # the failed new run's files
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for name in self.moved:
            os.replace(self.aside / name, self.out / name)
        shutil.rmtree(self.aside, ignore_errors=True)
