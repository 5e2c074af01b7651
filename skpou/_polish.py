"""The polish: all finest experts refitted jointly, gates frozen.

EM fits each expert to its own responsibilities; where gates overlap, the
blended mean sum_k pi_k mu_k is then not the least-squares optimum. The
polish solves for every coefficient at once, the deterministic POU
network's problem (doc/design.md section 6):

    min_c  sum_d s_d |y_d - sum_k pi_k(x_d) phi_k(x_d) . c_k|^2
           + alpha W sum_k |c_k - c_k^EM|^2,           W = sum_d s_d.

Only nodes whose gates overlap couple, so the matrix is block-sparse. Three
routes form it (``polish_route`` chooses): dense from BLAS products of the
blended design rows, dense from product moments in the unit box, or sparse
blocks per overlapping pair. Gates are computed block by block from the
frozen tree, so memory never grows with n_samples times the number of nodes.
"""

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

from ._basis import moment_frame_change
from ._experts import box_normal_equations, mirror_upper, solve_spd
from ._kernels import polish as _kernels

# The polish system is formed densely when at least this share of node pairs
# overlap and it has at most this many unknowns (a 512 MiB matrix). Where
# most pairs overlap, the sparse path is the slower one and holds more
# memory, not less.
DENSE_POLISH_OVERLAP = 0.25
DENSE_POLISH_MAX_UNKNOWNS = 8192
# Rows of the blended design matrix formed at once by the dense route.
DESIGN_ROWS = 1024
# Least ridge of a polish with more unknowns than distinct rows (relative to
# a matrix normalized by the total weight): round-off in the matrix then
# moves the solution by ~1e-8 of its correction, and the data are still
# fitted to ~1e-8.
UNDERDETERMINED_POLISH_RIDGE = 1e-8


def polish_route(share_overlapping, n_unknowns, frame_change):
    """How to form the polish system: "moments", "design" or "sparse".

    Dense when most node pairs overlap and the matrix is small enough:
    from moments where the frames allow it (``moment_frame_change``),
    otherwise from the design rows; block-sparse otherwise.
    """
    if share_overlapping < DENSE_POLISH_OVERLAP or n_unknowns > DENSE_POLISH_MAX_UNKNOWNS:
        return "sparse"
    return "design" if frame_change is None else "moments"


def polish_experts(X, Y, sample_weight, tree, alpha, threads, determined=True):
    """The finest experts' coefficients (K, M, T) that minimize the blended error.

    ``tree`` gives the frozen gates and the EM coefficients, towards which
    the ridge alpha pulls (so nodes the data barely reach keep them). With
    fewer distinct rows than unknowns (``determined=False``) the data fix
    only part of the coefficients and the ridge decides the rest; a ridge
    as small as ``alpha`` would let round-off decide it (a change of eps in
    the matrix moves the solution by eps / alpha), so there it is at least
    UNDERDETERMINED_POLISH_RIDGE.
    """
    level = tree.levels[-1]
    n_nodes, n_basis, n_targets = level.coef.shape
    min_log_gate = tree.min_log_gate

    def block_log_gates(X):
        return tree.log_gates(X, tree.finest)

    def block_overlaps(X):
        overlaps = np.zeros((n_nodes, n_nodes), dtype=np.bool_)
        _kernels.overlapping_pairs(block_log_gates(X), min_log_gate, overlaps)
        return (overlaps,)

    (overlaps,) = threads.sum(block_overlaps, X)  # booleans: the sum is a logical or
    share = overlaps.sum() / (n_nodes * (n_nodes + 1) / 2)
    size = n_nodes * n_basis
    frame_change = None
    if polish_route(share, size, None) != "sparse":
        frame_change = moment_frame_change(level.centers, level.scales, tree.basis.degree)
    route = polish_route(share, size, frame_change)
    system = {"moments": _moment_system, "design": _design_system, "sparse": _sparse_system}
    matrix, rhs = system[route](
        X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads
    )
    total = threads.total(sample_weight)
    if not determined:
        alpha = max(alpha, UNDERDETERMINED_POLISH_RIDGE)
    rhs = rhs.reshape(size, n_targets) / total + alpha * level.coef.reshape(size, n_targets)
    if route == "sparse":
        matrix = (matrix / total + alpha * sparse.eye_array(size)).tocsc()
        solution = splu(matrix).solve(rhs)
    else:
        matrix /= total
        matrix[np.diag_indices(size)] += alpha
        solution = solve_spd(matrix, rhs)
    return solution.reshape(n_nodes, n_basis, n_targets)


