"""Datatypes: the predefined ones of MPI (name, size, typechar) and their numpy twins.

Derived datatypes (``Create_contiguous``, ``Create_vector``...) will live here too.
"""

from __future__ import annotations

import numpy as np

from ..errors import MmpiError
from .. import _errcodes

__all__ = ["Datatype", "DATATYPES", "DATATYPE_NULL", "BYTE", "TYPECHARS", "as_datatype", "is_datatype",
           "np_dtype", "dtype_of", "datatype_of"]


class Datatype:
    """A predefined MPI datatype: a name, a size in bytes, a struct/numpy typechar.

    ``Datatype()`` is a null datatype: it equals ``DATATYPE_NULL``, is false, and
    asking its size raises MPI.Exception(ERR_TYPE).  Predefined datatypes pickle by
    name (they unpickle to the same object)."""

    __slots__ = ("name", "size", "typechar")

    def __init__(self, name: str = "", size: int = 0, typechar: str = ""):
        if isinstance(name, Datatype):     # Datatype(dt): the same handle, as mpi4py
            name, size, typechar = name.name, name.size, name.typechar
        self.name = name
        self.size = size
        self.typechar = typechar

    def _null(self) -> bool:
        return self.name in ("", "DATATYPE_NULL")

    def __bool__(self) -> bool:
        return not self._null()

    def __eq__(self, other):
        if not isinstance(other, Datatype):
            return NotImplemented
        if self._null() or other._null():
            return self._null() and other._null()
        return self is other or (self.name == other.name and self.size == other.size
                                 and self.typechar == other.typechar)

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(("Datatype", self.name if not self._null() else ""))

    def __reduce__(self):
        if self._null():
            return "DATATYPE_NULL"
        if DATATYPES.get(self.name) is self:
            return self.name
        return (Datatype, (self.name, self.size, self.typechar))

    @classmethod
    def fromcode(cls, code: str) -> Datatype:
        """The predefined datatype of a typecode, as mpi4py: a struct/numpy character
        ('i', 'd', 'G', '?'...) or a kind and size ('i4', 'u8', 'f8', 'c16', 'b1')."""
        if isinstance(code, str):
            name = _CODES.get(code)
            if name is None:
                try:
                    dt = np.dtype(code)
                except TypeError:
                    dt = None
                if dt is not None and dt.kind in "biufc" and dt.isnative and \
                        code[:1] in "biufc" and code[1:].isdigit():
                    name = _CODES.get(dt.char)
            if name is not None:
                return DATATYPES[name]
        raise ValueError(f"cannot map typecode {code!r} to a predefined MPI datatype")

    def tocode(self) -> str:
        """The typecode of a predefined datatype (ValueError for the others)."""
        for code, name in _CODES.items():
            if len(code) == 1 and DATATYPES.get(name) is self:
                return code
        raise ValueError(f"cannot map datatype {self.name} to a typecode")

    def Get_size(self) -> int:
        if self._null():
            raise MmpiError("Datatype.Get_size: the datatype is DATATYPE_NULL",
                            error_class=_errcodes.ERR_TYPE)
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
    _dt("C_LONG_DOUBLE_COMPLEX", np.dtype("G").itemsize, "G"),
    _dt("FLOAT16_T", 2, "e"), _dt("FLOAT32_T", 4, "f"), _dt("FLOAT64_T", 8, "d"),
    _dt("PACKED", 1, "B"), _dt("AINT", 8, "l"), _dt("OFFSET", 8, "q"), _dt("COUNT", 8, "q"),
]}
DATATYPES["C_COMPLEX"] = DATATYPES["C_FLOAT_COMPLEX"]
DATATYPES["COMPLEX"] = DATATYPES["C_FLOAT_COMPLEX"]
DATATYPES["DOUBLE_COMPLEX"] = DATATYPES["C_DOUBLE_COMPLEX"]
DATATYPES["BOOL"] = DATATYPES["C_BOOL"]
BYTE = DATATYPES["BYTE"]
TYPECHARS = {}   # typechar -> the datatype a buffer of that format is taken for
for _d in DATATYPES.values():
    TYPECHARS.setdefault(_d.typechar, _d)
TYPECHARS.update({"b": DATATYPES["SIGNED_CHAR"], "B": BYTE, "i": DATATYPES["INT"],
                  "l": DATATYPES["LONG"], "d": DATATYPES["DOUBLE"], "f": DATATYPES["FLOAT"]})
del _d
# typecodes (mpi4py's Datatype.fromcode/tocode)
_CODES = {
    "?": "C_BOOL", "c": "CHAR", "b": "SIGNED_CHAR", "h": "SHORT", "i": "INT", "l": "LONG",
    "q": "LONG_LONG", "B": "UNSIGNED_CHAR", "H": "UNSIGNED_SHORT", "I": "UNSIGNED_INT",
    "L": "UNSIGNED_LONG", "Q": "UNSIGNED_LONG_LONG", "e": "FLOAT16_T", "f": "FLOAT",
    "d": "DOUBLE", "g": "LONG_DOUBLE", "F": "C_FLOAT_COMPLEX", "D": "C_DOUBLE_COMPLEX",
    "G": "C_LONG_DOUBLE_COMPLEX",
    "b1": "C_BOOL", "i1": "INT8_T", "i2": "INT16_T", "i4": "INT32_T", "i8": "INT64_T",
    "u1": "UINT8_T", "u2": "UINT16_T", "u4": "UINT32_T", "u8": "UINT64_T",
    "f2": "FLOAT16_T", "f4": "FLOAT32_T", "f8": "FLOAT64_T",
    "c8": "C_FLOAT_COMPLEX", "c16": "C_DOUBLE_COMPLEX",
}
DATATYPE_NULL = Datatype("DATATYPE_NULL", 0, "")
# each predefined datatype is a module global too: that is how it pickles (by name)
globals().update(DATATYPES)


def as_datatype(d) -> Datatype:
    """A Datatype, or a typechar naming one; else MmpiError."""
    if isinstance(d, Datatype):
        return d
    if isinstance(d, str) and d in TYPECHARS:
        return TYPECHARS[d]
    raise MmpiError(f"invalid datatype {d!r}: use one of driller.MPI's datatypes "
                    f"(MPI.BYTE, MPI.INT, MPI.DOUBLE, ...) or a typechar like 'd'")


def is_datatype(x) -> bool:
    return isinstance(x, Datatype) or (isinstance(x, str) and x in TYPECHARS)


def np_dtype(dt: Datatype) -> np.dtype:
    """The numpy dtype of a datatype's elements."""
    tc = dt.typechar
    if tc == "c":
        return np.dtype("S1")
    if tc == "w":
        return np.dtype("U1")
    return np.dtype(tc)


def dtype_of(obj) -> np.dtype:
    """The element dtype of a buffer object (its numpy dtype, or its buffer format;
    bytes when neither says)."""
    d = getattr(obj, "dtype", None)
    if isinstance(d, np.dtype):
        return d
    try:
        return np.dtype(memoryview(obj).format)
    except (TypeError, ValueError):
        return np.dtype("B")


def datatype_of(dtype: np.dtype) -> Datatype:
    """The predefined datatype matching a numpy dtype (BYTE when none does)."""
    return TYPECHARS.get(dtype.char, BYTE)
