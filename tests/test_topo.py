"""Process topologies and neighbourhood collectives, with real ranks.

Cartesian coordinates, shifts and sub-grids are checked against a hand
computation (row-major coordinates, PROC_NULL past a non-periodic border);
every neighbourhood collective against a NumPy reference each rank builds from
the whole topology, which it can compute by itself (every rank's data is a
function of its rank and block).  Ranks are forked by ``mmpi.spawn`` (and one
test goes through ``driller run`` and the mpi4py shim).  No timed assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PN = MPI.PROC_NULL


# ----------------------------------------------------------------- Compute_dims

# Open MPI 5's answers (mpi4py 4.1.2), recorded
@pytest.mark.parametrize("nnodes, dims, want", [
    (12, 2, [4, 3]), (16, 3, [4, 2, 2]), (6, 3, [3, 2, 1]), (7, 2, [7, 1]),
    (12, [0, 2], [6, 2]), (1, 0, []), (24, 4, [3, 2, 2, 2]), (30, 3, [5, 3, 2]),
    (8, [0, 0, 2], [2, 2, 2]), (36, 3, [4, 3, 3]), (12, [0, 0, 0], [3, 2, 2]),
    (6, [3, 2], [3, 2]), (1, 3, [1, 1, 1]),
])
def test_compute_dims(nnodes, dims, want):
    got = MPI.Compute_dims(nnodes, dims)
    assert got == want
    assert int(np.prod(got)) == nnodes


@pytest.mark.parametrize("nnodes, dims", [(12, [5, 0]), (0, 2), (4, [-1, 0]), (-1, 2),
                                          (6, [2, 2])])
def test_compute_dims_errors(nnodes, dims):
    with pytest.raises(MPI.Exception) as e:
        MPI.Compute_dims(nnodes, dims)
    assert e.value.Get_error_class() == MPI.ERR_DIMS


# ----------------------------------------------------------------- cartesian

def hand_coords(rank, dims):
    """Row-major: the last dimension varies fastest."""
    out = []
    for d in reversed(dims):
        out.append(rank % d)
        rank //= d
    return out[::-1]


def hand_rank(coords, dims):
    r = 0
    for c, d in zip(coords, dims):
        r = r * d + c
    return r


def hand_shift(rank, dims, periods, direction, disp):
    c = hand_coords(rank, dims)
    out = []
    for x in (c[direction] - disp, c[direction] + disp):
        if not 0 <= x < dims[direction]:
            if not periods[direction]:
                out.append(PN)
                continue
            x %= dims[direction]
        cc = list(c)
        cc[direction] = x
        out.append(hand_rank(cc, dims))
    return tuple(out)


def _cart_facts(comm, dims, periods):
    cart = comm.Create_cart(dims, periods=periods)
    if cart == MPI.COMM_NULL:
        return None
    facts = {
        "type": type(cart).__name__, "topology": cart.Get_topology(), "rank": cart.rank,
        "size": cart.size, "topo": cart.topo, "dim": cart.Get_dim(),
        "coords_all": [cart.Get_coords(r) for r in range(cart.size)],
        "shifts": {(d, s): cart.Shift(d, s) for d in range(len(dims)) for s in (1, 2, -1, 3)},
        "inedges": cart.inedges, "outedges": cart.outedges, "degrees": cart.degrees,
        "cart_rank": [cart.Get_cart_rank(hand_coords(r, dims)) for r in range(cart.size)],
        "map": comm.Cart_map(dims, periods),
    }
    subs = {}
    for keep in ([True, False], [False, True], [False, False]):
        sub = cart.Sub(keep)
        subs[tuple(keep)] = (type(sub).__name__, sub.size, sub.rank, sub.topo,
                             sub.Get_group().Translate_ranks(None, cart.Get_group()))
    facts["subs"] = subs
    dup = cart.Dup()
    facts["dup"] = (type(dup).__name__, dup.topo, dup.rank)
    facts["split"] = type(cart.Split(0, cart.rank)).__name__
    facts["create"] = type(cart.Create(cart.Get_group())).__name__
    # a periodic wrap of coordinates (Get_cart_rank accepts them only where periodic)
    if periods[0]:
        facts["wrap"] = cart.Get_cart_rank([-1] + [0] * (len(dims) - 1))
    return facts


@pytest.mark.parametrize("periods", [[False, False], [True, False], [True, True]])
def test_cart_against_hand_computation(periods):
    dims = [3, 2]
    res = mmpi.spawn(_cart_facts, 6, args=(dims, periods))
    for r, f in enumerate(res):
        assert f["type"] == "Cartcomm" and f["topology"] == MPI.CART
        assert f["rank"] == r and f["size"] == 6 and f["dim"] == 2
        assert f["topo"] == (dims, [int(p) for p in periods], hand_coords(r, dims))
        assert f["coords_all"] == [hand_coords(x, dims) for x in range(6)]
        assert f["cart_rank"] == list(range(6))
        assert f["map"] == r
        for (d, s), got in f["shifts"].items():
            assert got == hand_shift(r, dims, periods, d, s), (r, d, s)
        nbrs = []
        for d in range(2):
            nbrs += list(hand_shift(r, dims, periods, d, 1))
        assert f["inedges"] == nbrs and f["outedges"] == nbrs and f["degrees"] == (4, 4)
        c = hand_coords(r, dims)
        # Sub([True, False]): the column through this rank (dimension 0 kept)
        name, size, rank, topo, members = f["subs"][(True, False)]
        assert (name, size, rank) == ("Cartcomm", 3, c[0])
        assert topo == ([3], [int(periods[0])], [c[0]])
        assert members == [hand_rank([i, c[1]], dims) for i in range(3)]
        name, size, rank, topo, members = f["subs"][(False, True)]
        assert (name, size, rank) == ("Cartcomm", 2, c[1])
        assert topo == ([2], [int(periods[1])], [c[1]])
        assert members == [hand_rank([c[0], j], dims) for j in range(2)]
        assert f["subs"][(False, False)][:4] == ("Cartcomm", 1, 0, ([], [], []))
        assert f["dup"] == ("Cartcomm", f["topo"], r)
        assert f["split"] == "Intracomm" and f["create"] == "Intracomm"
        if periods[0]:
            assert f["wrap"] == hand_rank([2, 0], dims)


def test_cart_smaller_than_the_communicator_and_zero_dims():
    def fn(comm):
        cart = comm.Create_cart([2, 2], periods=[True, False])
        zero = comm.Create_cart([])
        return ((cart == MPI.COMM_NULL) or (cart.size, cart.coords),
                (zero == MPI.COMM_NULL) or (zero.size, zero.topo, zero.Get_cart_rank([])),
                comm.Cart_map([2, 2]), comm.Cart_map([]))

    res = mmpi.spawn(fn, 6)
    for r, (cart, zero, cmap, zmap) in enumerate(res):
        assert cart == ((4, hand_coords(r, [2, 2])) if r < 4 else True)
        assert zero == ((1, ([], [], []), 0) if r == 0 else True)
        assert cmap == (r if r < 4 else MPI.UNDEFINED)
        assert zmap == (0 if r == 0 else MPI.UNDEFINED)


# _settle: the error tests end with a Barrier, which also keeps every rank alive
# until all are done.  Without it, a rank leaving right after the agreement's object
# allgather (gather to rank 0, then rank 0 sends everyone the result) has been seen,
# rarely and under heavy load, to make a peer fail with "rank 0 exited with code 0;
# rank 2 cannot complete its receive from rank 0": rank 0's last message lost at its
# exit, a transport matter outside the topologies (reproduced with 3 concurrent loops
# of 300 spawns of Create_graph with a bad edge: 3 failures in 900).


def test_cart_errors_raise_on_every_rank():
    def fn(comm, case):
        try:
            if case == "too-big":
                comm.Create_cart([comm.size + 1])
            elif case == "zero-dim":
                comm.Create_cart([2, 0])
            elif case == "periods":
                comm.Create_cart([comm.size], [True, True])
            elif case == "one-rank-bad":   # only rank 1 passes a bad grid
                comm.Create_cart([comm.size + 1] if comm.rank == 1 else [comm.size])
            elif case == "shift":
                comm.Create_cart([comm.size]).Shift(1, 1)
            elif case == "cart-rank":
                comm.Create_cart([comm.size], [False]).Get_cart_rank([comm.size])
            elif case == "sub":
                comm.Create_cart([comm.size]).Sub([True, True])
            elif case == "coords":
                comm.Create_cart([comm.size]).Get_coords(comm.size)
        except (MmpiError, ValueError, TypeError) as e:
            out = type(e).__name__, getattr(e, "error_class", None), str(e)
        else:
            out = None
        comm.Barrier()   # every rank still in step after the error (see _settle)
        return out

    want = {"too-big": ("MmpiError", MPI.ERR_ARG), "zero-dim": ("MmpiError", MPI.ERR_DIMS),
            "periods": ("ValueError", None), "one-rank-bad": ("MmpiError", MPI.ERR_ARG),
            "shift": ("MmpiError", MPI.ERR_DIMS), "cart-rank": ("MmpiError", MPI.ERR_ARG),
            "sub": ("ValueError", None), "coords": ("MmpiError", MPI.ERR_RANK)}
    for case, (etype, eclass) in want.items():
        res = mmpi.spawn(fn, 3, args=(case,))
        for r in range(3):
            assert res[r] is not None and res[r][:2] == (etype, eclass), (case, r, res[r])
        if case == "one-rank-bad":
            assert "rank 1 passed invalid arguments" in res[0][2], res[0]
            assert "holds 4 processes" in res[1][2], res[1]


def test_communicator_without_topology():
    def fn(comm):
        return comm.Get_topology(), comm.topology, comm.is_topo, comm.Dup().is_topo

    assert mmpi.spawn(fn, 2) == [(MPI.UNDEFINED, MPI.UNDEFINED, False, False)] * 2


def test_handle_constructors():
    def fn(comm):
        cart = comm.Create_cart([comm.size])
        n = comm.size   # a directed ring: one edge per node
        graph = comm.Create_graph(list(range(1, n + 1)), [(i + 1) % n for i in range(n)])
        out = [type(MPI.Cartcomm(cart)).__name__, type(MPI.Topocomm(cart)).__name__,
               MPI.Topocomm(cart).Get_topology(), MPI.Topocomm(graph).degrees,
               # a handle looked up again is of the topology's class, and equal
               [(type(h).__name__, h == c) for c in (cart, graph)
                for h in (MPI.Comm.fromint(c.toint()), MPI.Comm.f2py(c.py2f()))],
               MPI.Intracomm(graph).Get_topology(),
               MPI.Cartcomm(cart).topo == cart.topo]
        for cls, arg in ((MPI.Topocomm, comm), (MPI.Graphcomm, cart),
                         (MPI.Distgraphcomm, cart), (MPI.Cartcomm, graph)):
            try:
                cls(arg)
                out.append("no error")
            except TypeError:
                out.append("TypeError")
        return out

    for got in mmpi.spawn(fn, 2):
        handles = [("Cartcomm", True)] * 2 + [("Graphcomm", True)] * 2
        assert got == ["Cartcomm", "Topocomm", MPI.CART, (1, 1), handles, MPI.GRAPH, True] + \
            ["TypeError"] * 4


class MyCartcomm(MPI.Cartcomm):
    """A user's subclass whose constructor makes the grid (as mpi4py's subclass tests)."""

    def __new__(cls, comm=None):
        if comm is not None and comm != MPI.COMM_NULL:
            comm = comm.Create_cart([comm.size])
        return super().__new__(cls, comm)


def test_user_subclass_keeps_its_class_through_dup():
    def fn(comm):
        mine = MyCartcomm(comm)
        clone = mine.Clone()
        sub = mine.Sub([False])
        return (type(mine).__name__, mine.topo, type(clone).__name__, clone.topo,
                type(mine.Dup()).__name__, type(sub).__name__,
                mine.neighbor_allgather(comm.rank))

    n = 3
    for r, got in enumerate(mmpi.spawn(fn, n)):
        topo = ([n], [0], [r])
        assert got[:6] == ("MyCartcomm", topo, "MyCartcomm", topo, "MyCartcomm", "Cartcomm")
        assert got[6] == [r - 1 if r > 0 else None, r + 1 if r < n - 1 else None]


# ----------------------------------------------------------------- graphs

def ring_chord(n):
    """A ring plus the chord 0 <-> n//2 (symmetric), as MPI_Graph's index/edges."""
    adj = [[(i - 1) % n, (i + 1) % n] for i in range(n)]
    adj[0].append(n // 2)
    adj[n // 2].append(0)
    index, edges = [], []
    for a in adj:
        edges += a
        index.append(len(edges))
    return adj, index, edges


def test_graph_topology():
    def fn(comm):
        _, index, edges = ring_chord(comm.size)
        g = comm.Create_graph(index, edges)
        g2 = comm.Create_graph([0] + index, edges)    # mpi4py's 'standard' form
        small = comm.Create_graph([1, 2], [1, 0])       # 2 nodes: the others get COMM_NULL
        return (type(g).__name__, g.Get_topology(), g.dims, g.topo, g.neighbors,
                g.nneighbors, [g.Get_neighbors(r) for r in range(g.size)], g.inedges,
                g.outedges, g2.topo, comm.Graph_map(index, edges),
                small == MPI.COMM_NULL or small.topo, type(g.Dup()).__name__)

    n = 6
    adj, index, edges = ring_chord(n)
    for r, got in enumerate(mmpi.spawn(fn, n)):
        assert got[:3] == ("Graphcomm", MPI.GRAPH, (n, len(edges)))
        assert got[3] == (index, edges) and got[9] == (index, edges)
        assert got[4] == adj[r] and got[5] == len(adj[r]) and got[6] == adj
        assert got[7] == adj[r] and got[8] == adj[r] and got[10] == r
        assert got[11] == (([1, 2], [1, 0]) if r < 2 else True)
        assert got[12] == "Graphcomm"


def test_graph_errors():
    def fn(comm, case):
        try:
            if case == "edge":
                comm.Create_graph([1] * comm.size, [comm.size] * comm.size)
            elif case == "nodes":
                comm.Create_graph([1] * (comm.size + 1), [0] * (comm.size + 1))
            elif case == "index":
                comm.Create_graph([2, 1], [0, 0])
            elif case == "dga-one-rank":   # only rank 2 names a rank out of range
                comm.Create_dist_graph_adjacent([comm.size if comm.rank == 2 else 0], [0])
            elif case == "dga-weights":
                comm.Create_dist_graph_adjacent([0], [0], [1, 2], [1])
            elif case == "dga-empty":
                comm.Create_dist_graph_adjacent([0], [0], MPI.WEIGHTS_EMPTY, MPI.WEIGHTS_EMPTY)
            elif case == "dg-degrees":
                comm.Create_dist_graph([0], [1, 1], [0])
        except (MmpiError, ValueError) as e:
            out = type(e).__name__, getattr(e, "error_class", None)
        else:
            out = None
        comm.Barrier()   # every rank still in step after the error (see _settle)
        return out

    want = {"edge": ("MmpiError", MPI.ERR_ARG), "nodes": ("MmpiError", MPI.ERR_ARG),
            "index": ("MmpiError", MPI.ERR_ARG), "dga-one-rank": ("MmpiError", MPI.ERR_ARG),
            "dga-weights": ("ValueError", None), "dga-empty": ("ValueError", None),
            "dg-degrees": ("ValueError", None)}
    for case, w in want.items():
        assert mmpi.spawn(fn, 3, args=(case,)) == [w] * 3, case


def dist_dests(r, n):
    """An asymmetric distributed graph with a repeated edge and a self-loop."""
    return [(r + 1) % n, (r + 3) % n, (r + 1) % n, r]


def dist_sources(r, n):
    """Rank r's sources in the order Create_dist_graph reports them: by source rank,
    then by the order of the source's destinations."""
    return [s for s in range(n) for d in dist_dests(s, n) if d == r]


def test_dist_graph_topology():
    def fn(comm):
        n, r = comm.size, comm.rank
        adj = comm.Create_dist_graph_adjacent(dist_sources(r, n), dist_dests(r, n))
        wadj = comm.Create_dist_graph_adjacent([(r - 1) % n], [(r + 1) % n], [7], [9])
        empty = comm.Create_dist_graph_adjacent([], [], MPI.WEIGHTS_EMPTY, MPI.WEIGHTS_EMPTY)
        general = comm.Create_dist_graph([r], [4], dist_dests(r, n), MPI.UNWEIGHTED)
        weighted = comm.Create_dist_graph([r], [4], dist_dests(r, n), [r, r + 1, r + 2, r + 3])
        # rank 0 alone declares every edge 0 -> x
        star = comm.Create_dist_graph([0] if r == 0 else [], [n] if r == 0 else [],
                                      list(range(n)) if r == 0 else [])
        return (type(adj).__name__, adj.Get_topology(), adj.Get_dist_neighbors_count(),
                adj.Get_dist_neighbors(), wadj.Get_dist_neighbors(),
                empty.Get_dist_neighbors_count(), empty.Get_dist_neighbors(),
                general.Get_dist_neighbors(), weighted.Get_dist_neighbors(),
                star.Get_dist_neighbors(), adj.inoutedges, type(adj.Dup()).__name__)

    n = 5
    for r, got in enumerate(mmpi.spawn(fn, n)):
        src, dst = dist_sources(r, n), dist_dests(r, n)
        assert got[:3] == ("Distgraphcomm", MPI.DIST_GRAPH, (4, 4, False))
        assert got[3] == (src, dst, None)
        assert got[4] == ([(r - 1) % n], [(r + 1) % n], ([7], [9]))
        assert got[5] == (0, 0, True) and got[6] == ([], [], ([], []))
        assert got[7] == (src, dst, None)
        wsrc = [s + k for s in range(n) for k, d in enumerate(dist_dests(s, n)) if d == r]
        assert got[8] == (src, dst, (wsrc, [r, r + 1, r + 2, r + 3]))
        assert got[9] == ([0], list(range(n)) if r == 0 else [], None)
        assert got[10] == (src, dst) and got[11] == "Distgraphcomm"


# ----------------------------------------------------------------- neighbour collectives

def make_topo(comm, kind):
    n, r = comm.size, comm.rank
    if kind == "cart":          # 3 x 2, non-periodic: PROC_NULL at every border
        return comm.Create_cart([3, 2], [False, False])
    if kind == "cart-periodic":  # 3 x 2 periodic: both neighbours along dim 1 are one rank
        return comm.Create_cart([3, 2], [True, True])
    if kind == "graph":
        _, index, edges = ring_chord(n)
        return comm.Create_graph(index, edges)
    return comm.Create_dist_graph_adjacent(dist_sources(r, n), dist_dests(r, n))


def plans(kind, r, n):
    """The reference: for each receive block, (sender, the sender's send-block index
    that lands there); and this rank's out-degree.  Computed independently of
    driller from MPI's rules."""
    if kind.startswith("cart"):
        dims, periods = [3, 2], [kind == "cart-periodic"] * 2
        ins = []
        for d in range(2):
            lo, hi = hand_shift(r, dims, periods, d, 1)
            # what the -1 neighbour sent towards +1 (its block 2d+1), and vice versa
            ins += [(lo, 2 * d + 1), (hi, 2 * d)]
        return ins, 4
    if kind == "graph":
        adj = ring_chord(n)[0]
        srcs, outs = adj[r], adj
    else:
        srcs = dist_sources(r, n)
        outs = [dist_dests(s, n) for s in range(n)]
    ins, seen = [], {}
    for s in srcs:
        k = seen.get(s, 0)
        seen[s] = k + 1
        js = [j for j, d in enumerate(outs[s]) if d == r]
        ins.append((s, js[k]))   # the k-th edge s -> r pairs with s's k-th block to r
    return ins, len(outs[r])


def value(rank, block, i):
    return rank * 1000 + block * 10 + i % 10


def _neighbor_sweep(comm, kind, dtype):
    topo = make_topo(comm, kind)
    n, r = comm.size, comm.rank
    ins, outdeg = plans(kind, r, n)
    indeg = len(ins)
    assert topo.degrees == (indeg, outdeg), (topo.degrees, indeg, outdeg)
    checks = 0
    K = 3
    SENT = -1

    def expect_gather(counts_of):
        out = []
        for s, _ in ins:
            c = counts_of(s)
            out.append(np.full(c, SENT, dtype) if s == PN else
                       np.array([value(s, 0, i) for i in range(c)], dtype))
        return out

    def expect_a2a(counts_of):
        out = []
        for s, j in ins:
            c = counts_of(s, j)
            out.append(np.full(c, SENT, dtype) if s == PN else
                       np.array([value(s, j, i) for i in range(c)], dtype))
        return out

    def check(got, blocks, what):
        want = np.concatenate(blocks) if blocks else np.empty(0, dtype)
        assert got.dtype == want.dtype and np.array_equal(got, want), \
            f"{what} on rank {r} ({kind}): got {got}, want {want}"

    mine = np.array([value(r, 0, i) for i in range(K)], dtype)
    for nb in (False, True):
        # Neighbor_allgather
        rb = np.full(indeg * K, SENT, dtype)
        if nb:
            topo.Ineighbor_allgather(mine, rb).Wait()
        else:
            topo.Neighbor_allgather(mine, rb)
        check(rb, expect_gather(lambda s: K), "Neighbor_allgather")
        # Neighbor_allgatherv: rank s sends s % 3 + 1 items; displacements with gaps
        cnt = [(s % 3 + 1) if s != PN else 2 for s, _ in ins]
        displ = [sum(cnt[:i]) + 2 * i for i in range(indeg)]
        rb = np.full(sum(cnt) + 2 * indeg, SENT, dtype)
        sb = np.array([value(r, 0, i) for i in range(r % 3 + 1)], dtype)
        args = (sb, [rb, (cnt, displ)])
        req = topo.Ineighbor_allgatherv(*args) if nb else topo.Neighbor_allgatherv(*args)
        if nb:
            req.Wait()
        got = np.concatenate([rb[d:d + c] for c, d in zip(cnt, displ)]) if indeg else rb
        check(got, expect_gather(lambda s: (s % 3 + 1) if s != PN else 2),
              "Neighbor_allgatherv")
        assert all(rb[d + c] == SENT and rb[d + c + 1] == SENT for c, d in zip(cnt, displ)), \
            "Neighbor_allgatherv wrote between blocks"
        # Neighbor_alltoall: block j of mine goes to out-neighbour j
        sb = np.array([value(r, j, i) for j in range(outdeg) for i in range(K)], dtype)
        rb = np.full(indeg * K, SENT, dtype)
        if nb:
            topo.Ineighbor_alltoall(sb, rb).Wait()
        else:
            topo.Neighbor_alltoall(sb, rb)
        check(rb, expect_a2a(lambda s, j: K), "Neighbor_alltoall")
        # Neighbor_alltoallv: block j holds j + 1 items; receive counts from the plan
        scnt = [j + 1 for j in range(outdeg)]
        sdis = [sum(scnt[:j]) for j in range(outdeg)]
        sb = np.array([value(r, j, i) for j in range(outdeg) for i in range(j + 1)], dtype)
        rcnt = [j + 1 if s != PN else 1 for s, j in ins]
        rdis = [sum(rcnt[:i]) + i for i in range(indeg)]   # one gap element per block
        rb = np.full(sum(rcnt) + indeg, SENT, dtype)
        spec = ([sb, (scnt, sdis)], [rb, (rcnt, rdis)])
        if nb:
            topo.Ineighbor_alltoallv(*spec).Wait()
        else:
            topo.Neighbor_alltoallv(*spec)
        got = np.concatenate([rb[d:d + c] for c, d in zip(rcnt, rdis)]) if indeg else rb
        check(got, expect_a2a(lambda s, j: j + 1 if s != PN else 1), "Neighbor_alltoallv")
        gaps = [rb[d + c] for c, d in zip(rcnt, rdis)]
        assert all(g == SENT for g in gaps), "Neighbor_alltoallv wrote between blocks"
        # Neighbor_alltoallw: byte displacements, one datatype per block
        mdt = {np.dtype(np.float64): MPI.DOUBLE, np.dtype(np.int32): MPI.INT}[np.dtype(dtype)]
        isz = np.dtype(dtype).itemsize
        sb = np.array([value(r, j, i) for j in range(outdeg) for i in range(K)], dtype)
        rb = np.full(indeg * (K + 1), SENT, dtype)
        smsg = [sb, ([K] * outdeg, [j * K * isz for j in range(outdeg)]), [mdt] * outdeg]
        rmsg = [rb, ([K] * indeg, [i * (K + 1) * isz for i in range(indeg)]), [mdt] * indeg]
        if nb:
            topo.Ineighbor_alltoallw(smsg, rmsg).Wait()
        else:
            topo.Neighbor_alltoallw(smsg, rmsg)
        got = np.concatenate([rb[i * (K + 1):i * (K + 1) + K] for i in range(indeg)])
        check(got, expect_a2a(lambda s, j: K), "Neighbor_alltoallw")
        checks += 5
    # object forms
    got = topo.neighbor_allgather({"from": r})
    assert got == [None if s == PN else {"from": s} for s, _ in ins], (kind, r, got)
    got = topo.neighbor_alltoall([(r, j) for j in range(outdeg)])
    assert got == [None if s == PN else (s, j) for s, j in ins], (kind, r, got)
    # several nonblocking ones in flight at once, completed in reverse order
    rbs = [np.full(indeg * K, SENT, dtype) for _ in range(3)]
    reqs = [topo.Ineighbor_allgather(mine + k, rbs[k]) for k in range(3)]
    for q in reversed(reqs):
        q.Wait()
    for k in range(3):
        want = [b if s == PN else b + k for b, (s, _) in zip(expect_gather(lambda s: K), ins)]
        check(rbs[k], want, f"Ineighbor_allgather #{k}")
    return checks + 3


@pytest.mark.parametrize("kind", ["cart", "cart-periodic", "graph", "dist-graph"])
@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_neighbor_collectives_match_numpy(kind, dtype):
    res = mmpi.spawn(_neighbor_sweep, 6, args=(kind, dtype))
    assert res == [13] * 6


def test_neighbor_on_single_rank_topologies():
    def fn(comm):
        cart = comm.Create_cart([1], periods=[True])    # both neighbours are this rank
        rb = np.full(2, -1, "i")
        cart.Neighbor_alltoall(np.array([10, 11], "i"), rb)
        flat = comm.Create_cart([1], periods=[False])    # both neighbours PROC_NULL
        rb2 = np.full(2, -1, "i")
        flat.Neighbor_allgather(np.array([5], "i"), rb2)
        none = comm.Create_dist_graph_adjacent([], [])
        none.Neighbor_alltoall(np.empty(0, "i"), np.empty(0, "i"))
        return rb.tolist(), rb2.tolist(), flat.neighbor_allgather(1), none.neighbor_alltoall([])

    # the block sent towards +1 comes back from the -1 neighbour (Open MPI's answer)
    assert mmpi.spawn(fn, 1) == [([11, 10], [-1, -1], [None, None], [])]


def test_neighbor_objects_with_large_buffers():
    """One pickle, read by every neighbour (large arrays travel out of band)."""
    def fn(comm):
        cart = comm.Create_cart([comm.size], [True])
        big = np.arange(300_000, dtype=np.int64) + comm.rank
        got = cart.neighbor_allgather({"rank": comm.rank, "a": big})
        got2 = cart.neighbor_alltoall([big[:10], big])
        return ([(g["rank"], int(g["a"][0]), int(g["a"][-1]), g["a"].size) for g in got],
                [(int(g[0]), g.size) for g in got2])

    for n in (1, 3):
        for r, (got, got2) in enumerate(mmpi.spawn(fn, n)):
            lo, hi = (r - 1) % n, (r + 1) % n
            assert got == [(lo, lo, lo + 299_999, 300_000), (hi, hi, hi + 299_999, 300_000)]
            # from -1: what it sent towards +1 (the whole array); from +1: its first 10
            assert got2 == [(lo, 300_000), (hi, 10)], (n, r, got2)


def test_neighbor_alltoallw_with_bottom_and_absolute_addresses():
    def fn(comm):
        cart = comm.Create_cart([comm.size], [False])
        r, n = comm.rank, comm.size
        sb = np.array([10 * r, 10 * r + 1], "d")   # block 0 towards -1, block 1 towards +1
        rb = np.full(2, -1.0)
        sa, ra = sb.ctypes.data, rb.ctypes.data       # absolute addresses
        cart.Neighbor_alltoallw([MPI.BOTTOM, ([1, 1], [sa, sa + 8]), [MPI.DOUBLE] * 2],
                                [MPI.BOTTOM, ([1, 1], [ra, ra + 8]), [MPI.DOUBLE] * 2])
        sb += 100   # the nonblocking form, sending from BOTTOM into a plain buffer
        rb2 = np.full(3, -1.0)
        cart.Ineighbor_alltoallw([MPI.BOTTOM, ([1, 1], [sa, sa + 8]), [MPI.DOUBLE] * 2],
                                 [rb2, ([1, 1], [0, 16]), [MPI.DOUBLE] * 2]).Wait()
        return rb.tolist(), rb2.tolist(), n

    for r, (got, got2, n) in enumerate(mmpi.spawn(fn, 3)):
        # from the -1 neighbour: what it sent towards +1 (its block 1), and vice versa
        want = [10 * (r - 1) + 1 if r > 0 else -1.0, 10 * (r + 1) if r < n - 1 else -1.0]
        assert got == want, (r, got)
        assert got2 == [w + 100 if w != -1.0 else w for w in want[:1]] + [-1.0] + \
            [w + 100 if w != -1.0 else w for w in want[1:]], (r, got2)


def test_neighbor_argument_errors_do_not_hang():
    """A bad argument on one rank only: that rank still takes part in the exchange
    (with empty blocks), so its neighbours get an error instead of waiting forever."""
    def fn(comm, case):
        cart = comm.Create_cart([comm.size], [True])
        try:
            if case == "recvbuf":    # rank 1's receive buffer does not split in 2 blocks
                rb = np.zeros(3 if comm.rank == 1 else 2, "i")
                cart.Neighbor_allgather(np.array([comm.rank], "i"), rb)
            elif case == "sendbuf":  # rank 1's send buffer does not split in 2 blocks
                sb = np.zeros(3 if comm.rank == 1 else 2, "i")
                cart.Ineighbor_alltoall(sb, np.zeros(2, "i")).Wait()
            elif case == "objects":  # rank 1 passes 3 items for 2 neighbours
                cart.neighbor_alltoall([1, 2, 3] if comm.rank == 1 else [1, 2])
            else:
                cart.Neighbor_alltoallw([np.zeros(2, "i"), ([1, 1], [0, 4]), [MPI.INT] * 2],
                                        [np.zeros(2, "i"), ([1, 1], [0, 4]),
                                         [MPI.INT] * (3 if comm.rank == 1 else 2)])
            out = None
        except MmpiError as e:
            out = str(e)
        cart.Barrier()   # and everybody is still in step
        return out

    for case, text in (("recvbuf", "does not split into 2 equal blocks"),
                       ("sendbuf", "does not split into 2 equal blocks"),
                       ("objects", "sequence of 2 items"), ("w", "datatypes has 3 entries")):
        res = mmpi.spawn(fn, 3, args=(case,))
        assert text in res[1], (case, res)
        # rank 1 is the neighbour of ranks 0 and 2 on the ring of 3
        for r in (0, 2):
            assert res[r] is not None and ("rank 1" in res[r]), (case, r, res)


# ----------------------------------------------------------------- through driller run

def test_topologies_under_driller_run_with_the_mpi4py_shim():
    code = textwrap.dedent("""
        import numpy as np
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        dims = MPI.Compute_dims(comm.size, 2)
        cart = comm.Create_cart(dims, periods=[True, False])
        src, dst = cart.Shift(0, 1)
        rb = np.full(4, -1.0)
        cart.Neighbor_allgather(np.array([float(cart.rank)]), rb)
        print("R", cart.rank, dims, cart.coords, src, dst, rb.tolist(), flush=True)
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", "driller", "run", "--mpi4py", "-n", "4",
                          "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    lines = sorted(x for x in res.stdout.splitlines() if x.startswith("R "))
    assert len(lines) == 4, res.stdout
    dims, periods = [2, 2], [True, False]
    for r, line in enumerate(lines):
        nbrs = list(hand_shift(r, dims, periods, 0, 1)) + list(hand_shift(r, dims, periods, 1, 1))
        want = [float(x) if x != PN else -1.0 for x in nbrs]
        src, dst = hand_shift(r, dims, periods, 0, 1)
        assert line == f"R {r} {dims} {hand_coords(r, dims)} {src} {dst} {want}", line


# ----------------------------------------------------------------- hybrid worlds

OMPI_RUN = os.path.join(os.path.dirname(sys.executable), "mpirun")


@pytest.mark.skipif(not os.path.exists(OMPI_RUN), reason="no mpirun in this venv")
def test_neighbor_collectives_across_two_nodes():
    """2 emulated nodes (DRILLER_NODE) x 3 ranks under Open MPI's mpirun: neighbours
    on the same node go through shared memory, the others through MPI."""
    prog = os.path.join(ROOT, "tests", "_topo_hybrid_prog.py")
    tag = f"topo-{os.getpid()}"
    from test_hybrid import _job, _no_leftovers   # (the hybrid tests' own jobs and checks)
    res = _job("openmpi", [prog], tag, timeout=300, sizes=(3, 3))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    oks = sorted(x for x in res.stdout.splitlines() if x.startswith("OK "))
    assert oks == [f"OK {r} 104" for r in range(6)], res.stdout
    _no_leftovers(tag, set())   # no rank, fd proxy or MPI shared memory file left
