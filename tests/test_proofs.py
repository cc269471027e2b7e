"""Runs every symbolic proof in ``proofs/`` (tags S3–S19 of docs/math.md) as a subprocess.

Each proof runs both ways a reader would run it: as a script, ``python proofs/<name>.py``, from
a directory outside the repository (so nothing but the script's own path bootstrap can make
``proofs`` importable), and as a module, ``python -m proofs.<name>``, from the repository root.
Each run must exit 0 and print at least one ``PROVED:`` line; a script that fails to simplify a
step raises AssertionError and exits non-zero. The expected list is pinned so that deleting a
proof fails the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROOFS = ROOT / "proofs"
EXPECTED = (
    "s4_stationarity",
    "s5_convexity",
    "s7_identities",
    "s8_orthogonal",
    "s9_invariances",
    "s10_pareto",
    "s11_two_experts",
    "s13_s16_merging",
    "s17_s18_quaternion",
    "s19_spectral",
)
TIMEOUT_S = 120  # each script runs in about a second; generous for slow CI machines


def _discovered() -> list[str]:
    return sorted(p.stem for p in PROOFS.glob("s*.py"))


def _clean_env() -> dict[str, str]:
    """The caller's environment without PYTHONPATH, which could hide a missing bootstrap."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_expected_proofs_present() -> None:
    """Every expected proof exists, and no unlisted proof is silently skipped."""
    assert _discovered() == sorted(EXPECTED)


@pytest.mark.parametrize("mode", ["script", "module"])
@pytest.mark.parametrize("name", sorted(set(EXPECTED) | set(_discovered())))
def test_proof_runs(name: str, mode: str, tmp_path: Path) -> None:
    script = PROOFS / f"{name}.py"
    assert script.is_file(), f"missing proof script proofs/{name}.py"
    if mode == "script":
        cmd, cwd = [sys.executable, str(script)], tmp_path
    else:
        cmd, cwd = [sys.executable, "-m", f"proofs.{name}"], ROOT
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PROVED" in proc.stdout, out
    assert "NOT PROVED" not in out, out
