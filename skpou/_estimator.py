"""The estimator: parameters, validation, and fit as its named steps.

``fit`` validates its input, prepares the training data (``skpou._data``),
trains the partition tree by multilevel EM (``skpou._multilevel``, the
paper's Algorithm 1, over ``skpou._tree.PartitionTree``), and finishes with
the steps after EM (kink boundaries, ``skpou._kinks``; the joint polish,
``skpou._polish``; the noise refit). ``predict`` evaluates the finest
level's mixture. Model: Trask, Henriksen, Martinez and Cyr, "Hierarchical
partition of unity networks: fast multilevel training", PMLR 190, 2022;
the user guide (``doc/user_guide.rst``) and the design note
(``doc/design.md``) explain the choices.
"""

import warnings
from math import comb
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from . import _evidence, _multilevel, _refinement
from ._basis import Basis
from ._data import capped_total, em_subsample, prepare, validation_split
from ._gates import make_gate
from ._kinks import place_boundaries_at_crossings
from ._parallel import is_dask_collection, local_threads
from ._polish import polish_experts, prune_slivers
from ._tree import PartitionTree

# degree="auto": degree 4 where its basis is small (up to 3 dimensions: 35
# functions), lower in more dimensions, where a degree-4 basis (70 functions
# in 4-D, 126 in 5-D) makes every partition's problem, and the fit, several
# times costlier for little gain.
AUTO_MAX_DEGREE = 4
AUTO_MAX_BASIS = 56
# Weight ratios beyond this are warned about (see _validate_training_data).
MAX_WEIGHT_RATIO = 1e8
# partitions="auto" starts refinement at this degree at most (p-steps raise it).
START_DEGREE = 2
# gate_alpha="auto" for the softmax gates: sharper transitions in 1-D and 2-D,
# smoother ones from 3-D on, where the default tree's partitions are wide and
# each expert alone is a coarse fit, so wide blends are what makes the mean
# accurate (the user guide's section on gate_alpha has the measurements).
AUTO_GATE_ALPHA_LOW_DIM = 1e-2
AUTO_GATE_ALPHA_HIGH_DIM = 0.3
# partitions="auto" also tries gates this sharp (the value exact reproduction
# of piecewise polynomials needs) and keeps them if held-out error prefers.
SHARP_GATE_ALPHA = 1e-20


