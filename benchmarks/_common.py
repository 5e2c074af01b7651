"""Shared helpers: timing, the error metric, Markdown reports and targets."""

import os
import platform
import statistics
import subprocess
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rel_l2(pred, y):
    """Relative L2 error on held-out points: ||pred - y|| / ||y||."""
    pred = np.asarray(pred, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    return float(np.linalg.norm(pred - y) / np.linalg.norm(y))


# Repeats stop once a measurement has used this many seconds: a fit that
# takes minutes is timed once (its noise is small relative to its length).
REPEAT_BUDGET = 60.0


def ratio(a, b):
    """a / b, NaN where either is not finite or b is 0 (a failed measurement)."""
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


class Timing(float):
    """Median wall-clock seconds, with the median CPU seconds as ``.cpu``.

    On a shared machine the CPU time of a single-threaded fit is the more
    stable of the two; both come from the same runs.
    """

    cpu = float("nan")
    runs = 0


@contextmanager
def pinned_to_one_cpu():
    """Keep this process on one CPU (Linux; elsewhere a no-op).

    For one-thread comparisons: left free, the scheduler moves the process
    between the two CPUs of the benchmark machine, and a one-thread fit then
    ran at either of two speeds (3-D defaults, n = 1e4: 0.39 s or 0.50 s,
    in about a third of fresh processes). Pinned, 8 of 8 ran at 0.39-0.41 s.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def timed(fit, repeats, budget=REPEAT_BUDGET):
    """Median wall time of up to ``repeats`` calls of ``fit()``: (Timing, result).

    ``fit`` must build a fresh estimator each call (so nothing is warm-started
    by accident) and return it; the result of the last call is returned.
    Repeats stop early once the calls so far took more than ``budget`` s.
    """
    walls, cpus = [], []
    result = None
    for _ in range(max(1, repeats)):
        if walls and sum(walls) > budget:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu0 = time.process_time()
            start = time.perf_counter()
            result = fit()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu0)
    timing = Timing(statistics.median(walls))
    timing.cpu = statistics.median(cpus)
    timing.runs = len(walls)
    return timing, result


def fmt_err(value):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.2e}"


def fmt_n(n):
    """1e4 for 10000, 3e3 for 3000."""
    mantissa, exponent = f"{n:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds < 0.1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_wall_cpu(t):
    """'wall (cpu)' for a Timing; plain wall time otherwise."""
    cpu = getattr(t, "cpu", None)
    if cpu is None or not np.isfinite(cpu):
        return fmt_time(t)
    return f"{fmt_time(t)} ({fmt_time(cpu)})"


def fmt_bytes(n):
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return f"{n:.1f} GiB"


def markdown_table(headers, rows):
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    criterion: str
    measured: str
    status: str  # "PASS", "FAIL" or "SKIP"


@dataclass
class Report:
    """One suite's output: Markdown sections, plots and target checks."""

    suite: str
    quick: bool
    sections: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    plots: list = field(default_factory=list)

    def add(self, title, text="", table=None):
        block = [f"## {title}", ""]
        if text:
            block += [text.strip(), ""]
        if table is not None:
            block += [markdown_table(*table), ""]
        section = "\n".join(block)
        self.sections.append(section)
        print(section, flush=True)

    def target(self, name, criterion, measured, passed):
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[passed]
        self.targets.append(Target(name, criterion, measured, status))

    def markdown(self, header):
        parts = [header, ""] + self.sections
        if self.targets:
            parts += [targets_section(self.targets)]
        for name in self.plots:
            parts += [f"![{name}]({name})", ""]
        return "\n".join(parts)


def targets_section(targets):
    rows = [(t.name, t.criterion, t.measured, t.status) for t in targets]
    return "## Targets\n\n" + markdown_table(
        ("target", "criterion", "measured", "status"), rows
    ) + "\n"


def environment_header(suite, quick, repeats):
    """Provenance: when, on what, with which code, in which mode."""
    import matplotlib
    import numba
    import scipy
    import sklearn

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "skpou")
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    try:
        import skpou

        skpou_version = skpou.__version__
    except Exception:  # pragma: no cover - reported, not fatal
        skpou_version = "?"
    mode = "quick" if quick else "full"
    return "\n".join(
        [
            f"# skpou benchmarks: {suite} ({mode} mode)",
            "",
            "Generated by `python -m benchmarks"
            + (" --quick" if quick else "")
            + f" --suite {suite}`; do not edit by hand.",
            "",
            f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- skpou {skpou_version}, commit {commit}"
            + (" (skpou/ has uncommitted changes)" if dirty else ""),
            f"- python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
            f"numba {numba.__version__}, matplotlib {matplotlib.__version__}",
            f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"load average at start {load} (timings are noisy when the load "
            "exceeds the CPU count)",
            f"- timings: median of {repeats} run(s) (runs stop early once a "
            f"measurement used {REPEAT_BUDGET:.0f} s); errors: relative L2 on "
            "held-out test points, ||pred - y|| / ||y||",
        ]
    )


def save_figure(fig, out_dir, name, report):
    path = Path(out_dir) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    report.plots.append(name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def hpou_supports(name):
    """Whether the installed estimator has this parameter (the API is moving)."""
    from skpou import HierarchicalPOURegressor

    return name in HierarchicalPOURegressor().get_params()


def describe_hpou(params=None):
    """'(4, 4), deg 4' plus the parameters that differ from the defaults."""
    from skpou import HierarchicalPOURegressor

    defaults = HierarchicalPOURegressor().get_params()
    params = dict(defaults, **(params or {}))
    partitions = params["partitions"]
    shape = partitions if isinstance(partitions, str) else tuple(partitions)
    text = f"{shape}, deg {params['degree']}"
    for key, value in params.items():
        if key not in ("partitions", "degree") and value != defaults.get(key):
            text += f", {key}={value}"
    return text


def warm_up_numba():
    """Load the cached Numba kernels once, so no timing includes compilation."""
    from skpou import HierarchicalPOURegressor

    rng = np.random.default_rng(0)
    for d, gate in ((1, "linear"), (2, "quadratic")):
        X = rng.random((300, d))
        y = X.sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = HierarchicalPOURegressor(
                partitions=(2, 2), degree=2, gate=gate, n_cycles=1
            ).fit(X, y)
            model.predict(X, return_std=True)
