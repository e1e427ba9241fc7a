"""What moving a mid-size message costs between two processes, protocol by protocol,
with nothing of mmpi around it (docs/mmpi.md, "Hot paths, fifteenth round (mid-size)").

    .venv/bin/python benchmarks/mid_copy.py [--sizes 64K,128K,256K,512K,1M]
        [--modes ring,fixed,write,read,split,pipe32] [--iters 2000] [--rounds 3]
        [--ring 4M]

Two processes (a fork), each pinned to its own CPU, ping-pong a message of each size;
every wait is a pure spin on a shared word (no yield, no sleep), so the figure is the
protocol's copies and handshakes, not the scheduler's, and stays steady on a loaded
machine (the competing load must be niced; a nice-0 load shares the cores).  Modes:

* ``ring``: two memcpys through a shared region at offsets that move on by each message
  (the eager path: the sender copies into the ring, the receiver out of it);
* ``fixed``: the same at one offset (the same cache lines every message);
* ``pipeN``: ``ring`` in chunks of N KiB, a progress word after each chunk, the receiver
  copying each chunk as soon as it is in (a pipelined two-copy stream);
* ``write``: one ``process_vm_writev`` by the sender into the receiver's buffer (the
  direct write, unsplit);
* ``read``: one ``process_vm_readv`` by the receiver from the sender's buffer, then an
  ack the sender waits for before it goes on (Open MPI's CMA protocol: strace shows one
  readv per message at 64 KiB as at 1 MiB);
* ``split``: the sender writes the second half while the receiver reads the first,
  each then says so and waits for the other (the split direct write).

Prints per size and mode the median one-way µs (round trip / 2, median over the
iterations of a round, then over rounds) [min..max over rounds], and each mode's
median within-round ratio to ``ring``.  Rounds alternate the modes' order.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from driller import _linux  # noqa: E402


def _size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "KM" else s) * mult


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64K,128K,256K,512K,1M")
    ap.add_argument("--modes", default="ring,fixed,write,read,split,pipe32")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ring", default="4M", help="bytes of each direction's ring (mode ring)")
    a = ap.parse_args()
    sizes = [_size(x) for x in a.sizes.split(",")]
    modes = a.modes.split(",")
    ringb = _size(a.ring)
    if max(sizes) + 64 > ringb:
        ap.error(f"--ring {ringb} is smaller than the largest size")
    for m in modes:
        if m not in ("ring", "fixed", "write", "read", "split") and not (
                m.startswith("pipe") and m[4:].isdigit() and int(m[4:]) > 0):
            ap.error(f"unknown mode {m!r}: ring, fixed, pipeN (N KiB chunks), write, read, split")

    shm = mmap.mmap(-1, 2 * ringb + 4096)
    rings = [np.frombuffer(shm, np.uint8, ringb, 0), np.frombuffer(shm, np.uint8, ringb, ringb)]
    w = np.frombuffer(shm, np.int64, 32, 2 * ringb)
    # words, 16 per side: [0] message number sent, [1] ack, [2] chunk progress,
    # [3] pid, [4] receive buffer address, [5] send buffer address, [6] half done
    child = os.fork()
    me = 1 if child == 0 else 0
    peer = 1 - me
    mine, theirs = 16 * me, 16 * peer
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[me]})
    maxn = max(sizes)
    s = np.ones(maxn, np.uint8)
    r = np.zeros(maxn, np.uint8)
    w[mine + 4] = r.ctypes.data
    w[mine + 5] = s.ctypes.data
    w[mine + 3] = os.getpid()
    while not w[theirs + 3]:
        pass
    ppid = int(w[theirs + 3])
    peer_r, peer_s = int(w[theirs + 4]), int(w[theirs + 5])
    saddr, raddr = s.ctypes.data, r.ctypes.data
    out_ring, in_ring = rings[me], rings[peer]
    offs = [0, 0]   # next offset out, in

    def moved(n):   # the rotating offset of the next message (as a ring's head)
        o = offs[0]
        if o + n > ringb:
            o = 0
        offs[0] = o + ((n + 127) & ~63)
        return o

    def moved_in(n):
        o = offs[1]
        if o + n > ringb:
            o = 0
        offs[1] = o + ((n + 127) & ~63)
        return o

    def send(mode, n, k):
        if mode == "ring":
            o = moved(n)
            out_ring[o:o + n] = s[:n]
        elif mode == "fixed":
            out_ring[:n] = s[:n]
        elif mode == "write":
            _linux.process_vm_writev(ppid, saddr, peer_r, n)
        elif mode == "split":
            w[mine] = k   # (the record: the receiver starts its half now)
            mid = (n >> 1) & ~4095
            _linux.process_vm_writev(ppid, saddr + mid, peer_r + mid, n - mid)
            w[mine + 6] = k
            while w[theirs + 1] != k:
                pass
            return
        elif mode[:4] == "pipe":
            c = int(mode[4:]) << 10
            o = moved(n)
            w[mine] = k
            for i in range(0, n, c):
                j = min(n, i + c)
                out_ring[o + i:o + j] = s[i:j]
                w[mine + 2] = j
            return
        w[mine] = k
        if mode == "read":
            while w[theirs + 1] != k:
                pass

    def recv(mode, n, k):
        while w[theirs] != k:
            pass
        if mode == "ring":
            o = moved_in(n)
            r[:n] = in_ring[o:o + n]
        elif mode == "fixed":
            r[:n] = in_ring[:n]
        elif mode == "read":
            _linux.process_vm_readv(ppid, raddr, peer_s, n)
            w[mine + 1] = k
        elif mode == "split":
            mid = (n >> 1) & ~4095
            _linux.process_vm_readv(ppid, raddr, peer_s, mid)
            while w[theirs + 6] != k:
                pass
            w[mine + 1] = k
        elif mode[:4] == "pipe":
            c = int(mode[4:]) << 10
            o = moved_in(n)
            for i in range(0, n, c):
                j = min(n, i + c)
                while w[theirs + 2] < j:
                    pass
                r[i:j] = in_ring[o + i:o + j]
            w[theirs + 2] = 0   # (the sender's next message starts after our reply)

    res: dict = {}
    k = 0
    for rnd in range(a.rounds):
        order = modes if rnd % 2 == 0 else modes[::-1]
        for n in sizes:
            for mode in order:
                ts = []
                for i in range(a.iters + 100):
                    k += 2
                    t0 = time.perf_counter()
                    if me == 0:
                        send(mode, n, k - 1)
                        recv(mode, n, k)
                    else:
                        recv(mode, n, k - 1)
                        send(mode, n, k)
                    ts.append(time.perf_counter() - t0)
                res.setdefault((mode, n), []).append(statistics.median(ts[100:]) / 2 * 1e6)
    if me == 1:
        os._exit(0)
    os.waitpid(child, 0)
    print(f"# mid_copy: one-way us, median over {a.rounds} rounds [min..max]; ring {ringb} B; "
          f"load {os.getloadavg()[0]:.1f}")
    for n in sizes:
        cells = []
        for m in modes:
            v = res[(m, n)]
            ratio = statistics.median(x / y for x, y in zip(v, res[("ring", n)])) \
                if "ring" in modes else float("nan")
            cells.append(f"{m} {statistics.median(v):.2f} [{min(v):.2f}..{max(v):.2f}] "
                         f"x{ratio:.2f}")
        print(f"{n:>8}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
