"""Datatypes: the predefined ones of MPI and derived ones, as mpi4py's ``MPI.Datatype``.

A :class:`Datatype` is a Python handle onto a type object (``_T``, the "MPI
object"): ``Datatype(dt)`` is a second handle onto the same type (equal, not
identical), ``Free()`` empties one handle (it becomes DATATYPE_NULL), equality is
identity of the type object.

Predefined types are leaves: a basic numpy dtype (or, for the pair types
``SHORT_INT``... ``LONG_DOUBLE_INT``, a C struct of two).  A derived type is a
list of *blocks*, each a grid of copies of one child type (``(disp, dims,
child)``, a dim being ``(count, stride)`` or an array of byte offsets), which is
all the constructors need: ``Create_vector`` is one block per vector block,
``Create_subarray`` one block with one dim per array dimension, and so on.
Size, bounds (lb/ub, true lb/ub) come from the blocks without flattening (a
``Create_contiguous(2**31)`` costs nothing); the typemap (element byte offsets,
basic type codes) is flattened with numpy on first use and cached, then merged
into contiguous byte runs that :mod:`._pack` copies (gather for a send, scatter
for a receive).

Semantics follow MPI as Open MPI implements it (no alignment padding of struct
extents; ``Get_contents`` in the MPI-3 layout: integers, addresses, no counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Sequence
    from . import Comm
    from ._typing import Bottom, Buffer, BufSpec

import weakref

import numpy as np

from ..errors import MmpiError, MmpiKeyError
from .. import _errcodes
from . import _attr
from . import _const as C
from . import _pack
from ._handle import Handle

__all__ = ["Datatype", "DATATYPES", "DATATYPE_NULL", "BYTE", "TYPECHARS", "as_datatype",
           "is_datatype", "np_dtype", "dtype_of", "datatype_of", "is_derived",
           "check_message_type",
           "pack_into", "unpack_from", "message_runs", "count_of", "elements_of",
           "Get_address", "Aint_add", "Aint_diff", "typecode", "typealign", "TYPEDICT",
           "TYPEDICT_C", "TYPEDICT_F", "set_buffer_view", "MessageValueError"]

_ERR_TYPE = _errcodes.ERR_TYPE
_ERR_ARG = _errcodes.ERR_ARG
_MAX_ELEMENTS = 1 << 27      # a typemap flattened beyond this is refused (memory)


class MessageValueError(MmpiError, ValueError):
    """A buffer spec whose datatype cannot describe the message (null datatype with a
    displacement or an inferred count, extent <= 0): a ValueError, as mpi4py's."""


def _err(msg: str, cls: int = _ERR_ARG) -> MmpiError:
    return MmpiError(msg, error_class=cls)


# ---------------------------------------------------------------- basic element types

_BASIC = []        # code -> np.dtype of a basic element (native order)
_BASIC_CODE = {}   # np.dtype.str -> code


def _basic(dt) -> int:
    d = np.dtype(dt)
    key = d.str
    if key not in _BASIC_CODE:
        _BASIC_CODE[key] = len(_BASIC)
        _BASIC.append(d)
    return _BASIC_CODE[key]


def _basic_sizes() -> np.ndarray:
    return np.array([d.itemsize for d in _BASIC], np.int64)


def _basic_complex() -> np.ndarray:
    return np.array([d.kind == "c" for d in _BASIC], bool)


_ALL: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # handle -> live _T


