"""Collectives over intercommunicators (MPI's inter semantics), as algorithms over Contexts.

An intercommunicator's :class:`InterContext` is the Context of its local group
(``group``, ``rank``, ``size``: what Get_group/Get_rank/Get_size answer) plus the
``remote`` group; its ``rank_of`` maps world ranks to REMOTE ranks (a status of
point-to-point reports the sender's rank in the remote group).  Its collectives
run on two more Contexts:

* ``bridge``: both groups together, the group holding the lower world rank
  first (the same order on every member of both groups), on the collective
  context ``ctx + 1``; messages between the groups travel on it (remote rank
  ``r`` is bridge rank ``roff + r``), and the inter Barrier is its barrier;
* ``local``: the local group alone, on context ``ctx + 3`` (``ctx + 2``, its
  point-to-point context, is never used): the intra part of the algorithms
  (a reduction within a group, a broadcast within a group).

Rooted calls (MPI's convention): ``root=ROOT`` at the root, ``PROC_NULL`` at the
other ranks of its group, the root's rank in the remote group everywhere in the
other group.  Small groups on one machine: gathers, scatters and all-to-alls
are flat (one message per pair of ranks across the groups, no relay); a
broadcast goes root -> remote leader -> the leader's group, a reduction is
reduced within the sending group first (binomial tree), then sent by its leader.

Each call takes its tag bases when it is made (``cbase`` of the bridge on every
rank of both groups, of ``local`` on every rank of a group whose part uses it),
so that calls in flight (nonblocking) never mix.  Every argument is checked
before the first message, on every rank.
"""

from __future__ import annotations

import numpy as np

from ... import _errcodes as E
from ...errors import MmpiError
from .._bufspec import as_bytes, intlist, message, parse, recv_message, wblocks
from .._const import IN_PLACE, PROC_NULL, ROOT
from ._barrier import Barrier as _barrier, g_barrier
from ._bcast import g_bcast, g_obcast
from ._context import (Context, cbase, co_recv, co_send, count_errors, cr, cs, drive,
                       first_error, g_then, obj_items, oval, raise_failed, xrecv, xsend)
from ._gather import g_ogather
from ._nonblocking import coll_request
from ._ops import check_op
from ._reduce import g_reduce

__all__ = [
    "InterContext", "root_role", "agree_records",
    "Barrier", "Ibarrier", "Bcast", "Ibcast", "bcast", "Gather", "Gatherv", "Igather",
    "Igatherv", "gather", "Scatter", "Scatterv", "Iscatter", "Iscatterv", "scatter",
    "Allgather", "Allgatherv", "Iallgather", "Iallgatherv", "allgather", "Alltoall",
    "Alltoallv", "Alltoallw", "Ialltoall", "Ialltoallv", "Ialltoallw", "alltoall", "Reduce",
    "Ireduce", "reduce", "Allreduce", "Iallreduce", "allreduce", "Reduce_scatter_block",
    "Ireduce_scatter_block", "Reduce_scatter", "Ireduce_scatter",
]


class InterContext(Context):
    """The Context of an intercommunicator: the local group's (``group``, ``rank``,
    ``size``), the ``remote`` group (``rsize``, ``rindex``), and the ``bridge``
    (both groups, ``roff``: bridge rank of remote rank 0; ``loff``: of local
    rank 0) and ``local`` Contexts its collectives run on.  ``low``: this group
    comes first on the bridge."""

    __slots__ = ("remote", "rindex", "rsize", "bridge", "local", "roff", "loff", "low")

    def __init__(self, t, group, remote, ctx: int, name: str = ""):
        super().__init__(t, group, ctx, name)
        self.identity = False
        self.remote = list(remote)
        self.rindex = {w: i for i, w in enumerate(self.remote)}
        self.rsize = len(self.remote)
        if self.rindex.keys() & self.index.keys():
            raise MmpiError(f"an intercommunicator's groups must be disjoint: world ranks "
                            f"{sorted(self.rindex.keys() & self.index.keys())} are in both",
                            error_class=E.ERR_GROUP)
        self.low = min(self.group) < min(self.remote)
        union = self.group + self.remote if self.low else self.remote + self.group
        self.bridge = Context(t, union, ctx)
        self.bridge.identity = False      # never the world's shared-memory paths
        self.local = Context(t, self.group, ctx + 2)
        self.loff = 0 if self.low else self.rsize
        self.roff = self.size if self.low else 0

    def rank_of(self, world_rank: int) -> int:
        """The REMOTE rank of a world rank (point-to-point peers are remote)."""
        return self.rindex.get(world_rank, world_rank)


