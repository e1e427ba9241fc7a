"""Before/after CPU of the blocking small paths, both trees in one process.

The ``--base-src`` tree's ``driller`` package is copied to a temporary folder as
``driller_base`` (its absolute ``driller`` imports renamed; the package imports
itself relatively otherwise), so that the base and this tree run side by side:
two ranks' transports over a world block of each, the same rows as
``mmpi_cpu.py``'s blocking pairs plus each side of osu_latency's pair alone
(its ``Send`` with the receiving taker closure, the sending closure with its
``Recv``).  Rows alternate between the trees, round by round (the order
flipped every round); each measurement is the least of 5 repeats of process CPU
time; printed per row are the medians over rounds and the median [min..max] of
the within-round ratios after ÷ before, which cancel most of a shared
machine's drift (docs/mmpi.md, "Hot paths, sixth round").

    .venv/bin/python benchmarks/mmpi_ab.py --base-src OTHER_TREE/src [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import mmap
import re
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np


def _copy_as_base(src: Path, into: Path) -> None:
    dst = into / "driller_base"
    shutil.copytree(src / "driller", dst)
    pat = re.compile(r"\b(from|import) driller\b")
    for f in dst.rglob("*.py"):
        text = f.read_text()
        new = pat.sub(r"\1 driller_base", text)
        if new != text:
            f.write_text(new)


def _rows(pkg: str) -> dict:
    MPI = importlib.import_module(pkg + ".MPI")
    C = importlib.import_module(pkg + ".mmpi._comm")
    T = importlib.import_module(pkg + ".mmpi._transport")
    W = importlib.import_module(pkg + ".mmpi._world")
    fd = W.create_world(2)
    t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
    c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    ma, mb = mmap.mmap(-1, 1 << 22), mmap.mmap(-1, 1 << 22)   # osu's allocate()
    osa, osb = [ma, 8, MPI.BYTE], [mb, 8, MPI.BYTE]
    a, b = np.ones(8, np.uint8), np.zeros(8, np.uint8)
    sa, sb = [a, 8, MPI.BYTE], [b, 8, MPI.BYTE]
    ta, tb = [np.ones(1), MPI.DOUBLE], [np.zeros(1), MPI.DOUBLE]
    take, mvb = t1.takers[0], memoryview(mb)[:8]
    send, payload = t0.senders[1], bytes(8)

    def osu():
        c0.Send(osa, 1, 1)
        c1.Recv(osb, 0, 1)

    def osu_send():
        c0.Send(osa, 1, 1)
        take(1, 0, mvb)

    def osu_recv():
        send(0, 1, payload)
        c1.Recv(osb, 0, 1)

    def bare():
        c0.Send(a, 1, 1)
        c1.Recv(b, 0, 1)

    def spec():
        c0.Send(sa, 1, 1)
        c1.Recv(sb, 0, 1)

    def typed():
        c0.Send(ta, 1, 1)
        c1.Recv(tb, 0, 1)

    def obj():
        c0.send(5, 1, 1)
        c1.recv(source=0, tag=1)

    return {"osu_latency's Send+Recv [mmap, 8, BYTE]": osu,
            "  its Send + a taker closure": osu_send,
            "  a sender closure + its Recv": osu_recv,
            "Send+Recv, bare numpy (8 B)": bare,
            "Send+Recv [buf, 8, BYTE]": spec,
            "Send+Recv [buf, DOUBLE]": typed,
            "send+recv (int)": obj}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-src", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=20000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmpi_ab_"))
    try:
        _copy_as_base(args.base_src.resolve(), tmp)
        sys.path.insert(0, str(tmp))
        trees = {"before": _rows("driller_base"), "after": _rows("driller")}
        n = args.number
        res = {k: {v: [] for v in trees} for k in trees["before"]}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for k in res:
                for v in order:
                    t = timeit.Timer(trees[v][k], timer=time.process_time)
                    res[k][v].append(min(t.repeat(number=n, repeat=5)) / n * 1e9)
        print(f"# CPU ns per pair, median of {args.rounds} rounds (least of 5 repeats of {n})")
        for k, d in res.items():
            rat = [x / y for x, y in zip(d["after"], d["before"])]
            print(f"{k:42s} before {statistics.median(d['before']):6.0f}  after "
                  f"{statistics.median(d['after']):6.0f}  after/before "
                  f"{statistics.median(rat):.3f} [{min(rat):.3f}..{max(rat):.3f}]")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
