"""The experts' M-step: normal equations and their solves.

The expert M-step of EM is one weighted least-squares problem per node
(doc/design.md section 2),

    (sum_d w_kd phi_k(x_d) phi_k(x_d)^T + alpha I) c_k = sum_d w_kd phi_k(x_d) y_d,

all decoupled. Its normal equations are assembled either by the Numba kernel
(one pass over blocks of rows, threads sharing the blocks) or from moments
of the basis of twice the degree in the unit box, whichever takes fewer
flops (``skpou._basis.moment_frame_change``); the per-node systems are then
solved by batched Cholesky on joblib threads.
"""

from math import comb

import numpy as np
from joblib import effective_n_jobs
from scipy.linalg import cho_factor, cho_solve
from sklearn.utils.parallel import Parallel, delayed

from ._basis import legendre_products, moment_frame_change
from ._kernels import experts as _kernels

# Responsibilities at or below this do not enter the normal equations.
MIN_RESPONSIBILITY = 1e-12
# Below this many flops a joblib dispatch (~10 ms) costs more than the solves.
MIN_PARALLEL_SOLVE_FLOPS = 5e7
# Rows whose basis of twice the degree is evaluated at once by the moment route.
MOMENT_ROWS = 1024
# Bound on the (rows, pairs) weight products the moment route forms at once.
PAIR_PRODUCT_ENTRIES = 1 << 17


def normal_equations(X, Y, sample_weight, resp, centers, scales, basis, threads):
    """Per-node Gram matrices (K, M, M) and right-hand sides (K, M, T).

    Node k weighs row d by sample_weight[d] * resp[d, k], in its frame
    (centers[k], scales[k]). From moments in the unit box where that takes
    fewer flops and the frames are wide enough for its round-off; otherwise
    by the Numba kernel, which skips responsibilities below
    MIN_RESPONSIBILITY.
    """
    frame_change = moment_frame_change(centers, scales, basis.degree)
    if frame_change is not None:
        def block_weights(resp):
            return np.where(resp > MIN_RESPONSIBILITY, resp, 0.0)

        box_grams, box_rhs = box_normal_equations(
            X, Y, sample_weight, block_weights, (resp,), basis.degree, threads
        )
        gram = frame_change @ box_grams @ np.swapaxes(frame_change, 1, 2)
        return symmetric(gram), frame_change @ box_rhs

    def block(X, Y, sample_weight, resp):
        return block_normal_equations(X, Y, sample_weight, resp, centers, scales, basis)

    gram, rhs = threads.sum(block, X, Y, sample_weight, resp)
    return mirror_upper(gram), rhs


def block_normal_equations(X, Y, sample_weight, resp, centers, scales, basis):
    """One row block's normal equations by the kernel (upper triangles only:
    ``mirror_upper`` completes their sum)."""
    gram = np.zeros((resp.shape[1], basis.size, basis.size))
    rhs = np.zeros((resp.shape[1], basis.size, Y.shape[1]))
    _kernels.normal_equations(
        X, Y, sample_weight, resp, centers, scales, basis.recipe, basis.degree,
        MIN_RESPONSIBILITY, gram, rhs,
    )
    return gram, rhs


