"""Kernels of the gates: log-softmax over sibling groups, softmax Newton terms.

Owner: ``skpou._gates``. Columns of a level come in groups of siblings, one
group per parent: parent p's children are columns child_start[p]:child_start[p + 1].
"""

import numpy as np

from ._common import COLUMNS, add_cross, exp
from ._jit import kernel


@kernel
def shift_by_sibling_max(logits, parent_log_gate, child_start, cutoff, out):
    """out = logits minus the largest logit among siblings (first half of a
    log-softmax; the caller takes exp in bulk, then ``add_log_normalizer``).

    The largest logit goes first: sharp gates have logits of 1e7 and more,
    and one combined shift would round every log gate to ~1e-16 of that
    (gates would not sum to one). Children of a parent whose gate is below
    exp(cutoff) of the row's largest parent gate, and of a parent whose
    children are all -inf (pruned), get -inf. ``out`` may be ``logits``.
    """
    n_samples, n_parents = parent_log_gate.shape
    for d in range(n_samples):
        parent_max = -np.inf
        for p in range(n_parents):
            parent_max = max(parent_max, parent_log_gate[d, p])
        for p in range(n_parents):
            first, stop = child_start[p], child_start[p + 1]  # locals: stores do not reload them
            largest = -np.inf
            if parent_log_gate[d, p] >= parent_max + cutoff:
                for j in range(first, stop):
                    largest = max(largest, logits[d, j])
            if largest == -np.inf:
                for j in range(first, stop):
                    out[d, j] = -np.inf
            else:
                for j in range(first, stop):
                    out[d, j] = logits[d, j] - largest


@kernel
def sibling_sums(values, child_start, out):
    """out[d, p] = sum of values[d, j] over the children j of parent p."""
    n_samples, n_parents = out.shape
    for d in range(n_samples):
        for p in range(n_parents):
            total = 0.0
            for j in range(child_start[p], child_start[p + 1]):
                total += values[d, j]
            out[d, p] = total


@kernel
def add_log_normalizer(shifted, log_total, parent_log_gate, child_start):
    """shifted += log pi_parent - log_total over each group of siblings.

    Groups whose log_total is -inf (every child was set to -inf) are left.
    """
    n_samples, n_parents = parent_log_gate.shape
    for d in range(n_samples):
        for p in range(n_parents):
            if log_total[d, p] == -np.inf:
                continue
            shift = parent_log_gate[d, p] - log_total[d, p]
            first, stop = child_start[p], child_start[p + 1]
            for j in range(first, stop):
                shifted[d, j] += shift


@kernel
def softmax_gate_objective(
    sample_weight, resp, log_prob, child_start, min_weight, objective,
):
    """Add s_d sum_j r_dj log pi_{j|p}(x_d) to objective[p], for each parent p.

    ``log_prob`` holds log pi_{j|p}, the log softmax over the siblings.
    (sample, parent) pairs whose parent weight u_d = sum_j r_dj is at most
    min_weight do not enter the gate fit.
    """
    n_parents = child_start.shape[0] - 1
    for d in range(resp.shape[0]):
        s = sample_weight[d]
        for p in range(n_parents):
            u = 0.0
            fit = 0.0
            for j in range(child_start[p], child_start[p + 1]):
                u += resp[d, j]
                fit += resp[d, j] * log_prob[d, j]
            if u > min_weight:
                objective[p] += s * fit


