"""Communicators, requests, statuses and datatypes (mpi4py's names and conventions).

Uppercase methods move buffers (``Send([buf, count, MPI.DOUBLE], dest, tag)``),
lowercase ones move picklable Python objects (``send(obj, dest, tag)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn
    from typing_extensions import Self
    from . import Cartcomm, Distgraphcomm, Graphcomm, Intercomm
    from ._coll._ops import Op
    from ._errhandler import Errhandler
    from ._group import Group
    from ._info import Info
    from ._typing import BufSpec, BufSpecB, BufSpecV, BufSpecW, Buffer, InPlace

import atexit
import mmap
import os
import pickle
import sys
import time
import warnings
import weakref

import numpy as np

from .. import _errcodes
from .._errcodes import ERR_BUFFER, ERR_COMM, ERR_RANK, ERR_TAG, ERR_TRUNCATE
from ..errors import DrillerError, MmpiError, MmpiNotImplementedError
from . import _attr, _bsend, _errhandler, _group, _info
from . import _transport as T
from . import _world as W
from ._bufspec import EMPTY, message, recv_message, spec_view
from ._coll import _hier, _hiergather, _nonblocking, _reduce, _vcoll
from ._coll._context import Context
from ._coll._ops import SUM
from ._datatype import Datatype
from ._handle import Handle
from ._const import (ANY_SOURCE, ANY_TAG, APPNUM, IO, LASTUSEDCODE, PROC_NULL, TAG_MAX, TAG_UB,
                     UNDEFINED, UNIVERSE_SIZE, WTIME_IS_GLOBAL)
from . import _objects, _pylayers
from . import _threads
from ._objects import ARRAY_KINDS, dumps, loads, pack_array
from ._request import (K_ORECV, K_PAIR, K_RECV, K_SEND, Message, PairOp, Prequest, Request,
                       Status, complete, fill, message_handle, persistent, request,
                       self_sync)
from ._request import UnpackRecvOp as _UnpackRecvOp
from ._request import _SENT   # (Isend makes its finished requests)

# formats whose C-contiguous buffers Send/Recv take as their bytes at once (native,
# one plain item each: numpy's numeric arrays); others go through _bufspec.message
_FLAT_FORMATS = frozenset("bBhHiIlLqQnNefd?")

__all__ = [
    "Comm", "Intracomm", "route", "Wtime", "Wtick", "init_world", "world_comm", "self_comm",
    "finalize", "is_initialized", "is_finalized", "launched_rank", "COMM_NULL", "set_parent",
    "register_extension",
    "Attach_buffer", "Detach_buffer", "Flush_buffer", "Iflush_buffer",
]

_CTX_WORLD, _CTX_SELF = 0, 2   # p2p contexts; collectives use context + 1; new comms from 4


def Wtime() -> float:
    """Seconds since an arbitrary origin (monotonic, high resolution)."""
    return time.perf_counter()


def Wtick() -> float:
    """The resolution of Wtime, in seconds."""
    return time.get_clock_info("perf_counter").resolution


# ------------------------------------------------------------------ communicator

def _own(obj: Any, me: int, what: str) -> Any:
    """This rank's own contribution as a receiver would get it (:func:`_objects.own_copy`,
    as mpi4py gives it); one that cannot be pickled raises as a peer's would."""
    try:
        return _objects.own_copy(obj)
    except Exception as e:
        raise MmpiError(f"{what}: rank {me} could not send its object of {what} "
                        f"({type(e).__name__}: {e})") from e


def _own_result(out: Any, mine: Any, me: int, what: str) -> Any:
    """A collective's result: a copy of it (:func:`_own`) when it is the object this
    rank passed in (``mine``: a root's, or one rank's reduction)."""
    return _own(out, me, what) if out is mine else out


def _own_item(out: list[Any] | None, me: int, mine: Any, what: str) -> list[Any] | None:
    """A gathered list whose item ``me`` is this rank's own object: a copy of it there
    (:func:`_own`), as mpi4py gives (changing the list's items never changes what
    was passed in)."""
    if out is not None:
        out[me] = _own_result(out[me], mine, me, what)
    return out


class _Handle:
    """The object behind a communicator handle, shared by every Python object onto
    it (``Comm(comm)``): the collective Context, the class a handle look-up gives
    (:meth:`Comm.fromhandle`), the cached attributes, the info hints, the handle's
    number (``py2f``), whether it is predefined (COMM_WORLD/COMM_SELF) or freed, and
    ``ext``: a dict where subclasses keep their per-communicator state (a topology,
    an intercommunicator's remote group), so that every handle onto it sees it."""

    __slots__ = ("cx", "cls", "attrs", "info", "number", "predefined", "freed", "ext",
                 "__weakref__")

    def __init__(self, cx, cls, number=None, predefined=False):
        self.cx = cx
        self.cls = cls
        self.attrs = _attr.Attributes("comm")
        self.info = {}
        if number is None:
            number = _handles.next
            _handles.next = number + 1
        self.number = number
        self.predefined = predefined
        self.freed = False
        self.ext = {}
        _handles.live[number] = self


class _Handles:
    next = 3                                  # 0, 1, 2: COMM_WORLD, COMM_SELF, COMM_NULL
    live = weakref.WeakValueDictionary()      # number -> _Handle (fromhandle, f2py)


_handles = _Handles()
_NULL_NUMBER = 2
# a null (or freed) communicator has none of these in its dict: the class's _Unbound
# descriptors then raise ERR_COMM
_BOUND = frozenset(("_cx", "_t", "_group", "_ctx", "_rank_of", "rank", "size", "_npeers", "_p"))


class _P2P:
    """What the blocking point-to-point fast paths read of a bound communicator,
    as slots.  The fields of ``_BOUND`` shadow class-level descriptors (ERR_COMM on
    a null handle), which keeps CPython 3.11 from specialising their loads: one
    load of ``comm._p`` (made on first use) and slot loads cost less than the
    handful of instance-dict loads they replace (docs/mmpi.md, "Hot paths, third
    round")."""

    __slots__ = ("t", "group", "npeers", "ctx", "rank_of", "sliced", "sends", "recvs",
                 "asends", "__weakref__")

    def __init__(self, t, group, npeers: int, ctx: int, rank_of):
        self.t = t
        # receives into a bytearray/mmap spec by slice assignment: the ring takers of
        # a world whose every rank is local (a hybrid world's remote takers take views)
        self.sliced = t.all_local
        self.group = group
        self.npeers = npeers
        self.ctx = ctx
        self.rank_of = rank_of
        # Send's and Recv's per-peer closures by rank of this communicator
        # (``t.senders[group[r]]``, ``t.recvers[group[r]]``), looked up through the
        # transport on first use; None again after a fork or Finalize (_forget_peers),
        # so that the next call asks the transport, which then raises
        self.sends = [None] * npeers
        self.recvs = [None] * npeers
        # Send's path for a numpy array by rank (``t.array_senders[group[r]]``: False
        # where the transport has none), likewise; looked at only once a transport
        # with ranks on other nodes made a record (_ARRAY_ROUTES)
        self.asends = [None] * npeers
        if t.remote:
            global _ARRAY_ROUTES
            _ARRAY_ROUTES = True
        _P2PS.add(self)


# whether any communicator has ranks on other nodes (a hybrid world): Send then asks
# its per-rank table for a numpy array's own path (one global's test otherwise)
_ARRAY_ROUTES = False
_NDARRAY = np.ndarray


_P2PS = weakref.WeakSet()   # every _P2P record (_forget_peers empties their tables)


def _comm_error(what: str) -> MmpiError:
    return MmpiError(f"{what}: invalid communicator: COMM_NULL or freed (a rank outside "
                     f"a new communicator gets COMM_NULL from Split/Create; test "
                     f"`comm != MPI.COMM_NULL`; a freed communicator cannot be used)",
                     error_class=ERR_COMM)


