"""Sessions, window and datatype attributes, and null-handle errors, as mpi4py 4.1.2's
test_session / test_attributes / test_exceptions / test_errhandler expect them (issue 9),
with real forked ranks (``mmpi.spawn``).  (The object model, subclasses and object
scatter/alltoall: tests/test_subclass.py.)"""

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
