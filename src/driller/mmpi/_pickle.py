"""``MPI.Pickle`` and ``MPI.pickle``: how the lowercase methods serialize objects.

As in mpi4py 4.x, ``MPI.pickle`` is the one :class:`Pickle` every object message
goes through; ``MPI.pickle.__init__(dumps, loads, protocol)`` installs another
serializer (dill, json, marshal, cloudpickle...) and ``MPI.pickle.__init__()``
restores the default.  Other ``Pickle`` instances (``mpi4py.util.pkl5`` makes
its own) only serialize what they are given.

driller's default is not mpi4py's single pickle stream: :mod:`._objects` sends
objects with nothing large inside as plain pickles and moves large buffers out
of band (copied once, straight from the sender's memory).  That fast path stays
in force while ``MPI.pickle`` is the default (the standard library's
``pickle.dumps/loads`` at the highest protocol); any other setting sends every
object as the one stream ``MPI.pickle.dumps(obj)`` made, read back with
``MPI.pickle.loads`` (an empty stream reads as None), exactly as mpi4py does.
Every rank must install the same pickler.
"""

from __future__ import annotations

import os
import pickle as _std
from typing import Any, Callable, Iterable

from . import _objects
from ._buffer import buffer

__all__ = ["Pickle", "pickle", "DEFAULT_THRESHOLD"]

_PROTOCOL = _std.HIGHEST_PROTOCOL
DEFAULT_THRESHOLD = 1024 ** 2 // 4     # mpi4py's out-of-band threshold: 0.25 MiB
if os.environ.get("MPI4PY_PICKLE_PROTOCOL"):
    _PROTOCOL = int(os.environ["MPI4PY_PICKLE_PROTOCOL"])
if os.environ.get("MPI4PY_PICKLE_THRESHOLD"):
    DEFAULT_THRESHOLD = int(os.environ["MPI4PY_PICKLE_THRESHOLD"])


class Pickle:
    """Pickle/unpickle Python objects."""

    __slots__ = ("_dumps", "_loads", "_protocol", "_threshold")

    def __init__(self, dumps: Callable[..., bytes] | None = None,
                 loads: Callable[..., Any] | None = None,
                 protocol: int | None = None, threshold: int | None = None) -> None:
        if dumps is None:
            dumps = _std.dumps
        if loads is None:
            loads = _std.loads
        if protocol is None and dumps is _std.dumps:
            protocol = _PROTOCOL
        if threshold is None:
            threshold = DEFAULT_THRESHOLD
        self._dumps = dumps
        self._loads = loads
        self._protocol = protocol
        self._threshold = threshold
        self._changed()

    def _changed(self) -> None:
        # the global instance tells the object wire (``_objects``) what to use
        if self is globals().get("pickle"):
            default = (self._dumps is _std.dumps and self._loads is _std.loads
                       and self._protocol in (_std.HIGHEST_PROTOCOL, -1))
            _objects.use_pickler(None if default else self)

    def dumps(self, obj: Any) -> bytes:
        """Serialize object to pickle data stream."""
        if self._protocol is not None:
            return self._dumps(obj, self._protocol)
        return self._dumps(obj)

    def loads(self, data: Any) -> Any:
        """Deserialize object from pickle data stream."""
        return self._loads(data)

    def dumps_oob(self, obj: Any) -> tuple[bytes, list[buffer]]:
        """Serialize object to pickle data stream and out-of-band buffers."""
        protocol = self._protocol
        if protocol is None:
            protocol = _PROTOCOL
        protocol = max(protocol, 5) if protocol >= 0 else _std.HIGHEST_PROTOCOL
        buffers: list[buffer] = []
        threshold = self._threshold

        def callback(pb: _std.PickleBuffer) -> bool:
            raw = pb.raw()
            if raw.nbytes >= threshold:
                buffers.append(buffer.frombuffer(raw, raw.readonly))   # (a view, no copy)
                return False
            return True

        data = self._dumps(obj, protocol, buffer_callback=callback)
        return data, buffers

    def loads_oob(self, data: Any, buffers: Iterable[Any]) -> Any:
        """Deserialize object from pickle data stream and out-of-band buffers."""
        return self._loads(data, buffers=buffers)

    @property
    def PROTOCOL(self) -> int | None:
        """Protocol version."""
        return self._protocol

    @PROTOCOL.setter
    def PROTOCOL(self, protocol: int | None) -> None:
        if protocol is None and self._dumps is _std.dumps:
            protocol = _PROTOCOL
        self._protocol = protocol
        self._changed()

    @property
    def THRESHOLD(self) -> int:
        """Out-of-band threshold."""
        return self._threshold

    @THRESHOLD.setter
    def THRESHOLD(self, threshold: int | None) -> None:
        self._threshold = DEFAULT_THRESHOLD if threshold is None else threshold

    def __repr__(self) -> str:
        name = getattr(self._dumps, "__module__", None) or type(self._dumps).__name__
        return f"<MPI.Pickle {name} protocol={self._protocol}>"


pickle = Pickle()
"""The serializer of every object message (``MPI.pickle``)."""
