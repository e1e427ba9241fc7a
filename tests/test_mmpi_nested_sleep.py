"""A sleep nested in another leaves this rank's sleeping flag as it found it,
and the flags it raises for its peers (a sender's "waiting for room", the
shared-memory barrier's) too.

A rank about to sleep raises its sleeping word so that producers wake it
(they call ``futex_wake`` only when the word is up).  A signal handler can run
an MPI call between raising the word and the futex call (a call is a point
where Python runs handlers); if that nested call sleeps too and lowers the word
when it returns, the outer sleep goes on with the word down: the message it
waits for wakes nobody and the rank sleeps its whole bound (60 s here, so the
lost wake-up hits the harness deadline; the sender stays alive until rank 0
answers, since a rank's death wakes every sleeper).  Real forked ranks; the
nested call is made where a handler would run it, at the outer sleep's futex
call: a Barrier (a nested receive would not show it: the head it moves makes
the outer futex call return at once).
"""

from __future__ import annotations

import mmap
import sys
import time

from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks


def _nested_barrier_in_recv_sleep(comm):
    if comm.rank == 0:
        t = comm._t
        t.sleep_seconds = 60.0   # (a lost wake-up sleeps this long)
        waitv = T._linux.futex_waitv
        ran = [0]

        def waitv_after_a_nested_call(waits, timeout):
            if not ran[0] and sys._getframe(1).f_code.co_name == "_sleep":
                ran[0] = 1
                comm.Barrier()   # (sleeps in the shared-memory barrier: rank 1 is late)
            return waitv(waits, timeout)

        T._linux.futex_waitv = waitv_after_a_nested_call
        try:
            buf = bytearray(8)
            comm.Recv(buf, source=1, tag=1)
        finally:
            T._linux.futex_waitv = waitv
        comm.Send(b"", dest=1, tag=3)
        return ran[0], bytes(buf)
    time.sleep(0.3)   # (rank 0 asleep in its Recv, then in the nested call)
    comm.Barrier()
    time.sleep(0.3)   # (rank 0 asleep again in its Recv's futex call)
    comm.Send(b"the end.", dest=0, tag=1)
    comm.Recv(bytearray(1), source=0, tag=3)   # (alive: its exit would wake rank 0)
    return None


def test_nested_sleep_keeps_the_outer_sleep_woken():
    res = run_ranks(_nested_barrier_in_recv_sleep, 2)
    for ok, v in res:
        assert ok, v
    assert res[0][1] == (1, b"the end."), res   # the nested call ran, the Recv got its message


def _after(shared, then: float = 0.2) -> None:
    """Rank 1: wait until rank 0's nested sleep is over (its byte in ``shared``, an
    anonymous shared mapping both forked ranks inherit), then ``then`` seconds
    more, for rank 0 to be in its outer futex call."""
    end = time.monotonic() + 20
    while not shared[0]:
        assert time.monotonic() < end, "rank 0 never reached its outer sleep"
        time.sleep(0.005)
    time.sleep(then)


def _rank0(comm, shared, outer, at, nested):
    """Rank 0: run ``outer()`` with ``nested(frame)`` called once at the outer
    sleep's futex call (the first one whose caller's frame ``at`` accepts), its
    result kept; then tell rank 1 (``shared``) and, once ``outer`` returned,
    release it.  Returns [1, what nested returned] (or [0]: never called)."""
    t = comm._t
    t.sleep_seconds = 60.0   # (a lost wake-up sleeps this long)
    waitv = T._linux.futex_waitv
    ran = [0]

    def waitv_after_a_nested_sleep(waits, timeout):
        f = sys._getframe(1)
        if not ran[0] and at(f):
            ran[0] = 1
            ran.append(nested(f))
            shared[0] = 1
        return waitv(waits, timeout)

    T._linux.futex_waitv = waitv_after_a_nested_sleep
    try:
        outer()
    finally:
        T._linux.futex_waitv = waitv
    comm.Send(b"", dest=1, tag=3)
    return ran


def _rank1(comm, shared, body):
    """Rank 1: ``body()`` once rank 0's nested sleep is over, then stay alive until
    rank 0 is done (a rank's exit wakes every sleeper)."""
    _after(shared)
    res = body()
    comm.Recv(bytearray(1), source=0, tag=3)
    return res


def _nested_sleep_while_waiting_for_room(comm, shared):
    # rank 0's Isends fill the (64 KiB) ring while rank 1 waits, so its Waitall
    # sleeps with sends queued, its "producer waiting" flag raised for rank 1 to
    # wake it when it frees room.  A nested blocking call's sleep (what a handler's
    # MPI call reaches; here the transport's own, timing out: rank 1 drains nothing
    # until it is over) ran at the outer futex call and lowered that flag: rank 1
    # then drained the ring without waking rank 0, which slept its whole bound
    t = comm._t
    if comm.rank == 0:
        def outer():
            reqs = [comm.Isend(bytes([i % 251]) * 1024, dest=1, tag=1) for i in range(300)]
            type(reqs[0]).Waitall(reqs)
        return _rank0(comm, shared, outer,
                      lambda f: t.npending and f.f_code.co_name == "_sleep",
                      lambda f: t._sleep(0.05))   # (False: timed out, nothing moved)

    def drain():
        buf, bad = bytearray(1024), 0
        for i in range(300):
            comm.Recv(buf, source=0, tag=1)
            bad += buf != bytes([i % 251]) * 1024
        return bad
    return _rank1(comm, shared, drain)


def test_nested_sleep_keeps_the_producers_waiting_flag(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", "65536")
    res = run_ranks(_nested_sleep_while_waiting_for_room, 2, mmap.mmap(-1, 8), deadline=30)
    for ok, v in res:
        assert ok, v
    assert res[0][1] == [1, False] and res[1][1] == 0, res


def _nested_barrier_sleep(comm, shared):
    # the shared-memory barrier's sleep raises this rank's barrier flag (arriving
    # ranks wake it only when it is up); a barrier's sleep nested in it (run at
    # the outer futex call, timing out: rank 1 arrives only after it) put the flag
    # down to 0 instead of back: rank 1's arrival then woke nobody
    from driller.mmpi._coll import _shm

    t = comm._t
    if comm.rank == 0:
        def nested(f):
            t.sleep_seconds = 0.05
            try:
                return _shm.shm_sleep(f.f_locals["cx"], f.f_locals["e"], f.f_locals["ep"],
                                      f.f_locals["j"])
            finally:
                t.sleep_seconds = 60.0
        return _rank0(comm, shared, comm.Barrier,
                      lambda f: f.f_code.co_name == "shm_sleep", nested)
    return _rank1(comm, shared, comm.Barrier)


def test_nested_barrier_sleep_keeps_the_barrier_flag():
    res = run_ranks(_nested_barrier_sleep, 2, mmap.mmap(-1, 8), deadline=30)
    for ok, v in res:
        assert ok, v
    assert res[0][1] == [1, False], res
