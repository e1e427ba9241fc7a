"""Requests, statuses and matched messages: Request, Prequest (persistent),
Grequest (generalized), the collective request, Status, Message.

A request holds its op (``_op``: a transport ``SendOp``/``RecvOp``, a
``_coll._nonblocking.CollOp``, a :class:`PairOp` of Isendrecv or a
:class:`_GOp` of a generalized request; every op has ``done``) and the
communicator's context (``_cx``: the ``_coll._context.Context`` of the
communicator, which has the transport ``t`` and ``rank_of``).  ``_op is None``
means the request is inactive: REQUEST_NULL, a completed request, or a
persistent request between its Wait and its next Start.

The Waitany/Waitsome/Testall... family works on any mix of these, through
``op.done`` and each class's own ``wait``.

A :class:`Message` is the handle of a message that a matched probe
(``Comm.Mprobe``) took out of matching (``_engine.Engine.mprobe``): only a
receive started on that handle (``Message.Recv``...) can get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable, Sequence
    from typing import Any
    from . import Comm
    from ._datatype import Datatype
    from ._typing import BufSpec

import sys
import time
import traceback
import weakref

from .._errcodes import ERR_ARG, ERR_OTHER, ERR_REQUEST
from ..errors import MmpiError
from . import _transport as T
from . import _threads
from ._const import ANY_SOURCE, ANY_TAG, PROC_NULL, UNDEFINED
from ._datatype import BYTE, as_datatype, count_of, elements_of
from ._objects import loads

__all__ = ["Status", "Request", "Prequest", "Grequest", "CollRequest", "Message", "PairOp",
           "REQUEST_NULL", "MESSAGE_NULL", "MESSAGE_NO_PROC", "fill", "self_sync",
           "request", "complete", "persistent", "message_handle", "UnpackRecvOp",
           "K_SEND", "K_RECV", "K_OSEND", "K_ORECV", "K_PAIR"]


class UnpackRecvOp(T.RecvOp):
    """A receive of a derived datatype: ``unpack(nbytes)`` scatters the staging
    buffer into the user's buffer when the request completes."""

    __slots__ = ("unpack",)


# ------------------------------------------------------------------ Status

class Status:
    """Status object: what a completed receive (or a probe) found.

    ``Status(status)`` is a copy of ``status``.  The fields live in 24 bytes laid
    out as six C ints (source, tag, error, cancelled, count as a 64-bit value),
    which :meth:`tomemory` exposes."""

    __slots__ = ("_i", "_q", "__weakref__")

    def __new__(cls, status: Status | None = None) -> Status:
        self = object.__new__(cls)
        self._setup(status)
        return self

    def _setup(self, status: Status | None) -> None:
        b = bytearray(24)
        i = self._i = memoryview(b).cast("i")
        self._q = memoryview(b).cast("q")
        if status is None:
            i[0] = ANY_SOURCE
            i[1] = ANY_TAG
        elif isinstance(status, Status):
            b[:] = status._i.cast("B")
        else:
            raise TypeError(f"Argument 'status' has incorrect type (expected Status, got "
                            f"{type(status).__name__})")

    # -- fields --
    def Get_source(self) -> int:
        """Get message source."""
        return self._i[0]

    def Set_source(self, source: int) -> None:
        """Set message source."""
        self._i[0] = source

    def Get_tag(self) -> int:
        """Get message tag."""
        return self._i[1]

    def Set_tag(self, tag: int) -> None:
        """Set message tag."""
        self._i[1] = tag

    def Get_error(self) -> int:
        """Get message error."""
        return self._i[2]

    def Set_error(self, error: int) -> None:
        """Set message error."""
        self._i[2] = int(error)

    def Get_count(self, datatype: Datatype = BYTE) -> int:
        """Get the number of *top level* elements (``UNDEFINED`` if the received
        bytes are not a whole number of ``datatype``)."""
        return count_of(as_datatype(datatype), self._q[2])

    def Get_elements(self, datatype: Datatype = BYTE) -> int:
        """Get the number of basic elements in a datatype."""
        return elements_of(as_datatype(datatype), self._q[2])

    def Set_elements(self, datatype: Datatype, count: int) -> None:
        """Set the number of elements in a status (``count`` elements of ``datatype``)."""
        if type(count) is not int or count < 0:
            raise MmpiError(f"Status.Set_elements: count must be an int >= 0, got {count!r}",
                            error_class=ERR_ARG)
        self._q[2] = count * as_datatype(datatype).size

    def Is_cancelled(self) -> bool:
        """Test to see if a request was cancelled."""
        return bool(self._i[3])

    def Set_cancelled(self, flag: bool) -> None:
        """Set the cancelled state associated with a status."""
        self._i[3] = 1 if flag else 0

    # -- Python properties --
    @property
    def source(self) -> int:
        """Message source."""
        return self._i[0]

    @source.setter
    def source(self, value: int) -> None:
        self._i[0] = value

    @property
    def tag(self) -> int:
        """Message tag."""
        return self._i[1]

    @tag.setter
    def tag(self, value: int) -> None:
        self._i[1] = value

    @property
    def error(self) -> int:
        """Message error."""
        return self._i[2]

    @error.setter
    def error(self, value: int) -> None:
        self._i[2] = int(value)

    @property
    def count(self) -> int:
        """Byte count."""
        return self._q[2]

    @count.setter
    def count(self, value: int) -> None:
        self._q[2] = value

    @property
    def cancelled(self) -> bool:
        """Cancelled state."""
        return bool(self._i[3])

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self._i[3] = 1 if value else 0

    # -- object model --
    def tomemory(self) -> memoryview:
        """Return a writable memoryview (C ints) of the status's fields."""
        return self._i

    def py2f(self) -> list[int]:
        """The status as a list of Fortran integers."""
        return list(self._i)

    @classmethod
    def f2py(cls, arg: list[int]) -> Status:
        """A status from a list of Fortran integers (as :meth:`py2f` gives)."""
        s = cls()
        vals = list(arg)
        if len(vals) != 6:
            raise ValueError(f"Status.f2py: expected 6 integers, got {len(vals)}")
        for k, v in enumerate(vals):
            s._i[k] = v
        return s

    def __eq__(self, other) -> bool:
        if isinstance(other, Status):
            return self._q.tolist() == other._q.tolist()
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # mutable, as mpi4py's

    def _fields(self) -> tuple:
        return self.source, self.tag, self.error, self.count, self.cancelled

    def __reduce__(self):  # by value, keeping a subclass's type
        return (_status, (type(self), self._fields()))

    def __repr__(self) -> str:
        return (f"Status(source={self.source}, tag={self.tag}, error={self.error}, "
                f"count={self.count}, cancelled={self.cancelled})")


