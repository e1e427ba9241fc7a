"""Windows of nonblocking sends and receives (issue 12, "Bandwidth windows"):
Isends that complete inside the call, Irecvs posted straight into the engine
and matched in one pass over the ring (``Transport._serve``), ``Waitall``
releasing the window in bulk.  Real ranks; every figure checked against what
MPI says: the same bytes in the same order, the same statuses, the same
errors, and no hang when the ring is full or the peer dies."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _transport

from test_mmpi_p2p import run_ranks, values


def _fill(rnd, j, n):
    return np.full(n, (rnd * 131 + j * 7) % 251, np.uint8)


# ------------------------------------------------------------------ the ring's room

def _big_window(comm, window, size, posted_first):
    """A window much larger than the ring's room: the Isends that do not fit are
    queued and flushed while Waitall waits; the receiver sees every message in
    order, with its own status."""
    out = []
    for rnd in range(3):
        if comm.rank == 0:
            reqs = [comm.Isend([_fill(rnd, j, size), size, MPI.BYTE], 1, 7 + j % 2)
                    for j in range(window)]
            assert len({id(r) for r in reqs}) == window
            MPI.Request.Waitall(reqs)
            assert all(r == MPI.REQUEST_NULL for r in reqs)
            comm.Recv(bytearray(1), 1, 99)
        else:
            bufs = [bytearray(size) for _ in range(window)]
            if not posted_first:
                comm.Probe(0, 7)   # the first message is there (and the ring full)
            reqs = [comm.Irecv([bufs[j], size, MPI.BYTE], 0, 7 + j % 2) for j in range(window)]
            if rnd == 2:
                sts = [MPI.Status() for _ in range(window)]
                MPI.Request.Waitall(reqs, sts)
                out.append([(s.Get_source(), s.Get_tag(), s.Get_count()) for s in sts])
            else:
                MPI.Request.Waitall(reqs)
            assert all(not r for r in reqs)
            out.append([bytes(b) == _fill(rnd, j, size).tobytes() for j, b in enumerate(bufs)])
            comm.Send(bytearray(1), 0, 99)
    return out


@pytest.mark.parametrize("posted_first", [True, False])
def test_window_larger_than_the_rings_room(monkeypatch, posted_first):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", "16384")   # room for ~60 records of 200 B
    window, size = 400, 200
    out = values(run_ranks(_big_window, 2, window, size, posted_first))[1]
    assert out[0] == [True] * window and out[1] == [True] * window
    assert out[2] == [(0, 7 + j % 2, size) for j in range(window)]
    assert out[3] == [True] * window


# ------------------------------------------------------------------ mixed sizes

SIZES = [0, 1, 8, 63, 64, 1000, 70_000, 8, 3 << 20, 5, 0, 300_000, 16]


def _mixed(comm, order):
    """One window of many sizes (empty, tiny, eager, streamed or rendezvous), in
    one order of posting; the receives are of the exact size, some larger."""
    n = len(SIZES)
    if comm.rank == 0:
        srcs = [_fill(1, j, s) for j, s in enumerate(SIZES)]
        reqs = [comm.Isend([srcs[j], s, MPI.BYTE], 1, 3) for j, s in enumerate(SIZES)]
        MPI.Request.Waitall(reqs)
        comm.Recv(bytearray(1), 1, 99)
        return None
    bufs = [bytearray(s + (j % 3) * 5) for j, s in enumerate(SIZES)]
    sts = [MPI.Status() for _ in range(n)]
    if order == "posted":
        reqs = [comm.Irecv([bufs[j], len(bufs[j]), MPI.BYTE], 0, 3) for j in range(n)]
    else:   # half posted before the data came, half after it is in the ring
        reqs = [comm.Irecv([bufs[j], len(bufs[j]), MPI.BYTE], 0, 3) for j in range(n // 2)]
        comm.Probe(0, 3)
        time.sleep(0.05)
        reqs += [comm.Irecv([bufs[j], len(bufs[j]), MPI.BYTE], 0, 3) for j in range(n // 2, n)]
    MPI.Request.Waitall(reqs, sts)
    comm.Send(bytearray(1), 0, 99)
    return ([bytes(b[:s]) == _fill(1, j, s).tobytes() for j, (b, s) in enumerate(zip(bufs, SIZES))],
            [(st.Get_source(), st.Get_tag(), st.Get_count()) for st in sts])


@pytest.mark.parametrize("order", ["posted", "half"])
def test_mixed_sizes_in_one_window(order):
    ok, sts = values(run_ranks(_mixed, 2, order))[1]
    assert ok == [True] * len(SIZES)
    assert sts == [(0, 3, s) for s in SIZES]


# ------------------------------------------------------------------ Waitany, Testsome

def _any_some(comm, window):
    """Waitany over a window of finished sends, Testsome over posted receives (some
    served from the ring at once, some matched later in one pass), statuses
    reporting source, tag and count; every request ends as REQUEST_NULL."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 98)   # the receiver posted its first half
        reqs = [comm.Isend([_fill(2, j, 8), 8 - j % 4, MPI.BYTE], 1, 10 + j % 5)
                for j in range(window)]
        seen = []
        while True:
            i = MPI.Request.Waitany(reqs)
            if i == MPI.UNDEFINED:
                break
            seen.append(i)
            assert reqs[i] == MPI.REQUEST_NULL
        idx, flag = MPI.Request.Testany(reqs)
        comm.Recv(bytearray(1), 1, 99)
        return sorted(seen) == list(range(window)), flag, idx
    bufs = [bytearray(8) for _ in range(window)]
    half = window // 2
    reqs = [comm.Irecv(bufs[j], 0, 10 + j % 5) for j in range(half)]
    comm.Send(bytearray(1), 0, 98)
    comm.Probe(0, 10 + (window - 1) % 5)   # everything has arrived
    reqs += [comm.Irecv(bufs[j], 0, 10 + j % 5) for j in range(half, window)]
    got = {}
    while True:
        sts = [MPI.Status() for _ in range(window)]
        idx = MPI.Request.Testsome(reqs, sts)
        if idx is None:
            break
        for k, i in enumerate(idx):
            assert i not in got and reqs[i] == MPI.REQUEST_NULL
            got[i] = (sts[k].Get_source(), sts[k].Get_tag(), sts[k].Get_count(),
                      bytes(bufs[i][:8 - i % 4]) == _fill(2, i, 8 - i % 4).tobytes())
    comm.Send(bytearray(1), 0, 99)
    return [got[i] for i in range(window)]


