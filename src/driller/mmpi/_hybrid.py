"""Hybrid worlds: one mmpi job across nodes, started by a real MPI launcher.

Under Open MPI's ``mpirun``/``mpiexec``, MPICH's hydra or Slurm's ``srun``
(:func:`launcher` reads their environment), ``COMM_WORLD`` is the MPI job's:
its size and ranks.  Ranks on the same node (the same ``DRILLER_NODE`` value
when it is set, else the same host: hostname and boot id) share one world
block and talk through driller's rings, single-copy rendezvous and objects with
out-of-band buffers; ranks on other nodes are reached through the installed
mpi4py, on a communicator of driller's own (a ``Dup`` of MPI's COMM_WORLD, so
the program's own mpi4py traffic never meets driller's).

The world block of a node is sized for the whole job (rings between ranks of
different nodes are never touched, so they cost no memory), created by the
node's lowest rank and handed to the others through the fd proxy; the proxy's
address, secret and key travel over MPI.

:class:`HybridTransport` is the transport with a second route.  Every record a
rank sends to a rank of another node (an eager message, a rendezvous request,
ACK, FIN, PUSH) is one MPI message (tag ``REC_TAG``) holding the same 64-byte
header and payload a ring would; the receiver hands it to the same record
handler, so the one pure matching engine sees both routes: order per
(source, tag, communicator), ANY_SOURCE/ANY_TAG and probes, requests mixed in
Waitany/Waitall all hold.  Large messages cannot be read across nodes: the
receiver, once matched, posts MPI receives straight into the destination (the
user's buffer, or the object's buffers) and asks the sender (PUSH) to send its
buffers as plain MPI messages (tags ``DATA_TAG0 + token % DATA_TAGS``), one per
buffer, so MPI moves the bytes with no copy of driller's.

Waiting: remote records arrive through MPI, which no futex sees.  A rank with
peers on other nodes that finds nothing to do polls MPI between
``sched_yield`` calls for ``REMOTE_SPIN`` seconds since it last made progress
(each step of a protocol across nodes, a rendezvous' request, push and FIN, or
a hierarchical collective's next stage, is then picked up within microseconds,
not at the end of a nap), then sleeps in short futex naps (50 µs growing to
1 ms) and polls MPI between them.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from .. import _linux
from ..errors import MmpiError
from . import _transport as T
from . import _world as W
from ._objects import dumps

__all__ = ["launcher", "node_id", "HybridTransport", "init", "set_engine", "ENV_NODE",
           "ENV_HYBRID"]

ENV_NODE = "DRILLER_NODE"       # ranks with the same value form a node (tests emulate nodes)
ENV_HYBRID = "DRILLER_HYBRID"   # "0": stay a singleton under an MPI launcher
REC_TAG = 1
DATA_TAG0 = 2
DATA_TAGS = 1 << 14             # MPI guarantees tags up to 32767 at least
NAP_MIN, NAP_MAX = 50e-6, 1e-3
POLL_SECONDS = 20e-6            # the remote fast path polls without yielding, first
# yield-polling MPI before the naps, since the last progress (0: nap at once)
REMOTE_SPIN = float(os.environ.get("DRILLER_MMPI_REMOTE_SPIN_US", 2000)) * 1e-6
_SHARED_MARK = b"driller.sharedarray"   # in a pickle that holds a SharedArray by reference
DEAD_CHECK = 0.05               # how often a nap reports a timeout (the death checks)

# (launcher name, size variable, rank variable): the first one set wins
_LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("MPICH (hydra)", "PMI_SIZE", "PMI_RANK"),
    ("PMIx", "PMIX_SIZE", "PMIX_RANK"),
    ("Slurm", "SLURM_NTASKS", "SLURM_PROCID"),
)


def launcher(env=None) -> tuple[str, int, int] | None:
    """(launcher, size, rank) if a real MPI launcher started this process with more
    than one rank, else None (``DRILLER_HYBRID=0`` also gives None)."""
    env = os.environ if env is None else env
    if env.get(ENV_HYBRID, "").strip() == "0":
        return None
    for name, size_var, rank_var in _LAUNCHERS:
        size, rank = env.get(size_var, ""), env.get(rank_var, "")
        if size.isdigit() and rank.isdigit():
            return (name, int(size), int(rank)) if int(size) > 1 else None
    return None


def node_id(env=None) -> str:
    """This process's node: ``DRILLER_NODE`` if set, else hostname and boot id."""
    env = os.environ if env is None else env
    node = env.get(ENV_NODE, "").strip()
    if node:
        return "node:" + node
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # pragma: no cover - every Linux has it
        boot = "?"
    return f"host:{socket.gethostname()}/{boot}"


