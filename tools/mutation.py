"""Mutation testing of the namex-ref core: ``python tools/mutation.py`` (or ``make mutation``).

What it does
------------
For every core module (the table ``MODULES`` below) it

1. generates mutants with a small AST mutator (operator, comparison, boolean, ``not``/unary
   minus removal, numeric constant, call and branch mutations; see ``OPERATORS``);
2. runs the module's own test files once, in a forked child, with a line tracer that records
   which test executes which line of the module (per-test contexts) and how long each test takes;
3. for every mutant runs only the tests that execute the mutated line(s), fastest first, with
   ``-x``: a mutant that no test executes is a survivor without running anything, a mutant on a
   line executed at import time (module constants, defaults, class bodies) runs all the tests;
4. writes ``results/mutation.json`` (every mutant and its fate) and ``results/mutation.md``
   (kill rates and the survivors).

Speed: the parent imports torch, numpy, scipy, cvxpy, hypothesis and pytest once and never
imports ``namex_ref``; each mutant runs in a child forked from it, which installs the mutated
module through an import hook (a meta-path finder serving the mutated code object for that one
module name) and calls ``pytest.main`` on the selected node ids. A child that runs longer than
10 × the selected tests' baseline time + 10 s is killed and the mutant counts as killed
("timeout"). Hypothesis runs with the ``mutation`` profile (tests/conftest.py: derandomised,
10 examples, no database), so a run is repeatable; tests marked ``slow`` are not run.

Equivalent mutants (no change in behaviour) are listed in ``tools/mutation_equivalent.toml``
with the reason, keyed by the mutant id printed in the report; they are reported separately and
left out of the kill-rate denominator. A survivor that is not equivalent but needs a word (e.g.
only a test that needs a GPU can kill it) gets a ``[[survivor]]`` note there (``id``, ``note``),
printed next to it; it stays in the kill rate. A run that re-measures a module keeps the
replaced run's counts as ``before`` in the JSON, and the report prints the kill rate before/after.

Usage::

    python tools/mutation.py                       # every core module, 2 jobs
    python tools/mutation.py --module momentum --module quaternion --jobs 2
    python tools/mutation.py --module spectral --sample 60 --seed 0   # a quick sampled estimate
    python tools/mutation.py --list --module quaternion                # print the mutants only

A run over some modules updates those modules in ``results/mutation.json`` and rewrites the
report from all the modules stored there.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import datetime as _dt
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Module → test files. Each core module is mutation-tested against its own test files only; the
# glob patterns pick up test files added later (e.g. tests/test_nash_hard.py,
# tests/test_mutants_momentum.py). tests/test_edges.py exercises the Nash core and the merging
# functions, so both groups include it.
_NASH_TESTS = (
    "tests/test_math_doc.py",  # the documented constants (docs/math.md §7) equal the code's
    "tests/test_nash_*.py",
    "tests/test_bargain*.py",
    "tests/test_edges*.py",
    "tests/test_mutants_nash*.py",
)
_MERGING_TESTS = (
    "tests/test_math_doc.py",
    "tests/test_merging*.py",
    "tests/test_nash_fused.py",
    "tests/test_edges*.py",
    "tests/test_mutants_merging*.py",
    "tests/test_mutants_functional*.py",
)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "nash/problem": ("namex_ref/nash/problem.py", _NASH_TESTS),
    "nash/newton": ("namex_ref/nash/newton.py", _NASH_TESTS),
    "nash/closed_form": ("namex_ref/nash/closed_form.py", _NASH_TESTS),
    "nash/oracles": ("namex_ref/nash/oracles.py", _NASH_TESTS),
    "nash/solvers": ("namex_ref/nash/solvers.py", _NASH_TESTS),
    "nash/bargain": ("namex_ref/nash/bargain.py", _NASH_TESTS),
    "nash/gram": ("namex_ref/nash/gram.py", _NASH_TESTS),
    "nash/result": ("namex_ref/nash/result.py", _NASH_TESTS),
    # run with NUMBA_DISABLE_JIT=1: the kernels then run as Python, so the line tracer sees
    # them and a mutant is never served from numba's compiled cache
    "nash/fused": ("namex_ref/nash/fused.py", _NASH_TESTS),
    "momentum": (
        "namex_ref/momentum.py",
        ("tests/test_momentum*.py", "tests/test_mutants_momentum*.py"),
    ),
    "quaternion": (
        "namex_ref/quaternion.py",
        ("tests/test_quaternion*.py", "tests/test_mutants_quaternion*.py"),
    ),
    "spectral": (
        "namex_ref/spectral.py",
        ("tests/test_spectral*.py", "tests/test_mutants_spectral*.py"),
    ),
    # the pure merging mathematics (formerly merging/functional.py, now a re-export of these)
    "merging/operators": ("namex_ref/merging/operators.py", _MERGING_TESTS),
    "merging/plan": ("namex_ref/merging/plan.py", _MERGING_TESTS),
    "merging/camex": ("namex_ref/merging/camex.py", _MERGING_TESTS),
    # the layer modules: their unit tests (test_merging*.py) and the model tests that run the
    # layers inside a GPT (test_models.py: every method's forward/backward)
    "merging/layers": (
        "namex_ref/merging/layers.py",
        (
            "tests/test_merging*.py",
            "tests/test_models.py",
            "tests/test_mutants_layers*.py",
        ),
    ),
    "merging/routing": (
        "namex_ref/merging/routing.py",
        (
            "tests/test_merging*.py",
            "tests/test_models.py",
            "tests/test_mutants_routing*.py",
        ),
    ),
    # the Hugging Face layer and its training wrapper: the HF test files (about a minute in
    # all; the per-mutant selection by line coverage keeps a mutant's run to the few tests that
    # reach its line). They need transformers; without it the tests skip and every mutant
    # survives, so measure them where the extra is installed.
    "hf/convert": (
        "namex_ref/hf/convert.py",
        ("tests/test_hf*.py", "tests/test_mutants_hf*.py"),
    ),
    "hf/block": (
        "namex_ref/hf/block.py",
        ("tests/test_hf*.py", "tests/test_mutants_hf*.py"),
    ),
    "hf/decode": (
        "namex_ref/hf/decode.py",
        ("tests/test_hf*.py", "tests/test_mutants_hf*.py"),
    ),
    "hf/base": (
        "namex_ref/hf/base.py",
        ("tests/test_hf*.py", "tests/test_mutants_hf*.py"),
    ),
    "hf/training": (
        "namex_ref/hf/training.py",
        ("tests/test_hf*.py", "tests/test_mutants_hf*.py"),
    ),
    # Nash-MTL: its own tests (the CCP route's cvxpy solves make them the slowest per mutant)
    "mtl/nash_mtl": (
        "namex_ref/mtl/nash_mtl.py",
        ("tests/test_mtl*.py", "tests/test_mutants_mtl*.py"),
    ),
}

OPERATORS = {
    "arith": "arithmetic operator swap (+↔−, *↔/, ** → *, // → *, @ → *, &↔|)",
    "compare": "comparison swap (<↔<=, >↔>=, < ↔ >, ==↔!=, is↔is not, in↔not in)",
    "bool": "and ↔ or",
    "not": "`not x` → x, `~x` → x",
    "neg": "`-x` → x",
    "const": "numeric constant c → c + 1, c → 0 (c ≠ 0)",
    "call": "f(a, …) → a (functions), x.m(…) → x (methods), call statement → pass",
    "branch": "if/ternary condition → True / False",
    "raise": "raise … → pass",
}

EQUIVALENTS_FILE = ROOT / "tools" / "mutation_equivalent.toml"
JSON_OUT = ROOT / "results" / "mutation.json"
MD_OUT = ROOT / "results" / "mutation.md"
PYTEST_ARGS = (
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "_hypothesis_pytestplugin",
    "-m",
    "not slow",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)
TIMEOUT_FACTOR = 10.0
TIMEOUT_EXTRA_S = 10.0

# ---------------------------------------------------------------------------------------------
# The mutator
# ---------------------------------------------------------------------------------------------

_ARITH: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.Div,),
    ast.Div: (ast.Mult,),
    ast.Pow: (ast.Mult,),
    ast.FloorDiv: (ast.Mult,),
    ast.MatMult: (ast.Mult,),
    ast.BitAnd: (ast.BitOr,),
    ast.BitOr: (ast.BitAnd,),
}
_COMPARE: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.GtE),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
# Calls whose replacement by their first argument is a type change, not a behaviour change.
_CALL_SKIP_NAMES = frozenset(
    "isinstance issubclass len range enumerate zip print super type getattr setattr hasattr "
    "iter next repr str list tuple dict set frozenset int float bool complex callable id vars "
    "cast object".split()
)
# Methods whose removal is (almost always) equivalent or only changes the container type.
_METHOD_SKIP = frozenset(
    "item tolist numpy cpu detach contiguous size dim numel keys values items get format join "
    "startswith endswith lower upper strip append extend".split()
)
# Receivers of logging / warning calls: their arguments are messages, never mutated.
_LOGGING_ROOTS = frozenset({"warnings", "logging", "logger", "log", "LOGGER"})


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One mutation of one module.

    ``uid`` is stable under edits elsewhere in the file: module path, enclosing function,
    operator, original → replacement (normalised source) and an occurrence counter.
    """

    uid: str
    path: str  # repository-relative file path
    qualname: str
    line: int
    col: int
    end_line: int
    operator: str
    original: str
    replacement: str
    node_path: tuple[tuple[str, int | None], ...]
    make: Callable[[ast.AST], ast.AST] = dataclasses.field(compare=False, repr=False)

    @property
    def lines(self) -> range:
        return range(self.line, self.end_line + 1)


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported_modules(tree: ast.Module) -> set[str]:
    """Names bound by ``import x`` / ``import x as y`` (module objects, not values)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
    return names


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _is_logging_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "print"
    return isinstance(func, ast.Attribute) and _root_name(func) in _LOGGING_ROOTS


def _skip_if_test(test: ast.expr) -> bool:
    """``if TYPE_CHECKING`` and ``if __name__ == "__main__"`` are not behaviour."""
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def _const(value: bool) -> Callable[[ast.AST], ast.AST]:
    def make(node: ast.AST) -> ast.AST:
        return ast.copy_location(ast.Constant(value), node)

    return make


def _pass(node: ast.AST) -> ast.AST:
    return ast.copy_location(ast.Pass(), node)


class _Collector:
    """Walks a module's AST and records every mutation point (path from the root + maker)."""

    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.path = path
        self.modules = _imported_modules(tree)
        self.statement_calls: set[int] = set()  # id() of calls whose value is discarded
        self.found: list[tuple[str, ast.AST, tuple[tuple[str, int | None], ...], str,
                               Callable[[ast.AST], ast.AST]]] = []

    def add(self, qualname: str, node: ast.AST, where: tuple[tuple[str, int | None], ...],
            operator: str, make: Callable[[ast.AST], ast.AST]) -> None:
        self.found.append((qualname, node, where, operator, make))

    def walk(self, node: ast.AST, where: tuple[tuple[str, int | None], ...], qual: str) -> None:
        if isinstance(node, ast.JoinedStr | ast.Assert | ast.Import | ast.ImportFrom):
            return
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return
        if isinstance(node, ast.Call) and _is_logging_call(node):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qual = f"{qual}.{node.name}" if qual else node.name
        self.visit_node(node, where, qual)
        for field, value in ast.iter_fields(node):
            if field in {"annotation", "returns", "decorator_list", "type_comment"}:
                continue
            if isinstance(node, ast.Raise):
                continue  # only raise → pass; the exception and its message stay
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        if isinstance(item, ast.stmt) and _is_docstring(item):
                            continue
                        self.walk(item, (*where, (field, i)), qual)
            elif isinstance(value, ast.AST):
                self.walk(value, (*where, (field, None)), qual)

    def visit_node(self, node: ast.AST, where: tuple[tuple[str, int | None], ...],
                   qual: str) -> None:
        if isinstance(node, ast.BinOp | ast.AugAssign):
            for new_op in _ARITH.get(type(node.op), ()):
                self.add(qual, node, where, "arith", _swap_op(new_op))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                for new_cmp in _COMPARE.get(type(op), ()):
                    self.add(qual, node, where, "compare", _swap_cmp(i, new_cmp))
        elif isinstance(node, ast.BoolOp):
            new_bool = ast.Or if isinstance(node.op, ast.And) else ast.And
            self.add(qual, node, where, "bool", _swap_bool(new_bool))
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not | ast.Invert):
                self.add(qual, node, where, "not", _operand)
            elif isinstance(node.op, ast.USub):
                self.add(qual, node, where, "neg", _operand)
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.add(qual, node, where, "const", _number(value + 1))
                if value != 0:
                    self.add(qual, node, where, "const", _number(type(value)(0)))
        elif isinstance(node, ast.Call):
            self.visit_call(node, where, qual)
        elif isinstance(node, ast.If | ast.IfExp):
            if not isinstance(node.test, ast.Constant) and not _skip_if_test(node.test):
                self.add(qual, node.test, (*where, ("test", None)), "branch", _const(True))
                self.add(qual, node.test, (*where, ("test", None)), "branch", _const(False))
        elif isinstance(node, ast.Raise):
            self.add(qual, node, where, "raise", _pass)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            # A call statement: its value is discarded, so the only call mutation is removal.
            self.statement_calls.add(id(node.value))
            if not _is_logging_call(node.value):
                self.add(qual, node, where, "call", _pass)

    def visit_call(self, node: ast.Call, where: tuple[tuple[str, int | None], ...],
                   qual: str) -> None:
        if id(node) in self.statement_calls:
            return
        func = node.func
        first = node.args[0] if node.args and not isinstance(node.args[0], ast.Starred) else None
        if isinstance(func, ast.Name):
            if func.id in _CALL_SKIP_NAMES or func.id[:1].isupper() or first is None:
                return
            self.add(qual, node, where, "call", _first_arg)
        elif isinstance(func, ast.Attribute):
            if func.attr[:1].isupper():
                return
            root = _root_name(func.value)
            if root is not None and root in self.modules:
                if first is not None:
                    self.add(qual, node, where, "call", _first_arg)
            elif func.attr not in _METHOD_SKIP:
                self.add(qual, node, where, "call", _receiver)


