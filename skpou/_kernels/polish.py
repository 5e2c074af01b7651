"""Kernels of the polish: the blended (joint) least-squares system.

Owner: ``skpou._polish``.
"""

import math

import numpy as np

from ._common import (
    COLUMNS,
    active_nodes,
    add_cross,
    add_gram_upper,
    basis_columns,
    column_block,
    exp,
    piece_buffers,
    select_rows,
)
from ._jit import kernel


@kernel
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
    merge finds them) into blocks of rows and multiplies those with BLAS
    (Numba's ``@``), which is several times faster than loops here.
    """
    n_nodes = log_gate.shape[1]
    n_basis = recipe.shape[0]
    count, rows, pieces, Z, local, weight, V = piece_buffers(
        n_nodes, n_basis, X.shape[1], degree, Y.shape[1]
    )
    offset = np.empty(n_nodes + 1, dtype=np.int64)
    kept = np.empty((4 * rows.shape[1], n_basis))  # (row, node) pairs of the chunk
    first = np.empty((COLUMNS, n_basis))
    second = np.empty((COLUMNS, n_basis))
    for start in range(0, X.shape[0], rows.shape[1]):
        _, n_pieces = select_rows(log_gate, start, min_log_gate, True, count, rows, pieces)
        offset[0] = 0
        for k in range(n_nodes):
            offset[k + 1] = offset[k] + count[k]
        if offset[n_nodes] > kept.shape[0]:
            kept = np.empty((offset[n_nodes], n_basis))
        for i in range(n_pieces):
            k, lo, block = column_block(rows, pieces, i)
            n = block.shape[0]
            for a in range(n):
                root_s = math.sqrt(sample_weight[block[a]])
                weight[a] = root_s * exp(log_gate[block[a], k])
                for t in range(Y.shape[1]):
                    V[t, a] = root_s * Y[block[a], t]
            basis_columns(X, block, centers[k], scales[k], recipe, degree, weight, local, Z)
            add_cross(Z, V, n, rhs[k])
            add_gram_upper(Z, Z, n, blocks[pair_id[k, k]])
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
                        if n == COLUMNS:
                            blocks[pair] += first.T @ second  # BLAS
                            n = 0
                if n > 0:
                    blocks[pair] += first[:n].T @ second[:n]


@kernel
def blended_design(X, log_gate, centers, scales, recipe, degree, min_log_gate, out):
    """Rows of the blended design matrix: out[d, k * M + m] = pi_k(x_d) phi_km(x_d).

    Zero where node k does not carry gate on row d. For when most nodes
    overlap on most rows: the polish system is then nearly dense and is
    formed with BLAS products of these rows (``skpou._polish``).
    """
    n_basis = recipe.shape[0]
    count, rows, pieces, Z, local, gate, _ = piece_buffers(
        log_gate.shape[1], n_basis, X.shape[1], degree, 0
    )
    out[:] = 0.0
    for start in range(0, X.shape[0], rows.shape[1]):
        _, n_pieces = select_rows(log_gate, start, min_log_gate, True, count, rows, pieces)
        for i in range(n_pieces):
            k, _, block = column_block(rows, pieces, i)
            for a in range(block.shape[0]):
                gate[a] = exp(log_gate[block[a], k])
            basis_columns(X, block, centers[k], scales[k], recipe, degree, gate, local, Z)
            for a in range(block.shape[0]):
                for m in range(n_basis):
                    out[block[a], k * n_basis + m] = Z[m, a]


@kernel
def add_to_submatrix(matrix, index, block):
    """matrix[index[i], index[j]] += block[i, j] (numpy's fancy-index add
    gathers and scatters the whole submatrix: ~10x slower)."""
    for i in range(index.shape[0]):
        for j in range(index.shape[0]):
            matrix[index[i], index[j]] += block[i, j]


@kernel
def carrying_gate(log_gate, min_log_gate, out):
    """out[d, k] = whether node k carries gate on row d (``active_nodes``)."""
    active = np.empty(log_gate.shape[1], dtype=np.int64)
    out[:] = False
    for d in range(log_gate.shape[0]):
        n_active = active_nodes(log_gate[d], min_log_gate, True, active)
        for i in range(n_active):
            out[d, active[i]] = True


@kernel
def overlapping_pairs(log_gate, min_log_gate, overlaps):
    """Add to overlaps[k, k'] (k <= k') the rows where both nodes carry gate
    (booleans: mark them)."""
    active = np.empty(log_gate.shape[1], dtype=np.int64)
    for d in range(log_gate.shape[0]):
        n_active = active_nodes(log_gate[d], min_log_gate, True, active)
        for a in range(n_active):
            for b in range(a, n_active):
                overlaps[active[a], active[b]] += 1
