"""skpou._basis: the Legendre basis, its product table and frame changes."""

import numpy as np
import pytest

from numpy_reference import legendre_basis, legendre_products_dense
from skpou._basis import (
    Basis,
    basis_values,
    legendre_frame_change,
    legendre_products,
    local_frames,
    moment_frame_change,
    total_degree_powers,
)


def test_basis_is_ordered_by_total_degree_and_nested():
    for n_features, degree in [(1, 4), (3, 3), (5, 2)]:
        basis = Basis(n_features, degree)
        powers = basis.powers
        assert powers.shape[0] == basis.size
        assert np.all(np.diff(powers.sum(axis=1)) >= 0)
        # the first functions of a higher degree's basis are this basis
        np.testing.assert_array_equal(
            total_degree_powers(n_features, degree + 2)[: basis.size], powers
        )
        # each recipe row builds a function from an earlier one
        recipe = basis.recipe
        assert np.all(recipe[1:, 0] < np.arange(1, basis.size))


@pytest.mark.parametrize("n_features, degree", [(1, 7), (2, 4), (3, 3), (5, 2)])
def test_basis_values_are_the_orthonormal_legendre_products(n_features, degree):
    X = np.random.default_rng(6).uniform(-1, 1, (300, n_features))
    expected = legendre_basis(X, total_degree_powers(n_features, degree))
    np.testing.assert_allclose(basis_values(X, Basis(n_features, degree)), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_features, degree", [(1, 5), (2, 3), (3, 2)])
def test_legendre_products_and_frame_change_are_identities(n_features, degree):
    """phi_i phi_j = sum_p C[i M + j, p] psi_p, and phi((x - c) / h) = T phi(x)."""
    rng = np.random.default_rng(5)
    X = rng.uniform(-1.5, 1.5, (200, n_features))  # also outside the box
    powers = total_degree_powers(n_features, degree)
    products, _ = legendre_products(n_features, degree)
    phi = legendre_basis(X, powers)
    psi = legendre_basis(X, total_degree_powers(n_features, 2 * degree))
    pairwise = (phi[:, :, None] * phi[:, None, :]).reshape(X.shape[0], -1)
    np.testing.assert_allclose(psi @ products.T, pairwise, atol=1e-11 * np.abs(pairwise).max())

    centers = rng.uniform(-0.5, 0.5, (3, n_features))
    scales = rng.uniform(0.3, 2.0, (3, n_features))
    frame_change = legendre_frame_change(centers, scales, degree)
    for k in range(3):
        local = legendre_basis((X - centers[k]) / scales[k], powers)
        np.testing.assert_allclose(phi @ frame_change[k].T, local,
                                   atol=1e-11 * np.abs(local).max())


@pytest.mark.parametrize(
    "n_features, degree", [(1, 0), (1, 7), (2, 4), (3, 3), (4, 2), (5, 3), (6, 1)]
)
def test_legendre_products_equal_the_dense_construction(n_features, degree):
    """The table built feature by feature for all pairs holds exactly the
    values and sparsity of one built from a dense block per basis function."""
    products, recipe = legendre_products(n_features, degree)
    expected = legendre_products_dense(n_features, degree)
    assert products.shape == expected.shape
    assert products.has_canonical_format
    np.testing.assert_array_equal(products.indptr, expected.indptr)
    np.testing.assert_array_equal(products.indices, expected.indices)
    np.testing.assert_array_equal(products.data, expected.data)  # bit for bit
    np.testing.assert_array_equal(recipe, Basis(n_features, 2 * degree).recipe)


def test_moments_are_chosen_only_where_they_pay_and_frames_are_wide():
    wide = (np.zeros((2, 3)), np.ones((2, 3)))
    assert moment_frame_change(*wide, degree=3) is not None  # 3-D degree 3
    assert moment_frame_change(*wide, degree=1) is None  # too few flops saved
    narrow = (np.zeros((2, 3)), np.full((2, 3), 1e-3))
    assert moment_frame_change(*narrow, degree=3) is None  # round-off


def test_local_frames_map_uniform_data_to_the_unit_box():
    rng = np.random.default_rng(0)
    X = rng.uniform(2.0, 4.0, (20000, 1))
    weights = np.column_stack([X[:, 0] < 3.0, X[:, 0] >= 3.0]).astype(float)
    centers, scales = local_frames(X, weights, np.ones(20000), 1e-6)
    np.testing.assert_allclose(centers[:, 0], [2.5, 3.5], atol=0.01)
    np.testing.assert_allclose(scales[:, 0], [0.5, 0.5], atol=0.01)
