"""osu_bw's 8 B window, seventh round (issue 12): Isend's and Irecv's
remembered spec fused with the ring's inline paths.

``Comm.Isend`` of the spec it saw last calls one closure per message
(``senders[dst].spec``'s ``fused``: the slice of the spec's bytes and the
header-line record written in one call), and ``Comm.Irecv`` of its last spec
one closure that takes an inline record already in the ring or, on an empty
ring, posts the receive itself (``irecvs[src].spec``).  Real ranks.  Each
test checks what MPI says the buffers, statuses and errors hold, and fails on
a wrong message, context, order or a missed wake-up; each first checks that
the fused closures are the ones in use."""

from __future__ import annotations

import mmap
import time

import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C

from test_bw8c import _flag, _msg, _wait_flag
from test_mmpi_p2p import run_ranks, values


def _fused(send: bool) -> bool:
    """Whether the last remembered Isend (``send``) or Irecv spec calls the
    transport's fused closure."""
    fn = (C._last_isend if send else C._last_irecv)[8]
    return fn is not None and fn.__qualname__.endswith("spec.<locals>.fused")


def _sleepers(comm, total):
    """Phase 1: the receiver posts four receives on an empty ring and sleeps in
    Waitall while the sender sleeps, then the sender's fused Isends must wake it.
    Phase 2: the receiver sleeps while the sender fills a small ring one
    completed Isend at a time and sleeps on the full ring; the receiver's
    fused takes must wake it.  Every message checked in order."""
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        for j in range(3):   # warm-up: the spec remembered
            sbuf[:8] = _msg(j, 8)
            comm.Isend(spec, 1, 5).Wait()
        fused = _fused(True)
        comm.Recv(bytearray(1), 1, 9)   # the receiver has posted and waits
        time.sleep(0.5)
        reqs = []
        for j in range(4):
            sbuf[:8] = _msg(10 + j, 8)
            reqs.append(comm.Isend(spec, 1, 6 + j % 2))
            # (each one is in the ring when Isend returns: its buffer is free)
        MPI.Request.Waitall(reqs)
        comm.Recv(bytearray(1), 1, 9)   # the receiver will sleep now
        for j in range(total):
            sbuf[:8] = j.to_bytes(8, "little")
            comm.Isend(spec, 1, 5).Wait()
        return fused
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    warm = []
    for _ in range(3):
        comm.Irecv(spec, 0, 5).Wait()
        warm.append(bytes(rbuf[:8]))
    fused = _fused(False)
    reqs = [comm.Irecv(spec, 0, MPI.ANY_TAG) for _ in range(4)]
    posted = [type(r._op).__name__ for r in reqs]
    comm.Send(bytearray(1), 0, 9)
    sts = [MPI.Status() for _ in range(4)]
    MPI.Request.Waitall(reqs, sts)
    last = bytes(rbuf[:8])
    tags = [(s.Get_source(), s.Get_tag(), s.Get_count(MPI.BYTE)) for s in sts]
    comm.Send(bytearray(1), 0, 9)
    time.sleep(0.5)
    bad = []
    for j in range(total):
        comm.Irecv(spec, 0, 5).Wait()
        if int.from_bytes(rbuf[:8], "little") != j:
            bad.append(j)
    return fused, warm, posted, last, tags, bad, comm.Iprobe(0, MPI.ANY_TAG)


def test_sleepers_are_woken_by_the_fused_paths(monkeypatch):
    # a sleep lasts up to a minute: a missed wake-up outlasts the deadline
    monkeypatch.setenv("DRILLER_MMPI_SLEEP_MS", "60000")
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(64 << 10))   # 1024 records
    total = 3000
    s, r = values(run_ranks(_sleepers, 2, total, deadline=40))
    assert s is True
    fused, warm, posted, last, tags, bad, extra = r
    assert fused is True
    assert warm == [_msg(j, 8) for j in range(3)]
    assert posted == ["RecvOp"] * 4
    assert last == _msg(13, 8)   # posted alike: one view, the last copy ends in it
    assert tags == [(0, 6, 8), (0, 7, 8), (0, 6, 8), (0, 7, 8)]
    assert bad == []
    assert extra is False


