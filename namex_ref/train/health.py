"""Finiteness of a training run: the loss (read at log steps from a device flag) and the whole
state (parameters and optimizer state, at checkpoint steps), and the error a user gets."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from namex_ref.train.config import TrainConfig, flag_name
from namex_ref.train.schedule import lr_at

__all__ = ["NonFiniteLossError", "check_finite", "nonfinite_error", "state_is_finite"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def nonfinite_error(what: str, step: int, config: TrainConfig,
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


def check_finite(first_bad: Tensor, config: TrainConfig,
                 last_ckpt: tuple[Path, int] | None = None) -> None:
    """Raise :class:`NonFiniteLossError` when ``first_bad`` (a () int64 device tensor: the
    first step with a non-finite loss, or -1) is set. One host sync."""
    bad = int(first_bad)
    if bad >= 0:
        raise nonfinite_error("non-finite training loss", bad, config, last_ckpt)


def state_is_finite(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
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
