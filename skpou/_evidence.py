"""The Bayesian root: one expert of high degree whose coefficients have a
Gaussian prior, its hyperparameters chosen by the evidence.

With few rows, or noise, one polynomial of high degree under a prior that
shrinks its higher Legendre coefficients beats any least-squares expert a
held-out split or leave-one-out errors choose a degree for: the prior
keeps every degree and lets the data decide how far each feature's
coefficients reach (doc/user_guide, "How the fit chooses its resolution").
The model (MacKay 1992, "Bayesian interpolation"; Rasmussen & Williams
2006, sections 2.1 and 5.4):

    y_d = phi(x_d)^T c + e_d,    e_d ~ N(0, sigma^2 / s_d),
    c_m ~ N(0, lambda_m),        lambda_m = a prod_j r_j^(alpha_mj),

phi the orthonormal Legendre basis of total degree <= D on the unit box
(the scaled inputs' box), alpha_m its multi-index, s_d the sample weights
scaled to sum to the number of distinct rows (``NormalEquations``), and
targets standardized. An analytic function's
Legendre coefficients decay geometrically with the degree, at a rate set by
how far it extends analytically in each variable: r_j is that rate per
feature (automatic relevance determination: a feature the target ignores
gets r_j -> 0), a the amplitude. The hyperparameters theta = (log a,
log sigma^2, log r) maximize the log marginal likelihood (type-II maximum
likelihood) by L-BFGS-B from a few starts, with its exact gradient (the
"effective number of parameters" identities of MacKay's paper). Several
outputs share theta (their evidences add).

Everything is computed from the normal equations G = sum_d s_d phi phi^T,
b = sum_d s_d phi y_d^T and sum_d s_d y_d^2, so the rows are passed once
(streamed out of core); each evaluation of the evidence costs two
triangular factorizations of size M.
"""

from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.linalg import cho_solve, lapack, solve_triangular
from scipy.optimize import minimize

from ._basis import Basis, IndexSetBasis, basis_values
from ._experts import block_normal_equations, mirror_upper, normal_equations
from ._tree import PartitionTree

# The search's first basis: the highest total degree whose basis has at
# most TOTAL_DEGREE_BASIS functions, up to MAX_DEGREE. Its rates then shape
# an anisotropic set of at most ANISOTROPIC_BASIS functions (degree up to
# MAX_DEGREE in each feature), kept where its evidence is greater. Each
# evaluation of the evidence factors an M x M matrix: about 0.1 s at
# M = 1000.
TOTAL_DEGREE_BASIS = 500
ANISOTROPIC_BASIS = 1000
# Neither basis has more than this many functions per row (at least
# MIN_BASIS): a prior lets a basis outgrow the rows, but the functions the
# rows cannot tell apart only cost time (on 100 rows of a 3-D target, 1000
# functions gave the error of 455).
BASIS_PER_ROW = 4
MIN_BASIS = 30
MAX_DEGREE = 24
# Rates above exp(-MIN_DECAY) count as exp(-MIN_DECAY) when the anisotropic
# set is drawn (a rate of 1 or more would give a feature no degree bound).
MIN_DECAY = 0.1
# The hyperparameters are searched on at most this many of the rows
# (evenly spaced in the canonical order); the posterior uses all.
EVIDENCE_ROWS = 10_000
# Bounds of the hyperparameters (targets standardized): the noise variance
# at least MIN_NOISE of the targets' (below it the system's round-off, not
# the data, would decide the fit), the amplitude and rates within wide
# bounds that no smooth target reaches.
MIN_NOISE = 1e-12
LOG_AMPLITUDE_BOUNDS = (-20.0, 10.0)
LOG_RATE_BOUNDS = (-20.0, 2.0)
# Starting noise variances of the first search (the evidence can have a
# local optimum that explains the data as noise).
START_NOISES = (1e-1, 1e-4, 1e-8)
START_RATE = 0.3
MAX_ITERATIONS = 200


