"""pytest collection: skpou/_dask.py (imported for its doctests, since
testpaths include the package) needs the optional Dask install."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("dask") is None or importlib.util.find_spec("distributed") is None:
    collect_ignore.append("skpou/_dask.py")
