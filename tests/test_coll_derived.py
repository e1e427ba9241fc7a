"""Collectives with derived datatypes on both sides, between real ranks (mmpi.spawn
forks them): receive buffers of derived types (staged, then scattered), the one
"w" spec reader (Alltoallw, Ialltoallw, Neighbor_alltoallw, intercommunicator
Alltoallw) with derived types and MPI.BOTTOM, and mpi4py's ValueErrors for bad
specs and mismatched reduction buffers.  Every expectation is computed here with
numpy from what each rank sent."""

from __future__ import annotations

import numpy as np
import pytest

from driller import MPI, mmpi

# an item of V: ints 0 and 3 of a 4-int extent (Create_vector(2, 1, 3)); k items
# cover ints 4i and 4i + 3; the other ints of the buffer must keep their -1
K_POS = (0, 3)


def vtype():
    return MPI.INT.Create_vector(2, 1, 3).Commit()


def fresh(k):
    return np.full(4 * k, -1, "i")


def spread(values, k):
    """The buffer of k items of V holding ``values`` (2 per item), -1 elsewhere."""
    e = np.full(4 * k, -1, "i")
    e[[4 * i + j for i in range(k) for j in K_POS]] = values
    return e.tolist()


def mine(rank, items=1):
    return (np.arange(2 * items, dtype="i") + 10 * rank).tolist()


def a2a(senders, me, scale=100):
    """What rank ``me`` gets in an all-to-all where rank i sends ints scale * i + k
    (k = 0..): ints 2 me and 2 me + 1 of each sender."""
    return sum(([scale * i + 2 * me, scale * i + 2 * me + 1] for i in senders), [])


def _blocking(comm):
    n, me = comm.size, comm.rank
    v = vtype()
    out = {}
    send = np.array(mine(me), "i")
    r = fresh(n) if me == 0 else None
    comm.Gather(send, [r, 1, v] if me == 0 else None, root=0)
    out["gather"] = r.tolist() if me == 0 else None
    r = fresh(n + 1) if me == 0 else None      # Gatherv: block i at item n - i
    counts, displs = [1] * n, [n - i for i in range(n)]
    comm.Gatherv(send, [r, (counts, displs), v] if me == 0 else None, root=0)
    out["gatherv"] = r.tolist() if me == 0 else None
    r = fresh(1)
    comm.Scatter(np.arange(2 * n, dtype="i") if me == 0 else None, [r, 1, v], root=0)
    out["scatter"] = r.tolist()
    r = fresh(1)
    comm.Scatterv([np.arange(2 * n, dtype="i"), [2] * n, [2 * (n - 1 - i) for i in range(n)],
                   MPI.INT] if me == 0 else None, [r, 1, v], root=0)
    out["scatterv"] = r.tolist()
    r = fresh(n)
    comm.Allgather(send, [r, 1, v])
    out["allgather"] = r.tolist()
    r = fresh(2 * n)                          # Allgatherv: rank i's item at item 2i + 1
    comm.Allgatherv(send, [r, ([1] * n, [2 * i + 1 for i in range(n)]), v])
    out["allgatherv"] = r.tolist()
    r = fresh(n)
    comm.Alltoall(np.arange(2 * n, dtype="i") + 100 * me, [r, 1, v])
    out["alltoall"] = r.tolist()
    r = fresh(n)
    comm.Alltoallv([np.arange(2 * n, dtype="i") + 100 * me, [2] * n, [2 * i for i in range(n)],
                    MPI.INT], [r, ([1] * n, list(range(n))), v])
    out["alltoallv"] = r.tolist()
    r = np.array(spread([1000 * me + i for i in range(2 * n)], n), "i")
    comm.Alltoall(MPI.IN_PLACE, [r, 1, v])     # IN_PLACE reads the derived blocks too
    out["alltoall_in_place"] = r.tolist()
    return out