def _contexts(comm, flag):
    """One spec sent alternately on a communicator and its Dup, its bytes changed
    between completed Isends; the receiver, behind, takes the Dup's first: each
    message arrives on its own communicator, in order, with its own bytes."""
    dup = comm.Dup()
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        out = []
        for j in range(40):
            sbuf[:8] = _msg(j, 8)
            c = dup if j % 2 else comm
            c.Isend(spec, 1, 5).Wait()
            c.Isend(spec, 1, 5).Wait()   # (twice: the spec's remembered closure, bound to
            # the communicator it was first sent on, must not serve the other one)
            out.append(_fused(True))
        _flag(flag)
        dup.Free()
        return out
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    got = []
    for c in (dup, comm):
        for _ in range(40):
            r = c.Irecv(spec, 0, 5)
            r.Wait()
            got.append(bytes(rbuf[:8]))
    fused = _fused(False)
    dup.Free()
    return got, fused, comm.Iprobe(0, MPI.ANY_TAG)


def test_one_spec_on_two_communicators(tmp_path):
    sent, (got, fused, extra) = values(run_ranks(_contexts, 2, str(tmp_path / "f")))
    assert all(sent)
    odd = [_msg(j, 8) for j in range(1, 40, 2) for _ in range(2)]
    even = [_msg(j, 8) for j in range(0, 40, 2) for _ in range(2)]
    assert got == odd + even
    assert fused is True
    assert extra is False


def _behind_window(comm, flag, n):
    """A window of one spec, its bytes changed between completed Isends; the
    receiver, behind, takes them one Irecv at a time from one spec (its fused
    inline take): each message's bytes and status, and whether it was done at
    once."""
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, n, MPI.BYTE]
        for j in range(200):
            sbuf[:n] = _msg(j, n)
            comm.Isend(spec, 1, 5 + j % 3).Wait()
        _flag(flag)
        return _fused(True)
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 32, MPI.BYTE]
    out = []
    for j in range(200):
        r = comm.Irecv(spec, 0, MPI.ANY_TAG if j % 2 else 5 + j % 3)
        st = MPI.Status()
        at_once = r.Test(st)
        out.append((bytes(rbuf[:n]) == _msg(j, n), st.Get_tag(), st.Get_count(MPI.BYTE),
                    at_once))
    return _fused(False), out, comm.Iprobe(0, MPI.ANY_TAG)


@pytest.mark.parametrize("n", [1, 8, 16, 17])
def test_a_receiver_behind_a_fused_sender(tmp_path, n):
    sent, (fused, out, extra) = values(run_ranks(_behind_window, 2, str(tmp_path / "f"), n))
    assert sent is (n <= 16)   # (17 B is not inline: Isend slices and calls the sender)
    assert fused is True
    assert [o[:3] for o in out] == [(True, 5 + j % 3, n) for j in range(200)]
    assert all(o[3] for o in out)
    assert extra is False


