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

from ... import _linux
from ...errors import MmpiError, MmpiNotImplementedError
from .._bufspec import byteview, parse
from .._const import PROC_NULL
from .._datatype import as_datatype, is_datatype
from .._objects import dumps
from ._context import (Failed, cbase, co_recv, count_check, cr, drive, first_error, oval,
                       xsend)
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
    """The ``n`` blocks of a buffer spec (``n`` may be 0: then the buffer is only
    checked to be a buffer)."""
    if n == 0:
        buf = spec[0] if type(spec) in (list, tuple) and spec else spec
        if buf is not None:
            byteview(buf, writable, what)
        return []
    b = parse(spec, writable, what, blocks=n, vector=vector)
    return [b.block(i) for i in range(n)]


def _wblocks(spec, writable, what, n):
    """The ``n`` blocks of an mpi4py ``w`` spec: ``[buf, (counts, displs), types]`` or
    ``[buf, counts, displs, types]``, displacements in BYTES, one datatype per block;
    ``buf`` may be ``BOTTOM`` (None): the displacements are then absolute addresses
    (``MPI.Get_address``)."""
    if type(spec) not in (list, tuple) or len(spec) not in (3, 4):
        raise MmpiError(f"{what}: pass [buf, (counts, displs), datatypes] (displacements "
                        f"in bytes, one datatype per neighbour), got {spec!r}")
    if len(spec) == 3:
        buf, cd, types = spec
        try:
            counts, displs = cd
        except (TypeError, ValueError):
            raise MmpiError(f"{what}: expected (counts, displs), got {cd!r}") from None
    else:
        buf, counts, displs, types = spec

    def seq(x, name):
        if x is None and n == 0:
            return []
        try:
            xs = list(x)
        except TypeError:
            raise MmpiError(f"{what}: {name} must be a sequence of {n} items") from None
        if len(xs) != n:
            raise MmpiError(f"{what}: {name} has {len(xs)} entries; this rank has {n} "
                            f"neighbours in that direction")
        return xs

    counts, displs = seq(counts, "counts"), seq(displs, "displacements")
    types = seq(types, "datatypes")
    sizes = []
    for c, d, t in zip(counts, displs, types):
        if not is_datatype(t):
            raise MmpiError(f"{what}: {t!r} is not a datatype")
        dt = as_datatype(t)
        if not dt or not dt.is_predefined:   # (null, or derived)
            raise MmpiNotImplementedError(
                f"{what}: datatype {dt.name or dt!r} is not a predefined datatype; driller "
                f"moves count x size contiguous bytes per block at a byte displacement")
        c, d = int(c), int(d)
        if c < 0:
            raise MmpiError(f"{what}: negative count {c}")
        sizes.append((d, c * dt.size))
    if buf is None:   # MPI.BOTTOM: absolute addresses
        out = []
        for d, nb in sizes:
            if nb and d <= 0:
                raise MmpiError(f"{what}: with MPI.BOTTOM each displacement is an address "
                                f"(MPI.Get_address), got {d}")
            out.append(_linux.memory_at(d, nb, readonly=not writable) if nb
                       else memoryview(bytearray(0)))
        return out
    mv = byteview(buf, writable, what)
    out = []
    for i, (d, nb) in enumerate(sizes):
        if d < 0 or d + nb > len(mv):
            raise MmpiError(f"{what}: block {i} ({nb} bytes at byte displacement {d}) "
                            f"overruns the {len(mv)}-byte buffer")
        out.append(mv[d:d + nb])
    return out


def _empty(n):
    return [memoryview(bytearray(0))] * n


def _allgather(cx, inplan, outplan, sendbuf, recvbuf, what, vector, nonblocking):
    err = None
    try:
        smv = parse(sendbuf, False, what).mv
        rblocks = _blocks(recvbuf, True, what, len(inplan), vector)
    except Exception as e:   # (any bad argument: parsing has no side effect)
        err, smv, rblocks = e, memoryview(b""), _empty(len(inplan))
    base = cbase(cx)
    gen = g_exchange(cx, base, [(r, s, mv) for (r, s), mv in zip(inplan, rblocks)],
                     [(r, s, smv) for r, s in outplan], what, err)
    return _run(cx, gen, nonblocking and err is None)


def _alltoall(cx, inplan, outplan, sendbuf, recvbuf, what, form, nonblocking):
    err = None
    try:
        if form == "w":
            sblocks = _wblocks(sendbuf, False, what, len(outplan))
            rblocks = _wblocks(recvbuf, True, what, len(inplan))
        else:
            sblocks = _blocks(sendbuf, False, what, len(outplan), form == "v")
            rblocks = _blocks(recvbuf, True, what, len(inplan), form == "v")
    except Exception as e:   # (any bad argument: parsing has no side effect)
        err, sblocks, rblocks = e, _empty(len(outplan)), _empty(len(inplan))
    base = cbase(cx)
    gen = g_exchange(cx, base, [(r, s, mv) for (r, s), mv in zip(inplan, rblocks)],
                     [(r, s, mv) for (r, s), mv in zip(outplan, sblocks)], what, err)
    return _run(cx, gen, nonblocking and err is None)


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
