"""namex_ref.tables.format_table: the cells read back unchanged, the rule line carries the
alignment, and malformed input is refused."""

from __future__ import annotations

import pytest

from namex_ref.tables import format_table


def _read(table: str) -> tuple[list[list[str]], str]:
    """Cells of every line but the rule (stripped), and the rule line."""
    lines = table.split("\n")
    cells = [[c.strip() for c in ln[1:-1].split("|")] for ln in lines[:1] + lines[2:]]
    return cells, lines[1]


def test_cells_round_trip_and_columns_line_up() -> None:
    header = ["method", "n", "ppl"]
    rows = [["smoe", "3", "11.00 ± 2.48"], ["namex-full-mom", "12", "9.00"]]
    table = format_table(header, rows, align="lrr")
    cells, rule = _read(table)
    assert cells == [header, *rows]
    assert rule == "|" + "-" * 16 + "|" + "-" * 3 + ":|" + "-" * 13 + ":|"
    lines = table.split("\n")
    assert len({len(ln) for ln in lines}) == 1  # padded: every line equally long
    assert lines[3].startswith("| namex-full-mom | 12 |         9.00 |")  # right-aligned
    assert lines[2].startswith("| smoe           |  3 | 11.00 ± 2.48 |")


def test_default_is_left_aligned_and_empty_body_is_allowed() -> None:
    assert format_table(["a", "bb"], [["xyz", "1"]]) == "| a   | bb |\n|-----|----|\n| xyz | 1  |"
    assert format_table(["a"], []) == "| a |\n|---|"


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        format_table(["a", "b"], [["1", "2"], ["3"]])
    with pytest.raises(ValueError, match="align"):
        format_table(["a", "b"], [], align="l")
    with pytest.raises(ValueError, match="align"):
        format_table(["a", "b"], [], align="lc")
