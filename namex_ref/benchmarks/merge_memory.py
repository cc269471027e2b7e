"""Benchmark ``namex bench memory`` — what the merge keeps for backward (``MergeConfig.
merge_memory``: "eager", "keep-deltas", "recompute") against SMoE: saved-for-backward bytes, peak
memory and step time per method, per preset and per segment length, plus a profile of where
EP-CAMEx's step time goes relative to SMoE's.

Measures (:mod:`namex_ref.benchmarks.memory`): ``saved`` — bytes of the tensors autograd keeps
for backward in one forward, parameters excluded (exact, device independent); ``peak`` — CPU:
peak-RSS growth of a fresh process over two training steps; CUDA: max allocated over one step.
Step time: every candidate of a group (SMoE and one method in each mode) timed round-robin in
one process; ratios are medians of per-round ratios (:func:`common.paired_ratio`).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from namex_ref.benchmarks.common import (
    NOT_MEASURED_GPU,
    environment,
    fmt_seconds,
    interleaved_times,
    markdown_document,
    new_figure,
    paired_ratio,
    resolve_devices,
    save_figure,
    write_text_atomic,
)
from namex_ref.benchmarks.memory import (
    cuda_peak_mib,
    rss_growth_mib,
    saved_by_node,
    saved_tensor_bytes,
)
from namex_ref.benchmarks.step import StepShape, _build, _inputs
from namex_ref.merging.config import METHODS
from namex_ref.models.gpt import preset
from namex_ref.tables import format_table

__all__ = [
    "MEMORY_MODES",
    "MemoryRow",
    "memory_report",
    "method_rows",
    "node_table",
    "profile_table",
    "run",
    "tradeoff_rows",
]

#: The values of ``MergeConfig.merge_memory``, the first one being the eager ("before") path.
MEMORY_MODES = ("eager", "keep-deltas", "recompute")
#: Targets of issue 18 at the small preset, against SMoE in the same run.
SAVED_TARGET, PEAK_TARGET, TIME_TARGET = 1.5, 1.2, 1.05
CPU_SHAPES = (StepShape("tiny", "cpu", 8, 128, repeats=7), StepShape("small", "cpu", 2, 256,
                                                                        repeats=3))
SEGMENTS = {"tiny": (16, 32, 64), "small": (32, 64, 128)}
TRADEOFF_METHOD = "ep-camex"
#: Methods whose CPU peak is probed per preset (every curvature method has the same tensors;
#: a small-preset probe is a fresh process of ~15 s on the shared 2-core machine).
RSS_METHODS = {"tiny": METHODS, "small": ("smear", "camex", "ep-camex", "namex-full", "namex-q")}


@dataclass(frozen=True)
class MemoryRow:
    """One (shape, method, mode, segment length): saved and peak MiB with their ratios to SMoE
    in the same run, and (trade-off rows only) the median step time with its paired ratios to
    the eager path and to SMoE."""

    preset: str
    device: str
    batch: int
    seq: int
    method: str
    mode: str
    segment_len: int
    saved_mib: float
    saved_vs_smoe: float
    peak_mib: float | None
    peak_vs_smoe: float | None
    seconds: float | None = None
    vs_eager: float | None = None
    vs_smoe: float | None = None


def _measure(shape: StepShape, method: str, mode: str, seg: int | None, *,
             rss: bool) -> tuple[float, float | None]:
    """(saved MiB, peak MiB or None) of one configuration."""
    over: dict[str, object] = {"merge_memory": mode}
    if seg is not None:
        over["segment_len"] = seg
    cfg = preset(shape.preset, method, **over)
    model, step = _build(cfg, shape)
    idx, tgt = _inputs(cfg, shape, seed=1)
    saved = saved_tensor_bytes(model, idx, tgt) / 2**20
    peak: float | None = None
    dev = torch.device(shape.device)
    if dev.type == "cuda":
        step()
        peak = cuda_peak_mib(step, dev)
    elif rss:
        peak = rss_growth_mib(shape.preset, method, shape.batch, shape.seq, **over)
    del model, step
    gc.collect()
    return saved, peak


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def method_rows(shape: StepShape, methods: Sequence[str] = METHODS,
                modes: Sequence[str] = ("eager", "recompute"), *,
                rss: bool | Sequence[str] = True) -> list[MemoryRow]:
    """Saved and peak memory of every method (preset's segment length) in each mode, with
    ratios to SMoE measured in the same run. ``rss``: probe the CPU peak of every method (True),
    of none (False) or of the listed methods only (a probe is a fresh process, seconds each)."""
    probe = set(methods) if rss is True else set() if rss is False else set(rss)
    smoe = _measure(shape, "smoe", "eager", None, rss=bool(probe))
    seg = preset(shape.preset).merge.segment_len
    rows = [MemoryRow(shape.preset, shape.device, shape.batch, shape.seq, "smoe", "—", seg,
                      smoe[0], 1.0, smoe[1], _ratio(smoe[1], smoe[1]))]
    for m in methods:
        if m == "smoe":
            continue
        for mode in modes:
            saved, peak = _measure(shape, m, mode, None, rss=m in probe)
            rows.append(MemoryRow(shape.preset, shape.device, shape.batch, shape.seq, m, mode,
                                  seg, saved, saved / smoe[0], peak, _ratio(peak, smoe[1])))
    return rows


def tradeoff_rows(shape: StepShape, segments: Sequence[int], *, method: str = TRADEOFF_METHOD,
                  repeats: int = 3, rss: bool = True) -> list[MemoryRow]:
    """Per segment length: SMoE and ``method`` in every mode of :data:`MEMORY_MODES`, built
    together and timed round-robin (one group per segment length), with saved/peak memory."""
    dev = torch.device(shape.device)
    smoe_saved, smoe_peak = _measure(shape, "smoe", "eager", None, rss=rss)
    rows = []
    for seg in segments:
        built = {"smoe": _build(preset(shape.preset, "smoe"), shape)[1]}
        for mode in MEMORY_MODES:
            cfg = preset(shape.preset, method, merge_memory=mode, segment_len=seg)
            built[mode] = _build(cfg, shape)[1]
        reps = shape.repeats if shape.repeats is not None else repeats
        times = interleaved_times(built, dev, repeats=reps, warmup=1)
        del built
        gc.collect()
        for mode in MEMORY_MODES:
            saved, peak = _measure(shape, method, mode, seg, rss=rss)
            rows.append(MemoryRow(
                shape.preset, shape.device, shape.batch, shape.seq, method, mode, seg, saved,
                saved / smoe_saved, peak, _ratio(peak, smoe_peak),
                statistics.median(times[mode]), paired_ratio(times, mode, "eager"),
                paired_ratio(times, mode, "smoe")))
    return rows


def profile_table(shape: StepShape, method: str, mode: str, *, row_limit: int = 22) -> str:
    """torch.profiler table of one training step (after a warm-up step), sorted by CPU total
    (custom autograd functions and their backward nodes appear as their own rows)."""
    from torch.profiler import ProfilerActivity, profile

    _, step = _build(preset(shape.preset, method, merge_memory=mode), shape)
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if shape.device == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    key = "cuda_time_total" if shape.device == "cuda" else "cpu_time_total"
    return str(prof.key_averages().table(sort_by=key, row_limit=row_limit,
                                         max_name_column_width=60))


def node_table(shape: StepShape, configs: Sequence[tuple[str, str]]) -> str:
    """Markdown table: MiB saved for backward by autograd node type, one column per
    (method, merge_memory) configuration."""
    cols = []
    for method, mode in configs:
        cfg = preset(shape.preset, method, merge_memory=mode)
        model, _ = _build(cfg, shape)
        cols.append(saved_by_node(model, *_inputs(cfg, shape, seed=1)))
        del model
        gc.collect()
    nodes = sorted({k for c in cols for k in c}, key=lambda k: -max(c.get(k, 0) for c in cols))
    rows = [[k, *(f"{c.get(k, 0) / 2**20:.1f}" for c in cols)] for k in nodes
            if max(c.get(k, 0) for c in cols) >= 2**16]
    rows.append(["total", *(f"{sum(c.values()) / 2**20:.1f}" for c in cols)])
    return format_table(["autograd node", *(f"{m} ({mo})" for m, mo in configs)], rows)


def decomposition_rows(shape: StepShape, *, repeats: int) -> list[list[str]]:
    """SMoE, SMEAR (merge without base or curvature) and EP-CAMEx in the eager and recompute
    modes, timed round-robin: what the merge, the base chain and curvature add to SMoE."""
    dev = torch.device(shape.device)
    cands: dict[str, Callable[[], None]] = {
        "smoe": _build(preset(shape.preset, "smoe"), shape)[1],
        "smear (recompute)": _build(preset(shape.preset, "smear"), shape)[1],
        "ep-camex (eager)": _build(preset(shape.preset, "ep-camex", merge_memory="eager"),
                                   shape)[1],
        "ep-camex (recompute)": _build(preset(shape.preset, "ep-camex"), shape)[1],
    }
    times = interleaved_times(cands, dev, repeats=repeats, warmup=1)
    return [[k, fmt_seconds(statistics.median(v)), f"{paired_ratio(times, k, 'smoe'):.2f}"]
            for k, v in times.items()]


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def memory_report(out: str | Path, methods: Sequence[MemoryRow], trade: Sequence[MemoryRow],
                  *, quick: bool = False, profile: str = "", plot: bool = True,
                  contention: str = "") -> tuple[Path, str]:
    """Write ``memory.md`` (+ ``memory.png``) in ``out``; returns (path, trade-off table)."""
    out = Path(out)
    mt = format_table(
        ["preset", "device", "B×T", "method", "merge_memory", "saved MiB", "× SMoE",
         "peak MiB", "× SMoE"],
        [[r.preset, r.device, f"{r.batch}×{r.seq}", r.method, r.mode, f"{r.saved_mib:.1f}",
          f"{r.saved_vs_smoe:.2f}", _fmt(r.peak_mib, ".0f"), _fmt(r.peak_vs_smoe, ".2f")]
         for r in methods])
    tt = format_table(
        ["preset", "device", "B×T", "segment_len", "merge_memory", "saved MiB", "× SMoE",
         "peak MiB", "× SMoE", "step (median)", "× eager", "× SMoE"],
        [[r.preset, r.device, f"{r.batch}×{r.seq}", str(r.segment_len), r.mode,
          f"{r.saved_mib:.1f}", f"{r.saved_vs_smoe:.2f}", _fmt(r.peak_mib, ".0f"),
          _fmt(r.peak_vs_smoe, ".2f"), "—" if r.seconds is None else fmt_seconds(r.seconds),
          _fmt(r.vs_eager, ".2f"), _fmt(r.vs_smoe, ".2f")] for r in trade])
    if not any(r.device == "cuda" for r in trade):
        tt += f"\n\nCUDA (tiny 16×128, small 8×512): {NOT_MEASURED_GPU}."
    targets = []
    for r in trade:
        if r.preset == "small" and r.mode == "recompute" and r.segment_len == 128:
            ok = (r.saved_vs_smoe <= SAVED_TARGET and r.peak_vs_smoe is not None
                  and r.peak_vs_smoe <= PEAK_TARGET and r.vs_eager is not None
                  and r.vs_eager <= TIME_TARGET)
            targets.append(
                f"- small ({r.device}), {r.method}, recompute: saved {r.saved_vs_smoe:.2f}× SMoE "
                f"(≤ {SAVED_TARGET}), peak {_fmt(r.peak_vs_smoe, '.2f')}× SMoE "
                f"(≤ {PEAK_TARGET}), step {_fmt(r.vs_eager, '.2f')}× the eager path "
                f"(≤ {TIME_TARGET}): **{'met' if ok else 'not met'}**")
    notes = [
        "What the merge keeps for backward, per `MergeConfig.merge_memory`: `eager` — autograd "
        "keeps the four Kronecker intermediates of every M_i(τ_i), the merge terms and the "
        "(B, S, out, in) merged weights (the path before this benchmark's change, kept as the "
        "tests' oracle); `keep-deltas` — τ, the Kronecker intermediates and the merged weights "
        "are formed again in backward, the merge terms M_i(τ_i) are kept; `recompute` (the "
        "default) — the merge terms are formed again too. All three give the same values and "
        "gradients (tests/test_merging_recompute.py).",
        "`saved` = tensors autograd keeps for backward in one forward (exact, parameters "
        "excluded); `peak` = CPU: peak-RSS growth of a fresh process over two training steps "
        "(includes the AdamW state allocated at the first step and allocator caching; noisy by "
        "tens of MiB), CUDA: max allocated over one step. Step = forward + backward + AdamW. "
        "Trade-off groups: SMoE and the three modes built together and timed round-robin "
        "(medians; ratios are medians of per-round ratios).",
        "Contention: the 2-core machine was shared with other jobs during this run"
        + (f" ({contention})" if contention else "")
        + "; absolute times are inflated and noisy, read the ratios (measured in the same "
        "rounds).",
        *(["**Quick mode** (tests/smoke): reduced run — not for quoting."] if quick else []),
    ]
    sections = [("Targets", "\n".join(targets) or "small preset not in this run"),
                ("Memory per method (preset's segment length)", mt),
                ("Memory/time trade-off per preset and segment length", tt)]
    if profile:
        sections.append(("Where EP-CAMEx's step time goes", profile))
    doc = markdown_document("Merge memory benchmark", environment(), notes, sections)
    path = write_text_atomic(out / "memory.md", doc)
    if plot:
        _plot(out / "memory.png", trade)
    return path, tt


def _plot(path: Path, rows: Sequence[MemoryRow]) -> None:
    groups = sorted({(r.preset, r.segment_len) for r in rows})
    fig, axes = new_figure(2, width=5.0)
    width = 0.8 / len(MEMORY_MODES)
    for mi, mode in enumerate(MEMORY_MODES):
        rs = {(r.preset, r.segment_len): r for r in rows if r.mode == mode}
        xs = [i + mi * width for i in range(len(groups))]
        axes[0].bar(xs, [rs[g].saved_vs_smoe if g in rs else 0 for g in groups],  # type: ignore[attr-defined]
                    width, label=mode)
        axes[1].bar(xs, [(rs[g].vs_eager or 0) if g in rs else 0 for g in groups],  # type: ignore[attr-defined]
                    width, label=mode)
    for ax, yl in zip(axes, ("saved for backward / SMoE", "step time / eager"), strict=True):
        ax.set_xticks([i + width for i in range(len(groups))])  # type: ignore[attr-defined]
        ax.set_xticklabels([f"{p}\nseg {s}" for p, s in groups], fontsize=7)  # type: ignore[attr-defined]
        ax.set_ylabel(yl)  # type: ignore[attr-defined]
        ax.axhline(1.0, color="k", lw=0.5)  # type: ignore[attr-defined]
        ax.legend(fontsize=6)  # type: ignore[attr-defined]
    save_figure(fig, path)


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return "load average " + " ".join(fh.read().split()[:3]) + " at the start"
    except OSError:
        return ""


def run(out: str | Path, *, quick: bool = False, device: str = "auto",
        repeats: int | None = None) -> tuple[Path, str]:
    """Entry point of ``namex bench memory``."""
    load = _load()
    reps = repeats if repeats is not None else (1 if quick else 3)
    shapes: list[StepShape] = []
    for dev in resolve_devices(device):
        if quick:
            shapes.append(StepShape("tiny", dev.type, 2, 64, repeats=1))
        elif dev.type == "cpu":
            shapes += list(CPU_SHAPES)
        else:
            shapes += [StepShape("tiny", "cuda", 16, 128), StepShape("small", "cuda", 8, 512)]
    meth: list[MemoryRow] = []
    trade: list[MemoryRow] = []
    for s in shapes:
        r = s.repeats if s.repeats is not None else reps
        s = StepShape(s.preset, s.device, s.batch, s.seq, r)
        meth += method_rows(s, ("smear", "ep-camex") if quick else METHODS,
                            rss=False if quick else RSS_METHODS.get(s.preset, True))
        trade += tradeoff_rows(s, (16, 32) if quick else SEGMENTS[s.preset], repeats=r,
                               rss=not quick)
    prof_shape = shapes[-1]
    parts = [f"### {prof_shape.preset} ({prof_shape.device}): MiB saved for backward by autograd "
             "node", "",
             node_table(prof_shape, [("smoe", "eager"), ("ep-camex", "eager"),
                                     ("ep-camex", "keep-deltas"), ("ep-camex", "recompute")]),
             ""]
    parts += [f"### {prof_shape.preset} ({prof_shape.device}): SMoE → SMEAR → EP-CAMEx, timed "
             "round-robin", "",
             format_table(["step", "time (median)", "× SMoE (paired)"],
                          decomposition_rows(prof_shape, repeats=reps)), ""]
    for method, mode in (("ep-camex", "eager"), ("ep-camex", "recompute"), ("smoe", "eager")):
        parts += [f"### {prof_shape.preset} ({prof_shape.device}), {method}"
                  + ("" if method == "smoe" else f", merge_memory={mode}")
                  + ": operators by CPU total", "", "```",
                  profile_table(prof_shape, method, mode), "```", ""]
    return memory_report(out, meth, trade, quick=quick, profile="\n".join(parts),
                         contention=load)
