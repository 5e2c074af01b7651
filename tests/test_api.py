"""Public API of HierarchicalPOURegressor: scikit-learn integration and the
estimator's own methods and attributes."""

import inspect
import pickle
import re
from math import comb

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

import skpou._experts
from skpou import HierarchicalPOURegressor

INIT_PARAMS = {
    "partitions", "degree", "gate", "gate_hidden_sizes", "sigma", "alpha",
    "n_cycles", "tol", "n_jobs", "random_state", "verbose", "warm_start",
}


def smooth(x):
    return np.sin(2 * np.pi * x) + 0.5 * x**2


@pytest.fixture(scope="module")
def data_1d():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (300, 1))
    X_test = rng.uniform(0, 1, (200, 1))
    return X, smooth(X[:, 0]), X_test, smooth(X_test[:, 0])


@pytest.fixture(scope="module")
def data_2d():
    rng = np.random.RandomState(1)
    X = rng.uniform(-1, 1, (300, 2))
    y = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + X[:, 1] ** 2
    return X, y


@pytest.fixture(scope="module")
def fitted_2d(data_2d):
    X, y = data_2d
    return HierarchicalPOURegressor(partitions=(3, 2), degree=2, random_state=0).fit(X, y)


def relative_error(prediction, truth):
    return np.linalg.norm(prediction - truth) / np.linalg.norm(truth)


# --------------------------------------------------------- params and clone


def test_get_params_lists_every_init_parameter():
    params = HierarchicalPOURegressor().get_params()
    assert INIT_PARAMS <= set(params)
    signature = inspect.signature(HierarchicalPOURegressor.__init__)
    defaults = {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name != "self"
    }
    assert params == defaults


def test_set_params_returns_self_and_changes_params():
    model = HierarchicalPOURegressor()
    assert model.set_params(partitions=(3,), degree=1, sigma="em") is model
    params = model.get_params()
    assert params["partitions"] == (3,)
    assert params["degree"] == 1
    assert params["sigma"] == "em"
    with pytest.raises(ValueError, match="Invalid parameter"):
        model.set_params(not_a_parameter=1)


def test_clone_copies_params_and_drops_fitted_state(data_1d):
    X, y, _, _ = data_1d
    model = HierarchicalPOURegressor(partitions=(4,), degree=2, alpha=1e-8, random_state=3)
    model.fit(X, y)
    copy = clone(model)
    assert copy is not model
    assert copy.get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    # The clone refits to exactly the same model.
    np.testing.assert_array_equal(copy.fit(X, y).predict(X), model.predict(X))


def test_pickle_round_trip_gives_identical_predictions(fitted_2d, data_2d):
    X, _ = data_2d
    restored = pickle.loads(pickle.dumps(fitted_2d))
    np.testing.assert_array_equal(restored.predict(X), fitted_2d.predict(X))
    for got, expected in zip(
        restored.predict(X, return_std=True), fitted_2d.predict(X, return_std=True)
    ):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        restored.predict_partitions(X, level=1), fitted_2d.predict_partitions(X, level=1)
    )


def test_fitted_attributes(fitted_2d):
    model = fitted_2d
    assert model.n_features_in_ == 2
    assert model.n_outputs_ == 1
    assert not hasattr(model, "feature_names_in_")  # fitted on a numpy array
    # One level per tree level, root included: 1, 3 and 6 nodes.
    n_basis = 6  # degree 2 in 2 dimensions
    levels = model.tree_.levels
    assert len(levels) == 3
    for level, n_nodes in zip(levels, (1, 3, 6)):
        assert level.coef.shape == (n_nodes, n_basis, 1)
        assert np.all(np.isfinite(level.coef))
    assert levels[0].gate_params is None
    assert levels[1].gate_params.shape == (3, 3)  # affine logits in 2-D
    np.testing.assert_array_equal(levels[2].child_start, [0, 2, 4, 6])
    # Noise variances of the finest experts (the ones predict uses).
    assert model.noise_var_.shape == (6, 1)
    assert np.all(model.noise_var_ >= 0) and np.all(np.isfinite(model.noise_var_))


