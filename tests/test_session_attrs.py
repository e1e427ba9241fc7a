"""Sessions, window and datatype attributes, and null-handle errors, as mpi4py 4.1.2's
test_session / test_attributes / test_exceptions / test_errhandler expect them (issue 9),
with real forked ranks (``mmpi.spawn``)."""

from __future__ import annotations

import pickle

import pytest

from driller import MPI, mmpi


def _cls(e) -> int:
    return e.Get_error_class()


# ----------------------------------------------------------------- sessions

def test_session_psets_groups_and_a_communicator_from_them():
    def fn(comm):
        me, n = comm.rank, comm.size
        s = MPI.Session.Init()
        assert s and s != MPI.SESSION_NULL and s == MPI.Session(s) and s.handle
        assert MPI.Session.fromhandle(s.handle) == s
        assert s.Get_errhandler() == MPI.ERRORS_RETURN
        names = [s.Get_nth_pset(i) for i in range(s.Get_num_psets())]
        assert names == ["mpi://WORLD", "mpi://SELF"]
        sizes = [s.Get_pset_info(x).Get("mpi_size") for x in names + ["MPI://world"]]
        assert sizes == [str(n), "1", str(n)]
        g = s.Create_group("mpi://WORLD")
        assert (g.Get_size(), g.Get_rank()) == (n, me)
        g2 = MPI.Group.Create_from_session_pset(s, "mpi://SELF")
        assert (g2.Get_size(), g2.Get_rank()) == (1, 0)
        # a communicator from the session's group, without COMM_WORLD: it communicates
        c = MPI.Intracomm.Create_from_group(g, "org.driller.session")
        total = c.allreduce(me + 1)
        assert c.Get_rank() == me
        c.Free()
        for bad in ("bogus", "mpi://NOWHERE"):
            with pytest.raises(MPI.Exception) as ei:
                s.Create_group(bad)
            assert _cls(ei.value) == MPI.ERR_ARG
        for k in (-1, 2):
            with pytest.raises(MPI.Exception) as ei:
                s.Get_nth_pset(k)
            assert _cls(ei.value) == MPI.ERR_ARG
        with pytest.raises(ValueError):
            pickle.dumps(s)
        s.Finalize()
        assert s == MPI.SESSION_NULL and not s
        # null sessions: ERR_SESSION for every call
        for call in (s.Get_num_psets, s.Get_info, s.Get_errhandler, s.Finalize,
                     lambda: s.Create_group("mpi://SELF"),
                     lambda: s.Set_errhandler(MPI.ERRORS_RETURN)):
            with pytest.raises(MPI.Exception) as ei:
                call()
            assert _cls(ei.value) == MPI.ERR_SESSION
        # the group outlives the session
        assert g.Get_size() == n
        return total

    assert mmpi.spawn(fn, 3) == [6, 6, 6]


def test_session_errhandler_is_called_on_a_failing_call():
    def fn(comm):
        calls = []
        s = MPI.Session.Init()
        eh = MPI.Session.Create_errhandler(lambda o, code: calls.append((o is s, code)))
        s.Set_errhandler(eh)
        assert s.Get_errhandler() == eh
        with pytest.raises(MPI.Exception) as ei:
            s.Get_pset_info("nope")
        s.Call_errhandler(MPI.ERR_OTHER)
        s.Set_errhandler(MPI.ERRORS_RETURN)
        with pytest.raises(MPI.Exception):
            s.Get_pset_info("nope")                 # ERRORS_RETURN: no call
        eh.Free()
        s.Finalize()
        return calls == [(True, ei.value.Get_error_code()), (True, MPI.ERR_OTHER)]

    assert mmpi.spawn(fn, 2) == [True, True]


def test_session_buffers_are_not_provided_and_say_so():
    def fn(comm):
        s = MPI.Session.Init()
        with pytest.raises(NotImplementedError, match="Comm.Attach_buffer"):
            s.Attach_buffer(bytearray(100))
        s.Finalize()
        return True

    assert mmpi.spawn(fn, 1) == [True]


# ----------------------------------------------------------------- window attributes

