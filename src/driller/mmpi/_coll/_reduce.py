"""Reductions: Reduce, Allreduce, Reduce_scatter(_block), Scan, Exscan (buffers and objects).

Small: binomial-tree reduce, recursive doubling for Allreduce (shared-memory
slots for a small world Allreduce); large (``DIRECT_MIN``): each rank reduces
its slice reading peers directly (``_direct``), then writes it once where it
is needed, and a barrier ends it.
"""

from __future__ import annotations

import struct

import numpy as np

from ...errors import MmpiError, MmpiValueError, PeerDiedError, TruncationError
from .._bufspec import EMPTY, as_bytes, intlist, parse
from .._const import IN_PLACE
from ._bcast import g_bcast, g_bcast_refused
from ._context import (Refused, absorb, address, brecv_r, bsend, cbase, check_root, co_recv,
                       co_send_raw,
                       co_send, co_send_r, oval_r, count_check, cr, cs, drive, first_error, g_sent, orecv, oval, refusal,
                       refused_error, refused_of, send_refused, size_error, size_hint, waitall,
                       writev, xrecv, xrecv_r, xsend)
from ._direct import (direct_part, g_direct_ok, g_direct_reduce, g_direct_refused,
                      g_direct_vote, g_exchange, g_same_size, g_sync, split_counts)
from ._gather import checked, g_ogather
from ._ops import SUM, Op, check_op, stand_in
from ._shm import SHM_MAX, shm_allreduce, shm_refused

__all__ = [
    "DIRECT_MIN", "FAST_MAX", "g_reduce", "Reduce", "Allreduce", "g_allreduce",
    "Reduce_scatter_block", "Reduce_scatter", "g_counts", "red_args", "same_type", "Scan", "Exscan", "reduce", "allreduce", "scan",
    "exscan", "g_scan_refused",
]

DIRECT_MIN = 1 << 19        # reductions of at least this many bytes read peers directly
FAST_MAX = 1 << 14          # Allreduce of at most this many bytes: the plain blocking path


def red_args(cx, sendbuf, recvbuf, op, what, recv_needed=True):
    op = check_op(op, what)
    rb = parse(recvbuf, True, what) if recv_needed else None
    if sendbuf is IN_PLACE:
        if rb is None:
            raise MmpiError(f"{what}: IN_PLACE is only valid at the root")
        sb = rb
    else:
        sb = parse(sendbuf, False, what)
    if rb is not None and (rb.nbytes != sb.nbytes or rb.dtype != sb.dtype):
        same_type(sb, rb, what)
        raise MmpiValueError(f"{what}: mismatch in send count {sb.nbytes // sb.dtype.itemsize}"
                             f" and receive count {rb.nbytes // rb.dtype.itemsize}: the send "
                             f"and receive buffers must hold the same count and datatype")
    op.check_buffer(sb.dtype, what)
    return op, sb, rb


def same_type(sb, rb, what) -> None:
    """A reduction's send and receive buffers have one datatype (a ValueError, as mpi4py's)."""
    if rb is not sb and rb.dtype != sb.dtype:
        raise MmpiValueError(f"{what}: mismatch in send and receive datatypes ({sb.dt.name} "
                             f"and {rb.dt.name}): a reduction's buffers hold one datatype")


def g_reduce(cx, acc, send, op, dt, root, base, what, blk=False, fail=None, carry=False):
    """Binomial-tree reduce.  ``acc``: writable array for the running result
    (None: allocate when needed); ``send``: this rank's data (array).
    Returns the array holding the result at ``root`` (None elsewhere).

    ``fail``: this rank refused its arguments (a :class:`Refused`; ``send`` None):
    it still takes its children's parts (dropped) and sends the refusal up instead
    of data.  A rank that receives a refusal carries it on the same way and raises
    it at the end (the refusing rank returns None: its caller raises its own error),
    so every rank of the tree ends in the same round (``carry``: it returns the
    refusal instead of raising it, for a caller that carries it on)."""
    n, me = cx.size, cx.rank
    own = fail
    troot = root if op.commute else 0
    rel = (me - troot) % n
    cur = send            # holds the lower ranks' partial result
    owned = False
    mask = 1
    tmp = None
    while mask < n:
        if rel & mask:
            dst = (rel - mask + troot) % n
            yield from g_sent([xsend(cx, as_bytes(cur), dst, base) if fail is None
                               else send_refused(cx, fail, dst, base)])
            cur = None
            break
        child = rel + mask
        if child < n:
            src = (child + troot) % n
            if fail is not None:
                fail = yield from absorb(cx, src, base, fail)
                mask <<= 1
                continue
            if tmp is None:
                tmp = np.empty_like(send)
            try:
                fail = yield from xrecv_r(cx, as_bytes(tmp), src, base, blk, what)
            except (MmpiError, TruncationError) as e:   # a part of the wrong size: the
                if isinstance(e, PeerDiedError):      # tree carries it on as a refusal
                    raise                             # (its ranks must not wait for us)
                fail = Refused(me, f"got a part of the wrong size ({e})")
            if fail is not None:
                mask <<= 1
                continue
            if not owned:
                if acc is None:
                    cur = cur.copy()
                elif acc is not cur:
                    np.copyto(acc, cur)
                    cur = acc
                owned = True
            res = op.lohi(cur, tmp, dt)
            if res is tmp:
                tmp = cur
            cur = res
        mask <<= 1
    if troot != root:
        if me == troot:
            yield from g_sent([xsend(cx, as_bytes(cur), root, base + 1) if fail is None
                               else send_refused(cx, fail, root, base + 1)])
        elif me == root:
            if fail is not None:
                fail = yield from absorb(cx, troot, base + 1, fail)
            else:
                res = acc if acc is not None else np.empty_like(send)
                fail = yield from xrecv_r(cx, as_bytes(res), troot, base + 1, blk, what)
                if fail is None:
                    return res
    if fail is not None:
        if own is not None:
            return None
        if carry:
            return fail
        raise refused_error(fail, what)
    return cur if me == root and troot == root else None


