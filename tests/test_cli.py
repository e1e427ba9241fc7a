"""The `driller` command line, as a user types it: real subprocesses.

`python -m driller ...` (the same `driller.cli:main` as the `driller` script).
What `driller run` does once started is tested in tests/test_launcher.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

import driller

PY = sys.executable
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
COMMANDS = ("run", "bench", "info", "demo")


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def driller_cli(*args, cwd=None, env=None, timeout=60):
    return subprocess.run([PY, "-m", "driller", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


MARK = "import pathlib; pathlib.Path('ran').write_text('x')"   # proves a program ran


# ---------------------------------------------------------------- --version, --help

@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    res = driller_cli(flag)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"driller {driller.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", driller.__version__)


def test_top_level_help_lists_every_command():
    res = driller_cli("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: driller ")
    for cmd in COMMANDS:
        assert re.search(rf"^\s+{cmd}\s+\S", res.stdout, re.M), (cmd, res.stdout)
    assert driller_cli("help").stdout == res.stdout


def test_version_and_help_do_not_import_numpy():
    code = textwrap.dedent("""
        import sys
        from driller.cli import main
        for args in (["--version"], ["--help"]):
            try:
                main(args)
            except SystemExit as e:
                assert e.code == 0, e.code
        print("numpy" in sys.modules)
    """)
    res = subprocess.run([PY, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "False"


def test_launcher_side_of_run_does_not_import_numpy():
    # `driller run` pays only for what the launcher needs: importing the launcher,
    # running a job supervised (`driller run`, forks a supervisor) and unsupervised
    # (the loop in this process: creates the world block, records a death in it)
    # must leave numpy unimported in the launcher process, while the ranks use mmpi.
    rank = ("import sys; from driller.mmpi import COMM_WORLD as c; assert c.size == 2; "
            "x = c.allreduce(c.rank + 1); assert x == 3, x; "
            "print('numpy' in sys.modules, flush=True); sys.exit(3 if c.rank else 0)")
    code = textwrap.dedent(f"""
        import sys
        import driller.mmpi._launcher as L
        print("import", "numpy" in sys.modules, flush=True)
        from driller.cli import main
        rc1 = main(["run", "-n", "2", "-c", {rank!r}])
        rc2 = L.main(["-n", "2", "-c", {rank!r}])
        print("rc", rc1, rc2, flush=True)
        print("after", "numpy" in sys.modules, flush=True)
    """)
    res = subprocess.run([PY, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=120)
    lines = res.stdout.splitlines()
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert lines[0] == "import False", lines
    assert lines[-2] == "rc 3 3", (lines, res.stderr)
    assert lines[-1] == "after False", lines
    # each rank (prefixed by the launcher) did import numpy: the job really ran mmpi
    ranks = [ln for ln in lines[1:-2]]
    assert len(ranks) == 4 and all(ln.endswith("True") for ln in ranks), lines


def test_mmpi_names_resolve_lazily():
    # driller.mmpi loads its submodules on first use; every public name still resolves
    code = textwrap.dedent("""
        import sys
        import driller.mmpi as m
        assert "driller.mmpi._comm" not in sys.modules and "numpy" not in sys.modules
        assert set(m.__all__) <= set(dir(m))
        from driller.mmpi import COMM_WORLD, SUM, Comm, spawn, create_world, Status
        assert isinstance(COMM_WORLD, Comm) and COMM_WORLD.size == 1
        assert COMM_WORLD.allreduce(5, op=SUM) == 5
        ns = {}
        exec("from driller.mmpi import *", ns)
        missing = [n for n in m.__all__ if n not in ns]
        assert not missing, missing
        assert ns["spawn"] is spawn and ns["create_world"] is m._world.create_world
        try:
            m.NOT_A_NAME
        except AttributeError as e:
            assert "NOT_A_NAME" in str(e)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    res = subprocess.run([PY, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_has_its_own_help_and_runs_nothing(cmd, tmp_path):
    # `run` gets a program that would leave a file; `bench` would make its
    # output directory; `demo` and `info` would print their results
    extra = ["-n", "2", "-c", MARK] if cmd == "run" else []
    for help_flag in ("--help", "-h"):
        res = driller_cli(cmd, help_flag, *extra, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"usage: driller {cmd}"), res.stdout
        assert "-h, --help" in res.stdout
        assert res.stderr == ""
        assert os.listdir(tmp_path) == []          # no `ran`, no bench-results
        assert "pickles to" not in res.stdout and "map cache of pid" not in res.stdout
    assert driller_cli("help", cmd, cwd=tmp_path).stdout == res.stdout


def test_run_help_names_the_options():
    out = driller_cli("run", "--help").stdout
    for opt in ("-np", "--tag-output", "--no-mpi4py", "--mpi4py", "-x VAR[=value]", "--grace",
                "--oversubscribe", "--host", "docs/scaleout.md", "-m module", "-c code"):
        assert opt in out, opt


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args, prog, message", [
    ([], "driller", "a command is required"),
    (["bogus"], "driller", "invalid choice: 'bogus'"),
    (["help", "bogus"], "driller", "invalid choice: 'bogus'"),
    (["--bogus"], "driller", "unrecognized arguments: --bogus"),
    (["run"], "driller run", "no program given"),
    (["run", "--bogus", "-c", MARK], "driller run", "unknown option '--bogus'"),
    (["run", "--tag", "-c", MARK], "driller run", "unknown option '--tag'"),  # no abbreviations
    (["run", "-n", "0", "-c", MARK], "driller run", "at least 1 rank"),
    (["run", "-np", "two", "-c", MARK], "driller run", "whole number of ranks, got 'two'"),
    (["run", "--grace", "-1", "-c", MARK], "driller run", "must not be negative"),
    (["run", "-x", "-c", MARK], "driller run", "needs VAR or VAR=value"),
    (["run", "-x"], "driller run", "-x needs a value"),
    (["run", "--oversubscribe=yes", "-c", MARK], "driller run", "ignored explicit argument"),
    (["run", "-n", "2", "no/such/prog.py"], "driller run", "cannot open 'no/such/prog.py'"),
    (["run", "-n", "3", "python", "prog.py", "-v"], "driller run",   # (mpirun's habit)
     "'python' is a Python interpreter: driller run starts the program with this one "),
    (["run", "-n", "2", sys.executable, "-c", MARK], "driller run",
     "give the program first: driller run -n 2 -c "),
    (["run", "-n", "2", "python3.13t", "-u", "-X", "dev", "prog.py"], "driller run",
     "give the program first: driller run -n 2 prog.py"),   # (its options dropped)
    (["demo", "extra"], "driller demo", "unrecognized arguments: extra"),
    (["info", "--bogus"], "driller info", "unrecognized arguments: --bogus"),
    (["bench", "--rounds", "x"], "driller bench", "invalid int value: 'x'"),
])
def test_usage_error_is_short_and_exits_2(args, prog, message, tmp_path):
    res = driller_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"usage: {prog} "), res.stderr
    assert lines[-1].startswith(f"{prog}: error: ") and message in lines[-1], res.stderr
    # the usage line(s), then one error line: not the whole help
    assert len(lines) <= 8 and sum("error" in x for x in lines) == 1, res.stderr
    assert os.listdir(tmp_path) == []          # nothing ran


