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


def _all_chunks_first(comm, n, flag):
    """The receive is posted but rank 1 does not progress until rank 0's Send
    (it fits the ring) has put every chunk in (a file says so: no MPI call): the
    request comes too late, the message arrives as a plain stream and the slot
    is free again."""
    import os
    t = comm._t
    if comm.rank == 0:
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        comm.Send(pattern(n, 3), 1, 3)
        open(flag, "w").close()
        comm.Barrier()
        return None
    b = np.zeros(n, np.uint8)
    r = comm.Irecv(b, 0, 3)
    comm.Send(np.zeros(1, np.uint8), 0, 2)
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


def _interrupted_in_split(comm, n, receiver_dies):
    """Rank 1's receive is posted and its request made; then it stops progressing
    (sleeps, or dies) while rank 0's Send is split and waits for rank 1's read."""
    t = comm._t
    if comm.rank == 1:
        b = np.zeros(n, np.uint8)
        r = comm.Irecv(b, 0, 1)
        comm.Send(np.zeros(1, np.uint8), 0, 2)
        while not any(st.req for st in t.streams.values()):
            t.progress()
            time.sleep(0.0002)
        if receiver_dies:
            import os
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(1.0)   # rank 0's split send waits for our read meanwhile
        r.Wait()
        return bool((b == pattern(n, 6)).all()), t.stats_xsplit
    comm.Recv(np.zeros(1, np.uint8), 1, 2)
    a = pattern(n, 6)

    def on_alarm(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        comm.Send(a, 1, 1)
    except Interrupted:
        how = "interrupted"
    except mmpi.PeerDiedError as e:
        how = ("died", e.rank)
    else:
        how = "completed"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    a[:] = 0xFF   # the caller's buffer is its own again once Send has raised
    return how, t.stats_settled, len(t.xsplits)


def test_interrupted_split_send_delivers_the_original_bytes(monkeypatch):
    """A signal handler's exception interrupts the Send while the receiver has yet
    to read its part: Send waits for that read, then raises; the caller's change
    to the buffer after the exception never reaches the receiver."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", RING)
    (how, settled, left), (ok, splits) = values(run_ranks(_interrupted_in_split, 2,
                                                          4 * MIB + 1, False))
    assert how == "interrupted" and settled == 1 and left == 0
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
        comm.Recv(np.zeros(1, np.uint8), 1, 2)
        r = comm.Isend(pattern(n, 8), 1, 1)
        while not t.xsplits:
            r.Test()
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGKILL)
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
