"""The blocking small path, ninth round (issue 12): Send's cached ``[mmap, count, dt]``
spec goes straight to the transport's fused sender.

Once a spec (the same mmap, count and datatype objects) was sent twice to the same
rank of the same communicator, ``_comm._LAST_SEND`` also holds that communicator's
record, the rank, the transport's fused sender for those bytes (it slices the mmap
itself, given it each call) and the tag: the next such ``Send`` makes no rank
check, table look-up or slice of its own.  What these tests hold it to: every
change to the spec, the buffer (rewritten, resized, closed, rebound), the rank,
the tag or the communicator ends as on the general path (the right bytes to the
right place, or the same error, nothing sent); the cache keeps no buffer and no
freed communicator's record alive; a fork, Finalize or ``make_unusable`` drops it;
a spec sent to ranks in turn moves to the new rank only after a run of sends."""

from __future__ import annotations

import gc
import mmap
import weakref

import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T

from test_lat8c import _messages, _ping_pong
from test_mmpi_p2p import run_ranks, values
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def _nothing_waiting(c1) -> bool:
    return not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


def _warm(c0, c1, spec, dest=1, tag=1):
    """Send ``spec`` three times (the table, then the cached spec, then its peer)."""
    out = bytearray(64)
    for _ in range(3):
        c0.Send(spec, dest, tag)
        c1.Recv(out, 0, tag)
    return out


def _fused_for(c0, dest=1):
    c = C._LAST_SEND
    return c[5] is c0._p and c[6] is dest and c[7] is not None


def _cached(c0, c1, payload=b"", dest=1, tag=1, size=64):
    """A new ``[mmap, 8, BYTE]`` spec holding ``payload``, sent until its rank is
    cached with it: (the mmap, the spec, a receive buffer)."""
    mm = mmap.mmap(-1, size)
    mm[:len(payload)] = payload
    spec = [mm, 8, MPI.BYTE]
    out = _warm(c0, c1, spec, dest, tag)
    assert _fused_for(c0, dest)
    return mm, spec, out


def _refused_unsent(c0, c1, spec, says):
    """``c0.Send(spec, 1)`` raises MmpiError saying ``says``; nothing reaches ``c1``."""
    with pytest.raises(MmpiError, match=says):
        c0.Send(spec, 1, 3)
    assert _nothing_waiting(c1)


def _error(call):
    with pytest.raises(MmpiError) as ei:
        call()
    return type(ei.value), ei.value.Get_error_class(), str(ei.value)


def test_the_fused_send_follows_the_buffer(pair):
    _, _, c0, c1 = pair
    mm, spec, out = _cached(c0, c1, b"ABCDEFGHIJKLMNOP")   # the peer cached with it
    mm2 = mmap.mmap(-1, 64)
    mm2[:16] = b"abcdefghijklmnop"
    st = MPI.Status()
    mm[:8] = b"rewrite!"                              # read afresh at each send
    c0.Send(spec, 1, 1)
    c1.Recv(out, 0, 1, st)
    assert out[:8] == b"rewrite!" and st.Get_count(MPI.BYTE) == 8 and _fused_for(c0)
    spec[0] = mm2                                     # rebound: that buffer's bytes
    c0.Send(spec, 1, 2)
    c1.Recv(out, 0, 2, st)
    assert out[:8] == b"abcdefgh" and st.Get_count(MPI.BYTE) == 8
    spec[0] = mm
    _warm(c0, c1, spec)
    assert _fused_for(c0)
    mm.resize(4)                                      # shrunk under the cached spec
    _refused_unsent(c0, c1, spec, "4")
    mm.resize(64)
    mm[:8] = b"grown ok"                              # (resized back: sent again)
    c0.Send(spec, 1, 4)
    c1.Recv(out, 0, 4)
    assert out[:8] == b"grown ok"
    _warm(c0, c1, spec)
    mm.close()                                        # closed under the cached spec
    _refused_unsent(c0, c1, spec, "closed")
    mm2.close()


