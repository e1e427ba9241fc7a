"""More ranks than cores: waiting never loses a wake-up, nor a dead peer.

Eight forked ranks restricted to two CPUs (the transport then counts itself
oversubscribed: it yields at once instead of polling).  With
``DRILLER_MMPI_SPIN_US=0`` nearly every wait ends in a futex sleep, and with
``DRILLER_MMPI_SLEEP_MS=60000`` a sleep is bounded by a minute instead of
50 ms: a wake-up that a producer forgets (a record, a FIN, an ACK, ring space,
a barrier arrival, a death) leaves a rank asleep, and the harness's deadline
fails the test.  No timed assertions: only hangs and wrong data fail.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from driller import MPI
from driller.errors import PeerDiedError
from test_mmpi_p2p import run_ranks, values

N = 8


@pytest.fixture
def two_cpus():
    """Forked ranks inherit an affinity of two CPUs (the machine may have more)."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(old)[:2])
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


@pytest.fixture(params=["sleep", "yield"])
def policy(request, monkeypatch, two_cpus):
    """"sleep": every wait sleeps after one or two yields, a lost wake-up hangs for
    a minute; "yield": the default spin budget (waits are served by yielding)."""
    if request.param == "sleep":
        monkeypatch.setenv("DRILLER_MMPI_SPIN_US", "0")
    monkeypatch.setenv("DRILLER_MMPI_SLEEP_MS", "60000")
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(64 << 10))  # full rings: senders wait
    return request.param


