"""Hand-written baselines that scikit-learn does not provide."""

import numpy as np

from skpou._basis import total_degree_powers


class PiecewisePolynomialGrid:
    """Discontinuous piecewise polynomial least squares on a uniform grid.

    The DG-like baseline of the paper's curve-aligned 2-D example: the box
    spanned by the training inputs is cut into ``cells_per_axis`` equal
    intervals per feature, and each cell gets its own polynomial of total
    degree ``degree`` (the same space as one POU expert), fitted by
    ``numpy.linalg.lstsq`` to the training points inside the cell. No
    continuity is imposed between cells: it is the L2 projection onto the
    broken polynomial space that a discontinuous Galerkin method of that
    degree uses, computed from samples.
    """

    def __init__(self, cells_per_axis, degree):
        self.cells_per_axis = cells_per_axis
        self.degree = degree

    def _cells(self, X):
        g = self.cells_per_axis
        t = (X - self.low_) / self.width_
        idx = np.clip(np.floor(t * g).astype(np.int64), 0, g - 1)
        flat = np.ravel_multi_index(idx.T, (g,) * X.shape[1])
        local = 2.0 * (t * g - idx) - 1.0  # each cell mapped to [-1, 1]^d
        return flat, local

    def _basis(self, local):
        return np.prod(local[:, None, :] ** self.powers_[None, :, :], axis=2)

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        self.low_ = X.min(axis=0)
        self.width_ = np.where(X.max(axis=0) > self.low_, X.max(axis=0) - self.low_, 1.0)
        self.powers_ = total_degree_powers(X.shape[1], self.degree)
        n_cells = self.cells_per_axis ** X.shape[1]
        flat, local = self._cells(X)
        basis = self._basis(local)
        self.coef_ = np.zeros((n_cells, self.powers_.shape[0]))
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(n_cells + 1))
        for c in range(n_cells):
            rows = order[bounds[c]:bounds[c + 1]]
            if rows.size:
                self.coef_[c] = np.linalg.lstsq(basis[rows], y[rows], rcond=None)[0]
        return self

    def predict(self, X):
        flat, local = self._cells(np.asarray(X, dtype=float))
        return np.einsum("nm,nm->n", self._basis(local), self.coef_[flat])
