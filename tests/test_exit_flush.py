"""A rank that stops hands its peers what they still need from it first.

A reply (the FIN that completes a peer's rendezvous send, the ACK of a synchronous
send) or a send that finds the ring to its peer full waits in the rank's queue
until the peer drains the ring.  A rank that finishes (returns from a spawn job,
calls Finalize, or simply exits under ``driller run``) with such a record queued
must deliver it first: else the peer's send never completes and the peer gets a
PeerDiedError about a rank that did nothing wrong.  A peer that died or finalized
can take nothing more: the rank must not wait for it.

The scenario is made deterministic with a small ring (8 KiB: four 2 KiB records
fill it): rank 1 queues four eager sends and the FIN of rank 0's large send behind
a full ring, and is done (its sends are complete) once rank 0 has drained one
ringful, with the FIN still queued.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import driller
from driller import MPI, mmpi
from driller.errors import MmpiError

HERE = os.path.dirname(__file__)
SRC = os.path.join(os.path.dirname(HERE), "src")
PY = sys.executable

RING = 8192
SMALL = 2048 - 64          # one record: a quarter of the ring
N = 8                      # two ringfuls


def _fin_behind_a_full_ring(comm, finalize=False):
    me = comm.Get_rank()
    big = np.arange(1 << 14, dtype=np.float64)          # 128 KiB: rendezvous
    if me == 0:
        req = comm.Isend(big, dest=1, tag=7)            # RTS in the ring to rank 1
        time.sleep(0.5)     # rank 1 fills its ring to us, copies big, queues the FIN
        got = [np.empty(SMALL, np.uint8) for _ in range(N)]
        first = [comm.Irecv(got[i], source=1, tag=1) for i in range(N // 2)]
        mmpi.Request.Waitall(first)     # drains one ringful (4 records) in one go
        time.sleep(0.5)     # rank 1 refills the ring, is done and stops
        mmpi.Request.Waitall([comm.Irecv(got[i], source=1, tag=1)
                              for i in range(N // 2, N)])
        req.Wait()          # needs rank 1's FIN
        return [int(g[0]) for g in got]
    msgs = [np.full(SMALL, i, np.uint8) for i in range(N)]
    reqs = [comm.Isend(m, dest=0, tag=1) for m in msgs]  # 4 in the ring, 4 queued
    out = np.empty_like(big)
    comm.Recv(out, source=0, tag=7)                      # the FIN queues behind them
    mmpi.Request.Waitall(reqs)                           # complete once in the ring
    assert (out == big).all()
    if finalize:
        MPI.Finalize()
    return "done"


@pytest.fixture
def small_ring(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", str(RING))


def test_a_rank_returning_from_spawn_delivers_its_queued_fin(small_ring):
    assert mmpi.spawn(_fin_behind_a_full_ring, 2) == [list(range(N)), "done"]


def test_many_short_jobs_whose_last_rank_exits_at_once():
    # the collective a job ends with (an object allgather) then every rank returns
    def job(comm):
        size = comm.Get_size()
        for _ in range(3):
            with pytest.raises(MmpiError, match="out of range"):
                comm.Create_graph([1] * size, [size] * size)
        return comm.allgather(comm.Get_rank())
    for _ in range(10):
        assert mmpi.spawn(job, 3) == [[0, 1, 2]] * 3


_RUN_PROG = """
import sys, time
import numpy as np
from driller import MPI
sys.path.insert(0, {here!r})
from test_exit_flush import _fin_behind_a_full_ring
print(MPI.COMM_WORLD.Get_rank(), _fin_behind_a_full_ring(MPI.COMM_WORLD, {finalize}), flush=True)
"""


@pytest.mark.parametrize("finalize", [False, True], ids=["exit", "Finalize"])
def test_a_driller_run_rank_exiting_delivers_its_queued_fin(finalize):
    env = dict(os.environ, DRILLER_MMPI_RING_BYTES=str(RING))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    code = textwrap.dedent(_RUN_PROG.format(here=HERE, finalize=finalize))
    p = subprocess.run([PY, "-m", "driller", "run", "-n", "2", "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = sorted(p.stdout.split("\n"))
    assert f"0 {list(range(N))}" in lines and "1 done" in lines, p.stdout


def _peer_gone(comm, how):
    # rank 1 queues records to rank 0 behind a full ring, then rank 0 goes away
    # (killed, or finalized without draining): rank 1's finish must not wait for it
    me = comm.Get_rank()
    if me == 0:
        comm.Barrier()
        if how == "finalize":
            MPI.Finalize()
            time.sleep(3)         # alive, but it takes nothing any more
            return "finalized"
        os._exit(0)
    msgs = [np.full(SMALL, i, np.uint8) for i in range(N)]
    comm.Barrier()
    reqs = [comm.Isend(m, dest=0, tag=1) for m in msgs]  # 4 in the ring, 4 queued
    del reqs
    t0 = time.monotonic()
    MPI.Finalize()                                      # finish(): nobody to take them
    return time.monotonic() - t0


@pytest.mark.parametrize("how", ["finalize", "exit"])
def test_finish_does_not_wait_for_a_peer_that_takes_nothing(small_ring, how):
    from test_mmpi_p2p import run_ranks
    res = run_ranks(_peer_gone, 2, how, deadline=60)
    assert res[0] == ((True, "finalized") if how == "finalize" else
                      (False, ("Killed", "", None, "")))
    ok, took = res[1]
    assert ok, took
    assert took < 2.5, took       # it did not wait for rank 0 to exit


def test_finalize_inside_a_spawn_job():
    # spawn finalizes each rank after its function: a job's own Finalize comes first
    def job(comm):
        x = comm.allgather(comm.Get_rank())
        MPI.Finalize()
        return x
    assert mmpi.spawn(job, 2) == [[0, 1]] * 2


# ------------------------------------------------------------------ arrived, then exited
# A peer that did its part (sent the message, reached the barrier) and exited at
# once is not a death: a rank that looked a moment before it arrived, and sees
# its exit next, must look again instead of raising PeerDiedError.  The moment
# is made to fall in that window: rank 1 has exited (the deaths word moved) and
# the patched progress() of rank 0 is where its arrival shows.


def _wait_for_exit_of(comm, r):
    from driller.mmpi import _world as W
    t = comm._cx.t
    while not t.words[t.world.rank_word(r, W.R_DEAD)]:
        time.sleep(0.01)
    return t


def _barrier_then_exit(comm):
    if comm.Get_rank() == 1:
        return "gone"       # exits at once; rank 0 plays its arrival just before
    t = _wait_for_exit_of(comm, 1)
    mine, theirs = (t.world.coll_words(r)[0] for r in (0, 1))
    real = t.progress

    def progress():         # rank 1's barrier count shows up only now
        t.words[theirs] = t.words[mine]
        return real()
    t.progress = progress
    comm.Barrier()
    return "passed"


def _probe_then_exit(comm):
    if comm.Get_rank() == 1:
        comm.send("last words", dest=0, tag=5)
        return "gone"
    t = _wait_for_exit_of(comm, 1)
    real = t.progress
    calls = []

    def progress():         # the first look finds the ring still empty
        calls.append(1)
        return real() if len(calls) > 1 else False
    t.progress = progress
    assert comm.Probe(source=1, tag=5)
    return comm.recv(source=1, tag=5)


@pytest.mark.parametrize("fn, want", [(_barrier_then_exit, "passed"),
                                      (_probe_then_exit, "last words")],
                         ids=["Barrier", "Probe"])
def test_a_peer_that_arrived_then_exited_is_not_a_death(fn, want):
    assert mmpi.spawn(fn, 2) == [want, "gone"]


# -- rendezvous sends still owed when a rank finishes -----------------------------
# A send above STREAM_MAX (8 MiB) is a rendezvous: the receiver copies it from the
# sender's memory.  A rank that finishes (Finalize, the end of its program, a spawn
# job's return) with such a send not yet copied (a freed Isend, a Bsend, an object
# isend never waited for) waits while the receiver may still copy it, as MPI's
# Finalize completes every send; a rank that waits for anything else from it raises
# PeerDiedError ("has finished"), and a program that failed does not wait at all.

OWED = 12 << 20   # bytes: above STREAM_MAX


def _owed_value():
    return np.arange(OWED // 8, dtype=np.float64)


_OWED_PROG = """
import sys, time
import numpy as np
from driller import MPI
from driller.errors import PeerDiedError
sys.path.insert(0, {here!r})
from test_exit_flush import _owed_value, _wait_finishing, OWED
comm = MPI.COMM_WORLD
me = comm.Get_rank()
how, end, catch = {how!r}, {end!r}, {catch!r}
if me == 0:
    big = _owed_value()
    if how in ("freed", "wrong-tag", "barrier"):
        comm.Isend(big, dest=1, tag=7).Free()
    elif how == "bsend":
        MPI.Attach_buffer(bytearray(OWED + 4096 + MPI.BSEND_OVERHEAD))
        comm.Bsend(big, dest=1, tag=7)
        del big                          # the buffered copy is what travels
    elif how == "object":
        req = comm.isend({{"a": big, "n": 3}}, dest=1, tag=7)   # never waited for
    elif how == "both":                  # rank 1 owes rank 0 a message too
        comm.Isend(big, dest=1, tag=7).Free()
    print("0 sent", flush=True)
    if end == "raise":
        raise RuntimeError("rank 0 failed on purpose")
    if end == "Finalize":
        MPI.Finalize()
    print("0 done", flush=True)
