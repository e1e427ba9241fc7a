"""The blocking small path, sixth round (issue 12): Send's and Recv's tables of
per-peer closures (Sendrecv's inline path shares Send's).

Each communicator's point-to-point record (``Comm._p``, a ``_comm._P2P``) keeps
``sends`` and ``recvs``: the transport's per-peer closures by rank of that
communicator, looked up through the transport on first use.  What these tests
hold the tables to: a fork or Finalize (``make_unusable``, which empties every
table) still makes Send and Recv raise and send nothing; a freed communicator
raises ERR_COMM; a subclass's own Send/Recv stay its own; a reordered group maps
ranks as before; numpy and float ranks and every bad argument end as on the
general path."""

from __future__ import annotations

import ast
import gc
import mmap
import os
import weakref

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values
from test_mmpi_trust import _refused
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def _nothing_waiting(c1) -> bool:
    return not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


def _osu_round(c0, c1, tag=1, payload=b"ABCDEFGH"):
    """One of osu_latency's Send/Recv pairs on [mmap, 8, BYTE] specs (fills the tables)."""
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    sm[:8] = payload
    st = MPI.Status()
    c0.Send([sm, 8, MPI.BYTE], 1, tag)
    c1.Recv([rm, 8, MPI.BYTE], 0, tag, st)
    got = rm[:8]
    sm.close()
    rm.close()
    return got, st.Get_source(), st.Get_tag()


def test_tables_fill_on_first_use_and_map_ranks_through_the_group(pair):
    t0, t1, c0, c1 = pair
    assert c0._p.sends == [None, None] and c1._p.recvs == [None, None]
    assert _osu_round(c0, c1) == (b"ABCDEFGH", 0, 1)
    assert c0._p.sends[1] is t0.senders[1] and c1._p.recvs[0] is t1.recvers[0]
    # a reversed group (a Split by descending key): rank 0 of it is world rank 1
    r0, r1 = C.Comm(t0, [1, 0], 6, "rev"), C.Comm(t1, [1, 0], 6, "rev")
    st = MPI.Status()
    out = bytearray(4)
    r0.Send(b"rev!", 0, 2)                         # to its rank 0: world rank 1
    r1.Recv(out, 1, 2, st)                         # from its rank 1: world rank 0
    assert out == b"rev!" and st.Get_source() == 1
    assert r0._p.sends == [t0.senders[1], None] and r1._p.recvs == [None, t1.recvers[0]]
    r1.Send(b"back", 1, 3)
    r0.Recv(out, 0, 3, st)
    assert out == b"back" and st.Get_source() == 0
    r1.Send(b"pong", 1, 4)                         # waiting for r0's Sendrecv below
    r0.Sendrecv(b"ping", 0, 4, out, 0, 4, st)      # (Sendrecv shares Send's table)
    assert out == b"pong" and st.Get_source() == 0
    r1.Recv(out, 1, 4, st)
    assert out == b"ping" and st.Get_source() == 1
    assert _nothing_waiting(c0) and _nothing_waiting(c1)


def test_an_unusable_transport_empties_every_table_and_sends_nothing(pair):
    t0, t1, c0, c1 = pair
    other = C.Comm(t0, [0, 1], 8, "other")        # a second communicator on t0
    o1 = C.Comm(t1, [0, 1], 8, "other")
    assert _osu_round(c0, c1) == (b"ABCDEFGH", 0, 1)
    other.Send(b"x", 1, 1)
    o1.Recv(bytearray(1), 0, 1)
    c1.Send(b"y", 0, 1)
    c0.Recv(bytearray(1), 1, 1)                    # c0's recvs[1] made too
    assert c0._p.sends[1] is not None and c0._p.recvs[1] is not None
    T.make_unusable(t0, "this rank is finalized (test)")
    assert c0._p.sends == [None, None] and other._p.sends == [None, None]
    assert c0._p.recvs == [None, None]
    mm = mmap.mmap(-1, 64)
    for call in (lambda: c0.Send([mm, 8, MPI.BYTE], 1, 1),
                 lambda: c0.Send(b"12345678", 1, 1),
                 lambda: c0.Send(np.zeros(1), np.int64(1), 1),   # (numpy rank: its own path)
                 lambda: other.Send([mm, 8, MPI.BYTE], 1, 1),
                 lambda: c0.Recv([mm, 8, MPI.BYTE], 1, 1),
                 lambda: c0.Recv(bytearray(8), 1, 1),
                 lambda: c0.Sendrecv(b"12345678", 1, 1, bytearray(8), 1, 1)):
        with pytest.raises(MmpiError, match="finalized"):
            call()
    assert _nothing_waiting(c1) and _nothing_waiting(o1)
    mm.close()