# ------------------------------------------------------------------ arguments

def root_role(ix, root, what) -> int:
    """ROOT, PROC_NULL (this rank is in the root's group) or the root's rank in
    the remote group (this rank receives from / sends to it)."""
    if isinstance(root, (int, np.integer)) and not isinstance(root, bool):
        root = int(root)
        if root == ROOT or root == PROC_NULL or 0 <= root < ix.rsize:
            return root
    raise MmpiError(f"{what}: invalid root {root!r} on an intercommunicator: pass MPI.ROOT "
                    f"at the root, MPI.PROC_NULL at the other ranks of the root's group, and "
                    f"the root's rank in the remote group (0..{ix.rsize - 1}) in the other "
                    f"group", error_class=E.ERR_ROOT)


def _no_in_place(buf, what, name="sendbuf"):
    if buf is IN_PLACE:
        raise MmpiError(f"{what}: MPI.IN_PLACE is not valid on an intercommunicator "
                        f"(pass a {name})", error_class=E.ERR_BUFFER)


def _check(ix, op, expect, what, r):
    if op.exc is not None:
        raise op.exc
    if op.count != expect:
        raise MmpiError(f"{what}: rank {ix.rank} expected {expect} bytes from remote rank "
                        f"{r} but got {op.count}: both groups must pass matching counts and "
                        f"datatypes", error_class=E.ERR_TRUNCATE if op.count > expect
                        else E.ERR_OTHER)


def _checks(ix, pairs, counts, isz, what):
    err = count_errors(ix, pairs, counts, isz, what, _check)
    if err is not None:
        raise err


def _ops(ops):
    return [o for o in ops if o is not None]


# ------------------------------------------------------------------ barrier

def Barrier(ix) -> None:
    _barrier(ix.bridge)


def Ibarrier(ix):
    return coll_request(ix, g_barrier(ix.bridge, cbase(ix.bridge)))


# ------------------------------------------------------------------ broadcast

def _bcast_gen(ix, buf, root, what, blk):
    role = root_role(ix, root, what)
    # (the tag bases first: an error only this rank sees keeps the others' in step)
    bb = cbase(ix.bridge)
    lb = cbase(ix.local) if role >= 0 else 0
    mv = unpack = None
    if role == ROOT:
        mv = message(buf, False, what)      # a derived datatype: packed here
    elif role >= 0:
        mv, unpack = recv_message(buf, what)   # a derived datatype: staged, then scattered
    gen = g_ibcast(ix, mv, role, bb, lb, what, blk)
    return gen if unpack is None else g_then(gen, lambda: unpack(len(mv)))


def g_ibcast(ix, mv, role, bb, lb, what, blk=False):
    b = ix.bridge
    if role == ROOT:       # to the remote group's leader, which broadcasts in its group
        ops = _ops([xsend(b, mv, ix.roff, bb)])
        if ops:
            yield ops
            first_error(ops)
        return
    if role == PROC_NULL:
        return
    err = None
    if ix.rank == 0:
        try:
            yield from xrecv(b, mv, ix.roff + role, bb, blk, what)
        except MmpiError as e:
            err = e        # forward anyway: the group must not hang
    yield from g_bcast(ix.local, mv, 0, lb, what, blk)
    if err is not None:
        raise err


def Bcast(ix, buf, root) -> None:
    drive(ix.t, _bcast_gen(ix, buf, root, "Bcast", True))


