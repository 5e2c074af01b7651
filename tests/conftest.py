"""Fixtures shared by the test modules: a small 2-D problem and a fast
fixed-tree fit of it (``FAST``)."""

import numpy as np
import pytest

from skpou import HierarchicalPOURegressor

FAST = dict(partitions=(2, 2), degree=2, n_cycles=5, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (60, 2))
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
    return X, y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return HierarchicalPOURegressor(**FAST).fit(X, y)
