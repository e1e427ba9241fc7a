"""Hierarchical collectives for communicators that span nodes (hybrid worlds).

A communicator whose ranks sit on several nodes (see ``_hybrid``) runs Barrier,
Reduce, Allreduce and their object forms in three steps: driller's
shared-memory algorithms among the ranks of each node, the same algorithms among
one rank per node (the node's lowest rank of the communicator, or the root on the
root's node; their messages take the MPI route), then shared memory again to
finish.  Bcast and bcast take two: among one rank per node (the root standing
for its node), then within every node.  Each step is an ordinary collective
over a sub-:class:`~._context.Context`
(the node's ranks, or one rank per node), made once per communicator (and root)
with context ids derived from the communicator's own: negative ids, which no
communicator of the job ever gets, so no message can meet another's.  A
communicator on one node takes the usual algorithms (:func:`split` is None).

Reductions combine in rank order only when every node holds a contiguous run of
the communicator's ranks; otherwise a non-commutative buffer op (a user op
declared so) and every object reduction (lists under SUM concatenate) take the
flat algorithm.  An argument refused, or a count that differs, on some ranks of
Bcast, Reduce, Allreduce (outside the lanes, which agree first) or an object
form cannot reach the others, which would wait forever: that rank ends the job
through the launcher (:func:`refused`), naming itself and the error; so does any
exception in a collective that runs flat across nodes (:func:`guard`).  Gathers,
scatters, Alltoall and scans stay flat: correct across nodes, through the same
routes, but not regrouped.
"""

from __future__ import annotations

import sys

import numpy as np

from .._bufspec import parse
from .._const import IN_PLACE
from . import _barrier, _bcast, _hboard, _hierlane, _reduce
from ._context import Context, cbase, check_root, drive
from ._direct import g_direct_ok
from ._ops import SUM

__all__ = ["split", "release", "release_all", "or_abort", "guard", "refused", "end", "Barrier",
           "Bcast", "bcast", "Reduce", "reduce", "Allreduce", "allreduce"]

_IDS = 1 << 15        # sub-context ids per communicator (world sizes are at most 4096)
_RNODE = 2 + 4096 + 2048  # node contexts of rooted collectives: ctx(_RNODE + root) (after the
                           # lanes': a lane per rank of the smallest node, at most 2048 of them)
_RALL = _RNODE + 4096     # every rank, per root (_hiergather's Scatter): ctx(_RALL + root) < _IDS/2


