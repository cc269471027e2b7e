"""Benchmark 2 — Gram formation (S2): achieved GB/s over the bytes of τ read, against the
device's memory bandwidth measured in the same run, and the α solve (S4, fixed-iteration Newton)
next to it.

K = GᵀG of N domain vectors of P parameters reads N·P·itemsize bytes and writes N² numbers; its
N²·P multiply-adds are few per byte for small N, so it should run at memory bandwidth. The α
solve works on the N×N matrix only, so its cost does not grow with P.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from namex_ref.benchmarks.common import (
    NOT_MEASURED_GPU,
    BandwidthResult,
    environment,
    fmt_seconds,
    interleaved_medians,
    markdown_document,
    measure_bandwidth,
    new_figure,
    resolve_devices,
    save_figure,
    write_text_atomic,
)
from namex_ref.merging.plan import bargain_alpha
from namex_ref.models.gpt import PRESETS
from namex_ref.nash.gram import gram_matrix
from namex_ref.nash.newton import solve_newton
from namex_ref.tables import format_table

__all__ = ["GPU_TARGET", "GramRow", "bench_gram", "gram_report", "run"]

#: The performance target (CPU and GPU): Gram formation at ≥ 70 % of the device's measured
#: read bandwidth, for float32 and for bfloat16/float16 experts.
GPU_TARGET = 0.70
NS = (4, 8, 16)
PARAMS = (2**16, 2**18, 2**20, 2**22)
DTYPES = ("float32", "bfloat16")
#: Fixed Newton budget of the training loop (MergeConfig.newton_iterations).
FIXED_ITERATIONS = 20


@dataclass(frozen=True)
class GramRow:
    """One (device, shape, dtype): Gram time, achieved GB/s and fraction of the read bandwidth,
    the fixed-iteration α solve on the same K, and ``bargain_alpha`` (Gram + solve + policy)."""

    device: str
    label: str
    n: int
    params: int
    dtype: str
    bytes_read: int
    gram_s: float
    gbs: float
    fraction: float
    solve_s: float
    bargain_s: float


def _shapes(ns: Sequence[int], params: Sequence[int],
            presets: Sequence[str]) -> list[tuple[str, int, list[tuple[int, ...]]]]:
    shapes: list[tuple[str, int, list[tuple[int, ...]]]] = [
        ("synthetic", n, [(n, p)]) for n in ns for p in params]
    for name in presets:
        cfg = PRESETS[name]
        n, C, F = cfg.merge.n_experts, cfg.d_model, cfg.d_ff
        shapes.append((f"{name} layer", n, [(n, F, C), (n, C, F)]))
    return shapes


def bench_gram(
    ns: Sequence[int] = NS,
    params: Sequence[int] = PARAMS,
    *,
    presets: Sequence[str] = ("tiny", "small", "medium"),
    dtypes: Sequence[str] = DTYPES,
    repeats: int = 5,
    device: str = "auto",
    bandwidth_bytes: int = 256 * 2**20,
) -> tuple[list[GramRow], dict[str, BandwidthResult]]:
    """Time ``gram_matrix`` on random τ of each shape and dtype, the Newton solve
    (``fixed_iterations=20``) on its K and ``bargain_alpha`` (what a NAMEx layer calls), all
    interleaved per shape; measure the device's bandwidth in the same run."""
    rows: list[GramRow] = []
    bws: dict[str, BandwidthResult] = {}
    for dev in resolve_devices(device):
        bw = measure_bandwidth(dev, nbytes=bandwidth_bytes, repeats=repeats)
        bws[dev.type] = bw
        for label, n, shp in _shapes(ns, params, presets):
            for dt in dtypes:
                dtype = getattr(torch, dt)
                g = torch.Generator(device=dev).manual_seed(n)
                taus = [torch.randn(s, generator=g, device=dev).to(dtype) for s in shp]
                K = gram_matrix(taus).to(torch.float64)
                med = interleaved_medians({
                    "gram": lambda t=taus: gram_matrix(t),  # type: ignore[misc]
                    "solve": lambda k=K: solve_newton(k, fixed_iterations=FIXED_ITERATIONS),  # type: ignore[misc]
                    "bargain": lambda t=taus: bargain_alpha(t, newton_iterations=FIXED_ITERATIONS),  # type: ignore[misc]
                }, dev, repeats=repeats)
                nbytes = sum(t.numel() * t.element_size() for t in taus)
                p = sum(t[0].numel() for t in taus)
                gbs = nbytes / med["gram"] / 1e9
                rows.append(GramRow(dev.type, label, n, p, dt, nbytes, med["gram"], gbs,
                                    gbs / bw.read_gbs, med["solve"], med["bargain"]))
                del taus, K
    return rows, bws


