"""Read a `driller bench` JSON and print the issue targets as a markdown table.

    .venv/bin/python benchmarks/targets.py bench-results/bench-YYYYMMDD-HHMMSS.json

Ratios are driller time ÷ peer time within each round (median [min–max]);
below 1 driller is faster.  Used to refresh the README after a full run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MiB = 1 << 20

# (bench, driller method, peer method, param, what, target ratio (driller/peer) or None)
TARGETS = [
    ("latency", "driller.Send", "mpi4py.Send", 8, "8 B one-way latency, 2 ranks", 1.0),
    ("bandwidth", "driller.Send", "mpi4py.Send", 64 * MiB, "64 MiB bandwidth, 2 ranks",
     1 / 0.9),
    ("latency", "driller.Send", "mp.Pipe", 64 * MiB, "64 MiB one-way, vs multiprocessing Pipe",
     None),
    ("objects", "driller.send", "mpi4py.send", 64 * MiB,
     "object send, dict of 64 MiB of arrays, vs mpi4py pickle", 0.1),
    ("objects", "driller.send", "mpi4py.pkl5", 64 * MiB,
     "object send, dict of 64 MiB of arrays, vs mpi4py.util.pkl5", 1 / 3),
    ("barrier", "driller.Barrier", "mpi4py.Barrier", 4, "Barrier, 4 ranks on 2 cores", 1.0),
    ("barrier", "driller.Barrier", "mpi4py.Barrier", 8, "Barrier, 8 ranks on 2 cores", 1.0),
    ("bcast", "driller.Bcast", "mpi4py.Bcast", 4, "Bcast 16 MiB, 4 ranks", 1.0),
    ("allreduce", "driller.Allreduce", "mpi4py.Allreduce", 4, "Allreduce 16 MiB, 4 ranks",
     1.0),
    ("sharing", "share.driller", "share.numpy", 64 * MiB,
     "64 MiB array to a Pool worker, vs pickled numpy", None),
]


def _t(x: float) -> str:
    for unit, f in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if x >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x * 1e9:.3g} ns"


def main(path: str) -> None:
    res = json.loads(Path(path).read_text())
    by = {(r["bench"], r["method"], r["ranks"] if r["bench"] in ("barrier", "bcast",
                                                                "allreduce") else r["size"]): r
          for r in res["results"]}
    rat = {(r["bench"], r["driller"], r["peer"], r["param"]): r for r in res["ratios"]}
    print("| measure | driller | peer | driller ÷ peer, median [min–max] | target | met |")
    print("|---|---|---|---|---|---|")
    for bench, d, p, param, what, target in TARGETS:
        rd, rp, rr = by.get((bench, d, param)), by.get((bench, p, param)), \
            rat.get((bench, d, p, param))
        if not (rd and rp and rr):
            print(f"| {what} | – | – | not measured | | |")
            continue
        tgt = "" if target is None else f"≤ {target:.2f}"
        met = "" if target is None else ("yes" if rr["median"] <= target else "**no**")
        print(f"| {what} | {_t(rd['median'])} | {_t(rp['median'])} | {rr['median']:.2f} "
              f"[{rr['min']:.2f}–{rr['max']:.2f}] | {tgt} | {met} |")
    m = res["machine"]
    print(f"\n{m['cpu_model']}, {m['cpus_usable']} CPUs, {m['kernel']}, {m['python']}, "
          f"numpy {m['numpy']}, mpi4py {m['mpi4py']}, {m['mpi_library']}; "
          f"{res['config']['rounds']} rounds, load average {m['loadavg_start'][0]:.1f}"
          f"→{m['loadavg_end'][0]:.1f}, {res['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1])