class _Split:
    __slots__ = ("cx", "order", "node", "leaders", "where", "contiguous", "rooted", "cranks",
                 "lanes", "a2a", "rnodes", "ralls", "hseq", "hist", "hb", "stage")

    def __init__(self, cx, order: list[list[int]], node: Context, leaders: Context | None):
        self.cx = cx
        self.order = order          # world ranks of each node, nodes by their lowest comm rank
        self.node = node            # this rank's node, in communicator-rank order
        self.leaders = leaders      # the lowest rank of each node (None: not one of them)
        self.where = {}             # comm rank -> (its node's index, its rank in the node)
        for i, ws in enumerate(order):
            for j, w in enumerate(ws):
                self.where[cx.index[w]] = (i, j)
        self.contiguous = all(cx.index[ws[-1]] - cx.index[ws[0]] == len(ws) - 1
                              for ws in order)
        self.rooted: dict[int, Context | None] = {}
        self.cranks = None          # comm ranks of each node (_hiergather makes it)
        self.lanes = None           # _hierlane's lanes, made on first use
        self.a2a = None             # _hiergather's Alltoall exchange arrays, made on first use
        self.stage = None           # _hiergather's staging buffer (gather heads, scatters)
        self.rnodes: dict[int, Context] = {}   # root -> the node context of its collectives
        self.ralls: dict[int, Context] = {}    # root -> every rank's context of its scatters
        self.hseq = 0               # _hboard: the hierarchical collectives so far,
        self.hist = [None] * _hboard.HIST      # the last ones' (number, kind, root)
        self.hb = None              # and the transport's hybrid board

    def ctx(self, i: int) -> int:
        """The i-th sub-context id of this communicator (0: node, 1: leaders, 2+r:
        one rank per node with root r)."""
        return -((self.cx.ctx + 1) * _IDS + 2 * i)

    def rnode(self, root: int) -> Context:
        """This rank's node, for a rooted collective with ``root``: a context of its
        own per root, so that a rank passing another root than its node peers never
        takes their messages (it waits, and ``_hboard`` names it)."""
        return self._per_root(self.rnodes, root, self.node.group, _RNODE, "node")

    def rall(self, root: int) -> Context:
        """Every rank of the communicator, for a rooted collective with ``root`` (a
        context of its own per root, as :meth:`rnode`): where a rank's block may come
        from the root or from its node's head (``_hiergather``'s Scatter)."""
        return self._per_root(self.ralls, root, self.cx.group, _RALL, "all")

    def _per_root(self, made: dict, root: int, group, first: int, what: str) -> Context:
        c = made.get(root)
        if c is None:
            c = made[root] = Context(self.cx.t, group, self.ctx(first + root),
                                     f"{self.cx.name} ({what}, root {root})")
        return c

    def heads(self, root: int) -> tuple[Context | None, int, int]:
        """For a rooted reduction: (the context of one rank per node where the root
        stands for its node, or None if this rank is not one of them; the root's
        node index; the root's rank in its node)."""
        ni, nr = self.where[root]
        if root not in self.rooted:
            cx = self.cx
            heads = [cx.group[root] if i == ni else ws[0] for i, ws in enumerate(self.order)]
            self.rooted[root] = (Context(cx.t, heads, self.ctx(2 + root), f"{cx.name} (heads)")
                                 if cx.t.rank in heads else None)
        return self.rooted[root], ni, nr


def split(cx) -> _Split | None:
    """The node / leaders split of a communicator spanning nodes; None on one node."""
    h = cx.hier
    if h is not None:
        return h or None
    t = cx.t
    node_of = getattr(t, "node_of", None)
    if t.all_local or node_of is None:
        cx.hier = False
        return None
    nodes: dict[int, list[int]] = {}
    for w in cx.group:                          # communicator-rank order
        nodes.setdefault(node_of[w], []).append(w)
    if len(nodes) == 1:
        cx.hier = False
        return None
    order = sorted(nodes.values(), key=lambda ws: cx.index[ws[0]])
    mine = nodes[node_of[t.rank]]
    base = -((cx.ctx + 1) * _IDS)                 # = _Split.ctx(0)
    h = _Split(cx, order, Context(t, mine, base, f"{cx.name} (node)"), None)
    if t.rank == mine[0]:
        h.leaders = Context(t, [ws[0] for ws in order], h.ctx(1), f"{cx.name} (leaders)")
    _hboard.setup(h)
    cx.hier = h
    return h


def release(cx) -> None:
    """The communicator is being freed: free the MPI communicators its lanes made
    (``_hierlane``); nothing for a communicator on one node."""
    if cx.hier:
        _hboard.forget(cx.hier)
    _hierlane.release(cx.hier)


release_all = _hierlane.release_all


def refused(cx, what: str, e: BaseException):
    """End the whole job (through the MPI launcher) for an argument this rank refused,
    or a count that did not match, in a collective spanning nodes whose other ranks
    cannot learn of it (they would wait forever): the rank and the error are named."""
    t = cx.t
    abort = getattr(t, "abort", None)
    if abort is None:   # (a transport of one node: the caller raises)
        return
    sys.stderr.write(f"driller: {what} on {cx.name or 'a communicator'} spanning nodes "
                     f"failed on its rank {cx.rank} (world rank {t.rank}): "
                     f"{type(e).__name__}: {e}; the other ranks cannot learn of it and would "
                     f"wait forever: aborting the MPI job\n")
    sys.stderr.flush()
    abort(1)


def or_abort(cx, what: str, fn, *args, **kw):
    """``fn(*args, **kw)`` on a communicator spanning nodes: an exception ends the
    job (:func:`refused`) before it is raised, for the others cannot learn of it."""
    try:
        return fn(*args, **kw)
    except Exception as e:
        refused(cx, what, e)
        raise


