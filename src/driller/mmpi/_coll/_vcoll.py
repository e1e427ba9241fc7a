"""The rest of the buffer collectives' API: nonblocking forms and Alltoallw.

``Igather(v)``, ``Iscatter(v)``, ``Iallgather(v)``, ``Ialltoall(v/w)``, ``Ireduce``,
``Ireduce_scatter(_block)``, ``Iscan``, ``Iexscan`` and the blocking ``Alltoallw``.

Every call parses and checks its arguments first, before it takes a sequence number
or sends anything: an argument error every rank can see (root, op, counts, a bad
spec) is raised on every rank and leaves nobody waiting.  The algorithms are
generators yielding the transport operations they wait on (flat exchanges: one
message per pair of ranks, which is what the ring transport moves best for the
small rank counts of one machine; large messages are still single-copy
rendezvous); ``_nonblocking.CollOp`` advances them at Test/Wait and inside every
progress of the transport, ``drive`` runs them to the end for ``Alltoallw``.
The blocking forms with their shared-memory and direct-access fast paths stay in
``_gather``, ``_alltoall`` and ``_reduce``.
"""

from __future__ import annotations

import struct

import numpy as np

from ...errors import MmpiError, MmpiValueError
from .._bufspec import EMPTY, Buf, intlist, parse, wblocks
from .._const import IN_PLACE
from ._context import (Refused, cbase, check_root, count_check, count_errors, cr, cs, drive,
                       first_error, g_then, notify, refusal, refused_error, refused_of,
                       xrecv, xrecv_r, xsend)
from ._nonblocking import coll_request
from ._ops import SUM, check_op, stand_in
from ._direct import g_exchange
from ._gather import local_copy, own_block
from ._reduce import (g_counts, g_reduce, g_rs_refused, g_rs_scatter_refused, g_scan_refused,
                      red_args, same_type)

__all__ = [
    "Igather", "Igatherv", "Iscatter", "Iscatterv", "Iallgather", "Iallgatherv",
    "Ialltoall", "Ialltoallv", "Ialltoallw", "Alltoallw", "Ireduce", "Ireduce_scatter",
    "Ireduce_scatter_block", "Iscan", "Iexscan",
]


def _checks(cx, ops, rb, what):
    err = count_errors(cx, ops, rb.counts, rb.dtype.itemsize, what)
    if err is not None:
        raise err


# ------------------------------------------------------------------ gather / scatter


def _gather(cx, sendbuf, recvbuf, root, what, vector):
    root = check_root(cx, root, what)
    me, n = cx.rank, cx.size
    if me == root:
        rb = parse(recvbuf, True, what, blocks=n, vector=vector, staged=True)
        sb = None if sendbuf is IN_PLACE or sendbuf is None else parse(sendbuf, False, what)
        err = None if sb is None else local_copy(
            sb.mv, rb.block(me), what, "the root sends {} bytes but its block of the receive "
            "buffer holds {}")
    else:
        try:
            sb, rb, err = parse(sendbuf, False, what), None, None
        except MmpiError:
            notify(cx, (root,), cbase(cx))   # the root must not wait for us
            raise
    return coll_request(cx, g_then(g_gather(cx, sb, rb, root, cbase(cx), what, err),
                                   rb and rb.finish))


def g_gather(cx, sb, rb, root, base, what, err=None):
    me, n = cx.rank, cx.size
    if me != root:
        s = cs(cx, sb.mv, root, base)
        yield [s]
        first_error((s,))
        return
    ops = [(r, cr(cx, rb.block(r), r, base)) for r in range(n) if r != me]
    if ops:
        yield [o for _, o in ops]
    _checks(cx, ops, rb, what)
    if err is not None:
        raise err


def Igather(cx, sendbuf, recvbuf, root=0):
    """Nonblocking Gather."""
    return _gather(cx, sendbuf, recvbuf, root, "Igather", False)


def Igatherv(cx, sendbuf, recvbuf, root=0):
    """Nonblocking Gatherv."""
    return _gather(cx, sendbuf, recvbuf, root, "Igatherv", True)


def _scatter(cx, sendbuf, recvbuf, root, what, vector):
    root = check_root(cx, root, what)
    me, n = cx.rank, cx.size
    if me == root:
        try:
            sb = parse(sendbuf, False, what, blocks=n, vector=vector)
        except MmpiError:
            notify(cx, [r for r in range(n) if r != me], cbase(cx))   # nobody waits for us
            raise
        rb = err = None
        if recvbuf is not IN_PLACE and recvbuf is not None:
            rb = parse(recvbuf, True, what, staged=True)
            err = local_copy(sb.block(me), rb.mv, what, "the root's block holds {} bytes "
                             "but its receive buffer holds {}")
    else:
        sb, rb, err = None, parse(recvbuf, True, what, staged=True), None
    return coll_request(cx, g_then(g_scatter(cx, sb, rb, root, cbase(cx), what, err),
                                   rb and rb.finish))


