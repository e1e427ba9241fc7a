"""mmpi collectives and communicator construction, with real forked ranks.

Every rank builds its input deterministically from its rank, so each rank can
compute the NumPy reference of the whole collective by itself and compare.
Values are small integers (exact in every dtype), so float sums are exact too
whatever the reduction order.  No timed assertions.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import tempfile
import time
import traceback

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError, PeerDiedError, RankFailedError, TruncationError
from driller.mmpi import _world
from driller.mmpi._coll import _bcast, _reduce

DTYPES = [np.float64, np.int32, np.uint8, np.complex128]
MiB = 1 << 20


def data(rank, count, dtype, salt=0):
    """Rank ``rank``'s input: small integers, exact in every dtype."""
    x = (np.arange(count, dtype=np.int64) * 7 + rank * 13 + salt) % 11
    return x.astype(dtype)


def ref(op, arrays):
    out = arrays[0].copy()
    for a in arrays[1:]:
        out = {"SUM": np.add, "PROD": np.multiply, "MAX": np.maximum, "MIN": np.minimum,
               "BAND": np.bitwise_and, "BOR": np.bitwise_or, "BXOR": np.bitwise_xor}[op](out, a)
    return out


def check_equal(got, want, what):
    if got.shape != want.shape or not np.array_equal(got, want):
        bad = (np.flatnonzero(got.ravel() != want.ravel())[:5] if got.shape == want.shape
               else f"shape {got.shape} != {want.shape}")
        raise AssertionError(f"{what}: mismatch at {bad}")


# ----------------------------------------------------------------- the big sweep

def sweep(comm, sizes, dtypes, roots):
    """Run every buffer collective; returns the number of checks done."""
    n, me = comm.size, comm.rank
    checks = 0
    for dtype in dtypes:
        for count in sizes:
            tag = f"{np.dtype(dtype).name} x {count} on {n} ranks"
            mine = data(me, count, dtype)
            everyone = [data(r, count, dtype) for r in range(n)]
            ops = ["SUM", "MAX", "MIN"] + (["BXOR", "BOR"] if np.dtype(dtype).kind in "iu" else [])
            if np.dtype(dtype).kind == "c":
                ops = ["SUM", "PROD"] if n <= 4 else ["SUM"]
            for root in roots:
                # Bcast
                buf = mine.copy() if me == root else np.zeros(count, dtype)
                comm.Bcast(buf, root=root)
                check_equal(buf, everyone[root], f"Bcast root {root} {tag}")
                # Reduce
                for opname in ops:
                    out = np.zeros(count, dtype) if me == root else None
                    comm.Reduce(mine, out, op=getattr(MPI, opname), root=root)
                    if me == root:
                        check_equal(out, ref(opname, everyone), f"Reduce {opname} {tag}")
                    checks += 1
                # Reduce, IN_PLACE at the root
                io = mine.copy()
                comm.Reduce(MPI.IN_PLACE if me == root else io, io if me == root else None,
                            op=MPI.SUM, root=root)
                if me == root:
                    check_equal(io, ref("SUM", everyone), f"Reduce IN_PLACE {tag}")
                # Gather / Scatter
                g = np.zeros(n * count, dtype) if me == root else None
                comm.Gather(mine, g, root=root)
                if me == root:
                    check_equal(g, np.concatenate(everyone), f"Gather {tag}")
                s = np.zeros(count, dtype)
                comm.Scatter(np.concatenate(everyone) if me == root else None, s, root=root)
                check_equal(s, everyone[me], f"Scatter {tag}")
                checks += 4
            for opname in ops:
                out = np.zeros(count, dtype)
                comm.Allreduce(mine, out, op=getattr(MPI, opname))
                check_equal(out, ref(opname, everyone), f"Allreduce {opname} {tag}")
                checks += 1
            io = mine.copy()
            ipop = ops[1] if len(ops) > 1 else "SUM"
            comm.Allreduce(MPI.IN_PLACE, io, op=getattr(MPI, ipop))
            check_equal(io, ref(ipop, everyone), f"Allreduce IN_PLACE {ipop} {tag}")
            # Allgather (+ IN_PLACE)
            ag = np.zeros(n * count, dtype)
            comm.Allgather(mine, ag)
            check_equal(ag, np.concatenate(everyone), f"Allgather {tag}")
            ag = np.zeros(n * count, dtype)
            ag[me * count:(me + 1) * count] = mine
            comm.Allgather(MPI.IN_PLACE, ag)
            check_equal(ag, np.concatenate(everyone), f"Allgather IN_PLACE {tag}")
            # Alltoall: rank r's block j is data(r, count, salt=j)
            send = np.concatenate([data(me, count, dtype, salt=j) for j in range(n)])
            recv = np.zeros(n * count, dtype)
            comm.Alltoall(send, recv)
            check_equal(recv, np.concatenate([data(r, count, dtype, salt=me) for r in range(n)]),
                        f"Alltoall {tag}")
            # Reduce_scatter_block: n blocks of count
            big = np.concatenate([data(me, count, dtype, salt=j) for j in range(n)])
            rs = np.zeros(count, dtype)
            comm.Reduce_scatter_block(big, rs, op=MPI.SUM)
            want = ref("SUM", [data(r, count, dtype, salt=me) for r in range(n)])
            check_equal(rs, want, f"Reduce_scatter_block {tag}")
            io = big.copy()
            comm.Reduce_scatter_block(MPI.IN_PLACE, io, op=MPI.SUM)
            check_equal(io[:count], want, f"Reduce_scatter_block IN_PLACE {tag}")
            # Scan / Exscan
            sc = np.zeros(count, dtype)
            comm.Scan(mine, sc, op=MPI.SUM)
            check_equal(sc, ref("SUM", everyone[:me + 1]), f"Scan {tag}")
            ex = np.full(count, 3, dtype)
            comm.Exscan(mine, ex, op=MPI.SUM)
            check_equal(ex, ref("SUM", everyone[:me]) if me else np.full(count, 3, dtype),
                        f"Exscan {tag}")
            checks += 8
    return checks