def g_reduce_refused(cx, e, hint, op, root, base, what, blk):
    """This rank refused its arguments of a Reduce to ``root`` (the error ``e``): it
    takes part in g_reduce (or g_reduce_large: the same messages from it, but on the
    tree's root, which sends the others the table of the large one: there ``hint``,
    its :func:`size_hint`, decides), carrying the refusal instead of data (a
    generator)."""
    if cx.size == 1:
        return
    f = refusal(cx, e, what)
    if cx.rank == (root if op.commute else 0):
        yield from g_troot_refused(cx, f, root, base, hint)
        return
    yield from g_reduce(cx, None, None, op, None, root, base, what, blk, f)


def g_troot_refused(cx, f, root, base, hint):
    """The tree's root (this rank) refused its arguments of a Reduce (``f``): it takes
    its children's messages, which say which of g_reduce and g_tree_table the others
    run (data, or an object: a part of the table), and ends that one's round: the
    refusal to every rank waiting for the table, or to the root waiting for the
    result.  ``hint`` (its :func:`size_hint`) decides only if every child refused."""
    n, me = cx.size, cx.rank
    large = None
    mask = 1
    while mask < n:
        r = co_recv(cx, (me + mask) % n, base)
        yield [r]
        if r.exc is not None:
            raise r.exc
        g = refused_of(r)
        if g is not None:
            f = f.merge(g)
        elif large is None:
            large = r.value[0] is not None
        mask <<= 1
    if large is None:
        large = hint >= DIRECT_MIN
    if large:
        yield from g_sent([send_refused(cx, f, r, base + 1) for r in range(n)
                           if r != me and (r not in f.ranks or r == root)])
    elif root != me:
        yield from g_sent([send_refused(cx, f, root, base + 1)])


def refused_part(cx, gen) -> None:
    """Run a refusing rank's part (:func:`g_reduce_refused` and friends) to its end;
    the errors the others raise because of it are not this rank's to raise (the
    caller raises its own), a peer's death is."""
    try:
        drive(cx.t, gen)
    except MmpiError as err:
        if isinstance(err, PeerDiedError):
            raise


def Reduce(cx, sendbuf, recvbuf, op=SUM, root=0) -> None:
    root = check_root(cx, root, "Reduce")
    me = cx.rank
    try:
        op, sb, rb = red_args(cx, sendbuf, recvbuf, op, "Reduce", me == root)
    except Exception as e:   # refused here only, maybe: take part all the same
        op = stand_in(op)     # (an invalid op here only: the others' most likely one)
        refused_part(cx, g_reduce_refused(cx, e, size_hint(recvbuf, sendbuf), op, root,
                                          cbase(cx), "Reduce", True))
        raise
    base = cbase(cx)
    n = cx.size
    send = sb.arr()
    if n == 1:
        if rb is not None and sb is not rb:
            np.copyto(rb.arr(), send)
        return
    if sb.nbytes >= DIRECT_MIN and send.size >= n:
        drive(cx.t, g_reduce_large(cx, sb, rb, op, root, base, sendbuf is IN_PLACE))
        return
    acc = rb.arr() if rb is not None else None
    res = drive(cx.t, g_reduce(cx, acc, send, op, sb.dt, root, base, "Reduce", True))
    if me == root and res is not acc:
        np.copyto(acc, res)


RINFO = struct.Struct("<7q")   # Reduce's record: INFO's, then world block address, single copy


