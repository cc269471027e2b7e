"""Sphinx configuration of the namex-ref documentation site (``make docs``).

The sources are the repository itself: ``make docs`` runs
``sphinx-build -c docs . docs/_build/html`` (source directory = the repository root, this
configuration in ``docs/``), and ``include_patterns`` below picks the pages. So the README,
``docs/math.md``, ``results/*.md`` and ``notebooks/*.py`` are read where they are, nothing is
copied, and their relative links resolve exactly as they do on GitHub.

- Notebooks: ``notebooks/*.py`` (jupytext percent format) are read by myst-nb through jupytext
  and executed on every build (a cell that raises fails the build).
- API reference: ``docs/_ext/namex_api.py`` walks ``namex_ref`` for every module's ``__all__``
  and writes ``docs/api/*.rst`` (generated, not committed); a public name without a docstring
  fails the build. See that module's docstring for the rules.
- Mathematics: ``$…$`` and ``$$…$$`` (MyST's dollarmath and amsmath) are typeset in the browser
  by MathJax 3, served from the site itself: ``sphinx-mathjax-offline`` (the ``docs`` extra)
  ships MathJax 3.2.2 with its fonts and copies it into ``_static/mathjax``, and
  ``mathjax_path`` points there. Nothing is fetched from a CDN, at build or at view time
  (``tools/docs_check.py`` checks that every script of the math page is local and that the
  equations were rendered). We chose it over ``sphinx.ext.imgmath``, which would need a LaTeX
  installation from Debian in CI and gives images that do not scale or copy as text.
- Notebook kernels: CurveZMQ-encrypted (see below), so the build output carries no
  "Kernel is running over TCP without encryption" warning.
- Layout: ``docs/_static/namex.css`` lets tables and notebook code fit the page (long code
  wraps, wide tables scroll inside their own box).
- The build runs with ``-W --keep-going``: any warning (a broken cross-reference or link, a
  missing docstring, a notebook error, a malformed page) fails it.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # document this checkout's namex_ref

# The notebook kernels inherit this environment. A non-inline MPLBACKEND (Agg, say) would
# swallow their figures; without it ipykernel uses its inline backend, which is headless.
os.environ.pop("MPLBACKEND", None)
# The notebook kernels talk to the build over CurveZMQ-encrypted TCP: ipykernel >= 7 logs
# "Kernel is running over TCP without encryption" into the build output for every unencrypted
# kernel. jupyter_client provisions the keys when the kernelspec declares "curve" support
# (ipykernel's does; pyzmq's wheels have libsodium) and falls back to plain TCP otherwise.
# myst-nb creates its kernel managers without a configuration, so the default is set here.
# (The IPC transport would need the kernel and the build in one working directory.)
from jupyter_client.manager import KernelManager  # noqa: E402

KernelManager.transport_encryption.default_value = "auto"  # type: ignore[attr-defined]
# nbclient logs "Executing notebook with kernel: python3" at INFO on the "traitlets" logger for
# every notebook; the build output keeps its warnings and errors only.
logging.getLogger("traitlets").setLevel(logging.WARNING)
# ... and import this checkout's namex_ref, like autodoc does.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

project = "namex-ref"
author = "namex-ref contributors"
copyright = "namex-ref contributors (MIT licence)"
try:
    release = _installed_version("namex-ref")
except PackageNotFoundError:  # pragma: no cover - building from a checkout not installed
    release = "0.1.0"

extensions = [
    "myst_nb",  # Markdown (MyST) pages and executed notebooks; includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # sets mathjax_path to the copy it ships (_static/mathjax)
    "namex_api",
]

root_doc = "docs/index"
include_patterns = [
    "README.md",
    "docs/*.md",
    "docs/api/*.rst",
    "results/*.md",
    "notebooks/*.py",
]
exclude_patterns = [
    ".*",
    "docs/_build",
    "docs/_ext",
    "build",
    "runs",
    "namex_ref",
    "tests",
    "proofs",
    "studies",
    "tools",
    "*.egg-info",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "force"  # execute every notebook on every (re)read
nb_execution_raise_on_error = False  # a failing cell is a warning (with its traceback): -W fails
nb_execution_timeout = 600
nb_execution_show_tb = True

myst_heading_anchors = 3  # GitHub-style anchors: docs/math.md links to "#s9--invariances"
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as :ivar: fields, not ".. attribute::" entries that would collide with
# the same attribute documented as a member (a duplicate-object warning).
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"namex-ref {release}"
html_static_path = ["_static"]  # docs/_static (relative to this configuration directory)
html_css_files = ["namex.css"]
html_show_sourcelink = False
html_copy_source = False

# A Markdown page whose headings skip a level (# then ###) is a matter of style, not a defect
# of the site; every other warning fails the build.
suppress_warnings = ["myst.header"]
