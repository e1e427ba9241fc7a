"""Gather, scatter and allgather (buffers, vector forms, objects)."""

from __future__ import annotations

from ...errors import MmpiError, TruncationError
from .._bufspec import EMPTY, parse
from .._const import IN_PLACE
from ._bcast import g_bcast, g_bcast_refused, g_obcast
from ._context import (INFO, address, cbase, check_root, co_recv, co_send, co_send_r,
                       oval_r, count_check,
                       count_errors, cr, cs, drive, first_error, notify, obj_items, oval,
                       raise_failed, readv, Refused, waitall)
from ._direct import g_direct_ok, g_exchange, g_sync

__all__ = [
    "ALLGATHER_DIRECT", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather", "Allgatherv",
    "g_ogather", "checked", "gather", "scatter", "allgather",
    "local_copy", "own_block", "buf_gather", "buf_scatter", "buf_allgather", "root_own_send",
    "root_own_recv",
]

ALLGATHER_DIRECT = True


def Gather(cx, sendbuf, recvbuf, root=0) -> None:
    buf_gather(cx, sendbuf, recvbuf, root, "Gather", False)


def Gatherv(cx, sendbuf, recvbuf, root=0) -> None:
    buf_gather(cx, sendbuf, recvbuf, root, "Gatherv", True)


def buf_gather(cx, sendbuf, recvbuf, root, what, vector):
    root = check_root(cx, root, what)
    n, me = cx.size, cx.rank
    base = cbase(cx)
    t = cx.t
    if me != root:
        try:
            sb = parse(sendbuf, False, what)
        except MmpiError:
            notify(cx, (root,), base)   # the root must not wait for us
            raise
        s = cs(cx, sb.mv, root, base)
        waitall(t, [s])
        first_error((s,))
        return
    rb = parse(recvbuf, True, what, blocks=n, vector=vector, staged=True)
    try:
        _gather_root(cx, sendbuf, rb, what, base)
    finally:
        rb.finish()   # (a derived datatype's staged blocks: into the user's buffer)


def _gather_root(cx, sendbuf, rb, what, base):
    n, me, t = cx.size, cx.rank, cx.t
    isz = rb.dtype.itemsize
    # the others' blocks are received whatever the root's own contribution: an error
    # found only here is raised after them, so no rank is left waiting
    bad, err = root_own_send(sendbuf, rb.block(me), what)
    ops = [(r, cr(cx, rb.block(r), r, base)) for r in range(n) if r != me]
    waitall(t, [o for _, o in ops])
    if bad is not None:
        raise bad
    for r, o in ops:
        count_check(cx, o, rb.counts[r] * isz, what, r)
    if err is not None:
        raise err


def local_copy(sb, dst, what, wording):
    """Copy a rank's own contribution (``sb``, bytes) into its block ``dst``: a
    longer one is a truncation; a shorter one fills the block's beginning and is an
    error too, as a peer's block of the wrong size is (Open MPI's local copy takes
    it silently).  Returns the error instead of raising it, so the caller completes
    its communication first (only this rank can see it)."""
    if len(sb) > len(dst):
        return TruncationError(f"{what}: " + wording.format(len(sb), len(dst)))
    dst[:len(sb)] = sb
    if len(sb) < len(dst):
        return MmpiError(f"{what}: " + wording.format(len(sb), len(dst)) + ": every rank "
                         "must pass matching counts and datatypes")
    return None


def own_block(sb, mine, what, me):
    """A rank's own contribution ``sb`` to an allgather, copied into its block
    ``mine``: (what it sends its peers, the error it raises once the exchange is
    done, or None).  A shorter one is sent as it is, so that its peers see the
    wrong count and raise too (every rank's block must be whole)."""
    err = local_copy(sb, mine, what, f"rank {me} sends {{}} bytes but its block of the "
                     "receive buffer holds {}")
    return (mine[:len(sb)] if len(sb) < len(mine) else mine), err


