"""Accuracy claims of the paper (Trask et al. 2022, DESIGN.md section 5).

Errors are relative L2 errors on held-out points, never on the training
points. Every test runs in a few seconds on one core.
"""

import numpy as np
import pytest

from skpou import HierarchicalPOURegressor


def relative_error(model, X_test, y_test):
    return np.linalg.norm(model.predict(X_test) - y_test) / np.linalg.norm(y_test)


def held_out(n=1000, seed=1):
    return np.random.RandomState(seed).uniform(0, 1, (n, 1))


def squared_triangle_wave(x, pieces):
    """Continuous piecewise quadratic on [0, 1] with `pieces` pieces.

    A triangle wave with kinks at k / pieces (0 at even k, 1 at odd k),
    squared: each piece is a quadratic, and neighbours meet continuously.
    """
    s = x * pieces
    k = np.floor(s)
    frac = s - k
    return np.where(k % 2 == 0, frac, 1.0 - frac) ** 2


def smooth(x):
    return np.sin(2 * np.pi * x)


def paper_1d(x):
    """The paper's 1-D example: a sine with a narrow Gaussian bump."""
    return np.sin(2 * np.pi * x) + np.exp(-(((x - 0.5) / 0.05) ** 2) / 2)


# ------------------------------------------------------- exact reproduction


@pytest.mark.xfail(
    strict=True,
    reason="Exact reproduction not reached yet: relative L2 error measured "
    "7.0e-08 (4 pieces) and 5.8e-06 (6 pieces) at commit e4b04e7; the "
    "paper reaches ~1e-8. Remove this marker once the core gets there.",
)
@pytest.mark.parametrize("pieces", [4, 6])
def test_exact_reproduction_of_piecewise_quadratic(pieces):
    # Data from a continuous piecewise quadratic, fine partitions = 2 x
    # pieces (the paper's setting), degree 2: the model class contains the
    # target, so only sharp gates at the kinks stand between it and an exact
    # fit.
    X = np.linspace(0, 1, 2001)[:, None]
    X_test = held_out()
    model = HierarchicalPOURegressor(
        partitions=(pieces, 2), degree=2, n_cycles=100, tol=0, random_state=0
    ).fit(X, squared_triangle_wave(X[:, 0], pieces))
    error = relative_error(model, X_test, squared_triangle_wave(X_test[:, 0], pieces))
    assert error < 1e-8, f"relative L2 error {error:.3e}"


@pytest.mark.parametrize("pieces", [4, 6])
def test_piecewise_quadratic_is_fitted_closely_with_default_budget(pieces):
    # Not the paper's 1e-8 (see the xfail above), but a guard against
    # regressions: piecewise quadratics in a piecewise quadratic model.
    X = np.linspace(0, 1, 2001)[:, None]
    X_test = held_out()
    model = HierarchicalPOURegressor(partitions=(pieces, 2), degree=2, random_state=0)
    model.fit(X, squared_triangle_wave(X[:, 0], pieces))
    error = relative_error(model, X_test, squared_triangle_wave(X_test[:, 0], pieces))
    assert error < 1e-3, f"relative L2 error {error:.3e}"


# ------------------------------------------------------ convergence in degree


def test_exponential_convergence_in_degree():
    # Fixed number of partitions, smooth target: spectral (geometric)
    # convergence in the polynomial degree.
    X = np.linspace(0, 1, 1000)[:, None]
    X_test = held_out()
    errors = []
    for degree in range(1, 6):
        model = HierarchicalPOURegressor(partitions=(8,), degree=degree, random_state=0)
        model.fit(X, smooth(X[:, 0]))
        errors.append(relative_error(model, X_test, smooth(X_test[:, 0])))
    errors = np.array(errors)
    ratios = errors[:-1] / errors[1:]
    assert np.all(ratios >= 3.0), f"errors {errors}, ratios {ratios}"
    slope = np.polyfit(np.arange(1, 6), np.log10(errors), 1)[0]
    assert slope < -0.8, f"decades per degree {slope:.2f}, errors {errors}"
    assert errors[-1] < 1e-6, errors


