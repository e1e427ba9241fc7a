"""Point-to-point completeness: matched probes (Message), Cancel, buffered sends,
request collections, generalized requests, statuses -- with real ranks, and the
engine's matched-probe support in one process."""

from __future__ import annotations

import pickle
import threading
import warnings

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _engine as E

from test_mmpi_p2p import run_ranks, values


# ------------------------------------------------------------------ engine (pure)

def test_engine_mprobe_takes_the_message_out_of_matching():
    eng = E.Engine()
    m1 = E.Message(1, 5, 0, 8)
    m2 = E.Message(2, 5, 0, 8)
    eng.arrive(m1)
    eng.arrive(m2)
    assert eng.mprobe(E.ANY_SOURCE, 5, 0) is m1
    # neither a probe nor a posted receive can see it any more
    assert eng.probe(1, 5, 0) is None
    r = E.Receive(E.ANY_SOURCE, E.ANY_TAG, 0, 8)
    acts = eng.post(r)
    assert r.message is m2 and type(acts[0]) is E.Deliver
    # only the receive started on the handle gets it
    r1 = E.Receive(1, 5, 0, 8)
    acts = eng.post_matched(r1, m1)
    assert r1.message is m1 and r1.state == E.R_DONE
    assert [type(a) for a in acts] == [E.Deliver, E.Complete]
    assert eng.mprobe(E.ANY_SOURCE, E.ANY_TAG, 0) is None


def test_engine_post_matched_refuses_a_message_still_in_matching_and_old_receives():
    eng = E.Engine()
    m = E.Message(1, 5, 0, 8)
    eng.arrive(m)
    with pytest.raises(ValueError, match="not taken by mprobe"):
        eng.post_matched(E.Receive(1, 5, 0, 8), m)
    taken = eng.mprobe(1, 5, 0)
    r = E.Receive(1, 5, 0, 8)
    eng.post_matched(r, taken)
    with pytest.raises(ValueError, match="already started"):
        eng.post_matched(r, taken)


def test_engine_mprobe_of_sync_and_rendezvous_messages():
    eng = E.Engine()
    sync = E.Message(3, 1, 0, 4, E.EAGER, True, sender_id=11)
    big = E.Message(3, 2, 0, 1 << 20, E.RNDV, False, sender_id=12)
    eng.arrive(sync)
    eng.arrive(big)
    r = E.Receive(3, 1, 0, 4)
    acts = eng.post_matched(r, eng.mprobe(3, 1, 0))
    assert E.Reply(E.ACK, 3, 11) in acts
    r2 = E.Receive(3, 2, 0, None)
    acts = eng.post_matched(r2, eng.mprobe(3, E.ANY_TAG, 0))
    assert [type(a) for a in acts] == [E.Fetch]
    assert eng.fetched(r2)[0] == E.Reply(E.FIN, 3, 12)


# ------------------------------------------------------------------ matched probes

def _mprobe_race(comm, per):
    """Ranks 1.. send ``per`` messages each to rank 0; rank 0 takes them with
    matched probes (ANY_SOURCE) while plain receives compete for the rest."""
    if comm.rank != 0:
        for i in range(per):
            comm.send((comm.rank, i), 0, 7)
        comm.Send(np.full(4, comm.rank, np.int32), 0, 8)
        return None
    total = per * (comm.size - 1)
    got = []
    held = []
    while len(got) + len(held) < total:
        st = MPI.Status()
        m = comm.mprobe(MPI.ANY_SOURCE, 7, st)
        assert m and st.tag == 7 and st.source in range(1, comm.size)
        held.append((st.source, m))
        # a plain receive now never gets a message a Message holds
        if len(got) + len(held) < total:
            got.append(comm.recv(source=MPI.ANY_SOURCE, tag=7))
    # probes do not see held messages either
    assert not comm.iprobe(MPI.ANY_SOURCE, 7)
    for src, m in held:
        obj = m.recv()
        assert obj[0] == src
        assert not m  # received: MESSAGE_NULL now
        got.append(obj)
    assert sorted(got) == sorted((r, i) for r in range(1, comm.size) for i in range(per))
    # buffers too, with Improbe and Irecv on the handle
    seen = set()
    for _ in range(comm.size - 1):
        m = None
        while m is None:
            m = comm.Improbe(MPI.ANY_SOURCE, 8)
        buf = np.zeros(4, np.int32)
        st = MPI.Status()
        m.Irecv(buf).Wait(st)
        assert st.Get_count(MPI.INT) == 4 and (buf == st.source).all()
        seen.add(st.source)
    assert seen == set(range(1, comm.size))
    return len(got)


