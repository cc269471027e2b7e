"""The layout gate of issue 24 (tools/layout_check.py): modules ≤ 500 lines, bodies ≤ 80 lines.

The counting rule is pinned on tiny sources written here (an independent count by hand); the
gate over the whole of ``namex_ref`` is expected to fail until the train/ and hf/ splits land.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import layout_check as tool  # noqa: E402  (the tool, imported from tools/)

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


def test_namex_ref_layout() -> None:
    """No module of namex_ref over 500 lines, no function body over 80 (STYLE.md §2)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/layout_check.py")],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement of the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _upward_imports(package: str, above: str) -> dict[str, list[str]]:
    """Files of namex_ref/<package> that import namex_ref.<above>, with what they import."""
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p)
                                         if m.startswith(f"namex_ref.{above}"))
        for p in sorted((ROOT / "namex_ref" / package).rglob("*.py"))
    }
    return {k: v for k, v in offenders.items() if v}


def test_mtl_does_not_import_benchmarks() -> None:
    """The floors run one way (STYLE.md §2): mtl/ sits below benchmarks/, never imports it."""
    assert not _upward_imports("mtl", "benchmarks")


def test_train_does_not_import_hf() -> None:
    """train/ sits below hf/: the loop is handed a model builder, and hf/ provides one."""
    assert not _upward_imports("train", "hf")
