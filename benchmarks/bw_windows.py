"""osu_bw's 8 B window, timed window by window (issue 12).

The loop of mpi4py's ``demo/osu_bw.py`` (rank 0: 64 ``Isend`` of one
``[mmap, n, MPI.BYTE]`` spec, ``Waitall``, a 4 B ack ``Recv``; rank 1: 64
``Irecv``, ``Waitall``, the ack ``Send``), 400 windows; rank 0 prints the
mean, median and minimum wall time per message over windows 20-399 and its
process CPU per message.  osu_bw reports the mean; the median and the
minimum show the regime a run settled in on a loaded machine (the two ranks
on their own CPUs, or sharing one and taking turns), which the mean mixes.

    .venv/bin/driller run -n 2 --mpi4py benchmarks/bw_windows.py [n]
    .venv/bin/mpirun --allow-run-as-root -n 2 .venv/bin/python benchmarks/bw_windows.py [n]
"""

import mmap
import statistics
import sys
import time

from mpi4py import MPI


def main() -> None:
    comm = MPI.COMM_WORLD
    me = comm.Get_rank()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    sbuf, rbuf = mmap.mmap(-1, 1 << 22), mmap.mmap(-1, 1 << 22)
    window = 64
    reqs = [MPI.REQUEST_NULL] * window
    js = range(window)
    comm.Barrier()
    times = []
    cpu = time.process_time()
    for _ in range(400):
        t0 = time.perf_counter()
        if me == 0:
            s = [sbuf, n, MPI.BYTE]
            for j in js:
                reqs[j] = comm.Isend(s, 1, 100)
            MPI.Request.Waitall(reqs)
            comm.Recv([rbuf, 4, MPI.BYTE], 1, 101)
        elif me == 1:
            r = [rbuf, n, MPI.BYTE]
            for j in js:
                reqs[j] = comm.Irecv(r, 0, 100)
            MPI.Request.Waitall(reqs)
            comm.Send([sbuf, 4, MPI.BYTE], 0, 101)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu
    if me == 0:
        w = [t / window * 1e6 for t in times[20:]]
        lib = MPI.Get_library_version().split()[0]
        print(f"{lib} {n} B: wall per message mean {statistics.mean(w):.2f} "
              f"median {statistics.median(w):.2f} min {min(w):.2f} us; "
              f"CPU {cpu / 400 / window * 1e6:.2f} us")


if __name__ == "__main__":
    main()
