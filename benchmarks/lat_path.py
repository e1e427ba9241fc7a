"""Where osu_latency's one-way time goes on the critical path, layer by layer.

In a ping-pong the one-way time is the hand-over (the record's lines moving to
the other core) plus what the receiving rank runs from "record visible" to its
reply's head store; what a rank does after its store, before it waits again,
is hidden while the reply is on its way.  This runs the pinned 8 B ping-pong
(``lat_pinned.py``'s: rank r on CPU r, rank 0 times each round trip, p50 of
one-way) with both ranks in one of several modes, each a layer more than the
last, so the differences are the layers' cost *in time on that path*:

- ``bare``: a ring reader and writer written out in the loop (no call);
- ``closures``: the transport's per-peer closures, ``recvers[src]`` (its wait
  included) and ``senders[dst]``, called straight;
- ``recvapi``: ``Comm.Recv`` of osu's spec, the sender closure;
- ``sendapi``: the receiver closure, ``Comm.Send`` of osu's spec;
- ``osu``: ``Comm.Send`` / ``Comm.Recv`` of ``[mmap, 8, MPI.BYTE]`` (the demo).

Checks, by name in ``--modes``: ``padsend`` / ``padrecv`` are ``closures`` with a
``for _ in range(PAD)`` loop (environment ``PAD``, 12) after the send (off the
path if the peer's reply takes longer) or between the receive and the send (on
it); ``marker`` is ``bare`` polling a word of the record's own line, stored
after the record, instead of the head word.  ``LAT_PATH_ALL=1`` prints every
round's figure.

    .venv/bin/python benchmarks/lat_path.py [--rounds 3] [--iters 20000]
        [--modes bare,closures,recvapi,sendapi,osu] [--base-src OTHER_TREE/src]
        [--no-mpi4py]

``--base-src`` runs the same modes with driller from another tree in the same
rounds (before/after); the demo's loop also runs on Open MPI in each round (its
``mpirun``; ``--no-mpi4py``: not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent

WORKER = r"""
import mmap, os, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
ncpu = len(os.sched_getaffinity(0))
if ncpu > 1:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % ncpu]})
mode, n = sys.argv[1], int(sys.argv[2])
size = 8
peer = 1 - rank
s_buf, r_buf = mmap.mmap(-1, size), mmap.mmap(-1, size)
ss, rs = [s_buf, size, MPI.BYTE], [r_buf, size, MPI.BYTE]
comm.Send(ss, peer, 1); comm.Recv(rs, peer, 1)   # (makes the closures and the record)
comm.Barrier()
if mode != "osu":   # (driller's internals: not under Open MPI)
    from driller.mmpi import _transport as T
    p = comm._p
    t = p.t
    ctx = p.ctx
    snd = t.senders[peer]
    rcv = t.recvers[peer]
