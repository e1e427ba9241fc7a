"""CPU time per call of small Allreduce / Reduce on one node (mmpi.spawn ranks).

    .venv/bin/python benchmarks/coll_cpu.py [RANKS [ITERATIONS]]     # default 4 3000

Each rank times ITERATIONS calls (after 200 warm-up calls) with
``time.process_time`` and ``time.perf_counter``; printed: the mean CPU time per
rank and call, and the slowest rank's wall time per call.  CPU time is far
steadier than wall time on a shared VM; compare within one round (run a base
checkout with ``PYTHONPATH=<base>/src`` right before or after).
"""
import sys
import time

import numpy as np

import driller
from driller import MPI, mmpi

CASES = [("Allreduce", 8), ("Allreduce", 2048), ("Reduce", 8), ("Allreduce_spec", 8), ("Iallreduce", 8),
         ("Bcast", 8), ("Reduce", 1 << 16), ("Barrier", 0)]   # (Bcast: binomial beyond 8 ranks; Reduce 512 KiB: direct)

def f(comm, iters):
    me = comm.rank
    out = {}
    for name, count in CASES:
        a = np.ones(count); b = np.zeros(count)
        def one():
            if name == "Allreduce":
                comm.Allreduce(a, b, MPI.SUM)
            elif name == "Allreduce_spec":
                comm.Allreduce([a, MPI.DOUBLE], [b, MPI.DOUBLE], MPI.SUM)
            elif name == "Iallreduce":
                comm.Iallreduce(a, b, MPI.SUM).Wait()
            elif name == "Bcast":
                comm.Bcast(a, 0)
            elif name == "Barrier":
                comm.Barrier()
            else:
                comm.Reduce(a, b if me == 0 else None, MPI.SUM, 0)
        for _ in range(200):
            one()
        comm.Barrier()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            one()
        c1, w1 = time.process_time(), time.perf_counter()
        comm.Barrier()
        out[f"{name}:{count * 8}B"] = ((c1 - c0) / iters * 1e6, (w1 - w0) / iters * 1e6)
    return out

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    res = mmpi.spawn(f, n, args=(iters,))
    keys = res[0].keys()
    print(driller.__file__)
    for k in keys:
        cpu = sum(r[k][0] for r in res) / n
        wall = max(r[k][1] for r in res)
        print(f"{k:22s} cpu/rank {cpu:7.2f} us   wall {wall:7.2f} us")
