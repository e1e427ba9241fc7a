"""Groups, communicator construction and comparison (mpi4py's names).

``Comm`` delegates its communicator construction to the functions here.  Context
ids: each communicator uses ``c`` for point-to-point and ``c + 1`` for collectives; a process keeps the next id it
may use (``_ctx.next``), and a new communicator takes the maximum over the
parent's members (one object allgather), so two communicators sharing a
member never share an id.
"""

from __future__ import annotations

import numpy as np

from ..errors import MmpiError
from ._coll._gather import allgather
from ._const import COMM_TYPE_SHARED, CONGRUENT, IDENT, PROC_NULL, SIMILAR, UNDEFINED, UNEQUAL

__all__ = [
    "Group", "GROUP_EMPTY", "COMM_NULL", "COMM_TYPE_SHARED",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL", "get_group", "compare", "dup", "split",
    "split_type", "create",
]



# ================================================================== context ids

class _Ctx:
    next = 4    # contexts this process may still use (2 per communicator)


_ctx = _Ctx()


# ================================================================== communicator null

class _CommNull:
    """``MPI.COMM_NULL``: what ranks outside a new communicator get."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<mmpi.COMM_NULL>"

    def Free(self) -> None:
        raise MmpiError("Free on COMM_NULL (this rank is not in that communicator)")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MmpiError(f"COMM_NULL.{name}: invalid communicator (this rank got COMM_NULL "
                        f"from Split/Create: it is not a member; test `comm != MPI.COMM_NULL`)")


COMM_NULL = _CommNull()


# ================================================================== groups

class Group:
    """An ordered set of processes (world ranks inside; ranks 0..size-1 outside)."""

    def __init__(self, world_ranks, me: int | None):
        self._world = list(world_ranks)
        self._me = me
        self._index = {w: i for i, w in enumerate(self._world)}
        if len(self._index) != len(self._world):
            raise MmpiError(f"a group cannot hold a rank twice: {self._world}")

    def Get_size(self) -> int:
        return len(self._world)

    def Get_rank(self) -> int:
        return self._index.get(self._me, UNDEFINED)

    @property
    def size(self) -> int:
        return len(self._world)

    @property
    def rank(self) -> int:
        return self.Get_rank()

    def _ranks(self, ranks, what):
        out = []
        for r in ranks:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or \
                    not 0 <= r < self.size:
                raise MmpiError(f"Group.{what}: invalid rank {r!r} (group of size {self.size})")
            out.append(int(r))
        if len(set(out)) != len(out):
            raise MmpiError(f"Group.{what}: a rank is listed twice in {out}")
        return out

    def Incl(self, ranks) -> "Group":
        return Group([self._world[r] for r in self._ranks(ranks, "Incl")], self._me)

    def Excl(self, ranks) -> "Group":
        drop = set(self._ranks(ranks, "Excl"))
        return Group([w for i, w in enumerate(self._world) if i not in drop], self._me)

    def Range_incl(self, ranges) -> "Group":
        ranks = []
        for first, last, stride in ranges:
            ranks.extend(range(first, last + (1 if stride > 0 else -1), stride))
        return self.Incl(ranks)

    def Translate_ranks(self, ranks=None, group=None) -> list:
        """Ranks of this group's ``ranks`` in ``group`` (UNDEFINED if absent)."""
        if ranks is None:
            ranks = range(self.size)
        out = []
        for r in ranks:
            if r == PROC_NULL:
                out.append(PROC_NULL)
                continue
            w = self._world[self._ranks([r], "Translate_ranks")[0]]
            out.append(w if group is None else group._index.get(w, UNDEFINED))
        return out

    def Compare(self, group) -> int:
        if self._world == group._world:
            return IDENT
        if set(self._world) == set(group._world):
            return SIMILAR
        return UNEQUAL

    def Union(self, group) -> "Group":
        return Group(self._world + [w for w in group._world if w not in self._index], self._me)

    def Intersection(self, group) -> "Group":
        return Group([w for w in self._world if w in group._index], self._me)

    def Difference(self, group) -> "Group":
        return Group([w for w in self._world if w not in group._index], self._me)

    def Dup(self) -> "Group":
        return Group(self._world, self._me)

    def Free(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<mmpi.Group of {self.size}, rank {self.rank}>"


GROUP_EMPTY = Group([], None)


# ================================================================== communicators
# Functions over a communicator's Context (``cx``: its ``group`` of world ranks,
# its context ``ctx``, its transport ``t``); ``new(group, ctx)`` makes a Comm.
# ``Comm`` delegates Get_group/Compare/Dup/Split/Split_type/Create to them.

def get_group(cx) -> Group:
    return Group(cx.group, cx.t.rank)


def compare(cx, other, comm) -> int:
    """Compare communicators (``other``: the Context of ``comm``, None if ``comm``
    is not a communicator)."""
    if other is None:
        raise MmpiError(f"Compare: {comm!r} is not a communicator")
    if cx is other or (cx.ctx == other.ctx and cx.group == other.group):
        return IDENT
    if cx.group == other.group:
        return CONGRUENT
    if set(cx.group) == set(other.group):
        return SIMILAR
    return UNEQUAL


def _agree(cx, record):
    """Allgather (record, next context id) over the communicator; returns the
    records and the new context id (the maximum), past which every member
    moves its own next id."""
    out = allgather(cx, (record, _ctx.next))
    ctx = max(c for _, c in out)
    _ctx.next = ctx + 2
    return [r for r, _ in out], ctx


def dup(cx, new):
    _, ctx = _agree(cx, None)
    return new(cx.group, ctx)


def split(cx, color, key, new):
    for v, nm in ((color, "color"), (key, "key")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise MmpiError(f"Split: {nm} must be an int, got {v!r}")
    color, key = int(color), int(key)
    if color < 0 and color != UNDEFINED:
        raise MmpiError(f"Split: color must be >= 0 or UNDEFINED, got {color}")
    recs, ctx = _agree(cx, (color, key))
    if color == UNDEFINED:
        return COMM_NULL
    members = sorted((k, r) for r, (c, k) in enumerate(recs) if c == color)
    return new([cx.group[r] for _, r in members], ctx)


def split_type(cx, split_type, key, new):
    if split_type == UNDEFINED:
        return split(cx, UNDEFINED, key, new)
    if split_type != COMM_TYPE_SHARED:
        raise MmpiError(f"Split_type: unsupported split type {split_type!r} (use "
                        f"COMM_TYPE_SHARED)")
    # the ranks that share memory: this node's (a hybrid world spans several)
    local = getattr(cx.t, "local", None)
    return split(cx, min(local) if local else 0, key, new)


def create(cx, group, new):
    if not isinstance(group, Group):
        raise MmpiError(f"Create: {group!r} is not a Group (use comm.Get_group().Incl(...))")
    mine = set(cx.group)
    bad = [w for w in group._world if w not in mine]
    if bad:
        raise MmpiError(f"Create: the group holds processes outside this communicator "
                        f"(world ranks {bad})")
    _, ctx = _agree(cx, None)
    if cx.t.rank not in group._index or not group._world:
        return COMM_NULL
    return new(group._world, ctx)
