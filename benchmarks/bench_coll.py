"""Collectives: driller.mmpi vs mpi4py on Open MPI, side by side (a quick script).

    .venv/bin/python benchmarks/bench_coll.py                 # both, default cases
    .venv/bin/python benchmarks/bench_coll.py --only driller  # or --only mpi4py
    .venv/bin/python benchmarks/bench_coll.py --cases bcast:4:16M,allreduce:4:16M,barrier:8:0

A case is ``op:ranks:bytes``.  driller ranks are forked by ``mmpi.spawn``; the
mpi4py ranks run under ``mpirun --oversubscribe`` (Open MPI chooses its own
algorithms, CMA single copy for large messages).  Each case: warm-up, then
``--reps`` repetitions of a timed loop, each started by a Barrier; a loop's time
is the slowest rank's; the figure is the best repetition (noisy VM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT = ("barrier:8:0,barrier:4:0,bcast:4:8,allreduce:4:8,allreduce:8:8,"
           "bcast:4:64K,allreduce:4:64K,allreduce:4:1M,bcast:4:1M,"
           "bcast:4:16M,allreduce:4:16M,allgather:4:4M,reduce:4:16M")


def parse_size(s: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def iters_for(nbytes: int) -> int:
    if nbytes <= 1024:
        return 2000
    if nbytes <= 1 << 17:
        return 300
    if nbytes <= 1 << 21:
        return 40
    return 6


def body(comm, MPI, op: str, nbytes: int, reps: int) -> float | None:
    me, n = comm.Get_rank(), comm.Get_size()
    count = max(1, nbytes // 8)
    a = np.ones(count)
    b = np.zeros(count)
    big = np.zeros(count * n)
    if op == "barrier":
        f = comm.Barrier
    elif op == "bcast":
        def f():
            comm.Bcast(a if me == 0 else b, root=0)
    elif op == "allreduce":
        def f():
            comm.Allreduce(a, b, op=MPI.SUM)
    elif op == "reduce":
        def f():
            comm.Reduce(a, b, op=MPI.SUM, root=0)
    elif op == "allgather":
        count = max(1, nbytes // 8 // n)
        a = np.ones(count)

        def f():
            comm.Allgather(a, big[:count * n])
    else:
        raise SystemExit(f"unknown op {op}")
    iters = iters_for(nbytes) if op != "barrier" else 2000
    best = float("inf")
    f()
    for _ in range(reps):
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(iters):
            f()
        dt = (time.perf_counter() - t) / iters
        dt = comm.allreduce(dt, op=MPI.MAX)
        best = min(best, dt)
    return best if me == 0 else None


def run_driller(cases, reps):
    from driller import MPI, mmpi
    out = {}
    for op, n, nbytes in cases:
        res = mmpi.spawn(lambda comm: body(comm, MPI, op, nbytes, reps), n)
        out[(op, n, nbytes)] = res[0]
    return out


def run_mpi4py(cases, reps):
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    venv = os.path.dirname(sys.executable)
    mpirun = os.path.join(venv, "mpirun")
    out = {}
    for op, n, nbytes in cases:
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", str(n), sys.executable,
               os.path.join(here, "bench_coll.py"), "--child", f"{op}:{n}:{nbytes}",
               "--reps", str(reps)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        out[(op, n, nbytes)] = json.loads(line[-1])["t"] if line else None
        if not line:
            print(f"mpi4py {op}:{n}:{nbytes} failed: {p.stderr[-500:]}", file=sys.stderr)
    return out


def fmt_t(t):
    if t is None:
        return "-"
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["driller", "mpi4py"])
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        from mpi4py import MPI
        op, n, nbytes = args.child.split(":")
        t = body(MPI.COMM_WORLD, MPI, op, int(nbytes), args.reps)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(json.dumps({"t": t}), flush=True)
        return
    cases = []
    for c in args.cases.split(","):
        op, n, size = c.split(":")
        cases.append((op, int(n), parse_size(size)))
    # interleaved, case by case and round by round: the machine's load (other jobs on
    # 2 vCPUs) hits both sides alike; each side keeps its best round
    d, m = {}, {}
    for _ in range(args.rounds):
        for case in cases:
            if args.only != "mpi4py":
                t = run_driller([case], args.reps)[case]
                d[case] = min(d.get(case, t), t)
            if args.only != "driller":
                t = run_mpi4py([case], args.reps)[case]
                if t is not None:
                    m[case] = min(m.get(case, t), t)
    print(f"{'case':<22}{'driller':>12}{'mpi4py/OMPI':>14}{'ratio':>8}   (time per call)")
    for key in cases:
        op, n, nbytes = key
        td, tm = d.get(key), m.get(key)
        ratio = f"{tm / td:.2f}x" if td and tm else ""
        extra = ""
        if nbytes >= 1 << 20 and td:
            extra = f"   driller {nbytes / td / 1e9:.2f} GB/s"
            if tm:
                extra += f", OMPI {nbytes / tm / 1e9:.2f} GB/s"
        print(f"{op + ' n=' + str(n) + ' ' + str(nbytes) + 'B':<22}{fmt_t(td):>12}"
              f"{fmt_t(tm):>14}{ratio:>8}{extra}")
    print("ratio > 1: driller faster")


if __name__ == "__main__":
    main()
