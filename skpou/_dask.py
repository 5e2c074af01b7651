"""Fit and predict on Dask arrays: chunks of rows in place of row blocks.

Out-of-core and cluster fits (doc/design.md section 8, the user guide's
"Data beyond memory"). Every step of the fit that reads all rows is a sum
over rows, so Dask input changes only the data path:

- ``prepare_chunks``: validation (shapes, finite values, weights) and the
  input and target scaling as reductions over chunks, and the EM subsample
  drawn from the chunks and brought into memory; the V-cycles then run in
  memory exactly as for NumPy input;
- ``DaskRows``: the row-block map and sum of ``skpou._parallel.Threads``
  over the chunks of Dask arrays (each chunk summed block by block by
  ``Threads`` on a worker, the partial sums added in a tree reduction),
  and handed on to the local ``Threads`` for NumPy arrays; so the finest
  refit, the polish and the noise refit run unchanged, on whichever Dask
  scheduler is active (a ``distributed.Client`` if one exists);
- ``predict_chunks``: predictions as a lazy Dask array, chunk by chunk
  (the pattern of dask-ml's ``ParallelPostFit``).

Nothing gathers all rows to one process. Determinism: each chunk's partial
sum is computed by the same code wherever it runs, and the partial sums are
added in a tree whose shape depends only on the number of chunks, so the
same data in the same chunks give bit-identical models on any scheduler and
any number of workers. Rows are not sorted (that would be a shuffle of all
the data), so unlike NumPy input the model depends, at round-off level, on
the row order and the chunking; the EM subsample is drawn by position among
the rows of positive weight, so it depends on the row order but not on the
chunking.

Dask is an optional dependency (``pip install "skpou[dask]"``): this module
is imported only when a Dask collection is passed.
"""

import ctypes
import multiprocessing
import os
import sys
import warnings

import dask
import dask.array as da
import numpy as np
from sklearn.utils.validation import _check_feature_names, _check_n_features
from threadpoolctl import threadpool_limits

from ._data import Scaling, prepare
from ._parallel import Threads

# Partial sums added per task of the tree reduction: the reduction has
# log_8(n_chunks) levels, and no task holds more than 8 partial sums (the
# polish's dense system is the largest, (K M)^2 floats).
SPLIT_EVERY = 8


class ChunkedTrainingData:
    """Scaled training rows as Dask arrays, the counterpart of ``TrainingData``.

    ``X`` (n, n_features), ``Y`` (n, n_targets), ``sample_weight`` (n,):
    lazy Dask arrays over the caller's chunks of rows (rows without weight
    taken out chunk by chunk), read again by every pass. ``em_data``: the
    in-memory ``TrainingData`` of the rows drawn for EM (all rows if there
    are at most ``em_subsample``), sorted and scaled like NumPy input.
    ``n_samples``: rows of positive weight; ``total_weight``: their sum.
    ``em_weight_unit``: the chunks' weight per unit of ``em_data``'s
    (``prepare`` divides the EM rows' weights by their largest).
    """

    out_of_core = True

    def __init__(self, X, Y, sample_weight, em_data, n_samples, total_weight,
                 em_weight_unit):
        self.X, self.Y, self.sample_weight = X, Y, sample_weight
        self.em_data = em_data
        self.n_samples = n_samples
        self.total_weight = total_weight
        self.em_weight_unit = em_weight_unit