def g_tree_table(cx, rec, troot, root, base, blk, what, fail=None):
    """Every rank's record ``rec`` (fixed size), gathered up g_reduce's binomial tree
    to ``troot`` (tag base), which sends the table to every rank (tag base + 1).

    The messages up the tree are g_reduce's: a rank that refused its arguments
    (``fail``, ``rec`` None) does exactly what it does in g_reduce (takes its
    children's messages, sends its refusal up, is done), whichever of the two the
    others run (it cannot know the size that decides).  ``troot`` then sends the
    refusal instead of the table to every rank but the refusing ones (which wait for
    nothing more), the root included (it waits for troot in g_reduce too); the others
    raise it.  Returns the table in rank order (None on a refusing rank)."""
    n, me = cx.size, cx.rank
    own = fail
    k = RINFO.size
    rel = (me - troot) % n
    parts = bytearray(rec) if fail is None else None    # relative ranks rel, rel + 1, ...
    mask = 1
    while mask < n:
        if rel & mask:
            dst = (rel - mask + troot) % n
            # (the parts go flagged as objects: a tree root that refused its arguments
            # tells them from g_reduce's data, and so learns which of the two the
            # others run; unpickled, marked by a first byte no pickle starts with)
            yield from g_sent([co_send_raw(cx, b"T" + parts, dst, base) if fail is None
                               else send_refused(cx, fail, dst, base)])
            break
        child = rel + mask
        if child < n:
            src = (child + troot) % n
            if fail is not None:
                fail = yield from absorb(cx, src, base, fail)
            else:
                r = co_recv(cx, src, base)
                yield [r]
                fail = table_part(cx, r, k * min(mask, n - child), src, what)
                if type(fail) is bytes:
                    parts += fail
                    fail = None
        mask <<= 1
    if rel:
        if own is not None and (me != root or troot == root):
            return None
        table = bytearray(k * n)
        f = yield from xrecv_r(cx, memoryview(table), troot, base + 1, blk, what)
        fail = f.merge(fail) if f is not None else fail
        if own is not None:
            return None
        if fail is not None:
            raise refused_error(fail, what)
        return bytes(table)
    if fail is not None:
        yield from g_sent([send_refused(cx, fail, r, base + 1) for r in range(n)
                           if r != me and (r not in fail.ranks
                                           or (r == root and troot != root))])
        if own is not None:
            return None
        raise refused_error(fail, what)
    table = bytearray(k * n)
    for r in range(n):
        j = (r - troot) % n
        table[r * k:(r + 1) * k] = parts[j * k:(j + 1) * k]
    ops = [xsend(cx, memoryview(table), r, base + 1) for r in range(n) if r != me]
    ops = [o for o in ops if o is not None]
    if ops:
        yield ops
        first_error(ops)
    return bytes(table)


def table_part(cx, r, expect: int, src: int, what: str):
    """A finished object receive of g_tree_table: the part of the table (bytes) or the
    sender's :class:`Refused`; anything else is a size mismatch between ranks."""
    if r.exc is not None:
        raise r.exc
    v = r.value
    s = v[0]
    if s is not None:
        if s[:1] == b"T":
            if len(s) == expect + 1:
                return bytes(s[1:])
        else:
            f = refused_of(r)
            if f is not None:
                return f
    raise size_error(cx, expect, src, r.count - (s is not None), what)


def g_reduce_large(cx, sb, rb, op, root, base, in_place):
    """A large Reduce: every rank's buffer address and size, gathered up g_reduce's
    tree (:func:`g_tree_table`: a rank that refused its arguments takes the same part
    there whatever the size), agree everywhere; then the direct reduce (or, reads
    denied, g_reduce's messages, tags base + 32, 33)."""
    n, me = cx.size, cx.rank
    t = cx.t
    isz = sb.dtype.itemsize
    rec = RINFO.pack(address(sb.mv), sb.nbytes, sb.dtype.num, isz,
                     address(rb.mv, True) if me == root else 0, t.base,
                     1 if t.single_copy else 0)
    troot = root if op.commute else 0
    table = yield from g_tree_table(cx, rec, troot, root, base, True, "Reduce")
    peers = [RINFO.unpack_from(table, i * RINFO.size) for i in range(n)]
    for i, p in enumerate(peers):
        if p[1] != sb.nbytes or p[3] != isz:
            raise MmpiError(f"Reduce: rank {i} passes {p[1]} bytes but rank {me} passes "
                            f"{sb.nbytes}: every rank must pass the same count and datatype")
    ok = cx.direct_ok
    if ok is None:
        ok = yield from g_direct_vote(cx, [(p[5], p[6]) for p in peers], base, True)
    if ok:
        yield from g_reduce_direct(cx, sb, rb, op, root, base, in_place,
                                   [p[:5] for p in peers])
        return
    acc = rb.arr() if rb is not None else None     # reads denied: messages instead
    res = yield from g_reduce(cx, acc, sb.arr(), op, sb.dt, root, base + 32, "Reduce", True)
    if me == root and res is not acc:
        np.copyto(acc, res)


def g_reduce_direct(cx, sb, rb, op, root, base, in_place, peers):
    """Direct reduce: every rank reduces its slice (reading peers' buffers, whose
    addresses ``peers`` holds) and writes it once into the root's receive buffer
    (process_vm_writev); a barrier ends it (nobody reuses a buffer a peer may still
    read)."""
    n, me = cx.size, cx.rank
    isz = sb.dtype.itemsize
    count = sb.nbytes // isz
    counts, displs = split_counts(cx, count, isz)
    my = np.empty(counts[me], sb.dtype) if (me != root) else \
        rb.arr()[displs[me]:displs[me] + counts[me]]
    direct_part(cx, sb.mv, my, op, sb.dtype, sb.dt, counts, displs, "Reduce",
                in_place and me == root, peers)
    if me != root and counts[me]:
        # (IN_PLACE at the root: its slice ``me`` is read only by us, and we are done)
        writev(cx, root, my.ctypes.data, peers[root][4] + displs[me] * isz,
                     counts[me] * isz, "Reduce")
    yield from g_sync(cx, base + 16, True)
    del my


