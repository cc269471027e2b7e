"""TensorBoard event files beside ``metrics.jsonl`` (``--tensorboard``; the optional extra
``tensorboard``). The JSONL stays the source of truth: :class:`ScalarWriter` is handed every
metrics record as it is appended and writes its scalar fields (``loss``, ``ce``, ``aux``,
``lr``, ``grad_norm``, ``tokens_per_s``, ``step_s``, ``elapsed_s``, ``residual_max``,
``fallbacks``; ``valid_loss``, ``valid_ppl`` at evaluation steps) under the tag of the field
name at the record's ``step``. List fields (``alpha``, ``cosine``) and absent values (``None``)
are skipped. TensorBoard stores float32: a value reads back as the JSONL value rounded to float32.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["TENSORBOARD_EXTRA_HINT", "TENSORBOARD_FOLDER", "ScalarWriter", "require_tensorboard"]

TENSORBOARD_EXTRA_HINT = "pip install 'namex-ref[tensorboard]'"
"""The install command of the optional extra that brings TensorBoard."""
TENSORBOARD_FOLDER = "tensorboard"
"""The folder under the run's ``out`` that holds the event files."""


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or ``ImportError`` naming the extra (one line)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            f"--tensorboard needs the tensorboard package, which is not installed; install the "
            f"optional extra with `{TENSORBOARD_EXTRA_HINT}`"
        ) from err
    return SummaryWriter


class ScalarWriter:
    """Rank 0's TensorBoard writer of one run: ``out/tensorboard/events.out.tfevents.*``.

    fresh: a fresh run deletes the event files of an earlier run in the folder first; a resumed
    run (``start`` > 0) keeps them and marks the steps after ``start`` as purged, so TensorBoard
    shows each step once, as ``metrics.jsonl`` (cut back to the checkpoint) does.
    Raises ImportError (naming the extra) when tensorboard is not installed.
    """

    def __init__(self, out: Path, start: int) -> None:
        summary_writer = require_tensorboard()
        folder = out / TENSORBOARD_FOLDER
        if start == 0 and folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink(missing_ok=True)
        self.writer = summary_writer(str(folder), purge_step=start + 1 if start else None)

    def write(self, record: dict[str, Any]) -> None:
        """Write the scalar fields of one metrics record at its ``step`` and flush."""
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        self.writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
