"""The one decorator every kernel is compiled with."""

import logging

from numba import njit

logger = logging.getLogger("skpou")

# Whether a kernel has already fallen back to compiling without a cache (the
# note below is logged once per process).
_uncached = False


def kernel(function=None, **options):
    """``numba.njit`` with the package's settings: cached, GIL released.

    Use as ``@kernel`` or ``@kernel(fastmath=...)``. Where Numba finds no
    place to cache compiled code (the package on a read-only file system,
    no writable home or NUMBA_CACHE_DIR), the kernel is compiled without a
    cache instead: the package must import and work wherever it is
    installed, only each new process then compiles its kernels again.
    """
    settings = {"cache": True, "nogil": True, **options}
    if function is None:
        return lambda f: _compile(f, settings)
    return _compile(function, settings)


def _compile(function, settings):
    global _uncached
    try:
        return njit(**settings)(function)
    except RuntimeError:
        # Without signatures, njit compiles nothing when it decorates; the
        # one thing it sets up is the cache, which raises RuntimeError ("no
        # locator available") where no cache directory is writable. Any
        # other failure raises again below.
        if not settings["cache"]:
            raise
    if not _uncached:
        _uncached = True
        logger.warning(
            "skpou: Numba cannot cache compiled kernels here (no writable "
            "__pycache__ beside the package, user cache directory or "
            "NUMBA_CACHE_DIR), so each new process compiles them again at its "
            "first fit. Set NUMBA_CACHE_DIR to a writable directory to keep them."
        )
    return njit(**{**settings, "cache": False})(function)