@dataclass
class Prior:
    """The evidence's hyperparameters: ``log_amplitude``, ``log_noise``
    (log sigma^2 in standardized units, for a row of scaled weight 1) and
    ``log_rates`` (n_features,)."""

    log_amplitude: float
    log_noise: float
    log_rates: np.ndarray

    def log_variances(self, powers):
        """log lambda_m of each basis function (M,), ``powers`` (M, d)."""
        return self.log_amplitude + powers @ self.log_rates

    @property
    def noise(self):
        return float(np.exp(self.log_noise))

    def theta(self):
        return np.concatenate([[self.log_amplitude, self.log_noise], self.log_rates])

    @classmethod
    def from_theta(cls, theta):
        return cls(float(theta[0]), float(theta[1]), np.array(theta[2:], dtype=float))


def basis_budget(limit, n_rows):
    """The most functions a basis may have for ``n_rows`` rows."""
    return min(limit, max(BASIS_PER_ROW * n_rows, MIN_BASIS))


def total_degree_basis(n_features, size=TOTAL_DEGREE_BASIS):
    """The first search's basis: the highest total degree (at least 1)
    within ``size`` functions and MAX_DEGREE."""
    degree = 1
    while degree < MAX_DEGREE and comb(n_features + degree + 1, degree + 1) <= size:
        degree += 1
    return Basis(n_features, degree)


def anisotropic_basis(log_rates, size=ANISOTROPIC_BASIS):
    """The multi-indices of largest prior variance: {a : sum_j a_j w_j <= L},
    w_j = max(-log r_j, MIN_DECAY), a_j <= MAX_DEGREE, with the largest L
    that keeps at most ``size`` of them (an ``IndexSetBasis``). Features
    whose coefficients decay fast get low degrees; those the target ignores
    (r_j -> 0) none."""
    decay = np.maximum(-np.asarray(log_rates, dtype=float), MIN_DECAY)
    order = np.argsort(decay)  # slow decay first: the enumeration stays shallow

    def indices(level, limit):
        """The set at level L, or None if it has more than ``limit``."""
        found = []

        def extend(prefix, feature, budget):
            if len(found) > limit:
                return
            if feature == decay.size:
                found.append(prefix)
                return
            w = decay[order[feature]]
            for power in range(min(MAX_DEGREE, int(budget / w + 1e-9)) + 1):
                extend(prefix + (power,), feature + 1, budget - power * w)

        extend((), 0, level)
        return None if len(found) > limit else found

    low, high = 0.0, float(decay.max() * MAX_DEGREE * decay.size)
    for _ in range(30):  # bisection on L
        middle = 0.5 * (low + high)
        if indices(middle, size) is None:
            high = middle
        else:
            low = middle
    powers = np.empty((0, decay.size), dtype=np.int64)
    found = indices(low, size)
    powers = np.zeros((len(found), decay.size), dtype=np.int64)
    powers[:, order] = np.array(found, dtype=np.int64)
    return IndexSetBasis.from_powers(powers)


@dataclass
class NormalEquations:
    """G (M, M), b (M, T), sum_d s_d y_d^2 per output (T,) and the weight
    n = sum_d s_d (``rows``), with the sample weights scaled by ``scale``
    to sum to the number of distinct rows (out of core, of rows): an
    integer weight then equals repeating the row, and scaling all weights
    changes nothing (``TrainingData.n_distinct``)."""

    gram: np.ndarray
    rhs: np.ndarray
    squares: np.ndarray
    rows: float
    scale: float


def root_normal_equations(data, basis, threads):
    """The root's ``NormalEquations`` on the unit box over all rows of
    ``data`` (a ``TrainingData``, or chunks out of core): from moments
    where ``skpou._experts.normal_equations`` finds that cheaper (in memory,
    total-degree bases), else by the kernel, streamed."""
    n_features = data.X.shape[1]
    box = np.zeros((1, n_features)), np.ones((1, n_features))
    out_of_core = getattr(data, "out_of_core", False)
    rows = data.n_samples if out_of_core else data.n_distinct
    scale = rows / threads.total(data.sample_weight)
    if isinstance(basis, Basis) and not out_of_core:
        weights = scale * data.sample_weight
        gram, rhs = normal_equations(
            data.X, data.Y, weights, np.ones((data.n_samples, 1)), *box, basis, threads
        )
        return NormalEquations(gram[0], rhs[0], weights @ data.Y**2, float(rows), scale)

    def block(X, Y, sample_weight):
        weights = scale * sample_weight
        gram, rhs = block_normal_equations(
            X, Y, weights, np.ones((X.shape[0], 1)), *box, basis
        )
        return gram, rhs, weights @ Y**2

    gram, rhs, squares = threads.sum(block, data.X, data.Y, data.sample_weight)
    return NormalEquations(mirror_upper(gram)[0], rhs[0], squares, float(rows), scale)


