"""MPI sessions (``MPI.Session``): MPI-4's way to start MPI without COMM_WORLD.

driller's processes are started by ``driller run`` into one world, so a session
is a light object over it: ``Session.Init`` opens one (any number, at any time
while MPI is up), its process sets are MPI's two predefined ones,
``"mpi://WORLD"`` (every rank) and ``"mpi://SELF"`` (this rank) -- names
compared without regard to case, as Open MPI does --, ``Get_pset_info`` tells a
set's ``mpi_size``, and ``Create_group`` (or ``Group.Create_from_session_pset``)
makes the set's group, from which ``Intracomm.Create_from_group`` builds a
communicator.  A session carries an error handler (ERRORS_RETURN unless
``Init`` is given one), applied to its failing calls as a communicator's is.
``Finalize`` ends the session (its handles become SESSION_NULL; the groups and
communicators made from it stay valid, as MPI says).

Not provided: a session's own buffer for buffered sends (``Attach_buffer`` and
the like raise NotImplementedError; attach to the communicator or the process).
``SESSION_NULL`` and ``Session()`` behave as every null handle (equal, false,
unhashable, pickling to themselves); an open session does not pickle.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn

from .. import _errcodes
from ..errors import MmpiError, MmpiNotImplementedError
from . import _errhandler
from ._comm import self_comm, world_comm
from ._group import Group
from ._handle import Handle
from ._info import Info

__all__ = ["Session", "SESSION_NULL"]

_PSETS = ("mpi://WORLD", "mpi://SELF")


class _Open:
    """An open session: what every handle onto it shares."""

    __slots__ = ("info", "errh", "open", "__weakref__")

    def __init__(self, info: dict, errh: _errhandler.Errhandler):
        self.info = info
        self.errh = errh
        self.open = True


_numbers: dict[int, _Open] = {}       # handle -> open session


def _abort(errorcode: int) -> None:
    world_comm().Abort(errorcode)


def _info_arg(info, what: str) -> None:
    if info is not None and not isinstance(info, Info):
        raise TypeError(f"Session.{what}: info must be an MPI.Info, got "
                        f"{type(info).__name__}")


class Session(Handle):
    """Session context (mpi4py's ``MPI.Session``); ``Session()`` is SESSION_NULL."""

    __slots__ = ("_s", "__weakref__", "__dict__")
    _inner = "_s"      # (truth and equality: the session while open, below)

    def __new__(cls, session: Session | None = None) -> Session:
        return cls._copy_of(session, "session")

    # -- handle behaviour ----------------------------------------------------------

    def _live(self) -> _Open | None:
        s = self._s
        return s if s is not None and s.open else None

    def __bool__(self) -> bool:
        return self._live() is not None

    def __eq__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        return self._live() is other._live()

    def __ne__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        return self._live() is not other._live()

    def __reduce__(self):
        if self is SESSION_NULL:
            return "SESSION_NULL"
        if self._live() is None:
            return (type(self), ())
        raise ValueError(f"cannot serialize {type(self).__name__!r} instance (an open "
                         f"session belongs to this process)")

    def __repr__(self) -> str:
        if self._live() is None:
            return "<MPI.Session SESSION_NULL>"
        return f"<MPI.Session {self.handle:#x}>"

    @property
    def handle(self) -> int:
        """The session's handle (0: null)."""
        s = self._live()
        return 0 if s is None else id(s)

    @classmethod
    def fromhandle(cls, handle: int) -> Session:
        """A new Python object onto the session of ``handle``."""
        return cls._onto(handle, _numbers.get, "open session's", _errcodes.ERR_SESSION)

    def free(self) -> None:
        """Call Finalize if not null."""
        if self._live() is not None:
            self.Finalize()

    # -- opening and closing --------------------------------------------------------

    @classmethod
    def Init(cls, info: Info | None = None,
             errhandler: _errhandler.Errhandler | None = None) -> Session:
        """Create a new session."""
        _info_arg(info, "Init")
        if errhandler is None:
            errh = _errhandler.ERRORS_RETURN
        else:
            errh = _errhandler.check(errhandler, "Session.Init")
        world_comm()          # MPI is up (a finalized process raises here)
        s = _Open(dict(info.items()) if info else {}, _errhandler.Errhandler(errh))
        _numbers[id(s)] = s
        new = cls()
        new._s = s
        _errhandler.apply(new, errh, _abort)     # failing calls apply it
        return new

    def _open(self, what: str) -> _Open:
        s = self._live()
        if s is None:
            raise MmpiError(f"Session.{what}: invalid session: SESSION_NULL (finalized or "
                            f"never initialized; open one with MPI.Session.Init())",
                            error_class=_errcodes.ERR_SESSION)
        return s

    def Finalize(self) -> None:
        """Finalize a session."""
        s = self._open("Finalize")
        s.open = False
        del _numbers[id(s)]
        self._s = None

    # -- process sets ---------------------------------------------------------------

    def Get_num_psets(self, info: Info | None = None) -> int:
        """Number of available process sets."""
        self._open("Get_num_psets")
        _info_arg(info, "Get_num_psets")
        return len(_PSETS)

    def Get_nth_pset(self, n: int, info: Info | None = None) -> str:
        """Name of the ``n``-th process set."""
        self._open("Get_nth_pset")
        _info_arg(info, "Get_nth_pset")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"Session.Get_nth_pset: n must be an int, got {n!r}")
        if not 0 <= n < len(_PSETS):
            raise MmpiError(f"Session.Get_nth_pset: no process set {n} (there are "
                            f"{len(_PSETS)}: 0 to {len(_PSETS) - 1})",
                            error_class=_errcodes.ERR_ARG)
        return _PSETS[n]

    def Get_info(self) -> Info:
        """Return the current hints for a session."""
        return Info.Create(self._open("Get_info").info)

    def _pset(self, pset_name: str, what: str) -> str:
        self._open(what)
        if not isinstance(pset_name, str):
            raise TypeError(f"Session.{what}: pset_name must be a str, got "
                            f"{type(pset_name).__name__}")
        for name in _PSETS:
            if name.lower() == pset_name.lower():
                return name
        raise MmpiError(f"Session.{what}: no process set {pset_name!r} (driller's are "
                        f"{', '.join(map(repr, _PSETS))})", error_class=_errcodes.ERR_ARG)

    def Get_pset_info(self, pset_name: str) -> Info:
        """Return an info object with the properties of a process set (``mpi_size``)."""
        name = self._pset(pset_name, "Get_pset_info")
        comm = world_comm() if name == "mpi://WORLD" else self_comm()
        return Info.Create({"mpi_size": str(comm.Get_size())})

    def Create_group(self, pset_name: str) -> Group:
        """Create a new group from session and process set."""
        name = self._pset(pset_name, "Create_group")
        return (world_comm() if name == "mpi://WORLD" else self_comm()).Get_group()

    # -- error handling -------------------------------------------------------------

    @classmethod
    def Create_errhandler(cls, errhandler_fn: Callable[[Session, int], None]
                          ) -> _errhandler.Errhandler:
        """Create a new error handler for sessions."""
        return _errhandler.create(errhandler_fn)

    def Get_errhandler(self) -> _errhandler.Errhandler:
        """Get the error handler for a session."""
        return _errhandler.Errhandler(self._open("Get_errhandler").errh)

    def Set_errhandler(self, errhandler: _errhandler.Errhandler) -> None:
        """Set the error handler for a session."""
        s = self._open("Set_errhandler")
        s.errh = _errhandler.Errhandler(_errhandler.check(errhandler,
                                                          "Session.Set_errhandler"))
        _errhandler.apply(self, s.errh, _abort)

    def Call_errhandler(self, errorcode: int) -> None:
        """Call the error handler installed on a session."""
        _errhandler.call(self._open("Call_errhandler").errh, self, errorcode, _abort)

    # -- buffered sends ---------------------------------------------------------------

    def _no_buffer(self, what: str) -> NoReturn:
        self._open(what)
        raise MmpiNotImplementedError(
            f"Session.{what}: driller's sessions have no buffer of their own for buffered "
            f"sends; attach one to the communicator (Comm.Attach_buffer) or to the "
            f"process (MPI.Attach_buffer)")

    def Attach_buffer(self, buf: Any) -> None:
        """Attach a user-provided buffer for sending in buffered mode (not provided)."""
        self._no_buffer("Attach_buffer")

    def Detach_buffer(self) -> Any:
        """Remove an existing attached buffer (not provided)."""
        self._no_buffer("Detach_buffer")

    def Flush_buffer(self) -> None:
        """Block until all buffered messages have been transmitted (not provided)."""
        self._no_buffer("Flush_buffer")

    def Iflush_buffer(self) -> Any:
        """Nonblocking flush for buffered messages (not provided)."""
        self._no_buffer("Iflush_buffer")


SESSION_NULL = Session()
