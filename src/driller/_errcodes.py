"""MPI error classes, once: Open MPI's values, names and strings.

At the bottom of the package (it imports nothing): :mod:`driller.errors` gives
every exception an error class from here, and :mod:`driller.mmpi` and
:mod:`driller.MPI` re-export the constants.
"""

from __future__ import annotations

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing (mypy knows it)

__all__ = ["SUCCESS", "ERR_LASTCODE", "ERROR_CLASSES", "error_class", "error_string",
           "add_error_class", "add_error_code", "add_error_string", "remove_error_class",
           "remove_error_code", "remove_error_string", "last_used_code"]

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

if TYPE_CHECKING:
    def __getattr__(name: str) -> int:
        """For type checkers: the ``ERR_*`` names made above are ints."""
del _name, _value, _text


# user-defined error classes and codes (MPI_Add_error_class/code/string): values above
# ERR_LASTCODE, per process (MPI's are per process too).  _user_class[code] is the class
# of a user code (a user class is its own class); _user_string[code] its string.
_user_class: dict[int, int] = {}
_user_string: dict[int, str] = {}
_last_used = ERR_LASTCODE


def _is_code(code) -> bool:
    return type(code) is int or (isinstance(code, int) and not isinstance(code, bool))


def error_class(code: int) -> int:
    """The error class of an error code: a predefined class is its own class, a user
    code (:func:`add_error_code`) belongs to the class it was added to; ValueError
    for a number that is no error code."""
    if code in ERROR_CLASSES:
        return code
    cls = _user_class.get(code)
    if cls is not None:
        return cls
    raise ValueError(code)


def error_string(code: int) -> str:
    """The error string of an error code, as MPI_Error_string ("" for a user class or
    code with no string yet); ValueError if none."""
    if code in ERROR_CLASSES:
        return f"MPI_ERR_{_NAMES[code]}: {ERROR_CLASSES[code]}" if code else "MPI_SUCCESS: no errors"
    if code in _user_class:
        return _user_string.get(code, "")
    raise ValueError(code)


def last_used_code() -> int:
    """The largest error code or class in use (the MPI_LASTUSEDCODE attribute)."""
    return _last_used


def _new_code(cls: int | None) -> int:
    global _last_used
    _last_used += 1
    code = _last_used
    _user_class[code] = code if cls is None else cls
    return code


def add_error_class() -> int:
    """A new error class (above ERR_LASTCODE), with an empty string."""
    return _new_code(None)


def add_error_code(errorclass: int) -> int:
    """A new error code in class ``errorclass`` (predefined or user); ValueError if
    ``errorclass`` is no error class."""
    if not _is_code(errorclass) or errorclass == SUCCESS or not (
            errorclass in ERROR_CLASSES and errorclass != ERR_LASTCODE
            or _user_class.get(errorclass) == errorclass):
        raise ValueError(f"Add_error_code: {errorclass!r} is no error class (a predefined "
                         f"MPI.ERR_* other than SUCCESS/ERR_LASTCODE, or one from "
                         f"Add_error_class)")
    return _new_code(int(errorclass))


def _user(code, what: str) -> int:
    if not _is_code(code) or code not in _user_class:
        raise ValueError(f"{what}: {code!r} is no user-defined error class or code (only "
                         f"those made by Add_error_class/Add_error_code can be changed)")
    return int(code)


def add_error_string(errorcode: int, string: str) -> None:
    """Give a user error class or code its string (ValueError for a predefined one)."""
    code = _user(errorcode, "Add_error_string")
    _user_string[code] = str(string)


def remove_error_string(errorcode: int) -> None:
    """Remove the string of a user error class or code."""
    _user_string.pop(_user(errorcode, "Remove_error_string"), None)


def remove_error_code(errorcode: int) -> None:
    """Remove a user error code (ValueError if it is a class, or still has a string)."""
    code = _user(errorcode, "Remove_error_code")
    if _user_class[code] == code:
        raise ValueError(f"Remove_error_code: {code} is an error class: use Remove_error_class")
    if code in _user_string:
        raise ValueError(f"Remove_error_code: {code} still has a string: "
                         f"Remove_error_string first")
    del _user_class[code]


def remove_error_class(errorclass: int) -> None:
    """Remove a user error class (ValueError while it has codes or a string)."""
    code = _user(errorclass, "Remove_error_class")
    if _user_class[code] != code:
        raise ValueError(f"Remove_error_class: {code} is an error code: use Remove_error_code")
    if any(c != code and k == code for c, k in _user_class.items()):
        raise ValueError(f"Remove_error_class: class {code} still has error codes: "
                         f"Remove_error_code them first")
    if code in _user_string:
        raise ValueError(f"Remove_error_class: {code} still has a string: "
                         f"Remove_error_string first")
    del _user_class[code]


_NAMES = {v: n for n, v, _ in _ERRORS}
_NAMES[ERR_LASTCODE] = "LASTCODE"