class DaskRows:
    """``Threads``' map and sum, over the chunks of Dask arrays.

    Functions receive NumPy row blocks, as from ``Threads``: each chunk is
    split into the same fixed row blocks (``skpou._parallel.row_blocks``)
    on the worker that holds it, so the kernels and their memory per block
    are those of an in-memory fit. NumPy arrays are passed on to ``local``
    (the EM subsample, the per-partition solves), so one backend serves the
    whole fit. ``totals`` maps the names of Dask weight arrays to their
    known sums (``total``).
    """

    def __init__(self, local, totals=None):
        self.local = local
        self._totals = dict(totals or {})

    def map(self, function, *arrays):
        """Per chunk, a ``dask.delayed`` list of function(*blocks) over its
        row blocks (NumPy input: the list itself, from ``local``).

        Functions must not write into their arguments here: chunks are
        copies on the workers.
        """
        if not is_dask_array(arrays[0]):
            return self.local.map(function, *arrays)
        return _chunk_tasks(_serial_map, function, arrays)

    def sum(self, function, *arrays):
        """The sum of the tuples of arrays function(*blocks) returns.

        Per chunk, ``Threads`` adds its blocks' results in order; the chunks'
        sums are added in a tree of fixed shape (SPLIT_EVERY per task), in
        chunk order, on the active Dask scheduler. Booleans add as a logical
        or, as in ``Threads``.
        """
        if not is_dask_array(arrays[0]):
            return self.local.sum(function, *arrays)
        level = _chunk_tasks(_serial_sum, function, arrays)
        while len(level) > 1:
            level = [
                dask.delayed(_add_partial_sums, pure=False)(*level[i:i + SPLIT_EVERY])
                for i in range(0, len(level), SPLIT_EVERY)
            ]
        (result,) = dask.compute(level[0])
        if result is None:
            raise ValueError("Every chunk of rows is empty: nothing to sum.")
        return result

    def total(self, sample_weight):
        """The sum of the weights: known from the preparation for Dask input."""
        if not is_dask_array(sample_weight):
            return self.local.total(sample_weight)
        if sample_weight.name not in self._totals:
            self._totals[sample_weight.name] = float(sample_weight.sum().compute())
        return self._totals[sample_weight.name]

    def map_tasks(self, function, tasks):
        """Small in-memory tasks (per-parent gate fits): on ``local``."""
        return self.local.map_tasks(function, tasks)


def is_dask_array(value):
    return isinstance(value, da.Array)


def _chunk_tasks(per_chunk, function, arrays):
    """[per_chunk(function, *chunks) for each chunk of rows], as delayed tasks.

    The arrays are optimized together, so a source they share (a Zarr array
    they are sliced from, the weights' mask) is read once per chunk, and the
    function is one node of the graph, sent to each worker once rather than
    embedded in every task (it may hold the fitted tree).
    """
    arrays = dask.optimize(*arrays)
    row_chunks = {a.chunks[0] for a in arrays}
    known = [c for c in row_chunks if not any(np.isnan(c))]
    if (
        len({a.numblocks[0] for a in arrays}) != 1
        or len(known) > 1
        or any(a.ndim > 1 and a.numblocks[1] != 1 for a in arrays)
    ):
        raise ValueError("Arrays passed together must share their chunks of rows.")
    chunks = [a.to_delayed(optimize_graph=False).reshape(-1) for a in arrays]
    shared_function = dask.delayed(function, pure=False)
    task = dask.delayed(per_chunk, pure=False)
    return [task(shared_function, *blocks) for blocks in zip(*chunks)]


def _serial_map(function, *chunks):
    _prepare_worker()
    return Threads().map(function, *chunks)


def _serial_sum(function, *chunks):
    """One chunk's sum over its row blocks; None for a chunk without rows
    (all its weights zero).

    A sum does not depend on the order of its rows, so the chunk's rows are
    first put in slabs along the first column of the first array (the
    inputs X in every pass of the fit), as NumPy input's sorted rows are: a
    block of rows then covers a thin slab of the domain, where the kernels
    and the polish skip the many nodes without gate (in storage order every
    block spans the whole domain, and the polish's dense route costs ~10x
    more per row). ``slab_order`` does it in linear time; a full
    lexicographic sort costs more than the pass it speeds up.
    """
    if chunks[0].shape[0] == 0:
        return None
    _prepare_worker()
    order = slab_order(chunks[0][:, 0])
    return Threads().sum(function, *(chunk[order] for chunk in chunks))


def slab_order(values, n_slabs=2**16):
    """A permutation putting ``values`` into n_slabs equal slabs of their
    range, in increasing order of slab, rows within a slab in their order.

    A stable sort of 16-bit slab numbers: a radix sort, linear in the rows
    (NumPy's stable sort of float64 is a merge sort, ~10x slower).
    """
    low, high = values.min(), values.max()
    if not high > low:
        return np.arange(values.size)
    slab = (values - low) * ((n_slabs - 1) / (high - low))
    return np.argsort(slab.astype(np.uint16), kind="stable")


