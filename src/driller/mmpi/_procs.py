"""Processes: wait statuses (described in ONE wording), killing, descendants.

Shared by the launcher (``driller run``), :func:`driller.mmpi.spawn` and the
transport (which names how a peer died in PeerDiedError).  A status is either a
``waitid()`` result ``(si_code, si_status)`` or a ``waitpid()``-style status
word; :func:`describe_status` and :func:`describe_wait_status` word both the
same way: "exited with code N", "was killed by signal SIGX (core dumped)".
"""

from __future__ import annotations

import os
import signal
import time
import warnings

from .. import _linux

__all__ = ["UNKNOWN", "shell_status", "raw_wait_status", "signal_name", "describe_status",
           "describe_wait_status", "wait_status", "kill_group", "pidfd_kill", "signal_rank",
           "stop_leftovers",
           "kill_children", "reap_adopted", "rank_pids", "fork", "reissue"]

# The child was reaped by someone else (a SIGCHLD handler of the caller, SIGCHLD
# ignored): its status is lost, and its pid may already be reused.
UNKNOWN = (-1, 255)


def fork() -> tuple[int, list]:
    """``os.fork()``; returns (pid, the warnings it gave, recorded, not shown).

    Python 3.12+ warns when the process has another thread.  Made an error
    (``-W error``) that warning is raised in the parent after the child exists,
    which would leave the child running untracked: the caller hands the list to
    :func:`reissue` once the child is its to stop."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = os.fork()
    return pid, caught


def reissue(caught: list) -> None:
    """Issue again warnings recorded by :func:`fork` (the caller's filters apply)."""
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def shell_status(si_code: int, si_status: int) -> int:
    """A waitid() result as a shell reports it: exit code, or 128 + signal."""
    if si_code in (os.CLD_EXITED, UNKNOWN[0]):
        return si_status
    return 128 + si_status


def raw_wait_status(si_code: int, si_status: int) -> int:
    """A waitid() result encoded like waitpid()'s status word."""
    if si_code in (os.CLD_EXITED, UNKNOWN[0]):
        return (si_status & 0xFF) << 8
    return (si_status & 0x7F) | (0x80 if si_code == os.CLD_DUMPED else 0)


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_status(si_code: int, si_status: int) -> str:
    if si_code == UNKNOWN[0]:
        return "exited (its status was collected by another part of this process)"
    if si_code == os.CLD_EXITED:
        return f"exited with code {si_status}"
    core = " (core dumped)" if si_code == os.CLD_DUMPED else ""
    return f"was killed by signal {signal_name(si_status)}{core}"


def describe_wait_status(status: int) -> str:
    """:func:`describe_status` of a waitpid()-style status word (as the launcher
    records a rank's death in the world block)."""
    if os.WIFSIGNALED(status):
        return describe_status(os.CLD_DUMPED if os.WCOREDUMP(status) else os.CLD_KILLED,
                               os.WTERMSIG(status))
    if os.WIFEXITED(status):
        return describe_status(os.CLD_EXITED, os.WEXITSTATUS(status))
    return f"ended with wait status {status:#x}"


def wait_status(pidfd: int, *, reap: bool) -> tuple[int, int] | None:
    """(si_code, si_status) of the exited child behind pidfd, or None if running.

    With ``reap=False`` the child stays a zombie (WNOWAIT): its pid, and its
    process group id, cannot be reused yet.
    """
    flags = os.WEXITED | os.WNOHANG | (0 if reap else os.WNOWAIT)
    try:
        res = os.waitid(os.P_PIDFD, pidfd, flags)
    except ChildProcessError:  # someone else reaped it
        return UNKNOWN
    if res is None:
        return None
    return res.si_code, res.si_status


def kill_group(pgid: int, sig: int) -> None:
    """Signal a rank's process group (only while the rank is unreaped)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pidfd_kill(pidfd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, OSError):
        pass


def signal_rank(pid: int, pidfd: int, sig: int) -> None:
    """Signal a rank once, and the processes still in its process group: the group
    (the rank and what it started), then the rank by its pidfd only if it has left
    that group (``setsid``/``setpgid`` in its own code).  Sending to both at once
    delivered a rank its ^C twice whenever it ran between the two sends (a second
    KeyboardInterrupt in the middle of the first one's traceback).  The group first,
    then the check: a rank leaving its group between them is signalled twice, never
    missed.  (Only while the rank is unreaped: its pid, and so its group's id,
    cannot be reused.)"""
    kill_group(pid, sig)
    try:
        left = os.getpgid(pid) != pid
    except (ProcessLookupError, PermissionError):
        left = True     # (gone: the pidfd says so too, and sends nothing)
    if left:
        pidfd_kill(pidfd, sig)


def _select_wait(fds: list[int], timeout: float) -> None:
    import select
    select.select(fds, [], [], timeout)


_MAX_ROUNDS = 64      # scans of stop_leftovers (each SIGKILL round takes a level of a tree)


def stop_leftovers(pgids: list[int], *, linger: float, grace: float, adopted: bool,
                   skip=frozenset(), wait=_select_wait, urgent=lambda: False) -> int:
    """Leave no process behind.

    The leftovers are the live members of the given process groups and, with
    ``adopted``, our own live children (the orphans a subreaper adopts) except
    those in ``skip`` (children we had before: not the job's).  They may
    take up to ``linger`` seconds to exit by themselves (a server that stops when
    its clients are gone); then they get SIGTERM, and SIGKILL ``grace`` seconds
    later.  SIGKILL rounds repeat while leftovers remain: the children of a
    killed leftover are reparented to us (a subreaper) and found by the next
    scan.  Once ``urgent()`` is true (the job must end now) the next round is a
    SIGKILL one.  ``wait(pidfds, timeout)`` sleeps until one of them exits or the
    timeout passes.  Call this while the group leaders are unreaped zombies, so
    that the pgids cannot have been reused.  Returns how many had to be signalled.
    """
    me = os.getpid()
    signalled: set[int] = set()
    stages = ((None, linger), (signal.SIGTERM, grace), (signal.SIGKILL, grace))
    stage = 0
    killed: list[int] = []
    for _ in range(_MAX_ROUNDS):
        if urgent():
            stage = 2
        pids = _leftovers(pgids, me, adopted, skip)
        if not pids or (stage == 2 and pids == killed):
            break           # (the same ones again: they outlived SIGKILL + grace)
        if stage == 2:
            killed = pids
        sig, delay = stages[stage]
        if sig is not None:
            signalled.update(pids)
            for pgid in pgids:
                kill_group(pgid, sig)
        fds = []
        for pid in pids:
            try:
                fd = _linux.pidfd_open(pid)
            except OSError:
                continue
            # the pid was found by a /proc scan: make sure the process the pidfd
            # holds is still one of ours (not an unrelated one that reused the pid)
            ids = _linux.proc_ids(pid)
            if ids is None or not (ids[2] in pgids or (adopted and ids[1] == me
                                                       and pid not in skip)):
                os.close(fd)
                continue
            fds.append(fd)
            if sig is not None:
                pidfd_kill(fd, sig)
        try:
            deadline = time.monotonic() + delay
            pending = list(fds)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0 or (sig != signal.SIGKILL and urgent()):
                    break
                wait(pending, left)
                pending = [fd for fd in pending if _linux.pidfd_alive(fd)]
                if adopted:
                    reap_adopted(skip)
        finally:
            for fd in fds:
                os.close(fd)
        stage = min(stage + 1, 2)
    if adopted:
        reap_adopted(skip)
    return len(signalled)


def _leftovers(pgids: list[int], me: int, adopted: bool, skip) -> list[int]:
    kids: list[int] = []
    if adopted:
        kids = [p for p in _linux.child_pids()
                if p not in skip and p not in rank_pids and _linux.pid_alive(p)]
        if not kids:
            # We are a subreaper and the leaders are dead: a live descendant of theirs
            # was reparented to us, or has a live ancestor that was.  No child: nothing
            # is left, and the scan of every process (/proc/*/stat) is not needed.
            return []
    pids = {p for p in _linux.group_pids(pgids) if p != me} if pgids else set()
    pids.update(kids)
    return sorted(pids)


rank_pids: set[int] = set()


def reap_adopted(skip=frozenset()) -> None:
    """Reap exited children that are not ranks (orphans adopted as subreaper)."""
    for pid in _linux.child_pids():
        if pid in rank_pids or pid in skip:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def kill_children() -> None:
    """SIGKILL and reap every child of this process, and the orphans they leave.

    For a process whose children are all the job's (the ``driller run``
    process, a subreaper): a child cannot be reused before we reap it.
    """
    for _ in range(_MAX_ROUNDS):
        kids = _linux.child_pids()
        if not kids:
            return
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