def _swap_op(new_op: type[ast.operator]) -> Callable[[ast.AST], ast.AST]:
    def make(node: ast.AST) -> ast.AST:
        assert isinstance(node, ast.BinOp | ast.AugAssign)
        out = copy.copy(node)
        out.op = new_op()
        return out

    return make


def _swap_cmp(index: int, new_cmp: type[ast.cmpop]) -> Callable[[ast.AST], ast.AST]:
    def make(node: ast.AST) -> ast.AST:
        assert isinstance(node, ast.Compare)
        out = copy.copy(node)
        out.ops = [new_cmp() if i == index else op for i, op in enumerate(node.ops)]
        return out

    return make


def _swap_bool(new_bool: type[ast.boolop]) -> Callable[[ast.AST], ast.AST]:
    def make(node: ast.AST) -> ast.AST:
        assert isinstance(node, ast.BoolOp)
        out = copy.copy(node)
        out.op = new_bool()
        return out

    return make


def _number(value: float) -> Callable[[ast.AST], ast.AST]:
    def make(node: ast.AST) -> ast.AST:
        return ast.copy_location(ast.Constant(value), node)

    return make


def _operand(node: ast.AST) -> ast.AST:
    assert isinstance(node, ast.UnaryOp)
    return node.operand


def _first_arg(node: ast.AST) -> ast.AST:
    assert isinstance(node, ast.Call)
    return node.args[0]