def test_blocking_collectives_receive_into_derived_types():
    for n in (1, 2, 3):
        res = mmpi.spawn(_blocking, n)
        for me, out in enumerate(res):
            if me == 0:
                assert out["gather"] == spread(sum((mine(i) for i in range(n)), []), n)
                want = np.full(4 * (n + 1), -1, "i")
                for i in range(n):
                    want[4 * (n - i)] = 10 * i
                    want[4 * (n - i) + 3] = 10 * i + 1
                assert out["gatherv"] == want.tolist()
            assert out["scatter"] == spread([2 * me, 2 * me + 1], 1)
            j = n - 1 - me
            assert out["scatterv"] == spread([2 * j, 2 * j + 1], 1)
            assert out["allgather"] == spread(sum((mine(i) for i in range(n)), []), n)
            want = np.full(8 * n, -1, "i")
            for i in range(n):
                want[4 * (2 * i + 1)] = 10 * i
                want[4 * (2 * i + 1) + 3] = 10 * i + 1
            assert out["allgatherv"] == want.tolist()
            got = a2a(range(n), me)
            assert out["alltoall"] == spread(got, n)
            assert out["alltoallv"] == spread(got, n)
            got = a2a(range(n), me, 1000)
            assert out["alltoall_in_place"] == spread(got, n)


def _nonblocking(comm):
    n, me = comm.size, comm.rank
    v = vtype()
    out = {}
    send = np.array(mine(me), "i")
    r = fresh(n) if me == 0 else None
    comm.Igather(send, [r, 1, v] if me == 0 else None, root=0).Wait()
    out["igather"] = r.tolist() if me == 0 else None
    r = fresh(1)
    comm.Iscatterv([np.arange(2 * n, dtype="i"), [2] * n, None, MPI.INT] if me == n - 1
                   else None, [r, 1, v], root=n - 1).Wait()
    out["iscatterv"] = r.tolist()
    r = fresh(n)
    comm.Iallgather(send, [r, 1, v]).Wait()
    out["iallgather"] = r.tolist()
    r = fresh(n)
    comm.Ialltoallv(np.arange(2 * n, dtype="i") + 100 * me,
                    [r, ([1] * n, list(range(n))), v]).Wait()
    out["ialltoallv"] = r.tolist()
    b = np.arange(8, dtype="i") + 100 * me
    comm.Ibcast([b, 2, v], root=n - 1).Wait()
    out["ibcast"] = b.tolist()
    return out


def test_nonblocking_collectives_receive_into_derived_types():
    for n in (2, 3):
        res = mmpi.spawn(_nonblocking, n)
        allv = sum((mine(i) for i in range(n)), [])
        assert res[0]["igather"] == spread(allv, n)
        root = 100 * (n - 1)
        for me, out in enumerate(res):
            assert out["iscatterv"] == spread([2 * me, 2 * me + 1], 1)
            assert out["iallgather"] == spread(allv, n)
            got = a2a(range(n), me)
            assert out["ialltoallv"] == spread(got, n)
            want = (np.arange(8) + 100 * me).tolist()
            for i in (0, 3, 4, 7):       # the root's ints 0, 3, 4, 7 everywhere
                want[i] = root + i
            assert out["ibcast"] == want


def _alltoallw(comm):
    n, me = comm.size, comm.rank
    v = vtype()
    out = {}
    # sends: block r is the 2 ints at byte 8r of a plain buffer (MPI.INT, count 2);
    # receives: block r is one item of V at byte 16r
    sbuf = np.arange(2 * n, dtype="i") + 100 * me
    r = fresh(n)
    comm.Alltoallw([sbuf, ([2] * n, [8 * i for i in range(n)]), MPI.INT],
                   [r, [1] * n, [16 * i for i in range(n)], [v] * n])
    out["w"] = r.tolist()
    # the other way round: derived sends, plain receives
    s = np.array(spread([100 * me + i for i in range(2 * n)], n), "i")
    r2 = np.full(2 * n, -1, "i")
    comm.Ialltoallw([s, ([1] * n, [16 * i for i in range(n)]), [v] * n],
                    [r2, ([2] * n, [8 * i for i in range(n)]), [MPI.INT] * n]).Wait()
    out["iw"] = r2.tolist()
    # MPI.BOTTOM: struct types holding the blocks' addresses
    sb = np.arange(2 * n, dtype="i") + 100 * me
    rb = np.full(2 * n, -1, "i")
    sa, ra = MPI.Get_address(sb), MPI.Get_address(rb)
    st = [MPI.Datatype.Create_struct([2], [sa + 8 * i], [MPI.INT]).Commit() for i in range(n)]
    rt = [MPI.Datatype.Create_struct([1, 1], [ra + 8 * i + 4, ra + 8 * i], [MPI.INT, MPI.INT])
          .Commit() for i in range(n)]     # (each received pair lands swapped)
    comm.Alltoallw([MPI.BOTTOM, ([1] * n, [0] * n), st], [MPI.BOTTOM, ([1] * n, [0] * n), rt])
    out["bottom"] = rb.tolist()
    # IN_PLACE with a derived datatype: the blocks are read, then written
    r = np.array(spread([1000 * me + i for i in range(2 * n)], n), "i")
    comm.Alltoallw(MPI.IN_PLACE, [r, ([1] * n, [16 * i for i in range(n)]), v])
    out["in_place"] = r.tolist()
    return out


