"""Validation loss of a model over the deterministic windows of a token split."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from namex_ref.data import eval_windows
from namex_ref.train.builder import model_config_of

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ids: Tensor,
    *,
    batch_size: int,
    max_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, Tensor]:
    """Mean next-token cross-entropy over the deterministic windows of ``ids`` (N,), and the
    per-layer expert cosine similarity (L,).

    Windows: :func:`namex_ref.data.eval_windows` with T = the model's seq_len (full windows
    only), stacked ``batch_size`` at a time; the first ``max_batches`` stacks (0 = all). Rank r
    of W evaluates stacks r, r+W, …; the token-weighted sum is all-reduced.
    """
    was_training = model.training
    model.eval()
    mcfg = model_config_of(model)
    T = mcfg.seq_len
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [Σ ce·tokens, tokens]
    cosine = torch.full((mcfg.n_layer,), math.nan)
    for k, batch in enumerate(eval_windows(ids, T, batch_size, drop_last=True)):
        if max_batches and k >= max_batches:
            break
        if k == 0:
            out = model(batch.x[:1].to(device), collect_stats=True)
            cosine = out.stats.cosine.detach().double().cpu()
        if k % world_size != rank:
            continue
        x, y = batch.x.to(device), batch.y.to(device)
        out = model(x, y)
        assert out.ce is not None
        total[0] += out.ce.double() * y.numel()
        total[1] += y.numel()
    if world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    n = float(total[1])
    if n == 0:
        raise ValueError("the validation split holds no full window of seq_len tokens")
    return float(total[0]) / n, cosine
