"""The polish: all finest experts refitted jointly, gates frozen.

EM fits each expert to its own responsibilities; where gates overlap, the
blended mean sum_k pi_k mu_k is then not the least-squares optimum. The
polish solves for every coefficient at once, the deterministic POU
network's problem (doc/design.md section 6):

    min_c  sum_d s_d |y_d - sum_k pi_k(x_d) phi_k(x_d) . c_k|^2
           + alpha W sum_k |c_k - c_k^0|^2,            W = sum_d s_d,

c^0 the coefficients in the tree: EM's, or, for the fit's final polish
with held-out rows, those of the polish they judged
(``HierarchicalPOURegressor._finish``).

Where the rows outnumber the unknowns, a node whose gate holds less than
one row's worth of weight is switched off first (``prune_slivers``; with
fewer rows than unknowns the ridge towards c^0 decides what the rows do
not, and every node may be needed to interpolate them). The rows see a
node only through pi_k mu_k at the rows: where pi_k is small at every row
they determine none of its coefficients, and the polish would use them to
fit the nearest rows' noise, mu_k growing as 1 / pi_k. Such slivers are
what EM leaves at a jump with sharp gates: a gate that peaks in a gap
between two rows, larger there than at any row, with an expert whose frame
(~1e-5 wide, fitted to one row) is a hundredth of the gap. There the
blended mean went far off (a noisy 1-D step, 1000 rows: 193 between two
rows where the target is 1.07). The
held-out rows that choose alpha never fall in such a gap, and no ridge on
the coefficients bounds an expert so far outside its frame (a change of
0.013 to a quadratic coefficient made 88 in the gap). Holding slivers at
their EM experts instead also removed the spikes, but a wide node of 0.08
rows' worth, which the polish had corrected, then cost a noise-free Runge
fit 70x of its accuracy; switched off, its neighbours' gates cover for it.

Only nodes whose gates overlap couple, so the matrix is block-sparse. It is
formed densely, from BLAS products of the blended design rows or from
product moments in the unit box, or as sparse blocks per overlapping pair;
it is solved by Cholesky (dense), by sparse LU, or, where neither the dense
matrix nor the sparse factors fit POLISH_MAX_BYTES, by preconditioned
conjugate gradients on the blocks (``polish_route`` chooses). Gates are
computed block by block from the frozen tree, so memory never grows with
n_samples times the number of nodes.

Where the rows outnumber the unknowns many times over, forming the dense
matrix (rows x unknowns^2 multiply-adds) dominates the fit, and the
matrix formed from an even subsample of the rows is nearly the same:
its Cholesky factor preconditions conjugate gradients on all rows, which
form the design rows again at each step but never the matrix
(``sketched_polish``: sketch-and-precondition, Rokhlin and Tygert 2008;
Avron, Maymounkov and Toledo 2010).
"""

import warnings

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.sparse.linalg import LinearOperator, cg, splu
from sklearn.exceptions import ConvergenceWarning

from ._basis import moment_frame_change
from ._experts import box_normal_equations, mirror_upper, solve_spd
from ._kernels import polish as _kernels

