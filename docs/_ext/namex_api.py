"""Sphinx extension of the namex-ref site: the generated API reference and its gates.

1. **The public names are found by walking the package**, never listed by hand:
   :func:`public_api` imports every module under ``namex_ref`` (private ones, a component
   starting with ``_``, skipped) and reads its ``__all__``. A module or name added later is in
   the reference at the next build without any edit here.
2. **One entry per object.** A name exported by several modules (``solve_nash`` is in
   ``namex_ref``, ``namex_ref.nash`` and ``namex_ref.nash.solvers``) is documented once, in the
   module that defines it, and every other module's page lists it with a link to that entry.
3. **Every public name must have a docstring.** Classes and functions need their own
   ``__doc__`` (an inherited one, or the signature dataclasses write, does not count); constants
   need an autodoc comment (``#:`` above the assignment, or a string literal after it).
   A name without one is reported as a warning, so ``make docs`` (``-W``) fails, naming it.
   ``LEGACY_UNDOCUMENTED_CONSTANTS`` lists the constants that predate this check; delete an
   entry when the constant gets its ``#:`` comment; never add one.
4. **Any docstring renders without warnings.** Docstrings are plain text with Unicode
   mathematics, Google-style sections and some reST. After napoleon has converted the Google
   sections, the result is parsed once on its own; if docutils reports anything (unbalanced
   ``*`` or backquotes, a ``name_`` read as a link, a bad indentation, a section title ...), the
   original docstring is shown verbatim as a preformatted block instead, so no docstring can
   break the build or render garbled. :func:`needs_verbatim` is that test.
5. **Figures next to the results tables.** ``results/<name>.md`` is shown with
   ``results/<name>.png`` appended when that file exists (the benchmark reports do not embed
   their plots; they are regenerated, so they are not edited).
6. **Links to repository files** that are not pages of the site (``proofs/*.py``, ``studies/``,
   ``results/*.json`` ...) are resolved to a copy of the file under ``_repo/`` in the built site;
   a link to a file that does not exist stays a broken cross-reference (a warning).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import pkgutil
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docutils import frontend, nodes, utils
from docutils.parsers.rst import Directive, Parser, directives, roles
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGE = "namex_ref"
ROOT = Path(__file__).resolve().parents[2]
API_DIR = ROOT / "docs" / "api"

# Constants exported before docstrings were enforced and still without a ``#:`` comment. Remove
# an entry when its constant is documented; a name not listed here must be documented.
LEGACY_UNDOCUMENTED_CONSTANTS = frozenset(
    {
        "namex_ref.MERGE_METHODS",
        "namex_ref.benchmarks.cli.TARGETS",
        "namex_ref.benchmarks.scaling.AXES",
        "namex_ref.benchmarks.solvers.BATCHES",
        "namex_ref.benchmarks.solvers.NS",
        "namex_ref.benchmarks.solvers.VARIANTS",
        "namex_ref.benchmarks.step.CUDA_SHAPES",
        "namex_ref.data.corpus.BUILTIN_CORPUS_LICENSE",
        "namex_ref.data.corpus.BUILTIN_CORPUS_SOURCE",
        "namex_ref.merging.config.METHODS",
        "namex_ref.merging.config.METHOD_TABLE",
        "namex_ref.merging.config.MethodName",
        "namex_ref.merging.config.SingularPolicy",
        "namex_ref.models.gpt.PRESETS",
        "namex_ref.momentum.MomentumKind",
        "namex_ref.momentum.QuaternionBeta",
        "namex_ref.nash.gram.Granularity",
        "namex_ref.nash.problem.ROUNDING_CAP",
        "namex_ref.nash.solvers.SOLVERS",
        "namex_ref.nash.solvers.SolverName",
        "namex_ref.train.metrics.EVAL_FIELDS",
        "namex_ref.train.metrics.LOG_FIELDS",
    }
)


# --------------------------------------------------------------------------------------------
# Walking the package


@dataclass
class PublicName:
    """One entry of a module's ``__all__``."""

    module: str  # the module whose __all__ lists it
    name: str
    obj: Any
    kind: str  # "class" | "function" | "data"
    canonical: str = ""  # "module.name" of the one documented entry

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class ModuleAPI:
    """A public module: its docstring and its ``__all__`` in order (None: no ``__all__``)."""

    name: str
    is_package: bool
    names: list[PublicName] | None = field(default_factory=list)


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return "function"
    return "data"