else:
    if how == "both":
        comm.Isend(_owed_value(), dest=0, tag=8).Free()
        MPI.Finalize()
        print("1 done", flush=True)
    elif end == "raise":
        time.sleep(40)                   # never receives: the job ends without it
    elif how in ("wrong-tag", "barrier"):
        try:
            if how == "wrong-tag":       # rank 0 sends tag 7; rank 1 waits for tag 5
                comm.Recv(np.empty(OWED // 8), source=0, tag=5)
            else:                        # rank 0 never joins
                comm.Barrier()
        except PeerDiedError as e:
            if not catch:
                raise
            print("1 PeerDiedError", e, flush=True)
    else:
        _wait_finishing(comm, 0)         # rank 0 is serving the copy it owes
        if how == "object":
            got = comm.recv(source=0, tag=7)
            ok = got["n"] == 3 and np.array_equal(got["a"], _owed_value())
        else:
            out = np.empty(OWED // 8)
            comm.Recv(out, source=0, tag=7)
            ok = np.array_equal(out, _owed_value())
        print("1 received", ok, flush=True)
"""


def _wait_finishing(comm, r):
    """Until rank ``r`` says it is finishing (its R_FINALIZED word: 2)."""
    from driller.mmpi import _comm, _world
    t = _comm._state.transport
    word = t.world.rank_word(r, _world.R_FINALIZED)   # (COMM_WORLD: world ranks)
    deadline = time.monotonic() + 60
    while t.words[word] != _world.FINISHING:
        assert time.monotonic() < deadline, f"rank {r} never said it was finishing"
        time.sleep(0.005)


def _run_owed(how="", end="", catch=True, *, prog=_OWED_PROG, n=2, env_extra=None,
              timeout=90):
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    code = textwrap.dedent(prog.format(here=HERE, how=how, end=end, catch=catch))
    return subprocess.run([PY, "-m", "driller", "run", "-n", str(n), "-c", code],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("end", ["exit", "Finalize"])
@pytest.mark.parametrize("how", ["freed", "bsend", "object"])
def test_a_rendezvous_send_owed_at_the_end_is_still_received(how, end):
    p = _run_owed(how, end)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert "1 received True" in lines and "0 done" in lines, p.stdout + p.stderr


def test_two_ranks_finishing_that_owe_each_other_do_not_wait_for_each_other():
    p = _run_owed("both", "Finalize")
    assert p.returncode == 0, p.stdout + p.stderr
    assert {"0 done", "1 done"} <= set(p.stdout.splitlines()), p.stdout + p.stderr


@pytest.mark.parametrize("how", ["wrong-tag", "barrier"])
def test_a_rank_waiting_for_something_else_from_a_finished_rank_raises(how):
    # the finished rank waits for its owed copy; the other must not wait for it in
    # turn (a hang): it raises, names the rank and says it finished, then both end
    p = _run_owed(how, "Finalize")
    assert p.returncode == 0, p.stdout + p.stderr
    err = [ln for ln in p.stdout.splitlines() if ln.startswith("1 PeerDiedError")]
    assert err and "rank 0 has finished" in err[0], p.stdout + p.stderr
    assert "0 done" in p.stdout.splitlines(), p.stdout + p.stderr


def test_a_failed_rank_does_not_wait_for_its_owed_copies():
    # rank 1 sleeps 40 s and never receives: were rank 0 waiting for it, the job
    # would outlast the timeout; it fails at once, rank 0 named
    p = _run_owed("freed", "raise", timeout=30)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "rank 0 failed on purpose" in p.stderr and "0 sent" in p.stdout, p.stderr


def _owed_in_spawn(comm):
    if comm.Get_rank() == 0:
        comm.Isend(_owed_value(), dest=1, tag=7).Free()
        return "sent"
    _wait_finishing(comm, 0)
    out = np.empty(OWED // 8)
    comm.Recv(out, source=0, tag=7)
    return bool(np.array_equal(out, _owed_value()))


def test_a_spawn_rank_returning_with_an_owed_send_keeps_it_for_the_receiver():
    assert mmpi.spawn(_owed_in_spawn, 2) == ["sent", True]


def test_a_rank_failing_for_want_of_a_finished_rank_is_the_one_named():
    # the wrong-tag program, the PeerDiedError uncaught: rank 1 failed (its receive
    # can never match), not rank 0 (alive, serving its owed copy, then stopped)
    p = _run_owed("wrong-tag", "Finalize", catch=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "rank 0 has finished" in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("driller run: rank 1 (pid ") and "exited with code 1" in last, last


_LOCK_PROG = """
import sys, time
import numpy as np
from driller import MPI
from driller.errors import PeerDiedError
sys.path.insert(0, {here!r})
from test_exit_flush import _owed_value, _wait_finishing
comm = MPI.COMM_WORLD
me = comm.Get_rank()
win = MPI.Win.Allocate(64, comm=comm)
comm.Barrier()
if me == 0:                      # holds rank 1's window, ends owing rank 2
    win.Lock(1, MPI.LOCK_EXCLUSIVE)
    comm.Isend(_owed_value(), dest=2, tag=7).Free()
    MPI.Finalize()
elif me == 2:
    _wait_finishing(comm, 0)
    try:
        win.Lock(1, MPI.LOCK_EXCLUSIVE)
        print("2 locked?!", flush=True)
    except PeerDiedError as e:
        print("2 PeerDiedError", e, flush=True)
    out = np.empty_like(_owed_value())
    comm.Recv(out, source=0, tag=7)
    print("2 received", np.array_equal(out, _owed_value()), flush=True)
"""


def test_a_lock_held_by_a_finished_rank_is_refused_not_waited_for():
    # rank 0 will never unlock (it finished); rank 2 waiting for the lock while rank 0
    # waits for rank 2 to take its owed message would be a deadlock
    p = _run_owed(prog=_LOCK_PROG, n=3)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout.splitlines()
    err = [ln for ln in out if ln.startswith("2 PeerDiedError")]
    assert err and "rank 0 of the window finished" in err[0], p.stdout + p.stderr
    assert "2 received True" in out, p.stdout + p.stderr


_PUSHED_PROG = """
import os, signal, sys, threading, time
import numpy as np
from driller import MPI
sys.path.insert(0, {here!r})
from test_exit_flush import _owed_value, _wait_finishing
comm = MPI.COMM_WORLD
me = comm.Get_rank()
pid0 = comm.bcast(os.getpid(), root=0)
if me == 0:
    comm.Isend(_owed_value(), dest=1, tag=7).Free()
else:
    _wait_finishing(comm, 0)
    def pause():        # rank 0 descheduled while it pushes (longer than a sleep)
        time.sleep(0.01)
        os.kill(pid0, signal.SIGSTOP)
        time.sleep(0.3)
        os.kill(pid0, signal.SIGCONT)
    th = threading.Thread(target=pause)
    th.start()
    out = np.empty_like(_owed_value())
    comm.Recv(out, source=0, tag=7)
    th.join()
    print("1 received", np.array_equal(out, _owed_value()), flush=True)
"""


def test_an_owed_message_pushed_by_a_finishing_rank_is_received():
    # no single copy: the finishing rank pushes its owed message through the ring; a
    # pause of its own is not "it has finished" for the receive it is serving
    p = _run_owed(prog=_PUSHED_PROG, env_extra={"DRILLER_MMPI_SINGLE_COPY": "0"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 received True" in p.stdout.splitlines(), p.stdout + p.stderr


_EXIT_PROG = """
import sys
import numpy as np
from driller import MPI
sys.path.insert(0, {here!r})
from test_exit_flush import _owed_value
comm = MPI.COMM_WORLD
if comm.Get_rank() == 0:
    comm.Isend(_owed_value(), dest=1, tag=7).Free()
    sys.exit(3)          # failed, no traceback: the excepthook does not see it
import time
time.sleep(40)       # busy elsewhere: never receives (nor sees rank 0 finish)
"""


def test_the_wait_for_owed_copies_is_bounded_and_says_what_is_lost():
    # (the bound counts time with nothing moving: rank 1 never receives)
    p = _run_owed(prog=_EXIT_PROG, env_extra={"DRILLER_MMPI_FINISH_WAIT": "1"},
                  timeout=60)
    assert p.returncode == 3, p.stdout + p.stderr
    assert ("driller: rank 0 stops with 1 rendezvous send (12582912 bytes to rank 1, "
            "tag 7) not received (waited ") in p.stderr, p.stderr
    assert "DRILLER_MMPI_FINISH_WAIT is 1 s" in p.stderr, p.stderr


def test_a_bad_finish_wait_is_refused_at_the_start():
    p = _run_owed(prog="from driller import MPI\nMPI.COMM_WORLD.Barrier()\n",
                  env_extra={"DRILLER_MMPI_FINISH_WAIT": "soon"}, timeout=60)
    assert p.returncode != 0
    assert "DRILLER_MMPI_FINISH_WAIT='soon'" in p.stderr, p.stderr


def _miscounted(comm):
    """Rank 0's count of queued records one too high, nothing queued (an exception
    between a count and its append; a WRITING mark counted while it stood second,
    docs/mmpi.md "sixteenth round (mid-size)"): finishing must not wait for
    records that are not there."""
    from driller.mmpi import _transport as T
    t = comm._t
    if comm.rank == 0:
        q = t.pending[1]
        q.append(("x",))
        q.append(T.WRITING)
        t._recount()
        counted = t.npending   # (the mark, second, is no record)
        q.clear()
        t.npending += 1
        t.finish(owed=False)
        return counted, t.npending
    return None


def test_finish_recounts_a_count_left_too_high():
    from test_mmpi_p2p import run_ranks
    res = run_ranks(_miscounted, 2, deadline=30)
    for ok, v in res:
        assert ok, v
    assert res[0][1] == (1, 0), res
