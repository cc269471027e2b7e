"""Per-cell statistics of the report: n, mean, the 95 % Student t interval over seeds
(:func:`namex_ref.train.mean_ci`), and paired differences (per seed, on the seeds both cells
have). A seed fixes the initialisation, the batch order and, in part 2, the head and the base
perturbation, so pairing removes the seed's own difficulty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from namex_ref.train import mean_ci

Cell = Mapping[int, float]
"""seed -> value of one (setting, method) cell."""


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    ci: float  # half-width; NaN for n < 2

    def text(self, digits: int = 2) -> str:
        """``mean ± ci (n = k)``; ``—`` when n = 0; no interval when n = 1."""
        if self.n == 0:
            return "—"
        ci = f" ± {self.ci:.{digits}f}" if math.isfinite(self.ci) else ""
        return f"{self.mean:.{digits}f}{ci} (n = {self.n})"

    def interval(self, digits: int = 2) -> str:
        """``[lo, hi]`` or ``—``."""
        if not math.isfinite(self.ci):
            return "—"
        return f"[{self.mean - self.ci:.{digits}f}, {self.mean + self.ci:.{digits}f}]"


def estimate(values: Sequence[float]) -> Estimate:
    if not values:
        return Estimate(0, math.nan, math.nan)
    mean, ci = mean_ci(list(values))
    return Estimate(len(values), mean, ci)


def cell_estimate(cell: Cell) -> Estimate:
    return estimate([cell[s] for s in sorted(cell)])


def paired(a: Cell, b: Cell) -> Estimate:
    """a − b per seed, over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    return estimate([a[s] - b[s] for s in seeds])


def table_rows(cells: Mapping[str, Cell], refs: Sequence[str], digits: int = 2,
               ) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, n, mean, 95 % interval, paired difference vs each ref, seeds."""
    header = ["method", "n", "mean", "95% interval"] + [f"− {r}, paired" for r in refs] + [
        "per seed"]
    rows = []
    for method, cell in cells.items():
        e = cell_estimate(cell)
        row = [method, str(e.n), f"{e.mean:.{digits}f}" if e.n else "—", e.interval(digits)]
        for r in refs:
            row.append(paired(cell, cells[r]).text(digits) if r in cells and r != method
                       else ("0 (reference)" if r == method else "—"))
        row.append(", ".join(f"s{s}: {cell[s]:.{digits}f}" for s in sorted(cell)))
        rows.append(row)
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
