"""Plots of the report (matplotlib's object API; no global pyplot state): validation perplexity
against training length per method, and fine-tuning scores per method. Mean ± 95 % interval
(bars where n ≥ 2) and the per-seed values (points)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studies.study2.stats import cell_estimate


def _save(fig: Any, name: str, out: Path) -> str:
    target = out.parent / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    return name


def plot_length(runs: Sequence[Any], lengths: Sequence[str], methods: Sequence[str], name: str,
                out: Path) -> str:
    """Two panels against steps (log axes): validation perplexity per method, and each merging
    method's gap to SMoE in % of SMoE's perplexity, paired by seed (the report's question: does
    the lead shrink in proportion?); returns the file name."""
    from matplotlib.figure import Figure

    from studies.study2.report import cells

    fig = Figure(figsize=(11, 4))
    ax, gap = fig.subplots(1, 2)
    by_len = {s: cells(runs, "length", s, "ppl") for s in lengths}
    for k, m in enumerate(methods):
        shift = 1 + 0.03 * (k - len(methods) / 2)  # side by side on the log axis
        _errorbars(ax, k, shift, {s: c[m] for s, c in by_len.items() if c.get(m)},
                   f"{m} (n = {', '.join(str(len(c.get(m, {}))) for c in by_len.values())})")
        if m == "smoe":
            continue
        rel = {s: {seed: 100 * (v / c["smoe"][seed] - 1) for seed, v in c[m].items()
                   if seed in c["smoe"]} for s, c in by_len.items() if c.get(m) and c.get("smoe")}
        _errorbars(gap, k, shift, {s: r for s, r in rel.items() if r}, f"{m} − smoe")
    gap.axhline(0.0, color="0.5", linewidth=0.8)
    for a, ylabel, title in (
            (ax, "validation perplexity", "perplexity vs training length (mean ± 95% CI)"),
            (gap, "gap to SMoE, % of SMoE's perplexity",
             "gap to SMoE, paired by seed (mean ± 95% CI)")):
        a.set_xscale("log")
        if lengths:
            ticks = [int(s) for s in lengths]
            a.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
            a.set_xticks(ticks, labels=[str(t) for t in ticks])
            a.minorticks_off()
        a.set_xlabel("training steps")
        a.set_ylabel(ylabel)
        a.set_title(f"Tiny preset: {title}", fontsize=9)
        if a.get_legend_handles_labels()[1]:  # a panel without a line gets no legend
            a.legend(fontsize=7)
    ax.set_yscale("log")
    values = [v for c in by_len.values() for cell in c.values() for v in cell.values()]
    if values:  # plain numbers on the log axis, not powers of ten
        ticks = [t for t in (20, 30, 50, 70, 100, 150, 200, 300, 500, 1000)
                 if min(values) / 1.2 <= t <= max(values) * 1.2]
        ax.set_yticks(ticks, labels=[str(t) for t in ticks])
        ax.minorticks_off()
    return _save(fig, name, out)


def _errorbars(ax: Any, k: int, shift: float, by_steps: Mapping[str, Mapping[int, float]],
               label: str) -> None:
    """One method's line (colour C{k}): mean ± 95 % interval per length, the seeds as points."""
    xs, ys, es = [], [], []
    for steps, cell in by_steps.items():
        e = cell_estimate(cell)
        xs.append(int(steps) * shift)
        ys.append(e.mean)
        es.append(e.ci if math.isfinite(e.ci) else 0.0)
        ax.scatter([int(steps) * shift] * len(cell), list(cell.values()), s=8, color=f"C{k}",
                   alpha=0.5)
    if xs:
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color=f"C{k}", label=label)


def plot_finetune(runs: Sequence[Any], methods: Sequence[str], name: str, out: Path) -> str:
    """Held-out accuracy and macro-F1 per method (two panels); returns the file name."""
    from matplotlib.figure import Figure

    from studies.study2.report import cells

    fig = Figure(figsize=(9, 4))
    for ax, (metric, label) in zip(fig.subplots(1, 2), (("acc", "accuracy (%)"),
                                                        ("f1", "macro-F1 (%)")), strict=True):
        cs = cells(runs, "finetune", "", metric, methods)
        for i, cell in enumerate(cs.values()):
            e = cell_estimate(cell)
            ax.scatter([i] * len(cell), list(cell.values()), color="tab:gray", s=12)
            ax.errorbar([i], [e.mean], yerr=[e.ci if math.isfinite(e.ci) else 0.0], fmt="o",
                        color="tab:blue", capsize=5)
        ax.set_xticks(range(len(cs)))
        ax.set_xticklabels([f"{m}\nn={len(c)}" for m, c in cs.items()], rotation=30,
                           ha="right", fontsize=7)
        ax.set_ylabel(f"held-out {label}")
    fig.suptitle("Fine-tuning from one pre-trained SMoE (mean ± 95% CI)", fontsize=9)
    return _save(fig, name, out)


def eval_curve(path: Path) -> tuple[list[int], list[float]]:
    """(steps, periodic validation perplexity) from a run's metrics.jsonl; a step logged twice
    (a run resumed from an earlier checkpoint rewrites it) counts once, the last line wins."""
    import json

    by_step: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.endswith("}"):
                continue  # a line torn by a kill
            rec = json.loads(line)
            if rec.get("valid_ppl") is not None:
                by_step[int(rec["step"])] = float(rec["valid_ppl"])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_curves(runs: Sequence[Any], root: Path, lengths: Sequence[str],
                methods: Sequence[str], name: str, out: Path) -> str:
    """Periodic validation perplexity (4 batches) against the step, one panel per length, one
    line per (method, seed) of the finished runs; returns the file name."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * max(len(lengths), 1), 3.6))
    axes = fig.subplots(1, max(len(lengths), 1), squeeze=False)[0]
    for ax, steps in zip(axes, lengths, strict=False):
        drawn = 0
        for k, m in enumerate(methods):
            mine = [r for r in runs if r.group == "length" and r.setting == steps and r.tag == m]
            for i, r in enumerate(mine):
                xs, ys = eval_curve(root / r.job.key / "metrics.jsonl")
                ax.plot(xs, ys, color=f"C{k}", lw=1, alpha=0.8,
                        label=f"{m} (n = {len(mine)})" if i == 0 else None)
                drawn += 1
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished run yet", ha="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_title(f"{steps} steps", fontsize=9)
    axes[0].set_ylabel("validation perplexity (4 batches)")
    return _save(fig, name, out)
