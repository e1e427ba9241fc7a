"""Intercommunicators: two disjoint groups of ranks that talk to each other (mpi4py's names).

``Intracomm.Create_intercomm(local_leader, peer_comm, remote_leader, tag)`` and
``Intercomm.Create_from_groups(...)`` make one; ``Merge`` turns it into an
intracommunicator.  Point-to-point addresses ranks of the REMOTE group (dest,
source, and the statuses' sources); collectives follow MPI's inter semantics
(``_coll._inter`` has the algorithms and the :class:`~._coll._inter.InterContext`).

Context ids: an intercommunicator takes four (``c``: point-to-point, ``c + 1``:
collectives between the groups, ``c + 3``: collectives within the local
group), the maximum of what every member of both groups proposes
(``_group.next_context``): the leaders swap their group's maximum.

This module sits above ``_comm`` (``Intercomm`` subclasses ``Comm``), so
``Intracomm.Create_intercomm`` cannot import it: this module registers its
builder with ``_comm.register_extension`` when it is imported (``driller.MPI``
and ``driller.mmpi`` import it with ``_comm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable, Sequence
    from typing import Any
    from typing_extensions import Self
    from ._coll._ops import Op
    from ._errhandler import Errhandler
    from ._info import Info
    from ._request import Request
    from ._typing import BufSpec, BufSpecB, BufSpecV, BufSpecW, InPlace

import zlib

import numpy as np

from .. import _errcodes as E
from ..errors import MmpiError
from . import _comm, _group
from . import _threads
from ._coll import _inter as X
from ._coll._bcast import bcast as _intra_bcast
from ._coll._context import Context, co_send, first_error, orecv, waitall
from ._coll._gather import gather as _intra_gather
from ._coll._ops import SUM
from ._comm import Comm, Intracomm
from ._const import ANY_SOURCE, COMM_TYPE_HW_GUIDED, COMM_TYPE_HW_UNGUIDED, \
    COMM_TYPE_RESOURCE_GUIDED, COMM_TYPE_SHARED, CONGRUENT, IDENT, PROC_NULL, \
    SIMILAR, TAG_MAX, UNDEFINED, UNEQUAL
from ._group import HW_RESOURCE_TYPE, SHARED_MEMORY, Group

__all__ = ["Intercomm", "create_intercomm"]

N_CONTEXTS = 4                 # context ids an intercommunicator takes
LEADER_TAG = 1 << 32           # the leaders' exchange on the peer's collective context
FROM_GROUPS_TAG = 1 << 48      # Create_from_groups on the world's collective context


def _err(msg, cls=E.ERR_ARG):
    return MmpiError(msg, error_class=cls)


def _rank_arg(v, n, what, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
        raise _err(f"{what}: invalid {name} {v!r} (a rank of a group of {n}: 0..{n - 1})",
                   E.ERR_RANK)
    return int(v)


class Intercomm(Comm):
    """Intercommunicator: a local and a remote group; point-to-point addresses the
    remote group's ranks, collectives go from one group to the other."""

    def __new__(cls, comm: Comm | None = None, *internal: Any, **kw: Any) -> Self:
        """``Intercomm()``: a null handle (equal to COMM_NULL); ``Intercomm(intercomm)``:
        a second handle onto the same intercommunicator (equal to it)."""
        if internal or kw:
            raise TypeError(f"{cls.__name__}() takes an Intercomm (make one with "
                            f"Intracomm.Create_intercomm or Intercomm.Create_from_groups)")
        if comm is not None and (not isinstance(comm, Comm)
                                 or (comm._h is not None and not comm.Is_inter())):
            raise TypeError(f"{cls.__name__}(comm): expected an intercommunicator, got "
                            f"{comm!r} (make one with Intracomm.Create_intercomm)")
        return super().__new__(cls, comm)

    def _bind(self, h) -> None:
        super()._bind(h)
        cx = h.cx     # an InterContext: the local group, the remote one, the bridge
        # point-to-point peers are the remote group's ranks: Comm's fast paths
        # bound ranks by ``_npeers`` and map them through ``_group``
        self._group = cx.remote
        self._npeers = cx.rsize

    @classmethod
    def _build(cls, t, local, remote, ctx: int, parent=None) -> "Intercomm":
        """A new intercommunicator of this class (its handle holds the InterContext
        and, in ``ext``, its remote group's handle once asked for)."""
        return cls._of_context(X.InterContext(t, local, remote, ctx), parent)

    def _live(self, what):
        h = self._h
        if h is None:
            raise _err(f"Intercomm.{what}: invalid intercommunicator: COMM_NULL or freed",
                       E.ERR_COMM)
        return h.cx

    def __repr__(self) -> str:
        h = self._h
        if h is None:
            return super().__repr__()
        cx = h.cx
        return (f"<mmpi.{type(self).__name__} {cx.name or 'intercomm'} rank {cx.rank} of "
                f"{cx.size}, remote group of {cx.rsize}>")

    # -- queries --
    def Is_inter(self) -> bool:
        """True: this is an intercommunicator."""
        self._cx
        return True

    def Is_intra(self) -> bool:
        """False: this is an intercommunicator."""
        self._cx
        return False

    @property
    def is_inter(self) -> bool:
        """True: this is an intercommunicator."""
        return True

    @property
    def is_intra(self) -> bool:
        """False: this is an intercommunicator."""
        return False

    def Get_remote_group(self) -> Group:
        """Access the remote group associated with the inter-communicator."""
        cx = self._live("Get_remote_group")
        ext = self._h.ext      # one remote group per intercommunicator, as Get_group's
        g = ext.get("remote_group")
        if g is None:
            g = ext["remote_group"] = Group(cx.remote, cx.t.rank)
        return Group(g)

    @property
    def remote_group(self) -> Group:
        """Remote group."""
        return self.Get_remote_group()

    def Get_remote_size(self) -> int:
        """Intercommunicator remote size."""
        cx = self._live("Get_remote_size")
        cx.t.rank
        return cx.rsize

    @property
    def remote_size(self) -> int:
        """Number of processes in remote group."""
        return self.Get_remote_size()

    def Compare(self, comm: Comm) -> int:
        """Compare two communicators (IDENT, CONGRUENT, SIMILAR or UNEQUAL)."""
        cx = self._live("Compare")
        if not isinstance(comm, Comm):
            raise _err(f"Compare: {comm!r} is not a communicator", E.ERR_COMM)
        o = comm._cx
        if not isinstance(o, X.InterContext):
            return UNEQUAL
        if o is cx or (o.ctx == cx.ctx and o.group == cx.group and o.remote == cx.remote):
            return IDENT
        if o.group == cx.group and o.remote == cx.remote:
            return CONGRUENT
        if set(o.group) == set(cx.group) and set(o.remote) == set(cx.remote):
            return SIMILAR
        return UNEQUAL

    # -- construction --
    def _agree(self, record, what):
        cx = self._live(what)
        mine, theirs = X.agree_records(cx, record, _group.next_context())
        ctx = max(c for _, c in mine + theirs)
        _group.claim_contexts(ctx, N_CONTEXTS)
        return cx, [r for r, _ in mine], [r for r, _ in theirs], ctx

    def Dup(self, info: Info | None = None) -> "Intercomm":
        """Duplicate the intercommunicator (collective over both groups), with its
        attributes (copy callbacks) and hints (``info``: new ones)."""
        cx, _, _, ctx = self._agree(None, "Dup")
        new = self._build(cx.t, cx.group, cx.remote, ctx, self)
        return self._derive(new, info, "Dup")

    def Dup_with_info(self, info: Info) -> "Intercomm":
        """Duplicate the intercommunicator with the hints of ``info``."""
        return self.Dup(info)

    def Clone(self) -> "Intercomm":
        """Clone an existing communicator."""
        return self.Dup()

    def Split(self, color: int = 0, key: int = 0) -> Comm:
        """Split the intercommunicator: ranks of the same color in either group form a
        new intercommunicator (COMM_NULL where one side of a color is empty)."""
        self._live("Split")
        for v, nm in ((color, "color"), (key, "key")):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise _err(f"Split: {nm} must be an int, got {v!r}")
        color, key = int(color), int(key)
        if color < 0 and color != UNDEFINED:
            raise _err(f"Split: color must be >= 0 or UNDEFINED, got {color}")
        cx, mine, theirs, ctx = self._agree((color, key), "Split")
        if color == UNDEFINED:
            return type(self).__new__(type(self))
        local = [cx.group[r] for _, r in sorted((k, r) for r, (c, k) in enumerate(mine)
                                                if c == color)]
        remote = [cx.remote[r] for _, r in sorted((k, r) for r, (c, k) in enumerate(theirs)
                                                  if c == color)]
        if not remote:
            return type(self).__new__(type(self))
        return self._build(cx.t, local, remote, ctx, self)

    def Split_type(self, split_type: int, key: int = 0, info: Info | None = None) -> Comm:
        """Split by type: COMM_TYPE_SHARED keeps the ranks of a node (of both groups)
        together; the guided types do the same when ``info`` asks for
        ``mpi_hw_resource_type=mpi_shared_memory`` (else COMM_NULL, as for unknown
        resources); COMM_TYPE_HW_UNGUIDED and UNDEFINED give COMM_NULL."""
        cx = self._live("Split_type")
        local = getattr(cx.t, "local", None)   # this node's world ranks (hybrid worlds)
        node = min(local) if local else 0
        if split_type == COMM_TYPE_SHARED:
            color = node
        elif split_type in (COMM_TYPE_HW_GUIDED, COMM_TYPE_RESOURCE_GUIDED):
            kind = info.Get(HW_RESOURCE_TYPE) if info else None
            color = node if kind == SHARED_MEMORY else UNDEFINED
        elif split_type in (COMM_TYPE_HW_UNGUIDED, UNDEFINED):
            color = UNDEFINED
        else:
            # (checked on every rank before any communication)
            raise _err(f"Split_type: unknown split type {split_type!r} (COMM_TYPE_SHARED, "
                       f"COMM_TYPE_HW_GUIDED, COMM_TYPE_HW_UNGUIDED, "
                       f"COMM_TYPE_RESOURCE_GUIDED or UNDEFINED)")
        return self.Split(color, key)

    def Create(self, group: Group) -> Comm:
        """A new intercommunicator of ``group`` (a subgroup of the local group) and the
        remote group's choice of its own ranks (collective over both groups)."""
        cx = self._live("Create")
        if not isinstance(group, Group):
            raise _err(f"Create: {group!r} is not a Group (use comm.Get_group().Incl(...))",
                       E.ERR_GROUP)
        world = group.Translate_ranks(None, None) if group.Get_size() else []
        bad = [w for w in world if w not in cx.index]
        if bad:
            raise _err(f"Create: the group holds processes outside the local group "
                       f"(world ranks {bad})", E.ERR_GROUP)
        _, mine, theirs, ctx = self._agree(world, "Create")
        remote = theirs[0]
        if cx.t.rank not in world or not remote:
            return type(self).__new__(type(self))
        return self._build(cx.t, world, remote, ctx, self)

    def Create_group(self, group: Group, tag: int = 0) -> Intracomm:
        """Not for intercommunicators (MPI: an intracommunicator's call)."""
        self._live("Create_group")
        raise _err("Create_group: comm must be an intracommunicator (Merge the "
                   "intercommunicator first)", E.ERR_COMM)

    def Merge(self, high: bool = False) -> Intracomm:
        """Merge the groups into an intracommunicator: the group passing
        ``high=False`` first (if both pass the same, the one holding the lower world
        rank first)."""
        cx, mine, theirs, ctx = self._agree(bool(high), "Merge")
        me_high, they_high = mine[0], theirs[0]
        first = cx.low if me_high == they_high else not me_high
        group = cx.group + cx.remote if first else cx.remote + cx.group
        return Intracomm._of_context(Context(cx.t, group, ctx), self)

    @classmethod
    def Create_from_groups(cls, local_group: Group, local_leader: int, remote_group: Group,
                           remote_leader: int, stringtag: str = "org.mpi4py",
                           info: Info | None = None,
                           errhandler: Errhandler | None = None) -> "Intercomm":
        """Create an intercommunicator from a local and a remote group (no parent
        communicator: every member of both groups calls it with the same stringtag)."""
        what = "Create_from_groups"
        for g, nm in ((local_group, "local_group"), (remote_group, "remote_group")):
            if not isinstance(g, Group) or not g.Get_size():
                raise _err(f"{what}: {nm} must be a non-empty Group, got {g!r}", E.ERR_GROUP)
        _rank_arg(local_leader, local_group.Get_size(), what, "local_leader")
        _rank_arg(remote_leader, remote_group.Get_size(), what, "remote_leader")
        if not isinstance(stringtag, str):
            raise _err(f"{what}: stringtag must be a str, got {stringtag!r}")
        local = local_group.Translate_ranks(None, None)
        remote = remote_group.Translate_ranks(None, None)
        world = _comm.world_comm()
        t = world._cx.t
        if t.rank not in local:
            raise _err(f"{what}: this process is not in local_group", E.ERR_GROUP)
        if set(local) & set(remote):
            raise _err(f"{what}: the groups overlap (world ranks "
                       f"{sorted(set(local) & set(remote))})", E.ERR_GROUP)
        # no parent communicator: the members swap their proposals on the world's
        # collective context, tagged by the groups, the stringtag and a call count
        # (members of the same groups call in the same order, as MPI requires)
        key = (stringtag, tuple(sorted((tuple(sorted(local)), tuple(sorted(remote))))))
        n = _from_groups_calls[key] = _from_groups_calls.get(key, 0) + 1
        tag = FROM_GROUPS_TAG | (zlib.crc32(repr(key).encode()) << 8) | (n & 0xFF)
        members = sorted(local + remote)
        tmp = Context(t, members, world._cx.ctx)
        me = tmp.rank
        prop = _group.next_context()
        ops = [co_send(tmp, prop, i, tag) for i in range(len(members)) if i != me]
        props = [orecv(tmp, i, tag) for i in range(len(members)) if i != me]
        waitall(t, ops)
        first_error(ops)
        ctx = max([prop] + props)
        _group.claim_contexts(ctx, N_CONTEXTS)
        new = cls._build(t, local, remote, ctx)
        if info is not None:
            new.Set_info(info)
        if errhandler is not None:
            new.Set_errhandler(errhandler)
        return new

    # -- point-to-point: Comm's methods (their fast paths take the remote group's
    # ranks through ``_npeers``/``_group``); ranks are checked against the remote group --
    def _dest(self, dest, what: str) -> int:
        cx = self._cx
        if isinstance(dest, (int, np.integer)) and not isinstance(dest, bool):
            dest = int(dest)
            if 0 <= dest < cx.rsize:
                return cx.remote[dest]
            if dest == PROC_NULL:
                return PROC_NULL
        raise _err(f"{what}: invalid destination rank {dest!r} (an intercommunicator's "
                   f"peers are the {cx.rsize} ranks of the remote group: 0..{cx.rsize - 1} "
                   f"or PROC_NULL)", E.ERR_RANK)

    def _source(self, source, what: str) -> int:
        cx = self._cx
        if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
            source = int(source)
            if 0 <= source < cx.rsize:
                return cx.remote[source]
            if source == ANY_SOURCE or source == PROC_NULL:
                return source
        raise _err(f"{what}: invalid source rank {source!r} (an intercommunicator's peers "
                   f"are the {cx.rsize} ranks of the remote group: 0..{cx.rsize - 1}, "
                   f"ANY_SOURCE or PROC_NULL)", E.ERR_RANK)

    # -- collectives (``_coll._inter``) --
    def Barrier(self) -> None:
        """Barrier synchronization (every rank of both groups)."""
        X.Barrier(self._cx)

    def barrier(self) -> None:
        """Barrier synchronization (every rank of both groups)."""
        X.Barrier(self._cx)

    def Ibarrier(self) -> Request:
        """Nonblocking barrier."""
        return X.Ibarrier(self._cx)

    def Bcast(self, buf: BufSpec, root: int = 0) -> None:
        """Broadcast from the root to every rank of the remote group."""
        X.Bcast(self._cx, buf, root)

    def Ibcast(self, buf: BufSpec, root: int = 0) -> Request:
        """Nonblocking broadcast."""
        return X.Ibcast(self._cx, buf, root)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Broadcast an object from the root to the remote group (None in the
        root's group)."""
        return X.bcast(self._cx, obj, root)

    def Gather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB | None, root: int = 0) -> None:
        """Gather the remote group's buffers at the root."""
        X.Gather(self._cx, sendbuf, recvbuf, root)

    def Gatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV | None, root: int = 0) -> None:
        """Gather Vector."""
        X.Gatherv(self._cx, sendbuf, recvbuf, root)

    def Igather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB | None,
                root: int = 0) -> Request:
        """Nonblocking gather."""
        return X.Igather(self._cx, sendbuf, recvbuf, root)

    def Igatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV | None,
                 root: int = 0) -> Request:
        """Nonblocking gather vector."""
        return X.Igatherv(self._cx, sendbuf, recvbuf, root)

    def gather(self, sendobj: Any, root: int = 0) -> list[Any] | None:
        """Gather the remote group's objects at the root (a list there, else None)."""
        return X.gather(self._cx, sendobj, root)

    def Scatter(self, sendbuf: BufSpecB | None, recvbuf: BufSpec | InPlace, root: int = 0) -> None:
        """Scatter the root's blocks over the remote group."""
        X.Scatter(self._cx, sendbuf, recvbuf, root)

    def Scatterv(self, sendbuf: BufSpecV | None, recvbuf: BufSpec | InPlace,
                 root: int = 0) -> None:
        """Scatter Vector."""
        X.Scatterv(self._cx, sendbuf, recvbuf, root)

    def Iscatter(self, sendbuf: BufSpecB | None, recvbuf: BufSpec | InPlace,
                 root: int = 0) -> Request:
        """Nonblocking scatter."""
        return X.Iscatter(self._cx, sendbuf, recvbuf, root)

    def Iscatterv(self, sendbuf: BufSpecV | None, recvbuf: BufSpec | InPlace,
                  root: int = 0) -> Request:
        """Nonblocking scatter vector."""
        return X.Iscatterv(self._cx, sendbuf, recvbuf, root)

    def scatter(self, sendobj: Sequence[Any] | None, root: int = 0) -> Any:
        """Scatter the root's sequence of objects over the remote group."""
        return X.scatter(self._cx, sendobj, root)

    def Allgather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB) -> None:
        """Every rank gets the remote group's buffers."""
        X.Allgather(self._cx, sendbuf, recvbuf)

    def Allgatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV) -> None:
        """Gather to All Vector."""
        X.Allgatherv(self._cx, sendbuf, recvbuf)

    def Iallgather(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecB) -> Request:
        """Nonblocking gather to all."""
        return X.Iallgather(self._cx, sendbuf, recvbuf)

    def Iallgatherv(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpecV) -> Request:
        """Nonblocking gather to all vector."""
        return X.Iallgatherv(self._cx, sendbuf, recvbuf)

    def allgather(self, sendobj: Any) -> list[Any]:
        """Every rank gets the list of the remote group's objects."""
        return X.allgather(self._cx, sendobj)

    def Alltoall(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpecB) -> None:
        """Block r of the send buffer goes to remote rank r."""
        X.Alltoall(self._cx, sendbuf, recvbuf)

    def Alltoallv(self, sendbuf: BufSpecV | InPlace, recvbuf: BufSpecV) -> None:
        """All to All Scatter/Gather Vector."""
        X.Alltoallv(self._cx, sendbuf, recvbuf)

    def Alltoallw(self, sendbuf: BufSpecW | InPlace, recvbuf: BufSpecW) -> None:
        """All to All Scatter/Gather General (byte displacements, a datatype per rank)."""
        X.Alltoallw(self._cx, sendbuf, recvbuf)

    def Ialltoall(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpecB) -> Request:
        """Nonblocking all to all."""
        return X.Ialltoall(self._cx, sendbuf, recvbuf)

    def Ialltoallv(self, sendbuf: BufSpecV | InPlace, recvbuf: BufSpecV) -> Request:
        """Nonblocking all to all vector."""
        return X.Ialltoallv(self._cx, sendbuf, recvbuf)

    def Ialltoallw(self, sendbuf: BufSpecW | InPlace, recvbuf: BufSpecW) -> Request:
        """Nonblocking all to all general."""
        return X.Ialltoallw(self._cx, sendbuf, recvbuf)

    def alltoall(self, sendobj: Sequence[Any]) -> list[Any]:
        """Item r of ``sendobj`` goes to remote rank r; returns the remote items."""
        return X.alltoall(self._cx, sendobj)

    def Reduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec | None, op: Op = SUM,
               root: int = 0) -> None:
        """Reduce the remote group's buffers at the root."""
        X.Reduce(self._cx, sendbuf, recvbuf, op, root)

    def Ireduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec | None, op: Op = SUM,
                root: int = 0) -> Request:
        """Nonblocking reduce."""
        return X.Ireduce(self._cx, sendbuf, recvbuf, op, root)

    def reduce(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM,
               root: int = 0) -> Any | None:
        """Reduce the remote group's objects at the root (None elsewhere)."""
        return X.reduce(self._cx, sendobj, op, root)

    def Allreduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> None:
        """Every rank gets the reduction of the remote group's buffers."""
        X.Allreduce(self._cx, sendbuf, recvbuf, op)

    def Iallreduce(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec, op: Op = SUM) -> Request:
        """Nonblocking reduce to all."""
        return X.Iallreduce(self._cx, sendbuf, recvbuf, op)

    def allreduce(self, sendobj: Any, op: Op | Callable[[Any, Any], Any] = SUM) -> Any:
        """Every rank gets the reduction of the remote group's objects."""
        return X.allreduce(self._cx, sendobj, op)

    def Reduce_scatter_block(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpec | BufSpecB,
                             op: Op = SUM) -> None:
        """The remote group's reduction, scattered in equal blocks over this group."""
        X.Reduce_scatter_block(self._cx, sendbuf, recvbuf, op)

    def Ireduce_scatter_block(self, sendbuf: BufSpecB | InPlace, recvbuf: BufSpec | BufSpecB,
                              op: Op = SUM) -> Request:
        """Nonblocking reduce-scatter block."""
        return X.Ireduce_scatter_block(self._cx, sendbuf, recvbuf, op)

    def Reduce_scatter(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec,
                       recvcounts: Sequence[int] | None = None, op: Op = SUM) -> None:
        """The remote group's reduction, scattered over this group by ``recvcounts``."""
        X.Reduce_scatter(self._cx, sendbuf, recvbuf, recvcounts, op)

    def Ireduce_scatter(self, sendbuf: BufSpec | InPlace, recvbuf: BufSpec,
                        recvcounts: Sequence[int] | None = None, op: Op = SUM) -> Request:
        """Nonblocking reduce-scatter."""
        return X.Ireduce_scatter(self._cx, sendbuf, recvbuf, recvcounts, op)


