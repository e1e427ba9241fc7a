"""Every constant of mmpi's MPI surface, defined once (values as mpi4py's).

Nothing here imports anything of mmpi: every other module takes its constants
from this one (``driller.MPI`` re-exports them).
"""

from __future__ import annotations

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "UNDEFINED", "TAG_UB", "BOTTOM", "IN_PLACE",
    "SUCCESS", "ERR_TRUNCATE", "ERR_OTHER",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL", "COMM_TYPE_SHARED",
    "THREAD_SINGLE", "THREAD_FUNNELED", "THREAD_SERIALIZED", "THREAD_MULTIPLE",
]

# ranks and tags
ANY_SOURCE = -1
ANY_TAG = -1
PROC_NULL = -2
UNDEFINED = -32766
TAG_UB = (1 << 31) - 1

# error classes (MPICH/Open MPI values)
SUCCESS = 0
ERR_TRUNCATE = 15
ERR_OTHER = 16

# communicator and group comparison, split types
IDENT, CONGRUENT, SIMILAR, UNEQUAL = 0, 1, 2, 3
COMM_TYPE_SHARED = 1

# thread levels (mmpi ranks are single-threaded: THREAD_SINGLE is provided)
THREAD_SINGLE, THREAD_FUNNELED, THREAD_SERIALIZED, THREAD_MULTIPLE = 0, 1, 2, 3

BOTTOM = None


class _InPlace:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MPI.IN_PLACE"

    def __reduce__(self):
        return "IN_PLACE"


IN_PLACE = _InPlace()
