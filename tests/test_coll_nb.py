"""Nonblocking and w collectives, Reduce_scatter without counts, Op's API, with real ranks.

Each rank builds its input from its rank, computes the NumPy reference of the
whole collective by itself and compares.  Argument errors are raised on every
rank before any communication: afterwards the ranks still agree (the next
collective completes, nobody hangs).
"""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError, TruncationError


def data(rank, count, dtype=np.float64, salt=0):
    return ((np.arange(count) * 7 + rank * 13 + salt) % 11).astype(dtype)


def nb_sweep(comm):
    n, me = comm.Get_size(), comm.Get_rank()
    done = 0
    for dtype in (np.float64, np.int32):
        for count in (0, 1, 5, 3000):
            mine = data(me, count, dtype)
            every = [data(r, count, dtype) for r in range(n)]
            for root in range(n):
                # Igather / Iscatter (+ IN_PLACE at the root)
                out = np.full((n, count), -1, dtype)
                comm.Igather(mine, out if me == root else None, root=root).Wait()
                if me == root:
                    assert np.array_equal(out, np.array(every).reshape(n, count))
                out = np.full((n, count), -1, dtype)
                if me == root:
                    out[me] = mine
                comm.Igather(MPI.IN_PLACE if me == root else mine,
                             out if me == root else None, root=root).Wait()
                if me == root:
                    assert np.array_equal(out, np.array(every).reshape(n, count))
                rb = np.full(count, -1, dtype)
                src = np.array(every).reshape(n, count) if me == root else None
                comm.Iscatter(src, rb, root=root).Wait()
                assert np.array_equal(rb, every[me])
                # Ireduce (+ IN_PLACE)
                red = np.zeros(count, dtype)
                comm.Ireduce(mine, red if me == root else None, op=MPI.SUM, root=root).Wait()
                if me == root:
                    assert np.array_equal(red, sum(every))
                io = mine.copy()
                comm.Ireduce(MPI.IN_PLACE if me == root else io, io if me == root else None,
                             op=MPI.MAX, root=root).Wait()
                if me == root:
                    assert np.array_equal(io, np.maximum.reduce(every))
                done += 4
            # Iallgather (+ IN_PLACE), Ialltoall
            out = np.zeros((n, count), dtype)
            comm.Iallgather(mine, out).Wait()
            assert np.array_equal(out, np.array(every).reshape(n, count))
            out = np.zeros((n, count), dtype)
            out[me] = mine
            comm.Iallgather(MPI.IN_PLACE, out).Wait()
            assert np.array_equal(out, np.array(every).reshape(n, count))
            send = np.array([data(me, count, dtype, salt=d) for d in range(n)])
            recv = np.zeros((n, count), dtype)
            comm.Ialltoall(send, recv).Wait()
            for s in range(n):
                assert np.array_equal(recv[s], data(s, count, dtype, salt=me))
            # Iscan / Iexscan, Ireduce_scatter_block, Ireduce_scatter (counts and None)
            sc = np.zeros(count, dtype)
            comm.Iscan(mine, sc, op=MPI.SUM).Wait()
            assert np.array_equal(sc, sum(every[:me + 1]))
            ex = np.full(count, -1, dtype)
            comm.Iexscan(mine, ex, op=MPI.SUM).Wait()
            if me > 0:
                assert np.array_equal(ex, sum(every[:me]))
            big = [data(r, count * n, dtype) for r in range(n)]
            rb = np.zeros(count, dtype)
            comm.Ireduce_scatter_block(big[me], rb, op=MPI.SUM).Wait()
            assert np.array_equal(rb, sum(big)[me * count:(me + 1) * count])
            counts = [count + r for r in range(n)]
            tot = sum(counts)
            vec = [data(r, tot, dtype) for r in range(n)]
            lo = sum(counts[:me])
            for rc in (counts, None):
                rb = np.zeros(counts[me], dtype)
                comm.Ireduce_scatter(vec[me], rb, rc, op=MPI.SUM).Wait()
                assert np.array_equal(rb, sum(vec)[lo:lo + counts[me]])
                rb = np.zeros(counts[me], dtype)
                comm.Reduce_scatter(vec[me], rb, rc, op=MPI.SUM)
                assert np.array_equal(rb, sum(vec)[lo:lo + counts[me]])
            done += 9
    return done


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nonblocking_collectives_against_numpy(n):
    res = mmpi.spawn(nb_sweep, n)
    assert res[0] > 0 and len(set(res)) == 1


