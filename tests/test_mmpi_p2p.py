"""mmpi point-to-point with real processes (forked ranks sharing one world block).

The harness below plays the launcher: create_world, fork N ranks that call
init_world, reap them and mark_dead each one, as `driller run` does.  No timed
assertions: a hang is caught by the harness's generous deadline.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import time
import traceback

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError, PeerDiedError, TruncationError
from driller.mmpi import _world

DEADLINE = 45.0


@pytest.fixture(autouse=True, params=["single-copy", "two-copy"])
def copy_mode(request, monkeypatch):
    """Every test of this module runs twice: with single copy (process_vm_readv)
    and with the two-copy fallback forced for the whole job
    (DRILLER_MMPI_SINGLE_COPY=0: large messages and objects are pushed through
    the rings); the forked ranks inherit the environment."""
    monkeypatch.setenv("DRILLER_MMPI_SINGLE_COPY", "1" if request.param == "single-copy" else "0")
    return request.param


@pytest.fixture
def rendezvous_above_256k(monkeypatch):
    """The eager limit these tests were written for (256 KiB, the default before
    it became 1 MiB): their 300 KB and 1 MiB messages must go by rendezvous (not
    streamed either: DRILLER_MMPI_STREAM_MAX=0; tests/test_mmpi_stream.py has
    the streamed protocol's)."""
    monkeypatch.setenv("DRILLER_MMPI_EAGER_LIMIT", str(256 << 10))
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")


def run_ranks(fn, n, *args, mark=True, deadline=DEADLINE):
    """Run fn(comm, *args) in n forked ranks; returns [(ok, value_or_error)] per rank."""
    fd = _world.create_world(n)
    files = [tempfile.TemporaryFile() for _ in range(n)]
    pids = {}
    try:
        for r in range(n):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 0
                try:
                    comm = mmpi.init_world(r, n, fd)
                    res = (True, fn(comm, *args))
                except BaseException as e:  # noqa: BLE001
                    code = 1
                    res = (False, (type(e).__name__, str(e), getattr(e, "rank", None),
                                   traceback.format_exc()))
                try:
                    files[r].write(pickle.dumps(res))
                    files[r].flush()
                finally:
                    os._exit(code)
            pids[pid] = r
        end = time.monotonic() + deadline
        while pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() > end:
                    for p in pids:
                        os.kill(p, signal.SIGKILL)
                    for p in list(pids):
                        os.waitpid(p, 0)
                    pids.clear()
                    raise AssertionError(f"ranks hung past {deadline} s")
                time.sleep(0.002)
                continue
            r = pids.pop(pid)
            if mark:
                _world.mark_dead(fd, r, status)
        out = []
        for f in files:
            f.seek(0)
            data = f.read()
            out.append(pickle.loads(data) if data else (False, ("Killed", "", None, "")))
        return out
    finally:
        os.close(fd)
        for f in files:
            f.close()


def values(results):
    for r, (ok, v) in enumerate(results):
        assert ok, f"rank {r} failed: {v[0]}: {v[1]}\n{v[3]}"
    return [v for _, v in results]


# ------------------------------------------------------------------ basics

def _hello(comm):
    return comm.rank, comm.size, comm.Get_rank(), comm.Get_size()


def test_ranks_and_sizes():
    assert values(run_ranks(_hello, 3)) == [(r, 3, r, 3) for r in range(3)]


def _pingpong_sizes(comm, sizes):
    out = []
    for n in sizes:
        a = np.arange(n, dtype=np.uint8) ^ 0x5A
        b = np.zeros(n, np.uint8)
        st = MPI.Status()
        if comm.rank == 0:
            comm.Send(a, 1, 7)
            comm.Recv(b, 1, 8, st)
        else:
            comm.Recv(b, 0, 7, st)
            comm.Send(b, 0, 8)
        out.append((bool((b == a).all()), st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)))
    return out


@pytest.mark.parametrize("split", ["0", "1048576"])
def test_pingpong_eager_and_rendezvous_sizes(split, monkeypatch):
    # split: rendezvous copies >= 1 MiB shared by receiver (readv) and sender (writev)
    monkeypatch.setenv("DRILLER_MMPI_SPLIT_MIN", split)
    sizes = [0, 1, 8, 63, 64, 65, 4096, 262144, 262145, 1 << 20, (3 << 20) + 5]
    res = values(run_ranks(_pingpong_sizes, 2, sizes))
    assert res[0] == [(True, 1, 8, n) for n in sizes]
    assert res[1] == [(True, 0, 7, n) for n in sizes]


