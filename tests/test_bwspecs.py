"""osu_bw's spec lists, reused (issue 12, "Bandwidth windows", second round):
Isend and Irecv remember the last ``[bytearray or mmap, count, dt]`` spec they
parsed and skip the parse when the same list comes back unchanged; Irecv's
message taken at once shares one read-only op with the ones alike before it.
Real ranks.  Checked: a spec list changed in place between calls (count,
buffer, datatype), a receive buffer shrunk or closed since the last call, the
statuses and request identities of receives sharing an op."""

from __future__ import annotations

import mmap
import os
import time

import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _transport as T

from test_mmpi_p2p import run_ranks, values
from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def _in_ring(comm, src, records):
    """Wait until ``records`` small records from ``src`` wait in this rank's ring
    (nothing drains them: Irecv then takes them at once, as osu_bw's receiver
    does when the sender is ahead; Probe would move them to the unexpected list)."""
    t = comm._p.t
    w = comm._p.group[src]
    while _records(t, w) < records:
        time.sleep(0.001)


def _records(t, w):
    """How many records (wraps not counted) wait in the ring from rank ``w``:
    each is a header and its payload padded to 64 bytes (an inline one: its
    header alone, plen 0)."""
    n = 0
    pos = t.in_tail[w]
    head = t.words[t.in_head[w]]
    while pos < head:
        kf, *_, plen, _ = T.HDR.unpack_from(t.data, t.in_data[w] + pos % t.ring_bytes)
        if kf & 0xFF == T.K_WRAP:
            pos += t.ring_bytes - pos % t.ring_bytes
            continue
        pos += T.HDR_BYTES + ((plen + 63) & ~63)
        n += 1
    return n


def _mutated_specs(comm):
    """One spec list per side, changed in place between the calls of a window:
    every message carries what its spec said at its own call."""
    if comm.rank == 0:
        sbuf = mmap.mmap(-1, 4096)
        other = bytearray(b"Z" * 64)
        spec = [sbuf, 8, MPI.BYTE]
        reqs = []
        for j in range(12):
            sbuf[0:16] = bytes([65 + j]) * 16
            if j == 4:
                spec[1] = 16            # a longer count, same list
            elif j == 6:
                spec[0] = other          # another buffer, same list
            elif j == 8:
                spec[0] = sbuf
                spec[1] = 2
                spec[2] = MPI.INT        # another datatype: 2 x 4 bytes
            elif j == 10:
                spec[2] = MPI.BYTE
                spec[1] = 8
            reqs.append(comm.Isend(spec, 1, 5))
        MPI.Request.Waitall(reqs)
        comm.Recv(bytearray(1), 1, 9)
        return None
    rbuf = mmap.mmap(-1, 4096)
    got = []
    spec = [rbuf, 16, MPI.BYTE]
    _in_ring(comm, 0, 12)
    for j in range(12):
        rbuf[0:16] = b"." * 16
        st = MPI.Status()
        r = comm.Irecv(spec, 0, 5)
        r.Wait(st)
        got.append((bytes(rbuf[0:16]), st.Get_count()))
    comm.Send(bytearray(1), 0, 9)
    return got


def test_isend_and_irecv_follow_a_spec_list_changed_in_place():
    got = values(run_ranks(_mutated_specs, 2))[1]
    for j, (data, count) in enumerate(got):
        ch = bytes([65 + j])
        if j == 6 or j == 7:
            n, want = 16, b"Z" * 16
        elif j in (4, 5):
            n, want = 16, ch * 16
        else:
            n, want = 8, ch * 8
        assert count == n, (j, count)
        assert data == want + b"." * (16 - n), (j, data)


def _shrunk_receive(comm, kind):
    """Irecv's remembered spec, its buffer shrunk (bytearray) or closed (mmap)
    between two receives: the second is refused, the buffer never grown."""
    if comm.rank == 0:
        comm.Send(b"abcdefgh", 1, 3)
        comm.Send(b"ijklmnop", 1, 3)
        comm.Recv(bytearray(1), 1, 9)
        return None
    buf = bytearray(8) if kind == "bytearray" else mmap.mmap(-1, 8)
    spec = [buf, 8, MPI.BYTE]
    _in_ring(comm, 0, 2)
    r = comm.Irecv(spec, 0, 3)
    taken = type(r._op).__name__   # (the path under test: taken at once)
    r.Wait()
    first = bytes(buf)
    if kind == "bytearray":
        del buf[4:]
    elif kind == "mmap-resized":
        buf.resize(4)
    else:
        buf.close()
    try:
        comm.Irecv(spec, 0, 3).Wait()
        err = None
    except MmpiError as e:
        err = type(e).__name__
    after = len(buf) if kind != "mmap" else None
    ok = comm.Recv(bytearray(8), 0, 3) is None   # the refused message is still there
    comm.Send(bytearray(1), 0, 9)
    return taken, first, err, after, ok


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "mmap-resized"])
def test_irecv_remembered_spec_with_its_buffer_shrunk_or_closed(kind):
    taken, first, err, after, ok = values(run_ranks(_shrunk_receive, 2, kind))[1]
    assert taken == "TakenOp"
    assert first == b"abcdefgh"
    assert err is not None
    if kind != "mmap":
        assert after == 4   # not grown by the refused receive
    assert ok