class Comm(_attr.Cached, Handle):
    """A communicator: a group of ranks and a context id that fences its messages.

    ``Comm()`` is a null handle (equal to COMM_NULL), ``Comm(comm)`` a second handle
    onto ``comm``'s communicator (equal to it).  Point-to-point is here;
    collectives are one-line delegations to ``_coll``, which works on the
    communicator's :class:`~._coll._context.Context`."""

    _inner = "_h"   # truth, equality, int handles: Handle

    def __new__(cls, comm: Comm | None = None, *internal: Any, **kw: Any) -> Self:
        self = object.__new__(cls)
        self._h = None
        if internal:  # driller's own form: Comm(transport, group, context[, name])
            name = internal[2] if len(internal) > 2 else kw.get("name", "")
            self._bind(_Handle(Context(comm, internal[0], internal[1], name), cls))
        elif comm is None:
            pass
        elif isinstance(comm, Comm):
            if comm._h is not None:
                self._bind(comm._h)
        else:
            raise TypeError(f"{cls.__name__}(comm): expected a communicator, got "
                            f"{type(comm).__name__}")
        return self

    def __init__(self, *args: Any, **kw: Any) -> None:
        pass  # everything is done in __new__ (subclasses may override it, as mpi4py's)

    def _bind(self, h: _Handle) -> None:
        if _LAST_SEND[10] is self:   # (Send's cache holds this object's old record)
            _forget_send_peer()
        self.__dict__.pop("_p", None)   # (made from the fields below on first use)
        cx = self._cx = h.cx
        self._h = h
        # the context's fields, as attributes for the point-to-point hot paths
        self._t = cx.t
        self._group = cx.group
        self._ctx = cx.ctx
        self._rank_of = cx.rank_of
        self.rank = cx.rank
        self.size = cx.size
        # point-to-point peers (``_group``'s length): the ranks the fast paths accept;
        # an intercommunicator's are the remote group's
        self._npeers = cx.size
        errh = h.ext.get("errh")
        if errh is not None:    # a handler set or inherited: applied on failing calls too
            _errhandler.apply(self, errh)

    def _unbind(self) -> None:
        _forget_send_peer()   # (Send's cache keeps no freed communicator's record)
        d = self.__dict__
        for k in _BOUND:
            d.pop(k, None)
        self._h = None

    @classmethod
    def _make(cls, h: _Handle):
        new = cls.__new__(cls)
        new._bind(h)
        return new

    # -- the handle: pickling, fromhandle (truth, equality, int handles: Handle) --
    def __reduce__(self):
        if self is COMM_NULL:
            return "COMM_NULL"
        if self is _state.comm_world:
            return "COMM_WORLD"
        if self is _state.comm_self:
            return "COMM_SELF"
        h = self._h
        if h is None:
            return (type(self), ())
        if h.predefined:
            return (type(self), (_state.comm_world if h.number == 0 else _state.comm_self,))
        raise ValueError(f"cannot pickle {self!r}: only COMM_NULL, COMM_WORLD and "
                         f"COMM_SELF (and handles onto them) pickle")

    @property
    def handle(self) -> int:
        """The communicator's handle (an int >= 0; ``Comm.fromhandle`` takes it back)."""
        h = self._h
        return _NULL_NUMBER if h is None else h.number

    @classmethod
    def fromhandle(cls, handle: int) -> "Comm":
        """A new Python object onto the communicator of ``handle``."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"{cls.__name__}.fromhandle: expected an int, got {handle!r}")
        if handle in (0, 1):
            _ensure()
        if handle == _NULL_NUMBER:
            return cls()
        h = _handles.live.get(handle)
        if h is None or h.freed:
            raise MmpiError(f"{cls.__name__}.fromhandle: {handle} is no live communicator "
                            f"handle", error_class=ERR_COMM)
        klass = h.cls if cls is Comm else cls   # Comm.fromhandle: the handle's own class
        return klass._make(h)

    # -- basics --
    def Get_rank(self) -> int:
        """Rank of this process in the communicator."""
        self._t.rank  # raises after Finalize and in a forked child, as every call
        return self.rank

    def Get_size(self) -> int:
        """Number of processes in the communicator."""
        self._t.rank
        return self.size

    def Get_name(self) -> str:
        """The communicator's name."""
        if self._h is None:
            return "MPI_COMM_NULL"
        return self._cx.name

    def Is_inter(self) -> bool:
        """Whether this is an intercommunicator."""
        self._cx
        return False

    def Is_intra(self) -> bool:
        """Whether this is an intracommunicator."""
        self._cx
        return True

    @property
    def is_inter(self) -> bool:
        """Whether this is an intercommunicator."""
        return self.Is_inter()

    @property
    def is_intra(self) -> bool:
        """Whether this is an intracommunicator."""
        return self.Is_intra()

    def Get_topology(self) -> int:
        """The type of topology attached (UNDEFINED: none)."""
        topo = self._cx.topo   # (set by ``_topo``: every handle onto the communicator sees it)
        return UNDEFINED if topo is None else topo.code

    @property
    def topology(self) -> int:
        """The type of topology attached (UNDEFINED: none)."""
        return self.Get_topology()

    def __repr__(self) -> str:
        if self._h is None:
            return f"<mmpi.{type(self).__name__} COMM_NULL>"
        return f"<mmpi.{type(self).__name__} {self._cx.name or 'comm'} rank {self.rank} of {self.size}>"

    def _dest(self, dest, what: str) -> int:
        if type(dest) is not int:
            if _int_like(dest):
                dest = int(dest)
            else:
                raise MmpiError(f"{what}: destination rank must be an int, got {dest!r}")
        if 0 <= dest < self.size:
            return self._group[dest]
        if dest == PROC_NULL:
            return PROC_NULL
        raise MmpiError(f"{what}: invalid destination rank {dest} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1} or PROC_NULL)",
                        error_class=ERR_RANK)

    def _source(self, source, what: str) -> int:
        if type(source) is not int:
            if _int_like(source):
                source = int(source)
            else:
                raise MmpiError(f"{what}: source rank must be an int, got {source!r}")
        if 0 <= source < self.size:
            return self._group[source]
        if source == ANY_SOURCE or source == PROC_NULL:
            return source
        raise MmpiError(f"{what}: invalid source rank {source} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1}, ANY_SOURCE or PROC_NULL)",
                        error_class=ERR_RANK)

    @staticmethod
    def _stag(tag, what: str) -> int:
        if type(tag) is not int or not 0 <= tag <= TAG_MAX:
            if _int_like(tag) and 0 <= int(tag) <= TAG_MAX:
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a send tag is an int in 0..{TAG_MAX})",
                            error_class=ERR_TAG)
        return tag

    @staticmethod
    def _rtag(tag, what: str) -> int:
        if type(tag) is not int or not (0 <= tag <= TAG_MAX or tag == ANY_TAG):
            if _int_like(tag) and (0 <= int(tag) <= TAG_MAX or int(tag) == ANY_TAG):
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a receive tag is an int in "
                            f"0..{TAG_MAX} or ANY_TAG)", error_class=ERR_TAG)
        return tag

    # -- starting operations (internal) --
    def _isend(self, buf, dest, tag, sync, what, ctx=None, blocking=False, r=None):
        """Start a send.  ``blocking``: for a blocking call, whose message must go as
        it was at the call even when the start itself raises (a signal handler's
        exception in the first chunks' copy): kept then (Transport.keep_sent), and
        the call's receive ``r`` (Sendrecv's) abandoned."""
        mv = message(buf, False, what)
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        op = T.SendOp(w, tag, self._ctx if ctx is None else ctx, mv, sync)
        try:
            self._t.isend(op)
        except BaseException:
            if blocking:
                try:
                    self._t.keep_sent(op)
                finally:
                    if r is not None:
                        self._t.abandon(r)
            raise
        return op

    def _irecv(self, buf, source, tag, what, ctx=None, parsed=None):
        mv, unpack = recv_message(buf, what) if parsed is None else parsed
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        if unpack is None:
            op = T.RecvOp(w, tag, self._ctx if ctx is None else ctx, mv)
        else:  # a derived datatype: received into staging, scattered at completion
            op = _UnpackRecvOp(w, tag, self._ctx if ctx is None else ctx, mv)
            op.unpack = unpack
        if w == PROC_NULL:
            op.done = True
            return op
        self._t.irecv(op)
        return op

    def _osend(self, obj, dest, tag, sync, what, pickled=None, keep=False, snapshot=False):
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        return self._t.send_object(w, self._ctx, tag, obj, sync, what, pickled, keep,
                                   snapshot)

    def _orecv(self, source, tag, what):
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        op = T.RecvOp(w, tag, self._ctx, None)
        if w == PROC_NULL:
            op.done = True
            return op
        self._t.irecv(op)
        return op

    def _wait_send(self, op):
        if op is None:
            return
        if not op.done:
            try:
                if op.sync:
                    self_sync(self._cx, op, "Ssend")
                if not op.done:
                    self._t.wait(op, op.dest)
            except BaseException:   # (Ctrl-C, a signal handler's exception, a death)
                self._t.keep_sent(op)   # delivered as it was at the call, never torn
                raise
        if op.exc is not None:
            raise op.exc

    def _wait_both(self, r, s, status, obj=False):
        """Sendrecv's wait: the receive first (a large send to another node waits
        for its own data alone, and the peer's send may wait for this receive),
        then the send; an exception out of either leaves neither behind (the
        receive abandoned, the send's message kept as it was)."""
        try:
            got = self._wait_recv(r, status, obj)
        except BaseException:
            self._t.keep_sent(s)
            raise
        self._wait_send(s)
        return got

    def _wait_recv(self, op, status, obj=False):
        if not op.done:
            try:
                self._t.wait(op, None if op.source == ANY_SOURCE else op.source)
            except BaseException:   # (Ctrl-C, a signal handler's exception, a death)
                self._t.abandon(op)
                raise
        return complete(op, K_ORECV if obj else K_RECV, self._cx, status)

    # -- blocking buffer p2p --
    def Send(self, buf: BufSpec, dest: int, tag: int = 0) -> None:
        """Blocking send."""
        if type(buf) is list:  # [buf, count, dt] and friends: the spec's fast path
            if len(buf) != 3 or type(buf[0]) is not _MMAP:   # (a short jump: specialised)
                mv = spec_view(buf, False, True) or message(buf, False, "Send")
            else:
                mv, n, d = buf   # (one unpacking: the hit below is on the ping-pong's path)
                c = _LAST_SEND   # the last [mmap, count, dt] sent: copied again
                if n is c[0] and d is c[1] and d._t is c[2] and mv is c[4]():
                    if self is c[10] and dest is c[6]:
                        # to the same rank of the same communicator (still bound: _bind
                        # and _unbind drop it, so no ``self._p`` to read): the
                        # transport's fused sender for these bytes (it slices the mmap)
                        if (tag is c[8] or type(tag) is int and 0 <= tag <= TAG_MAX) \
                                and c[7](tag, mv):
                            return
                    else:
                        try:
                            p = self._p
                        except MmpiError:   # null or freed: a bad buffer is reported first
                            p = None
                        if p is not None:
                            _send_peer_missed(c, self, p, dest, tag)
                    nb = c[3]
                    try:
                        mv = mv[:nb]
                    except ValueError:   # a closed mmap: the parser says so
                        mv = b""
                    if len(mv) != nb:   # shrunk or closed since: parsed in full
                        mv = message(buf, False, "Send")
                else:
                    mv = spec_view(buf, False, True)
                    if mv is None:
                        mv = message(buf, False, "Send")
                    elif type(mv) is bytes:
                        _remember_send(buf, len(mv))
        else:
            if _ARRAY_ROUTES and type(buf) is _NDARRAY and type(dest) is int \
                    and type(tag) is int:
                # a numpy array to a rank the transport reaches with the array itself
                # (another node's: no memoryview, no cast; _hybrid._array_sender)
                p = self._p
                if 0 <= dest < p.npeers and 0 <= tag <= TAG_MAX:
                    f = p.asends[dest]
                    if f is None:   # (first use, or a fork or Finalize since, as sends)
                        f = p.asends[dest] = p.t.array_senders[p.group[dest]]
                    if f and f(p.ctx, tag, buf):
                        return
            try:  # _buffer's fast path, inlined
                mv = memoryview(buf)
                if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous):
                    # a C-contiguous array of a native plain type (a numpy array): its bytes
                    mv = mv.cast("B") if mv.format in _FLAT_FORMATS and mv.c_contiguous \
                        else message(buf, False, "Send")
            except (TypeError, ValueError):
                mv = message(buf, False, "Send")
        p = self._p
        if type(dest) is int and 0 <= dest < p.npeers and type(tag) is int and \
                0 <= tag <= TAG_MAX:
            f = p.sends[dest]
            if f is None:   # (first use, or a fork or Finalize since: the transport raises)
                f = p.sends[dest] = p.t.senders[p.group[dest]]
            if f(p.ctx, tag, mv) or p.t.send_blocking(p.group[dest], p.ctx, tag, mv):
                return
        elif type(dest) is float and type(tag) is int and dest - dest == 0.0 or \
                (type(dest) is not int or type(tag) is not int) and \
                (type(dest) is int or _int_like(dest)) and (type(tag) is int or _int_like(tag)):
            # a float rank (osu_multi_lat's ``myid + nprocs / 2``, checked inline) or
            # another number (a numpy rank or tag): the same fast path, table included
            dest = int(dest)
            if type(tag) is not int:
                tag = int(tag)
            if 0 <= dest < p.npeers and 0 <= tag <= TAG_MAX:
                f = p.sends[dest]
                if f is None:
                    f = p.sends[dest] = p.t.senders[p.group[dest]]
                if f(p.ctx, tag, mv):
                    return
        self._wait_send(self._isend(mv, dest, tag, False, "Send", blocking=True))

    def Ssend(self, buf: BufSpec, dest: int, tag: int = 0) -> None:
        """Blocking send in synchronous mode."""
        self._wait_send(self._isend(buf, dest, tag, True, "Ssend", blocking=True))

    def Rsend(self, buf: BufSpec, dest: int, tag: int = 0) -> None:
        """Blocking send in ready mode (a matching receive must be posted: mmpi
        treats it as a standard send, which MPI allows)."""
        self._wait_send(self._isend(buf, dest, tag, False, "Rsend", blocking=True))

    def Bsend(self, buf: BufSpec, dest: int, tag: int = 0) -> None:
        """Blocking send in buffered mode: the message is copied into the
        attached buffer (``Attach_buffer``) and the call returns at once."""
        self._ibsend(buf, dest, tag, "Bsend")

    # -- buffered mode (``_bsend``) --
    def _bsend_buffer(self, what):
        b = _bsend.current(self.__dict__.get("_bsend"))
        if b is None:
            raise MmpiError(f"{what}: no buffer is attached for buffered sends; attach one "
                            f"first (MPI.Attach_buffer(bytearray(n + MPI.BSEND_OVERHEAD)) or "
                            f"MPI.BUFFER_AUTOMATIC)", error_class=ERR_BUFFER)
        return b

    def _ibsend(self, buf, dest, tag, what):
        """Start a buffered send: copy ``buf`` into the attached buffer and send
        from there (the block is the buffer's until the transport is done)."""
        mv = message(buf, False, what)
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return
        b = self._bsend_buffer(what)
        view, blk = b.place(len(mv), what, self._t.progress)
        try:
            view[:] = mv
            op = T.SendOp(w, tag, self._ctx, view, False)
            self._t.isend(op)
        except BaseException:
            b.release(blk)
            raise
        blk[2] = op

    def _obsend(self, obj, dest, tag, what):
        """Start a buffered send of a Python object (pickled into the attached buffer)."""
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return
        from ..sharedarray import pickled_by_value
        with pickled_by_value():  # a buffered message is a copy: shared arrays too
            stream = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        b = self._bsend_buffer(what)
        view, blk = b.place(len(stream), what, self._t.progress)
        try:
            view[:] = stream
            op = self._t.send_object(w, self._ctx, tag, None, False, what, (view, []))
        except BaseException:
            b.release(blk)
            raise
        blk[2] = op if op is not None else _bsend._DONE

    def Attach_buffer(self, buf: Buffer | None) -> None:
        """Attach a user-provided buffer for sending in buffered mode on this
        communicator (or ``BUFFER_AUTOMATIC``)."""
        _bsend.attach(self.__dict__.setdefault("_bsend", {}), buf, "Comm.Attach_buffer")

    def Detach_buffer(self) -> Buffer | None:
        """Remove this communicator's buffer for buffered sends (once every
        message in it is delivered); the buffer that was attached."""
        return _bsend.detach(self.__dict__.setdefault("_bsend", {}),
                             lambda op: self._t.wait(op, op.dest), "Comm.Detach_buffer")

    def Flush_buffer(self) -> None:
        """Block until all buffered messages (of this communicator's buffer, else
        the process's) have been transmitted."""
        b = _bsend.current(self.__dict__.get("_bsend"))
        if b is not None:
            for op in b.pending():
                self._t.wait(op, op.dest)

    def Iflush_buffer(self) -> Request:
        """Nonblocking flush for buffered messages."""
        return request(_FlushOp(_bsend.current(self.__dict__.get("_bsend"))), K_SEND,
                       self._cx)

    def Recv(self, buf: BufSpec, source: int = ANY_SOURCE, tag: int = ANY_TAG,
             status: Status | None = None) -> None:
        """Blocking receive."""
        cap = -1
        p = self._p
        if type(buf) is list:
            c = _last_irecv   # (Irecv's remembered spec: the same checks as there; its
            # length is the copy's, c[2], which has three items)
            if buf is c[0] and buf[0] is c[1] and buf == c[2] \
                    and buf[2] is c[4] and c[4]._t is c[5] and p.sliced:
                mv = c[1]
                cap = c[3]
                try:
                    if len(mv) < cap:   # shrunk since: the parser says what is wrong
                        mv, cap = None, -1
                except ValueError:   # closed since: likewise
                    mv, cap = None, -1
            else:
                mv = spec_view(buf, True, False, p.sliced)
                if type(mv) is int:   # [bytearray or mmap, count, dt] (osu_latency's): its
                    cap = mv          # first ``cap`` bytes, by slice assignment if taken at
                    mv = buf[0]       # once
                    _remember(False, buf, cap, p, source, self._cx)
        else:
            mv = None
        if mv is None:
            try:  # _buffer's fast path, inlined
                mv = memoryview(buf)
                if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous
                        and not mv.readonly):
                    mv = mv.cast("B") if mv.format in _FLAT_FORMATS and mv.c_contiguous \
                        and not mv.readonly else message(buf, True, "Recv")
            except (TypeError, ValueError):
                mv, unpack = recv_message(buf, "Recv")
                if unpack is not None:  # a derived datatype: the generic path unpacks
                    self._wait_recv(self._irecv(buf, source, tag, "Recv",
                                                parsed=(mv, unpack)), status)
                    return
        if (type(source) is int and -1 <= source < p.npeers and type(tag) is int
                and -1 <= tag <= TAG_MAX):
            if source >= 0:   # the message already there: taken at once, else waited for
                f = p.recvs[source]
                if f is None:   # (as Send's)
                    f = p.recvs[source] = p.t.recvers[p.group[source]]
                res = f(tag, p.ctx, mv, cap, True)
            else:
                if cap >= 0:
                    mv = _sliced_view(mv, cap)
                res = p.t.recv_fast(source, tag, p.ctx, mv) if mv is not None else None
            if res is not None:
                if status is not None:
                    fill(status, p.rank_of(res[0]), res[1], 0, res[2])
                return
        elif type(source) is float and type(tag) is int and source - source == 0.0 or \
                (type(source) is not int or type(tag) is not int) and \
                (type(source) is int or _int_like(source)) and \
                (type(tag) is int or _int_like(tag)):
            # a float rank (osu_multi_lat's ``myid - nprocs / 2``, checked inline) or
            # another number (a numpy rank or tag): the same fast path, table included
            source = int(source)
            if type(tag) is not int:
                tag = int(tag)
            if 0 <= source < p.npeers and -1 <= tag <= TAG_MAX:
                f = p.recvs[source]
                if f is None:
                    f = p.recvs[source] = p.t.recvers[p.group[source]]
                res = f(tag, p.ctx, mv, cap, True)
                if res is not None:
                    if status is not None:
                        fill(status, p.rank_of(res[0]), res[1], 0, res[2])
                    return
        if cap >= 0 or mv is None:   # (a declined bytearray/mmap spec: parsed in full)
            mv = buf
        self._wait_recv(self._irecv(mv, source, tag, "Recv"), status)

    def Sendrecv(self, sendbuf: BufSpec, dest: int, sendtag: int = 0,
                 recvbuf: BufSpec | None = None, source: int = ANY_SOURCE, recvtag: int = ANY_TAG,
                 status: Status | None = None) -> None:
        """Send and receive a message."""
        smv = message(sendbuf, False, "Sendrecv")
        rmv, unpack = recv_message(recvbuf, "Sendrecv")
        if unpack is not None:  # a derived receive datatype: the generic path unpacks
            r = self._irecv(recvbuf, source, recvtag, "Sendrecv", parsed=(rmv, unpack))
            s = self._isend(smv, dest, sendtag, False, "Sendrecv", blocking=True, r=r)
            self._wait_both(r, s, status)
            return
        p = self._p
        size = p.npeers
        if (type(dest) is int and 0 <= dest < size and type(sendtag) is int
                and 0 <= sendtag <= TAG_MAX and type(source) is int and -1 <= source < size
                and type(recvtag) is int and -1 <= recvtag <= TAG_MAX):
            # the common case, validated inline: straight into and out of the rings
            f = p.sends[dest]
            if f is None:   # (as Send's)
                f = p.sends[dest] = p.t.senders[p.group[dest]]
            if f(p.ctx, sendtag, smv):
                res = p.t.recv_fast(p.group[source] if source >= 0 else source, recvtag,
                                    p.ctx, rmv)
                if res is not None:
                    if status is not None:
                        fill(status, p.rank_of(res[0]), res[1], 0, res[2])
                    return
                self._wait_recv(self._irecv(rmv, source, recvtag, "Sendrecv"), status)
                return
        w = self._dest(dest, "Sendrecv")
        sendtag = self._stag(sendtag, "Sendrecv")
        self._source(source, "Sendrecv")
        self._rtag(recvtag, "Sendrecv")
        if w != PROC_NULL and self._t.send_fast(w, self._ctx, sendtag, smv):
            self.Recv(rmv, source, recvtag, status)  # the send is done (eager, queued)
            return
        r = self._irecv(rmv, source, recvtag, "Sendrecv")
        s = self._isend(smv, dest, sendtag, False, "Sendrecv", blocking=True, r=r)
        # (the receive first: a large send to another node waits for its own
        # data alone, and the peer's send may wait for this receive)
        self._wait_both(r, s, status)

    def Sendrecv_replace(self, buf: BufSpec, dest: int, sendtag: int = 0, source: int = ANY_SOURCE,
                         recvtag: int = ANY_TAG, status: Status | None = None) -> None:
        """Send and receive a message."""
        mv, unpack = recv_message(buf, "Sendrecv_replace")
        if unpack is not None:  # a derived datatype: send its packed bytes
            copy = message(buf, False, "Sendrecv_replace")
            r = self._irecv(buf, source, recvtag, "Sendrecv_replace", parsed=(mv, unpack))
            s = self._isend(copy, dest, sendtag, False, "Sendrecv_replace", blocking=True, r=r)
            self._wait_both(r, s, status)
            return
        copy = bytes(mv)
        r = self._irecv(mv, source, recvtag, "Sendrecv_replace")
        s = self._isend(copy, dest, sendtag, False, "Sendrecv_replace", blocking=True, r=r)
        self._wait_both(r, s, status)

    # -- nonblocking buffer p2p --
    def _sreq(self, op):
        # None: to PROC_NULL, or complete already: a request that completes at once
        return request(op if op is not None else _null_done_send(), K_SEND, self._cx)

    def Isend(self, buf: BufSpec, dest: int, tag: int = 0) -> Request:
        """Nonblocking send."""
        # a small standard send completes inside Isend when it fits the ring with
        # nothing queued before it (osu_bw's windows): the bytes are copied, no
        # send op, no engine, no progress pass; Waitall finds it done.  The request
        # is made here: its op the shared _SENT, its key the request itself
        p = self._p
        if type(buf) is list:
            c = _last_isend
            if buf is c[0] and len(buf) == 3 and buf[0] is c[1] and buf == c[2] \
                    and buf[2] is c[4] and c[4]._t is c[5]:
                # the spec of the last Isend, unchanged (its datatype handle not
                # freed since): its first c[3] bytes, as spec_view made then
                if p is c[6] and dest is c[7] and type(tag) is int and 0 <= tag <= TAG_MAX:
                    # and its communicator and destination: its sender closure on the
                    # spec's bytes (c[8]: _spec_sender; False: closed or shrunk since,
                    # or not sent at once)
                    if c[8](tag, c[1]):
                        r = _new(Request)
                        r._op = _SENT
                        r._kind = K_SEND
                        r._cx = c[9]
                        return r
                    return self._sreq(self._isend(buf, dest, tag, False, "Isend"))
                try:
                    mv = c[1][:c[3]]
                except ValueError:
                    mv = None
                if mv is not None and len(mv) != c[3]:
                    mv = None
            else:
                mv = spec_view(buf, False, True)
                if (type(mv) is bytes or type(mv) is bytearray) and type(buf[0]) in _REMEMBERED:
                    _remember(True, buf, len(mv), p, dest, self._cx)
        else:
            mv = _flat(buf, False)
        if (mv is not None and type(dest) is int and 0 <= dest < p.npeers
                and type(tag) is int and 0 <= tag <= TAG_MAX):
            w = p.group[dest]
            if p.t.senders[w](p.ctx, tag, mv):
                r = _new(Request)
                r._op = _SENT
                r._kind = K_SEND
                r._cx = self._cx
                return r
            # a route of the transport's own for it (a large buffer to another node:
            # its request record and data message at once, no parse again)
            op = p.t.isend_buffer(w, p.ctx, tag, mv)
            if op is not None:
                return request(op, K_SEND, self._cx)
        return self._sreq(self._isend(buf, dest, tag, False, "Isend"))

    def Issend(self, buf: BufSpec, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode."""
        return self._sreq(self._isend(buf, dest, tag, True, "Issend"))

    def Irsend(self, buf: BufSpec, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in ready mode."""
        return self._sreq(self._isend(buf, dest, tag, False, "Irsend"))

    def Ibsend(self, buf: BufSpec, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in buffered mode (complete once the message is in the
        attached buffer: at once)."""
        self._ibsend(buf, dest, tag, "Ibsend")
        return self._sreq(None)

    def Isendrecv(self, sendbuf: BufSpec, dest: int, sendtag: int = 0,
                  recvbuf: BufSpec | None = None, source: int = ANY_SOURCE,
                  recvtag: int = ANY_TAG) -> Request:
        """Nonblocking send and receive."""
        r = self._irecv(recvbuf, source, recvtag, "Isendrecv")
        s = self._isend(sendbuf, dest, sendtag, False, "Isendrecv")
        return request(PairOp(r, s), K_PAIR, self._cx)

    def Isendrecv_replace(self, buf: BufSpec, dest: int, sendtag: int = 0,
                          source: int = ANY_SOURCE, recvtag: int = ANY_TAG) -> Request:
        """Send and receive a message, nonblocking, using a single buffer."""
        mv = message(buf, True, "Isendrecv_replace")
        self._dest(dest, "Isendrecv_replace")
        copy = bytes(mv)
        r = self._irecv(mv, source, recvtag, "Isendrecv_replace")
        s = self._isend(copy, dest, sendtag, False, "Isendrecv_replace")
        return request(PairOp(r, s), K_PAIR, self._cx)

    def Irecv(self, buf: BufSpec, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Request:
        """Nonblocking receive."""
        # a message from a given source already at the head of its ring: taken at
        # once, as Recv's fast path does (no receive op posted, no engine); else
        # posted straight into the engine (receives posted before it first take what
        # arrived: osu_bw's windows when the receiver runs ahead): irecvs[source]
        p = self._p
        hit = False
        if type(buf) is list:
            c = _last_irecv
            if buf is c[0] and len(buf) == 3 and buf[0] is c[1] and buf == c[2] \
                    and buf[2] is c[4] and c[4]._t is c[5]:
                # the spec of the last Irecv, unchanged (its datatype handle not
                # freed since)
                if p is c[6] and source is c[7] and type(tag) is int \
                        and -1 <= tag <= TAG_MAX:
                    # and its communicator and source: its irecvs closure on the first
                    # c[3] bytes (c[8]: _spec_irecver; None: shrunk or closed since,
                    # or the general path)
                    res = c[8](tag)
                    if res is not None:
                        r = _new(Request)
                        r._op = res
                        r._kind = K_RECV
                        r._cx = c[9]
                        return r
                    return request(self._irecv(buf, source, tag, "Irecv"), K_RECV, self._cx)
                hit = True
        if (type(source) is int and 0 <= source < p.npeers and type(tag) is int
                and -1 <= tag <= TAG_MAX):
            cap = -1
            if type(buf) is list:
                if hit and p.sliced:
                    # its first c[3] bytes, as spec_view said then (None: the buffer
                    # shrunk or closed since)
                    mv = c[1]
                    cap = c[3]
                    try:
                        if len(mv) < cap:
                            mv = None
                    except ValueError:
                        mv = None
                else:
                    mv = spec_view(buf, True, False, p.sliced)
                    if type(mv) is int:   # [bytearray or mmap, count, dt]: its first
                        cap = mv          # ``cap`` bytes, by slice assignment if taken
                        mv = buf[0]       # at once
                        _remember(False, buf, cap, p, source, self._cx)
            else:
                mv = _flat(buf, True)
            if mv is not None:
                res = p.t.irecvs[p.group[source]](tag, p.ctx, mv, cap)
                if res is not None:
                    r = _new(Request)   # its op the TakenOp, or the RecvOp posted
                    r._op = res
                    r._kind = K_RECV
                    r._cx = self._cx
                    return r
        return request(self._irecv(buf, source, tag, "Irecv"), K_RECV, self._cx)

    # -- persistent --
    def _persistent(self, start, kind):
        # validate now (errors at the call, as MPI does)
        return persistent(start, kind, self._cx)

    def Send_init(self, buf: BufSpec, dest: int, tag: int = 0) -> Prequest:
        """Create a persistent request for a standard send."""
        message(buf, False, "Send_init"), self._dest(dest, "Send_init"), self._stag(tag, "Send_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, False, "Send_init")
                                or _null_done_send(), K_SEND)

    def Ssend_init(self, buf: BufSpec, dest: int, tag: int = 0) -> Prequest:
        """Persistent request for a send in synchronous mode."""
        message(buf, False, "Ssend_init"), self._dest(dest, "Ssend_init"), self._stag(tag, "Ssend_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, True, "Ssend_init")
                                or _null_done_send(), K_SEND)

    def Bsend_init(self, buf: BufSpec, dest: int, tag: int = 0) -> Prequest:
        """Persistent request for a send in buffered mode."""
        message(buf, False, "Bsend_init"), self._dest(dest, "Bsend_init"), self._stag(tag, "Bsend_init")

        def start():
            self._ibsend(buf, dest, tag, "Bsend_init")
            return _null_done_send()
        return self._persistent(start, K_SEND)

    def Rsend_init(self, buf: BufSpec, dest: int, tag: int = 0) -> Prequest:
        """Persistent request for a send in ready mode."""
        message(buf, False, "Rsend_init"), self._dest(dest, "Rsend_init"), self._stag(tag, "Rsend_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, False, "Rsend_init")
                                or _null_done_send(), K_SEND)

    def Recv_init(self, buf: BufSpec, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> Prequest:
        """Create a persistent request for a receive."""
        recv_message(buf, "Recv_init"), self._source(source, "Recv_init"), self._rtag(tag, "Recv_init")
        return self._persistent(lambda: self._irecv(buf, source, tag, "Recv_init"), K_RECV)

    # -- probe --
    def _probe_match(self, source, tag, what):
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        return w, tag

    def Iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> bool:
        """Nonblocking test for a message."""
        w, tag = self._probe_match(source, tag, "Iprobe")
        if w == PROC_NULL:
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return True
        self._t.progress()
        m = self._t.engine.probe(w, tag, self._ctx)
        if m is None:
            return False
        fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return True

    def Probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status: Status | None = None) -> bool:
        """Blocking test for a message."""
        w, tag = self._probe_match(source, tag, "Probe")
        if w == PROC_NULL:
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return True
        self._wait_probe(self._t.engine.probe, w, tag, status)
        return True

    def _wait_probe(self, probe, w, tag, status):
        """Wait until ``probe(world source, tag, context)`` (the engine's probe or
        mprobe) finds a message; fill ``status`` from it and return it."""
        ctx = self._ctx
        found = []

        def pred():
            m = probe(w, tag, ctx)
            if m is not None:
                found.append(m)
                return True
            return False

        self._t.wait_until(pred, None if w == ANY_SOURCE else w)
        m = found[0]
        fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return m

    def iprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> bool:
        """Nonblocking test for a message."""
        return self.Iprobe(source, tag, status)

    # -- matched probes (``_request.Message``) --
    def Mprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> Message:
        """Blocking test for a matched message: the message is taken out of
        matching (only a receive on the returned Message can get it)."""
        w, tag = self._probe_match(source, tag, "Mprobe")
        if w == PROC_NULL:
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return message_handle(None, self._cx)
        return message_handle(self._wait_probe(self._t.engine.mprobe, w, tag, status),
                              self._cx)

    def Improbe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                status: Status | None = None) -> Message | None:
        """Nonblocking test for a matched message (None: no message yet)."""
        w, tag = self._probe_match(source, tag, "Improbe")
        if w == PROC_NULL:
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return message_handle(None, self._cx)
        self._t.progress()
        m = self._t.engine.mprobe(w, tag, self._ctx)
        if m is None:
            return None
        fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return message_handle(m, self._cx)

    def mprobe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
               status: Status | None = None) -> Message:
        """Blocking test for a matched message (receive it with ``recv``)."""
        return self.Mprobe(source, tag, status)

    def improbe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
                status: Status | None = None) -> Message | None:
        """Nonblocking test for a matched message."""
        return self.Improbe(source, tag, status)

    def probe(self, source: int = ANY_SOURCE, tag: int = ANY_TAG,
              status: Status | None = None) -> bool:
        """Blocking test for a message."""
        return self.Probe(source, tag, status)

    # -- objects --
    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send in standard mode."""
        if type(dest) is int and 0 <= dest < self._npeers and type(tag) is int and \
                0 <= tag <= TAG_MAX:
            # the common case, validated inline: a small object straight into the ring
            if (type(obj) is np.ndarray and _objects.user_pickler() is None
                    and obj.nbytes <= self._t.eager_limit - 1024
                    and obj.dtype.kind in ARRAY_KINDS and obj.flags.c_contiguous
                    and self._t.senders[self._group[dest]](self._ctx, tag, pack_array(obj),
                                                           T.F_OBJ | T.F_ARRAY)):
                return
            pickled = dumps(obj)
            if not pickled[1] and self._t.senders[self._group[dest]](self._ctx, tag,
                                                                    pickled[0], T.F_OBJ):
                return
            self._wait_send(self._osend(obj, dest, tag, False, "send", pickled, True))
            return
        self._wait_send(self._osend(obj, dest, tag, False, "send", keep=True))

    def ssend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send in synchronous mode."""
        self._wait_send(self._osend(obj, dest, tag, True, "ssend", keep=True))

    def bsend(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send an object in buffered mode (pickled into the attached buffer)."""
        self._obsend(obj, dest, tag, "bsend")

    def ibsend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send of an object in buffered mode."""
        self._obsend(obj, dest, tag, "ibsend")
        return self._sreq(None)

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send (of the object as it is at the call, as mpi4py's: the
        caller may change its arrays before the request completes)."""
        return self._sreq(self._osend(obj, dest, tag, False, "isend", snapshot=True))

    def issend(self, obj: Any, dest: int, tag: int = 0) -> Request:
        """Nonblocking send in synchronous mode (of the object as it is at the call)."""
        return self._sreq(self._osend(obj, dest, tag, True, "issend", snapshot=True))

    def recv(self, buf: Buffer | None = None, source: int = ANY_SOURCE, tag: int = ANY_TAG,
             status: Status | None = None) -> Any:
        """Receive."""
        if buf is not None:
            return self._recv_into(buf, source, tag, status)
        if (type(source) is int and -1 <= source < self._npeers and type(tag) is int
                and -1 <= tag <= TAG_MAX):
            res = self._t.recv_fast(self._group[source] if source >= 0 else source, tag,
                                    self._ctx, None)
            if res is not None:
                v = res[2]
                if type(v) is bytes:
                    if status is not None:
                        fill(status, self._rank_of(res[0]), res[1], 0, len(v))
                    return _objects.unpickle(v)
                if status is not None:  # a packed object: (stream, parts, nbytes)
                    fill(status, self._rank_of(res[0]), res[1], 0, v[2])
                return loads(v[:2])
        return self._wait_recv(self._orecv(source, tag, "recv"), status, obj=True)

    def _recv_into(self, buf, source, tag, status):
        """recv with mpi4py's deprecated ``buf`` (a size or a buffer): the object
        must fit in that many bytes (pickled), else ERR_TRUNCATE."""
        warnings.warn("the 'buf' argument is deprecated", UserWarning, stacklevel=3)
        if isinstance(buf, int) and not isinstance(buf, bool):
            size = buf
        else:
            try:
                size = memoryview(buf).nbytes
            except TypeError:
                raise MmpiError(f"recv: buf must be None, a size in bytes or a buffer, got "
                                f"{type(buf).__name__}") from None
        st = status if status is not None else Status()
        obj = self._wait_recv(self._orecv(source, tag, "recv"), st, obj=True)
        if st.count > size:
            raise MmpiError(f"recv: the message from rank {st.source} (tag {st.tag}) is "
                            f"{st.count} bytes pickled, more than the {size}-byte buf given; "
                            f"pass buf=None", error_class=ERR_TRUNCATE)
        return obj

    def irecv(self, buf: Buffer | None = None, source: int = ANY_SOURCE,
              tag: int = ANY_TAG) -> Request:
        """Nonblocking receive."""
        return request(self._orecv(source, tag, "irecv"), K_ORECV, self._cx)

    def sendrecv(self, sendobj: Any, dest: int, sendtag: int = 0, recvbuf: Buffer | None = None,
                 source: int = ANY_SOURCE, recvtag: int = ANY_TAG,
                 status: Status | None = None) -> Any:
        """Send and Receive."""
        r = self._orecv(source, recvtag, "sendrecv")
        try:
            self._wait_send(self._osend(sendobj, dest, sendtag, False, "sendrecv", keep=True))
        except BaseException:   # the receive is not left posted (as _wait_recv's)
            self._t.abandon(r)
            raise
        return self._wait_recv(r, status, obj=True)

    # -- communicators and groups (``_group``) --
    @property
    def name(self) -> str:
        """The communicator's name."""
        return self.Get_name()

    @name.setter
    def name(self, value: str) -> None:
        self.Set_name(value)

    def Set_name(self, name: str) -> None:
        """Set the communicator's name."""
        self._cx.name = str(name)

    def Get_group(self) -> Group:
        """The group of the communicator (a new handle onto it: equal each time)."""
        ext = self._h.ext if self._h is not None else None
        g = ext.get("group") if ext is not None else None
        if g is None:
            g = _group.get_group(self._cx)
            ext["group"] = g
        return _group.Group(g)

    @property
    def group(self) -> Group:
        """The group of the communicator."""
        return self.Get_group()

    def Compare(self, comm: Comm) -> int:
        """Compare two communicators: IDENT, CONGRUENT, SIMILAR or UNEQUAL."""
        if not isinstance(comm, Comm):
            raise TypeError(f"Compare: expected a communicator, got {type(comm).__name__}")
        return _group.compare(self._cx, comm._cx, comm)

    def _new(self, group, ctx):
        """A new communicator of this class on ``group`` (None: a null one)."""
        cls = type(self)
        if group is None:
            return cls.__new__(cls)
        return cls._of_context(Context(self._t, group, ctx), self)

    @classmethod
    def _of_context(cls, cx, parent=None):
        """A new communicator of this class on the Context ``cx`` (a subclass may
        pass its own kind of Context); it inherits ``parent``'s error handler."""
        h = _Handle(cx, cls)
        if parent is not None and "errh" in parent._h.ext:
            h.ext["errh"] = parent._h.ext["errh"]   # as MPI says for new communicators
        return cls._make(h)

    def _derive(self, new, info=None, what: str = "Dup"):
        """Give a duplicate ``new`` this communicator's attributes (copy callbacks)
        and info hints (``info``: replace them)."""
        h = new._h
        if info is None:
            h.info = dict(self._h.info)
        else:
            h.info = _info_items(info, what)
        try:
            self._h.attrs.copy_into(self, h.attrs, what)
        except BaseException:
            new.Free()
            raise
        return new

    def Dup(self, info: Info | None = None) -> Self:
        """Duplicate the communicator (with its attributes; ``info``: new hints)."""
        new = _group.dup(self._cx, self._new)
        return self._derive(new, info, "Dup")

    def Dup_with_info(self, info: Info) -> Self:
        """Duplicate the communicator with the hints of ``info``."""
        new = _group.dup(self._cx, self._new)
        return self._derive(new, _info_arg(info, "Dup_with_info"), "Dup_with_info")

    def Idup(self, info: Info | None = None) -> tuple[Self, Request]:
        """Nonblocking duplicate: (new communicator, request).  driller completes the
        duplication at the call (it is one small allgather), the request is done."""
        return self.Dup(info), _request_null()

    def Idup_with_info(self, info: Info) -> tuple[Self, Request]:
        """Nonblocking duplicate with the hints of ``info``: (communicator, request)."""
        return self.Dup_with_info(info), _request_null()

    def Clone(self) -> Self:
        """Clone an existing communicator (as Dup)."""
        return self.Dup()

    def Split(self, color: int = 0, key: int = 0) -> Comm:
        """Split the communicator by ``color``, ranks ordered by ``key``."""
        return _group.split(self._cx, color, key, self._new)

    def Split_type(self, split_type: int, key: int = 0, info: Info | None = None) -> Comm:
        """Split the communicator by type (COMM_TYPE_SHARED and the hardware-guided
        types; UNDEFINED gives COMM_NULL)."""
        return _group.split_type(self._cx, split_type, key, info, self._new)

    def Create(self, group: Group) -> Comm:
        """Create a communicator from a group (collective over this communicator)."""
        return _group.create(self._cx, group, self._new)

    def Create_group(self, group: Group, tag: int = 0) -> Intracomm:
        """Create a communicator from a group; collective over the group's members
        only (the others need not call); ``tag`` tells concurrent calls apart."""
        return _group.create_group(self._cx, group, tag, self._new)

    def Set_info(self, info: Info) -> None:
        """Set new values for the hints of the communicator."""
        self._cx
        self._h.info.update(_info_items(_info_arg(info, "Set_info"), "Set_info"))

    def Get_info(self) -> Info:
        """The hints of the communicator (a new Info)."""
        self._cx
        return _info.Info.Create(list(self._h.info.items()))

    @property
    def info(self) -> Info:
        """The communicator's hints."""
        return self.Get_info()

    @info.setter
    def info(self, info: Info) -> None:
        self.Set_info(info)

    @classmethod
    def Get_parent(cls) -> Intercomm:
        """The parent intercommunicator (null when this process was not spawned)."""
        if _state.parent is not None:
            return _state.parent
        inter = _find_class("Intercomm")
        if inter is None:
            raise MmpiNotImplementedError("Comm.Get_parent: intercommunicators are not "
                                          "available in this driller build")
        return inter()

    # -- attributes (``_attr.Cached``: Create_keyval, Set_attr, Get_attr...) --
    _attr_kind = "comm"

    def _attributes(self, what: str):
        self._cx
        return self._h.attrs

    # -- collectives (``_coll``) --
    def Barrier(self) -> None:
        """Barrier synchronization."""
        _hier.Barrier(self._cx)

    def barrier(self) -> None:
        """Barrier synchronization."""
        self.Barrier()

    def Abort(self, errorcode: int = 1) -> NoReturn:
        """Terminate this rank at once; the launcher then tells the others."""
        import sys
        sys.stderr.write(f"mmpi: rank {self.rank} called Abort({errorcode})\n")
        sys.stderr.flush()
        abort = getattr(self._t, "abort", None)
        if abort is not None:   # a hybrid world: the MPI launcher ends every node
            abort(errorcode if 0 < errorcode < 256 else 1)
        os._exit(errorcode if 0 < errorcode < 256 else 1)

    def Ibarrier(self) -> Request:
        """Nonblocking Barrier."""
        return _nonblocking.Ibarrier(self._cx)

    def Ibcast(self, buf: BufSpec, root: int = 0) -> Request:
        """Nonblocking Broadcast."""
        return _hier.guard(self._cx, "Ibcast", _nonblocking.Ibcast, buf, root)

    def Iallreduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> Request:
        """Nonblocking Reduce to All."""
        return _hier.guard(self._cx, "Iallreduce", _nonblocking.Iallreduce, sendbuf, recvbuf, op)

    def Bcast(self, buf: BufSpec, root: int = 0) -> None:
        """Broadcast data from one process to all other processes."""
        return _hier.Bcast(self._cx, buf, root)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Broadcast."""
        with _pylayers.comm_lock(self, "bcast"):    # as mpi4py (its _comm_lock_table)
            out = _hier.bcast(self._cx, obj, root)
        return _own_result(out, obj, root, "bcast")   # (the root's)

    def Reduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec | None, op: Op = SUM,
               root: int = 0) -> None:
        """Reduce to Root."""
        return _hier.Reduce(self._cx, sendbuf, recvbuf, op, root)

    def Allreduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> None:
        """Reduce to All."""
        return _hier.Allreduce(self._cx, sendbuf, recvbuf, op)

    def Reduce_scatter_block(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpec | BufSpecB,
                             op: Op = SUM) -> None:
        """Reduce-Scatter Block (regular, non-vector version)."""
        return _hier.guard(self._cx, "Reduce_scatter_block", _reduce.Reduce_scatter_block,
                           sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec,
                       recvcounts: Sequence[int] | None = None, op: Op = SUM) -> None:
        """Reduce-Scatter (vector version)."""
        return _hier.guard(self._cx, "Reduce_scatter", _reduce.Reduce_scatter,
                           sendbuf, recvbuf, recvcounts, op)

    def reduce(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM,
               root: int = 0) -> Any | None:
        """Reduce to Root."""
        return _own_result(_hier.reduce(self._cx, sendobj, op, root), sendobj, root,
                           "reduce")   # (over one rank)

    def allreduce(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM) -> Any:
        """Reduce to All."""
        return _own_result(_hier.allreduce(self._cx, sendobj, op), sendobj, self._cx.rank,
                           "allreduce")   # (over one rank)

    def Gather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB | None, root: int = 0) -> None:
        """Gather data to one process from all other processes."""
        return _hiergather.Gather(self._cx, sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV | None, root: int = 0) -> None:
        """Gather Vector."""
        return _hiergather.Gatherv(self._cx, sendbuf, recvbuf, root)

    def Scatter(self, sendbuf: BufSpecB | None, recvbuf: BufSpec | InPlace, root: int = 0) -> None:
        """Scatter data from one process to all other processes."""
        return _hiergather.Scatter(self._cx, sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf: BufSpecV | None, recvbuf: BufSpec | InPlace,
                 root: int = 0) -> None:
        """Scatter Vector."""
        return _hiergather.Scatterv(self._cx, sendbuf, recvbuf, root)

    def Allgather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB) -> None:
        """Gather to All."""
        return _hiergather.Allgather(self._cx, sendbuf, recvbuf)

    def Allgatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV) -> None:
        """Gather to All Vector."""
        return _hiergather.Allgatherv(self._cx, sendbuf, recvbuf)

    def gather(self, sendobj: Any, root: int = 0) -> list[Any] | None:
        """Gather."""
        return _own_item(_hiergather.gather(self._cx, sendobj, root), self._cx.rank, sendobj,
                         "gather")

    def scatter(self, sendobj: Sequence[Any] | None, root: int = 0) -> Any:
        """Scatter."""
        out = _hiergather.scatter(self._cx, sendobj, root)
        return _own(out, root, "scatter") if self._cx.rank == root else out   # the root's own

    def allgather(self, sendobj: Any) -> list[Any]:
        """Gather to All."""
        return _own_item(_hiergather.allgather(self._cx, sendobj), self._cx.rank, sendobj,
                         "allgather")

    def Alltoall(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpecB) -> None:
        """All to All Scatter/Gather."""
        return _hiergather.Alltoall(self._cx, sendbuf, recvbuf)

    def Alltoallv(self, sendbuf: BufSpecV | InPlace, recvbuf: BufSpecV) -> None:
        """All to All Scatter/Gather Vector."""
        return _hiergather.Alltoallv(self._cx, sendbuf, recvbuf)

    def alltoall(self, sendobj: Sequence[Any]) -> list[Any]:
        """All to All Scatter/Gather."""
        out = _hiergather.alltoall(self._cx, sendobj)
        if out is not None:   # item ``me`` is always this rank's own (never compared by
            me = self._cx.rank   # identity: an array's item is a new view at each look)
            out[me] = _own(out[me], me, "alltoall")
        return out

    # nonblocking and w forms (``_coll._vcoll``)
    def Igather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB | None,
                root: int = 0) -> Request:
        """Nonblocking Gather."""
        return _vcoll.Igather(self._cx, sendbuf, recvbuf, root)

    def Igatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV | None,
                 root: int = 0) -> Request:
        """Nonblocking Gatherv."""
        return _vcoll.Igatherv(self._cx, sendbuf, recvbuf, root)

    def Iscatter(self, sendbuf: BufSpecB | None, recvbuf: BufSpec | InPlace,
                 root: int = 0) -> Request:
        """Nonblocking Scatter."""
        return _vcoll.Iscatter(self._cx, sendbuf, recvbuf, root)

    def Iscatterv(self, sendbuf: BufSpecV | None, recvbuf: BufSpec | InPlace,
                  root: int = 0) -> Request:
        """Nonblocking Scatterv."""
        return _vcoll.Iscatterv(self._cx, sendbuf, recvbuf, root)

    def Iallgather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB) -> Request:
        """Nonblocking Allgather."""
        return _vcoll.Iallgather(self._cx, sendbuf, recvbuf)

    def Iallgatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV) -> Request:
        """Nonblocking Allgatherv."""
        return _vcoll.Iallgatherv(self._cx, sendbuf, recvbuf)

    def Ialltoall(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpecB) -> Request:
        """Nonblocking Alltoall."""
        return _vcoll.Ialltoall(self._cx, sendbuf, recvbuf)

    def Ialltoallv(self, sendbuf: BufSpecV | InPlace, recvbuf: BufSpecV) -> Request:
        """Nonblocking Alltoallv."""
        return _vcoll.Ialltoallv(self._cx, sendbuf, recvbuf)

    def Alltoallw(self, sendbuf: BufSpecW | InPlace, recvbuf: BufSpecW) -> None:
        """All-to-all with a count, a byte displacement and a datatype per rank."""
        return _vcoll.Alltoallw(self._cx, sendbuf, recvbuf)

    def Ialltoallw(self, sendbuf: BufSpecW | InPlace, recvbuf: BufSpecW) -> Request:
        """Nonblocking Alltoallw."""
        return _vcoll.Ialltoallw(self._cx, sendbuf, recvbuf)

    def Ireduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec | None, op: Op = SUM,
                root: int = 0) -> Request:
        """Nonblocking Reduce."""
        return _hier.guard(self._cx, "Ireduce", _vcoll.Ireduce, sendbuf, recvbuf, op, root)

    def Ireduce_scatter_block(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpec | BufSpecB,
                              op: Op = SUM) -> Request:
        """Nonblocking Reduce_scatter_block."""
        return _hier.guard(self._cx, "Ireduce_scatter_block", _vcoll.Ireduce_scatter_block,
                           sendbuf, recvbuf, op)

    def Ireduce_scatter(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec,
                        recvcounts: Sequence[int] | None = None, op: Op = SUM) -> Request:
        """Nonblocking Reduce_scatter."""
        return _hier.guard(self._cx, "Ireduce_scatter", _vcoll.Ireduce_scatter,
                           sendbuf, recvbuf, recvcounts, op)

    def Free(self) -> None:
        """Free the communicator: its attributes are deleted (delete callbacks run),
        its state dropped, and this handle becomes COMM_NULL; any later use of it
        raises MPI.Exception(ERR_COMM)."""
        h = self._h
        if h is None:
            raise _comm_error("Comm.Free")
        if h.predefined:
            raise MmpiError(f"Comm.Free: {h.cx.name} is predefined and cannot be freed",
                            error_class=ERR_COMM)
        h.freed = True
        try:
            h.attrs.clear(self, "Comm.Free")
        finally:
            _hier.release(h.cx)
            _handles.live.pop(h.number, None)
            h.info = {}
            self._unbind()

    def Disconnect(self) -> None:
        """Disconnect from a communicator: this handle becomes COMM_NULL.  MPI makes
        it collective and waits for pending communication; driller's is a local
        ``Free`` (complete your requests first; each peer disconnects its own handle)."""
        if self._h is None:
            raise _comm_error("Comm.Disconnect")
        self.Free()

    def free(self) -> None:
        """Free the communicator, safely: nothing for a null or predefined one (a
        handle copy of COMM_WORLD/COMM_SELF just becomes null)."""
        h = self._h
        if h is None or self is _state.comm_world or self is _state.comm_self:
            return
        if h.predefined:
            self._unbind()
            return
        self.Free()

    # -- topologies (``_topo``: Topocomm and its subclasses answer otherwise) --
    @property
    def is_topo(self) -> bool:
        """Is a topology."""
        return self.Get_topology() != UNDEFINED

    # -- error handlers (``_errhandler``) --
    @classmethod
    def Create_errhandler(cls, errhandler_fn: Callable[[Comm, int], None]) -> Errhandler:
        """Create a new error handler for communicators (``fn(comm, errorcode)``)."""
        return _errhandler.create(errhandler_fn)

    def Get_errhandler(self) -> Errhandler:
        """A new handle onto this communicator's error handler (ERRORS_RETURN by
        default: errors raise MPI.Exception)."""
        self._t.rank
        return _errhandler.Errhandler(self._h.ext.get("errh", _errhandler.ERRORS_RETURN))

    def Set_errhandler(self, errhandler: Errhandler) -> None:
        """Set the error handler of the communicator."""
        self._t.rank
        self._h.ext["errh"] = _errhandler.Errhandler(
            _errhandler.check(errhandler, "Comm.Set_errhandler"))
        _errhandler.apply(self, self.Get_errhandler())

    def Call_errhandler(self, errorcode: int) -> None:
        """Invoke this communicator's error handler on ``errorcode``."""
        self._t.rank
        _errhandler.call(self._h.ext.get("errh", _errhandler.ERRORS_RETURN), self,
                         errorcode, self.Abort)


class _Unbound:
    """A field only a bound communicator has (``_BOUND``, in the instance's dict): read
    on a null or freed one, ERR_COMM.  A class attribute, not ``__getattr__``: CPython
    does not specialise attribute and method look-ups on instances of a class that
    has ``__getattr__`` (≈ 0.2 µs per Send+Recv pair, docs/mmpi.md)."""
    __slots__ = ()

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        raise _comm_error(type(obj).__name__)


class _NotProvided:
    """An mpi4py communicator method driller.mmpi does not provide: reading it raises
    MmpiNotImplementedError (an AttributeError: ``hasattr`` answers False)."""
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, cls=None):
        raise MmpiNotImplementedError(
            f"Comm.{self.name} is not implemented by driller.mmpi yet (point-to-point, "
            f"collectives, communicator construction and groups are); use mpi4py for it "
            f"meanwhile")


