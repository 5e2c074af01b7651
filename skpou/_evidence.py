"""The Bayesian root: one expert of high degree whose coefficients have a
Gaussian prior, its hyperparameters chosen by the evidence.

With few rows, or noise, one polynomial of high degree under a prior that
shrinks its higher Legendre coefficients beats any least-squares expert a
held-out split or leave-one-out errors choose a degree for: the prior
keeps every degree and lets the data decide how far each feature's
coefficients reach (user guide, "The Bayesian root"). The model (MacKay
1992, "Bayesian interpolation"; Rasmussen & Williams 2006, sections 2.1
and 5.4):

    y_d = phi(x_d)^T c + e_d,    e_d ~ N(0, sigma^2 / s_d),
    c_m ~ N(0, lambda_m),        lambda_m = a prod_j r_j^(alpha_mj),

phi the orthonormal Legendre basis on the unit box (the scaled inputs'
box), of total degree <= D or on an anisotropic set of multi-indices
(``anisotropic_basis``), alpha_m its multi-index, s_d the sample weights
scaled as ``NormalEquations`` says, and targets standardized. An analytic
function's Legendre coefficients decay geometrically with the degree, at
a rate set by how far it extends analytically in each variable: r_j is
that rate per feature (automatic relevance determination: a feature the
target ignores gets r_j -> 0; one rate for all with few rows), a the
amplitude. The hyperparameters theta = (log a, log sigma^2, log r)
maximize the log marginal likelihood (type-II maximum likelihood) by
L-BFGS-B from a few starts, with its exact gradient (the "effective
number of parameters" identities of MacKay's paper). Several outputs
share theta (their evidences add).

Everything is computed from the normal equations G = sum_d s_d phi phi^T,
b = sum_d s_d phi y_d^T and sum_d s_d y_d^2, so the rows are passed once
(streamed out of core); each evaluation of the evidence costs a Cholesky
factorization and a triangular inverse of size M.
"""

from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.linalg import cho_solve, lapack, solve_triangular
from scipy.optimize import minimize

from ._basis import Basis, IndexSetBasis, basis_values
from ._data import capped_total
from ._experts import block_normal_equations, mirror_upper, normal_equations
from ._multilevel import LEAST_LEAVE_ONE_OUT_ROOM
from ._tree import PartitionTree