# The dense matrix, or the sparse LU factors, may take at most this many
# bytes (a dense system of 11 585 unknowns); the assembly and the solve hold
# a small multiple of it. Beyond, conjugate gradients need only the blocks.
POLISH_MAX_BYTES = 1 << 30
# Dense when at least this share of node pairs overlap: the sparse route is
# then the slower one and holds more memory, not less.
DENSE_POLISH_OVERLAP = 0.25
# Sparse LU fill-in estimated from the pattern of overlapping nodes falls
# short of SuperLU's on the full matrix (COLAMD orders it a little
# differently) by less than this factor on the patterns tried; bytes per
# entry: a value and a row index.
FILL_MARGIN = 2.0
BYTES_PER_SPARSE_ENTRY = 12
# Rows of the blended design matrix formed at once by the dense route.
DESIGN_ROWS = 1024
# The dense system is formed from the overlapping pairs' blocks rather than
# the design rows when that takes less than this share of the design rows'
# multiply-adds (many small products run slower than one large one).
BLOCKS_ADVANTAGE = 0.5
# Least ridge of a polish with more unknowns than distinct rows (relative to
# a matrix normalized by the total weight): round-off in the matrix then
# moves the solution by ~1e-8 of its correction, and the data are still
# fitted to ~1e-8.
UNDERDETERMINED_POLISH_RIDGE = 1e-8
# Conjugate gradients (the "iterative" route) stop at this residual relative
# to the right-hand side, or after this many iterations. They start from
# the coefficients in the tree (c^0) and every iteration lowers the polish
# objective, so stopping early still improves on them; they also stay where
# the data barely constrain them, as the ridge wants.
POLISH_CG_RTOL = 1e-10
POLISH_CG_MAX_ITERATIONS = 500
# The sketch (``sketched_polish``): rows per unknown of the subsample whose
# matrix preconditions conjugate gradients on all rows, used where the
# rows are at least SKETCH_MIN_RATIO times as many and forming the matrix
# from all rows would take SKETCH_MIN_WORK multiply-adds or more (seconds:
# below, the exact direct solve costs little). With r subsample rows per
# unknown of every partition (``sketch_rows``), the subsample's normalized
# matrix is within a factor of about 1 +- 1 / sqrt(r) of the whole one,
# so the preconditioned iterations converge by a factor of several each
# (Franke 2-D, 1e6 rows, 45 partitions of degree 10: 4 iterations; the
# polish formed from all rows took 187 of the fit's 264 s). A partition
# whose gate holds fewer than SKETCH_MIN_NODE_ROWS rows' worth per unknown
# in the subsample has its block poorly represented: the matrix is then
# formed from all rows, as it is where the iterations have not converged
# after SKETCH_CG_MAX_ITERATIONS passes.
SKETCH_ROWS_PER_UNKNOWN = 32
SKETCH_MIN_RATIO = 4
SKETCH_MIN_WORK = 1e11
SKETCH_MIN_NODE_ROWS = 4
SKETCH_CG_MAX_ITERATIONS = 30


def polish_route(overlaps, n_basis, frame_change):
    """How to form and solve the polish system: "moments", "design",
    "sparse" or "iterative".

    ``overlaps`` (K, K) marks the overlapping node pairs (upper triangle).
    Dense (from moments where the frames allow it, ``moment_frame_change``,
    otherwise from the design rows) when the dense matrix fits
    POLISH_MAX_BYTES and either most node pairs overlap or the sparse LU
    factors would take more memory than it; sparse LU when its estimated
    factors fit POLISH_MAX_BYTES; conjugate gradients on the blocks
    otherwise, which need no more memory than the blocks themselves.
    """
    n_nodes = overlaps.shape[0]
    share = np.count_nonzero(overlaps) / (n_nodes * (n_nodes + 1) / 2)
    dense_bytes = 8 * (n_nodes * n_basis) ** 2
    factor_bytes = (
        FILL_MARGIN * BYTES_PER_SPARSE_ENTRY * n_basis**2 * _block_factor_entries(overlaps)
    )
    if dense_bytes <= POLISH_MAX_BYTES and (
        share >= DENSE_POLISH_OVERLAP or factor_bytes >= dense_bytes
    ):
        return "design" if frame_change is None else "moments"
    if factor_bytes <= POLISH_MAX_BYTES:
        return "sparse"
    return "iterative"


def _block_factor_entries(overlaps):
    """Blocks in the sparse LU factors (L and U) of a matrix with this block
    pattern, as SuperLU orders it: the pattern itself, diagonally dominant
    so that no pivoting moves off the diagonal, factored once."""
    n_nodes = overlaps.shape[0]
    pattern = sparse.csc_array((overlaps | overlaps.T).astype(float))
    pattern = pattern + sparse.diags_array(n_nodes + 1.0 - pattern.diagonal())
    factors = splu(sparse.csc_array(pattern))
    return factors.L.nnz + factors.U.nnz - n_nodes  # the unit diagonal of L is implicit


