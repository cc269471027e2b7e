"""Compare merging methods: train methods × seeds, then validation perplexity mean ± 95% CI.

Runs live in ``out/<method>/seed<seed>``; a run whose ``result.json`` exists with the same
configuration is not trained again, and an interrupted one is resumed from its checkpoint, so
``compare`` itself is resumable. Outputs: ``results.md`` (the table), ``summary.json`` and
``compare.png`` (per-seed points and the CI bar per method).

CI: for n seeds with mean m and sample standard deviation s (ddof 1), the two-sided 95% Student
t interval is m ± t_{0.975, n−1} · s / √n (undefined for n = 1, reported as NaN).

Timing: s/step is measured inside each run. With ``jobs > 1`` the runs share the cores, so
their s/step depends on what ran beside them; the table's column then says "measured under
--jobs N" and ``summary.json`` records ``timing_jobs`` (use ``jobs=1`` for comparable timings).
A merge override that a method ignores (for example ``singular_policy`` for smoe) is dropped
for that method with a printed note, since :class:`TrainConfig` refuses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from namex_ref.checks import require_int
from namex_ref.merging.config import METHODS
from namex_ref.tables import format_table
from namex_ref.train.builder import ModelBuilder
from namex_ref.train.config import TrainConfig, ignored_overrides
from namex_ref.train.loop import TrainResult, read_result, require_out_folder, train
from namex_ref.train.metrics import clean_json

__all__ = [
    "CompareResult",
    "MethodSummary",
    "compare",
    "markdown_table",
    "mean_ci",
    "plot_compare",
    "plot_title",
    "summarize",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MethodSummary:
    """Validation perplexity of one method over seeds: mean, CI half-width (NaN for n = 1),
    the per-seed values (in seed order) and the mean seconds per training step."""

    method: str
    seeds: tuple[int, ...]
    ppl: tuple[float, ...]
    mean: float
    ci: float
    seconds_per_step: float


@dataclass(frozen=True)
class CompareResult:
    """All runs of a comparison and their per-method summaries; ``table`` is the markdown."""

    out: str
    runs: tuple[TrainResult, ...]
    summaries: tuple[MethodSummary, ...]
    table: str


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(mean, half-width of the two-sided Student t interval at ``confidence``).

    half-width = t_{(1+confidence)/2, n−1} · s / √n with s the ddof-1 standard deviation;
    NaN for fewer than two values.
    """
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    return mean, t * s / math.sqrt(n)


def summarize(runs: Sequence[TrainResult]) -> tuple[MethodSummary, ...]:
    """One :class:`MethodSummary` per method, in order of first appearance."""
    by_method: dict[str, list[TrainResult]] = {}
    for r in runs:
        by_method.setdefault(r.config.method, []).append(r)
    out = []
    for method, rs in by_method.items():
        rs = sorted(rs, key=lambda r: r.config.seed)
        ppl = tuple(r.valid_ppl for r in rs)
        mean, ci = mean_ci(ppl)
        sps = math.fsum(r.seconds_per_step for r in rs) / len(rs)
        out.append(MethodSummary(method, tuple(r.config.seed for r in rs), ppl, mean, ci, sps))
    return tuple(out)


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def markdown_table(
    summaries: Sequence[MethodSummary], *, unigram_ppl: float | None = None, jobs: int = 1
) -> str:
    """Markdown table: method, seeds, valid ppl mean ± 95% CI, per-seed values, s/step.

    jobs: how many runs trained at once; above 1 the s/step column says so (the runs competed
    for the cores) and a note under the table explains it.
    """
    rows = [
        [
            s.method,
            str(len(s.ppl)),
            _fmt(s.mean) + ("" if not math.isfinite(s.ci) else f" ± {_fmt(s.ci)}"),
            ", ".join(_fmt(v) for v in s.ppl),
            _fmt(s.seconds_per_step, 3),
        ]
        for s in summaries
    ]
    one_seed = all(len(s.ppl) == 1 for s in summaries)
    header = ["method", "n", "valid ppl" + (" (one seed)" if one_seed else " (mean ± 95% CI)"),
              "per seed", "s / step" if jobs == 1 else f"s / step (measured under --jobs {jobs})"]
    text = format_table(header, rows, align="lrrlr") + "\n"
    if jobs > 1:
        text += (f"\ns / step was measured with up to {jobs} runs training at once, competing "
                 f"for the cores; compare timings from a --jobs 1 run.\n")
    if unigram_ppl is not None and math.isfinite(unigram_ppl):
        text += f"\nUnigram (context-free) validation perplexity: {unigram_ppl:.1f}\n"
    return text


def plot_title(summaries: Sequence[MethodSummary]) -> str:
    """The title of :func:`plot_compare`: it names what is drawn (no CI claim for n = 1)."""
    ns = sorted({len(s.ppl) for s in summaries})
    if ns == [1]:
        return "validation perplexity, one seed per method (no CI)"
    if len(ns) == 1:
        return f"validation perplexity: {ns[0]} seeds (points), mean ± 95% CI (Student t)"
    return ("validation perplexity: seeds (points), mean ± 95% CI (Student t) where n ≥ 2, "
            "n per method = " + ", ".join(str(len(s.ppl)) for s in summaries))