def _negative_log_evidence(theta, equations, powers):
    """-log p(y | theta) (up to a constant) and its gradient in theta.

    With A = G + sigma^2 Lambda^-1 = L L^T, m = A^-1 b the posterior mean,
    Sigma = sigma^2 A^-1 its covariance and R = sum_d s_d |y_d - phi_d^T m|^2:

        2 nle = R / sigma^2 + m^T Lambda^-1 m + log|A| - M log sigma^2
                + sum log lambda + n log sigma^2          (per output)
        d nle / d log lambda_m = (1 - (Sigma_mm + m_m^2) / lambda_m) / 2
        d nle / d log sigma^2  = (n - R / sigma^2 - gamma) / 2,
        gamma = M - sum_m Sigma_mm / lambda_m  (the parameters the data determine).
    """
    prior = Prior.from_theta(theta)
    log_var = prior.log_variances(powers)
    noise = prior.noise
    n_basis = powers.shape[0]
    n_targets = equations.rhs.shape[1]
    ridge = np.exp(np.minimum(prior.log_noise - log_var, 700.0))
    matrix = equations.gram + np.diag(ridge)
    try:
        factor = np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return np.inf, np.zeros_like(theta)
    mean = cho_solve((factor, True), equations.rhs)
    inverse_factor = _inverse_lower(factor)
    inverse_diagonal = np.einsum("ij,ij->j", inverse_factor, inverse_factor)
    fitted = (equations.rhs * mean).sum(axis=0)
    residual = equations.squares - fitted  # R + sigma^2 m^T Lambda^-1 m, per output
    log_det = 2.0 * np.log(np.diag(factor)).sum()
    value = 0.5 * (residual.sum() / noise + n_targets * (
        log_det + (equations.rows - n_basis) * prior.log_noise + log_var.sum()
    ))
    # Sigma_mm / lambda_m = ridge_m * A^-1_mm; m_m^2 / lambda_m summed over outputs
    shrunk = ridge * inverse_diagonal
    explained = (mean**2).sum(axis=1) * ridge / noise
    grad_log_var = 0.5 * (n_targets * (1.0 - shrunk) - explained)
    weighted_residual = residual.sum() - noise * (explained.sum())
    gamma = n_basis - shrunk.sum()
    grad_log_noise = 0.5 * (n_targets * (equations.rows - gamma) - weighted_residual / noise)
    gradient = np.concatenate([[grad_log_var.sum(), grad_log_noise], powers.T @ grad_log_var])
    return float(value), gradient


