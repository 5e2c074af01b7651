"""A fixed set of fits whose predictions are stored, to pin refactoring.

Each case fits ``HierarchicalPOURegressor`` with every parameter that matters
spelled out (so a change of default does not move it) and records the mean,
the predictive std and the coarsest gates on held-out points. The stored
arrays (``data/reference_predictions.npz``) were written by the commit named
inside the file; ``tests/test_reference_fits.py`` refits every case and
compares. A change that is meant to alter the fits (not a refactoring)
rewrites the file, and its commit message says which cases moved and why:

    python -m tests.reference_fits --write

The stored fits are reproducible to round-off only where the floating point
is computed the same way: the file also records the ``fingerprint`` of the
machine that wrote it (library versions, OpenBLAS's kernels, the CPU Numba
compiles for, numpy's SIMD level). Elsewhere the test compares at
CROSS_MACHINE_TOLERANCE: EM amplifies round-off over its cycles, and the
fits written on one machine moved by up to 1.3e-4 (means), 3.9e-2 (std,
kink_triangle_wave; 3.3e-3 otherwise) and 9.7e-4 (gates) of their
largest value on an AMD EPYC with AVX-512 (Numba compiling for znver5).
"""

import argparse
import platform
import subprocess
import warnings
from pathlib import Path

import numpy as np

from skpou import HierarchicalPOURegressor

# Off the machine that wrote the file: tolerance per recorded quantity, a
# share of its largest absolute value per output (see the module
# docstring), and per case where one moved more.
CROSS_MACHINE_TOLERANCE = {"mean": 1e-3, "std": 1e-2, "coarse_gates": 1e-2}
CROSS_MACHINE_CASE_TOLERANCE = {("kink_triangle_wave", "std"): 1e-1}

PATH = Path(__file__).parent / "data" / "reference_predictions.npz"
# Parameters the cases leave out, at the values they had when the stored
# predictions were made (defaults change; the pinned fits must not).
DEFAULTS_WHEN_STORED = dict(random_state=0, n_cycles=5, em_subsample=100_000)


def _franke(X):
    x, y = X[:, 0], X[:, 1]
    return (
        0.75 * np.exp(-((9 * x - 2) ** 2 + (9 * y - 2) ** 2) / 4)
        + 0.75 * np.exp(-((9 * x + 1) ** 2) / 49 - (9 * y + 1) / 10)
        + 0.5 * np.exp(-((9 * x - 7) ** 2 + (9 * y - 3) ** 2) / 4)
        - 0.2 * np.exp(-((9 * x - 4) ** 2) - (9 * y - 7) ** 2)
    )


def _triangle_squared(x, pieces):
    s = x * pieces
    k = np.floor(s)
    return np.where(k % 2 == 0, s - k, 1.0 - (s - k)) ** 2


def _data(kind, n, seed):
    rng = np.random.RandomState(seed)
    if kind == "sine":
        X = rng.uniform(0, 1, (n, 1))
        return X, np.sin(2 * np.pi * X[:, 0]) + 0.5 * X[:, 0] ** 2
    if kind == "franke":
        X = rng.uniform(0, 1, (n, 2))
        return X, _franke(X)
    if kind == "3d":
        X = rng.uniform(-1, 1, (n, 3))
        return X, np.tanh(X[:, 0]) * np.cos(2 * X[:, 1]) + np.exp(0.5 * X[:, 2])
    if kind == "5d":
        X = rng.uniform(0, 1, (n, 5))
        return X, (
            10 * np.sin(np.pi * X[:, 0] * X[:, 1]) + 20 * (X[:, 2] - 0.5) ** 2
            + 10 * X[:, 3] + 5 * X[:, 4]
        )
    if kind == "two_outputs":
        X = rng.uniform(0, 1, (n, 2))
        return X, np.c_[_franke(X), 100 * np.sin(3 * X[:, 0]) * X[:, 1]]
    if kind == "triangle":  # a grid, as the exact-reproduction tests use
        X = np.linspace(0, 1, n)[:, None]
        return X, _triangle_squared(X[:, 0], 6)
    if kind == "abs_1d":
        X = rng.uniform(0, 1, (n, 1))
        return X, np.abs(X[:, 0] - 0.37) + 0.2 * X[:, 0]
    if kind == "noisy_2d":
        X = rng.uniform(0, 1, (n, 2))
        return X, np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.05 * rng.normal(size=n)
    raise ValueError(kind)


def _weights(kind, n, seed):
    rng = np.random.RandomState(seed + 100)
    if kind is None:
        return None
    if kind == "random":
        return rng.uniform(0.1, 3.0, n)
    if kind == "integers_with_zeros":
        return rng.randint(0, 4, n).astype(float)
    raise ValueError(kind)