def _status(cls, fields) -> Status:
    new = Status.__new__(cls)
    new.source, new.tag, new.error, new.count, new.cancelled = fields
    return new


def fill(status, source, tag, error, count, cancelled=False) -> None:
    """Set every field of ``status`` (None: nothing to do)."""
    if status is not None:
        i = status._i
        i[0] = source
        i[1] = tag
        i[2] = error
        i[3] = 1 if cancelled else 0
        status._q[2] = count


def self_sync(cx, op, what) -> None:
    """A blocking wait on a synchronous send to oneself that no receive has
    matched can never end: mmpi ranks are single-threaded (THREAD_SINGLE),
    so no receive can be posted while this one blocks.  Withdraw the message
    (it will never match) and fail the send with an error, at once."""
    t = cx.t
    if op.dest != t.rank:
        return
    t.progress()
    if op.done or not t.engine.withdraw(op, t.rank):
        return
    op.exc = MmpiError(
        f"{what}: synchronous send to this rank itself (rank {cx.rank_of(op.dest)}, "
        f"tag {op.tag}) with no matching receive posted: it can never complete, since "
        f"this rank cannot post the receive while it blocks here (MPI calls this "
        f"erroneous; mmpi ranks are single-threaded); post the receive first "
        f"(Irecv, then Ssend, then Wait) or use Send, which buffers messages to self")
    op.done = True


# ------------------------------------------------------------------ handles

_handles: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _handle_of(obj) -> int:
    h = id(obj)
    _handles[h] = obj
    return h


def _from_handle(cls, handle: int):
    obj = _handles.get(handle) if type(handle) is int else None
    if obj is None:
        if handle == 0:
            return cls()
        raise ValueError(f"{cls.__name__}.fromhandle: {handle!r} is no live handle")
    return cls(obj)


# ------------------------------------------------------------------ requests

K_SEND, K_RECV, K_OSEND, K_ORECV, K_PAIR = 0, 1, 2, 3, 4


class PairOp:
    """The op of Isendrecv: done once both its receive and its send are."""

    __slots__ = ("recv", "send", "source", "obj")

    def __init__(self, recv, send, obj: bool = False):
        self.recv = recv
        self.send = send
        self.source = ANY_SOURCE
        self.obj = obj

    @property
    def done(self) -> bool:
        return self.recv.done and (self.send is None or self.send.done)

    @property
    def exc(self):
        return None


def _outcome(op, kind, cx, status, peek=False):
    """The outcome of the done ``op``: fill ``status``, raise its error, return
    the object of an object receive (``peek``: only fill the status)."""
    if kind == K_PAIR:
        s = op.send
        if not peek and s is not None and s.exc is not None:
            raise s.exc
        return _outcome(op.recv, K_ORECV if op.obj else K_RECV, cx, status, peek)
    if kind == K_RECV or kind == K_ORECV:
        if op.cancelled:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0, True)
            return None
        m = op.message
        if m is None:  # PROC_NULL
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return None
        cnt = op.count if op.capacity is None else min(op.count, op.capacity)
        if status is not None:
            fill(status, cx.rank_of(m.source), m.tag, op.error, cnt)
        if peek:
            return None
        unpack = getattr(op, "unpack", None)
        if unpack is not None:  # a derived datatype: scatter what arrived
            unpack(cnt)
        if op.exc is not None:
            raise op.exc
        if kind == K_ORECV:
            return loads(op.value)
        return None
    fill(status, ANY_SOURCE, ANY_TAG, 0, 0, getattr(op, "cancelled", False))
    if not peek and op.exc is not None:
        raise op.exc
    return None