def test_window_keyvals_callbacks_and_predefined_attributes():
    def fn(comm):
        me = comm.rank
        win = MPI.Win.Create(bytearray(8), 1, MPI.INFO_NULL, comm)
        deleted = []
        kv = MPI.Win.Create_keyval(delete_fn=lambda o, k, v: deleted.append((o == win, v)))
        assert win.Get_attr(kv) is None
        win.Set_attr(kv, ["a", me])
        assert win.Get_attr(kv) == ["a", me]
        win.Set_attr(kv, "b")                    # replacing deletes the old value
        win.Delete_attr(kv)
        assert win.Get_attr(kv) is None
        assert deleted == [(True, ["a", me]), (True, "b")]
        # predefined attributes: read, never written
        assert win.Get_attr(MPI.WIN_SIZE) == 8 and win.Get_attr(MPI.WIN_DISP_UNIT) == 1
        assert win.Get_attr(MPI.WIN_CREATE_FLAVOR) == MPI.WIN_FLAVOR_CREATE
        with pytest.raises(MPI.Exception) as ei:
            win.Set_attr(MPI.WIN_SIZE, 1)
        assert _cls(ei.value) == MPI.ERR_KEYVAL
        for bad in (MPI.KEYVAL_INVALID, 987654):
            with pytest.raises(MPI.Exception) as ei:
                win.Get_attr(bad)
            assert _cls(ei.value) == MPI.ERR_KEYVAL
        # a communicator keyval is not a window's
        ckv = MPI.Comm.Create_keyval()
        with pytest.raises(MPI.Exception) as ei:
            win.Set_attr(ckv, 1)
        assert _cls(ei.value) == MPI.ERR_KEYVAL
        MPI.Comm.Free_keyval(ckv)
        # a delete callback that raises: ERR_OTHER, the attribute gone
        bad_kv = MPI.Win.Create_keyval(delete_fn=lambda o, k, v: 1 / 0)
        win.Set_attr(bad_kv, 1)
        with pytest.raises(MPI.Exception) as ei:
            win.Delete_attr(bad_kv)
        assert _cls(ei.value) == MPI.ERR_OTHER and "ZeroDivisionError" in str(ei.value)
        # Free runs the delete callbacks of what is left: a window held as an
        # attribute is freed by its callback (collective over COMM_SELF)
        inner = MPI.Win.Create(MPI.BOTTOM, 1, MPI.INFO_NULL, MPI.COMM_SELF)
        own = MPI.Win.Create_keyval(delete_fn=lambda o, k, v: v.Free())
        win.Set_attr(own, inner)
        win.Set_attr(kv, "last")
        assert MPI.Win.Free_keyval(kv) == MPI.KEYVAL_INVALID   # attributes keep it alive
        win.Free()
        assert inner == MPI.WIN_NULL and win == MPI.WIN_NULL
        assert deleted[-1] == (True, "last")      # called while the window was live
        return len(deleted)

    assert mmpi.spawn(fn, 2) == [3, 3]


def test_window_delete_callback_error_at_free_after_the_collective_part():
    def fn(comm):
        win = MPI.Win.Allocate(16, 1, MPI.INFO_NULL, comm)
        kv = MPI.Win.Create_keyval(delete_fn=lambda o, k, v: (_ for _ in ()).throw(
            ValueError("no")))
        if comm.rank == 0:
            win.Set_attr(kv, 1)
        try:
            win.Free()                          # rank 1 must not wait for rank 0
            out = "freed"
        except MPI.Exception as e:
            out = (_cls(e) == MPI.ERR_OTHER, win == MPI.WIN_NULL)
        comm.Barrier()
        return out

    assert mmpi.spawn(fn, 2) == [(True, True), "freed"]


# ----------------------------------------------------------------- datatype attributes

def test_datatype_delete_callback_sees_the_live_type_at_free():
    def fn(comm):
        seen = []
        t = MPI.INT.Dup()
        kv = MPI.Datatype.Create_keyval(
            copy_fn=lambda o, k, v: v,
            delete_fn=lambda o, k, v: seen.append((bool(o), o.Get_size(), v)),
            nopython=True)
        t.Set_attr(kv, 7)
        d = t.Dup()
        assert d.Get_attr(kv) == 7
        d.Free()
        t.Free()
        assert t == MPI.DATATYPE_NULL and d == MPI.DATATYPE_NULL
        MPI.Datatype.Free_keyval(kv)
        return seen

    assert mmpi.spawn(fn, 1) == [[(True, 4, 7), (True, 4, 7)]]


# ----------------------------------------------------------------- null handles

