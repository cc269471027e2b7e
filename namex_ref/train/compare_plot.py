"""The picture of a comparison (``compare.png``): how each method's validation loss evolves
against training steps and against training wall-clock time, beside the final validation
perplexities with their 95% intervals.

Curves come from each run's ``metrics.jsonl`` (:mod:`namex_ref.train.metrics`): the periodic
``valid_loss`` at evaluation steps, and the training time up to a step as the sum of
``step_s × steps`` over the logged intervals (evaluation and checkpoints excluded, resumes
included). Over a method's seeds the line is the mean at the evaluation steps all seeds share,
and the band spans the lowest to the highest seed (no band for one seed). The perplexity panel
is :func:`plot_title`'s: per-seed points and the mean with its Student t interval where n ≥ 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from namex_ref.train.comparison import MethodSummary

__all__ = [
    "Curve",
    "compare_figure",
    "mean_curve",
    "plot_compare",
    "plot_title",
    "validation_curve",
]


@dataclass(frozen=True)
class Curve:
    """A validation-loss curve: ``steps`` (evaluation steps, increasing), ``seconds`` (training
    wall-clock seconds up to each step), ``loss`` (mean cross-entropy in nats), and ``low`` /
    ``high`` (the band; equal to ``loss`` for one run)."""

    steps: tuple[int, ...]
    seconds: tuple[float, ...]
    loss: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


def validation_curve(records: Sequence[Mapping[str, Any]]) -> Curve:
    """One run's curve from its metric records (``metrics.jsonl`` lines, in step order).

    Training time at step s = Σ over logged intervals up to s of ``step_s`` × interval length;
    a record without ``step_s`` (an older file) adds nothing.
    """
    steps: list[int] = []
    seconds: list[float] = []
    loss: list[float] = []
    clock, previous = 0.0, 0
    for r in sorted(records, key=lambda r: int(r["step"])):
        step = int(r["step"])
        if r.get("step_s") is not None:
            clock += float(r["step_s"]) * (step - previous)
        previous = step
        value = r.get("valid_loss")
        if value is not None and math.isfinite(float(value)):
            steps.append(step)
            seconds.append(clock)
            loss.append(float(value))
    return Curve(tuple(steps), tuple(seconds), tuple(loss), tuple(loss), tuple(loss))


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """Mean over runs at the evaluation steps every run has (loss and seconds), with the band
    from the lowest to the highest run's loss."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    shared = sorted(set.intersection(*(set(c.steps) for c in curves)))
    at = [{s: i for i, s in enumerate(c.steps)} for c in curves]
    loss = [[c.loss[ix[s]] for c, ix in zip(curves, at, strict=True)] for s in shared]
    secs = [[c.seconds[ix[s]] for c, ix in zip(curves, at, strict=True)] for s in shared]
    return Curve(
        tuple(shared),
        tuple(math.fsum(v) / len(v) for v in secs),
        tuple(math.fsum(v) / len(v) for v in loss),
        tuple(min(v) for v in loss),
        tuple(max(v) for v in loss),
    )


def plot_title(summaries: Sequence[MethodSummary]) -> str:
    """The title of the perplexity panel: it names what is drawn (no CI claim for n = 1)."""
    ns = sorted({len(s.ppl) for s in summaries})
    if ns == [1]:
        return "validation perplexity, one seed per method (no CI)"
    if len(ns) == 1:
        return f"validation perplexity: {ns[0]} seeds (points), mean ± 95% CI (Student t)"
    return ("validation perplexity: seeds (points), mean ± 95% CI (Student t) where n ≥ 2, "
            "n per method = " + ", ".join(str(len(s.ppl)) for s in summaries))


def _draw_curves(axes: Sequence[Any], curves: Mapping[str, Curve], colors: Mapping[str, Any],
                 n_seeds: Mapping[str, int]) -> None:
    """Loss against steps (axes[0]) and against seconds (axes[1]), one colour per method."""
    for method, c in curves.items():
        for ax, x in ((axes[0], c.steps), (axes[1], c.seconds)):
            ax.plot(x, c.loss, "o-", ms=3, lw=1.5, color=colors[method], label=method)
            if n_seeds.get(method, 1) > 1:
                ax.fill_between(x, c.low, c.high, color=colors[method], alpha=0.18, lw=0)
    band = " (band: seed range)" if any(n > 1 for n in n_seeds.values()) else ""
    for ax, xlabel in ((axes[0], "training step"),
                       (axes[1], "training wall-clock (s, evaluation excluded)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats)")
        ax.grid(alpha=0.3)
        ax.set_title(f"validation loss, mean over seeds{band}", fontsize=9)
    if not curves:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no periodic evaluations in metrics.jsonl", ha="center",
                    va="center", transform=ax.transAxes)


def _draw_ppl(ax: Any, summaries: Sequence[MethodSummary], colors: Mapping[str, Any]) -> None:
    """Per-seed perplexities (grey points) and mean ± 95% CI, one row per method (top = first)."""
    for i, s in enumerate(summaries):
        y = len(summaries) - 1 - i
        ax.scatter(s.ppl, [y] * len(s.ppl), color="tab:gray", s=14, zorder=2)
        err = s.ci if math.isfinite(s.ci) else 0.0
        ax.errorbar([s.mean], [y], xerr=[err], fmt="o", color=colors[s.method], capsize=5,
                    zorder=3)
    ax.set_yticks(range(len(summaries)))
    ax.set_yticklabels([s.method for s in reversed(summaries)])
    ax.set_xlabel("validation perplexity")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(plot_title(summaries), fontsize=9, wrap=True)


def compare_figure(
    summaries: Sequence[MethodSummary], curves: Mapping[str, Curve] | None = None
) -> Figure:
    """The figure of :func:`plot_compare`: three axes, validation loss against steps, against
    wall-clock seconds (one line per method of ``curves``, in that order, and a seed-range band
    where a method has several seeds), and the final perplexities of ``summaries``; with
    ``curves=None`` only the perplexity axes. Colours: one per method (tab10, so 9 methods stay
    apart), shared by the panels and the legend."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no backend selection, no global pyplot state

    names = [s.method for s in summaries]
    names += [m for m in curves or {} if m not in names]
    palette = colormaps["tab10"]
    colors = {m: palette(i % 10) for i, m in enumerate(names)}
    height = max(4.5, 0.35 * len(summaries) + 2.5)
    if curves is None:  # the perplexities alone (studies/report.py: no metrics at hand)
        fig = Figure(figsize=(7, height), layout="constrained")
        _draw_ppl(fig.subplots(), summaries, colors)
        return fig
    n_seeds = {s.method: len(s.ppl) for s in summaries}
    fig = Figure(figsize=(16, height), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 1.0]})
    _draw_curves(axes, curves, colors, n_seeds)
    _draw_ppl(axes[2], summaries, colors)
    if curves:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=min(len(curves), 5), fontsize=9, frameon=False)
    return fig


def plot_compare(
    summaries: Sequence[MethodSummary],
    path: str | os.PathLike[str],
    curves: Mapping[str, Curve] | None = None,
) -> Path:
    """Write ``compare.png`` (:func:`compare_figure`: with ``curves``, empty or not, the two loss
    panels and the perplexities; without, the perplexities alone). Returns ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    compare_figure(summaries, curves).savefig(target, dpi=100)
    return target
