"""Reduction operations: Op (predefined and user-made) and the predefined ops.

Buffers reduce with numpy ufuncs (in place, elementwise); objects with Python
operators (``op(x, y)``, x from the lower rank).  The algorithms use an Op
through ``ufunc`` (None for MAXLOC/MINLOC/REPLACE/NO_OP and user ops),
``user`` (a user function), ``check_buffer`` and ``lohi``.
"""

from __future__ import annotations

import inspect

import numpy as np

from ...errors import MmpiError

__all__ = [
    "Op", "SUM", "PROD", "MAX", "MIN", "LAND", "LOR", "LXOR", "BAND", "BOR", "BXOR", "MAXLOC",
    "MINLOC", "REPLACE", "NO_OP", "OP_NULL", "check_op",
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


class Op:
    """A reduction operation: the predefined ones (``SUM``, ``MAX``...) or a
    user function made with :meth:`Op.Create`.

    Buffers reduce with numpy ufuncs (in place, elementwise); objects with
    Python operators.  ``op(x, y)`` combines two objects (x from the lower rank).
    """

    __slots__ = ("name", "ufunc", "pyfn", "commute", "user", "user_args", "freed")

    def __init__(self, name, ufunc=None, pyfn=None, commute=True, user=None):
        self.name = name
        self.ufunc = ufunc
        self.pyfn = pyfn
        self.commute = commute
        self.user = user
        self.user_args = 3
        self.freed = False
        if user is not None:
            try:
                params = inspect.signature(user).parameters.values()
                pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if len(pos) == 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
                    self.user_args = 2
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
        if self.user is None:
            raise MmpiError(f"cannot free the predefined op MPI.{self.name}")
        self.freed = True

    def Is_commutative(self) -> bool:
        return self.commute

    @property
    def is_commutative(self) -> bool:
        return self.commute

    def Is_predefined(self) -> bool:
        return self.user is None

    @property
    def is_predefined(self) -> bool:
        return self.user is None

    def __repr__(self) -> str:
        return f"<mmpi.Op {self.name}>"

    def __call__(self, x, y):
        """x op y for Python objects (x: the lower rank's value)."""
        if self.user is not None:
            if self.user_args == 2:
                return self.user(x, y)
            return self.user(x, y, None)
        return self.pyfn(x, y)

    # -- buffers --
    def check_buffer(self, dtype, what):
        if self.freed:
            raise MmpiError(f"{what}: op {self.name} was freed")
        if dtype.hasobject:
            raise MmpiError(f"{what}: the buffers hold Python object pointers ({dtype}), "
                            f"which cannot be moved as bytes; use the lowercase method "
                            f"({what.lower()}(), which pickles the objects)")
        if self.user is None and self.ufunc is None:
            raise MmpiError(f"{what}: MPI.{self.name} on buffers needs (value, index) pair "
                            f"datatypes, which driller.MPI does not have; reduce Python "
                            f"objects (lowercase {what.lower()}) with (value, index) tuples")
        if self.user is None and dtype.kind not in "biufc":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for datatype {dtype}")
        if self.user is None and self.ufunc in (np.bitwise_and, np.bitwise_or,
                                                  np.bitwise_xor) and dtype.kind not in "biu":
            raise MmpiError(f"{what}: MPI.{self.name} needs an integer datatype, got {dtype}")
        if self.user is None and self.ufunc in (np.maximum, np.minimum) and dtype.kind == "c":
            raise MmpiError(f"{what}: MPI.{self.name} is not defined for complex {dtype}")

    def lohi(self, lo, hi, dt):
        """lo op hi (lo: the lower ranks' data); returns whichever of lo/hi holds it."""
        if self.user is None:
            self.ufunc(lo, hi, out=lo)
            return lo
        self.user(lo, hi, dt)
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


def check_op(op, what) -> Op:
    if not isinstance(op, Op):
        raise MmpiError(f"{what}: invalid op {op!r}: use MPI.SUM, MPI.MAX, ... or "
                        f"MPI.Op.Create(fn, commute)")
    if op.freed:
        raise MmpiError(f"{what}: op {op.name} was freed")
    return op