def Ibcast(ix, buf, root):
    return coll_request(ix, _bcast_gen(ix, buf, root, "Ibcast", False))


def bcast(ix, obj, root):
    role = root_role(ix, root, "bcast")
    bb = cbase(ix.bridge)
    lb = cbase(ix.local) if role >= 0 else 0
    return drive(ix.t, g_iobcast(ix, obj, role, bb, lb))


def g_iobcast(ix, obj, role, bb, lb):
    b = ix.bridge
    if role == ROOT:
        ops = _ops([co_send(b, obj, ix.roff, bb)])
        yield ops
        first_error(ops)
        return None
    if role == PROC_NULL:
        return None
    val = None
    if ix.rank == 0:
        op = co_recv(b, ix.roff + role, bb)
        yield [op]
        val = oval(op)
    return (yield from g_obcast(ix.local, val, 0, lb))


# ------------------------------------------------------------------ gather, scatter

def _gather_gen(ix, sendbuf, recvbuf, root, what, vector):
    role = root_role(ix, root, what)
    b = ix.bridge
    bb = cbase(b)
    if role == ROOT:
        rb = parse(recvbuf, True, what, blocks=ix.rsize, vector=vector, staged=True)

        def g():
            pairs = [(r, cr(b, rb.block(r), ix.roff + r, bb)) for r in range(ix.rsize)]
            yield [o for _, o in pairs]
            _checks(ix, pairs, rb.counts, rb.dtype.itemsize, what)
        return g_then(g(), rb.finish)
    if role == PROC_NULL:
        return _nothing()
    _no_in_place(sendbuf, what)
    sb = parse(sendbuf, False, what)

    def g():
        s = cs(b, sb.mv, ix.roff + role, bb)
        yield [s]
        first_error((s,))
    return g()


def _nothing():
    return
    yield  # a generator that ends at once


def Gather(ix, sendbuf, recvbuf, root) -> None:
    drive(ix.t, _gather_gen(ix, sendbuf, recvbuf, root, "Gather", False))


def Gatherv(ix, sendbuf, recvbuf, root) -> None:
    drive(ix.t, _gather_gen(ix, sendbuf, recvbuf, root, "Gatherv", True))


def Igather(ix, sendbuf, recvbuf, root):
    return coll_request(ix, _gather_gen(ix, sendbuf, recvbuf, root, "Igather", False))


def Igatherv(ix, sendbuf, recvbuf, root):
    return coll_request(ix, _gather_gen(ix, sendbuf, recvbuf, root, "Igatherv", True))


def gather(ix, sendobj, root):
    role = root_role(ix, root, "gather")
    b = ix.bridge
    bb = cbase(b)
    if role == PROC_NULL:
        return None

    def g():
        if role == ROOT:
            ops = [co_recv(b, ix.roff + r, bb) for r in range(ix.rsize)]
            yield ops
            return [oval(o) for o in ops]
        ops = _ops([co_send(b, sendobj, ix.roff + role, bb)])
        yield ops
        first_error(ops)
        return None
    return drive(ix.t, g())


def _scatter_gen(ix, sendbuf, recvbuf, root, what, vector):
    role = root_role(ix, root, what)
    b = ix.bridge
    bb = cbase(b)
    if role == ROOT:
        sb = parse(sendbuf, False, what, blocks=ix.rsize, vector=vector)

        def g():
            ops = [cs(b, sb.block(r), ix.roff + r, bb) for r in range(ix.rsize)]
            yield ops
            first_error(ops)
        return g()
    if role == PROC_NULL:
        return _nothing()
    _no_in_place(recvbuf, what, "recvbuf")
    rb = parse(recvbuf, True, what, staged=True)

    def g():
        r = cr(b, rb.mv, ix.roff + role, bb)
        yield [r]
        _check(ix, r, rb.nbytes, what, role)
    return g_then(g(), rb.finish)


def Scatter(ix, sendbuf, recvbuf, root) -> None:
    drive(ix.t, _scatter_gen(ix, sendbuf, recvbuf, root, "Scatter", False))


