"""docs/math.md, the project's mathematical document, agrees with the code that cites it.

Checks (each fails with the offending tag, reference or line named):

(a) every equation tag S<n> cited in ``namex_ref/``, ``tests/``, ``proofs/``, ``notebooks/`` or
    the README has a section ``### S<n> — <title>`` in docs/math.md (ranges such as "S13–S16"
    cite every tag in between);
(b) every section of the document is cited somewhere in ``namex_ref/``, ``tests/`` or
    ``proofs/`` (this file does not count);
(c) every code reference in the document resolves: ``namex_ref/<path>.py:<name>`` and
    ``tests/<path>.py::<name>`` name a module-level function, class or constant (or
    ``Class.member``) that exists in that file, and the named constants of the tolerance table
    have the value the document quotes;
(d) every proof script, and every other repository file, the document refers to exists; every
    in-page link points at a heading; and the README links to the document.

Tags are matched as whole words: ``S`` followed by 1–3 digits and optionally one sub-label
letter a–c (``S9a`` cites S9), so words such as ``S1x`` or ``GPUS2`` never count.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "math.md"
THIS = Path(__file__).resolve()

TAG = re.compile(r"(?<!\w)S(\d{1,3})[a-c]?(?!\w)")
TAG_RANGE = re.compile(r"(?<!\w)S(\d{1,3})\s*[–-]\s*S(\d{1,3})(?!\w)")
SECTION = re.compile(r"^### S(\d+) — \S.*$", re.MULTILINE)
CODE_REF = re.compile(r"`(namex_ref/[\w/]+\.py):([A-Za-z_][\w.]*)`")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::([A-Za-z_][\w:]*)`")
PROOF_REF = re.compile(r"proofs/[\w]+\.py")
PATH_REF = re.compile(r"`((?:namex_ref|tests|proofs|notebooks|results|docs|studies)/[\w./-]+)`")
CONSTANT_ROW = re.compile(
    r"^\|\s*`(namex_ref/[\w/]+\.py):([A-Z][A-Z0-9_]*)`\s*\|\s*([^|]+?)\s*\|", re.MULTILINE
)
LINK_ANCHOR = re.compile(r"\]\(#([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.MULTILINE)


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _sections(text: str) -> list[int]:
    return [int(m.group(1)) for m in SECTION.finditer(text)]


# The README and the documentation pages that left it (user guide, implementation notes,
# development) cite tags and sections like the code does.
USER_DOCS = ("README.md", "docs/guide.md", "docs/implementation.md", "docs/development.md")


def _citing_files(dirs: tuple[str, ...], extra: tuple[str, ...] = ()) -> Iterator[Path]:
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            if p.resolve() != THIS:
                yield p
    for name in extra:
        yield ROOT / name


def cited_tags(text: str) -> set[int]:
    """Tags cited in ``text``: single tags plus every tag inside a range like S13–S16."""
    tags = {int(m.group(1)) for m in TAG.finditer(text)}
    for m in TAG_RANGE.finditer(text):
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= hi:
            tags.update(range(lo, hi + 1))
    return tags


def _citations(dirs: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict[int, list[str]]:
    where: dict[int, list[str]] = {}
    for p in _citing_files(dirs, extra):
        for t in cited_tags(p.read_text(encoding="utf-8")):
            where.setdefault(t, []).append(str(p.relative_to(ROOT)))
    return where


def _module_names(path: Path) -> dict[str, ast.AST]:
    """Module-level functions, classes and assigned names of a Python file."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def resolves(path: Path, dotted: str) -> bool:
    """``name`` or ``Class.member`` (``::`` accepted as separator) is defined in ``path``."""
    if not path.is_file():
        return False
    parts = dotted.replace("::", ".").split(".")
    node = _module_names(path).get(parts[0])
    for part in parts[1:]:
        if not isinstance(node, ast.ClassDef):
            return False
        members: dict[str, ast.AST] = {}
        for child in node.body:
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                members[child.name] = child
            elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
                members[child.target.id] = child
            elif isinstance(child, ast.Assign):
                members.update({t.id: child for t in child.targets if isinstance(t, ast.Name)})
        node = members.get(part)
    return node is not None


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -")
    return text.replace(" ", "-")


# ------------------------------------------------------------------------------------------
# (a), (b): tags and sections
# ------------------------------------------------------------------------------------------