def Allreduce(cx, sendbuf, recvbuf, op=SUM) -> None:
    if (type(recvbuf) is np.ndarray and recvbuf.nbytes <= FAST_MAX and type(op) is Op
            and op.ufunc is not None and cx.size > 1):
        # the common small case without generators: contiguous arrays, builtin op
        rf = recvbuf.flags
        if rf.c_contiguous and rf.writeable and (
                sendbuf is IN_PLACE or (type(sendbuf) is np.ndarray
                                        and sendbuf.dtype == recvbuf.dtype
                                        and sendbuf.size == recvbuf.size
                                        and sendbuf.flags.c_contiguous)):
            op.check_buffer(recvbuf.dtype, "Allreduce")
            acc = recvbuf.reshape(-1)
            if sendbuf is not IN_PLACE:
                np.copyto(acc, sendbuf.reshape(-1))
            base = cbase(cx)
            if (cx.shm and acc.nbytes <= SHM_MAX
                    and shm_allreduce(cx, acc, op)):
                return
            allreduce_small(cx, acc, op, base)
            return
    drive(cx.t, g_allreduce(cx, sendbuf, recvbuf, op, "Allreduce", True))


def allreduce_small(cx, acc, op, base):
    """Blocking recursive doubling for small buffers and builtin ops (the same
    schedule as g_allreduce_rd, without the generator machinery).  A refusal met
    on the way is carried on by :func:`g_rd_refused`."""
    n, me = cx.size, cx.rank
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    amv = memoryview(acc).cast("B")
    tmp = np.empty_like(acc)
    tmv = memoryview(tmp).cast("B")
    uf = op.ufunc
    if me < 2 * rem:
        if me % 2 == 0:
            bsend(cx, amv, me + 1, base)
            f = brecv_r(cx, amv, me + 1, base + 255, "Allreduce")
            if f is not None:
                raise refused_error(f, "Allreduce")
            return
        f = brecv_r(cx, tmv, me - 1, base, "Allreduce")
        if f is not None:
            drive(cx.t, g_rd_refused(cx, f, base, 1, 1, False))
        uf(acc, tmp, out=acc)
        newrank = me // 2
    else:
        newrank = me - rem
    mask, rnd = 1, 1
    while mask < p:
        pn = newrank ^ mask
        partner = pn * 2 + 1 if pn < rem else pn + rem
        s = xsend(cx, amv, partner, base + rnd)
        f = brecv_r(cx, tmv, partner, base + rnd, "Allreduce")
        if s is not None:
            waitall(cx.t, (s,))
            first_error((s,))
        if f is not None:
            drive(cx.t, g_rd_refused(cx, f, base, mask << 1, rnd + 1, False))
        uf(acc, tmp, out=acc)
        mask <<= 1
        rnd += 1
    if me < 2 * rem:
        bsend(cx, amv, me - 1, base + 255)


def g_rd_refused(cx, f, base, mask, rnd, own):
    """Recursive doubling carrying the refusal ``f`` instead of data, from the round
    of ``mask`` and ``rnd`` on (``mask`` 0: from the start, this rank's own
    refusal): each partner's message is taken and dropped, ``f`` sent in its place,
    so every rank ends in the same round and learns of it (a generator).  Raises
    the refusal at the end, unless ``own`` (the caller raises its own error)."""
    n, me = cx.size, cx.rank
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    if mask == 0:
        if me < 2 * rem:
            if me % 2 == 0:
                yield from g_sent([send_refused(cx, f, me + 1, base)])
                yield from absorb(cx, me + 1, base + 255, f)
                if own:
                    return
                raise refused_error(f, "Allreduce")
            f = yield from absorb(cx, me - 1, base, f)
        mask, rnd = 1, 1
    newrank = me // 2 if me < 2 * rem else me - rem
    while mask < p:
        pn = newrank ^ mask
        partner = pn * 2 + 1 if pn < rem else pn + rem
        s = send_refused(cx, f, partner, base + rnd)
        f = yield from absorb(cx, partner, base + rnd, f)
        yield from g_sent([s])
        mask <<= 1
        rnd += 1
    if me < 2 * rem:
        yield from g_sent([send_refused(cx, f, me - 1, base + 255)])
    if not own:
        raise refused_error(f, "Allreduce")


def shm_path(cx, nbytes, op, blk) -> bool:
    """Whether a world-group Allreduce of ``nbytes`` takes the shared-memory slots:
    a function of what every rank passes alike (size, op, blocking), never of the
    form of the buffers (ranks passing the same data as an array or as a spec must
    meet)."""
    return (blk and cx.shm and nbytes <= SHM_MAX and type(op) is Op and op.ufunc is not None
            and op.user is None)


def g_allreduce(cx, sendbuf, recvbuf, op, what, blk=False, start=None):
    """The Allreduce algorithm (a generator) for these arguments, checked now.  Refused
    here (maybe here only): this rank's part, carrying the refusal, is run by
    ``start(generator)`` (None: to its end, blocking), then the error is raised."""
    try:
        op, sb, rb = red_args(cx, sendbuf, recvbuf, op, what)
    except Exception as e:   # take part all the same
        op = stand_in(op)     # (an invalid op here only: the others' most likely one)
        gen = g_allreduce_refused(cx, e, size_hint(recvbuf, sendbuf), op, cbase(cx), what,
                                  blk)
        if start is None:
            refused_part(cx, gen)
        else:
            start(gen)
        raise
    base = cbase(cx)
    return g_allreduce2(cx, sb, rb, op, base, what, sendbuf is IN_PLACE, blk)


