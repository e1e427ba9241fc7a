"""``mmpi.spawn(fn, n)``: run ``fn(comm, *args)`` on n forked ranks, get the results.

For notebooks and tests: no launcher, no script file; ``fn`` may be a lambda or
a closure because the ranks are forked (not spawned) from the caller.

Each rank is forked into its own process group, with ``PR_SET_PDEATHSIG`` so it
cannot outlive the caller, calls ``driller.mmpi.init_world(rank, n, fd)`` and
runs ``fn``.  Its result (or its exception with the formatted traceback) comes
back pickled with protocol 5 through a pipe; large buffers (numpy arrays) travel
out of band, read straight into their final memory.  The caller watches one
pidfd per rank and the result pipes with one selector.

Failure propagation is the launcher's: the first rank that raises, exits without
a result or is killed is recorded in the world block (``mark_dead``) so that
ranks blocked on it wake, the others get SIGTERM then SIGKILL after ``grace``
seconds, and :class:`~driller.errors.RankFailedError` is raised naming the rank
and carrying the remote traceback.  Every fd is closed and every rank reaped,
whatever happens (KeyboardInterrupt included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

import os
import pickle
import selectors
import signal
import struct
import sys
import threading
import time
import traceback

from .. import _linux
from ..errors import RankFailedError
from ._procs import (UNKNOWN, describe_status, fork, kill_group, pidfd_kill, raw_wait_status,
                     reissue, shell_status, signal_name, stop_leftovers, wait_status)

__all__ = ["spawn"]

DEFAULT_GRACE = 1.0
_MAGIC = b"DRLR"
_HEAD = struct.Struct("<4sQI")      # magic, pickle length, number of out-of-band buffers
_LEN = struct.Struct("<Q")


# ---------------------------------------------------------------- result framing

def _encode(obj) -> list:
    """Frames of a protocol-5 pickle: header + lengths + pickle, then raw buffers."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = _HEAD.pack(_MAGIC, len(data), len(raws)) + b"".join(
        _LEN.pack(r.nbytes) for r in raws)
    return [head + data, *raws]


def _write_all(fd: int, frames: list) -> None:
    for frame in frames:
        view = memoryview(frame).cast("B")
        while view:
            n = os.write(fd, view)
            view = view[n:]


class _Reader:
    """Reassembles one framed result from a pipe, reading into final buffers."""

    def __init__(self):
        self.parts: list[bytearray] = [bytearray(_HEAD.size)]
        self.index = 0
        self.filled = 0
        self.stage = "head"
        self.eof = False
        self.nbuf = 0

    @property
    def complete(self) -> bool:
        return self.stage == "done"

    def feed(self, fd: int) -> None:
        """Read what is available (fd is non-blocking); sets eof at end of file."""
        while not self.complete and not self.eof:
            target = self.parts[self.index]
            try:
                n = os.readv(fd, [memoryview(target)[self.filled:]]) if len(target) else 0
            except BlockingIOError:
                return
            if len(target) and n == 0:
                self.eof = True
                return
            self.filled += n
            if self.filled == len(target):
                self._advance()

    def _advance(self) -> None:
        self.index += 1
        self.filled = 0
        if self.stage == "head":
            magic, plen, self.nbuf = _HEAD.unpack(self.parts[0])
            if magic != _MAGIC:
                raise ValueError("corrupt result stream from a rank")
            self.plen = plen
            self.stage = "lens"
            self.parts.append(bytearray(_LEN.size * self.nbuf))
            if self.nbuf == 0:
                self._advance()
        elif self.stage == "lens":
            lens = [_LEN.unpack_from(self.parts[1], i * _LEN.size)[0] for i in range(self.nbuf)]
            self.stage = "body"
            self.parts.append(bytearray(self.plen))
            self.parts.extend(bytearray(n) for n in lens)
            if self.plen == 0:  # pragma: no cover - a pickle is never empty
                self._advance()
        elif self.index >= len(self.parts):
            self.stage = "done"
        elif len(self.parts[self.index]) == 0:
            self._advance()

    def value(self):
        """The unpickled message (decoded once)."""
        if not hasattr(self, "_value"):
            self._value = pickle.loads(self.parts[2], buffers=self.parts[3:])
            self.parts = []
        return self._value