def _ordering(comm, count, size):
    # non-overtaking: many messages, same (source, tag), mixed eager/rndv sizes
    if comm.rank == 0:
        reqs = []
        for i in range(count):
            n = size if i % 3 == 0 else 8
            a = np.full(n // 8, i, np.int64)
            reqs.append(comm.Isend(a, 1, 3))
        MPI.Request.Waitall(reqs)
        return None
    got = []
    for _ in range(count):
        st = MPI.Status()
        comm.Probe(0, 3, st)
        b = np.empty(st.Get_count(MPI.INT64_T), np.int64)
        comm.Recv(b, 0, 3)
        got.append(int(b[0]) if b.size else None)
    return got


def test_non_overtaking_mixed_protocols():
    res = values(run_ranks(_ordering, 2, 60, 300_000))
    assert res[1] == list(range(60))


def _wildcards(comm):
    if comm.rank != 0:
        comm.Send(np.array([comm.rank, 10 + comm.rank], np.int64), 0, tag=comm.rank * 11)
        comm.Barrier()
        comm.send({"from": comm.rank}, 0, tag=99)
        return None
    seen = []
    for _ in range(comm.size - 1):
        b = np.zeros(2, np.int64)
        st = MPI.Status()
        comm.Recv(b, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
        assert b[0] == st.source and st.tag == 11 * st.source
        seen.append(st.source)
    comm.Barrier()
    objs = sorted(comm.recv(source=MPI.ANY_SOURCE, tag=99)["from"] for _ in range(comm.size - 1))
    return sorted(seen), objs


def test_any_source_any_tag():
    res = values(run_ranks(_wildcards, 4))
    assert res[0] == ([1, 2, 3], [1, 2, 3])


def _tag_selection(comm):
    # receive in the opposite order of sending: tags select, unexpected queue holds
    if comm.rank == 0:
        for t in range(5):
            comm.Send(np.array([t], np.int32), 1, tag=t)
        big = np.arange(100_000, dtype=np.int32)
        comm.Isend(big, 1, tag=50).Wait()
        return None
    out = []
    bigbuf = np.zeros(100_000, np.int32)
    r = comm.Irecv(bigbuf, 0, 50)
    for t in reversed(range(5)):
        b = np.zeros(1, np.int32)
        comm.Recv(b, 0, t)
        out.append(int(b[0]))
    r.Wait()
    return out, bool((bigbuf == np.arange(100_000)).all())


def test_tags_select_and_unexpected_queue():
    assert values(run_ranks(_tag_selection, 2))[1] == ([4, 3, 2, 1, 0], True)


def _proc_null(comm):
    st = MPI.Status()
    b = np.zeros(4, np.uint8)
    comm.Send(b, MPI.PROC_NULL, 5)
    comm.Recv(b, MPI.PROC_NULL, 5, st)
    r = comm.Irecv(b, MPI.PROC_NULL)
    r.Wait()
    assert comm.recv(source=MPI.PROC_NULL) is None
    comm.send("x", MPI.PROC_NULL)
    return st.source, st.tag, st.Get_count()


def test_proc_null():
    assert values(run_ranks(_proc_null, 2))[0] == (MPI.PROC_NULL, MPI.ANY_TAG, 0)


def _zero_length(comm):
    if comm.rank == 0:
        comm.Send(b"", 1, 1)
        comm.Ssend(np.zeros(0), 1, 2)
        comm.Send([None, 0, MPI.BYTE], 1, 3)
        return None
    st = MPI.Status()
    out = []
    for t in (1, 2, 3):
        comm.Recv(bytearray(0), 0, t, st)
        out.append((st.tag, st.Get_count()))
    return out


def test_zero_length_messages():
    assert values(run_ranks(_zero_length, 2))[1] == [(1, 0), (2, 0), (3, 0)]


def _empty_nd_nonblocking(comm):
    # a rank owning no rows of a 2-D array posts np.empty((0, ncols)) (Isend, Issend,
    # Irecv): these raised a bare TypeError ("cannot cast view with zeros in shape or
    # strides") on the nonblocking fast path; the blocking paths took them
    other = 1 - comm.rank
    shapes = [((0, 3), "C"), ((3, 0), "C"), ((0, 1), "F")]
    reqs, got = [], []
    for i, (shape, order) in enumerate(shapes):
        b = np.empty(shape, order=order)
        got.append(b)
        reqs.append(comm.Irecv(b, other, 10 + i))
        a = np.empty(shape, order=order)
        reqs.append((comm.Isend if i % 2 else comm.Issend)(a, other, 10 + i))
    statuses = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, statuses)
    return [(s.tag, s.Get_count()) for s in statuses[0::2]]


def test_zero_size_multidimensional_arrays_go_through_the_nonblocking_calls():
    for got in values(run_ranks(_empty_nd_nonblocking, 2)):
        assert got == [(10, 0), (11, 0), (12, 0)]


# ------------------------------------------------------------------ specs, datatypes, status

def _specs(comm):
    if comm.rank == 0:
        a = np.arange(10, dtype=np.float64)
        comm.Send([a, 3, MPI.DOUBLE], 1, 1)            # first 3 doubles
        comm.Send([a, (2, 5), MPI.DOUBLE], 1, 2)       # 2 doubles from displacement 5
        comm.Send([a, MPI.DOUBLE], 1, 3)
        comm.Send(np.arange(6, dtype=np.int32).reshape(2, 3), 1, 4)
        comm.Send(np.asfortranarray(np.arange(6.0).reshape(2, 3)), 1, 5)
        return None
    b = np.zeros(10)
    st = MPI.Status()
    comm.Recv([b, 10, MPI.DOUBLE], 0, 1, st)
    r1 = (b[:3].tolist(), st.Get_count(MPI.DOUBLE), st.Get_count(MPI.BYTE))
    comm.Recv([b, MPI.DOUBLE], 0, 2, st)
    r2 = b[:2].tolist()
    comm.Recv(b, 0, 3, st)
    r3 = b.tolist()
    m = np.zeros((2, 3), np.int32)
    comm.Recv([m, MPI.INT], 0, 4, st)
    f = np.zeros(6)
    comm.Recv(f, 0, 5, st)
    return r1, r2, r3, m.tolist(), st.Get_elements(MPI.DOUBLE), st.Get_count(MPI.INT64_T)


def test_buffer_specs_and_status_counts():
    r1, r2, r3, m, elems, c64 = values(run_ranks(_specs, 2))[1]
    assert r1 == ([0.0, 1.0, 2.0], 3, 24)
    assert r2 == [5.0, 6.0]
    assert r3 == list(map(float, range(10)))
    assert m == [[0, 1, 2], [3, 4, 5]]
    assert elems == 6 and c64 == 6


def test_datatypes_sizes():
    expect = {"BYTE": 1, "CHAR": 1, "SHORT": 2, "INT": 4, "LONG": 8, "LONG_LONG": 8,
              "UNSIGNED": 4, "FLOAT": 4, "DOUBLE": 8, "LONG_DOUBLE": 16, "C_BOOL": 1,
              "INT8_T": 1, "UINT64_T": 8, "C_FLOAT_COMPLEX": 8, "C_DOUBLE_COMPLEX": 16}
    for name, size in expect.items():
        dt = getattr(MPI, name)
        assert dt.Get_size() == size and dt.Get_extent() == (0, size), name
    st = MPI.Status()
    st.count = 12
    assert st.Get_count(MPI.INT) == 3 and st.Get_count(MPI.DOUBLE) == MPI.UNDEFINED


def test_facade_not_implemented_names_the_call():
    with pytest.raises(NotImplementedError, match="MPI.Register_datarep"):   # MPI-IO
        MPI.Register_datarep
    assert not hasattr(MPI, "Register_datarep")
    with pytest.raises(NotImplementedError, match="Comm.Alltoallw_init"):
        MPI.COMM_SELF.Alltoallw_init   # (persistent collectives: not in driller yet)
    assert MPI.COMM_SELF.Get_size() == 1
    assert MPI.Is_initialized() and not MPI.Is_finalized()
    assert isinstance(MPI.Get_processor_name(), str) and MPI.Wtick() > 0
    assert MPI.Wtime() <= MPI.Wtime()


def test_singleton_world_self_messages():
    comm = mmpi.COMM_WORLD  # no launcher environment: a world of one
    assert (comm.rank, comm.size) == (0, 1)
    comm.Send(np.arange(5.0), 0, 1)
    big = np.arange(300_000, dtype=np.int64)
    req = comm.Isend(big, 0, 2)          # to self: buffered, never a deadlock
    out = np.zeros_like(big)
    comm.Recv(out, 0, 2)
    req.Wait()
    b = np.zeros(5)
    comm.Recv(b, 0, 1)
    assert (out == big).all() and b.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    comm.send({"k": big}, 0, 3)
    assert (comm.recv(source=0, tag=3)["k"] == big).all()
    comm.Barrier()
    rq = comm.Issend(b"abc", 0, 4)
    assert not rq.Test()                 # synchronous: not matched yet
    buf = bytearray(3)
    comm.Recv(buf, 0, 4)
    assert rq.Test() and buf == b"abc"


# ------------------------------------------------------------------ errors

def _invalid(comm):
    errs = []
    a = np.zeros(4)
    cases = [
        lambda: comm.Send(a, 5, 0),
        lambda: comm.Send(a, -7, 0),
        lambda: comm.Send(a, 1, -3),
        lambda: comm.Send(a, 1, "x"),
        lambda: comm.Recv(a, 9),
        lambda: comm.Recv(a, 1, -5),
        lambda: comm.Send([a, 3, "nope"], 1),
        lambda: comm.Send([a, 9, MPI.DOUBLE], 1),
        lambda: comm.Send([1, 2, 3], 1),
        lambda: comm.Send("text", 1),
        lambda: comm.Recv(b"readonly", 1),
        lambda: comm.Recv(a[::2], 1),
        lambda: comm.Send(np.zeros((4, 4))[:, 1], 1),
    ]
    ro = np.zeros(4)
    ro.setflags(write=False)
    cases.append(lambda: comm.Recv(ro, 1))
    for c in cases:
        try:
            c()
            errs.append(None)
        except MmpiError as e:
            errs.append(str(e))
    return errs


def test_invalid_arguments_raise_clear_errors():
    errs = values(run_ranks(_invalid, 2))[0]
    assert all(e is not None for e in errs), errs
    assert "invalid destination rank 5" in errs[0]
    assert "invalid tag -3" in errs[2]
    assert "invalid datatype" in errs[6]
    assert "overruns" in errs[7]
    assert "read-only" in errs[10] and "read-only" in errs[13]
    assert "not contiguous" in errs[11] and "not contiguous" in errs[12]


def _truncation(comm, n):
    if comm.rank == 0:
        comm.Send(np.arange(n, dtype=np.uint8), 1, 4)
        comm.Send(np.array([42], np.int64), 1, 5)   # communicator still usable
        return None
    small = np.full(16 + 8, 0xEE, np.uint8)
    st = MPI.Status()
    try:
        comm.Recv(small[:16], 0, 4, st)
        err = None
    except TruncationError as e:
        err = str(e)
    b = np.zeros(1, np.int64)
    comm.Recv(b, 0, 5)
    return err, small[:16].tolist(), small[16:].tolist(), st.error, int(b[0])


@pytest.mark.parametrize("n", [100, 500_000])
def test_truncation_raises_and_copies_nothing_past_the_buffer(n):
    err, head, tail, error, after = values(run_ranks(_truncation, 2, n))[1]
    assert err is not None and f"{n} bytes" in err and "16-byte" in err
    assert "rank 0" in err and "tag 4" in err
    assert head == [i % 256 for i in range(16)]
    assert tail == [0xEE] * 8
    assert error == 15 and after == 42


# ------------------------------------------------------------------ requests

def _requests(comm):
    if comm.rank == 0:
        comm.Send(np.array([1], np.int32), 1, 1)
        comm.Send(np.array([2], np.int32), 1, 2)
        comm.Ssend(np.array([3], np.int32), 1, 3)
        comm.send("sync-after-cancel", 1, 9)
        return None
    out = {}
    # Cancel a receive that cannot match
    c = comm.Irecv(np.zeros(1, np.int32), 0, 77)
    c.Cancel()
    st = MPI.Status()
    c.Wait(st)
    out["cancelled"] = st.Is_cancelled()
    bufs = [np.zeros(1, np.int32) for _ in range(3)]
    reqs = [comm.Irecv(bufs[i], 0, i + 1) for i in (2, 0, 1)]
    idx = MPI.Request.Waitany(reqs)
    out["any"] = idx
    rest = MPI.Request.Waitsome(reqs)
    MPI.Request.Waitall(reqs)
    out["vals"] = [int(b[0]) for b in bufs]
    out["null_after_wait"] = all(not r for r in reqs)
    out["testall_null"] = MPI.Request.Testall([MPI.REQUEST_NULL])
    out["obj"] = comm.recv(source=0, tag=9)
    out["rest"] = rest is not None
    return out


def test_requests_wait_any_some_all_and_cancel():
    out = values(run_ranks(_requests, 2))[1]
    assert out["cancelled"] is True
    assert out["vals"] == [1, 2, 3]
    assert out["any"] in (0, 1, 2)
    assert out["null_after_wait"] and out["testall_null"] and out["rest"]
    assert out["obj"] == "sync-after-cancel"


def _persistent(comm, rounds):
    buf = np.zeros(4, np.int64)
    if comm.rank == 0:
        req = comm.Send_init(buf, 1, 6)
        back = np.zeros(4, np.int64)
        rreq = comm.Recv_init(back, 1, 7)
        got = []
        for i in range(rounds):
            buf[:] = i
            MPI.Prequest.Startall([req, rreq])
            MPI.Request.Waitall([req, rreq])
            got.append(int(back.sum()))
        req.Free()
        rreq.Free()
        return got
    rreq = comm.Recv_init(buf, 0, 6)
    for i in range(rounds):
        rreq.Start()
        rreq.Wait()
        comm.Send(buf * 2, 0, 7)
    return None


def test_persistent_requests():
    assert values(run_ranks(_persistent, 2, 20))[0] == [8 * i for i in range(20)]


def _probe(comm):
    if comm.rank == 0:
        comm.Send(np.arange(1000, dtype=np.float32), 1, 12)
        comm.send([1, "two", 3.0], 1, 13)
        return None
    st = MPI.Status()
    while not comm.Iprobe(0, 12, st):
        pass
    n = st.Get_count(MPI.FLOAT)
    assert comm.Iprobe(0, 12)          # probing does not consume
    b = np.empty(n, np.float32)
    comm.Recv(b, 0, 12)
    comm.probe(0, 13, st)
    return n, float(b.sum()), comm.recv(source=0, tag=13), st.tag


def test_probe_iprobe():
    assert values(run_ranks(_probe, 2))[1] == (1000, float(sum(range(1000))), [1, "two", 3.0], 13)


def _sendrecv(comm):
    n = comm.size
    right, left = (comm.rank + 1) % n, (comm.rank - 1) % n
    out = np.zeros(3, np.int64)
    comm.Sendrecv(np.full(3, comm.rank, np.int64), right, 1, out, left, 1)
    rep = np.full(50_000, comm.rank, np.int64)
    comm.Sendrecv_replace(rep, right, 2, left, 2)
    obj = comm.sendrecv(("hi", comm.rank), right, 3, source=left, recvtag=3)
    return int(out[0]), int(rep[0]), bool((rep == left).all()), obj


def test_sendrecv_ring():
    res = values(run_ranks(_sendrecv, 3))
    for r, (a, b, ok, obj) in enumerate(res):
        left = (r - 1) % 3
        assert (a, b, ok, obj) == (left, left, True, ("hi", left))


# ------------------------------------------------------------------ objects

def _objects(comm):
    big = np.arange(1 << 18, dtype=np.float64)          # 2 MiB: out of band
    payload = {"arr": big, "bytes": b"b" * 300_000, "ba": bytearray(b"a" * 200_000),
               "small": np.arange(3), "nested": [big[:10], ("x", 1.5)], "ro": None}
    ro = np.arange(100_000, dtype=np.int32)
    ro.setflags(write=False)
    payload["ro"] = ro
    if comm.rank == 0:
        comm.send(payload, 1, 1)
        r = comm.isend(b"z" * 1_000_000, 1, 2)
        r.wait()
        comm.ssend(list(range(100_000)), 1, 3)           # a large pickle stream
        return None
    got = comm.recv(source=0, tag=1)
    req = comm.irecv(source=0, tag=2)
    z = req.wait()
    lst = comm.recv(source=0, tag=3)
    return ((got["arr"] == big).all(), got["arr"].flags.writeable, got["bytes"] == payload["bytes"],
            type(got["bytes"]).__name__, type(got["ba"]).__name__, got["ba"] == payload["ba"],
            got["small"].tolist(), got["nested"][1], bool((got["ro"] == ro).all()),
            got["ro"].flags.writeable, z == b"z" * 1_000_000, lst == list(range(100_000)))


def test_objects_with_large_buffers():
    res = values(run_ranks(_objects, 2))[1]
    assert res == (True, True, True, "bytes", "bytearray", True, [0, 1, 2], ("x", 1.5), True,
                   False, True, True)


def test_large_buffers_stay_out_of_the_pickle_stream():
    from driller.mmpi._objects import dumps as _dumps
    big = np.zeros(1 << 20)
    stream, parts = _dumps({"a": big, "b": b"x" * 500_000, "c": [bytearray(200_000)]})
    assert len(stream) < 1000
    assert sorted(p.nbytes for p, _ in parts) == [200_000, 500_000, 8 << 20]
    stream, parts = _dumps(b"y" * 100_000)
    assert len(stream) < 100 and len(parts) == 1
    from types import SimpleNamespace
    stream, parts = _dumps(SimpleNamespace(a=np.zeros(1 << 17)))   # inside an object
    assert len(stream) < 1000 and [p.nbytes for p, _ in parts] == [1 << 20]
    stream, parts = _dumps([np.zeros(10), 1, "x", {"k": b"abc"}])  # all small: in band
    assert parts == [] and pickle.loads(stream)[3] == {"k": b"abc"}


def _packed_objects(comm):
    arr = np.arange(1 << 15, dtype=np.float64)            # 256 KiB: out of band
    ro = np.arange(20_000, dtype=np.int32)
    ro.setflags(write=False)
    payload = {"arr": arr, "b": b"q" * 100_000, "ba": bytearray(b"w" * 70_000), "ro": ro,
               "small": [1, "x"]}
    if comm.rank == 0:
        comm.send(payload, 1, 1)      # rank 1 sleeps: arrives unexpected
        comm.ssend(payload, 1, 2)
        comm.isend(payload, 1, 3).wait()
        comm.send(payload, 1, 4)
        return comm._t.packed_limit
    time.sleep(0.3)
    st = MPI.Status()
    got = [comm.recv(source=0, tag=1, status=st)]
    count = st.Get_count()
    got.append(comm.recv(source=0, tag=2))
    got.append(comm.irecv(source=0, tag=3).wait())
    got.append(comm.recv(source=0, tag=4, status=st))
    out = []
    for g in got:
        out.append(((g["arr"] == arr).all(), g["arr"].flags.writeable, g["b"] == payload["b"],
                    type(g["b"]), g["ba"] == payload["ba"], type(g["ba"]),
                    (g["ro"] == ro).all(), g["ro"].flags.writeable, g["small"]))
    g = got[0]
    g["arr"][:] = 0
    private = bool((got[1]["arr"] == arr).all())
    return out, count, st.Get_count(), private


def test_objects_packed_through_the_ring():
    res = values(run_ranks(_packed_objects, 2))
    limit = res[0]
    out, c1, c4, private = res[1]
    assert limit >= 1 << 20                          # this object fits: packed, eager
    want = (True, True, True, bytes, True, bytearray, True, False, [1, "x"])
    assert out == [want] * 4
    assert c1 == c4 and c1 > (1 << 18) + 170_000 and private


def _bare_arrays():
    ro = np.arange(6, dtype=np.int16).reshape(2, 3)
    ro.setflags(write=False)
    return [np.arange(8, dtype=np.uint8), np.float64(2.5) * np.ones((3, 4)),
            np.array(7.0), np.zeros((0, 3), np.int32), np.arange(5, dtype=">i2"),
            np.array([True, False]), np.arange(3) * (1 + 2j), ro,
            np.asfortranarray(np.arange(6.0).reshape(2, 3)),           # not C: pickled
            np.array(["a", "bc"]), np.arange(10_000, dtype=np.float32)]  # kind U: pickled


def _bare(comm):
    arrs = _bare_arrays()
    if comm.rank == 0:
        for i, a in enumerate(arrs):
            comm.send(a, 1, i)
        comm.send(arrs[1], 1, 99)                 # rank 1 probes it first
        return None
    time.sleep(0.2)                               # the first ones arrive unexpected
    got = [comm.recv(source=0, tag=0)]
    got += [comm.recv(source=MPI.ANY_SOURCE, tag=i) for i in range(1, len(arrs))]
    st = MPI.Status()
    comm.Probe(0, 99, st)
    last = comm.recv(source=0, tag=99)
    return ([(g.dtype.str, g.shape, g.flags.writeable, type(g).__name__) for g in got],
            [bool((g == a).all()) for g, a in zip(got, arrs)], st.Get_count() > 96,
            bool((last == arrs[1]).all()))


def test_bare_arrays_sent_as_objects():
    got, same, counted, last = values(run_ranks(_bare, 2))[1]
    want = [(a.dtype.str, a.shape, True, "ndarray") for a in _bare_arrays()]
    assert got == want and all(same) and counted and last


def _recv_cache(comm):
    n = 1 << 18
    big = {"a": np.arange(n, dtype=np.float64), "b": np.ones((256, 512), np.float32)}
    if comm.rank == 0:
        for i in range(5):
            big["a"][0] = i
            comm.send(big, 1, 1)
        return None
    cache = comm._t.recv_cache
    first = comm.recv(source=0, tag=1)
    second = comm.recv(source=0, tag=1)
    fresh = (first["a"].flags.writeable, first["b"].dtype == np.float32,
             first["b"].shape == (256, 512), first["a"][0] == 0, second["a"][0] == 1,
             not np.shares_memory(first["a"], second["a"]),
             not np.shares_memory(first["a"], first["b"]))
    first["a"][:] = -1                       # writable and private
    intact = bool((second["a"][1:] == np.arange(1, n)).all())
    hits = cache.hits
    view_b = first["b"][10:20]               # a view keeps its buffer in use
    del first
    third = comm.recv(source=0, tag=1)       # reuses the memory of first["a"] only
    reused = cache.hits == hits + 1
    apart = not any(np.shares_memory(x, y) for x in (third["a"], third["b"])
                    for y in (second["a"], second["b"], view_b))
    view_b[:] = 7
    del view_b
    fourth = comm.recv(source=0, tag=1)
    del second, third, fourth
    fifth = comm.recv(source=0, tag=1)
    return (fresh, intact, reused, apart, bool((fifth["a"][1:] == np.arange(1, n)).all()),
            fifth["a"][0] == 4, bool((fifth["b"] == 1).all()), cache.idle <= cache.cap)


def test_received_buffers_are_private_and_reused_only_when_dropped():
    res = values(run_ranks(_recv_cache, 2))[1]
    assert res == ((True,) * 7, True, True, True, True, True, True, True)


def test_recv_cache_bounds():
    from driller.mmpi._transport import RecvCache, _size_class
    assert _size_class(8 << 20) == 8 << 20 and _size_class((8 << 20) + 1) == 9 << 20
    assert _size_class(100_000) % 4096 == 0 and _size_class(100_000) >= 100_000
    c = RecvCache(cap=3 << 20)
    a, addr = c.take(2 << 20)
    assert a.nbytes == 2 << 20 and a.flags.writeable and a.__array_interface__["data"][0] == addr
    b, _ = c.take(2 << 20)                   # a live one is never handed out twice
    assert not np.shares_memory(a, b)
    del a
    assert c.idle == 2 << 20
    del b                                    # over the cap: freed, not kept
    assert c.idle == 2 << 20
    d, addr2 = c.take(2 << 20)
    assert addr2 == addr and c.idle == 0
    off = RecvCache(cap=0)
    e, _ = off.take(1 << 20)
    del e
    assert off.idle == 0 and not off.free


# ------------------------------------------------------------------ barrier, stress

def _barrier(comm, rounds):
    # each rank writes its round into a shared file slot before the barrier; after it,
    # every slot must hold at least that round (nobody left the barrier early)
    bad = 0
    for i in range(rounds):
        comm.Send(np.array([i], np.int64), (comm.rank + 1) % comm.size, 0)
        b = np.zeros(1, np.int64)
        comm.Recv(b, (comm.rank - 1) % comm.size, 0)
        comm.Barrier()
        bad += int(b[0]) != i
    comm.barrier()
    return bad


def test_barrier_8_ranks():
    assert values(run_ranks(_barrier, 8, 200)) == [0] * 8


def _barrier_order(comm, path):
    # rank r appends after sleeping r*20 ms; after the barrier everybody appends again:
    # every "before" line must precede every "after" line.
    time.sleep(0.02 * comm.rank)
    with open(path, "a") as f:
        f.write(f"before {comm.rank}\n")
    comm.Barrier()
    with open(path, "a") as f:
        f.write(f"after {comm.rank}\n")


def test_barrier_separates_phases(tmp_path):
    path = str(tmp_path / "log")
    values(run_ranks(_barrier_order, 5, path))
    lines = open(path).read().split("\n")[:-1]
    assert len(lines) == 10
    assert all(line.startswith("before") for line in lines[:5])


SIZES = [0, 1, 7, 8, 100, 4096, 32768, 100_000, 262144, 262145, 600_000]


def _plan(seed, n, per_rank):
    rng = np.random.default_rng(seed)
    plan = []
    for src in range(n):
        for i in range(per_rank):
            plan.append((src, int(rng.integers(n)), int(rng.integers(4)),
                         SIZES[int(rng.integers(len(SIZES)))], i, int(rng.integers(3))))
    return plan


def _content(src, i, size):
    return (np.arange(size, dtype=np.uint64) * 2654435761 + src * 1000003 + i).astype(np.uint8)


def _stress(comm, seed, per_rank):
    n = comm.size
    plan = _plan(seed, n, per_rank)
    me = comm.rank
    rng = np.random.default_rng(seed + me)
    reqs, keep = [], []
    for src, dst, tag, size, i, mode in plan:
        if src != me:
            continue
        a = _content(src, i, size)
        keep.append(a)
        reqs.append(comm.Issend(a, dst, tag) if mode == 2 else comm.Isend(a, dst, tag))
    expected = {}
    for src, dst, tag, size, i, mode in plan:
        if dst == me:
            expected.setdefault((src, tag), []).append((size, i))
    total = sum(len(v) for v in expected.values())
    bad = []
    got = 0
    while got < total:
        st = MPI.Status()
        how = int(rng.integers(3))
        if how == 0:
            buf = np.zeros(max(SIZES), np.uint8)
            comm.Recv(buf, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            data = buf[:st.Get_count()]
        elif how == 1:
            comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)
            data = np.zeros(st.Get_count(), np.uint8)
            comm.Recv(data, st.source, st.tag, st)
        else:
            keys = sorted(k for k, v in expected.items() if v)
            src, tag = keys[int(rng.integers(len(keys)))]
            data = np.zeros(max(SIZES), np.uint8)
            comm.Irecv(data, src, tag).Wait(st)
            data = data[:st.Get_count()]
        q = expected.get((st.source, st.tag))
        if not q:
            bad.append(("unexpected", st.source, st.tag))
            break
        size, i = q.pop(0)
        if data.size != size or not (data == _content(st.source, i, size)).all():
            bad.append(("mismatch", st.source, st.tag, size, i, data.size))
        got += 1
        if rng.random() < 0.3:  # let sends progress in between
            MPI.Request.Testall(reqs)
    MPI.Request.Waitall(reqs)
    comm.Barrier()
    leftover = comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    return bad, got, leftover


@pytest.mark.parametrize("seed", [1234, 99])
def test_stress_8_ranks_random_messages(seed):
    res = values(run_ranks(_stress, 8, seed, 150))
    plan = _plan(seed, 8, 150)
    for r, (bad, got, leftover) in enumerate(res):
        assert bad == [], (r, bad)
        assert got == sum(1 for p in plan if p[1] == r)
        assert not leftover


# ------------------------------------------------------------------ peer death

def _die_in_recv(comm, mode):
    if comm.rank == 1:
        comm.Barrier()
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Barrier()
    b = np.zeros(8, np.uint8)
    if mode == "recv":
        comm.Recv(b, 1, 0)
    elif mode == "recv-any":
        comm.Recv(b, MPI.ANY_SOURCE, 0)
    elif mode == "send-rndv":
        comm.Send(np.zeros(1 << 20, np.uint8), 1, 0)
    elif mode == "ssend":
        comm.Ssend(b, 1, 0)
    elif mode == "send-ring-full":   # eager sends block once the ring is full
        for _ in range(1000):
            comm.Send(np.zeros(200_000, np.uint8), 1, 0)
    elif mode == "recv-obj":
        comm.recv(source=1)
    elif mode == "barrier":
        comm.Barrier()
    return "completed?!"


@pytest.mark.parametrize("mode", ["recv", "recv-any", "send-rndv", "ssend", "send-ring-full",
                                  "recv-obj", "barrier"])
def test_peer_killed_raises_peer_died(mode, rendezvous_above_256k):
    res = run_ranks(_die_in_recv, 3 if mode == "barrier" else 2, mode)
    assert res[1][0] is False and res[1][1][0] == "Killed"
    for r in [0] + ([2] if mode == "barrier" else []):
        ok, v = res[r]
        assert not ok and v[0] == "PeerDiedError", v
        assert "rank 1" in v[1] and v[2] == 1
        assert "SIGKILL" in v[1] or "is gone" in v[1]  # launcher mark or pid noticed first


def _die_unmarked(comm):
    if comm.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Recv(np.zeros(1), 1, 0)


def test_peer_death_noticed_without_launcher_mark():
    # no mark_dead: the waiting rank notices by pid on a futex timeout
    res = run_ranks(_die_unmarked, 2, mark=False)
    ok, v = res[0]
    assert not ok and v[0] == "PeerDiedError" and v[2] == 1


def test_no_fd_leak_in_harness_parent():
    before = set(os.listdir("/proc/self/fd"))
    values(run_ranks(_hello, 2))
    assert set(os.listdir("/proc/self/fd")) <= before


# ------------------------------------------------------------------ more requests and objects

def _object_requests(comm):
    if comm.rank == 0:
        reqs = [comm.isend(("item", i, np.full(20_000 * (i % 2), i)), 1, tag=i) for i in range(6)]
        reqs.append(comm.issend("sync", 1, tag=100))
        MPI.Request.waitall(reqs)
        return None
    rs = [comm.irecv(source=0, tag=i) for i in reversed(range(6))]
    got = MPI.Request.waitall(rs)
    flag, obj = False, None
    r = comm.irecv(source=0, tag=100)
    while not flag:
        flag, obj = r.test()
    return [(g[0], g[1], int(g[2].sum())) for g in got], obj


def test_object_requests():
    got, obj = values(run_ranks(_object_requests, 2))[1]
    assert got == [("item", i, 20_000 * i * (i % 2)) for i in reversed(range(6))]
    assert obj == "sync"


def _isend_snapshot(comm):
    # mpi4py's isend pickles the object at the call: arrays changed before the
    # request completes do not change the message.  Rank 1 receives late, so the
    # packed records (1.6 MB each) fill the ring and wait in the queue, and the
    # rendezvous ones (32 MiB, a large bytearray) wait for the receiver's read
    if comm.rank == 0:
        arrays = [np.zeros(200_000) for _ in range(8)]
        big, raw = np.zeros(4 << 20), bytearray(1 << 21)
        reqs = [comm.isend({"k": k, "a": a}, 1, tag=k) for k, a in enumerate(arrays)]
        reqs.append(comm.isend([big, raw], 1, tag=98))
        reqs.append(comm.issend(big, 1, tag=99))
        for a in arrays + [big]:
            a[:] = 1.0
        raw[:] = b"X" * len(raw)
        comm.send(None, 1, tag=100)   # (rank 1 starts receiving: the requests are out)
        MPI.Request.waitall(reqs)
        return None
    comm.recv(source=0, tag=100)
    time.sleep(0.2)
    got = [float(comm.recv(source=0, tag=k)["a"].max()) for k in range(8)]
    big, raw = comm.recv(source=0, tag=98)
    return got, float(big.max()), bytes(raw[:4]), float(comm.recv(source=0, tag=99).max())


def test_isend_sends_the_object_as_it_was_at_the_call():
    got, big, raw, sync = values(run_ranks(_isend_snapshot, 2))[1]
    assert got == [0.0] * 8 and big == 0.0 and raw == bytes(4) and sync == 0.0


def _byte_order(comm):
    # a small array of non-native byte order in an object: the small-object path
    # pickled at protocol 4, where numpy converts it to native order (values right,
    # dtype and bytes not mpi4py's); isend, bcast and allgather took it
    small = {"f": np.arange(3, dtype=">f8"), "i": np.arange(3, dtype=">i4")}
    if comm.rank == 0:
        comm.send(small, dest=1, tag=1)
        comm.isend(small, dest=1, tag=2).wait()
        comm.issend(small, dest=1, tag=3).wait()
        got = [comm.bcast(small, root=0), comm.allgather(small)[1]]
    else:
        got = [comm.recv(source=0, tag=t) for t in (1, 2, 3)]
        got += [comm.bcast(None, root=0), comm.allgather(small)[0]]
    return [(g["f"].dtype.str, g["i"].dtype.str, g["f"].tolist()) for g in got]


def test_objects_keep_a_non_native_byte_order():
    for rank_got in values(run_ranks(_byte_order, 2)):
        assert rank_got == [(">f8", ">i4", [0.0, 1.0, 2.0])] * len(rank_got), rank_got


def _ring_full(comm, count):
    # many eager messages overflow the ring: the sender queues and retries while the
    # receiver is busy elsewhere; nothing is lost or reordered
    if comm.rank == 0:
        reqs = [comm.Isend(np.full(30_000, i, np.int64), 1, 5) for i in range(count)]
        MPI.Request.Waitall(reqs)
        comm.Send(np.zeros(1), 1, 6)
        return None
    time.sleep(0.3)
    out = []
    b = np.zeros(30_000, np.int64)
    for _ in range(count):
        comm.Recv(b, 0, 5)
        out.append(int(b[0]) if (b == b[0]).all() else -1)
    comm.Recv(np.zeros(1), 0, 6)
    return out


def test_full_ring_queues_sends_in_order():
    assert values(run_ranks(_ring_full, 2, 40))[1] == list(range(40))


def test_spawn_reexport_runs_ranks():
    assert "spawn" in mmpi.__all__
    assert mmpi.spawn(lambda comm: (comm.rank, comm.size), 2) == [(0, 2), (1, 2)]


ENV_PROG = """
import sys, numpy as np
from driller import MPI
c = MPI.COMM_WORLD
b = np.zeros(3)
if c.rank == 0:
    c.Send(np.arange(3.0), 1, 4)
else:
    c.Recv(b, 0, 4)
c.Barrier()
print(c.rank, c.size, b.tolist(), MPI.Is_initialized())
"""


def test_comm_world_from_launcher_environment():
    import subprocess
    import sys
    fd = _world.create_world(2)
    try:
        procs = []
        for r in range(2):
            env = dict(os.environ, DRILLER_MMPI_RANK=str(r), DRILLER_MMPI_SIZE="2",
                       DRILLER_MMPI_WORLD_FD=str(fd))
            procs.append(subprocess.Popen([sys.executable, "-c", ENV_PROG], env=env,
                                          pass_fds=(fd,), stdout=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=DEADLINE)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
    finally:
        os.close(fd)
    assert outs == ["0 2 [0.0, 0.0, 0.0] True", "1 2 [0.0, 1.0, 2.0] True"]


def _persistent_cancel(comm):
    r = comm.Recv_init(np.zeros(2), 0, 3)
    r.Start()
    r.Cancel()
    st = MPI.Status()
    r.Wait(st)
    first = st.Is_cancelled()
    if comm.rank == 1:
        r.Start()
        r.Wait(st)
    else:
        comm.Send(np.ones(2), 1, 3)
    r.Free()
    try:
        r.Start()
        freed = False
    except MmpiError:
        freed = True
    return first, st.Is_cancelled(), freed


def test_persistent_receive_cancel_restart_free():
    res = values(run_ranks(_persistent_cancel, 2))
    assert res[1] == (True, False, True) and res[0][0] is True


def _test_family(comm):
    if comm.rank == 0:
        comm.Recv(np.zeros(1), 1, 9)          # go: rank 1 has posted and probed
        comm.Send(np.array([5.0]), 1, 1)
        comm.Send(np.array([6.0]), 1, 2)
        return None
    nothing = comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    a, b = np.zeros(1), np.zeros(1)
    reqs = [comm.Irecv(a, 0, 1), comm.Irecv(b, 0, 2)]
    early = MPI.Request.Testany(reqs)
    early_status = reqs[0].Get_status()
    comm.Send(np.zeros(1), 0, 9)
    done = []
    while len(done) < 2:
        done += MPI.Request.Testsome(reqs) or []
    return nothing, early, early_status, sorted(done), float(a[0] + b[0]), MPI.Request.Testany(reqs)


def test_testany_testsome_get_status():
    nothing, early, early_status, done, total, after = values(run_ranks(_test_family, 2))[1]
    assert nothing is False and early == (MPI.UNDEFINED, False) and early_status is False
    assert done == [0, 1] and total == 11.0 and after == (MPI.UNDEFINED, True)


# ------------------------------------------------------------------ two-copy fallback

def _pushed_bytes(comm, sizes):
    """Large buffers and objects from rank 0; what rank 1 got and how."""
    t = comm._t
    if comm.rank == 0:
        for n in sizes:
            comm.Send(np.arange(n, dtype=np.uint8) ^ 0x3C, 1, 1)
        comm.send({"a": np.arange(1 << 20, dtype=np.float64), "b": b"x" * (3 << 20),
                   "s": "y" * 300_000}, 1, 2)
        comm.Barrier()
        return t.stats_pushed
    ok = []
    for n in sizes:
        b = np.zeros(n, np.uint8)
        comm.Recv(b, 0, 1)
        ok.append(bool((b == (np.arange(n, dtype=np.uint8) ^ 0x3C)).all()))
    o = comm.recv(source=0, tag=2)
    ok.append(bool((o["a"] == np.arange(1 << 20)).all()) and o["b"] == b"x" * (3 << 20)
              and o["s"] == "y" * 300_000)
    comm.Barrier()
    return ok, t.stats_pushed, sorted(t.no_pull), t.single_copy


def test_fallback_mode_really_pushes(copy_mode, rendezvous_above_256k):
    sizes = [262145, 1 << 20, (5 << 20) + 3]
    res = values(run_ranks(_pushed_bytes, 2, sizes))
    ok, pushed, no_pull, single = res[1]
    assert ok == [True] * 4
    assert res[0] == 0  # nothing came back to rank 0
    if copy_mode == "two-copy":
        assert not single and no_pull == [0]
        # every byte of every rendezvous message went through the ring: the buffers,
        # and the object's two large buffers and its stream (> the eager limit)
        assert 300_000 <= pushed - (sum(sizes) + (8 << 20) + (3 << 20)) < 300_200
    else:
        assert single and no_pull == [] and pushed == 0


def _denied(comm, copy_mode):
    """Rank 0 is non-dumpable and rank 1 has no CAP_SYS_PTRACE (as in a container
    without it): rank 1's process_vm_readv of rank 0 fails with EPERM.  Rank 1
    must still get every message (the first one included: it was in flight when
    the denial was found), with the single-copy path's statuses and errors, and
    warn exactly once; rank 0 still reads rank 1 with one copy (per pair)."""
    import errno
    import warnings

    from driller import _linux
    t = comm._t
    big = (3 << 20) + 5
    if comm.rank == 0:
        _linux.set_dumpable(False)
        comm.Barrier()
        comm.Send(np.arange(big, dtype=np.uint8), 1, 1)              # discovers the denial
        comm.Ssend(np.full(1 << 20, 7, np.uint8), 1, 2)              # Ssend: FIN after the push
        reqs = [comm.Isend(np.full(300_000, i, np.uint8), 1, 3) for i in range(5)]
        comm.send([np.arange(1 << 19, dtype=np.float64)] * 2, 1, 4)  # object, pushed
        comm.Send(np.full(1 << 20, 9, np.uint8), 1, 5)               # truncated at the receiver
        MPI.Request.Waitall(reqs)
        req = comm.Issend(np.full(1 << 20, 4, np.uint8), 1, 7)      # not before the match
        early = req.Test()
        comm.Barrier()
        req.Wait()
        b = np.zeros(2 << 20, np.uint8)
        comm.Recv(b, 1, 6)                                           # the other direction
        return bool((b == 5).all()) and not early, t.stats_pushed, sorted(t.no_pull)
    if _linux.has_capability(_linux.CAP_SYS_PTRACE):
        _linux.drop_capability(_linux.CAP_SYS_PTRACE)
    comm.Barrier()
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the denial is real: a direct read of rank 0 fails with EPERM
        probe = np.zeros(8, np.uint8)
        try:
            _linux.process_vm_readv(t.pid_of(0), probe.ctypes.data, t.base, 8)
            out["probe"] = "allowed"
        except OSError as e:
            out["probe"] = errno.errorcode[e.errno]
        st = MPI.Status()
        comm.Probe(0, 1, st)
        out["probe_count"] = st.Get_count(MPI.BYTE)
        b = np.zeros(big, np.uint8)
        comm.Recv(b, 0, 1, st)
        out["first"] = bool((b == np.arange(big, dtype=np.uint8)).all()), st.Get_count(MPI.BYTE)
        b = np.zeros(1 << 20, np.uint8)
        comm.Recv(b, 0, 2)
        out["ssend"] = bool((b == 7).all())
        got = []
        for _ in range(5):  # non-overtaking per (source, tag)
            b = np.zeros(300_000, np.uint8)
            comm.Recv(b, 0, 3)
            got.append(int(b[0]) if (b == b[0]).all() else -1)
        out["order"] = got
        o = comm.recv(source=0, tag=4)
        out["obj"] = all(bool((x == np.arange(1 << 19)).all()) for x in o)
        small = np.zeros(1 << 19, np.uint8)
        try:
            comm.Recv(small, 0, 5)
            out["trunc"] = "no error"
        except TruncationError as e:
            out["trunc"] = (str(e), bool((small == 9).all()))
        comm.Barrier()
        b = np.zeros(1 << 20, np.uint8)
        comm.Recv(b, 0, 7)
        out["issend"] = bool((b == 4).all())
        comm.Send(np.full(2 << 20, 5, np.uint8), 0, 6)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    out["warnings"] = msgs
    out["pushed"] = t.stats_pushed
    out["no_pull"] = sorted(t.no_pull)
    return out


def test_denied_single_copy_falls_back_with_one_warning(copy_mode, rendezvous_above_256k):
    res = values(run_ranks(_denied, 2, copy_mode))
    other_ok, pushed0, no_pull0 = res[0]
    out = res[1]
    assert out["probe"] == "EPERM"
    assert out["probe_count"] == (3 << 20) + 5
    assert out["first"] == (True, (3 << 20) + 5)
    assert out["ssend"] and out["order"] == [0, 1, 2, 3, 4] and out["obj"] and out["issend"]
    text, head_ok = out["trunc"]
    assert "1048576 bytes" in text and "524288-byte" in text and head_ok
    assert other_ok
    assert out["no_pull"] == [0]
    # (the object holds one array twice: pickled out of band once, 4 MiB)
    assert out["pushed"] == ((3 << 20) + 5 + (1 << 20) + 5 * 300_000 + (4 << 20) + (1 << 19)
                             + (1 << 20))
    if copy_mode == "single-copy":
        # found by the failed read: one warning naming the cause and the fixes
        assert len(out["warnings"]) == 1, out["warnings"]
        w = out["warnings"][0]
        assert "Operation not permitted" in w and "CAP_SYS_PTRACE" in w
        assert "kernel.yama.ptrace_scope" in w and "--cap-add=SYS_PTRACE" in w
        assert "non-dumpable" in w and "DRILLER_MMPI_SINGLE_COPY=0" in w
        assert pushed0 == 0 and no_pull0 == []  # rank 0 reads rank 1 with one copy
    else:
        assert out["warnings"] == []  # forced by the environment: nothing to warn about
        assert pushed0 == 2 << 20 and no_pull0 == [1]


def _sender_dies_mid_push(comm):
    if comm.rank == 1:
        req = comm.Isend(np.ones(16 << 20, np.uint8), 0, 0)  # noqa: F841 - never progressed
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    b = np.zeros(16 << 20, np.uint8)
    comm.Recv(b, 1, 0)
    return bool((b == 1).all())


def test_sender_death_during_a_pushed_transfer(copy_mode, monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")  # a rendezvous (test_mmpi_stream: streamed)
    res = run_ranks(_sender_dies_mid_push, 2)
    ok, v = res[0]
    if copy_mode == "two-copy":  # the receiver waits for pushed data that never comes
        assert not ok and v[0] == "PeerDiedError" and v[2] == 1, v
    else:  # one copy: read from the (sleeping) sender's memory before it dies
        assert ok and v is True


def _split_write_denied(comm):
    """Split rendezvous (the receiver reads the first half, the sender writes the
    second with process_vm_writev): rank 1, the receiver, is non-dumpable and
    rank 0 has no CAP_SYS_PTRACE, so the sender's write is denied (EPERM) while
    the receiver's read is allowed: the sender pushes its half instead."""
    import warnings

    from driller import _linux
    n = (4 << 20) + 77
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if comm.rank == 1:
            _linux.set_dumpable(False)
            comm.Barrier()
            b = np.zeros(n, np.uint8)
            comm.Recv(b, 0, 1)
            ok = bool((b == (np.arange(n) % 251).astype(np.uint8)).all())
            b[:] = 0
            comm.Recv(b, 0, 2)
            ok = ok and bool((b == 3).all())
            comm.Barrier()
        else:
            if _linux.has_capability(_linux.CAP_SYS_PTRACE):
                _linux.drop_capability(_linux.CAP_SYS_PTRACE)
            comm.Barrier()
            comm.Send((np.arange(n) % 251).astype(np.uint8), 1, 1)
            comm.Send(np.full(n, 3, np.uint8), 1, 2)
            comm.Barrier()
            ok = True
    return ok, comm._t.stats_pushed, len([w for w in caught
                                          if issubclass(w.category, RuntimeWarning)])


def test_split_rendezvous_pushes_a_denied_half(copy_mode, monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_SPLIT_MIN", str(1 << 20))
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")  # a rendezvous, not streamed
    (ok0, pushed0, warned0), (ok1, pushed1, warned1) = values(run_ranks(_split_write_denied, 2))
    n = (4 << 20) + 77
    assert ok0 and ok1
    assert pushed0 == 0
    if copy_mode == "single-copy":
        half = (n // 2) & ~4095
        assert pushed1 == 2 * (n - half)  # the sender's halves came through the ring
        assert warned0 == 1 and warned1 == 0
    else:
        assert pushed1 == 2 * n and warned0 == warned1 == 0


def _receiver_dies_mid_push(comm):
    n = 64 << 20
    if comm.rank == 1:
        r = comm.Irecv(np.zeros(n, np.uint8), 0, 0)
        comm.Barrier()
        # take part of the message (two-copy: some pushed chunks; one copy: all of it)
        while not r.Test() and comm._t.stats_pushed == 0:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Barrier()
    comm.Send(np.ones(n, np.uint8), 1, 0)  # two-copy: blocks on a full ring, then FIN
    return "completed"


def test_receiver_death_during_a_pushed_transfer(copy_mode):
    res = run_ranks(_receiver_dies_mid_push, 2)
    assert res[1][0] is False and res[1][1][0] == "Killed"
    ok, v = res[0]
    if copy_mode == "two-copy":  # the sender waits for ring space that never comes
        assert not ok and v[0] == "PeerDiedError" and v[2] == 1, v
        assert "SIGKILL" in v[1] or "is gone" in v[1]
    else:  # the receiver copied it all and answered FIN before dying
        assert ok and v == "completed", v


def _seccomp_denied(comm, err):
    """Rank 1 runs under a seccomp filter that fails process_vm_readv/writev with
    ``err`` (ENOSYS: a kernel or sandbox without them; EPERM: Docker's default
    profile without CAP_SYS_PTRACE)."""
    import warnings

    from driller import _linux
    n = (2 << 20) + 3
    if comm.rank == 0:
        comm.Barrier()
        comm.Send(np.arange(n, dtype=np.uint8), 1, 1)
        comm.send({"x": np.arange(1 << 19, dtype=np.float64)}, 1, 2)
        b = np.zeros(n, np.uint8)
        comm.Recv(b, 1, 3)
        return bool((b == 8).all()), comm._t.stats_pushed
    _linux.deny_syscalls(["process_vm_readv", "process_vm_writev"], err)
    comm.Barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = np.zeros(n, np.uint8)
        comm.Recv(b, 0, 1)
        ok = bool((b == np.arange(n, dtype=np.uint8)).all())
        o = comm.recv(source=0, tag=2)
        ok = ok and bool((o["x"] == np.arange(1 << 19)).all())
        comm.Send(np.full(n, 8, np.uint8), 0, 3)
    return ok, comm._t.stats_pushed, [str(w.message) for w in caught
                                      if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_seccomp_denied_single_copy_falls_back(copy_mode, err, monkeypatch):
    import errno
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")  # the buffer message by rendezvous
    (ok0, pushed0), (ok1, pushed1, warned) = values(
        run_ranks(_seccomp_denied, 2, getattr(errno, err)))
    n = (2 << 20) + 3
    assert ok0 and ok1
    assert pushed1 == n + (4 << 20)
    if copy_mode == "single-copy":
        assert pushed0 == 0  # rank 0 may still read rank 1
        assert len(warned) == 1, warned
        if err == "ENOSYS":
            assert "not available" in warned[0] and "seccomp" in warned[0]
        else:
            assert "Operation not permitted" in warned[0] and "seccomp filter" in warned[0]
    else:
        assert pushed0 == n and warned == []


# ---------------------------------------------------------------- one buffer-spec parser

def test_buffer_specs_count_elements_the_same_everywhere():
    """``_bufspec`` is the one parser: counts and displacements are in ELEMENTS of
    the datatype (inferred from the buffer's format when absent), as mpi4py's."""
    from driller.mmpi._bufspec import message, parse
    a = np.arange(8, dtype=np.float64)
    i = np.arange(8, dtype=np.int32)
    cases = [
        (a, 64, 0), ([a, 3], 24, 0), ([a, MPI.DOUBLE], 64, 0), ([a, 3, MPI.DOUBLE], 24, 0),
        ([a, (2, 5), MPI.DOUBLE], 16, 40), ([a, 2, 5, MPI.DOUBLE], 16, 40), ([a, 3, "d"], 24, 0),
        ([a, MPI.INT], 64, 0), ([a, 5, MPI.INT], 20, 0), ([i, 3], 12, 0), ([i, (3, 1)], 12, 4),
        ([bytearray(10), 3], 3, 0), ([a, None], 64, 0),
    ]
    for spec, nbytes, offset in cases:
        mv = message(spec, False, "Send")
        assert len(mv) == nbytes, (spec, len(mv))
        base = spec[0] if isinstance(spec, list) else spec
        if isinstance(base, np.ndarray):   # a view in place, from the right element
            assert np.frombuffer(mv, np.uint8).ctypes.data == base.ctypes.data + offset, spec
        assert bytes(mv) == bytes(parse(spec, False, "Bcast").mv)   # the collectives agree
    for bad, text in [([a, 9], "overruns"), ([a, 3, "nope"], "invalid datatype"),
                      ([a, 2, 7, MPI.DOUBLE], "overruns"), ([a, -1], "invalid count"),
                      ([bytearray(10), MPI.DOUBLE], "not a whole number")]:
        with pytest.raises(MmpiError, match=text):
            message(bad, False, "Send")


def _spec_counts(comm):
    out = {}
    a = np.arange(8, dtype=np.float64)
    if comm.rank == 0:
        comm.Send([a, 3], 1, 1)
        comm.Send([a, (2, 5), MPI.DOUBLE], 1, 2)
        comm.Send([np.arange(8, dtype=np.int32), 3], 1, 3)
    else:
        st = MPI.Status()
        b = np.full(8, -1.0)
        comm.Recv([b, 3], 0, 1, st)
        out["send"] = b.tolist(), st.Get_count(MPI.DOUBLE), st.Get_count(MPI.BYTE)
        b = np.full(8, -1.0)
        comm.Recv([b, (2, 1), MPI.DOUBLE], 0, 2, st)
        out["displ"] = b.tolist(), st.Get_count(MPI.DOUBLE)
        c = np.full(8, -1, np.int32)
        comm.Recv([c, 3], 0, 3, st)
        out["int"] = c.tolist(), st.Get_count(MPI.INT)
    b = a.copy() if comm.rank == 0 else np.full(8, -1.0)
    comm.Bcast([b, 3], root=0)
    out["bcast"] = b.tolist()
    return out


def test_send_and_bcast_of_buf_count_both_move_count_elements(copy_mode):
    """``Send([a, 3])`` and ``Bcast([a, 3])`` both move 3 elements of a's dtype
    (they disagreed once: 3 bytes for Send, 3 elements for Bcast)."""
    res = values(run_ranks(_spec_counts, 2))
    got = res[1]
    assert got["send"] == ([0.0, 1.0, 2.0] + [-1.0] * 5, 3, 24)
    assert got["displ"] == ([-1.0, 5.0, 6.0] + [-1.0] * 5, 2)
    assert got["int"] == ([0, 1, 2] + [-1] * 5, 3)
    assert got["bcast"] == [0.0, 1.0, 2.0] + [-1.0] * 5
    assert res[0]["bcast"] == list(np.arange(8.0))


def test_wait_statuses_are_described_in_one_wording():
    """The launcher (waitid results) and the transport (waitpid status words, as the
    launcher records deaths in the world block) word a death the same way."""
    from driller.mmpi._procs import describe_status, describe_wait_status
    for how, want in [(lambda: os._exit(3), "exited with code 3"),
                      (lambda: os.kill(os.getpid(), signal.SIGKILL), "was killed by signal SIGKILL")]:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            how()
            os._exit(99)
        res = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        _, status = os.waitpid(pid, 0)
        assert describe_status(res.si_code, res.si_status) == want
        assert describe_wait_status(status) == want


def test_progress_hooks_run_inside_progress_until_removed():
    """The transport's progress-hook interface (what nonblocking collectives use)."""
    from driller.mmpi import _transport as T
    fd = _world.create_world(2)
    try:
        t0, t1 = T.Transport(_world.World(fd), 0), T.Transport(_world.World(fd), 1)
    finally:
        os.close(fd)
    calls = []

    def hook():
        calls.append(1)
        t0.progress()          # re-entering progress does not run the hooks again
        return len(calls) == 1

    assert "progress" not in vars(t0)   # no hook: the plain method, nothing to pay
    t0.add_progress_hook(hook)
    assert t0.progress() is True and calls == [1]      # the hook reported movement
    assert t0.progress() is False and calls == [1, 1]
    # a hook also runs while waiting: a receive completed by the hook itself
    r = T.RecvOp(1, 5, 0, memoryview(bytearray(3)))
    t0.irecv(r)
    sent = []

    def sender():
        if not sent:
            sent.append(t1.send_fast(0, 0, 5, b"abc"))
        return False

    t0.add_progress_hook(sender)
    t0.wait(r, 1)
    assert r.done and bytes(r.mv) == b"abc" and sent == [True]
    t0.remove_progress_hook(sender)
    t0.remove_progress_hook(hook)
    n = len(calls)
    t0.progress()
    assert len(calls) == n and "progress" not in vars(t0)
    t0.remove_progress_hook(hook)       # not registered any more: no error
