"""A record is taken once when a signal handler's exception comes right after the
callee that took it returned, before its caller counted it.

CPython 3.10 runs a pending signal handler after every call returns, before the
caller's next instruction (``t += record(...)``: after ``_record`` returned, before
the add and the store); 3.11+ does so after a call that did not go Python to
Python (a ``functools.partial``, an object's ``__call__``), and at every backward
jump (a ``for`` loop's end).  The callee must then mark the record taken itself
(``Transport._taken``), or the next progress takes it again: an eager message
delivered twice (queued unexpected a second time, or given to the next receive),
an ACK or FIN applied twice (``Engine.control``: "unexpected ACK"), a posted
receive given its message again after it was complete (its buffer written
again after its ``Test`` said done and the program reused it).

Each test wraps the callee (``Transport._record``, ``Engine.control``,
``Transport._give``) so that a real SIGUSR1 comes to the rank's own thread as
the callee returns (``signal.pthread_kill``: its handler raises at once, in the
wrapper, i.e. after the callee returned, before the caller stored): the point
3.10 reaches by itself.  The rank catches the exception and goes on; every
message must arrive once, in order, with its bytes, and the job go on.  Real
forked ranks; no timed assertions.
"""

from __future__ import annotations

import gc
import os
import signal
import weakref
import _thread

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _transport as T

from test_mmpi_arrival_interrupted import (_probe_then_receive_three, _send_then_tag2,
                                           _send_three)
from test_mmpi_p2p import run_ranks, values
from test_mmpi_progress_interrupted import (_called_from, _go, _kill_self, _on_usr1, _pattern,
                                            _wait_go, _wait_through)

MiB = 1 << 20
NOSTREAM = {"DRILLER_MMPI_STREAM_MAX": "0"}


def _fifos(tmp_path):
    out = []
    for name in ("a", "b"):
        f = str(tmp_path / name)
        os.mkfifo(f)
        out.append(f)
    return out


def _send_two(comm, n, fa, fb, sync=False):
    """Rank 0's side: once rank 1's receives are posted (``fa``), ``n`` bytes with
    tag 1 (Issend if ``sync``) then tag 2, nonblocking; rank 1 told both are out
    (``fb``, unless None); then until rank 1 is done (tag 0): (npending, awaiting)."""
    _wait_go(fa)
    sends = [(comm.Issend if sync else comm.Isend)(_pattern(1, n), dest=1, tag=1),
             comm.Isend(_pattern(2, n), dest=1, tag=2)]
    if fb is not None:
        _go(fb)
    MPI.Request.Waitall(sends)
    comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
    t = comm._t
    return t.npending, len(t.engine.awaiting)


# ------------------------------------------------------- _drain's t += record()
def _after_record(t, tag, shots):
    """Have ``t`` take one real SIGUSR1 as ``_record`` returns from the record
    of ``tag`` that ``_drain`` gave it."""
    record = t._record

    def wrapped(src, data, p):
        n = record(src, data, p)
        if shots[0] and T.HDR.unpack_from(data, p)[2] == tag and _called_from("_drain"):
            shots[0] -= 1
            _kill_self()
        return n

    t._record = wrapped   # (_drain reads self._record)


def _matched(comm, fa, fb, n, tag):
    """Rank 1 posts receives for tags 2 then 1; rank 0 sends ``n`` bytes with tag 1
    then with tag 2 (both in the ring before rank 1 looks: the record of tag 1
    goes through Engine.arrive, matched by the second receive; that of tag 2 to
    the first, _to_posted); rank 1 is interrupted as _record returns from the
    record of ``tag``."""
    if comm.rank == 0:
        return _send_two(comm, n, fa, fb)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    b2, b1 = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    reqs = [comm.Irecv(b2, source=0, tag=2), comm.Irecv(b1, source=0, tag=1)]
    _after_record(t, tag, shots)
    _go(fa)
    _wait_go(fb)   # (both records in the ring)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
    more = comm.Iprobe(source=0, tag=MPI.ANY_TAG)   # (nothing taken twice is left)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)   # (the job goes on)
    return (raised, shots[0], bool(np.array_equal(b1, _pattern(1, n))),
            bool(np.array_equal(b2, _pattern(2, n))), more, len(t.engine.unexpected),
            len(t.engine.posted), len(t.ends))


