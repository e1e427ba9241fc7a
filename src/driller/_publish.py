"""Process-wide bookkeeping of the segments this process owns and shares.

* ``publish(seg)`` hands a segment's memfd to the fd proxy once, then closes
  our fd (the proxy and the mapping keep the memory alive).
* ``release(seg)`` tells the proxy to drop it.  It is safe to call from a
  garbage-collection finalizer: it only queues the key and, unless one is
  already at work, starts a short-lived thread that sends the queue and ends,
  so no lock is ever waited for inside a finalizer, and no thread of ours
  lingers for a later ``fork()`` to copy (Python 3.12+ warns of any).  A
  ``fork()`` while that thread is at work waits for it to end (an at-fork
  hook: it takes the sender's lock, then waits for the OS thread to be gone),
  so no fork ever copies a process in which driller's own thread runs.
* ``owned(key)`` finds a segment of this process by key, so that unpickling a
  handle in its own owner is a plain view, no proxy round trip.
* ``lease(seg, gen)`` asks the proxy for a transfer lease (rules in
  :mod:`driller.sharedarray`); ``drop_leases(...)`` lets go of leases, from a
  finalizer too (queued like releases, sent by the same short-lived thread).
"""

from __future__ import annotations

import _thread
import atexit
import collections
import os
import sys
import threading
import time
import weakref

from .errors import ProxyError
from .proxy._wire import _show, claim_said
from .segment import Handle, Segment

__all__ = ["publish", "release", "owned", "flush", "handle_for", "lease", "drop_leases",
           "dropping", "while_not_sending", "say_issued", "hook_exit", "at_exit"]

_lock = threading.Lock()
_owned: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_pending: collections.deque = collections.deque()
_unheld: collections.deque = collections.deque()   # (proxy address, lease ids)
# held by the thread sending the queue, from its start until it leaves with the
# queue empty: whoever queues a key and gets it starts that thread
_sending = _thread.allocate_lock()
# native ids of the senders started: a fork waits until their OS threads are gone
_senders: list = []
FORK_WAIT = 5.0     # seconds a fork waits for a sender (one stuck on a dead proxy)
_held_for_fork = False
_fork_hooked = False   # _before_fork is registered (at the first sender's start)


def register(key: str, owner: object) -> None:
    """Remember ``owner`` (an object with a ``segment`` attribute) under key."""
    _owned[key] = owner


def owned(key: str):
    """The live owner object of key in this process, or None.  A key a fork child
    gave its entry for an inherited segment (``<owner's key>.<child pid>``, see
    :func:`publish`) names the owner's segment too."""
    o = _owned.get(key)
    if o is None and "." in key:
        o = _owned.get(key.partition(".")[0])
    return o


def _client():
    from .proxy import ProxyClient
    return ProxyClient.get()


def publish(seg: Segment, readonly: bool = False) -> tuple[str, bytes]:
    """Make seg fetchable through the proxy (once); returns (proxy address, secret).

    The first publication seals the segment (:meth:`Segment.seal`) writable, or
    read-only if asked (or sealed so before, by :func:`seal`), for good; later
    ones check that seal, raising :class:`~driller.ReadOnlyError` when read-only
    is asked of a segment already shared writable (or of an arena).
    """
    with _lock:
        client = _client()
        me = os.getpid()
        if seg.published and seg.publisher in (me, seg.owner):
            if seg.proxy == client.address:
                seg.seal(readonly)
                return client.address, client.secret
            if seg.fd < 0:   # the proxy that had its fd is gone: we have none to give
                _lost(seg, client.address)
            seg.key = seg.key.partition(".")[0]   # (published again, by us)
        if seg.fd < 0:
            raise ProxyError(f"segment {seg.key} has no fd left to publish")
        key = seg.key
        if seg.owner != me:
            # inherited through fork before its owner published it: the owner (or
            # another child) publishes it under the owner's key on the same proxy,
            # at once or later, so this process's entry has a key of its own (the
            # same memory; its lifetime this process's; owned() maps it back).  A
            # fork of such a child does too: its parent's entry ends with its parent.
            key = f"{seg.key.partition('.')[0]}.{me}"
        ro = seg.seal(readonly)  # before the fd leaves this process
        client.publish(key, seg.fd, {"nbytes": seg.nbytes, "owner": seg.owner,
                                     "readonly": ro})
        seg.key = key
        seg.published = True
        seg.publisher = me
        seg.proxy = client.address
        if seg.owner == me:
            seg.close_fd()  # the proxy holds it now; our mapping holds the memory
        # (else kept, as an unpublished inherited fd is: a fork of this process
        # publishes its own entry with it)
        return client.address, client.secret


