"""Pickling, errors and error handlers, info, and mpi4py's pure-Python layers on
driller.MPI (issue 9, part 2: the "pylayers" family).  Real ranks under
`driller run` where communication is involved."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _objects

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

try:
    import mpi4py  # noqa: F401  (the distribution whose pure-Python layers run on the shim)
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed "
                                  "(it comes with `pip install -e .[bench]`)")
# mpi4py.futures and mpi4py.util.pkl5 define subclasses of MPI.Intercomm at import
needs_intercomm = pytest.mark.skipif(not hasattr(MPI, "Intercomm"),
                                     reason="MPI.Intercomm (the intercommunicator family)")


def run(*args, timeout=90):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "driller", "run", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_code(n, code, *extra, timeout=90):
    return run("-n", str(n), *extra, "-c", textwrap.dedent(code), timeout=timeout)


# ------------------------------------------------------------------ pickling

def test_pickle_api_is_mpi4pys():
    p = MPI.Pickle()
    assert p.PROTOCOL == pickle.HIGHEST_PROTOCOL and p.THRESHOLD == 1024 ** 2 // 4
    assert p.loads(p.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    # a user dumps is called without a protocol unless one is given
    calls = []
    q = MPI.Pickle(lambda o, *a: calls.append(a) or pickle.dumps(o), pickle.loads)
    assert q.PROTOCOL is None
    q.dumps(1)
    q.PROTOCOL = 2
    q.dumps(1)
    assert calls == [(), (2,)]
    q.PROTOCOL = None       # None stays None for a user dumps, the default for pickle's
    assert q.PROTOCOL is None
    p.PROTOCOL = None
    assert p.PROTOCOL == pickle.HIGHEST_PROTOCOL
    # out of band: buffers at or above THRESHOLD leave the stream
    a, b = np.arange(10), np.arange(100_000)
    p.THRESHOLD = 1000
    data, bufs = p.dumps_oob([a, b])
    assert [m.nbytes for m in bufs] == [b.nbytes]
    back = p.loads_oob(data, bufs)
    assert np.array_equal(back[0], a) and np.array_equal(back[1], b)
    p.THRESHOLD = None
    assert p.THRESHOLD == 1024 ** 2 // 4
    assert isinstance(MPI.pickle, MPI.Pickle)


def test_global_pickle_switches_the_object_wire_and_back():
    try:
        MPI.pickle.__init__(pickle.dumps, pickle.loads, 3)
        assert _objects.user_pickler() is MPI.pickle
        MPI.pickle.__init__()
        assert _objects.user_pickler() is None
        MPI.pickle.PROTOCOL = 2          # the default functions at another protocol: honoured
        assert _objects.user_pickler() is MPI.pickle
        MPI.pickle.PROTOCOL = None
        assert _objects.user_pickler() is None
        MPI.Pickle(pickle.dumps, pickle.loads, 0)   # another instance changes nothing
        assert _objects.user_pickler() is None
    finally:
        MPI.pickle.__init__()


CUSTOM_PICKLER = """
    import json, pickle
    import numpy as np
    from driller import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    seen = {"dumps": 0, "loads": 0}

    def dumps(obj):
        seen["dumps"] += 1
        return b"J" + json.dumps(obj).encode()

    def loads(buf):
        seen["loads"] += 1
        data = bytes(buf)
        assert data[:1] == b"J", data[:10]
        return json.loads(data[1:].decode())

    MPI.pickle.__init__(dumps, loads)
    big = list(range(200_000))                       # ~1.3 MB of json: not eager
    if rank == 0:
        comm.send({"k": [1, 2, 3]}, dest=1, tag=1)
        comm.send(big, dest=1, tag=2)
        try:
            comm.send((1, 2j), dest=1, tag=3)        # json cannot: the user's dumps ran
        except TypeError as e:
            print("JSON REFUSED", "complex" in str(e))
        comm.send(np.arange(4).tolist(), dest=1, tag=4)
    else:
        small = comm.recv(source=0, tag=1)
        got = comm.recv(source=0, tag=2)
        arr = comm.recv(source=0, tag=4)
        print("CUSTOM", small, got == big, arr, seen["loads"])
    everyone = comm.bcast({"t": (1, 2)} if rank == 0 else None, root=0)
    if rank == 1:
        assert everyone == {"t": [1, 2]}, everyone   # json turns tuples into lists
    MPI.pickle.__init__()                            # the default again: out of band
    before = dict(seen)
    if rank == 0:
        comm.send({"t": (1, 2), "a": np.arange(1_000_000)}, dest=1, tag=5)
    else:
        got = comm.recv(source=0, tag=5)
        print("DEFAULT", got["t"], int(got["a"].sum()), type(got["a"]).__name__)
    assert seen == before, (seen, before)
