"""Process topologies: cartesian grids, graphs and distributed graphs (mpi4py's names).

``Topocomm`` is an :class:`~._comm.Intracomm` that knows its neighbours;
``Cartcomm``, ``Graphcomm`` and ``Distgraphcomm`` describe them as MPI does.
``Intracomm.Create_cart`` (and ``Create_graph``, ``Create_dist_graph``,
``Create_dist_graph_adjacent``, ``Cart_map``, ``Graph_map``) live on the
intracommunicator in ``_comm``, which never imports this module: each class here
registers itself with ``Intracomm`` as it is defined (``kind=...``, through
``Intracomm.__init_subclass__``) and those methods delegate to the registered
class's ``create``/``map``.  Imports point down only (this module imports
``_comm``); ``driller.MPI`` and ``driller.mmpi`` load this module.

Construction is collective.  Every rank checks its arguments first; one object
allgather then tells every rank whether any rank's were bad, so a bad argument
raises on every rank (the same exception type: ValueError where mpi4py raises
one, else MPI.Exception with its error class) and nobody is left waiting.  The
new communicator then gets its context ids as Split/Dup do (``_group``).
``reorder`` is accepted and ranks are kept (every rank is on one machine).

The neighbourhood collectives (``Neighbor_*``, ``Ineighbor_*``,
``neighbor_*``) are ``_coll._neighbor``'s algorithms, given the communicator's
receive and send plans (see there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Sequence
    from typing import Any
    from typing_extensions import Self
    from ._info import Info
    from ._request import Request
    from ._typing import BufSpec, BufSpecB, BufSpecV, BufSpecW

from .._errcodes import ERR_ARG, ERR_DIMS, ERR_RANK
from ..errors import MmpiError
from . import _group
from . import _threads
from ._coll import _neighbor
from ._coll._gather import allgather
from ._comm import Comm, Intracomm
from ._const import CART, DIST_GRAPH, GRAPH, PROC_NULL, UNDEFINED, UNWEIGHTED, WEIGHTS_EMPTY

__all__ = [
    "Topocomm", "Cartcomm", "Graphcomm", "Distgraphcomm", "Compute_dims",
    "CART", "GRAPH", "DIST_GRAPH", "UNWEIGHTED", "WEIGHTS_EMPTY",
]


# ------------------------------------------------------------------ argument checks

def _int(v, what, name) -> int:
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError(f"{what}: {name} must be an int, got {v!r}")
    return v.__index__()


def _ints(xs, what, name) -> list:
    if xs is None:
        return []
    try:
        items = list(xs)
    except TypeError:
        raise TypeError(f"{what}: {name} must be a sequence of ints, got {xs!r}") from None
    return [_int(v, what, name) for v in items]


def _expect(n, got, what, name):
    if got != n:
        # mpi4py's own wording for a sequence of the wrong length
        raise ValueError(f"{what}: {name}: expecting {n} items, got {got}")


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def _dims(dims, what) -> list:
    ds = _ints(dims, what, "dims")
    for d in ds:
        if d <= 0:
            raise MmpiError(f"{what}: invalid dimension {d} in dims {ds} (each must be >= 1; "
                            f"MPI.Compute_dims(size, ndim) gives a balanced grid)",
                            error_class=ERR_DIMS)
    return ds


def _periods(periods, ndim, what) -> list:
    if periods is None:
        return [0] * ndim
    if isinstance(periods, (bool, int)):
        return [1 if periods else 0] * ndim
    try:
        ps = list(periods)
    except TypeError:
        raise TypeError(f"{what}: periods must be a bool or a sequence of {ndim} bools, "
                        f"got {periods!r}") from None
    _expect(ndim, len(ps), what, "periods")
    return [1 if p else 0 for p in ps]


def _cart_args(size, dims, periods, what):
    ds = _dims(dims, what)
    ps = _periods(periods, len(ds), what)
    n = _prod(ds)
    if n > size:
        raise MmpiError(f"{what}: the grid {ds} holds {n} processes but the communicator "
                        f"has only {size}", error_class=ERR_ARG)
    return ds, ps


def _graph_args(size, index, edges, what):
    idx = _ints(index, what, "index")
    eds = _ints(edges, what, "edges")
    # mpi4py's extension: the 'standard' adjacency form [0, i1, ..., in] is accepted too
    if idx and idx[0] == 0 and idx[-1] == len(eds):
        idx = idx[1:]
    nnodes = len(idx)
    if nnodes > size:
        raise MmpiError(f"{what}: the graph has {nnodes} nodes but the communicator only "
                        f"{size} processes", error_class=ERR_ARG)
    prev = 0
    for i, v in enumerate(idx):
        if v < prev:
            raise MmpiError(f"{what}: index must be non-decreasing (cumulative neighbour "
                            f"counts), index[{i}] = {v} < {prev}", error_class=ERR_ARG)
        prev = v
    nedges = idx[-1] if idx else 0
    if nedges > len(eds):
        raise MmpiError(f"{what}: index says {nedges} edges but only {len(eds)} are given",
                        error_class=ERR_ARG)
    eds = eds[:nedges]
    for e in eds:
        if not 0 <= e < nnodes:
            raise MmpiError(f"{what}: edge to node {e} is out of range (the graph has "
                            f"{nnodes} nodes: 0..{nnodes - 1})", error_class=ERR_ARG)
    return idx, eds


def _ranks(xs, size, what, name) -> list:
    rs = _ints(xs, what, name)
    for r in rs:
        if not 0 <= r < size:
            raise MmpiError(f"{what}: invalid rank {r} in {name} (communicator of size "
                            f"{size}; valid: 0..{size - 1})", error_class=ERR_ARG)
    return rs


def _weights(w, degree, what, name):
    """(weighted, weights): None/UNWEIGHTED -> unweighted; WEIGHTS_EMPTY -> weighted,
    no edge; else one non-negative int per edge."""
    if w is None or w is UNWEIGHTED:
        return False, None
    if w is WEIGHTS_EMPTY:
        if degree:
            raise ValueError(f"{what}: {name} is MPI.WEIGHTS_EMPTY but there are {degree} "
                             f"edges (pass one weight per edge)")
        return True, []
    ws = _ints(w, what, name)
    _expect(degree, len(ws), what, name)
    for v in ws:
        if v < 0:
            raise MmpiError(f"{what}: negative weight {v} in {name}", error_class=ERR_ARG)
    return True, ws


def _agree(cx, err, what, payload=None) -> list:
    """Every rank has checked its arguments (``err``: its error or None): raise on every
    rank if any rank's were bad, else return every rank's ``payload`` (one object
    allgather; nobody is left waiting)."""
    rec = None
    if err is not None:
        rec = (type(err).__name__, getattr(err, "error_class", ERR_ARG), str(err))
    recs = allgather(cx, (rec, payload))
    if err is not None:
        raise err
    for r, (rec, _) in enumerate(recs):
        if rec is not None:
            kind, code, msg = rec
            text = f"{what}: rank {r} passed invalid arguments ({msg})"
            if kind in ("ValueError", "TypeError"):
                raise (ValueError if kind == "ValueError" else TypeError)(text)
            raise MmpiError(text, error_class=code)
    return [p for _, p in recs]


def _checked(cx, what, check, share=False):
    """Run ``check()`` (the local argument checks), then agree with every rank; its
    result (``share``: every rank's, in rank order)."""
    try:
        out, err = check(), None
    except Exception as e:   # (a bad argument: the checks have no side effect)
        out, err = None, e
    outs = _agree(cx, err, what, out if share else None)
    return outs if share else out


def _occurrences(ranks):
    """The tag step of each edge: its occurrence among the edges to the same rank."""
    seen: dict = {}
    out = []
    for r in ranks:
        k = seen.get(r, 0)
        seen[r] = k + 1
        out.append((r, min(k, 255)))
    return out


# ------------------------------------------------------------------ topology data

class _Cart:
    """A cartesian grid: ``dims``, ``periods`` (0/1), this rank's ``coords``."""

    code = CART
    __slots__ = ("dims", "periods", "coords", "inplan", "outplan")

    def __init__(self, dims, periods, rank):
        self.dims = list(dims)
        self.periods = list(periods)
        self.coords = self.coords_of(rank)
        inplan, outplan = [], []
        for i in range(len(self.dims)):
            lo, hi = self.shift(i, 1)   # the -1 neighbour, the +1 neighbour
            # a message is tagged by the direction it travels: 2i (towards -1), 2i+1
            down, up = (2 * i) & 0xFF, (2 * i + 1) & 0xFF
            outplan += [(lo, down), (hi, up)]
            inplan += [(lo, up), (hi, down)]
        self.inplan, self.outplan = inplan, outplan

    def coords_of(self, rank):
        out = []
        for d in reversed(self.dims):
            out.append(rank % d)
            rank //= d
        return out[::-1]

    def rank_of(self, coords, what):
        r = 0
        for i, (c, d, p) in enumerate(zip(coords, self.dims, self.periods)):
            if not 0 <= c < d:
                if not p:
                    raise MmpiError(f"{what}: coordinate {c} is outside dimension {i} "
                                    f"(0..{d - 1}, not periodic)", error_class=ERR_ARG)
                c %= d
            r = r * d + c
        return r

    def shift(self, direction, disp):
        c, d = self.coords[direction], self.dims[direction]
        out = []
        for x in (c - disp, c + disp):
            if not 0 <= x < d:
                if not self.periods[direction]:
                    out.append(PROC_NULL)
                    continue
                x %= d
            coords = list(self.coords)
            coords[direction] = x
            out.append(self.rank_of(coords, "Shift"))
        return out[0], out[1]


class _Graph:
    """A graph: cumulative ``index`` (one entry per node) and ``edges``."""

    code = GRAPH
    __slots__ = ("index", "edges", "inplan", "outplan")

    def __init__(self, index, edges, rank):
        self.index, self.edges = list(index), list(edges)
        self.inplan = self.outplan = _occurrences(self.neighbors(rank))

    def neighbors(self, rank):
        lo = self.index[rank - 1] if rank > 0 else 0
        return self.edges[lo:self.index[rank]]


class _DistGraph:
    """A rank's part of a distributed graph: ``sources``, ``destinations``, their
    weights (None: unweighted)."""

    code = DIST_GRAPH
    __slots__ = ("sources", "destinations", "sweights", "dweights", "weighted",
                 "inplan", "outplan")

    def __init__(self, sources, destinations, sweights, dweights, weighted):
        self.sources, self.destinations = list(sources), list(destinations)
        self.weighted = weighted
        self.sweights = (list(sweights) if sweights is not None else
                         [1] * len(self.sources)) if weighted else None
        self.dweights = (list(dweights) if dweights is not None else
                         [1] * len(self.destinations)) if weighted else None
        self.inplan = _occurrences(self.sources)
        self.outplan = _occurrences(self.destinations)


# ------------------------------------------------------------------ communicators

_KIND_NAMES = {CART: "cartesian", GRAPH: "graph", DIST_GRAPH: "distributed graph"}


class Topocomm(Intracomm):
    """Topology intracommunicator."""

    _code: int | None = None   # the topology of the class (CART...); None: any

    def __new__(cls, comm: Comm | None = None, *args: Any, **kw: Any) -> Self:
        if not args and not kw and comm is not None and comm:
            # Cartcomm(comm) and friends: a new handle onto a communicator with that
            # topology (mpi4py: TypeError for any other communicator)
            got = comm.Get_topology() if isinstance(comm, Comm) else UNDEFINED
            want = cls._code
            if got == UNDEFINED or (want is not None and got != want):
                raise TypeError(f"{cls.__name__}({type(comm).__name__}): expecting a "
                                f"communicator with a {_KIND_NAMES.get(want, 'process')} "
                                f"topology")
        return super().__new__(cls, comm, *args, **kw)

    @classmethod
    def _with_topo(cls, parent, group, ctx, topo):
        """A new communicator of this class on ``group``/``ctx``, made by ``parent``
        (as any new communicator: it inherits the parent's error handler), with the
        topology ``topo(rank)`` makes for this rank, kept in its Context (every handle
        onto it sees it); ``group`` None: a null one (the handle layer asks for it)."""
        base = next(k for k in cls.__mro__ if "_code" in k.__dict__)   # Cartcomm...
        if group is None:
            return base.__new__(base)
        plain = parent._new(group, ctx)
        plain._cx.topo = topo(plain.rank)
        # a handle of this class onto it (a user's subclass too: its own __new__ may
        # expect other arguments, as mpi4py's subclassing tests do), which handle
        # look-ups (fromhandle, f2py) give back
        comm = cls.__new__(cls) if cls is not base else base.__new__(base)
        comm._bind(plain._h)
        plain._h.cls = cls
        return comm

    @property
    def _topo(self):
        return self._cx.topo

    # what Split/Create/Split_type/Create_group make of a topology communicator: a
    # plain Intracomm (with this one's error handler, as any new communicator)
    def _new(self, group, ctx):
        return Intracomm(self)._new(group, ctx)

    def Dup(self, info: Info | None = None) -> Self:
        """Duplicate the communicator, with its topology, attributes and hints."""
        return self._derive(self._dup(), info, "Dup")

    def Dup_with_info(self, info: Info) -> Self:
        """Duplicate the communicator, with its topology, and the hints of ``info``."""
        return self._derive(self._dup(), info, "Dup_with_info")

    def _dup(self):
        topo, cls = self._topo, type(self)
        return _group.dup(self._cx, lambda g, c: cls._with_topo(self, g, c, lambda r: topo))

    def Clone(self) -> Self:
        """Clone an existing communicator."""
        return self.Dup()

    # -- neighbours --
    @property
    def degrees(self) -> tuple[int, int]:
        """Number of incoming and outgoing neighbors."""
        self._t.rank
        return len(self._topo.inplan), len(self._topo.outplan)

    @property
    def indegree(self) -> int:
        """Number of incoming neighbors."""
        return self.degrees[0]

    @property
    def outdegree(self) -> int:
        """Number of outgoing neighbors."""
        return self.degrees[1]

    @property
    def inedges(self) -> list[int]:
        """Incoming neighbors."""
        self._t.rank
        return [r for r, _ in self._topo.inplan]

    @property
    def outedges(self) -> list[int]:
        """Outgoing neighbors."""
        self._t.rank
        return [r for r, _ in self._topo.outplan]

    @property
    def inoutedges(self) -> tuple[list[int], list[int]]:
        """Incoming and outgoing neighbors."""
        return self.inedges, self.outedges

    # -- neighbourhood collectives (``_coll._neighbor``) --
    def Neighbor_allgather(self, sendbuf: BufSpec, recvbuf: BufSpecB) -> None:
        """Neighbor Gather to All."""
        _neighbor.Neighbor_allgather(self._cx, self._topo.inplan, self._topo.outplan,
                                     sendbuf, recvbuf)

    def Neighbor_allgatherv(self, sendbuf: BufSpec, recvbuf: BufSpecV) -> None:
        """Neighbor Gather to All Vector."""
        _neighbor.Neighbor_allgatherv(self._cx, self._topo.inplan, self._topo.outplan,
                                      sendbuf, recvbuf)

    def Neighbor_alltoall(self, sendbuf: BufSpecB, recvbuf: BufSpecB) -> None:
        """Neighbor All to All."""
        _neighbor.Neighbor_alltoall(self._cx, self._topo.inplan, self._topo.outplan,
                                    sendbuf, recvbuf)

    def Neighbor_alltoallv(self, sendbuf: BufSpecV, recvbuf: BufSpecV) -> None:
        """Neighbor All to All Vector."""
        _neighbor.Neighbor_alltoallv(self._cx, self._topo.inplan, self._topo.outplan,
                                     sendbuf, recvbuf)

    def Neighbor_alltoallw(self, sendbuf: BufSpecW, recvbuf: BufSpecW) -> None:
        """Neighbor All to All General."""
        _neighbor.Neighbor_alltoallw(self._cx, self._topo.inplan, self._topo.outplan,
                                     sendbuf, recvbuf)

    def Ineighbor_allgather(self, sendbuf: BufSpec, recvbuf: BufSpecB) -> Request:
        """Nonblocking Neighbor Gather to All."""
        return _neighbor.Neighbor_allgather(self._cx, self._topo.inplan, self._topo.outplan,
                                            sendbuf, recvbuf, True)

    def Ineighbor_allgatherv(self, sendbuf: BufSpec, recvbuf: BufSpecV) -> Request:
        """Nonblocking Neighbor Gather to All Vector."""
        return _neighbor.Neighbor_allgatherv(self._cx, self._topo.inplan,
                                             self._topo.outplan, sendbuf, recvbuf, True)

    def Ineighbor_alltoall(self, sendbuf: BufSpecB, recvbuf: BufSpecB) -> Request:
        """Nonblocking Neighbor All to All."""
        return _neighbor.Neighbor_alltoall(self._cx, self._topo.inplan, self._topo.outplan,
                                           sendbuf, recvbuf, True)

    def Ineighbor_alltoallv(self, sendbuf: BufSpecV, recvbuf: BufSpecV) -> Request:
        """Nonblocking Neighbor All to All Vector."""
        return _neighbor.Neighbor_alltoallv(self._cx, self._topo.inplan, self._topo.outplan,
                                            sendbuf, recvbuf, True)

    def Ineighbor_alltoallw(self, sendbuf: BufSpecW, recvbuf: BufSpecW) -> Request:
        """Nonblocking Neighbor All to All General."""
        return _neighbor.Neighbor_alltoallw(self._cx, self._topo.inplan, self._topo.outplan,
                                            sendbuf, recvbuf, True)

    def neighbor_allgather(self, sendobj: Any) -> list:
        """Neighbor Gather to All."""
        return _neighbor.neighbor_allgather(self._cx, self._topo.inplan, self._topo.outplan,
                                            sendobj)

    def neighbor_alltoall(self, sendobj: list[Any]) -> list:
        """Neighbor All to All."""
        return _neighbor.neighbor_alltoall(self._cx, self._topo.inplan, self._topo.outplan,
                                           sendobj)


class Cartcomm(Topocomm, kind="cart"):
    """Cartesian topology intracommunicator."""

    _code = CART

    @classmethod
    def create(cls, comm: Comm, dims: Sequence[int], periods: Sequence[bool] | None = None,
               reorder: bool = False) -> Cartcomm:
        """The Cartesian communicator of ``Intracomm.Create_cart`` (collective on ``comm``)."""
        cx = comm._cx
        ds, ps = _checked(cx, "Create_cart", lambda: _cart_args(cx.size, dims, periods,
                                                                "Create_cart"))
        color = 0 if cx.rank < _prod(ds) else UNDEFINED
        return _group.split(cx, color, cx.rank, lambda g, c: cls._with_topo(
            comm, g, c, lambda r: _Cart(ds, ps, r)))

    @classmethod
    def map(cls, comm: Comm, dims: Sequence[int], periods: Sequence[bool] | None = None) -> int:
        """This rank's rank in a Cartesian topology (``Intracomm.Cart_map``)."""
        cx = comm._cx
        ds, _ = _cart_args(cx.size, dims, periods, "Cart_map")
        return cx.rank if cx.rank < _prod(ds) else UNDEFINED

    def Get_dim(self) -> int:
        """Return number of dimensions of the Cartesian topology."""
        self._t.rank
        return len(self._topo.dims)

    @property
    def dim(self) -> int:
        """Number of dimensions."""
        return self.Get_dim()

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.Get_dim()

    def Get_topo(self) -> tuple[list[int], list[int], list[int]]:
        """Return information on the cartesian topology (dims, periods, coords)."""
        self._t.rank
        tp = self._topo
        return list(tp.dims), list(tp.periods), list(tp.coords)

    @property
    def topo(self) -> tuple[list[int], list[int], list[int]]:
        """Topology information."""
        return self.Get_topo()

    @property
    def dims(self) -> list[int]:
        """Dimensions."""
        return self.Get_topo()[0]

    @property
    def periods(self) -> list[int]:
        """Periodicity."""
        return self.Get_topo()[1]

    @property
    def coords(self) -> list[int]:
        """Coordinates."""
        return self.Get_topo()[2]

    def Get_cart_rank(self, coords: Sequence[int]) -> int:
        """Translate logical coordinates to ranks."""
        self._t.rank
        cs = _ints(coords, "Get_cart_rank", "coords")
        _expect(len(self._topo.dims), len(cs), "Get_cart_rank", "coords")
        return self._topo.rank_of(cs, "Get_cart_rank")

    def Get_coords(self, rank: int) -> list[int]:
        """Translate ranks to logical coordinates."""
        self._t.rank
        r = _int(rank, "Get_coords", "rank")
        if not 0 <= r < self.size:
            raise MmpiError(f"Get_coords: invalid rank {r} (communicator of size "
                            f"{self.size})", error_class=ERR_RANK)
        return self._topo.coords_of(r)

    def Shift(self, direction: int, disp: int) -> tuple[int, int]:
        """Return a process ranks for data shifting with Sendrecv."""
        self._t.rank
        d = _int(direction, "Shift", "direction")
        disp = _int(disp, "Shift", "disp")
        n = len(self._topo.dims)
        if not 0 <= d < n:
            raise MmpiError(f"Shift: invalid direction {d} (the grid has {n} dimensions: "
                            f"0..{n - 1})", error_class=ERR_DIMS)
        return self._topo.shift(d, disp)

    def Sub(self, remain_dims: Sequence[bool]) -> Cartcomm:
        """Return a lower-dimensional Cartesian topology."""
        tp = self._topo
        n = len(tp.dims)

        def check():
            try:
                keep = [bool(v) for v in remain_dims]
            except TypeError:
                raise TypeError(f"Sub: remain_dims must be a sequence of {n} bools, got "
                                f"{remain_dims!r}") from None
            _expect(n, len(keep), "Sub", "remain_dims")
            return keep

        keep = _checked(self._cx, "Sub", check)
        color = key = 0
        for c, d, k in zip(tp.coords, tp.dims, keep):
            if k:
                key = key * d + c
            else:
                color = color * d + c
        ds = [d for d, k in zip(tp.dims, keep) if k]
        ps = [p for p, k in zip(tp.periods, keep) if k]
        # (a plain Cartcomm, as mpi4py's, even from a subclass)
        return _group.split(self._cx, color, key, lambda g, c: Cartcomm._with_topo(
            self, g, c, lambda r: _Cart(ds, ps, r)))


class Graphcomm(Topocomm, kind="graph"):
    """General graph topology intracommunicator."""

    _code = GRAPH

    @classmethod
    def create(cls, comm: Comm, index: Sequence[int], edges: Sequence[int],
               reorder: bool = False) -> Graphcomm:
        """The graph communicator of ``Intracomm.Create_graph`` (collective on ``comm``)."""
        cx = comm._cx
        idx, eds = _checked(cx, "Create_graph", lambda: _graph_args(cx.size, index, edges,
                                                                     "Create_graph"))
        color = 0 if cx.rank < len(idx) else UNDEFINED
        return _group.split(cx, color, cx.rank, lambda g, c: cls._with_topo(
            comm, g, c, lambda r: _Graph(idx, eds, r)))

    @classmethod
    def map(cls, comm: Comm, index: Sequence[int], edges: Sequence[int]) -> int:
        """This rank's rank in a graph topology (``Intracomm.Graph_map``)."""
        cx = comm._cx
        idx, _ = _graph_args(cx.size, index, edges, "Graph_map")
        return cx.rank if cx.rank < len(idx) else UNDEFINED

    def Get_dims(self) -> tuple[int, int]:
        """Return the number of nodes and edges."""
        self._t.rank
        return len(self._topo.index), len(self._topo.edges)

    @property
    def dims(self) -> tuple[int, int]:
        """Number of nodes and edges."""
        return self.Get_dims()

    @property
    def nnodes(self) -> int:
        """Number of nodes."""
        return self.Get_dims()[0]

    @property
    def nedges(self) -> int:
        """Number of edges."""
        return self.Get_dims()[1]

    def Get_topo(self) -> tuple[list[int], list[int]]:
        """Return index and edges."""
        self._t.rank
        return list(self._topo.index), list(self._topo.edges)

    @property
    def topo(self) -> tuple[list[int], list[int]]:
        """Topology information."""
        return self.Get_topo()

    @property
    def index(self) -> list[int]:
        """Index."""
        return self.Get_topo()[0]

    @property
    def edges(self) -> list[int]:
        """Edges."""
        return self.Get_topo()[1]

    def _node(self, rank, what) -> int:
        self._t.rank
        r = _int(rank, what, "rank")
        if not 0 <= r < len(self._topo.index):
            raise MmpiError(f"{what}: invalid rank {r} (the graph has "
                            f"{len(self._topo.index)} nodes)", error_class=ERR_RANK)
        return r

    def Get_neighbors_count(self, rank: int) -> int:
        """Return number of neighbors of a process."""
        return len(self._topo.neighbors(self._node(rank, "Get_neighbors_count")))

    def Get_neighbors(self, rank: int) -> list[int]:
        """Return list of neighbors of a process."""
        return self._topo.neighbors(self._node(rank, "Get_neighbors"))

    @property
    def nneighbors(self) -> int:
        """Number of neighbors."""
        return self.Get_neighbors_count(self.rank)

    @property
    def neighbors(self) -> list[int]:
        """Neighbors."""
        return self.Get_neighbors(self.rank)


class Distgraphcomm(Topocomm, kind="dist_graph"):
    """Distributed graph topology intracommunicator."""

    _code = DIST_GRAPH

    @classmethod
    def create_adjacent(cls, comm: Comm, sources: Sequence[int], destinations: Sequence[int],
                        sourceweights: Sequence[int] | None = None,
                        destweights: Sequence[int] | None = None,
                        reorder: bool = False) -> Distgraphcomm:
        """The communicator of ``Intracomm.Create_dist_graph_adjacent`` (collective)."""
        cx = comm._cx
        what = "Create_dist_graph_adjacent"

        def check():
            src = _ranks(sources, cx.size, what, "sources")
            dst = _ranks(destinations, cx.size, what, "destinations")
            sw_on, sw = _weights(sourceweights, len(src), what, "sourceweights")
            dw_on, dw = _weights(destweights, len(dst), what, "destweights")
            if sw_on != dw_on:
                # one side unweighted: fine only if it has no edge
                if (not sw_on and src) or (not dw_on and dst):
                    raise ValueError(f"{what}: pass weights for both sources and "
                                     f"destinations, or MPI.UNWEIGHTED for both")
            return src, dst, sw, dw, sw_on or dw_on

        src, dst, sw, dw, weighted = _checked(cx, what, check)
        topo = _DistGraph(src, dst, sw, dw, weighted)
        return _group.dup(cx, lambda g, c: cls._with_topo(comm, g, c, lambda r: topo))

    @classmethod
    def create(cls, comm: Comm, sources: Sequence[int], degrees: Sequence[int],
               destinations: Sequence[int], weights: Sequence[int] | None = None,
               reorder: bool = False) -> Distgraphcomm:
        """The communicator of ``Intracomm.Create_dist_graph`` (collective on ``comm``)."""
        cx = comm._cx
        what = "Create_dist_graph"

        def check():
            src = _ranks(sources, cx.size, what, "sources")
            deg = _ints(degrees, what, "degrees")
            _expect(len(src), len(deg), what, "degrees")
            if any(d < 0 for d in deg):
                raise MmpiError(f"{what}: negative degree in {deg}", error_class=ERR_ARG)
            dst = _ranks(destinations, cx.size, what, "destinations")
            _expect(sum(deg), len(dst), what, "destinations")
            on, ws = _weights(weights, len(dst), what, "weights")
            edges, k = [], 0
            for s, d in zip(src, deg):
                for _ in range(d):
                    edges.append((s, dst[k], ws[k] if on else 1))
                    k += 1
            return on, edges

        recs = _checked(cx, what, check, share=True)   # every rank's edges
        me = cx.rank
        weighted = any(on for on, _ in recs)
        src, sw, dst, dw = [], [], [], []
        for _, edges in recs:
            for s, d, w in edges:
                if s == me:
                    dst.append(d)
                    dw.append(w)
                if d == me:
                    src.append(s)
                    sw.append(w)
        topo = _DistGraph(src, dst, sw, dw, weighted)
        return _group.dup(cx, lambda g, c: cls._with_topo(comm, g, c, lambda r: topo))

    def Get_dist_neighbors_count(self) -> tuple[int, int, bool]:
        """Return adjacency information for a distributed graph topology."""
        self._t.rank
        tp = self._topo
        return len(tp.sources), len(tp.destinations), tp.weighted

    def Get_dist_neighbors(self
                           ) -> tuple[list[int], list[int], tuple[list[int], list[int]] | None]:
        """Return adjacency information for a distributed graph topology."""
        self._t.rank
        tp = self._topo
        w = (list(tp.sweights), list(tp.dweights)) if tp.weighted else None
        return list(tp.sources), list(tp.destinations), w


# ------------------------------------------------------------------ Compute_dims

def Compute_dims(nnodes: int, dims: int | Sequence[int]) -> list[int]:
    """Return a balanced distribution of processes per coordinate direction."""
    what = "Compute_dims"
    n = _int(nnodes, what, "nnodes")
    if isinstance(dims, bool):
        raise TypeError(f"{what}: dims must be an int or a sequence of ints")
    ds = [0] * _int(dims, what, "dims") if hasattr(dims, "__index__") else \
        _ints(dims, what, "dims")
    if any(d < 0 for d in ds):
        raise MmpiError(f"{what}: negative entry in dims {ds} (0: to be chosen)",
                        error_class=ERR_DIMS)
    fixed = _prod(d for d in ds if d)
    if n < 1 or n % fixed:
        raise MmpiError(f"{what}: {n} processes cannot fill a grid with the fixed "
                        f"dimensions of {ds}", error_class=ERR_DIMS)
    free = [i for i, d in enumerate(ds) if d == 0]
    rem = n // fixed
    if not free:
        if rem != 1:
            raise MmpiError(f"{what}: dims {ds} hold {fixed} processes, not {n}",
                            error_class=ERR_DIMS)
        return ds
    primes, p, m = [], 2, rem
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    sizes = [1] * len(free)
    for f in sorted(primes, reverse=True):   # each factor to the smallest dimension so far
        i = sizes.index(min(sizes))
        sizes[i] *= f
    for i, s in zip(free, sorted(sizes, reverse=True)):
        ds[i] = s
    return ds


_threads.register(Topocomm, Cartcomm, Graphcomm, Distgraphcomm)
