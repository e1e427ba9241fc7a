"""Hierarchical collectives for communicators that span nodes (hybrid worlds).

A communicator whose ranks sit on several nodes (see ``_hybrid``) runs Barrier,
Bcast and Allreduce in three steps: driller's shared-memory algorithms among the
ranks of each node, the same algorithms among one leader per node (the node's
lowest rank of the communicator; their messages take the MPI route), then shared
memory again to finish.  Each step is an ordinary collective over a
sub-:class:`~._context.Context` (the node's ranks, or the leaders), made once per
communicator with context ids derived from the communicator's own (negative ids,
which no communicator of the job ever gets, so no message can meet another's).
A communicator on one node takes the usual algorithms: :func:`split` is None.

Non-commutative user ops take the flat algorithms (the rank order of the operands
would not survive the regrouping); so do the other collectives (correct across
nodes, through the same routes, but not regrouped).
"""

from __future__ import annotations

from .._const import IN_PLACE
from . import _barrier, _bcast, _reduce
from ._context import Context, check_root
from ._ops import SUM

__all__ = ["split", "Barrier", "Bcast", "Allreduce"]


class _Split:
    __slots__ = ("node", "leaders", "leader_of_root")

    def __init__(self, node: Context, leaders: Context | None, leader_of_root: dict):
        self.node = node              # this rank's node, in communicator-rank order
        self.leaders = leaders        # one rank per node (None: we are not a leader)
        self.leader_of_root = leader_of_root  # comm rank -> (its node's index, its node rank)


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
    base = -4 * (cx.ctx + 1)                    # see the module docstring
    node = Context(t, mine, base, f"{cx.name} (node)")
    leaders = [ws[0] for ws in order]
    lead = Context(t, leaders, base + 2, f"{cx.name} (leaders)") if t.rank == mine[0] else None
    where = {}
    for i, ws in enumerate(order):
        for j, w in enumerate(ws):
            where[cx.index[w]] = (i, j)
    h = cx.hier = _Split(node, lead, where)
    return h


def Barrier(cx) -> None:
    h = split(cx)
    if h is None:
        return _barrier.Barrier(cx)
    _barrier.Barrier(h.node)
    if h.leaders is not None:
        _barrier.Barrier(h.leaders)
    _barrier.Barrier(h.node)


def Bcast(cx, buf, root=0) -> None:
    h = split(cx)
    if h is None:
        return _bcast.Bcast(cx, buf, root)
    root = check_root(cx, root, "Bcast")
    node_index, node_rank = h.leader_of_root[root]
    mine = h.leader_of_root[cx.rank][0]
    if mine == node_index and node_rank != 0:
        _bcast.Bcast(h.node, buf, node_rank)        # the root's node first
    if h.leaders is not None:
        _bcast.Bcast(h.leaders, buf, node_index)    # one rank per node
    if mine != node_index or node_rank == 0:
        _bcast.Bcast(h.node, buf, 0)                # every other node


def Allreduce(cx, sendbuf, recvbuf, op=SUM) -> None:
    h = split(cx)
    if h is None or not getattr(op, "commute", True):
        return _reduce.Allreduce(cx, sendbuf, recvbuf, op)
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
