"""Adaptive streams (docs/mmpi.md, Protocols): a streamed message whose receive
matched while chunks were still to come is split, the receiver reading one part
of the sender's buffer while the sender writes the other into the receive's.
Real forked ranks (test_mmpi_p2p's harness, a deadline, no timed assertions);
the splits are forced by rings smaller than the messages (the sender must wait
for room, so the receiver's request is there before the rest goes)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from driller import MPI, mmpi

from test_mmpi_p2p import run_ranks, values

MIB = 1 << 20
RING = str(2 * MIB)   # eager limit 512 KiB, chunks of 256 KiB: 4 MiB never fits


@pytest.fixture(autouse=True)
def _xsplit_on(monkeypatch):
    """The split on (whatever the default), 2 ranks on 2 cores or not."""
    monkeypatch.setenv("DRILLER_MMPI_XSPLIT_REST", str(128 << 10))


def _slow_split(t, seconds=0.0, die=False):
    """This rank (a receiver) takes ``seconds`` before reading its part of each
    split (or dies there): a slow receiver, as a loaded machine makes one."""
    take = t._take_split

    def slow(*args):
        if die:
            import os
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(seconds)
        return take(*args)

    t._take_split = slow


def _slow_receive(comm, n, seconds, die=False):
    """Rank 1: say its receive (tag 1) is coming, Recv it, slow to read its part
    of the split (or dying there); the buffer."""
    _slow_split(comm._t, seconds, die)
    b = np.zeros(n, np.uint8)
    comm.Send(np.zeros(1, np.uint8), 0, 2)
    comm.Recv(b, 0, 1)
    return b


def pattern(n: int, seed: int = 0) -> np.ndarray:
    return ((np.arange(n, dtype=np.int64) * 13 + seed) % 253).astype(np.uint8)


# ------------------------------------------------------------- no new waiting

def _head_to_head(comm, sizes):
    """Both ranks Send to each other before either receives, at each size."""
    other = 1 - comm.rank
    out = []
    for i, n in enumerate(sizes):
        comm.Barrier()
        comm.Send(pattern(n, comm.rank + i), other, i)
        b = np.zeros(n, np.uint8)
        comm.Recv(b, other, i)
        out.append(bool((b == pattern(n, other + i)).all()))
    return out


@pytest.mark.parametrize("ring", [None, RING])
def test_head_to_head_sends_of_each_size_class_complete(monkeypatch, ring):
    """Eager and streamed sizes (split or not; up to stream_max, larger ones are
    rendezvous, which MPI lets wait): a standard Send never waits for its receive
    to be posted, so two ranks sending to each other first both finish (the
    split needs a posted receive: here there is none)."""
    if ring:
        monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", ring)
        sizes = [512 << 10, (512 << 10) + 1, 2 * MIB, 3 * MIB + 7, 8 * MIB]
    else:
        sizes = [MIB, MIB + 1, 4 * MIB + 4095, 5 * MIB + 1, 8 * MIB]
    assert values(run_ranks(_head_to_head, 2, sizes)) == [[True] * 5] * 2


# ------------------------------------------------------------- where it splits

def _split_at_zero(comm, n):
    """Rank 0 sends A (8 MiB, not received yet: staged) then B; rank 1's receive
    of B is posted first, so B's request is there before any of B's chunks go
    (A's still go): B is split at chunk 0."""
    t = comm._t
    a_n = 8 * MIB
    if comm.rank == 0:
        comm.Barrier()
        ra = comm.Isend(pattern(a_n, 1), 1, 1)
        rb = comm.Isend(pattern(n, 2), 1, 2)
        MPI.Request.Waitall([ra, rb])
        comm.Barrier()
        return None
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, 0, 2)
    comm.Barrier()
    r.Wait()
    a = np.zeros(a_n, np.uint8)
    comm.Recv(a, 0, 1)
    comm.Barrier()
    return (bool((b == pattern(n, 2)).all()), bool((a == pattern(a_n, 1)).all()),
            t.stats_xsplit_last, t.words[t.in_xw[0]])


