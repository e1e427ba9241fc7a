"""The --mpi4py shim: mpi4py.MPI is driller.MPI, every other mpi4py.* module comes
unchanged from the installed mpi4py distribution, and without it those names say
to `pip install mpi4py`.  Real ranks under `driller run --mpi4py`."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
SHIM = os.path.join(SRC, "driller", "mmpi", "_shim", "mpi4py")
_REAL = importlib.util.find_spec("mpi4py")      # this process has no shim on its path
REAL_DIR = os.path.dirname(_REAL.origin) if _REAL else None
needs_mpi4py = pytest.mark.skipif(REAL_DIR is None, reason="mpi4py is not installed "
                                  "(it comes with `pip install -e .[bench]`)")

# what a missing name of the facade looks like when mpi4py's modules reach for it
CLEAR_MISSING = re.compile(r"cannot import name '\w+' from 'driller\.MPI'"
                           r"|MPI\.\w+ is not implemented by driller\.MPI"
                           r"|has no attribute '\w+'")


def run(*args, timeout=60):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "driller", "run", "--mpi4py", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@needs_mpi4py
def test_mpi4py_modules_come_from_the_installed_distribution():
    code = textwrap.dedent("""
        import os, mpi4py, driller.MPI
        from mpi4py import MPI
        import mpi4py.util.dtlib, mpi4py.run, mpi4py.bench
        assert MPI is driller.MPI and mpi4py.MPI is driller.MPI
        import sys; assert sys.modules["mpi4py.MPI"] is driller.MPI
        print("PATH", mpi4py.__path__)
        print("SHIM", os.path.dirname(mpi4py.__file__))
        for m in (mpi4py.util.dtlib, mpi4py.run, mpi4py.bench):
            print("FROM", m.__name__, m.__file__)
        print("VERSION", mpi4py.__version__)
        print("RANK", MPI.COMM_WORLD.Get_rank())
    """)
    res = run("-n", "2", "-c", code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sorted(x for x in lines if x.startswith("RANK")) == ["RANK 0", "RANK 1"]
    assert set(x for x in lines if x.startswith("PATH")) == {f"PATH {[REAL_DIR]}"}
    assert all(os.path.samefile(x.split(" ", 1)[1], SHIM) for x in lines if x.startswith("SHIM"))
    for name, rel in (("mpi4py.util.dtlib", "util/dtlib.py"), ("mpi4py.run", "run.py"),
                      ("mpi4py.bench", "bench.py")):
        files = {x.split()[2] for x in lines if x.startswith(f"FROM {name} ")}
        assert files == {os.path.join(REAL_DIR, rel)}, lines
    version = re.search(r'^__version__ = "(.+)"', open(_REAL.origin).read(), re.M).group(1)
    assert set(x for x in lines if x.startswith("VERSION")) == {f"VERSION {version}"}


PKL5 = textwrap.dedent("""
    import sys
    try:
        from mpi4py.util import pkl5
        from mpi4py import MPI
        MPI.buffer, MPI.Message, MPI.Comm.Mprobe     # what pkl5 uses at run time
    except (ImportError, AttributeError) as e:
        print("MISSING", e)
        sys.exit(0)
    import numpy as np
    comm = pkl5.Intracomm(MPI.COMM_WORLD)
    payload = {"a": np.arange(300_000, dtype="i8"), "b": "x" * 100}
    if comm.Get_rank() == 0:
        comm.send(payload, dest=1, tag=5)
    else:
        got = comm.recv(source=0, tag=5)
        assert got["b"] == payload["b"] and np.array_equal(got["a"], payload["a"])
        print("PKL5 OK", got["a"].sum())