class _T:
    """One datatype object (what an MPI_Datatype handle names)."""

    __slots__ = ("name", "attr", "size", "lb", "ub", "tlb", "tub", "comb", "ints", "addrs",
                 "types", "params", "committed", "predef", "named", "char", "tstr", "code",
                 "npd", "align", "blocks", "_el", "_runs", "_mruns", "dense", "attrs",
                 "__weakref__")

    def __init__(self):
        self.name = ""
        self.attr = None
        self.comb = C.COMBINER_NAMED
        self.ints, self.addrs, self.types, self.params = [], [], [], {}
        self.committed = False
        self.predef = self.named = False
        self.char = self.tstr = self.code = None
        self.npd = None
        self.align = 0
        self.blocks = None
        self._el = None
        self._runs = None
        self._mruns = None
        self.dense = False
        self.attrs = None
        _ALL[id(self)] = self

    # -- the typemap --
    def elements(self) -> tuple[np.ndarray, np.ndarray]:
        """(byte offsets, basic codes) of one item, in typemap order."""
        if self._el is None:
            if self.blocks is None:
                raise _err(f"datatype {self.name or 'derived'} has no typemap", _ERR_TYPE)
            offs, codes = [], []
            total = 0
            for disp, dims, child in self.blocks:
                pos = _grid(disp, dims)
                co, cc = child.elements()
                total += pos.size * co.size
                if total > _MAX_ELEMENTS:
                    raise _err(f"the datatype flattens to more than {_MAX_ELEMENTS} basic "
                               f"elements: too large to move; use fewer, larger elements "
                               f"(e.g. a contiguous type of a bigger basic type)", _ERR_TYPE)
                if pos.size and co.size:
                    offs.append((pos[:, None] + co[None, :]).ravel())
                    codes.append(np.tile(cc, pos.size))
            if offs:
                self._el = (np.concatenate(offs), np.concatenate(codes))
            else:
                self._el = (np.zeros(0, np.int64), np.zeros(0, np.int16))
        return self._el

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous byte runs (offset, length) of one item."""
        if self._runs is None:
            if self.dense:
                self._runs = (np.array([self.tlb], np.int64), np.array([self.size], np.int64))
            else:
                off, codes = self.elements()
                self._runs = _pack.runs_of(off, _basic_sizes()[codes])
        return self._runs


def _grid(disp: int, dims) -> np.ndarray:
    """Byte positions of the copies of a block (C order over its dims)."""
    pos = np.array([disp], np.int64)
    for d in dims:
        if isinstance(d, np.ndarray):
            step = d.astype(np.int64, copy=False)
        else:
            n, stride = d
            if n * pos.size > _MAX_ELEMENTS:
                raise _err(f"the datatype flattens to more than {_MAX_ELEMENTS} copies: too "
                           f"large to move", _ERR_TYPE)
            step = np.arange(n, dtype=np.int64) * stride
        pos = (pos[:, None] + step[None, :]).ravel()
    return pos


def _dim_range(d) -> tuple[int, int, int]:
    """(count, min offset, max offset) of one dim."""
    if isinstance(d, np.ndarray):
        if d.size == 0:
            return 0, 0, 0
        return int(d.size), int(d.min()), int(d.max())
    n, s = d
    if n <= 0:
        return 0, 0, 0
    a, b = 0, (n - 1) * s
    return n, min(a, b), max(a, b)


def _bounds(t: _T, blocks) -> None:
    """Size, lb/ub and true lb/ub of a derived type from its blocks."""
    t.blocks = blocks
    t.align = max([b[2].align for b in blocks] or [1])
    size = 0
    lb = ub = tlb = tub = None
    for disp, dims, child in blocks:
        n, lo, hi = 1, disp, disp
        for d in dims:
            c, a, b = _dim_range(d)
            n *= c
            lo += a
            hi += b
        if n == 0:
            continue
        size += n * child.size
        lb = lo + child.lb if lb is None else min(lb, lo + child.lb)
        ub = hi + child.ub if ub is None else max(ub, hi + child.ub)
        if child.size > 0:
            tlb = lo + child.tlb if tlb is None else min(tlb, lo + child.tlb)
            tub = hi + child.tub if tub is None else max(tub, hi + child.tub)
    t.size = size
    t.lb, t.ub = (lb or 0), (ub or 0)
    if tlb is None:
        tlb = tub = 0
    t.tlb, t.tub = tlb, tub
    # one run from 0: moved as plain bytes, no typemap needed (contiguous of dense...)
    t.dense = (len(blocks) == 1 and blocks[0][0] == 0 and blocks[0][2].dense and
               all(not isinstance(d, np.ndarray) and (d[1] == blocks[0][2].ub - blocks[0][2].lb
                                                     or d[0] <= 1) for d in blocks[0][1])
               and size == t.ub - t.lb and t.lb == 0 and t.tlb == 0)


# ---------------------------------------------------------------- the handle

class Datatype(_attr.Cached, Handle):
    """Datatype object (mpi4py's ``MPI.Datatype``): a handle onto a predefined or a
    derived MPI datatype.  ``Datatype()`` is a null handle (equal to DATATYPE_NULL).
    Attributes (``Create_keyval``, ``Set_attr``...) live with the type object."""

    __slots__ = ("_t", "__weakref__")
    _attr_kind = "datatype"
    _inner = "_t"   # truth, equality, int handles: Handle

    def _attributes(self, what: str) -> _attr.Attributes:
        t = self._check(what.split(".")[-1])
        if t.attrs is None:
            t.attrs = _attr.Attributes("datatype")
        return t.attrs

    def __new__(cls, datatype: Datatype | None = None) -> Datatype:
        return cls._copy_of(datatype, "datatype")

    # -- identity (truth, equality, int handles: Handle) --

    def __repr__(self) -> str:
        t = self._t
        if t is None:
            return "<mpi4py.MPI.Datatype DATATYPE_NULL>" if self is DATATYPE_NULL else \
                "<mpi4py.MPI.Datatype (null)>"
        if t.attr is not None:
            return f"<mpi4py.MPI.Datatype {t.attr}>"
        return f"<mpi4py.MPI.Datatype derived: {_COMBINER_NAMES[t.comb]}, size {t.size}>"

    def __reduce__(self):
        t = self._t
        if t is None:
            return "DATATYPE_NULL" if self is DATATYPE_NULL else (type(self), ())
        if t.named:
            if _CANON.get(id(t)) is self:
                return t.attr
            return (type(self), (_CANON[id(t)],))
        base, comb, params = self.decode()
        return (_recreate, (base, comb, params))

    def _check(self, what: str) -> _T:
        t = self._t
        if t is None:
            raise _err(f"Datatype.{what}: the datatype is DATATYPE_NULL (never created, or "
                       f"freed)", _ERR_TYPE)
        return t

    @property
    def handle(self) -> int:
        """MPI handle (an int; 0 for DATATYPE_NULL)."""
        return 0 if self._t is None else id(self._t)

    @classmethod
    def fromhandle(cls, handle: int) -> Datatype:
        """The datatype of an integer handle (predefined ones and 0 only)."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"Datatype.fromhandle: expected an int, got {handle!r}")
        if handle == 0:
            return cls()
        t = _ALL.get(handle)
        if t is None:
            raise ValueError(f"no datatype has handle {handle}")
        d = object.__new__(cls)
        d._t = t
        return d

    # -- sizes and extents --
    def Get_size(self) -> int:
        """Return the number of bytes occupied by entries in the datatype."""
        return self._check("Get_size").size

    Get_size_c = Get_size

    @property
    def size(self) -> int:
        """Size (in bytes)."""
        return self._check("size").size

    def Get_extent(self) -> tuple[int, int]:
        """Return lower bound and extent of datatype."""
        t = self._check("Get_extent")
        return t.lb, t.ub - t.lb

    Get_extent_c = Get_extent

    def Get_true_extent(self) -> tuple[int, int]:
        """Return the true lower bound and extent of a datatype."""
        t = self._check("Get_true_extent")
        return t.tlb, t.tub - t.tlb

    Get_true_extent_c = Get_true_extent

    @property
    def extent(self) -> int:
        """Extent."""
        t = self._check("extent")
        return t.ub - t.lb

    @property
    def lb(self) -> int:
        """Lower bound."""
        return self._check("lb").lb

    @property
    def ub(self) -> int:
        """Upper bound."""
        return self._check("ub").ub

    @property
    def true_extent(self) -> int:
        """True extent."""
        t = self._check("true_extent")
        return t.tub - t.tlb

    @property
    def true_lb(self) -> int:
        """True lower bound."""
        return self._check("true_lb").tlb

    @property
    def true_ub(self) -> int:
        """True upper bound."""
        return self._check("true_ub").tub

    # -- names --
    def Get_name(self) -> str:
        """Get the print name for this datatype."""
        if self._t is None:
            return "MPI_DATATYPE_NULL"
        return self._t.name

    def Set_name(self, name: str) -> None:
        """Set the print name for this datatype."""
        self._check("Set_name").name = str(name)

    @property
    def name(self) -> str:
        """Print name."""
        return self.Get_name()

    @name.setter
    def name(self, value: str) -> None:
        self.Set_name(value)

    # -- type codes --
    @property
    def typechar(self) -> str:
        """Character code."""
        t = self._t
        if t is None:
            return ""
        c = _char(t)
        return c if c is not None else "V"

    @property
    def typestr(self) -> str:
        """Type string."""
        t = self._t
        if t is None:
            return ""
        s = _str(t)
        return s if s is not None else f"V{t.ub - t.lb}"

    def tocode(self) -> str:
        """Get character code or type string from predefined MPI datatype."""
        c = typecode(self)
        if c is None:
            raise ValueError("cannot map to character code or type string")
        return c

    @classmethod
    def fromcode(cls, code: str) -> Datatype:
        """Get predefined MPI datatype from character code or type string."""
        try:
            return TYPEDICT[code]
        except (KeyError, TypeError):
            raise ValueError(f"cannot map code {code!r} to MPI datatype") from None

    # -- envelope and contents --
    @property
    def is_named(self) -> bool:
        """Is a named datatype."""
        return self._check("is_named").named

    @property
    def is_predefined(self) -> bool:
        """Is a predefined datatype."""
        t = self._t
        return t is None or t.predef

    def Get_envelope(self) -> tuple[int, int, int, int, int]:
        """Return (num_integers, num_addresses, num_large_counts, num_datatypes, combiner)."""
        t = self._check("Get_envelope")
        return len(t.ints), len(t.addrs), 0, len(t.types), t.comb

    Get_envelope_c = Get_envelope

    @property
    def envelope(self) -> tuple[int, int, int, int, int]:
        """Envelope."""
        return self.Get_envelope()

    @property
    def combiner(self) -> int:
        """Combiner."""
        return self._check("combiner").comb

    def Get_contents(self) -> tuple[list[int], list[int], list[int], list[Datatype]]:
        """Return (integers, addresses, large counts, datatypes) used to create the type;
        the datatypes are new handles (free the derived ones)."""
        t = self._check("Get_contents")
        if t.comb == C.COMBINER_NAMED:
            raise _err("Datatype.Get_contents: a named datatype has no contents")
        return list(t.ints), list(t.addrs), [], [_handle_of(c) for c in t.types]

    Get_contents_c = Get_contents

    @property
    def contents(self) -> tuple[list[int], list[int], list[int], list[Datatype]]:
        """Contents."""
        return self.Get_contents()

    def decode(self) -> tuple[Datatype, str, dict]:
        """Convenience method for decoding a datatype: (base type, combiner name, params)."""
        t = self._check("decode")
        if t.comb == C.COMBINER_NAMED:
            return self, "NAMED", {}
        params = dict(t.params)
        types = [_handle_of(c) for c in t.types]
        if t.comb == C.COMBINER_STRUCT:
            params["datatypes"] = types
            base = Datatype()
        elif len(types) == 1:
            base = types[0]
        else:
            base = Datatype()
        return base, _COMBINER_NAMES[t.comb], params

    # -- commit and free --
    def Commit(self) -> Datatype:
        """Commit the datatype."""
        self._check("Commit").committed = True
        return self

    def Free(self) -> None:
        """Free the datatype (this handle becomes DATATYPE_NULL)."""
        t = self._check("Free")
        if t.predef:
            raise _err(f"Datatype.Free: {t.name or 'a predefined datatype'} is predefined and "
                       f"cannot be freed", _ERR_TYPE)
        try:
            if t.attrs:  # the delete callbacks run on the live handle (mpi4py's order)
                t.attrs.clear(self, "Datatype.Free")
        finally:
            self._t = None

    def free(self) -> None:
        """Call Free if not null or predefined; a predefined constant stays as it is,
        another handle onto it (``Datatype(INT)``) becomes null."""
        t = self._t
        if t is not None and not (t.predef and _CANON.get(id(t)) is self):
            self._t = None

    # -- constructors --
    def Dup(self) -> Datatype:
        """Duplicate a datatype."""
        old = self._check("Dup")
        t = _derived(C.COMBINER_DUP, [], [], [old], {})
        _bounds(t, [(0, (), old)])
        t.committed = old.committed
        if old.attrs:
            t.attrs = _attr.Attributes("datatype")
            old.attrs.copy_into(self, t.attrs, "Datatype.Dup")
        return _new(t)

    Create_dup = Dup

    def Create_contiguous(self, count: int) -> Datatype:
        """Create a contiguous datatype."""
        old = self._check("Create_contiguous")
        count = _nonneg(count, "Create_contiguous", "count")
        if C.VERSION < 4 and count > _INT_MAX:
            return _big_contiguous(self, old, count)
        t = _derived(C.COMBINER_CONTIGUOUS, [count], [], [old], {"count": count})
        _bounds(t, [(0, ((count, _ext(old)),), old)])
        return _new(t)

    def Create_vector(self, count: int, blocklength: int, stride: int) -> Datatype:
        """Create a vector (strided) datatype (stride in extents of the old type)."""
        old = self._check("Create_vector")
        count = _nonneg(count, "Create_vector", "count")
        blocklength = _nonneg(blocklength, "Create_vector", "blocklength")
        stride = _int(stride, "Create_vector", "stride")
        e = _ext(old)
        t = _derived(C.COMBINER_VECTOR, [count, blocklength, stride], [], [old],
                     {"count": count, "blocklength": blocklength, "stride": stride})
        _bounds(t, [(0, ((count, stride * e), (blocklength, e)), old)])
        return _new(t)

    def Create_hvector(self, count: int, blocklength: int, stride: int) -> Datatype:
        """Create a vector (strided) datatype with the stride in bytes."""
        old = self._check("Create_hvector")
        count = _nonneg(count, "Create_hvector", "count")
        blocklength = _nonneg(blocklength, "Create_hvector", "blocklength")
        stride = _int(stride, "Create_hvector", "stride")
        t = _derived(C.COMBINER_HVECTOR, [count, blocklength], [stride], [old],
                     {"count": count, "blocklength": blocklength, "stride": stride})
        _bounds(t, [(0, ((count, stride), (blocklength, _ext(old))), old)])
        return _new(t)

    def Create_indexed(self, blocklengths: Sequence[int],
                       displacements: Sequence[int]) -> Datatype:
        """Create an indexed datatype (displacements in extents of the old type)."""
        old = self._check("Create_indexed")
        bl, dp = _pairs(blocklengths, displacements, "Create_indexed")
        e = _ext(old)
        t = _derived(C.COMBINER_INDEXED, [len(bl)] + bl + dp, [], [old],
                     {"blocklengths": bl, "displacements": dp})
        _bounds(t, _indexed_blocks(bl, [d * e for d in dp], old))
        return _new(t)

    def Create_hindexed(self, blocklengths: Sequence[int],
                        displacements: Sequence[int]) -> Datatype:
        """Create an indexed datatype with displacements in bytes."""
        old = self._check("Create_hindexed")
        bl, dp = _pairs(blocklengths, displacements, "Create_hindexed")
        t = _derived(C.COMBINER_HINDEXED, [len(bl)] + bl, dp, [old],
                     {"blocklengths": bl, "displacements": dp})
        _bounds(t, _indexed_blocks(bl, dp, old))
        return _new(t)

    def Create_indexed_block(self, blocklength: int, displacements: Sequence[int]) -> Datatype:
        """Create an indexed datatype with constant-sized blocks."""
        old = self._check("Create_indexed_block")
        blocklength = _nonneg(blocklength, "Create_indexed_block", "blocklength")
        dp = _ints(displacements, "Create_indexed_block", "displacements")
        e = _ext(old)
        t = _derived(C.COMBINER_INDEXED_BLOCK, [len(dp), blocklength] + dp, [], [old],
                     {"blocklength": blocklength, "displacements": dp})
        _bounds(t, _indexed_blocks([blocklength] * len(dp), [d * e for d in dp], old))
        return _new(t)

    def Create_hindexed_block(self, blocklength: int, displacements: Sequence[int]) -> Datatype:
        """Create an indexed datatype with constant-sized blocks, displacements in bytes."""
        old = self._check("Create_hindexed_block")
        blocklength = _nonneg(blocklength, "Create_hindexed_block", "blocklength")
        dp = _ints(displacements, "Create_hindexed_block", "displacements")
        t = _derived(C.COMBINER_HINDEXED_BLOCK, [len(dp), blocklength], dp, [old],
                     {"blocklength": blocklength, "displacements": dp})
        _bounds(t, _indexed_blocks([blocklength] * len(dp), dp, old))
        return _new(t)

    @classmethod
    def Create_struct(cls, blocklengths: Sequence[int], displacements: Sequence[int],
                      datatypes: Sequence[Datatype]) -> Datatype:
        """Create a general composite (struct) datatype (displacements in bytes)."""
        bl, dp = _pairs(blocklengths, displacements, "Create_struct")
        types = list(datatypes)
        if len(types) != len(bl):
            raise ValueError(f"Create_struct: {len(bl)} blocklengths but {len(types)} datatypes")
        olds = []
        for d in types:
            if not isinstance(d, Datatype):
                raise TypeError(f"Create_struct: expected Datatype, got {type(d).__name__}")
            olds.append(d._check("Create_struct"))
        t = _derived(C.COMBINER_STRUCT, [len(bl)] + bl, dp, olds,
                     {"blocklengths": bl, "displacements": dp})
        _bounds(t, [(d, ((b, _ext(o)),), o) for b, d, o in zip(bl, dp, olds)])
        # as C structs (and Open MPI): the extent is padded to the largest alignment
        align = max([o.align for b, o in zip(bl, olds) if b > 0] or [1])
        t.align = align
        ext = t.ub - t.lb
        if align > 1 and ext % align:
            t.ub += align - ext % align
            t.dense = False
        return _new(t)

    def Create_subarray(self, sizes: Sequence[int], subsizes: Sequence[int], starts: Sequence[int],
                        order: int = C.ORDER_C) -> Datatype:
        """Create a datatype for a subarray of a multidimensional array."""
        old = self._check("Create_subarray")
        what = "Create_subarray"
        sizes = _ints(sizes, what, "sizes")
        subsizes = _ints(subsizes, what, "subsizes")
        starts = _ints(starts, what, "starts")
        n = len(sizes)
        if n < 1 or len(subsizes) != n or len(starts) != n:
            raise _err(f"{what}: sizes, subsizes and starts need one entry per dimension "
                       f"(got {len(sizes)}, {len(subsizes)}, {len(starts)})")
        for k in range(n):
            if sizes[k] < 1 or subsizes[k] < 1 or starts[k] < 0 or \
                    starts[k] + subsizes[k] > sizes[k]:
                raise _err(f"{what}: dimension {k}: need 1 <= subsize ({subsizes[k]}) and "
                           f"0 <= start ({starts[k]}) with start + subsize <= size ({sizes[k]})")
        order = _order(order, what)
        e = _ext(old)
        strides = _strides(sizes, order, e)
        disp = sum(s * st for s, st in zip(starts, strides))
        dims = [(subsizes[k], strides[k]) for k in range(n)]
        if order == C.ORDER_F:
            dims.reverse()
        inner = _T()
        _bounds(inner, [(disp, tuple(dims), old)])
        t = _derived(C.COMBINER_SUBARRAY, [n] + sizes + subsizes + starts + [order], [], [old],
                     {"sizes": sizes, "subsizes": subsizes, "starts": starts, "order": order})
        _resized_bounds(t, inner, old.lb, int(np.prod(sizes)) * e)
        return _new(t)

    def Create_darray(self, size: int, rank: int, gsizes: Sequence[int], distribs: Sequence[int],
                      dargs: Sequence[int], psizes: Sequence[int],
                      order: int = C.ORDER_C) -> Datatype:
        """Create a datatype for a distributed array on a block-cyclic process grid."""
        old = self._check("Create_darray")
        what = "Create_darray"
        gsizes = _ints(gsizes, what, "gsizes")
        distribs = _ints(distribs, what, "distribs")
        dargs = _ints(dargs, what, "dargs")
        psizes = _ints(psizes, what, "psizes")
        n = len(gsizes)
        if not (len(distribs) == len(dargs) == len(psizes) == n) or n < 1:
            raise _err(f"{what}: gsizes, distribs, dargs and psizes need one entry per "
                       f"dimension")
        if int(np.prod(psizes)) != size or not 0 <= rank < size:
            raise _err(f"{what}: the process grid {psizes} must have size {size} and rank "
                       f"{rank} be in it")
        order = _order(order, what)
        coords, r = [], rank
        for p in reversed(psizes):       # the process grid is row-major (MPI)
            coords.append(r % p)
            r //= p
        coords.reverse()
        e = _ext(old)
        strides = _strides(gsizes, order, e)
        dims = []
        for k in range(n):
            idx = _owned(gsizes[k], distribs[k], dargs[k], psizes[k], coords[k], what, k)
            dims.append(idx.astype(np.int64) * strides[k])
        if order == C.ORDER_F:
            dims.reverse()
        inner = _T()
        _bounds(inner, [(0, tuple(dims), old)])
        t = _derived(C.COMBINER_DARRAY,
                     [size, rank, n] + gsizes + distribs + dargs + psizes + [order], [], [old],
                     {"size": size, "rank": rank, "gsizes": gsizes, "distribs": distribs,
                      "dargs": dargs, "psizes": psizes, "order": order})
        _resized_bounds(t, inner, old.lb, int(np.prod(gsizes)) * e)
        return _new(t)

    def Create_resized(self, lb: int, extent: int) -> Datatype:
        """Create a datatype with a new lower bound and extent."""
        old = self._check("Create_resized")
        lb = _int(lb, "Create_resized", "lb")
        extent = _int(extent, "Create_resized", "extent")
        t = _derived(C.COMBINER_RESIZED, [], [lb, extent], [old], {"lb": lb, "extent": extent})
        _resized_bounds(t, old, lb, extent)
        return _new(t)

    Resized = Create_resized

    @classmethod
    def Create_f90_integer(cls, r: int) -> Datatype:
        """Return a bounded integer datatype of at least ``r`` decimal digits."""
        r = _int(r, "Create_f90_integer", "r")
        for size, digits in ((1, 2), (2, 4), (4, 9), (8, 18)):
            if r <= digits:
                return _new(_f90(C.COMBINER_F90_INTEGER, [r], {"r": r}, f"i{size}"))
        raise _err(f"Create_f90_integer: no integer type has {r} decimal digits (at most 18)")

    @classmethod
    def Create_f90_real(cls, p: int, r: int) -> Datatype:
        """Return a bounded real datatype of precision ``p`` and exponent range ``r``."""
        p = _int(p, "Create_f90_real", "p")
        r = _int(r, "Create_f90_real", "r")
        size = _f90_real_size(p, r, "Create_f90_real")
        return _new(_f90(C.COMBINER_F90_REAL, [p, r], {"p": p, "r": r}, f"f{size}"))

    @classmethod
    def Create_f90_complex(cls, p: int, r: int) -> Datatype:
        """Return a bounded complex datatype of precision ``p`` and exponent range ``r``."""
        p = _int(p, "Create_f90_complex", "p")
        r = _int(r, "Create_f90_complex", "r")
        size = _f90_real_size(p, r, "Create_f90_complex")
        return _new(_f90(C.COMBINER_F90_COMPLEX, [p, r], {"p": p, "r": r}, f"c{2 * size}"))

    @classmethod
    def Match_size(cls, typeclass: int, size: int) -> Datatype:
        """Find a datatype matching a specified size in bytes."""
        kind = {C.TYPECLASS_INTEGER: "INTEGER", C.TYPECLASS_REAL: "REAL",
                C.TYPECLASS_COMPLEX: "COMPLEX", C.TYPECLASS_LOGICAL: "LOGICAL"}.get(typeclass)
        if kind is None:
            raise _err(f"Match_size: invalid typeclass {typeclass!r} (use MPI.TYPECLASS_*)")
        d = DATATYPES.get(f"{kind}{size}")
        if d is None or d._t is None:
            raise _err(f"Match_size: no {kind} type of {size} bytes")
        return d

    @classmethod
    def Get_value_index(cls, value: Datatype, index: Datatype) -> Datatype:
        """Return a predefined (value, index) pair datatype, or DATATYPE_NULL."""
        for d in (value, index):
            if not isinstance(d, Datatype) or d._t is None:
                raise _err("Get_value_index: the value and index types must not be "
                           "DATATYPE_NULL", _ERR_TYPE)
        if index._t is not DATATYPES["INT"]._t:
            return DATATYPE_NULL
        for v, pair in _PAIRS.items():
            if DATATYPES[v]._t is value._t:
                return DATATYPES[pair]
        return DATATYPE_NULL

    # -- packing --
    def Pack_size(self, count: int, comm: Comm | None = None) -> int:
        """Return an upper bound of the bytes needed to pack ``count`` items."""
        t = self._check("Pack_size")
        return _nonneg(count, "Pack_size", "count") * t.size

    Pack_size_c = Pack_size

    def Pack_external_size(self, datarep: str, count: int) -> int:
        """Return the bytes needed to pack ``count`` items in ``datarep`` (external32)."""
        _datarep(datarep, "Pack_external_size")
        t = self._check("Pack_external_size")
        return _nonneg(count, "Pack_external_size", "count") * t.size

    Pack_external_size_c = Pack_external_size

    def Pack(self, inbuf: BufSpec, outbuf: BufSpec, position: int,
             comm: Comm | None = None) -> int:
        """Pack into contiguous memory according to datatype; returns the new position."""
        return _pack_api(self, inbuf, outbuf, position, False, "Pack")

    Pack_c = Pack

    def Unpack(self, inbuf: BufSpec, position: int, outbuf: BufSpec,
               comm: Comm | None = None) -> int:
        """Unpack from contiguous memory according to datatype; returns the new position."""
        return _unpack_api(self, inbuf, position, outbuf, False, "Unpack")

    Unpack_c = Unpack

    def Pack_external(self, datarep: str, inbuf: BufSpec, outbuf: BufSpec, position: int) -> int:
        """Pack into contiguous memory in the portable representation external32."""
        _datarep(datarep, "Pack_external")
        return _pack_api(self, inbuf, outbuf, position, True, "Pack_external")

    Pack_external_c = Pack_external

    def Unpack_external(self, datarep: str, inbuf: BufSpec, position: int,
                        outbuf: BufSpec) -> int:
        """Unpack from contiguous memory in the portable representation external32."""
        _datarep(datarep, "Unpack_external")
        return _unpack_api(self, inbuf, position, outbuf, True, "Unpack_external")

    Unpack_external_c = Unpack_external


_INT_MAX = (1 << 31) - 1

_COMBINER_NAMES = {
    C.COMBINER_NAMED: "NAMED", C.COMBINER_DUP: "DUP", C.COMBINER_CONTIGUOUS: "CONTIGUOUS",
    C.COMBINER_VECTOR: "VECTOR", C.COMBINER_HVECTOR: "HVECTOR", C.COMBINER_INDEXED: "INDEXED",
    C.COMBINER_HINDEXED: "HINDEXED", C.COMBINER_INDEXED_BLOCK: "INDEXED_BLOCK",
    C.COMBINER_HINDEXED_BLOCK: "HINDEXED_BLOCK", C.COMBINER_STRUCT: "STRUCT",
    C.COMBINER_SUBARRAY: "SUBARRAY", C.COMBINER_DARRAY: "DARRAY",
    C.COMBINER_RESIZED: "RESIZED", C.COMBINER_F90_INTEGER: "F90_INTEGER",
    C.COMBINER_F90_REAL: "F90_REAL", C.COMBINER_F90_COMPLEX: "F90_COMPLEX",
}


def _recreate(base: Datatype, combiner: str, params: dict) -> Datatype:
    """Unpickle a derived datatype: build it again from its decoded form, committed."""
    factory = getattr(base, f"Create_{combiner.lower()}")
    return factory(**params).Commit()


def _new(t: _T) -> Datatype:
    d = object.__new__(Datatype)
    d._t = t
    return d


def _handle_of(t: _T) -> Datatype:
    """A handle for a type met in contents: the canonical one for predefined types."""
    if t.named:
        return _CANON[id(t)]
    return _new(t)


def _derived(comb, ints, addrs, types, params) -> _T:
    t = _T()
    t.comb = comb
    t.ints, t.addrs, t.types, t.params = list(ints), list(addrs), list(types), params
    return t


def _resized_bounds(t: _T, inner: _T, lb: int, extent: int) -> None:
    _bounds(t, [(0, (), inner)])
    t.lb, t.ub = lb, lb + extent
    t.dense = inner.dense and lb == 0 and extent == inner.size and inner.tlb == 0


def _ext(t: _T) -> int:
    return t.ub - t.lb


def _indexed_blocks(bl, dp, old):
    e = _ext(old)
    return [(d, ((b, e),), old) for b, d in zip(bl, dp)]


def _int(x, what: str, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        try:
            return int(x.__index__())
        except AttributeError:
            raise TypeError(f"{what}: {name} must be an int, got {x!r}") from None
    return int(x)


def _nonneg(x, what: str, name: str) -> int:
    v = _int(x, what, name)
    if v < 0:
        raise _err(f"{what}: {name} must be >= 0, got {v}", _errcodes.ERR_COUNT
                   if name == "count" else _ERR_ARG)
    return v


def _ints(xs, what: str, name: str) -> list[int]:
    if isinstance(xs, (int, np.integer)):
        return [int(xs)]
    try:
        return [_int(v, what, name) for v in xs]
    except TypeError:
        raise TypeError(f"{what}: {name} must be a sequence of ints, got {xs!r}") from None


def _pairs(blocklengths, displacements, what):
    dp = _ints(displacements, what, "displacements")
    if isinstance(blocklengths, (int, np.integer)):
        bl = [int(blocklengths)] * len(dp)
    else:
        bl = _ints(blocklengths, what, "blocklengths")
    if len(bl) != len(dp):
        raise ValueError(f"{what}: {len(bl)} blocklengths but {len(dp)} displacements")
    if any(b < 0 for b in bl):
        raise _err(f"{what}: negative blocklength in {bl}")
    return bl, dp


def _order(order, what):
    if order not in (C.ORDER_C, C.ORDER_F):
        raise _err(f"{what}: order must be MPI.ORDER_C or MPI.ORDER_FORTRAN, got {order!r}")
    return order


def _strides(sizes, order, e):
    n = len(sizes)
    strides = [0] * n
    acc = e
    rng = range(n - 1, -1, -1) if order == C.ORDER_C else range(n)
    for k in rng:
        strides[k] = acc
        acc *= sizes[k]
    return strides


def _owned(g, dist, darg, p, c, what, k) -> np.ndarray:
    """Global indices of dimension k owned by grid coordinate c."""
    if dist == C.DISTRIBUTE_NONE:
        return np.arange(g)
    if dist == C.DISTRIBUTE_BLOCK:
        b = -(-g // p) if darg == C.DISTRIBUTE_DFLT_DARG else darg
        if b * p < g:
            raise _err(f"{what}: dimension {k}: block size {b} x {p} processes < {g}")
        return np.arange(c * b, min((c + 1) * b, g))
    if dist == C.DISTRIBUTE_CYCLIC:
        b = 1 if darg == C.DISTRIBUTE_DFLT_DARG else darg
        if b < 1:
            raise _err(f"{what}: dimension {k}: invalid cyclic block size {darg}")
        i = np.arange(g)
        return i[(i // b) % p == c]
    raise _err(f"{what}: dimension {k}: invalid distribution {dist!r}")


def _f90_real_size(p, r, what):
    if p <= 6 and r <= 37:
        return 4
    if p <= 15 and r <= 307:
        return 8
    if p <= 18 and r <= 4931:
        return 16
    raise _err(f"{what}: no real type has precision {p} and range {r}")


def _f90(comb, ints, params, code) -> _T:
    t = _leaf("", code, code)
    t.comb = comb
    t.ints, t.params = ints, params
    t.named = False
    t.predef = True
    t.committed = True
    return t


def _big_contiguous(handle: Datatype, old: _T, count: int) -> Datatype:
    """MPI < 4 has int counts only: a contiguous type beyond INT_MAX is built, as
    mpi4py does on such libraries, as a struct of a vector and a contiguous rest."""
    q, r = divmod(count, _INT_MAX)
    qtype = handle.Create_vector(q, _INT_MAX, _INT_MAX)
    rtype = handle.Create_contiguous(r)
    e = _ext(old)
    return Datatype.Create_struct([1, 1], [0, q * _INT_MAX * e], [qtype, rtype])


def _datarep(datarep, what):
    if datarep != "external32":
        raise _err(f"{what}: unsupported data representation {datarep!r} (driller has "
                   f"'external32')")


# ---------------------------------------------------------------- type codes

def _char(t: _T):
    if t.char is not None:
        return t.char
    if t.comb == C.COMBINER_DUP:
        return _char(t.types[0])
    return None


def _str(t: _T):
    if t.tstr is not None:
        return t.tstr
    if t.comb == C.COMBINER_DUP:
        return _str(t.types[0])
    return None


def _code(t: _T):
    if t.code is not None:
        return t.code
    if t.comb == C.COMBINER_DUP:
        return _code(t.types[0])
    return None


def typecode(datatype: Datatype):
    """The character code or type string of a datatype (None if it has none):
    mpi4py's ``MPI._typecode``."""
    t = datatype._t
    return None if t is None else _code(t)


def typealign(datatype: Datatype):
    """The alignment of a datatype's elements (None if unknown): ``MPI._typealign``."""
    t = datatype._t
    if t is None:
        return None
    while t.comb == C.COMBINER_DUP:
        t = t.types[0]
    if t.blocks is not None:
        return None
    return t.align or None


# ---------------------------------------------------------------- predefined types

_CANON = {}      # id(_T) -> the canonical Datatype handle of a predefined type


def _leaf(name: str, npcode: str, tstr: str, char: str | None = None,
          code: str | None = None) -> _T:
    t = _T()
    d = np.dtype(npcode)
    t.name = name
    t.npd = d
    t.size = d.itemsize
    t.lb, t.ub, t.tlb, t.tub = 0, d.itemsize, 0, d.itemsize
    t.char = char if char is not None else d.char
    t.tstr = tstr
    t.code = code if code is not None else tstr
    t.align = d.alignment
    basic = d
    if d.kind in "SUV":
        basic = np.dtype(f"u{1 if d.kind == 'S' else 4}") if d.kind != "V" else np.dtype("u1")
    t._el = (np.zeros(1, np.int64), np.array([_basic(basic)], np.int16))
    t.dense = True
    t.predef = t.named = t.committed = True
    return t


def _pair(name: str, vcode: str) -> _T:
    d = np.dtype([("v", vcode), ("i", "i4")], align=True)
    v = np.dtype(vcode)
    t = _T()
    t.name = name
    t.npd = d
    t.size = v.itemsize + 4
    t.lb, t.ub = 0, d.itemsize
    t.tlb, t.tub = 0, d.fields["i"][1] + 4
    t.char = "V"
    t.tstr = f"V{d.itemsize}"
    t.align = d.alignment
    t._el = (np.array([0, d.fields["i"][1]], np.int64),
             np.array([_basic(v), _basic("i4")], np.int16))
    t.dense = t.size == d.itemsize
    t.predef = t.named = t.committed = True
    return t


_LONG_DOUBLE = np.dtype("g").itemsize
_P = {}


def _def(attrs, t: _T | None):
    if isinstance(attrs, str):
        attrs = [attrs]
    if t is None:
        d = Datatype()
    else:
        t.attr = attrs[0]
        d = _new(t)
        _CANON[id(t)] = d
    for a in attrs:
        _P[a] = d


_def("DATATYPE_NULL", None)
# C
_def("CHAR", _leaf("MPI_CHAR", "S1", "S1", "c", "c"))
_def("WCHAR", _leaf("MPI_WCHAR", "U1", "U1", "U", "U"))
_def(["SIGNED_CHAR"], _leaf("MPI_SIGNED_CHAR", "b", "i1", "b", "b"))
_def(["SHORT", "SIGNED_SHORT"], _leaf("MPI_SHORT", "h", "i2", "h", "h"))
_def(["INT", "SIGNED_INT"], _leaf("MPI_INT", "i", "i4", "i", "i"))
_def(["LONG", "SIGNED_LONG"], _leaf("MPI_LONG", "l", "i8", "l", "l"))
_def(["LONG_LONG", "SIGNED_LONG_LONG"], _leaf("MPI_LONG_LONG_INT", "q", "i8", "q", "q"))
_def("UNSIGNED_CHAR", _leaf("MPI_UNSIGNED_CHAR", "B", "u1", "B", "B"))
_def("UNSIGNED_SHORT", _leaf("MPI_UNSIGNED_SHORT", "H", "u2", "H", "H"))
_def(["UNSIGNED", "UNSIGNED_INT"], _leaf("MPI_UNSIGNED", "I", "u4", "I", "I"))
_def("UNSIGNED_LONG", _leaf("MPI_UNSIGNED_LONG", "L", "u8", "L", "L"))
_def("UNSIGNED_LONG_LONG", _leaf("MPI_UNSIGNED_LONG_LONG", "Q", "u8", "Q", "Q"))
_def(["FLOAT", "FLOAT32_T"], _leaf("MPI_FLOAT", "f", "f4", "f", "f"))
_def(["DOUBLE", "FLOAT64_T"], _leaf("MPI_DOUBLE", "d", "f8", "d", "d"))
_def("LONG_DOUBLE", _leaf("MPI_LONG_DOUBLE", "g", f"f{_LONG_DOUBLE}", "g", "g"))
# C99
_def(["C_BOOL", "BOOL"], _leaf("MPI_C_BOOL", "?", "b1", "?", "b1"))
for _n, _c in (("INT8_T", "i1"), ("INT16_T", "i2"), ("INT32_T", "i4"), ("INT64_T", "i8"),
               ("UINT8_T", "u1"), ("UINT16_T", "u2"), ("UINT32_T", "u4"), ("UINT64_T", "u8")):
    _def([_n, "S" + _n] if _n[0] == "I" else _n, _leaf("MPI_" + _n, _c, _c, np.dtype(_c).char, _c))
_def("FLOAT16_T", _leaf("MPIX_C_FLOAT16", "e", "f2", "e", "e"))
_def("BFLOAT16_T", None)          # numpy has no bfloat16
_def(["C_COMPLEX", "C_FLOAT_COMPLEX"], _leaf("MPI_C_COMPLEX", "F", "c8", "F", "F"))
_def("C_DOUBLE_COMPLEX", _leaf("MPI_C_DOUBLE_COMPLEX", "D", "c16", "D", "D"))
_def("C_LONG_DOUBLE_COMPLEX", _leaf("MPI_C_LONG_DOUBLE_COMPLEX", "G", f"c{2 * _LONG_DOUBLE}",
                                    "G", "G"))
# C++
_def("CXX_BOOL", _leaf("MPI_CXX_BOOL", "?", "b1", "?", "?"))
_def("CXX_FLOAT_COMPLEX", _leaf("MPI_CXX_FLOAT_COMPLEX", "F", "c8", "F", "F"))
_def("CXX_DOUBLE_COMPLEX", _leaf("MPI_CXX_DOUBLE_COMPLEX", "D", "c16", "D", "D"))
_def("CXX_LONG_DOUBLE_COMPLEX", _leaf("MPI_CXX_LONG_DOUBLE_COMPLEX", "G",
                                      f"c{2 * _LONG_DOUBLE}", "G", "G"))
# Fortran 77 (default KINDs of gfortran: 4-byte INTEGER, LOGICAL and REAL)
_def("CHARACTER", _leaf("MPI_CHARACTER", "S1", "S1", "c", "c"))
_def(["LOGICAL", "F_BOOL"], _leaf("MPI_LOGICAL", "i4", "i4", "i", "i"))
_def(["INTEGER", "F_INT"], _leaf("MPI_INTEGER", "i4", "i4", "i", "i"))
_def(["REAL", "F_FLOAT"], _leaf("MPI_REAL", "f4", "f4", "f", "f"))
_def(["DOUBLE_PRECISION", "F_DOUBLE"], _leaf("MPI_DOUBLE_PRECISION", "f8", "f8", "d", "d"))
_def(["COMPLEX", "F_COMPLEX", "F_FLOAT_COMPLEX"], _leaf("MPI_COMPLEX", "c8", "c8", "F", "F"))
_def(["DOUBLE_COMPLEX", "F_DOUBLE_COMPLEX"],
     _leaf("MPI_DOUBLE_COMPLEX", "c16", "c16", "D", "D"))
# Fortran 90 sized types (numpy has no 16-byte integers, no half-precision complex)
for _n, _c, _ch in (("LOGICAL1", "b1", "?"), ("LOGICAL2", "i2", "h"), ("LOGICAL4", "i4", "i"),
                    ("LOGICAL8", "i8", "l"), ("INTEGER1", "i1", "b"), ("INTEGER2", "i2", "h"),
                    ("INTEGER4", "i4", "i"), ("INTEGER8", "i8", "l"), ("REAL4", "f4", "f"),
                    ("REAL8", "f8", "d"), ("COMPLEX8", "c8", "F"), ("COMPLEX16", "c16", "D")):
    _def(_n, _leaf("MPI_" + _n, "?" if _c == "b1" else _c, _c, _ch, _c))
_def("REAL16", _leaf("MPI_REAL16", "g", f"f{_LONG_DOUBLE}", "g", f"f{_LONG_DOUBLE}"))
_def("COMPLEX32", _leaf("MPI_COMPLEX32", "G", f"c{2 * _LONG_DOUBLE}", "G",
                        f"c{2 * _LONG_DOUBLE}"))
for _n in ("LOGICAL16", "INTEGER16", "REAL2", "COMPLEX4"):
    _def(_n, None)
# MPI
_def("PACKED", _leaf("MPI_PACKED", "u1", "u1", "B", "B"))
_def("BYTE", _leaf("MPI_BYTE", "u1", "u1", "B", "B"))
_def("AINT", _leaf("MPI_AINT", "i8", "i8", "p", "p"))
_def("OFFSET", _leaf("MPI_OFFSET", "i8", "i8", "p", "p"))
_def("COUNT", _leaf("MPI_COUNT", "i8", "i8", "p", "p"))
# (value, index) pairs, for MAXLOC/MINLOC
_def("SHORT_INT", _pair("MPI_SHORT_INT", "h"))
_def(["INT_INT", "TWOINT"], _pair("MPI_2INT", "i"))
_def("LONG_INT", _pair("MPI_LONG_INT", "l"))
_def("FLOAT_INT", _pair("MPI_FLOAT_INT", "f"))
_def("DOUBLE_INT", _pair("MPI_DOUBLE_INT", "d"))
_def("LONG_DOUBLE_INT", _pair("MPI_LONG_DOUBLE_INT", "g"))

_PAIRS = {"SHORT": "SHORT_INT", "INT": "INT_INT", "LONG": "LONG_INT", "FLOAT": "FLOAT_INT",
          "DOUBLE": "DOUBLE_INT", "LONG_DOUBLE": "LONG_DOUBLE_INT"}

DATATYPES: dict[str, Datatype] = {k: v for k, v in _P.items() if k != "DATATYPE_NULL"}
DATATYPE_NULL: Datatype = _P["DATATYPE_NULL"]
BYTE: Datatype = _P["BYTE"]
# each predefined datatype is a module global too: that is how it pickles (by name)
globals().update(_P)
del _n, _c, _ch

# mpi4py's code -> datatype tables (Datatype.fromcode, MPI._typedict*)
TYPEDICT: dict[str, Datatype] = {c: DATATYPES[n] for c, n in {
    "?": "C_BOOL", "b": "SIGNED_CHAR", "h": "SHORT", "i": "INT", "l": "LONG", "q": "LONG_LONG",
    "B": "UNSIGNED_CHAR", "H": "UNSIGNED_SHORT", "I": "UNSIGNED", "L": "UNSIGNED_LONG",
    "Q": "UNSIGNED_LONG_LONG", "e": "FLOAT16_T", "f": "FLOAT", "d": "DOUBLE",
    "g": "LONG_DOUBLE", "Zf": "C_COMPLEX", "Zd": "C_DOUBLE_COMPLEX", "F": "C_COMPLEX",
    "D": "C_DOUBLE_COMPLEX", "Zg": "C_LONG_DOUBLE_COMPLEX", "G": "C_LONG_DOUBLE_COMPLEX",
    "i1": "INT8_T", "i2": "INT16_T", "i4": "INT32_T", "i8": "INT64_T", "f4": "FLOAT",
    "f8": "DOUBLE", f"f{_LONG_DOUBLE}": "LONG_DOUBLE", "c8": "C_COMPLEX",
    "c16": "C_DOUBLE_COMPLEX", f"c{2 * _LONG_DOUBLE}": "C_LONG_DOUBLE_COMPLEX",
    "b1": "C_BOOL", "u1": "UINT8_T", "u2": "UINT16_T", "u4": "UINT32_T", "u8": "UINT64_T",
    "f2": "FLOAT16_T", "n": "COUNT", "N": "UNSIGNED_LONG", "p": "AINT", "P": "UNSIGNED_LONG",
    "c": "CHAR", "a": "CHAR", "S": "CHAR", "S1": "CHAR", "s": "CHAR", "1s": "CHAR",
    "U": "WCHAR", "U1": "WCHAR", "u": "UINT16_T", "1u": "UINT16_T", "w": "WCHAR",
    "1w": "WCHAR", "M": "INT64_T", "M8": "INT64_T", "m": "INT64_T", "m8": "INT64_T",
}.items()}
TYPEDICT_C: dict[str, Datatype] = {c: TYPEDICT[c] for c in (
    "?", "b", "h", "i", "l", "q", "B", "H", "I", "L", "Q", "f", "d", "g", "F", "D", "G", "b1",
    "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "c8", "f8", "c16",
    f"f{_LONG_DOUBLE}", f"c{2 * _LONG_DOUBLE}")}
TYPEDICT_F: dict[str, Datatype] = {c: DATATYPES[n] for c, n in {
    "l": "LOGICAL", "i": "INTEGER", "r": "REAL", "s": "REAL", "d": "DOUBLE_PRECISION",
    "c": "COMPLEX", "z": "DOUBLE_COMPLEX", "l1": "LOGICAL1", "l2": "LOGICAL2",
    "l4": "LOGICAL4", "l8": "LOGICAL8", "i1": "INTEGER1", "i2": "INTEGER2", "i4": "INTEGER4",
    "i8": "INTEGER8", "r4": "REAL4", "r8": "REAL8", "r16": "REAL16", "c8": "COMPLEX8",
    "c16": "COMPLEX16", "c32": "COMPLEX32"}.items()}

# buffer format -> the datatype a buffer of that format is taken for
TYPECHARS: dict[str, Datatype] = {c: TYPEDICT[c] for c in "?bhilqBHILQefdgFDG"}
TYPECHARS.update({"c": DATATYPES["CHAR"], "w": DATATYPES["WCHAR"], "U": DATATYPES["WCHAR"],
                  "S": DATATYPES["CHAR"], "p": DATATYPES["AINT"], "n": DATATYPES["COUNT"],
                  "Zf": DATATYPES["C_COMPLEX"], "Zd": DATATYPES["C_DOUBLE_COMPLEX"],
                  "Zg": DATATYPES["C_LONG_DOUBLE_COMPLEX"]})


# ---------------------------------------------------------------- helpers for bufspec

def as_datatype(d) -> Datatype:
    """A Datatype from a Datatype or a typecode string ('d', 'i4', ...)."""
    if isinstance(d, Datatype):
        return d
    if isinstance(d, str):
        t = TYPEDICT.get(d)
        if t is not None:
            return t
        raise MmpiKeyError(f"invalid datatype {d!r} (cannot map it to an MPI datatype): use "
                           f"one of driller.MPI's datatypes (MPI.BYTE, MPI.INT, ...) or a "
                           f"typecode like 'd'", error_class=_ERR_TYPE)
    raise MmpiError(f"invalid datatype {d!r}: use one of driller.MPI's datatypes "
                    f"(MPI.BYTE, MPI.INT, MPI.DOUBLE, ...) or a typecode like 'd'",
                    error_class=_ERR_TYPE)


def is_datatype(x) -> bool:
    """True for a Datatype or a typecode string that names one."""
    return isinstance(x, Datatype) or (isinstance(x, str) and x in TYPEDICT)


def is_derived(dt: Datatype) -> bool:
    """True for a datatype whose bytes are not one contiguous run per element
    (derived types, pair types with padding): messages of it are gathered/scattered."""
    t = dt._t
    return t is not None and t.npd is None and not t.dense


def np_dtype(dt: Datatype) -> np.dtype:
    """The numpy dtype of a predefined datatype's elements."""
    t = dt._t
    if t is None:
        raise MmpiError("the datatype is DATATYPE_NULL", error_class=_ERR_TYPE)
    if t.npd is None:
        if t.dense and t.size:
            return np.dtype(f"V{t.size}")
        raise MmpiError(f"datatype {dt!r} is derived: it has no single numpy dtype",
                        error_class=_ERR_TYPE)
    return t.npd


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


def check_message_type(dt: Datatype, what: str) -> _T:
    """The type object of a datatype used in a message: not null, committed."""
    t = dt._t
    if t is None:
        raise MmpiError(f"{what}: the datatype is DATATYPE_NULL (freed, or never created)",
                        error_class=_ERR_TYPE)
    if not t.committed:
        raise MmpiError(f"{what}: the derived datatype is not committed; call "
                        f"datatype.Commit() before using it in a message",
                        error_class=_ERR_TYPE)
    return t


def message_runs(t: _T, count: int) -> _pack.Runs:
    """The byte runs of ``count`` items of type ``t`` (offsets from the buffer's
    start), cached for the last count used."""
    m = t._mruns
    if m is not None and m[0] == count:
        return m[1]
    if t.dense:
        n = count * t.size
        r = _pack.Runs(np.array([t.tlb], np.int64), np.array([n], np.int64)) if n else \
            _pack.Runs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    else:
        roff, rlen = t.runs()
        r = _pack.Runs(*_pack.tile_runs(roff, rlen, count, t.ub - t.lb))
    t._mruns = (count, r)
    return r


def _stream(t: _T, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Sizes and complex flags of the basic elements of ``count`` items, stream order."""
    _, codes = t.elements()
    sizes = _basic_sizes()[codes]
    halves = _basic_complex()[codes]
    if count != 1:
        sizes, halves = np.tile(sizes, count), np.tile(halves, count)
    return sizes, halves


def _check_runs(runs: _pack.Runs, nbytes: int, what: str, t: _T, count: int) -> None:
    if runs.total == 0:
        return
    lo, hi = runs.lo, runs.hi
    if lo < 0 or hi > nbytes:
        raise MmpiError(f"{what}: {count} item(s) of the datatype (size {t.size}, extent "
                        f"{t.ub - t.lb}, lb {t.lb}) reach bytes {lo}..{hi} of a {nbytes}-byte "
                        f"buffer; pass a larger buffer or a smaller count",
                        error_class=_errcodes.ERR_BUFFER)


def pack_into(src: np.ndarray, t: _T, count: int, out: np.ndarray, what: str,
              external: bool = False) -> None:
    """Gather ``count`` items of ``t`` from ``src`` (uint8, origin at index 0) into
    ``out`` (uint8, ``count * t.size`` bytes)."""
    runs = message_runs(t, count)
    _check_runs(runs, src.size, what, t, count)
    _pack.gather(src, runs, out)
    if external:
        _pack.swap_external(out, *_stream(t, count))


def unpack_from(packed: np.ndarray, t: _T, count: int, dst: np.ndarray, what: str,
                external: bool = False) -> None:
    """Scatter ``count`` items of ``t`` from ``packed`` into ``dst`` (uint8)."""
    runs = message_runs(t, count)
    _check_runs(runs, dst.size, what, t, count)
    if external:
        packed = packed.copy()
        _pack.swap_external(packed, *_stream(t, count))
    _pack.scatter(packed, runs, dst)


def count_of(dt: Datatype, nbytes: int) -> int:
    """Status.Get_count: whole items received, or UNDEFINED."""
    t = check_message_type(dt, "Status.Get_count") if dt._t is None else dt._t
    if t.size == 0:
        return 0 if nbytes == 0 else C.UNDEFINED
    q, r = divmod(nbytes, t.size)
    return C.UNDEFINED if r else q


def elements_of(dt: Datatype, nbytes: int) -> int:
    """Status.Get_elements: basic elements received, or UNDEFINED."""
    t = check_message_type(dt, "Status.Get_elements") if dt._t is None else dt._t
    if t.size == 0:
        return 0
    q, r = divmod(nbytes, t.size)
    if t.npd is not None and t.npd.kind != "V" and t.blocks is None:
        return C.UNDEFINED if r else q
    _, codes = t.elements()
    sizes = _basic_sizes()[codes]
    n = q * sizes.size
    if r:
        cum = np.cumsum(sizes)
        k = int(np.searchsorted(cum, r, side="right"))
        if k == 0 or cum[k - 1] != r:
            return C.UNDEFINED
        n += k
    return n


_buffer_view = []   # the buffer-spec layer's byte viewer, once registered


def set_buffer_view(fn) -> None:
    """Register ``fn(obj, writable, what) -> flat byte memoryview``, the buffer-spec
    layer's viewer (which knows buffer exporters such as DLPack): Pack/Unpack take
    their buffers through it.  Called once by :mod:`._bufspec` at import."""
    _buffer_view[:] = [fn]


def _raw(buf, writable: bool, what: str) -> np.ndarray:
    """A flat uint8 numpy view of a contiguous buffer."""
    if _buffer_view:
        mv = _buffer_view[0](buf, writable, what)
        return np.frombuffer(mv, np.uint8) if len(mv) else np.zeros(0, np.uint8)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise MmpiError(f"{what}: {type(buf).__name__} does not support the buffer protocol",
                        error_class=_errcodes.ERR_BUFFER) from None
    if writable and mv.readonly:
        raise MmpiError(f"{what}: the output buffer is read-only",
                        error_class=_errcodes.ERR_BUFFER)
    if not mv.c_contiguous:
        raise MmpiError(f"{what}: the buffer is not contiguous",
                        error_class=_errcodes.ERR_BUFFER)
    if mv.nbytes == 0:
        return np.zeros(0, np.uint8)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return np.frombuffer(mv, np.uint8)


def _pos(position, what) -> int:
    p = _int(position, what, "position")
    if p < 0:
        raise _err(f"{what}: position must be >= 0, got {p}")
    return p


def _pack_api(dt: Datatype, inbuf, outbuf, position, external, what) -> int:
    t = dt._check(what)
    position = _pos(position, what)
    src = _raw(inbuf, False, what)
    out = _raw(outbuf, True, what)
    ext = t.ub - t.lb
    count = src.size // ext if ext > 0 else 0
    n = count * t.size
    if position + n > out.size:
        raise MmpiError(f"{what}: {count} item(s) need {n} bytes from position {position}, "
                        f"the output buffer has {out.size}; use Pack_size to size it",
                        error_class=_errcodes.ERR_TRUNCATE)
    pack_into(src, t, count, out[position:position + n], what, external)
    return position + n


def _unpack_api(dt: Datatype, inbuf, position, outbuf, external, what) -> int:
    t = dt._check(what)
    position = _pos(position, what)
    src = _raw(inbuf, False, what)
    out = _raw(outbuf, True, what)
    ext = t.ub - t.lb
    count = out.size // ext if ext > 0 else 0
    n = count * t.size
    if position + n > src.size:
        raise MmpiError(f"{what}: {count} item(s) need {n} packed bytes from position "
                        f"{position}, the input buffer has {src.size}",
                        error_class=_errcodes.ERR_TRUNCATE)
    unpack_from(src[position:position + n], t, count, out, what, external)
    return position + n


# ---------------------------------------------------------------- addresses

def Get_address(location: Buffer | Bottom) -> int:
    """Get the address of a location in memory (0 for None and MPI.BOTTOM)."""
    if location is None or location is C.BOTTOM:
        return 0
    ai = getattr(location, "__array_interface__", None)
    if isinstance(ai, dict) and "data" in ai:
        return int(ai["data"][0])
    from .. import _linux
    try:
        mv = memoryview(location)
    except TypeError:
        if not _buffer_view:
            raise MmpiError(f"Get_address: {type(location).__name__} does not support the "
                            f"buffer protocol", error_class=_errcodes.ERR_BUFFER) from None
        mv = _buffer_view[0](location, False, "Get_address")   # DLPack, CUDA array iface
    if mv.nbytes == 0:
        return 0
    if not mv.c_contiguous:
        mv = memoryview(np.asarray(location))
    return _linux.buffer_address(mv)[0]


def Aint_add(base: int, disp: int) -> int:
    """Return the sum of base address and displacement."""
    return int(base) + int(disp)


def Aint_diff(addr1: int, addr2: int) -> int:
    """Return the difference between absolute addresses."""
    return int(addr1) - int(addr2)