class _LazyP2P(_Unbound):
    """``comm._p``: the point-to-point fields in one slotted record, made on first use
    (after any subclass's ``_bind``) and kept in the instance's dict; ERR_COMM on a
    null or freed communicator."""
    __slots__ = ()

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        d = obj.__dict__
        if "_cx" not in d:
            raise _comm_error(type(obj).__name__)
        p = d["_p"] = _P2P(d["_t"], d["_group"], d["_npeers"], d["_ctx"], d["_rank_of"])
        return p


for _k in _BOUND:
    setattr(Comm, _k, _LazyP2P() if _k == "_p" else _Unbound())
# mpi4py 4.1's communicator methods that driller.mmpi lacks (persistent collectives,
# partitioned point-to-point, fault tolerance, Join, Accept/Connect, Spawn_multiple;
# tests/test_comm_api.py keeps this list equal to what is missing)
NOT_PROVIDED = (
    "Ack_failed", "Agree", "Allgather_init", "Allgatherv_init", "Allreduce_init",
    "Alltoall_init", "Alltoallv_init", "Alltoallw_init", "Barrier_init", "Bcast_init",
    "Gather_init", "Gatherv_init", "Get_failed", "Iagree", "Is_revoked", "Ishrink", "Join",
    "Precv_init", "Psend_init", "Reduce_init", "Reduce_scatter_block_init",
    "Reduce_scatter_init", "Revoke", "Scatter_init", "Scatterv_init", "Shrink",
    "Accept", "Connect", "Exscan_init", "Scan_init", "Spawn_multiple",
    "Neighbor_allgather_init", "Neighbor_allgatherv_init", "Neighbor_alltoall_init",
    "Neighbor_alltoallv_init", "Neighbor_alltoallw_init")