# (message bytes, the tag whose record's return is interrupted, environment)
MATCHED = {
    "inline-arrive": (8, 1, {}),             # an inline record, matched by the engine
    "inline-to-posted": (8, 2, {}),          # ... for the earliest posted (_to_posted)
    "eager-arrive": (64, 1, {}),
    "eager-to-posted": (64, 2, {}),
    "rndv-arrive": (2 * MiB, 1, NOSTREAM),   # a rendezvous request (fetched, FIN out)
}


@pytest.mark.parametrize("case", list(MATCHED))
def test_a_record_interrupted_after_record_returned_is_taken_once(case, tmp_path, monkeypatch):
    n, tag, env = MATCHED[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fa, fb = _fifos(tmp_path)
    sender, (raised, left, *got) = values(run_ranks(_matched, 2, fa, fb, n, tag, deadline=30))
    assert raised == 1 and left == 0, "the drain was not interrupted: proves nothing"
    assert got == [True, True, False, 0, 0, 0]
    assert sender == (0, 0)


def _unexpected(comm, fa, fb, n):
    """Rank 0 sends tags 1, 2, 3 before rank 1 posts anything; rank 1's Probe for
    tag 3 queues them unexpected, interrupted as _record returns from tag 1's."""
    if comm.rank == 0:
        return _send_three(comm, fa, n)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    _after_record(t, 1, shots)
    _wait_go(fa)
    raised, got, more = _probe_then_receive_three(comm, n)
    return raised, shots[0], got, more


@pytest.mark.parametrize("n", [8, 64])
def test_an_unexpected_record_interrupted_after_record_returned_is_queued_once(n, tmp_path):
    fa, fb = _fifos(tmp_path)
    npending, (raised, left, got, more) = values(run_ranks(_unexpected, 2, fa, fb, n,
                                                           deadline=30))
    assert raised == 1 and left == 0, "the drain was not interrupted: proves nothing"
    assert got == [(1, True), (2, True), (3, True)] and more is False and npending == 0


# ------------------------------------------------------- acts = engine.arrive(m)
def _arrive_matched(comm, fa, fb, n, sync):
    """Rank 1 posts receives for tags 2 then 1; rank 0 sends tag 1 (``n`` bytes,
    synchronous or not) then tag 2; rank 1 is interrupted as Engine.arrive
    returns the match of tag 1 (the receive matched and off the posted list, its
    actions not stored by the caller yet)."""
    if comm.rank == 0:
        return _send_two(comm, n, fa, None, sync)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    arrive = t.engine.arrive

    def wrapped(m):
        acts = arrive(m)
        if acts and shots[0] and m.tag == 1:
            shots[0] -= 1
            _kill_self()
        return acts

    t.engine.arrive = wrapped
    b2, b1 = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    reqs = [comm.Irecv(b2, source=0, tag=2), comm.Irecv(b1, source=0, tag=1)]
    _go(fa)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
    more = comm.Iprobe(source=0, tag=MPI.ANY_TAG)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return (raised, shots[0], bool(np.array_equal(b1, _pattern(1, n))),
            bool(np.array_equal(b2, _pattern(2, n))), more, len(t.engine.unexpected),
            len(t.engine.posted), len(t.ends), t.engine.arrived)


ARRIVE = {
    "inline": (8, False, {}),
    "eager": (64, False, {}),
    "ssend": (64, True, {}),                 # its ACK goes once
    "rndv": (2 * MiB, False, NOSTREAM),      # fetched, its FIN goes once
    "stream": (3 * MiB, False, {}),
}


@pytest.mark.parametrize("case", list(ARRIVE))
def test_a_match_interrupted_as_the_engine_returned_it_completes_once(case, tmp_path,
                                                                      monkeypatch):
    n, sync, env = ARRIVE[case]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fa, fb = _fifos(tmp_path)
    sender, (raised, left, *got) = values(run_ranks(_arrive_matched, 2, fa, fb, n, sync,
                                                    deadline=30))
    assert raised == 1 and left == 0, "the arrival was not interrupted: proves nothing"
    assert got == [True, True, False, 0, 0, 0, None]
    assert sender == (0, 0)


def _post_matched(comm, fa, fb, n, sync):
    """Rank 0 sends ``n`` bytes with tag 1 (Issend if ``sync``); once it is here
    (Iprobe), rank 1's Irecv for it is interrupted as Engine.post returns the
    match (the message off the unexpected queue, its actions not stored yet): the
    Irecv raises, the message must still reach the buffer and the sender's send
    complete; then tag 2 comes next."""
    if comm.rank == 0:
        return _send_then_tag2(comm, n, None, sync)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    while not comm.Iprobe(source=0, tag=1):
        pass
    shots = [1]
    post = t.engine.post

    def wrapped(r):
        acts = post(r)
        if acts and shots[0]:
            shots[0] -= 1
            _kill_self()
        return acts

    t.engine.post = wrapped
    b1, b2 = np.zeros(n, np.uint8), np.zeros(8, np.uint8)
    raised = None
    try:
        comm.Irecv(b1, source=0, tag=1)
    except BaseException as e:   # noqa: BLE001 - _Boom, from the handler
        raised = type(e).__name__
    comm.Recv(b2, source=0, tag=2)   # (progress meanwhile: rank 0's send completed)
    return (raised, shots[0], bool(np.array_equal(b1, _pattern(1, n))),
            sorted(set(b2.tolist())), len(t.engine.unexpected), len(t.engine.posted),
            len(t.ends), t.engine.arrived)


@pytest.mark.parametrize("case", ["eager", "ssend", "rndv"])
def test_an_irecv_interrupted_as_the_engine_matched_it_gets_its_message(case, tmp_path,
                                                                        monkeypatch):
    n, sync = {"eager": (64, False), "ssend": (64, True), "rndv": (2 * MiB, False)}[case]
    if case == "rndv":
        monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")
    fa, fb = _fifos(tmp_path)
    sender, (raised, left, *got) = values(run_ranks(_post_matched, 2, fa, fb, n, sync,
                                                    deadline=30))
    assert raised == "_Boom" and left == 0, "the Irecv was not interrupted: proves nothing"
    assert got == [True, [2], 0, 0, 0, None]
    assert sender == (0, 0)


# ------------------------------------------------------- an ACK's or FIN's control
def _control(comm, fa, fb, n, natural=False):
    """Rank 0 Issends ``n`` bytes (an ACK or a FIN comes back), interrupted as
    Engine.control returns from it (the send complete in the engine, the record
    not counted yet), or (``natural``) with a handler left pending as control
    deletes the send (``_Awaiting``); it waits again, then sends another message."""
    if comm.rank == 0:
        signal.signal(signal.SIGUSR1, _on_usr1)
        t = comm._t
        shots = [1]
        if natural:
            t.engine.awaiting = _Awaiting(t.engine.awaiting, shots)
        else:
            control = t.engine.control

            def wrapped(kind, sid):
                acts = control(kind, sid)
                if shots[0] and _called_from("_record"):
                    shots[0] -= 1
                    _kill_self()
                return acts

            t.engine.control = wrapped
        req = comm.Issend(_pattern(1, n), dest=1, tag=1)
        raised = _wait_through(req.Wait)
        comm.Send(np.full(8, 2, np.uint8), dest=1, tag=2)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        return raised, shots[0], t.npending, len(t.engine.awaiting)
    b1, b2 = np.zeros(n, np.uint8), np.zeros(8, np.uint8)
    comm.Recv(b1, source=0, tag=1)
    comm.Recv(b2, source=0, tag=2)
    more = comm.Iprobe(source=0, tag=MPI.ANY_TAG)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return bool(np.array_equal(b1, _pattern(1, n))), sorted(set(b2.tolist())), more


@pytest.mark.parametrize("n, env", [(64, {}), (2 * MiB, NOSTREAM)], ids=["ack", "fin"])
def test_an_ack_or_fin_interrupted_after_control_returned_is_applied_once(n, env, tmp_path,
                                                                         monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fa, fb = _fifos(tmp_path)
    (raised, left, npending, awaiting), receiver = values(
        run_ranks(_control, 2, fa, fb, n, deadline=30))
    assert raised == 1 and left == 0, "the control was not interrupted: proves nothing"
    assert (npending, awaiting) == (0, 0)
    assert receiver == (True, [2], False)


# ------------------------------------------------------- _serve's give()
def _served(comm, fa, fb, n):
    """Rank 1 posts receives for tags 1 and 2 (in the order rank 0 sends them:
    _serve gives both); rank 1 is interrupted as _give returns from tag 1's.  The
    first receive's Test then says done: the program reuses its buffer, which no
    later progress may write again."""
    if comm.rank == 0:
        _wait_go(fa)
        comm.Send(_pattern(1, n), dest=1, tag=1)
        comm.Send(_pattern(2, n), dest=1, tag=2)
        _go(fb)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        comm.Barrier()
        return comm._t.npending
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    give = t._give

    def wrapped(r, *a):
        give(r, *a)
        if shots[0] and _called_from("_serve"):
            shots[0] -= 1
            _kill_self()

    t._give = wrapped   # (_serve reads self._give)
    b1, b2 = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    reqs = [comm.Irecv(b1, source=0, tag=1), comm.Irecv(b2, source=0, tag=2)]
    _go(fa)
    _wait_go(fb)
    raised = 0
    try:
        MPI.Request.Waitall(reqs)
    except BaseException as e:   # noqa: BLE001 - _Boom, from the handler
        raised = type(e).__name__
    first = reqs[0].Test()   # (done: no progress)
    ok1 = bool(np.array_equal(b1, _pattern(1, n)))
    b1[:] = 0xEE   # (complete: the program's buffer again)
    reqs[1].Wait()
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    comm.Barrier()   # (progress again: nothing left for the first receive)
    return (raised, shots[0], first, ok1, sorted(set(b1.tolist())),
            bool(np.array_equal(b2, _pattern(2, n))), len(t.engine.posted),
            comm.Iprobe(source=0, tag=MPI.ANY_TAG))


@pytest.mark.parametrize("n", [8, 64])
def test_a_posted_receive_given_its_record_then_interrupted_is_served_once(n, tmp_path):
    fa, fb = _fifos(tmp_path)
    npending, (raised, left, *got) = values(run_ranks(_served, 2, fa, fb, n, deadline=30))
    assert raised == "_Boom" and left == 0, "the serve was not interrupted: proves nothing"
    assert got == [True, True, [0xEE], True, 0, False] and npending == 0


# ------------------------------------------------------- the same, with no wrapper
class _Trip:
    """``_TRIP[signum]``: makes ``signum`` pending (``_thread.interrupt_main``)
    through a subscript, not a call: no eval-breaker check of its own, so the
    handler runs at the interpreter's next check, wherever that is."""
    __getitem__ = staticmethod(_thread.interrupt_main)


_TRIP = _Trip()


class _Awaiting(dict):
    """An engine's ``awaiting`` whose deletion (Engine.control's commit) leaves a
    SIGUSR1 pending, once: its handler then runs at the next point where the
    interpreter checks, with no frame of the test's in between (3.10: as control
    returns to _record, before anything is stored; 3.11+: at the next backward
    jump or call that is not Python to Python)."""

    def __init__(self, d, shots):
        super().__init__(d)
        self.shots = shots

    def __delitem__(self, k):
        dict.__delitem__(self, k)
        if self.shots[0]:
            self.shots[0] -= 1
            _TRIP[signal.SIGUSR1]


@pytest.mark.parametrize("n, env", [(64, {}), (2 * MiB, NOSTREAM)], ids=["ack", "fin"])
def test_an_ack_or_fin_with_a_handler_pending_as_control_commits_is_applied_once(
        n, env, tmp_path, monkeypatch):
    """The handler's exception comes wherever the interpreter first checks after
    the engine applied the ACK or FIN (before the fix: in _record, 3.10 right as
    control returned, 3.11+ at the end of the loop over its actions; the record
    taken again: "unexpected ACK").  Where it comes after the record was counted
    (3.11+, after the fix) it may not reach the Wait at all: then raised is 0."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fa, fb = _fifos(tmp_path)
    (raised, left, npending, awaiting), receiver = values(
        run_ranks(_control, 2, fa, fb, n, True, deadline=30))
    assert left == 0, "the control was not reached: proves nothing"
    assert raised in (0, 1) and (npending, awaiting) == (0, 0)
    assert receiver == (True, [2], False)


# -- found by the merge review: the send an ACK/FIN completed is not kept (it holds
# the user's buffer), and a drain nested in the handler (an MPI call in it) that
# moved the tail past the record is not undone by the outer drain's except


def _kept(comm, n, sync):
    if comm.rank == 0:
        a = np.full(n, 5, np.uint8)
        w = weakref.ref(a)
        (comm.Ssend if sync else comm.Send)(a, dest=1, tag=1)
        del a
        gc.collect()
        alive = w() is not None
        ba = bytearray(n)
        (comm.Ssend if sync else comm.Send)(ba, dest=1, tag=2)
        try:
            ba.extend(b"x")
            resize = "ok"
        except BufferError as e:
            resize = f"BufferError: {e}"
        comm.Barrier()
        return alive, resize, type(comm._t.__dict__.get("replied")).__name__
    b = np.empty(n + 1, np.uint8)
    comm.Recv(b, source=0, tag=1)
    comm.Recv(b, source=0, tag=2)
    comm.Barrier()
    return None


def test_a_completed_rendezvous_send_does_not_keep_its_buffer():
    r0, _ = values(run_ranks(_kept, 2, 12 << 20, False, deadline=30))   # (FIN: above STREAM_MAX)
    assert r0[:2] == (False, "ok"), r0


def test_a_completed_ssend_does_not_keep_its_buffer():
    r0, _ = values(run_ranks(_kept, 2, 64, True, deadline=30))
    assert r0[:2] == (False, "ok"), r0


# a handler that progresses (Iprobe) then raises, at the ACK record before control
class _GetTrip(dict):
    def __init__(self, d, shots):
        super().__init__(d)
        self.shots = shots

    def get(self, k, default=None):
        v = dict.get(self, k, default)
        if self.shots[0] and _called_from("_record"):
            self.shots[0] -= 1
            _kill_self()
        return v


def _nested(comm, fa):
    if comm.rank == 1:
        b = np.empty(64, np.uint8)
        comm.Recv(b, source=0, tag=1)            # (the ACK goes to rank 0's ring)
        for tag in (2, 3):
            comm.Send(_pattern(tag, 64), dest=0, tag=tag)
        _go(fa)
        comm.Recv(np.empty(1, np.uint8), source=0, tag=0)
        return None
    from test_mmpi_progress_interrupted import _Boom
    calls = []

    def handler(*_):
        calls.append(comm.Iprobe(source=1, tag=99))   # (an MPI call in the handler)
        raise _Boom()

    signal.signal(signal.SIGUSR1, handler)
    t = comm._t
    shots = [1]
    t.engine.awaiting = _GetTrip(t.engine.awaiting, shots)
    req = comm.Issend(_pattern(1, 64), dest=1, tag=1)
    _wait_go(fa)   # (ring: ACK, tag 2, tag 3)
    raised = 0
    while True:
        try:
            req.Wait()
            break
        except _Boom:
            raised += 1
    got = []
    for _ in range(2):
        st = MPI.Status()
        b = np.zeros(64, np.uint8)
        comm.Recv(b, source=1, tag=MPI.ANY_TAG, status=st)
        got.append(st.Get_tag())
    more = []
    while comm.Iprobe(source=1, tag=MPI.ANY_TAG):
        st = MPI.Status()
        comm.Recv(np.zeros(64, np.uint8), source=1, tag=MPI.ANY_TAG, status=st)
        more.append(st.Get_tag())
    comm.Send(np.zeros(1, np.uint8), dest=1, tag=0)
    return raised, shots[0], calls, got, more


def test_a_drain_nested_in_the_handler_is_not_undone(tmp_path):
    fa = str(tmp_path / "a"); os.mkfifo(fa)
    (raised, left, calls, got, more), _ = values(run_ranks(_nested, 2, fa, deadline=30))
    assert raised == 1 and left == 0 and calls == [False], (raised, left, calls)
    assert got == [2, 3] and more == [], (got, more)


# (D) _drain's `t2 = self._serve(...)`: served and returned, tail not stored yet
