"""Gates: the conditional partition probabilities pi_{j|parent}(x).

One gate object serves a whole level of the tree: the level's columns come in
groups of ``n_children`` siblings, one group per parent node, and each
parent's gate is a softmax over its children. The gate M-step maximises the
soft-label cross-entropy

    J_p(theta_p) = sum_d s_d sum_j r_dj log pi_{j|p}(x_d; theta_p)

separately for every parent p (DESIGN.md section 3): no closed form, but a
small, smooth problem that a second-order method solves in a few steps.

- :class:`SoftmaxGate`: logits affine ("linear") or quadratic in x, fitted by
  batched Newton steps with a backtracking line search over all parents at
  once (the Numba kernel assembles gradients and curvatures in one pass).
- :class:`MLPGate`: the paper's tanh MLP with softmax output, fitted parent
  by parent with scipy's L-BFGS.

Parameters are plain numpy arrays; gate objects only hold settings.
"""

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from . import _kernels
from ._experts import ROWS_PER_BLOCK, local_frames, mirror_upper, sum_row_blocks

# Parent weight below which a sample does not enter that parent's gate fit.
MIN_PARENT_WEIGHT = 1e-10
# Children whose probability stays below this on a whole block of rows add
# no curvature there (see ``_kernels.softmax_newton_terms``).
MIN_CURVATURE_PROB = 1e-12
# A new level's softmax gates start at the best of the split's logits scaled
# by 1, 1/4, ..., 4^-(RAY_SCALES - 1) (see ``SoftmaxGate.fit_split``).
RAY_SCALES = 6


