"""driller leaves no thread running for a later fork() to copy.

Python 3.12+ warns ("This process ... is multi-threaded, use of fork() may lead
to deadlocks in the child") at every os.fork() of a process with another thread.
Releases of segments dropped by the garbage collector are sent by a thread that
runs only while it has some to send: they still reach the proxy with nobody
calling flush(), and a fork once they are sent sees no thread of driller's.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import time
import warnings

import driller
from driller import _publish

_TRY_ATTACH = """
import pickle, sys, driller
h = pickle.loads(sys.stdin.buffer.read())
try:
    driller.attach(h)
    print("attached")
except driller.SegmentReleasedError:
    print("released")
"""


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _sender_idle(limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while _publish._sending.locked() or _publish._pending or _publish._unheld:
        assert time.monotonic() < deadline, "the release sender never finished"
        time.sleep(0.01)


def _peer_sees(h) -> str:
    return subprocess.run([sys.executable, "-c", _TRY_ATTACH], input=pickle.dumps(h),
                          capture_output=True, timeout=60, check=True).stdout.decode().strip()


def test_dropped_segment_is_released_without_flush_and_no_thread_stays():
    _sender_idle()
    before = _threads()
    a = driller.zeros(1 << 20)
    h = driller.handle(a)
    assert _peer_sees(h) == "attached"
    del a
    gc.collect()
    deadline = time.monotonic() + 30
    while (seen := _peer_sees(h)) != "released":     # nobody calls flush()
        assert time.monotonic() < deadline, f"the release never reached the proxy: {seen}"
        time.sleep(0.05)
    _sender_idle()
    deadline = time.monotonic() + 10     # the sender's OS thread is gone a moment later
    while _threads() > before:
        assert time.monotonic() < deadline, f"{_threads()} threads stay, {before} before"
        time.sleep(0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not [w for w in caught if "multi-threaded" in str(w.message)], \
        [str(w.message) for w in caught]


def test_many_releases_from_finalizers_all_arrive():
    _sender_idle()
    hs = []
    for _ in range(30):
        a = driller.zeros(1 << 18)
        hs.append(driller.handle(a))
        del a                                  # each drop may start or join a sender
    gc.collect()
    _sender_idle()
    # every release reached the proxy: each key is gone there or marked released by
    # its owner (never-loaded handles keep a transfer lease, README "Lifetimes")
    from driller.proxy import ProxyClient
    segs = {s["key"]: s for s in ProxyClient.get().segments()}
    for h in hs:
        assert h.key not in segs or segs[h.key]["released"], segs[h.key]
    assert not _publish._pending and not _publish._unheld