def _lost(seg: Segment, now: str) -> None:
    """seg was published to a proxy that is gone (killed: this process's proxy is
    another now) and we closed our fd of it: raise, and have its owner object stop
    handing out its memory (an arena is retired: new arrays go to a new one)."""
    proxy_lost = getattr(owned(seg.key), "proxy_lost", None)
    if proxy_lost is not None:
        proxy_lost()
    raise ProxyError(
        f"segment {seg.key} was shared through the fd proxy at {_show(seg.proxy)}, which "
        f"is gone (killed?): this memory cannot be shared again (the proxy held its only "
        "file descriptor; peers that attached it keep their views). Copy the array into "
        "a new shared one (driller.array(a)): arrays made from now on are shared through "
        f"this process's new proxy at {_show(now)} (small arrays made before now come from "
        "memory shared through the old one)")


def seal(seg: Segment, readonly: bool) -> bool:
    """Seal seg now (see :meth:`Segment.seal`), before anything publishes it;
    returns whether its handles are read-only."""
    with _lock:
        return seg.seal(readonly)


def handle_for(seg: Segment, readonly: bool = False, **fields) -> Handle:
    """A handle of seg; read-only if asked, or if seg is sealed read-only."""
    proxy, secret = publish(seg, readonly)
    return Handle(proxy=proxy, secret=secret, key=seg.key, owner=seg.owner,
                  nbytes=seg.nbytes, readonly=bool(seg.sealed_readonly), **fields)


def lease(seg: Segment, gen: int) -> tuple[str, int]:
    """Publish seg if needed and take a transfer lease on (seg, gen); returns
    (proxy address, lease id).  One round trip to the proxy (two for a segment
    not yet published)."""
    address, secret = publish(seg)
    try:
        return address, _client().lease(address, secret, seg.key, gen)
    except ProxyError:
        client = _client()
        if client.address != address and seg.fd < 0:   # (our proxy was just found dead)
            with _lock:
                _lost(seg, client.address)
        raise


def drop_leases(pid: int, address: str, leases) -> None:
    """Let go of leases held by process pid through the proxy at address (asynchronously).

    ``leases``: lease ids, or (id, what the holder says of the lease's handles:
    ``proxy._server._Lease.said``) from the pickling process, or a mapping's
    claims (id -> [generation, runs of the numbers of the handles it loaded]),
    whose numbers go with the drop (the proxy keeps a lease until each handle
    made was loaded).  Safe in a finalizer: it only queues and, if none is at work, starts the
    sender.  Does nothing in another process (a fork child does not hold its
    parent's leases).
    """
    if pid != os.getpid() or not leases:
        return
    if type(leases) is dict:
        leases = [(lid, claim_said(c)) for lid, c in list(leases.items())]
    _unheld.append((address, tuple(leases)))
    _wake()


def say_issued(address: str, counts) -> None:
    """Tell the proxy at address what we say of our leases' handles (``counts``:
    (lease id, what: ``proxy._server._Lease.said``) pairs), without letting go:
    sent now, its reply not waited for (at exit: a proxy that does not answer must
    not hang us); never raises."""
    counts = list(counts)
    try:
        for i in range(0, len(counts), 1000):   # (a request is at most 1 MiB)
            _client().issued(address, counts[i:i + 1000])
    except Exception:  # noqa: BLE001 - proxy gone: it let go of everything
        pass


# run by at_exit before the queued drops go: sharedarray's _say_counts
at_exit_calls: list = []
_exit_hooked = [0]   # the pid that registered at_exit


def hook_exit() -> None:
    """Have :func:`at_exit` run as this process exits (once per process): at
    ``atexit``, and at multiprocessing's exit, whose children leave by
    ``os._exit`` (after its queues' feeder threads are joined: priority -5)."""
    pid = os.getpid()
    if _exit_hooked[0] == pid:
        return
    _exit_hooked[0] = pid
    atexit.register(at_exit)
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, at_exit, exitpriority=-100)


def at_exit() -> None:
    """Say, before this process's connections close, what its proxies must know:
    the counts of its live leased arrays (``at_exit_calls``), then every drop still
    queued (a freed array's count, a mapping's loaded numbers: the sending thread
    rarely runs before an exit), each posted without waiting for the reply (a
    proxy that does not answer must not hang the exit).  Also run by an
    ``mmpi.spawn`` rank before its ``os._exit``."""
    if _exit_hooked[0] != os.getpid():
        return
    for f in at_exit_calls:
        try:
            f()
        except Exception:  # noqa: BLE001 - at exit: nothing to report it to
            pass
    if not _lock.acquire(timeout=1):   # (the sender is at it: it sends them)
        return
    try:
        _send_unheld(None, wait=False)
    finally:
        _lock.release()