# name: (data kind, n_train, params, sample weights, warm-start follow-up)
CASES = {
    "sine_linear": ("sine", 400, dict(partitions=(4, 2), degree=3), None, None),
    "sine_quadratic": ("sine", 400, dict(partitions=(4,), degree=2, gate="quadratic"), None, None),
    "sine_mlp": ("sine", 300, dict(partitions=(3, 2), degree=2, gate="mlp"), None, None),
    "sine_sigma_fixed": ("sine", 300, dict(partitions=(4, 2), degree=2, sigma="fixed"), None, None),
    "sine_sigma_em": ("sine", 300, dict(partitions=(4, 2), degree=2, sigma="em"), None, None),
    "sine_sparse_polish": ("sine", 2000, dict(partitions=(16, 8), degree=3, gate_alpha=1e-4), None, None),
    "franke_default_tree": ("franke", 800, dict(partitions=(4, 4), degree=4), None, None),
    "franke_quadratic": ("franke", 600, dict(partitions=(3, 3), degree=3, gate="quadratic"), None, None),
    "franke_mlp": ("franke", 400, dict(partitions=(2, 2), degree=2, gate="mlp", n_cycles=3), None, None),
    "franke_no_polish": ("franke", 600, dict(partitions=(4, 2), degree=3, polish=False), None, None),
    "franke_degree0": ("franke", 500, dict(partitions=(4, 4), degree=0), None, None),
    "franke_weighted": ("franke", 600, dict(partitions=(4, 2), degree=3), "random", None),
    "franke_zero_weights": ("franke", 600, dict(partitions=(3, 2), degree=3), "integers_with_zeros", None),
    "franke_subsample": ("franke", 1500, dict(partitions=(4, 2), degree=3, em_subsample=400), None, None),
    "franke_subsample_mlp": ("franke", 900, dict(partitions=(2, 2), degree=2, gate="mlp", em_subsample=300, n_cycles=2), None, None),
    "franke_three_levels": ("franke", 800, dict(partitions=(2, 2, 2), degree=3, n_jobs=2), None, None),
    "two_outputs": ("two_outputs", 600, dict(partitions=(3, 2), degree=3), None, None),
    "two_outputs_no_polish": ("two_outputs", 600, dict(partitions=(3, 2), degree=3, polish=False, sigma="em"), None, None),
    "noisy_unpolished_std": ("noisy_2d", 300, dict(partitions=(2, 2), degree=2, polish=False), None, None),
    "cube_moments": ("3d", 1200, dict(partitions=(2, 2), degree=4, gate_alpha=0.3), None, None),
    "friedman_moments": ("5d", 1500, dict(partitions=(2, 2), degree=3, gate_alpha=0.3), None, None),
    "warm_p_refinement": ("sine", 400, dict(partitions=(4, 2), degree=1), None, dict(warm_start=True, n_cycles=0, degree=4)),
    "warm_more_cycles": ("franke", 500, dict(partitions=(3, 2), degree=3), None, dict(warm_start=True, n_cycles=3)),
    "kink_triangle_wave": ("triangle", 1201, dict(partitions=(12,), degree=2, gate_alpha=1e-20, n_cycles=30, tol=0.0), None, None),
    "kink_abs": ("abs_1d", 500, dict(partitions=(2, 2), degree=1, gate_alpha=1e-20, n_cycles=20, tol=0.0), None, None),
    "pruned_partitions": ("sine", 40, dict(partitions=(8, 8), degree=1), None, None),
    "underdetermined_polish": ("franke", 60, dict(partitions=(4, 4), degree=2), None, None),
}


def fit_case(name):
    """Fit one case; returns {array name: array} on its held-out points."""
    kind, n, params, weight_kind, follow_up = CASES[name]
    X, y = _data(kind, n, seed=0)
    X_test, _ = _data(kind if kind != "triangle" else "sine", 300, seed=1)
    sample_weight = _weights(weight_kind, n, seed=0)
    model = HierarchicalPOURegressor(**{**DEFAULTS_WHEN_STORED, **params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pruning warnings are expected here
        model.fit(X, y, sample_weight=sample_weight)
        if follow_up is not None:
            model.set_params(**follow_up).fit(X, y, sample_weight=sample_weight)
    mean, std = model.predict(X_test, return_std=True)
    return {
        "mean": mean,
        "std": std,
        "coarse_gates": model.predict_partitions(X_test, level=1),
    }


def fit_all():
    return {
        f"{name}/{key}": value
        for name in CASES
        for key, value in fit_case(name).items()
    }


def fingerprint():
    """What decides the fits' round-off: library versions, the BLAS and its
    kernels, the CPU Numba compiles for and its features, numpy's SIMD
    level, the C library (Numba's math functions). A part that cannot be
    read is recorded as "?"."""
    def read(part):
        try:
            return part()
        except Exception:  # a private or changed API: fingerprint without it
            return "?"

    def blas():
        import threadpoolctl

        return " ".join(sorted(
            f"{info['internal_api']} {info.get('version')} {info.get('architecture')}"
            for info in threadpoolctl.threadpool_info()
            if info.get("internal_api") in ("openblas", "mkl", "blis")
        ))

    def numba_cpu():
        import llvmlite.binding
        from numba.core import config

        name = config.CPU_NAME or llvmlite.binding.get_host_cpu_name()
        features = config.CPU_FEATURES or llvmlite.binding.get_host_cpu_features().flatten()
        return f"{name} {features}"

    def simd():
        from numpy._core._multiarray_umath import __cpu_features__

        return [name for name, enabled in __cpu_features__.items() if enabled][-1]

    import numba
    import scipy

    return (f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}; "
            f"blas {read(blas)}; cpu {read(numba_cpu)}; simd {read(simd)}; "
            f"libc {read(lambda: ' '.join(platform.libc_ver()))}")


def write():
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).parent, check=True,
    ).stdout.strip()
    PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(PATH, commit=np.array(commit), fingerprint=np.array(fingerprint()),
                        **fit_all())
    print(f"wrote {len(CASES)} cases to {PATH} (commit {commit})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stored predictions")
    if parser.parse_args().write:
        write()
