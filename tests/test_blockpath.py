"""The blocking small path, third round (issue 12): ``Send``/``Recv`` read the
communicator's fields from one slotted record (``Comm._p``), a receive spec
``[bytearray or mmap, count, dt]`` whose message is already in the ring is
written into the object itself by slice assignment (no view of it is made),
and a small ``bytes`` payload is packed with its header in one struct call.
Each must give what the general path gives: the same bytes (and no byte past
the count), statuses, errors, and the same order; nothing may keep the user's
buffer exported, and a spec list reused call after call must be read afresh."""

from __future__ import annotations

import gc
import mmap
import time

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def test_recv_into_mmap_and_bytearray_specs_writes_the_count_only(pair):
    _, _, c0, c1 = pair
    mm = mmap.mmap(-1, 4096)
    mm[:] = b"\xee" * 4096
    ba = bytearray(b"\xee" * 64)
    st = MPI.Status()
    c0.Send([b"ABCDEFGH", 8, MPI.BYTE], 1, 5)
    c1.Recv([mm, 8, MPI.BYTE], 0, 5, st)
    assert mm[:8] == b"ABCDEFGH" and mm[8:] == b"\xee" * 4088
    assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE), st.Get_error()) == \
        (0, 5, 8, MPI.SUCCESS)
    c0.Send([bytearray(b"xyz"), 3, MPI.BYTE], 1, 6)   # shorter than the count; ANY_TAG
    c1.Recv([ba, 2, MPI.INT], 0, MPI.ANY_TAG, st)
    assert ba[:3] == b"xyz" and ba[3:] == b"\xee" * 61 and len(ba) == 64
    assert (st.Get_tag(), st.Get_count(MPI.BYTE)) == (6, 3)
    c0.Send(b"12345678", 1, 8)                          # ANY_SOURCE: a view of the count
    c1.Recv([mm, 8, MPI.BYTE], MPI.ANY_SOURCE, MPI.ANY_TAG, st)
    assert mm[:8] == b"12345678" and mm[8:] == b"\xee" * 4088
    assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (0, 8, 8)
    c0.Send(b"ABCDEFGH", 1, 5)
    c1.Recv([mm, 8, MPI.BYTE], 0, 5)
    c0.Send(b"", 1, 7)                                  # an empty message
    c1.Recv([mm, 0, MPI.BYTE], 0, 7, st)
    assert st.Get_count(MPI.BYTE) == 0 and mm[:8] == b"ABCDEFGH"
    mm.close()          # a view kept alive would make this raise BufferError
    ba.extend(b"!")     # ... and this


def test_a_reused_spec_list_is_read_afresh_each_call(pair):
    """osu_latency builds its spec lists once; a program may change their items
    between calls: the buffer, the count, the datatype, or the buffer's size."""
    _, _, c0, c1 = pair
    a, b = bytearray(16), mmap.mmap(-1, 64)
    sspec, rspec = [b"0123456789abcdef", 8, MPI.BYTE], [a, 8, MPI.BYTE]
    c0.Send(sspec, 1, 1)
    c1.Recv(rspec, 0, 1)
    assert a[:8] == b"01234567" and a[8:] == bytes(8)
    rspec[0] = b                                   # another buffer
    sspec[1] = 3                                   # another count
    c0.Send(sspec, 1, 1)
    c1.Recv(rspec, 0, 1)
    assert b[:3] == b"012" and b[3:8] == bytes(5) and a[:8] == b"01234567"
    sspec[2] = rspec[2] = MPI.INT                  # another datatype: 3 INTs = 12 bytes
    rspec[0:2] = [a, 3]
    c0.Send(sspec, 1, 1)
    st = MPI.Status()
    c1.Recv(rspec, 0, 1, st)
    assert a[:12] == b"0123456789ab" and st.Get_count(MPI.INT) == 3
    rspec[1] = 2                                   # 2 INTs: 12 bytes do not fit
    c0.Send(sspec, 1, 1)
    with pytest.raises(MmpiError) as ei:
        c1.Recv(rspec, 0, 1)
    assert ei.value.Get_error_class() == MPI.ERR_TRUNCATE
    # (the truncation error's traceback holds the general path's view of ``a`` in a
    # reference cycle, as on the base branch: gone at the next collection)
    del ei
    gc.collect()
    # a bytearray shrunk under its spec: the count is past its end (an error, the
    # message stays), then grown again: received
    rspec[1:] = [8, MPI.BYTE]
    del a[4:]
    c0.Send(b"ABCDEFGH", 1, 2)
    with pytest.raises(MmpiError):
        c1.Recv(rspec, 0, 2)
    a.extend(bytes(12))
    c1.Recv(rspec, 0, 2)
    assert a[:8] == b"ABCDEFGH" and len(a) == 16
    b.close()