def _data_tag(token: int) -> int:
    return DATA_TAG0 + token % DATA_TAGS


class HybridTransport(T.Transport):
    """The transport of a rank of a hybrid world: rings to the ranks of its node,
    MPI (``mpi``, an mpi4py communicator of the whole job) to the others."""

    def __init__(self, world: W.World, rank: int, local: list[int], mpi, MPI):
        super().__init__(world, rank)
        self.local = frozenset(local)
        self.remote = frozenset(r for r in range(self.size) if r not in self.local)
        self.all_local = not self.remote
        self.in_list = [(p, h) for p, h in self.in_list if p in self.local]
        self.no_pull = self.no_pull | self.remote   # nobody reads across nodes
        self.mpi = mpi
        self.MPI = MPI
        self._status = MPI.Status()
        self._BYTE = MPI.BYTE
        self._rec_sends: list = []      # (request, record) of records in flight
        self._data_sends: dict = {}     # dst -> [requests] of pushed buffers in flight
        self._data_recvs: dict = {}     # token -> [requests] posted for a transfer
        self._nap = NAP_MIN
        self._napped = 0.0
        self._spin_until = 0.0          # yield-poll MPI until then (0: from the next idle wait)
        self.node_of = [0 if r in self.local else 1 for r in range(self.size)]  # init sets it

    # ------------------------------------------------------------ routes
    def route(self, world_rank: int) -> str:
        if world_rank == self.rank:
            return "self"
        return "mpi" if world_rank in self.remote else "shm"

    def send_fast(self, dst: int, ctx: int, tag: int, mv, flags: int = 0) -> bool:
        if dst in self.remote:
            # a standard eager send to another node: its record goes to MPI at once
            # (nothing is ever queued for a remote rank, so order is kept)
            n = len(mv)
            if n > self.eager_limit or (flags & T.F_OBJ and _SHARED_MARK in mv):
                return False   # (a SharedArray by reference: send_object sends it by value)
            rec = bytearray(T.HDR_BYTES + n)     # (_put's remote branch, inlined)
            T.HDR.pack_into(rec, 0, T.K_EAGER | flags << 8, ctx, tag, n, 0, 0, n, 0)
            rec[T.HDR_BYTES:] = mv
            self._rec_sends.append((self.mpi.Isend(rec, dst, REC_TAG), rec))
            return True
        return super().send_fast(dst, ctx, tag, mv, flags)

    def _sender(self, dst: int):
        if dst in self.remote:   # through MPI: send_fast's remote branch
            send_fast = self.send_fast
            return lambda ctx, tag, mv, flags=0: send_fast(dst, ctx, tag, mv, flags)
        return super()._sender(dst)

    def _taker(self, src: int):
        if src in self.remote:   # records from another node come through MPI
            return T._declined
        return super()._taker(src)

    def recv_fast(self, src: int, tag: int, ctx: int, mv):
        if src in self.remote:
            return self._recv_fast_remote(src, tag, ctx, mv)
        if src < 0:   # ANY_SOURCE: the general path, which also polls MPI
            return None
        return super().recv_fast(src, tag, ctx, mv)

    def serve_posted(self, src: int) -> bool:
        if src in self.remote:   # (records from another node come through MPI)
            return False
        return super().serve_posted(src)

    def take_fast(self, src: int, tag: int, ctx: int, mv):
        if src in self.remote:   # records from another node come through MPI
            return None
        return super().take_fast(src, tag, ctx, mv)

    def _recv_fast_remote(self, src: int, tag: int, ctx: int, mv):
        """A blocking buffer receive from a rank of another node, when nothing else is
        queued: wait for src's next record, polling MPI without yielding for
        POLL_SECONDS (a sched_yield on a busy machine gives the core away for a
        whole time slice), then yielding, up to SPIN_SECONDS; a plain eager message
        that matches and fits is copied straight into mv; anything else goes to the
        record handler and the general path takes over."""
        eng = self.engine
        if mv is None or eng.posted or eng.unexpected or self.npending:
            return None
        mpi, st = self.mpi, self._status
        probe = mpi.Improbe
        msg = probe(src, REC_TAG, st)
        if msg is None:
            clock = time.perf_counter
            now = clock()
            poll_end, spin_end = now + POLL_SECONDS, now + T.SPIN_SECONDS
            while True:
                msg = probe(src, REC_TAG, st)
                if msg is not None:
                    break
                now = clock()
                if now > poll_end:
                    if now > spin_end:
                        return None
                    os.sched_yield()
        rec = bytearray(st.Get_count(self._BYTE))
        msg.Recv(rec)
        kf, c, tg, nb, _sid, _addr, plen, _ = T.HDR.unpack_from(rec, 0)
        if kf != T.K_EAGER or c != ctx or (tag != tg and tag != -1) or nb > len(mv):
            self._record(src, rec, 0)
            return None
        if nb:
            mv[:nb] = memoryview(rec)[T.HDR_BYTES:T.HDR_BYTES + nb]
        return src, tg, nb

    def pid_of(self, rank: int) -> int:
        return 0 if rank in self.remote else super().pid_of(rank)

    def send_object(self, w: int, ctx: int, tag: int, obj, sync: bool, what: str,
                    pickled=None):
        if w in self.remote and (pickled is None or _SHARED_MARK in pickled[0]):
            # shared arrays travel by value to another node (its processes cannot map
            # this machine's memory); by reference within the node
            from ..sharedarray import pickled_by_value
            with pickled_by_value():
                pickled = dumps(obj)
        return super().send_object(w, ctx, tag, obj, sync, what, pickled)

    # ------------------------------------------------------------ sending records
    def _put(self, dst: int, kindflags: int, ctx: int, tag: int, nbytes: int, sid: int,
             addr: int, payload, plen: int) -> bool:
        if dst not in self.remote:
            return super()._put(dst, kindflags, ctx, tag, nbytes, sid, addr, payload, plen)
        rec = bytearray(T.HDR_BYTES + plen)
        T.HDR.pack_into(rec, 0, kindflags, ctx, tag, nbytes, sid, addr, plen, 0)
        if plen:
            if type(payload) is list:      # a packed object: its pieces in order
                o = T.HDR_BYTES
                for b in payload:
                    n = len(b)
                    rec[o:o + n] = b
                    o += n
            else:
                rec[T.HDR_BYTES:] = payload
        req = self.mpi.Isend(rec, dst, REC_TAG)
        self._rec_sends.append((req, rec))
        return True

    def _push(self, dst: int) -> bool:
        """A remote receiver asked for our buffers (PUSH): one MPI message each,
        straight from our memory."""
        if dst not in self.remote:
            return super()._push(dst)
        q = self.pushes[dst]
        if not q:
            return False
        reqs = self._data_sends.setdefault(dst, [])
        while q:
            token, srcs, _i, _off, trailer = q.popleft()
            self.npending -= 1
            tag = _data_tag(token)
            for addr, n in srcs:
                view = _linux.memory_at(addr, n, readonly=True)
                reqs.append(self.mpi.Isend([view, self.MPI.BYTE], dst, tag))
            if trailer is not None:  # pragma: no cover - only the split protocol has one
                self._put(dst, *trailer, None, 0)
        return True

    # ------------------------------------------------------------ receiving
    def _ask_push(self, r, m):
        token = super()._ask_push(r, m)
        if token is not None and m.source in self.remote:
            tag = _data_tag(token)
            self._data_recvs[token] = [
                self.mpi.Irecv([_linux.memory_at(a, n), self.MPI.BYTE], m.source, tag)
                for a, n in self.sinks[token][0]]
        return token

    def _poll_mpi(self) -> bool:
        """Take every record that came through MPI, finish transfers whose data
        arrived, forget record sends MPI is done with; True if anything moved."""
        did = False
        mpi, MPI, st = self.mpi, self.MPI, self._status
        while True:
            msg = mpi.Improbe(MPI.ANY_SOURCE, REC_TAG, st)
            if msg is None:
                break
            src = st.Get_source()
            rec = bytearray(st.Get_count(MPI.BYTE))
            msg.Recv([rec, MPI.BYTE])
            if rec[0] == T.K_FIN and self._data_sends.get(src):
                # the receiver has every byte: our buffer sends are over (MPI may not
                # have said so yet); the send completes on this FIN
                MPI.Request.Waitall(self._data_sends.pop(src))
            self._record(src, rec, 0)
            did = True
        if self._data_recvs:
            for token, reqs in list(self._data_recvs.items()):
                if MPI.Request.Testall(reqs):
                    del self._data_recvs[token]
                    sink = self.sinks.pop(token)
                    self.stats_pushed += sum(n for _, n in sink[0])
                    if sink[3] is not None:
                        self._run(self.engine.fetched(sink[3]))
                    did = True
        if self._rec_sends and self._rec_sends[0][0].Test():
            self._rec_sends = [x for x in self._rec_sends if not x[0].Test()]
        for dst, reqs in self._data_sends.items():
            if reqs and MPI.Request.Testall(reqs):
                reqs.clear()
        return did

    def progress(self) -> bool:
        did = super().progress()
        if self._poll_mpi():
            did = True
        if did:
            self._spin_until = 0.0
        return did

    def _sleep(self, timeout: float = T.SLEEP_SECONDS) -> bool:
        """Nap on the local rings (records from other nodes come through MPI, which
        no futex sees): a short futex wait, then MPI is polled again.  Reports a
        timeout (for the death checks) once every DEAD_CHECK seconds of naps."""
        if self._poll_mpi():
            self._nap = NAP_MIN
            self._spin_until = 0.0
            return True
        now = time.perf_counter()
        if not self._spin_until:
            self._spin_until = now + REMOTE_SPIN
        if now < self._spin_until:
            os.sched_yield()             # then the caller polls the rings and MPI again
            return True
        nap = self._nap
        if super()._sleep(nap):
            self._nap = NAP_MIN
            self._spin_until = 0.0
            return True
        self._nap = min(nap * 2, NAP_MAX)
        self._napped += nap
        if self._napped >= DEAD_CHECK:
            self._napped = 0.0
            return False
        return True

    def abort(self, code: int) -> None:
        """End the whole job (every node) through the MPI launcher."""
        self.mpi.Abort(code)

    def close(self) -> None:
        super().close()
        MPI = self.MPI
        for _, reqs in self._data_sends.items():
            MPI.Request.Waitall(reqs)
        MPI.Request.Waitall([r for r, _ in self._rec_sends])
        self._data_sends.clear()
        self._rec_sends.clear()