def _shrunk_send(comm, kind):
    """Isend's remembered spec, its buffer shrunk or closed since: refused with
    the general parser's error, nothing sent."""
    if comm.rank == 0:
        buf = bytearray(b"12345678") if kind == "bytearray" else mmap.mmap(-1, 8)
        buf[0:8] = b"12345678"
        spec = [buf, 8, MPI.BYTE]
        comm.Isend(spec, 1, 4).Wait()
        if kind == "bytearray":
            del buf[2:]
        elif kind == "mmap-resized":
            buf.resize(2)
        else:
            buf.close()
        try:
            comm.Isend(spec, 1, 4).Wait()
            err = None
        except MmpiError as e:
            err = type(e).__name__
        comm.Send(b"end", 1, 4)
        return err
    a, b = bytearray(8), bytearray(8)
    comm.Recv(a, 0, 4)
    st = MPI.Status()
    comm.Recv(b, 0, 4, st)
    return bytes(a), bytes(b[:st.Get_count()])


@pytest.mark.parametrize("kind", ["bytearray", "mmap", "mmap-resized"])
def test_isend_remembered_spec_with_its_buffer_shrunk_or_closed(kind):
    out = values(run_ranks(_shrunk_send, 2, kind))
    assert out[0] is not None
    assert out[1] == (b"12345678", b"end")