def root_own_send(sendbuf, block, what):
    """The root's own contribution to a gather, copied into its ``block`` of the
    receive buffer (IN_PLACE, or None as mpi4py on Open MPI: already there).
    Returns (bad, err): a refused send buffer, to raise once the others' blocks (or
    their empty notices) are in, so none is left waiting; a size mismatch only the
    root sees, raised last."""
    if sendbuf is IN_PLACE or sendbuf is None:
        return None, None
    try:
        sb = parse(sendbuf, False, what).mv
    except MmpiError as e:
        return e, None
    return None, local_copy(sb, block, what, "the root sends {} bytes but its block of "
                            "the receive buffer holds {}")


def root_own_recv(recvbuf, block, what):
    """The root's own ``block`` of a scatter into its receive buffer (IN_PLACE, or
    None as mpi4py on Open MPI: it stays where it is); the error to raise once the
    others have their blocks, or None."""
    if recvbuf is IN_PLACE or recvbuf is None:
        return None
    try:
        rb = parse(recvbuf, True, what, staged=True)
    except MmpiError as e:
        return e
    err = local_copy(block, rb.mv, what, "the root's block holds {} bytes but its "
                     "receive buffer holds {}")
    rb.finish()
    return err


def Scatter(cx, sendbuf, recvbuf, root=0) -> None:
    buf_scatter(cx, sendbuf, recvbuf, root, "Scatter", False)


def Scatterv(cx, sendbuf, recvbuf, root=0) -> None:
    buf_scatter(cx, sendbuf, recvbuf, root, "Scatterv", True)


def buf_scatter(cx, sendbuf, recvbuf, root, what, vector):
    root = check_root(cx, root, what)
    n, me = cx.size, cx.rank
    base = cbase(cx)
    t = cx.t
    if me != root:
        rb = parse(recvbuf, True, what, staged=True)
        r = cr(cx, rb.mv, root, base)
        waitall(t, [r])
        rb.finish()
        count_check(cx, r, rb.nbytes, what, root)
        return
    try:
        sb = parse(sendbuf, False, what, blocks=n, vector=vector)
    except MmpiError:
        notify(cx, [r for r in range(n) if r != me], base)   # nobody waits for us
        raise
    err = root_own_recv(recvbuf, sb.block(me), what)
    ops = [cs(cx, sb.block(r), r, base) for r in range(n) if r != me]
    waitall(t, ops)
    first_error(ops)
    if err is not None:
        raise err


def Allgather(cx, sendbuf, recvbuf) -> None:
    buf_allgather(cx, sendbuf, recvbuf, "Allgather", False)


def Allgatherv(cx, sendbuf, recvbuf) -> None:
    buf_allgather(cx, sendbuf, recvbuf, "Allgatherv", True)


def buf_allgather(cx, sendbuf, recvbuf, what, vector):
    n, me = cx.size, cx.rank
    rb = parse(recvbuf, True, what, blocks=n, vector=vector, staged=True)
    mine = rb.block(me)
    err = None
    send = mine
    if sendbuf is not IN_PLACE and sendbuf is not None:   # (None: in place, as mpi4py)
        try:
            smv = parse(sendbuf, False, what).mv
        except Exception as e:   # (refused) this rank still takes part, with an empty
            err, send = e, EMPTY  # block: the others see it, none waits for it
        else:
            send, err = own_block(smv, mine, what, me)
    # an error in this rank's own contribution is raised once the exchange is done
    try:
        allgather_blocks(cx, rb, send, what, err)
    except MmpiError:
        if err is None:
            raise   # (else this rank's own error, below, says more)
    finally:
        rb.finish()
    if err is not None:
        raise err


