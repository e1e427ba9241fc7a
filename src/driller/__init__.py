"""driller: cooperating Linux processes read and write one another's memory.

* ``driller.empty/zeros/empty_like/zeros_like/array``: numpy arrays in shared
  memory that pickle by reference (any multiprocessing start method, sockets).
* ``driller.drill(obj)``: make an existing buffer shareable in place.
* ``driller.attach(handle)``: a zero-copy numpy array onto a peer's memory.
* ``driller.mmpi`` / ``driller.MPI``: MPI-style messaging, at most one copy.

Submodules are imported on first use, so that ``driller run`` starts fast.
"""

import importlib
import os
import sys

from . import _cpython

_cpython.install()   # before any other submodule: CPython 3.13's loops in a try (_cpython)

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from . import _platform

_platform.check()   # a clear ImportError on a system driller cannot run on

__version__ = "0.1.0"

# Type checkers and IDEs see the lazily loaded names through this block (mypy knows
# the idiom; `typing` itself is not imported at run time).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import MPI, heap, hole, mapcache, mmpi, proxy, segment, sharedarray
    from .hole import Hole, check, drill
    from .segment import Handle
    from .sharedarray import (SharedArray, array, attach, cache_info, empty, empty_like,
                              handle, pickled_by_value, zeros, zeros_like)

_LAZY = {
    "empty": "sharedarray", "zeros": "sharedarray", "empty_like": "sharedarray",
    "zeros_like": "sharedarray", "array": "sharedarray", "SharedArray": "sharedarray",
    "handle": "sharedarray", "attach": "sharedarray", "cache_info": "sharedarray",
    "pickled_by_value": "sharedarray",
    "drill": "hole", "Hole": "hole", "check": "hole", "Handle": "segment",
}
_SUBMODULES = {"mmpi", "MPI", "heap", "hole", "sharedarray", "segment", "proxy", "mapcache"}

__all__ = [
    "empty", "zeros", "empty_like", "zeros_like", "array", "SharedArray", "handle",
    "drill", "Hole", "check", "attach", "Handle", "cache_info", "pickled_by_value",
    *_errors_all,
]


def _finish_imports() -> None:
    """Before a fork: wait for driller modules another thread is importing (its first
    driller call loads them).  Forked in that window, the child would hold a copy of
    the module's import lock owned by a thread it does not have, and its own first use
    of the module would wait for ever.  Importing a module that is being imported
    waits for its lock (importlib's own deadlock detection covers a thread that waits
    for ours); a failed import is the importing thread's to report."""
    for name, module in list(sys.modules.items()):
        if (name.startswith("driller.") and module is not None
                and getattr(getattr(module, "__spec__", None), "_initializing", False)):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported in the thread that imports
                pass


os.register_at_fork(before=_finish_imports)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'driller' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
