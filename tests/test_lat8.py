"""Small messages inside their record header (issue 12, osu_latency 8 B, fifth
round): a plain eager message of 1..INLINE_MAX bytes sent by a per-peer sender
travels in its header's own 64-byte line (``_transport.K_INLINE``); every reader
of the rings (Recv's and Irecv's takers, the posted windows, the general path,
Probe/Iprobe/Mprobe, ANY_SOURCE/ANY_TAG) must give what it gives for any other
record.  Also: Recv sharing Irecv's remembered spec.  Real ranks; sizes around
the threshold; both ranks ahead in turn; a ring small enough to wrap."""

from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values

N = T.INLINE_MAX
SIZES = [0, 1, N - 1, N, N + 1, 2 * N + 3, 64, 65, 200]


def _payload(i: int, n: int) -> bytes:
    return bytes((i * 31 + k * 7 + 1) % 251 for k in range(n))


def _ring_bytes(comm, src) -> int:
    """Bytes waiting in this rank's ring from ``src``."""
    t = comm._p.t
    w = comm._p.group[src]
    return t.words[t.in_head[w]] - t.in_tail[w]


def _record_len(n: int) -> int:
    return T.HDR_BYTES if n <= N else T.HDR_BYTES + ((n + 63) & ~63)


def _wait_bytes(comm, src, nbytes):
    end = time.monotonic() + 30
    while _ring_bytes(comm, src) < nbytes:
        if time.monotonic() > end:
            raise AssertionError(f"only {_ring_bytes(comm, src)} of {nbytes} bytes came")
        time.sleep(0.001)


def _send_all(comm, how, sizes):
    """Rank 0's sends of every size, ``how``: bytes, an mmap spec, a numpy array, Isend."""
    mm = mmap.mmap(-1, 4096)
    spec = [mm, 0, MPI.BYTE]
    reqs = []
    for i, n in enumerate(sizes):
        data = _payload(i, n)
        if how == "bytes":
            comm.Send(data, 1, 100 + i)
        elif how == "mmap":
            mm[:n] = data
            spec[1] = n
            comm.Send(spec, 1, 100 + i)
        elif how == "numpy":
            comm.Send(np.frombuffer(data, np.uint8).copy(), 1, 100 + i)
        else:
            reqs.append(comm.Isend(bytearray(data), 1, 100 + i))
    MPI.Request.Waitall(reqs)


def _sizes_prog(comm, how, recv, sender_late):
    """Every size sent ``how``; received ``recv``; one rank ahead of the other."""
    if comm.rank == 0:
        if sender_late:
            comm.Recv(bytearray(1), 1, 9)   # the receiver is waiting in its Recvs
            time.sleep(0.05)
        _send_all(comm, how, SIZES)
        comm.Recv(bytearray(1), 1, 9)
        return None
    got = []
    if sender_late:
        comm.Send(bytearray(1), 0, 9)
    else:   # all of them in the ring before the first receive: inline records checked
        _wait_bytes(comm, 0, sum(_record_len(n) for n in SIZES))
        got.append(("ring", _ring_bytes(comm, 0)))
    rm = mmap.mmap(-1, 4096)
    rspec = [rm, 256, MPI.BYTE]
    for i, n in enumerate(SIZES):
        st = MPI.Status()
        rm[:256] = b"\xee" * 256
        if recv == "mmap":
            comm.Recv(rspec, 0, 100 + i, st)
            data = bytes(rm[:256])
        elif recv == "bytearray":
            b = bytearray(b"\xee" * 256)
            comm.Recv([b, 256, MPI.BYTE], 0, 100 + i, st)
            data = bytes(b)
        elif recv == "numpy":
            a = np.full(256, 0xEE, np.uint8)
            comm.Recv(a, 0, 100 + i, st)
            data = a.tobytes()
        elif recv == "any":
            b = bytearray(b"\xee" * 256)
            comm.Recv(b, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            data = bytes(b)
        elif recv == "irecv":
            b = bytearray(b"\xee" * 256)
            comm.Irecv([b, 256, MPI.BYTE], 0, 100 + i).Wait(st)
            data = bytes(b)
        elif recv == "probe":
            comm.Probe(0, MPI.ANY_TAG, st)
            assert st.Get_count(MPI.BYTE) == n and st.Get_tag() == 100 + i
            b = bytearray(b"\xee" * 256)
            comm.Recv(b, 0, st.Get_tag(), st)
            data = bytes(b)
        elif recv == "iprobe":
            end = time.monotonic() + 30
            while not comm.Iprobe(MPI.ANY_SOURCE, 100 + i, st):
                assert time.monotonic() < end
            assert st.Get_count(MPI.BYTE) == n
            b = bytearray(b"\xee" * 256)
            comm.Recv(b, 0, 100 + i, st)
            data = bytes(b)
        else:   # mprobe
            msg = comm.Mprobe(0, 100 + i, st)
            assert st.Get_count(MPI.BYTE) == n
            b = bytearray(b"\xee" * 256)
            msg.Recv(b, st)
            data = bytes(b)
        got.append((n, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE), data))
    comm.Send(bytearray(1), 0, 9)
    return got