def g_allreduce_refused(cx, e, hint, op, base, what, blk):
    """This rank refused its arguments of an Allreduce (the error ``e``): it takes part
    in the algorithm its peers run for ``hint`` bytes (its :func:`size_hint`),
    carrying the refusal instead of data (a generator; the caller raises ``e``)."""
    n = cx.size
    if n == 1:
        return
    f = refusal(cx, e, what)
    if shm_path(cx, hint, op, blk) and shm_refused(cx, f.text):
        return
    if hint >= DIRECT_MIN:
        yield from g_direct_refused(cx, base, blk, what)
        return
    if op.commute:
        yield from g_rd_refused(cx, f, base, 0, 0, True)
        return
    yield from g_reduce(cx, None, None, op, None, 0, base, what, blk, f)
    yield from g_bcast_refused(cx, 0, base + 2, f, what, hint)


def g_allreduce2(cx, sb, rb, op, base, what, in_place, blk=False):
    n = cx.size
    acc = rb.arr()
    if n == 1:
        if not in_place:
            np.copyto(acc, sb.arr())
        return
    if rb.nbytes >= DIRECT_MIN and acc.size >= n and (yield from g_direct_ok(cx, base, blk)):
        isz = rb.dtype.itemsize
        counts, displs = split_counts(cx, acc.size, isz)
        me = cx.rank
        mine = acc[displs[me]:displs[me] + counts[me]]
        peers = yield from g_direct_reduce(cx, 
            sb.mv, mine, op, sb.dtype, sb.dt, counts, displs, base, what, in_place, blk,
            address(rb.mv, True))
        # write our reduced slice once into every peer's receive buffer.  Safe
        # without a barrier first: only we read slice ``me`` of anyone's buffer
        # (IN_PLACE included), and we are done reading
        if counts[me]:
            off = displs[me] * isz
            src = address(rb.mv, True) + off
            for i in range(1, n):
                r = (me + i) % n
                writev(cx, r, src, peers[r][4] + off, counts[me] * isz, what)
        # nobody leaves (and reuses its buffers) while a peer may still use them
        yield from g_sync(cx, base + 16, blk)
        return
    if rb.nbytes >= DIRECT_MIN and acc.size >= n:  # direct denied: messages instead
        yield from g_same_size(cx, len(sb.mv), sb.dtype.itemsize, base, blk, what)
    send = sb.arr()
    if not in_place:
        np.copyto(acc, send)
    if shm_path(cx, rb.nbytes, op, blk) and shm_allreduce(cx, acc, op):
        return   # (the buffers are not the plain arrays of Allreduce's fast path)
    if op.commute:
        yield from g_allreduce_rd(cx, acc, op, sb.dt, base, what, blk)
        return
    res = yield from g_reduce(cx, acc, acc, op, sb.dt, 0, base, what, blk, carry=True)
    if type(res) is Refused:   # the broadcast carries it on: none waits, none gets garbage
        yield from g_bcast_refused(cx, 0, base + 2, res, what, rb.nbytes)
        raise refused_error(res, what)
    if cx.rank == 0 and res is not acc:
        np.copyto(acc, res)
    yield from g_bcast(cx, rb.mv, 0, base + 2, what, blk)


def g_allreduce_rd(cx, acc, op, dt, base, what, blk=False):
    """Recursive doubling (commutative ops): log2(n) exchange rounds; with n not
    a power of two, the first 2*rem ranks fold pairwise first (MPICH's scheme).
    Every rank combines the same operands in the same tree shape, so the
    results agree bit for bit.  A refusal met on the way is carried on by
    :func:`g_rd_refused`."""
    n, me = cx.size, cx.rank
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    amv = as_bytes(acc)
    tmp = np.empty_like(acc)
    tmv = as_bytes(tmp)
    user = op.user

    def combine():
        if user is None:
            op.ufunc(acc, tmp, out=acc)
        else:
            user(tmp, acc, dt)

    if me < 2 * rem:
        if me % 2 == 0:
            s = xsend(cx, amv, me + 1, base)
            if s is not None:
                yield [s]
                first_error((s,))
            f = yield from xrecv_r(cx, amv, me + 1, base + 255, blk, what)
            if f is not None:
                raise refused_error(f, what)
            return
        f = yield from xrecv_r(cx, tmv, me - 1, base, blk, what)
        if f is not None:
            yield from g_rd_refused(cx, f, base, 1, 1, False)
        combine()
        newrank = me // 2
    else:
        newrank = me - rem
    mask, rnd = 1, 1
    while mask < p:
        pn = newrank ^ mask
        partner = pn * 2 + 1 if pn < rem else pn + rem
        s = xsend(cx, amv, partner, base + rnd)
        f = yield from xrecv_r(cx, tmv, partner, base + rnd, blk, what)
        if s is not None:
            yield [s]
            first_error((s,))
        if f is not None:
            yield from g_rd_refused(cx, f, base, mask << 1, rnd + 1, False)
        combine()
        mask <<= 1
        rnd += 1
    if me < 2 * rem:
        s = xsend(cx, amv, me - 1, base + 255)
        if s is not None:
            yield [s]
            first_error((s,))


