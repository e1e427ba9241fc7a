"""The blocking small path, seventh round (issue 12): float ranks (osu_multi_lat's
``myid + nprocs / 2``) go through the communicator's tables of per-peer closures
with an inline check, and a waiting Recv works out where the record will land
and what fits before it polls.

What these tests hold it to: a float rank delivers to the rank ``int()`` gives and
fills the same table an int rank does; every bad float (nan, inf, out of range,
negative, ANY_SOURCE as a float) ends exactly as on the general path; a Recv that
waits for a message too long for it, or for another tag, still ends as the
general path says (truncation, tag order) with real ranks; the osu_multi_lat loop
with float partners on 4 ranks delivers every message."""

from __future__ import annotations

import gc
import mmap
import time

import pytest

from driller import MPI
from driller.errors import MmpiError

from test_mmpi_p2p import run_ranks, values
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)

NAN, INF = float("nan"), float("inf")


def _outcome(fn, name=None):
    """What fn did: "ok", or its error's type, text and class (``name``: the
    nonblocking call's name in the text read as the blocking one's)."""
    try:
        fn()
    except (MmpiError, TypeError, ValueError, OverflowError) as e:
        text = str(e) if name is None else str(e).replace(name, name[1:].capitalize(), 1)
        return (type(e), text, getattr(e, "Get_error_class", lambda: None)())
    return "ok"


def test_float_ranks_fill_the_table_and_deliver_as_int_ranks(pair):
    t0, t1, c0, c1 = pair
    mm, out = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    st = MPI.Status()
    assert c0._p.sends == [None, None] and c1._p.recvs == [None, None]
    for i, (dest, src) in enumerate(((1.0, 0.0), (1.0, 0.0), (1.5, 0.25), (1, 0))):
        mm[:8] = b"float%03d" % i
        c0.Send([mm, 8, MPI.BYTE], dest, 7)
        c1.Recv([out, 8, MPI.BYTE], src, 7, st)
        assert out[:8] == b"float%03d" % i
        assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (0, 7, 8)
        if i == 0:   # the float rank's call filled the same table entries an int rank uses
            assert c0._p.sends[1] is t0.senders[1] and c1._p.recvs[0] is t1.recvers[0]
    # a float rank with a bare buffer, a memoryview receive, a Status
    c0.Send(b"bare1234", 1.0, 2)
    ba = bytearray(8)
    c1.Recv(ba, 0.0, 2, st)
    assert ba == b"bare1234" and st.Get_source() == 0
    # ANY_SOURCE as a float, with an int tag: the general path, as before
    c0.Send(b"anysrc..", 1.0, 4)
    c1.Recv([out, 8, MPI.BYTE], float(MPI.ANY_SOURCE), 4, st)
    assert out[:8] == b"anysrc.." and st.Get_source() == 0
    assert not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    mm.close()
    out.close()


def test_bad_float_ranks_end_as_on_the_general_path(pair):
    t0, t1, c0, c1 = pair
    mm, out = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    c0.Send([mm, 8, MPI.BYTE], 1.0, 1)   # (the tables filled)
    c1.Recv([out, 8, MPI.BYTE], 0.0, 1)
    for dest in (NAN, INF, -INF, 2.0, -5.0, 1e300, -1.0):
        # Send's fast path, against Isend (which goes through _dest: the general path)
        fast = _outcome(lambda: c0.Send([mm, 8, MPI.BYTE], dest, 1))
        bare = _outcome(lambda: c0.Send(b"12345678", dest, 1))
        general = _outcome(lambda: c0.Isend([mm, 8, MPI.BYTE], dest, 1).Wait(), "Isend")
        assert fast == bare == general, (dest, fast, bare, general)
        assert fast != "ok", dest
    for src in (NAN, INF, -INF, 2.0, -5.0, 1e300):
        fast = _outcome(lambda: c1.Recv([out, 8, MPI.BYTE], src, 1))
        bare = _outcome(lambda: c1.Recv(bytearray(8), src, 1))
        general = _outcome(lambda: c1.Irecv([out, 8, MPI.BYTE], src, 1).Wait(), "Irecv")
        assert fast == bare == general, (src, fast, bare, general)
        assert fast != "ok", src
    # a float rank with a bad tag: the tag's error, as for an int rank
    assert _outcome(lambda: c0.Send([mm, 8, MPI.BYTE], 1.0, -1)) == \
        _outcome(lambda: c0.Send([mm, 8, MPI.BYTE], 1, -1)) != "ok"
    assert _outcome(lambda: c1.Recv([out, 8, MPI.BYTE], 0.0, -7)) == \
        _outcome(lambda: c1.Recv([out, 8, MPI.BYTE], 0, -7)) != "ok"
    assert not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    assert not c0.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    gc.collect()
    mm.close()
    out.close()


