"""Adaptive hp-refinement: the tree grows where held-out error says it helps.

``partitions="auto"`` (doc/design.md section 7; user guide "Adaptive
resolution"). A start tree is chosen on held-out rows among the root alone
and a few small uniform trees (``start``; with ``gate_alpha="auto"`` the
largest also with sharp gates), then the tree grows a step at a time
(``grow``). Each step:

1. error indicators: each finest partition's share of the training error,
   the gate-weighted squared residuals of the blended mean;
2. marking: the largest errors making up half of the total (Doerfler
   marking, as adaptive finite elements do);
3. the candidates: an h-step splits only the marked partitions (the others
   pass on to the new level unchanged, so the tree becomes unbalanced); a
   p-step raises the one degree of the whole tree. Each is warm-started
   from the current tree and trained by V-cycles over the last levels,
   each cycle judged on the held-out rows, the best state kept;
4. the choice: with smooth gates the candidate that lowers the held-out
   error (after the polish the fit will make) most per added unknown,
   hp-FEM's convergence-rate test; the kind that won the last step is
   tried first and a clear gain skips the other. The decay of the experts'
   Legendre coefficients (hp-FEM's smoothness indicator) orders the first
   try. With sharp gates (pieces), h-steps first.

Refinement continues from the chosen candidate and stops after
``patience`` steps that do not improve on the best tree (``_improves``:
by 10%, at a fair share of the asymptotic convergence rate), or when the
training rows cannot determine more unknowns; the best tree is returned.
Local model networks (LOLIMOT) grow by splitting the worst local model in
the same greedy way; the h/p rule is hp-FEM's (Mavriplis 1994; Houston and
Suli 2005).
"""

import time
from dataclasses import dataclass

import numpy as np

from . import _evidence, _multilevel
from ._basis import Basis, basis_values
from ._kinks import place_boundaries_at_crossings
from ._polish import UNDERDETERMINED_POLISH_RIDGE, polish_solver, prune_slivers
from ._tree import PartitionTree

# Doerfler marking: the partitions with the largest errors whose sum makes
# up this share of the total error.
MARKED_ERROR_SHARE = 0.5
# A partition is smooth (p pays more than h) when its expert's Legendre
# coefficients fall by at least this factor per degree (decay rate 1 in
# the hp-FEM indicator, e^-1 per degree).
SMOOTH_DECAY = 1.0
# Rows (effective, sum of gate weights) per unknown below which the data
# cannot determine an expert: a partition needs 2 M rows after a split,
# and a raised degree at most half as many unknowns in all as rows.
ROWS_PER_UNKNOWN = 4.0
MAX_DEGREE = 10
# One expert alone is chosen among degrees with as few as this many rows per
# unknown (``loo_root_degree``): least squares may still generalize there,
# and its leave-one-out error, exact and from all training rows, says
# whether it does. (A tenth of a hundred rows held out cannot: on 100 rows
# of a smooth 3-D target with 1% noise, the degree leave-one-out chose, 4 or
# 5, gave a quarter of the error of the degree 3 the held-out rows chose.)
LOO_ROWS_PER_UNKNOWN = 1.5
# Relative size of R's diagonal below which ``leave_one_out_errors`` takes a
# column to be spanned by the earlier ones, and distance of a leverage from
# 1 below which it takes the rows not to determine a degree.
LOO_RANK_TOLERANCE = 1e-10
# nor to a basis of more functions than this (each expert's M-step costs M^2
# per row). 126 admits degree 4 in 5-D and 5 in 4-D: Friedman 1 (5-D) on
# 1e5 rows reached 7.6e-7 at degree 4 against 7.2e-6 at degree 3 (40 s of
# CPU against 19 s); 3-D keeps degree 7 (120), 6-D degree 3 (84).
MAX_BASIS = 126
# One expert alone (the root, tried at its own degree by ``start``) may have
# a basis this large: its M-step is one system, not one per partition.
ROOT_MAX_BASIS = 500
# A step improves when it lowers the held-out error by this fraction,
MIN_IMPROVEMENT = 0.1
# and at a convergence rate (``_rate``) of at least this share of the
# asymptotic h-rate of its degree: a finer tree then still resolves the
# target. Below it the error has reached a floor (round-off, the noise,
# what the rows determine) that more, costlier steps only nibble at. (At
# 0.25, Franke's function on 1e5 rows, random_state=3, stopped at degree 10
# with 24 partitions, where h-steps went on at 0.19 of the rate: test error
# 3.7e-8 in 23 s against 7.3e-9 in 72 s at 0.15. 32 noisy fits, 1-3 D,
# n = 1e3-1e4, 1% and 10% noise, did not change: the 10% gain binds first.)
MIN_RATE_SHARE = 0.15
# A held-out error below this share of the best makes the other kind of
# step not worth trying.
CLEAR_GAIN = 0.25
# V-cycles after a step span this many of the finest levels: the coarser
# ones converged in earlier steps.
CYCLE_DEPTH = 2


