"""Compare merging methods: train methods × seeds, then validation perplexity mean ± 95% CI.

Runs live in ``out/<method>/seed<seed>``; a run whose ``result.json`` exists with the same
configuration is not trained again, and an interrupted one is resumed from its checkpoint, so
``compare`` itself is resumable. Outputs: ``results.md`` (the table), ``summary.json`` and
``compare.png`` (validation loss against steps and wall-clock time, and the final perplexities
with their intervals; :mod:`namex_ref.train.compare_plot`).

CI: for n seeds with mean m and sample standard deviation s (ddof 1), the two-sided 95% Student
t interval is m ± t_{0.975, n−1} · s / √n (undefined for n = 1, reported as NaN).

Timing: s/step is measured inside each run. With ``jobs > 1`` the runs share the cores, so
their s/step depends on what ran beside them; the table's column then says "measured under
--jobs N" and ``summary.json`` records ``timing_jobs`` (use ``jobs=1`` for comparable timings).
A reused run keeps the jobs it was measured under (:data:`TIMING_NAME`), so re-running a
comparison does not drop the caveat.
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
from namex_ref.train.compare_plot import (
    Curve,
    mean_curve,
    plot_compare,
    plot_title,
    validation_curve,
)
from namex_ref.train.config import TrainConfig, ignored_overrides
from namex_ref.train.distributed import resolve_device
from namex_ref.train.loop import (
    METRICS_NAME,
    TrainResult,
    read_result,
    require_out_folder,
    train,
)
from namex_ref.train.metrics import clean_json, read_jsonl

__all__ = [
    "TIMING_NAME",
    "CompareResult",
    "MethodSummary",
    "compare",
    "markdown_table",
    "mean_ci",
    "method_curves",
    "plot_compare",
    "plot_title",
    "summarize",
]

CONFIDENCE = 0.95
TIMING_NAME = "compare_timing.json"
"""Written by ``compare`` in each run folder it trained: ``{"timing_jobs": N}``, the ``--jobs``
under which the run's s/step was measured (read back when a later ``compare`` reuses the run)."""


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


def _train_resumed(cfg: TrainConfig, builder: ModelBuilder | None) -> TrainResult:
    """Worker of ``compare(jobs > 1)`` (module level, so it pickles)."""
    return train(cfg, resume="if-present", **_builder_kw(builder))


def _builder_kw(builder: ModelBuilder | None) -> dict[str, ModelBuilder]:
    """``train``'s keyword for ``builder`` (none for ``None``: train's default, the GPT's)."""
    return {} if builder is None else {"builder": builder}


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"



