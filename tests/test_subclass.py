"""Subclassing the MPI classes and their object model, as mpi4py's (issue 9:
test_subclass, test_objmodel): ``__new__(cls, obj)`` copy-constructors that a
subclass's ``super().__new__(cls, obj)`` reaches, unhashable handles with weak
references, ``handle``/``fromhandle``, safe ``free`` (a predefined constant stays,
a copy of it becomes null), pickling and copying that keep the subclass."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

from driller import MPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def run_code(n, code, timeout=90):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "driller", "run", "-n", str(n), "-c",
                           textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _sub(base):
    """A subclass with mpi4py's copy-constructor idiom."""
    def __new__(cls, obj=None):
        return super(sub, cls).__new__(cls, obj)
    sub = type(f"My{base.__name__}", (base,), {"__new__": __new__})
    return sub


NULLS = [MPI.Status(), MPI.REQUEST_NULL, MPI.INFO_NULL, MPI.ERRHANDLER_NULL, MPI.OP_NULL,
         MPI.MESSAGE_NULL, MPI.WIN_NULL, MPI.DATATYPE_NULL, MPI.GROUP_NULL, MPI.COMM_NULL]


@pytest.mark.parametrize("obj", NULLS, ids=lambda o: type(o).__name__)
def test_subclass_copy_constructor_of_every_handle_class(obj):
    base = type(obj)
    sub = _sub(base)
    new = sub(obj)
    assert type(new) is sub and isinstance(new, base)
    assert new == obj
    assert sub() == base()
    with pytest.raises(TypeError):
        sub(1234)


@pytest.mark.parametrize("base", [MPI.Request, MPI.Prequest, MPI.Grequest])
def test_request_subclasses_wrap_requests(base):
    sub = _sub(base)
    r = sub(MPI.REQUEST_NULL)
    assert type(r) is sub and not r and r.Test()
    if base is MPI.Request:
        req = MPI.COMM_SELF.Isend([MPI.BOTTOM, 0, MPI.BYTE], dest=MPI.PROC_NULL, tag=0)
        mine = sub(req)
        assert mine == req and mine.Wait() is True      # (mpi4py 4's Wait returns True)
        assert not mine and mine == MPI.REQUEST_NULL
    elif base is MPI.Prequest:
        p = MPI.COMM_SELF.Send_init([MPI.BOTTOM, 0, MPI.BYTE], dest=MPI.PROC_NULL, tag=0)
        mine = sub(p)
        assert mine == p
        for _ in range(3):
            mine.Start()
            mine.Wait()
        mine.Free()
        with pytest.raises(TypeError, match="Cannot convert"):
            sub(MPI.COMM_SELF.Isend([MPI.BOTTOM, 0, MPI.BYTE], dest=MPI.PROC_NULL, tag=0))


class MyInfo(MPI.Info):
    def __new__(cls, info=None):
        return MPI.Info.__new__(cls, info)


def test_info_subclass_keeps_its_type_through_create_dup_copy_and_pickle():
    sub = MyInfo
    info = sub(MPI.Info.Create())
    info.update([("a", "1"), ("b", "2")])
    for other in (sub.Create(), info.Dup(), info.copy(), pickle.loads(pickle.dumps(info))):
        assert type(other) is sub
    assert pickle.loads(pickle.dumps(info)).items() == [("a", "1"), ("b", "2")]
    info.Free()
    assert not info


@pytest.mark.parametrize("obj", NULLS, ids=lambda o: type(o).__name__)
def test_handles_are_unhashable_unordered_and_weakly_referenced(obj):
    with pytest.raises(TypeError):
        hash(obj)
    with pytest.raises(TypeError):
        obj < obj   # noqa: B015
    assert weakref.ref(obj)() is obj


@pytest.mark.parametrize("obj", NULLS[1:], ids=lambda o: type(o).__name__)
def test_nulls_pickle_and_copy_by_name_and_keep_a_subclass(obj):
    for copier in (lambda o: pickle.loads(pickle.dumps(o)), copy.copy, copy.deepcopy):
        assert copier(obj) is obj
        sub = type(f"My{type(obj).__name__}", (type(obj),), {})
        sub.__module__ = __name__
        globals()[sub.__name__] = sub
        try:
            dup = copier(sub(obj))
        finally:
            del globals()[sub.__name__]
        assert type(dup) is sub and dup is not obj and dup == obj


def test_op_and_win_handles_round_trip():
    for obj in (MPI.OP_NULL, MPI.SUM, MPI.WIN_NULL):
        assert obj.handle >= 0
        back = type(obj).fromhandle(obj.handle)
        assert back == obj and type(back) is type(obj)
    w = MPI.Win.Create(np.zeros(4, "i"), comm=MPI.COMM_SELF)
    assert MPI.Win.fromhandle(w.handle) == w
    w.Free()


def test_safe_free_keeps_constants_and_nulls_copies():
    for const in (MPI.INT, MPI.SUM, MPI.INFO_ENV, MPI.ERRORS_RETURN, MPI.COMM_SELF):
        const.free()
        assert const
        if not isinstance(const, MPI.Errhandler):
            clone = type(const)(const)
            clone.free()
            assert not clone and const
    op = MPI.Op.Create(lambda a, b, t: None)
    op.free()
    assert not op and op == MPI.OP_NULL
    op.free()
    assert not op


def test_subclasses_on_real_ranks():
    res = run_code(2, """
        import numpy as np
        from driller import MPI

        class MyRequest(MPI.Request):
            def __new__(cls, request=None):
                return super().__new__(cls, request)

        class MyPrequest(MPI.Prequest):
            def __new__(cls, request=None):
                return super().__new__(cls, request)

        class MyStatus(MPI.Status):
            def __new__(cls, status=None):
                return super().__new__(cls, status)

        comm = MPI.COMM_WORLD
        rank, peer = comm.Get_rank(), 1 - comm.Get_rank()
        buf = np.zeros(3, "i")
        rr = MyRequest(comm.Irecv(buf, peer, 1))
        sr = MyRequest(comm.Isend(np.full(3, rank, "i"), peer, 1))
        st = MyStatus()
        MPI.Request.Waitall([rr, sr], [st, MyStatus()])
        p = MyPrequest(comm.Send_init(np.full(2, rank, "i"), peer, 2))
        q = MyPrequest(comm.Recv_init(out := np.zeros(2, "i"), peer, 2))
        for _ in range(3):
            MPI.Prequest.Startall([q, p])
            MPI.Request.Waitall([q, p])
        p.Free(); q.Free()
        print(rank, buf.tolist(), st.Get_source(), type(st).__name__, out.tolist(), bool(p))
    """)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["0 [1, 1, 1] 1 MyStatus [1, 1] False",
                                               "1 [0, 0, 0] 0 MyStatus [0, 0] False"]
