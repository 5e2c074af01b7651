"""Multilevel EM over the partition tree: the paper's Algorithm 1.

Training is expectation-maximization (doc/design.md sections 2-4):

- E-step (``e_step``): responsibilities w_kd proportional to
  pi_k(x_d) N(y_d; mu_k(x_d), sigma_k^2);
- M-steps: one weighted least-squares problem per expert
  (``m_step_experts``), the noise update (``m_step_noise``), and a
  soft-label classification problem per parent gate (``m_step_gates``);
- a V-cycle over the levels (``v_cycle``, recursive): restrict the fine
  responsibilities to update the coarse gate, correct the coarse level by a
  V-cycle of its own, then relax the fine level once more (``relax``);
- a coarse-to-fine start (``initialize``) and the loop of V-cycles until the
  objective settles (``run_v_cycles``);
- after EM: the finest experts refitted on all rows when EM ran on a
  subsample (``refit_finest_experts``), and each finest partition's noise
  from the prediction's residuals (``refit_noise``).

Every function changes the tree it is given (``skpou._tree.PartitionTree``)
and nothing else; ``EMSettings`` carries what does not change during a fit.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from ._basis import frames_from_moments, local_frames, weighted_moments
from ._data import TrainingData, capped_total
from ._experts import (
    MIN_RESPONSIBILITY,
    block_normal_equations,
    mirror_upper,
    normal_equations,
    solve_normal_equations,
    weighted_squared_residuals,
)
from ._gates import child_log_gates, fit_level_split, level_m_step

# Smallest half-width of an expert's local frame, in units of the unit box.
MIN_FRAME_SCALE = 1e-6
# Noise variances (standardized units) never fall below this floor, and a
# node's own variance (sigma="em") never below this fraction of the pooled one:
# a partition whose sigma collapses would capture its neighbours' samples.
MIN_NOISE_VAR = 1e-24
# The predictive variance is calibrated on the errors at most this many
# rows (``calibration_rows``): the factor's relative standard error is then
# about sqrt(2 / rows), 4.5%, and the leave-one-out errors of a polish of
# U unknowns cost rows * U^2 multiply-adds.
CALIBRATION_ROWS = 1000
# 1 - h, h a leverage, is at least this: h = 1 up to round-off (a row that
# alone fixes its fit) would give 0 / 0.
LEAST_LEAVE_ONE_OUT_ROOM = 1e-6
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


@dataclass(frozen=True)
class EMSettings:
    """What stays fixed during a fit.

    ``alpha``: ridge of the expert solves; ``sigma``: the noise model
    ("fixed", "shared" or "em"); ``n_jobs``: threads of the solves;
    ``threads``: the row-block map (``skpou._parallel.Threads``);
    ``verbose``: print progress.
    """

    alpha: float
    sigma: str
    n_jobs: object
    threads: object
    verbose: int = 0
    started: float = field(default_factory=time.perf_counter)  # when fit began


def log(settings, message):
    """Print a progress line, with the time since ``fit`` began, if verbose."""
    if settings.verbose:
        elapsed = time.perf_counter() - settings.started
        print(f"[HierarchicalPOURegressor] {elapsed:7.2f}s {message}", flush=True)


# ----------------------------------------------------------- Algorithm 1


def initialize(tree, data, partitions, settings, random_state):
    """Coarse-to-fine start: fit the root, then split each level in turn.

    Each node is split along its principal axis at weighted quantiles, so
    the start is deterministic and sample-weight aware; a few EM sweeps
    on the new level follow before the next split. ``partitions``: children
    per node at each level.
    """
    resp = np.ones((data.n_samples, 1))
    m_step_experts(tree, data, 0, resp, settings)
    m_step_noise(tree, data, 0, resp, settings)
    for n_children in partitions:
        add_level(tree, data, resp, n_children, settings, random_state)
        del resp  # the largest arrays of the fit: one at a time
        for _ in range(INIT_SWEEPS):
            resp, log_lik = relax(tree, data, tree.finest, settings)
        log(settings, f"initialized level {tree.finest}: {resp.shape[1]} partitions, "
                      f"loss={-log_lik:.6e}")


def add_level(tree, data, resp, n_children, settings, random_state):
    """Split every finest node into its number of children (``n_children``:
    an int, or one per node; 1 passes the node on unchanged).

    ``resp`` (n_samples, K): the finest level's responsibilities, which the
    split divides among the children. The new gates are fitted to the split
    and the children's experts to their gates.
    """
    tree.add_level(n_children)
    level = tree.finest
    child_start = tree.levels[level].child_start
    split, split_logits = split_along_axis(data, resp, child_start, tree.basis.degree)
    tree.levels[level].gate_params = fit_level_split(
        tree.gates, data.X, data.capped_weight, split, split_logits, child_start,
        settings.threads, INIT_GATE_ITER, random_state,
    )
    del split
    gates = tree.log_gates(data.X, level)
    gates = np.exp(gates, out=gates)
    m_step_experts(tree, data, level, gates, settings)
    m_step_noise(tree, data, level, gates, settings)


def run_v_cycles(tree, data, n_cycles, tol, settings):
    """V-cycles until the EM objective settles (relative change < tol).

    The objective is the finest level's negative mean log-likelihood, as
    evaluated by the E-step of each cycle's post-relaxation (EM never needs
    a separate pass for it). Its change is taken relative to max(|loss|, 1):
    the log-likelihood has no natural scale near zero. Returns the losses
    of the cycles run and whether they settled.
    """
    losses = []
    for cycle in range(n_cycles):
        loss = -v_cycle(tree, data, tree.finest, settings)[1]  # drop the (n, K) resp now
        losses.append(loss)
        log(settings, f"cycle {cycle + 1}/{n_cycles}: loss={loss:.6e}")
        if cycle > 0 and abs(losses[-2] - loss) <= tol * max(abs(loss), 1.0):
            return losses, True
    return losses, False


def v_cycle(tree, data, level, settings, coarsest=1):
    """One V-cycle (the paper's Algorithm 1 with S_pre=0, S_coarse=S_post=1).

    Restriction: summing the fine responsibilities over siblings gives
    the coarse ones, which update the coarse gate (objective L_f2c).
    Coarse correction: a V-cycle one level up, down to level ``coarsest``.
    Prolongation needs no transfer: the fine gates read the coarse gate
    through the product. Post-relaxation: one EM sweep on this level.
    Returns its responsibilities and mean log-likelihood.
    """
    if level > max(coarsest, 1):
        resp = e_step(tree, data, level, settings)[0]
        coarse_resp = tree.restrict(resp, level)
        del resp
        m_step_gates(tree, data, level - 1, coarse_resp, settings)
        del coarse_resp
        v_cycle(tree, data, level - 1, settings, coarsest)
    return relax(tree, data, level, settings)


def relax(tree, data, level, settings):
    """One EM sweep at a level: E-step, then the three M-steps.

    Returns the E-step's responsibilities and mean log-likelihood.
    """
    resp, log_lik, gate_frames, gate_mass = e_step(tree, data, level, settings)
    prune_empty_partitions(tree, data, level, resp, gate_mass)
    m_step_experts(tree, data, level, resp, settings, gate_frames)
    m_step_noise(tree, data, level, resp, settings)
    m_step_gates(tree, data, level, resp, settings)
    return resp, log_lik


# ------------------------------------------------------ EM building blocks


def e_step(tree, data, level, settings):
    """Responsibilities (n_samples, n_nodes), mean log-likelihood, the
    local frames of the level's gates (see ``m_step_experts``) and their
    share of the sample weight (n_nodes,)."""
    resp = np.empty((data.n_samples, tree.levels[level].n_nodes))
    log_lik = np.empty(data.n_samples)

    def block(X, Y, sample_weight, resp, log_lik):
        gate = tree.e_step(X, Y, level, resp, log_lik)
        gate = np.exp(gate, out=gate)
        return weighted_moments(X, gate, sample_weight)

    # the gates' moments with the frame weights: see TrainingData.capped_weight
    moments = settings.threads.sum(block, data.X, data.Y, data.capped_weight, resp, log_lik)
    sw = data.sample_weight
    return (
        resp, float(sw @ log_lik / sw.sum()),
        frames_from_moments(*moments, MIN_FRAME_SCALE),
        moments[0] / data.capped_weight.sum(),
    )


def prune_empty_partitions(tree, data, level, resp, gate_mass):
    """Switch off nodes that hold no training weight.

    A node without data has an arbitrary expert; with sharp gates it
    could still win in a gap between samples. Pruned nodes get zero gate
    everywhere. The heaviest sibling of each family is always kept. Nodes
    whose gate still held data (``gate_mass``, their share of the sample
    weight) but whose responsibilities fell to nothing were absorbed by
    their neighbours: they are marked so (``Level.absorbed``).
    """
    nodes = tree.levels[level]
    mass = (data.sample_weight @ resp) / data.sample_weight.sum()
    empty = mass <= PRUNE_MASS
    starts = nodes.child_start[:-1]
    heaviest = starts + np.array(
        [np.argmax(mass[s:e]) for s, e in zip(starts, nodes.child_start[1:])]
    )
    empty[heaviest] = False
    nodes.absorbed = nodes.absorbed | (empty & ~nodes.pruned & (gate_mass > PRUNE_MASS))
    nodes.pruned = nodes.pruned | empty


def m_step_experts(tree, data, level, resp, settings, frames=None):
    """Weighted least squares per node, each in its own local frame.

    ``frames`` (centres, half-widths) are those of the level's gates,
    from the E-step; by default, those of ``resp``, for callers whose
    weights are the gates. A frame spans where its expert is used, the
    gate, rather than the rows it fits, its responsibilities: those can
    shrink onto a few rows (noise-free data make EM's responsibilities
    sharp) while the gate, however small, still spans a partition, and a
    high-degree polynomial evaluated far outside its frame ruins the blend
    there (``tests/test_hardening.py::test_expert_frames_span_their_gates``).
    """
    if frames is None:
        frames = local_frames(data.X, resp, data.capped_weight, MIN_FRAME_SCALE)
    nodes = tree.levels[level]
    nodes.centers, nodes.scales = frames
    gram, rhs = normal_equations(
        data.X, data.Y, data.sample_weight, resp, nodes.centers, nodes.scales,
        tree.basis, settings.threads,
    )
    total = data.capped_weight.sum()
    nodes.coef = solve_normal_equations(
        gram / total, rhs / total, settings.alpha, settings.n_jobs
    )


def m_step_noise(tree, data, level, resp, settings):
    """The noise model's M-step: log variances per node and output.

    Rows weigh in with their capped weights (``TrainingData.capped_weight``):
    one row of huge weight that the experts fit closely says little of the
    noise at the other rows, and would make their responsibilities so sharp
    that partitions collapse.
    """
    nodes = tree.levels[level]
    n_outputs = data.Y.shape[1]
    if settings.sigma == "fixed":
        nodes.log_var = np.zeros((resp.shape[1], n_outputs))
        return
    squared, mass = weighted_squared_residuals(
        data.X, data.Y, data.capped_weight, resp, nodes, tree.basis, settings.threads
    )
    if settings.sigma == "shared":
        var = np.broadcast_to(pooled_variance(squared, mass), squared.shape)
    else:
        var = noise_variances(squared, mass, EM_NOISE_FLOOR)
    nodes.log_var = np.log(var)


def pooled_variance(squared, mass):
    """One variance per output over all nodes, at least MIN_NOISE_VAR."""
    return np.maximum(squared.sum(axis=0) / mass.sum(), MIN_NOISE_VAR)


def noise_variances(squared, mass, relative_floor=None):
    """Per node and output, sum_d w_kd r_d^2 / sum_d w_kd (K, T).

    ``squared`` (K, T) and ``mass`` (K,) are the two sums. Nodes without
    weight get the pooled variance; all are floored at ``relative_floor``
    times the pooled variance, or at MIN_NOISE_VAR if None.
    """
    pooled = pooled_variance(squared, mass)
    own = squared / np.maximum(mass, np.finfo(float).tiny)[:, None]
    var = np.where(mass[:, None] > 0, own, pooled)
    return np.maximum(var, MIN_NOISE_VAR if relative_floor is None else relative_floor * pooled)


def m_step_gates(tree, data, level, resp, settings):
    """Update the conditional gates pi_{j|parent} of one level."""
    nodes = tree.levels[level]
    nodes.gate_params = level_m_step(
        tree.gates, data.X, data.capped_weight, resp, nodes.gate_params,
        nodes.child_start, settings.threads,
    )


def split_along_axis(data, resp, child_start, degree):
    """Soft split of every node into its children's slabs along one axis.

    Parent p (a column of ``resp``) gets child_start[p + 1] - child_start[p]
    slabs. The axis is the node's principal axis, or for constant experts
    the direction of the target's least-squares gradient.

    Slab boundaries are weighted quantiles (inverted CDF, so integer weights
    equal repeated rows) of the projection on that axis. The returned labels
    (n_samples, n_children in all) are the parents' responsibilities times a
    softmax whose logits are ordered in the projection t:
    logit_j = beta (j t - sum_{i<=j} q_i) changes winner at q_j. Those logits
    are affine in x; they are returned too, one row (bias, slopes) per child.
    """
    X, sw = data.X, data.sample_weight
    n_samples, n_parents = resp.shape
    labels = np.zeros((n_samples, child_start[-1]))
    split_logits = np.zeros((child_start[-1], 1 + X.shape[1]))
    for p in range(n_parents):
        children = slice(child_start[p], child_start[p + 1])
        n_children = children.stop - children.start
        steps = np.arange(n_children)
        weight = sw * resp[:, p]
        rows = weight > MIN_RESPONSIBILITY * sw
        if n_children == 1 or not rows.any():
            labels[:, children] = resp[:, [p]] / n_children
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
        centred_t = t[rows] - t[rows] @ weight[rows] / weight[rows].sum()
        spread = np.sqrt(np.average(centred_t**2, weights=weight[rows]))
        beta = 4.0 * n_children / spread if spread > 0 else 0.0
        offsets = np.concatenate([[0.0], np.cumsum(quantiles)])
        split_logits[children, 0] = -beta * offsets
        split_logits[children, 1:] = beta * np.outer(steps, axis)
        logits = split_logits[children, 0] + X @ split_logits[children, 1:].T
        labels[:, children] = resp[:, [p]] * np.exp(
            child_log_gates(logits, np.zeros((X.shape[0], 1)), np.array([0, n_children]))
        )
    return labels, split_logits


# ------------------------------------------------------------ after EM


def refit_experts_on_frozen_gates(tree, data, settings, coarsest=0):
    """Warm start: keep the partitions, refit every expert (p-refinement).

    With the gates frozen, each expert is fitted to its partition's
    gate-weighted data, then the noise is refitted for those experts.
    Levels above ``coarsest`` drop their experts: only their gates serve
    the levels below.
    """
    for level in range(coarsest):
        tree.levels[level].coef = tree.levels[level].log_var = None
    for level in range(coarsest, len(tree.levels)):
        resp = np.exp(tree.log_gates(data.X, level))
        m_step_experts(tree, data, level, resp, settings)
        m_step_noise(tree, data, level, resp, settings)


def refit_finest_experts(tree, data, settings):
    """One E-step and expert M-step on all rows, finest level.

    Only the finest level predicts; coarser experts served training.
    Streamed block by block (log gates, responsibilities, normal
    equations), in the experts' local frames from EM, so memory does not
    grow with n_samples times the number of partitions.
    """
    level = tree.finest
    nodes = tree.levels[level]
    n_nodes = nodes.n_nodes

    def block(X, Y, sample_weight):
        resp = np.empty((X.shape[0], n_nodes))
        tree.e_step(X, Y, level, resp, np.empty(X.shape[0]))
        return block_normal_equations(
            X, Y, sample_weight, resp, nodes.centers, nodes.scales, tree.basis
        )

    gram, rhs = settings.threads.sum(block, data.X, data.Y, data.sample_weight)
    gram = mirror_upper(gram)
    # the scale of the ridge, as in m_step_experts (out of core: the total)
    total = capped_total(data, settings.threads)
    nodes.coef = solve_normal_equations(
        gram / total, rhs / total, settings.alpha, settings.n_jobs
    )


def refit_noise(tree, data, threads):
    """Each finest partition's noise variance and coefficient covariance.

    Noise: sigma_k^2 = R_k / (n_k - M), with R_k = sum_d s_d pi_k(x_d)
    (y_d - mean(x_d))^2 the gate-weighted residuals of the prediction
    itself and n_k = sum_d s_d pi_k(x_d) its rows (weights scaled to a mean
    of 1), less the expert's M unknowns (residuals of a fit are smaller
    than its errors). Partitions with fewer than 2 M rows get the pooled
    value, (sum R) / (sum n - K M); where even that has fewer than 2 K M
    rows (a fit that can interpolate), the residuals' plain mean: only
    errors on rows the fit did not see can tell such a fit's error
    (``calibrate_to_leave_one_out``, ``calibrate_variance``).
    (Residuals of each expert alone would mislead after the polish, which
    fits the experts jointly: individually they need not fit.)

    Coefficients: C_k = (G_k / sigma_k^2 + I)^-1 per output, with
    G_k = sum_d s_d pi_k phi_k phi_k^T: Bayesian linear regression with a
    unit prior variance per coefficient (targets are standardized), so
    directions the rows do not determine keep the prior's variance
    (doc/design.md section 7).
    """
    level = tree.finest
    nodes = tree.levels[level]
    n_basis = tree.basis.size
    no_noise = np.zeros(nodes.coef.shape[::2])
    scale = data.n_samples / threads.total(data.sample_weight)

    def block(X, Y, sample_weight):
        log_gate = tree.log_gates(X, level)
        mean, _ = tree.moments(X, level, no_noise, False, log_gate)
        gate = np.exp(log_gate, out=log_gate)
        rows = scale * sample_weight
        gram, _ = block_normal_equations(
            X, Y[:, :0], rows, gate, nodes.centers, nodes.scales, tree.basis
        )
        weighted_gate = rows[:, None] * gate
        return weighted_gate.T @ (Y - mean) ** 2, weighted_gate.sum(axis=0), gram

    squared, rows, gram = threads.sum(block, data.X, data.Y, data.sample_weight)
    live = rows > 0
    pooled_rows = rows.sum() - live.sum() * n_basis
    if pooled_rows >= live.sum() * n_basis:
        pooled = squared.sum(axis=0) / pooled_rows
    else:
        pooled = squared.sum(axis=0) / rows.sum()
    # a node's own variance where it holds at least twice its unknowns' rows
    own_rows = np.broadcast_to((rows >= 2 * n_basis)[:, None], squared.shape)
    var = np.divide(squared, (rows - n_basis)[:, None], where=own_rows,
                    out=np.broadcast_to(pooled, squared.shape).copy())
    tree.noise_var = np.maximum(var, MIN_NOISE_VAR)
    # C = V diag(1 / (lambda / sigma^2 + 1)) V^T from G = V diag(lambda) V^T:
    # exact however small sigma^2 or singular G are
    eigval, eigvec = np.linalg.eigh(mirror_upper(gram))
    shrink = 1.0 / (np.maximum(eigval, 0.0)[:, None, :] / tree.noise_var[:, :, None] + 1.0)
    # kept as R = diag(shrink)^(1/2) V^T, C = R^T R (``PartitionTree.moments``)
    tree.coef_cov_factor = np.sqrt(shrink)[:, :, :, None] * eigvec.transpose(0, 2, 1)[:, None]


def calibrate_variance(tree, data, include_spread, threads):
    """The factor (T,) that makes the predictive variance match the errors
    on held-out rows ``data``: the ``coverage_factor`` of their standardized
    squared errors (y_d - mean_d)^2 / var_d, rows weighted by
    ``TrainingData.capped_weight``."""
    level = tree.finest

    def block(X, Y):
        mean, variance = tree.moments(X, level, tree.noise_var, include_spread,
                                      coef_cov_factor=tree.coef_cov_factor)
        return (Y - mean) ** 2 / np.maximum(variance, np.finfo(float).tiny)

    standardized = np.concatenate(threads.map(block, data.X, data.Y))
    return coverage_factor(standardized, data.capped_weight)


def calibrate_to_leave_one_out(tree, calibration, residuals, room):
    """The factor (T,) that makes the predictive variance match the
    leave-one-out errors of the polish (or of the Bayesian root) at the
    rows ``calibration`` (a ``TrainingData``; ``residuals`` (n, T),
    ``room`` = 1 - h (n,), h the leverages, at least
    LEAST_LEAVE_ONE_OUT_ROOM where computed by subtraction), row by row.

    Row d's leave-one-out error e_d = r_d / (1 - h_d) (residual r, leverage
    h) is the error of a fit that did not see it, whose predictive variance
    there is v_d = sigma^2(x_d) / (1 - h_d) (the noise variance grown by the
    parameters' uncertainty, as for any least-squares fit). The factor c
    puts COVERAGE of the standardized errors z_d^2 = e_d^2 / v_d =
    r_d^2 / ((1 - h_d) sigma^2(x_d)) within 2 std, z_d^2 <= 4 c
    (``coverage_factor``), rows weighted by ``TrainingData.capped_weight``
    (as held-out errors are: one row of huge weight would otherwise decide
    it alone).

    Row by row, not a ratio of sums: with few rows some leverages come
    near 1, and their e_d^2 and v_d, both huge, would decide a ratio of
    sums alone (a 3-D target on 100 rows: 24 against 3.8 on test data).
    The noise variances are the residuals' mean squares corrected for the
    unknowns (``refit_noise``), so where the leverages are alike and the
    model fits, the factor is near 1; it corrects a model whose errors
    the residuals understate (a degree too low for the rows: 2.5 on that
    3-D target). It holds the gates and the tree fixed, so it does not
    see their overfitting.
    """
    noise = tree.noise_at(calibration.X)
    standardized = residuals**2 / (room[:, None] * np.maximum(noise, MIN_NOISE_VAR))
    return coverage_factor(standardized, calibration.capped_weight)


# The share of standardized errors the calibrated 2-std intervals hold: a
# Gaussian's.
COVERAGE = 0.9545


def coverage_factor(standardized, weight):
    """The factor c (T,) with a weighted share COVERAGE of the
    ``standardized`` squared errors z^2 (n, T) at most 4 c: 2 std
    intervals, their variance scaled by c, then hold that share of the
    rows, as split conformal prediction calibrates its intervals (Vovk,
    Gammerman and Shafer 2005; the jackknife+ of Barber et al. 2021 uses
    leave-one-out errors as here). For Gaussian errors of the right
    variance, c = 1, as the mean of z^2 would give.

    A quantile, not the mean of z^2: where a few rows' errors are far
    larger than the rest's, the mean is theirs alone. On a noise-free
    staircase (2000 rows, 22 sharp partitions), the leave-one-out fits of
    rows beside a step cross it; the mean made the std 366 where the error
    was 0.002, 1e5 times the errors of every other row.
    """
    return np.array([
        np.quantile(z, COVERAGE, weights=weight, method="inverted_cdf")
        for z in standardized.T
    ]) / 4.0


def calibration_rows(data):
    """At most CALIBRATION_ROWS of the training rows, at which the
    predictive variance is calibrated: a ``TrainingData`` with weights in
    ``data``'s units.

    Evenly spaced in the canonical order (sorted, so they spread over the
    inputs); out of core, among the rows in memory (``em_data``).
    """
    rows = getattr(data, "em_data", data)
    if rows.n_samples > CALIBRATION_ROWS:
        rows = rows.rows(np.linspace(0, rows.n_samples - 1, CALIBRATION_ROWS).astype(np.intp))
    unit = getattr(data, "em_weight_unit", None)
    if unit is None:
        return rows
    return TrainingData(rows.X, rows.Y, rows.sample_weight * unit)