def _receiver(node: ast.AST) -> ast.AST:
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    return node.func.value


def _locate(tree: ast.AST, where: Sequence[tuple[str, int | None]]) -> tuple[ast.AST, str,
                                                                            int | None]:
    """The parent of the node at ``where``, the field holding it and its index in that field."""
    parent = tree
    for field, index in where[:-1]:
        value = getattr(parent, field)
        parent = value[index] if index is not None else value
    field, index = where[-1]
    return parent, field, index


def generate_mutants(source: str, path: str) -> list[Mutant]:
    """All mutants of ``source`` (the file at repository-relative ``path``), in source order."""
    tree = ast.parse(source, filename=path)
    collector = _Collector(tree, path)
    collector.walk(tree, (), "")
    seen: dict[str, int] = {}
    mutants: list[Mutant] = []
    for qual, node, where, operator, make in collector.found:
        line: int = getattr(node, "lineno", 0)
        end_line: int = getattr(node, "end_lineno", None) or line
        original = ast.unparse(node)
        replacement = ast.unparse(make(copy.deepcopy(node)))
        if original == replacement:
            continue
        base = (
            f"{path}::{qual or '<module>'}::{operator}::"
            f"{_short(original, 60)} -> {_short(replacement, 60)}"
        )
        seen[base] = seen.get(base, 0) + 1
        uid = f"{base}#{seen[base]}"
        mutants.append(
            Mutant(
                uid=uid,
                path=path,
                qualname=qual or "<module>",
                line=line,
                col=getattr(node, "col_offset", 0),
                end_line=end_line,
                operator=operator,
                original=original,
                replacement=replacement,
                node_path=where,
                make=make,
            )
        )
    mutants.sort(key=lambda m: (m.line, m.col))
    return mutants


