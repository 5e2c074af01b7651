"""Polynomial experts: the basis, the normal equations and their solves.

The expert M-step of EM is one weighted least-squares problem per node,

    (sum_d w_kd phi_k(x_d) phi_k(x_d)^T + alpha I) c_k = sum_d w_kd phi_k(x_d) y_d,

all decoupled. The Numba kernel assembles every node's system in one pass
over blocks of rows; joblib threads share the blocks (the kernels release the
GIL) and then the per-node Cholesky solves.
"""

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from itertools import combinations_with_replacement
from math import comb

import numpy as np
from joblib import effective_n_jobs
from numpy.polynomial.legendre import leggauss
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve
from scipy.special import eval_legendre
from scipy.sparse.linalg import splu
from sklearn.utils.parallel import Parallel, delayed
from threadpoolctl import ThreadpoolController

from . import _kernels

# Fixed block size: row blocks, and so the order of floating-point sums, never
# depend on n_jobs, which keeps fits bit-identical across n_jobs.
ROWS_PER_BLOCK = 4096


def total_degree_powers(n_features, degree):
    """Multi-indices of all monomials of total degree <= degree, shape (M, n)."""
    powers = [np.zeros(n_features, dtype=np.int64)]
    for total in range(1, degree + 1):
        for combo in combinations_with_replacement(range(n_features), total):
            powers.append(np.bincount(combo, minlength=n_features))
    return np.array(powers, dtype=np.int64).reshape(-1, n_features)


def basis_recipe(powers):
    """How to build each basis function from an earlier one, shape (M, 3).

    Row m = (prefix, feature, power): basis m is basis ``prefix`` times the
    1-D Legendre polynomial of that power in that feature, where ``prefix``
    is m's multi-index with its last non-zero exponent removed (of lower
    total degree, so listed earlier). Row 0 is the constant.
    """
    index = {tuple(row): m for m, row in enumerate(powers)}
    recipe = np.zeros((powers.shape[0], 3), dtype=np.int64)
    for m, row in enumerate(powers[1:], start=1):
        feature = int(np.flatnonzero(row)[-1])
        prefix = row.copy()
        prefix[feature] = 0
        recipe[m] = (index[tuple(prefix)], feature, row[feature])
    return recipe


def _orthonormal_legendre(degree, z):
    """sqrt(2a + 1) P_a(z) for a = 0..degree, shape (degree + 1, *z.shape)."""
    a = np.arange(degree + 1).reshape(-1, *([1] * np.ndim(z)))
    return np.sqrt(2 * a + 1) * eval_legendre(a, z)


@lru_cache(maxsize=8)
def legendre_products(n_features, degree):
    """Products of two basis functions in the basis of twice the degree.

    phi_i phi_j = sum_p C[i * M + j, p] psi_p, with phi the basis of total
    degree <= degree and psi that of total degree <= 2 * degree (whose
    first M functions are the phi). Returns C as a sparse (M * M, P)
    matrix, and psi's recipe. In one variable, q_a q_b = sum_c L_abc q_c
    with L_abc the integral of q_a q_b q_c (Gauss-Legendre quadrature is
    exact for it), non-zero only for |a - b| <= c <= a + b and a + b + c
    even; products of variables multiply.
    """
    powers = total_degree_powers(n_features, degree)
    product_powers = total_degree_powers(n_features, 2 * degree)
    nodes, weights = leggauss(2 * degree + 1)
    q = _orthonormal_legendre(2 * degree, nodes)
    a, b, c = np.ogrid[: degree + 1, : degree + 1, : 2 * degree + 1]
    allowed = ((a + b + c) % 2 == 0) & (c <= a + b) & (a <= b + c) & (b <= a + c)
    low = q[: degree + 1]
    linearization = np.where(
        allowed, np.einsum("ag,bg,cg,g->abc", low, low, q, weights / 2), 0.0
    )
    rows = []
    for row in powers:
        block = np.ones((powers.shape[0], product_powers.shape[0]))
        for f, power in enumerate(row):
            block *= linearization[power][np.ix_(powers[:, f], product_powers[:, f])]
        rows.append(sparse.csr_array(block))
    return sparse.vstack(rows, format="csr"), basis_recipe(product_powers)


