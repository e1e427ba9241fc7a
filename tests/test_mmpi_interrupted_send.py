"""A blocking send interrupted by an exception delivers the message as it was at the call.

Rank 0's blocking send cannot complete while rank 1 has not posted its receive
(rank 1 waits for a "go" first): a SIGALRM handler raises in rank 0 during the
wait, rank 0 then overwrites its buffer (as a program that got an exception
reasonably does), and only then tells rank 1 (waiting on a FIFO, outside mmpi,
so it drains nothing) to receive.  Before the fix, a
streamed message (eager limit < n <= 8 MiB) arrived torn (old and new bytes) and
a rendezvous one (larger, or synchronous, or a lowercase ``send`` of large
arrays) all new; a ``Sendrecv`` interrupted while receiving left its send to be
read from the buffer later; an eager message queued behind a full ring was
copied only when the ring had room.  Real forked ranks, real signals; no timed
assertions (a hang hits the harness deadline).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from driller import MPI

from test_mmpi_p2p import run_ranks, values

MiB = 1 << 20


class _Interrupted(Exception):
    pass


def _waiting(frame) -> bool:
    """Whether ``frame`` runs inside the transport's wait (the send is started)."""
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith(
                ("_transport.py", "_hybrid.py")):
            return True
        frame = frame.f_back
    return False


