# mypy: implicit-reexport
# (the names are imported from driller.mmpi and listed in __all__ by pieces mypy cannot
# read: every import here is a re-export)
"""An mpi4py-compatible facade: ``from driller import MPI``.

The subset implemented is point-to-point (buffers and objects), requests,
statuses, collectives (buffers and objects, reduction ops, Ibarrier/Ibcast/
Iallreduce), communicators (Dup, Split, Split_type, Create, groups),
predefined datatypes and the environment calls (all from ``driller.mmpi``'s
modules: ``_const``, ``_datatype``, ``_request``, ``_comm``, ``_group``,
``_coll``).  Any other MPI name raises :class:`driller.errors.MmpiNotImplementedError` naming the call
(also an AttributeError, so ``hasattr`` stays usable).
"""

from __future__ import annotations

import socket as _socket
from typing import TYPE_CHECKING, Any

from .errors import MmpiError as Exception  # noqa: A001  (mpi4py's MPI.Exception)
from .errors import MmpiNotImplementedError as _NotImpl
from .mmpi import _comm
from .mmpi._coll._ops import (BAND, BOR, BXOR, LAND, LOR, LXOR, MAX, MAXLOC, MIN,  # noqa: F401
                              MINLOC, NO_OP, OP_NULL, PROD, REPLACE, SUM, Op)
from .mmpi._comm import Comm, Intracomm, Wtick, Wtime
from . import _errcodes
from ._errcodes import ERR_LASTCODE, SUCCESS  # noqa: F401
from .mmpi import _const
from .mmpi._const import (ANY_SOURCE, ANY_TAG, BOTTOM, COMM_TYPE_SHARED,  # noqa: F401
                          CONGRUENT, IDENT, IN_PLACE, KEYVAL_INVALID, PROC_NULL,
                          ROOT, SIMILAR, TAG_UB, THREAD_FUNNELED, THREAD_MULTIPLE,
                          THREAD_SERIALIZED, THREAD_SINGLE, UNDEFINED, UNEQUAL)
from .mmpi._datatype import DATATYPE_NULL, Datatype  # noqa: F401
from .mmpi._datatype import DATATYPES as _DATATYPES
from .mmpi._errhandler import (ERRHANDLER_NULL, ERRORS_ABORT, ERRORS_ARE_FATAL,  # noqa: F401
                               ERRORS_RETURN, Errhandler)
from .mmpi._info import INFO_ENV, INFO_NULL, Info  # noqa: F401
from .mmpi._group import GROUP_EMPTY, Group  # noqa: F401
from .mmpi._request import REQUEST_NULL, Prequest, Request, Status


_DT_NAMES = [
    "BYTE", "CHAR", "SIGNED_CHAR", "SHORT", "INT", "LONG", "LONG_LONG",
    "UNSIGNED_CHAR", "UNSIGNED_SHORT", "UNSIGNED_INT", "UNSIGNED_LONG",
    "UNSIGNED_LONG_LONG", "UNSIGNED", "FLOAT", "DOUBLE", "LONG_DOUBLE", "C_BOOL", "BOOL",
    "INT8_T", "INT16_T", "INT32_T", "INT64_T", "UINT8_T", "UINT16_T", "UINT32_T",
    "UINT64_T", "C_FLOAT_COMPLEX", "C_DOUBLE_COMPLEX", "COMPLEX", "DOUBLE_COMPLEX",
    "WCHAR", "SIGNED_SHORT", "SIGNED_INT", "SIGNED_LONG", "SIGNED_LONG_LONG",
    "C_COMPLEX", "C_LONG_DOUBLE_COMPLEX", "FLOAT16_T", "FLOAT32_T", "FLOAT64_T",
    "PACKED", "AINT", "OFFSET", "COUNT",
]
globals().update({n: _DATATYPES[n] for n in _DT_NAMES})
_ERR_NAMES = [n for n in _errcodes.__all__ if n.startswith("ERR_")]
globals().update({n: getattr(_errcodes, n) for n in _ERR_NAMES})

