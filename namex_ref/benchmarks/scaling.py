"""Benchmark 4 — scaling: how the training-step cost grows with the number of experts N, the
expert size d (d_model, with d_ff = 2·d_model) and the depth L, around the ``tiny`` preset.

For each axis the other two stay at the tiny preset's values; the exponent b of
time ≈ a·xᵇ is the slope of a least-squares line through (log x, log time)
(``numpy.polyfit``). Exponents below 1 mean that parts of the step which do not grow with x
(embeddings, attention, the optimizer over other parameters) still weigh in at these sizes.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from namex_ref.benchmarks.common import (
    NOT_MEASURED_GPU,
    environment,
    fmt_seconds,
    interleaved_times,
    log_ticks,
    log_y_labels,
    markdown_document,
    new_figure,
    paired_ratio,
    resolve_devices,
    save_figure,
    write_text_atomic,
)
from namex_ref.benchmarks.step import StepShape, _build
from namex_ref.models.gpt import ModelConfig, preset
from namex_ref.tables import format_table

__all__ = ["AXES", "ScalingRow", "bench_scaling", "fit_exponent", "scaling_config",
           "scaling_report"]

AXES = ("N", "d", "L")
VALUES: dict[str, tuple[int, ...]] = {"N": (2, 4, 8, 16), "d": (32, 64, 128, 256),
                                      "L": (1, 2, 4, 8)}
SCALING_METHODS = ("smoe", "ep-camex", "namex", "namex-full")


@dataclass(frozen=True)
class ScalingRow:
    """Median step seconds of ``method`` with ``axis`` set to ``value`` on ``device``, and the
    median per-round ratio to EP-CAMEx at the same point (NaN when EP-CAMEx was not run)."""

    device: str
    axis: str
    value: int
    method: str
    seconds: float
    vs_ep_camex: float = math.nan


def scaling_config(method: str, axis: str, value: int) -> ModelConfig:
    """The tiny preset with one axis changed: N experts (top-k = min(2, N)), d = d_model
    (d_ff = 2d, 4 heads) or L layers."""
    if axis == "N":
        return preset("tiny", method, n_experts=value, top_k=min(2, value))
    cfg = preset("tiny", method)
    if axis == "d":
        return dataclasses.replace(cfg, d_model=value, d_ff=2 * value)
    if axis == "L":
        return dataclasses.replace(cfg, n_layer=value)
    raise ValueError(f"axis must be one of {AXES}, got {axis!r}")


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope b of log y = b log x + c by least squares (numpy.polyfit, degree 1)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(
            f"need at least two (x, y) pairs of equal length, got {len(xs)}, {len(ys)}"
        )
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("log-log fit needs positive x and y")
    slope, _ = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return float(slope)


def bench_scaling(
    values: Mapping[str, Sequence[int]] | None = None,
    methods: Sequence[str] = SCALING_METHODS,
    *,
    batch: int = 4,
    seq: int = 128,
    repeats: int = 5,
    device: str = "auto",
) -> list[ScalingRow]:
    """Median step time (forward + backward + AdamW) for each method and each value of each
    axis; all methods at one (axis, value) are timed interleaved."""
    vals = values if values is not None else VALUES
    rows: list[ScalingRow] = []
    for dev in resolve_devices(device):
        shape = StepShape("tiny", dev.type, batch, seq)
        for axis, vs in vals.items():
            for v in vs:
                steps = {m: _build(scaling_config(m, axis, v), shape)[1] for m in methods}
                times = interleaved_times(steps, dev, repeats=repeats, warmup=1)
                rows += [ScalingRow(dev.type, axis, v, m, statistics.median(times[m]),
                                    paired_ratio(times, m, "ep-camex") if "ep-camex" in times
                                    else math.nan) for m in methods]
    return rows


def _exponents(rows: Sequence[ScalingRow]) -> dict[tuple[str, str, str], float]:
    out = {}
    for key in sorted({(r.device, r.axis, r.method) for r in rows}):
        pts = sorted((r.value, r.seconds) for r in rows if (r.device, r.axis, r.method) == key)
        if len(pts) >= 2:
            xs, ys = zip(*pts, strict=True)
            out[key] = fit_exponent(xs, ys)
    return out


def scaling_report(out: str | Path, rows: Sequence[ScalingRow], *, batch: int, seq: int,
                   quick: bool = False, repeats: int = 5, plot: bool = True) -> tuple[Path, str]:
    """Write ``scaling.md`` (+ ``scaling.png``) in ``out``; return (path, exponent table)."""
    out = Path(out)
    exps = _exponents(rows)
    methods = [m for m in SCALING_METHODS if any(r.method == m for r in rows)]
    devices = sorted({r.device for r in rows})
    exp_rows = [[dev, ax, *[f"{exps[(dev, ax, m)]:.2f}" if (dev, ax, m) in exps else "—"
                            for m in methods]]
                for dev in devices for ax in AXES if any(r.axis == ax for r in rows)]
    if "cuda" not in devices:
        exp_rows.append(["cuda", "all", *([NOT_MEASURED_GPU] + ["—"] * (len(methods) - 1))])
    exp_table = format_table(["device", "axis", *methods], exp_rows)
    lookup = {(r.device, r.axis, r.value, r.method): r for r in rows}
    time_rows = []
    for dev, ax, v in sorted({(r.device, r.axis, r.value) for r in rows},
                             key=lambda k: (k[0], AXES.index(k[1]), k[2])):
        cells = []
        for m in methods:
            r = lookup.get((dev, ax, v, m))
            cells.append("—" if r is None else fmt_seconds(r.seconds) + (
                f" ({r.vs_ep_camex:.2f}×)" if m != "ep-camex" and math.isfinite(r.vs_ep_camex)
                else ""))
        time_rows.append([dev, ax, str(v), *cells])
    time_table = format_table(["device", "axis", "value", *methods], time_rows)
    notes = [
        "Base: the tiny preset (N = 4, d_model = 64, d_ff = 128, L = 4, vocab 2048); one axis "
        "varied at a time: N (n_experts, top-k = min(2, N)), d (d_model, d_ff = 2·d_model), "
        f"L (layers). Step = forward + backward + AdamW on random tokens, batch {batch} × "
        f"{seq}.",
        f"Timing: methods timed interleaved at each point, median of {repeats} steps after one "
        "warm-up; shared CPU, so absolute times are noisy. Exponent b: least-squares slope of "
        "log(step time) against log(x) (numpy.polyfit). Parentheses: median over rounds of the "
        "per-round ratio to EP-CAMEx at the same point.",
        *(["**Quick mode** (tests/smoke): reduced grid — not for quoting."] if quick else []),
    ]
    doc = markdown_document("Scaling benchmark", environment(), notes, [
        ("Fitted exponents (step time ∝ xᵇ)", exp_table),
        ("Step time at each point", time_table),
    ])
    path = write_text_atomic(out / "scaling.md", doc)
    if plot:
        _plot(out / "scaling.png", rows, exps)
    return path, exp_table


def _plot(path: Path, rows: Sequence[ScalingRow],
          exps: dict[tuple[str, str, str], float]) -> None:
    axes_present = [a for a in AXES if any(r.axis == a for r in rows)]
    fig, axs = new_figure(len(axes_present), width=3.4)
    labels = {"N": "N experts", "d": "d_model (d_ff = 2 d_model)", "L": "layers L"}
    for ax, axis in zip(axs, axes_present, strict=True):
        for dev in sorted({r.device for r in rows}):
            for m in SCALING_METHODS:
                pts = sorted((r.value, r.seconds) for r in rows
                             if r.axis == axis and r.method == m and r.device == dev)
                if pts:
                    b = exps.get((dev, axis, m), math.nan)
                    ax.plot(*zip(*pts, strict=True), marker="o",  # type: ignore[attr-defined]
                            label=f"{m} ({dev}) b={b:.2f}")
        ax.set(xscale="log", yscale="log", xlabel=labels[axis],  # type: ignore[attr-defined]
               ylabel="step time (s)")
        log_ticks(ax, [r.value for r in rows if r.axis == axis])
        log_y_labels(ax)
        ax.legend(fontsize=6)  # type: ignore[attr-defined]
    save_figure(fig, path)


def run(out: str | Path, *, quick: bool = False, device: str = "auto",
        repeats: int | None = None) -> tuple[Path, str]:
    """Entry point of ``namex bench scaling`` (15 repeats by default: the steps are short and
    the shared machine's load spikes dominate the spread)."""
    reps = repeats if repeats is not None else (1 if quick else 15)
    batch, seq = (1, 16) if quick else (4, 128)
    values: Mapping[str, Sequence[int]] = (
        {"N": (2, 4), "d": (16, 32), "L": (1, 2)} if quick else VALUES
    )
    methods = ("ep-camex", "namex") if quick else SCALING_METHODS
    rows = bench_scaling(values, methods, batch=batch, seq=seq, repeats=reps, device=device)
    return scaling_report(out, rows, batch=batch, seq=seq, quick=quick, repeats=reps)

