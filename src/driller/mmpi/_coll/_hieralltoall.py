"""Hierarchical Alltoallv and alltoall (objects) for communicators that span nodes.

Their sizes differ per pair of ranks and no rank knows the others', so the route
of each block is chosen by its sender alone, from its size, and the receiver is
told.  A block for a rank of the same node goes straight to it (shared memory).
A block for a rank of another node goes:

* **aggregated**, when small (up to ``AGG_BLOCK_MAX`` bytes; for objects, a
  pickle without out-of-band buffers up to that size): through the node's
  leader, which sends the other node's leader one message holding every small
  block from its node to that node, and the other leader hands each of its ranks
  one message holding its blocks from every other node.  Without this a pair of
  nodes of L ranks each exchanges L² messages, each paying driller's
  per-message cost and MPI's latency;
* **direct**, when large: one message to the receiver (MPI across nodes; an
  object's large buffers out of band), whose bytes then go once, with no copy
  through the leaders.

Every rank sends its leader one message even when it has no small block: a
table with one entry per rank of the other nodes (the size of an aggregated
block, the size of a direct one, or "refused"), followed by its small blocks.
The leaders' messages and the messages down to each rank carry the same entries.
So each receiver learns from the table which blocks come directly and their
sizes before it posts their receives: no rank needs to agree with another on a
route, a size that does not match the receiver's count is an error on that
receiver (the block is received and dropped, so its sender never waits), and a
rank that refused its arguments is named on every rank that expected a block
from it.  Nobody waits for a message that will not come.
"""

from __future__ import annotations

import os

import numpy as np

from ...errors import MmpiError
from .. import _objects
from .._bufspec import EMPTY, parse
from .._transport import RecvOp
from ._alltoall import send_blocks
from ._context import (Failed, cbase, co_recv, count_check, cr, cs, obj_items, oval,
                       raise_failed, waitall)

__all__ = ["AGG_BLOCK_MAX", "ENV_AGG", "aggregate", "Alltoallv", "alltoall"]

AGG_BLOCK_MAX = 16 << 10    # bytes of a block (to a rank of another node) that goes through the leaders
FAIL = -(1 << 62)           # table entry: the sender refused its arguments
_SHARED_MARK = b"driller.sharedarray"   # a pickle holding a SharedArray by reference
ENV_AGG = "DRILLER_MMPI_ALLTOALLV_AGG"  # "1": always aggregate, "0": never, else by shape
_AGG = os.environ.get(ENV_AGG, "auto").strip().lower()


def aggregate(h) -> bool:
    """Take the aggregated algorithm for this communicator?  (The same answer on
    every rank: from the nodes' sizes, or ``DRILLER_MMPI_ALLTOALLV_AGG``.)

    A leader sends and receives about 2 (L - 1) + 2 (N - 1) messages (L ranks on
    its node, N nodes) in three dependent hops, where each rank of the direct
    exchange handles n - 1 messages at once.  Measured on 2 emulated nodes of 2,
    4 and 8 ranks, the aggregated exchange took 1.3-2.2x the direct one's time
    with 8 B to 64 KiB blocks (docs/scaleout.md): it is taken only when the
    direct exchange handles at least twice a leader's messages (many nodes)."""
    if _AGG in ("1", "yes", "on", "true"):
        return True
    if _AGG in ("0", "no", "off", "false"):
        return False
    nodes = len(h.order)
    lmax = max(len(ws) for ws in h.order)
    return h.cx.size - 1 >= 2 * (2 * (lmax - 1) + 2 * (nodes - 1))


def _cranks(h) -> list[list[int]]:
    c = h.cranks
    if c is None:
        c = h.cranks = [[h.cx.index[w] for w in ws] for ws in h.order]
    return c


def _everyone(h) -> list[int]:
    """The communicator ranks node by node (nodes in order): the order of a table."""
    return [r for ranks in _cranks(h) for r in ranks]


def _any(cx, src, tag):
    op = RecvOp(cx.group[src], tag, cx.cctx, None)
    cx.t.irecv(op)
    return op


def _bytes_of(op) -> memoryview:
    if op.exc is not None:
        raise op.exc
    v = op.value[1] if op.value is not None else b""
    return memoryview(v).cast("B") if len(v) else EMPTY


def _split(msg, k: int):
    """(entries, payload) of a routing message of ``k`` entries."""
    ent = np.frombuffer(msg, np.int64, k) if k else np.empty(0, np.int64)
    return ent, msg[8 * k:]