def g_scatter(cx, sb, rb, root, base, what, err=None):
    me, n = cx.rank, cx.size
    if me != root:
        r = cr(cx, rb.mv, root, base)
        yield [r]
        count_check(cx, r, rb.nbytes, what, root)
        return
    ops = [cs(cx, sb.block(r), r, base) for r in range(n) if r != me]
    if ops:
        yield ops
    first_error(ops)
    if err is not None:
        raise err


def Iscatter(cx, sendbuf, recvbuf, root=0):
    """Nonblocking Scatter."""
    return _scatter(cx, sendbuf, recvbuf, root, "Iscatter", False)


def Iscatterv(cx, sendbuf, recvbuf, root=0):
    """Nonblocking Scatterv."""
    return _scatter(cx, sendbuf, recvbuf, root, "Iscatterv", True)


def _allgather(cx, sendbuf, recvbuf, what, vector):
    me = cx.rank
    rb = parse(recvbuf, True, what, blocks=cx.size, vector=vector, staged=True)
    err = None
    mine = rb.block(me)
    if sendbuf is not IN_PLACE and sendbuf is not None:   # (None: in place, as mpi4py)
        mine, err = own_block(parse(sendbuf, False, what).mv, mine, what, me)
    return coll_request(cx, g_then(g_allgather(cx, rb, mine, cbase(cx), what, err),
                                   rb.finish))


def g_allgather(cx, rb, mine, base, what, err=None):
    me, n = cx.rank, cx.size
    ops = [((me - i) % n, cr(cx, rb.block((me - i) % n), (me - i) % n, base))
           for i in range(1, n)]
    sends = [cs(cx, mine, (me + i) % n, base) for i in range(1, n)]
    if sends:
        yield [o for _, o in ops] + sends
    _checks(cx, ops, rb, what)
    first_error(sends)
    if err is not None:
        raise err


def Iallgather(cx, sendbuf, recvbuf):
    """Nonblocking Allgather."""
    return _allgather(cx, sendbuf, recvbuf, "Iallgather", False)


def Iallgatherv(cx, sendbuf, recvbuf):
    """Nonblocking Allgatherv."""
    return _allgather(cx, sendbuf, recvbuf, "Iallgatherv", True)


# ------------------------------------------------------------------ all-to-all


def _alltoall(cx, sendbuf, recvbuf, what, vector):
    n, me = cx.size, cx.rank
    rb = parse(recvbuf, True, what, blocks=n, vector=vector, staged=True)
    if sendbuf is IN_PLACE:   # the receive buffer's blocks, as they are at the call
        sb = Buf()
        sb.mv = memoryview(bytes(rb.mv))
        sb.dtype, sb.dt, sb.counts, sb.displs = rb.dtype, rb.dt, rb.counts, rb.displs
    else:
        sb = parse(sendbuf, False, what, blocks=n, vector=vector)
    blocks = ([sb.block(r) for r in range(n)], [rb.block(r) for r in range(n)])
    return coll_request(cx, g_then(g_alltoall(cx, blocks, cbase(cx), what), rb.finish))


def g_alltoall(cx, blocks, base, what):
    """Exchange ``sends[r]`` -> rank r, rank r -> ``recvs[r]`` (byte views)."""
    sends, recvs = blocks
    n, me = cx.size, cx.rank
    err = None
    if len(sends[me]) != len(recvs[me]):   # raised after the exchange (see _own)
        err = MmpiError(f"{what}: rank {me} sends itself {len(sends[me])} bytes but its "
                        f"receive block holds {len(recvs[me])}")
    else:
        recvs[me][:] = sends[me]
    ops = [((me - i) % n, cr(cx, recvs[(me - i) % n], (me - i) % n, base))
           for i in range(1, n)]
    out = [cs(cx, sends[(me + i) % n], (me + i) % n, base) for i in range(1, n)]
    if out:
        yield [o for _, o in ops] + out
    for r, o in ops:
        try:
            count_check(cx, o, len(recvs[r]), what, r)
        except MmpiError as e:
            err = err or e
    if err is not None:
        raise err
    first_error(out)


def Ialltoall(cx, sendbuf, recvbuf):
    """Nonblocking Alltoall."""
    return _alltoall(cx, sendbuf, recvbuf, "Ialltoall", False)


