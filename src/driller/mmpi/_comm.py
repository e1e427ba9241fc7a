"""Communicators, requests, statuses and datatypes (mpi4py's names and conventions).

Uppercase methods move buffers (``Send([buf, count, MPI.DOUBLE], dest, tag)``),
lowercase ones move picklable Python objects (``send(obj, dest, tag)``).
"""

from __future__ import annotations

import os
import pickle
import time

import numpy as np

from ..errors import MmpiError, MmpiNotImplementedError
from . import _errhandler, _group
from . import _transport as T
from . import _world as W
from ._bufspec import EMPTY, message
from ._coll import _alltoall, _gather, _hier, _nonblocking, _reduce
from ._coll._context import Context
from ._coll._ops import SUM
from ._const import ANY_SOURCE, ANY_TAG, PROC_NULL, TAG_UB
from . import _objects, _pylayers
from ._objects import ARRAY_KINDS, dumps, loads, pack_array
from ._request import (K_ORECV, K_RECV, K_SEND, Prequest, Request, complete, fill, persistent,
                       request, self_sync)

__all__ = [
    "Comm", "Intracomm", "route", "Wtime", "Wtick", "init_world", "world_comm", "self_comm", "finalize",
    "is_initialized", "is_finalized", "launched_rank",
]

_CTX_WORLD, _CTX_SELF = 0, 2   # p2p contexts; collectives use context + 1; new comms from 4


def Wtime() -> float:
    """Seconds since an arbitrary origin (monotonic, high resolution)."""
    return time.perf_counter()


def Wtick() -> float:
    return time.get_clock_info("perf_counter").resolution


# ------------------------------------------------------------------ communicator

