"""Row blocks and the threads that share them: the map and sum over rows.

Every pass of the fit over the training rows is a map over fixed blocks of
rows (``map``), or a sum of per-block partial results (``sum``): the
E-step, the normal equations, the gate terms, the polish system, the noise.
``Threads`` runs those passes on local threads; ``skpou._dask.DaskRows``,
the other backend, runs the same functions over the chunks of Dask arrays
(out of core, on a cluster) and hands NumPy arrays on to ``Threads``.

Blocks have a fixed size: row blocks, and so the order of floating-point
sums, never depend on the number of threads, which keeps fits bit-identical
across ``n_jobs``.
"""

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

from joblib import effective_n_jobs
from threadpoolctl import ThreadpoolController

ROWS_PER_BLOCK = 4096


def row_blocks(n_samples, size=ROWS_PER_BLOCK):
    """Consecutive slices of at most ``size`` rows covering range(n_samples)."""
    return [
        slice(start, min(start + size, n_samples))
        for start in range(0, n_samples, size)
    ]


class Threads:
    """Map and sum over fixed row blocks, on a thread pool or serially.

    ``function(*blocks)`` receives the same rows of each array given (views,
    so a function may write into an output array passed among them).
    """

    def __init__(self, executor=None):
        self._executor = executor

    def map(self, function, *arrays):
        """[function(*blocks) for each row block], in block order."""
        blocks = row_blocks(arrays[0].shape[0])
        if self._executor is None or len(blocks) == 1:
            return [function(*(a[rows] for a in arrays)) for rows in blocks]
        return list(
            self._executor.map(lambda rows: function(*(a[rows] for a in arrays)), blocks)
        )

    def sum(self, function, *arrays):
        """Sum, in block order, the tuples of arrays function(*blocks) returns.

        Results are added as they arrive rather than collected first: with
        millions of rows there are thousands of blocks, and their per-block
        partial sums (each node's Gram matrices, say) would otherwise pile up.
        """
        blocks = row_blocks(arrays[0].shape[0])

        def block(rows):
            return function(*(a[rows] for a in arrays))

        parts = map(block, blocks) if self._executor is None else self._executor.map(block, blocks)
        total = list(next(parts))
        for part in parts:
            for accumulated, value in zip(total, part):
                accumulated += value
        return tuple(total)

    def total(self, sample_weight):
        """The sum of the weights (a backend over chunks knows it already)."""
        return sample_weight.sum()

    def map_tasks(self, function, tasks):
        """[function(task) for task in tasks], on the pool if there is one."""
        if self._executor is None or len(tasks) <= 1:
            return [function(task) for task in tasks]
        return list(self._executor.map(function, tasks))


def is_dask_collection(*values):
    """Whether any value is a Dask collection (array, DataFrame, Series).

    Without importing Dask: whoever holds a Dask collection imported it, so
    the core install neither needs nor loads it.
    """
    dask = sys.modules.get("dask")
    return dask is not None and any(dask.is_dask_collection(v) for v in values)


@contextmanager
def local_threads(n_jobs):
    """``Threads`` for one fit or predict (n_jobs threads; None: serial).

    EM runs many short parallel steps (a kernel over each row block, a few
    milliseconds each), so the pool is started once per fit and is a plain
    executor: a joblib ``Parallel`` call costs ~10 ms of dispatch, more than
    the step itself. joblib parallelises the coarser per-partition solves
    (``skpou._experts.solve_normal_equations``).
    """
    n_threads = effective_n_jobs(n_jobs)
    # BLAS runs single-threaded inside: threads of its own on top of the
    # pool's oversubscribe the cores, and results then do not depend on
    # BLAS's thread count.
    with _blas_controller().limit(limits=1, user_api="blas"):
        if n_threads == 1:
            yield Threads()
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as executor:
                yield Threads(executor)


@lru_cache(maxsize=1)
def _blas_controller():
    # Created once: finding the loaded BLAS libraries takes milliseconds.
    return ThreadpoolController()
