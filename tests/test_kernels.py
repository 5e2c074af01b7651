"""The Numba kernels against plain numpy on small random problems."""

import numpy as np
import pytest
from numpy.polynomial import legendre

from skpou import _kernels
from skpou._experts import basis_recipe, mirror_upper, total_degree_powers


def _basis(Z, powers):
    """Orthonormal Legendre products at local coordinates Z, by numpy."""
    out = np.ones((Z.shape[0], powers.shape[0]))
    for m, row in enumerate(powers):
        for i, p in enumerate(row):
            out[:, m] *= legendre.legval(Z[:, i], np.eye(p + 1)[p]) * np.sqrt(2 * p + 1)
    return out


def _problem(n_features, degree, n_nodes, seed=0):
    rng = np.random.default_rng(seed)
    n = 700  # several _COLUMNS blocks per node, with a remainder
    X = rng.uniform(-1, 1, (n, n_features))
    Y = rng.standard_normal((n, 2))
    sample_weight = rng.uniform(0.5, 2.0, n)
    sample_weight[::7] = 0.0
    logits = 4.0 * rng.standard_normal((n, n_nodes))
    log_gate = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    centers = rng.uniform(-0.5, 0.5, (n_nodes, n_features))
    scales = rng.uniform(0.5, 2.0, (n_nodes, n_features))
    powers = total_degree_powers(n_features, degree)
    return X, Y, sample_weight, log_gate, centers, scales, powers


@pytest.mark.parametrize("n_features, degree", [(1, 0), (1, 5), (2, 3), (3, 4)])
def test_normal_equations_match_numpy(n_features, degree):
    X, Y, sw, log_gate, centers, scales, powers = _problem(n_features, degree, 5)
    resp = np.exp(log_gate)
    min_resp = 1e-3  # drops a good share of (row, node) pairs
    M = powers.shape[0]
    gram = np.zeros((5, M, M))
    rhs = np.zeros((5, M, 2))
    _kernels.normal_equations(X, Y, sw, resp, centers, scales, basis_recipe(powers),
                              degree, min_resp, gram, rhs)
    for k in range(5):
        w = np.where(resp[:, k] > min_resp, resp[:, k] * sw, 0.0)
        phi = _basis((X - centers[k]) / scales[k], powers)
        np.testing.assert_allclose(mirror_upper(gram)[k], phi.T @ (w[:, None] * phi),
                                   rtol=1e-12, atol=1e-12 * np.abs(gram[k]).max())
        np.testing.assert_allclose(rhs[k], phi.T @ (w[:, None] * Y), rtol=1e-12,
                                   atol=1e-12 * np.abs(rhs[k]).max())


def test_e_step_and_moments_match_numpy():
    X, Y, _, log_gate, centers, scales, powers = _problem(2, 3, 4, seed=1)
    rng = np.random.default_rng(2)
    coef = rng.standard_normal((4, powers.shape[0], 2))
    log_var = rng.uniform(-2, 0, (4, 2))
    recipe = basis_recipe(powers)
    mu = np.stack([_basis((X - centers[k]) / scales[k], powers) @ coef[k]
                   for k in range(4)], axis=1)  # (n, K, T)
    log_joint = log_gate + (-0.5 * (((Y[:, None] - mu) ** 2) / np.exp(log_var)
                                    + log_var + np.log(2 * np.pi))).sum(axis=2)
    # threshold so low nothing is skipped: exact agreement expected
    resp = np.empty_like(log_gate)
    log_lik = np.empty(X.shape[0])
    _kernels.e_step(X, Y, log_gate, centers, scales, coef, recipe, 3, log_var,
                    -np.inf, resp, log_lik)
    expected = np.logaddexp.reduce(log_joint, axis=1)
    np.testing.assert_allclose(log_lik, expected, rtol=1e-12)
    np.testing.assert_allclose(resp, np.exp(log_joint - expected[:, None]), atol=1e-12)

    var = np.exp(log_var)
    mean = np.empty_like(Y)
    variance = np.empty_like(Y)
    _kernels.mixture_moments(X, log_gate, centers, scales, coef, recipe, 3, var,
                             -np.inf, True, mean, variance)
    gate = np.exp(log_gate)[:, :, None]
    expected_mean = (gate * mu).sum(axis=1)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)
    expected_var = (gate * (var[None] + (mu - expected_mean[:, None]) ** 2)).sum(axis=1)
    np.testing.assert_allclose(variance, expected_var, rtol=1e-10)


def test_blended_normal_equations_match_numpy():
    X, Y, sw, log_gate, centers, scales, powers = _problem(2, 2, 4, seed=3)
    min_log_gate = -3.0  # some nodes drop out on some rows
    M = powers.shape[0]
    active = log_gate >= log_gate.max(axis=1, keepdims=True) + min_log_gate
    pairs = [(k, j) for k in range(4) for j in range(k, 4)]
    pair_id = np.full((4, 4), -1)
    for p, (k, j) in enumerate(pairs):
        pair_id[k, j] = p
    blocks = np.zeros((len(pairs), M, M))
    rhs = np.zeros((4, M, 2))
    _kernels.blended_normal_equations(X, Y, sw, log_gate, centers, scales,
                                      basis_recipe(powers), 2, min_log_gate,
                                      pair_id, blocks, rhs)
    design = [np.where(active[:, k], np.exp(log_gate[:, k]), 0.0)[:, None]
              * _basis((X - centers[k]) / scales[k], powers) for k in range(4)]
    for p, (k, j) in enumerate(pairs):
        expected = design[k].T @ (sw[:, None] * design[j])
        got = mirror_upper(blocks[p][None])[0] if k == j else blocks[p]
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12 * np.abs(expected).max())
    for k in range(4):
        np.testing.assert_allclose(rhs[k], design[k].T @ (sw[:, None] * Y), rtol=1e-11)