def _refusals(comm, flag):
    """A remembered send spec whose mmap is closed or whose bytearray shrank
    since: Isend refuses it as the general path does and sends nothing.  A
    remembered receive spec likewise, on records already there (the message
    stays for the next receive), also when the message would fit what is left
    of the buffer; and on an empty ring (the posting path)."""
    if comm.rank == 0:
        out = []
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        for j in range(2):
            sbuf[:8] = _msg(j, 8)
            comm.Isend(spec, 1, 5).Wait()
        out.append(_fused(True))
        sbuf.close()
        try:
            comm.Isend(spec, 1, 5)
            out.append("closed: no error")
        except (MmpiError, ValueError) as e:
            out.append(type(e).__name__)
        ba = bytearray(_msg(2, 8))
        bspec = [ba, 8, MPI.BYTE]
        comm.Isend(bspec, 1, 5).Wait()
        comm.Isend(bspec, 1, 5).Wait()
        out.append(_fused(True))
        del ba[4:]
        try:
            comm.Isend(bspec, 1, 5)
            out.append("shrunk: no error")
        except MmpiError:
            out.append("shrunk")
        comm.Isend([bytearray(_msg(5, 2)), 2, MPI.BYTE], 1, 5).Wait()
        ba.extend(_msg(3, 4))
        comm.Isend(bspec, 1, 5).Wait()   # bytes 0-3 of _msg(2), 0-3 of _msg(3)
        _flag(flag)
        comm.Recv(bytearray(1), 1, 9)
        comm.Isend([bytearray(_msg(4, 8)), 8, MPI.BYTE], 1, 5).Wait()
        return out
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    got = []
    for _ in range(2):
        comm.Irecv(spec, 0, 5).Wait()
        got.append(bytes(rbuf[:8]))
    ba = bytearray(8)
    bspec = [ba, 8, MPI.BYTE]
    for _ in range(2):
        comm.Irecv(bspec, 0, 5).Wait()
        got.append(bytes(ba))
    fused = _fused(False)
    del ba[4:]   # (the next message, of 2 bytes, would fit: the spec's 8 bytes do not)
    try:
        comm.Irecv(bspec, 0, 5).Wait()
        got.append(("shrunk: no error", bytes(ba)))
    except MmpiError:
        got.append("shrunk")
    ba.extend(bytes(4))
    st = MPI.Status()
    comm.Irecv(bspec, 0, 5).Wait(st)
    got.append((bytes(ba[:2]), st.Get_count(MPI.BYTE)))
    comm.Irecv(bspec, 0, 5).Wait()
    got.append(bytes(ba))
    rbuf.close()
    del ba[4:]
    try:
        comm.Irecv(bspec, 0, 5)   # the ring is empty: the posting path
        got.append("shrunk, empty ring: no error")
    except MmpiError:
        got.append("shrunk, empty ring")
    ba.extend(bytes(4))
    comm.Send(bytearray(1), 0, 9)
    comm.Irecv(bspec, 0, 5).Wait()
    got.append(bytes(ba))
    return fused, got, comm.Iprobe(0, MPI.ANY_TAG)


def test_refused_buffers_of_remembered_specs(tmp_path):
    out, (fused, got, extra) = values(run_ranks(_refusals, 2, str(tmp_path / "f")))
    assert out[0] is True and out[2] is True
    assert out[1] in ("MmpiError", "ValueError")
    assert out[3] == "shrunk"
    assert fused is True
    assert got[:4] == [_msg(0, 8), _msg(1, 8), _msg(2, 8), _msg(2, 8)]
    assert got[4] == "shrunk"
    assert got[5] == (_msg(5, 2), 2)
    assert got[6] == _msg(2, 8)[:4] + _msg(3, 4)
    assert got[7] == "shrunk, empty ring"
    assert got[8] == _msg(4, 8)
    assert extra is False