def legendre_frame_change(centers, scales, degree):
    """T[k] (K, M, M): node k's basis phi((x - centers[k]) / scales[k]) = T[k] @ phi(x).

    Both sides are polynomials of the same total degree, so T[k] is exact;
    in one variable q_a((x - c) / h) = sum_{b <= a} t_ab q_b(x) with t_ab
    its integral against q_b on [-1, 1] (Gauss-Legendre, exact), and the
    multivariate basis takes products. Its norm measures how much
    cancellation rewriting a node's basis in the unit box's costs: large
    for small or distant frames.
    """
    n_nodes, n_features = centers.shape
    powers = total_degree_powers(n_features, degree)
    nodes, weights = leggauss(degree + 1)
    local = _orthonormal_legendre(degree, (nodes - centers[..., None]) / scales[..., None])
    box = _orthonormal_legendre(degree, nodes)
    # one_d[k, f, a, b] = t_ab of node k in feature f (zero for b > a)
    one_d = np.tril(np.einsum("akfg,bg,g->kfab", local, box, weights / 2))
    frame_change = np.ones((n_nodes, powers.shape[0], powers.shape[0]))
    for f in range(n_features):
        frame_change *= one_d[:, f][:, powers[:, None, f], powers[None, :, f]]
    return frame_change


def _frame_change_for_moments(centers, scales, degree):
    """The frame change, if normal equations are best formed from moments.

    Moments pay where they take at most half the multiply-adds of direct
    products (P <= M^2 / 4: degree >= 3 from 3-D on, >= 4 in 2-D, >= 7 in
    1-D) and the frames are wide enough for their round-off: no row of any
    T[k] has a 2-norm above MAX_FRAME_CHANGE (an entry of T_k B T_l^T
    carries at most the square of that times the round-off of B's). None
    otherwise.
    """
    n_features = centers.shape[1]
    n_basis = comb(n_features + degree, degree)
    if comb(n_features + 2 * degree, 2 * degree) > n_basis**2 / 4:
        return None
    frame_change = legendre_frame_change(centers, scales, degree)
    largest_row_norm = np.sqrt(np.einsum("kij,kij->ki", frame_change, frame_change).max())
    return frame_change if largest_row_norm <= MAX_FRAME_CHANGE else None


def row_blocks(n_samples, size=ROWS_PER_BLOCK):
    return [
        slice(start, min(start + size, n_samples))
        for start in range(0, n_samples, size)
    ]


@contextmanager
def thread_pool(n_jobs):
    """Threads for the row-block maps of one fit or predict (None: serial).

    EM runs many short parallel steps (a kernel over each row block, a few
    milliseconds each), so the pool is started once per fit and is a plain
    executor: a joblib ``Parallel`` call costs ~10 ms of dispatch here,
    more than the step itself. joblib parallelises the coarser per-partition
    solves (``solve_normal_equations``).
    """
    n_threads = effective_n_jobs(n_jobs)
    # BLAS runs single-threaded inside: threads of its own on top of the
    # pool's oversubscribe the cores (Franke 2-D, n = 1e5, 2 cores: n_jobs=2
    # took 2.30 s with two BLAS threads, 1.45 s with one; n_jobs=1 2.2 s
    # either way), and results then do not depend on BLAS's thread count.
    with _blas_controller().limit(limits=1, user_api="blas"):
        if n_threads == 1:
            yield None
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                yield pool


@lru_cache(maxsize=1)
def _blas_controller():
    # Created once: finding the loaded BLAS libraries takes milliseconds.
    return ThreadpoolController()


def map_row_blocks(function, n_samples, pool):
    """Run function(rows) for each fixed row block; results in block order."""
    blocks = row_blocks(n_samples)
    if pool is None or len(blocks) == 1:
        return [function(rows) for rows in blocks]
    return list(pool.map(function, blocks))


