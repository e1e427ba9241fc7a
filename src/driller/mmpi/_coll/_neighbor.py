"""Neighbourhood collectives: every rank exchanges with its topology's neighbours only.

A topology communicator (``_topo``) describes its neighbours as two plans,
``inplan`` and ``outplan``: one ``(rank, step)`` per receive block and per send
block, in MPI's order (a cartesian grid: per dimension the -1 then the +1
neighbour; a graph: its edges; a distributed graph: its sources, its
destinations).  A neighbour may be ``PROC_NULL`` (a border of a non-periodic
grid): nothing is sent there and its receive block is left untouched.  The
``step`` is the low byte of the message tag, so that the block a rank sends
along an edge lands in the block its neighbour receives along the same edge
even when two ranks are neighbours several times (a periodic dimension of size
2, duplicate graph edges): a grid tags a message by the direction it travels,
a graph by the edge's occurrence between the two ranks.

Every exchange is one generator (:func:`g_exchange`, :func:`g_oexchange`):
all receives posted, then all sends (point-to-point on the collective context,
one copy each as any message), then the counts checked.  Blocking calls drive
it; ``Ineighbor_*`` hand it to ``_nonblocking.coll_request``.  Buffers are
parsed and checked on every rank before anything is posted.
"""

from __future__ import annotations

from ...errors import MmpiError
from .._bufspec import byteview, parse, wblocks
from .._const import PROC_NULL
from .._objects import dumps
from ._context import (Failed, cbase, co_recv, count_check, cr, drive, first_error, g_then,
                       oval, xsend)
from ._nonblocking import coll_request

__all__ = [
    "Neighbor_allgather", "Neighbor_allgatherv", "Neighbor_alltoall", "Neighbor_alltoallv",
    "Neighbor_alltoallw", "neighbor_allgather", "neighbor_alltoall", "g_exchange",
    "g_oexchange", "Failed",
]


# ------------------------------------------------------------------ generators

def g_exchange(cx, base, recvs, sends, what, err=None):
    """Receive each ``(rank, step, mv)`` of ``recvs`` (exactly len(mv) bytes) and send
    each of ``sends``; PROC_NULL ranks are skipped.  ``err``: this rank's arguments
    were bad (its blocks are then empty): the exchange still runs, so that no
    neighbour is left waiting (each sees an empty message, a count error), and
    ``err`` is raised at its end."""
    rops = [(r, cr(cx, mv, r, base | s), len(mv)) for r, s, mv in recvs if r != PROC_NULL]
    # a small block goes straight into the ring (complete: None), a large one is a
    # rendezvous the neighbour copies once from this rank's buffer
    sops = [xsend(cx, mv, r, base | s) for r, s, mv in sends if r != PROC_NULL]
    yield [o for _, o, _ in rops] + sops
    if err is not None:
        raise err
    for r, o, n in rops:
        count_check(cx, o, n, what, r)
    first_error(sops)


def g_oexchange(cx, base, inplan, sends, what, err=None):
    """Receive one object per ``(rank, step)`` of ``inplan`` (None from PROC_NULL) and
    send each ``(rank, step, obj, pickled)`` of ``sends`` (``pickled``: ``dumps(obj)``
    made once for every neighbour it goes to, or None); the received list.  ``err``: this
    rank's arguments were bad (``sends`` then carry :class:`Failed`), raised at the end."""
    rops = [co_recv(cx, r, base | s) if r != PROC_NULL else None for r, s in inplan]
    t = cx.t
    sops = [t.send_object(cx.group[r], cx.cctx, base | s, obj, False, what, pickled)
            for r, s, obj, pickled in sends if r != PROC_NULL]
    yield [o for o in rops if o is not None] + sops
    if err is not None:
        raise err
    out = [None if o is None else oval(o) for o in rops]
    first_error(sops)
    for v in out:
        if type(v) is Failed:
            raise MmpiError(f"{what}: neighbour rank {v.rank} passed invalid arguments "
                            f"({v.text})")
    return out


def _run(cx, gen, nonblocking):
    if nonblocking:
        return coll_request(cx, gen)
    return drive(cx.t, gen)


# ------------------------------------------------------------------ buffers

def _blocks(spec, writable, what, n, vector):
    """``(blocks, finish)``: the ``n`` blocks of a buffer spec (``n`` may be 0: then
    the buffer is only checked to be a buffer) and what completes a receive into
    them (``Buf.finish``: a derived datatype's staged bytes, scattered)."""
    if n == 0:
        buf = spec[0] if type(spec) in (list, tuple) and spec else spec
        if buf is not None:
            byteview(buf, writable, what)
        return [], None
    b = parse(spec, writable, what, blocks=n, vector=vector, staged=writable)
    return [b.block(i) for i in range(n)], b.finish


