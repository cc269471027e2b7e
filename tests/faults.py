"""Fault injectors shared by the training tests: patch ``MoEGPT.forward`` so that the n-th
training forward (a call with targets in training mode) crashes, returns a NaN loss, or sends
this process a real signal."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import torch

from namex_ref.models.gpt import MoEGPT


def _on_training_forward(monkeypatch: pytest.MonkeyPatch, n: int, fault: str,
                         signals: tuple[signal.Signals, ...] = ()) -> None:
    real = MoEGPT.forward
    calls = {"n": 0}

    def forward(self: MoEGPT, idx: torch.Tensor, targets: Any = None, **k: Any) -> Any:
        hit = False
        if targets is not None and self.training:
            calls["n"] += 1
            hit = calls["n"] == n
        if hit and fault == "crash":
            raise KeyboardInterrupt
        if hit and fault == "signal":
            for sig in signals:
                signal.raise_signal(sig)  # delivered to this (the main) thread's handler
        out = real(self, idx, targets, **k)
        return out._replace(loss=out.loss * float("nan")) if hit and fault == "nan" else out

    monkeypatch.setattr(MoEGPT, "forward", forward)


def die_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th training forward raises KeyboardInterrupt (a crash between checkpoints)."""
    _on_training_forward(monkeypatch, n, "crash")


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The n-th training forward returns a NaN loss (its outputs otherwise unchanged)."""
    _on_training_forward(monkeypatch, n, "nan")


def signal_at(monkeypatch: pytest.MonkeyPatch, n: int, *signals: signal.Signals) -> None:
    """The n-th training forward sends this process ``signals``, in order, before computing
    (the step then completes unless a handler raises)."""
    _on_training_forward(monkeypatch, n, "signal", signals)
