"""The blocking small path, fourth round (issue 12): the ping-pong's critical path.

``Recv`` from one source waits in one per-peer closure (``Transport.recvers``:
the take and the wait together), ``Send`` copies a reused ``[mmap, count, dt]``
spec through a one-entry cache that holds the mmap weakly, and float or numpy
ranks take the same paths without re-entering ``Send``/``Recv``.  Each must give
what the general path gives: the same bytes, statuses, errors and order; the
cache must follow every change to the spec and keep nothing alive."""

from __future__ import annotations

import gc
import mmap
import time
import weakref

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C

from test_mmpi_p2p import run_ranks, values
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def _nothing_waiting(c1) -> bool:
    return not c1.Iprobe(0, MPI.ANY_TAG)


def test_a_cached_mmap_spec_follows_every_change(pair):
    _, _, c0, c1 = pair
    mm, mm2, out = mmap.mmap(-1, 64), mmap.mmap(-1, 64), bytearray(64)
    mm[:16], mm2[:16] = b"ABCDEFGHIJKLMNOP", b"abcdefghijklmnop"
    spec = [mm, 8, MPI.BYTE]
    c0.Send(spec, 1, 1)
    assert C._LAST_SEND[3] == 8 and C._LAST_SEND[4]() is mm   # cached
    c1.Recv(out, 0, 1)
    assert out[:8] == b"ABCDEFGH"
    mm[:8] = b"12345678"                              # the cache copies afresh each time
    st = MPI.Status()
    c0.Send(spec, 1, 2)
    c1.Recv(out, 0, 2, st)
    assert out[:8] == b"12345678" and st.Get_count(MPI.BYTE) == 8
    spec[1] = 4                                       # another count
    c0.Send(spec, 1, 3)
    c1.Recv(out, 0, 3, st)
    assert st.Get_count(MPI.BYTE) == 4
    spec[0] = mm2                                     # another mmap
    c0.Send(spec, 1, 4)
    c1.Recv(out, 0, 4, st)
    assert out[:4] == b"abcd" and st.Get_count(MPI.BYTE) == 4
    spec[1:] = [2, MPI.INT]                           # another datatype: 8 bytes
    c0.Send(spec, 1, 5)
    c1.Recv(out, 0, 5, st)
    assert out[:8] == b"abcdefgh" and st.Get_count(MPI.BYTE) == 8
    mm2.resize(4)                                     # shrunk under its spec: refused
    with pytest.raises(MmpiError):
        c0.Send(spec, 1, 6)
    assert _nothing_waiting(c1)
    spec[:] = [mm, 8, MPI.BYTE]
    c0.Send(spec, 1, 7)
    c1.Recv(out, 0, 7)
    mm.close()                                        # closed after it was cached: refused
    with pytest.raises(MmpiError):
        c0.Send(spec, 1, 8)
    assert _nothing_waiting(c1)
    mm2.close()


def test_a_freed_datatype_handle_is_refused_after_it_was_cached(pair):
    _, _, c0, c1 = pair
    mm, out = mmap.mmap(-1, 64), bytearray(8)
    dt = MPI.Datatype(MPI.BYTE)                       # a handle onto a predefined type
    spec = [mm, 8, dt]
    c0.Send(spec, 1, 1)
    c1.Recv(out, 0, 1)
    dt.free()                                         # this handle is null now
    with pytest.raises(MmpiError):
        c0.Send(spec, 1, 1)
    assert _nothing_waiting(c1)
    mm.close()


def test_the_send_cache_keeps_nothing_alive(pair):
    _, _, c0, c1 = pair
    mm = mmap.mmap(-1, 1 << 20)
    ref = weakref.ref(mm)
    spec = [mm, 8, MPI.BYTE]
    c0.Send(spec, 1, 1)
    c1.Recv(bytearray(8), 0, 1)
    del spec, mm
    gc.collect()
    assert ref() is None                              # the cache held the mmap weakly
    spec = [mmap.mmap(-1, 64), 8, MPI.BYTE]           # a dead entry matches no spec
    spec[0][:8] = b"new one!"
    out = bytearray(8)
    c0.Send(spec, 1, 2)
    c1.Recv(out, 0, 2)
    assert out == b"new one!"
    spec[0].close()


def test_other_specs_skip_the_cache_and_keep_their_errors(pair):
    _, _, c0, c1 = pair
    mm = mmap.mmap(-1, 64)
    c0.Send([mm, 8, MPI.BYTE], 1, 1)                  # cached
    c1.Recv(bytearray(8), 0, 1)
    for bad in ([], [mm], [mm, 8, MPI.BYTE, 0], [mm, 100, MPI.BYTE], [mm, -1, MPI.BYTE]):
        with pytest.raises((MmpiError, TypeError, ValueError)):
            c0.Send(bad, 1, 1)
    assert _nothing_waiting(c1)
    a = np.arange(8, dtype=np.uint8)
    out = np.zeros(8, np.uint8)
    c0.Send([a, 8, MPI.BYTE], 1, 2)                   # a numpy spec after a cached mmap one
    c1.Recv([out, 8, MPI.BYTE], 0, 2)
    assert (out == a).all()
    mm.close()


