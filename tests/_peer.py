"""Functions run in other processes by the tests (importable under spawn)."""

import os
import pickle
import sys

import numpy as np


def fill(arr, value):
    arr[...] = value
    return float(np.asarray(arr).sum())


def total(arr):
    return float(np.asarray(arr).sum())


def attach_and_fill(handle, value):
    import driller
    a = driller.attach(handle)
    a[...] = value
    return float(a.sum())


def attach_and_sum(handle):
    import driller
    return float(driller.attach(handle).sum())


def try_attach(handle):
    import driller
    try:
        driller.attach(handle)
    except driller.SegmentReleasedError as e:
        return ("released", str(e))
    except driller.DrillerError as e:
        return (type(e).__name__, str(e))
    return ("attached", "")


def owner_main(q, go):
    import driller
    a = driller.zeros(1 << 18)
    a[:] = 42
    q.put(driller.handle(a))
    go.wait(60)


def try_attach_writable(handle):
    import driller
    try:
        driller.attach(handle, readonly=False)
    except driller.DrillerError as e:
        return (type(e).__name__, str(e))
    return ("attached", "")


def stdin_peer():
    """Read a pickled array from stdin, add 1 to it in place, print its new sum."""
    arr = pickle.loads(sys.stdin.buffer.read())
    arr += 1
    print(float(arr.sum()), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    globals()[sys.argv[1]]()