def _base_of(cls) -> type:
    """The first class of ``cls``'s MRO defined here (Request, Prequest, Grequest...)."""
    for c in cls.__mro__:
        if c.__module__ == __name__:
            return c
    return Request


class Request:
    """Request handle: a nonblocking operation; ``REQUEST_NULL`` is the empty one.

    ``Request(request)`` is a new handle onto the same operation."""

    __slots__ = ("_op", "_kind", "_cx", "_alias", "__weakref__")

    def __new__(cls, request: Request | None = None) -> Request:
        self = object.__new__(cls)
        self._setup(request)
        return self

    def _setup(self, request: Request | None) -> None:
        self._op = None
        self._kind = K_SEND
        self._cx = None
        if request is None:
            return
        if not isinstance(request, Request):
            raise TypeError(f"{type(self).__name__}(): expected a Request, got "
                            f"{type(request).__name__}")
        base = _base_of(type(self))     # (a program's subclass converts as its base)
        if base is not Request and not isinstance(request, base) and not request._is_null():
            raise TypeError(f"Cannot convert {type(request).__name__} to {type(self).__name__}")
        self._op = request._op
        self._kind = request._kind
        self._cx = request._cx
        self._alias = request._key()
        if base is not Request:  # same class: the same persistent/generalized handle
            self._copy_from(request)

    def _copy_from(self, other) -> None:
        pass

    def _key(self):
        """What identifies the handle (equal handles have the same key; a send
        that Isend finished shares its op ``_SENT``, one Irecv finished may share its
        op with others: the request is its own key)."""
        a = getattr(self, "_alias", None)
        if a is not None:
            return a
        op = self._op
        return self if op is _SENT or type(op) is _RecvdOp or type(op) is T.DeferredOp else op

    def _is_null(self) -> bool:
        """REQUEST_NULL's equal: a request with nothing (left) to complete."""
        return self._key() is None

    def __bool__(self) -> bool:
        return not self._is_null()

    def __eq__(self, other) -> bool:
        if isinstance(other, Request):
            return self is other or self._key() is other._key()
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # a handle, unhashable as mpi4py's

    def __reduce__(self):
        if self is REQUEST_NULL:
            return "REQUEST_NULL"
        if self._is_null():
            return (type(self), ())
        raise ValueError(f"cannot pickle {type(self).__name__} handle: an active request "
                         f"belongs to this process")

    # -- handles --
    @property
    def handle(self) -> int:
        """MPI handle (0 for the null request)."""
        return 0 if self._is_null() else _handle_of(self)

    @classmethod
    def fromhandle(cls, handle: int) -> Request:
        """Create object from MPI handle."""
        return _from_handle(cls, handle)

    def toint(self) -> int:
        """Translate object to integer (-1: not supported by mmpi)."""
        return -1

    def py2f(self) -> int:
        """Get the Fortran handle (-1: not supported by mmpi)."""
        return -1

    @classmethod
    def _make(cls, op, kind, cx):
        r = object.__new__(cls)
        r._op = op
        r._kind = kind
        r._cx = cx
        return r

    # -- completion --
    def _finish(self, status):
        """The op is done: fill status, clear the request, raise its error."""
        op = self._op
        cx = self._cx
        self._release()
        return _outcome(op, self._kind, cx, status)

    def _release(self):
        self._op = None
        if getattr(self, "_alias", None) is not None:
            self._alias = None

    def _peer(self):
        op = self._op
        if isinstance(op, T.SendOp):
            return op.dest
        return None if op.source == ANY_SOURCE else op.source

    def _block(self) -> None:
        """Wait (progressing) until the active op is done."""
        op = self._op
        if type(op) is T.SendOp and op.sync:
            self_sync(self._cx, op, "Wait")
        if not op.done:
            self._cx.t.wait(op, self._peer())

    def Wait(self, status: Status | None = None) -> bool:
        """Wait for a send or receive to complete."""
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            self._block()
        self._finish(status)
        return True

    def Test(self, status: Status | None = None) -> bool:
        """Test for the completion of a send or receive."""
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            self._progress()
            if not op.done:
                return False
        self._finish(status)
        return True

    def _progress(self) -> None:
        if self._cx is not None:
            self._cx.t.progress()

    def Get_status(self, status: Status | None = None) -> bool:
        """Non-destructive test for the completion of a request (fills ``status``
        once it is complete, and leaves the request as it is)."""
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            self._progress()
            if not op.done:
                return False
        self._peek(status)
        return True

    def _peek(self, status) -> None:
        _outcome(self._op, self._kind, self._cx, status, peek=True)

    def Cancel(self) -> None:
        """Cancel a request: a receive not yet matched, or a send to this rank
        itself whose message no receive has matched; other operations go on
        (``Status.Is_cancelled`` tells, once the request completes)."""
        if self._is_null():
            raise self._null_error("Cancel")
        op = self._op
        if op is None or op.done:
            return
        t = self._cx.t
        if type(op) is T.RecvOp:
            if t.engine.cancel(op):
                op.cancelled = True
                op.done = True
        elif type(op) is T.SendOp and op.dest == t.rank:
            t.progress()
            if not op.done and t.engine.withdraw(op, t.rank):
                op.cancelled = True
                op.done = True

    def Free(self) -> None:
        """Free a communication request (an active one still completes, unseen)."""
        if self._is_null():
            raise self._null_error("Free")
        self._release()

    def _null_error(self, what: str) -> MmpiError:
        return MmpiError(f"{type(self).__name__}.{what}: invalid request: REQUEST_NULL (a "
                         f"completed or freed request is null; test it with bool(request) "
                         f"or, to free, the lowercase free(), which skips null ones)",
                         error_class=ERR_REQUEST)

    # -- lowercase (objects) --
    def wait(self, status: Status | None = None) -> Any:
        """Wait for a send or receive to complete; return the received object."""
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return None
        if not op.done:
            self._block()
        return self._finish(status)

    def test(self, status: Status | None = None) -> tuple[bool, Any | None]:
        """Test for the completion of a send or receive: ``(flag, object)``."""
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True, None
        if not op.done:
            self._progress()
            if not op.done:
                return False, None
        return True, self._finish(status)

    def get_status(self, status: Status | None = None) -> bool:
        """Non-destructive test for the completion of a request."""
        return self.Get_status(status)

    def cancel(self) -> None:
        """Cancel a request."""
        self.Cancel()

    def free(self) -> None:
        """Call Free if not null."""
        if not self._is_null():
            self.Free()

    # -- collections --
    @staticmethod
    def _ops(requests):
        return [r._op for r in requests]

    @staticmethod
    def _progress_all(requests) -> None:
        for r in requests:
            if r._op is not None and r._cx is not None:
                r._cx.t.progress()
                return

    @staticmethod
    def _wait_any_done(requests) -> None:
        """Block until one of the active ops of ``requests`` is done."""
        ops = [r._op for r in requests if r._op is not None]
        if any(o.done for o in ops):
            return
        Request._self_sync_all(requests, "Waitany")
        if any(o.done for o in ops):
            return
        t = None
        for r in requests:
            if r._op is not None and r._cx is not None:
                t = r._cx.t
                break
        if t is None:  # only generalized requests: completed by another thread
            delay = 1e-5
            while not any(o.done for o in ops):
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            return
        t.wait_until(lambda: any(o.done for o in ops))

    @staticmethod
    def _self_sync_all(requests, what):
        """Waiting on synchronous sends to oneself that nothing matched: those
        can never complete (see self_sync) and complete with an error."""
        for r in requests:
            o = r._op
            if type(o) is T.SendOp and o.sync and not o.done:
                self_sync(r._cx, o, what)

    @staticmethod
    def _slot(statuses, i):
        if statuses is None or i >= len(statuses):
            return None
        return statuses[i]

    @staticmethod
    def _grow(statuses, n) -> None:
        if isinstance(statuses, list) and len(statuses) < n:
            statuses.extend(Status() for _ in range(n - len(statuses)))

    @classmethod
    def Waitall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> bool:
        """Wait for all previously initiated requests to complete."""
        if statuses is None and type(requests) is list:
            # requests the fast paths finished (osu_bw's windows) and plain buffer
            # receives: released in one pass, no status, no outcome (the first receive
            # not done waits, progressing: the ring's records meet every posted
            # receive in one pass, so the next ones are done); the others waited for
            # as waitall does
            rest = None
            sent = _SENT       # the ops complete with no error, nothing to unpack and
            Taken = _RecvdOp   # nothing to report beyond a status: just released
            Deferred = T.DeferredOp   # (those once their run's copy is made)
            RecvOp = T.RecvOp
            flushed = None   # the last DeferredOp flushed, no error (a run's receives share it)
            for r in requests:
                if type(r) is Request:
                    op = r._op
                    if op is flushed or op is sent or type(op) is Taken:
                        r._op = None
                        r._alias = None
                        continue
                    if type(op) is Deferred:
                        op.flush()
                        if op.exc is None:
                            flushed = op
                            r._op = None
                            r._alias = None
                            continue
                    if type(op) is RecvOp and r._kind == K_RECV:
                        if not op.done:
                            r._block()
                        if op.exc is None and not op.cancelled:
                            r._op = None
                            r._alias = None
                            continue
                if rest is None:
                    rest = [r]
                else:
                    rest.append(r)
            if rest is None:
                return True
            requests = rest
        cls.waitall(requests, statuses)
        return True

    @classmethod
    def waitall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> list:
        """Wait for all previously initiated requests to complete; the objects."""
        requests = list(requests) if not isinstance(requests, list) else requests
        cls._grow(statuses, len(requests))
        out = []
        err = None
        for i, r in enumerate(requests):
            op = r._op
            if (statuses is None and type(r) is Request and op is not None and op.done
                    and op.exc is None and (r._kind == K_SEND or (
                        type(op) is T.RecvOp and r._kind == K_RECV and not op.cancelled))):
                # a finished send, or buffer receive (no error, nothing to unpack), no
                # status asked (osu_bw's windows)
                r._release()
                out.append(None)
                continue
            st = cls._slot(statuses, i)
            try:
                out.append(r.wait(st))
            except MmpiError as e:
                if isinstance(e, T.PeerDiedError):
                    raise
                err = err or e
                out.append(None)
        if err is not None:
            raise err
        return out

    @classmethod
    def Testall(cls, requests: Sequence[Request], statuses: list[Status] | None = None) -> bool:
        """Test for completion of all previously initiated requests."""
        return cls.testall(requests, statuses)[0]

    @classmethod
    def testall(cls, requests: Sequence[Request],
                statuses: list[Status] | None = None) -> tuple[bool, list[Any] | None]:
        """Test for completion of all requests: ``(flag, objects or None)``."""
        cls._progress_all(requests)
        if all(r._op is None or r._op.done for r in requests):
            return True, cls.waitall(requests, statuses)
        return False, None

    @classmethod
    def Waitany(cls, requests: Sequence[Request], status: Status | None = None) -> int:
        """Wait for any previously initiated request to complete; its index."""
        return cls.waitany(requests, status)[0]

    @classmethod
    def waitany(cls, requests: Sequence[Request], status: Status | None = None) -> tuple[int, Any]:
        """Wait for any request to complete: ``(index, object)``."""
        if all(r._op is None for r in requests):
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return UNDEFINED, None
        cls._wait_any_done(requests)
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                return i, r.wait(status)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def Testany(cls, requests: Sequence[Request],
                status: Status | None = None) -> tuple[int, bool]:
        """Test for completion of any previously initiated request: ``(index, flag)``."""
        index, flag, _ = cls.testany(requests, status)
        return index, flag

    @classmethod
    def testany(cls, requests: Sequence[Request],
                status: Status | None = None) -> tuple[int, bool, Any | None]:
        """Test for completion of any request: ``(index, flag, object)``."""
        if all(r._op is None for r in requests):
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return UNDEFINED, True, None
        cls._progress_all(requests)
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                return i, True, r.wait(status)
        return UNDEFINED, False, None

    @classmethod
    def Waitsome(cls, requests: Sequence[Request],
                 statuses: list[Status] | None = None) -> list[int] | None:
        """Wait for some previously initiated requests to complete: their indices
        (None when no request is active)."""
        return cls.waitsome(requests, statuses)[0]

    @classmethod
    def waitsome(cls, requests: Sequence[Request], statuses: list[Status] | None = None
                 ) -> tuple[list[int] | None, list[Any] | None]:
        """Wait for some requests to complete: ``(indices, objects)``."""
        if all(r._op is None for r in requests):
            return None, None
        cls._wait_any_done(requests)
        return cls._some(requests, statuses)

    @classmethod
    def Testsome(cls, requests: Sequence[Request],
                 statuses: list[Status] | None = None) -> list[int] | None:
        """Test for completion of some previously initiated requests: their
        indices (None when no request is active)."""
        return cls.testsome(requests, statuses)[0]

    @classmethod
    def testsome(cls, requests: Sequence[Request], statuses: list[Status] | None = None
                 ) -> tuple[list[int] | None, list[Any] | None]:
        """Test for completion of some requests: ``(indices, objects)``."""
        if all(r._op is None for r in requests):
            return None, None
        cls._progress_all(requests)
        return cls._some(requests, statuses)

    @classmethod
    def _some(cls, requests, statuses):
        done = [i for i, r in enumerate(requests) if r._op is not None and r._op.done]
        cls._grow(statuses, len(done))
        objs = []
        err = None
        for k, i in enumerate(done):
            try:
                objs.append(requests[i].wait(cls._slot(statuses, k)))
            except MmpiError as e:
                if isinstance(e, T.PeerDiedError):
                    raise
                err = err or e
                objs.append(None)
        if err is not None:
            raise err
        return done, objs

    # -- MPI-4.1 non-destructive collections --
    @classmethod
    def Get_status_any(cls, requests: Sequence[Request],
                       status: Status | None = None) -> tuple[int, bool]:
        """Non-destructive test for the completion of any request: ``(index, flag)``."""
        if all(r._op is None for r in requests):
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return UNDEFINED, True
        cls._progress_all(requests)
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                r._peek(status)
                return i, True
        return UNDEFINED, False

    @classmethod
    def get_status_any(cls, requests: Sequence[Request],
                       status: Status | None = None) -> tuple[int, bool]:
        """Non-destructive test for the completion of any request."""
        return cls.Get_status_any(requests, status)

    @classmethod
    def Get_status_all(cls, requests: Sequence[Request],
                       statuses: list[Status] | None = None) -> bool:
        """Non-destructive test for the completion of all requests."""
        cls._progress_all(requests)
        if not all(r._op is None or r._op.done for r in requests):
            return False
        cls._grow(statuses, len(requests))
        for i, r in enumerate(requests):
            st = cls._slot(statuses, i)
            if r._op is None:
                fill(st, ANY_SOURCE, ANY_TAG, 0, 0)
            else:
                r._peek(st)
        return True

    @classmethod
    def get_status_all(cls, requests: Sequence[Request],
                       statuses: list[Status] | None = None) -> bool:
        """Non-destructive test for the completion of all requests."""
        return cls.Get_status_all(requests, statuses)

    @classmethod
    def Get_status_some(cls, requests: Sequence[Request],
                        statuses: list[Status] | None = None) -> list[int] | None:
        """Non-destructive test for completion of some requests: their indices
        (None when no request is active)."""
        if all(r._op is None for r in requests):
            return None
        cls._progress_all(requests)
        done = [i for i, r in enumerate(requests) if r._op is not None and r._op.done]
        cls._grow(statuses, len(done))
        for k, i in enumerate(done):
            requests[i]._peek(cls._slot(statuses, k))
        return done

    @classmethod
    def get_status_some(cls, requests: Sequence[Request],
                        statuses: list[Status] | None = None) -> list[int] | None:
        """Non-destructive test for completion of some requests."""
        return cls.Get_status_some(requests, statuses)

    def __repr__(self) -> str:
        if self._op is None:
            return f"<mmpi.{type(self).__name__} {'NULL' if self._is_null() else 'inactive'}>"
        return f"<mmpi.{type(self).__name__} {self._op!r}>"