def test_waitany_and_testsome_over_a_window():
    (all_seen, flag, idx), got = values(run_ranks(_any_some, 2, 40))
    assert all_seen and flag and idx == MPI.UNDEFINED
    assert got == [(0, 10 + j % 5, 8 - j % 4, True) for j in range(40)]


def _testall_getstatus(comm):
    """Testall, Get_status and Wait with a status over requests the fast paths
    finished and receives posted first."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 98)
        reqs = [comm.Isend(bytes([j]) * 3, 1, 4) for j in range(6)]
        st = MPI.Status()
        assert reqs[0].Get_status(st) and reqs[0] != MPI.REQUEST_NULL
        flag = MPI.Request.Testall(reqs)
        comm.Recv(bytearray(1), 1, 99)
        return flag, all(r == MPI.REQUEST_NULL for r in reqs)
    bufs = [bytearray(3) for _ in range(6)]
    reqs = [comm.Irecv(bufs[j], 0, 4) for j in range(6)]
    comm.Send(bytearray(1), 0, 98)
    st = MPI.Status()
    reqs[5].Wait(st)     # the last one: the whole window is matched on the way
    first = (st.Get_source(), st.Get_tag(), st.Get_count(), reqs[5] == MPI.REQUEST_NULL)
    done = [r.Get_status() for r in reqs[:5]]
    while not MPI.Request.Testall(reqs):
        pass
    comm.Send(bytearray(1), 0, 99)
    return first, done, [bytes(b) for b in bufs]


def test_testall_get_status_and_wait_with_status():
    (flag, null), (first, done, bufs) = values(run_ranks(_testall_getstatus, 2))
    assert flag and null
    assert first == (0, 4, 3, True) and done == [True] * 5
    assert bufs == [bytes([j]) * 3 for j in range(6)]


# ------------------------------------------------------------------ cancel

def _cancel(comm):
    """Cancel of a send that Isend finished (nothing to cancel: not cancelled),
    of a posted receive (cancelled; the message goes to the next receive), of a
    receive the ring served at once (done: not cancelled)."""
    if comm.rank == 0:
        r = comm.Isend(b"abcd", 1, 1)
        r.Cancel()
        st = MPI.Status()
        r.Wait(st)
        comm.Recv(bytearray(1), 1, 98)
        comm.Send(b"wxyz", 1, 2)
        comm.Send(b"qq", 1, 3)
        comm.Recv(bytearray(1), 1, 99)
        return st.Is_cancelled(), r == MPI.REQUEST_NULL
    b1, b2, b3, b4 = bytearray(4), bytearray(4), bytearray(4), bytearray(2)
    r1 = comm.Irecv(b1, 0, 2)      # posted, then cancelled
    r2 = comm.Irecv(b2, 0, 2)      # posted: gets the message
    r1.Cancel()
    s1 = MPI.Status()
    r1.Wait(s1)
    comm.Send(bytearray(1), 0, 98)
    s2 = MPI.Status()
    r2.Wait(s2)
    comm.Probe(0, 3)
    r4 = comm.Irecv(b4, 0, 3)      # served from the ring at once
    r4.Cancel()
    s4 = MPI.Status()
    r4.Wait(s4)
    r3 = comm.Irecv(b3, 0, 2)      # nothing will come: cancelled
    r3.Cancel()
    s3 = MPI.Status()
    r3.Wait(s3)
    comm.Send(bytearray(1), 0, 99)
    return ([s.Is_cancelled() for s in (s1, s2, s3, s4)], bytes(b1), bytes(b2), bytes(b4),
            (s2.Get_source(), s2.Get_tag(), s2.Get_count()))


def test_cancel_of_window_requests():
    (cancelled, null), (flags, b1, b2, b4, st2) = values(run_ranks(_cancel, 2))
    assert cancelled is False and null
    assert flags == [True, False, True, False]
    assert b1 == bytes(4) and b2 == b"wxyz" and b4 == b"qq"
    assert st2 == (0, 2, 4)


# ------------------------------------------------------------------ a peer dies

def _die_with_sends_queued(comm):
    if comm.rank == 1:
        comm.Recv(bytearray(1), 0, 1)
        time.sleep(0.2)   # the sender fills the ring and queues the rest
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Send(bytearray(1), 1, 1)
    reqs = [comm.Isend(bytes(500), 1, 5) for _ in range(200)]
    queued = comm._t.npending
    MPI.Request.Waitall(reqs)
    return "completed?!", queued


def test_peer_dies_while_sends_are_queued(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", "16384")
    res = run_ranks(_die_with_sends_queued, 2)
    assert res[1][0] is False and res[1][1][0] == "Killed"
    ok, v = res[0]
    assert not ok and v[0] == "PeerDiedError" and v[2] == 1, v


def _posted_then_dies(comm):
    if comm.rank == 1:
        reqs = [comm.Irecv(bytearray(8), 0, 5) for _ in range(64)]
        comm.Send(bytearray(1), 0, 1)
        MPI.Request.Waitall(reqs)
        return "completed?!"
    comm.Recv(bytearray(1), 1, 1)
    for _ in range(10):
        comm.Isend(bytes(8), 1, 5).Wait()
    os.kill(os.getpid(), signal.SIGKILL)


def test_sender_dies_while_receives_are_posted():
    res = run_ranks(_posted_then_dies, 2)
    assert res[0][0] is False and res[0][1][0] == "Killed"
    ok, v = res[1]
    assert not ok and v[0] == "PeerDiedError" and v[2] == 0, v


# ------------------------------------------------------------------ one process: the pass

def test_posted_receives_take_a_run_of_records_in_one_pass():
    """Through the transports of one world in this process: receives posted
    first meet the ring's records in one pass (no message left unexpected, no
    general record handling), and a record for no posted receive stops the run
    and goes the general way, in order."""
    from driller.mmpi import _comm as C
    from driller.mmpi import _world as W
    fd = W.create_world(2)
    try:
        t0, t1 = _transport.Transport(W.World(fd), 0), _transport.Transport(W.World(fd), 1)
        c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
        bufs = [bytearray(4) for _ in range(10)]
        reqs = [c1.Irecv(bufs[j], 0, 1 if j < 8 else 2) for j in range(10)]
        assert len(t1.engine.posted) == 10
        for j in range(8):
            assert c0.Isend(bytes([j]) * 4, 1, 1).Test()
        c0.Isend(b"late", 1, 3)           # for no posted receive
        c0.Isend(bytes([8]) * 4, 1, 2)
        c0.Isend(bytes([9]) * 4, 1, 2)
        calls = []
        record = t1._record
        t1._record = lambda *a: calls.append(a[0]) or record(*a)
        MPI.Request.Waitall(reqs)
        assert bufs == [bytearray([j]) * 4 for j in range(10)]
        # the general way: only the record for no posted receive and the one after it
        # (which _record's own _to_posted gives to the receive _serve stopped at)
        assert len(calls) == 2
        assert [m.tag for m in t1.engine.unexpected] == [3]
        assert not t1.engine.posted and all(r == MPI.REQUEST_NULL for r in reqs)
        b = bytearray(4)
        st = MPI.Status()
        c1.Recv(b, 0, 3, st)
        assert b == b"late" and (st.Get_source(), st.Get_tag(), st.Get_count()) == (0, 3, 4)
    finally:
        os.close(fd)