def prune_slivers(tree, data, threads):
    """Switch off the nodes whose gate holds less than one row of ``data``,
    sum_d w_d pi_k(x_d) < W / n with w the capped weights
    (``TrainingData.capped_weight``: one row of huge weight would otherwise
    make every ordinary partition a sliver; out of core, the weights) and
    W their total (the module docstring says why). The heaviest live node
    of each family stays, so that the gates still sum to one; so a sliver
    that is its family's only node (a partition the refinement passed on
    unchanged to a finer level) is switched off through the first ancestor
    that has a live sibling, unless that ancestor is its own family's
    heaviest. Levels are taken from the root down; the finest nodes so
    switched off are marked in ``Level.slivers`` (a coarser node switched
    off, in its level's). Returns how many finest nodes were switched off.

    (A squared triangle wave of 12 pieces, 1e4 rows, random_state=10: a
    partition passed on twice held no row between two pieces, and its
    expert, fitted to nothing, was blended in at one kink: test error
    5.9e-4 where the other draws give 1e-12.)"""
    if tree.finest == 0:
        return 0
    weights = getattr(data, "capped_weight", None)
    if weights is None:
        weights = data.sample_weight
    one_row = threads.total(weights) / data.n_samples
    before = tree.gone()

    def block(X, weights):  # every level's masses in one pass over the rows
        return tuple(weights @ np.exp(log_gate)
                     for log_gate in tree.log_gates_by_level(X, tree.finest))

    # The masses are taken before any node is switched off (one pass: out
    # of core, each pass reads every chunk); switching a sliver off moves
    # its mass to its siblings and their descendants, which this
    # overlooks: a node just above one row may lose, one just below keep
    # its place.
    masses = threads.sum(block, data.X, weights)
    for number, mass in enumerate(masses, start=1):
        level = tree.levels[number]
        gone = tree.gone(number)
        sliver = (mass < one_row) & ~gone
        live_mass = np.where(gone, -np.inf, mass)
        starts = level.child_start
        for first, end in zip(starts[:-1], starts[1:]):
            if end > first:
                sliver[first + np.argmax(live_mass[first:end])] = False
        level.pruned = level.pruned | sliver
        level.slivers = level.slivers | sliver
    finest = tree.levels[-1]
    switched_off = tree.gone() & ~before
    finest.slivers = finest.slivers | switched_off
    return int(switched_off.sum())


def polish_experts(X, Y, sample_weight, tree, alpha, threads, determined=True, total=None,
                   calibration=None):
    """The polished finest experts' coefficients (K, M, T) for one ridge
    (as ``polish_solver``), and the residuals and leverages that give
    the polish's leave-one-out errors at the rows ``calibration``.

    ``calibration``: a ``TrainingData`` of some of the rows of X, Y (or
    None). Where the system is solved by a dense Cholesky factor, or
    sketched (``sketched_polish``: leverages from the sketch's factor), the
    residuals (n, T) and leverages (n,) at those rows are returned with the
    coefficients (``_residuals_and_leverages``); otherwise None.
    """
    if not determined:
        alpha = max(alpha, UNDERDETERMINED_POLISH_RIDGE)
    sketched = sketched_polish(X, Y, sample_weight, tree, alpha, threads, total, calibration)
    if sketched is not None:
        return sketched
    system = _polish_system(X, Y, sample_weight, tree, threads, total)
    start = tree.levels[-1].coef
    factor = None
    if calibration is not None and system.route in DENSE_ROUTES:
        factor = system.cholesky(alpha)
    if factor is None:  # not dense, or indefinite through round-off
        return system.solve(alpha, start), None
    coef = cho_solve(factor, system.pulled(alpha, start)).reshape(start.shape)
    return coef, _residuals_and_leverages(factor[0], calibration, tree, coef, system.total)


