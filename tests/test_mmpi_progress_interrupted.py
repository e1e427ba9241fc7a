"""The progress engine's bookkeeping survives an exception raised between its own steps.

A Python signal handler (a SIGALRM timeout, Ctrl-C) runs at any call of the
progress engine, so its exception can come right after a record was published
to a ring and before the queue, push job or send state says so.  Each test
sends a real SIGUSR1 to its own thread (``signal.pthread_kill``) at such a
point, from a wrapper around the transport's function that publishes; the
handler raises, the program catches the exception and goes on (waits again,
sends more), and the receiver checks every message: exactly once, in order,
with the right bytes.  Before the fix (integ20): a queued send put again after
the exception arrived twice; a streamed send's envelope went out with no chunks
behind it (the receiver waited forever); a pushed chunk was written again from
the job's stale offset (the receiver's copy went astray); a PUSH request taken
again pushed the message twice.  On the receiving side: a posted receive
interrupted as its record was handed over was never completed; a window pass
interrupted left Waitall returning before the run's copy was made, or (big
records) gave the next record to a receive already complete.  Real forked
ranks; no timed assertions (a hang hits the harness deadline).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values

KiB = 1 << 10
MiB = 1 << 20


class _Boom(Exception):
    pass


def _on_usr1(*_):
    raise _Boom()


def _kill_self():
    """A real SIGUSR1 to this thread: its handler raises as pthread_kill returns."""
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)


def _called_from(*names) -> bool:
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_name in names and f.f_code.co_filename.endswith("_transport.py"):
            return True
        f = f.f_back
    return False


def _pattern(i: int, n: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint32) + 7 * i) % 251).astype(np.uint8)


def _wait_through(call) -> int:
    """call() until it returns; the number of times it raised _Boom."""
    raised = 0
    while True:
        try:
            call()
            return raised
        except _Boom:
            raised += 1


def _go(fifo):
    with open(fifo, "w") as f:
        f.write("go")


def _wait_go(fifo):
    with open(fifo) as f:
        f.read()


# ---------------------------------------------------------------- queued sends
N_QUEUED = 48
QUEUED_BYTES = 256 * KiB    # eager: 48 of them fill the ring, the rest queue


def _queued(comm, fifo):
    """Rank 0 queues eager Isends behind a full ring; the first three puts from the
    queue each raise right after the record is in the ring."""
    if comm.rank == 0:
        signal.signal(signal.SIGUSR1, _on_usr1)
        t = comm._t
        bufs = [_pattern(i, QUEUED_BYTES) for i in range(N_QUEUED)]
        reqs = [comm.Isend(b, dest=1, tag=i) for i, b in enumerate(bufs)]
        queued = len(t.pending[1])
        put = t._put
        shots = [3]

        def put_then_raise(*a, **k):
            ok = put(*a, **k)
            if ok and shots[0] and _called_from("_flush"):
                shots[0] -= 1
                _kill_self()
            return ok

        t._put = put_then_raise
        _go(fifo)
        raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
        comm.Send(np.full(8, 99, np.uint8), dest=1, tag=N_QUEUED)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return queued, raised, t.npending
    _wait_go(fifo)
    got = []
    buf = np.empty(QUEUED_BYTES, np.uint8)
    st = MPI.Status()
    for i in range(N_QUEUED + 1):
        comm.Recv(buf, source=0, tag=MPI.ANY_TAG, status=st)
        tag = st.Get_tag()
        if tag < N_QUEUED:
            got.append((tag, st.Get_count(MPI.BYTE) == QUEUED_BYTES
                        and bool(np.array_equal(buf, _pattern(tag, QUEUED_BYTES)))))
        else:
            got.append((tag, bool((buf[:8] == 99).all())))
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return got


def test_a_queued_send_interrupted_after_its_put_is_sent_once(tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (queued, raised, npending), got = values(run_ranks(_queued, 2, fifo))
    assert queued, "no send was queued: the scenario proves nothing"
    assert raised == 3, f"raised {raised} times, not 3: the scenario proves nothing"
    assert [t for t, _ in got] == list(range(N_QUEUED + 1)), f"tags received: {got}"
    assert all(ok for _, ok in got), f"wrong bytes: {[t for t, ok in got if not ok]}"
    assert npending == 0


# ---------------------------------------------------------------- streamed envelope
STREAMED = 3 * MiB    # above the eager limit (1 MiB), below the stream maximum


def _streamed(comm, queued_first, fifo):
    """Rank 0's streamed Isend raises right after its envelope is in the ring (sent
    at once, or from the queue behind an eager send to a full ring); the message
    must follow in full, then the next."""
    if comm.rank == 0:
        signal.signal(signal.SIGUSR1, _on_usr1)
        t = comm._t
        put = t._put
        shots = [1]

        def put_then_raise(*a, **k):
            ok = put(*a, **k)
            if ok and shots[0] and a[1] & 0xFF == T.K_STREAM:
                shots[0] -= 1
                _kill_self()
            return ok

        t._put = put_then_raise
        buf = _pattern(1, STREAMED)
        raised = 0
        reqs = []
        if queued_first:   # fill the ring: the streamed send queues, the wait puts it
            reqs = [comm.Isend(_pattern(2, 1 * MiB), dest=1, tag=2) for _ in range(8)]
            assert t.pending[1]
        try:
            reqs.append(comm.Isend(buf, dest=1, tag=1))
        except _Boom:
            raised += 1    # its request is lost with the exception; the message is out
        _go(fifo)          # rank 1 starts receiving (it took nothing before)
        raised += _wait_through(lambda: MPI.Request.Waitall(reqs))
        comm.Send(np.full(8, 99, np.uint8), dest=1, tag=3)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)   # (progress: the last chunks)
        return raised, t.npending
    _wait_go(fifo)
    ok = []
    if queued_first:
        b = np.empty(1 * MiB, np.uint8)
        for _ in range(8):
            comm.Recv(b, source=0, tag=2)
            ok.append(bool(np.array_equal(b, _pattern(2, 1 * MiB))))
    buf = np.empty(STREAMED, np.uint8)
    st = MPI.Status()
    comm.Recv(buf, source=0, tag=MPI.ANY_TAG, status=st)
    ok.append((st.Get_tag(), bool(np.array_equal(buf, _pattern(1, STREAMED)))))
    small = np.empty(8, np.uint8)
    comm.Recv(small, source=0, tag=MPI.ANY_TAG, status=st)
    ok.append((st.Get_tag(), bool((small == 99).all())))
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return ok


def test_a_streamed_send_interrupted_after_its_envelope_follows_in_full(tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (raised, npending), ok = values(run_ranks(_streamed, 2, False, fifo, deadline=30))
    assert raised == 1, "the Isend did not raise: the scenario proves nothing"
    assert ok == [(1, True), (3, True)]
    assert npending == 0


def test_a_queued_streamed_send_interrupted_after_its_envelope_follows_in_full(tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (raised, npending), ok = values(run_ranks(_streamed, 2, True, fifo, deadline=30))
    assert raised == 1, "the wait did not raise: the scenario proves nothing"
    assert ok == [True] * 8 + [(1, True), (3, True)]
    assert npending == 0


# ---------------------------------------------------------------- pushed chunks
PUSHED = 16 * MiB   # rendezvous; with single copy off the receiver asks for a push


def _pushed(comm, where):
    """Rank 0's push (two-copy fallback) raises just before its 3rd and 40th chunk's
    copy, the chunks before published ("chunk"); or right after it took the
    receiver's PUSH request, before its drain moved past the record ("start")."""
    if comm.rank == 0:
        signal.signal(signal.SIGUSR1, _on_usr1)
        t = comm._t
        lib = T._linux
        memmove = lib.memmove
        start = t._start_push
        calls = [0]

        def raise_then_copy(*a):
            if _called_from("_push"):
                calls[0] += 1
                if calls[0] in (3, 40):
                    _kill_self()
            return memmove(*a)

        def start_then_raise(*a):
            start(*a)
            calls[0] += 1
            if calls[0] == 1:
                _kill_self()

        if where == "chunk":
            lib.memmove = raise_then_copy
        else:
            t._start_push = start_then_raise
        buf = _pattern(3, PUSHED)
        req = comm.Isend(buf, dest=1, tag=1)
        raised = _wait_through(req.Wait)
        lib.memmove = memmove
        comm.Send(np.full(8, 99, np.uint8), dest=1, tag=3)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return raised, calls[0], t.npending
    buf = np.empty(PUSHED, np.uint8)
    comm.Recv(buf, source=0, tag=1)
    small = np.empty(8, np.uint8)
    comm.Recv(small, source=0, tag=3)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return bool(np.array_equal(buf, _pattern(3, PUSHED))), bool((small == 99).all())