def mutated_tree(source: str, mutant: Mutant) -> ast.Module:
    """The module's AST with ``mutant`` applied (line numbers kept)."""
    tree = ast.parse(source, filename=mutant.path)
    parent, field, index = _locate(tree, mutant.node_path)
    if index is None:
        old = getattr(parent, field)
        setattr(parent, field, mutant.make(old))
    else:
        body = getattr(parent, field)
        body[index] = mutant.make(body[index])
    return ast.fix_missing_locations(tree)


def mutated_source(source: str, mutant: Mutant) -> str:
    """The mutated module as source text (``ast.unparse``: comments are dropped)."""
    return ast.unparse(mutated_tree(source, mutant))


def mutated_code(source: str, mutant: Mutant, filename: str) -> types.CodeType:
    return compile(mutated_tree(source, mutant), filename, "exec", dont_inherit=True)


# ---------------------------------------------------------------------------------------------
# Installing a mutant: a meta-path finder that serves one module from a code object
# ---------------------------------------------------------------------------------------------


class _CodeLoader(importlib.abc.Loader):
    def __init__(self, code: types.CodeType) -> None:
        self.code = code

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        exec(self.code, module.__dict__)


class MutantFinder(importlib.abc.MetaPathFinder):
    """Serves module ``name`` (file ``filename``) from ``code`` instead of the file."""

    def __init__(self, name: str, filename: str, code: types.CodeType) -> None:
        self.name = name
        self.filename = filename
        self.code = code

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.filename, loader=_CodeLoader(self.code)
        )


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# ---------------------------------------------------------------------------------------------
# Baseline: per-test line coverage of the target files (a tracer + a pytest plugin)
# ---------------------------------------------------------------------------------------------

_IMPORT = "<import>"


