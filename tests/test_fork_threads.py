"""driller leaves no thread running for a later fork() to copy.

Python 3.12+ warns ("This process ... is multi-threaded, use of fork() may lead
to deadlocks in the child") at every os.fork() of a process with another thread.
Releases of segments dropped by the garbage collector are sent by a thread that
runs only while it has some to send: they still reach the proxy with nobody
calling flush(), and a fork once they are sent sees no thread of driller's; a
fork while that thread is at work waits for it to be gone (an at-fork hook).

Python 3.12+'s warning is the check (it counts the OS threads right after the
fork; numpy's OpenBLAS stops its own threads before a fork, in a pthread_atfork
handler, and starts them again when next needed: not counted); on older Pythons
the count taken a little later, in an after-fork hook, is a weaker one.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
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


_at_fork = {"armed": False, "seen": []}


def _count_after_fork() -> None:
    if _at_fork["armed"]:
        _at_fork["seen"].append(_threads())


os.register_at_fork(after_in_parent=_count_after_fork)


def _fork_and_count() -> tuple[int, list[str]]:
    """Fork (the child exits at once); the parent's OS threads right after the fork
    and the "multi-threaded" warnings it gave (Python 3.12+)."""
    _at_fork["seen"].clear()
    _at_fork["armed"] = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                os._exit(0)
    finally:
        _at_fork["armed"] = False
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return _at_fork["seen"][0], [str(w.message) for w in caught
                                 if "multi-threaded" in str(w.message)]


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
    senders = list(_publish._senders)
    assert senders, "no sender thread ran"
    deadline = time.monotonic() + 10     # the sender's OS thread is gone a moment later
    while [t for t in senders if os.path.exists(f"/proc/self/task/{t}")]:
        assert time.monotonic() < deadline, f"sender threads {senders} stay"
        time.sleep(0.01)
    threads, warned = _fork_and_count()
    assert threads == 1 and not warned, (threads, warned)


def test_fork_right_after_drops_waits_for_the_sender():
    # each round drops segments (a sender starts) and forks at once, mostly while
    # the sender is still at work: the fork must wait for it, never copy it
    mid_flight = 0
    for _ in range(30):
        arrays = [driller.zeros(1 << 16) for _ in range(4)]
        for a in arrays:
            driller.handle(a)     # published: dropping it sends a release
        del a, arrays
        gc.collect()
        mid_flight += bool(_publish._sending.locked())
        threads, warned = _fork_and_count()
        assert threads == 1 and not warned, (threads, warned)
    _sender_idle()
    assert mid_flight, "no fork came while the sender was at work: the test proved nothing"


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


_FORK_MID_IMPORT = r"""
import os, sys, threading, time, warnings
warnings.simplefilter("ignore")   # Python 3.12+'s multi-threaded fork warning
import driller
t = threading.Thread(target=lambda: driller.zeros(4))
t.start()
while "driller.sharedarray" not in sys.modules:
    time.sleep(0.0002)
mid = getattr(sys.modules["driller.sharedarray"].__spec__, "_initializing", False)
pid = os.fork()
if pid == 0:
    a = driller.zeros(4)
    a[:] = 1
    os._exit(0 if a.sum() == 4 else 3)
t.join()
_, status = os.waitpid(pid, 0)
print("mid" if mid else "after", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_while_another_thread_makes_the_first_driller_call_gives_a_working_child():
    """A thread's first driller call imports a submodule (driller loads them on first
    use); a fork in that window used to copy the module's import lock held by a thread
    the child does not have, and the child's own first driller call waited for ever
    (a Pool started beside a thread that had just begun).  The fork now waits for the
    import to finish (an at-fork hook).  Five fresh interpreters; at least one forked
    in the middle of the import (else the test proved nothing)."""
    seen = []
    for _ in range(5):
        # a session of its own: a child that hangs is killed with its parent
        with subprocess.Popen([sys.executable, "-c", _FORK_MID_IMPORT], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) as p:
            try:
                out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                raise AssertionError("the forked child's first driller call hung") from None
        assert p.returncode == 0, out + err
        when, code = out.split()
        assert code == "0", out + err
        seen.append(when)
    assert "mid" in seen, seen
