"""drill(): make an existing buffer shareable in place — the seed's trick.

The pages under the buffer are copied into a sealed memfd, and the memfd is
mapped over them at the same address (``mmap(MAP_FIXED|MAP_SHARED)``): same
object, same address, same bytes, now shareable with any cooperating process.

Rules (checked where they can be):

* Only ranges whose pages the buffer owns (page-aligned buffers, buffers glibc
  gave a mapping of their own), or heap buffers of at least 64 KiB.  A heap
  buffer shares its first and last pages with neighbours and malloc's
  metadata: those two *edge pages* are shared too.  Peers only map the
  buffer's own bytes; and around a fork the parent's edge pages are made
  private for the duration of the fork, so that the child (whose Python
  at-fork hooks allocate before driller's hook restores its private copy)
  never sees malloc's metadata change under it.  Small heap objects are
  refused: allocate those with ``driller.empty``.
* No other thread may write the buffer while ``drill`` runs (like MPI's
  buffer rule): such a write can be lost.
* The buffer is pinned while drilled (a bytearray cannot be resized, an array
  cannot be freed) and its memfd is sealed against shrinking and growing.
* ``fork()`` keeps its meaning: a child gets a private copy of drilled memory,
  taken in the parent just before the fork, not a share.
* ``drill(obj, readonly=True)`` seals the memfd with ``F_SEAL_FUTURE_WRITE``
  right after our own mapping is in place: peers can only read, whatever fd
  or mapping they get hold of (see :mod:`driller.segment`).  So the owner
  never maps the memfd again: the fork hooks and ``close()`` move pages with
  ``mremap`` (``MREMAP_DONTUNMAP`` keeps an edge page's shared mapping while a
  private copy stands in for it during the fork).
* The first ``drill()`` sets glibc's mmap threshold to 128 KiB
  (``mallopt(M_MMAP_THRESHOLD)``), which also stops glibc from raising it as
  large blocks are freed: large arrays and bytearrays keep getting mappings of
  their own, which drill without sharing edge pages (unless glibc serves one
  from free space inside its heap: the threshold only decides when the heap
  has no room).
"""

from __future__ import annotations

import collections
import os
import threading
import weakref

import numpy as np
import numpy.typing as npt
from typing import Any

NDArray = npt.NDArray[Any]

from . import _linux, _pep3118, _publish
from .errors import DrillError, SegmentReleasedError
from .segment import Handle, Region, Segment

__all__ = ["drill", "Hole", "check"]

MIN_SHARED_EDGE_BYTES = 64 << 10
MMAP_THRESHOLD = 128 << 10  # glibc's default, made fixed by the first drill()

_SEALS = _linux.F_SEAL_SHRINK | _linux.F_SEAL_GROW  # the rest at first publish (Segment.seal)
_mallopt_done = [False]
_lock = threading.RLock()
_holes: "weakref.WeakValueDictionary[int, Hole]" = weakref.WeakValueDictionary()


def _allocation_start(obj: Any, addr: int) -> int:
    """Data pointer of the allocation that owns obj's memory (numpy base chain)."""
    if isinstance(obj, memoryview) and obj.obj is not None:
        obj = obj.obj
    if isinstance(obj, np.ndarray):
        owner = obj
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if owner.base is None and owner.flags.owndata:
            return int(owner.__array_interface__["data"][0])
    return addr


def _glibc_chunk_extent(ptr: int) -> tuple[int, int] | None:
    """The mapping glibc made for the allocation at ptr, if it is an mmapped chunk."""
    if ptr % 16 or ptr < 16:
        return None
    hdr = ptr - 16
    m = _linux.query_mapping(hdr)
    if m is None or not (m.readable and m.writable) or m.shared or not m.anonymous:
        return None
    size = _linux.read_word(ptr - 8)
    if not size & 0x2:  # IS_MMAPPED
        return None
    prev = _linux.read_word(hdr)
    start, end = hdr - prev, hdr + (size & ~0x7)
    if start % _linux.PAGE_SIZE or end % _linux.PAGE_SIZE or not start <= ptr < end:
        return None
    return start, end


