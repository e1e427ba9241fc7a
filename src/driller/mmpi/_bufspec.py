"""The one parser of mpi4py buffer specifications (p2p and collectives alike).

Forms, with mpi4py's meaning (``count`` and ``displ`` always in ELEMENTS of the
datatype; the datatype is inferred from the buffer's format when absent)::

    buf                                   the whole buffer
    [buf, dtype]                          the whole buffer, as dtype elements
    [buf, count]                          count elements of the buffer's own type
    [buf, count, dtype]                   count dtype elements
    [buf, (count, displ), dtype]          count elements from element displ
    [buf, count, displ, dtype]            the same
    [buf, (counts, displs), dtype]        vector collectives: a block per rank
    [buf, counts, displs, dtype]          the same

:func:`message` returns the flat byte view a point-to-point call moves;
:func:`parse` returns a :class:`Buf` (bytes, dtype, per-block counts) for
collectives, which split a buffer into one block per rank.
"""

from __future__ import annotations

import mmap
import operator
import struct
import sys
import warnings

import numpy as np

from .. import _errcodes, _linux, _pep3118
from ..errors import MmpiBufferError, MmpiError, MmpiKeyError, MmpiTypeError, MmpiValueError
from . import _pack
from ._const import BOTTOM
from ._datatype import (Datatype, MessageValueError, as_datatype, check_message_type,
                        datatype_of, dtype_of, is_datatype, is_derived, message_runs, np_dtype,
                        set_buffer_view)

__all__ = ["EMPTY", "Buf", "byteview", "message", "spec_view", "recv_message", "parse",
           "typed_block", "wblocks", "intlist", "as_bytes", "get_buffer"]

EMPTY = memoryview(b"")
_PLAIN_FORMATS = frozenset("bBhHiIlLqQnNefdgFDG?cx") | {"Zf", "Zd", "Zg"}


def _holds_pointers(obj, fmt: str) -> bool:
    """True if the items of a buffer hold PyObject pointers (numpy dtype object, or
    a structured dtype with an object field): raw bytes would be wrong (Send: the
    sender's addresses) or fatal (Recv: garbage written over live pointers)."""
    dt = getattr(obj, "dtype", None)
    if isinstance(dt, np.dtype):
        return dt.hasobject
    return _pep3118.holds_objects(fmt)


def _pointer_error(obj, writable: bool, what: str) -> MmpiError:
    dt = getattr(obj, "dtype", None)
    kind = f"dtype {dt}" if dt is not None else f"format {memoryview(obj).format!r}"
    lower = {"Sendrecv_replace": "sendrecv"}.get(what, what.lower())
    return MmpiError(f"{what}: the {'receive' if writable else 'send'} buffer "
                     f"({type(obj).__name__} of {kind}) holds Python object pointers, which "
                     f"cannot be moved as bytes; use the lowercase method ({lower}(), which "
                     f"pickles the objects) or an array of a plain dtype")


def byteview(obj, writable: bool, what: str, _dtype: list | None = None) -> memoryview:
    """A flat byte memoryview of a contiguous buffer-protocol object, or of a host
    buffer exported through DLPack or the CUDA array interface (then the element
    dtype it describes, None for bytes, is appended to ``_dtype`` if given).

    Buffers whose items are object pointers are refused (MmpiError); numpy
    datetime64/timedelta64 arrays (which numpy does not export through the
    buffer protocol) are viewed as their bytes."""
    try:
        mv = memoryview(obj)
    except TypeError:
        if obj is None:
            return EMPTY if not writable else memoryview(bytearray(0))
        exp = _exported(obj, writable, what)
        if exp is not None:
            if _dtype is not None:
                _dtype.append(exp[1])
            return exp[0]
        raise MmpiTypeError(f"{what}: {type(obj).__name__} does not support the buffer "
                            f"protocol (nor DLPack, nor the CUDA array interface); pass a "
                            f"numpy array, bytearray, ... (lowercase methods move objects)"
                            ) from None
    except ValueError as e:  # numpy: "cannot include dtype 'M' in a buffer"
        if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
            raise MmpiError(f"{what}: {type(obj).__name__} cannot be used as a buffer: "
                            f"{e}") from None
        if not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            raise MmpiBufferError(f"{what}: the buffer is not contiguous; pass "
                                  f"np.ascontiguousarray(x) and copy back after a receive"
                                  ) from None
        if writable and not obj.flags.writeable:
            raise MmpiBufferError(f"{what}: the receive buffer ({type(obj).__name__}) is "
                                  f"read-only; receive into a writable buffer") from None
        flat = obj.ravel(order="K")
        return memoryview(flat.view(np.uint8)) if flat.size else memoryview(bytearray(0))
    if mv.c_contiguous and mv.ndim == 1 and mv.format == "B" and not (writable and mv.readonly):
        return mv
    if mv.format not in _PLAIN_FORMATS and _holds_pointers(obj, mv.format):
        raise _pointer_error(obj, writable, what)
    if writable and mv.readonly:
        raise MmpiBufferError(f"{what}: the receive buffer ({type(obj).__name__}) is "
                              f"read-only; receive into a writable buffer (bytearray, "
                              f"numpy array)")
    if not mv.c_contiguous:
        if mv.f_contiguous:
            arr = np.asarray(obj)
            flat = arr.ravel(order="K")
            if not np.shares_memory(flat, arr):  # pragma: no cover - a copy: refuse
                raise MmpiError(f"{what}: cannot view the Fortran-ordered buffer in place; "
                                f"pass np.ascontiguousarray(x)")
            mv = memoryview(flat.view(np.uint8))
            if writable and mv.readonly:  # pragma: no cover
                raise MmpiError(f"{what}: the receive buffer is read-only")
            return mv
        raise MmpiBufferError(f"{what}: the buffer is not contiguous (a strided numpy view "
                              f"such as a[:, ::2] or a column?); pass "
                              f"np.ascontiguousarray(x) and copy back after a receive")
    if mv.ndim != 1 or mv.format != "B":
        if not mv.nbytes:   # (cast refuses a zero in the shape, as an (n, 0) array's)
            return memoryview(bytearray(0)) if writable else EMPTY
        mv = mv.cast("B")
    return mv



