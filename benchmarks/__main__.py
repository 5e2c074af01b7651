"""Run the skpou benchmark suites: ``python -m benchmarks [--quick] [--suite ...]``.

Prints Markdown tables to stdout and writes ``<out>/<suite>.md`` (quick mode:
``<suite>-quick.md``, so a quick check never overwrites a full run) plus PNG
plots. A final "Targets" table collects the pass/fail checks of every suite
that ran, also written to ``<out>/targets.md`` (``targets-quick.md``); the
targets of suites not run this time are carried over from their latest
``<suite>.md``, whose header names the commit they were measured at.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

from . import paper, peers, resolution, scaling  # noqa: E402
from ._common import (  # noqa: E402
    ROOT,
    Report,
    Target,
    environment_header,
    targets_section,
    warm_up_numba,
)

# "out-of-core" is the last section of "scaling" alone (it takes ~30 min in
# full mode: a 1e8-row Zarr store fitted through a LocalCluster).
OUT_OF_CORE = SimpleNamespace(run=scaling.run_out_of_core)
SUITES = {
    "paper": paper, "peers": peers, "scaling": scaling, "resolution": resolution,
    "out-of-core": OUT_OF_CORE,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and fewer problems (a few minutes)")
    parser.add_argument("--suite", choices=[*SUITES, "all"], default=None,
                        action="append", dest="suites",
                        help="suite to run (repeatable; default: all)")
    parser.add_argument("--out", default=str(ROOT / "doc" / "benchmarks"),
                        help="output folder for Markdown and PNG files")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, median reported "
                        "(default: 1 in quick mode, 3 otherwise)")
    args = parser.parse_args(argv)
    suites = [s for s in (args.suites or ["all"]) if s != "all"] or [
        s for s in SUITES if s != "out-of-core"  # run within "scaling"
    ]
    suites = list(dict.fromkeys(suites))
    repeats = args.repeats or (1 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""

    warm_up_numba()
    targets_of = {}
    started = time.perf_counter()
    for name in suites:
        t0 = time.perf_counter()
        header = environment_header(name, args.quick, repeats)
        print(header + "\n", flush=True)
        report = Report(name, args.quick)
        SUITES[name].run(report, args.quick, repeats, out)
        elapsed = time.perf_counter() - t0
        report.sections.append(f"_Suite run time: {elapsed:.0f} s._\n")
        print(f"_Suite {name} run time: {elapsed:.0f} s._\n", flush=True)
        (out / f"{name}{suffix}.md").write_text(report.markdown(header))
        targets_of[name] = report.targets

    carried = [name for name in SUITES if name not in suites
               and (out / f"{name}{suffix}.md").exists()]
    for name in carried:
        targets_of[name] = saved_targets(out / f"{name}{suffix}.md")
    all_targets = [t for name in SUITES for t in targets_of.get(name, [])]
    order = {"FAIL": 0, "PASS": 1, "SKIP": 2}
    text = targets_section(all_targets) if all_targets else "## Targets\n\n(none checked)\n"
    print(text, flush=True)
    summary = (
        f"# skpou benchmark targets ({'quick' if args.quick else 'full'} mode)\n\n"
        f"Suites run: {', '.join(suites)}; total time "
        f"{time.perf_counter() - started:.0f} s; load average at end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}."
        + (f" Targets of {', '.join(carried)} carried over from their latest "
           "run (see the commit in each suite's page)." if carried else "")
        + "\n\n" + text
    )
    (out / f"targets{suffix}.md").write_text(summary)
    counts = {s: sum(t.status == s for t in all_targets) for s in order}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def saved_targets(path):
    """The rows of the "## Targets" table of a suite page written earlier."""
    lines = path.read_text().splitlines()
    start = lines.index("## Targets")
    rows = []
    for line in lines[start + 4:]:  # title, blank, header, separator
        if not line.startswith("|"):
            break
        # cells may hold escaped pipes (\|x\|): split on the others only
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        rows.append(Target(*cells))
    return rows


if __name__ == "__main__":
    sys.exit(main())
