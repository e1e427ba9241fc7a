"""MPI info objects: ordered string-to-string maps behind a handle (``MPI.Info``).

An ``Info`` is a handle onto a store: ``Info(other)`` is a second handle onto the
same store (equal to it), ``Dup``/``copy`` make a new store, ``Free`` makes the
handle null.  ``INFO_NULL`` is the null handle (mapping methods read as empty,
writing raises KeyError, as mpi4py); ``INFO_ENV`` holds the environment MPI
defines (command, argv, maxprocs, host, arch, wdir, thread_level).  Both pickle
to themselves; other infos pickle as a new info with the same items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Iterable, Mapping, Sequence

import os
import platform
import socket
import sys
import weakref

from ..errors import MmpiError
from .. import _errcodes
from ._const import MAX_INFO_KEY, MAX_INFO_VAL
from ._handle import Handle
from ._world import ENV_SIZE

__all__ = ["Info", "INFO_NULL", "INFO_ENV"]


def _map_of(handle: int) -> dict | None:
    """The map of a live info's handle (1: INFO_ENV's), None if none (``Info.fromhandle``)."""
    if handle == 1:
        return _ENV
    other = _live.get(handle)
    return other._d if other is not None and id(other._d) == handle else None


class Info(Handle):
    """A handle onto an ordered map of string keys to string values."""

    __slots__ = ("_d", "__weakref__")
    _inner = "_d"   # truth, equality, int handles: Handle

    def __new__(cls, info: Info | None = None) -> Info:
        return cls._copy_of(info, "info")

    # -- MPI methods ---------------------------------------------------------------

    @classmethod
    def Create(cls,
               items: Info | Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> Info:
        """Create a new info object."""
        new = cls()
        new._d = {}
        if items is not None:
            if not hasattr(items, "keys") and not isinstance(items, (list, tuple)):
                raise TypeError(f"Info.Create(items): expected a mapping or a sequence of "
                                f"(key, value) pairs, got {type(items).__name__}")
            new.update(items)
        return new

    @classmethod
    def Create_env(cls, args: Sequence[str] | None = None) -> Info:
        """Create a new environment info object."""
        new = cls()
        new._d = dict(_env_items(args))
        return new

    def _store(self, what: str) -> dict:
        if self._d is None:
            raise MmpiError(f"Info.{what}: the info is INFO_NULL (create one with "
                            f"MPI.Info.Create())", error_class=_errcodes.ERR_INFO)
        return self._d

    def _writable(self, what: str) -> dict:
        d = self._store(what)
        if d is _ENV:
            raise MmpiError(f"Info.{what}: INFO_ENV is predefined and read-only; "
                            f"use INFO_ENV.Dup()", error_class=_errcodes.ERR_INFO)
        return d

    def Dup(self) -> Info:
        """Duplicate an existing info object."""
        new = Info.__new__(type(self))
        new._d = dict(self._store("Dup"))
        return new

    def Free(self) -> None:
        """Free an info object."""
        self._store("Free")
        if self is INFO_ENV:
            raise MmpiError("Info.Free: INFO_ENV is predefined and cannot be freed",
                            error_class=_errcodes.ERR_INFO)
        self._d = None

    def Get(self, key: str) -> str | None:
        """Retrieve the value associated with a key."""
        return self._store("Get").get(_key(key))

    def Set(self, key: str, value: str) -> None:
        """Store a value associated with a key."""
        self._writable("Set")[_key(key)] = _value(value)

    def Delete(self, key: str) -> None:
        """Remove a (key, value) pair from info."""
        d = self._writable("Delete")
        key = _key(key)
        if key not in d:
            raise MmpiError(f"Info.Delete: no key {key!r}", error_class=_errcodes.ERR_INFO_NOKEY)
        del d[key]

    def Get_nkeys(self) -> int:
        """Return the number of currently defined keys in info."""
        return len(self._store("Get_nkeys"))

    def Get_nthkey(self, n: int) -> str:
        """Return the *n*-th defined key in info."""
        d = self._store("Get_nthkey")
        if not 0 <= n < len(d):
            raise MmpiError(f"Info.Get_nthkey: index {n} is out of range (the info has "
                            f"{len(d)} keys)", error_class=_errcodes.ERR_ARG)
        return list(d)[n]

    # -- handle behaviour (truth, equality, int handles: Handle) ---------------------

    def __reduce__(self):
        if self is INFO_NULL:
            return "INFO_NULL"
        if self is INFO_ENV:
            return "INFO_ENV"
        if self._d is None:
            return (type(self), ())
        if self._d is _ENV:
            return (type(self), (INFO_ENV,))
        return (_rebuild, (type(self), list(self._d.items())))

    def free(self) -> None:
        """Free the info, safely: nothing for INFO_NULL or INFO_ENV (a handle copy
        of INFO_ENV just becomes null)."""
        if self._d is None or self is INFO_ENV:
            return
        self._d = None

    @property
    def handle(self) -> int:
        """The info's handle (an int >= 0; ``Info.fromhandle`` takes it back)."""
        if self._d is None:
            return 0
        if self._d is _ENV:
            return 1
        h = id(self._d)
        _live[h] = self
        return h

    @classmethod
    def fromhandle(cls, handle: int) -> Info:
        """A new Python object onto the info of ``handle``."""
        return cls._onto(handle, _map_of, "live info", _errcodes.ERR_INFO)

    def __repr__(self) -> str:
        if self._d is None:
            return "<MPI.Info INFO_NULL>"
        return f"<MPI.Info {dict(self._d)!r}>"

    # -- mapping methods (mpi4py's Python interface) -------------------------------

    def __len__(self) -> int:
        return 0 if self._d is None else len(self._d)

    def __contains__(self, key) -> bool:
        return self._d is not None and key in self._d

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key: str) -> str:
        if self._d is None or _key(key) not in self._d:
            raise KeyError(key)
        return self._d[key]

    def __setitem__(self, key: str, value: str) -> None:
        if self._d is None:
            raise KeyError(key)
        self.Set(key, value)

    def __delitem__(self, key: str) -> None:
        if self._d is None or key not in self._d:
            raise KeyError(key)
        self.Delete(key)

    def get(self, key: str, default: str | None = None) -> str | None:
        """Retrieve value by key."""
        if self._d is None:
            return default
        v = self._d.get(_key(key))
        return default if v is None else v

    def keys(self) -> list[str]:
        """Return list of keys."""
        return [] if self._d is None else list(self._d)

    def values(self) -> list[str]:
        """Return list of values."""
        return [] if self._d is None else list(self._d.values())

    def items(self) -> list[tuple[str, str]]:
        """Return list of items."""
        return [] if self._d is None else list(self._d.items())

    def update(self, items: Info | Mapping[str, str] | Iterable[tuple[str, str]] = (),
               **kwds: str) -> None:
        """Update contents."""
        if self._d is None:
            raise KeyError("update: the info is INFO_NULL")
        pairs = items.items() if hasattr(items, "items") else items
        for k, v in list(pairs) + list(kwds.items()):
            self.Set(k, v)

    def pop(self, key: str, *default: str) -> str:
        """Pop value by key."""
        if self._d is None or key not in self._d:
            if default:
                return default[0]
            raise KeyError(key)
        v = self._d[key]
        self.Delete(key)
        return v

    def popitem(self) -> tuple[str, str]:
        """Pop first item."""
        if not self._d:
            raise KeyError("popitem: the info is empty")
        key = list(self._d)[-1]
        return key, self.pop(key)

    def copy(self) -> Info:
        """Copy contents."""
        return Info.__new__(type(self)) if self._d is None else self.Dup()

    def clear(self) -> None:
        """Clear contents."""
        if self._d is not None:
            self._writable("clear").clear()