"""


def test_custom_pickler_is_used_by_send_recv_and_bcast_then_default_restored():
    res = run_code(2, CUSTOM_PICKLER)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert "JSON REFUSED True" in out
    assert "CUSTOM {'k': [1, 2, 3]} True [0, 1, 2, 3] 3" in out
    assert f"DEFAULT (1, 2) {sum(range(1_000_000))} ndarray" in out


@needs_intercomm
def test_custom_pickler_over_an_intercommunicator():
    res = run_code(2, """
        import json
        import numpy as np
        from driller import MPI
        w = MPI.COMM_WORLD
        rank = w.Get_rank()
        local = w.Split(rank, 0)
        inter = local.Create_intercomm(0, w, 1 - rank, tag=3)
        MPI.pickle.__init__(lambda o: b"J" + json.dumps(o).encode(),
                            lambda b: json.loads(bytes(b)[1:].decode()))
        if rank == 0:
            inter.send((1, "a"), dest=0, tag=1)
            try:
                inter.send(np.arange(3), dest=0, tag=2)    # json cannot: no raw array path
            except TypeError:
                print("ARRAY REFUSED")
            inter.send(np.arange(3).tolist(), dest=0, tag=2)
        else:
            print("GOT", inter.recv(source=0, tag=1), inter.recv(source=0, tag=2))
        MPI.pickle.__init__()
    """)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["ARRAY REFUSED", "GOT [1, 'a'] [0, 1, 2]"]


def test_custom_pickler_on_comm_self_and_an_empty_stream_is_none():
    res = run_code(1, """
        import marshal
        from driller import MPI
        MPI.pickle.__init__(marshal.dumps, marshal.loads, 2)
        print(MPI.COMM_SELF.sendrecv({"a": (1, 2.5)}, 0, 0, None, 0, 0))
        MPI.pickle.__init__(lambda o: b"", lambda b: 1 / 0)
        print(MPI.COMM_SELF.sendrecv("ignored", 0, 0, None, 0, 0))
        MPI.pickle.__init__()
        print(MPI.COMM_SELF.sendrecv(("back", 1), 0, 0, None, 0, 0))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["{'a': (1, 2.5)}", "None", "('back', 1)"]


# ------------------------------------------------------------------ error classes

def test_add_error_class_code_string():
    last = MPI.ERR_LASTCODE
    cls = MPI.Add_error_class()
    assert cls > last and MPI.Get_error_class(cls) == cls
    assert MPI.Get_error_string(cls) == ""
    MPI.Add_error_string(cls, "my class")
    code = MPI.Add_error_code(cls)
    assert code > cls and MPI.Get_error_class(code) == cls
    MPI.Add_error_string(code, "my code")
    assert MPI.Get_error_string(code) == "my code"
    exc = MPI.Exception(code)
    assert exc.Get_error_class() == cls and str(exc) == "my code" and exc == code
    other = MPI.Add_error_code(MPI.ERR_OTHER)           # a predefined class takes codes too
    assert MPI.Get_error_class(other) == MPI.ERR_OTHER
    MPI.Remove_error_code(other)
    for bad in (lambda: MPI.Remove_error_class(cls),    # still has a code and a string
                lambda: MPI.Remove_error_code(code),    # still has a string
                lambda: MPI.Remove_error_class(MPI.ERR_OTHER),
                lambda: MPI.Add_error_string(MPI.ERR_ARG, "no"),
                lambda: MPI.Add_error_code(12345678),
                lambda: MPI.Remove_error_string(0)):
        with pytest.raises(MPI.Exception) as ei:
            bad()
        assert ei.value.Get_error_class() == MPI.ERR_ARG
    MPI.Remove_error_string(code)
    MPI.Remove_error_code(code)
    MPI.Remove_error_string(cls)
    MPI.Remove_error_class(cls)
    with pytest.raises(MPI.Exception):
        MPI.Get_error_class(cls)


