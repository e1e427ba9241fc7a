"""A message's arrival survives an exception raised while its match's actions run.

Once ``Engine.arrive`` matched a message from the ring (or queued it as
unexpected), the drain carries out the match's actions (the Deliver's copy, a
synchronous message's ACK, the Fetch of a rendezvous, streamed, split or pushed
one) while the record is still in the ring: the tail moves past it only after.
Each test sends a real SIGUSR1 to the receiving rank's own thread
(``signal.pthread_kill``) from a wrapper at one such step; the handler raises,
the rank catches it and waits again, and every message must arrive once, in
order, with its bytes; the sender's send completes (one ACK or FIN).  Before the
fix (integ22) the record, taken again, was matched anew: the interrupted receive
(matched, never complete) waited forever (the harness deadline) while its
message joined the unexpected queue, or (interrupted right after the engine
queued it unexpected) the message was queued twice and received twice.
Real forked ranks; no timed assertions.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values
from test_mmpi_progress_interrupted import (_called_from, _go, _kill_self, _on_usr1, _pattern,
                                            _wait_go, _wait_through)

MiB = 1 << 20

# where -> (message bytes, environment): the step of the arrival interrupted
CASES = {
    "deliver-before": (64, {}),            # the eager Deliver, before its copy
    "deliver-after": (64, {}),             # ... after it (the receive not complete yet)
    "ack-before": (64, {}),                # a synchronous message's ACK, before its put
    "ack-after": (64, {}),                 # ... after it
    "rndv-read": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0"}),   # the single copy
    "rndv-fetched": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0"}),
    "fin-before": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0"}),
    "fin-after": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0"}),
    "stream": (3 * MiB, {}),               # a streamed message's Fetch
    "split-cts": (4 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0",
                            "DRILLER_MMPI_SPLIT_MIN": str(MiB)}),   # after the CTS is out
    "split-read": (4 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0",
                             "DRILLER_MMPI_SPLIT_MIN": str(MiB)}),  # our half's copy
    "push": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0",
                       "DRILLER_MMPI_SINGLE_COPY": "0"}),   # after the PUSH is out
}
SYNC = ("ack-before", "ack-after")


def _arm(t, where, shots):
    """Have rank 1's transport ``t`` take one real SIGUSR1 at ``where``."""
    def shoot():
        if shots[0]:
            shots[0] -= 1
            _kill_self()

    def before(name, *callers):
        f = getattr(t, name)

        def wrapped(*a, **k):
            if _called_from(*callers):
                shoot()
            return f(*a, **k)

        setattr(t, name, wrapped)

    if where == "deliver-before":
        before("_deliver", "_record")
    elif where == "deliver-after":
        f = t._deliver

        def deliver(*a):
            f(*a)
            if _called_from("_record"):
                shoot()

        t._deliver = deliver
    elif where == "rndv-read":
        before("_read", "_fetch")
    elif where == "split-read":
        before("_read", "_split")
    elif where == "stream":
        before("_fetch_stream", "_record")
    elif where == "rndv-fetched":
        f = t.engine.fetched

        def fetched(r):
            if _called_from("_fetch"):
                shoot()
            return f(r)

        t.engine.fetched = fetched
    else:
        kind, step = {"ack": T.K_ACK, "fin": T.K_FIN, "split": T.K_CTS,
                      "push": T.K_PUSH}[where.split("-")[0]], where.split("-")[-1]
        put = t._put

        def put_cut(*a, **k):
            hit = a[1] == kind and _called_from("_record")
            if hit and step == "before":
                shoot()
            ok = put(*a, **k)
            if hit and ok and step != "before":
                shoot()
            return ok

        t._put = put_cut


def _arrival(comm, fifo, where, n):
    """Rank 1 posts receives for tags 2 then 1 (so the record of tag 1 goes through
    Engine.arrive, not to the first posted); rank 0 sends ``n`` bytes with tag 1,
    then 8 bytes with tag 2; rank 1 is interrupted once at ``where``."""
    if comm.rank == 0:
        _wait_go(fifo)
        (comm.Ssend if where in SYNC else comm.Send)(_pattern(1, n), dest=1, tag=1)
        comm.Send(np.full(8, 2, np.uint8), dest=1, tag=2)
        comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
        t = comm._t
        return t.npending, len(t.engine.awaiting)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    shots = [1]
    _arm(t, where, shots)
    b2, b1 = np.zeros(8, np.uint8), np.zeros(n, np.uint8)
    reqs = [comm.Irecv(b2, source=0, tag=2), comm.Irecv(b1, source=0, tag=1)]
    _go(fifo)
    raised = _wait_through(lambda: MPI.Request.Waitall(reqs))
    # nothing of it left behind: a third message comes next
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return (raised, shots[0], bool(np.array_equal(b1, _pattern(1, n))),
            sorted(set(b2.tolist())),
            len(t.engine.unexpected), len(getattr(t, "ends", ())), len(t.splits), len(t.sinks),
            len(t.streams))


@pytest.mark.parametrize("where", list(CASES))
def test_an_arrival_interrupted_among_its_actions_completes_once(where, tmp_path, monkeypatch):
    n, env = CASES[where]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    sender, (raised, left, *got) = values(run_ranks(_arrival, 2, fifo, where, n, deadline=30))
    assert raised == 1 and left == 0, "the arrival was not interrupted: proves nothing"
    assert got == [True, [2], 0, 0, 0, 0, 0]
    assert sender == (0, 0)


