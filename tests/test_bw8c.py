"""osu_bw's 8 B window, sixth round (issue 12): a receiver behind its sender.

``irecvs[src]`` remembers a head it read from the source's ring (``seen``),
so that records below it are known to be there without reading the head's
cache line again, and takes an inline record (1..16 bytes) itself when no
receive is posted.  Real ranks; the sender puts its whole window into the ring
first and says so through a file (not a message: a message on the same ring
would make the receiver drain the window into the unexpected queue), so the
receiver's ``Irecv``s meet records already there, as osu_bw's receiver does
between processes.  Each test checks what MPI says the buffers, statuses and
errors hold, and fails on a wrong message, size or order."""

from __future__ import annotations

import mmap
import os
import time

import pytest

from driller import MPI
from driller.errors import MmpiError

from test_bw8 import isend_window
from test_mmpi_p2p import run_ranks, values


def _msg(j: int, n: int) -> bytes:
    return bytes((65 + j * 7 + i) % 251 for i in range(n))


def _flag(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write("1")
    os.rename(path + ".tmp", path)


def _wait_flag(path: str) -> None:
    end = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.001)


def child_says(call) -> str:
    """``call()`` in a forked child of this rank: "fork" if it raised MmpiError
    naming the fork, "done" if it returned, else the error's text."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - child
        try:
            call()
            said = "done"
        except MmpiError as e:
            said = "fork" if "fork" in str(e) else str(e)
        os.write(wfd, said.encode())
        os._exit(0)
    os.close(wfd)
    os.waitpid(pid, 0)
    said = os.read(rfd, 200).decode()
    os.close(rfd)
    return said


def _send_window(comm, msgs, flag):
    """Rank 0: every (bytes, tag) of ``msgs`` through one ``[mmap, n, BYTE]`` spec,
    completed, then the flag."""
    isend_window(comm, msgs)
    _flag(flag)


def _behind_mixed(comm, sizes, flag, windows, kind="spec"):
    """Windows of messages of the given sizes (inline ones and not), received one
    by one from one spec (``kind`` "spec": ``[mmap, 256, BYTE]``; "numpy": a bare
    numpy array, taken through a view) after they all arrived: each receive's
    bytes, status and whether it was done at once."""
    if comm.rank == 0:
        for w in range(windows):
            _send_window(comm, [(_msg(w * 100 + j, n), 5) for j, n in enumerate(sizes)],
                         f"{flag}.{w}")
            _wait_flag(f"{flag}.{w}.back")
        return None
    rbuf = mmap.mmap(-1, 4096)
    spec = [rbuf, 256, MPI.BYTE]
    if kind == "numpy":
        import numpy as np
        rbuf = spec = np.zeros(256, np.uint8)
    out = []
    for w in range(windows):
        _wait_flag(f"{flag}.{w}")
        for j, n in enumerate(sizes):
            r = comm.Irecv(spec, 0, 5)
            st = MPI.Status()
            at_once = r.Test(st)   # (done: r is REQUEST_NULL now, Wait a no-op)
            if not at_once:
                r.Wait(st)
            out.append((bytes(rbuf[:n]) == _msg(w * 100 + j, n), st.Get_source(),
                        st.Get_tag(), st.Get_count(MPI.BYTE), at_once))
        _flag(f"{flag}.{w}.back")
    return out


@pytest.mark.parametrize("sizes,kind", [
    ([8] * 64, "spec"),
    ([1, 16, 8, 0, 17, 8, 8, 40, 2, 16, 200, 15] * 5, "spec"),
    ([1, 16, 8, 0, 17, 8, 8, 40, 2, 16, 200, 15] * 5, "numpy"),
], ids=["8B", "mixed", "numpy"])
def test_a_receiver_behind_takes_every_message_in_order(tmp_path, sizes, kind):
    out = values(run_ranks(_behind_mixed, 2, sizes, str(tmp_path / "f"), 3, kind))[1]
    assert len(out) == 3 * len(sizes)
    for k, (same, src, tag, count, at_once) in enumerate(out):
        n = sizes[k % len(sizes)]
        assert (same, src, tag, count) == (True, 0, 5, n), k
        if 0 < n <= 16:
            assert at_once is True, k   # an inline record already there: taken by Irecv


def _behind_tags(comm, flag):
    """Tags 5 and 6 alternating, then ANY_SOURCE and ANY_TAG receives among
    specific ones: each receive gets the earliest message it matches."""
    msgs = [(_msg(j, 8), 5 + j % 2) for j in range(12)]
    if comm.rank == 0:
        _send_window(comm, msgs, flag)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    got = []
    # tag 6 first: the record at the ring's tail is a tag-5 one
    for src, tag in [(0, 6), (0, 5), (MPI.ANY_SOURCE, 5), (0, MPI.ANY_TAG), (0, 5),
                     (0, 6), (0, MPI.ANY_TAG), (MPI.ANY_SOURCE, MPI.ANY_TAG), (0, 6),
                     (0, 5), (0, 6), (0, 5)]:
        st = MPI.Status()
        comm.Irecv(spec, src, tag).Wait(st)
        got.append((bytes(rbuf[:8]), st.Get_tag()))
    return got


def test_tags_and_wildcards_among_records_already_there(tmp_path):
    got = values(run_ranks(_behind_tags, 2, str(tmp_path / "f")))[1]
    m = [(_msg(j, 8), 5 + j % 2) for j in range(12)]
    # per tag in order: tag 5 = m0 m2 m4 ..., tag 6 = m1 m3 m5 ...; ANY_TAG takes the earliest
    assert got == [m[1], m[0], m[2], m[3], m[4], m[5], m[6], m[7], m[9], m[8], m[11], m[10]]


def _behind_requests(comm, flag):
    """Requests of receives done at once: Test, Cancel (nothing to cancel: the
    message stays received), Free (REQUEST_NULL in place), equality, Get_status,
    Waitall/Waitany/Testall over a mix with a posted receive."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(8)], flag)
        comm.Send(bytearray(b"late"), 1, 7)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    out = {}
    a = comm.Irecv(spec, 0, 5)
    b = comm.Irecv(spec, 0, 5)
    out["distinct"] = (a == b, a != b, MPI.Request(a) == a)
    b.Get_status()   # (complete: MPI lets its buffer be read now, not before)
    out["b"] = bytes(rbuf[:8])
    a.Cancel()
    st = MPI.Status()
    out["a"] = (a.Test(st), st.Is_cancelled(), st.Get_count(MPI.BYTE), st.Get_tag(), a)
    b.Free()
    out["freed"] = b == MPI.REQUEST_NULL
    c = comm.Irecv(spec, 0, 5)
    st = MPI.Status()
    out["status"] = (c.Get_status(st), st.Get_source(), st.Get_count(MPI.BYTE))
    late = bytearray(4)
    reqs = [c, comm.Irecv(late, 0, 7), comm.Irecv(spec, 0, 5)]
    i = MPI.Request.Waitany(reqs)
    MPI.Request.Waitall(reqs)
    out["mix"] = (i, bytes(late), bytes(rbuf[:8]), MPI.Request.Testall(reqs),
                  all(r == MPI.REQUEST_NULL for r in reqs))
    rest = [comm.Irecv(spec, 0, 5) for _ in range(4)]
    MPI.Request.Waitall(rest)
    out["last"] = bytes(rbuf[:8])
    out["left"] = comm.Iprobe(0, MPI.ANY_TAG)
    return out


