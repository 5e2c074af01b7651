"""Gate boundaries at C0 kinks, moved to where the neighbouring experts cross.

Where a 1-D target has a kink, EM ends with two neighbouring partitions
whose experts each fit their own side, and a sharp gate boundary between
them somewhere in the gap between the last training sample of one side and
the first of the other. The likelihood is flat in that gap, so nothing in EM
places the boundary inside it, and held-out points between the boundary and
the kink get the wrong expert. The experts themselves locate the kink: a
continuous target is where their polynomials cross. After EM (and before
the polish, which then refits the experts under the final gates) every such
boundary moves to the point nearest to it where its two experts disagree
least, and becomes sharper.

- Which boundaries: those where the data show a kink. The samples of the
  two partitions are fitted by one of the two experts to within a typical
  (median) error e, while across the gap the experts differ by at least
  KINK_RATIO * e. Blends of experts that fit a smooth target (any
  gate_alpha) stay as EM left them: there the experts differ by a few tens
  of e, orders of magnitude below KINK_RATIO, while at the kinks of a
  piecewise polynomial they differ by far more (``tests/test_kinks.py``).
- Where to: the local minima of the experts' squared difference between the
  first and the last sample of the two partitions, nearest to the current
  boundary first; so a boundary EM left a sample or two off the kink is
  corrected too.
- A move is kept only if both partitions keep a contiguous run of the
  samples and the squared error over those samples grows by at most the
  fit's mean squared error per sample. Removing the last traces of blending
  changes the errors at the level of the fit's residuals, up or down (the
  experts were fitted around that blending); moving to a wrong crossing
  hands samples to an expert that does not fit them.

Other rows see the moved gate only through blends that shrink further (the
slope only grows) and the round-off of larger logits: the logits of all the
siblings beyond the boundary shift together, so their own boundaries stay.

This is for 1-D inputs and linear (softmax-affine) gates only. In more
dimensions a linear gate's boundary is a hyperplane, while two experts agree
on a curved surface, and the samples around a boundary leave no interval to
search: there is no single crossing point to move to. Quadratic and MLP gates
have no boundary that shifting the logits moves without reshaping it.
"""

import functools

import numpy as np

# Kink test: across the gap the two experts differ by at least this many
# times the (median) error with which they fit the two partitions' samples.
KINK_RATIO = 1e3
# Logit slope (per unit of the scaled input, whose data span [-1, 1]) of a
# moved boundary, unless EM's is steeper. Its transition zone (minor gate
# above e^-30) is ~3e-6 of the input range, so that few held-out points fall
# in it. The logits grow to ~1e7-1e8; log gates are taken relative to the
# largest logit, so only the logits' own rounding (~1e-8) remains, which
# jitters soft blends of other siblings of the same gate by as little.
SHARP_SLOPE = 1e7
# Steepest slope a moved boundary gets, to keep a training sample next to
# the crossing out of its transition.
MAX_SLOPE = 1e8


def place_boundaries_at_crossings(tree, data, threads):
    """Move the finest level's kink boundaries to where their experts cross.

    ``tree`` is a fitted ``skpou._tree.PartitionTree`` before its polish,
    with 1-D inputs and linear gates; ``data`` its scaled training data.
    Changes the tree's gate parameters in place and returns how many
    boundaries moved.
    """
    level = tree.finest
    rows = np.argsort(data.X[:, 0], kind="stable")
    # capped weights (``TrainingData.capped_weight``): one row of huge weight
    # would make the typical error its own and every blend look like a kink
    X, Y, weight = data.X[rows], data.Y[rows], data.capped_weight[rows]
    winner = _winners(tree, X, level)

    def loss(X, Y, weight):
        return _loss(tree, X, Y, weight, level, threads)

    @functools.cache  # only needed once a boundary sits at a kink
    def mean_squared_error():
        return loss(X, Y, weight) / weight.sum()

    # Runs of rows with the same winning partition, left to right; run r
    # holds rows starts[r]:starts[r + 1].
    starts = np.flatnonzero(np.r_[True, winner[1:] != winner[:-1], True])
    moved = 0
    for run in range(starts.size - 2):
        window = slice(starts[run], starts[run + 2])  # two neighbouring runs
        new_winner = _move_boundary_to_crossing(
            tree, level, X[window], Y[window], weight[window], winner[window],
            loss, mean_squared_error,
        )
        if new_winner is not None:
            winner[window] = new_winner
            starts[run + 1] = window.start + np.argmax(new_winner != new_winner[0])
            moved += 1
    return moved


