"""driller: cooperating Linux processes read and write one another's memory.

* ``driller.empty/zeros/empty_like/zeros_like/array``: numpy arrays in shared
  memory that pickle by reference (any multiprocessing start method, sockets).
* ``driller.drill(obj)``: make an existing buffer shareable in place.
* ``driller.attach(handle)``: a zero-copy numpy array onto a peer's memory.
* ``driller.mmpi`` / ``driller.MPI``: MPI-style messaging, at most one copy.
"""

from .drill import Hole, check, drill
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .heap import SharedArray, array, empty, empty_like, handle, zeros, zeros_like
from .segment import Handle
from .share import attach, cache_info

__version__ = "0.1.0"

__all__ = [
    "empty", "zeros", "empty_like", "zeros_like", "array", "SharedArray", "handle",
    "drill", "Hole", "check", "attach", "Handle", "cache_info", *_errors_all,
]


def __getattr__(name):
    if name in ("mmpi", "MPI"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'driller' has no attribute {name!r}")