# ------------------------------------------------- scikit-learn composition


def test_pipeline_with_standard_scaler(data_1d):
    X, y, X_test, y_test = data_1d
    # Features far from unit scale: the pipeline standardizes them.
    pipe = make_pipeline(
        StandardScaler(), HierarchicalPOURegressor(partitions=(4,), degree=3)
    )
    pipe.fit(1e3 * X + 5e3, y)
    assert relative_error(pipe.predict(1e3 * X_test + 5e3), y_test) < 5e-3
    assert pipe.score(1e3 * X_test + 5e3, y_test) > 0.9999
    # The scaler only changes the units: the same model as on [0, 1] data
    # (up to round-off carried through the EM iterations).
    direct = HierarchicalPOURegressor(partitions=(4,), degree=3).fit(X, y)
    np.testing.assert_allclose(
        pipe.predict(1e3 * X_test + 5e3), direct.predict(X_test), rtol=0, atol=1e-6
    )


def test_grid_search_over_partitions_and_degree(data_1d):
    X, y, X_test, y_test = data_1d
    search = GridSearchCV(
        HierarchicalPOURegressor(n_cycles=5),
        {"partitions": [(2,), (2, 2)], "degree": [0, 3]},
        cv=KFold(3, shuffle=True, random_state=0),
    )
    search.fit(X, y)
    assert search.best_params_["degree"] == 3
    assert search.cv_results_["mean_test_score"].shape == (4,)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_score_ > 0.99
    assert search.best_estimator_.score(X_test, y_test) > 0.99


def test_cross_val_score(data_1d):
    X, y, _, _ = data_1d
    scores = cross_val_score(
        HierarchicalPOURegressor(partitions=(4,), degree=3),
        X, y, cv=KFold(4, shuffle=True, random_state=0),
    )
    assert scores.shape == (4,)
    assert np.all(scores > 0.999)


def test_n_jobs_gives_bit_identical_predictions():
    # More rows than one row block (ROWS_PER_BLOCK), and enough nodes and basis
    # functions for the threaded solves: both parallel paths are exercised.
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (9000, 2))
    y = np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.01 * rng.randn(9000)
    X_test = rng.uniform(0, 1, (500, 2))
    results = []
    for n_jobs in (1, 2):
        model = HierarchicalPOURegressor(
            partitions=(4, 3), degree=6, n_cycles=1, random_state=0, n_jobs=n_jobs
        ).fit(X, y)
        results.append(
            (*model.predict(X_test, return_std=True), model.predict_partitions(X_test))
        )
    for serial, threaded in zip(*results):
        np.testing.assert_array_equal(serial, threaded)


def test_blas_threads_do_not_change_the_fit():
    # BLAS is held to one thread inside fit and predict, whatever the caller
    # set; a polish of 12 x 28 unknowns goes through BLAS products.
    from threadpoolctl import threadpool_limits

    rng = np.random.RandomState(1)
    X = rng.uniform(0, 1, (5000, 2))
    y = np.exp(X[:, 0]) * np.sin(4 * X[:, 1])
    predictions = []
    for blas_threads in (1, 2):
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            model = HierarchicalPOURegressor(partitions=(4, 3), degree=6, n_cycles=1)
            predictions.append(model.fit(X, y).predict(X))
    np.testing.assert_array_equal(*predictions)


# ------------------------------------------------------------ feature names


def test_feature_names_with_dataframe(data_2d):
    pd = pytest.importorskip("pandas")
    X, y = data_2d
    frame = pd.DataFrame(X, columns=["a", "b"])
    model = HierarchicalPOURegressor(partitions=(2,), degree=1).fit(frame, y)
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b"])
    np.testing.assert_array_equal(model.predict(frame), model.predict(X))
    with pytest.raises(ValueError, match="feature names"):
        model.predict(pd.DataFrame(X, columns=["b", "a"]))


