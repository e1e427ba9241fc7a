"""All-to-all exchanges (buffers, vector form, objects)."""

from __future__ import annotations

from ...errors import MmpiError
from .._bufspec import EMPTY, Buf, parse
from .._const import IN_PLACE
from ._context import (cbase, co_recv, co_send, co_send_r, count_check, cr, cs, first_error,
                       obj_items, oval, oval_r, raise_failed, waitall)

__all__ = [
    "Alltoall", "Alltoallv", "alltoall", "send_blocks",
]


def Alltoall(cx, sendbuf, recvbuf) -> None:
    buf_alltoall(cx, sendbuf, recvbuf, "Alltoall", False)


def Alltoallv(cx, sendbuf, recvbuf) -> None:
    buf_alltoall(cx, sendbuf, recvbuf, "Alltoallv", True)


def buf_alltoall(cx, sendbuf, recvbuf, what, vector):
    rb = parse(recvbuf, True, what, blocks=cx.size, vector=vector, staged=True)
    try:
        _alltoall(cx, sendbuf, rb, what, vector)
    finally:
        rb.finish()   # (a derived datatype's staged blocks: into the user's buffer)


def send_blocks(sendbuf, rb: Buf, n: int, me: int, what: str, vector: bool) -> Buf:
    """An all-to-all's send buffer (IN_PLACE: a copy of the receive buffer), checked
    against this rank's own receive block; raises MmpiError."""
    if sendbuf is IN_PLACE:
        sb = Buf()
        sb.mv = memoryview(bytes(rb.mv))
        sb.dtype, sb.dt, sb.counts, sb.displs = rb.dtype, rb.dt, rb.counts, rb.displs
    else:
        sb = parse(sendbuf, False, what, blocks=n, vector=vector)
    if len(sb.block(me)) != len(rb.block(me)):
        raise MmpiError(f"{what}: rank {me} sends itself {len(sb.block(me))} bytes but "
                        f"its receive block holds {len(rb.block(me))}")
    return sb


def _alltoall(cx, sendbuf, rb, what, vector):
    n, me = cx.size, cx.rank
    base = cbase(cx)
    try:
        sb = send_blocks(sendbuf, rb, n, me, what, vector)
    except MmpiError:
        # every peer still gets a block (empty: its size check raises there) and every
        # peer's block is taken, so that nobody waits for this rank
        ops = [cr(cx, rb.block(r), r, base) for r in range(n) if r != me]
        ops += [cs(cx, EMPTY, r, base) for r in range(n) if r != me]
        waitall(cx.t, ops)
        raise
    isz = rb.dtype.itemsize
    rb.block(me)[:] = sb.block(me)
    if n == 1:
        return
    ops = []
    for i in range(1, n):
        r = (me - i) % n
        ops.append((r, cr(cx, rb.block(r), r, base)))
    sends = [cs(cx, sb.block((me + i) % n), (me + i) % n, base) for i in range(1, n)]
    waitall(cx.t, [o for _, o in ops] + sends)
    for r, o in ops:
        count_check(cx, o, rb.counts[r] * isz, what, r)
    first_error(sends)


def alltoall(cx, sendobj):
    n, me = cx.size, cx.rank
    items, err = obj_items(sendobj, n, "alltoall", me)
    base = cbase(cx)
    ops = [((me - i) % n, co_recv(cx, (me - i) % n, base)) for i in range(1, n)]
    sent = [co_send_r(cx, items[(me + i) % n], (me + i) % n, base, "alltoall")
            for i in range(1, n)]          # (unpicklable: a Refused in its place)
    sends = [o for o, _ in sent]
    waitall(cx.t, [o for _, o in ops] + sends)
    err = err or next((e for _, e in sent if e is not None), None)
    if err is not None:
        raise err
    out = [None] * n
    out[me] = items[me]
    for r, o in ops:
        out[r] = oval_r(raise_failed(oval(o), "alltoall"), "alltoall")
    first_error(sends)
    return out
