"""Broadcast of buffers and objects: flat (few ranks, or large: one direct copy
per receiver) or binomial."""

from __future__ import annotations

from ...errors import MmpiError, PeerDiedError, TruncationError
from .._bufspec import message, recv_message
from ._context import (Refused, absorb, brecv_r, cbase, check_root, co_recv, co_recv_any,
                       co_send, co_send_r, drive, first_error, g_sent, oval_r, orecv, oval,
                       refusal, refused_error, refused_of, send_refused, sender, size_hint,
                       waitall, xrecv_r, xsend)

__all__ = [
    "FLAT_MAX", "g_bcast", "g_bcast_refused", "Bcast", "g_obcast", "bcast",
]

FLAT_MAX = 8                # up to this many ranks, small fan-out/fan-in is flat


def g_bcast(cx, mv, root, base, what="Bcast", blk=False):
    """Flat (few ranks, or large: one direct copy per receiver) or binomial.  A
    rank that receives a refusal (:class:`Refused`) instead of the data, or the
    wrong size, sends its subtree the refusal instead of the buffer and raises."""
    n, me = cx.size, cx.rank
    if n == 1:
        return
    nb = len(mv)
    if flat_bcast(cx, nb):
        if me == root:
            ops = [xsend(cx, mv, r, base) for r in range(n) if r != root]
            ops = [o for o in ops if o is not None]
            if ops:
                yield ops
                first_error(ops)
        else:
            f = yield from xrecv_r(cx, mv, root, base, blk, what)
            if f is not None:
                raise refused_error(f, what)
        return
    rel = (me - root) % n
    mask = 1
    err = None
    while mask < n:
        if rel & mask:
            src = (rel - mask + root) % n
            try:
                f = yield from xrecv_r(cx, mv, src, base, blk, what)
            except (MmpiError, TruncationError) as e:
                if isinstance(e, PeerDiedError):
                    raise
                err = e       # the subtree must not hang, nor take this buffer for data
                f = Refused(src, f"sent rank {me} a broadcast it could not take ({e})")
            if f is not None:
                if f.flood and src != root:   # the root sent it to every rank too
                    yield from absorb(cx, root, base, None)
                yield from g_bcast_refused(cx, root, base, f, what, nb, rel=(rel, mask))
                raise err or refused_error(f, what)
            break
        mask <<= 1
    yield from _to_children(cx, rel, mask, root, lambda r: xsend(cx, mv, r, base))


def _to_children(cx, rel, mask, root, send):
    """Send (``send(rank)``, an op or None) to this rank's subtree of the binomial
    broadcast (below ``mask``, the bit it received at), then wait for the sends."""
    n = cx.size
    mask >>= 1
    ops = []
    while mask > 0:
        if rel + mask < n:
            ops.append(send((rel + mask + root) % n))
        mask >>= 1
    ops = [o for o in ops if o is not None]
    if ops:
        yield ops
        first_error(ops)


def flat_bcast(cx, nb: int) -> bool:
    """Whether a broadcast of ``nb`` bytes is flat (else binomial)."""
    return cx.size <= FLAT_MAX or nb > cx.t.eager_limit


