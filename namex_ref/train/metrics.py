"""Training metrics as JSON lines: one object per log step (and the eval fields at eval steps).

Schema (:data:`LOG_FIELDS` always present; :data:`EVAL_FIELDS` at evaluation steps). NaN and
infinities, which JSON cannot hold, are written as ``null``:

    step (int), loss / ce / aux (float, means over the steps since the previous line), lr,
    grad_norm (global norm before clipping, last step), tokens_per_s, step_s (wall seconds per
    step over the interval, evaluation excluded), elapsed_s, alpha ((L, N) α per layer at the
    last step; null rows where the layer solves no bargain), residual_max (largest Newton
    residual over the interval's layers and steps; null without bargains), fallbacks
    (cumulative singular-bargain fallbacks, summed over layers and all steps so far).
    Eval: valid_loss, valid_ppl, cosine ((L,) mean off-diagonal expert cosine similarity).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "EVAL_FIELDS",
    "LOG_FIELDS",
    "append_jsonl",
    "clean_json",
    "read_jsonl",
    "truncate_after",
]

LOG_FIELDS: tuple[str, ...] = (
    "step",
    "loss",
    "ce",
    "aux",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "step_s",
    "elapsed_s",
    "alpha",
    "residual_max",
    "fallbacks",
)
EVAL_FIELDS: tuple[str, ...] = ("valid_loss", "valid_ppl", "cosine")


def clean_json(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (recursively through lists/dicts)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    return value


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON object as a line and flush it to disk."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(clean_json(record), allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete lines of a JSONL file (a trailing partial line, left by a kill, is skipped)."""
    target = Path(path)
    if not target.is_file():
        return []
    records: list[dict[str, Any]] = []
    with target.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


def truncate_after(path: str | os.PathLike[str], step: int) -> None:
    """Keep only the lines with ``step <= step`` (used on resume; rewritten atomically)."""
    target = Path(path)
    if not target.is_file():
        return
    kept = [r for r in read_jsonl(target) if int(r["step"]) <= step]
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for r in kept:
            handle.write(json.dumps(r, allow_nan=False) + "\n")
    os.replace(tmp, target)
