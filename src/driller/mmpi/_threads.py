"""One thread inside mmpi at a time: a guard that turns two threads' overlapping
calls into an error, at no cost to a program that never starts a thread.

mmpi is single-threaded (``MPI.Query_thread()`` is ``THREAD_SINGLE``): a rank's
rings, matching queues and collective slots have one writer, its Python thread.
Two threads inside mmpi at once lost or mixed messages silently: two
``ThreadPoolExecutor`` workers sending to one rank both wrote the record at the
ring's head (the GIL switches threads between the read of the head and its
write), and the receiver never saw half the messages; a thread's ``Iprobe`` while
another waited in ``Recv`` moved that ring's records under it.  Calls from
several threads one at a time (a lock around each, ``mpi4py.futures``' manager
thread) are fine and stay fine: what is refused is overlap.

The check costs a wrapper call per call, so it is only put in place once a second Python
thread exists: :func:`watch` (called when this process joins a world) installs it
at once if another thread already runs (a notebook's kernel threads), else leaves
a one-shot ``threading.setprofile`` hook that installs it from the first thread
started with ``threading`` (the hook takes itself off that thread at its first
event and chains any profile function set before it).  Until then the methods
are the plain ones: the 8-byte paths pay nothing.  Installing wraps every public
method of the classes :func:`register`\\ ed (communicators, requests, messages,
windows, files; class methods such as ``Request.Waitall`` too) and the module
functions that progress the transport (:func:`register_functions`:
``MPI.Finalize``, the buffered-send functions), except the methods that read
local state only or are meant for another thread (``Get_*`` but the
``Get_status*`` ones and ``Win.Get_accumulate``, ``Is_*``,
``Grequest.Complete``/``complete``, ``Abort``), in a
call that takes one process-wide slot for its thread (``dict.setdefault``: one C
call, so two threads never both get it, on any Python) without waiting: the
thread inside may call in again (a user op or callback run by a reduction or a
``Wait``), another thread gets :class:`~driller.MmpiError` at once, before its
call touched anything, naming both threads and calls.

Not covered: a method bound before the guard was installed (``send =
comm.Send`` kept from before the first thread started), a call already in
progress when the first thread starts, calls made by the starting thread between
``Thread.start()`` returning and the new thread's first step (where the hook
runs), and threads started with
``_thread.start_new_thread`` or after a profiler replaced the hook
(``threading.setprofile``); driller's own short-lived threads (``_thread``) never
call mmpi.  ``DRILLER_MMPI_THREAD_GUARD=0`` turns the guard off.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

from ..errors import MmpiError

__all__ = ["register", "register_functions", "watch", "install", "installed"]

_classes: list = []          # registered, in order; wrapped at install()
_state = {"installed": False, "hooked": False, "prev": None}
_install_lock = threading.Lock()
# The guard's state, renewed by a fork: {0: (ident of the thread inside, the
# outermost call it is in)} (taken with dict.setdefault, one C call: two threads
# can never both get it, and the refused thread reads the name the holder put
# there in the same step), [1 while it is inside]
_slot: dict = {}
_depth = [0]

# local reads, or calls meant for another thread while one waits
_FREE_PREFIXES = ("Get_", "Is_")
# ... but these run the transport's progress or an RMA operation
_NOT_FREE = frozenset({"Get_status", "Get_status_any", "Get_status_all", "Get_status_some",
                       "Get_accumulate"})
_FREE_NAMES = frozenset({"Complete", "complete", "Abort", "Test_inter", "toint", "py2f", "f2py",
                         "fromhandle", "tomemory"})
_functions: list = []   # (module, names) of module functions that progress the transport


def installed() -> bool:
    """Whether the guard is in place (a second thread was seen)."""
    return _state["installed"]


def _busy(what: str, holder: tuple) -> MmpiError:
    ident, where = holder
    name = next((t.name for t in threading.enumerate() if t.ident == ident),
                "another thread")
    me = threading.current_thread().name
    return MmpiError(
        f"{what} called from thread {me!r} while thread {name!r} is inside {where}: "
        "mmpi is single-threaded (MPI.Query_thread() is THREAD_SINGLE), and two threads "
        "in it at once lose or mix messages. Call mmpi from one thread, or hold one lock "
        "around every mmpi call (calls from several threads one at a time are fine)")


def _guarded(f, what: str):
    ident = threading.get_ident

    @functools.wraps(f)
    def call(*args, **kwargs):
        slot, depth = _slot, _depth   # (the ones left below: a fork renews them)
        me = ident()
        holder = slot.setdefault(0, (me, what))
        if holder[0] != me:
            raise _busy(what, holder)
        if depth[0]:   # called in again by the thread inside
            return f(*args, **kwargs)
        depth[0] = 1
        try:
            return f(*args, **kwargs)
        finally:
            depth[0] = 0
            slot.clear()
    call.__driller_guarded__ = True   # type: ignore[attr-defined]
    return call


def _free(name: str) -> bool:
    """Whether the guard leaves method or function ``name`` as it is."""
    return name[:1] == "_" or name in _FREE_NAMES or (
        name.startswith(_FREE_PREFIXES) and name not in _NOT_FREE)


def _wrap(cls) -> None:
    for name, f in list(vars(cls).items()):
        if _free(name):
            continue
        kind = type(f)
        if kind in (classmethod, staticmethod):   # (Request.Waitall, Prequest.Startall...)
            inner = f.__func__
            if not getattr(inner, "__driller_guarded__", False):
                setattr(cls, name, kind(_guarded(inner, f"{cls.__name__}.{name}")))
        elif kind is type(_wrap) and not getattr(f, "__driller_guarded__", False):
            setattr(cls, name, _guarded(f, f"{cls.__name__}.{name}"))
        # (properties and other descriptors are left as they are)


def _wrap_functions(module, names) -> None:
    for name in names:
        f = getattr(module, name)
        if not getattr(f, "__driller_guarded__", False):
            setattr(module, name, _guarded(f, f"MPI.{name}"))


def register(*classes) -> None:
    """Classes whose public methods the guard covers (wrapped now if it is in place)."""
    for cls in classes:
        _classes.append(cls)
        if _state["installed"]:
            _wrap(cls)


def register_functions(module, *names: str) -> None:
    """Module functions that progress the transport (``MPI.Finalize``,
    ``MPI.Flush_buffer``...): guarded as the methods are."""
    _functions.append((module, names))
    if _state["installed"]:
        _wrap_functions(module, names)


def install() -> None:
    """Put the guard in place (once; it stays for the life of the process)."""
    with _install_lock:
        if _state["installed"]:
            return
        _state["installed"] = True
        for cls in _classes:
            _wrap(cls)
        for module, names in _functions:
            _wrap_functions(module, names)
        if _state["hooked"] and threading.getprofile() is _first_event:
            threading.setprofile(_state["prev"])   # (later threads: nothing more to do)


def _first_event(frame, event, arg):
    """The profile function of a thread started by ``threading``: installs the guard
    and gives the thread back the profile function set before ours."""
    prev = _state["prev"]
    sys.setprofile(prev)
    install()
    if prev is not None:
        return prev(frame, event, arg)
    return None


def watch() -> None:
    """Called when this process joins a world: guard now if another thread runs,
    else at the start of the first one."""
    if _state["installed"] or os.environ.get("DRILLER_MMPI_THREAD_GUARD", "1") == "0":
        return
    if threading.active_count() > 1:
        install()
    elif not _state["hooked"]:
        _state["hooked"] = True
        _state["prev"] = threading.getprofile()
        threading.setprofile(_first_event)


def _after_fork_in_child() -> None:
    """The child has one thread: a slot held by another thread of the parent (which
    the child does not have) would refuse every call."""
    global _slot, _depth
    _slot, _depth = {}, [0]


os.register_at_fork(after_in_child=_after_fork_in_child)