def _add_partial_sums(*parts):
    """Sum of tuples of arrays, in order, skipping empty chunks (None).

    The first is copied rather than added into: a scheduler may keep a
    task's result (to recompute after a lost worker, say).
    """
    parts = [part for part in parts if part is not None]
    if not parts:
        return None
    total = [np.array(value, copy=True) for value in parts[0]]
    for part in parts[1:]:
        for accumulated, value in zip(total, part):
            accumulated += value
    return tuple(total)


_worker_ready = False
# glibc's mallopt parameters: allocations below the mmap threshold come
# from the heap, and the heap is trimmed when its free top exceeds the trim
# threshold.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
WORKER_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest
WORKER_TRIM_THRESHOLD = 64 * 2**20


def _prepare_worker():
    """Once per distributed worker process: one BLAS thread, and a malloc
    that reuses the row blocks' scratch memory.

    BLAS: results must not depend on its thread count, and the worker's
    own threads use the cores (the fitting process's ``local_threads`` does
    the same for Dask's local threads). Malloc: distributed starts workers
    with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap
    threshold at 128 KiB, so every block's scratch array (rows x nodes
    floats, ~0.5 MiB) is a fresh mmap, zeroed page by page: measured, the
    passes ran 3-5x slower than in the fitting process. Where that variable
    is set, the worker keeps up to 64 MiB of freed heap instead.
    """
    global _worker_ready
    if _worker_ready or "distributed" not in sys.modules:
        return
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not in a worker: Dask's local threads
        return
    if multiprocessing.parent_process() is None:
        # a worker thread in the user's own process (LocalCluster with
        # processes=False): its settings stay the user's, and the fit's
        # local_threads limit BLAS while it runs
        return
    threadpool_limits(limits=1, user_api="blas")
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD)
        except (OSError, AttributeError):  # not glibc
            pass
    _worker_ready = True


# ------------------------------------------------------------------ fit