def _interrupted(call):
    """Run call() with a SIGALRM handler raising once the call waits (from 50 ms on:
    a loaded machine may not have started the send by then); True if it raised."""
    def on_alarm(_, frame):
        if not _waiting(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        raise _Interrupted()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        call()
        return False
    except _Interrupted:
        return True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _scenario(comm, how, n, fifo):
    """Rank 0 sends n bytes of 1s with ``how``, interrupted; then fills the buffer
    with 7s and lets rank 1 receive.  Returns rank 1's distinct byte values."""
    if comm.rank == 0:
        buf = np.ones(n, np.uint8)
        fill = [buf]
        if how == "Send":
            call = lambda: comm.Send(buf, dest=1, tag=5)   # noqa: E731
        elif how == "Ssend":
            call = lambda: comm.Ssend(buf, dest=1, tag=5)   # noqa: E731
        elif how == "Rsend":
            call = lambda: comm.Rsend(buf, dest=1, tag=5)   # noqa: E731
        elif how == "send":
            obj = {"a": buf, "b": np.ones(n // 2, np.uint8), "s": "x" * 10}
            fill.append(obj["b"])
            call = lambda: comm.send(obj, dest=1, tag=5)   # noqa: E731
        elif how == "Sendrecv":   # interrupted while waiting for its receive
            into = np.zeros(8, np.uint8)
            call = lambda: comm.Sendrecv(buf, 1, 5, into, 1, 6)   # noqa: E731
        sent = [1]
        if how == "queued":   # eager sends until the ring is full: one is queued, waits
            def call():
                sent[0] = 0
                for _ in range(256):
                    sent[0] += 1
                    comm.Send(buf, dest=1, tag=5)
        raised = _interrupted(call)
        for b in fill:
            b[:] = 7
        with open(fifo, "w") as f:   # (rank 1 waits outside mmpi: it drains nothing)
            f.write(str(sent[0]))
        comm.recv(source=1, tag=98)   # (progress meanwhile: the rest goes out)
        return raised
    with open(fifo) as f:
        count = int(f.read())
    if how == "send":
        got = comm.recv(source=0, tag=5)
        seen = sorted(set(np.unique(got["a"]).tolist()) | set(np.unique(got["b"]).tolist()))
    else:
        seen = set()
        for _ in range(count):
            got = np.zeros(n, np.uint8)
            comm.Recv(got, source=0, tag=5)
            seen |= set(np.unique(got).tolist())
        seen = sorted(seen)
    if how == "Sendrecv":
        comm.Send(np.zeros(8, np.uint8), dest=0, tag=6)
    comm.send("done", dest=0, tag=98)
    return seen


@pytest.mark.parametrize("how,n", [
    ("Send", 6 * MiB),     # streamed
    ("Send", 16 * MiB),    # rendezvous
    ("Rsend", 16 * MiB),
    ("Ssend", 2 * MiB),    # synchronous: rendezvous above the eager limit
    ("send", 16 * MiB),    # an object's out-of-band buffers: a vectored rendezvous
    ("Sendrecv", 6 * MiB),
    ("Sendrecv", 16 * MiB),
    ("queued", 512 << 10),  # eager, queued behind a full ring
], ids=["Send-streamed", "Send-rendezvous", "Rsend", "Ssend", "send-object",
        "Sendrecv-streamed", "Sendrecv-rendezvous", "Send-eager-queued"])
def test_an_interrupted_blocking_send_delivers_the_buffer_as_it_was(how, n, tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    raised, seen = values(run_ranks(_scenario, 2, how, n, fifo))
    assert raised, "the send was not interrupted: the scenario proves nothing"
    assert seen == [1], f"rank 1 received bytes {seen}, not the buffer at the call"


@pytest.mark.parametrize("env", [{"DRILLER_MMPI_SINGLE_COPY": "0"},
                                 {"DRILLER_MMPI_SPLIT_MIN": "1"}], ids=["pushed", "split"])
@pytest.mark.parametrize("how", ["Send", "send"])
def test_an_interrupted_rendezvous_is_kept_on_the_other_paths(how, env, tmp_path, monkeypatch):
    # the two-copy fallback (the sender pushes through the ring once asked) and the
    # split copy (the sender writes half into the receiver) read the buffer too
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    raised, seen = values(run_ranks(_scenario, 2, how, 16 * MiB, fifo))
    assert raised, "the send was not interrupted: the scenario proves nothing"
    assert seen == [1], f"rank 1 received bytes {seen}, not the buffer at the call"


def _sendrecv_then_next(comm, fifo):
    """Rank 0's lowercase sendrecv is interrupted in its send; rank 1 then takes the
    object and sends "A" (tag 1) and "B" (tag 2): rank 0 must get "A" first."""
    if comm.rank == 0:
        obj = {"a": np.ones(16 * MiB, np.uint8)}
        raised = _interrupted(lambda: comm.sendrecv(obj, dest=1, sendtag=5, source=1,
                                                    recvtag=MPI.ANY_TAG))
        with open(fifo, "w") as f:
            f.write("go")
        return raised, [comm.recv(source=1, tag=MPI.ANY_TAG) for _ in range(2)]
    with open(fifo) as f:
        f.read()
    got = comm.recv(source=0, tag=5)
    comm.send("A", dest=0, tag=1)
    comm.send("B", dest=0, tag=2)
    return int(got["a"].min())


def test_an_interrupted_sendrecv_leaves_no_receive_posted(tmp_path):
    # its receive stayed posted: it took "A", and the next receive got "B"
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (raised, got), low = values(run_ranks(_sendrecv_then_next, 2, fifo))
    assert raised, "the sendrecv was not interrupted: the test proves nothing"
    assert got == ["A", "B"] and low == 1


def _signal_inside(method, name, before, sleep=0.0):
    """While ``Transport.<method>`` runs, its first call of ``_linux.<name>``
    signals the process (SIGUSR1, whose handler raises _Interrupted) before or
    after the call (``sleep``: so long after the kill, for another thread to take
    it).  Returns (fired, inside, undo): whether it signalled, whether the
    handler's exception came out of the method, and the patch's undoing."""
    from driller.mmpi import _transport
    lin = _transport._linux
    call = getattr(lin, name)
    run = getattr(_transport.Transport, method)
    fired, inside = [], []

    def fire():
        fired.append(True)
        os.kill(os.getpid(), signal.SIGUSR1)   # (the handler runs as a call returns)
        if sleep:
            time.sleep(sleep)

    def signalled(*a):
        if before and not fired:
            fire()
        done = call(*a)
        if not before and not fired:
            fire()
        return done

    def patched(self, *a):
        setattr(lin, name, signalled)
        try:
            return run(self, *a)
        except _Interrupted:
            inside.append(True)
            raise
        finally:
            setattr(lin, name, call)

    def on_usr1(*_):
        raise _Interrupted()

    signal.signal(signal.SIGUSR1, on_usr1)
    setattr(_transport.Transport, method, patched)
    return fired, inside, lambda: setattr(_transport.Transport, method, run)


def _second_signal_while_kept(comm, n, fifo):
    """As _scenario's "Send", but while rank 0 keeps its interrupted send a signal
    comes for the whole process (a second Ctrl-C, an alarm): with a second thread
    alive (numpy's pool; here an idle one), the kernel gives it to that thread,
    whose mask is not held, and Python runs the handler in the main thread all the
    same, inside keep_sent."""
    if comm.rank == 0:
        import threading

        fired, inside, undo = _signal_inside("_keep_sent", "buffer_address", True, 0.05)
        idle = threading.Event()
        threading.Thread(target=idle.wait, daemon=True).start()
        try:
            raised = _scenario(comm, "Send", n, fifo)
        finally:
            idle.set()
            undo()
        return raised and bool(fired) and bool(inside)
    return _scenario(comm, "Send", n, fifo)


@pytest.mark.parametrize("n", [6 * MiB, 16 * MiB], ids=["streamed", "rendezvous"])
def test_a_second_signal_while_the_send_is_kept_still_keeps_it(n, tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    raised, seen = values(run_ranks(_second_signal_while_kept, 2, n, fifo))
    assert raised, "keep_sent was not interrupted: the test proves nothing"
    assert seen == [1], f"rank 1 received bytes {seen}, not the buffer at the call"


def _raised_as_it_starts(comm, n, fifo):
    """Rank 0's blocking Send of a streamed message raises while it starts: a
    signal handler's exception right after the first chunk's copy, inside the
    send's own first push (before any wait).  Then it fills its buffer with 7s."""
    if comm.rank == 0:
        fired, inside, undo = _signal_inside("_push", "memmove", False)
        buf = np.ones(n, np.uint8)
        raised = False
        try:
            comm.Send(buf, dest=1, tag=5)
        except _Interrupted:
            raised = True
        finally:
            undo()
        buf[:] = 7
        with open(fifo, "w") as f:
            f.write("1")
        comm.recv(source=1, tag=98)   # (progress meanwhile: the rest goes out)
        return raised and bool(fired) and bool(inside)
    with open(fifo) as f:
        f.read()
    got = np.zeros(n, np.uint8)
    comm.Recv(got, source=0, tag=5)
    comm.send("done", dest=0, tag=98)
    return sorted(set(np.unique(got).tolist()))


def test_a_send_that_raises_as_it_starts_delivers_the_buffer_as_it_was(tmp_path):
    # before: the exception left Send before its wait, so nothing kept the message
    # and the rest of its chunks went out later from the overwritten buffer
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    raised, seen = values(run_ranks(_raised_as_it_starts, 2, 6 * MiB, fifo))
    assert raised, "the send did not raise as it started: the test proves nothing"
    assert seen == [1], f"rank 1 received bytes {seen}, not the buffer at the call"


def _object_raised_as_it_starts(comm, how, fifo):
    """Rank 0's blocking lowercase ``how`` of an object holding 16 MiB arrays (a
    vectored rendezvous: the receiver reads them from rank 0's memory) raises as
    it starts: a signal handler's exception right after its request's put, before
    any wait.  Then rank 0 fills the arrays with 7s and lets rank 1 receive."""
    from driller.mmpi import _transport

    if comm.rank == 0:
        t = comm._t
        put = t._put
        fired = []

        def put_then_signal(*a, **k):
            ok = put(*a, **k)
            if ok and a[1] & 0xFF == _transport.K_RTS and not fired:
                fired.append(True)
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            return ok

        def on_usr1(*_):
            raise _Interrupted()

        signal.signal(signal.SIGUSR1, on_usr1)
        t._put = put_then_signal
        obj = {"a": np.ones(16 * MiB, np.uint8), "b": np.ones(8 * MiB, np.uint8)}
        raised = False
        try:
            if how == "sendrecv":
                comm.sendrecv(obj, dest=1, sendtag=5, source=1, recvtag=6)
            else:
                getattr(comm, how)(obj, dest=1, tag=5)
        except _Interrupted:
            raised = True
        obj["a"][:] = 7
        obj["b"][:] = 7
        with open(fifo, "w") as f:
            f.write("1")
        if how == "sendrecv":   # its receive was abandoned: this one takes "A" first
            got = [comm.recv(source=1, tag=MPI.ANY_TAG) for _ in range(2)]
        else:
            got = ["A", comm.recv(source=1, tag=98)]
        return raised and bool(fired), got
    with open(fifo) as f:
        f.read()
    got = comm.recv(source=0, tag=5)
    if how == "sendrecv":
        comm.send("A", dest=0, tag=6)
    comm.send("B", dest=0, tag=98)
    return sorted(set(np.unique(got["a"]).tolist()) | set(np.unique(got["b"]).tolist()))


@pytest.mark.parametrize("how", ["send", "ssend", "sendrecv"])
def test_an_object_send_that_raises_as_it_starts_delivers_the_object_as_it_was(how, tmp_path):
    # before: the exception left send before its wait, so nothing kept the message
    # and the receiver read the arrays later, overwritten (all 7s)
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    (raised, got), seen = values(run_ranks(_object_raised_as_it_starts, 2, how, fifo))
    assert raised, "the send did not raise as it started: the test proves nothing"
    assert seen == [1], f"rank 1 received bytes {seen}, not the object at the call"
    assert got == ["A", "B"]