# For type checkers: the names set through globals() above and made on first use
# (module __getattr__ below), with their types.
if TYPE_CHECKING:
    COMM_WORLD: Intracomm
    COMM_SELF: Intracomm
    _datatype: Datatype
    _errorcode: int
    CHAR = WCHAR = SIGNED_CHAR = SHORT = SIGNED_SHORT = INT = SIGNED_INT = LONG = _datatype
    SIGNED_LONG = LONG_LONG = SIGNED_LONG_LONG = UNSIGNED_CHAR = UNSIGNED_SHORT = _datatype
    UNSIGNED = UNSIGNED_INT = UNSIGNED_LONG = UNSIGNED_LONG_LONG = FLOAT = FLOAT32_T = _datatype
    DOUBLE = FLOAT64_T = LONG_DOUBLE = C_BOOL = BOOL = INT8_T = SINT8_T = INT16_T = _datatype
    SINT16_T = INT32_T = SINT32_T = INT64_T = SINT64_T = UINT8_T = UINT16_T = _datatype
    UINT32_T = UINT64_T = FLOAT16_T = BFLOAT16_T = C_COMPLEX = C_FLOAT_COMPLEX = _datatype
    C_DOUBLE_COMPLEX = C_LONG_DOUBLE_COMPLEX = CXX_BOOL = CXX_FLOAT_COMPLEX = _datatype
    CXX_DOUBLE_COMPLEX = CXX_LONG_DOUBLE_COMPLEX = CHARACTER = LOGICAL = F_BOOL = _datatype
    INTEGER = F_INT = REAL = F_FLOAT = DOUBLE_PRECISION = F_DOUBLE = COMPLEX = _datatype
    F_COMPLEX = F_FLOAT_COMPLEX = DOUBLE_COMPLEX = F_DOUBLE_COMPLEX = LOGICAL1 = _datatype
    LOGICAL2 = LOGICAL4 = LOGICAL8 = INTEGER1 = INTEGER2 = INTEGER4 = INTEGER8 = _datatype
    REAL4 = REAL8 = COMPLEX8 = COMPLEX16 = REAL16 = COMPLEX32 = LOGICAL16 = _datatype
    INTEGER16 = REAL2 = COMPLEX4 = PACKED = BYTE = AINT = OFFSET = COUNT = SHORT_INT = _datatype
    INT_INT = TWOINT = LONG_INT = FLOAT_INT = DOUBLE_INT = LONG_DOUBLE_INT = _datatype
    ERR_BUFFER = ERR_COUNT = ERR_TYPE = ERR_TAG = ERR_COMM = ERR_RANK = ERR_REQUEST = _errorcode
    ERR_ROOT = ERR_GROUP = ERR_OP = ERR_TOPOLOGY = ERR_DIMS = ERR_ARG = ERR_UNKNOWN = _errorcode
    ERR_TRUNCATE = ERR_OTHER = ERR_INTERN = ERR_IN_STATUS = ERR_PENDING = _errorcode
    ERR_ACCESS = ERR_AMODE = ERR_ASSERT = ERR_BAD_FILE = ERR_BASE = ERR_CONVERSION = _errorcode
    ERR_DISP = ERR_DUP_DATAREP = ERR_FILE_EXISTS = ERR_FILE_IN_USE = ERR_FILE = _errorcode
    ERR_INFO_KEY = ERR_INFO_NOKEY = ERR_INFO_VALUE = ERR_INFO = ERR_IO = ERR_KEYVAL = _errorcode
    ERR_LOCKTYPE = ERR_NAME = ERR_NO_MEM = ERR_NOT_SAME = ERR_NO_SPACE = _errorcode
    ERR_NO_SUCH_FILE = ERR_PORT = ERR_QUOTA = ERR_READ_ONLY = ERR_RMA_CONFLICT = _errorcode
    ERR_RMA_SYNC = ERR_SERVICE = ERR_SIZE = ERR_SPAWN = ERR_UNSUPPORTED_DATAREP = _errorcode
    ERR_UNSUPPORTED_OPERATION = ERR_WIN = ERR_RMA_RANGE = ERR_RMA_ATTACH = _errorcode
    ERR_RMA_FLAVOR = ERR_RMA_SHARED = ERR_PROC_ABORTED = ERR_SESSION = _errorcode
    ERR_VALUE_TOO_LARGE = ERR_ERRHANDLER = _errorcode

