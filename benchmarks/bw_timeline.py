"""osu_bw's 8 B window between processes, as a timeline (issue 12).

The loop of mpi4py's ``demo/osu_bw.py`` (rank 0: 64 ``Isend`` of one
``[mmap, n, MPI.BYTE]`` spec, ``Waitall``, a 4 B ack ``Recv``; rank 1: 64
``Irecv``, ``Waitall``, the ack ``Send``), 1000 windows, each rank pinned to
its own CPU (``--no-pin``: left to the scheduler).  Rank 0 prints, as medians
over windows 100-999 in µs from the sender's start of a window: when its
``Isend``s end (``S.isends``), its ``Waitall`` and ack ``Recv`` return, when
the receiver started that window (``R.start``, negative: before the sender),
ended posting its ``Irecv``s (``R.posted``), ``Waitall`` and the ack ``Send``,
and the next window's start (``S.next``: the window's time).  Pinned, the
ranks run as on a quiet machine (both on their own cores), which the
scheduler does not guarantee on a loaded one (docs/mmpi.md, "sixth round").

    .venv/bin/driller run -n 2 --mpi4py benchmarks/bw_timeline.py [--no-pin] [n]
    .venv/bin/mpirun --allow-run-as-root -n 2 .venv/bin/python benchmarks/bw_timeline.py
"""

import mmap
import os
import statistics
import sys
import time

from mpi4py import MPI


def main() -> None:
    comm = MPI.COMM_WORLD
    me = comm.Get_rank()
    args = [a for a in sys.argv[1:] if a != "--no-pin"]
    if "--no-pin" not in sys.argv and len(os.sched_getaffinity(0)) > 1:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[me % len(cpus)]})
    n = int(args[0]) if args else 8
    sbuf, rbuf = mmap.mmap(-1, 1 << 22), mmap.mmap(-1, 1 << 22)
    window = 64
    reqs = [MPI.REQUEST_NULL] * window
    js = range(window)
    s, r = [sbuf, n, MPI.BYTE], [rbuf, n, MPI.BYTE]
    ack = [rbuf, 4, MPI.BYTE]
    pc = time.perf_counter
    windows = 1000
    ev = []
    comm.Barrier()
    for _ in range(windows):
        a = pc()
        if me == 0:
            for j in js:
                reqs[j] = comm.Isend(s, 1, 100)
            b = pc()
            MPI.Request.Waitall(reqs)
            c = pc()
            comm.Recv(ack, 1, 101)
        else:
            for j in js:
                reqs[j] = comm.Irecv(r, 0, 100)
            b = pc()
            MPI.Request.Waitall(reqs)
            c = pc()
            comm.Send([sbuf, 4, MPI.BYTE], 0, 101)
        ev.append((a, b, c, pc()))
    every = comm.gather(ev, root=0)
    if me != 0:
        return
    snd, rcv = every
    rows = []
    for k in range(100, windows - 1):
        s0 = snd[k][0]
        rows.append([x - s0 for x in snd[k][1:]] + [x - s0 for x in rcv[k]]
                    + [snd[k + 1][0] - s0])
    med = [statistics.median(col) * 1e6 for col in zip(*rows)]
    names = ["S.isends", "S.waitall", "S.ackrecv", "R.start", "R.posted", "R.waitall",
             "R.acksent", "S.next"]
    lib = MPI.Get_library_version().split()[0]
    print(f"{lib} {n} B: " + " ".join(f"{k}={v:.1f}" for k, v in zip(names, med))
          + f" us; {med[-1] / window:.3f} us per message")


if __name__ == "__main__":
    main()
