"""Groups, communicator construction and comparison (mpi4py's names).

``Comm`` gets these methods by inheriting :class:`CommunicatorMixin`.  Context
ids: each communicator uses ``c`` for point-to-point and ``c + 1`` for collectives; a process keeps the next id it
may use (``_ctx.next``), and a new communicator takes the maximum over the
parent's members (one object allgather), so two communicators sharing a
member never share an id.
"""

from __future__ import annotations

import numpy as np

from ..errors import MmpiError
from ._const import COMM_TYPE_SHARED, CONGRUENT, IDENT, PROC_NULL, SIMILAR, UNDEFINED, UNEQUAL

__all__ = [
    "Group", "GROUP_EMPTY", "COMM_NULL", "COMM_TYPE_SHARED",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL", "CommunicatorMixin",
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


class CommunicatorMixin:
    """Communicator construction for ``Comm`` (needs ``_t``, ``_group``, ``_ctx``,
    ``_cx`` (its collective context, which holds the name) and an object
    ``allgather``)."""

    @property
    def name(self) -> str:
        return self._cx.name

    @name.setter
    def name(self, value: str) -> None:
        self._cx.name = str(value)

    def Set_name(self, name: str) -> None:
        self._cx.name = str(name)

    def Get_group(self) -> Group:
        return Group(self._group, self._t.rank)

    @property
    def group(self) -> Group:
        return self.Get_group()

    def Compare(self, comm) -> int:
        if comm is None or not hasattr(comm, "_group"):
            raise MmpiError(f"Compare: {comm!r} is not a communicator")
        if self is comm or (self._ctx == comm._ctx and self._group == comm._group):
            return IDENT
        if self._group == comm._group:
            return CONGRUENT
        if set(self._group) == set(comm._group):
            return SIMILAR
        return UNEQUAL

    def _new(self, group, ctx, name=""):
        c = type(self)(self._t, group, ctx, name)
        return c

    def _agree(self, record):
        """Allgather (record, next context id) over this communicator; returns the
        records and the new context id (the maximum), past which every member
        moves its own next id."""
        out = self.allgather((record, _ctx.next))
        ctx = max(c for _, c in out)
        _ctx.next = ctx + 2
        return [r for r, _ in out], ctx

    def Dup(self, info=None):
        _, ctx = self._agree(None)
        return self._new(self._group, ctx)

    def Clone(self):
        return self.Dup()

    def Split(self, color=0, key=0):
        for v, nm in ((color, "color"), (key, "key")):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise MmpiError(f"Split: {nm} must be an int, got {v!r}")
        color, key = int(color), int(key)
        if color < 0 and color != UNDEFINED:
            raise MmpiError(f"Split: color must be >= 0 or UNDEFINED, got {color}")
        recs, ctx = self._agree((color, key))
        if color == UNDEFINED:
            return COMM_NULL
        members = sorted((k, r) for r, (c, k) in enumerate(recs) if c == color)
        return self._new([self._group[r] for _, r in members], ctx)

    def Split_type(self, split_type, key=0, info=None):
        if split_type == UNDEFINED:
            return self.Split(UNDEFINED, key)
        if split_type != COMM_TYPE_SHARED:
            raise MmpiError(f"Split_type: unsupported split type {split_type!r} (driller "
                            f"runs on one machine: use COMM_TYPE_SHARED)")
        return self.Split(0, key)

    def Create(self, group):
        if not isinstance(group, Group):
            raise MmpiError(f"Create: {group!r} is not a Group (use comm.Get_group().Incl(...))")
        mine = set(self._group)
        bad = [w for w in group._world if w not in mine]
        if bad:
            raise MmpiError(f"Create: the group holds processes outside this communicator "
                            f"(world ranks {bad})")
        _, ctx = self._agree(None)
        if self._t.rank not in group._index or not group._world:
            return COMM_NULL
        return self._new(group._world, ctx)