class _CoveragePlugin:
    """Records, for each test node id, the target-file lines it executes and its duration."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.targets = targets  # absolute filename → repository-relative path
        self.current = _IMPORT
        self.lines: dict[str, set[tuple[str, int]]] = {_IMPORT: set()}
        self.duration: dict[str, float] = {}
        self.outcome: dict[str, str] = {}

    def tracer(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        rel = self.targets.get(frame.f_code.co_filename)
        if rel is None:
            return None
        bucket = self.lines.setdefault(self.current, set())

        def local(frame: types.FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                bucket.add((rel, frame.f_lineno))
            return local

        return local

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Iterator[None]:
        self.current = item.nodeid
        self.lines.setdefault(item.nodeid, set())
        start = time.perf_counter()
        yield
        self.duration[item.nodeid] = time.perf_counter() - start
        self.current = _IMPORT

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped:
            self.outcome.setdefault(report.nodeid, "skipped")
        elif report.when == "call":
            self.outcome.setdefault(report.nodeid, "passed")


def _wrap_hookwrapper(plugin: _CoveragePlugin) -> Any:
    import pytest

    class Hooks:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Iterator[None]:
            yield from plugin.pytest_runtest_protocol(item, nextitem)

        def pytest_runtest_logreport(self, report: Any) -> None:
            plugin.pytest_runtest_logreport(report)

    return Hooks()


@dataclasses.dataclass
class Baseline:
    tests: dict[str, float]  # passing node id → seconds (under the tracer)
    failing: list[str]
    by_line: dict[tuple[str, int], list[str]]
    import_lines: set[tuple[str, int]]
    wall_s: float


def _fork(child: Callable[[], int], log: str | None) -> int:
    """Fork; the child runs ``child`` in its own process group and exits with its status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.setpgid(0, 0)
            fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = child()
        except BaseException:  # report anything as an error exit
            import traceback

            traceback.print_exc()
            code = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_baseline(test_files: Sequence[str], target_paths: Sequence[str],
                 root: Path = ROOT) -> Baseline:
    """Run ``test_files`` once in a child with the line tracer; collect per-test coverage."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="mutation-baseline-")
    os.close(fd)
    log = out + ".log"

    def child() -> int:
        import threading

        import pytest

        plugin = _CoveragePlugin({str(root / p): p for p in target_paths})
        threading.settrace(plugin.tracer)
        sys.settrace(plugin.tracer)
        code = int(pytest.main([*test_files, *PYTEST_ARGS], plugins=[_wrap_hookwrapper(plugin)]))
        sys.settrace(None)
        data = {
            "lines": {k: sorted(v) for k, v in plugin.lines.items()},
            "duration": plugin.duration,
            "outcome": plugin.outcome,
        }
        Path(out).write_text(json.dumps(data))
        return code

    start = time.perf_counter()
    pid = _fork(child, log)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - start
    data = json.loads(Path(out).read_text() or "{}") if Path(out).stat().st_size else {}
    if not data:
        raise RuntimeError(f"baseline run failed (status {status}); see {log}")
    os.unlink(out)
    tests: dict[str, float] = {}
    failing: list[str] = []
    for nodeid, outcome in data["outcome"].items():
        if outcome == "passed":
            tests[nodeid] = float(data["duration"].get(nodeid, 1.0))
        elif outcome == "failed":
            failing.append(nodeid)
    by_line: dict[tuple[str, int], list[str]] = {}
    for nodeid, lines in data["lines"].items():
        if nodeid == _IMPORT or nodeid not in tests:
            continue
        for rel, line in lines:
            by_line.setdefault((rel, line), []).append(nodeid)
    import_lines = {(rel, line) for rel, line in data["lines"].get(_IMPORT, [])}
    if failing:
        print(f"  baseline: {len(failing)} failing test(s) left out: {failing[:5]}", flush=True)
    os.unlink(log)
    return Baseline(tests, failing, by_line, import_lines, wall)


def check_node_ids(node_ids: Sequence[str]) -> None:
    """Every baseline node id must be selectable from the command line (else a mutant run
    would end in a usage error, which is reported as "error", never as a kill)."""
    if not node_ids:
        return

    def child() -> int:
        import pytest

        return int(pytest.main([*node_ids, "--collect-only", *PYTEST_ARGS]))

    _, status = os.waitpid(_fork(child, None), 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise RuntimeError("some baseline node ids cannot be selected by pytest; see --list")


def select_tests(mutant: Mutant, baseline: Baseline) -> list[str]:
    """Tests that execute any line of the mutant, fastest first (all of them for import-time
    lines: a module constant or default can change any test's outcome)."""
    keys = [(mutant.path, line) for line in mutant.lines]
    if any(key in baseline.import_lines for key in keys):
        chosen = set(baseline.tests)
    else:
        chosen = {t for key in keys for t in baseline.by_line.get(key, ())}
    return sorted(chosen, key=lambda t: (baseline.tests[t], t))


# ---------------------------------------------------------------------------------------------
# Running the mutants
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    status: str  # killed | timeout | survived | no-coverage | error (selected tests not run)
    tests: int
    seconds: float


def _run_one_child(mutant: Mutant, source: str, tests: Sequence[str],
                   root: Path) -> Callable[[], int]:
    filename = str(root / mutant.path)
    code = mutated_code(source, mutant, filename)

    def child() -> int:
        import pytest

        sys.meta_path.insert(0, MutantFinder(module_name(mutant.path), filename, code))
        watcher = _CollectionWatcher()
        code_ = int(pytest.main([*tests, "-x", *PYTEST_ARGS], plugins=[watcher]))
        if code_ in (4, 5) and watcher.failed:
            # The mutant broke the import of a test module: its node ids cannot be found
            # (pytest says usage error). Every test in that module errors, so it is a kill.
            return 1
        return code_

    return child


class _CollectionWatcher:
    """Notes whether collecting any test module failed (e.g. the mutant raises at import)."""

    def __init__(self) -> None:
        self.failed = False

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.failed = True


def run_mutants(mutants: Sequence[Mutant], source: str, baseline: Baseline, jobs: int,
                progress: str = "", root: Path = ROOT) -> dict[str, Outcome]:
    """Run every mutant in a forked child (``jobs`` at a time); returns uid → outcome."""
    results: dict[str, Outcome] = {}
    queue: list[tuple[Mutant, list[str], float]] = []
    for mutant in mutants:
        tests = select_tests(mutant, baseline)
        if not tests:
            results[mutant.uid] = Outcome("no-coverage", 0, 0.0)
            continue
        budget = TIMEOUT_FACTOR * sum(baseline.tests[t] for t in tests) + TIMEOUT_EXTRA_S
        queue.append((mutant, tests, budget))
    running: dict[int, tuple[Mutant, int, float, float]] = {}
    timed_out: set[int] = set()
    done = len(results)
    total = len(mutants)
    last_print = time.perf_counter()
    while queue or running:
        while queue and len(running) < jobs:
            mutant, tests, budget = queue.pop(0)
            start = time.perf_counter()
            pid = _fork(_run_one_child(mutant, source, tests, root), None)
            running[pid] = (mutant, len(tests), start, start + budget)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.perf_counter()
            for cpid, (_, _, _, deadline) in running.items():
                if now > deadline and cpid not in timed_out:
                    timed_out.add(cpid)
                    try:
                        os.killpg(cpid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)
            continue
        if pid not in running:
            continue
        mutant, ntests, start, _ = running.pop(pid)
        seconds = time.perf_counter() - start
        if pid in timed_out:
            state = "timeout"
            timed_out.discard(pid)
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            state = "survived"
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) in (4, 5):
            state = "error"  # usage error / nothing ran: never counted as a kill
        else:
            state = "killed"
        results[mutant.uid] = Outcome(state, ntests, seconds)
        done += 1
        if progress and (time.perf_counter() - last_print > 30 or done == total):
            last_print = time.perf_counter()
            counts = _count(o.status for o in results.values())
            print(f"  [{progress}] {done}/{total} {counts}", flush=True)
    return results