def test_requests_of_receives_taken_at_once(tmp_path):
    out = values(run_ranks(_behind_requests, 2, str(tmp_path / "f")))[1]
    assert out["distinct"] == (False, True, True)
    assert out["b"] == _msg(1, 8)
    assert out["a"] == (True, False, 8, 5, MPI.REQUEST_NULL)
    assert out["freed"] is True
    assert out["status"] == (True, 0, 8)
    assert out["mix"] == (0, b"late", _msg(3, 8), True, True)
    assert out["last"] == _msg(7, 8)
    assert out["left"] is False


def _behind_refused(comm, flag):
    """A message larger than the receive (truncation), a receive buffer closed or
    shrunk since the spec's last use: each refused with its error, the next
    receive gets the next message."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(0, 8), 5), (_msg(1, 8), 5), (_msg(2, 2), 5),
                            (_msg(3, 8), 5), (_msg(4, 16), 5)]
                     + [(_msg(j, 8), 5) for j in range(5, 8)], flag)
        return None
    _wait_flag(flag)
    out = []
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    comm.Irecv(spec, 0, 5).Wait()                        # message 0
    out.append(bytes(rbuf[:8]))
    rbuf.close()
    try:
        comm.Irecv(spec, 0, 5)
        out.append("closed: no error")
    except (MmpiError, ValueError) as e:
        out.append(type(e).__name__)
    ba = bytearray(8)
    bspec = [ba, 8, MPI.BYTE]
    comm.Irecv(bspec, 0, 5).Wait()                       # message 1
    out.append(bytes(ba))
    del ba[4:]   # (message 2, of 2 bytes, would fit: the spec's 8 bytes do not)
    try:
        comm.Irecv(bspec, 0, 5).Wait()
        out.append(("shrunk: no error", bytes(ba)))
    except MmpiError:
        out.append(("shrunk", len(ba)))
    ba.extend(bytes(4))
    comm.Irecv(bspec, 0, 5).Wait()                       # message 2
    out.append(bytes(ba[:2]))
    comm.Irecv(bspec, 0, 5).Wait()                       # message 3
    out.append(bytes(ba))
    try:
        comm.Irecv(bspec, 0, 5).Wait()                   # message 4: 16 B into 8
        out.append("truncated: no error")
    except MmpiError as e:
        out.append(e.Get_error_class() == MPI.ERR_TRUNCATE)
    for _ in range(3):
        comm.Irecv(bspec, 0, 5).Wait()                   # messages 5, 6, 7
        out.append(bytes(ba))
    out.append(comm.Iprobe(0, MPI.ANY_TAG))
    return out


def test_refusals_among_records_already_there(tmp_path):
    out = values(run_ranks(_behind_refused, 2, str(tmp_path / "f")))[1]
    m = [_msg(j, 8) for j in range(8)]
    assert out[0] == m[0]
    assert out[1] in ("MmpiError", "ValueError")
    assert out[2] == m[1]
    assert out[3] == ("shrunk", 4)
    assert out[4:6] == [_msg(2, 2), m[3]]
    assert out[6] is True
    assert out[7:10] == [m[5], m[6], m[7]]
    assert out[10] is False


def _behind_many(comm, total, flag):
    """More 8 B messages than the ring holds at once: the sender's Isends queue
    (and may sleep on the full ring) while the receiver, started late, takes
    them one Irecv at a time: every message in order, none lost, the sender
    woken by the receiver's takes."""
    if comm.rank == 0:
        reqs = []
        for j in range(total):   # (a buffer each: a queued send reads it later)
            reqs.append(comm.Isend([bytearray(j.to_bytes(8, "little")), 8, MPI.BYTE], 1, 5))
            if j == 200:
                _flag(flag)
        MPI.Request.Waitall(reqs)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    bad = []
    for j in range(total):
        comm.Irecv(spec, 0, 5).Wait()
        if int.from_bytes(rbuf[:8], "little") != j:
            bad.append(j)
    return bad, comm.Iprobe(0, MPI.ANY_TAG)