@pytest.mark.parametrize("n", [2, 3])
def test_mprobe_any_source_never_gives_one_message_twice(n):
    per = 40
    assert values(run_ranks(_mprobe_race, n, per))[0] == per * (n - 1)


def _message_handles(comm):
    out = {}
    st = MPI.Status()
    m = comm.Mprobe(MPI.PROC_NULL, 3, st)
    out["noproc"] = (m == MPI.MESSAGE_NO_PROC, st.source, st.tag, st.Get_count())
    out["noproc_recv"] = m.recv()
    out["null_after"] = m == MPI.MESSAGE_NULL
    out["pickle_null"] = pickle.loads(pickle.dumps(MPI.MESSAGE_NULL)) is MPI.MESSAGE_NULL
    peer = 1 - comm.rank
    big = np.arange(200_000, dtype=np.float64)  # rendezvous: fetched on Recv
    comm.Isend(big * (comm.rank + 1), peer, 4).Wait() if comm.rank else None
    if comm.rank == 0:
        m = MPI.Message.Probe(comm, 1, 4, st)
        try:
            pickle.dumps(m)
        except ValueError:
            out["pickle_live"] = "refused"
        buf = np.empty_like(big)
        m.Recv(buf)
        out["big_ok"] = bool((buf == big * 2).all())
        try:
            m.Recv(buf)
        except MmpiError as e:
            out["twice"] = e.Get_error_class() == MPI.ERR_REQUEST
    return out


def test_message_handles_noproc_rendezvous_and_reuse():
    out = values(run_ranks(_message_handles, 2))[0]
    assert out["noproc"] == (True, MPI.PROC_NULL, MPI.ANY_TAG, 0)
    assert out["noproc_recv"] is None and out["null_after"] and out["pickle_null"]
    assert out["pickle_live"] == "refused"
    assert out["big_ok"] and out["twice"]


# ------------------------------------------------------------------ cancel

def _cancel(comm):
    out = {}
    st = MPI.Status()
    r = comm.Irecv(np.zeros(3), MPI.ANY_SOURCE, 99)
    r.Cancel()
    r.Wait(st)
    out["recv"] = st.Is_cancelled()
    s = comm.Issend(b"abc", comm.rank, 5)
    s.Cancel()
    out["get_status"] = s.Get_status(st)
    out["send"] = st.Is_cancelled()
    s.Free()
    out["gone"] = not comm.Iprobe(comm.rank, 5)  # the withdrawn message never arrives
    # a send already matched cannot be cancelled: it completes normally
    s = comm.Issend(b"xyz", comm.rank, 6)
    buf = bytearray(3)
    comm.Recv(buf, comm.rank, 6)
    s.Cancel()
    s.Wait(st)
    out["late"] = (st.Is_cancelled(), bytes(buf))
    comm.Barrier()
    return out


def test_cancel_of_unmatched_receives_and_sends_to_self():
    for out in values(run_ranks(_cancel, 2)):
        assert out == {"recv": True, "get_status": True, "send": True, "gone": True,
                       "late": (False, b"xyz")}


# ------------------------------------------------------------------ buffered sends