def test_a_bad_tag_or_another_rank_is_checked_as_before(pair):
    _, _, c0, c1 = pair
    mm, spec, out = _cached(c0, c1, b"tagcheck", tag=7)
    assert C._LAST_SEND[8] == 7
    for bad in (-5, 2**31, MPI.ANY_TAG, "7", None):
        got = _error(lambda: c0.Send(spec, 1, bad))
        assert got == _error(lambda: c0.Send(b"tagcheck", 1, bad))   # the general path's
    for bad in (2, -3, MPI.ANY_SOURCE, 1.5e30, float("nan")):
        got = _error(lambda: c0.Send(spec, bad, 7))
        assert got == _error(lambda: c0.Send(b"tagcheck", bad, 7))
    assert _nothing_waiting(c1)
    st = MPI.Status()
    c0.Send(spec, 1, 9)                               # another valid tag: checked, sent
    c1.Recv(out, 0, MPI.ANY_TAG, st)
    assert st.Get_tag() == 9 and out[:8] == b"tagcheck"
    c0.Send(spec, 0, 7)                               # to itself: not rank 1's ring
    assert _nothing_waiting(c1)
    c0.Recv(out, 0, 7, st)
    assert st.Get_source() == 0 and out[:8] == b"tagcheck"
    mm.close()


def test_a_rank_cached_with_a_bad_tag_checks_the_next_tag(pair):
    # the rank can be cached by a send whose tag is bad (the cache is filled before
    # the general path refuses it): then a tag of None must not pass for the same
    # tag and reach the fused sender (it raised struct.error, not MmpiError)
    _, _, c0, c1 = pair
    mm = mmap.mmap(-1, 64)
    mm[:8] = b"badtag.."
    spec = [mm, 8, MPI.BYTE]
    out = bytearray(64)
    c0.Send(spec, 1, 1)   # Send's table and the spec's cache (no rank yet)
    c1.Recv(out, 0, 1)
    assert C._LAST_SEND[5] is None
    for bad in (-5, None, "1"):   # the first caches the rank, with no valid tag
        got = _error(lambda: c0.Send(spec, 1, bad))
        assert got == _error(lambda: c0.Send(b"badtag..", 1, bad))   # the general path's
    assert _fused_for(c0) and _nothing_waiting(c1)
    assert _warm(c0, c1, spec, 1, 2)[:8] == b"badtag.."   # valid tags go through
    mm.close()


def test_another_communicator_gets_its_own_context(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 12, "dup"), C.Comm(t1, [0, 1], 12, "dup")
    r0, r1 = C.Comm(t0, [1, 0], 14, "rev"), C.Comm(t1, [1, 0], 14, "rev")
    mm, spec, out = _cached(c0, c1, b"contexts")
    d0.Send(spec, 1, 1)                               # the same rank of another communicator
    assert _nothing_waiting(c1)                       # not in c0's context
    d1.Recv(out, 0, 1)
    assert out[:8] == b"contexts"
    r0.Send(spec, 1, 1)                               # rank 1 of a reversed group: itself
    assert _nothing_waiting(c1) and _nothing_waiting(d1)
    r0.Recv(out, 1, 1)
    assert out[:8] == b"contexts"
    mm.close()


def test_a_spec_sent_in_turn_moves_to_a_new_rank_after_a_run(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 16, "dup"), C.Comm(t1, [0, 1], 16, "dup")
    mm, spec, out = _cached(c0, c1)
    fused = C._LAST_SEND[7]
    for i in range(C._SEND_PEER_SWITCH - 1):          # another communicator, not yet taken
        mm[:8] = b"turn%04d" % i
        d0.Send(spec, 1, 1)
        d1.Recv(out, 0, 1)
        assert out[:8] == b"turn%04d" % i
    assert _fused_for(c0) and C._LAST_SEND[7] is fused
    d0.Send(spec, 1, 1)                               # the run's last: d0's from now on
    d1.Recv(out, 0, 1)
    assert _fused_for(d0) and not _fused_for(c0)
    mm[:8] = b"d0 fused"
    d0.Send(spec, 1, 2)
    assert _nothing_waiting(c1)
    d1.Recv(out, 0, 2)
    assert out[:8] == b"d0 fused"
    mm.close()


def test_float_ranks_are_cached_by_object_and_convert_as_before(pair):
    _, _, c0, c1 = pair
    partner = 0 + 2 / 2                               # osu_multi_lat's ``myid + pairs``
    mm, spec, out = _cached(c0, c1, b"floatdst", dest=partner)
    st = MPI.Status()
    c0.Send(spec, partner, 1)
    c1.Recv(out, 0, 1, st)
    assert out[:8] == b"floatdst" and st.Get_source() == 0
    c0.Send(spec, 0.0, 1)                             # another float object: itself
    assert _nothing_waiting(c1)
    c0.Recv(out, 0, 1)
    mm.close()