def carrying_gate(log_gate, min_log_gate):
    """(rows, K) booleans: where a node's gate enters the polish."""
    out = np.empty(log_gate.shape, dtype=np.bool_)
    _kernels.carrying_gate(log_gate, min_log_gate, out)
    return out


def _design_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """A^T S A and A^T S y for the design rows A[d] = (pi_k(x_d) phi_k(x_d))_k.

    Each run of DESIGN_ROWS rows is formed only for the nodes that carry
    gate somewhere in it: the rows are sorted by x, so a run covers a slab
    of the domain, and with many partitions in low dimensions most nodes
    are zero throughout it. Where every node carries gate everywhere (the
    default tree from 3-D on) nothing is saved.
    """
    level, basis = tree.levels[-1], tree.basis
    n_basis = basis.size
    n_unknowns = level.coef.shape[0] * n_basis

    def block(X, Y, sample_weight):
        gram = np.zeros((n_unknowns, n_unknowns))
        rhs = np.zeros((n_unknowns, Y.shape[1]))
        design = np.empty(DESIGN_ROWS * n_unknowns)
        for start in range(0, X.shape[0], DESIGN_ROWS):
            part = slice(start, min(start + DESIGN_ROWS, X.shape[0]))
            log_gate = block_log_gates(X[part])
            nodes = np.flatnonzero(carrying_gate(log_gate, tree.min_log_gate).any(axis=0))
            columns = (nodes[:, None] * n_basis + np.arange(n_basis)).ravel()
            A = design[: (part.stop - part.start) * columns.size].reshape(-1, columns.size)
            _kernels.blended_design(
                X[part], np.ascontiguousarray(log_gate[:, nodes]), level.centers[nodes],
                level.scales[nodes], basis.recipe, basis.degree, tree.min_log_gate, A,
            )
            root_weight = np.sqrt(sample_weight[part])[:, None]
            A *= root_weight
            # numpy sees A.T @ A and uses BLAS syrk
            _kernels.add_to_submatrix(gram, columns, A.T @ A)
            rhs[columns] += A.T @ (root_weight * Y[part])
        return gram, rhs

    return threads.sum(block, X, Y, sample_weight)


def _moment_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """The dense system again, from product moments in the unit box.

    With phi_k = T_k phi (``legendre_frame_change``), the block of nodes
    (k, l) is T_k B_kl T_l^T, where B_kl = sum_d s_d pi_k pi_l phi phi^T
    depends on the data only through the moments
    mu_kl = sum_d s_d pi_k pi_l psi of the basis of twice the degree,
    for the overlapping pairs only (``box_normal_equations``). Exact up to
    round-off, which the frame change's norm amplifies (MAX_FRAME_CHANGE).
    """
    n_nodes, n_basis, n_targets = tree.levels[-1].coef.shape
    first, second = np.nonzero(overlaps)  # upper triangle: k <= l

    def block_gates(X):
        log_gate = block_log_gates(X)
        return np.where(carrying_gate(log_gate, tree.min_log_gate), np.exp(log_gate), 0.0)

    box_grams, box_rhs = box_normal_equations(
        X, Y, sample_weight, block_gates, (), tree.basis.degree, threads,
        pairs=(first, second),
    )
    pair_blocks = frame_change[first] @ box_grams @ np.swapaxes(frame_change[second], 1, 2)
    matrix = np.zeros((n_nodes, n_basis, n_nodes, n_basis))
    matrix[second, :, first, :] = np.swapaxes(pair_blocks, 1, 2)
    matrix[first, :, second, :] = pair_blocks
    size = n_nodes * n_basis
    return matrix.reshape(size, size), (frame_change @ box_rhs).reshape(size, n_targets)


def _sparse_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """The same system, block-sparse: one (M, M) block per overlapping pair."""
    level, basis = tree.levels[-1], tree.basis
    n_nodes, n_basis, n_targets = level.coef.shape
    first, second = np.nonzero(overlaps)
    pair_id = np.full((n_nodes, n_nodes), -1, dtype=np.int64)
    pair_id[first, second] = np.arange(first.size)

    def block(X, Y, sample_weight):
        blocks = np.zeros((first.size, n_basis, n_basis))
        rhs = np.zeros((n_nodes, n_basis, n_targets))
        _kernels.blended_normal_equations(
            X, Y, sample_weight, block_log_gates(X), level.centers, level.scales,
            basis.recipe, basis.degree, tree.min_log_gate, pair_id, blocks, rhs,
        )
        return blocks, rhs

    blocks, rhs = threads.sum(block, X, Y, sample_weight)
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