# ------------------------------------------------------------------ error handlers

ERRH = """
    import sys
    from driller import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    assert comm.Get_errhandler() == MPI.ERRORS_RETURN
    mode = sys.argv[1]
    if mode == "return":
        try:
            comm.send("x", dest=99)
        except MPI.Exception as e:
            print("RAISED", rank, isinstance(e, MPI.Exception), e.Get_error_class() > 0)
        comm.Barrier()
        print("ALIVE", rank)
    elif mode == "user":
        calls = []
        eh = MPI.Comm.Create_errhandler(lambda c, code: calls.append((c is comm, code)))
        comm.Set_errhandler(eh)
        try:
            comm.Recv(bytearray(1), source=42)
        except MPI.Exception as e:
            print("USER", rank, calls == [(True, e.Get_error_code())], len(calls))
        comm.Set_errhandler(MPI.ERRORS_RETURN)           # wrappers gone
        try:
            comm.Recv(bytearray(1), source=42)
        except MPI.Exception:
            print("AFTER", rank, len(calls))
        eh.Free()
        comm.Barrier()
    elif mode == "inherit":
        # the handler lives with the communicator: a Dup inherits it, and a second
        # handle onto the communicator applies it too
        calls = []
        eh = MPI.Comm.Create_errhandler(lambda c, code: calls.append(code))
        comm.Set_errhandler(eh)
        dup = comm.Dup()
        other = MPI.Intracomm(comm)
        for c in (dup, other):
            try:
                c.send("x", dest=99)
            except MPI.Exception:
                pass
        print("INHERIT", rank, len(calls), dup.Get_errhandler() == eh)
        comm.Set_errhandler(MPI.ERRORS_RETURN)
        dup.Set_errhandler(MPI.ERRORS_RETURN)
        eh.Free()
        dup.Free()
        comm.Barrier()
    elif mode == "fatal":
        comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)
        comm.Barrier()
        if rank == 0:
            comm.send("x", dest=99)                        # aborts the whole job
            print("NOT REACHED")
        else:
            comm.recv(source=0)                            # stopped by the abort
            print("NOT REACHED EITHER")
"""


def test_errors_return_raises_and_the_job_goes_on():
    res = run("-n", "2", "-c", textwrap.dedent(ERRH), "return")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["ALIVE 0", "ALIVE 1", "RAISED 0 True True",
                                               "RAISED 1 True True"]


def test_user_errhandler_is_called_with_the_comm_and_the_code():
    res = run("-n", "2", "-c", textwrap.dedent(ERRH), "user")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["AFTER 0 1", "AFTER 1 1",
                                               "USER 0 True 1", "USER 1 True 1"]


@pytest.mark.skipif(not hasattr(MPI.Comm, "_bind"), reason="communicators as handles "
                    "(the object-model family)")
def test_a_communicators_handler_is_applied_by_its_dups_and_other_handles():
    res = run("-n", "2", "-c", textwrap.dedent(ERRH), "inherit")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["INHERIT 0 2 True", "INHERIT 1 2 True"]


def test_errors_are_fatal_aborts_the_job_on_a_failing_call():
    res = run("-n", "2", "-c", textwrap.dedent(ERRH), "fatal", timeout=60)
    assert res.returncode != 0
    assert "NOT REACHED" not in res.stdout
    assert "failed under ERRORS_ARE_FATAL" in res.stderr, res.stderr
    assert "Comm.send" in res.stderr or "Intracomm.send" in res.stderr, res.stderr
    assert "invalid destination rank 99" in res.stderr, res.stderr