def vector_checks(comm):
    """Gatherv/Scatterv/Allgatherv/Alltoallv with uneven counts (some zero)."""
    n, me = comm.size, comm.rank
    counts = [(r * 3) % 5 for r in range(n)]           # 0, 3, 1, 4, 2, ...
    displs = [sum(counts[:r]) for r in range(n)]
    total = sum(counts)
    everyone = [data(r, counts[r], np.float64) for r in range(n)]
    flat = np.concatenate(everyone)
    root = n - 1
    g = np.full(total, -1.0) if me == root else None
    comm.Gatherv(everyone[me], [g, counts, displs, MPI.DOUBLE] if me == root else None, root=root)
    if me == root:
        check_equal(g, flat, "Gatherv")
    s = np.zeros(counts[me])
    comm.Scatterv([flat, (counts, displs), MPI.DOUBLE] if me == root else None, s, root=root)
    check_equal(s, everyone[me], "Scatterv")
    ag = np.zeros(total)
    comm.Allgatherv(everyone[me], [ag, counts, MPI.DOUBLE])
    check_equal(ag, flat, "Allgatherv")
    # Alltoallv: me sends (me + j) % 3 elements to j
    sc = [(me + j) % 3 for j in range(n)]
    rc = [(r + me) % 3 for r in range(n)]
    send = np.concatenate([data(me, sc[j], np.int64, salt=j) for j in range(n)])
    recv = np.zeros(sum(rc), np.int64)
    comm.Alltoallv([send, sc, MPI.INT64_T], [recv, rc, MPI.INT64_T])
    check_equal(recv, np.concatenate([data(r, rc[r], np.int64, salt=me) for r in range(n)]),
                "Alltoallv")
    # Reduce_scatter with uneven counts, small and direct
    for scale in (1, 40_000):
        cnts = [c * scale for c in counts]
        full = [data(r, sum(cnts), np.float64) for r in range(n)]
        out = np.zeros(cnts[me])
        comm.Reduce_scatter(full[me], out, cnts, op=MPI.SUM)
        lo = sum(cnts[:me])
        check_equal(out, ref("SUM", full)[lo:lo + cnts[me]], f"Reduce_scatter x{scale}")
    return True


