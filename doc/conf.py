"""Sphinx configuration for skpou.

Build (warnings are errors)::

    python -m sphinx -W -b html doc doc/_build/html

Check that the built site renders its math offline, in headless Chromium
(``apt-get install chromium``; exits non-zero on raw or unrendered math or a
remote MathJax)::

    python doc/check_math_rendering.py doc/_build/html --screenshot math.png
"""

import os
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent
sys.path.insert(0, str(DOC.parent))

# The gallery runs every example during the build: quick mode keeps it fast.
# (SKPOU_EXAMPLES_QUICK=0 in the environment builds the full-size gallery.)
os.environ.setdefault("SKPOU_EXAMPLES_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import skpou  # noqa: E402

project = "skpou"
author = "skpou developers"
copyright = "skpou developers"
release = skpou.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # MathJax shipped with the site, so math renders offline (see below)
    "sphinx-mathjax-offline",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

# Math: sphinx.ext.mathjax alone points every page at MathJax on a CDN, so
# offline (a local build, a docs tarball, a firewalled machine) formulas stay
# raw TeX such as \(N^{-(m+1)}\). The sphinx-mathjax-offline extension
# (PyPI, in the ``doc`` extra of setup.cfg) carries MathJax 3.2.2 inside the
# Python package: it copies it into ``_static/mathjax`` (24 MB) at the end of
# the build and sets ``mathjax_path`` to that copy. Nothing is fetched at build
# time, and ``pip install -e ".[doc]"`` is all a build needs (imgmath would
# need LaTeX and dvipng from the system). Do not set ``mathjax_path`` here: a
# URL would bring the CDN back (tests/test_docs_config.py guards this). The
# extension declares no parallel safety, so ``-W -j N`` fails on Sphinx's
# warning about it: build without ``-j``.

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/README.md"]
templates_path = ["_templates"]

# --------------------------------------------------------------- API docs

autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Links to the Python, NumPy, SciPy and scikit-learn docs need their
# inventories from the network; an unreachable inventory is a warning, which
# -W turns into an error. So they are opt-in: SKPOU_DOC_INTERSPHINX=1.
# Without them, references such as :class:`sklearn.pipeline.Pipeline`
# render as plain code (Sphinx does not warn about them unless nitpicky).
if os.environ.get("SKPOU_DOC_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "sklearn": ("https://scikit-learn.org/stable/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
        "joblib": ("https://joblib.readthedocs.io/en/stable/", None),
    }
else:
    intersphinx_mapping = {}
    intersphinx_disabled_reftypes = ["*"]

# The benchmark reports are generated Markdown: tolerate their heading levels
# and links to files that are not documents (plots, scripts).
suppress_warnings = ["myst.header", "myst.xref_missing"]
myst_heading_anchors = 2

# ---------------------------------------------------------------- gallery

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
}

# ------------------------------------------------------------------- HTML

try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
except ImportError:  # pragma: no cover - fallback theme
    html_theme = "alabaster"
html_title = f"skpou {release}"
html_static_path = []

# ------------------------------------------------------- benchmark tables

BENCHMARKS = DOC / "benchmarks"


def benchmark_documents():
    """Docnames of the benchmark reports, full runs preferred over quick ones.

    ``python -m benchmarks`` writes ``doc/benchmarks/<suite>.md`` (full) or
    ``<suite>-quick.md`` (quick). A quick report is shown only when no full
    report of the same suite exists; the other files are excluded below.
    """
    if not BENCHMARKS.is_dir():
        return []
    stems = {path.stem for path in BENCHMARKS.glob("*.md")}
    chosen = []
    for stem in sorted(stems):
        if stem.endswith("-quick") and stem[: -len("-quick")] in stems:
            continue
        chosen.append(stem)
    # the targets summary first, then the suites
    chosen.sort(key=lambda stem: (not stem.startswith("targets"), stem))
    return [f"benchmarks/{stem}" for stem in chosen]


_BENCHMARK_DOCS = benchmark_documents()
if BENCHMARKS.is_dir():
    exclude_patterns += [
        f"benchmarks/{path.name}"
        for path in BENCHMARKS.glob("*.md")
        if f"benchmarks/{path.stem}" not in _BENCHMARK_DOCS
    ]


def _add_benchmark_toctree(app, docname, source):
    """Append the list of benchmark reports to benchmarks.rst at read time."""
    if docname != "benchmarks":
        return
    if _BENCHMARK_DOCS:
        entries = "\n".join(f"   {name}" for name in _BENCHMARK_DOCS)
        source[0] += f"\n.. toctree::\n   :maxdepth: 1\n\n{entries}\n"
    else:
        source[0] += (
            "\n.. note::\n\n"
            "   No benchmark report has been generated in this checkout yet.\n"
            "   Run ``python -m benchmarks`` (or ``python -m benchmarks --quick``)\n"
            "   from the repository root, then rebuild the documentation.\n"
        )


# Methods inherited from scikit-learn (score, get_params, set_params) keep
# scikit-learn's docstrings, whose :ref: and :term: roles point into
# scikit-learn's own documentation: render them as plain text.
_SKLEARN_ROLE = re.compile(r":(?:ref|term):`([^`<]*?)\s*(?:<[^>]*>)?`")


def _escape_docstring_pitfalls(app, what, name, obj, options, lines):
    if getattr(obj, "__module__", "").startswith("sklearn"):
        lines[:] = [_SKLEARN_ROLE.sub(r"\1", line) for line in lines]


def setup(app):
    app.connect("source-read", _add_benchmark_toctree)
    app.connect("autodoc-process-docstring", _escape_docstring_pitfalls)