@dataclass
class Step:
    """One refinement step, for the fitted ``refinement_path_``."""

    kind: str  # "start", "h", "p", "warm start" or "bayesian root"
    n_partitions: int
    degree: int
    validation_error: float
    train_error: float
    n_cycles: int
    seconds: float
    kept: bool
    losses: list  # the EM objective after each V-cycle


def blended_error(tree, data, threads):
    """Weighted mean squared error of the blended mean (standardized units,
    averaged over outputs), rows weighted by ``TrainingData.capped_weight``."""
    level = tree.finest
    no_noise = np.zeros(tree.levels[level].coef.shape[::2])

    def block(X, Y, sample_weight):
        mean, _ = tree.moments(X, level, no_noise, False)
        return (sample_weight @ ((Y - mean) ** 2).mean(axis=1),)

    (total,) = threads.sum(block, data.X, data.Y, data.capped_weight)
    return float(total / data.capped_weight.sum())


def partition_errors(tree, data, threads):
    """Per finest partition: its gate-weighted share of the blended mean's
    squared error (K,), and its effective number of distinct rows (K,)."""
    level = tree.finest
    no_noise = np.zeros(tree.levels[level].coef.shape[::2])

    def block(X, Y, sample_weight):
        log_gate = tree.log_gates(X, level)
        mean, _ = tree.moments(X, level, no_noise, False, log_gate)
        gate = np.exp(log_gate)
        return gate.T @ (sample_weight * ((Y - mean) ** 2).mean(axis=1)), gate.T @ sample_weight

    errors, mass = threads.sum(block, data.X, data.Y, data.sample_weight)
    return errors, mass * data.n_distinct / data.sample_weight.sum()


def legendre_decay(coef, powers):
    """Decay rate per node of its expert's Legendre coefficients (K,).

    The energy of degree t, E_t = |coefficients of total degree t|, is
    fitted by log E_t = a - rate * t over the highest degrees (up to four,
    from degree 1 on); an expert of degree 1 gets log(E_0 / E_1). Smooth
    targets give fast decay (large rate).
    """
    total_degree = powers.sum(axis=1)
    degree = int(total_degree.max())
    energy = np.stack(
        [np.sqrt((coef[:, total_degree == t] ** 2).sum(axis=(1, 2))) for t in range(degree + 1)],
        axis=1,
    )
    log_energy = np.log(np.maximum(energy, 1e-300))
    if degree <= 1:
        return log_energy[:, 0] - log_energy[:, -1]
    t = np.arange(max(1, degree - 3), degree + 1)
    slope = np.polyfit(t, log_energy[:, t].T, 1)[0]
    return -slope


def mark(errors, eligible):
    """Doerfler marking among the eligible partitions: the fewest with the
    largest errors whose sum reaches MARKED_ERROR_SHARE of the eligible total."""
    order = np.argsort(-np.where(eligible, errors, -np.inf), kind="stable")
    order = order[eligible[order]]
    marked = np.zeros(errors.shape, dtype=bool)
    if order.size == 0:
        return marked
    cumulative = np.cumsum(errors[order])
    n_marked = int(np.searchsorted(cumulative, MARKED_ERROR_SHARE * cumulative[-1])) + 1
    marked[order[:n_marked]] = True
    return marked


def h_step(tree, data, marked, settings, random_state):
    """Split each marked finest partition in two; the others pass on."""
    gates = np.exp(tree.log_gates(data.X, tree.finest))
    _multilevel.add_level(
        tree, data, gates, np.where(marked, 2, 1), settings, random_state
    )


def p_step(tree, data, settings):
    """Raise the experts' degree by one and refit them on frozen gates.

    Only the levels V-cycles still reach keep experts (CYCLE_DEPTH of
    them): above, only the gates matter from now on.
    """
    tree.basis = Basis(tree.basis.n_features, tree.basis.degree + 1)
    _multilevel.refit_experts_on_frozen_gates(
        tree, data, settings, coarsest=max(tree.finest - CYCLE_DEPTH + 1, 0)
    )


