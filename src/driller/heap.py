"""The shared heap: memory for arrays that are shareable from birth.

This module only allocates.  Small requests are carved out of shared arenas
(memfd segments) by a first-fit allocator (:mod:`driller._alloc`, the part
dlmalloc played in the C library); large ones get a segment of their own.
Either way the caller gets a :class:`Block`: ``np.asarray(block)`` is a uint8
view whose base is the block, and when the last view dies the block goes back
to its arena (or its segment is released).

Every block carries a *generation*: a per-process allocation serial, carried
in its handles, so that a handle of a freed block can never name the block
that later occupies the same bytes.  A block that was ever *exported* (a handle
or pickle was made of it, or it was alive at a ``fork()``) is never handed out
again: its bytes stay as they were until the arena is retired (released as
soon as all its blocks are dead, never kept as the spare).

Wrapping blocks into numpy arrays, pickling and attaching live in
:mod:`driller.sharedarray`.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import threading
import weakref

from . import _linux, _publish
from ._alloc import FreeList
from .proxy._wire import as_said
from .segment import Segment

__all__ = ["Block", "allocate", "heap_info", "ARENA_BYTES", "LARGE_BYTES"]

ARENA_BYTES = 4 << 20        # one arena segment
LARGE_BYTES = 256 << 10      # at least this: a segment of its own


class _Arena:
    __slots__ = ("segment", "free", "live", "exported", "__weakref__")

    def __init__(self, nbytes: int):
        self.segment = Segment(nbytes, "arena", exclusive=False)  # never read-only
        self.free = FreeList(self.segment.nbytes)
        self.live: dict[int, weakref.ref] = {}  # generation -> its Block
        self.exported = False    # some block was exported: retire, never keep as spare
        _publish.register(self.segment.key, self)

    def proxy_lost(self) -> None:
        """Our proxy died holding the arena's only fd (_publish._lost): its blocks
        can no longer be shared, so new arrays go to another arena."""
        with _lock:
            self.exported = True   # (released when its last block dies, if ever)
            if self in _arenas:
                _arenas.remove(self)
                _stats["arena_bytes"] -= self.segment.nbytes

    def block_for(self, gen: int) -> "Block | None":
        """The live block of generation gen in this arena (None in a fork child)."""
        if self.segment.owner != os.getpid():
            return None  # a child of the owner goes through the proxy like everyone else
        ref = self.live.get(gen)
        return None if ref is None else ref()


def said(lease: tuple) -> "int | tuple":
    """What a block's pickling process says of its lease's handles as it lets go:
    how many it made, and the runs of the numbers it loaded itself, if any (see
    ``proxy._server._Lease.said``).  Takes the next number (none is made after)."""
    made = next(lease[3]) - 1
    return (made, as_said(lease[4])) if lease[4] else made


class Block:
    """The memory under one shared array (and all its views).

    ``np.asarray(block)`` is a uint8 view whose base is the block; when the last
    view dies the block returns to its arena (or its segment is released).
    """

    __slots__ = ("segment", "offset", "nbytes", "arena", "pid", "gen", "exported", "lease",
                 "__weakref__")

    def __init__(self, segment: Segment, offset: int, nbytes: int, arena: _Arena | None,
                 gen: int):
        self.segment, self.offset, self.nbytes, self.arena = segment, offset, nbytes, arena
        self.pid = _pid[0]
        self.gen = gen
        self.exported = False    # set by the first handle: the block is never reused
        # (pid, proxy address, lease id, the numbers of its handles, the runs of
        # those this process loaded itself): sharedarray
        self.lease: tuple | None = None

    @property
    def __array_interface__(self) -> dict:
        return {"shape": (self.nbytes,), "typestr": "|u1", "version": 3,
                "data": (self.segment.address + self.offset, False)}

    def block_for(self, gen: int) -> "Block | None":
        """self if gen is ours and we own it (a large block: one segment, one block)."""
        return self if gen == self.gen and self.pid == os.getpid() else None

    def __del__(self):
        # Must not take locks (it can run inside any allocation, with a lock held
        # by this very thread): queue the block; the allocator drains the queue.
        lease = self.lease
        if lease is not None:   # (with the number of handles made, and those we loaded
            # ourselves: the proxy keeps the lease until each of them was loaded, or
            # for DRILLER_LEASE_SECONDS)
            _publish.drop_leases(lease[0], lease[1], ((lease[2], said(lease)),))
        if self.pid != _pid[0]:
            return  # inherited through fork: the parent's memory
        if self.arena is not None:
            _freed.append((self.arena, self.offset, self.gen,
                           self.exported or self.gen <= _fork_mark[0]))
        else:
            _publish.release(self.segment)


_pid = [os.getpid()]
_serial = itertools.count(1)
_last_gen = [0]          # the newest generation handed out
_fork_mark = [0]         # blocks up to this generation were alive at a fork: exported
_freed: collections.deque = collections.deque()
_lock = threading.Lock()
_arenas: list[_Arena] = []
_stats = {"arrays": 0, "large": 0, "arena_bytes": 0}


def _drain_freed() -> None:
    while _freed:
        arena, offset, gen, exported = _freed.popleft()
        arena.live.pop(gen, None)
        if exported:
            arena.exported = True  # its bytes stay as they are: never reused
        else:
            arena.free.free(offset)
        if arena.live or arena not in _arenas:
            continue
        if arena.exported or sum(not a.live and not a.exported for a in _arenas) > 1:
            _arenas.remove(arena)  # keep one spare empty arena, retire the others
            _stats["arena_bytes"] -= arena.segment.nbytes
            _publish.release(arena.segment)


def allocate(nbytes: int, data: tuple[int, int] | None = None) -> Block:
    """A block of at least ``nbytes`` bytes (``data``: initial bytes (address, length)
    written into a new large segment)."""
    if nbytes >= LARGE_BYTES:
        if nbytes > _linux.memory_and_swap():
            raise MemoryError(f"cannot allocate {nbytes} bytes of shared memory: more than "
                              "this machine's memory and swap")
        try:
            seg = Segment(nbytes, "array", data=data)
        except OSError as e:
            if e.errno not in (errno.ENOMEM, errno.ENOSPC, errno.EFBIG):
                raise
            raise MemoryError(f"cannot allocate {nbytes} bytes of shared memory "
                              f"({e.strerror}): not enough memory or address space") from None
        block = Block(seg, 0, nbytes, None, next(_serial))
        _publish.register(seg.key, block)
        _stats["large"] += 1
        return block
    with _lock:
        if _freed:
            _drain_freed()
        for arena in reversed(_arenas):
            off = arena.free.alloc(nbytes)
            if off is not None:
                break
        else:
            arena = _Arena(ARENA_BYTES)
            _arenas.append(arena)
            _stats["arena_bytes"] += arena.segment.nbytes
            off = arena.free.alloc(nbytes)
        _stats["arrays"] += 1
        gen = _last_gen[0] = next(_serial)
        block = Block(arena.segment, off, nbytes, arena, gen)
        arena.live[gen] = weakref.ref(block)
    return block


def _before_fork() -> None:
    # a forked child may keep using every block alive now: none of them is reused
    _fork_mark[0] = _last_gen[0]


def _after_fork_in_child() -> None:
    # The parent's arenas stay mapped (inherited arrays keep working, shared),
    # but the child never allocates from them nor frees into them.
    global _lock
    _lock = threading.Lock()
    _pid[0] = os.getpid()
    _arenas.clear()
    _freed.clear()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def heap_info() -> dict:
    """The allocator's state in this process: arenas and their bytes (mapped, in use),
    live small arrays, and how many small and large arrays were allocated."""
    with _lock:
        _drain_freed()
        return {"arenas": len(_arenas), "arena_bytes": _stats["arena_bytes"],
                "arena_used_bytes": sum(a.free.used_bytes for a in _arenas),
                "live_small_arrays": sum(len(a.live) for a in _arenas),
                "small_arrays_allocated": _stats["arrays"],
                "large_arrays_allocated": _stats["large"]}
