"""Communicators, requests, statuses and datatypes (mpi4py's names and conventions).

Uppercase methods move buffers (``Send([buf, count, MPI.DOUBLE], dest, tag)``),
lowercase ones move picklable Python objects (``send(obj, dest, tag)``).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import time

import numpy as np

from .. import _linux
from ..errors import MmpiError, MmpiNotImplementedError
from . import _engine as E
from . import _transport as T
from . import _world as W
from ._coll import CollectiveMixin

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "TAG_UB", "UNDEFINED",
    "Comm", "Request", "Prequest", "Status", "Datatype", "Wtime", "Wtick",
    "init_world", "world_comm", "self_comm", "finalize", "is_initialized", "is_finalized",
    "launched_rank",
]

ANY_SOURCE = E.ANY_SOURCE
ANY_TAG = E.ANY_TAG
PROC_NULL = E.PROC_NULL
UNDEFINED = -32766
TAG_UB = (1 << 31) - 1
_BARRIER_TAG = 1 << 29        # Barrier's tags on the collective context (collectives use < 2**22)
_CTX_WORLD, _CTX_SELF = 0, 2   # p2p contexts; collectives use context + 1; new comms from 4


def Wtime() -> float:
    """Seconds since an arbitrary origin (monotonic, high resolution)."""
    return time.perf_counter()


def Wtick() -> float:
    return time.get_clock_info("perf_counter").resolution


# ------------------------------------------------------------------ datatypes

class Datatype:
    """A predefined MPI datatype: a name, a size in bytes, a struct/numpy typechar."""

    __slots__ = ("name", "size", "typechar")

    def __init__(self, name: str, size: int, typechar: str):
        self.name = name
        self.size = size
        self.typechar = typechar

    def Get_size(self) -> int:
        return self.size

    def Get_extent(self) -> tuple[int, int]:
        return (0, self.size)

    @property
    def extent(self) -> int:
        return self.size

    @property
    def lb(self) -> int:
        return 0

    @property
    def ub(self) -> int:
        return self.size

    def Get_name(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<mmpi.Datatype {self.name} ({self.size} bytes)>"


def _dt(name, size, tc):
    return Datatype(name, size, tc)


DATATYPES = {d.name: d for d in [
    _dt("BYTE", 1, "B"), _dt("CHAR", 1, "c"), _dt("SIGNED_CHAR", 1, "b"),
    _dt("SHORT", 2, "h"), _dt("INT", 4, "i"), _dt("LONG", 8, "l"), _dt("LONG_LONG", 8, "q"),
    _dt("UNSIGNED_CHAR", 1, "B"), _dt("UNSIGNED_SHORT", 2, "H"), _dt("UNSIGNED", 4, "I"),
    _dt("UNSIGNED_INT", 4, "I"), _dt("UNSIGNED_LONG", 8, "L"), _dt("UNSIGNED_LONG_LONG", 8, "Q"),
    _dt("FLOAT", 4, "f"), _dt("DOUBLE", 8, "d"), _dt("LONG_DOUBLE", 16, "g"),
    _dt("C_BOOL", 1, "?"), _dt("INT8_T", 1, "b"), _dt("INT16_T", 2, "h"),
    _dt("INT32_T", 4, "i"), _dt("INT64_T", 8, "q"), _dt("UINT8_T", 1, "B"),
    _dt("UINT16_T", 2, "H"), _dt("UINT32_T", 4, "I"), _dt("UINT64_T", 8, "Q"),
    _dt("C_FLOAT_COMPLEX", 8, "F"), _dt("C_DOUBLE_COMPLEX", 16, "D"),
    _dt("WCHAR", 4, "w"), _dt("SIGNED_SHORT", 2, "h"), _dt("SIGNED_INT", 4, "i"),
    _dt("SIGNED_LONG", 8, "l"), _dt("SIGNED_LONG_LONG", 8, "q"),
]}
DATATYPES["COMPLEX"] = DATATYPES["C_FLOAT_COMPLEX"]
DATATYPES["DOUBLE_COMPLEX"] = DATATYPES["C_DOUBLE_COMPLEX"]
DATATYPES["BOOL"] = DATATYPES["C_BOOL"]
BYTE = DATATYPES["BYTE"]
_TYPECHARS = {}
for _d in DATATYPES.values():
    _TYPECHARS.setdefault(_d.typechar, _d)
_TYPECHARS.update({"b": DATATYPES["SIGNED_CHAR"], "B": BYTE, "i": DATATYPES["INT"],
                   "l": DATATYPES["LONG"], "d": DATATYPES["DOUBLE"], "f": DATATYPES["FLOAT"]})


def _datatype(d) -> Datatype:
    if isinstance(d, Datatype):
        return d
    if isinstance(d, str) and d in _TYPECHARS:
        return _TYPECHARS[d]
    raise MmpiError(f"invalid datatype {d!r}: use one of driller.MPI's datatypes "
                    f"(MPI.BYTE, MPI.INT, MPI.DOUBLE, ...) or a typechar like 'd'")


# ------------------------------------------------------------------ buffers

_EMPTY = memoryview(b"")
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


def _byteview(obj, writable: bool, what: str) -> memoryview:
    """A flat byte memoryview of a contiguous buffer-protocol object.

    Buffers whose items are object pointers are refused (MmpiError); numpy
    datetime64/timedelta64 arrays (which numpy does not export through the
    buffer protocol) are viewed as their bytes."""
    try:
        mv = memoryview(obj)
    except TypeError:
        if obj is None:
            return _EMPTY if not writable else memoryview(bytearray(0))
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
        mv = mv.cast("B")
    return mv


def _buffer(spec, writable: bool, what: str) -> memoryview:
    """Parse an mpi4py buffer spec: buf, [buf, dt], [buf, count, dt],
    [buf, (count, displ), dt], [buf, count, displ, dt]."""
    t = type(spec)
    if t is not list and t is not tuple:
        try:  # fast path: a flat, writable-enough byte buffer
            mv = memoryview(spec)
            if mv.format == "B" and mv.ndim == 1 and mv.c_contiguous and not (
                    writable and mv.readonly):
                return mv
        except (TypeError, ValueError):
            pass
        return _byteview(spec, writable, what)
    if 2 <= len(spec) <= 4:
        buf = spec[0]
        count = displ = None
        if len(spec) == 2:
            if isinstance(spec[1], (Datatype, str)):
                dt = _datatype(spec[1])
            elif isinstance(spec[1], int) or spec[1] is None:
                dt, count = BYTE, spec[1]
            else:
                dt = _datatype(spec[1])
        elif len(spec) == 3:
            count, dt = spec[1], _datatype(spec[2])
            if isinstance(count, (list, tuple)):
                count, displ = count
        else:
            count, displ, dt = spec[1], spec[2], _datatype(spec[3])
        mv = _byteview(buf, writable, what)
        size = dt.size
        start = 0
        if displ is not None:
            if not isinstance(displ, int) or displ < 0:
                raise MmpiError(f"{what}: invalid displacement {displ!r}")
            start = displ * size
        if count is None:
            n = len(mv) - start
            if n < 0 or n % size:
                raise MmpiError(f"{what}: buffer of {len(mv)} bytes is not a whole number "
                                f"of {dt.name} ({size} bytes)")
            count = n // size
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise MmpiError(f"{what}: invalid count {count!r}")
        end = start + count * size
        if end > len(mv):
            raise MmpiError(f"{what}: {count} x {dt.name} ({count * size} bytes) from offset "
                            f"{start} overruns the {len(mv)}-byte buffer")
        return mv[start:end] if (start or end != len(mv)) else mv
    return _byteview(spec, writable, what)


# ------------------------------------------------------------------ status

class Status:
    """What a completed receive (or probe) found."""

    __slots__ = ("source", "tag", "error", "count", "cancelled")

    def __init__(self):
        self.source = ANY_SOURCE
        self.tag = ANY_TAG
        self.error = 0
        self.count = 0
        self.cancelled = False

    def Get_source(self) -> int:
        return self.source

    def Set_source(self, source: int) -> None:
        self.source = source

    def Get_tag(self) -> int:
        return self.tag

    def Set_tag(self, tag: int) -> None:
        self.tag = tag

    def Get_error(self) -> int:
        return self.error

    def Set_error(self, error: int) -> None:
        self.error = error

    def Get_count(self, datatype=BYTE) -> int:
        dt = _datatype(datatype)
        if self.count % dt.size:
            return UNDEFINED
        return self.count // dt.size

    def Get_elements(self, datatype=BYTE) -> int:
        return self.Get_count(datatype)

    def Is_cancelled(self) -> bool:
        return self.cancelled

    def __repr__(self) -> str:
        return (f"Status(source={self.source}, tag={self.tag}, error={self.error}, "
                f"count={self.count})")


def _fill(status, source, tag, error, count, cancelled=False) -> None:
    if status is not None:
        status.source = source
        status.tag = tag
        status.error = error
        status.count = count
        status.cancelled = cancelled


# ------------------------------------------------------------------ objects

_BIG = (bytes, bytearray)


def _oob_identity(x):
    return x


_SCALARS = (int, float, str, bool, type(None), complex)
SIMPLE, OOB_ARRAYS, OOB_BYTES = 0, 1, 2


def _scan(obj, budget=256, depth=3) -> int:
    """A bounded look inside containers: SIMPLE (only scalars, small bytes and small
    numpy arrays: plain pickle is fastest), OOB_BYTES (a large bytes/bytearray),
    or OOB_ARRAYS (anything else: protocol 5 with a buffer callback)."""
    stack = [(obj, 0)]
    seen = 0
    out = SIMPLE
    while stack:
        o, d = stack.pop()
        t = type(o)
        if t in _BIG:
            if len(o) >= T.OOB_MIN:
                return OOB_BYTES
            continue
        if t in _SCALARS:
            continue
        if t is np.ndarray:
            if o.nbytes >= T.OOB_MIN or o.dtype.hasobject:
                out = OOB_ARRAYS
            continue
        if d >= depth:
            out = OOB_ARRAYS
            continue
        if t is list or t is tuple:
            items = o
        elif t is dict:
            items = o.values()
        else:
            out = OOB_ARRAYS
            continue
        for x in items:
            seen += 1
            if seen > budget:
                return OOB_ARRAYS
            stack.append((x, d + 1))
    return out


def _has_big_bytes(obj) -> bool:
    return _scan(obj) == OOB_BYTES


class _OobPickler(pickle.Pickler):
    """Pickler sending large bytes/bytearray out of band (by persistent id)."""

    def __init__(self, f, parts):
        super().__init__(f, 5, buffer_callback=self._cb)
        self.parts = parts

    def _cb(self, pb):
        raw = pb.raw()
        if raw.nbytes < T.OOB_MIN:
            return True
        self.parts.append((raw, 1 if raw.readonly else 0))
        return False

    def persistent_id(self, o):
        t = type(o)
        if t in _BIG and len(o) >= T.OOB_MIN:
            i = len(self.parts)
            self.parts.append((memoryview(o), 3 if t is bytes else 2))
            return i
        return None


def _dumps(obj):
    """(stream, parts): parts are (byte view, how) of out-of-band buffers."""
    parts = []
    kind = _scan(obj)
    if kind == SIMPLE:  # nothing large inside: the plain (faster) pickle
        return pickle.dumps(obj, 4), parts
    if kind == OOB_BYTES:
        f = io.BytesIO()
        _OobPickler(f, parts).dump(obj)
        return f.getvalue(), parts

    def cb(pb, append=parts.append, oob_min=T.OOB_MIN):
        raw = pb.raw()
        if raw.nbytes < oob_min:
            return True
        append((raw, 1 if raw.readonly else 0))
        return False

    return pickle.dumps(obj, 5, buffer_callback=cb), parts


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, buffers, parts):
        super().__init__(f, buffers=buffers)
        self._parts = parts

    def persistent_load(self, pid):
        return self._parts[pid][0]


def _loads(value):
    stream, parts = value
    if parts is None:  # a bare array sent raw (F_ARRAY): already built
        return stream
    if stream is None:  # a buffer message received as an object: its bytes
        return bytes(parts)
    if not parts:
        return pickle.loads(stream)
    buffers = [b for b, how in parts if not how & 2]
    if len(buffers) == len(parts):  # no persistent (bytes/bytearray) parts
        return pickle.loads(stream, buffers=buffers)
    return _Unpickler(io.BytesIO(stream), buffers, parts).load()


# ------------------------------------------------------------------ requests

_K_SEND, _K_RECV, _K_OSEND, _K_ORECV = 0, 1, 2, 3


class Request:
    """A nonblocking operation; ``REQUEST_NULL`` is the empty one."""

    __slots__ = ("_op", "_kind", "_comm", "__weakref__")

    def __init__(self, request=None):
        self._op = None
        self._kind = _K_SEND
        self._comm = None

    def __bool__(self) -> bool:
        return self._op is not None

    def __eq__(self, other) -> bool:
        if isinstance(other, Request):
            return self is other or (self._op is None and other._op is None)
        return NotImplemented

    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def _make(cls, op, kind, comm):
        r = cls.__new__(cls)
        r._op = op
        r._kind = kind
        r._comm = comm
        return r

    # -- completion --
    def _finish(self, status):
        """The op is done: fill status, clear the request, raise its error."""
        op = self._op
        comm = self._comm
        self._release()
        if self._kind in (_K_RECV, _K_ORECV):
            if op.cancelled:
                _fill(status, ANY_SOURCE, ANY_TAG, 0, 0, True)
                return None
            m = op.message
            if m is None:  # PROC_NULL
                _fill(status, PROC_NULL, ANY_TAG, 0, 0)
                return None
            cnt = op.count if op.capacity is None else min(op.count, op.capacity)
            _fill(status, comm._rank_of(m.source), m.tag, op.error, cnt)
            if op.exc is not None:
                raise op.exc
            if self._kind == _K_ORECV:
                return _loads(op.value)
            return None
        _fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
        if op.exc is not None:
            raise op.exc
        return None

    def _release(self):
        self._op = None

    def _peer(self):
        op = self._op
        if isinstance(op, T.SendOp):
            return op.dest
        return None if op.source == ANY_SOURCE else op.source

    def Wait(self, status=None) -> bool:
        op = self._op
        if op is None:
            _fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            if type(op) is T.SendOp and op.sync:
                self._comm._self_sync(op, "Wait")
            if not op.done:
                self._comm._t.wait(op, self._peer())
        self._finish(status)
        return True

    def Test(self, status=None) -> bool:
        op = self._op
        if op is None:
            _fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return True
        if not op.done:
            self._comm._t.progress()
            if not op.done:
                return False
        self._finish(status)
        return True

    def Get_status(self, status=None) -> bool:
        op = self._op
        if op is None:
            return True
        if not op.done:
            self._comm._t.progress()
        return op.done

    def Cancel(self) -> None:
        """Cancel a receive that has not matched yet (sends cannot be cancelled)."""
        op = self._op
        if op is None or op.done or not isinstance(op, T.RecvOp):
            return
        if self._comm._t.engine.cancel(op):
            op.cancelled = True
            op.done = True

    def Free(self) -> None:
        op = self._op
        if op is not None and not op.done:
            raise MmpiError("cannot free an active request: Wait or Cancel it first")
        self._release()

    # -- lowercase (objects) --
    def wait(self, status=None):
        op = self._op
        if op is None:
            _fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return None
        if not op.done:
            if type(op) is T.SendOp and op.sync:
                self._comm._self_sync(op, "wait")
            if not op.done:
                self._comm._t.wait(op, self._peer())
        return self._finish(status)

    def test(self, status=None):
        op = self._op
        if op is None:
            return True, None
        if not op.done:
            self._comm._t.progress()
            if not op.done:
                return False, None
        return True, self._finish(status)

    def cancel(self) -> None:
        self.Cancel()

    def free(self) -> None:
        self.Free()

    def get_status(self, status=None) -> bool:
        return self.Get_status(status)

    # -- collections --
    @staticmethod
    def _transport(requests):
        for r in requests:
            if r._op is not None:
                return r._comm._t
        return None

    @classmethod
    def Waitall(cls, requests, statuses=None) -> bool:
        cls.waitall(requests, statuses)
        return True

    @classmethod
    def waitall(cls, requests, statuses=None) -> list:
        out = []
        err = None
        for i, r in enumerate(requests):
            st = statuses[i] if statuses is not None and i < len(statuses) else None
            try:
                out.append(r.wait(st))
            except MmpiError as e:
                if isinstance(e, T.PeerDiedError):
                    raise
                err = err or e
                out.append(None)
        if err is not None:
            raise err
        return out

    @classmethod
    def Waitany(cls, requests, status=None) -> int:
        return cls.waitany(requests, status)[0]

    @classmethod
    def waitany(cls, requests, status=None):
        t = cls._transport(requests)
        if t is None:
            _fill(status, ANY_SOURCE, ANY_TAG, 0, 0)
            return UNDEFINED, None
        ops = [r._op for r in requests]
        cls._self_sync_all(requests, "Waitany")
        t.wait_until(lambda: any(o is not None and o.done for o in ops))
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                return i, r.wait(status)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def Waitsome(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is None:
            return None
        ops = [r._op for r in requests]
        cls._self_sync_all(requests, "Waitsome")
        t.wait_until(lambda: any(o is not None and o.done for o in ops))
        return cls.Testsome(requests, statuses)

    @staticmethod
    def _self_sync_all(requests, what):
        """Waiting on synchronous sends to oneself that nothing matched: those
        can never complete (see Comm._self_sync) and complete with an error."""
        ops = [r._op for r in requests]
        if any(o is not None and o.done for o in ops):
            return
        for r, o in zip(requests, ops):
            if type(o) is T.SendOp and o.sync:
                r._comm._self_sync(o, what)

    @classmethod
    def Testall(cls, requests, statuses=None) -> bool:
        t = cls._transport(requests)
        if t is not None:
            t.progress()
        if all(r._op is None or r._op.done for r in requests):
            cls.Waitall(requests, statuses)
            return True
        return False

    @classmethod
    def testall(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is not None:
            t.progress()
        if all(r._op is None or r._op.done for r in requests):
            return True, cls.waitall(requests, statuses)
        return False, None

    @classmethod
    def Testany(cls, requests, status=None):
        t = cls._transport(requests)
        if t is None:
            return UNDEFINED, True
        t.progress()
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                r.Wait(status)
                return i, True
        return UNDEFINED, False

    @classmethod
    def Testsome(cls, requests, statuses=None):
        t = cls._transport(requests)
        if t is None:
            return None
        t.progress()
        done = []
        for i, r in enumerate(requests):
            if r._op is not None and r._op.done:
                st = statuses[i] if statuses is not None and i < len(statuses) else None
                r.Wait(st)
                done.append(i)
        return done

    def __repr__(self) -> str:
        if self._op is None:
            return "<mmpi.Request NULL>"
        return f"<mmpi.Request {self._op!r}>"


class Prequest(Request):
    """A persistent request (Send_init/Recv_init): Start, Wait, Start again..."""

    __slots__ = ("_start", "_active")

    def __init__(self, request=None):
        super().__init__()
        self._start = None
        self._active = False

    def Start(self) -> None:
        if self._start is None:
            raise MmpiError("Start on a freed persistent request")
        if self._op is not None and not self._op.done:
            raise MmpiError("Start on a persistent request that is still active: Wait first")
        self._op = self._start()

    @classmethod
    def Startall(cls, requests) -> None:
        for r in requests:
            r.Start()

    def _release(self):
        self._op = None  # inactive, reusable

    def Free(self) -> None:
        super().Free()
        self._start = None


REQUEST_NULL = Request()


# ------------------------------------------------------------------ communicator

class Comm(CollectiveMixin):
    """A communicator: a group of ranks and a context id that fences its messages."""

    def __init__(self, transport: T.Transport, group: list[int], context: int, name: str = ""):
        self._t = transport
        self._group = list(group)
        self._ctx = context
        self._cctx = context + 1  # collectives
        self._rank_of_world = {w: i for i, w in enumerate(self._group)}
        self.rank = self._rank_of_world[transport.rank]
        self.size = len(self._group)
        self._name = name
        self._identity = self._group == list(range(transport.size))

    # -- basics --
    def Get_rank(self) -> int:
        self._t.rank  # raises after Finalize and in a forked child, as every call
        return self.rank

    def Get_size(self) -> int:
        self._t.rank
        return self.size

    def Get_name(self) -> str:
        return self._name

    def Is_inter(self) -> bool:
        return False

    def Is_intra(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<mmpi.Comm {self._name or 'comm'} rank {self.rank} of {self.size}>"

    def _rank_of(self, world_rank: int) -> int:
        return world_rank if self._identity else self._rank_of_world.get(world_rank, world_rank)

    def _dest(self, dest, what: str) -> int:
        if type(dest) is not int:
            if isinstance(dest, int) and not isinstance(dest, bool):
                dest = int(dest)
            else:
                raise MmpiError(f"{what}: destination rank must be an int, got {dest!r}")
        if 0 <= dest < self.size:
            return self._group[dest]
        if dest == PROC_NULL:
            return PROC_NULL
        raise MmpiError(f"{what}: invalid destination rank {dest} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1} or PROC_NULL)")

    def _source(self, source, what: str) -> int:
        if type(source) is not int:
            if isinstance(source, int) and not isinstance(source, bool):
                source = int(source)
            else:
                raise MmpiError(f"{what}: source rank must be an int, got {source!r}")
        if 0 <= source < self.size:
            return self._group[source]
        if source == ANY_SOURCE or source == PROC_NULL:
            return source
        raise MmpiError(f"{what}: invalid source rank {source} (communicator of size "
                        f"{self.size}; valid: 0..{self.size - 1}, ANY_SOURCE or PROC_NULL)")

    @staticmethod
    def _stag(tag, what: str) -> int:
        if type(tag) is not int or not 0 <= tag <= TAG_UB:
            if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag <= TAG_UB:
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a send tag is an int in 0..{TAG_UB})")
        return tag

    @staticmethod
    def _rtag(tag, what: str) -> int:
        if type(tag) is not int or not (0 <= tag <= TAG_UB or tag == ANY_TAG):
            if isinstance(tag, int) and not isinstance(tag, bool) and (0 <= tag <= TAG_UB or tag == ANY_TAG):
                return int(tag)
            raise MmpiError(f"{what}: invalid tag {tag!r} (a receive tag is an int in "
                            f"0..{TAG_UB} or ANY_TAG)")
        return tag

    # -- starting operations (internal) --
    def _isend(self, buf, dest, tag, sync, what, ctx=None):
        mv = _buffer(buf, False, what)
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        op = T.SendOp(w, tag, self._ctx if ctx is None else ctx, mv, sync)
        self._t.isend(op)
        return op

    def _irecv(self, buf, source, tag, what, ctx=None):
        mv = _buffer(buf, True, what)
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        op = T.RecvOp(w, tag, self._ctx if ctx is None else ctx, mv)
        if w == PROC_NULL:
            op.done = True
            return op
        self._t.irecv(op)
        return op

    def _osend(self, obj, dest, tag, sync, what, pickled=None):
        w = self._dest(dest, what)
        tag = self._stag(tag, what)
        if w == PROC_NULL:
            return None
        stream, parts = _dumps(obj) if pickled is None else pickled
        t = self._t
        nbytes = len(stream) + sum(p.nbytes for p, _ in parts)
        if w == t.rank:
            copies = [(bytes(p) if how & 1 else bytearray(p), how) for p, how in parts]
            op = T.SendOp(w, tag, self._ctx, memoryview(stream), sync, T.F_OBJ, copies,
                          nbytes=nbytes)
            t.isend(op)
            return op
        if not parts and len(stream) <= t.eager_limit:
            if not sync and t.send_fast(w, self._ctx, tag, stream, T.F_OBJ):
                return None  # in the ring: complete
            op = T.SendOp(w, tag, self._ctx, memoryview(stream), sync, T.F_OBJ)
            t.isend(op, E.EAGER)
            return op
        if parts:
            plen = T.TABLE.size + T.PART.size * len(parts) + nbytes
            if plen <= t.packed_limit:
                # small enough to copy through the ring: one eager record holding the
                # table, the stream and the buffers; two memcpys beat the page pinning
                # of process_vm_readv here up to ~1 MiB, and the send completes at once
                head = [T.TABLE.pack(len(parts), len(stream), 0)]
                for p, how in parts:
                    head.append(T.PART.pack(0, p.nbytes, how))
                pieces = [b"".join(head), stream]
                pieces += [p for p, _ in parts]
                op = T.SendOp(w, tag, self._ctx, memoryview(stream), sync,
                              T.F_OBJ | T.F_PACKED, pieces, keep=plen, nbytes=nbytes)
                t.isend(op, E.EAGER)
                return op
        inline = len(stream) <= t.eager_limit
        saddr = 0 if inline else _linux.buffer_address(stream)[0]
        table = [T.TABLE.pack(len(parts), len(stream), saddr)]
        for p, how in parts:
            table.append(T.PART.pack(_linux.buffer_address(p)[0] if p.nbytes else 0,
                                     p.nbytes, how))
        if inline:
            table.append(stream)
        table = b"".join(table)
        if len(table) > t.ring_bytes // 2:
            raise MmpiError(f"{what}: the object holds {len(parts)} large buffers, too many "
                            f"for one message ({len(table)}-byte table); send it in parts")
        op = T.SendOp(w, tag, self._ctx, memoryview(stream), sync, T.F_OBJ, table,
                      keep=(stream, parts), nbytes=nbytes)
        t.isend(op, E.RNDV)
        return op

    def _orecv(self, source, tag, what):
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        op = T.RecvOp(w, tag, self._ctx, None)
        if w == PROC_NULL:
            op.done = True
            return op
        self._t.irecv(op)
        return op

    def _wait_send(self, op):
        if op is None:
            return
        if not op.done:
            if op.sync:
                self._self_sync(op, "Ssend")
            if not op.done:
                self._t.wait(op, op.dest)
        if op.exc is not None:
            raise op.exc

    def _self_sync(self, op, what):
        """A blocking wait on a synchronous send to oneself that no receive has
        matched can never end: mmpi ranks are single-threaded (THREAD_SINGLE),
        so no receive can be posted while this one blocks.  Withdraw the message
        (it will never match) and fail the send with an error, at once."""
        t = self._t
        if op.dest != t.rank:
            return
        t.progress()
        if op.done or not t.engine.withdraw(op, t.rank):
            return
        op.exc = MmpiError(
            f"{what}: synchronous send to this rank itself (rank {self._rank_of(op.dest)}, "
            f"tag {op.tag}) with no matching receive posted: it can never complete, since "
            f"this rank cannot post the receive while it blocks here (MPI calls this "
            f"erroneous; mmpi ranks are single-threaded); post the receive first "
            f"(Irecv, then Ssend, then Wait) or use Send, which buffers messages to self")
        op.done = True

    def _wait_recv(self, op, status, obj=False):
        if not op.done:
            self._t.wait(op, None if op.source == ANY_SOURCE else op.source)
        return Request._make(op, _K_ORECV if obj else _K_RECV, self)._finish(status)

    # -- blocking buffer p2p --
    def Send(self, buf, dest, tag=0) -> None:
        try:  # _buffer's fast path, inlined
            mv = memoryview(buf)
            if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous):
                mv = _buffer(buf, False, "Send")
        except (TypeError, ValueError):
            mv = _buffer(buf, False, "Send")
        if type(dest) is int and 0 <= dest < self.size and type(tag) is int and 0 <= tag <= TAG_UB:
            if self._t.send_fast(self._group[dest], self._ctx, tag, mv):
                return
        self._wait_send(self._isend(mv, dest, tag, False, "Send"))

    def Ssend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, True, "Ssend"))

    def Rsend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, False, "Rsend"))

    def Bsend(self, buf, dest, tag=0) -> None:
        self._wait_send(self._isend(buf, dest, tag, False, "Bsend"))

    def Recv(self, buf, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> None:
        try:  # _buffer's fast path, inlined
            mv = memoryview(buf)
            if not (mv.format == "B" and mv.ndim == 1 and mv.c_contiguous
                    and not mv.readonly):
                mv = _buffer(buf, True, "Recv")
        except (TypeError, ValueError):
            mv = _buffer(buf, True, "Recv")
        if (type(source) is int and -1 <= source < self.size and type(tag) is int
                and -1 <= tag <= TAG_UB):
            res = self._t.recv_fast(self._group[source] if source >= 0 else source, tag,
                                    self._ctx, mv)
            if res is not None:
                if status is not None:
                    _fill(status, self._rank_of(res[0]), res[1], 0, res[2])
                return
        self._wait_recv(self._irecv(mv, source, tag, "Recv"), status)

    def Sendrecv(self, sendbuf, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None) -> None:
        smv = _buffer(sendbuf, False, "Sendrecv")
        rmv = _buffer(recvbuf, True, "Sendrecv")
        size = self.size
        if (type(dest) is int and 0 <= dest < size and type(sendtag) is int
                and 0 <= sendtag <= TAG_UB and type(source) is int and -1 <= source < size
                and type(recvtag) is int and -1 <= recvtag <= TAG_UB):
            # the common case, validated inline: straight into and out of the rings
            t = self._t
            if t.send_fast(self._group[dest], self._ctx, sendtag, smv):
                res = t.recv_fast(self._group[source] if source >= 0 else source, recvtag,
                                  self._ctx, rmv)
                if res is not None:
                    if status is not None:
                        _fill(status, self._rank_of(res[0]), res[1], 0, res[2])
                    return
                self._wait_recv(self._irecv(rmv, source, recvtag, "Sendrecv"), status)
                return
        w = self._dest(dest, "Sendrecv")
        sendtag = self._stag(sendtag, "Sendrecv")
        self._source(source, "Sendrecv")
        self._rtag(recvtag, "Sendrecv")
        if w != PROC_NULL and self._t.send_fast(w, self._ctx, sendtag, smv):
            self.Recv(rmv, source, recvtag, status)  # the send is done (eager, queued)
            return
        r = self._irecv(rmv, source, recvtag, "Sendrecv")
        s = self._isend(smv, dest, sendtag, False, "Sendrecv")
        self._wait_send(s)
        self._wait_recv(r, status)

    def Sendrecv_replace(self, buf, dest, sendtag=0, source=ANY_SOURCE, recvtag=ANY_TAG,
                         status=None) -> None:
        mv = _buffer(buf, True, "Sendrecv_replace")
        copy = bytes(mv)
        r = self._irecv(mv, source, recvtag, "Sendrecv_replace")
        s = self._isend(copy, dest, sendtag, False, "Sendrecv_replace")
        self._wait_send(s)
        self._wait_recv(r, status)

    # -- nonblocking buffer p2p --
    def _sreq(self, op):
        return Request._make(op, _K_SEND, self) if op is not None else Request()

    def Isend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Isend"))

    def Issend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, True, "Issend"))

    def Irsend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Irsend"))

    def Ibsend(self, buf, dest, tag=0) -> Request:
        return self._sreq(self._isend(buf, dest, tag, False, "Ibsend"))

    def Irecv(self, buf, source=ANY_SOURCE, tag=ANY_TAG) -> Request:
        return Request._make(self._irecv(buf, source, tag, "Irecv"), _K_RECV, self)

    # -- persistent --
    def _persistent(self, start, kind):
        # validate now (errors at the call, as MPI does)
        p = Prequest()
        p._kind = kind
        p._comm = self
        p._start = start
        return p

    def Send_init(self, buf, dest, tag=0) -> Prequest:
        _buffer(buf, False, "Send_init"), self._dest(dest, "Send_init"), self._stag(tag, "Send_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, False, "Send_init")
                                or _null_done_send(), _K_SEND)

    def Ssend_init(self, buf, dest, tag=0) -> Prequest:
        _buffer(buf, False, "Ssend_init"), self._dest(dest, "Ssend_init"), self._stag(tag, "Ssend_init")
        return self._persistent(lambda: self._isend(buf, dest, tag, True, "Ssend_init")
                                or _null_done_send(), _K_SEND)

    def Recv_init(self, buf, source=ANY_SOURCE, tag=ANY_TAG) -> Prequest:
        _buffer(buf, True, "Recv_init"), self._source(source, "Recv_init"), self._rtag(tag, "Recv_init")
        return self._persistent(lambda: self._irecv(buf, source, tag, "Recv_init"), _K_RECV)

    # -- probe --
    def _probe_match(self, source, tag, what):
        w = self._source(source, what)
        tag = self._rtag(tag, what)
        return w, tag

    def Iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        w, tag = self._probe_match(source, tag, "Iprobe")
        if w == PROC_NULL:
            _fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return True
        self._t.progress()
        m = self._t.engine.probe(w, tag, self._ctx)
        if m is None:
            return False
        _fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return True

    def Probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        w, tag = self._probe_match(source, tag, "Probe")
        if w == PROC_NULL:
            _fill(status, PROC_NULL, ANY_TAG, 0, 0)
            return True
        eng = self._t.engine
        ctx = self._ctx
        found = []

        def pred():
            m = eng.probe(w, tag, ctx)
            if m is not None:
                found.append(m)
                return True
            return False

        self._t.wait_until(pred, None if w == ANY_SOURCE else w)
        m = found[0]
        _fill(status, self._rank_of(m.source), m.tag, 0, m.nbytes)
        return True

    def iprobe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        return self.Iprobe(source, tag, status)

    def probe(self, source=ANY_SOURCE, tag=ANY_TAG, status=None) -> bool:
        return self.Probe(source, tag, status)

    # -- objects --
    def send(self, obj, dest, tag=0) -> None:
        if type(dest) is int and 0 <= dest < self.size and type(tag) is int and 0 <= tag <= TAG_UB:
            # the common case, validated inline: a small object straight into the ring
            if (type(obj) is np.ndarray and obj.nbytes <= self._t.eager_limit - 1024
                    and obj.dtype.kind in T.ARRAY_KINDS and obj.flags.c_contiguous
                    and self._t.send_fast(self._group[dest], self._ctx, tag,
                                          T.pack_array(obj), T.F_OBJ | T.F_ARRAY)):
                return
            pickled = _dumps(obj)
            if not pickled[1] and self._t.send_fast(self._group[dest], self._ctx, tag,
                                                    pickled[0], T.F_OBJ):
                return
            self._wait_send(self._osend(obj, dest, tag, False, "send", pickled))
            return
        self._wait_send(self._osend(obj, dest, tag, False, "send"))

    def ssend(self, obj, dest, tag=0) -> None:
        self._wait_send(self._osend(obj, dest, tag, True, "ssend"))

    def bsend(self, obj, dest, tag=0) -> None:
        self.send(obj, dest, tag)

    def isend(self, obj, dest, tag=0) -> Request:
        return self._sreq(self._osend(obj, dest, tag, False, "isend"))

    def issend(self, obj, dest, tag=0) -> Request:
        return self._sreq(self._osend(obj, dest, tag, True, "issend"))

    def recv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG, status=None):
        if (type(source) is int and -1 <= source < self.size and type(tag) is int
                and -1 <= tag <= TAG_UB):
            res = self._t.recv_fast(self._group[source] if source >= 0 else source, tag,
                                    self._ctx, None)
            if res is not None:
                v = res[2]
                if type(v) is bytes:
                    if status is not None:
                        _fill(status, self._rank_of(res[0]), res[1], 0, len(v))
                    return pickle.loads(v)
                if status is not None:  # a packed object: (stream, parts, nbytes)
                    _fill(status, self._rank_of(res[0]), res[1], 0, v[2])
                return _loads(v[:2])
        return self._wait_recv(self._orecv(source, tag, "recv"), status, obj=True)

    def irecv(self, buf=None, source=ANY_SOURCE, tag=ANY_TAG) -> Request:
        return Request._make(self._orecv(source, tag, "irecv"), _K_ORECV, self)

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=ANY_SOURCE,
                 recvtag=ANY_TAG, status=None):
        r = self._orecv(source, recvtag, "sendrecv")
        s = self._osend(sendobj, dest, sendtag, False, "sendrecv")
        self._wait_send(s)
        return self._wait_recv(r, status, obj=True)

    # -- barrier (dissemination: log2(n) rounds of zero-byte messages, no atomics) --
    def Barrier(self) -> None:
        n = self.size
        if n == 1:
            self._t.engine  # raises after Finalize and in a forked child, as every call
            return
        if self._identity:  # the world's group: one shared-memory word per rank (_coll)
            return self._shm_barrier()
        t = self._t
        me = self.rank
        k = 1
        rnd = _BARRIER_TAG  # a tag space of its own on the collective context
        while k < n:
            src = self._group[(me - k) % n]
            dst = self._group[(me + k) % n]
            if not t.send_fast(dst, self._cctx, rnd, _EMPTY):
                s = T.SendOp(dst, rnd, self._cctx, _EMPTY)
                t.isend(s)
                if not s.done:
                    t.wait(s, dst)
                if s.exc is not None:
                    raise s.exc
            if t.recv_fast(src, rnd, self._cctx, _EMPTY) is None:
                r = T.RecvOp(src, rnd, self._cctx, _EMPTY)
                t.irecv(r)
                t.wait(r, src)
                if r.exc is not None:
                    raise r.exc
            k <<= 1
            rnd += 1

    def barrier(self) -> None:
        self.Barrier()

    def Abort(self, errorcode: int = 1):
        """Terminate this rank at once; the launcher then tells the others."""
        import sys
        sys.stderr.write(f"mmpi: rank {self.rank} called Abort({errorcode})\n")
        sys.stderr.flush()
        os._exit(errorcode if 0 < errorcode < 256 else 1)

    def Free(self) -> None:
        pass

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise MmpiNotImplementedError(
            f"Comm.{name} is not implemented by driller.mmpi yet (point-to-point, "
            f"Barrier and the object methods are); use mpi4py for it meanwhile")


def _null_done_send():
    op = T.SendOp(PROC_NULL, 0, 0, _EMPTY)
    op.done = True
    return op


# ------------------------------------------------------------------ world state

class _State:
    pid = None
    transport = None
    world = None
    comm_world = None
    comm_self = None
    finalized = False
    rank = None          # this process's world rank once joined
    launched = False     # joined a world of ranks (launcher, spawn), not a singleton
    launch = None        # (rank, size, world fd) taken from the launcher's environment
    launch_pid = None    # the process that took it
    launch_error = None  # an MmpiError: the launcher's environment was unusable
    forked_from = None   # this process is a fork of that rank (it cannot communicate)


_state = _State()


def _adopt_launch_env() -> None:
    """At import in a rank: take the launcher's variables out of ``os.environ`` and
    make the world fd non-inheritable, keeping both in memory, so that no child
    (subprocess, exec) ever takes itself for a rank.  COMM_WORLD joins later."""
    env = os.environ
    if W.ENV_WORLD_FD not in env:
        return
    raw = {k: env.pop(k, None) for k in (W.ENV_RANK, W.ENV_SIZE, W.ENV_WORLD_FD)}
    try:
        rank, size, fd = (int(raw[k]) for k in (W.ENV_RANK, W.ENV_SIZE, W.ENV_WORLD_FD))
        os.set_inheritable(fd, False)
    except (TypeError, ValueError, OSError) as e:
        _state.launch_error = MmpiError(
            f"bad mmpi environment {raw}: {e} (start ranks with `driller run -n N`)")
        return
    _state.launch = (rank, size, fd)
    _state.launch_pid = os.getpid()


def launched_rank() -> int | None:
    """The world rank the launcher gave this process (None: not launched)."""
    if _state.rank is not None and _state.launched:
        return _state.rank
    return _state.launch[0] if _state.launch is not None else None


def _fork_error(rank: int) -> MmpiError:
    return MmpiError(f"this process is a fork of rank {rank}; only the rank itself can "
                     f"communicate (a forked child shares the rank's world block: its "
                     f"messages would corrupt the rank's own)")


def _after_fork_in_child() -> None:
    t = _state.transport
    if t is not None and type(t) is T.Transport:
        rank = _state.rank
        T.make_unusable(t, str(_fork_error(rank)))
        if _state.launched:
            _state.forked_from = rank
        else:  # a singleton's child: a new singleton on its next use of COMM_WORLD
            _state.transport = _state.world = _state.comm_world = _state.comm_self = None
            _state.pid = _state.rank = None
    elif _state.launched or _state.launch is not None:
        _state.forked_from = _state.rank if _state.launched else _state.launch[0]


os.register_at_fork(after_in_child=_after_fork_in_child)


def init_world(rank: int, size: int, fd: int, *, close_fd: bool = False) -> Comm:
    """Join the world block in ``fd`` as ``rank`` of ``size``; returns COMM_WORLD.

    The spawn helper calls this in forked ranks; COMM_WORLD's lazy init calls it
    from the environment.  The fd stays open unless ``close_fd``.
    """
    world = W.World(fd)
    if close_fd:
        os.close(fd)
    if world.size != size:
        raise MmpiError(f"world block holds {world.size} ranks, but size {size} was given")
    if not 0 <= rank < size:
        raise MmpiError(f"rank {rank} out of range for a world of size {size}")
    t = T.Transport(world, rank)
    _state.rank = rank
    _state.launched = True
    _state.forked_from = None
    _state.pid = os.getpid()
    _state.world = world
    _state.transport = t
    _state.comm_world = Comm(t, list(range(size)), _CTX_WORLD, "MPI_COMM_WORLD")
    _state.comm_self = Comm(t, [rank], _CTX_SELF, "MPI_COMM_SELF")
    _state.finalized = False
    return _state.comm_world


def _ensure() -> None:
    if _state.transport is not None and _state.pid == os.getpid():
        return
    if _state.forked_from is not None:
        raise _fork_error(_state.forked_from)
    if _state.finalized:
        raise MmpiError("MPI.Finalize() was called in this process: no mmpi call after it")
    if _state.launch_error is not None:
        raise _state.launch_error
    _adopt_launch_env()  # (normally done at import)
    if _state.launch is not None:
        rank, size, fd = _state.launch
        if _state.launch_pid != os.getpid():  # pragma: no cover - the fork hook sets it
            raise _fork_error(rank)
        _state.launch = None
        init_world(rank, size, fd, close_fd=True)
    else:  # singleton init, as MPI does without a launcher
        fd = W.create_world(1)
        init_world(0, 1, fd, close_fd=True)
        _state.launched = False


def world_comm() -> Comm:
    _ensure()
    return _state.comm_world


def self_comm() -> Comm:
    _ensure()
    return _state.comm_self


def finalize() -> None:
    """MPI.Finalize: this rank is done; every later communicator call raises."""
    t = _state.transport
    if t is not None and _state.pid == os.getpid() and type(t) is T.Transport:
        t.close()
        T.make_unusable(t, "MPI.Finalize() was called in this rank: no communication "
                           "after it (communicators, requests and COMM_WORLD all raise)")
    _state.finalized = True


def is_initialized() -> bool:
    return _state.transport is not None and _state.pid == os.getpid()


def is_finalized() -> bool:
    return _state.finalized


# a rank's children must never take themselves for ranks: done at import, not first use
_adopt_launch_env()
