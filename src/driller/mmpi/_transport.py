"""The mmpi transport: records in per-pair rings, rendezvous copies, waiting.

Thin on purpose: protocol decisions belong to :mod:`._engine`; this module
moves bytes through the world block (:mod:`._world`) and sleeps well.

Ring records are 64-byte aligned; a record is a 64-byte header of eight
little-endian i64 words then an inline payload::

    [0] kind | flags << 8   [1] context   [2] tag   [3] nbytes (message size)
    [4] sender id           [5] address (rendezvous: where the data is)
    [6] inline bytes        [7] reserved (a rendezvous request: its guard, below)

Kinds: WRAP (skip to the ring's start), EAGER (payload inline), RTS
(rendezvous: the receiver copies ``nbytes`` from ``address`` in the
sender's memory with process_vm_readv, then answers FIN), ACK (a synchronous
eager send was matched), FIN (rendezvous copy done: the sender's buffer is
free), STREAM and SDATA (below).  Flags: SYNC, OBJ (the payload is a pickled
object, see below).

Streamed messages (standard buffer sends of eager limit < n <= ``stream_max``,
docs/mmpi.md "Protocols"): the sender writes a STREAM record (the envelope:
``nbytes`` = message size, ``sender id``) and then the payload as SDATA records
(``tag`` and ``sender id`` = the send's id, ``nbytes`` = offset, inline chunk
of up to ``push_chunk`` bytes), as fast as the ring has room, while the
receiver copies them out: two copies, pipelined, both cores busy, no page
pinning.  The send is complete when its last chunk is in the ring (no FIN);
the receive when its last chunk is copied.  A receiver drains every chunk at
once: before a receive matches, chunks land in a warm staging buffer of the
receive cache (then one more copy), so a full ring never waits for a match.

Object messages (lowercase ``send``): pickle protocol 5; buffers of at least
``OOB_MIN`` bytes (numpy arrays, and bytes/bytearray found in the object) go
out of band and are copied once, straight from the sender's memory into the
receiver's buffer (from :class:`RecvCache`: memory already faulted in, reused
once the arrays built on it are gone).  An OBJ RTS carries inline a table::

    i64 count, i64 stream_len, i64 stream_addr (0: stream inline after table)
    count x (i64 address, i64 length, i64 how)   how: bit0 readonly, bit1 persistent

Guard (an interrupted blocking send, docs/mmpi.md): a rendezvous request names
in word [7] an 8-byte word of the sender's private memory, 0 while the data is
where the request says.  A blocking send whose wait raised (a signal handler's
exception, Ctrl-C) copies its data aside, in request order, then stores the
copy's address there (:meth:`Transport.keep_sent`) and returns to a caller who
may now write its buffer.  The receiver reads the guard after its copy: 0 means
its copy ended before the caller could write (the guard is set first); else it
copies again from the copy.  No lock, no round trip, no extra system call: the
guard is the last range of the receiver's process_vm_readv (ranges are copied in
order).  Why a 0 suffices: the sender stores the guard before any later write of
the caller (with a fence between: `_linux.fence`, for the non-temporal stores a
large memset makes), and x86-64 (the only machine driller runs on) shows a
core's stores in order and keeps loads in order, so a receiver that still reads
0 read its data before any of those writes.

Two-copy fallback (docs/mmpi.md, "Where single copy is denied"): when the
receiver's process_vm_readv of a sender fails with EPERM/EACCES/ENOSYS (Yama,
a container without CAP_SYS_PTRACE, a non-dumpable sender, seccomp), or
``DRILLER_MMPI_SINGLE_COPY=0``, the receiver answers the matched RTS with PUSH
(``tag`` = a token naming the receive, ``nbytes`` = bytes wanted, ``sender id``)
and the sender streams the data as DATA records (``tag`` = token, ``nbytes`` =
offset, inline chunk) through the same ring, chunk by chunk while the receiver
copies them out (two copies, pipelined); the receiver answers FIN when the last
byte is in, so completion, Ssend, truncation and ordering are the rendezvous
path's.  The pair stays in push mode from then on; one warning per process.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import time
import warnings
import weakref
from collections import deque

import numpy as np

from .. import _linux
from ..errors import MmpiError, PeerDiedError, TruncationError
from . import _engine as E
from . import _world as W
from ._env import BYTES, MICROSECONDS, POLLS, env_float, env_int
from ._objects import PART, TABLE, dumps, unpack_array
from ._procs import describe_wait_status

_BYTES_OFF, _BYTES_NONE = BYTES + " (0: off)", BYTES + " (-1: none)"

__all__ = ["Transport", "RecvOp", "SendOp", "TakenOp", "DeferredOp"]

K_WRAP, K_EAGER, K_RTS, K_ACK, K_FIN, K_CTS, K_WDONE = 1, 2, 3, 4, 5, 6, 7
K_PUSH, K_DATA = 8, 9         # two-copy fallback: "pull denied, push it", a pushed chunk
K_STREAM, K_SDATA = 10, 11    # a streamed message's envelope, one of its chunks
K_DIRECT = 12   # a message already written into the receive's published buffer (no payload)
K_DSPLIT = 13   # a direct write split: the receiver reads [0, mid) while the sender writes the rest
F_SYNC, F_OBJ, F_PACKED, F_ARRAY = 1, 2, 4, 8
F_INLINE = 16   # an eager record whose payload is inside its header (K_INLINE)
HDR = struct.Struct("<8q")
HDR_BYTES = 64
# A plain eager message of 1..INLINE_MAX bytes sent by a per-peer sender travels in
# its header's own 64-byte line: kind|flags, context, tag, nbytes, then the payload
# in bytes 32..48 (where sid and addr go; zero padded), plen 0 (so the record is 64
# bytes long for every reader), 0.  One cache line written and read per message.
K_INLINE = K_EAGER | F_INLINE << 8
INLINE_MAX = 16
INLINE_AT = 32   # the payload's offset in an inline record
_INLINE = struct.Struct("<4q16s2q")   # an inline record, written with one struct call
_HDR5I = struct.Struct("<4q16sq")   # _HDR5 and an inline record's payload (takers' read)
_unpack5i = _HDR5I.unpack_from
_unpack4 = struct.Struct("<4q").unpack_from   # kind|flags, context, tag, nbytes
_payload = struct.Struct("16s").unpack_from   # an inline record's payload bytes
_PUTS = [struct.Struct(f"{n}s").pack_into for n in range(INLINE_MAX + 1)]   # its first n bytes
_HDR5 = struct.Struct("<4q16xq")   # HDR's kind|flags, context, tag, nbytes and inline length
_KF_SID = struct.Struct("<q24xq")   # HDR's kind|flags and sender id
_NPACKS = 128   # a header and a bytes payload of n < this: one pack_into (senders' closures)
_PACKS = [struct.Struct(f"<8q{n}s").pack_into for n in range(_NPACKS)]

DEFAULT_EAGER_LIMIT = 1 << 20  # bytes (capped at a quarter ring); docs/mmpi.md has the measurements
PACKED_MAX = 2 << 20          # objects up to this (and half a ring) travel packed, eager
SPIN_US = 200                 # yield-spin this long, then sleep (DRILLER_MMPI_SPIN_US)
PURE_POLLS = 100              # polls (≈ 4 µs) before yielding, when ranks <= cores (else -1:
                              # oversubscribed, the budget below is learnt per peer)
ADAPT_MAX = 2000              # oversubscribed: polls (≈ 80 µs) while the peer answers in time
ADAPT_PROBE = 500             # ... a reply within this many keeps it (≈ 20 µs; a slower one
                              # yields: a peer copying a large message needs the core), and a
                              # probe of this many every ADAPT_EVERY waits otherwise
                              # (500 and 100 until the twelfth round, docs/mmpi.md; 2000
                              # and 2000 lost osu_multi_lat's 512 KiB row, 2.9x vs 2.5x)
ADAPT_EVERY = 8               # (each failed probe doubles the interval, up to 16x: ADAPT_BACKOFF)
ADAPT_BACKOFF = 16
ADAPT_KEEP = 256 << 10        # oversubscribed receives of at most this many bytes keep the
                              # budget for any reply within it (their peer copies the message
                              # out and the reply in meanwhile), larger ones only for a reply
                              # within ADAPT_PROBE polls (DRILLER_MMPI_ADAPT_KEEP, -1: none;
                              # docs/mmpi.md, "sixteenth round (oversubscribed mid-size)";
                              # 512 KiB stays under the old rule: the twelfth round's row)
RECV_CACHE_BYTES = 256 << 20  # idle warm memory kept for object buffers (at most 1/16 of RAM)
FINISH_WAIT = 60.0            # s with nothing moving a stopping rank waits for its owed copies
FINISH_NOTE = 5.0             # ... and after this long it says what it waits for (_serve_owed)
SLEEP_SECONDS = 0.05          # a futex sleep's bound (DRILLER_MMPI_SLEEP_MS): the pid checks
                              # of peers that died unmarked run this often
DIRECT_MIN = 512 << 10        # a blocked Recv of at least this publishes its buffer and an eager send
                              # this large writes straight into it (DRILLER_MMPI_DIRECT_MIN, 0: off)
DSPLIT_MIN = 512 << 10        # a direct write this large is split, each rank copies half
                              # (DRILLER_MMPI_DSPLIT_MIN, 0: off; quiet: osu_latency 1 MiB
                              # 0.85x Open MPI; loaded it loses: docs/mmpi.md, "thirteenth round")
DSPLIT_ADAPT = 0              # the adaptive split (docs/mmpi.md, "fourteenth round (mid-size)")
GRACE_SECONDS = 30e-6         # a send to a rank whose split write we just took waits this long
                              # for its receive's publication (it returns from its Send now)
SPLIT_MIN = 0                 # >0: rendezvous copies this large are split between both ranks
                              # (off: no gain measured on 2 cores, a loss when oversubscribed)
PUSH_CHUNK = 256 << 10        # two-copy fallback: bytes per DATA record (at most a quarter ring)
STREAM_MAX = 8 << 20          # standard sends up to this go streamed (docs/mmpi.md: measured);
                              # oversubscribed: only what fits half a ring (no wait for room)
KEEP_TRIES = 16               # keep_sent's attempts while handlers keep raising (its docstring)
DENIED = (errno.EPERM, errno.EACCES, errno.ENOSYS)  # process_vm_readv/writev not allowed here
_warned_pid = 0               # the pid that already warned about a denial (once per process)


def single_copy_enabled() -> bool:
    """False when ``DRILLER_MMPI_SINGLE_COPY`` is 0 (or false/no/off)."""
    v = os.environ.get("DRILLER_MMPI_SINGLE_COPY", "1").strip().lower()
    return v not in ("0", "false", "no", "off")


def denial_message(e: OSError, what: str) -> str:
    """Why single copy failed (``what``: e.g. "reading rank 1 (pid 42)") and the fix."""
    if e.errno == errno.ENOSYS:
        cause = ("process_vm_readv/writev is not available (kernel built without "
                 "CONFIG_CROSS_MEMORY_ATTACH, or a seccomp filter returns ENOSYS)")
    else:
        bits = []
        scope = _linux.ptrace_scope()
        if scope is not None and scope >= 2:
            bits.append(f"kernel.yama.ptrace_scope is {scope}")
        try:
            if not _linux.has_capability(_linux.CAP_SYS_PTRACE):
                bits.append("this process lacks CAP_SYS_PTRACE")
        except OSError:  # pragma: no cover
            pass
        if _linux.seccomp_mode():
            bits.append("a seccomp filter is active, e.g. a container's default profile")
        cause = ("ptrace access to the peer is denied" + (f" ({', '.join(bits)})" if bits else "")
                 + "; a non-dumpable peer (prctl(PR_SET_DUMPABLE, 0), setuid programs) "
                 "refuses it too")
    return (f"driller.mmpi: single copy failed {what}: {e.strerror or e} "
            f"[errno {e.errno}]: {cause}.  Large messages between these ranks now go "
            f"through the shared rings (two copies, pipelined; slower).  To get single copy "
            f"back: `sysctl kernel.yama.ptrace_scope=0` (or 1), run containers with "
            f"`docker run --cap-add=SYS_PTRACE`, and keep ranks dumpable.  "
            f"DRILLER_MMPI_SINGLE_COPY=0 selects the two-copy path from the start "
            f"(no warning).")


def warn_once(msg: str) -> None:
    global _warned_pid
    if _warned_pid == os.getpid():
        return
    _warned_pid = os.getpid()
    warnings.warn(msg, RuntimeWarning, stacklevel=2)


_NOKEY = object()   # no posted receive's key (_serve)
_ENVS = 256           # envelopes kept for posted receives matched in a run (_serve)
_PUBLISH = 16 << 10   # _serve publishes the tail past a record of this size at once
SLICE_MAX = 1024   # a fused eager sender copies a buffer's first bytes up to this as bytes
BIG_COPY = 768 << 10   # eager copies into and out of a ring from this size go in pieces
_PIECE = 512 << 10


def _copy(dst, di: int, src, si: int, n: int) -> None:
    """``dst[di:di + n] = src[si:si + n]`` in 512 KiB pieces.  An eager message of
    1 MiB copied in one memcpy each way took 127-153 µs one-way for minutes at a time
    (a machine state; 38 µs at others), against 57-71 µs in pieces, alternated run by
    run (docs/mmpi.md, "Mid-size messages")."""
    for i in range(0, n, _PIECE):
        j = min(n, i + _PIECE)
        dst[di + i:di + j] = src[si + i:si + j]


def _table_ranges(table) -> list[tuple[int, int]]:
    """The (address, length) ranges of an OBJ RTS's table in request order: its
    buffers in table order, then its stream when not inline; empty ones left out
    (what a PUSH streams, and what an interrupted send copies aside)."""
    count, slen, saddr = TABLE.unpack_from(table, 0)
    ranges = [PART.unpack_from(table, TABLE.size + k * PART.size)[:2] for k in range(count)]
    if saddr:
        ranges.append((saddr, slen))
    return [(a, n) for a, n in ranges if n]


class RecvOp(E.Receive):
    """A receive in flight.  ``mv``: writable byte memoryview, or None for objects.
    ``key``: None, or (set by ``irecvs[src]`` only) the tuple ``(buffer, cap, tag,
    ctx)`` its receive was posted with, shared by the alike receives it posted in a
    row, which share ``mv`` too (one view of the buffer's first ``cap`` bytes):
    ``_serve`` matches a run of them with one identity check."""

    __slots__ = ("mv", "done", "exc", "count", "value", "cancelled", "key")

    def __init__(self, source, tag, context, mv):
        self.source = source
        self.tag = tag
        self.context = context
        self.capacity = None if mv is None else len(mv)
        self.state = E.R_NEW
        self.message = None
        self.error = 0
        self.mv = mv
        self.done = False
        self.exc = None
        self.count = 0
        self.value = None
        self.cancelled = False
        self.key = None


class TakenOp:
    """The op of a receive that Irecv finished at once (``irecvs[src]``): done, no
    error; its own message (the source's world rank and the tag, as a request's
    outcome reads them).  Read only once made: the receives that took alike
    messages in a row share one."""

    __slots__ = ("source", "tag", "count")
    done = True
    exc = None
    cancelled = False
    error = 0
    capacity = None

    def __init__(self, source: int, tag: int, count: int):
        self.source = source
        self.tag = tag
        self.count = count

    @property
    def message(self):
        return self


class DeferredOp:
    """The op of the receives that Irecv's remembered spec matched, in a row, with
    inline records of one size and tag already in the ring (a deferred take,
    docs/mmpi.md "Hot paths, eighth round"): the records are taken (the ring's
    local tail is past them, so later receives and probes see the next ones),
    their payloads not yet copied nor the tail published.  ``flush`` (the
    source's deferred run's) does both: the run's last payload copied into the
    buffer (all of one size into one buffer: the last overwrites the others
    whole), the tail published.  Reading ``done`` flushes, so every completion
    path (Wait, Test, Get_status, Waitany, Testsome...) sees the bytes in the
    buffer; ``exc`` is set if the buffer could not take them by then."""

    __slots__ = ("source", "tag", "count", "exc", "flush")
    cancelled = False
    error = 0
    capacity = None

    def __init__(self, source: int, tag: int, count: int, flush):
        self.source = source
        self.tag = tag
        self.count = count
        self.exc = None
        self.flush = flush

    @property
    def done(self) -> bool:
        self.flush()
        return True

    @property
    def message(self):
        return self


class SendOp(E.Send):
    """A send in flight.  ``mv``: the byte view sent (eager) or pinned (rndv)."""

    __slots__ = ("mv", "done", "exc", "flags", "table", "keep", "addr", "cancelled", "guard",
                 "aside", "pushed")

    def __init__(self, dest, tag, context, mv, sync=False, flags=0, table=None, keep=None,
                 nbytes=None):
        self.dest = dest
        self.tag = tag
        self.context = context
        self.nbytes = len(mv) if nbytes is None else nbytes
        self.sync = sync
        self.protocol = E.EAGER
        self.id = 0
        self.state = E.S_NEW
        self.mv = mv
        self.done = False
        self.exc = None
        self.flags = flags
        self.table = table
        self.keep = keep
        self.addr = 0
        self.cancelled = False
        self.guard = None   # a rendezvous request's guard word (a bytearray), once put
        self.aside = None   # the copy keep_sent made
        self.pushed = 0   # pushes started for it (1: a PUSH's, 2: a denied CTS half's):
        # each at most once, however often its record is taken (after an exception)


class _Guarded(E.Message):
    """A rendezvous request that names its guard (the address of a word of the sender)."""

    __slots__ = ("guard",)


def _record_bytes(data, p: int) -> int:
    """The length in its ring of the record at byte ``p`` of ``data`` (``_record``'s)."""
    h = HDR.unpack_from(data, p)
    return HDR_BYTES if h[0] == K_INLINE else HDR_BYTES + ((h[6] + 63) & ~63)


def _size_class(n: int) -> int:
    """Round n up to a pool size class: a page multiple, at most 1/16 (6 %) larger."""
    step = 1 << max(12, n.bit_length() - 4)
    return (n + step - 1) & ~(step - 1)


class _Backing(np.ndarray):
    """The type of the cache's backing arrays.  numpy collapses a view's ``base``
    to the first owner of the data *of the same type*: the arrays the unpickler
    builds (plain ndarrays) therefore keep the cache's view alive, not just the
    backing, and the view's weak reference fires only when they are all gone."""


class RecvCache:
    """Warm memory for out-of-band object buffers, reused once the arrays built on
    them are gone.

    Fresh anonymous memory costs the kernel a fault and a zeroing per page before
    the copy can write it: on this VM 64 MiB took ≈ 30 ms to touch for the first
    time and 5 ms afterwards, more than the copy itself.  Each received buffer is
    a view ``backing[:n]`` of a backing array; a weak reference on the view gives
    the backing back to the cache when the last array using it dies (the user's
    arrays keep the view alive through their ``base``).  At most ``cap`` idle
    bytes are kept (``DRILLER_MMPI_RECV_CACHE``, bytes; 0 turns it off); the rest
    is freed as usual.  The arrays handed out are plain numpy arrays, writable,
    private to this process (never views of the sender's memory).
    """

    def __init__(self, cap: int):
        self.cap = cap
        self.idle = 0
        self.free = {}     # size class -> [backing arrays]
        self.live = {}     # id(weakref) -> (weakref, (backing, address, class))
        self.hits = 0
        self.misses = 0

    def take(self, n: int):
        """(array, address): a writable uint8 array of n bytes (contents undefined)."""
        if self.cap <= 0:
            back = np.empty(n, np.uint8)
            return back, back.__array_interface__["data"][0]
        c = _size_class(n)
        lst = self.free.get(c)
        if lst:
            entry = lst.pop()
            self.idle -= c
            self.hits += 1
        else:
            back = np.empty(c, np.uint8).view(_Backing)
            entry = (back, back.__array_interface__["data"][0], c)
            self.misses += 1
        view = entry[0][:n]
        ref = weakref.ref(view, self._give_back)
        self.live[id(ref)] = (ref, entry)
        return view, entry[1]

    def _give_back(self, ref) -> None:
        entry = self.live.pop(id(ref))[1]
        c = entry[2]
        if self.idle + c <= self.cap:
            self.free.setdefault(c, []).append(entry)
            self.idle += c

    def clear(self) -> None:
        self.free.clear()
        self.idle = 0


def _recv_cache_bytes() -> int:
    n = env_int("DRILLER_MMPI_RECV_CACHE", None, BYTES + " (0 or less: none)")
    if n is not None:
        return n
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        total = 4 << 30
    return min(RECV_CACHE_BYTES, total // 16)


def shared_lookup(address: int, nbytes: int):
    """Hook: a driller shared segment holding [address, address+nbytes), or None.

    When the registry (driller._registry) lands, a rendezvous between ranks that
    both map the segment can copy straight from the mapping.
    """
    return None


class _Stream:
    """A streamed message being received: ``got`` bytes of ``n`` so far; before a
    receive matches, in ``staging`` (a receive-cache buffer at ``saddr``); then
    straight into the receive's buffer at ``addr`` (its first ``cap`` bytes:
    the rest of a truncated message is dropped).  ``acts``: the receive's
    completion once its last chunk is in (``Transport._finish`` runs them)."""

    __slots__ = ("n", "got", "r", "addr", "cap", "keep", "staging", "saddr", "acts")

    def __init__(self, n: int):
        self.n = n
        self.got = 0
        self.r = None
        self.addr = 0
        self.cap = 0
        self.keep = None
        self.staging = None
        self.saddr = 0
        self.acts = None


class _Hooks(list):
    """The progress hooks of a transport (see Transport.add_progress_hook)."""

    busy = False


def _to_the_end(step, first: list, *args):
    """Run ``step(*args)`` until it returns, again after each exception (each step
    of it must be safe to run twice); the first exception goes into ``first[0]``
    (unless one is there), for the caller to raise once done; returns it.
    PeerDiedError is raised.  (Not ``_shielded``: holding signals costs ≈ 90 µs
    here, the split's whole gain.  An exception that escapes this loop, a second
    one raised in its ``except``, is caught by the caller's, which runs it again
    and raises ``first[0]``.)"""
    while True:
        try:
            step(*args)
            return first[0]
        except PeerDiedError:
            raise
        except BaseException as e:   # (a signal handler's, Ctrl-C)
            if first[0] is None:
                first[0] = e


def _declined(*args):
    """A specialised fast path that never applies (to oneself): the general path."""
    return None


class _Writing:
    """The mark a direct write puts first in ``pending[dst]`` from its claim until
    its record is out (or it gave up): every fast path to ``dst`` then steps aside
    (they send only with nothing queued), the general path refuses a new send to
    ``dst`` (``_transmit``: a signal handler's ``Send`` run in the middle of the
    write would put its record where ours goes, and one of the two be lost or
    written over), and what other records go to ``dst`` meanwhile (a handler's
    receive's replies, a push's chunks) wait behind it (``_flush``, ``_push``).
    Whoever finds it checks that a running write owns it (``_mark_live``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<a direct write under way>"


WRITING = _Writing()


def _mark_live(q) -> bool:
    """Whether the WRITING mark first in ``q`` (a ``pending[dst]``) belongs to a
    direct write still running on this thread's stack (a call nested in it: the
    mark stands); if not (a second exception cut its removal short), it is
    dropped here.  Only on the rare path that found the mark."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code is _DIRECT_CODE and f.f_locals.get("q") is q:
            return True
        f = f.f_back
    if q and q[0] is WRITING:
        q.popleft()
    return False


class _PerPeer(dict):
    """rank -> ``make(rank)``, made on first look-up and kept."""

    __slots__ = ("make",)

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, rank):
        f = self[rank] = self.make(rank)
        return f


class Transport:
    """One process's end of the world: its rings, its engine, its waiting."""

    all_local = True   # every rank maps this world block (a hybrid world: see _hybrid)
    remote = frozenset()   # ranks reached another way (a hybrid world's other nodes)

    def __init__(self, world: W.World, rank: int, eager_limit: int | None = None):
        self.world = world
        self.rank = rank
        self.size = size = world.size
        self.words = world.words
        self.data = world.data
        self.base = world.address
        rb = self.ring_bytes = world.ring_bytes
        if eager_limit is None:
            eager_limit = env_int("DRILLER_MMPI_EAGER_LIMIT", DEFAULT_EAGER_LIMIT, BYTES)
        self.eager_limit = max(0, min(eager_limit, rb // 4))
        self.engine = E.Engine(self.eager_limit)
        self.packed_limit = max(0, min(env_int("DRILLER_MMPI_PACKED_MAX", PACKED_MAX, BYTES),
                                       rb // 2 - HDR_BYTES))
        self.peers = [r for r in range(size) if r != rank]
        z = [0] * size
        self.in_head = list(z)   # src -> word index of head
        self.in_tailw = list(z)  # src -> word index of tail (we write it)
        self.in_pwait = list(z)  # src -> word index of the producer's waiting flag
        self.in_data = list(z)   # src -> byte offset of data
        self.in_tail = list(z)   # src -> our tail (bytes consumed)
        self.out_head = list(z)  # dst -> our head (bytes written)
        self.out_headw = list(z)
        self.out_tailw = list(z)
        self.out_pwait = list(z)
        self.out_data = list(z)
        self.sleeping_w = [world.rank_word(r, W.R_SLEEPING) for r in range(size)]
        for p in self.peers:
            c = world.ring_ctrl(p, rank)
            self.in_head[p] = c // 8 + W.G_HEAD
            self.in_tailw[p] = c // 8 + W.G_TAIL
            self.in_pwait[p] = c // 8 + W.G_PWAIT
            self.in_data[p] = c + W.RING_CTRL
            self.in_tail[p] = self.words[c // 8 + W.G_TAIL]
            c = world.ring_ctrl(rank, p)
            self.out_headw[p] = c // 8 + W.G_HEAD
            self.out_tailw[p] = c // 8 + W.G_TAIL
            self.out_pwait[p] = c // 8 + W.G_PWAIT
            self.out_data[p] = c + W.RING_CTRL
            self.out_head[p] = self.words[c // 8 + W.G_HEAD]
        self.in_list = [(p, self.in_head[p]) for p in self.peers]
        self.in_one = [[(p, self.in_head[p])] for p in range(size)]
        self.pending = [deque() for _ in range(size)]
        self.npending = 0
        # > 0 while _drain, _flush, serve_posted or _transmit runs: an MPI call a
        # signal handler makes in their middle finds it set (progress moves
        # nothing, a blocking wait is refused) instead of acting on their half-done
        # state (docs/mmpi.md, "Signal handlers")
        self.engine_busy = 0
        self.my_sleeping = self.sleeping_w[rank]
        self.deaths_seen = -1
        self.dead = {}      # rank -> wait status (launcher-marked)
        self.gone = set()   # ranks found dead by pid
        self.stats_sleeps = 0
        self.stats_adapt = [0, 0, 0]   # oversubscribed receives' waits: served while
                                       # polling, after yielding; probes (_adaptive_wait)
        self.split_min = env_int("DRILLER_MMPI_SPLIT_MIN", SPLIT_MIN, BYTES)
        # receiver-posted direct writes (docs/mmpi.md, "Protocols": direct): receives and
        # sends of at least this many bytes; 0: off (so is a world without single copy)
        self.direct_min = max(0, env_int("DRILLER_MMPI_DIRECT_MIN", DIRECT_MIN, _BYTES_OFF))
        self.stats_direct = [0, 0]   # messages written direct (sent), received direct
        self.direct_seen = {}   # src -> (generation, tag, nbytes) of a K_DIRECT _record took
        self.dsplit_min = max(0, env_int("DRILLER_MMPI_DSPLIT_MIN", DSPLIT_MIN, _BYTES_OFF))
        # the adaptive split: a sender done with its half writes the receiver's too when
        # the receiver has not claimed it (DRILLER_MMPI_DSPLIT_ADAPT, 0: off)
        self.dsplit_adapt = os.environ.get("DRILLER_MMPI_DSPLIT_ADAPT", str(DSPLIT_ADAPT)) != "0"
        self.stats_dsplit = [0, 0, 0]   # direct writes split (sent), split reads done
        # (received), splits whose both halves we wrote (the receiver had not started)
        self.dsplit_off = set()   # sources whose memory we could not read (never split again)
        self.direct_pub = {}   # src -> (generation, address) of our last publication
        self.dsplit_recent = [0] * size   # 1: our last receive from that rank was split
        self.dsplit_failed = {}   # src -> the generation whose split neither rank could copy
        self.dsplit_taking = 0   # >0: inside _split_take (a handler's Recv does not publish)
        self._guard_word = None   # (an 8-byte buffer, its address): _read reads guards into it
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover
            cpus = os.cpu_count() or 1
        # oversubscribed (more ranks than the cores we may run on): yield at once, a
        # sibling rank on our core may be the one we wait for (docs/mmpi.md, "Waiting")
        self.oversubscribed = size > cpus
        polls = POLLS + " (negative: learnt per peer)"
        self.pure_polls = env_int("DRILLER_MMPI_PURE_POLLS",
                                  -1 if self.oversubscribed else PURE_POLLS, polls)
        self.adapt_max = env_int("DRILLER_MMPI_ADAPT_MAX", ADAPT_MAX, POLLS)
        self.adapt_probe = env_int("DRILLER_MMPI_ADAPT_PROBE", ADAPT_PROBE, POLLS)
        self.adapt_every = max(1, env_int("DRILLER_MMPI_ADAPT_EVERY", ADAPT_EVERY,
                                          "a whole number of waits"))
        self.adapt_keep = env_int("DRILLER_MMPI_ADAPT_KEEP", ADAPT_KEEP, _BYTES_NONE)
        self.spin_seconds = env_float("DRILLER_MMPI_SPIN_US", SPIN_US, MICROSECONDS) * 1e-6
        self.finish_wait = _finish_wait()
        self.sleep_seconds = max(1e-4, env_float("DRILLER_MMPI_SLEEP_MS", SLEEP_SECONDS * 1e3,
                                                 "milliseconds") * 1e-3)
        self.recv_cache = RecvCache(_recv_cache_bytes())
        self.splits = {}    # token -> [receive waiting for the sender's half (WDONE), its acts,
        #                   our half's copy (pid, message, address, bytes) while not done]
        self.ends = {}      # receive -> the actions of its fetch's completion, while they run
        self.consumed = None   # (data, byte) of the record _drain's record took (_taken)
        self.replied = None    # the send of the last ACK or FIN _record took (_taken)
        self._tokens = iter(range(1, 1 << 62))
        # two-copy fallback: sources we may not read (they push), incoming pushes
        # (token -> [[(address, length)...], index, offset, receive or None, keep]),
        # outgoing pushes per destination ([token, [(address, length)...], index,
        # offset, trailer record or None]; counted in npending)
        self.single_copy = single_copy_enabled()
        self.no_pull = set() if self.single_copy else set(self.peers)
        if not self.single_copy:
            self.direct_min = 0
        self.sinks = {}
        self.pushes = [deque() for _ in range(size)]
        self.push_chunk = max(4096, min(env_int("DRILLER_MMPI_PUSH_CHUNK", PUSH_CHUNK, BYTES),
                                        rb // 4) & ~63)
        self.stats_pushed = 0   # bytes received through the fallback
        # streamed messages: sends above the eager limit up to this (0: none), and the
        # ones arriving, (source, sender id) -> _Stream
        self.stream_max = env_int("DRILLER_MMPI_STREAM_MAX", STREAM_MAX, BYTES)
        if size > cpus and env_int("DRILLER_MMPI_STREAM_MAX", None) is None:
            # a stream larger than the ring waits for the receiver to make room: a
            # context switch each time when ranks share cores (docs/mmpi.md)
            self.stream_max = min(self.stream_max, rb // 2)
        self.streams = {}
        self.stats_streamed = 0  # bytes received streamed
        self._hooks = _Hooks()
        # state the collectives keep per transport (owned by _coll: the shared-memory
        # barrier's count and words, the collective slots); None until first used
        self.coll_state = None
        # the collective board (_coll/_board: made by the first communicator) and its
        # hook, called when a wait's futex nap timed out with no peer dead
        self.coll_board = None
        self.on_stuck = None
        # src -> the flush of its deferred run of takes (irecvs[src].spec's; empty:
        # none): every path that consumes or publishes src's ring, waits or sleeps
        # flushes first (flush_deferred)
        self.deferred = {}
        # the fast paths specialised per peer, made on first use: world rank ->
        # _sender(dst) / _taker(src) (Comm's Send/Isend/Recv/Irecv call these)
        self.senders = _PerPeer(self._sender)
        self.takers = _PerPeer(self._taker)
        # Recv's fast path per source, waiting included (_recver)
        self.recvers = _PerPeer(self._recver)
        # Send's path for a numpy array per destination (_array_sender): False where
        # there is none (every rank of this node: the facade's byte view goes first)
        self.array_senders = _PerPeer(self._array_sender)
        # Irecv's fast path per source (_irecver), and the envelopes of plain eager
        # messages that posted receives got in a run ((src, tag, ctx, nbytes) -> Message,
        # read only, shared: a request's outcome reads its source and tag)
        self.irecvs = _PerPeer(self._irecver)
        self._envs = {}
        _linux.allow_ptrace_by_any()
        W.register_pid(world, rank)

    # ------------------------------------------------------------ sending
    def isend(self, op: SendOp, protocol: int | None = None) -> SendOp:
        if op.dest == self.rank:
            protocol = E.EAGER  # to self: always buffered (a copy), never a deadlock
        elif (protocol is None and self.eager_limit < op.nbytes <= self.stream_max
              and not op.sync and not op.flags and op.dest not in self.remote):
            protocol = E.STREAM  # mid-size standard send: pipelined through the ring
        self._run(self.engine.send(op, protocol))
        return op

    def send_blocking(self, dst: int, ctx: int, tag: int, mv) -> bool:
        """A blocking standard send of the buffer ``mv`` that ``senders[dst]``
        declined, done here (sent and waited for) when the transport has a route of
        its own for it; False: the general path (a request through the engine)."""
        return False

    def isend_buffer(self, dst: int, ctx: int, tag: int, mv) -> SendOp | None:
        """A nonblocking standard send of the buffer ``mv`` that ``senders[dst]``
        declined, started here when the transport has a route of its own for it (the
        facade's checks done: no parse again); None: the general path."""
        return None

    def _array_sender(self, dst: int):
        """``array_senders[dst]``: ``(ctx, tag, a) -> bool``, a blocking standard
        send of the numpy array ``a`` itself (no byte view made by the facade), or
        False where there is no such path (here: none; a hybrid world's other
        nodes have one)."""
        return False

    def send_fast(self, dst: int, ctx: int, tag: int, mv, flags: int = 0) -> bool:
        """A standard eager send straight into the ring, if nothing is queued
        before it and it fits; False: use the general path.  (The work is
        ``senders[dst]``'s, the same specialised per destination.)"""
        return self.senders[dst](ctx, tag, mv, flags)

    def _sender(self, dst: int):
        """``send_fast`` specialised for ``dst``: a function ``(ctx, tag, mv,
        flags=0) -> bool`` with the ring's words, offsets and the transport's state bound as
        closure cells (no attribute look-ups per call).  The head stays in
        ``out_head`` (shared with ``_put``), so the two paths interleave freely.  A plain
        message of 1..INLINE_MAX bytes goes first, as one header-line record (K_INLINE)."""
        if dst == self.rank:
            return _declined
        limit = self.eager_limit
        q = self.pending[dst]
        rb = self.ring_bytes
        out_head = self.out_head
        words = self.words
        data = self.data
        tw = self.out_tailw[dst]
        hw = self.out_headw[dst]
        sw = self.sleeping_w[dst]
        base = self.out_data[dst]
        waddr = self.base + hw * 8
        pack = HDR.pack_into
        packs = _PACKS
        inline = _INLINE.pack_into
        wake = _linux.futex_wake
        put = self._put

        room = [0]   # a head below which the ring surely has room (tails only grow)
        imax = min(INLINE_MAX, limit)
        dmin = self.direct_min if dst not in self.remote else 0
        direct = self._director(dst) if dmin else None
        # streamed sizes go direct only split (docs/mmpi.md, "fourteenth round
        # (mid-size)"): up to stream_max while the split is on
        dmax = max(limit, self.stream_max) if dmin and self.dsplit_min else limit

        def send(ctx, tag, mv, flags=0):
            n = len(mv)
            if n <= imax and n and not flags and not q:   # the payload in the header's line
                head = out_head[dst]
                end = head + HDR_BYTES   # (records are 64-byte aligned: one never wraps)
                if end > room[0]:   # read the consumer's tail only when the bound is used up
                    room[0] = words[tw] + rb
                    if end > room[0]:
                        return put(dst, K_EAGER, ctx, tag, n, 0, 0, mv, n)
                p = base + head % rb
                if type(mv) is bytes:
                    inline(data, p, K_INLINE, ctx, tag, n, mv, 0, 0)
                else:
                    inline(data, p, K_INLINE, ctx, tag, n, b"", 0, 0)
                    data[p + INLINE_AT:p + INLINE_AT + n] = mv
                out_head[dst] = end
                words[hw] = end
                if words[sw]:
                    wake(waddr)
                return True
            if dmin and dmin <= n <= dmax and not flags and not q and direct(ctx, tag, mv, n):
                return True   # written straight into the blocked receive's buffer
                # (above the eager limit only split: unsplit, 2-4 MiB gained nothing)
            if n > limit or q:
                return False
            reclen = HDR_BYTES + ((n + 63) & ~63)
            head = out_head[dst]
            off = head % rb
            end = head + reclen
            if off + reclen > rb:
                return put(dst, K_EAGER | flags << 8, ctx, tag, n, 0, 0, mv, n)
            if end > room[0]:   # read the consumer's tail only when the bound is used up
                room[0] = words[tw] + rb
                if end > room[0]:
                    return put(dst, K_EAGER | flags << 8, ctx, tag, n, 0, 0, mv, n)
            p = base + off
            if type(mv) is bytes and n < _NPACKS:   # header and payload: one struct call
                packs[n](data, p, K_EAGER | flags << 8, ctx, tag, n, 0, 0, n, 0, mv)
            else:
                pack(data, p, K_EAGER | flags << 8, ctx, tag, n, 0, 0, n, 0)
                if n:
                    p += HDR_BYTES
                    if n < BIG_COPY:
                        data[p:p + n] = mv
                    else:
                        _copy(data, p, mv, 0, n)
            out_head[dst] = end
            words[hw] = end
            if words[sw]:
                wake(waddr)
            return True

        def spec(n, ctx):
            """A remembered spec (the first ``n`` bytes of a ``bytearray`` or ``mmap``,
            context ``ctx``: Isend's, and Send's of an mmap) fused with ``send``'s
            inline branch: a function ``(tag, obj) -> bool`` (False: use the general
            path, as for a closed or shrunk ``obj``).  One call per ``Isend`` of
            osu_bw's window or ``Send`` of osu_latency's instead of two, the checks
            that cannot change made here once.  It holds no buffer: the caller
            passes ``obj`` each time.  Above ``INLINE_MAX`` up to the eager limit:
            :func:`eager`'s; None for 0 bytes and above the eager limit (the
            caller then slices and calls ``send``)."""
            if imax < n <= limit:
                return eager(n, ctx)
            if not 0 < n <= imax:
                return None

            def fused(tag, obj):
                if q:
                    return False
                try:
                    mv = obj[:n]
                except ValueError:   # closed
                    return False
                if len(mv) != n:   # shrunk
                    return False
                head = out_head[dst]
                end = head + HDR_BYTES
                if end > room[0]:
                    room[0] = words[tw] + rb
                    if end > room[0]:
                        return put(dst, K_EAGER, ctx, tag, n, 0, 0, mv, n)
                inline(data, base + head % rb, K_INLINE, ctx, tag, n, mv, 0, 0)
                out_head[dst] = end
                words[hw] = end
                if words[sw]:
                    wake(waddr)
                return True
            return fused

        def eager(n, ctx):
            """``spec``'s fused sender for an eager record of ``n`` bytes
            (docs/mmpi.md, "tenth round").  Up to ``SLICE_MAX`` bytes: ``obj[:n]``
            (a bytes copy, cheaper than a view of so few) written with the
            header, ``send``'s eager branch for a plain send inlined.  Above:
            ``send`` on a view of ``obj``'s first ``n`` bytes, so that they are
            copied once, into the ring (a bytes slice first made two copies);
            the view is released before it returns: the caller may close or
            resize ``obj`` at once, as after any send."""
            if n > SLICE_MAX:
                def fused(tag, obj):
                    try:
                        whole = memoryview(obj)
                    except ValueError:   # closed
                        return False
                    with whole:
                        return len(whole) >= n and send(ctx, tag, whole[:n])
                return fused
            reclen = HDR_BYTES + ((n + 63) & ~63)
            one = packs[n] if n < _NPACKS else None   # header and payload: one struct call

            def fused(tag, obj):
                if q:
                    return False
                try:
                    mv = obj[:n]
                except ValueError:   # closed
                    return False
                if len(mv) != n:   # shrunk
                    return False
                head = out_head[dst]
                off = head % rb
                end = head + reclen
                if off + reclen > rb:   # the ring's end: the general writer wraps
                    return put(dst, K_EAGER, ctx, tag, n, 0, 0, mv, n)
                if end > room[0]:   # (as send's)
                    room[0] = words[tw] + rb
                    if end > room[0]:
                        return put(dst, K_EAGER, ctx, tag, n, 0, 0, mv, n)
                p = base + off
                if one is not None:
                    one(data, p, K_EAGER, ctx, tag, n, 0, 0, n, 0, mv)
                else:
                    pack(data, p, K_EAGER, ctx, tag, n, 0, 0, n, 0)
                    data[p + HDR_BYTES:p + HDR_BYTES + n] = mv
                out_head[dst] = end
                words[hw] = end
                if words[sw]:
                    wake(waddr)
                return True
            return fused
        send.spec = spec
        return send

    def _director(self, dst: int):
        """The direct write to ``dst`` (docs/mmpi.md, "Protocols": direct): a
        function ``(ctx, tag, mv, n) -> bool``, True when the whole message was
        written with one ``process_vm_writev`` into the buffer of a receive that
        ``dst`` published (its caller blocked on it) and the K_DIRECT record that
        says so is in the ring; False: send it the usual way (no receive published,
        another envelope, too large, something of ours still in that ring or
        queued, the claim lost to a withdrawal, the write denied or failed).

        The claim: our claim word set to the published generation, a fence, then
        the generation and the ring read again (the receiver's withdrawal clears
        the generation, fences and reads the claim: one of the two sees the
        other's store).  Once the write is done the record goes out; an exception
        before the record is out releases the claim (the message is then not
        sent, as an exception before any put); one after it publishes the head.

        Split (``n`` >= ``dsplit_min`` and the receiver allows it: docs/mmpi.md,
        "thirteenth round"): a K_DSPLIT record naming our buffer goes out first, the
        receiver reads [0, mid) while we write [mid, n), and we return only once
        the receiver is done with our buffer (its G_DRDONE), whatever exception
        comes meanwhile (deferred and raised then, as the withdrawal's)."""
        words = self.words
        data = self.data
        c = self.world.ring_ctrl(self.rank, dst) // 8
        gw, aw, kw, xw, tgw, cw = (c + W.G_DGEN, c + W.G_DADDR, c + W.G_DCAP, c + W.G_DCTX,
                                   c + W.G_DTAG, c + W.G_DCLAIM)
        tw = self.out_tailw[dst]
        hw = self.out_headw[dst]
        sw = self.sleeping_w[dst]
        deadw = self.world.rank_word(dst, W.R_DEAD)
        waddr = self.base + hw * 8
        base = self.out_data[dst]
        rb = self.ring_bytes
        out_head = self.out_head
        pushes = self.pushes[dst]
        q = self.pending[dst]
        pack = HDR.pack_into
        t_ = self
        off = [False]   # denied once: never again to this rank
        stats = self.stats_direct
        smin = [0]   # the split's threshold, once a whole write to this rank went through
        smin_ = self.dsplit_min
        spw = c + W.G_DSPLIT
        split = self._split_send(dst, c, off)
        limit = self.eager_limit
        recent = self.dsplit_recent
        clock = time.perf_counter
        yield_ = os.sched_yield
        address = _linux.buffer_address
        claims = 1 if self.dsplit_adapt else 0   # (in the midpoint's low bit: the receiver
        # claims its half before reading it only when we may take it)

        def release():   # (a receiver asleep in its withdrawal waits for this)
            words[cw] = 0
            if words[sw]:
                _linux.futex_wake(waddr)

        def unmark():   # (WRITING: first in q from the claim on, a nested call's
            if q:           # records behind it; 3.10 can run a handler between the
                if q[0] is WRITING:   # check that q is empty and the append)
                    q.popleft()
                elif WRITING in q:
                    q.remove(WRITING)

        def direct(ctx, tag, mv, n):
            g = words[gw]
            local = 0
            if recent[dst]:
                recent[dst] = 0
                if not g and not (off[0] or pushes or words[deadw]):
                    # (we just took a split write from dst: it returns from that Send
                    # now and, in a ping-pong, publishes its Recv within microseconds;
                    # our buffer's address is worked out while it does)
                    try:
                        local = address(mv)[0]
                    except (BufferError, TypeError, ValueError):
                        return False
                    end_ = clock() + GRACE_SECONDS
                    while not g and clock() < end_:
                        yield_()
                        g = words[gw]
            if not g or off[0] or pushes or words[deadw]:
                return False
            if words[xw] != ctx or n > words[kw]:
                return False
            if n > limit and smin[0] and not (n >= smin[0] and words[spw]):
                return False   # streamed size, not split: streamed (the first one goes
                # whole, as at eager sizes: it proves our writes to this rank allowed)
            tg = words[tgw]   # (the tag plus 1; 0: ANY_TAG)
            if tg != tag + 1 and tg:
                return False
            addr = words[aw]
            head = out_head[dst]
            if words[tw] != head or words[gw] != g:
                return False   # ours still in the ring (order), or withdrawn meanwhile
            if not local:
                try:
                    local = address(mv)[0]
                except (BufferError, TypeError, ValueError):
                    return False
            pid = t_.pid_of(dst)
            if not pid or q:   # (q: a handler run at a call above queued a record
                return False   # to dst: after it, the usual way)
            splitting = None   # (a split under way: the list its first exception goes in)
            try:
                q.append(WRITING)   # (a send to dst nested in this write from here on:
                words[cw] = g       # refused; inside the try: never left behind)
                _linux.fence()
                if words[gw] != g or words[tw] != head or out_head[dst] != head or \
                        len(q) != 1 or q[0] is not WRITING:
                    # withdrawn (the receiver goes on), or a send of ours put a record
                    # at ``head`` meanwhile (a signal handler's, run at a call above):
                    # ours would overwrite it; the usual path sends after it (or after
                    # what a nested call queued behind the mark)
                    release()
                    unmark()
                    return False
                if smin[0] and n >= smin[0] and words[spw] and n >> 13:
                    mid = (n >> 1) & ~4095
                    splitting = [None]   # (set before the record is out: see the except)
                    pack(data, base + head % rb, K_DSPLIT, ctx, tag, n, g, local, 0,
                         mid | claims)
                    end = head + HDR_BYTES
                    out_head[dst] = end
                    words[hw] = end
                    unmark()   # (the record is out: a send to dst may follow it)
                    if words[sw]:
                        _linux.futex_wake(waddr)
                    exc = split(splitting, g, pid, local, addr, mid, n)
                    splitting = None
                    stats[0] += 1
                    t_.stats_dsplit[0] += 1
                    if exc is not None:
                        raise exc
                    return True
                try:
                    _linux.process_vm_writev(pid, local, addr, n)
                except OSError as e:   # denied (never again), the receiver gone, a fault:
                    if e.errno in DENIED:   # the usual path sends it whole
                        off[0] = True
                    release()
                    unmark()
                    return False
                smin[0] = smin_   # (our writes to this rank are allowed: split the next)
                pack(data, base + head % rb, K_DIRECT, ctx, tag, n, g, 0, 0, 0)
                end = head + HDR_BYTES   # (the ring was empty: room, and no wrap)
                out_head[dst] = end
                words[hw] = end
                unmark()
                stats[0] += 1
                if words[sw]:
                    _linux.futex_wake(waddr)
                return True
            except BaseException as e:   # (a signal handler's): the record is out or not
                end = out_head[dst]   # (read first: a send nested in unmark's call
                unmark()              # writes after ``end``, not in our place)
                if end == head:
                    release()   # not sent: the receive waits on for a message
                    raise
                if words[hw] != end:
                    words[hw] = end
                    _linux.futex_wake(waddr)
                if splitting is not None:
                    # (out, not finished: the receiver reads our buffer; finish first:
                    # every step of it is idempotent; also when split's own loop let a
                    # second exception out: the first one is raised)
                    if splitting[0] is None:
                        splitting[0] = e
                    split(splitting, g, pid, local, addr, mid, n)
                    stats[0] += 1
                    raise splitting[0]
                raise
        return direct

    def _split_wait(self, w: int, v: int, peer: int) -> int:
        """Wait until word ``w`` (a split direct write's state) holds ``v`` or a
        later state of the same generation (``v >> 2``; the word is never reset: a
        value of another generation, stale, never ends the wait): sched_yield up to
        ``spin_seconds``, then futex naps with ``peer``'s death checked between them
        (PeerDiedError), this rank's sleeping word raised meanwhile: the peer wakes
        us only then (a futex wake costs ≈ 2.3 µs of ctypes; "sixteenth round
        (mid-size)").  Not oversubscribed, ``pure_polls`` polls come first (as the
        taker's wait: the peer's half is a few microseconds away)."""
        words = self.words
        x = words[w]
        g = v >> 2
        if x >= v and x >> 2 == g:
            return x
        i = self.pure_polls
        while i > 0:
            x = words[w]
            if x >= v and x >> 2 == g:
                return x
            i -= 1
        spin_end = time.perf_counter() + self.spin_seconds
        while True:
            x = words[w]
            if x >= v and x >> 2 == g:
                return x
            if time.perf_counter() < spin_end:
                os.sched_yield()
                continue
            if words[self.world.rank_word(peer, W.R_DEAD)] or not _linux.pid_alive(
                    self.pid_of(peer)):
                x = words[w]   # (it may have said so, then exited, since we looked)
                if x >= v and x >> 2 == g:
                    return x
                raise PeerDiedError(f"rank {peer} died during a split direct write with rank "
                                    f"{self.rank}", rank=peer, status=self.dead.get(peer))
            ms = self.my_sleeping
            was = words[ms]   # (kept: a wait nested in a handler leaves it as it found it)
            words[ms] = 1
            try:
                _linux.futex_wait(self.base + w * 8, x, self.sleep_seconds / 10)
            finally:
                words[ms] = was

    def _split_take(self, src: int, g: int, remote: int, mid: int, n: int) -> None:
        """The receiver's part of the split direct write of generation ``g`` from
        ``src`` (its K_DSPLIT record, our buffer published at ``direct_pub``; ``mid``
        the record's midpoint, page-aligned, its low bit set when the sender may
        claim our half: the adaptive split): read
        [0, mid) of the sender's buffer (``remote``) into ours, wait for the
        sender's half (G_DSDONE), read that too if it could not write it, then say
        we are done with its buffer (G_DRDONE).  May run twice (an exception
        inside it): a half read again is the same bytes (the sender waits).
        PeerDiedError if the sender dies meanwhile; MmpiError if neither side
        could copy a half."""
        if self.dsplit_failed.get(src) == g:   # (run again: the same error, once more)
            raise self._split_failed(src, g, n)
        self.dsplit_taking += 1
        try:
            self._split_take_steps(src, g, remote, mid & ~4095, n, mid & 1)
        finally:
            self.dsplit_taking -= 1

    def _split_failed(self, src: int, g: int, n: int, why: str = "") -> MmpiError:
        """The error of split ``g`` from ``src`` that neither rank could copy, noted
        (a run again raises it again; the record is taken by the caller)."""
        self.dsplit_failed[src] = g
        return MmpiError(f"a direct write of {n} bytes from rank {src} failed: neither rank "
                         f"could copy it{f' ({why})' if why else ''}; set "
                         f"DRILLER_MMPI_DSPLIT_MIN=0 to turn the split off")

    def _split_take_steps(self, src: int, g: int, remote: int, mid: int, n: int,
                          claims: int) -> None:
        pg, addr = self.direct_pub.get(src, (0, 0))
        if pg != g:
            raise MmpiError(f"corrupt record from rank {src}: a split direct write for "
                            f"generation {g}, published {pg}")
        words = self.words
        c = self.world.ring_ctrl(src, self.rank) // 8
        sdw, rdw = c + W.G_DSDONE, c + W.G_DRDONE
        raddr = self.base + rdw * 8
        done = 4 * g + 1
        r = words[rdw]
        if r == done:
            return
        pid = self.pid_of(src)
        sw = self.sleeping_w[src]   # (woken only when asleep: _split_wait)
        if r != done + 1:
            # our half claimed (Dekker with the sender's claim: one of the two sees
            # the other's store; a tie is ours, the sender gives way), when the sender
            # may claim it (adaptive; otherwise no claim, no fence: ≈ 1.2 µs)
            if claims:
                words[c + W.G_DRCLAIM] = g
                _linux.fence()
            if claims and words[c + W.G_DSCLAIM] == g:   # it may be writing our half:
                # its word says
                if self._split_wait(sdw, done, src) == done + 2:   # both written by it
                    words[rdw] = done
                    if words[sw]:
                        _linux.futex_wake(raddr)
                    self.stats_dsplit[1] += 1
                    self.dsplit_recent[src] = 1
                    return
                # (done: it gave way, our half is ours; done + 1: its half failed, we
                # read both, as below)
            try:
                _linux.process_vm_readv(pid, addr, remote, mid)
            except OSError as e:
                if e.errno in DENIED:
                    self.dsplit_off.add(src)   # (never asked to split again)
                words[rdw] = done + 1   # the sender writes our half too
                if words[sw]:
                    _linux.futex_wake(raddr)
        if words[rdw] == done + 1:
            if self._split_wait(sdw, done + 1, src) != done + 2:
                raise self._split_failed(src, g, n, "process_vm_readv/writev refused")
            self.stats_dsplit[1] += 1
            return
        if self._split_wait(sdw, done, src) == done + 1:   # its half failed: we read it
            try:
                _linux.process_vm_readv(pid, addr + mid, remote + mid, n - mid)
            except OSError as e:
                words[rdw] = done
                if words[sw]:
                    _linux.futex_wake(raddr)
                raise self._split_failed(src, g, n, f"its second half: {e}") from e
        words[rdw] = done
        if words[sw]:
            _linux.futex_wake(raddr)
        self.stats_dsplit[1] += 1
        self.dsplit_recent[src] = 1

    def _split_send(self, dst: int, c: int, off: list):
        """The sender's part of a split direct write to ``dst`` (control block word
        ``c``), once its K_DSPLIT record is out: ``(first, g, pid, local, addr,
        mid, n) -> first[0]``: writes [mid, n) of our buffer (``local``) into the
        receive's (``addr``), says so (G_DSDONE), waits for the receiver's G_DRDONE
        (it read [0, mid) from our buffer), writes [0, mid) too if the receiver
        could not.  Every step may run twice; the first exception meanwhile is kept
        in ``first[0]`` and returned: the caller raises it once the receiver is done
        with our buffer.  PeerDiedError (the receiver died meanwhile) is raised.  A
        denied write sets ``off[0]`` (the direct write is not tried again)."""
        words = self.words
        sdw, rdw = c + W.G_DSDONE, c + W.G_DRDONE
        scw, rcw = c + W.G_DSCLAIM, c + W.G_DRCLAIM
        saddr = self.base + sdw * 8
        sw = self.sleeping_w[dst]
        swait = self._split_wait
        writev = _linux.process_vm_writev
        wake = _linux.futex_wake
        fence = _linux.fence
        took = self.stats_dsplit
        adapt = self.dsplit_adapt

        def steps(g, pid, local, addr, mid, n):
            done = 4 * g + 1
            if words[sdw] < done:
                try:
                    writev(pid, local + mid, addr + mid, n - mid)
                    x = done
                except OSError as e:   # (the receiver reads that half itself)
                    if e.errno in DENIED:
                        off[0] = True
                    x = done + 1
                if x == done and adapt and words[rcw] != g:
                    # the receiver has not started its half: claim it (Dekker with its
                    # claim; seen, we give way) and write it too, so a receiver not
                    # running costs no more than the unsplit write
                    words[scw] = g
                    fence()
                    if words[rcw] != g:
                        try:
                            writev(pid, local, addr, mid)
                            x = done + 2
                            took[2] += 1
                        except OSError:   # (given back: the receiver reads it)
                            pass
                words[sdw] = x
                if words[sw]:   # (the receiver asleep in its wait: _split_wait)
                    wake(saddr)
            if words[sdw] == done + 2:   # (both halves ours: it reads nothing of ours)
                return
            if swait(rdw, done, dst) == done + 1 and words[sdw] == done:
                try:   # the receiver could not read its half: we write it
                    writev(pid, local, addr, mid)
                    words[sdw] = done + 2
                except OSError:   # (neither could: the receiver raises)
                    words[sdw] = done + 1
                if words[sw]:
                    wake(saddr)

        def split(first, g, pid, local, addr, mid, n):
            return _to_the_end(steps, first, g, pid, local, addr, mid, n)
        return split

    def _taker(self, src: int):
        """``take_fast`` for a buffer receive from ``src``, specialised as
        :meth:`_sender` is: ``(tag, ctx, mv, cap=-1)`` -> (source, tag, nbytes)
        when the next record from ``src`` is a plain eager message this receive
        matches and that fits (copied into ``mv``), False when that ring is empty
        (and nothing else is queued), None otherwise (use the general path).
        ``cap`` >= 0: receive into the first ``cap`` bytes of ``mv``, a
        ``bytearray`` or ``mmap`` written by slice assignment (no view of it is
        made; a read-only or closed one declines, the record stays in the ring).
        ``wait`` (Recv's, through ``recvers[src]``): an empty ring is waited for as
        recv_fast does (``pure_polls`` polls, then sched_yield up to
        ``spin_seconds``, then None), laid out for the ping-pong's critical path
        (docs/mmpi.md, "Hot paths, fourth round"): the checks that cannot change
        while it waits run before it polls, the poll reads two closure cells, and
        from "record visible" to the return it runs the take alone."""
        if src == self.rank:
            return _declined
        posted = self.engine.posted          # (the engine never rebinds its queues)
        unexpected = self.engine.unexpected
        t_ = self
        tails = self.in_tail
        words = self.words
        data = self.data
        hw = self.in_head[src]
        tw = self.in_tailw[src]
        pw = self.in_pwait[src]
        base = self.in_data[src]
        rb = self.ring_bytes
        waddr = self.base + tw * 8
        unpack = _HDR5I.unpack_from
        puts = _PUTS
        wake = _linux.futex_wake
        clock = time.perf_counter
        yield_ = os.sched_yield
        owait = self._adaptive_wait(hw) if self.pure_polls < 0 else None
        dmin = self.direct_min if src not in self.remote else 0
        dwait = self._direct_wait(src) if dmin else None

        deferred = self.deferred

        def take(tag, ctx, mv, cap=-1, wait=False):
            if deferred:   # (a deferred run of takes ends before anything else)
                t_.flush_deferred()
            if posted or unexpected or t_.npending:
                return None
            t = tails[src]
            if words[hw] == t:
                if not wait:
                    return False
                p = base + t % rb   # (where the record will be and what fits, worked
                lim = cap if cap >= 0 else len(mv)   # out before the wait: off the path)
                i = t_.pure_polls   # (the checks above cannot change meanwhile)
                if lim >= dmin > 0 and i >= 0:   # a large receive: published while it waits
                    r = dwait(t, mv, lim, ctx, tag)
                    if r is None or type(r) is tuple:   # nothing came, or the message
                        return r                        # is in mv already (K_DIRECT)
                    if r:
                        i = 1   # (the record is visible: the wait below ends at once)
                if i < 0:   # oversubscribed: the poll budget learnt per peer
                    if not owait(t, lim):
                        return None
                    i = 1   # (the record is visible: skip the spin below)
                while i:
                    if words[hw] != t:
                        break
                    i -= 1
                else:
                    spin_end = clock() + t_.spin_seconds
                    while words[hw] == t:
                        if clock() > spin_end:
                            return None
                        yield_()
            else:
                p = base + t % rb
                lim = cap if cap >= 0 else len(mv)
            kf, c, tg, nb, pl, plen = unpack(data, p)
            if c != ctx or (tag != tg and tag != -1) or nb > lim:
                return None
            if kf == K_INLINE:   # the payload in the header's line, read with it
                try:
                    puts[nb](mv, 0, pl)
                except (TypeError, ValueError, struct.error):   # a read-only, closed or
                    return None                                  # shrunk mmap (cap >= 0)
                t += HDR_BYTES
                tails[src] = t
                words[tw] = t
                if words[pw]:
                    wake(waddr)
                return src, tg, nb
            if kf != K_EAGER:
                return None
            if nb:
                p += HDR_BYTES
                try:
                    if nb < BIG_COPY:
                        mv[0:nb] = data[p:p + nb]
                    else:
                        _copy(mv, 0, data, p, nb)
                except (TypeError, ValueError):   # a read-only or closed mmap (cap >= 0)
                    return None
            t += HDR_BYTES + ((plen + 63) & ~63)
            tails[src] = t
            words[tw] = t
            if words[pw]:
                wake(waddr)
            return src, tg, nb

        return take

    def _direct_wait(self, src: int):
        """A blocked Recv's wait for ``src``'s ring with its buffer published
        (docs/mmpi.md, "Protocols": direct): ``dwait(t, mv, cap, ctx, tag)``
        publishes the first ``cap`` bytes of ``mv`` (address, capacity, context,
        tag, then a new generation), waits as the taker does (``pure_polls``
        polls, then sched_yield up to ``spin_seconds``) for the head to move from
        ``t``, and withdraws (the generation cleared, a fence, the claim read: a
        sender that claimed it is writing, so the withdrawal waits for its record
        or its release).  Returns (src, tag, nbytes): this receive's K_DIRECT
        record came and is taken (the message is in ``mv``); 1: another record
        is visible (the taker reads it); None: nothing came (the general path
        waits on); 0: ``mv`` cannot be published (read-only, not contiguous:
        the plain wait).  An exception while published (a signal handler's)
        withdraws the same way, takes this receive's K_DIRECT record if one came
        (the message is in the buffer, as for a receive matched before it
        raised) and goes on; so does one while the record is taken."""
        words = self.words
        data = self.data
        c = self.world.ring_ctrl(src, self.rank) // 8
        gw, aw, kw, xw, tgw, cw = (c + W.G_DGEN, c + W.G_DADDR, c + W.G_DCAP, c + W.G_DCTX,
                                   c + W.G_DTAG, c + W.G_DCLAIM)
        hw = self.in_head[src]
        tw = self.in_tailw[src]
        pw = self.in_pwait[src]
        base = self.in_data[src]
        rb = self.ring_bytes
        tails = self.in_tail
        deadw = self.world.rank_word(src, W.R_DEAD)
        clock = time.perf_counter
        yield_ = os.sched_yield
        t_ = self
        count = [0]

        def withdraw(g, t):
            # -> an exception raised meanwhile (the first), or None
            exc = None
            while True:
                try:
                    words[gw] = 0
                    if words[hw] != t:
                        # a record is in: no claim of ours is in flight or can come
                        # (the sender claims only with its ring empty, and sees our
                        # cleared generation before the tail we move once it is
                        # taken), so no fence (≈ 1.2 µs: "sixteenth round (mid-size)")
                        return exc
                    _linux.fence()
                    if words[cw] == g:   # claimed: its record or its release comes
                        spin_end = clock() + t_.spin_seconds
                        while words[cw] == g and words[hw] == t:
                            if clock() < spin_end:
                                yield_()
                                continue
                            if words[deadw] or not _linux.pid_alive(t_.pid_of(src)):
                                if words[cw] != g or words[hw] != t:
                                    continue   # (its record or release came, then it exited)
                                raise PeerDiedError(
                                    f"rank {src} died while writing a message into the buffer "
                                    f"of rank {t_.rank}'s Recv", rank=src,
                                    status=t_.dead.get(src))
                            ms = t_.my_sleeping
                            was = words[ms]   # (as _split_wait: a nested wait restores it)
                            words[ms] = 1   # (the sender wakes us)
                            try:
                                _linux.futex_wait(t_.base + hw * 8, t, t_.sleep_seconds / 10)
                            finally:
                                words[ms] = was
                    return exc
                except PeerDiedError:
                    raise
                except BaseException as e:
                    if exc is None:
                        exc = e

        seen = t_.direct_seen
        spw, rdw = c + W.G_DSPLIT, c + W.G_DRDONE
        pubs = t_.direct_pub
        take_split = t_._split_take

        def mine(t, g):
            # the record at t, if it is this receive's K_DIRECT, taken (its bytes are
            # in place): (src, tag, nbytes), else None.  Called again after an
            # exception inside it, it finishes (its stores are idempotent).  A drain
            # run meanwhile (an MPI call in a signal handler) took it: _record kept
            # its envelope in direct_seen.
            d = seen.pop(src, None) if seen else None
            if d is not None and d[0] == g and tails[src] != t:
                return src, d[1], d[2]
            e = t + HDR_BYTES
            err = None
            if tails[src] == t:
                p = base + t % rb
                h = HDR.unpack_from(data, p)
                if h[4] != g or h[0] != K_DIRECT and h[0] != K_DSPLIT:
                    return None
                if h[0] == K_DSPLIT:   # (our half read, the sender's written)
                    try:
                        take_split(src, g, h[5], h[7], h[3])
                    except MmpiError as x:   # (it failed for good, or the sender died:
                        err = x              # the record is taken, the Recv raises)
                tails[src] = e
            elif tails[src] != e:
                return None
            words[tw] = e
            if words[pw]:
                _linux.futex_wake(t_.base + tw * 8)
            if err is not None:
                raise err
            _, _, tg, nb = _unpack4(data, base + t % rb)
            return src, tg, nb

        def recover(g, t):
            try:
                withdraw(g, t)
            except PeerDiedError:   # (no record, and none can come: not again)
                return
            if words[hw] != t:
                mine(t, g)

        def dwait(t, mv, cap, ctx, tag):
            if words[gw] or t_.dsplit_taking:   # published by a Recv this one interrupted
                return 0    # (a handler's call), or inside a split take: the plain wait
            try:
                v = memoryview(mv)   # (held while published: the buffer cannot be freed)
                if v.readonly or not v.c_contiguous or v.nbytes < cap:
                    return 0
                addr = _linux.buffer_address(v, True)[0]
            except (BufferError, TypeError, ValueError):
                return 0
            if not 0 <= ctx < 1 << 63:   # (the words are unsigned)
                return 0
            count[0] += 1
            g = count[0]
            pubs[src] = (g, addr)
            words[spw] = 1 if t_.dsplit_min and src not in t_.dsplit_off else 0
            words[aw] = addr
            words[kw] = cap
            words[xw] = ctx
            words[tgw] = tag + 1   # (0: ANY_TAG; the words are unsigned)
            try:
                words[gw] = g   # (last: the fields above are read after it)
                polls = t_.pure_polls   # (as the taker's wait: polls, then yields)
                spin_end = 0.0
                while words[hw] == t:
                    if polls:
                        polls -= 1
                    elif not spin_end:
                        spin_end = clock() + t_.spin_seconds
                    elif clock() > spin_end:
                        break
                    else:
                        yield_()
                exc = withdraw(g, t)
                if words[hw] == t:
                    if exc is not None:
                        raise exc
                    return None
                res = mine(t, g)
                if exc is not None:
                    raise exc
            except PeerDiedError:   # (withdraw's: the sender died holding its claim)
                raise
            except BaseException:
                # (withdrawn again, our record taken if it came: both idempotent, run
                # to their end with signals held: a second exception comes after)
                t_._shielded(recover, g, t)
                raise
            if res is None:
                return 1
            t_.stats_direct[1] += 1
            return res

        return dwait

    def _adaptive_wait(self, hw: int):
        """An oversubscribed rank's wait for the ring whose head word is ``hw``:
        ``(t, nb) -> bool``, True once the head moved from ``t``, False after
        ``spin_seconds`` (then the general path waits, and sleeps).  It polls
        ``budget`` times before it yields, learnt per peer from the last waits
        (docs/mmpi.md, "Waiting"): a reply that came while polling means the
        peer runs on another core at the same time (polling keeps both ranks
        on their cores, no context switch), so the budget goes to ``ADAPT_MAX``
        (if it came within ``ADAPT_PROBE`` polls: a slower one, a long message's,
        leaves the core to another rank better); one that came only after a yield
        means the peer needed our core, or was not running, so the budget drops
        to 0 and the rank yields at once, with a probe of ``ADAPT_PROBE`` polls
        after ``ADAPT_EVERY`` waits, the interval doubling after each failed probe
        (up to ``ADAPT_BACKOFF`` times) and back to ``ADAPT_EVERY`` at a reply
        within the polls.  ``nb``, the receive's size: up to ``adapt_keep``
        bytes any reply within the budget keeps it (the peer copies the message
        out and its reply in meanwhile: docs/mmpi.md, "sixteenth round")."""
        words = self.words
        clock = time.perf_counter
        yield_ = os.sched_yield
        t_ = self
        top = self.adapt_max
        probe = self.adapt_probe
        every = self.adapt_every
        most = every * ADAPT_BACKOFF
        keep = self.adapt_keep
        # [polls before yielding, waits left before the next probe, waits between probes]
        st = [0, every, every]
        stats = self.stats_adapt

        def owait(t, nb):
            i = st[0]
            if not i:
                st[1] -= 1
                if st[1] <= 0:
                    i = probe
                    stats[2] += 1
            n = i
            while i:
                if words[hw] != t:
                    stats[0] += 1
                    if n - i < probe or nb <= keep:   # a quick reply (or a mid-size
                        # message's, whose peer copies it out and the reply in): keep polling
                        st[0] = top
                        st[2] = every
                        return True
                    break   # a slow one (a long message): our core would serve
                i -= 1      # another rank meanwhile better, as after a failure
            if n:   # the budget or a probe ran out: yield at once from now on
                if not st[0] and st[2] < most:
                    st[2] *= 2   # a failed probe: the next comes twice as late
                st[0] = 0
                st[1] = st[2]
                if i:
                    return True
            if words[hw] == t:
                yield_()   # (a partner on our core replies meanwhile: no clock read for it)
                if words[hw] == t:
                    spin_end = clock() + t_.spin_seconds
                    while words[hw] == t:
                        if clock() > spin_end:
                            return False
                        yield_()
            stats[1] += 1
            return True
        return owait

    def _recver(self, src: int):
        """Recv's fast path from ``src``: ``(tag, ctx, mv, cap, wait)`` as
        ``takers[src]``'s with ``wait`` true (the take and the wait in one
        closure: the taker itself).  (A hybrid world's sources on another node
        have HybridTransport._recver's.)"""
        return self.takers[src]

    def _irecver(self, src: int):
        """Irecv's fast path for a buffer receive from ``src``: ``(tag, ctx, mv, cap=-1)``
        (``cap`` as :meth:`_taker`'s) -> the TakenOp of the plain eager message taken at
        once from the ring (by ``takers[src]``; one op shared by alike messages in a
        row), or the RecvOp posted for it (the engine's
        ``post`` inlined: nothing is unexpected, so nothing can match it now; the
        records still in the ring meet the posted receives in order, in one pass:
        :meth:`_serve`), or None (the general path).  Receives posted before it take
        what waits in the ring first (:meth:`serve_posted`).

        ``seen``: a head this closure read from ``src``'s ring (a bound below its
        head: heads only grow), so that while the receiver is behind (osu_bw's
        receiver between processes) it does not read the head's cache line, which
        the sender writes per message, once per receive; an inline record (1..16
        bytes) below it is taken here, :meth:`_taker`'s inline branch without its
        second reading of that line (docs/mmpi.md, "sixth round")."""
        if src == self.rank or src in self.remote:
            return _declined
        eng = self.engine
        posted = eng.posted
        unexpected = eng.unexpected
        take = self.takers[src]
        serve = self.serve_posted
        t_ = self
        words = self.words
        tails = self.in_tail
        hw = self.in_head[src]
        Op = RecvOp
        new = object.__new__
        posted_state = E.R_POSTED
        last = TakenOp(src, -1, -1)   # the op of the last message taken (shared, read only)
        lk = (0, -2, -2, -2)   # the key of the last receive posted with a view (RecvOp.key)
        seen = 0   # a head of src's ring read here (the head is at or past it)
        # the inline take's: one cell (each cell is copied at every call)
        ring = (self.data, self.in_data[src], self.ring_bytes, self.in_tailw[src],
                self.in_pwait[src])
        # the deferred run of takes (fused's): its buffer (None: none), size, op
        deferred = self.deferred
        Deferred = DeferredOp
        dobj = None
        dnb = 0
        dop = None

        def irecv(tag, ctx, mv, cap=-1):
            nonlocal last, lk, seen
            if deferred:
                t_.flush_deferred()
            if unexpected or t_.npending:
                return None
            t = tails[src]
            if t < seen or (h := words[hw]) != t:
                # the record at t is published
                if t >= seen:
                    seen = h
                if not posted:
                    # an inline one for this receive: taken here (takers[src]'s
                    # inline branch, the head not read again)
                    data, base, rb, tw, pw = ring
                    p = base + t % rb
                    kf, c, tg, nb, pl, _ = _unpack5i(data, p)
                    if kf == K_INLINE and c == ctx and (tag == tg or tag == -1) \
                            and nb <= (cap if cap >= 0 else len(mv)):
                        try:
                            _PUTS[nb](mv, 0, pl)
                        except (TypeError, ValueError, struct.error):   # a read-only,
                            return None                     # closed or shrunk buffer
                        t += HDR_BYTES
                        tails[src] = t
                        words[tw] = t
                        if words[pw]:
                            _linux.futex_wake(t_.base + tw * 8)
                        op = last
                        if op.tag != tg or op.count != nb:
                            op = last = TakenOp(src, tg, nb)
                        return op
                if not posted or serve(src):
                    # the next record, taken by this receive (takers[src]'s): its op
                    # shared with the alike messages taken before it
                    res = take(tag, ctx, mv, cap)
                    if res is not False:
                        if res is None:
                            return None
                        op = last
                        if op.tag != res[1] or op.count != res[2]:
                            op = last = TakenOp(src, res[1], res[2])
                        return op
            key = None
            if cap >= 0:   # a bytearray or mmap (takers' ``cap``): posted, a view of it
                k = lk
                if posted and posted[-1].key is k and k[0] == id(mv) and k[1] == cap \
                        and k[2] == tag and k[3] == ctx:
                    # the last receive posted, still posted, was this one's alike
                    # (its view keeps the buffer alive, so the id is the buffer's):
                    # its view and key shared (osu_bw's window of one spec)
                    op = posted[-1]
                    mv = op.mv
                    key = k
                else:
                    try:
                        v = memoryview(mv)
                    except ValueError:   # closed: the general parser says so
                        return None
                    if v.readonly:
                        return None
                    key = lk = (id(mv), cap, tag, ctx)
                    mv = v[:cap]
            op = new(Op)   # RecvOp(src, tag, ctx, mv), posted: its __init__ inlined
            # (tests/test_bwspecs.py checks that every slot of RecvOp is set here)
            op.source = src
            op.tag = tag
            op.context = ctx
            op.capacity = len(mv)
            op.state = posted_state
            op.message = None
            op.error = 0
            op.mv = mv
            op.done = False
            op.exc = None
            op.count = 0
            op.value = None
            op.cancelled = False
            op.key = key
            posted.append(op)
            return op

        def spec(obj, cap, ctx):
            """Irecv's remembered spec (a ``bytearray`` or ``mmap`` ``obj``, its first
            ``cap`` bytes, context ``ctx``) fused with ``irecv``'s inline take: a
            function ``(tag)`` -> as ``irecv`` (None: the general path, as for a
            closed ``obj`` or one shrunk below ``cap``).  An inline record for it
            below the head seen is taken here, and on an empty ring the receive is
            posted here; anything else goes to ``irecv``."""
            data, base, rb, tw, pw = ring
            fk = (id(obj), cap, -2, ctx)   # the key of the last receive it posted

            def fused(tag):
                nonlocal seen, fk, dobj, dnb, dop
                try:
                    if len(obj) < cap:   # shrunk: the parser says what is wrong
                        return None
                except ValueError:   # closed: likewise
                    return None
                if unexpected or t_.npending:
                    return None
                t = tails[src]
                if t >= seen and (seen := words[hw]) == t:
                    # nothing there: posted (irecv's posting, its key and view
                    # shared with the alike receive posted last by this closure);
                    # a deferred run ends here (the receiver caught up)
                    if dobj is not None:
                        flush()
                    k = fk
                    if posted and posted[-1].key is k and k[2] == tag:
                        mv = posted[-1].mv
                    else:
                        try:
                            v = memoryview(obj)
                        except ValueError:   # closed: the general parser says so
                            return None
                        if v.readonly:
                            return None
                        k = fk = (id(obj), cap, tag, ctx)
                        mv = v[:cap]
                    op = new(Op)   # (as irecv's: tests/test_bw8d.py checks every slot)
                    op.source = src
                    op.tag = tag
                    op.context = ctx
                    op.capacity = cap
                    op.state = posted_state
                    op.message = None
                    op.error = 0
                    op.mv = mv
                    op.done = False
                    op.exc = None
                    op.count = 0
                    op.value = None
                    op.cancelled = False
                    op.key = k
                    posted.append(op)
                    return op
                if not posted:
                    kf, c, tg, nb = _unpack4(data, base + t % rb)
                    if kf == K_INLINE and c == ctx and (tag == tg or tag == -1) and nb <= cap:
                        # taken, its copy and the tail's publishing deferred: the
                        # run's op (DeferredOp), while the records go to the same
                        # buffer with the same size and tag
                        op = dop
                        if dobj is not obj or nb != dnb or tg != op.tag:
                            if dobj is not None:
                                flush()
                            try:
                                if memoryview(obj).readonly:   # the parser says so
                                    return None
                            except ValueError:   # closed meanwhile: likewise
                                return None
                            dobj = obj
                            dnb = nb
                            op = dop = Deferred(src, tg, nb, flush)
                            deferred[src] = flush
                        tails[src] = t + HDR_BYTES
                        return op
                return irecv(tag, ctx, obj, cap)   # (serve, the taker: the head seen)
            return fused

        def flush():
            """The deferred run's end: its last payload copied into its buffer (the
            run's records are the last taken: every other consumer of src's ring
            flushes first), the tail published, a producer waiting for room woken."""
            nonlocal dobj
            o = dobj
            if o is None:
                return
            if t_.deferred is not deferred:   # (a forked child's transport, made
                return                        # unusable, raises here: nothing written)
            data, base, rb, tw, pw = ring
            t = tails[src]
            n = dnb
            try:
                # the run is forgotten only once its copy is made: an exception
                # meanwhile (a signal handler's, Ctrl-C) leaves it to the next flush
                _PUTS[n](o, 0, _payload(data, base + (t - HDR_BYTES) % rb + INLINE_AT)[0])
            except (TypeError, ValueError, struct.error) as e:
                dop.exc = MmpiError(
                    f"Irecv from rank {src} (tag {dop.tag}): the receive buffer could "
                    f"not take the {n}-byte message ({e}): it was closed, shrunk or "
                    f"made read-only before the receive completed; keep a receive "
                    f"buffer as it is until its Wait or Test says done")
            dobj = None
            deferred.pop(src, None)
            words[tw] = t
            if words[pw]:
                _linux.futex_wake(t_.base + tw * 8)
        irecv.spec = spec
        return irecv

    def recv_fast(self, src: int, tag: int, ctx: int, mv):
        """A blocking receive served straight from the ring when nothing else is
        queued: spins (sched_yield) up to ``spin_seconds`` for the next record; if it
        is a plain eager message this receive matches and it fits, copies it and
        returns (source, tag, nbytes); else returns None (use the general path,
        which sees the same records in the same order)."""
        if self.deferred:
            self.flush_deferred()
        eng = self.engine
        if eng.posted or eng.unexpected or self.npending or src == self.rank:
            return None
        words = self.words
        tails = self.in_tail
        pure = self.pure_polls
        polls = 0
        spin_end = 0.0
        if src >= 0:
            # a specific source: only its ring can hold the match, others wait their
            # turn (the general path, taken after spin_seconds, drains every ring)
            hw = self.in_head[src]
            t = tails[src]
            while words[hw] == t:
                polls += 1
                if polls < pure:
                    continue
                if not spin_end:
                    spin_end = time.perf_counter() + self.spin_seconds
                elif time.perf_counter() > spin_end:
                    return None
                os.sched_yield()
            if mv is not None:  # a buffer receive: _take_fast inlined (the hot path)
                data = self.data
                p = self.in_data[src] + t % self.ring_bytes
                kf, c, tg, nb, sid, addr, plen, _ = HDR.unpack_from(data, p)
                if (c != ctx or (tag != tg and tag != -1) or nb > len(mv)):
                    return None
                if kf == K_INLINE:
                    mv[:nb] = data[p + INLINE_AT:p + INLINE_AT + nb]
                elif kf != K_EAGER:
                    return None
                elif nb:
                    if nb < BIG_COPY:
                        mv[:nb] = data[p + HDR_BYTES:p + HDR_BYTES + nb]
                    else:
                        _copy(mv, 0, data, p + HDR_BYTES, nb)
                t += HDR_BYTES + ((plen + 63) & ~63)
                tails[src] = t
                tw = self.in_tailw[src]
                words[tw] = t
                if words[self.in_pwait[src]]:
                    _linux.futex_wake(self.base + tw * 8)
                return src, tg, nb
            return self._take_fast(src, t, tag, ctx, mv)
        rings = self.in_list
        while True:
            for s, hw in rings:
                t = tails[s]
                if words[hw] != t:
                    return self._take_fast(s, t, tag, ctx, mv)
            polls += 1
            if polls < pure:
                continue
            if not spin_end:
                spin_end = time.perf_counter() + self.spin_seconds
            elif time.perf_counter() > spin_end:
                return None
            os.sched_yield()

    def take_fast(self, src: int, tag: int, ctx: int, mv):
        """recv_fast without waiting (for Irecv): if nothing else is queued and the
        next record from ``src`` is a plain eager message this receive matches and
        that fits ``mv``, copy it and return (source, tag, nbytes); else None."""
        if mv is not None:   # a buffer receive: takers[src]'s (False: the ring is empty)
            return self.takers[src](tag, ctx, mv) or None
        if self.deferred:
            self.flush_deferred()
        eng = self.engine
        if eng.posted or eng.unexpected or self.npending or src == self.rank:
            return None
        t = self.in_tail[src]
        if self.words[self.in_head[src]] == t:
            return None
        return self._take_fast(src, t, tag, ctx, mv)

    def _take_fast(self, s: int, t: int, tag: int, ctx: int, mv):
        """recv_fast's match: the record at tail ``t`` of the ring from ``s``."""
        data = self.data
        p = self.in_data[s] + t % self.ring_bytes
        kf, c, tg, nb, sid, addr, plen, _ = HDR.unpack_from(data, p)
        if c != ctx or (tag != tg and tag != -1):
            return None
        if mv is None:  # an object receive: a small pickled object, returned as bytes
            if kf == K_EAGER | F_OBJ << 8:
                nb = bytes(data[p + HDR_BYTES:p + HDR_BYTES + nb])
            elif kf == K_EAGER | (F_OBJ | F_PACKED) << 8:  # (stream, parts, nbytes)
                nb = self._unpack_object(data[p + HDR_BYTES:p + HDR_BYTES + plen]) + (nb,)
            elif kf == K_EAGER | (F_OBJ | F_ARRAY) << 8:  # (array, None, nbytes)
                nb = (unpack_array(data[p + HDR_BYTES:p + HDR_BYTES + plen]), None, nb)
            else:
                return None
        else:
            if nb > len(mv):
                return None
            if kf == K_INLINE:
                mv[:nb] = data[p + INLINE_AT:p + INLINE_AT + nb]
            elif kf != K_EAGER:
                return None
            elif nb:
                if nb < BIG_COPY:
                    mv[:nb] = data[p + HDR_BYTES:p + HDR_BYTES + nb]
                else:
                    _copy(mv, 0, data, p + HDR_BYTES, nb)
        t += HDR_BYTES + ((plen + 63) & ~63)
        self.in_tail[s] = t
        words = self.words
        words[self.in_tailw[s]] = t
        if words[self.in_pwait[s]]:
            _linux.futex_wake(self.base + self.in_tailw[s] * 8)
        return s, tg, nb

    def _transmit(self, s: SendOp) -> None:
        dst = s.dest
        if dst == self.rank:
            self._self_send(s)
            return
        q = self.pending[dst]
        if q and q[0] is WRITING and _mark_live(q):
            raise MmpiError(
                f"a send to rank {dst} started in the middle of this rank's direct write "
                f"to rank {dst} (from a signal handler, or code a handler called): "
                f"refused, not sent; it would have overwritten that write's record. MPI "
                f"does not allow MPI calls in signal handlers: set a flag in the handler "
                f"and send from the main code")
        if not q:
            self.engine_busy += 1
            try:
                h0 = self.out_head[dst]
                try:
                    if self._put_send(s):
                        if s.protocol != E.STREAM:  # (streamed: once its last chunk is out)
                            self._run(self.engine.transmitted(s))
                            return
                        h0 = None
                except BaseException:   # (a signal handler's): the record is out or not
                    self._settle(dst, h0, s)
                    raise
                if h0 is None:   # a streamed send's envelope is out: its first chunks now
                    if self.pushes[dst]:
                        self._push(dst)
                    return
            finally:
                self.engine_busy -= 1
        self.npending += 1   # (before the append: a count too high costs a flush)
        q.append(s)

    def _self_send(self, s: SendOp) -> None:
        if s.flags & F_OBJ:
            payload = (bytes(s.mv), s.table)  # table: (parts copied) for self
        else:
            payload = bytes(s.mv)
        m = E.Message(self.rank, s.tag, s.context, s.nbytes, E.EAGER, s.sync, s.id,
                      payload, s.flags)
        acts = self.engine.transmitted(s)
        self._run(acts)
        self._arrive(m)

    def _put(self, dst: int, kindflags: int, ctx: int, tag: int, nbytes: int, sid: int,
             addr: int, payload, plen: int, last: int = 0) -> bool:
        rb = self.ring_bytes
        reclen = HDR_BYTES + ((plen + 63) & ~63)
        head = self.out_head[dst]
        off = head % rb
        skip = rb - off if off + reclen > rb else 0
        if head + skip + reclen - self.words[self.out_tailw[dst]] > rb:
            return False
        data = self.data
        base = self.out_data[dst]
        if skip:
            HDR.pack_into(data, base + off, K_WRAP, 0, 0, 0, 0, 0, 0, 0)
            head += skip
            off = 0
        p = base + off
        HDR.pack_into(data, p, kindflags, ctx, tag, nbytes, sid, addr, plen, last)
        if plen:
            if type(payload) is list:  # a packed object: its pieces, one after the other
                o = p + HDR_BYTES
                for b in payload:
                    n = len(b)
                    data[o:o + n] = b
                    o += n
            elif plen < BIG_COPY:
                data[p + HDR_BYTES:p + HDR_BYTES + plen] = payload
            else:
                _copy(data, p + HDR_BYTES, memoryview(payload).cast("B"), 0, plen)
        head += reclen
        self.out_head[dst] = head
        self.words[self.out_headw[dst]] = head
        if self.words[self.sleeping_w[dst]]:
            _linux.futex_wake(self.base + self.out_headw[dst] * 8)
        return True

    def _put_send(self, s: SendOp) -> bool:
        flags = s.flags | (F_SYNC if s.sync else 0)
        if s.protocol == E.STREAM:  # the envelope; the caller pushes the chunks
            s.addr = _linux.buffer_address(s.mv)[0]
            if not self._put(s.dest, K_STREAM | flags << 8, s.context, s.tag, s.nbytes,
                             s.id, 0, None, 0):
                return False
            self.npending += 1
            self.pushes[s.dest].append([s.id, [(s.addr, s.nbytes)], 0, 0, s])
            return True
        if s.protocol == E.EAGER:
            if s.flags & F_PACKED:  # table: the pieces, keep: their total length
                return self._put(s.dest, K_EAGER | flags << 8, s.context, s.tag, s.nbytes,
                                 s.id, 0, s.table, s.keep)
            return self._put(s.dest, K_EAGER | flags << 8, s.context, s.tag, s.nbytes, s.id,
                             0, s.mv, len(s.mv))
        if s.guard is None:
            s.guard = bytearray(8)
        guard = _linux.buffer_address(s.guard, True)[0]
        if s.flags & F_OBJ:
            return self._put(s.dest, K_RTS | flags << 8, s.context, s.tag, s.nbytes, s.id,
                             0, s.table, len(s.table), guard)
        if not s.addr and s.nbytes:
            s.addr = _linux.buffer_address(s.mv)[0]
        return self._put(s.dest, K_RTS | flags << 8, s.context, s.tag, s.nbytes, s.id,
                         s.addr, None, 0, guard)

    def _reply(self, a: E.Reply) -> None:
        if a.dest == self.rank:
            self._run(self.engine.control(a.kind, a.sender_id))
            return
        if a.dest in self.dead or a.dest in self.gone:
            return
        kind = K_ACK if a.kind == E.ACK else K_FIN
        q = self.pending[a.dest]
        if q or not self._put(a.dest, kind, 0, 0, 0, a.sender_id, 0, None, 0):
            self.npending += 1   # (before the append: a count too high costs a flush)
            q.append(a)

    def _flush(self) -> bool:
        if self.engine_busy:   # (a handler's Finalize's sleep, in the middle of a step)
            return False
        self.engine_busy += 1
        try:
            did = False
            for dst, q in enumerate(self.pending):
                while q:
                    item = q[0]
                    if item is WRITING:
                        if _mark_live(q):
                            break   # (a direct write under way, this call nested in it)
                        continue   # (left behind: dropped)
                    h0 = self.out_head[dst]
                    try:
                        if type(item) is E.Reply:
                            kind = K_ACK if item.kind == E.ACK else K_FIN
                            if not self._put(dst, kind, 0, 0, 0, item.sender_id, 0, None, 0):
                                break
                            q.popleft()
                            self.npending -= 1
                        elif type(item) is tuple:
                            # a control record: (kind, ctx, tag, nbytes, sid, addr)
                            if not self._put(dst, *item, None, 0):
                                break
                            q.popleft()
                            self.npending -= 1
                        else:
                            if not self._put_send(item):
                                break
                            q.popleft()
                            self.npending -= 1
                            if item.protocol != E.STREAM:   # (streamed: its chunks follow)
                                self._run(self.engine.transmitted(item))
                    except BaseException:   # (a signal handler's): the record is out or not
                        self._settle(dst, h0, item)
                        raise
                    did = True
                if self.pushes[dst] and self._push(dst):
                    did = True
            return did
        finally:
            self.engine_busy -= 1

    def _settle(self, dst: int, h0: int, item) -> None:
        """``_settle_now``, signals held back: a second exception (a handler's, run
        for another thread, or the signal pending when they are let through again)
        comes after it is done, never in its middle (``_shielded``)."""
        self._shielded(self._settle_now, dst, h0, item)

    def _settle_now(self, dst: int, h0: int, item) -> None:
        """An exception (a signal handler's, Ctrl-C: Python runs them at any call)
        cut short the put of ``item`` to ``dst``, the ring's head then ``h0``
        (``item``: a SendOp, Reply or control tuple of ``pending[dst]``, or a push
        job whose chunks are all out), or the bookkeeping after it.  The ring
        decides: a record whose put moved ``out_head`` is out, and what follows a
        put is done here (off its queue, published, its receiver woken, a streamed
        send's push job, a send's ``transmitted``), each step only if not yet done;
        a record not out stays queued (from ``_transmit``: not sent at all).  Runs
        in the ``except`` of the put, before anything else writes to ``dst``."""
        q = self.pending[dst]
        s = item
        if type(item) is list:   # a push job: its trailer record (a tuple) put, if any
            q = self.pushes[dst]
            s = item[4]
            out = type(s) is not tuple or self.out_head[dst] != h0
        else:
            out = self.out_head[dst] != h0
        if out:
            if q and q[0] is item:   # (first: a call below may raise again)
                q.popleft()
            words = self.words
            words[self.out_headw[dst]] = self.out_head[dst]
            if words[self.sleeping_w[dst]]:
                _linux.futex_wake(self.base + self.out_headw[dst] * 8)
            if isinstance(s, E.Send):
                if s.protocol == E.STREAM and s is item:   # its envelope: the chunks follow
                    jobs = self.pushes[dst]
                    if not any(j[4] is s for j in jobs):
                        jobs.append([s.id, [(s.addr, s.nbytes)], 0, 0, s])
                elif s.state == E.S_QUEUED:
                    self._run(self.engine.transmitted(s))
                elif s.state == E.S_DONE:   # (transmitted's Complete, cut short)
                    s.done = True
        self._recount()

    def _recount(self) -> None:
        """``npending`` counted again: the records queued (a WRITING mark is none,
        wherever it stands) and the push jobs.  A count too high would keep
        ``finish`` waiting for ever."""
        self.npending = (sum(map(len, self.pending)) + sum(map(len, self.pushes))
                         - sum(1 for q in self.pending for x in q if x is WRITING))

    # ------------------------------------------------------------ actions
    def _run(self, actions) -> None:
        for a in actions:
            t = type(a)
            if t is E.Complete:
                a.op.done = True
            elif t is E.Deliver:
                self._deliver(a.receive, a.message)
            elif t is E.Reply:
                self._reply(a)
            elif t is E.Transmit:
                self._transmit(a.send)
            elif t is E.Fetch:
                self._fetch(a.receive, a.message)
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {a!r}")

    def _truncation(self, r: RecvOp, m: E.Message) -> TruncationError:
        return TruncationError(
            f"message of {m.nbytes} bytes from rank {m.source} (tag {m.tag}) does not fit "
            f"the {r.capacity}-byte receive buffer: the first {r.capacity} bytes were "
            f"received, the rest dropped; post a buffer of at least {m.nbytes} bytes "
            f"(Probe gives the size first)")

    def _deliver(self, r: RecvOp, m: E.Message) -> None:
        r.count = m.nbytes
        p = m.payload
        if r.mv is None:  # object receive
            if m.flags & F_PACKED:
                r.value = self._unpack_object(p)
            elif m.flags & F_ARRAY:
                r.value = (unpack_array(p), None)
            elif m.flags & F_OBJ:
                r.value = (bytes(p), []) if type(p) is not tuple else p
            else:
                r.value = (None, bytes(p))
            m.payload = None  # never keep a view of the ring (last: the copy is done)
            return
        if m.flags & F_OBJ:
            r.exc = MmpiError(f"message from rank {m.source} (tag {m.tag}) was sent as a "
                              f"Python object (lowercase send) and matched this buffer receive, "
                              f"which took it: receive objects with recv()")
            # kept for a collective whose peer sent why it refused instead of its data
            r.value = (bytes(p), []) if type(p) is not tuple else p
            m.payload = None
            return
        n = m.nbytes
        if r.error:
            n = r.capacity
            r.exc = self._truncation(r, m)
        if n:
            if n < BIG_COPY:
                r.mv[:n] = p[:n]
            else:
                _copy(r.mv, 0, p, 0, n)
        m.payload = None

    def _fetch(self, r: RecvOp, m: E.Message) -> None:
        r.count = m.nbytes
        if m.protocol == E.STREAM:
            self._fetch_stream(r, m)
            return
        if m.source in self.no_pull:
            self._ask_push(r, m)
            return
        pid = self.pid_of(m.source)
        try:
            if m.flags & F_OBJ:
                if r.mv is not None:
                    r.exc = MmpiError(f"message from rank {m.source} (tag {m.tag}) was sent "
                                      f"as a Python object (lowercase send): receive it "
                                      f"with recv()")
                else:
                    r.value = self._fetch_object(pid, m)
            else:
                n = m.nbytes
                if r.mv is None:
                    buf = bytearray(n)
                    if n:
                        self._read(pid, m, [(_linux.buffer_address(buf, True)[0],
                                             m.payload, n)])
                    r.value = (None, buf)
                else:
                    if r.error:
                        n = r.capacity
                        r.exc = self._truncation(r, m)
                    elif n >= self.split_min > 0 and self._split(r, m, pid):
                        return  # engine.fetched once the sender's WDONE arrives
                    if n:
                        self._read(pid, m, [(_linux.buffer_address(r.mv, True)[0],
                                             m.payload, n)])
        except OSError as e:
            if e.errno in DENIED:  # no single copy from this sender: it pushes, from now on
                self.no_pull.add(m.source)
                r.exc = None
                self._ask_push(r, m)
                # last: with warnings turned into errors the state is consistent
                warn_once(denial_message(e, f"reading rank {m.source} (pid {pid}) from rank "
                                             f"{self.rank}"))
                return
            stopped = self.finished(m.source)
            if e.errno == errno.ESRCH or (e.errno == errno.EFAULT and (
                    stopped or not _linux.pid_alive(pid))):
                # (EFAULT: it stopped waiting for us and unmapped the buffer, or exited)
                how = "stopped" if stopped else "died"
                r.exc = PeerDiedError(f"rank {m.source} {how} before its {m.nbytes}-byte "
                                      f"message (tag {m.tag}) could be copied",
                                      rank=self.blame(m.source))
                self.gone.add(m.source)
            else:
                r.exc = MmpiError(f"copying {m.nbytes} bytes from rank {m.source} "
                                  f"(tag {m.tag}) failed: {e}")
        self._fetched(r)

    def _split(self, r: RecvOp, m: E.Message, pid: int) -> bool:
        """Copy the first half ourselves while the sender writes the second half
        into our buffer (process_vm_writev): both cores copy.  False: not now."""
        n = m.nbytes
        half = (n // 2) & ~4095
        local = _linux.buffer_address(r.mv, True)[0]
        # a denied read must fail before the CTS (then the whole message is pushed)
        _linux.process_vm_readv(pid, local, m.payload, min(n, 64))
        token = next(self._tokens)
        src = m.source
        if self.pending[src]:
            return False
        # (registered first: its WDONE may come as soon as the CTS is out)
        # the receive, its completion's actions, our half's copy while not done
        split = self.splits[token] = [r, None, (pid, m, local, half)]
        # where the sender pushes its half should its process_vm_writev be denied
        self.sinks[token] = [[(local + half, n - half)], 0, 0, None, r.mv, None]
        h0 = self.out_head[src]
        try:
            ok = self._put(src, K_CTS, 0, token, n - half, m.sender_id, local + half, None, 0)
        except BaseException:   # (a signal handler's) the CTS is out, or the split forgotten
            self._settle(src, h0, None)
            ok = self.out_head[src] != h0
            if not ok:
                self.splits.pop(token, None)
                self.sinks.pop(token, None)
            raise
        if not ok:
            self.splits.pop(token, None)
            self.sinks.pop(token, None)
            return False
        try:
            self._read(pid, m, [(local, m.payload, half)])
        except OSError:
            self.splits.pop(token, None)
            self.sinks.pop(token, None)
            raise
        split[2] = None   # (cut before this, by a signal handler's exception: _fetch_rest)
        return True

    def _write_half(self, dst: int, sid: int, remote: int, n: int, token: int) -> None:
        """The receiver asks us (CTS) to write the tail of send ``sid`` into its buffer."""
        s = self.engine.awaiting.get(sid)
        if s is None:  # pragma: no cover - protocol error
            raise MmpiError(f"CTS from rank {dst} for unknown send id {sid}")
        try:
            _linux.process_vm_writev(self.pid_of(dst), s.addr + s.nbytes - n, remote, n)
        except OSError as e:
            if e.errno in DENIED:  # push our half through the ring instead, then WDONE
                if s.pushed & 2:   # (the CTS taken again after an exception)
                    return
                self.npending += 1
                s.pushed |= 2
                self.pushes[dst].append([token, [(s.addr + s.nbytes - n, n)], 0, 0,
                                         (K_WDONE, 0, 0, 0, token, 0)])
                self._push(dst)
                warn_once(denial_message(e, f"writing into rank {dst} from rank {self.rank}"))
                return
            self.engine.awaiting.pop(sid, None)
            s.exc = (PeerDiedError(f"rank {dst} died during a {s.nbytes}-byte send "
                                   f"(tag {s.tag})", rank=self.blame(dst))
                     if e.errno == errno.ESRCH else
                     MmpiError(f"writing {n} bytes to rank {dst} failed: {e}"))
            s.done = True
            return
        q = self.pending[dst]
        if q or not self._put(dst, K_WDONE, 0, 0, 0, token, 0, None, 0):
            self.npending += 1
            q.append((K_WDONE, 0, 0, 0, token, 0))

    def _unpack_object(self, buf):
        """(stream, parts) of a packed object record (see _osend): the table, the
        stream, then every out-of-band buffer, copied out of the ring into warm
        buffers of the receive cache (bytes/bytearray parts keep their type)."""
        buf = memoryview(buf)
        count, slen, _ = TABLE.unpack_from(buf, 0)
        o = TABLE.size
        off = o + count * PART.size
        stream = bytes(buf[off:off + slen])
        off += slen
        parts = []
        take = self.recv_cache.take
        for _ in range(count):
            _, length, how = PART.unpack_from(buf, o)
            o += PART.size
            src = buf[off:off + length]
            if how & 2:
                b = bytes(src) if how & 1 else bytearray(src)
            else:
                b = take(length)[0]
                if length:
                    memoryview(b)[:] = src
            parts.append((b, how))
            off += length
        return (stream, parts)

    def _fetch_object(self, pid: int, m: E.Message):
        """Read every out-of-band buffer (and a large stream) of an OBJ RTS with
        one vectored process_vm_readv, into memory nobody zero-fills first:
        warm buffers of the receive cache for pickle buffers (numpy data),
        uninitialised bytes/bytearray objects for persistent parts."""
        stream, parts, segs = self._object_dests(m.payload)
        self._read(pid, m, segs)
        return (stream, parts)

    def _read(self, pid: int, m: E.Message, segs) -> None:
        """Read rendezvous message ``m`` (``segs``: (local, remote, length) in request
        order) from its sender, then its guard, in the same process_vm_readv (the
        kernel copies the ranges in order: the guard is read after the data).  If the
        sender had set it (its send was interrupted and its caller may have written
        the buffers since), read the data again from the sender's copy, where the
        ranges lie one after the other."""
        g = getattr(m, "guard", 0)
        if not g:   # (no guard named)
            _linux.process_vm_readv_many(pid, segs)
            return
        word = self._guard_word
        if word is None:
            b = bytearray(8)
            word = self._guard_word = (b, _linux.buffer_address(b, True)[0])
        _linux.process_vm_readv_many(pid, [*segs, (word[1], g, 8)])
        at = int.from_bytes(word[0], "little")
        if at:
            again = []
            for local, _, length in segs:
                if length:
                    again.append((local, at, length))
                    at += length
            _linux.process_vm_readv_many(pid, again)

    def _object_dests(self, table: bytes):
        """(stream, parts, [(local, remote, length)]) for an OBJ RTS's table: the
        receive buffers, allocated, and where each is read from (parts in table
        order, then a stream that is not inline)."""
        count, slen, saddr = TABLE.unpack_from(table, 0)
        off = TABLE.size
        parts = []
        segs = []
        take = self.recv_cache.take
        for _ in range(count):
            addr, length, how = PART.unpack_from(table, off)
            off += PART.size
            if how & 2:  # a bytes/bytearray object itself: keep its type
                if how & 1:
                    buf = _linux.new_bytes(length)
                    local = _linux.buffer_address(buf)[0] if length else 0
                else:
                    buf = _linux.new_bytearray(length)
                    local = _linux.buffer_address(buf, True)[0] if length else 0
            else:  # a pickle buffer (numpy array data): the unpickler wraps it as is
                buf, local = take(length)
            segs.append((local, addr, length))
            parts.append((buf, how))
        if saddr:
            stream = _linux.new_bytes(slen)
            segs.append((_linux.buffer_address(stream)[0], saddr, slen))
        else:
            stream = table[off:off + slen]
        return stream, parts, segs

    # ------------------------------------------------------------ two-copy fallback
    def _ask_push(self, r: RecvOp, m: E.Message) -> int | None:
        """Single copy from m's sender is not possible: allocate where the data
        goes and ask the sender to push it through the ring (PUSH).  Returns the
        transfer's token (``sinks[token]`` = [dests, index, offset, receive, kept,
        completion actions]: _take_chunk's), None if nothing moves."""
        n = m.nbytes
        if m.flags & F_OBJ:
            if r.mv is not None:
                r.exc = MmpiError(f"message from rank {m.source} (tag {m.tag}) was sent "
                                  f"as a Python object (lowercase send): receive it "
                                  f"with recv()")
                dests, keep = [], None
            else:
                stream, parts, segs = self._object_dests(m.payload)
                r.value = (stream, parts)
                dests = [(local, length) for local, _, length in segs if length]
                keep = None
        elif r.mv is None:
            buf = _linux.new_bytearray(n)
            r.value = (None, buf)
            dests = [(_linux.buffer_address(buf, True)[0], n)] if n else []
            keep = buf
        else:
            if r.error:
                n = r.capacity
                r.exc = self._truncation(r, m)
            dests = [(_linux.buffer_address(r.mv, True)[0], n)] if n else []
            keep = r.mv
        total = sum(d[1] for d in dests)
        if not total:  # nothing to move (truncated to an empty buffer, or an error)
            self._fetched(r)
            return None
        token = next(self._tokens)
        self.sinks[token] = [dests, 0, 0, r, keep, None]   # (first: the DATA may follow)
        src = m.source
        q = self.pending[src]
        push = (K_PUSH, 0, token, total, m.sender_id, 0)
        h0 = self.out_head[src]
        try:
            if q or not self._put(src, *push, None, 0):
                self.npending += 1
                q.append(push)
        except BaseException:   # (a signal handler's) the PUSH is out, queued, or forgotten
            self._settle(src, h0, None)
            if self.out_head[src] == h0 and not any(x is push for x in q):
                del self.sinks[token]   # (not asked: _fetch_rest asks again)
            raise
        return token

    def _start_push(self, dst: int, sid: int, token: int, total: int) -> None:
        """The receiver of send ``sid`` asks us (PUSH) to stream ``total`` bytes."""
        s = self.engine.awaiting.get(sid)
        if s is None:  # pragma: no cover - protocol error
            raise MmpiError(f"PUSH from rank {dst} for unknown send id {sid}")
        if s.flags & F_OBJ:
            srcs = _table_ranges(s.table)
        else:
            if not s.addr:
                s.addr = _linux.buffer_address(s.mv)[0]
            srcs = [(s.addr, min(total, s.nbytes))]
        if sum(x[1] for x in srcs) != total:  # pragma: no cover - protocol error
            raise MmpiError(f"PUSH from rank {dst} wants {total} bytes of a send of "
                            f"{s.nbytes} bytes (tag {s.tag})")
        if s.pushed & 1:   # registered, but an exception came before the drain took
            return         # the record (its push may even be over: a later send's)
        self.npending += 1   # (the chunks: progress's _flush, right after this drain)
        s.pushed |= 1   # (no call between: the append runs before any handler)
        self.pushes[dst].append([token, srcs, 0, 0, None])

    def _push(self, dst: int) -> bool:
        """Write as much of our pushes to ``dst`` as its ring has room for (DATA
        records of up to push_chunk bytes, never across the ring's end); True if
        anything was written.  The receiver copies them out as they come."""
        q = self.pushes[dst]
        if dst in self.dead or dst in self.gone:  # nobody will read them
            self.npending -= len(q)
            q.clear()
            return False
        w = self.pending[dst]
        if w and w[0] is WRITING and _mark_live(w):
            return False   # (a direct write to dst under way, this call nested in it:
            # its chunks would go where the direct record goes)
        rb = self.ring_bytes
        words = self.words
        data = self.data
        tailw = self.out_tailw[dst]
        ring = self.out_data[dst]
        chunk = self.push_chunk
        head = self.out_head[dst]
        head0 = head
        while q:
            job = q[0]
            token, srcs, i, off, trailer = job
            kind = K_DATA if trailer is None or type(trailer) is tuple else K_SDATA
            while i < len(srcs):
                addr, n = srcs[i]
                want = min(n - off, chunk)
                least = HDR_BYTES + min(want, chunk >> 2)
                free = rb - (head - words[tailw])
                pos = head % rb
                room = min(free, rb - pos)
                if room < least:
                    if rb - pos < least and free - (rb - pos) >= least:  # wrap, go on
                        HDR.pack_into(data, ring + pos, K_WRAP, 0, 0, 0, 0, 0, 0, 0)
                        head += rb - pos
                        continue
                    break
                k = want if room - HDR_BYTES >= want else (room - HDR_BYTES) & ~63
                p = ring + pos
                HDR.pack_into(data, p, kind, 0, token, off, token, 0, k, 0)
                _linux.memmove(self.base + p + HDR_BYTES, addr + off, k)
                head += HDR_BYTES + ((k + 63) & ~63)
                off += k
                if off == n:
                    i += 1
                    off = 0
                self.out_head[dst] = head   # the chunk is ours to publish: saved with it
                job[2] = i                  # (no call in between: a signal handler's
                job[3] = off                # exception cannot come between them)
                words[self.out_headw[dst]] = head
                if words[self.sleeping_w[dst]]:
                    _linux.futex_wake(self.base + self.out_headw[dst] * 8)
            if i < len(srcs):   # (job[2]/job[3]: saved with each chunk above)
                break
            self.out_head[dst] = head
            try:
                if kind == K_DATA and trailer is not None and \
                        not self._put(dst, *trailer, None, 0):
                    break
                q.popleft()
                self.npending -= 1
                if kind == K_SDATA:  # a streamed send's last chunk is out: it is complete
                    self._run(self.engine.transmitted(trailer))
            except BaseException:   # (a signal handler's): finish what is out
                self._settle(dst, head, job)
                raise
            head = self.out_head[dst]
        self.out_head[dst] = head
        words[self.out_headw[dst]] = head
        return head != head0

    def _fetch_stream(self, r: RecvOp, m: E.Message) -> None:
        """A receive matched streamed message ``m``: copy what came before the match
        (staged) and have the rest copied straight into the receive's buffer."""
        st = m.payload
        n = m.nbytes
        if r.mv is None:  # recv() of a buffer message: an uninitialised bytearray
            dest = _linux.new_bytearray(n)
            r.value = (None, dest)
            cap = n
        elif m.flags & F_OBJ:  # pragma: no cover - objects are never streamed
            raise MmpiError("internal: a streamed object message")
        else:
            dest = r.mv
            cap = n
            if r.error:
                cap = r.capacity
                r.exc = self._truncation(r, m)
        addr = _linux.buffer_address(dest, True)[0] if cap else 0
        if st.got and cap:
            _linux.memmove(addr, st.saddr, min(st.got, cap))
        if st.got == n:
            self._fetched(r)
            m.payload = None
            st.staging = None   # back to the receive cache (after: copied again if cut)
            return
        st.addr = addr
        st.cap = cap
        st.keep = dest
        st.r = r   # (the chunks go to r from now on)
        st.staging = None

    def _take_stream(self, src: int, sid: int, off: int, p: int, k: int) -> None:
        """An SDATA record from ``src``: a chunk of its streamed send ``sid``, at
        byte ``off`` of the message; the last one completes the receive.  Taken
        again (an exception, a signal handler's, cut it short: the drain moves
        the tail only after it), it does what was not done: the copy again (the
        same bytes), the completion's remaining steps; the stream is forgotten last."""
        st = self.streams.get((src, sid))
        if st is None:  # pragma: no cover - protocol error
            raise MmpiError(f"corrupt ring from rank {src}: a chunk of unknown message {sid}")
        if st.acts is None:   # (else the last chunk taken again: copied, completing)
            if st.r is not None:
                cap = st.cap
                if off < cap:
                    _linux.memmove(st.addr + off, self.base + p, min(k, cap - off))
            else:  # not matched yet: staged (the ring never waits for a receive)
                if st.staging is None:
                    st.staging, st.saddr = self.recv_cache.take(st.n)
                _linux.memmove(st.saddr + off, self.base + p, k)
            st.got = off + k
            if st.got != st.n:
                return
            r = st.r
            if r is None:   # complete before a receive matched: _fetch takes it from staging
                self.stats_streamed += st.n
                del self.streams[(src, sid)]
                return
            r.message.payload = None
            st.acts = self.engine.fetched(r)   # (no call between its commit and this store)
        self._finish(st.acts)
        st.r = st.keep = None
        self.stats_streamed += st.n
        del self.streams[(src, sid)]

    def _take_chunk(self, src: int, token: int, offset: int, p: int, n: int) -> None:
        """A DATA record from ``src``: copy it where its receive wants it; the
        last one completes the receive (FIN).  Taken again after an exception (as
        _take_stream): the copy again from the saved position, or the
        completion's remaining steps; the transfer is forgotten last."""
        sink = self.sinks.get(token)
        if sink is None:  # pragma: no cover - protocol error
            raise MmpiError(f"corrupt ring from rank {src}: data for unknown transfer {token}")
        dests, i, off, r, _, acts = sink
        if i < len(dests):   # (else the last chunk taken again: copied, completing)
            a = self.base + p
            k0 = n
            while n:
                addr, length = dests[i]
                k = min(n, length - off)
                _linux.memmove(addr + off, a, k)
                a += k
                n -= k
                off += k
                if off == length:
                    i += 1
                    off = 0
            sink[1] = i   # (the position and the count: no call between)
            sink[2] = off
            self.stats_pushed += k0
            if i < len(dests):
                return
        if r is not None:
            if acts is None:
                acts = sink[5] = self.engine.fetched(r)   # (no call between commit and store)
            self._finish(acts)
        del self.sinks[token]

    def _finish(self, acts: list) -> None:
        """Run a receive's completion ``acts`` (:meth:`Engine.fetched`'s), each
        taken off the list once done, so that the record taken again after an
        exception raised among them (a signal handler's) runs only the rest: the
        FIN goes once (done once its put moved the ring's head, or it is queued;
        ``_settle`` finishes a put cut short)."""
        while acts:
            a = acts[0]
            if type(a) is E.Reply and a.dest != self.rank:
                dst = a.dest
                h0 = self.out_head[dst]
                try:
                    self._reply(a)
                except BaseException:
                    self._shielded(self._settle_reply, dst, h0, a, acts)
                    raise
            else:
                self._run((a,))
            del acts[0]

    def _settle_reply(self, dst: int, h0: int, a: E.Reply, acts: list) -> None:
        """_finish's ``_settle`` of its Reply ``a`` to ``dst`` (the head then
        ``h0``): taken off ``acts`` once out or queued (each step safe twice)."""
        self._settle_now(dst, h0, a)
        if acts and acts[0] is a and (self.out_head[dst] != h0
                                      or any(x is a for x in self.pending[dst])):
            del acts[0]

    def pid_of(self, rank: int) -> int:
        return self.words[self.world.pid_word(rank)]

    def send_object(self, w: int, ctx: int, tag: int, obj, sync: bool, what: str,
                    pickled=None, keep: bool = False, snapshot: bool = False):
        """Start sending a Python object to world rank ``w`` (the protocol chosen
        by its pickled size: eager, packed, or rendezvous with the large buffers
        copied once by the receiver).  ``pickled``: :func:`_objects.dumps` of it
        already.  Returns the SendOp to wait for, or None (complete).  ``keep``:
        for a blocking call, whose message must go as it was at the call even
        when its start raises (a signal handler's exception): kept then
        (``keep_sent``: its out-of-band buffers are the caller's memory).
        ``snapshot``: for a nonblocking call (``isend``), whose message is the
        object as it was at the call, as mpi4py's (it pickles at the call): what
        the receiver would still read from the caller's memory is copied aside
        before returning (``keep_sent``), one copy more than a blocking send."""
        stream, parts = dumps(obj) if pickled is None else pickled
        t = self
        nbytes = len(stream) + sum(p.nbytes for p, _ in parts)
        if w == t.rank:
            copies = [(bytes(p) if how & 1 else bytearray(p), how) for p, how in parts]
            op = SendOp(w, tag, ctx, memoryview(stream), sync, F_OBJ, copies,
                        nbytes=nbytes)
            t.isend(op)
            return op
        if not parts and len(stream) <= t.eager_limit:
            if not sync and t.send_fast(w, ctx, tag, stream, F_OBJ):
                return None  # in the ring: complete
            op = SendOp(w, tag, ctx, memoryview(stream), sync, F_OBJ)
            t.isend(op, E.EAGER)
            return op
        if parts:
            plen = TABLE.size + PART.size * len(parts) + nbytes
            if plen <= t.packed_limit:
                # small enough to copy through the ring: one eager record holding the
                # table, the stream and the buffers; two memcpys beat the page pinning
                # of process_vm_readv here up to ~1 MiB, and the send completes at once
                head = [TABLE.pack(len(parts), len(stream), 0)]
                for p, how in parts:
                    head.append(PART.pack(0, p.nbytes, how))
                pieces = [b"".join(head), stream]
                pieces += [p for p, _ in parts]
                op = SendOp(w, tag, ctx, memoryview(stream), sync,
                            F_OBJ | F_PACKED, pieces, keep=plen, nbytes=nbytes)
                t._start_kept(op, E.EAGER, keep)
                if snapshot:   # (queued behind a full ring: its pieces copied aside)
                    t.keep_sent(op)
                return op
        inline = len(stream) <= t.eager_limit
        saddr = 0 if inline else _linux.buffer_address(stream)[0]
        table = [TABLE.pack(len(parts), len(stream), saddr)]
        for p, how in parts:
            table.append(PART.pack(_linux.buffer_address(p)[0] if p.nbytes else 0,
                                   p.nbytes, how))
        if inline:
            table.append(stream)
        table = b"".join(table)
        if len(table) > t.ring_bytes // 2:
            raise MmpiError(f"{what}: the object holds {len(parts)} large buffers, too many "
                            f"for one message ({len(table)}-byte table); send it in parts")
        op = SendOp(w, tag, ctx, memoryview(stream), sync, F_OBJ, table,
                    keep=(stream, parts), nbytes=nbytes)
        t._start_kept(op, E.RNDV, keep)
        if snapshot:   # (the receiver reads the copy from now on)
            t.keep_sent(op)
        return op

    def _start_kept(self, op: SendOp, protocol: int, keep: bool) -> SendOp:
        """Start ``op`` (an object's send that reads the caller's buffers); if
        the start raises and ``keep``, its message is kept first (keep_sent)."""
        try:
            self.isend(op, protocol)
        except BaseException:
            if keep:
                self.keep_sent(op)
            raise
        return op

    # ------------------------------------------------------------ receiving
    def irecv(self, op: RecvOp) -> RecvOp:
        engine = self.engine
        acts = None
        try:
            acts = engine.post(op)
        except BaseException:   # (a signal handler's, 3.10: as post returned a match)
            a = engine.arrived
            if acts is None and a and a[0].receive is op:
                engine.arrived = None
                self._shielded(self._arrival_end, None, a, None)   # (none of them ran)
            raise
        if acts:   # (matched a message already here: its actions, _posted's way)
            engine.arrived = None   # (acts has them)
            self._posted(acts)
        return op

    def irecv_matched(self, op: RecvOp, m: E.Message) -> RecvOp:
        """Receive into ``op`` the message ``m`` that a matched probe took."""
        self._posted(self.engine.post_matched(op, m))
        return op

    def _posted(self, acts: list) -> None:
        """Run the actions of a receive posted on a message already here (the
        engine took the message off its queue): an exception among them (a signal
        handler's) finishes what is left first, signals held back, as an arrival's
        (``_arrival_end``: a Deliver copied again, a Fetch finished, the ACK or FIN
        once), so the sender's Ssend/rendezvous still completes and the receive
        gets its bytes."""
        sync = any(type(a) is E.Reply for a in acts)
        try:
            if sync:
                self._finish(acts)   # (each action off once done: the ACK goes once)
            else:
                self._run(acts)      # (Deliver, Complete, Fetch: each safe twice)
        except BaseException:   # (the message: each Deliver's and Fetch's own)
            self._shielded(self._arrival_end, None, acts, None)
            raise

    def _arrive(self, m: E.Message, data=None, p: int = 0) -> None:
        """Message ``m`` arrived (in the record at byte ``p`` of ``data``; None: sent
        to ourselves, its payload our own): the engine matches it, its actions run
        (one at a time, ``_finish``, if one is a Reply), or an eager one unexpected
        is copied out of the ring.  An exception raised after the engine matched or
        queued it (a signal handler's, at any call) finishes that here first
        (``_arrival_cut``)."""
        acts = None
        engine = self.engine
        try:
            acts = engine.arrive(m)
            if acts:
                engine.arrived = None   # (acts has them: not kept alive there)
                if m.sync:   # (its ACK or FIN goes once: each action off once done)
                    self._finish(acts)
                else:        # (Deliver, Complete, Fetch: each safe to run again)
                    self._run(acts)
            elif data is not None and m.protocol == E.EAGER:
                m.payload = bytes(m.payload)  # unexpected: copy out of the ring
            self.consumed = (data, p)   # (taken: the mark _taken reads, no call after)
        except BaseException:
            self._arrival_cut(m, acts, data, p)
            raise

    def _arrival_cut(self, m: E.Message, acts, data, p: int) -> None:
        """An exception came while ``m`` (the record at byte ``p`` of ``data``)
        arrived: ``acts`` None if the caller had not stored what ``Engine.arrive``
        returned (then nothing changed; or, at its very end, ``m`` joined the
        unexpected queue; or it matched ``m``, returned, and the exception came
        before the store: its actions are the engine's ``arrived``), else what
        is left of its actions.  Once the engine took the message, the record must
        not be taken again (it would go to the next matching receive, or join the
        unexpected queue a second time): what is left is done here, signals held
        back (``_shielded``), and the record marked consumed (``consumed``: the
        drain moves its tail past it before the exception goes on)."""
        if acts is None:
            a = self.engine.arrived
            if a and a[0].message is m:
                # matched, then the exception came before the caller stored the
                # actions (3.10: as Engine.arrive returned): none of them ran
                acts = a
                self.engine.arrived = None
            else:
                u = self.engine.unexpected
                if not (u and u[-1] is m):
                    return   # nothing changed: the record is taken again as new
                acts = []
        self._shielded(self._arrival_end, m, acts, data)
        if data is not None:
            self.consumed = (data, p)

    def _arrival_end(self, m: E.Message, acts: list, data) -> None:
        """The rest of ``m``'s arrival, each step once however often this runs:
        unexpected, its payload copied out of the ring; a Deliver whose copy did not
        finish copied again (from the ring: the same bytes); a Fetch finished
        (``_fetch_rest``); then the rest as ``_finish`` runs them."""
        if not acts:
            if data is not None and m.protocol == E.EAGER and type(m.payload) is not bytes:
                m.payload = bytes(m.payload)
            return
        while acts:
            a = acts[0]
            t = type(a)
            if t is E.Deliver:
                if a.message.payload is not None:   # (None: its copy is done)
                    self._deliver(a.receive, a.message)
            elif t is E.Fetch:
                self._fetch_rest(a.receive, a.message)
            else:
                self._finish(acts)
                return
            del acts[0]

    def _fetch_rest(self, r: RecvOp, m: E.Message) -> None:
        """Finish the Fetch of ``r`` (message ``m``) an exception cut short: its
        completion's remaining actions (``ends``), nothing if it is complete or
        handed over (a stream's chunks, a split's WDONE, a push's DATA finish it),
        else the fetch again (the copy again: the same bytes)."""
        acts = self.ends.get(r)
        if acts is not None:
            self._finish(acts)
            del self.ends[r]
            return
        if r.state != E.R_FETCHING:
            return
        st = m.payload
        if m.protocol == E.STREAM and st is not None and st.r is r:
            return
        for split in self.splits.values():
            if split[0] is r:   # the sender writes its half; ours, if not copied yet
                if split[2] is not None:
                    pid, m, local, half = split[2]
                    self._read(pid, m, [(local, m.payload, half)])
                    split[2] = None
                return
        if any(x[3] is r for x in self.sinks.values()):
            return
        self._fetch(r, m)

    def _fetched(self, r: RecvOp) -> None:
        """``r``'s fetch is over: its completion (``Engine.fetched``), the actions
        kept in ``ends`` while they run one at a time (``_finish``), so that an
        exception among them leaves ``_fetch_rest`` only the rest."""
        acts = self.ends.get(r)
        if acts is None:   # (else its completion cut short: the rest)
            acts = self.ends[r] = self.engine.fetched(r)   # (no call between commit and store)
        self._finish(acts)
        del self.ends[r]

    def _drain(self, src: int, head: int) -> None:
        if self.deferred:
            self.flush_deferred()
        self.engine_busy += 1
        try:
            rb = self.ring_bytes
            data = self.data
            base = self.in_data[src]
            t = self.in_tail[src]
            record = self._record
            posted = self.engine.posted
            stuck = None   # the earliest posted receive when _serve last took nothing
            while t != head:
                if posted and posted[0] is not stuck:
                    # a run of plain eager records for the posted receives: one loop
                    t2 = self._serve(src, t, head)
                    if t2 != t:
                        t = t2
                        self.in_tail[src] = t
                        self.words[self.in_tailw[src]] = t
                        continue
                    stuck = posted[0]   # (until a record matches it: _record's _to_posted)
                off = t % rb
                p = base + off
                kf = HDR.unpack_from(data, p)[0]
                if kf & 0xFF == K_WRAP:
                    t += rb - off
                    continue
                self.consumed = None   # (set only for this record: p comes again)
                at = self.in_tail[src]   # (a drain nested in a handler moves it: then not us)
                try:
                    t += record(src, data, p)
                except BaseException:   # (a signal handler's): past the record if it was taken
                    if self.in_tail[src] != at:
                        self.consumed = None   # taken, and the ones after, by a nested drain
                    elif self._taken(data, p):
                        t += _record_bytes(data, p)
                        self.in_tail[src] = t
                        self.words[self.in_tailw[src]] = t
                        if self.words[self.in_pwait[src]]:
                            _linux.futex_wake(self.base + self.in_tailw[src] * 8)
                    raise
                # publish the tail per record so big rings free up early
                self.in_tail[src] = t
                self.words[self.in_tailw[src]] = t
            self.in_tail[src] = t
            self.words[self.in_tailw[src]] = t
            if self.words[self.in_pwait[src]]:
                _linux.futex_wake(self.base + self.in_tailw[src] * 8)
        finally:
            self.engine_busy -= 1

    def _taken(self, data, p: int) -> bool:
        """An exception came while ``_record`` acted on the record at byte ``p`` of
        ``data``: True if the record was taken (its tail must move past it before
        the exception goes on), at whatever point the exception came, even after
        ``_record`` (or a callee of it) returned and before its caller stored what
        it returned (3.10 runs a pending handler there, after every call; 3.11+
        after a call that did not go Python to Python, and at backward jumps).
        So the callee marks the take itself, with no call between the take and
        the mark: ``consumed`` (data, p), set by an arrival as its last step (or by
        ``_arrival_cut``), by ``_to_posted`` right after the receive left the
        posted list; an ACK or FIN is taken once the engine no longer awaits its
        send (``Engine.control`` deletes it, no call after), and that send
        (``replied``, kept by ``_record`` before) made done here if it was not
        yet.  Clears ``consumed``."""
        c = self.consumed
        self.consumed = None
        if c is not None and c[1] == p and c[0] is data:
            return True
        kf, sid = _KF_SID.unpack_from(data, p)
        kind = kf & 0xFF
        if kind != K_ACK and kind != K_FIN or sid in self.engine.awaiting:
            return False
        s = self.replied   # (the send it completed: done, if it was not yet)
        if s is not None and s.id == sid:
            s.done = True
        return True

    def _to_posted(self, src: int, data, p: int, ctx: int, tag: int, nbytes: int,
                   at: int = HDR_BYTES) -> bool:
        """A plain eager message (the record at byte ``p``, its payload ``at`` bytes
        on: an inline record's at INLINE_AT) for the earliest posted receive, a buffer
        receive naming this source (or any) and this tag (or any) that it fits: copied
        at once, as arrive + Deliver + Complete would (osu_bw's posted windows); False
        (nothing done) for anything else."""
        posted = self.engine.posted
        r = posted[0]
        if (type(r) is not RecvOp or r.context != ctx or (r.source != src and r.source != -1)
                or (r.tag != tag and r.tag != -1) or r.mv is None or nbytes > r.capacity):
            return False
        self._give(r, src, data, p + at, ctx, tag, nbytes)
        del posted[0]   # (an exception raised in _give leaves r posted, the record
        self.consumed = (data, p)   # in the ring, and the next drain gives it again;
        return True     # taken: marked, no call between (_taken))

    def _give(self, r: RecvOp, src: int, data, p: int, ctx: int, tag: int, nbytes: int) -> None:
        """The posted receive ``r`` (out of the posted list) gets the plain eager
        message whose payload is at byte ``p``: copied, done, its envelope shared with
        the receives that got one alike ((src, tag, ctx, nbytes) -> Message, read
        only: a request's outcome reads its source and tag)."""
        key = (src, tag, ctx, nbytes)
        envs = self._envs
        m = envs.get(key)
        if m is None:
            if len(envs) >= _ENVS:
                envs.clear()
            m = envs[key] = E.Message(src, tag, ctx, nbytes)
        r.message = m
        r.state = E.R_DONE
        r.count = nbytes
        if nbytes:
            if nbytes < BIG_COPY:
                r.mv[:nbytes] = data[p:p + nbytes]
            else:
                _copy(r.mv, 0, data, p, nbytes)
        r.done = True

    def serve_posted(self, src: int) -> bool:
        """Hand the plain eager records waiting in ``src``'s ring to the receives
        posted for them, in order, while the earliest posted receive takes the
        next record (``_to_posted``); True if that left no receive posted (a new
        receive from ``src`` may then take the ring's next record itself)."""
        if self.deferred:
            self.flush_deferred()
        posted = self.engine.posted
        if not posted or self.npending or src == self.rank:
            return False
        words = self.words
        self.engine_busy += 1
        try:
            t0 = self.in_tail[src]
            t = self._serve(src, t0, words[self.in_head[src]])
            if t != t0:
                self.in_tail[src] = t
                tw = self.in_tailw[src]
                words[tw] = t
                if words[self.in_pwait[src]]:
                    _linux.futex_wake(self.base + tw * 8)
        finally:
            self.engine_busy -= 1
        return not posted

    def _serve(self, src: int, t: int, head: int) -> int:
        """The posted receives take the plain eager records of ``src``'s ring from
        tail ``t`` on (up to ``head``), one record each, in order, while each record
        is one for the earliest posted receive (``_to_posted``'s rules: a buffer
        RecvOp naming this source or any, this tag or any, that it fits): matched
        and copied in this one loop, the envelope shared (osu_bw's posted windows:
        one pass for the whole window).  Returns the tail past the records served
        (``t``: none); the caller publishes it (records of ``_PUBLISH`` bytes or
        more publish it at once, so a big ring frees up early).

        A run of receives that ``irecvs[src]`` posted alike (one ``key``: one
        buffer view, source, tag and context) taking alike records is matched by
        the key's identity; their copies all go to the same bytes, and only the
        last one's is made (the run's last record wins, as the copies in order
        would leave it; nothing can read the buffer in between)."""
        posted = self.engine.posted
        n = len(posted)
        data = self.data
        base = self.in_data[src]
        rb = self.ring_bytes
        unpack = _HDR5.unpack_from
        give = self._give
        done = E.R_DONE
        m = None   # the envelope of the last record served (_give's), a small one's
        mc = mtg = mnb = -2   # context, tag and size (for a run alike: _give inlined)
        k = _NOKEY   # that receive's key (a run of alike posted receives)
        kmv = None   # and its view
        pend = -1    # the run's last record not copied yet (its payload's byte)
        i = 0
        try:   # (an exception at a call below: what was served is taken, _served)
            while i < n and t != head:
                q = base + t % rb   # the record; its payload at p
                kf, c, tg, nb, plen = unpack(data, q)
                if kf == K_EAGER:
                    off = HDR_BYTES
                elif kf == K_INLINE:
                    off = INLINE_AT
                else:
                    break
                p = q + off
                r = posted[i]
                if r.key is k and nb == mnb and tg == mtg and c == mc:
                    # posted alike the last receive served, for a record alike: it
                    # fits and matches as that one did (its copy: the run's last);
                    # and so on while records and receives stay alike
                    hdr = (kf, c, tg, nb, plen)
                    step = HDR_BYTES + ((plen + 63) & ~63)
                    while True:
                        i += 1
                        t += step
                        r.message = m
                        r.state = done
                        r.count = nb
                        r.done = True
                        pend = q + off
                        if i == n or t == head:
                            break
                        q = base + t % rb
                        r = posted[i]
                        if r.key is not k or unpack(data, q) != hdr:
                            break
                    continue
                if pend >= 0:
                    kmv[:mnb] = data[pend:pend + mnb]
                    pend = -1
                if (type(r) is not RecvOp or r.context != c or (r.source != src and r.source != -1)
                        or (r.tag != tg and r.tag != -1) or r.mv is None or nb > r.capacity):
                    break
                step = HDR_BYTES + ((plen + 63) & ~63)
                if nb == mnb and tg == mtg and c == mc:
                    # like the last record (small, not empty): the same envelope
                    i += 1
                    t += step
                    r.message = m
                    r.state = done
                    r.count = nb
                    r.mv[:nb] = data[p:p + nb]
                    r.done = True
                    k = r.key or _NOKEY   # (k: always the key of the receive that
                    kmv = r.mv            # took the record (mc, mtg, mnb) above)
                    continue
                give(r, src, data, p, c, tg, nb)   # (then counted: an exception in it
                i += 1                             # leaves r posted, the record unread)
                t += step
                if 0 < nb < _PUBLISH:
                    m = r.message
                    mc, mtg, mnb = c, tg, nb
                    k = r.key or _NOKEY
                    kmv = r.mv
                elif nb >= _PUBLISH:
                    self.in_tail[src] = t
                    self.words[self.in_tailw[src]] = t
        except BaseException:   # (a signal handler's): take what was served
            self._served(src, posted, i, t, pend, kmv, mnb)
            raise
        if pend >= 0:
            kmv[:mnb] = data[pend:pend + mnb]
        if i:
            del posted[:i]
        return t

    def _served(self, src: int, posted, i: int, t: int, pend: int, kmv, mnb: int) -> None:
        """``_serve`` raised (an exception at one of its calls) after serving ``i``
        posted receives the records up to tail ``t``: those receives are done, so
        the run's last copy is made, they leave the posted list and the tail moves
        past their records (else a done receive whose buffer had not got its copy
        yet, or, after a big record's early tail, the next record given to a
        receive already done).  The receive ``_give`` made done (its last step)
        is served too: the exception came after ``_give`` returned, before ``_serve``
        counted it (3.10 runs a pending handler there); else the record would be
        given again, to that receive (its buffer written again after it was done)."""
        if i < len(posted) and posted[i].done:
            t += _record_bytes(self.data, self.in_data[src] + t % self.ring_bytes)
            i += 1
        if pend >= 0:
            kmv[:mnb] = self.data[pend:pend + mnb]
        if i:
            del posted[:i]
        if t != self.in_tail[src]:
            self.in_tail[src] = t
            words = self.words
            words[self.in_tailw[src]] = t
            if words[self.in_pwait[src]]:
                _linux.futex_wake(self.base + self.in_tailw[src] * 8)

    def _record(self, src: int, data, p: int) -> int:
        """Act on the record from ``src`` at byte ``p`` of ``data`` (the world block's,
        or a record that came another way); returns its length in the ring."""
        engine = self.engine
        kf, ctx, tag, nbytes, sid, addr, plen, last = HDR.unpack_from(data, p)
        if kf == K_INLINE:   # a plain eager message inside its header (sid, addr: its data)
            if not (engine.posted and self._to_posted(src, data, p, ctx, tag, nbytes,
                                                      INLINE_AT)):
                m = E.Message(src, tag, ctx, nbytes, E.EAGER, False, 0,
                              data[p + INLINE_AT:p + INLINE_AT + nbytes], 0)
                acts = None
                try:   # (_arrive's, inline: the small messages' path)
                    acts = engine.arrive(m)
                    if acts:
                        engine.arrived = None   # (acts has them)
                        self._run(acts)   # (Deliver, Complete: each safe twice)
                    else:
                        m.payload = bytes(m.payload)
                    self.consumed = (data, p)   # (taken: _taken's mark, no call after)
                except BaseException:
                    self._arrival_cut(m, acts, data, p)
                    raise
            return HDR_BYTES
        if kf == K_EAGER and engine.posted and self._to_posted(src, data, p, ctx, tag, nbytes):
            return HDR_BYTES + ((plen + 63) & ~63)
        kind = kf & 0xFF
        flags = kf >> 8
        if kind == K_EAGER:
            self._arrive(E.Message(src, tag, ctx, nbytes, E.EAGER, bool(flags & F_SYNC), sid,
                                   data[p + HDR_BYTES:p + HDR_BYTES + plen], flags), data, p)
        elif kind == K_RTS:
            payload = bytes(data[p + HDR_BYTES:p + HDR_BYTES + plen]) if plen else addr
            m = (_Guarded if last and src not in self.remote else E.Message)(
                src, tag, ctx, nbytes, E.RNDV, bool(flags & F_SYNC), sid, payload, flags)
            if last and src not in self.remote:   # (another node's: its sender's rank)
                m.guard = last
            self._arrive(m, data, p)
        elif kind == K_ACK or kind == K_FIN:
            # the send kept first: an exception after control applied the reply
            # (even after it returned, before the send is done) finds it there and
            # completes it (_taken); before, the record is taken again
            self.replied = s = engine.awaiting.get(sid)
            engine.control(E.ACK if kind == K_ACK else E.FIN, sid)   # (its Complete: s)
            s.done = True
            self.replied = None   # (kept no longer: it holds the user's buffer)
        elif kind == K_CTS:
            self._write_half(src, sid, addr, nbytes, tag)
        elif kind == K_WDONE:   # (taken again after an exception: only what was left)
            split = self.splits.get(sid)
            if split is not None:  # None: our half failed and the receive is over
                if split[1] is None:
                    split[1] = engine.fetched(split[0])   # (no call between commit and store)
                self._finish(split[1])
            self.sinks.pop(sid, None)   # (last: forgotten once the receive is complete)
            self.splits.pop(sid, None)
        elif kind == K_SDATA:
            self._take_stream(src, tag, nbytes, p + HDR_BYTES, plen)
        elif kind == K_STREAM:
            st = self.streams[(src, sid)] = _Stream(nbytes)
            self._arrive(E.Message(src, tag, ctx, nbytes, E.STREAM, False, sid, st, flags),
                         data, p)
        elif kind == K_DATA:
            self._take_chunk(src, tag, nbytes, p + HDR_BYTES, plen)
        elif kind == K_PUSH:
            self._start_push(src, sid, tag, nbytes)
        elif kind == K_DIRECT or kind == K_DSPLIT:
            # a direct write's record that its Recv did not take (an MPI call from a
            # signal handler drained the ring under it, or it raised): the bytes are in
            # that receive's buffer (a split's: our half read first); its envelope kept
            # for it (_direct_wait's mine)
            if kind == K_DSPLIT:
                self._split_take(src, sid, addr, last, nbytes)
            self.direct_seen[src] = (sid, tag, nbytes)
        else:
            raise MmpiError(f"corrupt record from rank {src}: kind {kind} at byte {p}")
        return HDR_BYTES + ((plen + 63) & ~63)

    def flush_deferred(self) -> None:
        """Finish every deferred run of takes (DeferredOp): payloads copied, tails
        published, sleeping senders woken."""
        for f in list(self.deferred.values()):
            f()

    def progress(self) -> bool:
        """Drain every incoming ring and retry blocked sends; True if anything moved.
        Called in the middle of the engine's own steps (a signal handler's
        ``Iprobe`` or ``Test``): moves nothing, False."""
        if self.engine_busy:
            return False
        did = False
        if self.deferred:
            self.flush_deferred()
        words = self.words
        tails = self.in_tail
        for src, hw in self.in_list:
            h = words[hw]
            if h != tails[src]:
                self._drain(src, h)
                did = True
        if self.npending:
            did = self._flush() or did
        return did

    # ------------------------------------------------------------ progress hooks
    def add_progress_hook(self, hook) -> None:
        """Call ``hook()`` inside every :meth:`progress` from now on, until
        :meth:`remove_progress_hook`.  The interface for work that must advance
        whenever this rank makes progress at all (nonblocking collectives: a peer
        may wait for ours while we wait in a Recv).  ``hook()`` must not block and
        returns True if it moved anything; hooks are not re-entered (a hook that
        calls progress() does not run the hooks again).

        While no hook is registered, progress() is the plain method: the
        point-to-point hot path pays nothing for the interface."""
        hooks = self._hooks
        hooks.append(hook)
        if len(hooks) > 1:
            return
        base = type(self).progress

        def progress():
            did = base(self)
            if hooks and not hooks.busy and not self.engine_busy:
                hooks.busy = True
                try:
                    for h in list(hooks):
                        if h():
                            did = True
                finally:
                    hooks.busy = False
            return did

        self.progress = progress

    def remove_progress_hook(self, hook) -> None:
        """Stop calling ``hook`` (no error if it is not registered)."""
        hooks = self._hooks
        if hook in hooks:
            hooks.remove(hook)
            if not hooks:
                self.__dict__.pop("progress", None)

    # ------------------------------------------------------------ waiting
    def wait(self, op, peer: int | None = None) -> None:
        """Block until ``op.done``.  ``peer``: the world rank op depends on
        (None: any rank, e.g. ANY_SOURCE)."""
        if op.done:
            return
        if self.engine_busy:
            raise self._nested_wait(op)
        progress = self.progress
        words = self.words
        spin_end = None
        while True:
            if progress():
                if op.done:
                    return
                spin_end = None
                continue
            if words[W.H_DEATHS] != self.deaths_seen:
                self.check_dead(op, peer, False)
            now = time.perf_counter()
            if spin_end is None:
                spin_end = now + self.spin_seconds
            elif now > spin_end:
                if not self._sleep():
                    self.check_dead(op, peer, True)
                if op.done:
                    return
                continue
            os.sched_yield()

    def abandon(self, op) -> None:
        """A blocking receive whose wait for ``op`` raised (KeyboardInterrupt, a
        signal handler's exception, a peer's death): the receive, if nothing has
        matched it yet, is cancelled, so that the message it would have taken goes
        to the next receive instead of into the buffer of a call that raised (which
        then waited for a message that had already come).  A receive already
        matched goes on into its buffer, as MPI's would have."""
        if isinstance(op, E.Receive) and not op.done and self.engine.cancel(op):
            op.cancelled = True
            op.done = True

    def keep_sent(self, s: SendOp) -> None:
        """A blocking send whose wait for ``s`` raised (a signal handler's exception,
        Ctrl-C): the message goes on, as it was at the call, whatever its caller
        writes into the buffer from now on.  Queued (nothing on the wire yet) or
        streamed (chunks still to write): the rest is copied aside and sent from
        there.  A rendezvous request out: the data is copied aside and the guard
        set (module docstring), so the receiver reads the copy if it may have
        read the buffer after this; a push (two-copy fallback) under way goes on
        from the copy.  Eager sends in the ring were copied there at the call; a
        send to another node's rank (MPI reads the buffer) is left as it is, and
        so is a send to a rank that died (nobody will read it).  Signals are held
        back meanwhile (a second Ctrl-C must not leave the message half kept); a
        signal sent to the process can still be taken by another thread (numpy's
        pool: the mask is this thread's only), and Python then runs its handler
        here all the same: keeping starts again (each step may be done twice; an
        earlier copy stays alive, the receiver may be reading it) and the first
        such exception is raised once the message is kept."""
        if s is None or s.done or s.dest == self.rank or s.dest in self.remote or \
                s.dest in self.dead or s.dest in self.gone:
            return
        first = self._shielded(self._keep_sent, s)
        if first is not None:
            raise first

    @staticmethod
    def _shielded(step, *args) -> BaseException | None:
        """Run ``step(*args)`` to its end with this thread's signals held back; a
        handler run all the same (a process-directed signal taken by another
        thread, run here at the next call) starts it again, at most KEEP_TRIES
        times (each step of it must be safe to run twice).  Returns the first such
        exception (None: none), raises the last one if every try raised."""
        first = None
        held = None
        tries = KEEP_TRIES
        try:
            while tries:
                try:   # (pthread_sigmask runs pending handlers too: inside the try)
                    tries -= 1
                    if held is None:
                        held = signal.pthread_sigmask(signal.SIG_BLOCK, ())   # (reads it)
                    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                    step(*args)
                    break
                except BaseException as e:   # (a handler's, run for another thread)
                    if first is None:
                        first = e
                    if not tries:
                        raise
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return first

    def _keep_sent(self, s: SendOp) -> None:
        queued = s.state == E.S_QUEUED and any(x is s for x in self.pending[s.dest])
        if s.protocol == E.EAGER:
            if queued:
                if s.flags & F_PACKED:
                    s.table = [bytes(b) for b in s.table]
                else:
                    s.mv = bytes(s.mv)
            return
        if s.protocol == E.STREAM:
            if queued:
                s.mv = bytes(s.mv)
                return
            for job in self.pushes[s.dest]:
                if job[4] is s and job[2] == 0:   # (i == 1: every chunk is out)
                    off = job[3]
                    aside = bytes(memoryview(s.mv).cast("B")[off:])
                    s.aside = aside if s.aside is None else (aside, s.aside)   # (kept)
                    job[1] = [(_linux.buffer_address(aside)[0] - off, s.nbytes)]
            return
        # rendezvous: the ranges the receiver reads, in request order
        if s.flags & F_OBJ:
            ranges = _table_ranges(s.table)
        else:
            if not s.addr and s.nbytes:
                s.addr = _linux.buffer_address(s.mv)[0]
            ranges = [(s.addr, s.nbytes)] if s.nbytes else []
        aside = _linux.new_bytearray(sum(n for _, n in ranges))
        at = base = _linux.buffer_address(aside, True)[0] if ranges else 0
        moved = []   # (address, length, where its copy is), in request order
        for a, n in ranges:
            _linux.memmove(at, a, n)
            moved.append((a, n, at))
            at += n
        s.aside = aside if s.aside is None else (aside, s.aside)   # (kept again)
        if s.guard is None:
            s.guard = bytearray(8)
        s.guard[:] = base.to_bytes(8, "little")   # after the copy: the receiver's sign
        _linux.fence()   # seen before the caller's next store, even a non-temporal one
        # pushes under way: on from the copy.  Before the switch below: a second try
        # (keep_sent) starts from the ranges at the call again, so a job this try did
        # not reach is still found; one it reached reads an earlier copy (kept alive)
        for job in self.pushes[s.dest]:
            if job[4] is None or type(job[4]) is tuple:
                srcs = job[1]
                for k, (a, n) in enumerate(srcs):
                    for a0, n0, c0 in moved:
                        if a0 <= a and a + n <= a0 + n0:   # (the same bytes at the call)
                            srcs[k] = (c0 + a - a0, n)
                            break
        if not s.flags & F_OBJ:
            s.addr = base   # a PUSH or CTS that comes later reads the copy
            s.mv = aside
        else:   # the table a PUSH reads (the receiver has its own)
            t = bytearray(s.table)
            count, slen, saddr = TABLE.unpack_from(t, 0)
            at = base
            for k in range(count):
                o = TABLE.size + k * PART.size
                a, n, how = PART.unpack_from(t, o)
                if n:
                    PART.pack_into(t, o, at, n, how)
                    at += n
            if saddr and slen:
                TABLE.pack_into(t, 0, count, slen, at)
            s.table = bytes(t)

    @staticmethod
    def _nested_wait(op) -> MmpiError:
        """A blocking call made in the middle of the engine's own steps (a signal
        handler's): it could only wait for ever, on the steps it interrupted."""
        return NestedCallError(
            f"a blocking MPI call ({_opname(op)}) ran in the middle of this rank's "
            f"progress engine (from a signal handler, or code a handler called): it "
            f"cannot complete there, since the engine it needs is the one it "
            f"interrupted. MPI does not allow MPI calls in signal handlers: set a flag "
            f"in the handler and make the call from the main code")

    def wait_until(self, pred, peer: int | None = None, op=None):
        """Block until ``pred()`` is true (progressing meanwhile)."""
        spin_end = None
        while not pred():
            if self.engine_busy:
                raise self._nested_wait(op)
            if self.progress():
                spin_end = None
                continue
            if self.words[W.H_DEATHS] != self.deaths_seen:
                self.check_dead(op, peer, False, pred)
            now = time.perf_counter()
            if spin_end is None:
                spin_end = now + self.spin_seconds
            elif now > spin_end:
                if not self._sleep():
                    self.check_dead(op, peer, True, pred)
                continue
            os.sched_yield()

    def _sleep(self, timeout: float | None = None) -> bool:
        """Futex-sleep until a ring or the deaths word moves; False on timeout
        (``timeout`` seconds, by default ``sleep_seconds``: DRILLER_MMPI_SLEEP_MS)."""
        if self.deferred:   # (its producer may be waiting for the room)
            self.flush_deferred()
        if timeout is None:
            timeout = self.sleep_seconds
        words = self.words
        base = self.base
        ms = self.my_sleeping
        was = words[ms]   # (a sleep nested in a signal handler's MPI call leaves the
        flagged = []      # flag as it found it: an outer sleep still gets its wakes)
        try:
            words[ms] = 1   # (raised inside the try: an exception cannot leave it up)
            waits = []
            for src, hw in self.in_list:
                h = words[hw]
                if h != self.in_tail[src]:
                    return True
                waits.append((base + hw * 8, h))
            if self.npending:
                for dst, q in enumerate(self.pending):
                    if q or self.pushes[dst]:
                        pw = self.out_pwait[dst]
                        flagged.append((pw, words[pw]))   # (put back as found, as ms)
                        words[pw] = 1
                        tw = self.out_tailw[dst]
                        waits.append((base + tw * 8, words[tw]))
                if self._flush():
                    return True
            d = words[W.H_DEATHS]
            if d != self.deaths_seen:
                return True
            waits = waits[-127:]
            waits.append((base + W.H_DEATHS * 8, d))
            self.stats_sleeps += 1
            return _linux.futex_waitv(waits, timeout)
        finally:
            words[ms] = was
            for pw, v in reversed(flagged):
                words[pw] = v

    def _scan_dead(self) -> None:
        words = self.words
        self.deaths_seen = words[W.H_DEATHS]
        for r in range(self.size):
            if r != self.rank and r not in self.dead and words[self.world.rank_word(r, W.R_DEAD)]:
                self.dead[r] = int(words[self.world.rank_word(r, W.R_STATUS)])

    def check_dead(self, op, peer, timed_out: bool, pred=None) -> None:
        """Raise PeerDiedError if a peer died abnormally, or the one op needs is gone
        (unless what is waited for, ``op`` done or ``pred()``, came in just before)."""
        if self.words[W.H_DEATHS] != self.deaths_seen:
            self._scan_dead()
        culprit = None
        for r, st in self.dead.items():
            if st != 0 or r == peer:
                culprit = (r, st)
                break
        ended = ()
        if culprit is None and timed_out:
            check = [peer] if peer is not None else self.peers
            # a receive whose message is being fetched (split, pushed) gets it from a
            # rank still serving what it owes: only a finalized or gone one fails it
            ended = self._ended(check, serving_ok=isinstance(op, RecvOp) and
                                op.state == E.R_FETCHING)
            if peer is not None and (peer in self.gone or peer in ended):
                culprit = (peer, None)
            elif peer is None and self.peers and all(r in self.gone or r in ended
                                                     for r in self.peers):
                culprit = (self.peers[0], None)
        if culprit is None:
            if timed_out and self.on_stuck is not None:
                self.on_stuck(op, peer)   # (a collective's wrong arguments elsewhere)
            return
        # the message may have arrived just before the death (or the peer arrived at
        # a barrier, then exited): look once more
        self.progress()
        if (op is not None and op.done) or (pred is not None and pred()):
            return
        r, st = culprit
        self._forget_streams()
        if st is None and r in ended and r not in self.gone:
            # alive and finished: not a failure of its own, this rank's wait is the
            # program's error (not recorded as our cause: the launcher names us)
            how = ("has finished (MPI.Finalize, or the end of its program) and takes "
                   "and sends nothing more")
        else:
            root = self.blame(r)  # the first death, not a rank that died of its consequences
            if root != r:
                self._scan_dead()
                r, st = root, self.dead.get(root)
            if st is None:  # noticed by pid: the launcher may have recorded why meanwhile
                self._scan_dead()
                st = self.dead.get(r)
            how = (describe_wait_status(st) if st is not None
                   else f"(pid {self.pid_of(r)}) is gone (exited or killed)")
        raise PeerDiedError(f"rank {r} {how}; rank {self.rank} cannot complete its "
                            f"{_opname(op)}", rank=r, status=st)

    def finished(self, r: int) -> bool:
        """Whether rank ``r`` (world) has finished: finishing or finalized, it sends
        nothing new (it may be alive, serving the copies it owes: _serve_owed)."""
        return bool(self.words[self.world.rank_word(r, W.R_FINALIZED)])

    def _ended(self, ranks, serving_ok: bool = False) -> set:
        """Which of ``ranks`` will send nothing new: gone (found by pid, noted in
        self.gone), finishing or finalized (still alive perhaps, serving the copies
        it owes: _serve_owed; ``serving_ok``: a finishing one is not ended)."""
        words = self.words
        w = self.world
        ended = set()
        for r in ranks:
            if r == self.rank:
                continue
            f = words[w.rank_word(r, W.R_FINALIZED)]
            if r in self.gone or (f and not (serving_ok and f == W.FINISHING)) or \
                    self._exited(r):
                ended.add(r)
        return ended

    def _exited(self, r: int) -> bool:
        """Whether rank ``r``'s process is gone, found by its pid (then noted in
        ``self.gone``)."""
        pid = self.pid_of(r)
        if pid and not _linux.pid_alive(pid):
            self.gone.add(r)
            return True
        return False

    def _forget_streams(self) -> None:
        """Drop the partly received streamed messages of dead senders (their
        receives fail; the staging buffers go back to the cache)."""
        for key in [k for k in self.streams if k[0] in self.dead or k[0] in self.gone]:
            st = self.streams.pop(key)
            st.r = st.keep = st.staging = None

    def blame(self, r: int) -> int:
        """A PeerDiedError about rank ``r`` is being raised here: the root cause
        (see _world.root_cause), recorded once as this rank's cause so that its own
        death, if it follows, is never taken for a new failure."""
        w = self.world
        root = W.root_cause(self.words, w, r)
        if root == self.rank:  # pragma: no cover - a cycle through a rank that lives
            root = r
        cw = w.rank_word(self.rank, W.R_CAUSE)
        if not self.words[cw] and root != self.rank:
            self.words[cw] = root + 1
        return root

    def finish(self, owed: bool = True) -> None:
        """Before this rank stops (Finalize, exit): hand the peers what it still owes
        them, the records queued behind a full ring (the FIN or ACK a peer's send
        waits for, sends, pushes), progressing meanwhile so that two ranks finishing
        at once drain each other.  Never waits for a peer that can take nothing any
        more (dead, exited, or finalized): its queue is dropped.  Then, ``owed``
        (False: the program ended by an uncaught exception, its job fails anyway;
        or a hybrid world, whose ranks have all passed the end barrier), wait
        while a live peer may still copy a rendezvous message from our memory
        (_serve_owed)."""
        if self.deferred:
            self.flush_deferred()
        while self.npending:
            if self.progress():
                continue
            for dst in range(self.size):
                if (self.pending[dst] or self.pushes[dst]) and not self._takes(dst):
                    self.pending[dst].clear()
                    self.pushes[dst].clear()
            self._recount()   # (what is left; a count left too high by an exception
            # between a count and its append, once nothing moves, would spin here)
            if self.npending:
                if self.words[W.H_DEATHS] != self.deaths_seen:
                    self._scan_dead()   # (else _sleep returns at once: a spin)
                self._sleep()
        if owed:
            self._serve_owed()

    def _owed(self) -> list:
        """Our rendezvous sends a peer on this node has not copied yet (its FIN
        has not come): the RTS points into our memory (a freed Isend, a Bsend)."""
        me = self.rank
        remote = self.remote
        return [s for s in self.engine.awaiting.values()
                if s.protocol == E.RNDV and s.dest != me and s.dest not in remote]

    def _serve_owed(self) -> None:
        """Keep our memory alive for the rendezvous copies still owed, as MPI's
        Finalize completes every send: this rank says FINISHING first (it sends
        nothing new; a peer waiting for anything else from us raises
        PeerDiedError instead of waiting: check_dead), then progresses until each
        owed message is copied or its receiver can take nothing any more (dead,
        exited, finishing or finalized itself), or nothing moved for
        ``finish_wait`` seconds (DRILLER_MMPI_FINISH_WAIT).  Owed sends left to a
        receiver that did not die are named on stderr (after FINISH_NOTE seconds
        of waiting, once, what is waited for)."""
        if not self._owed():
            return
        self.words[self.world.rank_word(self.rank, W.R_FINALIZED)] = W.FINISHING
        start = moved = time.monotonic()
        noted = False
        while True:
            owed = [s for s in self._owed() if self._takes(s.dest)]
            if not owed:
                break
            if self.progress():   # (a push, a FIN: the clock of the bound restarts)
                moved = time.monotonic()
                continue
            now = time.monotonic()
            if now - moved >= self.finish_wait:
                break
            if not noted and now - start >= FINISH_NOTE:
                noted = True
                self._say(f"driller: rank {self.rank} waits for {_owed_list(owed)} to be "
                          f"received before it stops (up to {self.finish_wait:g} s with "
                          f"nothing moving: DRILLER_MMPI_FINISH_WAIT)")
            if self.words[W.H_DEATHS] != self.deaths_seen:
                self._scan_dead()   # (else _sleep returns at once: a spin)
            self._sleep()
        words = self.words
        w = self.world
        lost = [s for s in self._owed() if s.dest not in self.dead and
                not words[w.rank_word(s.dest, W.R_DEAD)]]
        if lost:
            self._say(f"driller: rank {self.rank} stops with {_owed_list(lost)} not received "
                      f"(waited {time.monotonic() - start:.3g} s; DRILLER_MMPI_FINISH_WAIT "
                      f"is {self.finish_wait:g} s; a receiver that stopped takes nothing): "
                      f"their receives, if any, fail; wait for such sends (Wait/Waitall, "
                      f"Detach_buffer for Bsend) before MPI.Finalize or the program's end")

    @staticmethod
    def _say(line: str) -> None:
        """One line on stderr, if there is one (a daemon's may be None or closed)."""
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass

    def _takes(self, r: int) -> bool:
        """Whether rank ``r`` may still drain its rings (alive, not finalized)."""
        w = self.world
        words = self.words
        if r in self.dead or r in self.gone or words[w.rank_word(r, W.R_DEAD)] or \
                words[w.rank_word(r, W.R_FINALIZED)]:
            return False
        return not self._exited(r)

    def close(self) -> None:
        if self.deferred:
            self.flush_deferred()
        w = self.world
        w.words[w.rank_word(self.rank, W.R_FINALIZED)] = W.FINALIZED


# the code of every direct write (``_director``'s ``direct``): how _mark_live knows
# one on the stack
_DIRECT_CODE = next(c for c in Transport._director.__code__.co_consts
                    if getattr(c, "co_name", None) == "direct")


def _owed_list(sends: list) -> str:
    """Owed rendezvous sends, for a message: '1 rendezvous send (12582912 bytes to
    rank 1, tag 7)'."""
    what = ", ".join(f"{s.nbytes} bytes to rank {s.dest}, tag {s.tag}" for s in sends[:4])
    more = f" and {len(sends) - 4} more" if len(sends) > 4 else ""
    return (f"{len(sends)} rendezvous send{'s' if len(sends) != 1 else ''} "
            f"({what}{more})")


def _finish_wait() -> float:
    """DRILLER_MMPI_FINISH_WAIT: seconds (``inf``: no bound, ``0``: no wait)."""
    what = ("the seconds a stopping rank waits for its unreceived rendezvous sends "
            "(a number >= 0, or inf)")
    x = env_float("DRILLER_MMPI_FINISH_WAIT", FINISH_WAIT, what)
    if not x >= 0:   # (negative, nan)
        raise MmpiError(f"DRILLER_MMPI_FINISH_WAIT={os.environ['DRILLER_MMPI_FINISH_WAIT']!r}: "
                        f"give {what}")
    return x


class _Unusable:
    """What a Transport becomes in a forked child of its rank, or after Finalize:
    any use raises MmpiError, so nothing touches the rings or world words."""

    def __getattribute__(self, name):
        raise MmpiError(object.__getattribute__(self, "__dict__")["_unusable_why"])


# called (no arguments) by make_unusable: the layers above that keep the per-peer
# closures outside the transport forget them there (_comm._forget_peers)
UNUSABLE_HOOKS: list = []


def make_unusable(t: Transport, why: str) -> None:
    """Turn ``t`` (and every communicator and request using it) unusable."""
    t.__dict__["_unusable_why"] = why
    t.__class__ = _Unusable
    for hook in UNUSABLE_HOOKS:
        hook()


class NestedCallError(MmpiError):
    """A blocking wait refused because it was made in the middle of the progress
    engine's own steps (a signal handler's MPI call): the call's fault, not the
    operation's (a nonblocking collective waited for this way goes on)."""


def _opname(op) -> str:
    if op is None:
        return "wait"
    # (a collective's messages go on its communicator's odd context, with tags of
    # driller's own: naming them told the user nothing of their program)
    what = (f"tag {getattr(op, 'tag', None)}" if getattr(op, "context", 0) % 2 == 0
            else "a step of a collective")
    if isinstance(op, RecvOp):
        src = "any source" if op.source == E.ANY_SOURCE else f"rank {op.source}"
        return f"receive from {src} ({what})"
    if isinstance(op, SendOp):
        return f"send to rank {op.dest} ({what})"
    return repr(op)
