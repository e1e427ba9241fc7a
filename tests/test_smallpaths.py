"""Small-message hot paths, second round (issue 12): the per-peer send/take
closures (``Transport.senders`` / ``takers``), small sends from ``bytes`` /
``bytearray`` / ``mmap`` specs copied instead of viewed, a posted receive at the
head of the queue served from a plain eager record without the engine, and
``Waitall`` releasing finished requests in one pass.  Each must give exactly
what the general path gives: the same bytes, statuses, errors and order."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _bufspec
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T
from driller.mmpi import _world as W

from test_mmpi_p2p import run_ranks, values


@pytest.fixture
def pair():
    """Two ranks' transports and communicators over one world block, in this
    process (the rings are the real ones; nothing blocks as long as each
    receive has its message in the ring)."""
    fd = W.create_world(2, ring_bytes=1 << 16)
    try:
        t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
        yield t0, t1, C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    finally:
        os.close(fd)


# ------------------------------------------------------------------ spec_view's copies

def test_small_send_specs_copy_and_never_pin_the_exporter():
    ba = bytearray(range(32))
    mm = mmap.mmap(-1, 4096)
    mm[:5] = b"hello"
    for spec, want in (([ba, 8, MPI.BYTE], bytes(range(8))), ([ba, 2, MPI.INT], bytes(range(8))),
                       ([ba, MPI.BYTE], bytes(range(32))), ([mm, 5, MPI.BYTE], b"hello"),
                       ([b"abcdef", 3, MPI.CHAR], b"abc"), ([b"abcd", MPI.BYTE], b"abcd")):
        got = _bufspec.spec_view(spec, False, True)
        assert bytes(got) == want == _bufspec.parse(spec, False, "t").mv.tobytes(), spec
    # nothing holds an export of the buffers: a bytearray may grow, an mmap close
    ba.extend(b"xyz")
    mm.close()
    # beyond _SMALL_COPY, and for receives, views as before
    big = bytearray(_bufspec._SMALL_COPY + 1)
    assert type(_bufspec.spec_view([big, MPI.BYTE], False, True)) is memoryview
    assert type(_bufspec.spec_view([bytearray(8), 8, MPI.BYTE], True)) is memoryview
    # what stays an error or the general parser's
    closed = mmap.mmap(-1, 64)
    closed.close()
    assert _bufspec.spec_view([closed, 8, MPI.BYTE], False, True) is None
    with pytest.raises(MmpiError):
        _bufspec.message([closed, 8, MPI.BYTE], False, "Send")
    assert _bufspec.spec_view([bytearray(8), 9, MPI.BYTE], False, True) is None   # overrun
    assert _bufspec.spec_view([bytearray(7), MPI.INT], False, True) is None      # partial
    assert _bufspec.spec_view([b"ro", MPI.BYTE], True) is None                    # read-only
    ro = mmap.mmap(-1, 4096, prot=mmap.PROT_READ)
    try:
        assert _bufspec.spec_view([ro, 8, MPI.BYTE], True) is None
        assert bytes(_bufspec.spec_view([ro, 8, MPI.BYTE], False, True)) == bytes(8)
    finally:
        ro.close()


def test_send_and_isend_leave_mmap_and_bytearray_free(pair):
    t0, t1, c0, c1 = pair
    mm = mmap.mmap(-1, 1 << 16)
    ba = bytearray(b"0123456789")
    mm[:8] = b"ABCDEFGH"
    c0.Send([mm, 8, MPI.BYTE], 1, 1)
    r = c0.Isend([ba, 4, MPI.BYTE], 1, 2)
    MPI.Request.Waitall([r])
    mm.close()          # an exported buffer would raise BufferError here
    ba.extend(b"!")
    out = bytearray(8)
    c1.Recv([out, 8, MPI.BYTE], 0, 1)
    assert out == b"ABCDEFGH"
    c1.Recv([out, 4, MPI.BYTE], 0, 2)
    assert out[:4] == b"0123"


# ------------------------------------------------------------------ the closures

def test_sender_closure_wraps_fills_and_interleaves_with_the_general_put(pair):
    """Records of many sizes through a 64 KiB ring: the closure's cached room
    bound re-reads the tail when used up, a full ring is refused (False), a
    record that would wrap goes to _put, the general _put and the closure
    share the head; every record arrives in order with its bytes."""
    t0, t1, _, _ = pair
    send, take = t0.senders[1], t1.takers[0]
    assert t0.senders[1] is send and t0.senders[0] is T._declined
    rng = np.random.default_rng(1)
    expect = []
    buf = bytearray(4096)
    received = refused = wrapped = 0

    def take_one():
        nonlocal received, wrapped
        res = take(-1, 0, memoryview(buf))
        assert res is not False, "the ring is empty, yet the send was refused"
        if res is None:   # a wrap record first: the general path skips it
            wrapped += 1
            t1.progress()
            m = t1.engine.unexpected.pop(0)
            res = (0, m.tag, m.nbytes)
            buf[:m.nbytes] = m.payload
        assert (res[1], bytes(buf[:res[2]])) == expect[received]
        received += 1

    for i in range(3000):
        n = int(rng.integers(0, 3000))
        payload = bytes([i % 251]) * n
        while True:   # the ring fills up: the producer is refused until some is taken
            if i % 7 == 0:
                ok = t0._put(1, T.K_EAGER, 0, i, n, 0, 0, payload, n)
            else:
                ok = send(0, i, payload)
            if ok:
                break
            refused += 1
            take_one()
        expect.append((i, payload))
    while received < len(expect):
        take_one()
    assert take(-1, 0, memoryview(buf)) is False
    assert refused > 100 and wrapped > 10


def test_taker_declines_what_it_may_not_take(pair):
    t0, t1, c0, c1 = pair
    take = t1.takers[0]
    assert take(1, 0, memoryview(bytearray(8))) is False          # empty ring
    c0.Send(np.arange(16, dtype=np.uint8), 1, 3)
    assert take(4, 0, memoryview(bytearray(16))) is None          # another tag
    assert take(3, 5, memoryview(bytearray(16))) is None          # another context
    assert take(3, 0, memoryview(bytearray(8))) is None           # does not fit
    c0.send({"obj": 1}, 1, 3)
    out = bytearray(16)
    assert take(3, 0, memoryview(out)) == (0, 3, 16)
    assert out == bytes(range(16))
    assert take(3, 0, memoryview(out)) is None                    # an object record
    assert c1.recv(source=0, tag=3) == {"obj": 1}


# ------------------------------------------------------------------ posted receives

def test_posted_receives_at_the_head_match_as_the_engine_does(pair):
    t0, t1, c0, c1 = pair
    a, b, c, d = (bytearray(8) for _ in range(4))
    ra = c1.Irecv([a, 8, MPI.BYTE], 0, MPI.ANY_TAG)
    rb = c1.Irecv([b, 8, MPI.BYTE], MPI.ANY_SOURCE, 7)
    rc = c1.Irecv([c, 4, MPI.BYTE], 0, 9)     # too small: truncation, general path
    rd = c1.Irecv([d, 8, MPI.BYTE], 0, 11)
    c0.Send([b"AAAA", MPI.BYTE], 1, 5)        # ANY_TAG: takes it, status says 5
    c0.Send([b"dddddddd", MPI.BYTE], 1, 11)   # not the head's: rd, via the engine
    c0.Send([b"bbbbbb", MPI.BYTE], 1, 7)
    c0.Send([b"cccccccc", MPI.BYTE], 1, 9)
    sts = [MPI.Status() for _ in range(3)]
    MPI.Request.Waitall([ra, rb, rd], sts)
    assert (bytes(a[:4]), sts[0].Get_source(), sts[0].Get_tag(), sts[0].Get_count()) == \
        (b"AAAA", 0, 5, 4)
    assert (bytes(b[:6]), sts[1].Get_source(), sts[1].Get_tag(), sts[1].Get_count()) == \
        (b"bbbbbb", 0, 7, 6)
    assert (bytes(d), sts[2].Get_tag()) == (b"dddddddd", 11)
    with pytest.raises(MmpiError) as e:
        rc.Wait()
    assert e.value.Get_error_class() == MPI.ERR_TRUNCATE
    assert not t1.engine.posted and not t1.engine.unexpected


def test_waitall_mixes_finished_posted_null_and_aliased_requests(pair):
    t0, t1, c0, c1 = pair
    bufs = [bytearray(8) for _ in range(6)]
    c0.Send([b"x" * 8, MPI.BYTE], 1, 1)
    r0 = c1.Irecv([bufs[0], 8, MPI.BYTE], 0, 1)          # taken at once
    r1 = c1.Irecv([bufs[1], 8, MPI.BYTE], 0, 2)          # posted
    s = [c0.Isend([bytes([i]) * 8, 8, MPI.BYTE], 1, 2) for i in range(3)]
    alias = MPI.Request(s[1])
    assert alias == s[1] and s[0] != s[1]
    r2 = c1.Irecv([bufs[2], 8, MPI.BYTE], 0, 2)          # taken at once or posted
    reqs = [r0, MPI.REQUEST_NULL, r1, s[0], s[1], s[2], r2]
    MPI.Request.Waitall(reqs)
    assert all(not r for r in reqs) and alias       # the alias is its own handle
    assert alias.Test() and not alias
    assert bufs[0] == b"x" * 8 and bufs[1] == bytes(8) and bufs[2] == b"\x01" * 8
    rs = [c1.Irecv([bufs[3], 8, MPI.BYTE], 0, 2)]
    sts = [MPI.Status()]
    MPI.Request.Waitall(rs, sts)
    assert bufs[3] == b"\x02" * 8 and sts[0].Get_count() == 8 and sts[0].Get_tag() == 2


# ------------------------------------------------------------------ real ranks

def _osu(comm, window, loops):
    """osu_latency's and osu_bw's loops as mpi4py's demos write them (mmap
    buffers, one spec list reused, a request list overwritten), with every
    message's bytes checked."""
    s_buf, r_buf = mmap.mmap(-1, 1 << 16), mmap.mmap(-1, 1 << 16)
    bad = 0
    peer = 1 - comm.rank
    s_msg, r_msg = [s_buf, 8, MPI.BYTE], [r_buf, 8, MPI.BYTE]
    for i in range(loops):     # latency: ping-pong
        s_buf[:8] = (i * 2 + comm.rank).to_bytes(8, "little")
        if comm.rank == 0:
            comm.Send(s_msg, 1, 1)
            comm.Recv(r_msg, 1, 1)
        else:
            comm.Recv(r_msg, 0, 1)
            comm.Send(s_msg, 0, 1)
        bad += int.from_bytes(r_buf[:8], "little") != i * 2 + peer
    requests = [MPI.REQUEST_NULL] * window
    js = list(range(window))
    for i in range(loops):     # bandwidth: windows
        if comm.rank == 0:
            s_buf[:8] = i.to_bytes(8, "little")
            for j in js:
                requests[j] = comm.Isend(s_msg, 1, 100)
            MPI.Request.Waitall(requests)
            comm.Recv([r_buf, 4, MPI.BYTE], 1, 101)
        else:
            got = []
            for j in js:
                requests[j] = comm.Irecv(r_msg, 0, 100)
                if j % 16 == 15:
                    MPI.Request.Waitall(requests[j - 15:j + 1])
                    got.append(int.from_bytes(r_buf[:8], "little"))
            MPI.Request.Waitall(requests)
            bad += sum(g != i for g in got)
            comm.Send([s_buf, 4, MPI.BYTE], 0, 101)
    return bad


