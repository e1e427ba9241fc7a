"""osu_bw's 8 B window, eighth round (issue 12): the deferred take.

``Comm.Irecv`` of its remembered spec, meeting an inline record already in the
ring, takes it (the ring's local tail moves past it) but leaves its copy and
the tail's publishing to the end of the run (``DeferredOp``): a Wait, Test,
Get_status, Waitany..., another receive or probe, any wait, a change of buffer,
size or tag.  Real ranks; the sender's whole window is in the ring before the
receiver starts (signalled through a file, not a message).  Each test checks
what MPI says the buffers, statuses and errors hold, and first that the
receives were deferred ones."""

from __future__ import annotations

import mmap
import os
import signal
import time

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError

from test_bw8c import _flag, _msg, _send_window, _wait_flag, child_says
from test_mmpi_p2p import run_ranks, values


def _kinds(reqs):
    return [type(r._op).__name__ for r in reqs]


def _order(comm, flag):
    """Eight 8 B messages of tag 5 then one of tag 6: four deferred receives,
    then a probe, a receive of another buffer and the rest: each sees the next
    message; the deferred ones' buffer holds the fourth once they complete."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(8)] + [(_msg(8, 8), 6)], flag)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    first = comm.Irecv(spec, 0, 5)   # (the spec remembered: taken the general way)
    first.Wait()
    out = {"first": bytes(rbuf[:8])}
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(3)]
    out["kinds"] = _kinds(reqs)
    other = bytearray(8)
    comm.Recv(other, 0, 5)
    out["other"] = bytes(other)
    st = MPI.Status()
    out["probe"] = (comm.Iprobe(0, MPI.ANY_TAG, st), st.Get_tag(), st.Get_count(MPI.BYTE))
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    out["after"] = bytes(rbuf[:8])
    out["statuses"] = [(s.Get_source(), s.Get_tag(), s.Get_count(MPI.BYTE)) for s in sts]
    more = [comm.Irecv(spec, 0, 5) for _ in range(3)]   # (the probe queued them:
    MPI.Request.Waitall(more)                           # matched the general way)
    out["last"] = bytes(rbuf[:8])
    st = MPI.Status()
    comm.Recv(other, 0, MPI.ANY_TAG, st)
    out["tail"] = (bytes(other), st.Get_tag(), comm.Iprobe(0, MPI.ANY_TAG))
    return out


def test_deferred_takes_keep_the_order(tmp_path):
    out = values(run_ranks(_order, 2, str(tmp_path / "f")))[1]
    assert out["first"] == _msg(0, 8)
    assert out["kinds"] == ["DeferredOp"] * 3
    assert out["other"] == _msg(4, 8)   # the fifth message: the deferred ones are taken
    assert out["probe"] == (True, 5, 8)
    assert out["after"] == _msg(3, 8)
    assert out["statuses"] == [(0, 5, 8)] * 3
    assert out["last"] == _msg(7, 8)
    assert out["tail"] == (_msg(8, 8), 6, False)


def _requests(comm, flag):
    """Test, Get_status, Cancel, Free, equality of deferred requests; Waitany
    and Testsome mixing them with a posted receive and a send; sizes and
    buffers changing within a window."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(11)], flag)
        _wait_flag(flag + ".more")   # (Testsome's progress pass queued the first)
        msgs = [(_msg(20, 8), 5), (_msg(21, 4), 5), (_msg(22, 3), 5), (_msg(14, 8), 5)]
        _send_window(comm, msgs, flag + ".two")
        comm.Recv(bytearray(1), 1, 8)
        comm.Send(b"late", 1, 7)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()                                    # 0
    out = {}
    a, b = comm.Irecv(spec, 0, 5), comm.Irecv(spec, 0, 5)            # 1, 2
    out["kinds"] = _kinds([a, b])
    out["eq"] = (a == b, a != b, MPI.Request(a) == a, bool(a))
    st = MPI.Status()
    out["test"] = (a.Test(st), st.Get_tag(), st.Get_count(MPI.BYTE), bytes(rbuf[:8]),
                   a == MPI.REQUEST_NULL)
    c = comm.Irecv(spec, 0, 5)                                       # 3
    st = MPI.Status()
    out["get_status"] = (c.Get_status(st), st.Get_source(), st.Get_count(MPI.BYTE),
                         bytes(rbuf[:8]), c == MPI.REQUEST_NULL)
    d = comm.Irecv(spec, 0, 5)                                       # 4
    d.Cancel()
    st = MPI.Status()
    b.Free()
    out["cancel"] = (d.Test(st), st.Is_cancelled(), st.Get_count(MPI.BYTE), bytes(rbuf[:8]),
                     b == MPI.REQUEST_NULL)
    e = comm.Irecv(spec, 0, 5)                                       # 5
    e.Free()
    f = comm.Irecv(spec, 0, 5)                                       # 6
    f.Wait()
    out["freed"] = bytes(rbuf[:8])
    some = [comm.Irecv(spec, 0, 5) for _ in range(4)]                # 7..10
    out["some"] = (_kinds(some), MPI.Request.Testsome(some), bytes(rbuf[:8]))
    _flag(flag + ".more")
    _wait_flag(flag + ".two")
    # messages of 8, 4 and 3 bytes into one buffer: each size change ends a run;
    # the buffer's bytes as each copy in order leaves them
    sized = [comm.Irecv(spec, 0, 5) for _ in range(3)]              # 11..13
    kinds = _kinds(sized)
    sts = [MPI.Status() for _ in sized]
    MPI.Request.Waitall(sized, sts)
    out["sized"] = (kinds, bytes(rbuf[:8]), [s.Get_count(MPI.BYTE) for s in sts])
    late = bytearray(4)
    mixed = [comm.Irecv(spec, 0, 5), comm.Irecv(late, 0, 7)]          # 14
    out["mixed"] = _kinds(mixed)
    st = MPI.Status()
    i = MPI.Request.Waitany(mixed, st)   # ("late" is sent once x arrives)
    out["waitany"] = (i, bytes(rbuf[:8]), st.Get_tag())
    mixed.append(comm.Isend(b"x", 0, 8))
    MPI.Request.Waitall(mixed)
    out["late"] = bytes(late)
    out["left"] = comm.Iprobe(0, MPI.ANY_TAG)
    return out


