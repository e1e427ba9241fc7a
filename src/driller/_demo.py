"""`driller demo`: two processes writing one array, no copies."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import time

import numpy as np


def _work(part, value):
    part[...] = value  # writes the parent's memory: `part` was pickled by reference
    return os.getpid()


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="driller demo",
        description="Two worker processes fill the two halves of one 128 MiB driller array "
                    "in place; the parent checks the sum.  No options.").parse_args(argv)
    import driller
    a = driller.zeros((4096, 4096))  # 128 MiB in shared memory
    print(f"a driller array of {a.nbytes >> 20} MiB pickles to "
          f"{len(pickle.dumps(a, protocol=5))} bytes")
    t = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pids = pool.starmap(_work, [(a[:2048], 1.0), (a[2048:], 2.0)])
    dt = time.perf_counter() - t
    print(f"workers {pids} each filled half of it in place ({dt * 1e3:.0f} ms incl. start-up)")
    print(f"the parent sees sum = {a.sum():.0f} (expected {3 * 2048 * 4096})")
    return 0 if a.sum() == 3 * 2048 * 4096 else 1