def test_null_requests_refuse_free_and_cancel_the_lowercase_free_skips_them():
    def fn(comm):
        peer = (comm.rank + 1) % comm.size
        out = []
        for call in (MPI.REQUEST_NULL.Free, MPI.REQUEST_NULL.Cancel,
                     MPI.REQUEST_NULL.cancel, MPI.Request().Free):
            with pytest.raises(MPI.Exception) as ei:
                call()
            out.append(_cls(ei.value) == MPI.ERR_REQUEST)
        MPI.REQUEST_NULL.free()                       # nothing to do
        # a completed request is null: Free refuses it, free() does not
        r = comm.isend(comm.rank, dest=peer)
        assert comm.recv(source=MPI.ANY_SOURCE) == (comm.rank - 1) % comm.size
        r.wait()
        with pytest.raises(MPI.Exception):
            r.Free()
        r.free()
        # a persistent request is freed once
        p = comm.Send_init(b"x", MPI.PROC_NULL)
        p.Start()
        p.Wait()
        p.Free()
        assert p == MPI.REQUEST_NULL
        with pytest.raises(MPI.Exception) as ei:
            p.Free()
        out.append(_cls(ei.value) == MPI.ERR_REQUEST)
        # a generalized request, completed and waited: null
        g = MPI.Grequest.Start()
        g.Complete()
        g.Wait()
        for call in (g.Free, g.Cancel):
            with pytest.raises(MPI.Exception):
                call()
        comm.Barrier()
        return out

    assert mmpi.spawn(fn, 2) == [[True] * 5] * 2


def test_disconnect_frees_and_comm_null_refuses():
    def fn(comm):
        dup = comm.Dup()
        assert dup.allreduce(1) == comm.size
        dup.Disconnect()
        with pytest.raises(MPI.Exception) as ei:
            MPI.COMM_NULL.Disconnect()
        with pytest.raises(MPI.Exception) as ei2:
            comm.Disconnect()                     # predefined
        return (dup == MPI.COMM_NULL, _cls(ei.value) == MPI.ERR_COMM,
                _cls(ei2.value) == MPI.ERR_COMM)

    assert mmpi.spawn(fn, 2) == [(True, True, True)] * 2


# ----------------------------------------------------------------- object scatter/alltoall

def test_scatter_and_alltoall_of_none_and_a_wrong_length_on_one_rank_only():
    def fn(comm):
        n, me = comm.size, comm.rank
        out = [comm.scatter(None, root=1), comm.alltoall(None)]    # None: n Nones (mpi4py)
        # a wrong length seen by one rank only: it raises ValueError, the others raise
        # too (the argument error travels in place of the data), nobody waits forever
        for call in (lambda: comm.scatter([1] * (n + 1) if me == 0 else None, root=0),
                     lambda: comm.alltoall([me] * (n - 1 if me == n - 1 else n))):
            try:
                call()
                out.append("no error")
            except MPI.Exception as e:
                out.append((isinstance(e, ValueError), "a sequence of" in str(e)))
        out.append(comm.alltoall(iter(range(me * n, me * n + n))))
        comm.Barrier()
        return out

    res = mmpi.spawn(fn, 3)
    for me, out in enumerate(res):
        assert out[:2] == [None, [None] * 3]
        assert out[2] == (me == 0, True)          # the root's is a ValueError
        assert out[3] == (me == 2, True)
        assert out[4] == [me, 3 + me, 6 + me]


def _fresh(code: str) -> None:
    """Run ``code`` in a new Python process (user ops are counted per process: the
    pytest process has those of the other test files)."""
    import os
    import subprocess
    import sys
    import textwrap
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p))
    env.pop("DRILLER_MMPI_RANK", None)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["OK"], res.stdout


def test_op_free_makes_the_handle_null_and_releases_its_slot():
    _fresh("""
        import weakref
        from driller import MPI
        ops = [MPI.Op.Create(lambda a, b, dt=None: a) for _ in range(32)]
        try:
            MPI.Op.Create(lambda a, b, dt=None: a)
        except MPI.Exception:
            pass
        else:
            raise AssertionError("a 33rd user op was made")
        refs = [weakref.ref(o) for o in ops]
        for o in ops:
            o.free()
            o.free()                                   # safe twice
            assert o == MPI.OP_NULL and not o
        MPI.SUM.free()
        assert MPI.SUM and MPI.SUM != MPI.OP_NULL      # predefined: untouched
        del ops, o
        assert all(r() is None for r in refs)
        # the slots are free again: 32 live user ops can be made
        many = [MPI.Op.Create(lambda a, b, dt=None: a) for _ in range(32)]
        for o in many:
            o.Free()
        print("OK")
    """)


# ----------------------------------------------------------------- subclasses

