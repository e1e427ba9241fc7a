"""The shared heap: numpy arrays that are shareable from birth.

Small arrays are carved out of shared arenas (memfd segments) by a first-fit
allocator (:mod:`driller._alloc`, the part dlmalloc played in the C library);
large ones get a segment of their own.  Either way the array is a
:class:`SharedArray`: a numpy array that pickles *by reference* — a few hundred
bytes naming the segment, the offset, dtype, shape and strides — so another
process unpickles it as a view of the very same memory.

Lifetimes: memory lives while any array or view over it lives, in any process
that mapped it.  A handle (a pickle) is only good while the owner still holds
the array: once the owner's last view is gone the segment is released and
unpickling elsewhere raises :class:`~driller.SegmentReleasedError`.
"""

from __future__ import annotations

import collections
import math
import operator
import os
import threading

import numpy as np

from . import _publish
from ._alloc import FreeList
from .segment import Handle, Region, Segment

__all__ = ["SharedArray", "empty", "zeros", "empty_like", "zeros_like", "array",
           "handle", "heap_info"]

ARENA_BYTES = 4 << 20        # one arena segment
LARGE_BYTES = 256 << 10      # at least this: a segment of its own


class _Arena:
    __slots__ = ("segment", "free", "__weakref__")

    def __init__(self, nbytes: int):
        self.segment = Segment(nbytes, "arena")
        self.free = FreeList(self.segment.nbytes)
        _publish.register(self.segment.key, self)

    def region_for_handle(self, h):
        # a child of the owner goes through the proxy like everyone else
        return self.segment.region if self.segment.owner == os.getpid() else None


class _Block:
    """The memory under one SharedArray (and all its views).

    ``np.asarray(block)`` is a uint8 view whose base is the block; when the last
    view dies the block returns to its arena (or its segment is released).
    """

    __slots__ = ("segment", "offset", "nbytes", "arena", "pid", "__weakref__")

    def __init__(self, segment: Segment, offset: int, nbytes: int, arena: _Arena | None):
        self.segment, self.offset, self.nbytes, self.arena = segment, offset, nbytes, arena
        self.pid = _pid[0]

    @property
    def __array_interface__(self) -> dict:
        return {"shape": (self.nbytes,), "typestr": "|u1", "version": 3,
                "data": (self.segment.address + self.offset, False)}

    def region_for_handle(self, h):
        # a child of the owner goes through the proxy like everyone else
        return self.segment.region if self.segment.owner == os.getpid() else None

    def __del__(self):
        # Must not take locks (it can run inside any allocation, with a lock held
        # by this very thread): queue the block; the allocator drains the queue.
        if self.pid != _pid[0]:
            return  # inherited through fork: the parent's memory
        if self.arena is not None:
            _freed.append((self.arena, self.offset))
        else:
            _publish.release(self.segment)


_pid = [os.getpid()]
_freed: collections.deque = collections.deque()
_lock = threading.Lock()
_arenas: list[_Arena] = []
_stats = {"arrays": 0, "large": 0, "arena_bytes": 0}


def _drain_freed() -> None:
    while _freed:
        arena, offset = _freed.popleft()
        arena.free.free(offset)
        if arena.free.empty and arena in _arenas and sum(a.free.empty for a in _arenas) > 1:
            _arenas.remove(arena)  # keep one spare empty arena, drop the others
            _stats["arena_bytes"] -= arena.segment.nbytes
            _publish.release(arena.segment)


def _allocate(nbytes: int, data: tuple[int, int] | None = None) -> _Block:
    if nbytes >= LARGE_BYTES:
        seg = Segment(nbytes, "array", data=data)
        block = _Block(seg, 0, nbytes, None)
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
    return _Block(arena.segment, off, nbytes, arena)


def _after_fork_in_child() -> None:
    # The parent's arenas stay mapped (inherited arrays keep working, shared),
    # but the child never allocates from them nor frees into them.
    global _lock
    _lock = threading.Lock()
    _pid[0] = os.getpid()
    _arenas.clear()
    _freed.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedArray(np.ndarray):
    """A numpy array in shared memory that pickles by reference.

    Views and slices are SharedArrays too and pickle by reference; results of
    computations are new, private numpy arrays.
    """

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if return_scalar:
            return arr[()]
        if _shared_base(arr) is None:
            return arr.view(np.ndarray)
        return arr.view(type(self))

    def __reduce_ex__(self, protocol):
        h = handle(self, _strict=False)
        if h is None:  # not (or no longer) in shared memory: pickle by value
            return np.asarray(self).__reduce_ex__(protocol)
        return (_rebuild, (h,))

    def __reduce__(self):
        return self.__reduce_ex__(2)