def _inverse_lower(factor):
    """L^-1 of a lower-triangular L (LAPACK trtri: a third of the flops of a
    triangular solve with the identity)."""
    inverse, info = lapack.dtrtri(factor, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return np.tril(inverse)


def maximize_evidence(equations, basis, start=None):
    """The ``Prior`` of greatest evidence for these normal equations, from
    ``start`` (a ``Prior``) or from START_NOISES, and its negative log
    evidence (inf if every start was singular)."""
    powers = basis.powers.astype(float)
    n_features = basis.n_features
    bounds = ([LOG_AMPLITUDE_BOUNDS, (np.log(MIN_NOISE), np.log(10.0))]
              + [LOG_RATE_BOUNDS] * n_features)
    if start is not None:
        starts = [start.theta()]
    else:
        starts = [np.concatenate([[0.0, np.log(noise)], np.full(n_features, np.log(START_RATE))])
                  for noise in START_NOISES]
    best = None
    for theta in starts:
        result = minimize(_negative_log_evidence, theta, args=(equations, powers),
                          jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": MAX_ITERATIONS})
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        return Prior(0.0, np.log(10.0), np.full(n_features, np.log(START_RATE))), np.inf
    return Prior.from_theta(best.x), float(best.fun)


def search(data, threads):
    """The root's basis and ``Prior``: the evidence's maximum on the
    total-degree basis, then on the anisotropic set its rates draw
    (``anisotropic_basis``), whichever has the greater evidence (Bayesian
    model selection between the two bases). On at most EVIDENCE_ROWS rows."""
    if data.n_samples > EVIDENCE_ROWS:
        data = data.rows(np.linspace(0, data.n_samples - 1, EVIDENCE_ROWS).astype(np.intp))
    n_rows = data.n_distinct
    basis = total_degree_basis(data.X.shape[1], basis_budget(TOTAL_DEGREE_BASIS, n_rows))
    prior, value = maximize_evidence(root_normal_equations(data, basis, threads), basis)
    shaped = anisotropic_basis(prior.log_rates, basis_budget(ANISOTROPIC_BASIS, n_rows))
    if set(shaped.powers_key) == set(map(tuple, basis.powers.tolist())):
        return basis, prior
    shaped_prior, shaped_value = maximize_evidence(
        root_normal_equations(data, shaped, threads), shaped, prior
    )
    if shaped_value < value:
        return shaped, shaped_prior
    return basis, prior


def posterior(equations, prior, basis):
    """Posterior mean (M, T) and the Cholesky factor L of
    A = G + sigma^2 Lambda^-1 (the covariance is sigma^2 A^-1)."""
    log_var = prior.log_variances(basis.powers.astype(float))
    ridge = np.exp(np.minimum(prior.log_noise - log_var, 700.0))
    factor = np.linalg.cholesky(equations.gram + np.diag(ridge))
    return cho_solve((factor, True), equations.rhs), factor


def residuals_and_leverages(factor, rows, basis, coef, scale):
    """Residuals (n, T) and leverages (n,) at ``rows`` (a ``TrainingData``
    of rows the root was fitted on): h_d = s_d phi_d^T A^-1 phi_d, with s_d
    the weight scaled as in the fit; the error without row d is
    r_d / (1 - h_d) with the prior held fixed (as for ridge regression)."""
    design = basis_values(rows.X, basis)
    whitened = solve_triangular(factor, design.T, lower=True, check_finite=False)
    leverages = scale * rows.sample_weight * np.einsum("ij,ij->j", whitened, whitened)
    return rows.Y - design @ coef, leverages


def root_tree(data, gates, threads):
    """The Bayesian root fitted to ``data``: a one-node ``PartitionTree``
    with the ``search``'s basis, its ``prior`` and the posterior mean as
    the expert."""
    basis, prior = search(data, threads)
    tree = PartitionTree(basis, gates)
    tree.prior = prior
    equations = root_normal_equations(data, basis, threads)
    _set_posterior(tree, equations, prior)
    return tree


def refit(tree, data, threads, calibration=None):
    """The Bayesian root's final fit on all rows of ``data``: the evidence
    maximized again from the tree's ``prior`` (with every row), the
    posterior mean, the noise variance and the coefficients' posterior
    covariance (for ``predict(return_std=True)``). Returns the residuals
    (n, T) and leverages (n,) at the rows ``calibration`` (or None), for
    the leave-one-out calibration of the predictive variance
    (``skpou._multilevel.calibrate_to_leave_one_out``)."""
    equations = root_normal_equations(data, tree.basis, threads)
    prior, _ = maximize_evidence(equations, tree.basis, start=tree.prior)
    tree.prior = prior
    factor = _set_posterior(tree, equations, prior)
    n_targets = equations.rhs.shape[1]
    tree.noise_var = np.full((1, n_targets), prior.noise)
    inverse_factor = _inverse_lower(factor)
    covariance = prior.noise * (inverse_factor.T @ inverse_factor)
    tree.coef_cov = np.broadcast_to(
        covariance, (1, n_targets) + covariance.shape
    ).copy()
    if calibration is None:
        return None
    return residuals_and_leverages(
        factor, calibration, tree.basis, tree.levels[0].coef[0], equations.scale
    )


def _set_posterior(tree, equations, prior):
    """Set the root's expert (unit-box frame, posterior mean, noise);
    returns the Cholesky factor of A."""
    mean, factor = posterior(equations, prior, tree.basis)
    root = tree.levels[0]
    n_features = tree.basis.n_features
    root.centers, root.scales = np.zeros((1, n_features)), np.ones((1, n_features))
    root.coef = mean[None]
    root.log_var = np.full((1, mean.shape[1]), prior.log_noise)
    return factor
