"""Lanes: large hierarchical reductions and allgathers that keep every rank busy.

The leader scheme of ``_hier`` (the node's ranks reduce to one leader, the leaders
exchange over MPI, the leader broadcasts the result through shared memory) leaves
one rank per node doing all the work between nodes while the others wait, and
moves every byte through the leader twice more.  For large buffers, the ranks of
a node instead split the work: with ``m`` the size of the smallest node, the
buffer is cut into ``m`` slices, and local rank ``j < m`` of every node forms
*lane* ``j`` with local rank ``j`` of every other node.

* **Allreduce**: (1) within each node, a reduce-scatter: local rank ``j`` reduces
  slice ``j`` reading its node's send buffers in place (``_direct``, cache-sized
  chunks into one scratch, numpy ufuncs with ``out=``: the first peer's chunk
  combined with its own straight into slice ``j`` of its own receive buffer); (2) lane ``j`` reduces that slice across nodes with
  the MPI library's own ``Allreduce`` (in place, on a communicator of the lane's
  ranks made once with ``MPI_Comm_create_group``): every rank of a node talks to
  the other nodes at once, on a slice of the buffer; (3) within each node, an
  allgather: local rank ``j`` writes its finished slice once into every node
  peer's receive buffer (process_vm_writev).  An exchange of one word per rank
  ends it and carries any rank's error to the others of its node.
* **Allgather(v)** (nodes of one size): (1) lane ``j`` allgathers its ranks'
  blocks with MPI's ``Allgatherv`` (two nodes: one ``Sendrecv`` with the
  partner), straight into each receive buffer; (2) within each node, every rank
  sends its node peers the blocks its lane brought (single-copy messages).

MPI's collective is used only for builtin ops on plain numeric types; a user op
that commutes (or any op on nodes that hold contiguous ranks) reduces its lane
with driller's own algorithms over MPI.  Before MPI's collective, the lane agrees
on sizes (a small MPI ``Allreduce`` of each rank's view), so a refused or
mismatched argument on some ranks raises everywhere instead of leaving MPI
waiting; within a node the ranks check each other's sizes, and a rank that
cannot take part still sends what its peers wait for (an empty message), so no
rank hangs.  Without single-copy access between a node's ranks (Yama,
DRILLER_MMPI_SINGLE_COPY=0) the node's steps move the slices as messages.
"""

from __future__ import annotations

import numpy as np

from ...errors import MmpiError
from .._bufspec import EMPTY, parse
from .._const import IN_PLACE
from ._context import (INFO, Context, address, cbase, count_check, count_errors, cr, cs, drive,
                       waitall, writev)
from ._direct import direct_part, g_direct_ok, g_exchange
from ._reduce import g_allreduce2, red_args

__all__ = ["LANE_MIN", "LANE_TAG", "WHOLE_TAG", "Allreduce", "Allgather", "whole", "agree", "release",
           "release_all"]

LANE_MIN = 1 << 18          # bytes of a reduction (or of a rank's allgather block) from which lanes run
LANE_TAG = 32000            # MPI_Comm_create_group's tag (driller's own MPI tags stay below 16400)
WHOLE_TAG = 32001           # the same for a whole communicator (whole)
_NATIVE_OPS = frozenset(("SUM", "PROD", "MAX", "MIN", "LAND", "BAND", "LOR", "BOR", "LXOR",
                         "BXOR"))
_NATIVE_TYPES = frozenset("bBhHiIlLqQfdFD")
_LANE_CTX = 2 + 4096        # sub-context ids of lanes: _Split.ctx(_LANE_CTX + j)


class _Lane:
    """Lane ``j`` of a communicator spanning nodes: local rank ``j`` of every node."""

    __slots__ = ("native", "cx")

    def __init__(self, native, cx):
        self.native = native        # the mpi4py communicator of the lane's ranks
        self.cx = cx                # the same ranks as a driller Context (user ops)


_LIVE: dict[int, object] = {}     # id -> the splits holding MPI communicators (release_all)


def _create(t, ranks: list[int], tag: int):
    """An MPI communicator of these world ranks (= ranks of ``t.mpi``), in this order:
    collective over them (``MPI_Comm_create_group``), errors raised, never aborting."""
    grp = t.mpi.Get_group()
    sub = grp.Incl(ranks)
    try:
        native = t.mpi.Create_group(sub, tag)
    finally:
        sub.Free()
        grp.Free()
    native.Set_errhandler(t.MPI.ERRORS_RETURN)
    return native


