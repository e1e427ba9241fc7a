"""Error handlers (``MPI.Errhandler``): what happens when a call on a communicator fails.

``ERRORS_RETURN`` (every communicator's default, as mpi4py sets it): the call raises
``MPI.Exception`` (driller's ``MmpiError``) naming the error.  ``ERRORS_ARE_FATAL``
and ``ERRORS_ABORT``: the error ends the job (``Comm.Abort``).  A user handler
(``Comm.Create_errhandler(fn)``) is called as ``fn(comm, errorcode)``.

driller's calls report errors by raising ``MPI.Exception``.  Under ERRORS_RETURN
that is all (and costs nothing).  Setting any other handler on an object
(:func:`apply`, from ``Set_errhandler``) puts a thin wrapper in front of each of
that object's public methods: when one raises ``MPI.Exception`` (not
``NotImplementedError``), ERRORS_ARE_FATAL/ERRORS_ABORT print the error and abort
the job with its error code, and a user handler is called as ``fn(obj, code)``
before the exception propagates (mpi4py raises after the handler returns too).
Errors surfacing later, in ``Request.Wait`` of a nonblocking call, are not routed
through the communicator's handler.  Predefined handlers pickle to themselves;
user handlers do not pickle (ValueError, as mpi4py).
"""

from __future__ import annotations

import weakref

from ..errors import MmpiError
from .. import _errcodes
from ._handle import Handle

__all__ = ["Errhandler", "ERRHANDLER_NULL", "ERRORS_RETURN", "ERRORS_ARE_FATAL",
           "ERRORS_ABORT", "MAX_USER_ERRHANDLERS", "create", "call", "apply"]

MAX_USER_ERRHANDLERS = 32
_user_count = 0


class _Handler:
    """The object behind a handle: a predefined kind or a user function."""

    __slots__ = ("kind", "fn", "number", "__weakref__")

    def __init__(self, kind: str, fn=None, number: int | None = None):
        self.kind = kind
        self.fn = fn
        if number is None:
            number = _numbers[0]
            _numbers[0] = number + 1
        self.number = number
        _live[number] = self


_numbers = [4]      # handles: 0 null, 1-3 the predefined handlers, user ones from 4
_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


_RETURN = _Handler("ERRORS_RETURN", None, 1)
_FATAL = _Handler("ERRORS_ARE_FATAL", None, 2)
_ABORT = _Handler("ERRORS_ABORT", None, 3)


def _unfreed(number: int) -> _Handler | None:
    """The live handler of ``number``, None if none or freed (``Errhandler.fromhandle``)."""
    h = _live.get(number)
    return None if h is None or h.kind == "freed" else h


class Errhandler(Handle):
    """A handle onto an error handler; ``Errhandler()`` is null, ``Errhandler(eh)``
    a second handle onto the same handler (equal to it)."""

    __slots__ = ("_h", "__weakref__")
    _inner = "_h"   # truth, equality, int handles: Handle

    def __new__(cls, errhandler: Errhandler | None = None) -> Errhandler:
        return cls._copy_of(errhandler, "errhandler")

    def __reduce__(self):
        for name, obj in _PREDEFINED.items():
            if self is obj:
                return name
        if self._h is None:
            return (type(self), ())
        if self._h.fn is None:
            return (type(self), (_PREDEFINED[self._h.kind],))
        raise ValueError("a user-defined Errhandler cannot be pickled")

    def __repr__(self) -> str:
        return f"<MPI.Errhandler {self._h.kind if self._h else 'ERRHANDLER_NULL'}>"

    def Free(self) -> None:
        """Free the handle (predefined handlers stay valid elsewhere)."""
        global _user_count
        if self._h is None:
            raise MmpiError("Errhandler.Free: the errhandler is ERRHANDLER_NULL",
                            error_class=_errcodes.ERR_ERRHANDLER)
        if any(self is h for h in _PREDEFINED.values()):
            return
        if self._h.fn is not None and self._h.kind == "user":
            self._h.kind = "freed"      # its slot is free again (other handles keep the fn)
            _user_count -= 1
        self._h = None

    def free(self) -> None:
        """Free the handle, safely: nothing for a null or predefined one."""
        if self._h is None or any(self is h for h in _PREDEFINED.values()):
            return
        self.Free()

    @property
    def handle(self) -> int:
        """The errhandler's handle (an int >= 0; ``Errhandler.fromhandle`` takes it back)."""
        return 0 if self._h is None else self._h.number

    @classmethod
    def fromhandle(cls, handle: int) -> Errhandler:
        """A new Python object onto the error handler of ``handle``."""
        return cls._onto(handle, _unfreed, "live errhandler", _errcodes.ERR_ERRHANDLER)

    def toint(self) -> int:
        """Translate object to integer handle (-1: no C integer, as mpi4py's)."""
        return -1