def judged_error(tree, train, valid, threads, error=None, finished=None):
    """The held-out error a refinement step is judged by: as the fit will
    finish the tree. With sharp gates, ``held_out_error`` (``error`` if
    known); with smooth ones, ``finished_error`` (``finished`` if known):
    EM's own blend of overlapping experts is not the fit the polish makes
    of them, and stalls where the polished fit still improves with the
    degree."""
    if tree.gates.ridge < SHARP_RIDGE:
        return held_out_error(tree, train, valid, threads) if error is None else error
    return finished_error(tree, train, valid, threads) if finished is None else finished


def finished_error(tree, train, valid, threads):
    """The held-out error of the tree as the fit will finish it: kinks
    placed (``with_kinks_placed``) and polished: the least of the errors
    of the polish ridges tried (``choose_polish_ridge``) and, though the
    fit always polishes, the unpolished one (an error that is not finite
    counts as infinite). Ranking by the polished errors alone was
    measured: on abs_sum_2d it changed the fit of 1 of 24 held-out draws,
    for the worse (test error 3.0e-4 -> 1.0e-3), and none of the smooth
    problems' fits. Start trees and branches of either gate family are
    compared by it."""
    errors = np.array(choose_polish_ridge(
        with_kinks_placed(tree, train, threads), train, valid, threads, True
    )[2])
    return float(np.where(np.isfinite(errors), errors, np.inf).min())


def held_out_error(tree, train, valid, threads):
    """``blended_error`` on the held-out rows, of the tree as the fit will
    finish it (``with_kinks_placed``)."""
    return blended_error(with_kinks_placed(tree, train, threads), valid, threads)


def with_kinks_placed(tree, train, threads):
    """In 1-D with sharp linear gates, a copy with boundaries at kinks moved
    to where their experts cross (``skpou._kinks``), as ``fit`` does at the
    end; the tree itself otherwise. Without that, held-out rows in the
    sample gaps around kinks would keep the error at a floor that hides an
    exact fit."""
    if _kinks_matter(tree, train):
        tree = tree.copy()
        place_boundaries_at_crossings(tree, train, threads)
    return tree


def _kinks_matter(tree, train):
    return (train.X.shape[1] == 1 and getattr(tree.gates, "order", None) == 1
            and tree.gates.ridge < SHARP_RIDGE and tree.finest > 0)


def train_validated(tree, train, valid, n_cycles, patience, settings):
    """Up to ``n_cycles`` V-cycles over the last CYCLE_DEPTH levels, judged
    on the held-out rows; returns the best state, its held-out error and
    the EM objective after each cycle run.

    Training stops after ``patience`` cycles without improvement. Where the
    judgement is costly (1-D sharp gates: kinks placed first) it is made
    every JUDGE_EVERY cycles and after the last.
    """
    losses = []
    n_cycles = n_cycles if tree.finest > 0 else 0
    every = JUDGE_EVERY if _kinks_matter(tree, train) else 1
    best, best_error = tree.copy(), held_out_error(tree, train, valid, settings.threads)
    no_change = 0
    for cycle in range(1, n_cycles + 1):
        _, log_lik = _multilevel.v_cycle(tree, train, tree.finest, settings,
                                         coarsest=tree.finest - CYCLE_DEPTH + 1)
        losses.append(-log_lik)
        if cycle % every and cycle < n_cycles:
            continue
        error = held_out_error(tree, train, valid, settings.threads)
        if error < best_error * (1 - 1e-3):
            best, best_error, no_change = tree.copy(), error, 0
        else:
            no_change += every
            if no_change >= patience:
                break
    return best, best_error, losses


def _cycles(tree, n_cycles):
    """V-cycles a step may take, and cycles without improvement before it
    stops: sharp gates need more to sharpen."""
    if tree.gates.ridge < SHARP_RIDGE:
        # the held-out error can stall for some cycles while EM sharpens
        # the gates and moves boundaries to kinks: more patience
        cycles = max(n_cycles, SHARP_CYCLES)
        return cycles, SHARP_PATIENCE
    return n_cycles, 1


def _step(kind, tree, error, losses, train, threads, t0):
    return Step(kind, int((~tree.gone()).sum()), tree.basis.degree, error,
                blended_error(tree, train, threads), len(losses),
                time.perf_counter() - t0, False, losses)


