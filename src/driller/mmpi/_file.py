"""``MPI.File``: file handles for their error handlers and lifetime, no MPI-IO data access.

MPI-IO is outside driller's scope (issue 9), but files are one of the three kinds
of objects that carry error handlers (communicators, windows, files), and mpi4py
programs and tests open one to use them.  So ``File.Open`` opens the file on
each rank of the communicator (``os.open`` with the flags of the access mode;
MPI's checks of the mode: exactly one of RDONLY/WRONLY/RDWR, no CREATE or EXCL
with RDONLY, no RDWR with SEQUENTIAL), ``Close`` closes it (and removes it under
``MODE_DELETE_ON_CLOSE``), ``Get_amode/Get_size/Get_group/Get_info`` answer, and
``Set_errhandler/Get_errhandler/Call_errhandler/Create_errhandler`` behave as on
a communicator (a file's default handler is ERRORS_RETURN, as MPI's).  Every data
access call (``Read``, ``Write_at``, views...) raises MmpiNotImplementedError,
which is also NotImplementedError, so mpi4py's own feature checks skip them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable
    from ._comm import Intracomm
    from ._group import Group

import os

from .. import _errcodes
from ..errors import MmpiError, MmpiNotImplementedError
from . import _errhandler
from . import _threads
from ._const import (MODE_APPEND, MODE_CREATE, MODE_DELETE_ON_CLOSE, MODE_EXCL, MODE_RDONLY,
                     MODE_RDWR, MODE_SEQUENTIAL, MODE_UNIQUE_OPEN, MODE_WRONLY)
from ._handle import Handle
from ._info import INFO_NULL, Info

__all__ = ["File", "FILE_NULL"]

_ALL_MODES = (MODE_RDONLY | MODE_RDWR | MODE_WRONLY | MODE_CREATE | MODE_EXCL
              | MODE_DELETE_ON_CLOSE | MODE_UNIQUE_OPEN | MODE_SEQUENTIAL | MODE_APPEND)


class _Open:
    """An open file: what every handle onto it shares."""

    __slots__ = ("fd", "path", "amode", "group", "info", "errh", "__weakref__")

    def __init__(self, fd: int, path: str, amode: int, group, info: Info):
        self.fd = fd
        self.path = path
        self.amode = amode
        self.group = group
        self.info = info
        self.errh = _errhandler.ERRORS_RETURN


_numbers: dict[int, _Open] = {}       # handle -> open file, while it is open


class File(Handle):
    """File handle (MPI-IO data access is not implemented by driller)."""

    __slots__ = ("_f", "__weakref__", "__dict__")
    _inner = "_f"

    def __new__(cls, file: File | None = None) -> File:
        return cls._copy_of(file, "file")

    # -- handle behaviour (truth, equality, int handles: Handle) ---------------------

    def __reduce__(self):
        if self is FILE_NULL:
            return "FILE_NULL"
        if self._f is None:
            return (type(self), ())
        raise ValueError(f"cannot serialize {type(self).__name__!r} instance (an open file)")

    def __repr__(self) -> str:
        if self._f is None:
            return "<MPI.File FILE_NULL>"
        return f"<MPI.File {self._f.path!r}>"

    @property
    def handle(self) -> int:
        """The file's handle (an int >= 0; ``File.fromhandle`` takes it back)."""
        return 0 if self._f is None else id(self._f)

    @classmethod
    def fromhandle(cls, handle: int) -> File:
        """A new Python object onto the file of ``handle``."""
        return cls._onto(handle, _numbers.get, "open file's", _errcodes.ERR_FILE)

    def free(self) -> None:
        """Close the file if open (safe on FILE_NULL)."""
        if self._f is not None:
            self.Close()

    # -- opening and closing --------------------------------------------------------

    @classmethod
    def Open(cls, comm: Intracomm, filename: str | bytes | os.PathLike[str],
             amode: int = MODE_RDONLY, info: Info = INFO_NULL) -> File:
        """Open a file on every rank of ``comm``."""
        path = os.fsdecode(os.fspath(filename))
        _check_amode(amode)
        flags = os.O_CLOEXEC
        flags |= (os.O_RDONLY if amode & MODE_RDONLY else
                  os.O_WRONLY if amode & MODE_WRONLY else os.O_RDWR)
        if amode & MODE_CREATE:
            flags |= os.O_CREAT
        if amode & MODE_EXCL:
            flags |= os.O_EXCL
        if amode & MODE_APPEND:
            flags |= os.O_APPEND
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError as e:
            raise MmpiError(f"File.Open: {path!r}: {e.strerror}",
                            error_class=_errcodes.ERR_NO_SUCH_FILE) from None
        except FileExistsError as e:
            raise MmpiError(f"File.Open: {path!r}: {e.strerror} (MODE_EXCL)",
                            error_class=_errcodes.ERR_FILE_EXISTS) from None
        except PermissionError as e:
            raise MmpiError(f"File.Open: {path!r}: {e.strerror}",
                            error_class=_errcodes.ERR_ACCESS) from None
        except OSError as e:
            raise MmpiError(f"File.Open: {path!r}: {e.strerror}",
                            error_class=_errcodes.ERR_IO) from None
        self = cls()
        self._f = _Open(fd, path, amode, comm.Get_group(),
                        info.Dup() if info else Info.Create())
        _numbers[id(self._f)] = self._f
        return self

    def _open(self, what: str) -> _Open:
        if self._f is None:
            raise MmpiError(f"File.{what}: the file is FILE_NULL (closed or never opened)",
                            error_class=_errcodes.ERR_FILE)
        return self._f

    def Close(self) -> None:
        """Close the file (and delete it if opened with MODE_DELETE_ON_CLOSE)."""
        f = self._open("Close")
        self._f = None
        if _numbers.pop(id(f), None) is None:
            return                       # closed through another handle already
        os.close(f.fd)
        if f.amode & MODE_DELETE_ON_CLOSE:
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass                     # another rank removed it first

    @classmethod
    def Delete(cls, filename: str | bytes | os.PathLike[str], info: Info = INFO_NULL) -> None:
        """Delete a file."""
        try:
            os.unlink(os.fspath(filename))
        except FileNotFoundError as e:
            raise MmpiError(f"File.Delete: {os.fspath(filename)!r}: {e.strerror}",
                            error_class=_errcodes.ERR_NO_SUCH_FILE) from None

    # -- queries ---------------------------------------------------------------------

    def Get_amode(self) -> int:
        """The access mode the file was opened with."""
        return self._open("Get_amode").amode

    def Get_size(self) -> int:
        """The size of the file in bytes."""
        return os.fstat(self._open("Get_size").fd).st_size

    def Get_group(self) -> Group:
        """The group of the communicator that opened the file."""
        return self._open("Get_group").group

    def Get_info(self) -> Info:
        """The hints in use (a new info)."""
        return self._open("Get_info").info.Dup()

    def Sync(self) -> None:
        """Flush the file to storage."""
        os.fsync(self._open("Sync").fd)

    # -- error handlers --------------------------------------------------------------

    @classmethod
    def Create_errhandler(cls,
                          errhandler_fn: Callable[[File, int], None]) -> _errhandler.Errhandler:
        """Create a new error handler for files."""
        return _errhandler.create(errhandler_fn)

    def Get_errhandler(self) -> _errhandler.Errhandler:
        """The file's error handler (ERRORS_RETURN by default; FILE_NULL's is the
        default for files)."""
        f = self._f
        return _errhandler.Errhandler(_errhandler.ERRORS_RETURN if f is None else f.errh)

    def Set_errhandler(self, errhandler: _errhandler.Errhandler) -> None:
        """Set the file's error handler."""
        f = self._open("Set_errhandler")
        f.errh = _errhandler.Errhandler(_errhandler.check(errhandler, "File.Set_errhandler"))
        _errhandler.apply(self, f.errh, _abort)

    def Call_errhandler(self, errorcode: int) -> None:
        """Invoke the file's error handler on ``errorcode``."""
        f = self._open("Call_errhandler")
        _errhandler.call(f.errh, self, errorcode, _abort)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise MmpiNotImplementedError(
            f"File.{name}: MPI-IO data access is not implemented by driller (File "
            f"opens, closes and carries error handlers only); use Python's own file "
            f"I/O on each rank, or mpi4py with a real MPI for MPI-IO")