def Scatterv(ix, sendbuf, recvbuf, root) -> None:
    drive(ix.t, _scatter_gen(ix, sendbuf, recvbuf, root, "Scatterv", True))


def Iscatter(ix, sendbuf, recvbuf, root):
    return coll_request(ix, _scatter_gen(ix, sendbuf, recvbuf, root, "Iscatter", False))


def Iscatterv(ix, sendbuf, recvbuf, root):
    return coll_request(ix, _scatter_gen(ix, sendbuf, recvbuf, root, "Iscatterv", True))


def scatter(ix, sendobj, root):
    role = root_role(ix, root, "scatter")
    b = ix.bridge
    bb = cbase(b)
    if role == PROC_NULL:
        return None
    t = ix.t
    if role == ROOT:
        n = ix.rsize
        items, err = obj_items(sendobj, n, "scatter", ix.rank)

        def g():
            ops = _ops([co_send(b, items[r], ix.roff + r, bb) for r in range(n)])
            yield ops
            first_error(ops)
        drive(t, g())
        if err is not None:
            raise err
        return None

    def g():
        op = co_recv(b, ix.roff + role, bb)
        yield [op]
        return raise_failed(oval(op), "scatter")
    return drive(t, g())


# ------------------------------------------------------------------ allgather, alltoall

def _exchange(ix, sends, recvs, bb):
    """Send ``sends[r]`` to and receive into ``recvs[r]`` from every remote rank r."""
    b = ix.bridge
    n = ix.rsize
    order = [(ix.rank + i) % n for i in range(n)]
    pairs = [(r, cr(b, recvs[r], ix.roff + r, bb)) for r in order]
    ops = [cs(b, sends[r], ix.roff + r, bb) for r in order]
    yield [o for _, o in pairs] + ops
    return pairs, ops


def _allgather_gen(ix, sendbuf, recvbuf, what, vector):
    bb = cbase(ix.bridge)
    _no_in_place(sendbuf, what)
    rb = parse(recvbuf, True, what, blocks=ix.rsize, vector=vector, staged=True)
    sb = parse(sendbuf, False, what)

    def g():
        pairs, ops = yield from _exchange(ix, [sb.mv] * ix.rsize,
                                          [rb.block(r) for r in range(ix.rsize)], bb)
        _checks(ix, pairs, rb.counts, rb.dtype.itemsize, what)
        first_error(ops)
    return g_then(g(), rb.finish)


def Allgather(ix, sendbuf, recvbuf) -> None:
    drive(ix.t, _allgather_gen(ix, sendbuf, recvbuf, "Allgather", False))


def Allgatherv(ix, sendbuf, recvbuf) -> None:
    drive(ix.t, _allgather_gen(ix, sendbuf, recvbuf, "Allgatherv", True))


def Iallgather(ix, sendbuf, recvbuf):
    return coll_request(ix, _allgather_gen(ix, sendbuf, recvbuf, "Iallgather", False))


def Iallgatherv(ix, sendbuf, recvbuf):
    return coll_request(ix, _allgather_gen(ix, sendbuf, recvbuf, "Iallgatherv", True))


def _oexchange(ix, items, what):
    b = ix.bridge
    n = ix.rsize
    bb = cbase(b)

    def g():
        order = [(ix.rank + i) % n for i in range(n)]
        pairs = [(r, co_recv(b, ix.roff + r, bb)) for r in order]
        ops = _ops([co_send(b, items[r], ix.roff + r, bb) for r in order])
        yield [o for _, o in pairs] + ops
        out = [None] * n
        for r, o in pairs:
            out[r] = oval(o)
        first_error(ops)
        for v in out:
            raise_failed(v, what)
        return out
    return drive(ix.t, g())


def allgather(ix, sendobj):
    return _oexchange(ix, [sendobj] * ix.rsize, "allgather")


def alltoall(ix, sendobj):
    items, err = obj_items(sendobj, ix.rsize, "alltoall", ix.rank)
    try:
        out = _oexchange(ix, items, "alltoall")
    except MmpiError:
        if err is None:
            raise
        out = None
    if err is not None:
        raise err
    return out