for _k in NOT_PROVIDED:
    if _k not in Comm.__dict__:
        setattr(Comm, _k, _NotProvided(_k))
del _k


# Methods implemented by modules above this one (they import it): each registers its
# builder here when imported ("create_intercomm": ``_inter``, which ``driller.MPI``
# and ``driller.mmpi`` import along with this module).
_extensions: dict = {}


def register_extension(name: str, fn) -> None:
    """Register ``fn`` as the implementation of extension ``name`` (see above)."""
    _extensions[name] = fn


def _extension(name: str):
    fn = _extensions.get(name)
    if fn is None:
        raise MmpiNotImplementedError(f"{name} is implemented in a module not imported yet: "
                                      f"import driller.MPI (or driller.mmpi.Intercomm) first")
    return fn


# Send's one-entry cache of the last small ``[mmap, count, dt]`` spec (osu_latency's
# ``[mmap, n, BYTE]``) that spec_view copied: (count, dt, dt's type object, nbytes,
# a weak reference to the mmap: nothing is kept alive, no fd held).  A spec holding
# the same objects (``dt`` still the same type) copies ``mmap[:nbytes]`` at once; a
# shrunk or closed mmap falls back to the parser.  Another spec pays a type check
# (docs/mmpi.md, "Hot paths, fourth round").  Then the communicator's _P2P record,
# the rank sent to and the transport's fused sender for that rank and these bytes
# (_spec_sender, given the mmap per call), the tag then and a countdown of sends to
# other ranks (_send_peer_missed) and the communicator object itself, or _NO_PEER:
# the same spec sent again to the same rank of the same communicator object goes
# straight to the fused sender, with no rank check, table or slice on the way
# (docs/mmpi.md, "ninth round"), nor its ``self._p`` (a generic attribute load:
# "eleventh round").  Dropped by _forget_peers (fork, Finalize), when a communicator
# is unbound (Free) and when the cached object is bound again (_bind: its record
# changes), so that the object's identity stands for its record.
_MMAP = mmap.mmap
_NONE = object()   # matches no rank or tag a caller passes (None is a bad one)
_NO_PEER = (None, _NONE, None, _NONE, None, None)
_SEND_PEER_SWITCH = 64   # sends of the cached spec to another rank before it is taken
_LAST_SEND: tuple = (object(), None, None, -1, lambda: None) + _NO_PEER   # (matches no spec)


