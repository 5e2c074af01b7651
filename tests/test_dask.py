"""Dask input: out-of-core fit and lazy predict, on a real LocalCluster.

Two worker processes (not threads, not a mock): chunks are pickled to
them, the fitted tree is shipped to them, and a killed worker is
recomputed by the scheduler. The data are small; what is checked is that
the Dask path gives the NumPy path's model.
"""

import os
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402  (a dependency of distributed)
import joblib  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

from skpou import HierarchicalPOURegressor  # noqa: E402
from skpou._dask import DaskRows  # noqa: E402
from skpou._parallel import ROWS_PER_BLOCK, Threads  # noqa: E402

# Workers unpickle functions of this module (the chunk loaders below) by
# value: they cannot import the test module by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = dict(partitions=(3, 2), degree=3, n_cycles=3, random_state=0)


def target(X):
    return np.sin(3 * X[:, 0]) * np.exp(-X[:, 1]) + 0.3 * X[:, 1] ** 2


def sample(n, seed, noise=0.0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 2))
    return X, target(X) + noise * rng.standard_normal(n)


def rel_l2(pred, y):
    return np.linalg.norm(pred - y) / np.linalg.norm(y)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def chunked(array, rows):
    return da.from_array(array, chunks=(rows,) + array.shape[1:])


def test_fit_equals_numpy_fit_when_all_rows_are_in_the_em_subsample(client):
    X, y = sample(6_000, seed=0)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 2.0, X.shape[0])
    w[::9] = 0.0
    X_far = X.copy()
    X_far[::9] = 1e6  # rows without weight, far outside: they take no part
    Y = np.column_stack([y, np.cos(2 * X[:, 1])])
    X_test, _ = sample(3_000, seed=2)
    for inputs, weights, targets in ((X, None, y), (X_far, w, Y)):
        in_memory = HierarchicalPOURegressor(**FAST).fit(inputs, targets, weights)
        on_dask = HierarchicalPOURegressor(**FAST).fit(
            chunked(inputs, 1_000), chunked(targets, 1_000),
            None if weights is None else chunked(weights, 1_000),
        )
        expected = in_memory.predict(X_test, return_std=True)
        # the std's calibration factor is one row's standardized error (a
        # quantile), with the round-off of a residual ~1e-5: 1e-9 relative
        for got, want, rtol in zip(on_dask.predict(X_test, return_std=True), expected,
                                   (1e-10, 1e-8)):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
        assert on_dask.n_features_in_ == 2 and on_dask.n_outputs_ == targets.ndim


def test_bayesian_root_out_of_core_equals_the_numpy_fit(client):
    # early_stopping=False: the Bayesian root is the fit. Its search runs on
    # the rows drawn into memory (all of them here), its final fit streams
    # the chunks (the kernel's normal equations, against moments in memory).
    X, y = sample(3_000, seed=5, noise=0.01)
    w = np.random.default_rng(6).uniform(0.5, 2.0, X.shape[0])
    X_test, _ = sample(2_000, seed=7)
    params = dict(early_stopping=False, random_state=0)
    in_memory = HierarchicalPOURegressor(**params).fit(X, y, w)
    on_dask = HierarchicalPOURegressor(**params).fit(
        chunked(X, 1_000), chunked(y, 1_000), chunked(w, 1_000))
    assert in_memory.tree_.prior is not None and on_dask.tree_.prior is not None
    for got, want in zip(on_dask.predict(X_test, return_std=True),
                         in_memory.predict(X_test, return_std=True)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8 * np.abs(want).max())