def _alltoall_gen(ix, sendbuf, recvbuf, what, vector):
    bb = cbase(ix.bridge)
    _no_in_place(sendbuf, what)
    n = ix.rsize
    sb = parse(sendbuf, False, what, blocks=n, vector=vector)
    rb = parse(recvbuf, True, what, blocks=n, vector=vector, staged=True)

    def g():
        pairs, ops = yield from _exchange(ix, [sb.block(r) for r in range(n)],
                                          [rb.block(r) for r in range(n)], bb)
        _checks(ix, pairs, rb.counts, rb.dtype.itemsize, what)
        first_error(ops)
    return g_then(g(), rb.finish)


def Alltoall(ix, sendbuf, recvbuf) -> None:
    drive(ix.t, _alltoall_gen(ix, sendbuf, recvbuf, "Alltoall", False))


def Alltoallv(ix, sendbuf, recvbuf) -> None:
    drive(ix.t, _alltoall_gen(ix, sendbuf, recvbuf, "Alltoallv", True))


def Ialltoall(ix, sendbuf, recvbuf):
    return coll_request(ix, _alltoall_gen(ix, sendbuf, recvbuf, "Ialltoall", False))


def Ialltoallv(ix, sendbuf, recvbuf):
    return coll_request(ix, _alltoall_gen(ix, sendbuf, recvbuf, "Ialltoallv", True))


def _alltoallw_gen(ix, sendbuf, recvbuf, what):
    bb = cbase(ix.bridge)
    _no_in_place(sendbuf, what)
    n = ix.rsize
    sblocks = wblocks(sendbuf, False, what, n)[0]
    rblocks, finish = wblocks(recvbuf, True, what, n)

    def g():
        pairs, ops = yield from _exchange(ix, sblocks, rblocks, bb)
        _checks(ix, pairs, [len(m) for m in rblocks], 1, what)
        first_error(ops)
    return g_then(g(), finish)


def Alltoallw(ix, sendbuf, recvbuf) -> None:
    drive(ix.t, _alltoallw_gen(ix, sendbuf, recvbuf, "Alltoallw"))


def Ialltoallw(ix, sendbuf, recvbuf):
    return coll_request(ix, _alltoallw_gen(ix, sendbuf, recvbuf, "Ialltoallw"))


# ------------------------------------------------------------------ reductions

def _reduce_gen(ix, sendbuf, recvbuf, op, root, what, blk):
    role = root_role(ix, root, what)
    b = ix.bridge
    bb = cbase(b)
    lb = cbase(ix.local) if role >= 0 else 0
    op = check_op(op, what)
    if role == ROOT:
        rb = parse(recvbuf, True, what)

        def g():
            r = cr(b, rb.mv, ix.roff, bb)    # the remote group's leader sends its result
            yield [r]
            _check(ix, r, rb.nbytes, what, 0)
        return g()
    if role == PROC_NULL:
        return _nothing()
    _no_in_place(sendbuf, what)
    sb = parse(sendbuf, False, what)
    op.check_buffer(sb.dtype, what)

    def g():
        res = yield from g_reduce(ix.local, None, sb.arr(), op, sb.dt, 0, lb, what, blk)
        if ix.rank == 0:
            ops = _ops([xsend(b, as_bytes(res), ix.roff + role, bb)])
            if ops:
                yield ops
                first_error(ops)
    return g()


def Reduce(ix, sendbuf, recvbuf, op, root) -> None:
    drive(ix.t, _reduce_gen(ix, sendbuf, recvbuf, op, root, "Reduce", True))


def Ireduce(ix, sendbuf, recvbuf, op, root):
    return coll_request(ix, _reduce_gen(ix, sendbuf, recvbuf, op, root, "Ireduce", False))


def _fold(op, vals):
    acc = vals[0]
    for v in vals[1:]:
        acc = op(acc, v)
    return acc


