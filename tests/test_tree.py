"""skpou._tree: the partition tree's gates, mixture and E-step."""

import numpy as np

import skpou._tree
from numpy_reference import legendre_basis, random_problem
from skpou._basis import Basis
from skpou._gates import make_gate
from skpou._tree import Level, PartitionTree


def _one_level_tree(log_gate, centers, scales, coef, log_var, degree):
    """A tree whose level 1 has the given experts; its gates are unused."""
    tree = PartitionTree(Basis(centers.shape[1], degree), make_gate("linear", (), 0.0))
    tree.add_level(centers.shape[0])
    level = tree.levels[1]
    level.centers, level.scales, level.coef, level.log_var = centers, scales, coef, log_var
    tree.log_gates = lambda X, level: log_gate  # gates given, not computed
    return tree


def test_e_step_and_moments_match_numpy(monkeypatch):
    X, Y, _, log_gate, centers, scales, powers = random_problem(2, 3, 4, seed=1)
    rng = np.random.default_rng(2)
    coef = rng.standard_normal((4, powers.shape[0], 2))
    log_var = rng.uniform(-2, 0, (4, 2))
    tree = _one_level_tree(log_gate, centers, scales, coef, log_var, 3)
    # nothing skipped: exact agreement expected
    monkeypatch.setattr(skpou._tree, "MIN_LOG_GATE", -np.inf)

    mu = np.stack([legendre_basis((X - centers[k]) / scales[k], powers) @ coef[k]
                   for k in range(4)], axis=1)  # (n, K, T)
    log_joint = log_gate + (-0.5 * (((Y[:, None] - mu) ** 2) / np.exp(log_var)
                                    + log_var + np.log(2 * np.pi))).sum(axis=2)
    resp = np.empty_like(log_gate)
    log_lik = np.empty(X.shape[0])
    tree.e_step(X, Y, 1, resp, log_lik)
    var = np.exp(log_var)
    mean, variance = tree.moments(X, 1, var, True)
    expected = np.logaddexp.reduce(log_joint, axis=1)
    np.testing.assert_allclose(log_lik, expected, rtol=1e-12)
    np.testing.assert_allclose(resp, np.exp(log_joint - expected[:, None]), atol=1e-12)

    gate = np.exp(log_gate)[:, :, None]
    expected_mean = (gate * mu).sum(axis=1)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-10, atol=1e-12)
    expected_var = (gate * (var[None] + (mu - expected_mean[:, None]) ** 2)).sum(axis=1)
    np.testing.assert_allclose(variance, expected_var, rtol=1e-10)
    # one expert alone
    np.testing.assert_allclose(tree.expert_means(X, 1, 2), mu[:, 2], rtol=1e-10, atol=1e-12)


def _unbalanced_tree():
    """Root -> 3 children; they split into 2, 1 and 3 (6 finest nodes)."""
    tree = PartitionTree(Basis(2, 1), make_gate("linear", (), 0.0))
    tree.add_level(3)
    tree.add_level([2, 1, 3])
    rng = np.random.default_rng(0)
    for level in tree.levels[1:]:
        level.gate_params = 3.0 * rng.standard_normal((level.n_nodes, 3))
    return tree


def test_unbalanced_tree_gates_nest_and_sum_to_one():
    tree = _unbalanced_tree()
    np.testing.assert_array_equal(tree.levels[2].child_start, [0, 2, 3, 6])
    np.testing.assert_array_equal(tree.parents(2), [0, 0, 1, 2, 2, 2])
    X = np.random.default_rng(1).uniform(-1, 1, (500, 2))
    coarse = np.exp(tree.log_gates(X, 1))
    fine = np.exp(tree.log_gates(X, 2))
    np.testing.assert_allclose(fine.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(tree.restrict(fine, 2), coarse, atol=1e-12)
    # a node with one child passes its gate on
    np.testing.assert_allclose(fine[:, 2], coarse[:, 1], atol=1e-12)


def test_pruning_switches_off_a_node_and_its_descendants():
    tree = _unbalanced_tree()
    tree.levels[1].pruned = np.array([False, False, True])
    tree.levels[2].pruned = np.array([True, False, False, False, False, False])
    np.testing.assert_array_equal(tree.gone(), [True, False, False, True, True, True])
    X = np.random.default_rng(2).uniform(-1, 1, (100, 2))
    fine = np.exp(tree.log_gates(X, 2))
    np.testing.assert_array_equal(fine[:, tree.gone()], 0.0)
    np.testing.assert_allclose(fine.sum(axis=1), 1.0, atol=1e-12)


def test_levels_hold_per_node_arrays():
    level = Level(pruned=np.zeros(4, dtype=bool))
    assert level.n_nodes == 4


def test_parameter_variance_is_accurate_where_the_basis_is_large():
    # The parameter term |R phi|^2 (C = R^T R) of an expert evaluated far
    # from its frame, where |phi| ~ 1e8, in a direction C almost ignores:
    # exact value s^2 |phi|^2. The quadratic form phi^T C phi had round-off
    # ~ eps |phi|^2 |C| there, larger than the value and of either sign (a
    # negative variance, a NaN std: heat_peak_2d at degree 9).
    degree = 9
    basis = Basis(1, degree)
    X = np.array([[0.9]])
    centers, scales = np.zeros((1, 1)), np.full((1, 1), 0.05)
    n_basis = basis.size
    coef = np.eye(n_basis)[None]  # output j is the basis function j: mean = phi
    tree = _one_level_tree(np.zeros((1, 1)), centers, scales, coef, None, degree)
    no_noise = np.zeros((1, n_basis))
    phi = tree.moments(X, 1, no_noise, False)[0][0]
    assert np.linalg.norm(phi) > 1e8
    # R = diag(s) V^T, V's first column along phi, s = (1e-12, 1, ..., 1)
    V, _ = np.linalg.qr(np.column_stack([phi, np.random.default_rng(0).standard_normal(
        (n_basis, n_basis - 1))]))
    s = np.r_[1e-12, np.ones(n_basis - 1)]
    factor = s[:, None] * V.T
    tree.coef_cov_factor = np.broadcast_to(factor, (1, n_basis) + factor.shape).copy()
    variance = tree.moments(X, 1, no_noise, False, coef_cov_factor=tree.coef_cov_factor)[1]
    np.testing.assert_allclose(variance[0], (1e-12 * np.linalg.norm(phi)) ** 2, rtol=1e-6)


def test_levels_pickled_before_absorbed_and_slivers_get_them_empty():
    import pickle

    from skpou._tree import Level

    level = Level(child_start=np.array([0, 2]), pruned=np.array([False, True]))
    state = pickle.loads(pickle.dumps(level))
    vars(state).pop("absorbed")
    vars(state).pop("slivers")  # as a level pickled before they existed
    old = pickle.loads(pickle.dumps(state))
    np.testing.assert_array_equal(old.absorbed, [False, False])
    np.testing.assert_array_equal(old.slivers, [False, False])