def _move_boundary_to_crossing(
    tree, level, X, Y, weight, winner, loss, mean_squared_error
):
    """Move the boundary between two neighbouring partitions, at a kink.

    The rows (sorted by x) go to one partition, then to its right
    neighbour; ``loss(X, Y, weight)`` is the blended mean's weighted sum of
    squared errors, ``mean_squared_error()`` the whole fit's. Returns the
    rows' new winners, or None if the boundary stays.
    """
    x = X[:, 0]
    left, right = winner[0], winner[-1]

    def difference(X):
        return tree.expert_means(X, level, left) - tree.expert_means(X, level, right)

    means = [tree.expert_means(X, level, node) for node in (left, right)]
    differences = np.linalg.norm(means[0] - means[1], axis=1)
    accuracy = _typical_error(Y, means, weight)
    split = np.argmax(winner == right)
    if not differences[split - 1:split + 1].max() >= KINK_RATIO * accuracy:
        return None

    gate_level, first, second = _separating_gate(tree, level, left, right)
    gates = tree.levels[gate_level]
    theta = gates.gate_params
    boundary, slope = _pairwise_boundary(theta, first, second)
    if not slope > 0:
        return None
    allowed = loss(X, Y, weight) + weight.sum() * mean_squared_error()
    for position in _least_difference_points(
        difference, tree.basis.degree, x[0], x[-1], boundary
    ):
        gates.gate_params = _moved_boundary(
            theta, first, second, gates.child_start, position,
            _sharpened_slope(slope, position, x, differences, accuracy),
        )
        new_winner = _winners(tree, X, level)
        if _still_two_runs(new_winner, left, right) and loss(X, Y, weight) <= allowed:
            return new_winner
    gates.gate_params = theta
    return None


def _winners(tree, X, level):
    return tree.log_gates(X, level).argmax(axis=1)


def _loss(tree, X, Y, weight, level, threads):
    """Weighted sum of squared errors of the blended mean."""
    no_noise = np.zeros(tree.levels[level].coef.shape[::2])
    parts = threads.map(lambda X: tree.moments(X, level, no_noise, False)[0], X)
    return float(weight @ np.sum((Y - np.concatenate(parts)) ** 2, axis=1))


