"""A sleep nested in another leaves this rank's sleeping flag as it found it.

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
