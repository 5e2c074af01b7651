"""Run every gallery example in quick mode (SKPOU_EXAMPLES_QUICK=1).

Each script runs in-process with runpy (so the Numba kernels compile once),
with the non-interactive Agg backend, from a temporary working directory.
"""

import os
import runpy
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
# Examples of optional extras: skipped without them (CI installs them).
NEEDS = {"plot_out_of_core": ("dask", "distributed", "zarr")}


def test_examples_found():
    assert len(EXAMPLES) >= 7, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, tmp_path, monkeypatch):
    for module in NEEDS.get(path.stem, ()):
        pytest.importorskip(module)
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    monkeypatch.setenv("SKPOU_EXAMPLES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    before = set(EXAMPLES_DIR.iterdir())
    plt.close("all")
    try:
        runpy.run_path(str(path), run_name="__main__")
        # gallery examples must produce at least one figure
        if path.name.startswith("plot_"):
            assert plt.get_fignums(), f"{path.name} created no figure"
    finally:
        plt.close("all")
    assert set(EXAMPLES_DIR.iterdir()) == before, "example wrote into examples/"
    assert not any(tmp_path.iterdir()), (
        f"example wrote files: {sorted(os.listdir(tmp_path))}"
    )


def test_examples_have_a_gallery_title():
    for path in EXAMPLES:
        text = path.read_text(encoding="utf-8")
        assert text.lstrip().startswith('"""'), f"{path.name}: no docstring"
        lines = [line.strip() for line in text.split('"""')[1].strip().splitlines()]
        # sphinx-gallery: an rst title (text underlined, maybe overlined, by =)
        if set(lines[0]) == {"="}:
            lines = lines[1:]
        assert len(lines) >= 2 and lines[0] and set(lines[1]) == {"="}, path.name