def test_osu_demo_loops_move_every_message():
    assert values(run_ranks(_osu, 2, 64, 200)) == [0, 0]


def _any_source(comm):
    """Three senders, fast and posted receives from ANY_SOURCE and from each
    source mixed: per-source order kept, statuses name the sender."""
    n = 40
    if comm.rank:
        for i in range(n):
            comm.Send([(comm.rank * 1000 + i).to_bytes(8, "little"), MPI.BYTE], 0, i % 2)
        return None
    res = {}   # k (post order) -> (source, value)
    bufs = [bytearray(8) for _ in range(3 * n)]
    reqs, k = [], 0
    while k < 3 * n:
        if k % 3 == 0:
            st = MPI.Status()
            comm.Recv([bufs[k], 8, MPI.BYTE], MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            res[k] = st.Get_source(), int.from_bytes(bufs[k], "little")
        else:
            reqs.append((k, comm.Irecv([bufs[k], 8, MPI.BYTE], MPI.ANY_SOURCE, MPI.ANY_TAG)))
        k += 1
        if len(reqs) == 8 or k == 3 * n:
            sts = [MPI.Status() for _ in reqs]
            MPI.Request.Waitall([r for _, r in reqs], sts)
            for (j, _), st in zip(reqs, sts):
                v = int.from_bytes(bufs[j], "little")
                assert v % 2 == st.Get_tag()
                res[j] = st.Get_source(), v
            reqs = []
    seen = {1: [], 2: [], 3: []}
    for j in sorted(res):
        s, v = res[j]
        assert v // 1000 == s
        seen[s].append(v % 1000)
    return seen


def test_any_source_keeps_order_per_sender():
    got = values(run_ranks(_any_source, 4))[0]
    assert got == {s: list(range(40)) for s in (1, 2, 3)}


def test_irecv_serves_earlier_posted_receives_first(pair):
    """A receiver that ran ahead: receives posted on an empty ring, then the
    data; the next Irecv hands the waiting records to the posted receives in
    order (serve_posted), then takes its own; a record the fast paths may not
    take (a synchronous send) stops that and the general path goes on."""
    t0, t1, c0, c1 = pair
    b = [bytearray(8) for _ in range(6)]
    r1 = c1.Irecv([b[1], 8, MPI.BYTE], 0, 1)
    r2 = c1.Irecv([b[2], 8, MPI.BYTE], 0, MPI.ANY_TAG)
    assert len(t1.engine.posted) == 2
    for tag, x in ((1, b"a"), (2, b"b"), (3, b"c")):
        c0.Send([x * 8, MPI.BYTE], 1, tag)
    ss = c0.Issend([b"s" * 8, MPI.BYTE], 1, 5)
    c0.Send([b"d" * 8, MPI.BYTE], 1, 1)
    r3 = c1.Irecv([b[3], 8, MPI.BYTE], 0, 3)
    assert not t1.engine.posted and r1.Test() and r3.Test()     # served, then taken
    st = MPI.Status()
    assert r2.Test(st) and st.Get_tag() == 2 and bytes(b[2]) == b"b" * 8
    r4 = c1.Irecv([b[4], 8, MPI.BYTE], 0, 1)      # the next record is the Issend's
    r5 = c1.Irecv([b[5], 8, MPI.BYTE], 0, 5)
    MPI.Request.Waitall([r4, r5])
    assert [bytes(x) for x in b[1:]] == [x * 8 for x in (b"a", b"b", b"c", b"d", b"s")]
    MPI.Request.Waitall([ss])   # the receiver's ACK came back
    assert not t1.engine.posted and not t1.engine.unexpected