class MyRequest(MPI.Request):
    def __new__(cls, request=None):
        return super().__new__(cls, request)


class MyPrequest(MPI.Prequest):
    def __new__(cls, request=None):
        return super().__new__(cls, request)


class MyInfo(MPI.Info):
    def __new__(cls, info=None):
        return MPI.Info.__new__(cls, info)


def test_request_and_info_subclasses_as_mpi4py_writes_them():
    def fn(comm):
        peer = 1 - comm.rank
        r = MyRequest(comm.Isend(b"ab", dest=peer, tag=3))
        buf = bytearray(2)
        comm.Recv(buf, source=peer, tag=3)
        assert type(r) is MyRequest and r.Wait() and bytes(buf) == b"ab"
        p = MyPrequest(comm.Send_init(b"xy", dest=peer, tag=4))
        q = comm.Recv_init(buf, source=peer, tag=4)
        for _ in range(3):
            MPI.Prequest.Startall([p, q])
            MPI.Request.Waitall([p, q])
            assert bytes(buf) == b"xy"
        p.Free()
        q.Free()
        with pytest.raises(TypeError):                # a Prequest needs a persistent one
            MyPrequest(comm.Isend(b"", dest=MPI.PROC_NULL))
        info = MyInfo(MPI.Info.Create({"a": "1"}))
        copies = [MyInfo.Create(), info.Dup(), info.copy(), pickle.loads(pickle.dumps(info))]
        assert all(type(c) is MyInfo for c in copies) and copies[3].items() == [("a", "1")]
        return True

    assert mmpi.spawn(fn, 2) == [True, True]


# ----------------------------------------------------------------- the object model

class MyWin(MPI.Win):
    pass


class MyOp(MPI.Op):
    pass


class MyMessage(MPI.Message):
    pass


def test_window_handles_follow_the_handle_rules():
    import copy
    import operator

    def fn(comm):
        win = MPI.Win.Allocate(8, 1, MPI.INFO_NULL, comm)
        h = win.handle
        again = MPI.Win.fromhandle(h)
        assert h > 0 and again == win and again.handle == h and type(again) is MPI.Win
        assert type(MyWin.fromhandle(h)) is MyWin
        with pytest.raises(AttributeError):
            again.handle = 1
        for binop in (operator.lt, operator.le, operator.gt, operator.ge):
            with pytest.raises(TypeError):
                binop(win, win)
        with pytest.raises(TypeError):
            hash(win)
        with pytest.raises(ValueError):
            pickle.dumps(win)                     # a live window stays in its processes
        win.Free()
        assert again == MPI.WIN_NULL and again.handle == 0
        with pytest.raises(MPI.Exception) as ei:
            MPI.Win.fromhandle(h)
        assert _cls(ei.value) == MPI.ERR_WIN
        null = MyWin(MPI.WIN_NULL)
        out = [pickle.loads(pickle.dumps(MPI.WIN_NULL)) is MPI.WIN_NULL,
               copy.copy(MPI.WIN_NULL) is MPI.WIN_NULL,
               copy.deepcopy(MPI.WIN_NULL) is MPI.WIN_NULL,
               type(pickle.loads(pickle.dumps(null))) is MyWin,
               MPI.Win.fromhandle(0) == MPI.WIN_NULL]
        return out

    assert mmpi.spawn(fn, 2) == [[True] * 5] * 2


def test_second_handles_onto_constants_free_to_null_and_pickle_as_their_class():
    for const, klass in ((MPI.INT, MPI.Datatype), (MPI.SUM, MPI.Op)):
        clone = klass(const)
        for _ in range(2):
            clone.free()
            const.free()
        assert not clone and const
    d = MPI.INT.Dup()
    d.free()
    assert d == MPI.DATATYPE_NULL
    for obj, klass in ((MPI.SUM, MyOp), (MPI.OP_NULL, MyOp), (MPI.MESSAGE_NULL, MyMessage),
                       (MPI.MESSAGE_NO_PROC, MyMessage)):
        back = pickle.loads(pickle.dumps(klass(obj)))
        assert type(back) is klass and back == obj and back is not obj
    assert pickle.loads(pickle.dumps(MPI.SUM)) is MPI.SUM
    assert type(MyOp.fromhandle(MPI.MAX.handle)) is MyOp
    _fresh("""
        from driller import MPI
        user = MPI.Op.Create(lambda a, b, dt=None: a)
        assert MPI.Op.fromhandle(user.handle) == user and MPI.Op.fromhandle(0) == MPI.OP_NULL
        user.Free()
        print("OK")
    """)