@pytest.mark.parametrize("n", [3 * MIB + 12345, (512 << 10) + 1])
def test_split_at_the_first_chunk(monkeypatch, n):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    _, (ok_b, ok_a, last, slot) = values(run_ranks(_split_at_zero, 2, n))
    assert ok_b and ok_a
    assert last is not None and last[0] == 0 and last[2] == n and 0 < last[1] < n
    assert slot == 0


def _posted(comm, n, seed, flag):
    """Rank 0: once rank 1 says its receive is posted, Send (tag ``seed``), then a
    file says the Send has returned; None.  Rank 1: that receive, posted and
    said so: (buffer, request)."""
    if comm.rank == 0:
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        comm.Send(pattern(n, seed), 1, seed)
        open(flag, "w").close()
        comm.Barrier()
        return None
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, 0, seed)
    comm.Send(np.zeros(1, np.uint8), 0, 2)
    return b, r


def _all_chunks_first(comm, n, flag):
    """The receive is posted but rank 1 does not progress until rank 0's Send
    (it fits the ring) has put every chunk in (a file says so: no MPI call): the
    request comes too late, the message arrives as a plain stream and the slot
    is free again."""
    import os
    t = comm._t
    if comm.rank == 0:
        return _posted(comm, n, 3, flag)
    b, r = _posted(comm, n, 3, flag)
    while not os.path.exists(flag):   # rank 0's Send has returned: all in the ring
        time.sleep(0.001)
    r.Wait()
    out = bool((b == pattern(n, 3)).all()), t.stats_xsplit, t.words[t.in_xw[0]]
    comm.Barrier()
    return out


def test_request_after_the_last_chunk_is_a_plain_stream(monkeypatch, tmp_path):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(4 * MIB))
    n = 2 * MIB - 100
    _, out = values(run_ranks(_all_chunks_first, 2, n, str(tmp_path / "sent")))
    assert out == (True, 0, 0)   # whole, not split, the slot free for the next one


def _split_sizes(comm, sizes):
    """Rank 1's receive is posted (and waiting) before each message comes."""
    t = comm._t
    out = []
    for i, n in enumerate(sizes):
        if comm.rank == 0:
            comm.Recv(np.zeros(1, np.uint8), 1, 100 + i)   # rank 1's receive is posted
            comm.Send(pattern(n, i), 1, i)
        else:
            b = np.full(n + 1, 0xEE, np.uint8)
            r = comm.Irecv(b[:n], 0, i)
            before = t.stats_xsplit
            comm.Send(np.zeros(1, np.uint8), 0, 100 + i)
            st = MPI.Status()
            r.Wait(st)
            last = t.stats_xsplit_last
            out.append((n, bool((b[:n] == pattern(n, i)).all()) and b[n] == 0xEE,
                        st.Get_count(MPI.BYTE), t.stats_xsplit - before,
                        last is not None and last[0] < last[1] < last[2] == n))
    return out


def test_split_sizes_odd_and_around_the_thresholds(monkeypatch):
    """A matched stream is split (where the sender is when it sees the request:
    at the first chunk when the receiver was quick, later when the ring filled),
    at odd sizes, above a ring, up to stream_max: every byte, nothing past the end."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    sizes = [2 * MIB + (256 << 10) + 1, 3 * MIB + 12345, 4 * MIB - 1, 5 * MIB + 4097,
             8 * MIB]
    _, out = values(run_ranks(_split_sizes, 2, sizes))
    assert out == [(n, True, n, 1, True) for n in sizes]


def test_no_split_below_the_rest(monkeypatch):
    """DRILLER_MMPI_XSPLIT_REST above what is left: the same messages stream whole."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    monkeypatch.setenv("DRILLER_MMPI_XSPLIT_REST", str(16 * MIB))
    sizes = [3 * MIB + 12345, 8 * MIB]
    _, out = values(run_ranks(_split_sizes, 2, sizes))
    assert [o[:4] for o in out] == [(n, True, n, 0) for n in sizes]


