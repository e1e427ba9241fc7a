"""The two-copy fallback vs single copy vs Open MPI with and without CMA.

    .venv/bin/python benchmarks/mmpi_twocopy.py [--rounds 7] [--sizes 67108864]

Each round runs, back to back and in a rotating order, a 2-rank ping-pong of
numpy buffers (Send/Recv, one-way = round trip / 2, best of ``--reps``
repetitions within the run) with:

* driller.mmpi, single copy (process_vm_readv);
* driller.mmpi, two copies through the rings (``DRILLER_MMPI_SINGLE_COPY=0``,
  the path taken where single copy is denied);
* mpi4py / Open MPI 5 with CMA (``OMPI_MCA_smsc=cma``: single copy);
* mpi4py / Open MPI 5 without it (``OMPI_MCA_smsc=^cma``: copy in, copy out
  through shared memory).

It prints every round, then per size the median and spread (min-max) of each
column and the median of the within-round ratios (two-copy / the others).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PINGPONG = os.path.join(HERE, "mmpi_pingpong.py")
KINDS = ["driller 1-copy", "driller 2-copy", "ompi cma", "ompi no-cma"]
LINE = re.compile(r"^\s+(\d+) B\s+([\d.]+) us one-way")


def run(kind: str, sizes: str, reps: int) -> dict[int, float]:
    env = dict(os.environ)
    cmd = [sys.executable, PINGPONG, "-n", "2", "--sizes", sizes, "--reps", str(reps)]
    if kind.startswith("driller"):
        env["DRILLER_MMPI_SINGLE_COPY"] = "0" if "2-copy" in kind else "1"
    else:
        cmd.append("--mpi4py")
        env["OMPI_MCA_smsc"] = "cma" if kind == "ompi cma" else "^cma"
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                         timeout=600).stdout
    res = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            res[int(m.group(1))] = float(m.group(2)) * 1e-6
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default=str(64 << 20))
    o = ap.parse_args()
    sizes = [int(s) for s in o.sizes.split(",")]
    rounds = []
    for i in range(o.rounds):
        order = KINDS[i % len(KINDS):] + KINDS[:i % len(KINDS)]
        got = {k: run(k, o.sizes, o.reps) for k in order}
        rounds.append(got)
        print(f"round {i + 1}: " + "  ".join(
            f"{k} {got[k][n] * 1e3:.2f} ms" for n in sizes for k in KINDS), flush=True)
    for n in sizes:
        print(f"\n{n} B one-way, {o.rounds} rounds (median, min-max):")
        for k in KINDS:
            xs = [r[k][n] for r in rounds]
            print(f"  {k:15} {statistics.median(xs) * 1e3:8.2f} ms "
                  f"({min(xs) * 1e3:.2f}-{max(xs) * 1e3:.2f})  "
                  f"{n / statistics.median(xs) / 1e9:5.2f} GB/s")
        for k in ("driller 1-copy", "ompi no-cma", "ompi cma"):
            rs = [r["driller 2-copy"][n] / r[k][n] for r in rounds]
            print(f"  2-copy / {k:15} median {statistics.median(rs):.2f}x "
                  f"({min(rs):.2f}-{max(rs):.2f})")


if __name__ == "__main__":
    main()