def prepare_chunks(estimator, X, y, sample_weight, em_subsample, random_state):
    """Validated, scaled training data over the chunks of Dask input.

    ``X`` (n, n_features), ``y`` (n,) or (n, n_targets), ``sample_weight``
    (n,) or None: Dask arrays chunked along rows (any length), or Dask
    DataFrames / Series (their lengths are computed); y and the weights may
    also be NumPy arrays. Two passes over the data: the first validates each
    chunk and reduces the inputs' minima and maxima, max |y|, the total
    weight and each chunk's number of rows with positive weight; the second
    gathers the EM subsample (``em_subsample`` rows of positive weight drawn
    without replacement, seeded by ``random_state``, or all of them) and,
    when it is not all rows, reduces the targets' weighted mean and
    variance. Sets ``n_features_in_`` (and ``feature_names_in_``) on the
    estimator.

    Returns (``ChunkedTrainingData``, ``Scaling``, the number of distinct
    rows in the EM subsample, whether y is 1-D). When all rows fit in the
    subsample, the scaling and the EM data are exactly those of NumPy input.

    Raises ValueError for non-numeric or non-finite values (naming the
    chunk), negative weights, mismatched lengths, no rows, or a zero total
    weight.
    """
    X = _known_row_chunks(_checked_inputs(estimator, X, reset=True)).rechunk({1: -1})
    y = _as_dask_array(y, "y", like=X)
    if y.ndim not in (1, 2):
        raise ValueError(f"Expected y of shape (n_samples,) or (n_samples, n_outputs); got {y.ndim}-D.")
    y_was_1d = y.ndim == 1
    Y = y.reshape(y.shape[0], 1) if y_was_1d else y
    Y = _rows_like(Y, X, "y")
    weighted = sample_weight is not None
    if weighted:
        sample_weight = _rows_like(_as_dask_array(sample_weight, "sample_weight", like=X),
                                   X, "sample_weight")
        if sample_weight.ndim != 1:
            raise ValueError("sample_weight must be 1-D (n_samples,).")
    else:
        sample_weight = da.ones(X.shape[0], chunks=(X.chunks[0],))
    if X.shape[0] == 0:
        raise ValueError("Found array with 0 sample(s) (shape=(0, ...)) while a minimum of 1 is required.")

    starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
    summaries = _compute_chunks(_summarize_chunk, (X, Y, sample_weight), starts)
    counts = np.array([s["count"] for s in summaries])
    n_weighted = int(counts.sum())
    total_weight = float(np.sum([s["weight"] for s in summaries]))
    if n_weighted == 0 or not total_weight > 0:
        raise ValueError("sample_weight sums to zero: no row takes part in the fit.")
    low = np.min([s["low"] for s in summaries], axis=0)
    high = np.max([s["high"] for s in summaries], axis=0)
    magnitude = np.max([s["magnitude"] for s in summaries], axis=0)

    all_rows = em_subsample is None or n_weighted <= em_subsample
    if all_rows:
        ranks = None
    else:
        seed = random_state.randint(np.iinfo(np.int32).max)
        ranks = np.sort(np.random.default_rng(seed).choice(n_weighted, em_subsample, replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    picks = [
        None if ranks is None
        else ranks[np.searchsorted(ranks, offsets[i]):np.searchsorted(ranks, offsets[i + 1])] - offsets[i]
        for i in range(counts.size)
    ]
    unit_scale = np.where(magnitude > 0, magnitude, 1.0)
    gathered = _compute_chunks(
        _gather_chunk, (X, Y, sample_weight), starts,
        extra=[(pick, None if all_rows else unit_scale) for pick in picks],
    )
    X_em, Y_em, w_em = (np.concatenate(parts) for parts in zip(*(g["rows"] for g in gathered)))
    if all_rows:
        # NumPy input's own path: the same scaling, the same sorted rows.
        em_data, scaling, n_distinct = prepare(X_em, Y_em, w_em)
    else:
        offset, spread = _combine_moments([g["moments"] for g in gathered])
        scaling = Scaling.from_statistics(low, high, magnitude, offset, spread)
        em_data, _, n_distinct = prepare(X_em, Y_em, w_em, scaling)

    X_scaled = X.map_blocks(_scale_inputs, scaling.x_offset, scaling.x_scale, dtype=np.float64)
    Y_scaled = Y.map_blocks(_scale_targets, scaling.y_offset, scaling.y_scale, dtype=np.float64)
    w = sample_weight.astype(np.float64)
    if n_weighted < X.shape[0]:
        # A row without weight takes no part, as for NumPy input (far
        # outside the weighted rows' box it would overflow the bases).
        keep = w > 0
        X_scaled, Y_scaled, w = X_scaled[keep], Y_scaled[keep], w[keep]
    # sums, unlike the largest weight, do not change as equal rows merge
    em_weight_unit = w_em.sum() / em_data.sample_weight.sum()
    data = ChunkedTrainingData(
        X_scaled, Y_scaled, w, em_data, n_weighted, total_weight, em_weight_unit
    )
    return data, scaling, n_distinct, y_was_1d


def training_rows(data, local):
    """The backend for a fit on ``data``: ``DaskRows`` over its chunks."""
    return DaskRows(local, {data.sample_weight.name: data.total_weight})


def _compute_chunks(per_chunk, arrays, starts, extra=None):
    """[per_chunk(*chunks, index, (start, stop), *extra[i])] computed on the
    active scheduler, in chunk order."""
    arrays = dask.optimize(*arrays)
    chunks = [a.to_delayed(optimize_graph=False).reshape(-1) for a in arrays]
    task = dask.delayed(per_chunk, pure=False)
    tasks = [
        task(*blocks, i, (int(starts[i]), int(starts[i + 1])), *(extra[i] if extra else ()))
        for i, blocks in enumerate(zip(*chunks))
    ]
    return list(dask.compute(*tasks))


def _summarize_chunk(X, Y, sample_weight, index, rows):
    """Validation and the first pass's statistics of one chunk."""
    _prepare_worker()
    where = f"in chunk {index} (rows {rows[0]} to {rows[1] - 1})"
    X, Y, sample_weight = _float_chunks(X, Y, sample_weight)
    for name, values in (("X", X), ("y", Y), ("sample_weight", sample_weight)):
        if not np.isfinite(values).all():
            raise ValueError(f"Input {name} contains NaN or infinity {where}.")
    if (sample_weight < 0).any():
        raise ValueError(f"Negative values in sample_weight {where}.")
    keep = sample_weight > 0
    if not keep.all():
        X, Y, sample_weight = X[keep], Y[keep], sample_weight[keep]
    empty = X.shape[0] == 0
    return dict(
        count=X.shape[0],
        weight=sample_weight.sum(),
        low=np.full(X.shape[1], np.inf) if empty else X.min(axis=0),
        high=np.full(X.shape[1], -np.inf) if empty else X.max(axis=0),
        magnitude=np.zeros(Y.shape[1]) if empty else np.abs(Y).max(axis=0),
    )


def _gather_chunk(X, Y, sample_weight, index, rows, picks, unit_scale):
    """The second pass over one chunk: its rows drawn for EM (``picks``,
    positions among its rows of positive weight; None: all of them) and,
    given ``unit_scale`` (max |y|), the weighted mean and sum of squared
    deviations of y / unit_scale over its rows of positive weight."""
    _prepare_worker()
    X, Y, sample_weight = _float_chunks(X, Y, sample_weight)
    keep = sample_weight > 0
    if not keep.all():
        X, Y, sample_weight = X[keep], Y[keep], sample_weight[keep]
    if picks is not None:
        X_em, Y_em, w_em = X[picks], Y[picks], sample_weight[picks]
    else:
        X_em, Y_em, w_em = X, Y, sample_weight
    result = dict(rows=(X_em, Y_em, w_em))
    if unit_scale is not None:
        # Sums down the columns, not BLAS's dot: BLAS kernels may round
        # differently with the alignment of a chunk's buffer, which differs
        # from process to process, and the scaling must not.
        weight = sample_weight.sum()
        unit = Y / unit_scale
        mean = (sample_weight[:, None] * unit).sum(axis=0) / max(weight, np.finfo(float).tiny)
        squares = (sample_weight[:, None] * (unit - mean) ** 2).sum(axis=0)
        result["moments"] = (weight, mean, squares)
    return result


def _combine_moments(moments):
    """Weighted mean and standard deviation from per-chunk (weight, mean,
    sum of squared deviations), combined in chunk order (Chan, Golub and
    LeVeque's pairwise update: no cancellation of large sums)."""
    total, mean, squares = 0.0, 0.0, 0.0
    for weight, chunk_mean, chunk_squares in moments:
        if weight == 0:
            continue
        combined = total + weight
        delta = chunk_mean - mean
        mean = mean + delta * (weight / combined)
        squares = squares + chunk_squares + delta**2 * (total * weight / combined)
        total = combined
    return mean, np.sqrt(squares / total)


def _float_chunks(X, Y, sample_weight):
    return (np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64),
            np.asarray(sample_weight, dtype=np.float64))


def _scale_inputs(X, offset, scale):
    # the operations of skpou._data.prepare, so that scaled rows are equal
    X = np.array(X, dtype=np.float64)
    X -= offset
    X /= scale
    return X


def _scale_targets(Y, offset, scale):
    Y = np.array(Y, dtype=np.float64)
    Y /= scale
    Y -= offset / scale
    return Y


def _names_carrier(X):
    """What scikit-learn reads feature names from: for a Dask DataFrame its
    empty pandas ``_meta`` (scikit-learn recognizes eager frames only)."""
    return getattr(X, "_meta", X) if hasattr(X, "columns") else X


def _as_dask_array(value, name, like=None):
    """A Dask array from a Dask array, DataFrame or Series, or (with
    ``like``, for y and weights) a NumPy array chunked like ``like``'s rows."""
    if is_dask_array(value):
        array = value
    elif dask.is_dask_collection(value) and hasattr(value, "to_dask_array"):
        array = value.to_dask_array(lengths=True)
    elif dask.is_dask_collection(value):
        raise ValueError(f"{name}: expected a Dask array, DataFrame or Series; got {type(value).__name__}.")
    else:
        array = np.asarray(value)
        if like is None:
            raise ValueError(f"{name} must be a Dask collection.")
        if array.shape[:1] != like.shape[:1]:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: "
                f"[{like.shape[0]}, {array.shape[0] if array.ndim else 0}]"
            )
        array = da.from_array(array, chunks=(like.chunks[0],) + array.shape[1:])
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}.")
    return array