def _check(got, sender_late):
    rows = got
    if not sender_late:
        assert rows[0] == ("ring", sum(_record_len(n) for n in SIZES))
        rows = rows[1:]
    assert len(rows) == len(SIZES)
    for i, (n, (m, src, tag, count, data)) in enumerate(zip(SIZES, rows)):
        assert (m, src, tag, count) == (n, 0, 100 + i, n), (i, n)
        assert data == _payload(i, n) + b"\xee" * (256 - n), (i, n, data[:n + 2])


@pytest.mark.parametrize("sender_late", [False, True], ids=["sender-ahead", "receiver-ahead"])
@pytest.mark.parametrize("how,recv", [
    ("mmap", "mmap"), ("bytes", "bytearray"), ("numpy", "numpy"), ("isend", "irecv"),
    ("mmap", "any"), ("bytes", "probe"), ("isend", "iprobe"), ("mmap", "mprobe"),
])
def test_every_size_around_the_inline_threshold(how, recv, sender_late):
    res = run_ranks(_sizes_prog, 2, how, recv, sender_late)
    _check(values(res)[1], sender_late)


def test_inline_records_are_one_line():
    """The format under test: a message of 1..INLINE_MAX bytes takes one 64-byte
    record, a larger one its header and padded payload."""
    assert T.INLINE_MAX >= 8 and T.INLINE_AT + T.INLINE_MAX <= 48   # before plen's word
    assert _record_len(8) == 64 and _record_len(N + 1) == 128


def _posted_prog(comm):
    """Receives posted first (osu_bw's window), then inline and larger messages
    mixed: served from the ring in one pass; then a window with ANY_TAG."""
    sizes = [8, N, N + 1, 1, 0, 8, 40] * 4
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 9)
        mm = mmap.mmap(-1, 256)
        spec = [mm, 8, MPI.BYTE]
        reqs = []
        for i, n in enumerate(sizes):
            mm[:n] = _payload(i, n)
            spec[1] = n
            reqs.append(comm.Isend(spec, 1, 7))
        MPI.Request.Waitall(reqs)
        comm.Recv(bytearray(1), 1, 9)
        return None
    bufs = [bytearray(b"\xee" * 64) for _ in sizes]
    reqs = [comm.Irecv([b, 64, MPI.BYTE], 0, 7 if i % 2 else MPI.ANY_TAG)
            for i, b in enumerate(bufs)]
    comm.Send(bytearray(1), 0, 9)
    sts = [MPI.Status() for _ in sizes]
    MPI.Request.Waitall(reqs, sts)
    comm.Send(bytearray(1), 0, 9)
    return [(bytes(b), st.Get_count(MPI.BYTE), st.Get_tag()) for b, st in zip(bufs, sts)]


def test_posted_receives_take_inline_records():
    sizes = [8, N, N + 1, 1, 0, 8, 40] * 4
    got = values(run_ranks(_posted_prog, 2))[1]
    for i, (n, (data, count, tag)) in enumerate(zip(sizes, got)):
        assert (count, tag) == (n, 7), i
        assert data == _payload(i, n) + b"\xee" * (64 - n), (i, n)


def _truncation_prog(comm, recv):
    """An inline message too long for the receive raises truncation; the next
    message (inline) is received whole."""
    if comm.rank == 0:
        comm.Send(_payload(0, N), 1, 3)
        comm.Send(_payload(1, 8), 1, 4)
        comm.Recv(bytearray(1), 1, 9)
        return None
    _wait_bytes(comm, 0, 2 * T.HDR_BYTES)
    rm = mmap.mmap(-1, 64)
    try:
        if recv == "mmap":
            comm.Recv([rm, N - 1, MPI.BYTE], 0, 3)
        elif recv == "irecv":
            comm.Irecv([bytearray(N - 1), N - 1, MPI.BYTE], 0, 3).Wait()
        else:
            comm.Recv(np.zeros(N - 1, np.uint8), MPI.ANY_SOURCE, MPI.ANY_TAG)
        err = None
    except MmpiError as e:
        err = e.Get_error_class()
    st = MPI.Status()
    b = bytearray(16)
    comm.Recv(b, 0, 4, st)
    comm.Send(bytearray(1), 0, 9)
    return err, bytes(b[:8]), st.Get_count(MPI.BYTE)


