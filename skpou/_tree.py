"""The partition tree: the model's whole fitted state.

Level 0 is the root, one node whose gate is 1 everywhere. The nodes of level
l are the children of level l-1's nodes, grouped by parent: parent p's
children are nodes child_start[p]:child_start[p + 1] of level l. How many
children a node has is per node (an unbalanced tree has parents with one
child, which pass their gate on). A node k at level l has gate probability

    pi_k(x) = pi_parent(k)(x) * pi_{k | parent(k)}(x)

and a polynomial expert mu_k(x) with noise sigma_k (doc/design.md sections 1 and
3). Every level is a complete mixture of experts; the finest one predicts.
The training steps that change the tree live in ``skpou._multilevel``.
"""

import copy
from dataclasses import dataclass

import numpy as np

from ._gates import level_log_gates, sum_over_siblings
from ._kernels import mixture as _kernels

# Nodes whose gate is below exp(-30) (~1e-13) of the row's largest gate are
# skipped in the E-step, in predictions and in the polish.
MIN_LOG_GATE = -30.0
_NO_COVARIANCE = np.zeros((0, 0, 0, 0))
# Children of a parent whose gate is below exp(-40) of the row's largest are
# not evaluated (they could not reach MIN_LOG_GATE after the product).
NEGLIGIBLE_LOG_GATE = -40.0


@dataclass
class Level:
    """One level's nodes: their sibling groups, gates, experts and noise.

    - ``child_start`` (n_parents + 1,): sibling groups (None at the root);
    - ``gate_params``: the gate family's parameters of those groups;
    - ``coef`` (K, M, T): expert coefficients in each node's local basis;
    - ``centers``, ``scales`` (K, n_features): each expert's local frame;
    - ``log_var`` (K, T): log noise variances of the last EM sweep;
    - ``pruned`` (K,): nodes switched off (zero gate everywhere);
    - ``absorbed`` (K,): those of them whose gate held data, but whose
      responsibilities EM gave to their neighbours;
    - ``slivers`` (K,): nodes switched off before the polish, themselves or
      (finest nodes) through an ancestor, their gate holding less than one
      row (``skpou._polish.prune_slivers``; with held-out rows, one of the
      training rows: the final fit keeps those the judged polish switched
      off).
    """

    child_start: np.ndarray = None
    gate_params: object = None
    coef: np.ndarray = None
    centers: np.ndarray = None
    scales: np.ndarray = None
    log_var: np.ndarray = None
    pruned: np.ndarray = None
    absorbed: np.ndarray = None
    slivers: np.ndarray = None

    def __post_init__(self):
        if self.absorbed is None and self.pruned is not None:
            self.absorbed = np.zeros_like(self.pruned)
        if self.slivers is None and self.pruned is not None:
            self.slivers = np.zeros_like(self.pruned)

    def __setstate__(self, state):
        """Unpickling a level pickled before ``absorbed`` or ``slivers``
        existed: none of its nodes is either."""
        vars(self).update(state)
        self.__post_init__()

    @property
    def n_nodes(self):
        return self.pruned.shape[0]


