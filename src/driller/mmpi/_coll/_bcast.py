"""Broadcast of buffers and objects: flat (few ranks, or large: one direct copy
per receiver) or binomial."""

from __future__ import annotations

from ...errors import MmpiError, PeerDiedError, TruncationError
from .._bufspec import message, recv_message
from ._context import (brecv, cbase, check_root, co_recv, co_send, drive, first_error, orecv,
                       oval, waitall, xrecv, xsend)

__all__ = [
    "FLAT_MAX", "g_bcast", "Bcast", "g_obcast", "bcast",
]

FLAT_MAX = 8                # up to this many ranks, small fan-out/fan-in is flat


def g_bcast(cx, mv, root, base, what="Bcast", blk=False):
    """Flat (few ranks, or large: one direct copy per receiver) or binomial."""
    n, me = cx.size, cx.rank
    if n == 1:
        return
    nb = len(mv)
    if n <= FLAT_MAX or nb > cx.t.eager_limit:
        if me == root:
            ops = [xsend(cx, mv, r, base) for r in range(n) if r != root]
            ops = [o for o in ops if o is not None]
            if ops:
                yield ops
                first_error(ops)
        else:
            yield from xrecv(cx, mv, root, base, blk, what)
        return
    rel = (me - root) % n
    mask = 1
    err = None
    while mask < n:
        if rel & mask:
            src = (rel - mask + root) % n
            try:
                yield from xrecv(cx, mv, src, base, blk, what)
            except (MmpiError, TruncationError) as e:
                if isinstance(e, PeerDiedError):
                    raise
                err = e       # forward anyway: the subtree must not hang
            break
        mask <<= 1
    mask >>= 1
    ops = []
    while mask > 0:
        if rel + mask < n:
            ops.append(xsend(cx, mv, (rel + mask + root) % n, base))
        mask >>= 1
    ops = [o for o in ops if o is not None]
    if ops:
        yield ops
        first_error(ops)
    if err is not None:
        raise err


def Bcast(cx, buf, root=0) -> None:
    root = check_root(cx, root, "Bcast")
    if cx.rank == root:
        mv = message(buf, False, "Bcast")    # a derived datatype: packed here
    else:
        mv, unpack = recv_message(buf, "Bcast")
        if unpack is not None:               # a derived datatype: staged, then scattered
            _bcast(cx, mv, root)
            unpack(len(mv))
            return
    _bcast(cx, mv, root)


def _bcast(cx, mv, root) -> None:
    # (a shared-memory-slot Bcast was measured slower: it makes every rank wait
    # for every other, where the flat one only makes receivers wait for the root)
    base = cbase(cx)
    n = cx.size
    if 1 < n <= FLAT_MAX and len(mv) <= cx.t.eager_limit:
        # small and flat, without the generator: straight into/out of the rings
        if cx.rank != root:
            brecv(cx, mv, root, base, "Bcast")
            return
        ops = [xsend(cx, mv, r, base) for r in range(n) if r != root]
        ops = [o for o in ops if o is not None]
        if ops:
            waitall(cx.t, ops)
            first_error(ops)
        return
    drive(cx.t, g_bcast(cx, mv, root, base, "Bcast", True))


def g_obcast(cx, obj, root, base):
    n, me = cx.size, cx.rank
    if me == root:
        ops = [co_send(cx, obj, r, base) for r in range(n) if r != root]
        yield ops
        first_error(ops)
        return obj
    op = co_recv(cx, root, base)
    yield [op]
    return oval(op)


def bcast(cx, obj, root=0):
    root = check_root(cx, root, "bcast")
    base = cbase(cx)
    if cx.size == 1:
        return obj
    if cx.rank != root:   # the object path's fast receive (straight from the ring)
        return orecv(cx, root, base)
    ops = [co_send(cx, obj, r, base) for r in range(cx.size) if r != root]
    ops = [o for o in ops if o is not None]
    if ops:
        waitall(cx.t, ops)
        first_error(ops)
    return obj