# ---------------------------------------------------------------- inside a rank

def _rank_main(rank: int, n: int, world_fd: int, wfd: int, fn, args, kwargs,
               parent: int, close: list[int]) -> None:
    """Body of a forked rank; never returns."""
    status = 70
    me = os.getpid()
    try:
        try:
            _linux.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(137)
            os.setpgid(0, 0)
            # the caller's signal set-up is not the rank's: no wake-up fd shared with
            # the caller's event loop (asyncio, a notebook), default SIGTERM and ^C
            signal.set_wakeup_fd(-1)
            for fd in close:
                os.close(fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from . import _world, init_world
            # children of a rank are not ranks (nor of a job the caller may be in)
            for k in (_world.ENV_RANK, _world.ENV_SIZE, _world.ENV_WORLD_FD):
                os.environ.pop(k, None)
            comm = init_world(rank, n, world_fd)
            result = fn(comm, *args, **kwargs)
            _finalize(comm)
            try:
                frames = _encode(("ok", result))
            except Exception as e:  # noqa: BLE001
                raise RankFailedError(
                    f"the result of rank {rank} ({type(result).__name__}) cannot be "
                    f"pickled: {type(e).__name__}: {e}") from e
            status = 0
        except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
            frames = _error_frames(rank, e)
            status = 1
        if os.getpid() == me:     # not a process that fn forked and that returned
            _write_all(wfd, frames)
    except BaseException:  # noqa: BLE001 - e.g. the caller is gone (EPIPE)
        pass
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
        try:   # (os._exit skips atexit: what the fd proxy must know of our arrays)
            from .. import _publish
            _publish.at_exit()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(status)


def _finalize(comm) -> None:
    """Finish this rank's part of the world (os._exit skips atexit handlers)."""
    from . import _comm
    fin = getattr(_comm, "finalize", None)
    if fin is not None:
        fin()


def _error_frames(rank: int, e: BaseException) -> list:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    head = ("err", f"{type(e).__module__}.{type(e).__qualname__}", str(e), tb)
    try:
        return _encode((*head, e))
    except Exception:  # noqa: BLE001 - an exception that does not pickle
        return _encode((*head, None))


# ---------------------------------------------------------------- the caller

class _Child:
    __slots__ = ("rank", "pid", "pidfd", "rfd", "reader", "result", "exited")

    def __init__(self, rank: int, pid: int, rfd: int):
        self.rank, self.pid, self.rfd = rank, pid, rfd
        self.pidfd = -1
        self.reader = _Reader()
        self.result = None       # (si_code, si_status) once exited
        self.exited = False


def spawn(fn: Callable[..., Any], n: int, args: Iterable[Any] = (),
          kwargs: Mapping[str, Any] | None = None, *, grace: float = DEFAULT_GRACE) -> list[Any]:
    """Run ``fn(comm, *args, **kwargs)`` on ``n`` forked ranks; results by rank.

    ``comm`` is each rank's world communicator.  If a rank raises, exits without
    a result or is killed, the others are stopped (SIGTERM, then SIGKILL after
    ``grace`` seconds) and :class:`~driller.errors.RankFailedError` is raised
    with the rank, its status and the remote traceback.
    """
    if not callable(fn):
        raise TypeError(f"spawn needs a callable fn(comm, ...), got {type(fn).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"spawn needs n >= 1 ranks, got {n!r}")
    args = tuple(args)
    kwargs = dict(kwargs or {})
    from . import _world

    wakeup = _Wakeup()
    try:
        world_fd = _world.create_world(n)
    except BaseException:
        wakeup.close()
        raise
    children: list[_Child] = []
    sel = None
    try:
        parent = os.getpid()
        ours = [world_fd, *wakeup.fds]
        for rank in range(n):
            # A ^C from here until the rank is on the list with its pidfd is raised
            # after that: a KeyboardInterrupt in between would leak the rank or its
            # pipe, and one delivered while os.fork() runs the at-fork hooks
            # (Python code, e.g. logging's lock release) is lost in them.
            with _sigint_deferred():
                rfd, wfd = os.pipe()
                for f in (sys.stdout, sys.stderr):
                    try:
                        f.flush()
                    except Exception:  # noqa: BLE001
                        pass
                try:
                    pid, forked_warnings = fork()   # (warnings issued once tracked)
                except BaseException:
                    os.close(rfd)
                    os.close(wfd)
                    raise
                if pid == 0:  # pragma: no cover - the rank; covered by every test
                    _rank_main(rank, n, world_fd, wfd, fn, args, kwargs, parent,
                               close=[fd for fd in ours if fd != world_fd] + [rfd])
                os.close(wfd)
                try:
                    os.setpgid(pid, pid)   # as the child does: the group exists from now on
                except OSError:
                    pass
                c = _Child(rank, pid, rfd)
                children.append(c)
                ours.append(rfd)
                os.set_blocking(rfd, False)
                try:
                    c.pidfd = _linux.pidfd_open(pid)
                except ProcessLookupError:
                    # already exited and reaped elsewhere (SIGCHLD ignored by the caller)
                    c.exited, c.result = True, UNKNOWN
                    reissue(forked_warnings)
                    continue
                ours.append(c.pidfd)
                # Python 3.12+'s "multi-threaded" warning (spawn called with another
                # thread running), now that the rank is ours to stop if it is an error
                reissue(forked_warnings)
        sel = selectors.DefaultSelector()
        if wakeup.fds:
            sel.register(wakeup.fds[0], selectors.EVENT_READ, ("wakeup", wakeup))
        for c in children:
            sel.register(c.rfd, selectors.EVENT_READ, ("result", c))
            if not c.exited:
                sel.register(c.pidfd, selectors.EVENT_READ, ("exit", c))
        failure = _supervise(sel, children, world_fd, _world, grace)
        stop_leftovers([c.pid for c in children if c.result != UNKNOWN],
                       linger=0 if failure else 0.5,
                       grace=grace, adopted=False)
    finally:
        with _sigint_deferred():   # a second ^C must not leave ranks or fds behind
            _cleanup(children, world_fd, sel)
            wakeup.close()
    if failure is not None:
        raise failure
    return [c.reader.value()[1] for c in children]


def _supervise(sel, children: list[_Child], world_fd: int, world, grace: float):
    """Serve results and exits until every rank has exited; the failure or None."""
    failure = None
    kill_at = None
    exited = [c for c in children if c.exited]      # gone before we got a pidfd
    running = len(children) - len(exited)
    first = True
    while running or first:
        timeout = None
        if kill_at is not None:
            timeout = max(0.0, kill_at - time.monotonic())
        if not first:
            exited = []
        first = False
        for key, _ in (sel.select(timeout) if running else ()):
            kind, c = key.data
            if kind == "wakeup":     # a signal: its Python handler runs right after this
                c.drain()
            elif kind == "result":
                c.reader.feed(c.rfd)
                if c.reader.complete or c.reader.eof:
                    sel.unregister(c.rfd)
            else:
                sel.unregister(c.pidfd)
                c.result = wait_status(c.pidfd, reap=False) or UNKNOWN
                c.exited = True
                running -= 1
                exited.append(c)
        for c in exited:
            if not (c.reader.complete or c.reader.eof):
                c.reader.feed(c.rfd)     # what it wrote before exiting is in the pipe
                if c.reader.complete or c.reader.eof:
                    sel.unregister(c.rfd)
            status = raw_wait_status(*c.result)
            if c.result == UNKNOWN and c.reader.complete:
                status = 0       # it returned its result: take it as a normal exit
            try:
                world.mark_dead(world_fd, c.rank, status)
            except Exception:  # noqa: BLE001 - never let this stop the cleanup
                pass
        if failure is None:
            bad = [(_failure(c, len(children)), c) for c in exited]
            bad = [(err, c) for err, c in bad if err is not None]
            if bad:
                # prefer the cause over its consequences (PeerDiedError, SIGTERM)
                bad.sort(key=lambda ec: (_secondary(ec[0]), ec[1].rank))
                failure = bad[0][0]
                for c in children:
                    if not c.exited:
                        kill_group(c.pid, signal.SIGTERM)
                        pidfd_kill(c.pidfd, signal.SIGTERM)
                kill_at = time.monotonic() + grace
        if kill_at is not None and time.monotonic() >= kill_at:
            for c in children:
                if not c.exited:
                    kill_group(c.pid, signal.SIGKILL)
                    pidfd_kill(c.pidfd, signal.SIGKILL)
            kill_at = None
    return failure


def _secondary(err: RankFailedError) -> bool:
    return (err.exc_type or "").endswith("PeerDiedError")


def _failure(c: _Child, n: int) -> RankFailedError | None:
    """The error for an exited rank, or None if it returned a result."""
    code, st = c.result
    who = f"rank {c.rank} of {n} (pid {c.pid})"
    msg = None
    if c.reader.complete:
        try:
            msg = c.reader.value()
        except Exception as e:  # noqa: BLE001 - the result does not unpickle here
            return RankFailedError(
                f"{who} returned a result that cannot be unpickled in the caller: "
                f"{type(e).__name__}: {e}", rank=c.rank, status=shell_status(code, st),
                exc_type=f"{type(e).__module__}.{type(e).__qualname__}")
    if msg is not None and msg[0] == "ok" and (code, st) in ((os.CLD_EXITED, 0), UNKNOWN):
        return None
    sig = signal_name(st) if code in (os.CLD_KILLED, os.CLD_DUMPED) else None
    if msg is not None and msg[0] == "err":
        _, exc_type, text, tb, exc = msg
        short = exc_type.rsplit(".", 1)[-1]
        err = RankFailedError(f"{who} raised {short}: {text}\n\n"
                              f"Traceback from rank {c.rank}:\n{tb.rstrip()}",
                              rank=c.rank, status=shell_status(code, st), signal=sig,
                              remote_traceback=tb, exc_type=exc_type)
        err.remote_exception = exc
        return err
    if (code, st) == UNKNOWN:
        cause = ("exited without returning a result (its exit status was collected "
                 "elsewhere in this process: is SIGCHLD ignored?)")
    elif code == os.CLD_EXITED:
        cause = (f"exited with code {st} without returning a result "
                 "(os._exit, or a crash in the interpreter?)")
    else:
        cause = f"{describe_status(code, st)} before returning a result"
    return RankFailedError(f"{who} {cause}", rank=c.rank, status=shell_status(code, st),
                           signal=sig)


class _Wakeup:
    """A signal wake-up fd for the select loop, when called in the main thread.

    Without it a ^C that lands between Python's last check for signals and the
    start of epoll_wait() would wait for the next event (the end of the ranks)
    to be noticed.  Not installed if the caller already has one (an asyncio loop
    in this thread): that one is theirs.
    """

    def __init__(self):
        self.fds: tuple[int, ...] = ()
        self.old = -1
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:  # pragma: no cover - not the main interpreter
            os.close(r)
            os.close(w)
            return
        if self.old != -1:
            signal.set_wakeup_fd(self.old)
            os.close(r)
            os.close(w)
            return
        self.fds = (r, w)

    def drain(self) -> None:
        try:
            while os.read(self.fds[0], 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fds:
            signal.set_wakeup_fd(self.old)
            for fd in self.fds:
                os.close(fd)
            self.fds = ()


class _sigint_deferred:
    """Hold back KeyboardInterrupt for the duration (main thread only).

    A ^C that arrives meanwhile is raised on exit, unless another exception is
    already on its way out.
    """

    def __enter__(self):
        self.old = None
        self.hit = False
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.old = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, *_):
        self.hit = True

    def __exit__(self, exc_type, *_):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit and exc_type is None:
                raise KeyboardInterrupt
        return False


def _cleanup(children: list[_Child], world_fd: int, sel) -> None:
    """Kill what still runs, reap every rank, close every fd (also on errors)."""
    alive = [c for c in children if not c.exited and c.pidfd >= 0]
    for c in alive:
        kill_group(c.pid, signal.SIGKILL)
        pidfd_kill(c.pidfd, signal.SIGKILL)
    for c in alive:
        import select
        select.select([c.pidfd], [], [], 10.0)
    for c in children:
        if c.pidfd >= 0:
            if not c.exited:
                kill_group(c.pid, signal.SIGKILL)  # its leftovers, while pgid is ours
            wait_status(c.pidfd, reap=True)
            os.close(c.pidfd)
        # else: reaped by someone else before we had a pidfd; its pid is not ours
        os.close(c.rfd)
    if sel is not None:
        sel.close()
    os.close(world_fd)
