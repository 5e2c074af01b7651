"""skpou._gates: sibling log-softmax, the softmax Newton M-step, the MLP gate."""

import numpy as np
import pytest

from numpy_reference import sibling_log_softmax
from skpou._data import TrainingData
from skpou._experts import mirror_upper
from skpou._gates import MLPGate, SoftmaxGate, child_log_gates, make_gate
from skpou._kernels import gates as kernels
from skpou._multilevel import split_along_axis
from skpou._parallel import Threads


def _split(n_features, n_children, seed=0):
    rng = np.random.default_rng(seed)
    X = np.sort(rng.uniform(-1, 1, (2000, n_features)), axis=0)
    data = TrainingData(X, np.sin(3 * X.sum(axis=1, keepdims=True)), np.ones(2000))
    child_start = np.array([0, n_children])
    labels, split_logits = split_along_axis(data, np.ones((2000, 1)), child_start, 2)
    return data, labels, split_logits, child_start


def _counting_newton(monkeypatch):
    calls = []
    newton_terms = SoftmaxGate._newton_terms

    def counted(self, *args):
        calls.append(1)
        return newton_terms(self, *args)

    monkeypatch.setattr(SoftmaxGate, "_newton_terms", counted)
    return calls


def test_unknown_gate_family_raises():
    with pytest.raises(ValueError, match="Unknown gate family 'tree'"):
        make_gate("tree", (10,), 1e-2)


def test_split_logits_reproduce_the_split():
    data, labels, split_logits, child_start = _split(2, 5)
    gate = SoftmaxGate(order=1, ridge=0.0)
    log_gate = gate.child_log_gates(
        data.X, split_logits, np.zeros((2000, 1)), child_start, np.zeros(5, bool), -np.inf
    )
    np.testing.assert_allclose(np.exp(log_gate), labels, atol=1e-12)


@pytest.mark.parametrize("order, n_features, n_children", [(1, 1, 45), (2, 2, 6)])
def test_split_start_reaches_the_same_optimum_in_fewer_passes(
    monkeypatch, order, n_features, n_children
):
    """The penalized objective is strictly convex: starting from the scaled
    split logits instead of zero may change how many Newton passes it takes,
    never where they end."""
    data, labels, split_logits, child_start = _split(n_features, n_children)
    gate = SoftmaxGate(order=order, ridge=1e-2)
    calls = _counting_newton(monkeypatch)
    from_split = gate.fit_split(
        data.X, data.sample_weight, labels, split_logits, child_start, Threads(), 200, None
    )
    split_passes = len(calls)
    calls.clear()
    zero = np.zeros((n_children, gate.features(data.X[:1]).shape[1]))
    from_zero = gate.m_step(
        data.X, data.sample_weight, labels, zero, child_start, Threads(), max_iter=200
    )
    assert split_passes < len(calls) < 200  # both converged, the split start sooner

    def probabilities(theta):
        return np.exp(gate.child_log_gates(
            data.X, theta, np.zeros((2000, 1)), child_start,
            np.zeros(n_children, bool), -np.inf,
        ))

    np.testing.assert_allclose(probabilities(from_split), probabilities(from_zero),
                               atol=1e-5)


@pytest.mark.parametrize("child_start", [[0, 3, 6, 9, 12], [0, 1, 4, 6, 12]])
def test_child_log_gates_match_numpy(child_start):
    child_start = np.array(child_start)
    rng = np.random.default_rng(2)
    n, n_parents, n_nodes = 300, 4, 12
    logits = 5.0 * rng.standard_normal((n, n_nodes))
    logits[:, 0] *= 1e7  # sharp: the largest logit must be taken out first
    logits[:, 4] = -np.inf  # a pruned child
    logits[:, 6:12] = -np.inf  # the last parent's children are all pruned
    parent = np.log(rng.dirichlet(np.ones(n_parents), n))
    parent[:20, 1] = parent[:20].max(axis=1) - 50.0  # negligible parent
    out = child_log_gates(logits.copy(), parent, child_start, cutoff=-40.0)

    owner = np.repeat(np.arange(n_parents), np.diff(child_start))
    expected = parent[:, owner] + sibling_log_softmax(
        np.where(np.isinf(logits), -1e300, logits), child_start
    )
    expected[np.isinf(logits)] = -np.inf
    expected[:, child_start[3]:] = -np.inf
    expected[:20, child_start[1]:child_start[2]] = -np.inf
    assert np.array_equal(np.isinf(out), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-12, atol=1e-12)


def _softmax_problem(child_start, n_features=3, seed=1):
    rng = np.random.default_rng(seed)
    n = 600
    G = np.hstack([np.ones((n, 1)), rng.uniform(-1, 1, (n, n_features - 1))])
    theta = 3.0 * rng.standard_normal((child_start[-1], n_features))
    resp = rng.dirichlet(np.ones(child_start[-1]), n)
    resp[::5, child_start[0]:child_start[1]] = 0.0  # rows that skip the first parent's fit
    sample_weight = rng.uniform(0.5, 2.0, n)
    return G, theta, resp, sample_weight