def child_log_gates(logits, parent_log_gate, n_children, cutoff=-np.inf):
    """log pi_child = log pi_parent + log-softmax of the logits over siblings.

    ``logits`` (n_samples, n_parents * n_children) come in consecutive
    groups of siblings; a -inf logit switches a child off (pruned), and a
    group of -inf logits switches off its parent too. Children of a parent
    whose gate is below exp(cutoff) of the row's largest parent gate get
    -inf: they could never reach the E-step's or the prediction's threshold.
    Exponentials and logarithms are taken by numpy in bulk: its SIMD exp
    and log are ~10x faster than the scalar libm calls a Numba loop makes.
    ``logits`` is overwritten with the result, and the scratch space is
    taken a block of rows at a time: no other (n_samples, n_nodes) array.
    """
    log_gate = logits
    _kernels.shift_by_sibling_max(
        logits, parent_log_gate, n_children, cutoff, log_gate
    )
    for start in range(0, log_gate.shape[0], ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        totals = np.empty_like(parent_log_gate[rows])
        _kernels.sibling_sums(np.exp(log_gate[rows]), n_children, totals)
        with np.errstate(divide="ignore"):  # log(0) = -inf: all children off
            log_total = np.log(totals, out=totals)
        _kernels.add_log_normalizer(
            log_gate[rows], log_total, parent_log_gate[rows], n_children
        )
    return log_gate


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
    partial M-step, which still increases the likelihood. Measured at
    n = 1e4 with defaults (then gate_alpha=1e-2 everywhere), one step instead of two is 15-20% faster and no
    less accurate (Franke 4.1e-4 vs 4.3e-4, 3-D 1.47e-4 vs 1.52e-4,
    Friedman 1 2.9e-4 vs 3.6e-4, Runge 1.2e-6 vs 1.3e-5): the next sweep
    continues from responsibilities that already reflect the step.
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
        self, X, sample_weight, labels, split_logits, n_children, pool, max_iter,
        random_state,
    ):
        """Gates of a new level, fitted to the split's labels.

        Newton starts on the ray through the split's own affine logits
        (quadratic terms zero), at the scale whose penalized objective is
        best for each parent: the split's logits reproduce the labels
        exactly but are far sharper than the penalty allows. From zero
        logits instead, every child carries gate on every row and the
        first Newton passes' curvature is dense. The objective is strictly
        convex, so the start changes the work, not the optimum. Measured
        with one thread, zero start -> this one: Runge 1-D at n = 1e5,
        (256,) degree 3, 41.8 s -> 17.3 s (1 s per dense Newton pass);
        Franke 2-D at n = 1e4, (16, 16), 3.5 s -> 2.7 s; sine + bump
        (45,) initialization 0.21 s -> 0.13 s; errors unchanged.
        """
        n_features = split_logits.shape[1] - 1
        n_extra = self.features(np.zeros((1, n_features))).shape[1] - split_logits.shape[1]
        direction = np.hstack([split_logits, np.zeros((split_logits.shape[0], n_extra))])
        # Centred over siblings: the same softmax, with the smallest penalty.
        n_parents = direction.shape[0] // n_children
        grouped = direction.reshape(n_parents, n_children, -1)
        grouped -= grouped.mean(axis=1, keepdims=True)
        G = self.features(X)
        _, penalized = self._penalized_objective(
            X, G, sample_weight, labels, n_children, pool
        )
        scales = 4.0 ** -np.arange(RAY_SCALES)
        objectives = np.array([penalized(scale * direction) for scale in scales])
        best = scales[np.argmax(objectives, axis=0)]  # per parent
        theta = np.repeat(best, n_children)[:, None] * direction
        return self.m_step(X, sample_weight, labels, theta, n_children, pool, max_iter)

    @staticmethod
    def _sibling_log_softmax(G, theta, n_children):
        """log pi_{j|p} of every child given its parent, at features G."""
        parents = np.zeros((G.shape[0], theta.shape[0] // n_children))
        return child_log_gates(G @ theta.T, parents, n_children)

    def child_log_gates(self, X, theta, parent_log_gate, n_children, pruned, cutoff):
        """log pi of every child: parent's log gate plus sibling log-softmax."""
        logits = self.features(X) @ theta.T
        logits[:, pruned] = -np.inf
        return child_log_gates(logits, parent_log_gate, n_children, cutoff)

    def _penalized_objective(self, X, G, sample_weight, resp, n_children, pool):
        """The ridge, and theta -> the penalized objective J_p of every parent.

        Nothing per row is kept: memory stays at the responsibilities the
        M-step is given.
        """
        n_parents = resp.shape[1] // n_children
        total = sample_weight.sum()
        ridge = self._sharpness_ridge(X, sample_weight, resp, n_children)

        def block_fit(rows, theta):
            fit = np.zeros(n_parents)
            _kernels.softmax_gate_objective(
                sample_weight[rows], resp[rows],
                self._sibling_log_softmax(G[rows], theta, n_children),
                n_children, MIN_PARENT_WEIGHT, fit,
            )
            return (fit,)

        def penalized(theta, fit=None):
            """J_p at theta; ``fit`` (sum of s r log pi) if already known."""
            if fit is None:
                (fit,) = sum_row_blocks(
                    lambda rows: block_fit(rows, theta), G.shape[0], pool
                )
            penalty = 0.5 * (ridge * theta.reshape(n_parents, -1) ** 2).sum(axis=1)
            return fit / total - penalty

        return ridge, penalized

    def m_step(
        self, X, sample_weight, resp, theta, n_children, pool, max_iter=None
    ):
        G = self.features(X)
        n_nodes, n_gate_features = theta.shape
        n_parents = n_nodes // n_children
        size = n_children * n_gate_features
        total = sample_weight.sum()
        ridge, penalized = self._penalized_objective(
            X, G, sample_weight, resp, n_children, pool
        )

        for _ in range(self.max_iter if max_iter is None else max_iter):
            fit, grad, curvature = self._newton_terms(
                G, theta, sample_weight, resp, n_children, pool
            )
            objective = penalized(theta, fit)
            flat = theta.reshape(n_parents, size)
            grad = grad.reshape(n_parents, size) / total - ridge * flat
            curvature = curvature / total
            diagonal = np.arange(size)
            curvature[:, diagonal, diagonal] += ridge
            step = _newton_step(curvature, grad)
            decrement = np.einsum("ps,ps->p", grad, step)
            converged = decrement <= self.tol * (1.0 + np.abs(objective))
            if converged.all():
                break
            # Converged parents stay put: their Armijo test would compare two
            # kernels' round-off (the objective above comes from the Newton
            # pass, the line search's from its own).
            decrement[converged] = 0.0
            theta = self._line_search(theta, step, decrement, objective, penalized)
        return theta

    def _sharpness_ridge(self, X, sample_weight, resp, n_children):
        """Per-parent diagonal ridge, shape (n_parents, n_children * F).

        What the penalty should bound is how sharp the transitions between
        siblings are, measured in units of a child's width, not the raw
        logit slopes: a parent of half-width h split in N has children of
        width ~h/N, so a slope a gives sharpness ~a h / N. The ridge on a
        slope is therefore ridge * m * (h / N)^2 / N: m (the parent's share
        of the weight) keeps deep, small parents from being penalized more
        than the data they hold, and the last 1/N keeps the optimal
        sharpness from shrinking as siblings are added. Quadratic terms
        scale with the product of two half-widths; the biases get a token
        ridge that only fixes the softmax's shift invariance.
        """
        n_samples, n_features = X.shape
        parent_weight = sample_weight[:, None] * resp.reshape(
            n_samples, -1, n_children
        ).sum(axis=2)
        mass = parent_weight.sum(axis=0) / sample_weight.sum()
        _, half_width = local_frames(X, parent_weight, 1e-6)
        columns = [np.full((half_width.shape[0], 1), 1e-6), half_width**2]
        if self.order == 2:
            i, j = np.triu_indices(n_features)
            columns.append((half_width[:, i] * half_width[:, j]) ** 2)
        per_feature = np.hstack(columns) / n_children**3
        ridge = self.ridge * mass[:, None] * per_feature
        return np.tile(ridge, (1, n_children))

    def _newton_terms(self, G, theta, sample_weight, resp, n_children, pool):
        n_parents = resp.shape[1] // n_children
        size = n_children * G.shape[1]

        def block(rows):
            fit = np.zeros(n_parents)
            grad = np.zeros((n_parents, n_children, G.shape[1]))
            curvature = np.zeros((n_parents, size, size))
            _kernels.softmax_newton_terms(
                G[rows], sample_weight[rows], resp[rows],
                self._sibling_log_softmax(G[rows], theta, n_children),
                n_children, MIN_PARENT_WEIGHT, MIN_CURVATURE_PROB, fit, grad,
                curvature,
            )
            return fit, grad, curvature

        fit, grad, curvature = sum_row_blocks(block, G.shape[0], pool)
        return fit, grad, mirror_upper(curvature)

    @staticmethod
    def _line_search(theta, step, decrement, objective, penalized):
        """Backtracking (Armijo) line search, separately for every parent.

        Parents whose step never satisfies the Armijo condition keep their
        parameters. Returns the new parameters.
        """
        n_parents, size = step.shape
        flat = theta.reshape(n_parents, size)
        eta = np.ones(n_parents)
        pending = decrement > 0
        new_flat = flat.copy()
        for _ in range(30):
            if not pending.any():
                break
            trial = np.where(pending[:, None], flat + eta[:, None] * step, new_flat)
            trial_objective = penalized(trial.reshape(theta.shape))
            accept = pending & (
                trial_objective >= objective + 1e-4 * eta * decrement
            )
            new_flat[accept] = trial[accept]
            pending &= ~accept
            eta[pending] *= 0.5
        return new_flat.reshape(theta.shape)


class MLPGate:
    """The paper's gate: a tanh MLP with softmax output, one per parent.

    Parameters of a level: a tuple of arrays stacked over parents,
    (W_1, b_1, ..., W_L, b_L) with W_i of shape (n_parents, fan_in, fan_out);
    the last layer has n_children outputs.
    """

    def __init__(self, hidden_sizes, ridge, max_iter=20):
        self.hidden_sizes = tuple(hidden_sizes)
        self.ridge = ridge
        self.max_iter = max_iter

    def _layer_sizes(self, n_features, n_children):
        return (n_features, *self.hidden_sizes, n_children)

    def fit_split(
        self, X, sample_weight, labels, split_logits, n_children, pool, max_iter,
        random_state,
    ):
        """Gates of a new level, fitted to the split's labels from random
        (Glorot) weights: a tanh network cannot start at the split's affine
        logits."""
        params = self._initial_params(
            split_logits.shape[0] // n_children, n_children, X.shape[1], random_state
        )
        return self.m_step(X, sample_weight, labels, params, n_children, pool, max_iter)

    def _initial_params(self, n_parents, n_children, n_features, random_state):
        sizes = self._layer_sizes(n_features, n_children)
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
        """Logits (n_parents, n_samples, n_children) and hidden activations."""
        hidden = [np.broadcast_to(X, (params[0].shape[0], *X.shape))]
        n_layers = len(params) // 2
        for i in range(n_layers):
            z = hidden[-1] @ params[2 * i] + params[2 * i + 1][:, None, :]
            if i < n_layers - 1:
                z = np.tanh(z)
            hidden.append(z)
        return hidden[-1], hidden

    def logits(self, X, params):
        out, _ = self._forward(X, params)
        n_parents, n_samples, n_children = out.shape
        return np.transpose(out, (1, 0, 2)).reshape(n_samples, -1)

    def child_log_gates(self, X, params, parent_log_gate, n_children, pruned, cutoff):
        """log pi of every child: parent's log gate plus sibling log-softmax."""
        logits = self.logits(X, params)
        logits[:, pruned] = -np.inf
        return child_log_gates(logits, parent_log_gate, n_children, cutoff)

    def m_step(
        self, X, sample_weight, resp, params, n_children, pool, max_iter=None
    ):
        n_parents = params[0].shape[0]
        total = sample_weight.sum()
        jobs = []
        for p in range(n_parents):
            labels = resp[:, p * n_children:(p + 1) * n_children]
            rows = labels.sum(axis=1) > MIN_PARENT_WEIGHT
            own = tuple(param[p:p + 1] for param in params)
            jobs.append(
                (X[rows], sample_weight[rows] / total, labels[rows], own,
                 self.max_iter if max_iter is None else max_iter)
            )
        if pool is None or n_parents == 1:
            fitted = [self._fit_parent(*job) for job in jobs]
        else:
            fitted = list(pool.map(lambda job: self._fit_parent(*job), jobs))
        return tuple(
            np.concatenate([parent[i] for parent in fitted])
            for i in range(len(params))
        )

    def _fit_parent(self, X, weight, labels, params, max_iter):
        if X.shape[0] == 0:
            return params
        shapes = [param.shape for param in params]
        sizes = [param.size for param in params]

        def unpack(flat):
            parts = np.split(flat, np.cumsum(sizes)[:-1])
            return [part.reshape(shape) for part, shape in zip(parts, shapes)]

        def loss_and_grad(flat):
            theta = unpack(flat)
            out, hidden = self._forward(X, theta)
            log_prob = log_softmax(out[0], axis=1)
            loss = -np.sum(weight[:, None] * labels * log_prob)
            loss += 0.5 * self.ridge * sum(np.sum(w**2) for w in theta[::2])
            # Backpropagation of the soft-label cross-entropy.
            parent_weight = labels.sum(axis=1)
            delta = weight[:, None] * (
                parent_weight[:, None] * np.exp(log_prob) - labels
            )
            grads = [None] * len(theta)
            n_layers = len(theta) // 2
            for i in reversed(range(n_layers)):
                grads[2 * i] = hidden[i][0].T @ delta + self.ridge * theta[2 * i][0]
                grads[2 * i + 1] = delta.sum(axis=0)
                if i > 0:
                    delta = (delta @ theta[2 * i][0].T) * (1.0 - hidden[i][0] ** 2)
            flat_grad = np.concatenate(
                [g.reshape(-1) for g in grads]
            )
            return loss, flat_grad

        start = np.concatenate([param.reshape(-1) for param in params])
        result = minimize(
            loss_and_grad, start, jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter},
        )
        return tuple(unpack(result.x))


def make_gate(kind, hidden_sizes, ridge):
    if kind == "linear":
        return SoftmaxGate(order=1, ridge=ridge)
    if kind == "quadratic":
        return SoftmaxGate(order=2, ridge=ridge)
    return MLPGate(hidden_sizes=hidden_sizes, ridge=ridge)
