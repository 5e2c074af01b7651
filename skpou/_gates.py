"""Gates: the conditional partition probabilities pi_{j|parent}(x).

One gate object (a *gate family*: settings only, parameters are plain numpy
arrays) serves every level of the tree. A level's nodes come in groups of
siblings, one group per parent node, contiguous: parent p's children are
the nodes child_start[p]:child_start[p + 1], and each parent's gate is a
softmax over its children (a parent with one child passes its gate on).
The gate M-step maximises the soft-label cross-entropy

    J_p(theta_p) = sum_d s_d sum_j r_dj log pi_{j|p}(x_d; theta_p)

separately for every parent p (doc/design.md section 3): no closed form, but a
small, smooth problem that a second-order method solves in a few steps.

- :class:`SoftmaxGate`: logits affine ("linear") or quadratic in x, fitted by
  batched Newton steps with a backtracking line search over all parents at
  once (the Numba kernel assembles gradients and curvatures in one pass).
- :class:`MLPGate`: the paper's tanh MLP with softmax output, fitted parent
  by parent with scipy's L-BFGS.

Every family implements the protocol :class:`GateFamily`.
"""

from typing import Protocol

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from ._basis import local_frames
from ._experts import mirror_upper
from ._kernels import gates as _kernels
from ._parallel import ROWS_PER_BLOCK

# Parent weight below which a sample does not enter that parent's gate fit.
MIN_PARENT_WEIGHT = 1e-10
# Children whose probability stays below this on a whole block of rows add
# no curvature there (see ``_kernels.gates.softmax_newton_terms``).
MIN_CURVATURE_PROB = 1e-12
# A new level's softmax gates start at the best of the split's logits scaled
# by 1, 1/4, ..., 4^-(RAY_SCALES - 1) (see ``SoftmaxGate.fit_split``).
RAY_SCALES = 6


class GateFamily(Protocol):
    """What the multilevel EM asks of a gate family.

    ``params`` are one level's gate parameters; ``child_start`` (n_parents
    + 1,) delimits its sibling groups; ``threads`` is a
    ``skpou._parallel.Threads``.
    """

    def fit_split(self, X, sample_weight, labels, split_logits, child_start,
                  threads, max_iter, random_state):
        """Parameters of a new level's gates, fitted to soft labels (n, K)
        from a split whose affine logits (K, 1 + n_features) are given."""

    def child_log_gates(self, X, params, parent_log_gate, child_start, pruned, cutoff):
        """log pi of every node of the level (n, K), given the parents'."""

    def m_step(self, X, sample_weight, resp, params, child_start, threads, max_iter=None):
        """New parameters that increase sum_p J_p for responsibilities (n, K)."""

    def initial_params(self, child_start, n_features, random_state):
        """Parameters of a level before any fit."""

    def select(self, params, parents, nodes):
        """The parameters of some groups (``parents``, their ``nodes``)."""

    def replace(self, params, parents, nodes, selected):
        """``params`` with those groups' parameters replaced by ``selected``."""


# Groups of one child: the child's gate is its parent's, and there is
# nothing to fit. An unbalanced tree passes most nodes on like this, so the
# level functions below evaluate and fit only the groups of two or more.


def _split_groups(child_start):
    """Parents with two or more children, their nodes (a mask over the
    level), and those groups' own child_start."""
    counts = np.diff(child_start)
    parents = np.flatnonzero(counts > 1)
    nodes = np.repeat(counts > 1, counts)
    return parents, nodes, np.concatenate([[0], np.cumsum(counts[parents])])


def level_log_gates(gates, X, params, parent_log_gate, child_start, pruned, cutoff):
    """log pi (n, K) of every node of a level, given its parents' log gates.

    ``gates`` is the family. A pruned node gets -inf, and so, through the
    product, does its subtree.
    """
    counts = np.diff(child_start)
    if counts.min() > 1:
        return gates.child_log_gates(X, params, parent_log_gate, child_start, pruned, cutoff)
    log_gate = parent_log_gate[:, np.repeat(np.arange(counts.size), counts)]
    log_gate[:, pruned] = -np.inf
    parents, nodes, group_start = _split_groups(child_start)
    if parents.size:
        log_gate[:, nodes] = gates.child_log_gates(
            X, gates.select(params, parents, nodes), parent_log_gate[:, parents],
            group_start, pruned[nodes], cutoff,
        )
    return log_gate