def polish_solver(X, Y, sample_weight, tree, threads, determined=True, total=None):
    """A function of the ridge alpha giving the finest experts' coefficients
    (K, M, T) that minimize the blended error (the system is formed once,
    here; each call solves it with its ridge).

    ``tree`` gives the frozen gates and the coefficients c^0 (EM's),
    towards which the ridge alpha pulls (so nodes the data barely reach keep them). With
    fewer distinct rows than unknowns (``determined=False``) the data fix
    only part of the coefficients and the ridge decides the rest; a ridge
    as small as ``alpha`` would let round-off decide it (a change of eps in
    the matrix moves the solution by eps / alpha), so there it is at least
    UNDERDETERMINED_POLISH_RIDGE. ``total``: the weight the system is
    normalized by, and so the ridge's scale (by default the weights' sum;
    ``TrainingData.capped_weight``'s, so that one row of huge weight does
    not shrink the ridge's reach to the other rows).
    """
    system = _polish_system(X, Y, sample_weight, tree, threads, total)
    coef = tree.levels[-1].coef

    def solve(alpha):
        alpha = alpha if determined else max(alpha, UNDERDETERMINED_POLISH_RIDGE)
        return system.solve(alpha, coef)

    return solve


def sketched_polish(X, Y, sample_weight, tree, alpha, threads, total, calibration):
    """``polish_experts`` by conjugate gradients on all rows, preconditioned
    by the Cholesky factor of the matrix formed from SKETCH_ROWS_PER_UNKNOWN
    rows per unknown (``sketch_rows``: evenly spaced, more where a node's
    gate holds few), from the coefficients in the tree; None (form the
    matrix from all rows) where the rows are fewer than SKETCH_MIN_RATIO
    times the sketch's, or forming the matrix from them costs less than
    SKETCH_MIN_WORK, or the rows are held out of core, or the sketch's
    matrix would be sparse or formed from moments (cheap to form from all
    rows), or a partition's gate holds less than SKETCH_MIN_NODE_ROWS rows'
    worth per unknown of the sketch, or the iterations did not converge.

    The leverages at ``calibration`` come from the sketch's factor: at
    SKETCH_MIN_RATIO * SKETCH_ROWS_PER_UNKNOWN rows per unknown or more
    they are below 1 / 128 on average, and within the sketch's factor of
    1 +- 1 / sqrt(SKETCH_ROWS_PER_UNKNOWN) of the exact ones.
    """
    start = tree.levels[-1].coef
    n_nodes, n_basis, n_targets = start.shape
    size = n_nodes * n_basis
    n_rows = SKETCH_ROWS_PER_UNKNOWN * size
    if (not isinstance(X, np.ndarray) or X.shape[0] < SKETCH_MIN_RATIO * n_rows
            or X.shape[0] * size**2 / 2 < SKETCH_MIN_WORK):
        return None
    rows, inverse_rate = sketch_rows(X, tree, n_rows, threads)
    gate = np.exp(tree.log_gates(X[rows], tree.finest))
    gate_rows = sample_weight[rows] @ gate / sample_weight[rows].mean()
    if np.any(gate_rows[~tree.gone()] < SKETCH_MIN_NODE_ROWS * n_basis):
        return None
    if total is None:
        total = threads.total(sample_weight)
    sketch_weight = sample_weight[rows] * inverse_rate  # unbiased: E[sketch] = all rows
    sketch_total = total * sketch_weight.sum() / sample_weight.sum()
    sketch = _polish_system(X[rows], Y[rows], sketch_weight, tree, threads, sketch_total)
    factor = sketch.cholesky(alpha) if sketch.route in ("design", "blocks") else None
    if factor is None:
        return None

    flat_start = start.reshape(size, n_targets)

    def gram_product(x):  # (A^T S A / total + alpha) x, one pass over the rows
        (product,) = threads.sum(
            lambda X, w: _design_products(X, w, tree, x.reshape(size, 1))[:1], X, sample_weight
        )
        return product[:, 0] / total + alpha * x

    # The correction to the start solves the system with the start's
    # residual as right-hand side, which one pass gives with the
    # right-hand side's norm (the tolerance is relative to it).
    start_term, data_term = threads.sum(
        lambda X, Y, w: _design_products(X, w, tree, flat_start, Y), X, Y, sample_weight
    )
    rhs_norm = np.linalg.norm(data_term / total + alpha * flat_start, axis=0)
    start_residual = (data_term - start_term) / total
    operator = LinearOperator((size, size), matvec=gram_product, dtype=float)
    preconditioner = LinearOperator(
        (size, size), matvec=lambda r: cho_solve(factor, r), dtype=float
    )
    coef = flat_start.copy()
    for t in range(n_targets):
        correction, info = cg(
            operator, start_residual[:, t], rtol=0.0, atol=POLISH_CG_RTOL * rhs_norm[t],
            maxiter=SKETCH_CG_MAX_ITERATIONS, M=preconditioner,
        )
        if info != 0:
            return None
        coef[:, t] += correction
    coef = coef.reshape(start.shape)
    if calibration is None:
        return coef, None
    return coef, _residuals_and_leverages(factor[0], calibration, tree, coef, total)


