"""Every exception driller raises derives from DrillerError."""

from __future__ import annotations

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing: `driller run`'s
if TYPE_CHECKING:       # launcher imports this module and starts faster without it
    from typing import Any

__all__ = [
    "DrillerError", "DrillError", "ProxyError", "SegmentReleasedError", "ReadOnlyError",
    "PeerDiedError", "TruncationError", "MmpiError", "MmpiNotImplementedError", "RankFailedError",
    "UnsupportedPlatformError",
]


def _codes() -> Any:
    # the MPI error classes (driller._errcodes, a leaf), imported at first use:
    # processes that never look at an error class (the fd proxy) never load them
    from . import _errcodes
    return _errcodes


class DrillerError(Exception):
    """Base class of every error raised by driller."""


class UnsupportedPlatformError(DrillerError, ImportError):
    """``import driller`` on a system driller cannot run on (not Linux, a machine other
    than x86_64, a kernel without futex_waitv): the message names what is
    missing."""


class DrillError(DrillerError, ValueError):
    """A buffer cannot be drilled (made shareable in place) safely."""


class ProxyError(DrillerError, ConnectionError):
    """The fd proxy named by a handle is unknown, unreachable or refused us."""


class SegmentReleasedError(DrillerError, LookupError):
    """The owner of a segment released it (closed, freed, or exited)."""


class ReadOnlyError(DrillerError, ValueError):
    """Read-only was asked for memory the kernel cannot protect from peers (an arena
    block, a segment already shared writable), or write access to memory its owner
    sealed read-only.  The message says what to use instead."""



class MmpiError(DrillerError, RuntimeError):
    """A message-passing call was used wrongly (bad rank, tag, buffer, ...).

    Also mpi4py's ``MPI.Exception``: it carries an MPI error code.  ``MmpiError(code)``
    with an int is the exception of that code (its text is the code's error string,
    a negative code becomes ERR_UNKNOWN); ``MmpiError(message, error_class=c)`` is a
    driller error with a message and the code ``c`` (by default the class's own:
    ERR_OTHER here, ERR_TRUNCATE for TruncationError...).  It answers
    ``Get_error_code/Get_error_class/Get_error_string`` (and the ``error_*``
    properties), converts to int and compares with ints by its code.
    """

    _default_class = "ERR_OTHER"

    def __init__(self, *args: Any, error_class: int | None = None) -> None:
        self._mpi_form = False
        if len(args) == 1 and type(args[0]) is int and error_class is None:
            code = args[0]
            if code < 0:
                code = _codes().ERR_UNKNOWN
            args = (code,)
            self._mpi_form = True
            error_class = code
        elif not args:
            self._mpi_form = True
            error_class = 0
            args = (0,)
        super().__init__(*args)
        self._code = error_class

    @property
    def error_code(self) -> int:
        """Error code."""
        code = getattr(self, "_code", None)
        return int(getattr(_codes(), self._default_class) if code is None else code)

    @property
    def error_class(self) -> int:
        """Error class."""
        try:
            return int(_codes().error_class(self.error_code))
        except ValueError:
            return int(_codes().ERR_UNKNOWN)

    @property
    def error_string(self) -> str:
        """Error string."""
        try:
            return str(_codes().error_string(self.error_code))
        except ValueError:
            return f"unknown error code {self.error_code}"

    def Get_error_code(self) -> int:
        """Error code."""
        return self.error_code

    def Get_error_class(self) -> int:
        """Error class."""
        return self.error_class

    def Get_error_string(self) -> str:
        """Error string."""
        return self.error_string

    def __str__(self) -> str:
        if getattr(self, "_mpi_form", False):
            return self.error_string
        return super().__str__()

    def __repr__(self) -> str:
        if getattr(self, "_mpi_form", False):
            return f"MPI.Exception({self.error_code})"
        return super().__repr__()

    def __int__(self) -> int:
        return self.error_code

    def __index__(self) -> int:
        return self.error_code

    def __bool__(self) -> bool:
        return self.error_code != 0

    def __hash__(self) -> int:
        return hash(self.error_code)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (int, MmpiError)) and not isinstance(other, bool):
            return self.error_code == int(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, (int, MmpiError)) and not isinstance(other, bool):
            return self.error_code != int(other)
        return NotImplemented

    def __lt__(self, other: int | MmpiError) -> bool:
        return self.error_code < int(other)

    def __le__(self, other: int | MmpiError) -> bool:
        return self.error_code <= int(other)

    def __gt__(self, other: int | MmpiError) -> bool:
        return self.error_code > int(other)

    def __ge__(self, other: int | MmpiError) -> bool:
        return self.error_code >= int(other)


class PeerDiedError(MmpiError, ConnectionError):
    """A peer process died while we were waiting on it."""

    _default_class = "ERR_PROC_ABORTED"

    def __init__(self, message: str, rank: int | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.status = status


class TruncationError(MmpiError):
    """A message is larger than the buffer posted to receive it."""

    _default_class = "ERR_TRUNCATE"


class RankFailedError(MmpiError):
    """A rank started by ``mmpi.spawn`` raised, exited early, or was killed.

    ``rank`` names it; ``status`` is its wait status as a shell shows it (the exit
    code, or 128 + the signal number); ``signal`` is the signal name or None;
    ``remote_traceback`` is the formatted traceback from inside the rank, if any.
    """

    def __init__(self, message: str, rank: int | None = None, status: int | None = None,
                 signal: str | None = None, remote_traceback: str | None = None,
                 exc_type: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.status = status
        self.signal = signal
        self.remote_traceback = remote_traceback
        self.exc_type = exc_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.rank, self.status, self.signal,
                             self.remote_traceback, self.exc_type))


class MmpiNotImplementedError(MmpiError, NotImplementedError, AttributeError):
    """An MPI call that driller.mmpi does not implement (yet); the message names it.

    Also an AttributeError, so ``hasattr(MPI, name)`` answers False instead of raising.
    """

    _default_class = "ERR_UNSUPPORTED_OPERATION"


# --- buffer exporters and collectives: mmpi errors that are also the built-in
# exception mpi4py raises for the same mistake (so ``except BufferError`` works)

class MmpiBufferError(MmpiError, BufferError):
    """A buffer cannot be used as asked: read-only where a receive buffer is needed,
    not contiguous, or described wrongly by its exporter (DLPack, CUDA array
    interface), or not host memory.  Also a BufferError, as in mpi4py."""

    _default_class = "ERR_BUFFER"


class MmpiTypeError(MmpiError, TypeError):
    """An argument of the wrong type (an object without a buffer, a malformed
    exporter description).  Also a TypeError, as in mpi4py."""

    _default_class = "ERR_ARG"


class MmpiValueError(MmpiError, ValueError):
    """An argument of the right type but a wrong value (counts, displacements, an
    exporter's typestr or tuple length).  Also a ValueError, as in mpi4py."""

    _default_class = "ERR_ARG"


class MmpiKeyError(MmpiError, KeyError):
    """A mandatory key missing from an exporter's description (the CUDA array
    interface's "data", "typestr", "shape").  Also a KeyError, as in mpi4py."""

    _default_class = "ERR_ARG"

    def __str__(self) -> str:          # KeyError would quote the whole message
        if len(self.args) == 1 and isinstance(self.args[0], str):
            return self.args[0]
        return MmpiError.__str__(self)


__all__ += ["MmpiBufferError", "MmpiTypeError", "MmpiValueError", "MmpiKeyError"]