class Buf:
    """A parsed buffer: flat bytes ``mv``, numpy ``dtype``, MPI ``dt``,
    ``counts``/``displs`` in elements (one per block)."""

    __slots__ = ("mv", "dtype", "dt", "counts", "displs", "a", "unpack")

    def __init__(self):
        self.a = None
        self.unpack = None

    def finish(self) -> None:
        """Once a receive into this buffer is over: a derived datatype's staged bytes
        are scattered into the user's buffer (nothing to do for any other buffer)."""
        if self.unpack is not None:
            self.unpack()

    def arr(self):
        if self.a is not None:
            return self.a
        return np.frombuffer(self.mv, self.dtype) if len(self.mv) else np.empty(0, self.dtype)

    def block(self, i):
        s = self.dtype.itemsize
        return self.mv[self.displs[i] * s:(self.displs[i] + self.counts[i]) * s]

    @property
    def nbytes(self):
        return len(self.mv)


def intlist(x, n, what, name):
    """``n`` ints from a sequence of ``n`` integers (numpy arrays too), or from one
    integer (a numpy scalar or 0-d array too) meaning the same for every rank."""
    try:
        xs = [operator.index(x)] * n
    except TypeError:
        try:
            xs = [operator.index(v) for v in x]
        except TypeError:
            raise MmpiTypeError(f"{what}: {name} must be an int or a sequence of {n} ints, "
                                f"got {x!r}") from None
    if len(xs) != n:
        raise MmpiValueError(f"{what}: {name} has {len(xs)} entries, the communicator has "
                             f"{n} ranks")
    if any(v < 0 for v in xs):
        raise MmpiValueError(f"{what}: negative entry in {name} {xs}")
    return xs


def _index_or_none(x):
    try:
        return operator.index(x)
    except TypeError:
        return None


def _fields(spec, vector: bool, what: str):
    """(buf, count, displ, datatype or None) of a list/tuple buffer spec, with
    mpi4py's meaning of each form (see the module docstring)."""
    dt = None
    count = displ = None
    buf = spec[0]
    rest = list(spec[1:])
    if rest and (is_datatype(rest[-1]) or isinstance(rest[-1], str)):  # a str: a datatype
        dt = as_datatype(rest.pop())
    elif len(rest) >= 2 and rest[-1] is None:   # [buf, count(, displ), None]: inferred
        rest.pop()
    if len(rest) == 1:
        if vector and isinstance(rest[0], (list, tuple)) and len(rest[0]) == 2 and (
                isinstance(rest[0], tuple) or
                all(isinstance(v, (list, tuple, type(None))) or hasattr(v, "__len__")
                    for v in rest[0])):
            # (counts, displs), as mpi4py: a tuple of two is that pair (each a
            # sequence, an int count for every block, an int stride, or None)
            count, displ = rest[0]
        elif isinstance(rest[0], (list, tuple)) and not vector and len(rest[0]) == 2:
            count, displ = rest[0]
        else:
            count = rest[0]
    elif len(rest) == 2:
        count, displ = rest
    elif rest:
        raise MmpiValueError(f"{what}: cannot parse buffer spec {spec!r}")
    return buf, count, displ, dt


def _check_items(spec, what: str) -> None:
    """A list/tuple buffer spec has 2 to 4 items (a ValueError otherwise, as mpi4py's)."""
    if not 2 <= len(spec) <= 4:
        raise MmpiValueError(f"{what}: message: expecting 2 to 4 items, got a spec of "
                             f"{len(spec)}: use buf, [buf, datatype], [buf, count], "
                             f"[buf, count, datatype] or [buf, (count, displ), datatype]")


