"""Intercommunicators, with real forked ranks (``mmpi.spawn``).

COMM_WORLD is split in two halves (group 0: world ranks 0 .. n//2 - 1, group 1:
the rest; odd sizes make them uneven) joined by ``Create_intercomm``.  Every
rank builds its input from its world rank, so each rank computes the NumPy
reference of a whole collective by itself.  No timed assertions.
"""

from __future__ import annotations

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError, MmpiNotImplementedError
from driller.mmpi._coll import _reduce

LARGE = _reduce.DIRECT_MIN // 8 + 321     # elements: over the eager limit (rendezvous)


def data(world_rank, count, dtype=np.float64, salt=0):
    x = (np.arange(count, dtype=np.int64) * 7 + world_rank * 13 + salt) % 11
    return x.astype(dtype)


def halves(n):
    return list(range(n // 2)), list(range(n // 2, n))


def make_inter(comm, tag=0):
    """(intercomm, color, local world ranks, remote world ranks)."""
    n, me = comm.size, comm.rank
    low, high = halves(n)
    color = 0 if me < n // 2 else 1
    intra = comm.Split(color, key=0)
    inter = intra.Create_intercomm(0, comm, high[0] if color == 0 else 0, tag)
    intra.Free()
    return inter, color, (low, high)[color], (high, low)[color]


def check_equal(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


# ----------------------------------------------------------------- construction

def _construction(comm):
    inter, color, local, remote = make_inter(comm, tag=5)
    me = comm.rank
    assert inter.Is_inter() and not inter.Is_intra()
    assert inter.is_inter and not inter.is_intra
    assert not comm.Is_inter() and comm.Is_intra()
    assert isinstance(inter, MPI.Intercomm) and isinstance(inter, MPI.Comm)
    assert not isinstance(inter, MPI.Intracomm)
    assert inter.Get_size() == inter.size == len(local)
    assert inter.Get_rank() == inter.rank == local.index(me)
    assert inter.Get_remote_size() == inter.remote_size == len(remote)
    g, rg = inter.Get_group(), inter.Get_remote_group()
    assert g.Translate_ranks(None, None) == local and g.rank == inter.rank
    assert rg.Translate_ranks(None, None) == remote and rg.rank == MPI.UNDEFINED
    assert inter.remote_group.size == len(remote)
    # Dup: congruent, a new context (traffic on one never matches the other)
    d = inter.Dup()
    assert type(d) is MPI.Intercomm
    assert MPI.Comm.Compare(inter, d) == MPI.CONGRUENT
    assert inter.Compare(inter) == MPI.IDENT
    assert inter.Compare(comm) == MPI.UNEQUAL
    assert comm.Compare(inter) == MPI.UNEQUAL
    assert MPI.Comm.Compare(inter.Merge(), inter) == MPI.UNEQUAL
    if color == 0:
        d.send("on dup", dest=0, tag=1)
        inter.send("on inter", dest=0, tag=1)
    elif inter.rank == 0:
        for _ in range(len(remote)):
            s = MPI.Status()
            assert inter.recv(source=MPI.ANY_SOURCE, tag=1, status=s) == "on inter"
            assert 0 <= s.source < len(remote)
            assert d.recv(source=s.source, tag=1) == "on dup"
    # Split: color = local rank; a color only one side has gives COMM_NULL
    sp = inter.Split(inter.rank, key=0)
    if inter.rank < min(len(local), len(remote)):
        assert sp != MPI.COMM_NULL and sp.Get_size() == 1 and sp.Get_remote_size() == 1
        assert sp.Get_remote_group().Translate_ranks(None, None) == [remote[inter.rank]]
        sp.Free()
    else:
        assert sp == MPI.COMM_NULL
    assert inter.Split(MPI.UNDEFINED) == MPI.COMM_NULL
    assert inter.Split_type(MPI.UNDEFINED) == MPI.COMM_NULL
    st = inter.Split_type(MPI.COMM_TYPE_SHARED)
    assert st.Get_size() == len(local) and st.Get_remote_size() == len(remote)
    info = MPI.Info.Create()
    info.Set("mpi_hw_resource_type", "mpi_shared_memory")
    for kind in (MPI.COMM_TYPE_HW_GUIDED, MPI.COMM_TYPE_RESOURCE_GUIDED):
        gd = inter.Split_type(kind, info=info)
        assert type(gd) is MPI.Intercomm and gd.Get_remote_size() == len(remote)
        gd.Free()
        assert inter.Split_type(kind) == MPI.COMM_NULL   # no resource type asked
    assert inter.Split_type(MPI.COMM_TYPE_HW_UNGUIDED) == MPI.COMM_NULL
    with pytest.raises(MmpiError):
        inter.Split_type(12345)                          # on every rank, no hang
    # Create: the local group minus its last rank (both sides do the same)
    sub = inter.Get_group().Incl(list(range(max(1, len(local) - 1))))
    cr = inter.Create(sub)
    if inter.rank < sub.size:
        assert cr.Get_size() == sub.size and cr.Get_remote_size() == max(1, len(remote) - 1)
        cr.Free()
    else:
        assert cr == MPI.COMM_NULL
    # Create_from_groups: congruent with the original
    fg = MPI.Intercomm.Create_from_groups(inter.Get_group(), 0, inter.Get_remote_group(), 0)
    assert MPI.Comm.Compare(inter, fg) == MPI.CONGRUENT
    assert fg.allreduce(me, op=MPI.SUM) == sum(remote)
    # handles
    assert MPI.Intercomm(inter) == inter
    null = MPI.Intercomm()
    assert null == MPI.COMM_NULL
    for call in (lambda: MPI.Intercomm(comm), lambda: MPI.Intracomm(inter)):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(MmpiError) as ei:
        null.Get_remote_size()
    assert ei.value.Get_error_class() == MPI.ERR_COMM
    for c in (fg, st, d, inter):
        c.Free()
    return True


@pytest.mark.parametrize("n", [2, 3, 5])
def test_construction_and_communicator_calls(n):
    assert mmpi.spawn(_construction, n) == [True] * n


def _merge(comm):
    n, me = comm.size, comm.rank
    out = []
    for high0, high1 in ((False, True), (True, False), (False, False), (True, True)):
        inter, color, local, remote = make_inter(comm)
        m = inter.Merge(high1 if color else high0)
        assert type(m) is MPI.Intracomm and m.Get_size() == n
        low, high = halves(n)
        if high0 == high1:
            order = low + high          # the group holding the lower world rank first
        else:
            order = low + high if not high0 else high + low
        assert m.Get_group().Translate_ranks(None, None) == order, (high0, high1)
        assert m.Get_rank() == order.index(me)
        assert m.allreduce(1) == n       # a working intracommunicator
        out.append(m.Get_rank())
        m.Free()
        inter.Free()
    return out


@pytest.mark.parametrize("n", [2, 3, 4])
def test_merge_orders_by_high(n):
    res = mmpi.spawn(_merge, n)
    assert len(res) == n


# ----------------------------------------------------------------- the handle model

class MyIntercomm(MPI.Intercomm):
    def __new__(cls, comm=None):
        return super().__new__(cls, comm)


def _handles(comm):
    inter, color, local, remote = make_inter(comm)
    me = comm.rank
    # handles: a second handle is equal, sees the same remote group and attributes
    other = MPI.Intercomm(inter)
    assert other == inter and other is not inter and not (other != inter)
    assert other.Get_remote_group() == inter.Get_remote_group()   # one group
    assert inter.Get_remote_group() == inter.Get_remote_group()
    with pytest.raises(TypeError):
        hash(inter)
    assert MPI.Comm.Get_parent() == MPI.COMM_NULL
    assert type(MPI.Comm.Get_parent()) is MPI.Intercomm
    # toint/fromint and py2f/f2py give back an Intercomm onto the same communicator
    for back in (MPI.Comm.fromint(inter.toint()), MPI.Comm.f2py(inter.py2f()),
                 MPI.Comm.fromhandle(inter.handle)):
        assert back == inter and type(back) is MPI.Intercomm
        assert back.Get_remote_size() == len(remote)
    # attributes: set through one handle, read through the other, copied by Dup
    deleted = []
    kv = MPI.Comm.Create_keyval(copy_fn=lambda c, k, v: v + 1,
                                delete_fn=lambda c, k, v: deleted.append(v))
    inter.Set_attr(kv, 10)
    assert other.Get_attr(kv) == 10
    # the error handler is the communicator's and new communicators inherit it
    inter.Set_errhandler(MPI.ERRORS_RETURN)
    d = inter.Dup()
    assert d.Get_attr(kv) == 11 and d.Compare(inter) == MPI.CONGRUENT
    assert d.Get_errhandler() == MPI.ERRORS_RETURN
    m = inter.Merge()
    assert type(m) is MPI.Intracomm and m.Get_size() == comm.size
    # route: a rank of the REMOTE group, bounded by its size (odd sizes: uneven)
    for k in range(len(remote)):
        assert mmpi.route(inter, k) == "shm"
    for bad in (len(remote), -1):
        with pytest.raises(MmpiError, match="remote group"):
            mmpi.route(inter, bad)
    # a subclass keeps its class through Dup/Split, and gets a null one of its class
    mine = MyIntercomm(inter)
    assert mine == inter and type(mine.Dup()) is MyIntercomm
    sp = mine.Split(MPI.UNDEFINED)
    assert type(sp) is MyIntercomm and sp == MPI.COMM_NULL and not sp
    # Create_group is an intracommunicator's call: an error before any message
    with pytest.raises(MmpiError) as ei:
        inter.Create_group(inter.Get_group())
    assert ei.value.Get_error_class() == MPI.ERR_COMM
    # Free: delete callbacks run, the handle becomes null, later use is ERR_COMM
    d.Free()
    assert deleted == [11] and d == MPI.COMM_NULL
    inter.Free()
    assert deleted == [11, 10] and inter == MPI.COMM_NULL and not inter
    for call in (inter.Get_remote_size, inter.Get_remote_group, inter.Barrier, inter.Free,
                 lambda: inter.Send(b"x", 0), lambda: inter.send(1, 0),
                 lambda: inter.Get_size(), lambda: inter.Dup()):
        with pytest.raises(MmpiError) as ei:
            call()
        assert ei.value.Get_error_class() == MPI.ERR_COMM
    with pytest.raises(MmpiError) as ei:
        MPI.Comm.fromhandle(other.handle)   # freed: no live handle any more
    assert ei.value.Get_error_class() == MPI.ERR_COMM
    MPI.Comm.Free_keyval(kv)
    # the merged intracommunicator still works after its parent is freed
    assert m.allreduce(me) == sum(range(comm.size))
    m.Free()
    return True


@pytest.mark.parametrize("n", [2, 3])
def test_intercomm_handles_follow_the_object_model(n):
    assert mmpi.spawn(_handles, n) == [True] * n


# ----------------------------------------------------------------- point-to-point

def _p2p(comm):
    inter, color, local, remote = make_inter(comm)
    me, lr = comm.rank, inter.rank
    R = len(remote)
    # buffers: every rank sends to every remote rank, receives from every one
    reqs = [inter.Isend(data(me, 5, salt=d), dest=d, tag=10 + lr) for d in range(R)]
    for src in range(R):
        buf = np.empty(5)
        s = MPI.Status()
        inter.Recv(buf, source=src, tag=MPI.ANY_TAG, status=s)
        assert s.Get_source() == src and s.Get_tag() == 10 + src
        check_equal(buf, data(remote[src], 5, salt=lr), "Recv")
    MPI.Request.Waitall(reqs)
    # byte buffers take Comm's fast paths, bounded and mapped by the remote group
    bufs = [np.zeros(4, np.uint8) for _ in range(R)]
    reqs = [inter.Isend(np.full(4, me * 10 + d, np.uint8), dest=d, tag=20) for d in range(R)]
    reqs += [inter.Irecv(bufs[src], source=src, tag=20) for src in range(R)]
    MPI.Request.Waitall(reqs)
    for src in range(R):
        check_equal(bufs[src], np.full(4, remote[src] * 10 + lr, np.uint8), "Irecv")
        inter.Send(bufs[src], dest=src, tag=21)
    for src in range(R):
        inter.Recv(bufs[src], source=src, tag=21)
        check_equal(bufs[src], np.full(4, me * 10 + src, np.uint8), "Recv")
    # objects, ANY_SOURCE: statuses report ranks of the remote group
    for d in range(R):
        inter.send((me, d), dest=d, tag=3)
    got = set()
    for _ in range(R):
        s = MPI.Status()
        assert inter.Probe(MPI.ANY_SOURCE, 3, s) is True
        src = s.Get_source()
        assert inter.recv(source=MPI.ANY_SOURCE, tag=3, status=s) == (remote[s.source], lr)
        assert src == s.source
        got.add(s.source)
    assert got == set(range(R))
    # Sendrecv: rank i of group 0 with rank i of group 1 (the common ranks)
    if lr < min(len(local), R):
        out = np.empty(2)
        s = MPI.Status()
        inter.Sendrecv(data(me, 2, salt=50), lr, 4, out, lr, 4, s)
        assert s.source == lr
        check_equal(out, data(remote[lr], 2, salt=50), "Sendrecv")
        # Sendrecv_replace, persistent requests, synchronous sends: the same peer
        x = data(me, 3, salt=60)
        inter.Sendrecv_replace(x, lr, 5, lr, 5)
        check_equal(x, data(remote[lr], 3, salt=60), "Sendrecv_replace")
        rbuf = np.empty(3)
        preqs = [inter.Recv_init(rbuf, lr, 6), inter.Send_init(data(me, 3, salt=61), lr, 6)]
        for _ in range(2):
            MPI.Prequest.Startall(preqs)
            MPI.Request.Waitall(preqs)
            check_equal(rbuf, data(remote[lr], 3, salt=61), "persistent")
        rq = inter.irecv(source=lr, tag=7)
        inter.ssend(("sync", me), dest=lr, tag=7)
        assert rq.wait() == ("sync", remote[lr])
    inter.Send(np.zeros(0), dest=MPI.PROC_NULL)
    inter.Recv(np.zeros(0), source=MPI.PROC_NULL)
    assert inter.Iprobe(MPI.ANY_SOURCE, 99) is False
    # invalid ranks: the remote group's size bounds them, on every rank
    for bad in (R, -7):
        with pytest.raises(MmpiError) as ei:
            inter.Send(np.zeros(1), dest=bad)
        assert ei.value.Get_error_class() == MPI.ERR_RANK
        with pytest.raises(MmpiError):
            inter.recv(source=bad)
        for call in (inter.Isend, inter.Irecv, inter.Send, inter.Recv):   # fast paths
            with pytest.raises(MmpiError) as ei:
                call(np.zeros(8, np.uint8), bad, 0)
            assert ei.value.Get_error_class() == MPI.ERR_RANK
    # the intracommunicator's traffic is not the intercommunicator's
    inter.Barrier()
    if color == 0:
        comm.send("world", dest=halves(comm.size)[1][0], tag=3)
        inter.send("inter", dest=0, tag=3)
    elif lr == 0:
        assert inter.recv(source=MPI.ANY_SOURCE, tag=3) == "inter"
        for _ in range(len(remote) - 1):
            assert inter.recv(source=MPI.ANY_SOURCE, tag=3) == "inter"
        for _ in range(len(remote)):
            assert comm.recv(source=MPI.ANY_SOURCE, tag=3) == "world"
    inter.Barrier()
    inter.Free()
    return True


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_point_to_point_both_ways(n):
    assert mmpi.spawn(_p2p, n) == [True] * n


# ----------------------------------------------------------------- collectives

def _collectives(comm, count, dtypes):
    inter, color, local, remote = make_inter(comm)
    me, lr = comm.rank, inter.rank
    L, R = len(local), len(remote)
    checks = 0
    for dtype in dtypes:
        for rcolor in (0, 1):                   # the root's group
            for root in range(len(halves(comm.size)[rcolor])):
                rootw = halves(comm.size)[rcolor][root]
                if color == rcolor:
                    arg = MPI.ROOT if lr == root else MPI.PROC_NULL
                else:
                    arg = root
                i_root = me == rootw
                leaf = color != rcolor
                # Bcast
                buf = data(rootw, count, dtype, 1) if i_root else np.full(count, 99, dtype)
                inter.Bcast(buf if (i_root or leaf) else None, root=arg)
                if leaf:
                    check_equal(buf, data(rootw, count, dtype, 1), "Bcast")
                # Gather
                rb = np.full((R, count), 99, dtype) if i_root else None
                inter.Gather(data(me, count, dtype, 2) if leaf else None, rb, root=arg)
                if i_root:
                    check_equal(rb, np.stack([data(w, count, dtype, 2) for w in remote]),
                                "Gather")
                # Scatter
                sb = (np.stack([data(w, count, dtype, 3) for w in remote]) if i_root
                      else None)
                rb = np.full(count, 99, dtype) if leaf else None
                inter.Scatter(sb, rb, root=arg)
                if leaf:
                    check_equal(rb, data(me, count, dtype, 3), "Scatter")
                # Gatherv / Scatterv with uneven counts (remote rank r: r % 3 + count)
                cnts = [r % 3 + count for r in range(R)]
                if i_root:
                    g = np.full(sum(cnts), 99, dtype)
                    inter.Gatherv(None, [g, cnts], root=arg)
                    check_equal(g, np.concatenate([data(w, cnts[r], dtype, 4)
                                                   for r, w in enumerate(remote)]), "Gatherv")
                    flat = np.concatenate([data(w, cnts[r], dtype, 5)
                                           for r, w in enumerate(remote)])
                    inter.Scatterv([flat, cnts], None, root=arg)
                elif leaf:
                    mine = lr % 3 + count
                    inter.Gatherv(data(me, mine, dtype, 4), None, root=arg)
                    out = np.full(mine, 99, dtype)
                    inter.Scatterv(None, out, root=arg)
                    check_equal(out, data(me, mine, dtype, 5), "Scatterv")
                else:
                    inter.Gatherv(None, None, root=arg)
                    inter.Scatterv(None, None, root=arg)
                # Reduce (SUM, MAX) of the remote group's data at the root
                for op, fn in ((MPI.SUM, np.add), (MPI.MAX, np.maximum)):
                    rb = np.full(count, 99, dtype) if i_root else None
                    inter.Reduce(data(me, count, dtype, 6) if leaf else None, rb, op=op,
                                 root=arg)
                    if i_root:
                        want = data(remote[0], count, dtype, 6)
                        for w in remote[1:]:
                            want = fn(want, data(w, count, dtype, 6))
                        check_equal(rb, want, f"Reduce {op}")
                checks += 1
        # every rank gets the remote group's data
        ag = np.full((R, count + 1), 99, dtype)
        inter.Allgather(data(me, count + 1, dtype, 7), ag)
        check_equal(ag, np.stack([data(w, count + 1, dtype, 7) for w in remote]), "Allgather")
        # Allgatherv: remote rank r contributes r + 1 elements
        cnts = [r + 1 for r in range(R)]
        agv = np.full(sum(cnts), 99, dtype)
        inter.Allgatherv(data(me, lr + 1, dtype, 8), [agv, cnts])
        check_equal(agv, np.concatenate([data(w, r + 1, dtype, 8)
                                         for r, w in enumerate(remote)]), "Allgatherv")
        # Alltoall: block d of rank me goes to remote rank d
        sb = np.stack([data(me, count, dtype, 100 + d) for d in range(R)])
        rb = np.full((R, count), 99, dtype)
        inter.Alltoall(sb, rb)
        check_equal(rb, np.stack([data(w, count, dtype, 100 + lr) for w in remote]),
                    "Alltoall")
        # Alltoallv: I send (lr + d) % 2 + 1 elements to remote rank d
        sc = [(lr + d) % 2 + 1 for d in range(R)]
        rc = [(r + lr) % 2 + 1 for r in range(R)]
        sb = np.concatenate([data(me, sc[d], dtype, 200 + d) for d in range(R)])
        rb = np.full(sum(rc), 99, dtype)
        inter.Alltoallv([sb, sc], [rb, rc])
        check_equal(rb, np.concatenate([data(w, rc[r], dtype, 200 + lr)
                                        for r, w in enumerate(remote)]), "Alltoallv")
        # Alltoallw: the same exchange with byte displacements and a datatype per rank
        dt = MPI.Datatype.fromcode(np.dtype(dtype).char)
        isz = np.dtype(dtype).itemsize
        sd = [sum(sc[:d]) * isz for d in range(R)]
        rd = [sum(rc[:r]) * isz for r in range(R)]
        rb2 = np.full(sum(rc), 99, dtype)
        inter.Alltoallw([sb, (sc, sd), [dt] * R], [rb2, (rc, rd), [dt] * R])
        check_equal(rb2, rb, "Alltoallw")
        # Allreduce: the remote group's sum
        out = np.full(count, 99, dtype)
        inter.Allreduce(data(me, count, dtype, 9), out, op=MPI.SUM)
        check_equal(out, sum(data(w, count, dtype, 9) for w in remote).astype(dtype),
                    "Allreduce")
        # Reduce_scatter_block: L * rc(mine) == R * rc(theirs): rc(mine) = R * k
        k = 2
        rcount = R * k
        sb = data(me, L * rcount, dtype, 10)
        out = np.full(rcount, 99, dtype)
        inter.Reduce_scatter_block(sb, out, op=MPI.SUM)
        full = sum(data(w, R * L * k, dtype, 10) for w in remote).astype(dtype)
        check_equal(out, full[lr * rcount:(lr + 1) * rcount], "Reduce_scatter_block")
        # Reduce_scatter: this group's counts add up to the same total on both sides
        total = L * R
        cnts = [total // L] * L
        out = np.full(cnts[lr], 99, dtype)
        inter.Reduce_scatter(data(me, total, dtype, 11), out, cnts, op=MPI.SUM)
        full = sum(data(w, total, dtype, 11) for w in remote).astype(dtype)
        check_equal(out, full[sum(cnts[:lr]):sum(cnts[:lr + 1])], "Reduce_scatter")
        inter.Barrier()
        checks += 1
    inter.Free()
    return checks


@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_collective_matches_numpy_both_directions(n):
    res = mmpi.spawn(_collectives, n, args=(7, [np.float64, np.int32, np.uint8]))
    assert len(res) == n and all(r > 0 for r in res)


def test_collectives_large_buffers():
    res = mmpi.spawn(_collectives, 4, args=(LARGE, [np.float64]))
    assert all(r > 0 for r in res)


def test_collectives_zero_count():
    res = mmpi.spawn(_collectives, 3, args=(0, [np.int32]))
    assert all(r > 0 for r in res)


def _objects(comm):
    inter, color, local, remote = make_inter(comm)
    me, lr = comm.rank, inter.rank
    R = len(remote)
    for rcolor in (0, 1):
        for root in range(len(halves(comm.size)[rcolor])):
            rootw = halves(comm.size)[rcolor][root]
            leaf = color != rcolor
            arg = root if leaf else (MPI.ROOT if lr == root else MPI.PROC_NULL)
            i_root = me == rootw
            v = inter.bcast({"from": me} if i_root else None, root=arg)
            assert v == ({"from": rootw} if leaf else None)
            v = inter.gather([me] if leaf else None, root=arg)
            assert v == ([[w] for w in remote] if i_root else None)
            v = inter.scatter([("x", w) for w in remote] if i_root else None, root=arg)
            assert v == (("x", me) if leaf else None)
            v = inter.reduce([me] if leaf else None, op=MPI.SUM, root=arg)
            assert v == ([w for w in remote] if i_root else None)   # in rank order
    assert inter.allgather(me) == remote
    assert inter.alltoall([(me, d) for d in range(R)]) == [(w, lr) for w in remote]
    assert inter.allreduce(me, op=MPI.SUM) == sum(remote)
    assert inter.allreduce([me], op=MPI.SUM) == remote       # rank order kept
    inter.barrier()
    # nonblocking forms
    req = inter.Ibarrier()
    req.Wait()
    out = np.zeros(3)
    r = inter.Iallreduce(np.full(3, float(me)), out, op=MPI.SUM)
    r.Wait()
    check_equal(out, np.full(3, float(sum(remote))), "Iallreduce")
    ag = np.zeros((R, 2))
    r1 = inter.Iallgather(np.full(2, float(me)), ag)
    b = np.zeros(4) if color == 1 else (np.arange(4.0) if lr == 0 else None)
    r2 = inter.Ibcast(b, root=0 if color == 1 else (MPI.ROOT if lr == 0 else MPI.PROC_NULL))
    MPI.Request.Waitall([r2, r1])
    check_equal(ag, np.repeat(np.array(remote, float)[:, None], 2, axis=1), "Iallgather")
    if color == 1:
        check_equal(b, np.arange(4.0), "Ibcast")
    # several nonblocking calls in flight at once, with COMM_WORLD traffic between
    # them, completed in reverse order: each matches its own peers' call
    L = len(local)
    big = 3 * LARGE // 4
    o1 = np.zeros(big)
    o2 = np.zeros((R, 2))
    o3 = np.zeros((R, 3))
    s3 = np.stack([np.full(3, float(me * 100 + d)) for d in range(R)])
    rs = [inter.Iallreduce(np.full(big, float(me)), o1, op=MPI.SUM),
          inter.Iallgather(np.full(2, float(-me)), o2),
          inter.Ialltoall(s3, o3),
          inter.Ireduce_scatter_block(np.full(L * R, float(me)), np.zeros(R), op=MPI.MAX)]
    assert comm.allreduce(1) == comm.size
    for r in reversed(rs):
        r.Wait()
    check_equal(o1, np.full(big, float(sum(remote))), "Iallreduce in flight")
    check_equal(o2, np.repeat(-np.array(remote, float)[:, None], 2, axis=1), "Iallgather")
    check_equal(o3, np.stack([np.full(3, float(w * 100 + lr)) for w in remote]), "Ialltoall")
    inter.Free()
    return True


@pytest.mark.parametrize("n", [2, 3, 4])
def test_object_and_nonblocking_forms(n):
    assert mmpi.spawn(_objects, n) == [True] * n


# ----------------------------------------------------------------- errors

def _errors(comm):
    inter, color, local, remote = make_inter(comm)
    R = len(remote)
    # a bad root raises ERR_ROOT on every rank, before any message: no rank hangs,
    # and the next collective still matches
    for bad in (-3, -1, R, 10**6, 1.5, None):
        for call in (lambda: inter.reduce(None, op=MPI.SUM, root=bad),
                     lambda: inter.Bcast(np.zeros(1), root=bad),
                     lambda: inter.gather(1, root=bad)):
            with pytest.raises(MmpiError) as ei:
                call()
            assert ei.value.Get_error_class() == MPI.ERR_ROOT
    assert inter.allreduce(1) == R
    # IN_PLACE has no meaning between two groups
    with pytest.raises(MmpiError, match="IN_PLACE"):
        inter.Allreduce(MPI.IN_PLACE, np.zeros(1))
    assert inter.allgather(comm.rank) == remote
    # a scatter whose root passes the wrong number of items fails everywhere
    arg = 0 if color == 1 else (MPI.ROOT if inter.rank == 0 else MPI.PROC_NULL)
    if color == 1 or inter.rank == 0:
        with pytest.raises(MmpiError, match="scatter"):
            inter.scatter([1] * (R + 1) if color == 0 else None, root=arg)
    else:
        assert inter.scatter(None, root=arg) is None
    assert inter.allreduce(1) == R
    # Create_intercomm's arguments
    intra = comm.Split(color, 0)
    with pytest.raises(MmpiError) as ei:
        intra.Create_intercomm(intra.size, comm, 0)
    assert ei.value.Get_error_class() == MPI.ERR_RANK
    with pytest.raises(MmpiError):
        intra.Create_intercomm(0, comm, 0, tag=-1)
    intra.Free()
    inter.Free()
    return True


@pytest.mark.parametrize("n", [2, 3])
def test_argument_errors_raise_everywhere_without_hanging(n):
    assert mmpi.spawn(_errors, n) == [True] * n


def test_leader_error_reaches_its_group():
    """peer_comm only matters at the local leader: a bad one there fails the whole
    local group (the leader tells it), not only the leader."""
    def fn(comm):
        color = comm.rank % 2
        intra = comm.Split(color, 0)
        try:
            if color == 0:
                intra.Create_intercomm(0, comm if intra.rank else "not a comm", 1)
            else:
                return "skipped"          # the other group never joins: not needed here
        except MmpiError as e:
            return e.Get_error_class()
        return None
    res = mmpi.spawn(fn, 4)
    assert res[0] == res[2] == MPI.ERR_COMM and res[1] == res[3] == "skipped"


def test_singleton_has_no_remote_group():
    def fn(comm):
        with pytest.raises(MmpiError):
            comm.Create_intercomm(0, comm, 0)   # the remote leader would be this rank
        with pytest.raises((MmpiNotImplementedError, AttributeError)):
            comm.Get_remote_size()
        return True
    assert mmpi.spawn(fn, 1) == [True]
