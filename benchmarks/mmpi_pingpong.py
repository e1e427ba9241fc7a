"""Ping-pong latency/bandwidth: driller.mmpi vs mpi4py (Open MPI), a quick script.

    .venv/bin/python benchmarks/mmpi_pingpong.py -n 2            # driller, 2 ranks
    .venv/bin/python benchmarks/mmpi_pingpong.py -n 4            # 2 pairs on 2 cores
    .venv/bin/python benchmarks/mmpi_pingpong.py -n 2 --mpi4py   # same under mpirun
    .venv/bin/python benchmarks/mmpi_pingpong.py -n 8 --ring [--mpi4py]
                          # Barrier and an 8-byte ring Sendrecv, every rank busy
    .venv/bin/python benchmarks/mmpi_pingpong.py -n 2 --alloc mmap --bw [--mpi4py]
                          # as mpi4py's osu demos: mmap buffers, [buf, n, BYTE]
                          # specs; --bw: osu_bw's windows of Isends instead

Ranks pair up (0<->1, 2<->3, ...) and ping-pong numpy buffers with Send/Recv;
one-way time = round trip / 2, best of ``--reps`` repetitions (noisy VM).
With ``--bw``, rank 0 sends windows of ``--window`` Isends of one buffer, rank 1
posts as many Irecvs into one buffer, then answers 4 bytes (osu_bw); the figure
is the time per message (best window), and its bandwidth.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

SIZES = [8, 1024, 16384, 32768, 65536, 262144, 1 << 20, 64 << 20]


def iters_for(n: int) -> int:
    if n <= 4096:
        return 20000
    if n <= 65536:
        return 3000
    if n <= 1 << 20:
        return 300
    return 8


def _mpi(comm):
    """driller.MPI for a driller communicator, else mpi4py's (under mpirun)."""
    if type(comm).__module__.startswith("driller"):
        from driller import MPI
    else:
        from mpi4py import MPI
    return MPI


def buffers(comm, n, alloc):
    """A send and a receive buffer of n bytes: numpy arrays, or (as mpi4py's osu
    demos) anonymous shared mmaps passed as ``[buf, n, BYTE]`` specs."""
    if alloc == "numpy":
        return np.ones(n, np.uint8), np.zeros(n, np.uint8)
    import mmap
    MPI = _mpi(comm)
    a, b = mmap.mmap(-1, max(n, 1)), mmap.mmap(-1, max(n, 1))
    a.write(b"\1" * n)
    return [a, n, MPI.BYTE], [b, n, MPI.BYTE]


def bandwidth(comm, sizes, reps, alloc, window, iters=0):
    """osu_bw: windows of Isends, one 4-byte answer per window; seconds per message."""
    me = comm.Get_rank()
    if me > 1:
        return None
    MPI = _mpi(comm)
    out = {}
    for n in sizes:
        a, b = buffers(comm, n, alloc)
        ack = bytearray(4)
        wins = iters or max(2, min(20, (64 << 20) // max(n * window, 1)))
        best = float("inf")
        for rep in range(reps + 1):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(wins):
                if me == 0:
                    MPI.Request.Waitall([comm.Isend(a, 1, 100) for _ in range(window)])
                    comm.Recv(ack, 1, 101)
                else:
                    MPI.Request.Waitall([comm.Irecv(b, 0, 100) for _ in range(window)])
                    comm.Send(ack, 0, 101)
            dt = (time.perf_counter() - t) / wins / window
            if rep:
                best = min(best, dt)
        out[n] = best
    return out


def pingpong(comm, sizes, reps, alloc="numpy", iters=0):
    me = comm.Get_rank()
    partner = me ^ 1
    if partner >= comm.Get_size():
        return None
    out = {}
    for n in sizes:
        a, b = buffers(comm, n, alloc)
        its = iters or iters_for(n)
        best = float("inf")
        for rep in range(reps + 1):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(its):
                if me & 1 == 0:
                    comm.Send(a, partner, 1)
                    comm.Recv(b, partner, 1)
                else:
                    comm.Recv(b, partner, 1)
                    comm.Send(b, partner, 1)
            dt = (time.perf_counter() - t) / its / 2
            if rep:  # the first is warm-up
                best = min(best, dt)
        out[n] = best
    return out


def ring(comm, iters):
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        comm.Barrier()
    tb = (time.perf_counter() - t) / iters
    n, r = comm.Get_size(), comm.Get_rank()
    a, b = np.ones(8, np.uint8), np.zeros(8, np.uint8)
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        comm.Sendrecv(a, (r + 1) % n, 0, b, (r - 1) % n, 0)
    return tb, (time.perf_counter() - t) / iters


def report_ring(name, res):
    print(f"{name}: Barrier {res[0] * 1e6:.1f} us, ring Sendrecv (8 B) {res[1] * 1e6:.1f} us")


def report(name, res):
    print(f"{name}")
    for n, t in res.items():
        print(f"  {n:>10} B  {t * 1e6:10.2f} us one-way  {n / t / 1e9:8.3f} GB/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2)
    ap.add_argument("--mpi4py", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", type=str, default="")
    ap.add_argument("--ring", action="store_true", help="Barrier + ring Sendrecv instead")
    ap.add_argument("--alloc", choices=("numpy", "mmap"), default="numpy",
                    help="buffers: numpy arrays, or mmaps as [buf, n, BYTE] (osu demos)")
    ap.add_argument("--bw", action="store_true", help="osu_bw's windows of Isends instead")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--iters", type=int, default=0,
                    help="round trips (--bw: windows) per timed repetition (0: by size); "
                         "few iterations and many --reps: the best is a quiet moment's")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    o = ap.parse_args()
    sizes = [int(s) for s in o.sizes.split(",")] if o.sizes else SIZES
    if o.worker:
        from mpi4py import MPI
        if o.ring:
            res = ring(MPI.COMM_WORLD, 2000)
            if MPI.COMM_WORLD.rank == 0:
                report_ring(f"mpi4py/Open MPI, {MPI.COMM_WORLD.size} ranks", res)
            return
        res = (bandwidth(MPI.COMM_WORLD, sizes, o.reps, o.alloc, o.window, o.iters) if o.bw
               else pingpong(MPI.COMM_WORLD, sizes, o.reps, o.alloc, o.iters))
        if MPI.COMM_WORLD.rank == 0:
            report(f"mpi4py/Open MPI, {MPI.COMM_WORLD.size} ranks", res)
        return
    if o.mpi4py:
        venv = os.path.dirname(sys.executable)
        cmd = [os.path.join(venv, "mpirun"), "--allow-run-as-root", "--oversubscribe",
               "-n", str(o.n), sys.executable, __file__, "--worker", "--reps", str(o.reps)]
        if o.sizes:
            cmd += ["--sizes", o.sizes]
        if o.ring:
            cmd += ["--ring"]
        if o.bw:
            cmd += ["--bw", "--window", str(o.window)]
        cmd += ["--alloc", o.alloc, "--iters", str(o.iters)]
        subprocess.run(cmd, check=True)
        return
    from driller import mmpi
    if o.ring:
        report_ring(f"driller.mmpi, {o.n} ranks", mmpi.spawn(ring, o.n, args=(2000,))[0])
        return
    if o.bw:
        res = mmpi.spawn(bandwidth, o.n, args=(sizes, o.reps, o.alloc, o.window, o.iters))
    else:
        res = mmpi.spawn(pingpong, o.n, args=(sizes, o.reps, o.alloc, o.iters))
    report(f"driller.mmpi, {o.n} ranks", res[0])


if __name__ == "__main__":
    main()