_engine = None   # the real mpi4py.MPI, when `python -m driller.mpi4py` hid it (set_engine)


def set_engine(MPI) -> None:
    """Use this (real) ``mpi4py.MPI`` module as the engine between nodes: for a program
    whose own ``from mpi4py import MPI`` gives driller.MPI (``python -m driller.mpi4py``)."""
    global _engine
    _engine = MPI


def init():
    """Join the MPI job as one rank of a hybrid world; returns (transport, rank, size)."""
    try:
        MPI = _engine
        if MPI is None:
            from mpi4py import MPI
    except ImportError as e:
        raise MmpiError(f"this process was started by an MPI launcher ({launcher()[0]}): a "
                        f"hybrid driller world needs mpi4py (`pip install mpi4py`, or "
                        f"driller[mpi]); set DRILLER_HYBRID=0 to run as a singleton "
                        f"({e})") from None
    comm = MPI.COMM_WORLD.Dup()
    comm.Set_name("driller hybrid world")
    size, rank = comm.Get_size(), comm.Get_rank()
    nodes = comm.allgather(node_id())
    local = [r for r in range(size) if nodes[r] == nodes[rank]]
    leader = local[0]
    from ..proxy import ProxyClient
    client = ProxyClient.get()
    info, fd = None, -1
    if rank == leader:
        fd = W.create_world(size, ring_bytes=W.default_ring_bytes(len(local)))
        key = f"mmpi-hybrid-world-{os.getpid()}-{id(comm):x}"
        client.publish(key, fd, {"what": "hybrid world block", "ranks": local})
        info = (client.address, client.secret, key)
    infos = comm.allgather(info)
    address, secret, key = infos[leader]
    if rank != leader:
        fd, _ = client.fetch(address, secret, key)
    try:
        world = W.World(fd)
    finally:
        os.close(fd)
    t = HybridTransport(world, rank, local, comm, MPI)
    order = list(dict.fromkeys(nodes))
    t.node_of = [order.index(x) for x in nodes]   # node index of every rank
    comm.Barrier()                    # every rank of the node has mapped the block
    if rank == leader:
        client.release(key)
    _install_abort_on_error(comm)
    return t, rank, size


def _install_abort_on_error(comm) -> None:
    """A rank that raises ends the whole job (every node) through the launcher, with
    its traceback and rank named, as ``python -m mpi4py`` does; no rank hangs."""
    previous = sys.excepthook

    def hook(tp, value, tb):
        try:
            sys.stderr.write(f"driller: rank {comm.Get_rank()} of the hybrid world raised "
                             f"{tp.__name__} ({value}); aborting the MPI job\n")
            previous(tp, value, tb)
            sys.stderr.flush()
        finally:
            comm.Abort(1)

    sys.excepthook = hook
