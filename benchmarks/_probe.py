"""One fit in a fresh process, for clean peak-memory numbers.

``python -m benchmarks._probe '<json>'`` with keys problem, n, n_test, params,
repeats; prints one JSON line with the timings, error and memory figures.
The process's high-water RSS (getrusage ru_maxrss) then belongs to this one
size only, which is why the scaling suite runs every size in a subprocess.
"""

import json
import pickle
import resource
import sys
import time
import tracemalloc
import warnings

import numpy as np


def _rss_bytes():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def main():
    spec = json.loads(sys.argv[1])
    from skpou import HierarchicalPOURegressor

    from ._common import rel_l2, warm_up_numba
    from .problems import PROBLEMS

    warm_up_numba()
    problem = PROBLEMS[spec["problem"]]
    X, y = problem.sample(spec["n"], seed=0)
    Xt, yt = problem.sample(spec["n_test"], seed=1)
    params = spec["params"]
    if "partitions" in params:
        params["partitions"] = tuple(params["partitions"])
    warnings.simplefilter("ignore")

    rss_before = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(spec["repeats"]):
        if times and sum(times) > spec.get("budget", 60.0):
            break
        model = HierarchicalPOURegressor(**params)
        start = time.perf_counter()
        model.fit(X, y)
        times.append(time.perf_counter() - start)
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    err = rel_l2(model.predict(Xt), yt)
    result = dict(
        times=times,
        n_iter=int(model.n_iter_),
        error=err,
        data_bytes=int(X.nbytes + y.nbytes),
        model_bytes=len(pickle.dumps(model)),
        rss_before=rss_before,
        # high-water RSS after the fits minus the RSS before them: an upper
        # bound on the fits' extra resident memory (exact when the fits set
        # the process's high-water mark, as they do beyond small n)
        rss_peak_extra=max(0, maxrss_after - rss_before),
        fits_set_high_water=maxrss_after > maxrss_before,
        maxrss_after=maxrss_after,
    )
    if spec.get("tracemalloc", True):
        del model
        tracemalloc.start()
        HierarchicalPOURegressor(**params).fit(X, y)
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