def sketch_rows(X, tree, n_rows, threads):
    """The sketch's rows of X (sorted) and 1 / the rate each was sampled at.

    About ``n_rows`` rows, evenly spaced (the rows are sorted, so that is a
    sample stratified along the first feature), except where a node's gate
    holds fewer than SKETCH_ROWS_PER_UNKNOWN rows per unknown of them: its
    rows are sampled at the rate that gives it that many (up to all of
    them): each row at the largest of its nodes' rates, each scaled by the
    node's gate there relative to that gate's peak. Rows are taken at the cumulative rate's whole steps
    (systematic sampling), and each row's weight divided by its rate keeps
    the sketch's matrix an unbiased estimate of the whole one. (Franke 2-D,
    1e6 rows, random_state=0: a partition of 45 held 2.4 rows per unknown
    of the even sample; the polish then formed the matrix from all rows,
    176 s of a 247 s fit.)
    """
    n_samples = X.shape[0]
    base = n_rows / n_samples
    even = np.linspace(0, n_samples - 1, n_rows).astype(np.intp)
    gate = np.exp(tree.log_gates(X[even], tree.finest))
    mass = gate.sum(axis=0) / base
    wanted = SKETCH_ROWS_PER_UNKNOWN * tree.basis.size
    node_rate = np.minimum(wanted / np.maximum(mass, 1.0), 1.0)
    if np.all(node_rate[~tree.gone()] <= base):
        return even, np.ones(n_rows)
    # relative to its peak: a node whose gate is nowhere near 1 (a wide
    # blend) is still sampled at its rate where it is largest
    per_peak = node_rate / np.maximum(gate.max(axis=0), np.exp(tree.min_log_gate))

    def block(X):
        gated_rate = np.minimum(np.exp(tree.log_gates(X, tree.finest)) * per_peak, 1.0)
        return np.maximum(gated_rate.max(axis=1), base)

    rate = np.concatenate(threads.map(block, X))
    steps = np.floor(np.cumsum(rate))
    rows = np.flatnonzero(np.diff(steps, prepend=0.0) > 0)
    return rows, 1.0 / rate[rows]