def sum_row_blocks(function, n_samples, pool):
    """Sum, in block order, the tuples of arrays function(rows) returns.

    Results are added as they arrive rather than collected first: with
    millions of rows there are thousands of blocks, and their per-block
    partial sums (each node's Gram matrices, say) would otherwise pile up.
    """
    blocks = row_blocks(n_samples)
    parts = (
        map(function, blocks) if pool is None else pool.map(function, blocks)
    )
    total = list(next(parts))
    for part in parts:
        for accumulated, value in zip(total, part):
            accumulated += value
    return tuple(total)


def weighted_moments(X, weights, sample_weight):
    """Per node: total weight, and weighted sums of x and x^2 per feature.

    Node k weighs row d by weights[d, k] * sample_weight[d] (passed apart:
    that spares an (n_samples, n_nodes) product). Sums over row blocks add.
    """
    mass = weights.T @ sample_weight
    weighted_X = sample_weight[:, None] * X
    first = weights.T @ weighted_X
    weighted_X *= X
    return mass, first, weights.T @ weighted_X


def frames_from_moments(mass, first, second, min_scale):
    """Centre and half-width per node and feature, from ``weighted_moments``.

    Uniform data on [a, b] maps to [-1, 1]: centre = mean, half-width =
    sqrt(3) * std. Nodes with no weight get the unit box.
    """
    safe_mass = np.where(mass > 0, mass, 1.0)[:, None]
    centers = first / safe_mass
    var = np.maximum(second / safe_mass - centers**2, 0.0)
    scales = np.maximum(np.sqrt(3.0 * var), min_scale)
    empty = mass <= 0
    centers[empty] = 0.0
    scales[empty] = 1.0
    return centers, scales


def local_frames(X, weights, min_scale, sample_weight=None):
    """Centre and half-width of each node's weighted data, per feature."""
    if sample_weight is None:
        sample_weight = np.ones(X.shape[0])
    return frames_from_moments(
        *weighted_moments(X, weights, sample_weight), min_scale
    )


def block_normal_equations(
    X, Y, sample_weight, resp, centers, scales, recipe, degree, min_resp
):
    """One row block's share of the normal equations (upper triangles)."""
    n_nodes = resp.shape[1]
    n_basis = recipe.shape[0]
    gram = np.zeros((n_nodes, n_basis, n_basis))
    rhs = np.zeros((n_nodes, n_basis, Y.shape[1]))
    _kernels.normal_equations(
        X, Y, sample_weight, resp, centers, scales, recipe, degree, min_resp,
        gram, rhs,
    )
    return gram, rhs


def mirror_upper(gram):
    """Symmetric matrices from their upper triangles (kernels write only those)."""
    return np.triu(gram) + np.swapaxes(np.triu(gram, 1), 1, 2)


def assemble_normal_equations(
    X, Y, sample_weight, resp, centers, scales, recipe, degree, min_resp, pool
):
    """Per-node Gram matrices (K, M, M) and right-hand sides (K, M, T).

    From moments in the unit box (``_moment_normal_equations``) where that
    takes fewer flops and the frames are wide enough for its round-off;
    otherwise by the Numba kernel, which also skips negligible weights.
    """
    frame_change = _frame_change_for_moments(centers, scales, degree)
    if frame_change is not None:
        return _moment_normal_equations(
            frame_change, X, Y, sample_weight, resp, degree, min_resp, pool
        )

    def block(rows):
        return block_normal_equations(
            X[rows], Y[rows], sample_weight[rows], resp[rows], centers, scales,
            recipe, degree, min_resp,
        )

    gram, rhs = sum_row_blocks(block, X.shape[0], pool)
    return mirror_upper(gram), rhs


def _solve_batch(gram, rhs):
    """Cholesky solves of a stack of SPD systems; eigen-solve where one fails."""
    try:
        np.linalg.cholesky(gram)  # the check that every system is SPD
    except np.linalg.LinAlgError:
        return np.stack([_solve_one(a, b) for a, b in zip(gram, rhs)])
    # numpy has no batched triangular solve: one batched LU solve costs less
    # than two through the Cholesky factors.
    return np.linalg.solve(gram, rhs)


def _solve_one(gram, rhs):
    try:
        return cho_solve(cho_factor(gram, lower=True), rhs)
    except np.linalg.LinAlgError:
        # Singular or indefinite through round-off: minimum-norm solution
        # on the numerically positive eigenspace.
        eigval, eigvec = np.linalg.eigh(gram)
        keep = eigval > eigval.max() * 1e-13
        return eigvec[:, keep] @ ((eigvec[:, keep].T @ rhs) / eigval[keep, None])