if mode in ("bare", "marker"):
    words, data, rb = t.words, t.data, t.ring_bytes
    ihw, itw, ibase, tails = t.in_head[peer], t.in_tailw[peer], t.in_data[peer], t.in_tail
    ohw, obase, oheads = t.out_headw[peer], t.out_data[peer], t.out_head
    unpack = T._HDR5I.unpack_from
    inline = T._INLINE.pack_into
    put8 = T._PUTS[8]
    KI = T.K_INLINE
    def recv():
        tl = tails[peer]
        if mode == "marker":   # (poll the record's own line: a word the writer stores last)
            mw = (ibase + tl % rb) // 8 + 7
            e = tl + 1
            while words[mw] != e:
                pass
        else:
            while words[ihw] == tl:
                pass
        kf, c, tg, nb, pl, plen = unpack(data, ibase + tl % rb)
        put8(r_buf, 0, pl)
        tl += 64
        tails[peer] = tl
        words[itw] = tl
    def send():
        h = oheads[peer]
        inline(data, obase + h % rb, KI, ctx, 1, 8, s_buf[:8], 0, 0)
        if mode == "marker":
            words[(obase + h % rb) // 8 + 7] = h + 1
        h += 64
        oheads[peer] = h
        words[ohw] = h
elif mode == "closures":
    def recv():
        while rcv(1, ctx, r_buf, 8, True) is None:   # (None: its wait ran out)
            pass
    def send():
        snd(ctx, 1, s_buf[:8])
elif mode in ("padsend", "padrecv"):   # (checks: work after the store, work before it)
    rng = range(int(os.environ.get("PAD", "12")))
    def recv():
        while rcv(1, ctx, r_buf, 8, True) is None:   # (None: its wait ran out)
            pass
        if mode == "padrecv":
            for _ in rng:
                pass
    def send():
        snd(ctx, 1, s_buf[:8])
        if mode == "padsend":
            for _ in rng:
                pass
elif mode == "recvapi":
    def recv():
        comm.Recv(rs, peer, 1)
    def send():
        snd(ctx, 1, s_buf[:8])
elif mode == "sendapi":
    def recv():
        while rcv(1, ctx, r_buf, 8, True) is None:   # (None: its wait ran out)
            pass
    def send():
        comm.Send(ss, peer, 1)
else:
    def recv():
        comm.Recv(rs, peer, 1)
    def send():
        comm.Send(ss, peer, 1)
clock = time.perf_counter_ns
out = [0] * n
if mode == "osu":   # the demo's own loop, no wrapper calls
    if rank == 0:
        for i in range(n):
            t0 = clock()
            comm.Send(ss, 1, 1)
            comm.Recv(rs, 1, 1)
            out[i] = clock() - t0
    else:
        for i in range(n):
            comm.Recv(rs, 0, 1)
            comm.Send(ss, 0, 1)
elif rank == 0:
    for i in range(n):
        t0 = clock()
        send()
        recv()
        out[i] = clock() - t0
else:
    for i in range(n):
        recv()
        send()
comm.Barrier()
if rank == 0:
    out = sorted(out[n // 10:])
    print("RESULT", out[len(out) // 2] / 2e3, flush=True)
"""


def run(src: str | None, mode: str, iters: int, worker: str) -> float:
    env = dict(os.environ)
    if src == "mpi4py":   # the demo's loop on Open MPI (its mpirun, no binding: the
        cmd = [str(BIN / "mpirun"), "--oversubscribe", "--allow-run-as-root",   # worker
               "--bind-to", "none", "-n", "2", sys.executable, worker, mode,   # pins
               str(iters)]                                                     # itself)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        return _result(out, mode)
    if src:
        env["PYTHONPATH"] = src
    cmd = [str(BIN / "driller"), "run", "-n", "2", "--mpi4py", worker, mode, str(iters)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return _result(out, mode)


def _result(out, mode: str) -> float:
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return float(line.split()[1])
    raise RuntimeError(f"{mode}: no result\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--modes", default="bare,closures,recvapi,sendapi,osu")
    ap.add_argument("--base-src", help="also run driller from this source tree (before/after)")
    ap.add_argument("--no-mpi4py", action="store_true", help="no Open MPI row")
    a = ap.parse_args()
    modes = a.modes.split(",")
    trees = [("this", None)] + ([("base", a.base_src)] if a.base_src else [])
    res = {(tr, m): [] for tr, _ in trees for m in modes}
    if not a.no_mpi4py:   # Open MPI's one-way, the same loop, in the same rounds
        res["mpi4py", "osu"] = []
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(WORKER)
        worker = f.name
    try:
        for r in range(a.rounds):
            order = trees if r % 2 == 0 else trees[::-1]
            for m in modes:
                for tr, src in order:
                    res[tr, m].append(run(src, m, a.iters, worker))
            if not a.no_mpi4py:
                res["mpi4py", "osu"].append(run("mpi4py", "osu", a.iters, worker))
    finally:
        os.unlink(worker)
    print(f"# pinned 8 B ping-pong, p50 one-way µs, median of {a.rounds} rounds "
          f"[min..max]; load {os.getloadavg()[0]:.1f}")
    for m in modes:
        line = f"{m:9s}"
        for tr, _ in trees:
            v = res[tr, m]
            line += f"  {tr} {statistics.median(v):.3f} [{min(v):.3f}..{max(v):.3f}]"
        if os.environ.get("LAT_PATH_ALL"):
            line += "  all: " + " ".join(f"{x:.2f}" for tr, _ in trees for x in res[tr, m])
        print(line)
    if not a.no_mpi4py:
        v = res["mpi4py", "osu"]
        print(f"{'Open MPI':9s}  osu {statistics.median(v):.3f} [{min(v):.3f}..{max(v):.3f}]"
              f"  (mpi4py's own loop, the same rounds)")


if __name__ == "__main__":
    main()
