"""Requests and statuses: Request, Prequest (persistent), the collective request, Status.

A request holds its transport op and the communicator's context (``_cx``: the
``_coll._context.Context`` of the communicator, which has the transport ``t``
and ``rank_of``).  Generalized requests (Grequest) and matched messages
(Message) belong here too when they come.
"""

from __future__ import annotations

from ..errors import MmpiError
from . import _transport as T
from ._const import ANY_SOURCE, ANY_TAG, PROC_NULL, UNDEFINED
from ._datatype import BYTE, as_datatype
from ._objects import loads

__all__ = ["Status", "Request", "Prequest", "CollRequest", "REQUEST_NULL", "fill", "self_sync",
           "request", "complete", "persistent", "K_SEND", "K_RECV", "K_OSEND", "K_ORECV"]


class Status:
    """What a completed receive (or probe) found."""

    __slots__ = ("source", "tag", "error", "count", "cancelled", "__weakref__")

    def __init__(self, status: Status | None = None):
        if status is None:
            self.source = ANY_SOURCE
            self.tag = ANY_TAG
            self.error = 0
            self.count = 0
            self.cancelled = False
        elif isinstance(status, Status):
            self.source, self.tag, self.error, self.count, self.cancelled = status._fields()
        else:
            raise TypeError(f"Status(status): expected a Status, got {type(status).__name__}")

    def _fields(self) -> tuple:
        return self.source, self.tag, self.error, self.count, self.cancelled

    # a value, as mpi4py's: equal when the fields are, unhashable, pickled by value
    def __eq__(self, other):
        if not isinstance(other, Status):
            return NotImplemented
        return self._fields() == other._fields()

    def __ne__(self, other):
        if not isinstance(other, Status):
            return NotImplemented
        return self._fields() != other._fields()

    __hash__ = None

    def __reduce__(self):
        return (_status, (type(self), self._fields()))

    def Get_source(self) -> int:
        return self.source

    def Set_source(self, source: int) -> None:
        self.source = source

    def Get_tag(self) -> int:
        return self.tag

    def Set_tag(self, tag: int) -> None:
        self.tag = tag

    def Get_error(self) -> int:
        return self.error

    def Set_error(self, error: int) -> None:
        self.error = error

    def Get_count(self, datatype=BYTE) -> int:
        dt = as_datatype(datatype)
        if self.count % dt.size:
            return UNDEFINED
        return self.count // dt.size

    def Get_elements(self, datatype=BYTE) -> int:
        return self.Get_count(datatype)

    def Is_cancelled(self) -> bool:
        return self.cancelled

    def __repr__(self) -> str:
        return (f"Status(source={self.source}, tag={self.tag}, error={self.error}, "
                f"count={self.count})")


def _status(cls, fields) -> Status:
    new = cls.__new__(cls)
    new.source, new.tag, new.error, new.count, new.cancelled = fields
    return new


def fill(status, source, tag, error, count, cancelled=False) -> None:
    if status is not None:
        status.source = source
        status.tag = tag
        status.error = error
        status.count = count
        status.cancelled = cancelled


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


# ------------------------------------------------------------------ requests

K_SEND, K_RECV, K_OSEND, K_ORECV = 0, 1, 2, 3