def guard(cx, what: str, fn, *args):
    """``fn(cx, *args)``, a collective that runs flat on every communicator; on one
    spanning nodes, an exception on this rank ends the job (:func:`refused`): the
    others, on the flat algorithm, may be waiting for this rank."""
    try:
        return fn(cx, *args)
    except Exception as e:
        t = cx.t
        node_of = getattr(t, "node_of", None)   # (not split: collective on first use)
        if not t.all_local and node_of is not None and \
                len({node_of[w] for w in cx.group}) > 1:
            refused(cx, what, e)
        raise


def _ordered(h: _Split | None, op, objects: bool = False) -> bool:
    """May this reduction be regrouped: rank order kept, or the op commutes on
    buffers (on Python objects nothing is taken to commute: list + list)?"""
    return h is not None and (h.contiguous or (not objects and getattr(op, "commute", False)))


# ---------------------------------------------------------------- barrier, broadcast

def Barrier(cx) -> None:
    h = split(cx)
    if h is None:
        return _barrier.Barrier(cx)
    _hboard.enter(h, "Barrier")
    _barrier3(h)


def _barrier3(h: _Split, tag: int = _barrier.BARRIER_TAG) -> None:
    _barrier.Barrier(h.node, tag)
    if h.leaders is not None:
        _barrier.Barrier(h.leaders, tag)
    _barrier.Barrier(h.node, tag)


def end(cx) -> None:
    """This rank of a world spanning nodes is done (Finalize, or the exit of a program
    that did not call it): a barrier of ``cx`` (the world), numbered as a collective
    ("Finalize"), so that a rank still waiting in an earlier collective that the others
    called differently is compared with theirs (``_hboard``), not left waiting alone.
    Nothing on one node."""
    h = split(cx)
    if h is None:
        return
    _hboard.enter(h, "Finalize")
    _barrier3(h, _barrier.END_TAG)   # (tags of its own: never a rank's Barrier)


def _broadcast(cx, h: _Split, root, what: str, step, value):
    """The two steps of a broadcast from ``root``: among one rank per node, the root
    standing for its node (``_Split.heads``), then within every node (the root's
    included) from that rank; ``step(context, value, root)`` is the flat broadcast
    and returns the value.  (Through the node's lowest rank instead, a root that is
    not it put a hop through shared memory before the other nodes' MPI step: 1 MiB
    from rank 3 of 2 + 2 ranks took 2.4-2.6x mpi4py's time.)"""
    root = check_root(cx, root, what)
    _hboard.enter(h, what, root)
    heads, ni, nr = h.heads(root)
    if heads is not None:
        value = step(heads, value, ni)             # one rank per node
    return step(h.rnode(root), value, nr if h.where[cx.rank][0] == ni else 0)


def _Bcast_step(context, buf, root):
    _bcast.Bcast(context, buf, root)
    return buf


def Bcast(cx, buf, root=0) -> None:
    h = split(cx)
    if h is None:
        return _bcast.Bcast(cx, buf, root)
    or_abort(cx, "Bcast", _broadcast, cx, h, root, "Bcast", _Bcast_step, buf)


def bcast(cx, obj, root=0):
    h = split(cx)
    if h is None:
        return _bcast.bcast(cx, obj, root)
    return or_abort(cx, "bcast", _broadcast, cx, h, root, "bcast", _bcast.bcast, obj)


# ---------------------------------------------------------------- reductions

def Reduce(cx, sendbuf, recvbuf, op=SUM, root=0) -> None:
    h = split(cx)
    if h is None:
        return _reduce.Reduce(cx, sendbuf, recvbuf, op, root)
    or_abort(cx, "Reduce", _Reduce, cx, h, sendbuf, recvbuf, op, root)


