"""Hierarchical partition of unity networks, fitted by multilevel EM.

The model (DESIGN.md section 1) is a mixture of experts over a tree of nested
partitions. A node k at level l has gate probability

    pi_k(x) = pi_parent(k)(x) * pi_{k | parent(k)}(x)

and a polynomial expert mu_k(x) with noise sigma_k. Every level is a complete
model; the prediction is the finest level's mixture mean sum_k pi_k mu_k.

Training (DESIGN.md sections 2-4) is expectation-maximization:

- E-step: responsibilities w_kd proportional to pi_k(x_d) N(y_d; mu_k, sigma_k^2);
- M-step: one weighted least-squares problem per expert, the noise update,
  and a soft-label classification problem per parent gate;
- a V-cycle over the levels (the paper's Algorithm 1, recursive): restrict
  the fine responsibilities to update the coarse gate, correct the coarse
  level by a V-cycle of its own, then relax the fine level once more.

The numerics live elsewhere: ``_kernels`` (Numba), ``_experts`` (normal
equations and solves), ``_gates`` (gate families and their M-steps).
"""

import time
import warnings
from math import comb
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from . import _kernels
from ._crossings import place_boundaries_at_crossings
from ._experts import (
    assemble_normal_equations,
    basis_recipe,
    block_normal_equations,
    frames_from_moments,
    local_frames,
    map_row_blocks,
    mirror_upper,
    solve_blended_least_squares,
    solve_normal_equations,
    sum_row_blocks,
    thread_pool,
    total_degree_powers,
    weighted_moments,
)
from ._gates import child_log_gates, make_gate

# Nodes whose gate is below exp(-30) (~1e-13) of the row's largest gate are
# skipped in the E-step and in predictions.
MIN_LOG_GATE = -30.0
# Children of a parent whose gate is below exp(-40) of the row's largest are
# not evaluated (they could not reach MIN_LOG_GATE after the product).
NEGLIGIBLE_LOG_GATE = -40.0
# Responsibilities at or below this do not enter the normal equations.
MIN_RESPONSIBILITY = 1e-12
# Smallest half-width of an expert's local frame, in units of the unit box.
MIN_FRAME_SCALE = 1e-6
# Noise variances (standardized units) never fall below this floor, and a
# node's own variance (sigma="em") never below this fraction of the pooled one:
# a partition whose sigma collapses would capture its neighbours' samples.
MIN_NOISE_VAR = 1e-24
EM_NOISE_FLOOR = 1e-2
# Nodes holding at most this fraction of the total sample weight are pruned.
PRUNE_MASS = 1e-12
# EM sweeps at each new level during the coarse-to-fine initialization.
INIT_SWEEPS = 1
# Gate iterations (Newton or L-BFGS) fitting a new level's gates to the
# initial split. Inside EM each gate family takes its own, smaller budget per
# M-step (a partial M-step: EM still increases the likelihood, and the next
# sweep continues where it stopped).
INIT_GATE_ITER = 50
# degree="auto": degree 4 where its basis is small (up to 3 dimensions: 35
# functions), lower in more dimensions, where a degree-4 basis (70 functions
# in 4-D, 126 in 5-D) makes every partition's problem, and the fit, several
# times costlier for little gain (measured on Friedman 1 in 5-D at n = 1e4:
# degree 4 fits in 2.7 s to 1.6e-4, degree 3 in 0.9 s to 3.6e-4).
AUTO_MAX_DEGREE = 4
AUTO_MAX_BASIS = 56
# gate_alpha="auto" for the softmax gates: sharper transitions in 1-D and 2-D,
# smoother ones from 3-D on, where the default tree's partitions are wide and
# each expert alone is a coarse fit, so wide blends are what makes the mean
# accurate. Measured at n = 1e4 with the other defaults (relative L2, median
# of 3 draws): Franke 2-D 4.1e-4 at 1e-2 vs 1.5e-3 at 0.1; tanh-cos-exp 3-D
# 1.5e-4 at 1e-2 vs 2.4e-5 at 0.3; Friedman 1 5-D 2.9e-4 vs 5.2e-5; the 4-D
# Friedman 2 and 3 are within their draw-to-draw spread at either value.
AUTO_GATE_ALPHA_LOW_DIM = 1e-2
AUTO_GATE_ALPHA_HIGH_DIM = 0.3