# Start trees tried before refinement (the smallest first): greedy h-steps
# cannot see past a step that does not pay by itself (a wave of 12 pieces
# is fitted no better by 2 or 3 partitions than by 1), so a few levels of
# uniform splits are tried too, where the rows determine them.
START_TREES = ((), (2,), (2, 2), (4, 2), (4, 4))
# Sharp gates are tried on the largest start tree the rows determine and,
# where they win there, on the largest of these: a target of pieces needs
# a partition per piece, and where a start has fewer, neither EM nor greedy
# splits reliably place the missing boundaries (a squared triangle wave of 24 pieces is
# reproduced from 32 partitions, not from 16). Smooth targets gain nothing
# from a finer start, which leaves p-refinement fewer rows per unknown.
SHARP_START_TREES = START_TREES + ((8, 4),)
# EM cycles that let sharp gates (gate_alpha below SHARP_RIDGE) sharpen.
SHARP_CYCLES = 20
SHARP_PATIENCE = 10
SHARP_RIDGE = 1e-6
# Held-out judgements that place kinks first (1-D, sharp gates) are made
# every this many cycles.
JUDGE_EVERY = 5


def start(basis, gates, train, valid, n_cycles, settings, random_state, sharp_gates=None,
          loo_root=False):
    """The best start for refinement: the root alone or a uniform tree.

    ``sharp_gates``: a second gate family, for targets whose pieces need
    sharp transitions, tried on the largest start tree (unless that is the
    root alone, which has no gates), and where it wins
    there also on the largest of SHARP_START_TREES the rows determine
    (with SHARP_CYCLES cycles: EM needs them to sharpen gates).
    ``loo_root``: try the root at the degree of least leave-one-out error
    (``loo_root_degree``) rather than at the basis's. Starts are compared
    by ``finished_error``.

    Returns the starts to grow, best first, as (tree, its Step): the best
    one, and where that is the finer sharp start also the best of the
    others (``grow_branches``); and the path of every start tried. The
    trees carry the ``gates`` and ``basis`` they were tried with.
    """
    def determined(shapes):
        return [shape for shape in shapes
                if int(np.prod(shape)) * basis.size * 2 * ROWS_PER_UNKNOWN
                <= train.n_distinct] or [()]

    tries = [(shape, gates, n_cycles, basis) for shape in determined(START_TREES)]
    largest = tries[-1][0]
    if sharp_gates is not None and largest:  # both families with the cycles sharp gates need
        tries[-1] = (largest, gates, SHARP_CYCLES, basis)
        tries.append((largest, sharp_gates, SHARP_CYCLES, basis))
    if loo_root:  # one expert: its degree is chosen on all training rows
        tries[0] = ((), gates, n_cycles, Basis(basis.n_features, loo_root_degree(train)))

    def outcome(shape, family, cycles, start_basis):
        t0 = time.perf_counter()
        tree = PartitionTree(start_basis, family)
        _multilevel.initialize(tree, train, shape, settings, random_state)
        tree, error, losses = train_validated(tree, train, valid, cycles,
                                              _cycles(tree, cycles)[1], settings)
        # Judged polished, sharp gates too: EM's own blend of smooth gates
        # would favour sharp gates wrongly.
        polished = finished_error(tree, train, valid, settings.threads)
        _multilevel.log(settings, f"start {shape}, degree {start_basis.degree}, "
                                  f"gate_alpha {family.ridge:g}: "
                                  f"validation error {error:.3e}, polished {polished:.3e}")
        return polished, tree, _step("start", tree, polished, losses, train,
                                     settings.threads, t0)

    outcomes = [outcome(*args) for args in tries]
    finer = determined(SHARP_START_TREES)[-1]
    best = min(outcomes, key=lambda outcome: outcome[0])
    if sharp_gates is not None and finer != largest and best[1].gates.ridge < SHARP_RIDGE:
        # Sharp gates won at equal size: a target of pieces, which may need
        # more partitions from the start
        outcomes.append(outcome(finer, sharp_gates, SHARP_CYCLES, basis))
    ranked = sorted(outcomes, key=lambda outcome: outcome[0])
    starts = [ranked[0][1:]]
    if starts[0][1].n_partitions > int(np.prod(largest)):
        # The finer sharp start won; refinement may still reach further from
        # the best of the others (a steep layer, which p-steps resolve
        # better from fewer partitions): both are grown (``grow_branches``).
        starts.append(next(outcome[1:] for outcome in ranked[1:]
                           if outcome[2].n_partitions <= int(np.prod(largest))))
    starts[0][1].kept = True
    return starts, [outcome[2] for outcome in outcomes]


