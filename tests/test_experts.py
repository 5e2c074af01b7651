"""skpou._experts: the experts' normal equations (both routes) and solves."""

import numpy as np
import pytest

import skpou._experts as experts
from numpy_reference import legendre_basis, random_problem
from skpou._basis import Basis, legendre_frame_change
from skpou._kernels import experts as kernels
from skpou._parallel import Threads


def _kernel_system(X, Y, sw, resp, centers, scales, basis, min_resp):
    gram = np.zeros((resp.shape[1], basis.size, basis.size))
    rhs = np.zeros((resp.shape[1], basis.size, Y.shape[1]))
    kernels.normal_equations(X, Y, sw, resp, centers, scales, basis.recipe,
                             basis.degree, min_resp, gram, rhs)
    return experts.mirror_upper(gram), rhs


@pytest.mark.parametrize("n_features, degree", [(1, 0), (1, 5), (2, 3), (3, 4)])
def test_normal_equations_kernel_matches_numpy(n_features, degree):
    X, Y, sw, log_gate, centers, scales, powers = random_problem(n_features, degree, 5)
    resp = np.exp(log_gate)
    min_resp = 1e-3  # drops a good share of (row, node) pairs
    gram, rhs = _kernel_system(X, Y, sw, resp, centers, scales,
                               Basis(n_features, degree), min_resp)
    for k in range(5):
        w = np.where(resp[:, k] > min_resp, resp[:, k] * sw, 0.0)
        phi = legendre_basis((X - centers[k]) / scales[k], powers)
        np.testing.assert_allclose(gram[k], phi.T @ (w[:, None] * phi),
                                   rtol=1e-12, atol=1e-12 * np.abs(gram[k]).max())
        np.testing.assert_allclose(rhs[k], phi.T @ (w[:, None] * Y), rtol=1e-12,
                                   atol=1e-12 * np.abs(rhs[k]).max())


@pytest.mark.parametrize("n_features, degree", [(2, 4), (3, 3)])
def test_moment_route_matches_kernel_and_is_taken(monkeypatch, n_features, degree):
    """Each node's normal equations from moments in the unit box equal the
    kernel's, negligible responsibilities dropped by both; with frames as
    wide as the box, ``normal_equations`` takes that route."""
    monkeypatch.setattr(experts, "MIN_RESPONSIBILITY", 1e-3)
    X, Y, sw, log_gate, centers, scales, _ = random_problem(n_features, degree, 5)
    resp = np.exp(log_gate)
    assert (resp <= 1e-3).mean() > 0.1
    basis = Basis(n_features, degree)
    frame_change = legendre_frame_change(centers, scales, degree)
    box_grams, box_rhs = experts.box_normal_equations(
        X, Y, sw, lambda r: np.where(r > 1e-3, r, 0.0), (resp,), degree, Threads()
    )
    gram = frame_change @ box_grams @ np.swapaxes(frame_change, 1, 2)
    kernel_gram, kernel_rhs = _kernel_system(X, Y, sw, resp, centers, scales, basis, 1e-3)
    np.testing.assert_allclose(gram, kernel_gram, atol=1e-12 * np.abs(kernel_gram).max())
    np.testing.assert_allclose(frame_change @ box_rhs, kernel_rhs,
                               atol=1e-12 * np.abs(kernel_rhs).max())
    dispatched, _ = experts.normal_equations(X, Y, sw, resp, centers, scales, basis, Threads())
    np.testing.assert_array_equal(dispatched, experts.symmetric(gram))


def test_normal_equations_do_not_depend_on_threads():
    X, Y, sw, log_gate, centers, scales, _ = random_problem(2, 2, 4, n=9000)
    basis = Basis(2, 2)
    from skpou._parallel import local_threads

    serial = experts.normal_equations(X, Y, sw, np.exp(log_gate), centers, scales, basis, Threads())
    with local_threads(2) as threads:
        threaded = experts.normal_equations(
            X, Y, sw, np.exp(log_gate), centers, scales, basis, threads
        )
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_solves_survive_singular_systems():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4))
    gram = np.stack([A.T @ A, np.zeros((4, 4)), np.eye(4)])  # rank 3, empty, fine
    rhs = rng.standard_normal((3, 4, 2))
    rhs[1] = 0.0
    coef = experts.solve_normal_equations(gram, rhs, alpha=0.0, n_jobs=None)
    assert np.all(np.isfinite(coef))
    np.testing.assert_allclose(coef[2], rhs[2])
    np.testing.assert_array_equal(coef[1], 0.0)