def test_tag_pattern_is_whole_word() -> None:
    """The matcher itself: sub-labels and ranges count, longer words do not."""
    assert cited_tags("S4, (S9a) and S13–S16; S1…S19") == {1, 4, 9, 13, 14, 15, 16, 19}
    assert cited_tags("S1x GPUS2 S19b9 MS3 S_4 xS5") == set()


def test_sections_unique_and_in_order() -> None:
    """One section per tag, in increasing order (the document reads top to bottom)."""
    secs = _sections(_doc())
    assert secs, "docs/math.md has no '### S<n> — <title>' sections"
    assert secs == sorted(set(secs)), f"duplicate or out-of-order sections: {secs}"


def test_every_cited_tag_has_a_section() -> None:
    """(a) Every tag cited in the code, tests, proofs, notebooks or README has a section."""
    secs = set(_sections(_doc()))
    where = _citations(("namex_ref", "tests", "proofs", "notebooks"), USER_DOCS)
    missing = {f"S{t}": files[:3] for t, files in sorted(where.items()) if t not in secs}
    assert not missing, f"tags cited but without a section in docs/math.md: {missing}"


def test_every_section_is_cited() -> None:
    """(b) Every section is cited in namex_ref/, tests/ or proofs/ (outside this file)."""
    where = _citations(("namex_ref", "tests", "proofs"))
    orphans = [f"S{t}" for t in _sections(_doc()) if t not in where]
    assert not orphans, f"sections of docs/math.md cited nowhere in the code: {orphans}"


# ------------------------------------------------------------------------------------------
# (c): code references and constants
# ------------------------------------------------------------------------------------------


def test_code_references_resolve() -> None:
    """(c) Every `namex_ref/<file>.py:<name>` in the document names something in that file."""
    refs = sorted(set(CODE_REF.findall(_doc())))
    assert len(refs) > 50, f"expected many code references, found {len(refs)}"
    bad = [f"{p}:{n}" for p, n in refs if not resolves(ROOT / p, n)]
    assert not bad, f"code references in docs/math.md that do not exist: {bad}"


def test_test_references_resolve() -> None:
    """(c) Every `tests/<file>.py::<test>` in the document names a test that exists."""
    refs = sorted(set(TEST_REF.findall(_doc())))
    assert len(refs) > 50, f"expected many test references, found {len(refs)}"
    bad = [f"{p}::{n}" for p, n in refs if not resolves(ROOT / p, n)]
    assert not bad, f"test references in docs/math.md that do not exist: {bad}"


def test_every_section_names_code_proof_tests_and_tolerance() -> None:
    """Each tag's section has the four parts the document promises (proof may be 'None')."""
    text = _doc()
    starts = [m.start() for m in SECTION.finditer(text)] + [len(text)]
    for tag, a, b in zip(_sections(text), starts, starts[1:], strict=False):
        body = text[a:b].split("\n## ")[0]  # stop at the next part
        for part in ("**Statement.**", "**Source.**", "**Implemented in.**", "**Proof.**",
                     "**Tests.**", "**Tolerance.**"):
            assert part in body, f"S{tag}: section lacks {part}"
        assert TEST_REF.search(body), f"S{tag}: no test named"


def test_constants_table_matches_the_code() -> None:
    """(c) The named constants quoted in §7 exist and have the quoted value."""
    rows = CONSTANT_ROW.findall(_doc())
    assert len(rows) >= 10, f"expected the constants table, found {len(rows)} rows"
    wrong = []
    for path, name, quoted in rows:
        module = importlib.import_module(path[: -len(".py")].replace("/", "."))
        actual = getattr(module, name, None)
        if actual is None or float(actual) != float(quoted):
            wrong.append(f"{path}:{name} quoted {quoted}, code has {actual!r}")
    assert not wrong, wrong


# ------------------------------------------------------------------------------------------
# (d): proofs, files, links
# ------------------------------------------------------------------------------------------


def test_proof_scripts_exist() -> None:
    """(d) Every proof script the document names exists, and every proof is named."""
    text = _doc()
    named = set(PROOF_REF.findall(text))
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"proof scripts named in docs/math.md that do not exist: {missing}"
    on_disk = {f"proofs/{p.name}" for p in (ROOT / "proofs").glob("s*.py")}
    assert on_disk - named == set(), f"proofs not described in docs/math.md: {on_disk - named}"