ERRHANDLER_NULL = Errhandler()
ERRORS_RETURN = Errhandler()
ERRORS_RETURN._h = _RETURN
ERRORS_ARE_FATAL = Errhandler()
ERRORS_ARE_FATAL._h = _FATAL
ERRORS_ABORT = Errhandler()
ERRORS_ABORT._h = _ABORT
_PREDEFINED = {"ERRHANDLER_NULL": ERRHANDLER_NULL, "ERRORS_RETURN": ERRORS_RETURN,
               "ERRORS_ARE_FATAL": ERRORS_ARE_FATAL, "ERRORS_ABORT": ERRORS_ABORT}


def create(fn) -> Errhandler:
    """A new user error handler calling ``fn(obj, errorcode)`` (at most 32 per process,
    as Open MPI; RuntimeError after)."""
    global _user_count
    if not callable(fn):
        raise TypeError(f"Create_errhandler: expected a callable fn(obj, errorcode), got "
                        f"{type(fn).__name__}")
    if _user_count >= MAX_USER_ERRHANDLERS:
        raise RuntimeError(f"Create_errhandler: at most {MAX_USER_ERRHANDLERS} user error "
                           f"handlers per process")
    _user_count += 1
    eh = Errhandler()
    eh._h = _Handler("user", fn)
    return eh


def check(eh, what: str) -> Errhandler:
    if not isinstance(eh, Errhandler):
        raise TypeError(f"{what}: expected an MPI.Errhandler, got {type(eh).__name__}")
    if not eh:
        raise MmpiError(f"{what}: the errhandler is ERRHANDLER_NULL",
                        error_class=_errcodes.ERR_ARG)
    return eh


def call(eh: Errhandler, obj, errorcode: int, abort) -> None:
    """Apply handler ``eh`` of ``obj`` to ``errorcode``: a user function is called,
    ERRORS_RETURN does nothing, ERRORS_ARE_FATAL/ABORT call ``abort(errorcode)``
    (for any code but SUCCESS)."""
    h = eh._h
    if h is None:
        return
    if h.fn is not None:
        h.fn(obj, errorcode)
    elif h is not _RETURN and errorcode != _errcodes.SUCCESS:
        abort(errorcode)


# ------------------------------------------------------------ applying a handler

import functools  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
import weakref  # noqa: E402

from ..errors import MmpiNotImplementedError  # noqa: E402

_NOT_WRAPPED = frozenset({"Get_errhandler", "Set_errhandler", "Call_errhandler",
                          "Create_errhandler", "Abort", "Free", "Get_rank", "Get_size",
                          "Get_name", "Set_name", "Is_inter", "Is_intra", "Get_group",
                          "py2f", "toint"})
_installed: dict[int, list[str]] = {}   # id(obj) -> the names wrapped on it
_depth = threading.local()


def _forget(key: int) -> None:
    _installed.pop(key, None)


def apply(obj, eh: Errhandler, abort=None) -> None:
    """Make ``obj``'s calls apply its error handler when they fail, ``eh`` being the
    handler just set: ERRORS_RETURN removes the wrappers (errors just raise), any
    other handler wraps each public method of ``obj`` (instance attributes: the
    class and other objects keep theirs).  A wrapper applies the handler in force
    when the error happens (``obj.Get_errhandler()``), so a handle onto a
    communicator whose handler is set through another handle can be wrapped too.
    ``abort(code)`` ends the job (default: ``obj.Abort``)."""
    d = obj.__dict__
    key = id(obj)
    h = eh._h
    if h is None or h is _RETURN:
        for name in _installed.pop(key, ()):
            d.pop(name, None)
        return
    if key in _installed:
        return          # wrapped already: the wrappers read the handler in force
    cls = type(obj)
    names = []
    for name in dir(cls):
        if name.startswith("_") or name in _NOT_WRAPPED:
            continue
        if not isinstance(inspect.getattr_static(cls, name, None), types.FunctionType):
            continue   # properties, class and static methods stay as they are
        d[name] = _wrapper(getattr(obj, name), weakref.ref(obj), name, abort)
        names.append(name)
    weakref.finalize(obj, _forget, key)
    _installed[key] = names


def _wrapper(method, ref, name, abort):
    @functools.wraps(method)
    def call_with_errhandler(*args, **kwargs):
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        try:
            return method(*args, **kwargs)
        except MmpiError as e:
            if depth == 0 and not isinstance(e, MmpiNotImplementedError):
                obj = ref()
                if obj is not None:
                    _handle(obj, name, e, abort)
            raise
        finally:
            _depth.n = depth
    return call_with_errhandler


def _handle(obj, name: str, e: MmpiError, abort) -> None:
    # the handler in force now, read through the object's own Get_errhandler (it may
    # live with the communicator, shared by all its handles)
    try:
        h = obj.Get_errhandler()._h
    except Exception:       # the object is gone (freed, finalized): the error stands
        return
    if h is None or h is _RETURN:
        return
    code = e.error_code
    if h.fn is not None:
        h.fn(obj, code)
        return
    sys.stderr.write(f"mmpi: {type(obj).__name__}.{name} failed under {h.kind} (pid "
                     f"{os.getpid()}): {type(e).__name__}: {e}\n"
                     f"mmpi: aborting the job with error code {code}\n")
    sys.stderr.flush()
    (abort or obj.Abort)(code if code else 1)
