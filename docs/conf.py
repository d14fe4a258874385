"""Sphinx configuration of the rhn_np documentation site.

Build (from the repository root)::

    pip install -e ".[docs]"
    RHN_FAST=1 python -m sphinx -W --keep-going -b html docs docs/_build/html

Notebooks
---------
The notebooks live in ``notebooks/*.py`` (jupytext ``py:percent``, no outputs). At
the start of every build this file converts each one to ``docs/notebooks/<name>.ipynb``
(ignored by git through the ``*.ipynb`` rule; rewritten only when its content
changed, and removed when its ``.py`` is gone). MyST-NB then executes the notebooks
and renders them with their outputs. The environment of the build reaches the
kernel: ``RHN_FAST=1`` selects the notebooks' fast mode (CI sets it).

``RHN_NB_EXECUTION`` picks MyST-NB's execution mode: ``force`` (default: every
notebook Sphinx reads is executed, so every printed number is current), ``cache``
(jupyter-cache under ``docs/_build/.jupyter_cache``, keyed on the notebook's code
only: it does not notice changes in ``rhn_np``) or ``off`` (no execution; quick
API-only iterations).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # import rhn_np from the checkout even when not installed

import rhn_np  # noqa: E402

# -- Project ------------------------------------------------------------------
project = "rhn_np"
author = "rhn_np contributors"
copyright = "rhn_np contributors; Recurrent Highway Networks by Zilly, Srivastava, Koutník and Schmidhuber (ICML 2017)"
release = rhn_np.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",  # MyST Markdown pages and executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # numpy-style docstrings
    "sphinx.ext.viewcode",  # [source] links next to every documented object
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # ships MathJax with the site: equations render offline too
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# -- MyST ---------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True  # "$$ ... $$" inside a paragraph (the notebooks use it)
myst_heading_anchors = 3  # "#install"-style links in README.md and the pages

# -- Autodoc / napoleon -------------------------------------------------------
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_mock_imports = ["cupy"]  # never needed to document; the import is guarded anyway
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# -- Notebooks (MyST-NB) --------------------------------------------------------
nb_execution_mode = os.environ.get("RHN_NB_EXECUTION", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True  # ... and its traceback is printed in the build log
nb_merge_streams = True
# Figures must reach the rendered page: a notebook kernel started with MPLBACKEND=Agg
# (as tests and CI set it) would close its figures instead of displaying them.
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

NOTEBOOK_SOURCES = ROOT / "notebooks"
NOTEBOOK_OUT = DOCS / "notebooks"  # only *.ipynb in here: ignored by git
# Notebooks the site always shows in full mode, even in a build with RHN_FAST=1: the
# training notebook, so that the site shows a trained model (about three minutes more).
# A hidden first cell (tag remove-cell) sets RHN_FAST=0 for its kernel. RHN_DOCS_FULL
# overrides the list (comma-separated names; empty: none).
FULL_MODE = tuple(n for n in os.environ.get("RHN_DOCS_FULL", "training").split(",") if n)


def _sync_notebooks() -> None:
    """notebooks/*.py (py:percent) -> docs/notebooks/*.ipynb, without outputs."""
    import jupytext
    import nbformat

    NOTEBOOK_OUT.mkdir(exist_ok=True)
    wanted = set()
    for src in sorted(NOTEBOOK_SOURCES.glob("*.py")):
        nb = jupytext.read(src, fmt="py:percent")
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        nb.metadata.pop("jupytext", None)
        if src.stem in FULL_MODE:
            cell = nbformat.v4.new_code_cell('import os\nos.environ["RHN_FAST"] = "0"  # the site shows this notebook in full mode')
            cell.metadata["tags"] = ["remove-cell"]
            cell["id"] = "docs-full-mode"  # fixed, so an unchanged notebook is not rewritten
            nb.cells.insert(0, cell)
        text = nbformat.writes(nb) + "\n"
        out = NOTEBOOK_OUT / f"{src.stem}.ipynb"
        wanted.add(out.name)
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            out.write_text(text, encoding="utf-8")
    for old in NOTEBOOK_OUT.glob("*.ipynb"):
        if old.name not in wanted:
            old.unlink()


_sync_notebooks()

# -- README.md inside index.md ---------------------------------------------------
# README.md links to repository files by paths relative to the repository root
# (rhn_np/rhn.py#L206, docs/benchmarks.md, ...). Rendered inside docs/index.md they
# would not resolve, so the "include-read" hook rewrites them:
#   docs/<page>          -> <page> (a page of this site)
#   rhn_np/<module>.py   -> {py:mod} cross-reference to that module's API entry
#   rhn_np/<m>.py#L<n>   -> the API entry of the public function or class holding
#                           line n (the module's, for a private one), shown as
#                           "rhn_np/<m>.py, line n": the site has no line anchors
#   any other file       -> download link to the file (fragment dropped)
_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _rewrite_readme_link(match: re.Match) -> str:
    text, target = match.group(1), match.group(2)
    if target.startswith(("#", "/")) or _SCHEME.match(target):
        return match.group(0)
    path = target.split("#", 1)[0]
    if path.startswith("docs/"):
        return f"[{text}]({target[len('docs/'):]})"
    module = re.fullmatch(r"rhn_np/(\w+)\.py", path)
    if module and (ROOT / path).is_file():
        label = text.replace("`", "").replace("<", "").replace(">", "") or path
        name = f"rhn_np.{module.group(1)}"
        line = re.fullmatch(r"L(\d+)", target.split("#", 1)[1]) if "#" in target else None
        if line:
            label = f"{path}, line {line.group(1)}" if label.startswith(("rhn_np/", "#L")) else label
            holder = _public_object_at(ROOT / path, int(line.group(1)))
            if holder:
                return f"{{py:obj}}`{label} <{name}.{holder}>`"
        return f"{{py:mod}}`{label} <{name}>`"
    if path and (ROOT / path).is_file():
        return f"[{text}](path:../{path})"
    return match.group(0)  # unknown target: let MyST warn about it


def _public_object_at(path: Path, line: int) -> str | None:
    """Dotted name of the innermost public def/class of ``path`` that holds ``line``."""
    import ast

    names: list[str] = []
    body = ast.parse(path.read_text(encoding="utf-8")).body
    while True:
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                     and n.lineno <= line <= n.end_lineno), None)
        if node is None or node.name.startswith("_"):
            return ".".join(names) or None
        names.append(node.name)
        body = node.body


def _rewrite_readme(app, relative_path, parent_docname, content) -> None:
    if Path(relative_path).name == "README.md":
        content[0] = _LINK.sub(_rewrite_readme_link, content[0])


def _readme_fallback(app, docname, source) -> None:
    """A build without README.md (it is written separately) still passes."""
    if docname == "index" and not (ROOT / "README.md").is_file():
        source[0] = re.sub(
            r"```\{include\} \.\./README\.md\n.*?```\n",
            "# rhn_np\n\nRecurrent Highway Networks in NumPy (README.md not found at build time).\n",
            source[0],
            flags=re.S,
        )


def setup(app):
    app.connect("include-read", _rewrite_readme)
    app.connect("source-read", _readme_fallback)
    return {"parallel_read_safe": True}


# -- HTML ---------------------------------------------------------------------
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # the default theme when furo is not installed
    html_theme = "alabaster"
html_title = f"rhn_np {release}"
html_static_path: list[str] = []