def grow_branches(starts, path, train, valid, n_cycles, patience, settings, random_state,
                  fixed_degree=False, rival_error=None):
    """``grow`` from each start (tree, its Step in ``path``); the grown tree
    with the least held-out error as the fit will finish it (polished, kinks
    placed), the path with every step tried (the losing branch's steps no
    longer marked kept), and whether held-out error ended its growth.
    ``rival_error``: the Bayesian root's held-out error, if it is tried."""
    if len(starts) == 1:
        (tree, step), = starts
        return grow(tree, path, train, valid, n_cycles, patience, settings, random_state,
                    fixed_degree, step.validation_error, rival_error)
    branches = []
    for tree, step in starts:
        first = len(path)
        grown, path, converged = grow(tree, path, train, valid, n_cycles, patience,
                                      settings, random_state, fixed_degree,
                                      step.validation_error, rival_error)
        error = finished_error(grown, train, valid, settings.threads)
        branches.append((error, grown, converged, [step] + path[first:]))
        _multilevel.log(settings, f"branch from {step.n_partitions} partitions: "
                                  f"validation error {error:.3e}")
    error, tree, converged, steps = min(branches, key=lambda branch: branch[0])
    for branch in branches:
        for step in branch[3]:
            step.kept = step.kept and branch[3] is steps
    steps[0].kept = True
    return tree, path, converged


def root_degree(n_features, n_distinct, rows_per_unknown):
    """The highest degree of one expert that the rows determine at
    ``rows_per_unknown`` rows per unknown (up to MAX_DEGREE and
    ROOT_MAX_BASIS).

    Small samples of a smooth target are often fitted best by one expert of
    high degree, which refinement from a low-degree start cannot reach: its
    first split leaves too few rows per unknown for p-steps (a hundred
    noisy rows of a smooth 2-D target: one expert of degree 5 beats the
    two of degree 2 or 3 such a path stops at).
    """
    degree = 0
    while (degree < MAX_DEGREE and Basis(n_features, degree + 1).size <= ROOT_MAX_BASIS
           and Basis(n_features, degree + 1).size * rows_per_unknown <= n_distinct):
        degree += 1
    return degree


def loo_root_degree(train):
    """The degree of one expert with the least leave-one-out error on the
    training rows (``leave_one_out_errors``), among those up to
    ``root_degree`` at LOO_ROWS_PER_UNKNOWN rows per unknown."""
    top = root_degree(train.X.shape[1], train.n_distinct, LOO_ROWS_PER_UNKNOWN)
    return int(np.argmin(leave_one_out_errors(train, top)))


def leave_one_out_errors(train, top):
    """Sum of weighted squared leave-one-out residuals of one least-squares
    expert, for each degree 0..top (inf where the rows do not determine it):
    Allen's PRESS.

    A least-squares fit's leave-one-out residuals are r_i / (1 - h_i), with
    r_i its residual and h_i the leverage of row i (both of the weighted
    problem): exact, from one fit. One QR factorization of the weighted
    design serves every degree: the basis is ordered by total degree, so a
    lower degree's basis spans the leading columns, and its projection is
    onto the leading columns of Q. A column the earlier ones span (the
    degree-1 function of a constant feature, the degree-2 one of a binary
    feature: a vanishing diagonal of R) is left out and the rest factored
    again, still in degree order, so such features cap no degree. A degree
    that gives a row all the leverage is left out (inf). The squared
    leave-one-out residuals are weighted by ``TrainingData.capped_weight``,
    as held-out errors are. Repeated inputs with different targets stay
    separate rows: leaving one out keeps its twins, which favours higher
    degrees a little.
    """
    n_features = train.X.shape[1]
    root_weight = np.sqrt(train.sample_weight)[:, None]
    design = root_weight * basis_values(train.X, Basis(n_features, top))
    Q, R = np.linalg.qr(design)
    spanned = np.abs(np.diag(R)) > LOO_RANK_TOLERANCE * np.abs(R[0, 0])
    if not spanned.all():
        Q = np.linalg.qr(design[:, spanned])[0]
    n_kept = np.cumsum(spanned)  # of the first m columns: n_kept[m - 1]
    targets = root_weight * train.Y
    error_weight = (train.capped_weight / train.sample_weight)[:, None]
    errors = []
    for degree in range(top + 1):
        leading = Q[:, :n_kept[Basis(n_features, degree).size - 1]]
        leverage = np.einsum("ij,ij->i", leading, leading)
        if leverage.max() > 1 - LOO_RANK_TOLERANCE:
            errors.append(np.inf)
            continue
        residual = targets - leading @ (leading.T @ targets)
        errors.append(float(np.sum(error_weight * (residual / (1 - leverage)[:, None]) ** 2)))
    return errors