# The search's first basis: the highest total degree whose basis has at
# most TOTAL_DEGREE_BASIS functions, up to MAX_DEGREE. Its rates then shape
# an anisotropic set of at most ANISOTROPIC_BASIS functions (degree up to
# MAX_DEGREE in each feature), kept where its evidence is greater. Each
# evaluation of the evidence factors an M x M matrix and inverts the
# factor: about 0.02 s at M = 1000 (4 s for a 5-D search on 9000 rows).
TOTAL_DEGREE_BASIS = 500
ANISOTROPIC_BASIS = 1000
# Neither basis has more than BASIS_PER_ROW functions per row, nor more
# than one per two rows below FEW_ROWS rows (the total-degree basis has
# degree 1 at least). A prior lets a basis outgrow the rows: the functions
# the rows do not determine keep their prior variance, which the
# predictive variance between the rows needs (100 rows of a 3-D target:
# with 84 functions, 0.89 of new observations within 2 std; with 400, 0.94;
# on 1000 rows in 7-D, 500 functions gave 1.4 times the error of 1000).
# But few rows leave wide margins of the box between the outermost rows and
# its edges, where the evidence cannot tell how fast high degrees decay and
# they grow fast (10 rows in 1-D: degree 23 gave an error of 5 at the
# edges, degree 3 0.04).
BASIS_PER_ROW = 4
FEW_ROWS = 50
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
LOG_RATE_BOUNDS = (-20.0, 0.0)  # decay: a rate above 1 is no prior of a smooth target
# Per-feature rates (automatic relevance determination) only with at least
# this many rows per hyperparameter; fewer rows share one rate: the
# evidence of d + 2 hyperparameters on a handful of rows interpolates them
# (in review, 30 features and 15 rows: a noise variance at its floor, and
# 2-std bands that held none of the test targets; with one rate, all).
ROWS_PER_HYPERPARAMETER = 5
# The Gram matrix gets this much of its rows' count added to its diagonal
# (``_with_round_off_ridge``): formed from moments, its round-off leaves
# eigenvalues of ~-1e-11 relative, which a prior that barely constrains a
# direction would not lift (the search then failed at its first step and
# stopped at its start).
ROUND_OFF_RIDGE = 1e-10
# Starting noise variances of the first search (the evidence can have a
# local optimum that explains the data as noise).
START_NOISES = (1e-1, 1e-4, 1e-8)
START_RATE = 0.3
# L-BFGS-B stops after MAX_ITERATIONS, or once an iteration changes the
# negative log evidence by less than SEARCH_FTOL of it (its scale is the
# rows': 1e-7 of 1e4 nats is 1e-3, far below what tells two priors apart).
MAX_ITERATIONS = 200
SEARCH_FTOL = 1e-7
# Prior variances are at least sigma^2 exp(-MAX_LOG_RIDGE) (the ridge
# sigma^2 / lambda stays finite).
MAX_LOG_RIDGE = 700.0
# The mapped inputs the search also tries (``InputMap``): alpha of the
# Kosloff-Tal-Ezer map. On Franke's function with 1000 rows the plain
# root's error was 190 times larger in the 5% strip along the box's edges
# than inside (3.2e-3 in all, 1.7e-5 inside); mapped, 9.0e-6 in all, and
# the evidence preferred it by 700 nats. Targets whose Legendre
# coefficients decay fast lose by the map (Friedman 1: 1.3e-6 -> 1.3e-3)
# and the evidence rejects it there by thousands of nats. The map is kept
# only where its log evidence is at least MAP_LOG_BAYES_FACTOR greater
# ("very strong" on Jeffreys' scale): on noisy data the two differ by a
# few nats either way, and choices that close moved the error by -25% to
# +18% on the noisy benchmark cells, by chance more often up than down.
MAP_ALPHA = 0.9
MAP_LOG_BAYES_FACTOR = 5.0
# The noise's shape (``fit_noise_shape``): log v(x) a polynomial of total
# degree up to NOISE_SHAPE_MAX_DEGREE, with at most one coefficient per
# NOISE_SHAPE_ROWS_PER_COEFFICIENT calibration rows, and none below
# NOISE_SHAPE_MIN_ROWS rows (a few dozen squared residuals, each a chi^2
# of one degree of freedom, cannot tell a shape from chance).
NOISE_SHAPE_MAX_DEGREE = 3
NOISE_SHAPE_ROWS_PER_COEFFICIENT = 20
NOISE_SHAPE_MIN_ROWS = 100
# Squared errors below this share of their mean count as this share (a
# chi^2 of one degree of freedom falls below it with probability 8e-4).
LEAST_SHAPED_SQUARE = 1e-6


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

    @classmethod
    def from_theta(cls, theta):
        return cls(float(theta[0]), float(theta[1]), np.array(theta[2:], dtype=float))


