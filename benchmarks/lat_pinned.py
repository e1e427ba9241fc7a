"""osu_latency's small-message ping-pong with each rank pinned to its own CPU,
per-iteration timing: the one-way time when both ranks run, on a busy machine.

On a shared VM the wall-clock osu figures mostly measure the scheduler (two
ranks on one CPU, migrations).  Here rank r pins itself to CPU r, rank 0 times
every round trip with ``perf_counter_ns``, and the low percentiles (p10, p25,
p50 of one-way time, the first tenth of the iterations dropped as warm-up) show
the cost of the path itself: a preempted round trip lands in the tail, not in
the median.  The loop is mpi4py's ``osu_latency.py``'s: ``Send([s_buf, size,
MPI.BYTE], 1, 1)`` / ``Recv([r_buf, size, MPI.BYTE], 1, 1)`` over mmap buffers.

    .venv/bin/python benchmarks/lat_pinned.py [--rounds 3] [--sizes 8,16,17]
        [--iters 20000] [--base-src OTHER_TREE/src] [--no-mpi4py]

Runs driller (``driller run --mpi4py``), the ``--base-src`` tree the same way
(before/after), and mpi4py on Open MPI (``mpirun``), interleaved per round;
prints each one's median over rounds of p50 one-way, and the median [min..max]
of the within-round ratios driller ÷ Open MPI.
For a steadier run on a loaded machine: ``setsid bash -c 'echo -20 >
/proc/self/autogroup; nice -n -20 .venv/bin/python benchmarks/lat_pinned.py'``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

WORKER = r"""
import mmap, os, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
ncpu = len(os.sched_getaffinity(0))
if ncpu > 1:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % ncpu]})
size, n = int(sys.argv[1]), int(sys.argv[2])
s_buf, r_buf = mmap.mmap(-1, max(size, 1)), mmap.mmap(-1, max(size, 1))
ss, rs = [s_buf, size, MPI.BYTE], [r_buf, size, MPI.BYTE]
clock = time.perf_counter_ns
out = [0] * n
comm.Barrier()
if rank == 0:
    for i in range(n):
        t0 = clock()
        comm.Send(ss, 1, 1)
        comm.Recv(rs, 1, 1)
        out[i] = clock() - t0
    out = sorted(out[n // 10:])
    k = len(out)
    print("RESULT", *(out[int(k * q)] / 2e3 for q in (0.1, 0.25, 0.5)), flush=True)
else:
    for i in range(n):
        comm.Recv(rs, 0, 1)
        comm.Send(ss, 0, 1)
"""


def run(kind: str, src: str | None, size: int, iters: int, worker: str) -> list[float]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    if kind == "mpi4py":
        cmd = [str(BIN / "mpirun"), "--oversubscribe", "--allow-run-as-root", "--bind-to",
               "none", "-n", "2", sys.executable, worker, str(size), str(iters)]
    else:
        cmd = [str(BIN / "driller"), "run", "-n", "2", "--mpi4py", worker, str(size),
               str(iters)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return [float(x) for x in line.split()[1:]]
    raise RuntimeError(f"{kind}: no result\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="8")
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--base-src", help="also run driller from this source tree (before/after)")
    ap.add_argument("--no-mpi4py", action="store_true", help="driller only")
    o = ap.parse_args()
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(WORKER)
        worker = f.name
    kinds = [("driller", None)]
    if o.base_src:
        kinds.append(("before", o.base_src))
    if not o.no_mpi4py:
        kinds.append(("mpi4py", None))
    try:
        print(f"# pinned ping-pong, one-way µs: median over {o.rounds} rounds of p50 "
              f"[p10 p25 of the best round]; load {os.getloadavg()[0]:.1f}")
        for size in [int(s) for s in o.sizes.split(",")]:
            res: dict[str, list[list[float]]] = {k: [] for k, _ in kinds}
            for _ in range(o.rounds):
                for k, src in kinds:
                    res[k].append(run(k, src, size, o.iters, worker))
            line = [f"size {size:>7}"]
            med = {}
            for k, _ in kinds:
                med[k] = statistics.median(r[2] for r in res[k])
                best = min(res[k], key=lambda r: r[2])
                line.append(f"{k} {med[k]:.3f} [{best[0]:.3f} {best[1]:.3f}]")
            if "mpi4py" in med:   # the median of the within-round ratios
                for k in ("driller", "before"):
                    if k in med:
                        r = [a[2] / b[2] for a, b in zip(res[k], res["mpi4py"])]
                        line.append(f"{k}/mpi4py {statistics.median(r):.2f} "
                                    f"[{min(r):.2f}..{max(r):.2f}]")
            print("  ".join(line), flush=True)
    finally:
        os.unlink(worker)


if __name__ == "__main__":
    main()