# Below this many flops a joblib dispatch (~10 ms) costs more than the solves.
MIN_PARALLEL_SOLVE_FLOPS = 5e7


def solve_normal_equations(gram, rhs, alpha, n_jobs):
    """Ridge-regularized solves of all nodes' systems, batched over threads."""
    n_nodes, n_basis, _ = gram.shape
    gram = gram + alpha * np.eye(n_basis)
    n_batches = min(effective_n_jobs(n_jobs), n_nodes)
    if n_batches <= 1 or n_nodes * n_basis**3 / 3 < MIN_PARALLEL_SOLVE_FLOPS:
        return _solve_batch(gram, rhs)
    batches = np.array_split(np.arange(n_nodes), n_batches)
    parts = Parallel(n_jobs=n_batches, prefer="threads")(
        delayed(_solve_batch)(gram[idx], rhs[idx]) for idx in batches
    )
    return np.concatenate(parts)


# The polish system is formed densely, with BLAS, when at least this share of
# node pairs overlap and it has at most this many unknowns (a 512 MiB
# matrix). Where most pairs overlap, the sparse path is the slower one and
# holds more memory, not less: 3-D at n = 1e5, (8, 8) degree 6 (5,376
# unknowns, nearly all pairs overlap), one thread: sparse 107 s and 2.5 GB
# peak RSS, dense 81 s and 1.2 GB.
DENSE_POLISH_OVERLAP = 0.25
DENSE_POLISH_MAX_UNKNOWNS = 8192
# Rows of the blended design matrix formed at once by the dense path.
DESIGN_ROWS = 1024
# Normal equations (the experts' and the dense polish's) are formed from
# product moments in the unit box only when no expert's basis, rewritten in
# the box's basis, has a row of larger 2-norm than this (and moments save
# flops: ``_frame_change_for_moments``). Round-off in the matrices then
# grows by at most its square over a direct product's (to ~1e-10
# relative). Measured at n = 1e4 with defaults, predictions from the moment
# polish against the direct one: Friedman 1 5-D (largest row norm ~60)
# 1.9e-11 apart, 3-D tanh-cos-exp (~320) 6.2e-11, Friedman 2 4-D (~310)
# 6.5e-10; Franke 2-D (8, 8) degree 5 (8.8e5, left to the direct path)
# would be 2e-5 apart.
MAX_FRAME_CHANGE = 1e3
# Bound on the (rows, pairs) gate products the moment path forms at once.
PAIR_PRODUCT_ENTRIES = 1 << 17
# Least ridge of a polish with more unknowns than distinct rows (relative to
# a matrix normalized by the total weight): round-off in the matrix then
# moves the solution by ~1e-8 of its correction, and the data are still
# fitted to ~1e-8.
UNDERDETERMINED_POLISH_RIDGE = 1e-8