def _count(states: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# Equivalents, storage and the report
# ---------------------------------------------------------------------------------------------


def load_equivalents(path: Path = EQUIVALENTS_FILE) -> dict[str, str]:
    """uid → reason, from ``[[equivalent]]`` tables with ``id`` and ``reason``."""
    import tomllib  # Python ≥ 3.11 (the tool runs in the project's venv)

    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {str(e["id"]): str(e["reason"]) for e in data.get("equivalent", [])}


def load_survivor_notes(path: Path = EQUIVALENTS_FILE) -> dict[str, str]:
    """uid → note, from ``[[survivor]]`` tables with ``id`` and ``note``: survivors that are NOT
    equivalent (they stay in the kill rate) but need a word, e.g. a mutant that only a test
    needing hardware this machine lacks can kill."""
    import tomllib

    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {str(e["id"]): str(e["note"]) for e in data.get("survivor", [])}


def _before(entry: dict[str, Any], equivalents: dict[str, str]) -> dict[str, Any]:
    """What a new run of a module replaces: the stored run's counts, rate, commit and command
    (kept in the new entry as ``before``, so the report shows the kill rate before/after)."""
    s = _summary(entry, equivalents)
    retest = entry.get("retested_from")
    return {
        **s,
        "commit": entry["commit"] + (f" (retest of {retest})" if retest else ""),
        "date": entry["date"],
        "command": entry.get("command", ""),
    }


def test_files_for(module: str) -> list[str]:
    _, patterns = MODULES[module]
    files = {f for p in patterns for f in glob.glob(p, root_dir=ROOT)}
    return sorted(files)


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "namex_ref", "tests"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes in namex_ref/ or tests/)" if dirty else "")


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), "
            f"Python {platform.python_version()}")


def _retest_plan(module: str, mutants: list[Mutant], previous: dict[str, Any] | None
                 ) -> tuple[list[Mutant], dict[str, dict[str, Any]]]:
    """For ``--retest-survivors``: the mutants to run again and the stored fates to keep.

    Only valid when the module's code is unchanged since the stored run (same mutants at the
    same lines, and the same source hash where one was stored): then a mutant the stored run
    killed is still killed by the same tests (tests are only ever added), and only the stored
    survivors need running again against the current tests. A stored sampled run (``--sample``)
    is retested on its own sample: the same mutants, its kills kept, its survivors run again.
    """
    if previous is None or previous.get("max_mutants"):
        raise SystemExit(f"{module}: --retest-survivors needs a stored full or sampled run")
    old = {m["uid"]: m for m in previous["mutants"]}
    now = {m.uid: m.line for m in mutants}
    same_hash = previous.get("source_sha256") in (None, _sha256(module))
    same_set = set(old) <= set(now) if previous.get("sample") else set(old) == set(now)
    if not same_hash or not same_set or any(old[u]["line"] != now[u] for u in old):
        raise SystemExit(f"{module}: the code changed since the stored run; run it in full")
    keep = {u: m for u, m in old.items() if m["status"] in ("killed", "timeout")}
    return [m for m in mutants if m.uid in old and m.uid not in keep], keep


def _sha256(module: str) -> str:
    import hashlib

    return hashlib.sha256((ROOT / MODULES[module][0]).read_bytes()).hexdigest()


