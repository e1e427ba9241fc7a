"""Streamed messages (mid-size standard sends, pipelined through the rings) with
real ranks: sizes around the protocol thresholds, every byte checked, wildcards,
unexpected (staged) messages, probes, truncation, windows of Isends, peer death
mid-message.  The harness is test_mmpi_p2p's (forked ranks, a deadline, no
timed assertions)."""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.mmpi import _transport as T
from driller.mmpi import _world

from test_mmpi_p2p import run_ranks, values

MIB = 1 << 20


def pattern(n: int, seed: int = 0) -> np.ndarray:
    return ((np.arange(n, dtype=np.int64) * 7 + seed) % 251).astype(np.uint8)


def _around_thresholds(comm):
    """Rank 0 sends each size around this transport's thresholds (a distinct
    pattern), rank 1 receives it into a buffer one byte larger and checks every
    byte and the status (one message at a time: the bytes streamed are counted
    per message)."""
    t = comm._t
    limit, smax = t.eager_limit, t.stream_max
    sizes = [limit - 1, limit, limit + 1, limit + 4097, smax - 1, smax, smax + 1]
    out = []
    for i, n in enumerate(sizes):
        comm.Barrier()
        if comm.rank == 0:
            comm.Send(pattern(n, i), 1, i)
        else:
            b = np.full(n + 1, 0xEE, np.uint8)
            st = MPI.Status()
            before = t.stats_streamed
            comm.Recv(b, 0, i, st)
            out.append((n, bool((b[:n] == pattern(n, i)).all()) and b[n] == 0xEE,
                        st.Get_count(MPI.BYTE), st.Get_source(), st.Get_tag(),
                        t.stats_streamed - before))
    return out, limit, smax


@pytest.mark.parametrize("stream_max", [None, 3 * MIB])
def test_sizes_around_each_threshold(monkeypatch, stream_max):
    """Eager up to the eager limit, streamed above it up to stream_max, rendezvous
    beyond: every byte arrives, in every protocol, at each edge.  (The direct write
    is off: a receive published before the send (a blocked Recv, as happens under
    load) takes sizes from DIRECT_MIN up to stream_max directly, not streamed, and
    the count below would depend on which rank came first; tests/test_mmpi_direct.py
    covers that path.)"""
    monkeypatch.setenv("DRILLER_MMPI_DIRECT_MIN", "0")
    if stream_max is not None:
        monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", str(stream_max))
    (_, _, _), (out, limit, smax) = values(run_ranks(_around_thresholds, 2))
    assert limit == T.DEFAULT_EAGER_LIMIT
    assert smax == (stream_max or _default_stream_max(2))
    for n, ok, count, src, tag, streamed in out:
        assert ok and count == n and src == 0, (n, ok, count, src)
        assert streamed == (n if limit < n <= smax else 0), (n, streamed)


