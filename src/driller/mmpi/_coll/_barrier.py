"""Barriers: blocking (shared memory for the world's group, else dissemination)
and the generator form."""

from __future__ import annotations

from .. import _transport as T
from .._bufspec import EMPTY
from ._context import first_error, xrecv, xsend
from ._shm import shm_barrier

__all__ = [
    "BARRIER_TAG", "END_TAG", "Barrier", "g_barrier",
]

BARRIER_TAG = 1 << 29        # Barrier's tags on the collective context (collectives use < 2**28)
END_TAG = BARRIER_TAG + 64   # the exit's barrier of a world spanning nodes (_hier.end): it
#                              must not pass a rank's Barrier (a rank exiting while the
#                              others wait in Barrier went on into MPI's Finalize, and
#                              they hung at their next collective)


def Barrier(cx, tag: int = BARRIER_TAG) -> None:
    """Dissemination barrier (log2(n) rounds of zero-byte messages, no atomics, tags
    ``tag`` and up), or the shared-memory one for a world-group communicator."""
    n = cx.size
    if n == 1:
        cx.t.engine  # raises after Finalize and in a forked child, as every call
        return
    if cx.shm:  # the world's group, on this node: one shared-memory word per rank
        return shm_barrier(cx)
    t = cx.t
    me = cx.rank
    group = cx.group
    cctx = cx.cctx
    k = 1
    rnd = tag  # a tag space of its own on the collective context
    while k < n:
        src = group[(me - k) % n]
        dst = group[(me + k) % n]
        if not t.senders[dst](cctx, rnd, EMPTY):
            s = T.SendOp(dst, rnd, cctx, EMPTY)
            t.isend(s)
            if not s.done:
                t.wait(s, dst)
            if s.exc is not None:
                raise s.exc
        if t.recv_fast(src, rnd, cctx, EMPTY) is None:
            r = T.RecvOp(src, rnd, cctx, EMPTY)
            t.irecv(r)
            t.wait(r, src)
            if r.exc is not None:
                raise r.exc
        k <<= 1
        rnd += 1


def g_barrier(cx, base, blk=False):
    """Dissemination barrier: ceil(log2 n) rounds of zero-byte messages."""
    n, me = cx.size, cx.rank
    k, rnd = 1, 0
    empty = EMPTY
    while k < n:
        s = xsend(cx, empty, (me + k) % n, base + rnd)
        yield from xrecv(cx, empty, (me - k) % n, base + rnd, blk, "Barrier")
        if s is not None:
            yield [s]
            first_error((s,))
        k <<= 1
        rnd += 1