def _bsend(comm):
    out = {}
    peer = 1 - comm.rank
    n = 1 << 20  # rendezvous: the block stays taken until the peer fetched it
    if comm.rank == 0:
        try:
            comm.Bsend(np.zeros(4), 1, 0)
        except MmpiError as e:
            out["no_buffer"] = e.Get_error_class()
        mem = bytearray(n + MPI.BSEND_OVERHEAD)
        MPI.Attach_buffer(mem)
        data = np.full(n, 7, np.uint8)
        comm.Bsend(data, 1, 1)
        data[:] = 9  # the message was copied: this change is not sent
        try:
            comm.Bsend(np.zeros(16, np.uint8), 1, 2)
        except MmpiError as e:
            out["overflow"] = e.Get_error_class()
        comm.Barrier()  # the peer receives tag 1 now
        comm.Barrier()
        comm.Bsend(data, 1, 3)  # the space is free again
        MPI.Flush_buffer()  # until the peer fetched it: the space is free once more
        req = comm.Ibsend(np.arange(5, dtype=np.int64), 1, 4)
        out["ibsend_done"] = req.Test()
        comm.bsend({"k": 1}, 1, 5)
        out["detached"] = MPI.Detach_buffer() is mem
        MPI.Attach_buffer(MPI.BUFFER_AUTOMATIC)
        comm.Bsend(np.ones(3 * n, np.uint8), 1, 6)
        out["auto"] = MPI.Detach_buffer() is MPI.BUFFER_AUTOMATIC
        return out
    comm.Barrier()
    a = np.empty(n, np.uint8)
    comm.Recv(a, 0, 1)
    out["first"] = int(a.min()), int(a.max())
    comm.Barrier()
    comm.Recv(a, 0, 3)
    out["third"] = int(a[0])
    b = np.empty(5, np.int64)
    comm.Recv(b, 0, 4)
    out["ibsend"] = b.tolist()
    out["obj"] = comm.recv(source=0, tag=5)
    big = np.empty(3 * n, np.uint8)
    comm.Recv(big, 0, 6)
    out["auto"] = int(big.sum()) == 3 * n
    del peer
    return out


