"""osu_bw's 8 B window, third round (issue 12): the receives ``Irecv`` posts
alike from one ``[mmap or bytearray, count, dt]`` spec share one view and one
key (``RecvOp.key``), and ``_serve`` matches a run of them with one identity
check, making only the run's last copy (all of them go to the same bytes).
Real ranks; the receiver posts its receives before the sender starts (a
``go`` message), so the records meet posted receives, as in osu_bw.  Each test
checks what MPI says the buffers, statuses and errors hold, and fails on a
wrong message or a wrong order."""

from __future__ import annotations

import mmap

import pytest

from driller import MPI
from driller.errors import MmpiError

from test_mmpi_p2p import run_ranks, values

GO = 9


def _msg(j: int, n: int = 8) -> bytes:
    return bytes([65 + j % 26]) * (n - 1) + bytes([j % 251])


def _go(comm):
    comm.Send(bytearray(1), 0, GO)


def _send_all(comm, msgs, tag=5):
    comm.Recv(bytearray(1), 1, GO)
    isend_window(comm, msgs, tag)


def isend_window(comm, msgs, tag=5):
    """Every (bytes, tag or None: ``tag``) of ``msgs`` to rank 1 through one
    ``[mmap, n, BYTE]`` spec (osu_bw's), completed."""
    sbuf = mmap.mmap(-1, 4096)
    spec = [sbuf, 8, MPI.BYTE]
    reqs = []
    for m, t in msgs:
        spec[1] = len(m)
        sbuf[:len(m)] = m
        reqs.append(comm.Isend(spec, 1, t if t is not None else tag))
    MPI.Request.Waitall(reqs)


def _sized_window(comm, sizes, rbuf, cap):
    """Rank 0 sends one message of each size (``_msg``), tag 5; rank 1 posts a
    receive per message from one spec of ``rbuf``'s first ``cap`` bytes, then
    lets rank 0 start: rank 1's requests (None on rank 0)."""
    if comm.rank == 0:
        _send_all(comm, [(_msg(j, n), None) for j, n in enumerate(sizes)])
        return None
    spec = [rbuf, cap, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, 5) for _ in sizes]
    _go(comm)
    return reqs


def _window_last_wins(comm, n=8):
    """64 receives posted from one spec, 64 distinct messages of ``n`` bytes: the
    buffer holds the last; every status names its source, tag and size; the mmap
    closes (no view of it is left behind)."""
    msgs = [_msg(j, n) for j in range(64)]
    if comm.rank == 0:
        _send_all(comm, [(m, None) for m in msgs])
        return None
    rbuf = mmap.mmap(-1, 4096)
    spec = [rbuf, n, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(64)]
    _go(comm)
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    got = bytes(rbuf[:n])
    info = {(s.Get_source(), s.Get_tag(), s.Get_count(MPI.BYTE)) for s in sts}
    del reqs, sts
    rbuf.close()   # BufferError if a view of it were still held
    return got, info


@pytest.mark.parametrize("n", [8, 16, 17, 40, 200])   # in the header's line, or after it
def test_window_of_alike_receives_keeps_the_last_message(n):
    got, info = values(run_ranks(_window_last_wins, 2, n))[1]
    assert got == _msg(63, n)
    assert info == {(0, 5, n)}


MIXED = [[16, 8, 8, 16, 8, 4],          # every one in its header's line
         [48, 24, 24, 48, 24, 4],        # after the header, the last one in it
         [48, 8, 8, 48, 30, 30, 30, 5]]  # both kinds, and runs of each


def _sizes_mixed(comm, sizes):
    """One spec of max(sizes) bytes posted once per message; messages of
    ``sizes`` bytes: the buffer holds each shorter message over the longer ones
    before it, exactly as copies in order leave it; each count is its message's."""
    rbuf = bytearray(b"." * 64)
    reqs = _sized_window(comm, sizes, rbuf, max(sizes))
    if reqs is None:
        return None
    counts = []
    for r in reqs:
        st = MPI.Status()
        r.Wait(st)
        counts.append(st.Get_count(MPI.BYTE))
    return bytes(rbuf), counts


@pytest.mark.parametrize("sizes", MIXED)
def test_alike_receives_of_mixed_sizes_end_as_copies_in_order(sizes):
    buf, counts = values(run_ranks(_sizes_mixed, 2, sizes))[1]
    expect = bytearray(b"." * 64)
    for j, n in enumerate(sizes):
        expect[:n] = _msg(j, n)
    assert buf == bytes(expect)
    assert counts == sizes


def _run_broken(comm):
    """Receives posted from spec A, then one from spec B, then A again: B gets
    exactly the message sent at its turn, A the last of its own."""
    msgs = [_msg(j) for j in range(9)]
    if comm.rank == 0:
        _send_all(comm, [(m, None) for m in msgs])
        return None
    a, b = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    sa, sb = [a, 8, MPI.BYTE], [b, 8, MPI.BYTE]
    reqs = [comm.Irecv(sa, 0, 5) for _ in range(4)]
    reqs.append(comm.Irecv(sb, 0, 5))
    reqs += [comm.Irecv(sa, 0, 5) for _ in range(3)]
    rest = bytearray(8)
    reqs.append(comm.Irecv([rest, 8, MPI.BYTE], 0, 5))
    _go(comm)
    MPI.Request.Waitall(reqs)
    return bytes(a[:8]), bytes(b[:8]), bytes(rest)