def _remember_send(spec, nbytes: int) -> None:
    global _LAST_SEND
    if not isinstance(spec[2], Datatype):   # (a typecode string: parsed each time)
        return
    _LAST_SEND = (spec[1], spec[2], spec[2]._t, nbytes, weakref.ref(spec[0])) + _NO_PEER


def _send_peer_missed(c: tuple, comm: Comm, p: _P2P, dest, tag) -> None:
    """Send's cached spec ``c`` (``_LAST_SEND``) went to another rank or communicator
    than the one it holds: take this one (``dest`` of ``comm``, whose record is ``p``: an int,
    or a float as Send takes one, the same object being the same rank) if it holds
    none, else after _SEND_PEER_SWITCH such sends (a spec sent to ranks in turn
    builds no closure per call), with its fused sender and ``tag`` (if a valid
    int: the same object again needs no check).  Only once Send's table holds
    that rank's closure (filled by a send that went through the table: nothing
    here asks the transport, whose errors come after the rank and tag checks)."""
    global _LAST_SEND
    if c[5] is not None:
        left = c[9]
        left[0] -= 1
        if left[0] > 0:
            return
    r = int(dest) if type(dest) is float and dest - dest == 0.0 else dest
    if type(r) is int and 0 <= r < p.npeers and (f := p.sends[r]) is not None:
        ok = type(tag) is int and 0 <= tag <= TAG_MAX
        _LAST_SEND = c[:5] + (p, dest, _spec_sender(f, c[3], p.ctx), tag if ok else _NONE,
                              [_SEND_PEER_SWITCH], comm)


