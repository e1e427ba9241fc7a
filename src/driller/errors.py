"""Every exception driller raises derives from DrillerError."""

from __future__ import annotations

__all__ = [
    "DrillerError", "DrillError", "ProxyError", "SegmentReleasedError",
    "PeerDiedError", "TruncationError", "MmpiError",
]


class DrillerError(Exception):
    """Base class of every error raised by driller."""


class DrillError(DrillerError, ValueError):
    """A buffer cannot be drilled (made shareable in place) safely."""


class ProxyError(DrillerError, ConnectionError):
    """The fd proxy named by a handle is unknown, unreachable or refused us."""


class SegmentReleasedError(DrillerError, LookupError):
    """The owner of a segment released it (closed, freed, or exited)."""


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