def grow(tree, path, train, valid, n_cycles, patience, settings, random_state,
         fixed_degree=False, finished=None, rival_error=None):
    """Refine ``tree`` while held-out error falls (no p-steps if
    ``fixed_degree``); ``finished``: its ``finished_error``, if known. With
    smooth gates, growth also ends where only h-steps are left and the
    Bayesian root (held-out ``rival_error``, if given) is ``out_of_reach``.

    Returns the best tree, the path of steps (``Step``, ``path``'s first),
    and whether held-out error ended it (False: the rows could not determine
    another step while the last step still improved on the best tree; a
    limit reached after steps that did not improve is the criterion's end).
    """
    threads = settings.threads
    best_error = judged_error(tree, train, valid, threads, finished=finished)
    best, current, current_error = tree.copy(), tree, best_error
    failures, last_kind = 0, None
    while failures < patience:
        kinds = [kind for kind in _step_kinds(current, train, threads)
                 if not (fixed_degree and kind[0] == "p")]
        if not kinds:
            return best, path, failures > 0
        sharp = current.gates.ridge < SHARP_RIDGE
        if (rival_error is not None and not sharp and all(kind != "p" for kind, _ in kinds)
                and out_of_reach(best_error, best, rival_error, train.n_distinct)):
            _multilevel.log(settings, "refinement ends: h-steps cannot bring the held-out "
                                      f"error {best_error:.3e} near the Bayesian root's "
                                      f"{rival_error:.3e} within the rows' limit")
            return best, path, True
        if not sharp and last_kind is not None and kinds[-1][0] == last_kind:
            kinds.reverse()  # the kind that won the last round first
        outcomes = []
        for kind, marked in kinds:
            t0 = time.perf_counter()
            candidate = current.copy()
            if kind == "h":
                h_step(candidate, train, marked, settings, random_state)
            else:
                p_step(candidate, train, settings)
            candidate, error, losses = train_validated(
                candidate, train, valid, *_cycles(candidate, n_cycles), settings
            )
            error = judged_error(candidate, train, valid, threads, error)
            step = _step(kind, candidate, error, losses, train, threads, t0)
            path.append(step)
            _multilevel.log(settings, f"{kind}-step: {step.n_partitions} partitions, "
                                      f"degree {step.degree}, validation error "
                                      f"{error:.3e}, {step.n_cycles} cycles, "
                                      f"{step.seconds:.2f}s")
            outcomes.append((error, candidate, step))
            if sharp and error < best_error * (1 - MIN_IMPROVEMENT):
                break  # sharp gates: h-steps first, and this one improved
            if error < best_error * CLEAR_GAIN:
                break  # a clear gain: the other kind is not tried
        # Smooth gates: both kinds tried, and the one that reduces the
        # held-out error most per added unknown (the larger convergence
        # rate, as hp-FEM decides between h and p) is kept.
        error, current, step = max(
            outcomes, key=lambda outcome: _rate(current_error, current, *outcome[:2])
        )
        current_error, last_kind = error, step.kind
        if _improves(best_error, best, error, current):
            best, best_error, failures = current.copy(), error, 0
            step.kept = True
        else:
            failures += 1
    return best, path, True


def _improves(best_error, best, error, tree):
    """Whether ``tree`` (held-out ``error``) improves on the best tree: by
    MIN_IMPROVEMENT, and, for h-refinement of a smooth target at the best
    tree's degree, at a rate of at least MIN_RATE_SHARE of the asymptotic
    one: with degree p in d dimensions the squared error falls as
    h^(2 (p + 1)) and the unknowns grow as h^-d, rate 2 (p + 1) / d. (A
    change of degree, or sharp gates placing boundaries between pieces,
    converges otherwise.)"""
    if error >= best_error * (1 - MIN_IMPROVEMENT):
        return False
    if tree.gates.ridge < SHARP_RIDGE or tree.basis.degree != best.basis.degree:
        return True
    asymptotic = 2 * (tree.basis.degree + 1) / tree.basis.n_features
    return _rate(best_error, best, error, tree) >= MIN_RATE_SHARE * asymptotic