def gram_report(out: str | Path, rows: Sequence[GramRow], bws: dict[str, BandwidthResult], *,
                quick: bool = False, repeats: int = 5, plot: bool = True) -> tuple[Path, str]:
    """Write ``gram.md`` (and ``gram.png``) in ``out``; return (path, table)."""
    out = Path(out)
    body = [[
        r.device, r.label, str(r.n), f"{r.params:,}", r.dtype, f"{r.bytes_read / 2**20:.1f}",
        fmt_seconds(r.gram_s), f"{r.gbs:.1f}", f"{r.fraction:.0%}", fmt_seconds(r.solve_s),
        f"{r.solve_s / r.gram_s:.2g}", fmt_seconds(r.bargain_s),
    ] for r in rows]
    if "cuda" not in bws:
        body.append(["cuda", "all", "—", "—", "—", "—", NOT_MEASURED_GPU, "—", "—", "—", "—",
                     "—"])
    table = format_table(
        ["device", "shape", "N", "P / expert", "dtype", "MiB read", "Gram", "GB/s",
         "of read BW", "α solve (20 it.)", "solve / Gram", "bargain_alpha"], body)
    bw_table = format_table(
        ["device", "tensor", "read (sum) GB/s", "copy GB/s"],
        [[b.device, f"{b.nbytes / 2**20:.0f} MiB", f"{b.read_gbs:.1f}", f"{b.copy_gbs:.1f}"]
         for b in bws.values()]
        + ([] if "cuda" in bws else [["cuda", "—", NOT_MEASURED_GPU, "—"]]))
    summary = _summary(rows, bws)
    notes = [
        "GB/s = bytes of τ read (N·P·itemsize) / median Gram time; 'of read BW' divides by the "
        "device's read bandwidth (x.sum() over a 256 MiB float32 tensor) measured in this run. "
        "`α solve`: solve_newton(K, fixed_iterations=20) on the N×N K (the training loop's "
        "budget); `bargain_alpha`: what a NAMEx layer calls per bargain (Gram, zero-expert and "
        "finiteness masks, the Newton solve and the ridge-policy solve).",
        f"Timing: Gram, solve and bargain_alpha timed interleaved, median of {repeats}; shared "
        "CPU, so absolute numbers are noisy. 'tiny/small/medium layer': the two expert matrices "
        "(N, F, C) and (N, C, F) of one MoE layer of that preset.",
        *(["**Quick mode** (tests/smoke): reduced grid — not for quoting."] if quick else []),
    ]
    doc = markdown_document("Gram formation benchmark", environment(), notes, [
        ("Summary", summary), ("Memory bandwidth (this run)", bw_table),
        ("Gram formation and α solve", table),
    ])
    path = write_text_atomic(out / "gram.md", doc)
    if plot:
        _plot(out / "gram.png", rows, bws)
    return path, table


