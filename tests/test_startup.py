"""`driller run`'s start-up path (docs/launcher.md, "Startup").

The launcher parses its options without argparse and starts ranks with its own
fork+exec (no subprocess); ranks that never use mmpi load nothing of driller; those that use
it later attach to the world then.  These tests check the behaviour that the
fast paths must keep (speed itself is measured by benchmarks/launch_startup.py).
"""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from driller.mmpi import _launcher as L

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
PY = sys.executable


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def driller_run(*args, timeout=90, **kw):
    return subprocess.run([PY, "-m", "driller", "run", *args], env=_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------- options without argparse

def test_option_table_matches_the_argparse_parser():
    # _quick() and _split() read _VALUED/_FLAGS; --help and error messages come from
    # the argparse parser: both must know the same spellings, valued or not
    parser = L._parser()
    spellings = {s: a for s, a in parser._option_string_actions.items()
                 if s not in ("-c", "-m")}       # (where the program starts: _split)
    assert set(spellings) == set(L._VALUED) | set(L._FLAGS)
    for s in L._FLAGS:
        assert spellings[s].nargs == 0, s
        assert L._FLAGS[s][0] == spellings[s].dest, s
    for s in L._VALUED:
        assert spellings[s].nargs is None, s
        assert L._VALUED[s][0] == spellings[s].dest, s
    defaults = vars(parser.parse_args([]))
    assert L._DEFAULTS == {k: defaults[k] for k in L._DEFAULTS}
    assert set(defaults) - set(L._DEFAULTS) == {"export", "prog", "m", "c", "args"}


ARGVS = [
    ["-c", "pass"],
    ["-n", "8", "-c", "pass"],
    ["-np", "4", "--tag-output", "--grace=0.5", "--mpi4py", "p.py", "-n", "9"],
    ["-n3", "-mpkg.mod", "a"],
    ["--np=2", "--", "-weird.py"],
    ["--no-mpi4py", "--mpi4py", "--no-mpi4py", "-c", "pass"],
    ["-x", "A", "-xB=1", "-x", "C=-1=2", "--oversubscribe", "--allow-run-as-root", "x.py"],
    ["-n", "2", "-n", "5", "--grace", "0", "--grace", "2.5", "-c", "x", "--grace", "9"],
    ["-n=3", "-c", "pass"],
    ["--bind-to", "cyclic", "-n", "4", "--bind-to=CORE", "-c", "pass"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_quick_parse_is_what_argparse_parses(argv):
    head, _ = L._split(argv)
    quick = L._quick(head)
    assert quick is not None, head
    full = vars(L._parser().parse_args(head))
    assert quick == {k: full[k] for k in quick}, (quick, full)


@pytest.mark.parametrize("argv, message", [
    (["-n", "0", "-c", "pass"], "argument -n/-np/--np: needs at least 1 rank, got 0"),
    (["-n=x", "-c", "pass"], "argument -n/-np/--np: needs a whole number of ranks, got 'x'"),
    (["--grace", "nan", "-c", "pass"], "argument --grace: must not be negative"),
    (["-x", "1A=2", "-c", "pass"], "argument -x: needs VAR or VAR=value"),
    (["-x", "Ä=2", "-c", "pass"], "argument -x: needs VAR or VAR=value"),
    (["--tag-output=1", "-c", "pass"], "ignored explicit argument '1'"),
    (["--bind-to", "socket", "-c", "pass"],
     "argument --bind-to: needs one of none, core, cyclic, got 'socket'"),
])
def test_bad_values_are_worded_by_argparse(argv, message):
    head, _ = L._split(argv)
    assert L._quick(head) is None
    with pytest.raises(L.UsageError, match=re.escape(message)):
        L.parse_args(argv)


def test_help_goes_through_argparse(capsys):
    assert L.parse_args(["-n", "2", "--help", "-c", "pass"]) is None
    assert L.main(["-h"]) == 0
    assert "mpirun compatibility" in capsys.readouterr().out


# ---------------------------------------------------------------- what the launcher loads

HEAVY = ("typing", "dataclasses", "argparse", "subprocess", "re", "inspect", "numpy",
         "driller.segment", "driller.mmpi._comm", "driller.mmpi._transport")


def test_launcher_loads_none_of_the_heavy_modules():
    # -X importtime logs every import of the `driller run` process and of its
    # supervisor (a fork, same stderr); the ranks (new interpreters without the
    # option) log nothing, and here they use mmpi, which loads numpy in them
    rank = "from driller.mmpi import COMM_WORLD as c; assert c.allreduce(1) == c.size == 2"
    res = subprocess.run([PY, "-X", "importtime", "-m", "driller", "run", "-n", "2", "-c", rank],
                         env=_env(), capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    loaded = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", res.stderr, re.M))
    assert "driller.mmpi._launcher" in loaded and "driller.mmpi._world" in loaded, loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


# ---------------------------------------------------------------- ranks that never use mmpi

def test_rank_that_never_uses_mmpi_loads_nothing_and_leaves_nothing():
    code = textwrap.dedent("""
        import os, sys
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("driller", "numpy", "mpi4py"))
        fd = int(os.environ["DRILLER_MMPI_WORLD_FD"])
        print("RANK", os.environ["DRILLER_MMPI_RANK"], os.environ["DRILLER_MMPI_SIZE"],
              os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:driller:mmpi-world"),
              mods, "PID", os.getpid(), flush=True)
    """)
    shm = set(os.listdir("/dev/shm"))
    res = driller_run("-n", "3", "-c", code)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lines = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("RANK"))
    assert [ln.split(" PID")[0] for ln in lines] == [f"RANK {r} 3 True []" for r in range(3)]
    pids = [int(p) for p in re.findall(r"PID (\d+)", res.stdout)]
    assert len(pids) == 3
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
    assert {f for f in set(os.listdir("/dev/shm")) - shm if f.startswith("driller")} == set()


def test_rank_that_uses_mmpi_late_gets_its_place():
    # nothing of driller at start; mpi4py's shim (the default) and driller.mmpi
    # imported only after the rank has done other work: right rank, size, messages
    code = textwrap.dedent("""
        import os, sys, time
        assert not any(m.startswith(("driller", "numpy")) for m in sys.modules)
        time.sleep(0.05 * int(os.environ["DRILLER_MMPI_RANK"]))
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        from driller.mmpi import COMM_WORLD
        assert COMM_WORLD.Get_rank() == c.Get_rank()
        total = c.allreduce(c.Get_rank())
        right = c.sendrecv(c.Get_rank(), dest=(c.Get_rank() + 1) % c.Get_size(),
                           source=(c.Get_rank() - 1) % c.Get_size())
        print("R", c.Get_rank(), c.Get_size(), total, right, flush=True)
    """)
    res = driller_run("-n", "4", "-c", code)
    assert res.returncode == 0, res.stderr
    got = sorted(ln for ln in res.stdout.splitlines() if ln.startswith("R "))
    assert got == [f"R {r} 4 6 {(r - 1) % 4}" for r in range(4)], res.stdout


def test_a_failing_rank_is_named_when_the_others_attach_late():
    # rank 2 dies before anyone has touched mmpi; those blocked later in a
    # collective learn it (PeerDiedError) and the launcher names rank 2
    code = textwrap.dedent("""
        import os, sys, time
        if os.environ["DRILLER_MMPI_RANK"] == "2":
            sys.exit(7)
        time.sleep(0.2)
        from driller.mmpi import COMM_WORLD as c
        c.barrier()
    """)
    res = driller_run("-n", "3", "-c", code)
    assert res.returncode == 7, res.stderr
    assert re.search(r"driller run: rank 2 \(pid \d+\) exited with code 7", res.stderr), res.stderr


# ---------------------------------------------------------------- ranks as started

def test_fork_exec_reports_an_exec_failure_as_popen_would():
    # the supervisor's lean fork+exec: a program that cannot be executed raises its
    # OSError in the launcher (no half-started rank), a good one gets its pid back
    code = textwrap.dedent('''
        import os
        from driller.mmpi._launcher import _fork_exec
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            _fork_exec(["/nonexistent/prog"], {}, True, null, null, null, os.getpid())
        except FileNotFoundError as e:
            print("RAISED", e.filename)
        pid = _fork_exec(["/bin/sh", "-c", "exit 5"], {}, True, null, null, null, os.getpid())
        print("STATUS", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        me = os.getpid()
        print("CHILDREN", open(f"/proc/{me}/task/{me}/children").read().split())
    ''')
    res = subprocess.run([PY, "-c", code], env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "RAISED /nonexistent/prog" in res.stdout, res.stdout
    assert "STATUS 5" in res.stdout and "CHILDREN []" in res.stdout, res.stdout


def test_ranks_inherit_only_stdio_and_the_world_block():
    # Popen(close_fds=True) gave ranks fds 0, 1, 2 and the world block only; the
    # supervisor's own fork+exec must close an inheritable fd of the launcher too
    r, w = os.pipe()
    os.set_inheritable(w, True)
    code = textwrap.dedent("""
        import os
        def alive(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False
        fds = [fd for fd in map(int, os.listdir("/proc/self/fd")) if alive(fd)]
        print("FDS", sorted(fds), os.environ["DRILLER_MMPI_WORLD_FD"], flush=True)
    """)
    try:
        res = driller_run("-n", "2", "-c", code, pass_fds=(w,))
    finally:
        os.close(r)
        os.close(w)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("FDS")]
    assert len(lines) == 2
    for ln in lines:
        fds, world = re.fullmatch(r"FDS \[(.*)\] (\d+)", ln).groups()
        assert sorted(int(x) for x in fds.split(", ")) == sorted([0, 1, 2, int(world)]), ln


def test_ranks_run_in_their_own_process_group_with_default_signals():
    code = textwrap.dedent("""
        import os, signal
        print("PG", os.getpgid(0) == os.getpid(),
              [signal.getsignal(s) == signal.SIG_DFL for s in
               (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGTTOU)],
              flush=True)
    """)
    res = driller_run("-n", "2", "-c", code)
    assert res.returncode == 0, res.stderr
    # (SIGINT shows Python's own handler in a Python rank; a signal this process
    # ignores stays ignored in the ranks, as across an exec: under `nohup` SIGHUP)
    want = [False] + [signal.getsignal(s) is not signal.SIG_IGN for s in
                      (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGTTOU)]
    assert res.stdout.splitlines() == [f"PG True {want}"] * 2


def test_stdin_goes_to_rank_0_only():
    code = "import os, sys; print('IN', os.environ['DRILLER_MMPI_RANK'], repr(sys.stdin.read()))"
    res = driller_run("-n", "2", "-c", code, input="hello")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["IN 0 'hello'", "IN 1 ''"]


def test_in_process_launcher_still_sets_pdeathsig(capfd):
    # main() without a supervisor: nothing else would stop the ranks if this
    # process were SIGKILLed, so they still get PR_SET_PDEATHSIG (Popen path)
    code = ("import ctypes, signal; v = ctypes.c_int(); "
            "ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); "  # PR_GET_PDEATHSIG
            "print('PDEATH', v.value == signal.SIGKILL)")
    assert L.main(["-n", "2", "-c", code]) == 0
    assert capfd.readouterr().out.splitlines() == ["PDEATH True"] * 2


def test_exit_status_and_output_of_the_driller_command():
    # run_program ends the process with os._exit once the job is over: the
    # output must still be complete and the status the job's
    code = ("import os, sys; r = int(os.environ['DRILLER_MMPI_RANK']); "
            "sys.stdout.write('x' * 60000 + '\\n'); sys.exit(5 if r == 1 else 0)")
    for cmd in ([PY, "-m", "driller", "run"], [PY, "-m", "driller.mmpi._launcher"]):
        res = subprocess.run([*cmd, "-n", "2", "-c", code], env=_env(), capture_output=True,
                             text=True, timeout=90)
        assert res.returncode == 5, res.stderr
        assert "rank 1 (pid" in res.stderr and "exited with code 5" in res.stderr
        assert res.stdout.count("x" * 60000 + "\n") >= 1


def test_launcher_started_with_stdout_closed():
    # the world block's memfd (or a pipe) may then get fd 1: ranks must still find
    # the block at the fd they are told, with their stdout on the launcher's pipe
    code = textwrap.dedent("""
        import os, sys
        fd = int(os.environ["DRILLER_MMPI_WORLD_FD"])
        ok = fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:driller:mmpi-world")
        from driller.mmpi import COMM_WORLD as c
        c.barrier()
        sys.stderr.write(f"WORLD {ok}\\n")
        print("to a closed stdout")
    """)
    res = subprocess.run(["sh", "-c", 'exec "$0" -m driller run -n 2 -c "$1" 1>&-', PY, code],
                         env=_env(), capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == ["WORLD True"] * 2, res.stderr