def _known_row_chunks(array):
    if any(np.isnan(c) for c in array.chunks[0]):
        array = array.compute_chunk_sizes()
    return array


def _rows_like(array, X, name):
    """``array`` in X's chunks of rows, one chunk across columns."""
    array = _known_row_chunks(array)
    if array.shape[0] != X.shape[0]:
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"[{X.shape[0]}, {array.shape[0]}] (X and {name})."
        )
    if array.chunks[0] != X.chunks[0]:
        array = array.rechunk({0: X.chunks[0]})
    return array.rechunk({1: -1}) if array.ndim == 2 else array


# -------------------------------------------------------------- predict


def _checked_inputs(estimator, X, reset):
    """X as a 2-D Dask array, its feature names and count checked against
    (``reset``: recorded on) the estimator, as ``validate_data`` does."""
    _check_feature_names(estimator, _names_carrier(X), reset=reset)
    X = _as_dask_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D array X (n_samples, n_features); got {X.ndim}-D.")
    _check_n_features(estimator, X, reset=reset)
    return X


def predict_chunks(estimator, X, return_std):
    """``estimator.predict`` of a Dask array or DataFrame, as lazy Dask
    arrays with X's chunks of rows (and ``return_std``'s std likewise).

    The fitted estimator is one node of the graph, sent once to each worker.
    Non-finite inputs raise ValueError when the chunk holding them is
    computed.
    """
    X = _checked_inputs(estimator, X, reset=False).rechunk({1: -1})
    n_outputs = estimator.n_outputs_
    model = dask.delayed(estimator, pure=False)
    out = X.map_blocks(
        _predict_chunk, model, return_std, meta=np.empty((0, 0, 0)),
        chunks=(X.chunks[0], (1 + return_std,), (n_outputs,)), new_axis=2,
    )
    squeeze = 0 if estimator._y_was_1d else slice(None)
    if not return_std:
        return out[:, 0, squeeze]
    return out[:, 0, squeeze], out[:, 1, squeeze]


