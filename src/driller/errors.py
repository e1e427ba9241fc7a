"""Every exception driller raises derives from DrillerError."""

from __future__ import annotations

__all__ = [
    "DrillerError", "DrillError", "ProxyError", "SegmentReleasedError", "ReadOnlyError",
    "PeerDiedError", "TruncationError", "MmpiError", "MmpiNotImplementedError", "RankFailedError",
]


class DrillerError(Exception):
    """Base class of every error raised by driller."""


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


class MmpiError(DrillerError):
    """A message-passing call was used wrongly (bad rank, tag, buffer, ...)."""


class PeerDiedError(MmpiError, ConnectionError):
    """A peer process died while we were waiting on it."""

    def __init__(self, message: str, rank: int | None = None, status: int | None = None):
        super().__init__(message)
        self.rank = rank
        self.status = status


class TruncationError(MmpiError):
    """A message is larger than the buffer posted to receive it."""


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

    def __reduce__(self):
        return (type(self), (self.args[0], self.rank, self.status, self.signal,
                             self.remote_traceback, self.exc_type))


class MmpiNotImplementedError(MmpiError, NotImplementedError, AttributeError):
    """An MPI call that driller.mmpi does not implement (yet); the message names it.

    Also an AttributeError, so ``hasattr(MPI, name)`` answers False instead of raising.
    """
