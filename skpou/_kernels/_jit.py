"""The one decorator every kernel is compiled with."""

from numba import njit


def kernel(function=None, **options):
    """``numba.njit`` with the package's settings: cached, GIL released.

    Use as ``@kernel`` or ``@kernel(fastmath=...)``.
    """
    settings = {"cache": True, "nogil": True, **options}
    if function is None:
        return lambda f: njit(**settings)(f)
    return njit(**settings)(function)