def test_a_run_broken_by_another_receive_keeps_each_message_in_its_place():
    a, b, rest = values(run_ranks(_run_broken, 2))[1]
    assert b == _msg(4)
    assert a == _msg(7)
    assert rest == _msg(8)


def _cancel_in_run(comm):
    """Ten alike receives, the sixth cancelled: nine messages fill the other
    nine in order (the last one's the buffer's); the cancelled one says so."""
    msgs = [_msg(j) for j in range(9)]
    if comm.rank == 0:
        _send_all(comm, [(m, None) for m in msgs])
        tail = bytearray(8)
        comm.Recv(tail, 1, 7)
        return bytes(tail)
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(10)]
    reqs[5].Cancel()
    st = MPI.Status()
    reqs[5].Wait(st)
    cancelled = st.Is_cancelled()
    _go(comm)
    flags = []
    for i, r in enumerate(reqs):
        if i == 5:
            continue
        st = MPI.Status()
        r.Wait(st)
        flags.append((st.Is_cancelled(), st.Get_count(MPI.BYTE)))
    comm.Send(bytes(rbuf[:8]), 0, 7)
    return cancelled, flags, bytes(rbuf[:8])


def test_cancel_inside_a_run_of_alike_receives():
    tail, (cancelled, flags, buf) = values(run_ranks(_cancel_in_run, 2))
    assert cancelled is True
    assert flags == [(False, 8)] * 9
    assert buf == _msg(8) == tail


def _probe_and_any(comm):
    """Four alike receives, then an ANY_SOURCE one, then a Probe and a Recv, then
    an Iprobe that finds nothing: the posted receives take the first five
    messages in order, Probe sees the sixth, Recv gets it."""
    msgs = [_msg(j) for j in range(6)]
    if comm.rank == 0:
        _send_all(comm, [(m, None) for m in msgs[:5]] + [(msgs[5], 6)])
        return None
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 8, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(4)]
    anyb = bytearray(8)
    reqs.append(comm.Irecv(anyb, MPI.ANY_SOURCE, MPI.ANY_TAG))
    _go(comm)
    st = MPI.Status()
    comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)   # the posted receives come first
    probed = (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))
    last = bytearray(8)
    comm.Recv(last, 0, MPI.ANY_TAG)
    flags = [r.Test() for r in reqs]
    none_left = comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    return bytes(rbuf[:8]), bytes(anyb), probed, bytes(last), flags, none_left


def test_probe_and_any_source_see_the_posted_alike_receives_first():
    buf, anyb, probed, last, flags, none_left = values(run_ranks(_probe_and_any, 2))[1]
    assert buf == _msg(3)
    assert anyb == _msg(4)
    assert probed == (0, 6, 8)
    assert last == _msg(5)
    assert flags == [True] * 5
    assert none_left is False


def _truncated_in_run(comm):
    """Alike receives of 8 bytes; the third message is 16: that receive fails
    with ERR_TRUNCATE naming the size and the rank, the others get theirs in order."""
    rbuf = mmap.mmap(-1, 64)
    reqs = _sized_window(comm, [8, 8, 16, 8, 8], rbuf, 8)
    if reqs is None:
        return None
    out = []
    for r in reqs:
        st = MPI.Status()
        try:
            r.Wait(st)
            out.append(st.Get_count(MPI.BYTE))
        except MmpiError as e:
            out.append((e.Get_error_class(), "16 bytes from rank 0" in str(e)))
    return out, bytes(rbuf[:8])


def test_truncation_inside_a_run_of_alike_receives():
    out, buf = values(run_ranks(_truncated_in_run, 2))[1]
    assert out == [8, 8, (MPI.ERR_TRUNCATE, True), 8, 8]
    assert buf == _msg(4)


def _waitany_some(comm):
    """Alike receives completed by Waitany, Testall, Waitsome and Testany: every
    index once, the statuses right, the buffer the last message's."""
    msgs = [_msg(j) for j in range(12)]
    if comm.rank == 0:
        _send_all(comm, [(m, None) for m in msgs])
        return None
    rbuf = bytearray(8)
    spec = [rbuf, 8, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, 5) for _ in range(12)]
    _go(comm)
    seen = []
    st = MPI.Status()
    i = MPI.Request.Waitany(reqs, st)
    seen.append(i)
    tag = st.Get_tag()
    while True:
        idx = MPI.Request.Waitsome(reqs)
        if idx is None:
            break
        seen += idx
    done = MPI.Request.Testall(reqs)
    j, flag = MPI.Request.Testany(reqs)
    return sorted(seen), tag, done, (j, flag), bytes(rbuf), all(r == MPI.REQUEST_NULL
                                                                  for r in reqs)