def _rate(error_before, before, error, after):
    """log(error reduction) / log(unknowns growth) of a step (inf for a step
    that adds no unknowns but lowers the error)."""
    gain = np.log(max(error_before, 1e-300) / max(error, 1e-300))
    growth = np.log(_unknowns(after) / _unknowns(before))
    return gain / growth if growth > 0 else (np.inf if gain > 0 else -np.inf)


def _unknowns(tree):
    return int((~tree.gone()).sum()) * tree.basis.size


def _step_kinds(tree, data, threads):
    """The steps to try, the indicated kind first: [("h", marked), ("p", None)].

    Empty when the rows cannot determine more unknowns.
    """
    errors, rows = partition_errors(tree, data, threads)
    n_basis = tree.basis.size
    splittable = (rows >= 2 * ROWS_PER_UNKNOWN * n_basis) & ~tree.gone()
    raised = Basis(tree.basis.n_features, tree.basis.degree + 1).size
    can_raise = (
        tree.basis.degree < MAX_DEGREE and raised <= MAX_BASIS
        and (~tree.gone()).sum() * raised * ROWS_PER_UNKNOWN <= data.n_distinct
    )
    kinds = []
    marked = mark(errors, splittable)
    if marked.any():
        kinds.append(("h", marked))
    if can_raise:
        kinds.append(("p", None))
    # Sharp gates won on held-out rows: the target has pieces, which h-steps
    # resolve exactly and raised degrees only approximate.
    if len(kinds) == 2 and tree.gates.ridge >= SHARP_RIDGE:
        everywhere = mark(errors, ~tree.gone())
        decay = legendre_decay(tree.levels[-1].coef, tree.basis.powers)
        smooth = errors[everywhere & (decay >= SMOOTH_DECAY)].sum()
        if smooth > 0.5 * errors[everywhere].sum():
            kinds.reverse()
    return kinds


# Polish ridges tried on the held-out rows, smallest first. Many small
# partitions of high degree leave the joint system ill-conditioned; a ridge
# towards the EM coefficients then decides the directions the rows barely
# determine.
POLISH_RIDGES = (1e-10, 1e-8, 1e-6, 1e-4)


def choose_polish_ridge(tree, train, valid, threads, determined):
    """The polish ridge with the least held-out error (as solved: at least
    UNDERDETERMINED_POLISH_RIDGE where the rows do not determine the
    unknowns), the tree with the coefficients it gives, and the held-out
    errors (unpolished first, then one per ridge tried).

    The ridges are tried from the smallest up, until the held-out error
    rises: the system is formed once, but each ridge costs a solve (a
    factorization, on the dense routes) as large as forming it. (Over
    twelve noise-free and noisy problems, n = 100-3000, 95 judgements:
    where a larger ridge past a rise would have had less error, by 0.5% or
    less.) Where the rows do not determine the unknowns, ridges below
    UNDERDETERMINED_POLISH_RIDGE solve as it (``polish_solver``) and are
    not solved again. A held-out error that is not finite counts as
    infinite.

    Never no polish, even where the EM coefficients score better on the
    held-out rows: EM fits each expert to its responsibilities, and a node
    whose responsibilities emptied while its gate stayed wide (a sliver
    along a kink, say) keeps an expert fitted to almost nothing that the
    gate still blends into predictions. Held-out rows rarely fall in such a
    sliver; the polish fits every expert where its gate is, on all rows
    (on abs_sum_2d over 24 held-out draws, the worst test error fell from
    1.2e-2 to 1.4e-3 and the median stayed 2.3e-4)."""
    errors = [blended_error(tree, valid, threads)]
    polished = tree.copy()
    if determined:  # as the fit will
        prune_slivers(polished, train, threads)
    solve = polish_solver(
        train.X, train.Y, train.sample_weight, polished, threads, determined,
        train.capped_weight.sum(),
    )
    best, solved = None, set()  # best: (error, ridge, coefficients)
    for alpha in POLISH_RIDGES:
        effective = alpha if determined else max(alpha, UNDERDETERMINED_POLISH_RIDGE)
        if effective in solved:
            continue
        solved.add(effective)
        coef = solve(alpha)
        polished.levels[-1].coef = coef
        errors.append(blended_error(polished, valid, threads))
        error = errors[-1] if np.isfinite(errors[-1]) else np.inf
        if best is None or error < best[0]:
            best = (error, effective, coef)
        elif error > best[0]:
            break
    polished.levels[-1].coef = best[2]
    return best[1], polished, errors


