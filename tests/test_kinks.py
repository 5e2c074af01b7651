"""skpou._kinks: 1-D gate boundaries moved to where neighbouring experts cross."""

import numpy as np

import skpou._estimator
from skpou import HierarchicalPOURegressor
from skpou._data import prepare
from skpou._kinks import place_boundaries_at_crossings
from skpou._parallel import Threads


def paper_1d(x):
    return np.sin(2 * np.pi * x) + np.exp(-(((x - 0.5) / 0.05) ** 2) / 2)


def test_kink_placement_moves_the_boundary_to_the_crossing(monkeypatch):
    """Directly on a tree that EM left with its boundary somewhere in the
    sample gap around the kink: one boundary moves, to the kink."""
    monkeypatch.setattr(skpou._estimator, "place_boundaries_at_crossings",
                        lambda *args: 0)  # the fit leaves the boundary as EM did
    X = np.random.RandomState(0).uniform(0, 1, (200, 1))
    kink = 1 / np.sqrt(5)
    y = np.abs(X[:, 0] - kink)
    model = HierarchicalPOURegressor(
        partitions=(2,), degree=1, gate_alpha=1e-20, n_cycles=10, tol=0, polish=False
    ).fit(X, y)
    data, scaling, _ = prepare(X, y[:, None], np.ones(200))
    tree = model.tree_.copy()

    def boundary(tree):
        t = np.linspace(-1, 1, 200001)[:, None]
        winner = tree.log_gates(t, 1).argmax(axis=1)
        return t[np.argmax(winner != winner[0]), 0] * scaling.x_scale[0] + scaling.x_offset[0]

    x = np.sort(X[:, 0])
    gap = x[np.searchsorted(x, kink) - 1:][:2]
    before = boundary(tree)
    assert gap[0] <= before <= gap[1]  # EM put it in the gap ...
    assert abs(before - kink) > 1e-6  # ... but not at the kink
    assert place_boundaries_at_crossings(tree, data, Threads()) == 1
    assert abs(boundary(tree) - kink) < 1e-5
    # nothing else changed: the experts are the ones EM fitted
    np.testing.assert_array_equal(tree.levels[1].coef, model.tree_.levels[1].coef)


def test_boundary_sits_at_the_kink():
    # |x - c| from 200 random samples, two linear experts: the boundary moves
    # from wherever EM left it in the sample gap to the experts' crossing.
    X = np.random.RandomState(0).uniform(0, 1, (200, 1))
    kink = 1 / np.sqrt(5)
    model = HierarchicalPOURegressor(
        partitions=(2,), degree=1, gate_alpha=1e-20, n_cycles=10, tol=0
    ).fit(X, np.abs(X[:, 0] - kink))
    x = np.sort(X[:, 0])
    gap = x[np.searchsorted(x, kink) - 1:][:2]
    X_test = np.linspace(*gap, 101)[:, None]
    error = np.abs(model.predict(X_test) - np.abs(X_test[:, 0] - kink)).max()
    assert error < 1e-10, f"largest error in the gap around the kink {error:.3e}"


def test_boundaries_of_smooth_fits_do_not_move(monkeypatch):
    # The kink step leaves blends of experts that fit a smooth target alone,
    # whatever the gates' sharpness.
    moved = []
    place = skpou._estimator.place_boundaries_at_crossings
    monkeypatch.setattr(
        skpou._estimator, "place_boundaries_at_crossings",
        lambda *args: moved.append(place(*args)) or moved[-1],
    )
    X = np.linspace(0, 1, 1000)[:, None]
    for gate_alpha in (1e-2, 1e-4, 1e-20):
        for partitions in ((8,), (4, 4)):
            HierarchicalPOURegressor(
                partitions=partitions, degree=2, gate_alpha=gate_alpha,
                random_state=0,
            ).fit(X, paper_1d(X[:, 0]))
    assert moved == [0] * 6, moved