def test_waitany_waitsome_testall_over_alike_receives():
    seen, tag, done, any_, buf, null = values(run_ranks(_waitany_some, 2))[1]
    assert seen == list(range(12))
    assert tag == 5 and done is True and any_ == (MPI.UNDEFINED, True)
    assert buf == _msg(11) and null


def _tags_alternate(comm):
    """One spec list, receives posted with tags 1 and 2 alternating (no run:
    each key differs); the sender sends tag 2 first: the first tag-2 receive
    gets it (MPI's matching), and the counts and tags follow the messages."""
    if comm.rank == 0:
        _send_all(comm, [(_msg(0), 2), (_msg(1), 1), (_msg(2), 1), (_msg(3), 2)])
        return None
    a = mmap.mmap(-1, 64)
    spec = [a, 8, MPI.BYTE]
    got = []
    reqs = [comm.Irecv(spec, 0, t) for t in (1, 2, 1, 2)]
    _go(comm)
    for r in reqs:
        st = MPI.Status()
        r.Wait(st)
        got.append(st.Get_tag())
    return got, bytes(a[:8])


def test_alike_spec_with_alternating_tags_matches_by_tag():
    got, buf = values(run_ranks(_tags_alternate, 2))[1]
    assert got == [1, 2, 1, 2]
    # message order: tag 2 (msg0) -> receive 1, tag 1 (msg1) -> receive 0,
    # tag 1 (msg2) -> receive 2, tag 2 (msg3) -> receive 3: the last copy is msg3
    assert buf == _msg(3)


def _forked_child_after_window(comm):
    """Isend and Irecv remember the closure of their last spec and peer; a fork
    of the rank must not use it (the child's Isend and Irecv raise naming the
    fork, and nothing it tried reaches the peer)."""
    import os
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        sbuf[:8] = _msg(1)
        MPI.Request.Waitall([comm.Isend(spec, 1, 5) for _ in range(4)])
        rspec = [mmap.mmap(-1, 64), 8, MPI.BYTE]
        comm.Irecv(rspec, 1, 3).Wait()
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:   # pragma: no cover - child
            out = []
            for call in (lambda: comm.Isend(spec, 1, 5), lambda: comm.Irecv(rspec, 1, 3)):
                try:
                    call()
                    out.append("sent")
                except MmpiError as e:
                    out.append("fork" if "fork" in str(e) else str(e))
            os.write(wfd, ",".join(out).encode())
            os._exit(0)
        os.close(wfd)
        os.waitpid(pid, 0)
        said = os.read(rfd, 200).decode()
        os.close(rfd)
        sbuf[:8] = _msg(2)
        comm.Isend(spec, 1, 5).Wait()
        comm.Send(bytearray(1), 1, 6)
        return said
    got = []
    rbuf = bytearray(8)
    comm.Send(bytearray(8), 0, 3)
    for _ in range(5):
        comm.Recv(rbuf, 0, 5)
        got.append(bytes(rbuf))
    comm.Recv(bytearray(1), 0, 6)
    return got, comm.Iprobe(0, MPI.ANY_TAG)


def test_a_fork_of_the_rank_cannot_use_the_remembered_closures():
    said, (got, extra) = values(run_ranks(_forked_child_after_window, 2))
    assert said == "fork,fork"
    assert got == [_msg(1)] * 4 + [_msg(2)]
    assert extra is False


def _many_windows(comm, windows):
    """osu_bw's loop with a go message per window, long enough for the records
    to wrap around the ring several times: every window's buffer holds its last
    message, every count its message's (sizes cycle through 8, 8, 24)."""
    size = lambda w, j: 24 if (w + j) % 3 == 2 else 8   # noqa: E731
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 64)
        spec = [sbuf, 8, MPI.BYTE]
        for w in range(windows):
            comm.Recv(bytearray(1), 1, GO)
            reqs = []
            for j in range(64):
                n = size(w, j)
                spec[1] = n
                sbuf[:n] = _msg(w * 64 + j, n)
                reqs.append(comm.Isend(spec, 1, 5))
            MPI.Request.Waitall(reqs)
        return None
    rbuf = mmap.mmap(-1, 64)
    spec = [rbuf, 24, MPI.BYTE]
    bad = []
    for w in range(windows):
        reqs = [comm.Irecv(spec, 0, 5) for _ in range(64)]
        _go(comm)
        sts = [MPI.Status() for _ in reqs]
        MPI.Request.Waitall(reqs, sts)
        counts = [s.Get_count(MPI.BYTE) for s in sts]
        if counts != [size(w, j) for j in range(64)]:
            bad.append((w, "counts", counts))
        expect = bytearray(24)
        for j in range(64):
            n = size(w, j)
            expect[:n] = _msg(w * 64 + j, n)
        if bytes(rbuf[:24]) != bytes(expect):   # (each window has a 24-byte one)
            bad.append((w, "data"))
    return bad


def test_many_windows_wrapping_the_ring():
    assert values(run_ranks(_many_windows, 2, 120))[1] == []
