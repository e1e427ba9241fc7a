"""driller.MPI's environment surface (issue 9, part 2): vendor and version, error
classes and MPI.Exception, DATATYPE_NULL and new predefined datatypes, Info; and
root-only conditions of Gather/Scatter that must not leave the other ranks waiting.

Ranks are forked by the harness of test_mmpi_p2p; hangs hit its deadline.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from driller import MPI, __version__
from driller.errors import DrillerError, MmpiError, TruncationError

from test_mmpi_p2p import run_ranks, values


def test_vendor_and_versions():
    name, ver = MPI.get_vendor()
    assert name == "driller" and ".".join(map(str, ver)).startswith(__version__.split("+")[0])
    major, minor = MPI.Get_version()
    assert type(major) is int and major >= 3
    assert __version__ in MPI.Get_library_version()


def test_error_classes_codes_and_strings():
    names = [n for n in dir(MPI) if n.startswith("ERR_") and n != "ERR_LASTCODE"]
    assert {"ERR_ARG", "ERR_COMM", "ERR_TRUNCATE", "ERR_OTHER", "ERR_UNKNOWN"} <= set(names)
    values_ = [getattr(MPI, n) for n in names]
    assert len(set(values_)) == len(values_)               # distinct classes
    for code in [MPI.SUCCESS, *values_]:
        assert MPI.SUCCESS <= code < MPI.ERR_LASTCODE
        assert MPI.Get_error_class(code) == code
        assert MPI.Get_error_string(code)
    with pytest.raises(MPI.Exception) as e:
        MPI.Get_error_string(MPI.ERR_LASTCODE + 7)
    assert e.value.Get_error_class() == MPI.ERR_ARG


def test_exception_is_mpi4pys():
    exc = MPI.Exception(MPI.ERR_TYPE)
    assert isinstance(exc, DrillerError) and isinstance(exc, RuntimeError)
    assert exc.Get_error_code() == exc.error_class == MPI.ERR_TYPE
    assert str(exc) == MPI.Get_error_string(MPI.ERR_TYPE) and repr(exc) == f"MPI.Exception({MPI.ERR_TYPE})"
    assert exc == MPI.ERR_TYPE and int(exc) == MPI.ERR_TYPE and hash(exc) == hash(MPI.ERR_TYPE)
    assert MPI.Exception(MPI.SUCCESS) < exc <= MPI.ERR_TYPE and not MPI.Exception(MPI.SUCCESS)
    assert MPI.Exception(-3) == MPI.ERR_UNKNOWN
    back = pickle.loads(pickle.dumps(exc))
    assert back == exc and str(back) == str(exc)
    # driller's own errors carry a class too, and are caught as MPI.Exception
    assert TruncationError("x").Get_error_class() == MPI.ERR_TRUNCATE
    assert MmpiError("bad").Get_error_class() == MPI.ERR_OTHER and str(MmpiError("bad")) == "bad"
    with pytest.raises(MPI.Exception) as e:
        MPI.DATATYPE_NULL.Get_size()
    assert e.value.Get_error_class() == MPI.ERR_TYPE


def test_datatype_null_and_new_types_pickle_as_handles():
    assert MPI.Datatype() == MPI.DATATYPE_NULL and not MPI.DATATYPE_NULL and MPI.INT
    assert MPI.INT != MPI.DATATYPE_NULL
    for dt in (MPI.DATATYPE_NULL, MPI.INT, MPI.C_LONG_DOUBLE_COMPLEX, MPI.FLOAT16_T):
        assert pickle.loads(pickle.dumps(dt)) is dt
    assert MPI.C_LONG_DOUBLE_COMPLEX.Get_size() == np.dtype("G").itemsize
    assert MPI.FLOAT16_T.Get_size() == 2


def test_info_is_a_handle_onto_a_dict():
    assert not MPI.INFO_NULL and len(MPI.INFO_NULL) == 0 and MPI.INFO_NULL.get("k", 1) == 1
    with pytest.raises(KeyError):
        MPI.INFO_NULL["k"] = "v"
    with pytest.raises(MPI.Exception) as e:
        MPI.INFO_NULL.Get_nkeys()
    assert e.value.Get_error_class() == MPI.ERR_INFO
    info = MPI.Info.Create({"a": "1"})
    info["b"] = "2"
    assert info.items() == [("a", "1"), ("b", "2")] and info.Get_nthkey(1) == "b"
    alias = MPI.Info(info)
    assert alias == info and alias is not info
    dup = info.Dup()
    assert dup != info and dup.items() == info.items()
    copy = pickle.loads(pickle.dumps(info))
    assert copy != info and copy.items() == info.items()
    assert info.popitem() == ("b", "2") and info.pop("zz", None) is None
    with pytest.raises(TypeError):
        info.Set("k", 3)
    info.Free()
    assert info == MPI.INFO_NULL and alias != info   # the alias is its own handle
    for i in (dup, copy):
        i.Free()
    assert pickle.loads(pickle.dumps(MPI.INFO_NULL)) is MPI.INFO_NULL
    assert pickle.loads(pickle.dumps(MPI.INFO_ENV)) is MPI.INFO_ENV
    assert MPI.INFO_ENV.Get("host") and MPI.INFO_ENV.Get("nosuchkey") is None


def _root_contributions(comm):
    n, me = comm.size, comm.rank
    out = []
    for root in range(n):
        # Gather: IN_PLACE at the root, then None (as mpi4py on Open MPI: in place)
        buf = np.full((n, 3), -1.0)
        if me == root:
            buf[me] = root
            comm.Gather(MPI.IN_PLACE, buf, root)
            comm.Gather(None, buf, root)
        else:
            comm.Gather(np.full(3, float(root)), None, root)
            comm.Gather(np.full(3, float(root)), None, root)
        out.append(bool((buf == root).all()) if me == root else True)
        # Scatter: IN_PLACE / None as the root's receive buffer
        mine = np.full(3, -1.0)
        if me == root:
            comm.Scatter(np.full((n, 3), float(root)), MPI.IN_PLACE, root)
            comm.Scatter(np.full((n, 3), float(root)), None, root)
        else:
            comm.Scatter(None, mine, root)
            comm.Scatter(None, mine, root)
            out.append(bool((mine == root).all()))
        # a root-only error (its own block too small): raised there, after the others
        # have been served, so nobody is left waiting
        if me == root:
            try:
                comm.Gather(np.zeros(5), np.zeros((n, 3)), root)
                out.append("no error")
            except TruncationError as e:
                out.append("truncat" in str(e) or "holds" in str(e))
        else:
            comm.Gather(np.zeros(3), None, root)
        comm.Barrier()
    return out


def test_gather_scatter_root_in_place_and_root_only_errors():
    for res in values(run_ranks(_root_contributions, 3)):
        assert res and all(x is True for x in res), res


def test_errhandlers_predefined_user_and_call():
    comm = MPI.COMM_WORLD
    assert not MPI.ERRHANDLER_NULL and MPI.ERRORS_RETURN and MPI.ERRORS_ARE_FATAL
    for eh in (MPI.ERRORS_RETURN, MPI.ERRORS_ARE_FATAL, MPI.ERRORS_ABORT):
        assert pickle.loads(pickle.dumps(eh)) is eh
        copy = pickle.loads(pickle.dumps(MPI.Errhandler(eh)))
        assert copy == eh and copy is not eh
    orig = comm.Get_errhandler()
    assert orig == MPI.ERRORS_RETURN
    calls = []
    made = [MPI.Comm.Create_errhandler(lambda obj, err, i=i: calls.append((i, obj, err)))
            for i in range(32)]
    with pytest.raises(RuntimeError):
        MPI.Comm.Create_errhandler(lambda o, e: None)   # 32 user handlers at most
    with pytest.raises(ValueError):
        pickle.dumps(made[0])
    comm.Set_errhandler(made[5])
    comm.Call_errhandler(MPI.ERR_OTHER)
    assert calls == [(5, comm, MPI.ERR_OTHER)]
    comm.Set_errhandler(orig)
    comm.Call_errhandler(MPI.ERR_OTHER)               # ERRORS_RETURN: nothing happens
    assert len(calls) == 1
    for eh in made:
        eh.Free()
        assert eh == MPI.ERRHANDLER_NULL
    MPI.Comm.Create_errhandler(lambda o, e: None).Free()   # the slots are free again
    with pytest.raises(MPI.Exception):
        comm.Set_errhandler(MPI.ERRHANDLER_NULL)


def test_invalid_ranks_and_tags_carry_err_rank_and_err_tag():
    # as Open MPI's: they were ERR_OTHER, so a program switching on the class of an
    # ERRORS_RETURN error (mpi4py's own tests do) took them for another error
    comm, buf = MPI.COMM_WORLD, np.zeros(3)
    for call, cls in [(lambda: comm.Send(buf, dest=comm.size + 5), MPI.ERR_RANK),
                      (lambda: comm.Isend(buf, dest=-7), MPI.ERR_RANK),
                      (lambda: comm.Recv(buf, source=comm.size + 5), MPI.ERR_RANK),
                      (lambda: comm.Send(buf, dest=0, tag=-5), MPI.ERR_TAG),
                      (lambda: comm.Irecv(buf, source=0, tag=-5), MPI.ERR_TAG),
                      (lambda: comm.send(1, dest=comm.size), MPI.ERR_RANK)]:
        with pytest.raises(MPI.Exception) as e:
            call()
        assert e.value.Get_error_class() == cls, (e.value, e.value.Get_error_class())
        assert isinstance(e.value, DrillerError)


def _fatal(comm):
    if comm.rank == 1:
        comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)
        comm.Call_errhandler(MPI.SUCCESS)             # no error: nothing happens
        comm.Call_errhandler(MPI.ERR_OTHER)           # aborts this rank
        return "survived"
    return "ok"


def test_errors_are_fatal_aborts():
    (ok0, v0), (ok1, v1) = run_ranks(_fatal, 2)
    assert ok0 and v0 == "ok"
    assert not ok1 and v1 != "survived"          # rank 1 ended in Call_errhandler


def test_datatype_fromcode_tocode():
    D = MPI.Datatype
    assert D.fromcode("i") is MPI.INT and D.fromcode("d") is MPI.DOUBLE
    assert D.fromcode("G") is MPI.C_LONG_DOUBLE_COMPLEX and D.fromcode("i8") is MPI.INT64_T
    assert D.fromcode("f2") is MPI.FLOAT16_T and D.fromcode("?") is MPI.C_BOOL
    assert MPI.INT.tocode() == "i" and MPI.C_DOUBLE_COMPLEX.tocode() == "D"
    for bad in ("x", "i3", 4):
        with pytest.raises(ValueError):
            D.fromcode(bad)
    with pytest.raises(ValueError):
        MPI.DATATYPE_NULL.tocode()


def test_persistent_request_to_proc_null_is_a_real_request():
    comm = MPI.COMM_SELF
    for kind, req in (("send", comm.Send_init(np.zeros(3), MPI.PROC_NULL)),
                      ("recv", comm.Recv_init(np.zeros(3), MPI.PROC_NULL))):
        assert req and req != MPI.REQUEST_NULL         # inactive, but a live handle
        for _ in range(2):
            req.Start()
            st = MPI.Status()
            req.Wait(st)
            assert req != MPI.REQUEST_NULL                    # still there, inactive
            if kind == "recv":
                assert st.Get_source() == MPI.PROC_NULL and st.Get_count() == 0
        req.Free()
        assert req == MPI.REQUEST_NULL and not req