def test_file_references_exist() -> None:
    """(d) Every repository path quoted in the document (`dir/…`) exists."""
    paths = {p.split(":")[0] for p in PATH_REF.findall(_doc())}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"paths quoted in docs/math.md that do not exist: {missing}"


def test_in_page_links_resolve() -> None:
    """(d) Every [text](#anchor) link points at a heading of the document."""
    text = _doc()
    slugs = {github_slug(m.group(2)) for m in HEADING.finditer(text)}
    bad = sorted(a for a in LINK_ANCHOR.findall(text) if a not in slugs)
    assert not bad, f"links to missing headings: {bad}"


def test_part_references_resolve() -> None:
    """(d) Every "docs/math.md §n" cited in the code, tests, proofs or README names a part
    ``## §n — <title>`` of the document."""
    parts = {int(n) for n in re.findall(r"^## §(\d+) — ", _doc(), re.MULTILINE)}
    bad = []
    for p in _citing_files(("namex_ref", "tests", "proofs"), USER_DOCS):
        text = " ".join(p.read_text(encoding="utf-8").split())  # references may wrap lines
        for n in re.findall(r"docs/math\.md §(\d+)", text):
            if int(n) not in parts:
                bad.append(f"{p.relative_to(ROOT)}: §{n}")
    assert not bad, f"references to parts docs/math.md does not have: {bad}"


def test_no_citation_of_a_missing_spec() -> None:
    """(d) SPEC.md is not part of the repository: code, tests and proofs cite docs/math.md."""
    bad = [
        str(p.relative_to(ROOT))
        for p in _citing_files(("namex_ref", "tests", "proofs"))
        if re.search(r"\bSPEC\b", p.read_text(encoding="utf-8"))
    ]
    assert not bad, f"files citing SPEC instead of docs/math.md: {bad}"


def test_readme_links_the_document() -> None:
    """(d) The README points readers to docs/math.md, not to a SPEC.md the repo lacks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/math.md)" in text, "README has no link to docs/math.md"
    assert "SPEC.md" not in text, "README refers to SPEC.md, which is not in the repository"


#: The upstream files the "Differences from the CAMEx code" table may cite (kpup1710/CAMEx at
#: 11ba81d, under transformers/models/), with their line counts at that commit, so a cited
#: line number that cannot exist is caught without network access.
CAMEX_FILES = {"curve_layer_high_rank.py": 451, "layers.py": 390, "curve_layers_2.py": 211}
UPSTREAM_REF = re.compile(r"`([\w]+\.py)?:(\d+)`")


def _differences_rows() -> list[list[str]]:
    text = _doc()
    head = "### Differences from the CAMEx code"
    assert head in text, f"docs/math.md lacks the section {head!r}"
    body = text.split(head, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert "11ba81d" in body, "the table must name the upstream commit"
    lines = [ln for ln in body.splitlines() if ln.startswith("| `")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_camex_differences_table_rows_are_complete() -> None:
    """(c) Every row of §6's "Differences from the CAMEx code" table has an upstream
    ``file:line`` (a file of CAMEX_FILES, every line within it; a bare ``:line`` continues the
    row's last file), upstream's behaviour, a namex-ref code reference that resolves, and a
    reason; the DARE, segment-0, balance-loss, double-noise and Dropout2d rows are present."""
    rows = _differences_rows()
    assert len(rows) >= 7, f"expected the 7 differences of issue 27, found {len(rows)} rows"
    for upstream, behaviour, ours, reason in rows:
        refs = UPSTREAM_REF.findall(upstream)
        assert refs and refs[0][0], f"row without an upstream file:line: {upstream}"
        current = None
        for name, n in refs:
            current = name or current
            line = int(n)
            assert current in CAMEX_FILES, f"unknown upstream file in {upstream!r}"
            assert 1 <= line <= CAMEX_FILES[current], f"{current}:{line} out of range"
        code = CODE_REF.findall(ours)
        assert code, f"row without a namex-ref reference: {ours}"
        assert all(resolves(ROOT / p, n) for p, n in code), ours
        assert len(behaviour) > 20 and len(reason) > 20, (behaviour, reason)
    joined = " ".join(" ".join(r) for r in rows)
    for needle in ("mask_type='dare'", "Conv1D_MEO", "ties_merging = True", "segment 0",
                   "balance loss", "twice", "Dropout2d"):
        assert needle in joined, f"no row on {needle!r}"