def _summary(rows: Sequence[GramRow], bws: dict[str, BandwidthResult]) -> str:
    lines = []
    for dev in ("cpu", "cuda"):
        rs = [r for r in rows if r.device == dev]
        if not rs:
            lines.append(f"- {dev}: {NOT_MEASURED_GPU}; GPU target ≥ {GPU_TARGET:.0%} of memory "
                         "bandwidth not assessed.")
            continue
        big = max(rs, key=lambda r: (r.bytes_read, r.dtype == "float32"))
        f32 = [r for r in rs if r.dtype == "float32"]
        best = max(f32 or rs, key=lambda r: r.fraction)
        verdict = "met" if best.fraction >= GPU_TARGET else "not met"
        lines.append(
            f"- {dev}: best float32 Gram {best.gbs:.1f} GB/s = {best.fraction:.0%} of the "
            f"measured read bandwidth {bws[dev].read_gbs:.1f} GB/s (N = {best.n}, "
            f"P = {best.params:,}) — target ≥ {GPU_TARGET:.0%}: **{verdict}**.")
        for dt in ("bfloat16", "float16"):
            low = [r for r in rs if r.dtype == dt]
            if low:
                b = max(low, key=lambda r: r.fraction)
                ok = "met" if b.fraction >= GPU_TARGET else "not met"
                lines.append(
                    f"- {dev}: best {dt} Gram (float32 accumulation in 1 MiB chunks, no float32 "
                    f"copy of τ) {b.gbs:.1f} GB/s = {b.fraction:.0%} of the read bandwidth "
                    f"(N = {b.n}, P = {b.params:,}) — target ≥ {GPU_TARGET:.0%}: **{ok}**.")
        lines.append(
            f"- {dev}: at the largest shape (N = {big.n}, P = {big.params:,}, {big.dtype}) the α "
            f"solve takes {fmt_seconds(big.solve_s)} = {big.solve_s / big.gram_s:.2g}× the Gram "
            f"time ({fmt_seconds(big.gram_s)}); the solve is independent of P, so it is "
            "negligible exactly when the Gram is large (see the ratio column for small P).")
    return "\n".join(lines)


def _plot(path: Path, rows: Sequence[GramRow], bws: dict[str, BandwidthResult]) -> None:
    fig, (ax1, ax2) = new_figure(2)
    for dev in bws:
        for dt in sorted({r.dtype for r in rows}):
            for n in sorted({r.n for r in rows if r.label == "synthetic"}):
                pts = sorted((r.bytes_read, r.gbs) for r in rows if r.device == dev
                             and r.dtype == dt and r.n == n and r.label == "synthetic")
                if pts:
                    ax1.plot(*zip(*pts, strict=True), marker="o",  # type: ignore[attr-defined]
                             label=f"{dev} {dt} N={n}")
            pts2 = sorted((r.bytes_read, r.solve_s / r.gram_s) for r in rows
                          if r.device == dev and r.dtype == dt and r.label == "synthetic")
            if pts2:
                ax2.plot(*zip(*pts2, strict=True), "o", label=f"{dev} {dt}")  # type: ignore[attr-defined]
        ax1.axhline(bws[dev].read_gbs, color="k", ls="--",  # type: ignore[attr-defined]
                    label=f"{dev} read BW")
    ax1.set(xscale="log", xlabel="bytes of τ read", ylabel="GB/s", title="Gram formation")  # type: ignore[attr-defined]
    ax1.legend(fontsize=5)  # type: ignore[attr-defined]
    ax2.axhline(1.0, color="k", lw=0.5)  # type: ignore[attr-defined]
    ax2.set(xscale="log", yscale="log", xlabel="bytes of τ read",  # type: ignore[attr-defined]
            ylabel="α solve time / Gram time", title="α solve (20 Newton steps) vs Gram")
    ax2.legend(fontsize=6)  # type: ignore[attr-defined]
    save_figure(fig, path)


def run(out: str | Path, *, quick: bool = False, device: str = "auto",
        repeats: int | None = None) -> tuple[Path, str]:
    """Entry point of ``namex bench gram``."""
    reps = repeats if repeats is not None else (1 if quick else 5)
    if quick:
        rows, bws = bench_gram((4,), (2**12, 2**14), presets=("tiny",), repeats=reps,
                               device=device, bandwidth_bytes=16 * 2**20)
    else:
        rows, bws = bench_gram(repeats=reps, device=device)
    return gram_report(out, rows, bws, quick=quick, repeats=reps)
