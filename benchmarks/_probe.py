"""One fit in a fresh process, for clean peak-memory numbers.

``python -m benchmarks._probe '<json>'`` with keys problem, n, n_test, params,
repeats; prints one JSON line with the timings, error and memory figures.
The peak RSS (VmHWM, reset through /proc/self/clear_refs just before the
timed fits) then belongs to this one size only, which is why the scaling
suite runs every size in a subprocess.
"""

import json
import pickle
import resource
import sys
import time
import tracemalloc
import warnings


def _rss_bytes():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def _reset_high_water():
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False if unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_bytes():
    """Peak RSS since the last reset (VmHWM), else getrusage's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    reset = _reset_high_water()
    times = []
    for _ in range(spec["repeats"]):
        if times and sum(times) > spec.get("budget", 60.0):
            break
        model = HierarchicalPOURegressor(**params)
        start = time.perf_counter()
        model.fit(X, y)
        times.append(time.perf_counter() - start)
    high_water = _high_water_bytes()
    err = rel_l2(model.predict(Xt), yt)
    result = dict(
        times=times,
        n_iter=int(model.n_iter_),
        error=err,
        data_bytes=int(X.nbytes + y.nbytes),
        model_bytes=len(pickle.dumps(model)),
        rss_before=rss_before,
        # peak RSS during the fits (the counter is reset just before them)
        # minus the RSS before them; without the reset it is the lifetime
        # peak, an upper bound
        rss_peak_extra=max(0, high_water - rss_before),
        high_water_reset=reset,
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
