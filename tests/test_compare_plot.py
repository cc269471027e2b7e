"""``compare.png``: validation-loss curves against steps and wall-clock time, and the final
perplexities, from hand-written metric records (the expected curves are computed by hand)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from namex_ref.merging.config import METHODS
from namex_ref.train.compare_plot import (
    compare_figure,
    mean_curve,
    plot_compare,
    validation_curve,
)
from namex_ref.train.comparison import MethodSummary, mean_ci

# Logged every 10 steps; step_s is the mean over the interval, so the training clock at step 20
# is 10·0.5 + 10·0.25 = 7.5 s and at step 30 it is 7.5 + 10·1.0 = 17.5 s.
RECORDS = [
    {"step": 30, "loss": 2.0, "step_s": 1.0, "valid_loss": 2.5},
    {"step": 10, "loss": 4.0, "step_s": 0.5},
    {"step": 20, "loss": 3.0, "step_s": 0.25, "valid_loss": 3.0},
]


def test_validation_curve_by_hand() -> None:
    c = validation_curve(RECORDS)
    assert c.steps == (20, 30)
    assert c.seconds == (7.5, 17.5)
    assert c.loss == c.low == c.high == (3.0, 2.5)
    # a null valid_loss (a NaN in the file) and a record without step_s add no point / no time
    c2 = validation_curve([{"step": 5}, {"step": 10, "step_s": 1.0, "valid_loss": None},
                           {"step": 15, "step_s": 2.0, "valid_loss": 1.0}])
    assert c2.steps == (15,) and c2.seconds == (15.0,)


def test_mean_curve_by_hand() -> None:
    a = validation_curve(RECORDS)
    b = validation_curve([{"step": 10, "step_s": 1.0, "valid_loss": 4.0},
                          {"step": 20, "step_s": 1.0, "valid_loss": 2.0}])
    m = mean_curve([a, b])
    assert m.steps == (20,)  # the steps both runs evaluated
    assert m.loss == (2.5,) and m.low == (2.0,) and m.high == (3.0,)
    assert m.seconds == ((7.5 + 20.0) / 2,)
    with pytest.raises(ValueError, match="at least one"):
        mean_curve([])


def _summary(method: str, ppl: tuple[float, ...]) -> MethodSummary:
    mean, ci = mean_ci(ppl)
    return MethodSummary(method, tuple(range(len(ppl))), ppl, mean, ci, 0.1)


def test_figure_for_nine_methods(tmp_path: Path) -> None:
    """Every method has a line (its mean) in both loss panels, a band (3 seeds), its own colour,
    a legend entry, and a row in the perplexity panel; the PNG is written."""
    methods = list(METHODS)
    assert len(methods) == 9
    summaries, curves = [], {}
    for i, m in enumerate(methods):
        runs = [validation_curve([{"step": 10, "step_s": 0.1 * (i + 1), "valid_loss": 5.0 + s},
                                  {"step": 20, "step_s": 0.1 * (i + 1), "valid_loss": 4.0 + s}])
                for s in range(3)]
        curves[m] = mean_curve(runs)
        summaries.append(_summary(m, (math.exp(4.0), math.exp(5.0), math.exp(6.0))))
    fig = compare_figure(summaries, curves)
    steps_ax, time_ax, ppl_ax = fig.axes
    for ax, xs in ((steps_ax, lambda i: [10, 20]),
                   (time_ax, lambda i: [1.0 * (i + 1), 2.0 * (i + 1)])):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == methods
        for i, ln in enumerate(lines):
            assert list(ln.get_xdata()) == pytest.approx(xs(i))
            assert list(ln.get_ydata()) == [6.0, 5.0]  # mean of 5, 6, 7 and of 4, 5, 6
        assert len(ax.collections) == 9  # one seed-range band per method
        for band in ax.collections:  # lowest seed (5, 4) to highest (7, 6)
            ys = band.get_paths()[0].vertices[:, 1]
            assert (ys.min(), ys.max()) == (4.0, 7.0)
    assert "training step" in steps_ax.get_xlabel()
    assert "wall-clock" in time_ax.get_xlabel()
    colours = {to_hex(ln.get_color()) for ln in steps_ax.get_lines()}
    assert len(colours) == 9
    assert [t.get_text() for t in ppl_ax.get_yticklabels()] == methods[::-1]
    assert ppl_ax.get_xlabel() == "validation perplexity"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == methods
    png = plot_compare(summaries, tmp_path / "compare.png", curves)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_figure_without_curves_or_seeds() -> None:
    """One seed: no band and a title that claims no CI; empty curves: the loss panels say so;
    no curves: one panel."""
    one = [_summary("smoe", (10.0,))]
    fig = compare_figure(one, {"smoe": validation_curve(RECORDS)})
    assert len(fig.axes[0].collections) == 0
    assert "no CI" in fig.axes[2].get_title()
    empty = compare_figure(one, {})  # compare's runs logged no evaluation: the panels say so
    assert "no periodic evaluations" in empty.axes[0].texts[0].get_text()
    alone = compare_figure(one)  # no curves at hand: the perplexities alone
    assert len(alone.axes) == 1 and alone.axes[0].get_xlabel() == "validation perplexity"