def _offsets(ent) -> np.ndarray:
    """Where each entry's aggregated bytes start in a payload (and the end)."""
    sz = np.where(ent >= 0, ent, 0)
    out = np.zeros(len(ent) + 1, np.int64)
    np.cumsum(sz, out=out[1:])
    return out


def _route(cx, h, ent: np.ndarray, blocks: list) -> tuple[np.ndarray, memoryview, list]:
    """The three hops of the small blocks: ``ent`` (int64, one per rank of the
    communicator, in :func:`_everyone` order) and the aggregated ``blocks`` (in
    entry order) go up to the leader; the leaders swap what their node has for each
    other's; each leader sends every rank of its node what it got for it from every
    node (its own included).  Returns the entries addressed to this rank (one per
    sender, same order) and their payload, and the errors met on the way."""
    t, me = cx.t, cx.rank
    node = h.node
    mi, mj = h.where[me]
    cranks = _cranks(h)
    nbase = cbase(node)
    n = len(ent)
    up = memoryview(b"".join([ent.tobytes()] + list(blocks)))
    errs = []
    if mj != 0:
        s = cs(node, up, 0, nbase)
        d = _any(node, 0, nbase + 1)
        waitall(t, [s, d])
        if s.exc is not None:
            errs.append(s.exc)
        return (*_split(_bytes_of(d), n), errs)
    # the leader: every rank's table and small blocks
    L = node.size
    ups = [_any(node, j, nbase) for j in range(1, L)]
    waitall(t, ups)
    tables = [_split(up, n)] + [_split(_bytes_of(op), n) for op in ups]
    offs = [_offsets(e) for e, _ in tables]
    spans, pos = [], 0
    for ranks in cranks:
        spans.append((pos, pos + len(ranks)))
        pos += len(ranks)

    def part(k):
        """What my node's ranks have for node k: (L x L_k entries, their blocks)."""
        a, b = spans[k]
        return (np.concatenate([e[a:b] for e, _ in tables]),
                [p[o[a]:o[b]] for (e, p), o in zip(tables, offs)])

    leaders = h.leaders
    lbase = cbase(leaders)
    sends, recvs = [], {}
    for k in range(len(cranks)):
        if k != mi:
            head, body = part(k)
            sends.append(cs(leaders, memoryview(b"".join([head.tobytes()] + body)), k, lbase))
            recvs[k] = _any(leaders, k, lbase)
    waitall(t, list(recvs.values()) + sends)   # (receives first: _hiergather's docstring)
    for s in sends:
        if s.exc is not None:
            errs.append(s.exc)
    # down: each rank of mine gets, from every node in order, its entries and blocks
    per = [[] for _ in range(L)]           # per local rank: [(entries, [payload pieces])]
    for k in range(len(cranks)):
        LA = len(cranks[k])
        if k == mi:
            ent_k, body = part(k)
            pay = memoryview(b"".join(body))
        else:
            ent_k, pay = _split(_bytes_of(recvs[k]), LA * L)
        o = _offsets(ent_k)
        grid = ent_k.reshape(LA, L)
        for jd in range(L):
            per[jd].append((grid[:, jd], [pay[o[ja * L + jd]:o[ja * L + jd + 1]]
                                          for ja in range(LA)]))
    outs = []
    mine = None
    for jd in range(L):
        e = np.concatenate([g for g, _ in per[jd]])
        pieces = [p for _, ps in per[jd] for p in ps]
        if jd == 0:
            mine = (e, memoryview(b"".join(pieces)))
        else:
            outs.append(cs(node, memoryview(b"".join([e.tobytes()] + pieces)), jd, nbase + 1))
    waitall(t, outs)
    for s in outs:
        if s.exc is not None:
            errs.append(s.exc)
    return (*mine, errs)


# ---------------------------------------------------------------- Alltoallv

def Alltoallv(cx, h, sendbuf, recvbuf) -> None:
    """Alltoallv across nodes (module docstring)."""
    what = "Alltoallv"
    n, me, t = cx.size, cx.rank, cx.t
    rb = err = None
    try:
        rb = parse(recvbuf, True, what, blocks=n, vector=True, staged=True)
    except MmpiError as e:
        err = e
    sb = None
    if err is None:
        try:
            sb = send_blocks(sendbuf, rb, n, me, what, True)
        except MmpiError as e:
            err = e
    try:
        _alltoallv(cx, h, sb, rb, err, what)
    finally:
        if rb is not None and err is None:
            rb.finish()
    if err is not None:
        raise err


