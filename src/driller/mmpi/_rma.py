"""One-sided communication: windows (``MPI.Win``), peers' memory accessed directly.

Every window is backed by one memfd that rank 0 of the window's communicator
creates and every rank maps once (opened through ``/proc/<pid>/fd``, then
closed: the mappings hold the memory, nothing is left behind when they go).
Its first pages hold, per target rank, a process-shared **robust pthread
mutex** (the atomicity of Accumulate, Get_accumulate, Fetch_and_op and
Compare_and_swap: Python has no atomic read-modify-write) and the state of the
passive-target lock (exclusive holder, shared count and holders, a futex word
waiters sleep on); then the table of each rank's attached regions (dynamic
windows).

Where the target memory lives decides how an origin reaches it:

* ``Allocate`` and ``Allocate_shared``: the window memory of every rank is part
  of that same memfd, so every rank has every peer's window mapped: Put and Get
  are one memcpy, no syscall, no help from the target.  ``Allocate_shared``
  lays the ranks' parts out contiguously (``Shared_query`` returns a zero-copy
  buffer onto a peer's part); ``Allocate`` page-aligns them.
* ``Create`` (memory the user already has) and ``Create_dynamic`` + ``Attach``:
  the origin copies straight from/into the target process with
  ``process_vm_writev``/``process_vm_readv`` (one copy, one syscall); an access
  to the origin's own window is a local memcpy.

So every operation completes at the origin when the call returns (``Flush*``
and the request forms have nothing left to wait for), the target never needs to
make progress (passive target works while it computes), and the memory model is
``WIN_UNIFIED``.  ``Fence`` is a barrier of the window's private communicator (a
Dup of the one given); post-start-complete-wait are zero-byte messages on it.
Waiting for a lock sleeps on a futex (with a timeout to notice a holder's
death): a holder that died raises ``PeerDiedError`` in the waiters, and a rank
that died inside an atomic update (holding the mutex: EOWNERDEAD) poisons that
target's window: every later atomic operation or lock on it raises.
"""

from __future__ import annotations

import array as _array
import os
import weakref
from typing import Any

import numpy as np

from .. import _errcodes, _linux
from ..errors import MmpiError, MmpiNotImplementedError, PeerDiedError
from ..segment import Region
from . import _attr, _errhandler
from . import _threads
from ._buffer import buffer
from ._bufspec import parse
from ._coll._context import readv, writev
from ._coll._ops import NO_OP, REPLACE, Op
from ._comm import Comm, context_of
from ._const import (LOCK_EXCLUSIVE, LOCK_SHARED, PROC_NULL, WIN_BASE, WIN_CREATE_FLAVOR,
                     WIN_DISP_UNIT, WIN_FLAVOR_ALLOCATE, WIN_FLAVOR_CREATE,
                     WIN_FLAVOR_DYNAMIC, WIN_FLAVOR_SHARED, WIN_MODEL, WIN_SIZE, WIN_UNIFIED)
from ._datatype import as_datatype, np_dtype
from ._group import Group
from ._info import Info
from ._request import CollRequest, request

__all__ = ["Win", "WIN_NULL"]

# header layout, per target rank t: a slot of SLOT bytes
SLOT = 128
M_OFF = 0                      # the robust mutex (MUTEX_BYTES)
W_EXCL = 64 // 8               # word: exclusive holder rank + 1 (0: none)
W_NSHARED = 72 // 8            # word: number of shared holders
W_GEN = 80 // 8                # word: bumped at every unlock (futex: its low 32 bits)
W_POISON = 88 // 8             # word: 1 once a process died inside an atomic update
W_NATTACH = 96 // 8            # word: attached regions of rank t (dynamic windows)
W_WAITERS = 104 // 8           # word: ranks asleep waiting for the lock (Unlock wakes them)
MAX_ATTACH = 64
LOCK_POLL = 0.05               # seconds between checks that the lock holders live
TAG_POST, TAG_DONE = 1, 2      # PSCW messages on the window's private communicator
_live_states: "weakref.WeakSet[_State]" = weakref.WeakSet()   # for the fork hook
_by_handle: "weakref.WeakValueDictionary[int, Win]" = weakref.WeakValueDictionary()
_INTS = "bBhHiIlLqQ"            # native integer formats (memoryview.cast takes them)
_FLOAT_OK = ()                 # filled below: ops exact in Python floats (float64)
_PYOPS: dict = {}              # filled below: op.toint() -> Python function on scalars (None: NO_OP)
# (ops are unhashable handles, as mpi4py's: the tables key them by their int handle)


class _ValueError(MmpiError, ValueError):
    """A bad argument of a one-sided call (also a ValueError, as mpi4py raises)."""

    _default_class = "ERR_ARG"


class _Done:
    """The op of a request whose operation completed when it was started."""

    done = True
    exc = None
    value = None

    def run(self) -> None:
        pass


class _State:
    """What every handle onto one window shares."""

    __slots__ = ("freed", "ok", "forked", "name", "attrs", "errh", "info", "locks",
                 "lock_all", "start_group", "post_group", "attached", "__weakref__")

    def __init__(self):
        self.freed = False
        self.ok = True         # not freed, not inherited by a forked child
        self.forked = False
        self.name = ""
        self.attrs = _attr.Attributes("win")
        self.errh = _errhandler.ERRORS_RETURN
        self.info = {}
        self.locks = {}        # target -> lock type held by this rank
        self.lock_all = False
        self.start_group = None
        self.post_group = None
        self.attached = []     # (address, nbytes, object) of this rank (dynamic)


def _err(msg: str, cls: int) -> MmpiError:
    return MmpiError(msg, error_class=cls)