def test_a_freed_communicator_raises_err_comm_and_its_record_goes(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 10, "dup"), C.Comm(t1, [0, 1], 10, "dup")
    assert _osu_round(d0, d1, 4) == (b"ABCDEFGH", 0, 4)
    rec = weakref.ref(d0._p)
    assert rec() in C._P2PS
    d0.Free()
    mm = mmap.mmap(-1, 64)
    for call in (lambda: d0.Send([mm, 8, MPI.BYTE], 1, 4), lambda: d0.Send(b"x", 1, 4),
                 lambda: d0.Recv([mm, 8, MPI.BYTE], 1, 4)):
        with pytest.raises(MmpiError) as ei:
            call()
        assert ei.value.Get_error_class() == MPI.ERR_COMM
    assert _nothing_waiting(d1)
    del ei, call
    gc.collect()
    assert rec() is None                           # (held weakly: gone with the record)
    assert _osu_round(c0, c1, 5) == (b"ABCDEFGH", 0, 5)   # the others unaffected
    mm.close()


def test_a_subclass_keeps_its_own_send_and_recv(pair):
    t0, t1, _, _ = pair
    calls = []

    class Logged(C.Comm):
        def Send(self, buf, dest, tag=0):
            calls.append(("Send", dest, tag))
            super().Send(buf, dest, tag)

        def Recv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
            calls.append(("Recv", source, tag))
            super().Recv(buf, source, tag, status)

    l0, l1 = Logged(t0, [0, 1], 12, "l"), Logged(t1, [0, 1], 12, "l")
    for i in range(3):
        assert _osu_round(l0, l1, 7, b"logged%02d" % i) == (b"logged%02d" % i, 0, 7)
    assert calls == [("Send", 1, 7), ("Recv", 0, 7)] * 3
    assert l0._p.sends[1] is t0.senders[1]          # the base's Send filled the table


def test_numpy_and_float_ranks_and_bad_arguments_end_as_before(pair):
    t0, t1, c0, c1 = pair
    mm, out = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    mm[:8] = b"numpyrnk"
    st = MPI.Status()
    for dest, tag, src in ((np.int64(1), np.int32(3), np.int16(0)), (1.0, 3.0, 0.0), (1, 3, 0)):
        c0.Send([mm, 8, MPI.BYTE], dest, tag)
        c1.Recv([out, 8, MPI.BYTE], src, tag, st)
        assert out[:8] == b"numpyrnk" and (st.Get_source(), st.Get_tag()) == (0, 3)
    # bad ranks and tags: the same error (class and text) with the table filled or
    # not, and as the general path gives for a bare buffer
    fresh0 = C.Comm(t0, [0, 1], 14, "fresh")
    fresh1 = C.Comm(t1, [0, 1], 14, "fresh")
    bad_send = ((2, 1), (-5, 1), (1, -1), (1, 1 << 31), (True, 1), ("1", 1))
    for comm in (c0, fresh0):
        for dest, tag in bad_send:
            errs = []
            for buf in ([mm, 8, MPI.BYTE], b"12345678"):
                with pytest.raises((MmpiError, TypeError)) as ei:
                    comm.Send(buf, dest, tag)
                errs.append((type(ei.value), str(ei.value),
                             getattr(ei.value, "Get_error_class", lambda: None)()))
            assert errs[0] == errs[1], (dest, tag, errs)
    bad_recv = ((2, 1), (-5, 1), (0, -2), (0, 1 << 31), ("0", 1))
    for comm in (c1, fresh1):
        for src, tag in bad_recv:
            errs = []
            for buf in ([out, 8, MPI.BYTE], bytearray(8)):
                with pytest.raises((MmpiError, TypeError)) as ei:
                    comm.Recv(buf, src, tag)
                errs.append((type(ei.value), str(ei.value),
                             getattr(ei.value, "Get_error_class", lambda: None)()))
            assert errs[0] == errs[1], (src, tag, errs)
    with pytest.raises(MmpiError, match="invalid destination rank 2"):
        c0.Send([mm, 8, MPI.BYTE], 2, 1)
    with pytest.raises(MmpiError, match="invalid tag -2"):
        c1.Recv([out, 8, MPI.BYTE], 0, -2)
    assert fresh0._p.sends == [None, None] and fresh1._p.recvs == [None, None]
    assert _nothing_waiting(c1) and _nothing_waiting(c0)
    del ei
    gc.collect()
    mm.close()
    out.close()


