"""Attribute caching: keyvals and the attributes objects carry (mpi4py's semantics).

Generic over the kind of object (``"comm"``, ``"datatype"``, ``"win"``): a kind's
class calls :func:`create_keyval`/:func:`free_keyval` for its ``Create_keyval``/
``Free_keyval``, and keeps one :class:`Attributes` per handle (shared by every
Python object onto that handle) for ``Set_attr``/``Get_attr``/``Delete_attr``;
it calls :meth:`Attributes.copy_into` when it duplicates the object and
:meth:`Attributes.clear` when it frees it.

Callbacks, as mpi4py: ``copy_fn(obj, keyval, value)`` returns the new object's
value (``NotImplemented``: not copied); ``copy_fn=True`` copies the value as is,
``None``/``False`` never copies.  ``delete_fn(obj, keyval, value)`` runs at
``Delete_attr``, when ``Set_attr`` replaces a value, and when the object is
freed.  A callback that raises is reported on stderr (its traceback) and the call
raises ``MPI.Exception(ERR_OTHER)``.  ``nopython=True`` keyvals hold integers
(C attribute values), as mpi4py's.  A freed keyval stays alive for the
attributes still using it (their delete callbacks still run), as MPI says.

Predefined keyvals (COMM_WORLD's TAG_UB, ...) are below :data:`FIRST_USER`; the
object's class answers them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable
    from typing import Any

import operator
import sys
import traceback

from ..errors import MmpiError
from .. import _errcodes
from ._const import KEYVAL_INVALID

__all__ = ["Keyval", "Attributes", "Cached", "create_keyval", "free_keyval", "keyval",
           "FIRST_USER"]

FIRST_USER = 16   # user keyvals are FIRST_USER and up (predefined ones are below)


class Keyval:
    """A keyval: its number, the kind of object it is for, its callbacks."""

    __slots__ = ("number", "kind", "copy_fn", "delete_fn", "nopython", "freed")

    def __init__(self, number: int, kind: str, copy_fn, delete_fn, nopython: bool):
        self.number = number
        self.kind = kind
        self.copy_fn = copy_fn
        self.delete_fn = delete_fn
        self.nopython = nopython
        self.freed = False


_keyvals: dict[int, Keyval] = {}
_next = [FIRST_USER]


def _err(msg: str, cls: int = _errcodes.ERR_KEYVAL) -> MmpiError:
    return MmpiError(msg, error_class=cls)


def create_keyval(kind: str, copy_fn=None, delete_fn=None, nopython: bool = False) -> int:
    """A new keyval for objects of ``kind`` (``Comm.Create_keyval`` and the like)."""
    what = f"{kind.capitalize()}.Create_keyval"
    if copy_fn not in (None, True, False) and not callable(copy_fn):
        raise TypeError(f"{what}: copy_fn must be None, True, False or a callable, "
                        f"got {copy_fn!r}")
    if delete_fn is not None and not callable(delete_fn):
        raise TypeError(f"{what}: delete_fn must be None or a callable, got {delete_fn!r}")
    n = _next[0]
    _next[0] = n + 1
    _keyvals[n] = Keyval(n, kind, copy_fn, delete_fn, bool(nopython))
    return n


def keyval(kind: str, k, what: str) -> Keyval:
    """The live user keyval ``k`` of ``kind``, or MPI.Exception(ERR_KEYVAL)."""
    kv = _keyvals.get(k) if type(k) is int else None
    if kv is None or kv.freed:
        raise _err(f"{what}: invalid keyval {k!r} (create one with "
                   f"{kind.capitalize()}.Create_keyval())")
    if kv.kind != kind:
        raise _err(f"{what}: keyval {k} was created for {kv.kind} objects, not {kind}s")
    return kv


def free_keyval(kind: str, k) -> int:
    """Free keyval ``k``; returns KEYVAL_INVALID (attributes using it keep it alive)."""
    kv = keyval(kind, k, f"{kind.capitalize()}.Free_keyval")
    kv.freed = True
    return KEYVAL_INVALID


def _call(fn, obj, kv: Keyval, value, what: str):
    try:
        return fn(obj, kv.number, value)
    except BaseException as e:  # noqa: BLE001 - reported, then raised as MPI.Exception
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        raise _err(f"{what}: the {'copy' if what.endswith('copy') else 'delete'} callback of "
                   f"keyval {kv.number} raised {type(e).__name__}: {e}",
                   _errcodes.ERR_OTHER) from e


class Attributes:
    """The attributes cached on one handle: keyval number -> (Keyval, value)."""

    __slots__ = ("_d", "kind")

    def __init__(self, kind: str):
        self._d: dict[int, tuple[Keyval, object]] = {}
        self.kind = kind

    def set(self, obj, k, value, what: str = "Set_attr") -> None:
        kv = keyval(self.kind, k, what)
        if kv.nopython:
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"{what}: keyval {k} was created with nopython=True: its "
                                f"values are integers, got {type(value).__name__}") from None
        old = self._d.get(k)
        self._d[k] = (kv, value)
        if old is not None and kv.delete_fn is not None:
            _call(kv.delete_fn, obj, kv, old[1], f"{what}: delete")

    def get(self, k, what: str = "Get_attr"):
        got = self._d.get(k) if type(k) is int else None
        if got is None:
            keyval(self.kind, k, what)   # an invalid keyval raises; a valid one: not set
            return None
        return got[1]

    def delete(self, obj, k, what: str = "Delete_attr") -> None:
        got = self._d.get(k) if type(k) is int else None
        if got is None:
            keyval(self.kind, k, what)
            raise _err(f"{what}: no attribute is set for keyval {k}")
        del self._d[k]
        kv, value = got
        if kv.delete_fn is not None:
            _call(kv.delete_fn, obj, kv, value, f"{what}: delete")

    def copy_into(self, obj, other: "Attributes", what: str = "Dup") -> None:
        """Copy the attributes whose keyval says so onto ``other`` (the duplicate's);
        ``obj`` is the original, as the copy callbacks receive it."""
        for k, (kv, value) in list(self._d.items()):
            fn = kv.copy_fn
            if fn is None or fn is False:
                continue
            if fn is True:
                other._d[k] = (kv, value)
                continue
            new = _call(fn, obj, kv, value, f"{what}: copy")
            if new is not NotImplemented:
                other._d[k] = (kv, new)

    def clear(self, obj, what: str = "Free") -> None:
        """Delete every attribute (last set first), running the delete callbacks;
        the first callback error is raised after all have run."""
        err = None
        while self._d:
            k, (kv, value) = self._d.popitem()
            if kv.delete_fn is not None:
                try:
                    _call(kv.delete_fn, obj, kv, value, f"{what}: delete")
                except MmpiError as e:
                    err = err or e
        if err is not None:
            raise err

    def __len__(self) -> int:
        return len(self._d)


class Cached:
    """Mixin giving a handle class mpi4py's attribute methods (``Create_keyval``,
    ``Free_keyval``, ``Set_attr``, ``Get_attr``, ``Delete_attr``).

    The class sets ``_attr_kind`` ("comm", "datatype", "win") and defines
    ``_attributes(what)``: the :class:`Attributes` of the handle (raising the
    class's null-handle error).  ``_attr_predefined`` maps the kind's predefined
    keyvals (read-only) to ``_attr_value(keyval)``, which the class overrides.
    Its ``Dup`` calls ``attrs.copy_into(self, new_attrs)``, its ``Free``
    ``attrs.clear(self)``."""

    __slots__ = ()
    _attr_kind = ""
    _attr_predefined: frozenset = frozenset()

    def _attributes(self, what: str) -> Attributes:   # pragma: no cover - overridden
        raise NotImplementedError

    def _attr_value(self, keyval: int):   # pragma: no cover - overridden if any
        return None

    @classmethod
    def Create_keyval(cls, copy_fn: Callable[[Any, int, Any], Any] | None = None,
                      delete_fn: Callable[[Any, int, Any], None] | None = None,
                      nopython: bool = False) -> int:
        """Create a new attribute key."""
        return create_keyval(cls._attr_kind, copy_fn, delete_fn, nopython)

    @classmethod
    def Free_keyval(cls, keyval: int) -> int:
        """Free an attribute key; returns KEYVAL_INVALID."""
        return free_keyval(cls._attr_kind, keyval)

    def _what(self, name: str) -> str:
        return f"{type(self).__name__}.{name}"

    def Set_attr(self, keyval: int, attrval: Any) -> None:
        """Store an attribute value associated with a key."""
        what = self._what("Set_attr")
        attrs = self._attributes(what)
        if keyval in self._attr_predefined:
            raise _err(f"{what}: keyval {keyval} is predefined (read-only)")
        attrs.set(self, keyval, attrval, what)

    def Get_attr(self, keyval: int) -> int | Any | None:
        """The attribute value for a key (None if none is set)."""
        what = self._what("Get_attr")
        attrs = self._attributes(what)
        if keyval in self._attr_predefined:
            return self._attr_value(keyval)
        return attrs.get(keyval, what)

    def Delete_attr(self, keyval: int) -> None:
        """Delete an attribute value (its delete callback runs)."""
        what = self._what("Delete_attr")
        attrs = self._attributes(what)
        if keyval in self._attr_predefined:
            raise _err(f"{what}: keyval {keyval} is predefined (read-only)")
        attrs.delete(self, keyval, what)