def test_no_feature_names_for_arrays(fitted_2d, data_2d):
    X, _ = data_2d
    assert not hasattr(fitted_2d, "feature_names_in_")
    fitted_2d.predict(X.tolist())  # lists work too


# ------------------------------------------------------------ sample weight


def test_integer_sample_weight_equals_repeated_rows():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (300, 1))
    y = smooth(X[:, 0])
    weight = rng.randint(0, 4, size=300)  # zeros included: rows dropped
    X_test = np.linspace(0, 1, 101)[:, None]
    for partitions in [(4,), (2, 2)]:
        weighted = HierarchicalPOURegressor(partitions=partitions, degree=3)
        weighted.fit(X, y, sample_weight=weight)
        repeated = HierarchicalPOURegressor(partitions=partitions, degree=3)
        repeated.fit(np.repeat(X, weight, axis=0), np.repeat(y, weight))
        np.testing.assert_allclose(
            weighted.predict(X_test), repeated.predict(X_test), rtol=1e-6, atol=0
        )


def test_sample_weight_scale_does_not_matter(data_1d):
    X, y, X_test, _ = data_1d
    weight = np.random.RandomState(0).uniform(0.5, 2.0, X.shape[0])
    model = HierarchicalPOURegressor(partitions=(2, 2), degree=3)
    first = model.fit(X, y, sample_weight=weight).predict(X_test)
    second = model.fit(X, y, sample_weight=1000.0 * weight).predict(X_test)
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-9)


def test_sample_weight_focuses_the_fit():
    # A degree-0, one-partition model is a weighted mean.
    X = np.linspace(0, 1, 10)[:, None]
    y = np.arange(10.0)
    weight = np.arange(1.0, 11.0)
    model = HierarchicalPOURegressor(partitions=(1,), degree=0)
    model.fit(X, y, sample_weight=weight)
    np.testing.assert_allclose(model.predict(X), np.average(y, weights=weight), rtol=1e-10)


# ------------------------------------------------------------- multi-output


def test_multi_output_matches_single_output_quality(data_1d):
    X, _, X_test, _ = data_1d

    def targets(x):
        return np.c_[np.sin(2 * np.pi * x[:, 0]), np.exp(x[:, 0]) * x[:, 0] ** 2]

    Y, Y_test = targets(X), targets(X_test)
    params = dict(partitions=(4, 2), degree=3, random_state=0)
    joint = HierarchicalPOURegressor(**params).fit(X, Y)
    prediction = joint.predict(X_test)
    assert prediction.shape == (X_test.shape[0], 2)
    assert joint.n_outputs_ == 2
    mean, std = joint.predict(X_test, return_std=True)
    assert mean.shape == std.shape == (X_test.shape[0], 2)
    for column in range(2):
        single = HierarchicalPOURegressor(**params).fit(X, Y[:, column])
        single_error = relative_error(single.predict(X_test), Y_test[:, column])
        joint_error = relative_error(prediction[:, column], Y_test[:, column])
        assert joint_error < 1e-3
        # Sharing partitions costs at most a small factor per column.
        assert joint_error < 3 * single_error + 1e-12


def test_multi_output_column_scales_are_independent(data_1d):
    # Outputs of very different scales share partitions; each is standardized
    # on its own, so the two columns (one function at two scales) are fitted
    # identically.
    X, _, X_test, _ = data_1d
    Y = np.c_[1e6 * smooth(X[:, 0]), 1e-6 * smooth(X[:, 0])]
    prediction = HierarchicalPOURegressor(partitions=(4,), degree=3).fit(X, Y).predict(X_test)
    np.testing.assert_allclose(prediction[:, 0] / 1e6, prediction[:, 1] / 1e-6, rtol=1e-9, atol=1e-12)
    assert relative_error(prediction[:, 1] / 1e-6, smooth(X_test[:, 0])) < 5e-3