def test_split_is_off_by_default(monkeypatch):
    """Until quiet figures show its gain (docs/mmpi.md, "Rebuilt safe"): without
    DRILLER_MMPI_XSPLIT_REST a waited-on stream arrives whole, as a plain stream."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    monkeypatch.delenv("DRILLER_MMPI_XSPLIT_REST")
    n = 3 * MIB + 12345
    _, out = values(run_ranks(_split_sizes, 2, [n]))
    assert [o[:4] for o in out] == [(n, True, n, 0)]


# ------------------------------------------------------------- truncation, wildcards

def _truncated(comm, n, cap):
    t = comm._t
    if comm.rank == 0:
        comm.Recv(np.zeros(1, np.uint8), 1, 9)
        comm.Send(pattern(n, 5), 1, 5)
        return None
    b = np.full(cap + 65536, 0xEE, np.uint8)
    r = comm.Irecv(b[:cap], 0, 5)
    comm.Send(np.zeros(1, np.uint8), 0, 9)
    try:
        r.Wait()
    except mmpi.TruncationError:
        err = True
    else:
        err = False
    return (err, bool((b[:cap] == pattern(n, 5)[:cap]).all()),
            bool((b[cap:] == 0xEE).all()), t.stats_xsplit)


@pytest.mark.parametrize("cap", [MIB, 2 * MIB + 512 * 1024 + 3, 4 * MIB - 5])
def test_truncated_split_never_writes_past_the_receive(monkeypatch, cap):
    """The receive is smaller than the message, its end before the split, in the
    receiver's part, or in the sender's (written with process_vm_writev): the
    bytes up to it are the message's, none past it changes, TruncationError."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    n = 4 * MIB + 12345
    _, (err, head_ok, tail_kept, splits) = values(run_ranks(_truncated, 2, n, cap))
    assert err and head_ok and tail_kept and splits == 1


def _any_source(comm, n):
    t = comm._t
    if comm.rank:
        comm.Barrier()
        comm.Send(pattern(n, comm.rank), 0, 7)
        return None
    out = []
    bufs = [np.zeros(n, np.uint8) for _ in range(2)]
    reqs = [comm.Irecv(b, MPI.ANY_SOURCE, 7) for b in bufs]
    comm.Barrier()
    sts = [MPI.Status(), MPI.Status()]
    MPI.Request.Waitall(reqs, sts)
    for b, st in zip(bufs, sts):
        out.append((st.Get_source(), bool((b == pattern(n, st.Get_source())).all())))
    return sorted(out), t.stats_xsplit


