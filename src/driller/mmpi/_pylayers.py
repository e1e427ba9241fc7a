"""The private helpers mpi4py's pure-Python layers import from ``mpi4py.MPI``.

``mpi4py.util.pkl5`` (and, through it, ``mpi4py.futures`` with pkl5 on) does
``from mpi4py.MPI import _comm_lock, _commctx_intra, _commctx_inter``; under the
shim ``mpi4py.MPI`` is :mod:`driller.MPI`, so they are here, with mpi4py's
semantics:

* ``_comm_lock(comm, key)``: a lock per communicator object and key (a context
  manager), so that threads sharing a communicator keep a multi-message
  exchange together; ``_comm_lock_table(comm)`` the dict of them (``bcast``
  takes ``"bcast"``, as mpi4py's);
* ``_commctx_intra(comm)``: ``(dupcomm, tag)``: a duplicate of ``comm`` made on
  first use (collective, like every call that uses it) and kept with ``comm``,
  and the next tag of a counter that every rank advances in step, so that
  collectives built from point-to-point messages never match the user's;
* ``_commctx_inter(comm)``: ``(dupcomm, tag, localcomm, low_group)`` for an
  intercommunicator: also the local group's intracommunicator and whether this
  side is the "low" group of the merge.

The state lives here, keyed by the communicator object (dropped with it).
"""

from __future__ import annotations

import threading
import weakref

_TAG_LIMIT = (1 << 31) - 1     # the largest tag driller accepts (the TAG_UB attribute)

__all__ = ["comm_lock", "comm_lock_table", "commctx_intra", "commctx_inter", "spawn",
           "patch_futures", "SPAWN_HELP"]

_tables: dict[int, dict] = {}      # id(comm) -> {key: Lock} (mpi4py's _comm_lock_table)
_ctx: dict[int, list] = {}          # id(comm) -> [dupcomm, next tag, localcomm, low_group]
_guard = threading.Lock()


def _drop(key: int) -> None:
    _ctx.pop(key, None)
    _tables.pop(key, None)


def comm_lock_table(comm) -> dict:
    """The locks of ``comm`` by key (made on first use, dropped with ``comm``)."""
    with _guard:
        key = id(comm)
        table = _tables.get(key)
        if table is None:
            weakref.finalize(comm, _drop, key)
            table = _tables[key] = {}
        return table


def comm_lock(comm, key: object = None) -> threading.Lock:
    """The lock of ``comm`` for ``key`` (made on first use)."""
    table = comm_lock_table(comm)
    lock = table.get(key)
    if lock is None:
        with _guard:
            lock = table.setdefault(key, threading.Lock())
    return lock


def _lookup(comm) -> list:
    key = id(comm)
    entry = _ctx.get(key)
    if entry is None:
        comm_lock_table(comm)           # (its finalizer drops this entry too)
        entry = _ctx[key] = [comm.Dup(), 0, None, False]
    if entry[1] >= _TAG_LIMIT:
        entry[1] = 0
    return entry


def commctx_intra(comm):
    """Create/get intracommunicator duplicate: ``(dupcomm, tag)``."""
    with comm_lock(comm, "@commctx_intra"):
        entry = _lookup(comm)
        tag = entry[1]
        entry[1] += 1
        return entry[0], tag


def commctx_inter(comm):
    """Create/get intercommunicator duplicate: ``(dupcomm, tag, localcomm, low_group)``."""
    with comm_lock(comm, "@commctx_inter"):
        entry = _lookup(comm)
        if entry[2] is None:
            localsize, remotesize = comm.Get_size(), comm.Get_remote_size()
            merged = comm.Merge(localsize > remotesize)
            if localsize != remotesize:
                low = localsize < remotesize
            else:
                low = merged.Get_rank() < localsize
            group = comm.Get_group()
            entry[2] = merged.Create(group)
            entry[3] = bool(low)
            merged.Free()
        tag = entry[1]
        entry[1] += 1
        return entry[0], tag, entry[2], entry[3]


SPAWN_HELP = ("driller starts every rank up front: run the program as `driller run -n N "
              "-m mpi4py.futures prog.py` (rank 0 runs prog.py, ranks 1..N-1 are the "
              "MPIPoolExecutor's workers), or start N ranks with `driller run -n N prog.py` "
              "and use MPICommExecutor")


def spawn(command, args=None, maxprocs: int = 1, info=None, root: int = 0,
          errcodes=None):
    """``Comm.Spawn``: not provided by driller (every rank is started by ``driller
    run``); raises MmpiNotImplementedError saying what to run instead."""
    from ..errors import MmpiNotImplementedError
    raise MmpiNotImplementedError(
        f"Comm.Spawn({command!r}, maxprocs={maxprocs}) is not supported by driller.mmpi: "
        f"{SPAWN_HELP}")


def patch_futures(core) -> None:
    """Under the shim, after ``mpi4py.futures._core`` loads: a pool whose workers
    cannot be spawned is marked broken with :data:`SPAWN_HELP` (its futures raise
    ``BrokenExecutor`` saying what to run), where the unchanged module would leave
    the failure in its manager thread and the program waiting forever."""
    manager = getattr(core, "_manager_spawn", None)
    if manager is None or getattr(manager, "_driller", False):
        return

    def _manager_spawn(pool, options):
        try:
            return manager(pool, options)
        except NotImplementedError as e:
            pool.broken(f"MPIPoolExecutor cannot spawn its workers: {e}")

    _manager_spawn._driller = True
    core._manager_spawn = _manager_spawn

