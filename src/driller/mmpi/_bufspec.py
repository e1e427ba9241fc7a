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

import re

import numpy as np

from ..errors import MmpiError
from ._datatype import Datatype, as_datatype, datatype_of, dtype_of, is_datatype, np_dtype

__all__ = ["EMPTY", "Buf", "byteview", "message", "parse", "intlist", "as_bytes"]

EMPTY = memoryview(b"")
_PLAIN_FORMATS = frozenset("bBhHiIlLqQnNefdgFDG?cx") | {"Zf", "Zd", "Zg"}


_FIELD_NAMES = re.compile(r":[^:]*:")


def _holds_pointers(obj, fmt: str) -> bool:
    """True if the items of a buffer hold PyObject pointers (numpy dtype object, or
    a structured dtype with an object field): raw bytes would be wrong (Send: the
    sender's addresses) or fatal (Recv: garbage written over live pointers)."""
    dt = getattr(obj, "dtype", None)
    if isinstance(dt, np.dtype):
        return dt.hasobject
    return "O" in _FIELD_NAMES.sub("", fmt)   # 'O', 'T{d:a:O:b:}' (field names dropped)


def _pointer_error(obj, writable: bool, what: str) -> MmpiError:
    dt = getattr(obj, "dtype", None)
    kind = f"dtype {dt}" if dt is not None else f"format {memoryview(obj).format!r}"
    lower = {"Sendrecv_replace": "sendrecv"}.get(what, what.lower())
    return MmpiError(f"{what}: the {'receive' if writable else 'send'} buffer "
                     f"({type(obj).__name__} of {kind}) holds Python object pointers, which "
                     f"cannot be moved as bytes; use the lowercase method ({lower}(), which "
                     f"pickles the objects) or an array of a plain dtype")


def byteview(obj, writable: bool, what: str) -> memoryview:
    """A flat byte memoryview of a contiguous buffer-protocol object.

    Buffers whose items are object pointers are refused (MmpiError); numpy
    datetime64/timedelta64 arrays (which numpy does not export through the
    buffer protocol) are viewed as their bytes."""
    try:
        mv = memoryview(obj)
    except TypeError:
        if obj is None:
            return EMPTY if not writable else memoryview(bytearray(0))
        raise MmpiError(f"{what}: {type(obj).__name__} does not support the buffer protocol; "
                        f"pass a numpy array, bytearray, ... (lowercase methods move objects)"
                        ) from None
    except ValueError as e:  # numpy: "cannot include dtype 'M' in a buffer"
        if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
            raise MmpiError(f"{what}: {type(obj).__name__} cannot be used as a buffer: "
                            f"{e}") from None
        if not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            raise MmpiError(f"{what}: the buffer is not contiguous; pass "
                            f"np.ascontiguousarray(x) and copy back after a receive") from None
        if writable and not obj.flags.writeable:
            raise MmpiError(f"{what}: the receive buffer ({type(obj).__name__}) is read-only; "
                            f"receive into a writable buffer") from None
        flat = obj.ravel(order="K")
        return memoryview(flat.view(np.uint8)) if flat.size else memoryview(bytearray(0))
    if mv.c_contiguous and mv.ndim == 1 and mv.format == "B" and not (writable and mv.readonly):
        return mv
    if mv.format not in _PLAIN_FORMATS and _holds_pointers(obj, mv.format):
        raise _pointer_error(obj, writable, what)
    if writable and mv.readonly:
        raise MmpiError(f"{what}: the receive buffer ({type(obj).__name__}) is read-only; "
                        f"receive into a writable buffer (bytearray, numpy array)")
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
        raise MmpiError(f"{what}: the buffer is not contiguous (a strided numpy view such "
                        f"as a[:, ::2] or a column?); pass np.ascontiguousarray(x) and copy "
                        f"back after a receive")
    if mv.ndim != 1 or mv.format != "B":
        if not mv.nbytes:   # (cast refuses a zero in the shape, as an (n, 0) array's)
            return memoryview(bytearray(0)) if writable else EMPTY
        mv = mv.cast("B")
    return mv



class Buf:
    """A parsed buffer: flat bytes ``mv``, numpy ``dtype``, MPI ``dt``,
    ``counts``/``displs`` in elements (one per block)."""

    __slots__ = ("mv", "dtype", "dt", "counts", "displs", "a")

    def __init__(self):
        self.a = None

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
    try:
        xs = [int(v) for v in x]
    except TypeError:
        raise MmpiError(f"{what}: {name} must be a sequence of {n} ints, got {x!r}") from None
    if len(xs) != n:
        raise MmpiError(f"{what}: {name} has {len(xs)} entries, the communicator has {n} ranks")
    if any(v < 0 for v in xs):
        raise MmpiError(f"{what}: negative entry in {name} {xs}")
    return xs


