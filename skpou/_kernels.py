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

All kernels are compiled with ``nogil=True`` so joblib threads can run them on
blocks of rows at the same time; none of them uses Numba's own parallelism.
Each kernel treats rows independently, so results do not depend on how the
rows are blocked.
"""

import math

import numpy as np
from numba import njit

LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=True, nogil=True)
def local_basis(x, center, scale, recipe, legendre, out):
    """Orthonormal Legendre products of total degree <= degree at one point.

    ``legendre`` is scratch space of shape (n_features, degree + 1). Basis
    function m is built from an earlier one: out[m] = out[recipe[m, 0]] *
    P_{recipe[m, 2]}(z_{recipe[m, 1]}) (see ``_experts.basis_recipe``), one
    multiplication each instead of a product over all features.
    """
    n_features, n_degree = legendre.shape
    for i in range(n_features):
        z = (x[i] - center[i]) / scale[i]
        legendre[i, 0] = 1.0
        if n_degree > 1:
            legendre[i, 1] = z
        for j in range(1, n_degree - 1):
            legendre[i, j + 1] = (
                (2 * j + 1) * z * legendre[i, j] - j * legendre[i, j - 1]
            ) / (j + 1)
    for j in range(1, n_degree):
        norm = math.sqrt(2 * j + 1)
        for i in range(n_features):
            legendre[i, j] *= norm
    out[0] = 1.0
    for m in range(1, recipe.shape[0]):
        out[m] = out[recipe[m, 0]] * legendre[recipe[m, 1], recipe[m, 2]]


@njit(cache=True, nogil=True)
def _expert_mean(phi, coef_k, mu):
    for t in range(mu.shape[0]):
        acc = 0.0
        for m in range(phi.shape[0]):
            acc += phi[m] * coef_k[m, t]
        mu[t] = acc


@njit(cache=True, nogil=True)
def e_step(
    X, Y, log_gate, centers, scales, coef, recipe, degree, log_var,
    min_log_gate, resp, log_lik,
):
    """Responsibilities and per-sample log-likelihood of the mixture.

    Nodes whose gate is below exp(min_log_gate) times the largest gate of the
    row are skipped: their responsibility is set to zero. This is what makes
    the cost follow the partitions a sample belongs to, not their number.
    """
    n_samples, n_nodes = log_gate.shape
    n_targets = Y.shape[1]
    phi = np.empty(recipe.shape[0])
    legendre = np.empty((X.shape[1], degree + 1))
    mu = np.empty(n_targets)
    log_joint = np.empty(n_nodes)
    inv_var = np.exp(-log_var)
    log_norm = np.empty(n_nodes)
    for k in range(n_nodes):
        log_norm[k] = -0.5 * (log_var[k].sum() + n_targets * LOG_2PI)
    for d in range(n_samples):
        gate_max = -np.inf
        for k in range(n_nodes):
            gate_max = max(gate_max, log_gate[d, k])
        joint_max = -np.inf
        for k in range(n_nodes):
            if log_gate[d, k] < gate_max + min_log_gate:
                log_joint[k] = -np.inf
                continue
            local_basis(X[d], centers[k], scales[k], recipe, legendre, phi)
            _expert_mean(phi, coef[k], mu)
            value = log_gate[d, k] + log_norm[k]
            for t in range(n_targets):
                residual = Y[d, t] - mu[t]
                value -= 0.5 * residual * residual * inv_var[k, t]
            log_joint[k] = value
            joint_max = max(joint_max, value)
        total = 0.0
        for k in range(n_nodes):
            if log_joint[k] > -np.inf:
                total += math.exp(log_joint[k] - joint_max)
        log_lik[d] = joint_max + math.log(total)
        for k in range(n_nodes):
            if log_joint[k] > -np.inf:
                resp[d, k] = math.exp(log_joint[k] - log_lik[d])
            else:
                resp[d, k] = 0.0


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
    phi = np.empty(recipe.shape[0])
    legendre = np.empty((X.shape[1], degree + 1))
    mu = np.empty((n_nodes, n_targets))
    gate = np.empty(n_nodes)
    for d in range(n_samples):
        gate_max = -np.inf
        for k in range(n_nodes):
            gate_max = max(gate_max, log_gate[d, k])
        for t in range(n_targets):
            mean[d, t] = 0.0
            variance[d, t] = 0.0
        for k in range(n_nodes):
            if log_gate[d, k] < gate_max + min_log_gate:
                gate[k] = 0.0
                continue
            gate[k] = math.exp(log_gate[d, k])
            local_basis(X[d], centers[k], scales[k], recipe, legendre, phi)
            _expert_mean(phi, coef[k], mu[k])
            for t in range(n_targets):
                mean[d, t] += gate[k] * mu[k, t]
        for k in range(n_nodes):
            if gate[k] == 0.0:
                continue
            for t in range(n_targets):
                spread = mu[k, t] - mean[d, t] if include_spread else 0.0
                variance[d, t] += gate[k] * (var[k, t] + spread * spread)


_SUB_BLOCK = 256  # rows gathered at once: keeps the gathered basis in L1/L2


@njit(cache=True, nogil=True)
def normal_equations(
    X, Y, sample_weight, resp, centers, scales, recipe, degree, min_resp,
    gram, rhs,
):
    """Add sum_d w_kd phi_k(x_d) phi_k(x_d)^T and sum_d w_kd phi_k(x_d) y_d.

    w_kd = sample_weight[d] * resp[d, k]. Rows with resp[d, k] <= min_resp are
    skipped. For each node the active rows of a sub-block are gathered,
    scaled by sqrt(w), into a contiguous (n_basis, rows) buffer, so the Gram
    update is a set of contiguous dot products that LLVM vectorizes. Only the
    upper triangle of ``gram`` is written; the caller mirrors it.
    """
    n_samples, n_nodes = resp.shape
    n_basis = recipe.shape[0]
    n_targets = Y.shape[1]
    phi = np.empty(n_basis)
    legendre = np.empty((X.shape[1], degree + 1))
    Z = np.empty((n_basis, _SUB_BLOCK))
    V = np.empty((n_targets, _SUB_BLOCK))
    for start in range(0, n_samples, _SUB_BLOCK):
        stop = min(start + _SUB_BLOCK, n_samples)
        for k in range(n_nodes):
            n_active = 0
            for d in range(start, stop):
                r = resp[d, k]
                if r <= min_resp or sample_weight[d] == 0.0:
                    continue
                root_w = math.sqrt(r * sample_weight[d])
                local_basis(X[d], centers[k], scales[k], recipe, legendre, phi)
                for m in range(n_basis):
                    Z[m, n_active] = root_w * phi[m]
                for t in range(n_targets):
                    V[t, n_active] = root_w * Y[d, t]
                n_active += 1
            if n_active == 0:
                continue
            for i in range(n_basis):
                for j in range(i, n_basis):
                    acc = 0.0
                    for a in range(n_active):
                        acc += Z[i, a] * Z[j, a]
                    gram[k, i, j] += acc
                for t in range(n_targets):
                    acc = 0.0
                    for a in range(n_active):
                        acc += Z[i, a] * V[t, a]
                    rhs[k, i, t] += acc


@njit(cache=True, nogil=True)
def softmax_newton_terms(
    G, sample_weight, resp, prob, n_children, min_weight, grad, curvature,
):
    """Gradient and curvature of the soft-label softmax objective per parent.

    Columns of ``resp`` and ``prob`` come in groups of ``n_children`` siblings
    (one group per parent). For parent p with children j, the objective is
    J_p = sum_d s_d sum_j r_dj log p_dj, whose gradient in theta_j is
    sum_d s_d (r_dj - u_d p_dj) g_d with u_d = sum_j r_dj, and whose negative
    Hessian (the curvature, positive semi-definite) has blocks
    sum_d s_d u_d (delta_jj' p_dj - p_dj p_dj') g_d g_d^T.

    Samples with parent weight u_d <= min_weight are skipped, and so are
    children with negligible probability and responsibility. ``grad`` has
    shape (n_parents, n_children, F), ``curvature`` (n_parents, n_children*F,
    n_children*F); only its upper triangle is written.
    """
    n_samples, n_nodes = resp.shape
    n_features = G.shape[1]
    n_parents = n_nodes // n_children
    active = np.empty(n_children, dtype=np.int64)
    for d in range(n_samples):
        s = sample_weight[d]
        if s == 0.0:
            continue
        g = G[d]
        for p in range(n_parents):
            base = p * n_children
            u = 0.0
            for j in range(n_children):
                u += resp[d, base + j]
            if u <= min_weight:
                continue
            n_active = 0
            for j in range(n_children):
                if prob[d, base + j] > 1e-15 or resp[d, base + j] > 1e-15 * u:
                    active[n_active] = j
                    n_active += 1
            for a in range(n_active):
                j = active[a]
                p_j = prob[d, base + j]
                c = s * (resp[d, base + j] - u * p_j)
                for f in range(n_features):
                    grad[p, j, f] += c * g[f]
                for b in range(a, n_active):
                    jj = active[b]
                    p_jj = prob[d, base + jj]
                    h = -p_j * p_jj
                    if jj == j:
                        h += p_j
                    h *= s * u
                    if h == 0.0:
                        continue
                    row = j * n_features
                    col = jj * n_features
                    for f in range(n_features):
                        hf = h * g[f]
                        start = f if jj == j else 0
                        for e in range(start, n_features):
                            curvature[p, row + f, col + e] += hf * g[e]


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
    phi = np.empty(recipe.shape[0])
    legendre = np.empty((X.shape[1], degree + 1))
    mu = np.empty(n_targets)
    for d in range(n_samples):
        for k in range(n_nodes):
            w = resp[d, k] * sample_weight[d]
            if resp[d, k] <= min_resp or w == 0.0:
                continue
            local_basis(X[d], centers[k], scales[k], recipe, legendre, phi)
            _expert_mean(phi, coef[k], mu)
            for t in range(n_targets):
                residual = Y[d, t] - mu[t]
                out[k, t] += w * residual * residual


@njit(cache=True, nogil=True)
def group_log_softmax(logits, n_children, out):
    """Log-softmax within consecutive groups of n_children columns."""
    n_samples, n_nodes = logits.shape
    for d in range(n_samples):
        for base in range(0, n_nodes, n_children):
            largest = -np.inf
            for j in range(base, base + n_children):
                largest = max(largest, logits[d, j])
            if largest == -np.inf:  # every child pruned: the parent is too
                for j in range(base, base + n_children):
                    out[d, j] = -np.inf
                continue
            total = 0.0
            for j in range(base, base + n_children):
                total += math.exp(logits[d, j] - largest)
            log_total = largest + math.log(total)
            for j in range(base, base + n_children):
                out[d, j] = logits[d, j] - log_total


@njit(cache=True, nogil=True)
def softmax_gate_objective(
    G, theta, sample_weight, resp, n_children, min_weight, log_prob, objective,
):
    """Softmax-of-linear-logits gate: log probabilities and J_p per parent.

    For every sample whose parent weight u_d = sum_j r_dj exceeds min_weight,
    fills that parent's columns of log_prob with log pi_{j|p}(x_d) for logits
    G @ theta.T, and adds s_d sum_j r_dj log pi_{j|p}(x_d) to objective[p].
    Other (sample, parent) pairs do not enter the gate fit: their columns
    are set to the uniform log(1 / n_children) and cost nothing.
    """
    n_samples, n_features = G.shape
    n_nodes = theta.shape[0]
    uniform = -math.log(n_children)
    for d in range(n_samples):
        s = sample_weight[d]
        for base in range(0, n_nodes, n_children):
            u = 0.0
            for j in range(base, base + n_children):
                u += resp[d, j]
            if u <= min_weight or s == 0.0:
                for j in range(base, base + n_children):
                    log_prob[d, j] = uniform
                continue
            largest = -np.inf
            for j in range(base, base + n_children):
                acc = 0.0
                for f in range(n_features):
                    acc += G[d, f] * theta[j, f]
                log_prob[d, j] = acc
                largest = max(largest, acc)
            total = 0.0
            for j in range(base, base + n_children):
                total += math.exp(log_prob[d, j] - largest)
            log_total = largest + math.log(total)
            fit = 0.0
            for j in range(base, base + n_children):
                log_prob[d, j] -= log_total
                fit += resp[d, j] * log_prob[d, j]
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


@njit(cache=True, nogil=True)
def blended_normal_equations(
    X, Y, sample_weight, log_gate, centers, scales, recipe, degree,
    min_log_gate, pair_id, blocks, rhs,
):
    """Normal equations of the deterministic POU network with frozen gates.

    The mean sum_k pi_k(x) phi_k(x) . c_k is linear in all coefficients at
    once; its least-squares matrix couples nodes k, k' whose gates overlap:
    block (k, k') = sum_d s_d pi_k pi_k' phi_k phi_k'^T, stored in
    blocks[pair_id[k, k']] for k <= k'. rhs[k] = sum_d s_d pi_k phi_k y_d.
    """
    n_samples, n_nodes = log_gate.shape
    n_basis = recipe.shape[0]
    n_targets = Y.shape[1]
    legendre = np.empty((X.shape[1], degree + 1))
    active = np.empty(n_nodes, dtype=np.int64)
    phi = np.empty((n_nodes, n_basis))
    for d in range(n_samples):
        s = sample_weight[d]
        if s == 0.0:
            continue
        n_active = _active_nodes(log_gate[d], min_log_gate, active)
        for a in range(n_active):
            k = active[a]
            local_basis(X[d], centers[k], scales[k], recipe, legendre, phi[a])
            gate = math.sqrt(s) * math.exp(log_gate[d, k])
            for m in range(n_basis):
                phi[a, m] *= gate
        root_s = math.sqrt(s)
        for a in range(n_active):
            k = active[a]
            for m in range(n_basis):
                for t in range(n_targets):
                    rhs[k, m, t] += root_s * phi[a, m] * Y[d, t]
            for b in range(a, n_active):
                block = blocks[pair_id[k, active[b]]]
                for i in range(n_basis):
                    value = phi[a, i]
                    for j in range(n_basis):
                        block[i, j] += value * phi[b, j]


@njit(cache=True, nogil=True)
def linear_child_log_gates(
    G, theta, parent_log_gate, n_children, pruned, min_log_gate, out,
):
    """log pi_child(x) = log pi_parent(x) + log softmax_siblings(G theta^T).

    Children of a parent whose gate is below exp(min_log_gate) of the row's
    largest parent gate get -inf without evaluating their logits: they could
    never reach the E-step's or the prediction's threshold. Pruned children
    get -inf too.
    """
    n_samples, n_parents = parent_log_gate.shape
    n_features = G.shape[1]
    for d in range(n_samples):
        parent_max = -np.inf
        for p in range(n_parents):
            parent_max = max(parent_max, parent_log_gate[d, p])
        for p in range(n_parents):
            base = p * n_children
            log_parent = parent_log_gate[d, p]
            if log_parent < parent_max + min_log_gate:
                for j in range(base, base + n_children):
                    out[d, j] = -np.inf
                continue
            largest = -np.inf
            for j in range(base, base + n_children):
                if pruned[j]:
                    out[d, j] = -np.inf
                    continue
                acc = 0.0
                for f in range(n_features):
                    acc += G[d, f] * theta[j, f]
                out[d, j] = acc
                largest = max(largest, acc)
            if largest == -np.inf:
                continue
            total = 0.0
            for j in range(base, base + n_children):
                total += math.exp(out[d, j] - largest)
            shift = log_parent - largest - math.log(total)
            for j in range(base, base + n_children):
                out[d, j] += shift