def test_bsend_copies_fails_with_err_buffer_and_detach_waits(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_EAGER_LIMIT", str(256 << 10))  # 1 MiB: rendezvous
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", "0")              # (not streamed)
    s, r = values(run_ranks(_bsend, 2))
    assert s == {"no_buffer": MPI.ERR_BUFFER, "overflow": MPI.ERR_BUFFER,
                 "ibsend_done": True, "detached": True, "auto": True}
    assert r == {"first": (7, 7), "third": 9, "ibsend": [0, 1, 2, 3, 4], "obj": {"k": 1},
                 "auto": True}


def test_attach_buffer_rules():
    MPI.Attach_buffer(bytearray(64))
    try:
        with pytest.raises(MmpiError) as ei:
            MPI.Attach_buffer(bytearray(64))
        assert ei.value.Get_error_class() == MPI.ERR_BUFFER
    finally:
        MPI.Detach_buffer()
    with pytest.raises(BufferError):
        MPI.Attach_buffer(b"read-only")
    with pytest.raises(MmpiError):
        MPI.Detach_buffer()


# ------------------------------------------------------------------ collections

def _some_any(comm):
    out = {}
    if comm.rank == 0:
        bufs = [np.zeros(2, np.int64) for _ in range(4)]
        reqs = [comm.Irecv(bufs[i], 1, i) for i in range(4)]
        out["testany_none"] = MPI.Request.Testany(reqs)
        comm.Send(b"go", 1, 100)
        statuses = []
        done = []
        while len(done) < 4:
            sts = []
            idx = MPI.Request.Waitsome(reqs, sts)
            assert len(sts) == len(idx)
            done += idx
            statuses += sts
        out["done"] = sorted(done)
        out["vals"] = [b.tolist() for b in bufs]
        out["tags"] = sorted(s.tag for s in statuses)
        out["after"] = (MPI.Request.Waitsome(reqs), MPI.Request.Testany(reqs))
        # lowercase: objects
        rs = [comm.irecv(source=1, tag=10 + i) for i in range(3)]
        comm.Send(b"go", 1, 101)
        got = {}
        while len(got) < 3:
            i, flag, obj = MPI.Request.testany(rs)
            if flag and i != MPI.UNDEFINED:
                got[i] = obj
        out["objs"] = got
        return out
    go = bytearray(2)
    comm.Recv(go, 0, 100)
    for i in (2, 0, 3, 1):
        comm.Send(np.array([i, i * i], np.int64), 0, i)
    comm.Recv(go, 0, 101)
    for i in (1, 2, 0):
        comm.send(f"o{i}", 0, 10 + i)
    return None


def test_waitsome_testany_with_real_peers():
    out = values(run_ranks(_some_any, 2))[0]
    assert out["testany_none"] == (MPI.UNDEFINED, False)
    assert out["done"] == [0, 1, 2, 3]
    assert out["vals"] == [[i, i * i] for i in range(4)]
    assert out["tags"] == [0, 1, 2, 3]
    assert out["after"] == (None, (MPI.UNDEFINED, True))
    assert out["objs"] == {0: "o0", 1: "o1", 2: "o2"}


def _isendrecv(comm):
    n = comm.size
    a = np.full(100_000, comm.rank, np.int32)
    b = np.empty_like(a)
    st = MPI.Status()
    comm.Isendrecv(a, (comm.rank + 1) % n, 3, b, (comm.rank - 1) % n, 3).Wait(st)
    c = np.full(5, comm.rank, np.int16)
    comm.Isendrecv_replace(c, (comm.rank + 1) % n, 4, (comm.rank - 1) % n, 4).Wait()
    return int(b[0]), int(b[-1]), st.source, int(c[0])


def test_isendrecv_ring():
    for r, (b0, b1, src, c0) in enumerate(values(run_ranks(_isendrecv, 3))):
        assert b0 == b1 == src == c0 == (r - 1) % 3


# ------------------------------------------------------------------ generalized requests

def test_grequest_callbacks_and_completion_from_a_thread():
    calls = []

    def query(status, tag):
        calls.append("query")
        status.Set_source(3)
        status.Set_tag(tag)

    def free(tag):
        calls.append("free")

    def cancel(completed, tag):
        calls.append(("cancel", completed))

    g = MPI.Grequest.Start(query, free, cancel, args=(7,))
    assert not g.Test() and g
    g.Cancel()
    t = threading.Timer(0.05, g.Complete)
    t.start()
    st = MPI.Status()
    g.Wait(st)  # returns once the thread completed it
    t.join()
    assert (st.source, st.tag, st.error) == (3, 7, MPI.SUCCESS)
    assert calls == [("cancel", False), "query", "free"]
    assert not g and g == MPI.REQUEST_NULL

    g = MPI.Grequest.Start()
    g.complete("result")
    assert MPI.Request.waitany([MPI.REQUEST_NULL, g]) == (1, "result")

    def bad(status):
        raise ValueError("boom")

    g = MPI.Grequest.Start(bad)
    g.Complete()
    with pytest.raises(MmpiError) as ei:
        g.Wait()
    assert ei.value.Get_error_class() == MPI.ERR_OTHER

    with pytest.raises(TypeError):
        MPI.Prequest(MPI.Grequest.Start())


# ------------------------------------------------------------------ statuses

def _statuses(comm):
    out = {}
    st = MPI.Status()
    comm.Recv(bytearray(4), MPI.PROC_NULL, 5, st)
    out["procnull_recv"] = (st.source, st.tag, st.error, st.Get_count(), st.Is_cancelled())
    st2 = MPI.Status()
    comm.Irecv(bytearray(4), MPI.PROC_NULL).Wait(st2)
    out["procnull_irecv"] = (st2.source, st2.tag, st2.Get_count())
    out["procnull_obj"] = comm.recv(None, MPI.PROC_NULL)
    out["sendrecv_null"] = comm.sendrecv("x", MPI.PROC_NULL, 0, None, MPI.PROC_NULL, 0)
    req = comm.isend("x", MPI.PROC_NULL)
    out["isend_null"] = (bool(req), req.Wait(), bool(req))
    if comm.rank == 0:
        comm.Send(np.arange(5, dtype=np.int32), 1, 9)
        comm.Send(b"", 1, 10)
    else:
        comm.Probe(0, 9, st)
        out["probe"] = (st.source, st.tag, st.Get_count(MPI.INT), st.Get_count(MPI.DOUBLE))
        comm.Recv(np.empty(8, np.int32), 0, 9, st)
        out["recv"] = (st.Get_count(MPI.INT), st.Get_elements(MPI.BYTE))
        comm.Recv(None, 0, 10, st)
        out["zero"] = (st.source, st.tag, st.Get_count())
    return out


def test_statuses_of_proc_null_probes_and_zero_size():
    a, b = values(run_ranks(_statuses, 2))
    for out in (a, b):
        assert out["procnull_recv"] == (MPI.PROC_NULL, MPI.ANY_TAG, 0, 0, False)
        assert out["procnull_irecv"] == (MPI.PROC_NULL, MPI.ANY_TAG, 0)
        assert out["procnull_obj"] is None and out["sendrecv_null"] is None
        assert out["isend_null"] == (True, True, False)
    assert b["probe"] == (0, 9, 5, MPI.UNDEFINED)
    assert b["recv"] == (5, 20)
    assert b["zero"] == (0, 10, 0)


def test_status_object_model():
    s = MPI.Status()
    assert (s.source, s.tag, s.error, s.count, s.cancelled) == (MPI.ANY_SOURCE, MPI.ANY_TAG,
                                                               0, 0, False)
    s.Set_elements(MPI.INT, 3)
    assert s.Get_count(MPI.BYTE) == 12 and s.Get_count(MPI.INT) == 3
    assert s.Get_count(MPI.DOUBLE) == MPI.UNDEFINED
    s.Set_cancelled(True)
    s.source, s.tag, s.error = 4, 5, MPI.ERR_ARG
    c = MPI.Status(s)
    assert c == s and c is not s and c.Is_cancelled() and c.Get_count(MPI.INT) == 3
    p = pickle.loads(pickle.dumps(s))
    assert p == s and p.tag == 5
    mem = s.tomemory()
    mem[list(mem).index(5)] = 55
    assert s.tag == 55 and s != c
    with pytest.raises(TypeError):
        MPI.Status(3)


def test_request_handles_equality_and_pickling():
    assert pickle.loads(pickle.dumps(MPI.REQUEST_NULL)) is MPI.REQUEST_NULL
    comm = MPI.COMM_SELF
    preq = comm.Send_init(b"", MPI.PROC_NULL, 0)
    assert MPI.Prequest(preq) == preq and MPI.Request(preq) == preq
    assert MPI.Prequest.fromhandle(preq.handle) == preq
    with pytest.raises(TypeError):
        MPI.Grequest(preq)
    req = comm.Isend(b"x", 0, 0)
    with pytest.raises(ValueError):
        pickle.dumps(req)
    comm.Recv(bytearray(1), 0, 0)
    req.Wait()
    preq.Free()
    assert preq == MPI.REQUEST_NULL


def test_recv_with_buf_warns_and_checks_the_size():
    comm = MPI.COMM_SELF
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            comm.recv(bytearray(0), MPI.PROC_NULL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comm.isend("x" * 100, 0, 1)
        with pytest.raises(MmpiError) as ei:
            comm.recv(8, 0, 1)
        assert ei.value.Get_error_class() == MPI.ERR_TRUNCATE
        comm.isend([42], 0, 2)
        assert comm.recv(bytearray(128), 0, 2) == [42]


def test_raw_buffer_received_as_object_is_unpickled_as_mpi4py():
    comm = MPI.COMM_SELF
    r = comm.Isend([None, 0, "B"], 0)
    assert comm.recv(None, 0) is None
    r.Wait()
    r = comm.Isend(pickle.dumps({"a": 1}), 0)
    assert comm.recv(None, 0) == {"a": 1}
    r.Wait()


def _bsend_shared(comm):
    from driller.sharedarray import SharedArray  # noqa: F401 - the class must exist
    import driller
    if comm.rank == 0:
        a = driller.zeros(4, np.int64)
        a[:] = 5
        MPI.Attach_buffer(bytearray(1 << 16))
        comm.bsend({"a": a}, 1, 1)
        a[:] = 6  # after the buffered send: the message holds the values of the call
        comm.Barrier()
        MPI.Detach_buffer()
        return None
    comm.Barrier()
    return comm.recv(source=0, tag=1)["a"].tolist()


def test_bsend_of_a_shared_array_is_a_copy():
    assert values(run_ranks(_bsend_shared, 2))[1] == [5, 5, 5, 5]


def _inter_mprobe(comm):
    color = comm.rank % 2
    local = comm.Split(color, comm.rank)
    inter = local.Create_intercomm(0, comm, 1 - color, 5)
    st = MPI.Status()
    if color == 0:
        inter.send(("from", local.rank), 0, 3)  # to remote rank 0
        return None
    if local.rank != 0:
        return None
    got = []
    for _ in range(inter.Get_remote_size()):
        m = inter.mprobe(MPI.ANY_SOURCE, 3, st)
        got.append((st.source, m.recv()))
    return sorted(got)


def test_mprobe_on_an_intercommunicator_gives_remote_ranks():
    out = values(run_ranks(_inter_mprobe, 4))
    assert out[1] == [(0, ("from", 0)), (1, ("from", 1))]
