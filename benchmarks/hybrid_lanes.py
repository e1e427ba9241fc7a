"""Lanes vs the leader scheme vs plain mpi4py, for large hybrid collectives.

    python benchmarks/hybrid_lanes.py [--iters 30] [--allreduce 16M,1M] [--allgather 1M]

starts ``mpirun`` (the venv's Open MPI) with 2 emulated nodes x 2 ranks
(DRILLER_NODE a, b) and times, interleaved call by call on the same ranks:
driller's ``Allreduce`` (SUM, float64) and ``Allgather`` (the size is per rank)
in lanes (``_coll/_hierlane.py``), the same through the leaders (lanes turned
off in that call), and mpi4py's on the job's own MPI.  A call's time is the
slowest rank's; printed: the median time of each and the median of the
per-call ratios against mpi4py (< 1: faster than mpi4py), with the load
average.  docs/scaleout.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def rank_main(iters: int, allreduce: list[int], allgather: list[int]) -> None:
    import numpy as np
    from mpi4py import MPI as real

    from driller import MPI as D
    from driller.mmpi._coll import _hierlane

    dc, mc = D.COMM_WORLD, real.COMM_WORLD
    r, n = dc.Get_rank(), dc.Get_size()
    lane_min = _hierlane.LANE_MIN
    cases = []
    for nb in allreduce:
        x, y = np.full(nb // 8, float(r)), np.empty(nb // 8)
        cases.append((f"Allreduce {nb >> 10} KiB", lambda c, x=x, y=y: c.Allreduce(x, y),
                      lambda y=y: y[-1] == n * (n - 1) / 2))
    for nb in allgather:
        x, y = np.full(nb // 8, float(r)), np.empty(n * nb // 8)
        cases.append((f"Allgather {nb >> 10} KiB per rank",
                      lambda c, x=x, y=y: c.Allgather(x, y), lambda y=y: y[-1] == n - 1))
    out = []
    for name, call, check in cases:
        times: dict[str, list[float]] = {}
        for it in range(iters + 1):
            for how in ("lanes", "leaders", "mpi4py"):
                _hierlane.LANE_MIN = lane_min if how == "lanes" else 1 << 62
                comm = mc if how == "mpi4py" else dc
                dc.Barrier()
                t0 = time.perf_counter()
                call(comm)
                dt = time.perf_counter() - t0
                assert check(), (name, how)
                slowest = dc.allreduce(dt, op=D.MAX)
                if it:
                    times.setdefault(how, []).append(slowest)
        _hierlane.LANE_MIN = lane_min
        out.append((name, times))
    if r == 0:
        load = os.environ.get("DRILLER_BENCH_LOAD") or "%.1f" % os.getloadavg()[0]
        print(f"`python benchmarks/hybrid_lanes.py --iters {iters}`: 2 emulated nodes × 2 "
              f"ranks, {time.strftime('%Y-%m-%d')}, load average {load} ({os.cpu_count()} "
              f"vCPUs). Median call time (the slowest rank's) over {iters} calls, and the "
              f"median per-call ratio to mpi4py.")
        print()
        print("| collective | lanes | leaders | mpi4py | lanes / mpi4py | leaders / mpi4py |")
        print("|---|---|---|---|---|---|")
        for name, t in out:
            med = {k: statistics.median(v) for k, v in t.items()}
            ratio = {k: statistics.median(a / b for a, b in zip(t[k], t["mpi4py"]))
                     for k in ("lanes", "leaders")}
            print(f"| {name} | {med['lanes'] * 1e3:.2f} ms | {med['leaders'] * 1e3:.2f} ms | "
                  f"{med['mpi4py'] * 1e3:.2f} ms | {ratio['lanes']:.2f}× | "
                  f"{ratio['leaders']:.2f}× |")
        sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--allreduce", default="16M,1M")
    p.add_argument("--allgather", default="1M")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    ar = [_size(s) for s in a.allreduce.split(",") if s]
    ag = [_size(s) for s in a.allgather.split(",") if s]
    if a.rank:
        rank_main(a.iters, ar, ag)
        return 0
    py = sys.executable
    run = [os.path.join(os.path.dirname(py), "mpirun")]
    if os.geteuid() == 0:
        run.append("--allow-run-as-root")
    run += ["--oversubscribe", "--bind-to", "none"]
    args = [HERE, "--rank", "--iters", str(a.iters), "--allreduce", a.allreduce,
            "--allgather", a.allgather]
    ctx = lambda node: ["-n", "2", "-x", f"DRILLER_NODE={node}", py, *args]  # noqa: E731
    env = dict(os.environ)
    env.setdefault("DRILLER_BENCH_LOAD", "%.1f" % os.getloadavg()[0])
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call(run + ctx("a") + [":"] + ctx("b"), env=env)


if __name__ == "__main__":
    sys.exit(main())
