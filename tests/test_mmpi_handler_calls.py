"""MPI called from a signal handler in the middle of the progress engine's steps.

mpi4py's calls are C calls: a Python signal handler never runs inside one, so a
handler that calls ``Iprobe`` (a heartbeat on a timer) sees MPI between calls.
driller's engine is Python, and a handler can run in the middle of its steps:
a handler's ``Iprobe`` there drained the ring under a drain in progress (whose
position was then stale: records taken twice, or ``IndexError`` in ``_drain``),
and a handler's blocking receive waited for ever on the engine it had stopped.
Now, while the engine is in one of its steps (``_drain``, ``_flush``,
``serve_posted``, ``_transmit``), a nested progress pass moves nothing (the
handler's ``Iprobe`` or ``Test`` sees what had arrived before) and a nested
blocking wait raises ``MmpiError`` saying why.  A real SIGUSR1 to the rank's
own thread at the engine's step (a wrapper around ``_record``, which acts on
one record of a drain); real forked ranks; a hang hits the harness deadline.
"""

from __future__ import annotations

import mmap
import signal
import threading
import time

import numpy as np

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks

N = 5


def _content(tag: int) -> np.ndarray:
    return np.full(64, tag, np.uint8)


def _send_n(comm, shared) -> None:
    """Rank 1: N messages (tags 1..N) to rank 0, then says so in ``shared``."""
    for tag in range(1, N + 1):
        comm.Send(_content(tag), dest=0, tag=tag)
    shared[0] = 1


def _wait_for(shared, i: int) -> None:
    """Until byte ``i`` of ``shared`` (a mapping both forked ranks inherit) is set:
    no MPI call meanwhile (its progress would drain the ring early)."""
    end = time.monotonic() + 20
    while not shared[i]:
        assert time.monotonic() < end, f"byte {i} never set"
        time.sleep(0.002)


def _probe_with_a_handler(comm, handler) -> None:
    """Rank 0: Probe for rank 1's last message, a real SIGUSR1 sent to this thread
    (``handler`` runs) at the first record its drain meets."""
    old = signal.signal(signal.SIGUSR1, handler)
    record = T.Transport._record
    shots = [1]

    def record_with_a_signal(self, *a):
        if shots[0]:
            shots[0] = 0
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)   # (runs here)
        return record(self, *a)

    T.Transport._record = record_with_a_signal
    try:
        comm.Probe(source=1, tag=N)
    finally:
        T.Transport._record = record
        signal.signal(signal.SIGUSR1, old)


def _handler_call_in_a_drain(comm, nested, shared):
    """Rank 1 sends N messages (tags 1..N) before rank 0 looks (it says so in
    ``shared``, a mapping both forked ranks inherit: no MPI call of rank 0's drains
    them early); rank 0's Probe drains them, and at the first record a handler
    runs ``nested(comm)``.  Rank 0 then receives the N by tag and checks nothing
    is left over."""
    if comm.rank == 1:
        _send_n(comm, shared)
        comm.Recv(bytearray(1), source=0, tag=0)   # (alive until rank 0 is done)
        return None
    _wait_for(shared, 0)   # (all N records in the ring: one drain meets them all)
    seen = []

    def handler(*_):
        try:
            seen.append(("returned", nested(comm)))
        except MmpiError as e:
            seen.append(("MmpiError", str(e)))

    _probe_with_a_handler(comm, handler)
    buf, good = np.empty(64, np.uint8), []
    for tag in range(1, N + 1):
        comm.Recv(buf, source=1, tag=tag)
        good.append(bool((buf == tag).all()))
    left = comm.Iprobe(source=1, tag=MPI.ANY_TAG)   # (a record taken twice: one left)
    comm.Send(b"x", dest=1, tag=0)
    return seen, good, left


def _iprobe(comm):
    return comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)


def test_a_handlers_iprobe_in_a_drain_takes_nothing_twice():
    # before: the handler's Iprobe drained the N records under the outer drain,
    # which then took them again from its stale position (N left over, or an
    # IndexError in _drain)
    res = run_ranks(_handler_call_in_a_drain, 2, _iprobe, mmap.mmap(-1, 8), deadline=30)
    for ok, v in res:
        assert ok, v
    seen, good, left = res[0][1]
    assert seen == [("returned", False)], seen   # (nothing had arrived before the drain)
    assert good == [True] * N and left is False, res[0][1]


def _blocking_recv(comm):
    comm.Recv(bytearray(8), source=1, tag=99)   # (never sent)


def test_a_handlers_blocking_receive_in_a_drain_is_refused():
    # before: the handler's Recv waited for ever (the drain it interrupted could
    # not go on under it): the job hit the harness deadline
    res = run_ranks(_handler_call_in_a_drain, 2, _blocking_recv, mmap.mmap(-1, 8),
                    deadline=30)
    for ok, v in res:
        assert ok, v
    seen, good, left = res[0][1]
    assert len(seen) == 1 and seen[0][0] == "MmpiError", seen
    assert seen[0][1].startswith(
        "a blocking MPI call (receive from rank 1 (tag 99)) ran in the middle of this "
        "rank's progress engine (from a signal handler"), seen
    assert "set a flag in the handler" in seen[0][1], seen
    assert good == [True] * N and left is False, res[0][1]   # the refused receive left nothing


def _handler_wait_on_a_collective(comm, shared):
    # rank 0 has an Ibarrier under way when its Probe drains rank 1's records; the
    # handler's Wait on that Ibarrier is refused, and the collective goes on: the
    # main code's Wait completes it with rank 1's (before: the refusal was taken for
    # the collective's own failure, the request freed, and the main code's Wait
    # "succeeded" on a barrier this rank never finished)
    if comm.rank == 1:
        _send_n(comm, shared)
        comm.Recv(bytearray(1), source=0, tag=50)   # (rank 0's drain is done)
        shared[1] = 1   # (rank 1 enters the barrier only now)
        comm.Ibarrier().Wait()
        comm.Recv(bytearray(1), source=0, tag=0)
        return None
    req = comm.Ibarrier()
    _wait_for(shared, 0)
    seen = []

    def handler(*_):
        try:
            req.Wait()
            seen.append("waited")
        except MmpiError as e:
            seen.append(type(e).__name__)

    _probe_with_a_handler(comm, handler)
    alive = req != MPI.REQUEST_NULL
    comm.Send(b"x", dest=1, tag=50)
    req.Wait()
    passed_after = bool(shared[1])   # (the barrier waited for rank 1 to enter it)
    for tag in range(1, N + 1):
        comm.Recv(np.empty(64, np.uint8), source=1, tag=tag)
    comm.Send(b"x", dest=1, tag=0)
    return seen, alive, passed_after


def test_a_handlers_wait_on_a_nonblocking_collective_leaves_it_going():
    res = run_ranks(_handler_wait_on_a_collective, 2, mmap.mmap(-1, 8), deadline=30)
    for ok, v in res:
        assert ok, v
    assert res[0][1] == (["NestedCallError"], True, True), res[0][1]
