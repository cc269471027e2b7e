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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from namex_ref.train.config import TrainConfig
from namex_ref.train.metrics import clean_json

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "LOG_NAME",
    "METRICS_NAME",
    "PREVIOUS_NAME",
    "RESULT_NAME",
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
