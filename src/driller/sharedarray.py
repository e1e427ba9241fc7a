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

Lifetimes (the rules; README "Lifetimes" says the same for users):

1. Memory lives while any array or view over it lives, in any process that
   mapped it (a mapping holds the memory by itself).
2. A pickle or handle of a shared array (or of any view of one) stays loadable
   after the pickling process dropped the array, exited or was recycled, until
   it has been loaded, or provably can no longer be.  The mechanism is a
   *transfer lease* held by the fd proxy: the first handle of a block (its
   first pickle, or ``driller.handle``) asks the proxy for a lease on (segment
   key, block generation), one round trip, cached on the block so every later
   pickle of that block names the same lease.  While a lease lives, the proxy
   keeps the segment's fd even if its owner released it or disconnected.
3. Holders of a lease: the pickling process until its block dies (let go from
   the block's finalizer, queued, never under a lock), and every process that
   loaded a handle naming it (its *claim*, made by the fetch itself, or by one
   extra round trip when the segment was already mapped) until its mapping of
   that segment is unmapped, or it disconnects.
4. A lease ends when it has no holder and every handle of it was claimed (each
   handle is numbered, ``Handle.seq``; the pickling process says how many it
   made as it lets go, or as it exits holding the array (``_say_counts``),
   with the numbers it loaded itself (the owner's own view: no claim), and a
   loader the numbers it loaded from its map cache without a claim as its
   mapping lets go, all as runs (``proxy._wire.add_run``); a loader that
   pickles a view of what it loaded numbers those handles in a range the
   proxy gave it (one round trip, at its first such pickle of that lease) and
   says how many it made with its mapping's drop; a pickling process that
   never said, one killed, counts as one handle, a forwarding one that never
   said is waited for), or
   when nobody claimed it within ``DRILLER_LEASE_SECONDS`` (default 300) of
   its last holder letting go.  At most ``DRILLER_LEASE_MAX_ORPHANS`` (default
   4096) unclaimed leases without a holder are kept per proxy; beyond that the
   oldest ends first (logged): pickles that are never loaded cannot grow the
   proxy without bound.  The proxy stays up while a lease lives, but once its
   last client is gone it waits only ``DRILLER_LEASE_IDLE_SECONDS`` (default 5)
   for a loader to connect, then ends its leases and exits.
5. Loading a handle whose lease ended raises
   :class:`~driller.SegmentReleasedError`, never another array's bytes: a block
   that was ever exported (handle, pickle, or alive at a ``fork()``) is never
   handed to a new array (its arena is retired once all its blocks are dead),
   and in the owner a handle resolves only to the live block of its
   generation.  Large arrays have a segment each, never reused.
6. Limits: several copies of one pickle (the same bytes loaded by several
   processes) are covered while the pickling process or any loader still holds
   the lease; once all of them let go, a copy loaded later raises.  Drilled
   buffers (``driller.drill``) have no lease: ``Hole.close()`` or the owner's
   exit ends their handles at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import os
import sys
import threading
import weakref

import numpy as np
import numpy.typing as npt
from typing import TYPE_CHECKING, Any, Literal, Sequence, SupportsIndex, Union

from . import _publish, heap, mapcache
from .errors import DrillerError, ProxyError, ReadOnlyError, SegmentReleasedError
from .proxy._wire import (_LEASE_IDLE_VAR, _LEASE_ORPHANS_VAR, _LEASE_SECONDS_VAR,
                          RANGES_KEPT_PROXY, add_run, as_said)
from .segment import Handle, Region

__all__ = ["SharedArray", "empty", "zeros", "empty_like", "zeros_like", "array",
           "handle", "attach", "cache_info", "pickled_by_value"]


# numpy's arrays, as type checkers see them (numpy < 2.3 wants both parameters)
NDArray = npt.NDArray[Any]
if TYPE_CHECKING:
    _ArrayBase = np.ndarray[Any, np.dtype[Any]]
else:
    _ArrayBase = np.ndarray


class SharedArray(_ArrayBase):
    """A numpy array in shared memory that pickles by reference.

    Views and slices are SharedArrays too and pickle by reference; results of
    computations are new, private numpy arrays.
    """

    def __array_wrap__(self, arr: NDArray, context: Any = None,
                       return_scalar: bool = False) -> Any:
        if return_scalar:
            return arr[()]
        if _shared_base(arr) is None:
            return arr.view(np.ndarray)
        return arr.view(type(self))

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        h = None if _by_value.depth else _handle(self)
        if h is None:  # not (or no longer) in shared memory: pickle by value
            if not _by_value.depth:
                _refuse_dropped_hole(self)   # (its peers' writes would go nowhere)
            return np.asarray(self).__reduce_ex__(protocol)
        return (_rebuild, (h,))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)


class _ByValue(threading.local):
    depth = 0


_by_value = _ByValue()


class pickled_by_value:
    """``with driller.pickled_by_value(): pickle.dump(obj, f)``: SharedArrays inside
    obj pickle by value (their bytes), not by reference, in this thread: for a file
    (a reference is loadable only while its owner's proxy lives, and once), or a
    receiver that cannot map this machine's memory (a rank on another node of a
    hybrid mmpi world).

    Only pickles made by this thread inside the block: ``multiprocessing.Queue.put``,
    ``Pool.apply_async`` and ``ProcessPoolExecutor.submit`` pickle later in threads
    of their own, by reference; pass them ``np.asarray(a)`` (a plain ndarray, which
    numpy pickles by value) to send a copy."""

    def __enter__(self) -> None:
        _by_value.depth += 1

    def __exit__(self, *exc: object) -> None:
        _by_value.depth -= 1


# ------------------------------------------------------------------ handles

class _Attached:
    """The base of an array attached from a mapped segment: the mapping, and the
    handle it was loaded from (a view of it pickles with that handle's lease)."""

    __slots__ = ("region", "origin", "__weakref__")

    def __init__(self, region: Region, origin: Handle):
        self.region, self.origin = region, origin

    @property
    def __array_interface__(self) -> dict[str, Any]:
        r = self.region
        return {"shape": (r.nbytes,), "typestr": "|u1", "version": 3,
                "data": (r.address, r.readonly)}


def _shared_base(arr: NDArray) -> Any:
    """The heap Block or _Attached mapping under arr, a drilled Hole, or None."""
    b: Any = arr
    while isinstance(b, np.ndarray):
        b = b.base
    if isinstance(b, (heap.Block, _Attached)):
        return b
    from .hole import hole_containing
    return hole_containing(arr)


_lease_lock = threading.Lock()
_leased: "weakref.WeakSet[heap.Block]" = weakref.WeakSet()   # blocks with a lease


def _say_counts() -> None:
    """At this process's exit (``_publish.at_exit``): tell the proxy how many
    handles each lease of a block still alive made, with the numbers loaded here
    (a freed block said it as it let go; a process that exits holding an array
    never frees it, and the lease would end after one load)."""
    pid = os.getpid()
    counts: dict[str, list[tuple[int, Any]]] = {}
    if not _lease_lock.acquire(timeout=5):
        return   # (a thread stuck in a lease request: the proxy does not answer)
    try:
        for block in list(_leased):
            lease = block.lease
            if lease is None or lease[0] != pid:
                continue
            # the number next() takes here is made by no pickle (one made at the same
            # time, a queue's feeder thread, takes another): said as loaded, so that
            # a later call (or the block's drop) can count past it
            made = next(lease[3]) - 1
            add_run(lease[4], made + 1, made + 1, RANGES_KEPT_PROXY)
            counts.setdefault(lease[1], []).append((lease[2], (made, as_said(lease[4]))))
    finally:
        _lease_lock.release()
    for address, items in counts.items():
        _publish.say_issued(address, items)


_publish.at_exit_calls.append(_say_counts)


def _lease_of(block: heap.Block) -> tuple[int, int]:
    """The block's transfer lease (asked for once per block and process) and this
    handle's number among the lease's handles (1, 2...: ``next`` of the lease's
    counter, one C call, so two threads never get the same number)."""
    pid = os.getpid()
    lease = block.lease
    if lease is None or lease[0] != pid:
        with _lease_lock:
            lease = block.lease
            if lease is None or lease[0] != pid:
                block.exported = True  # before any handle leaves: never reused
                address, lid = _publish.lease(block.segment, block.gen)
                # dropped by Block.__del__, with the number of handles made
                lease = block.lease = (pid, address, lid, itertools.count(1), [])
                _leased.add(block)
                _publish.hook_exit()
    return lease[2], next(lease[3])


def _after_fork_in_child() -> None:
    global _lease_lock
    _lease_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _layout(arr: NDArray, base_address: int) -> dict[str, Any]:
    data = arr.__array_interface__["data"][0]
    return {"offset": data - base_address, "dtype": arr.dtype, "shape": tuple(arr.shape),
            "strides": tuple(arr.strides)}


def handle(arr: NDArray, readonly: bool = False) -> Handle:
    """A small picklable :class:`~driller.Handle` for a shared array (or a view of one).

    ``driller.attach(handle)`` in any process of the same user gives an array
    over the same memory.  Raises :class:`~driller.DrillerError` if ``arr`` is
    not in driller shared memory.

    ``readonly=True`` is enforced by the kernel (the segment is sealed read-only
    at its first share, and all its later handles are read-only) or refused with
    :class:`~driller.ReadOnlyError`: small arrays (an arena), memory already
    shared writable, a peer's writable attachment.
    """
    h = _handle(arr, readonly)
    if h is None:
        _refuse_dropped_hole(arr)
        if getattr(getattr(arr, "flags", None), "writeable", True):
            raise DrillerError(
                "this array is not in driller shared memory; allocate it with driller.empty/"
                "zeros/array, or make it shareable in place with driller.drill()")
        raise DrillerError(   # (drill() needs writable memory: it refuses this one)
            "this array is not in driller shared memory, and it is read-only (e.g. "
            "np.frombuffer of bytes), so it cannot be made shareable in place: copy it "
            "into shared memory with driller.array(a) (and handle(..., readonly=True) "
            "if peers must not write it)")
    return h


def _refuse_dropped_hole(arr: NDArray) -> None:
    """Raise if arr is memory drilled by a Hole dropped without close(): private
    again, so a handle or a pickle by reference cannot be given (by value, its
    peers' writes would silently go nowhere)."""
    from .hole import was_dropped
    if was_dropped(arr):
        raise DrillerError(
            "this memory was drilled, but its Hole was garbage-collected (dropped "
            "without close()), which made it private again: keep the Hole while peers "
            "use the memory (hole = driller.drill(x), or `with driller.drill(x) as "
            "hole:`)")


def _handle(arr: NDArray, readonly: bool = False) -> Handle | None:
    """:func:`handle`, or None where arr is not in driller shared memory.  The
    handle of an array numpy marks not writeable is read-only too (its loaders'
    views are not writeable, as the owner's is not: the kernel does not enforce
    it unless asked, ``readonly=True``)."""
    h = _handle_of(arr, readonly)
    if h is not None and not h.readonly and not arr.flags.writeable:
        h = dataclasses.replace(h, readonly=True)
    return h


def _forward_number(base: "_Attached") -> int:
    """The number of a handle of a view of what this process loaded from
    ``base.origin``: one of our own (``MapCache.forward_number``), so that the
    lease lasts until this handle is loaded too, even once we let go; the
    origin's if there is none to give (the lease ended, or our mapping does not
    hold it, as in a fork child: that handle could not load)."""
    o = base.origin
    if not o.lease:
        return o.seq
    try:
        return mapcache.cache().forward_number(base.region, o.lease) or o.seq
    except (ProxyError, SegmentReleasedError):
        return o.seq


def _handle_of(arr: NDArray, readonly: bool) -> Handle | None:
    base = _shared_base(arr)
    if base is None:
        return None
    if readonly and isinstance(base, heap.Block):  # sealed before any fd of it leaves
        _publish.seal(base.segment, True)
    if isinstance(base, heap.Block):
        seg = base.segment
        lease, seq = _lease_of(base)
        return _publish.handle_for(seg, readonly=readonly, gen=base.gen, lease=lease,
                                   seq=seq, **_layout(arr, seg.address))
    if isinstance(base, _Attached):  # attached: same segment, block and lease
        o = base.origin
        if readonly and not o.readonly:  # only the owner can seal it; never advisory
            raise ReadOnlyError(
                f"segment {o.key} of process {o.owner} is shared writable: a read-only "
                "handle of it could not be enforced. Ask its owner for a read-only handle "
                "(driller.handle(a, readonly=True) before any writable one), or share a "
                "read-only copy: driller.handle(driller.array(arr), readonly=True)")
        return Handle(proxy=o.proxy, secret=o.secret, key=o.key, owner=o.owner,
                      nbytes=o.nbytes, readonly=readonly or o.readonly, gen=o.gen,
                      lease=o.lease, seq=_forward_number(base),
                      **_layout(arr, base.region.address))
    hole_handle: Handle = base.handle_for(arr, readonly=readonly)  # a drilled Hole
    return hole_handle


# ------------------------------------------------------------------ attaching

def _buffer_for(h: Handle, readonly: bool) -> tuple[NDArray, int]:
    """A uint8 array over the memory h names, and the segment offset of its first byte."""
    mine = _publish.owned(h.key)
    if mine is not None:
        block_for = getattr(mine, "block_for", None)
        if block_for is not None:  # our own heap segment: only the live block of h.gen
            block = block_for(h.gen)
            if block is not None:
                lease = block.lease
                if h.seq and lease is not None and lease[2] == h.lease and \
                        lease[0] == os.getpid():   # (said as the block lets go)
                    add_run(lease[4], h.seq, h.seq, RANGES_KEPT_PROXY)
                return np.asarray(block), block.offset
        else:  # a drilled Hole of ours
            region = mine.region_for_handle(h)
            if region is not None:
                return np.asarray(region), 0
    if h.owner == os.getpid() and not h.lease:
        raise SegmentReleasedError(f"segment {h.key} was released by its owner (this process)")
    region = mapcache.cache().map(h.proxy, h.secret, h.key, h.nbytes, readonly=readonly,
                                  lease=h.lease, gen=h.gen, seq=h.seq)
    return np.asarray(_Attached(region, h)), 0


def attach(handle: Handle, readonly: bool | None = None) -> NDArray:
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
    if handle.dtype is not None:
        _refuse_objects(np.dtype(handle.dtype), f"attach(): handle {handle.key} names an array")
    if readonly is None:
        readonly = handle.readonly
    elif handle.readonly and not readonly:
        raise DrillerError(f"handle {handle.key} is read-only: attach it with readonly=True")
    raw, start = _buffer_for(handle, readonly)
    if handle.dtype is None or handle.shape is None:
        arr = raw[handle.offset - start:]
    else:
        # (no element: the offset of an empty view of an empty array may lie past
        # its segment, which numpy refuses: it loaded nowhere, and a Pool whose
        # worker returned one waited for ever; any offset holds nothing)
        empty = math.prod(handle.shape) == 0
        arr = np.ndarray(handle.shape, dtype=handle.dtype, buffer=raw,
                         offset=0 if empty else handle.offset - start,
                         strides=handle.strides)
    arr = arr.view(SharedArray)
    if readonly:
        arr.flags.writeable = False
    return arr


_BY_REFERENCE = ("(a pickled SharedArray names shared memory of a running process, not its "
                 "bytes, and is loadable until it has been loaded: to keep arrays in a file, "
                 "pickle them inside `with driller.pickled_by_value():`)")


# the settings whose limit may have ended a lease (the proxy's message names it)
_LEASE_VARS = (_LEASE_SECONDS_VAR, _LEASE_ORPHANS_VAR, _LEASE_IDLE_VAR)


def _rebuild(h: Handle) -> Any:
    """Unpickling a SharedArray."""
    try:
        return attach(h)
    except (ProxyError, SegmentReleasedError) as e:   # (e.g. a pickle kept in a file)
        e.args = (f"{e} {_BY_REFERENCE}",)
        if _reading_a_pool_task(sys._getframe(1)):
            e.args = (f"{e} (an argument of this multiprocessing.Pool task" + (
                ": keep the arrays of queued tasks alive until their results come" +
                "".join(f", or raise {v}" for v in _LEASE_VARS if v in str(e)) + ")"
                if isinstance(e, SegmentReleasedError) else ")"),)
            return _Unloadable(e)
        raise


def _reading_a_pool_task(f: Any) -> bool:
    """Whether this unpickling is a multiprocessing.Pool worker reading its next task
    (frame f: pickle's caller).  An error raised there loses the task: the worker
    dies (or, for an OSError, exits quietly) and the pool waits for its result for
    ever."""
    b = f.f_back if f is not None else None
    return (b is not None and f.f_code.co_name == "get"
            and f.f_globals.get("__name__") == "multiprocessing.queues"
            and b.f_code.co_name == "worker"
            and b.f_globals.get("__name__") == "multiprocessing.pool")


class _Unloadable:
    """What a multiprocessing.Pool task gets for a shared array it could not load:
    any use raises the error that the load raised, so the task fails with it (its
    result an exception the caller sees) instead of the pool hanging."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        object.__setattr__(self, "error", error)

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    def __getattr__(self, name: str) -> Any:
        if _reading_a_pool_task(sys._getframe(1)):   # (pickle takes a method of it, as
            return _Unloadable(self.error)           # for a task of a.sum: used later)
        raise self.error

    def __repr__(self) -> str:
        return f"<driller: a shared array that could not be loaded: {self.error}>"

    __setattr__ = __delattr__ = __reduce_ex__ = __reduce__ = __array__ = __call__ = _raise
    __len__ = __iter__ = __contains__ = __getitem__ = __setitem__ = __delitem__ = _raise
    __bool__ = __index__ = __int__ = __float__ = __complex__ = __buffer__ = _raise
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _raise
    __hash__ = None   # type: ignore[assignment]
    __neg__ = __pos__ = __abs__ = __invert__ = __round__ = __format__ = _raise
    for _op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod",
                "pow", "lshift", "rshift", "and", "or", "xor"):
        for _form in ("__%s__", "__r%s__", "__i%s__"):
            locals()[_form % _op] = _raise
    del _op, _form


def cache_info() -> dict[str, int]:
    """This process's map cache: hits, misses, evictions, entries, bytes mapped."""
    return mapcache.cache().info()


# ------------------------------------------------------------------ constructors

Order = Literal["C", "F"]
OrderKA = Literal["K", "A", "C", "F"]
ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]