# ------------------------------------------------------------------ real ranks

def _late_messages(comm):
    """Rank 1 waits in Recv (its fast path's poll) for messages rank 0 sends
    late: one too long for the buffer, one of another tag first."""
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    if comm.rank == 0:
        comm.Barrier()
        time.sleep(0.05)
        sm[:16] = b"sixteen-bytes-16"
        comm.Send([sm, 16, MPI.BYTE], 1, 1)           # too long for an 8-byte receive
        comm.Barrier()
        time.sleep(0.05)
        comm.Send(b"tag-two!", 1, 2)                  # another tag first
        comm.Send(b"tag-one!", 1, 1)
        comm.Barrier()
        time.sleep(0.05)
        comm.Send(b"flt-rank", 1.0, 3)                # a float rank on both sides
        return None
    comm.Barrier()
    try:
        comm.Recv([rm, 8, MPI.BYTE], 0, 1)
        first = "no error"
    except MPI.Exception as e:
        first = e.Get_error_class()
    comm.Barrier()
    st = MPI.Status()
    comm.Recv([rm, 8, MPI.BYTE], 0, 1, st)
    one = (rm[:8], st.Get_tag())
    comm.Recv([rm, 8, MPI.BYTE], 0, 2, st)
    two = (rm[:8], st.Get_tag())
    comm.Barrier()
    comm.Recv([rm, 8, MPI.BYTE], 0.0, 3, st)
    three = (rm[:8], st.Get_source(), st.Get_tag())
    return first, one, two, three


def test_a_waiting_recv_still_truncates_and_matches_by_tag():
    _, got = values(run_ranks(_late_messages, 2))
    first, one, two, three = got
    assert first == MPI.ERR_TRUNCATE
    assert one == (b"tag-one!", 1) and two == (b"tag-two!", 2)
    assert three == (b"flt-rank", 0, 3)


def _multi_lat(comm, rounds):
    """osu_multi_lat's loop: float partners (``myid +/- nprocs / 2``), every
    message checked."""
    pairs = comm.size / 2
    sm, rm = mmap.mmap(-1, 64), mmap.mmap(-1, 64)
    s_msg, r_msg = [sm, 8, MPI.BYTE], [rm, 8, MPI.BYTE]
    comm.Barrier()
    bad = 0
    if comm.rank < pairs:
        partner = comm.rank + pairs
        for i in range(rounds):
            sm[:8] = b"%02d>%05d" % (comm.rank, i)
            comm.Send(s_msg, partner, 1)
            comm.Recv(r_msg, partner, 1)
            bad += rm[:8] != b"%02d<%05d" % (partner, i)
    else:
        partner = comm.rank - pairs
        for i in range(rounds):
            comm.Recv(r_msg, partner, 1)
            bad += rm[:8] != b"%02d>%05d" % (partner, i)
            sm[:8] = b"%02d<%05d" % (comm.rank, i)
            comm.Send(s_msg, partner, 1)
    total = comm.reduce(float(bad), root=0, op=MPI.SUM)
    return bad, total


@pytest.mark.parametrize("n", [2, 4])
def test_multi_lat_float_partners_deliver_every_message(n):
    res = values(run_ranks(_multi_lat, n, 2000))
    assert all(bad == 0 for bad, _ in res)
    assert res[0][1] == 0.0