def Reduce_scatter_block(cx, sendbuf, recvbuf, op=SUM) -> None:
    n = cx.size
    what = "Reduce_scatter_block"
    try:
        op = check_op(op, what)
        rb = parse(recvbuf, True, what)
        if sendbuf is IN_PLACE:
            if rb.nbytes % n:
                raise MmpiError(f"Reduce_scatter_block: with IN_PLACE the receive buffer "
                                f"({rb.nbytes} bytes) must hold {n} blocks")
            sb = rb
            count = rb.nbytes // rb.dtype.itemsize // n
        else:
            sb = parse(sendbuf, False, what)
            count = rb.nbytes // rb.dtype.itemsize
        rs_check(cx, sb, rb, [count] * n, op, what, sendbuf is IN_PLACE)
    except Exception as e:   # refused here only, maybe: take part all the same
        # (the send buffer holds n receive blocks, or is the receive buffer)
        hint = size_hint(recvbuf) * (1 if sendbuf is IN_PLACE else n) or size_hint(sendbuf)
        base = cbase(cx)     # (before the refusal: it is recorded under this call's number)
        refused_part(cx, g_rs_refused(cx, refusal(cx, e, what), hint, stand_in(op), base,
                                      what))
        raise
    reduce_scatter(cx, sb, rb, [count] * n, op, what, sendbuf is IN_PLACE)


def Reduce_scatter(cx, sendbuf, recvbuf, recvcounts=None, op=SUM) -> None:
    n = cx.size
    what = "Reduce_scatter"
    try:
        op = check_op(op, what)
        rb = parse(recvbuf, True, what)
        sb = rb if sendbuf is IN_PLACE else parse(sendbuf, False, what)
        if recvcounts is not None:
            counts = intlist(recvcounts, n, what, "recvcounts")
            rs_check(cx, sb, rb, counts, op, what, sendbuf is IN_PLACE)
    except Exception as e:   # refused here only, maybe: take part all the same
        base = cbase(cx)
        if recvcounts is None:   # the counts' exchange: a -1 there makes every rank raise
            refused_part(cx, g_exchange(cx, struct.pack("<2q", -1, -1), base, True))
        else:
            refused_part(cx, g_rs_refused(cx, refusal(cx, e, what),
                                          size_hint(recvbuf, sendbuf) * n, stand_in(op), base,
                                          what))
        raise
    if recvcounts is None:   # as mpi4py: every rank's receive count (an allgather)
        counts = drive(cx.t, g_counts(cx, rb, sb, cbase(cx), what, True))
        try:
            rs_check(cx, sb, rb, counts, op, what, sendbuf is IN_PLACE)
        except Exception as e:
            base = cbase(cx)
            refused_part(cx, g_rs_refused(cx, refusal(cx, e, what), sb.nbytes, op,
                                          base, what))
            raise
    reduce_scatter(cx, sb, rb, counts, op, what, sendbuf is IN_PLACE)


def g_rs_refused(cx, f, hint, op, base, what, blk=True):
    """This rank refused its arguments of a Reduce_scatter (``f``): it takes part in
    the algorithm its peers run for ``hint`` bytes (its :func:`size_hint`), carrying
    the refusal instead of data (a generator)."""
    n, me = cx.size, cx.rank
    if n == 1:
        return
    if hint >= DIRECT_MIN and blk:
        yield from g_direct_refused(cx, base, blk, what)
        return
    yield from g_reduce(cx, None, None, op, None, 0, base, what, blk, f)
    yield from g_rs_scatter_refused(cx, f, base)


def g_rs_scatter_refused(cx, f, base):
    """Reduce_scatter's scatter from rank 0 (tag base + 5), with a refusal: rank 0
    sends it to every rank instead of its block, the others take what comes."""
    n, me = cx.size, cx.rank
    if me == 0:
        yield from g_sent([send_refused(cx, f, r, base + 5) for r in range(1, n)])
    else:
        yield from absorb(cx, 0, base + 5, f)


