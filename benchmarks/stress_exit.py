"""Stress: many short jobs whose ranks exit right after their last communication.

    .venv/bin/python benchmarks/stress_exit.py                 # 200 jobs of each kind, -n 3
    .venv/bin/python benchmarks/stress_exit.py --jobs 900 --kinds allgather -n 4
    .venv/bin/python benchmarks/stress_exit.py --parallel 3    # 3 runners at once (load)

Each job is an ``mmpi.spawn`` whose ranks end with one of:

* ``allgather``: a loop of invalid ``Create_graph`` calls (each agrees on the error
  with an object allgather), then an object allgather, then return;
* ``barrier``: ``Barrier`` (the shared-memory one) then return;
* ``fin``: a rendezvous receive whose FIN waits behind a full ring (8 KiB rings)
  when the rank is done (the deterministic scenario of tests/test_exit_flush.py).

A job fails when a rank raises (typically PeerDiedError about a rank that exited
normally: it had done its part) or the results are wrong.  Before the fixes of
``Transport.finish`` (records queued at exit) and ``check_dead``'s second look
(a peer that arrived, then exited), ``fin`` failed every time and the others now
and then under load.  Prints failures and a summary; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from driller import mmpi

RING = 8192
SMALL = 2048 - 64


def _allgather(comm):
    size = comm.Get_size()
    for _ in range(5):
        try:
            comm.Create_graph([1] * size, [size] * size)
        except mmpi.MmpiError:
            pass
    return comm.allgather(comm.Get_rank())


def _barrier(comm):
    comm.Barrier()
    return comm.Get_rank()


def _fin(comm):
    me = comm.Get_rank()
    if me > 1:
        return me
    big = np.arange(1 << 14, dtype=np.float64)
    if me == 0:
        req = comm.Isend(big, dest=1, tag=7)
        time.sleep(0.05)
        got = [np.empty(SMALL, np.uint8) for _ in range(8)]
        mmpi.Request.Waitall([comm.Irecv(got[i], source=1, tag=1) for i in range(4)])
        time.sleep(0.05)
        mmpi.Request.Waitall([comm.Irecv(got[i], source=1, tag=1) for i in range(4, 8)])
        req.Wait()
        return me
    reqs = [comm.Isend(np.full(SMALL, i, np.uint8), dest=0, tag=1) for i in range(8)]
    out = np.empty_like(big)
    comm.Recv(out, source=0, tag=7)
    mmpi.Request.Waitall(reqs)
    return me


KINDS = {"allgather": (_allgather, lambda n: [list(range(n))] * n),
         "barrier": (_barrier, lambda n: list(range(n))),
         "fin": (_fin, lambda n: list(range(n)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs of each kind (default 200)")
    ap.add_argument("-n", type=int, default=3, help="ranks per job (default 3)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma separated: " + ", ".join(KINDS))
    ap.add_argument("--parallel", type=int, default=1, help="runners at once (default 1)")
    a = ap.parse_args(argv)
    if a.parallel > 1:
        args = [sys.executable, __file__, "--jobs", str(a.jobs), "-n", str(a.n), "--kinds", a.kinds]
        procs = [subprocess.Popen(args) for _ in range(a.parallel)]
        return max(p.wait() for p in procs)
    failed = 0
    for kind in a.kinds.split(","):
        fn, want = KINDS[kind]
        if kind == "fin":
            os.environ["DRILLER_MMPI_RING_BYTES"] = str(RING)
        bad = 0
        t0 = time.monotonic()
        for i in range(a.jobs):
            try:
                got = mmpi.spawn(fn, a.n)
                if got != want(a.n):
                    raise AssertionError(f"wrong results {got}")
            except Exception as e:  # noqa: BLE001 - counted and shown
                bad += 1
                print(f"{kind} job {i}: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        os.environ.pop("DRILLER_MMPI_RING_BYTES", None)
        print(f"{kind}: {a.jobs} jobs of {a.n} ranks, {bad} failed, "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        failed += bad
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