def solve_blended_least_squares(
    X, Y, sample_weight, block_log_gates, centers, scales, coef, recipe, degree,
    min_log_gate, alpha, pool, determined=True,
):
    """Joint least squares of all experts against the blended mean, gates frozen.

    EM fits each expert to its own weighted data; where gates overlap, the
    blended mean sum_k pi_k mu_k is then not the least-squares optimum. This
    solves for every coefficient at once (the deterministic POU network's
    problem). Only overlapping nodes couple, so the matrix is block-sparse:
    a sparse LU solves it, unless most nodes overlap, where a dense Cholesky
    of a matrix formed by BLAS products is faster. The ridge term pulls
    towards the EM coefficients ``coef``, so nodes the data barely reach
    keep them.

    With fewer distinct rows than unknowns (``determined=False``) the data
    fix only part of the coefficients and the ridge decides the rest; a
    ridge as small as ``alpha`` would let round-off decide it (a change of
    eps in the matrix moves the solution by eps / alpha), so there it is at
    least UNDERDETERMINED_POLISH_RIDGE.

    ``block_log_gates(rows)`` gives the log gates of a block of rows: they
    are computed block by block, so memory does not grow with n_samples
    times the number of nodes.
    """
    n_nodes, n_basis, n_targets = coef.shape

    def block_overlaps(rows):
        overlaps = np.zeros((n_nodes, n_nodes), dtype=np.bool_)
        _kernels.overlapping_pairs(block_log_gates(rows), min_log_gate, overlaps)
        return overlaps

    (overlaps,) = sum_row_blocks(
        lambda rows: (block_overlaps(rows),), X.shape[0], pool
    )  # booleans: the sum is a logical or
    share = overlaps.sum() / (n_nodes * (n_nodes + 1) / 2)
    args = (X, Y, sample_weight, block_log_gates, centers, scales, recipe,
            degree, min_log_gate, pool)
    dense = share >= DENSE_POLISH_OVERLAP and n_nodes * n_basis <= DENSE_POLISH_MAX_UNKNOWNS
    if dense:
        frame_change = _frame_change_for_moments(centers, scales, degree)
        if frame_change is not None:
            matrix, rhs = _moment_blended_system(overlaps, frame_change, *args)
        else:
            matrix, rhs = _dense_blended_system(*args)
    else:
        matrix, rhs = _sparse_blended_system(overlaps, *args)
    size = n_nodes * n_basis
    total = sample_weight.sum()
    if not determined:
        alpha = max(alpha, UNDERDETERMINED_POLISH_RIDGE)
    rhs = rhs.reshape(size, n_targets) / total + alpha * coef.reshape(size, n_targets)
    if dense:
        matrix /= total
        matrix[np.diag_indices(size)] += alpha
        solution = _solve_one(matrix, rhs)
    else:
        matrix = (matrix / total + alpha * sparse.eye_array(size)).tocsc()
        solution = splu(matrix).solve(rhs)
    return solution.reshape(n_nodes, n_basis, n_targets)


def _dense_blended_system(
    X, Y, sample_weight, block_log_gates, centers, scales, recipe, degree,
    min_log_gate, pool,
):
    """A^T S A and A^T S y for the design rows A[d] = (pi_k(x_d) phi_k(x_d))_k.

    Each run of DESIGN_ROWS rows is formed only for the nodes that carry
    gate somewhere in it: the rows are sorted by x, so a run covers a slab
    of the domain, and with many partitions in low dimensions most nodes
    are zero throughout it. Measured with one thread, against forming all
    columns for every run: Runge 1-D at n = 1e5, (16, 8) degree 7 2.9 s ->
    0.63 s and (256,) degree 3 3.2 s -> 0.82 s; Franke 2-D at n = 1e4,
    (16, 16) degree 3 2.0 s -> 1.2 s. Where every node carries gate
    everywhere (the default tree from 3-D on) nothing changes.
    """
    n_nodes, n_basis = centers.shape[0], recipe.shape[0]
    n_unknowns = n_nodes * n_basis

    def block(rows):
        gram = np.zeros((n_unknowns, n_unknowns))
        rhs = np.zeros((n_unknowns, Y.shape[1]))
        design = np.empty(DESIGN_ROWS * n_unknowns)
        for start in range(rows.start, rows.stop, DESIGN_ROWS):
            part = slice(start, min(start + DESIGN_ROWS, rows.stop))
            log_gate = block_log_gates(part)
            nodes = np.flatnonzero(carries_gate(log_gate, min_log_gate).any(axis=0))
            columns = (nodes[:, None] * n_basis + np.arange(n_basis)).ravel()
            A = design[: (part.stop - part.start) * columns.size].reshape(-1, columns.size)
            _kernels.blended_design(
                X[part], np.ascontiguousarray(log_gate[:, nodes]), centers[nodes],
                scales[nodes], recipe, degree, min_log_gate, A,
            )
            root_weight = np.sqrt(sample_weight[part])[:, None]
            A *= root_weight
            # numpy sees A.T @ A and uses BLAS syrk
            _kernels.add_to_submatrix(gram, columns, A.T @ A)
            rhs[columns] += A.T @ (root_weight * Y[part])
        return gram, rhs

    return sum_row_blocks(block, X.shape[0], pool)


