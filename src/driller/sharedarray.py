"""Shared arrays: numpy arrays in shared memory that pickle by reference.

This module owns the user-facing side of shared memory:

* the constructors ``empty/zeros/empty_like/zeros_like/array``, which wrap the
  blocks :mod:`driller.heap` allocates into :class:`SharedArray` objects;
* :func:`handle`, a small picklable :class:`~driller.Handle` naming (a view of)
  a shared array, a drilled buffer or an attached peer segment;
* :func:`attach`, a numpy array over the memory a handle names (through the
  per-process map cache, :func:`cache_info`);
* pickling: a SharedArray (or any view of one) pickles as a handle, a few
  hundred bytes, and unpickles (:func:`_rebuild`) as a view of the same memory.

Lifetimes: memory lives while any array or view over it lives, in any process
that mapped it.  A handle (a pickle) is only good while the owner still holds
the array: once the owner's last view is gone the segment is released and
unpickling elsewhere raises :class:`~driller.SegmentReleasedError`.
"""

from __future__ import annotations

import math
import operator
import os

import numpy as np

from . import _publish, heap, mapcache
from .errors import DrillerError, ReadOnlyError, SegmentReleasedError
from .segment import Handle, Region

__all__ = ["SharedArray", "empty", "zeros", "empty_like", "zeros_like", "array",
           "handle", "attach", "cache_info"]


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


# ------------------------------------------------------------------ handles

def _shared_base(arr: np.ndarray):
    """The heap Block or attached Region under arr, a drilled Hole, or None."""
    b = arr
    while isinstance(b, np.ndarray):
        b = b.base
    if isinstance(b, heap.Block) or (isinstance(b, Region) and b.origin is not None):
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

    ``readonly=True`` is enforced by the kernel (the segment is sealed read-only
    at its first share, and all its later handles are read-only) or refused with
    :class:`~driller.ReadOnlyError`: small arrays (an arena), memory already
    shared writable, a peer's writable attachment.
    """
    base = _shared_base(arr)
    if base is None:
        if not _strict:
            return None
        raise DrillerError(
            "this array is not in driller shared memory; allocate it with driller.empty/"
            "zeros/array, or make it shareable in place with driller.drill()")
    if readonly and isinstance(base, heap.Block):  # sealed before any fd of it leaves
        _publish.seal(base.segment, True)
    if isinstance(base, heap.Block):
        seg = base.segment
        return _publish.handle_for(seg, readonly=readonly, **_layout(arr, seg.address))
    if isinstance(base, Region):  # attached from a peer: same segment, same handle
        o = base.origin
        if readonly and not o.readonly:  # only the owner can seal it; never advisory
            raise ReadOnlyError(
                f"segment {o.key} of process {o.owner} is shared writable: a read-only "
                "handle of it could not be enforced. Ask its owner for a read-only handle "
                "(driller.handle(a, readonly=True) before any writable one), or share a "
                "read-only copy: driller.handle(driller.array(arr), readonly=True)")
        return Handle(proxy=o.proxy, secret=o.secret, key=o.key, owner=o.owner,
                      nbytes=o.nbytes, readonly=readonly or o.readonly,
                      **_layout(arr, base.address))
    return base.handle_for(arr, readonly=readonly)  # a drilled Hole


# ------------------------------------------------------------------ attaching

def _region_for(h: Handle, readonly: bool) -> Region:
    mine = _publish.owned(h.key)
    if mine is not None:
        region = mine.region_for_handle(h)
        if region is not None:
            return region
    if h.owner == os.getpid():
        raise SegmentReleasedError(f"segment {h.key} was released by its owner (this process)")
    region = mapcache.cache().map(h.proxy, h.secret, h.key, h.nbytes, readonly=readonly)
    if region.origin is None:
        region.origin = h
    return region


def attach(handle: Handle, readonly: bool | None = None) -> np.ndarray:
    """A numpy array over the memory ``handle`` names: zero copy, through the map cache.

    The array has the owner's dtype and shape when the handle carries them,
    else it is uint8 over the whole segment.  ``readonly`` defaults to the
    handle's; a read-only handle cannot be attached writable.

    Raises :class:`~driller.SegmentReleasedError` if the owner released the
    segment, :class:`~driller.ProxyError` if its proxy is unknown or unreachable.
    """
    if type(handle) is not Handle:
        raise DrillerError(f"attach() takes a driller.Handle, not {type(handle).__name__}; "
                           "get one from Hole.handle or driller.handle(shared_array)")
    if readonly is None:
        readonly = handle.readonly
    elif handle.readonly and not readonly:
        raise DrillerError(f"handle {handle.key} is read-only: attach it with readonly=True")
    region = _region_for(handle, readonly)
    raw = np.asarray(region)
    if handle.dtype is None:
        arr = raw[handle.offset:]
    else:
        arr = np.ndarray(handle.shape, dtype=handle.dtype, buffer=raw, offset=handle.offset,
                         strides=handle.strides)
    arr = arr.view(SharedArray)
    if readonly:
        arr.flags.writeable = False
    return arr


def _rebuild(h: Handle) -> np.ndarray:
    """Unpickling a SharedArray."""
    return attach(h)


def cache_info() -> dict:
    """This process's map cache: hits, misses, evictions, entries, bytes mapped."""
    return mapcache.cache().info()


# ------------------------------------------------------------------ constructors

def _wrap(block: heap.Block, shape, dtype, order: str) -> SharedArray:
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
    return _wrap(heap.allocate(max(nbytes, 1)), shape, dtype, order)


def zeros(shape, dtype=float, order: str = "C") -> SharedArray:
    """Like ``numpy.zeros``, in shared memory."""
    a = empty(shape, dtype, order)
    if a.nbytes < heap.LARGE_BYTES:  # arena blocks are reused; a new segment reads as zeros
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
    if src.nbytes >= heap.LARGE_BYTES and (src.flags.c_contiguous if out_order == "C"
                                           else src.flags.f_contiguous):
        # one copy straight into the new memfd (pwrite), no page faults on our side
        block = heap.allocate(src.nbytes, data=(src.__array_interface__["data"][0], src.nbytes))
        return _wrap(block, src.shape, src.dtype, out_order)
    out = empty_like(src, order=order)
    np.copyto(out, src, casting="no")
    return out