def _stress(comm, rounds):
    t = comm._t
    me, n = comm.rank, comm.size
    assert t.oversubscribed and t.pure_polls == 0 and t.sleep_seconds == 60.0
    peer = me ^ 1
    right, left = (me + 1) % n, (me - 1) % n
    s, r = np.zeros(8, np.int64), np.zeros(8, np.int64)
    big_s = np.arange(200_000, dtype=np.int64) + me   # 1.6 MB: rendezvous (RTS, FIN)
    big_r = np.empty_like(big_s)
    sums = []
    for k in range(rounds):
        # ping-pong with a specific source, [buf, count, type] specs
        for i in range(50):
            if me < peer:
                s[0] = k * 1000 + i
                comm.Send([s, 1, MPI.INT64_T], peer, 1)
                comm.Recv([r, 1, MPI.INT64_T], peer, 2)
                assert r[0] == k * 1000 + i + 1
            else:
                comm.Recv([r, 1, MPI.INT64_T], peer, 1)
                s[0] = r[0] + 1
                comm.Send([s, 1, MPI.INT64_T], peer, 2)
        # a ring of Sendrecv, then ANY_SOURCE receives at rank 0 answered one by one
        s[0] = me + k
        comm.Sendrecv(s, right, 3, r, left, 3)
        assert r[0] == left + k
        if me == 0:
            st = MPI.Status()
            seen = set()
            for _ in range(n - 1):
                comm.Recv(r, MPI.ANY_SOURCE, 4, st)
                seen.add(st.Get_source())
                comm.Ssend(r, st.Get_source(), 5)   # synchronous: the ACK wakes us
            assert seen == set(range(1, n))
        else:
            s[0] = me
            comm.Send(s, 0, 4)
            comm.Recv(r, 0, 5)
            assert r[0] == me
        # a burst larger than the 64 KiB ring: the sender sleeps for ring space
        if me < peer:
            reqs = [comm.Isend(np.full(1024, j, np.int64), peer, 6) for j in range(40)]
            MPI.Request.Waitall(reqs)
        else:
            got = np.empty(1024, np.int64)
            for j in range(40):
                comm.Recv(got, peer, 6)
                assert got[0] == j and got[-1] == j
        # a rendezvous exchange (the sender waits for FIN), then collectives
        comm.Sendrecv(big_s, peer, 7, big_r, peer, 7)
        assert big_r[0] == peer and big_r[-1] == 199_999 + peer
        comm.Barrier()
        sums.append(comm.allreduce(me + k))
        buf = np.full(4, me, np.int64)
        comm.Allreduce(MPI.IN_PLACE, buf)
        assert (buf == n * (n - 1) // 2).all()
        assert comm.bcast(("round", k) if me == k % n else None, root=k % n) == ("round", k)
    return sums, t.stats_sleeps


def test_many_ranks_on_two_cores_lose_no_wakeup(policy):
    rounds = 6
    out = values(run_ranks(_stress, N, rounds, deadline=100.0))
    expect = [N * (N - 1) // 2 + N * k for k in range(rounds)]
    assert all(sums == expect for sums, _ in out)
    sleeps = sum(sl for _, sl in out)
    if policy == "sleep":
        assert sleeps > 0   # the futex path was exercised (dozens of sleeps per run)


def _die_while_others_wait(comm):
    """Rank 3 exits abnormally once every rank is blocked (a Recv from it, an
    ANY_SOURCE Recv, a Barrier, a Send into a full ring): each must raise
    PeerDiedError, woken by the launcher's mark, not by a sleep's timeout."""
    me = comm.rank
    comm.Barrier()
    if me == 3:
        import time
        time.sleep(0.3)   # let the others fall asleep (not a timing assertion)
        os._exit(7)
    try:
        if me == 0:
            comm.Recv(np.zeros(1), 3, 0)
        elif me == 1:
            comm.Recv(np.zeros(1), MPI.ANY_SOURCE, 0)
        elif me == 2:
            for _ in range(10_000):   # 64 KiB ring: it fills, then we wait for room
                comm.Send(np.zeros(1024), 3, 0)
        else:
            comm.Barrier()
    except PeerDiedError as e:
        return e.rank
    return None


def test_a_dead_peer_wakes_every_sleeper(two_cpus, monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_SPIN_US", "0")
    monkeypatch.setenv("DRILLER_MMPI_SLEEP_MS", "60000")
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(64 << 10))
    res = run_ranks(_die_while_others_wait, N, deadline=40.0)
    assert not res[3][0]
    for r, (ok, v) in enumerate(res):
        if r != 3:
            assert ok, f"rank {r}: {v}"
            assert v == 3, f"rank {r} returned {v!r} instead of PeerDiedError about rank 3"


def _float_ranks(comm):
    """Ranks and tags as floats or numpy numbers (osu_multi_lat's ``nprocs / 2``)
    convert with int() on the blocking fast paths too; out of range stays an error,
    PROC_NULL as a float is PROC_NULL."""
    me, n = comm.rank, comm.size
    half = n / 2
    b = np.zeros(2, np.int64)
    st = MPI.Status()
    for i in range(20):
        if me < half:
            comm.Send([np.full(2, i, np.int64), 2, MPI.INT64_T], me + half, np.int32(4))
            comm.Recv(b, np.float64(me + half), 5.0, st)
        else:
            comm.Recv([b, MPI.INT64_T], me - half, float(MPI.ANY_TAG), st)
            comm.Send(b, np.int64(me - half), 5)
    comm.Send(b, float(MPI.PROC_NULL), 1)
    comm.Recv(b, float(MPI.PROC_NULL), 1.0)
    bad = None
    try:
        comm.Send(b, float(n), 0)
    except MPI.Exception as e:
        bad = str(e)
    return int(b[0]), st.Get_source(), st.Get_tag(), st.Get_count(MPI.INT64_T), bad


def test_float_and_numpy_ranks_on_the_blocking_paths(two_cpus):
    out = values(run_ranks(_float_ranks, 4))
    for r, (last, src, tag, count, bad) in enumerate(out):
        assert last == 19 and src == (r + 2) % 4 and count == 2, out
        assert tag == (5 if r < 2 else 4)
        assert bad is not None and "invalid destination rank 4" in bad
