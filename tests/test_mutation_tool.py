"""Unit tests of the mutation-testing tool (tools/mutation.py) on tiny sources.

The expected mutants are written out by hand from the operator table in the tool's docstring;
the end-to-end case runs a real forked mutant against a real test in a temporary directory.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("namex_mutation_tool", ROOT / "tools/mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

TINY = textwrap.dedent(
    '''
    """Module docstring 1 + 2 < 3."""

    __all__ = ["f"]


    def f(a: int, b: int = 2) -> int:
        """Docstring with numbers 3 and comparisons a < b."""
        if a < b and not a:
            raise ValueError(f"bad {a + 1}")
        return -a * b
    '''
)


def _triples(source: str) -> set[tuple[str, str, str]]:
    return {(m.operator, m.original, m.replacement)
            for m in tool.generate_mutants(source, "tiny.py")}


def test_tiny_source_gives_exactly_the_expected_mutants() -> None:
    expected = {
        ("const", "2", "3"),
        ("const", "2", "0"),
        ("branch", "a < b and (not a)", "True"),
        ("branch", "a < b and (not a)", "False"),
        ("bool", "a < b and (not a)", "a < b or not a"),
        ("compare", "a < b", "a <= b"),
        ("compare", "a < b", "a > b"),
        ("not", "not a", "a"),
        ("raise", "raise ValueError(f'bad {a + 1}')", "pass"),
        ("arith", "-a * b", "-a / b"),
        ("neg", "-a", "a"),
    }
    assert _triples(TINY) == expected


def test_docstrings_annotations_all_and_messages_are_not_mutated() -> None:
    for m in tool.generate_mutants(TINY, "tiny.py"):
        assert "Docstring" not in m.original and "docstring" not in m.original
        assert m.line not in (2, 4)  # module docstring, __all__
        assert m.original != "a + 1"  # inside the f-string message
        assert "int" not in m.original  # annotations


def test_every_mutant_compiles_and_changes_the_source() -> None:
    source = (ROOT / "namex_ref/quaternion.py").read_text()
    mutants = tool.generate_mutants(source, "namex_ref/quaternion.py")
    assert len(mutants) > 50
    original = ast.unparse(ast.parse(source))
    for m in mutants:
        text = tool.mutated_source(source, m)
        compile(text, "mutant.py", "exec")
        tool.mutated_code(source, m, "mutant.py")
        assert text != original


def test_ids_are_unique_and_stable_under_edits_elsewhere() -> None:
    ids = [m.uid for m in tool.generate_mutants(TINY, "tiny.py")]
    assert len(set(ids)) == len(ids)
    shifted = "import math\n\n\ndef g(x):\n    return x + 1\n" + TINY
    shifted_ids = {m.uid for m in tool.generate_mutants(shifted, "tiny.py")}
    assert set(ids) <= shifted_ids


def test_call_mutations() -> None:
    source = "import torch\n\n\ndef h(x):\n    check(x)\n    return torch.abs(x).clamp_min(1)\n"
    triples = _triples(source)
    assert ("call", "check(x)", "pass") in triples
    assert ("call", "torch.abs(x)", "x") in triples
    assert ("call", "torch.abs(x).clamp_min(1)", "torch.abs(x)") in triples
    assert not any(r == "x" and o == "check(x)" for _, o, r in triples)  # value is discarded


MODULE = textwrap.dedent(
    """
    Number = int | float


    def add(a, b):
        return a + b


    def ident(a):
        if a >= 0:
            return a
        return a


    def unused(a):
        return a * 3
    """
)
TEST = textwrap.dedent(
    """
    from tinymod_mt import add, ident


    def test_add():
        assert add(2, 3) == 5


    def test_ident():
        assert ident(4) == 4 and ident(-1) == -1
    """
)


def test_a_bad_mutant_is_killed_and_a_no_op_survives(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path.resolve()
    (root / "tinymod_mt.py").write_text(MODULE)
    (root / "test_tinymod_mt.py").write_text(TEST)
    monkeypatch.chdir(root)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    mutants = {(m.qualname, m.operator, m.original, m.replacement): m
               for m in tool.generate_mutants(MODULE, "tinymod_mt.py")}
    bad = mutants[("add", "arith", "a + b", "a - b")]
    no_op = mutants[("ident", "branch", "a >= 0", "True")]  # both branches return a
    uncovered = mutants[("unused", "arith", "a * 3", "a / 3")]
    # a TypeError when the module is imported:
    breaks_import = mutants[("<module>", "arith", "int | float", "int & float")]
    baseline = tool.run_baseline(["test_tinymod_mt.py"], ["tinymod_mt.py"], root=root)
    assert set(baseline.tests) == {"test_tinymod_mt.py::test_add",
                                   "test_tinymod_mt.py::test_ident"}
    assert tool.select_tests(bad, baseline) == ["test_tinymod_mt.py::test_add"]
    assert set(tool.select_tests(breaks_import, baseline)) == set(baseline.tests)  # import time
    outcomes = tool.run_mutants([bad, no_op, uncovered, breaks_import], MODULE, baseline, jobs=2,
                                root=root)
    assert outcomes[bad.uid].status == "killed"
    assert outcomes[breaks_import.uid].status == "killed"
    assert outcomes[no_op.uid].status == "survived"
    assert outcomes[uncovered.uid].status == "no-coverage"


def _entry(statuses: list[str], commit: str) -> dict[str, object]:
    """A stored module run with mutants of the given fates (uids m0, m1, …)."""
    return {
        "path": "tiny.py", "commit": commit, "date": "2026-01-01 00:00 UTC", "sample": None,
        "generated": len(statuses), "wall_s": 60.0, "test_files": ["t.py"], "baseline_tests": 1,
        "baseline_failing": [], "command": f"python tools/mutation.py # {commit}",
        "mutants": [{"uid": f"m{i}", "line": i, "operator": "const", "original": "1",
                     "replacement": "2", "status": s} for i, s in enumerate(statuses)],
    }


def test_report_shows_the_run_it_replaced_and_survivor_notes(tmp_path: Path) -> None:
    """A re-measured module keeps the replaced run's counts as ``before`` (rate with the
    equivalents of the moment), and the report prints both rates; ``[[survivor]]`` notes are
    read from the equivalents file and printed next to their survivor, which stays counted."""
    toml = tmp_path / "eq.toml"
    toml.write_text('[[equivalent]]\nid = "m3"\nreason = "same"\n\n'
                    '[[survivor]]\nid = "m2"\nnote = "needs CUDA"\n')
    equivalents = tool.load_equivalents(toml)
    notes = tool.load_survivor_notes(toml)
    assert equivalents == {"m3": "same"} and notes == {"m2": "needs CUDA"}
    old = _entry(["killed", "survived", "survived", "survived"], "aaa")
    before = tool._before(old, equivalents)
    # 1 killed of 4 mutants, 1 equivalent: 1/3
    assert before["survived"] == 2 and before["equivalent"] == 1
    assert before["rate"] == pytest.approx(1 / 3) and before["commit"] == "aaa"
    new = _entry(["killed", "killed", "survived", "survived"], "bbb")
    new["before"] = before
    module = next(iter(tool.MODULES))
    text = tool.render_report({module: new}, equivalents, "cmd", notes)
    assert "Kill rate before/after: 33.3% → 66.7%" in text
    assert "at aaa, 2026-01-01 00:00 UTC, by `python tools/mutation.py # aaa`" in text
    survivor_row = next(line for line in text.splitlines() if "`m2`" in line)
    assert survivor_row.endswith("| needs CUDA |")
    assert "Survivors (1)" in text  # m2 stays a survivor; m3 is listed as equivalent
