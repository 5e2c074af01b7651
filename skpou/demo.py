"""Demo: fit a hierarchical POU network to Franke's function, beside sklearn peers.

Run it with::

    python -m skpou.demo             # 10 000 training samples
    python -m skpou.demo --quick     # 2 000 training samples, smaller peers
    python -m skpou.demo --n-samples 20000 --n-jobs 2

Franke's function is a smooth 2-D benchmark (two Gaussian peaks, a dip and a
ridge) on the unit square. The training inputs are uniform random points, the
targets are exact (noise-free), and the test set is a separate set of random
points. The script prints a Markdown table of the relative L2 test error
``||y_pred - y|| / ||y||`` and the wall-clock fit time of each model.

The scikit-learn peers use fixed, reasonable hyperparameters chosen so that
the whole demo runs in well under a minute on two cores; they are not tuned
per problem, and neither is the hierarchical POU network. For tuned
comparisons on several problems, see the benchmark suite
(``python -m benchmarks``) and ``doc/benchmarks/``.

Before timing, the demo fits the POU network once on a tiny data set so that
the Numba kernels are compiled (or loaded from their on-disk cache); that
one-off cost is printed separately and not included in the fit time.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, SplineTransformer
from threadpoolctl import threadpool_limits

from skpou import HierarchicalPOURegressor

__all__ = ["franke", "make_franke", "make_models", "run", "main"]


def franke(x, y):
    """Franke's 2-D test function (Franke, 1979) on the unit square.

    Parameters
    ----------
    x, y : ndarray
        Coordinates in [0, 1].

    Returns
    -------
    z : ndarray
        Function values, of the broadcast shape of ``x`` and ``y``.
    """
    return (
        0.75 * np.exp(-((9 * x - 2) ** 2 + (9 * y - 2) ** 2) / 4)
        + 0.75 * np.exp(-((9 * x + 1) ** 2) / 49 - (9 * y + 1) / 10)
        + 0.5 * np.exp(-((9 * x - 7) ** 2 + (9 * y - 3) ** 2) / 4)
        - 0.2 * np.exp(-((9 * x - 4) ** 2) - (9 * y - 7) ** 2)
    )


def make_franke(n_samples, random_state=0):
    """Uniform random inputs on [0, 1]^2 and exact Franke targets.

    Parameters
    ----------
    n_samples : int
        Number of samples.

    random_state : int, default=0
        Seed of the input sampling.

    Returns
    -------
    X : ndarray of shape (n_samples, 2)
    y : ndarray of shape (n_samples,)
    """
    rng = np.random.default_rng(random_state)
    X = rng.random((n_samples, 2))
    return X, franke(X[:, 0], X[:, 1])


def make_models(quick=False, n_jobs=None):
    """The compared models, as an ordered dict name -> unfitted estimator."""
    return {
        "HierarchicalPOURegressor() (defaults)": HierarchicalPOURegressor(
            n_jobs=n_jobs, random_state=0
        ),
        "HierarchicalPOURegressor(partitions=(8, 4), degree=4)": (
            HierarchicalPOURegressor(
                partitions=(8, 4), degree=4, n_jobs=n_jobs, random_state=0
            )
        ),
        "MLPRegressor(50, 50), Adam": MLPRegressor(
            hidden_layer_sizes=(50, 50),
            max_iter=40 if quick else 100,
            n_iter_no_change=100,  # run all epochs: the loss still falls slowly
            random_state=0,
        ),
        "HistGradientBoostingRegressor": HistGradientBoostingRegressor(
            max_iter=100 if quick else 200, early_stopping=False, random_state=0
        ),
        "SplineTransformer + Ridge": make_pipeline(
            SplineTransformer(n_knots=12, degree=3),
            # pairwise products of the 1-D splines: a tensor-product basis
            PolynomialFeatures(degree=2, interaction_only=True, include_bias=False),
            Ridge(alpha=1e-8),
        ),
        "KNeighborsRegressor(5, distance)": KNeighborsRegressor(
            n_neighbors=5, weights="distance", n_jobs=n_jobs
        ),
    }


def relative_l2_error(y_true, y_pred):
    """``||y_pred - y_true|| / ||y_true||``."""
    return float(np.linalg.norm(y_pred - y_true) / np.linalg.norm(y_true))


def run(n_samples=10_000, n_test=10_000, quick=False, n_jobs=None, file=None):
    """Fit every model and print the Markdown table.

    Returns
    -------
    rows : list of (name, relative L2 test error, fit time in seconds)
    """
    file = sys.stdout if file is None else file
    # Every model gets the same number of threads: joblib threads for the POU
    # network and k-NN, and OpenMP/BLAS threads (gradient boosting, MLP,
    # Ridge) capped by threadpoolctl. Oversubscribed OpenMP on a busy
    # machine would otherwise make timings meaningless.
    if n_jobs is None:
        n_threads = 1
    elif n_jobs < 0:
        n_threads = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    else:
        n_threads = n_jobs
    X, y = make_franke(n_samples, random_state=0)
    X_test, y_test = make_franke(n_test, random_state=1)

    start = time.perf_counter()
    X_tiny, y_tiny = make_franke(200, random_state=2)
    with warnings.catch_warnings():  # one cycle is all the compilation needs
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        HierarchicalPOURegressor(partitions=(2, 2), degree=1, n_cycles=1).fit(
            X_tiny, y_tiny
        )
    warmup = time.perf_counter() - start

    print(
        f"Franke's function on [0, 1]^2: {n_samples} training samples, "
        f"{n_test} test samples (noise-free); {n_threads} thread(s) per model "
        f"on {os.cpu_count()} CPUs.",
        file=file,
    )
    print(
        f"Numba kernels compiled or loaded from cache in {warmup:.1f} s "
        "(not included below).\n",
        file=file,
    )
    print("| model | relative L2 test error | fit time (s) |", file=file)
    print("|---|---:|---:|", file=file)
    rows = []
    for name, model in make_models(quick=quick, n_jobs=n_jobs).items():
        start = time.perf_counter()
        with warnings.catch_warnings(), threadpool_limits(limits=n_threads):
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            model.fit(X, y)
        fit_time = time.perf_counter() - start
        with threadpool_limits(limits=n_threads):
            error = relative_l2_error(y_test, model.predict(X_test))
        rows.append((name, error, fit_time))
        print(f"| {name} | {error:.2e} | {fit_time:.2f} |", file=file, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m skpou.demo",
        description=(
            "Fit HierarchicalPOURegressor to Franke's 2-D function and compare "
            "its test error and fit time with scikit-learn regressors."
        ),
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help="training samples (default: 10000, or 2000 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller data and cheaper peers, for a smoke test",
    )
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help=(
            "threads per model: joblib n_jobs for the POU network and k-NN, "
            "OpenMP/BLAS limit for the others (default: 1)"
        ),
    )
    args = parser.parse_args(argv)
    n_samples = args.n_samples
    if n_samples is None:
        n_samples = 2_000 if args.quick else 10_000
    if n_samples < 50:
        parser.error("--n-samples must be at least 50")
    run(
        n_samples=n_samples,
        n_test=2_000 if args.quick else 10_000,
        quick=args.quick,
        n_jobs=args.n_jobs,
    )


if __name__ == "__main__":
    main()
