"""skpou._data: canonical row order, scaling, the EM subsample."""

import numpy as np

from skpou._data import Scaling, em_subsample, prepare


def test_prepare_scales_sorts_and_counts_distinct_rows():
    rng = np.random.default_rng(0)
    X = rng.uniform(-5, 3, (50, 2))
    X = np.vstack([X, X[:10]])  # 10 repeated rows
    Y = 3.0 + 2.0 * rng.standard_normal((60, 1))
    w = rng.uniform(0.5, 2.0, 60)
    data, scaling, n_distinct = prepare(X, Y, w)
    assert n_distinct == 50
    np.testing.assert_allclose(data.X.min(axis=0), -1.0)
    np.testing.assert_allclose(data.X.max(axis=0), 1.0)
    np.testing.assert_allclose(np.average(data.Y, axis=0, weights=data.sample_weight), 0.0,
                               atol=1e-14)
    np.testing.assert_allclose(np.average(data.Y**2, axis=0, weights=data.sample_weight), 1.0)
    # rows sorted lexicographically, weights and targets kept with their rows
    assert np.all(np.diff(data.X[:, 0]) >= 0)
    np.testing.assert_allclose(np.sort(scaling.inputs(X)[:, 0]), data.X[:, 0])


def test_prepare_does_not_depend_on_row_order_and_drops_unweighted_rows():
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(40, 3))
    Y = rng.standard_normal((40, 2))
    w = rng.uniform(size=40)
    w[5] = 0.0
    X[5] = 1e200  # a row without weight, far away: it takes no part
    perm = rng.permutation(40)
    first, scaling, _ = prepare(X, Y, w)
    second, _, _ = prepare(X[perm], Y[perm], w[perm])
    assert first.n_samples == 39
    np.testing.assert_array_equal(first.X, second.X)
    np.testing.assert_allclose(first.Y, second.Y, rtol=1e-14, atol=1e-14)
    assert scaling.x_scale.max() < 1


def test_scaling_survives_values_near_the_float_range():
    X = np.array([[-1e308], [1e308]])
    Y = np.array([[1e308], [-1e308]])
    scaling = Scaling.fit(X, Y, np.ones(2))
    assert np.all(np.isfinite([scaling.x_offset, scaling.x_scale, scaling.y_offset, scaling.y_scale]))
    np.testing.assert_allclose(scaling.inputs(X)[:, 0], [-1.0, 1.0])


def test_em_subsample_is_seeded_and_keeps_row_order():
    rng = np.random.default_rng(2)
    data, _, _ = prepare(rng.uniform(size=(1000, 1)), rng.standard_normal((1000, 1)), np.ones(1000))
    assert em_subsample(data, None, np.random.RandomState(0)) is data
    assert em_subsample(data, 1000, np.random.RandomState(0)) is data
    a = em_subsample(data, 100, np.random.RandomState(0))
    b = em_subsample(data, 100, np.random.RandomState(0))
    assert a.n_samples == 100
    np.testing.assert_array_equal(a.X, b.X)
    assert np.all(np.diff(a.X[:, 0]) >= 0)