def _module_names(package: str = PACKAGE) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def _assigned_names(module: Any) -> set[str]:
    """Names bound at module level by an assignment, a def or a class in the module's source."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return set()
    out: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif hasattr(ast, "TypeAlias") and isinstance(node, ast.TypeAlias):
            targets = [node.name]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    out.add(n.id)
    return out


def public_api(package: str = PACKAGE) -> list[ModuleAPI]:
    """Every public module of ``package`` with its ``__all__``; each name's ``canonical`` entry.

    The canonical entry of a name is the module that defines it (a class's or function's
    ``__module__``; for a constant, the module that assigns it) among those listing it in
    ``__all__``; failing that, the most deeply nested module that lists it.
    """
    modules: list[ModuleAPI] = []
    defined: dict[str, set[str]] = {}
    for mod_name in _module_names(package):
        mod = importlib.import_module(mod_name)
        api = ModuleAPI(mod_name, hasattr(mod, "__path__"))
        exported = getattr(mod, "__all__", None)
        if exported is None:
            api.names = None
        else:
            assert api.names is not None
            for name in exported:
                if not hasattr(mod, name):
                    raise AttributeError(f"{mod_name}.__all__ lists {name!r}, which it lacks")
                obj = getattr(mod, name)
                api.names.append(PublicName(mod_name, name, obj, _kind(obj)))
            defined[mod_name] = _assigned_names(mod)
        modules.append(api)

    listing: dict[tuple[str, int], list[PublicName]] = {}
    for api in modules:
        for pn in api.names or []:
            listing.setdefault((pn.name, id(pn.obj)), []).append(pn)
    for entries in listing.values():
        mods = [pn.module for pn in entries]
        home = None
        if entries[0].kind in ("class", "function"):
            own = getattr(entries[0].obj, "__module__", None)
            if own in mods:
                home = own
        if home is None:
            assigning = [m for m in mods if entries[0].name in defined.get(m, set())]
            if assigning:
                home = max(assigning, key=lambda m: (m.count("."), m))
        if home is None:
            home = max(mods, key=lambda m: (m.count("."), m))
        for pn in entries:
            pn.canonical = f"{home}.{pn.name}"
    return modules


def own_docstring(pn: PublicName) -> str | None:
    """The docstring that documents ``pn`` at its canonical entry, or None if it has none."""
    obj = pn.obj
    if pn.kind == "class":
        doc = obj.__dict__.get("__doc__")
        if not isinstance(doc, str) or not doc.strip():
            return None
        auto = obj.__name__ + "("  # dataclasses write "Name(field: type, ...)" when undocumented
        if doc.startswith(auto) and doc.rstrip().endswith(")"):
            return None
        return doc
    if pn.kind == "function":
        doc = getattr(obj, "__doc__", None)
        return doc if isinstance(doc, str) and doc.strip() else None
    module, _, name = pn.canonical.rpartition(".")
    try:
        analyzer = ModuleAnalyzer.for_module(module)
        analyzer.analyze()
    except Exception:
        return None
    lines = analyzer.attr_docs.get(("", name))
    text = "\n".join(lines or []).strip()
    return text or None


def undocumented(modules: list[ModuleAPI]) -> list[str]:
    """Canonical names without a docstring (constants in LEGACY_UNDOCUMENTED_CONSTANTS aside)."""
    seen: set[str] = set()
    missing: list[str] = []
    for api in modules:
        for pn in api.names or []:
            if pn.canonical in seen:
                continue
            seen.add(pn.canonical)
            home = next(
                (q for a in modules for q in a.names or [] if q.qualname == pn.canonical), pn
            )
            if own_docstring(home) is None and not (
                home.kind == "data" and home.canonical in LEGACY_UNDOCUMENTED_CONSTANTS
            ):
                missing.append(pn.canonical)
    return sorted(missing)


# --------------------------------------------------------------------------------------------
# Writing the pages


def _escape(text: str) -> str:
    """Inline reST that shows ``text`` as written: ````literal```` spans stay literals, every
    markup character elsewhere is backslash-escaped."""
    special = set("\\`*_|[]<>:")
    parts = re.split(r"(``[^`]+``)", text)
    return "".join(
        part if part.startswith("``") and part.endswith("``") and len(part) > 4
        else "".join("\\" + c if c in special else c for c in part)
        for part in parts
    )


def _summary(pn: PublicName, modules: list[ModuleAPI]) -> str:
    home = next((q for a in modules for q in a.names or [] if q.qualname == pn.canonical), pn)
    doc = own_docstring(home) or ""
    first = inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ").strip()
    return _escape(first[:200] + ("…" if len(first) > 200 else ""))


def _title(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _directive(pn: PublicName) -> list[str]:
    target = pn.canonical
    if pn.kind == "class":
        return [f".. autoclass:: {target}", "   :members:", "   :show-inheritance:", ""]
    if pn.kind == "function":
        return [f".. autofunction:: {target}", ""]
    value = repr(pn.obj)
    opts = ["   :no-value:"] if len(value) > 300 else []
    return [f".. autodata:: {target}", *opts, ""]


def module_page(api: ModuleAPI, modules: list[ModuleAPI]) -> str:
    lines = _title(f"``{api.name}``", "=")
    lines += [f".. automodule:: {api.name}", "   :no-members:", ""]
    names = api.names or []
    own = [pn for pn in names if pn.canonical == pn.qualname]
    reexported = [pn for pn in names if pn.canonical != pn.qualname]
    if reexported:
        lines += _title("Re-exported names", "-")
        lines += [
            "Documented where they are defined:",
            "",
            ".. list-table::",
            "   :widths: 35 65",
            "",
        ]
        for pn in reexported:
            lines += [
                f"   * - :py:obj:`{pn.name} <{pn.canonical}>`",
                f"     - {_summary(pn, modules) or ' '}",
            ]
        lines.append("")
    if own:
        if reexported:
            lines += _title("Defined here", "-")
        for pn in own:
            lines += _directive(pn)
    if not names:
        lines += ["This module exports no names.", ""]
    return "\n".join(lines).rstrip() + "\n"


def index_page(modules: list[ModuleAPI]) -> str:
    documented = [m for m in modules if m.names is not None]
    n_names = sum(len(m.names or []) for m in documented)
    n_entries = len({pn.canonical for m in documented for pn in m.names or []})
    lines = _title("API reference", "=")
    lines += [
        f"Generated from the docstrings and type hints of every public name: {n_names} names in "
        f"the ``__all__`` of {len(documented)} modules, {n_entries} distinct objects. Each object "
        "is documented once, in the module that defines it; the other modules that export it "
        "link there. Docstrings are written in plain text with Unicode mathematics; the tags "
        "S1…S19 refer to :doc:`the mathematics </docs/math>`.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    lines += [f"   {m.name}" for m in documented]
    without = [m.name for m in modules if m.names is None]
    if without:
        lines += ["", "Modules without ``__all__`` (no public names of their own): "
                  + ", ".join(f"``{m}``" for m in without) + "."]
    return "\n".join(lines).rstrip() + "\n"


def write_pages(modules: list[ModuleAPI], out: Path = API_DIR) -> list[Path]:
    """Write ``index.rst`` and one page per module with ``__all__``; remove stale pages."""
    out.mkdir(parents=True, exist_ok=True)
    pages = {"index.rst": index_page(modules)}
    for api in modules:
        if api.names is not None:
            pages[f"{api.name}.rst"] = module_page(api, modules)
    written = []
    for name, text in pages.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")  # unchanged pages keep their mtime
        written.append(path)
    for stale in out.glob("*.rst"):
        if stale.name not in pages:
            stale.unlink()
    return written


# --------------------------------------------------------------------------------------------
# Docstrings that render whatever they contain

_BAD_NODES = (
    nodes.section,
    nodes.title,
    nodes.transition,
    nodes.target,
    nodes.footnote,
    nodes.footnote_reference,
    nodes.citation,
    nodes.citation_reference,
    nodes.substitution_definition,
    nodes.substitution_reference,
    nodes.problematic,
)


class _AnyOptions(dict[str, Any]):
    """An option spec that accepts every option (the sandbox checks syntax, not options)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        return directives.unchanged


