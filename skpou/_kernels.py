"""Numba kernels of the multilevel EM. Arrays in, arrays out: no scikit-learn.

Shapes used throughout (one level of the partition tree, K nodes):

- ``X``        (n_samples, n_features): inputs already mapped to [-1, 1]^n.
- ``Y``        (n_samples, n_targets): standardized targets.
- ``recipe``   (n_basis, 3): how to build the total-degree basis (see
  ``_experts.basis_recipe``).
- ``centers``, ``scales`` (K, n_features): each expert's local frame; expert k
  evaluates Legendre polynomials at z = (x - centers[k]) / scales[k], so every
  local least-squares problem stays well conditioned however small its
  partition is.
- ``coef``     (K, n_basis, n_targets): expert coefficients.
- ``log_gate`` (n_samples, K): log gate probabilities (rows sum to one).
- ``resp``     (n_samples, K): EM responsibilities.

All kernels are compiled with ``nogil=True`` so threads can run them on
blocks of rows at the same time; none of them uses Numba's own parallelism.

The expert kernels work node by node: they first list, for a chunk of rows,
the rows each node is active on (responsibility or gate above a threshold),
then evaluate that node's basis on those rows at once, as the columns of a
(n_basis, rows) matrix. The loops then run along contiguous rows, so LLVM
vectorizes both the basis evaluation and the Gram products (whose sums may
be reassociated: ``fastmath`` with "reassoc" and "contract" only). Results
depend on how the caller blocks the rows only through the order of sums,
and the caller's blocks are fixed (``_experts.ROWS_PER_BLOCK``).
"""

import math

import numpy as np
from numba import njit

LOG_2PI = math.log(2.0 * math.pi)


_COLUMNS = 256  # rows whose basis is evaluated at once: a (n_basis, 256) block
_CHUNK_ENTRIES = 1 << 20  # bound on a chunk's (node, row) lists, per thread
_REASSOC = {"reassoc", "contract"}  # lets LLVM vectorize the row sums
# exp(x) rounds to zero below log(2^-1075) = -745.13. libm's underflow path
# costs 2-4x a normal exp, and peaked responsibilities or sharp gates send
# most (row, node) pairs there: they are returned as the zero exp would give.
_EXP_UNDERFLOW = -745.2


@njit(cache=True, nogil=True, inline="always")
def _exp(x):
    """math.exp(x), without libm's slow path for results that round to 0."""
    return math.exp(x) if x > _EXP_UNDERFLOW else 0.0