def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _measured_jobs(folder: Path, fallback: int) -> int:
    """The ``--jobs`` under which the finished run in ``folder`` was timed: its
    :data:`TIMING_NAME`, else ``fallback`` (a folder from before these files existed)."""
    try:
        return int(json.loads((folder / TIMING_NAME).read_text(encoding="utf-8"))["timing_jobs"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback


def _plan(
    base: TrainConfig, methods: Sequence[str], seeds: Sequence[int], root: Path,
    log: Callable[[str], None] | None,
) -> tuple[list[tuple[TrainResult, int] | None], list[tuple[int, TrainConfig]]]:
    """One slot per (method, seed): (finished run, jobs it was timed under) when reusable,
    else ``None`` with an entry (slot, config) in the to-do list."""
    try:  # a comparison folder from before TIMING_NAME: its summary says how runs were timed
        legacy = int(json.loads((root / "summary.json").read_text())["timing_jobs"])
    except (OSError, ValueError, KeyError, TypeError):
        legacy = 1
    slots: list[tuple[TrainResult, int] | None] = []
    todo: list[tuple[int, TrainConfig]] = []
    for method in methods:
        dropped = ignored_overrides(method, base.merge_overrides())
        if dropped and log:
            log(f"[compare] {method}: ignoring "
                + ", ".join(f"--{k.replace('_', '-')} ({method} {why})"
                            for k, why in dropped.items()))
        unset: dict[str, Any] = dict.fromkeys(dropped)
        for seed in seeds:
            folder = _run_dir(root, method, seed)
            cfg = dataclasses.replace(base, method=method, seed=seed, out=str(folder), **unset)
            done = read_result(folder)
            if done is not None and done.config.trajectory_dict() == cfg.trajectory_dict():
                if log:
                    log(f"[compare] {method} seed {seed}: finished, ppl {done.valid_ppl:.2f}")
                slots.append((done, _measured_jobs(folder, legacy)))
                continue
            todo.append((len(slots), cfg))
            slots.append(None)
    return slots, todo


def _train_all(todo: Sequence[tuple[int, TrainConfig]], jobs: int,
               log: Callable[[str], None] | None, builder: ModelBuilder | None
               ) -> dict[int, tuple[TrainResult, int]]:
    """Train the to-do runs with ``builder`` (``jobs`` at a time in spawned processes when more
    than one); slot -> (result, jobs it was timed under), also written to the run's
    :data:`TIMING_NAME`."""
    timed = jobs if jobs > 1 and len(todo) > 1 else 1
    done: dict[int, tuple[TrainResult, int]] = {}

    def finish(index: int, res: TrainResult) -> None:
        done[index] = (res, timed)
        _write_atomic(Path(res.out) / TIMING_NAME, json.dumps({"timing_jobs": timed}) + "\n")
        if log:
            log(f"[compare] {res.config.method} seed {res.config.seed}: valid ppl "
                f"{res.valid_ppl:.2f} ({res.seconds_per_step * 1e3:.0f} ms/step)")

    if timed == 1:
        for index, cfg in todo:
            if log:
                log(f"[compare] {cfg.method} seed {cfg.seed}: training -> {cfg.out}")
            finish(index, train(cfg, resume="if-present", **_builder_kw(builder)))
        return done
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
            finish(futures[fut], fut.result())
    return done


def method_curves(runs: Sequence[TrainResult]) -> dict[str, Curve]:
    """Each method's validation-loss curve (:func:`mean_curve` over its seeds' ``metrics.jsonl``);
    methods whose runs hold no periodic evaluation are left out."""
    by_method: dict[str, list[Curve]] = {}
    for r in runs:
        curve = validation_curve(read_jsonl(Path(r.out) / METRICS_NAME))
        by_method.setdefault(r.config.method, []).append(curve)
    out = {m: mean_curve(cs) for m, cs in by_method.items() if all(c.steps for c in cs)}
    return {m: c for m, c in out.items() if c.steps}


def _write_outputs(root: Path, base: TrainConfig, timed: Sequence[tuple[TrainResult, int]]
                   ) -> CompareResult:
    """results.md, compare.png and summary.json of the finished runs (each with its timing
    jobs); the table's timing caveat is that of the most parallel measurement."""
    runs = [r for r, _ in timed]
    timing_jobs = max((j for _, j in timed), default=1)
    summaries = summarize(runs)
    unigram = runs[0].unigram_ppl if runs else None
    table = markdown_table(summaries, unigram_ppl=unigram, jobs=timing_jobs)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "results.md", table)
    plot_compare(summaries, root / "compare.png", method_curves(runs))
    summary: dict[str, Any] = {
        "confidence": CONFIDENCE,
        "timing_jobs": timing_jobs,
        "base_config": base.to_dict(),
        "methods": [dataclasses.asdict(s) for s in summaries],
        "runs": [
            {"method": r.config.method, "seed": r.config.seed, "out": r.out,
             "valid_ppl": r.valid_ppl, "valid_loss": r.valid_loss,
             "seconds_per_step": r.seconds_per_step, "timing_jobs": j, "fallbacks": r.fallbacks}
            for r, j in timed
        ],
        "unigram_ppl": unigram,
    }
    _write_atomic(root / "summary.json", json.dumps(clean_json(summary), indent=2) + "\n")
    return CompareResult(str(root), tuple(runs), summaries, table)


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

    A finished run with the same configuration is reused, keeping the ``--jobs`` it was timed
    under (its :data:`TIMING_NAME`), so a re-run keeps the table's timing caveat; an unfinished
    run is resumed. jobs: runs trained at the same time, each in its own process (spawned) with
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
        raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)} "
                         f"(namex methods describes them)")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ValueError("--methods and --seeds must not repeat values")
    resolve_device(base.device)  # a missing GPU is one error here, not one per run
    root = require_out_folder(out)
    slots, todo = _plan(base, methods, seeds, root, log)
    for index, finished in _train_all(todo, jobs, log, builder).items():
        slots[index] = finished
    return _write_outputs(root, base, [s for s in slots if s is not None])
