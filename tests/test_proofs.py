"""Runs every symbolic proof in ``proofs/`` (SPEC S3–S11, S17–S19) as a subprocess.

Each script must exit 0 and print at least one ``PROVED:`` line; a script that fails to simplify
a step raises AssertionError and exits non-zero. The expected list is pinned so that deleting a
proof fails the suite.
"""

from __future__ import annotations

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
    "s11_two_experts",
    "s13_s16_merging",
    "s17_s18_quaternion",
    "s19_spectral",
)
TIMEOUT_S = 120  # each script runs in about a second; generous for slow CI machines


def _discovered() -> list[str]:
    return sorted(p.stem for p in PROOFS.glob("s*.py"))


def test_expected_proofs_present() -> None:
    """Every expected proof exists, and no unlisted proof is silently skipped."""
    assert _discovered() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) | set(_discovered())))
def test_proof_runs(name: str) -> None:
    assert (PROOFS / f"{name}.py").is_file(), f"missing proof script proofs/{name}.py"
    proc = subprocess.run(
        [sys.executable, "-m", f"proofs.{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PROVED" in proc.stdout, out
    assert "NOT PROVED" not in out, out