def box_normal_equations(
    X, Y, sample_weight, block_weights, weight_arrays, degree, threads, pairs=None
):
    """Normal equations in the unit box's basis phi, for w = block_weights(*blocks):

        grams[k] = sum_d s_d w_dk phi(x_d) phi(x_d)^T           (pairs None)
        grams[p] = sum_d s_d w_d,first[p] w_d,second[p] phi(x_d) phi(x_d)^T
        rhs[k]   = sum_d s_d w_dk phi(x_d) y_d^T

    for the columns k of w, or the pairs = (first, second) of columns; w is
    computed from row blocks of ``weight_arrays`` (a tuple of row-aligned
    arrays; X's block if empty). Shapes (K or pairs, M, M) and (K, M, T).
    The Gram matrices come from the moments of the basis psi of twice the
    degree (whose first M functions are phi) through ``legendre_products``:
    n K P / 2 multiply-adds where direct products take n K M^2 / 2; those
    of a column with itself are symmetrized.
    """
    n_features = X.shape[1]
    n_targets = Y.shape[1]
    products, product_recipe = legendre_products(n_features, degree)
    n_products = product_recipe.shape[0]
    n_basis = comb(n_features + degree, degree)
    if pairs is not None:
        first, second = pairs
        # pairs whose (rows, pairs) weight products are formed at once
        step = max(1, PAIR_PRODUCT_ENTRIES // MOMENT_ROWS)
        pair_chunks = [slice(s, s + step) for s in range(0, first.size, step)]
    box_center, box_scale = np.zeros(n_features), np.ones(n_features)

    def block(X, Y, sample_weight, *weight_blocks):
        moments = rhs = 0.0  # arrays from the first run of rows on
        psi = np.empty((n_products, MOMENT_ROWS))
        local = np.empty((n_features, 2 * degree + 1, MOMENT_ROWS))
        for start in range(0, X.shape[0], MOMENT_ROWS):
            part = slice(start, min(start + MOMENT_ROWS, X.shape[0]))
            weights = block_weights(*(w[part] for w in weight_blocks or (X,)))
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

    moments, rhs = threads.sum(block, X, Y, sample_weight, *weight_arrays)
    grams = (products @ moments.T).T.reshape(-1, n_basis, n_basis)
    diagonal = slice(None) if pairs is None else first == second
    grams[diagonal] = symmetric(grams[diagonal])
    return grams, rhs.reshape(n_basis, -1, n_targets).transpose(1, 0, 2)


def _pair_moments(weights, first, second, pair_chunks, weighted_psi):
    """sum over rows of w_first[p] w_second[p] psi, a chunk of pairs at a time."""
    moments = np.empty((first.size, weighted_psi.shape[0]))
    for chunk in pair_chunks:
        products = weights[:, first[chunk]] * weights[:, second[chunk]]
        moments[chunk] = products.T @ weighted_psi.T
    return moments


def weighted_squared_residuals(X, Y, sample_weight, resp, tree_level, basis, threads):
    """Per node and output: sum_d w_kd (y_d - mu_k(x_d))^2 (K, T), and sum_d w_kd (K,)."""
    def block(X, Y, sample_weight, resp):
        out = np.zeros((resp.shape[1], Y.shape[1]))
        _kernels.weighted_squared_residuals(
            X, Y, sample_weight, resp, tree_level.centers, tree_level.scales,
            tree_level.coef, basis.recipe, basis.degree, MIN_RESPONSIBILITY, out,
        )
        return (out,)

    (squared,) = threads.sum(block, X, Y, sample_weight, resp)
    return squared, sample_weight @ resp


def mirror_upper(gram):
    """Symmetric matrices from their upper triangles (kernels write only those)."""
    return np.triu(gram) + np.swapaxes(np.triu(gram, 1), 1, 2)


def symmetric(matrices):
    """Stacked matrices made exactly symmetric (round-off breaks it slightly)."""
    return 0.5 * (matrices + np.swapaxes(matrices, 1, 2))


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


# A system whose Cholesky factor has a diagonal entry below this fraction of
# its largest (condition number above ~1e14) is near singular: an LU or
# Cholesky solve then returns round-off, or fails on an exact zero pivot.
MIN_PIVOT_RATIO = 1e-7


def _solve_batch(gram, rhs):
    """Solves of a stack of symmetric positive semi-definite systems.

    Well-conditioned ones in one batched LU solve (numpy has no batched
    triangular solve, and one LU costs less than two triangular solves
    through the Cholesky factors); indefinite or near-singular ones by the
    minimum-norm eigen-solve (``_eigen_solve``).
    """
    try:
        factor = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        return np.stack([solve_spd(a, b) for a, b in zip(gram, rhs)])
    pivots = np.diagonal(factor, axis1=1, axis2=2)
    singular = pivots.min(axis=1) < MIN_PIVOT_RATIO * pivots.max(axis=1)
    solution = np.empty(rhs.shape)
    if not singular.all():
        try:
            solution[~singular] = np.linalg.solve(gram[~singular], rhs[~singular])
        except np.linalg.LinAlgError:
            # The pivots only bound the condition number from below: an LU
            # pivot can still vanish. Each system alone, robustly.
            singular[:] = True
    for k in np.flatnonzero(singular):
        solution[k] = _eigen_solve(gram[k], rhs[k])
    return solution


def solve_spd(gram, rhs):
    """Solve one symmetric positive semi-definite system, robustly."""
    try:
        return cho_solve(cho_factor(gram, lower=True), rhs)
    except np.linalg.LinAlgError:
        return _eigen_solve(gram, rhs)


def _eigen_solve(gram, rhs):
    """Minimum-norm solution on the numerically positive eigenspace: for
    systems singular or indefinite through round-off."""
    eigval, eigvec = np.linalg.eigh(gram)
    keep = eigval > eigval.max() * 1e-13
    return eigvec[:, keep] @ ((eigvec[:, keep].T @ rhs) / eigval[keep, None])
