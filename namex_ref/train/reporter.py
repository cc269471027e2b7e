"""What a run tells its user: lines appended to ``train.log`` and echoed to the terminal."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Reporter", "clock"]


class Reporter:
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

    def open_bar(self, total: int, initial: int, desc: str) -> None:
        """Show a tqdm bar (a terminal only); later lines are written through it."""
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


def clock(seconds: float) -> str:
    """``seconds`` as H:MM:SS (0:00:00 when not finite)."""
    s = round(seconds) if math.isfinite(seconds) else 0
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