def _posted_then(comm):
    """Receives posted by the fused closure on an empty ring: a RecvOp with every
    field RecvOp() sets; two alike ones share one view and key (the buffer ends
    with the later one's message); one cancelled leaves its message to a later
    receive; Probe sees the messages in order."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 9)
        for j in range(4):
            comm.Send([bytearray(_msg(j, 8)), 8, MPI.BYTE], 1, 5)
        return None
    from driller.mmpi import _engine as E
    from driller.mmpi import _transport as T
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Cancel()   # (remembered; cancelled: nothing matched)
    a = comm.Irecv(spec, 0, 5)
    b = comm.Irecv(spec, 0, 5)
    c = comm.Irecv(spec, 0, 5)
    fused = _fused(False)
    op = a._op
    ref = T.RecvOp(0, 5, op.context, memoryview(bytearray(8)))
    ref.state = E.R_POSTED
    slots = [s for k in T.RecvOp.__mro__ for s in getattr(k, "__slots__", ())]
    wrong = []
    for s in slots:
        if s == "mv":
            if not (op.mv.nbytes == 8 and not op.mv.readonly):
                wrong.append(s)
        elif s == "key":
            if op.key != (id(rbuf), 8, 5, op.context):
                wrong.append(s)
        elif getattr(op, s) != getattr(ref, s):
            wrong.append(s)
    shared = b._op.key is a._op.key and b._op.mv is a._op.mv
    c.Cancel()
    comm.Send(bytearray(1), 0, 9)
    st = MPI.Status()
    a.Wait(st)   # (a and b share the buffer: only b's bytes are left in it)
    first = (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))
    b.Wait()
    second = bytes(rbuf[:8])
    cst = MPI.Status()
    c.Wait(cst)
    probe = MPI.Status()
    comm.Probe(0, 5, probe)
    rest = bytearray(8)
    comm.Recv(rest, 0, 5)
    third = bytes(rest)
    comm.Recv(rest, 0, 5)
    return (fused, len(slots), wrong, shared, first, second, cst.Is_cancelled(),
            probe.Get_count(MPI.BYTE), third, bytes(rest), comm.Iprobe(0, MPI.ANY_TAG))


def test_receives_posted_by_the_fused_closure():
    (fused, nslots, wrong, shared, first, second, cancelled, pcount, third, fourth,
     extra) = values(run_ranks(_posted_then, 2))[1]
    assert fused is True
    assert nslots > 10 and wrong == []
    assert shared is True
    assert first == (0, 5, 8)
    assert second == _msg(1, 8)
    assert cancelled is True
    assert pcount == 8
    assert (third, fourth) == (_msg(2, 8), _msg(3, 8))
    assert extra is False


def _tags_posted(comm):
    """Fused receives posted on an empty ring with tags 5, 6, ANY_TAG: alike only
    with the same tag, so each message meets the receive MPI says (messages of
    tags 5, 5, 6, 7: the tag-6 receive gets the third, ANY_TAG the second), which
    the statuses show; the fourth is left for a later receive."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 9)
        for j, t in enumerate((5, 5, 6, 7)):
            comm.Send([bytearray(_msg(j, 8)), 8, MPI.BYTE], 1, t)
        return None
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Cancel()   # (remembered; cancelled: nothing matched)
    reqs = [comm.Irecv(spec, 0, t) for t in (5, 6, MPI.ANY_TAG)]
    fused = _fused(False)
    comm.Send(bytearray(1), 0, 9)
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    rest = bytearray(8)
    st = MPI.Status()
    comm.Recv(rest, 0, MPI.ANY_TAG, st)
    return (fused, [s.Get_tag() for s in sts], bytes(rest), st.Get_tag(),
            comm.Iprobe(0, MPI.ANY_TAG))


def test_fused_receives_posted_with_different_tags():
    fused, tags, rest, tag, extra = values(run_ranks(_tags_posted, 2))[1]
    assert fused is True
    assert tags == [5, 6, 5]
    assert (rest, tag) == (_msg(3, 8), 7)
    assert extra is False


def _queued_first(comm, flag):
    """The receiver waits; the sender's Isends of fresh buffers fill the ring and
    queue (the sender does not progress them); the receiver then takes enough
    records to leave room for the whole queue; an Isend of a remembered spec
    (the fused closure) must still go behind the queue, not into that room:
    the receiver gets every message in order."""
    total = 1500   # (more than the 1024 records of a 64 KiB ring)
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        sbuf[:8] = (9999).to_bytes(8, "little")
        comm.Isend(spec, 1, 5).Wait()
        comm.Isend(spec, 1, 5).Wait()
        reqs = [comm.Isend([bytearray(j.to_bytes(8, "little")), 8, MPI.BYTE], 1, 5)
                for j in range(total)]
        sbuf[:8] = (5000).to_bytes(8, "little")
        reqs.append(comm.Isend(spec, 1, 5))   # (queued; the spec remembered again)
        _flag(flag)
        _wait_flag(flag + ".room")
        reqs.append(comm.Isend(spec, 1, 5))   # the fused closure, the queue not empty
        fused = _fused(True)
        _flag(flag + ".sent")
        reqs.append(comm.Isend([bytearray((6000).to_bytes(8, "little")), 8, MPI.BYTE], 1, 5))
        MPI.Request.Waitall(reqs)
        return fused
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    got = []
    for j in range(total + 5):
        if j == 800:   # (room for the 478 queued records and more)
            _flag(flag + ".room")
            _wait_flag(flag + ".sent")
        comm.Irecv(spec, 0, 5).Wait()
        got.append(int.from_bytes(rbuf[:8], "little"))
    return got, comm.Iprobe(0, MPI.ANY_TAG)


def test_a_fused_isend_does_not_overtake_queued_sends(monkeypatch, tmp_path):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(64 << 10))   # 1024 records
    fused, (got, extra) = values(run_ranks(_queued_first, 2, str(tmp_path / "f")))
    assert fused is True
    assert got == [9999, 9999] + list(range(1500)) + [5000, 5000, 6000]
    assert extra is False