def _forget_send_peer() -> None:
    """Drop the communicator and rank of Send's cached spec (Free, fork, Finalize)."""
    global _LAST_SEND
    _LAST_SEND = _LAST_SEND[:5] + _NO_PEER


def _int_like(x) -> bool:
    """A rank or tag given as another number: an int subclass (not a bool), or
    what converts with int() as mpi4py's C int arguments do (a float, numpy
    scalars: osu_multi_lat passes ``nprocs / 2``)."""
    if type(x) is float:   # (the usual other number: int() refuses only nan and inf)
        return x - x == 0.0
    if isinstance(x, int):
        return not isinstance(x, bool)
    if isinstance(x, (str, bytes, bytearray)) or not hasattr(type(x), "__int__"):
        return False
    try:
        int(x)
    except (TypeError, ValueError, OverflowError):   # nan, inf
        return False
    return True


def _sliced_view(obj, cap: int):
    """A writable byte view of the first ``cap`` bytes of a ``bytearray`` or an
    ``mmap`` (Recv's waiting path; ``cap`` within it already), or None for a
    read-only or closed ``mmap`` (the general parser then says what is wrong)."""
    try:
        mv = memoryview(obj)
    except ValueError:
        return None
    return None if mv.readonly else mv[:cap]


def _flat(buf, writable: bool):
    """The flat bytes of a bare byte buffer or of a plain spec (spec_view), for
    the nonblocking fast paths; None: parse it the general way."""
    if type(buf) is list:
        return spec_view(buf, writable)
    try:
        mv = memoryview(buf)
    except (TypeError, ValueError):
        return None
    if mv.c_contiguous and not (writable and mv.readonly):
        if mv.format == "B" and mv.ndim == 1:
            return mv
        if mv.format in _FLAT_FORMATS and mv.nbytes:   # a C-contiguous numpy array:
            return mv.cast("B")                        # its bytes (as Send); an empty
    return None                                        # one of ndim > 1: parsed in full


