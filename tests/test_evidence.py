"""The Bayesian root (skpou._evidence): its evidence, basis and fit."""

import pickle
import warnings

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from sklearn.exceptions import ConvergenceWarning

from skpou import HierarchicalPOURegressor
from skpou import _evidence
from skpou._basis import Basis, IndexSetBasis, basis_values
from skpou._data import TrainingData
from skpou._gates import make_gate
from skpou._parallel import local_threads


def noisy_rows(n, n_features=2, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, n_features))
    Y = np.c_[np.sin(2 * X[:, 0]) * np.cos(X[:, 1]), X[:, 0] ** 2]
    return X, Y + noise * rng.standard_normal(Y.shape), rng.uniform(0.5, 2.0, n)


def tanh_cos_exp(X):
    return np.tanh(2 * X[:, 0] - 1) * np.cos(np.pi * X[:, 1]) * np.exp(-X[:, 2]) + X[:, 2] / 2


@pytest.mark.parametrize("theta", [[0.3, np.log(0.01), -1.0, -2.0], [-1.0, np.log(1e-4), -0.5, -3.0]])
def test_evidence_is_the_gaussian_process_likelihood_and_its_gradient_exact(theta):
    X, Y, weight = noisy_rows(60)
    basis = Basis(2, 6)
    with local_threads(1) as threads:
        equations = _evidence.root_normal_equations(TrainingData(X, Y, weight), basis, threads)
    design = basis_values(X, basis)
    scaled = equations.scale * weight
    equations.gram = design.T @ (scaled[:, None] * design)  # without the round-off ridge
    theta = np.array(theta)
    powers = basis.powers.astype(float)
    value, gradient = _evidence._negative_log_evidence(theta, equations, powers)
    # the same model as a Gaussian process over the rows: y ~ N(0, P Lambda P^T + sigma^2 / s)
    prior = _evidence.Prior.from_theta(theta)
    covariance = (design * np.exp(prior.log_variances(basis.powers))) @ design.T
    covariance += np.diag(prior.noise / scaled)
    direct = sum(0.5 * (y @ np.linalg.solve(covariance, y) + np.linalg.slogdet(covariance)[1])
                 for y in Y.T)
    # the two differ by the constant sum_d log(s_d) / 2 per output
    assert value == pytest.approx(direct + np.log(scaled).sum(), rel=1e-10)
    numeric = approx_fprime(
        theta, lambda t: _evidence._negative_log_evidence(t, equations, powers)[0],
        1e-6,
    )
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-4)


def test_anisotropic_set_is_downward_closed_and_follows_the_rates():
    log_rates = np.log([0.5, 0.05, 1e-9])
    basis = _evidence.anisotropic_basis(log_rates, size=200)
    powers = basis.powers
    assert 150 <= basis.size <= 200
    keys = set(map(tuple, powers.tolist()))
    for row in powers:  # every lower multi-index is in the set
        for feature in np.flatnonzero(row):
            lower = row.copy()
            lower[feature] -= 1
            assert tuple(lower) in keys
    assert np.all(np.diff(powers.sum(axis=1)) >= 0)  # ordered by total degree
    top = powers.max(axis=0)
    assert top[0] > top[1] > top[2] and top[2] <= 1  # slow decay: high degree


def test_index_set_basis_is_what_the_kernels_evaluate():
    basis = _evidence.anisotropic_basis(np.log([0.3, 0.1]), size=40)
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (50, 2))
    Y = rng.standard_normal((50, 1))
    with local_threads(1) as threads:
        # the kernel route (an index set) against numpy
        equations = _evidence.root_normal_equations(TrainingData(X, Y, np.ones(50)), basis, threads)
        tree = _evidence.root_tree(TrainingData(X, Y, np.ones(50)), make_gate("linear", (), 0.3),
                                   threads)
    design = basis_values(X, basis)
    exact = design.T @ design
    exact[np.diag_indices_from(exact)] += _evidence.ROUND_OFF_RIDGE * 50
    np.testing.assert_allclose(equations.gram, exact, rtol=1e-12, atol=1e-12)
    mean, _ = tree.moments(X, 0, np.zeros((1, 1)), False)
    np.testing.assert_allclose(mean, basis_values(X, tree.basis) @ tree.levels[0].coef[0],
                               rtol=1e-12, atol=1e-12)