def test_any_source_receives_are_split(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    # 3 ranks on 2 cores: no split and only half a ring streamed by default
    monkeypatch.setenv("DRILLER_MMPI_XSPLIT_REST", str(128 << 10))
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", str(8 * MIB))
    n = 4 * MIB + 3
    out, splits = values(run_ranks(_any_source, 3, n))[0]
    assert out == [(1, True), (2, True)]
    assert splits >= 1


# ------------------------------------------------------------- interruption, death

class Interrupted(Exception):
    pass


def _interrupt_after(seconds, call):
    """``call()`` with a signal handler's exception (Interrupted) ``seconds`` in:
    how it ended."""
    def on_alarm(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        call()
    except Interrupted:
        return "interrupted"
    except mmpi.PeerDiedError as e:
        return ("died", e.rank)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return "completed"


def _interrupted_in_split(comm, n, receiver_dies):
    """Rank 1 waits in Recv (its request made); once split, it is slow to read its
    part (or dies there) while rank 0's Send waits for that read."""
    t = comm._t
    if comm.rank == 1:
        b = _slow_receive(comm, n, 1.0, receiver_dies)
        return bool((b == pattern(n, 6)).all()), t.stats_xsplit
    comm.Recv(np.zeros(1, np.uint8), 1, 2)
    a = pattern(n, 6)
    how = _interrupt_after(0.3, lambda: comm.Send(a, 1, 1))
    a[:] = 0xFF   # the caller's buffer is its own again once Send has raised
    left = len(t.xsplits)
    t.finish()   # (the receiver's read to come: as Finalize and the exit hook do)
    return how, t.stats_xkept, left


def test_interrupted_split_send_delivers_the_original_bytes(monkeypatch):
    """A signal handler's exception interrupts the Send while the receiver has yet
    to read its part: Send waits for that read, then raises; the caller's change
    to the buffer after the exception never reaches the receiver."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    (how, settled, left), (ok, splits) = values(run_ranks(_interrupted_in_split, 2,
                                                          4 * MIB + 1, False))
    assert how == "interrupted" and settled == 1 and left == 1   # (RDONE to come)
    assert ok and splits == 1


def test_receiver_dies_mid_split(monkeypatch):
    """The receiver dies before reading its part: the split Send raises
    PeerDiedError naming it (no hang), interrupted or not."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    res = run_ranks(_interrupted_in_split, 2, 4 * MIB + 1, True)
    assert res[1][0] is False and res[1][1][0] == "Killed"
    how, _, _ = values([res[0]])[0]
    assert how == ("died", 1)


def _sender_dies_mid_split(comm):
    """Rank 0 may not write into rank 1 (process_vm_writev fails with EPERM): its
    part of the split goes as chunks; it dies once split, mid-way through them."""
    import errno
    import os

    from driller import _linux
    n = 8 * MIB
    t = comm._t
    if comm.rank == 0:
        _linux.deny_syscalls(["process_vm_writev"], errno.EPERM)

        class DiesInPush(list):   # (right after the first chunk published once split)
            def __getitem__(self, i):
                import sys
                if t.xsplits and sys._getframe(1).f_code.co_name == "_push":
                    os.kill(os.getpid(), signal.SIGKILL)
                return list.__getitem__(self, i)

        t.sleeping_w = DiesInPush(t.sleeping_w)
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        comm.Send(pattern(n, 8), 1, 1)
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, 0, 1)
    comm.Send(np.zeros(1, np.uint8), 0, 2)
    try:
        r.Wait()
    except mmpi.PeerDiedError as e:
        return "died", e.rank, len(t.streams), t.stats_xsplit
    return "completed", None, len(t.streams), t.stats_xsplit


def test_sender_dies_mid_split(monkeypatch):
    """The sender dies after the split, its part not all in: the receive raises
    PeerDiedError naming it, the partial message is dropped, no hang."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    res = run_ranks(_sender_dies_mid_split, 2)
    assert res[0][0] is False and res[0][1][0] == "Killed"
    assert values([res[1]]) == [("died", 0, 0, 1)]


# ------------------------------------------------------------- review findings (mid13)

def _probe_over_staged(comm, n, flag):
    """Rank 1 drains part of rank 0's stream (unmatched: staged), stops; rank 0's
    Send returns (its last chunks in the ring) and it changes its buffer; then
    rank 1's Recv matches with chunks still to come and asks for a split: the
    first read of rank 0's memory (may we read it?) must not land in the buffer."""
    import os
    if comm.rank == 0:
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        a = pattern(n, 4)
        comm.Send(a, 1, 4)
        a[:] = 0xFF
        open(flag, "w").close()
        comm.Barrier()
        return None
    t = comm._t
    comm.Send(np.zeros(1, np.uint8), 0, 2)
    time.sleep(0.3)   # rank 0 has filled the ring
    while not comm.Iprobe(0, 4):
        time.sleep(0.001)
    staged = [st.got for st in t.streams.values()]
    while not os.path.exists(flag):   # no MPI call: the rest stays in the ring
        time.sleep(0.001)
    b = np.zeros(n, np.uint8)
    comm.Recv(b, 0, 4)
    comm.Barrier()
    return staged, n - staged[0] >= (128 << 10), bool((b == pattern(n, 4)).all())


def test_first_read_probe_never_lands_in_the_receive_buffer(monkeypatch, tmp_path):
    """(review 1: the probe read 64 bytes of the sender's buffer as it now was over
    the staged start of the receive)"""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    n = 3 * MIB
    _, (staged, rest_to_come, ok) = values(run_ranks(_probe_over_staged, 2, n,
                                                     str(tmp_path / "sent")))
    assert staged[0] > 0 and rest_to_come
    assert ok


def _sendrecv_interrupted(comm, n):
    """Rank 0's Sendrecv: its send split (rank 1 waits in Recv for it, then is slow
    to read its part), its receive interrupted by a signal handler's exception
    meanwhile; rank 0 then changes the send buffer."""
    t = comm._t
    if comm.rank == 1:
        b = _slow_receive(comm, n, 1.0)
        comm.Send(np.zeros(1, np.uint8), 0, 9)
        return bool((b == pattern(n, 7)).all()), t.stats_xsplit
    comm.Recv(np.zeros(1, np.uint8), 1, 2)
    a = pattern(n, 7)
    how = _interrupt_after(0.3, lambda: comm.Sendrecv(a, 1, 1, np.zeros(1, np.uint8), 1, 9))
    a[:] = 0xFF
    if how == "interrupted":   # (its receive was cancelled: the message is still due)
        comm.Recv(np.zeros(1, np.uint8), 1, 9)
    return how, t.stats_xkept


def test_interrupted_sendrecv_settles_its_split_send(monkeypatch):
    """(review 2: _wait_both kept the send without waiting for the receiver's read)"""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    (how, settled), (ok, splits) = values(run_ranks(_sendrecv_interrupted, 2, 4 * MIB + 5))
    assert how == "interrupted" and settled == 1
    assert ok and splits == 1


class _AfterPublish(Exception):
    pass


class _RaisesInPush(list):
    """``sleeping_w`` whose first look-up from ``_push`` raises: where a signal
    handler's exception may come right after a chunk's head is published."""

    raised = 0

    def __getitem__(self, i):
        import sys
        if not self.raised and sys._getframe(1).f_code.co_name == "_push":
            self.raised = 1
            raise _AfterPublish()
        return list.__getitem__(self, i)


def _chunk_then_exception(comm, n):
    """Rank 0's Send publishes a chunk and an exception comes right after: the
    chunk is out and must not be sent (or counted) twice."""
    t = comm._t
    if comm.rank == 1:
        b = np.zeros(n, np.uint8)
        comm.Send(np.zeros(1, np.uint8), 0, 2)
        comm.Recv(b, 0, 3)
        comm.Barrier()
        return bool((b == pattern(n, 3)).all())
    comm.Recv(np.zeros(1, np.uint8), 1, 2)
    time.sleep(0.2)   # rank 1 waits in its Recv
    sw = t.sleeping_w
    t.sleeping_w = _RaisesInPush(sw)
    try:
        comm.Send(pattern(n, 3), 1, 3)
        how = "completed"
    except _AfterPublish:
        how = "raised"
    finally:
        t.sleeping_w = sw
    comm.Barrier()   # (progress: the rest goes out)
    return how


def test_exception_after_a_chunk_is_published_counts_it_once(monkeypatch):
    """(review 3: the chunk was sent again and the count overshot: the receive hung)
    Plain stream: a split receiver asks before the first chunk here."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    monkeypatch.setenv("DRILLER_MMPI_XSPLIT_REST", "0")
    assert values(run_ranks(_chunk_then_exception, 2, 3 * MIB + 77)) == ["raised", True]


def _freed_isend_then_exit(comm, n):
    """Rank 0 frees its Isend once split and exits; rank 1 reads its part late."""
    t = comm._t
    if comm.rank == 1:
        b = _slow_receive(comm, n, 0.5)
        return bool((b == pattern(n, 9)).all()), t.stats_xsplit
    comm.Recv(np.zeros(1, np.uint8), 1, 2)
    r = comm.Isend(pattern(n, 9), 1, 1)
    while not t.xsplits:
        t.progress()
    r.Free()
    left = len(t.xsplits)
    t.finish()   # (as Finalize and the exit hook do)
    return left, len(t.xsplits)


def test_exit_waits_for_a_split_read(monkeypatch):
    """(review 4: Finalize/exit did not wait for the receiver's read of a split)"""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    assert values(run_ranks(_freed_isend_then_exit, 2, 4 * MIB + 9)) == [(1, 0), (True, 1)]


def _early_irecv_then_compute(comm, n, flag):
    """Rank 1 posts its receive, makes one progress call after the envelope came,
    then computes (no MPI call) until rank 0's Send has returned."""
    import os
    t = comm._t
    if comm.rank == 0:
        return _posted(comm, n, 5, flag)
    b, r = _posted(comm, n, 5, flag)
    while not t.streams:
        r.Test()
    asked = any(st.req for st in t.streams.values())
    end = time.monotonic() + 30   # (a deadline, not a measurement: it never comes)
    while not os.path.exists(flag) and time.monotonic() < end:
        time.sleep(0.001)
    returned = os.path.exists(flag)
    r.Wait()
    comm.Barrier()
    return asked, returned, bool((b == pattern(n, 5)).all())


def test_a_send_never_waits_for_its_receivers_next_call(monkeypatch, tmp_path):
    """(review 5: a receive asked for the split from any progress, and the split
    Send then waited for the receiver's next MPI call) A receive that is not
    blocked on asks nothing: the Send streams and returns."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(16 * MIB))
    n = 8 * MIB
    _, out = values(run_ranks(_early_irecv_then_compute, 2, n, str(tmp_path / "sent"),
                              deadline=90))
    assert out == (False, True, True)


def _write_fails(comm, n):
    """Rank 0's process_vm_writev of its part fails with EIO (not a denial, not a
    death): its part must still arrive (as chunks), and the next split works."""
    import errno

    from driller import _linux
    t = comm._t
    out = []
    for i in range(2):
        if comm.rank == 0:
            if i == 0:
                writev = _linux.process_vm_writev

                def failing(*args):
                    _linux.process_vm_writev = writev   # (once)
                    raise OSError(errno.EIO, "Input/output error")

                _linux.process_vm_writev = failing
            comm.Recv(np.zeros(1, np.uint8), 1, 2)
            comm.Send(pattern(n, 12 + i), 1, 12)
            continue
        b = np.zeros(n, np.uint8)
        r = comm.Irecv(b, 0, 12)
        comm.Send(np.zeros(1, np.uint8), 0, 2)
        r.Wait()
        out.append((bool((b == pattern(n, 12 + i)).all()), t.stats_xsplit))
    comm.Barrier()
    return out


def test_a_failed_write_still_delivers_the_sender_part(monkeypatch):
    """(review 6: SDONE reported the bytes written although the write had failed)"""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    _, out = values(run_ranks(_write_fails, 2, 4 * MIB + 33))
    assert out == [(True, 1), (True, 2)]


def _withdrawn(comm, n):
    """Rank 0's Isend fills the ring; rank 0 is then stopped (SIGSTOP) while rank
    1's Wait drains the ring, asks for a split and leaves by a signal handler's
    exception: the request is taken back (the slot free) before Wait raises; once
    rank 0 runs again, the next Wait asks again and every byte comes."""
    import os
    t = comm._t
    if comm.rank == 0:
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        s = comm.Isend(pattern(n, 13), 1, 13)
        s.Wait()
        comm.Barrier()
        return None
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, 0, 13)
    comm.Send(np.zeros(1, np.uint8), 0, 2)
    while not t.streams:   # the envelope (matched: no request from here)
        t.progress()
        time.sleep(0.001)
    time.sleep(0.3)   # rank 0's Isend has filled the ring
    pid = t.pid_of(0)
    os.kill(pid, signal.SIGSTOP)
    try:
        how = _interrupt_after(0.2, r.Wait)
    finally:
        seen = [[bool(st.req) for st in t.streams.values()]]   # (asked, withdrawn)
        slot = t.words[t.in_xw[0]]
        os.kill(pid, signal.SIGCONT)
    r.Wait()
    comm.Barrier()
    return how, seen, slot, bool((b == pattern(n, 13)).all())


def test_a_request_is_withdrawn_when_its_wait_ends(monkeypatch):
    """(review 5: the request outlived the wait that made it, and the split sender
    then depended on the receiver's next call)"""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    _, out = values(run_ranks(_withdrawn, 2, 6 * MIB + 1))
    assert out == ("interrupted", [[True]], 0, True)


def test_stream_counts_byte_ranges_once():
    """_Stream.cover: chunks in order, a chunk again, the parts of a split out of
    order; complete only when every byte is in, whatever came twice."""
    from driller.mmpi._transport import _Stream
    st = _Stream(1000)
    assert not st.cover(0, 100) and not st.cover(100, 300)
    assert not st.cover(100, 300) and st.got == 300   # sent again: counted once
    assert not st.cover(600, 1000) and st.got == 700   # the sender's part (SDONE)
    assert not st.cover(250, 500) and st.got == 900   # overlapping what came
    assert st.have == [[0, 500], [600, 1000]]
    assert st.cover(500, 600) and st.have == [[0, 1000]]