__all__ = [
    "COMM_WORLD", "COMM_SELF", "Comm", "Intracomm", "Wtime", "Wtick", "Get_processor_name",
    "Status", "Request", "Prequest", "REQUEST_NULL", "ANY_SOURCE", "ANY_TAG", "PROC_NULL",
    "IN_PLACE", "SUCCESS", "UNDEFINED", "TAG_UB", "ERR_TRUNCATE", "Exception", "Datatype",
    "Init", "Init_thread", "Finalize", "Is_initialized", "Is_finalized", "Query_thread",
    "THREAD_SINGLE", "THREAD_FUNNELED", "THREAD_SERIALIZED", "THREAD_MULTIPLE",
    "Op", "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC",
    "MINLOC", "REPLACE", "NO_OP", "OP_NULL", "Group", "GROUP_EMPTY", "COMM_NULL",
    "COMM_TYPE_SHARED", "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL",
    "get_vendor", "Get_version", "Get_library_version", "Get_error_class", "Get_error_string",
    "Pcontrol", "ROOT", "KEYVAL_INVALID", "DATATYPE_NULL", "Info", "INFO_NULL", "INFO_ENV",
    "Errhandler", "ERRHANDLER_NULL", "ERRORS_RETURN", "ERRORS_ARE_FATAL", "ERRORS_ABORT",
] + _DT_NAMES + _ERR_NAMES


# Each family of the MPI surface adds its names in its own block below (imports and
# ``__all__ +=``), so that families filled in parallel merge without overlap.

# --- point-to-point extras: Message, buffered sends
from .mmpi._comm import Attach_buffer, Detach_buffer, Flush_buffer, Iflush_buffer  # noqa: E402
from .mmpi._const import BSEND_OVERHEAD, BUFFER_AUTOMATIC  # noqa: E402
from .mmpi._request import MESSAGE_NO_PROC, MESSAGE_NULL, Grequest, Message  # noqa: E402
__all__ += ["Message", "MESSAGE_NULL", "MESSAGE_NO_PROC", "Grequest", "Attach_buffer",
            "Detach_buffer", "Flush_buffer", "Iflush_buffer", "BSEND_OVERHEAD",
            "BUFFER_AUTOMATIC"]

# --- derived datatypes, packing, addresses
from .mmpi import _datatype as _dtmod  # noqa: E402
from .mmpi._datatype import Aint_add, Aint_diff, Get_address  # noqa: E402,F401
from .mmpi._const import (COMBINER_CONTIGUOUS, COMBINER_DARRAY, COMBINER_DUP,  # noqa: E402,F401
                          COMBINER_F90_COMPLEX, COMBINER_F90_INTEGER, COMBINER_F90_REAL,
                          COMBINER_HINDEXED, COMBINER_HINDEXED_BLOCK, COMBINER_HVECTOR,
                          COMBINER_INDEXED, COMBINER_INDEXED_BLOCK, COMBINER_NAMED,
                          COMBINER_RESIZED, COMBINER_STRUCT, COMBINER_SUBARRAY,
                          COMBINER_VALUE_INDEX, COMBINER_VECTOR, DISTRIBUTE_BLOCK,
                          DISTRIBUTE_CYCLIC, DISTRIBUTE_DFLT_DARG, DISTRIBUTE_NONE, ORDER_C,
                          ORDER_F, ORDER_FORTRAN, TYPECLASS_COMPLEX, TYPECLASS_INTEGER,
                          TYPECLASS_LOGICAL, TYPECLASS_REAL)