def _unexpected(comm, fifo, n):
    """Rank 0 sends tags 1, 2, 3 before rank 1 posts anything; rank 1's drain
    (its Probe for tag 3) is interrupted right after the engine queued tag 1."""
    if comm.rank == 0:
        return _send_three(comm, fifo, n)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    arrive = t.engine.arrive
    shots = [1]

    def arrive_then_raise(m):
        acts = arrive(m)
        if not acts and shots[0] and m.tag == 1:
            shots[0] -= 1
            _kill_self()
        return acts

    t.engine.arrive = arrive_then_raise
    _wait_go(fifo)
    return (*_probe_then_receive_three(comm, n), shots[0])


def _send_three(comm, fifo, n):
    """Rank 0's side: ``n`` bytes with tags 1, 2, 3, then tell rank 1 (``fifo``)
    and wait until it is done (tag 0); its npending."""
    for tag in (1, 2, 3):
        comm.Send(_pattern(tag, n), dest=1, tag=tag)
    _go(fifo)
    comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
    return comm._t.npending


def _probe_then_receive_three(comm, n):
    """Rank 1's side: Probe for tag 3 (through the exceptions), then receive the
    three messages of tags 1, 2, 3 (any tag): (times raised, [(tag, bytes right)],
    another message left), having told rank 0 (tag 0) it is done."""
    raised = _wait_through(lambda: comm.Probe(source=0, tag=3))
    got = []
    for _ in range(3):
        buf = np.zeros(n, np.uint8)
        st = MPI.Status()
        comm.Recv(buf, source=0, tag=MPI.ANY_TAG, status=st)
        got.append((st.Get_tag(), bool(np.array_equal(buf, _pattern(st.Get_tag(), n)))))
    left = comm.Iprobe(source=0, tag=MPI.ANY_TAG)
    comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
    return raised, got, left


def test_an_unexpected_arrival_interrupted_is_queued_once(tmp_path):
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    npending, (raised, got, more, left) = values(
        run_ranks(_unexpected, 2, fifo, 64, deadline=30))
    assert raised == 1 and left == 0, "the arrival was not interrupted: proves nothing"
    assert got == [(1, True), (2, True), (3, True)] and more is False and npending == 0


# where -> (message bytes, environment): a receive posted on a message already
# here (unexpected), its match's actions interrupted before or after a step
POSTED = {
    "rndv-read-after": (2 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0"}),    # the single copy
    "split-read-before": (4 * MiB, {"DRILLER_MMPI_STREAM_MAX": "0",
                                    "DRILLER_MMPI_SPLIT_MIN": str(MiB)}),  # our half's
    "ack-before": (64, {}),                                     # a sync eager's ACK's put
    "ack-after": (64, {}),
}


def _send_then_tag2(comm, n, fifo=None, sync=True):
    """Rank 0's side: ``n`` bytes with tag 1 (Issend, or Isend if not ``sync``),
    waited for (after rank 1's go on ``fifo``, unless None), then 8 bytes of 2s
    with tag 2: (npending, awaiting)."""
    req = (comm.Issend if sync else comm.Isend)(_pattern(1, n), dest=1, tag=1)
    if fifo is not None:
        _wait_go(fifo)
    req.Wait()
    comm.Send(np.full(8, 2, np.uint8), dest=1, tag=2)
    t = comm._t
    return t.npending, len(t.engine.awaiting)


def _posted_late(comm, fifo, where, n):
    """Rank 0 Issends ``n`` bytes (tag 1); rank 1 waits until it is here (Iprobe),
    then Recvs it, interrupted once at ``where``: the Recv raises, the message must
    still reach its buffer whole and rank 0's Issend complete (its ACK or FIN)."""
    if comm.rank == 0:
        return _send_then_tag2(comm, n, fifo)   # (the go: rank 1's Recv raised)
    signal.signal(signal.SIGUSR1, _on_usr1)
    t = comm._t
    while not comm.Iprobe(source=0, tag=1):
        pass
    shots = [1]
    step = where.split("-")[-1]

    def shoot():
        if shots[0]:
            shots[0] -= 1
            _kill_self()

    if where.startswith("ack"):
        put = t._put

        def put_cut(*a, **k):
            hit = a[1] == T.K_ACK
            if hit and step == "before":
                shoot()
            ok = put(*a, **k)
            if hit and ok and step == "after":
                shoot()
            return ok

        t._put = put_cut
    else:
        read = t._read
        caller = "_fetch" if where.startswith("rndv") else "_split"

        def read_cut(*a, **k):
            hit = _called_from(caller)
            if hit and step == "before":
                shoot()   # (nothing of our part copied yet)
            r = read(*a, **k)
            if hit and step == "after":
                shoot()   # (the data in place, the FIN not out)
            return r

        t._read = read_cut
    b1 = np.zeros(n, np.uint8)
    raised = None
    try:
        comm.Recv(b1, source=0, tag=1)
    except BaseException as e:   # noqa: BLE001 - _Boom, from the handler
        raised = type(e).__name__
    _go(fifo)
    b2 = np.zeros(8, np.uint8)
    comm.Recv(b2, source=0, tag=2)   # (progress meanwhile: rank 0's Issend completed)
    return (raised, shots[0], bool(np.array_equal(b1, _pattern(1, n))), sorted(set(b2.tolist())),
            len(t.engine.unexpected), len(t.engine.posted), len(t.ends), len(t.splits),
            len(t.sinks))


@pytest.mark.parametrize("where", list(POSTED))
def test_a_receive_posted_on_a_message_here_interrupted_completes_once(where, tmp_path,
                                                                         monkeypatch):
    n, env = POSTED[where]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    sender, (raised, left, *got) = values(run_ranks(_posted_late, 2, fifo, where, n,
                                                    deadline=30))
    assert raised == "_Boom" and left == 0, "the receive was not interrupted: proves nothing"
    assert got == [True, [2], 0, 0, 0, 0, 0]
    assert sender == (0, 0)