def test_p_refinement_on_frozen_partitions():
    # The paper's experiment: freeze the partitions of a fit, refit higher
    # degree experts (warm_start with n_cycles=0).
    X = np.linspace(0, 1, 1000)[:, None]
    X_test = held_out()
    y, y_test = smooth(X[:, 0]), smooth(X_test[:, 0])
    model = HierarchicalPOURegressor(
        partitions=(8,), degree=1, random_state=0, warm_start=True
    ).fit(X, y)
    partitions = model.predict_partitions(X_test)
    errors = []
    for degree in range(1, 7):
        model.set_params(degree=degree, n_cycles=0).fit(X, y)
        np.testing.assert_array_equal(model.predict_partitions(X_test), partitions)
        errors.append(relative_error(model, X_test, y_test))
    errors = np.array(errors)
    assert np.all(errors[1:] < errors[:-1]), errors
    slope = np.polyfit(np.arange(1, 7), np.log10(errors), 1)[0]
    assert slope < -0.8, f"decades per degree {slope:.2f}, errors {errors}"
    assert errors[-1] < 1e-7, errors


@pytest.mark.xfail(
    strict=True,
    reason="Paper: 16 frozen partitions, degree 6 reaches ~1.5e-8 on the "
    "sine + bump example; measured 1.7e-06 (degree 1: 1.45e-02) at commit "
    "e4b04e7. Remove this marker once the core gets there.",
)
def test_p_refinement_reaches_paper_accuracy_on_bump():
    X = np.linspace(0, 1, 2000)[:, None]
    X_test = held_out()
    model = HierarchicalPOURegressor(
        partitions=(16,), degree=1, random_state=0, warm_start=True
    ).fit(X, paper_1d(X[:, 0]))
    model.set_params(degree=6, n_cycles=0).fit(X, paper_1d(X[:, 0]))
    error = relative_error(model, X_test, paper_1d(X_test[:, 0]))
    assert error < 1e-7, f"relative L2 error {error:.3e}"


# -------------------------------------------------- convergence in partitions


@pytest.mark.parametrize("degree", [1, 2])
def test_algebraic_convergence_in_partitions(degree):
    # h-refinement: with N partitions of width h ~ 1/N, a degree-p fit of a
    # smooth function has error ~ h^(p+1) = N^-(p+1).
    X = np.linspace(0, 1, 2000)[:, None]
    X_test = held_out()
    counts = np.array([4, 8, 16, 32])
    errors = []
    for n_partitions in counts:
        model = HierarchicalPOURegressor(
            partitions=(int(n_partitions),), degree=degree, random_state=0
        ).fit(X, smooth(X[:, 0]))
        errors.append(relative_error(model, X_test, smooth(X_test[:, 0])))
    errors = np.array(errors)
    assert np.all(errors[1:] < errors[:-1]), errors
    slope = np.polyfit(np.log(counts), np.log(errors), 1)[0]
    expected = -(degree + 1)
    # At least the optimal rate (within 0.4), and not absurdly faster.
    assert expected - 1.0 <= slope <= expected + 0.4, (
        f"slope {slope:.2f}, expected {expected}, errors {errors}"
    )


# ---------------------------------------------------- two levels beat one


def test_two_levels_beat_one_on_paper_example():
    # The paper: (15, 3) reaches ~1e-3 where a single level of 45
    # partitions stalls at ~1.5e-2, same degree and training budget.
    X = np.linspace(0, 1, 1000)[:, None]
    X_test = held_out()
    y, y_test = paper_1d(X[:, 0]), paper_1d(X_test[:, 0])
    errors = {}
    for partitions in [(15, 3), (45,)]:
        model = HierarchicalPOURegressor(
            partitions=partitions, degree=1, n_cycles=30, random_state=0
        ).fit(X, y)
        errors[partitions] = relative_error(model, X_test, y_test)
    assert errors[(15, 3)] < errors[(45,)], errors
    assert errors[(15, 3)] < 2e-3, errors