def test_call_errhandler_fatal_aborts_with_the_code():
    res = run_code(1, """
        from driller import MPI
        MPI.COMM_SELF.Set_errhandler(MPI.ERRORS_ARE_FATAL)
        MPI.COMM_SELF.Call_errhandler(MPI.SUCCESS)      # success: nothing happens
        print("STILL HERE")
        MPI.COMM_SELF.Call_errhandler(MPI.ERR_OTHER)
        print("NOT REACHED")
    """)
    assert res.stdout.splitlines() == ["STILL HERE"]
    assert res.returncode != 0


# ------------------------------------------------------------------ info

def test_info_key_and_value_limits():
    info = MPI.Info.Create([("a", "1"), ("b", "2")])
    for key in ("", "k" * MPI.MAX_INFO_KEY):
        with pytest.raises(MPI.Exception) as ei:
            info.Set(key, "v")
        assert ei.value.Get_error_class() == MPI.ERR_INFO_KEY
    with pytest.raises(MPI.Exception) as ei:
        info.Set("k", "v" * MPI.MAX_INFO_VAL)
    assert ei.value.Get_error_class() == MPI.ERR_INFO_VALUE
    info.Set("k" * (MPI.MAX_INFO_KEY - 1), "v" * (MPI.MAX_INFO_VAL - 1))
    assert info.Get("k" * (MPI.MAX_INFO_KEY - 1)) == "v" * (MPI.MAX_INFO_VAL - 1)
    assert info.Get_nkeys() == 3
    info.Free()


# ------------------------------------------------------------------ mpi4py's layers

@needs_mpi4py
def test_bench_helloworld_and_ringtest():
    res = run("-n", "3", "-m", "mpi4py.bench", "helloworld")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert [x.split(" on ")[0] for x in lines] == [
        f"Hello, World! I am process {r} of 3" for r in range(3)]
    res = run("-n", "3", "-m", "mpi4py.bench", "ringtest", "-l", "5", "-s", "1", "-n", "1000")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("time for 5 loops = ")
    assert "(3 processes, 1000 bytes)" in res.stdout


@needs_mpi4py
@needs_intercomm          # mpi4py.bench imports mpi4py.util.pkl5
def test_bench_pingpong_buffers_and_pickles():
    for extra in ((), ("--pickle",)):
        res = run("-n", "2", "-m", "mpi4py.bench", "pingpong", "-m", "1", "-n", "1024",
                  "-s", "2", "-l", "20", *extra)
        assert res.returncode == 0, res.stderr
        rows = [x.split() for x in res.stdout.splitlines() if not x.startswith("#")]
        assert [int(r[0]) for r in rows] == [2 ** i for i in range(11)], res.stdout
        assert all(r[-1] == "20" and float(r[3]) > 0 for r in rows), res.stdout