def _alltoallv(cx, h, sb, rb, err, what) -> None:
    n, me, t = cx.size, cx.rank, cx.t
    order = _everyone(h)
    base = cbase(cx)
    ok = err is None
    if ok:
        rb.block(me)[:] = sb.block(me)
    # my blocks: small ones through the leaders, large ones direct
    ent = np.full(n, FAIL, np.int64)
    small, sends = [], []
    for i, r in enumerate(order):
        if r == me:
            ent[i] = 0
        elif ok:
            b = sb.block(r)
            if len(b) <= AGG_BLOCK_MAX:
                ent[i] = len(b)
                if len(b):
                    small.append(b)
            else:
                ent[i] = -1 - len(b)
                sends.append(cs(cx, b, r, base))
    isz = rb.dtype.itemsize if rb is not None else 1
    got, pay, errs = _route(cx, h, ent, small)
    o = _offsets(got)
    direct = []
    first = errs[0] if errs else None
    for i, r in enumerate(order):
        if r == me:
            continue
        e = int(got[i])
        want = rb.counts[r] * isz if ok else None
        if e == FAIL:
            first = first or MmpiError(f"{what}: rank {r} passed invalid arguments")
        elif e >= 0:
            if want is not None and e != want:
                first = first or _size_error(what, me, want, r, e)
            elif ok and e:
                rb.block(r)[:] = pay[o[i]:o[i + 1]]
        else:
            size = -1 - e
            if want is not None and size == want:
                direct.append((r, cr(cx, rb.block(r), r, base)))
            else:                       # received and dropped: its sender must not wait
                direct.append((r, _any(cx, r, base)))
                if want is not None:
                    first = first or _size_error(what, me, want, r, size)
    waitall(t, [x for _, x in direct] + sends)   # (receives first: _hiergather's docstring)
    for r, x in direct:
        if x.exc is not None:
            first = first or x.exc
        elif ok and x.mv is not None:
            try:
                count_check(cx, x, rb.counts[r] * isz, what, r)
            except MmpiError as e:
                first = first or e
    for s in sends:
        first = first or s.exc
    if ok and first is not None:
        raise first


def _size_error(what, me, want, r, got) -> MmpiError:
    return MmpiError(f"{what}: rank {me} expected {want} bytes from rank {r} but got "
                     f"{got}: every rank must pass matching counts and datatypes")


# ---------------------------------------------------------------- alltoall (objects)

def alltoall(cx, h, sendobj) -> list:
    """alltoall (objects) across nodes (module docstring): each item is pickled once;
    the small pickles go through the leaders, the others straight to their rank."""
    n, me, t = cx.size, cx.rank, cx.t
    items, err = obj_items(sendobj, n, "alltoall", me)
    order = _everyone(h)
    mi = h.where[me][0]
    base = cbase(cx)
    ent = np.full(n, FAIL, np.int64)
    small, sends = [], []
    for i, r in enumerate(order):
        if r == me:
            ent[i] = 0
        elif err is None:
            pickled = _objects.dumps(items[r])
            stream, parts = pickled
            if not parts and len(stream) <= AGG_BLOCK_MAX and (
                    h.where[r][0] == mi or _SHARED_MARK not in stream):
                ent[i] = len(stream)
                small.append(stream)
            else:   # (a shared array for another node: sent by value, by send_object)
                ent[i] = -1
                sends.append(t.send_object(cx.group[r], cx.cctx, base, items[r], False,
                                           "alltoall", pickled))
    got, pay, errs = _route(cx, h, ent, small)
    o = _offsets(got)
    out = [None] * n
    out[me] = items[me]
    recvs = []
    first = errs[0] if errs else None
    for i, r in enumerate(order):
        if r == me:
            continue
        e = int(got[i])
        if e == FAIL:
            out[r] = Failed(r, "refused its arguments")
        elif e >= 0:
            out[r] = _objects.unpickle(bytes(pay[o[i]:o[i + 1]]))
        else:
            recvs.append((r, co_recv(cx, r, base)))
    waitall(t, [s for s in sends if s is not None] + [x for _, x in recvs])
    for r, x in recvs:
        out[r] = oval(x)
    for s in sends:
        if s is not None:
            first = first or s.exc
    if err is not None:
        raise err
    if first is not None:
        raise first
    return [raise_failed(v, "alltoall") for v in out]