# A grown tree of one partition (least squares at the leave-one-out degree)
# keeps its place against the Bayesian root only where the root's held-out
# error is more than this many times its own: a few dozen noisy held-out
# rows tell two good fits apart by less, but not a polynomial target that
# least squares reproduces (a cubic: 6e-31 against the root's 1e-20) or a
# root that failed (in review, before the basis was capped by the rows: 8
# rows of a 1-D target, a degree-24 root at 80 times the held-out error).
ONE_EXPERT_MARGIN = 2.0


def bayesian_root(gates, train, valid, settings):
    """The Bayesian root (``skpou._evidence``) fitted to the training rows,
    its held-out error and the seconds it took: the rival a grown tree must
    beat (``bayesian_root_if_better``), fitted before refinement so that
    growth can stop where the tree cannot beat it (``out_of_reach``)."""
    t0 = time.perf_counter()
    root = _evidence.root_tree(train, gates, settings.threads)
    return root, blended_error(root, valid, settings.threads), time.perf_counter() - t0


def bayesian_root_if_better(tree, path, rival, train, settings):
    """The Bayesian root ``rival`` (``bayesian_root``: root, held-out error,
    seconds) where it beats the grown ``tree`` on the held-out rows, else
    ``tree``; its Step joins ``path`` (kept if it won; then no other step is).

    The grown tree's held-out error (its path's last kept step's) is the
    least of many steps judged on the same rows, so it is optimistic, and
    on a few dozen noisy rows it is noisy; the root's was not chosen on
    them. So the root wins unless the tree is better by the margin a
    refinement step needs (MIN_IMPROVEMENT); a tree of one partition, least
    squares at the leave-one-out degree, is the root's own model class with
    a cruder choice of degree, and needs ONE_EXPERT_MARGIN (on
    tanh_cos_exp_3d, 300 rows, 1% noise, its held-out error was 19% below
    the root's and its test error 2.2 times the root's).
    """
    root, error, seconds = rival
    threads = settings.threads
    grown_error = [step.validation_error for step in path if step.kept][-1]
    if int((~tree.gone()).sum()) == 1:
        wins = error <= ONE_EXPERT_MARGIN * grown_error
    else:
        wins = grown_error >= error * (1 - MIN_IMPROVEMENT)
    step = Step(
        kind="bayesian root", n_partitions=1,
        degree=int(root.basis.powers.sum(axis=1).max()), validation_error=error,
        train_error=blended_error(root, train, threads), n_cycles=0,
        seconds=seconds, kept=bool(wins), losses=[],
    )
    _multilevel.log(settings, f"bayesian root: {root.basis.size} functions, "
                              f"degree {step.degree}, validation error {error:.3e} "
                              f"(grown tree {grown_error:.3e}), {step.seconds:.2f}s")
    path.append(step)
    if not wins:
        return tree
    for other in path[:-1]:
        other.kept = False
    return root


# A tree out of reach of the Bayesian root (``out_of_reach``) is judged at
# this multiple of h's asymptotic rate: adaptive h-steps beat the uniform
# rate where the error is local, and the margin keeps such trees growing.
OUT_OF_REACH_RATE = 2.0


def out_of_reach(error, tree, rival_error, n_distinct):
    """Whether h-steps alone (no higher degree is left to try) cannot bring
    ``tree``'s held-out ``error`` below the margin a refinement step needs
    under ``rival_error`` (the Bayesian root's) before the rows' limit
    (ROWS_PER_UNKNOWN): even at OUT_OF_REACH_RATE times the asymptotic
    rate 2 (p + 1) / d of degree p in d dimensions. Friedman 1 (5-D) on
    1e4 rows reached degree 4, the most its basis allows, at 2e-11 with
    2016 of at most 2250 unknowns, against the root's 2.9e-13: its three
    further h-steps took a third of the fit."""
    largest = n_distinct / ROWS_PER_UNKNOWN
    growth = max(largest / _unknowns(tree), 1.0)
    rate = OUT_OF_REACH_RATE * 2 * (tree.basis.degree + 1) / tree.basis.n_features
    return error * growth ** (-rate) >= rival_error * (1 - MIN_IMPROVEMENT)