class HierarchicalPOURegressor(RegressorMixin, BaseEstimator):
    """Hierarchical partition of unity network regressor (multilevel EM).

    A probabilistic mixture of polynomial experts over a tree of nested soft
    partitions, trained by expectation-maximization with a multilevel
    V-cycle (Trask, Henriksen, Martinez and Cyr, 2022).

    Parameters
    ----------
    partitions : tuple of int, default=(4, 4)
        Children per node at each level of the tree: ``(8,)`` is one level of
        8 partitions, ``(4, 2)`` two levels (4 coarse partitions, each split
        in 2: 8 fine ones).

    degree : int or "auto", default="auto"
        Total degree of every polynomial expert (0 = constant). ``"auto"``
        takes the highest degree up to 4 whose basis has at most 56 functions
        (4 in up to 3 dimensions, 3 in 4 and 5, 2 in 6 to 9, 1 above) and
        no more functions than distinct samples with positive weight (fewer
        cannot determine an expert); the fitted value is
        ``degree_``. The basis size, C(n_features + degree, degree), sets the
        cost: every partition solves a problem of that size.

    gate : {"linear", "quadratic", "mlp"}, default="linear"
        Gate family at every tree node: softmax of affine or quadratic logits
        (fitted by Newton's method), or the paper's tanh MLP with softmax
        output (fitted by L-BFGS).

    gate_hidden_sizes : tuple of int, default=(10, 10)
        Hidden layer widths of the ``"mlp"`` gate.

    gate_alpha : float or "auto", default="auto"
        Penalty on how sharp the transitions between sibling partitions are
        (the gate slopes measured in units of a child partition's width,
        weighted by the parent's share of the data, so the same value suits
        any depth and number of partitions). ``"auto"`` is 1e-2 for one or
        two input features and 0.3 for more (1e-2 for ``gate="mlp"``); the
        fitted value is ``gate_alpha_``. Both keep neighbours overlapping:
        smooth blends, the most accurate choice for smooth targets, and
        wider ones in higher dimensions, where partitions are wide. Tiny
        values (1e-20) let gates sharpen until transition zones hold almost
        no sample, as exact reproduction of piecewise polynomials needs. For
        ``gate="mlp"`` it is a plain L2 penalty on the network weights, per
        unit of sample weight.

    sigma : {"shared", "em", "fixed"}, default="shared"
        Expert noise during training. ``"fixed"`` keeps sigma = 1 on the
        standardized targets, as in the paper; ``"shared"`` updates one
        sigma per level and output by EM; ``"em"`` updates one per node, floored
        at a fraction of the shared one. Whatever the choice, the finest
        partitions' noise (``noise_var_``) is refitted at the end for
        ``predict(return_std=True)``.

    alpha : float, default=1e-10
        Ridge term added to every expert's normal equations (which are
        normalized by the total sample weight), so that empty or degenerate
        partitions never produce NaN.

    polish : bool, default=True
        After training, refit the finest level's experts jointly by least
        squares against the blended mean with the gates frozen (the
        deterministic POU network's problem). EM fits each expert to its own
        responsibilities, which is not the least-squares optimum of the mean
        where gates overlap. With more unknowns than distinct samples the
        data fix only part of them: the rest stay near their EM values.

    n_cycles : int, default=5
        Maximum number of V-cycles of the multilevel EM.

    tol : float, default=1e-4
        Stop when the relative change of the EM objective (the negative mean
        log-likelihood, relative to ``max(|loss|, 1)``) between two cycles falls
        below ``tol``. ``tol=0`` runs all ``n_cycles``.

    em_subsample : int or None, default=100_000
        The initialization and V-cycles, which place the partitions, run on
        at most this many rows drawn without replacement (seeded by
        ``random_state``); the experts are then refitted, and polished, on
        all rows. ``None`` runs EM on every row.

    n_jobs : int, default=None
        Threads for assembling and solving the per-partition problems
        (``None`` means 1 unless in a :func:`joblib.parallel_config`
        context, -1 means all processors). Results do not depend on it.
        BLAS runs single-threaded during ``fit`` and ``predict`` (the
        estimator's own threads use the cores), so results do not depend
        on BLAS's thread count either.

    random_state : int, RandomState instance or None, default=None
        Seeds the ``"mlp"`` gate weights and the ``em_subsample`` draw; the
        partition splitting is deterministic.

    verbose : int, default=0
        Print the loss and time of each cycle.

    warm_start : bool, default=False
        Reuse the fitted gates (the partitions) on the next ``fit``. With a
        new ``degree`` and ``n_cycles=0`` this refits the experts on frozen
        partitions (p-refinement).

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string feature names.

    n_outputs_ : int
        Number of targets.

    n_iter_ : int
        Number of V-cycles run.

    converged_ : bool
        Whether the loss settled within ``tol`` before ``n_cycles``.

    loss_curve_ : list of float
        EM objective of each cycle: the finest level's negative mean
        log-likelihood of the standardized training targets.

    partitions_ : tuple of int
        The tree shape that was fitted.

    degree_ : int
        The degree used: ``degree``, or what ``"auto"`` chose.

    gate_alpha_ : float
        The gate penalty used: ``gate_alpha``, or what ``"auto"`` chose.

    powers_ : ndarray of shape (n_basis, `n_features_in_`)
        Multi-indices of the total-degree Legendre basis of every expert.

    coef_ : list of ndarray
        Expert coefficients per level, shape (n_nodes, n_basis, n_outputs),
        in each expert's local Legendre basis.

    centers_, scales_ : list of ndarray
        Per level, each expert's local frame, shape (n_nodes, `n_features_in_`):
        expert k evaluates its basis at ``(x_scaled - centers_[k]) / scales_[k]``.

    log_var_ : list of ndarray
        Per level, the log noise variances used by the last EM sweep.

    x_offset_, x_scale_ : ndarray of shape (`n_features_in_`,)
        Inputs are scaled as ``(X - x_offset_) / x_scale_`` into [-1, 1].

    y_offset_, y_scale_ : ndarray of shape (`n_outputs_`,)
        Targets are standardized as ``(y - y_offset_) / y_scale_``.

    polished_ : bool
        Whether the finest experts were polished (see ``polish``).

    gate_params_ : list
        Gate parameters per level below the root.

    pruned_ : list of ndarray of bool
        Per level, the nodes switched off because no training data reached
        them (their gate is zero everywhere).

    noise_var_ : ndarray of shape (n_partitions, n_outputs)
        Noise variance of each finest-level expert, in standardized units,
        refitted after training; it makes ``predict(return_std=True)``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpou import HierarchicalPOURegressor
    >>> X = np.linspace(0, 1, 400).reshape(-1, 1)
    >>> y = np.sin(2 * np.pi * X[:, 0])
    >>> model = HierarchicalPOURegressor(partitions=(4, 2), degree=3).fit(X, y)
    >>> float(np.max(np.abs(model.predict(X) - y))) < 1e-4
    True
    """

    _parameter_constraints: dict = {
        "partitions": ["array-like", Interval(Integral, 1, None, closed="left")],
        "degree": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "gate": [StrOptions({"linear", "quadratic", "mlp"})],
        "gate_hidden_sizes": ["array-like"],
        "gate_alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "sigma": [StrOptions({"shared", "em", "fixed"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "polish": ["boolean"],
        "n_cycles": [Interval(Integral, 0, None, closed="left")],
        "em_subsample": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        partitions=(4, 4),
        degree="auto",
        *,
        gate="linear",
        gate_hidden_sizes=(10, 10),
        gate_alpha="auto",
        sigma="shared",
        alpha=1e-10,
        polish=True,
        n_cycles=5,
        tol=1e-4,
        em_subsample=100_000,
        n_jobs=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self.partitions = partitions
        self.degree = degree
        self.gate = gate
        self.gate_hidden_sizes = gate_hidden_sizes
        self.gate_alpha = gate_alpha
        self.sigma = sigma
        self.alpha = alpha
        self.polish = polish
        self.n_cycles = n_cycles
        self.tol = tol
        self.em_subsample = em_subsample
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the network by multilevel EM.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets. Several outputs share the partitions.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; an integer weight equals repeating the row.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        # A fit that fails or is interrupted (KeyboardInterrupt) leaves the
        # estimator exactly as it was: unfitted, or its previous fit. The
        # EM steps replace arrays rather than writing into them, so copying
        # the lists that hold them is enough.
        previous_state = {
            name: list(value) if isinstance(value, list) else value
            for name, value in vars(self).items()
        }
        try:
            with thread_pool(self.n_jobs) as self._pool:
                return self._fit(X, y, sample_weight)
        except BaseException:
            vars(self).clear()
            vars(self).update(previous_state)
            raise
        finally:
            vars(self).pop("_pool", None)

    def _fit(self, X, y, sample_weight):
        partitions = _validated_sizes(self.partitions, "partitions")
        _validated_sizes(self.gate_hidden_sizes, "gate_hidden_sizes")
        if isinstance(self.degree, bool):
            raise ValueError(f"degree must be an integer or \"auto\"; got {self.degree!r}.")
        X, y = validate_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=np.float64
        )
        y = _numeric_finite_targets(y)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True
        )
        weighted = sample_weight > 0
        if not weighted.all():
            # A row without weight takes no part in the fit, as if removed;
            # kept, one far outside the weighted rows' box would overflow
            # the bases there (0 * inf) and break the fit.
            X, y, sample_weight = X[weighted], y[weighted], sample_weight[weighted]
        # Rows in a canonical order: floating-point sums, and so the fit,
        # then do not depend on how the caller ordered the rows. Equal rows
        # end up next to each other, so distinct ones are counted in passing.
        Y = y.reshape(y.shape[0], -1)
        order = np.lexsort((sample_weight, *Y.T[::-1], *X.T[::-1]))
        X_scaled = X[order]  # a copy, scaled in place below: one copy of X in all
        weight_sorted = sample_weight[order]
        n_distinct = _count_distinct_rows(X_scaled)
        if self.degree == "auto":
            self.degree_ = _auto_degree(X.shape[1], n_distinct)
        else:
            self.degree_ = self.degree
        if self.gate_alpha == "auto":
            self.gate_alpha_ = _auto_gate_alpha(self.gate, X.shape[1])
        else:
            self.gate_alpha_ = float(self.gate_alpha)
        powers = total_degree_powers(X.shape[1], self.degree_)
        if n_distinct < powers.shape[0]:
            raise ValueError(
                f"Found n_samples={n_distinct} distinct samples with positive "
                f"weight, but degree={self.degree_} in {X.shape[1]} dimensions has "
                f"{powers.shape[0]} basis functions: at least that many "
                "samples are needed. Lower `degree` or add samples."
            )

        tree = (partitions, self.gate, tuple(self.gate_hidden_sizes), X.shape[1])
        keep_partitions = self.warm_start and getattr(self, "_tree", None) == tree
        self._tree = tree
        self.partitions_ = partitions
        self.powers_ = powers
        self._recipe = basis_recipe(powers)
        self._y_was_1d = y.ndim == 1
        self.n_outputs_ = Y.shape[1]
        self._fit_scaling(X, Y, sample_weight)
        X_scaled -= self.x_offset_
        X_scaled /= self.x_scale_
        Y_scaled = Y[order]
        Y_scaled /= self.y_scale_  # divided first: no overflow near the float range
        Y_scaled -= self.y_offset_ / self.y_scale_
        data = _TrainingData(X_scaled, Y_scaled, weight_sorted)
        # The fit's peak comes later (initialization): drop what is not
        # needed by then, the row order and the weights in the caller's order.
        del order, sample_weight, X_scaled, Y_scaled, weight_sorted
        random_state = check_random_state(self.random_state)
        em_data = self._em_subsample(data, random_state)

        if keep_partitions:
            self._refit_experts_on_frozen_gates(em_data)
        else:
            self._initialize(em_data, random_state)
        self._run_v_cycles(em_data)
        if em_data is not data:
            self._refit_experts_on_all_rows(data)
        if not (keep_partitions and self.n_cycles == 0):
            # Frozen partitions (warm start without cycles) stay as they are.
            self._place_boundaries_at_kinks(data)
        self.polished_ = bool(self.polish)
        if self.polish:
            n_unknowns = self.coef_[-1].shape[0] * powers.shape[0]
            self._polish_finest_experts(data, determined=n_unknowns <= n_distinct)
        self._refit_noise(data)
        self._warn_about_pruned_partitions()
        return self

    def _warn_about_pruned_partitions(self):
        finest = len(self.partitions_)
        # A node is gone if it or any ancestor was pruned.
        gone = self.pruned_[finest].copy()
        for level in range(1, finest):
            factor = int(np.prod(self.partitions_[level:]))
            gone |= np.repeat(self.pruned_[level], factor)
        if gone.any():
            warnings.warn(
                f"{int(gone.sum())} of {gone.size} partitions received no "
                "training data and were pruned (zero gate everywhere). Fewer "
                "partitions, or more samples, give the same model for less.",
                UserWarning,
            )

    def _run_v_cycles(self, data):
        """V-cycles until the EM objective settles (relative change < tol).

        The objective is the finest level's negative mean log-likelihood,
        as evaluated by the E-step of each cycle's post-relaxation (EM never
        needs a separate pass for it). Its change is taken relative to
        max(|loss|, 1): the log-likelihood has no natural scale near zero.
        """
        finest = len(self.partitions_)
        self.loss_curve_ = []
        self.converged_ = False
        self.n_iter_ = 0
        start = time.perf_counter()
        for cycle in range(self.n_cycles):
            log_lik = self._v_cycle(data, finest)[1]  # drop the (n, K) resp now
            loss = -log_lik
            self.loss_curve_.append(loss)
            self.n_iter_ = cycle + 1
            if self.verbose:
                print(
                    f"[HierarchicalPOURegressor] cycle {cycle + 1}/{self.n_cycles}"
                    f": loss={loss:.6e}, elapsed={time.perf_counter() - start:.2f}s",
                    flush=True,
                )
            if cycle > 0:
                change = abs(self.loss_curve_[-2] - loss)
                if change <= self.tol * max(abs(loss), 1.0):
                    self.converged_ = True
                    break

    # ------------------------------------------------- multilevel training

    def _initialize(self, data, random_state):
        """Coarse-to-fine start: fit the root, then split each level in turn.

        Each node is split along its principal axis at weighted quantiles, so
        the start is deterministic and sample-weight aware; a few EM sweeps
        on the new level follow before the next split.
        """
        n_samples = data.X.shape[0]
        n_levels = len(self.partitions_) + 1
        self.coef_ = [None] * n_levels
        self.centers_ = [None] * n_levels
        self.scales_ = [None] * n_levels
        self.log_var_ = [None] * n_levels
        self.gate_params_ = []
        self.pruned_ = [
            np.zeros(n_nodes, dtype=bool)
            for n_nodes in np.cumprod((1, *self.partitions_))
        ]

        resp = np.ones((n_samples, 1))
        self._m_step_experts(data, 0, resp)
        self._m_step_noise(data, 0, resp)
        for level, n_children in enumerate(self.partitions_, start=1):
            split, split_logits = _split_along_axis(
                data, resp, n_children, self.degree_
            )
            self.gate_params_.append(
                self._gate_family().fit_split(
                    data.X, data.sample_weight, split, split_logits, n_children,
                    self._pool, INIT_GATE_ITER, random_state,
                )
            )
            # Release each (n_samples, n_nodes) array before the next is made:
            # they are the largest arrays of the fit.
            del split, resp
            resp = self._log_gates(data.X, level)
            resp = np.exp(resp, out=resp)
            self._m_step_experts(data, level, resp)
            self._m_step_noise(data, level, resp)
            del resp
            for _ in range(INIT_SWEEPS):
                resp, log_lik = self._relax(data, level)
            if self.verbose:
                print(
                    f"[HierarchicalPOURegressor] initialized level {level}: "
                    f"{resp.shape[1]} partitions, loss={-log_lik:.6e}",
                    flush=True,
                )

    def _em_subsample(self, data, random_state):
        """The rows the V-cycles see: all, or at most ``em_subsample`` of them.

        Placing the partitions needs far fewer rows than fitting the
        experts does (as HistGradientBoosting bins on a subsample): the
        experts are refitted on every row afterwards.
        """
        n_samples = data.X.shape[0]
        if self.em_subsample is None or n_samples <= self.em_subsample:
            return data
        rows = np.sort(
            random_state.choice(n_samples, self.em_subsample, replace=False)
        )
        return _TrainingData(
            data.X[rows], data.Y[rows], data.sample_weight[rows]
        )

    def _refit_experts_on_all_rows(self, data):
        """One E-step and expert M-step on the full data, finest level.

        Only the finest level predicts; coarser experts served training.
        Streamed block by block (log gates, responsibilities, normal
        equations), in the experts' local frames from EM, so memory does not
        grow with n_samples times the number of partitions.
        """
        level = len(self.partitions_)
        centers, scales = self.centers_[level], self.scales_[level]

        def block(rows):
            log_gate = self._log_gates(data.X[rows], level)
            resp = np.empty_like(log_gate)
            _kernels.e_step(
                data.X[rows], data.Y[rows], log_gate, centers, scales,
                self.coef_[level], self._recipe, self.degree_,
                self.log_var_[level], MIN_LOG_GATE, resp,
                np.empty(log_gate.shape[0]),
            )
            return block_normal_equations(
                data.X[rows], data.Y[rows], data.sample_weight[rows], resp,
                centers, scales, self._recipe, self.degree_, MIN_RESPONSIBILITY,
            )

        gram, rhs = sum_row_blocks(block, data.X.shape[0], self._pool)
        gram = mirror_upper(gram)
        total = data.sample_weight.sum()
        self.coef_[level] = solve_normal_equations(
            gram / total, rhs / total, self.alpha, self.n_jobs
        )

    def _refit_experts_on_frozen_gates(self, data):
        """Warm start: keep the partitions, refit every expert (p-refinement).

        With the gates frozen, each expert is fitted to its partition's
        gate-weighted data, then the noise is refitted for those experts.
        """
        for level in range(len(self.partitions_) + 1):
            resp = np.exp(self._log_gates(data.X, level))
            self._m_step_experts(data, level, resp)
            self._m_step_noise(data, level, resp)

    def _v_cycle(self, data, level):
        """One V-cycle (the paper's Algorithm 1 with S_pre=0, S_coarse=S_post=1).

        Restriction: summing the fine responsibilities over siblings gives
        the coarse ones, which update the coarse gate (objective L_f2c).
        Coarse correction: a V-cycle one level up. Prolongation needs no
        transfer: the fine gates read the coarse gate through the product.
        Post-relaxation: one EM sweep on this level.
        """
        if level > 1:
            resp, _, _ = self._e_step(data, level)
            coarse_resp = _restrict(resp, self.partitions_[level - 1])
            del resp
            self._m_step_gates(data, level - 1, coarse_resp)
            del coarse_resp
            self._v_cycle(data, level - 1)
        return self._relax(data, level)

    def _relax(self, data, level):
        """One EM sweep at a level: E-step, then the three M-steps.

        Returns the E-step's responsibilities and mean log-likelihood.
        """
        resp, log_lik, gate_frames = self._e_step(data, level)
        self._prune_empty_partitions(data, level, resp)
        self._m_step_experts(data, level, resp, gate_frames)
        self._m_step_noise(data, level, resp)
        self._m_step_gates(data, level, resp)
        return resp, log_lik

    # ------------------------------------------------------ EM building blocks

    def _log_gates(self, X, level):
        """log pi_k(x) of every node at a level: the product of the gates above."""
        log_gate = np.zeros((X.shape[0], 1))
        gate = self._gate_family()
        for params, n_children, pruned in zip(
            self.gate_params_[:level], self.partitions_[:level], self.pruned_[1:]
        ):
            log_gate = gate.child_log_gates(
                X, params, log_gate, n_children, pruned, NEGLIGIBLE_LOG_GATE
            )
        return log_gate

    def _prune_empty_partitions(self, data, level, resp):
        """Switch off nodes that hold no training weight.

        A node without data has an arbitrary expert; with sharp gates it
        could still win in a gap between samples. Pruned nodes get zero gate
        everywhere. The heaviest sibling of each family is always kept.
        """
        n_children = self.partitions_[level - 1]
        mass = (data.sample_weight @ resp) / data.sample_weight.sum()
        family = mass.reshape(-1, n_children)
        empty = family <= PRUNE_MASS
        empty[np.arange(family.shape[0]), family.argmax(axis=1)] = False
        self.pruned_[level] = self.pruned_[level] | empty.ravel()

    def _e_step(self, data, level):
        """Responsibilities (n_samples, n_nodes), mean log-likelihood, and
        the local frames of the level's gates (see ``_m_step_experts``)."""
        resp = np.empty((data.X.shape[0], self.coef_[level].shape[0]))
        log_lik = np.empty(data.X.shape[0])

        def block(rows):  # log gates block by block: one (n, K) array in all
            log_gate = self._log_gates(data.X[rows], level)
            _kernels.e_step(
                data.X[rows], data.Y[rows], log_gate, self.centers_[level],
                self.scales_[level], self.coef_[level], self._recipe,
                self.degree_, self.log_var_[level], MIN_LOG_GATE,
                resp[rows], log_lik[rows],
            )
            gate = np.exp(log_gate, out=log_gate)
            return weighted_moments(data.X[rows], gate, data.sample_weight[rows])

        moments = sum_row_blocks(block, data.X.shape[0], self._pool)
        sw = data.sample_weight
        return (
            resp, float(sw @ log_lik / sw.sum()),
            frames_from_moments(*moments, MIN_FRAME_SCALE),
        )

    def _m_step_experts(self, data, level, resp, frames=None):
        """Weighted least squares per node, each in its own local frame.

        ``frames`` (centres, half-widths) are those of the level's gates,
        from the E-step; by default, those of ``resp``, for callers whose
        weights are the gates. A frame spans where its expert is used, the
        gate, rather than the rows it fits, its responsibilities: those can
        shrink onto a few rows (noise-free data make EM's responsibilities
        sharp) while the gate, however small, still spans a partition, and
        a degree-7 polynomial evaluated at |z| ~ 1e5 there ruins the blend.
        Measured on Runge, degree 7, n = 1e5 with one BLAS thread: (16, 8)
        2.7e-7 with frames from responsibilities (1.6e-8 with two threads:
        round-off decided), 7.2e-9 with gate frames (1.2e-8); at n = 1e4,
        (8, 8) 0.59 against 2.7e-8.
        """
        total = data.sample_weight.sum()
        if frames is None:
            frames = local_frames(data.X, resp, MIN_FRAME_SCALE, data.sample_weight)
        centers, scales = frames
        gram, rhs = assemble_normal_equations(
            data.X, data.Y, data.sample_weight, resp, centers, scales,
            self._recipe, self.degree_, MIN_RESPONSIBILITY, self._pool,
        )
        self.coef_[level] = solve_normal_equations(
            gram / total, rhs / total, self.alpha, self.n_jobs
        )
        self.centers_[level] = centers
        self.scales_[level] = scales

    def _weighted_residuals(self, data, level, resp):
        """Per node and output: sum_d w_kd (y_d - mu_k(x_d))^2 and sum_d w_kd."""
        n_nodes = resp.shape[1]

        def block(rows):
            out = np.zeros((n_nodes, self.n_outputs_))
            _kernels.weighted_squared_residuals(
                data.X[rows], data.Y[rows], data.sample_weight[rows], resp[rows],
                self.centers_[level], self.scales_[level], self.coef_[level],
                self._recipe, self.degree_, MIN_RESPONSIBILITY, out,
            )
            return (out,)

        (squared,) = sum_row_blocks(block, data.X.shape[0], self._pool)
        return squared, data.sample_weight @ resp

    def _m_step_noise(self, data, level, resp):
        n_nodes = resp.shape[1]
        if self.sigma == "fixed":
            self.log_var_[level] = np.zeros((n_nodes, self.n_outputs_))
            return
        squared, mass = self._weighted_residuals(data, level, resp)
        pooled = np.maximum(squared.sum(axis=0) / mass.sum(), MIN_NOISE_VAR)
        if self.sigma == "shared":
            var = np.broadcast_to(pooled, squared.shape)
        else:
            own = squared / np.maximum(mass, np.finfo(float).tiny)[:, None]
            var = np.where(mass[:, None] > 0, own, pooled)
            var = np.maximum(var, EM_NOISE_FLOOR * pooled)
        self.log_var_[level] = np.log(var)

    def _m_step_gates(self, data, level, resp):
        """Update the conditional gates pi_{j|parent} of one level."""
        self.gate_params_[level - 1] = self._gate_family().m_step(
            data.X, data.sample_weight, resp, self.gate_params_[level - 1],
            self.partitions_[level - 1], self._pool,
        )

    def _place_boundaries_at_kinks(self, data):
        """Move 1-D boundaries at kinks to where their experts cross.

        EM leaves a sharp boundary anywhere in the sample gap around a kink;
        the experts' crossing places it (see ``_crossings``). Only for 1-D
        inputs and linear gates: the one case where a boundary is a point
        that shifting the logits moves.
        """
        if self.gate != "linear" or data.X.shape[1] != 1:
            return
        moved = place_boundaries_at_crossings(self, data)
        if self.verbose:
            print(
                f"[HierarchicalPOURegressor] moved {moved} boundaries to "
                "where their experts cross",
                flush=True,
            )

    def _polish_finest_experts(self, data, determined):
        """Refit the finest experts jointly against the blended mean (gates frozen)."""
        level = len(self.partitions_)
        self.coef_[level] = solve_blended_least_squares(
            data.X, data.Y, data.sample_weight,
            lambda rows: self._log_gates(data.X[rows], level),
            self.centers_[level], self.scales_[level], self.coef_[level],
            self._recipe, self.degree_, MIN_LOG_GATE, self.alpha, self._pool,
            determined,
        )

    def _refit_noise(self, data):
        """Each finest partition's noise variance, from the fitted mean.

        sigma_k^2 = sum_d s_d pi_k(x_d) (y_d - mean(x_d))^2 / sum_d s_d pi_k(x_d):
        the residuals of the prediction itself, gate-weighted. (Residuals of
        each expert alone would mislead after the polish, which fits the
        experts jointly: individually they need not fit.)
        """
        level = len(self.partitions_)
        no_noise = np.zeros((self.coef_[level].shape[0], self.n_outputs_))

        def block(rows):
            log_gate = self._log_gates(data.X[rows], level)
            mean, _ = self._block_moments(
                data.X[rows], log_gate, level, no_noise, include_spread=False
            )
            weighted_gate = data.sample_weight[rows, None] * np.exp(log_gate)
            squared = weighted_gate.T @ (data.Y[rows] - mean) ** 2
            return squared, weighted_gate.sum(axis=0)

        squared, mass = sum_row_blocks(block, data.X.shape[0], self._pool)
        pooled = np.maximum(squared.sum(axis=0) / mass.sum(), MIN_NOISE_VAR)
        own = squared / np.maximum(mass, np.finfo(float).tiny)[:, None]
        var = np.where(mass[:, None] > 0, own, pooled)
        self.noise_var_ = np.maximum(var, MIN_NOISE_VAR)

    def _block_moments(self, X, log_gate, level, var, include_spread):
        """Mixture mean and variance of a block of rows with known log gates."""
        mean = np.empty((X.shape[0], self.n_outputs_))
        variance = np.empty_like(mean)
        _kernels.mixture_moments(
            X, log_gate, self.centers_[level], self.scales_[level],
            self.coef_[level], self._recipe, self.degree_, var, MIN_LOG_GATE,
            include_spread, mean, variance,
        )
        return mean, variance

    def _moments(self, X, level, var, include_spread, pool):
        """Mixture mean and variance at a level, streamed over row blocks."""

        def block(rows):
            return self._block_moments(
                X[rows], self._log_gates(X[rows], level), level, var,
                include_spread,
            )

        parts = map_row_blocks(block, X.shape[0], pool)
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))

    # --------------------------------------------------------------- predict

    def predict(self, X, return_std=False):
        """Predict with the finest level's mixture mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        return_std : bool, default=False
            Also return the predictive standard deviation of the mixture,
            sqrt(sum_k pi_k (sigma_k^2 + (mu_k - mean)^2)), with sigma_k^2
            the gate-weighted variance of the prediction's residuals in
            partition k. After the polish (the
            default) the experts are fitted jointly rather than as rival
            explanations, and the spread term is left out.

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predicted mean.

        y_std : ndarray, same shape as y_mean
            Predictive standard deviation; only if ``return_std`` is True.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with thread_pool(self.n_jobs) as pool:
            mean, variance = self._moments(
                self._scale_inputs(X), len(self.partitions_),
                self.noise_var_,
                # Polished experts are fitted jointly, not as rival
                # explanations: their spread around the mean is no uncertainty.
                include_spread=not self.polished_,
                pool=pool,
            )
        mean = mean * self.y_scale_ + self.y_offset_
        _check_extrapolation_finite(mean, X, self.x_offset_, self.x_scale_)
        if self._y_was_1d:
            mean, variance = mean[:, 0], variance[:, 0]
        if not return_std:
            return mean
        std = np.sqrt(variance) * (self.y_scale_[0] if self._y_was_1d else self.y_scale_)
        return mean, std

    def predict_partitions(self, X, level=-1):
        """Gate probabilities pi_k(x) of every partition at one level.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        level : int, default=-1
            Tree level: 0 is the root (one partition), 1 the coarsest split,
            -1 the finest level.

        Returns
        -------
        probabilities : ndarray of shape (n_samples, n_partitions)
            Rows sum to one.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        n_levels = len(self.partitions_) + 1
        if (
            not isinstance(level, Integral)
            or isinstance(level, bool)
            or not -n_levels <= level < n_levels
        ):
            raise ValueError(
                f"level must be an integer in [{-n_levels}, {n_levels - 1}] for "
                f"partitions={self.partitions_}; got {level!r}."
            )
        return np.exp(self._log_gates(self._scale_inputs(X), level % n_levels))

    # -------------------------------------------------------------- helpers

    def _gate_family(self):
        # Gate objects hold settings only, so they are built on demand and
        # the fitted estimator keeps nothing but arrays.
        return make_gate(self.gate, self.gate_hidden_sizes, self.gate_alpha_)

    def _fit_scaling(self, X, Y, sample_weight):
        """Inputs to [-1, 1]; targets standardized.

        Both are computed without overflow for values up to the float range
        (halves before differences, magnitudes divided out before squares).
        """
        low = X.min(axis=0)
        high = X.max(axis=0)
        half_range = high / 2.0 - low / 2.0
        self.x_offset_ = low + half_range
        self.x_scale_ = np.where(half_range > 0, half_range, 1.0)
        magnitude = np.abs(Y).max(axis=0)
        magnitude = np.where(magnitude > 0, magnitude, 1.0)
        unit = Y / magnitude
        offset = np.average(unit, axis=0, weights=sample_weight)
        spread = np.sqrt(
            np.average((unit - offset) ** 2, axis=0, weights=sample_weight)
        )
        self.y_offset_ = offset * magnitude
        # A constant target keeps its magnitude as scale (its standardized
        # values are 0), so the predictive std stays in proportion to it.
        self.y_scale_ = np.where(spread > 0, spread, 1.0) * magnitude

    def _scale_inputs(self, X):
        return (X - self.x_offset_) / self.x_scale_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class _TrainingData:
    """Scaled training arrays, passed together through the EM steps.

    Every row has positive weight: ``fit`` drops the others first.
    """

    __slots__ = ("X", "Y", "sample_weight")

    def __init__(self, X, Y, sample_weight):
        self.X = np.ascontiguousarray(X)
        self.Y = np.ascontiguousarray(Y)
        self.sample_weight = sample_weight