def _send_unheld(client, wait: bool = True, deadline: float | None = None) -> None:
    """Send the queued drops (under _lock); never raises."""
    while _unheld:
        address, ids = _unheld.popleft()
        try:
            client = client or _client()
            client.unhold(address, ids, wait=wait, timeout=_left(deadline))
        except Exception:  # noqa: BLE001 - proxy gone: it let go of everything
            pass


def dropping(address: str, lease: int) -> bool:
    """Whether a drop of lease at the proxy at address is queued, not yet sent."""
    return any(a == address and any(i == lease or (type(i) is tuple and i[0] == lease)
                                    for i in ids) for a, ids in list(_unheld))


# called by the sending thread once it has sent what was queued (no lock held, and
# none may be waited for: mapcache's closing of idle connections)
after_send_calls: list = []


def while_not_sending(fn) -> None:
    """Call ``fn(addresses)`` while no queued drop is being sent (flush's lock, not
    waited for: nothing is called if a flush is at work); ``addresses``: the
    proxies that drops queued here are still to reach."""
    if not _lock.acquire(blocking=False):
        return
    try:
        fn({a for a, _ in list(_unheld)})
    finally:
        _lock.release()


def release(seg: Segment) -> None:
    """Forget seg: close its fd and tell the proxy (asynchronously) if it was published."""
    if seg.closed:
        return
    seg.closed = True
    if seg.owner != os.getpid():
        return  # inherited through fork: the parent owns it
    seg.close_fd()
    if seg.published:
        _pending.append(seg.key)
        _wake()


def _wake() -> None:
    # May run inside a finalizer: no lock is waited for here, and the thread is
    # started with _thread (the threading module takes locks of its own).
    global _fork_hooked
    if not _fork_hooked:
        # registered now, after the other modules' hooks, so that it runs before
        # theirs: hole's takes its lock, which a finalizer in the sender may want
        _fork_hooked = True
        os.register_at_fork(before=_before_fork)
    if not _sending.acquire(blocking=False):
        return  # the running sender sees the key before it leaves (see _send)
    try:
        _thread.start_new_thread(_send, ())
    except BaseException:  # interpreter shutting down: the proxy sees us go anyway
        _sending.release()


def _send() -> None:
    """Body of the sending thread: flush until the queue stays empty."""
    # (the ids of senders whose OS thread is gone are dropped here: no fork may come)
    _senders[:] = [t for t in _senders if os.path.exists(f"/proc/self/task/{t}")]
    _senders.append(_thread.get_native_id())
    while True:
        try:
            flush()
            for f in after_send_calls:
                f()
        except BaseException:  # noqa: BLE001 - nothing to report it to
            pass
        _sending.release()
        # a key queued after flush() but before the release found _sending
        # held and left it to us; one queued after the release started a sender
        if not (_pending or _unheld) or not _sending.acquire(blocking=False):
            return


def flush(timeout: float | None = None) -> None:
    """Send queued releases to the proxy now; returns once the proxy has them all
    (``timeout``: or after that long waiting for one answer: a stopped proxy).

    The lock is taken even when nothing is queued: the sending thread may be
    sending one right now, and the caller wants it done when we return.
    """
    if not _lock.acquire(timeout=-1 if timeout is None else timeout):
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        client = None
        while _pending:
            key = _pending.popleft()
            try:
                client = client or _client()
                client.release(key, _left(deadline))
            except Exception:  # proxy gone: nothing left to tell
                pass
        _send_unheld(client, deadline=deadline)
    finally:
        _lock.release()


def _left(deadline: float | None) -> float | None:
    """Seconds left until deadline (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _before_fork() -> None:
    """Let a running sender finish, and keep others from starting, until the fork
    is done: the child must not be a copy of a process with driller's thread in it
    (a lock of the proxy client held, Python 3.12+'s "multi-threaded" warning)."""
    global _held_for_fork
    if not _sending.acquire(timeout=FORK_WAIT):
        return  # a sender stuck (on a proxy that does not answer): fork anyway
    _held_for_fork = True
    # the sender released the lock just before returning: its OS thread ends a
    # moment later (Python's warning counts OS threads)
    deadline = time.monotonic() + FORK_WAIT
    while _senders:
        if not os.path.exists(f"/proc/self/task/{_senders[0]}"):
            del _senders[0]
        elif time.monotonic() > deadline:
            break
        else:
            time.sleep(0.0002)


def _after_fork_in_parent() -> None:
    global _held_for_fork
    if _held_for_fork:
        _held_for_fork = False
        _sending.release()
        if _pending or _unheld:  # queued meanwhile (a finalizer): send them now
            _wake()


def _after_fork_in_child() -> None:
    global _lock, _sending, _held_for_fork
    _lock = threading.Lock()
    _sending = _thread.allocate_lock()  # a sender of the parent's is not here
    _held_for_fork = False
    _senders.clear()
    _pending.clear()
    _unheld.clear()


os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