@kernel
def softmax_newton_terms(
    G, sample_weight, resp, log_prob, child_start, min_weight, min_prob, fit,
    grad, curvature,
):
    """Objective, gradient and curvature of the soft-label softmax fit per parent.

    log_prob[d, j] = log p_dj, the log softmax over the siblings of the
    logits g_d . theta_j. For parent p with children j, the objective is
    J_p = sum_d s_d sum_j r_dj log p_dj, whose gradient in theta_j is
    sum_d s_d (r_dj - u_d p_dj) g_d with u_d = sum_j r_dj, and whose
    negative Hessian (the curvature, positive semi-definite) has blocks
    sum_d s_d u_d (delta_jj' p_dj - p_dj p_dj') g_d g_d^T.

    Samples with parent weight u_d <= min_weight are skipped. A block of
    rows adds curvature only for the children whose probability exceeds
    min_prob on some row of it, and blocks are formed from rows grouped by
    their likeliest child: a wide sibling group with sharp gates then costs
    per row about the square of the children near the row, not of all
    siblings. The terms left out are below min_prob; the gradient and the
    objective stay exact, and the line search guards the step. Like the
    expert kernels, each parent's rows are gathered into column blocks so
    the sums over rows vectorize. J_p is added to ``fit`` (n_parents,), as
    ``softmax_gate_objective`` would. ``grad`` has shape (n_parents,
    max_children, F), ``curvature`` (n_parents, max_children*F,
    max_children*F), child j of parent p in slot j - child_start[p]; only
    the upper block triangle is written (diagonal blocks whole).
    """
    n_samples = resp.shape[0]
    n_features = G.shape[1]
    n_parents = child_start.shape[0] - 1
    max_children = grad.shape[1]
    rows = np.empty(n_samples, dtype=np.int64)
    features = np.empty((n_features, COLUMNS))
    weighted = np.empty((n_features, COLUMNS))
    parent_weight = np.empty(COLUMNS)
    near = np.empty(max_children, dtype=np.int64)
    likeliest = np.empty(n_samples, dtype=np.int64)
    grouped = np.empty(n_samples, dtype=np.int64)
    group_start = np.empty(max_children + 1, dtype=np.int64)
    for p in range(n_parents):
        base = child_start[p]
        n_children = child_start[p + 1] - base
        # sized to the parent's children: whole arrays keep the products' loops simple
        prob_p = np.empty((n_children, COLUMNS))
        residual = np.empty((n_children, COLUMNS))
        n_rows = 0
        group_start[:] = 0
        for d in range(n_samples):
            u = 0.0
            for j in range(n_children):
                u += resp[d, base + j]
            if u > min_weight:
                rows[n_rows] = d
                best = 0
                for j in range(1, n_children):
                    if log_prob[d, base + j] > log_prob[d, base + best]:
                        best = j
                likeliest[n_rows] = best
                group_start[best + 1] += 1
                n_rows += 1
        # Rows grouped by their likeliest child (a stable counting sort), so
        # that a block's rows lie near one child and few children are near.
        for j in range(n_children):
            group_start[j + 1] += group_start[j]
        for i in range(n_rows):
            grouped[group_start[likeliest[i]]] = rows[i]
            group_start[likeliest[i]] += 1
        for lo in range(0, n_rows, COLUMNS):
            block = grouped[lo:min(lo + COLUMNS, n_rows)]
            n = block.shape[0]
            for a in range(n):
                d = block[a]
                s = sample_weight[d]
                u = 0.0
                row_fit = 0.0
                for j in range(n_children):
                    u += resp[d, base + j]
                    row_fit += resp[d, base + j] * log_prob[d, base + j]
                fit[p] += s * row_fit
                parent_weight[a] = s * u
                for f in range(n_features):
                    features[f, a] = G[d, f]
                for j in range(n_children):
                    prob_p[j, a] = exp(log_prob[d, base + j])
                    residual[j, a] = s * (resp[d, base + j] - u * prob_p[j, a])
            add_cross(residual, features, n, grad[p])
            n_near = 0
            for j in range(n_children):
                largest = 0.0
                for a in range(n):
                    largest = max(largest, prob_p[j, a])
                if largest > min_prob:
                    near[n_near] = j
                    n_near += 1
            for first in range(n_near):
                for second in range(first, n_near):
                    j, jj = near[first], near[second]
                    delta = 1.0 if jj == j else 0.0
                    for f in range(n_features):
                        for a in range(n):
                            weighted[f, a] = (
                                parent_weight[a] * prob_p[j, a]
                                * (delta - prob_p[jj, a]) * features[f, a]
                            )
                    add_cross(
                        weighted, features, n,
                        curvature[p, j * n_features:(j + 1) * n_features,
                                  jj * n_features:(jj + 1) * n_features],
                    )
