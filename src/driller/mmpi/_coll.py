"""Collective operations, reduction ops and nonblocking collectives of mmpi.

``Comm`` inherits :class:`CollectiveMixin`.  Every collective runs on the
communicator's collective context (``comm._cctx``), so it never matches user
point-to-point traffic; each call takes the next sequence number of its
communicator and tags its messages ``seq << 8 | step``, so consecutive (or
concurrent nonblocking) collectives never match each other either.  MPI
requires every rank to call the collectives of a communicator in the same
order, which keeps the sequence numbers in agreement.

Algorithms (docs/collectives.md has the measurements behind the thresholds):

* small messages go through point-to-point eager messages: flat fan-out/fan-in
  for few ranks (fewer dependent wake-ups, which dominate when ranks outnumber
  cores), binomial trees beyond ``FLAT_MAX`` ranks, recursive doubling for
  small ``Allreduce``;
* the barrier of a world-group communicator is one shared-memory word per rank
  (``_shm_barrier``; ``Comm.Barrier`` calls it);
* large buffers are never relayed: a rendezvous message is copied once,
  straight from the owner's memory by the reader (process_vm_readv), so a
  large ``Bcast`` is root -> every rank directly, one copy per receiver, and a
  large ``Allgather`` reads every block from its owner;
* large reductions (``Allreduce``, ``Reduce``, ``Reduce_scatter``) exchange
  buffer addresses, then each rank reduces its own slice reading every peer's
  buffer directly, cache-sized chunk by chunk (read into an L2-resident
  scratch, numpy ufunc in place), then writes its result slice once into every
  receive buffer that needs it (process_vm_writev), and a barrier ends it.

Algorithms are generators yielding the point-to-point operations they wait on:
blocking calls drive them to the end, nonblocking ones (``Ibarrier``,
``Ibcast``, ``Iallreduce``) advance them at ``Test``/``Wait`` and in every
progress of the transport while they are in flight.
"""

from __future__ import annotations

import errno
import inspect
import os
import struct
import threading
import time

import numpy as np

from .. import _linux
from ..errors import MmpiError, PeerDiedError, TruncationError
from . import _comm as C   # circular: _comm imports this module; use C.* at call time only
from . import _transport as T
from . import _world as W
from ._group import CommunicatorMixin

__all__ = [
    "CollectiveMixin", "Op", "IN_PLACE",
    "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR",
    "MAXLOC", "MINLOC", "REPLACE", "NO_OP", "OP_NULL",
]


FLAT_MAX = 8                # up to this many ranks, small fan-out/fan-in is flat
DIRECT_MIN = 1 << 19        # reductions of at least this many bytes read peers directly
FAST_MAX = 1 << 14          # Allreduce of at most this many bytes: the plain blocking path
CHUNK = 1 << 19             # bytes per direct-read chunk (scratch + accumulator chunk ~ L2)
R_COLL_EPOCH = W.R_COLL_EPOCH   # rank-table words (line 3, written by the rank): barrier
R_COLL_SLEEP = W.R_COLL_SLEEP   # count, and "asleep in a barrier" flag
_FENCE = threading.Lock()
ALLGATHER_DIRECT = True
SHM_HALF = 4096             # a collective slot is two halves (see _world.COLL_SLOT)
SHM_HDR = 64                # half = (nbytes, dtype) header, then data
SHM_MAX = SHM_HALF - SHM_HDR  # small world Allreduce up to this many bytes: in the slots
_TAGMASK = (1 << 20) - 1   # tags < 2**28: Barrier's own tags are 2**29 + round


class _InPlace:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MPI.IN_PLACE"

    def __reduce__(self):
        return "IN_PLACE"


IN_PLACE = _InPlace()


# ================================================================== reduction ops

def _is_array(x) -> bool:
    return isinstance(x, np.ndarray)


def _o_max(a, b):
    if _is_array(a) or _is_array(b):
        return np.maximum(a, b)
    return b if b > a else a


def _o_min(a, b):
    if _is_array(a) or _is_array(b):
        return np.minimum(a, b)
    return b if b < a else a


def _o_land(a, b):
    if _is_array(a) or _is_array(b):
        return np.logical_and(a, b)
    return bool(a) and bool(b)


def _o_lor(a, b):
    if _is_array(a) or _is_array(b):
        return np.logical_or(a, b)
    return bool(a) or bool(b)


def _o_lxor(a, b):
    if _is_array(a) or _is_array(b):
        return np.logical_xor(a, b)
    return bool(a) != bool(b)


def _o_maxloc(a, b):
    if a[0] > b[0]:
        return a
    if b[0] > a[0]:
        return b
    return a if a[1] <= b[1] else b


def _o_minloc(a, b):
    if a[0] < b[0]:
        return a
    if b[0] < a[0]:
        return b
    return a if a[1] <= b[1] else b


class Op:
    """A reduction operation: the predefined ones (``SUM``, ``MAX``...) or a
    user function made with :meth:`Op.Create`.

    Buffers reduce with numpy ufuncs (in place, elementwise); objects with
    Python operators.  ``op(x, y)`` combines two objects (x from the lower rank).
    """

    __slots__ = ("name", "_ufunc", "_pyfn", "commute", "_user", "_user_args", "_freed")

    def __init__(self, name, ufunc=None, pyfn=None, commute=True, user=None):
        self.name = name
        self._ufunc = ufunc
        self._pyfn = pyfn
        self.commute = commute
        self._user = user
        self._user_args = 3
        self._freed = False
        if user is not None:
            try:
                params = inspect.signature(user).parameters.values()
                pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if len(pos) == 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
                    self._user_args = 2
            except (TypeError, ValueError):
                pass

    @classmethod
    def Create(cls, function, commute: bool = False) -> "Op":
        """A user op.  Buffers: ``function(invec, inoutvec, datatype)`` stores
        ``invec op inoutvec`` into ``inoutvec`` (typed numpy arrays; invec holds
        the lower ranks' data).  Objects: ``function(a, b[, datatype])`` returns
        ``a op b``.  ``commute=False`` keeps rank order."""
        if not callable(function):
            raise MmpiError(f"Op.Create needs a callable, got {type(function).__name__}")
        return cls(getattr(function, "__name__", "user op"), commute=bool(commute),
                   user=function)

    def Free(self) -> None:
        if self._user is None:
            raise MmpiError(f"cannot free the predefined op MPI.{self.name}")
        self._freed = True

    def Is_commutative(self) -> bool:
        return self.commute

    @property
    def is_commutative(self) -> bool:
        return self.commute

    def Is_predefined(self) -> bool:
        return self._user is None

    @property
    def is_predefined(self) -> bool:
        return self._user is None

    def __repr__(self) -> str:
        return f"<mmpi.Op {self.name}>"

    def __call__(self, x, y):
        """x op y for Python objects (x: the lower rank's value)."""
        if self._user is not None:
            if self._user_args == 2:
                return self._user(x, y)
            return self._user(x, y, None)
        return self._pyfn(x, y)

    # -- buffers --
    def _check_buffer(self, dtype, what):
        if self._freed:
            raise MmpiError(f"{what}: op {self.name} was freed")
        if dtype.hasobject:
            raise MmpiError(f"{what}: the buffers hold Python object pointers ({dtype}), "
                            f"which cannot be moved as bytes; use the lowercase method "
                            f"({what.lower()}(), which pickles the objects)")
        if self._user is None and self._ufunc is None:
            raise MmpiError(f"{what}: MPI.{self.name} on buffers needs (value, index) pair "
                            f"datatypes, which driller.MPI does not have; reduce Python "
                            f"objects (lowercase {what.lower()}) with (value, index) tuples")
        if self._user is None and dtype.kind not in "biufc":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for datatype {dtype}")
        if self._user is None and self._ufunc in (np.bitwise_and, np.bitwise_or,
                                                  np.bitwise_xor) and dtype.kind not in "biu":
            raise MmpiError(f"{what}: MPI.{self.name} needs an integer datatype, got {dtype}")
        if self._user is None and self._ufunc in (np.maximum, np.minimum) and dtype.kind == "c":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for complex {dtype}")

    def _lohi(self, lo, hi, dt):
        """lo op hi (lo: the lower ranks' data); returns whichever of lo/hi holds it."""
        if self._user is None:
            self._ufunc(lo, hi, out=lo)
            return lo
        self._user(lo, hi, dt)
        return hi


def _op(name, ufunc, pyfn):
    return Op(name, ufunc, pyfn)