class Prequest(Request):
    """Persistent request handle (Send_init/Recv_init...): Start, Wait, Start again..."""

    __slots__ = ("_start", "_active")

    def _setup(self, request: Prequest | None) -> None:
        self._start = None
        self._active = False
        super()._setup(request)

    def _copy_from(self, other) -> None:
        self._start = getattr(other, "_start", None)
        self._alias = None

    def _key(self):
        return self._start

    def _is_null(self) -> bool:
        # a persistent request is a real handle, active or not, until it is freed
        # (one to PROC_NULL too: it starts and completes at once)
        return self._start is None

    def Start(self) -> None:
        """Initiate a communication with a persistent request."""
        if self._start is None:
            raise MmpiError("Start on a freed persistent request", error_class=ERR_REQUEST)
        if self._op is not None and not self._op.done:
            raise MmpiError("Start on a persistent request that is still active: Wait first",
                            error_class=ERR_REQUEST)
        self._op = self._start()

    @classmethod
    def Startall(cls, requests: list[Prequest]) -> None:
        """Start a collection of persistent requests."""
        for r in requests:
            r.Start()

    def _release(self):
        self._op = None  # inactive, reusable

    def Free(self) -> None:
        """Free a persistent request."""
        if self._start is None:
            raise self._null_error("Free")
        self._op = None
        self._start = None