def test_float_and_numpy_ranks_take_the_per_peer_paths(pair):
    t0, t1, c0, c1 = pair
    assert 1 not in t0.senders and 0 not in t1.recvers
    mm, out = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    mm[:8] = b"floatrnk"
    st = MPI.Status()
    c0.Send([mm, 8, MPI.BYTE], 1.0, np.int32(3))      # osu_multi_lat's nprocs / 2
    assert 1 in t0.senders
    c1.Recv([out, 8, MPI.BYTE], np.float64(0.0), 3, st)
    assert 0 in t1.recvers                            # (made by the float rank's call)
    assert out[:8] == b"floatrnk"
    assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (0, 3, 8)
    for bad, good in ((lambda: c0.Send([mm, 8, MPI.BYTE], 2.0, 1),   # as an int rank's
                       lambda: c0.Send([mm, 8, MPI.BYTE], 2, 1)),
                      (lambda: c1.Recv([out, 8, MPI.BYTE], 5.0, 1),
                       lambda: c1.Recv([out, 8, MPI.BYTE], 5, 1))):
        errs = []
        for call in (bad, good):
            with pytest.raises(MmpiError) as ei:
                call()
            errs.append((ei.value.Get_error_class(), str(ei.value)))
        assert errs[0] == errs[1]
    assert _nothing_waiting(c1)
    c0.Send(b"anysrc..", 1, 4)                        # ANY_SOURCE as a float: general path
    c1.Recv([out, 8, MPI.BYTE], float(MPI.ANY_SOURCE), 4.0, st)
    assert out[:8] == b"anysrc.." and st.Get_source() == 0
    # (the errors' tracebacks hold the general path's views of ``out``, as on the
    # base branch: gone at the next collection)
    del ei, errs, bad, good
    gc.collect()
    mm.close()
    out.close()


def _waits(comm):
    """The receiver waits in its recver (pure polls, then yields, then the general
    path after a short spin budget); a record it does not match first, a
    read-only buffer, and float ranks all end where the general path would."""
    t = comm._t
    t.spin_seconds = 2e-4                             # fall to the general path soon
    mm = mmap.mmap(-1, 4096)
    if comm.rank == 0:
        for i in range(20):
            time.sleep(0.003 if i % 4 == 0 else 0)    # sometimes late: the general path
            comm.Send([b"other%03d" % i, 8, MPI.BYTE], 1, 7)   # not what rank 1 asks first
            comm.Send([b"mine%04d" % i, 8, MPI.BYTE], 1, 5)
            comm.Recv([mm, 4, MPI.BYTE], 1, 9)
            assert mm[:4] == b"ack!"
        time.sleep(0.01)
        comm.Send([b"readonly", 8, MPI.BYTE], 1, 6)
        comm.Recv([mm, 1, MPI.BYTE], 1.0, 1)          # the end
        mm.close()
        return None
    st = MPI.Status()
    for i in range(20):
        comm.Recv([mm, 8, MPI.BYTE], 0, 5, st)        # the tag-7 record comes first
        assert mm[:8] == b"mine%04d" % i and st.Get_tag() == 5
        comm.Recv([mm, 8, MPI.BYTE], 0.0, 7, st)
        assert mm[:8] == b"other%03d" % i and st.Get_source() == 0
        comm.Send([b"ack!", 4, MPI.BYTE], 0, 9)
    ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)     # waiting when the record comes
    try:
        with pytest.raises(MmpiError, match="read-only"):
            comm.Recv([ro, 8, MPI.BYTE], 0, 6)
    finally:
        ro.close()
    comm.Recv([mm, 8, MPI.BYTE], 0, 6)                # still there
    assert mm[:8] == b"readonly"
    comm.Send([b"!", 1, MPI.BYTE], 0, 1)
    mm.close()
    return 0 in t.recvers


def test_waiting_receives_match_in_order_and_fall_back():
    assert values(run_ranks(_waits, 2)) == [None, True]


def test_typecode_string_specs_pass_the_spec_caches(pair):
    """``[buf, count, 'B']`` (a typecode, no handle) is parsed each time: the
    caches of Send, Isend and Irecv remember only specs with a datatype handle."""
    _, _, c0, c1 = pair
    mm, ba, out = mmap.mmap(-1, 64), bytearray(b"12345678"), bytearray(8)
    mm[:8] = b"abcdefgh"
    for k in range(3):
        c0.Send([mm, 8, "B"], 1, k)
        c1.Recv([out, 8, "B"], 0, k)
        assert out == b"abcdefgh"
        c0.Isend([ba, 8, "B"], 1, 9).Wait()
        c1.Irecv([out, 8, "B"], 0, 9).Wait()
        assert out == b"12345678"
        out[:] = bytes(8)
    mm.close()
