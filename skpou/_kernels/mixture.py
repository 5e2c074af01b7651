"""Kernels of the mixture: E-step responsibilities, mean and variance.

Owner: ``skpou._tree`` (a level's mixture is a property of the tree).
"""

import math

import numpy as np

from ._common import (
    LOG_2PI,
    exp,
    piece_buffers,
    piece_expert_means,
    select_rows,
)
from ._jit import kernel


@kernel
def e_step(
    X, Y, log_gate, centers, scales, coef, recipe, degree, log_var,
    min_log_gate, resp, log_lik,
):
    """Responsibilities and per-sample log-likelihood of the mixture.

    Nodes that do not carry gate on a row (``_common.active_nodes``) get
    responsibility zero there without their expert being evaluated.
    """
    n_nodes = log_gate.shape[1]
    n_targets = Y.shape[1]
    count, rows, pieces, Z, local, ones, mu = piece_buffers(
        n_nodes, recipe.shape[0], X.shape[1], degree, n_targets
    )
    inv_var = np.exp(-log_var)
    log_norm = np.empty(n_nodes)
    for k in range(n_nodes):
        log_norm[k] = -0.5 * (log_var[k].sum() + n_targets * LOG_2PI)
    for start in range(0, X.shape[0], rows.shape[1]):
        stop, n_pieces = select_rows(log_gate, start, min_log_gate, True, count, rows, pieces)
        resp[start:stop] = -np.inf  # log joint density until normalized below
        for i in range(n_pieces):
            k, _, block = piece_expert_means(
                X, rows, pieces, i, centers, scales, coef, recipe, degree, ones, local, Z, mu
            )
            for a in range(block.shape[0]):
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
                resp[d, k] = exp(resp[d, k] - joint_max)
                total += resp[d, k]
            log_lik[d] = joint_max + math.log(total)
            for k in range(n_nodes):
                resp[d, k] /= total


@kernel
def mixture_moments(
    X, log_gate, centers, scales, coef, recipe, degree, var, min_log_gate,
    include_spread, coef_cov_factor, mean, variance,
):
    """Mixture mean sum_k pi_k mu_k and variance
    sum_k pi_k (s_k^2 + |R_k phi_k|^2 + (mu_k - mean)^2).

    ``coef_cov_factor`` (K, T, M, M) holds a factor R_k of each expert's
    coefficient covariance C_k = R_k^T R_k per output (the parameter term
    is left out if it has no rows): |R phi|^2 cannot fall below zero, where
    the quadratic form phi^T C phi did by its round-off, which grows as
    |phi|^2 (heat_peak_2d, degree 9: -7e-9 against a noise term of 7e-10,
    and a NaN std). The variance is summed in its centred form:
    sum pi (s^2 + mu^2) - mean^2 would cancel catastrophically where the
    experts fit tightly. Without ``include_spread`` the spread
    (mu_k - mean)^2 is left out.
    """
    n_nodes = log_gate.shape[1]
    n_targets = coef.shape[2]
    n_basis = recipe.shape[0]
    count, rows, pieces, Z, local, ones, mu = piece_buffers(
        n_nodes, n_basis, X.shape[1], degree, n_targets
    )
    means = np.empty((n_nodes, n_targets, rows.shape[1]))  # each expert on its rows
    spreads = np.zeros((n_nodes, n_targets, rows.shape[1]))  # and its parameter variance
    with_parameters = coef_cov_factor.shape[0] > 0
    for start in range(0, X.shape[0], rows.shape[1]):
        stop, n_pieces = select_rows(log_gate, start, min_log_gate, True, count, rows, pieces)
        mean[start:stop] = 0.0
        variance[start:stop] = 0.0
        for i in range(n_pieces):
            k, lo, block = piece_expert_means(
                X, rows, pieces, i, centers, scales, coef, recipe, degree, ones, local, Z, mu
            )
            n = block.shape[0]
            means[k, :, lo:lo + n] = mu[:, :n]
            if with_parameters:
                for t in range(n_targets):
                    for a in range(n):
                        quadratic = 0.0
                        for p in range(n_basis):
                            row = 0.0
                            for q in range(n_basis):
                                row += coef_cov_factor[k, t, p, q] * Z[q, a]
                            quadratic += row * row
                        spreads[k, t, lo + a] = quadratic
            for a in range(n):
                gate = exp(log_gate[block[a], k])
                for t in range(n_targets):
                    mean[block[a], t] += gate * mu[t, a]
        for k in range(n_nodes):
            for a in range(count[k]):
                d = rows[k, a]
                gate = exp(log_gate[d, k])
                for t in range(n_targets):
                    spread = means[k, t, a] - mean[d, t] if include_spread else 0.0
                    variance[d, t] += gate * (var[k, t] + spreads[k, t, a] + spread * spread)