def _shared_ops(comm):
    """Receives taken at once from the ring, alike (shared op) and not: each
    request is its own handle, its status its own message's."""
    if comm.rank == 0:
        for j in range(6):
            comm.Send(bytes([j]) * (4 if j < 3 else 6), 1, 20 + (j // 4))
        comm.Recv(bytearray(1), 1, 9)
        return None
    _in_ring(comm, 0, 6)   # all six are in the ring (in order)
    buf = bytearray(8)
    spec = [buf, 8, MPI.BYTE]
    reqs = [comm.Irecv(spec, 0, MPI.ANY_TAG) for _ in range(6)]
    kinds = [type(r._op).__name__ for r in reqs]   # (the path under test)
    shared = [reqs[i]._op is reqs[i + 1]._op for i in range(5)]
    dup = MPI.Request(reqs[1])
    eq = [[a == b for b in reqs] for a in reqs]
    dup_eq = (dup == reqs[1], dup == reqs[0])
    sts = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, sts)
    comm.Send(bytearray(1), 0, 9)
    return kinds, shared, eq, dup_eq, \
        [(s.Get_source(), s.Get_tag(), s.Get_count()) for s in sts], [bool(r) for r in reqs]


def test_irecv_requests_sharing_an_op_stay_distinct():
    kinds, shared, eq, dup_eq, sts, active = values(run_ranks(_shared_ops, 2))[1]
    # (the first through the general taker, the others Irecv's remembered spec's
    # deferred takes: a run per size and tag, docs/mmpi.md "eighth round")
    assert kinds == ["TakenOp"] + ["DeferredOp"] * 5
    assert shared == [False, True, False, False, True]
    assert eq == [[i == j for j in range(6)] for i in range(6)]
    assert dup_eq == (True, False)
    assert sts == [(0, 20, 4), (0, 20, 4), (0, 20, 4), (0, 20, 6), (0, 21, 6), (0, 21, 6)]
    assert active == [False] * 6


def _mutated_receive_spec(comm):
    """Irecv's spec list changed in place between receives taken at once: the
    buffer swapped, the count cut below the message (a truncation error, the
    buffer not written past its count)."""
    if comm.rank == 0:
        for j in range(4):
            comm.Send(bytes([97 + j]) * 8, 1, 6)
        comm.Recv(bytearray(1), 1, 9)
        return None
    a, b = bytearray(8), mmap.mmap(-1, 8)
    spec = [a, 8, MPI.BYTE]
    _in_ring(comm, 0, 4)
    comm.Irecv(spec, 0, 6).Wait()
    spec[0] = b
    comm.Irecv(spec, 0, 6).Wait()
    spec[1] = 4
    try:
        comm.Irecv(spec, 0, 6).Wait()
        err = None
    except MmpiError as e:
        err = e.Get_error_class()
    spec[1] = 8
    comm.Irecv(spec, 0, 6).Wait()
    comm.Send(bytearray(1), 0, 9)
    return bytes(a), bytes(b), err


def test_irecv_follows_its_spec_list_changed_in_place():
    a, b, err = values(run_ranks(_mutated_receive_spec, 2))[1]
    assert a == b"a" * 8
    assert err == MPI.ERR_TRUNCATE
    assert b == b"d" * 8   # the truncated receive wrote its 4 bytes, then the fourth all 8


def test_a_receive_irecv_posts_has_every_field_of_a_recvop():
    """``irecvs[src]`` makes its posted RecvOp field by field (RecvOp's
    ``__init__`` inlined): every slot of RecvOp and its bases is set, to what
    ``RecvOp(source, tag, context, mv)`` then ``state = R_POSTED`` sets, but
    ``key``, the spec's (a slot added to RecvOp and not here fails this)."""
    from driller.mmpi import _comm as C
    from driller.mmpi import _engine as E
    from driller.mmpi import _transport as T
    from driller.mmpi import _world as W
    fd = W.create_world(2)
    try:
        t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
        c1 = C.Comm(t1, [0, 1], 0, "w")
        buf = mmap.mmap(-1, 64)
        r = c1.Irecv([buf, 16, MPI.BYTE], 0, 5)
        op = r._op
        assert type(op) is T.RecvOp and t1.engine.posted[-1] is op
        ref = T.RecvOp(0, 5, op.context, memoryview(bytearray(16)))
        ref.state = E.R_POSTED
        slots = [s for k in T.RecvOp.__mro__ for s in getattr(k, "__slots__", ())]
        assert len(slots) > 10
        for s in slots:
            if s == "mv":
                assert op.mv.nbytes == 16 and not op.mv.readonly
            elif s == "key":   # (RecvOp() has none; irecvs[src]'s view of a spec: its key)
                assert ref.key is None and op.key == (id(buf), 16, 5, op.context)
            else:
                assert getattr(op, s) == getattr(ref, s), s
        r.Cancel()
        r.Wait()
        assert not t1.engine.posted and t0.rank == 0
    finally:
        os.close(fd)


def _spec_emptied(comm):
    """The remembered spec list emptied or cut to two items between calls: the
    general parser answers (an error for the empty list; [buf, dt] taken whole)."""
    if comm.rank == 0:
        buf = mmap.mmap(-1, 8)
        buf[:] = b"ABCDEFGH"
        spec = [buf, 8, MPI.BYTE]
        comm.Isend(spec, 1, 2).Wait()
        spec.clear()
        try:
            comm.Isend(spec, 1, 2)
            err = None
        except MmpiError:
            err = "refused"
        spec[:] = [buf, MPI.BYTE]
        comm.Isend(spec, 1, 2).Wait()
        comm.Recv(bytearray(1), 1, 9)
        return err
    buf = bytearray(8)
    spec = [buf, 8, MPI.BYTE]
    _in_ring(comm, 0, 2)
    comm.Irecv(spec, 0, 2).Wait()
    spec.clear()
    try:
        comm.Irecv(spec, 0, 2)
        err = None
    except MmpiError:
        err = "refused"
    spec[:] = [buf, MPI.BYTE]
    buf[:] = b"." * 8
    comm.Irecv(spec, 0, 2).Wait()
    comm.Send(bytearray(1), 0, 9)
    return err, bytes(buf)


def test_remembered_spec_list_emptied_or_cut_between_calls():
    out = values(run_ranks(_spec_emptied, 2))
    assert out[0] == "refused"
    assert out[1] == ("refused", b"ABCDEFGH")


def test_a_freed_datatype_handle_is_refused_after_isend_and_irecv_remembered_it(pair):
    """Isend's and Irecv's remembered spec follow the datatype handle as Send's
    cache does (tests/test_latpath.py): freed since, the call is refused."""
    _, _, c0, c1 = pair
    for buf in (bytearray(64), mmap.mmap(-1, 64)):
        dt = MPI.Datatype(MPI.BYTE)                   # a handle onto a predefined type
        out = bytearray(8)
        sspec, rspec = [buf, 8, dt], [out, 8, dt]
        rq = c1.Irecv(rspec, 0, 3)
        c0.Isend(sspec, 1, 3).Wait()
        rq.Wait()
        dt.free()                                     # this handle is null now
        with pytest.raises(MmpiError):
            c0.Isend(sspec, 1, 4)
        with pytest.raises(MmpiError):
            c1.Irecv(rspec, 0, 4)
        assert not c1.Iprobe(0, MPI.ANY_TAG)