def _numeric_finite_targets(y):
    """y as float64, or a ValueError naming the problem.

    validate_data leaves string arrays alone and converts object arrays
    after its finiteness check, so None in an object array would become NaN.
    """
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"y must be numeric: {error}") from None
    if not np.all(np.isfinite(y)):
        raise ValueError("Input y contains NaN or infinity.")
    return y


def _check_extrapolation_finite(mean, X, x_offset, x_scale):
    """ValueError where polynomial extrapolation overflowed (finite inputs far
    outside the training range), rather than inf or NaN predictions."""
    overflowed = ~np.isfinite(mean).all(axis=1)
    if overflowed.any():
        distance = np.abs((X[overflowed] - x_offset) / x_scale).max()
        raise ValueError(
            f"Predictions overflow for {int(overflowed.sum())} of {X.shape[0]} "
            f"rows: they lie up to {distance:.3g} half-ranges of the training "
            "inputs from their centre, where the polynomial experts' "
            "extrapolation exceeds the float range."
        )


def _auto_degree(n_features, n_samples):
    """degree="auto": the highest degree <= AUTO_MAX_DEGREE whose basis has at
    most AUTO_MAX_BASIS functions and no more than n_samples."""
    for degree in range(AUTO_MAX_DEGREE, 0, -1):
        n_basis = comb(n_features + degree, degree)
        if n_basis <= min(AUTO_MAX_BASIS, n_samples):
            return degree
    return 0


