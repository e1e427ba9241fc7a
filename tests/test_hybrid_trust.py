"""Hybrid worlds as a demanding user meets them (issue 10): real mpirun/mpiexec jobs of 2
emulated nodes x 2 ranks (tests/_hybrid_trust_prog.py), and the hybrid's absence
when there is no MPI launcher or no mpi4py.

* routes on derived communicators, Allocate_shared zero copy on the node, probes of
  both routes with ANY_SOURCE/ANY_TAG, a cancelled receive from another node,
  synchronous sends across nodes, a large object and a shared array by value;
* an argument that only one rank refuses, or a count that differs on one rank, in a
  hierarchical Bcast / Reduce / Allreduce (or an object that cannot be pickled in
  bcast, a receive buffer refused in Allgather, a flat Scan across nodes): the job
  ends non-zero at once, naming that rank and its error, and leaves nothing behind
  (before: the other ranks waited forever);
* with no MPI launcher, or an MPI launcher but no mpi4py: single-node worlds and
  `driller run` work without importing mpi4py; a launched rank says what is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from test_hybrid import _env, _job, _mpi_shm, _no_leftovers

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hybrid_trust_prog.py")


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_what_a_user_checks_first(impl, tmp_path):
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, "checks", str(tmp_path)], tag)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(4)], r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)


@pytest.mark.parametrize("what, bad, error", [
    ("Allreduce", 3, "MmpiValueError: Reduce: 9 x MPI_DOUBLE"),   # not a node's leader
    ("Bcast", 2, "expected 40 bytes"),   # a leader, the only one of its node that differs
    ("Reduce", 1, "MmpiValueError: Reduce: 9 x MPI_DOUBLE"),      # the root's node
    ("bcast", 2, "PicklingError"),       # the root cannot pickle its object
    # a count that makes rank 3 take the leaders' path while its node takes lanes
    ("Allreduce-lanes", 3, "expected 40 bytes from rank 1 but got 32"),
    ("Allgather", 0, "MmpiValueError: Allgather: 396 x MPI_DOUBLE"),
    ("Scan", 1, "MmpiValueError: Scan: 9 x MPI_DOUBLE"),
])
def test_an_argument_refused_on_one_rank_ends_the_job(what, bad, error):
    tag = uuid.uuid4().hex[:8]
    r = _job("openmpi", [PROG, "refuse", what, str(bad)], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "spanning nodes failed on its rank" in out and error in out, out
    assert "caught" not in out.replace(f"rank {bad} caught", ""), out   # nobody went on
    _no_leftovers(tag, None)


@pytest.mark.parametrize("impl, what, bad", [
    ("openmpi", "send", 1), ("mpich", "send", 2), ("openmpi", "count", 3)])
def test_a_large_allreduce_refused_on_one_rank_raises_everywhere(impl, what, bad, tmp_path):
    """The lanes' own errors: every rank of the communicator raises (the refusing one
    its own error, the others one naming the failure), none aborts the job, and the
    next Allreduce sees every rank in step."""
    tag = uuid.uuid4().hex[:8]
    r = _job(impl, [PROG, "agreed", what, str(bad), str(tmp_path)], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "spanning nodes failed" not in out, out
    assert sorted(os.listdir(tmp_path)) == [f"{k}-{i}" for k in range(4) for i in range(2)]
    for k in range(4):
        if k == bad and what == "send":
            want = "raised MmpiValueError: Allreduce: 100000 x MPI_DOUBLE from element 0 overruns"
        elif k // 2 == bad // 2:   # (its node peer sees it in the node's size table)
            want = f"rank {bad} passes 0 bytes" if what == "send" else "passes 800064"
        else:
            want = "the ranks of another node pass a different count"
        for i in range(2):
            got = (tmp_path / f"{k}-{i}").read_text()
            assert got.startswith("raised ") and want in got, (k, i, want, got)
    _no_leftovers(tag, set())   # (ended normally: no MPI segment left either)


_NO_MPI4PY = "raise ImportError('No module named mpi4py (hidden by the test)')\n"


def _hidden(tmp_path) -> dict:
    """An environment whose `import mpi4py` fails, as where it is not installed."""
    fake = tmp_path / "nompi" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(_NO_MPI4PY)
    env = _env()
    env["PYTHONPATH"] = str(tmp_path / "nompi") + os.pathsep + env["PYTHONPATH"]
    return env


def test_without_mpi4py_single_node_worlds_and_driller_run_work(tmp_path):
    env = _hidden(tmp_path)
    code = textwrap.dedent("""
        import sys
        from driller import MPI, mmpi
        c = MPI.COMM_WORLD
        n = c.allreduce(1)
        assert "mpi4py.MPI" not in sys.modules or sys.modules["mpi4py.MPI"] is MPI
        print("RANK", c.Get_rank(), c.Get_size(), n, mmpi.route(c, 0), flush=True)
    """)
    single = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert single.returncode == 0, single.stderr
    assert single.stdout.split() == ["RANK", "0", "1", "1", "self"]
    for opt in ([], ["--no-mpi4py"]):   # the shim for `from mpi4py import MPI`, or none
        run = subprocess.run([sys.executable, "-m", "driller", "run", "-n", "2", *opt,
                              "-c", code], capture_output=True, text=True, timeout=90,
                             env=env)
        assert run.returncode == 0, run.stderr
        lines = sorted(ln for ln in run.stdout.splitlines() if ln.startswith("RANK"))
        assert lines == ["RANK 0 2 2 self", "RANK 1 2 2 shm"], (opt, run.stdout)


def test_under_a_launcher_without_mpi4py_the_error_says_what_to_do(tmp_path):
    env = _hidden(tmp_path)
    env.update(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    code = "from driller import mmpi; mmpi.COMM_WORLD.Get_size()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode != 0
    assert "needs mpi4py" in r.stderr and "DRILLER_HYBRID=0" in r.stderr, r.stderr
    env["DRILLER_HYBRID"] = "0"   # as the message says: a singleton
    r = subprocess.run([sys.executable, "-c", code + "; print('one')"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["one"], r.stderr


def _allgather_refused(comm, count):
    """Rank 1 passes a send buffer spec that overruns its buffer (refused before any
    communication); it must still take part, so that no rank waits for it."""
    import numpy as np

    from driller import MPI
    from driller.errors import MmpiError
    me, n = comm.Get_rank(), comm.Get_size()
    send = [np.zeros(5), 9, MPI.DOUBLE] if me == 1 else np.full(count, float(me))
    out = np.zeros((n, count))
    try:
        comm.Allgather(send, out)
        res = "ok"
    except MmpiError as e:
        res = type(e).__name__
    ok = np.zeros(n)
    comm.Allgather(np.array([float(me)]), ok)    # still in step
    return res, ok.tolist()


@pytest.mark.parametrize("count", [4, 40_000, 200_000])   # eager, messages, direct
def test_single_node_allgather_refused_on_one_rank_hangs_nobody(count):
    """On one node (the flat Allgather of every size): the refusing rank raises, the
    others raise or complete, and the next collective still works (before: the
    others waited forever for rank 1's block)."""
    from driller import mmpi
    res = mmpi.spawn(_allgather_refused, 3, args=(count,))
    assert res[1][0] == "MmpiValueError", res
    assert all(r[1] == [0.0, 1.0, 2.0] for r in res), res
    assert all(r[0] in ("ok", "MmpiError") for r in (res[0], res[2])), res


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job_under_mpich(mode):
    """As test_hybrid's Open MPI test: rank 2 raises (or is killed) while rank 3 waits
    on it through shared memory and ranks 0 and 1 through MPI.  Hydra names a killed
    rank by its pid and signal."""
    tag = uuid.uuid4().hex[:8]
    r = _job("mpich", [os.path.join(os.path.dirname(PROG), "_hybrid_prog.py"), mode], tag,
             timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    if mode == "raise":
        assert "rank 2 of the hybrid world raised ValueError (rank 2 fails on purpose)" in out
    else:
        assert "signal 9" in out or "PeerDiedError (rank 2 " in out, out
    _no_leftovers(tag, None)
