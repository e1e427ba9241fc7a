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

    def __reduce__(self) -> str:
        return "IN_PLACE"


IN_PLACE = _InPlace()

# --- point-to-point (p2p family): buffered sends


class _BufferAutomatic:
    """MPI.BUFFER_AUTOMATIC: attach a buffer without a size limit (MPI 4.1)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BUFFER_AUTOMATIC"

    def __reduce__(self) -> str:
        return "BUFFER_AUTOMATIC"


BUFFER_AUTOMATIC = _BufferAutomatic()
BSEND_OVERHEAD = 128      # bytes of the attached buffer each buffered message takes on top
__all__ += ["BUFFER_AUTOMATIC", "BSEND_OVERHEAD"]

# --- derived datatypes, packing, addresses (values as mpi4py 4.1.2 on Open MPI 5)
COMBINER_NAMED, COMBINER_DUP, COMBINER_CONTIGUOUS, COMBINER_VECTOR = 0, 1, 2, 3
COMBINER_HVECTOR, COMBINER_INDEXED, COMBINER_HINDEXED, COMBINER_INDEXED_BLOCK = 5, 6, 8, 9
COMBINER_STRUCT, COMBINER_SUBARRAY, COMBINER_DARRAY, COMBINER_F90_REAL = 11, 12, 13, 14
COMBINER_F90_COMPLEX, COMBINER_F90_INTEGER, COMBINER_RESIZED = 15, 16, 17
COMBINER_HINDEXED_BLOCK, COMBINER_VALUE_INDEX = 18, UNDEFINED
TYPECLASS_INTEGER, TYPECLASS_REAL, TYPECLASS_COMPLEX, TYPECLASS_LOGICAL = 1, 2, 3, 4
ORDER_C, ORDER_F, ORDER_FORTRAN = 0, 1, 1
DISTRIBUTE_BLOCK, DISTRIBUTE_CYCLIC, DISTRIBUTE_NONE, DISTRIBUTE_DFLT_DARG = 0, 1, 2, -1
__all__ += [
    "COMBINER_NAMED", "COMBINER_DUP", "COMBINER_CONTIGUOUS", "COMBINER_VECTOR",
    "COMBINER_HVECTOR", "COMBINER_INDEXED", "COMBINER_HINDEXED", "COMBINER_INDEXED_BLOCK",
    "COMBINER_STRUCT", "COMBINER_SUBARRAY", "COMBINER_DARRAY", "COMBINER_F90_REAL",
    "COMBINER_F90_COMPLEX", "COMBINER_F90_INTEGER", "COMBINER_RESIZED",
    "COMBINER_HINDEXED_BLOCK", "COMBINER_VALUE_INDEX",
    "TYPECLASS_INTEGER", "TYPECLASS_REAL", "TYPECLASS_COMPLEX", "TYPECLASS_LOGICAL",
    "ORDER_C", "ORDER_F", "ORDER_FORTRAN",
    "DISTRIBUTE_BLOCK", "DISTRIBUTE_CYCLIC", "DISTRIBUTE_NONE", "DISTRIBUTE_DFLT_DARG",
]


# --- topologies (``_topo``): Topo_test's answers (Open MPI's values) and the weight
# markers of distributed graphs (sentinels: compared by identity, never as ints)
CART, GRAPH, DIST_GRAPH = 1, 2, 3


class _Weights:
    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return f"MPI.{self._name}"

    def __reduce__(self) -> str:
        return self._name


UNWEIGHTED = _Weights("UNWEIGHTED")
WEIGHTS_EMPTY = _Weights("WEIGHTS_EMPTY")
__all__ += ["CART", "GRAPH", "DIST_GRAPH", "UNWEIGHTED", "WEIGHTS_EMPTY"]
# --- communicators, groups, attributes, object model, environment
# predefined attribute keys of COMM_WORLD (Open MPI's values, as mpi4py shows them):
# ``COMM_WORLD.Get_attr(TAG_UB)`` is the largest tag (TAG_MAX)
TAG_UB, IO, WTIME_IS_GLOBAL, APPNUM, LASTUSEDCODE, UNIVERSE_SIZE = 0, 2, 3, 4, 5, 6
# split types beyond COMM_TYPE_SHARED (MPI-4 hardware-guided splits)
COMM_TYPE_HW_UNGUIDED, COMM_TYPE_HW_GUIDED, COMM_TYPE_RESOURCE_GUIDED = 12, 13, 14
__all__ += ["IO", "WTIME_IS_GLOBAL", "APPNUM", "LASTUSEDCODE", "UNIVERSE_SIZE",
            "COMM_TYPE_HW_UNGUIDED", "COMM_TYPE_HW_GUIDED", "COMM_TYPE_RESOURCE_GUIDED"]

# --- one-sided communication (windows): Open MPI's values
LOCK_EXCLUSIVE, LOCK_SHARED = 1, 2
MODE_NOCHECK, MODE_NOPRECEDE, MODE_NOPUT, MODE_NOSTORE, MODE_NOSUCCEED = 1, 2, 4, 8, 16
WIN_BASE, WIN_SIZE, WIN_DISP_UNIT, WIN_CREATE_FLAVOR, WIN_MODEL = 7, 8, 9, 10, 11
WIN_FLAVOR_CREATE, WIN_FLAVOR_ALLOCATE, WIN_FLAVOR_DYNAMIC, WIN_FLAVOR_SHARED = 1, 2, 3, 4
WIN_SEPARATE, WIN_UNIFIED = 1, 2
__all__ += [
    "LOCK_EXCLUSIVE", "LOCK_SHARED", "MODE_NOCHECK", "MODE_NOPRECEDE", "MODE_NOPUT",
    "MODE_NOSTORE", "MODE_NOSUCCEED", "WIN_BASE", "WIN_SIZE", "WIN_DISP_UNIT",
    "WIN_CREATE_FLAVOR", "WIN_MODEL", "WIN_FLAVOR_CREATE", "WIN_FLAVOR_ALLOCATE",
    "WIN_FLAVOR_DYNAMIC", "WIN_FLAVOR_SHARED", "WIN_SEPARATE", "WIN_UNIFIED",
]

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
