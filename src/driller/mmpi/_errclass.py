"""User-defined error classes, codes and strings (``MPI.Add_error_class`` ...).

mpi4py's calls over :mod:`driller._errcodes`' registry: a misuse (a predefined
class or code, one that is unknown, a class that still has codes or a string)
raises ``MPI.Exception`` with ERR_ARG, as Open MPI does.  The largest code in
use is ``last_used_code()`` (the ``MPI.LASTUSEDCODE`` attribute of COMM_WORLD).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable
    from typing import Any, TypeVar
    _T = TypeVar("_T")

from .. import _errcodes
from ..errors import MmpiError

__all__ = ["Add_error_class", "Add_error_code", "Add_error_string", "Remove_error_class",
           "Remove_error_code", "Remove_error_string", "last_used_code"]

last_used_code = _errcodes.last_used_code


def _call(fn: Callable[..., _T], *args: Any) -> _T:
    try:
        return fn(*args)
    except ValueError as e:
        raise MmpiError(str(e), error_class=_errcodes.ERR_ARG) from None


def Add_error_class() -> int:
    """Add an error class to the known error classes."""
    return _errcodes.add_error_class()


def Remove_error_class(errorclass: int) -> None:
    """Remove an error class from the known error classes."""
    _call(_errcodes.remove_error_class, errorclass)


def Add_error_code(errorclass: int) -> int:
    """Add an error code to an error class."""
    return _call(_errcodes.add_error_code, errorclass)


def Remove_error_code(errorcode: int) -> None:
    """Remove an error code from an error class."""
    _call(_errcodes.remove_error_code, errorcode)


def Add_error_string(errorcode: int, string: str) -> None:
    """Associate an error string with an error class or error code."""
    _call(_errcodes.add_error_string, errorcode, string)


def Remove_error_string(errorcode: int) -> None:
    """Remove the error string of an error class or error code."""
    _call(_errcodes.remove_error_string, errorcode)