def test_deferred_requests(tmp_path):
    out = values(run_ranks(_requests, 2, str(tmp_path / "f")))[1]
    assert out["kinds"] == ["DeferredOp"] * 2
    assert out["eq"] == (False, True, True, True)
    assert out["test"] == (True, 5, 8, _msg(2, 8), True)   # the run's copy made
    assert out["get_status"] == (True, 0, 8, _msg(3, 8), False)
    assert out["cancel"] == (True, False, 8, _msg(4, 8), True)   # matched: not cancelled
    assert out["freed"] == _msg(6, 8)
    assert out["mixed"] == ["DeferredOp", "RecvOp"]
    assert out["waitany"] == (0, _msg(14, 8), 5)
    assert out["late"] == b"late"
    assert out["some"] == (["DeferredOp"] * 4, [0, 1, 2, 3], _msg(10, 8))
    m20, m21, m22 = _msg(20, 8), _msg(21, 4), _msg(22, 3)
    assert out["sized"] == (["DeferredOp"] * 3, m22 + m21[3:] + m20[4:], [8, 4, 3])
    assert out["left"] is False


def _ring_held(comm, flag, n, m, fork):
    """``n`` records taken, deferred (and with ``fork``, a forked child's Wait on
    one of them: it raises, its transport unusable, and publishes nothing); the
    sender then sends ``m`` more, more than a ring: none may land in the slots
    of the deferred ones before their copy, so the buffer holds the run's last
    message."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(n)], flag)
        _wait_flag(flag + ".taken")
        reqs = [comm.Isend(_msg(1000 + j, 8), 1, 5) for j in range(m)]
        MPI.Request.Waitall(reqs)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(n - 1)]
    kinds = set(_kinds(reqs))
    said = child_says(reqs[0].Wait) if fork else None
    _flag(flag + ".taken")
    time.sleep(1.0)   # (the sender's next ring's worth has had time to come)
    MPI.Request.Waitall(reqs)
    held = bytes(rbuf[:8])
    bad = []
    for j in range(m):
        comm.Irecv(spec, 0, 5).Wait()
        if bytes(rbuf[:8]) != _msg(1000 + j, 8):
            bad.append(j)
    return kinds, said, held, bad


@pytest.mark.parametrize("fork", [False, True])
def test_the_ring_slots_of_a_deferred_run_are_not_reused(monkeypatch, tmp_path, fork):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(16 << 10))   # 256 records
    n = 200   # (the sender's first window fits; the second must wait for the copy)
    out = values(run_ranks(_ring_held, 2, str(tmp_path / "f"), n, 300, fork))[1]
    assert out == ({"DeferredOp"}, "fork" if fork else None, _msg(n - 1, 8), [])


def _peer_dies(comm, flag):
    """The sender dies (SIGKILL) after its window is in the ring and the
    receiver took it, deferred: the receives complete with their bytes; the
    next one needing the dead rank fails with PeerDiedError."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(6)], flag)
        _wait_flag(flag + ".taken")
        os.kill(os.getpid(), signal.SIGKILL)
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(5)]
    kinds = set(_kinds(reqs))
    _flag(flag + ".taken")
    time.sleep(1.0)   # (dead by now, and marked by the parent)
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    got = (bytes(rbuf[:8]), [s.Get_count(MPI.BYTE) for s in sts])
    try:
        comm.Recv(np.zeros(8, np.uint8), 0, 5)
        after = "received?!"
    except Exception as e:   # noqa: BLE001 - its type is the result
        after = type(e).__name__
    return kinds, got, after