@needs_mpi4py
def test_python_m_mpi4py_runs_a_program(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("from mpi4py import MPI\nimport sys\n"
                    "print('ARGS', MPI.COMM_WORLD.Get_rank(), sys.argv[1:])\n")
    res = run("-n", "2", "-m", "mpi4py", str(prog), "x", "--y")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["ARGS 0 ['x', '--y']", "ARGS 1 ['x', '--y']"]


@needs_mpi4py
def test_python_m_mpi4py_aborts_the_job_when_the_program_raises(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("import sys, time\nfrom mpi4py import MPI\n"
                    "if MPI.COMM_WORLD.Get_rank() == 1:\n    sys.exit(3)\n"
                    "time.sleep(60)\n")
    res = run("-n", "2", "-m", "mpi4py", str(prog), timeout=40)
    assert res.returncode == 3, res.stderr
    assert "mmpi: rank 1 called Abort(3)" in res.stderr, res.stderr
    res = run("-n", "1", "-m", "mpi4py", "--mpi-std-version")
    assert res.returncode == 0 and res.stdout.strip() == "MPI 3.1", res.stderr


@needs_mpi4py
@needs_intercomm
def test_futures_module_form_computes_a_map(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        from mpi4py import MPI
        from mpi4py.futures import MPIPoolExecutor

        def work(x):
            return x * x, MPI.COMM_WORLD.Get_rank()

        if __name__ == "__main__":
            with MPIPoolExecutor() as ex:
                out = list(ex.map(work, range(20)))
            print("SQUARES", [v for v, _ in out] == [x * x for x in range(20)])
            print("WORKERS", sorted({r for _, r in out} - {0}))
    """))
    res = run("-n", "3", "-m", "mpi4py.futures", str(prog), timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "SQUARES True" in lines, lines
    workers = [x for x in lines if x.startswith("WORKERS")]
    assert workers and set(eval(workers[0][8:])) <= {1, 2}, lines


@needs_mpi4py
@needs_intercomm
def test_comm_executor_over_ranks_started_by_driller_run(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        from mpi4py import MPI
        from mpi4py.futures import MPICommExecutor
        with MPICommExecutor(MPI.COMM_WORLD, root=0) as ex:
            if ex is not None:
                print("CEX", list(ex.map(abs, range(-5, 0))))
        MPI.COMM_WORLD.Barrier()
        print("DONE", MPI.COMM_WORLD.Get_rank())
    """))
    res = run("-n", "3", str(prog), timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["CEX [5, 4, 3, 2, 1]", "DONE 0", "DONE 1",
                                               "DONE 2"]


@needs_mpi4py
@needs_intercomm
def test_pool_executor_without_workers_says_how_to_run(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        from concurrent.futures import BrokenExecutor
        from mpi4py.futures import MPIPoolExecutor
        if __name__ == "__main__":
            try:
                with MPIPoolExecutor(max_workers=2) as ex:
                    print(list(ex.map(abs, [-1])))
            except BrokenExecutor as e:
                print("BROKEN", e)
    """))
    res = run("-n", "1", str(prog), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("BROKEN MPIPoolExecutor cannot spawn its workers"), res.stdout
    assert "driller run -n N -m mpi4py.futures prog.py" in res.stdout


@needs_mpi4py
@needs_intercomm
@pytest.mark.skipif(not hasattr(MPI, "Message"), reason="MPI.Message (point-to-point family)")
def test_pkl5_sends_a_large_array():
    res = run_code(2, """
        import numpy as np
        from mpi4py import MPI
        from mpi4py.util import pkl5
        comm = pkl5.Intracomm(MPI.COMM_WORLD)
        a = np.arange(4_000_000, dtype="f8")              # 32 MB: out of band
        if comm.Get_rank() == 0:
            comm.send({"a": a, "n": 1}, dest=1, tag=7)
            req = comm.isend(a[::2].copy(), dest=1, tag=8)
            req.wait()
        else:
            got = comm.recv(source=0, tag=7)
            try:        # pkl5 has no irecv (mpi4py's own pkl5 says so: unsupported)
                comm.irecv(source=0, tag=8)
            except RuntimeError as e:
                print("IRECV", repr(e))
            # its nonblocking receive is a matched probe's
            half = comm.mprobe(source=0, tag=8).irecv().wait()
            print("PKL5", np.array_equal(got["a"], a), np.array_equal(half, a[::2]))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["IRECV RuntimeError('unsupported')", "PKL5 True True"]


@needs_mpi4py
@needs_intercomm
def test_pkl5_blocks_of_a_derived_datatype_and_oob_buffers():
    # pkl5 moves a message larger than _bigmpi.blocksize as one element of a contiguous
    # datatype: the matched probe's Irecv receives into a derived type (mpi4py's testBigMPI)
    res = run_code(2, """
        import numpy as np
        from mpi4py import MPI
        from mpi4py.util import pkl5
        comm = pkl5.Intracomm(MPI.COMM_WORLD)
        rank = comm.Get_rank()
        pkl5._bigmpi.blocksize = 64
        a = np.full(1024, rank, dtype="i")
        req = comm.issend((a, a + 1), 1 - rank, 123)
        st = MPI.Status()
        got = comm.mprobe(1 - rank, 123).irecv().wait(st)
        req.Free()
        data, bufs = pkl5.pickle.dumps_oob(np.zeros(1 << 17))
        print(rank, bool((got[0] == 1 - rank).all() and (got[1] == 2 - rank).all()),
              st.Get_elements(MPI.BYTE) > 0, [type(b).__name__ for b in bufs])
    """)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["0 True True ['buffer']", "1 True True ['buffer']"]


def test_message_recv_into_a_derived_datatype():
    res = run_code(2, """
        import numpy as np
        from driller import MPI
        comm = MPI.COMM_WORLD
        if comm.Get_rank() == 0:
            comm.Send(np.arange(6, dtype="i"), 1, 5)
            comm.Send(np.arange(6, dtype="i") + 10, 1, 6)
        else:
            vec = MPI.INT.Create_vector(3, 2, 3).Commit()      # 2 of every 3 ints
            out = np.full(8, -1, dtype="i")
            st = MPI.Status()
            comm.Mprobe(0, 5).Recv([out, 1, vec], st)
            out2 = np.full(8, -1, dtype="i")
            comm.Mprobe(0, 6).Irecv([out2, 1, vec]).Wait()
            print(out.tolist(), st.Get_count(MPI.INT), out2.tolist())
    """, "--mpi4py")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "[0, 1, -1, 2, 3, -1, 4, 5] 6 [10, 11, -1, 12, 13, -1, 14, 15]"]


def test_object_scatter_and_alltoall_read_their_arguments_as_mpi4py():
    # None is one None per rank, any iterable is listed; a wrong count is a ValueError
    # (a non-iterable a TypeError) on the rank that passed it, and the others raise
    # naming it instead of waiting for a message that never comes: the communicator
    # stays usable (the next collective matches)
    res = run_code(3, """
        from driller import MPI
        comm = MPI.COMM_WORLD
        rank, n = comm.Get_rank(), comm.Get_size()
        out = [comm.scatter(None, 1), comm.scatter(iter(range(10, 10 + n)), 2),
               comm.alltoall(None), comm.alltoall(iter([rank] * n))]
        def outcome(fn):
            try:
                return ("ok", fn())
            except ValueError as e:
                return ("ValueError", str(e))
            except TypeError as e:
                return ("TypeError", str(e))
            except MPI.Exception as e:
                return ("Exception", str(e))
        bad_root = outcome(lambda: comm.scatter([1] * (n + 1) if rank == 0 else None, 0))
        bad_one = outcome(lambda: comm.alltoall(5 if rank == 1 else [rank] * n))
        print(rank, out, bad_root[0], bad_one[0], comm.allgather(rank), flush=True)
        comm.Barrier()
        if rank == 2:
            print("MSG", bad_root[1], "|", bad_one[1])
    """)
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines[:3] == [
        "0 [None, 10, [None, None, None], [0, 1, 2]] ValueError Exception [0, 1, 2]",
        "1 [None, 11, [None, None, None], [0, 1, 2]] Exception TypeError [0, 1, 2]",
        "2 [None, 12, [None, None, None], [0, 1, 2]] Exception Exception [0, 1, 2]"]
    assert "rank 0 passed invalid arguments" in lines[3] and "expecting 3 items" in lines[3]
    assert "rank 1 passed invalid arguments" in lines[3]


def test_intercomm_object_scatter_and_alltoall_take_none_and_iterables():
    res = run_code(4, """
        from driller import MPI
        world = MPI.COMM_WORLD
        color = world.Get_rank() % 2
        local = world.Split(color, world.Get_rank())
        inter = local.Create_intercomm(0, world, 1 - color, 7)
        rsize = inter.Get_remote_size()
        if color == 0:
            root = MPI.ROOT if local.Get_rank() == 0 else MPI.PROC_NULL
            a = inter.scatter(None, root)
            b = inter.scatter(iter(["x", "y"]), root)
        else:
            a = inter.scatter(None, 0)
            b = inter.scatter(None, 0)
        c = inter.alltoall(None)
        try:
            inter.alltoall([1] * (rsize + 1))
            d = "no error"
        except ValueError as e:
            d = "ValueError"
        print(color, local.Get_rank(), a, b, c, d, inter.allgather(color))
    """)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "0 0 None None [None, None] ValueError [1, 1]",
        "0 1 None None [None, None] ValueError [1, 1]",
        "1 0 None x [None, None] ValueError [0, 0]",
        "1 1 None y [None, None] ValueError [0, 0]"]


def test_comm_spawn_says_what_to_run():
    with pytest.raises(NotImplementedError, match=r"driller run -n N -m mpi4py\.futures"):
        MPI.COMM_SELF.Spawn(sys.executable, ["-c", "pass"], maxprocs=2)


# ------------------------------------------------------------------ files (handles only)

def test_file_open_close_and_errhandlers(tmp_path):
    path = tmp_path / "f.bin"
    amode = MPI.MODE_WRONLY | MPI.MODE_CREATE | MPI.MODE_DELETE_ON_CLOSE
    f = MPI.File.Open(MPI.COMM_SELF, path, amode, MPI.INFO_NULL)
    assert f and path.exists() and f.Get_amode() == amode and f.Get_size() == 0
    assert f.Get_errhandler() == MPI.ERRORS_RETURN          # MPI's default for files
    calls = []
    eh = MPI.File.Create_errhandler(lambda obj, code: calls.append((obj, code)))
    f.Set_errhandler(eh)
    f.Call_errhandler(MPI.ERR_OTHER)
    assert calls == [(f, MPI.ERR_OTHER)]
    f.Set_errhandler(MPI.ERRORS_RETURN)
    eh.Free()
    with pytest.raises(NotImplementedError, match="MPI-IO data access"):
        f.Write_at(0, b"x")
    f.Close()
    assert not f and f == MPI.FILE_NULL and not path.exists()
    with pytest.raises(MPI.Exception) as ei:
        f.Close()
    assert ei.value.Get_error_class() == MPI.ERR_FILE
    for mode in (MPI.MODE_RDONLY | MPI.MODE_CREATE, MPI.MODE_RDWR | MPI.MODE_WRONLY, 0):
        with pytest.raises(MPI.Exception) as ei:
            MPI.File.Open(MPI.COMM_SELF, path, mode)
        assert ei.value.Get_error_class() == MPI.ERR_AMODE
    with pytest.raises(MPI.Exception) as ei:
        MPI.File.Open(MPI.COMM_SELF, tmp_path / "missing")
    assert ei.value.Get_error_class() == MPI.ERR_NO_SUCH_FILE
    assert pickle.loads(pickle.dumps(MPI.FILE_NULL)) is MPI.FILE_NULL


def test_file_errors_are_fatal_aborts_the_job(tmp_path):
    res = run_code(2, f"""
        from driller import MPI
        f = MPI.File.Open(MPI.COMM_WORLD, {str(tmp_path / 'g')!r},
                          MPI.MODE_RDWR | MPI.MODE_CREATE)
        f.Set_errhandler(MPI.ERRORS_ARE_FATAL)
        MPI.COMM_WORLD.Barrier()
        f.Call_errhandler(MPI.ERR_IO)
        print("NOT REACHED")
    """)
    assert res.returncode != 0 and "NOT REACHED" not in res.stdout


# ------------------------------------------------------------------ mpi4py's private helpers

def test_commctx_and_comm_locks_as_pkl5_uses_them():
    res = run_code(2, """
        import threading
        from driller import MPI
        comm = MPI.COMM_WORLD.Dup()
        rank = comm.Get_rank()
        dup, tag = MPI._commctx_intra(comm)
        dup2, tag2 = MPI._commctx_intra(comm)
        assert dup is dup2 and (tag, tag2) == (0, 1), (tag, tag2)
        assert dup.Get_size() == 2 and dup.Compare(comm) == MPI.CONGRUENT
        # the duplicate is a context of its own: a message on it never matches comm's
        if rank == 0:
            dup.send("on dup", dest=1, tag=tag)
            comm.send("on comm", dest=1, tag=tag)
        else:
            print("ORDER", comm.recv(source=0, tag=tag), dup.recv(source=0, tag=tag))
        table = MPI._comm_lock_table(comm)
        assert "bcast" not in table
        comm.bcast(None, root=0)
        assert isinstance(table["bcast"], type(threading.Lock()))
        with MPI._comm_lock(comm, "x") as held:
            assert MPI._comm_lock(comm, "x").locked()
        assert set(table) >= {"bcast", "x", "@commctx_intra"}
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ORDER on comm on dup"]
