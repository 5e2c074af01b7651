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


def test_dense_polish_system_matches_sparse_one():
    """The dense polish system forms each run of rows only for the nodes
    carrying gate in it; it must equal the block-sparse system."""
    from skpou._experts import (
        DESIGN_ROWS, _dense_blended_system, _sparse_blended_system,
    )

    rng = np.random.default_rng(4)
    n, n_nodes, degree = 3 * DESIGN_ROWS + 100, 8, 2
    X = np.sort(rng.uniform(-1, 1, (n, 1)), axis=0)  # runs of rows = slabs in x
    Y = rng.standard_normal((n, 2))
    sw = rng.uniform(0.5, 2.0, n)
    logits = 12.0 * X * np.arange(n_nodes) - 6.0 * np.arange(n_nodes) ** 2 / n_nodes
    log_gate = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    min_log_gate = -8.0
    carrying = log_gate >= log_gate.max(axis=1, keepdims=True) + min_log_gate
    assert not carrying[:DESIGN_ROWS].any(axis=0).all()  # columns do get dropped
    centers = np.linspace(-1, 1, n_nodes)[:, None]
    scales = np.full((n_nodes, 1), 0.5)
    recipe = basis_recipe(total_degree_powers(1, degree))
    args = (X, Y, sw, lambda rows: log_gate[rows], centers, scales, recipe, degree,
            min_log_gate, None)
    overlaps = np.ones((n_nodes, n_nodes), dtype=bool)
    dense_matrix, dense_rhs = _dense_blended_system(*args)
    sparse_matrix, sparse_rhs = _sparse_blended_system(np.triu(overlaps), *args)
    scale = np.abs(dense_matrix).max()
    np.testing.assert_allclose(dense_matrix, sparse_matrix.toarray(), atol=1e-12 * scale)
    np.testing.assert_allclose(dense_rhs, sparse_rhs.reshape(dense_rhs.shape),
                               atol=1e-12 * np.abs(dense_rhs).max())


@pytest.mark.parametrize("n_features, degree", [(1, 5), (2, 3), (3, 2)])
def test_legendre_products_and_frame_change_are_identities(n_features, degree):
    """phi_i phi_j = sum_p C[i M + j, p] psi_p, and phi((x - c) / h) = T phi(x)."""
    from skpou._experts import legendre_frame_change, legendre_products

    rng = np.random.default_rng(5)
    X = rng.uniform(-1.5, 1.5, (200, n_features))  # also outside the box
    powers = total_degree_powers(n_features, degree)
    products, _ = legendre_products(n_features, degree)
    phi = _basis(X, powers)
    psi = _basis(X, total_degree_powers(n_features, 2 * degree))
    pairwise = (phi[:, :, None] * phi[:, None, :]).reshape(X.shape[0], -1)
    np.testing.assert_allclose(psi @ products.T, pairwise, atol=1e-11 * np.abs(pairwise).max())

    centers = rng.uniform(-0.5, 0.5, (3, n_features))
    scales = rng.uniform(0.3, 2.0, (3, n_features))
    frame_change = legendre_frame_change(centers, scales, degree)
    for k in range(3):
        local = _basis((X - centers[k]) / scales[k], powers)
        np.testing.assert_allclose(phi @ frame_change[k].T, local,
                                   atol=1e-11 * np.abs(local).max())