@njit(cache=True, nogil=True)
def _chunk_rows(n_nodes):
    """Rows per chunk so that per-node row lists stay within _CHUNK_ENTRIES."""
    return max(_COLUMNS, min(4096, _CHUNK_ENTRIES // max(n_nodes, 1)))


@njit(cache=True, nogil=True)
def _rows_with_weight(resp, sample_weight, start, stop, min_resp, count, rows):
    """List, per node, the rows of start:stop with resp > min_resp and weight.

    Fills rows[k, :count[k]] in increasing row order.
    """
    count[:] = 0
    for d in range(start, stop):
        if sample_weight[d] == 0.0:
            continue
        for k in range(resp.shape[1]):
            if resp[d, k] > min_resp:
                rows[k, count[k]] = d
                count[k] += 1


@njit(cache=True, nogil=True)
def _rows_carrying_gate(log_gate, start, stop, min_log_gate, count, rows):
    """List, per node, the rows of start:stop where the node carries gate.

    A node carries gate on a row when its gate is within exp(min_log_gate) of
    the row's largest: the others are skipped, which is what makes the cost
    follow the partitions a sample belongs to, not their number.
    """
    count[:] = 0
    for d in range(start, stop):
        gate_max = -np.inf
        for k in range(log_gate.shape[1]):
            gate_max = max(gate_max, log_gate[d, k])
        for k in range(log_gate.shape[1]):
            if log_gate[d, k] >= gate_max + min_log_gate:
                rows[k, count[k]] = d
                count[k] += 1


@njit(cache=True, nogil=True)
def basis_columns(X, rows, center, scale, recipe, degree, weight, local, Z):
    """Z[m, a] = weight[a] * phi_m((X[rows[a]] - center) / scale), a < len(rows).

    phi_m are products of orthonormal Legendre polynomials of total degree
    <= degree. Basis m is built from an earlier one: phi_m = phi_{recipe[m, 0]}
    * P_{recipe[m, 2]}(z_{recipe[m, 1]}) (see ``_experts.basis_recipe``), one
    multiplication per row. Starting from phi_0 = weight carries the weight
    into every column for free. ``local`` is scratch space of shape
    (n_features, degree + 1, >= len(rows)).
    """
    n = rows.shape[0]
    for i in range(X.shape[1]):
        shift = center[i]
        inverse = 1.0 / scale[i]
        for a in range(n):
            local[i, 0, a] = (X[rows[a], i] - shift) * inverse
        # Orthonormal three-term recurrence; local[i, 0] holds z until the
        # end, since P_0 = 1 is never needed as a factor (the prefix is).
        if degree >= 1:
            for a in range(n):
                local[i, 1, a] = math.sqrt(3.0) * local[i, 0, a]
        if degree >= 2:
            for a in range(n):
                local[i, 2, a] = math.sqrt(5.0) * (
                    1.5 * local[i, 0, a] * local[i, 0, a] - 0.5
                )
        for j in range(2, degree):
            up = math.sqrt((2.0 * j + 3.0) * (2.0 * j + 1.0)) / (j + 1.0)
            down = j * math.sqrt((2.0 * j + 3.0) / (2.0 * j - 1.0)) / (j + 1.0)
            for a in range(n):
                local[i, j + 1, a] = (
                    up * local[i, 0, a] * local[i, j, a] - down * local[i, j - 1, a]
                )
    for a in range(n):
        Z[0, a] = weight[a]
    for m in range(1, recipe.shape[0]):
        prefix, feature, power = recipe[m, 0], recipe[m, 1], recipe[m, 2]
        for a in range(n):
            Z[m, a] = Z[prefix, a] * local[feature, power, a]


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _add_gram_upper(Z, n, gram):
    """gram[i, j] += sum_a Z[i, a] Z[j, a] for j >= i, a < n."""
    for i in range(Z.shape[0]):
        for j in range(i, Z.shape[0]):
            acc = 0.0
            for a in range(n):
                acc += Z[i, a] * Z[j, a]
            gram[i, j] += acc


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _add_cross(Z, V, n, out):
    """out[i, j] += sum_a Z[i, a] V[j, a], a < n."""
    for i in range(Z.shape[0]):
        for j in range(V.shape[0]):
            acc = 0.0
            for a in range(n):
                acc += Z[i, a] * V[j, a]
            out[i, j] += acc


@njit(cache=True, nogil=True, fastmath=_REASSOC)
def _expert_means(Z, n, coef_k, mu):
    """mu[t, a] = sum_m coef_k[m, t] Z[m, a], a < n."""
    for t in range(coef_k.shape[1]):
        for a in range(n):
            mu[t, a] = 0.0
        for m in range(Z.shape[0]):
            c = coef_k[m, t]
            for a in range(n):
                mu[t, a] += c * Z[m, a]


@njit(cache=True, nogil=True)
def e_step(
    X, Y, log_gate, centers, scales, coef, recipe, degree, log_var,
    min_log_gate, resp, log_lik,
):
    """Responsibilities and per-sample log-likelihood of the mixture.

    Nodes that do not carry gate on a row (see ``_rows_carrying_gate``) get
    responsibility zero there without their expert being evaluated.
    """
    n_samples, n_nodes = log_gate.shape
    n_targets = Y.shape[1]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    Z = np.empty((recipe.shape[0], _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    ones = np.ones(_COLUMNS)
    mu = np.empty((n_targets, _COLUMNS))
    inv_var = np.exp(-log_var)
    log_norm = np.empty(n_nodes)
    for k in range(n_nodes):
        log_norm[k] = -0.5 * (log_var[k].sum() + n_targets * LOG_2PI)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_carrying_gate(log_gate, start, stop, min_log_gate, count, rows)
        resp[start:stop] = -np.inf  # log joint density until normalized below
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                n = block.shape[0]
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, ones, local, Z
                )
                _expert_means(Z, n, coef[k], mu)
                for a in range(n):
                    d = block[a]
                    value = log_gate[d, k] + log_norm[k]
                    for t in range(n_targets):
                        residual = Y[d, t] - mu[t, a]
                        value -= 0.5 * residual * residual * inv_var[k, t]
                    resp[d, k] = value
        for d in range(start, stop):
            joint_max = -np.inf
            for k in range(n_nodes):
                joint_max = max(joint_max, resp[d, k])
            total = 0.0
            for k in range(n_nodes):
                resp[d, k] = _exp(resp[d, k] - joint_max)
                total += resp[d, k]
            log_lik[d] = joint_max + math.log(total)
            for k in range(n_nodes):
                resp[d, k] /= total


@njit(cache=True, nogil=True)
def mixture_moments(
    X, log_gate, centers, scales, coef, recipe, degree, var, min_log_gate,
    include_spread, mean, variance,
):
    """Mixture mean sum_k pi_k mu_k and variance sum_k pi_k (s_k^2 + (mu_k - mean)^2).

    The variance is summed in its centred form: sum pi (s^2 + mu^2) - mean^2
    would cancel catastrophically where the experts fit tightly. Without
    ``include_spread`` only sum_k pi_k s_k^2 is summed.
    """
    n_samples, n_nodes = log_gate.shape
    n_targets = coef.shape[2]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    means = np.empty((n_nodes, n_targets, chunk))  # each expert on its rows
    Z = np.empty((recipe.shape[0], _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    ones = np.ones(_COLUMNS)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_carrying_gate(log_gate, start, stop, min_log_gate, count, rows)
        mean[start:stop] = 0.0
        variance[start:stop] = 0.0
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                n = block.shape[0]
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, ones, local, Z
                )
                mu = means[k, :, lo:lo + n]
                _expert_means(Z, n, coef[k], mu)
                for a in range(n):
                    gate = _exp(log_gate[block[a], k])
                    for t in range(n_targets):
                        mean[block[a], t] += gate * mu[t, a]
        for k in range(n_nodes):
            for a in range(count[k]):
                d = rows[k, a]
                gate = _exp(log_gate[d, k])
                for t in range(n_targets):
                    spread = means[k, t, a] - mean[d, t] if include_spread else 0.0
                    variance[d, t] += gate * (var[k, t] + spread * spread)


@njit(cache=True, nogil=True)
def normal_equations(
    X, Y, sample_weight, resp, centers, scales, recipe, degree, min_resp,
    gram, rhs,
):
    """Add sum_d w_kd phi_k(x_d) phi_k(x_d)^T and sum_d w_kd phi_k(x_d) y_d.

    w_kd = sample_weight[d] * resp[d, k]. Rows with resp[d, k] <= min_resp are
    skipped. Each node's active rows become the columns of sqrt(w) Phi_k,
    whose Gram products run along contiguous rows. Only the upper triangle
    of ``gram`` is written; the caller mirrors it.
    """
    n_samples, n_nodes = resp.shape
    n_targets = Y.shape[1]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    root_w = np.empty(_COLUMNS)
    Z = np.empty((recipe.shape[0], _COLUMNS))
    V = np.empty((n_targets, _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_with_weight(resp, sample_weight, start, stop, min_resp, count, rows)
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                n = block.shape[0]
                for a in range(n):
                    root_w[a] = math.sqrt(resp[block[a], k] * sample_weight[block[a]])
                    for t in range(n_targets):
                        V[t, a] = root_w[a] * Y[block[a], t]
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, root_w, local, Z
                )
                _add_gram_upper(Z, n, gram[k])
                _add_cross(Z, V, n, rhs[k])


@njit(cache=True, nogil=True)
def weighted_squared_residuals(
    X, Y, sample_weight, resp, centers, scales, coef, recipe, degree, min_resp,
    out,
):
    """Add sum_d w_kd (y_d - mu_k(x_d))^2 to ``out`` (K, n_targets).

    Computed from residuals, not from the normal equations, so that it stays
    accurate when experts fit to 1e-8: expanding the square would cancel.
    """
    n_samples, n_nodes = resp.shape
    n_targets = Y.shape[1]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    Z = np.empty((recipe.shape[0], _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    ones = np.ones(_COLUMNS)
    mu = np.empty((n_targets, _COLUMNS))
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_with_weight(resp, sample_weight, start, stop, min_resp, count, rows)
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                n = block.shape[0]
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, ones, local, Z
                )
                _expert_means(Z, n, coef[k], mu)
                for a in range(n):
                    d = block[a]
                    w = resp[d, k] * sample_weight[d]
                    for t in range(n_targets):
                        residual = Y[d, t] - mu[t, a]
                        out[k, t] += w * residual * residual


@njit(cache=True, nogil=True)
def blended_normal_equations(
    X, Y, sample_weight, log_gate, centers, scales, recipe, degree,
    min_log_gate, pair_id, blocks, rhs,
):
    """Normal equations of the deterministic POU network with frozen gates.

    The mean sum_k pi_k(x) phi_k(x) . c_k is linear in all coefficients at
    once; its least-squares matrix couples nodes k, k' whose gates overlap:
    block (k, k') = sum_d s_d pi_k pi_k' phi_k phi_k'^T, stored in
    blocks[pair_id[k, k']] for k <= k' (diagonal blocks: upper triangle
    only, the caller mirrors them). rhs[k] = sum_d s_d pi_k phi_k y_d.

    Per chunk of rows, each node's weighted basis sqrt(s) pi_k phi_k is
    evaluated once and kept row by row; each overlapping pair then gathers
    the rows both nodes carry gate on (both row lists are increasing, so a
    merge finds them) into blocks of rows and multiplies those with BLAS.
    Measured with one thread, against Numba loops for that product: Franke
    2-D at n = 1e5, (16, 8) degree 7, polish 69 s -> 37 s; 3-D at n = 1e5,
    (8, 8) degree 6, 194 s -> 103 s; no change with 4 or 10 basis functions.
    """
    n_samples, n_nodes = log_gate.shape
    n_basis = recipe.shape[0]
    n_targets = Y.shape[1]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    offset = np.empty(n_nodes + 1, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    kept = np.empty((4 * chunk, n_basis))  # (row, node) pairs of the chunk
    weight = np.empty(_COLUMNS)
    V = np.empty((n_targets, _COLUMNS))
    Z = np.empty((n_basis, _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    first = np.empty((_COLUMNS, n_basis))
    second = np.empty((_COLUMNS, n_basis))
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_carrying_gate(log_gate, start, stop, min_log_gate, count, rows)
        offset[0] = 0
        for k in range(n_nodes):
            offset[k + 1] = offset[k] + count[k]
        if offset[n_nodes] > kept.shape[0]:
            kept = np.empty((offset[n_nodes], n_basis))
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                n = block.shape[0]
                for a in range(n):
                    root_s = math.sqrt(sample_weight[block[a]])
                    weight[a] = root_s * _exp(log_gate[block[a], k])
                    for t in range(n_targets):
                        V[t, a] = root_s * Y[block[a], t]
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, weight, local, Z
                )
                _add_cross(Z, V, n, rhs[k])
                _add_gram_upper(Z, n, blocks[pair_id[k, k]])
                for a in range(n):
                    kept[offset[k] + lo + a] = Z[:, a]
        for k in range(n_nodes):
            for other in range(k + 1, n_nodes):
                pair = pair_id[k, other]
                if pair < 0:
                    continue
                n = 0
                a = offset[k]
                b = offset[other]
                while a < offset[k + 1] and b < offset[other + 1]:
                    row_a = rows[k, a - offset[k]]
                    row_b = rows[other, b - offset[other]]
                    if row_a < row_b:
                        a += 1
                    elif row_a > row_b:
                        b += 1
                    else:
                        first[n] = kept[a]
                        second[n] = kept[b]
                        n += 1
                        a += 1
                        b += 1
                        if n == _COLUMNS:
                            blocks[pair] += first.T @ second  # BLAS
                            n = 0
                if n > 0:
                    blocks[pair] += first[:n].T @ second[:n]


@njit(cache=True, nogil=True)
def blended_design(X, log_gate, centers, scales, recipe, degree, min_log_gate, out):
    """Rows of the blended design matrix: out[d, k * M + m] = pi_k(x_d) phi_km(x_d).

    Zero where node k does not carry gate on row d. For when most nodes
    overlap on most rows: the polish system is then nearly dense and is
    formed with BLAS products of these rows (``_experts``).
    """
    n_samples, n_nodes = log_gate.shape
    n_basis = recipe.shape[0]
    chunk = _chunk_rows(n_nodes)
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    gate = np.empty(_COLUMNS)
    Z = np.empty((n_basis, _COLUMNS))
    local = np.empty((X.shape[1], degree + 1, _COLUMNS))
    out[:] = 0.0
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        _rows_carrying_gate(log_gate, start, stop, min_log_gate, count, rows)
        for k in range(n_nodes):
            for lo in range(0, count[k], _COLUMNS):
                block = rows[k, lo:min(lo + _COLUMNS, count[k])]
                for a in range(block.shape[0]):
                    gate[a] = _exp(log_gate[block[a], k])
                basis_columns(
                    X, block, centers[k], scales[k], recipe, degree, gate, local, Z
                )
                for a in range(block.shape[0]):
                    for m in range(n_basis):
                        out[block[a], k * n_basis + m] = Z[m, a]


@njit(cache=True, nogil=True)
def add_to_submatrix(matrix, index, block):
    """matrix[index[i], index[j]] += block[i, j] (numpy's fancy-index add
    gathers and scatters the whole submatrix: ~10x slower)."""
    for i in range(index.shape[0]):
        for j in range(index.shape[0]):
            matrix[index[i], index[j]] += block[i, j]


@njit(cache=True, nogil=True)
def softmax_newton_terms(
    G, sample_weight, resp, log_prob, n_children, min_weight, min_prob, fit,
    grad, curvature,
):
    """Objective, gradient and curvature of the soft-label softmax fit per parent.

    Columns of ``resp`` and ``log_prob`` come in groups of ``n_children``
    siblings (one group per parent); log_prob[d, j] = log p_dj, the log
    softmax over the siblings of the logits g_d . theta_j. For parent p with
    children j, the objective is J_p = sum_d s_d sum_j r_dj log p_dj, whose
    gradient in theta_j is sum_d s_d (r_dj - u_d p_dj) g_d with
    u_d = sum_j r_dj, and whose negative Hessian (the curvature, positive
    semi-definite) has blocks sum_d s_d u_d (delta_jj' p_dj - p_dj p_dj')
    g_d g_d^T.

    Samples with parent weight u_d <= min_weight are skipped. A block of
    rows adds curvature only for the children whose probability exceeds
    min_prob on some row of it, and blocks are formed from rows grouped by
    their likeliest child: a wide sibling group with sharp gates then costs
    per row about the square of the children near the row, not of all
    siblings (Franke 2-D, (256,) degree 3, n = 1e4, 3 cycles: 11.3 s ->
    3.8 s in this kernel per fit). The terms left out are below min_prob; the
    gradient and the objective stay exact, and the line search guards the
    step. Like the
    expert kernels, each parent's rows are gathered into column blocks so
    the sums over rows vectorize. J_p is added to ``fit`` (n_parents,), as
    ``softmax_gate_objective`` would. ``grad`` has shape (n_parents,
    n_children, F), ``curvature`` (n_parents, n_children*F, n_children*F);
    only its upper block triangle is written (diagonal blocks whole).
    """
    n_samples, n_nodes = resp.shape
    n_features = G.shape[1]
    n_parents = n_nodes // n_children
    rows = np.empty(n_samples, dtype=np.int64)
    features = np.empty((n_features, _COLUMNS))
    weighted = np.empty((n_features, _COLUMNS))
    prob_p = np.empty((n_children, _COLUMNS))
    residual = np.empty((n_children, _COLUMNS))
    parent_weight = np.empty(_COLUMNS)
    near = np.empty(n_children, dtype=np.int64)
    likeliest = np.empty(n_samples, dtype=np.int64)
    grouped = np.empty(n_samples, dtype=np.int64)
    group_start = np.empty(n_children + 1, dtype=np.int64)
    for p in range(n_parents):
        base = p * n_children
        n_rows = 0
        group_start[:] = 0
        for d in range(n_samples):
            u = 0.0
            for j in range(n_children):
                u += resp[d, base + j]
            if u > min_weight and sample_weight[d] != 0.0:
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
        for lo in range(0, n_rows, _COLUMNS):
            block = grouped[lo:min(lo + _COLUMNS, n_rows)]
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
                    prob_p[j, a] = _exp(log_prob[d, base + j])
                    residual[j, a] = s * (resp[d, base + j] - u * prob_p[j, a])
            _add_cross(residual, features, n, grad[p])
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
                    _add_cross(
                        weighted, features, n,
                        curvature[p, j * n_features:(j + 1) * n_features,
                                  jj * n_features:(jj + 1) * n_features],
                    )


@njit(cache=True, nogil=True)
def shift_by_sibling_max(logits, parent_log_gate, n_children, cutoff, out):
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
            base = p * n_children
            largest = -np.inf
            if parent_log_gate[d, p] >= parent_max + cutoff:
                for j in range(base, base + n_children):
                    largest = max(largest, logits[d, j])
            if largest == -np.inf:
                for j in range(base, base + n_children):
                    out[d, j] = -np.inf
            else:
                for j in range(base, base + n_children):
                    out[d, j] = logits[d, j] - largest


@njit(cache=True, nogil=True)
def sibling_sums(values, n_children, out):
    """out[d, p] = sum of values[d, j] over the children j of parent p."""
    n_samples, n_parents = out.shape
    for d in range(n_samples):
        for p in range(n_parents):
            total = 0.0
            for j in range(p * n_children, (p + 1) * n_children):
                total += values[d, j]
            out[d, p] = total


@njit(cache=True, nogil=True)
def add_log_normalizer(shifted, log_total, parent_log_gate, n_children):
    """shifted += log pi_parent - log_total over each group of siblings.

    Groups whose log_total is -inf (every child was set to -inf) are left.
    """
    n_samples, n_parents = parent_log_gate.shape
    for d in range(n_samples):
        for p in range(n_parents):
            if log_total[d, p] == -np.inf:
                continue
            shift = parent_log_gate[d, p] - log_total[d, p]
            for j in range(p * n_children, (p + 1) * n_children):
                shifted[d, j] += shift


@njit(cache=True, nogil=True)
def softmax_gate_objective(
    sample_weight, resp, log_prob, n_children, min_weight, objective,
):
    """Add s_d sum_j r_dj log pi_{j|p}(x_d) to objective[p], for each parent p.

    ``log_prob`` holds log pi_{j|p}, the log softmax over the siblings.
    (sample, parent) pairs whose parent weight u_d = sum_j r_dj is at most
    min_weight do not enter the gate fit.
    """
    n_samples, n_nodes = resp.shape
    for d in range(n_samples):
        s = sample_weight[d]
        if s == 0.0:
            continue
        for base in range(0, n_nodes, n_children):
            u = 0.0
            fit = 0.0
            for j in range(base, base + n_children):
                u += resp[d, j]
                fit += resp[d, j] * log_prob[d, j]
            if u > min_weight:
                objective[base // n_children] += s * fit


@njit(cache=True, nogil=True)
def _active_nodes(log_gate_row, min_log_gate, active):
    """Write into ``active`` the nodes that carry gate on a row; return how many.

    A node carries gate when it is not skipped in predictions: within
    exp(min_log_gate) of the row's largest gate.
    """
    gate_max = -np.inf
    for k in range(log_gate_row.shape[0]):
        gate_max = max(gate_max, log_gate_row[k])
    n_active = 0
    for k in range(log_gate_row.shape[0]):
        if log_gate_row[k] >= gate_max + min_log_gate:
            active[n_active] = k
            n_active += 1
    return n_active


@njit(cache=True, nogil=True)
def overlapping_pairs(log_gate, min_log_gate, overlaps):
    """Mark overlaps[k, k'] (k <= k') where both nodes carry gate on a row."""
    n_samples, n_nodes = log_gate.shape
    active = np.empty(n_nodes, dtype=np.int64)
    for d in range(n_samples):
        n_active = _active_nodes(log_gate[d], min_log_gate, active)
        for a in range(n_active):
            for b in range(a, n_active):
                overlaps[active[a], active[b]] = True
