"""Markdown tables for the reports the package prints or writes (demo, benchmarks, compare).

A leaf module: it imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]

def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None
) -> str:
    """A markdown table, columns padded to their widest cell so it also reads as plain text.

    header: the column titles; rows: the cells, each row as long as ``header``. align: one letter
    per column, ``l`` (left, the default) or ``r`` (right: padded on the left, ``---:`` in the
    rule line). Returns the lines joined by newlines, without a trailing newline.
    """
    n = len(header)
    for i, r in enumerate(rows):
        if len(r) != n:
            raise ValueError(f"row {i} has {len(r)} cells, the header has {n}")
    kinds = align if align is not None else "l" * n
    if len(kinds) != n or any(k not in "lr" for k in kinds):
        raise ValueError(f"align must be {n} letters 'l' or 'r', got {align!r}")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if k == "r" else c.ljust(w)
            for c, w, k in zip(cells, widths, kinds, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + (":" if k == "r" else "-") for w, k in zip(widths, kinds, strict=True)
    ) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