def _design_products(X, sample_weight, tree, right, Y=None):
    """A^T S (A right) (``right`` (KM, T)) and, given Y, A^T S Y, for the
    blended design rows A of X (``_design_runs``), in one pass."""
    size = tree.levels[-1].coef.shape[0] * tree.basis.size
    gram_right = np.zeros((size, right.shape[1]))
    data = None if Y is None else np.zeros((size, Y.shape[1]))
    for part, columns, A in _design_runs(X, tree):
        weight = sample_weight[part, None]
        gram_right[columns] += A.T @ (weight * (A @ right[columns]))
        if Y is not None:
            data[columns] += A.T @ (weight * Y[part])
    return gram_right, data


def _design_runs(X, tree, block_log_gates=None):
    """(rows, columns, A) for each run of DESIGN_ROWS rows of X: A the
    blended design rows (pi_k(x_d) phi_k(x_d))_k of the nodes that carry
    gate somewhere in the run, ``columns`` their unknowns.

    The rows are sorted by x, so a run covers a slab of the domain, and
    with many partitions in low dimensions most nodes are zero throughout
    it. Where every node carries gate everywhere (the default tree from 3-D
    on) nothing is saved. The array A is reused by the next run.
    """
    level, basis = tree.levels[-1], tree.basis
    n_basis = basis.size
    if block_log_gates is None:
        def block_log_gates(X):
            return tree.log_gates(X, tree.finest)
    design = np.empty(min(DESIGN_ROWS, X.shape[0]) * level.coef.shape[0] * n_basis)
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
        yield part, columns, A


# The routes whose matrix is dense (and so has a Cholesky factor).
DENSE_ROUTES = ("moments", "design", "blocks")


class _PolishSystem:
    """The polish's normal equations, normalized by ``total``: ``matrix``
    (dense (KM, KM), sparse, or the pair blocks of the "iterative" route),
    ``rhs`` (KM, T), and the dense matrix's ``diagonal`` (before a ridge)."""

    def __init__(self, matrix, rhs, route, overlaps, total):
        self.matrix, self.rhs, self.route = matrix, rhs, route
        self.overlaps, self.total = overlaps, total
        self.diagonal = matrix.diagonal().copy() if route in DENSE_ROUTES else None

    def pulled(self, alpha, start):
        """The right-hand side (KM, T) with ridge alpha pulling towards
        ``start`` (c^0, (K, M, T))."""
        return self.rhs + alpha * start.reshape(self.rhs.shape[0], -1)

    def solve(self, alpha, start):
        """The coefficients (K, M, T) with ridge alpha pulling towards
        ``start``."""
        size = self.rhs.shape[0]
        pulled = self.pulled(alpha, start)
        if self.route == "iterative":
            solution = _conjugate_gradients(self.matrix, self.overlaps, pulled, alpha, start)
        elif self.route == "sparse":
            solution = splu((self.matrix + alpha * sparse.eye_array(size)).tocsc()).solve(pulled)
        else:
            self._set_ridge(alpha)
            solution = solve_spd(self.matrix, pulled)
        return solution.reshape(start.shape)

    def cholesky(self, alpha):
        """The dense matrix's Cholesky factor with ridge alpha (as
        ``scipy.linalg.cho_factor`` gives it), or None where round-off
        leaves it indefinite."""
        self._set_ridge(alpha)
        try:
            return cho_factor(self.matrix, lower=True)  # a copy: the matrix stays
        except np.linalg.LinAlgError:
            return None

    def _set_ridge(self, alpha):
        self.matrix[np.diag_indices(self.rhs.shape[0])] = self.diagonal + alpha


