"""The point-to-point fast paths (issue 12): buffer specs parsed without the
general parser, Isend completed inside the call, Irecv served from the ring at
once.  Each must give exactly what the general path gives: the same bytes, the
same statuses, the same errors, the same order."""

from __future__ import annotations

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _bufspec

from test_mmpi_p2p import run_ranks, values


# ------------------------------------------------------------------ spec_view (one process)

def test_spec_view_gives_the_general_parsers_bytes():
    a = np.arange(16, dtype=np.float64)
    b = bytearray(range(40))
    for spec in ([a, MPI.DOUBLE], [a, 3, MPI.DOUBLE], [a, 0, MPI.INT], [a, 5, MPI.BYTE],
                 [b, 10, MPI.BYTE], [b, MPI.BYTE], [b, MPI.INT], (a, 2, MPI.FLOAT),
                 [a.reshape(4, 4), 7, MPI.DOUBLE], [memoryview(b), 40, MPI.CHAR]):
        fast = _bufspec.spec_view(spec, False)
        assert fast is not None, spec
        slow = _bufspec.parse(spec, False, "t").mv
        assert fast.tobytes() == slow.tobytes() and fast.nbytes == slow.nbytes, spec
        assert _bufspec.message(spec, False, "t").tobytes() == slow.tobytes()


def test_spec_view_leaves_everything_else_to_the_general_parser():
    a = np.arange(16, dtype=np.float64)
    ro = np.zeros(8, np.uint8)
    ro.flags.writeable = False
    vec = MPI.DOUBLE.Create_vector(2, 1, 2).Commit()
    try:
        for spec, writable in (([a, 17, MPI.DOUBLE], False),      # overruns: an error
                               ([a, -1, MPI.DOUBLE], False),
                               ([a, True, MPI.DOUBLE], False),     # a bool is no count
                               ([a, (2, 1), MPI.DOUBLE], False),   # (count, displ)
                               ([a, 2, 1, MPI.DOUBLE], False),
                               ([a[::2], MPI.DOUBLE], False),      # not contiguous
                               ([bytearray(7), MPI.INT], False),   # partial element
                               ([ro, MPI.BYTE], True),             # read-only receive
                               ([a, 2, "d"], False),               # typecode: general path
                               ([a, 1, vec], False),               # derived
                               ([a, MPI.DATATYPE_NULL], False),
                               ([np.array([None]), MPI.BYTE], False),
                               ([a], False)):
            assert _bufspec.spec_view(spec, writable) is None, spec
    finally:
        vec.Free()
    with pytest.raises(MmpiError):
        _bufspec.message([a, 17, MPI.DOUBLE], False, "Send")
    with pytest.raises(MmpiError, match="read-only"):
        _bufspec.message([ro, MPI.BYTE], True, "Recv")


# ------------------------------------------------------------------ real ranks

def _window(comm, window, size):
    """osu_bw's pattern with checks: a window of Isend of [buf, n, BYTE] specs,
    each window's receives either posted first or after the data is there."""
    out = []
    bufs = [np.zeros(size, np.uint8) for _ in range(window)]
    for rnd in range(4):
        if comm.rank == 0:
            src = [np.full(size, (rnd * window + j) % 251, np.uint8) for j in range(window)]
            reqs = [comm.Isend([src[j], size, MPI.BYTE], 1, 100 + j % 3) for j in range(window)]
            assert len({id(r) for r in reqs}) == window and reqs[0] != reqs[1]
            sts = [MPI.Status() for _ in range(window)] if rnd % 2 else None
            MPI.Request.Waitall(reqs, sts)
            assert all(not r for r in reqs)
            if sts:
                assert all(s.Get_source() == MPI.ANY_SOURCE for s in sts)
            comm.Recv([bufs[0], 1, MPI.BYTE], 1, 5)
        else:
            if rnd >= 2:   # the messages are in the ring before the receives
                comm.Probe(0, 100 + (window - 1) % 3)
            sts = [MPI.Status() for _ in range(window)]
            reqs = [comm.Irecv([bufs[j], size, MPI.BYTE], 0, 100 + j % 3) for j in range(window)]
            MPI.Request.Waitall(reqs, sts)
            out.append([(int(b[0]), int(b[-1]), s.Get_source(), s.Get_tag(), s.Get_count())
                        for b, s in zip(bufs, sts)])
            comm.Send([bufs[0], 1, MPI.BYTE], 0, 5)
    return out