def plot_compare(summaries: Sequence[MethodSummary], path: str | os.PathLike[str]) -> Path:
    """Per-seed perplexities (points) and mean ± 95% CI (bars where n ≥ 2) per method, as a
    PNG titled by :func:`plot_title`."""
    from matplotlib.figure import Figure  # no backend selection, no global pyplot state

    fig = Figure(figsize=(1.2 * max(len(summaries), 3) + 1, 4))
    ax = fig.subplots()
    for i, s in enumerate(summaries):
        ax.scatter([i] * len(s.ppl), s.ppl, color="tab:gray", s=14, zorder=2)
        err = s.ci if math.isfinite(s.ci) else 0.0
        ax.errorbar([i], [s.mean], yerr=[err], fmt="o", color="tab:blue", capsize=6, zorder=3)
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels([s.method for s in summaries], rotation=30, ha="right")
    ax.set_ylabel("validation perplexity")
    ax.set_title(plot_title(summaries), fontsize=9)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    return target


def _train_resumed(cfg: TrainConfig, builder: ModelBuilder | None) -> TrainResult:
    """Worker of ``compare(jobs > 1)`` (module level, so it pickles)."""
    return train(cfg, resume="if-present", **_builder_kw(builder))


def _builder_kw(builder: ModelBuilder | None) -> dict[str, ModelBuilder]:
    """``train``'s keyword for ``builder`` (none for ``None``: train's default, the GPT's)."""
    return {} if builder is None else {"builder": builder}


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"


def compare(
    base: TrainConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | os.PathLike[str],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = print,
    builder: ModelBuilder | None = None,
) -> CompareResult:
    """Train every (method, seed) with ``base``'s other settings; summarise and write outputs.

    A finished run with the same configuration is reused; an unfinished one is resumed.
    jobs: runs trained at the same time, each in its own process (spawned) with
    ``base.threads`` threads; ``jobs=2`` with one thread each uses both cores of a 2-core
    machine. ``jobs=1`` trains in this process. builder: the runs' model builder
    (:func:`namex_ref.train.train`; ``None`` = the GPT presets; pickled for ``jobs > 1``).
    """
    require_int("--jobs", jobs, low=1)
    if not methods:
        raise ValueError("--methods must name at least one method")
    if not seeds:
        raise ValueError("--seeds must name at least one seed")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ValueError("--methods and --seeds must not repeat values")
    root = require_out_folder(out)
    slots: list[TrainResult | None] = []
    todo: list[tuple[int, TrainConfig]] = []
    for method in methods:
        for seed in seeds:
            folder = _run_dir(root, method, seed)
            dropped = ignored_overrides(method, base.merge_overrides())
            if dropped and log and seed == seeds[0]:
                log(f"[compare] {method}: ignoring "
                    + ", ".join(f"--{k.replace('_', '-')} ({method} {why})"
                                for k, why in dropped.items()))
            unset: dict[str, Any] = dict.fromkeys(dropped)
            cfg = dataclasses.replace(base, method=method, seed=seed, out=str(folder), **unset)
            done = read_result(folder)
            if done is not None and done.config.trajectory_dict() == cfg.trajectory_dict():
                if log:
                    log(f"[compare] {method} seed {seed}: finished, ppl {done.valid_ppl:.2f}")
                slots.append(done)
                continue
            todo.append((len(slots), cfg))
            slots.append(None)

    def report(res: TrainResult) -> None:
        if log:
            log(f"[compare] {res.config.method} seed {res.config.seed}: valid ppl "
                f"{res.valid_ppl:.2f} ({res.seconds_per_step * 1e3:.0f} ms/step)")

    if jobs == 1 or len(todo) <= 1:
        for index, cfg in todo:
            if log:
                log(f"[compare] {cfg.method} seed {cfg.seed}: training -> {cfg.out}")
            slots[index] = train(cfg, resume="if-present", **_builder_kw(builder))
            report(slots[index])  # type: ignore[arg-type]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if log:
            log(f"[compare] training {len(todo)} runs, {jobs} at a time")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {
                pool.submit(_train_resumed, dataclasses.replace(cfg, progress=False),
                            builder): index
                for index, cfg in todo
            }
            for fut in as_completed(futures):
                slots[futures[fut]] = fut.result()
                report(slots[futures[fut]])  # type: ignore[arg-type]
    runs = [r for r in slots if r is not None]
    summaries = summarize(runs)
    unigram = runs[0].unigram_ppl if runs else None
    timed_jobs = jobs if jobs > 1 and len(todo) > 1 else 1
    table = markdown_table(summaries, unigram_ppl=unigram, jobs=timed_jobs)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.md").write_text(table, encoding="utf-8")
    plot_compare(summaries, root / "compare.png")
    summary: dict[str, Any] = {
        "confidence": CONFIDENCE,
        "timing_jobs": timed_jobs,
        "base_config": base.to_dict(),
        "methods": [dataclasses.asdict(s) for s in summaries],
        "runs": [
            {"method": r.config.method, "seed": r.config.seed, "out": r.out,
             "valid_ppl": r.valid_ppl, "valid_loss": r.valid_loss,
             "seconds_per_step": r.seconds_per_step, "fallbacks": r.fallbacks}
            for r in runs
        ],
        "unigram_ppl": unigram,
    }
    (root / "summary.json").write_text(json.dumps(clean_json(summary), indent=2) + "\n")
    return CompareResult(str(root), tuple(runs), summaries, table)