def g_bcast_refused(cx, root, base, f, what, nb, rel=None):
    """A broadcast on a rank that refused its arguments (or learnt that the data will
    not come: ``f``): it takes what comes to it and sends ``f`` to the ranks it would
    have sent the data to, so none waits and none takes garbage for data (a
    generator; the caller raises).  ``rel``: (this rank's relative rank, the mask it
    received at), when it has received already and knows the algorithm (of ``nb``
    bytes).

    Otherwise the algorithm depends on a size this rank may not know (``nb`` is a
    guess, beyond FLAT_MAX ranks): a refusing root sends ``f`` to every rank, marked
    ``flood`` (the flat broadcast's messages; a rank of the binomial one that gets it
    from its parent takes the root's too, and passes it on); a refusing non-root
    takes the first message of this broadcast from any rank: from its tree parent (or
    data of the binomial size from the root, its parent), the broadcast is binomial
    and it sends ``f`` on to its subtree; from the root otherwise, it is flat."""
    n, me = cx.size, cx.rank
    if n == 1:
        return
    if rel is not None:
        rel, mask = rel
        yield from _to_children(cx, rel, mask, root, lambda r: send_refused(cx, f, r, base))
        return
    if n <= FLAT_MAX:   # flat, whatever the size
        if me == root:
            yield from g_sent([send_refused(cx, f, r, base) for r in range(n) if r != root])
        else:
            yield from absorb(cx, root, base, f)
        return
    if me == root:
        f = Refused(f.rank, f.text, f.ranks, True)
        yield from g_sent([send_refused(cx, f, r, base) for r in range(n) if r != root])
        return
    rel = (me - root) % n
    mask = rel & -rel
    parent = (rel - mask + root) % n
    r = co_recv_any(cx, base)
    yield [r]
    if r.exc is not None:
        raise r.exc
    src = sender(cx, r)
    g = refused_of(r)
    if g is None:           # data: from the root (flat, or its tree child) or the parent
        binomial = src != root or (parent == root and not flat_bcast(cx, r.count))
    elif src != root:       # only the binomial tree's parents send on
        binomial = True
        if g.flood:
            yield from absorb(cx, root, base, None)
    else:                   # the root refused too: both guess (here, from ``nb``)
        binomial = not flat_bcast(cx, nb)
        if binomial and parent != root:
            yield from absorb(cx, parent, base, None)
    if binomial:
        f = f.merge(g)
        if g is not None and g.flood:
            f = Refused(f.rank, f.text, f.ranks, True)
        yield from _to_children(cx, rel, mask, root, lambda r: send_refused(cx, f, r, base))


def Bcast(cx, buf, root=0) -> None:
    root = check_root(cx, root, "Bcast")
    try:
        if cx.rank == root:
            mv = message(buf, False, "Bcast")    # a derived datatype: packed here
        else:
            mv, unpack = recv_message(buf, "Bcast")
    except Exception as e:   # refused here only, maybe: take part all the same
        try:
            drive(cx.t, g_bcast_refused(cx, root, cbase(cx), refusal(cx, e, "Bcast"),
                                        "Bcast", size_hint(buf)))
        except MmpiError as err:
            if isinstance(err, PeerDiedError):
                raise
        raise
    if cx.rank != root and unpack is not None:   # a derived datatype: staged, then scattered
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
            f = brecv_r(cx, mv, root, base, "Bcast")
            if f is not None:
                raise refused_error(f, "Bcast")
            return
        ops = [xsend(cx, mv, r, base) for r in range(n) if r != root]
        ops = [o for o in ops if o is not None]
        if ops:
            waitall(cx.t, ops)
            first_error(ops)
        return
    drive(cx.t, g_bcast(cx, mv, root, base, "Bcast", True))


def g_obcast(cx, obj, root, base, errs=None):
    """Flat object broadcast; ``errs``: a list for the root's error when the object
    cannot be pickled (the others get a :class:`Refused`), else it is raised."""
    n, me = cx.size, cx.rank
    if me == root:
        sent = [co_send_r(cx, obj, r, base, "bcast") for r in range(n) if r != root]
        ops = [o for o, _ in sent]
        yield ops
        first_error(ops)
        for _, err in sent:
            if err is not None:
                if errs is None:
                    raise err
                errs.append(err)
                break
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
        return oval_r(orecv(cx, root, base), "bcast")
    sent = [co_send_r(cx, obj, r, base, "bcast") for r in range(cx.size) if r != root]
    ops = [o for o, _ in sent if o is not None]
    if ops:
        waitall(cx.t, ops)
        first_error(ops)
    for _, err in sent:
        if err is not None:     # (unpicklable: the others got a Refused)
            raise err
    return obj
