"""Helpers shared by the tests (not a test module)."""

import os
import pickle
import signal
import time

import numpy as np

from driller import _linux


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def in_child(fn, *args):
    """Run fn(*args) in a forked child; return ("ok", result) or ("err", "Type: msg")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 0
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(55)  # a child that hangs dies anyway: no leaked process
        try:
            os.close(r)
            try:
                res = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001
                res = ("err", f"{type(e).__name__}: {e}")
            os.write(w, pickle.dumps(res))
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks))


def wait_until(cond, limit=15.0):
    """Poll cond() until true or `limit` seconds pass (a way out, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def heap_array():
    """A 96 KiB array that glibc places inside its heap: not page-aligned, its edge
    pages shared with malloc's neighbours."""
    for _ in range(100):
        a = np.empty(12 * 1024)
        m = _linux.query_mapping(a.ctypes.data)
        if not m.shared and m.name == "[heap]" and a.ctypes.data % _linux.PAGE_SIZE:
            return a
    raise AssertionError("glibc did not place a 96 KiB array in its heap")