def _check_range(obj: Any, addr: int, n: int, lo: int, hi: int) -> list[int]:
    """Refuse what cannot be drilled safely; returns the edge pages shared with the heap."""
    try:
        maps = _linux.mappings_covering(lo, hi)
    except LookupError as e:
        raise DrillError(f"cannot drill {n} bytes at {addr:#x}: {e}") from None
    for m in maps:
        what = m.name or "anonymous memory"
        shm = m.anonymous or m.name.startswith(("/memfd:", "/dev/zero", "/SYSV", "/dev/shm/"))
        if m.shared and shm:
            hint = ("mmap.mmap(-1, n) is MAP_SHARED: create it with flags=mmap.MAP_PRIVATE "
                    "to drill it, or use driller.empty()" if m.name.startswith("/dev/zero")
                    else "share it through its driller handle instead")
            raise DrillError(f"the buffer at {addr:#x} is already shared memory ({what}); "
                             + hint)
        if not m.anonymous and m.name != "[heap]":
            kind = "the stack" if m.name.startswith("[stack") else f"file-backed memory ({what})"
            raise DrillError(f"the buffer at {addr:#x} lies in {kind}: only anonymous "
                             "private memory can be drilled")
        if not m.writable:
            raise DrillError(f"the buffer at {addr:#x} lies in read-only memory")
    if addr == lo and addr + n == hi:
        return []  # the buffer owns every byte of its pages
    extent = _glibc_chunk_extent(_allocation_start(obj, addr))
    if extent is not None and extent[0] <= lo and hi <= extent[1]:
        return []  # glibc gave the allocation a mapping of its own
    if n >= MIN_SHARED_EDGE_BYTES:
        edges = [lo] if addr != lo else []
        tail = hi - _linux.PAGE_SIZE
        if addr + n != hi and tail not in edges:
            edges.append(tail)
        return edges
    raise DrillError(
        f"the {n}-byte buffer at {addr:#x} shares its first or last page with other "
        "heap objects and malloc's metadata, and it is too small for that to be worth "
        f"sharing (heap buffers need at least {MIN_SHARED_EDGE_BYTES >> 10} KiB). Allocate "
        "it with driller.empty()/driller.array(), or use a page-aligned buffer such as "
        "mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)")


