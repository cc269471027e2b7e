"""Solver benchmark behind ``namex bench-solvers`` (kept for that command and for imports).

The benchmark itself lives in :mod:`namex_ref.benchmarks.solvers` (``namex bench solvers``);
this module forwards to it so both commands write the same ``solvers.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from namex_ref.benchmarks.solvers import (
    SolverTiming,
    bench_solvers,
    random_grams,
    solver_report,
)

__all__ = ["SolverTiming", "bench_solvers", "random_grams", "solver_table_main"]

def solver_table_main(
    out: str | Path,
    *,
    ns: Sequence[int] = (2, 8, 32),
    newton_batch: int = 1024,
    repeats: int = 3,
    oracle_problems: int = 3,
    device: str = "auto",
) -> tuple[Path, str]:
    """Benchmark every solver for ``ns`` at batch 1 and ``newton_batch`` and write
    ``solvers.md`` (+ ``solvers.png``) in ``out``; return (path, main table)."""
    if newton_batch < 1:
        raise ValueError(f"newton_batch must be >= 1, got {newton_batch}")
    batches = (1,) if newton_batch == 1 else (1, newton_batch)
    rows = bench_solvers(ns, batches, oracle_problems=oracle_problems, repeats=repeats,
                         device=device)
    return solver_report(out, rows, repeats=repeats)
