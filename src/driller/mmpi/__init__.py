"""driller.mmpi: MPI-style message passing between processes, at most one copy.

Names follow mpi4py: uppercase methods move buffers, lowercase ones move Python
objects (pickle protocol 5, large buffers out of band).  ``COMM_WORLD`` is set
up lazily from the launcher's environment (``driller run -n N prog.py``); without
it a program is a world of one rank, as MPI's singleton init.

See docs/mmpi.md for the design and measured figures.
"""

from __future__ import annotations

from ..errors import MmpiError, MmpiNotImplementedError, PeerDiedError, TruncationError
from ._coll._ops import (BAND, BOR, BXOR, LAND, LOR, LXOR, MAX, MAXLOC, MIN, MINLOC, PROD, SUM,
                         Op)
from ._comm import Comm, Wtick, Wtime, init_world
from ._const import (ANY_SOURCE, ANY_TAG, COMM_TYPE_SHARED, CONGRUENT, IDENT, IN_PLACE, PROC_NULL,
                     SIMILAR, TAG_UB, UNDEFINED, UNEQUAL)
from ._datatype import Datatype
from ._group import COMM_NULL, GROUP_EMPTY, Group
from ._request import REQUEST_NULL, Prequest, Request, Status
from ._world import ENV_RANK, ENV_SIZE, ENV_WORLD_FD, create_world, mark_dead

__all__ = [
    "COMM_WORLD", "COMM_SELF", "init_world", "spawn", "Wtime", "Wtick",
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "TAG_UB", "UNDEFINED", "REQUEST_NULL",
    "Comm", "Request", "Prequest", "Status", "Datatype",
    "MmpiError", "MmpiNotImplementedError", "PeerDiedError", "TruncationError",
    "create_world", "mark_dead", "ENV_RANK", "ENV_SIZE", "ENV_WORLD_FD",
    "Op", "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC",
    "MINLOC", "Group", "GROUP_EMPTY", "COMM_NULL", "COMM_TYPE_SHARED", "IN_PLACE",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL",
]


def __getattr__(name: str):
    if name == "COMM_WORLD":
        from ._comm import world_comm
        return world_comm()
    if name == "COMM_SELF":
        from ._comm import self_comm
        return self_comm()
    if name == "spawn":
        from ._spawn import spawn
        return spawn
    raise AttributeError(f"module 'driller.mmpi' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