class Hole:
    """A drilled buffer: its memory is a memfd mapping, shareable via ``handle``.

    ``close()`` (or leaving a ``with`` block) makes the memory private again —
    same address, same bytes — and tells the peers: their new attaches fail,
    their existing views keep the last shared bytes.
    """

    def __init__(self, obj: Any, pin: memoryview, addr: int, n: int, lo: int, hi: int,
                 seg: Segment, edges: list[int]) -> None:
        self.address = addr          # the buffer's first byte
        self.nbytes = n
        self._lo, self._hi = lo, hi
        self._segment = seg
        self._pin: memoryview | None = pin   # keeps the exporter's buffer pinned
        self._edges = edges        # pages shared with heap neighbours (see fork hooks)
        self._pid = os.getpid()
        self._broken = False
        if isinstance(obj, np.ndarray):
            self._layout = {"dtype": obj.dtype, "shape": tuple(obj.shape),
                            "strides": tuple(obj.strides)}
        else:
            self._layout = {"dtype": np.dtype(np.uint8), "shape": (n,), "strides": (1,)}
        if _dropped:   # (drilled anew: no longer the memory of a dropped Hole)
            kept = [d for d in _dropped if d[1] <= lo or d[0] >= hi]
            _dropped.clear()
            _dropped.extend(kept)
        try:   # (for the error of a handle once dropped: the object under obj)
            ref: Any = weakref.ref(_root(obj))
        except TypeError:   # (a bytearray, an mmap: no weak references)
            ref = None
        self._finalizer = weakref.finalize(self, _undrill_dropped, lo, hi, seg, ref)
        self._finalizer.atexit = False

    # -- state
    @property
    def readonly(self) -> bool:
        """True once the memfd is sealed read-only: every handle of it is read-only."""
        return bool(self._segment.sealed_readonly)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the memory is private again)."""
        return not self._finalizer.alive

    @property
    def key(self) -> str:
        """The segment's key at the fd proxy (what peers' handles name)."""
        return self._segment.key

    @property
    def segment(self) -> Segment:
        """The memfd segment now mapped under the drilled range."""
        return self._segment

    def _ensure_usable(self) -> None:
        if self._pid != os.getpid():
            raise DrillError("this Hole belongs to the parent process: after fork the child "
                             "has a private copy of the memory; drill it again to share it")
        if self._broken:
            raise SegmentReleasedError(
                f"the memory under Hole {self.key} stopped being its shared mapping "
                "(unmapped or remapped behind driller's back, e.g. by C code); the segment "
                "was released and its peers were told")
        if self.closed:
            raise SegmentReleasedError(f"Hole {self.key} is closed")
        if not self.verify():
            self._ensure_usable()

    def verify(self) -> bool:
        """True while the range is still our memfd mapping; else release it (peers told)."""
        if self.closed or self._broken:
            return not (self.closed or self._broken)
        try:
            maps = _linux.mappings_covering(self._lo, self._hi)
            dev, ino = self._segment.inode
            ok = all(m.shared and m.inode == ino and m.dev == dev for m in maps)
        except LookupError:
            ok = False
        if not ok:
            self._broken = True
            self._finalizer.detach()  # nothing of ours left to restore there
            _publish.release(self._segment)
            self._pin = None
        return ok

    # -- sharing
    @property
    def handle(self) -> Handle:
        """A small picklable handle; ``driller.attach(handle)`` maps the same memory."""
        self._ensure_usable()
        return self.handle_for(None)

    def handle_for(self, arr: NDArray | None, readonly: bool = False) -> Handle:
        """A handle naming ``arr`` (a view into the drilled range; None: the whole
        buffer, as :attr:`handle`); read-only as :func:`driller.handle` says."""
        self._ensure_usable()
        if arr is None:
            fields = dict(self._layout, offset=self.address - self._lo)
        else:
            start = arr.__array_interface__["data"][0]
            lo, hi = _extent(arr)
            if arr.size and not (self._lo <= lo and hi <= self._hi):
                raise DrillError(
                    f"this view spans bytes {lo:#x}..{hi:#x}, past the drilled range "
                    f"{self._lo:#x}..{self._hi:#x} of {self.key}: only drilled memory is "
                    "shared; drill the whole buffer (driller.drill(base)) or hand out a "
                    "view inside the drilled part")
            fields = {"offset": start - self._lo,
                      "dtype": arr.dtype, "shape": tuple(arr.shape),
                      "strides": tuple(arr.strides)}
        return _publish.handle_for(self._segment, readonly=readonly, **fields)

    def region_for_handle(self, h: Handle) -> Region | None:
        """Our own memory, for an attach of our own handle in this process."""
        if self._pid != os.getpid() or self.closed or not self.verify():
            return None
        return self._segment.region

    # -- end
    def close(self) -> None:
        """Make the memory private again (same address, same bytes) and tell the peers:
        once it returns, the proxy has sent every peer that mapped the segment its
        release notice, so a peer's later attach of a handle raises
        :class:`~driller.SegmentReleasedError` (it cannot get the old mapping from
        its map cache and write into memory nobody reads any more)."""
        with _lock:
            mine = self._pid == os.getpid()
            info = self._finalizer.detach()
            if mine and info is not None:
                _undrill(*info[2][:3])
            _holes.pop(self._lo, None)
            self._pin = None
        if mine:   # (the release, queued by _undrill, sent and answered; a stopped
            _publish.flush(CLOSE_WAIT)   # proxy is not waited for longer)

    def __enter__(self) -> "Hole":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("broken" if self._broken else "open")
        return f"<driller.Hole {self.key} {self.nbytes} bytes at {self.address:#x} {state}>"


CLOSE_WAIT = 5.0   # seconds close() waits for the proxy's answer to its release

# ranges whose Hole was dropped without close() (garbage-collected: the drill undone),
# with a weak reference to the drilled object, for the error of a later
# driller.handle() of it
_dropped: "collections.deque[tuple[int, int, Any]]" = collections.deque(maxlen=64)


def _undrill_dropped(lo: int, hi: int, seg: Segment, ref: Any) -> None:
    if ref is not None:
        _dropped.append((lo, hi, ref))
    _undrill(lo, hi, seg)


def was_dropped(arr: NDArray) -> bool:
    """Whether arr is (a view of) an object drilled by a Hole dropped without close()."""
    root = _root(arr)
    addr = arr.__array_interface__["data"][0]
    return any(lo <= addr < hi and ref() is root for lo, hi, ref in list(_dropped))


def _root(obj: Any) -> Any:
    """The object at the end of an ndarray's base chain (obj itself if none)."""
    while isinstance(obj, np.ndarray) and obj.base is not None:
        obj = obj.base
    return obj