def test_leave_one_out_errors_equal_refits_without_the_row():
    X, Y, weight = noisy_rows(40)
    data = TrainingData(X, Y, weight)
    basis = Basis(2, 5)
    with local_threads(1) as threads:
        equations = _evidence.root_normal_equations(data, basis, threads)
        prior, _ = _evidence.maximize_evidence(equations, basis)
        mean, factor = _evidence.posterior(equations, prior, basis)
        residuals, room = _evidence.leave_one_out(
            factor, data, basis, mean, prior, equations.scale * weight, all_rows=False)
        for d in (0, 17, 39):
            keep = np.arange(40) != d
            # the prior, the weights' scale and the round-off ridge held fixed
            full = basis_values(X, basis) * (equations.scale * weight)[:, None]
            ridge = equations.gram - basis_values(X, basis).T @ full
            without = _evidence.root_normal_equations(data.rows(keep), basis, threads)
            without.gram = basis_values(X[keep], basis).T @ full[keep] + ridge
            without.rhs = full[keep].T @ Y[keep]
            refit, _ = _evidence.posterior(without, prior, basis)
            error = Y[d] - basis_values(X[d:d + 1], basis) @ refit
            np.testing.assert_allclose(residuals[d] / room[d], error[0], rtol=1e-8)


def test_bayesian_root_beats_least_squares_on_small_noisy_data():
    # 300 rows of a smooth 3-D target, noise 1% of its std: least squares at
    # the leave-one-out degree (5) gave 1.2e-2 against the truth, the Bayesian
    # root (degree 12 under its prior) 5.4e-3.
    rng = np.random.default_rng(0)
    X, X_test = rng.uniform(0, 1, (300, 3)), rng.uniform(0, 1, (5000, 3))
    f, f_test = tanh_cos_exp(X), tanh_cos_exp(X_test)
    y = f + 0.01 * f.std() * rng.standard_normal(300)
    model = HierarchicalPOURegressor(random_state=0).fit(X, y)
    root = model.refinement_path_[-1]
    assert root["kind"] == "bayesian root" and root["kept"]
    assert model.n_partitions_ == 1 and model.tree_.prior is not None
    assert not model.polished_
    error = np.linalg.norm(model.predict(X_test) - f_test) / np.linalg.norm(f_test)
    assert error < 8e-3
    mean, std = model.predict(X_test, return_std=True)
    noisy_test = f_test + 0.01 * f.std() * rng.standard_normal(5000)
    assert 0.9 <= np.mean(np.abs(noisy_test - mean) <= 2 * std) <= 0.98


def test_features_the_target_ignores_get_no_prior_variance():
    rng = np.random.default_rng(2)
    X, X_test = rng.uniform(0, 1, (400, 4)), rng.uniform(0, 1, (4000, 4))
    y = np.sin(4 * X[:, 1]) + 1e-3 * rng.standard_normal(400)
    model = HierarchicalPOURegressor(random_state=0).fit(X, y)
    assert model.tree_.prior is not None
    rates = np.exp(model.tree_.prior.log_rates)
    assert rates[1] > 1e-2 and rates[[0, 2, 3]].max() < 1e-6
    f_test = np.sin(4 * X_test[:, 1])
    assert np.linalg.norm(model.predict(X_test) - f_test) < 1e-3 * np.linalg.norm(f_test)


def test_grown_tree_is_kept_where_it_is_clearly_better():
    # a kink: sharp gates place a boundary on it; no polynomial comes close
    X = np.random.default_rng(3).uniform(0, 1, (600, 1))
    model = HierarchicalPOURegressor(random_state=0).fit(X, np.abs(X[:, 0] - 0.4))
    root = model.refinement_path_[-1]
    assert root["kind"] == "bayesian root" and not root["kept"]
    assert model.n_partitions_ > 1 and model.tree_.prior is None
    assert root["validation_error"] > 10 * min(
        step["validation_error"] for step in model.refinement_path_[:-1])


