"""`driller run` and `mmpi.spawn`: real launchers, real ranks, real signals.

No timed assertions except deadlines that are behaviour ("stopped within 2 s"),
and those are checked generously (< 10 s).  Tests that stop ranks check by pid
that they (and what they started) are gone; spawn tests compare /proc/self/fd
and our children before and after; tests/conftest.py checks every test for
leftover children and /dev/shm files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from driller import _linux

PY = sys.executable
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
DEADLINE = 10.0   # the launcher aims at 2 s; measured generously


# ---------------------------------------------------------------- helpers

def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def driller_run(*args, cwd=None, timeout=60, env=None):
    """Run `python -m driller run ARGS`, return the CompletedProcess (text)."""
    return subprocess.run([PY, "-m", "driller", "run", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def start_run(*args, cwd=None):
    return subprocess.Popen([PY, "-m", "driller", "run", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pids_in(text: str, tag: str = "PID") -> list[int]:
    return [int(x) for x in re.findall(rf"{tag} (\d+)", text)]


def assert_gone(pids, within: float = 5.0):
    """Every pid is dead (or a zombie about to be reaped by init) within a few s."""
    deadline = time.monotonic() + within
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _linux.pid_alive(p)]
        if alive:
            time.sleep(0.05)
    assert not alive, f"processes left behind: {alive}"


def read_until(stream, pattern: str, count: int, limit: float = 30.0) -> str:
    """Read lines of a Popen text stream until `count` of them match pattern."""
    seen, out = 0, []
    deadline = time.monotonic() + limit
    while seen < count:
        assert time.monotonic() < deadline, f"only {seen}/{count} lines matched: {out}"
        line = stream.readline()
        assert line, f"stream ended after {seen}/{count} matching lines: {out}"
        out.append(line)
        if re.search(pattern, line):
            seen += 1
    return "".join(out)


def _shm():
    return {f for f in os.listdir("/dev/shm") if "drill" in f or "mmpi" in f}


@pytest.fixture(autouse=True)
def no_shm_leak():
    before = _shm()
    yield
    assert _shm() - before == set()


# ---------------------------------------------------------------- rank environment

@pytest.mark.parametrize("n", [1, 2, 8])
def test_rank_and_size_env(n):
    code = textwrap.dedent("""
        import os
        fd = int(os.environ["DRILLER_MMPI_WORLD_FD"])
        os.fstat(fd)   # the world block is really there
        fds = os.listdir("/proc/self/fd")   # (one more: the directory being listed)
        assert len(fds) == 5 and {"0", "1", "2", str(fd)} < set(fds), fds
        print("RANK", os.environ["DRILLER_MMPI_RANK"], "SIZE", os.environ["DRILLER_MMPI_SIZE"],
              "PID", os.getpid(), "PGID", os.getpgid(0))
    """)
    res = driller_run("-n", str(n), "-c", code)
    assert res.returncode == 0, res.stderr
    found = re.findall(r"RANK (\d+) SIZE (\d+) PID (\d+) PGID (\d+)", res.stdout)
    assert sorted(int(r) for r, _, _, _ in found) == list(range(n))
    assert {int(s) for _, s, _, _ in found} == {n}
    # each rank leads its own process group
    assert all(pid == pgid for _, _, pid, pgid in found)
    assert_gone(pids_in(res.stdout))


def test_program_path_and_arguments(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import os, sys
        print("ARGV", os.environ["DRILLER_MMPI_RANK"], sys.argv[1:], __name__,
              os.path.basename(sys.argv[0]))
    """))
    res = driller_run("-n", "2", str(prog), "a b", "--tag-output", "-n", "5")
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines == [f"ARGV {r} ['a b', '--tag-output', '-n', '5'] __main__ prog.py"
                     for r in range(2)]


