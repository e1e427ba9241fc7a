"""Process-wide bookkeeping of the segments this process owns and shares.

* ``publish(seg)`` hands a segment's memfd to the fd proxy once, then closes
  our fd (the proxy and the mapping keep the memory alive).
* ``release(seg)`` tells the proxy to drop it.  It is safe to call from a
  garbage-collection finalizer: it only queues the key and wakes a small
  daemon thread, so no lock is ever taken inside a finalizer.
* ``owned(key)`` finds a segment of this process by key, so that unpickling a
  handle in its own owner is a plain view, no proxy round trip.
* ``lease(seg, gen)`` asks the proxy for a transfer lease (rules in
  :mod:`driller.sharedarray`); ``drop_leases(...)`` lets go of leases, from a
  finalizer too (queued like releases, sent by the same daemon thread).
"""

from __future__ import annotations

import collections
import os
import threading
import weakref

from .errors import ProxyError
from .segment import Handle, Segment

__all__ = ["publish", "release", "owned", "flush", "handle_for", "lease", "drop_leases",
           "ensure_releaser", "dropping"]

_lock = threading.Lock()
_owned: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_pending: collections.deque = collections.deque()
_unheld: collections.deque = collections.deque()   # (proxy address, lease ids)
_waker = {"pid": None, "w": -1, "thread": None}


def register(key: str, owner: object) -> None:
    """Remember ``owner`` (an object with a ``segment`` attribute) under key."""
    _owned[key] = owner


def owned(key: str):
    """The live owner object of key in this process, or None."""
    return _owned.get(key)


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
        _ensure_releaser()
        if seg.published:
            seg.seal(readonly)
            return client.address, client.secret
        if seg.fd < 0:
            raise ProxyError(f"segment {seg.key} has no fd left to publish")
        ro = seg.seal(readonly)  # before the fd leaves this process
        client.publish(seg.key, seg.fd, {"nbytes": seg.nbytes, "owner": seg.owner,
                                         "readonly": ro})
        seg.published = True
        seg.close_fd()  # the proxy holds it now; our mapping holds the memory
        return client.address, client.secret


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
    return address, _client().lease(address, secret, seg.key, gen)


def drop_leases(pid: int, address: str, leases) -> None:
    """Let go of leases held by process pid through the proxy at address (asynchronously).

    Safe in a finalizer: it only queues and wakes the releaser thread.  Does
    nothing in another process (a fork child does not hold its parent's leases).
    """
    if pid != os.getpid() or not leases:
        return
    _unheld.append((address, tuple(leases)))
    _wake()


def dropping(address: str, lease: int) -> bool:
    """Whether a drop of lease at the proxy at address is queued, not yet sent."""
    return any(a == address and lease in ids for a, ids in list(_unheld))


def ensure_releaser() -> None:
    """Start the thread that sends queued releases and lease drops (once per process)."""
    if _waker["pid"] == os.getpid():
        return  # running (no lock: the thread may hold it while waiting for the proxy)
    with _lock:
        _ensure_releaser()


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
    # Never start a thread here (this may run inside a finalizer): the releaser
    # is started by publish(), which always precedes a queued release.
    if _waker["pid"] != os.getpid():
        return
    try:
        os.write(_waker["w"], b"x")
    except (BlockingIOError, OSError):
        pass  # pipe full: the thread is awake anyway


def _ensure_releaser() -> None:
    pid = os.getpid()
    if _waker["pid"] == pid:
        return
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(r, True)
    _waker.update(pid=pid, w=w)
    t = threading.Thread(target=_releaser, args=(r,), name="driller-releaser", daemon=True)
    _waker["thread"] = t
    t.start()


def _releaser(r: int) -> None:
    while True:
        try:
            os.read(r, 4096)
        except OSError:
            return
        flush()


def flush() -> None:
    """Send queued releases to the proxy now; returns once the proxy has them all.

    The lock is taken even when nothing is queued: the releaser thread may be
    sending one right now, and the caller wants it done when we return.
    """
    with _lock:
        client = None
        while _pending:
            key = _pending.popleft()
            try:
                client = client or _client()
                client.release(key)
            except Exception:  # proxy gone: nothing left to tell
                pass
        while _unheld:
            address, ids = _unheld.popleft()
            try:
                client = client or _client()
                client.unhold(address, ids)
            except Exception:  # noqa: BLE001 - proxy gone: it let go of everything
                pass


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _pending.clear()
    _unheld.clear()
    _waker.update(pid=None, w=-1, thread=None)


os.register_at_fork(after_in_child=_after_fork_in_child)