_DT_MORE = [n for n in _DATATYPES if n not in _DT_NAMES]
globals().update({n: _DATATYPES[n] for n in _DT_MORE})
_typedict = _dtmod.TYPEDICT
_typedict_c = _dtmod.TYPEDICT_C
_typedict_f = _dtmod.TYPEDICT_F
_typecode = _dtmod.typecode
_typealign = _dtmod.typealign
__all__ += _DT_MORE + [n for n in _const.__all__ if n.startswith(
    ("COMBINER_", "TYPECLASS_", "ORDER_", "DISTRIBUTE_"))] + [
    "Get_address", "Aint_add", "Aint_diff"]

# --- buffer exporters and collectives

# --- communicators, groups, attributes, object model, environment
import threading as _threading

from .mmpi._comm import COMM_NULL  # noqa: E402
from .mmpi._const import (APPNUM, COMM_TYPE_HW_GUIDED, COMM_TYPE_HW_UNGUIDED,  # noqa: E402
                          COMM_TYPE_RESOURCE_GUIDED, IO, LASTUSEDCODE, UNIVERSE_SIZE,
                          WTIME_IS_GLOBAL)
from .mmpi._group import GROUP_NULL  # noqa: E402
from .mmpi._session import SESSION_NULL, Session  # noqa: E402


def Is_thread_main() -> bool:
    """Whether the calling thread is the main thread (the one that initialized MPI)."""
    return _threading.current_thread() is _threading.main_thread()


def Get_hw_resource_info() -> Info:
    """Information about the hardware platform: driller's ranks share one machine
    (``mpi_hw_resource_type``: ``mpi_shared_memory``)."""
    return Info.Create({"mpi_hw_resource_type": "mpi_shared_memory"})


def _handle_class(arg: object, what: str) -> type:
    cls = arg if isinstance(arg, type) else type(arg)
    if cls is Status or issubclass(cls, Status) or (
            cls.__module__.startswith("driller.") and (hasattr(cls, "Free") or hasattr(cls, "free"))):
        return cls
    raise TypeError(f"{what}: expected an MPI handle object or class, got {arg!r}")


def _sizeof(arg: object) -> int:
    """The size in bytes of the MPI handle of an object or class (a Status: its
    fields)."""
    cls = _handle_class(arg, "_sizeof")
    return 24 if issubclass(cls, Status) else 8


def _addressof(arg: object) -> int:
    """The address of the MPI handle of an object (its identity in driller)."""
    if isinstance(arg, type):
        raise TypeError(f"_addressof: expected an MPI handle object, got {arg!r}")
    _handle_class(arg, "_addressof")
    return id(arg)


def _handleof(arg: Any) -> int:
    """The MPI handle of an object (``obj.handle``; a Status: its address)."""
    if isinstance(arg, type):
        raise TypeError(f"_handleof: expected an MPI handle object, got {arg!r}")
    cls = _handle_class(arg, "_handleof")
    if issubclass(cls, Status):
        return id(arg)
    return arg.handle  # type: ignore[no-any-return]


__all__ += ["GROUP_NULL", "SESSION_NULL", "Session", "APPNUM", "IO", "LASTUSEDCODE",
            "UNIVERSE_SIZE", "WTIME_IS_GLOBAL", "COMM_TYPE_HW_GUIDED", "COMM_TYPE_HW_UNGUIDED",
            "COMM_TYPE_RESOURCE_GUIDED", "Is_thread_main", "Get_hw_resource_info"]

# --- pickling, errors, mpi4py's pure-Python layers
from .mmpi._pickle import Pickle, pickle  # noqa: E402,F401
from .mmpi._errclass import (Add_error_class, Add_error_code,  # noqa: E402,F401
                             Add_error_string, Remove_error_class, Remove_error_code,
                             Remove_error_string)