def vector_forms(comm):
    n, me = comm.Get_size(), comm.Get_rank()
    counts = [r + 1 for r in range(n)]
    displs = [sum(counts[:r]) + r for r in range(n)]      # a hole after each block
    size = displs[-1] + counts[-1] + 1
    mine = np.full(counts[me], me + 1, np.int64)
    want = np.full(size, -1, np.int64)
    for r in range(n):
        want[displs[r]:displs[r] + counts[r]] = r + 1
    for root in range(n):
        out = np.full(size, -1, np.int64)
        comm.Igatherv(mine, [out, (counts, displs), MPI.INT64_T] if me == root else None,
                      root=root).Wait()
        if me == root:
            assert np.array_equal(out, want)
        rb = np.zeros(counts[me], np.int64)
        comm.Iscatterv([want, (counts, displs), MPI.INT64_T] if me == root else None, rb,
                       root=root).Wait()
        assert np.array_equal(rb, mine)
    out = np.full(size, -1, np.int64)
    comm.Iallgatherv(mine, [out, counts, displs, MPI.INT64_T]).Wait()
    assert np.array_equal(out, want)
    # all-to-all v and w: rank s sends rank d (s + d + 1) values of s * 10 + d
    sc = [me + d + 1 for d in range(n)]
    rc = [s + me + 1 for s in range(n)]
    sd = [sum(sc[:d]) for d in range(n)]
    rd = [sum(rc[:s]) for s in range(n)]
    send = np.concatenate([np.full(sc[d], me * 10 + d, np.int32) for d in range(n)])
    want = np.concatenate([np.full(rc[s], s * 10 + me, np.int32) for s in range(n)])
    recv = np.zeros(sum(rc), np.int32)
    comm.Ialltoallv([send, (sc, sd), MPI.INT], [recv, (rc, rd), MPI.INT]).Wait()
    assert np.array_equal(recv, want)
    for w in (comm.Alltoallw, lambda s, r: comm.Ialltoallw(s, r).Wait()):
        recv[:] = 0
        w([send, (sc, [4 * x for x in sd]), [MPI.INT] * n],
          [recv, rc, [4 * x for x in rd], [MPI.INT] * n])
        assert np.array_equal(recv, want)
    # Alltoallw with IN_PLACE: every block goes to its rank in place
    io = np.array([me * 10 + d for d in range(n)], np.int16)
    comm.Alltoallw(MPI.IN_PLACE, [io, ([1] * n, [2 * d for d in range(n)]), [MPI.SHORT] * n])
    assert list(io) == [s * 10 + me for s in range(n)]
    return True


@pytest.mark.parametrize("n", [1, 3])
def test_vector_and_w_forms(n):
    assert mmpi.spawn(vector_forms, n) == [True] * n


def errors_everywhere(comm):
    """Errors every rank sees are raised on every rank, before any message: the
    next collective still pairs up."""
    n, me = comm.Get_size(), comm.Get_rank()
    a = np.ones(4)
    caught = []
    for call in (lambda: comm.Igather(a, np.zeros((n, 4)), root=n),
                 lambda: comm.Ireduce(a, np.zeros(4), op=MPI.SUM, root=-1),
                 lambda: comm.Iallreduce(a, np.zeros(4), op=MPI.OP_NULL),
                 lambda: comm.Ireduce_scatter(a, np.zeros(4), [1] * (n + 1)),
                 lambda: comm.Ialltoallw([a, [MPI.DOUBLE]], [a]),
                 lambda: comm.Iallgather(a, b"\0" * (32 * n))):
        try:
            call()
        except MmpiError as e:
            caught.append(e.Get_error_class())
    assert caught[:2] == [MPI.ERR_ROOT, MPI.ERR_ROOT], caught
    assert caught[2] == MPI.ERR_OP and len(caught) == 6, caught
    # a rank-local truncation (only the root sees it) is raised after the exchange
    if me == 0:
        with pytest.raises(TruncationError):
            comm.Igather(np.ones(5), np.zeros((n, 4)), root=0).Wait()
    else:
        comm.Igather(np.ones(4), None, root=0).Wait()
    # Reduce_scatter without counts: one rank's send buffer is too short; the counts
    # exchange shows it to every rank, which all raise the same error
    send = np.ones(2 * n - (me == n - 1))
    for call in (lambda: comm.Ireduce_scatter(send, np.zeros(2), None).Wait(),
                 lambda: comm.Reduce_scatter(send, np.zeros(2), None)):
        with pytest.raises(MmpiError, match=f"rank {n - 1}'s send buffer"):
            call()
    out = np.zeros(4)
    comm.Iallreduce(a, out, op=MPI.SUM).Wait()
    assert np.array_equal(out, np.full(4, n))
    return caught


