"""skpou._kernels._jit: the kernels compile wherever the package is installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from skpou import HierarchicalPOURegressor

ROOT = Path(__file__).resolve().parents[1]

# Run in a new process in which Numba finds no cache locator, as on a
# read-only file system with no writable home or NUMBA_CACHE_DIR (Numba then
# raised "cannot cache function ...: no locator available" at import).
NO_CACHE_SCRIPT = """
import json, sys
import numba.core.caching as caching

class Nowhere(caching._CacheLocator):
    @classmethod
    def from_function(cls, py_func, py_file):
        return None

# CacheImpl since Numba 0.60, _CacheImpl before
impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
impl._locator_classes = [Nowhere]

import numpy as np
from numba.core.dispatcher import Dispatcher
import skpou
from skpou import _kernels
from skpou._kernels import experts, gates, mixture, polish

X, y = (np.array(a) for a in json.loads(sys.stdin.read()))
model = skpou.HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, y)
caches = sorted({
    type(value._cache).__name__
    for module in (experts, gates, mixture, polish)
    for value in vars(module).values() if isinstance(value, Dispatcher)
})
print(json.dumps({"prediction": model.predict(X).tolist(), "caches": caches}))
"""


def test_imports_and_fits_where_numba_cannot_cache():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(300, 2))
    y = X[:, 0] ** 2 + np.sin(X[:, 1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )}
    # Uncached, every kernel compiles in the new process; LLVM's optimization
    # passes, which caching has nothing to do with, are most of that time.
    env["NUMBA_OPT"] = "0"
    run = subprocess.run(
        [sys.executable, "-c", NO_CACHE_SCRIPT], input=json.dumps([X.tolist(), y.tolist()]),
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["caches"] == ["NullCache"]  # every kernel compiled uncached
    assert "cannot cache compiled kernels" in run.stderr  # said once, why and what to do
    assert run.stderr.count("skpou: Numba cannot cache") == 1
    # the same fit as with cached kernels, and a good one
    expected = HierarchicalPOURegressor(partitions=(2,), degree=2).fit(X, y).predict(X)
    np.testing.assert_allclose(result["prediction"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["prediction"], y, atol=1e-3)
