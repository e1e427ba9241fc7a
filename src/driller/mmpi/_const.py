"""Every constant of mmpi's MPI surface, defined once (values as mpi4py's).

Nothing here imports anything: every other module takes its constants from
this one (``driller.MPI`` re-exports them).  The error classes (``SUCCESS``,
``ERR_*``) live in :mod:`driller._errcodes`, below :mod:`driller.errors`,
whose exceptions carry them.
"""

from __future__ import annotations

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "UNDEFINED", "TAG_UB", "TAG_MAX", "BOTTOM", "IN_PLACE",
    "ROOT",
    "KEYVAL_INVALID", "VERSION", "SUBVERSION",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL", "COMM_TYPE_SHARED",
    "THREAD_SINGLE", "THREAD_FUNNELED", "THREAD_SERIALIZED", "THREAD_MULTIPLE",
]

# ranks and tags
ANY_SOURCE = -1
ANY_TAG = -1
PROC_NULL = -2
UNDEFINED = -32766
TAG_MAX = (1 << 31) - 1   # the largest tag (what COMM_WORLD's TAG_UB attribute holds)

ROOT = -4                 # the root group's root in an intercommunicator collective
KEYVAL_INVALID = -1

# the MPI standard version whose semantics the implemented calls follow
VERSION, SUBVERSION = 3, 1

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


# --- communicators, groups, attributes, object model, environment
# predefined attribute keys of COMM_WORLD (Open MPI's values, as mpi4py shows them):
# ``COMM_WORLD.Get_attr(TAG_UB)`` is the largest tag (TAG_MAX)
TAG_UB, IO, WTIME_IS_GLOBAL, APPNUM, LASTUSEDCODE, UNIVERSE_SIZE = 0, 2, 3, 4, 5, 6
# split types beyond COMM_TYPE_SHARED (MPI-4 hardware-guided splits)
COMM_TYPE_HW_UNGUIDED, COMM_TYPE_HW_GUIDED, COMM_TYPE_RESOURCE_GUIDED = 12, 13, 14
__all__ += ["IO", "WTIME_IS_GLOBAL", "APPNUM", "LASTUSEDCODE", "UNIVERSE_SIZE",
            "COMM_TYPE_HW_UNGUIDED", "COMM_TYPE_HW_GUIDED", "COMM_TYPE_RESOURCE_GUIDED"]

# --- pickling, errors, mpi4py's pure-Python layers: file access modes (Open MPI's
# values; MPI.File opens and closes files and carries error handlers, no MPI-IO data
# access) and the info limits
MODE_RDONLY, MODE_RDWR, MODE_WRONLY, MODE_CREATE = 2, 8, 4, 1
MODE_EXCL, MODE_DELETE_ON_CLOSE, MODE_UNIQUE_OPEN = 64, 16, 32
MODE_SEQUENTIAL, MODE_APPEND = 256, 128
MAX_INFO_KEY, MAX_INFO_VAL = 36, 256    # Open MPI's (with the terminating NUL)
__all__ += ["MAX_INFO_KEY", "MAX_INFO_VAL", "MODE_RDONLY", "MODE_RDWR", "MODE_WRONLY",
            "MODE_CREATE", "MODE_EXCL", "MODE_DELETE_ON_CLOSE", "MODE_UNIQUE_OPEN",
            "MODE_SEQUENTIAL", "MODE_APPEND"]