def test_argument_errors_on_every_rank_no_hang():
    res = mmpi.spawn(errors_everywhere, 3)
    assert res[0] == res[1] == res[2]


def user_ops(comm):
    n, me = comm.Get_size(), comm.Get_rank()

    def matmul(invec, inoutvec, datatype):   # 2x2 matrices: non-commutative
        a = invec.reshape(-1, 2, 2)
        b = inoutvec.reshape(-1, 2, 2)
        b[...] = a @ b

    op = MPI.Op.Create(matmul, commute=False)
    try:
        assert not op.Is_commutative() and not op.is_predefined
        mats = [np.array([[1, r + 1], [0, 1]], np.float64) + np.eye(2) * r for r in range(n)]
        want = mats[0]
        for m in mats[1:]:
            want = want @ m
        out = np.zeros(4)
        comm.Ireduce(mats[me].ravel(), out if me == 0 else None, op=op, root=0).Wait()
        if me == 0:
            assert np.allclose(out.reshape(2, 2), want)
        sc = np.zeros(4)
        comm.Iscan(mats[me].ravel(), sc, op=op).Wait()
        pre = mats[0]
        for m in mats[1:me + 1]:
            pre = pre @ m
        assert np.allclose(sc.reshape(2, 2), pre)
    finally:
        op.Free()
    return True


def test_user_ops_noncommutative_in_rank_order():
    assert mmpi.spawn(user_ops, 3) == [True] * 3


def test_op_handles_pickling_and_reduce_local():
    assert MPI.Op() == MPI.OP_NULL and not MPI.OP_NULL and MPI.OP_NULL.is_predefined
    assert MPI.Op(MPI.SUM) == MPI.SUM and MPI.Op(MPI.SUM) is not MPI.SUM
    for op in (MPI.SUM, MPI.MAXLOC, MPI.OP_NULL, MPI.NO_OP):
        assert pickle.loads(pickle.dumps(op)) is op
        assert pickle.loads(pickle.dumps(MPI.Op(op))) == op
    with pytest.raises(ValueError):
        MPI.OP_NULL(1, 2)
    user = MPI.Op.Create(_add3, commute=True)
    try:
        clone = pickle.loads(pickle.dumps(user))
        assert clone != user and clone([2], [3]) == [5] and clone.Is_commutative()
        clone.Free()
        assert MPI.Op.fromint(user.toint()) == user
    finally:
        user.Free()
    a, b = np.arange(5.0), np.ones(5)
    MPI.PROD.Reduce_local(a, b)
    assert list(b) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        MPI.SUM.Reduce_local([a, 2], [b, 3])
    with pytest.raises(ValueError):
        MPI.SUM.Reduce_local([np.zeros(2, np.int32), MPI.INT], [np.zeros(4, np.int16), MPI.SHORT])


def test_at_most_32_live_user_ops():
    ops = [MPI.Op.Create(_add3) for _ in range(32)]
    try:
        with pytest.raises(RuntimeError, match="32"):
            MPI.Op.Create(_add3)
    finally:
        for o in ops:
            o.Free()
    MPI.Op.Create(_add3).Free()


def test_user_op_collected_unfreed_gives_its_slot_back():
    """An op from Op.Create that is dropped without Free is freed when collected, so
    a loop creating ops never runs out of the 32 slots; a copy made with Op(op) then
    sees it freed."""
    for _ in range(3 * 32):
        assert MPI.Op.Create(_add3)(["a"], ["b"]) == ["ab"]
    op = MPI.Op.Create(_add3)
    copy = MPI.Op(op)
    assert not copy.freed and copy == op
    del op
    gc.collect()
    assert copy.freed
    ops = [MPI.Op.Create(_add3) for _ in range(32)]    # all 32 slots are free again
    for o in ops:
        o.Free()


def _add3(a, b, dt=None):
    return [x + y for x, y in zip(a, b)]


PAIR = np.dtype([("v", "f8"), ("i", "i4")], align=True)   # C's struct {double; int}


def loc_ref(pairs, greater):
    best = pairs[0].copy()
    for p in pairs[1:]:
        better = (p["v"] > best["v"]) if greater else (p["v"] < best["v"])
        take = better | ((p["v"] == best["v"]) & (p["i"] < best["i"]))
        best[take] = p[take]
    return best