def test_moment_polish_system_matches_blas_one():
    """The polish system from product moments equals the one from BLAS
    products of the design rows, in two features with two targets."""
    from skpou._experts import (
        DESIGN_ROWS, _dense_blended_system, _moment_blended_system,
        legendre_frame_change,
    )

    rng = np.random.default_rng(6)
    n, n_nodes, degree = 2 * DESIGN_ROWS + 100, 5, 3
    X = rng.uniform(-1, 1, (n, 2))
    Y = rng.standard_normal((n, 2))
    sw = rng.uniform(0.5, 2.0, n)
    logits = 3.0 * X @ rng.standard_normal((2, n_nodes))
    log_gate = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    centers = rng.uniform(-0.3, 0.3, (n_nodes, 2))
    scales = rng.uniform(0.5, 1.0, (n_nodes, 2))
    recipe = basis_recipe(total_degree_powers(2, degree))
    min_log_gate = -3.0  # some gates are dropped, and must be in both
    assert (log_gate < log_gate.max(axis=1, keepdims=True) + min_log_gate).any()
    args = (X, Y, sw, lambda rows: log_gate[rows], centers, scales, recipe, degree,
            min_log_gate, None)
    blas_matrix, blas_rhs = _dense_blended_system(*args)
    frame_change = legendre_frame_change(centers, scales, degree)
    overlaps = np.zeros((n_nodes, n_nodes), dtype=bool)
    _kernels.overlapping_pairs(log_gate, min_log_gate, overlaps)
    moment_matrix, moment_rhs = _moment_blended_system(overlaps, frame_change, *args)
    np.testing.assert_allclose(moment_matrix, blas_matrix, atol=1e-12 * np.abs(blas_matrix).max())
    np.testing.assert_allclose(moment_rhs, blas_rhs, atol=1e-12 * np.abs(blas_rhs).max())


@pytest.mark.parametrize("n_features, degree", [(2, 4), (3, 3)])
def test_moment_normal_equations_match_kernel(n_features, degree):
    """Each node's normal equations from moments in the unit box equal the
    kernel's, negligible responsibilities dropped by both."""
    from skpou._experts import (
        _moment_normal_equations, assemble_normal_equations,
        legendre_frame_change,
    )

    X, Y, sw, log_gate, centers, scales, powers = _problem(n_features, degree, 5)
    resp = np.exp(log_gate)
    min_resp = 1e-3
    assert (resp <= min_resp).mean() > 0.1
    recipe = basis_recipe(powers)
    frame_change = legendre_frame_change(centers, scales, degree)
    gram, rhs = _moment_normal_equations(
        frame_change, X, Y, sw, resp, degree, min_resp, None
    )
    kernel_gram = np.zeros_like(gram)
    kernel_rhs = np.zeros_like(rhs)
    _kernels.normal_equations(X, Y, sw, resp, centers, scales, recipe, degree,
                              min_resp, kernel_gram, kernel_rhs)
    kernel_gram = mirror_upper(kernel_gram)
    np.testing.assert_allclose(gram, kernel_gram, atol=1e-12 * np.abs(kernel_gram).max())
    np.testing.assert_allclose(rhs, kernel_rhs, atol=1e-12 * np.abs(kernel_rhs).max())
    # and the dispatcher takes this path here (frames as wide as the box)
    dispatched, _ = assemble_normal_equations(
        X, Y, sw, resp, centers, scales, recipe, degree, min_resp, None
    )
    np.testing.assert_array_equal(dispatched, gram)


def _sibling_problem(n_parents=3, n_children=4, n_features=3, seed=1):
    rng = np.random.default_rng(seed)
    n = 600
    G = np.hstack([np.ones((n, 1)), rng.uniform(-1, 1, (n, n_features - 1))])
    theta = 3.0 * rng.standard_normal((n_parents * n_children, n_features))
    resp = rng.dirichlet(np.ones(n_parents * n_children), n)
    resp[::5, :n_children] = 0.0  # rows that skip the first parent's fit
    sample_weight = rng.uniform(0.5, 2.0, n)
    sample_weight[::7] = 0.0
    return G, theta, resp, sample_weight


def _sibling_log_softmax(logits, n_children):
    groups = logits.reshape(logits.shape[0], -1, n_children)
    return (groups - np.logaddexp.reduce(groups, axis=2, keepdims=True)).reshape(
        logits.shape
    )


def test_child_log_gates_match_numpy():
    from skpou._gates import child_log_gates

    rng = np.random.default_rng(2)
    n, n_parents, n_children = 300, 4, 3
    logits = 5.0 * rng.standard_normal((n, n_parents * n_children))
    logits[:, 0] *= 1e7  # sharp: the largest logit must be taken out first
    logits[:, 4] = -np.inf  # a pruned child
    logits[:, 6:9] = -np.inf  # a parent whose children are all pruned
    parent = np.log(rng.dirichlet(np.ones(n_parents), n))
    parent[:20, 1] = parent[:20].max(axis=1) - 50.0  # negligible parent
    out = child_log_gates(logits.copy(), parent, n_children, cutoff=-40.0)

    expected = np.repeat(parent, n_children, axis=1) + _sibling_log_softmax(
        np.where(np.isinf(logits), -1e300, logits), n_children
    )
    expected[:, 4] = -np.inf
    expected[:, 6:9] = -np.inf
    expected[:20, 3:6] = -np.inf
    assert np.array_equal(np.isinf(out), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-12, atol=1e-12)
    # Gates of every live parent still sum to its own gate.
    live = np.exp(out).reshape(n, n_parents, n_children).sum(axis=2)
    np.testing.assert_allclose(live[20:, [0, 1, 3]], np.exp(parent[20:, [0, 1, 3]]))


