"""SIGINT and SIGTERM during training: finish the current step, checkpoint, stop.

:func:`catch_interrupts` installs one handler for both signals for the duration of a run and
restores the previous handlers afterwards. The first signal only sets :attr:`Interrupts.signum`;
the loop reads it after each step (under several processes at log steps, where the ranks agree
on it with an all-reduce), writes a checkpoint and raises :class:`TrainingInterrupted`. A second
signal restores the previous handlers and exits at once: ``KeyboardInterrupt`` for SIGINT,
``SystemExit(143)`` for SIGTERM (a checkpoint being written is then abandoned; the files are
written atomically, so the previous checkpoint stays intact).

Handlers can only be installed from the main thread; elsewhere (a run inside a worker thread)
signals keep their previous behaviour.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "Interrupts", "TrainingInterrupted", "catch_interrupts", "exit_status"]

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""The signals a run turns into a checkpoint and a clean stop."""


def exit_status(signum: int) -> int:
    """The conventional exit status of a process stopped by ``signum``: 128 + signum (130 for
    SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class TrainingInterrupted(Exception):
    """A run stopped on a signal after writing the checkpoint of ``step`` (of ``steps``)."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: str) -> None:
        self.signum, self.step, self.steps, self.checkpoint = signum, step, steps, checkpoint
        super().__init__(interrupted_message(step, steps))

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


def interrupted_message(step: int, steps: int) -> str:
    """What the terminal and train.log say when a run stops on a signal."""
    return f"interrupted at step {step} of {steps}; checkpoint written; continue with --resume"


class Interrupts:
    """The signal seen so far (``signum``, 0 = none) and the handlers to put back."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[signal.Signals, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """First signal: remember it. Second: restore the previous handlers and exit."""
        if self.signum == 0:
            self.signum = signum
            return
        self.restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(exit_status(signum))

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


@contextmanager
def catch_interrupts() -> Iterator[Interrupts]:
    """Install :meth:`Interrupts.handle` for SIGINT and SIGTERM (main thread only) for the
    duration of the block; the previous handlers are restored on the way out."""
    state = Interrupts()
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            state.previous[sig] = signal.signal(sig, state.handle)
    try:
        yield state
    finally:
        state.restore()
