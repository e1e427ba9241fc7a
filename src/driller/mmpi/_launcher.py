"""``driller run``: start N ranks of a Python program and supervise them.

Each rank is a child process (``sys.executable``) in its own process group,
told its place by three environment variables (``DRILLER_MMPI_RANK``,
``DRILLER_MMPI_SIZE``, ``DRILLER_MMPI_WORLD_FD``) and handed the world block fd.
The launcher is a single-threaded event loop over one selector:

* one pidfd per rank: readable when the rank exits (no polling, no SIGCHLD);
* two pipes per rank (stdout, stderr), forwarded line by line: only whole lines
  are written (those of one read together, in one ``write``), so lines of
  different ranks never interleave;
* a signal wake-up fd: SIGINT, SIGTERM and SIGHUP to the launcher stop the job;
  SIGUSR1, SIGUSR2 and SIGCONT are passed on to the ranks, and ^Z stops them
  together with the launcher.

When a rank exits the launcher records it in the world block (``mark_dead``) so
that ranks blocked on it wake and raise ``PeerDiedError``.  When a rank fails
(non-zero exit or a signal) the others get SIGTERM, then SIGKILL after a grace
period; the launcher prints one line naming the rank and the cause and exits
with that rank's status (128 + signal for a signal, like a shell).

Nothing is left behind, even when ``driller run`` is SIGKILLed: the process
the user started forks a *supervisor* (in its own process group) that runs all
of the above, so the supervisor is the ranks' parent.  It is a child
subreaper: descendants that a rank leaves (a forked server, a double fork, a
``setsid()`` daemon) are reparented to it; after the last rank it waits for them
briefly, then terminates them.  It watches the ``driller run`` process through a
pidfd: when that dies, whatever the cause, the supervisor SIGKILLs the ranks and
every descendant at once, reaps them and exits.  The ``driller run`` process
only passes signals on and exits with the supervisor's status.  A rank's
process group is only signalled while the rank is still an unreaped zombie, so
its pgid cannot have been recycled.  If the supervisor itself is killed, its
ranks and their orphans are reparented to ``driller run``, a subreaper too,
which kills them.  Ranks get ``PR_SET_PDEATHSIG=SIGKILL``, their way out when
the supervisor and ``driller run`` are SIGKILLed together (``pkill -9
driller``).  ``main()`` called in-process (a test, a tool) runs the loop in the
calling process, without a supervisor (ranks started by ``Popen``, the
supervisor's by a leaner fork and exec).
"""

from __future__ import annotations

import errno
import gc
import os
import selectors
import signal
import sys
import time

from .. import _linux
from ..errors import DrillerError
from . import _procs
from ._procs import (UNKNOWN, describe_status, kill_children, kill_group, pidfd_kill, rank_pids,
                     raw_wait_status, reap_adopted, shell_status, signal_name, signal_rank,
                     stop_leftovers, wait_status)

__all__ = ["main", "Options", "parse_args", "placement", "UsageError", "describe_status",
           "wait_status", "shell_status", "UNKNOWN"]

USAGE_LINE = """\
driller run [-h] [-n N] [--tag-output] [--no-mpi4py] [-x VAR[=value]]
                   [--grace SECONDS] [--bind-to none|core|cyclic]
                   (prog.py | -m module | -c code) [args ...]"""

DESCRIPTION = "Start N ranks of a Python program under mmpi, on this machine."

EPILOG = """\
Everything after the program (prog.py, -m module or -c code) is passed to it.
^C, SIGTERM, SIGHUP stop every rank; SIGUSR1/SIGUSR2 are passed on; ^Z suspends all.
Exit status: 0 if every rank exited 0, else that of the first rank that failed
(128 + N if it was killed by signal N), or 128 + N if the launcher got signal N;
2 for a usage error.  See docs/launcher.md.
"""

DEFAULT_GRACE = 1.0
LINGER = 1.0          # how long leftover descendants may take to exit on their own
MAX_LINE = 1 << 16    # a line longer than this is forwarded in pieces
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT)   # passed on to every rank
_HANDLED = (*_STOP_SIGNALS, *_FORWARDED, signal.SIGTSTP)
_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_shim")
SCALEOUT = ("driller run starts every rank on this machine (they share its memory); "
            "to run across machines, start the program with your MPI launcher instead "
            "(mpiexec -n N --host ... python prog.py, or srun): driller's shared memory "
            "inside each node, MPI between nodes; see docs/scaleout.md")


class UsageError(Exception):
    pass


class Options:
    """What `driller run` was asked to do.

    (A plain class, not a dataclass: generating a dataclass's methods costs the
    launcher's start-up a few ms, see docs/launcher.md "Startup".)
    """

    __slots__ = ("n", "tag_output", "mpi4py", "grace", "export", "kind", "target", "args",
                 "bind")

    def __init__(self, n: int = 1, tag_output: bool = False, mpi4py: bool = True,
                 grace: float = DEFAULT_GRACE,
                 export: list[tuple[str, str | None]] | None = None,
                 kind: str = "path", target: str = "", args: list[str] | None = None,
                 bind: str = "none"):
        self.n = n
        self.tag_output = tag_output
        self.mpi4py = mpi4py          # `from mpi4py import MPI` gives driller.MPI
        self.grace = grace
        self.export = [] if export is None else export   # -x VAR[=value]
        self.kind = kind              # "path" | "module" | "code"
        self.target = target
        self.args = [] if args is None else args
        self.bind = bind              # --bind-to: none | core | cyclic (placement())

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

    def __eq__(self, other: object) -> bool:
        if type(other) is not Options:
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def command(self) -> list[str]:
        head = {"path": [], "module": ["-m"], "code": ["-c"]}[self.kind]
        return [sys.executable, *head, self.target, *self.args]


