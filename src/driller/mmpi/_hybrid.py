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
rank sends to a rank of another node (an eager message, a rendezvous request, an
ACK) is one MPI message (tag ``REC_TAG``) holding the same 64-byte header and
payload a ring would (its last word names the sender); the receiver hands it to
the same record handler, so the one pure matching engine sees both routes: order
per (source, tag, communicator), ANY_SOURCE/ANY_TAG and probes, requests mixed in
Waitany/Waitall all hold.  Each rank keeps ``POOL`` receives of ``REC_TAG`` from
any source preposted into buffers of ``HDR_BYTES + INLINE`` bytes and takes the
records in the order the receives were posted (MPI fills them in arrival order,
so per-source order is kept); a record never exceeds that size on this route.  A
blocking receive that took a record leaves its receive to be started again at
the next look at the pool (it is the newest: the order holds), so that in a
ping-pong that runs while the reply is on its way.

Messages larger than ``INLINE`` bytes cross nodes as a rendezvous request
(``K_RTS``, sender id 0: no FIN comes back; a buffer's by a blocking ``Send``, and
``Comm.Send``'s straight from there: :meth:`HybridTransport.send_blocking`)
followed at once by the data as
plain MPI messages sent straight from the sender's memory, one per buffer (a
buffer message: one; an object: each out-of-band buffer, then its pickle stream
when that is large, as ``mpi4py.util.pkl5`` does), each on a tag of its own
(``DATA_TAG0`` + a sequence number per destination, wrapping below MPI's
``TAG_UB``: the "address" of the data on this route, where the shared-memory
route has a pointer) on a second communicator (``mpi_data``, so that no tag of
theirs meets one used on the first).  The receiver, once the request is matched, posts MPI
receives straight into the destination (the user's buffer, or the object's
buffers); the send completes when MPI says its data messages did (``Issend``
for a synchronous send), the receive when MPI says its receives did.  A record
whose own payload exceeds ``INLINE`` (an object's table of very many buffers)
is sent as a header that names a data tag, and its payload on that tag; the
receiver takes the payload at once.

Waiting: remote records arrive through MPI, which no futex sees.  A rank with
peers on other nodes that finds nothing to do polls MPI between
``sched_yield`` calls for ``REMOTE_SPIN`` seconds since it last made progress,
longer while its own data messages are in flight (``INFLIGHT_SPIN`` seconds per
byte: a transfer MPI is moving ends within its bandwidth), so each step of a
protocol across nodes is picked up within microseconds, not at the end of a
nap; then it sleeps in short futex naps (50 µs growing to 1 ms) and polls MPI
between them.

A direct route (every message of a communicator's point-to-point context to
another node as a plain MPI message on an MPI twin of that communicator, with
the user's tag, no header and no pool) was measured and designed, not built:
docs/scaleout.md, "A direct route between nodes" (benchmarks/direct_proto.py).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from .. import _linux
from ..errors import MmpiError
from . import _engine as E
from . import _transport as T
from . import _world as W
from ._env import BYTES, MICROSECONDS, env_float, env_int
from ._objects import PART, TABLE, dumps, unpack_array

__all__ = ["launcher", "node_id", "HybridTransport", "init", "set_engine", "ENV_NODE",
           "ENV_HYBRID"]

ENV_NODE = "DRILLER_NODE"       # ranks with the same value form a node (tests emulate nodes)
ENV_HYBRID = "DRILLER_HYBRID"   # "0": stay a singleton under an MPI launcher
REC_TAG = 1
BOARD_TAG = 1                   # the hybrid board's histories (_coll/_hboard), on ``mpi_board``
DATA_TAG0 = 2                   # data messages: DATA_TAG0 + a sequence number per destination
POOL = 8                        # receives of REC_TAG kept preposted (any source)
# records up to this many bytes go by a blocking Send (below every MPI's eager limit)
SEND_MAX = env_int("DRILLER_MMPI_REMOTE_SEND_MAX", 1024, BYTES)
# bytes inline in a record
INLINE = env_int("DRILLER_MMPI_REMOTE_INLINE", 16 << 10, BYTES)
NAP_MIN, NAP_MAX = 50e-6, 1e-3
POLL_SECONDS = 20e-6            # the remote fast path polls without yielding, first
# yield-polling MPI before the naps, since the last progress (0: nap at once)
REMOTE_SPIN = env_float("DRILLER_MMPI_REMOTE_SPIN_US", 2000, MICROSECONDS) * 1e-6
INFLIGHT_SPIN = 1e-9            # more yield-polling per byte of our data messages in flight
_SHARED_MARK = b"driller.sharedarray"   # in a pickle that holds a SharedArray by reference
_SRC_MASK = (1 << 32) - 1       # a record's last word: sender rank | long-payload tag << 32
DEAD_CHECK = 0.05               # how often a nap reports a timeout (the death checks)


def _plain_dtypes() -> frozenset:
    """The ids of numpy's own dtype instances whose arrays the facade sends as
    their bytes (a memoryview format in ``_comm._FLAT_FORMATS``, native order):
    ``_array_sender`` takes arrays of those alone (numpy keeps them for the
    process's life, so no other object can take their ids)."""
    import numpy as np
    ids = set()
    for c in "bBhHiIlLqQefd?":
        dt = np.dtype(c)
        if memoryview(np.zeros(1, dt)).format == c:
            ids.add(id(dt))
    return frozenset(ids)


_PLAIN_DTYPES = _plain_dtypes()

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


class _Flag:
    """What the remote fast path waits for: one MPI receive of a matched message."""

    __slots__ = ("done",)

    def __init__(self):
        self.done = False


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
        # data messages on a communicator of their own: their tags (up to TAG_UB) never
        # meet a tag used on ``mpi`` (REC_TAG, or what collectives use there)
        self.mpi_data = mpi.Dup()
        self.mpi_data.Set_name("driller hybrid data")
        # the hybrid board's histories: on a communicator of their own, so that those
        # nobody took yet never lengthen a search for a record or a data message
        self.mpi_board = mpi.Dup()
        self.mpi_board.Set_name("driller hybrid board")
        self._BYTE = MPI.BYTE
        self.inline_max = max(0, INLINE)
        ub = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)
        self._tag_span = max(1, min(int(ub) if ub else 32767, 1 << 31) - DATA_TAG0)
        self._seq = [0] * self.size     # dst -> next data tag (minus DATA_TAG0)
        self._rec_sends: list = []      # (request, record) of records in flight
        self._rec_limit = 64            # how many before _keep_rec tests them all
        self._data_sends: list = []     # [requests, send op, bytes] of data messages in flight
        self._data_recvs: dict = {}     # token -> (requests, receive or _Flag, bytes, truncated)
        self._inflight = 0              # bytes of our data messages in flight
        self._nap = NAP_MIN
        self._napped = 0.0
        self._spin_until = 0.0          # yield-poll MPI until then (0: from the next idle wait)
        self._last_sleep = 0.0          # when _sleep was last called
        self.node_of = [0 if r in self.local else 1 for r in range(self.size)]  # init sets it
        # the hybrid board (_coll/_hboard sets both): called whenever a wait found
        # nothing to do (the slow path only: _sleep)
        self.hboard = None
        self.on_remote_stuck = None
        self._board_tx: list = []       # (request, buffer) of board words in flight
        # the preposted receives of records (persistent: Start is cheaper than Irecv),
        # [request, buffer, its memoryview], in posting order from the head on
        self._pool = []
        self._ph = 0
        # the receive of the slot a blocking receive last took (the newest slot): it is
        # started again at the next look at the pool (:meth:`_restart`), not before the
        # receive returns, so that in a ping-pong it runs while the reply is on its way
        self._lazy = None
        if self.remote:
            for _ in range(POOL):
                buf = bytearray(T.HDR_BYTES + self.inline_max)
                req = mpi.Recv_init([buf, self._BYTE], MPI.ANY_SOURCE, REC_TAG)
                req.Start()
                self._pool.append([req, buf, memoryview(buf)])

    # ------------------------------------------------------------ routes
    def route(self, world_rank: int) -> str:
        if world_rank == self.rank:
            return "self"
        return "mpi" if world_rank in self.remote else "shm"

    def _tags(self, dst: int, k: int) -> int:
        """The first of ``k`` consecutive data tags for messages to ``dst``."""
        seq = self._seq[dst]
        if seq + k > self._tag_span:
            seq = 0
        self._seq[dst] = seq + k
        return DATA_TAG0 + seq

    def _remote_sender(self, dst: int):
        """``senders[dst]`` for a rank of another node: a standard eager send, its
        record to MPI at once (nothing is ever queued for a remote rank, so order is
        kept); False (the general path) beyond ``inline_max`` bytes, or for an object
        holding a SharedArray by reference (send_object sends it by value).  The
        record is the packed header and the payload joined in one ``bytes`` (cheaper
        than packing into a buffer and copying into it), sent by ``Isend``: kept
        (``_keep_rec``) unless MPI is done with it at once.  (A blocking ``Send``
        of a record of 720 bytes waited for the receiver to enter MPI in Open MPI's
        shared-memory transport: an ``Isend`` returned only then, which deadlocks
        a program that makes its receiver wait for the sender.)"""
        inline, me = self.inline_max, self.rank
        head, K_EAGER, F_OBJ = T.HDR.pack, T.K_EAGER, T.F_OBJ
        Isend, keep = self.mpi.Isend, self._keep_rec
        small = min(SEND_MAX - T.HDR_BYTES, inline)
        # the header of the last plain buffer sent (it depends on nothing else): the
        # same again (a loop's messages) is joined to the payload without packing
        lc, lt, ln = -1, -1, -1
        lh = b""

        def send(ctx, tag, mv, flags=0):
            nonlocal lc, lt, ln, lh
            n = len(mv)
            if n <= small:
                if flags:
                    if flags & F_OBJ and _SHARED_MARK in mv:
                        return False
                    rec = head(K_EAGER | flags << 8, ctx, tag, n, 0, 0, n, me) + mv
                else:
                    if n != ln or tag != lt or ctx != lc:
                        lh = head(K_EAGER, ctx, tag, n, 0, 0, n, me)
                        lc, lt, ln = ctx, tag, n
                    rec = lh + mv
                r = Isend(rec, dst, REC_TAG)
                if not r.Test():
                    keep(r, rec)
                return True
            if n > inline or (flags & F_OBJ and _SHARED_MARK in mv):
                return False
            rec = head(K_EAGER | flags << 8, ctx, tag, n, 0, 0, n, me) + mv
            keep(Isend(rec, dst, REC_TAG), rec)
            return True
        return send

    def _post_rec(self, rec, dst: int) -> None:
        """Send a record to ``dst`` of another node by ``Isend``, kept (``_keep_rec``)
        unless MPI is done with it at once (a blocking ``Send`` may wait for the
        receiver: _remote_sender, whose hot path inlines the same three steps)."""
        r = self.mpi.Isend(rec, dst, REC_TAG)
        if not r.Test():
            self._keep_rec(r, rec)

    def _keep_rec(self, r, rec) -> None:
        """Keep a record's request (and its bytes) until MPI is done with it: tested
        by _poll_mpi, and here each time the kept ones double (Send/Recv loops never
        reach _poll_mpi: each test of all of them at every new one made posting n
        of them cost n squared while the receiver was busy)."""
        sends = self._rec_sends
        sends.append((r, rec))
        if len(sends) > self._rec_limit:
            self._rec_sends = sends = [x for x in sends if not x[0].Test()]
            self._rec_limit = max(64, 2 * len(sends))

    def isend(self, op: T.SendOp, protocol: int | None = None) -> T.SendOp:
        if protocol is None and op.nbytes > self.inline_max and op.dest in self.remote:
            if not op.flags:   # a buffer: its request and its data, without the engine
                return self._isend_remote(op)
            protocol = E.RNDV   # its data as MPI messages of its own, straight from op.mv
        return super().isend(op, protocol)

    def _array_sender(self, dst: int):
        """``array_senders[dst]`` for a rank of another node: ``Comm.Send``'s path
        for a numpy array (its exact type) of a plain native dtype, C-contiguous, of
        up to ``SEND_MAX`` bytes with the header: the record ``_remote_sender`` would
        send for its byte view (the same header, the same blocking ``Send``), joined
        from the array itself, so that the facade makes no ``memoryview`` and no
        cast of it (≈ 0.36 µs per call in one process here, against ≈ 0.1 µs for
        the join; mpi4py's whole 8-byte one way between emulated nodes is
        ≈ 0.65 µs).  False (the general path, which parses the buffer): another
        dtype (an equal dtype that is not numpy's own instance too), a larger or a
        non-contiguous array (``bytes.join`` asks for a C-contiguous buffer).  Other
        ranks of this node: False (the facade's byte view, for the rings)."""
        if dst not in self.remote:
            return False
        me, plain = self.rank, _PLAIN_DTYPES
        head, K_EAGER, Send = T.HDR.pack, T.K_EAGER, self.mpi.Send
        small = min(SEND_MAX - T.HDR_BYTES, self.inline_max)
        join = b"".join
        # the last header packed and what it says (nbytes, tag, context), one tuple:
        # read at once, so that a thread's send never joins another's header
        last = (-1, -1, -1, b"")

        def send(ctx, tag, a):
            nonlocal last
            if id(a.dtype) not in plain:
                return False
            n = a.nbytes
            if n > small:
                return False
            h = last
            if n != h[0] or tag != h[1] or ctx != h[2]:
                h = last = (n, tag, ctx, head(K_EAGER, ctx, tag, n, 0, 0, n, me))
            try:
                rec = join((h[3], a))
            except TypeError:   # not C-contiguous: the facade's parse copies it
                return False
            Send(rec, dst, REC_TAG)
            return True
        return send

    def isend_buffer(self, dst: int, ctx: int, tag: int, mv) -> T.SendOp | None:
        """``Comm.Isend`` of a buffer of more than ``inline_max`` bytes to a rank of
        another node (its sender closure declined it): started as ``isend``'s
        (_isend_remote: the request record and the data message, no engine) without
        the facade's general path (the buffer parsed again, the checks again, the
        dispatch).  None: not such a send."""
        if len(mv) <= self.inline_max or dst not in self.remote:
            return None
        return self._isend_remote(T.SendOp(dst, tag, ctx, mv))

    def send_blocking(self, dst: int, ctx: int, tag: int, mv) -> bool:
        """Comm.Send of a buffer of more than ``inline_max`` bytes to a rank of
        another node (its sender closure declined it): started as _isend_remote's
        and waited for here, without the facade's general path (a request, checks
        again, the wait's dispatch: microseconds of Python on the critical path of
        every exchange).  Its data message alone is waited for, as a blocking
        receive waits (_await_head): records arriving meanwhile stay in the pool, so
        the next Recv takes them on its fast path; past that window, the general wait
        (naps, progress, death checks).  False: not such a send."""
        n = len(mv)
        if n <= self.inline_max or dst not in self.remote:
            return False
        data = self._start_remote(dst, ctx, tag, mv, False)
        done = False
        try:
            done = self._await_head(data, dst, None, n * INFLIGHT_SPIN)
        finally:
            if not done:   # past the window, or a signal's exception: MPI may still
                op = self._keep_remote(T.SendOp(dst, tag, ctx, mv), data)   # read mv
        if not done:
            T.Transport.wait(self, op, dst)
        return True

    def _isend_remote(self, op: T.SendOp) -> T.SendOp:
        """A buffer of more than ``inline_max`` bytes to a rank of another node, sent
        without the engine (_start_remote); ``op`` is done when MPI says its data
        message is (_poll_data)."""
        data = self._start_remote(op.dest, op.context, op.tag, op.mv, op.sync)
        return self._keep_remote(op, data)

    def _start_remote(self, dst: int, ctx: int, tag: int, mv, sync: bool):
        """The request record (as _put_send's, sender id 0: no FIN comes back) and the
        data message straight from ``mv``, two MPI calls; the engine never holds it
        (records to other nodes are never queued, so order is MPI's: kept).  The
        record (64 bytes) goes by ``Isend``, kept unless MPI is done with it at once
        (a blocking ``Send`` may wait for the receiver, _remote_sender).  Returns the
        data message's request (``Issend``'s if ``sync``: done once matched)."""
        n = len(mv)
        first = self._tags(dst, 1)
        rec = T.HDR.pack(T.K_RTS | (T.F_SYNC if sync else 0) << 8, ctx, tag, n, 0, first, 0,
                         self.rank)
        self._post_rec(rec, dst)
        return (self.mpi_data.Issend if sync else self.mpi_data.Isend)(
            [mv, self._BYTE], dst, first)

    def _keep_remote(self, op: T.SendOp, data) -> T.SendOp:
        """Keep ``op`` (its data message's request ``data`` in flight) until MPI says
        it is done (_poll_data; wait finds the request in ``op.keep``)."""
        op.protocol, op.state = E.RNDV, E.S_WAIT_FIN   # (id 0: no engine knows it)
        op.keep = ent = ([data], op, op.nbytes)
        self._data_sends.append(ent)
        self._inflight += op.nbytes
        return op

    def _sender(self, dst: int):
        if dst in self.remote:   # through MPI
            return self._remote_sender(dst)
        return super()._sender(dst)

    def _taker(self, src: int):
        if src in self.remote:   # records from another node come through MPI
            return self._remote_taker(src)
        return super()._taker(src)

    def _remote_taker(self, src: int):
        """``takers[src]`` for a rank of another node, also its ``recvers[src]`` (one
        frame less on a blocking receive's path): ``take(tag, ctx, mv, cap=-1,
        wait=False)`` looks at the record at the head of the pool when nothing the
        engine holds could come before it (:meth:`_clear`); ``cap`` >= 0 (a bytearray
        or mmap spec) declines: None, the general path.  A plain eager message
        from ``src`` that this receive matches and that fits is copied into ``mv``:
        (source, tag, nbytes).  Without ``wait``: False when the head's receive is not
        complete, or holds a buffer's rendezvous request for this receive (Recv then
        calls recv_fast, which waits); None otherwise (another record is handed to
        the record handler: use the general path).  With ``wait`` (recv_fast, a
        blocking receive): the head is waited for (:meth:`_await_head`; None once
        its window has passed or the engine holds what could come first); a
        rendezvous request for a buffer is received straight into ``mv``, and with
        ``mv`` None (an object receive) a small pickled object is returned as
        _take_fast's are.  A record taken here (a plain eager message, a buffer's
        rendezvous request, a small object) leaves its slot's receive to be started
        again at the next look at the pool (``_lazy``, :meth:`_restart`): not on the
        critical path between the message's arrival and the return."""
        eng = self.engine
        posted, unexpected = eng.posted, eng.unexpected
        t_ = self
        pool = self._pool
        unpack = T.HDR.unpack_from
        HB = T.HDR_BYTES
        K_EAGER, K_RTS = T.K_EAGER, T.K_RTS
        K_OBJ, K_ARRAY = T.K_EAGER | T.F_OBJ << 8, T.K_EAGER | (T.F_OBJ | T.F_ARRAY) << 8
        nxt = [(i + 1) % POOL for i in range(POOL)]
        clear, take_slot = self._clear, self._take_slot
        await_head = self._await_head

        def take(tag, ctx, mv, cap=-1, wait=False):
            q = t_._lazy
            if q is not None:   # (_restart inlined)
                t_._lazy = None
                q.Start()
            if t_.npending or cap >= 0 or (posted or unexpected) and not clear(src, ctx):
                return None
            i = t_._ph
            slot = pool[i]
            req = slot[0]
            if not req.Test():
                if not wait:
                    return False
                if not await_head(req, src, ctx):
                    return None
            kf, c, tg, nb, _sid, addr, plen, w7 = unpack(slot[1], 0)
            if w7 != src or c != ctx or (tag != tg and tag != -1):
                take_slot(i)
                return None
            if mv is not None:
                if nb > len(mv):
                    take_slot(i)
                    return None
                if kf == K_EAGER:   # the hot path
                    if nb:
                        mv[:nb] = slot[2][HB:HB + nb]
                    t_._lazy = req   # (started again at the next look at the pool)
                    t_._ph = nxt[i]
                    return src, tg, nb
                if kf == K_RTS and not plen:   # a buffer, its data on tag addr: into mv
                    if not wait:
                        return False
                    data = t_.mpi_data.Irecv([mv[:nb], t_._BYTE], src, addr)
                    # (its slot is started again at the next look at the pool, as the
                    # hot path's: not between the data's arrival and the return)
                    t_._lazy = req
                    t_._ph = nxt[i]
                    # (MPI often copies at once: the data was there)
                    if not data.Test() and not await_head(data, src, None,
                                                          nb * INFLIGHT_SPIN):
                        flag = _Flag()
                        t_._watch([data], nb, flag)
                        t_.wait(flag, src)
                    return src, tg, nb
            elif wait:   # an object receive: a small pickled object, as _take_fast
                if kf == K_OBJ:
                    res = src, tg, bytes(slot[2][HB:HB + plen])
                elif kf == K_ARRAY:
                    pay = slot[2][HB:HB + plen]
                    res = src, tg, (unpack_array(pay), None, nb)
                    del pay
                else:
                    res = None
                if res is not None:
                    t_._lazy = req
                    t_._ph = nxt[i]
                    return res
            take_slot(i)
            return None
        return take

    def _recver(self, src: int):
        """``recvers[src]`` (Recv's fast path, ``(tag, ctx, mv, cap, wait)``, called
        with ``wait`` true) for a rank of another node: its taker itself (the wait
        at once, not a take that finds nothing, then recv_fast's take again; a
        bytearray or mmap spec, ``cap`` >= 0, declines)."""
        return self.takers[src]

    def _irecver(self, src: int):
        """``irecvs[src]`` for a rank of another node (Irecv's fast path,
        ``(tag, ctx, mv, cap=-1)`` as Transport._irecver's): the RecvOp posted
        straight into the engine (its ``post`` inlined) when nothing is unexpected,
        so nothing can match it now; the records MPI holds for it, already arrived
        or not, meet the posted receives in order (_poll_mpi).  None: the general
        path (also for a bytearray or mmap spec, ``cap`` >= 0)."""
        if src not in self.remote:
            return super()._irecver(src)
        eng = self.engine
        posted, unexpected = eng.posted, eng.unexpected
        Op, posted_state = T.RecvOp, E.R_POSTED
        t_ = self

        def irecv(tag, ctx, mv, cap=-1):
            if unexpected or t_.npending or cap >= 0:   # (cap: a bytearray or mmap
                return None                               # spec, the general path)
            op = Op(src, tag, ctx, mv)
            op.state = posted_state
            posted.append(op)
            return op
        return irecv

    def wait(self, op, peer: int | None = None) -> None:
        """As Transport.wait; a step that only MPI can complete (``peer`` on another
        node: a receive from it, a send to it) polls MPI without yielding for
        POLL_SECONDS first, as a blocking receive does (takers)."""
        if op.done:
            return
        if self.engine_busy:   # (a signal handler's, in the middle of a step: as Transport)
            raise self._nested_wait(op)
        if peer is not None and peer in self.remote:
            if type(op) is T.SendOp and not op.id and type(op.keep) is tuple:
                # _isend_remote's (a blocking Send of a large buffer, mostly): its
                # data message alone is waited for, as a blocking receive waits
                # (_await_head); records arriving meanwhile stay in the pool, so the
                # next Recv takes them on its fast path, not through the engine
                ent = op.keep
                if self._await_head(ent[0][0], peer, None, op.nbytes * INFLIGHT_SPIN):
                    try:
                        self._data_sends.remove(ent)
                    except ValueError:   # (_poll_data saw it done meanwhile)
                        return
                    self._inflight -= op.nbytes
                    op.state, op.done = E.S_DONE, True
                    return
            elif type(op) is T.RecvOp and op.source == peer and op.state == E.R_POSTED \
                    and op.mv is not None and self._take_posted(op, peer):
                # (a receive from that rank itself: a wait may name a peer to poll
                # first for a receive from any source, _hiergather's Scatter)
                return
            poll, clock = self._poll_mpi, time.perf_counter
            end = clock() + POLL_SECONDS
            while True:
                if poll() and op.done:
                    return
                if clock() > end:
                    break
        super().wait(op, peer)

    def _take_posted(self, op: T.RecvOp, src: int) -> bool:
        """``Wait`` on a buffer receive from ``src``, a rank of another node, still
        posted (no record for it handled yet: an ``Irecv`` posted straight into the
        engine, the record still in the pool or on its way): taken out of the engine
        and received as a blocking ``Recv`` receives (its taker: the pool's head
        waited for, a buffer's data received straight into ``op.mv``, no record
        handler, no engine match, no fetch), when no other receive posted on its
        context could take a record from ``src`` before it and no message from
        ``src`` waits there (_clear's rule).  True: done.  False: posted again, as
        it was if nothing was taken (the taker declined: the head went to the record
        handler, so the engine, matching it on posting, decides as before; or the
        fast path's window passed), for the general wait.  An exception (a signal
        handler's, a death) once the taker took the record fails the receive with
        it (its data may still land in the buffer); before, the receive is posted
        again.  Not covered (the merge review): a handler's exception after the
        taker posted a large message's data Irecv and before the pool's head moved
        reposts the receive with its data message gone (a later Wait hangs); the
        general path has the same window in _fetch's Irecv."""
        posted, ctx = self.engine.posted, op.context
        if self.npending or not self._clear(src, ctx, op):
            return False
        try:
            i = posted.index(op)
        except ValueError:   # (not there: the engine's own way)
            return False
        ph = self._ph
        op.state = E.R_NEW   # (these two steps, no call between: both or neither)
        del posted[i]
        try:
            res = self.takers[src](op.tag, ctx, op.mv, -1, True)
        except BaseException as e:
            if self._ph == ph:   # nothing taken: posted again, as it was
                self.irecv(op)
            else:
                op.exc, op.state, op.done = e, E.R_DONE, True
            raise
        if not res:   # (None or False: not taken here)
            self.irecv(op)
            return False
        s, tg, nb = res
        op.message = E.Message(s, tg, ctx, nb)
        op.count = nb
        op.state = E.R_DONE
        op.done = True
        return True

    def recv_fast(self, src: int, tag: int, ctx: int, mv):
        if src in self.remote:
            return self.takers[src](tag, ctx, mv, -1, True)
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

    def _clear(self, src: int, ctx: int, skip=None) -> bool:
        """Whether the engine holds nothing that comes before the next record from
        ``src`` on context ``ctx``: no unexpected message from ``src`` on ``ctx`` and no
        receive posted on ``ctx`` that such a record could match (``skip``, the one
        receive a wait takes out of the engine, aside).  (Messages of other
        communicators, e.g. an idle rank's early barrier arrival, or from other
        sources, don't keep the fast paths from taking it.)"""
        eng = self.engine
        for m in eng.unexpected:
            if m.source == src and m.context == ctx:
                return False
        for r in eng.posted:
            if r is not skip and r.context == ctx and (r.source == src or r.source < 0):
                return False
        return True

    def _await_head(self, req, src: int, ctx: int | None, extra: float = 0.0) -> bool:
        """Wait for ``req`` (the pool head's receive) in a blocking receive from
        ``src``, a rank of another node, on context ``ctx``: poll MPI without
        yielding for POLL_SECONDS (a sched_yield on a busy machine gives the core
        away for a whole time slice), then between sched_yield calls for as long as
        the general path would yield-poll (``REMOTE_SPIN``, at least
        ``spin_seconds``).  Records from this node's ranks that arrive meanwhile
        (e.g. an idle rank's early barrier arrival) go to the record handler, and
        the wait goes on while nothing in the engine could come before the record
        awaited.  True once ``req`` is complete; False (the general path, which
        progresses everything and then naps) once that window has passed, or at
        once when a send is queued, a rank died, the engine holds what could come
        first, or progress hooks are registered and ``spin_seconds`` have passed.
        (Falling back after ``spin_seconds``, or at any record from this node, sent
        a large receive through the engine whenever its peer was descheduled for a
        moment: tens of µs more Python on the critical path, in 1 of 10 receives.)
        ``ctx`` None: ``req`` is one of our data messages (a send's, or a receive's
        straight into the user's buffer), which nothing in the engine can come
        before; ``extra``: seconds more of yield-polling (its bytes in flight)."""
        if self.deferred:   # (a node peer may be waiting for the room)
            self.flush_deferred()
        clock = time.perf_counter
        now = clock()
        poll_end = now + POLL_SECONDS
        spin_end = now + (self.spin_seconds if self._hooks else
                          max(self.spin_seconds, REMOTE_SPIN + extra))
        words, tails, ins = self.words, self.in_tail, self.in_list
        deaths, eng = self.deaths_seen, self.engine
        Test = req.Test
        while True:
            if Test() or Test() or Test() or Test():   # (4 polls per clock reading)
                return True
            now = clock()
            if now > poll_end:
                if now > spin_end:
                    if not self._hooks:   # the general wait: the yield-polling is done
                        self._spin_until = self._last_sleep = now
                    return False
                if words[W.H_DEATHS] != deaths:
                    return False
                for p, hw in ins:
                    if words[hw] != tails[p]:   # a record from this node: handled
                        T.Transport.progress(self)
                        if self.npending or ctx is not None and (eng.posted or
                                                                 eng.unexpected) \
                                and not self._clear(src, ctx):
                            return False
                        break
                os.sched_yield()

    def pid_of(self, rank: int) -> int:
        return 0 if rank in self.remote else super().pid_of(rank)

    # ------------------------------------------------------------ sending
    def send_object(self, w: int, ctx: int, tag: int, obj, sync: bool, what: str,
                    pickled=None, keep: bool = False, snapshot: bool = False):
        if w not in self.remote:
            return super().send_object(w, ctx, tag, obj, sync, what, pickled, keep,
                                       snapshot)
        if pickled is None or _SHARED_MARK in pickled[0]:
            # shared arrays travel by value to another node (its processes cannot map
            # this machine's memory); by reference within the node
            from ..sharedarray import pickled_by_value
            with pickled_by_value():
                pickled = dumps(obj)
        stream, parts = pickled
        if snapshot and parts:   # (isend: MPI reads them after the call) copied now
            parts = [(memoryview(bytes(p)), how) for p, how in parts]
        if not parts and len(stream) <= self.inline_max:
            if not sync and self.send_fast(w, ctx, tag, stream, T.F_OBJ):
                return None
            op = T.SendOp(w, tag, ctx, memoryview(stream), sync, T.F_OBJ)
            self.isend(op, E.EAGER)
            return op
        # pkl5-style: a request holding the table (and a small stream), then every
        # out-of-band buffer (and a large stream) as an MPI message of its own; the
        # table's addresses are those messages' tags (filled in by _put_send)
        # (a synchronous send has one data message at least: it completes when matched)
        inline = len(stream) <= self.inline_max // 2 and not (sync and not
                                                            any(p.nbytes for p, _ in parts))
        srcs = [p for p, _ in parts if p.nbytes]
        if not inline:
            srcs.append(memoryview(stream))
        nbytes = len(stream) + sum(p.nbytes for p, _ in parts)
        op = T.SendOp(w, tag, ctx, memoryview(stream), sync, T.F_OBJ,
                      (parts, None if inline else stream), keep=srcs, nbytes=nbytes)
        self.isend(op, E.RNDV)
        return op

    def _put_send(self, s: T.SendOp) -> bool:
        dst = s.dest
        if dst not in self.remote or s.protocol == E.EAGER:
            return super()._put_send(s)
        # a rendezvous across nodes: the request, then the data right behind it
        flags = s.flags | (T.F_SYNC if s.sync else 0)
        if s.flags & T.F_OBJ:
            srcs = s.keep
            first = self._tags(dst, len(srcs))
            parts, big = s.table
            table = [TABLE.pack(len(parts), len(s.mv), first + len(srcs) - 1 if big else 0)]
            k = first
            for p, how in parts:
                table.append(PART.pack(k if p.nbytes else 0, p.nbytes, how))
                k += 1 if p.nbytes else 0
            if big is None:
                table.append(s.mv)
            table = b"".join(table)
            self._put(dst, T.K_RTS | flags << 8, s.context, s.tag, s.nbytes, 0, 0, table,
                      len(table))
        else:
            srcs = [s.mv] if s.nbytes else []
            first = self._tags(dst, 1)
            self._put(dst, T.K_RTS | flags << 8, s.context, s.tag, s.nbytes, 0, first,
                      None, 0)
        send = self.mpi_data.Issend if s.sync else self.mpi_data.Isend
        BYTE = self._BYTE
        reqs = [send([b, BYTE], dst, first + k) for k, b in enumerate(srcs)]
        self._data_sends.append((reqs, s, s.nbytes))
        self._inflight += s.nbytes
        return True

    def _put(self, dst: int, kindflags: int, ctx: int, tag: int, nbytes: int, sid: int,
             addr: int, payload, plen: int, last: int = 0) -> bool:
        if dst not in self.remote:   # (last: a rendezvous request's guard, on this node only)
            return super()._put(dst, kindflags, ctx, tag, nbytes, sid, addr, payload, plen,
                                last)
        if type(payload) is list:      # a packed object: its pieces in order
            payload = b"".join(payload)
        if plen > self.inline_max:     # a long record: the header names its payload's tag
            ltag = self._tags(dst, 1)
            rec = bytearray(T.HDR_BYTES)
            T.HDR.pack_into(rec, 0, kindflags, ctx, tag, nbytes, sid, addr, plen,
                            self.rank | ltag << 32)
            payload = bytes(payload)
            self._post_rec(rec, dst)
            self._keep_rec(self.mpi_data.Isend([payload, self._BYTE], dst, ltag), payload)
            return True
        rec = bytearray(T.HDR_BYTES + plen)
        T.HDR.pack_into(rec, 0, kindflags, ctx, tag, nbytes, sid, addr, plen, self.rank)
        if plen:
            rec[T.HDR_BYTES:] = payload
        self._post_rec(rec, dst)
        return True

    def _reply(self, a: E.Reply) -> None:
        if a.sender_id == 0 and a.dest in self.remote:
            return   # the FIN of a rendezvous across nodes: MPI told the sender already
        super()._reply(a)

    # ------------------------------------------------------------ receiving
    def _fetch(self, r: T.RecvOp, m: E.Message) -> None:
        if m.source not in self.remote:
            return super()._fetch(r, m)
        r.count = m.nbytes
        n = m.nbytes
        aside = None
        if m.flags & T.F_OBJ:   # buffers where the object's parts go, tags in the table
            stream, parts, segs = self._object_dests(m.payload)
            if r.mv is not None:
                r.exc = MmpiError(f"message from rank {m.source} (tag {m.tag}) was sent "
                                  f"as a Python object (lowercase send): receive it "
                                  f"with recv()")
            else:
                r.value = (stream, parts)
            dests = [(_linux.memory_at(local, length), dtag)
                     for local, dtag, length in segs if length]
        elif r.mv is None:
            buf = _linux.new_bytearray(n)
            r.value = (None, buf)
            dests = [(memoryview(buf), m.payload)]
        elif r.error:   # truncated: the whole message lands aside, the head is kept
            r.exc = self._truncation(r, m)
            aside = bytearray(n)
            dests = [(memoryview(aside), m.payload)]
        else:
            dests = [(r.mv[:n], m.payload)]
        src, BYTE, Irecv = m.source, self._BYTE, self.mpi_data.Irecv
        reqs = [Irecv([b, BYTE], src, dtag) for b, dtag in dests if len(b)]
        if not reqs:   # nothing to move (an object of empty buffers)
            self._fetched(r)
            return
        self._watch(reqs, n, r, aside)

    def _fetch_rest(self, r: T.RecvOp, m: E.Message) -> None:
        # a fetch from another node cut short is never started again: MPI receives
        # it posted cannot be taken back (docs/mmpi.md: not covered)
        if m.source not in self.remote or r in self.ends:
            super()._fetch_rest(r, m)

    def _watch(self, reqs, nbytes: int, r, aside=None) -> None:
        """Complete ``r`` (a receive fetching, or a _Flag) once MPI has every one of
        ``reqs`` (``aside``: where a truncated message landed)."""
        self._data_recvs[next(self._tokens)] = (reqs, r, nbytes, aside)
        self._inflight += nbytes

    def _poll_data(self) -> bool:
        did = False
        Testall = self.MPI.Request.Testall
        if self._data_recvs:
            for token, (reqs, r, n, aside) in list(self._data_recvs.items()):
                if Testall(reqs):
                    did = True
                    if type(r) is _Flag:
                        r.done = True
                    else:
                        if aside is not None:   # truncated: the receive keeps the head
                            c = r.capacity
                            r.mv[:c] = memoryview(aside)[:c]
                        # (else complete: an exception after its completion, below)
                        if r.state == E.R_FETCHING or r in self.ends:
                            self._fetched(r)
                    # last: an exception above (a signal handler's) leaves the transfer
                    # to the next poll (its requests test complete again), which
                    # finishes only what was left (_fetched)
                    del self._data_recvs[token]
                    self._inflight -= n
        if self._data_sends:
            sends = self._data_sends
            k = 0
            while k < len(sends):
                reqs, s, n = sends[k]
                if Testall(reqs):
                    del sends[k]
                    self._inflight -= n
                    did = True
                    if not s.id:   # (_isend_remote's: no engine knows it)
                        s.state, s.done = E.S_DONE, True
                    elif s.id in self.engine.awaiting:
                        self._run(self.engine.control(E.FIN, s.id))
                else:
                    k += 1
        if not self._data_recvs and not self._data_sends:
            self._inflight = 0
        return did

    def _restart(self) -> None:
        """Start the receive a blocking receive took last (``_lazy``) again: before
        anything else looks at the pool or starts a slot, so that the slots stay
        posted in their order (the head never reaches it first: it is the newest)."""
        q = self._lazy
        if q is not None:
            self._lazy = None
            q.Start()

    def _repost(self, i: int) -> None:
        """Start pool slot ``i``'s receive again (it is the newest now) and move the
        head on.  (Between its Test and this, nothing polls the pool: the record
        handler never progresses.)"""
        self._pool[i][0].Start()
        self._ph = (i + 1) % POOL

    def _take_slot(self, i: int) -> None:
        """Hand the record in pool slot ``i`` (complete, at the head) to the record
        handler, then post the slot again."""
        _, rec, view = self._pool[i]
        kf, ctx, tag, nb, _sid, _addr, plen, w7 = T.HDR.unpack_from(rec, 0)
        src = w7 & _SRC_MASK
        ltag = w7 >> 32
        if kf == T.K_EAGER and not ltag and self.engine.posted:
            # a plain eager message: straight to the earliest posted receive if it
            # is the one it goes to (_record's first step, without its second decode)
            try:
                if self._to_posted(src, view, 0, ctx, tag, nb):
                    return
                self._record(src, view, 0)
            finally:
                self._repost(i)
            return
        if ltag:   # a long record: its payload follows on its own tag (already sent)
            full = bytearray(T.HDR_BYTES + plen)
            full[:T.HDR_BYTES] = rec[:T.HDR_BYTES]
            self._repost(i)
            self.mpi_data.Recv([memoryview(full)[T.HDR_BYTES:], self._BYTE], src, ltag)
            self._record(src, full, 0)
            return
        try:
            self._record(src, view, 0)   # (a view: what is kept is copied out of it)
        finally:
            self._repost(i)

    def _poll_mpi(self) -> bool:
        """Take every record that came through MPI (in the order the pool's receives
        were posted), finish data transfers MPI is done with, forget record sends
        MPI is done with; True if anything moved.  Nothing in the middle of the
        engine's own steps (a signal handler's call: Transport.engine_busy)."""
        if self.engine_busy:
            return False
        self.engine_busy += 1
        try:
            did = False
            pool = self._pool
            if pool:
                if self._lazy is not None:
                    self._restart()
                while pool[self._ph][0].Test():
                    self._take_slot(self._ph)
                    did = True
            if (self._data_recvs or self._data_sends) and self._poll_data():
                did = True
            if self._rec_sends and self._rec_sends[0][0].Test():
                self._rec_sends = [x for x in self._rec_sends if not x[0].Test()]
            return did
        finally:
            self.engine_busy -= 1

    def progress(self) -> bool:
        did = super().progress()
        if self._poll_mpi():
            did = True
        if did:
            self._spin_until = 0.0
        return did

    def _sleep(self, timeout: float | None = None) -> bool:
        """Nap on the local rings (records from other nodes come through MPI, which
        no futex sees): a short futex wait, then MPI is polled again.  Reports a
        timeout (for the death checks) once every DEAD_CHECK seconds of naps."""
        if self._poll_mpi():
            self._nap = NAP_MIN
            self._spin_until = 0.0
            return True
        now = time.perf_counter()
        if now - self._last_sleep > 2 * NAP_MAX:
            # a new wait (progress through the fast paths resets nothing): yield-poll
            # first again, then naps from the shortest
            self._spin_until = 0.0
            self._nap = NAP_MIN
        if self.on_remote_stuck is not None:
            self.on_remote_stuck()
        self._last_sleep = now
        if not self._spin_until:
            self._spin_until = now + REMOTE_SPIN + self._inflight * INFLIGHT_SPIN
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

    def board_send(self, dst: int, words: bytes) -> None:
        """Send the hybrid board's ``words`` to world rank ``dst`` (any node: MPI)."""
        buf = bytearray(words)
        self._board_tx.append((self.mpi_board.Isend([buf, self._BYTE], dst, BOARD_TAG), buf))

    def board_recv(self) -> list[tuple[int, bytes]]:
        """The hybrid board's words that came to this rank: [(world rank, bytes)]."""
        MPI, mpi = self.MPI, self.mpi_board
        out = []
        st = MPI.Status()
        while mpi.Iprobe(MPI.ANY_SOURCE, BOARD_TAG, st):
            src = st.Get_source()
            buf = bytearray(st.Get_count(self._BYTE))
            mpi.Recv([buf, self._BYTE], src, BOARD_TAG)
            out.append((src, bytes(buf)))
        if self._board_tx:
            self._board_tx = [x for x in self._board_tx if not x[0].Test()]
        return out

    def close(self) -> None:
        super().close()
        MPI = self.MPI
        self.board_recv()   # (histories of stuck neighbours: none is left unreceived here)
        MPI.Request.Waitall([r for r, _ in self._rec_sends + self._board_tx])
        self._rec_sends.clear()
        self._board_tx.clear()
        # data messages nobody received (sends never matched): MPI keeps them; ours
        # are forgotten, not waited for (that could block the exit forever)
        self._data_sends.clear()
        self.free_pool()

    def free_pool(self) -> None:
        """Cancel, complete and free the pool's preposted receives (close, and at the
        exit of a rank that did not call Finalize, before mpi4py's own MPI_Finalize:
        MPICH with UCX warns at its Finalize of each receive left active)."""
        self._restart()   # (every slot active again: each is cancelled, then freed)
        for slot in self._pool:
            slot[0].Cancel()
        self.MPI.Request.Waitall([slot[0] for slot in self._pool])
        for slot in self._pool:
            slot[0].Free()
        self._pool = []


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
