"""One out-of-core fit on a LocalCluster, in a fresh process.

``python -m benchmarks._dask_probe '<json>'`` with keys store (a Zarr
group made by ``make_store``), n (rows used: the store's first n), n_test,
params, n_workers; prints one JSON line: the fit time, the test error, the
peak memory of all processes (client + scheduler, which LocalCluster runs
in the client process, + nannies and workers), and each pass's wall time
and per-chunk task times from the scheduler's task stream.

Memory is sampled: every SAMPLE_SECONDS the RSS of this process and all
its descendants is summed, and the largest sum is the peak; the sum of each
process's own peak (VmHWM) is reported too, an upper bound (the processes
need not peak together).
"""

import json
import os
import sys
import threading
import time
import warnings

import numpy as np

SAMPLE_SECONDS = 0.05
CHUNK_TASKS = ("_serial_sum", "_summarize_chunk", "_gather_chunk")


def key_is_add(key):
    return key.startswith("_add_partial_sums")
STORE_CHUNK_ROWS = 500_000


def make_store(path, n, chunk_rows=STORE_CHUNK_ROWS, seed=0):
    """A Zarr group at ``path`` with X (n, 2) and y (n,) of Franke's function,
    uniform inputs, written chunk by chunk (memory: one chunk) and
    uncompressed (random floats do not compress; decompressing would only
    add CPU time). Chunk i's rows come from a generator seeded (seed, i), so
    the first m rows are the same for any n >= m."""
    import zarr

    from .problems import franke

    group = zarr.open_group(path, mode="w")
    kwargs = dict(dtype="f8", fill_value=0.0)
    if int(zarr.__version__.split(".")[0]) >= 3:
        X = group.create_array("X", shape=(n, 2), chunks=(chunk_rows, 2), compressors=None, **kwargs)
        y = group.create_array("y", shape=(n,), chunks=(chunk_rows,), compressors=None, **kwargs)
    else:
        X = group.create_dataset("X", shape=(n, 2), chunks=(chunk_rows, 2), compressor=None, **kwargs)
        y = group.create_dataset("y", shape=(n,), chunks=(chunk_rows,), compressor=None, **kwargs)
    for index, start in enumerate(range(0, n, chunk_rows)):
        stop = min(start + chunk_rows, n)
        rows = np.random.default_rng((seed, index)).random((stop - start, 2))
        X[start:stop] = rows
        y[start:stop] = franke(rows)


def _rss(process):
    try:
        return process.memory_info().rss
    except Exception:  # the process ended (a restarted worker, say)
        return 0


def _high_water(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of this process and its descendants."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process()
        self.peak = 0
        self.high_water = {}
        self._done = threading.Event()

    def processes(self):
        return [self.root, *self.root.children(recursive=True)]

    def run(self):
        while not self._done.is_set():
            processes = self.processes()
            self.peak = max(self.peak, sum(_rss(p) for p in processes))
            for p in processes:
                self.high_water[p.pid] = max(self.high_water.get(p.pid, 0), _high_water(p.pid))
            time.sleep(SAMPLE_SECONDS)

    def stop(self):
        self._done.set()
        self.join()


def _record_passes(log):
    """Time every pass over the chunks (``DaskRows.sum`` and the preparation's
    two passes), labelled by the function summed."""
    from skpou import _dask

    sum_over_chunks, compute_chunks = _dask.DaskRows.sum, _dask._compute_chunks

    def timed_sum(self, function, *arrays):
        start = time.time()
        result = sum_over_chunks(self, function, *arrays)
        if isinstance(arrays[0], _dask.da.Array):
            label = function.__qualname__.replace(".<locals>.", ":")
            log.append(dict(label=label, start=start, stop=time.time(),
                            n_chunks=arrays[0].numblocks[0],
                            partial_sum_bytes=int(sum(np.asarray(r).nbytes for r in result))))
        return result

    def timed_compute(per_chunk, arrays, *args, **kwargs):
        start = time.time()
        result = compute_chunks(per_chunk, arrays, *args, **kwargs)
        log.append(dict(label=per_chunk.__name__.strip("_"), start=start, stop=time.time(),
                        n_chunks=arrays[0].numblocks[0], partial_sum_bytes=None))
        return result

    _dask.DaskRows.sum = timed_sum
    _dask._compute_chunks = timed_compute


def main():
    spec = json.loads(sys.argv[1])
    import dask.array as da
    from distributed import Client, LocalCluster, get_task_stream

    from skpou import HierarchicalPOURegressor

    from ._common import rel_l2
    from .problems import PROBLEMS

    warnings.simplefilter("ignore")
    params = spec["params"]
    started = time.perf_counter()
    cluster = LocalCluster(n_workers=spec["n_workers"], threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    client = Client(cluster)
    startup = time.perf_counter() - started
    # Load the Numba kernels in every process first (as the in-memory
    # benchmarks do): no timing includes compilation or cache loading.
    rng = np.random.default_rng(0)
    X_small = rng.random((4_000, 2))
    # (em_subsample below the rows: every pass of a large fit runs)
    HierarchicalPOURegressor(partitions=(2, 2), degree=2, n_cycles=1, em_subsample=1_000).fit(
        da.from_array(X_small, chunks=(1_000, 2)), da.from_array(X_small.sum(axis=1), chunks=1_000))

    X = da.from_zarr(spec["store"], component="X")[: spec["n"]]
    y = da.from_zarr(spec["store"], component="y")[: spec["n"]]
    passes = []
    _record_passes(passes)
    sampler = MemorySampler()
    rss_before = sum(_rss(p) for p in sampler.processes())
    sampler.start()
    with get_task_stream(client) as stream:
        start = time.perf_counter()
        model = HierarchicalPOURegressor(**params).fit(X, y)
        seconds = time.perf_counter() - start
    sampler.stop()
    Xt, yt = PROBLEMS["franke_2d"].sample(spec["n_test"], seed=1)
    error = rel_l2(model.predict(Xt), yt)

    tasks = [
        (t["key"][0] if isinstance(t["key"], tuple) else t["key"], s["start"], s["stop"])
        for t in stream.data for s in t["startstops"] if s["action"] == "compute"
    ]
    for record in passes:
        inside = [(key, stop - begin) for key, begin, stop in tasks
                  if record["start"] <= begin <= record["stop"]]
        # the task running the pass's function on a chunk, the reads and
        # scaling of its arrays (other tasks), the additions of partial sums
        main = [d for key, d in inside if key.startswith(CHUNK_TASKS)]
        adds = [d for key, d in inside if key.startswith("_add_partial_sums")]
        record.update(
            seconds=record["stop"] - record["start"], n_tasks=len(inside),
            chunk_task_median=float(np.median(main)) if main else None,
            per_chunk_all_tasks=float(sum(d for _, d in inside if not key_is_add(_))) / record["n_chunks"],
            add_task_median=float(np.median(adds)) if adds else None,
            n_add_tasks=len(adds),
        )
    print(json.dumps(dict(
        n=spec["n"], seconds=seconds, n_iter=int(model.n_iter_), error=error,
        n_chunks=int(X.numblocks[0]), chunk_rows=int(X.chunks[0][0]),
        startup_seconds=startup, rss_before=rss_before, rss_peak=sampler.peak,
        rss_high_water_sum=int(sum(sampler.high_water.values())),
        n_processes=len(sampler.high_water), passes=passes,
    )))
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