_from_groups_calls: dict = {}


def create_intercomm(comm: Intracomm, local_leader: int, peer_comm, remote_leader: int,
                     tag: int = 0) -> Intercomm:
    """``Intracomm.Create_intercomm``: collective over ``comm`` (the local group)
    and, through the leaders, over the remote group."""
    what = "Create_intercomm"
    lcx = comm._cx
    local_leader = _rank_arg(local_leader, lcx.size, what, "local_leader")
    if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or \
            not 0 <= tag <= TAG_MAX:
        raise _err(f"{what}: invalid tag {tag!r} (an int in 0..{TAG_MAX})", E.ERR_TAG)
    leader = lcx.rank == local_leader
    err = None
    if leader:   # peer_comm and remote_leader matter at the leader only
        if not isinstance(peer_comm, Comm) or isinstance(peer_comm, Intercomm):
            err = (f"{what}: peer_comm must be an intracommunicator holding both leaders, "
                   f"got {peer_comm!r}", E.ERR_COMM)
        elif (isinstance(remote_leader, bool) or not isinstance(remote_leader, (int, np.integer))
              or not 0 <= remote_leader < peer_comm._cx.size):
            err = (f"{what}: invalid remote_leader {remote_leader!r} (a rank of peer_comm, "
                   f"0..{peer_comm._cx.size - 1})", E.ERR_RANK)
        elif peer_comm._cx.group[int(remote_leader)] in lcx.index:
            err = (f"{what}: the remote leader (rank {remote_leader} of peer_comm) is in "
                   f"the local group: the groups must be disjoint", E.ERR_RANK)
    # every member proposes a context id; the leaders swap their group's maximum
    props = _intra_gather(lcx, _group.next_context(), local_leader)
    if leader:
        out = ("err", err)
        if err is None:
            pcx = peer_comm._cx
            rl = int(remote_leader)
            ptag = LEADER_TAG + int(tag)
            s = co_send(pcx, (lcx.group, max(props)), rl, ptag)
            remote, rprop = orecv(pcx, rl, ptag)
            waitall(lcx.t, [s])
            first_error([s])
            bad = set(remote) & set(lcx.group)
            if bad:
                out = ("err", (f"{what}: the groups overlap (world ranks {sorted(bad)})",
                               E.ERR_GROUP))
            else:
                out = ("ok", (remote, max(max(props), rprop)))
    else:
        out = None
    kind, val = _intra_bcast(lcx, out, local_leader)
    if kind == "err":
        raise _err(*val)
    remote, ctx = val
    _group.claim_contexts(ctx, N_CONTEXTS)
    return Intercomm._build(lcx.t, lcx.group, remote, ctx, comm)


_comm.register_extension("create_intercomm", create_intercomm)

_threads.register(Intercomm)