def predict_partitions_chunks(estimator, X, level):
    """``estimator.predict_partitions`` of a Dask array or DataFrame: a lazy
    Dask array (n_samples, n_partitions) with X's chunks of rows."""
    _check_feature_names(estimator, _names_carrier(X), reset=False)
    X = _as_dask_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2-D array X (n_samples, n_features); got {X.ndim}-D.")
    _check_n_features(estimator, X, reset=False)
    # the level checked, and the number of partitions, on one in-memory row
    n_partitions = _partitions_chunk(estimator.x_offset_[None, :], estimator, level).shape[1]
    return X.rechunk({1: -1}).map_blocks(
        _partitions_chunk, dask.delayed(estimator, pure=False), level,
        chunks=(X.chunks[0], (n_partitions,)), meta=np.empty((0, 0)),
    )


def _partitions_chunk(X, estimator, level):
    _prepare_worker()
    with warnings.catch_warnings():
        # names were checked on the Dask input; its chunks are plain arrays
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return estimator.predict_partitions(np.asarray(X, dtype=np.float64), level)


def _predict_chunk(X, estimator, return_std):
    """One chunk's mean (and std), stacked: (rows, 1 or 2, n_outputs)."""
    _prepare_worker()
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise ValueError("Input X contains NaN or infinity.")
    values = estimator._predict_validated(X, return_std)
    values = values if return_std else (values,)
    return np.stack([v.reshape(X.shape[0], -1) for v in values], axis=1)
