"""Plots of a run's metrics (matplotlib, Agg backend), written beside ``metrics.jsonl``.

``loss.png``: training loss per log step and validation loss at evaluation steps.
``alpha.png``: α_i per MoE layer over steps (one panel per layer; layers without a bargain say
so). ``cosine.png``: mean off-diagonal cosine similarity between a layer's experts (or domain
vectors) per layer over steps, and its final value per layer (as the paper's Fig. 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["plot_run"]


def _pyplot() -> Any:
    """``subplots`` and ``close`` on plain ``matplotlib.figure.Figure`` objects.

    Writing PNGs this way never selects a backend nor touches pyplot's global state, so a
    notebook that trains and then shows its own figures still displays them inline.
    """
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    def subplots(*args: Any, figsize: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    return SimpleNamespace(subplots=subplots, close=lambda fig: None)


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def plot_run(
    records: list[dict[str, Any]], out: str | os.PathLike[str], title: str = ""
) -> list[Path]:
    """Write loss.png, alpha.png and cosine.png for one run's metric ``records`` into ``out``.

    Returns the paths written.
    """
    plt = _pyplot()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    steps = [int(r["step"]) for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [_num(r.get("loss")) for r in records], label="train loss")
    ev = [r for r in records if r.get("valid_loss") is not None]
    if ev:
        ax.plot([r["step"] for r in ev], [r["valid_loss"] for r in ev], "o-", label="valid loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"{title} loss".strip())
    ax.legend()
    fig.tight_layout()
    written.append(folder / "loss.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    alphas = [r.get("alpha") for r in records]
    n_layer = max((len(a) for a in alphas if a), default=0)
    fig, axes = plt.subplots(1, max(n_layer, 1), figsize=(3 * max(n_layer, 1), 3), squeeze=False)
    for layer in range(n_layer):
        ax = axes[0][layer]
        rows = [(s, a[layer]) for s, a in zip(steps, alphas, strict=True) if a and a[layer]]
        rows = [(s, row) for s, row in rows if all(v is not None for v in row)]
        if rows:
            n_exp = len(rows[0][1])
            for i in range(n_exp):
                ax.plot([s for s, _ in rows], [row[i] for _, row in rows], label=f"α{i + 1}")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no bargain", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("step")
    if n_layer == 0:
        axes[0][0].text(0.5, 0.5, "no α (method solves no bargain)", ha="center", va="center")
    fig.suptitle(f"{title} α per layer".strip())
    fig.tight_layout()
    written.append(folder / "alpha.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    cos = [(int(r["step"]), r["cosine"]) for r in records if r.get("cosine")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    if cos:
        n_l = len(cos[0][1])
        for layer in range(n_l):
            ax1.plot([s for s, _ in cos], [_num(c[layer]) for _, c in cos], "o-",
                     label=f"layer {layer + 1}")
        ax1.legend(fontsize=7)
        last = [_num(v) for v in cos[-1][1]]
        ax2.bar(range(1, n_l + 1), last)
        ax2.set_xticks(range(1, n_l + 1))
    ax1.set_xlabel("step")
    ax1.set_ylabel("mean expert cosine similarity")
    ax2.set_xlabel("MoE layer")
    ax2.set_ylabel("final cosine similarity")
    fig.suptitle(f"{title} expert cosine similarity".strip())
    fig.tight_layout()
    written.append(folder / "cosine.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
