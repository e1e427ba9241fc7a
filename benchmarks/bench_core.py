"""Core benchmark (issue: shareable memory): pickling, attach, drill, small allocations,
leases and returning arrays from a ProcessPoolExecutor worker.

    .venv/bin/python benchmarks/bench_core.py [--rounds 15]

Every figure is a median over rounds with its min-max; methods that are
compared are measured in the same round, interleaved, and their ratio is
taken per round.  Machines here are noisy (2 vCPUs): read spreads, not digits.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import multiprocessing
import pickle
import statistics
import time

import numpy as np

import driller
from driller import _linux, mapcache

MiB = 1 << 20


def _t(fn, repeat=1):
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def _fmt(xs, unit=1e-6, suffix="µs"):
    xs = sorted(xs)
    return (f"{statistics.median(xs) / unit:10.2f} {suffix}  "
            f"[{xs[0] / unit:.2f} – {xs[-1] / unit:.2f}]")


def bench_pickle(rounds):
    plain = np.random.default_rng(0).random(8 * MiB)  # 64 MiB
    shared = driller.array(plain)
    rows = {"numpy pickle dumps+loads": [], "driller dumps+loads": [], "ratio": []}
    for _ in range(rounds):
        a = _t(lambda: pickle.loads(pickle.dumps(plain, protocol=5)))
        b = _t(lambda: pickle.loads(pickle.dumps(shared, protocol=5)), 20)
        rows["numpy pickle dumps+loads"].append(a)
        rows["driller dumps+loads"].append(b)
        rows["ratio"].append(a / b)
    size = len(pickle.dumps(shared, protocol=5))
    return rows, f"pickle of a 64 MiB array: driller's is {size} bytes"


def bench_attach(rounds):
    ctx = multiprocessing.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    segs = []
    owner = ctx.Process(target=_attach_owner, args=(q, go, rounds))
    owner.start()
    try:
        handles = q.get(timeout=120)
        cold, cached = [], []
        for h in handles:
            cold.append(_t(lambda: segs.append(driller.attach(h))))
            cached.append(_t(lambda: driller.attach(h), 200))
    finally:
        go.set()
        owner.join(60)
    cache = mapcache.cache()
    return {"attach 64 MiB, cold (proxy fetch + mmap)": cold,
            "attach 64 MiB, cached": cached}, f"cache: {cache.info()}"


def _attach_owner(q, go, n):
    arrs = [driller.zeros(8 * MiB) for _ in range(n)]
    q.put([driller.handle(a) for a in arrs])
    go.wait(600)


def bench_drill(rounds):
    rows = {"drill, per MiB (64 MiB array)": [],
            "copy into new shared memory, per MiB (driller.array(x))": [],
            "copy into new memory, per MiB (x.copy())": [],
            "memcpy into warm memory, per MiB (np.copyto)": [],
            "ratio drill / driller.array(x)": [], "ratio drill / x.copy()": [],
            "ratio drill / warm memcpy": []}
    n = 64 * MiB
    for _ in range(rounds):
        src = np.ones(n // 8)
        dst = np.empty_like(src)
        dst[:] = 0  # fault it in: a memcpy into warm memory
        c = _t(lambda: np.copyto(dst, src)) / 64
        f = _t(lambda: src.copy()) / 64
        g = _t(lambda: driller.array(src)) / 64
        box = []
        d = _t(lambda: box.append(driller.drill(src))) / 64
        box[0].close()
        rows["drill, per MiB (64 MiB array)"].append(d)
        rows["copy into new memory, per MiB (x.copy())"].append(f)
        rows["copy into new shared memory, per MiB (driller.array(x))"].append(g)
        rows["ratio drill / driller.array(x)"].append(d / g)
        rows["memcpy into warm memory, per MiB (np.copyto)"].append(c)
        rows["ratio drill / x.copy()"].append(d / f)
        rows["ratio drill / warm memcpy"].append(d / c)
    return rows, f"page size {_linux.PAGE_SIZE}"


def bench_alloc(rounds):
    rows = {"np.empty(100)": [], "driller.empty(100)": [], "ratio": []}
    for _ in range(rounds):
        a = _t(lambda: np.empty(100), 2000)
        keep = []
        b = _t(lambda: keep.append(driller.empty(100)), 2000)
        del keep
        rows["np.empty(100)"].append(a)
        rows["driller.empty(100)"].append(b)
        rows["ratio"].append(b / a)
    return rows, ""


def bench_lease(rounds):
    rows = {"first handle of a new array (lease round trip)": [],
            "handle again (cached lease)": []}
    for _ in range(rounds):
        keep = [driller.zeros(100) for _ in range(200)]
        rows["first handle of a new array (lease round trip)"].append(
            _t(lambda: [driller.handle(a) for a in keep]) / len(keep))
        rows["handle again (cached lease)"].append(
            _t(lambda: [driller.handle(a) for a in keep]) / len(keep))
        del keep
    return rows, "driller.handle() of small arrays, per array"


# the worker builds the array in an untimed task, then the timed task returns it
_ready: list = []


def _prepare(kind: str) -> None:
    a = (driller.empty if kind == "shared" else np.empty)(8 * MiB)  # 64 MiB
    a[:] = 1.0
    _ready.append(a)


def _give():
    return _ready.pop()  # the worker drops it as soon as it is pickled


def bench_return(rounds):
    rows = {"PPE worker returns a 64 MiB numpy array": [],
            "PPE worker returns a 64 MiB driller array": [], "ratio": []}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        for kind in ("plain", "shared"):  # warm up both paths (imports, proxy, arenas)
            ex.submit(_prepare, kind).result()
            ex.submit(_give).result()
        for _ in range(rounds):
            t = {}
            for kind in ("plain", "shared"):
                ex.submit(_prepare, kind).result()
                gc.collect()
                box = []
                t[kind] = _t(lambda: box.append(ex.submit(_give).result()))
                assert box[0][-1] == 1.0 and box[0].nbytes == 64 * MiB
                del box  # freeing 64 MiB, untimed for both: the proxy frees a driller
                gc.collect()  # segment when its lease ends, so wait for that here
                driller._publish.flush()
            rows["PPE worker returns a 64 MiB numpy array"].append(t["plain"])
            rows["PPE worker returns a 64 MiB driller array"].append(t["shared"])
            rows["ratio"].append(t["plain"] / t["shared"])
    return rows, "spawn context, 1 worker; submit().result() of a prepared array"


def bench_free(rounds):
    """The fd proxy frees a released 64 MiB memfd (its last reference): the release's
    round trip, then the next request's (a ping), which waited behind the free
    while the proxy closed fds in its loop."""
    import mmap
    import os

    from driller.proxy import ProxyClient
    c = ProxyClient.get()
    rows = {"release of a 64 MiB segment (round trip)": [],
            "the next request (ping)": [], "both": []}
    n = 64 * MiB
    for i in range(rounds):
        fd = _linux.memfd_create("bench-free")
        os.ftruncate(fd, n)
        with mmap.mmap(fd, n) as m:
            m.write(b"\1" * n)       # pages touched: the last close frees 64 MiB
        key = f"{os.getpid()}-bench-free-{i}"
        c.publish(key, fd, {"nbytes": n})
        os.close(fd)                  # the proxy holds the last reference
        t0 = time.perf_counter()
        c.release(key)
        t1 = time.perf_counter()
        c.ping()
        t2 = time.perf_counter()
        rows["release of a 64 MiB segment (round trip)"].append(t1 - t0)
        rows["the next request (ping)"].append(t2 - t1)
        rows["both"].append(t2 - t0)
    return rows, "publish, drop our fd, release: the proxy's close frees the pages"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", default="", help="comma-separated: pickle,attach,drill,alloc,"
                    "lease,return,free")
    args = ap.parse_args()
    fns = (bench_pickle, bench_attach, bench_drill, bench_alloc, bench_lease, bench_return,
           bench_free)
    only = {x for x in args.only.split(",") if x}
    for fn in fns:
        if only and fn.__name__[6:] not in only:
            continue
        rows, note = fn(args.rounds)
        print(f"\n## {fn.__name__[6:]}  {note}")
        for name, xs in rows.items():
            if name.startswith("ratio"):
                xs = sorted(xs)
                print(f"  {name:<44} {statistics.median(xs):10.2f} ×  [{xs[0]:.2f} – {xs[-1]:.2f}]")
            else:
                print(f"  {name:<44} {_fmt(xs)}")


if __name__ == "__main__":
    main()
