"""Reduction operations: Op (predefined and user-made) and the predefined ops.

Buffers reduce with numpy ufuncs (in place, elementwise); objects with Python
operators (``op(x, y)``, x from the lower rank).  The algorithms use an Op
through ``ufunc`` (None for MAXLOC/MINLOC/REPLACE/NO_OP and user ops),
``user`` (a user function), ``check_buffer`` and ``lohi``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from typing import Any
    from collections.abc import Callable
    from .._datatype import Datatype
    from .._typing import BufSpec, Buffer

import inspect
import itertools
import weakref

import numpy as np

from ... import _errcodes
from ...errors import MmpiError, MmpiTypeError, MmpiValueError
from .._handle import Handle

__all__ = [
    "Op", "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC",
    "MINLOC", "REPLACE", "NO_OP", "OP_NULL", "check_op", "stand_in",
]


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


MAX_USER_OP = 32   # live user ops at once, as mpi4py (its callback slots)
_live_user_ops = [0]
_handles = {}      # toint() -> the Op it names
_counter = itertools.count()


def _release_user_op(h: "_Handle") -> None:
    if not h.freed:
        h.freed = True
        _live_user_ops[0] -= 1
        _handles.pop(h.index, None)


class _Handle:
    """What every copy of one Op shares (``MPI.Op(op)`` is a new handle onto it)."""

    __slots__ = ("name", "ufunc", "pyfn", "commute", "user", "user_args", "freed", "index",
                 "predefined", "loc")

    def __init__(self, name, ufunc, pyfn, commute, user, loc=False):
        self.name, self.ufunc, self.pyfn, self.commute, self.user = (
            name, ufunc, pyfn, commute, user)
        self.predefined = user is None or loc
        self.loc = loc      # MAXLOC/MINLOC: ``user`` is their buffer function
        self.freed = False
        self.index = next(_counter)
        self.user_args = 3
        if user is not None:
            try:
                params = inspect.signature(user).parameters.values()
                pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if len(pos) == 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
                    self.user_args = 2
            except (TypeError, ValueError):
                pass


class Op(Handle):
    """A reduction operation: the predefined ones (``SUM``, ``MAX``...) or a
    user function made with :meth:`Op.Create`.

    ``Op()`` is the null op (false, equal to ``OP_NULL``); ``Op(op)`` a new handle
    equal to ``op``.  Buffers reduce with numpy ufuncs (in place, elementwise);
    objects with Python operators.  ``op(x, y)`` combines two objects (x from the
    lower rank).  Predefined ops pickle by name; user ops by their function.
    """

    __slots__ = ("_h", "name", "ufunc", "pyfn", "commute", "user", "user_args", "_clone",
                 "predefined", "__weakref__")
    _inner = "_h"

    def __new__(cls, op: "Op | None" = None) -> "Op":
        self = object.__new__(cls)
        if op is None:
            h = _NULL_HANDLE
        elif isinstance(op, Op):
            h = op._h
        else:
            raise MmpiTypeError(f"Op({op!r}): expected an Op or nothing")
        self._set(h)
        self._clone = False
        return self

    def _set(self, h):
        self._h = h
        self.name, self.ufunc, self.pyfn, self.commute, self.user, self.user_args = (
            h.name, h.ufunc, h.pyfn, h.commute, h.user, h.user_args)
        self.predefined = h.predefined

    @classmethod
    def _make(cls, name, ufunc=None, pyfn=None, commute=True, user=None, loc=False) -> "Op":
        op = object.__new__(cls)
        h = _Handle(name, ufunc, pyfn, commute, user, loc)
        _handles[h.index] = h
        op._set(h)
        op._clone = False
        return op

    @property
    def freed(self) -> bool:
        """Whether the operation was freed (``Free``)."""
        return self._h.freed

    @classmethod
    def Create(cls, function: Callable[[Buffer, Buffer, Datatype], None],
               commute: bool = False) -> "Op":
        """Create a user-defined reduction operation.  Buffers:
        ``function(invec, inoutvec, datatype)`` stores ``invec op inoutvec`` into
        ``inoutvec`` (typed numpy arrays; invec holds the lower ranks' data).
        Objects: ``function(a, b[, datatype])`` returns ``a op b``.
        ``commute=False`` keeps rank order."""
        if not callable(function):
            raise MmpiTypeError(f"Op.Create needs a callable, got {type(function).__name__}")
        if _live_user_ops[0] >= MAX_USER_OP:
            raise MmpiError(f"Op.Create: {MAX_USER_OP} user-defined ops exist already (as "
                            f"in mpi4py, at most {MAX_USER_OP} at once); Free() some first",
                            error_class=_errcodes.ERR_INTERN)
        _live_user_ops[0] += 1
        op = cls._make(getattr(function, "__name__", "user op"), commute=bool(commute),
                       user=function)
        # As in mpi4py, the op Create returned owns it: collected unfreed, it is freed
        # (its slot among the 32 comes back; copies made with Op(op) see it freed).
        weakref.finalize(op, _release_user_op, op._h)
        return op

    def Free(self) -> None:
        """Free a user-defined reduction operation."""
        h = self._h
        if h.predefined:
            raise MmpiError(f"Op.Free: cannot free the predefined op MPI.{h.name or 'OP_NULL'}",
                            error_class=_errcodes.ERR_OP)
        _release_user_op(h)
        self._set(_NULL_HANDLE)     # this handle is OP_NULL now (other copies: freed)

    def free(self) -> None:
        """Free the handle, safely: a predefined op stays as it is; a copy of one
        (``Op(SUM)``) and a user op become OP_NULL."""
        h = self._h
        if h is _NULL_HANDLE or (h.predefined and _PREDEFINED.get(h.name) is self):
            return
        if h.predefined:
            self._set(_NULL_HANDLE)
        else:
            self.Free()

    def Is_commutative(self) -> bool:
        """Query reduction operations for their commutativity."""
        return self.commute

    @property
    def is_commutative(self) -> bool:
        """Is a commutative operation."""
        return self.commute

    def Is_predefined(self) -> bool:
        """Query whether the operation is predefined (OP_NULL is)."""
        return self.predefined

    @property
    def is_predefined(self) -> bool:
        """Is a predefined operation."""
        return self.predefined

    def Reduce_local(self, inbuf: BufSpec, inoutbuf: BufSpec) -> None:
        """Apply a reduction operation to local data: ``inoutbuf = inbuf op inoutbuf``."""
        from .._bufspec import parse   # (lazy: _bufspec sits above the ops in no cycle)
        check_op(self, "Reduce_local")
        ib = parse(inbuf, False, "Reduce_local")
        ob = parse(inoutbuf, True, "Reduce_local")
        if ib.dt != ob.dt or ib.dtype != ob.dtype:
            raise MmpiValueError(f"Reduce_local: the buffers have different datatypes "
                                 f"({ib.dt.name} and {ob.dt.name})")
        if ib.nbytes != ob.nbytes:
            raise MmpiValueError(f"Reduce_local: the buffers hold different counts "
                                 f"({ib.nbytes // ib.dtype.itemsize} and "
                                 f"{ob.nbytes // ob.dtype.itemsize} x {ob.dt.name})")
        self.check_buffer(ob.dtype, "Reduce_local")
        a, b = ib.arr(), ob.arr()
        if self.user is None:
            self.ufunc(a, b, out=b)
        else:
            self.user(a, b, ob.dt)

    @property
    def handle(self) -> int:
        """MPI handle (an int >= 0; ``Op.fromhandle`` takes it back)."""
        return self._h.index

    @classmethod
    def fromhandle(cls, handle: int) -> "Op":
        """Create object from MPI handle."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"Op.fromhandle: expected an int, got {handle!r}")
        h = _handles.get(handle)
        if h is None:
            raise MmpiValueError(f"Op.fromhandle: {handle!r} names no live op")
        op = object.__new__(cls)
        op._set(h)
        op._clone = True
        return op

    def __bool__(self) -> bool:     # (equality, int handles: Handle)
        return self._h is not _NULL_HANDLE

    def __reduce__(self):
        h = self._h
        if h.predefined:
            name = "OP_NULL" if h is _NULL_HANDLE else h.name
            if _PREDEFINED.get(name) is self:
                return name
            return (_predefined_copy, (name, type(self)))
        if self._clone:
            raise MmpiValueError(f"cannot pickle the user op {h.name!r} from Op.fromint: "
                                 f"pickle the op Op.Create returned")
        return (_unpickle_user, (h.user, h.commute))

    def __repr__(self) -> str:
        return f"<mmpi.Op {self.name or 'OP_NULL'}>"

    def __call__(self, x, y):
        """x op y for Python objects (x: the lower rank's value)."""
        if not self.predefined:
            if self.user_args == 2:
                return self.user(x, y)
            return self.user(x, y, None)
        if self.pyfn is None:
            raise MmpiValueError(f"MPI.{self.name or 'OP_NULL'} cannot be applied to objects")
        return self.pyfn(x, y)

    # -- buffers --
    def check_buffer(self, dtype: np.dtype[Any], what: str) -> None:
        """Raise MPI.Exception (ERR_OP) if this op cannot reduce elements of ``dtype``
        (freed, Python objects, a MINLOC/MAXLOC pair type expected); ``what`` names the call."""
        if self.freed:
            raise MmpiError(f"{what}: op {self.name} was freed", error_class=_errcodes.ERR_OP)
        if dtype.hasobject:
            raise MmpiError(f"{what}: the buffers hold Python object pointers ({dtype}), "
                            f"which cannot be moved as bytes; use the lowercase method "
                            f"({what.lower()}(), which pickles the objects)")
        if self._h.loc:
            if not (dtype.names and len(dtype.names) == 2):
                raise MmpiError(f"{what}: MPI.{self.name} on buffers needs (value, index) "
                                f"pairs: a pair datatype (MPI.DOUBLE_INT, MPI.TWOINT...) or a "
                                f"numpy array of a 2-field structured dtype, got {dtype}",
                                error_class=_errcodes.ERR_OP)
            return
        if self.user is None and self.ufunc is None:
            raise MmpiError(f"{what}: MPI.{self.name} is not defined on buffers (only for "
                            f"one-sided accumulates); reduce Python objects (lowercase "
                            f"{what.lower()})", error_class=_errcodes.ERR_OP)
        if self.user is None and dtype.kind not in "biufc":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for datatype {dtype}",
                            error_class=_errcodes.ERR_OP)
        if self.user is None and self.ufunc in (np.bitwise_and, np.bitwise_or,
                                                  np.bitwise_xor) and dtype.kind not in "biu":
            raise MmpiError(f"{what}: MPI.{self.name} needs an integer datatype, got {dtype}",
                            error_class=_errcodes.ERR_OP)
        if self.user is None and self.ufunc in (np.maximum, np.minimum) and dtype.kind == "c":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for complex {dtype}",
                            error_class=_errcodes.ERR_OP)

    def lohi(self, lo: np.ndarray[Any, Any], hi: np.ndarray[Any, Any],
             dt: Datatype) -> np.ndarray[Any, Any]:
        """lo op hi (lo: the lower ranks' data); returns whichever of lo/hi holds it."""
        if self.user is None:
            self.ufunc(lo, hi, out=lo)
            return lo
        self.user(lo, hi, dt)
        return hi