def _lanes(h) -> dict:
    lanes = h.lanes
    if lanes is None:
        lanes = h.lanes = {}
        _LIVE[id(h)] = h
    return lanes


def _lane(h, j: int) -> _Lane:
    """This rank's lane (made on first use: collective over the lane's ranks)."""
    lanes = _lanes(h)
    ln = lanes.get(j)
    if ln is None:
        cx = h.cx
        t = cx.t
        ranks = [ws[j] for ws in h.order]
        ln = lanes[j] = _Lane(_create(t, ranks, LANE_TAG),
                              Context(t, ranks, h.ctx(_LANE_CTX + j), f"{cx.name} (lane {j})"))
    return ln


def whole(h) -> _Lane:
    """Every rank of the communicator as an MPI communicator of the same rank order
    (made on first use: collective over the communicator), for the small collectives
    that MPI's own algorithm does best (``_hiergather.Alltoall``)."""
    lanes = _lanes(h)
    ln = lanes.get(-1)
    if ln is None:
        cx = h.cx
        ln = lanes[-1] = _Lane(_create(cx.t, list(cx.group), WHOLE_TAG), cx)
    return ln


def release(h) -> None:
    """Free the MPI communicators of a split (its communicator is being freed: every
    rank of it calls this, as MPI_Comm_free wants).  MPI's own free is local in
    Open MPI and MPICH: it never waits for another rank."""
    lanes = h.lanes if h else None
    if not lanes:
        return
    h.lanes = None
    h.a2a = None                # (_hiergather's Alltoall arrays keep the whole's handle)
    _LIVE.pop(id(h), None)
    for ln in lanes.values():
        MPI = ln.cx.t.MPI
        if not MPI.Is_finalized() and ln.native != MPI.COMM_NULL:
            ln.native.Free()


def release_all() -> None:
    """Free every split's MPI communicators (Finalize, exit): communicators the
    program never freed, COMM_WORLD's among them."""
    for h in list(_LIVE.values()):
        release(h)


def agree(ln: _Lane, mine: np.ndarray) -> bool:
    """Do the lane's ranks hold the same values (``mine``: int64, any length; a bad
    rank passes values no other rank can)?  One small MPI Allreduce."""
    MPI = ln.cx.t.MPI
    both = np.concatenate([mine, -mine])
    out = np.empty_like(both)
    ln.native.Allreduce(both, out, op=MPI.MAX)
    k = len(mine)
    return bool((out[:k] == -out[k:]).all() and (out[:k] == mine).all())


