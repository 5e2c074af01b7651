"""The experts' polynomial basis and their local frames.

Every expert is a polynomial of total degree <= m in d variables, written in
the tensor-product orthonormal Legendre basis

    phi_a(z) = prod_f sqrt(2 a_f + 1) P_{a_f}(z_f),   |a| <= m,

of M = C(d + m, m) functions, evaluated in the expert's own frame
z = (x - center) / scale (x already scaled to [-1, 1]^d): every local
least-squares problem then stays well conditioned however small its
partition is. The basis functions are ordered by total degree, so the
degree-m basis is the first M functions of any higher-degree basis.
(The Bayesian root alone, ``skpou._evidence``, may instead use an
anisotropic set of multi-indices: ``IndexSetBasis``.)
"""

from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import combinations_with_replacement
from math import comb

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy import sparse
from scipy.special import eval_legendre

# Normal equations (the experts' and the dense polish's) are formed from
# product moments in the unit box only when no expert's basis, rewritten in
# the box's basis, has a row of larger 2-norm than this (and moments save
# flops: ``moment_frame_change``). Round-off in the matrices then grows by at
# most its square over a direct product's (to ~1e-10 relative); a bound of
# 1e4 lets Cholesky fail on wide, high-degree frames (3-D, degree 6).
MAX_FRAME_CHANGE = 1e3


@dataclass(frozen=True)
class Basis:
    """The total-degree Legendre basis of every expert.

    ``powers`` (M, d): the multi-index a of each function; ``recipe``
    (M, 3): how the kernels build each function from an earlier one.
    """

    n_features: int
    degree: int

    @property
    def powers(self):
        return total_degree_powers(self.n_features, self.degree)

    @property
    def recipe(self):
        return _recipe(self.n_features, self.degree)

    @property
    def size(self):
        return comb(self.n_features + self.degree, self.degree)


@dataclass(frozen=True)
class IndexSetBasis:
    """A Legendre basis on a downward-closed set of multi-indices, ``powers``
    (M, d) in order of total degree (any such set has a ``basis_recipe``).

    The interface of ``Basis``, for the Bayesian root's anisotropic sets
    (``skpou._evidence``). ``degree`` is the highest power of any one
    feature (what the kernels tabulate Legendre polynomials to); the
    highest total degree is ``powers.sum(axis=1).max()``. Its normal
    equations come from the kernel: the moment route assumes a total-degree
    basis.
    """

    powers_key: tuple

    @classmethod
    def from_powers(cls, powers):
        powers = np.asarray(powers, dtype=np.int64)
        order = np.lexsort((np.arange(powers.shape[0]), powers.sum(axis=1)))
        return cls(tuple(map(tuple, powers[order].tolist())))

    @cached_property
    def powers(self):
        return np.array(self.powers_key, dtype=np.int64)

    @property
    def n_features(self):
        return len(self.powers_key[0])

    @cached_property
    def degree(self):
        return int(self.powers.max())

    @cached_property
    def recipe(self):
        return basis_recipe(self.powers)

    @property
    def size(self):
        return len(self.powers_key)


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


@lru_cache(maxsize=16)
def _recipe(n_features, degree):
    return basis_recipe(total_degree_powers(n_features, degree))


def basis_values(X, basis):
    """The basis functions at rows X in the unit box's frame, shape (n, M)."""
    legendre = _orthonormal_legendre(basis.degree, X.T)  # (degree + 1, d, n)
    values = np.ones((X.shape[0], basis.size))
    for feature, row in enumerate(basis.powers.T):
        values *= legendre[row, feature].T
    return values


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
    exact for it), non-zero only for c = |a - b|, |a - b| + 2, ..., a + b;
    products of variables multiply, so row i M + j holds the product over
    features of those terms: prod_f (min(a_f, b_f) + 1) entries, every one
    of them a function of psi (|c| <= |a| + |b| <= 2 * degree). They are
    generated feature by feature for all pairs at once (a dense (M, P) block
    per row took minutes from 9 dimensions on).
    """
    powers = total_degree_powers(n_features, degree)
    product_powers = total_degree_powers(n_features, 2 * degree)
    n_basis = powers.shape[0]
    nodes, weights = leggauss(2 * degree + 1)
    q = _orthonormal_legendre(2 * degree, nodes)
    a, b, c = np.ogrid[: degree + 1, : degree + 1, : 2 * degree + 1]
    allowed = ((a + b + c) % 2 == 0) & (c <= a + b) & (a <= b + c) & (b <= a + c)
    low = q[: degree + 1]
    linearization = np.where(
        allowed, np.einsum("ag,bg,cg,g->abc", low, low, q, weights / 2), 0.0
    )
    # One entry per (row, multi-index c) so far; c is kept as a number in
    # base 2 * degree + 1, first feature most significant.
    row = np.arange(n_basis * n_basis)
    value = np.ones(row.size)
    code = np.zeros(row.size, dtype=np.int64)
    for f in range(n_features):
        first, second = powers[row // n_basis, f], powers[row % n_basis, f]
        n_terms = np.minimum(first, second) + 1
        entry = np.repeat(np.arange(row.size), n_terms)
        term = np.arange(entry.size) - np.repeat(np.cumsum(n_terms) - n_terms, n_terms)
        c = np.abs(first - second)[entry] + 2 * term
        # multiplied in feature order, as a product over features would be
        value = value[entry] * linearization[first[entry], second[entry], c]
        code = code[entry] * (2 * degree + 1) + c
        row = row[entry]
    product_codes = product_powers @ (2 * degree + 1) ** np.arange(n_features - 1, -1, -1)
    by_code = np.argsort(product_codes)
    column = by_code[np.searchsorted(product_codes[by_code], code)]
    order = np.lexsort((column, row))
    indptr = np.zeros(n_basis * n_basis + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n_basis * n_basis), out=indptr[1:])
    products = sparse.csr_array(
        (value[order], column[order], indptr), shape=(n_basis * n_basis, product_powers.shape[0])
    )
    return products, basis_recipe(product_powers)


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


def moment_frame_change(centers, scales, degree):
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


def local_frames(X, weights, sample_weight, min_scale):
    """Centre and half-width of each node's weighted data, per feature."""
    return frames_from_moments(*weighted_moments(X, weights, sample_weight), min_scale)