def same(a, b):
    return np.array_equal(a["v"], b["v"]) and np.array_equal(a["i"], b["i"])


def maxloc_pairs(comm):
    n, me = comm.Get_size(), comm.Get_rank()
    for count in (5, 40000):        # 40000 x 16 B: the direct (single-copy) reduction
        def pairs(r):
            p = np.zeros(count, PAIR)
            p["v"] = (np.arange(count) * (r + 3)) % 7
            p["i"] = r
            return p
        every = [pairs(r) for r in range(n)]
        for op, greater in ((MPI.MAXLOC, True), (MPI.MINLOC, False)):
            want = loc_ref(every, greater)
            out = np.zeros(count, PAIR)
            comm.Allreduce(every[me], out, op=op)
            assert same(out, want)
            out = np.zeros(count, PAIR)
            comm.Reduce(every[me], out if me == 1 % n else None, op=op, root=1 % n)
            if me == 1 % n:
                assert same(out, want)
            out = np.zeros(count, PAIR)
            comm.Iallreduce(every[me], out, op=op).Wait()
            assert same(out, want)
    with pytest.raises(MmpiError, match="pairs"):
        comm.Allreduce(np.zeros(3), np.zeros(3), op=MPI.MAXLOC)   # every rank: no pairs
    return True


@pytest.mark.parametrize("n", [1, 3])
def test_maxloc_minloc_on_pair_buffers(n):
    assert mmpi.spawn(maxloc_pairs, n) == [True] * n


def concurrent(comm):
    """Several nonblocking collectives in flight at once, completed in different
    orders on different ranks (each advances inside the others' waits)."""
    n, me = comm.Get_size(), comm.Get_rank()
    a = np.full(1000, me, np.int64)
    g = np.zeros((n, 1000), np.int64)
    s = np.zeros(1000, np.int64)
    t = np.zeros((n, 7), np.int32)
    reqs = [comm.Iallgather(a, g), comm.Iallreduce(a, s, op=MPI.SUM),
            comm.Ialltoall(np.full((n, 7), me, np.int32), t)]
    for r in (reqs if me % 2 else reversed(reqs)):
        r.Wait()
    assert np.array_equal(g, np.repeat(np.arange(n), 1000).reshape(n, 1000))
    assert np.array_equal(s, np.full(1000, n * (n - 1) // 2))
    assert np.array_equal(t, np.repeat(np.arange(n, dtype=np.int32), 7).reshape(n, 7))
    return True


def test_concurrent_nonblocking_collectives_any_completion_order():
    assert mmpi.spawn(concurrent, 3) == [True] * 3


def one_rank_errors(comm):
    """An argument error only one rank sees (its own buffer) cannot be raised on
    every rank before communicating, but it must not leave the others waiting:
    that rank sends them an empty message instead, and their size check raises."""
    n, me = comm.Get_size(), comm.Get_rank()
    bad = [np.zeros(5), 9, MPI.DOUBLE]      # 9 doubles overrun a 5-double buffer
    seen = []
    for blocking in (True, False):
        # Scatter: the root's send buffer is wrong
        rb = np.zeros(4)
        try:
            if blocking:
                comm.Scatter(bad if me == 0 else None, rb, root=0)
            else:
                comm.Iscatter(bad if me == 0 else None, rb, root=0).Wait()
        except MmpiError as e:
            seen.append(("scatter", type(e).__name__))
        # Gather: rank n-1's send buffer is wrong
        out = np.zeros((n, 4)) if me == 0 else None
        try:
            sb = bad if me == n - 1 else np.ones(4)
            if blocking:
                comm.Gather(sb, out, root=0)
            else:
                comm.Igather(sb, out, root=0).Wait()
        except MmpiError as e:
            seen.append(("gather", type(e).__name__))
    out = np.zeros(4)
    comm.Allreduce(np.ones(4), out, op=MPI.SUM)        # still in step
    assert np.array_equal(out, np.full(4, n))
    return seen


def test_one_rank_argument_errors_do_not_hang_the_others():
    res = mmpi.spawn(one_rank_errors, 3)
    # every rank of scatter raises (root: its spec; others: an empty block); for gather
    # the bad rank and the root raise, the third rank's send simply completes
    assert [k for k, _ in res[0]] == ["scatter", "gather"] * 2
    assert [k for k, _ in res[1]] == ["scatter"] * 2
    assert [k for k, _ in res[2]] == ["scatter", "gather"] * 2