def _undrill(lo: int, hi: int, seg: Segment) -> None:
    """Replace the memfd mapping by private pages holding the same bytes (one copy)."""
    size = hi - lo
    try:
        maps = _linux.mappings_covering(lo, hi)
        dev, ino = seg.inode
        ours = all(m.shared and m.inode == ino and m.dev == dev for m in maps)
    except LookupError:
        ours = False
    if ours:
        tmp = _linux.mmap(size, shared=False)
        _linux.memmove(tmp, lo, size)
        _linux.mremap_over(tmp, size, lo)
    _publish.release(seg)


def _holds_objects(obj: Any, pin: memoryview) -> bool:
    """Whether the buffer's items are Python object pointers (numpy dtype object, or a
    structured dtype with an object field; PEP 3118 format code 'O')."""
    dt = getattr(obj, "dtype", None)
    if not isinstance(dt, np.dtype):
        try:
            dt = np.asarray(pin).dtype
        except (TypeError, ValueError, NotImplementedError):  # a format numpy cannot read
            return _pep3118.holds_objects(pin.format)
    return bool(dt.hasobject)


def drill(obj: Any, readonly: bool = False) -> Hole:
    """Make the memory under ``obj`` shareable in place; returns a :class:`Hole`.

    ``obj`` is a writable, C-contiguous buffer (numpy array, bytearray, mmap,
    memoryview...).  With ``readonly=True`` peers can only read it: the memfd
    is sealed (``F_SEAL_FUTURE_WRITE``) so the kernel refuses them any writable
    mapping or write, whatever fd they get hold of; we keep writing it.  Raises
    :class:`~driller.DrillError` for buffers that cannot be made shareable safely.
    """
    try:
        pin = memoryview(obj)
    except TypeError:
        raise DrillError(f"{type(obj).__name__} does not support the buffer protocol: "
                         "drill a numpy array, bytearray, mmap or memoryview") from None
    if pin.readonly:
        pin.release()
        raise DrillError(f"this {type(obj).__name__} is read-only: drill needs writable "
                         "memory (copy it with driller.array(obj) to share it)")
    if not pin.c_contiguous:
        pin.release()
        raise DrillError("the buffer is not C-contiguous: drill the array it is a view of, "
                         "or copy it with driller.array(obj)")
    if pin.nbytes == 0:
        pin.release()
        raise DrillError("cannot drill an empty buffer")
    if _holds_objects(obj, pin):
        fmt = pin.format
        pin.release()
        raise DrillError(f"this {type(obj).__name__} holds Python objects (format "
                         f"{fmt!r}): pointers into this process's heap, which a peer "
                         "would read as garbage and crash on; only plain data can be shared "
                         "(pickle the objects instead, or use a fixed-size dtype)")
    if not _mallopt_done[0]:
        _mallopt_done[0] = True
        _linux.set_mmap_threshold(MMAP_THRESHOLD)
    addr, n, _ = _linux.buffer_address(pin, writable=True)
    lo, hi = _linux.page_floor(addr), _linux.page_ceil(addr + n)
    with _lock:
        for h in list(_holes.values()):
            if not h.closed and h._lo < hi and lo < h._hi and h._pid == os.getpid():
                pin.release()
                raise DrillError(f"this memory is already drilled ({h!r}); use its handle")
        edges = _check_range(obj, addr, n, lo, hi)
        size = hi - lo
        fd = _linux.memfd_create("driller:hole")
        try:
            os.ftruncate(fd, size)
            _linux.pwrite_from(fd, lo, size)
            _linux.add_seals(fd, _SEALS)
            _linux.mmap(size, fd=fd, addr=lo, shared=True)
        except BaseException:
            os.close(fd)
            raise
        seg = Segment(size, "hole", fd=fd, region=Region.adopt(lo, size, unmap=False))
        if readonly:  # our writable mapping exists: seal every later one out
            seg.seal(True)
        hole = Hole(obj, pin, addr, n, lo, hi, seg, edges)
        _publish.register(seg.key, hole)
        _holes[lo] = hole
        return hole