def test_integer_weights_equal_repeated_rows_and_the_weights_scale_is_free():
    X, Y, _ = noisy_rows(30, seed=4)
    y = Y[:, 0]
    counts = np.random.default_rng(5).integers(1, 4, 30)
    X_test = np.random.default_rng(6).uniform(-1, 1, (200, 2))
    params = dict(early_stopping=False, random_state=0)  # the Bayesian root alone

    def fitted(X, y, weight=None):
        return HierarchicalPOURegressor(**params).fit(X, y, sample_weight=weight)

    weighted = fitted(X, y, counts)
    assert weighted.tree_.prior is not None
    repeated = fitted(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    scaled = fitted(X, y, 7.5 * counts)
    for other in (repeated, scaled):
        for a, b in zip(weighted.predict(X_test, return_std=True),
                        other.predict(X_test, return_std=True)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_outputs_share_the_prior():
    X, Y, _ = noisy_rows(80, seed=7)
    params = dict(early_stopping=False, random_state=0)
    one = HierarchicalPOURegressor(**params).fit(X, Y[:, 0])
    twice = HierarchicalPOURegressor(**params).fit(X, np.c_[Y[:, 0], Y[:, 0]])
    X_test = np.random.default_rng(8).uniform(-1, 1, (100, 2))
    # equal up to the search's convergence (its path differs with the sums)
    np.testing.assert_allclose(twice.predict(X_test), np.c_[one.predict(X_test), one.predict(X_test)],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start_noise", _evidence.START_NOISES)
def test_every_start_of_the_search_moves_and_converges(start_noise, monkeypatch):
    # Formed from moments, G has round-off eigenvalues of ~-1e-11; without
    # the round-off ridge the first step of a search failed its Cholesky
    # and L-BFGS-B stopped at the start (values 146 to 1.8e6 against -75).
    X, Y, _ = noisy_rows(200, noise=0.0)
    basis = _evidence.total_degree_basis(2, 200)
    with local_threads(1) as threads:
        equations = _evidence.root_normal_equations(TrainingData(X, Y, np.ones(200)), basis,
                                                    threads)
    monkeypatch.setattr(_evidence, "START_NOISES", (start_noise,))
    prior, value = _evidence.maximize_evidence(equations, basis)
    monkeypatch.undo()
    _, best = _evidence.maximize_evidence(equations, basis)
    assert np.isfinite(value) and prior.log_noise != pytest.approx(np.log(start_noise))
    assert value <= best + 0.05 * abs(best)


def test_a_polynomial_target_keeps_its_exact_one_expert_tree():
    # least squares reproduces the cubic to round-off; the root's prior and
    # noise floor leave 1e-20: more than ONE_EXPERT_MARGIN times worse
    X = np.random.default_rng(0).uniform(-1, 1, (200, 1))
    model = HierarchicalPOURegressor(random_state=0).fit(X, X[:, 0] ** 3 - X[:, 0])
    root = model.refinement_path_[-1]
    assert root["kind"] == "bayesian root" and not root["kept"]
    assert model.tree_.prior is None and model.degree_ == 3


def test_few_rows_keep_a_low_degree_that_does_not_blow_up_at_the_box_edges():
    # 10 rows spanning [0.22, 0.93] of [0, 1]: a degree-8 root gave an error
    # of 0.5 (a mean of -27 at x = 0); few rows get at most one function per
    # two rows
    rng = np.random.default_rng(0)
    rng.uniform(0, 1, 13)  # the draw the case was found with
    X = rng.uniform(0, 1, (10, 1))
    y = np.sin(3 * X[:, 0]) + 0.05 * rng.standard_normal(10)
    X_test = np.linspace(0, 1, 201)[:, None]
    mean, std = HierarchicalPOURegressor(random_state=0).fit(X, y).predict(X_test, return_std=True)
    error = np.sqrt(np.mean((mean - np.sin(3 * X_test[:, 0])) ** 2))
    assert error < 0.1 and np.mean(np.abs(mean - np.sin(3 * X_test[:, 0])) <= 2 * std) > 0.8


@pytest.mark.parametrize("weight", [1e3, 1e12])
def test_one_huge_weight_does_not_drown_the_other_rows(weight):
    # the round-off ridge scales with the rows, not with G's diagonal (which
    # one weight of 1e12 made 1e12 times larger: test RMSE 0.3, std 2e3)
    rng = np.random.default_rng(1)
    target = lambda X: np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1])
    X, X_test = rng.uniform(0, 1, (60, 2)), rng.uniform(0, 1, (2000, 2))
    y = target(X) + 0.05 * rng.standard_normal(60)
    w = np.ones(60)
    w[7] = weight
    model = HierarchicalPOURegressor(random_state=0).fit(X, y, sample_weight=w)
    mean, std = model.predict(X_test, return_std=True)
    assert model.tree_.prior is not None
    assert np.sqrt(np.mean((mean - target(X_test)) ** 2)) < 0.05
    assert 0.03 < np.mean(std) < 0.1  # the noise is 0.05


def test_replicated_measurements_count_as_rows():
    # 30 inputs measured 100 times each: counted as 30 rows, the prior
    # weighed 100 times too much (test RMSE 0.011-0.019; as rows, 0.0025)
    rng = np.random.default_rng(2)
    X = np.repeat(rng.uniform(0, 1, (30, 1)), 100, axis=0)
    y = np.sin(3 * X[:, 0]) + 0.05 * rng.standard_normal(3000)
    model = HierarchicalPOURegressor(random_state=0).fit(X, y)
    X_test = np.linspace(0.05, 0.95, 200)[:, None]
    assert model.tree_.prior is not None
    assert np.sqrt(np.mean((model.predict(X_test) - np.sin(3 * X_test[:, 0])) ** 2)) < 0.006


def test_thousands_of_features_do_not_recurse():
    basis = _evidence.anisotropic_basis(np.log(np.r_[0.5, np.full(1499, 0.01)]), 40)
    assert basis.n_features == 1500 and basis.powers[:, 1:].max() == 0 and basis.size == 7


def test_a_warm_start_after_the_bayesian_root_fits_afresh_and_says_nothing():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (300, 3))
    y = tanh_cos_exp(X) + 0.003 * rng.standard_normal(300)
    X_test = rng.uniform(0, 1, (500, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fresh = HierarchicalPOURegressor(random_state=0).fit(X, y)
        warm = HierarchicalPOURegressor(random_state=0, warm_start=True).fit(X, y).fit(X, y)
    assert fresh.tree_.prior is not None and fresh.converged_
    assert all(step["kind"] != "warm start" for step in warm.refinement_path_)
    np.testing.assert_array_equal(warm.predict(X_test), fresh.predict(X_test))


def test_noise_shape_recovers_a_log_linear_variance_and_none_from_constant_noise():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (2000, 2))
    true_log_v = 1.5 * X[:, 0]  # variance e^-1.5 .. e^1.5 across the box
    squares = np.exp(true_log_v)[:, None] * rng.standard_normal((2000, 2)) ** 2
    shape = _evidence.fit_noise_shape(X, squares)
    assert shape is not None
    grid = np.c_[np.linspace(-0.9, 0.9, 7), np.zeros(7)]
    slope = np.polyfit(grid[:, 0], np.log(shape.relative_variance(grid)), 1)[0]
    assert 1.2 < slope < 1.8
    # held at the rows' range beyond them
    far = shape.relative_variance(np.array([[5.0, 0.0], [-5.0, 0.0]]))
    np.testing.assert_allclose(np.log(far), [shape.most, shape.least])
    constant = rng.standard_normal((2000, 2)) ** 2
    assert _evidence.fit_noise_shape(X, constant) is None
    assert _evidence.fit_noise_shape(X[:60], squares[:60]) is None  # too few rows


def heteroscedastic_rows(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 1))
    noise_std = 0.02 + 0.38 * X[:, 0] ** 2
    return X, np.sin(2 * np.pi * X[:, 0]) + X[:, 0] + noise_std * rng.standard_normal(n)


