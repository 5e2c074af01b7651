"""The skeleton the expert kernels share, written once.

Every expert kernel works node by node: for a chunk of rows it lists the
rows each node is active on (``select_rows``), then evaluates that node's
basis on those rows at once, as the columns of a (n_basis, rows) matrix
(``column_block`` and ``basis_columns``). The loops then run along contiguous
rows, so LLVM vectorizes both the basis evaluation and the Gram products
(whose sums may be reassociated: ``fastmath`` with "reassoc" and "contract"
only). Results depend on how the caller blocks the rows only through the
order of sums, and the callers' blocks are fixed
(``skpou._parallel.ROWS_PER_BLOCK``).
"""

import math

import numpy as np

from ._jit import kernel

LOG_2PI = math.log(2.0 * math.pi)
COLUMNS = 256  # rows whose basis is evaluated at once: a (n_basis, 256) block
_CHUNK_ENTRIES = 1 << 20  # bound on a chunk's (node, row) lists, per thread
REASSOC = {"reassoc", "contract"}  # lets LLVM vectorize the row sums
# exp(x) rounds to zero below log(2^-1075) = -745.13. libm's underflow path
# costs 2-4x a normal exp, and peaked responsibilities or sharp gates send
# most (row, node) pairs there: they are returned as the zero exp would give.
_EXP_UNDERFLOW = -745.2


@kernel(inline="always")
def exp(x):
    """math.exp(x), without libm's slow path for results that round to 0."""
    return math.exp(x) if x > _EXP_UNDERFLOW else 0.0


@kernel(inline="always")
def activity_threshold(values, cutoff, relative):
    """The threshold of ``is_active`` on one row.

    ``relative``: values are log gates, and a node is active (carries gate)
    when within exp(cutoff) of the row's largest gate; the others are
    skipped, which is what makes the cost follow the partitions a sample
    belongs to, not their number. Otherwise values are responsibilities,
    active above ``cutoff``.
    """
    if not relative:
        return cutoff
    largest = -np.inf
    for k in range(values.shape[0]):
        largest = max(largest, values[k])
    return largest + cutoff


@kernel(inline="always")
def is_active(value, threshold, relative):
    return value >= threshold if relative else value > threshold


@kernel
def active_nodes(values, cutoff, relative, active):
    """Write into ``active`` the nodes active on one row (``is_active``);
    return how many."""
    threshold = activity_threshold(values, cutoff, relative)
    n_active = 0
    for k in range(values.shape[0]):
        if is_active(values[k], threshold, relative):
            active[n_active] = k
            n_active += 1
    return n_active


@kernel
def piece_buffers(n_nodes, n_basis, n_features, degree, n_targets):
    """Buffers of the skeleton: one chunk's per-node row lists, counts (K,)
    and rows (K, chunk), the table of their pieces (``select_rows``), the
    basis scratch Z (n_basis, COLUMNS) and local values (``basis_columns``),
    and a piece's row weights (COLUMNS,), ones until a kernel sets them,
    and per-target values (n_targets, COLUMNS).

    The chunk has as many rows as keep the lists within _CHUNK_ENTRIES.
    """
    chunk = max(COLUMNS, min(4096, _CHUNK_ENTRIES // max(n_nodes, 1)))
    count = np.empty(n_nodes, dtype=np.int64)
    rows = np.empty((n_nodes, chunk), dtype=np.int64)
    pieces = np.empty((n_nodes * (chunk // COLUMNS + 1), 3), dtype=np.int64)
    Z = np.empty((n_basis, COLUMNS))
    local = np.empty((n_features, degree + 1, COLUMNS))
    return count, rows, pieces, Z, local, np.ones(COLUMNS), np.empty((n_targets, COLUMNS))


@kernel
def select_rows(values, start, cutoff, relative, count, rows, pieces):
    """List, per node, its active rows (``active_nodes``) of one chunk.

    The chunk is rows start:stop, as many as ``rows`` holds; fills
    rows[k, :count[k]] in increasing row order, and pieces[i] = (k, lo, hi)
    for each node's rows in pieces of at most COLUMNS (``column_block``).
    Returns stop and the number of pieces.
    """
    stop = min(start + rows.shape[1], values.shape[0])
    count[:] = 0
    for d in range(start, stop):
        threshold = activity_threshold(values[d], cutoff, relative)
        for k in range(values.shape[1]):
            if is_active(values[d, k], threshold, relative):
                rows[k, count[k]] = d
                count[k] += 1
    n_pieces = 0
    for k in range(count.shape[0]):
        for lo in range(0, count[k], COLUMNS):
            pieces[n_pieces, 0] = k
            pieces[n_pieces, 1] = lo
            pieces[n_pieces, 2] = min(lo + COLUMNS, count[k])
            n_pieces += 1
    return stop, n_pieces


@kernel(inline="always")
def column_block(rows, pieces, i):
    """Piece i of ``select_rows``: node k, first position lo, and its rows."""
    k, lo, hi = pieces[i, 0], pieces[i, 1], pieces[i, 2]
    return k, lo, rows[k, lo:hi]


@kernel
def basis_columns(X, rows, center, scale, recipe, degree, weight, local, Z):
    """Z[m, a] = weight[a] * phi_m((X[rows[a]] - center) / scale), a < len(rows).

    phi_m are products of orthonormal Legendre polynomials of total degree
    <= degree. Basis m is built from an earlier one: phi_m = phi_{recipe[m, 0]}
    * P_{recipe[m, 2]}(z_{recipe[m, 1]}) (see ``skpou._basis.basis_recipe``),
    one multiplication per row. Starting from phi_0 = weight carries the
    weight into every column for free. ``local`` is scratch space of shape
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


def _product_sums(upper):
    """out[i, j] += sum_a Z[i, a] V[j, a], a < n; only j >= i if ``upper``.

    ``upper`` is fixed per compiled function (a closure constant), so the
    loops compile as if written out: a run-time flag costs the small-basis
    Gram products ~15%.
    """

    @kernel(fastmath=REASSOC)
    def add(Z, V, n, out):
        for i in range(Z.shape[0]):
            for j in range(i if upper else 0, V.shape[0]):
                acc = 0.0
                for a in range(n):
                    acc += Z[i, a] * V[j, a]
                out[i, j] += acc

    return add


# Gram matrices (V = Z, upper triangle only: the caller mirrors it) and
# cross products.
add_gram_upper = _product_sums(upper=True)
add_cross = _product_sums(upper=False)


@kernel(fastmath=REASSOC)
def expert_means(Z, n, coef_k, mu):
    """mu[t, a] = sum_m coef_k[m, t] Z[m, a], a < n."""
    for t in range(coef_k.shape[1]):
        for a in range(n):
            mu[t, a] = 0.0
        for m in range(Z.shape[0]):
            c = coef_k[m, t]
            for a in range(n):
                mu[t, a] += c * Z[m, a]


@kernel(inline="always")
def piece_expert_means(
    X, rows, pieces, i, centers, scales, coef, recipe, degree, ones, local, Z, mu
):
    """Piece i's node k, first position lo and rows, with node k's expert
    evaluated on them: mu[t, a] for a < len(rows)."""
    k, lo, block = column_block(rows, pieces, i)
    basis_columns(X, block, centers[k], scales[k], recipe, degree, ones, local, Z)
    expert_means(Z, block.shape[0], coef[k], mu)
    return k, lo, block