def g_counts(cx, rb, sb, base, what, blk=False):
    """Reduce_scatter's counts when none are given: every rank's receive count (an
    allgather; tags base, base + 1), exchanged with every rank's send count so that
    a send buffer that does not hold the sum is the same error on every rank."""
    isz = rb.dtype.itemsize
    table = yield from g_exchange(cx, struct.pack("<2q", rb.nbytes // isz, sb.nbytes // isz),
                                  base, blk)
    rows = [struct.unpack_from("<2q", table, 16 * i) for i in range(cx.size)]
    for r, (c, _) in enumerate(rows):
        if c < 0:
            raise MmpiError(f"{what}: rank {r} refused its arguments of {what}; no rank got "
                            f"a result: every rank must pass valid arguments")
    counts = [c for c, _ in rows]
    total = sum(counts)
    for r, (_, s) in enumerate(rows):
        if s != total:
            raise MmpiError(f"{what}: rank {r}'s send buffer holds {s} elements but the "
                            f"receive counts add up to {total}")
    return counts


def rs_check(cx, sb, rb, counts, op, what, in_place) -> None:
    """A Reduce_scatter's arguments agree with each other on this rank."""
    isz = sb.dtype.itemsize
    total = sum(counts)
    same_type(sb, rb, what)
    if sb.nbytes != total * isz:
        raise MmpiValueError(f"{what}: the send buffer has {sb.nbytes // isz} elements but "
                             f"the counts add up to {total}")
    if not in_place and rb.nbytes < counts[cx.rank] * isz:
        raise MmpiValueError(f"{what}: the receive buffer ({rb.nbytes} bytes) is smaller "
                             f"than this rank's block ({counts[cx.rank] * isz} bytes)")
    op.check_buffer(sb.dtype, what)


def reduce_scatter(cx, sb, rb, counts, op, what, in_place):
    """Reduce_scatter once ``rs_check`` passed: direct (large) or g_reduce to rank 0,
    which scatters the blocks (a refusal met on the way goes to every rank)."""
    n, me = cx.size, cx.rank
    isz = sb.dtype.itemsize
    displs = [sum(counts[:i]) for i in range(n)]
    base = cbase(cx)
    send = sb.arr()
    if n == 1:
        np.copyto(rb.arr()[:counts[0]], send.copy() if in_place else send)
        return
    t = cx.t
    if sb.nbytes >= DIRECT_MIN and drive(t, g_direct_ok(cx, base, True)):
        if in_place:
            acc = np.empty(counts[me], sb.dtype)
        else:
            acc = rb.arr()[:counts[me]]

        def g():
            yield from g_direct_reduce(cx, sb.mv, acc, op, sb.dtype, sb.dt, counts,
                                             displs, base, what, False, True)
            yield from g_sync(cx, base + 16, True)   # everyone is done reading
        drive(t, g())
        if in_place:
            np.copyto(rb.arr()[:counts[me]], acc)
        return
    if sb.nbytes >= DIRECT_MIN:  # direct denied: messages instead
        drive(t, g_same_size(cx, sb.nbytes, sb.dtype.itemsize, base, True, what))
    # small: reduce to 0, then scatter the blocks
    full = np.empty_like(send) if me == 0 else None
    res = drive(t, g_reduce(cx, full, send, op, sb.dt, 0, base, what, True, carry=True))
    if type(res) is Refused:
        drive(t, g_rs_scatter_refused(cx, res, base))
        raise refused_error(res, what)
    if me == 0:
        ops = []
        for r in range(1, n):
            blk = res[displs[r]:displs[r] + counts[r]]
            ops.append(cs(cx, memoryview(blk).cast("B") if blk.size else EMPTY,
                                r, base + 5))
        np.copyto(rb.arr()[:counts[0]], res[:counts[0]])
        waitall(t, ops)
        first_error(ops)
    else:
        out = rb.mv[:counts[me] * isz]
        r = cr(cx, out, 0, base + 5)
        waitall(t, [r])
        f = refused_of(r) if r.exc is not None else None
        if f is not None:
            raise refused_error(f, what)
        count_check(cx, r, counts[me] * isz, what, 0)


def Scan(cx, sendbuf, recvbuf, op=SUM) -> None:
    buf_scan(cx, sendbuf, recvbuf, op, "Scan", False)


def Exscan(cx, sendbuf, recvbuf, op=SUM) -> None:
    buf_scan(cx, sendbuf, recvbuf, op, "Exscan", True)


def buf_scan(cx, sendbuf, recvbuf, op, what, exclusive):
    """Linear chain: rank r gets the prefix of 0..r-1 from r-1.  A rank that refuses
    its arguments still takes its predecessor's message and sends its successor a
    refusal instead of the prefix (carried on down the chain): the ranks after it
    raise naming it, those before it complete."""
    n, me = cx.size, cx.rank
    try:
        op, sb, rb = red_args(cx, sendbuf, recvbuf, op, what)
    except Exception as e:
        base = cbase(cx)
        refused_part(cx, g_scan_refused(cx, refusal(cx, e, what), base, me > 0))
        raise
    base = cbase(cx)
    t = cx.t
    mine = sb.arr()
    if sendbuf is IN_PLACE:
        mine = mine.copy()
    acc = rb.arr()
    nb = rb.nbytes
    if me == 0:
        part = mine
        if not exclusive:
            np.copyto(acc, mine)
    else:
        prev = np.empty_like(mine)
        r = cr(cx, memoryview(prev).cast("B") if prev.size else EMPTY, me - 1, base)
        waitall(t, [r])
        f = refused_of(r) if r.exc is not None else None
        if f is not None:      # carried on down the chain
            if me + 1 < n:
                s = send_refused(cx, f, me + 1, base)
                if s is not None:
                    waitall(t, [s])
                    first_error((s,))
            raise refused_error(f, what)
        try:
            count_check(cx, r, nb, what, me - 1)
        except MmpiError as e:   # the ranks after us must not wait, nor take garbage
            if me + 1 < n and not isinstance(e, PeerDiedError):
                s = send_refused(cx, Refused(me - 1, f"sent rank {me} a prefix it could not "
                                                     f"take ({e})"), me + 1, base)
                if s is not None:
                    waitall(t, [s])
            raise
        if exclusive:
            np.copyto(acc, prev)
        if me + 1 < n or not exclusive:
            hi = mine.copy()
            part = op.lohi(prev, hi, sb.dt)
            if not exclusive:
                np.copyto(acc, part)
    if me + 1 < n:
        s = cs(cx, memoryview(part).cast("B") if part.size else EMPTY, me + 1, base)
        waitall(t, [s])
        first_error((s,))


def g_scan_refused(cx, f, base, take):
    """A scan's chain on a rank that refused its arguments (or got a refusal, ``f``):
    it takes its predecessor's message (if ``take``) and sends its successor ``f``
    instead of the prefix (a generator)."""
    n, me = cx.size, cx.rank
    if take and me > 0:
        f = yield from absorb(cx, me - 1, base, f)
    if me + 1 < n:
        yield from g_sent([send_refused(cx, f, me + 1, base)])


def g_oreduce(cx, obj, op, root, base):
    vals = checked((yield from g_ogather(cx, obj, root, base)), "reduce")
    if vals is None:
        return None
    acc = vals[0]
    for v in vals[1:]:
        acc = op(acc, v)
    return acc


def reduce(cx, sendobj, op=SUM, root=0):
    root = check_root(cx, root, "reduce")
    try:
        op = check_op(op, "reduce")
    except MmpiError as e:   # an invalid op here only, maybe: a refusal goes to the root
        base = cbase(cx)
        drive(cx.t, g_ogather(cx, refusal(cx, e, "reduce"), root, base, []))
        raise
    return drive(cx.t, g_oreduce(cx, sendobj, op, root, cbase(cx)))


def allreduce(cx, sendobj, op=SUM):
    """Recursive doubling, combining in rank order (``op(lower, higher)``) in
    the same tree shape on every rank: identical results everywhere, even for
    operations that do not really commute (list + list).  An object this rank
    cannot send (unpicklable) or combine (the op raises) becomes a
    :class:`Refused` carried on in its place: every rank ends in the same round,
    this one raising its error, the others an error naming it."""
    errs = []
    acc = sendobj
    base = cbase(cx)
    try:
        op = check_op(op, "allreduce")
    except MmpiError as e:   # an invalid op here only, maybe: carried on as a refusal
        errs.append(e)
        acc = refusal(cx, e, "allreduce")
    n, me = cx.size, cx.rank
    if n == 1:
        return _obj_result(acc, errs, "allreduce")
    t = cx.t
    p = 1 << (n.bit_length() - 1)
    rem = n - p

    def send(obj, dst, tag):
        s, err = co_send_r(cx, obj, dst, tag, "allreduce")
        if err is not None:
            errs.append(err)
            return s, err
        return s, None

    def combine(lo, hi):
        if type(lo) is Refused:
            return lo.merge(hi if type(hi) is Refused else None)
        if type(hi) is Refused:
            return hi
        try:
            return op(lo, hi)
        except Exception as e:
            errs.append(e)
            return Refused(me, f"could not combine the objects of allreduce "
                               f"({type(e).__name__}: {e})")

    def exchange(partner, tag):
        s, err = send(acc, partner, tag)
        v = orecv(cx, partner, tag)
        if s is not None:
            waitall(t, (s,))
            first_error((s,))
        return v

    def sent(obj, dst, tag):
        s, _ = send(obj, dst, tag)
        if s is not None:
            waitall(t, (s,))
            first_error((s,))

    if me < 2 * rem:
        if me % 2 == 0:
            sent(acc, me + 1, base)
            acc = orecv(cx, me + 1, base + 255)
            return _obj_result(acc, errs, "allreduce")
        acc = combine(orecv(cx, me - 1, base), acc)
        newrank = me // 2
    else:
        newrank = me - rem
    mask, rnd = 1, 1
    while mask < p:
        pn = newrank ^ mask
        partner = pn * 2 + 1 if pn < rem else pn + rem
        if errs and type(acc) is not Refused:   # our object could not be sent
            acc = Refused(me, f"could not send its object of allreduce ({errs[0]})")
        other = exchange(partner, base + rnd)
        acc = combine(other, acc) if pn < newrank else combine(acc, other)
        mask <<= 1
        rnd += 1
    if me < 2 * rem:
        if errs and type(acc) is not Refused:
            acc = Refused(me, f"could not send its object of allreduce ({errs[0]})")
        sent(acc, me - 1, base + 255)
    return _obj_result(acc, errs, "allreduce")


def _obj_result(acc, errs, what):
    """An object reduction's result: this rank's own error first, then a refusal."""
    if errs:
        raise errs[0]
    return oval_r(acc, what)


def obj_scan(cx, obj, op, exclusive):
    n, me = cx.size, cx.rank
    what = "exscan" if exclusive else "scan"
    err = None
    try:
        op = check_op(op, what)
    except MmpiError as e:   # an invalid op here only, maybe: carried on as a refusal
        err = e
    base = cbase(cx)
    t = cx.t
    prev = None
    if me > 0:
        r = co_recv(cx, me - 1, base)
        waitall(t, [r])
        prev = oval(r)
    if type(prev) is Refused:
        part = prev
    elif err is not None:
        part = refusal(cx, err, what)
    else:
        try:
            part = obj if me == 0 else op(prev, obj)
        except Exception as e:
            err = e
            part = Refused(me, f"could not combine the objects of {what} "
                               f"({type(e).__name__}: {e})")
    if me + 1 < n:
        s, e2 = co_send_r(cx, part, me + 1, base, what)
        waitall(t, [s])
        first_error((s,))
        err = err or e2
    if err is not None:
        raise err
    return oval_r(prev if exclusive else part, what)


def scan(cx, sendobj, op=SUM):
    return obj_scan(cx, sendobj, op, False)


def exscan(cx, sendobj, op=SUM):
    return obj_scan(cx, sendobj, op, True)
