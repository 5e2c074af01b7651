"""Kernels of the expert M-step: normal equations and weighted residuals.

Owner: ``skpou._experts``.
"""

import math

from ._common import (
    add_cross,
    add_gram_upper,
    basis_columns,
    column_block,
    piece_buffers,
    piece_expert_means,
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
    count, rows, pieces, Z, local, root_w, V = piece_buffers(
        resp.shape[1], recipe.shape[0], X.shape[1], degree, Y.shape[1]
    )
    for start in range(0, X.shape[0], rows.shape[1]):
        _, n_pieces = select_rows(resp, start, min_resp, False, count, rows, pieces)
        for i in range(n_pieces):
            k, _, block = column_block(rows, pieces, i)
            n = block.shape[0]
            for a in range(n):
                root_w[a] = math.sqrt(resp[block[a], k] * sample_weight[block[a]])
                for t in range(Y.shape[1]):
                    V[t, a] = root_w[a] * Y[block[a], t]
            basis_columns(X, block, centers[k], scales[k], recipe, degree, root_w, local, Z)
            add_gram_upper(Z, Z, n, gram[k])
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
    count, rows, pieces, Z, local, ones, mu = piece_buffers(
        resp.shape[1], recipe.shape[0], X.shape[1], degree, Y.shape[1]
    )
    for start in range(0, X.shape[0], rows.shape[1]):
        _, n_pieces = select_rows(resp, start, min_resp, False, count, rows, pieces)
        for i in range(n_pieces):
            k, _, block = piece_expert_means(
                X, rows, pieces, i, centers, scales, coef, recipe, degree, ones, local, Z, mu
            )
            for a in range(block.shape[0]):
                d = block[a]
                w = resp[d, k] * sample_weight[d]
                for t in range(Y.shape[1]):
                    residual = Y[d, t] - mu[t, a]
                    out[k, t] += w * residual * residual