def test_a_small_em_subsample_does_not_make_a_fixed_tree_underdetermined(client):
    # Out of core, the distinct rows are counted in the EM subsample only;
    # all 2000 rows determine the 96 unknowns, 60 would not.
    X, y = sample(2_000, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HierarchicalPOURegressor(partitions=(4, 4), degree=2, n_cycles=1, em_subsample=60,
                                 random_state=0).fit(chunked(X, 500), chunked(y, 500))
    assert not [w for w in caught if "unknowns per output" in str(w.message)]


def test_fit_on_a_subsample_is_as_accurate_as_the_numpy_fit(client):
    # Noisy data: test errors (against the noise-free target) are then
    # stable across EM subsamples, which differ between the two paths.
    X, y = sample(40_000, seed=3, noise=0.02)
    X_test, y_test = sample(20_000, seed=4)
    params = dict(FAST, em_subsample=5_000)
    in_memory = HierarchicalPOURegressor(**params).fit(X, y)
    on_dask = HierarchicalPOURegressor(**params).fit(chunked(X, 7_000), chunked(y, 7_000))
    numpy_error = rel_l2(in_memory.predict(X_test), y_test)
    dask_error = rel_l2(on_dask.predict(X_test), y_test)
    assert dask_error <= 1.2 * numpy_error, (dask_error, numpy_error)


def test_predict_on_dask_is_lazy_and_equals_predict_on_numpy(client):
    X, y = sample(3_000, seed=5)
    model = HierarchicalPOURegressor(**FAST).fit(X, y)
    X_test, _ = sample(5_000, seed=6)
    X_dask = chunked(X_test, 1_300)
    mean = model.predict(X_dask)
    assert isinstance(mean, da.Array) and mean.chunks == (X_dask.chunks[0],)
    np.testing.assert_array_equal(mean.compute(), model.predict(X_test))
    mean, std = model.predict(X_dask, return_std=True)
    mean, std = dask.compute(mean, std)
    expected_mean, expected_std = model.predict(X_test, return_std=True)
    np.testing.assert_array_equal(mean, expected_mean)
    np.testing.assert_array_equal(std, expected_std)
    with pytest.raises(ValueError, match="features"):
        model.predict(chunked(X_test[:, :1], 1_300))
    gates = model.predict_partitions(X_dask, level=1)
    assert isinstance(gates, da.Array)
    np.testing.assert_array_equal(gates.compute(), model.predict_partitions(X_test, level=1))
    with pytest.raises(ValueError, match="level"):
        model.predict_partitions(X_dask, level=5)


def test_same_chunks_give_bit_identical_models_on_any_scheduler(client):
    X, y = sample(30_000, seed=7, noise=0.01)
    X_dask, y_dask = chunked(X, 4_000), chunked(y, 4_000)
    params = dict(FAST, em_subsample=4_000)
    X_test, _ = sample(2_000, seed=8)
    on_cluster = HierarchicalPOURegressor(**params).fit(X_dask, y_dask).predict(X_test)
    again = HierarchicalPOURegressor(**params).fit(X_dask, y_dask).predict(X_test)
    np.testing.assert_array_equal(again, on_cluster)
    for scheduler in ("synchronous", "threads"):
        with dask.config.set(scheduler=scheduler):
            local = HierarchicalPOURegressor(**params).fit(X_dask, y_dask).predict(X_test)
        np.testing.assert_array_equal(local, on_cluster)


# Reads of one chunk, counted in files (the workers are separate processes);
# its READS_BEFORE_KILL-th read kills the worker process doing it.
READS_BEFORE_KILL = 4  # validation, subsample, refit of the finest experts: then the polish


def load_chunk(block, directory, kill_chunk):
    """Rows of the data set, with the side effect of the fault test."""
    index = int(block[0, 0])
    X, y = sample(40_000, seed=9, noise=0.01)
    rows = slice(index * 5_000, (index + 1) * 5_000)
    if directory is not None and index == kill_chunk:
        counter = os.path.join(directory, f"reads-{index}")
        with open(counter, "a") as f:
            f.write(".")
        if os.path.getsize(counter) == READS_BEFORE_KILL:
            os.kill(os.getpid(), signal.SIGKILL)
    return np.column_stack([X[rows], y[rows]])


def loaded_data(directory=None, kill_chunk=3):
    indices = da.arange(8, chunks=1).reshape(8, 1).astype(float)
    table = indices.map_blocks(
        load_chunk, directory, kill_chunk, chunks=((5_000,) * 8, (3,)), dtype=float,
    )
    return table[:, :2], table[:, 2]


def test_fit_survives_a_killed_worker_and_gives_the_same_model(client, tmp_path):
    params = dict(FAST, em_subsample=5_000)
    X_test, _ = sample(2_000, seed=10)
    expected = HierarchicalPOURegressor(**params).fit(*loaded_data()).predict(X_test)
    workers_before = set(client.scheduler_info()["workers"])
    model = HierarchicalPOURegressor(**params).fit(*loaded_data(str(tmp_path)))
    # the chunk was read again after its worker died mid-pass
    assert os.path.getsize(tmp_path / "reads-3") > READS_BEFORE_KILL
    np.testing.assert_array_equal(model.predict(X_test), expected)
    client.wait_for_workers(2, timeout=60)
    assert set(client.scheduler_info()["workers"]) != workers_before  # one was replaced


def test_a_chunk_with_nan_raises_a_clear_error_and_the_cluster_goes_on(client):
    X, y = sample(10_000, seed=11)
    X[7_500, 1] = np.nan
    outcome = {}

    def fit():
        try:
            HierarchicalPOURegressor(**FAST).fit(chunked(X, 2_000), chunked(y, 2_000))
        except ValueError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=fit)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the fit hung"
    assert "Input X contains NaN or infinity in chunk 3 (rows 6000 to 7999)" in outcome["error"]
    assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    with pytest.raises(ValueError, match="NaN or infinity"):
        model = HierarchicalPOURegressor(**FAST).fit(X[:6_000], y[:6_000])
        model.predict(chunked(X, 2_000)).compute()