def test_module_form(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "hello.py").write_text(textwrap.dedent("""
        import os, sys
        if __name__ == "__main__":
            print("MOD", os.environ["DRILLER_MMPI_RANK"], sys.argv[1:])
    """))
    res = driller_run("-n", "2", "-m", "mypkg.hello", "x", "-c", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["MOD 0 ['x', '-c']", "MOD 1 ['x', '-c']"]


def test_code_form_and_python_m_entry():
    res = subprocess.run([PY, "-m", "driller", "run", "-n3", "-c",
                          "import os,sys; print('C', os.environ['DRILLER_MMPI_RANK'], sys.argv[1:])",
                          "q"], env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [f"C {r} ['q']" for r in range(3)]


@pytest.mark.parametrize("args, message", [
    ([], "no program"),
    (["-n", "0", "-c", "pass"], "at least 1"),
    (["-n", "x", "-c", "pass"], "whole number"),
    (["-n"], "needs a value"),
    (["--grace", "-1", "-c", "pass"], "must not be negative"),
    (["--bogus", "-c", "pass"], "unknown option"),
    (["-n", "100000", "-c", "pass"], "at most"),
    (["/nonexistent/prog.py"], "no such file"),
])
def test_usage_errors(args, message, capsys):
    from driller.mmpi._launcher import main
    assert main(args) == 2          # in-process: nothing is started before parsing
    err = capsys.readouterr().err
    assert message in err and "usage: driller run" in err


def test_option_parsing():
    from driller.mmpi._launcher import parse_args
    o = parse_args(["-np", "4", "--tag-output", "--grace=0.5", "--mpi4py", "p.py", "-n", "9"])
    assert (o.n, o.tag_output, o.grace, o.mpi4py, o.kind, o.target, o.args) == \
        (4, True, 0.5, True, "path", "p.py", ["-n", "9"])
    assert parse_args(["-n3", "-mpkg.mod", "a"]).command()[1:] == ["-m", "pkg.mod", "a"]
    assert parse_args(["--np=2", "--", "-weird.py"]).target == "-weird.py"
    assert parse_args(["-c", "print(1)", "-c"]).command()[1:] == ["-c", "print(1)", "-c"]
    assert parse_args(["-h"]) is None


def test_help():
    res = driller_run("--help")
    assert res.returncode == 0 and "--tag-output" in res.stdout


# ---------------------------------------------------------------- output

WRITER = textwrap.dedent("""
    import os, sys
    r = int(os.environ["DRILLER_MMPI_RANK"])
    for i in range(200):
        # a line in three writes, flushed separately: the launcher must still
        # forward it whole, never mixed with another rank's line
        sys.stdout.write(f"rank{r}-line{i}-"); sys.stdout.flush()
        sys.stdout.write("x" * (i * 7 % 300)); sys.stdout.flush()
        sys.stdout.write(f"-end{r}\\n"); sys.stdout.flush()
    print(f"err{r}", file=sys.stderr)
    sys.stdout.write(f"tail{r}")   # no final newline
""")
LINE = re.compile(r"^(?:\[(\d)\] )?rank(\d)-line(\d+)-x*-end(\d)$")


def test_output_forwarded_line_by_line():
    res = driller_run("-n", "4", "-c", WRITER)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    body = [ln for ln in lines if not ln.startswith("tail")]
    assert len(body) == 800
    per_rank = {r: [] for r in range(4)}
    for ln in body:
        m = LINE.match(ln)
        assert m, f"mangled line: {ln!r}"
        assert m.group(2) == m.group(4)
        per_rank[int(m.group(2))].append(int(m.group(3)))
    assert all(v == list(range(200)) for v in per_rank.values())   # in order per rank
    assert sorted(ln for ln in lines if ln.startswith("tail")) == [f"tail{r}" for r in range(4)]
    assert sorted(res.stderr.splitlines()) == [f"err{r}" for r in range(4)]


def test_tag_output():
    res = driller_run("-n", "3", "--tag-output", "-c", WRITER)
    assert res.returncode == 0, res.stderr
    for ln in res.stdout.splitlines():
        m = LINE.match(ln)
        if m:
            assert m.group(1) == m.group(2)
        else:
            assert re.fullmatch(r"\[(\d)\] tail\1", ln), ln
    assert sorted(res.stderr.splitlines()) == [f"[{r}] err{r}" for r in range(3)]


def test_single_rank_output_is_verbatim():
    res = driller_run("-c", "import sys; sys.stdout.write('no newline')")
    assert res.returncode == 0 and res.stdout == "no newline"


def test_stdin_goes_to_rank_0_only():
    code = "import os, sys; print('IN', os.environ['DRILLER_MMPI_RANK'], repr(sys.stdin.read()))"
    res = subprocess.run([PY, "-m", "driller", "run", "-n", "2", "-c", code], input="hello\n",
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["IN 0 'hello\\n'", "IN 1 ''"]


# ---------------------------------------------------------------- failures

def test_exit_code_propagates():
    res = driller_run("-n", "3", "-c",
                      "import os,sys; sys.exit(7 if os.environ['DRILLER_MMPI_RANK'] == '2' else 0)")
    assert res.returncode == 7
    assert re.search(r"driller run: rank 2 \(pid \d+\) exited with code 7", res.stderr)
    assert res.stderr.count("driller run:") == 1


def test_a_rank_left_waiting_by_a_normal_exit_is_named_with_its_own_status():
    # rank 0 exits normally without sending; rank 1's Recv fails (PeerDiedError, code
    # 1): the report names rank 1's status as rank 1's, and rank 0 as the one it needed
    # (before: "rank 0 (pid N) exited with code 1", rank 1's code under rank 0's name)
    code = textwrap.dedent("""
        import numpy as np
        from driller import MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 1:
            comm.Recv(np.zeros(4), source=0, tag=1)
    """)
    res = driller_run("-n", "2", "-c", code)
    assert res.returncode == 1, res.stderr
    assert re.search(r"driller run: rank 1 \(pid \d+\) exited with code 1: it still needed "
                     r"rank 0 \(pid \d+\), which exited normally", res.stderr), res.stderr


def test_all_ranks_succeed_exit_zero():
    res = driller_run("-n", "4", "-c", "import sys; sys.exit(0)")
    assert res.returncode == 0 and "driller run:" not in res.stderr


def test_rank_raises_others_stopped():
    code = textwrap.dedent("""
        import os, time
        r = os.environ["DRILLER_MMPI_RANK"]
        print("PID", os.getpid(), flush=True)
        if r == "1":
            time.sleep(0.5)
            raise RuntimeError("rank one is broken")
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = driller_run("-n", "4", "-c", code)
    elapsed = time.monotonic() - t0
    assert res.returncode == 1
    assert "RuntimeError: rank one is broken" in res.stderr
    assert re.search(r"rank 1 \(pid \d+\) exited with code 1", res.stderr)
    assert elapsed < DEADLINE + 5, elapsed
    pids = pids_in(res.stdout)
    assert len(pids) == 4
    assert_gone(pids)


def test_rank_sigkilled_while_others_sleep():
    code = textwrap.dedent("""
        import os, signal, time
        print("PID", os.getpid(), flush=True)
        if os.environ["DRILLER_MMPI_RANK"] == "2":
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = driller_run("-n", "3", "-c", code)
    elapsed = time.monotonic() - t0
    assert res.returncode == 128 + signal.SIGKILL
    assert re.search(r"rank 2 \(pid \d+\) was killed by signal SIGKILL", res.stderr)
    assert elapsed < DEADLINE + 5, elapsed
    pids = pids_in(res.stdout)
    assert len(pids) == 3
    assert_gone(pids)


def test_rank_ignoring_sigterm_is_killed_after_grace():
    code = textwrap.dedent("""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("PID", os.getpid(), flush=True)
        if os.environ["DRILLER_MMPI_RANK"] == "0":
            time.sleep(0.5)
            raise SystemExit(3)
        time.sleep(60)
    """)
    t0 = time.monotonic()
    res = driller_run("-n", "2", "--grace", "0.5", "-c", code)
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stderr
    assert elapsed < DEADLINE + 5, elapsed
    assert_gone(pids_in(res.stdout))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_stops_every_rank(sig):
    code = 'import os, time; print("PID", os.getpid(), flush=True); time.sleep(60)'
    p = start_run("-n", "3", "--grace", "5", "-c", code)   # time to print tracebacks
    try:
        out = read_until(p.stdout, r"PID \d+", 3)
        t0 = time.monotonic()
        p.send_signal(sig)
        rest, err = p.communicate(timeout=DEADLINE + 20)
        elapsed = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 128 + sig
    assert f"got {signal.Signals(sig).name}" in err
    if sig == signal.SIGINT:       # passed on as ^C: each rank shows where it was
        assert err.count("KeyboardInterrupt") == 3, err
    assert elapsed < DEADLINE, elapsed
    assert_gone(pids_in(out + rest))


def _sigkill_launcher(also_supervisor: bool) -> list[int]:
    """Start 2 sleeping ranks that never load driller, SIGKILL `driller run` (and
    its supervisor with it if asked); the ranks' pids."""
    code = ('import os, time; print("PID", os.getpid(), "SUPERVISOR", os.getppid(), '
            'flush=True); time.sleep(60)')
    p = start_run("-n", "2", "-c", code)
    try:
        out = read_until(p.stdout, r"PID \d+", 2)
        sups = set(pids_in(out, "SUPERVISOR"))
        assert len(sups) == 1 and p.pid not in sups, out
        if also_supervisor:
            os.kill(sups.pop(), signal.SIGKILL)
        p.kill()
        p.wait(timeout=30)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
    return pids_in(out)


def test_launcher_sigkilled_takes_its_ranks_along():
    assert_gone(_sigkill_launcher(also_supervisor=False))   # the supervisor kills them


def test_launcher_and_supervisor_sigkilled_together_take_the_ranks_along():
    # `pkill -9 driller` or `kill -9 -- -PGID` kills both driller processes at once:
    # nobody is left to kill the ranks (their own process groups), so the kernel must
    # (PR_SET_PDEATHSIG), also for ranks that never load driller
    assert_gone(_sigkill_launcher(also_supervisor=True), within=DEADLINE)


def test_grandchildren_are_not_left_behind():
    # a rank starts a daemon-like grandchild (new session, so its process group
    # is not the rank's) and a plain forked child; both outlive the rank
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        d = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)"])
        pid = os.fork()
        if pid == 0:
            time.sleep(60); os._exit(0)
        print("PID", d.pid, "PID", pid, flush=True)
    """)
    res = driller_run("-n", "2", "-c", code)
    assert res.returncode == 0, res.stderr
    assert "driller run: stopped 4 processes that the ranks left running" in res.stderr
    pids = pids_in(res.stdout)
    assert len(pids) == 4
    assert_gone(pids)


# ---------------------------------------------------------------- nothing outlives the job

# Each rank starts four descendants and reports their pids once all are running:
# a forked child and its own child (in the rank's process group), a daemon that
# setsid()s (a new session), and a double-forked one (its parent exits at once,
# so it is an orphan).  They report through a pipe, so READY means all are up.
FAMILY = textwrap.dedent("""
    import os, subprocess, sys, time
    r, w = os.pipe()
    def report_and_sleep():
        os.write(w, b"%d\\n" % os.getpid()); time.sleep(60); os._exit(0)
    c = os.fork()
    if c == 0:
        if os.fork() == 0:
            report_and_sleep()      # grandchild
        report_and_sleep()          # child
    subprocess.Popen([sys.executable, "-c",
                      "import os, sys, time; os.setsid(); "
                      "os.write(int(sys.argv[1]), b'%d\\\\n' % os.getpid()); time.sleep(60)",
                      str(w)], pass_fds=(w,))
    m = os.fork()
    if m == 0:
        if os.fork() == 0:
            report_and_sleep()      # double-forked orphan
        os._exit(0)
    os.waitpid(m, 0)
    got = b""
    while got.count(b"\\n") < 4:
        got += os.read(r, 100)
    for pid in got.split():
        print("PID", int(pid), flush=True)
    print("PID", os.getpid(), "SUPERVISOR", os.getppid(), "READY", flush=True)
    time.sleep(60)
""")


def _gone_within(pids, limit: float) -> float | None:
    """Seconds until every pid is gone (zombies count as gone), None after limit."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not any(_linux.pid_alive(p) for p in pids):
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def _start_family(n: int):
    p = start_run("-n", str(n), "-c", FAMILY)
    out = read_until(p.stdout, r"READY", n)
    pids = pids_in(out)
    supervisors = set(pids_in(out, "SUPERVISOR"))
    assert len(pids) == 5 * n and len(supervisors) == 1, out
    sup = supervisors.pop()
    assert sup != p.pid and _linux.proc_ids(sup)[1] == p.pid   # the launcher's child
    return p, pids, sup


def test_launcher_sigkilled_takes_every_descendant_along():
    # SIGKILL of `driller run` ends the ranks and all they started within 2 s,
    # and the supervisor that did it is gone too.  The 2 s bound is the issue's;
    # on a loaded machine one attempt of two must meet it, and all must meet 10 s.
    times = []
    for _ in range(2):
        p, pids, sup = _start_family(2)
        try:
            p.kill()
            t0 = time.monotonic()
            took = _gone_within([*pids, sup], DEADLINE)
            times.append(took)
            assert took is not None, f"left behind: {[q for q in pids if _linux.pid_alive(q)]}"
        finally:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
            for q in pids:                  # (only if the assertion failed)
                try:
                    os.kill(q, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if took < 2.0:
            break
    assert min(times) < 2.0, times


def test_supervisor_sigkilled_its_orphans_are_killed_by_the_launcher():
    p, pids, sup = _start_family(1)
    try:
        os.kill(sup, signal.SIGKILL)
        out, err = p.communicate(timeout=DEADLINE + 20)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 128 + signal.SIGKILL
    assert f"the supervisor (pid {sup}) was killed by signal SIGKILL" in err
    assert_gone([*pids, sup], within=DEADLINE)


def test_normal_run_leaves_no_supervisor():
    code = textwrap.dedent("""
        import os
        from driller import _linux
        sup = os.getppid()
        print("SUP", sup, "LAUNCHER", _linux.proc_ids(sup)[1], flush=True)
        # the supervisor ignores SIGTTOU (it writes to the terminal from its own
        # process group); the ranks must not inherit that
        import signal
        assert signal.getsignal(signal.SIGTTOU) is signal.SIG_DFL
    """)
    p = start_run("-n", "2", "-c", code)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    sups = set(pids_in(out, "SUP"))
    assert len(sups) == 1 and set(pids_in(out, "LAUNCHER")) == {p.pid}, out
    assert_gone(sups, within=1.0)      # reaped by the launcher before it exited


def test_group_ctrl_c_reaches_the_ranks_once():
    # a ^C from the terminal goes to the launcher's whole process group: the
    # supervisor (own group) must get it once, through the launcher, so that the
    # ranks get the grace period of a first ^C (a second one would SIGKILL them)
    code = 'import os, time; print("PID", os.getpid(), flush=True); time.sleep(60)'
    p = subprocess.Popen([PY, "-m", "driller", "run", "-n", "2", "--grace", "5", "-c", code],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out = read_until(p.stdout, r"PID \d+", 2)
        os.killpg(p.pid, signal.SIGINT)
        rest, err = p.communicate(timeout=DEADLINE + 20)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 128 + signal.SIGINT, err
    assert err.count("KeyboardInterrupt") == 2, err
    assert "got SIGINT; stopped 2 of 2 ranks" in err
    assert_gone(pids_in(out + rest))


_COUNT_RT = r"""
import os, signal, sys
sig = signal.SIGRTMIN          # real-time: every send is queued, none merged
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
if sys.argv[1] == "leave":     # join a grandchild's group: the rank left its own
    r, w = os.pipe()
    gc = os.fork()
    if gc == 0:                # (lives until its parent exits: EOF on r)
        os.setpgid(0, 0)
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.setpgid(gc, gc)
    os.setpgid(0, gc)
print("ready", os.getpgid(0), flush=True)
sys.stdin.readline()
n = 0
while signal.sigtimedwait([sig], 0.5) is not None:
    n += 1
print("got", n, flush=True)
"""


@pytest.mark.parametrize("where", ["own group", "left its group"])
def test_a_stopping_rank_is_signalled_once(where):
    # the supervisor stops a rank (^C, SIGTERM) through its process group and, only
    # if the rank left that group, through its pidfd: both at once delivered the
    # signal twice whenever the rank ran between the two sends (under load, a second
    # KeyboardInterrupt in the middle of the first one's traceback)
    from driller.mmpi._procs import signal_rank
    p = subprocess.Popen([PY, "-c", _COUNT_RT, "leave" if where != "own group" else "stay"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: os.setpgid(0, 0))   # its own group, as a rank's
    fd = os.pidfd_open(p.pid)
    try:
        line = p.stdout.readline().split()
        assert line[0] == "ready", line
        assert (int(line[1]) == p.pid) == (where == "own group"), line
        signal_rank(p.pid, fd, signal.SIGRTMIN)
        out, _ = p.communicate("go\n", timeout=30)
        assert out.split() == ["got", "1"], out
        assert p.returncode == 0
    finally:
        os.close(fd)
        p.kill()
        p.wait()


# ---------------------------------------------------------------- startup

def test_startup_of_8_ranks(record_property):
    t0 = time.monotonic()
    res = driller_run("-n", "8", "-c", "pass")
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    record_property("startup_8_ranks_s", round(elapsed, 3))
    print(f"driller run -n 8 -c pass: {elapsed:.3f} s")


# ---------------------------------------------------------------- --mpi4py shim

def test_mpi4py_shim_is_first_on_path():
    code = "import importlib.util; print(importlib.util.find_spec('mpi4py').origin)"
    for flag in ([], ["--mpi4py"]):     # the default; --mpi4py is kept as a no-op
        res = driller_run("-n", "2", *flag, "-c", code)
        assert res.returncode == 0, res.stderr
        origins = res.stdout.split()
        assert len(origins) == 2
        assert all(o.endswith(os.path.join("_shim", "mpi4py", "__init__.py")) for o in origins)
    # and with --no-mpi4py, the real thing (or nothing) is found
    code = "import importlib.util as u; s = u.find_spec('mpi4py'); print(s and s.origin)"
    res = driller_run("-n", "1", "--no-mpi4py", "-c", code)
    assert res.returncode == 0, res.stderr
    assert "_shim" not in res.stdout and res.stdout.strip()


# ---------------------------------------------------------------- mmpi.spawn

def _spawn():
    from driller import mmpi
    assert mmpi.spawn is mmpi._spawn.spawn   # re-exported lazily by driller.mmpi
    return mmpi.spawn


def _fds():
    return sorted(os.listdir("/proc/self/fd"))


def _my_children():
    return set(_linux.child_pids())


@pytest.fixture
def spawn():
    fn = _spawn()
    fds, kids = _fds(), _my_children()
    yield fn
    assert _fds() == fds, "spawn leaked fds"
    assert _my_children() == kids, "spawn left children (zombies count)"


def test_spawn_results_in_rank_order(spawn):
    out = spawn(lambda comm, k: (comm.Get_rank(), comm.Get_size(), k, os.getpid()), 5,
                args=("x",))
    assert [o[:3] for o in out] == [(r, 5, "x") for r in range(5)]
    pids = [o[3] for o in out]
    assert len(set(pids)) == 5 and os.getpid() not in pids
    assert_gone(pids)


def test_spawn_closure_and_large_out_of_band_result(spawn):
    np = pytest.importorskip("numpy")
    base = np.arange(3 << 20, dtype=np.float64)          # 24 MiB, captured by the closure
    out = spawn(lambda comm: base * (comm.Get_rank() + 1), 2)
    assert out[0].flags.writeable and np.array_equal(out[1], base * 2)
    assert spawn(lambda comm: None, 1) == [None]


def test_spawn_propagates_exception_with_rank_and_traceback(spawn):
    from driller import DrillerError, RankFailedError

    def work(comm):
        if comm.Get_rank() == 2:
            def deep():
                raise KeyError("needle")
            deep()
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        spawn(work, 4)
    assert time.monotonic() - t0 < DEADLINE
    e = info.value
    assert isinstance(e, DrillerError)
    assert e.rank == 2 and e.status == 1 and e.signal is None
    assert e.exc_type == "builtins.KeyError"
    assert "in deep" in e.remote_traceback and "KeyError: 'needle'" in e.remote_traceback
    assert "rank 2 of 4" in str(e) and "in deep" in str(e)
    assert isinstance(e.remote_exception, KeyError)


def test_spawn_killed_rank(spawn):
    from driller import RankFailedError

    def work(comm):
        if comm.Get_rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        spawn(work, 3)
    assert time.monotonic() - t0 < DEADLINE
    e = info.value
    assert e.rank == 1 and e.signal == "SIGKILL" and e.status == 128 + signal.SIGKILL
    assert "killed by signal SIGKILL" in str(e)


def test_spawn_rank_ignoring_sigterm_is_killed(spawn):
    from driller import RankFailedError

    def work(comm):
        if comm.Get_rank() == 0:
            raise ValueError("first")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)

    with pytest.raises(RankFailedError) as info:
        spawn(work, 2, grace=0.3)
    assert info.value.rank == 0


def test_spawn_unpicklable_result_and_missing_result(spawn):
    from driller import RankFailedError
    with pytest.raises(RankFailedError, match="cannot be pickled"):
        spawn(lambda comm: (lambda: 1), 2)
    with pytest.raises(RankFailedError, match="without returning a result") as info:
        spawn(lambda comm: os._exit(0), 1)
    assert info.value.rank == 0


def test_spawn_argument_errors():
    spawn = _spawn()
    with pytest.raises(ValueError):
        spawn(lambda comm: 1, 0)
    with pytest.raises(TypeError):
        spawn(42, 2)


# ---------------------------------------------------------------- with the communicator

PINGPONG = textwrap.dedent("""
    import numpy as np
    from driller import mmpi
    comm = mmpi.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    a = np.zeros(100_000, dtype=np.int64)
    if rank == 0:
        comm.send({"hello": "from 0"}, dest=1, tag=7)
        a[:] = np.arange(a.size)
        comm.Send(a, dest=1, tag=8)
        comm.Recv(a, source=1, tag=9)
        print("R0 GOT", int(a.sum()))
    else:
        obj = comm.recv(source=0, tag=7)
        comm.Recv(a, source=0, tag=8)
        print("R1 GOT", obj, int(a.sum()))
        comm.Send(a * 2, dest=0, tag=9)
    comm.Barrier()
""")


def test_run_ranks_exchange_messages():
    res = driller_run("-n", "2", "-c", PINGPONG)
    assert res.returncode == 0, res.stderr
    s = 100_000 * 99_999 // 2
    assert sorted(res.stdout.splitlines()) == [f"R0 GOT {2 * s}",
                                               f"R1 GOT {{'hello': 'from 0'}} {s}"]


def test_spawn_ranks_exchange_messages(spawn):
    np = pytest.importorskip("numpy")

    def ring(comm, n):
        rank, size = comm.Get_rank(), comm.Get_size()
        buf = np.full(n, rank, dtype=np.float64)
        got = np.empty(n, dtype=np.float64)
        req = comm.Isend(buf, dest=(rank + 1) % size, tag=1)
        comm.Recv(got, source=(rank - 1) % size, tag=1)
        req.Wait()
        obj = comm.sendrecv(("obj", rank), dest=(rank + 1) % size,
                            source=(rank - 1) % size)
        return float(got[0]), float(got[-1]), obj

    out = spawn(ring, 4, args=(1 << 18,))
    assert out == [(float((r - 1) % 4), float((r - 1) % 4), ("obj", (r - 1) % 4))
                   for r in range(4)]


def test_run_rank_killed_during_recv_wakes_peer():
    # rank 1 waits in a blocking Recv from rank 0, which SIGKILLs itself; rank 1
    # ignores SIGTERM so that it is PeerDiedError (not the launcher) that ends its wait
    code = textwrap.dedent("""
        import os, signal, time, numpy as np
        from driller import mmpi
        from driller.errors import PeerDiedError
        comm = mmpi.COMM_WORLD
        print("PID", os.getpid(), flush=True)
        if comm.Get_rank() == 0:
            comm.send("ready", dest=1)
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert comm.recv(source=0) == "ready"
        try:
            comm.Recv(np.empty(8), source=0)
        except PeerDiedError as e:
            print("PEERDIED", e.rank, flush=True)
            raise SystemExit(5)
    """)
    t0 = time.monotonic()
    res = driller_run("-n", "2", "--grace", "5", "-c", code)
    elapsed = time.monotonic() - t0
    assert res.returncode == 128 + signal.SIGKILL, res.stderr
    assert "PEERDIED 0" in res.stdout, res.stderr
    assert re.search(r"rank 0 \(pid \d+\) was killed by signal SIGKILL", res.stderr)
    assert elapsed < DEADLINE + 5, elapsed
    assert_gone(pids_in(res.stdout))


def test_spawn_rank_killed_during_recv_wakes_peer(spawn, tmp_path):
    from driller import RankFailedError
    from driller.errors import PeerDiedError
    np = pytest.importorskip("numpy")
    note = tmp_path / "note"

    def work(comm):
        if comm.Get_rank() == 0:
            comm.send("ready", dest=1)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        comm.recv(source=0)
        try:
            comm.Recv(np.empty(8), source=0)
        except PeerDiedError as e:
            note.write_text(f"PeerDiedError {e.rank}")
            raise

    with pytest.raises(RankFailedError) as info:
        spawn(work, 2, grace=5)
    assert info.value.rank == 0 and info.value.signal == "SIGKILL"
    assert note.read_text() == "PeerDiedError 0"


MPI4PY_PING = textwrap.dedent("""
    import mpi4py
    mpi4py.rc.threads = False          # programs often set options first
    from mpi4py import MPI
    import numpy as np

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if rank == 0:
        data = np.arange(1000, dtype='i')
        comm.Send([data, MPI.INT], dest=1, tag=77)
        reply = comm.recv(source=1, tag=11)
        print("PING", reply)
    elif rank == 1:
        data = np.empty(1000, dtype='i')
        status = MPI.Status()
        comm.Recv([data, MPI.INT], source=0, tag=77, status=status)
        comm.send({"sum": int(data.sum()), "from": status.Get_source()}, dest=0, tag=11)
    comm.Barrier()
    print("MODULE", MPI.__name__, rank, comm.Get_size())
""")


def test_unmodified_mpi4py_program(tmp_path):
    prog = tmp_path / "ping.py"
    prog.write_text(MPI4PY_PING)
    expected = ["MODULE driller.MPI 0 2", "MODULE driller.MPI 1 2",
                "PING {'sum': 499500, 'from': 0}"]
    res = driller_run("--mpi4py", "-n", "2", str(prog))
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == expected
    # and the way mpi4py users often start it: python -m mpi4py prog.py
    res = driller_run("--mpi4py", "-n", "2", "-m", "mpi4py", str(prog))
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == expected


def test_fd_proxy_started_by_ranks_does_not_survive():
    # the fd proxy double-forks into its own session: an orphan of the rank,
    # adopted by the launcher (a subreaper) and gone when the job is
    code = textwrap.dedent("""
        from driller import proxy
        address = proxy.ProxyClient.get().address      # starts this rank's proxy
        print("PID", proxy.proxy_info(address)["pid"], flush=True)
    """)
    env = _env()
    env.pop("DRILLER_PROXY", None)     # (set if this test process started a proxy itself)
    res = driller_run("-n", "2", "-c", code, env=env)
    assert res.returncode == 0, res.stderr
    pids = pids_in(res.stdout)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert "left running" not in res.stderr      # they exited by themselves
    assert_gone(pids, within=1.0)


def test_spawn_when_the_caller_ignores_sigchld(spawn):
    # the kernel then reaps the ranks itself: results still count, statuses are lost
    from driller import RankFailedError
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert spawn(lambda comm: comm.Get_rank() + 1, 3) == [1, 2, 3]
        with pytest.raises(RankFailedError, match="without returning a result"):
            spawn(lambda comm: os._exit(3), 2)
    finally:
        signal.signal(signal.SIGCHLD, old)


_INTERRUPT = """
import glob, os, signal, sys, time
while len(glob.glob(os.path.join(sys.argv[1], "pid*"))) < 2:
    time.sleep(0.02)
os.kill(int(sys.argv[2]), signal.SIGINT)
"""


def test_spawn_interrupted_by_ctrl_c_kills_and_reaps_ranks(spawn, tmp_path):
    def work(comm):
        tmp = tmp_path / f"tmp{comm.Get_rank()}"
        tmp.write_text(str(os.getpid()))
        tmp.rename(tmp_path / f"pid{comm.Get_rank()}")     # appears whole
        time.sleep(60)

    # ^C once both ranks are up, from another process: a thread of ours would be
    # alive when spawn forks (a fork of a multi-threaded process may deadlock)
    watcher = subprocess.Popen([PY, "-c", _INTERRUPT, str(tmp_path), str(os.getpid())])
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            spawn(work, 2)
    finally:
        try:
            watcher.wait(timeout=DEADLINE)
        finally:
            watcher.kill()
            watcher.wait()
    assert time.monotonic() - t0 < DEADLINE + 20
    assert_gone([int(p.read_text()) for p in tmp_path.glob("pid*")])


def test_spawn_ctrl_c_between_fork_and_bookkeeping_leaves_no_rank(spawn, monkeypatch):
    # ^C right after a rank's fork, before spawn has listed it: the rank must still
    # be killed and reaped (under load the ranks can run first and be waited for)
    from driller.mmpi import _spawn as sp
    forked = []
    real = os.setpgid

    def setpgid(pid, pgid):
        if pid != 0 and os.getpid() == parent:     # spawn's side, just after fork
            forked.append(pid)
            os.kill(parent, signal.SIGINT)
        return real(pid, pgid)

    parent = os.getpid()
    monkeypatch.setattr(sp.os, "setpgid", setpgid)
    with pytest.raises(KeyboardInterrupt):
        spawn(lambda comm: time.sleep(60), 2)
    assert forked
    assert_gone(forked)


_SIGINT_IN_FORK_HOOK = {"armed": False}


def _sigint_in_fork_hook():
    if _SIGINT_IN_FORK_HOOK["armed"]:
        _SIGINT_IN_FORK_HOOK["armed"] = False
        os.kill(os.getpid(), signal.SIGINT)   # raised here, inside os.fork()'s hooks


os.register_at_fork(after_in_parent=_sigint_in_fork_hook)


def test_spawn_ctrl_c_during_fork_hooks_is_not_lost(spawn, tmp_path):
    # A ^C whose KeyboardInterrupt falls inside an at-fork hook (logging has one on
    # every Python) is swallowed there by os.fork(): spawn must still raise it, and
    # leave no rank behind, instead of running the job as if nothing happened.
    def work(comm):
        tmp = tmp_path / f"tmp{comm.Get_rank()}"
        tmp.write_text(str(os.getpid()))
        tmp.rename(tmp_path / f"pid{comm.Get_rank()}")     # appears whole
        time.sleep(60)

    _SIGINT_IN_FORK_HOOK["armed"] = True
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            spawn(work, 2)
    finally:
        _SIGINT_IN_FORK_HOOK["armed"] = False
    assert time.monotonic() - t0 < DEADLINE + 20
    assert_gone([int(p.read_text()) for p in tmp_path.glob("pid*")])


def test_spawn_cleanup_holds_back_a_second_ctrl_c():
    from driller.mmpi._spawn import _sigint_deferred
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):       # plenty of bytecode boundaries to be raised at
                pass
            reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_spawn_from_a_worker_thread(spawn):
    # notebooks and executors call from threads; the ranks become main threads.
    # spawn forks: from a process with another thread (here the main one) Python
    # 3.12+ warns, rightly, as it does of every such fork
    from concurrent.futures import ThreadPoolExecutor

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = spawn(lambda comm: comm.sendrecv(comm.Get_rank(),
                                                   dest=1 - comm.Get_rank()), 2)
        return out, [str(w.message) for w in caught if "multi-threaded" in str(w.message)]

    with ThreadPoolExecutor(1) as ex:
        out, warned = ex.submit(run).result(timeout=60)
    assert out == [1, 0]
    assert len(warned) == (2 if sys.version_info >= (3, 12) else 0), warned


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python < 3.12 does not warn of "
                    "fork() with threads running")
def test_spawn_with_the_fork_warning_an_error_leaves_no_rank_behind(spawn):
    # -W error makes os.fork() raise in the parent once the child exists: spawn must
    # still stop and reap that rank (the no_leaks fixture checks), then raise
    from concurrent.futures import ThreadPoolExecutor

    def run():
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "This process", DeprecationWarning)
            return spawn(lambda comm: time.sleep(60), 2)

    t0 = time.monotonic()
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(DeprecationWarning, match="multi-threaded"):
            ex.submit(run).result(timeout=60)
    assert time.monotonic() - t0 < DEADLINE + 20


def test_launcher_in_process_leaves_no_fds_or_children(capfd):
    # main() is also callable in-process: every fd it opened is closed, every
    # rank reaped, the signal set-up and the subreaper flag restored
    from driller.mmpi._launcher import main
    # a child of ours that is not the job's: the launcher must leave it alone
    other = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        fds, kids = _fds(), _my_children()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        code = "import os, sys, time; r = os.environ['DRILLER_MMPI_RANK']; print('hi', r); " \
               "time.sleep(0.2 if r == '1' else 60); sys.exit(4 if r == '1' else 0)"
        assert main(["-n", "3", "--tag-output", "-c", code]) == 4
        assert other.poll() is None and other.pid in _my_children()
    finally:
        other.kill()
        other.wait()
    kids.discard(other.pid)
    out, err = capfd.readouterr()
    assert sorted(out.splitlines()) == ["[0] hi 0", "[1] hi 1", "[2] hi 2"]
    assert "rank 1" in err and "exited with code 4" in err
    assert _fds() == fds
    assert _my_children() == kids
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def _wait_state(pids, state: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while any(_state(p) != state for p in pids):
        assert time.monotonic() < deadline, [(p, _state(p)) for p in pids]
        time.sleep(0.02)


def test_sigusr_forwarded_and_ctrl_z_stops_and_resumes_ranks(tmp_path):
    flag = tmp_path / "go"
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        r = os.environ["DRILLER_MMPI_RANK"]
        signal.signal(signal.SIGUSR1, lambda *a: print("USR1", r, flush=True))
        print("PID", os.getpid(), flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.02)
        print("DONE", r, flush=True)
    """)
    p = start_run("-n", "2", "-c", code)
    try:
        pids = pids_in(read_until(p.stdout, r"PID \d+", 2))
        p.send_signal(signal.SIGUSR1)
        read_until(p.stdout, r"USR1 \d", 2)
        p.send_signal(signal.SIGTSTP)            # ^Z: the launcher and its ranks stop
        _wait_state([p.pid, *pids], "T")
        flag.touch()
        time.sleep(0.2)                          # (nothing would wake them: still stopped)
        assert all(_state(q) == "T" for q in pids)
        p.send_signal(signal.SIGCONT)            # fg: everyone resumes and finishes
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 0, err
    assert sorted(ln for ln in out.splitlines() if ln.startswith("DONE")) == ["DONE 0", "DONE 1"]
    assert_gone(pids)
