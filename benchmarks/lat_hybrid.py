"""Where the inter-node 8 B one-way time goes, layer by layer (docs/scaleout.md).

    python benchmarks/lat_hybrid.py [--rounds 9] [--iters 400] [--per-node 1|2]
                                    [--mpich] [--tcp] [--modes mpi4py,raw,...]

starts 2 emulated nodes (DRILLER_NODE a, b) of ``--per-node`` ranks under mpirun
(``--mpich``: .venv-mpich's mpiexec; ``--tcp``: Open MPI with
``OMPI_MCA_btl=self,tcp``, a real network path); with 2, ranks 1 and 3 wait in
driller's Barrier as in hybrid_bench.py.  Rank 0 and the first rank of node b
ping-pong an 8-byte message (a numpy array of one float64), each mode a layer
more than the last, interleaved in every round (the order reversed every other
round), so the differences are the layers' cost on the critical path:

* ``mpi4py``: the job's own ``COMM_WORLD.Send``/``Recv`` of the arrays;
* ``raw``: MPI with driller's record size: a blocking ``Send`` of 72 ready
  bytes, a blocking ``Recv`` into a 72-byte buffer (MPI waits in C), on a
  communicator of its own;
* ``poll``: ``raw``'s send; the receive is driller's pool written out bare
  (8 persistent any-source receives, the head ``Test``-ed in a Python loop,
  then ``Start``-ed again): what waiting in Python costs;
* ``pool``: ``poll`` plus the record's work (the header packed and joined to
  the payload per send; unpacked, checked and the payload copied out per
  receive): driller's transport written out without its calls;
* ``closures``: the transport's per-peer closures called straight
  (``senders[dst]``, ``recvers[src]``), the arrays' byte views made once;
* ``driller``: ``Comm.Send``/``Comm.Recv`` of the arrays (the hybrid
  benchmark's inter-node 8 B row);
* ``driller-B`` (not run unless named in ``--modes``): the same of 8-byte
  ``bytearray``s (the facade's ``memoryview`` of them needs no cast to bytes).

Printed: per mode, one way (half a round trip, median over the iterations of
a round), median [min-max] over rounds, and the median within-round step from
the mode before.
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
MODES = ("mpi4py", "raw", "poll", "pool", "closures", "driller")


def _loops(mode, r, peer, dc, mc, twin, np, real):
    """(send(), recv()) of ``mode`` between this rank and ``peer``."""
    buf, out = np.ones(1), np.empty(1)
    if mode == "mpi4py":
        return (lambda S=mc.Send: S(buf, peer, 3)), (lambda R=mc.Recv: R(out, peer, 3))
    if mode == "driller":
        return (lambda S=dc.Send: S(buf, peer, 3)), (lambda R=dc.Recv: R(out, peer, 3))
    if mode == "driller-B":   # bytearrays: the facade's memoryview needs no cast
        sb, rb = bytearray(8), bytearray(8)
        return (lambda S=dc.Send: S(sb, peer, 3)), (lambda R=dc.Recv: R(rb, peer, 3))
    from driller.mmpi import _transport as T
    p = dc._p
    t, ctx, w = p.t, p.ctx, p.group[peer]
    smv, rmv = memoryview(buf).cast("B"), memoryview(out).cast("B")
    if mode == "closures":
        snd, rcv = t.senders[w], t.recvers[w]
        def recv():
            if rcv(3, ctx, rmv, -1, True) is None:   # (declined: the general path)
                dc.Recv(out, peer, 3)
        return (lambda: snd(ctx, 3, smv)), recv
    BYTE = real.BYTE
    HB = T.HDR_BYTES
    rec = T.HDR.pack(T.K_EAGER, ctx, 3, 8, 0, 0, 8, r) + smv
    Send = twin.Send
    if mode == "raw":
        rbuf = bytearray(HB + 8)
        return (lambda: Send(rec, peer, 1)), \
            (lambda R=twin.Recv, s=[rbuf, BYTE]: R(s, peer, 1))
    pool = []
    for _ in range(8):
        b = bytearray(HB + (16 << 10))
        q = twin.Recv_init([b, BYTE], real.ANY_SOURCE, 1)
        q.Start()
        pool.append((q, b, memoryview(b)))
    head = [0]
    nxt = [(i + 1) % 8 for i in range(8)]
    if mode == "poll":
        def recv():
            i = head[0]
            q = pool[i][0]
            while not q.Test():
                pass
            q.Start()
            head[0] = nxt[i]
        return (lambda: Send(rec, peer, 1)), recv
    pack, unpack = T.HDR.pack, T.HDR.unpack_from
    K = T.K_EAGER

    def send():
        Send(pack(K, ctx, 3, 8, 0, 0, 8, r) + smv, peer, 1)

    def recv():
        i = head[0]
        q, b, v = pool[i]
        while not q.Test():
            pass
        kf, c, tg, nb, _s, _a, _pl, w7 = unpack(b, 0)
        if w7 != peer or c != ctx or tg != 3 or kf != K or nb > 8:
            raise AssertionError("not the record sent")
        rmv[:nb] = v[HB:HB + nb]
        q.Start()
        head[0] = nxt[i]
        return peer, tg, nb
    return send, recv


def rank_main(rounds, iters, per_node, modes):
    import numpy as np
    from mpi4py import MPI as real
    from driller import MPI as D

    dc, mc = D.COMM_WORLD, real.COMM_WORLD
    r = dc.Get_rank()
    # a communicator per mode (a pool's receives take any source); Dup is collective
    twins = {m: mc.Dup() for m in modes}
    other = per_node
    if r not in (0, other):   # idle ranks wait in driller's barrier (it naps)
        for _ in range((rounds + 1) * len(modes) + 1):
            dc.Barrier()
        return
    peer = other if r == 0 else 0
    loops = {m: _loops(m, r, peer, dc, mc, twins[m], np, real) for m in modes}
    res = {}
    clock = time.perf_counter
    for rnd in range(rounds + 1):
        for m in (modes if rnd % 2 else modes[::-1]):
            send, recv = loops[m]
            dc.Barrier()
            ts = []
            for _ in range(iters):
                t0 = clock()
                if r == 0:
                    send()
                    recv()
                else:
                    recv()
                    send()
                ts.append(clock() - t0)
            if rnd and r == 0:
                res.setdefault(m, []).append(statistics.median(ts) / 2)
    dc.Barrier()
    if r == 0:
        lib = real.Get_library_version().splitlines()[0].split(",")[0].strip()
        btl = os.environ.get("OMPI_MCA_btl")   # (--tcp's)
        print(f"`python benchmarks/lat_hybrid.py --rounds {rounds} --iters {iters} "
              f"--per-node {per_node}`: {lib}" + (f" (btl {btl})" if btl else "")
              + f", load average {os.environ.get('DRILLER_BENCH_LOAD', '?')} when it "
              f"started ({os.cpu_count()} vCPUs); one way, median [min–max] over rounds; "
              f"step: median within-round difference from the row above")
        print()
        print("| mode | one way | step |")
        print("|---|---|---|")
        prev = None
        for m in modes:
            xs = res[m]
            f = lambda v: f"{v * 1e6:.2f}"
            step = "" if prev is None else \
                f"{statistics.median(a - b for a, b in zip(xs, res[prev])) * 1e9:+.0f} ns"
            print(f"| {m} | {f(statistics.median(xs))} µs [{f(min(xs))}–{f(max(xs))}] | "
                  f"{step} |")
            prev = m
        sys.stdout.flush()


def launch(rounds, iters, mpich, tcp, per_node, modes):
    from hybrid_bench import job   # (this directory is on sys.path: the script's)
    cmd, env = job([HERE, "--rank", "--rounds", str(rounds), "--iters", str(iters),
                    "--per-node", str(per_node), "--modes", modes], per_node, mpich, tcp)
    return subprocess.call(cmd, env=env)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--mpich", action="store_true")
    p.add_argument("--tcp", action="store_true", help="Open MPI with OMPI_MCA_btl=self,tcp")
    p.add_argument("--per-node", type=int, default=2, help="ranks per node (1 or 2)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rank:
        rank_main(a.rounds, a.iters, a.per_node, tuple(a.modes.split(",")))
        return 0
    return launch(a.rounds, a.iters, a.mpich, a.tcp, a.per_node, a.modes)


if __name__ == "__main__":
    sys.exit(main())