SUM = _op("SUM", np.add, lambda a, b: a + b)
PROD = _op("PROD", np.multiply, lambda a, b: a * b)
MAX = _op("MAX", np.maximum, _o_max)
MIN = _op("MIN", np.minimum, _o_min)
LAND = _op("LAND", np.logical_and, _o_land)
LOR = _op("LOR", np.logical_or, _o_lor)
LXOR = _op("LXOR", np.logical_xor, _o_lxor)
BAND = _op("BAND", np.bitwise_and, lambda a, b: a & b)
BOR = _op("BOR", np.bitwise_or, lambda a, b: a | b)
BXOR = _op("BXOR", np.bitwise_xor, lambda a, b: a ^ b)
MAXLOC = _op("MAXLOC", None, _o_maxloc)
MINLOC = _op("MINLOC", None, _o_minloc)
REPLACE = _op("REPLACE", None, lambda a, b: b)
NO_OP = _op("NO_OP", None, lambda a, b: a)
OP_NULL = None


def _check_op(op, what) -> Op:
    if not isinstance(op, Op):
        raise MmpiError(f"{what}: invalid op {op!r}: use MPI.SUM, MPI.MAX, ... or "
                        f"MPI.Op.Create(fn, commute)")
    if op._freed:
        raise MmpiError(f"{what}: op {op.name} was freed")
    return op


# ================================================================== buffers

class _Buf:
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


def _np_dtype(dt) -> np.dtype:
    tc = dt.typechar
    if tc == "c":
        return np.dtype("S1")
    if tc == "w":
        return np.dtype("U1")
    return np.dtype(tc)


def _obj_dtype(obj) -> np.dtype:
    d = getattr(obj, "dtype", None)
    if isinstance(d, np.dtype):
        return d
    try:
        return np.dtype(memoryview(obj).format)
    except (TypeError, ValueError):
        return np.dtype("B")


def _is_dt(x) -> bool:
    return isinstance(x, C.Datatype) or (isinstance(x, str) and x in C._TYPECHARS)


def _intlist(x, n, what, name):
    try:
        xs = [int(v) for v in x]
    except TypeError:
        raise MmpiError(f"{what}: {name} must be a sequence of {n} ints, got {x!r}") from None
    if len(xs) != n:
        raise MmpiError(f"{what}: {name} has {len(xs)} entries, the communicator has {n} ranks")
    if any(v < 0 for v in xs):
        raise MmpiError(f"{what}: negative entry in {name} {xs}")
    return xs


def _parse(spec, writable, what, blocks=1, vector=False):
    """Parse an mpi4py buffer spec.  ``blocks``: the buffer holds that many equal
    blocks (an explicit count is per block, as mpi4py's); ``vector``: counts
    and displacements per block ([buf, counts, displs, dt] and friends)."""
    b = _Buf()
    if type(spec) is np.ndarray and not vector and spec.flags.c_contiguous and \
            (spec.flags.writeable or not writable) and spec.dtype.kind in "biufc" and \
            spec.size % blocks == 0:
        # fast path: a plain contiguous numeric numpy array
        a = spec.reshape(-1)
        b.a = a
        b.mv = memoryview(a).cast("B")
        b.dtype = a.dtype
        b.dt = C._TYPECHARS.get(a.dtype.char, C.BYTE)
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
        if rest and _is_dt(rest[-1]):
            dt = C._datatype(rest.pop())
        if len(rest) == 1:
            if isinstance(rest[0], (list, tuple)) and vector and len(rest[0]) == 2 and \
                    all(isinstance(v, (list, tuple, type(None))) or hasattr(v, "__len__")
                        for v in rest[0]):
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
    if dt is None and isinstance(count, C.Datatype):  # pragma: no cover - defensive
        dt, count = count, None
    mv = C._byteview(buf, writable, what)
    if dt is not None:
        dtype = _np_dtype(dt)
    else:
        dtype = _obj_dtype(buf)
        dt = C._TYPECHARS.get(dtype.char, C.BYTE)
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
            raise MmpiError(f"{what}: a vector buffer needs counts: [buf, counts, displs, "
                            f"datatype] or [buf, (counts, displs), datatype]")
        if isinstance(count, int):
            count = [count] * blocks
        counts = _intlist(count, blocks, what, "counts")
        if displ is None:
            displs, acc = [], 0
            for c in counts:
                displs.append(acc)
                acc += c
        else:
            displs = _intlist(displ, blocks, what, "displacements")
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


def _bytes(a) -> memoryview:
    """A flat byte view of a contiguous numpy array."""
    return memoryview(a).cast("B") if a.size else C._EMPTY


def _address(mv, writable=False) -> int:
    return _linux.buffer_address(mv, writable)[0] if len(mv) else 0


# ================================================================== driving

def _peer_of(op):
    if type(op) is T.SendOp:
        return op.dest
    s = op.source
    return None if s < 0 else s


def _drive(t, gen):
    """Run an algorithm generator to the end (blocking); its return value."""
    try:
        ops = gen.send(None)
        while True:
            for op in ops:
                if op is not None and not op.done:
                    t.wait(op, _peer_of(op))
            ops = gen.send(None)
    except StopIteration as e:
        return e.value


def _waitall(t, ops):
    """Wait for every op of a list (errors are the caller's to check)."""
    for op in ops:
        if op is not None and not op.done:
            t.wait(op, _peer_of(op))


def _first_error(ops):
    for op in ops:
        if op is not None and op.exc is not None:
            raise op.exc


class _Active(list):
    """The nonblocking collectives in flight on one transport."""

    busy = False


def _hook(t, cop) -> None:
    """Advance ``cop`` inside every progress() of ``t`` while it is in flight.

    MPI lets a rank complete its requests in any order (or wait in a Recv)
    while a peer waits for its nonblocking collective: those must advance
    whenever this rank makes progress at all.  The transport has no hook, so
    while any nonblocking collective is active its ``progress`` is wrapped on
    the instance (the p2p hot path pays nothing otherwise)."""
    active = t.__dict__.get("_coll_active")
    if active is None:
        active = t._coll_active = _Active()
    active.append(cop)
    if "progress" in t.__dict__:
        return
    base = type(t).progress

    def progress():
        did = base(t)
        if active and not active.busy:
            active.busy = True
            try:
                for c in list(active):
                    if c._advance():
                        did = True
            finally:
                active.busy = False
        return did

    t.progress = progress


def _unhook(t, cop) -> None:
    active = t.__dict__.get("_coll_active")
    if active is not None and cop in active:
        active.remove(cop)
        if not active and "progress" in t.__dict__:
            del t.progress


class _CollOp:
    """A nonblocking collective in flight; looks like a transport op (done, exc)."""

    __slots__ = ("t", "gen", "ops", "finished", "exc", "value", "running")

    def __init__(self, t, gen):
        self.t = t
        self.gen = gen
        self.ops = ()
        self.finished = False
        self.exc = None
        self.value = None
        self.running = False
        self._advance()
        if not self.finished:
            _hook(t, self)

    def _advance(self) -> bool:
        """Resume the algorithm as far as it can go without waiting; True if it moved."""
        if self.running:
            return False
        moved = False
        self.running = True
        try:
            while not self.finished:
                for op in self.ops:
                    if op is not None and not op.done:
                        return moved
                moved = True
                try:
                    self.ops = self.gen.send(None)
                except StopIteration as e:
                    self.finished, self.value, self.ops = True, e.value, ()
                except MmpiError as e:
                    self.finished, self.exc, self.ops = True, e, ()
                if self.finished:
                    _unhook(self.t, self)
        finally:
            self.running = False
        return moved

    @property
    def done(self) -> bool:
        if not self.finished:
            self.t.progress()
            self._advance()
        return self.finished

    def run(self):
        t = self.t
        while not self.finished:
            for op in self.ops:
                if op is not None and not op.done:
                    try:
                        t.wait(op, _peer_of(op))
                    except MmpiError as e:
                        self.finished, self.exc, self.ops = True, e, ()
                        _unhook(t, self)
                        self.gen.close()
                        return
            self._advance()


_REQ = None


def _request(comm, gen):
    """A Request (a C.Request subclass) driving ``gen``."""
    global _REQ
    if _REQ is None:
        class CollRequest(C.Request):
            """A nonblocking collective: it advances inside Test/Wait (and any other
            mmpi call that waits)."""

            __slots__ = ()

            def _done(self, status):
                op = self._op
                self._op = None
                C._fill(status, C.ANY_SOURCE, C.ANY_TAG, 0, 0)
                if op is not None and op.exc is not None:
                    raise op.exc
                return None if op is None else op.value

            def Wait(self, status=None) -> bool:
                if self._op is not None:
                    self._op.run()
                self._done(status)
                return True

            def wait(self, status=None):
                if self._op is not None:
                    self._op.run()
                return self._done(status)

            def Test(self, status=None) -> bool:
                if self._op is not None and not self._op.done:
                    return False
                self._done(status)
                return True

            def test(self, status=None):
                if self._op is not None and not self._op.done:
                    return False, None
                return True, self._done(status)

            def Get_status(self, status=None) -> bool:
                return self._op is None or self._op.done

            def Cancel(self) -> None:
                pass  # collectives cannot be cancelled

            def __repr__(self) -> str:
                return "<mmpi.Request collective>" if self._op else "<mmpi.Request NULL>"

        _REQ = CollRequest
    return _REQ._make(_CollOp(comm._t, gen), C._K_SEND, comm)