def _slices(count: int, isz: int, m: int, L: int):
    """Slice ``j < m`` of ``count`` elements for local rank ``j`` (64-byte aligned
    boundaries where possible); ranks ``j >= m`` get none."""
    align = max(1, 64 // isz) if isz <= 64 else 1
    bounds = [min(count, (count * i // m) // align * align) for i in range(m)] + [count]
    counts = [bounds[i + 1] - bounds[i] for i in range(m)] + [0] * (L - m)
    displs = bounds[:-1] + [count] * (L - m)
    return counts, displs


def _native_op(op, dtype):
    """MPI's own op for a builtin driller op on a plain numeric type, else None."""
    if op.user is not None or op.ufunc is None or op.name not in _NATIVE_OPS:
        return None
    if dtype.char not in _NATIVE_TYPES or not dtype.isnative:
        return None
    return op.name


# ---------------------------------------------------------------- Allreduce

def Allreduce(cx, h, sendbuf, recvbuf, op) -> tuple[bool, MmpiError | None]:
    """The lane Allreduce (module docstring): (ran, error).  ``ran`` is False (nothing
    done) when the buffer is too small for lanes, which every rank decides alike from
    its receive buffer.  ``error``: the lanes ran to their end and agreed that they
    failed, so every rank of the communicator has one to raise (this rank's own, or
    one naming the rank that failed).  An exception raised instead is this rank's
    alone (e.g. a message of another path met on the node): the others may wait."""
    what = "Allreduce"
    rb = parse(recvbuf, True, what)
    m = min(len(ws) for ws in h.order)
    isz = rb.dtype.itemsize
    count = rb.nbytes // isz
    if rb.nbytes < LANE_MIN or count < m:
        return False, None
    t = cx.t
    node = h.node
    L, j = node.size, node.rank
    in_place = sendbuf is IN_PLACE
    err = None
    try:
        op, sb, _ = red_args(cx, sendbuf, recvbuf, op, what)
    except MmpiError as e:
        err, sb = e, None
    counts, displs = _slices(count, isz, m, L)
    acc = rb.arr()
    mine = acc[displs[j]:displs[j] + counts[j]]
    nbase = cbase(node)
    direct = drive(t, g_direct_ok(node, nbase, True))
    # (1) reduce-scatter within the node: every rank's (send address, bytes, dtype,
    # item size, receive address); a bad rank says -1 bytes, so every rank sees it
    smv = sb.mv if sb is not None else EMPTY
    info = INFO.pack(address(smv) if err is None else 0, rb.nbytes if err is None else -1,
                     rb.dtype.num, isz, address(rb.mv, True))
    table = drive(t, g_exchange(node, info, nbase, True))
    peers = [INFO.unpack_from(table, i * INFO.size) for i in range(L)]
    for i, (_, pnb, pnum, psz, _) in enumerate(peers):
        if err is None and (pnb != rb.nbytes or psz != isz or pnum != rb.dtype.num):
            err = MmpiError(f"{what}: rank {cx.index[node.group[i]]} passes "
                            f"{max(pnb, 0)} bytes but rank {cx.rank} passes {rb.nbytes}: "
                            f"every rank must pass the same count and datatype")
    ok = err is None            # every rank of the node agrees (the same table)
    if direct:
        if ok:
            direct_part(node, smv, mine, op, rb.dtype, rb.dt, counts, displs, what,
                        in_place, peers)
    else:
        err = _reduce_scatter_msgs(node, smv, mine, op, rb, counts, displs, nbase, ok,
                                   in_place) or err
    # (2) across nodes, lane by lane
    if j < m:
        ln = _lane(h, j)
        name = _native_op(op, rb.dtype) if ok else None
        agreed = agree(ln, np.array([rb.nbytes if err is None else -1 - cx.rank,
                                      rb.dtype.num, 1 if name else 0], np.int64))
        if agreed and err is None:
            if name is not None:
                ln.native.Allreduce(t.MPI.IN_PLACE, mine, op=getattr(t.MPI, name))
            else:
                lcx = ln.cx
                sub = parse(mine, True, what)
                drive(t, g_allreduce2(lcx, sub, sub, op, cbase(lcx), what, True, True))
        elif err is None:
            err = MmpiError(f"{what}: the ranks of another node pass a different count or "
                            f"datatype, or refused their arguments (rank {cx.rank} passes "
                            f"{rb.nbytes} bytes of {rb.dt.name})")
    # (3) allgather within the node
    if direct:
        if err is None and counts[j]:
            off = displs[j] * isz
            src = address(rb.mv, True) + off
            for i in range(1, L):
                p = (j + i) % L
                writev(node, p, src, peers[p][4] + off, counts[j] * isz, what)
    else:
        err = _allgather_msgs(node, rb, counts, displs, nbase, err is None) or err
    flags = drive(t, g_exchange(node, b"\1" if err is not None else b"\0", nbase + 2, True))
    if err is None and any(flags):
        bad = cx.index[node.group[flags.index(1)]]
        err = MmpiError(f"{what}: rank {bad} of this node failed (see its error)")
    return True, err


def _reduce_scatter_msgs(node, smv, mine, op, rb, counts, displs, nbase, ok, in_place):
    """Step (1) as messages (no single-copy access between the node's ranks):
    local rank j gets slice j of every peer's send buffer and folds them in rank
    order.  Returns an error, or None."""
    t = node.t
    L, j = node.size, node.rank
    isz = rb.dtype.itemsize
    own = np.frombuffer(smv, rb.dtype) if ok and len(smv) else None
    sends = []
    for p in range(L):
        if p != j and counts[p]:
            blk = own[displs[p]:displs[p] + counts[p]] if own is not None else None
            sends.append(cs(node, memoryview(blk).cast("B") if blk is not None else EMPTY,
                            p, nbase + 4))
    parts, recvs = [None] * L, []
    if counts[j]:
        for p in range(L):
            if p != j:
                parts[p] = np.empty(counts[j], rb.dtype)
                recvs.append((p, cr(node, memoryview(parts[p]).cast("B"), p, nbase + 4)))
        parts[j] = own[displs[j]:displs[j] + counts[j]].copy() if own is not None else None
    waitall(t, sends + [o for _, o in recvs])
    err = count_errors(node, recvs, [counts[j]] * L, isz, "Allreduce")
    if err is None and ok and counts[j]:
        a = parts[L - 1]
        for p in range(L - 2, -1, -1):     # right to left, as the direct path
            a = op.lohi(parts[p], a, rb.dt) if op.user is None else _user(op, parts[p], a, rb.dt)
        np.copyto(mine, a)
    for s in sends:
        err = err or s.exc
    return err


def _user(op, lo, hi, dt):
    op.user(lo, hi, dt)
    return hi


def _allgather_msgs(node, rb, counts, displs, nbase, ok):
    """Step (3) as messages: local rank j sends its slice to every peer (an empty
    message when it failed, so that nobody waits).  Returns an error, or None."""
    t = node.t
    L, j = node.size, node.rank
    isz = rb.dtype.itemsize
    mv = rb.mv
    sends = [cs(node, mv[displs[j] * isz:(displs[j] + counts[j]) * isz] if ok else EMPTY,
                p, nbase + 5) for p in range(L) if p != j and counts[j]]
    recvs = [(p, cr(node, mv[displs[p] * isz:(displs[p] + counts[p]) * isz], p, nbase + 5))
             for p in range(L) if p != j and counts[p]]
    waitall(t, sends + [o for _, o in recvs])
    err = count_errors(node, recvs, counts, isz, "Allreduce")
    for s in sends:
        err = err or s.exc
    return err


# ---------------------------------------------------------------- Allgather(v)

def Allgather(cx, h, err, rb, what) -> bool:
    """The lane Allgather(v) (module docstring) into the parsed receive buffer ``rb``
    (this rank's block is in it already: copied, or IN_PLACE); ``err``: this rank's
    refused argument (it still takes part, and raises at the end).  False (nothing
    done) when the nodes differ in size or the blocks are small, which every rank
    decides alike from the counts."""
    L = h.node.size
    isz = rb.dtype.itemsize
    total = sum(rb.counts) * isz
    if total < LANE_MIN or any(len(ws) != L for ws in h.order) or len(h.order) > 128 or \
            max(rb.counts) * isz >= 1 << 31:
        return False
    t, me = cx.t, cx.rank
    node, j = h.node, h.node.rank
    ln = _lane(h, j)
    MPI = t.MPI
    lranks = [cx.index[ws[j]] for ws in h.order]     # the lane's communicator ranks
    first = None
    if len(lranks) == 2:
        # two nodes: one exchange with the partner, whose size MPI checks (a longer
        # block fails the receive, a shorter one shows in the status): no agreement
        # round first, and a bad block can leave nobody waiting inside MPI
        mi = h.where[me][0]
        pr = lranks[1 - mi]
        want = rb.counts[pr] * isz
        st = MPI.Status()
        try:
            ln.native.Sendrecv([rb.block(me) if err is None else bytearray(0), MPI.BYTE],
                               1 - mi, 0, [rb.block(pr), MPI.BYTE], 1 - mi, 0, st)
            got = st.Get_count(MPI.BYTE)
        except MPI.Exception:
            got = -1
        if got != want:
            first = MmpiError(f"{what}: rank {me} expected {want} bytes from rank {pr} "
                              f"but got {'more' if got < 0 else got}: every rank must "
                              f"pass matching counts and datatypes")
    else:
        view = (np.array(rb.counts, np.int64) if err is None
                else np.full(cx.size, -1 - me, np.int64))
        if agree(ln, view):
            cnts = [rb.counts[r] * isz for r in lranks]
            dsps = [rb.displs[r] * isz for r in lranks]
            ln.native.Allgatherv(MPI.IN_PLACE, [rb.mv, (cnts, dsps), MPI.BYTE])
        else:
            first = MmpiError(f"{what}: ranks of another node pass different counts, or "
                              f"refused their arguments (seen by rank {me})")
    # within the node: my lane's blocks to every node peer, every peer's lane's to me
    nbase = cbase(node)
    cranks = [[cx.index[w] for w in ws] for ws in h.order]
    ok = first is None and err is None
    sends, recvs = [], []
    for i in range(1, L):
        p = (j + i) % L
        q = (j - i) % L
        for k in range(len(cranks)):
            sends.append(cs(node, rb.block(cranks[k][j]) if ok else EMPTY, p, nbase + k))
            r = cranks[k][q]
            recvs.append((r, cr(node, rb.block(r), q, nbase + k)))
    waitall(t, sends + [o for _, o in recvs])
    for r, o in recvs:
        try:
            count_check(node, o, rb.counts[r] * isz, what, node.rank_of(cx.group[r]))
        except MmpiError as e:
            first = first or e
    for s in sends:
        first = first or s.exc
    if err is not None:
        raise err
    if first is not None:
        raise first
    return True