def _polish_system(X, Y, sample_weight, tree, threads, total):
    """Form the polish's normal equations by the route ``polish_route``
    chooses (a ``_PolishSystem``)."""
    level = tree.levels[-1]
    n_nodes, n_basis, n_targets = level.coef.shape
    min_log_gate = tree.min_log_gate

    def block_log_gates(X):
        return tree.log_gates(X, tree.finest)

    def block_overlaps(X):
        """Rows per overlapping pair, and the design route's multiply-adds."""
        log_gate = block_log_gates(X)
        counts = np.zeros((n_nodes, n_nodes), dtype=np.int64)
        _kernels.overlapping_pairs(log_gate, min_log_gate, counts)
        carrying = carrying_gate(log_gate, min_log_gate)
        design = 0.0
        for start in range(0, X.shape[0], DESIGN_ROWS):
            run = carrying[start:start + DESIGN_ROWS]
            design += run.shape[0] * (n_basis * np.count_nonzero(run.any(axis=0))) ** 2 / 2
        return counts, np.array(design)

    counts, design_cost = threads.sum(block_overlaps, X)
    overlaps = counts > 0
    size = n_nodes * n_basis
    frame_change = None
    route = polish_route(overlaps, n_basis, None)
    if route == "design":
        frame_change = moment_frame_change(level.centers, level.scales, tree.basis.degree)
        route = polish_route(overlaps, n_basis, frame_change)
    if route == "design" and counts.sum() * n_basis**2 < BLOCKS_ADVANTAGE * design_cost:
        route = "blocks"
    system = {
        "moments": _moment_system, "design": _design_system, "blocks": _blocks_system,
        "sparse": _sparse_system, "iterative": _pair_blocks,
    }
    matrix, rhs = system[route](
        X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads
    )
    if total is None:
        total = threads.total(sample_weight)
    matrix /= total  # dense, the largest array of the fit: in place
    return _PolishSystem(matrix, rhs.reshape(size, n_targets) / total, route, overlaps, total)


def _residuals_and_leverages(factor, rows, tree, coef, total):
    """The polish's residuals (n, T) and leverages (n,) at ``rows`` (a
    ``TrainingData`` of rows it was fitted on): row d's error when the
    polish is refitted without it is r_d / (1 - h_d), gates and the
    ridge's pull held fixed.

    The polish is one linear least-squares fit in all coefficients, so as
    for one expert (``_refinement.leave_one_out_errors``, Allen's PRESS)
    h_d = s_d a_d^T A^-1 a_d / total, a_d the blended design row
    (pi_k(x_d) phi_k(x_d))_k, A = L L^T the normalized matrix with its
    ridge (``factor``: L). Rows are taken DESIGN_ROWS at a time.
    """
    level, basis = tree.levels[-1], tree.basis
    n_nodes, n_basis, n_targets = coef.shape
    flat = coef.reshape(n_nodes * n_basis, n_targets)
    residuals = np.empty(rows.Y.shape)
    leverages = np.empty(rows.n_samples)
    for start in range(0, rows.n_samples, DESIGN_ROWS):
        part = slice(start, min(start + DESIGN_ROWS, rows.n_samples))
        X = rows.X[part]
        design = np.empty((X.shape[0], flat.shape[0]))
        _kernels.blended_design(
            X, np.ascontiguousarray(tree.log_gates(X, tree.finest)), level.centers,
            level.scales, basis.recipe, basis.degree, tree.min_log_gate, design,
        )
        whitened = solve_triangular(factor, design.T, lower=True, check_finite=False)
        leverages[part] = (
            rows.sample_weight[part] * np.einsum("ij,ij->j", whitened, whitened) / total
        )
        residuals[part] = rows.Y[part] - design @ flat
    return residuals, leverages


