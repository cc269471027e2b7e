"""The optimiser of a run: AdamW with weight decay on matrices only, and its learning-rate
schedule (linear warmup, then cosine decay to a floor)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from namex_ref.train.config import TrainConfig

__all__ = ["lr_at", "make_optimizer", "param_groups", "set_lr"]

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of ``step`` (1-based): linear warmup to ``lr`` over W steps, then cosine
    decay to ``lr * min_lr_ratio`` at step H, and ``lr * min_lr_ratio`` after H.

    H = ``config.schedule_length`` (``schedule_steps``, or ``steps`` when that is 0) and
    W = ``config.effective_warmup`` = min(``warmup``, H).
    """
    horizon, warmup = config.schedule_length, config.effective_warmup
    if warmup and step <= warmup:
        return config.lr * step / warmup
    span = max(horizon - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on tensors with ≥ 2 dims (matrices, embeddings), none on the rest."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (:func:`param_groups`), β = (0.9, 0.95)."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's learning rate := ``lr`` (a Python float: no device write)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