def test_a_peer_dies_while_takes_are_deferred(tmp_path):
    res = run_ranks(_peer_dies, 2, str(tmp_path / "f"))
    assert res[0][0] is False and res[0][1][0] == "Killed"
    ok, out = res[1]
    assert ok, out
    assert out == ({"DeferredOp"}, (_msg(5, 8), [8] * 5), "PeerDiedError")


def _noncontig(comm, flag):
    """A deferred take, then the same spec list changed in place to a strided
    datatype (every other byte): the strided receives are not deferred, and
    scatter over the deferred one's bytes (copied first)."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(0, 8), 5), (_msg(1, 8), 5), (_msg(2, 4), 5),
                            (_msg(3, 4), 5)], flag)
        return None
    _wait_flag(flag)
    vec = MPI.BYTE.Create_vector(4, 1, 2).Commit()
    rbuf = bytearray(8)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()
    r1 = comm.Irecv(spec, 0, 5)
    spec[1] = 1
    spec[2] = vec
    r2 = comm.Irecv(spec, 0, 5)
    kinds = _kinds([r1, r2])
    MPI.Request.Waitall([r1, r2])
    first = bytes(rbuf)
    r3 = comm.Irecv(spec, 0, 5)
    kinds += _kinds([r3])
    r3.Wait()
    vec.Free()
    return kinds, first, bytes(rbuf)


def test_a_strided_spec_is_not_deferred(tmp_path):
    kinds, first, last = values(run_ranks(_noncontig, 2, str(tmp_path / "f")))[1]
    assert kinds[0] == "DeferredOp" and "DeferredOp" not in kinds[1:]
    m1, m2, m3 = _msg(1, 8), _msg(2, 4), _msg(3, 4)
    assert first == bytes([m2[0], m1[1], m2[1], m1[3], m2[2], m1[5], m2[3], m1[7]])
    assert last == bytes([m3[0], m1[1], m3[1], m1[3], m3[2], m1[5], m3[3], m1[7]])


def _send_four(comm, flag):
    """Rank 0's part: four 8 B messages of tag 5, all in the ring before rank 1 starts."""
    _send_window(comm, [(_msg(j, 8), 5) for j in range(4)], flag)


def _spec_remembered(comm, flag):
    """Rank 1's start: the first message received into an 8-byte buffer through a
    spec list, which Irecv then remembers; returns (buffer, spec)."""
    _wait_flag(flag)
    rbuf = bytearray(8)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()
    return rbuf, spec


def _shrunk(comm, flag):
    """The receive buffer shrunk between a deferred take and its Wait (a program
    error): the Wait raises MmpiError saying so; the next receives go on."""
    if comm.rank == 0:
        return _send_four(comm, flag)
    rbuf, spec = _spec_remembered(comm, flag)
    r = comm.Irecv(spec, 0, 5)
    kind = type(r._op).__name__
    del rbuf[4:]
    try:
        r.Wait()
        err = None
    except MmpiError as e:
        err = str(e)
    other = bytearray(8)
    comm.Recv(other, 0, 5)
    comm.Recv(bytearray(8), 0, 5)
    return kind, err, bytes(other), bytes(rbuf), comm.Iprobe(0, MPI.ANY_TAG)


def test_a_buffer_shrunk_before_its_deferred_copy(tmp_path):
    kind, err, other, rbuf, left = values(run_ranks(_shrunk, 2, str(tmp_path / "f")))[1]
    assert kind == "DeferredOp"
    assert err is not None and "receive buffer" in err and "8-byte" in err \
        and "until its Wait or Test" in err
    assert other == _msg(2, 8)
    assert rbuf == _msg(0, 4)
    assert left is False


def _interrupted_flush(comm, flag):
    """A deferred run's copy interrupted by an exception (as a signal handler's would
    be, stood in for by the copy raising once): the next Waitall must still leave the
    run's last message in the buffer, and the ring's tail must be published."""
    from driller.mmpi import _transport as T
    if comm.rank == 0:
        return _send_four(comm, flag)
    rbuf, spec = _spec_remembered(comm, flag)
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(3)]
    kinds = _kinds(reqs)
    put = T._PUTS[8]

    def interrupted(*a):
        T._PUTS[8] = put
        raise KeyboardInterrupt

    T._PUTS[8] = interrupted
    try:
        MPI.Request.Waitall(reqs)
        raised = False
    except KeyboardInterrupt:
        raised = True
    finally:
        T._PUTS[8] = put
    MPI.Request.Waitall(reqs)
    t = comm._cx.t
    published = t.words[t.in_tailw[0]] == t.in_tail[0]
    return kinds, raised, bytes(rbuf), published


def test_an_interrupted_deferred_copy_is_made_at_the_next_wait(tmp_path):
    kinds, raised, got, published = values(run_ranks(_interrupted_flush, 2,
                                                      str(tmp_path / "f")))[1]
    assert kinds == ["DeferredOp"] * 3 and raised
    assert got == _msg(3, 8)
    assert published
