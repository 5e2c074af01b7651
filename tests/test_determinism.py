"""Determinism: random_state, row order, threads, refits."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import FAST  # the fixtures data and fitted come from conftest too
from skpou import HierarchicalPOURegressor


# ------------------------------------------------------------ determinism


@pytest.mark.parametrize("gate", ["linear", "mlp"])
def test_same_random_state_gives_bit_identical_fits(data, gate):
    X, y = data
    params = dict(partitions=(2, 2), degree=2, gate=gate, n_cycles=3, random_state=7)
    first = HierarchicalPOURegressor(**params).fit(X, y)
    second = HierarchicalPOURegressor(**params).fit(X, y)
    threaded = HierarchicalPOURegressor(**params, n_jobs=2).fit(X, y)
    instance = HierarchicalPOURegressor(
        **{**params, "random_state": np.random.RandomState(7)}
    ).fit(X, y)
    expected = first.predict(X, return_std=True)
    for other in (second, threaded, instance):
        for got, want in zip(other.predict(X, return_std=True), expected):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "n_samples, n_features, degree, partitions",
    [(200, 2, 2, (3, 2)), (300, 1, 3, (4, 2)), (45, 30, 0, (2, 2))],
)
def test_row_order_does_not_change_the_fit(n_samples, n_features, degree, partitions):
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (n_samples, n_features))
    y = np.sin(3 * X[:, 0]) + X[:, -1] ** 2
    perm = rng.permutation(n_samples)
    params = dict(partitions=partitions, degree=degree, n_cycles=5, random_state=0)
    first = HierarchicalPOURegressor(**params).fit(X, y)
    second = HierarchicalPOURegressor(**params).fit(X[perm], y[perm])
    # Sums in another order round differently; the fit must not amplify that.
    np.testing.assert_allclose(second.predict(X), first.predict(X), rtol=0, atol=1e-7)


@pytest.mark.parametrize("gate_alpha", [None, 1e-20])
def test_repeated_rows_in_another_order_give_the_same_fit(gate_alpha):
    # The data of scikit-learn's sample-weight equivalence check: 15 points
    # in 30 dimensions (separable by a linear gate), rows repeated by
    # integer weights. Permuting the repeated rows must not change the fit,
    # with the default gate penalty or the tiny one meant for sharp gates.
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    y = rng.randint(0, 3, size=15).astype(float)
    weight = rng.randint(0, 5, size=15)
    X_rep, y_rep = X.repeat(weight, axis=0), y.repeat(weight)
    perm = np.random.RandomState(1).permutation(y_rep.size)
    params = dict(partitions=(2, 2), degree=0, n_cycles=3, random_state=0)
    if gate_alpha is not None:
        params["gate_alpha"] = gate_alpha
    first = HierarchicalPOURegressor(**params).fit(X_rep, y_rep)
    second = HierarchicalPOURegressor(**params).fit(X_rep[perm], y_rep[perm])
    np.testing.assert_allclose(second.predict(X), first.predict(X), rtol=0, atol=1e-7)


def test_refit_on_the_same_estimator_is_identical(data):
    X, y = data
    model = HierarchicalPOURegressor(**{**FAST, "gate": "mlp"})
    first = model.fit(X, y).predict(X)
    np.testing.assert_array_equal(model.fit(X, y).predict(X), first)


# ---------------------------------------------------------- thread safety


def test_concurrent_predict_matches_serial():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (300, 2))
    model = HierarchicalPOURegressor(partitions=(3, 2), degree=2, random_state=0)
    model.fit(X, np.sin(3 * X[:, 0]) * X[:, 1])
    X_test = rng.uniform(0, 1, (20000, 2))
    expected = model.predict(X_test, return_std=True)
    expected_gates = model.predict_partitions(X_test, level=1)
    barrier = threading.Barrier(4)

    def work(_):
        barrier.wait()
        return (
            model.predict(X_test, return_std=True),
            model.predict_partitions(X_test, level=1),
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for (mean, std), gates in results:
        np.testing.assert_array_equal(mean, expected[0])
        np.testing.assert_array_equal(std, expected[1])
        np.testing.assert_array_equal(gates, expected_gates)