def test_alltoallw_with_derived_types_and_bottom():
    for n in (1, 2, 3):
        res = mmpi.spawn(_alltoallw, n)
        for me, out in enumerate(res):
            got = a2a(range(n), me)
            assert out["w"] == spread(got, n)
            assert out["iw"] == got
            assert out["bottom"] == sum(([100 * i + 2 * me + 1, 100 * i + 2 * me]
                                         for i in range(n)), [])
            got = a2a(range(n), me, 1000)
            assert out["in_place"] == spread(got, n)


def _neighbor(comm):
    n, me = comm.size, comm.rank
    v = vtype()
    ring = comm.Create_cart([n], periods=[True])
    # one neighbour each way: block 0 from rank - 1, block 1 from rank + 1
    s = np.array(spread([10 * me, 10 * me + 1, 10 * me + 2, 10 * me + 3], 2), "i")
    r = fresh(2)
    ring.Neighbor_alltoallw([s, ([1, 1], [0, 16]), [v, v]], [r, ([1, 1], [0, 16]), [v, v]])
    ag = fresh(2)
    ring.Neighbor_allgather(np.array(mine(me), "i"), [ag, 1, v])
    iag = fresh(2)
    ring.Ineighbor_alltoallv(np.arange(4, dtype="i") + 10 * me,
                             [iag, ([1, 1], [0, 1]), v]).Wait()
    ring.Free()
    return r.tolist(), ag.tolist(), iag.tolist()


def test_neighbor_collectives_with_derived_types():
    n = 3
    res = mmpi.spawn(_neighbor, n)
    for me, (w, ag, iag) in enumerate(res):
        lo, hi = (me - 1) % n, (me + 1) % n
        # the -1 neighbour sent me its block 1 (the +1 direction), the +1 one its block 0
        assert w == spread([10 * lo + 2, 10 * lo + 3, 10 * hi, 10 * hi + 1], 2)
        assert ag == spread(mine(lo) + mine(hi), 2)
        assert iag == spread([10 * lo + 2, 10 * lo + 3, 10 * hi, 10 * hi + 1], 2)