def _Reduce(cx, h, sendbuf, recvbuf, op, root) -> None:
    _hboard.enter(h, "Reduce", _hboard.root_of(root))
    if not _ordered(h, op):
        return _reduce.Reduce(cx, sendbuf, recvbuf, op, root)
    root = check_root(cx, root, "Reduce")
    heads, ni, nr = h.heads(root)
    mine = h.where[cx.rank][0]
    node_root = nr if mine == ni else 0
    node = h.rnode(root)
    if heads is None:                              # not my node's head: give my part
        _reduce.Reduce(node, sendbuf, None, op, node_root)
        return
    # a head: my node's part (into recvbuf at the root, into a scratch array elsewhere)
    acc = recvbuf if cx.rank == root else np.empty_like(parse(sendbuf, False, "Reduce").arr())
    _reduce.Reduce(node, sendbuf, acc, op, node_root)
    if cx.rank == root:
        _reduce.Reduce(heads, IN_PLACE, recvbuf, op, ni)
    else:
        _reduce.Reduce(heads, acc, None, op, ni)


def reduce(cx, sendobj, op=SUM, root=0):
    h = split(cx)
    if h is None:
        return _reduce.reduce(cx, sendobj, op, root)
    return or_abort(cx, "reduce", _reduce_obj, cx, h, sendobj, op, root)


def _reduce_obj(cx, h, sendobj, op, root):
    _hboard.enter(h, "reduce", _hboard.root_of(root))
    if not _ordered(h, op, objects=True):
        return _reduce.reduce(cx, sendobj, op, root)
    root = check_root(cx, root, "reduce")
    heads, ni, nr = h.heads(root)
    part = _reduce.reduce(h.rnode(root), sendobj, op, nr if h.where[cx.rank][0] == ni else 0)
    if heads is None:
        return None
    return _reduce.reduce(heads, part, op, ni)


def Allreduce(cx, sendbuf, recvbuf, op=SUM) -> None:
    h = split(cx)
    if h is None:
        return _reduce.Allreduce(cx, sendbuf, recvbuf, op)
    _hboard.enter(h, "Allreduce")
    try:
        if not _ordered(h, op):
            return _reduce.Allreduce(cx, sendbuf, recvbuf, op)
        if h.node.direct_ok is None:
            # decided before the first Allreduce: a rank whose count differs from its
            # node's and that takes the other path (lanes or leaders) then meets the
            # node's first message on the same tag, and raises instead of waiting
            drive(cx.t, g_direct_ok(h.node, cbase(h.node), True))
        # an exception out of the lanes is this rank's alone (the others may wait):
        # refused; an error they return, every rank of the communicator raises
        ran, agreed = _hierlane.Allreduce(cx, h, sendbuf, recvbuf, op)
        if not ran:
            _leaders_allreduce(h, sendbuf, recvbuf, op)
    except Exception as e:
        refused(cx, "Allreduce", e)
        raise
    if agreed is not None:
        raise agreed


def _leaders_allreduce(h, sendbuf, recvbuf, op) -> None:
    """The leader scheme: reduce to each node's leader, Allreduce among the leaders,
    broadcast within each node."""
    leader = h.leaders is not None
    if sendbuf is IN_PLACE:
        if leader:
            _reduce.Reduce(h.node, IN_PLACE, recvbuf, op, 0)
        else:
            _reduce.Reduce(h.node, recvbuf, None, op, 0)
    else:
        _reduce.Reduce(h.node, sendbuf, recvbuf if leader else None, op, 0)
    if leader:
        _reduce.Allreduce(h.leaders, IN_PLACE, recvbuf, op)
    _bcast.Bcast(h.node, recvbuf, 0)


def allreduce(cx, sendobj, op=SUM):
    h = split(cx)
    if h is None:
        return _reduce.allreduce(cx, sendobj, op)
    return or_abort(cx, "allreduce", _allreduce_obj, cx, h, sendobj, op)


def _allreduce_obj(cx, h, sendobj, op):
    _hboard.enter(h, "allreduce")
    if not _ordered(h, op, objects=True):
        return _reduce.allreduce(cx, sendobj, op)
    part = _reduce.reduce(h.node, sendobj, op, 0)
    if h.leaders is not None:
        part = _reduce.allreduce(h.leaders, part, op)
    return _bcast.bcast(h.node, part, 0)
