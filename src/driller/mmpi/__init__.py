"""driller.mmpi: MPI-style message passing between processes, at most one copy.

Names follow mpi4py: uppercase methods move buffers, lowercase ones move Python
objects (pickle protocol 5, large buffers out of band).  ``COMM_WORLD`` is set
up lazily from the launcher's environment (``driller run -n N prog.py``); without
it a program is a world of one rank, as MPI's singleton init.

See docs/mmpi.md for the design and measured figures.
"""

from __future__ import annotations

import importlib
import os
TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing (mypy knows the idiom)

from ..errors import MmpiError, MmpiNotImplementedError, PeerDiedError, TruncationError

# The rest loads on first use (PEP 562), as in driller/__init__: `driller run`
# imports driller.mmpi._launcher, which runs this file, and must not pay for
# _comm, _coll, _transport and numpy (docs/launcher.md, "Startup").  Type
# checkers and IDEs see the real names through this block.
if TYPE_CHECKING:
    from ._coll._ops import (BAND, BOR, BXOR, LAND, LOR, LXOR, MAX, MAXLOC, MIN, MINLOC, PROD,
                             SUM, Op)
    from ._comm import COMM_NULL, Comm, Intracomm, Wtick, Wtime, init_world, route
    from ._const import (ANY_SOURCE, ANY_TAG, COMM_TYPE_SHARED, CONGRUENT, IDENT, IN_PLACE,
                         PROC_NULL, SIMILAR, TAG_UB, UNDEFINED, UNEQUAL)
    from ._datatype import Datatype
    from ._group import GROUP_EMPTY, Group
    from ._inter import Intercomm
    from ._request import (MESSAGE_NO_PROC, MESSAGE_NULL, REQUEST_NULL, Grequest, Message,
                           Prequest, Request, Status)
    from ._spawn import spawn
    from ._topo import (CART, DIST_GRAPH, GRAPH, UNWEIGHTED, WEIGHTS_EMPTY, Cartcomm,
                        Compute_dims, Distgraphcomm, Graphcomm, Topocomm)
    from ._world import ENV_RANK, ENV_SIZE, ENV_WORLD_FD, create_world, mark_dead
    from ._buffer import Alloc_mem, Free_mem, buffer
    from ._rma import WIN_NULL, Win

    COMM_WORLD: Intracomm   # made at first use (module __getattr__ below)
    COMM_SELF: Intracomm

__all__ = [
    "COMM_WORLD", "COMM_SELF", "init_world", "spawn", "Wtime", "Wtick",
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "TAG_UB", "UNDEFINED", "REQUEST_NULL",
    "route", "Comm", "Intracomm", "Intercomm", "Request", "Prequest", "Status", "Datatype",
    "Grequest", "Message", "MESSAGE_NULL", "MESSAGE_NO_PROC",
    "MmpiError", "MmpiNotImplementedError", "PeerDiedError", "TruncationError",
    "create_world", "mark_dead", "ENV_RANK", "ENV_SIZE", "ENV_WORLD_FD",
    "Op", "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC",
    "MINLOC", "Group", "GROUP_EMPTY", "COMM_NULL", "COMM_TYPE_SHARED", "IN_PLACE",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL",
    "Topocomm", "Cartcomm", "Graphcomm", "Distgraphcomm", "Compute_dims", "CART", "GRAPH",
    "DIST_GRAPH", "UNWEIGHTED", "WEIGHTS_EMPTY",
]


# name -> submodule that defines it (loaded on first access, then cached here)
_LAZY = {
    **dict.fromkeys(("BAND", "BOR", "BXOR", "LAND", "LOR", "LXOR", "MAX", "MAXLOC", "MIN",
                     "MINLOC", "PROD", "SUM", "Op"), "._coll._ops"),
    **dict.fromkeys(("COMM_NULL", "Comm", "Intracomm", "Wtick", "Wtime", "init_world",
                     "route"), "._comm"),
    **dict.fromkeys(("ANY_SOURCE", "ANY_TAG", "COMM_TYPE_SHARED", "CONGRUENT", "IDENT",
                     "IN_PLACE", "PROC_NULL", "SIMILAR", "TAG_UB", "UNDEFINED", "UNEQUAL"),
                    "._const"),
    "Datatype": "._datatype",
    "Intercomm": "._inter",
    **dict.fromkeys(("GROUP_EMPTY", "Group"), "._group"),
    **dict.fromkeys(("REQUEST_NULL", "Prequest", "Request", "Status", "Grequest", "Message",
                     "MESSAGE_NULL", "MESSAGE_NO_PROC"), "._request"),
    "spawn": "._spawn",
    **dict.fromkeys(("CART", "DIST_GRAPH", "GRAPH", "UNWEIGHTED", "WEIGHTS_EMPTY", "Cartcomm",
                     "Compute_dims", "Distgraphcomm", "Graphcomm", "Topocomm"), "._topo"),
    **dict.fromkeys(("ENV_RANK", "ENV_SIZE", "ENV_WORLD_FD", "create_world", "mark_dead"),
                    "._world"),
}

# one-sided communication (windows) and MPI memory
__all__ += ["Win", "WIN_NULL", "buffer", "Alloc_mem", "Free_mem"]
_LAZY.update({"Win": "._rma", "WIN_NULL": "._rma", "buffer": "._buffer",
              "Alloc_mem": "._buffer", "Free_mem": "._buffer"})

# A rank started by `driller run` loads the communicator at import, as before this
# package was lazy: _comm takes the launcher's variables out of os.environ and
# registers its fork hook now, so that a child forked before COMM_WORLD's first use
# still knows it is a fork of the rank (the variable's name is _world.ENV_WORLD_FD).
if "DRILLER_MMPI_WORLD_FD" in os.environ:
    importlib.import_module("._comm", __name__)
    importlib.import_module("._topo", __name__)   # Intracomm.Create_cart & co.


def __getattr__(name: str) -> object:
    if name in ("COMM_WORLD", "COMM_SELF") or _LAZY.get(name) == "._comm":
        # _inter sits above _comm and registers Intracomm.Create_intercomm there
        importlib.import_module("._inter", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name == "COMM_WORLD":
        from ._comm import world_comm
        from . import _topo  # noqa: F401  (registers the topologies with Intracomm)
        return world_comm()
    if name == "COMM_SELF":
        from ._comm import self_comm
        from . import _topo  # noqa: F401,F811
        return self_comm()
    raise AttributeError(f"module 'driller.mmpi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