def test_the_root_std_follows_noise_that_varies_over_the_inputs():
    # The example plot_uncertainty's data: noise std 0.02 at x = 0 to 0.4 at
    # x = 1. With one noise variance the std was 0.19 everywhere and the
    # 2-std coverage by quarter 1.00, 1.00, 0.96, 0.77.
    X, y = heteroscedastic_rows(1000, 0)
    model = HierarchicalPOURegressor(random_state=0).fit(X, y)
    assert model.tree_.prior is not None and model.tree_.noise_shape is not None
    _, std = model.predict(np.array([[0.05], [0.5], [0.95]]), return_std=True)
    np.testing.assert_allclose(std, [0.021, 0.115, 0.363], rtol=0.5)
    assert std[2] / std[0] > 8  # the true ratio is 17; one noise variance gives ~1
    Xn, yn = heteroscedastic_rows(20000, 1)
    mean, std = model.predict(Xn, return_std=True)
    covered = np.abs(yn - mean) <= 2 * std
    quarter = np.minimum((4 * Xn[:, 0]).astype(int), 3)
    for q in range(4):
        assert 0.9 <= covered[quarter == q].mean() <= 0.995
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(Xn[:100], return_std=True)[1], std[:100])


@pytest.mark.parametrize("seed", [0, 1])
def test_constant_noise_gets_no_noise_shape(seed):
    X, Y, _ = noisy_rows(1000, seed=seed)
    model = HierarchicalPOURegressor(random_state=seed).fit(X, Y[:, 0])
    assert model.tree_.prior is not None
    assert model.tree_.noise_shape is None