def reduce(ix, sendobj, op, root):
    role = root_role(ix, root, "reduce")
    op = check_op(op, "reduce")
    b = ix.bridge
    bb = cbase(b)
    if role == PROC_NULL:
        return None
    if role == ROOT:
        def g():
            r = co_recv(b, ix.roff, bb)
            yield [r]
            return oval(r)
        return drive(ix.t, g())
    lb = cbase(ix.local)

    def g():
        vals = yield from g_ogather(ix.local, sendobj, 0, lb)
        if ix.rank == 0:
            ops = _ops([co_send(b, _fold(op, vals), ix.roff + role, bb)])
            yield ops
            first_error(ops)
        return None
    return drive(ix.t, g())


def _allreduce_gen(ix, sendbuf, recvbuf, op, what, blk):
    b = ix.bridge
    bb = cbase(b)
    lb = cbase(ix.local)
    op = check_op(op, what)
    _no_in_place(sendbuf, what)
    sb = parse(sendbuf, False, what)
    rb = parse(recvbuf, True, what)
    if rb.nbytes != sb.nbytes:
        raise MmpiError(f"{what}: send buffer has {sb.nbytes} bytes, receive buffer "
                        f"{rb.nbytes}: they must hold the same count and datatype")
    op.check_buffer(sb.dtype, what)

    def g():
        # reduce within each group, the leaders swap results, each broadcasts its own
        res = yield from g_reduce(ix.local, None, sb.arr(), op, sb.dt, 0, lb, what, blk)
        err = None
        if ix.rank == 0:
            s = xsend(b, as_bytes(res), ix.roff, bb)
            try:
                yield from xrecv(b, rb.mv, ix.roff, bb, blk, what)
            except MmpiError as e:
                err = e
            if s is not None:
                yield [s]
                first_error((s,))
        yield from g_bcast(ix.local, rb.mv, 0, lb + 2, what, blk)
        if err is not None:
            raise err
    return g()


def Allreduce(ix, sendbuf, recvbuf, op) -> None:
    drive(ix.t, _allreduce_gen(ix, sendbuf, recvbuf, op, "Allreduce", True))


def Iallreduce(ix, sendbuf, recvbuf, op):
    return coll_request(ix, _allreduce_gen(ix, sendbuf, recvbuf, op, "Iallreduce", False))


def allreduce(ix, sendobj, op):
    op = check_op(op, "allreduce")
    b = ix.bridge
    bb = cbase(b)
    lb = cbase(ix.local)

    def g():
        vals = yield from g_ogather(ix.local, sendobj, 0, lb)
        theirs = None
        if ix.rank == 0:
            s = co_send(b, _fold(op, vals), ix.roff, bb)
            r = co_recv(b, ix.roff, bb)
            yield _ops([s, r])
            first_error((s,))
            theirs = oval(r)
        return (yield from g_obcast(ix.local, theirs, 0, lb + 2))
    return drive(ix.t, g())


def _rscatter_gen(ix, sendbuf, recvbuf, counts, op, what, blk, bb, lb):
    """Reduce within each group to its leader, the leaders swap the reduced
    vectors, each scatters the other group's result over its group (``counts``)."""
    sb = parse(sendbuf, False, what)
    rb = parse(recvbuf, True, what)
    isz = sb.dtype.itemsize
    total = sum(counts)
    me = ix.rank
    if sb.nbytes != total * isz:
        raise MmpiError(f"{what}: the send buffer has {sb.nbytes // isz} elements but the "
                        f"receive counts of this group add up to {total}")
    if rb.nbytes < counts[me] * isz:
        raise MmpiError(f"{what}: the receive buffer ({rb.nbytes} bytes) is smaller than "
                        f"this rank's block ({counts[me] * isz} bytes)")
    op.check_buffer(sb.dtype, what)
    b = ix.bridge
    loc = ix.local

    def g():
        res = yield from g_reduce(loc, None, sb.arr(), op, sb.dt, 0, lb, what, blk)
        if me != 0:
            r = cr(loc, rb.mv[:counts[me] * isz], 0, lb + 3)
            yield [r]
            if r.exc is not None:
                raise r.exc
            if r.count != counts[me] * isz:
                raise MmpiError(f"{what}: rank {me} expected {counts[me] * isz} bytes of "
                                f"the result but got {r.count}: the groups' counts differ")
            return
        full = np.empty_like(res)
        err = None
        s = xsend(b, as_bytes(res), ix.roff, bb)
        try:
            yield from xrecv(b, as_bytes(full), ix.roff, bb, blk, what)
        except MmpiError as e:
            err = e        # scatter anyway: the group must not hang
        if s is not None:
            yield [s]
            first_error((s,))
        displs = [sum(counts[:i]) for i in range(ix.size)]
        ops = [cs(loc, as_bytes(full[displs[r]:displs[r] + counts[r]]), r, lb + 3)
               for r in range(1, ix.size)]
        rb.mv[:counts[0] * isz] = as_bytes(full[:counts[0]])
        if ops:
            yield ops
            first_error(ops)
        if err is not None:
            raise err
    return g()