@pytest.mark.parametrize("child_start", [[0, 4, 8, 12], [0, 4, 5, 7]])
def test_softmax_gate_kernels_match_numpy(child_start):
    child_start = np.array(child_start)
    min_weight = 1e-10
    G, theta, resp, sample_weight = _softmax_problem(child_start)
    n, n_features = G.shape
    n_parents = child_start.size - 1
    max_children = np.diff(child_start).max()
    log_prob = sibling_log_softmax(G @ theta.T, child_start)
    prob = np.exp(log_prob)

    fit = np.zeros(n_parents)
    objective = np.zeros(n_parents)
    grad = np.zeros((n_parents, max_children, n_features))
    size = max_children * n_features
    curvature = np.zeros((n_parents, size, size))
    kernels.softmax_newton_terms(
        G, sample_weight, resp, log_prob, child_start, min_weight, 0.0, fit,
        grad, curvature,
    )
    kernels.softmax_gate_objective(
        sample_weight, resp, log_prob, child_start, min_weight, objective
    )
    curvature = mirror_upper(curvature)

    for p in range(n_parents):
        cols = slice(child_start[p], child_start[p + 1])
        c = cols.stop - cols.start
        r, q = resp[:, cols], prob[:, cols]
        u = r.sum(axis=1)
        s = sample_weight * (u > min_weight)
        expected_fit = s @ (r * log_prob[:, cols]).sum(axis=1)
        expected_grad = ((s[:, None] * (r - u[:, None] * q)).T @ G)
        weight = (s * u)[:, None, None] * (
            np.einsum("dj,jk->djk", q, np.eye(c)) - np.einsum("dj,dk->djk", q, q)
        )
        expected_curvature = np.einsum("djk,df,dg->jfkg", weight, G, G).reshape(
            c * n_features, c * n_features
        )
        used = slice(0, c * n_features)
        np.testing.assert_allclose(fit[p], expected_fit, rtol=1e-12)
        np.testing.assert_allclose(objective[p], expected_fit, rtol=1e-12)
        np.testing.assert_allclose(grad[p, :c], expected_grad, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(grad[p, c:], 0.0)  # padded slots untouched
        np.testing.assert_allclose(curvature[p][used, used], expected_curvature,
                                   rtol=1e-10, atol=1e-10)
        assert np.all(curvature[p][c * n_features:] == 0.0)


def test_newton_curvature_skips_children_far_from_a_block():
    """Children below min_prob on a whole block of rows add no curvature
    there; what is left out is below min_prob per row, and gradients stay."""
    n, n_children, min_prob = 2000, 4, 1e-8
    child_start = np.array([0, n_children])
    x = np.linspace(-1, 1, n)
    G = np.column_stack([np.ones(n), x])
    # sharp, ordered children: boundaries at -0.5, 0, 0.5
    theta = 60.0 * np.column_stack([-np.abs(np.arange(4) - 1.5) * 0.5 + 0.75,
                                    np.arange(4) - 1.5]) / 1.5
    log_prob = sibling_log_softmax(G @ theta.T, child_start)
    resp = np.exp(log_prob)
    sample_weight = np.ones(n)
    size = n_children * 2
    results = []
    for threshold in (0.0, min_prob):
        fit, grad = np.zeros(1), np.zeros((1, n_children, 2))
        curvature = np.zeros((1, size, size))
        kernels.softmax_newton_terms(
            G, sample_weight, resp, log_prob, child_start, 1e-10, threshold, fit,
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


@pytest.mark.parametrize("gate", [SoftmaxGate(order=1, ridge=1e-3), SoftmaxGate(order=2, ridge=1e-3),
                                  MLPGate(hidden_sizes=(6,), ridge=1e-4, max_iter=200)])
def test_unequal_sibling_groups_fit_like_separate_parents(gate):
    """Parents with 1, 2 and 3 children fitted at once give each parent the
    gates it gets when fitted alone (the padded slots change nothing)."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (1500, 2))
    sw = rng.uniform(0.5, 1.5, 1500)
    child_start = np.array([0, 1, 3, 6])
    # soft labels: three parents' mass split among their children by x0 and x1
    parent_mass = rng.dirichlet(np.ones(3), 1500)
    labels = np.zeros((1500, 6))
    labels[:, 0] = parent_mass[:, 0]
    labels[:, 1:3] = parent_mass[:, [1]] * np.column_stack([X[:, 0] < 0, X[:, 0] >= 0])
    third = np.column_stack([X[:, 1] < -0.3, np.abs(X[:, 1]) <= 0.3, X[:, 1] > 0.3])
    labels[:, 3:6] = parent_mass[:, [2]] * third
    labels = 0.98 * labels + 0.02 * labels.mean(axis=0)  # not separable: finite optimum
    split_logits = np.zeros((6, 3))
    random_state = np.random.RandomState(0)
    together = gate.fit_split(X, sw, labels, split_logits, child_start, Threads(), 100,
                              random_state)
    log_gate = gate.child_log_gates(X, together, np.zeros((1500, 3)), child_start,
                                    np.zeros(6, bool), -np.inf)
    np.testing.assert_allclose(np.exp(log_gate)[:, 0], 1.0)
    for p in (1, 2):
        cols = slice(child_start[p], child_start[p + 1])
        alone_start = np.array([0, cols.stop - cols.start])
        alone = gate.fit_split(X, sw, labels[:, cols], split_logits[cols], alone_start,
                               Threads(), 100, np.random.RandomState(0))
        alone_gate = gate.child_log_gates(X, alone, np.zeros((1500, 1)), alone_start,
                                          np.zeros(alone_start[-1], bool), -np.inf)
        # the learned split matches the labels' (a real fit, not a flat gate)
        winners = np.argmax(labels[:, cols], axis=1)
        assert np.mean(np.argmax(log_gate[:, cols], axis=1) == winners) > 0.95
        if isinstance(gate, SoftmaxGate):  # convex: the same optimum
            np.testing.assert_allclose(np.exp(log_gate[:, cols]), np.exp(alone_gate),
                                       atol=1e-4)
