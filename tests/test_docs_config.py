"""The documentation's math must render offline: no MathJax from a CDN.

doc/conf.py is parsed, not imported (importing it would set environment
variables for the whole test session), so these tests need neither Sphinx nor
a docs build. The rendering itself is checked in a browser by
doc/check_math_rendering.py, which is not part of this suite.
"""

import ast
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "doc" / "conf.py"
OFFLINE_EXTENSION = "sphinx-mathjax-offline"
URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def _assignments(tree):
    """Every ``name = value`` (and ``name += value``) in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.value
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            if isinstance(node.target, ast.Name) and node.value is not None:
                yield node.target.id, node.value


def _conf_tree():
    return ast.parse(CONF.read_text(encoding="utf-8"), filename=str(CONF))


def test_offline_mathjax_extension_is_enabled():
    extensions = [
        value for name, value in _assignments(_conf_tree()) if name == "extensions"
    ]
    assert extensions, "doc/conf.py assigns no extensions list"
    listed = set()
    for value in extensions:
        listed.update(ast.literal_eval(value))
    assert "sphinx.ext.mathjax" in listed
    assert OFFLINE_EXTENSION in listed, (
        f"{OFFLINE_EXTENSION} is not in doc/conf.py's extensions: the docs "
        "would load MathJax from a CDN and show raw TeX offline"
    )


def test_no_remote_mathjax_configured():
    tree = _conf_tree()
    for name, value in _assignments(tree):
        if name == "mathjax_path":
            assert isinstance(value, ast.Constant) and isinstance(value.value, str), (
                "mathjax_path in doc/conf.py must be a literal local path"
            )
            assert not URL.match(value.value), f"remote mathjax_path {value.value!r}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            assert not ("mathjax" in text.lower() and re.search(r"https?://|^//", text)), (
                f"doc/conf.py names a remote MathJax: {text!r}"
            )


def test_offline_extension_in_doc_extra():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    doc_extra = setup["options.extras_require"]["doc"].split()
    names = {re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower() for line in doc_extra}
    assert OFFLINE_EXTENSION in names