class Comm:
    """A communicator: a group of ranks and a context id that fences its messages.

    Point-to-point is here; collectives are one-line delegations to ``_coll``,
    which works on the communicator's :class:`~._coll._context.Context`."""

    def __init__(self, transport: T.Transport, group: list[int], context: int, name: str = ""):
        cx = self._cx = Context(transport, group, context, name)
        # the context's fields, as attributes for the point-to-point hot paths
        self._t = transport
        self._group = cx.group
        self._ctx = context
        self._rank_of = cx.rank_of
        self.rank = cx.rank
        self.size = cx.size

    # -- basics --
    def Get_rank(self) -> int:
        self._t.rank  # raises after Finalize and in a forked child, as every call
        return self.rank

    def Get_size(self) -> int:
        self._t.rank
        return self.size

    def Get_name(self) -> str:
        return self._cx.name

    def Is_inter(self) -> bool:
        return False

    def Is_intra(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<mmpi.Comm {self._cx.name or 'comm'} rank {self.rank} of {self.size}>"

    def _dest(self, dest, what: str) -> int:
        if type(dest) is not int:
            if isinstance(dest, int) and not isinstance(dest, bool):
                dest = int(dest)
            else:
                raise MmpiError(f"{what}: destination rank must be an int, got {dest!r}")
        if 0 <= dest < self.size:
            return self._group[dest]
        if dest == PROC_NULL:
            return PROC_NULL
        raise MmpiError(f"{what}: invalid destination rank {dest} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1} or PROC_NULL)")

    def _source(self, source, what: str) -> int:
        if type(source) is not int:
            if isinstance(source, int) and not isinstance(source, bool):
                source = int(source)
            else:
                raise MmpiError(f"{what}: source rank must be an int, got {source!r}")
        if 0 <= source < self.size:
            return self._group[source]
        if source == ANY_SOURCE or source == PROC_NULL:
            return source
        raise MmpiError(f"{what}: invalid source rank {source} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1}, ANY_SOURCE or PROC_NULL)")

    @staticmethod
    def _stag(tag, what: str) -> int:
        if type(tag) is not int or not 0 <= tag <= TAG_UB:
            if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag <= TAG_UB:
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a send tag is an int in 0..{TAG_UB})")
        return tag

    @staticmethod
    def _rtag(tag, what: str) -> int:
        if type(tag) is not int or not (0 <= tag <= TAG_UB or tag == ANY_TAG):
            if isinstance(tag, int) and not isinstance(tag, bool) and (0 <= tag <= TAG_UB or tag == ANY_TAG):
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a receive tag is an int in "
                            f"0..{TAG_UB} or ANY_TAG)")
        return tag

    # -- starting operations (internal) --
    def _isend(self, buf, dest, tag, sync, what, ctx=None):
        mv = message(buf, False, what)
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        op = T.SendOp(w, tag, self._ctx if ctx is None else ctx, mv, sync)
        self._t.isend(op)
        return op

    def _irecv(self, buf, source, tag, what, ctx=None):
        mv = message(buf, True, what)
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        op = T.RecvOp(w, tag, self._ctx if ctx is None else ctx, mv)
        if w == PROC_NULL:
            op.done = True
            return op
        self._t.irecv(op)
        return op

    def _osend(self, obj, dest, tag, sync, what, pickled=None):
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        return self._t.send_object(w, self._ctx, tag, obj, sync, what, pickled)

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
            if op.sync:
                self_sync(self._cx, op, "Ssend")
            if not op.done:
                self._t.wait(op, op.dest)
        if op.exc is not None:
            raise op.exc

    def _wait_recv(self, op, status, obj=False):
        if not op.done:
            self._t.wait(op, None if op.source == ANY_SOURCE else op.source)
        return complete(op, K_ORECV if obj else K_RECV, self._cx, status)

    # -- blocking buffer p2p --
    def Send(self, buf, dest, tag=0) -> None:
        try:  # _buffer's fast path, inlined
            mv = memoryview(buf)
            if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous):
                mv = message(buf, False, "Send")
        except (TypeError, ValueError):
            mv = message(buf, False, "Send")
        if type(dest) is int and 0 <= dest < self.size and type(tag) is int and 0 <= tag <= TAG_UB:
            if self._t.send_fast(self._group[dest], self._ctx, tag, mv):
                return
        self._wait_send(self._isend(mv, dest, tag, False, "Send"))

    def Ssend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, True, "Ssend"))

    def Rsend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, False, "Rsend"))

    def Bsend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, False, "Bsend"))

    def Recv(self, buf, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> None:
        try:  # _buffer's fast path, inlined
            mv = memoryview(buf)
            if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous
                    and not mv.readonly):
                mv = message(buf, True, "Recv")
        except (TypeError, ValueError):
            mv = message(buf, True, "Recv")
        if (type(source) is int and -1 <= source < self.size and type(tag) is int
                and -1 <= tag <= TAG_UB):
            res = self._t.recv_fast(self._group[source] if source >= 0 else source, tag,
                                    self._ctx, mv)
            if res is not None:
                if status is not None:
                    fill(status, self._rank_of(res[0]), res[1], 0, res[2])
                return
        self._wait_recv(self._irecv(mv, source, tag, "Recv"), status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None) -> None:
        smv = message(sendbuf, False, "Sendrecv")
        rmv = message(recvbuf, True, "Sendrecv")
        size = self.size
        if (type(dest) is int and 0 <= dest < size and type(sendtag) is int
                and 0 <= sendtag <= TAG_UB and type(source) is int and -1 <= source < size
                and type(recvtag) is int and -1 <= recvtag <= TAG_UB):
            # the common case, validated inline: straight into and out of the rings
            t = self._t
            if t.send_fast(self._group[dest], self._ctx, sendtag, smv):
                res = t.recv_fast(self._group[source] if source >= 0 else source, recvtag,
                                  self._ctx, rmv)
                if res is not None:
                    if status is not None:
                        fill(status, self._rank_of(res[0]), res[1], 0, res[2])
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
        s = self._isend(smv, dest, sendtag, False, "Sendrecv")
        self._wait_send(s)
        self._wait_recv(r, status)

    def Sendrecv_replace(self, buf, dest, sendtag=0, source=ANY_SOURCE, recvtag=ANY_TAG,
                         status=None) -> None:
        mv = message(buf, True, "Sendrecv_replace")
        copy = bytes(mv)
        r = self._irecv(mv, source, recvtag, "Sendrecv_replace")
        s = self._isend(copy, dest, sendtag, False, "Sendrecv_replace")
        self._wait_send(s)
        self._wait_recv(r, status)

    # -- nonblocking buffer p2p --
    def _sreq(self, op):
        return request(op, K_SEND, self._cx) if op is not None else Request()

    def Isend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Isend"))

    def Issend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, True, "Issend"))

    def Irsend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Irsend"))

    def Ibsend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Ibsend"))

    def Irecv(self, buf, source=ANY_SOURCE, tag=ANY_TAG) -> Request:
        return request(self._irecv(buf, source, tag, "Irecv"), K_RECV, self._cx)

    # -- persistent --
    def _persistent(self, start, kind):
        # validate now (errors at the call, as MPI does)
        return persistent(start, kind, self._cx)

    def Send_init(self, buf, dest, tag=0) -> Prequest:
        message(buf, False, "Send_init"), self._dest(dest, "Send_init"), self._stag(tag, "Send_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, False, "Send_init")
                                or _null_done_send(), K_SEND)

    def Ssend_init(self, buf, dest, tag=0) -> Prequest:
        message(buf, False, "Ssend_init"), self._dest(dest, "Ssend_init"), self._stag(tag, "Ssend_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, True, "Ssend_init")
                                or _null_done_send(), K_SEND)

    def Recv_init(self, buf, source=ANY_SOURCE, tag=ANY_TAG) -> Prequest:
        message(buf, True, "Recv_init"), self._source(source, "Recv_init"), self._rtag(tag, "Recv_init")
        return self._persistent(lambda: self._irecv(buf, source, tag, "Recv_init"), K_RECV)

    # -- probe --
    def _probe_match(self, source, tag, what):
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        return w, tag

    def Iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
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

    def Probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        w, tag = self._probe_match(source, tag, "Probe")
        if w == PROC_NULL:
            fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return True
        eng = self._t.engine
        ctx = self._ctx
        found = []

        def pred():
            m = eng.probe(w, tag, ctx)
            if m is not None:
                found.append(m)
                return True
            return False

        self._t.wait_until(pred, None if w == ANY_SOURCE else w)
        m = found[0]
        fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return True

    def iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        return self.Iprobe(source, tag, status)

    def probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        return self.Probe(source, tag, status)

    # -- objects --
    def send(self, obj, dest, tag=0) -> None:
        if type(dest) is int and 0 <= dest < self.size and type(tag) is int and 0 <= tag <= TAG_UB:
            # the common case, validated inline: a small object straight into the ring
            if (type(obj) is np.ndarray and _objects.user_pickler() is None
                    and obj.nbytes <= self._t.eager_limit - 1024
                    and obj.dtype.kind in ARRAY_KINDS and obj.flags.c_contiguous
                    and self._t.send_fast(self._group[dest], self._ctx, tag,
                                          pack_array(obj), T.F_OBJ | T.F_ARRAY)):
                return
            pickled = dumps(obj)
            if not pickled[1] and self._t.send_fast(self._group[dest], self._ctx, tag,
                                                    pickled[0], T.F_OBJ):
                return
            self._wait_send(self._osend(obj, dest, tag, False, "send", pickled))
            return
        self._wait_send(self._osend(obj, dest, tag, False, "send"))

    def ssend(self, obj, dest, tag=0) -> None:
        self._wait_send(self._osend(obj, dest, tag, True, "ssend"))

    def bsend(self, obj, dest, tag=0) -> None:
        self.send(obj, dest, tag)

    def isend(self, obj, dest, tag=0) -> Request:
        return self._sreq(self._osend(obj, dest, tag, False, "isend"))

    def issend(self, obj, dest, tag=0) -> Request:
        return self._sreq(self._osend(obj, dest, tag, True, "issend"))

    def recv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        if (type(source) is int and -1 <= source < self.size and type(tag) is int
                and -1 <= tag <= TAG_UB):
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

    def irecv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG) -> Request:
        return request(self._orecv(source, tag, "irecv"), K_ORECV, self._cx)

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None):
        r = self._orecv(source, recvtag, "sendrecv")
        s = self._osend(sendobj, dest, sendtag, False, "sendrecv")
        self._wait_send(s)
        return self._wait_recv(r, status, obj=True)

    # -- communicators and groups (``_group``) --
    @property
    def name(self) -> str:
        return self._cx.name

    @name.setter
    def name(self, value: str) -> None:
        self._cx.name = str(value)

    def Set_name(self, name: str) -> None:
        self._cx.name = str(name)

    def Get_group(self):
        return _group.get_group(self._cx)

    @property
    def group(self):
        return self.Get_group()

    def Compare(self, comm) -> int:
        return _group.compare(self._cx, comm._cx if isinstance(comm, Comm) else None, comm)

    def _new(self, group, ctx):
        return type(self)(self._t, group, ctx)

    def Dup(self, info=None):
        return _group.dup(self._cx, self._new)

    def Clone(self):
        return self.Dup()

    def Split(self, color=0, key=0):
        return _group.split(self._cx, color, key, self._new)

    def Split_type(self, split_type, key=0, info=None):
        return _group.split_type(self._cx, split_type, key, self._new)

    def Create(self, group):
        return _group.create(self._cx, group, self._new)

    # -- collectives (``_coll``) --
    def Barrier(self) -> None:
        _hier.Barrier(self._cx)

    def barrier(self) -> None:
        self.Barrier()

    def Abort(self, errorcode: int = 1):
        """Terminate this rank at once; the launcher then tells the others."""
        import sys
        sys.stderr.write(f"mmpi: rank {self.rank} called Abort({errorcode})\n")
        sys.stderr.flush()
        abort = getattr(self._t, "abort", None)
        if abort is not None:   # a hybrid world: the MPI launcher ends every node
            abort(errorcode if 0 < errorcode < 256 else 1)
        os._exit(errorcode if 0 < errorcode < 256 else 1)

    def Ibarrier(self):
        return _nonblocking.Ibarrier(self._cx)

    def Ibcast(self, buf, root=0):
        return _nonblocking.Ibcast(self._cx, buf, root)

    def Iallreduce(self, sendbuf, recvbuf, op=SUM):
        return _nonblocking.Iallreduce(self._cx, sendbuf, recvbuf, op)

    def Bcast(self, buf, root=0):
        return _hier.Bcast(self._cx, buf, root)

    def bcast(self, obj, root=0):
        with _pylayers.comm_lock(self, "bcast"):    # as mpi4py (its _comm_lock_table)
            return _hier.bcast(self._cx, obj, root)

    def Reduce(self, sendbuf, recvbuf, op=SUM, root=0):
        return _hier.Reduce(self._cx, sendbuf, recvbuf, op, root)

    def Allreduce(self, sendbuf, recvbuf, op=SUM):
        return _hier.Allreduce(self._cx, sendbuf, recvbuf, op)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=SUM):
        return _reduce.Reduce_scatter_block(self._cx, sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=SUM):
        return _reduce.Reduce_scatter(self._cx, sendbuf, recvbuf, recvcounts, op)

    def reduce(self, sendobj, op=SUM, root=0):
        return _hier.reduce(self._cx, sendobj, op, root)

    def allreduce(self, sendobj, op=SUM):
        return _hier.allreduce(self._cx, sendobj, op)

    def Gather(self, sendbuf, recvbuf, root=0):
        return _gather.Gather(self._cx, sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        return _gather.Gatherv(self._cx, sendbuf, recvbuf, root)

    def Scatter(self, sendbuf, recvbuf, root=0):
        return _gather.Scatter(self._cx, sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf, recvbuf, root=0):
        return _gather.Scatterv(self._cx, sendbuf, recvbuf, root)

    def Allgather(self, sendbuf, recvbuf):
        return _gather.Allgather(self._cx, sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf):
        return _gather.Allgatherv(self._cx, sendbuf, recvbuf)

    def gather(self, sendobj, root=0):
        return _gather.gather(self._cx, sendobj, root)

    def scatter(self, sendobj, root=0):
        return _gather.scatter(self._cx, sendobj, root)

    def allgather(self, sendobj):
        return _gather.allgather(self._cx, sendobj)

    def Alltoall(self, sendbuf, recvbuf):
        return _alltoall.Alltoall(self._cx, sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf):
        return _alltoall.Alltoallv(self._cx, sendbuf, recvbuf)

    def alltoall(self, sendobj):
        return _alltoall.alltoall(self._cx, sendobj)

    def Free(self) -> None:
        pass

    # -- error handlers (``_errhandler``) --
    @classmethod
    def Create_errhandler(cls, errhandler_fn):
        return _errhandler.create(errhandler_fn)

    def Get_errhandler(self):
        """A new handle onto this communicator's error handler (ERRORS_RETURN by
        default: errors raise MPI.Exception)."""
        self._t.rank
        return _errhandler.Errhandler(self.__dict__.get("_errh", _errhandler.ERRORS_RETURN))

    def Set_errhandler(self, errhandler) -> None:
        self._t.rank
        self._errh = _errhandler.Errhandler(
            _errhandler.check(errhandler, "Comm.Set_errhandler"))
        _errhandler.apply(self, self.Get_errhandler())

    def Call_errhandler(self, errorcode: int) -> None:
        """Invoke this communicator's error handler on ``errorcode``."""
        self._t.rank
        _errhandler.call(self.__dict__.get("_errh", _errhandler.ERRORS_RETURN), self,
                         errorcode, self.Abort)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise MmpiNotImplementedError(
            f"Comm.{name} is not implemented by driller.mmpi yet (point-to-point, "
            f"collectives, communicator construction and groups are); use mpi4py for it "
            f"meanwhile")


def _null_done_send():
    op = T.SendOp(PROC_NULL, 0, 0, EMPTY)
    op.done = True
    return op


class Intracomm(Comm):
    """An intracommunicator: one group of ranks (COMM_WORLD, COMM_SELF and what
    Dup/Split/Create make of them).  Prefix reductions live here, as in mpi4py;
    topologies and intercommunicators are built from intracommunicators."""

    def Scan(self, sendbuf, recvbuf, op=SUM):
        return _reduce.Scan(self._cx, sendbuf, recvbuf, op)

    def Exscan(self, sendbuf, recvbuf, op=SUM):
        return _reduce.Exscan(self._cx, sendbuf, recvbuf, op)

    def scan(self, sendobj, op=SUM):
        return _reduce.scan(self._cx, sendobj, op)

    def exscan(self, sendobj, op=SUM):
        return _reduce.exscan(self._cx, sendobj, op)

    def Spawn(self, command, args=None, maxprocs=1, info=None, root=0, errcodes=None):
        """Spawn instances of a program: not supported (``_pylayers.spawn`` says what
        to run instead)."""
        return _pylayers.spawn(command, args, maxprocs, info, root, errcodes)


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


def _after_fork_in_child() -> None:
    t = _state.transport
    if t is not None and isinstance(t, T.Transport):
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
    _state.comm_world = Intracomm(t, list(range(size)), _CTX_WORLD, "MPI_COMM_WORLD")
    _state.comm_self = Intracomm(t, [rank], _CTX_SELF, "MPI_COMM_SELF")
    _state.finalized = False


def _hybrid_launcher():
    """The real MPI launcher that started this process, if any (see _hybrid)."""
    from ._hybrid import launcher
    return launcher()


def route(comm: Comm, rank: int) -> str:
    """How this process reaches ``rank`` of ``comm``: ``"self"``, ``"shm"`` (driller's
    shared memory on this node) or ``"mpi"`` (another node of a hybrid world)."""
    if not isinstance(comm, Comm):
        raise MmpiError(f"route: {comm!r} is not a communicator")
    if not isinstance(rank, int) or not 0 <= rank < comm.size:
        raise MmpiError(f"route: rank {rank!r} out of range for a communicator of size "
                        f"{comm.size}")
    w = comm._group[rank]
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
    if t is not None and _state.pid == os.getpid() and isinstance(t, T.Transport):
        t.close()
        T.make_unusable(t, "MPI.Finalize() was called in this rank: no communication "
                           "after it (communicators, requests and COMM_WORLD all raise)")
    _state.finalized = True


def is_initialized() -> bool:
    return _state.transport is not None and _state.pid == os.getpid()


def is_finalized() -> bool:
    return _state.finalized


# a rank's children must never take themselves for ranks: done at import, not first use
_adopt_launch_env()