def test_closed_and_read_only_mmaps_raise_and_leave_the_message(pair):
    _, _, c0, c1 = pair
    closed = mmap.mmap(-1, 64)
    closed.close()
    with pytest.raises(MmpiError):
        c0.Send([closed, 8, MPI.BYTE], 1, 1)
    c0.Send(b"ABCDEFGH", 1, 1)
    with pytest.raises(MmpiError):
        c1.Recv([closed, 8, MPI.BYTE], 0, 1)
    ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    try:
        with pytest.raises(MmpiError, match="read-only"):
            c1.Recv([ro, 8, MPI.BYTE], 0, 1)
        assert ro[:8] == bytes(8)
    finally:
        ro.close()
    out = mmap.mmap(-1, 64)
    c1.Recv([out, 8, MPI.BYTE], 0, 1)              # still there, in order
    assert out[:8] == b"ABCDEFGH"
    with pytest.raises(MmpiError):                 # a bytes object cannot be received into
        c1.Recv([b"12345678", 8, MPI.BYTE], 0, 1)
    out.close()


def test_posted_and_unexpected_messages_are_matched_first(pair):
    t0, t1, c0, c1 = pair
    first, mm = bytearray(8), mmap.mmap(-1, 64)
    r = c1.Irecv([first, 8, MPI.BYTE], MPI.ANY_SOURCE, MPI.ANY_TAG)
    c0.Send(b"first...", 1, 1)
    c0.Send(b"second..", 1, 1)
    c1.Recv([mm, 8, MPI.BYTE], 0, 1)               # the posted receive took "first"
    r.Wait()
    assert mm[:8] == b"second.." and first == b"first..."
    c0.Send(b"third...", 1, 2)
    t1.progress()                                  # drained: an unexpected message now
    assert t1.engine.unexpected
    c0.Send(b"fourth..", 1, 2)
    c1.Recv([mm, 8, MPI.BYTE], 0, 2)
    assert mm[:8] == b"third..."
    c1.Recv([mm, 8, MPI.BYTE], 0, 2)
    assert mm[:8] == b"fourth.."
    mm.close()


def test_numpy_specs_and_bare_arrays_still_take_the_fast_path(pair):
    _, _, c0, c1 = pair
    for send, recv, want in (
            ([np.arange(3, dtype=np.float64), MPI.DOUBLE], [np.zeros(3), MPI.DOUBLE], None),
            ([np.arange(6, dtype=np.int32).reshape(2, 3), 6, MPI.INT],
             [np.zeros(8, np.int32), 6, MPI.INT], None),
            (np.arange(4, dtype=np.uint16), np.zeros(4, np.uint16), None),
            ([np.zeros(0), MPI.DOUBLE], [np.zeros(0), MPI.DOUBLE], None)):
        c0.Send(send, 1, 3)
        c1.Recv(recv, 0, 3)
        got = recv[0] if type(recv) is list else recv
        src = send[0] if type(send) is list else send
        assert got.ravel()[:src.size].tobytes() == src.tobytes()
    nc = np.zeros((4, 4))[:, ::2]                  # not contiguous: the general path's error
    with pytest.raises(MmpiError):
        c1.Recv([nc, MPI.DOUBLE], 0, 3)


def test_unusable_transport_and_null_communicator_still_raise(pair):
    t0, t1, c0, c1 = pair
    c0.Send(b"x", 1, 1)                            # (c0._p made and used)
    c1.Recv(bytearray(1), 0, 1)
    T.make_unusable(t0, "this rank is finalized (test)")
    with pytest.raises(MmpiError, match="finalized"):
        c0.Send(b"x", 1, 1)
    with pytest.raises(MmpiError, match="finalized"):
        c0.Recv([bytearray(8), 8, MPI.BYTE], 1, 1)
    null = C.Comm()
    for call in (lambda: null.Send(b"x", 0, 0), lambda: null.Recv(bytearray(1), 0, 0)):
        with pytest.raises(MmpiError) as ei:
            call()
        assert ei.value.Get_error_class() == MPI.ERR_COMM


def _waiting_recv(comm):
    """The receiver is in Recv before the message comes (the waiting path, with
    a view made of the spec's bytes), for mmap and bytearray specs; the views
    are gone when Recv returns."""
    mm, ba = mmap.mmap(-1, 1 << 16), bytearray(32)
    mm[:] = b"\xee" * (1 << 16)
    if comm.rank == 0:
        for i in range(50):
            time.sleep(0.002 if i % 10 == 0 else 0)
            comm.Send([(b"%08d" % i) * 2, 16, MPI.BYTE], 1, i % 3)
            comm.Recv([ba, 4, MPI.BYTE], 1, MPI.ANY_TAG)
            assert ba[:4] == b"ack!"
        mm.close()
        return None
    st = MPI.Status()
    for i in range(50):
        spec = [mm, 16, MPI.BYTE] if i % 2 else [ba, 16, MPI.BYTE]
        comm.Recv(spec, 0, MPI.ANY_TAG, st)
        assert spec[0][:16] == (b"%08d" % i) * 2 and st.Get_tag() == i % 3
        assert st.Get_count(MPI.BYTE) == 16
        comm.Send([b"ack!", MPI.BYTE], 0, 9)
    assert mm[16:] == b"\xee" * ((1 << 16) - 16) and ba[16:] == bytes(16)
    mm.close()
    ba.extend(b"!")
    return None


def test_waiting_receives_into_mmap_and_bytearray_specs():
    assert values(run_ranks(_waiting_recv, 2)) == [None, None]