def _rsb_args(ix, sendbuf, recvbuf, op, what):
    bases = cbase(ix.bridge), cbase(ix.local)
    op = check_op(op, what)
    _no_in_place(sendbuf, what)
    rb = parse(recvbuf, True, what)
    return op, [rb.nbytes // rb.dtype.itemsize] * ix.size, bases


def Reduce_scatter_block(ix, sendbuf, recvbuf, op) -> None:
    op, counts, bases = _rsb_args(ix, sendbuf, recvbuf, op, "Reduce_scatter_block")
    drive(ix.t, _rscatter_gen(ix, sendbuf, recvbuf, counts, op, "Reduce_scatter_block", True,
                                   *bases))


def Ireduce_scatter_block(ix, sendbuf, recvbuf, op):
    op, counts, bases = _rsb_args(ix, sendbuf, recvbuf, op, "Ireduce_scatter_block")
    return coll_request(ix, _rscatter_gen(ix, sendbuf, recvbuf, counts, op,
                                          "Ireduce_scatter_block", False, *bases))


def _rs_args(ix, sendbuf, recvbuf, recvcounts, op, what):
    bases = cbase(ix.bridge), cbase(ix.local)
    op = check_op(op, what)
    _no_in_place(sendbuf, what)
    if recvcounts is None:
        rb = parse(recvbuf, True, what)
        return op, [rb.nbytes // rb.dtype.itemsize] * ix.size, bases
    return op, intlist(recvcounts, ix.size, what, "recvcounts"), bases


def Reduce_scatter(ix, sendbuf, recvbuf, recvcounts, op) -> None:
    op, counts, bases = _rs_args(ix, sendbuf, recvbuf, recvcounts, op, "Reduce_scatter")
    drive(ix.t, _rscatter_gen(ix, sendbuf, recvbuf, counts, op, "Reduce_scatter", True, *bases))


def Ireduce_scatter(ix, sendbuf, recvbuf, recvcounts, op):
    op, counts, bases = _rs_args(ix, sendbuf, recvbuf, recvcounts, op, "Ireduce_scatter")
    return coll_request(ix, _rscatter_gen(ix, sendbuf, recvbuf, counts, op,
                                          "Ireduce_scatter", False, *bases))


# ------------------------------------------------------------------ construction

def agree_records(ix, record, proposal):
    """Every rank's ``(record, proposal)`` of both groups: (this group's, in rank
    order; the remote group's, in rank order).  Collective over both groups."""
    b = ix.bridge
    bb = cbase(b)
    lb = cbase(ix.local)

    def g():
        mine = yield from g_ogather(ix.local, (record, proposal), 0, lb)
        both = None
        if ix.rank == 0:
            s = co_send(b, mine, ix.roff, bb)
            r = co_recv(b, ix.roff, bb)
            yield _ops([s, r])
            first_error((s,))
            both = (mine, oval(r))
        return (yield from g_obcast(ix.local, both, 0, lb + 1))
    return drive(ix.t, g())