def _typical_error(Y, means, weight):
    """Typical error of the two experts alone: weighted median over the rows.

    Each row counts with the better of the two experts (``means``), not with
    the gate's winner: a sample the gate still hands to the wrong side is
    fitted by the right expert (EM fits experts to responsibilities, not to
    gates). The median ignores the few samples of a third piece that a
    neighbouring boundary still hands to these partitions.
    """
    errors = np.minimum(*(np.linalg.norm(Y - mean, axis=1) for mean in means))
    order = np.argsort(errors, kind="stable")
    cumulative = np.cumsum(weight[order])
    return float(errors[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def _separating_gate(tree, level, left, right):
    """The gate that separates two nodes of a level: (level, child, child).

    It belongs to their deepest common ancestor: the first level at which
    their ancestors differ; those two ancestors are the gate's children.
    """
    ancestors = [(left, right)]
    for below in range(level, 1, -1):
        parents = tree.parents(below)
        ancestors.append(tuple(parents[node] for node in ancestors[-1]))
    for depth, (first, second) in enumerate(reversed(ancestors), start=1):
        if first != second:
            return depth, first, second
    raise ValueError("a node does not border itself")


def _pairwise_boundary(theta, first, second):
    """Where the logits of two siblings are equal, and their slope difference.

    ``theta`` rows are (bias, slope) of the affine logits in the scaled
    input; ``second`` is the right neighbour, so the slope difference is
    positive for an ordinary boundary.
    """
    slope = theta[second, 1] - theta[first, 1]
    if slope <= 0:
        return np.nan, slope
    return (theta[first, 0] - theta[second, 0]) / slope, slope


def _least_difference_points(difference, degree, low, high, near):
    """Local minima in [low, high] of D(t) = |mu_left(t) - mu_right(t)|^2.

    Nearest to ``near`` first. D is a polynomial of degree 2 * degree in t,
    so interpolating it at 2 * degree + 1 Chebyshev points is exact and its
    stationary points are the roots of the interpolant's derivative. Where
    the experts cross, D has a double zero: the minimum is the crossing.
    """
    n_points = 2 * degree + 1
    if degree == 0 or not high > low:
        return np.empty(0)
    nodes = np.cos(np.pi * (np.arange(n_points) + 0.5) / n_points)
    t = 0.5 * (low + high) + 0.5 * (high - low) * nodes
    squared = np.sum(difference(t[:, None]) ** 2, axis=1)
    interpolant = np.polynomial.Chebyshev.fit(
        t, squared, 2 * degree, domain=[low, high]
    )
    slope = interpolant.deriv()
    roots = slope.roots()
    roots = roots[np.abs(roots.imag) <= 1e-12 * (high - low)].real
    roots = roots[(roots >= low) & (roots <= high)]
    minima = roots[slope.deriv()(roots) > 0]
    return minima[np.argsort(np.abs(minima - near), kind="stable")]


def _sharpened_slope(slope, position, x, differences, accuracy):
    """Logit slope difference of a boundary moved to ``position``.

    At least EM's own and SHARP_SLOPE, and steep enough that no training
    sample (at ``x``, where the two experts differ by ``differences``) is
    blended with the other expert by more than the experts' typical error
    ``accuracy``: exp(-slope * |x - position|) * difference <= accuracy.
    (The polish would otherwise bend both experts to fit the blend.)
    Float64 logits bound it by MAX_SLOPE.
    """
    accuracy = max(accuracy, np.finfo(float).tiny)
    matters = differences > accuracy
    with np.errstate(divide="ignore"):
        needed = np.log(differences[matters] / accuracy) / np.abs(
            x[matters] - position
        )
    return min(MAX_SLOPE, max(slope, SHARP_SLOPE, needed.max(initial=0.0)))


def _moved_boundary(theta, first, second, child_start, position, slope):
    """Gate parameters with the (first, second) boundary at ``position``.

    The logit difference of the pair becomes slope * (x - position). The
    change is added to ``second`` and to every sibling whose logit rises at
    least as fast (the siblings beyond it), so the boundaries among those,
    and among the rest, stay where they are.
    """
    boundary, old_slope = _pairwise_boundary(theta, first, second)
    parent = np.searchsorted(child_start, second, side="right") - 1
    siblings = np.arange(child_start[parent], child_start[parent + 1])
    beyond = siblings[theta[siblings, 1] >= theta[second, 1]]
    moved = theta.copy()
    moved[beyond, 0] += old_slope * boundary - slope * position
    moved[beyond, 1] += slope - old_slope
    return moved


def _still_two_runs(winner, left, right):
    """The window's rows still go to left, then right, each keeping some."""
    is_right = winner == right
    n_left = np.argmax(is_right) if is_right.any() else winner.size
    return (
        0 < n_left < winner.size
        and np.all(winner[:n_left] == left)
        and np.all(is_right[n_left:])
    )