def parse(spec, writable, what, blocks=1, vector=False, staged=False):
    """Parse an mpi4py buffer spec.  ``blocks``: the buffer holds that many equal
    blocks (an explicit count is per block, as mpi4py's); ``vector``: counts
    and displacements per block ([buf, counts, displs, dt] and friends).

    A derived datatype that is not contiguous is packed: a send buffer once (the
    gather copy); a receive buffer only if the caller says it is ``staged``: its
    bytes are then gathered into a staging buffer (``mv``, so that IN_PLACE and the
    blocks nobody writes keep their values) and :meth:`Buf.finish` scatters them
    back once the receives are over."""
    b = Buf()
    if type(spec) is np.ndarray and not vector and spec.flags.c_contiguous and \
            (spec.flags.writeable or not writable) and spec.dtype.kind in "biufc" and \
            spec.size % blocks == 0 and spec.dtype.byteorder != _SWAPPED_ORDER:
        # fast path: a plain contiguous numeric numpy array
        a = spec.reshape(-1)
        b.a = a
        b.mv = memoryview(a).cast("B")
        b.dtype = a.dtype
        b.dt = datatype_of(a.dtype)
        count = a.size // blocks
        b.counts = [count] * blocks
        b.displs = [i * count for i in range(blocks)]
        return b
    if spec is None:
        spec = b""
    if type(spec) in (list, tuple):
        _check_items(spec, what)
        buf, count, displ, dt = _fields(spec, vector, what)
    else:
        buf, count, displ, dt = spec, None, None, None
    if dt is None and isinstance(count, Datatype):  # pragma: no cover - defensive
        dt, count = count, None
    if dt is not None and dt._t is None:   # DATATYPE_NULL: mpi4py's checks, then ERR_TYPE
        if displ is not None and displ != 0:
            raise MessageValueError(f"{what}: cannot handle displacement, datatype is null")
        if count is None:
            raise MessageValueError(f"{what}: cannot infer count, datatype is null")
        check_message_type(dt, what)
    if dt is not None and not dt.is_predefined:
        check_message_type(dt, what)
        if is_derived(dt):
            if writable and not staged:
                raise MmpiError(f"{what}: a derived datatype that is not contiguous is "
                                f"accepted in the send buffers of collectives, not in their "
                                f"receive buffers; receive into a contiguous buffer and "
                                f"unpack (Datatype.Unpack)", error_class=_errcodes.ERR_TYPE)
            return _parse_derived(b, buf, count, displ, dt, what, blocks, vector, writable)
    edt = []
    mv = byteview(buf, writable, what, edt)
    if dt is not None:
        dtype = np_dtype(dt)
    else:
        if edt:   # a DLPack / CUDA-array-interface exporter: the dtype it describes
            dtype = edt[0] if edt[0] is not None else np.dtype("B")
        else:
            dtype = dtype_of(buf)
            if dtype.byteorder == _SWAPPED_ORDER:
                _native(dtype, what)
        dt = datatype_of(dtype)
    size = dtype.itemsize
    if size == 0:
        raise MmpiValueError(f"{what}: datatype {dtype} has size 0")
    if len(mv) % size:
        # a byte buffer holding whole elements is fine; a partial element is not
        if count is None:
            raise MmpiValueError(f"{what}: buffer of {len(mv)} bytes is not a whole number of "
                            f"{dt.name} ({size} bytes)")
    total = len(mv) // size
    b.dtype = dtype
    b.dt = dt
    if vector:
        if count is None:
            # mpi4py: a buffer alone splits into blocks, one per rank (the first
            # total % blocks ranks get one element more)
            count = [total // blocks + (total % blocks > i) for i in range(blocks)]
        counts = intlist(count, blocks, what, "counts")
        stride = _index_or_none(displ)
        if displ is None:
            displs, acc = [], 0
            for c in counts:
                displs.append(acc)
                acc += c
        elif stride is not None and not isinstance(displ, bool):
            # mpi4py: an int displacement is a stride, block i starts at i * displ
            if stride < 0:
                raise MmpiValueError(f"{what}: negative displacement stride {stride}")
            displs = [i * stride for i in range(blocks)]
        else:
            displs = intlist(displ, blocks, what, "displacements")
        for i, (c, d) in enumerate(zip(counts, displs)):
            if d + c > total:
                raise MmpiValueError(f"{what}: block {i} ({c} x {dt.name} at displacement {d}) "
                                f"overruns the {len(mv)}-byte buffer ({total} elements)")
        b.mv = mv[:total * size]
        b.counts, b.displs = counts, displs
        return b
    start = 0
    if displ is not None:
        if not isinstance(displ, int) or displ < 0:
            raise MmpiValueError(f"{what}: invalid displacement {displ!r}")
        start = displ
    if count is None:
        n = total - start
        if n < 0:
            raise MmpiValueError(f"{what}: displacement {start} past the end of the buffer")
        if n % blocks:
            raise MmpiValueError(f"{what}: buffer of {n} x {dt.name} does not split into {blocks} "
                            f"equal blocks (one per rank)")
        count = n // blocks
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise MmpiValueError(f"{what}: invalid count {count!r}")
    end = start + count * blocks
    if end > total:
        raise MmpiValueError(f"{what}: {count * blocks} x {dt.name} from element {start} overruns "
                        f"the {len(mv)}-byte buffer")
    b.mv = mv[start * size:end * size]
    b.counts = [count] * blocks
    b.displs = [i * count for i in range(blocks)]
    return b


def _native(dtype, what: str) -> None:
    """A datatype is inferred only from a buffer in native byte order (as mpi4py)."""
    if dtype.byteorder not in "=|" and not dtype.isnative:
        raise MmpiBufferError(f"{what}: cannot infer an MPI datatype from a buffer of "
                              f"non-native byte order ({dtype.str}); byte-swap it "
                              f"(x.astype(x.dtype.newbyteorder('='))). A [buf, datatype] "
                              f"spec moves its bytes as they are and reads them in native "
                              f"order, as MPI does: right only for a peer that reads them "
                              f"in this same order, wrong for any reduction")


def spec_view(spec, writable: bool, copy: bool = False, sliced: bool = False):
    """The fast path of :func:`message` for the specs mpi4py programs pass most,
    ``[buf, count, dt]`` and ``[buf, dt]`` with ``dt`` a predefined datatype of
    one contiguous run per element and ``buf`` a C-contiguous exporter of plain
    items: their flat bytes, or None when any of that does not hold (then the
    general parser decides, and raises what is wrong).  Reads only what the
    datatype's type object already holds (its size, cached per type object),
    allocates no more than the views it returns.  ``copy``: a small message to
    send from ``bytes``/``bytearray``/``mmap`` may come back as a ``bytes`` copy
    (cheaper than a view and its slice; for callers that only copy it on).
    ``sliced`` (receives): for ``[b, count, dt]`` with ``b`` a ``bytearray`` or an
    ``mmap``, return the int number of bytes to receive into ``b`` itself, written
    by slice assignment: no view of ``b`` is made, so none outlives the call (a
    read-only ``mmap`` is found out by the write, before the message is consumed)."""
    n = len(spec)
    if n == 3:
        buf, count, dt = spec
        if type(count) is not int or count < 0:
            return None
    elif n == 2:
        buf, dt = spec
        count = -1
    else:
        return None
    if type(dt) is not Datatype:
        return None
    t = dt._t
    size = _SPEC_SIZES.get(t)
    if size is None:
        if t is None or not t.predef or not t.dense or t.npd is None:
            return None
        size = _SPEC_SIZES[t] = t.size
    bt = type(buf)
    if bt in _BYTE_EXPORTERS:   # flat, C-contiguous bytes: no format checks
        if copy and 0 <= count * size <= _SMALL_COPY:
            count *= size
            try:
                n = len(buf)
            except ValueError:   # a closed mmap: the general parser says so
                return None
            if count > n:
                return None
            return buf[:count] if count != n or bt is not bytes else buf
        if sliced and count >= 0 and bt is not bytes:
            try:
                n = len(buf)
            except ValueError:   # a closed mmap: the general parser says so
                return None
            count *= size
            return count if count <= n else None
        try:
            mv = memoryview(buf)
        except (TypeError, ValueError):
            return None
        if writable and mv.readonly:
            return None
    else:
        try:
            mv = memoryview(buf)
            fmt = mv.format
            if fmt != "B" or mv.ndim != 1 or not mv.c_contiguous:
                if fmt not in _PLAIN_FORMATS:
                    return None
                mv = mv.cast("B")   # (raises for what is not C-contiguous, or empty)
        except (TypeError, ValueError):
            return None
        if writable and mv.readonly:
            return None
    n = len(mv)
    if count < 0:
        if n % size:
            return None
        return mv
    count *= size
    if count > n:
        return None
    return mv if count == n else mv[:count]


# spec_view's caches: a predefined dense datatype's type object -> its size; the
# exporters whose buffer is always one flat, C-contiguous run of bytes ('B', 1-D)
_SPEC_SIZES: dict = {}
_BYTE_EXPORTERS = frozenset((bytes, bytearray, mmap.mmap))
_SMALL_COPY = 1024   # send specs up to this many bytes from those: a bytes copy


def message(spec, writable: bool, what: str) -> memoryview:
    """The flat bytes a point-to-point call moves for ``spec`` (see the forms above)."""
    t = type(spec)
    if t is list or t is tuple:
        mv = spec_view(spec, writable)
        if mv is not None:
            return mv
    else:
        try:  # fast path: a flat, writable-enough byte buffer
            mv = memoryview(spec)
            fmt = mv.format
            if fmt == "B" and mv.ndim == 1 and mv.c_contiguous and not (
                    writable and mv.readonly):
                return mv
            if fmt[:1] == _SWAPPED_ORDER:   # the datatype would be inferred from it
                _native(np.dtype(fmt), what)
        except (TypeError, ValueError):
            pass
        return byteview(spec, writable, what)
    _check_items(spec, what)
    if _derived_spec(spec):
        if writable:
            raise MmpiError(f"{what}: receiving into a derived datatype is not supported by "
                            f"this call; receive into a contiguous buffer",
                            error_class=_errcodes.ERR_TYPE)
    return parse(spec, writable, what).mv


def _derived_spec(spec) -> bool:
    """True if a list/tuple spec names a datatype that is not predefined."""
    if len(spec) < 2:
        return False
    last = spec[-1]
    return isinstance(last, Datatype) and last._t is not None and not last._t.predef


def _derived_view(buf, count, displ, dt: Datatype, writable: bool, what: str,
                  byte_start: int = 0):
    """(uint8 array, runs, count) of a message of a derived type.
    ``buf`` None or MPI.BOTTOM: the type's displacements are absolute addresses."""
    t = check_message_type(dt, what)
    ext = t.ub - t.lb
    absolute = buf is None or buf is BOTTOM
    if absolute:
        arr = None
        nbytes = 0
    else:
        mv = byteview(buf, writable, what)
        arr = np.frombuffer(mv, np.uint8) if len(mv) else np.zeros(0, np.uint8)
        nbytes = len(mv)
    start = 0
    if displ is not None:
        if not isinstance(displ, int) or isinstance(displ, bool) or displ < 0:
            raise MessageValueError(f"{what}: invalid displacement {displ!r}")
        if displ and ext <= 0:
            raise MessageValueError(f"{what}: cannot handle displacement, datatype extent "
                                    f"{ext} (lb:{t.lb}, ub:{t.ub})")
        start = displ * ext
    start += byte_start
    if count is None:
        if absolute:
            raise MessageValueError(f"{what}: a message at MPI.BOTTOM needs an explicit count")
        if ext <= 0:
            raise MessageValueError(f"{what}: cannot infer count, datatype extent {ext} "
                                    f"(lb:{t.lb}, ub:{t.ub})")
        if (nbytes - start) % ext:
            raise MessageValueError(f"{what}: cannot infer count, buffer length "
                                    f"{nbytes - start} is not a multiple of datatype extent "
                                    f"{ext} (lb:{t.lb}, ub:{t.ub})")
        count = (nbytes - start) // ext if nbytes > start else 0
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise MmpiError(f"{what}: invalid count {count!r} (an int >= 0)",
                        error_class=_errcodes.ERR_COUNT)
    runs = message_runs(t, count)
    if runs.total == 0:
        return np.zeros(0, np.uint8), runs, count
    if start:
        runs = runs.shifted(start)
    lo, hi = runs.lo, runs.hi
    if absolute:
        if lo <= 0:
            raise MmpiError(f"{what}: a message at MPI.BOTTOM needs absolute addresses "
                            f"(MPI.Get_address) as the datatype's displacements",
                            error_class=_errcodes.ERR_BUFFER)
        arr = np.frombuffer(_linux.memory_at(lo, hi - lo, readonly=not writable), np.uint8)
        return arr, runs.shifted(-lo), count
    if lo < 0 or hi > nbytes:
        raise MmpiError(f"{what}: {count} item(s) of the derived datatype (size {t.size}, "
                        f"extent {ext}, lb {t.lb}) reach bytes {lo}..{hi} of a {nbytes}-byte "
                        f"buffer; pass a larger buffer or a smaller count",
                        error_class=_errcodes.ERR_BUFFER)
    return arr, runs, count


def typed_block(buf, count: int, byte_displ: int, dt, writable: bool, what: str):
    """``(mv, unpack)`` of one block of a "w" collective (``Alltoallw``,
    ``Neighbor_alltoallw``): ``count`` items of ``dt`` from byte ``byte_displ`` of
    ``buf`` (``MPI.BOTTOM``/None: absolute addresses).  Contiguous types: a slice of
    the buffer, ``unpack`` None.  Other derived types: a send gets the packed bytes;
    a receive gets a staging buffer and ``unpack(nbytes)`` to call once it is filled."""
    dt = as_datatype(dt)
    t = check_message_type(dt, what)
    if not is_derived(dt) and buf is not None and buf is not BOTTOM:
        mv = byteview(buf, writable, what)
        # (a pair type, MPI.DOUBLE_INT...: its items with their padding, as p2p moves them)
        lo, n = (byte_displ + t.tlb, count * t.size) if t.npd is None else \
            (byte_displ, count * (t.ub - t.lb))
        if byte_displ < 0 or lo + n > len(mv):
            raise MmpiError(f"{what}: {count} x {dt.name or 'datatype'} at byte {byte_displ} "
                            f"overruns the {len(mv)}-byte buffer",
                            error_class=_errcodes.ERR_BUFFER)
        return mv[lo:lo + n], None
    arr, runs, count = _derived_view(buf, count, None, dt, writable, what, byte_displ)
    if not writable:
        out = np.empty(count * t.size, np.uint8)
        _pack.gather(arr, runs, out)
        return (memoryview(out) if out.size else EMPTY), None
    return _staged(arr, runs, count * t.size, True)   # (IN_PLACE reads what it holds)


def _staged(arr, runs, nbytes: int, prefill: bool):
    """``(mv, unpack)``: a staging buffer of ``nbytes`` for a receive into the runs of
    ``arr`` (``prefill``: holding their bytes) and ``unpack(n)``, which scatters the
    first ``n`` bytes received back into the runs."""
    staging = np.empty(nbytes, np.uint8)
    if prefill:
        _pack.gather(arr, runs, staging)

    def unpack(n: int) -> None:
        r = runs
        if n < staging.size:
            r = _pack.Runs(*_cut(runs.off + runs.base, runs.len, n))
        _pack.scatter(staging, r, arr)

    return (memoryview(staging) if staging.size else memoryview(bytearray(0))), unpack


def wblocks(spec, writable: bool, what: str, n: int):
    """The ``n`` blocks of an mpi4py "w" buffer spec (``Alltoallw``,
    ``Neighbor_alltoallw``, their nonblocking and intercommunicator forms):
    ``[buf, (counts, displs), datatypes]`` or ``[buf, counts, displs, datatypes]``,
    displacements in BYTES, one datatype per block (or one for all);
    ``[buf, datatypes]`` is one item of each at byte 0.  ``buf`` ``MPI.BOTTOM``
    (or None): the datatypes' displacements are addresses (``MPI.Get_address``).
    Each block is :func:`typed_block`'s.  Returns ``(views, finish)``: ``finish``
    (None when no block is staged) scatters a receive's staged blocks of derived
    datatypes into the user's buffer once they are filled."""
    if type(spec) not in (list, tuple):
        raise MmpiValueError(f"{what}: message: expecting 2 to 4 items [buf, counts, "
                             f"displs, datatypes], got a {type(spec).__name__}")
    _check_items(spec, what)
    counts = displs = None
    if len(spec) == 2:
        buf, types = spec
    elif len(spec) == 3:
        buf, cd, types = spec
        try:
            counts, displs = cd
        except (TypeError, ValueError):
            raise MmpiValueError(f"{what}: expecting (counts, displacements) as the second "
                                 f"item, got {cd!r}") from None
    else:
        buf, counts, displs, types = spec
    if n == 0:   # (a rank without neighbours in that direction)
        if buf is not None and buf is not BOTTOM:
            byteview(buf, writable, what)
        return [], None
    absolute = buf is None or buf is BOTTOM
    if counts is None and displs is None and not absolute:   # one item per block, at 0
        counts, displs = [1] * n, [0] * n
    if counts is None or displs is None:
        raise MmpiValueError(f"{what}: give the counts and the byte displacements of the "
                             f"blocks: [buf, (counts, displs), datatypes]" +
                             (" (MPI.BOTTOM requires counts)" if absolute else ""))
    counts = intlist(counts, n, what, "counts")
    displs = intlist(displs, n, what, "displacements")
    if is_datatype(types) or isinstance(types, str):
        types = [types] * n
    else:
        try:
            types = list(types)
        except TypeError:
            raise MmpiTypeError(f"{what}: pass a datatype or a sequence of {n} datatypes, "
                                f"got {types!r}") from None
        if len(types) != n:
            raise MmpiValueError(f"{what}: datatypes has {len(types)} entries, for {n} "
                                 f"blocks (one datatype per block)")
    views, staged = [], []
    for c, d, t in zip(counts, displs, types):
        if not (is_datatype(t) or isinstance(t, str)):
            raise MmpiTypeError(f"{what}: {t!r} is not a datatype")
        mv, unpack = typed_block(buf, c, d, t, writable, what)
        views.append(mv)
        if unpack is not None:
            staged.append((unpack, len(mv)))
    if not staged:
        return views, None

    def finish() -> None:
        for unpack, nbytes in staged:
            unpack(nbytes)
    return views, finish


def _parse_derived(b, buf, count, displ, dt, what, blocks, vector, writable=False):
    """A collective's buffer of a derived type, packed (the one gather copy):
    ``b.dtype`` is one opaque element per item, counts and displacements in items.
    A receive buffer (``writable``) also gets ``b.unpack``, the scatter back."""
    size = dt._t.size
    b.dt = dt
    b.dtype = np.dtype(f"V{size}") if size else np.dtype("B")
    if not vector:
        if count is not None:
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise MmpiError(f"{what}: invalid count {count!r}",
                                error_class=_errcodes.ERR_COUNT)
            count *= blocks
        parts = [_derived_view(buf, count, displ, dt, writable, what)]
        n = parts[0][2]
        if n % blocks:
            raise MmpiError(f"{what}: {n} items of the datatype do not split into {blocks} "
                            f"equal blocks (one per rank)")
        counts = [n // blocks] * blocks
    else:   # counts and displacements (in extents) per block
        if count is None:   # (a ValueError, as mpi4py's "cannot infer count")
            raise MessageValueError(f"{what}: a vector buffer of a derived datatype needs "
                                    f"its counts: [buf, (counts, displs), datatype]")
        counts = intlist([count] * blocks if isinstance(count, int) else count, blocks, what,
                         "counts")
        if displ is None:
            displs, acc = [], 0
            for c in counts:
                displs.append(acc)
                acc += c
        elif isinstance(displ, int):
            displs = [i * displ for i in range(blocks)]
        else:
            displs = intlist(displ, blocks, what, "displacements")
        parts = [_derived_view(buf, c, d, dt, writable, what) for c, d in zip(counts, displs)
                 if c]
    packed = np.empty(sum(c for _, _, c in parts) * size, np.uint8)
    pos = 0
    for arr, runs, c in parts:
        _pack.gather(arr, runs, packed[pos:pos + c * size])
        pos += c * size
    b.displs, acc = [], 0
    for c in counts:
        b.displs.append(acc)
        acc += c
    b.counts = counts
    b.mv = memoryview(packed) if packed.size else (memoryview(bytearray(0)) if writable
                                                   else EMPTY)
    if writable:
        def unpack() -> None:
            at = 0
            for arr, runs, c in parts:
                _pack.scatter(packed[at:at + c * size], runs, arr)
                at += c * size
        b.unpack = unpack
    return b


def recv_message(spec, what: str):
    """``(mv, unpack)`` of a receive buffer spec: ``unpack`` is None for contiguous
    buffers; for a derived datatype ``mv`` is a packed staging buffer and
    ``unpack(nbytes)`` scatters the ``nbytes`` received into the user's buffer."""
    t = type(spec)
    if t is list or t is tuple:
        mv = spec_view(spec, True)
        if mv is not None:
            return mv, None
    if (t is not list and t is not tuple) or not _derived_spec(spec):
        return message(spec, True, what), None
    buf, count, displ, dt = _fields(spec, False, what)
    if not is_derived(dt):
        return parse(spec, True, what).mv, None
    arr, runs, count = _derived_view(buf, count, displ, dt, True, what)
    return _staged(arr, runs, count * dt._t.size, False)


def _cut(roff, rlen, n):
    """The runs covering the first ``n`` bytes of the packed stream."""
    end = np.cumsum(rlen)
    k = int(np.searchsorted(end, n, side="left"))
    if k >= rlen.size:
        return roff, rlen
    ro, rl = roff[:k + 1].copy(), rlen[:k + 1].copy()
    rl[k] -= int(end[k]) - n
    return ro, rl


set_buffer_view(byteview)   # Datatype.Pack/Unpack take their buffers as messages do


def as_bytes(a) -> memoryview:
    """A flat byte view of a contiguous numpy array."""
    return memoryview(a).cast("B") if a.size else EMPTY


# ------------------------------------------------------------------ exporters without the buffer protocol
# mpi4py accepts, after the buffer protocol, objects exposing DLPack (``__dlpack__`` and
# ``__dlpack_device__``) and then the CUDA array interface (``__cuda_array_interface__``).
# driller moves host memory only: a descriptor whose memory is not mapped readable (and
# writable, for a receive) in this process, e.g. a GPU device pointer, is refused, and
# nothing it points to is ever read.  The views keep the exporter (and the DLPack
# capsule, whose destructor frees the producer's tensor once) alive while they live.

_KINDS = {("b", 1): "?",
          ("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "l",
          ("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "L",
          ("f", 2): "e", ("f", 4): "f", ("f", 8): "d", ("f", np.dtype("g").itemsize): "g",
          ("c", 8): "F", ("c", 16): "D", ("c", 2 * np.dtype("g").itemsize): "G"}
_DL_KINDS = {0: "i", 1: "u", 2: "f", 5: "c", 6: "b"}          # DLDataTypeCode -> typestr kind
_DL_HOST = {1: "CPU", 3: "CUDAHost", 11: "ROCMHost", 13: "CUDAManaged"}
_DL_TENSOR = struct.Struct("<QIiiBBHQQQ")   # data, device, ndim, dtype, shape, strides, offset
_DL_VERSIONED_HEAD = struct.Struct("<IIQQQ")  # version, manager_ctx, deleter, flags
_DL_READ_ONLY = 1
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"
_SWAPPED_ORDER = ">" if sys.byteorder == "little" else "<"
_MAX_NDIM = 1024


def get_buffer(obj, writable: bool, what: str = "buffer") -> tuple[memoryview, int]:
    """mpi4py's PyMPI_GetBuffer: (flat byte view, kind) of any buffer ``obj``:
    kind 0 for the buffer protocol, the DLPack device type (1: CPU) for a DLPack
    exporter, 2 (kDLCUDA) for a CUDA-array-interface exporter (as mpi4py reports
    it, whatever memory it points at: MPI.buffer then refuses CPU access to it).
    The view is of host memory in every case (see the exporters below)."""
    try:
        mv = memoryview(obj)
    except TypeError:
        try:
            dlpack, device = obj.__dlpack__, obj.__dlpack_device__
        except AttributeError:
            kind = 2 if hasattr(obj, "__cuda_array_interface__") else 0
        else:
            kind = _dlpack_device(obj, device, what)[0]
        return byteview(obj, writable, what), kind
    if writable and mv.readonly:
        raise MmpiBufferError(f"{what}: {type(obj).__name__} is read-only")
    return byteview(obj, writable, what), 0


def _exported(obj, writable: bool, what: str):
    """(flat byte view, element dtype or None for bytes) of a DLPack or CUDA-array-
    interface exporter; None if ``obj`` is neither."""
    try:
        dlpack, device = obj.__dlpack__, obj.__dlpack_device__
    except AttributeError:
        pass
    else:
        return _dlpack_view(obj, dlpack, device, writable, what)
    try:
        cai = obj.__cuda_array_interface__
    except AttributeError:
        return None
    return _cai_view(obj, cai, writable, what)


def _host_view(obj, keep, addr: int, nbytes: int, readonly: bool, writable: bool,
               check_host: bool, what: str, kind: str) -> memoryview:
    if nbytes == 0:
        return memoryview(bytearray(0)) if writable else EMPTY
    if check_host and not _linux.host_accessible(addr, nbytes, writable):
        raise MmpiBufferError(
            f"{what}: the {kind} of {type(obj).__name__} points at {nbytes} bytes at "
            f"{addr:#x} that are not {'writable' if writable else 'readable'} host memory "
            f"of this process (GPU device memory?): driller.MPI moves host memory only; "
            f"copy the data to a host array first (e.g. cupy.asnumpy)")
    return _linux.memory_at(addr, nbytes, readonly=readonly or not writable, keep=keep)


def _dlpack_device(obj, device, what: str) -> tuple[int, int]:
    name = type(obj).__name__
    try:
        device_type, device_id = device()
        return operator.index(device_type), operator.index(device_id)
    except TypeError as e:
        raise MmpiTypeError(f"{what}: {name}.__dlpack_device__() must return a pair of "
                            f"ints (device_type, device_id): {e}") from None
    except ValueError as e:
        raise MmpiValueError(f"{what}: {name}.__dlpack_device__() must return a pair "
                             f"(device_type, device_id): {e}") from None


def _dlpack_view(obj, dlpack, device, writable: bool, what: str):
    name = type(obj).__name__
    device_type = _dlpack_device(obj, device, what)[0]
    cpu = device_type == 1
    try:   # DLPack >= 1.0: a versioned capsule (it carries a read-only flag)
        capsule = dlpack(max_version=(1, 0), copy=False) if cpu else \
            dlpack(stream=-1, max_version=(1, 0), copy=False)
        cname = b"dltensor_versioned"
    except TypeError:   # DLPack 0.x
        capsule = dlpack() if cpu else dlpack(stream=-1)
        cname = b"dltensor"
    ptr = _linux.capsule_pointer(capsule, cname)
    if ptr is None:
        raise MmpiBufferError(f"{what}: dlpack: invalid capsule object: {name}.__dlpack__() "
                              f"returned {type(capsule).__name__}, not an unused PyCapsule "
                              f"named {cname.decode()!r}")
    readonly = False
    if cname == b"dltensor_versioned":
        major, _, _, _, flags = _DL_VERSIONED_HEAD.unpack(
            _linux.read_memory(ptr, _DL_VERSIONED_HEAD.size))
        if major < 1:
            raise MmpiBufferError(f"{what}: dlpack: unexpected version {major} in a "
                                  f"versioned capsule of {name}")
        readonly = bool(flags & _DL_READ_ONLY)
        ptr += _DL_VERSIONED_HEAD.size
    (data, tdev, _, ndim, code, bits, lanes, shape_p, strides_p,
     offset) = _DL_TENSOR.unpack(_linux.read_memory(ptr, _DL_TENSOR.size))
    if ndim < 0:
        raise MmpiBufferError(f"{what}: dlpack: number of dimensions is negative ({ndim})")
    if ndim > _MAX_NDIM:
        raise MmpiBufferError(f"{what}: dlpack: implausible number of dimensions {ndim}")
    if ndim and not shape_p:
        raise MmpiBufferError(f"{what}: dlpack: shape is NULL with {ndim} dimensions")
    shape = struct.unpack(f"<{ndim}q", _linux.read_memory(shape_p, 8 * ndim)) if ndim else ()
    if any(s < 0 for s in shape):
        raise MmpiBufferError(f"{what}: dlpack: negative shape item in {shape}")
    strides = None
    if strides_p and ndim:
        strides = struct.unpack(f"<{ndim}q", _linux.read_memory(strides_p, 8 * ndim))
        if any(s < 0 for s in strides):
            raise MmpiBufferError(f"{what}: dlpack: negative strides item in {strides}")
    if strides is not None and not (_contiguous(shape, strides, 1, "C") or
                                    _contiguous(shape, strides, 1, "F")):
        raise MmpiBufferError(f"{what}: dlpack: buffer is not contiguous (shape {shape}, "
                              f"strides {strides}); pass a contiguous copy")
    if readonly and writable:
        raise MmpiBufferError(f"{what}: dlpack: buffer is not writable (its producer "
                              f"flagged it read-only); receive into a writable buffer")
    count = 1
    for s in shape:
        count *= s
    itemsize = (bits * lanes + 7) // 8
    char = None
    if lanes == 1 and bits % 8 == 0:
        char = _KINDS.get((_DL_KINDS.get(code), bits // 8))
    elif lanes == 2 and code == 2:    # pairs of floats: complex
        char = _KINDS.get(("c", bits // 4))
    mv = _host_view(obj, (obj, capsule), data + offset, count * itemsize, readonly, writable,
                    not (device_type in _DL_HOST and tdev in _DL_HOST), what, "DLPack tensor")
    return mv, (np.dtype(char) if char else None)


def _contiguous(shape, strides, itemsize: int, order: str) -> bool:
    n = len(shape)
    size = itemsize
    for i in (range(n - 1, -1, -1) if order == "C" else range(n)):
        if shape[i] > 1 and strides[i] != size:
            return False
        size *= shape[i]
    return True


def _cai_view(obj, cai, writable: bool, what: str):
    name = type(obj).__name__
    where = f"{what}: {name}.__cuda_array_interface__"
    if not isinstance(cai, dict):
        raise MmpiTypeError(f"{where} must be a dict, got {type(cai).__name__}")
    try:
        data, typestr, shape = cai["data"], cai["typestr"], cai["shape"]
    except KeyError as e:
        raise MmpiKeyError(f"{where} lacks the mandatory key {e.args[0]!r}") from None
    strides, descr, mask = cai.get("strides"), cai.get("descr"), cai.get("mask")
    for key, val, types in (("data", data, tuple), ("typestr", typestr, str),
                            ("shape", shape, tuple), ("strides", strides, (tuple, type(None))),
                            ("descr", descr, (list, type(None)))):
        if not isinstance(val, types):
            raise MmpiTypeError(f"{where}[{key!r}] has type {type(val).__name__}")
    if len(data) != 2:
        raise MmpiValueError(f"{where}['data'] must be (address, readonly), got {data!r}")
    ptr, readonly = data
    count = 1
    try:
        for s in shape:
            count *= operator.index(s)
    except TypeError:
        raise MmpiTypeError(f"{where}['shape'] must hold ints, got {shape!r}") from None
    if ptr is None and count == 0:
        ptr = 0
    try:
        ptr = operator.index(ptr)
    except TypeError:
        raise MmpiTypeError(f"{where}['data'][0] must be an int address, got "
                            f"{type(ptr).__name__}") from None
    try:
        order, kind, itemsize = typestr[0:1], typestr[1:2], int(typestr[2:])
    except ValueError:
        raise MmpiValueError(f"{where}['typestr'] {typestr!r} has no item size") from None
    if order in "<>" and order != _NATIVE_ORDER:
        raise MmpiBufferError(f"{where}: typestr {typestr!r} with non-native byte order")
    if order not in ("<", ">", "|"):
        raise MmpiBufferError(f"{where}: typestr {typestr!r} with unrecognized byte order")
    if mask is not None:
        raise MmpiBufferError(f"{where}: cannot handle masked arrays")
    if count < 0:
        raise MmpiBufferError(f"{where}: buffer with negative size (shape {shape})")
    if strides is not None and not (_contiguous(shape, strides, itemsize, "C") or
                                    _contiguous(shape, strides, itemsize, "F")):
        raise MmpiBufferError(f"{where}: buffer is not contiguous (shape {shape}, strides "
                              f"{strides}, itemsize {itemsize}); pass a contiguous copy")
    if readonly and writable:
        raise MmpiBufferError(f"{where}: buffer is not writable (read-only flag in 'data'); "
                              f"receive into a writable buffer")
    if descr is not None and (len(descr) != 1 or descr[0] != ("", typestr)):
        warnings.warn("__cuda_array_interface__: ignoring 'descr' key", RuntimeWarning,
                      stacklevel=4)
    char = _KINDS.get((kind, itemsize))
    mv = _host_view(obj, obj, ptr, count * itemsize, bool(readonly), writable, True, what,
                    "__cuda_array_interface__")
    return mv, (np.dtype(char) if char else None)
