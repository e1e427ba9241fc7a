"""Hybrid world vs plain mpi4py, side by side in one MPI job (docs/scaleout.md).

    python benchmarks/hybrid_bench.py [--rounds 5] [--mpich]

starts ``mpirun`` (the test venv's Open MPI; ``--mpich``: .venv-mpich's mpiexec) with
2 emulated nodes x 2 ranks (DRILLER_NODE a, b).  Every rank holds both
communicators: driller's hybrid ``COMM_WORLD`` and the job's own MPI one
(mpi4py).  Each round measures, interleaved, on the same ranks:

* intra-node (ranks 0 and 1): 64 MiB Send/Recv, 64 MiB dict of 8 arrays send/recv;
* inter-node (ranks 0 and 2): 8 B and 64 MiB Send/Recv, 64 MiB dict send/recv;
* Allreduce (SUM) of 16 MiB of float64 over the 4 ranks.

Reported: the median one-way time (ping-pong / 2) or call time of each, min-max over
rounds, and the median within-round ratio driller / mpi4py (< 1: driller faster).
Ranks not in a measurement wait in a sleeping barrier, not a spinning one.
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


def rank_main(rounds: int) -> None:
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

    p2p("intra 64 MiB Send/Recv (0-1)", 0, 1, big, out, 5)
    objs("intra 64 MiB dict send/recv (0-1)", 0, 1, 3)
    p2p("inter 8 B Send/Recv (0-2)", 0, 2, small, sout, 200)
    p2p("inter 64 MiB Send/Recv (0-2)", 0, 2, big, out, 5)
    objs("inter 64 MiB dict send/recv (0-2)", 0, 2, 3)
    for eng, comm in (("driller", dc), ("mpi4py", mc)):
        def allreduce(comm=comm):
            ts = []
            for _ in range(3):
                comm.Barrier()
                t0 = time.perf_counter()
                comm.Allreduce(red, rout)
                ts.append(time.perf_counter() - t0)
            assert rout[0] == 6.0
            return statistics.median(ts)
        cases.append(("Allreduce 16 MiB, 4 ranks", eng, (0, 1, 2, 3), allreduce))

    results = {}
    for rnd in range(rounds + 1):   # round 0 warms up
        for name, eng, ranks, fn in cases:
            dc.Barrier()             # driller's barrier sleeps: idle ranks cost nothing
            if r in ranks:
                t = fn()
                if rnd and r == 0:
                    results.setdefault((name, eng), []).append(t)
    if r == 0:
        _report(results, rounds)


def _fmt(t: float) -> str:
    return f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def _report(results, rounds) -> None:
    names = list(dict.fromkeys(name for name, _ in results))
    print(f"hybrid world (2 emulated nodes x 2 ranks) vs mpi4py on the job's MPI, "
          f"{rounds} rounds; median [min-max]; ratio = driller / mpi4py within each round")
    print(f"| measurement | driller | mpi4py | ratio |")
    print(f"|---|---|---|---|")
    for name in names:
        d, m = results[(name, "driller")], results[(name, "mpi4py")]
        ratios = [a / b for a, b in zip(d, m)]
        print(f"| {name} | {_fmt(statistics.median(d))} [{_fmt(min(d))}–{_fmt(max(d))}] "
              f"| {_fmt(statistics.median(m))} [{_fmt(min(m))}–{_fmt(max(m))}] "
              f"| {statistics.median(ratios):.2f}× [{min(ratios):.2f}–{max(ratios):.2f}] |")


def launch(rounds: int, mpich: bool) -> int:
    py = sys.executable
    if mpich:
        run = [os.path.join(ROOT, ".venv-mpich", "bin", "mpiexec")]
        py = os.path.join(ROOT, ".venv-mpich", "bin", "python")
        ctx = lambda node: ["-n", "2", "-env", "DRILLER_NODE", node, py, HERE, "--rank",
                            "--rounds", str(rounds)]
    else:
        run = [os.path.join(os.path.dirname(py), "mpirun")]
        if os.geteuid() == 0:
            run.append("--allow-run-as-root")
        run += ["--oversubscribe", "--bind-to", "none"]
        ctx = lambda node: ["-n", "2", "-x", f"DRILLER_NODE={node}", py, HERE, "--rank",
                            "--rounds", str(rounds)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call(run + ctx("a") + [":"] + ctx("b"), env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mpich", action="store_true", help="MPICH (.venv-mpich) instead of Open MPI")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank:
        rank_main(a.rounds)
        return 0
    return launch(a.rounds, a.mpich)


if __name__ == "__main__":
    sys.exit(main())
