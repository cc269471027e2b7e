"""The library's plotting helpers leave matplotlib's backend and pyplot's state alone.

They draw on plain ``matplotlib.figure.Figure`` objects and write PNGs. Selecting a backend
(``matplotlib.use("Agg")``) inside the library switched a Jupyter kernel away from its inline
backend, so a notebook that trained a model and then drew its own figures showed nothing
(issue 17). Checked in a fresh interpreter (a backend, once chosen, is process-global): the
backend is set to "svg" first, every helper runs, and afterwards the backend must still be "svg",
pyplot must hold no figure, and every file must be a non-empty PNG.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

from namex_ref.benchmarks.common import new_figure, save_figure
from namex_ref.spectral import plot_rho_grid
from namex_ref.train.comparison import MethodSummary, plot_compare
from namex_ref.train.plots import plot_run

out = Path(sys.argv[1])
records = [
    {"step": 1, "loss": 3.0, "alpha": [[0.5, 0.7]], "cosine": [0.1]},
    {"step": 2, "loss": 2.5, "valid_loss": 2.7, "alpha": [[0.6, 0.6]], "cosine": [0.2]},
]
paths = list(plot_run(records, out / "run", title="t"))
fig, axes = new_figure(2)
axes[0].plot([1, 2], [3, 4])
paths.append(save_figure(fig, out / "bench.png"))
paths.append(plot_rho_grid([("H = cI", [1.0])], [0.0, 0.5], [0.0, 0.5], 0.5, out / "rho.png"))
summary = MethodSummary(method="smoe", seeds=(0, 1), ppl=(10.0, 12.0), mean=11.0, ci=2.0,
                        seconds_per_step=0.1)
paths.append(plot_compare([summary], out / "compare.png"))
print("files", *paths)
print("backend", matplotlib.get_backend())
print("figures", len(plt.get_fignums()))
"""


def test_plot_helpers_keep_the_backend(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["backend"] == "svg", "a plotting helper switched matplotlib's backend"
    assert lines["figures"] == "0", "a plotting helper left a figure in pyplot's state"
    files = [Path(p) for p in lines["files"].split()]
    assert len(files) == 6
    for p in files:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, p