def _moment_blended_system(
    overlaps, frame_change, X, Y, sample_weight, block_log_gates, centers, scales,
    recipe, degree, min_log_gate, pool,
):
    """The dense system again, from product moments in the unit box.

    With phi_k = T_k phi (``legendre_frame_change``), the block of nodes
    (k, l) is T_k B_kl T_l^T, where B_kl = sum_d s_d pi_k pi_l phi phi^T
    depends on the data only through the moments
    mu_kl = sum_d s_d pi_k pi_l psi of the basis of twice the degree
    (``legendre_products``), for the overlapping pairs only: BLAS products
    costing n K^2 P / 2 flops against n K^2 M^2 / 2, with P / M^2 = 0.15
    for degree 3 in 5-D (the default) and 0.13 for degree 4 in 3-D.
    Friedman 1 5-D at n = 1e4, one thread: 0.25 s -> 0.07 s. Exact up to
    round-off, which the frame change's norm amplifies (MAX_FRAME_CHANGE).
    """
    n_nodes = centers.shape[0]
    n_basis, n_targets = recipe.shape[0], Y.shape[1]
    first, second = np.nonzero(overlaps)  # upper triangle: k <= l

    def block_gates(rows):
        log_gate = block_log_gates(rows)
        return np.where(carries_gate(log_gate, min_log_gate), np.exp(log_gate), 0.0)

    box_grams, box_rhs = _box_normal_equations(
        X, Y, sample_weight, block_gates, degree, pool, pairs=(first, second)
    )
    pair_blocks = frame_change[first] @ box_grams @ np.swapaxes(frame_change[second], 1, 2)
    matrix = np.zeros((n_nodes, n_basis, n_nodes, n_basis))
    matrix[second, :, first, :] = np.swapaxes(pair_blocks, 1, 2)
    matrix[first, :, second, :] = pair_blocks
    size = n_nodes * n_basis
    return matrix.reshape(size, size), (frame_change @ box_rhs).reshape(size, n_targets)


def _moment_normal_equations(
    frame_change, X, Y, sample_weight, resp, degree, min_resp, pool
):
    """``assemble_normal_equations`` from moments in the unit box.

    Node k's Gram matrix is T_k B_k T_k^T with B_k = sum_d s_d w_dk phi
    phi^T, from the moments sum_d s_d w_dk psi: one BLAS product of the
    (rows, K) responsibilities with the (rows, P) basis, where the kernel
    does n K M^2 / 2 multiply-adds (see ``_moment_blended_system``).
    """

    def block_weights(rows):
        weights = resp[rows]
        return np.where(weights > min_resp, weights, 0.0)

    box_grams, box_rhs = _box_normal_equations(
        X, Y, sample_weight, block_weights, degree, pool
    )
    gram = frame_change @ box_grams @ np.swapaxes(frame_change, 1, 2)
    return _symmetric(gram), frame_change @ box_rhs