def test_two_dimensional_y_with_one_column_keeps_its_shape(data_1d):
    X, y, X_test, _ = data_1d
    model = HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, y[:, None])
    mean, std = model.predict(X_test, return_std=True)
    assert mean.shape == std.shape == (X_test.shape[0], 1)
    flat = HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, y)
    np.testing.assert_allclose(mean[:, 0], flat.predict(X_test), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------ predictive std


def test_return_std_shape_and_values(fitted_2d, data_2d):
    X, _ = data_2d
    mean, std = fitted_2d.predict(X, return_std=True)
    assert mean.shape == std.shape == (X.shape[0],)
    assert np.all(np.isfinite(std))
    assert np.all(std >= 0)
    np.testing.assert_array_equal(mean, fitted_2d.predict(X))


@pytest.mark.parametrize("polish", [True, False])
def test_return_std_follows_heteroscedastic_noise(polish):
    rng = np.random.RandomState(0)
    n = 2000
    X = rng.uniform(0, 1, (n, 1))
    noise = np.where(X[:, 0] > 0.5, 0.3, 0.01)
    y = np.sin(2 * np.pi * X[:, 0]) + noise * rng.randn(n)
    # The noise jumps at x = 0.5: gates sharper than the default (which
    # favours smooth blends of the mean) keep the noisy partitions' tails
    # out of the quiet half. The default gives the right order but a quiet
    # median of ~0.06.
    model = HierarchicalPOURegressor(
        partitions=(4, 2), degree=2, gate_alpha=1e-4, polish=polish,
        random_state=0,
    )
    model.fit(X, y)
    # At least one partition width (1/8) away from the change at x = 0.5,
    # where overlapping gates blend the two noise levels.
    quiet = np.linspace(0.05, 0.35, 30)[:, None]
    noisy = np.linspace(0.65, 0.95, 30)[:, None]
    _, std_quiet = model.predict(quiet, return_std=True)
    _, std_noisy = model.predict(noisy, return_std=True)
    assert np.all(np.isfinite(std_quiet)) and np.all(std_quiet >= 0)
    # Larger where the noise was larger, everywhere, not just on average.
    assert std_noisy.min() > 3 * std_quiet.max()
    # And of the right size: the noise standard deviations 0.01 and 0.3.
    assert np.median(std_quiet) < 0.03
    assert 0.15 < np.median(std_noisy) < 0.6


# ------------------------------------------------------- predict_partitions


def test_predict_partitions_shapes_and_sums(fitted_2d, data_2d):
    X, _ = data_2d
    finest = fitted_2d.predict_partitions(X)
    assert finest.shape == (X.shape[0], 6)
    np.testing.assert_allclose(finest.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(finest >= 0)
    coarse = fitted_2d.predict_partitions(X, level=1)
    assert coarse.shape == (X.shape[0], 3)
    np.testing.assert_allclose(coarse.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    root = fitted_2d.predict_partitions(X, level=0)
    np.testing.assert_array_equal(root, np.ones((X.shape[0], 1)))
    np.testing.assert_array_equal(fitted_2d.predict_partitions(X, level=2), finest)
    np.testing.assert_array_equal(fitted_2d.predict_partitions(X, level=-2), coarse)
    np.testing.assert_array_equal(fitted_2d.predict_partitions(X, level=-3), root)


def test_predict_partitions_nest(fitted_2d, data_2d):
    # A coarse partition's probability is the sum over its children.
    X, _ = data_2d
    finest = fitted_2d.predict_partitions(X)
    coarse = fitted_2d.predict_partitions(X, level=1)
    np.testing.assert_allclose(
        finest.reshape(X.shape[0], 3, 2).sum(axis=2), coarse, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("level", [3, -4, 10, 1.0, "1", None])
def test_predict_partitions_bad_level(fitted_2d, data_2d, level):
    X, _ = data_2d
    with pytest.raises(ValueError, match="level"):
        fitted_2d.predict_partitions(X, level=level)


def test_predict_partitions_single_level():
    X = np.linspace(0, 1, 50)[:, None]
    model = HierarchicalPOURegressor(partitions=(5,), degree=1).fit(X, X[:, 0] ** 2)
    probabilities = model.predict_partitions(X)
    assert probabilities.shape == (50, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # The partitions split the data: every partition is the most likely one
    # somewhere.
    assert set(np.argmax(probabilities, axis=1)) == set(range(5))


# --------------------------------------------------------------- warm start


def test_warm_start_p_refinement_keeps_partitions(data_1d):
    X, y, X_test, y_test = data_1d
    model = HierarchicalPOURegressor(
        partitions=(8,), degree=1, random_state=0, warm_start=True
    ).fit(X, y)
    partitions = model.predict_partitions(X_test)
    coarse_error = relative_error(model.predict(X_test), y_test)
    errors = [coarse_error]
    for degree in (2, 3, 4):
        model.set_params(degree=degree, n_cycles=0).fit(X, y)
        np.testing.assert_array_equal(model.predict_partitions(X_test), partitions)
        assert model.n_iter_ == 0
        assert model.loss_curve_ == []
        errors.append(relative_error(model.predict(X_test), y_test))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < coarse_error / 20, errors


def test_warm_start_false_refits_from_scratch(data_1d):
    X, y, X_test, _ = data_1d
    fresh = HierarchicalPOURegressor(partitions=(4,), degree=3).fit(X, y)
    model = HierarchicalPOURegressor(partitions=(4,), degree=1).fit(X, y)
    model.set_params(degree=3).fit(X, y)
    np.testing.assert_array_equal(model.predict(X_test), fresh.predict(X_test))


def test_warm_start_with_new_tree_reinitializes(data_1d):
    # The old gates cannot serve a different tree: the fit starts afresh.
    X, y, X_test, _ = data_1d
    model = HierarchicalPOURegressor(partitions=(4,), degree=2, warm_start=True).fit(X, y)
    model.set_params(partitions=(3, 2)).fit(X, y)
    fresh = HierarchicalPOURegressor(partitions=(3, 2), degree=2).fit(X, y)
    assert model.predict_partitions(X_test).shape == (X_test.shape[0], 6)
    np.testing.assert_array_equal(model.predict(X_test), fresh.predict(X_test))


# ------------------------------------------------------ training diagnostics


def test_loss_curve_n_iter_converged_when_capped(data_2d):
    X, y = data_2d
    model = HierarchicalPOURegressor(partitions=(3, 2), degree=2, n_cycles=3, tol=0)
    model.fit(X, y)
    assert model.n_iter_ == 3
    assert model.converged_ is False
    assert len(model.loss_curve_) == 3
    assert all(isinstance(loss, float) and np.isfinite(loss) for loss in model.loss_curve_)
    # Negative mean log-likelihood of the standardized targets: a fit that
    # explains most of the variance has sigma << 1, so a loss well below the
    # 0.5 * log(2 pi) + 0.5 = 1.42 of predicting the mean with sigma = 1.
    assert model.loss_curve_[-1] < -1.0


def test_loss_curve_single_level_em_is_monotone(data_1d):
    # One level: every EM sweep is an ascent step of the likelihood, so the
    # negative log-likelihood never increases (up to round-off).
    X, y, _, _ = data_1d
    model = HierarchicalPOURegressor(partitions=(4,), degree=2, n_cycles=15, tol=0)
    losses = np.array(model.fit(X, y).loss_curve_)
    assert losses.shape == (15,)
    assert np.all(np.diff(losses) <= 1e-9 * np.maximum(np.abs(losses[:-1]), 1.0)), losses


def test_loss_curve_n_iter_converged_when_converging(data_1d):
    X, y, _, _ = data_1d
    tol = 1e-3
    model = HierarchicalPOURegressor(partitions=(4,), degree=3, n_cycles=200, tol=tol)
    model.fit(X, y)
    assert model.converged_ is True
    assert 2 <= model.n_iter_ < 200
    assert len(model.loss_curve_) == model.n_iter_
    losses = np.array(model.loss_curve_)
    assert np.all(np.isfinite(losses))
    # It stopped at the first cycle whose change was within tol (relative to
    # max(|loss|, 1), as documented), not before.
    changes = np.abs(np.diff(losses)) / np.maximum(np.abs(losses[1:]), 1.0)
    assert changes[-1] <= tol
    assert np.all(changes[:-1] > tol)


def test_n_cycles_zero_still_fits(data_1d):
    X, y, X_test, y_test = data_1d
    model = HierarchicalPOURegressor(partitions=(4,), degree=3, n_cycles=0).fit(X, y)
    assert model.n_iter_ == 0
    assert model.loss_curve_ == []
    assert model.converged_ is False
    assert relative_error(model.predict(X_test), y_test) < 1e-2


def test_verbose_prints_progress(capsys, data_1d):
    X, y, _, _ = data_1d
    model = HierarchicalPOURegressor(
        partitions=(2, 2), degree=2, n_cycles=3, tol=0, verbose=1
    ).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    cycle_lines = [line for line in lines if re.search(r"cycle \d+/3", line)]
    assert len(cycle_lines) == model.n_iter_ == 3
    assert all("loss=" in line for line in cycle_lines)
    assert all("HierarchicalPOURegressor" in line for line in lines)
    # every line carries the seconds since fit began, never decreasing,
    # and the last says what was fitted
    elapsed = [float(re.search(r"\]\s+(\d+\.\d+)s ", line).group(1)) for line in lines]
    assert elapsed == sorted(elapsed)
    assert lines[-1].endswith(f"done: {model.n_partitions_} partitions, degree {model.degree_}")


def test_verbose_reports_each_refinement_step(capsys, data_1d):
    X, y, _, _ = data_1d
    model = HierarchicalPOURegressor(random_state=0, verbose=1).fit(X, y)
    out = capsys.readouterr().out
    steps = re.findall(r"([hp])-step: (\d+) partitions, degree (\d+)", out)
    kinds = [step["kind"] for step in model.refinement_path_]
    assert [kind for kind, _, _ in steps] == [kind for kind in kinds if kind in ("h", "p")]
    # the Bayesian root is tried last, once, and says so
    assert kinds[-1] == "bayesian root" and kinds.count("bayesian root") == 1
    assert len(re.findall(r"bayesian root: \d+ functions, degree \d+", out)) == 1


def test_not_verbose_prints_nothing(capsys, data_1d):
    X, y, _, _ = data_1d
    HierarchicalPOURegressor(partitions=(2, 2), degree=2, n_cycles=3).fit(X, y)
    captured = capsys.readouterr()
    assert captured.out == ""


@pytest.mark.parametrize(
    "n_features, n_samples, expected",
    [(1, 200, 4), (2, 200, 4), (3, 200, 4), (4, 200, 3), (5, 200, 3),
     (6, 200, 2), (9, 200, 2), (10, 200, 1), (3, 20, 3), (3, 19, 2), (30, 15, 0)],
)
def test_auto_degree_follows_dimension_and_samples(n_features, n_samples, expected):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(n_samples, n_features))
    y = X.sum(axis=1) ** 2
    model = HierarchicalPOURegressor(partitions=(2,), n_cycles=0).fit(X, y)
    assert model.degree_ == expected
    assert model.powers_.shape[0] == comb(n_features + expected, expected)
    assert np.isfinite(model.predict(X)).all()


def test_explicit_degree_is_kept():
    X = np.linspace(0, 1, 50)[:, None]
    model = HierarchicalPOURegressor(partitions=(2,), degree=6, n_cycles=0)
    assert model.fit(X, X[:, 0]).degree_ == 6


@pytest.mark.parametrize(
    "gate, n_features, expected",
    [("linear", 1, 1e-2), ("linear", 2, 1e-2), ("linear", 3, 0.3),
     ("quadratic", 5, 0.3), ("mlp", 3, 1e-2)],
)
def test_auto_gate_alpha_follows_dimension_and_gate(gate, n_features, expected):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(300, n_features))
    model = HierarchicalPOURegressor(partitions=(2,), degree=1, gate=gate, n_cycles=1)
    assert model.fit(X, X.sum(axis=1)).gate_alpha_ == expected


def test_auto_gate_alpha_matches_the_explicit_value():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(400, 3))
    y = np.sin(X.sum(axis=1))
    auto = HierarchicalPOURegressor(partitions=(2, 2), degree=2).fit(X, y)
    explicit = HierarchicalPOURegressor(
        partitions=(2, 2), degree=2, gate_alpha=auto.gate_alpha_
    ).fit(X, y)
    assert explicit.gate_alpha_ == auto.gate_alpha_
    np.testing.assert_array_equal(auto.predict(X), explicit.predict(X))
    sharper = HierarchicalPOURegressor(partitions=(2, 2), degree=2, gate_alpha=1e-2).fit(X, y)
    assert not np.array_equal(auto.predict(X), sharper.predict(X))


# -------------------------------------------------------------- interrupts


def _interrupt_on_call(monkeypatch, n):
    """Make skpou._experts._solve_batch raise KeyboardInterrupt on its nth call."""
    original = skpou._experts._solve_batch
    calls = {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] >= n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(skpou._experts, "_solve_batch", interrupted)
    return calls


def test_interrupted_first_fit_leaves_estimator_unfitted(monkeypatch, data_2d):
    X, y = data_2d
    model = HierarchicalPOURegressor(partitions=(2, 2), degree=2, random_state=0)
    calls = _interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y)
    assert calls["count"] == 3
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    with pytest.raises(NotFittedError):
        model.predict(X)


def test_interrupted_refit_keeps_previous_model_or_unfits(monkeypatch, data_2d):
    X, y = data_2d
    model = HierarchicalPOURegressor(partitions=(2, 2), degree=2, random_state=0).fit(X, y)
    before = model.predict(X, return_std=True)
    calls = _interrupt_on_call(monkeypatch, 3)
    model.set_params(partitions=(3,), degree=3)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, 2 * y + 1)
    assert calls["count"] == 3
    monkeypatch.undo()
    try:
        check_is_fitted(model)
    except NotFittedError:
        return  # acceptable: the estimator is unfitted
    after = model.predict(X, return_std=True)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_fit_memory_does_not_grow_with_rows_times_partitions():
    # Past the EM subsample every pass over the rows is streamed in blocks:
    # no (n_samples, n_partitions) array is ever held. One such array here
    # would be 51 MB (1e5 rows x 64 partitions); the whole fit stays below
    # half of that (measured: 15 MB, with 2.4 MB of data).
    import tracemalloc

    rng = np.random.default_rng(0)
    n_samples, partitions = 100_000, (8, 8)
    X = rng.uniform(size=(n_samples, 2))
    y = np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1])
    model = HierarchicalPOURegressor(
        partitions=partitions, degree=1, em_subsample=10_000, n_cycles=1
    )
    clone(model).fit(X[:2000], y[:2000])  # loads the Numba kernels first
    tracemalloc.start()
    try:
        model.fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_row_by_partition_array = n_samples * np.prod(partitions) * 8
    assert peak < 0.5 * one_row_by_partition_array, peak
    assert np.isfinite(model.predict(X[:100])).all()
