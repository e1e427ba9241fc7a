"""Prototype measurement of a "direct route" between nodes (docs/scaleout.md).

    python benchmarks/direct_proto.py [--rounds 15] [--iters 300] [--per-node 1|2]
                                      [--mpich] [--engines driller,direct,mpi4py] [--cpu]

starts 2 emulated nodes (DRILLER_NODE a, b) of ``--per-node`` ranks under mpirun
(``--mpich``: .venv-mpich's mpiexec); with 2, ranks 1 and 3 wait in driller's
Barrier, as in hybrid_bench.py.  Rank 0 and the first rank of node b ping-pong
8 B and 1 MiB with blocking Send/Recv, each round alternating the engines (the
order reversed every other round):

* ``driller``: driller's hybrid COMM_WORLD today (records on REC_TAG, the pool);
* ``direct``: the same facade (``Comm.Send``/``Recv``), with the transport's
  per-peer closures replaced by a bare ``twin.Send``/``twin.Recv`` of the buffer
  (user tag, no header, no pool) on an MPI communicator of its own: what the
  facade plus MPI costs, i.e. the floor of a direct route (no matching checks);
* ``direct+chk``: ``direct`` plus the checks a correct direct receive needs (no
  pending local work, nothing in the engine that could match first);
* ``mpi4py``: the job's own MPI, plain mpi4py;
* ``driller-poll`` (not run unless named in ``--engines``): today's route with its
  blocking waits polling MPI 1 ms before they first yield (``_hybrid.POLL_SECONDS``,
  20 µs), to tell the waiting policy's share from the protocol's.

It prints per engine and size: wall time one way (median over rounds) and CPU
per message (``time.process_time`` over the round / messages, both sides' mean),
and the ratio to mpi4py within each round (median [min-max]).  ``--cpu``: CPU per
8 B call on one side at a time instead (rank 0's Send loop alone, then the
peer's Recv of messages already there, which today's route has drawn into the
engine meanwhile), which waiting does not blur on a loaded machine.
The closures are swapped only around the timed loops (driller's own Barrier
between them needs the record route).
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


def rank_main(rounds, iters, per_node, engines, cpu):
    import numpy as np
    from mpi4py import MPI as real
    from driller import MPI as D

    dc = D.COMM_WORLD
    r = dc.Get_rank()
    mc = real.COMM_WORLD
    twin = mc.Dup()           # the driller communicator's MPI twin
    other = per_node          # rank 0 (node a) and its peer, the first rank of node b
    if r not in (0, other):   # idle ranks wait in driller's barrier (it naps)
        per_round = 2 * len([e for e in engines if e != "direct+chk"]) if cpu else \
            2 * len(engines)
        for _ in range((rounds + 1) * per_round + 1):
            dc.Barrier()
        return
    peer = other if r == 0 else 0
    t = dc._p.t
    w = dc._p.group[peer]
    orig_s, orig_r = t.senders[w], t.recvers[w]
    BYTE = real.BYTE
    st = real.Status()

    def dsend(ctx, tag, mv, flags=0, Send=twin.Send):
        Send([mv, BYTE], w, tag)
        return True

    def drecv(tag, ctx, mv, cap=-1, wait=True, Recv=twin.Recv):
        Recv([mv, BYTE], w, tag, st)
        return w, st.Get_tag(), st.Get_count(BYTE)

    eng = t.engine
    clear = t._clear

    fallbacks = [0]

    def drecv_chk(tag, ctx, mv, cap=-1, wait=True, Recv=twin.Recv, eng=eng):
        if cap >= 0 or t.npending or (eng.posted or eng.unexpected) and not clear(w, ctx):
            fallbacks[0] += 1   # (a real route would take the engine's path here)
        Recv([mv, BYTE], w, tag, st)
        return w, st.Get_tag(), st.Get_count(BYTE)

    from driller.mmpi import _hybrid
    poll0 = _hybrid.POLL_SECONDS

    def install(kind):
        _hybrid.POLL_SECONDS = 1e-3 if kind == "driller-poll" else poll0
        if kind in ("driller", "driller-poll"):
            t.senders[w], t.recvers[w] = orig_s, orig_r
        elif kind == "direct":
            t.senders[w], t.recvers[w] = dsend, drecv
        else:
            t.senders[w], t.recvers[w] = dsend, drecv_chk

    if cpu:   # one-sided CPU per call, 8 B, nothing waited for
        _cpu_side(dc, twin, r, peer, rounds, iters, install, np, engines)
        return
    res = {}
    sizes = ((8, "8 B"), (1 << 20, "1 MiB"))
    for rnd in range(rounds + 1):
        order = engines if rnd % 2 else engines[::-1]
        for nb, label in sizes:
            buf = np.ones(nb // 8)
            out = np.empty(nb // 8)
            n = iters if nb <= 8 else max(20, iters // 3)
            for e in order:
                comm = mc if e == "mpi4py" else dc
                dc.Barrier()   # (driller's own traffic: before the closures are replaced)
                if e != "mpi4py":
                    install(e)
                Send, Recv = comm.Send, comm.Recv
                c0, t0 = time.process_time(), time.perf_counter()
                if r == 0:
                    for _ in range(n):
                        Send(buf, peer, 3)
                        Recv(out, peer, 3)
                else:
                    for _ in range(n):
                        Recv(out, 0, 3)
                        Send(buf, 0, 3)
                wall = (time.perf_counter() - t0) / (2 * n)
                cpu = (time.process_time() - c0) / (2 * n)
                install("driller")
                if r == 0:
                    both = [cpu, twin.recv(source=peer, tag=9)]
                else:
                    twin.send(cpu, 0, 9)
                if rnd and r == 0:
                    res.setdefault((label, e), []).append((wall, sum(both) / 2))
            install("driller")
    dc.Barrier()
    if r == 0:
        if "direct+chk" in engines:
            print("direct+chk receives that a real route would have sent through the "
                  "engine:", fallbacks[0])
        print(f"2 emulated nodes x {per_node} rank(s), "
              f"{real.Get_library_version().splitlines()[0].split(',')[0].strip()}, "
              f"load {os.getloadavg()[0]:.1f}, {rounds} rounds; ping-pong, one way")
        print("| size | engine | wall µs | CPU µs / message (both ranks' mean) "
              "| wall / mpi4py | CPU / mpi4py |")
        print("|---|---|---|---|---|---|")
        for _, label in sizes:
            base = res[(label, "mpi4py")]
            for e in engines:
                xs = res[(label, e)]
                wr = [a[0] / b[0] for a, b in zip(xs, base)]
                cr = [a[1] / b[1] for a, b in zip(xs, base)]
                f = lambda v: f"{statistics.median(v):.2f}× [{min(v):.2f}–{max(v):.2f}]"
                print(f"| {label} | {e} | {statistics.median(a[0] for a in xs) * 1e6:.2f} | "
                      f"{statistics.median(a[1] for a in xs) * 1e6:.2f} | {f(wr)} | {f(cr)} |")


def _cpu_side(dc, twin, r, peer, rounds, iters, install, np, engines):
    """CPU per 8 B call, one side at a time: rank 0 sends ``iters`` messages in a
    loop (its Send alone), then, after a barrier, rank ``peer`` receives them (each
    already there: its Recv alone).  Median of ``rounds`` per engine, ns per call."""
    from mpi4py import MPI as real
    mc = real.COMM_WORLD
    buf, out = np.ones(1), np.empty(1)
    res = {}
    engines = [e for e in engines if e != "direct+chk"]
    for rnd in range(rounds + 1):
        for e in (engines if rnd % 2 else engines[::-1]):
            comm = mc if e == "mpi4py" else dc
            dc.Barrier()
            if e != "mpi4py":
                install(e)
            Send, Recv = comm.Send, comm.Recv
            c0 = time.process_time()
            if r == 0:
                for _ in range(iters):
                    Send(buf, peer, 5)
            c = time.process_time() - c0
            install("driller")
            dc.Barrier()
            if e != "mpi4py":
                install(e)
            c0 = time.process_time()
            if r != 0:
                for _ in range(iters):
                    Recv(out, 0, 5)
            c2 = time.process_time() - c0
            install("driller")
            if rnd:
                res.setdefault(e, []).append(c / iters if r == 0 else c2 / iters)
    dc.Barrier()
    mine = {e: statistics.median(v) * 1e9 for e, v in res.items()}
    if r == 0:
        other = twin.recv(source=peer, tag=8)
        print(f"CPU per 8 B call, ns (median of {rounds} rounds of {iters}; "
              f"load {os.getloadavg()[0]:.1f}); Send on rank 0 alone, Recv on rank {peer} "
              f"with the message already there")
        print("| engine | Send | Recv | Send + Recv |")
        print("|---|---|---|---|")
        for e in engines:
            print(f"| {e} | {mine[e]:.0f} | {other[e]:.0f} | {mine[e] + other[e]:.0f} |")
    else:
        twin.send(mine, 0, 8)


def launch(rounds, iters, mpich, per_node, engines, cpu):
    py = sys.executable
    args = [HERE, "--rank", "--rounds", str(rounds), "--iters", str(iters), "--per-node",
            str(per_node), "--engines", engines] + (["--cpu"] if cpu else [])
    if mpich:
        run = [os.path.join(ROOT, ".venv-mpich", "bin", "mpiexec")]
        py = os.path.join(ROOT, ".venv-mpich", "bin", "python")
        ctx = lambda node: ["-n", str(per_node), "-env", "DRILLER_NODE", node, py] + args
    else:
        run = [os.path.join(os.path.dirname(py), "mpirun")]
        if os.geteuid() == 0:
            run.append("--allow-run-as-root")
        run += ["--oversubscribe", "--bind-to", "none"]
        ctx = lambda node: ["-n", str(per_node), "-x", f"DRILLER_NODE={node}", py] + args
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call(run + ctx("a") + [":"] + ctx("b"), env=env)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--mpich", action="store_true")
    p.add_argument("--per-node", type=int, default=1, help="ranks per node (1 or 2)")
    p.add_argument("--engines", default="driller,direct,direct+chk,mpi4py")
    p.add_argument("--cpu", action="store_true",
                   help="one-sided CPU per 8 B call (Send alone, Recv of messages there)")
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank:
        rank_main(a.rounds, a.iters, a.per_node, tuple(a.engines.split(",")), a.cpu)
        return 0
    return launch(a.rounds, a.iters, a.mpich, a.per_node, a.engines, a.cpu)


if __name__ == "__main__":
    sys.exit(main())