# ================================================================== the mixin

class CollectiveMixin(CommunicatorMixin):
    """Collectives (and, inherited, communicator construction) for ``Comm``.

    Needs from Comm: ``_t`` (transport), ``_group`` (world ranks), ``rank``,
    ``size``, ``_cctx`` (the collective context), ``_name``.
    """

    # ---------------------------------------------------------- plumbing
    def _cbase(self) -> int:
        """Start a collective: the base tag of this call."""
        s = self.__dict__.get("_cseq", 0) + 1
        self._cseq = s
        return ((s & _TAGMASK) + 1) << 8  # >= 512: never Barrier's round tags (0..63)

    def _cs(self, mv, dst: int, tag: int):
        op = T.SendOp(self._group[dst], tag, self._cctx, mv)
        self._t.isend(op)
        return op

    def _cr(self, mv, src: int, tag: int):
        op = T.RecvOp(self._group[src], tag, self._cctx, mv)
        self._t.irecv(op)
        return op

    def _ocomm(self):
        """A twin communicator on the collective context, for object messages."""
        c = self.__dict__.get("_ocomm_")
        if c is None:
            c = C.Comm(self._t, self._group, self._cctx, f"{self._name} (collectives)")
            self._ocomm_ = c
        return c

    def _co_send(self, obj, dst, tag):
        return self._ocomm()._osend(obj, dst, tag, False, "collective")

    def _co_recv(self, src, tag):
        return self._ocomm()._orecv(src, tag, "collective")

    def _root(self, root, what) -> int:
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or \
                not 0 <= root < self.size:
            raise MmpiError(f"{what}: invalid root {root!r} (communicator of size "
                            f"{self.size}; valid: 0..{self.size - 1})")
        return int(root)

    def _count_check(self, op, expect, what, src):
        """A receive finished: raise its error, or a size mismatch."""
        if op.exc is not None:
            raise op.exc
        if op.count != expect:
            raise MmpiError(f"{what}: rank {self.rank} expected {expect} bytes from rank "
                            f"{src} but got {op.count}: every rank must pass matching "
                            f"counts and datatypes")

    def _pid(self, r: int) -> int:
        return self._t._pid(self._group[r])

    def _readv(self, r: int, local: int, remote: int, n: int, what: str) -> None:
        try:
            _linux.process_vm_readv(self._pid(r), local, remote, n)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise PeerDiedError(f"{what}: rank {r} of the communicator died while rank "
                                    f"{self.rank} was reading its buffer",
                                    rank=self._t.blame(self._group[r])) from None
            if e.errno in T.DENIED:
                raise MmpiError(f"{what}: " + T.denial_message(
                    e, f"reading {n} bytes from rank {r}")) from None
            raise MmpiError(f"{what}: reading {n} bytes from rank {r} failed: {e}") from None

    def _writev(self, r: int, local: int, remote: int, n: int, what: str) -> None:
        try:
            _linux.process_vm_writev(self._pid(r), local, remote, n)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise PeerDiedError(f"{what}: rank {r} of the communicator died while rank "
                                    f"{self.rank} was writing into its buffer",
                                    rank=self._t.blame(self._group[r])) from None
            if e.errno in T.DENIED:
                raise MmpiError(f"{what}: " + T.denial_message(
                    e, f"writing {n} bytes into rank {r}")) from None
            raise MmpiError(f"{what}: writing {n} bytes to rank {r} failed: {e}") from None

    def _g_direct_ok(self, base, blk):
        """Whether every rank of this communicator may read and write every
        other's memory (process_vm_readv/writev): the same answer on every rank,
        decided once per communicator by two small exchanges (tags base+64..67
        of this collective).  False (DRILLER_MMPI_SINGLE_COPY=0 on some rank, or a
        read denied: Yama, no CAP_SYS_PTRACE, a non-dumpable rank) selects the
        algorithms that move data by messages, which take the transport's
        two-copy fallback.  The probe reads a word of each peer's world block:
        reading and writing need the same ptrace access."""
        ok = self.__dict__.get("_direct_ok_")
        if ok is not None:
            return ok
        t = self._t
        n, me = self.size, self.rank
        info = struct.pack("<2q", t.base, 1 if t.single_copy else 0)
        table = yield from self._g_exchange(info, base + 64, blk)
        peers = [struct.unpack_from("<2q", table, 16 * i) for i in range(n)]
        mine = all(flag for _, flag in peers)
        msg = None
        if mine:
            probe = bytearray(8)
            local = _address(memoryview(probe), True)
            for i in range(1, n):
                r = (me + i) % n
                w = self._group[r]
                if w in t.no_pull:
                    mine = False
                    break
                try:
                    _linux.process_vm_readv(self._pid(r), local, peers[r][0], 8)
                except OSError as e:
                    if e.errno not in T.DENIED:
                        raise MmpiError(f"collective: probing rank {r} failed: {e}") from None
                    msg = T.denial_message(e, f"reading rank {r} (pid {self._pid(r)}) of "
                                              f"{self._name or 'a communicator'} from rank {me}")
                    mine = False
                    break
        votes = yield from self._g_exchange(struct.pack("<q", 1 if mine else 0), base + 66, blk)
        ok = all(struct.unpack_from("<q", votes, 8 * i)[0] for i in range(n))
        self._direct_ok_ = ok
        if msg:  # after the vote: every rank decided, whatever the warning filter does
            T._warn_once(msg)
        return ok

    def _g_same_size(self, nb, isz, base, blk, what):
        """The direct path's size check (same error on every rank), for the
        message-based algorithms that replace it when _g_direct_ok is False."""
        table = yield from self._g_exchange(struct.pack("<2q", nb, isz), base + 68, blk)
        for i in range(self.size):
            pnb, psz = struct.unpack_from("<2q", table, 16 * i)
            if pnb != nb or psz != isz:
                raise MmpiError(f"{what}: rank {i} passes {pnb} bytes but rank {self.rank} "
                                f"passes {nb}: every rank must pass the same count and "
                                f"datatype")

    def _g_sync(self, base, blk):
        """A barrier inside a collective: the shared-memory one when blocking on a
        world-group communicator, else dissemination (tags base..base+12)."""
        if blk and self._identity:
            self._shm_barrier("collective")
            return
        yield from self._g_barrier(base, blk)

    # ---------------------------------------------------------- generators (p2p)
    def _xsend(self, mv, dst: int, tag: int):
        """Start a send: straight into the ring when it fits (then complete: None),
        else a SendOp to wait for."""
        if self._t.send_fast(self._group[dst], self._cctx, tag, mv):
            return None
        return self._cs(mv, dst, tag)

    def _xrecv(self, mv, src: int, tag: int, blk: bool, what: str):
        """Receive exactly len(mv) bytes (a generator).  ``blk``: the caller
        blocks anyway, so try the transport's spinning fast path first."""
        if blk:
            res = self._t.recv_fast(self._group[src], tag, self._cctx, mv)
            if res is not None:
                if res[2] != len(mv):
                    raise MmpiError(f"{what}: rank {self.rank} expected {len(mv)} bytes from "
                                    f"rank {src} but got {res[2]}: every rank must pass "
                                    f"matching counts and datatypes")
                return
        r = self._cr(mv, src, tag)
        yield [r]
        self._count_check(r, len(mv), what, src)

    def _g_barrier(self, base, blk=False):
        """Dissemination barrier: ceil(log2 n) rounds of zero-byte messages."""
        n, me = self.size, self.rank
        k, rnd = 1, 0
        empty = C._EMPTY
        while k < n:
            s = self._xsend(empty, (me + k) % n, base + rnd)
            yield from self._xrecv(empty, (me - k) % n, base + rnd, blk, "Barrier")
            if s is not None:
                yield [s]
                _first_error((s,))
            k <<= 1
            rnd += 1

    def _g_bcast(self, mv, root, base, what="Bcast", blk=False):
        """Flat (few ranks, or large: one direct copy per receiver) or binomial."""
        n, me = self.size, self.rank
        if n == 1:
            return
        nb = len(mv)
        if n <= FLAT_MAX or nb > self._t.eager_limit:
            if me == root:
                ops = [self._xsend(mv, r, base) for r in range(n) if r != root]
                ops = [o for o in ops if o is not None]
                if ops:
                    yield ops
                    _first_error(ops)
            else:
                yield from self._xrecv(mv, root, base, blk, what)
            return
        rel = (me - root) % n
        mask = 1
        err = None
        while mask < n:
            if rel & mask:
                src = (rel - mask + root) % n
                try:
                    yield from self._xrecv(mv, src, base, blk, what)
                except (MmpiError, TruncationError) as e:
                    if isinstance(e, PeerDiedError):
                        raise
                    err = e       # forward anyway: the subtree must not hang
                break
            mask <<= 1
        mask >>= 1
        ops = []
        while mask > 0:
            if rel + mask < n:
                ops.append(self._xsend(mv, (rel + mask + root) % n, base))
            mask >>= 1
        ops = [o for o in ops if o is not None]
        if ops:
            yield ops
            _first_error(ops)
        if err is not None:
            raise err

    def _g_reduce(self, acc, send, op, dt, root, base, what, blk=False):
        """Binomial-tree reduce.  ``acc``: writable array for the running result
        (None: allocate when needed); ``send``: this rank's data (array).
        Returns the array holding the result at ``root`` (None elsewhere)."""
        n, me = self.size, self.rank
        troot = root if op.commute else 0
        rel = (me - troot) % n
        cur = send            # holds the lower ranks' partial result
        owned = False
        mask = 1
        tmp = None
        while mask < n:
            if rel & mask:
                dst = (rel - mask + troot) % n
                s = self._xsend(_bytes(cur), dst, base)
                if s is not None:
                    yield [s]
                    _first_error((s,))
                cur = None
                break
            child = rel + mask
            if child < n:
                if tmp is None:
                    tmp = np.empty_like(send)
                src = (child + troot) % n
                yield from self._xrecv(_bytes(tmp), src, base, blk, what)
                if not owned:
                    if acc is None:
                        cur = cur.copy()
                    elif acc is not cur:
                        np.copyto(acc, cur)
                        cur = acc
                    owned = True
                res = op._lohi(cur, tmp, dt)
                if res is tmp:
                    tmp = cur
                cur = res
            mask <<= 1
        if troot != root:
            if me == troot:
                s = self._xsend(_bytes(cur), root, base + 1)
                if s is not None:
                    yield [s]
                    _first_error((s,))
                return None
            if me == root:
                res = acc if acc is not None else np.empty_like(send)
                yield from self._xrecv(_bytes(res), troot, base + 1, blk, what)
                return res
        return cur if me == root else None

    def _g_exchange(self, payload: bytes, base, blk=False):
        """Allgather of a small fixed-size record from every rank: gather to rank 0,
        then broadcast the table (2(n-1) eager messages)."""
        n, me = self.size, self.rank
        k = len(payload)
        out = bytearray(k * n)
        out[me * k:(me + 1) * k] = payload
        mv = memoryview(out)
        if me == 0:
            for r in range(1, n):
                yield from self._xrecv(mv[r * k:(r + 1) * k], r, base, blk, "collective")
        else:
            s = self._xsend(memoryview(payload), 0, base)
            if s is not None:
                yield [s]
                _first_error((s,))
        yield from self._g_bcast(mv, 0, base + 1, "collective", blk)
        return bytes(out)

    # ---------------------------------------------------------- direct reductions
    _INFO = struct.Struct("<5q")

    def _g_direct_reduce(self, send_mv, acc_arr, op, dtype, dt, counts, displs, base, what,
                         in_place, blk=False, extra=0):
        """Each rank reduces its own block ``[displs[me], +counts[me])`` (elements)
        reading every peer's ``send_mv`` directly, into ``acc_arr`` (its block).
        First every rank learns every peer's (send address, size, dtype, ``extra``)
        and checks sizes agree (the same error on every rank).  Returns that table.
        Uses tags base, base + 1."""
        n, me = self.size, self.rank
        nb = len(send_mv)
        info = self._INFO.pack(_address(send_mv), nb, dtype.num, dtype.itemsize, extra)
        allinfo = yield from self._g_exchange(info, base, blk)
        peers = [self._INFO.unpack_from(allinfo, i * self._INFO.size) for i in range(n)]
        for i, (_, pnb, pnum, psz, _) in enumerate(peers):
            if pnb != nb or psz != dtype.itemsize:
                raise MmpiError(f"{what}: rank {i} passes {pnb} bytes but rank {me} passes "
                                f"{nb}: every rank must pass the same count and datatype")
        self._direct_part(send_mv, acc_arr, op, dtype, dt, counts, displs, what, in_place,
                          peers)
        return peers

    def _direct_part(self, send_mv, acc_arr, op, dtype, dt, counts, displs, what, in_place,
                     peers):
        n, me = self.size, self.rank
        isz = dtype.itemsize
        lo = displs[me] * isz
        blen = counts[me] * isz
        if not blen:
            return
        mine = np.frombuffer(send_mv, dtype)[displs[me]:displs[me] + counts[me]]
        step = max(isz, (CHUNK // isz) * isz)
        scratch = np.empty(step // isz, dtype)
        saddr = scratch.ctypes.data
        if op.commute:
            if not in_place:
                np.copyto(acc_arr, mine)
            order = [(me + i) % n for i in range(1, n)]
            for off in range(0, blen, step):
                ln = min(step, blen - off)
                a = acc_arr[off // isz:(off + ln) // isz]
                s = scratch[:ln // isz]
                for r in order:
                    self._readv(r, saddr, peers[r][0] + lo + off, ln, what)
                    op._lohi(a, s, dt) if op._user is None else op._user(s, a, dt)
            return
        # noncommutative: result = a0 op (a1 op (... op a_{n-1})), right to left
        own = mine.copy() if in_place else mine
        scratch2 = np.empty_like(scratch)
        for off in range(0, blen, step):
            ln = min(step, blen - off)
            e0, e1 = off // isz, (off + ln) // isz
            a = scratch2[:e1 - e0]
            if n - 1 == me:
                np.copyto(a, own[e0:e1])
            else:
                self._readv(n - 1, a.ctypes.data, peers[n - 1][0] + lo + off, ln, what)
            s = scratch[:e1 - e0]
            for r in range(n - 2, -1, -1):
                if r == me:
                    np.copyto(s, own[e0:e1])
                else:
                    self._readv(r, saddr, peers[r][0] + lo + off, ln, what)
                op._user(s, a, dt)
            np.copyto(acc_arr[e0:e1], a)

    # ================================================================ barrier
    def _shm_barrier(self, what: str = "Barrier") -> None:
        """Barrier of a communicator whose group is the whole world, in shared memory.

        Each rank owns one word of the world block (its rank-table entry, word
        ``R_COLL_EPOCH``): it writes its barrier count there, wakes whoever sleeps
        on it, and waits until every rank's word reached the same count: one
        store and n loads instead of log2(n) rounds of messages, which matters
        when ranks outnumber cores (every message needs its receiver scheduled).
        Blocking barriers on communicators with the same group are called in the
        same order by every rank (else MPI deadlocks), so one count serves them
        all.  While waiting it keeps the transport progressing (rings drained,
        queued sends flushed, nonblocking collectives advanced), spins with
        sched_yield for SPIN_SECONDS, then sleeps on the missing ranks' words, the
        rings and the deaths word; a dead peer raises PeerDiedError.
        """
        t = self._t
        words = t.words
        st = t.__dict__.get("_shm_bar") or self._shm_state()
        e = st[0] + 1
        st[0] = e
        ep = st[1]
        mine = ep[t.rank]
        words[mine] = e
        base = t.base
        # wake sleepers (a futex_wake on a shared mapping costs several us: only when
        # someone sleeps).  The lock round trip is a locked instruction, i.e. a full
        # fence: our count is visible before we read the flags, and a sleeper's flag
        # is visible before its futex_waitv compares (the syscall fences): no lost
        # wake-up.  (Any left would cost at most T.SLEEP_SECONDS.)
        _FENCE.acquire()
        _FENCE.release()
        for f in st[2]:
            if words[f]:
                _linux.futex_wake(base + mine * 8)
                break
        n = len(ep)
        j = 0
        spin_end = None
        polls = 0
        try:
            while True:
                while j < n and words[ep[j]] >= e:
                    j += 1
                if j == n:
                    return
                polls += 1
                # the transport needs us only for liveness (drain rings, flush queued
                # sends, advance nonblocking collectives): not on every poll
                if (polls & 15 == 0 or t.npending) and t.progress():
                    spin_end = None
                    continue
                if words[W.H_DEATHS] != t.deaths_seen:
                    t._check_dead(None, j, False)
                now = time.perf_counter()
                if spin_end is None:
                    spin_end = now + T.SPIN_SECONDS
                elif now > spin_end:
                    if not self._shm_sleep(e, ep, j):
                        t._check_dead(None, j, True)
                    continue
                os.sched_yield()
        except PeerDiedError as err:
            raise PeerDiedError(f"{what}: {err}", rank=err.rank, status=err.status) from None

    def _shm_state(self):
        """[barrier count, count words, sleep-flag words] of this process (world)."""
        t = self._t
        w = t.world
        ep = [w.rank_word(r, R_COLL_EPOCH) for r in range(t.size)]
        sl = [w.rank_word(r, R_COLL_SLEEP) for r in range(t.size)]
        st = t._shm_bar = [t.words[ep[t.rank]], ep, sl]
        return st

    def _slots(self):
        """Byte offsets of every rank's collective slot in the world block (None: the
        block has none)."""
        t = self._t
        sl = t.__dict__.get("_coll_slots", 0)
        if sl == 0:
            w = t.world
            cs = getattr(W, "COLL_SLOT", 0)
            off = _linux.page_ceil(w.rank_off + w.size * W.RANK_STRIDE)
            sl = None
            if cs >= 2 * SHM_HALF and off + w.size * cs <= w.ring_off:
                sl = [off + r * cs for r in range(w.size)]
            t._coll_slots = sl
        return sl

    _SLOT_HDR = struct.Struct("<2q")

    def _shm_allreduce(self, acc, op) -> bool:
        """Small Allreduce of a world-group communicator in shared memory: write our
        data into our slot (the half chosen by the barrier count's parity), one
        shared-memory barrier, then fold every rank's slot in rank order locally
        (the same operands in the same order on every rank: identical results).
        A half is rewritten two barriers later, when everyone has read it.
        False: no slots (the caller takes the message path)."""
        slots = self._slots()
        if slots is None:
            return False
        t = self._t
        st = t.__dict__.get("_shm_bar") or self._shm_state()
        h = ((st[0] + 1) & 1) * SHM_HALF
        data = t.data
        nb = acc.nbytes
        num = acc.dtype.num
        o = slots[t.rank] + h
        self._SLOT_HDR.pack_into(data, o, nb, num)
        if nb:
            data[o + SHM_HDR:o + SHM_HDR + nb] = memoryview(acc).cast("B")
        self._shm_barrier("Allreduce")
        n = len(slots)
        unpack = self._SLOT_HDR.unpack_from
        for r in range(n):
            if unpack(data, slots[r] + h) != (nb, num):
                pnb, pnum = unpack(data, slots[r] + h)
                raise MmpiError(f"Allreduce: rank {r} passes {pnb} bytes (dtype #{pnum}) but "
                                f"rank {t.rank} passes {nb} (dtype #{num}): every rank must "
                                f"pass the same count and datatype")
        if not nb:
            return True
        # all slots as one strided (n, count) view: one ufunc.reduce over axis 0
        # accumulates rows 0, 1, ... n-1 in order, the same on every rank
        stride = slots[1] - slots[0]
        view = np.ndarray((n, acc.size), acc.dtype, data, slots[0] + h + SHM_HDR,
                          (stride, acc.dtype.itemsize))
        op._ufunc.reduce(view, axis=0, out=acc)
        return True

    def _shm_sleep(self, e, ep, j) -> bool:
        """Futex-sleep until a missing rank arrives, a ring moves or a peer dies;
        False on timeout (T.SLEEP_SECONDS)."""
        t = self._t
        words = t.words
        base = t.base
        if t.npending:
            return True               # queued sends: keep spinning (flushed by progress)
        flag = t._shm_bar[2][t.rank]
        words[flag] = 1
        words[t.my_sleeping] = 1
        try:
            waits = []
            for r in range(j, len(ep)):
                v = words[ep[r]]
                if v < e:
                    waits.append((base + ep[r] * 8, v))
            if not waits:
                return True
            waits = waits[:64]
            for src, hw in t.in_list:
                h = words[hw]
                if h != t.in_tail[src]:
                    return True
                waits.append((base + hw * 8, h))
            d = words[W.H_DEATHS]
            if d != t.deaths_seen:
                return True
            waits = waits[:127]
            waits.append((base + W.H_DEATHS * 8, d))
            return _linux.futex_waitv(waits, T.SLEEP_SECONDS)
        finally:
            words[t.my_sleeping] = 0
            words[flag] = 0

    def Ibarrier(self):
        return _request(self, self._g_barrier(self._cbase()))

    # ================================================================ Bcast
    def Bcast(self, buf, root=0) -> None:
        root = self._root(root, "Bcast")
        mv = C._buffer(buf, self.rank != root, "Bcast")
        # (a shared-memory-slot Bcast was measured slower: it makes every rank wait
        # for every other, where the flat one only makes receivers wait for the root)
        base = self._cbase()
        n = self.size
        if 1 < n <= FLAT_MAX and len(mv) <= self._t.eager_limit:
            # small and flat, without the generator: straight into/out of the rings
            if self.rank != root:
                self._brecv(mv, root, base, "Bcast")
                return
            ops = [self._xsend(mv, r, base) for r in range(n) if r != root]
            ops = [o for o in ops if o is not None]
            if ops:
                _waitall(self._t, ops)
                _first_error(ops)
            return
        _drive(self._t, self._g_bcast(mv, root, base, "Bcast", True))

    def Ibcast(self, buf, root=0):
        root = self._root(root, "Ibcast")
        mv = C._buffer(buf, self.rank != root, "Ibcast")
        return _request(self, self._g_bcast(mv, root, self._cbase(), "Ibcast"))

    # ================================================================ reductions
    def _red_args(self, sendbuf, recvbuf, op, what, recv_needed=True):
        op = _check_op(op, what)
        rb = _parse(recvbuf, True, what) if recv_needed else None
        if sendbuf is IN_PLACE:
            if rb is None:
                raise MmpiError(f"{what}: IN_PLACE is only valid at the root")
            sb = rb
        else:
            sb = _parse(sendbuf, False, what)
        if rb is not None and (rb.nbytes != sb.nbytes or rb.dtype != sb.dtype):
            if rb.nbytes != sb.nbytes:
                raise MmpiError(f"{what}: send buffer has {sb.nbytes} bytes, receive buffer "
                                f"{rb.nbytes}: they must hold the same count and datatype")
        op._check_buffer(sb.dtype, what)
        return op, sb, rb

    def Reduce(self, sendbuf, recvbuf, op=SUM, root=0) -> None:
        root = self._root(root, "Reduce")
        me = self.rank
        op, sb, rb = self._red_args(sendbuf, recvbuf, op, "Reduce", me == root)
        base = self._cbase()
        n = self.size
        send = sb.arr()
        if n == 1:
            if rb is not None and sb is not rb:
                np.copyto(rb.arr(), send)
            return
        if (sb.nbytes >= DIRECT_MIN and send.size >= n
                and _drive(self._t, self._g_direct_ok(base, True))):
            _drive(self._t, self._g_reduce_direct(sb, rb, op, root, base, sendbuf is IN_PLACE))
            return
        if sb.nbytes >= DIRECT_MIN and send.size >= n:  # direct denied: messages instead
            _drive(self._t, self._g_same_size(sb.nbytes, sb.dtype.itemsize, base, True, "Reduce"))
        acc = rb.arr() if rb is not None else None
        res = _drive(self._t, self._g_reduce(acc, send, op, sb.dt, root, base, "Reduce", True))
        if me == root and res is not acc:
            np.copyto(acc, res)

    def _split_counts(self, count, isz):
        n = self.size
        # block boundaries aligned to 64 bytes where possible
        align = max(1, 64 // isz) if isz <= 64 else 1
        bounds = [min(count, (count * i // n) // align * align) for i in range(n)] + [count]
        counts = [bounds[i + 1] - bounds[i] for i in range(n)]
        return counts, bounds[:-1]

    def _g_reduce_direct(self, sb, rb, op, root, base, in_place):
        """Direct reduce: every rank reduces its slice (reading peers' buffers) and
        writes it once into the root's receive buffer (process_vm_writev); a
        barrier ends it (nobody reuses a buffer a peer may still read)."""
        n, me = self.size, self.rank
        isz = sb.dtype.itemsize
        count = sb.nbytes // isz
        counts, displs = self._split_counts(count, isz)
        my = np.empty(counts[me], sb.dtype) if (me != root) else \
            rb.arr()[displs[me]:displs[me] + counts[me]]
        peers = yield from self._g_direct_reduce(
            sb.mv, my, op, sb.dtype, sb.dt, counts, displs, base, "Reduce",
            in_place and me == root, True, _address(rb.mv, True) if me == root else 0)
        if me != root and counts[me]:
            # (IN_PLACE at the root: its slice ``me`` is read only by us, and we are done)
            self._writev(root, my.ctypes.data, peers[root][4] + displs[me] * isz,
                         counts[me] * isz, "Reduce")
        yield from self._g_sync(base + 16, True)
        del my

    def Allreduce(self, sendbuf, recvbuf, op=SUM) -> None:
        if (type(recvbuf) is np.ndarray and recvbuf.nbytes <= FAST_MAX and type(op) is Op
                and op._ufunc is not None and self.size > 1):
            # the common small case without generators: contiguous arrays, builtin op
            rf = recvbuf.flags
            if rf.c_contiguous and rf.writeable and (
                    sendbuf is IN_PLACE or (type(sendbuf) is np.ndarray
                                            and sendbuf.dtype == recvbuf.dtype
                                            and sendbuf.size == recvbuf.size
                                            and sendbuf.flags.c_contiguous)):
                op._check_buffer(recvbuf.dtype, "Allreduce")
                acc = recvbuf.reshape(-1)
                if sendbuf is not IN_PLACE:
                    np.copyto(acc, sendbuf.reshape(-1))
                base = self._cbase()
                if (self._identity and acc.nbytes <= SHM_MAX
                        and self._shm_allreduce(acc, op)):
                    return
                self._allreduce_small(acc, op, base)
                return
        _drive(self._t, self._g_allreduce(sendbuf, recvbuf, op, "Allreduce", True))

    def _brecv(self, mv, src: int, tag: int, what: str) -> None:
        """Blocking receive of exactly len(mv) bytes (transport fast path first)."""
        t = self._t
        res = t.recv_fast(self._group[src], tag, self._cctx, mv)
        if res is None:
            r = self._cr(mv, src, tag)
            t.wait(r, r.source)
            self._count_check(r, len(mv), what, src)
        elif res[2] != len(mv):
            raise MmpiError(f"{what}: rank {self.rank} expected {len(mv)} bytes from rank "
                            f"{src} but got {res[2]}: every rank must pass matching counts "
                            f"and datatypes")

    def _bsend(self, mv, dst: int, tag: int) -> None:
        s = self._xsend(mv, dst, tag)
        if s is not None:
            if not s.done:
                self._t.wait(s, s.dest)
            if s.exc is not None:
                raise s.exc

    def _allreduce_small(self, acc, op, base):
        """Blocking recursive doubling for small buffers and builtin ops (the same
        schedule as _g_allreduce_rd, without the generator machinery)."""
        n, me = self.size, self.rank
        p = 1 << (n.bit_length() - 1)
        rem = n - p
        amv = memoryview(acc).cast("B")
        tmp = np.empty_like(acc)
        tmv = memoryview(tmp).cast("B")
        uf = op._ufunc
        if me < 2 * rem:
            if me % 2 == 0:
                self._bsend(amv, me + 1, base)
                self._brecv(amv, me + 1, base + 255, "Allreduce")
                return
            self._brecv(tmv, me - 1, base, "Allreduce")
            uf(acc, tmp, out=acc)
            newrank = me // 2
        else:
            newrank = me - rem
        mask, rnd = 1, 1
        while mask < p:
            pn = newrank ^ mask
            partner = pn * 2 + 1 if pn < rem else pn + rem
            s = self._xsend(amv, partner, base + rnd)
            self._brecv(tmv, partner, base + rnd, "Allreduce")
            if s is not None:
                _waitall(self._t, (s,))
                _first_error((s,))
            uf(acc, tmp, out=acc)
            mask <<= 1
            rnd += 1
        if me < 2 * rem:
            self._bsend(amv, me - 1, base + 255)

    def Iallreduce(self, sendbuf, recvbuf, op=SUM):
        return _request(self, self._g_allreduce(sendbuf, recvbuf, op, "Iallreduce"))

    def _g_allreduce(self, sendbuf, recvbuf, op, what, blk=False):
        op, sb, rb = self._red_args(sendbuf, recvbuf, op, what)
        base = self._cbase()
        return self._g_allreduce2(sb, rb, op, base, what, sendbuf is IN_PLACE, blk)

    def _g_allreduce2(self, sb, rb, op, base, what, in_place, blk=False):
        n = self.size
        acc = rb.arr()
        if n == 1:
            if not in_place:
                np.copyto(acc, sb.arr())
            return
        if rb.nbytes >= DIRECT_MIN and acc.size >= n and (yield from self._g_direct_ok(base, blk)):
            isz = rb.dtype.itemsize
            counts, displs = self._split_counts(acc.size, isz)
            me = self.rank
            mine = acc[displs[me]:displs[me] + counts[me]]
            peers = yield from self._g_direct_reduce(
                sb.mv, mine, op, sb.dtype, sb.dt, counts, displs, base, what, in_place, blk,
                _address(rb.mv, True))
            # write our reduced slice once into every peer's receive buffer.  Safe
            # without a barrier first: only we read slice ``me`` of anyone's buffer
            # (IN_PLACE included), and we are done reading
            if counts[me]:
                off = displs[me] * isz
                src = _address(rb.mv, True) + off
                for i in range(1, n):
                    r = (me + i) % n
                    self._writev(r, src, peers[r][4] + off, counts[me] * isz, what)
            # nobody leaves (and reuses its buffers) while a peer may still use them
            yield from self._g_sync(base + 16, blk)
            return
        if rb.nbytes >= DIRECT_MIN and acc.size >= n:  # direct denied: messages instead
            yield from self._g_same_size(len(sb.mv), sb.dtype.itemsize, base, blk, what)
        send = sb.arr()
        if not in_place:
            np.copyto(acc, send)
        if op.commute:
            yield from self._g_allreduce_rd(acc, op, sb.dt, base, what, blk)
            return
        res = yield from self._g_reduce(acc, acc, op, sb.dt, 0, base, what, blk)
        if self.rank == 0 and res is not acc:
            np.copyto(acc, res)
        yield from self._g_bcast(rb.mv, 0, base + 2, what, blk)

    def _g_allreduce_rd(self, acc, op, dt, base, what, blk=False):
        """Recursive doubling (commutative ops): log2(n) exchange rounds; with n not
        a power of two, the first 2*rem ranks fold pairwise first (MPICH's scheme).
        Every rank combines the same operands in the same tree shape, so the
        results agree bit for bit."""
        n, me = self.size, self.rank
        p = 1 << (n.bit_length() - 1)
        rem = n - p
        amv = _bytes(acc)
        tmp = np.empty_like(acc)
        tmv = _bytes(tmp)
        user = op._user

        def combine():
            if user is None:
                op._ufunc(acc, tmp, out=acc)
            else:
                user(tmp, acc, dt)

        if me < 2 * rem:
            if me % 2 == 0:
                s = self._xsend(amv, me + 1, base)
                if s is not None:
                    yield [s]
                    _first_error((s,))
                yield from self._xrecv(amv, me + 1, base + 255, blk, what)
                return
            yield from self._xrecv(tmv, me - 1, base, blk, what)
            combine()
            newrank = me // 2
        else:
            newrank = me - rem
        mask, rnd = 1, 1
        while mask < p:
            pn = newrank ^ mask
            partner = pn * 2 + 1 if pn < rem else pn + rem
            s = self._xsend(amv, partner, base + rnd)
            yield from self._xrecv(tmv, partner, base + rnd, blk, what)
            if s is not None:
                yield [s]
                _first_error((s,))
            combine()
            mask <<= 1
            rnd += 1
        if me < 2 * rem:
            s = self._xsend(amv, me - 1, base + 255)
            if s is not None:
                yield [s]
                _first_error((s,))

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=SUM) -> None:
        n = self.size
        op = _check_op(op, "Reduce_scatter_block")
        rb = _parse(recvbuf, True, "Reduce_scatter_block")
        if sendbuf is IN_PLACE:
            if rb.nbytes % n:
                raise MmpiError(f"Reduce_scatter_block: with IN_PLACE the receive buffer "
                                f"({rb.nbytes} bytes) must hold {n} blocks")
            sb = rb
            count = rb.nbytes // rb.dtype.itemsize // n
        else:
            sb = _parse(sendbuf, False, "Reduce_scatter_block")
            count = rb.nbytes // rb.dtype.itemsize
        self._reduce_scatter(sb, rb, [count] * n, op, "Reduce_scatter_block",
                             sendbuf is IN_PLACE)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=SUM) -> None:
        n = self.size
        op = _check_op(op, "Reduce_scatter")
        rb = _parse(recvbuf, True, "Reduce_scatter")
        if recvcounts is None:
            raise MmpiError("Reduce_scatter needs recvcounts (one per rank)")
        counts = _intlist(recvcounts, n, "Reduce_scatter", "recvcounts")
        sb = rb if sendbuf is IN_PLACE else _parse(sendbuf, False, "Reduce_scatter")
        self._reduce_scatter(sb, rb, counts, op, "Reduce_scatter", sendbuf is IN_PLACE)

    def _reduce_scatter(self, sb, rb, counts, op, what, in_place):
        n, me = self.size, self.rank
        isz = sb.dtype.itemsize
        total = sum(counts)
        if sb.nbytes != total * isz:
            raise MmpiError(f"{what}: the send buffer has {sb.nbytes // isz} elements but "
                            f"the counts add up to {total}")
        if not in_place and rb.nbytes < counts[me] * isz:
            raise MmpiError(f"{what}: the receive buffer ({rb.nbytes} bytes) is smaller "
                            f"than this rank's block ({counts[me] * isz} bytes)")
        op._check_buffer(sb.dtype, what)
        displs = [sum(counts[:i]) for i in range(n)]
        base = self._cbase()
        send = sb.arr()
        if n == 1:
            np.copyto(rb.arr()[:counts[0]], send.copy() if in_place else send)
            return
        t = self._t
        if sb.nbytes >= DIRECT_MIN and _drive(t, self._g_direct_ok(base, True)):
            if in_place:
                acc = np.empty(counts[me], sb.dtype)
            else:
                acc = rb.arr()[:counts[me]]

            def g():
                yield from self._g_direct_reduce(sb.mv, acc, op, sb.dtype, sb.dt, counts,
                                                 displs, base, what, False, True)
                yield from self._g_sync(base + 16, True)   # everyone is done reading
            _drive(t, g())
            if in_place:
                np.copyto(rb.arr()[:counts[me]], acc)
            return
        if sb.nbytes >= DIRECT_MIN:  # direct denied: messages instead
            _drive(t, self._g_same_size(sb.nbytes, sb.dtype.itemsize, base, True, what))
        # small: reduce to 0, then scatter the blocks
        full = np.empty_like(send) if me == 0 else None
        res = _drive(t, self._g_reduce(full, send, op, sb.dt, 0, base, what, True))
        if me == 0:
            ops = []
            for r in range(1, n):
                blk = res[displs[r]:displs[r] + counts[r]]
                ops.append(self._cs(memoryview(blk).cast("B") if blk.size else C._EMPTY,
                                    r, base + 5))
            np.copyto(rb.arr()[:counts[0]], res[:counts[0]])
            _waitall(t, ops)
            _first_error(ops)
        else:
            out = rb.mv[:counts[me] * isz]
            r = self._cr(out, 0, base + 5)
            _waitall(t, [r])
            self._count_check(r, counts[me] * isz, what, 0)

    def Scan(self, sendbuf, recvbuf, op=SUM) -> None:
        self._scan(sendbuf, recvbuf, op, "Scan", False)

    def Exscan(self, sendbuf, recvbuf, op=SUM) -> None:
        self._scan(sendbuf, recvbuf, op, "Exscan", True)

    def _scan(self, sendbuf, recvbuf, op, what, exclusive):
        """Linear chain: rank r gets the prefix of 0..r-1 from r-1."""
        op, sb, rb = self._red_args(sendbuf, recvbuf, op, what)
        n, me = self.size, self.rank
        base = self._cbase()
        t = self._t
        mine = sb.arr()
        if sendbuf is IN_PLACE:
            mine = mine.copy()
        acc = rb.arr()
        nb = rb.nbytes
        if me == 0:
            part = mine
            if not exclusive:
                np.copyto(acc, mine)
        else:
            prev = np.empty_like(mine)
            r = self._cr(memoryview(prev).cast("B") if prev.size else C._EMPTY, me - 1, base)
            _waitall(t, [r])
            self._count_check(r, nb, what, me - 1)
            if exclusive:
                np.copyto(acc, prev)
            if me + 1 < n or not exclusive:
                hi = mine.copy()
                part = op._lohi(prev, hi, sb.dt)
                if not exclusive:
                    np.copyto(acc, part)
        if me + 1 < n:
            s = self._cs(memoryview(part).cast("B") if part.size else C._EMPTY, me + 1, base)
            _waitall(t, [s])
            _first_error((s,))

    # ================================================================ gather/scatter
    def Gather(self, sendbuf, recvbuf, root=0) -> None:
        self._gather(sendbuf, recvbuf, root, "Gather", False)

    def Gatherv(self, sendbuf, recvbuf, root=0) -> None:
        self._gather(sendbuf, recvbuf, root, "Gatherv", True)

    def _gather(self, sendbuf, recvbuf, root, what, vector):
        root = self._root(root, what)
        n, me = self.size, self.rank
        base = self._cbase()
        t = self._t
        if me != root:
            sb = _parse(sendbuf, False, what)
            s = self._cs(sb.mv, root, base)
            _waitall(t, [s])
            _first_error((s,))
            return
        rb = _parse(recvbuf, True, what, blocks=n, vector=vector)
        isz = rb.dtype.itemsize
        if sendbuf is not IN_PLACE:
            sb = _parse(sendbuf, False, what)
            mine = rb.block(me)
            if sb.nbytes != len(mine):
                raise MmpiError(f"{what}: the root sends {sb.nbytes} bytes but its block of "
                                f"the receive buffer holds {len(mine)}")
            mine[:] = sb.mv
        ops = [(r, self._cr(rb.block(r), r, base)) for r in range(n) if r != me]
        _waitall(t, [o for _, o in ops])
        for r, o in ops:
            self._count_check(o, rb.counts[r] * isz, what, r)

    def Scatter(self, sendbuf, recvbuf, root=0) -> None:
        self._scatter(sendbuf, recvbuf, root, "Scatter", False)

    def Scatterv(self, sendbuf, recvbuf, root=0) -> None:
        self._scatter(sendbuf, recvbuf, root, "Scatterv", True)

    def _scatter(self, sendbuf, recvbuf, root, what, vector):
        root = self._root(root, what)
        n, me = self.size, self.rank
        base = self._cbase()
        t = self._t
        if me != root:
            rb = _parse(recvbuf, True, what)
            r = self._cr(rb.mv, root, base)
            _waitall(t, [r])
            self._count_check(r, rb.nbytes, what, root)
            return
        sb = _parse(sendbuf, False, what, blocks=n, vector=vector)
        if recvbuf is not IN_PLACE:
            rb = _parse(recvbuf, True, what)
            mine = sb.block(me)
            if rb.nbytes != len(mine):
                raise MmpiError(f"{what}: the root's block holds {len(mine)} bytes but its "
                                f"receive buffer {rb.nbytes}")
            rb.mv[:] = mine
        ops = [self._cs(sb.block(r), r, base) for r in range(n) if r != me]
        _waitall(t, ops)
        _first_error(ops)

    def Allgather(self, sendbuf, recvbuf) -> None:
        self._allgather(sendbuf, recvbuf, "Allgather", False)

    def Allgatherv(self, sendbuf, recvbuf) -> None:
        self._allgather(sendbuf, recvbuf, "Allgatherv", True)

    def _allgather(self, sendbuf, recvbuf, what, vector):
        n, me = self.size, self.rank
        rb = _parse(recvbuf, True, what, blocks=n, vector=vector)
        isz = rb.dtype.itemsize
        mine = rb.block(me)
        if sendbuf is not IN_PLACE:
            sb = _parse(sendbuf, False, what)
            if sb.nbytes != len(mine):
                raise MmpiError(f"{what}: rank {me} sends {sb.nbytes} bytes but its block of "
                                f"the receive buffer holds {len(mine)}")
            mine[:] = sb.mv
        base = self._cbase()
        if n == 1:
            return
        t = self._t
        if rb.nbytes <= t.eager_limit:
            # gather to 0, then broadcast the whole receive buffer
            def g():
                if me == 0:
                    ops = [(r, self._cr(rb.block(r), r, base)) for r in range(1, n)]
                    yield [o for _, o in ops]
                    err = None
                    for r, o in ops:
                        try:
                            self._count_check(o, rb.counts[r] * isz, what, r)
                        except MmpiError as e:
                            err = err or e
                    if err is not None:
                        yield from self._g_bcast(rb.mv, 0, base + 1, what, True)
                        raise err
                else:
                    s = self._cs(mine, 0, base)
                    yield [s]
                    _first_error((s,))
                yield from self._g_bcast(rb.mv, 0, base + 1, what, True)
            _drive(t, g())
            return
        if not ALLGATHER_DIRECT or not _drive(t, self._g_direct_ok(base, True)):
            ops = []
            for i in range(1, n):
                r = (me - i) % n
                ops.append((r, self._cr(rb.block(r), r, base)))
            sends = [self._cs(mine, (me + i) % n, base) for i in range(1, n)]
            _waitall(t, [o for _, o in ops] + sends)
            for r, o in ops:
                self._count_check(o, rb.counts[r] * isz, what, r)
            _first_error(sends)
            return

        # large: every rank copies each peer's block once, straight from the peer's
        # memory, then a barrier (nobody reuses a buffer a peer may still read)
        def g():
            info = self._INFO.pack(_address(mine), len(mine), 0, 0, 0)
            table = yield from self._g_exchange(info, base, True)
            peers = [self._INFO.unpack_from(table, i * self._INFO.size) for i in range(n)]
            bad = [r for r in range(n) if peers[r][1] != rb.counts[r] * isz]
            if bad:
                r = bad[0]
                raise MmpiError(f"{what}: rank {r} sends {peers[r][1]} bytes but rank {me} "
                                f"expects {rb.counts[r] * isz} from it: every rank must pass "
                                f"matching counts and datatypes")
            out = _address(rb.mv, True)
            for i in range(1, n):
                r = (me + i) % n
                if peers[r][1]:
                    self._readv(r, out + rb.displs[r] * isz, peers[r][0], peers[r][1], what)
            yield from self._g_sync(base + 16, True)
        _drive(t, g())

    def Alltoall(self, sendbuf, recvbuf) -> None:
        self._alltoall(sendbuf, recvbuf, "Alltoall", False)

    def Alltoallv(self, sendbuf, recvbuf) -> None:
        self._alltoall(sendbuf, recvbuf, "Alltoallv", True)

    def _alltoall(self, sendbuf, recvbuf, what, vector):
        n, me = self.size, self.rank
        rb = _parse(recvbuf, True, what, blocks=n, vector=vector)
        if sendbuf is IN_PLACE:
            sb = _Buf()
            sb.mv = memoryview(bytes(rb.mv))
            sb.dtype, sb.dt, sb.counts, sb.displs = rb.dtype, rb.dt, rb.counts, rb.displs
        else:
            sb = _parse(sendbuf, False, what, blocks=n, vector=vector)
        isz = rb.dtype.itemsize
        base = self._cbase()
        if len(sb.block(me)) != len(rb.block(me)):
            raise MmpiError(f"{what}: rank {me} sends itself {len(sb.block(me))} bytes but "
                            f"its receive block holds {len(rb.block(me))}")
        rb.block(me)[:] = sb.block(me)
        if n == 1:
            return
        ops = []
        for i in range(1, n):
            r = (me - i) % n
            ops.append((r, self._cr(rb.block(r), r, base)))
        sends = [self._cs(sb.block((me + i) % n), (me + i) % n, base) for i in range(1, n)]
        _waitall(self._t, [o for _, o in ops] + sends)
        for r, o in ops:
            self._count_check(o, rb.counts[r] * isz, what, r)
        _first_error(sends)

    # ================================================================ objects
    def _oval(self, op):
        if op.exc is not None:
            raise op.exc
        return C._loads(op.value)

    def _g_obcast(self, obj, root, base):
        n, me = self.size, self.rank
        if me == root:
            ops = [self._co_send(obj, r, base) for r in range(n) if r != root]
            yield ops
            _first_error(ops)
            return obj
        op = self._co_recv(root, base)
        yield [op]
        return self._oval(op)

    def bcast(self, obj, root=0):
        root = self._root(root, "bcast")
        base = self._cbase()
        if self.size == 1:
            return obj
        if self.rank != root:   # the object path's fast receive (straight from the ring)
            return self._ocomm().recv(source=root, tag=base)
        ops = [self._co_send(obj, r, base) for r in range(self.size) if r != root]
        ops = [o for o in ops if o is not None]
        if ops:
            _waitall(self._t, ops)
            _first_error(ops)
        return obj

    def _g_ogather(self, obj, root, base):
        n, me = self.size, self.rank
        if me != root:
            s = self._co_send(obj, root, base)
            yield [s]
            _first_error((s,))
            return None
        ops = [(r, self._co_recv(r, base)) for r in range(n) if r != me]
        yield [o for _, o in ops]
        out = [None] * n
        out[me] = obj
        for r, o in ops:
            out[r] = self._oval(o)
        return out

    def gather(self, sendobj, root=0):
        root = self._root(root, "gather")
        return _drive(self._t, self._g_ogather(sendobj, root, self._cbase()))

    def scatter(self, sendobj, root=0):
        root = self._root(root, "scatter")
        n, me = self.size, self.rank
        base = self._cbase()
        t = self._t
        if me == root:
            try:
                items = list(sendobj) if sendobj is not None else None
            except TypeError:
                items = None
            if items is None or len(items) != n:
                got = "None" if sendobj is None else (f"{len(items)} items" if items is not None
                                                      else type(sendobj).__name__)
                raise MmpiError(f"scatter: the root must pass a sequence of {n} items "
                                f"(one per rank), got {got}")
            ops = [self._co_send(items[r], r, base) for r in range(n) if r != me]
            _waitall(t, ops)
            _first_error(ops)
            return items[me]
        op = self._co_recv(root, base)
        _waitall(t, [op])
        return self._oval(op)

    def allgather(self, sendobj):
        base = self._cbase()

        def g():
            out = yield from self._g_ogather(sendobj, 0, base)
            return (yield from self._g_obcast(out, 0, base + 1))
        out = _drive(self._t, g())
        return list(out)

    def alltoall(self, sendobj):
        n, me = self.size, self.rank
        try:
            items = list(sendobj)
        except TypeError:
            items = None
        if items is None or len(items) != n:
            raise MmpiError(f"alltoall: pass a sequence of {n} items (one per rank)")
        base = self._cbase()
        ops = [((me - i) % n, self._co_recv((me - i) % n, base)) for i in range(1, n)]
        sends = [self._co_send(items[(me + i) % n], (me + i) % n, base) for i in range(1, n)]
        _waitall(self._t, [o for _, o in ops] + sends)
        out = [None] * n
        out[me] = items[me]
        for r, o in ops:
            out[r] = self._oval(o)
        _first_error(sends)
        return out

    def _g_oreduce(self, obj, op, root, base):
        vals = yield from self._g_ogather(obj, root, base)
        if vals is None:
            return None
        acc = vals[0]
        for v in vals[1:]:
            acc = op(acc, v)
        return acc

    def reduce(self, sendobj, op=SUM, root=0):
        root = self._root(root, "reduce")
        op = _check_op(op, "reduce")
        return _drive(self._t, self._g_oreduce(sendobj, op, root, self._cbase()))

    def allreduce(self, sendobj, op=SUM):
        """Recursive doubling, combining in rank order (``op(lower, higher)``) in
        the same tree shape on every rank: identical results everywhere, even for
        operations that do not really commute (list + list)."""
        op = _check_op(op, "allreduce")
        base = self._cbase()
        n, me = self.size, self.rank
        if n == 1:
            return sendobj
        oc = self._ocomm()
        t = self._t
        p = 1 << (n.bit_length() - 1)
        rem = n - p
        acc = sendobj

        def exchange(partner, tag):
            s = self._co_send(acc, partner, tag)
            v = oc.recv(source=partner, tag=tag)
            if s is not None:
                _waitall(t, (s,))
                _first_error((s,))
            return v

        if me < 2 * rem:
            if me % 2 == 0:
                s = self._co_send(acc, me + 1, base)
                if s is not None:
                    _waitall(t, (s,))
                    _first_error((s,))
                return oc.recv(source=me + 1, tag=base + 255)
            acc = op(oc.recv(source=me - 1, tag=base), acc)
            newrank = me // 2
        else:
            newrank = me - rem
        mask, rnd = 1, 1
        while mask < p:
            pn = newrank ^ mask
            partner = pn * 2 + 1 if pn < rem else pn + rem
            other = exchange(partner, base + rnd)
            acc = op(other, acc) if pn < newrank else op(acc, other)
            mask <<= 1
            rnd += 1
        if me < 2 * rem:
            s = self._co_send(acc, me - 1, base + 255)
            if s is not None:
                _waitall(t, (s,))
                _first_error((s,))
        return acc

    def _oscan(self, obj, op, exclusive):
        n, me = self.size, self.rank
        base = self._cbase()
        t = self._t
        prev = None
        if me > 0:
            r = self._co_recv(me - 1, base)
            _waitall(t, [r])
            prev = self._oval(r)
        part = obj if me == 0 else op(prev, obj)
        if me + 1 < n:
            s = self._co_send(part, me + 1, base)
            _waitall(t, [s])
            _first_error((s,))
        return prev if exclusive else part

    def scan(self, sendobj, op=SUM):
        return self._oscan(sendobj, _check_op(op, "scan"), False)

    def exscan(self, sendobj, op=SUM):
        return self._oscan(sendobj, _check_op(op, "exscan"), True)