def _box_normal_equations(
    X, Y, sample_weight, block_weights, degree, pool, pairs=None
):
    """Normal equations in the unit box's basis phi, for weights w = block_weights(rows):

        grams[k] = sum_d s_d w_dk phi(x_d) phi(x_d)^T           (pairs None)
        grams[p] = sum_d s_d w_d,first[p] w_d,second[p] phi(x_d) phi(x_d)^T
        rhs[k]   = sum_d s_d w_dk phi(x_d) y_d^T

    for the columns k of w, or the pairs = (first, second) of columns.
    Shapes (K or pairs, M, M) and (K, M, T). The Gram matrices come from
    the moments of the basis psi of twice the degree (whose first M
    functions are phi) through ``legendre_products``; those of a column
    with itself are symmetrized.
    """
    n_samples, n_features = X.shape
    n_targets = Y.shape[1]
    products, product_recipe = legendre_products(n_features, degree)
    n_products = product_recipe.shape[0]
    n_basis = comb(n_features + degree, degree)
    if pairs is not None:
        first, second = pairs
        # pairs whose (rows, pairs) weight products are formed at once
        pair_chunks = row_blocks(first.size, max(1, PAIR_PRODUCT_ENTRIES // DESIGN_ROWS))
    box_center, box_scale = np.zeros(n_features), np.ones(n_features)

    def block(rows):
        moments = rhs = 0.0  # arrays from the first run of rows on
        psi = np.empty((n_products, DESIGN_ROWS))
        local = np.empty((n_features, 2 * degree + 1, DESIGN_ROWS))
        for start in range(rows.start, rows.stop, DESIGN_ROWS):
            part = slice(start, min(start + DESIGN_ROWS, rows.stop))
            weights = block_weights(part)
            n_part = weights.shape[0]
            weighted_psi = psi[:, :n_part]
            _kernels.basis_columns(
                X, np.arange(part.start, part.stop), box_center, box_scale,
                product_recipe, 2 * degree, sample_weight[part], local, weighted_psi,
            )
            if pairs is None:
                moments = moments + weights.T @ weighted_psi.T
            else:
                moments = moments + _pair_moments(weights, first, second, pair_chunks, weighted_psi)
            weighted_Y = (weights[:, :, None] * Y[part][:, None, :]).reshape(n_part, -1)
            rhs = rhs + weighted_psi[:n_basis] @ weighted_Y
        return moments, rhs

    moments, rhs = sum_row_blocks(block, n_samples, pool)
    grams = (products @ moments.T).T.reshape(-1, n_basis, n_basis)
    diagonal = slice(None) if pairs is None else first == second
    grams[diagonal] = _symmetric(grams[diagonal])
    return grams, rhs.reshape(n_basis, -1, n_targets).transpose(1, 0, 2)


def _pair_moments(weights, first, second, pair_chunks, weighted_psi):
    """sum over rows of w_first[p] w_second[p] psi, a chunk of pairs at a time."""
    moments = np.empty((first.size, weighted_psi.shape[0]))
    for chunk in pair_chunks:
        products = weights[:, first[chunk]] * weights[:, second[chunk]]
        moments[chunk] = products.T @ weighted_psi.T
    return moments


def _symmetric(matrices):
    """Stacked matrices made exactly symmetric (round-off breaks it slightly)."""
    return 0.5 * (matrices + np.swapaxes(matrices, 1, 2))


def carries_gate(log_gate, min_log_gate):
    """Where a node's gate enters the polish: within min_log_gate of the row's largest."""
    return log_gate >= log_gate.max(axis=1, keepdims=True) + min_log_gate


def _sparse_blended_system(
    overlaps, X, Y, sample_weight, block_log_gates, centers, scales, recipe,
    degree, min_log_gate, pool,
):
    """The same system, block-sparse: one (M, M) block per overlapping pair."""
    n_nodes, n_basis = centers.shape[0], recipe.shape[0]
    n_targets = Y.shape[1]
    first, second = np.nonzero(overlaps)
    pair_id = np.full((n_nodes, n_nodes), -1, dtype=np.int64)
    pair_id[first, second] = np.arange(first.size)

    def block(rows):
        blocks = np.zeros((first.size, n_basis, n_basis))
        rhs = np.zeros((n_nodes, n_basis, n_targets))
        _kernels.blended_normal_equations(
            X[rows], Y[rows], sample_weight[rows], block_log_gates(rows),
            centers, scales, recipe, degree, min_log_gate, pair_id, blocks, rhs,
        )
        return blocks, rhs

    blocks, rhs = sum_row_blocks(block, X.shape[0], pool)
    diagonal = first == second
    blocks[diagonal] = mirror_upper(blocks[diagonal])  # kernel wrote upper halves

    offsets = np.arange(n_basis)
    rows = (first[:, None, None] * n_basis + offsets[None, :, None]).repeat(n_basis, 2)
    cols = (second[:, None, None] * n_basis + offsets[None, None, :]).repeat(n_basis, 1)
    off_diagonal = ~diagonal
    size = n_nodes * n_basis
    matrix = sparse.coo_array(
        (
            np.concatenate([blocks.ravel(), blocks[off_diagonal].ravel()]),
            (
                np.concatenate([rows.ravel(), cols[off_diagonal].ravel()]),
                np.concatenate([cols.ravel(), rows[off_diagonal].ravel()]),
            ),
        ),
        shape=(size, size),
    )
    return matrix, rhs