def _inter(comm):
    n, me = comm.size, comm.rank
    color = 0 if me < n // 2 else 1
    intra = comm.Split(color, key=0)
    inter = intra.Create_intercomm(0, comm, n // 2 if color == 0 else 0, 7)
    intra.Free()
    v = vtype()
    rn = inter.Get_remote_size()
    s = np.arange(2 * rn, dtype="i") + 100 * me
    r = fresh(rn)
    inter.Alltoallw([s, ([2] * rn, [8 * i for i in range(rn)]), MPI.INT],
                    [r, ([1] * rn, [16 * i for i in range(rn)]), [v] * rn])
    remote = [i for i in range(n) if (i < n // 2) != (color == 0)]
    lr = inter.Get_rank()
    out = {"w": r.tolist(), "remote": remote, "lr": lr}
    # group 0's rank 0 is the root of the rooted ones, group 1 receives
    root = MPI.ROOT if me == 0 else (MPI.PROC_NULL if color == 0 else 0)
    g = fresh(rn) if me == 0 else None
    inter.Gather(None if color == 0 else np.array(mine(me), "i"),
                 [g, 1, v] if me == 0 else None, root=root)
    out["gather"] = g.tolist() if me == 0 else None
    sc = fresh(1)
    inter.Scatter(np.arange(2 * rn, dtype="i") if me == 0 else None,
                  [sc, 1, v] if color == 1 else None, root=root)
    out["scatter"] = sc.tolist()
    b = np.arange(8, dtype="i") + 100 * me
    inter.Bcast([b, 2, v] if color == 1 or me == 0 else None, root=root)
    out["bcast"] = b.tolist()
    b = np.arange(8, dtype="i") + 100 * me
    inter.Ibcast([b, 2, v] if color == 1 or me == 0 else None, root=root).Wait()
    out["ibcast"] = b.tolist()
    ag = fresh(rn)
    inter.Allgather(np.array(mine(me), "i"), [ag, 1, v])
    out["allgather"] = ag.tolist()
    at = fresh(rn)
    inter.Ialltoall(np.arange(2 * rn, dtype="i") + 100 * me, [at, 1, v]).Wait()
    out["alltoall"] = at.tolist()
    inter.Free()
    return out


def test_intercomm_collectives_with_derived_types():
    res = mmpi.spawn(_inter, 4)
    for me, out in enumerate(res):
        remote, lr = out["remote"], out["lr"]
        got = a2a(remote, lr)
        assert out["w"] == spread(got, len(remote))
        assert out["alltoall"] == spread(got, len(remote))
        assert out["allgather"] == spread(sum((mine(w) for w in remote), []), len(remote))
        if me == 0:
            assert out["gather"] == spread(mine(2) + mine(3), 2)
        if me >= 2:    # group 1 got rank 0's blocks and its buffer
            assert out["scatter"] == spread([2 * lr, 2 * lr + 1], 1)
            want = (np.arange(8) + 100 * me).tolist()
            for i in (0, 3, 4, 7):
                want[i] = i
            assert out["bcast"] == want and out["ibcast"] == want
        else:
            assert out["scatter"] == [-1] * 4
            assert out["bcast"] == (np.arange(8) + 100 * me).tolist()


def test_bad_specs_and_mismatched_reductions_are_value_errors():
    buf = bytearray(16)
    empty = [None, 0, "B"]
    for spec in ([buf], [buf, 0, 0, "i", None]):
        with pytest.raises(ValueError, match="2 to 4 items"):
            MPI.COMM_SELF.Sendrecv(spec, 0, 0, empty, 0, 0)
    with pytest.raises(ValueError, match="2 to 4 items"):
        MPI.COMM_SELF.Alltoallv([buf, 0, [0], "i", None], [None, 0, [0], "B"])
    with pytest.raises(ValueError, match="2 to 4 items"):
        MPI.COMM_SELF.Alltoallw([buf, [0], [0], [MPI.BYTE], None], [buf, [0], [0], [MPI.BYTE]])
    with pytest.raises(ValueError, match="counts and the byte displacements"):
        MPI.COMM_SELF.Alltoallw([MPI.BOTTOM, None, [0], [MPI.BYTE]], [buf, [0], [0], [MPI.BYTE]])
    with pytest.raises(ValueError, match="BOTTOM requires counts"):
        MPI.COMM_SELF.Alltoallw([MPI.BOTTOM, None, None, [MPI.BYTE]], [buf, [MPI.BYTE]])
    s, r = bytearray(b"abc"), bytearray(3)     # no counts, no displacements: 1 item at 0
    MPI.COMM_SELF.Alltoallw([s, None, None, [MPI.CHAR]], [r, [MPI.CHAR]])
    assert r == bytearray(b"a\0\0")
    with pytest.raises(KeyError):
        MPI.COMM_SELF.Sendrecv([buf, 0, "\0"], 0, 0, empty, 0, 0)
    r = bytearray(16)
    with pytest.raises(ValueError, match="datatypes"):
        MPI.COMM_SELF.Reduce([buf, 1, MPI.INT], [r, 1, MPI.FLOAT], MPI.SUM, 0)
    with pytest.raises(ValueError, match="count"):
        MPI.COMM_SELF.Allreduce([buf, 1, MPI.INT], [r, 2, MPI.INT], MPI.SUM)
    with pytest.raises(ValueError):
        MPI.COMM_SELF.Reduce_scatter([buf, 1, MPI.INT], [r, 1, MPI.FLOAT], [1], MPI.SUM)
    with pytest.raises(ValueError):
        MPI.COMM_SELF.Reduce_scatter([buf, 2, MPI.INT], [r, 1, MPI.INT], [2], MPI.SUM)
    with pytest.raises(ValueError):
        MPI.COMM_SELF.Reduce_scatter(MPI.IN_PLACE, [r, 1, MPI.INT], [2], MPI.SUM)
    with pytest.raises(ValueError):
        MPI.COMM_SELF.Ireduce_scatter([buf, 1, MPI.INT], [r, 1, MPI.FLOAT], [1], MPI.SUM)
    # a derived datatype in a reduction is still refused, with a clear error
    v = vtype()
    with pytest.raises(MPI.Exception):
        MPI.COMM_SELF.Allreduce(np.zeros(2, "i"), [np.zeros(4, "i"), 1, v], MPI.SUM)