class _Generic(Directive):
    """Stands in for every known directive in the sandbox: parses its content, registers
    nothing (a real ``.. attribute::`` would enter the object inventory)."""

    has_content = True
    optional_arguments = 100
    final_argument_whitespace = True
    option_spec = _AnyOptions()

    def run(self) -> list[nodes.Node]:
        node = nodes.container()
        if self.content:
            self.state.nested_parse(self.content, self.content_offset, node)
        return [node]


def _generic_role(
    name: str, rawtext: str, text: str, lineno: int, inliner: Any,
    options: Any = None, content: Any = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    return [nodes.literal(rawtext, text)], []


@contextmanager
def _sandboxed_lookups() -> Iterator[None]:
    """Known directives and roles (Sphinx's included) resolve to inert stand-ins, unknown
    ones stay unknown (an error, so the docstring is shown verbatim)."""
    orig_directive, orig_role = directives.directive, roles.role

    def directive(name: str, language: Any, document: Any) -> tuple[Any, list[Any]]:
        found, messages = orig_directive(name, language, document)
        return (_Generic if found is not None else None), messages

    def role(name: str, language: Any, lineno: int, reporter: Any) -> tuple[Any, list[Any]]:
        found, messages = orig_role(name, language, lineno, reporter)
        return (_generic_role if found is not None else None), messages

    directives.directive, roles.role = directive, role  # type: ignore[assignment]
    try:
        yield
    finally:
        directives.directive, roles.role = orig_directive, orig_role  # type: ignore[assignment]


def needs_verbatim(rst: str) -> bool:
    """Whether ``rst`` would warn or render wrongly as reST inside an API entry."""
    return verbatim_reason(rst) is not None


def verbatim_reason(rst: str) -> str | None:
    """Why ``rst`` would warn or render wrongly as reST inside an API entry (None: it is fine).

    Parsed on its own with docutils (known directives and roles replaced by inert stand-ins):
    any message of level ≥ 2 (warning), an exception, or a node that cannot stand inside an
    entry or could collide across entries (section titles, transitions, hyperlink targets and
    named references such as ``x_i_``, footnotes, citations, substitutions) means yes.
    """
    settings = frontend.get_default_settings(Parser)
    settings.report_level = 5
    settings.halt_level = 5
    settings.warning_stream = io.StringIO()
    doc = utils.new_document("<docstring>", settings)
    try:
        with _sandboxed_lookups():
            Parser().parse(rst, doc)
    except Exception as exc:
        return f"parser error {exc!r}"
    for node in doc.findall(nodes.Element):
        if isinstance(node, nodes.system_message) and node["level"] >= 2:
            return f"line {node.get('line')}: {node.astext().splitlines()[0]}"
        if isinstance(node, _BAD_NODES):
            return f"{type(node).__name__} {node.astext()[:40]!r}"
        if isinstance(node, nodes.reference) and "refname" in node:
            return f"named reference {node.astext()[:40]!r}"
    return None


_ORIGINAL = "namex_api_original_docstring"


def _remember(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    app.env.temp_data.setdefault(_ORIGINAL, {})[(what, name)] = list(lines)


def _render_safely(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    original = app.env.temp_data.get(_ORIGINAL, {}).pop((what, name), list(lines))
    if what in ("data", "attribute") and original and _is_type_doc(obj, original):
        lines[:] = []  # autodoc fell back to the value's type's docstring: not ours
        return
    if what in ("data", "attribute"):
        # napoleon reads "text: more" in the first line of a constant's comment as
        # "type: description"; a constant's comment is prose, so keep it as written.
        lines[:] = list(original)
    if not any(line.strip() for line in lines):
        return
    counts = app.namex_docstrings  # type: ignore[attr-defined]
    counts["rendered"] += 1
    reason = verbatim_reason("\n".join(lines))
    if reason is not None:
        counts["verbatim"] += 1
        logger.info("namex_api: docstring of %s %s shown verbatim (%s)", what, name, reason)
        while original and not original[-1].strip():
            original.pop()
        lines[:] = ["::", ""] + ["   " + line for line in original] + [""]


def _is_type_doc(obj: Any, lines: list[str]) -> bool:
    type_doc = inspect.getdoc(type(obj)) or ""
    text = "\n".join(lines).strip()
    return bool(text) and (text == type_doc.strip() or text.startswith("Alias for field number"))


def _skip_member(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.startswith("Alias for field number"):
        return True  # NamedTuple fields: documented by the class's own docstring
    return None


# --------------------------------------------------------------------------------------------
# Results pages with their figures; links to repository files


def _append_results_figure(app: Sphinx, docname: str, source: list[str]) -> None:
    if not docname.startswith("results/"):
        return
    stem = docname.split("/", 1)[1]
    png = ROOT / "results" / f"{stem}.png"
    if png.exists():
        source[0] += f"\n\n## Figure\n\n![{stem}]({stem}.png)\n"


class RepositoryFileLinks(SphinxPostTransform):
    """A Markdown link to an existing repository file that is not a page of the site.

    MyST turns a link to ``proofs/s19_spectral.py`` into a reference to the document
    ``proofs/s19_spectral`` (``.py`` is a source suffix here, for the notebooks), which does
    not exist, and warns. If the file exists, link to a copy of it under ``_repo/`` instead;
    otherwise leave the reference alone, so MyST reports it as broken. A link to an existing
    folder (``[proofs/](proofs/)``, which GitHub lists) has nothing to point at in the site: its
    text stays, unlinked. Anything else that does not resolve is left to MyST's warning.
    """

    default_priority = 8  # before MyST's resolver (9)

    def run(self, **kwargs: Any) -> None:
        files: set[str] = self.app.namex_repo_files  # type: ignore[attr-defined]
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            if not node.get("refdomain"):
                target = str(node.get("reftarget", "")).split("#", 1)[0]
                base = (ROOT / self.env.docname).parent
                if target and "://" not in target and (base / target).resolve().is_dir():
                    node.replace_self(node[0].deepcopy() if len(node) else nodes.Text(target))
                continue
            if node.get("refdomain") != "doc":
                continue
            docname = str(node["reftarget"])
            if docname in self.env.all_docs:
                continue
            matches = [
                ROOT / (docname + suffix)
                for suffix in self.config.source_suffix
                if (ROOT / (docname + suffix)).is_file()
            ]
            if len(matches) != 1:
                continue
            rel = matches[0].relative_to(ROOT).as_posix()
            files.add(rel)
            depth = len(Path(self.env.docname).parts) - 1
            ref = nodes.reference("", "", internal=False, refuri="../" * depth + "_repo/" + rel)
            ref += node[0].deepcopy() if len(node) else nodes.literal(rel, rel)
            node.replace_self(ref)


def _copy_repo_files(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    counts = app.namex_docstrings  # type: ignore[attr-defined]
    logger.info(
        "namex_api: %d docstrings rendered, %d of them verbatim (not valid reST)",
        counts["rendered"], counts["verbatim"],
    )
    for rel in sorted(app.namex_repo_files):  # type: ignore[attr-defined]
        dest = Path(app.outdir) / "_repo" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    # The site's front page is docs/index.html (the sources live at the repository root, so
    # docs/math.md stays where it is); index.html at the top sends the browser there.
    root_doc = app.config.root_doc
    (Path(app.outdir) / "index.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0; url={root_doc}.html">'
        f'<title>namex-ref</title></head><body><a href="{root_doc}.html">namex-ref '
        "documentation</a></body></html>\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------------------------


def _generate(app: Sphinx) -> None:
    modules = public_api()
    pages = write_pages(modules)
    missing = undocumented(modules)
    for name in missing:
        logger.warning(
            "public name %s has no docstring: document it (a docstring for a class or "
            "function, a '#:' comment above a constant)",
            name,
            type="namex",
            subtype="nodoc",
        )
    n_names = sum(len(m.names or []) for m in modules)
    logger.info("namex_api: %d public names, %d API pages", n_names, len(pages))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _generate)
    app.connect("autodoc-process-docstring", _remember, priority=100)
    app.connect("autodoc-process-docstring", _render_safely, priority=900)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("source-read", _append_results_figure)
    app.namex_repo_files = set()  # type: ignore[attr-defined]
    app.namex_docstrings = {"rendered": 0, "verbatim": 0}  # type: ignore[attr-defined]
    app.add_post_transform(RepositoryFileLinks)
    app.connect("build-finished", _copy_repo_files)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
