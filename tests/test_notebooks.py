"""Execute every notebook in notebooks/ (jupytext percent-format .py files) with nbclient.

Each notebook ends its sections in ``assert``s, so a notebook that runs without a cell error is a
passing check. The kernel runs with the repository root as its working directory and imports the
repository's ``namex_ref`` (installed editable in the venv).

The notebooks leave matplotlib's backend to the environment; the kernel gets ipykernel's inline
backend (headless: it renders to PNG), so every figure must appear in the executed output as an
``image/png`` output. The test counts them: at least one per ``plt.show()`` / ``display(...)``
call in the notebook's source, and at least ``MIN_FIGURES[name]`` for the notebooks we ship, so a
notebook that stops showing its figures fails here (and on the documentation site, which
executes the same notebooks).
"""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))

# Figures each shipped notebook draws (a floor that survives deleting the show calls themselves).
MIN_FIGURES = {"momentum": 1, "pareto": 1, "solvers": 1, "training": 2}
SHOW_CALL = re.compile(r"^\s*(?:plt\.show|display)\(", re.MULTILINE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises AssertionError if data is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR", "PNG without an IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits os.environ; a non-inline MPLBACKEND (e.g. Agg) would swallow the
    # figures, so let ipykernel choose its inline backend.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # pragma: no cover - failure path
        pytest.fail(f"{path.name}: a cell raised:\n{exc}")
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs {errors}"

    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    expected = max(MIN_FIGURES.get(path.stem, 0), len(SHOW_CALL.findall(source)))
    images = [
        base64.b64decode(out["data"]["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= expected, (
        f"{path.name}: {len(images)} image/png outputs, expected at least {expected} "
        "(one per figure; show it with plt.show() or display())"
    )
    for k, data in enumerate(images):
        width, height = png_size(data)
        assert width > 0 and height > 0, f"{path.name}: image {k} is {width}x{height}"