def _conjugate_gradients(blocks, overlaps, rhs, alpha, start):
    """Solve the polish system held as upper blocks (normalized by the total
    weight), one target at a time.

    Block-Jacobi preconditioned conjugate gradients from c^0, the
    coefficients ``start``: the matrix is never formed, a product with it
    reads each stored block twice (as itself and as its transpose).
    """
    n_nodes, n_basis, n_targets = start.shape
    size = n_nodes * n_basis
    first, second = np.nonzero(overlaps)
    diagonal = first == second
    transposed = (~diagonal)[:, None]

    def matvec(x):
        x = x.reshape(n_nodes, n_basis)
        out = alpha * x
        np.add.at(out, first, (blocks @ x[second][:, :, None])[:, :, 0])
        np.add.at(out, second, (x[first][:, None, :] @ blocks)[:, 0, :] * transposed)
        return out.ravel()

    # inverse diagonal blocks, of every node (a node that carries no gate
    # anywhere has no block: alpha I), SPD thanks to the ridge
    inverse = np.broadcast_to(alpha * np.eye(n_basis), (n_nodes, n_basis, n_basis)).copy()
    inverse[first[diagonal]] += blocks[diagonal]
    inverse = np.linalg.inv(inverse)
    inverse = 0.5 * (inverse + np.swapaxes(inverse, 1, 2))

    def precondition(r):
        return (inverse @ r.reshape(n_nodes, n_basis, 1)).ravel()

    operator = LinearOperator((size, size), matvec=matvec, dtype=float)
    preconditioner = LinearOperator((size, size), matvec=precondition, dtype=float)
    solution = np.empty((size, n_targets))
    for t in range(n_targets):
        solution[:, t], info = cg(
            operator, rhs[:, t], x0=start[:, :, t].ravel(), rtol=POLISH_CG_RTOL,
            maxiter=POLISH_CG_MAX_ITERATIONS, M=preconditioner,
        )
        if info > 0:
            residual = np.linalg.norm(rhs[:, t] - matvec(solution[:, t]))
            warnings.warn(
                f"The polish of {size} unknowns, too large to factor within "
                f"{POLISH_MAX_BYTES / 2**30:g} GiB, stopped after {info} conjugate "
                f"gradient iterations at a residual of {residual / np.linalg.norm(rhs[:, t]):.1e} "
                f"(target {POLISH_CG_RTOL:g}): it improves on its start but is not "
                "converged. Fewer partitions or a lower degree make it smaller.",
                ConvergenceWarning,
            )
    return solution


def carrying_gate(log_gate, min_log_gate):
    """(rows, K) booleans: where a node's gate enters the polish."""
    out = np.empty(log_gate.shape, dtype=np.bool_)
    _kernels.carrying_gate(log_gate, min_log_gate, out)
    return out


def _design_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """A^T S A and A^T S y for the design rows A[d] = (pi_k(x_d) phi_k(x_d))_k,
    formed run by run (``_design_runs``)."""
    n_unknowns = tree.levels[-1].coef.shape[0] * tree.basis.size

    def block(X, Y, sample_weight):
        gram = np.zeros((n_unknowns, n_unknowns))
        rhs = np.zeros((n_unknowns, Y.shape[1]))
        for part, columns, A in _design_runs(X, tree, block_log_gates):
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


def _pair_blocks(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """The system as one (M, M) block per overlapping pair k <= l (in the
    order of ``np.nonzero(overlaps)``), and the right-hand sides (K, M, T)."""
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
    return blocks, rhs


def _blocks_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """The dense system, from ``_pair_blocks``: where the nodes overlap
    little, their pairs' rows cost far fewer products than the design rows'
    (each run of rows then covers many nodes, in most of which each row has
    no gate)."""
    blocks, rhs = _pair_blocks(
        X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads
    )
    n_nodes, n_basis = overlaps.shape[0], blocks.shape[1]
    first, second = np.nonzero(overlaps)
    matrix = np.zeros((n_nodes, n_basis, n_nodes, n_basis))
    matrix[second, :, first, :] = np.swapaxes(blocks, 1, 2)
    matrix[first, :, second, :] = blocks
    size = n_nodes * n_basis
    return matrix.reshape(size, size), rhs


def _sparse_system(X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads):
    """The same system as a sparse matrix, from ``_pair_blocks``."""
    blocks, rhs = _pair_blocks(
        X, Y, sample_weight, block_log_gates, tree, overlaps, frame_change, threads
    )
    n_nodes, n_basis = overlaps.shape[0], blocks.shape[1]
    first, second = np.nonzero(overlaps)
    diagonal = first == second
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
