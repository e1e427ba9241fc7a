"""MPI sessions (``MPI.Session``): only the null handle, for the object model.

driller's processes are started by ``driller run`` into one COMM_WORLD; MPI-4
sessions (``Session.Init``, process sets) are not provided: ``Session.Init``
raises ``NotImplementedError`` naming what to use instead.  ``SESSION_NULL``
and ``Session()`` behave as every null handle (equal, false, unhashable,
pickling to themselves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from ._errhandler import Errhandler
    from . import Group
    from ._info import Info

from .. import _errcodes
from ..errors import MmpiError, MmpiNotImplementedError

__all__ = ["Session", "SESSION_NULL"]

_NO_SESSIONS = ("driller has no MPI sessions: ranks start in COMM_WORLD (use "
                "MPI.COMM_WORLD, Get_group and Intracomm.Create_from_group)")


class Session:
    """An MPI session handle (only the null one exists in driller)."""

    __slots__ = ("__weakref__",)

    def __new__(cls, session: "Session | None" = None) -> "Session":
        if session is not None and not isinstance(session, Session):
            raise TypeError(f"{cls.__name__}(session): expected a Session, got "
                            f"{type(session).__name__}")
        return object.__new__(cls)

    def __eq__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        return True   # every session handle is null

    def __ne__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        return False

    __hash__ = None

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        if self is SESSION_NULL:
            return "SESSION_NULL"
        return (type(self), ())

    def __repr__(self) -> str:
        return "<mmpi.Session SESSION_NULL>"

    @property
    def handle(self) -> int:
        """The session's handle (0: null)."""
        return 0

    def py2f(self) -> int:
        """The Fortran integer of this handle."""
        return 0

    @classmethod
    def fromhandle(cls, handle: int) -> "Session":
        """A new Python object onto the session of ``handle`` (only 0, null)."""
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise TypeError(f"Session.fromhandle: expected an int, got {handle!r}")
        if handle != 0:
            raise MmpiNotImplementedError(_NO_SESSIONS)
        return cls()

    @classmethod
    def f2py(cls, arg: int) -> "Session":
        """The session of a Fortran integer."""
        return cls.fromhandle(arg)

    @classmethod
    def Init(cls, info: Info | None = None, errhandler: Errhandler | None = None) -> "Session":
        """Create a new session: not provided by driller."""
        raise MmpiNotImplementedError(f"Session.Init: {_NO_SESSIONS}")

    def _null(self, what: str) -> MmpiError:
        return MmpiError(f"Session.{what}: invalid session: SESSION_NULL ({_NO_SESSIONS})",
                         error_class=_errcodes.ERR_SESSION)

    def Finalize(self) -> None:
        """Finalize a session."""
        raise self._null("Finalize")

    def Get_num_psets(self, info: Info | None = None) -> int:
        """Number of available process sets."""
        raise self._null("Get_num_psets")

    def Get_nth_pset(self, n: int, info: Info | None = None) -> str:
        """Name of the ``n``-th process set."""
        raise self._null("Get_nth_pset")

    def Get_info(self) -> Info:
        """The hints of the session."""
        raise self._null("Get_info")

    def Get_pset_info(self, pset_name: str) -> Info:
        """The info of a process set."""
        raise self._null("Get_pset_info")

    def Create_group(self, pset_name: str) -> Group:
        """A group from a process set."""
        raise self._null("Create_group")

    def Get_errhandler(self) -> Errhandler:
        """The error handler of the session."""
        raise self._null("Get_errhandler")

    def Set_errhandler(self, errhandler: Errhandler) -> None:
        """Set the error handler of the session."""
        raise self._null("Set_errhandler")

    def Call_errhandler(self, errorcode: int) -> None:
        """Call the error handler of the session."""
        raise self._null("Call_errhandler")

    def free(self) -> None:
        """Free the session, safely (nothing to do for a null one)."""


SESSION_NULL = Session()