@pytest.mark.parametrize("recv", ["mmap", "irecv", "any"])
def test_truncation_of_an_inline_message(recv):
    err, data, count = values(run_ranks(_truncation_prog, 2, recv))[1]
    assert err == MPI.ERR_TRUNCATE
    assert (data, count) == (_payload(1, 8), 8)


def _mixed_prog(comm):
    """Inline buffers between objects, synchronous sends and larger messages,
    tags interleaved: every message in order per (source, tag)."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 9)
        for i in range(40):
            k = i % 5
            if k == 0:
                comm.send({"i": i, "b": b"x" * (i % 3)}, 1, 1)
            elif k == 1:
                comm.Ssend(_payload(i, 8), 1, 2)
            elif k == 2:
                comm.Send(_payload(i, 1 + i % N), 1, 2)
            elif k == 3:
                comm.Send(_payload(i, 300), 1, 3)
            else:
                comm.send(i, 1, 3)
        comm.Recv(bytearray(1), 1, 9)
        return None
    comm.Send(bytearray(1), 0, 9)
    time.sleep(0.05)   # the sender ahead (Ssend waits for its receive)
    out = []
    for i in range(40):
        k = i % 5
        if k == 0:
            out.append(comm.recv(None, 0, 1))
        elif k in (1, 2):
            b = bytearray(300)
            st = MPI.Status()
            comm.Recv(b, 0, 2, st)
            out.append(bytes(b[:st.Get_count(MPI.BYTE)]))
        elif k == 3:
            b = bytearray(300)
            comm.Recv(b, 0, 3)
            out.append(bytes(b))
            out.append(comm.recv(None, 0, 3))
    comm.Send(bytearray(1), 0, 9)
    return out


def test_inline_messages_between_objects_and_other_kinds():
    got = values(run_ranks(_mixed_prog, 2))[1]
    want = []
    for i in range(40):
        k = i % 5
        if k == 0:
            want.append({"i": i, "b": b"x" * (i % 3)})
        elif k == 1:
            want.append(_payload(i, 8))
        elif k == 2:
            want.append(_payload(i, 1 + i % N))
        elif k == 3:
            want.append(_payload(i, 300))
            want.append(i + 1)
    assert got == want


def _wrap_prog(comm, count):
    """Many messages through a 4 KiB ring (it wraps many times), sizes cycling
    around the threshold, the receiver slower every 50 messages."""
    sizes = [8, N, N + 1, 1, 64, 3, 200]
    if comm.rank == 0:
        mm = mmap.mmap(-1, 256)
        spec = [mm, 8, MPI.BYTE]
        for i in range(count):
            n = sizes[i % len(sizes)]
            mm[:n] = _payload(i, n)
            spec[1] = n
            comm.Send(spec, 1, 5)
        comm.Recv(bytearray(1), 1, 9)
        return None
    rm = mmap.mmap(-1, 256)
    spec = [rm, 256, MPI.BYTE]
    bad = []
    st = MPI.Status()
    for i in range(count):
        if i % 50 == 0:
            time.sleep(0.002)
        n = sizes[i % len(sizes)]
        comm.Recv(spec, 0, 5, st)
        if st.Get_count(MPI.BYTE) != n or rm[:n] != _payload(i, n):
            bad.append(i)
    comm.Send(bytearray(1), 0, 9)
    return bad


def test_a_small_ring_wraps_with_inline_records(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", "4096")
    assert values(run_ranks(_wrap_prog, 2, 3000))[1] == []


def _recv_cache_prog(comm):
    """Recv's spec (shared with Irecv's remembered one) follows changes: the
    count, the buffer, a shrunk and a closed mmap (refused, nothing consumed)."""
    if comm.rank == 0:
        for i, n in enumerate([8, 8, 4, 8, 8, 8, 8]):
            comm.Send(_payload(i, n), 1, 6)
        comm.Recv(bytearray(1), 1, 9)
        return None
    out = []
    a, b = mmap.mmap(-1, 16), mmap.mmap(-1, 16)
    spec = [a, 8, MPI.BYTE]
    st = MPI.Status()
    comm.Recv(spec, 0, 6, st)
    out.append((bytes(a[:8]), st.Get_count()))
    comm.Irecv(spec, 0, 6).Wait(st)          # the same spec, remembered by either call
    out.append((bytes(a[:8]), st.Get_count()))
    spec[1] = 4
    comm.Recv(spec, 0, 6, st)
    out.append((bytes(a[:4]), st.Get_count()))
    try:   # 8 bytes into the count of 4 the list says now
        comm.Recv(spec, 0, 6, st)
        out.append("not truncated")
    except MmpiError as e:
        out.append(e.Get_error_class() == MPI.ERR_TRUNCATE)
    spec[1] = 8
    spec[0] = b
    comm.Recv(spec, 0, 6, st)
    out.append((bytes(b[:8]), st.Get_count()))
    b.resize(4)
    for bad in ("shrunk", "closed"):
        try:
            comm.Recv(spec, 0, 6, st)
            out.append(bad + " taken")
        except MmpiError:
            out.append(bad)
        b.close()
    c = bytearray(8)
    comm.Recv([c, 8, MPI.BYTE], 0, 6, st)    # the refused receives consumed nothing
    out.append((bytes(c), st.Get_count()))
    comm.Recv([c, 8, MPI.BYTE], 0, 6, st)
    out.append((bytes(c), st.Get_count()))
    comm.Send(bytearray(1), 0, 9)
    return out


def test_recv_follows_its_spec_list_changed_between_calls():
    got = values(run_ranks(_recv_cache_prog, 2))[1]
    assert got == [(_payload(0, 8), 8), (_payload(1, 8), 8), (_payload(2, 4), 4), True,
                   (_payload(4, 8), 8), "shrunk", "closed",
                   (_payload(5, 8), 8), (_payload(6, 8), 8)]


def _split_prog(comm):
    """Header-line records on other communicators: a reversed Split (other world
    ranks behind the same comm ranks, another context) and a Dup."""
    world = comm.rank
    rev = comm.Split(0, -world)
    dup = comm.Dup()
    out = []
    for c in (rev, dup, comm):
        r = c.Get_rank()
        peer = 1 - r
        if r == 0:
            c.Send(_payload(world, 8), peer, 1)
            b = bytearray(8)
            c.Recv(b, peer, 1)
        else:
            b = bytearray(8)
            c.Recv(b, peer, 1)
            c.Send(_payload(world, 8), peer, 1)
        out.append(bytes(b))
    return out


def test_inline_records_on_split_and_dup_communicators():
    got = values(run_ranks(_split_prog, 2))
    for world in (0, 1):
        assert got[world] == [_payload(1 - world, 8)] * 3


def _out_of_order_prog(comm):
    """Receives posted for one tag while another tag's inline message comes
    first: that one goes unexpected, the next ones go to the posted receives
    record by record (the general path's match of a posted receive)."""
    if comm.rank == 0:
        comm.Recv(bytearray(1), 1, 9)
        comm.Send(_payload(0, 8), 1, 8)
        for i in range(1, 4):
            comm.Send(_payload(i, i * 5), 1, 7)   # 5, 10, 15 bytes: inline
        comm.Send(_payload(4, N + 1), 1, 7)
        comm.Recv(bytearray(1), 1, 9)
        return None
    bufs = [bytearray(b"\xee" * 32) for _ in range(4)]
    reqs = [comm.Irecv(b, 0, 7) for b in bufs]
    comm.Send(bytearray(1), 0, 9)
    sts = [MPI.Status() for _ in bufs]
    MPI.Request.Waitall(reqs, sts)
    first = bytearray(32)
    st = MPI.Status()
    comm.Recv(first, 0, 8, st)
    comm.Send(bytearray(1), 0, 9)
    return ([(bytes(b), s.Get_count()) for b, s in zip(bufs, sts)],
            (bytes(first), st.Get_count()))


def test_posted_receives_behind_an_unexpected_inline_message():
    posted, first = values(run_ranks(_out_of_order_prog, 2))[1]
    assert first == (_payload(0, 8) + bytes(24), 8)
    want = [(_payload(i, n) + b"\xee" * (32 - n), n)
            for i, n in [(1, 5), (2, 10), (3, 15), (4, N + 1)]]
    assert posted == want


def _sendrecv_prog(comm):
    """Sendrecv of every size around the threshold, both ways at once."""
    peer = 1 - comm.rank
    out = []
    for i, n in enumerate(SIZES):
        b = bytearray(b"\xee" * 256)
        st = MPI.Status()
        comm.Sendrecv(_payload(i + 10 * comm.rank, n), peer, i, b, peer, i, st)
        out.append((bytes(b), st.Get_count(), st.Get_tag()))
    return out


def test_sendrecv_around_the_threshold():
    got = values(run_ranks(_sendrecv_prog, 2))
    for r in (0, 1):
        other = 1 - r
        assert got[r] == [(_payload(i + 10 * other, n) + b"\xee" * (256 - n), n, i)
                          for i, n in enumerate(SIZES)]