def fit_level_split(gates, X, sample_weight, labels, split_logits, child_start,
                    threads, max_iter, random_state):
    """``GateFamily.fit_split`` for the groups of two or more children."""
    parents, nodes, group_start = _split_groups(child_start)
    if parents.size == child_start.size - 1:
        return gates.fit_split(X, sample_weight, labels, split_logits, child_start,
                               threads, max_iter, random_state)
    params = gates.initial_params(child_start, X.shape[1], random_state)
    if parents.size:
        fitted = gates.fit_split(X, sample_weight, labels[:, nodes], split_logits[nodes],
                                 group_start, threads, max_iter, random_state)
        params = gates.replace(params, parents, nodes, fitted)
    return params


def level_m_step(gates, X, sample_weight, resp, params, child_start, threads):
    """``GateFamily.m_step`` for the groups of two or more children."""
    parents, nodes, group_start = _split_groups(child_start)
    if parents.size == 0:
        return params
    if parents.size == child_start.size - 1:
        return gates.m_step(X, sample_weight, resp, params, child_start, threads)
    fitted = gates.m_step(X, sample_weight, np.ascontiguousarray(resp[:, nodes]),
                          gates.select(params, parents, nodes), group_start, threads)
    return gates.replace(params, parents, nodes, fitted)


def make_gate(kind, hidden_sizes, ridge):
    """The gate family named by the estimator's ``gate`` parameter."""
    if kind == "linear":
        return SoftmaxGate(order=1, ridge=ridge)
    if kind == "quadratic":
        return SoftmaxGate(order=2, ridge=ridge)
    if kind == "mlp":
        return MLPGate(hidden_sizes=hidden_sizes, ridge=ridge)
    raise ValueError(f"Unknown gate family {kind!r}: expected 'linear', 'quadratic' or 'mlp'.")


