"""Benchmark 1 — solvers: time per problem and residual reached for every solver of Kα = 1/α
(S4, docs/math.md §2 "Solvers"), with ratios against ``ccp`` (the paper's solver) from the same run.

Variants: ``newton`` (batched, adaptive: stops when every problem converged, one host sync per
step), ``newton-fixed`` (exactly ``fixed_iterations`` steps, no host sync — what the training
loop uses), ``closed_form`` (N = 2, S11), ``cvxpy`` (Clarabel oracle) and ``ccp`` (Navon et al.).
Newton and the closed form run batched on every device; the oracles loop over a few problems
on CPU. Every solver is called with ``validate=False`` (solve time only, no input checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from namex_ref.benchmarks import gpu_targets
from namex_ref.benchmarks.common import (
    NOT_MEASURED_GPU,
    environment,
    fmt_ratio,
    interleaved_medians,
    log_ticks,
    markdown_document,
    new_figure,
    resolve_devices,
    save_figure,
    write_text_atomic,
)
from namex_ref.nash.newton import RESIDUAL_TOL, solve_newton
from namex_ref.nash.result import NashSolution
from namex_ref.nash.solvers import solve_nash
from namex_ref.tables import format_table

__all__ = [
    "BATCHES",
    "LATENCY_NS",
    "NS",
    "VARIANTS",
    "LatencyRow",
    "SolverTiming",
    "bench_latency",
    "bench_solvers",
    "latency_table",
    "random_grams",
    "solver_report",
]

VARIANTS = ("newton", "newton-fixed", "closed_form", "cvxpy", "ccp")
BATCHED = ("newton", "newton-fixed", "closed_form")
NS = (2, 4, 8, 16, 32, 64)
BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
#: Largest batch timed per N by default: batched Newton's work grows as batch·N³, and at
#: N = 64, batch 4096 one fixed-iteration call takes ~40 s on a shared 2-core CPU.
DEFAULT_MAX_BATCH = {32: 1024, 64: 256}
#: The performance target: at N = 8 Newton must be ≥ 10,000× faster per problem than ccp while
#: reaching a residual ≤ 1e-10 (Newton's own stopping tolerance, RESIDUAL_TOL).
TARGET_N, TARGET_SPEEDUP = 8, 10_000.0
#: Latency targets of one training-loop bargain (batch 1, 20 fixed steps): at most this many
#: seconds on CPU, and at most this multiple of 20 bare ``torch.linalg.cholesky_ex`` calls on
#: the same N×N matrix timed in the same run.
LATENCY_TARGET_S, LATENCY_TARGET_RATIO = 150e-6, 2.0
#: Expert counts N of the latency table (the training loop's bargains have N ≤ 16).
LATENCY_NS = (2, 4, 8, 16)
#: Fixed Newton budget of the training loop (MergeConfig.newton_iterations; the paper's 20).
FIXED_ITERATIONS = 20
#: Dimension of the Gaussian experts behind the random Gram matrices.
EXPERT_DIM = 256


def random_grams(n: int, batch: int, *, d: int = EXPERT_DIM, seed: int = 0) -> Tensor:
    """(batch, n, n) float64 Gram matrices K = GᵀG of n Gaussian experts in R^d (S2), expert
    norms spread over 0.5…2 (well-scaled, where the paper's CCP converges). Generated in chunks
    of 256 problems so large batches stay small in memory."""
    if n < 2 or batch < 1 or d < 1:
        raise ValueError(f"need n >= 2, batch >= 1, d >= 1; got n={n}, batch={batch}, d={d}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, batch, 256):
        b = min(256, batch - start)
        G = torch.randn(b, d, n, generator=g, dtype=torch.float64) / d**0.5
        G = G * (2.0 ** (2 * torch.rand(b, 1, n, generator=g, dtype=torch.float64) - 1))
        K = G.transpose(-1, -2) @ G
        out.append(0.5 * (K + K.mT))  # exactly symmetric (batched matmul rounds each half)
    return torch.cat(out)


@dataclass(frozen=True)
class SolverTiming:
    """One timed (variant, device, N, batch): median seconds per problem, worst residual
    max_i |α_i(Kα)_i − 1| over the batch, fraction converged, iterations used."""

    variant: str
    device: str
    n: int
    batch: int
    seconds_per_problem: float
    max_residual: float
    converged: float
    iterations: int


def _solver(variant: str, fixed_iterations: int) -> Callable[[Tensor], NashSolution]:
    if variant == "newton-fixed":
        return lambda K: solve_newton(K, fixed_iterations=fixed_iterations)
    return lambda K: solve_nash(K, method=variant, validate=False)  # type: ignore[arg-type]


def bench_solvers(
    ns: Sequence[int] = NS,
    batches: Sequence[int] = BATCHES,
    *,
    variants: Sequence[str] = VARIANTS,
    oracle_problems: int = 3,
    repeats: int = 3,
    device: str = "auto",
    fixed_iterations: int = FIXED_ITERATIONS,
    max_batch: dict[int, int] | None = None,
) -> list[SolverTiming]:
    """Time every solver variant for each N. Batched variants run at every batch size on every
    device; the oracles (cvxpy, ccp) loop over ``oracle_problems`` problems on CPU. For one N all
    jobs are timed interleaved (``interleaved_medians``), so ratios compare like with like.
    ``max_batch``: optional cap on the batch size per N (batches above it are skipped)."""
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown solver variant {v!r}; choose from {VARIANTS}")
    from namex_ref.nash import fused

    fused.warmup()  # compile (or load) the CPU kernels before anything is timed
    devs = resolve_devices(device)
    rows: list[SolverTiming] = []
    for n in ns:
        K_all = random_grams(n, max(max(batches), oracle_problems), seed=n)
        jobs: dict[str, Callable[[], object]] = {}
        meta: dict[str, tuple[str, torch.device, int, Tensor]] = {}
        job_dev: dict[str, torch.device] = {}
        for v in variants:
            if v == "closed_form" and n != 2:
                continue
            solve = _solver(v, fixed_iterations)
            if v in BATCHED:
                for dev in devs:
                    for b in batches:
                        if max_batch is not None and b > max_batch.get(n, b):
                            continue
                        K = K_all[:b].to(dev)
                        key = f"{v}|{dev}|{b}"
                        jobs[key] = (lambda s, k: lambda: s(k))(solve, K)
                        meta[key] = (v, dev, b, K)
                        job_dev[key] = dev
            else:
                K = K_all[:oracle_problems]
                key = f"{v}|cpu|{oracle_problems}"
                jobs[key] = (lambda s, k: lambda: s(k))(solve, K)
                meta[key] = (v, torch.device("cpu"), oracle_problems, K)
                job_dev[key] = torch.device("cpu")
        med = interleaved_medians(jobs, job_dev, repeats=repeats)
        for key, (v, dev, b, K) in meta.items():
            sol = _solver(v, fixed_iterations)(K)  # residual of the timed call (deterministic)
            rows.append(SolverTiming(
                v, dev.type, n, b, med[key] / b, float(sol.residual.max()),
                float(sol.converged.double().mean()), sol.iterations,
            ))
    return rows


@dataclass(frozen=True)
class LatencyRow:
    """One bargain at batch 1 with the training loop's budget (``FIXED_ITERATIONS`` steps) for
    one N: median seconds of the fused and the eager ``solve_newton``, of ``bargain_alpha`` on
    τ with that Gram (Gram + masks + solve + ridge policy, fused), and of 20 bare
    ``cholesky_ex`` calls on the same N×N matrix (the reference), all timed interleaved; the
    fused solve's residual."""

    n: int
    fused_s: float
    eager_s: float
    bargain_s: float
    cholesky20_s: float
    residual: float
    converged: bool


def bench_latency(ns: Sequence[int] = LATENCY_NS, *, repeats: int = 50,
                  fixed_iterations: int = FIXED_ITERATIONS) -> list[LatencyRow]:
    """Time one training-loop bargain per N on CPU (see :class:`LatencyRow`). The fused kernels
    are compiled before timing (``fused.warmup``) and every candidate gets one warm-up call."""
    from namex_ref.merging.plan import bargain_alpha
    from namex_ref.nash import fused

    fused.warmup()
    cpu = torch.device("cpu")
    rows = []
    for n in ns:
        K = random_grams(n, 1, seed=100 + n)[0]
        g = torch.Generator().manual_seed(n)
        taus = [torch.randn(n, 64, 32, generator=g), torch.randn(n, 32, 64, generator=g)]
        M = K + torch.eye(n, dtype=K.dtype)

        def chol20(m: Tensor = M) -> None:
            for _ in range(fixed_iterations):
                torch.linalg.cholesky_ex(m)

        jobs: dict[str, Callable[[], object]] = {
            "fused": lambda k=K: solve_newton(k, fixed_iterations=fixed_iterations),  # type: ignore[misc]
            "eager": lambda k=K: solve_newton(k, fixed_iterations=fixed_iterations,  # type: ignore[misc]
                                              backend="eager"),
            "bargain": lambda t=taus: bargain_alpha(t, newton_iterations=fixed_iterations),  # type: ignore[misc]
            "chol": chol20,
        }
        med = interleaved_medians(jobs, cpu, repeats=repeats)
        sol = solve_newton(K, fixed_iterations=fixed_iterations)
        rows.append(LatencyRow(n, med["fused"], med["eager"], med["bargain"], med["chol"],
                               float(sol.residual), bool(sol.converged)))
    return rows


def latency_table(rows: Sequence[LatencyRow]) -> tuple[str, str]:
    """(target lines, table) of :func:`bench_latency`'s rows."""
    body = []
    ok_all = True
    for r in rows:
        ratio = r.fused_s / r.cholesky20_s
        ok = r.fused_s <= LATENCY_TARGET_S and ratio <= LATENCY_TARGET_RATIO and r.converged
        ok_all &= ok
        body.append([str(r.n), _us(r.fused_s), f"{ratio:.2f}", _us(r.bargain_s),
                     f"{r.bargain_s / r.cholesky20_s:.2f}", _us(r.eager_s),
                     f"{r.eager_s / r.cholesky20_s:.1f}", fmt_ratio(r.eager_s / r.fused_s),
                     _us(r.cholesky20_s), f"{r.residual:.1e}", "met" if ok else "not met"])
    table = format_table(
        ["N", "fused solve µs", "fused / 20 chol", "bargain_alpha µs", "bargain_alpha / 20 chol",
         "eager solve µs", "eager / 20 chol", "eager / fused", "20 cholesky_ex µs",
         "residual", "target"], body)
    worst = max(rows, key=lambda r: r.fused_s / r.cholesky20_s)
    line = (f"- One bargain at batch 1, {FIXED_ITERATIONS} fixed Newton steps, N ≤ "
            f"{max(r.n for r in rows)} (CPU, fused kernel): worst {_us(worst.fused_s)} µs = "
            f"{worst.fused_s / worst.cholesky20_s:.2f}× 20 bare cholesky_ex (N = {worst.n}) — "
            f"target ≤ {LATENCY_TARGET_S * 1e6:.0f} µs and ≤ {LATENCY_TARGET_RATIO:.0f}×: "
            f"**{'met' if ok_all else 'not met'}**")
    return line, table


def _ccp_time(rows: Sequence[SolverTiming]) -> dict[int, float]:
    return {r.n: r.seconds_per_problem for r in rows if r.variant == "ccp"}


def _us(s: float) -> str:
    return f"{s * 1e6:.2f}" if s < 1e-5 else f"{s * 1e6:.1f}" if s < 1e-3 else f"{s * 1e6:.0f}"


def solver_report(out: str | Path, rows: Sequence[SolverTiming], *, quick: bool = False,
                  repeats: int = 3, fixed_iterations: int = FIXED_ITERATIONS,
                  plot: bool = True, max_batch: dict[int, int] | None = None,
                  latency: Sequence[LatencyRow] = (),
                  gpu_measured: dict[str, str] | None = None) -> tuple[Path, str]:
    """Write ``solvers.md`` (and ``solvers.png``) in ``out``; return (path, main table).
    ``gpu_measured``: the rows of :func:`namex_ref.benchmarks.gpu_targets.measure`."""
    out = Path(out)
    env = environment()
    ccp = _ccp_time(rows)
    batches = sorted({r.batch for r in rows if r.variant in BATCHED})
    bmax_n = {n: max(r.batch for r in rows if r.variant in BATCHED and r.n == n)
              for n in {r.n for r in rows if r.variant in BATCHED}}
    main_rows = []
    for r in rows:
        if r.variant in BATCHED and r.batch not in (1, bmax_n[r.n]):
            continue
        main_rows.append([
            r.variant, r.device, str(r.n), str(r.batch), _us(r.seconds_per_problem),
            fmt_ratio(ccp[r.n] / r.seconds_per_problem) if r.n in ccp else "—",
            f"{r.max_residual:.1e}", f"{r.converged:.0%}", str(r.iterations),
        ])
    if "cuda" not in {r.device for r in rows}:
        main_rows.append(["newton, newton-fixed, closed_form", "cuda", "all", "all",
                          NOT_MEASURED_GPU, "—", "—", "—", "—"])
    table = format_table(
        ["solver", "device", "N", "batch", "µs / problem", "× faster than ccp",
         "max residual", "converged", "iterations"], main_rows)
    # per-problem time against batch size
    sweep_rows = []
    keys = sorted({(r.variant, r.device, r.n) for r in rows if r.variant in BATCHED},
                  key=lambda k: (k[1], k[0], k[2]))
    lookup = {(r.variant, r.device, r.n, r.batch): r for r in rows}
    for v, dev, n in keys:
        sweep_rows.append([v, dev, str(n)] + [
            _us(lookup[(v, dev, n, b)].seconds_per_problem) if (v, dev, n, b) in lookup else "—"
            for b in batches])
    sweep = format_table(["solver", "device", "N", *[f"b={b}" for b in batches]], sweep_rows)
    target = _target_line(rows)
    sections_extra: list[tuple[str, str]] = []
    if latency:
        lat_line, lat_table = latency_table(latency)
        target = f"{target}\n{lat_line}"
        sections_extra.append(("Latency of one training-loop bargain (batch 1, CPU)", "\n".join([
            "Median of interleaved calls in this run (one thread). `fused solve`: "
            f"solve_newton(K, fixed_iterations={fixed_iterations}) through the fused kernel "
            "(namex_ref.nash.fused, compiled before timing); `bargain_alpha`: Gram of two "
            "(N, 64, 32) float32 matrices + masks + solve + ridge policy, fused; `eager`: the "
            "same solve as batched torch operators (backend='eager', the previous default and "
            f"the oracle of the fused path); `20 cholesky_ex`: {fixed_iterations} bare "
            "torch.linalg.cholesky_ex calls on the same N×N matrix (the reference of the "
            "target). No host synchronisation in any of them (tests/test_nash_fused.py).",
            "", lat_table])))
    notes = [
        "Problems: Gram matrices of Gaussian experts in R^256 with norms spread over 0.5…2 "
        "(well-scaled, where ccp converges); the same problems for every solver.",
        f"Timing: every job of one N is timed interleaved (round-robin) in this process, "
        f"{repeats} repeat(s) after one warm-up round; the table gives the median divided by the "
        "batch size. The CPU is shared with other jobs, so absolute times are noisy; ratios are "
        "formed from medians of the same run. Solvers are called with validate=False.",
        f"Batch sizes {', '.join(map(str, batches))}"
        + (f"; capped at {', '.join(f'{b} for N = {n}' for n, b in sorted(max_batch.items()))}"
           " (batch·N³ work)" if max_batch else "") + ".",
        f"`newton`: adaptive (one host sync per step on CUDA). `newton-fixed`: "
        f"{fixed_iterations} steps, no host sync (the training loop's mode). On CPU both run "
        "through the fused kernel (namex_ref.nash.fused, solve_newton's default backend there, "
        "compiled before timing); on CUDA through the fused Triton kernel "
        "(namex_ref.nash.fused_gpu, one launch per solve) where triton is installed. "
        "`cvxpy`/`ccp` loop over the problems on CPU, "
        "so their batch is the number of problems timed. Residual = max over the batch of "
        "max_i |α_i(Kα)_i − 1|.",
        *(["**Quick mode** (tests/smoke): reduced grid, 1 repeat — not for quoting."]
          if quick else []),
    ]
    doc = markdown_document("Solver benchmark", env, notes, [
        ("Target", target),
        ("Time per problem at batch 1 and the largest batch", table),
        ("Time per problem (µs) against batch size", sweep),
        *sections_extra,
        gpu_targets.targets_section(gpu_measured or {}),
    ])
    path = write_text_atomic(out / "solvers.md", doc)
    if plot:
        _plot(out / "solvers.png", rows)
    return path, table


def _target_line(rows: Sequence[SolverTiming]) -> str:
    ccp = _ccp_time(rows)
    cands = [r for r in rows if r.n == TARGET_N and r.variant.startswith("newton")
             and r.device == "cpu"]
    if TARGET_N not in ccp or not cands:
        return f"N = {TARGET_N} not in this run."
    lines = []
    for v in ("newton", "newton-fixed"):
        rs = [r for r in cands if r.variant == v]
        if not rs:
            continue
        best = min(rs, key=lambda r: r.seconds_per_problem)
        speed = ccp[TARGET_N] / best.seconds_per_problem
        ok = speed >= TARGET_SPEEDUP and best.max_residual <= RESIDUAL_TOL
        lines.append(
            f"- `{v}` (CPU, batch {best.batch}): {fmt_ratio(speed)}× faster per problem than "
            f"ccp at N = {TARGET_N}, residual {best.max_residual:.1e} — target ≥ "
            f"{TARGET_SPEEDUP:.0f}× with residual ≤ {RESIDUAL_TOL:.0e}: "
            f"**{'met' if ok else 'not met'}**")
    return "\n".join(lines)


def _plot(path: Path, rows: Sequence[SolverTiming]) -> None:
    fig, (ax1, ax2) = new_figure(2)
    for v in VARIANTS:
        for dev in ("cpu", "cuda"):
            best: dict[int, float] = {}
            for r in rows:
                if r.variant == v and r.device == dev:
                    best[r.n] = min(best.get(r.n, math.inf), r.seconds_per_problem)
            pts = sorted(best.items())
            if pts:
                ax1.plot(*zip(*pts, strict=True), marker="o",  # type: ignore[attr-defined]
                         label=f"{v} ({dev})")
    ax1.set(xscale="log", yscale="log", xlabel="N experts", ylabel="s / problem",  # type: ignore[attr-defined]
            title="per problem, best batch size")
    log_ticks(ax1, [r.n for r in rows])
    ax1.legend(fontsize=6)  # type: ignore[attr-defined]
    n_sel = TARGET_N if any(r.n == TARGET_N for r in rows) else min(r.n for r in rows)
    for v in BATCHED:
        for dev in ("cpu", "cuda"):
            pts = sorted((r.batch, r.seconds_per_problem) for r in rows
                         if r.variant == v and r.device == dev and r.n == n_sel)
            if pts:
                ax2.plot(*zip(*pts, strict=True), marker="o",  # type: ignore[attr-defined]
                         label=f"{v} ({dev})")
    for r in rows:
        if r.variant == "ccp" and r.n == n_sel:
            ax2.axhline(r.seconds_per_problem, color="k", ls="--", label="ccp")  # type: ignore[attr-defined]
    ax2.set(xscale="log", yscale="log", xlabel="batch size", ylabel="s / problem",  # type: ignore[attr-defined]
            title=f"N = {n_sel}")
    log_ticks(ax2, [r.batch for r in rows if r.variant in BATCHED])
    ax2.legend(fontsize=6)  # type: ignore[attr-defined]
    save_figure(fig, path)


def run(out: str | Path, *, quick: bool = False, device: str = "auto",
        ns: Sequence[int] | None = None, batches: Sequence[int] | None = None,
        repeats: int | None = None) -> tuple[Path, str]:
    """Entry point of ``namex bench solvers``: benchmark and write the report."""
    reps = repeats if repeats is not None else (1 if quick else 3)
    latency = bench_latency((2, 8) if quick else LATENCY_NS, repeats=3 if quick else 50)
    rows = bench_solvers(
        ns if ns is not None else ((2, 8) if quick else NS),
        batches if batches is not None else ((1, 16) if quick else BATCHES),
        oracle_problems=1 if quick else 3, repeats=reps, device=device,
        max_batch=None if quick else DEFAULT_MAX_BATCH,
    )
    cuda = [d for d in resolve_devices(device) if d.type == "cuda"]
    measured = gpu_targets.measure(cuda[0], repeats=3 if quick else 20) if cuda else {}
    return solver_report(out, rows, quick=quick, repeats=reps,
                         max_batch=None if quick else DEFAULT_MAX_BATCH, latency=latency,
                         gpu_measured=measured)

