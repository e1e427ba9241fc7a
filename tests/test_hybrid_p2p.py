"""Point-to-point across emulated nodes in hybrid worlds, on both protocols of the MPI
route (records inline up to INLINE bytes; beyond, a request and the data as MPI
messages of their own): tests/_hybrid_p2p_prog.py under Open MPI (shared memory and
TCP between the "nodes") and MPICH, with the default threshold and a small one (so
that tables longer than a record, and sizes around the threshold, are cheap), and
once with no yield-polling window (the remote waits' fallbacks)."""

from __future__ import annotations

import os
import uuid

import pytest

from test_hybrid import _job, _mpi_shm, _no_leftovers

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hybrid_p2p_prog.py")


@pytest.mark.parametrize("impl, extra", [
    ("openmpi", {}),
    ("openmpi", {"DRILLER_MMPI_REMOTE_INLINE": "512"}),
    # no yield-polling window: the remote waits give up on their fast paths at once
    ("openmpi", {"DRILLER_MMPI_REMOTE_SPIN_US": "0", "DRILLER_MMPI_REMOTE_INLINE": "2048"}),
    ("openmpi", {"OMPI_MCA_btl": "self,tcp", "OMPI_MCA_pml": "ob1",
                 "DRILLER_MMPI_REMOTE_INLINE": "1024"}),
    ("mpich", {}),
    ("mpich", {"DRILLER_MMPI_REMOTE_INLINE": "512"}),
])
def test_p2p_across_nodes(impl, extra, tmp_path):
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    r = _job(impl, [PROG, str(tmp_path)], tag, extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(4)], r.stdout + r.stderr
    _no_leftovers(tag, shm, impl)
