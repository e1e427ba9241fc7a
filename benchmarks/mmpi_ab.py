"""Before/after CPU of the blocking small paths, both trees in one process.

The ``--base-src`` tree's ``driller`` package is copied to a temporary folder as
``driller_base`` (its absolute ``driller`` imports renamed; the package imports
itself relatively otherwise), so that the base and this tree run side by side:
``mmpi_cpu.py``'s rows (its source run against each tree: two ranks'
transports over a world block in this process) plus each side of osu_latency's
pair alone (its ``Send`` with the receiving taker closure, the sending closure
with its ``Recv``) and osu_multi_lat's pair (its partner a float rank).  Rows alternate between the trees, round by round (the order
flipped every round); each measurement is the least of 5 repeats of process CPU
time; printed per row are the medians over rounds and the median [min..max] of
the within-round ratios after ÷ before, which cancel most of a shared
machine's drift (docs/mmpi.md, "Hot paths, sixth round").

    .venv/bin/python benchmarks/mmpi_ab.py --base-src OTHER_TREE/src [--rounds 7]
"""

from __future__ import annotations

import argparse
import mmap
import re
import shutil
import statistics
import sys
import tempfile
import time
import timeit
import types
from pathlib import Path

_IMPORTS = re.compile(r"\b(from|import) driller\b")


def _copy_as_base(src: Path, into: Path) -> None:
    dst = into / "driller_base"
    shutil.copytree(src / "driller", dst)
    for f in dst.rglob("*.py"):
        text = f.read_text()
        new = _IMPORTS.sub(r"\1 driller_base", text)
        if new != text:
            f.write_text(new)


def _rows(pkg: str) -> dict:
    """name -> (function, messages per call): mmpi_cpu.py's rows, its source run
    against ``pkg``, then each side of osu_latency's pair alone."""
    src = (Path(__file__).resolve().parent / "mmpi_cpu.py").read_text()
    if pkg != "driller":
        src = _IMPORTS.sub(r"\1 driller_base", src)
    mod = types.ModuleType(f"mmpi_cpu_{pkg}")
    exec(compile(src, f"mmpi_cpu.py ({pkg})", "exec"), mod.__dict__)
    rows = {name: (f, k) for name, f, k in mod.cases()}
    MPI, C = mod.MPI, mod.C
    fd = mod.W.create_world(2)
    t0, t1 = mod.T.Transport(mod.W.World(fd), 0), mod.T.Transport(mod.W.World(fd), 1)
    c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    osa = [mmap.mmap(-1, 1 << 22), 8, MPI.BYTE]
    osb = [mmap.mmap(-1, 1 << 22), 8, MPI.BYTE]
    take, mvb, send = t1.takers[0], memoryview(osb[0])[:8], t0.senders[1]
    rows["osu_latency's Send + a taker closure"] = (
        lambda: (c0.Send(osa, 1, 1), take(1, 0, mvb)), 1)
    rows["osu_latency's Recv + a sender closure"] = (
        lambda: (send(0, 1, b"12345678"), c1.Recv(osb, 0, 1)), 1)
    rows["osu_multi_lat's pair (float ranks)"] = (
        lambda: (c0.Send(osa, 1.0, 1), c1.Recv(osb, 0.0, 1)), 1)
    for n in (64, 1024, 65536):   # eager records (not in the header's line)
        sa, sb = [osa[0], n, MPI.BYTE], [osb[0], n, MPI.BYTE]
        rows[f"osu_latency's pair, {n} B"] = (
            lambda sa=sa, sb=sb: (c0.Send(sa, 1, 1), c1.Recv(sb, 0, 1)), 1)
    return rows


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
                    f, per = trees[v][k]
                    t = timeit.Timer(f, timer=time.process_time)
                    res[k][v].append(min(t.repeat(number=n // per, repeat=5)) / (n // per * per)
                                     * 1e9)
        print(f"# CPU ns per pair (per message for windows), median of {args.rounds} rounds "
              f"(least of 5 repeats of {n})")
        for k, d in res.items():
            rat = [x / y for x, y in zip(d["after"], d["before"])]
            print(f"{k[:60]:60s} before {statistics.median(d['before']):6.0f}  after "
                  f"{statistics.median(d['after']):6.0f}  after/before "
                  f"{statistics.median(rat):.3f} [{min(rat):.3f}..{max(rat):.3f}]")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
