"""Nonblocking collectives: an algorithm generator in flight, advanced by progress.

MPI lets a rank complete its requests in any order (or wait in a Recv) while a
peer waits for its nonblocking collective: those must advance whenever this
rank makes progress at all.  A :class:`CollOp` registers its ``advance`` as a
progress hook of the transport (``Transport.add_progress_hook``) while it is in
flight, and removes it when done.
"""

from __future__ import annotations

from ...errors import MmpiError
from .._bufspec import message, recv_message
from .._transport import NestedCallError
from .._request import K_SEND, CollRequest, request
from . import _board
from ._barrier import g_barrier
from ._bcast import g_bcast, g_bcast_refused
from ._context import Context, cbase, check_root, g_then, peer_of, refusal, size_hint
from ._ops import SUM
from ._reduce import g_allreduce

__all__ = [
    "CollOp", "coll_request", "Ibarrier", "Ibcast", "Iallreduce",
]


class CollOp:
    """A nonblocking collective in flight; looks like a transport op (done, exc)."""

    __slots__ = ("t", "gen", "ops", "finished", "exc", "value", "running", "cx", "seq")

    def __init__(self, t, gen, cx=None):
        self.t = t
        self.gen = gen
        self.cx = cx        # (the board's in-flight record: collective seq of cx)
        if cx is not None:
            self.seq = s = cx.seq
            nb = cx.nb
            nb.append(s)
            cx.bwords[cx.bw + 2] = cx.bhi | (nb[0] & 0xFFFFF) << 24 | 1
        self.ops = ()
        self.finished = False
        self.exc = None
        self.value = None
        self.running = False
        self.advance()
        if not self.finished:
            t.add_progress_hook(self.advance)

    def advance(self) -> bool:
        """Resume the algorithm as far as it can go without waiting; True if it moved.
        Not in the middle of the engine's own steps (a signal handler's Test or Wait:
        Transport.engine_busy): its sends would land in them."""
        if self.running or self.t.engine_busy:
            return False
        moved = False
        self.running = True
        try:
            while not self.finished:
                for op in self.ops:
                    if op is not None and not op.done:
                        return moved
                moved = True
                try:
                    self.ops = self.gen.send(None)
                except StopIteration as e:
                    self.finished, self.value, self.ops = True, e.value, ()
                except MmpiError as e:
                    self.finished, self.exc, self.ops = True, e, ()
                if self.finished:
                    self.t.remove_progress_hook(self.advance)
                    if self.cx is not None:
                        _board.nb_end(self.cx, self.seq)
        finally:
            self.running = False
        return moved

    @property
    def done(self) -> bool:
        if not self.finished:
            self.t.progress()
            self.advance()
        return self.finished

    def run(self):
        t = self.t
        while not self.finished:
            for op in self.ops:
                if op is not None and not op.done:
                    try:
                        t.wait(op, peer_of(op))
                    except NestedCallError:   # (the call's fault: the collective goes on)
                        raise
                    except MmpiError as e:
                        self.finished, self.exc, self.ops = True, e, ()
                        t.remove_progress_hook(self.advance)
                        self.gen.close()
                        if self.cx is not None:
                            _board.nb_end(self.cx, self.seq)
                        return
            self.advance()


def coll_request(cx, gen):
    """A Request driving the algorithm generator ``gen`` (of the collective that
    took ``cx``'s last sequence number)."""
    return request(CollOp(cx.t, gen, cx if type(cx) is Context and cx.bw else None),
                   K_SEND, cx, CollRequest)


def Ibarrier(cx):
    return coll_request(cx, g_barrier(cx, cbase(cx)))


def Ibcast(cx, buf, root=0):
    root = check_root(cx, root, "Ibcast")
    try:
        if cx.rank == root:
            mv = message(buf, False, "Ibcast")   # a derived datatype: packed here
            return coll_request(cx, g_bcast(cx, mv, root, cbase(cx), "Ibcast"))
        mv, unpack = recv_message(buf, "Ibcast")  # a derived datatype: staged, then scattered
    except Exception as e:
        # refused here only, maybe: this rank's part goes on in the background (the
        # others must not wait for it), the error is raised now
        coll_request(cx, g_bcast_refused(cx, root, cbase(cx), refusal(cx, e, "Ibcast"),
                                         "Ibcast", size_hint(buf)))
        raise
    gen = g_bcast(cx, mv, root, cbase(cx), "Ibcast")
    if unpack is not None:
        gen = g_then(gen, lambda: unpack(len(mv)))
    return coll_request(cx, gen)


def Iallreduce(cx, sendbuf, recvbuf, op=SUM):
    # (refused: this rank's part goes on in the background, the error is raised now)
    return coll_request(cx, g_allreduce(cx, sendbuf, recvbuf, op, "Iallreduce",
                                        start=lambda g: coll_request(cx, g)))