def franke(X):
    x, y = 9 * X[:, 0], 9 * X[:, 1]
    return (0.75 * np.exp(-((x - 2) ** 2 + (y - 2) ** 2) / 4)
            + 0.75 * np.exp(-((x + 1) ** 2) / 49 - (y + 1) / 10)
            + 0.5 * np.exp(-((x - 7) ** 2 + (y - 3) ** 2) / 4)
            - 0.2 * np.exp(-((x - 4) ** 2) - (y - 7) ** 2))


def test_mapped_inputs_keep_the_box_edges_accurate_where_the_evidence_prefers_them():
    # Franke's function, 1000 rows: in the plain unit box the root's error
    # was 190 times larger in the 5% strip along the edges than inside
    # (relative RMSE 3.2e-3 in all); with the mapped inputs 8e-6 (GPR: 1e-5).
    rng = np.random.default_rng(0)
    X, X_test = rng.uniform(0, 1, (1000, 2)), rng.uniform(0, 1, (20000, 2))
    model = HierarchicalPOURegressor(random_state=0).fit(X, franke(X))
    assert model.tree_.prior is not None
    assert model.tree_.input_map is not None
    error = model.predict(X_test) - franke(X_test)
    assert np.sqrt(np.mean(error**2) / np.mean(franke(X_test) ** 2)) < 5e-5
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(X_test[:100]), model.predict(X_test[:100]))
    # a target whose Legendre coefficients decay fast keeps the plain box
    X, Y, _ = noisy_rows(1000, noise=0.0)
    assert HierarchicalPOURegressor(random_state=0).fit(X, Y).tree_.input_map is None


def test_input_map_fixes_the_box_and_continues_along_its_tangent():
    input_map = _evidence.InputMap(0.9)
    np.testing.assert_allclose(input_map(np.array([-1.0, 0.0, 1.0])), [-1.0, 0.0, 1.0],
                               atol=1e-15)
    beyond = input_map(np.array([1.0, 1.5, 3.0]))
    beta = np.arcsin(0.9)
    np.testing.assert_allclose(np.diff(beyond), [0.5, 1.5] * np.array(beta * np.cos(beta) / 0.9))


def test_a_constant_target_fits_exactly_without_a_noise_shape():
    # zero leave-one-out errors once made the noise shape's likelihood
    # unbounded (log v -> -inf) and the fit fail inside scipy
    X = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    for settings in ({}, {"early_stopping": False}):
        model = HierarchicalPOURegressor(random_state=0, **settings).fit(X, np.full(200, 3.0))
        mean, std = model.predict(X[:20], return_std=True)
        np.testing.assert_allclose(mean, 3.0, rtol=1e-12)
        assert np.all(np.isfinite(std))
    partly_exact = np.random.default_rng(1).standard_normal((300, 1)) ** 2
    partly_exact[X[:, 0].repeat(2)[:300] < -0.5] = 0.0
    shape = _evidence.fit_noise_shape(np.tile(X, (2, 1))[:300], partly_exact)
    assert shape is None or np.all(np.isfinite(shape.coef))


def test_models_pickled_before_the_noise_shape_input_map_and_factors_still_predict():
    X, y = heteroscedastic_rows(300, 0)
    model = HierarchicalPOURegressor(random_state=0).fit(X, y)
    expected = model.predict(X[:50], return_std=True)
    state = pickle.loads(pickle.dumps(model))
    for name in ("noise_shape", "input_map"):
        vars(state.tree_).pop(name, None)  # as a tree pickled before them
    state.tree_.levels[-1].slivers = None
    # the covariances themselves, as trees pickled before their factors held
    factor = vars(state.tree_).pop("coef_cov_factor")
    vars(state.tree_)["coef_cov"] = np.swapaxes(factor, -1, -2) @ factor
    state = pickle.loads(pickle.dumps(state))
    mean, std = state.predict(X[:50], return_std=True)
    np.testing.assert_allclose(mean, expected[0], rtol=1e-12)
    if model.tree_.noise_shape is None and model.tree_.input_map is None:
        np.testing.assert_allclose(std, expected[1], rtol=1e-12)