_NULL_HANDLE = _Handle("", None, None, True, None)
_handles[_NULL_HANDLE.index] = _NULL_HANDLE
_PREDEFINED = {}


def _predefined_copy(name: str, cls: type = None) -> Op:
    return Op.__new__(cls or Op, _PREDEFINED[name])


def _unpickle_user(function, commute) -> Op:
    return Op.Create(function, commute)


def _op(name: str, ufunc: Any, pyfn: Callable[[Any, Any], Any]) -> Op:
    op = Op._make(name, ufunc, pyfn)
    _PREDEFINED[name] = op
    return op


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
def _loc_buffers(greater):
    def loc(invec, inoutvec, datatype):
        """inoutvec = invec LOC inoutvec on (value, index) pairs: the better value, the
        lower index on ties (commutative)."""
        v, i = inoutvec.dtype.names
        av, bv = invec[v], inoutvec[v]
        better = (av > bv) if greater else (av < bv)
        take = better | ((av == bv) & (invec[i] < inoutvec[i]))
        inoutvec[take] = invec[take]
    return loc


MAXLOC = Op._make("MAXLOC", None, _o_maxloc, True, _loc_buffers(True), loc=True)
MINLOC = Op._make("MINLOC", None, _o_minloc, True, _loc_buffers(False), loc=True)
_PREDEFINED["MAXLOC"], _PREDEFINED["MINLOC"] = MAXLOC, MINLOC
REPLACE = _op("REPLACE", None, lambda a, b: b)
NO_OP = _op("NO_OP", None, lambda a, b: a)
OP_NULL = Op()
_PREDEFINED["OP_NULL"] = OP_NULL


def check_op(op, what) -> Op:
    if not isinstance(op, Op) or not op:
        raise MmpiError(f"{what}: invalid op {op!r}: use MPI.SUM, MPI.MAX, ... or "
                        f"MPI.Op.Create(fn, commute)", error_class=_errcodes.ERR_OP)
    if op.freed:
        raise MmpiError(f"{what}: op {op.name} was freed", error_class=_errcodes.ERR_OP)
    return op


def stand_in(op) -> Op:
    """The op a rank takes part with once it refused its arguments (carrying the
    refusal, it combines nothing, but the algorithm depends on the op): ``op`` if it is
    valid, else SUM: an invalid op on this rank only, where the others most likely
    pass a predefined (commutative) op, whose algorithm it then meets."""
    try:
        return check_op(op, "")
    except MmpiError:
        return SUM
