"""What every mpi4py handle class shares: truth, identity and integer handles.

A handle class (``Comm``, ``Group``, ``Datatype``, ``Op``, ``Info``,
``Errhandler``, ``File``, ``Session``) names in ``_inner`` the slot that holds
what the handle refers to (``None``: the null handle) and defines the
``handle`` property and the ``fromhandle`` class method.  :class:`Handle` gives
it the rest, as mpi4py's handles behave: false when null, ``==`` when both name
the same thing (a copy ``Comm(comm)`` equals ``comm``), unhashable (a handle
changes when freed), and ``py2f``/``f2py``/``toint``/``fromint`` in terms of
``handle``/``fromhandle``.  Subclasses of a handle class compare with each other
(``Intracomm`` with ``Comm``).  ``_copy_of`` and ``_onto`` are the usual
``Cls(other)`` and ``fromhandle``.  Imports only ``driller.errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ..errors import MmpiError

_H = TypeVar("_H", bound="Handle")


class Handle:
    """Mixin of mpi4py's handle behaviour over the slot named ``_inner``."""

    __slots__ = ()
    _inner: ClassVar[str] = ""
    _family: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_inner" in vars(cls):
            cls._family = cls       # the class whose instances compare with ours

    def __bool__(self) -> bool:
        return getattr(self, self._inner) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self._family):
            return NotImplemented
        return getattr(self, self._inner) is getattr(other, self._inner)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, self._family):
            return NotImplemented
        return getattr(self, self._inner) is not getattr(other, self._inner)

    __hash__ = None  # type: ignore[assignment]  # handles change when freed: unhashable, as mpi4py's

    @classmethod
    def _copy_of(cls: type[_H], other: Handle | None, arg: str) -> _H:
        """``Cls(other)``: the null handle for None, else a new object onto what
        ``other`` (an instance of the family) names."""
        self = object.__new__(cls)
        if other is None:
            setattr(self, cls._inner, None)
        elif isinstance(other, cls._family):
            setattr(self, cls._inner, getattr(other, cls._inner))
        else:
            raise TypeError(f"{cls.__name__}({arg}): expected {cls._family.__name__}, got "
                            f"{type(other).__name__}")
        return self

    @classmethod
    def _onto(cls: type[_H], handle: int, lookup: Callable[[int], Any], what: str,
              error_class: int) -> _H:
        """``fromhandle`` by ``lookup`` (handle -> what it names, None if nothing;
        0 is the null handle): a new object onto it, or ``MmpiError(error_class)``
        naming ``what``."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"{cls.__name__}.fromhandle: expected an int, got {handle!r}")
        new = cls()
        if handle:
            inner = lookup(handle)
            if inner is None:
                raise MmpiError(f"{cls.__name__}.fromhandle: {handle} is no {what} handle",
                                error_class=error_class)
            setattr(new, cls._inner, inner)
        return new

    @property
    def handle(self) -> int:   # pragma: no cover - every handle class defines it
        """The handle as an int (``fromhandle`` takes it back)."""
        raise NotImplementedError

    @classmethod
    def fromhandle(cls: type[_H], handle: int) -> _H:   # pragma: no cover - defined by each
        """A new Python object onto the handle ``handle``."""
        raise NotImplementedError

    def py2f(self) -> int:
        """The Fortran integer of this handle (``f2py`` takes it back)."""
        return self.handle

    @classmethod
    def f2py(cls: type[_H], arg: int) -> _H:
        """The object of a Fortran integer handle (``py2f``'s inverse)."""
        return cls.fromhandle(arg)

    def toint(self) -> int:
        """Translate the object to an integer handle (``fromint`` takes it back)."""
        return self.handle

    @classmethod
    def fromint(cls: type[_H], arg: int) -> _H:
        """Translate an integer handle to the object (``toint``'s inverse)."""
        return cls.fromhandle(arg)