# ---------------------------------------------------------------- mpirun spellings

def test_mpirun_spellings_np_x_oversubscribe(tmp_path):
    code = textwrap.dedent("""
        import os
        g = os.environ.get
        print("R", g("DRILLER_MMPI_RANK"), g("FROM_US"), g("GIVEN"), repr(g("EMPTY")),
              g("NOT_SET", "unset"))
    """)
    env = _env(FROM_US="ours", GIVEN="overridden")
    env.pop("NOT_SET", None)
    res = driller_cli("run", "-np", "3", "--oversubscribe", "--allow-run-as-root",
                      "-x", "FROM_US", "-x", "GIVEN=a=b", "-xEMPTY=", "-x", "NOT_SET",
                      "-c", code, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [f"R {r} ours a=b '' unset" for r in range(3)]


@pytest.mark.parametrize("args", [["--host", "a,b"], ["-H", "a"], ["-Ha"],
                                  ["--hostfile", "hosts"], ["--host=a"]])
def test_host_refused_with_a_pointer_to_scaleout(args, tmp_path):
    res = driller_cli("run", "-n", "2", *args, "-c", MARK, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    err = res.stderr.splitlines()[-1]
    assert "this machine" in err and "docs/scaleout.md" in err and "mpiexec -n N" in err
    assert os.listdir(tmp_path) == []


def test_options_after_the_program_are_the_programs(tmp_path):
    # mpirun spellings (and --host) after the program are its own arguments
    res = driller_cli("run", "-np", "2", "-c", "import sys; print(sys.argv[1:])",
                      "--host", "a", "-x", "V", "--oversubscribe", "--", "-np", "9")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["['--host', 'a', '-x', 'V', '--oversubscribe', '--', "
                                       "'-np', '9']"] * 2


# ---------------------------------------------------------------- mpi4py by default

MPI4PY_HELLO = textwrap.dedent("""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    print(f"process {comm.Get_rank()} of {comm.Get_size()}")
""")


def test_mpi4py_program_gets_driller_mpi_by_default(tmp_path):
    prog = tmp_path / "hello.py"
    prog.write_text(MPI4PY_HELLO)
    res = driller_cli("run", "-n", "2", str(prog))
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["process 0 of 2", "process 1 of 2"]


def test_no_mpi4py_gives_the_real_one_a_singleton(tmp_path):
    prog = tmp_path / "hello.py"
    prog.write_text(MPI4PY_HELLO)
    # (Open MPI's shared-memory transport would leave files in /dev/shm: a
    # singleton needs only `self`, and -x says so)
    res = driller_cli("run", "-n", "2", "--no-mpi4py", "-x", "OMPI_MCA_btl=self", str(prog),
                      timeout=120)
    if importlib.util.find_spec("mpi4py") is not None:
        # there is no MPI launcher here: each rank is a world of its own
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["process 0 of 1"] * 2
    else:
        assert res.returncode == 1
        assert "No module named 'mpi4py'" in res.stderr