REQUEST_NULL = Request()


class CollRequest(Request):
    """A nonblocking collective: its op (``_coll._nonblocking.CollOp``) advances
    inside Test/Wait (and in any other mmpi call that waits: a progress hook)."""

    __slots__ = ()

    def _block(self) -> None:
        self._op.run()

    def _finish(self, status):
        op = self._op
        self._release()
        fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
        if op.exc is not None:
            raise op.exc
        return op.value

    def _peek(self, status) -> None:
        fill(status, ANY_SOURCE, ANY_TAG, 0, 0)

    def Cancel(self) -> None:
        """Collectives cannot be cancelled: a no-op."""
        if self._is_null():
            raise self._null_error("Cancel")


# ------------------------------------------------------------------ generalized requests

class _GOp:
    """The op of a generalized request: done once ``Grequest.Complete`` is called."""

    __slots__ = ("done", "query", "free", "cancel", "args", "kwargs", "value", "exc",
                 "cancelled")

    def __init__(self, query, free, cancel, args, kwargs):
        self.done = False
        self.query = query
        self.free = free
        self.cancel = cancel
        self.args = tuple(args) if args is not None else ()
        self.kwargs = dict(kwargs) if kwargs is not None else {}
        self.value = None
        self.exc = None
        self.cancelled = False


