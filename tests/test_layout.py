"""The layout gate of issue 24 (tools/layout_check.py): modules ≤ 500 lines, bodies ≤ 80 lines.

The counting rule is pinned on tiny sources written here (an independent count by hand); the
gate over the whole of ``namex_ref`` is expected to fail until the train/ and hf/ splits land.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool() -> ModuleType:
    path = ROOT / "tools/layout_check.py"
    spec = importlib.util.spec_from_file_location("namex_layout_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

SOURCE = textwrap.dedent(
    '''
    def documented(x):
        """Line one.

        Line three of the docstring.
        """
        y = x + 1

        # a comment inside the body counts
        return y


    def bare(x):
        return x


    def only_docstring():
        """Nothing else."""


    class Box:
        def method(self):
            def inner():
                return 1
            return inner()
    '''
)


def test_body_lines_exclude_signature_and_docstring(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(SOURCE, encoding="utf-8")
    got = {f.qualname: f.lines for f in tool.functions(path, "namex_ref/m.py")}
    # by hand: `y = x + 1` .. `return y` is 4 lines; bare 1; only a docstring 0; method 3
    assert got == {"documented": 4, "bare": 1, "only_docstring": 0, "Box.method": 3,
                   "Box.method.inner": 1}


def test_body_lines_of_a_multiline_statement() -> None:
    fn = ast.parse("def f():\n    return (\n        1\n    )\n").body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert tool.body_lines(fn) == 3


def test_package_of() -> None:
    assert tool.package_of("namex_ref/nash/newton.py") == "nash"
    assert tool.package_of("namex_ref/cli.py") == "."


@pytest.mark.xfail(strict=False, reason="train/ and hf/ splits land separately")
def test_namex_ref_layout() -> None:
    """No module of namex_ref over 500 lines, no function body over 80 (STYLE.md §2)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/layout_check.py")],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