def parse(spec, writable, what, blocks=1, vector=False):
    """Parse an mpi4py buffer spec.  ``blocks``: the buffer holds that many equal
    blocks (an explicit count is per block, as mpi4py's); ``vector``: counts
    and displacements per block ([buf, counts, displs, dt] and friends)."""
    b = Buf()
    if type(spec) is np.ndarray and not vector and spec.flags.c_contiguous and \
            (spec.flags.writeable or not writable) and spec.dtype.kind in "biufc" and \
            spec.size % blocks == 0:
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
    dt = None
    count = displ = None
    if type(spec) in (list, tuple) and 2 <= len(spec) <= 4:
        buf = spec[0]
        rest = list(spec[1:])
        if rest and (is_datatype(rest[-1]) or isinstance(rest[-1], str)):  # a str: a datatype
            dt = as_datatype(rest.pop())
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
            raise MmpiError(f"{what}: cannot parse buffer spec {spec!r}")
    else:
        buf = spec
    if dt is None and isinstance(count, Datatype):  # pragma: no cover - defensive
        dt, count = count, None
    mv = byteview(buf, writable, what)
    if dt is not None:
        dtype = np_dtype(dt)
    else:
        dtype = dtype_of(buf)
        dt = datatype_of(dtype)
    size = dtype.itemsize
    if size == 0:
        raise MmpiError(f"{what}: datatype {dtype} has size 0")
    if len(mv) % size:
        # a byte buffer holding whole elements is fine; a partial element is not
        if count is None:
            raise MmpiError(f"{what}: buffer of {len(mv)} bytes is not a whole number of "
                            f"{dt.name} ({size} bytes)")
    total = len(mv) // size
    b.dtype = dtype
    b.dt = dt
    if vector:
        if count is None:
            # mpi4py: a buffer alone splits into equal blocks, one per rank
            count = total // blocks
        if isinstance(count, int):
            count = [count] * blocks
        counts = intlist(count, blocks, what, "counts")
        if displ is None:
            displs, acc = [], 0
            for c in counts:
                displs.append(acc)
                acc += c
        elif isinstance(displ, int) and not isinstance(displ, bool):
            # mpi4py: an int displacement is a stride, block i starts at i * displ
            if displ < 0:
                raise MmpiError(f"{what}: negative displacement stride {displ}")
            displs = [i * displ for i in range(blocks)]
        else:
            displs = intlist(displ, blocks, what, "displacements")
        for i, (c, d) in enumerate(zip(counts, displs)):
            if d + c > total:
                raise MmpiError(f"{what}: block {i} ({c} x {dt.name} at displacement {d}) "
                                f"overruns the {len(mv)}-byte buffer ({total} elements)")
        b.mv = mv[:total * size]
        b.counts, b.displs = counts, displs
        return b
    start = 0
    if displ is not None:
        if not isinstance(displ, int) or displ < 0:
            raise MmpiError(f"{what}: invalid displacement {displ!r}")
        start = displ
    if count is None:
        n = total - start
        if n < 0:
            raise MmpiError(f"{what}: displacement {start} past the end of the buffer")
        if n % blocks:
            raise MmpiError(f"{what}: buffer of {n} x {dt.name} does not split into {blocks} "
                            f"equal blocks (one per rank)")
        count = n // blocks
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise MmpiError(f"{what}: invalid count {count!r}")
    end = start + count * blocks
    if end > total:
        raise MmpiError(f"{what}: {count * blocks} x {dt.name} from element {start} overruns "
                        f"the {len(mv)}-byte buffer")
    b.mv = mv[start * size:end * size]
    b.counts = [count] * blocks
    b.displs = [i * count for i in range(blocks)]
    return b


def message(spec, writable: bool, what: str) -> memoryview:
    """The flat bytes a point-to-point call moves for ``spec`` (see the forms above)."""
    t = type(spec)
    if t is not list and t is not tuple:
        try:  # fast path: a flat, writable-enough byte buffer
            mv = memoryview(spec)
            if mv.format == "B" and mv.ndim == 1 and mv.c_contiguous and not (
                    writable and mv.readonly):
                return mv
        except (TypeError, ValueError):
            pass
        return byteview(spec, writable, what)
    if not 2 <= len(spec) <= 4:
        raise MmpiError(f"{what}: cannot parse buffer spec of {len(spec)} items: use buf, "
                        f"[buf, datatype], [buf, count], [buf, count, datatype] or "
                        f"[buf, (count, displ), datatype]")
    return parse(spec, writable, what).mv


def as_bytes(a) -> memoryview:
    """A flat byte view of a contiguous numpy array."""
    return memoryview(a).cast("B") if a.size else EMPTY
