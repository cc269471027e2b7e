"""The metrics interval of a training run: device accumulators of the steps since the last log
step, read (one host sync) when the metrics line is written.

A run stopped by a signal between two log steps saves the interval's partial sums in its
checkpoint (:meth:`Interval.state`), so the resumed run's next metrics line averages exactly
the same steps, in the same order, as the uninterrupted run's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from namex_ref.models.gpt import ModelOutput
from namex_ref.train.metrics import clean_json

__all__ = ["Interval", "mean_output", "nested_list"]


def nested_list(t: Tensor) -> Any:
    """``t`` as nested Python floats for JSON (NaN and infinities as ``None``)."""
    return clean_json(t.detach().double().cpu().tolist())


class Interval:
    """Device accumulators of the steps since the last log step.

    sums: (3,) float64 [Σ loss, Σ ce, Σ aux]; res_max: () float64 largest Newton residual
    (-inf: no bargain yet); fallbacks: () int64 cumulative over the run; first_bad: () int64
    first step with a non-finite loss (-1: none); alphas: (L, N) α of the last step;
    n: steps in the means; timed: steps since the interval's clock started (a resumed
    interval's earlier steps are in ``n`` but were timed by the process that ran them).
    """

    def __init__(self, device: torch.device, fallbacks_done: int) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, aux
        self.res_max = torch.full((), -math.inf, dtype=torch.float64, device=device)
        self.fallbacks = torch.full((), fallbacks_done, dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.alphas = torch.zeros(0)
        self.n = 0
        self.timed = 0

    def add(self, step: int, out: ModelOutput, grad_norm: Tensor) -> None:
        """Accumulate one step's loss terms, largest residual (NaN = no bargain: ignored),
        fallbacks, first non-finite loss; keep its α and gradient norm."""
        assert out.loss is not None and out.ce is not None
        d_loss = out.loss.detach()
        self.sums += torch.stack([d_loss, out.ce.detach(), out.aux_loss.detach()]).double()
        r = out.stats.residuals.detach().double()
        self.res_max = torch.maximum(self.res_max, torch.where(r.isnan(), -math.inf, r).max())
        self.fallbacks += out.stats.fallbacks.sum()
        self.first_bad = torch.where(
            (~torch.isfinite(d_loss)) & (self.first_bad < 0),
            torch.full_like(self.first_bad, step), self.first_bad,
        )
        self.alphas = out.stats.alphas.detach()
        self.grad_norm = grad_norm
        self.n += 1
        self.timed += 1

    def all_reduce(self, world: int) -> None:
        """Mean loss sums and the earliest bad step over the ranks."""
        if world > 1:
            dist.all_reduce(self.sums)
            self.sums /= world
            dist.all_reduce(self.first_bad, op=dist.ReduceOp.MAX)

    def record(self, step: int, lr: float, seconds: float, elapsed: float,
               tokens_per_step: int) -> dict[str, Any]:
        """The metrics line of ``step`` (:data:`~namex_ref.train.metrics.LOG_FIELDS`); the
        interval's ``timed`` steps took ``seconds``, the run so far ``elapsed``."""
        mean = (self.sums / self.n).tolist()
        rm = float(self.res_max)
        timed = max(self.timed, 1)
        return {
            "step": step,
            "loss": mean[0],
            "ce": mean[1],
            "aux": mean[2],
            "lr": lr,
            "grad_norm": float(self.grad_norm),
            "tokens_per_s": timed * tokens_per_step / seconds,
            "step_s": seconds / timed,
            "elapsed_s": elapsed,
            "alpha": nested_list(self.alphas) if self.alphas.numel() else None,
            "residual_max": rm if math.isfinite(rm) else None,
            "fallbacks": int(self.fallbacks),
        }

    def reset(self) -> None:
        """Start the next interval (the cumulative ``fallbacks`` and ``first_bad`` stay)."""
        self.sums.zero_()
        self.res_max.fill_(-math.inf)
        self.n = 0
        self.timed = 0

    def state(self, world: int) -> dict[str, Any]:
        """The partial interval for a checkpoint ({} when empty): the sums over all ranks
        (an all-reduce under several processes), the largest residual and the step count.
        JSON-able; Python floats keep float64 values exactly."""
        if self.n == 0:
            return {}
        sums = self.sums.clone()
        if world > 1:
            dist.all_reduce(sums)
        return {"sums": sums.tolist(), "res_max": float(self.res_max), "n": self.n}

    def load_state(self, state: dict[str, Any], main: bool) -> None:
        """Continue a partial interval saved by :meth:`state`. Rank 0 takes the saved sums (of
        all ranks), the others start from zero, so the next all-reduce adds them once."""
        if not state:
            return
        if main:
            self.sums.copy_(torch.tensor(state["sums"], dtype=torch.float64))
        self.res_max.fill_(float(state["res_max"]))
        self.n = int(state["n"])


def mean_output(outs: list[ModelOutput]) -> ModelOutput:
    """A step's observables from its ``grad_accum`` micro-batches: the mean loss terms (equal
    micro-batch sizes) and the first micro-batch's layer statistics (the bargains depend on the
    parameters only, so every micro-batch solves the same ones; fallbacks count once a step)."""

    def mean(ts: list[Tensor | None]) -> Tensor:
        return torch.stack([t for t in ts if t is not None]).mean()

    return outs[0]._replace(loss=mean([o.loss for o in outs]), ce=mean([o.ce for o in outs]),
                            aux_loss=mean([o.aux_loss for o in outs]))