def _bad(message: str) -> Exception:
    """argparse.ArgumentTypeError(message) (argparse is imported on errors only)."""
    import argparse
    return argparse.ArgumentTypeError(message)


def _ranks(raw: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise _bad(f"needs a whole number of ranks, got {raw!r}") from None
    if n < 1:
        raise _bad(f"needs at least 1 rank, got {n}")
    return n


def _seconds(raw: str) -> float:
    try:
        s = float(raw)
    except ValueError:
        raise _bad(f"needs a number of seconds, got {raw!r}") from None
    if not s >= 0:
        raise _bad(f"must not be negative (nor nan), got {raw!r}")
    return s


BIND_CHOICES = ("none", "core", "cyclic")


def _bind(raw: str) -> str:
    b = raw.strip().lower()
    if b not in BIND_CHOICES:
        raise _bad(f"needs one of {', '.join(BIND_CHOICES)}, got {raw!r}")
    return b


def placement(n: int, cpus, bind: str) -> list[int] | None:
    """The CPU each of ``n`` ranks is bound to under ``--bind-to bind``, given the
    CPUs the launcher may use; None: the ranks stay unbound (``none``, or no more
    ranks than CPUs, where the scheduler keeps them apart anyway).  ``core``: in
    blocks of consecutive ranks, as ``mpirun --bind-to core:overload-allowed``
    (ranks 0, 1 on the first CPU, 2, 3 on the second, for 4 ranks on 2);
    ``cyclic``: rank r on CPU r mod the number of CPUs (0, 2 on the first).
    Ranks that talk to each other are best on one CPU (docs/mmpi.md, "Waiting")."""
    cpus = sorted(cpus)
    k = len(cpus)
    if bind == "none" or n <= k:
        return None
    if bind == "core":
        return [cpus[r * k // n] for r in range(n)]
    return [cpus[r % k] for r in range(n)]


def _export(raw: str) -> tuple[str, str | None]:
    name, sep, value = raw.partition("=")
    # (an ASCII identifier is [A-Za-z_][A-Za-z0-9_]*; no `re` at start-up)
    if not (name.isascii() and name.isidentifier()) or "\0" in value:
        raise _bad(f"needs VAR or VAR=value (VAR a variable name), got {raw!r}")
    return name, (value if sep else None)


# Every option of `driller run`.  Options that take a value (the next word, or
# attached: --np=4, -n4): spelling -> (dest, converter); flags: spelling -> (dest,
# the value stored).  The program starts at the first word that is neither.
# _quick() parses these without argparse (whose import costs the start-up);
# _parser() declares the same options to argparse, for --help and for the wording
# of usage errors (tests/test_startup.py checks that the two agree).
_REFUSED = ("--host", "-H", "--hostfile", "--machinefile")
_VALUED: dict = {
    **dict.fromkeys(("-n", "-np", "--np"), ("n", _ranks)),
    "-x": ("export", _export),
    "--grace": ("grace", _seconds),
    "--bind-to": ("bind", _bind),
    **dict.fromkeys(_REFUSED, ("host", None)),      # refused by _split
}
_FLAGS: dict = {
    **dict.fromkeys(("-h", "--help"), ("help", True)),
    "--tag-output": ("tag_output", True),
    "--no-mpi4py": ("mpi4py", False),
    "--mpi4py": ("mpi4py", True),
    **dict.fromkeys(("--oversubscribe", "--allow-run-as-root"), ("ignored", True)),
}
_DEFAULTS = {"n": 1, "tag_output": False, "mpi4py": True, "grace": DEFAULT_GRACE,
             "help": False, "ignored": False, "host": None, "bind": None}
_PARSER = None


def _parser():
    """The ``driller run`` argparse parser (built once)."""
    global _PARSER
    if _PARSER is not None:
        return _PARSER
    import argparse

    class _Parser(argparse.ArgumentParser):
        """argparse that raises UsageError instead of printing and exiting."""

        def error(self, message: str):
            raise UsageError(message)

    p = _Parser(prog="driller run", usage=USAGE_LINE, description=DESCRIPTION, epilog=EPILOG,
                add_help=False, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)

    def add(group, *names, valued=True, **kw):
        group.add_argument(*names, **kw)

    prog = p.add_argument_group("the program (the first word that is not an option)")
    prog.add_argument("prog", nargs="?", metavar="prog.py", help="a Python file")
    prog.add_argument("-m", metavar="module", help="run a module as a script (python -m)")
    prog.add_argument("-c", metavar="code", help="run code given as a string (python -c)")
    prog.add_argument("args", nargs="*", help="passed to the program, options included")
    opt = p.add_argument_group("options")
    add(opt, "-h", "--help", valued=False, action="store_true", help="show this help and exit")
    add(opt, "-n", "-np", "--np", dest="n", type=_ranks, default=1, metavar="N",
        help="number of ranks (default 1; more ranks than cores is fine)")
    add(opt, "--tag-output", valued=False, action="store_true",
        help="prefix every output line with [rank]")
    add(opt, "--no-mpi4py", valued=False, dest="mpi4py", action="store_false", default=True,
        help="`from mpi4py import MPI` in the ranks finds whatever mpi4py is installed "
             "(there is no MPI launcher here: a real mpi4py is a world of one rank) "
             "instead of driller.MPI, the default")
    add(opt, "--mpi4py", valued=False, dest="mpi4py", action="store_true",
        help="driller.MPI for `from mpi4py import MPI` (the default; kept for compatibility)")
    add(opt, "-x", dest="export", action="append", type=_export, default=[],
        metavar="VAR[=value]", help="export VAR to the ranks, with the given value or ours "
        "(ranks inherit our whole environment anyway)")
    add(opt, "--grace", type=_seconds, default=DEFAULT_GRACE, metavar="SECONDS",
        help="after a failure, SIGTERM the other ranks and SIGKILL them "
             f"after SECONDS (default {DEFAULT_GRACE:g})")
    add(opt, "--bind-to", type=_bind, default=None, dest="bind", metavar="none|core|cyclic",
        help="when ranks outnumber the CPUs, bind each to one: core = consecutive ranks "
             "share a CPU (mpirun's order), cyclic = rank r on CPU r mod CPUs; none (the "
             "default, or $DRILLER_BIND) leaves them to the scheduler")
    mpirun = p.add_argument_group("mpirun compatibility")
    add(mpirun, "--oversubscribe", "--allow-run-as-root", valued=False, action="store_true",
        dest="ignored", help="accepted and ignored (more ranks than cores is always fine)")
    add(mpirun, *_REFUSED, dest="host", metavar="HOSTS", help="refused: " + SCALEOUT)
    _PARSER = p
    return p


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, program part): the program starts at the first word that
    is not an option (or at -m, -c, or after --).

    Valued options come out as ``NAME=VALUE`` so that argparse never mistakes a
    value for an option (``--grace -1``, ``-x -FOO``).
    """
    head: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if a == "--" or a in ("-c", "-m") or a.startswith(("-c", "-m")) \
                or not a.startswith("-") or a == "-":
            return head, argv[i:]
        if name in _REFUSED or a[:2] in _REFUSED:
            raise UsageError(f"{a[:2] if a[:2] in _REFUSED else name}: {SCALEOUT}")
        if name in _FLAGS:
            head.append(a)
        elif name in _VALUED:
            if "=" in a:
                head.append(a)
            elif i + 1 < len(argv):
                i += 1
                head.append(f"{a}={argv[i]}")
            else:
                raise UsageError(f"{a} needs a value")
        elif a[:2] in _VALUED and len(a) > 2:    # -n4, -xVAR=1, -Hhost
            head.append(f"{a[:2]}={a[2:]}")
        else:
            raise UsageError(f"unknown option {a!r}")
        i += 1
    return head, []


def _quick(head: list[str]) -> dict | None:
    """The options in ``head`` (from :func:`_split`) as argparse parses them, without
    argparse; None for help, a bad value or a flag given a value: argparse then
    parses them (and words the error)."""
    ns = dict(_DEFAULTS, export=[])
    for a in head:
        if a in _FLAGS:
            dest, value = _FLAGS[a]
            if dest == "help":
                return None
            ns[dest] = value
            continue
        name, sep, raw = a.partition("=")
        dest, convert = _VALUED.get(name, (None, None))
        if not sep or convert is None:
            return None
        try:
            value = convert(raw)
        except Exception:  # noqa: BLE001 - argparse says what is wrong
            return None
        if dest == "export":
            ns["export"].append(value)
        else:
            ns[dest] = value
    return ns


def parse_args(argv: list[str]) -> Options | None:
    """Parse ``driller run`` arguments; None means help was asked for."""
    head, prog = _split(list(argv))
    ns = _quick(head)
    if ns is None:
        ns = vars(_parser().parse_args(head))
        if ns["help"]:
            return None
    bind = ns["bind"]
    if bind is None:
        raw = os.environ.get("DRILLER_BIND", "").strip()
        try:
            bind = _bind(raw) if raw else "none"
        except Exception as e:  # noqa: BLE001 - argparse's ArgumentTypeError
            raise UsageError(f"DRILLER_BIND {e}") from None
    opts = Options(n=ns["n"], tag_output=ns["tag_output"], mpi4py=ns["mpi4py"],
                   grace=ns["grace"], export=list(ns["export"]), bind=bind)
    if not prog:
        raise UsageError("no program given (prog.py, -m module or -c code)")
    a = prog[0]
    if a in ("-c", "-m"):
        if len(prog) < 2:
            raise UsageError(f"{a} needs a value")
        opts.kind, opts.target, opts.args = ("code" if a == "-c" else "module"), prog[1], prog[2:]
    elif a.startswith(("-c", "-m")):      # python also accepts -mmodule, -ccode
        opts.kind, opts.target, opts.args = ("code" if a[1] == "c" else "module"), a[2:], prog[1:]
    elif a == "--":
        if len(prog) < 2:
            raise UsageError("no program given after --")
        opts.target, opts.args = prog[1], prog[2:]
    else:
        opts.target, opts.args = a, prog[1:]
    name = os.path.basename(opts.target)
    if opts.kind == "path" and (name == "python" or name.startswith("python") and
                                name[6:].replace(".", "").rstrip("t").isdigit()):
        # (mpirun's habit: `mpirun -n 3 python prog.py`; its options, e.g. -u, dropped)
        args = list(opts.args)
        while args and args[0].startswith("-") and args[0][:2] not in ("-c", "-m"):
            del args[:2 if args[0] in ("-X", "-W", "--check-hash-based-pycs") else 1]
        rest = " ".join(args) or "prog.py"
        raise UsageError(f"{opts.target!r} is a Python interpreter: driller run starts the "
                         f"program with this one ({sys.executable}) itself; give the program "
                         f"first: driller run -n {opts.n} {rest}")
    return opts


def usage_error(message: str) -> int:
    """Print the short usage and one error line (on stderr); the exit status, 2."""
    sys.stderr.write(f"usage: {USAGE_LINE}\ndriller run: error: {message}\n")
    return 2


def print_help() -> None:
    sys.stdout.write(_parser().format_help())


# ---------------------------------------------------------------- wait statuses

# ---------------------------------------------------------------- the launcher

class _Rank:
    __slots__ = ("rank", "pid", "proc", "pidfd", "bufs", "result")

    def __init__(self, rank: int, pid: int, pidfd: int, proc=None):
        self.rank = rank
        self.pid = pid
        self.proc = proc                                   # its Popen, if started by one
        self.pidfd = pidfd
        self.bufs: dict = {}                               # stream (1, 2) -> partial last line
        self.result: tuple[int, int] | None = None        # (si_code, si_status) once exited


def _rank_env(opts: Options, rank: int, world_fd: int | None, world) -> dict:
    env = dict(os.environ)
    for name, value in opts.export:     # -x VAR=value (-x VAR: ours, already there)
        if value is not None:
            env[name] = value
    env[world.ENV_RANK] = str(rank)
    env[world.ENV_SIZE] = str(opts.n)
    if world_fd is not None:
        env[world.ENV_WORLD_FD] = str(world_fd)
    # Line-by-line forwarding is only useful if ranks do not block-buffer a pipe.
    env.setdefault("PYTHONUNBUFFERED", "1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if opts.mpi4py:
        paths.insert(0, _shim_dir())
    pkg_parent = _pkg_parent()
    if pkg_parent is not None and pkg_parent not in paths:
        paths.append(pkg_parent)   # running from a source tree: let ranks import driller
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


_PKG_PARENT: dict = {}     # sys.path -> _pkg_parent()


def _pkg_parent() -> str | None:
    """The directory holding the driller package if ranks would not find it by
    themselves (a source tree), else None; worked out once per sys.path, not per
    rank (realpath is slowish)."""
    key = tuple(sys.path)
    if key not in _PKG_PARENT:
        d = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        _PKG_PARENT[key] = None if _on_default_path(d) else d
    return _PKG_PARENT[key]


def _on_default_path(d: str) -> bool:
    """Would a rank (same interpreter, same environment) find packages in d?

    Ranks inherit sys.path except its first entry (the script's directory or the
    cwd): PYTHONPATH, site-packages and .pth entries (an editable install).
    """
    d = os.path.realpath(d)
    return any(p and os.path.realpath(p) == d for p in sys.path[1:])


def _shim_dir() -> str:
    if os.path.isfile(os.path.join(_SHIM_DIR, "mpi4py", "__init__.py")):
        return _SHIM_DIR
    raise UsageError(f"driller's mpi4py shim directory {_SHIM_DIR} is missing from this "
                     "install: reinstall driller, or run with --no-mpi4py")


def _above_stdio(fd: int, inheritable: bool = False) -> int:
    """fd itself, or a copy of it above 2 (fd closed; the copy close-on-exec unless
    ``inheritable``): a pipe end or the world block's fd must not be one of the
    0, 1, 2 that a rank gets (this happens when the launcher's are closed)."""
    if fd > 2:
        return fd
    import fcntl
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD if inheritable else fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _hold_stdio() -> None:
    """/dev/null on whichever of fds 0, 1, 2 is closed: no fd the launcher opens
    may take their numbers (a rank's output for a closed stdout would be written
    into it: an epoll fd, the world block)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)      # the lowest free number: fd
        if null != fd:  # pragma: no cover - a lower one was free; fstat said no
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    return _above_stdio(r), _above_stdio(w)


def _child_setup(parent: int, dfl=()) -> None:  # runs in the rank between fork and exec
    # its own process group (what Popen(process_group=0) does, but that is 3.11+);
    # done before exec, so the group exists by the time Popen returns
    os.setpgid(0, 0)
    _linux.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:       # the launcher died before prctl took effect
        os._exit(137)
    for sig in _HANDLED:             # what exec will do anyway; ignored ones stay so
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    for sig in dfl:                  # ignored by the launcher itself, not by the user
        signal.signal(sig, signal.SIG_DFL)


def _fork_exec(cmd: list[str], env: dict, stdin_null: bool, out_fd: int, err_fd: int,
               keep: int, parent: int, dfl=()) -> int:
    """Start ``cmd`` as Popen(close_fds=True, pass_fds=(keep,), preexec_fn=
    _child_setup) would, without loading subprocess (docs/launcher.md, "Startup"):
    fork, stdio and fds set up, :func:`_child_setup`, SIGPIPE and SIGXFSZ at their
    default (Popen's restore_signals), exec.  An exec that fails raises its OSError
    here (FileNotFoundError...), as Popen does; returns the pid."""
    rd, wr = os.pipe2(os.O_CLOEXEC)      # closed by a successful exec: EOF
    try:
        pid = os.fork()
    except BaseException:                # EAGAIN, ENOMEM: no child, no pipe left open
        os.close(rd)
        os.close(wr)
        raise
    if pid == 0:    # pragma: no cover - the child until exec (coverage cannot see it)
        try:
            os.close(rd)
            if stdin_null:
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            lo = 3
            for fd in sorted((keep, wr)):
                os.closerange(lo, fd)
                lo = fd + 1
            os.closerange(lo, 1 << 30)
            _child_setup(parent, dfl)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            os.execve(cmd[0], cmd, env)
        except BaseException as e:
            no = e.errno if isinstance(e, OSError) and e.errno else 0
            os.write(wr, f"{no}\0{type(e).__name__}: {e}".encode(errors="replace"))
        os._exit(127)
    os.close(wr)
    try:
        got = b""
        while chunk := os.read(rd, 4096):
            got += chunk
    finally:
        os.close(rd)
    if got:
        os.waitpid(pid, 0)
        no, _, what = got.decode(errors="replace").partition("\0")
        if int(no):
            raise OSError(int(no), os.strerror(int(no)), cmd[0])
        raise ChildProcessError(f"could not start {cmd[0]}: {what}")
    return pid


class Launcher:
    """The event loop that starts, watches and stops the ranks.

    ``parent``: the pid of the ``driller run`` process when this one is its
    supervisor (see :func:`_run_supervised`); when that process dies (even by
    SIGKILL) the job is killed at once.  ``mask``: the signal mask to restore
    once the signal handlers are in place (signals are blocked across the fork).
    """

    def __init__(self, opts: Options, out_fd: int = 1, err_fd: int = 2, *,
                 parent: int | None = None, mask=None, child_dfl=()):
        self.opts = opts
        self.parent = parent
        self.parent_fd: int | None = None
        self.orphaned = False     # the driller run process is gone: kill the job now
        self.mask = mask
        self.child_dfl = tuple(child_dfl)   # signals to reset to SIG_DFL in the ranks
        self.out = {1: out_fd, 2: err_fd}
        self.broken: set[int] = set()
        self.ranks: list[_Rank] = []
        self.sel = selectors.DefaultSelector()
        self.world_fd: int | None = None
        self.world = None
        # (root cause rank, si_code, si_status of the first failed rank, that rank)
        self.failure: tuple[int, int, int, int] | None = None
        self.got_signal: int | None = None
        self.kill_at: float | None = None
        self.aborting = False
        self.open_pipes = 0
        self.stopped = 0          # ranks still running when the job was aborted

    # ---- output
    def _emit(self, stream: int, data: bytes) -> None:
        fd = self.out[stream]
        if fd in self.broken:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except BlockingIOError:
                import select
                select.select([], [fd], [])
                continue
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.EBADF):
                    self.broken.add(fd)
                    return
                raise
            view = view[n:]

    def _line(self, r: _Rank, stream: int, line: bytes) -> None:
        if self.opts.tag_output:
            line = b"[%d] " % r.rank + line
        self._emit(stream, line)

    def _on_output(self, r: _Rank, stream: int, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = r.bufs.setdefault(stream, bytearray())
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            self.open_pipes -= 1
            if buf:
                tail = bytes(buf)
                if self.opts.tag_output or self.opts.n > 1:
                    tail += b"\n"       # keep the next rank's line off this one
                self._line(r, stream, tail)
                buf.clear()
            return
        buf += data
        last = buf.rfind(b"\n")
        if last >= 0:
            # every complete line read so far, in one write: still whole lines
            chunk = bytes(buf[:last + 1])
            del buf[:last + 1]
            if self.opts.tag_output:
                tag = b"[%d] " % r.rank
                chunk = tag + chunk[:-1].replace(b"\n", b"\n" + tag) + b"\n"
            self._emit(stream, chunk)
        while len(buf) >= MAX_LINE:
            self._line(r, stream, bytes(buf[:MAX_LINE]) + b"\n")
            del buf[:MAX_LINE]

    def _say(self, msg: str) -> None:
        self._emit(2, f"driller run: {msg}\n".encode())

    # ---- rank lifecycle
    def _start(self) -> None:
        from . import _world as world
        self.world = world
        self.world_fd = _above_stdio(world.create_world(self.opts.n), inheritable=True)
        stdin_null_rank0 = _isatty(0)
        cmd = self.opts.command()
        spawn = self._spawner(cmd)
        places = (None if self.opts.bind == "none"
                  else placement(self.opts.n, os.sched_getaffinity(0), self.opts.bind))
        for rank in range(self.opts.n):
            self._on_signal(self._sigfd)      # ^C while starting: start no more
            if self.parent is not None and not self.orphaned \
                    and not _linux.pidfd_alive(self.parent_fd):
                self._on_parent_death()
            if self.got_signal is not None or self.orphaned:
                break
            pipes = [_pipe(), _pipe()]        # close-on-exec: the read ends stay here
            pid = proc = None
            try:
                pid, proc = spawn(_rank_env(self.opts, rank, self.world_fd, world),
                                  stdin_null_rank0 or rank > 0, pipes[0][1], pipes[1][1])
                pidfd = _linux.pidfd_open(pid)   # our unreaped child: cannot be gone
            except BaseException:
                for a, b in pipes:
                    os.close(a)
                    os.close(b)
                if pid is not None:               # e.g. EMFILE on the pidfd
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    if proc is not None:
                        proc.returncode = -signal.SIGKILL
                raise
            rank_pids.add(pid)
            if places is not None:   # (the rank is still starting: its threads inherit it)
                try:
                    os.sched_setaffinity(pid, (places[rank],))
                except OSError:      # pragma: no cover - a CPU taken away meanwhile
                    pass             # the rank runs unbound
            r = _Rank(rank, pid, pidfd, proc)
            self.ranks.append(r)
            self.sel.register(pidfd, selectors.EVENT_READ, ("exit", r, 0))
            for stream, (rd, wr) in zip((1, 2), pipes):
                os.close(wr)
                os.set_blocking(rd, False)
                self.sel.register(rd, selectors.EVENT_READ, ("out", r, stream))
                self.open_pipes += 1

    def _spawner(self, cmd: list[str]):
        """``start(env, stdin_null, out_fd, err_fd) -> (pid, Popen or None)``: starts
        one rank in its own process group, stdout and stderr on the given pipes,
        stdin /dev/null or ours, no fd but 0, 1, 2 and the world block's, the signals
        we handle (and child_dfl) at their default, and ``PR_SET_PDEATHSIG=SIGKILL``:
        when this process dies the kernel kills the rank, even when nobody else is
        left to (``pkill -9 driller`` or ``kill -9 -- -PGID`` kills the supervisor
        and ``driller run`` at once, and the ranks have process groups of their
        own).  That needs code between fork and exec, so not ``posix_spawn``.
        Under a supervisor (single-threaded): :func:`_fork_exec`, which loads
        nothing; ``main()`` in-process (a test, a tool; maybe threads): ``Popen``
        with a ``preexec_fn``.
        """
        parent = os.getpid()
        if self.parent is not None:
            def start_fork(env: dict, stdin_null: bool, out_fd: int, err_fd: int):
                return _fork_exec(cmd, env, stdin_null, out_fd, err_fd, self.world_fd,
                                  parent, self.child_dfl), None
            return start_fork
        import subprocess

        def start_popen(env: dict, stdin_null: bool, out_fd: int, err_fd: int):
            proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL if stdin_null else None,
                stdout=out_fd, stderr=err_fd, pass_fds=(self.world_fd,),
                preexec_fn=lambda: _child_setup(parent, self.child_dfl))
            return proc.pid, proc
        return start_popen

    def _on_exit(self, r: _Rank) -> None:
        self.sel.unregister(r.pidfd)
        r.result = wait_status(r.pidfd, reap=False)
        if r.result is None:  # pragma: no cover - pidfd readable means exited
            r.result = UNKNOWN
        code, st = r.result
        try:
            self.world.mark_dead(self.world_fd, r.rank, raw_wait_status(code, st))
        except Exception as e:  # pragma: no cover - never let this stop cleanup
            self._say(f"could not record the exit of rank {r.rank}: {e}")

    def _abort(self, sig: int = signal.SIGTERM) -> None:
        if self.aborting:
            return
        self.aborting = True
        for r in self.ranks:
            if r.result is None:
                self.stopped += 1
                signal_rank(r.pid, r.pidfd, sig)
        self.kill_at = time.monotonic() + self.opts.grace

    def _on_signal(self, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        for sig in data:
            if sig in _FORWARDED or sig == signal.SIGTSTP:
                # ^Z stops the ranks with the launcher; fg (SIGCONT) resumes them
                fwd = signal.SIGSTOP if sig == signal.SIGTSTP else sig
                for r in self.ranks:
                    if r.result is None:
                        kill_group(r.pid, fwd)
                if sig == signal.SIGTSTP:
                    os.kill(os.getpid(), signal.SIGSTOP)
            elif self.got_signal is None:
                self.got_signal = sig
                # ^C is passed on as ^C: Python ranks show where they were
                self._abort(signal.SIGINT if sig == signal.SIGINT else signal.SIGTERM)
            elif sig == signal.SIGINT:   # a second ^C: no more grace
                self.kill_at = time.monotonic()

    def _on_parent_death(self) -> None:
        """The driller run process died (SIGKILL?): nobody waits for the job any more.

        Kill every rank now; the leftovers follow in stop_leftovers (urgent).
        Output has no reader to go to: it is discarded from now on.
        """
        if self.orphaned:
            return
        self.orphaned = True
        if self.parent_fd is not None:
            self.sel.unregister(self.parent_fd)
        self.broken.update(self.out.values())
        self.aborting = False          # (a SIGTERM abort in progress becomes a SIGKILL)
        self._abort(signal.SIGKILL)
        self.kill_at = None

    def _service(self, timeout: float | None) -> None:
        if self.kill_at is not None:
            now = time.monotonic()
            if now >= self.kill_at:
                for r in self.ranks:
                    if r.result is None:
                        kill_group(r.pid, signal.SIGKILL)
                        pidfd_kill(r.pidfd, signal.SIGKILL)
                self.kill_at = None
            else:
                timeout = self.kill_at - now if timeout is None else min(timeout, self.kill_at - now)
        exited = []
        for key, _ in self.sel.select(timeout):
            kind, r, stream = key.data
            if kind == "out":
                self._on_output(r, stream, key.fd)
            elif kind == "exit":
                self._on_exit(r)
                exited.append(r)
            elif kind == "watch":
                pass
            elif kind == "parent":
                self._on_parent_death()
            else:
                self._on_signal(key.fd)
        failed = [r for r in exited if r.result != (os.CLD_EXITED, 0)]
        if failed and self.failure is None and not self.aborting:
            # several at once: a signal death is more likely the cause than the
            # PeerDiedError exits it provoked
            first = min(failed, key=lambda r: (r.result[0] == os.CLD_EXITED, r.rank))
            rank = first.rank
            if self.world_fd is not None:
                try:  # a rank that died of PeerDiedError names its root cause in the block
                    rank = self.world.read_root_cause(self.world_fd, rank)
                except Exception:  # noqa: BLE001  pragma: no cover - keep the first seen
                    rank = first.rank
            self.failure = (rank, *first.result, first.rank)
            self._abort()

    def _wait(self, pidfds: list[int], timeout: float) -> None:
        """Serve output and signals until one of pidfds is readable or timeout."""
        for fd in pidfds:
            self.sel.register(fd, selectors.EVENT_READ, ("watch", None, 0))
        try:
            self._service(timeout)
        finally:
            for fd in pidfds:
                self.sel.unregister(fd)

    def run(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        # a signal ignored when we start stays ignored (nohup, `&` in a script)
        old_handlers = {sig: signal.signal(sig, lambda *_: None) for sig in _HANDLED
                        if signal.getsignal(sig) is not signal.SIG_IGN}
        self.sel.register(rfd, selectors.EVENT_READ, ("signal", None, 0))
        self._sigfd = rfd
        # children this process already has are not the job's (main() called in a
        # process that has others: a test, a tool); leave them alone
        self.foreign = frozenset(_linux.child_pids())
        self._was_subreaper = _linux.get_child_subreaper()
        _linux.set_child_subreaper(True)
        if self.mask is not None:      # handlers are in place: let pending signals in
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        try:
            if self.parent is not None:
                try:
                    self.parent_fd = _linux.pidfd_open(self.parent)
                    self.sel.register(self.parent_fd, selectors.EVENT_READ, ("parent", None, 0))
                except ProcessLookupError:
                    pass
                # died before we held its pidfd? (we were reparented at its exit)
                if self.parent_fd is None or os.getppid() != self.parent:
                    self._on_parent_death()
            self._start()
            if self.parent is not None:
                gc.enable()    # (the driller command starts up without it: run_program)
            while any(r.result is None for r in self.ranks):
                self._service(None)
            # every rank has exited (unreaped): clean up what they left behind
            left = stop_leftovers([r.pid for r in self.ranks if r.result != UNKNOWN],
                                  linger=0 if self.aborting else LINGER,
                                  grace=self.opts.grace, adopted=True,
                                  skip=self.foreign, wait=self._wait,
                                  urgent=lambda: self.orphaned)
            if left and not self.aborting:
                self._say(f"stopped {left} process{'es' if left > 1 else ''} that the ranks "
                          f"left running (still alive {LINGER:g} s after the last rank)")
            # flush what is still in the pipes (their writers are gone now)
            deadline = time.monotonic() + 1.0
            while self.open_pipes and not self.orphaned and time.monotonic() < deadline:
                self._service(max(0.0, deadline - time.monotonic()))
        finally:
            self._teardown(rfd, wfd, old_wakeup, old_handlers)
        return self._report()

    def _teardown(self, rfd, wfd, old_wakeup, old_handlers) -> None:
        for r in self.ranks:
            if r.result is None:       # only on an internal error: leave no rank behind
                kill_group(r.pid, signal.SIGKILL)
                pidfd_kill(r.pidfd, signal.SIGKILL)
                import select
                select.select([r.pidfd], [], [], 5.0)
                r.result = wait_status(r.pidfd, reap=False) or (os.CLD_KILLED, signal.SIGKILL)
        for r in self.ranks:
            wait_status(r.pidfd, reap=True)
            if r.proc is not None:
                r.proc.returncode = shell_status(*r.result)  # reaped: keep Popen quiet
            rank_pids.discard(r.pid)
            os.close(r.pidfd)
        reap_adopted(self.foreign)
        for key in list(self.sel.get_map().values()):
            if key.data[0] == "out":
                os.close(key.fd)
        self.sel.close()
        signal.set_wakeup_fd(old_wakeup)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        os.close(rfd)
        os.close(wfd)
        if self.world_fd is not None:
            os.close(self.world_fd)
        if self.parent_fd is not None:
            os.close(self.parent_fd)
        _linux.set_child_subreaper(self._was_subreaper)

    def _report(self) -> int:
        if self.orphaned:              # nobody to tell, nobody to exit to
            return 128 + signal.SIGKILL
        if self.failure is not None:
            rank, code, st, failed = self.failure
            r = self.ranks[rank]
            if r.result is not None and r.result != UNKNOWN and r.result != (os.CLD_EXITED, 0):
                code, st = r.result  # the root cause's own status (see _service)
                what = f"rank {rank} (pid {r.pid}) {describe_status(code, st)}"
            elif r.result == (os.CLD_EXITED, 0) and failed != rank:
                # the root cause ended normally while a rank still needed it: say whose
                # status this is (before: rank 1's code under rank 0's name)
                f = self.ranks[failed]
                what = (f"rank {failed} (pid {f.pid}) {describe_status(code, st)}: it "
                        f"still needed rank {rank} (pid {r.pid}), which exited normally")
            else:
                what = f"rank {rank} (pid {r.pid}) {describe_status(code, st)}"
            others = ""
            if self.stopped:
                others = (f"; stopped the {self.stopped} other rank"
                          f"{'s' if self.stopped > 1 else ''} still running")
            self._say(what + others)
            return shell_status(code, st)
        if self.got_signal is not None:
            self._say(f"got {signal_name(self.got_signal)}; stopped {self.stopped} of "
                      f"{len(self.ranks)} ranks")
            return 128 + self.got_signal
        return 0


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


# ---------------------------------------------------------------- the supervisor

def _run_supervised(opts: Options) -> int:
    """Run the job from a supervisor child that outlives this process.

    This process (the one the user started, and may SIGKILL) forks the
    supervisor, which runs the :class:`Launcher` in its own process group: it is
    the ranks' parent and a child subreaper, so every descendant of a rank that
    is orphaned (a double fork, a ``setsid()`` daemon) is reparented to it.  It
    holds a pidfd of this process: when this process dies, whatever the cause,
    it SIGKILLs the ranks and every leftover, reaps them and exits.  Here we
    only pass signals on (SIGINT, SIGTERM, SIGHUP, SIGUSR1/2, SIGCONT; ^Z stops
    the supervisor, which stops the ranks, and then this process) and exit
    with the supervisor's status.  The supervisor being in its own process group,
    a ^C from the terminal reaches it once, through us.  This process is a
    subreaper too: should the supervisor itself be killed, its orphans come
    here and are killed.
    """
    handled = [s for s in _HANDLED if signal.getsignal(s) is not signal.SIG_IGN]
    # blocked across the fork: a signal sent meanwhile waits for the handlers
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    was_subreaper = _linux.get_child_subreaper()
    me = os.getpid()
    try:
        _linux.set_child_subreaper(True)
        # the supervisor's collections need not visit (and copy on write) every
        # object inherited from this process
        gc.freeze()
        # (numpy's OpenBLAS stops its threads before a fork, driller's release
        # sender is waited for: a "multi-threaded" warning is about the caller's)
        pid, forked_warnings = _procs.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _linux.set_child_subreaper(was_subreaper)
        raise
    if pid == 0:  # pragma: no cover - the supervisor; covered by every `driller run` test
        code = 70
        try:
            os.setpgid(0, 0)
            # it writes the ranks' output to the terminal from a background
            # process group: with `stty tostop` that would stop it
            dfl = () if signal.getsignal(signal.SIGTTOU) is signal.SIG_IGN else (signal.SIGTTOU,)
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            code = Launcher(opts, parent=me, mask=old_mask, child_dfl=dfl).run()
        except BaseException:  # noqa: BLE001 - report, and exit with a status
            import traceback
            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)
    try:
        os.setpgid(pid, pid)   # as the child does (whichever comes first)
    except OSError:
        pass
    try:
        pidfd = _linux.pidfd_open(pid)     # our unreaped child: cannot be gone
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:   # (EMFILE) the supervisor sees us go and ends the job
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    try:
        _procs.reissue(forked_warnings)    # (-W error: raised here; the job is stopped)
    except BaseException:
        pidfd_kill(pidfd, signal.SIGKILL)
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        for fd in (pidfd, rfd, wfd):
            os.close(fd)
        kill_children()
        _linux.set_child_subreaper(was_subreaper)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise

    def forward(sig, _frame):
        pidfd_kill(pidfd, sig)
        if sig == signal.SIGTSTP and _linux.pidfd_alive(pidfd):
            os.kill(me, signal.SIGSTOP)   # ^Z: the job stops, and so do we (for the shell)

    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    old_handlers = {sig: signal.signal(sig, forward) for sig in handled}
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        import select
        while True:
            # (a signal delivered to another thread of ours writes to rfd; one
            # delivered to this one interrupts select, runs forward, and select goes on)
            ready, _, _ = select.select([rfd, pidfd], [], [])
            if pidfd in ready:
                break
            try:
                while os.read(rfd, 512):
                    pass
            except BlockingIOError:
                pass
        res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        os.close(rfd)
        os.close(wfd)
        os.close(pidfd)
        # only if the supervisor was killed: its orphans (ranks' descendants)
        kill_children()
        _linux.set_child_subreaper(was_subreaper)
    if res.si_code == os.CLD_EXITED:
        return res.si_status
    print(f"driller run: the supervisor (pid {pid}) {describe_status(res.si_code, res.si_status)}"
          f"; killed what was left of the job", file=sys.stderr)
    return shell_status(res.si_code, res.si_status)



def main(argv: list[str] | None = None, *, supervised: bool = False) -> int:
    """``driller run ARGV``; the exit status.

    ``supervised=True`` (the ``driller run`` command): the job runs under a
    supervisor child that kills it when this process dies, even by SIGKILL.
    ``supervised=False`` (a call from inside another program, a test): this
    process supervises the job itself.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(argv)
        if opts is None:
            print_help()
            return 0
        if opts.kind == "path" and not os.path.exists(opts.target):
            raise UsageError(f"cannot open {opts.target!r}: no such file")
        if opts.mpi4py:
            _shim_dir()
        from . import _world
        limit = getattr(_world, "MAX_SIZE", opts.n)
        if opts.n > limit:
            raise UsageError(f"-n {opts.n}: an mmpi world holds at most {limit} ranks")
        need = 3 * opts.n + 64        # two pipes and a pidfd per rank, and some spare
        if _linux.nofile_limit() < need and _linux.raise_nofile_limit() < need:
            raise UsageError(f"-n {opts.n} needs about {need} file descriptors; the limit "
                             f"is {_linux.nofile_limit()} (see ulimit -n)")
        # read here as the supervisor will (creating the world): a bad value is one
        # line now, not the supervisor's traceback
        _world.default_ring_bytes(opts.n)
    except UsageError as e:
        return usage_error(str(e))
    except DrillerError as e:   # (a setting: the usage line would not help)
        sys.stderr.write(f"driller run: error: {e}\n")
        return 2
    for f in (sys.stdout, sys.stderr):
        if f is not None:            # (None: started with that fd closed)
            f.flush()
    _hold_stdio()
    if supervised:
        return _run_supervised(opts)
    return Launcher(opts).run()


def run_program(argv: list[str] | None = None) -> None:
    """``driller run ARGV`` as the program itself (the ``driller`` command): runs
    :func:`main` supervised, then ends this process with the job's status.

    The process exits with ``os._exit`` once its output is flushed: it ran no
    user code, and Python's finalization (module teardown, a last garbage
    collection) would only delay the end of the job by a few ms (docs/launcher.md,
    "Startup").  An exception propagates as usual.  The caller may have disabled
    the garbage collector for the start-up (the supervisor enables it again
    once the ranks are started).
    """
    code = main(argv, supervised=True)
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:  # noqa: BLE001 - a closed stdout: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    import gc as _gc
    _gc.disable()
    run_program()