_new = object.__new__
# Isend's last spec of a bytearray or mmap copied (osu_bw passes one spec list 64
# times a window): (the list, its buffer, a copy of the list, nbytes); Irecv's last
# spec of a bytearray or mmap received into by slice assignment: (..., its cap).
# Both end with the datatype handle and its type then (a handle freed since is
# refused by the parser).  Tuples, replaced whole (a thread reads one consistent
# snapshot).  Send's cache of an ``[mmap, count, dt]`` spec is _LAST_SEND, above.
# Then the communicator's _P2P record, the peer (a valid rank of it), the
# transport's closure for that peer (senders[w] / irecvs[w]) and the
# communicator's context (``_cx``, which a rebinding replaces along with ``_p``),
# so that the same spec, communicator and peer again go straight to it.
_NO_SPEC = (None, None, None, 0, None, None, None, None, None, None)
_last_isend: tuple = _NO_SPEC
_last_irecv: tuple = _NO_SPEC
_REMEMBERED = frozenset((bytearray, mmap.mmap))


def _remember(send: bool, spec: list, n: int, p: _P2P, peer: int, cx) -> None:
    """Isend's (``send``) or Irecv's last spec (a 3-item list), ``n`` its bytes,
    sent to or received from ``peer`` (a rank of ``p``'s communicator, or not:
    then no closure is remembered)."""
    global _last_isend, _last_irecv
    dt = spec[2]
    if not isinstance(dt, Datatype):   # (a spec_view form without a handle)
        return
    if type(peer) is not int or not 0 <= peer < p.npeers:
        p = peer = fn = None
    elif send:
        fn = _spec_sender(p.t.senders[p.group[peer]], n, p.ctx)
    else:
        fn = _spec_irecver(p.t.irecvs[p.group[peer]], spec[0], n, p.ctx)
    if send:
        _last_isend = (spec, spec[0], spec[:], n, dt, dt._t, p, peer, fn, cx)
    else:
        _last_irecv = (spec, spec[0], spec[:], n, dt, dt._t, p, peer, fn, cx)


def _spec_sender(send, n: int, ctx: int):
    """Isend's and Send's closure for a remembered spec: ``(tag, obj) -> bool``,
    the per-peer sender ``send`` on the first ``n`` bytes of ``obj`` (a
    ``bytearray`` or ``mmap``) in context ``ctx``; False: closed or shrunk
    since, or not sent at once (the general path then decides).  The
    transport's fused form where it has one (up to the eager limit, docs/mmpi.md
    "seventh round", "tenth round").  It holds no buffer (Send's cache keeps the mmap weakly)."""
    fused = getattr(send, "spec", None)
    fn = fused(n, ctx) if fused is not None else None
    if fn is not None:
        return fn

    def fn(tag, obj):
        try:
            mv = obj[:n]
        except ValueError:
            return False
        return len(mv) == n and send(ctx, tag, mv)
    return fn


def _spec_irecver(irecv, obj, cap: int, ctx: int):
    """Irecv's closure for a remembered spec: ``(tag)`` -> as the per-peer
    ``irecv`` on the first ``cap`` bytes of ``obj`` in context ``ctx``; None:
    closed or shrunk below ``cap`` since, or the general path.  The
    transport's fused form where it has one."""
    fused = getattr(irecv, "spec", None)
    if fused is not None:
        return fused(obj, cap, ctx)

    def fn(tag):
        try:
            if len(obj) < cap:
                return None
        except ValueError:
            return None
        return irecv(tag, ctx, obj, cap)
    return fn


def _null_done_send():
    op = T.SendOp(PROC_NULL, 0, 0, EMPTY)
    op.done = True
    return op


class _FlushOp:
    """The op of Iflush_buffer: done once every message in the buffer is."""

    __slots__ = ("ops",)
    source = ANY_SOURCE
    exc = None
    cancelled = False

    def __init__(self, b):
        self.ops = [] if b is None else b.pending()

    @property
    def done(self) -> bool:
        return all(o.done for o in self.ops)


# ------------------------------------------------------------------ buffered sends (process)

def Attach_buffer(buf: Buffer | None) -> None:
    """Attach a user-provided buffer for sending in buffered mode (or
    ``BUFFER_AUTOMATIC``)."""
    _bsend.attach(None, buf, "Attach_buffer")


def Detach_buffer() -> Buffer | None:
    """Remove an existing attached buffer (once every message in it is
    delivered); the buffer that was attached."""
    b = _bsend.process_buffer()
    if b is not None and b.pending():
        t = world_comm()._t
        return _bsend.detach(None, lambda op: t.wait(op, op.dest), "Detach_buffer")
    return _bsend.detach(None, None, "Detach_buffer")


def Flush_buffer() -> None:
    """Block until all buffered messages have been transmitted."""
    b = _bsend.process_buffer()
    if b is not None and b.pending():
        t = world_comm()._t
        for op in b.pending():
            t.wait(op, op.dest)


def Iflush_buffer() -> Request:
    """Nonblocking flush for buffered messages."""
    return request(_FlushOp(_bsend.process_buffer()), K_SEND, world_comm()._cx)