@pytest.mark.parametrize("size", [1, 8, 4096])
def test_windows_of_isend_and_irecv(size):
    out = values(run_ranks(_window, 2, 64, size))[1]
    for rnd, got in enumerate(out):
        assert got == [((rnd * 64 + j) % 251, (rnd * 64 + j) % 251, 0, 100 + j % 3, size)
                       for j in range(64)], rnd


def _order(comm):
    """A large (rendezvous) message, then small ones that take the fast paths:
    they are matched in order; a finished request behaves as a request."""
    big = 1 << 20
    if comm.rank == 0:
        a = np.full(big, 7, np.uint8)
        r0 = comm.Isend(a, 1, 1)
        rs = [comm.Isend(np.full(8, i, np.uint8), 1, 1) for i in range(5)]
        st = MPI.Status()
        done = rs[1].Test(st)
        rs[2].Cancel()
        MPI.Request.Waitall([r0] + rs)
        return done, rs[2].Test()
    b = np.zeros(big, np.uint8)
    comm.Recv(b, 0, 1)
    small = [np.zeros(8, np.uint8) for _ in range(5)]
    comm.Probe(0, 1)
    reqs = [comm.Irecv(x, 0, 1) for x in small]
    st = MPI.Status()
    first = reqs[0].Get_status(st), st.Get_count(), st.Get_source(), st.Get_tag()
    reqs[1].Cancel()
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    return (int(b.min()), [int(x[0]) for x in small], first,
            [s.Is_cancelled() for s in sts])


def test_fast_paths_keep_order_and_request_semantics():
    (done, again), (bmin, small, first, cancelled) = values(run_ranks(_order, 2))
    assert done and again
    assert bmin == 7 and small == [0, 1, 2, 3, 4]
    assert first == (True, 8, 0, 1)
    assert cancelled == [False] * 5


def _truncate(comm):
    if comm.rank == 0:
        comm.Send(np.ones(16, np.uint8), 1, 3)
        comm.Barrier()
        return None
    comm.Barrier()
    comm.Probe(0, 3)
    r = comm.Irecv([np.zeros(8, np.uint8), 8, MPI.BYTE], 0, 3)
    try:
        r.Wait()
    except MmpiError as e:
        return e.Get_error_class()
    return "no error"


def test_irecv_of_a_message_too_long_is_a_truncation_error():
    assert values(run_ranks(_truncate, 2))[1] == MPI.ERR_TRUNCATE


def _float_ranks(comm):
    """mpi4py converts ranks and tags with int() (osu_multi_lat passes
    ``nprocs / 2``); nan and strings stay errors."""
    b = np.zeros(4, np.uint8)
    pairs = comm.size / 2
    if comm.rank < pairs:
        comm.Send([np.full(4, 3, np.uint8), 4, MPI.BYTE], comm.rank + pairs, 1.0)
    else:
        comm.Recv([b, 4, MPI.BYTE], comm.rank - pairs, np.float64(1.0))
    errs = []
    for bad in (float("nan"), "1", None):
        try:
            comm.Isend(b, bad, 0)
        except MmpiError as e:
            errs.append(e.Get_error_class() if hasattr(e, "Get_error_class") else type(e))
    return int(b[0]), len(errs)


def test_ranks_and_tags_as_floats_convert_as_in_mpi4py():
    assert values(run_ranks(_float_ranks, 2)) == [(0, 3), (3, 3)]