class Win(np.ndarray, _attr.Cached):
    """Remote memory access context (mpi4py's ``MPI.Win``).

    A window is also a buffer: ``memoryview(win)`` is its local memory."""

    def __new__(cls, win: "Win | None" = None) -> "Win":
        if win is not None and not isinstance(win, Win):
            raise TypeError(f"Win(win): expected a Win, got {type(win).__name__}")
        if win is None or win._s is None:
            w = np.empty(0, np.uint8).view(cls)
            w._s = None
            return w
        return win.view(cls)

    def __array_finalize__(self, obj) -> None:
        d = getattr(obj, "__dict__", None)
        self.__dict__.update(d or {"_s": None})

    # ------------------------------------------------------------------ identity
    def _null(self) -> bool:
        return self._s is None or self._s.freed

    def __bool__(self) -> bool:
        return not self._null()

    def __eq__(self, other):
        if not isinstance(other, Win):
            return NotImplemented
        if self._null() or other._null():
            return self._null() and other._null()
        return self._s is other._s

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None  # a handle: unhashable, as mpi4py's

    def _order(self, other):
        return NotImplemented   # handles have no order (not the array's elementwise one)

    __lt__ = __le__ = __gt__ = __ge__ = _order

    @property
    def handle(self) -> int:
        """The window's handle (an int >= 0; ``Win.fromhandle`` takes it back)."""
        if self._null():
            return 0
        h = id(self._s)
        _by_handle[h] = self
        return h

    @classmethod
    def fromhandle(cls, handle: int) -> "Win":
        """A new Python object onto the window of ``handle``."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"Win.fromhandle: expected an int, got {handle!r}")
        if handle == 0:
            return cls()
        win = _by_handle.get(handle)
        if win is None or win._null() or id(win._s) != handle:
            raise _err(f"Win.fromhandle: {handle} is no live window's handle",
                       _errcodes.ERR_WIN)
        return cls(win)

    def __repr__(self) -> str:
        if self._null():
            return "<MPI.Win NULL>"
        return (f"<MPI.Win {self._s.name or self._fl_name()} rank {self._rank} of "
                f"{self._n}>")

    __str__ = __repr__

    def __reduce__(self):
        if self is WIN_NULL:
            return "WIN_NULL"
        if self._null():
            return (type(self), ())
        raise ValueError("cannot pickle MPI.Win handles: a window exists only in the "
                         "processes that created it")

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __copy__(self) -> "Win":
        # a handle, not the array's data: WIN_NULL is itself, another a new handle
        return self if self is WIN_NULL else type(self)(self)

    def __deepcopy__(self, memo) -> "Win":
        return self.__copy__()

    def __len__(self) -> int:
        return self.size

    def _fl_name(self) -> str:
        return {WIN_FLAVOR_CREATE: "create", WIN_FLAVOR_ALLOCATE: "allocate",
                WIN_FLAVOR_DYNAMIC: "dynamic", WIN_FLAVOR_SHARED: "shared"}[self._flavor]

    def _live(self, what: str) -> _State:
        s = self._s
        if s is None or not s.ok:
            if s is not None and s.forked:
                raise _err(f"Win.{what}: this process is a fork of a rank of the window; "
                           f"only the rank itself can use it", _errcodes.ERR_WIN)
            raise _err(f"Win.{what}: the window is MPI.WIN_NULL (freed or never created)",
                       _errcodes.ERR_WIN)
        return s

    # ------------------------------------------------------------------ creation
    @classmethod
    def Create(cls, memory: Any, disp_unit: int = 1, info: Info | None = None,
               comm: Comm | None = None) -> "Win":
        """Create a window object for one-sided communication on existing memory."""
        return _create(WIN_FLAVOR_CREATE, memory, None, disp_unit, info, comm, "Win.Create")

    @classmethod
    def Allocate(cls, size: int, disp_unit: int = 1, info: Info | None = None,
                 comm: Comm | None = None) -> "Win":
        """Create a window object, allocating its memory (mapped by every rank)."""
        return _create(WIN_FLAVOR_ALLOCATE, None, size, disp_unit, info, comm,
                       "Win.Allocate")

    @classmethod
    def Allocate_shared(cls, size: int, disp_unit: int = 1, info: Info | None = None,
                        comm: Comm | None = None) -> "Win":
        """Create a window object, allocating memory shared by every rank."""
        return _create(WIN_FLAVOR_SHARED, None, size, disp_unit, info, comm,
                       "Win.Allocate_shared")

    @classmethod
    def Create_dynamic(cls, info: Info | None = None, comm: Comm | None = None) -> "Win":
        """Create a window object for use with dynamically attached memory."""
        return _create(WIN_FLAVOR_DYNAMIC, None, 0, 1, info, comm, "Win.Create_dynamic")

    def Free(self) -> None:
        """Free a window (collective)."""
        s = self._live("Free")
        # the attributes' delete callbacks run first (MPI's order); one that raises is
        # reported after the collective part, as an open epoch is
        try:
            s.attrs.clear(self, "Win.Free")
            attr_err = None
        except MmpiError as e:
            attr_err = e
        # an epoch still open here is an error, said after the collective part (raising
        # first would leave the other ranks in the barrier); its locks are released now
        # so that no peer waits for them
        pending = [f"lock on rank {r}" for r in s.locks] + \
            (["Lock_all"] if s.lock_all else []) + \
            (["Start without Complete"] if s.start_group is not None else []) + \
            (["Post without Wait"] if s.post_group is not None else [])
        for r, kind in list(s.locks.items()):
            self._release(r, kind == LOCK_EXCLUSIVE, "Free")
        if s.lock_all:
            for r in range(self._n):
                self._release(r, False, "Free")
        s.locks.clear()
        s.lock_all = False
        if s.start_group is not None:     # the targets wait in Wait for our Complete
            self.Complete()
        s.post_group = None
        self._comm.Barrier()
        self._comm.Free()      # the window's private Dup
        s.freed = True
        s.ok = False
        _live_states.discard(s)
        self.__dict__.pop("_region", None)
        self.__dict__.pop("_words", None)
        self.__dict__.pop("_holders", None)
        self.__dict__.pop("_parts", None)
        self.__dict__.pop("_local", None)
        for k in ("_fast", "_typed", "_queries", "_peer_regions"):
            self.__dict__.pop(k, None)
        s.attached.clear()
        self._s = None
        if pending:
            raise _err(f"Win.Free: rank {self._rank} freed the window inside an open "
                       f"epoch ({', '.join(pending)}); close epochs first (Unlock, "
                       f"Unlock_all, Complete, Wait).  The window is freed, its locks "
                       f"released", _errcodes.ERR_RMA_SYNC)
        if attr_err is not None:
            raise attr_err

    def free(self) -> None:
        """Call Free if not null (mpi4py's convenience)."""
        if not self._null():
            self.Free()

    # ------------------------------------------------------------------ attributes
    def Get_group(self) -> Group:
        """Access the group of processes that created the window."""
        self._live("Get_group")
        return self._comm.Get_group()

    @property
    def group(self) -> Group:
        """Group."""
        return self.Get_group()

    @property
    def group_size(self) -> int:
        """Group size."""
        self._live("group_size")
        return self._n

    @property
    def group_rank(self) -> int:
        """Group rank."""
        self._live("group_rank")
        return self._rank

    def Get_info(self) -> Info:
        """Return the current hints for a window."""
        s = self._live("Get_info")
        return Info.Create(dict(s.info))

    def Set_info(self, info: Info) -> None:
        """Set new values for the hints associated with a window."""
        s = self._live("Set_info")
        if info is not None and not isinstance(info, Info):
            raise TypeError(f"Win.Set_info: expected an Info, got {type(info).__name__}")
        if info:
            s.info.update(info.items())

    @property
    def info(self) -> Info:
        """Info hints."""
        return self.Get_info()

    @info.setter
    def info(self, info) -> None:
        self.Set_info(info)

    def Get_name(self) -> str:
        """Get the print name for this window."""
        if self._s is None:
            return "MPI_WIN_NULL"
        return self._s.name

    def Set_name(self, name: str) -> None:
        """Set the print name for this window."""
        self._live("Set_name").name = str(name)

    @property
    def name(self) -> str:
        """Print name."""
        return self.Get_name()

    @name.setter
    def name(self, value: str) -> None:
        self.Set_name(value)

    # attributes: ``_attr.Cached`` (Create_keyval, Set_attr, Get_attr, Delete_attr...)
    _attr_kind = "win"
    _attr_predefined = frozenset((WIN_BASE, WIN_SIZE, WIN_DISP_UNIT, WIN_CREATE_FLAVOR,
                                  WIN_MODEL))

    def _attributes(self, what: str) -> _attr.Attributes:
        return self._live(what.rsplit(".", 1)[-1]).attrs

    def _attr_value(self, keyval: int) -> Any:
        if keyval == WIN_BASE:
            return self._base
        if keyval == WIN_SIZE:
            return self._size
        if keyval == WIN_DISP_UNIT:
            return self._unit
        if keyval == WIN_CREATE_FLAVOR:
            return self._flavor
        return WIN_UNIFIED     # WIN_MODEL

    @property
    def attrs(self) -> tuple[int, int, int]:
        """Attributes (base, size, disp_unit)."""
        self._live("attrs")
        return (self._base, self._size, self._unit)

    @property
    def flavor(self) -> int:
        """Create flavor."""
        self._live("flavor")
        return self._flavor

    @property
    def model(self) -> int:
        """Memory model."""
        self._live("model")
        return WIN_UNIFIED

    def tomemory(self) -> buffer:
        """Return window memory buffer."""
        self._live("tomemory")
        local = self._local
        if local is None:
            return buffer()
        return buffer._wrap(local, self._memobj, False)

    def Shared_query(self, rank: int) -> tuple[buffer, int]:
        """Query the process-local address of a peer's part of the window:
        (a zero-copy buffer onto it, its displacement unit)."""
        self._live("Shared_query")
        n = self._n
        if rank == PROC_NULL:
            rank = next((r for r in range(n) if self._tab[r][0] > 0), 0)
        self._check_rank(rank, "Shared_query")
        if self._parts is None:
            if rank == self._rank and self._flavor == WIN_FLAVOR_CREATE:
                return self.tomemory(), self._unit
            raise _err(f"Win.Shared_query: rank {rank}'s memory of a "
                       f"{self._fl_name()} window is not mapped here (only windows made "
                       f"by Allocate or Allocate_shared are)", _errcodes.ERR_RMA_FLAVOR)
        q = self._queries.get(rank)
        if q is None or q[0]._released:
            q = self._queries[rank] = (buffer._wrap(self._parts[rank], None, False),
                                       self._tab[rank][1])
        return q

    # ------------------------------------------------------------------ error handlers
    @classmethod
    def Create_errhandler(cls, errhandler_fn: Any) -> _errhandler.Errhandler:
        """Create an error handler for windows."""
        return _errhandler.create(errhandler_fn)

    def Get_errhandler(self) -> _errhandler.Errhandler:
        """Get the error handler for a window."""
        return _errhandler.Errhandler(self._live("Get_errhandler").errh)

    def Set_errhandler(self, errhandler: _errhandler.Errhandler) -> None:
        """Set the error handler for a window."""
        s = self._live("Set_errhandler")
        s.errh = _errhandler.Errhandler(_errhandler.check(errhandler, "Win.Set_errhandler"))
        _errhandler.apply(self, s.errh, self._comm.Abort)   # failing calls apply it

    def Call_errhandler(self, errorcode: int) -> None:
        """Call the error handler installed on a window."""
        s = self._live("Call_errhandler")

        def abort(code):
            raise MmpiError(code)
        _errhandler.call(s.errh, self, errorcode, abort)

    # ------------------------------------------------------------------ dynamic windows
    def Attach(self, memory: Any) -> None:
        """Attach a local memory region (dynamic windows)."""
        s = self._live("Attach")
        if self._flavor != WIN_FLAVOR_DYNAMIC:
            raise _err("Win.Attach: only windows made by Win.Create_dynamic take attached "
                       "memory", _errcodes.ERR_RMA_FLAVOR)
        try:
            addr, nbytes, ro = _linux.buffer_address(memory, True)
        except (TypeError, BufferError) as e:
            raise _err(f"Win.Attach: the memory must be a writable contiguous buffer "
                       f"({e})", _errcodes.ERR_RMA_ATTACH) from None
        if len(s.attached) >= MAX_ATTACH:
            raise _err(f"Win.Attach: at most {MAX_ATTACH} regions per rank",
                       _errcodes.ERR_RMA_ATTACH)
        s.attached.append((addr, nbytes, memory))
        self._publish_attached()

    def Detach(self, memory: Any) -> None:
        """Detach a local memory region (dynamic windows)."""
        s = self._live("Detach")
        try:
            addr = _linux.buffer_address(memory, False)[0]
        except (TypeError, BufferError) as e:
            raise _err(f"Win.Detach: {e}", _errcodes.ERR_RMA_ATTACH) from None
        for i, (a, _, _) in enumerate(s.attached):
            if a == addr:
                del s.attached[i]
                break
        else:
            raise _err("Win.Detach: this memory is not attached to the window",
                       _errcodes.ERR_RMA_ATTACH)
        self._publish_attached()

    def _publish_attached(self) -> None:
        me = self._rank
        self._mlock(me, "Attach")
        try:
            w = self._words
            tab = self._attach_tab
            regs = self._s.attached
            for i, (a, nb, _) in enumerate(regs):
                tab[me, i, 0] = a
                tab[me, i, 1] = nb
            w[me * (SLOT // 8) + W_NATTACH] = len(regs)
        finally:
            self._munlock(me)

    # ------------------------------------------------------------------ access helpers
    def _check_rank(self, rank, what: str) -> int:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or \
                not 0 <= rank < self._n:
            raise _err(f"Win.{what}: invalid target rank {rank!r} (window of "
                       f"{self._n} ranks; valid: 0..{self._n - 1} or MPI.PROC_NULL)",
                       _errcodes.ERR_RANK)
        return int(rank)

    def _where(self, rank: int, disp: int, nbytes: int, what: str):
        """Target memory of ``nbytes`` at displacement ``disp`` of ``rank``: a local
        numpy byte view, or the remote address (process_vm_*v)."""
        size, unit, base, _ = self._tab[rank]
        if self._flavor == WIN_FLAVOR_DYNAMIC:
            addr = int(disp)
            if nbytes and not self._attached_at(rank, addr, nbytes):
                raise _err(f"Win.{what}: {nbytes} bytes at address {addr:#x} are not in "
                           f"memory rank {rank} attached to the window",
                           _errcodes.ERR_RMA_RANGE)
            if rank == self._rank:
                return np.frombuffer(_linux.memory_at(addr, nbytes), np.uint8) \
                    if nbytes else np.empty(0, np.uint8)
            return addr
        off = int(disp) * unit
        if off < 0 or off + nbytes > size:
            raise _err(f"Win.{what}: {nbytes} bytes at displacement {disp} (x disp_unit "
                       f"{unit}) fall outside rank {rank}'s window of {size} bytes",
                       _errcodes.ERR_RMA_RANGE)
        if self._parts is not None:
            return self._parts[rank][off:off + nbytes]
        if rank == self._rank:
            return self._local[off:off + nbytes]
        mv = self._fast[rank][0]
        if mv is not None:   # a peer's driller segment, mapped here
            return np.frombuffer(mv, np.uint8)[off:off + nbytes]
        return base + off

    def _attached_at(self, rank: int, addr: int, nbytes: int) -> bool:
        k = int(self._words[rank * (SLOT // 8) + W_NATTACH])
        tab = self._attach_tab[rank]
        for i in range(min(k, MAX_ATTACH)):
            a, nb = int(tab[i, 0]), int(tab[i, 1])
            if a <= addr and addr + nbytes <= a + nb:
                return True
        return False

    def _target(self, target, origin_nbytes: int, origin_dtype, what: str):
        """(disp, nbytes, dtype) of a target spec: None, disp, [disp], [disp, count] or
        [disp, count, datatype]."""
        disp, count, dt = 0, None, None
        if target is None:
            pass
        elif isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            disp = int(target)
        elif isinstance(target, (list, tuple)) and 1 <= len(target) <= 3:
            disp = target[0]
            if len(target) >= 2:
                count = target[1]
            if len(target) == 3:
                dt = target[2]
        else:
            raise _ValueError(f"Win.{what}: cannot parse target {target!r}: use a "
                              f"displacement, [disp], [disp, count] or "
                              f"[disp, count, datatype]")
        if isinstance(disp, bool) or not isinstance(disp, (int, np.integer)):
            raise _ValueError(f"Win.{what}: invalid target displacement {disp!r}")
        if dt is None:
            dtype = origin_dtype
        else:
            d = as_datatype(dt)
            try:
                dtype = np_dtype(d)
            except MmpiError:   # (a derived datatype: no single numpy dtype)
                raise MmpiNotImplementedError(
                    f"Win.{what}: a derived target datatype ({d!r}) is not supported by "
                    "driller's windows; give a contiguous target [disp, count, basic "
                    "datatype] (one call per block of a strided target)") from None
        if count is None:
            nbytes = origin_nbytes
        else:
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or \
                    count < 0:
                raise _ValueError(f"Win.{what}: invalid target count {count!r}")
            nbytes = int(count) * dtype.itemsize
            if nbytes != origin_nbytes:
                raise _ValueError(f"Win.{what}: the origin has {origin_nbytes} bytes but "
                                  f"the target spec {target!r} names {nbytes}")
        return int(disp), nbytes, dtype

    # ------------------------------------------------------------------ RMA: put/get
    def Put(self, origin: Any, target_rank: int, target: Any = None) -> None:
        """Put data into a memory window on a remote process."""
        self._move(origin, target_rank, target, False)

    def Get(self, origin: Any, target_rank: int, target: Any = None) -> None:
        """Get data from a memory window on a remote process."""
        self._move(origin, target_rank, target, True)

    def _move(self, origin: Any, target_rank: int, target: Any, get: bool) -> None:
        """Put (``get`` false) or Get: a plain array at a displacement (or none) takes
        the fast path; every other spec goes through the buffer-spec parser."""
        s = self._s
        if type(origin) is np.ndarray and s is not None and s.ok and \
                type(target_rank) is int and (target is None or type(target) is int) and \
                0 <= target_rank < self._n and origin.flags.c_contiguous and \
                (origin.flags.writeable or not get) and origin.ndim and \
                origin.dtype.kind in "biufc":
            mv, base, unit = self._fast[target_rank]
            nb = origin.nbytes
            off = 0 if target is None else target * unit
            if 0 <= off and off + nb <= self._tab[target_rank][0]:
                if not nb:
                    return
                if mv is not None:
                    if get:
                        memoryview(origin).cast("B")[:] = mv[off:off + nb]
                    else:
                        mv[off:off + nb] = memoryview(origin).cast("B")
                    return
                if base:
                    (readv if get else writev)(
                        self._cx, target_rank, origin.__array_interface__["data"][0],
                        base + off, nb, "Win.Get" if get else "Win.Put")
                    return
        what = "Get" if get else "Put"
        self._live(what)
        if target_rank == PROC_NULL:
            return
        r = self._check_rank(target_rank, what)
        b = parse(origin, get, "Win." + what)
        disp, nb, _ = self._target(target, len(b.mv), b.dtype, what)
        where = self._where(r, disp, nb, what)
        if not nb:
            return
        if type(where) is int:
            (readv if get else writev)(self._cx, r, _linux.buffer_address(b.mv, get)[0],
                                       where, nb, "Win." + what)
        elif get:
            np.frombuffer(b.mv, np.uint8)[:] = where
        else:
            where[:] = np.frombuffer(b.mv, np.uint8)

    # ------------------------------------------------------------------ RMA: atomics
    def _mlock(self, rank: int, what: str) -> None:
        """Take target ``rank``'s mutex (atomicity of every read-modify-write on it)."""
        if self._words[rank * (SLOT // 8) + W_POISON]:
            raise self._poisoned(rank, what)
        if _linux.shared_mutex_lock(self._maddr[rank]):
            self._words[rank * (SLOT // 8) + W_POISON] = 1
            _linux.shared_mutex_unlock(self._maddr[rank])
            raise self._poisoned(rank, what)

    def _munlock(self, rank: int) -> None:
        _linux.shared_mutex_unlock(self._maddr[rank])

    def _poisoned(self, rank: int, what: str) -> PeerDiedError:
        return PeerDiedError(f"Win.{what}: a process died in the middle of an atomic "
                             f"update of rank {rank}'s window memory (it held the "
                             f"window's lock of rank {rank}); that memory is in an "
                             f"undefined state and the window cannot be used for atomic "
                             f"operations on rank {rank} any more")

    def _rmw(self, r: int, disp: int, nb: int, dtype, what: str, fn) -> None:
        """Run ``fn(target_array)`` on the target elements under rank r's mutex
        (a read-modify-write: atomic with every other one on that target)."""
        where = self._where(r, disp, nb, what)
        self._mlock(r, what)
        try:
            if type(where) is int:
                tmp = np.empty(nb // dtype.itemsize, dtype)
                if nb:
                    readv(self._cx, r, tmp.ctypes.data, where, nb, "Win." + what)
                if fn(tmp) and nb:
                    writev(self._cx, r, tmp.ctypes.data, where, nb, "Win." + what)
            else:
                fn(where.view(dtype))
        finally:
            self._munlock(r)

    @staticmethod
    def _check_acc_op(op, dtype, what: str) -> Op:
        if not isinstance(op, Op):
            raise _err(f"Win.{what}: invalid op {op!r}: use a predefined MPI.Op "
                       f"(MPI.SUM, MPI.MAX, MPI.REPLACE, MPI.NO_OP, ...)", _errcodes.ERR_OP)
        if op is REPLACE or op is NO_OP:
            return op
        if op.user is not None:
            raise _err(f"Win.{what}: user-defined ops are not allowed in one-sided "
                       f"accumulate operations (MPI standard); use a predefined op",
                       _errcodes.ERR_OP)
        op.check_buffer(dtype, "Win." + what)
        return op

    @staticmethod
    def _apply(op, tgt, src) -> bool:
        if op is NO_OP:
            return False
        if op is REPLACE:
            tgt[...] = src
        else:
            op.ufunc(tgt, src, out=tgt)
        return True

    def Accumulate(self, origin: Any, target_rank: int, target: Any = None,
                   op: Op | None = None) -> None:
        """Accumulate data into the target process (atomic per element)."""
        op = _sum() if op is None else op
        to = type(origin)
        if (to is np.ndarray or to is _array.array) and type(target_rank) is int and \
                (target is None or type(target) is int):
            # fast path: one element into a word seen before (see _remember)
            s = self._s
            if to is np.ndarray:
                char = origin.dtype.char
                one = origin.size == 1
            else:
                char = origin.typecode
                one = len(origin) == 1
            ent = self._typed.get((target_rank, target or 0, char, op.toint())) \
                if one and s is not None and s.ok and isinstance(op, Op) else None
            if ent is not None:
                tmv, fn, mask, half = ent
                if fn is not None:
                    x = origin.item() if to is np.ndarray else origin[0]
                    self._mlock(target_rank, "Accumulate")
                    try:
                        new = fn(tmv[0], x)
                        if mask:
                            new = ((new + half) & mask) - half
                        tmv[0] = new
                    finally:
                        self._munlock(target_rank)
                return
        self._live("Accumulate")
        if target_rank == PROC_NULL:
            return
        r = self._check_rank(target_rank, "Accumulate")
        b = parse(origin, False, "Win.Accumulate")
        disp, nb, dtype = self._target(target, len(b.mv), b.dtype, "Accumulate")
        op = self._check_acc_op(op, dtype, "Accumulate")
        src = np.frombuffer(b.mv, dtype) if nb else np.empty(0, dtype)
        self._rmw(r, disp, nb, dtype, "Accumulate", lambda t: self._apply(op, t, src))
        if nb == dtype.itemsize and (to is np.ndarray or to is _array.array) and \
                (target is None or type(target) is int) and len(b.mv) == nb:
            self._remember(r, disp, dtype, op)

    def Get_accumulate(self, origin: Any, result: Any, target_rank: int, target: Any = None,
                       op: Op | None = None) -> None:
        """Fetch-and-accumulate data into the target process."""
        self._live("Get_accumulate")
        op = _sum() if op is None else op
        if target_rank == PROC_NULL:
            return
        r = self._check_rank(target_rank, "Get_accumulate")
        res = parse(result, True, "Win.Get_accumulate")
        if op is NO_OP and origin is None:
            b_mv, b_dtype = None, res.dtype
        else:
            b = parse(origin, False, "Win.Get_accumulate")
            b_mv, b_dtype = b.mv, b.dtype
        nres = len(res.mv)
        disp, nb, dtype = self._target(target, nres, b_dtype, "Get_accumulate")
        if b_mv is not None and op is not NO_OP and len(b_mv) != nb:
            raise _ValueError(f"Win.Get_accumulate: the origin has {len(b_mv)} bytes but "
                              f"the result buffer {nres}: they must match")
        op = self._check_acc_op(op, dtype, "Get_accumulate")
        out = np.frombuffer(res.mv, dtype) if nb else np.empty(0, dtype)
        src = np.frombuffer(b_mv, dtype) if (nb and b_mv is not None and op is not NO_OP) \
            else None

        def fn(t):
            out[...] = t
            return self._apply(op, t, src) if src is not None else False
        self._rmw(r, disp, nb, dtype, "Get_accumulate", fn)

    def Fetch_and_op(self, origin: Any, result: Any, target_rank: int, target_disp: int = 0,
                     op: Op | None = None) -> None:
        """Perform one-sided read-modify-write of one element."""
        op = _sum() if op is None else op
        to, tr = type(origin), type(result)
        if (to is np.ndarray or to is _array.array) and tr is to and \
                type(target_rank) is int and type(target_disp) is int:
            s = self._s
            if to is np.ndarray:
                char = origin.dtype.char
                ok = origin.size == 1 and result.size == 1 and \
                    result.dtype.char == char and result.flags.writeable
            else:
                char = origin.typecode
                ok = len(origin) == 1 and len(result) == 1 and result.typecode == char
            ent = self._typed.get((target_rank, target_disp, char, op.toint())) \
                if ok and s is not None and s.ok and isinstance(op, Op) else None
            if ent is not None:
                # fast path: a word of a mapped window seen before, in Python scalars
                # (integers wrap as numpy's do; float64 only with SUM, PROD, REPLACE, NO_OP)
                tmv, fn, mask, half = ent
                x = origin.item() if to is np.ndarray else origin[0]
                self._mlock(target_rank, "Fetch_and_op")
                try:
                    old = tmv[0]
                    if fn is not None:
                        new = fn(old, x)
                        if mask:
                            new = ((new + half) & mask) - half
                        tmv[0] = new
                finally:
                    self._munlock(target_rank)
                if to is _array.array or result.ndim == 1:
                    result[0] = old
                else:
                    result.reshape(1)[0] = old
                return
        self._live("Fetch_and_op")
        if target_rank == PROC_NULL:
            return
        r = self._check_rank(target_rank, "Fetch_and_op")
        b = parse(origin, False, "Win.Fetch_and_op")
        res = parse(result, True, "Win.Fetch_and_op")
        dtype = b.dtype
        self._one(b, dtype, "Fetch_and_op", "origin")
        self._one(res, dtype, "Fetch_and_op", "result")
        op = self._check_acc_op(op, dtype, "Fetch_and_op")
        src = np.frombuffer(b.mv, dtype)
        out = np.frombuffer(res.mv, dtype)

        def fn(t):
            out[...] = t
            return self._apply(op, t, src)
        self._rmw(r, self._disp(target_disp, "Fetch_and_op"), dtype.itemsize, dtype,
                  "Fetch_and_op", fn)
        if type(origin) in (np.ndarray, _array.array) and type(result) is type(origin):
            self._remember(r, int(target_disp), dtype, op)

    def _remember(self, r: int, disp: int, dtype, op) -> None:
        """Remember target word (r, disp) of ``dtype`` as a typed memoryview with the op
        as a Python function: the one-element fast path of Fetch_and_op and Accumulate
        (a mapped window only; integers, or float64 with ops exact in Python floats)."""
        char = dtype.char
        fn = _PYOPS.get(op.toint(), False)
        if self._fast[r][0] is None or len(self._typed) >= 64 or fn is False or \
                not (char in _INTS or (char == "d" and op in _FLOAT_OK)):
            return
        off = disp * self._fast[r][2]
        bits = 8 * dtype.itemsize
        mask = (1 << bits) - 1 if char in _INTS else 0
        half = (1 << (bits - 1)) if char in _INTS and dtype.kind == "i" else 0
        tmv = self._fast[r][0][off:off + dtype.itemsize].cast(char)
        self._typed[(r, disp, char, op.toint())] = (tmv, fn, mask, half)

    def Compare_and_swap(self, origin: Any, compare: Any, result: Any, target_rank: int,
                         target_disp: int = 0) -> None:
        """Perform one-sided atomic compare-and-swap of one element."""
        self._live("Compare_and_swap")
        if target_rank == PROC_NULL:
            return
        r = self._check_rank(target_rank, "Compare_and_swap")
        b = parse(origin, False, "Win.Compare_and_swap")
        c = parse(compare, False, "Win.Compare_and_swap")
        res = parse(result, True, "Win.Compare_and_swap")
        dtype = b.dtype
        self._one(b, dtype, "Compare_and_swap", "origin")
        self._one(c, dtype, "Compare_and_swap", "compare")
        self._one(res, dtype, "Compare_and_swap", "result")
        new = bytes(b.mv)
        cmp = bytes(c.mv)
        out = np.frombuffer(res.mv, np.uint8)

        def fn(t):
            raw = t.view(np.uint8)
            old = raw.tobytes()
            out[...] = raw
            if old == cmp:
                raw[...] = np.frombuffer(new, np.uint8)
                return True
            return False
        self._rmw(r, self._disp(target_disp, "Compare_and_swap"), dtype.itemsize,
                  np.dtype(dtype), "Compare_and_swap", fn)

    @staticmethod
    def _one(b, dtype, what: str, name: str) -> None:
        if len(b.mv) != dtype.itemsize or b.dtype.itemsize != dtype.itemsize:
            raise _ValueError(f"Win.{what}: the {name} buffer must hold exactly one "
                              f"element of the origin's datatype ({dtype}, "
                              f"{dtype.itemsize} bytes); it holds {len(b.mv)} bytes of "
                              f"{b.dtype}")

    @staticmethod
    def _disp(d, what: str) -> int:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise _ValueError(f"Win.{what}: invalid target displacement {d!r}")
        return int(d)

    # ------------------------------------------------------------------ request forms
    def _req(self) -> CollRequest:
        return request(_Done(), 0, self._cx, cls=CollRequest)

    def Rput(self, origin: Any, target_rank: int, target: Any = None) -> CollRequest:
        """Put data into a memory window on a remote process (a request, complete)."""
        self.Put(origin, target_rank, target)
        return self._req()

    def Rget(self, origin: Any, target_rank: int, target: Any = None) -> CollRequest:
        """Get data from a memory window on a remote process (a request, complete)."""
        self.Get(origin, target_rank, target)
        return self._req()

    def Raccumulate(self, origin: Any, target_rank: int, target: Any = None,
                    op: Op | None = None) -> CollRequest:
        """Accumulate data into the target process (a request, complete)."""
        self.Accumulate(origin, target_rank, target, op)
        return self._req()

    def Rget_accumulate(self, origin: Any, result: Any, target_rank: int, target: Any = None,
                        op: Op | None = None) -> CollRequest:
        """Fetch-and-accumulate data into the target process (a request, complete)."""
        self.Get_accumulate(origin, result, target_rank, target, op)
        return self._req()

    # ------------------------------------------------------------------ synchronisation
    @staticmethod
    def _assert(assertion, what: str) -> None:
        if isinstance(assertion, bool) or not isinstance(assertion, (int, np.integer)) \
                or assertion < 0 or assertion > 31:
            raise _err(f"Win.{what}: invalid assertion {assertion!r} (an OR of "
                       f"MPI.MODE_* flags)", _errcodes.ERR_ASSERT)

    def Fence(self, assertion: int = 0) -> None:
        """Perform an MPI fence synchronization on a window (a barrier: every
        operation completed at its origin already)."""
        self._live("Fence")
        self._assert(assertion, "Fence")
        self._comm.Barrier()

    def _ranks_of(self, group, what: str) -> list[int]:
        if not isinstance(group, Group):
            raise _err(f"Win.{what}: expected an MPI.Group, got {type(group).__name__}",
                       _errcodes.ERR_GROUP)
        mine = self._comm.Get_group()
        ranks = group.Translate_ranks(list(range(group.Get_size())), mine)
        if any(r < 0 for r in ranks):
            raise _err(f"Win.{what}: the group holds processes that are not in the "
                       f"window's group", _errcodes.ERR_GROUP)
        return ranks

    def Start(self, group: Group, assertion: int = 0) -> None:
        """Start an RMA access epoch for MPI (waits for the targets' Post)."""
        s = self._live("Start")
        self._assert(assertion, "Start")
        if s.start_group is not None:
            raise _err("Win.Start: an access epoch is already open (call Complete)",
                       _errcodes.ERR_RMA_SYNC)
        ranks = self._ranks_of(group, "Start")
        sink = bytearray(0)
        for r in ranks:
            self._comm.Recv(sink, r, TAG_POST)
        s.start_group = ranks

    def Complete(self) -> None:
        """Complete an RMA access epoch begun with Start."""
        s = self._live("Complete")
        if s.start_group is None:
            raise _err("Win.Complete: no access epoch is open (call Start first)",
                       _errcodes.ERR_RMA_SYNC)
        for r in s.start_group:
            self._comm.Send(b"", r, TAG_DONE)
        s.start_group = None

    def Post(self, group: Group, assertion: int = 0) -> None:
        """Start an RMA exposure epoch."""
        s = self._live("Post")
        self._assert(assertion, "Post")
        if s.post_group is not None:
            raise _err("Win.Post: an exposure epoch is already open (call Wait)",
                       _errcodes.ERR_RMA_SYNC)
        ranks = self._ranks_of(group, "Post")
        for r in ranks:
            self._comm.Send(b"", r, TAG_POST)
        s.post_group = list(ranks)

    def Wait(self) -> None:
        """Complete an RMA exposure epoch begun with Post (waits for the origins' Complete)."""
        s = self._live("Wait")
        if s.post_group is None:
            raise _err("Win.Wait: no exposure epoch is open (call Post first)",
                       _errcodes.ERR_RMA_SYNC)
        sink = bytearray(0)
        for r in list(s.post_group):
            self._comm.Recv(sink, r, TAG_DONE)
            s.post_group.remove(r)
        s.post_group = None

    def Test(self) -> bool:
        """Test whether an RMA exposure epoch has completed."""
        s = self._live("Test")
        if s.post_group is None:
            raise _err("Win.Test: no exposure epoch is open (call Post first)",
                       _errcodes.ERR_RMA_SYNC)
        sink = bytearray(0)
        for r in list(s.post_group):
            if self._comm.Iprobe(r, TAG_DONE):
                self._comm.Recv(sink, r, TAG_DONE)
                s.post_group.remove(r)
        if s.post_group:
            return False
        s.post_group = None
        return True

    def Lock(self, rank: int, lock_type: int = LOCK_EXCLUSIVE, assertion: int = 0) -> None:
        """Begin an RMA access epoch at the target process."""
        s = self._live("Lock")
        self._assert(assertion, "Lock")
        if lock_type not in (LOCK_EXCLUSIVE, LOCK_SHARED):
            raise _err(f"Win.Lock: invalid lock type {lock_type!r} (MPI.LOCK_EXCLUSIVE "
                       f"or MPI.LOCK_SHARED)", _errcodes.ERR_LOCKTYPE)
        if rank == PROC_NULL:
            return
        r = self._check_rank(rank, "Lock")
        if r in s.locks or s.lock_all:
            raise _err(f"Win.Lock: rank {r} is locked already by this process",
                       _errcodes.ERR_RMA_SYNC)
        self._acquire(r, lock_type == LOCK_EXCLUSIVE, "Lock")
        s.locks[r] = lock_type

    def Unlock(self, rank: int) -> None:
        """Complete an RMA access epoch at the target process."""
        s = self._live("Unlock")
        if rank == PROC_NULL:
            return
        r = self._check_rank(rank, "Unlock")
        if r not in s.locks:
            raise _err(f"Win.Unlock: rank {r} is not locked by this process (call "
                       f"Lock first)", _errcodes.ERR_RMA_SYNC)
        self._release(r, s.locks.pop(r) == LOCK_EXCLUSIVE, "Unlock")

    def Lock_all(self, assertion: int = 0) -> None:
        """Begin an RMA access epoch at all processes (shared locks)."""
        s = self._live("Lock_all")
        self._assert(assertion, "Lock_all")
        if s.lock_all or s.locks:
            raise _err("Win.Lock_all: this process holds locks on the window already",
                       _errcodes.ERR_RMA_SYNC)
        done = []
        try:
            for r in range(self._n):
                self._acquire(r, False, "Lock_all")
                done.append(r)
        except BaseException:
            for r in done:
                self._release(r, False, "Lock_all")
            raise
        s.lock_all = True

    def Unlock_all(self) -> None:
        """Complete an RMA access epoch at all processes."""
        s = self._live("Unlock_all")
        if not s.lock_all:
            raise _err("Win.Unlock_all: no Lock_all epoch is open", _errcodes.ERR_RMA_SYNC)
        s.lock_all = False
        for r in range(self._n):
            self._release(r, False, "Unlock_all")

    def Flush(self, rank: int) -> None:
        """Complete all outstanding RMA operations at a target (every operation
        completes when its call returns: nothing to wait for)."""
        self._live("Flush")

    def Flush_all(self) -> None:
        """Complete all outstanding RMA operations at all targets."""
        self._live("Flush_all")

    def Flush_local(self, rank: int) -> None:
        """Complete locally all outstanding RMA operations at a target."""
        self._live("Flush_local")

    def Flush_local_all(self) -> None:
        """Complete locally all outstanding RMA operations at all targets."""
        self._live("Flush_local_all")

    def Sync(self) -> None:
        """Synchronize public and private copies of the window (one copy: unified)."""
        self._live("Sync")

    # -- the passive-target lock --
    def _acquire(self, r: int, excl: bool, what: str) -> None:
        w = self._words
        base = r * (SLOT // 8)
        me = self._rank
        waiting = False
        gone = None   # a holder seen dead after the wait: raise if it still holds the lock
        while True:
            self._mlock(r, what)
            try:
                if waiting:
                    w[base + W_WAITERS] -= 1
                    waiting = False
                ex, ns = int(w[base + W_EXCL]), int(w[base + W_NSHARED])
                if ex == 0 and (ns == 0 or not excl):
                    if excl:
                        w[base + W_EXCL] = me + 1
                    else:
                        w[base + W_NSHARED] = ns + 1
                        self._holders[r, me] = 1
                    return
                if gone is not None and (ex == gone + 1 or not ex and self._holders[r, gone]):
                    how = ("finished (MPI.Finalize, or the end of its program)"
                           if self._cx.t.finished(self._cx.group[gone]) else "died")
                    raise PeerDiedError(
                        f"Win.{what}: rank {gone} of the window {how} holding "
                        f"{'an exclusive' if ex else 'a shared'} lock on rank {r}'s "
                        f"window; rank {me} cannot lock it", rank=self._cx.group[gone])
                gone = None   # (it released the lock before it exited: wait on)
                gen = int(w[base + W_GEN])
                w[base + W_WAITERS] += 1
                waiting = True
                holders = [ex - 1] if ex else \
                    [int(h) for h in np.flatnonzero(self._holders[r])]
            finally:
                self._munlock(r)
            _linux.futex_wait(self._region.address + (base + W_GEN) * 8, gen, LOCK_POLL)
            for h in holders:   # (a holder that finished never unlocks either)
                if h != me and (not _linux.pid_alive(self._pid(h)) or
                                self._cx.t.finished(self._cx.group[h])):
                    gone = h   # (looked at again under the mutex)
                    break

    def _release(self, r: int, excl: bool, what: str) -> None:
        w = self._words
        base = r * (SLOT // 8)
        self._mlock(r, what)
        try:
            if excl:
                w[base + W_EXCL] = 0
            else:
                w[base + W_NSHARED] -= 1
                self._holders[r, self._rank] = 0
            w[base + W_GEN] = (int(w[base + W_GEN]) + 1) & 0x7FFFFFFF
            sleepers = w[base + W_WAITERS]
        finally:
            self._munlock(r)
        if sleepers:   # a waiter registers under the mutex before it sleeps: none is lost
            _linux.futex_wake(self._region.address + (base + W_GEN) * 8)

    def _pid(self, r: int) -> int:
        return self._cx.t.pid_of(self._cx.group[r])


WIN_NULL = Win()


def _after_fork_in_child() -> None:
    # a forked child shares the rank's mappings: it must not take the rank's locks or
    # write its peers' windows as if it were the rank
    for st in list(_live_states):
        st.ok = False
        st.forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _fill_pyops() -> None:
    import operator
    from ._coll import _ops as O
    global _FLOAT_OK
    _PYOPS.update({op.toint(): fn for op, fn in (
        (O.SUM, operator.add), (O.PROD, operator.mul), (O.MAX, max), (O.MIN, min),
        (O.BAND, operator.and_), (O.BOR, operator.or_), (O.BXOR, operator.xor),
        (REPLACE, lambda a, b: b), (NO_OP, None))})
    _FLOAT_OK = (O.SUM, O.PROD, REPLACE, NO_OP)


_fill_pyops()


def _sum():
    from ._coll._ops import SUM
    return SUM


# ------------------------------------------------------------------ creation (collective)

def _create(flavor, memory, size, disp_unit, info, comm, what) -> Win:
    if comm is None:
        from ._comm import self_comm
        comm = self_comm()
    if not isinstance(comm, Comm):
        raise _err(f"{what}: expected a communicator, got {type(comm).__name__}",
                   _errcodes.ERR_COMM)
    if info is not None and not isinstance(info, Info):
        raise TypeError(f"{what}: expected an Info, got {type(info).__name__}")
    if comm.Is_inter():
        raise _err(f"{what}: windows are made over an intracommunicator, not an "
                   f"intercommunicator (Merge it first)", _errcodes.ERR_COMM)
    ccx = context_of(comm)
    remote = getattr(ccx.t, "remote", ())      # a hybrid world's ranks on other nodes
    if remote and any(w in remote for w in ccx.group):
        # every rank of comm sees a member on another node: all raise, none waits
        raise MmpiNotImplementedError(
            f"{what}: the communicator spans several nodes; driller's windows need every "
            f"rank on one machine (they map each other's memory); split it by node "
            f"(comm.Split_type(MPI.COMM_TYPE_SHARED)) or use mpi4py's windows")
    # local checks, then one allgather: an error on any rank raises on every rank
    err = None
    base = 0
    local = None
    memobj = None
    try:
        if isinstance(disp_unit, bool) or not isinstance(disp_unit, (int, np.integer)) or \
                disp_unit <= 0:
            raise _err(f"{what}: invalid disp_unit {disp_unit!r} (an int > 0)",
                       _errcodes.ERR_DISP)
        if flavor == WIN_FLAVOR_CREATE:
            if memory is None:
                size = 0
            else:
                try:
                    mv = memoryview(memory)
                except TypeError:
                    raise _err(f"{what}: the memory ({type(memory).__name__}) does not "
                               f"support the buffer protocol", _errcodes.ERR_BUFFER) from None
                if mv.readonly or not mv.c_contiguous:
                    raise _err(f"{what}: the window memory must be writable and "
                               f"contiguous", _errcodes.ERR_BUFFER)
                size = mv.nbytes
                if size:
                    flat = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
                    local = np.frombuffer(flat, np.uint8)
                    base = local.ctypes.data
                    memobj = memory
        else:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
                raise _err(f"{what}: invalid size {size!r} (an int >= 0)", _errcodes.ERR_SIZE)
            size = int(size)
    except MmpiError as e:
        err = str(e)
        size = 0
    noncontig = bool(info) and str(info.get("alloc_shared_noncontig", "")).lower() == "true"
    seg = _segment_of(local) if (err is None and local is not None) else None
    wcomm = comm.Dup()
    full = wcomm.allgather((err, int(size), int(disp_unit) if err is None else 1, base,
                            os.getpid(), seg))
    recs = [rec[:4] for rec in full]
    bad = [(r, e) for r, (e, _, _, _) in enumerate(recs) if e]
    if bad:
        r, e = bad[0]
        raise MmpiError(e if r == wcomm.Get_rank() else
                        f"{what}: rank {r} failed: {e}", error_class=_errcodes.ERR_ARG)
    n = wcomm.Get_size()
    me = wcomm.Get_rank()
    # layout: header (slots, shared-holder table, attach tables), then the parts
    holders_off = n * SLOT
    attach_off = _align(holders_off + n * n, 8)
    header = _linux.page_ceil(attach_off + n * MAX_ATTACH * 16)
    offs = []
    pos = header
    shared_mem = flavor in (WIN_FLAVOR_ALLOCATE, WIN_FLAVOR_SHARED)
    for (_, sz, _, _) in recs:
        if not shared_mem:
            offs.append(-1)
            continue
        if flavor == WIN_FLAVOR_ALLOCATE or noncontig:
            pos = _linux.page_ceil(pos)
        offs.append(pos)
        pos += sz
    total = max(pos, header)
    region = _map_shared(wcomm, total, n, what)
    words = region.memoryview()[:holders_off].cast("q")    # ints, one load or store each
    maddr = [region.address + r * SLOT + M_OFF for r in range(n)]
    holders = region.array(np.uint8, (n, n), holders_off)
    attach_tab = region.array(np.int64, (n, MAX_ATTACH, 2), attach_off)
    parts = None
    if shared_mem:
        parts = [region.array(np.uint8, (recs[r][1],), offs[r]) for r in range(n)]
        local = parts[me]
        base = region.address + offs[me]
    tab = [(sz, du, (region.address + offs[r]) if shared_mem else b, offs[r])
           for r, (_, sz, du, b) in enumerate(recs)]
    if flavor == WIN_FLAVOR_DYNAMIC:
        size, base = 0, 0
    win = (local if local is not None else np.empty(0, np.uint8)).view(Win)
    s = _State()
    _live_states.add(s)
    if info:
        s.info.update(info.items())
    if shared_mem:
        rmv = region.memoryview()
        fast = [(rmv[offs[r]:offs[r] + recs[r][1]], 0, recs[r][2]) for r in range(n)]
    elif flavor == WIN_FLAVOR_CREATE:
        fast = [((memoryview(local) if local is not None else None) if r == me else None,
                 recs[r][3], recs[r][2]) for r in range(n)]
    else:
        fast = [(None, 0, 1)] * n
    peer_regions = []
    if flavor == WIN_FLAVOR_CREATE:
        # peers whose window memory lives in a driller segment (MPI.Alloc_mem, shared
        # arrays): map it here too, and Put/Get become a memcpy
        for r in range(n):
            pid, sg = full[r][4], full[r][5]
            if r == me or sg is None or not recs[r][1]:
                continue
            try:
                pfd = _linux.open_peer_fd(pid, sg[0])
                try:
                    if tuple(_linux.fd_inode(pfd)) != sg[3]:
                        continue  # not the segment any more: process_vm_writev/readv
                    reg = Region(pfd, sg[1])
                finally:
                    os.close(pfd)
            except OSError:
                continue          # process_vm_writev/readv then
            peer_regions.append(reg)
            fast[r] = (reg.memoryview()[sg[2]:sg[2] + recs[r][1]], recs[r][3], recs[r][2])
        if any(rec[5] is not None for rec in full):
            wcomm.Barrier()   # owners keep those fds open until every peer opened them
    win.__dict__.update(
        _peer_regions=peer_regions,
        _fast=fast, _typed={}, _queries={}, _maddr=maddr,
        _s=s, _comm=wcomm, _cx=context_of(wcomm), _n=n, _rank=me, _flavor=flavor,
        _region=region, _words=words, _holders=holders, _attach_tab=attach_tab,
        _parts=parts, _local=local if size else (local if shared_mem else None),
        _memobj=memobj, _tab=tab, _base=base, _size=int(size), _unit=int(disp_unit))
    return win


def _segment_of(arr: np.ndarray):
    """(fd, segment bytes, offset) of the driller segment holding ``arr``'s memory, when
    it is a block of this process's shared heap whose memfd is still open here."""
    from .. import heap
    o = arr
    for _ in range(32):
        if isinstance(o, heap.Block):
            sg = o.segment
            if sg.fd < 0 or sg.owner != os.getpid():
                return None
            return (sg.fd, sg.nbytes, arr.__array_interface__["data"][0] - sg.address,
                    tuple(sg.inode))
        if isinstance(o, memoryview):
            o = o.obj
        elif isinstance(o, np.ndarray):
            o = o.base
        else:
            return None
        if o is None:
            return None
    return None


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _map_shared(wcomm, total: int, n: int, what: str) -> Region:
    """Rank 0 creates the window's memfd (mutexes initialised), every other rank
    opens it through /proc and maps it; the fd is closed once every rank mapped it."""
    me = wcomm.Get_rank()
    fd = -1
    region = None
    err = None
    if me == 0:
        try:
            fd = os.memfd_create("driller-win", os.MFD_CLOEXEC)
            os.ftruncate(fd, total)
            region = Region(fd, total)
            for r in range(n):
                _linux.shared_mutex_init(region.address + r * SLOT + M_OFF)
        except OSError as e:
            err = f"{what}: rank 0 could not create the window's shared memory: {e}"
        info = (os.getpid(), fd, err)
    else:
        info = None
    if n > 1:
        info = wcomm.bcast(info, 0)
    pid, pfd, err0 = info
    if err0:
        if fd >= 0:
            os.close(fd)
        raise MmpiError(err0, error_class=_errcodes.ERR_NO_MEM)
    if me != 0:
        try:
            myfd = _linux.open_peer_fd(pid, pfd)
            try:
                region = Region(myfd, total)
            finally:
                os.close(myfd)
        except OSError as e:
            err = (f"{what}: rank {me} could not map the window's shared memory of rank 0 "
                   f"(pid {pid}): {e}; ranks must be allowed to open each other's "
                   f"/proc/<pid>/fd (same user, ptrace access)")
    errs = wcomm.allgather(err) if n > 1 else [err]
    if fd >= 0:
        os.close(fd)
    bad = [e for e in errs if e]
    if bad:
        raise MmpiError(bad[0], error_class=_errcodes.ERR_RMA_SHARED)
    return region

_threads.register(Win)