class Intracomm(Comm):
    """An intracommunicator: one group of ranks (COMM_WORLD, COMM_SELF and what
    Dup/Split/Create make of them).  Prefix reductions live here, as in mpi4py;
    topologies and intercommunicators are built from intracommunicators."""

    def __new__(cls, comm: Comm | None = None, *internal: Any, **kw: Any) -> Self:
        if not internal and isinstance(comm, Comm) and comm._h is not None \
                and comm.Is_inter():
            raise TypeError(f"{cls.__name__}(comm): {comm!r} is an intercommunicator "
                            f"(Merge it into an intracommunicator)")
        return super().__new__(cls, comm, *internal, **kw)

    def Scan(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> None:
        """Inclusive Scan."""
        return _hier.guard(self._cx, "Scan", _reduce.Scan, sendbuf, recvbuf, op)

    def Exscan(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> None:
        """Exclusive Scan."""
        return _hier.guard(self._cx, "Exscan", _reduce.Exscan, sendbuf, recvbuf, op)

    def Iscan(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> Request:
        """Nonblocking Scan."""
        return _hier.guard(self._cx, "Iscan", _vcoll.Iscan, sendbuf, recvbuf, op)

    def Iexscan(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> Request:
        """Nonblocking Exscan."""
        return _hier.guard(self._cx, "Iexscan", _vcoll.Iexscan, sendbuf, recvbuf, op)

    def scan(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM) -> Any:
        """Inclusive Scan."""
        return _own_result(_hier.guard(self._cx, "scan", _reduce.scan, sendobj, op), sendobj,
                           self._cx.rank, "scan")   # (rank 0's)

    def exscan(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM) -> Any:
        """Exclusive Scan."""
        return _hier.guard(self._cx, "exscan", _reduce.exscan, sendobj, op)

    # -- topologies: the classes live in ``_topo`` (above this module, which never
    # imports it); each registers itself here as it is defined (``kind=``), and these
    # constructors delegate in one line to the registered class.
    _topologies: dict = {}

    def __init_subclass__(cls, kind: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if kind is not None:
            Intracomm._topologies[kind] = cls

    def _topology(self, kind: str):
        cls = Intracomm._topologies.get(kind)
        if cls is None:
            raise MmpiNotImplementedError(
                "topologies are not loaded: import driller.mmpi._topo (driller.MPI does)")
        return cls

    def Create_cart(self, dims: Sequence[int], periods: Sequence[bool] | None = None,
                    reorder: bool = False) -> Cartcomm:
        """Create cartesian communicator."""
        return self._topology("cart").create(self, dims, periods, reorder)

    def Create_graph(self, index: Sequence[int], edges: Sequence[int],
                     reorder: bool = False) -> Graphcomm:
        """Create graph communicator."""
        return self._topology("graph").create(self, index, edges, reorder)

    def Create_dist_graph_adjacent(self, sources: Sequence[int], destinations: Sequence[int],
                                   sourceweights: Sequence[int] | None = None,
                                   destweights: Sequence[int] | None = None,
                                   info: Info | None = None,
                                   reorder: bool = False) -> Distgraphcomm:
        """Create distributed graph communicator."""
        return self._topology("dist_graph").create_adjacent(
            self, sources, destinations, sourceweights, destweights, reorder)

    def Create_dist_graph(self, sources: Sequence[int], degrees: Sequence[int],
                          destinations: Sequence[int], weights: Sequence[int] | None = None,
                          info: Info | None = None, reorder: bool = False) -> Distgraphcomm:
        """Create distributed graph communicator."""
        return self._topology("dist_graph").create(self, sources, degrees, destinations,
                                                   weights, reorder)

    def Cart_map(self, dims: Sequence[int], periods: Sequence[bool] | None = None) -> int:
        """Determine optimal process placement on a Cartesian topology."""
        return self._topology("cart").map(self, dims, periods)

    def Graph_map(self, index: Sequence[int], edges: Sequence[int]) -> int:
        """Determine optimal process placement on a graph topology."""
        return self._topology("graph").map(self, index, edges)

    def Spawn(self, command: str | bytes | os.PathLike[str], args: Sequence[str] | None = None,
              maxprocs: int = 1, info: Info | None = None, root: int = 0,
              errcodes: list[int] | None = None) -> Intercomm:
        """Spawn instances of a program: not supported (``_pylayers.spawn`` says what
        to run instead)."""
        return _pylayers.spawn(command, args, maxprocs, info, root, errcodes)

    @classmethod
    def Create_from_group(cls, group: Group, stringtag: str = "org.mpi4py",
                          info: Info | None = None,
                          errhandler: Errhandler | None = None) -> Intracomm:
        """Create a communicator from a group, without a parent communicator:
        collective over the group's members (``stringtag`` tells concurrent calls
        apart)."""
        if not isinstance(stringtag, str):
            raise TypeError(f"Create_from_group: stringtag must be a str, got {stringtag!r}")
        if info is not None:
            _info_arg(info, "Create_from_group")
        t = world_comm()._t
        cls_ = cls

        def new(grp, ctx):
            if grp is None:
                return cls_.__new__(cls_)
            return cls_._make(_Handle(Context(t, grp, ctx), cls_))
        comm = _group.create_from_group(t, group, stringtag, new)
        if comm and info is not None:
            comm._h.info = _info_items(info, "Create_from_group")
        if comm and errhandler is not None:
            comm.Set_errhandler(errhandler)
        return comm

    def Create_intercomm(self, local_leader: int, peer_comm: Intracomm, remote_leader: int,
                         tag: int = 0) -> Intercomm:
        """Create an intercommunicator between this group and the group of the
        remote leader (``remote_leader``: its rank in ``peer_comm``)."""
        return _extension("create_intercomm")(self, local_leader, peer_comm, remote_leader, tag)


COMM_NULL = Comm()   # the null communicator (``Comm()`` and ``Intracomm()`` equal it)


def _find_class(name: str):
    """A subclass of Comm called ``name`` defined by driller (None if none is loaded)."""
    todo = list(Comm.__subclasses__())
    while todo:
        c = todo.pop()
        if c.__name__ == name and c.__module__.startswith("driller."):
            return c
        todo.extend(c.__subclasses__())
    return None


def set_parent(comm) -> None:
    """Record this process's parent intercommunicator (what Comm.Get_parent returns);
    for the spawn implementation."""
    _state.parent = comm


def _request_null():
    return Request()


def _info_arg(info, what: str):
    """``info`` as an Info (None and INFO_NULL: no hints)."""
    if info is None:
        return None
    if not isinstance(info, _info.Info):
        raise TypeError(f"{what}: expected an Info, got {type(info).__name__}")
    return info if info else None


def _info_items(info, what: str) -> dict:
    info = _info_arg(info, what)
    return {} if info is None else {k: info.Get(k) for k in info.keys()}


Comm._attr_predefined = frozenset((TAG_UB, IO, WTIME_IS_GLOBAL, APPNUM, LASTUSEDCODE,
                                   UNIVERSE_SIZE))


def _predefined_attr(comm, keyval: int):
    """COMM_WORLD's predefined attributes (every communicator answers them)."""
    if keyval == TAG_UB:
        return TAG_MAX
    if keyval == IO:
        return ANY_SOURCE          # every rank can do I/O
    if keyval == WTIME_IS_GLOBAL:
        return 1                   # Wtime is CLOCK_MONOTONIC: one clock for all ranks
    if keyval == APPNUM:
        return 0                   # one application (driller run starts one program)
    if keyval == UNIVERSE_SIZE:
        return comm._t.size
    last = getattr(_errcodes, "last_used_code", None)   # LASTUSEDCODE
    return last() if last is not None else _errcodes.ERR_LASTCODE


Comm._attr_value = _predefined_attr


# ------------------------------------------------------------------ world state

class _State:
    pid = None
    transport = None
    world = None
    comm_world = None
    comm_self = None
    finalized = False
    rank = None          # this process's world rank once joined
    launched = False     # joined a world of ranks (launcher, spawn), not a singleton
    launch = None        # (rank, size, world fd) taken from the launcher's environment
    launch_pid = None    # the process that took it
    launch_error = None  # an MmpiError: the launcher's environment was unusable
    forked_from = None   # this process is a fork of that rank (it cannot communicate)
    parent = None        # the parent intercommunicator of a spawned process (set_parent)
    exit_hook = False    # _finish_at_exit is registered
    raised = False       # the program ended by an uncaught exception (_note_uncaught)
    ended = False        # _end_hybrid ran


_state = _State()


def _adopt_launch_env() -> None:
    """At import in a rank: take the launcher's variables out of ``os.environ`` and
    make the world fd non-inheritable, keeping both in memory, so that no child
    (subprocess, exec) ever takes itself for a rank.  COMM_WORLD joins later."""
    env = os.environ
    if W.ENV_WORLD_FD not in env:
        return
    raw = {k: env.pop(k, None) for k in (W.ENV_RANK, W.ENV_SIZE, W.ENV_WORLD_FD)}
    try:
        rank, size, fd = (int(raw[k]) for k in (W.ENV_RANK, W.ENV_SIZE, W.ENV_WORLD_FD))
        os.set_inheritable(fd, False)
    except (TypeError, ValueError, OSError) as e:
        _state.launch_error = MmpiError(
            f"bad mmpi environment {raw}: {e} (start ranks with `driller run -n N`)")
        return
    _state.launch = (rank, size, fd)
    _state.launch_pid = os.getpid()


def launched_rank() -> int | None:
    """The world rank the launcher gave this process (None: not launched)."""
    if _state.rank is not None and _state.launched:
        return _state.rank
    return _state.launch[0] if _state.launch is not None else None


def _fork_error(rank: int) -> MmpiError:
    return MmpiError(f"this process is a fork of rank {rank}; only the rank itself can "
                     f"communicate (a forked child shares the rank's world block: its "
                     f"messages would corrupt the rank's own)")


def _forget_peers() -> None:
    """Drop Isend's and Irecv's remembered closures and Send's and Recv's tables of
    them: they write the rings without asking the transport, which a fork or
    Finalize makes unusable (``make_unusable`` calls this)."""
    global _last_isend, _last_irecv
    _last_isend = _last_irecv = _NO_SPEC
    _forget_send_peer()
    for p in list(_P2PS):   # Send's and Recv's tables: looked up through the transport again
        p.sends = [None] * p.npeers
        p.recvs = [None] * p.npeers
        p.asends = [None] * p.npeers


T.UNUSABLE_HOOKS.append(_forget_peers)


def _after_fork_in_child() -> None:
    _forget_peers()
    t = _state.transport
    if t is not None and issubclass(type(t), T.Transport):
        rank = _state.rank
        T.make_unusable(t, str(_fork_error(rank)))
        if _state.launched:
            _state.forked_from = rank
        else:  # a singleton's child: a new singleton on its next use of COMM_WORLD
            _state.transport = _state.world = _state.comm_world = _state.comm_self = None
            _state.pid = _state.rank = None
    elif _state.launched or _state.launch is not None:
        _state.forked_from = _state.rank if _state.launched else _state.launch[0]


os.register_at_fork(after_in_child=_after_fork_in_child)


def init_world(rank: int, size: int, fd: int, *, close_fd: bool = False) -> Comm:
    """Join the world block in ``fd`` as ``rank`` of ``size``; returns COMM_WORLD.

    The spawn helper calls this in forked ranks; COMM_WORLD's lazy init calls it
    from the environment.  The fd stays open unless ``close_fd``.
    """
    world = W.World(fd)
    if close_fd:
        os.close(fd)
    if world.size != size:
        raise MmpiError(f"world block holds {world.size} ranks, but size {size} was given")
    if not 0 <= rank < size:
        raise MmpiError(f"rank {rank} out of range for a world of size {size}")
    _adopt(T.Transport(world, rank), rank, size)
    return _state.comm_world


def _adopt(t: T.Transport, rank: int, size: int) -> None:
    """This process is rank ``rank`` of a world of ``size`` reached through ``t``."""
    _state.rank = rank
    _state.launched = True
    _state.forked_from = None
    _state.pid = os.getpid()
    _state.world = t.world
    _state.transport = t
    _state.comm_world = Intracomm._make(_Handle(
        Context(t, list(range(size)), _CTX_WORLD, "MPI_COMM_WORLD"), Intracomm, 0, True))
    _state.comm_self = Intracomm._make(_Handle(
        Context(t, [rank], _CTX_SELF, "MPI_COMM_SELF"), Intracomm, 1, True))
    _state.finalized = False
    _state.ended = False
    _threads.watch()
    if not _state.exit_hook:
        _state.exit_hook = True
        atexit.register(_finish_at_exit)
        sys.excepthook = _note_uncaught(sys.excepthook)


def _finish_at_exit() -> None:
    """At interpreter exit of a rank that did not call Finalize (``driller run``
    programs mostly): hand the peers what they still need from us, as Finalize does."""
    t = _state.transport
    if t is not None and _state.pid == os.getpid() and issubclass(type(t), T.Transport):
        _end_hybrid(t)
        try:   # a program that failed does not keep its memory for the copies owed
            t.finish(owed=t.all_local and not _state.raised)
        except DrillerError:  # a peer's death: nothing more to hand over
            pass
        if not t.all_local:
            t.free_pool()   # before mpi4py's MPI_Finalize (its atexit runs after ours)


def _note_uncaught(previous):
    """sys.excepthook that notes an uncaught exception first: the program failed,
    its exit does not wait for the rendezvous copies it owes (Transport.finish).
    (Not ``sys.last_value``: pytest and notebooks set it on exceptions they catch.)"""
    def hook(tp, value, tb):
        _state.raised = True
        previous(tp, value, tb)
    return hook


def _end_hybrid(t: T.Transport) -> None:
    """A rank of a world spanning nodes ends (Finalize or exit): once, _hier.end."""
    if t.all_local or _state.ended or _state.comm_world is None:
        return
    _state.ended = True
    try:
        _hier.end(_state.comm_world._cx)
    except DrillerError:  # a peer's death: the launcher ends the job
        pass


def _hybrid_launcher():
    """The real MPI launcher that started this process, if any (see _hybrid)."""
    from ._hybrid import launcher
    return launcher()


def route(comm: Comm, rank: int) -> str:
    """How this process reaches ``rank`` of ``comm`` (a rank of the remote group for an
    intercommunicator): ``"self"``, ``"shm"`` (driller's shared memory on this node)
    or ``"mpi"`` (another node of a hybrid world)."""
    if not isinstance(comm, Comm):
        raise MmpiError(f"route: {comm!r} is not a communicator")
    peers = comm._group   # p2p peers' world ranks: an intercommunicator's REMOTE group
    if not isinstance(rank, int) or not 0 <= rank < len(peers):
        what = "the remote group" if comm.Is_inter() else "a communicator"
        raise MmpiError(f"route: rank {rank!r} out of range for {what} of size "
                        f"{len(peers)}")
    w = peers[rank]
    t = comm._t
    if w == t.rank:
        return "self"
    return "mpi" if w in getattr(t, "remote", ()) else "shm"


def _ensure() -> None:
    if _state.transport is not None and _state.pid == os.getpid():
        return
    if _state.forked_from is not None:
        raise _fork_error(_state.forked_from)
    if _state.finalized:
        raise MmpiError("MPI.Finalize() was called in this process: no mmpi call after it")
    if _state.launch_error is not None:
        raise _state.launch_error
    _adopt_launch_env()  # (normally done at import)
    if _state.launch is not None:
        rank, size, fd = _state.launch
        if _state.launch_pid != os.getpid():  # pragma: no cover - the fork hook sets it
            raise _fork_error(rank)
        _state.launch = None
        init_world(rank, size, fd, close_fd=True)
    elif _hybrid_launcher() is not None:  # started by a real MPI launcher: a hybrid world
        from . import _hybrid
        _adopt(*_hybrid.init())
    else:  # singleton init, as MPI does without a launcher
        fd = W.create_world(1)
        init_world(0, 1, fd, close_fd=True)
        _state.launched = False


def world_comm() -> Comm:
    _ensure()
    return _state.comm_world


def self_comm() -> Comm:
    _ensure()
    return _state.comm_self


def finalize() -> None:
    """MPI.Finalize: this rank is done; every later communicator call raises."""
    t = _state.transport
    if t is not None and _state.pid == os.getpid() and issubclass(type(t), T.Transport):
        _end_hybrid(t)
        _hier.release_all()   # the MPI communicators of hybrid collectives
        try:
            # what the peers still need from us (a FIN behind a full ring); the copies
            # owed too, but not in a hybrid world: its ranks have all passed _hier.end,
            # none receives any more (some wait in the MPI library's own Finalize)
            t.finish(owed=t.all_local)
        except DrillerError:  # a peer's death: nothing more to hand it, this rank is done
            pass
        t.close()
        _forget_peers()
        T.make_unusable(t, "MPI.Finalize() was called in this rank: no communication "
                           "after it (communicators, requests and COMM_WORLD all raise)")
    _state.finalized = True


def is_initialized() -> bool:
    return _state.transport is not None and _state.pid == os.getpid()


def is_finalized() -> bool:
    return _state.finalized


# a rank's children must never take themselves for ranks: done at import, not first use
_adopt_launch_env()


def __getattr__(name: str):
    # COMM_WORLD and COMM_SELF pickle by name: pickle looks them up here
    if name == "COMM_WORLD":
        return world_comm()
    if name == "COMM_SELF":
        return self_comm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def context_of(comm: Comm) -> Context:
    """The :class:`~._coll._context.Context` of a communicator (its transport, group
    and ranks), for the layers built beside it (``_rma``'s windows)."""
    if not isinstance(comm, Comm):
        raise MmpiError(f"expected a communicator, got {type(comm).__name__}",
                        error_class=_errcodes.ERR_COMM)
    return comm._cx

_threads.register(Comm, Intracomm)   # (one thread inside mmpi at a time: _threads)