# ------------------------------------------------------------------ real ranks

def _ping_pong(comm, sm, rm, rounds):
    """osu_latency's loop on [mmap, 8, BYTE] specs (fills both ranks' tables)."""
    peer = 1 - comm.rank
    ops = (lambda: comm.Send([sm, 8, MPI.BYTE], peer, 1),
           lambda: comm.Recv([rm, 8, MPI.BYTE], peer, 1))
    for i in range(rounds):
        sm[:8] = b"loop%04d" % i
        for op in (ops if comm.rank == 0 else ops[::-1]):
            op()
        assert rm[:8] == b"loop%04d" % i


def _messages(calls):
    """What each call raised (an MmpiError's text; AssertionError if one did not)."""
    return [_refused(fn) for fn in calls]


def _fork_after_tables(comm):
    """Both ranks fill their tables with osu's loop; rank 0 forks; the child's Send
    and Recv (the tables' paths, every spec kind) raise and send nothing."""
    peer = 1 - comm.rank
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    ss, rs = [sm, 8, MPI.BYTE], [rm, 8, MPI.BYTE]
    _ping_pong(comm, sm, rm, 50)
    if comm.rank == 1:
        comm.Recv(rs, 0, 2)                        # the parent's message after the fork
        got = rm[:8]
        more = comm.Iprobe(0, MPI.ANY_TAG)         # (the child's would be here)
        comm.Send(ss, 0, 3)
        return got, more
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            sm[:8] = b"child!!!"
            os.write(w, repr(_messages((
                lambda: comm.Send(ss, peer, 2),
                lambda: comm.Send(b"child!!!", peer, 2),
                lambda: comm.Send(np.zeros(1), np.int64(peer), 2),
                lambda: comm.Recv(rs, peer, 1),
                lambda: comm.Recv(bytearray(8), peer, 1),
                lambda: comm.Sendrecv(ss, peer, 2, bytearray(8), peer, 1)))).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msgs = ast.literal_eval(f.read().decode())
    _, status = os.waitpid(pid, 0)
    sm[:8] = b"parent!!"
    comm.Send(ss, 1, 2)
    comm.Recv(rs, 1, 3)
    return status, msgs


def test_a_forked_child_cannot_use_the_tables():
    (status, msgs), (got, more) = values(run_ranks(_fork_after_tables, 2))
    assert status == 0 and len(msgs) == 6
    for m in msgs:
        assert m.startswith("this process is a fork of rank 0"), msgs
    assert got == b"parent!!" and more is False


def _finalize_after_tables(comm):
    peer = 1 - comm.rank
    dup = comm.Dup()
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    for c in (comm, dup):
        _ping_pong(c, sm, rm, 5)
    comm.Barrier()
    MPI.Finalize()
    return _messages((lambda: comm.Send([sm, 8, MPI.BYTE], peer, 1),
                      lambda: comm.Recv([rm, 8, MPI.BYTE], peer, 1),
                      lambda: dup.Send([sm, 8, MPI.BYTE], peer, 1),
                      lambda: dup.Recv(bytearray(8), peer, 1),
                      lambda: comm.Send(b"12345678", float(peer), 1),
                      lambda: dup.Sendrecv(b"12345678", peer, 1, bytearray(8), peer, 1)))


def test_after_finalize_the_tables_raise():
    for msgs in values(run_ranks(_finalize_after_tables, 2)):
        assert len(msgs) == 6
        for m in msgs:
            assert m.startswith("MPI.Finalize() was called in this rank"), msgs