def _callback_error(e: BaseException, what: str) -> MmpiError:
    """An exception raised by a generalized request's callback, as MPI.Exception:
    its own class if it is one, else ERR_OTHER; the traceback goes to stderr."""
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    if isinstance(e, MmpiError):
        return e
    err = MmpiError(f"Grequest {what} callback raised {type(e).__name__}: {e}",
                    error_class=ERR_OTHER)
    err.__cause__ = e
    return err


class Grequest(Request):
    """Generalized request handle: an operation of the program's own, which
    :meth:`Complete` marks done; ``query_fn(status, *args, **kwargs)`` fills the
    status, ``free_fn(*args, **kwargs)`` runs when it is freed and
    ``cancel_fn(completed, *args, **kwargs)`` on Cancel."""

    __slots__ = ("_g",)

    def _setup(self, request: Grequest | None) -> None:
        self._g = None
        super()._setup(request)

    def _copy_from(self, other) -> None:
        self._g = getattr(other, "_g", None)
        self._alias = None

    def _key(self):
        return self._g if self._op is not None else None

    @classmethod
    def Start(cls, query_fn: Callable[..., None] | None = None,
              free_fn: Callable[..., None] | None = None,
              cancel_fn: Callable[..., None] | None = None, args: tuple[Any] | None = None,
              kwargs: dict[str, Any] | None = None) -> Grequest:
        """Create and return a user-defined request."""
        g = object.__new__(cls)
        g._kind = K_SEND
        g._cx = None
        g._op = g._g = _GOp(query_fn, free_fn, cancel_fn, args, kwargs)
        return g

    def Complete(self) -> None:
        """Notify that a user-defined request is complete."""
        op = self._op
        if op is None:
            raise MmpiError("Grequest.Complete on an inactive request",
                            error_class=ERR_REQUEST)
        if op.done:
            raise MmpiError("Grequest.Complete called twice on one request",
                            error_class=ERR_REQUEST)
        op.done = True

    def complete(self, obj: Any = None) -> None:
        """Notify that a user-defined request is complete, with its result ``obj``."""
        op = self._op
        if op is not None:
            op.value = obj
        self.Complete()

    def _block(self) -> None:
        op = self._op
        delay = 1e-5
        while not op.done:  # completed by another thread of this program
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _progress(self) -> None:
        pass

    def _query(self, status) -> None:
        op = self._op
        st = status if status is not None else Status()
        fill(st, ANY_SOURCE, ANY_TAG, 0, 0, op.cancelled)
        if op.query is not None:
            try:
                op.query(st, *op.args, **op.kwargs)
            except BaseException as e:  # noqa: BLE001 - reported as MPI.Exception
                raise _callback_error(e, "query") from None

    def _peek(self, status) -> None:
        self._query(status)

    def _finish(self, status):
        op = self._op
        err = None
        try:
            self._query(status)
        except MmpiError as e:
            err = e
        self._release()
        if op.free is not None:
            try:
                op.free(*op.args, **op.kwargs)
            except BaseException as e:  # noqa: BLE001 - reported as MPI.Exception
                err = err or _callback_error(e, "free")
        if err is not None:
            raise err
        return op.value

    def Cancel(self) -> None:
        """Cancel a request: calls ``cancel_fn(completed)``."""
        op = self._op
        if op is None:
            raise self._null_error("Cancel")
        if op.cancel is None:
            return
        try:
            op.cancel(op.done, *op.args, **op.kwargs)
        except BaseException as e:  # noqa: BLE001 - reported as MPI.Exception
            raise _callback_error(e, "cancel") from None

    def Free(self) -> None:
        """Free a generalized request (its free callback runs)."""
        op = self._op
        if op is None:
            raise self._null_error("Free")
        self._release()
        if op is not None and op.free is not None:
            try:
                op.free(*op.args, **op.kwargs)
            except BaseException as e:  # noqa: BLE001 - reported as MPI.Exception
                raise _callback_error(e, "free") from None


