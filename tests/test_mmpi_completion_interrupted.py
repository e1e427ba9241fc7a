"""A receive's completion survives an exception raised between its own steps.

The receiving side of tests/test_mmpi_progress_interrupted.py, at the end of a
message: the last chunk of a streamed or pushed message completes its receive
(the engine's ``fetched``, the FIN back to a pushed message's sender, the
receive done), and the drain moves the ring's tail past the chunk's record only
after that, so a signal handler's exception raised among those steps leaves the
record to be taken again.  Each test sends a real SIGUSR1 to the receiving
rank's own thread (``signal.pthread_kill``) from a wrapper at such a step; the
handler raises, the rank catches it and waits again, and the receive must
complete once with every byte, the sender get one FIN, the next message come
next.  Before the fix (integ21) the last chunk forgot its stream or transfer
first, so the record taken again raised "corrupt ring from rank 0: a chunk of
unknown message" (streamed) or "data for unknown transfer" (pushed) at every
wait.  The engine's own steps, interrupted at a call inside them: a message's
arrival (``Engine.arrive``, at its Deliver) left its matched receive out of the
posted list and never complete, the record taken again going unexpected (the
receive waited forever: the harness deadline); an ACK's or FIN's (``control``,
at its Complete) forgot the send, and the record taken again raised "unexpected
ACK/FIN"; ``Engine.cancel`` interrupted at its list call left the receive out
of the posted list still marked posted (cancelling it again raised ValueError).
Real forked ranks (the cancel: the pure engine); no timed assertions.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _engine as E
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values
from test_mmpi_progress_interrupted import (_Boom, _called_from, _go, _kill_self, _on_usr1,
                                            _pattern, _wait_go, _wait_through)

MiB = 1 << 20
STREAMED = 3 * MiB   # above the eager limit, below the stream maximum
PUSHED = 16 * MiB    # rendezvous; with single copy off the receiver asks for a push


def _completion(comm, n, where, last=("_take_stream", "_take_chunk")):
    """Rank 0 sends ``n`` bytes (tag 1), then 8 bytes (tag 3); rank 1, its receive
    posted first, is interrupted once as the record ``last`` names (the last chunk;
    a split's WDONE: "_record") completes it: at the engine's ``fetched``
    ("fetched"), just before the FIN's put ("before-fin") or right after it
    ("after-fin")."""
    if comm.rank == 0:
        comm.Recv(np.empty(1, np.uint8), source=1, tag=9)   # rank 1's receive is posted
        comm.Send(_pattern(1, n), dest=1, tag=1)
        comm.Send(np.full(8, 99, np.uint8), dest=1, tag=3)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return comm._t.npending
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    if where == "after-fin-twice":   # and a second signal as the first one's FIN is settled
        shots = [2]
        where = "after-fin"

        def sum_cut(*a):
            if shots[0] == 1 and _called_from("_settle", "_settle_now"):
                shots[0] -= 1
                _kill_self()
            return sum(*a)

        T.sum = sum_cut   # (the module's global, found before the builtin)
    top = shots[0]
    if where == "fetched":
        fetched = t.engine.fetched

        def raise_then_fetched(r):
            if shots[0] and sys._getframe(1).f_code.co_name in last:
                shots[0] -= 1
                _kill_self()
            return fetched(r)

        t.engine.fetched = raise_then_fetched
    else:
        put = t._put

        def put_fin(*a, **k):
            fin = a[1] == T.K_FIN and _called_from(*last) and not _called_from("_fetch")
            if fin and shots[0] and where == "before-fin":
                shots[0] -= 1
                _kill_self()
            ok = put(*a, **k)
            if fin and ok and shots[0] == top and where == "after-fin":
                shots[0] -= 1
                _kill_self()
            return ok

        t._put = put_fin
    buf = np.zeros(n, np.uint8)
    req = comm.Irecv(buf, source=0, tag=1)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=9)
    st = MPI.Status()
    raised = _wait_through(lambda: req.Wait(st))
    small = np.empty(8, np.uint8)
    st2 = MPI.Status()
    comm.Recv(small, source=0, tag=MPI.ANY_TAG, status=st2)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return (raised, shots[0], st.Get_count(MPI.BYTE), bool(np.array_equal(buf, _pattern(1, n))),
            st2.Get_tag(), bool((small == 99).all()), t.npending, len(t.streams), len(t.sinks))


def _check(res):
    npending0, (raised, left, count, same, tag2, small_ok, npending, streams, sinks) = values(res)
    assert raised == 1 and left == 0, "the completion was not interrupted: proves nothing"
    return (count, same, tag2, small_ok, npending0, npending, streams, sinks)


def test_a_streamed_receive_interrupted_at_its_completion_completes_once():
    res = run_ranks(_completion, 2, STREAMED, "fetched", deadline=30)
    assert _check(res) == (STREAMED, True, 3, True, 0, 0, 0, 0)


@pytest.mark.parametrize("where", ["fetched", "before-fin", "after-fin"])
def test_a_pushed_receive_interrupted_at_its_completion_sends_one_fin(where, monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "0")
    res = run_ranks(_completion, 2, PUSHED, where, deadline=30)
    assert _check(res) == (PUSHED, True, 3, True, 0, 0, 0, 0)


def test_a_second_exception_while_the_first_ones_fin_is_settled(monkeypatch):
    # the FIN of a pushed message's last chunk is out, a signal comes, and another as
    # _finish settles it: the FIN leaves its actions once (the sender gets one)
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "0")
    res = run_ranks(_completion, 2, PUSHED, "after-fin-twice", deadline=30)
    npending0, (raised, left, *rest) = values(res)
    assert left == 0 and raised >= 1, "the FIN was not interrupted twice: proves nothing"
    assert tuple(rest) == (PUSHED, True, 3, True, 0, 0, 0) and npending0 == 0


@pytest.mark.parametrize("where", ["fetched", "before-fin", "after-fin"])
def test_a_split_receive_interrupted_at_its_wdone_sends_one_fin(where, monkeypatch):
    # both ranks copy half of the rendezvous message; the sender's WDONE completes it
    monkeypatch.setenv("DRILLER_MMPI_SPLIT_MIN", str(MiB))
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")   # a rendezvous, not streamed
    res = run_ranks(_completion, 2, 4 * MiB, where, ("_record",), deadline=30)
    assert _check(res) == (4 * MiB, True, 3, True, 0, 0, 0, 0)


class _Posted(list):
    """A posted list whose every lookup or removal is followed by a real SIGUSR1."""

    def index(self, *a):
        i = super().index(*a)
        _kill_self()
        return i

    def remove(self, *a):
        super().remove(*a)
        _kill_self()


def test_a_cancel_interrupted_at_its_list_call_leaves_the_receive_whole():
    old = signal.signal(signal.SIGUSR1, _on_usr1)
    try:
        e = E.Engine()
        e.posted = _Posted()
        r = E.Receive(0, 5, 1, 64)
        e.post(r)
        with pytest.raises(_Boom):
            e.cancel(r)
        # either not cancelled (still posted) or cancelled (out of matching): never between
        assert (r.state, r in e.posted) in ((E.R_POSTED, True), (E.R_CANCELLED, False))
        if r.state == E.R_POSTED:
            e.posted = list(e.posted)
            assert e.cancel(r) is True
        assert r.state == E.R_CANCELLED and not e.posted
        m = E.Message(0, 5, 1, 8)
        assert e.arrive(m) == [] and e.unexpected == [m]   # not matched to the cancelled one
    finally:
        signal.signal(signal.SIGUSR1, old)


def _engine_cut(cls, where):
    """A subclass of the engine's action ``cls`` whose construction inside the
    engine's ``where`` (from a record's drain) takes one real SIGUSR1 first."""
    shots = [1]

    class Cut(cls):
        __slots__ = ()

        def __init__(self, *a):
            if (shots[0] and sys._getframe(1).f_code.co_name == where
                    and _called_from("_record")):
                shots[0] -= 1
                _kill_self()
            super().__init__(*a)

    return Cut, shots


def _arrival(comm, fifo, sync):
    """Rank 1 posts receives for tags 2 then 1; rank 0 sends tag 1 (so the drain
    matches it through Engine.arrive, not to the first posted), then tag 2.  The
    arrival of tag 1 is interrupted as the engine builds its Deliver."""
    if comm.rank == 0:
        _wait_go(fifo)
        (comm.Ssend if sync else comm.Send)(np.full(64, 1, np.uint8), dest=1, tag=1)
        comm.Send(np.full(64, 2, np.uint8), dest=1, tag=2)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return comm._t.npending
    signal.signal(signal.SIGUSR1, _on_usr1)
    E.Deliver, shots = _engine_cut(E.Deliver, "_match")
    b2, b1 = np.zeros(64, np.uint8), np.zeros(64, np.uint8)
    reqs = [comm.Irecv(b2, source=0, tag=2), comm.Irecv(b1, source=0, tag=1)]
    _go(fifo)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return raised, shots[0], sorted(set(b1.tolist())), sorted(set(b2.tolist()))


@pytest.mark.parametrize("sync", [False, True], ids=["send", "ssend"])
def test_an_arrival_interrupted_in_the_engine_goes_to_its_receive(sync, tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    npending, (raised, left, got1, got2) = values(
        run_ranks(_arrival, 2, fifo, sync, deadline=30))
    assert raised == 1 and left == 0, "the arrival was not interrupted: proves nothing"
    assert (got1, got2, npending) == ([1], [2], 0)


def _control(comm, n):
    """Rank 0's Issend of ``n`` bytes (64: eager, ACK; 2 MiB: rendezvous, FIN) is
    interrupted as the engine builds the send's Complete at the ACK or FIN."""
    if comm.rank == 1:
        buf = np.zeros(n, np.uint8)
        comm.Recv(buf, source=0, tag=1)
        small = np.zeros(8, np.uint8)
        comm.Recv(small, source=0, tag=3)
        return bool(np.array_equal(buf, _pattern(1, n))), bool((small == 99).all())
    signal.signal(signal.SIGUSR1, _on_usr1)
    E.Complete, shots = _engine_cut(E.Complete, "control")
    t = comm._t
    req = comm.Issend(_pattern(1, n), dest=1, tag=1)
    raised = _wait_through(req.Wait)
    comm.Send(np.full(8, 99, np.uint8), dest=1, tag=3)
    return raised, shots[0], len(t.engine.awaiting), t.npending


@pytest.mark.parametrize("n", [64, 2 * MiB], ids=["ack", "fin"])
def test_a_reply_interrupted_in_the_engine_completes_its_send(n):
    (raised, left, awaiting, npending), ok = values(run_ranks(_control, 2, n, deadline=30))
    assert raised == 1 and left == 0, "the reply was not interrupted: proves nothing"
    assert (awaiting, npending, ok) == (0, 0, (True, True))