def _count_distinct_rows(X_sorted):
    """Distinct rows, of rows sorted so equal ones are adjacent (at least one)."""
    return 1 + int(np.count_nonzero((X_sorted[1:] != X_sorted[:-1]).any(axis=1)))


def _auto_gate_alpha(gate, n_features):
    """gate_alpha="auto" (see AUTO_GATE_ALPHA_*); the MLP gate's is an L2 penalty."""
    if gate == "mlp" or n_features <= 2:
        return AUTO_GATE_ALPHA_LOW_DIM
    return AUTO_GATE_ALPHA_HIGH_DIM


def _validated_sizes(sizes, name):
    values = (sizes,) if isinstance(sizes, Integral) else tuple(sizes)
    if not values or not all(
        isinstance(v, Integral) and not isinstance(v, bool) and v >= 1
        for v in values
    ):
        raise ValueError(
            f"{name} must be a non-empty tuple of positive integers; got {sizes!r}."
        )
    return tuple(int(v) for v in values)


def _restrict(resp, n_children):
    """Coarse responsibilities: sum of the fine ones over each node's children."""
    n_samples, n_nodes = resp.shape
    return resp.reshape(n_samples, n_nodes // n_children, n_children).sum(axis=2)


def _split_along_axis(data, resp, n_children, degree):
    """Soft split of every node into n_children slabs along one axis.

    The axis is the node's principal axis, or for constant experts the
    direction of the target's least-squares gradient.

    Slab boundaries are weighted quantiles (inverted CDF, so integer weights
    equal repeated rows) of the projection on that axis. The
    returned labels (n_samples, n_nodes * n_children) are the parents'
    responsibilities times a softmax whose logits are ordered in the
    projection t: logit_j = beta (j t - sum_{i<=j} q_i) changes winner at q_j.
    Those logits are affine in x; they are returned too, one row
    (bias, slopes) per child.
    """
    X, sw = data.X, data.sample_weight
    n_samples, n_parents = resp.shape
    labels = np.zeros((n_samples, n_parents * n_children))
    split_logits = np.zeros((n_parents * n_children, 1 + X.shape[1]))
    steps = np.arange(n_children)
    for p in range(n_parents):
        weight = sw * resp[:, p]
        rows = weight > MIN_RESPONSIBILITY * sw
        if not rows.any():
            labels[:, p * n_children:(p + 1) * n_children] = resp[:, [p]] / n_children
            continue  # its children's logits stay zero
        mean = np.average(X[rows], axis=0, weights=weight[rows])
        axis = None
        if degree == 0:
            # Constant experts leave the whole trend to the partition: cut
            # along the direction in which the target changes most (the
            # least-squares gradient). Higher-degree experts absorb the
            # trend themselves, and the principal axis balances the pieces.
            root = np.sqrt(weight[rows])[:, None]
            centred_y = data.Y[rows] - np.average(
                data.Y[rows], axis=0, weights=weight[rows]
            )
            gradient = np.linalg.lstsq(
                root * (X[rows] - mean), root * centred_y, rcond=None
            )[0]
            left, singular, _ = np.linalg.svd(gradient, full_matrices=False)
            if singular[0] > 0:
                axis = left[:, 0]
        if axis is None:
            cov = np.cov(
                X[rows] - mean, rowvar=False, aweights=weight[rows], bias=True
            )
            axis = np.linalg.eigh(np.atleast_2d(cov))[1][:, -1]
        axis *= np.sign(axis[np.argmax(np.abs(axis))])
        t = X @ axis
        quantiles = np.quantile(
            t[rows], steps[1:] / n_children, weights=weight[rows],
            method="inverted_cdf",
        )
        spread = np.sqrt(np.average((t[rows] - t[rows] @ weight[rows] / weight[rows].sum()) ** 2, weights=weight[rows]))
        beta = 4.0 * n_children / spread if spread > 0 else 0.0
        offsets = np.concatenate([[0.0], np.cumsum(quantiles)])
        children = slice(p * n_children, (p + 1) * n_children)
        split_logits[children, 0] = -beta * offsets
        split_logits[children, 1:] = beta * np.outer(steps, axis)
        logits = split_logits[children, 0] + X @ split_logits[children, 1:].T
        labels[:, children] = resp[:, [p]] * np.exp(
            child_log_gates(logits, np.zeros((X.shape[0], 1)), n_children)
        )
    return labels, split_logits