class Request:
    """A nonblocking operation; ``REQUEST_NULL`` is the empty one."""

    __slots__ = ("_op", "_kind", "_cx", "__weakref__")

    def __init__(self, request=None):
        self._op = None
        self._kind = K_SEND
        self._cx = None

    def _is_null(self) -> bool:
        """REQUEST_NULL's equal: a request with nothing (left) to complete."""
        return self._op is None

    def __bool__(self) -> bool:
        return not self._is_null()

    def __eq__(self, other) -> bool:
        if isinstance(other, Request):
            return self is other or (self._is_null() and other._is_null())
        return NotImplemented

    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def _make(cls, op, kind, cx):
        r = cls.__new__(cls)
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
        if self._kind in (K_RECV, K_ORECV):
            if op.cancelled:
                fill(status, ANY_SOURCE, ANY_TAG, 0, 0, True)
                return None
            m = op.message
            if m is None:  # PROC_NULL
                fill(status, PROC_NULL, ANY_TAG, 0, 0)
                return None
            cnt = op.count if op.capacity is None else min(op.count, op.capacity)
            fill(status, cx.rank_of(m.source), m.tag, op.error, cnt)
            if op.exc is not None:
                raise op.exc
            if self._kind == K_ORECV:
                return loads(op.value)
            return None
        fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
        if op.exc is not None:
            raise op.exc
        return None

    def _release(self):
        self._op = None

    def _peer(self):
        op = self._op
        if isinstance(op, T.SendOp):
            return op.dest
        return None if op.source == ANY_SOURCE else op.source

    def Wait(self, status=None) -> bool:
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            if type(op) is T.SendOp and op.sync:
                self_sync(self._cx, op, "Wait")
            if not op.done:
                self._cx.t.wait(op, self._peer())
        self._finish(status)
        return True

    def Test(self, status=None) -> bool:
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            self._cx.t.progress()
            if not op.done:
                return False
        self._finish(status)
        return True

    def Get_status(self, status=None) -> bool:
        op = self._op
        if op is None:
            return True
        if not op.done:
            self._cx.t.progress()
        return op.done

    def Cancel(self) -> None:
        """Cancel a receive that has not matched yet (sends cannot be cancelled)."""
        op = self._op
        if op is None or op.done or not isinstance(op, T.RecvOp):
            return
        if self._cx.t.engine.cancel(op):
            op.cancelled = True
            op.done = True

    def Free(self) -> None:
        op = self._op
        if op is not None and not op.done:
            raise MmpiError("cannot free an active request: Wait or Cancel it first")
        self._release()

    # -- lowercase (objects) --
    def wait(self, status=None):
        op = self._op
        if op is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return None
        if not op.done:
            if type(op) is T.SendOp and op.sync:
                self_sync(self._cx, op, "wait")
            if not op.done:
                self._cx.t.wait(op, self._peer())
        return self._finish(status)

    def test(self, status=None):
        op = self._op
        if op is None:
            return True, None
        if not op.done:
            self._cx.t.progress()
            if not op.done:
                return False, None
        return True, self._finish(status)

    def cancel(self) -> None:
        self.Cancel()

    def free(self) -> None:
        self.Free()

    def get_status(self, status=None) -> bool:
        return self.Get_status(status)

    # -- collections --
    @staticmethod
    def _transport(requests):
        for r in requests:
            if r._op is not None:
                return r._cx.t
        return None

    @classmethod
    def Waitall(cls, requests, statuses=None) -> bool:
        cls.waitall(requests, statuses)
        return True

    @classmethod
    def waitall(cls, requests, statuses=None) -> list:
        out = []
        err = None
        for i, r in enumerate(requests):
            st = statuses[i] if statuses is not None and i < len(statuses) else None
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
    def Waitany(cls, requests, status=None) -> int:
        return cls.waitany(requests, status)[0]

    @classmethod
    def waitany(cls, requests, status=None):
        t = cls._transport(requests)
        if t is None:
            fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return UNDEFINED, None
        ops = [r._op for r in requests]
        cls._self_sync_all(requests, "Waitany")
        t.wait_until(lambda: any(o is not None and o.done for o in ops))
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                return i, r.wait(status)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def Waitsome(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is None:
            return None
        ops = [r._op for r in requests]
        cls._self_sync_all(requests, "Waitsome")
        t.wait_until(lambda: any(o is not None and o.done for o in ops))
        return cls.Testsome(requests, statuses)

    @staticmethod
    def _self_sync_all(requests, what):
        """Waiting on synchronous sends to oneself that nothing matched: those
        can never complete (see self_sync) and complete with an error."""
        ops = [r._op for r in requests]
        if any(o is not None and o.done for o in ops):
            return
        for r, o in zip(requests, ops):
            if type(o) is T.SendOp and o.sync:
                self_sync(r._cx, o, what)

    @classmethod
    def Testall(cls, requests, statuses=None) -> bool:
        t = cls._transport(requests)
        if t is not None:
            t.progress()
        if all(r._op is None or r._op.done for r in requests):
            cls.Waitall(requests, statuses)
            return True
        return False

    @classmethod
    def testall(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is not None:
            t.progress()
        if all(r._op is None or r._op.done for r in requests):
            return True, cls.waitall(requests, statuses)
        return False, None

    @classmethod
    def Testany(cls, requests, status=None):
        t = cls._transport(requests)
        if t is None:
            return UNDEFINED, True
        t.progress()
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                r.Wait(status)
                return i, True
        return UNDEFINED, False

    @classmethod
    def Testsome(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is None:
            return None
        t.progress()
        done = []
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                st = statuses[i] if statuses is not None and i < len(statuses) else None
                r.Wait(st)
                done.append(i)
        return done

    def __repr__(self) -> str:
        if self._op is None:
            return "<mmpi.Request NULL>"
        return f"<mmpi.Request {self._op!r}>"


class Prequest(Request):
    """A persistent request (Send_init/Recv_init): Start, Wait, Start again..."""

    __slots__ = ("_start", "_active")

    def __init__(self, request=None):
        super().__init__()
        self._start = None
        self._active = False

    def _is_null(self) -> bool:
        # a persistent request is a real handle, active or not, until it is freed
        # (one to PROC_NULL too: it starts and completes at once)
        return self._start is None

    def Start(self) -> None:
        if self._start is None:
            raise MmpiError("Start on a freed persistent request")
        if self._op is not None and not self._op.done:
            raise MmpiError("Start on a persistent request that is still active: Wait first")
        self._op = self._start()

    @classmethod
    def Startall(cls, requests) -> None:
        for r in requests:
            r.Start()

    def _release(self):
        self._op = None  # inactive, reusable

    def Free(self) -> None:
        super().Free()
        self._start = None


REQUEST_NULL = Request()


class CollRequest(Request):
    """A nonblocking collective: its op (``_coll._nonblocking.CollOp``) advances
    inside Test/Wait (and in any other mmpi call that waits: a progress hook)."""

    __slots__ = ()

    def _done(self, status):
        op = self._op
        self._op = None
        fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
        if op is not None and op.exc is not None:
            raise op.exc
        return None if op is None else op.value

    def Wait(self, status=None) -> bool:
        if self._op is not None:
            self._op.run()
        self._done(status)
        return True

    def wait(self, status=None):
        if self._op is not None:
            self._op.run()
        return self._done(status)

    def Test(self, status=None) -> bool:
        if self._op is not None and not self._op.done:
            return False
        self._done(status)
        return True

    def test(self, status=None):
        if self._op is not None and not self._op.done:
            return False, None
        return True, self._done(status)

    def Get_status(self, status=None) -> bool:
        return self._op is None or self._op.done

    def Cancel(self) -> None:
        pass  # collectives cannot be cancelled

    def __repr__(self) -> str:
        return "<mmpi.Request collective>" if self._op else "<mmpi.Request NULL>"


# ------------------------------------------------------------------ factories (for _comm, _coll)

def request(op, kind: int, cx, cls=Request) -> Request:
    """A request (of class ``cls``) for the transport op ``op`` of kind ``K_*``
    on the communicator context ``cx``."""
    return cls._make(op, kind, cx)


def complete(op, kind: int, cx, status=None):
    """The done op's outcome, as the request's Wait gives it: fills ``status``,
    raises its error, returns the object of an object receive (else None)."""
    return Request._make(op, kind, cx)._finish(status)


def persistent(start, kind: int, cx) -> Prequest:
    """A persistent request: each Start calls ``start()`` for a new transport op."""
    p = Prequest()
    p._kind = kind
    p._cx = cx
    p._start = start
    return p