def test_a_late_receiver_takes_more_than_a_ring(monkeypatch, tmp_path):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(64 << 10))   # 1024 records
    bad, extra = values(run_ranks(_behind_many, 2, 5000, str(tmp_path / "f")))[1]
    assert bad == []
    assert extra is False


def _behind_fork(comm, flag):
    """A receiver that took records at once forks: the child's Irecv raises
    naming the fork and takes nothing; the rank then gets every message."""
    if comm.rank == 0:
        _send_window(comm, [(_msg(j, 8), 5) for j in range(6)], flag)
        return None
    _wait_flag(flag)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    got = []
    for _ in range(2):
        comm.Irecv(spec, 0, 5).Wait()
        got.append(bytes(rbuf[:8]))
    said = child_says(lambda: comm.Irecv(spec, 0, 5))
    for _ in range(4):
        comm.Irecv(spec, 0, 5).Wait()
        got.append(bytes(rbuf[:8]))
    return said, got, comm.Iprobe(0, MPI.ANY_TAG)


def test_a_fork_of_a_receiver_behind_takes_nothing(tmp_path):
    said, got, extra = values(run_ranks(_behind_fork, 2, str(tmp_path / "f")))[1]
    assert said == "fork"
    assert got == [_msg(j, 8) for j in range(6)]
    assert extra is False