def Ialltoallv(cx, sendbuf, recvbuf):
    """Nonblocking Alltoallv."""
    return _alltoall(cx, sendbuf, recvbuf, "Ialltoallv", True)


def _alltoallw(cx, sendbuf, recvbuf, what):
    """The algorithm generator of an Alltoallw (blocks parsed by ``wblocks``)."""
    n = cx.size
    recvs, finish = wblocks(recvbuf, True, what, n)
    if sendbuf is IN_PLACE:   # (staged blocks hold the buffer's bytes too)
        sends = [memoryview(bytes(v)) for v in recvs]
    else:
        sends = wblocks(sendbuf, False, what, n)[0]
    return g_then(g_alltoall(cx, (sends, recvs), cbase(cx), what), finish)


def Alltoallw(cx, sendbuf, recvbuf) -> None:
    """All-to-all with a count, a byte displacement and a datatype per rank."""
    drive(cx.t, _alltoallw(cx, sendbuf, recvbuf, "Alltoallw"))


def Ialltoallw(cx, sendbuf, recvbuf):
    """Nonblocking Alltoallw."""
    return coll_request(cx, _alltoallw(cx, sendbuf, recvbuf, "Ialltoallw"))


# ------------------------------------------------------------------ reductions


def Ireduce(cx, sendbuf, recvbuf, op=SUM, root=0):
    """Nonblocking Reduce."""
    root = check_root(cx, root, "Ireduce")
    try:
        op, sb, rb = red_args(cx, sendbuf, recvbuf, op, "Ireduce", cx.rank == root)
    except Exception as e:
        op = stand_in(op)     # (an invalid op here only: the others' most likely one)
        # refused here only, maybe: this rank's part goes on in the background (the
        # others must not wait for it), the error is raised now
        if cx.size > 1:
            base = cbase(cx)   # (before the refusal: recorded under this call's number)
            coll_request(cx, g_reduce(cx, None, None, op, None, root, base, "Ireduce",
                                      False, refusal(cx, e, "Ireduce")))
        raise
    return coll_request(cx, g_ireduce(cx, sb, rb, op, root, cbase(cx)))


def g_ireduce(cx, sb, rb, op, root, base):
    send = sb.arr()
    if cx.size == 1:
        if rb is not sb:
            np.copyto(rb.arr(), send)
        return
    acc = rb.arr() if rb is not None else None
    res = yield from g_reduce(cx, acc, send, op, sb.dt, root, base, "Ireduce")
    if cx.rank == root and res is not acc:
        np.copyto(acc, res)


def _rs_args(cx, sendbuf, recvbuf, op, what):
    op = check_op(op, what)
    rb = parse(recvbuf, True, what)
    sb = rb if sendbuf is IN_PLACE else parse(sendbuf, False, what)
    same_type(sb, rb, what)
    op.check_buffer(sb.dtype, what)
    return op, sb, rb


def Ireduce_scatter_block(cx, sendbuf, recvbuf, op=SUM):
    """Nonblocking Reduce_scatter_block."""
    what = "Ireduce_scatter_block"
    n = cx.size
    try:
        op, sb, rb = _rs_args(cx, sendbuf, recvbuf, op, what)
        isz = rb.dtype.itemsize
        count = rb.nbytes // isz // n if sendbuf is IN_PLACE else rb.nbytes // isz
        if sendbuf is IN_PLACE and rb.nbytes % (n * isz):
            raise MmpiValueError(f"{what}: with IN_PLACE the receive buffer ({rb.nbytes} "
                                 f"bytes) must hold {n} equal blocks")
        _rs_sizes(cx, sb, rb, [count] * n, what)
    except Exception as e:
        # refused here only, maybe: this rank's part goes on in the background (the
        # others must not wait for it), the error is raised now
        base = cbase(cx)
        coll_request(cx, g_rs_refused(cx, refusal(cx, e, what), 0, stand_in(op), base,
                                      what, False))
        raise
    return coll_request(cx, g_reduce_scatter(cx, sb, rb, [count] * n, op, cbase(cx), what,
                                             sendbuf is IN_PLACE))


def Ireduce_scatter(cx, sendbuf, recvbuf, recvcounts=None, op=SUM):
    """Nonblocking Reduce_scatter (``recvcounts`` None: every rank's receive count)."""
    what = "Ireduce_scatter"
    counts = None
    try:
        op, sb, rb = _rs_args(cx, sendbuf, recvbuf, op, what)
        if recvcounts is not None:
            counts = intlist(recvcounts, cx.size, what, "recvcounts")
            _rs_sizes(cx, sb, rb, counts, what)
    except Exception as e:
        # refused here only, maybe: this rank's part goes on in the background
        base = cbase(cx)
        coll_request(cx, g_exchange(cx, struct.pack("<2q", -1, -1), base + 128, False)
                     if recvcounts is None else
                     g_rs_refused(cx, refusal(cx, e, what), 0, stand_in(op), base, what,
                                  False))
        raise
    base = cbase(cx)

    def g():
        cs_ = counts
        if cs_ is None:
            cs_ = yield from g_counts(cx, rb, sb, base + 128, what)
        yield from g_reduce_scatter(cx, sb, rb, cs_, op, base, what, sendbuf is IN_PLACE)
    return coll_request(cx, g())