def test_softmax_gate_kernels_match_numpy():
    n_children, min_weight = 4, 1e-10
    G, theta, resp, sample_weight = _sibling_problem(n_children=n_children)
    n, n_features = G.shape
    n_parents = theta.shape[0] // n_children
    log_prob = _sibling_log_softmax(G @ theta.T, n_children)
    prob = np.exp(log_prob)

    fit = np.zeros(n_parents)
    objective = np.zeros(n_parents)
    grad = np.zeros((n_parents, n_children, n_features))
    size = n_children * n_features
    curvature = np.zeros((n_parents, size, size))
    _kernels.softmax_newton_terms(
        G, sample_weight, resp, log_prob, n_children, min_weight, 0.0, fit,
        grad, curvature,
    )
    _kernels.softmax_gate_objective(
        sample_weight, resp, log_prob, n_children, min_weight, objective
    )
    curvature = mirror_upper(curvature)

    for p in range(n_parents):
        cols = slice(p * n_children, (p + 1) * n_children)
        r, q = resp[:, cols], prob[:, cols]
        u = r.sum(axis=1)
        s = sample_weight * (u > min_weight)
        expected_fit = s @ (r * log_prob[:, cols]).sum(axis=1)
        expected_grad = ((s[:, None] * (r - u[:, None] * q)).T @ G)
        weight = (s * u)[:, None, None] * (
            np.einsum("dj,jk->djk", q, np.eye(n_children))
            - np.einsum("dj,dk->djk", q, q)
        )
        expected_curvature = np.einsum(
            "djk,df,dg->jfkg", weight, G, G
        ).reshape(size, size)
        np.testing.assert_allclose(fit[p], expected_fit, rtol=1e-12)
        np.testing.assert_allclose(objective[p], expected_fit, rtol=1e-12)
        np.testing.assert_allclose(grad[p], expected_grad, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            curvature[p], expected_curvature, rtol=1e-10, atol=1e-10
        )


def test_newton_curvature_skips_children_far_from_a_block():
    """Children below min_prob on a whole block of rows add no curvature
    there; what is left out is below min_prob per row, and gradients stay."""
    n, n_children, min_prob = 2000, 4, 1e-8
    x = np.linspace(-1, 1, n)
    G = np.column_stack([np.ones(n), x])
    # sharp, ordered children: boundaries at -0.5, 0, 0.5
    theta = 60.0 * np.column_stack([-np.abs(np.arange(4) - 1.5) * 0.5 + 0.75,
                                    np.arange(4) - 1.5]) / 1.5
    log_prob = _sibling_log_softmax(G @ theta.T, n_children)
    resp = np.exp(log_prob)
    sample_weight = np.ones(n)
    size = n_children * 2
    results = []
    for threshold in (0.0, min_prob):
        fit, grad = np.zeros(1), np.zeros((1, n_children, 2))
        curvature = np.zeros((1, size, size))
        _kernels.softmax_newton_terms(
            G, sample_weight, resp, log_prob, n_children, 1e-10, threshold, fit,
            grad, curvature,
        )
        results.append((fit, grad, mirror_upper(curvature)[0]))
    (fit0, grad0, full), (fit1, grad1, skipped) = results
    np.testing.assert_array_equal(fit0, fit1)
    np.testing.assert_array_equal(grad0, grad1)
    # the outer children never meet on a block: their coupling is left out
    assert np.abs(full[0:2, 6:8]).max() > 0.0
    assert np.all(skipped[0:2, 6:8] == 0.0)
    np.testing.assert_allclose(skipped, full, rtol=0, atol=min_prob * n)