def _extent(arr: NDArray) -> tuple[int, int]:
    """The bytes arr's elements span: [lowest address, highest + itemsize)."""
    start = arr.__array_interface__["data"][0]
    pairs = list(zip(arr.shape, arr.strides))
    return (start + sum((n - 1) * st for n, st in pairs if st < 0),
            start + sum((n - 1) * st for n, st in pairs if st > 0) + arr.itemsize)


def hole_containing(arr: NDArray) -> Hole | None:
    """The open Hole of this process under arr's memory (its first element's, else
    any of its bytes': :meth:`Hole.handle_for` refuses a view that leaves it), if any."""
    if not _holes:
        return None
    addr = arr.__array_interface__["data"][0]
    holes = [h for h in list(_holes.values()) if not h.closed and h._pid == os.getpid()]
    for h in holes:
        if h._lo <= addr < h._hi:
            return h
    if arr.size:
        lo, hi = _extent(arr)
        for h in holes:
            if lo < h._hi and h._lo < hi:
                return h
    return None


def check() -> list[Hole]:
    """Verify every drilled range is still its memfd mapping.

    Ranges that C code unmapped or remapped behind driller's back are
    released (peers are told); returns those Holes.
    """
    broken = []
    with _lock:
        for h in list(_holes.values()):
            if h._pid == os.getpid() and not h.closed and not h.verify():
                broken.append(h)
                _holes.pop(h._lo, None)
    return broken


# ---------------------------------------------------------------- fork

_snapshots: list[tuple[int, int, int, list[int]]] = []  # (copy, lo, size, edge pages)
_edges: list[tuple[int, int]] = []  # (edge page, where its shared mapping is parked)


def _before_fork() -> None:
    _lock.acquire()
    pid = os.getpid()
    page = _linux.PAGE_SIZE
    for h in _holes.values():
        if h._pid == pid and not h.closed and not h._broken:
            size = h._hi - h._lo
            tmp = _linux.mmap(size, shared=False)
            _linux.memmove(tmp, h._lo, size)
            _snapshots.append((tmp, h._lo, size, h._edges))
            for edge in h._edges:  # private in the parent until the child has its copy
                priv = _linux.mmap(page, shared=False)
                _linux.memmove(priv, edge, page)
                # Park the shared mapping elsewhere (never mapping the memfd anew:
                # it may be sealed read-only), then put the private copy in place.
                park = _linux.mmap(page, shared=False)
                if not _linux.mremap_keep(edge, page, park):
                    _linux.mremap_over(edge, page, park)  # Linux < 5.13: moved, not kept
                _linux.mremap_over(priv, page, edge)
                _edges.append((edge, park))


def _after_fork_parent() -> None:
    page = _linux.PAGE_SIZE
    for edge, park in _edges:  # our edge pages, shared again with what we wrote there
        _linux.memmove(park, edge, page)
        _linux.mremap_over(park, page, edge)
    _edges.clear()
    for tmp, _lo, size, _e in _snapshots:
        _linux.munmap(tmp, size)
    _snapshots.clear()
    _lock.release()


def _after_fork_child() -> None:
    global _lock
    page = _linux.PAGE_SIZE
    for tmp, lo, size, edges in _snapshots:
        # The private copy taken just before the fork replaces the shared pages.
        # Edge pages are left as inherited: they were private in the parent at
        # the fork, so they hold malloc's metadata as of the fork, which our copy
        # (taken a moment earlier) may not.
        start = page if lo in edges else 0
        end = size - page if (lo + size - page) in edges and size - page >= start else size
        if end > start:
            _linux.mremap_over(tmp + start, end - start, lo + start)
        if start:
            _linux.munmap(tmp, start)
        if end < size:
            _linux.munmap(tmp + end, size - end)
    _snapshots.clear()
    for _edge, park in _edges:  # the parent's parked shared pages: not ours
        _linux.munmap(park, page)
    _edges.clear()
    for h in list(_holes.values()):
        h._finalizer.detach()  # the parent owns the segment; the child's pages are private
        h._pin = None
    _holes.clear()
    _lock = threading.RLock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)