from .mmpi._const import (MODE_APPEND, MODE_CREATE, MODE_DELETE_ON_CLOSE,  # noqa: E402,F401
                          MODE_EXCL, MODE_RDONLY, MODE_RDWR, MODE_SEQUENTIAL,
                          MODE_UNIQUE_OPEN, MODE_WRONLY, MAX_INFO_KEY, MAX_INFO_VAL)
from .mmpi._file import FILE_NULL, File  # noqa: E402,F401
from .mmpi._pylayers import comm_lock as _comm_lock  # noqa: E402,F401  (mpi4py.util.pkl5)
from .mmpi._pylayers import comm_lock_table as _comm_lock_table  # noqa: E402,F401
from .mmpi._pylayers import commctx_inter as _commctx_inter  # noqa: E402,F401
from .mmpi._pylayers import commctx_intra as _commctx_intra  # noqa: E402,F401
from .mmpi._const import SUBVERSION, VERSION  # noqa: E402,F401  (mpi4py.run, futures)
__all__ += ["Pickle", "pickle", "Add_error_class", "Add_error_code", "Add_error_string",
            "Remove_error_class", "Remove_error_code", "Remove_error_string",
            "MODE_RDONLY", "MODE_WRONLY", "MODE_RDWR", "MODE_CREATE", "MODE_EXCL",
            "MODE_DELETE_ON_CLOSE", "MODE_UNIQUE_OPEN", "MODE_SEQUENTIAL", "MODE_APPEND",
            "MAX_INFO_KEY", "MAX_INFO_VAL", "File", "FILE_NULL", "VERSION", "SUBVERSION"]

# --- topologies
from .mmpi._topo import (CART, DIST_GRAPH, GRAPH, UNWEIGHTED, WEIGHTS_EMPTY,  # noqa: E402
                         Cartcomm, Compute_dims, Distgraphcomm, Graphcomm, Topocomm)

__all__ += ["Topocomm", "Cartcomm", "Graphcomm", "Distgraphcomm", "Compute_dims", "CART",
            "GRAPH", "DIST_GRAPH", "UNWEIGHTED", "WEIGHTS_EMPTY"]

# --- intercommunicators
from .mmpi._inter import Intercomm  # noqa: E402  (also registers Intracomm.Create_intercomm)

__all__ += ["Intercomm"]

# --- one-sided communication (windows), Alloc_mem
from .mmpi._buffer import Alloc_mem, Free_mem, buffer, memory  # noqa: E402
from .mmpi._const import (LOCK_EXCLUSIVE, LOCK_SHARED, MODE_NOCHECK,  # noqa: E402,F401
                          MODE_NOPRECEDE, MODE_NOPUT, MODE_NOSTORE, MODE_NOSUCCEED, WIN_BASE,
                          WIN_CREATE_FLAVOR, WIN_DISP_UNIT, WIN_FLAVOR_ALLOCATE,
                          WIN_FLAVOR_CREATE, WIN_FLAVOR_DYNAMIC, WIN_FLAVOR_SHARED, WIN_MODEL,
                          WIN_SEPARATE, WIN_SIZE, WIN_UNIFIED)
from .mmpi._rma import WIN_NULL, Win  # noqa: E402
__all__ += [
    "Win", "WIN_NULL", "buffer", "memory", "Alloc_mem", "Free_mem",
    "LOCK_EXCLUSIVE", "LOCK_SHARED", "MODE_NOCHECK", "MODE_NOPRECEDE", "MODE_NOPUT",
    "MODE_NOSTORE", "MODE_NOSUCCEED", "WIN_BASE", "WIN_SIZE", "WIN_DISP_UNIT",
    "WIN_CREATE_FLAVOR", "WIN_MODEL", "WIN_FLAVOR_CREATE", "WIN_FLAVOR_ALLOCATE",
    "WIN_FLAVOR_DYNAMIC", "WIN_FLAVOR_SHARED", "WIN_SEPARATE", "WIN_UNIFIED",
]


_abort_status = [0]


