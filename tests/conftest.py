"""Shared fixtures: every test is checked for leaks (child processes, /dev/shm files)."""

import gc
import os
import sys
import time

import pytest

from driller import _linux


def _children(pid: int) -> set[int]:
    """Live (non-zombie) children of pid."""
    return {c for c in _linux.child_pids(pid) if _linux.pid_alive(c)}


@pytest.fixture(autouse=True)
def no_leaks():
    """Fails a test that leaves /dev/shm files or live child processes behind."""
    shm_before = set(os.listdir("/dev/shm"))
    jobs_before = set(_mpi_jobs())
    kids_before = _children(os.getpid())
    memfds_before = _memfds()
    yield
    gc.collect()
    leaked_fds = _memfds() - memfds_before
    assert not leaked_fds, f"memfd fds left open: {sorted(leaked_fds)}"
    deadline = time.monotonic() + 5
    while True:
        leaked = _children(os.getpid()) - kids_before
        leaked = {p for p in leaked if not _is_expected(p)}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"child processes left running: {sorted(leaked)}"
    # the MPI jobs this test started (tests/test_hybrid.py's _job) and did not check:
    # their MPI libraries' files are removed, and any still in /dev/shm is a leak;
    # the same libraries' files of other jobs (another run's) are none of ours
    jobs = _mpi_jobs()
    own = []
    for tag in set(jobs) - jobs_before:
        job = jobs.pop(tag)
        own += [f for f in job.left() if f.startswith("/dev/shm/")]
        job.cleanup()
    new_shm = {f for f in set(os.listdir("/dev/shm")) - shm_before
               if not f.startswith(_FOREIGN_SHM)}
    assert not new_shm, f"files left in /dev/shm: {sorted(new_shm)}"
    assert not own, f"the test's MPI jobs left in /dev/shm: {sorted(own)}"


def _mpi_jobs() -> dict:
    """The MPI jobs started by tests and not yet checked (test_hybrid._JOBS)."""
    hybrid = sys.modules.get("test_hybrid")
    return hybrid._JOBS if hybrid is not None else {}


# long-lived helpers that are not leaks: the fd proxy (exits with its last
# client) and multiprocessing's own resource tracker and fork server
_EXPECTED = (b"driller.proxy._server", b"resource_tracker", b"forkserver")


def _is_expected(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return True  # already gone
    return any(x in cmd for x in _EXPECTED)


# files that the peers we compare against make (multiprocessing's semaphores,
# Open MPI's and MPICH's shared-memory segments, UCX's under either), possibly in a
# concurrent run: not ours (tests/test_hybrid.py notes its own MPI jobs' files, checks
# and removes them; no_leaks fails a test whose jobs left some it did not check)
_FOREIGN_SHM = ("sem.mp-", "sm_segment.", "vader_segment.", "mpich_shm_", "ucx_shm_posix_")


def _memfds() -> set[tuple[int, str]]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        # heap arenas live as long as the process (like malloc's heap), bounded
        if target.startswith("/memfd:") and "driller:arena" not in target:
            out.add((int(fd), target))
    return out