def test_a_push_interrupted_between_chunks_resumes_at_the_next_chunk(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "0")
    monkeypatch.setenv("DRILLER_MMPI_PUSH_CHUNK", str(64 * KiB))
    (raised, chunks, npending), ok = values(run_ranks(_pushed, 2, "chunk", deadline=30))
    assert raised == 2 and chunks >= 40, "the push was not interrupted twice: proves nothing"
    assert ok == (True, True)
    assert npending == 0


def test_a_push_request_interrupted_after_it_was_taken_is_pushed_once(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "0")
    (raised, calls, npending), ok = values(run_ranks(_pushed, 2, "start", deadline=30))
    assert raised == 1 and calls == 2, f"raised {raised}, taken {calls}: proves nothing"
    assert ok == (True, True)
    assert npending == 0


# ---------------------------------------------------------------- receive side
def _posted(comm, fifo, fifo2):
    """Rank 1 posts receives for tags 2 and 3; rank 0 sends tags 1, 2, 3.  Tag 1
    waits (unexpected), so tag 2's record is handed to its posted receive one
    record at a time (_to_posted): an exception raised as that hand-over starts
    (its copy, _give) must leave the receive posted and the record to take."""
    if comm.rank == 0:
        _wait_go(fifo)
        for tag in (1, 2, 3):
            comm.Send(np.full(64, tag, np.uint8), dest=1, tag=tag)
        _go(fifo2)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return None
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    give = t._give
    shots = [1]

    def raise_then_give(*a):
        if shots[0] and _called_from("_to_posted"):
            shots[0] -= 1
            _kill_self()
        return give(*a)

    t._give = raise_then_give
    b2, b3, b1 = (np.zeros(64, np.uint8) for _ in range(3))
    reqs = [comm.Irecv(b2, source=0, tag=2), comm.Irecv(b3, source=0, tag=3)]
    _go(fifo)
    _wait_go(fifo2)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
    comm.Recv(b1, source=0, tag=1)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return raised, shots[0], [sorted(set(b.tolist())) for b in (b1, b2, b3)]


