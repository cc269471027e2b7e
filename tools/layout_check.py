"""Layout gate of issue 24: modules over 500 lines and function bodies over 80 lines.

Prints every module of ``namex_ref/`` longer than :data:`MAX_MODULE_LINES` lines and every
function (methods and nested functions included) whose body is longer than
:data:`MAX_FUNCTION_LINES` lines, then the longest function left in each package, and exits 1
if anything is over a limit (0 otherwise).

A module's length is its number of lines (``wc -l``). A function's body runs from its first
statement after the docstring to the last line of its last statement, blank lines and comments
inside included; the signature, decorators and docstring are not counted (STYLE.md: "a
function body fits on a screen").

Usage: ``python tools/layout_check.py [--root namex_ref] [--package nash ...]``; ``--package``
restricts the verdict (not the listing) to those packages (``.`` for top-level modules).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Function:
    """One function: ``path`` relative to the repository, dotted ``qualname``, body lines."""

    path: str
    qualname: str
    lines: int

    @property
    def package(self) -> str:
        """The sub-package of namex_ref it lives in (``.`` for a top-level module)."""
        return package_of(self.path)


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of ``node``'s body without its docstring (0 for a docstring-only function)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    end = body[-1].end_lineno
    assert end is not None
    return end - body[0].lineno + 1


def functions(path: Path, rel: str) -> Iterator[Function]:
    """Every function defined in the module at ``path`` (nested ones too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)

    def walk(node: ast.AST, prefix: str) -> Iterator[Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield Function(rel, name, body_lines(child))
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def package_of(rel: str) -> str:
    """``nash`` for namex_ref/nash/x.py, ``.`` for namex_ref/x.py."""
    parts = Path(rel).parts
    return parts[1] if len(parts) > 2 else "."


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; return 1 when a module or function (of the selected packages) is over."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="namex_ref", help="package directory (repo-relative)")
    parser.add_argument("--package", action="append", default=None,
                        help="judge only this sub-package (repeatable; '.' = top-level modules)")
    args = parser.parse_args(argv)
    base = ROOT / args.root
    if not base.is_dir():
        print(f"layout_check: {base} is not a directory; pass --root namex_ref", file=sys.stderr)
        return 2
    judged = set(args.package) if args.package else None
    long_modules: list[tuple[str, int]] = []
    funcs: list[Function] = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            long_modules.append((rel, n))
        funcs.extend(functions(path, rel))
    long_funcs = [f for f in funcs if f.lines > MAX_FUNCTION_LINES]
    for rel, n in long_modules:
        print(f"module   {rel}: {n} lines > {MAX_MODULE_LINES}")
    for f in sorted(long_funcs, key=lambda f: -f.lines):
        print(f"function {f.path}::{f.qualname}: body {f.lines} lines > {MAX_FUNCTION_LINES}")
    print("longest function per package:")
    for pkg in sorted({f.package for f in funcs}):
        top = max((f for f in funcs if f.package == pkg), key=lambda f: f.lines)
        print(f"  {pkg:12s} {top.lines:4d}  {top.path}::{top.qualname}")
    failing = [rel for rel, _ in long_modules if judged is None or package_of(rel) in judged]
    failing += [f.path for f in long_funcs if judged is None or f.package in judged]
    print("layout: OK" if not failing else f"layout: {len(failing)} over the limits")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
