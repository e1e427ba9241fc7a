"""A hybrid world's transfer between nodes survives an exception raised as it completes.

A real mpirun job of 2 emulated nodes x 1 rank (tests/_hybrid_interrupted_prog.py):
the receiver of a 2 MiB rendezvous across nodes (MPI carries the data) takes a real
SIGUSR1 on its own thread as the hybrid's poll runs the transfer's completion; the
handler raises, the rank waits again.  The receive must complete with every byte and
the next message come next.  Before (integ22) the poll forgot the transfer before
its completion ran, so the receive, interrupted there, waited forever (the job's
timeout).  No timed assertions.
"""

from __future__ import annotations

import ast
import os
import uuid

import pytest

from test_hybrid import _job, _no_leftovers

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hybrid_interrupted_prog.py")


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_a_transfer_between_nodes_interrupted_at_its_completion_completes(impl, tmp_path):
    tag = uuid.uuid4().hex[:8]
    r = _job(impl, [PROG, str(tmp_path)], tag, timeout=90, sizes=(1, 1))
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "result") as f:
        raised, left, same, tag2, small_ok, transfers, ends = ast.literal_eval(f.read())
    assert raised == 1 and left == 0, "the completion was not interrupted: proves nothing"
    assert (same, tag2, small_ok, transfers, ends) == (True, 3, True, 0, 0)
    _no_leftovers(tag, None, impl)
