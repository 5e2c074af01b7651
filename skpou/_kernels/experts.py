"""Kernels of the expert M-step: normal equations and weighted residuals.

Owner: ``skpou._experts``.
"""

import math

import numpy as np

from ._common import (
    COLUMNS,
    add_cross,
    add_gram_upper,
    basis_columns,
    basis_scratch,
    column_block,
    expert_means,
    row_lists,
    select_rows,
)
from ._jit import kernel


@kernel
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
    count, rows, pieces = row_lists(n_nodes)
    Z, local = basis_scratch(recipe.shape[0], X.shape[1], degree)
    root_w = np.empty(COLUMNS)
    V = np.empty((n_targets, COLUMNS))
    for start in range(0, n_samples, rows.shape[1]):
        _, n_pieces = select_rows(resp, start, min_resp, False, count, rows, pieces)
        for i in range(n_pieces):
            k, _, block = column_block(rows, pieces, i)
            n = block.shape[0]
            for a in range(n):
                root_w[a] = math.sqrt(resp[block[a], k] * sample_weight[block[a]])
                for t in range(n_targets):
                    V[t, a] = root_w[a] * Y[block[a], t]
            basis_columns(X, block, centers[k], scales[k], recipe, degree, root_w, local, Z)
            add_gram_upper(Z, n, gram[k])
            add_cross(Z, V, n, rhs[k])


@kernel
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
    count, rows, pieces = row_lists(n_nodes)
    Z, local = basis_scratch(recipe.shape[0], X.shape[1], degree)
    ones = np.ones(COLUMNS)
    mu = np.empty((n_targets, COLUMNS))
    for start in range(0, n_samples, rows.shape[1]):
        _, n_pieces = select_rows(resp, start, min_resp, False, count, rows, pieces)
        for i in range(n_pieces):
            k, _, block = column_block(rows, pieces, i)
            n = block.shape[0]
            basis_columns(X, block, centers[k], scales[k], recipe, degree, ones, local, Z)
            expert_means(Z, n, coef[k], mu)
            for a in range(n):
                d = block[a]
                w = resp[d, k] * sample_weight[d]
                for t in range(n_targets):
                    residual = Y[d, t] - mu[t, a]
                    out[k, t] += w * residual * residual