def _set_abort_status(status: int) -> None:
    """mpi4py's runners (``python -m mpi4py``, ``-m mpi4py.futures``) call this when
    the program raised: at exit this rank then aborts the job with that status
    (``COMM_WORLD.Abort``), as mpi4py does."""
    import atexit
    if not _abort_status[0]:
        atexit.register(_abort_at_exit)
    _abort_status[0] = int(status) or 1


def _abort_at_exit() -> None:
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    _comm.world_comm().Abort(_abort_status[0])


def get_vendor() -> tuple[str, tuple[int, int, int]]:
    """The MPI implementation's name and version: ("driller", driller's version)."""
    from . import __version__
    return "driller", _version_tuple(__version__)


def _version_tuple(v: str) -> tuple[int, int, int]:
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def Get_version() -> tuple[int, int]:
    """The MPI standard version whose semantics driller's calls follow."""
    return (_const.VERSION, _const.SUBVERSION)


def Get_library_version() -> str:
    """Obtain the version string of the MPI library."""
    from . import __version__
    return (f"driller {__version__} (driller.mmpi: MPI-{_const.VERSION}.{_const.SUBVERSION} "
            f"semantics over shared memory, at most one copy)")


def Get_error_class(errorcode: int) -> int:
    """The error class of an error code; MPI.Exception(ERR_ARG) if it is none."""
    try:
        return _errcodes.error_class(errorcode)
    except (ValueError, TypeError):
        raise Exception(f"Get_error_class: {errorcode!r} is no MPI error code",
                        error_class=_errcodes.ERR_ARG) from None


def Get_error_string(errorcode: int) -> str:
    """The error string of an error code; MPI.Exception(ERR_ARG) if it is none."""
    try:
        return _errcodes.error_string(errorcode)
    except (ValueError, TypeError):
        raise Exception(f"Get_error_string: {errorcode!r} is no MPI error code",
                        error_class=_errcodes.ERR_ARG) from None


def Pcontrol(level: int) -> None:
    """Profiling control: driller has no profiling layer, so every level is a no-op
    (as MPI allows); a level below 0 is an error."""
    if type(level) is not int or level < 0:
        raise Exception(f"Pcontrol: level must be an int >= 0, got {level!r}",
                        error_class=_errcodes.ERR_ARG)


def Get_processor_name() -> str:
    """The name of this processor (the host name)."""
    return _socket.gethostname()


def Init() -> None:
    """Initialize the MPI execution environment (COMM_WORLD joins its ranks)."""
    _comm.world_comm()


def Init_thread(required: int = THREAD_MULTIPLE) -> int:
    """Initialize the MPI execution environment; returns the thread level given
    (THREAD_SINGLE: mmpi ranks are single-threaded)."""
    _comm.world_comm()
    return THREAD_SINGLE


def Query_thread() -> int:
    """The level of thread support provided (THREAD_SINGLE)."""
    return THREAD_SINGLE


def Finalize() -> None:
    """Terminate the MPI execution environment of this rank."""
    _comm.finalize()


def Is_initialized() -> bool:
    """Whether MPI has been initialized in this process."""
    return _comm.is_initialized()


def Is_finalized() -> bool:
    """Whether MPI has been finalized in this process."""
    return _comm.is_finalized()


def __getattr__(name: str) -> object:
    if name == "COMM_WORLD":
        return _comm.world_comm()
    if name == "COMM_SELF":
        return _comm.self_comm()
    if name.startswith("__"):
        raise AttributeError(name)
    raise _NotImpl(f"MPI.{name} is not implemented by driller.MPI (point-to-point, "
                   f"collectives, communicators and groups, requests, statuses and "
                   f"datatypes are); use mpi4py for it")

# one thread inside mmpi at a time (mmpi/_threads): these progress the transport too
import sys as _sys  # noqa: E402
from .mmpi import _threads as _threads_mod  # noqa: E402
_threads_mod.register_functions(_sys.modules[__name__], "Finalize", "Attach_buffer",
                                "Detach_buffer", "Flush_buffer", "Iflush_buffer")
