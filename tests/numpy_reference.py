"""Plain-numpy versions of what the kernels compute, for the module tests."""

import numpy as np
from numpy.polynomial import legendre


def legendre_basis(Z, powers):
    """Orthonormal Legendre products (n, M) at local coordinates Z (n, d)."""
    out = np.ones((Z.shape[0], powers.shape[0]))
    for m, row in enumerate(powers):
        for i, p in enumerate(row):
            out[:, m] *= legendre.legval(Z[:, i], np.eye(p + 1)[p]) * np.sqrt(2 * p + 1)
    return out


def sibling_log_softmax(logits, child_start):
    """log-softmax of logits (n, K) within each group of siblings."""
    out = np.empty_like(logits)
    for start, stop in zip(child_start[:-1], child_start[1:]):
        group = logits[:, start:stop]
        out[:, start:stop] = group - np.logaddexp.reduce(group, axis=1, keepdims=True)
    return out


def random_problem(n_features, degree, n_nodes, seed=0, n=700):
    """Inputs, two targets, weights, log gates and frames of a random level.

    700 rows make several 256-row column blocks per node, with a remainder.
    """
    from skpou._basis import total_degree_powers

    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, n_features))
    Y = rng.standard_normal((n, 2))
    sample_weight = rng.uniform(0.5, 2.0, n)
    logits = 4.0 * rng.standard_normal((n, n_nodes))
    log_gate = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    centers = rng.uniform(-0.5, 0.5, (n_nodes, n_features))
    scales = rng.uniform(0.5, 2.0, (n_nodes, n_features))
    powers = total_degree_powers(n_features, degree)
    return X, Y, sample_weight, log_gate, centers, scales, powers


def legendre_products_dense(n_features, degree):
    """``skpou._basis.legendre_products`` as first written: a dense (M, P)
    block per basis function, every entry a product over features."""
    from numpy.polynomial.legendre import leggauss
    from scipy import sparse
    from scipy.special import eval_legendre

    from skpou._basis import total_degree_powers

    powers = total_degree_powers(n_features, degree)
    product_powers = total_degree_powers(n_features, 2 * degree)
    nodes, weights = leggauss(2 * degree + 1)
    order = np.arange(2 * degree + 1)[:, None]
    q = np.sqrt(2 * order + 1) * eval_legendre(order, nodes)
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
    return sparse.vstack(rows, format="csr")
