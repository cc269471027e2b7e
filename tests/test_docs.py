"""The documentation site's gates, checked without building the site (that is ``make docs``).

``docs/_ext/namex_api.py`` walks ``namex_ref`` for every module's ``__all__`` and writes the API
pages; the build fails on a public name without a docstring. Here, quickly: every public name
has a docstring today; the walk finds a name without one in a package made up for the test;
the generated pages have an entry (or a link to the one entry) for every public name; and the
test that decides whether a docstring is shown verbatim catches the reST mistakes that would
otherwise warn. The full build (notebooks executed, ``-W``) is ``make docs``, a step of its own in
CI (``.ci/run``), so no test here builds the site a second time.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sphinx")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import namex_api  # noqa: E402  (the docs extension, imported from docs/_ext)


@pytest.fixture(scope="module")
def modules() -> list[namex_api.ModuleAPI]:
    return namex_api.public_api()


def test_every_public_name_has_a_docstring(modules: list[namex_api.ModuleAPI]) -> None:
    missing = namex_api.undocumented(modules)
    assert not missing, (
        f"public names without a docstring (a '#:' comment for a constant): {missing}"
    )


def test_legacy_list_only_names_undocumented_constants(
    modules: list[namex_api.ModuleAPI],
) -> None:
    # An entry whose constant got its comment must leave the list (it only ever shrinks).
    by_name = {pn.qualname: pn for m in modules for pn in m.names or []}
    documented = [
        q for q in namex_api.LEGACY_UNDOCUMENTED_CONSTANTS
        if q in by_name and namex_api.own_docstring(by_name[q]) is not None
    ]
    assert not documented, f"documented now: remove from the legacy list: {documented}"


def test_the_walk_finds_every_module_and_name(modules: list[namex_api.ModuleAPI]) -> None:
    import namex_ref

    names = {m.name for m in modules}
    assert {"namex_ref", "namex_ref.nash", "namex_ref.nash.solvers", "namex_ref.train"} <= names
    top = next(m for m in modules if m.name == "namex_ref")
    assert [pn.name for pn in top.names or []] == list(namex_ref.__all__)
    solve = next(pn for pn in top.names or [] if pn.name == "solve_nash")
    assert solve.canonical == "namex_ref.nash.solvers.solve_nash"


def test_pages_have_an_entry_for_every_public_name(
    modules: list[namex_api.ModuleAPI], tmp_path: Path
) -> None:
    namex_api.write_pages(modules, tmp_path)
    for m in modules:
        if m.names is None:
            continue
        page = (tmp_path / f"{m.name}.rst").read_text(encoding="utf-8")
        for pn in m.names:
            if pn.canonical == pn.qualname:
                assert f":: {pn.canonical}\n" in page, (m.name, pn.name)
            else:
                assert f":py:obj:`{pn.name} <{pn.canonical}>`" in page, (m.name, pn.name)
                home = pn.canonical.rpartition(".")[0]
                assert f":: {pn.canonical}\n" in (tmp_path / f"{home}.rst").read_text(
                    encoding="utf-8"
                ), (pn.qualname, home)
    index = (tmp_path / "index.rst").read_text(encoding="utf-8")
    assert all(f"   {m.name}\n" in index for m in modules if m.names is not None)


def test_a_name_without_docstring_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "fakepkg_docs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        """A package."""
        from fakepkg_docs.mod import Documented, bare, helper

        __all__ = ["Documented", "bare", "helper"]
    '''))
    (pkg / "mod.py").write_text(textwrap.dedent('''
        """A module."""
        from dataclasses import dataclass

        __all__ = ["Documented", "Plain", "bare", "helper", "LIMIT", "NOTED", "_x"]

        _x = 1

        #: A documented constant.
        NOTED = 2
        LIMIT = 3


        class Documented:
            """Has one."""


        @dataclass
        class Plain:
            value: int


        def bare():
            pass


        def helper():
            """Has one."""
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    mods = namex_api.public_api("fakepkg_docs")
    assert namex_api.undocumented(mods) == [
        "fakepkg_docs.mod.LIMIT",
        "fakepkg_docs.mod.Plain",
        "fakepkg_docs.mod._x",
        "fakepkg_docs.mod.bare",
    ]
    # Re-exports point at the defining module, once.
    top = next(m for m in mods if m.name == "fakepkg_docs")
    assert {pn.canonical for pn in top.names or []} == {
        "fakepkg_docs.mod.Documented", "fakepkg_docs.mod.bare", "fakepkg_docs.mod.helper"
    }


@pytest.mark.parametrize(
    ("text", "verbatim"),
    [
        ("Plain words with Unicode mathematics: Kα = 1/α, ‖τ_i‖ ≤ √N.", False),
        ("``code`` and *emphasis* and a list:\n\n- one\n- two\n", False),
        ("Args:\n    x: a value.\n", False),
        ("ρ(R) < 1 for |β| < 1.", True),  # |β| reads as a substitution
        ("G = 2 *b", True),  # unbalanced emphasis
        ("See x_i_ here.", True),  # a named hyperlink reference
        ("Title\n=====\n\nText.", True),  # a section inside an entry
        ("line one\n    indented continuation\nline three", True),  # unexpected indentation
        ("Uses ``open literal", True),
        (":unknownrole:`x`", True),
    ],
)
def test_needs_verbatim(text: str, verbatim: bool) -> None:
    assert namex_api.needs_verbatim(text) is verbatim, namex_api.verbatim_reason(text)