def child_log_gates(logits, parent_log_gate, child_start, cutoff=-np.inf):
    """log pi_child = log pi_parent + log-softmax of the logits over siblings.

    ``logits`` (n_samples, n_nodes) come in groups of siblings; a -inf logit
    switches a child off (pruned), and a group of -inf logits switches off
    its parent too. Children of a parent whose gate is below exp(cutoff) of
    the row's largest parent gate get -inf: they could never reach the
    E-step's or the prediction's threshold. Exponentials and logarithms are
    taken by numpy in bulk: its SIMD exp and log are ~10x faster than the
    scalar libm calls a Numba loop makes. ``logits`` is overwritten with the
    result, and the scratch space is taken a block of rows at a time: no
    other (n_samples, n_nodes) array.
    """
    log_gate = logits
    _kernels.shift_by_sibling_max(logits, parent_log_gate, child_start, cutoff, log_gate)
    for start in range(0, log_gate.shape[0], ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        totals = np.empty_like(parent_log_gate[rows])
        _kernels.sibling_sums(np.exp(log_gate[rows]), child_start, totals)
        with np.errstate(divide="ignore"):  # log(0) = -inf: all children off
            log_total = np.log(totals, out=totals)
        _kernels.add_log_normalizer(
            log_gate[rows], log_total, parent_log_gate[rows], child_start
        )
    return log_gate


def sum_over_siblings(values, child_start):
    """(n, n_parents): values (n, K) summed over each parent's children.

    Groups all of one size (every fixed tree) are summed through a reshape,
    which rounds as the package always has; reduceat sums unequal groups.
    """
    counts = np.diff(child_start)
    if np.all(counts == counts[0]):
        return values.reshape(values.shape[0], -1, counts[0]).sum(axis=2)
    return np.add.reduceat(values, child_start[:-1], axis=1)


def sibling_slots(child_start):
    """(parent, slot) of every node: node child_start[p] + j is (p, j)."""
    counts = np.diff(child_start)
    parent = np.repeat(np.arange(counts.size), counts)
    return parent, np.arange(child_start[-1]) - child_start[parent]


def _grouped(rows, child_start):
    """Per-node rows (K, ...) -> (n_parents, max_children, ...), zero-padded."""
    parent, slot = sibling_slots(child_start)
    grouped = np.zeros((child_start.size - 1, np.diff(child_start).max(), *rows.shape[1:]))
    grouped[parent, slot] = rows
    return grouped


def _ungrouped(grouped, child_start):
    """The inverse of ``_grouped``."""
    return grouped[sibling_slots(child_start)]


def _newton_step(curvature, grad):
    """Solve curvature @ step = grad for every parent, robustly.

    The curvature is positive semi-definite with flat directions (softmax
    shifts; children separated perfectly), and a tiny ridge is lost to
    round-off next to O(1) entries. Eigenvalues are therefore floored at
    1e-14 of the largest one (Levenberg-style damping of the step only:
    the objective keeps its own ridge); the line search does the rest.
    """
    eigval, eigvec = np.linalg.eigh(curvature)
    floor = 1e-14 * np.maximum(eigval[:, -1:], np.finfo(float).tiny)
    eigval = np.maximum(eigval, floor)
    coords = np.einsum("pji,pj->pi", eigvec, grad) / eigval
    return np.einsum("pij,pj->pi", eigvec, coords)


class SoftmaxGate:
    """Softmax of affine (order 1) or quadratic (order 2) logits.

    Parameters of a level: ``theta`` of shape (n_nodes, n_gate_features).
    ``ridge`` (per unit of sample weight) keeps logits bounded when children
    separate perfectly: exact reproduction needs sharp gates, but finite ones.

    Inside EM each M-step takes one damped Newton step (``max_iter=1``): a
    partial M-step, which still increases the likelihood, and the next
    sweep continues from responsibilities that already reflect the step.
    Newton works on the parameters grouped per parent, (n_parents,
    max_children * F): parents with fewer children have padded slots, which
    the step leaves at zero.
    """

    def __init__(self, order, ridge, max_iter=1, tol=1e-10):
        self.order = order
        self.ridge = ridge
        self.max_iter = max_iter
        self.tol = tol

    def features(self, X):
        columns = [np.ones((X.shape[0], 1)), X]
        if self.order == 2:
            i, j = np.triu_indices(X.shape[1])
            columns.append(X[:, i] * X[:, j])
        return np.hstack(columns)

    def fit_split(
        self, X, sample_weight, labels, split_logits, child_start, threads,
        max_iter, random_state,
    ):
        """Gates of a new level, fitted to the split's labels.

        Newton starts on the ray through the split's own affine logits
        (quadratic terms zero), at the scale whose penalized objective is
        best for each parent: the split's logits reproduce the labels
        exactly but are far sharper than the penalty allows. From zero
        logits instead, every child carries gate on every row and the
        first Newton passes' curvature is dense (measured several times
        slower with many partitions). The objective is strictly convex, so
        the start changes the work, not the optimum.
        """
        n_features = split_logits.shape[1] - 1
        n_extra = self.features(np.zeros((1, n_features))).shape[1] - split_logits.shape[1]
        direction = np.hstack([split_logits, np.zeros((split_logits.shape[0], n_extra))])
        # Centred over siblings: the same softmax, with the smallest penalty.
        grouped = _grouped(direction, child_start)
        counts = np.diff(child_start)
        grouped -= grouped.sum(axis=1, keepdims=True) / counts[:, None, None]
        direction = _ungrouped(grouped, child_start)
        G = self.features(X)
        _, penalized = self._penalized_objective(
            X, G, sample_weight, labels, child_start, threads
        )
        scales = 4.0 ** -np.arange(RAY_SCALES)
        objectives = np.array([penalized(scale * direction) for scale in scales])
        best = scales[np.argmax(objectives, axis=0)]  # per parent
        theta = np.repeat(best, counts)[:, None] * direction
        return self.m_step(X, sample_weight, labels, theta, child_start, threads, max_iter)

    def initial_params(self, child_start, n_features, random_state):
        return np.zeros((child_start[-1], self.features(np.zeros((1, n_features))).shape[1]))

    def select(self, params, parents, nodes):
        return params[nodes]

    def replace(self, params, parents, nodes, selected):
        params = params.copy()
        params[nodes] = selected
        return params

    def _sibling_log_softmax(self, G, theta, child_start):
        """log pi_{j|p} of every child given its parent, at features G."""
        parents = np.zeros((G.shape[0], child_start.size - 1))
        return child_log_gates(G @ theta.T, parents, child_start)

    def child_log_gates(self, X, theta, parent_log_gate, child_start, pruned, cutoff):
        """log pi of every child: parent's log gate plus sibling log-softmax."""
        logits = self.features(X) @ theta.T
        logits[:, pruned] = -np.inf
        return child_log_gates(logits, parent_log_gate, child_start, cutoff)

    def _penalized_objective(self, X, G, sample_weight, resp, child_start, threads):
        """The ridge, and theta -> the penalized objective J_p of every parent.

        The ridge is grouped per parent, (n_parents, max_children * F).
        Nothing per row is kept: memory stays at the responsibilities the
        M-step is given.
        """
        n_parents = child_start.size - 1
        total = sample_weight.sum()
        ridge = self._sharpness_ridge(X, sample_weight, resp, child_start)

        def block_fit(theta, G, sample_weight, resp):
            fit = np.zeros(n_parents)
            _kernels.softmax_gate_objective(
                sample_weight, resp, self._sibling_log_softmax(G, theta, child_start),
                child_start, MIN_PARENT_WEIGHT, fit,
            )
            return (fit,)

        def penalized(theta, fit=None):
            """J_p at theta; ``fit`` (sum of s r log pi) if already known."""
            if fit is None:
                (fit,) = threads.sum(
                    lambda *blocks: block_fit(theta, *blocks), G, sample_weight, resp
                )
            grouped = _grouped(theta, child_start).reshape(n_parents, -1)
            penalty = 0.5 * (ridge * grouped**2).sum(axis=1)
            return fit / total - penalty

        return ridge, penalized

    def m_step(
        self, X, sample_weight, resp, theta, child_start, threads, max_iter=None
    ):
        G = self.features(X)
        n_parents = child_start.size - 1
        total = sample_weight.sum()
        ridge, penalized = self._penalized_objective(
            X, G, sample_weight, resp, child_start, threads
        )
        size = ridge.shape[1]
        real = _grouped(np.ones_like(theta), child_start).reshape(n_parents, size) > 0

        for _ in range(self.max_iter if max_iter is None else max_iter):
            fit, grad, curvature = self._newton_terms(
                G, theta, sample_weight, resp, child_start, threads
            )
            objective = penalized(theta, fit)
            flat = _grouped(theta, child_start).reshape(n_parents, size)
            grad = grad.reshape(n_parents, size) / total - ridge * flat
            curvature = curvature / total
            diagonal = np.arange(size)
            curvature[:, diagonal, diagonal] += np.where(real, ridge, 1.0)
            step = np.where(real, _newton_step(curvature, grad), 0.0)
            decrement = np.einsum("ps,ps->p", grad, step)
            converged = decrement <= self.tol * (1.0 + np.abs(objective))
            if converged.all():
                break
            # Converged parents stay put: their Armijo test would compare two
            # kernels' round-off (the objective above comes from the Newton
            # pass, the line search's from its own).
            decrement[converged] = 0.0
            theta = self._line_search(
                theta, step, decrement, objective, penalized, child_start
            )
        return theta

    def _sharpness_ridge(self, X, sample_weight, resp, child_start):
        """Per-parent diagonal ridge, shape (n_parents, max_children * F).

        What the penalty should bound is how sharp the transitions between
        siblings are, measured in units of a child's width, not the raw
        logit slopes: a parent of half-width h split in N has children of
        width ~h/N, so a slope a gives sharpness ~a h / N. The ridge on a
        slope is therefore ridge * m * (h / N)^2 / N: m (the parent's share
        of the weight) keeps deep, small parents from being penalized more
        than the data they hold, and the last 1/N keeps the optimal
        sharpness from shrinking as siblings are added. Quadratic terms
        scale with the product of two half-widths; the biases get a token
        ridge that only fixes the softmax's shift invariance. Padded slots
        get none.
        """
        n_features = X.shape[1]
        n_parents = child_start.size - 1
        parent_weight = sample_weight[:, None] * sum_over_siblings(resp, child_start)
        mass = parent_weight.sum(axis=0) / sample_weight.sum()
        _, half_width = local_frames(X, parent_weight, np.ones(X.shape[0]), 1e-6)
        columns = [np.full((half_width.shape[0], 1), 1e-6), half_width**2]
        if self.order == 2:
            i, j = np.triu_indices(n_features)
            columns.append((half_width[:, i] * half_width[:, j]) ** 2)
        counts = np.diff(child_start)
        per_feature = np.hstack(columns) / counts[:, None] ** 3
        ridge = self.ridge * mass[:, None] * per_feature
        parent, _ = sibling_slots(child_start)
        return _grouped(ridge[parent], child_start).reshape(n_parents, -1)

    def _newton_terms(self, G, theta, sample_weight, resp, child_start, threads):
        n_parents = child_start.size - 1
        max_children = np.diff(child_start).max()
        size = max_children * G.shape[1]

        def block(G, sample_weight, resp):
            fit = np.zeros(n_parents)
            grad = np.zeros((n_parents, max_children, G.shape[1]))
            curvature = np.zeros((n_parents, size, size))
            _kernels.softmax_newton_terms(
                G, sample_weight, resp,
                self._sibling_log_softmax(G, theta, child_start),
                child_start, MIN_PARENT_WEIGHT, MIN_CURVATURE_PROB, fit, grad,
                curvature,
            )
            return fit, grad, curvature

        fit, grad, curvature = threads.sum(block, G, sample_weight, resp)
        return fit, grad, mirror_upper(curvature)

    @staticmethod
    def _line_search(theta, step, decrement, objective, penalized, child_start):
        """Backtracking (Armijo) line search, separately for every parent.

        Parents whose step never satisfies the Armijo condition keep their
        parameters. Returns the new parameters.
        """
        n_parents, size = step.shape
        flat = _grouped(theta, child_start).reshape(n_parents, size)
        shape = (n_parents, -1, theta.shape[1])
        eta = np.ones(n_parents)
        pending = decrement > 0
        new_flat = flat.copy()
        for _ in range(30):
            if not pending.any():
                break
            trial = np.where(pending[:, None], flat + eta[:, None] * step, new_flat)
            trial_objective = penalized(_ungrouped(trial.reshape(shape), child_start))
            accept = pending & (
                trial_objective >= objective + 1e-4 * eta * decrement
            )
            new_flat[accept] = trial[accept]
            pending &= ~accept
            eta[pending] *= 0.5
        return _ungrouped(new_flat.reshape(shape), child_start)


class MLPGate:
    """The paper's gate: a tanh MLP with softmax output, one per parent.

    Parameters of a level: a tuple of arrays stacked over parents,
    (W_1, b_1, ..., W_L, b_L) with W_i of shape (n_parents, fan_in, fan_out);
    the last layer has max_children outputs, of which a parent uses as many
    as it has children.
    """

    def __init__(self, hidden_sizes, ridge, max_iter=20):
        self.hidden_sizes = tuple(hidden_sizes)
        self.ridge = ridge
        self.max_iter = max_iter

    def fit_split(
        self, X, sample_weight, labels, split_logits, child_start, threads,
        max_iter, random_state,
    ):
        """Gates of a new level, fitted to the split's labels from random
        (Glorot) weights: a tanh network cannot start at the split's affine
        logits."""
        params = self.initial_params(child_start, X.shape[1], random_state)
        return self.m_step(X, sample_weight, labels, params, child_start, threads, max_iter)

    def select(self, params, parents, nodes):
        """The groups' networks (each keeps max_children outputs)."""
        return tuple(param[parents] for param in params)

    def replace(self, params, parents, nodes, selected):
        params = tuple(param.copy() for param in params)
        for param, new in zip(params, selected):
            param[parents, ..., : new.shape[-1]] = new
        return params

    def initial_params(self, child_start, n_features, random_state):
        n_parents = child_start.size - 1
        sizes = (n_features, *self.hidden_sizes, np.diff(child_start).max())
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot, as MLPRegressor
            params.append(
                random_state.uniform(-bound, bound, (n_parents, fan_in, fan_out))
            )
            params.append(np.zeros((n_parents, fan_out)))
        return tuple(params)

    @staticmethod
    def _forward(X, params):
        """Logits (n_parents, n_samples, max_children) and hidden activations."""
        hidden = [np.broadcast_to(X, (params[0].shape[0], *X.shape))]
        n_layers = len(params) // 2
        for i in range(n_layers):
            z = hidden[-1] @ params[2 * i] + params[2 * i + 1][:, None, :]
            if i < n_layers - 1:
                z = np.tanh(z)
            hidden.append(z)
        return hidden[-1], hidden

    def child_log_gates(self, X, params, parent_log_gate, child_start, pruned, cutoff):
        """log pi of every child: parent's log gate plus sibling log-softmax."""
        out, _ = self._forward(X, params)
        parent, slot = sibling_slots(child_start)
        logits = np.ascontiguousarray(out[parent, :, slot].T)
        logits[:, pruned] = -np.inf
        return child_log_gates(logits, parent_log_gate, child_start, cutoff)

    def m_step(
        self, X, sample_weight, resp, params, child_start, threads, max_iter=None
    ):
        n_parents = params[0].shape[0]
        total = sample_weight.sum()
        jobs = []
        for p in range(n_parents):
            labels = resp[:, child_start[p]:child_start[p + 1]]
            rows = labels.sum(axis=1) > MIN_PARENT_WEIGHT
            own = tuple(param[p:p + 1] for param in params)
            jobs.append(
                (X[rows], sample_weight[rows] / total, labels[rows], own,
                 self.max_iter if max_iter is None else max_iter)
            )
        fitted = threads.map_tasks(lambda job: self._fit_parent(*job), jobs)
        return tuple(
            np.concatenate([parent[i] for parent in fitted])
            for i in range(len(params))
        )

    def _fit_parent(self, X, weight, labels, params, max_iter):
        if X.shape[0] == 0:
            return params
        X, weight, labels = _merged_equal_rows(X, weight, labels)
        shapes = [param.shape for param in params]
        sizes = [param.size for param in params]
        n_children = labels.shape[1]  # outputs beyond these are padding

        def unpack(flat):
            parts = np.split(flat, np.cumsum(sizes)[:-1])
            return [part.reshape(shape) for part, shape in zip(parts, shapes)]

        def loss_and_grad(flat):
            theta = unpack(flat)
            out, hidden = self._forward(X, theta)
            log_prob = log_softmax(out[0][:, :n_children], axis=1)
            loss = -np.sum(weight[:, None] * labels * log_prob)
            loss += 0.5 * self.ridge * sum(np.sum(w**2) for w in theta[::2])
            # Backpropagation of the soft-label cross-entropy.
            parent_weight = labels.sum(axis=1)
            delta = np.zeros(out[0].shape)
            delta[:, :n_children] = weight[:, None] * (
                parent_weight[:, None] * np.exp(log_prob) - labels
            )
            grads = [None] * len(theta)
            n_layers = len(theta) // 2
            for i in reversed(range(n_layers)):
                grads[2 * i] = hidden[i][0].T @ delta + self.ridge * theta[2 * i][0]
                grads[2 * i + 1] = delta.sum(axis=0)
                if i > 0:
                    delta = (delta @ theta[2 * i][0].T) * (1.0 - hidden[i][0] ** 2)
            return loss, np.concatenate([g.reshape(-1) for g in grads])

        start = np.concatenate([param.reshape(-1) for param in params])
        result = minimize(
            loss_and_grad, start, jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter},
        )
        return tuple(unpack(result.x))


def _merged_equal_rows(X, weight, labels):
    """Adjacent equal rows (same inputs and labels) as one row of their
    summed weight. Rows come in canonical order, so a row repeated k times
    and one of weight k give L-BFGS the same problem, to the last bit:
    summed over rows, the same loss would round differently, and the
    optimizer's path amplifies that."""
    same = np.all(X[1:] == X[:-1], axis=1) & np.all(labels[1:] == labels[:-1], axis=1)
    if not same.any():
        return X, weight, labels
    group = np.concatenate([[0], np.cumsum(~same)])
    first = np.flatnonzero(np.r_[True, ~same])
    return X[first], np.bincount(group, weights=weight), labels[first]
