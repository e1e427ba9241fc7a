"""MPI error classes, once: Open MPI's values, names and strings.

At the bottom of the package (it imports nothing): :mod:`driller.errors` gives
every exception an error class from here, and :mod:`driller.mmpi` and
:mod:`driller.MPI` re-export the constants.
"""

from __future__ import annotations

__all__ = ["SUCCESS", "ERR_LASTCODE", "ERROR_CLASSES", "error_class", "error_string"]

# error classes: Open MPI's values (name, value, error string); each becomes a module
# constant ERR_<NAME>.  ERR_LASTCODE is above every class.
SUCCESS = 0
_ERRORS = [
    ("BUFFER", 1, "invalid buffer pointer"), ("COUNT", 2, "invalid count argument"),
    ("TYPE", 3, "invalid datatype"), ("TAG", 4, "invalid tag"),
    ("COMM", 5, "invalid communicator"), ("RANK", 6, "invalid rank"),
    ("REQUEST", 7, "invalid request"), ("ROOT", 8, "invalid root"),
    ("GROUP", 9, "invalid group"), ("OP", 10, "invalid reduce operation"),
    ("TOPOLOGY", 11, "invalid communicator topology"), ("DIMS", 12, "invalid dimension argument"),
    ("ARG", 13, "invalid argument of some other kind"), ("UNKNOWN", 14, "unknown error"),
    ("TRUNCATE", 15, "message truncated"), ("OTHER", 16, "known error not in list"),
    ("INTERN", 17, "internal error"), ("IN_STATUS", 18, "error code is in status"),
    ("PENDING", 19, "pending request"), ("ACCESS", 20, "invalid file access"),
    ("AMODE", 21, "invalid amode argument"), ("ASSERT", 22, "invalid assert argument"),
    ("BAD_FILE", 23, "invalid file name"), ("BASE", 24, "invalid base"),
    ("CONVERSION", 25, "data conversion error"), ("DISP", 26, "invalid displacement"),
    ("DUP_DATAREP", 27, "conversion function registered for a data representation twice"),
    ("FILE_EXISTS", 28, "file exists"), ("FILE_IN_USE", 29, "file already in use"),
    ("FILE", 30, "invalid file"), ("INFO_KEY", 31, "invalid info key"),
    ("INFO_NOKEY", 32, "info key not defined"), ("INFO_VALUE", 33, "invalid info value"),
    ("INFO", 34, "invalid info object"), ("IO", 35, "input/output error"),
    ("KEYVAL", 36, "invalid key value"), ("LOCKTYPE", 37, "invalid lock type"),
    ("NAME", 38, "name not found"), ("NO_MEM", 39, "memory exhausted"),
    ("NOT_SAME", 40, "collective argument not identical on all processes"),
    ("NO_SPACE", 41, "not enough space"), ("NO_SUCH_FILE", 42, "file does not exist"),
    ("PORT", 43, "invalid port"), ("QUOTA", 44, "quota exceeded"),
    ("READ_ONLY", 45, "read-only file or file system"),
    ("RMA_CONFLICT", 46, "conflicting accesses to a window"),
    ("RMA_SYNC", 47, "wrong synchronization of RMA calls"), ("SERVICE", 48, "invalid service name"),
    ("SIZE", 49, "invalid size"), ("SPAWN", 50, "error spawning processes"),
    ("UNSUPPORTED_DATAREP", 51, "unsupported data representation"),
    ("UNSUPPORTED_OPERATION", 52, "operation not supported"), ("WIN", 53, "invalid window"),
    ("RMA_RANGE", 70, "target memory is outside the window"),
    ("RMA_ATTACH", 71, "memory cannot be attached"),
    ("RMA_FLAVOR", 72, "wrong window flavor"), ("RMA_SHARED", 73, "memory cannot be shared"),
    ("PROC_ABORTED", 74, "operation aborted: a peer process aborted"),
    ("SESSION", 78, "invalid session"), ("VALUE_TOO_LARGE", 79, "value too large to store"),
    ("ERRHANDLER", 80, "invalid error handler"),
]
ERR_LASTCODE = 92
ERROR_CLASSES = {SUCCESS: "no errors"}
for _name, _value, _text in _ERRORS:
    globals()["ERR_" + _name] = _value
    __all__.append("ERR_" + _name)
    ERROR_CLASSES[_value] = _text
ERROR_CLASSES[ERR_LASTCODE] = "last error code"
del _name, _value, _text


def error_class(code: int) -> int:
    """The error class of an error code (every code is its own class here: driller
    adds no codes); ERR_ARG for a number that is no error code."""
    if code in ERROR_CLASSES:
        return code
    raise ValueError(code)


def error_string(code: int) -> str:
    """The error string of an error code, as MPI_Error_string; ValueError if none."""
    if code in ERROR_CLASSES:
        return f"MPI_ERR_{_NAMES[code]}: {ERROR_CLASSES[code]}" if code else "MPI_SUCCESS: no errors"
    raise ValueError(code)


_NAMES = {v: n for n, v, _ in _ERRORS}
_NAMES[ERR_LASTCODE] = "LASTCODE"