def measure_module(module: str, jobs: int, sample: int | None, seed: int,
                   max_mutants: int | None,
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    path, _ = MODULES[module]
    source = (ROOT / path).read_text()
    mutants = generate_mutants(source, path)
    generated = len(mutants)
    kept: dict[str, dict[str, Any]] = {}
    all_mutants = mutants
    if previous is not None:
        mutants, kept = _retest_plan(module, mutants, previous)
        stored = {m["uid"] for m in previous["mutants"]}
        all_mutants = [m for m in all_mutants if m.uid in stored]  # a stored sample: its own
        sample, seed = previous.get("sample"), previous.get("seed") or 0
    if previous is None and sample is not None and sample < len(mutants):
        mutants = sorted(random.Random(seed).sample(mutants, sample), key=lambda m: m.line)
    if max_mutants is not None:
        mutants = mutants[:max_mutants]
    files = test_files_for(module)
    start = time.perf_counter()
    print(f"{module}: {len(mutants)} of {generated} mutants, tests {files}", flush=True)
    baseline = run_baseline(files, [path])
    print(f"  baseline: {len(baseline.tests)} passing tests, {baseline.wall_s:.1f} s", flush=True)
    check_node_ids(sorted(baseline.tests))
    outcomes = run_mutants(mutants, source, baseline, jobs, progress=module)
    wall = time.perf_counter() - start
    rows = [
        {
            "uid": m.uid,
            "line": m.line,
            "col": m.col,
            "operator": m.operator,
            "original": m.original,
            "replacement": m.replacement,
            "status": outcomes[m.uid].status,
            "tests": outcomes[m.uid].tests,
            "seconds": round(outcomes[m.uid].seconds, 2),
        }
        for m in mutants
    ]
    if previous is not None:  # stored kills + re-run survivors, in source order
        fresh = {r["uid"]: r for r in rows}
        rows = [fresh[m.uid] if m.uid in fresh else kept[m.uid] for m in all_mutants]
    return {
        "module": module,
        "path": path,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "source_sha256": _sha256(module),
        "retested_from": None if previous is None else previous.get("commit"),
        "test_files": files,
        "generated": generated,
        "sample": sample,
        "seed": seed if sample is not None else None,
        "max_mutants": max_mutants,
        "jobs": jobs,
        "wall_s": round(wall, 1),
        "baseline_tests": len(baseline.tests),
        "baseline_failing": baseline.failing,
        "mutants": rows,
    }


def _summary(entry: dict[str, Any], equivalents: dict[str, str]) -> dict[str, Any]:
    counts = {"killed": 0, "timeout": 0, "survived": 0, "equivalent": 0}
    for m in entry["mutants"]:
        status = m["status"]
        if status in ("survived", "no-coverage", "error"):
            status = "equivalent" if m["uid"] in equivalents else "survived"
        counts[status] += 1
    denominator = counts["killed"] + counts["timeout"] + counts["survived"]
    rate = (counts["killed"] + counts["timeout"]) / denominator if denominator else 1.0
    return {**counts, "mutants": len(entry["mutants"]), "rate": rate}


def render_report(
    store: dict[str, Any],
    equivalents: dict[str, str],
    command: str,
    notes: dict[str, str] | None = None,
) -> str:
    """The markdown report of every stored module. ``notes``: uid → note for survivors
    (``[[survivor]]`` in the equivalents file); a module's ``before`` (the run it replaced) is
    shown under its command."""
    notes = notes or {}
    lines = [
        "# Mutation testing of the core",
        "",
        f"Last written by `{command}` (`tools/mutation.py`; `make mutation` runs every module;"
        " each module's own command, commit and date are given below).",
        f"Machine: {_machine()}.",
        "",
        "Each module is mutated by the tool's AST mutator (operators below) and every mutant is",
        "run against the module's own test files (`MODULES` in `tools/mutation.py`), selecting",
        "the tests that execute the mutated line; `slow` tests are not run; hypothesis uses the",
        "derandomised `mutation` profile. **Kill rate = (killed + timeout) / (mutants −",
        "equivalent)**: equivalent mutants (no change in behaviour, listed with the reason in",
        "`tools/mutation_equivalent.toml`) are left out of the denominator. A survivor marked",
        "*no test* is on a line that no test executes. A commit marked *retest of X* is a",
        "`--retest-survivors` run: the code is unchanged since the full (or sampled) run at X,",
        "whose kills stand (tests are only added); the survivors of X (of its own sample, for a",
        "sampled run) were run again against the tests at the commit given.",
        "",
        "| module | mutants | killed | timeout | survived | equivalent | kill rate | wall time |"
        " commit | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [m for m in MODULES if m in store]
    for module in order:
        entry = store[module]
        s = _summary(entry, equivalents)
        sampled = f" (sample {entry['sample']} of {entry['generated']})" if entry["sample"] else ""
        retest = f" (retest of {entry['retested_from']})" if entry.get("retested_from") else ""
        lines.append(
            f"| {module}{sampled} | {s['mutants']} | {s['killed']} | {s['timeout']} | "
            f"{s['survived']} | {s['equivalent']} | {100 * s['rate']:.1f}% | "
            f"{entry['wall_s'] / 60:.1f} min | {entry['commit']}{retest} | {entry['date']} |"
        )
    lines += ["", "Operators: " + "; ".join(f"`{k}` {v}" for k, v in OPERATORS.items()) + ".", ""]
    for module in order:
        entry = store[module]
        alive = ("survived", "no-coverage", "error")
        survivors = [m for m in entry["mutants"]
                     if m["status"] in alive and m["uid"] not in equivalents]
        equiv = [m for m in entry["mutants"] if m["status"] in alive and m["uid"] in equivalents]
        lines += [f"## {module} (`{entry['path']}`)", ""]
        if entry.get("command"):
            lines += [f"Measured by `{entry['command']}`.", ""]
        before = entry.get("before")
        if before:
            now = _summary(entry, equivalents)
            lines += [
                f"Kill rate before/after: {100 * before['rate']:.1f}% → {100 * now['rate']:.1f}% "
                f"(before: {before['mutants']} mutants, {before['survived']} survived, "
                f"{before['equivalent']} equivalent, at {before['commit']}, {before['date']}, "
                f"by `{before['command']}`).",
                "",
            ]
        lines.append(f"Test files: {', '.join(f'`{f}`' for f in entry['test_files'])}; "
                     f"{entry['baseline_tests']} passing tests in the baseline"
                     + (f", failing (left out): {entry['baseline_failing']}"
                        if entry["baseline_failing"] else "") + ".")
        lines.append("")
        if survivors:
            lines += [f"Survivors ({len(survivors)}):", "",
                      "| line | operator | original → mutated | id | note |",
                      "|---|---|---|---|---|"]
            for m in survivors:
                tag = {"no-coverage": " (*no test*)", "error": " (*error: tests not run*)"}.get(
                    m["status"], "")
                lines.append(
                    f"| {m['line']}{tag} | {m['operator']} | `{_md(m['original'])}` → "
                    f"`{_md(m['replacement'])}` | `{_pipe(m['uid'])}` | "
                    f"{notes.get(m['uid'], '')} |"
                )
        else:
            lines.append("No survivors.")
        lines.append("")
        if equiv:
            lines += [f"Equivalent mutants ({len(equiv)}):", "",
                      "| line | original → mutated | reason |", "|---|---|---|"]
            for m in equiv:
                lines.append(f"| {m['line']} | `{_md(m['original'])}` → "
                             f"`{_md(m['replacement'])}` | {equivalents[m['uid']]} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _pipe(text: str) -> str:
    return text.replace("|", "\\|")


def _md(text: str) -> str:
    return _short(text, 80).replace("|", "\\|").replace("`", "'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="module to mutate (repeatable; default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sample", type=int, default=None,
                        help="run a seeded random sample of N mutants per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-mutants", type=int, default=None,
                        help="run only the first N mutants per module (source order)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the report from the stored JSON (e.g. after editing "
                             "the equivalents file)")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="re-run only the mutants that survived the stored run of each module "
                             "(full, or sampled: then the same sample; its code must be "
                             "unchanged; its kills are kept)")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    parser.add_argument("--out", type=Path, default=MD_OUT)
    args = parser.parse_args(argv)
    modules = args.module or list(MODULES)
    if args.list:
        for module in modules:
            path, _ = MODULES[module]
            for m in generate_mutants((ROOT / path).read_text(), path):
                print(f"{path}:{m.line}:{m.col} {m.operator}: {_short(m.original)} -> "
                      f"{_short(m.replacement)}")
        return 0
    if args.report:
        stored: dict[str, Any] = json.loads(args.json.read_text())
        last = max(stored.values(), key=lambda e: str(e["date"]))
        args.out.write_text(render_report(stored, load_equivalents(), last.get("command", ""),
                                          load_survivor_notes()))
        return 0
    os.chdir(ROOT)
    os.environ["HYPOTHESIS_PROFILE"] = "mutation"
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # The fork server's warm imports: every child starts with these loaded.
    importlib.import_module("_hypothesis_pytestplugin")
    import cvxpy  # noqa: F401
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.linalg
    import scipy.optimize  # noqa: F401
    import torch  # noqa: F401

    command = "python tools/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for module in modules:
        previous = None
        if args.retest_survivors:
            stored_runs: dict[str, Any] = (
                json.loads(args.json.read_text()) if args.json.exists() else {}
            )
            previous = stored_runs.get(module)
            if previous is None:
                raise SystemExit(f"{module}: no stored run in {args.json} to retest")
        entry = measure_module(module, args.jobs, args.sample, args.seed, args.max_mutants,
                               previous)
        # Read-modify-write: another run may have updated other modules meanwhile.
        store: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
        entry["command"] = command.strip()
        equivalents = load_equivalents()  # re-read: it may have been edited during the run
        if module in store:
            entry["before"] = _before(store[module], equivalents)
        store[module] = entry
        s = _summary(entry, equivalents)
        print(f"{module}: kill rate {100 * s['rate']:.1f}% ({s}), {entry['wall_s']:.0f} s",
              flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(store, indent=1, ensure_ascii=False) + "\n")
        args.out.write_text(render_report(store, equivalents, command.strip(),
                                          load_survivor_notes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