def _rs_sizes(cx, sb, rb, counts, what):
    isz = sb.dtype.itemsize
    total = sum(counts)
    if sb.nbytes != total * isz:
        raise MmpiValueError(f"{what}: the send buffer has {sb.nbytes // isz} elements but "
                             f"the counts add up to {total}")
    if rb.nbytes < counts[cx.rank] * isz:
        raise MmpiValueError(f"{what}: the receive buffer ({rb.nbytes} bytes) is smaller "
                             f"than this rank's block ({counts[cx.rank] * isz} bytes)")


def g_reduce_scatter(cx, sb, rb, counts, op, base, what, in_place):
    """Reduce to rank 0, which sends every rank its block (tags base, base + 5)."""
    n, me = cx.size, cx.rank
    isz = sb.dtype.itemsize
    _rs_sizes(cx, sb, rb, counts, what)   # (checked at the call already, but for None)
    send = sb.arr()
    if in_place:
        send = send.copy()
    if n == 1:
        np.copyto(rb.arr()[:counts[0]], send[:counts[0]])
        return
    full = np.empty_like(send) if me == 0 else None
    res = yield from g_reduce(cx, full, send, op, sb.dt, 0, base, what, carry=True)
    if type(res) is Refused:
        yield from g_rs_scatter_refused(cx, res, base)
        raise refused_error(res, what)
    if me == 0:
        displs = [sum(counts[:i]) for i in range(n)]
        ops = [cs(cx, memoryview(res[displs[r]:displs[r] + counts[r]]).cast("B")
                  if counts[r] else EMPTY, r, base + 5) for r in range(1, n)]
        np.copyto(rb.arr()[:counts[0]], res[:counts[0]])
        yield ops
        first_error(ops)
    else:
        r = cr(cx, rb.mv[:counts[me] * isz], 0, base + 5)
        yield [r]
        f = refused_of(r) if r.exc is not None else None
        if f is not None:
            raise refused_error(f, what)
        count_check(cx, r, counts[me] * isz, what, 0)


def _scan(cx, sendbuf, recvbuf, op, what, exclusive):
    try:
        op, sb, rb = red_args(cx, sendbuf, recvbuf, op, what)
    except Exception as e:
        # refused here only, maybe: this rank's part goes on in the background (the
        # ranks after it must not wait), the error is raised now
        base = cbase(cx)
        coll_request(cx, g_scan_refused(cx, refusal(cx, e, what), base, True))
        raise
    mine = sb.arr().copy() if sendbuf is IN_PLACE else sb.arr()
    return coll_request(cx, g_scan(cx, mine, rb, op, sb.dt, cbase(cx), what, exclusive))


def g_scan(cx, mine, rb, op, dt, base, what, exclusive):
    """Linear chain: rank r gets the prefix of 0..r-1 from r-1 and passes its own on."""
    n, me = cx.size, cx.rank
    acc = rb.arr()
    if me == 0:
        part = mine
        if not exclusive:
            np.copyto(acc, mine)
    else:
        prev = np.empty_like(mine)
        f = yield from xrecv_r(cx, memoryview(prev).cast("B") if prev.size else
                               memoryview(bytearray(0)), me - 1, base, False, what)
        if f is not None:   # carried on down the chain
            yield from g_scan_refused(cx, f, base, False)
            raise refused_error(f, what)
        if exclusive:
            np.copyto(acc, prev)
        part = op.lohi(prev, mine.copy(), dt)
        if not exclusive:
            np.copyto(acc, part)
    if me + 1 < n:
        s = xsend(cx, memoryview(part).cast("B") if part.size else EMPTY, me + 1, base)
        if s is not None:
            yield [s]
            first_error((s,))


def Iscan(cx, sendbuf, recvbuf, op=SUM):
    """Nonblocking Scan (inclusive prefix reduction)."""
    return _scan(cx, sendbuf, recvbuf, op, "Iscan", False)


def Iexscan(cx, sendbuf, recvbuf, op=SUM):
    """Nonblocking Exscan (exclusive prefix reduction)."""
    return _scan(cx, sendbuf, recvbuf, op, "Iexscan", True)