def _empty(n):
    return [memoryview(bytearray(0))] * n


def _allgather(cx, inplan, outplan, sendbuf, recvbuf, what, vector, nonblocking):
    err = finish = None
    try:
        smv = parse(sendbuf, False, what).mv
        rblocks, finish = _blocks(recvbuf, True, what, len(inplan), vector)
    except Exception as e:   # (any bad argument: parsing has no side effect)
        err, smv, rblocks = e, memoryview(b""), _empty(len(inplan))
    base = cbase(cx)
    gen = g_exchange(cx, base, [(r, s, mv) for (r, s), mv in zip(inplan, rblocks)],
                     [(r, s, smv) for r, s in outplan], what, err)
    return _run(cx, g_then(gen, finish), nonblocking and err is None)


def _alltoall(cx, inplan, outplan, sendbuf, recvbuf, what, form, nonblocking):
    err = finish = None
    try:
        if form == "w":
            sblocks = wblocks(sendbuf, False, what, len(outplan))[0]
            rblocks, finish = wblocks(recvbuf, True, what, len(inplan))
        else:
            sblocks = _blocks(sendbuf, False, what, len(outplan), form == "v")[0]
            rblocks, finish = _blocks(recvbuf, True, what, len(inplan), form == "v")
    except Exception as e:   # (any bad argument: parsing has no side effect)
        err, sblocks, rblocks = e, _empty(len(outplan)), _empty(len(inplan))
    base = cbase(cx)
    gen = g_exchange(cx, base, [(r, s, mv) for (r, s), mv in zip(inplan, rblocks)],
                     [(r, s, mv) for (r, s), mv in zip(outplan, sblocks)], what, err)
    return _run(cx, g_then(gen, finish), nonblocking and err is None)


def Neighbor_allgather(cx, inplan, outplan, sendbuf, recvbuf, nonblocking=False):
    return _allgather(cx, inplan, outplan, sendbuf, recvbuf,
                      "Ineighbor_allgather" if nonblocking else "Neighbor_allgather", False,
                      nonblocking)


def Neighbor_allgatherv(cx, inplan, outplan, sendbuf, recvbuf, nonblocking=False):
    return _allgather(cx, inplan, outplan, sendbuf, recvbuf,
                      "Ineighbor_allgatherv" if nonblocking else "Neighbor_allgatherv", True,
                      nonblocking)


def Neighbor_alltoall(cx, inplan, outplan, sendbuf, recvbuf, nonblocking=False):
    return _alltoall(cx, inplan, outplan, sendbuf, recvbuf,
                     "Ineighbor_alltoall" if nonblocking else "Neighbor_alltoall", "",
                     nonblocking)


def Neighbor_alltoallv(cx, inplan, outplan, sendbuf, recvbuf, nonblocking=False):
    return _alltoall(cx, inplan, outplan, sendbuf, recvbuf,
                     "Ineighbor_alltoallv" if nonblocking else "Neighbor_alltoallv", "v",
                     nonblocking)


def Neighbor_alltoallw(cx, inplan, outplan, sendbuf, recvbuf, nonblocking=False):
    return _alltoall(cx, inplan, outplan, sendbuf, recvbuf,
                     "Ineighbor_alltoallw" if nonblocking else "Neighbor_alltoallw", "w",
                     nonblocking)


# ------------------------------------------------------------------ objects

def neighbor_allgather(cx, inplan, outplan, sendobj):
    pickled = dumps(sendobj) if any(r != PROC_NULL for r, _ in outplan) else None
    base = cbase(cx)   # (pickled once, sent to every out-neighbour)
    return drive(cx.t, g_oexchange(cx, base, inplan,
                                   [(r, s, sendobj, pickled) for r, s in outplan],
                                   "neighbor_allgather"))


def neighbor_alltoall(cx, inplan, outplan, sendobj):
    n = len(outplan)
    err = None
    try:
        items = list(sendobj)
    except TypeError:
        items = None
    if items is None or len(items) != n:
        err = MmpiError(f"neighbor_alltoall: pass a sequence of {n} items (one per "
                        f"out-neighbour of this rank), got {sendobj!r}")
        items = [Failed(cx.rank, "neighbor_alltoall: not one item per out-neighbour")] * n
    base = cbase(cx)
    return drive(cx.t, g_oexchange(cx, base, inplan,
                                   [(r, s, o, None) for (r, s), o in zip(outplan, items)],
                                   "neighbor_alltoall", err))
