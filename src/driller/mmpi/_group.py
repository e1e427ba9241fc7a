"""Groups, communicator construction and comparison (mpi4py's names).

``Comm`` delegates its communicator construction to the functions here.  Context
ids: each communicator uses ``c`` for point-to-point and ``c + 1`` for collectives; a process keeps the next id it
may use (``_ctx.next``), and a new communicator takes the maximum over the
parent's members (one object allgather), so two communicators sharing a
member never share an id.  ``Create_group`` and ``Create_from_group`` agree among
the group's members only, on contexts of their own (see :func:`_agree_among`).
Functions returning a communicator call ``new(world_ranks, ctx)``;
``new(None, None)`` makes the null communicator of the caller's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Sequence
    from typing import Any

import weakref
import zlib

import numpy as np

from .._errcodes import ERR_ARG, ERR_GROUP, ERR_RANK, ERR_TAG
from ..errors import MmpiError
from ._coll._context import TAGMASK, Context
from ._coll._gather import allgather
from ._const import (COMM_TYPE_HW_GUIDED, COMM_TYPE_HW_UNGUIDED, COMM_TYPE_RESOURCE_GUIDED,
                     COMM_TYPE_SHARED, CONGRUENT, IDENT, PROC_NULL, SIMILAR, UNDEFINED, UNEQUAL)
from ._handle import Handle

__all__ = [
    "Group", "GROUP_EMPTY", "GROUP_NULL", "COMM_TYPE_SHARED",
    "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL", "get_group", "compare", "dup", "split",
    "split_type", "create", "create_group", "create_from_group", "next_context",
    "claim_contexts",
]



# ================================================================== context ids

class _Ctx:
    next = 4    # contexts this process may still use (2 per communicator)


_ctx = _Ctx()


def next_context() -> int:
    """The first context id this process may still use (what it proposes when a
    new communicator's members agree on one: they take the maximum)."""
    return _ctx.next


def claim_contexts(ctx: int, n: int) -> None:
    """Context ids ``ctx`` .. ``ctx + n - 1`` are taken by a new communicator whose
    members agreed on ``ctx`` elsewhere (intercommunicators: ``_inter``)."""
    _ctx.next = max(_ctx.next, ctx + n)


# ================================================================== groups

class _G:
    """The object behind a group handle: the world ranks, in order, and this
    process's world rank."""

    __slots__ = ("world", "me", "index", "number", "__weakref__")

    def __init__(self, world, me, number=None):
        self.world = list(world)
        self.me = me
        self.index = {w: i for i, w in enumerate(self.world)}
        if len(self.index) != len(self.world):
            raise MmpiError(f"a group cannot hold a rank twice: {self.world}",
                            error_class=ERR_RANK)
        if number is None:
            number = _numbers.next
            _numbers.next = number + 1
        self.number = number
        _numbers.live[number] = self


class _Numbers:
    next = 2                                 # 0: GROUP_NULL, 1: GROUP_EMPTY
    live = weakref.WeakValueDictionary()


_numbers = _Numbers()


def _bad(what: str, msg: str, cls: int = ERR_ARG) -> MmpiError:
    return MmpiError(f"Group.{what}: {msg}", error_class=cls)


class Group(Handle):
    """An ordered set of processes (world ranks inside; ranks 0..size-1 outside).

    ``Group()`` is a null handle (equal to GROUP_NULL), ``Group(group)`` a second
    handle onto ``group``'s group (equal to it)."""

    __slots__ = ("_g", "__weakref__")
    _inner = "_g"   # truth, equality, int handles: Handle

    def __new__(cls, group: Group | None = None, me: Any = None) -> Group:
        self = object.__new__(cls)
        if group is None:
            self._g = None
        elif isinstance(group, Group):
            self._g = group._g
        elif isinstance(group, (list, tuple, range)):   # driller's form: Group(world, me)
            self._g = _G(group, me)
        else:
            raise TypeError(f"{cls.__name__}(group): expected a Group, got "
                            f"{type(group).__name__}")
        return self

    def __init__(self, *args: Any, **kw: Any) -> None:
        pass

    @classmethod
    def _of(cls, world, me):
        new = cls.__new__(cls)
        new._g = _G(world, me)
        return new

    def _get(self, what: str) -> _G:
        g = self._g
        if g is None:
            raise _bad(what, "invalid group: GROUP_NULL or freed", ERR_GROUP)
        return g

    @property
    def _world(self) -> list:
        return self._get("group").world

    @property
    def _index(self) -> dict:
        return self._get("group").index

    # -- the handle (truth, equality, int handles: Handle) --
    def __reduce__(self):
        if self is GROUP_NULL:
            return "GROUP_NULL"
        if self is GROUP_EMPTY:
            return "GROUP_EMPTY"
        if self._g is None:
            return (type(self), ())
        if self._g is GROUP_EMPTY._g:
            return (type(self), (GROUP_EMPTY,))
        raise ValueError(f"cannot pickle {self!r}: only GROUP_NULL and GROUP_EMPTY pickle")

    @property
    def handle(self) -> int:
        """The group's handle (an int >= 0; ``Group.fromhandle`` takes it back)."""
        return 0 if self._g is None else self._g.number

    @classmethod
    def fromhandle(cls, handle: int) -> "Group":
        """A new Python object onto the group of ``handle``."""
        return cls._onto(handle, _numbers.live.get, "live group", ERR_GROUP)

    # -- accessors --
    def Get_size(self) -> int:
        """Number of processes in the group."""
        return len(self._get("Get_size").world)

    def Get_rank(self) -> int:
        """Rank of this process in the group (UNDEFINED if it is no member)."""
        g = self._get("Get_rank")
        return g.index.get(g.me, UNDEFINED)

    @property
    def size(self) -> int:
        """Number of processes in the group."""
        return self.Get_size()

    @property
    def rank(self) -> int:
        """Rank of this process in the group."""
        return self.Get_rank()

    def _ranks(self, ranks, what):
        n = self.Get_size()
        out = []
        for r in ranks:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < n:
                raise _bad(what, f"invalid rank {r!r} (group of size {n})", ERR_RANK)
            out.append(int(r))
        if len(set(out)) != len(out):
            raise _bad(what, f"a rank is listed twice in {out}", ERR_RANK)
        return out

    def _new(self, world) -> "Group":
        return Group._of(world, self._g.me)

    # -- constructors --
    def Dup(self) -> "Group":
        """Duplicate the group."""
        return self._new(self._get("Dup").world)

    def Incl(self, ranks: Sequence[int]) -> "Group":
        """A group of the processes of ``ranks``, in that order."""
        g = self._get("Incl")
        return self._new([g.world[r] for r in self._ranks(ranks, "Incl")])

    def Excl(self, ranks: Sequence[int]) -> "Group":
        """The group without the processes of ``ranks``."""
        g = self._get("Excl")
        drop = set(self._ranks(ranks, "Excl"))
        return self._new([w for i, w in enumerate(g.world) if i not in drop])

    def _range_ranks(self, ranges, what) -> list:
        n = self.Get_size()
        ranks = []
        for rg in ranges:
            try:
                first, last, stride = (int(x) for x in rg)
            except (TypeError, ValueError):
                raise _bad(what, f"a range is a (first, last, stride) triple of ints, "
                                 f"got {rg!r}") from None
            if stride == 0:
                raise _bad(what, f"stride 0 in range {rg!r}", ERR_RANK)
            for r in (first, last):
                if not 0 <= r < n:
                    raise _bad(what, f"invalid rank {r} in range {rg!r} (group of size {n})",
                               ERR_RANK)
            if (last - first) * stride < 0:
                raise _bad(what, f"range {rg!r}: the stride goes away from last", ERR_RANK)
            ranks.extend(range(first, last + (1 if stride > 0 else -1), stride))
        return ranks

    def Range_incl(self, ranges: Sequence[tuple[int, int, int]]) -> "Group":
        """A group of the ranks of the (first, last, stride) ``ranges``."""
        return self.Incl(self._range_ranks(ranges, "Range_incl"))

    def Range_excl(self, ranges: Sequence[tuple[int, int, int]]) -> "Group":
        """The group without the ranks of the (first, last, stride) ``ranges``."""
        return self.Excl(self._range_ranks(ranges, "Range_excl"))

    def Union(self, group: Group) -> "Group":
        """The processes of this group, then those of ``group`` not in it."""
        a, b = self._get("Union"), group._get("Union")
        return Group._of(a.world + [w for w in b.world if w not in a.index], a.me)

    def Intersection(self, group: Group) -> "Group":
        """The processes of this group also in ``group`` (in this group's order)."""
        a, b = self._get("Intersection"), group._get("Intersection")
        return Group._of([w for w in a.world if w in b.index], a.me)

    def Difference(self, group: Group) -> "Group":
        """The processes of this group not in ``group``."""
        a, b = self._get("Difference"), group._get("Difference")
        return Group._of([w for w in a.world if w not in b.index], a.me)

    def Translate_ranks(self, ranks: Sequence[int] | None = None,
                        group: Group | None = None) -> list:
        """Ranks in ``group`` of this group's ``ranks`` (UNDEFINED if absent; PROC_NULL
        stays PROC_NULL); ``group`` None: the world ranks."""
        g = self._get("Translate_ranks")
        if ranks is None:
            ranks = range(len(g.world))
        other = None if group is None else group._get("Translate_ranks")
        out = []
        for r in ranks:
            if r == PROC_NULL:
                out.append(PROC_NULL)
                continue
            w = g.world[self._ranks([r], "Translate_ranks")[0]]
            out.append(w if other is None else other.index.get(w, UNDEFINED))
        return out

    def Compare(self, group: Group) -> int:
        """Compare two groups: IDENT, SIMILAR or UNEQUAL."""
        if not isinstance(group, Group):
            raise TypeError(f"Group.Compare: expected a Group, got {type(group).__name__}")
        a, b = self._get("Compare"), group._get("Compare")
        if a.world == b.world:
            return IDENT
        if set(a.world) == set(b.world):
            return SIMILAR
        return UNEQUAL

    @classmethod
    def Create_from_session_pset(cls, session: Any, pset_name: str) -> "Group":
        """Create a new group from session and process set (``session.Create_group``)."""
        # (session: an MPI.Session; _session sits above _group, imports it: the class is
        # known by its name here)
        create = getattr(type(session), "Create_group", None)
        if create is None or not any(c.__name__ == "Session" for c in type(session).__mro__):
            raise TypeError(f"Group.Create_from_session_pset: expected an MPI.Session, got "
                            f"{type(session).__name__}")
        return create(session, pset_name)

    def Free(self) -> None:
        """Free the group: this handle becomes GROUP_NULL."""
        self._get("Free")
        if self is GROUP_EMPTY:
            return
        self._g = None

    def free(self) -> None:
        """Free the group, safely: nothing for a null or predefined one."""
        if self._g is not None and self is not GROUP_EMPTY:
            self._g = None

    def __repr__(self) -> str:
        if self._g is None:
            return "<mmpi.Group GROUP_NULL>"
        return f"<mmpi.Group of {self.size}, rank {self.rank}>"


GROUP_NULL = Group()
GROUP_EMPTY = Group()
GROUP_EMPTY._g = _G([], None, 1)


# ================================================================== communicators
# Functions over a communicator's Context (``cx``: its ``group`` of world ranks,
# its context ``ctx``, its transport ``t``); ``new(group, ctx)`` makes a Comm.
# ``Comm`` delegates Get_group/Compare/Dup/Split/Split_type/Create to them.

def get_group(cx) -> Group:
    return Group._of(cx.group, cx.t.rank)


def compare(cx, other, comm) -> int:
    """Compare communicators (``other``: the Context of ``comm``)."""
    if type(cx) is not type(other):   # an intra- and an intercommunicator
        return UNEQUAL
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


def _split_args(color, key):
    """(color, key, error message or None), checked locally; the error is raised
    after the agreement, on every rank, so that no rank is left waiting."""
    for v, nm in ((color, "color"), (key, "key")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            return UNDEFINED, 0, f"{nm} must be an int, got {v!r}"
    color, key = int(color), int(key)
    if color < 0 and color != UNDEFINED:
        return UNDEFINED, key, f"color must be >= 0 or UNDEFINED, got {color}"
    return color, key, None


def _split(cx, color, key, err, new, what, strict=False):
    """The split collective; ``strict``: every part must be strictly smaller than
    the communicator (else COMM_NULL everywhere: COMM_TYPE_HW_UNGUIDED)."""
    recs, ctx = _agree(cx, (color, key, err))
    errs = [(r, e) for r, (_, _, e) in enumerate(recs) if e is not None]
    if errs:
        r, e = errs[0]
        raise MmpiError(f"{what}: {e}" + ("" if r == cx.rank else f" (on rank {r})"),
                        error_class=ERR_ARG)
    if color == UNDEFINED or (strict and all(c == color for c, _, _ in recs)):
        return new(None, None)
    members = sorted((k, r) for r, (c, k, _) in enumerate(recs) if c == color)
    return new([cx.group[r] for _, r in members], ctx)


def split(cx, color, key, new):
    color, key, err = _split_args(color, key)
    return _split(cx, color, key, err, new, "Split")


HW_RESOURCE_TYPE = "mpi_hw_resource_type"
SHARED_MEMORY = "mpi_shared_memory"


def split_type(cx, split_type, key, info, new):
    """Split by type.  COMM_TYPE_SHARED keeps the ranks of one node together (all
    of them, but in a hybrid world spanning nodes); the guided types do the same
    when ``info`` asks for ``mpi_hw_resource_type=mpi_shared_memory`` (COMM_NULL
    for any other resource, as MPI says for unknown ones); COMM_TYPE_HW_UNGUIDED
    splits by node when the communicator spans several (setting that key in
    ``info``), else gives COMM_NULL (ranks are not bound to cores: no hardware
    level strictly below the node holds a subset of them)."""
    _, key, err = _split_args(0, key)
    color = UNDEFINED
    if err is None:
        # the ranks that share memory: this node's (a hybrid world spans several)
        local = getattr(cx.t, "local", None)
        node = min(local) if local else 0
        if split_type == COMM_TYPE_SHARED:
            color = node
        elif split_type in (COMM_TYPE_HW_GUIDED, COMM_TYPE_RESOURCE_GUIDED):
            try:
                kind = info.Get(HW_RESOURCE_TYPE) if info else None
            except Exception as e:  # noqa: BLE001 - reported on every rank
                err = f"bad info {info!r}: {e}"
            else:
                color = node if kind == SHARED_MEMORY else UNDEFINED
        elif split_type == COMM_TYPE_HW_UNGUIDED:
            color = node
        elif split_type != UNDEFINED:
            err = (f"unknown split type {split_type!r} (COMM_TYPE_SHARED, "
                   f"COMM_TYPE_HW_GUIDED, COMM_TYPE_HW_UNGUIDED, COMM_TYPE_RESOURCE_GUIDED "
                   f"or UNDEFINED)")
    unguided = split_type == COMM_TYPE_HW_UNGUIDED
    comm = _split(cx, color, key, err, new, "Split_type", strict=unguided)
    if unguided and comm and info:
        info.Set(HW_RESOURCE_TYPE, SHARED_MEMORY)
    return comm


def _check_group(group, what):
    if not isinstance(group, Group):
        raise TypeError(f"{what}: expected a Group, got {type(group).__name__} (use "
                        f"comm.Get_group().Incl(...))")
    return group._get(what)


def create(cx, group, new):
    """Comm.Create: collective over the parent; an argument error on any rank is
    raised on every rank (after the agreement: none is left waiting)."""
    err, cls, g = None, ERR_GROUP, None
    if not isinstance(group, Group):
        err, cls = f"expected a Group, got {type(group).__name__}", ERR_ARG
    elif group._g is None:
        err = "invalid group: GROUP_NULL or freed"
    else:
        g = group._g
        mine = set(cx.group)
        bad = [w for w in g.world if w not in mine]
        if bad:
            err = f"the group holds processes outside this communicator (world ranks {bad})"
    recs, ctx = _agree(cx, err)
    errs = [(r, e) for r, e in enumerate(recs) if e is not None]
    if errs:
        r, e = errs[0]
        raise MmpiError(f"Create: {e}" + ("" if r == cx.rank else f" (on rank {r})"),
                        error_class=cls if r == cx.rank else ERR_GROUP)
    if cx.t.rank not in g.index:
        return new(None, None)
    return new(g.world, ctx)


_CREATE_GROUP_BASE = 1 << 48     # Create_group's agreement contexts: base + parent's ctx
_FROM_GROUP_CTX = 1 << 49        # Create_from_group's agreement context


def _agree_among(t, world, ctx, tag):
    """The new context id, agreed among the processes ``world`` only (an allgather
    on a context of their own, tags numbered from ``tag``)."""
    sub = Context(t, world, ctx)
    sub.seq = tag & TAGMASK
    out = allgather(sub, _ctx.next)
    new_ctx = max(out)
    _ctx.next = new_ctx + 2
    return new_ctx


def create_group(cx, group, tag, new):
    """Comm.Create_group: collective over the group's members only."""
    g = _check_group(group, "Create_group")
    if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or tag < 0:
        raise MmpiError(f"Create_group: tag must be an int >= 0, got {tag!r}",
                        error_class=ERR_TAG)
    mine = set(cx.group)
    bad = [w for w in g.world if w not in mine]
    if bad:
        raise MmpiError(f"Create_group: the group holds processes outside this "
                        f"communicator (world ranks {bad})", error_class=ERR_GROUP)
    if cx.t.rank not in g.index:
        return new(None, None)
    ctx = _agree_among(cx.t, g.world, _CREATE_GROUP_BASE + cx.ctx, int(tag))
    return new(g.world, ctx)


def create_from_group(t, group, stringtag, new):
    """Intracomm.Create_from_group: collective over the group's members only."""
    g = _check_group(group, "Create_from_group")
    if t.rank not in g.index:
        raise MmpiError("Create_from_group: this process is not in the group (only the "
                        "group's members call it)", error_class=ERR_GROUP)
    tag = zlib.crc32(stringtag.encode())
    ctx = _agree_among(t, g.world, _FROM_GROUP_CTX, tag)
    return new(g.world, ctx)