def test_a_posted_receive_interrupted_as_its_message_is_handed_over_still_gets_it(tmp_path):
    fifo, fifo2 = str(tmp_path / "go"), str(tmp_path / "sent")
    os.mkfifo(fifo)
    os.mkfifo(fifo2)
    _, (raised, left, seen) = values(run_ranks(_posted, 2, fifo, fifo2, deadline=30))
    assert raised == 1 and left == 0, "the hand-over was not interrupted: proves nothing"
    assert seen == [[1], [2], [3]]


W = 8   # osu_bw's pattern: a window of receives posted alike into one buffer
BIG = 64 * KiB   # eager; past this size a pass publishes the tail at once (_PUBLISH)


def _window(comm, fifo, fifo2, n):
    """Rank 1 posts W + 1 receives for tag 5; rank 0 sends W messages of ``n``
    bytes (the k-th filled with k) and one of n // 2 (9s).  The posted receives
    take the records in one pass (_serve); an exception as the pass reads the
    last record's header must leave the W receives done with their bytes and the
    last message for the last receive.  Small: the receives are posted alike
    into one buffer, and the pass copies only the run's last record.  Big: each
    its own buffer, and the pass moves the ring's tail past each record at once."""
    if comm.rank == 0:
        _wait_go(fifo)
        for k in range(1, W + 1):
            comm.Send(np.full(n, k, np.uint8), dest=1, tag=5)
        comm.Send(np.full(n // 2, 9, np.uint8), dest=1, tag=5)
        _go(fifo2)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return None
    signal.signal(signal.SIGUSR1, _on_usr1)
    hdr = T._HDR5
    shots = [1]

    class Unpack:
        @staticmethod
        def unpack_from(*a):
            v = hdr.unpack_from(*a)
            if shots[0] and v[3] == n // 2 and _called_from("_serve"):
                shots[0] -= 1
                _kill_self()
            return v

    T._HDR5 = Unpack
    one = bytearray(n)   # (a bytearray spec, as osu_bw's: Irecv remembers it, one key)
    bufs = [one] * (W + 1) if n < BIG else [np.zeros(n, np.uint8) for _ in range(W + 1)]
    reqs = [comm.Irecv([b, n, MPI.BYTE] if n < BIG else b, source=0, tag=5) for b in bufs]
    _go(fifo)
    _wait_go(fifo2)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs[:W]))
    window = [sorted(set(bytes(b))) for b in bufs[:W]]
    st = MPI.Status()
    reqs[W].Wait(st)
    T._HDR5 = hdr
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return raised, shots[0], window, st.Get_count(MPI.BYTE), list(bytes(bufs[W]))


@pytest.mark.parametrize("n", [64, BIG], ids=["alike-small", "big"])
def test_a_window_of_receives_interrupted_in_its_pass_has_its_bytes(n, tmp_path):
    fifo, fifo2 = str(tmp_path / "go"), str(tmp_path / "sent")
    os.mkfifo(fifo)
    os.mkfifo(fifo2)
    _, (raised, left, window, count, last) = values(
        run_ranks(_window, 2, fifo, fifo2, n, deadline=30))
    assert raised == 1 and left == 0, "the pass was not interrupted: proves nothing"
    if n < BIG:   # one buffer: the last message's bytes, then the half one's over them
        assert window == [[W]] * W, f"the window's buffer held {window[0]}"
        assert count == n // 2 and last == [9] * (n // 2) + [W] * (n // 2)
    else:
        assert window == [[k] for k in range(1, W + 1)], f"the window got {window}"
        assert count == n // 2 and last == [9] * (n // 2) + [0] * (n // 2)
