"""Hybrid world vs plain mpi4py, side by side in one MPI job (docs/scaleout.md).

    python benchmarks/hybrid_bench.py [--rounds 5] [--mpich | --tcp] [--only inter-node] [--cpu]
                                      [--src OTHER_TREE/src]

starts ``mpirun`` (the test venv's Open MPI; ``--tcp``: with ``OMPI_MCA_btl=self,tcp``,
so that MPI's route between the emulated nodes is a real network path; ``--mpich``:
.venv-mpich's mpiexec) with
2 emulated nodes x 2 ranks (DRILLER_NODE a, b).  Every rank holds both
communicators: driller's hybrid ``COMM_WORLD`` and the job's own MPI one
(mpi4py).  Each round measures, interleaved, on the same ranks:

* intra-node (ranks 0 and 1): 64 MiB Send/Recv, 64 MiB dict of 8 arrays send/recv;
* inter-node (ranks 0 and 2): 8 B, 1 MiB and 64 MiB Send/Recv, 32 KiB Isend/Irecv each
  waited for (a ping-pong of nonblocking calls), 64 MiB dict send/recv;
* collectives over the 4 ranks: Allreduce (SUM) of 16 MiB of float64, Allgather of
  1 MiB per rank, Alltoall of 1 KiB blocks (one MPI Alltoall carrying the sizes),
  Bcast of 1 MiB from rank 3, Gather of 1 MiB per rank to rank 0 and Scatter of
  1 MiB per rank from rank 3 (the time is rank 0's, as for every row: a receiver
  on the root's other node, the root, and the head of the root's other node).

Within a round, each measurement's driller and mpi4py runs follow each other, the
one or the other first in turn (odd rounds: driller first).

Printed: a markdown block (the one docs/scaleout.md and the README carry): the
median one-way time (ping-pong / 2) or call time of each, [min–max] over rounds,
and the median within-round ratio driller / mpi4py [min–max] (< 1: driller
faster), with the command, the MPI library and the machine's load average.
Ranks not in a measurement wait in driller's barrier, which naps.  ``--only TEXT``
keeps the measurements whose name contains TEXT (e.g. ``inter-node``); ``--cpu``
times the collectives by rank 0's CPU time per call (``time.process_time``) instead
of wall-clock (the point-to-point rows stay wall-clock).  ``--src PATH``: run driller
from another tree's ``src`` (a base checkout: compare it with this tree's in
alternate runs of this same file).
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
MIB = 1 << 20


def _pingpong(comm, me, peer, send, recv, iters):
    """Seconds one way (half a round trip), median over iters."""
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        if me < peer:
            send(peer)
            recv(peer)
        else:
            recv(peer)
            send(peer)
        ts.append((time.perf_counter() - t0) / 2)
    return statistics.median(ts)


def rank_main(rounds: int, only: str = "", cpu: bool = False) -> None:
    import numpy as np
    from mpi4py import MPI as real   # the job's MPI: the peer measured against

    from driller import MPI as D

    dc, mc = D.COMM_WORLD, real.COMM_WORLD
    r = dc.Get_rank()
    assert dc.Get_size() == 4 and mc.Get_rank() == r
    big = np.ones(64 * MIB // 8)
    out = np.empty_like(big)
    small, sout = np.ones(1), np.empty(1)
    obj = {f"a{i}": np.full(8 * MIB // 8, float(i)) for i in range(8)}
    red = np.full(16 * MIB // 8, float(r))
    rout = np.empty_like(red)
    cases = []

    def p2p(name, a, b, buf, rbuf, iters):
        for eng, comm in (("driller", dc), ("mpi4py", mc)):
            def send(peer, comm=comm):
                comm.Send(buf, peer, 3)

            def recv(peer, comm=comm):
                comm.Recv(rbuf, peer, 3)
            cases.append((name, eng, (a, b), lambda s=send, rv=recv, a=a, b=b, c=comm:
                          _pingpong(c, r, b if r == a else a, s, rv, iters)))

    def objs(name, a, b, iters):
        for eng, comm in (("driller", dc), ("mpi4py", mc)):
            def send(peer, comm=comm):
                comm.send(obj, peer, 4)

            def recv(peer, comm=comm):
                comm.recv(source=peer, tag=4)
            cases.append((name, eng, (a, b), lambda s=send, rv=recv, a=a, b=b, c=comm:
                          _pingpong(c, r, b if r == a else a, s, rv, iters)))

    mid, mout = np.ones(MIB // 8), np.empty(MIB // 8)
    p2p("intra-node 64 MiB Send/Recv (ranks 0–1)", 0, 1, big, out, 5)
    objs("intra-node 64 MiB dict of 8 arrays send/recv", 0, 1, 3)
    p2p("inter-node 8 B Send/Recv (ranks 0–2)", 0, 2, small, sout, 200)
    p2p("inter-node 1 MiB Send/Recv", 0, 2, mid, mout, 20)
    p2p("inter-node 64 MiB Send/Recv", 0, 2, big, out, 5)
    kib, kout = np.ones(32 * 1024 // 8), np.empty(32 * 1024 // 8)
    for eng, comm in (("driller", dc), ("mpi4py", mc)):
        def isend(peer, comm=comm):
            comm.Isend(kib, peer, 5).Wait()

        def irecv(peer, comm=comm):
            comm.Irecv(kout, peer, 5).Wait()
        cases.append(("inter-node 32 KiB Isend/Irecv + Wait", eng, (0, 2),
                      lambda s=isend, rv=irecv: _pingpong(None, r, 2 - r, s, rv, 100)))
    objs("inter-node 64 MiB dict send/recv", 0, 2, 3)
    ag_in, ag_out = np.full(MIB // 8, float(r)), np.empty(4 * MIB // 8)
    a2a_in, a2a_out = np.full(4 * 128, float(r)), np.empty(4 * 128)
    bc = np.full(MIB // 8, float(r))
    g_out = np.empty(4 * MIB // 8) if r == 0 else None

    clock = time.process_time if cpu else time.perf_counter

    def coll(name, call, iters, check):
        for eng, comm in (("driller", dc), ("mpi4py", mc)):
            def run(comm=comm):
                ts = []
                for _ in range(iters):
                    comm.Barrier()
                    t0 = clock()
                    call(comm)
                    ts.append(clock() - t0)
                check()
                return statistics.median(ts)
            cases.append((name, eng, (0, 1, 2, 3), run))

    def ar_check():
        assert rout[0] == 6.0

    def ag_check():
        assert ag_out[-1] == 3.0

    def a2a_check():
        assert a2a_out[-1] == 3.0
    coll("Allreduce 16 MiB, 4 ranks (hierarchical)", lambda c: c.Allreduce(red, rout), 3,
         ar_check)
    coll("Allgather 1 MiB per rank, 4 ranks", lambda c: c.Allgather(ag_in, ag_out), 5,
         ag_check)
    coll("Alltoall 1 KiB blocks, 4 ranks (MPI's own, carrying the sizes)",
         lambda c: c.Alltoall(a2a_in, a2a_out), 30, a2a_check)

    def bc_check():
        assert bc[0] == 3.0 and bc[-1] == 3.0
        bc[:] = r                   # (the next round's Bcast writes it again)

    def g_check():
        assert r or g_out[-1] == 3.0
    # (timed at rank 0: a receiver on the other node; the root gathers at rank 0)
    coll("Bcast 1 MiB from rank 3, 4 ranks", lambda c: c.Bcast(bc, 3), 10, bc_check)
    coll("Gather 1 MiB per rank to rank 0, 4 ranks", lambda c: c.Gather(ag_in, g_out, 0), 10,
         g_check)
    sc_in = np.repeat(np.arange(4.0), MIB // 8) if r == 3 else None
    sc_out = np.empty(MIB // 8)

    def sc_check():
        assert sc_out[0] == r and sc_out[-1] == r
    # (from rank 3: rank 0, timed, is the head of the root's other node)
    coll("Scatter 1 MiB per rank from rank 3, 4 ranks", lambda c: c.Scatter(sc_in, sc_out, 3),
         10, sc_check)

    cases = [c for c in cases if only in c[0]]
    results = {}
    for rnd in range(rounds + 1):   # round 0 warms up
        # the two engines of a measurement take turns going first: the first after
        # another measurement (most of all a large one) runs its first iterations
        # slower, whichever engine it is (docs/scaleout.md, Performance)
        order = cases if rnd % 2 else [c for k in range(0, len(cases), 2)
                                       for c in (cases[k + 1], cases[k])]
        for name, eng, ranks, fn in order:
            dc.Barrier()             # driller's barrier sleeps: idle ranks cost nothing
            if r in ranks:
                t = fn()
                if rnd and r == 0:
                    results.setdefault((name, eng), []).append(t)
    if r == 0:
        _report(results, rounds, real.Get_library_version().splitlines()[0].split(",")[0].strip(),
                cpu)


def _fmt(t: float) -> str:
    return f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def _span(xs, fmt) -> str:
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]"


def _report(results, rounds, library: str, cpu: bool = False) -> None:
    """The markdown block docs/scaleout.md and the README carry, exactly."""
    names = list(dict.fromkeys(name for name, _ in results))
    load = os.environ.get("DRILLER_BENCH_LOAD") or "%.1f" % os.getloadavg()[0]
    print(f"`{os.environ.get('DRILLER_BENCH_CMD', 'python benchmarks/hybrid_bench.py')}"
          f" --rounds {rounds}`: 2 emulated nodes × 2 ranks, {library}, "
          f"{time.strftime('%Y-%m-%d')}, load average {load} when it started "
          f"({os.cpu_count()} vCPUs). Median [min–max] over {rounds} rounds; the ratio "
          f"is driller / mpi4py within each round (< 1: driller faster)."
          + (" Collectives: rank 0's CPU time per call (process_time), not wall-clock."
             if cpu else ""))
    print()
    print("| measurement | driller | mpi4py | driller / mpi4py |")
    print("|---|---|---|---|")
    for name in names:
        d, m = results[(name, "driller")], results[(name, "mpi4py")]
        ratios = [a / b for a, b in zip(d, m)]
        print(f"| {name} | {_span(d, _fmt)} | {_span(m, _fmt)} | "
              f"{_span(ratios, lambda x: f'{x:.2f}×')} |")
    sys.stdout.flush()


def job(argv: list[str], per_node: int = 2, mpich: bool = False,
        tcp: bool = False, src: str | None = None) -> tuple[list[str], dict]:
    """The command line and environment of a job of 2 emulated nodes (DRILLER_NODE
    a, b) of ``per_node`` ranks each running ``python argv...`` with this tree's
    driller (``mpich``: .venv-mpich's; ``tcp``: Open MPI's btl self,tcp; ``src``:
    driller from that source tree instead)."""
    py = sys.executable
    if mpich:
        run = [os.path.join(ROOT, ".venv-mpich", "bin", "mpiexec")]
        py = os.path.join(ROOT, ".venv-mpich", "bin", "python")
        ctx = lambda node: ["-n", str(per_node), "-env", "DRILLER_NODE", node, py] + argv
    else:
        run = [os.path.join(os.path.dirname(py), "mpirun")]
        if os.geteuid() == 0:
            run.append("--allow-run-as-root")
        run += ["--oversubscribe", "--bind-to", "none"]
        if tcp:
            run += ["-x", "OMPI_MCA_btl=self,tcp", "-x", "OMPI_MCA_pml=ob1"]
        ctx = lambda node: ["-n", str(per_node), "-x", f"DRILLER_NODE={node}", py] + argv
    env = dict(os.environ)
    env.setdefault("DRILLER_BENCH_LOAD", "%.1f" % os.getloadavg()[0])
    env["PYTHONPATH"] = (os.path.abspath(src) if src else os.path.join(ROOT, "src")) \
        + os.pathsep + env.get("PYTHONPATH", "")
    return run + ctx("a") + [":"] + ctx("b"), env


def launch(rounds: int, mpich: bool, only: str = "", cpu: bool = False,
           tcp: bool = False, src: str | None = None) -> int:
    cmd, env = job([HERE, "--rank", "--rounds", str(rounds), "--only", only]
                   + (["--cpu"] if cpu else []), 2, mpich, tcp, src)
    env.setdefault("DRILLER_BENCH_CMD", "python benchmarks/hybrid_bench.py"
                   + (" --mpich" if mpich else "") + (" --tcp" if tcp else "")
                   + (f" --only {only}" if only else "")
                   + (" --cpu" if cpu else "") + (f" --src {src}" if src else ""))
    return subprocess.call(cmd, env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mpich", action="store_true", help="MPICH (.venv-mpich) instead of Open MPI")
    p.add_argument("--tcp", action="store_true",
                   help="Open MPI with OMPI_MCA_btl=self,tcp (a network path between nodes)")
    p.add_argument("--only", default="", help="only the measurements whose name contains this")
    p.add_argument("--cpu", action="store_true",
                   help="time the collectives by rank 0's CPU time per call (process_time)")
    p.add_argument("--src", help="driller's source tree to run (default: this tree's src)")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank:
        rank_main(a.rounds, a.only, a.cpu)
        return 0
    if a.tcp and a.mpich:
        p.error("--tcp is Open MPI's (OMPI_MCA_btl): not with --mpich")
    return launch(a.rounds, a.mpich, a.only, a.cpu, a.tcp, a.src)


if __name__ == "__main__":
    sys.exit(main())