def _check_amode(amode) -> None:
    if isinstance(amode, bool) or not isinstance(amode, int) or amode & ~_ALL_MODES:
        raise MmpiError(f"File.Open: invalid amode {amode!r} (an or of MPI.MODE_* flags)",
                        error_class=_errcodes.ERR_AMODE)
    access = [m for m in (MODE_RDONLY, MODE_WRONLY, MODE_RDWR) if amode & m]
    if len(access) != 1:
        raise MmpiError("File.Open: amode needs exactly one of MODE_RDONLY, MODE_WRONLY "
                        "and MODE_RDWR", error_class=_errcodes.ERR_AMODE)
    if amode & MODE_RDONLY and amode & (MODE_CREATE | MODE_EXCL):
        raise MmpiError("File.Open: MODE_CREATE and MODE_EXCL need write access "
                        "(MODE_WRONLY or MODE_RDWR)", error_class=_errcodes.ERR_AMODE)
    if amode & MODE_RDWR and amode & MODE_SEQUENTIAL:
        raise MmpiError("File.Open: MODE_SEQUENTIAL cannot go with MODE_RDWR",
                        error_class=_errcodes.ERR_AMODE)


def _abort(errorcode: int) -> None:
    from . import _comm        # the job ends through COMM_WORLD, as MPI aborts for files
    _comm.world_comm().Abort(errorcode)


FILE_NULL = File()

_threads.register(File)