def basis_budget(limit, n_rows):
    """The most functions a basis may have for ``n_rows`` rows."""
    return min(limit, BASIS_PER_ROW * n_rows if n_rows >= FEW_ROWS else n_rows // 2)


@dataclass
class InputMap:
    """The Kosloff-Tal-Ezer map of the unit box's coordinates,
    t = sin(beta u) / alpha, beta = arcsin(alpha), feature by feature: the
    root's polynomial is in t (Kosloff & Tal-Ezer 1993, "A modified
    Chebyshev pseudospectral method with an O(1/N) time step
    restriction"). A polynomial of high degree resolves finer details
    near the box's edges than inside (its oscillations crowd there), far
    finer than rows spread evenly pin down; in t the resolution is even.
    [-1, 1] maps onto itself; beyond, t continues along its tangent (the
    sine would fold back)."""

    alpha: float

    def __call__(self, X):
        beta = np.arcsin(self.alpha)
        inside = np.clip(X, -1.0, 1.0)
        slope = beta * np.cos(beta) / self.alpha
        return np.sin(beta * inside) / self.alpha + slope * (X - inside)


def _mapped(X, input_map):
    return X if input_map is None else input_map(X)


@dataclass
class NoiseShape:
    """The noise variance's shape over the inputs: the noise at x is
    sigma^2 v(x) / s for a row of scaled weight s, with
    log v(x) = psi(x)^T ``coef`` - ``shift``, psi the Legendre ``basis`` on
    the unit box (``shift``: v averages 1 over the rows it was fitted on).
    Outside [``least``, ``most``], the range log v takes at those rows, it
    is held at the nearer end: a polynomial's growth past the rows says
    nothing of the noise there."""

    basis: Basis
    coef: np.ndarray
    shift: float
    least: float
    most: float

    def relative_variance(self, X):
        """v(x) at the rows of X (n,)."""
        log_v = basis_values(X, self.basis) @ self.coef - self.shift
        return np.exp(np.clip(log_v, self.least, self.most))


def fit_noise_shape(X, squares):
    """The ``NoiseShape`` that the standardized squared leave-one-out
    errors ``squares`` (n, T) at the rows X (n, d) support, or None where a
    constant noise variance explains them best.

    Each z_dt is sigma^2 v(x_d) times a chi^2 of one degree of freedom, so
    log v = psi^T beta maximizes sum_dt -(g_d + z_dt e^-g_d) / 2, g = log v
    (concave in beta: Newton's method, by scipy's trust-region solver); the
    total degree of psi, 0 (a constant) to NOISE_SHAPE_MAX_DEGREE, is the one
    of least Bayesian information criterion (Schwarz 1978): the fit's
    -2 log likelihood plus log(n T) per coefficient. A heteroscedastic
    regression of the residuals, as in feasible generalized least squares.
    """
    n_rows, n_targets = squares.shape
    total = squares.sum(axis=1)
    mean = float(total.mean()) / n_targets
    if not (np.isfinite(mean) and mean > 0):  # an exact fit: no noise to shape
        return None
    # Errors at round-off would pull log v to -inf (a partly exact fit)
    total = np.maximum(total, LEAST_SHAPED_SQUARE * n_targets * mean)

    def objective(beta, design):  # -2 log likelihood, its gradient and Hessian
        g = design @ beta
        scaled = total * np.exp(-g)
        return (float(n_targets * g.sum() + scaled.sum()),
                design.T @ (n_targets - scaled), (design.T * scaled) @ design)

    mean = float(total.mean()) / n_targets
    best = n_rows * n_targets * (np.log(mean) + 1.0), None  # the constant: BIC's first term
    for degree in range(1, NOISE_SHAPE_MAX_DEGREE + 1):
        basis = Basis(X.shape[1], degree)
        if (n_rows < NOISE_SHAPE_MIN_ROWS
                or basis.size * NOISE_SHAPE_ROWS_PER_COEFFICIENT > n_rows):
            break
        design = basis_values(X, basis)
        start = np.linalg.lstsq(design, np.full(n_rows, np.log(mean)), rcond=None)[0]
        try:
            result = minimize(lambda beta: objective(beta, design)[:2], start, jac=True,
                              hess=lambda beta: objective(beta, design)[2],
                              method="trust-exact")
        except (ValueError, np.linalg.LinAlgError):  # overflow on the way: no shape
            continue
        criterion = result.fun + (basis.size - 1) * np.log(n_rows * n_targets)
        if np.isfinite(criterion) and criterion < best[0]:
            best = criterion, (basis, result.x, design @ result.x)
    if best[1] is None:
        return None
    basis, coef, log_v = best[1]
    shift = float(np.log(np.mean(np.exp(log_v - log_v.max()))) + log_v.max())
    return NoiseShape(basis, coef, shift, float(log_v.min() - shift),
                      float(log_v.max() - shift))


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
    size = max(size, 1)  # the constant
    decay = np.maximum(-np.asarray(log_rates, dtype=float), MIN_DECAY)
    order = np.argsort(decay, kind="stable")  # slow decay first
    sorted_decay = decay[order]

    def indices(level, limit):
        """The set at level L (columns: features in ``order``), or None if
        it has more than ``limit``: depth first, on an explicit stack (a
        level per feature that can take degree 1), each index kept as its
        non-zero (position, power) pairs."""
        depth = int(np.searchsorted(sorted_decay, level, side="right"))
        found, stack = [], [(0, 0.0, ())]
        while stack:
            position, used, nonzero = stack.pop()
            if position == depth:
                found.append(nonzero)
                if len(found) > limit:
                    return None
                continue
            w = sorted_decay[position]
            top = min(MAX_DEGREE, int((level - used) / w + 1e-9))
            stack.extend((position + 1, used + power * w,
                          nonzero + ((position, power),) if power else nonzero)
                         for power in range(top, -1, -1))
        powers = np.zeros((len(found), depth), dtype=np.int64)
        for row, nonzero in enumerate(found):
            for position, power in nonzero:
                powers[row, position] = power
        return powers

    low, high = 0.0, float(sorted_decay[-1] * MAX_DEGREE * decay.size)
    for _ in range(30):  # bisection on L
        middle = 0.5 * (low + high)
        if indices(middle, size) is None:
            high = middle
        else:
            low = middle
    found = indices(low, size)
    powers = np.zeros((found.shape[0], decay.size), dtype=np.int64)
    powers[:, order[:found.shape[1]]] = found
    return IndexSetBasis.from_powers(powers)


@dataclass
class NormalEquations:
    """G (M, M) (with ROUND_OFF_RIDGE), b (M, T), sum_d s_d y_d^2 per
    output (T,) and the number of rows n (``rows``), with the sample
    weights scaled by ``scale`` so that their capped values
    (``TrainingData.capped_weight``) have a mean of 1 (out of core, the
    weights themselves): s_d is row d's precision relative to 1 / sigma^2,
    the weights' overall scale changes nothing, and an integer weight
    equals repeating the row (``prepare`` merges equal rows)."""

    gram: np.ndarray
    rhs: np.ndarray
    squares: np.ndarray
    rows: float
    scale: float


def root_normal_equations(data, basis, threads, shape=None, input_map=None):
    """The root's ``NormalEquations`` on the unit box over all rows of
    ``data`` (a ``TrainingData``, or chunks out of core): from moments
    where ``skpou._experts.normal_equations`` finds that cheaper (in memory,
    total-degree bases), else by the kernel, streamed. With a
    ``NoiseShape``, each row's weight is divided by its v(x); with an
    ``InputMap``, the basis is evaluated at the mapped inputs."""
    n_features = data.X.shape[1]
    box = np.zeros((1, n_features)), np.ones((1, n_features))
    out_of_core = getattr(data, "out_of_core", False)
    rows = data.n_samples
    scale = rows / capped_total(data, threads)

    def row_weights(X, sample_weight):
        weights = scale * sample_weight
        return weights if shape is None else weights / shape.relative_variance(X)

    if isinstance(basis, Basis) and not out_of_core:
        weights = row_weights(data.X, data.sample_weight)
        gram, rhs = normal_equations(
            _mapped(data.X, input_map), data.Y, weights, np.ones((data.n_samples, 1)), *box,
            basis, threads,
        )
        return _with_round_off_ridge(
            NormalEquations(gram[0], rhs[0], weights @ data.Y**2, float(rows), scale)
        )

    def block(X, Y, sample_weight):
        weights = row_weights(X, sample_weight)
        gram, rhs = block_normal_equations(
            _mapped(X, input_map), Y, weights, np.ones((X.shape[0], 1)), *box, basis
        )
        return gram, rhs, weights @ Y**2

    gram, rhs, squares = threads.sum(block, data.X, data.Y, data.sample_weight)
    return _with_round_off_ridge(
        NormalEquations(mirror_upper(gram)[0], rhs[0], squares, float(rows), scale)
    )


def _with_round_off_ridge(equations):
    """G + ROUND_OFF_RIDGE n I: n the rows, the diagonal of G for rows of
    capped weight 1 spread over the box (the basis is orthonormal there);
    not G's own diagonal, which one row of huge weight would inflate
    until the ridge drowned the other rows."""
    gram = equations.gram
    gram[np.diag_indices_from(gram)] += ROUND_OFF_RIDGE * equations.rows
    return equations


def _negative_log_evidence(theta, equations, rate_powers):
    """-log p(y | theta) (up to a constant) and its gradient in theta =
    (log A, log sigma^2, log rates), the rates' exponents ``rate_powers``
    (M, k), one row per basis function: the multi-indices (a rate per
    feature) or their total degrees (one shared rate).

    With A = G + sigma^2 Lambda^-1 = L L^T, m = A^-1 b the posterior mean,
    Sigma = sigma^2 A^-1 its covariance and R = sum_d s_d |y_d - phi_d^T m|^2:

        2 nle = R / sigma^2 + m^T Lambda^-1 m + log|A| - M log sigma^2
                + sum log lambda + n log sigma^2          (per output)
        d nle / d log lambda_m = (1 - (Sigma_mm + m_m^2) / lambda_m) / 2
        d nle / d log sigma^2  = (n - R / sigma^2 - gamma) / 2,
        gamma = M - sum_m Sigma_mm / lambda_m  (the parameters the data determine).

    Prior variances below sigma^2 e^-700 are held there (their ridge would
    overflow), value and gradient alike.
    """
    log_amplitude, log_noise = theta[0], theta[1]
    raw_log_var = log_amplitude + rate_powers @ theta[2:]
    floor = log_noise - MAX_LOG_RIDGE
    clamped = raw_log_var < floor
    log_var = np.where(clamped, floor, raw_log_var)
    noise = np.exp(log_noise)
    n_basis = rate_powers.shape[0]
    n_targets = equations.rhs.shape[1]
    ridge = np.exp(log_noise - log_var)
    try:
        factor = np.linalg.cholesky(equations.gram + np.diag(ridge))
        inverse_factor = _inverse_lower(factor)
    except np.linalg.LinAlgError:
        return np.inf, np.zeros_like(theta)
    mean = cho_solve((factor, True), equations.rhs)
    inverse_diagonal = np.einsum("ij,ij->j", inverse_factor, inverse_factor)
    fitted = (equations.rhs * mean).sum(axis=0)
    residual = equations.squares - fitted  # R + sigma^2 m^T Lambda^-1 m, per output
    log_det = 2.0 * np.log(np.diag(factor)).sum()
    value = 0.5 * (residual.sum() / noise + n_targets * (
        log_det + (equations.rows - n_basis) * log_noise + log_var.sum()
    ))
    # Sigma_mm / lambda_m = ridge_m * A^-1_mm; m_m^2 / lambda_m summed over outputs
    shrunk = ridge * inverse_diagonal
    explained = (mean**2).sum(axis=1) * ridge / noise
    grad_log_var = 0.5 * (n_targets * (1.0 - shrunk) - explained)
    weighted_residual = residual.sum() - noise * explained.sum()
    gamma = n_basis - shrunk.sum()
    grad_log_noise = 0.5 * (n_targets * (equations.rows - gamma) - weighted_residual / noise)
    grad_log_noise += grad_log_var[clamped].sum()  # held at log sigma^2 - MAX_LOG_RIDGE
    grad_log_var[clamped] = 0.0
    gradient = np.concatenate(
        [[grad_log_var.sum(), grad_log_noise], rate_powers.T @ grad_log_var]
    )
    return float(value), gradient


def _inverse_lower(factor):
    """L^-1 of a lower-triangular L (LAPACK trtri: a third of the flops of a
    triangular solve with the identity)."""
    inverse, info = lapack.dtrtri(factor, lower=1)  # L's zero upper triangle stays zero
    if info != 0:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return inverse


def shares_rates(n_features, n_rows):
    """Whether ``n_rows`` rows get one rate for all features (too few rows
    per hyperparameter for one per feature: ROWS_PER_HYPERPARAMETER)."""
    return n_rows < ROWS_PER_HYPERPARAMETER * (n_features + 2)


def maximize_evidence(equations, basis, start=None, shared=False):
    """The ``Prior`` of greatest evidence for these normal equations, and
    its negative log evidence; one rate for all features if ``shared``.

    L-BFGS-B from ``start`` (a ``Prior``), or from each of START_NOISES.
    If every start fails (a singular system at every start, which the
    round-off ridge should prevent), the first start is returned, with an
    infinite negative log evidence.
    """
    powers = basis.powers.astype(float)
    n_features = basis.n_features
    rate_powers = powers.sum(axis=1, keepdims=True) if shared else powers
    n_rates = rate_powers.shape[1]
    bounds = ([LOG_AMPLITUDE_BOUNDS, (np.log(MIN_NOISE), np.log(10.0))]
              + [LOG_RATE_BOUNDS] * n_rates)
    if start is not None:
        rates = [np.mean(start.log_rates)] if shared else start.log_rates
        starts = [np.concatenate([[start.log_amplitude, start.log_noise], rates])]
    else:
        starts = [np.concatenate([[0.0, np.log(noise)], np.full(n_rates, np.log(START_RATE))])
                  for noise in START_NOISES]
    best = None
    for theta in starts:
        theta = np.clip(theta, *np.array(bounds).T)
        result = minimize(_negative_log_evidence, theta, args=(equations, rate_powers),
                          jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": MAX_ITERATIONS, "ftol": SEARCH_FTOL})
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    theta, value = (starts[0], np.inf) if best is None else (best.x, float(best.fun))
    log_rates = np.broadcast_to(theta[2:], (n_features,)) if shared else theta[2:]
    return Prior(float(theta[0]), float(theta[1]), np.array(log_rates, dtype=float)), value


def search(data, threads):
    """The root's basis, ``Prior`` and ``InputMap`` (or None): the
    evidence's maximum on the total-degree basis, in the plain inputs and
    in the inputs mapped by MAP_ALPHA (kept if its evidence is greater by
    MAP_LOG_BAYES_FACTOR), then, in the inputs chosen, on the anisotropic
    set its rates draw (``anisotropic_basis``), whichever basis has the
    greater evidence (Bayesian model selection between the two). On at
    most EVIDENCE_ROWS rows; also returns the chosen ``NormalEquations``
    where those were all the rows (else None).

    The inputs are chosen on the total-degree basis, the smaller one: on
    the larger, the mapped trial took half of the search (tanh_cos_exp_3d,
    1e4 rows: 3.0 of 5.7 s, for a map the evidence rejected by thousands
    of nats).
    """
    subset = data.n_samples > EVIDENCE_ROWS
    if subset:
        data = data.rows(np.linspace(0, data.n_samples - 1, EVIDENCE_ROWS).astype(np.intp))
    n_features, n_rows = data.X.shape[1], data.n_distinct
    shared = shares_rates(n_features, data.n_samples)
    basis = total_degree_basis(n_features, basis_budget(TOTAL_DEGREE_BASIS, n_rows))
    equations = root_normal_equations(data, basis, threads)
    prior, value = maximize_evidence(equations, basis, shared=shared)
    input_map = InputMap(MAP_ALPHA)
    mapped_equations = root_normal_equations(data, basis, threads, input_map=input_map)
    mapped_prior, mapped_value = maximize_evidence(mapped_equations, basis, prior, shared)
    if mapped_value < value - MAP_LOG_BAYES_FACTOR:
        prior, equations, value = mapped_prior, mapped_equations, mapped_value
    else:
        input_map = None
    shaped = anisotropic_basis(prior.log_rates, basis_budget(ANISOTROPIC_BASIS, n_rows))
    if set(shaped.powers_key) != set(map(tuple, basis.powers.tolist())):
        shaped_equations = root_normal_equations(data, shaped, threads, input_map=input_map)
        shaped_prior, shaped_value = maximize_evidence(shaped_equations, shaped, prior, shared)
        if shaped_value < value:
            basis, prior, equations = shaped, shaped_prior, shaped_equations
    return basis, prior, input_map, None if subset else equations


def posterior(equations, prior, basis):
    """Posterior mean (M, T) and the Cholesky factor L of
    A = G + sigma^2 Lambda^-1 (the covariance is sigma^2 A^-1)."""
    ridge = np.exp(np.minimum(prior.log_noise - prior.log_variances(basis.powers),
                              MAX_LOG_RIDGE))
    factor = np.linalg.cholesky(equations.gram + np.diag(ridge))
    return cho_solve((factor, True), equations.rhs), factor


def leave_one_out(factor, rows, basis, coef, prior, weights, all_rows, input_map=None):
    """Residuals r (n, T) and 1 - h (n,) at ``rows`` (a ``TrainingData`` of
    rows the root was fitted on, all of them if ``all_rows``), h_d the
    leverage s_d phi_d^T A^-1 phi_d (s_d: ``weights`` (n,), as in the fit):
    the error without row d is r_d / (1 - h_d), the prior held fixed (as for
    ridge regression).

    Where the rows are all the rows and no more than the basis functions
    (an interpolating fit: h -> 1), 1 - h comes from the Gaussian-process
    form K = Phi Lambda Phi^T + sigma^2 S^-1 of the same model instead,
    1 - h_d = sigma^2 / s_d [K^-1]_dd and r_d = sigma^2 / s_d [K^-1 y]_d
    (Rasmussen & Williams 2006, eq. 5.12): 1 - h by subtraction would lose
    all its digits there. Otherwise from the factor L of A.
    """
    design = basis_values(_mapped(rows.X, input_map), basis)
    if all_rows and rows.n_samples <= basis.size:
        covariance = (design * np.exp(prior.log_variances(basis.powers))) @ design.T
        covariance[np.diag_indices_from(covariance)] += prior.noise / weights
        try:
            inverse = np.linalg.inv(covariance)
            room = prior.noise / weights * np.diag(inverse)
            if np.all(room > 0):
                return (prior.noise / weights)[:, None] * (inverse @ rows.Y), room
        except np.linalg.LinAlgError:
            pass
    whitened = solve_triangular(factor, design.T, lower=True, check_finite=False)
    leverages = weights * np.einsum("ij,ij->j", whitened, whitened)
    return rows.Y - design @ coef, np.maximum(1.0 - leverages, LEAST_LEAVE_ONE_OUT_ROOM)


def root_tree(data, gates, threads):
    """The Bayesian root fitted to ``data``: a one-node ``PartitionTree``
    with the ``search``'s basis, its ``prior`` and the posterior mean as
    the expert."""
    basis, prior, input_map, equations = search(data, threads)
    tree = PartitionTree(basis, gates)
    tree.prior, tree.input_map = prior, input_map
    if equations is None:  # the search saw some of the rows
        equations = root_normal_equations(data, basis, threads, input_map=input_map)
    _set_posterior(tree, equations, prior)
    return tree


def refit(tree, data, threads, calibration=None):
    """The Bayesian root's final fit on all rows of ``data``: the evidence
    maximized again from the tree's ``prior`` (with every row; the search's
    prior stays if that fails), the posterior mean, the noise variance and
    the coefficients' posterior covariance (for
    ``predict(return_std=True)``). Returns the residuals (n, T) and
    1 - leverage (n,) at the rows ``calibration`` (``leave_one_out``; or
    None), for the leave-one-out calibration of the predictive variance
    (``skpou._multilevel.calibrate_to_leave_one_out``).

    Where the leave-one-out errors at ``calibration`` show the noise
    varying over the inputs (``fit_noise_shape``), the tree keeps that
    ``noise_shape`` for the predictive variance, and the fit is made again
    with each row weighted by 1 / v(x) (feasible generalized least
    squares). That fit is kept where its leave-one-out errors are smaller:
    under noise that varies, it heeds the quiet rows more and its mean is
    better (2-D, noise std 0.02-0.4, 1000 rows: error 0.021-0.040 against
    0.032-0.047); where the errors are the approximation's (noise-free
    data), it down-weights the rows hardest to fit and is worse (Friedman 1,
    1000 rows: 4.7e-6 against 1.4e-6).
    """
    tree.noise_shape = None
    residuals, room, weights = _final_fit(tree, data, threads, calibration)
    if calibration is None:
        return None
    squares = weights[:, None] * residuals**2 / (room[:, None] * tree.prior.noise)
    shape = fit_noise_shape(calibration.X, squares)
    if shape is None:
        return residuals, room
    weighted = tree.copy()
    weighted.noise_shape = shape
    weighted_residuals, weighted_room, _ = _final_fit(weighted, data, threads, calibration)
    if _squared_error(weighted_residuals, weighted_room, calibration) < _squared_error(
            residuals, room, calibration):
        vars(tree).update(vars(weighted))  # the tree is the caller's: updated in place
        return weighted_residuals, weighted_room
    # The unweighted mean and its coefficient covariance sigma^2 A^-1, which
    # assumed a constant noise; the shape still scales the noise term.
    tree.noise_shape = shape
    return residuals, room


def _squared_error(residuals, room, rows):
    """The leave-one-out errors' squared sum, weighted as held-out errors
    are (``TrainingData.capped_weight``)."""
    return float(rows.capped_weight @ ((residuals / room[:, None]) ** 2).sum(axis=1))


def _final_fit(tree, data, threads, calibration):
    """``refit``'s fit with the tree's ``noise_shape``; returns the
    residuals, 1 - leverages and scaled weights at ``calibration`` (None
    each without it)."""
    shape = tree.noise_shape
    equations = root_normal_equations(data, tree.basis, threads, shape, tree.input_map)
    prior, value = maximize_evidence(
        equations, tree.basis, tree.prior, shares_rates(tree.basis.n_features, data.n_samples)
    )
    if np.isfinite(value):
        tree.prior = prior
    factor = _set_posterior(tree, equations, tree.prior)
    n_targets = equations.rhs.shape[1]
    tree.noise_var = np.full((1, n_targets), tree.prior.noise)
    # the covariance sigma^2 A^-1 = R^T R with R = sigma L^-1
    cov_factor = np.sqrt(tree.prior.noise) * _inverse_lower(factor)
    tree.coef_cov_factor = np.broadcast_to(
        cov_factor, (1, n_targets) + cov_factor.shape
    ).copy()
    if calibration is None:
        return None, None, None
    weights = equations.scale * calibration.sample_weight
    if shape is not None:
        weights = weights / shape.relative_variance(calibration.X)
    residuals, room = leave_one_out(
        factor, calibration, tree.basis, tree.levels[0].coef[0], tree.prior, weights,
        calibration.n_samples == data.n_samples, tree.input_map,
    )
    return residuals, room, weights


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
