"""Oversubscribed latency: more ranks than cores, what waiting costs.

osu_multi_lat's pattern (rank i ping-pongs with rank i + n/2; each pair sends
``[buf, 8, MPI.BYTE]``, or ``--size`` bytes, and waits for the answer) under ``driller run --mpi4py``
and under Open MPI's ``mpirun --oversubscribe``, alternating which goes first,
for ``--rounds`` rounds, with 2, 4 and 8 ranks on this machine's cores.  Per
run, averaged over the ranks: the one-way time (wall), the CPU time a rank
spends per message (``time.process_time``: work plus waiting), its context
switches per message (voluntary = futex sleeps, involuntary = yields that
handed the core over, or preemptions) and, for driller, futex sleeps per
message.  Prints the medians and the per-round ratio driller / Open MPI
(min..max).

    .venv/bin/python benchmarks/oversub_lat.py [--ranks 2,4,8] [--rounds 3]
        [--iters 5000] [--float-ranks] [--layout none|rr|block]
        [--pattern half|neighbour] [--size BYTES] [--base-src DIR] [--json out.json]

``--float-ranks`` passes the partner as a float (``nprocs / 2``), as mpi4py's
own ``demo/osu_multi_lat.py`` does.  ``--base-src DIR`` adds driller imported
from another source tree (before/after in the same rounds).  Environment
variables (``DRILLER_MMPI_SPIN_US``, ``DRILLER_MMPI_PURE_POLLS``, ...) reach
the ranks, so a policy can be compared by running the script twice
(``DRILLER_BIND=cyclic`` binds driller's ranks, not ``--base-src``'s).
``--layout`` makes every rank, of both implementations, pin itself to one CPU
after start-up: ``rr`` rank r on CPU r mod the CPUs (with ``--pattern half``
both members of a pair share a CPU when n/2 is a multiple of the CPUs),
``block`` consecutive ranks together (each pair split across CPUs);
``--pattern neighbour`` pairs 0-1, 2-3, ... instead (so the layouts swap roles).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent

RANK_PROG = r'''
import os, sys, time, json
from mpi4py import MPI
comm = MPI.COMM_WORLD
me = comm.Get_rank(); n = comm.Get_size()
iters, skip, floats = int(sys.argv[1]), 200, sys.argv[2] == "1"
pairs = n / 2 if floats else n // 2
size = int(sys.argv[5])
buf = bytearray(size); rbuf = bytearray(size)
s = [buf, size, MPI.BYTE]; r = [rbuf, size, MPI.BYTE]
partner = me + pairs if me < pairs else me - pairs
first = me < pairs       # sends first
layout, cpus = sys.argv[3], sorted(os.sched_getaffinity(0))
if sys.argv[4] == "neighbour":   # pairs 0-1, 2-3, ... instead of i, i + n/2
    partner, first = me ^ 1, me % 2 == 0
if layout == "rr":       # rank r on core r % cores (Open MPI's map-by core when it binds)
    os.sched_setaffinity(0, {cpus[me % len(cpus)]})
elif layout == "block":  # ranks in blocks of n / cores per core
    os.sched_setaffinity(0, {cpus[(me * len(cpus)) // n]})

def switches():
    v = {}
    with open("/proc/self/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                k, x = line.split(":")
                v[k.strip()] = int(x)
    return v["voluntary_ctxt_switches"], v["nonvoluntary_ctxt_switches"]

t = getattr(comm, "_t", None)   # driller's transport (its sleep counter), if any
comm.Barrier()
for i in range(iters + skip):
    if i == skip:
        sl0 = getattr(t, "stats_sleeps", 0)
        v0 = switches(); c0 = time.process_time(); t0 = time.perf_counter()
    if first:
        comm.Send(s, partner, 1); comm.Recv(r, partner, 1)
    else:
        comm.Recv(r, partner, 1); comm.Send(s, partner, 1)
t1 = time.perf_counter(); c1 = time.process_time(); v1 = switches()
sl = getattr(t, "stats_sleeps", 0) - sl0
m = 2 * iters   # messages this rank took part in (one sent, one received per iteration)
row = {"oneway_us": (t1 - t0) * 1e6 / m, "cpu_us": (c1 - c0) * 1e6 / m,
       "vol": (v1[0] - v0[0]) / m, "invol": (v1[1] - v0[1]) / m, "sleeps": sl / m}
rows = comm.gather(row, root=0)
if me == 0:
    print("RESULT " + json.dumps({k: sum(x[k] for x in rows) / len(rows) for k in row}))
'''

KEYS = ("oneway_us", "cpu_us", "vol", "invol", "sleeps")


def run(impl: str, n: int, iters: int, floats: bool, prog: str,
        base_src: str | None, layout: str = "none", pattern: str = "half",
        size: int = 8) -> dict | None:
    env = dict(os.environ)
    if impl in ("driller", "base"):
        cmd = [str(BIN / "driller"), "run", "-n", str(n), "--mpi4py", prog]
        if impl == "base":
            env["PYTHONPATH"] = base_src or ""
    else:
        cmd = [str(BIN / "mpirun"), "--oversubscribe", "--allow-run-as-root", "-n", str(n),
               str(BIN / "python"), prog]
    cmd += [str(iters), "1" if floats else "0", layout, pattern, str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"# {impl} -n {n} failed (exit {proc.returncode}): "
          f"{proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--float-ranks", action="store_true")
    ap.add_argument("--layout", default="none", choices=("none", "rr", "block"),
                    help="each rank pins itself after start-up: rr = rank r on core "
                    "r %% cores, block = ranks in blocks of n / cores, none = as launched")
    ap.add_argument("--pattern", default="half", choices=("half", "neighbour"),
                    help="half = osu_multi_lat's pairs i, i + n/2; neighbour = 0-1, 2-3, ...")
    ap.add_argument("--size", type=int, default=8,
                    help="bytes per message (osu_multi_lat's mid sizes: 65536 ...)")
    ap.add_argument("--base-src", help="also run driller from this source tree")
    ap.add_argument("--json")
    a = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    impls = ["driller", "ompi"] + (["base"] if a.base_src else [])
    out = {}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(RANK_PROG)
        prog = f.name
    try:
        for n in (int(x) for x in a.ranks.split(",")):
            res: dict[str, list[dict]] = {i: [] for i in impls}
            ratios = []
            for r in range(a.rounds):
                order = impls[r % len(impls):] + impls[:r % len(impls)]
                got = {i: run(i, n, a.iters, a.float_ranks, prog, a.base_src, a.layout,
                                a.pattern, a.size) for i in order}
                for i in impls:
                    if got[i]:
                        res[i].append(got[i])
                if got["driller"] and got["ompi"]:
                    ratios.append(got["driller"]["oneway_us"] / got["ompi"]["oneway_us"])
            print(f"# {n} ranks on {cpus} cores, {a.rounds} rounds, {a.iters} round trips of "
                  f"{a.size} B per pair{', float ranks' if a.float_ranks else ''}; medians, "
                  f"per message")
            print(f"{'':>8} {'one-way us':>11} {'CPU us':>8} {'vol cs':>7} {'invol cs':>9} "
                  f"{'sleeps':>7}")
            for i in impls:
                if not res[i]:
                    continue
                med = {k: statistics.median(x[k] for x in res[i]) for k in KEYS}
                print(f"{i:>8} {med['oneway_us']:>11.2f} {med['cpu_us']:>8.2f} "
                      f"{med['vol']:>7.2f} {med['invol']:>9.2f} {med['sleeps']:>7.3f}")
                out.setdefault(str(n), {})[i] = med
            if ratios:
                print(f"driller / Open MPI one-way: {statistics.median(ratios):.2f} "
                      f"[{min(ratios):.2f}..{max(ratios):.2f}]")
                out[str(n)]["ratio"] = [statistics.median(ratios), min(ratios), max(ratios)]
            sys.stdout.flush()
    finally:
        os.unlink(prog)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