# ------------------------------------------------------------------ matched messages

class Message:
    """Matched message handle: what ``Comm.Mprobe`` took out of matching;
    receive it with :meth:`Recv`/:meth:`recv` (once).

    ``MESSAGE_NULL`` is the empty handle, ``MESSAGE_NO_PROC`` the message of a
    probe of ``PROC_NULL`` (receiving it gets nothing, at once)."""

    __slots__ = ("_m", "_cx", "_const", "__weakref__")

    def __new__(cls, message: Message | None = None) -> Message:
        self = object.__new__(cls)
        self._m = None
        self._cx = None
        self._const = False
        if message is None:
            return self
        if not isinstance(message, Message):
            raise TypeError(f"Message(): expected a Message, got {type(message).__name__}")
        self._m = message._m
        self._cx = message._cx
        return self

    def __bool__(self) -> bool:
        return self._m is not None

    def __eq__(self, other) -> bool:
        if isinstance(other, Message):
            return self._m is other._m
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # a handle, unhashable as mpi4py's

    def free(self) -> None:
        """Free the handle (a predefined one stays as it is)."""
        if not self._const:
            self._m = None

    def __reduce__(self):
        if self is MESSAGE_NULL:
            return "MESSAGE_NULL"
        if self is MESSAGE_NO_PROC:
            return "MESSAGE_NO_PROC"
        if self._m is None:
            return (type(self), ())
        if self._m is _NO_PROC:
            return (type(self), (MESSAGE_NO_PROC,))
        raise ValueError("cannot pickle a matched Message handle: the message it holds "
                         "belongs to this process")

    @property
    def handle(self) -> int:
        """MPI handle (0 for the null message)."""
        return 0 if self._m is None else _handle_of(self)

    @classmethod
    def fromhandle(cls, handle: int) -> Message:
        """Create object from MPI handle."""
        return _from_handle(cls, handle)

    def toint(self) -> int:
        """Translate object to integer (-1: not supported by mmpi)."""
        return -1

    def py2f(self) -> int:
        """Get the Fortran handle (-1: not supported by mmpi)."""
        return -1

    def __repr__(self) -> str:
        if self._m is None:
            return "<mmpi.Message NULL>"
        if self._m is _NO_PROC:
            return "<mmpi.Message NO_PROC>"
        return f"<mmpi.Message {self._m!r}>"

    # -- probing (classmethods, as mpi4py's) --
    @classmethod
    def Probe(cls, comm: Comm, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status: Status | None = None) -> Message:
        """Blocking test for a matched message."""
        return comm.Mprobe(source, tag, status)

    @classmethod
    def Iprobe(cls, comm: Comm, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> Message | None:
        """Nonblocking test for a matched message."""
        return comm.Improbe(source, tag, status)

    @classmethod
    def probe(cls, comm: Comm, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status: Status | None = None) -> Message:
        """Blocking test for a matched message."""
        return comm.mprobe(source, tag, status)

    @classmethod
    def iprobe(cls, comm: Comm, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> Message | None:
        """Nonblocking test for a matched message."""
        return comm.improbe(source, tag, status)

    # -- receiving --
    def _take(self, what: str):
        m = self._m
        if m is None:
            raise MmpiError(f"Message.{what}: MESSAGE_NULL holds no message (it was "
                            f"received already, or never probed)", error_class=ERR_REQUEST)
        if not self._const:
            self._m = None
        return m

    def _start(self, mv, what: str, unpack=None):
        m = self._take(what)
        if m is _NO_PROC:
            op = T.RecvOp(PROC_NULL, ANY_TAG, 0, mv)
            op.done = True
            return op, None
        cx = self._cx
        if unpack is None:
            op = T.RecvOp(m.source, m.tag, m.context, mv)
        else:   # a derived datatype: received into staging, scattered at completion
            op = UnpackRecvOp(m.source, m.tag, m.context, mv)
            op.unpack = unpack
        cx.t.irecv_matched(op, m)
        return op, cx

    def Recv(self, buf: BufSpec, status: Status | None = None) -> None:
        """Blocking receive of the matched message into ``buf``."""
        from ._bufspec import recv_message
        mv, unpack = recv_message(buf, "Message.Recv")
        op, cx = self._start(mv, "Recv", unpack)
        if not op.done:
            cx.t.wait(op, op.source)
        _outcome(op, K_RECV, cx, status)

    def Irecv(self, buf: BufSpec) -> Request:
        """Nonblocking receive of the matched message into ``buf``."""
        from ._bufspec import recv_message
        mv, unpack = recv_message(buf, "Message.Irecv")
        op, cx = self._start(mv, "Irecv", unpack)
        return Request._make(op, K_RECV, cx)

    def recv(self, status: Status | None = None) -> Any:
        """Blocking receive of the matched message: the object."""
        op, cx = self._start(None, "recv")
        if not op.done:
            cx.t.wait(op, op.source)
        return _outcome(op, K_ORECV, cx, status)

    def irecv(self) -> Request:
        """Nonblocking receive of the matched message (``wait`` gives the object)."""
        op, cx = self._start(None, "irecv")
        return Request._make(op, K_ORECV, cx)


_NO_PROC = object()   # the "message" of MESSAGE_NO_PROC

MESSAGE_NULL = Message()
MESSAGE_NULL._const = True
MESSAGE_NO_PROC = Message()
MESSAGE_NO_PROC._m = _NO_PROC
MESSAGE_NO_PROC._const = True


def message_handle(m, cx) -> Message:
    """A Message handle for the engine message ``m`` (None: PROC_NULL's)."""
    h = object.__new__(Message)
    h._m = _NO_PROC if m is None else m
    h._cx = cx
    h._const = False
    return h


# ------------------------------------------------------------------ factories (for _comm, _coll)

class _SentOp:
    """The op of a standard send that Isend finished at once (copied into the
    ring): done, no error, not cancelled."""

    __slots__ = ()
    done = True
    exc = None
    cancelled = False
    sync = False


# the op of a receive Irecv finished at once (the transport's, shared by the
# receives that took alike messages in a row: the request is its key, as _SENT's)
_RecvdOp = T.TakenOp


_SENT = _SentOp()   # the op of every send Isend finished (immutable: done, no error)


def request(op, kind: int, cx, cls=Request) -> Request:
    """A request (of class ``cls``) for the op ``op`` of kind ``K_*``
    on the communicator context ``cx``."""
    return cls._make(op, kind, cx)


def complete(op, kind: int, cx, status=None):
    """The done op's outcome, as the request's Wait gives it: fills ``status``,
    raises its error, returns the object of an object receive (else None)."""
    return _outcome(op, kind, cx, status)


def persistent(start, kind: int, cx) -> Prequest:
    """A persistent request: each Start calls ``start()`` for a new transport op."""
    p = object.__new__(Prequest)
    p._op = None
    p._kind = kind
    p._cx = cx
    p._start = start
    p._active = False
    return p

_threads.register(Request, Prequest, CollRequest, Grequest, Message)
