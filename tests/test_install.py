"""The package as a user installs it: pyproject without deprecated tables, scipy typed through
scipy-stubs, and an editable install (setuptools ``editable_mode=strict``) that mypy follows
from a user's script outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text))


def test_license_is_an_spdx_string_and_setuptools_supports_it() -> None:
    """A license table is deprecated by setuptools (a warning on every install); the SPDX
    string form needs setuptools >= 77."""
    pyproject = _pyproject()
    assert pyproject["project"]["license"] == "MIT"
    assert "setuptools>=77" in pyproject["build-system"]["requires"][0]


def test_scipy_is_type_checked_through_its_stubs() -> None:
    pyproject = _pyproject()
    ignored = {m for o in pyproject["tool"]["mypy"]["overrides"] for m in o["module"]}
    assert "scipy.*" not in ignored
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert any(d.startswith("scipy-stubs") for d in dev)


def test_makefile_installs_in_strict_editable_mode() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install -q -e '.[dev]' --config-settings editable_mode=strict" in makefile


def _editable_install() -> metadata.Distribution:
    # The installed distribution (the one pip records with direct_url.json), not the
    # namex_ref.egg-info that an editable build leaves in the source tree, which the
    # current directory on sys.path would find first.
    dists = [d for d in metadata.distributions(name="namex-ref")]
    if not dists:
        pytest.skip("namex-ref is not installed (tests run from the source tree)")
    dist = next((d for d in dists if d.read_text("direct_url.json")), dists[0])
    direct = dist.read_text("direct_url.json")
    if not direct or not json.loads(direct).get("dir_info", {}).get("editable"):
        pytest.skip("namex-ref is installed, but not in editable mode")
    return dist


def test_the_editable_install_is_one_mypy_can_follow() -> None:
    """setuptools' default ("lenient") editable mode for this flat layout installs an import
    hook (``__editable___*_finder.py``), which mypy cannot follow; strict mode installs a .pth
    path to a link tree of the package. `make install` must keep using strict mode."""
    dist = _editable_install()
    names = [str(f) for f in dist.files or []]
    assert not [n for n in names if n.endswith("_finder.py")], (
        "namex-ref is installed with an import-hook editable finder that mypy cannot follow; "
        "reinstall with: pip install -e . --config-settings editable_mode=strict"
    )
    pth = [n for n in names if n.endswith(".pth")]
    assert pth, names


@pytest.mark.slow  # mypy over namex_ref and torch's stubs: ~40 s on 2 shared cores
def test_mypy_strict_on_a_user_script_outside_the_repository(tmp_path: Path) -> None:
    _editable_install()
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        import torch
        from namex_ref import solve_nash
        from namex_ref.train import TrainConfig

        sol = solve_nash(torch.eye(3, dtype=torch.float64))
        alpha: torch.Tensor = sol.alpha
        cfg: TrainConfig = TrainConfig(steps=10)
        print(alpha, cfg.steps)
    """), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    mypy = Path(sys.executable).with_name("mypy")
    proc = subprocess.run(
        [str(mypy), "--strict", "--no-incremental", "--cache-dir", os.devnull, script.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found in 1 source file" in proc.stdout
