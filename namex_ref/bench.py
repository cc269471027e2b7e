"""Solver benchmark: time per problem and residual reached, ratios against ``ccp`` measured in
the same run (SPEC §2 "Solvers"; the paper's solver is the baseline). Writes a markdown table.
"""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from namex_ref.demo import format_table
from namex_ref.nash.solvers import Method, solve_nash

__all__ = ["SolverTiming", "bench_solvers", "random_grams", "solver_table_main"]


def random_grams(n: int, batch: int, *, d: int = 4096, seed: int = 0) -> torch.Tensor:
    """(batch, n, n) float64 Gram matrices of Gaussian experts in R^d, norms spread over
    0.5…2 (well-scaled, where the paper's CCP converges)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(batch, d, n, generator=g, dtype=torch.float64) / d**0.5
    G = G * (2.0 ** (2 * torch.rand(batch, 1, n, generator=g, dtype=torch.float64) - 1))
    K: torch.Tensor = G.transpose(-1, -2) @ G
    return K


@dataclass(frozen=True)
class SolverTiming:
    """Mean time per problem (seconds) and worst residual for one (method, N, batch)."""

    method: str
    n: int
    batch: int
    seconds_per_problem: float
    max_residual: float
    converged: float  # fraction of problems converged
    iterations: int


def bench_solvers(
    ns: Sequence[int] = (2, 8, 32),
    methods: Sequence[Method] = ("newton", "closed_form", "cvxpy", "ccp"),
    *,
    oracle_problems: int = 5,
    newton_batch: int = 1024,
    repeats: int = 3,
) -> list[SolverTiming]:
    """Time each solver. Oracles (cvxpy, ccp) loop over ``oracle_problems`` problems; Newton and
    the closed form are timed on one problem and on a batch of ``newton_batch``."""
    rows: list[SolverTiming] = []
    jobs = [(m, n) for n in ns for m in methods if not (m == "closed_form" and n != 2)]
    for m, n in tqdm(jobs, desc="solver bench", leave=False):
        batches = [1, newton_batch] if m in ("newton", "closed_form") else [oracle_problems]
        for b in batches:
            K = random_grams(n, b)
            if b == 1:
                K = K[0]
            solve_nash(K, method=m)  # warm-up (imports, caches)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                sol = solve_nash(K, method=m)
                best = min(best, time.perf_counter() - t0)
            rows.append(SolverTiming(
                m, n, b, best / b, float(sol.residual.max()),
                float(sol.converged.double().mean()), sol.iterations,
            ))
    return rows


def solver_table_main(out: str | Path, **kwargs: object) -> tuple[Path, str]:
    """Run :func:`bench_solvers` and write ``solvers.md`` in ``out``; return (path, table)."""
    rows = bench_solvers(**kwargs)  # type: ignore[arg-type]
    ccp = {r.n: r.seconds_per_problem for r in rows if r.method == "ccp"}
    table = format_table(
        ["method", "N", "batch", "time / problem", "× faster than ccp", "max residual",
         "converged", "iterations"],
        [[r.method, str(r.n), str(r.batch), f"{r.seconds_per_problem * 1e6:.1f} µs",
          f"{ccp[r.n] / r.seconds_per_problem:.0f}" if r.n in ccp else "—",
          f"{r.max_residual:.1e}", f"{r.converged:.0%}", str(r.iterations)] for r in rows],
    )
    header = (
        f"# Solver benchmark\n\nDate {datetime.date.today()}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU only.\n"
        "Problems: Gaussian experts in R^4096, norms in 0.5…2 (well-scaled). "
        "Time per problem is the best of 3 runs divided by the batch size; ratios are against "
        "`ccp` (the paper's solver) measured in the same run.\n\n"
    )
    path = Path(out) / "solvers.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + table + "\n", encoding="utf-8")
    tmp.replace(path)
    return path, table