# ----------------------------------------------------------------- matched probes, pickling

def test_matched_receive_into_a_derived_datatype():
    import numpy as np

    def fn(comm):
        if comm.rank == 0:
            comm.Send(np.arange(6, dtype="i4"), dest=1, tag=5)
            comm.Send(np.arange(6, dtype="i4") + 10, dest=1, tag=6)
            return None
        vec = MPI.INT.Create_vector(3, 2, 3).Commit()    # 3 blocks of 2 ints, stride 3
        got = []
        for tag, blocking in ((5, True), (6, False)):
            out = np.full(8, -1, "i4")
            m = comm.Mprobe(source=0, tag=tag)
            st = MPI.Status()
            if blocking:
                m.Recv([out, 1, vec], st)
            else:
                m.Irecv([out, 1, vec]).Wait(st)
            got.append((out.tolist(), st.Get_count(MPI.INT)))
        vec.Free()
        return got

    assert mmpi.spawn(fn, 2)[1] == [([0, 1, -1, 2, 3, -1, 4, 5], 6),
                                    ([10, 11, -1, 12, 13, -1, 14, 15], 6)]


def test_pickle_out_of_band_buffers_are_mpi_buffers():
    import numpy as np
    p = MPI.Pickle()
    p.THRESHOLD = 0
    a = np.arange(10, dtype="i4")
    data, bufs = p.dumps_oob(a)
    assert [type(b) for b in bufs] == [MPI.buffer] and bufs[0].nbytes == 40
    assert not bufs[0].readonly
    bufs[0][0] = 7                               # a view of the array's memory
    assert a[0] == 7 and np.array_equal(p.loads_oob(data, bufs), a)


def test_intercomm_alltoall_with_the_wrong_length_everywhere_raises_valueerror():
    def fn(comm):
        local = comm.Split(comm.rank % 2, comm.rank)
        inter = local.Create_intercomm(0, comm, 1 - comm.rank % 2, tag=9)
        n = inter.Get_remote_size()
        out = [inter.alltoall(None) == [None] * n]
        with pytest.raises(ValueError):
            inter.alltoall([None] * (n - 1))
        out.append(inter.alltoall([comm.rank] * n) is not None)   # the next call works
        inter.Free()
        local.Free()
        return out

    assert mmpi.spawn(fn, 2) == [[True, True]] * 2


# ----------------------------------------------------------------- Alltoallw, derived

def test_alltoallw_with_derived_datatypes_and_bottom():
    import numpy as np

    def fn(comm):
        n, me = comm.size, comm.rank
        out = []
        for nonblocking in (False, True):
            # each block: 2 ints every other slot (a vector), from/to rank r's region
            vec = MPI.INT.Create_vector(2, 1, 2).Commit()
            send = np.array([[me * 100 + r * 10 + k for k in range(4)] for r in range(n)],
                            "i4")
            recv = np.full((n, 4), -1, "i4")
            disp = [r * 16 for r in range(n)]
            args = ([send, ([1] * n, disp), [vec] * n], [recv, ([1] * n, disp), [vec] * n])
            if nonblocking:
                comm.Ialltoallw(*args).Wait()
            else:
                comm.Alltoallw(*args)
            vec.Free()
            out.append(recv.tolist())
        # MPI.BOTTOM: struct types at absolute addresses
        sbuf = np.full((n, 2), me, "f8")
        rbuf = np.full((n, 2), -1.0, "f8")
        sa, ra = MPI.Get_address(sbuf), MPI.Get_address(rbuf)
        st = [MPI.Datatype.Create_struct([2], [sa + 16 * r], [MPI.DOUBLE]).Commit()
              for r in range(n)]
        rt = [MPI.Datatype.Create_struct([2], [ra + 16 * r], [MPI.DOUBLE]).Commit()
              for r in range(n)]
        comm.Alltoallw((MPI.BOTTOM, ([1] * n, [0] * n), st),
                       (MPI.BOTTOM, ([1] * n, [0] * n), rt))
        for t in st + rt:
            t.Free()
        out.append(rbuf.tolist())
        return out

    n = 3
    for me, (blocking, nonblocking, bottom) in enumerate(mmpi.spawn(fn, n)):
        want = [[r * 100 + me * 10, -1, r * 100 + me * 10 + 2, -1] for r in range(n)]
        assert blocking == want and nonblocking == want
        assert bottom == [[float(r)] * 2 for r in range(n)]