def _wrap(block: heap.Block, shape: tuple[int, ...], dtype: np.dtype[Any],
          order: str) -> SharedArray:
    return SharedArray(shape, dtype=dtype, buffer=np.asarray(block),
                       order="F" if order == "F" else "C")


def _refuse_objects(dt: np.dtype[Any], what: str) -> None:
    """Python objects in shared memory would be pointers into one process's heap:
    another process would read them as garbage (a crash), and numpy would never
    count their references."""
    if dt.hasobject:
        raise DrillerError(
            f"{what} of dtype {dt} holding Python objects: shared memory can only hold "
            "plain data (another process would read those pointers as garbage and "
            "crash). Pickle the objects instead (multiprocessing, mmpi send), or use a "
            "fixed-size dtype (e.g. 'U16', 'S16', numbers)")


def _normalize(shape: ShapeLike, dtype: npt.DTypeLike) -> tuple[tuple[int, ...], np.dtype[Any],
                                                                 int]:
    dt = np.dtype(dtype)
    _refuse_objects(dt, "cannot allocate a shared array")
    try:
        dims: tuple[int, ...] = (operator.index(shape),)   # type: ignore[arg-type]
    except TypeError:   # (a numpy array of integers has __index__ too, but is a sequence)
        try:
            dims = tuple(operator.index(s) for s in shape)   # type: ignore[union-attr]
        except TypeError:
            raise TypeError(f"a shape is an integer or a sequence of integers, not "
                            f"{shape!r}") from None
    if any(s < 0 for s in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    items = math.prod(dims)
    nbytes = items * dt.itemsize
    if max(items, nbytes) > _MAX_BYTES:   # (items: for a dtype of itemsize 0)
        raise ValueError(f"array is too big: shape {dims} of {dt} would take "
                         f"{nbytes} bytes, more than numpy can address")
    return dims, dt, nbytes


_MAX_BYTES = np.iinfo(np.intp).max


def empty(shape: ShapeLike, dtype: npt.DTypeLike = float, order: Order = "C") -> SharedArray:
    """Like ``numpy.empty``, in shared memory."""
    dims, dt, nbytes = _normalize(shape, dtype)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    return _wrap(heap.allocate(max(nbytes, 1)), dims, dt, order)


def zeros(shape: ShapeLike, dtype: npt.DTypeLike = float, order: Order = "C") -> SharedArray:
    """Like ``numpy.zeros``, in shared memory."""
    a = empty(shape, dtype, order)
    if a.nbytes < heap.LARGE_BYTES:  # arena blocks are reused; a new segment reads as zeros
        a.fill(0)
    return a


def empty_like(a: npt.ArrayLike, dtype: npt.DTypeLike | None = None,
               order: OrderKA = "K") -> SharedArray:
    """Like ``numpy.empty_like``, in shared memory (``order`` K and A keep a's layout)."""
    src = np.asarray(a)
    return empty(src.shape, src.dtype if dtype is None else dtype, _out_order(src, order))


def _out_order(src: NDArray, order: str) -> Order:
    if order in ("K", "A"):
        return "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'K', 'A', 'C' or 'F', not {order!r}")
    return "F" if order == "F" else "C"


def zeros_like(a: npt.ArrayLike, dtype: npt.DTypeLike | None = None,
               order: OrderKA = "K") -> SharedArray:
    """Like ``numpy.zeros_like``, in shared memory."""
    out = empty_like(a, dtype, order)
    out.fill(0)
    return out


def array(obj: npt.ArrayLike, dtype: npt.DTypeLike | None = None,
          order: OrderKA = "K") -> SharedArray:
    """Copy ``obj`` (anything numpy.asarray takes) into a new shared array."""
    src = np.asarray(obj, dtype=dtype)
    _refuse_objects(src.dtype, "cannot copy into shared memory an array")
    out_order = _out_order(src, order)
    if src.nbytes >= heap.LARGE_BYTES and (src.flags.c_contiguous if out_order == "C"
                                           else src.flags.f_contiguous):
        # one copy straight into the new memfd (pwrite), no page faults on our side
        block = heap.allocate(src.nbytes, data=(src.__array_interface__["data"][0], src.nbytes))
        return _wrap(block, src.shape, src.dtype, out_order)
    out = empty_like(src, order=order)
    np.copyto(out, src, casting="no")
    return out