def test_the_cache_keeps_no_buffer_and_no_freed_record_alive(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 18, "dup"), C.Comm(t1, [0, 1], 18, "dup")
    mm, spec, _ = _cached(d0, d1, size=1 << 20)
    buf, rec = weakref.ref(mm), weakref.ref(d0._p)
    del spec, mm
    gc.collect()
    assert buf() is None                              # the fused sender holds no mmap
    mm, spec, _ = _cached(d0, d1)
    d0.Free()
    with pytest.raises(MmpiError) as ei:
        d0.Send(spec, 1, 1)
    assert ei.value.Get_error_class() == MPI.ERR_COMM
    assert _nothing_waiting(d1)
    del ei
    gc.collect()
    assert rec() is None                              # the freed record is not kept
    mm.close()


def test_an_unusable_transport_drops_the_fused_sender(pair):
    t0, t1, c0, c1 = pair
    mm, spec, _ = _cached(c0, c1)
    T.make_unusable(t0, "this rank is finalized (test)")
    assert C._LAST_SEND[5] is None and C._LAST_SEND[7] is None
    for _ in range(3):
        with pytest.raises(MmpiError, match="finalized"):
            c0.Send(spec, 1, 1)
    assert _nothing_waiting(c1)
    mm.close()


def _fork_after_fused(comm):
    """osu's loop with one spec list (the fused sender cached), then a fork: the
    child's Send of that spec raises and sends nothing."""
    import os
    peer = 1 - comm.rank
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    ss, rs = [sm, 8, MPI.BYTE], [rm, 8, MPI.BYTE]
    for i in range(20):
        if comm.rank == 0:
            comm.Send(ss, peer, 1)
            comm.Recv(rs, peer, 1)
        else:
            comm.Recv(rs, peer, 1)
            comm.Send(ss, peer, 1)
    if comm.rank == 1:
        comm.Recv(rs, 0, 2)
        got, more = rm[:8], comm.Iprobe(0, MPI.ANY_TAG)
        comm.Send(ss, 0, 3)
        return got, more
    cached = C._LAST_SEND[5] is comm._p and C._LAST_SEND[6] == peer
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child
        msgs = _messages((lambda: comm.Send(ss, peer, 2), lambda: comm.Send(ss, peer, 1)))
        os.write(w, repr(msgs).encode())
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msgs = eval(os.read(r, 65536).decode())
    os.close(r)
    sm[:8] = b"parent!!"
    comm.Send(ss, peer, 2)
    comm.Recv(rs, peer, 3)
    return cached, status, msgs


def test_a_forked_child_cannot_use_the_fused_sender():
    (cached, status, msgs), (got, more) = values(run_ranks(_fork_after_fused, 2))
    assert cached and status == 0 and len(msgs) == 2
    for m in msgs:
        assert m.startswith("this process is a fork of rank 0"), msgs
    assert got == b"parent!!" and more is False


def _finalize_after_fused(comm):
    peer = 1 - comm.rank
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    _ping_pong(comm, sm, rm, 5)
    comm.Barrier()
    cached = C._LAST_SEND[5] is comm._p
    MPI.Finalize()
    return cached, _messages((lambda: comm.Send([sm, 8, MPI.BYTE], peer, 1),))


def test_after_finalize_the_fused_sender_raises():
    for cached, msgs in values(run_ranks(_finalize_after_fused, 2)):
        assert cached and len(msgs) == 1
        assert msgs[0].startswith("MPI.Finalize() was called in this rank"), msgs


def test_a_freed_communicator_reports_a_closed_cached_buffer_first(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 20, "dup"), C.Comm(t1, [0, 1], 20, "dup")
    mm, spec, _ = _cached(d0, d1)
    d0.Free()                                         # (drops the cached rank)
    _warm(c0, c1, spec)                               # cached again: c0's, rank 1
    assert _fused_for(c0)
    mm.close()
    for comm in (d0, c0):                             # rank 1 as cached; a freed one
        with pytest.raises(MmpiError) as ei:          # too: the buffer's error, as the
            comm.Send(spec, 1, 1)                     # general path's (mpi4py parses the
        assert ei.value.Get_error_class() != MPI.ERR_COMM   # buffer first)
        assert "closed" in str(ei.value)
    assert _nothing_waiting(c1)
