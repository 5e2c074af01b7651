"""Check, in headless Chromium, that the built documentation renders its math offline.

Usage (after building the site)::

    python doc/check_math_rendering.py [BUILD_DIR] [--page user_guide.html]
        [--screenshot math.png] [--chromium /usr/bin/chromium]

``BUILD_DIR`` defaults to ``doc/_build/html``. The script

1. reads every built HTML page and fails if a ``<script>`` loads MathJax from
   a remote URL, or if a local MathJax script it references is missing;
2. opens each page that has math (Sphinx's ``class="math"`` elements; or
   only the ``--page`` ones) from ``file://`` in headless Chromium with host
   name resolution disabled, so nothing can come from the network, lets
   MathJax run (``--virtual-time-budget``), and parses the resulting DOM;
3. fails if a math element was not turned into MathJax output
   (``mjx-container``), still shows a raw ``\\(``/``\\)``/``\\[``/``\\]``
   delimiter, or holds a MathJax error (``mjx-merror``, or an undefined
   macro, which MathJax shows as its name in red).

Exit status: 0 if all is well, 1 if a check failed, 2 if it could not run
(no Chromium, no built pages). It needs Chromium (Debian: ``apt-get install
chromium``), so it is not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_BUILD = Path(__file__).resolve().parent / "_build" / "html"
RAW_DELIMITERS = ("\\(", "\\)", "\\[", "\\]")
VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link",
    "meta", "param", "source", "track", "wbr",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # no host name resolves: a page that still wants a CDN cannot get it
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


class _Scripts(HTMLParser):
    """The ``src`` of every ``<script>`` of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            src = dict(attrs).get("src")
            if src:
                self.sources.append(src)


class _MathDom(HTMLParser):
    """Sphinx's math elements in a rendered DOM, and what MathJax made of them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # open tags: (tag, index of the math element or None)
        self.math = []  # per math element: {"text", "containers", "errors"}
        self.containers = 0  # mjx-container anywhere in the page
        self.red_text = False  # inside a red mjx-mtext, before its first glyph

    def _current(self):
        for _, index in reversed(self.stack):
            if index is not None:
                return self.math[index]
        return None

    def handle_starttag(self, tag, attrs):
        if tag == "mjx-container":
            self.containers += 1
        current = self._current()
        if current is not None:
            attributes = dict(attrs)
            if tag == "mjx-container":
                current["containers"] += 1
            elif tag == "mjx-merror":
                current["errors"] += 1
            elif tag == "mjx-mtext" and re.search(
                r"color:\s*red", attributes.get("style") or ""
            ):
                # an undefined macro: MathJax shows its name in red
                self.red_text = True
            elif tag == "mjx-c" and self.red_text:
                self.red_text = False
                if "mjx-c5C" in (attributes.get("class") or "").split():
                    current["errors"] += 1
        if tag in VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        index = None
        if current is None and "math" in classes and tag in ("span", "div"):
            self.math.append({"text": "", "containers": 0, "errors": 0})
            index = len(self.math) - 1
        self.stack.append((tag, index))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        for position in range(len(self.stack) - 1, -1, -1):
            if self.stack[position][0] == tag:
                del self.stack[position:]
                return

    def handle_data(self, data):
        current = self._current()
        if current is not None:
            current["text"] += data


def remote_or_missing_mathjax(page: Path) -> list[str]:
    """Problems with the MathJax scripts that ``page`` loads."""
    parser = _Scripts()
    parser.feed(page.read_text(encoding="utf-8"))
    problems = []
    for src in parser.sources:
        if "mathjax" not in src.lower():
            continue
        parts = urlsplit(src)
        if parts.scheme or src.startswith("//"):
            problems.append(f"remote MathJax script {src}")
            continue
        local = (page.parent / parts.path).resolve()
        if not local.is_file():
            problems.append(f"MathJax script {src} not found ({local})")
    return problems


def find_chromium(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(chromium, page: Path, extra, budget_ms: int) -> str:
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            page.resolve().as_uri(),
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"chromium exited {result.returncode} on {page}:\n{result.stderr[-2000:]}"
        )
    return result.stdout


def check_page(chromium, page: Path, budget_ms: int) -> tuple[dict, list[str]]:
    dom = run_chromium(chromium, page, ["--dump-dom"], budget_ms)
    parser = _MathDom()
    parser.feed(dom)
    parser.close()
    math = parser.math
    unrendered = [m for m in math if m["containers"] == 0]
    raw = [m for m in math if any(d in m["text"] for d in RAW_DELIMITERS)]
    errors = [m for m in math if m["errors"]]
    stats = {
        "math": len(math),
        "rendered": len(math) - len(unrendered),
        "mjx-container": parser.containers,
        "raw": len(raw),
        "errors": len(errors),
    }
    problems = []
    if unrendered:
        problems.append(
            f"{len(unrendered)} of {len(math)} math elements not rendered, "
            f"e.g. {unrendered[0]['text'].strip()[:80]!r}"
        )
    if raw:
        problems.append(
            f"{len(raw)} math elements show raw delimiters, "
            f"e.g. {raw[0]['text'].strip()[:80]!r}"
        )
    if errors:
        problems.append(
            f"{len(errors)} math elements hold a MathJax error "
            "(an undefined macro, or bad TeX)"
        )
    return stats, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path, default=DEFAULT_BUILD)
    parser.add_argument(
        "--page",
        action="append",
        default=[],
        help="page to render, relative to BUILD_DIR (repeatable); "
        "default: every page with math",
    )
    parser.add_argument("--screenshot", type=Path, help="PNG of the first page")
    parser.add_argument("--window-size", default="1200,2000")
    parser.add_argument("--chromium", help="browser executable")
    parser.add_argument("--budget", type=int, default=10000, help="virtual ms")
    args = parser.parse_args(argv)

    build = args.build_dir
    pages = sorted(build.rglob("*.html"))
    if not pages:
        print(f"no HTML pages under {build}: build the docs first", file=sys.stderr)
        return 2

    failed = False
    for page in pages:
        for problem in remote_or_missing_mathjax(page):
            print(f"FAIL {page.relative_to(build)}: {problem}")
            failed = True

    if args.page:
        targets = [build / name for name in args.page]
    else:
        targets = [
            page
            for page in pages
            if re.search(r'class="math\b', page.read_text(encoding="utf-8"))
        ]
    if not targets:
        print(f"no page with math under {build}", file=sys.stderr)
        return 2

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2

    totals = dict.fromkeys(("math", "rendered", "mjx-container", "raw", "errors"), 0)
    for page in targets:
        stats, problems = check_page(chromium, page, args.budget)
        for key in totals:
            totals[key] += stats[key]
        name = page.relative_to(build)
        summary = ", ".join(f"{key} {value}" for key, value in stats.items())
        print(f"{'FAIL' if problems else 'ok  '} {name}: {summary}")
        for problem in problems:
            print(f"     {problem}")
        failed = failed or bool(problems) or stats["math"] == 0

    if args.screenshot:
        run_chromium(
            chromium,
            targets[0],
            [
                f"--screenshot={args.screenshot.resolve()}",
                f"--window-size={args.window_size}",
                "--hide-scrollbars",
            ],
            args.budget,
        )
        print(f"screenshot of {targets[0].relative_to(build)}: {args.screenshot}")

    summary = ", ".join(f"{key} {value}" for key, value in totals.items())
    print(f"{len(targets)} pages: {summary}")
    print("FAILED" if failed else "all math rendered offline")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