def _shared_base(arr: np.ndarray):
    """The _Block or attached Region under arr, or None."""
    b = arr
    while isinstance(b, np.ndarray):
        b = b.base
    if isinstance(b, _Block) or (isinstance(b, Region) and b.origin is not None):
        return b
    from .hole import hole_containing
    return hole_containing(arr)


def _layout(arr: np.ndarray, base_address: int) -> dict:
    data = arr.__array_interface__["data"][0]
    return {"offset": data - base_address, "dtype": arr.dtype, "shape": tuple(arr.shape),
            "strides": tuple(arr.strides)}


def handle(arr: np.ndarray, readonly: bool = False, _strict: bool = True) -> Handle | None:
    """A small picklable :class:`~driller.Handle` for a shared array (or a view of one).

    ``driller.attach(handle)`` in any process of the same user gives an array
    over the same memory.  Raises :class:`~driller.DrillerError` if ``arr`` is
    not in driller shared memory.
    """
    base = _shared_base(arr)
    if base is None:
        if not _strict:
            return None
        from .errors import DrillerError
        raise DrillerError(
            "this array is not in driller shared memory; allocate it with driller.empty/"
            "zeros/array, or make it shareable in place with driller.drill()")
    if isinstance(base, _Block):
        seg = base.segment
        return _publish.handle_for(seg, readonly=readonly, **_layout(arr, seg.address))
    if isinstance(base, Region):  # attached from a peer: same segment, same handle
        o = base.origin
        return Handle(proxy=o.proxy, secret=o.secret, key=o.key, owner=o.owner,
                      nbytes=o.nbytes, readonly=readonly or o.readonly,
                      **_layout(arr, base.address))
    return base.handle_for(arr, readonly=readonly)  # a drilled Hole


def _rebuild(h: Handle) -> np.ndarray:
    from .share import attach  # share imports heap: import here, cached by Python
    return attach(h)


def _wrap(block: _Block, shape, dtype, order: str) -> SharedArray:
    return SharedArray(shape, dtype=dtype, buffer=np.asarray(block), order=order)


def _normalize(shape, dtype):
    dtype = np.dtype(dtype)
    shape = (operator.index(shape),) if not hasattr(shape, "__len__") \
        else tuple(operator.index(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    return shape, dtype, math.prod(shape) * dtype.itemsize


def empty(shape, dtype=float, order: str = "C") -> SharedArray:
    """Like ``numpy.empty``, in shared memory."""
    shape, dtype, nbytes = _normalize(shape, dtype)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    return _wrap(_allocate(max(nbytes, 1)), shape, dtype, order)


def zeros(shape, dtype=float, order: str = "C") -> SharedArray:
    """Like ``numpy.zeros``, in shared memory."""
    a = empty(shape, dtype, order)
    if a.nbytes < LARGE_BYTES:  # arena blocks are reused; a new segment reads as zeros
        a.fill(0)
    return a


def empty_like(a, dtype=None, order: str = "K") -> SharedArray:
    a = np.asarray(a)
    order = ("F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C") \
        if order in ("K", "A") else order
    return empty(a.shape, a.dtype if dtype is None else dtype, order)


def zeros_like(a, dtype=None, order: str = "K") -> SharedArray:
    out = empty_like(a, dtype, order)
    out.fill(0)
    return out


def array(obj, dtype=None, order: str = "K") -> SharedArray:
    """Copy ``obj`` (anything numpy.asarray takes) into a new shared array."""
    src = np.asarray(obj, dtype=dtype)
    out_order = ("F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C") \
        if order in ("K", "A") else order
    if src.nbytes >= LARGE_BYTES and (src.flags.c_contiguous if out_order == "C"
                                      else src.flags.f_contiguous):
        # one copy straight into the new memfd (pwrite), no page faults on our side
        block = _allocate(src.nbytes, data=(src.__array_interface__["data"][0], src.nbytes))
        return _wrap(block, src.shape, src.dtype, out_order)
    out = empty_like(src, order=order)
    np.copyto(out, src, casting="no")
    return out


def heap_info() -> dict:
    with _lock:
        _drain_freed()
        return {"arenas": len(_arenas), "arena_bytes": _stats["arena_bytes"],
                "arena_used_bytes": sum(a.free.used_bytes for a in _arenas),
                "small_arrays_allocated": _stats["arrays"],
                "large_arrays_allocated": _stats["large"]}
