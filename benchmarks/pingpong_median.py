"""A ping-pong of numpy buffers as osu_latency's (``Send`` then ``Recv``), per
iteration one-way µs: median, min, mean, and the split counters
(``Transport.stats_dsplit``).  Run under ``driller run -n 2``; A/B by running it
alternately with ``PYTHONPATH=<base>/src`` and without, in one loop:

    for r in 1 2 3; do for n in 1048576 4194304; do
      PYTHONPATH=/work/wt/base24/src .venv/bin/python -m driller run -n 2 \\
          benchmarks/pingpong_median.py $n 200
      .venv/bin/python -m driller run -n 2 benchmarks/pingpong_median.py $n 200
      DRILLER_MMPI_DSPLIT_ADAPT=1 .venv/bin/python -m driller run -n 2 \\
          benchmarks/pingpong_median.py $n 200
    done; done

(docs/mmpi.md, "fourteenth round (mid-size)")."""

import statistics
import sys
import time

import numpy as np

import driller
from driller import MPI

comm = MPI.COMM_WORLD
n = int(sys.argv[1])
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 200
peer = 1 - comm.rank
s = np.ones(n, np.uint8)
r = np.empty(n, np.uint8)
ts = []
for i in range(iters + 20):
    if i % 50 == 0:
        comm.Barrier()
    t0 = time.perf_counter()
    if comm.rank == 0:
        comm.Send(s, dest=peer, tag=1)
        comm.Recv(r, source=peer, tag=1)
    else:
        comm.Recv(r, source=peer, tag=1)
        comm.Send(s, dest=peer, tag=1)
    ts.append((time.perf_counter() - t0) / 2 * 1e6)
ts = ts[20:]
if comm.rank == 0:
    split = list(getattr(comm._t, "stats_dsplit", []))
    print(f"{n} med {statistics.median(ts):.0f} min {min(ts):.0f} mean "
          f"{statistics.mean(ts):.0f} split {split} ({driller.__file__})", flush=True)