def _default_stream_max(nranks: int) -> int:
    """STREAM_MAX, or half a ring when the ranks outnumber this process's cores."""
    if nranks <= len(os.sched_getaffinity(0)):
        return T.STREAM_MAX
    return min(T.STREAM_MAX, _world.default_ring_bytes(nranks) // 2)


def _stream_max(comm):
    return comm._t.stream_max


@pytest.mark.parametrize("nranks", [2, 5])
def test_oversubscribed_streams_only_what_fits_half_a_ring(nranks):
    assert values(run_ranks(_stream_max, nranks)) == [_default_stream_max(nranks)] * nranks


def _any_source_two_streams(comm, n):
    """Ranks 1 and 2 stream to rank 0 at once (their chunks interleave on two
    rings); rank 0 takes them with ANY_SOURCE / ANY_TAG."""
    if comm.rank == 0:
        got = {}
        for _ in range(2):
            b = np.zeros(n, np.uint8)
            st = MPI.Status()
            comm.Recv(b, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            s = st.Get_source()
            got[s] = (bool((b == pattern(n, s)).all()), st.Get_tag(), st.Get_count(MPI.BYTE))
        return got, comm._t.stats_streamed
    comm.Send(pattern(n, comm.rank), 0, 10 + comm.rank)
    return None


def test_any_source_two_senders_at_once(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", str(8 * MIB))  # 3 ranks may share cores
    n = 3 * MIB + 5
    (got, streamed), _, _ = values(run_ranks(_any_source_two_streams, 3, n))
    assert got == {1: (True, 11, n), 2: (True, 12, n)}
    assert streamed == 2 * n


def _unexpected_then_received(comm, n):
    """The message arrives before any receive is posted: its chunks are staged
    (rank 1 drains them while it waits in a Barrier), then copied at the match;
    a Probe sees it first, an Mprobe/Mrecv takes the second one, a third is
    received while still partly in flight."""
    if comm.rank == 0:
        reqs = [comm.Isend(pattern(n, k), 1, k) for k in range(3)]
        comm.Barrier()
        MPI.Request.Waitall(reqs)
        comm.Barrier()
        return None
    comm.Barrier()   # its progress stages what arrives meanwhile
    st = MPI.Status()
    comm.Probe(0, 0, st)
    probed = st.Get_count(MPI.BYTE)
    b = np.zeros(n, np.uint8)
    comm.Recv(b, 0, 0)
    ok = bool((b == pattern(n, 0)).all())
    msg = comm.Mprobe(0, 1, st)
    b[:] = 0
    msg.Recv(b)
    ok = ok and bool((b == pattern(n, 1)).all())
    b[:] = 0
    comm.Recv(b, 0, 2)
    ok = ok and bool((b == pattern(n, 2)).all())
    comm.Barrier()
    return ok, probed, comm._t.stats_streamed, len(comm._t.streams)


def test_unexpected_stream_is_staged_then_delivered():
    _, (ok, probed, streamed, left) = values(run_ranks(_unexpected_then_received, 2,
                                                       2 * MIB + 3))
    assert ok and probed == 2 * MIB + 3
    assert streamed == 3 * (2 * MIB + 3) and left == 0


def _truncated(comm, n, cap, early):
    """A streamed message larger than the receive buffer: TruncationError, the
    first ``cap`` bytes received, nothing written past them, and the next message
    on the same ring intact (the rest of the chunks were consumed)."""
    if comm.rank == 0:
        if not early:
            comm.Barrier()
        comm.Send(pattern(n, 1), 1, 3)
        comm.Send(pattern(n, 2), 1, 4)
        if early:
            comm.Barrier()
        return None
    if early:   # the message is staged (unexpected) before the receive
        comm.Barrier()
    buf = np.full(cap + 64, 0xEE, np.uint8)
    err = None
    try:
        if not early:
            comm.Barrier()
            req = comm.Irecv([buf, cap, MPI.BYTE], 0, 3)
            req.Wait()
        else:
            comm.Recv([buf, cap, MPI.BYTE], 0, 3)
    except mmpi.TruncationError as e:
        err = str(e)
    ok = bool((buf[:cap] == pattern(n, 1)[:cap]).all()) and bool((buf[cap:] == 0xEE).all())
    b = np.zeros(n, np.uint8)
    comm.Recv(b, 0, 4)
    return err, ok, bool((b == pattern(n, 2)).all())


@pytest.mark.parametrize("early", [False, True], ids=["posted-first", "staged-first"])
def test_truncated_stream(early):
    n, cap = 3 * MIB + 11, 2 * MIB + 1
    _, (err, ok, next_ok) = values(run_ranks(_truncated, 2, n, cap, early))
    assert err is not None and f"{n} bytes" in err and f"{cap}-byte" in err, err
    assert ok and next_ok


def _window(comm, n, window, distinct):
    """osu_bw's pattern: a window of Isends (one buffer, or one each), the
    receiver's Irecvs posted first, then the other way with the receives late."""
    oks = []
    for rnd in range(2):
        if comm.rank == 0:
            bufs = [pattern(n, k) for k in range(window)] if distinct else [pattern(n, 9)]
            if rnd:
                comm.Barrier()
            MPI.Request.Waitall([comm.Isend(bufs[k % len(bufs)], 1, 5) for k in range(window)])
            if not rnd:
                comm.Barrier()
        else:
            bufs = [np.zeros(n, np.uint8) for _ in range(window)]
            if not rnd:
                reqs = [comm.Irecv(b, 0, 5) for b in bufs]
                comm.Barrier()
            else:
                comm.Barrier()
                reqs = [comm.Irecv(b, 0, 5) for b in bufs]
            MPI.Request.Waitall(reqs)
            oks.append(all(bool((b == pattern(n, k if distinct else 9)).all())
                           for k, b in enumerate(bufs)))
    return oks, len(comm._t.streams), comm._t.npending


@pytest.mark.parametrize("distinct", [False, True], ids=["one-buffer", "distinct-buffers"])
def test_window_of_isends(distinct):
    (_, left0, pend0), (oks, left1, pend1) = values(run_ranks(_window, 2, 2 * MIB + 64, 6,
                                                              distinct))
    assert oks == [True, True]
    assert left0 == left1 == 0 and pend0 == pend1 == 0


def _both_ways(comm, n):
    """Sendrecv with streamed sizes both ways at once, then Sendrecv_replace."""
    peer = 1 - comm.rank
    b = np.zeros(n, np.uint8)
    comm.Sendrecv(pattern(n, comm.rank), peer, 1, b, peer, 1)
    ok = bool((b == pattern(n, peer)).all())
    c = pattern(n, 10 + comm.rank)
    comm.Sendrecv_replace(c, peer, 2, peer, 2)
    return ok and bool((c == pattern(n, 10 + peer)).all())


def test_sendrecv_both_ways():
    assert values(run_ranks(_both_ways, 2, 5 * MIB + 1)) == [True, True]


def _modes(comm, n):
    """Rsend, Bsend, persistent Send_init and a derived receive datatype stream;
    Ssend keeps the rendezvous (it must know the receive matched)."""
    t = comm._t
    if comm.rank == 0:
        comm.Rsend(pattern(n, 1), 1, 1)
        buf = bytearray(n + MPI.BSEND_OVERHEAD)
        MPI.Attach_buffer(buf)
        comm.Bsend(pattern(n, 2), 1, 2)
        MPI.Detach_buffer()
        p = comm.Send_init(pattern(n, 3), 1, 3)
        p.Start()
        p.Wait()
        p.Free()
        comm.Ssend(pattern(n, 4), 1, 4)
        comm.Send(np.arange(n // 8, dtype=np.float64), 1, 5)
        return None
    oks = []
    for k in (1, 2, 3):
        b = np.zeros(n, np.uint8)
        comm.Recv(b, 0, k)
        oks.append(bool((b == pattern(n, k)).all()))
    before = t.stats_streamed
    b = np.zeros(n, np.uint8)
    comm.Recv(b, 0, 4)
    oks.append(bool((b == pattern(n, 4)).all()))
    ssend_streamed = t.stats_streamed - before
    m = n // 8
    vec = MPI.DOUBLE.Create_vector(m, 1, 2).Commit()
    wide = np.full(2 * m, -1.0)
    comm.Recv([wide, 1, vec], 0, 5)
    vec.Free()
    oks.append(bool((wide[::2] == np.arange(m)).all()) and bool((wide[1::2] == -1).all()))
    return oks, ssend_streamed, t.stats_streamed


def test_send_modes_and_derived_receive():
    n = 2 * MIB + 8
    _, (oks, ssend_streamed, streamed) = values(run_ranks(_modes, 2, n))
    assert oks == [True] * 5
    assert ssend_streamed == 0
    assert streamed == 4 * n


def _recv_object_of_buffer(comm, n):
    """recv() (lowercase) of a buffer message unpickles its bytes, as mpi4py's
    does: the same whether the message came streamed or by rendezvous."""
    obj = {"blob": pattern(n, 3).tobytes(), "x": 1}
    if comm.rank == 0:
        comm.Send(np.frombuffer(pickle.dumps(obj, 5), np.uint8), 1, 0)
        return None
    return comm.recv(source=0, tag=0) == obj, comm._t.stats_streamed > 0


@pytest.mark.parametrize("stream_max", ["0", str(16 * MIB)])
def test_recv_object_of_a_streamed_buffer(monkeypatch, stream_max):
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", stream_max)
    _, v = values(run_ranks(_recv_object_of_buffer, 2, 2 * MIB + 1))
    assert v == (True, stream_max != "0")


# ------------------------------------------------------------------ peer death

SMALL_RING = str(256 << 10)   # 64 KiB chunks: a 12 MiB message is ~200 of them


def _sender_dies_mid_stream(comm):
    n = 12 * MIB
    t = comm._t
    if comm.rank == 0:
        comm.Barrier()
        r = comm.Isend(pattern(n), 1, 0)
        tw = t.out_tailw[1]
        while t.words[tw] < 2 * MIB:   # the receiver took 2 MiB of it: die mid-message
            r.Test()
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)
    b = np.zeros(n, np.uint8)
    comm.Barrier()
    try:
        comm.Recv(b, MPI.ANY_SOURCE, 0)
    except mmpi.PeerDiedError as e:
        return "died", e.rank, len(t.streams)
    return "completed", None, len(t.streams)


def _receiver_dies_mid_stream(comm):
    n = 12 * MIB
    t = comm._t
    if comm.rank == 1:
        comm.Barrier()
        r = comm.Irecv(np.zeros(n, np.uint8), 0, 0)
        while not t.streams or next(iter(t.streams.values())).got < 2 * MIB:
            r.Test()
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Barrier()
    try:
        comm.Send(pattern(n), 1, 0)   # blocks on the full ring, then the death
    except mmpi.PeerDiedError as e:
        t.progress()   # what was queued for the dead rank is dropped
        return "died", e.rank, t.npending
    return "completed", None, t.npending


@pytest.mark.parametrize("who", ["sender", "receiver"])
def test_peer_killed_mid_stream(monkeypatch, who):
    """The sender (or the receiver) dies with the message part way through the
    ring: the other rank raises PeerDiedError naming it, nothing is left in
    flight (no partial stream kept, nothing queued), no hang."""
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", SMALL_RING)
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", str(16 * MIB))
    dies = 0 if who == "sender" else 1
    fn = _sender_dies_mid_stream if who == "sender" else _receiver_dies_mid_stream
    res = run_ranks(fn, 2)
    assert res[dies][0] is False and res[dies][1][0] == "Killed"
    assert values([res[1 - dies]]) == [("died", dies, 0)]


def _denied_single_copy(comm, n):
    """Rank 1 may not read rank 0 (a seccomp filter fails process_vm_readv and
    writev with EPERM): streamed messages never read a peer's memory, so they
    arrive whole, without the denial warning or the push fallback."""
    import errno
    import warnings

    from driller import _linux
    if comm.rank == 0:
        comm.Barrier()
        comm.Send(pattern(n, 4), 1, 1)
        comm.Barrier()
        return None
    _linux.deny_syscalls(["process_vm_readv", "process_vm_writev"], errno.EPERM)
    comm.Barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = np.zeros(n, np.uint8)
        comm.Recv(b, 0, 1)
    comm.Barrier()
    return (bool((b == pattern(n, 4)).all()), comm._t.stats_streamed, comm._t.stats_pushed,
            [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])


def test_streams_need_no_single_copy():
    n = 5 * MIB + 1
    _, (ok, streamed, pushed, warned) = values(run_ranks(_denied_single_copy, 2, n))
    assert ok and streamed == n and pushed == 0 and warned == []