class HierarchicalPOURegressor(RegressorMixin, BaseEstimator):
    """Hierarchical partition of unity network regressor (multilevel EM).

    A probabilistic mixture of polynomial experts over a tree of nested soft
    partitions, trained by expectation-maximization with a multilevel
    V-cycle (Trask, Henriksen, Martinez and Cyr, 2022).

    Parameters
    ----------
    partitions : "auto", int or tuple of int, default="auto"
        The tree. ``"auto"`` grows it to the resolution the data support
        (adaptive hp-refinement, user guide "Adaptive resolution"): a start
        tree (the root, or uniform splits up to ``(4, 4)``) is chosen on
        held-out rows, then each step either splits the partitions holding
        most of the error (h-refinement, Dörfler marking) or raises every
        expert's degree (p-refinement, if ``degree="auto"``), whichever
        lowers the held-out error more per added unknown; refinement stops
        after ``n_iter_no_change`` steps that lower it by less than 10%, and
        the best tree is kept. With ``degree="auto"`` the grown tree then
        competes with the Bayesian root (one polynomial of high degree under
        a prior chosen by the evidence, user guide "The Bayesian root"),
        which wins unless the tree's held-out error is 10% below the
        root's (for a tree of one partition: half the root's); without
        held-out rows (``early_stopping=False``) the Bayesian root is the
        fit. A tuple fixes the tree, as in the paper:
        children per node at each level, ``(8,)`` one level of 8
        partitions, ``(4, 2)`` two levels (4 coarse partitions, each split
        in 2: 8 fine ones); an int ``k`` is ``(k,)``.

    degree : int or "auto", default="auto"
        Total degree of every polynomial expert (0 = constant). With
        ``partitions="auto"``, ``"auto"`` starts at 2 (lower if the rows
        cannot determine it) and p-refinement raises it, up to 10 and a
        basis of 120 functions; the root alone is tried at its own degree,
        that of least leave-one-out error on the training rows (at least
        1.5 rows per unknown, up to 500 functions), and refinement may
        start from it; the Bayesian root (``partitions``) chooses its own
        basis, up to degree 24 in one feature. An integer is kept
        throughout and leaves the Bayesian root out. With a fixed
        tree, ``"auto"`` takes the highest degree up to 4 whose basis has at
        most 56 functions (4 in up to 3 dimensions, 3 in 4 and 5, 2 in 6 to
        9, 1 above). An explicit degree whose basis has more functions than
        distinct samples with positive weight is lowered to one they
        determine, with a UserWarning. The fitted value is ``degree_``. The
        basis size, C(n_features + degree, degree), sets the cost: every
        partition solves a problem of that size.

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
        two input features and 0.3 for more (1e-2 for ``gate="mlp"``); with
        ``partitions="auto"`` and a softmax gate, sharp gates (1e-20) are
        also tried on the start tree and kept if the held-out error prefers
        them (piecewise targets). The fitted value is ``gate_alpha_``. Both keep neighbours overlapping:
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
        Maximum number of V-cycles of the multilevel EM (with
        ``partitions="auto"``, of each refinement step, over its two finest
        levels; sharp gates take at least 20, which they need to sharpen).

    tol : float, default=1e-4
        Stop when the relative change of the EM objective (the negative mean
        log-likelihood, relative to ``max(|loss|, 1)``) between two cycles falls
        below ``tol``. ``tol=0`` runs all ``n_cycles``. Only for a fixed tree
        without held-out rows (``early_stopping=False``); otherwise the
        held-out error decides (``n_iter_no_change``).

    em_subsample : int or None, default=20_000
        The initialization, V-cycles and refinement, which place the
        partitions and choose the degree, run on at most this many rows
        drawn without replacement (seeded by ``random_state``); the experts
        are then refitted, and polished, on all rows. ``None`` runs them on
        every row (their cost grows with the rows).

    early_stopping : bool or "auto", default="auto"
        Hold out ``validation_fraction`` of the distinct rows and judge the
        fit on them: with ``partitions="auto"`` every refinement step, with
        a fixed tree every V-cycle (stopping after ``n_iter_no_change``
        cycles that lower the held-out error by less than 10%, keeping the
        best). The held-out rows also choose the polish ridge; the experts
        are refitted on all rows at the end. ``"auto"`` is True with
        ``partitions="auto"`` (which needs it: without held-out rows the
        tree is the root alone, with ``degree="auto"`` the Bayesian root),
        False with a fixed tree (the paper's training, on every row).

    validation_fraction : float in (0, 1), default=0.1
        Share of the distinct rows held out by ``early_stopping`` (beyond
        ``em_subsample`` rows, ``validation_fraction * em_subsample`` of them).
        Equal rows stay on one side.

    n_iter_no_change : int, default=2
        Refinement steps (or, with a fixed tree, V-cycles) without a 10%
        lower held-out error before training stops.

    n_jobs : int, default=None
        Threads for assembling and solving the per-partition problems
        (``None`` means 1 unless in a :func:`joblib.parallel_config`
        context, -1 means all processors). Results do not depend on it.
        BLAS runs single-threaded during ``fit`` and ``predict`` (the
        estimator's own threads use the cores), so results do not depend
        on BLAS's thread count either.

    random_state : int, RandomState instance or None, default=None
        Seeds the ``"mlp"`` gate weights, the held-out rows of
        ``early_stopping`` and the ``em_subsample`` draw; the partition
        splitting is deterministic.

    verbose : int, default=0
        Print progress, each line with the seconds since ``fit`` began: the
        loss of each cycle, each refinement step with its held-out error,
        the polish ridge chosen.

    warm_start : bool, default=False
        Reuse the fitted tree on the next ``fit`` with the same
        ``partitions``, ``gate`` and number of features. With a fixed tree, a
        new ``degree`` and ``n_cycles=0`` refit the experts on frozen
        partitions (p-refinement by hand); with ``partitions="auto"`` the
        refinement continues from the fitted tree (for more, or new, rows).

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string feature names.

    n_outputs_ : int
        Number of targets.

    n_iter_ : int
        Number of V-cycles run (over all refinement steps).

    converged_ : bool
        Whether training ended on its own criterion: the loss settled within
        ``tol`` (fixed tree), or held-out error stopped falling (early
        stopping, refinement) rather than the rows running out.

    loss_curve_ : list of float
        EM objective of each cycle: the finest level's negative mean
        log-likelihood of the standardized training targets.

    partitions_ : tuple of int
        Nodes per level of the fitted tree: the ``partitions`` tuple, or,
        with ``"auto"``, the number of nodes of each level grown.

    n_partitions_ : int
        Finest-level partitions in use (pruned ones left out).

    refinement_path_ : list of dict
        With ``partitions="auto"``, one dict per step tried, in order: its
        ``kind`` ("start", "h", "p", "warm start" or, last, "bayesian
        root": if it is ``kept``, no other step is), ``n_partitions``,
        ``degree``, ``validation_error`` (the held-out error the step was
        judged by: after the polish the fit would make, except for sharp
        gates past the start) and ``train_error`` (of the EM experts, not
        polished), both weighted mean squared errors of the standardized
        targets, ``n_cycles``,
        ``seconds``, whether it was ``kept``, and its ``losses``. Empty for
        a fixed tree.

    validation_score_, train_score_ : ndarray of shape (n_steps,)
        Held-out and training scores, 1 - the weighted mean squared error of
        the standardized targets (close to R^2), after each refinement step
        or, with a fixed tree and early stopping, each cycle; empty without
        held-out rows.

    degree_ : int
        The degree used: ``degree``, or what ``"auto"`` chose (for the
        Bayesian root, the highest total degree of its basis).

    gate_alpha_ : float
        The gate penalty used: ``gate_alpha``, or what ``"auto"`` chose.

    powers_ : ndarray of shape (n_basis, `n_features_in_`)
        Multi-indices of the Legendre basis of every expert: all of total
        degree at most ``degree_``, or the Bayesian root's anisotropic set.

    tree_ : PartitionTree
        The fitted partition tree (``skpou._tree``): per level, the sibling
        groups, gate parameters, and each node's expert coefficients
        (n_nodes, n_basis, n_outputs) in its local Legendre frame, noise and
        pruning.

    x_offset_, x_scale_ : ndarray of shape (`n_features_in_`,)
        Inputs are scaled as ``(X - x_offset_) / x_scale_`` into [-1, 1].

    y_offset_, y_scale_ : ndarray of shape (`n_outputs_`,)
        Targets are standardized as ``(y - y_offset_) / y_scale_``.

    polished_ : bool
        Whether the finest experts were polished (see ``polish``); False
        for the Bayesian root, fitted by its posterior.

    polish_alpha_ : float or None
        The polish ridge used: chosen from 1e-10 to 1e-4 on the held-out
        rows, or ``alpha`` without held-out rows; None if ``polish=False``
        or for the Bayesian root.

    noise_var_ : ndarray of shape (n_partitions, n_outputs)
        Noise variance of each finest-level expert, in standardized units,
        refitted after training (for the Bayesian root, the evidence's, one
        for all outputs, which a noise shape v(x) may multiply: user guide,
        "The Bayesian root"); with the experts' coefficient covariances and a
        calibration factor (``predict``) it makes ``predict(return_std=True)``.

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
        "partitions": ["array-like", Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
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
        "early_stopping": ["boolean", StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        # joblib's convention: 0 means nothing, -1 all CPUs, -2 all but one
        "n_jobs": [Interval(Integral, 1, None, closed="left"),
                   Interval(Integral, None, -1, closed="right"), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        partitions="auto",
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
        em_subsample=20_000,
        early_stopping="auto",
        validation_fraction=0.1,
        n_iter_no_change=2,
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
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
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
            Training inputs. A Dask array or DataFrame chunked along rows
            (any length) is fitted out of core, on the active Dask
            scheduler (user guide, "Data beyond memory"; needs
            ``skpou[dask]``).

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets. Several outputs share the partitions (and the
            refinement's choices: fit outputs of different smoothness or
            noise separately, user guide "Adaptive resolution").

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; an integer weight equals repeating the row.

        Returns
        -------
        self : object
            Fitted estimator.

        Raises
        ------
        ValueError
            For invalid parameters, non-finite or non-numeric input, or
            fewer distinct samples with positive weight than basis functions.
        """
        # A fit that fails or is interrupted (KeyboardInterrupt) leaves the
        # estimator exactly as it was: unfitted, or its previous fit. The
        # fit builds new objects (a warm start trains a copy of the tree),
        # so keeping the previous attributes is enough.
        previous_state = dict(vars(self))
        try:
            chunked = is_dask_collection(X, y, sample_weight)
            if chunked:
                from . import _dask  # optional dependency, only for Dask input

                self._check_settings()
                data, scaling, n_distinct, y_was_1d = _dask.prepare_chunks(
                    self, X, y, sample_weight, self.em_subsample,
                    check_random_state(self.random_state),
                )
            else:
                X, y, sample_weight = self._validate_training_data(X, y, sample_weight)
                Y = y.reshape(y.shape[0], -1)
                data, scaling, n_distinct = prepare(X, Y, sample_weight)
                y_was_1d = y.ndim == 1
            self._resolve_auto_params(data.X.shape[1], n_distinct)
            with local_threads(self.n_jobs) as threads:
                if chunked:
                    threads = _dask.training_rows(data, threads)
                self._train(data, n_distinct, threads)
            self.x_offset_, self.x_scale_ = scaling.x_offset, scaling.x_scale
            self.y_offset_, self.y_scale_ = scaling.y_offset, scaling.y_scale
            self._y_was_1d = y_was_1d
            self.n_outputs_ = data.Y.shape[1]
        except BaseException:
            vars(self).clear()
            vars(self).update(previous_state)
            raise
        self._warn_about_pruned_partitions()
        return self

    def _validate_training_data(self, X, y, sample_weight):
        """Validated float64 X (n, d), y (n,) or (n, T), and weights (n,)."""
        self._check_settings()
        X, y = validate_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=np.float64
        )
        y = _numeric_finite_targets(y)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True
        )
        positive = sample_weight[sample_weight > 0]
        # In logarithms: the ratio of the extremes overflows for weights near
        # the float range's ends.
        span = 0.0
        if positive.size:
            span = np.log10(positive.max()) - np.log10(positive.min())
        if span > np.log10(MAX_WEIGHT_RATIO):
            warnings.warn(
                f"sample_weight spans {span:.0f} "
                "orders of magnitude: the least-squares fits square the condition "
                f"of their systems, and beyond ~{np.log10(MAX_WEIGHT_RATIO):.0f} orders "
                "the rows of small weight are fitted only to round-off.",
                UserWarning,
            )
        return X, y, sample_weight

    def _check_settings(self):
        """What parameter validation leaves to fit: tuple contents, bool degree."""
        if not _is_auto(self.partitions):
            _validated_sizes(self.partitions, "partitions")
        _validated_sizes(self.gate_hidden_sizes, "gate_hidden_sizes")
        if isinstance(self.degree, bool):
            raise ValueError(f"degree must be an integer or \"auto\"; got {self.degree!r}.")

    def _resolve_auto_params(self, n_features, n_distinct):
        """The "auto" parameters' values for this data, and the basis check.

        With ``partitions="auto"`` the degree is the start of refinement
        (raised by p-steps), at most 2; with a fixed tree it is the degree
        the dimension affords (``_auto_degree``).
        """
        adaptive = _is_auto(self.partitions)
        if self.degree != "auto":
            self.degree_ = self.degree
        elif adaptive:
            self.degree_ = min(_auto_degree(n_features, n_distinct), START_DEGREE)
        else:
            self.degree_ = _auto_degree(n_features, n_distinct)
        if self.gate_alpha == "auto":
            self.gate_alpha_ = _auto_gate_alpha(self.gate, n_features)
        else:
            self.gate_alpha_ = float(self.gate_alpha)
        n_basis = comb(n_features + self.degree_, self.degree_)
        if n_distinct < n_basis:
            # As a polynomial + ridge pipeline would: fit what the rows
            # determine, and say so.
            lowered = _highest_determined_degree(n_features, n_distinct, self.degree_)
            warnings.warn(
                f"degree={self.degree_} in {n_features} dimensions has {n_basis} "
                f"basis functions, more than the {n_distinct} distinct samples with "
                f"positive weight determine: fitting degree {lowered} instead.",
                UserWarning,
            )
            self.degree_ = lowered

    def _train(self, data, n_distinct, threads):
        """Multilevel EM (on a fixed or a growing tree), then the steps after
        it; sets the fitted tree and the training history."""
        settings = _multilevel.EMSettings(
            alpha=self.alpha, sigma=self.sigma, n_jobs=self.n_jobs,
            threads=threads, verbose=self.verbose,
        )
        n_features = data.X.shape[1]
        adaptive = _is_auto(self.partitions)
        shape = "auto" if adaptive else _validated_sizes(self.partitions, "partitions")
        if not adaptive:
            # out of core, n_distinct counts the rows drawn for EM alone
            rows = data.n_samples if getattr(data, "out_of_core", False) else n_distinct
            _warn_if_underdetermined(shape, n_features, self.degree_, rows,
                                     self.degree == "auto")
        warm_start_key = (shape, self.gate, tuple(self.gate_hidden_sizes), n_features)
        previous = None
        # a previous Bayesian root is not refined: the fit starts afresh
        if (self.warm_start and getattr(self, "_warm_start_key", None) == warm_start_key
                and getattr(self.tree_, "prior", None) is None):
            previous = self.tree_.copy()
        gates = make_gate(self.gate, self.gate_hidden_sizes, self.gate_alpha_)
        random_state = check_random_state(self.random_state)
        early_stopping = adaptive if self.early_stopping == "auto" else self.early_stopping
        if early_stopping:
            # out of core: the held-out rows come from the rows drawn into memory
            train, valid = validation_split(
                getattr(data, "em_data", data), self.validation_fraction,
                self.em_subsample, random_state,
            )
            train = em_subsample(train, self.em_subsample, random_state)
            if valid.n_samples == 0:  # too few distinct rows to hold any out
                train, valid = data, None
        else:
            train, valid = em_subsample(data, self.em_subsample, random_state), None
        self._history = _TrainingHistory()
        if adaptive:
            tree = self._grow(previous, gates, train, valid, settings, random_state)
        else:
            tree = self._fixed_tree(previous, gates, train, valid, shape, settings,
                                    random_state)
        polish_alpha = self.alpha if self.polish else None
        fitted = None  # the fit on the training rows alone, for held-out calibration
        judged = None  # the polish judged on the held-out rows
        if tree.prior is not None:
            polish_alpha = None  # one expert, fitted by its posterior: nothing to polish
        elif valid is not None and self.polish:
            determined = tree.levels[-1].coef.size // data.Y.shape[1] <= train.n_distinct
            polish_alpha, fitted, errors = _refinement.choose_polish_ridge(
                tree, train, valid, threads, determined
            )
            judged = fitted
            _multilevel.log(settings, f"polish ridge {polish_alpha:g}: held-out errors "
                                      "(unpolished first) "
                                      + ", ".join(f"{e:.3e}" for e in errors))
        elif valid is not None:
            fitted = tree.copy()  # _finish refits the experts on all rows
        # rows at which a polished fit's std is calibrated (leave-one-out)
        calibration = (_multilevel.calibration_rows(data)
                       if self.polish or tree.prior is not None else None)
        leave_one_out = self._finish(
            tree, data, train.n_samples < data.n_samples, n_distinct, polish_alpha,
            previous is not None, settings, calibration, judged,
        )
        tree.variance_scale = self._variance_scale(
            tree, calibration, leave_one_out, fitted, train, valid, polish_alpha, threads,
        )
        self.degree_ = int(tree.basis.powers.sum(axis=1).max())  # total degree
        _multilevel.log(settings, f"done: {int((~tree.gone()).sum())} partitions, "
                                  f"degree {self.degree_}")
        self.tree_ = tree
        self._warm_start_key = warm_start_key
        self.partitions_ = (
            tuple(level.n_nodes for level in tree.levels[1:]) if adaptive else shape
        )
        self.n_partitions_ = int((~tree.gone()).sum())
        self.powers_ = tree.basis.powers
        self.polished_ = polish_alpha is not None
        self.polish_alpha_ = polish_alpha
        history = self._history
        del self._history
        self.loss_curve_ = history.losses
        self.n_iter_ = len(history.losses)
        self.converged_ = history.converged
        self.validation_score_ = np.array(history.validation_scores)
        self.train_score_ = np.array(history.train_scores)
        self.refinement_path_ = history.path

    def _fixed_tree(self, previous, gates, train, valid, shape, settings, random_state):
        """The paper's mode: the given tree shape, trained by V-cycles."""
        n_features = train.X.shape[1]
        if previous is not None:
            tree = previous
            tree.basis, tree.gates = Basis(n_features, self.degree_), gates
            _multilevel.refit_experts_on_frozen_gates(tree, train, settings)
        else:
            tree = PartitionTree(Basis(n_features, self.degree_), gates)
            _multilevel.initialize(tree, train, shape, settings, random_state)
        history = self._history
        if valid is None:
            losses, history.converged = _multilevel.run_v_cycles(
                tree, train, self.n_cycles, self.tol, settings
            )
            history.losses.extend(losses)
            if losses and not history.converged:
                warnings.warn(
                    f"n_cycles={self.n_cycles} V-cycles ran before the EM objective "
                    f"settled (relative change below tol={self.tol:g}); raise n_cycles, "
                    "or use early_stopping=True to stop on held-out error.",
                    ConvergenceWarning,
                )
            return tree
        best_error = _refinement.blended_error(tree, valid, settings.threads)
        best, no_change = tree.copy(), 0
        for _ in range(self.n_cycles):
            history.losses.append(-_multilevel.v_cycle(tree, train, tree.finest, settings)[1])
            error = _refinement.blended_error(tree, valid, settings.threads)
            history.record(error, _refinement.blended_error(tree, train, settings.threads))
            if error < best_error * (1 - _refinement.MIN_IMPROVEMENT):
                best, best_error, no_change = tree.copy(), error, 0
            else:
                no_change += 1
                if no_change >= self.n_iter_no_change:
                    history.converged = True
                    break
        return best

    def _grow(self, previous, gates, train, valid, settings, random_state):
        """partitions="auto": adaptive hp-refinement judged on held-out rows.

        Without held-out rows (early_stopping=False, or too few distinct rows
        to hold any out) the tree is the root alone: with degree="auto" the
        Bayesian root, which its evidence judges without held-out rows.
        """
        n_features = train.X.shape[1]
        if self.degree == "auto":  # what the training rows determine
            self.degree_ = min(self.degree_, _auto_degree(n_features, train.n_distinct))
        if valid is None:
            self._history.converged = True
            if self.degree == "auto":
                return _evidence.root_tree(train, gates, settings.threads)
            tree = PartitionTree(Basis(n_features, self.degree_), gates)
            _multilevel.initialize(tree, train, (), settings, random_state)
            return tree
        if previous is not None:
            # The previous fit's gate_alpha="auto" choice stands; its experts
            # saw this fit's held-out rows, so they are refitted first.
            if self.gate_alpha != "auto":
                previous.gates = gates
            _multilevel.refit_experts_on_frozen_gates(
                previous, train, settings,
                coarsest=max(previous.finest - _refinement.CYCLE_DEPTH + 1, 0),
            )
            step = _refinement.Step(
                "warm start", int((~previous.gone()).sum()), previous.basis.degree,
                _refinement.judged_error(previous, train, valid, settings.threads),
                np.nan, 0, 0.0, True, [],
            )
            starts, path = [(previous, step)], [step]
        else:
            sharp = None
            if self.gate_alpha == "auto" and self.gate != "mlp":
                sharp = make_gate(self.gate, self.gate_hidden_sizes, SHARP_GATE_ALPHA)
            starts, path = _refinement.start(
                Basis(n_features, self.degree_), gates, train, valid, self.n_cycles,
                settings, random_state, sharp, loo_root=self.degree == "auto",
            )
        rival = None  # the Bayesian root, which a grown tree must beat
        if self.degree == "auto":
            rival = _refinement.bayesian_root(gates, train, valid, settings)
        tree, path, converged = _refinement.grow_branches(
            starts, path, train, valid, self.n_cycles, self.n_iter_no_change, settings,
            random_state, fixed_degree=self.degree != "auto",
            rival_error=None if rival is None else rival[1],
        )
        self.gate_alpha_ = tree.gates.ridge
        if rival is not None:
            tree = _refinement.bayesian_root_if_better(tree, path, rival, train, settings)
            converged = converged or tree.prior is not None  # no refinement limit applies
        history = self._history
        for step in path:
            history.record(step.validation_error, step.train_error)
        history.path = [vars(step) for step in path]
        history.losses.extend(loss for step in path for loss in step.losses)
        history.converged = converged
        if not converged:
            warnings.warn(
                "Refinement stopped at what the training rows can determine "
                f"({train.n_distinct} distinct rows), not because the held-out "
                "error stopped falling: more rows could support a finer model.",
                ConvergenceWarning,
            )
        return tree

    def _finish(self, tree, data, refit, n_distinct, polish_alpha, warm, settings,
                calibration, judged=None):
        """After EM: experts on all rows (if EM saw only some: ``refit``),
        kinks, polish, noise; for the Bayesian root, its final fit
        (``_evidence.refit``). Returns the residuals (n, T) and 1 - leverages
        (n,) at the rows ``calibration`` where the fit gives them (the
        polish's dense Cholesky factor, or the root's posterior; else
        None).

        ``judged``: the tree polished on the training rows whose held-out
        error chose the polish ridge (``choose_polish_ridge``), or None. The
        final polish starts from its coefficients instead of EM's experts
        refitted on all rows: its ridge pulls towards its start, and so the
        start decides the directions the rows barely determine (blends of
        overlapping experts of high degree). From the refitted experts,
        those directions left Runge's function on 1e4 rows with a test
        error of 9.8e-8, against 3.5e-10 from the judged polish's. The
        partitions switched off as slivers on the training rows stay off
        (on all rows one may hold a few: from EM's experts instead, Runge's
        function on 1e5 rows, random_state=2, had 3.7e-9 against the judged
        polish's 1.7e-10). Where all rows make further slivers, the judged
        coefficients of the other partitions are still the start (the
        gates then differ from those judged by less than a row's worth).
        Not where kinks moved boundaries: the gates are then others.
        """
        threads = settings.threads
        if tree.prior is not None:  # the Bayesian root: its own final fit
            return _evidence.refit(tree, data, threads, calibration)
        places_kinks = data.X.shape[1] == 1 and self.gate == "linear" and not (
            warm and self.n_cycles == 0  # frozen partitions stay
        )
        # the kinks are placed where EM's experts cross
        refitted = refit and (judged is None or places_kinks)
        if refitted:
            _multilevel.refit_finest_experts(tree, data, settings)
        if places_kinks:
            # Rows out of core cannot be sorted: their kinks are found on
            # the EM subsample (all rows, if they fit in it).
            kink_data = data.em_data if getattr(data, "out_of_core", False) else data
            moved = place_boundaries_at_crossings(tree, kink_data, threads)
            _multilevel.log(settings, f"moved {moved} boundaries to where their experts cross")
            if moved:
                judged = None
        leave_one_out = None
        if polish_alpha is not None:
            determined = tree.levels[-1].coef.size // data.Y.shape[1] <= n_distinct
            if judged is not None:  # the partitions judged switched off stay off
                before = tree.gone()
                for level, judged_level in zip(tree.levels, judged.levels):
                    level.pruned = level.pruned | judged_level.pruned
                    level.slivers = level.slivers | judged_level.slivers
                kept_off = int((tree.gone() & ~before).sum())
                if kept_off:
                    _multilevel.log(settings, f"kept off {kept_off} partitions the judged "
                                              "polish switched off")
            if determined:
                slivers = prune_slivers(tree, data, threads)
                if slivers:
                    _multilevel.log(settings, f"switched off {slivers} partitions whose "
                                              "gates hold less than one sample")
            if judged is not None:
                tree.levels[-1].coef = judged.levels[-1].coef.copy()
            elif refit and not refitted:
                _multilevel.refit_finest_experts(tree, data, settings)
            tree.levels[-1].coef, residuals_leverages = polish_experts(
                data.X, data.Y, data.sample_weight, tree, polish_alpha, threads, determined,
                capped_total(data, threads), calibration,
            )
            if residuals_leverages is not None:
                residuals, leverages = residuals_leverages
                leave_one_out = residuals, np.maximum(
                    1.0 - leverages, _multilevel.LEAST_LEAVE_ONE_OUT_ROOM
                )
        _multilevel.refit_noise(tree, data, threads)
        return leave_one_out

    @staticmethod
    def _variance_scale(tree, calibration, leave_one_out, fitted, train, valid,
                        polish_alpha, threads):
        """The predictive variance's calibration factor c (T,) (``predict``):
        matched to the leave-one-out errors at the training rows
        ``calibration`` of the polish, where it was solved densely, or of
        the Bayesian root (``leave_one_out``: residuals and 1 - leverages);
        else to the held-out rows' errors of the fit on the training rows
        alone (``fitted``); else 1.

        Leave-one-out first: with few rows, the held-out tenth is a handful
        (10 rows of 100), and it chose the model, so its errors are both
        noisy and optimistic. On tanh_cos_exp_3d, 300 rows, 1% noise, the
        held-out factor ranged from 0.47 to 2.6 over five held-out draws of
        the same model, and the 2-std coverage from 0.81 to 0.98; with
        leave-one-out it is 0.90-0.93 (resolution.md, noisy data).
        """
        if leave_one_out is not None:
            return _multilevel.calibrate_to_leave_one_out(tree, calibration, *leave_one_out)
        if valid is None:
            return 1.0
        fitted = fitted.copy()
        _multilevel.refit_noise(fitted, train, threads)
        return _multilevel.calibrate_variance(fitted, valid, polish_alpha is None, threads)

    def _warn_about_pruned_partitions(self):
        """A fixed tree whose partitions EM switched off: say why. (With
        partitions="auto", dropping redundant partitions is part of the
        fit.)"""
        if _is_auto(self.partitions):
            return
        gone = self.tree_.gone()
        absorbed = self.tree_.levels[-1].absorbed
        slivers = self.tree_.levels[-1].slivers
        if slivers is None:  # a tree pickled before slivers were marked
            slivers = np.zeros_like(absorbed)
        if slivers.any():
            warnings.warn(
                f"{int(slivers.sum())} of {gone.size} partitions held less than one "
                "sample's worth of gate (of the training rows, where some were held "
                "out) and were switched off before the polish (the samples do not "
                "determine their experts). Fewer partitions give the "
                'same model for less; partitions="auto" chooses how many the data '
                "support.",
                UserWarning,
            )
        if absorbed.any():
            warnings.warn(
                f"{int(absorbed.sum())} of {gone.size} partitions were absorbed by "
                "their neighbours during EM (their gates held training data, but "
                "the neighbours' experts explained it as well or better) and were "
                "pruned. Fewer partitions give the same model for less; "
                'partitions="auto" chooses how many the data support.',
                UserWarning,
            )
        empty = gone & ~absorbed & ~slivers
        if empty.any():
            warnings.warn(
                f"{int(empty.sum())} of {gone.size} partitions received no "
                "training data and were pruned (zero gate everywhere). Fewer "
                "partitions, or more samples, give the same model for less.",
                UserWarning,
            )

    # --------------------------------------------------------------- predict

    def predict(self, X, return_std=False):
        """Predict with the finest level's mixture mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs. For a Dask array or DataFrame the results are lazy Dask
            arrays with X's chunks of rows, computed chunk by chunk.

        return_std : bool, default=False
            Also return the predictive standard deviation of the mixture,
            sqrt(c sum_k pi_k (sigma_k^2 + phi_k^T C_k phi_k
            + (mu_k - mean)^2)): sigma_k^2 the noise variance of partition
            k (``noise_var_``; for the Bayesian root, times its noise
            shape v(x) where it has one), C_k its expert's coefficient
            covariance (Bayesian linear regression, so the std grows where
            rows are few), and c a factor per output that matches the variance to
            the polished fit's (or the Bayesian root's) leave-one-out errors
            at up to 1000 training rows (without the polish: to the errors
            on held-out rows, or 1 without them). After the polish
            (the default) the experts are fitted jointly rather than as
            rival explanations, and the spread term (mu_k - mean)^2 is
            left out. User guide: "Uncertainty with return_std".

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predicted mean.

        y_std : ndarray, same shape as y_mean
            Predictive standard deviation; only if ``return_std`` is True.

        Raises
        ------
        ValueError
            For non-finite input, a wrong number of features, or inputs so
            far outside the training range that the polynomial experts'
            extrapolation overflows.
        """
        check_is_fitted(self)
        if is_dask_collection(X):
            from ._dask import predict_chunks

            return predict_chunks(self, X, return_std)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._predict_validated(X, return_std)

    def _predict_validated(self, X, return_std):
        """``predict`` of a validated float64 array (also one Dask chunk)."""
        tree = self.tree_
        # Polished experts are fitted jointly, not as rival explanations:
        # their spread around the mean is no uncertainty.
        include_spread = not self.polished_

        def block(X):
            if return_std:
                return tree.predictive_moments(X, include_spread)
            # the mean alone: the parameter term costs M^2 per row and expert
            # (a Bayesian root of 1000 functions: 2.4 ms a row against 0.02)
            return tree.moments(X, tree.finest, np.zeros_like(tree.noise_var), False)

        with local_threads(self.n_jobs) as threads:
            parts = threads.map(block, self._scale_inputs(X))
        mean, variance = (np.concatenate(arrays) for arrays in zip(*parts))
        mean = mean * self.y_scale_ + self.y_offset_
        _check_extrapolation_finite(mean, X, self.x_offset_, self.x_scale_, "Predictions")
        if self._y_was_1d:
            mean, variance = mean[:, 0], variance[:, 0]
        if not return_std:
            return mean
        std = np.sqrt(variance) * (self.y_scale_[0] if self._y_was_1d else self.y_scale_)
        # the variance overflows first: it grows as the mean squared
        _check_extrapolation_finite(std.reshape(X.shape[0], -1), X, self.x_offset_,
                                    self.x_scale_, "Predictive standard deviations")
        return mean, std

    def predict_partitions(self, X, level=-1):
        """Gate probabilities pi_k(x) of every partition at one level.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs. For a Dask array or DataFrame the result is a lazy Dask
            array with X's chunks of rows.

        level : int, default=-1
            Tree level: 0 is the root (one partition), 1 the coarsest split,
            -1 the finest level.

        Returns
        -------
        probabilities : ndarray of shape (n_samples, n_partitions)
            Rows sum to one.

        Raises
        ------
        ValueError
            For a level outside the tree, or invalid X.
        """
        check_is_fitted(self)
        if is_dask_collection(X):  # a lazy Dask array, X's chunks of rows
            from ._dask import predict_partitions_chunks

            return predict_partitions_chunks(self, X, level)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        n_levels = len(self.tree_.levels)
        if (
            not isinstance(level, Integral)
            or isinstance(level, bool)
            or not -n_levels <= level < n_levels
        ):
            raise ValueError(
                f"level must be an integer in [{-n_levels}, {n_levels - 1}] for "
                f"partitions={self.partitions_}; got {level!r}."
            )
        return np.exp(self.tree_.log_gates(self._scale_inputs(X), level % n_levels))

    @property
    def noise_var_(self):
        """Noise variance of each finest partition, (n_partitions, n_outputs),
        in standardized units (see ``predict``)."""
        return self.tree_.noise_var

    def _scale_inputs(self, X):
        return (X - self.x_offset_) / self.x_scale_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


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


