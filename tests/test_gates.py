"""The gate M-step: where a new level's softmax gates start, and where they end."""

import numpy as np
import pytest

from skpou._gates import SoftmaxGate
from skpou._hpou import _split_along_axis, _TrainingData


def _split(n_features, n_children, seed=0):
    rng = np.random.default_rng(seed)
    X = np.sort(rng.uniform(-1, 1, (2000, n_features)), axis=0)
    data = _TrainingData(X, np.sin(3 * X.sum(axis=1, keepdims=True)), np.ones(2000))
    labels, split_logits = _split_along_axis(data, np.ones((2000, 1)), n_children, 2)
    return data, labels, split_logits


def _counting_newton(monkeypatch):
    calls = []
    newton_terms = SoftmaxGate._newton_terms

    def counted(self, *args):
        calls.append(1)
        return newton_terms(self, *args)

    monkeypatch.setattr(SoftmaxGate, "_newton_terms", counted)
    return calls


def test_split_logits_reproduce_the_split():
    data, labels, split_logits = _split(2, 5)
    gate = SoftmaxGate(order=1, ridge=0.0)
    log_gate = gate.child_log_gates(
        data.X, split_logits, np.zeros((2000, 1)), 5, np.zeros(5, bool), -np.inf
    )
    np.testing.assert_allclose(np.exp(log_gate), labels, atol=1e-12)


@pytest.mark.parametrize("order, n_features, n_children", [(1, 1, 45), (2, 2, 6)])
def test_split_start_reaches_the_same_optimum_in_fewer_passes(
    monkeypatch, order, n_features, n_children
):
    """The penalized objective is strictly convex: starting from the scaled
    split logits instead of zero may change how many Newton passes it takes,
    never where they end."""
    data, labels, split_logits = _split(n_features, n_children)
    gate = SoftmaxGate(order=order, ridge=1e-2)
    calls = _counting_newton(monkeypatch)
    from_split = gate.fit_split(
        data.X, data.sample_weight, labels, split_logits, n_children, None, 200, None
    )
    split_passes = len(calls)
    calls.clear()
    zero = np.zeros((n_children, gate.features(data.X[:1]).shape[1]))
    from_zero = gate.m_step(
        data.X, data.sample_weight, labels, zero, n_children, None, max_iter=200
    )
    assert split_passes < len(calls) < 200  # both converged, the split start sooner

    def probabilities(theta):
        return np.exp(gate.child_log_gates(
            data.X, theta, np.zeros((2000, 1)), n_children,
            np.zeros(n_children, bool), -np.inf,
        ))

    np.testing.assert_allclose(probabilities(from_split), probabilities(from_zero),
                               atol=1e-5)
