"""Where the time of a large Send/Recv between nodes goes (docs/scaleout.md, "Performance").

    python benchmarks/hybrid_floor.py [--rounds 9] [--size 1048576] [--mpich | --tcp]

starts the job of ``hybrid_bench.py`` (2 emulated nodes x 2 ranks, this tree's
driller) and ping-pongs a buffer larger than the route's inline size (1 MiB unless
told; benchmarks/lat_hybrid.py takes 8 B apart) between ranks 0 and 2 (other
nodes), four ways interleaved in each round (the order reversed every other round):

* ``driller``: ``COMM_WORLD.Send``/``Recv`` (the facade, then the route);
* ``route``: the transport's ``send_blocking`` and ``recvers[src]`` called straight:
  the route without the facade;
* ``2 msgs``: the route's protocol in bare mpi4py (a 64-byte header, then the data
  on a second communicator, as driller's rendezvous request and data message):
  its floor, without driller's Python;
* ``mpi4py``: the job's MPI through mpi4py, one message.

Printed: the median one-way time (ping-pong / 2, median over the round's
iterations) over rounds, and the median within-round ratio to mpi4py [min–max].
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
from hybrid_bench import _pingpong, job  # noqa: E402  (the same job and timing)


def rank_main(rounds: int, size: int) -> None:
    import numpy as np
    from mpi4py import MPI as real

    from driller import MPI as D

    dc, mc = D.COMM_WORLD, real.COMM_WORLD
    r = dc.Get_rank()
    hdr_c, data_c = mc.Dup(), mc.Dup()
    peer = {0: 2, 2: 0}.get(r)
    p = dc._p                    # the communicator's per-peer tables (_comm._P2P)
    B = real.BYTE
    out = {}
    iters = 20   # (as hybrid_bench's 1 MiB row)
    a, b = np.ones(size, np.uint8), np.empty(size, np.uint8)
    ma, mb = memoryview(a), memoryview(b)
    hdr, hin = bytearray(64), bytearray(64)

    def route_send():
        if not p.t.send_blocking(peer, p.ctx, 3, ma):   # (False: not past INLINE)
            dc.Send(a, peer, 3)

    def route_recv():
        if (p.recvs[peer] or p.t.recvers[peer])(3, p.ctx, mb, -1, True) is None:
            dc.Recv(b, peer, 3)   # (declined: the general path)

    def two_send():
        hdr_c.Send([hdr, B], peer, 1)
        data_c.Send([a, B], peer, 5)

    def two_recv():
        hdr_c.Recv([hin, B], peer, 1)
        data_c.Recv([b, B], peer, 5)

    cases = [("driller", lambda: dc.Send(a, peer, 3), lambda: dc.Recv(b, peer, 3)),
             ("route", route_send, route_recv),
             ("2 msgs", two_send, two_recv),
             ("mpi4py", lambda: mc.Send(a, peer, 3), lambda: mc.Recv(b, peer, 3))]
    for rnd in range(rounds):
        for name, send, recv in (cases if rnd % 2 else cases[::-1]):
            dc.Barrier()
            if peer is not None:
                out.setdefault(name, []).append(
                    _pingpong(dc, r, peer, lambda _p, f=send: f(), lambda _p, f=recv: f(),
                              iters))
    if r == 0:
        print(f"load average {os.getloadavg()[0]:.1f}; {rounds} rounds; one-way, median "
              f"[min–max] over rounds; ratio to mpi4py within each round")
        for name, v in out.items():
            ratios = [x / y for x, y in zip(v, out["mpi4py"])]
            print(f"{size:9d} B {name:8s} "
                  f"{statistics.median(v) * 1e6:8.2f} µs [{min(v) * 1e6:.2f}–"
                  f"{max(v) * 1e6:.2f}]  {statistics.median(ratios):.2f}× "
                  f"[{min(ratios):.2f}–{max(ratios):.2f}]")
    dc.Barrier()
    hdr_c.Free()
    data_c.Free()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes per message")
    ap.add_argument("--mpich", action="store_true", help="MPICH (.venv-mpich)")
    ap.add_argument("--tcp", action="store_true", help="Open MPI with btl self,tcp")
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank:
        rank_main(a.rounds, a.size)
        return 0
    if a.tcp and a.mpich:
        ap.error("--tcp is Open MPI's (OMPI_MCA_btl): not with --mpich")
    cmd, env = job([HERE, "--rank", "--rounds", str(a.rounds), "--size", str(a.size)], 2,
                   a.mpich, a.tcp)
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