def object_checks(comm):
    n, me = comm.size, comm.rank
    root = n // 2
    assert comm.bcast({"x": me} if me == root else None, root=root) == {"x": root}
    g = comm.gather((me, "a" * me), root=root)
    assert g == ([(r, "a" * r) for r in range(n)] if me == root else None)
    assert comm.scatter([r * r for r in range(n)] if me == root else None, root=root) == me * me
    assert comm.allgather(me) == list(range(n))
    assert comm.alltoall([(me, j) for j in range(n)]) == [(r, me) for r in range(n)]
    assert comm.reduce(me + 1, op=MPI.PROD, root=root) == (
        int(np.prod(np.arange(1, n + 1))) if me == root else None)
    assert comm.allreduce(me) == n * (n - 1) // 2
    assert comm.allreduce((me % 2, me), op=MPI.MAXLOC) == ((1, 1) if n > 1 else (0, 0))
    assert comm.allreduce((me % 2, me), op=MPI.MINLOC) == (0, 0)
    assert comm.allreduce([me]) == list(range(n))          # list + list, in rank order
    assert comm.scan(me) == me * (me + 1) // 2
    assert comm.exscan(me) == (None if me == 0 else me * (me - 1) // 2)
    assert comm.allreduce(me == 0, op=MPI.LOR) is True
    # large out-of-band arrays inside objects
    big = comm.bcast(np.arange(300_000) if me == 0 else None, root=0)
    assert big.sum() == 300_000 * 299_999 // 2
    # non-commutative user op keeps rank order: string concatenation
    cat = MPI.Op.Create(lambda a, b, dt: a + b, commute=False)
    assert comm.allreduce(str(me), op=cat) == "".join(str(r) for r in range(n))
    assert comm.reduce(str(me), op=cat, root=root) == ("".join(map(str, range(n)))
                                                       if me == root else None)
    return True


def user_op_checks(comm):
    """Buffer reductions with a non-commutative user op: 2x2 matrix products."""
    n, me = comm.size, comm.rank

    def matmul(invec, inoutvec, datatype):
        a = np.frombuffer(invec, np.int64).reshape(-1, 2, 2)
        b = np.frombuffer(inoutvec, np.int64).reshape(-1, 2, 2)
        b[...] = a @ b

    op = MPI.Op.Create(matmul, commute=False)
    assert not op.Is_commutative()
    k = 5
    eye = np.eye(2, dtype=np.int64)[None]
    mats = [np.array([[[1, r + j], [0, 1]] for j in range(k)], np.int64) + eye * (r % 2)
            for r in range(n)]
    want = mats[0].copy()
    for m in mats[1:]:
        want = want @ m
    out = np.zeros_like(mats[me])
    comm.Allreduce(mats[me], out, op=op)
    check_equal(out, want, "Allreduce noncommutative")
    root = n - 1
    out = np.zeros_like(mats[me])
    comm.Reduce(mats[me], out, op=op, root=root)
    if me == root:
        check_equal(out, want, "Reduce noncommutative")
    sc = np.zeros_like(mats[me])
    comm.Scan(mats[me], sc, op=op)
    w = mats[0].copy()
    for m in mats[1:me + 1]:
        w = w @ m
    check_equal(sc, w, "Scan noncommutative")
    # large: the direct path, big enough to split across every rank
    cnt = (_reduce.DIRECT_MIN // 32 + 1) * 2
    big = [np.tile(m, (cnt // k + 1, 1, 1))[:cnt] for m in mats]
    wantb = np.tile(want, (cnt // k + 1, 1, 1))[:cnt]
    out = np.zeros_like(big[me])
    comm.Allreduce(big[me], out, op=op)
    check_equal(out, wantb, "Allreduce noncommutative (direct)")
    io = big[me].copy()
    comm.Allreduce(MPI.IN_PLACE, io, op=op)
    check_equal(io, wantb, "Allreduce noncommutative IN_PLACE (direct)")
    out = np.zeros_like(big[me]) if me == root else None
    comm.Reduce(big[me], out, op=op, root=root)
    if me == root:
        check_equal(out, wantb, "Reduce noncommutative (direct)")
    return True


def nonblocking_checks(comm):
    n, me = comm.size, comm.rank
    for count in (5, 300_000):
        a = data(me, count, np.float64)
        b = np.zeros(count)
        r1 = comm.Iallreduce(a, b, op=MPI.SUM)
        c = a.copy() if me == 0 else np.zeros(count)
        r2 = comm.Ibcast(c, root=0)
        r3 = comm.Ibarrier()
        # p2p traffic on the same communicator while collectives are in flight
        comm.Sendrecv(np.full(3, me, np.int64), (me + 1) % n, 7,
                      recv := np.zeros(3, np.int64), (me - 1) % n, 7)
        assert (recv == (me - 1) % n).all()
        while not r3.Test():
            pass
        MPI.Request.Waitall([r1, r2])
        check_equal(b, ref("SUM", [data(r, count, np.float64) for r in range(n)]), "Iallreduce")
        check_equal(c, data(0, count, np.float64), "Ibcast")
    comm.Ibarrier().Wait()
    return True


def full_sweep(comm, sizes, dtypes):
    roots = sorted({0, comm.size - 1})
    n = sweep(comm, sizes, dtypes, roots)
    vector_checks(comm)
    object_checks(comm)
    user_op_checks(comm)
    nonblocking_checks(comm)
    return n


# sizes in elements: 0, tiny, odd, and LARGE: over the eager limit (rendezvous) in
# every dtype but uint8, over the direct-reduction threshold in float64/complex128
LARGE = _reduce.DIRECT_MIN // 8 + 4567
SIZES = [0, 1, 37, LARGE]


@pytest.mark.parametrize("n", [1, 3, 4])
def test_every_collective_matches_numpy(n):
    res = mmpi.spawn(full_sweep, n, args=(SIZES, DTYPES))
    assert len(set(res)) == 1 and res[0] > 0


def test_every_collective_8_ranks():
    # 8 ranks on 2 cores: fewer sizes and dtypes, the same code paths
    res = mmpi.spawn(full_sweep, 8, args=([0, 37, LARGE], [np.float64, np.int32]))
    assert res[0] > 0


def test_binomial_paths():
    """Trees (used beyond FLAT_MAX ranks) on 5 ranks: force them with FLAT_MAX = 1."""
    def fn(comm):
        _bcast.FLAT_MAX = 1
        n = sweep(comm, [1, 37], [np.float64, np.int64], [0, 3])
        vector_checks(comm)
        object_checks(comm)
        user_op_checks(comm)
        nonblocking_checks(comm)
        return n
    assert mmpi.spawn(fn, 5)[0] > 0


def test_large_16mib():
    def fn(comm):
        n, me = comm.size, comm.rank
        count = 16 * MiB // 8
        a = data(me, count, np.float64)
        out = np.empty(count)
        comm.Allreduce(a, out, op=MPI.SUM)
        check_equal(out, ref("SUM", [data(r, count, np.float64) for r in range(n)]), "Allreduce")
        buf = a if me == 1 else np.empty(count)
        comm.Bcast(buf, root=1)
        check_equal(buf, data(1, count, np.float64), "Bcast")
        io = a.copy()
        comm.Allreduce(MPI.IN_PLACE, io, op=MPI.MAX)
        check_equal(io, ref("MAX", [data(r, count, np.float64) for r in range(n)]), "Allreduce IP")
        out = np.empty(count) if me == 2 else None
        comm.Reduce(a, out, op=MPI.MIN, root=2)
        if me == 2:
            check_equal(out, ref("MIN", [data(r, count, np.float64) for r in range(n)]), "Reduce")
        return True
    assert mmpi.spawn(fn, 4) == [True] * 4


def test_every_collective_two_copy(monkeypatch):
    """DRILLER_MMPI_SINGLE_COPY=0: no rank reads another's memory; the direct
    reductions and Allgather switch (on every rank alike) to message algorithms
    whose large messages are pushed through the rings (not streamed: the
    push protocol is the one under test)."""
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "0")
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")

    def fn(comm):
        n = full_sweep(comm, SIZES, [np.float64, np.int32])
        return n, comm._cx.direct_ok, comm._t.stats_pushed > 0
    res = mmpi.spawn(fn, 3)
    assert all(r[0] > 0 and r[1] is False and r[2] for r in res), res


def _large_collectives(comm):
    n, me = comm.size, comm.rank
    count = 2 * MiB // 8
    a = data(me, count, np.float64)
    out = np.empty(count)
    comm.Allreduce(a, out, op=MPI.SUM)
    check_equal(out, ref("SUM", [data(r, count, np.float64) for r in range(n)]), "Allreduce")
    out = np.empty(count) if me == 1 else None
    comm.Reduce(a, out, op=MPI.MAX, root=1)
    if me == 1:
        check_equal(out, ref("MAX", [data(r, count, np.float64) for r in range(n)]), "Reduce")
    blk = np.empty(count // n)
    comm.Reduce_scatter_block(a[:count // n * n], blk, op=MPI.SUM)
    full = ref("SUM", [data(r, count, np.float64)[:count // n * n] for r in range(n)])
    check_equal(blk, full[me * (count // n):(me + 1) * (count // n)], "Reduce_scatter_block")
    g = np.empty(count * n)
    comm.Allgather(a, g)
    check_equal(g, np.concatenate([data(r, count, np.float64) for r in range(n)]), "Allgather")
    b = a.copy() if me == 0 else np.empty(count)
    comm.Bcast(b, root=0)
    check_equal(b, data(0, count, np.float64), "Bcast")
    return True


def test_collectives_where_single_copy_is_denied(monkeypatch):
    """Every rank non-dumpable and without CAP_SYS_PTRACE: process_vm_readv
    between ranks fails with EPERM.  The large collectives agree to use
    messages (pushed through the rings) and give the right results; a rank
    warns at most once."""
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")  # pushed, not streamed
    import warnings

    from driller import _linux

    def fn(comm):
        _linux.set_dumpable(False)
        if _linux.has_capability(_linux.CAP_SYS_PTRACE):
            _linux.drop_capability(_linux.CAP_SYS_PTRACE)
        comm.Barrier()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _large_collectives(comm)
            _large_collectives(comm)
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        return comm._cx.direct_ok, comm._t.stats_pushed > 0, msgs

    res = mmpi.spawn(fn, 3)
    assert [r[0] for r in res] == [False] * 3 and all(r[1] for r in res), res
    assert all(len(r[2]) <= 1 for r in res) and sum(len(r[2]) for r in res) >= 1, res
    assert all("Operation not permitted" in m and "SYS_PTRACE" in m for r in res for m in r[2])


def _probe_finds_a_dead_rank(comm):
    """Rank 2 dies (SIGKILL) at its own probe of the single-copy vote; rank 0
    probes rank 2 only once it is marked dead: ESRCH there is a death
    (PeerDiedError naming rank 2), not 'probing rank 2 failed'."""
    from driller import _linux
    real = _linux.process_vm_readv
    me = comm.rank

    def probe(pid, local, remote, n):
        if n == 8:   # (the vote's probe)
            if me == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            if me == 0:
                t = comm._t
                while not t.words[t.world.rank_word(2, _world.R_DEAD)]:
                    time.sleep(0.01)
        return real(pid, local, remote, n)

    _linux.process_vm_readv = probe
    a = np.ones(2 * MiB // 8)
    comm.Allreduce(a, np.empty_like(a), op=MPI.SUM)
    return "reduced?!"


def test_a_rank_dead_at_the_single_copy_probe_is_a_death():
    from test_mmpi_p2p import run_ranks
    res = run_ranks(_probe_finds_a_dead_rank, 3, deadline=60)
    ok, v = res[0]
    assert not ok and v[0] == "PeerDiedError" and v[2] == 2, res[0]


# ----------------------------------------------------------------- communicators

def test_split_dup_create_compare_groups():
    def fn(comm):
        n, me = comm.size, comm.rank
        out = {}
        # Split: evens/odds, reversed order by key; rank 5 gets UNDEFINED
        color = MPI.UNDEFINED if me == 5 else me % 2
        sub = comm.Split(color, key=-me)
        if me == 5:
            assert sub == MPI.COMM_NULL and not sub
            with pytest.raises(MmpiError, match="COMM_NULL"):
                sub.Get_size()
        else:
            members = [r for r in range(n) if r % 2 == me % 2 and r != 5][::-1]
            assert sub.size == len(members) and sub.rank == members.index(me)
            assert sub.Compare(comm) == MPI.UNEQUAL
            # collectives inside the sub-communicator
            x = np.zeros(4, np.int64)
            sub.Allreduce(np.full(4, me, np.int64), x, op=MPI.SUM)
            assert (x == sum(members)).all()
            assert sub.allgather(me) == members
            buf = np.arange(50_000.0) * me if sub.rank == 1 else np.zeros(50_000)
            sub.Bcast(buf, root=1)
            assert buf[1] == members[1]
            # p2p in sub never matches p2p in comm with the same tag
            if sub.size >= 2:
                if sub.rank == 0:
                    comm.send("world", dest=members[1], tag=3)
                    sub.send("sub", dest=1, tag=3)
                elif sub.rank == 1:
                    assert sub.recv(source=0, tag=3) == "sub"
                    assert comm.recv(source=members[0], tag=3) == "world"
        # Dup: congruent; concurrent collectives on comm and dup don't interfere
        dup = comm.Dup()
        assert dup.Compare(comm) == MPI.CONGRUENT and comm.Compare(comm) == MPI.IDENT
        a = np.full(100_000, me, np.int64)
        ra, rb = np.zeros_like(a), np.zeros_like(a)
        r1 = dup.Iallreduce(a, ra, op=MPI.SUM)
        r2 = comm.Iallreduce(a * 2, rb, op=MPI.SUM)
        if me % 2:
            r1, r2 = r2, r1
        r2.Wait()
        r1.Wait()
        assert (ra == n * (n - 1) // 2).all() and (rb == n * (n - 1)).all()
        small_a, small_b = np.zeros(1), np.zeros(1)
        # the two Bcasts are posted in opposite orders on different ranks
        q1 = dup.Ibcast(small_a if me else np.ones(1), root=0)
        q2 = comm.Ibcast(small_b if me else np.full(1, 2.0), root=0)
        for q in ((q2, q1) if me % 2 else (q1, q2)):
            q.Wait()
        assert (me == 0) or (small_a[0] == 1.0 and small_b[0] == 2.0)
        # Groups and Create
        g = comm.Get_group()
        assert g.Get_size() == n and g.rank == me
        ge = g.Excl([0, 1])
        gi = g.Incl([n - 1, 2, 3])
        assert ge.size == n - 2 and gi.Get_rank() == ({n - 1: 0, 2: 1, 3: 2}.get(me, MPI.UNDEFINED))
        assert MPI.Group.Translate_ranks(gi, [0, 1, 2], g) == [n - 1, 2, 3]
        assert gi.Compare(g.Incl([n - 1, 2, 3])) == MPI.IDENT
        assert gi.Compare(g.Incl([2, 3, n - 1])) == MPI.SIMILAR
        c = comm.Create(gi)
        if me in (n - 1, 2, 3):
            assert c.size == 3 and c.rank == gi.rank
            assert c.allreduce(me) == n - 1 + 5
            c.Set_name("trio")
            assert c.Get_name() == "trio"
            c.Free()
        else:
            assert c == MPI.COMM_NULL
        st = comm.Split_type(MPI.COMM_TYPE_SHARED)
        assert st.size == n and st.Compare(comm) == MPI.CONGRUENT
        # Dup of a Split (contexts keep growing: all distinct)
        if sub:
            d2 = sub.Dup()
            assert d2.allreduce(1) == sub.size and d2.Compare(sub) == MPI.CONGRUENT
        out["ok"] = True
        return out
    assert mmpi.spawn(fn, 6) == [{"ok": True}] * 6


# ----------------------------------------------------------------- errors

def test_errors_at_the_call():
    def fn(comm):
        n, me = comm.size, comm.rank
        a = np.zeros(4)
        with pytest.raises(MmpiError, match="invalid root"):
            comm.Bcast(a, root=n)
        with pytest.raises(MmpiError, match="invalid op"):
            comm.Allreduce(a, np.zeros(4), op="sum")
        with pytest.raises(MmpiError, match="same count"):
            comm.Allreduce(a, np.zeros(5))
        with pytest.raises(MmpiError, match="integer datatype"):
            comm.Allreduce(a, np.zeros(4), op=MPI.BXOR)
        with pytest.raises(MmpiError, match="pair"):
            comm.Allreduce(a, np.zeros(4), op=MPI.MAXLOC)
        with pytest.raises(MmpiError, match="invalid root"):
            comm.bcast(1, root=-1)
        with pytest.raises(MmpiError, match="sequence of"):
            comm.alltoall([1])
        # the communicator is still usable
        return comm.allreduce(me)
    assert mmpi.spawn(fn, 3) == [3, 3, 3]


@pytest.mark.parametrize("single_copy", ["1", "0"])
def test_mismatched_sizes_raise_clear_errors(single_copy, monkeypatch):
    # "0": the direct reductions' messages-only replacement reports the same errors
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", single_copy)

    def fn(comm, kind):
        me = comm.rank
        try:
            if kind == "bcast-short":
                comm.Bcast(np.zeros(10 if me == 0 else 8), root=0)
            elif kind == "bcast-long":
                comm.Bcast(np.zeros(10 if me == 0 else 12), root=0)
            elif kind == "allreduce-direct":
                n = 100_000 + (1000 if me == 1 else 0)
                comm.Allreduce(np.zeros(n), np.zeros(n))
            elif kind == "allreduce-small":
                comm.Allreduce(np.zeros(4 + (me == 1)), np.zeros(4 + (me == 1)))
            elif kind == "gather":
                comm.Gather(np.zeros(3 if me != 2 else 4), np.zeros(9) if me == 0 else None)
        except (TruncationError, MmpiError) as e:
            return type(e).__name__, str(e)
        return None

    for kind, who, etype, text in [
            ("bcast-short", {1, 2}, "TruncationError", "does not fit"),
            ("bcast-long", {1, 2}, "MmpiError", "expected 96 bytes"),
            ("allreduce-direct", {0, 1, 2}, "MmpiError", "same count"),
            ("allreduce-small", {0, 1, 2}, "MmpiError", "same count"),
            ("gather", {0}, "TruncationError", "does not fit")]:
        res = mmpi.spawn(fn, 3, args=(kind,))
        for r in range(3):
            if r in who:
                assert res[r] is not None and res[r][0] == etype and text in res[r][1], (kind, res)


@pytest.mark.parametrize("count", [10, 400, 400_000], ids=["eager", "mid", "direct"])
def test_an_allgather_block_of_the_wrong_size_raises_on_every_rank(count):
    # rank 1 contributes half a block: every rank returned normally from Allgather,
    # Allgatherv and Iallgather with rank 1's block half unwritten (as Open MPI
    # does), while driller's Gather and Alltoall raise; with IN_PLACE (rank 1's
    # blocks all half) ranks 0 and 1 raised and rank 2 returned normally
    def fn(comm, count, kind):
        me, n = comm.rank, comm.size
        size = count if me != 1 else count // 2
        sb, rb = np.full(size, me + 1.0), np.full(n * count, -9.0)
        try:
            if kind == "Allgather":
                comm.Allgather(sb, rb)
            elif kind == "Allgatherv":
                comm.Allgatherv(sb, [rb, [count] * n])
            elif kind == "Iallgather":
                comm.Iallgather(sb, rb).Wait()
            else:
                comm.Allgather(MPI.IN_PLACE, np.full(n * size, me + 1.0))
        except MmpiError as e:
            comm.Barrier()   # (usable after)
            return str(e)
        return None

    for kind in ("Allgather", "Allgatherv", "Iallgather", "in place"):
        res = mmpi.spawn(fn, 3, args=(count, kind))
        assert all(r is not None for r in res), (kind, res)
        assert all(re.search(rf"\b{count * 4}\b", r) and "bytes" in r
                   for r in res), (kind, res)   # (rank 1's half block, named)


@pytest.mark.parametrize("count", [10, 1000, 100_000], ids=["eager", "mid", "direct"])
def test_a_part_of_the_wrong_size_raises_on_every_rank_that_would_use_it(count):
    # Reduce_scatter_block with rank 1's count halved: rank 0 (the reduction tree's
    # root) raised, ranks 1 and 2 waited for their blocks until rank 0 exited; a
    # Scatter root whose send buffer holds half-blocks returned with its own block
    # half written while the others raised
    def fn(comm, count, kind):
        me, n = comm.rank, comm.size
        c = count if me != 1 else count // 2
        try:
            if kind == "Reduce_scatter_block":
                comm.Reduce_scatter_block(np.ones(n * c), np.zeros(c))
            else:
                sb = np.ones(n * count // 2) if me == 0 else None
                comm.Scatter(sb, np.zeros(count), root=0)
        except MmpiError as e:
            comm.Barrier()   # (usable after)
            return str(e)
        return None

    for kind in ("Reduce_scatter_block", "Scatter"):
        res = run_ranks(lambda comm: fn(comm, count, kind), 3)
        assert all(r[0] == "ok" and r[1] is not None for r in res), (kind, res)


def run_ranks(fn, n, deadline=60.0):
    """A minimal launcher (as `driller run`): fork, init_world, reap, mark_dead.
    Returns per rank ("ok", value) / ("err", type, text) / ("signal", signo)."""
    fd = _world.create_world(n)
    files = [tempfile.TemporaryFile() for _ in range(n)]
    pids = {}
    try:
        for r in range(n):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 0
                try:
                    res = ("ok", fn(mmpi.init_world(r, n, fd)))
                except BaseException as e:  # noqa: BLE001
                    code, res = 1, ("err", type(e).__name__, str(e), traceback.format_exc())
                try:
                    files[r].write(pickle.dumps(res))
                    files[r].flush()
                finally:
                    os._exit(code)
            pids[pid] = r
        out = [None] * n
        end = time.monotonic() + deadline
        while pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() > end:
                    for p in pids:
                        os.kill(p, signal.SIGKILL)
                    for p in list(pids):
                        os.waitpid(p, 0)
                    raise AssertionError(f"ranks hung past {deadline} s")
                time.sleep(0.005)
                continue
            r = pids.pop(pid)
            _world.mark_dead(fd, r, status)
            if os.WIFSIGNALED(status):
                out[r] = ("signal", os.WTERMSIG(status))
            else:
                files[r].seek(0)
                out[r] = pickle.loads(files[r].read())
        return out
    finally:
        os.close(fd)
        for f in files:
            f.close()


@pytest.mark.parametrize("coll", ["Allreduce-small", "Allreduce-direct", "Bcast-large",
                                  "Ibarrier"])
def test_rank_killed_during_collective(coll):
    def fn(comm):
        me = comm.rank
        count = 8 if coll == "Allreduce-small" else 400_000
        a = np.ones(count)
        if coll == "Allreduce-direct":
            comm.Allreduce(a, np.empty(count))      # one that works first
        if me == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if coll.startswith("Allreduce"):
            comm.Allreduce(a, np.empty(count))
        elif coll == "Bcast-large":
            comm.Bcast(a, root=2 if me != 3 else 2)
        else:
            comm.Ibarrier().Wait()
        return "completed"

    res = run_ranks(fn, 4)
    assert res[2] == ("signal", signal.SIGKILL)
    for r in (0, 1, 3):
        assert res[r][0] == "err" and res[r][1] == PeerDiedError.__name__, res[r]
    # the first to notice names the killed rank ("rank 2 was killed by signal SIGKILL", or
    # "rank 2 (pid ...) is gone" if a timeout noticed it before the launcher); a
    # later one may name a rank that already left with its PeerDiedError
    texts = [res[r][2] for r in (0, 1, 3)]
    assert any("rank 2" in x for x in texts), texts
    # a collective's own messages are not named by their internal tags (they said
    # "cannot complete its receive from rank 2 (tag 536870912)")
    assert not [x for x in texts if "(tag " in x], texts


def test_spawn_reports_the_killed_rank():
    def fn(comm):
        if comm.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return comm.allreduce(comm.rank)
    with pytest.raises(RankFailedError) as ei:
        mmpi.spawn(fn, 3)
    assert ei.value.rank == 1 and ei.value.signal == "SIGKILL"


def test_mpi_facade_names():
    for name in ("SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR",
                 "MAXLOC", "MINLOC", "Op", "Group", "COMM_NULL", "COMM_TYPE_SHARED",
                 "UNDEFINED", "IN_PLACE", "IDENT", "CONGRUENT", "SIMILAR", "UNEQUAL"):
        assert hasattr(MPI, name), name
        assert name in MPI.__all__
    assert MPI.IN_PLACE is mmpi.IN_PLACE
    assert MPI.SUM(2, 3) == 5 and MPI.MAXLOC((1, 5), (1, 3)) == (1, 3)
    assert MPI.Op.Create(lambda a, b: a * 10 + b)(1, 2) == 12
    with pytest.raises(MmpiError):
        MPI.SUM.Free()


def test_barrier_sleepers_and_sub_communicators():
    """The world barrier (shared-memory counts): late ranks make the others sleep
    in the futex, and nobody leaves early; sub-communicators keep theirs."""
    def fn(comm):
        n, me = comm.size, comm.rank
        log = []
        for i in range(6):
            if me == i % n:
                time.sleep(0.25 if i < 2 else 0.002)   # the others sleep, then spin
            comm.Barrier()
            log.append(comm.allgather(i))   # everyone is at the same step
        sub = comm.Split(me % 2)
        for _ in range(50):
            sub.Barrier()
            comm.Barrier()
            comm.Ibarrier().Wait()
        # p2p traffic queued across a barrier (the ring must be drained meanwhile)
        if me == 0:
            reqs = [comm.Isend(np.full(20_000, k, np.int64), 1, k) for k in range(40)]
            comm.Barrier()
            MPI.Request.Waitall(reqs)
        elif me == 1:
            comm.Barrier()
            got = [np.empty(20_000, np.int64) for _ in range(40)]
            for k in range(40):
                comm.Recv(got[k], 0, k)
            assert all((g == k).all() for k, g in enumerate(got))
        else:
            comm.Barrier()
        return log
    res = mmpi.spawn(fn, 4)
    assert all(r == [[i] * 4 for i in range(6)] for r in res)


def test_rank_killed_in_barrier():
    def fn(comm):
        comm.Barrier()
        if comm.rank == 1:
            time.sleep(0.3)      # the others are asleep in the barrier by now
            os.kill(os.getpid(), signal.SIGKILL)
        comm.Barrier()
        return "completed"
    res = run_ranks(fn, 3)
    assert res[1] == ("signal", signal.SIGKILL)
    for r in (0, 2):
        assert res[r][:2] == ("err", "PeerDiedError"), res[r]
    # "rank 1 was killed by signal SIGKILL" once the launcher recorded it, or "rank 1 (pid ...)
    # is gone" when a sleeper's timeout noticed it first; the second survivor may
    # name the first, which already left with its PeerDiedError
    assert any("rank 1" in res[r][2] for r in (0, 2)), res


def test_small_allreduce_slots_reused_safely():
    """Back-to-back small world Allreduces (shared-memory slots, two halves) with
    uneven delays, mixed with barriers and a sub-communicator: always exact."""
    def fn(comm):
        n, me = comm.size, comm.rank
        sub = comm.Split(me % 2)
        for i in range(300):
            if (i + me) % 37 == 0:
                time.sleep(0.001)
            out = np.empty(3, np.int64)
            comm.Allreduce(np.full(3, i * 10 + me, np.int64), out, op=MPI.SUM)
            assert (out == n * i * 10 + n * (n - 1) // 2).all(), (i, out)
            if i % 50 == 0:
                comm.Barrier()
                x = np.empty(1)
                sub.Allreduce(np.ones(1), x)
                assert x[0] == sub.size
            m = np.empty(2, np.float32)
            comm.Allreduce(np.array([me, -me], np.float32), m, op=MPI.MAX)
            assert m.tolist() == [n - 1, 0]
        return True
    assert mmpi.spawn(fn, 5) == [True] * 5


def test_nonblocking_collective_progresses_inside_other_calls():
    """Rank 0 blocks in a Recv that rank 1 sends only after its Ibarrier/Iallreduce
    completed: rank 0's requests must advance inside that Recv (MPI progress)."""
    def fn(comm):
        me = comm.rank
        a = np.full(200_000, me + 1.0)          # large: the direct Iallreduce path
        out = np.empty_like(a)
        small = np.empty(1)
        r1 = comm.Iallreduce(a, out)
        r2 = comm.Ibarrier()
        r3 = comm.Iallreduce(np.ones(1), small)
        if me == 0:
            got = comm.recv(source=1, tag=5)
        else:
            MPI.Request.Waitall([r3, r2, r1])
            if me == 1:
                comm.send("after", dest=0, tag=5)
            got = None
        MPI.Request.Waitall([r1, r2, r3])
        assert (out == sum(range(1, comm.size + 1))).all() and small[0] == comm.size
        return got
    assert mmpi.spawn(fn, 3) == ["after", None, None]
