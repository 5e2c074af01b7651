"""skpou._multilevel: the V-cycle, the coarse-to-fine start, the EM steps."""

import numpy as np
import pytest

import skpou._multilevel as multilevel
from skpou._basis import Basis
from skpou._data import prepare
from skpou._gates import make_gate
from skpou._parallel import Threads
from skpou._tree import PartitionTree


def _fitted_tree(partitions, n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 2))
    y = np.sin(4 * X[:, 0]) * np.cos(3 * X[:, 1])
    data, _, _ = prepare(X, y[:, None], np.ones(n))
    tree = PartitionTree(Basis(2, 2), make_gate("linear", (), 1e-2))
    settings = multilevel.EMSettings(alpha=1e-10, sigma="shared", n_jobs=None,
                                     threads=Threads())
    multilevel.initialize(tree, data, partitions, settings, np.random.RandomState(0))
    return tree, data, settings


def test_v_cycle_runs_the_papers_steps_in_order(monkeypatch):
    """Algorithm 1 with S_pre = 0, S_coarse = S_post = 1 on three levels:
    restrict level 3 to update gate 2, restrict level 2 to update gate 1,
    relax level 1, then relax levels 2 and 3 (post-relaxation)."""
    tree, data, settings = _fitted_tree((2, 2, 2))
    calls = []
    e_step, m_step_gates, relax = multilevel.e_step, multilevel.m_step_gates, multilevel.relax

    def spy_e_step(tree, data, level, settings):
        out = e_step(tree, data, level, settings)
        calls.append(("e_step", level, out[0]))
        return out

    def spy_gates(tree, data, level, resp, settings):
        calls.append(("gates", level, resp))
        return m_step_gates(tree, data, level, resp, settings)

    def spy_relax(tree, data, level, settings):
        calls.append(("relax", level, None))
        return relax(tree, data, level, settings)

    monkeypatch.setattr(multilevel, "e_step", spy_e_step)
    monkeypatch.setattr(multilevel, "m_step_gates", spy_gates)
    monkeypatch.setattr(multilevel, "relax", spy_relax)
    multilevel.v_cycle(tree, data, 3, settings)
    outer = [(name, level) for name, level, _ in calls]
    assert outer[:5] == [("e_step", 3), ("gates", 2), ("e_step", 2), ("gates", 1), ("relax", 1)]
    assert [step for step in outer if step[0] == "relax"] == [("relax", 1), ("relax", 2), ("relax", 3)]
    # restriction: the coarse responsibilities are the fine ones summed over siblings
    fine = calls[0][2]
    np.testing.assert_allclose(calls[1][2], fine[:, 0::2] + fine[:, 1::2], atol=1e-15)
    np.testing.assert_allclose(calls[1][2].sum(axis=1), 1.0, atol=1e-12)


def test_v_cycles_increase_the_likelihood_on_a_smooth_fit():
    tree, data, settings = _fitted_tree((3, 2))
    losses, _ = multilevel.run_v_cycles(tree, data, 6, 0.0, settings)
    assert len(losses) == 6
    # Coarse corrections change the fine gates through the product, and the
    # gate M-steps maximize a penalized objective: the fine loss need not
    # fall at every cycle, but it falls over the cycles.
    assert losses[-1] < losses[0] - 0.1


def test_v_cycle_on_an_unbalanced_tree():
    tree, data, settings = _fitted_tree((3,))
    tree.add_level([1, 3, 2])  # refine two of the three partitions
    level = tree.levels[2]
    split, split_logits = multilevel.split_along_axis(
        data, np.exp(tree.log_gates(data.X, 1)), level.child_start, tree.basis.degree
    )
    level.gate_params = tree.gates.fit_split(
        data.X, data.sample_weight, split, split_logits, level.child_start,
        settings.threads, 50, None,
    )
    resp = np.exp(tree.log_gates(data.X, 2))
    multilevel.m_step_experts(tree, data, 2, resp, settings)
    multilevel.m_step_noise(tree, data, 2, resp, settings)
    before = -multilevel.relax(tree, data, 2, settings)[1]
    losses, _ = multilevel.run_v_cycles(tree, data, 3, 0.0, settings)
    assert losses[-1] < before
    gates = np.exp(tree.log_gates(data.X, 2))
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, atol=1e-12)
    # the one-child node passes its parent's gate on
    np.testing.assert_allclose(gates[:, 0], np.exp(tree.log_gates(data.X, 1))[:, 0], atol=1e-12)


def test_split_gives_each_parent_its_own_number_of_slabs():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 1, (2000, 1))
    data, _, _ = prepare(X, X, np.ones(2000))
    resp = np.column_stack([data.X[:, 0] < 0, data.X[:, 0] >= 0]).astype(float)
    labels, logits = multilevel.split_along_axis(data, resp, np.array([0, 2, 5]), 1)
    assert labels.shape == (2000, 5) and logits.shape == (5, 2)
    np.testing.assert_allclose(labels[:, :2].sum(axis=1), resp[:, 0], atol=1e-12)
    winners = np.argmax(labels, axis=1)
    # each slab holds about its share of its parent's rows
    np.testing.assert_allclose(np.bincount(winners, minlength=5) / 2000,
                               [0.25, 0.25, 1 / 6, 1 / 6, 1 / 6], atol=0.02)


@pytest.mark.parametrize("relative_floor, floor", [(None, 1e-24), (0.5, 0.5 * 3.0)])
def test_noise_variances(relative_floor, floor):
    squared = np.array([[2.0], [0.0], [10.0]])
    mass = np.array([1.0, 0.0, 3.0])
    pooled = 12.0 / 4.0
    var = multilevel.noise_variances(squared, mass, relative_floor)
    np.testing.assert_allclose(var[:, 0], np.maximum([2.0, pooled, 10.0 / 3.0], floor))
