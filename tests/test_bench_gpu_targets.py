"""The GPU target table of issue 25 in ``namex bench solvers`` (benchmarks/gpu_targets.py):
every row of the issue's table is reported, measured or "not measured"."""

from __future__ import annotations

import torch

from namex_ref.benchmarks.common import NOT_MEASURED_GPU
from namex_ref.benchmarks.gpu_targets import GPU_TARGETS, measure, targets_section

#: The issue's target table, row by row (what, target), written out here.
ISSUE_ROWS = [
    ("one training bargain, batch 1, small-preset layer, Gram included", "≤ 100 µs"),
    ("`solve_newton`, batch 1, N = 8, adaptive", "≤ 30 µs"),
    ("batch 65536, N = 8, per problem (fixed 20)", "≤ 0.1 µs"),
    ("NAMEx-Full step / EP-CAMEx step, small and medium, fp32 and bf16", "≤ 1.10×"),
    ("NAMEx step / EP-CAMEx step", "≤ 1.03×"),
    ("Gram, float32 and bfloat16, N ≤ 16, P ≥ 4 M", "≥ 50 % of HBM read bandwidth"),
    ("medium NAMEx-Full-Mom tokens/s, bf16", "≥ 0.9× EP-CAMEx's"),
]


def test_every_row_is_reported_not_measured_without_a_gpu() -> None:
    title, md = targets_section(measure(torch.device("cpu")))
    assert title == "GPU targets (issue 25)"
    rows = md.splitlines()[2:]
    assert len(rows) == len(ISSUE_ROWS) == len(GPU_TARGETS)
    for row, (what, target) in zip(rows, ISSUE_ROWS, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == what and cells[1] == target and cells[3] == NOT_MEASURED_GPU


def test_measured_rows_are_shown_and_the_rest_point_to_their_report() -> None:
    _, md = targets_section({"newton_b1": "12.0 µs"})
    rows = {r.split("|")[1].strip(): r.split("|")[4].strip() for r in md.splitlines()[2:]}
    assert rows["`solve_newton`, batch 1, N = 8, adaptive"] == "12.0 µs"
    assert rows["NAMEx step / EP-CAMEx step"] == "see that report"


def test_solvers_report_carries_the_section(tmp_path: object) -> None:
    """The quick solvers benchmark writes the section into solvers.md."""
    from pathlib import Path

    from namex_ref.benchmarks.solvers import SolverTiming, solver_report

    row = SolverTiming("newton", "cpu", 2, 1, 1e-5, 1e-12, 1.0, 3)
    path, _ = solver_report(Path(str(tmp_path)), [row], plot=False)
    text = path.read_text()
    assert "## GPU targets (issue 25)" in text
    assert text.count(NOT_MEASURED_GPU) >= len(ISSUE_ROWS)