def allgather_blocks(cx, rb, mine, what, own_err=None):
    """Every rank's block of ``rb`` to every rank (``mine``: this rank's, which a
    wrong size (``own_err``) or a peer's block of the wrong size makes every rank
    raise)."""
    n, me = cx.size, cx.rank
    isz = rb.dtype.itemsize
    base = cbase(cx)
    if n == 1:
        return
    t = cx.t
    if rb.nbytes <= t.eager_limit:
        # gather to 0, then broadcast the whole receive buffer
        def g():
            if me == 0:
                ops = [(r, cr(cx, rb.block(r), r, base)) for r in range(1, n)]
                yield [o for _, o in ops]
                err = count_errors(cx, ops, rb.counts, isz, what) or own_err
                if err is not None:   # nobody returns as if the blocks were right
                    yield from g_bcast_refused(cx, 0, base + 1, Refused(
                        0, f"got blocks of the wrong size ({err})"), what, len(rb.mv))
                    raise err
            else:
                s = cs(cx, mine, 0, base)
                yield [s]
                first_error((s,))
            yield from g_bcast(cx, rb.mv, 0, base + 1, what, True)
        drive(t, g())
        return
    if not ALLGATHER_DIRECT or not drive(t, g_direct_ok(cx, base, True)):
        ops = []
        for i in range(1, n):
            r = (me - i) % n
            ops.append((r, cr(cx, rb.block(r), r, base)))
        sends = [cs(cx, mine, (me + i) % n, base) for i in range(1, n)]
        waitall(t, [o for _, o in ops] + sends)
        for r, o in ops:
            count_check(cx, o, rb.counts[r] * isz, what, r)
        first_error(sends)
        return

    # large: every rank copies each peer's block once, straight from the peer's
    # memory, then a barrier (nobody reuses a buffer a peer may still read)
    def g():
        info = INFO.pack(address(mine), len(mine), 0, 0, 0)
        table = yield from g_exchange(cx, info, base, True)
        peers = [INFO.unpack_from(table, i * INFO.size) for i in range(n)]
        bad = [r for r in range(n) if peers[r][1] != rb.counts[r] * isz]
        if bad:
            r = bad[0]
            raise MmpiError(f"{what}: rank {r} sends {peers[r][1]} bytes but rank {me} "
                            f"expects {rb.counts[r] * isz} from it: every rank must pass "
                            f"matching counts and datatypes")
        out = address(rb.mv, True)
        for i in range(1, n):
            r = (me + i) % n
            if peers[r][1]:
                readv(cx, r, out + rb.displs[r] * isz, peers[r][0], peers[r][1], what)
        yield from g_sync(cx, base + 16, True)
    drive(t, g())


def g_ogather(cx, obj, root, base, errs=None):
    n, me = cx.size, cx.rank
    if me != root:
        s, err = co_send_r(cx, obj, root, base, "gather")   # (unpicklable: a Refused)
        yield [s]
        first_error((s,))
        if err is not None:
            if errs is None:
                raise err
            errs.append(err)     # (the caller has more to take part in first)
        return None
    ops = [(r, co_recv(cx, r, base)) for r in range(n) if r != me]
    yield [o for _, o in ops]
    out = [None] * n
    out[me] = obj
    for r, o in ops:
        out[r] = oval(o)    # (a Refused where a rank could not send: checked by the caller)
    return out


def checked(vals, what):
    """Gathered objects, or the error of the first :class:`Refused` among them."""
    if vals is not None:
        for v in vals:
            oval_r(v, what)
    return vals


def gather(cx, sendobj, root=0):
    root = check_root(cx, root, "gather")
    return checked(drive(cx.t, g_ogather(cx, sendobj, root, cbase(cx))), "gather")


def scatter(cx, sendobj, root=0):
    root = check_root(cx, root, "scatter")
    n, me = cx.size, cx.rank
    base = cbase(cx)
    t = cx.t
    if me == root:
        items, err = obj_items(sendobj, n, "scatter", me)
        ops = [co_send(cx, items[r], r, base) for r in range(n) if r != me]
        waitall(t, ops)
        if err is not None:
            raise err
        first_error(ops)
        return items[me]
    op = co_recv(cx, root, base)
    waitall(t, [op])
    return raise_failed(oval(op), "scatter")


def allgather(cx, sendobj):
    base = cbase(cx)

    def g():
        out = yield from g_ogather(cx, sendobj, 0, base, errs)
        return (yield from g_obcast(cx, out, 0, base + 1, errs))
    errs: list = []
    out = drive(cx.t, g())
    if errs:
        raise errs[0]
    return list(checked(oval_r(out, "allgather"), "allgather"))
