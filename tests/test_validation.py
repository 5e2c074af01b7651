"""Bad and extreme input: a clear ValueError, or a correct fit."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from conftest import FAST  # the fixtures data and fitted come from conftest too
from skpou import HierarchicalPOURegressor
from skpou._basis import total_degree_powers


def n_basis(n_features, degree):
    return total_degree_powers(n_features, degree).shape[0]


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize("where", ["X", "y"])
@pytest.mark.parametrize("value, message", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_non_finite_input_is_rejected(data, where, value, message):
    X, y = data[0].copy(), data[1].copy()
    if where == "X":
        X[3, 1] = value
    else:
        y[5] = value
    with pytest.raises(ValueError, match=f"Input {where} contains {message}"):
        HierarchicalPOURegressor(**FAST).fit(X, y)


def test_non_finite_input_at_predict_is_rejected(fitted, data):
    X = data[0].copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(X)
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict_partitions(X)


def test_missing_value_in_object_y_is_rejected(data):
    # None in an object array becomes NaN on conversion to float: it must be
    # rejected like NaN, not fitted into NaN predictions.
    X, y = data
    y = y.astype(object)
    y[3] = None
    with pytest.raises(ValueError):
        HierarchicalPOURegressor(**FAST).fit(X, y)


def test_one_dimensional_X_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match="Expected 2D array"):
        HierarchicalPOURegressor(**FAST).fit(X[:, 0], y)


def test_three_dimensional_input_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match="dim 3"):
        HierarchicalPOURegressor(**FAST).fit(X[:, :, None], y)
    with pytest.raises(ValueError, match="dim 3"):
        HierarchicalPOURegressor(**FAST).fit(X, y[:, None, None])


def test_y_of_wrong_length_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        HierarchicalPOURegressor(**FAST).fit(X, y[:-1])


def test_empty_input_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match="0 sample"):
        HierarchicalPOURegressor(**FAST).fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="0 feature"):
        HierarchicalPOURegressor(**FAST).fit(X[:, :0], y)


@pytest.mark.parametrize("n_features, degree", [(1, 3), (2, 2), (3, 1), (2, 4)])
def test_too_few_samples_for_the_basis(n_features, degree):
    m = n_basis(n_features, degree)
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (m, n_features))
    y = X.sum(axis=1)
    model = HierarchicalPOURegressor(partitions=(2,), degree=degree)
    # Exactly as many samples as basis functions: the degree asked for.
    assert np.all(np.isfinite(model.fit(X, y).predict(X)))
    assert model.degree_ == degree
    # One fewer: what the rows determine, with a warning (as a polynomial +
    # ridge pipeline fits, rather than refusing).
    with pytest.warns(UserWarning, match=f"{m} basis functions"):
        model.fit(X[:-1], y[:-1])
    assert model.degree_ < degree
    assert n_basis(n_features, model.degree_) <= m - 1
    # the (linear) target is still fitted where the lowered degree holds it
    if model.degree_ >= 1:
        np.testing.assert_allclose(model.predict(X[:-1]), y[:-1], atol=1e-6)


def test_a_fixed_tree_with_more_unknowns_than_samples_warns():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (300, 2))
    y = np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1]) + 0.05 * rng.standard_normal(300)
    # 64 partitions of 28 basis functions: 1792 unknowns for 300 rows
    with pytest.warns(UserWarning, match="1792 unknowns per output, more than the 300"):
        HierarchicalPOURegressor(partitions=(8, 8), degree=6, n_cycles=1).fit(X, y)
    # 16 x 10 = 160 unknowns: determined, no such warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HierarchicalPOURegressor(partitions=(4, 4), degree=3, n_cycles=1).fit(X, y)
    assert not [w for w in caught if "unknowns per output" in str(w.message)]


def test_the_underdetermined_warning_says_when_the_degree_was_chosen_for_the_user():
    """degree="auto" looks at the dimension and the rows, not the tree: (4, 4)
    on 100 2-D rows takes degree 4, 240 unknowns for 100 rows. The warning
    must not read as if the user had set that degree."""
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (100, 2))
    with pytest.warns(UserWarning, match=r'degree=4 \(chosen by degree="auto" for one expert\)'):
        HierarchicalPOURegressor(partitions=(4, 4), n_cycles=1).fit(X, X.sum(axis=1))


def test_zero_weights_do_not_count_as_samples():
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (20, 1))
    weight = np.zeros(20)
    weight[:3] = 1.0  # 3 weighted samples, degree 3 has 4 basis functions
    with pytest.warns(UserWarning, match="3 distinct samples"):
        model = HierarchicalPOURegressor(partitions=(2,), degree=3).fit(
            X, X[:, 0], sample_weight=weight
        )
    assert model.degree_ == 2


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(degree=-1), "degree"),
        (dict(degree=1.5), "degree"),
        (dict(partitions=(0,)), "partitions"),
        (dict(partitions=()), "partitions"),
        (dict(partitions=(2, -1)), "partitions"),
        (dict(partitions=(2.5,)), "partitions"),
        (dict(partitions=(True,)), "partitions"),
        (dict(partitions=None), "partitions"),
        (dict(partitions="ab"), "partitions"),
        (dict(gate="foo"), "gate"),
        (dict(sigma="foo"), "sigma"),
        (dict(alpha=-1), "alpha"),
        (dict(alpha=np.nan), "alpha"),
        (dict(n_cycles=-1), "n_cycles"),
        (dict(n_jobs=0), "n_jobs"),
        (dict(tol=-1.0), "tol"),
        (dict(gate_hidden_sizes=(0,)), "gate_hidden_sizes"),
        (dict(gate_hidden_sizes=()), "gate_hidden_sizes"),
    ],
)
def test_invalid_parameters_are_rejected(data, params, message):
    # InvalidParameterError is a ValueError; the message names the parameter.
    X, y = data
    with pytest.raises(ValueError, match=message):
        HierarchicalPOURegressor(**{**FAST, **params}).fit(X, y)


def test_int_partitions_means_one_level(data):
    X, y = data
    as_int = HierarchicalPOURegressor(**{**FAST, "partitions": 3}).fit(X, y)
    as_tuple = HierarchicalPOURegressor(**{**FAST, "partitions": (3,)}).fit(X, y)
    np.testing.assert_array_equal(as_int.predict(X), as_tuple.predict(X))


@pytest.mark.parametrize("method", ["predict", "predict_partitions"])
def test_use_before_fit_raises_not_fitted(data, method):
    X, _ = data
    with pytest.raises(NotFittedError):
        getattr(HierarchicalPOURegressor(), method)(X)


@pytest.mark.parametrize("method", ["predict", "predict_partitions"])
def test_wrong_number_of_features_at_predict(fitted, data, method):
    X, _ = data
    with pytest.raises(ValueError, match="X has 1 features, but .* is expecting 2"):
        getattr(fitted, method)(X[:, :1])
    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 2"):
        getattr(fitted, method)(np.c_[X, X[:, 0]])


def test_complex_input_is_rejected(fitted, data):
    X, y = data
    with pytest.raises(ValueError, match="Complex data not supported"):
        HierarchicalPOURegressor(**FAST).fit(X + 0j, y)
    with pytest.raises(ValueError, match="Complex data not supported"):
        HierarchicalPOURegressor(**FAST).fit(X, y + 1j)
    with pytest.raises(ValueError, match="Complex data not supported"):
        fitted.predict(X + 0j)


def test_string_X_is_rejected(data):
    X, y = data
    with pytest.raises(ValueError, match="could not convert string to float"):
        HierarchicalPOURegressor(**FAST).fit(np.full(X.shape, "a"), y)


@pytest.mark.parametrize("dtype", [str, object])
def test_string_y_is_rejected(data, dtype):
    # Numpy unicode arrays and object arrays of strings alike: a ValueError
    # about the conversion, not a TypeError from deep inside numpy.
    X, y = data
    with pytest.raises(ValueError, match="convert string to float"):
        HierarchicalPOURegressor(**FAST).fit(X, np.array(["a"] * len(y), dtype=dtype))


def test_numeric_strings_in_y_are_rejected_or_converted(data):
    X, y = data
    y_text = np.array([repr(float(v)) for v in y])  # dtype '<U...'
    try:
        model = HierarchicalPOURegressor(**FAST).fit(X, y_text)
    except ValueError:
        return
    reference = HierarchicalPOURegressor(**FAST).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), reference.predict(X))


def test_numeric_object_arrays_are_converted(data):
    X, y = data
    model = HierarchicalPOURegressor(**FAST).fit(X.astype(object), y.astype(object))
    reference = HierarchicalPOURegressor(**FAST).fit(X, y)
    np.testing.assert_array_equal(model.predict(X), reference.predict(X))


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_matrix, sp.csr_array])
def test_sparse_input_is_rejected_clearly(fitted, data, container):
    X, y = data
    with pytest.raises(TypeError, match="[Ss]parse data was passed.*dense data is required"):
        HierarchicalPOURegressor(**FAST).fit(container(X), y)
    with pytest.raises(TypeError, match="[Ss]parse data was passed.*dense data is required"):
        fitted.predict(container(X))


@pytest.mark.parametrize("n_features, far", [(3, 1e200), (5, 1e100)])
def test_zero_weight_rows_are_ignored_wherever_they_are(n_features, far):
    # A zero weight removes a row. Kept, rows far outside the weighted rows'
    # box overflowed the bases (0 * inf) and broke the fit (an eigensolver
    # error in 3-D, a division by zero in 5-D).
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (1000, n_features))
    y = np.sin(X.sum(axis=1))
    weight = np.ones(1000)
    X[:5], weight[:5] = far, 0.0
    model = HierarchicalPOURegressor(partitions=(2, 2))
    with_ignored = model.fit(X, y, sample_weight=weight).predict(X[5:])
    without = clone(model).fit(X[5:], y[5:]).predict(X[5:])
    np.testing.assert_array_equal(with_ignored, without)


def test_overflowing_extrapolation_is_an_error_not_nan():
    # Far enough outside the training range the experts' polynomials exceed
    # the float range; predict said inf or NaN there.
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (500, 3))
    model = HierarchicalPOURegressor(partitions=(2, 2)).fit(X, np.sin(X.sum(axis=1)))
    near = model.predict(np.full((1, 3), 3.0))  # extrapolates, finitely
    assert np.isfinite(near).all()
    with pytest.raises(ValueError, match="overflow for 1 of 2 rows"):
        model.predict(np.vstack([X[:1], np.full((1, 3), 1e200)]))


def test_overflowing_predictive_std_is_an_error_not_inf():
    # The variance grows as the mean squared: it overflows first (the mean
    # 1e159 and the std inf at 1e18 in a user's trial, NaN at 1e20).
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (300, 2))
    model = HierarchicalPOURegressor(random_state=0).fit(X, np.sin(2 * X[:, 0]) + X[:, 1] ** 2)
    # where the mean of the model's degree reaches ~1e200 and ~1e250
    far = np.array([[0.0, 0.0], [10 ** (200 / model.degree_), 0.0],
                    [10 ** (250 / model.degree_), 0.0]])
    mean = model.predict(far)
    assert np.isfinite(mean).all()  # the mean alone is still finite
    with pytest.raises(ValueError, match="Predictive standard deviations overflow for 2 of 3"):
        model.predict(far, return_std=True)
    _, std = model.predict(far[:1], return_std=True)
    assert np.isfinite(std).all()


@pytest.mark.parametrize(
    "weight, message",
    [
        (-np.ones(60), "Negative values"),
        (np.zeros(60), "at least one non-zero"),
        (np.r_[np.nan, np.ones(59)], "NaN"),
        (np.ones(59), "shape"),
    ],
)
def test_bad_sample_weight_is_rejected(data, weight, message):
    X, y = data
    with pytest.raises(ValueError, match=message):
        HierarchicalPOURegressor(**FAST).fit(X, y, sample_weight=weight)


# ------------------------------------------------- property-based robustness

PARTITIONS = [(1,), (2,), (3,), (3, 2), (2, 2, 2)]


def test_repeated_rows_do_not_count_as_samples():
    X = np.repeat(np.array([[0.0], [0.5], [1.0]]), 10, axis=0)
    with pytest.warns(UserWarning, match="than the 3 distinct samples"):
        model = HierarchicalPOURegressor(partitions=(2,), degree=3).fit(X, X[:, 0] ** 2)
    assert model.degree_ == 2
    np.testing.assert_allclose(model.predict(X), X[:, 0] ** 2, atol=1e-8)


def test_weights_and_repeated_rows_give_the_same_degree_and_fit():
    # 12 distinct rows in 3-D: "auto" picks degree 2 (10 functions), and the
    # polish of 4 partitions (40 unknowns) is underdetermined; with 200 rows
    # degree 4 and a determined polish. Duplicates as rows or as weights
    # must not matter in either case.
    model = HierarchicalPOURegressor(partitions=(2, 2), random_state=0)
    for n_rows, degree, atol in ((12, 2, 1e-6), (200, 4, 1e-9)):
        rng = np.random.RandomState(0)
        X = rng.uniform(size=(n_rows, 3))
        y = np.sin(3 * X.sum(axis=1))
        weight = rng.randint(1, 5, n_rows)
        weighted = clone(model).fit(X, y, sample_weight=weight)
        repeated = clone(model).fit(np.repeat(X, weight, axis=0), np.repeat(y, weight))
        assert weighted.degree_ == repeated.degree_ == degree
        # 12 rows leave each expert barely determined: round-off is
        # amplified, hence the looser tolerance there.
        np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), atol=atol)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    n_samples=st.integers(1, 200),
    n_features=st.integers(1, 4),
    x_exponent=st.integers(-12, 12),
    y_exponent=st.integers(-12, 12),
    degree=st.integers(0, 3),
    partitions=st.sampled_from(PARTITIONS),
    gate=st.sampled_from(["linear", "quadratic", "mlp"]),
    layout=st.sampled_from(["uniform", "duplicates", "constant_column", "integers"]),
    seed=st.integers(0, 2**16),
)
def test_fit_succeeds_or_raises_value_error(
    n_samples, n_features, x_exponent, y_exponent, degree, partitions, gate, layout, seed
):
    rng = np.random.RandomState(seed)
    X = rng.uniform(-1, 1, (n_samples, n_features))
    if layout == "duplicates":
        X = X[rng.randint(0, max(1, n_samples // 3), n_samples)]
    elif layout == "constant_column":
        X[:, 0] = 0.7
    elif layout == "integers":
        X = np.round(3 * X)
    y = np.sin(3 * X).sum(axis=1) + 0.1 * rng.randn(n_samples)
    X = X * 10.0**x_exponent + 10.0**x_exponent
    y = y * 10.0**y_exponent
    model = HierarchicalPOURegressor(
        partitions=partitions, degree=degree, gate=gate, n_cycles=3, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lowered degrees, pruning, convergence
        model.fit(X, y)
    assert n_basis(n_features, model.degree_) <= len(np.unique(X, axis=0))
    X_new = np.r_[X, rng.uniform(-2, 2, (5, n_features)) * 10.0**x_exponent]
    mean, std = model.predict(X_new, return_std=True)
    assert mean.shape == std.shape == (X_new.shape[0],)
    assert np.all(np.isfinite(mean))
    assert np.all(np.isfinite(std)) and np.all(std >= 0)
    gates = model.predict_partitions(X_new)
    assert np.all(np.isfinite(gates))
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=0, atol=1e-10)


# ---------------------------------------------------------- extreme scales


def test_features_spanning_1e_minus12_to_1e12():
    rng = np.random.RandomState(0)
    U = rng.uniform(0, 1, (300, 2))
    y = np.sin(3 * U[:, 0]) + U[:, 1] ** 2
    scales = np.array([1e-12, 1e12])
    scaled = HierarchicalPOURegressor(**FAST).fit(U * scales, y)
    unit = HierarchicalPOURegressor(**FAST).fit(U, y)
    U_test = rng.uniform(0, 1, (100, 2))
    prediction = scaled.predict(U_test * scales)
    assert np.all(np.isfinite(prediction))
    # Inputs are rescaled internally: the units of a feature do not matter.
    np.testing.assert_allclose(prediction, unit.predict(U_test), rtol=0, atol=1e-8)


@pytest.mark.parametrize("exponent", [-300, -200, -100, 100, 200, 300])
def test_target_scale_does_not_matter(exponent):
    # Targets are standardized: y * 10^k gives the same fit times 10^k, or
    # (at worst) a ValueError; never NaN.
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (200, 1))
    y = np.sin(3 * X[:, 0])
    reference = HierarchicalPOURegressor(**FAST).fit(X, y).predict(X)
    try:
        model = HierarchicalPOURegressor(**FAST).fit(X, y * 10.0**exponent)
    except ValueError:
        return
    prediction = model.predict(X)
    assert np.all(np.isfinite(prediction))
    np.testing.assert_allclose(
        prediction / 10.0**exponent, reference, rtol=0, atol=1e-8
    )


def test_targets_spanning_1e_minus300_to_1e300():
    X = np.linspace(0, 1, 200)[:, None]
    y = 10.0 ** (600 * X[:, 0] - 300)
    try:
        model = HierarchicalPOURegressor(**FAST).fit(X, y)
    except ValueError:
        return
    mean, std = model.predict(X, return_std=True)
    assert np.all(np.isfinite(mean))
    assert np.all(np.isfinite(std)) and np.all(std >= 0)


def test_tiny_and_huge_features_at_the_float_limits():
    rng = np.random.RandomState(0)
    U = rng.uniform(0, 1, (200, 1))
    y = np.sin(3 * U[:, 0])
    reference = HierarchicalPOURegressor(**FAST).fit(U, y).predict(U)
    for scale in (1e-300, 1e300):
        prediction = HierarchicalPOURegressor(**FAST).fit(U * scale, y).predict(U * scale)
        np.testing.assert_allclose(prediction, reference, rtol=0, atol=1e-8)


def test_constant_feature_is_ignored():
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 1, (200, 1))
    y = np.sin(3 * x[:, 0])
    with_constant = HierarchicalPOURegressor(**FAST).fit(np.c_[x, np.full(200, 7.0)], y)
    without = HierarchicalPOURegressor(**FAST).fit(x, y)
    x_test = rng.uniform(0, 1, (50, 1))
    np.testing.assert_allclose(
        with_constant.predict(np.c_[x_test, np.full(50, 7.0)]),
        without.predict(x_test),
        rtol=0, atol=1e-8,
    )


def test_all_features_constant_predicts_the_mean():
    rng = np.random.RandomState(0)
    y = rng.randn(100)
    weight = rng.uniform(0.5, 2, 100)
    # One distinct row: degree="auto" falls to constant experts...
    model = HierarchicalPOURegressor(partitions=(2, 2), random_state=0)
    model.fit(np.ones((100, 2)), y, sample_weight=weight)
    assert model.degree_ == 0
    mean, std = model.predict(np.ones((3, 2)), return_std=True)
    np.testing.assert_allclose(mean, np.average(y, weights=weight), rtol=1e-10)
    assert np.all(np.isfinite(std))
    # ...and so does an explicit degree the data cannot determine, with a warning.
    with pytest.warns(UserWarning, match="than the 1 distinct samples"):
        model = HierarchicalPOURegressor(**FAST).fit(np.ones((100, 2)), y)
    assert model.degree_ == 0
    np.testing.assert_allclose(model.predict(np.ones((3, 2))), y.mean(), rtol=1e-10)


@pytest.mark.parametrize("value", [0.0, 3.0, -1e200, 1e-200])
def test_constant_target_is_reproduced(value):
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (100, 2))
    model = HierarchicalPOURegressor(**FAST).fit(X, np.full(100, value))
    mean, std = model.predict(rng.uniform(0, 1, (20, 2)), return_std=True)
    np.testing.assert_allclose(mean, value, rtol=1e-12, atol=0)
    assert np.all(np.isfinite(std)) and np.all(std >= 0)
    # No noise: the std is negligible next to the target (absolute for 0,
    # which has no scale).
    assert np.all(std <= 1e-6 * (abs(value) if value else 1.0))


def test_duplicated_points():
    rng = np.random.RandomState(0)
    x = np.linspace(0, 1, 12)[:, None]
    X = np.repeat(x, 20, axis=0)
    y = np.repeat(np.sin(3 * x[:, 0]), 20)
    model = HierarchicalPOURegressor(**FAST).fit(X, y)
    prediction = model.predict(x)
    assert np.all(np.isfinite(prediction))
    np.testing.assert_allclose(prediction, np.sin(3 * x[:, 0]), rtol=0, atol=1e-3)
    # Conflicting targets at duplicated points: still finite, and the
    # predictive std reports the spread.
    noisy = y + rng.randn(y.size)
    mean, std = HierarchicalPOURegressor(**FAST).fit(X, noisy).predict(x, return_std=True)
    assert np.all(np.isfinite(mean))
    assert np.all(np.isfinite(std)) and np.all(std > 0.1)


@pytest.mark.parametrize(
    "partitions, degree, n_samples", [((4, 4), 0, 5), ((8,), 1, 3), ((3, 2), 0, 1)]
)
def test_more_partitions_than_samples(partitions, degree, n_samples):
    X = np.linspace(0, 1, n_samples)[:, None]
    y = np.sin(3 * X[:, 0])
    model = HierarchicalPOURegressor(partitions=partitions, degree=degree, random_state=0)
    model.fit(X, y)
    X_test = np.linspace(-0.5, 1.5, 30)[:, None]
    mean, std = model.predict(X_test, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    gates = model.predict_partitions(X_test)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=0, atol=1e-10)
    # The training points themselves are fitted (the model can interpolate).
    np.testing.assert_allclose(model.predict(X), y, rtol=0, atol=1e-6)


def test_expert_frames_span_their_gates():
    # Runge, (8, 8), degree 7: in cycle 4 one fine node keeps 0.002 samples'
    # worth of responsibility, on a single row. A frame fitted to the
    # responsibilities shrank onto that row (half-width 1e-6), its expert
    # reached ~1e33 where its gate (e^-7.7) still did, and the test error
    # was 0.59; with frames from the gates it is ~3e-8.
    X = -1 + 2 * np.random.default_rng(0).random((10_000, 1))
    y = 1 / (1 + 25 * X[:, 0] ** 2)
    model = HierarchicalPOURegressor(partitions=(8, 8), degree=7).fit(X, y)
    X_test = np.linspace(-1, 1, 2001)[:, None]
    y_test = 1 / (1 + 25 * X_test[:, 0] ** 2)
    error = np.linalg.norm(model.predict(X_test) - y_test) / np.linalg.norm(y_test)
    assert error < 1e-6, error
    assert model.tree_.levels[-1].scales.min() > 1e-3


# ------------------------------------------------------------ sample weights


def _sine_rows(n=200):
    x = np.linspace(0, 1, n)
    return x[:, None], np.sin(2 * np.pi * x)


@pytest.mark.parametrize("value", [1e-320, 1e-200, 1e306])
@pytest.mark.parametrize("partitions", ["auto", (4, 4)])
def test_equal_weights_of_any_size_give_the_unweighted_fit(value, partitions):
    X, y = _sine_rows()
    params = dict(partitions=partitions, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = HierarchicalPOURegressor(**params).fit(X, y).predict(X)
        got = HierarchicalPOURegressor(**params).fit(
            X, y, sample_weight=np.full(y.size, value)
        ).predict(X)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("where", [0, 100])
def test_one_huge_weight_does_not_break_the_fit(where):
    # Noise-free rows: any weighting leaves the target as the best fit.
    X, y = _sine_rows()
    weight = np.ones(y.size)
    weight[where] = 1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = HierarchicalPOURegressor(random_state=0).fit(X, y, sample_weight=weight)
    x_test = np.linspace(0, 1, 1001)
    truth = np.sin(2 * np.pi * x_test)
    error = np.linalg.norm(model.predict(x_test[:, None]) - truth) / np.linalg.norm(truth)
    assert error < 1e-6, error


def test_weights_spanning_too_many_orders_are_warned_about():
    X, y = _sine_rows()
    weight = np.ones(y.size)
    weight[0] = 1e12
    with pytest.warns(UserWarning, match="12 orders of magnitude"):
        HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, y, sample_weight=weight)


# ---------------------------------------------------- rows far from the rest


@pytest.mark.parametrize("far, n_rows", [(120.0, 1500), (1e6, 2000), (1e4, 200)])
def test_one_far_training_row(far, n_rows):
    # A near-singular expert system once passed the Cholesky check and then
    # failed in the LU solve (LinAlgError); placed in the scaled box, the
    # partitions also missed the rows (relative error 1.0 on [0, 1]).
    x = np.r_[np.linspace(0, 1, n_rows), far]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = HierarchicalPOURegressor(random_state=0).fit(x[:, None], np.sin(2 * np.pi * x))
    x_test = np.linspace(0, 1, 1001)
    truth = np.sin(2 * np.pi * x_test)
    error = np.linalg.norm(model.predict(x_test[:, None]) - truth) / np.linalg.norm(truth)
    assert error < 1e-2 if n_rows == 200 else error < 1e-5, error


def test_near_singular_expert_systems_are_solved_not_raised():
    from skpou._experts import solve_normal_equations

    # rank one plus a tiny ridge: condition ~1e17, Cholesky succeeds
    phi = np.logspace(0, 8, 10)
    gram = np.stack([np.outer(phi, phi), np.eye(10)])
    rhs = np.stack([phi[:, None], np.ones((10, 1))])
    coef = solve_normal_equations(gram, rhs, alpha=1e-10, n_jobs=None)
    assert np.all(np.isfinite(coef))
    np.testing.assert_allclose(gram[0] @ coef[0], rhs[0], rtol=1e-6)
    np.testing.assert_allclose(coef[1], 1 / (1 + 1e-10), rtol=1e-12)
