"""Collectives called wrongly on a rank of another node (a hybrid world, issue 10;
the collective board of one node cannot see it): real mpirun/mpiexec jobs of 2
emulated nodes x 2 ranks (tests/_hybrid_board_prog.py).

A rank that passes another root than the others, or calls another collective, in a
hierarchical collective across nodes used to wait forever with the others (two node
leaders each waiting for the other), or, where the hierarchy hid the difference,
took another root's data without a word (rank 3 of a Bcast with root 1 got rank
0's buffer; a Reduce to rank 1 from one rank gave rank 0 the full sum and no
error).  Now the job ends at once, naming both ranks and what each called
(``_coll/_hboard``), and leaves nothing behind; a correct program whose ranks wait
long for a slow rank (also with a 1 ms grace, where every wait compares) is never
taken for a wrong one.
"""

from __future__ import annotations

import os
import re
import uuid

import pytest

from test_hybrid import _job, _mpi_shm, _no_leftovers

PROG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hybrid_board_prog.py")

_NAMED = re.compile(r"driller: collective #1 on MPI_COMM_WORLD spanning nodes: rank (\d) "
                    r"called (\S+) but rank (\d) \(world rank \d\) called (\S+): every rank "
                    r"must call the same collectives")


@pytest.mark.parametrize("impl, case, culprit, theirs, mine", [
    # silent before: rank 3 (not a leader) took rank 0's data for root 1's
    ("openmpi", "Bcast-3-1", 3, "Bcast(root=0)", "Bcast(root=1)"),
    # a hang before: the leaders (0 and 2) each waited for the other
    ("openmpi", "Bcast-0-2", 0, "Bcast(root=0)", "Bcast(root=2)"),
    ("mpich", "Bcast-0-2", 0, "Bcast(root=0)", "Bcast(root=2)"),
    # a hang before: the odd rank and its node peer on one node, the others gone on
    ("openmpi", "kind", 2, "Bcast(root=0)", "Barrier"),
    # silent before: rank 0 got the whole sum, rank 3's root 1 nothing, no error
    ("openmpi", "Reduce", 3, "Reduce(root=0)", "Reduce(root=1)"),
    ("openmpi", "gather", 1, "gather(root=0)", "gather(root=3)"),
    # a hang before
    ("openmpi", "Scatter", 2, "Scatter(root=0)", "Scatter(root=1)"),
    ("mpich", "Scatter", 2, "Scatter(root=0)", "Scatter(root=1)"),
])
def test_a_wrong_root_or_kind_on_a_rank_of_another_node_ends_the_job(impl, case, culprit,
                                                                     theirs, mine):
    tag = uuid.uuid4().hex[:8]
    r = _job(impl, [PROG, "wrong", case], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "WRONG DATA" not in out, out
    assert "finished" not in out, out      # nobody went on past the collective
    found = _NAMED.findall(out)
    assert found, out
    for a, what_a, b, what_b in found:     # each report names the culprit and a peer
        pair = {(int(a), what_a), (int(b), what_b)}
        assert (culprit, mine) in pair, out
        assert any(w == theirs for k, w in pair if k != culprit), out
    _no_leftovers(tag, None)


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_a_rank_that_exits_while_the_others_wait_in_a_collective_is_named_as_exiting(impl):
    """Rank 2 calls sys.exit(3) while the others wait in a Barrier, then another: its
    exit's barrier passed their first Barrier (the same tags), it went on into MPI's
    own Finalize and they hung in the next one for ever.  Now the exit's barrier has
    tags of its own, so the ranks' histories are compared and the job ends naming rank
    2 as exiting (the report said "called Finalize", which the program never did)."""
    tag = uuid.uuid4().hex[:8]
    r = _job(impl, [PROG, "wrong", "exit"], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "finished" not in out, out
    exiting = "Finalize (MPI.Finalize() or its program's exit)"
    found = re.findall(r"driller: collective #1 on MPI_COMM_WORLD spanning nodes: rank (\d) "
                       r"called (.+?) but rank (\d) \(world rank \d\) called (.+?): every", out)
    assert found, out
    for a, what_a, b, what_b in found:   # rank 2's exit, against another's Barrier
        assert {(int(a), what_a), (int(b), what_b)} in (
            {(2, exiting), (k, "Barrier")} for k in (0, 1, 3)), out
    _no_leftovers(tag, None)


@pytest.mark.parametrize("impl", ["openmpi", "mpich"])
def test_a_wrong_root_is_named_when_the_others_exit_at_once(impl):
    """Rank 3 passes root 1 to a Bcast, the others root 0 and then exit (no other
    collective): the odd rank waits for a message of root 1's that never comes (before
    the per-root node step: it took rank 0's data and the job ended as if all was
    well); the others' exit is a barrier numbered as a collective, so rank 3's history
    meets theirs and the job ends, naming it."""
    tag = uuid.uuid4().hex[:8]
    r = _job(impl, [PROG, "wrong", "Bcast-3-1", "exit"], tag, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "WRONG DATA" not in out and "rank 3 got" not in out, out
    found = _NAMED.findall(out)
    assert found and all("3" in (a, b) for a, _, b, _ in found), out
    assert "Bcast(root=1)" in out, out
    _no_leftovers(tag, None)


@pytest.mark.parametrize("impl, grace", [("openmpi", None), ("openmpi", "1"), ("mpich", "1")])
def test_ranks_waiting_for_a_slow_rank_are_never_taken_for_wrong_ones(impl, grace, tmp_path):
    tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
    env = {"DRILLER_MMPI_BOARD_GRACE_MS": grace} if grace else None
    r = _job(impl, [PROG, "right", str(tmp_path)], tag, extra_env=env, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "driller:" not in out, out
    assert sorted(os.listdir(tmp_path)) == [f"ok{k}" for k in range(4)], out
    _no_leftovers(tag, shm, impl)


def test_messages_left_unreceived_across_nodes_do_not_crash_the_exit():
    """Two ranks of different nodes each send the other a message that is never
    received, then exit: before, Open MPI's MPI_Finalize aborted on a corrupted heap
    or segfaulted in about 6 runs of 10 (a record still arriving as the receiving rank
    cancelled its pool); the exit's barrier now takes every record first.  Three jobs."""
    for _ in range(3):
        tag, shm = uuid.uuid4().hex[:8], _mpi_shm()
        r = _job("openmpi", [PROG, "stray"], tag, timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert out.count("finished") == 4, out
        _no_leftovers(tag, shm, "openmpi")
