"""Plots of the report (matplotlib's object API; no global pyplot state): validation perplexity
against training length per method, and fine-tuning scores per method. Mean ± 95 % interval
(bars where n ≥ 2) and the per-seed values (points)."""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    """Validation perplexity vs steps (log axis), one line per method; returns the file name."""
    from matplotlib.figure import Figure

    from studies.study2.report import cells

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for k, m in enumerate(methods):
        xs, ys, es = [], [], []
        for steps in lengths:
            cell = cells(runs, "length", steps, "ppl").get(m)
            if not cell:
                continue
            e = cell_estimate(cell)
            shift = 1 + 0.03 * (k - len(methods) / 2)  # side by side on the log axis
            xs.append(int(steps) * shift)
            ys.append(e.mean)
            es.append(e.ci if math.isfinite(e.ci) else 0.0)
            ax.scatter([int(steps) * shift] * len(cell), list(cell.values()), s=8,
                       color=f"C{k}", alpha=0.5)
        if xs:
            ns = ", ".join(str(len(cells(runs, "length", s, "ppl").get(m, {}))) for s in lengths)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color=f"C{k}",
                        label=f"{m} (n = {ns})")
    ax.set_xscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Tiny preset: perplexity vs training length (mean ± 95% CI)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, name, out)


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