def test_invalid_dask_input_raises_before_any_fit(client):
    X, y = sample(2_000, seed=12)
    model = HierarchicalPOURegressor(**FAST)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        model.fit(chunked(X, 500), chunked(y[:1_500], 500))
    w = np.ones(2_000)
    w[1_200] = -1.0
    with pytest.raises(ValueError, match="Negative values in sample_weight in chunk 2"):
        model.fit(chunked(X, 500), y, chunked(w, 500))
    with pytest.raises(ValueError, match="sums to zero"):
        model.fit(chunked(X, 500), y, np.zeros(2_000))
    assert not hasattr(model, "tree_")


def test_dask_rows_map_and_sum_equal_the_threads(client):
    rng = np.random.default_rng(13)
    X = rng.standard_normal((3 * ROWS_PER_BLOCK + 17, 3))
    w = rng.uniform(size=X.shape[0])

    def moments(X, w):
        return w @ X, (w[:, None] * X).T @ X

    # the same sums, up to round-off: rows are added in another order (each
    # chunk's rows are put in slabs of the first column first)
    rows = DaskRows(Threads())
    for got, want in zip(rows.sum(moments, chunked(X, 5_000), chunked(w, 5_000)),
                         Threads().sum(moments, X, w)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-11)
    mapped = dask.compute(rows.map(lambda X, w: X[:, 0] * w, chunked(X, 5_000), chunked(w, 5_000)))[0]
    np.testing.assert_array_equal(np.concatenate([b for chunk in mapped for b in chunk]), X[:, 0] * w)
    # NumPy arrays go to the local threads
    np.testing.assert_array_equal(rows.sum(moments, X, w)[0], Threads().sum(moments, X, w)[0])
    assert rows.total(chunked(w, 5_000)) == pytest.approx(w.sum(), rel=1e-14)


def test_grid_search_on_the_joblib_dask_backend(client):
    X, y = sample(1_500, seed=14, noise=0.01)
    grid = {"degree": [1, 3]}
    search = GridSearchCV(HierarchicalPOURegressor(**FAST), grid, cv=3)
    with joblib.parallel_backend("dask"):
        on_dask = search.fit(X, y)
    local = GridSearchCV(HierarchicalPOURegressor(**FAST), grid, cv=3).fit(X, y)
    np.testing.assert_allclose(on_dask.cv_results_["mean_test_score"],
                               local.cv_results_["mean_test_score"], rtol=1e-12)
    assert on_dask.best_params_ == {"degree": 3}


def test_dask_dataframe_input_keeps_feature_names(client):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    X, y = sample(4_000, seed=15)
    frame = pd.DataFrame(X, columns=["voltage", "temperature"])
    model = HierarchicalPOURegressor(**FAST).fit(
        dd.from_pandas(frame, npartitions=4), dd.from_pandas(pd.Series(y), npartitions=4)
    )
    assert list(model.feature_names_in_) == ["voltage", "temperature"]
    expected = HierarchicalPOURegressor(**FAST).fit(frame, y).predict(frame)
    got = model.predict(dd.from_pandas(frame, npartitions=4)).compute()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_the_core_import_does_not_import_dask():
    code = (
        "import sys, numpy as np\n"
        "from skpou import HierarchicalPOURegressor\n"
        "X = np.linspace(0, 1, 200)[:, None]\n"
        "HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, X[:, 0]).predict(X)\n"
        "assert 'dask' not in sys.modules, 'skpou imported dask'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_fitted_model_pickles_without_dask_objects(client):
    import pickle

    X, y = sample(3_000, seed=16)
    model = HierarchicalPOURegressor(**FAST).fit(chunked(X, 1_000), chunked(y, 1_000))
    restored = pickle.loads(pickle.dumps(model))
    assert "dask" not in pickle.dumps(model).decode("latin-1")
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))


def test_slab_order_is_a_stable_permutation_into_increasing_slabs():
    from skpou._dask import slab_order

    values = np.random.default_rng(17).uniform(-1, 1, 50_000)
    values[::10] = 0.25  # ties keep their order
    order = slab_order(values, n_slabs=64)
    assert np.array_equal(np.sort(order), np.arange(values.size))
    low, high = values.min(), values.max()
    slab = ((values[order] - low) * (63 / (high - low))).astype(int)
    assert np.all(np.diff(slab) >= 0)
    ties = order[values[order] == 0.25]
    assert np.all(np.diff(ties) > 0)
    np.testing.assert_array_equal(slab_order(np.ones(5)), np.arange(5))