def _check_extrapolation_finite(values, X, x_offset, x_scale, what):
    """ValueError where polynomial extrapolation overflowed (finite inputs far
    outside the training range), rather than inf or NaN ``values`` (n, T):
    ``what`` names them."""
    overflowed = ~np.isfinite(values).all(axis=1)
    if overflowed.any():
        distance = np.abs((X[overflowed] - x_offset) / x_scale).max()
        raise ValueError(
            f"{what} overflow for {int(overflowed.sum())} of {X.shape[0]} "
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


def _highest_determined_degree(n_features, n_samples, degree):
    """The highest degree <= ``degree`` whose basis n_samples rows determine."""
    while degree > 0 and comb(n_features + degree, degree) > n_samples:
        degree -= 1
    return degree


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


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


class _TrainingHistory:
    """What a fit records as it trains, for the fitted attributes."""

    def __init__(self):
        self.losses = []
        self.validation_scores = []
        self.train_scores = []
        self.path = []
        self.converged = False

    def record(self, validation_error, train_error):
        # errors are mean squared errors of standardized targets: 1 - error
        # is close to the R^2 of the rows
        self.validation_scores.append(1.0 - validation_error)
        self.train_scores.append(1.0 - train_error)


def _warn_if_underdetermined(shape, n_features, degree, n_distinct, auto_degree):
    """A fixed tree with more unknowns than distinct rows: say so. Between
    the rows such a fit is decided by the ridge, not the data, and neither
    the held-out nor the leave-one-out errors (which hold the tree fixed)
    show it: (8, 8) partitions of degree 6 on 300 noisy 2-D rows gave a test
    error 260x the mean predicted std."""
    unknowns = int(np.prod(shape)) * comb(n_features + degree, degree)
    if unknowns > n_distinct:
        chosen = " (chosen by degree=\"auto\" for one expert)" if auto_degree else ""
        warnings.warn(
            f"partitions={shape} with degree={degree}{chosen} in {n_features} dimensions has "
            f"{unknowns} unknowns per output, more than the {n_distinct} distinct "
            "samples determine: between the samples the fit is decided by the ridge, "
            "not the data, and return_std cannot tell. Fewer partitions or a lower "
            'degree fit what the samples determine; partitions="auto" chooses both.',
            UserWarning,
        )