""")


@needs_mpi4py
def test_pkl5_runs_on_the_facade_or_names_what_it_lacks():
    # pkl5 needs MPI names the facade may not have yet (ROOT, Pickle, Message, the
    # private _comm_lock/_commctx_*, MPI.buffer): then the import, or the look-up of
    # the names it uses at run time, says which, naming driller.MPI
    res = run("-n", "2", "-c", PKL5)
    missing = [x for x in res.stdout.splitlines() if x.startswith("MISSING")]
    if missing:
        assert res.returncode == 0, res.stderr
        assert len(missing) == 2 and all(CLEAR_MISSING.search(x) for x in missing), missing
    else:
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [f"PKL5 OK {sum(range(300_000))}"]


@needs_mpi4py
def test_futures_module_form_starts(tmp_path):
    prog = tmp_path / "prog.py"
    # the main guard, as mpi4py.futures requires: the workers import the program too
    # (without it every rank runs the body: mpi4py on Open MPI prints SQUARES twice)
    prog.write_text(textwrap.dedent("""
        from mpi4py.futures import MPIPoolExecutor
        if __name__ == "__main__":
            with MPIPoolExecutor() as ex:
                print("SQUARES", list(ex.map(pow, [1, 2, 3], [2, 2, 2])))
    """))
    res = run("-n", "2", "-m", "mpi4py.futures", str(prog), timeout=90)
    if res.returncode == 0:
        assert res.stdout.splitlines() == ["SQUARES [1, 4, 9]"]
    else:   # mpi4py.futures itself was reached, and it stops on a name the facade lacks
        assert "mpi4py/futures" in res.stderr, res.stderr
        assert CLEAR_MISSING.search(res.stderr), res.stderr
        assert "driller run: rank" in res.stderr


HIDDEN = textwrap.dedent("""
    import importlib, importlib.util, os, sys
    import driller.MPI                      # numpy and driller, before hiding site-packages
    shim_root = os.path.realpath(sys.argv[1])
    # hide every mpi4py but the shim (the installed distribution's site-packages)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") == shim_root
                   or not os.path.isfile(os.path.join(p or ".", "mpi4py", "__init__.py"))]
    importlib.invalidate_caches()
    import mpi4py
    from mpi4py import MPI
    print("PATH", mpi4py.__path__, MPI.COMM_WORLD.Get_size())
    print("MAIN", importlib.util.find_spec("mpi4py.__main__").origin)
    for name in ("mpi4py.util", "mpi4py.util.pkl5", "mpi4py.futures", "mpi4py.run"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            print("ERROR", e.name, "|", e)
        else:
            print("IMPORTED", name)
""")


def test_without_mpi4py_the_other_names_say_to_install_it():
    res = run("-n", "1", "-c", HIDDEN, os.path.dirname(SHIM))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"PATH {[SHIM]} 1"
    assert lines[1] == "MAIN " + os.path.join(SHIM, "__main__.py")
    errors = lines[2:]
    assert [x.split(" |")[0] for x in errors] == [
        "ERROR mpi4py.util", "ERROR mpi4py.util", "ERROR mpi4py.futures", "ERROR mpi4py.run"]
    for x in errors:
        name, msg = x.split()[1], x.split(" | ", 1)[1]
        assert msg.startswith(f"{name} comes from the mpi4py distribution, which is not "
                              f"installed"), x
        assert "`pip install mpi4py`" in msg, x


def test_without_mpi4py_python_m_mpi4py_still_runs(tmp_path):
    # the shim's own __main__ serves `python -m mpi4py prog.py` when mpi4py is absent
    prog = tmp_path / "p.py"
    prog.write_text("from mpi4py import MPI\nprint('HELLO', MPI.COMM_WORLD.Get_rank())\n")
    code = textwrap.dedent(f"""
        import os, runpy, sys
        import driller.MPI
        shim_root = os.path.realpath({os.path.dirname(SHIM)!r})
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") == shim_root
                       or not os.path.isfile(os.path.join(p or ".", "mpi4py", "__init__.py"))]
        import mpi4py
        assert mpi4py.__path__ == [os.path.join(shim_root, "mpi4py")], mpi4py.__path__
        sys.argv = ["mpi4py", {str(prog)!r}]
        runpy.run_module("mpi4py", run_name="__main__", alter_sys=True)
    """)
    res = run("-n", "2", "-c", code)
    assert res.returncode == 0, res.stderr + res.stdout
    assert sorted(res.stdout.splitlines()) == ["HELLO 0", "HELLO 1"]


def test_dash_m_mpi4py_runs_on_the_shim():
    # mpi4py's own runners (-m mpi4py, -m mpi4py.futures) get the shim like any
    # program (the default); --no-mpi4py is the explicit way out
    from driller.mmpi._launcher import parse_args
    for argv in (["-m", "mpi4py", "p.py"], ["-n", "2", "-m", "mpi4py.futures", "p.py"],
                 ["-mmpi4py.bench", "helloworld"]):
        assert parse_args(argv).mpi4py, argv
        assert not parse_args(["--no-mpi4py", *argv]).mpi4py, argv
    # a real run: no --mpi4py given, and the ranks still get driller.MPI
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-m", "driller", "run", "-n", "2", "-m", "mpi4py",
                          "-c", "from mpi4py import MPI; print(MPI.__name__, "
                                "MPI.COMM_WORLD.Get_size())"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["driller.MPI 2", "driller.MPI 2"]