class PartitionTree:
    """Levels of nested soft partitions with one polynomial expert per node.

    ``basis`` (``skpou._basis.Basis``, or for the Bayesian root an
    ``IndexSetBasis``) is every expert's basis; ``gates``
    the gate family (``skpou._gates.GateFamily``). Set after training, for
    predictions: ``noise_var`` (K, T), the finest experts' noise variances;
    ``coef_cov_factor`` (K, T, M, M), factors R of their coefficient
    covariances C = R^T R (or None);
    ``variance_scale`` (T,), the predictive variance's calibration factor
    (``HierarchicalPOURegressor._variance_scale``; 1 without one).
    ``prior``: for the Bayesian root (``skpou._evidence``), its
    coefficients' prior; None for trees fitted by EM. ``noise_shape``: for
    the root, where its noise varies over the inputs, the
    ``skpou._evidence.NoiseShape`` v(x) that multiplies ``noise_var``; else
    None. ``input_map``: for the root, where its polynomial is in mapped
    inputs, the ``skpou._evidence.InputMap``; else None.
    """

    min_log_gate = MIN_LOG_GATE
    # class defaults: trees pickled before them keep None
    noise_shape = None
    input_map = None
    coef_cov_factor = None

    def __init__(self, basis, gates):
        self.basis = basis
        self.gates = gates
        self.levels = [Level(pruned=np.zeros(1, dtype=bool))]
        self.noise_var = None
        self.coef_cov_factor = None
        self.variance_scale = 1.0
        self.prior = None

    @property
    def finest(self):
        return len(self.levels) - 1

    def __setstate__(self, state):
        """Unpickling; a tree pickled before ``coef_cov_factor`` holds the
        covariances C themselves (``coef_cov``): factored here as
        R = diag(lambda)^(1/2) V^T from C = V diag(lambda) V^T."""
        covariance = state.pop("coef_cov", None)
        if covariance is not None:
            eigval, eigvec = np.linalg.eigh(covariance)
            state["coef_cov_factor"] = (
                np.sqrt(np.maximum(eigval, 0.0))[..., None] * np.swapaxes(eigvec, -1, -2)
            )
        vars(self).update(state)

    def copy(self):
        return copy.deepcopy(self)

    def add_level(self, n_children):
        """Split every finest node into n_children[p] children (an int: all alike)."""
        n_parents = self.levels[-1].n_nodes
        counts = np.broadcast_to(np.asarray(n_children, dtype=np.int64), (n_parents,))
        child_start = np.concatenate([[0], np.cumsum(counts)])
        self.levels.append(
            Level(child_start=child_start, pruned=np.zeros(child_start[-1], dtype=bool))
        )

    def parents(self, level):
        """Index, in level - 1, of every node's parent (level >= 1)."""
        counts = np.diff(self.levels[level].child_start)
        return np.repeat(np.arange(counts.size), counts)

    def restrict(self, resp, level):
        """Responsibilities of level - 1 from level's: each node's children summed."""
        return sum_over_siblings(resp, self.levels[level].child_start)

    def gone(self, level=None):
        """Nodes of ``level`` (default: the finest) switched off, themselves
        or through an ancestor."""
        level = self.finest if level is None else level
        gone = self.levels[0].pruned
        for below in range(1, level + 1):
            gone = gone[self.parents(below)] | self.levels[below].pruned
        return gone

    def log_gates(self, X, level):
        """log pi_k(x) (n_samples, K) of every node of a level: the product of
        the gates above it."""
        log_gate = np.zeros((X.shape[0], 1))
        for log_gate in self.log_gates_by_level(X, level):
            pass
        return log_gate

    def log_gates_by_level(self, X, level):
        """The log gates (n_samples, K_l) of levels 1 to ``level`` in turn,
        each from the one above."""
        log_gate = np.zeros((X.shape[0], 1))
        for below in self.levels[1:level + 1]:
            log_gate = level_log_gates(
                self.gates, X, below.gate_params, log_gate, below.child_start,
                below.pruned, NEGLIGIBLE_LOG_GATE,
            )
            yield log_gate

    def e_step(self, X, Y, level, resp, log_lik):
        """Responsibilities and per-row log-likelihood of a level's mixture,
        written into ``resp`` (n, K) and ``log_lik`` (n,); returns the log
        gates (n, K) (a block of rows at a time: one (n, K) array in all)."""
        nodes = self.levels[level]
        log_gate = self.log_gates(X, level)
        _kernels.e_step(
            X, Y, log_gate, nodes.centers, nodes.scales, nodes.coef,
            self.basis.recipe, self.basis.degree, nodes.log_var, MIN_LOG_GATE,
            resp, log_lik,
        )
        return log_gate

    def moments(self, X, level, var, include_spread, log_gate=None, coef_cov_factor=None):
        """Mixture mean (n, T) and variance (n, T) of a level at a block of rows.

        The variance is sum_k pi_k (var_k + phi_k^T C_k phi_k + (mu_k -
        mean)^2): ``var`` (K, T) the noise variances, ``coef_cov_factor``
        (K, T, M, M) factors R_k of the experts' coefficient covariances
        C_k = R_k^T R_k (None: no parameter term), the spread only with
        ``include_spread``.
        ``log_gate``: the level's log gates at X, if known.
        """
        nodes = self.levels[level]
        if log_gate is None:
            log_gate = self.log_gates(X, level)
        if coef_cov_factor is None:
            coef_cov_factor = _NO_COVARIANCE
        mean = np.empty((X.shape[0], nodes.coef.shape[2]))
        variance = np.empty_like(mean)
        if self.input_map is not None:  # the experts' polynomials are in mapped inputs
            X = np.ascontiguousarray(self.input_map(X))
        _kernels.mixture_moments(
            X, log_gate, nodes.centers, nodes.scales, nodes.coef,
            self.basis.recipe, self.basis.degree, var, MIN_LOG_GATE,
            include_spread, coef_cov_factor, mean, variance,
        )
        return mean, variance

    def predictive_moments(self, X, include_spread):
        """The finest level's predictive mean and variance (n, T), with the
        fitted noise (``noise_at``), coefficient covariances and
        calibration."""
        shaped = self.noise_shape is not None  # then noise_at adds the noise
        mean, variance = self.moments(
            X, self.finest, np.zeros_like(self.noise_var) if shaped else self.noise_var,
            include_spread, coef_cov_factor=self.coef_cov_factor,
        )
        if shaped:
            variance += self.noise_at(X)
        return mean, variance * self.variance_scale

    def noise_at(self, X):
        """The noise variance (n, T) at the rows of X: the finest experts'
        ``noise_var`` blended by their gates, times ``noise_shape``'s v(x)."""
        _, noise = self.moments(X, self.finest, self.noise_var, False)
        if self.noise_shape is not None:
            noise *= self.noise_shape.relative_variance(X)[:, None]
        return noise

    def expert_means(self, X, level, node):
        """One expert's polynomial at the rows of X, shape (n_rows, T)."""
        nodes = self.levels[level]
        only_node = np.full((X.shape[0], nodes.n_nodes), -np.inf)
        only_node[:, node] = 0.0
        no_noise = np.zeros((nodes.n_nodes, nodes.coef.shape[2]))
        return self.moments(X, level, no_noise, False, only_node)[0]