_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # handle -> an Info


def _rebuild(cls, items) -> Info:
    new = cls()
    new._d = dict(items)
    return new


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"info keys are str, got {type(key).__name__}")
    if not 0 < len(key) < MAX_INFO_KEY:
        raise MmpiError(f"info key {key[:40]!r}: a key has 1 to {MAX_INFO_KEY - 1} "
                        f"characters (MPI.MAX_INFO_KEY)", error_class=_errcodes.ERR_INFO_KEY)
    return key


def _value(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"info values are str, got {type(value).__name__}")
    if len(value) >= MAX_INFO_VAL:
        raise MmpiError(f"info value of {len(value)} characters: at most "
                        f"{MAX_INFO_VAL - 1} (MPI.MAX_INFO_VAL)",
                        error_class=_errcodes.ERR_INFO_VALUE)
    return value


def _env_items(args=None):
    argv = list(sys.argv) if args is None else (
        [args] if isinstance(args, str) else list(args))
    yield "command", (argv[0] if argv else sys.executable)
    yield "argv", " ".join(argv[1:])
    yield "maxprocs", os.environ.get(ENV_SIZE, "1")
    yield "host", socket.gethostname()
    yield "arch", platform.machine()
    yield "wdir", os.getcwd()
    yield "thread_level", "MPI_THREAD_SINGLE"


INFO_NULL = Info()
_ENV: dict = dict(_env_items())
INFO_ENV = Info()
INFO_ENV._d = _ENV
