"""The shared world block: the one memfd every rank of an mmpi job maps.

The launcher creates it (:func:`create_world`) and hands the fd to each rank
(``pass_fds``) with three environment variables; it records deaths in it
(:func:`mark_dead`).  Ranks map it and talk through it.

Layout (all words are little-endian u64, 8-byte aligned; every word has exactly
ONE writer, because Python has no atomic read-modify-write)::

    header (one page)
        [0] magic  [1] version  [2] size  [3] ring_bytes  [4] total bytes
        [5] offset of the rank table  [6] offset of the rings  [7] ring stride
        [16] deaths: launcher-written counter, a futex word every sleeping
             rank waits on, bumped by mark_dead
        [17] first death: launcher-written once, 1 + the rank of the first
             abnormal death that was not itself a consequence (see R_CAUSE)
        [18] board errors: 0 until some rank recorded an error on the collective
             board, then 1 (a flag: every writer stores the same value, once)
    rank table: size x RANK_STRIDE bytes, one 64-byte line per writer
        line 0 (written by the rank)     pid, ready
        line 1 (written by the launcher) dead, wait status
        line 2 (written by the rank)     sleeping (waiting in futex), finalized,
                                         cause: 1 + the rank whose death this rank
                                         reported (PeerDiedError), written once
        line 3 (written by the rank)     collectives: barrier count, asleep-in-barrier
    collective slots (page aligned): size x COLL_SLOT bytes, one per rank, written
        only by that rank (small shared-memory collectives, see _coll)
    collective board (page aligned): size x BOARD_BYTES bytes, one per rank, written
        only by that rank: BOARD_SLOTS groups of four words (the collective it
        entered last, the last one it raised in, its nonblocking ones in flight,
        the kind and root of the rooted one it is stuck in; per communicator
        context modulo BOARD_SLOTS), then the text of its last error
        (_coll/_board.py)
    rings: one single-producer/single-consumer byte ring per ordered pair
        (src, dst), src != dst, RING_CTRL control bytes then ring_bytes data
        line 0 (producer) head: bytes ever written (also a futex word),
                          producer_waiting: producer sleeps for free space
        line 1 (consumer) tail: bytes ever consumed (also a futex word), then the
                          direct write's words (G_DGEN..G_DCLAIM, below)
        line 2            the split direct write's (G_DSPLIT, G_DSDONE, G_DRDONE,
                          G_DSCLAIM, G_DRCLAIM)

Records in a ring are 64-byte aligned; their format belongs to _transport.
"""

from __future__ import annotations

import os

from .. import _linux
from ._env import BYTES, env_int

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from ..segment import Region

__all__ = [
    "ENV_RANK", "ENV_SIZE", "ENV_WORLD_FD", "create_world", "mark_dead",
    "register_pid", "root_cause", "read_root_cause", "World",
]

ENV_RANK = "DRILLER_MMPI_RANK"
ENV_SIZE = "DRILLER_MMPI_SIZE"
ENV_WORLD_FD = "DRILLER_MMPI_WORLD_FD"

MAGIC = 0x314C5244_4950_4D4D  # "MMPIDRL1"
VERSION = 5   # (2: G_PWAIT moved to the tail's line; 3: the collective board; 4: the
              # split direct write's line in the ring control block; 5: its claims)
HEADER_BYTES = 4096
RANK_STRIDE = 256
COLL_SLOT = 8192   # per-rank collective slot (two halves); pages untouched cost nothing
BOARD_BYTES = 1024  # per-rank collective board (see _coll/_board.py)
BOARD_SLOTS = 16   # communicator contexts (modulo) with a record on the board
RING_CTRL = 192
MAX_SIZE = 4096

# header word indices
H_MAGIC, H_VERSION, H_SIZE, H_RING_BYTES, H_TOTAL, H_RANK_OFF, H_RING_OFF, H_RING_STRIDE = range(8)
H_DEATHS = 16
H_FIRST_DEAD = 17
H_BOARD = 18
# rank table word indices (relative to the rank's entry)
R_PID, R_READY = 0, 1
R_DEAD, R_STATUS = 8, 9
R_SLEEPING, R_FINALIZED, R_CAUSE = 16, 17, 18
# R_FINALIZED: 0 running; FINALIZED: done (drains nothing more); FINISHING: ending, it
# sends nothing new but keeps its memory alive for the rendezvous copies it still owes
# (_transport.Transport.finish): a rank waiting for it to send anything else is stuck
FINALIZED, FINISHING = 1, 2
R_COLL_EPOCH, R_COLL_SLEEP = 24, 25   # _coll's shared-memory barrier (count, asleep flag)
# ring control word indices (relative to the ring's control block): the head's
# 64-byte line written by the producer only; the tail and the producer's waiting
# flag in the next one, which the consumer reads after each tail write (a flag in
# the head's line cost a cross-core miss per message: docs/mmpi.md, "sixth round")
G_HEAD = 0
G_TAIL, G_PWAIT = 8, 9
# a receiver-posted direct write (_transport, "direct"), in the tail's line: the
# consumer (the receiver) publishes a blocked receive's buffer address, capacity,
# context and tag, then the generation last (nonzero: published); it clears the
# generation, fences and reads the claim to withdraw.  The producer (the sender)
# claims a generation (claim word, fence, generation read again) before writing.
# The tag word holds the tag plus 1 (0: ANY_TAG).
G_DGEN, G_DADDR, G_DCAP, G_DCTX, G_DTAG, G_DCLAIM = 10, 11, 12, 13, 14, 15
# the split direct write (_transport, "direct", K_DSPLIT), a third line: the receiver
# sets G_DSPLIT (1: it may read half of the message itself) before the generation;
# the sender's half's state and the receiver's, each 4 * generation + 1 (done),
# + 2 (failed: the other side copies that half too), + 3 (the sender wrote both)
G_DSPLIT, G_DSDONE, G_DRDONE = 16, 17, 18
# the adaptive split: each side's claim of the receiver's half, the generation
# (claim, fence, the other's claim read: Dekker; a tie is the receiver's).  A
# sender that finds its half written and the receiver's unclaimed writes both
# (its G_DSDONE holds 4 * generation + 3) and the receiver only waits; a sender
# that sees the receiver's claim gives way (4 * generation + 1, done, as before)
G_DSCLAIM, G_DRCLAIM = 19, 20


def default_ring_bytes(size: int) -> int:
    """Data bytes per ordered pair: generous for few ranks, bounded for many.

    Pages of a memfd are allocated only when touched, so an idle pair costs
    nothing; a busy one costs its ring.
    """
    if size <= 4:
        n = 4 << 20  # half a ring holds a packed object of up to 2 MiB (see _transport)
    elif size <= 8:
        n = 1 << 20
    elif size <= 16:
        n = 512 << 10
    elif size <= 64:
        n = 128 << 10
    else:
        n = 32 << 10
    n = env_int("DRILLER_MMPI_RING_BYTES", n, BYTES)
    return max(4096, (n + 4095) & ~4095)


def _coll_off(rank_off: int, size: int) -> int:
    """Byte offset of the collective slots (page aligned, after the rank table)."""
    return _linux.page_ceil(rank_off + size * RANK_STRIDE)


def _board_off(rank_off: int, size: int) -> int:
    """Byte offset of the collective board (page aligned, after the slots)."""
    return _linux.page_ceil(_coll_off(rank_off, size) + size * COLL_SLOT)


def _layout(size: int, ring_bytes: int) -> tuple[int, int, int, int]:
    rank_off = HEADER_BYTES
    ring_off = _linux.page_ceil(_board_off(rank_off, size) + size * BOARD_BYTES)
    stride = RING_CTRL + ring_bytes
    total = _linux.page_ceil(ring_off + size * (size - 1) * stride)
    return rank_off, ring_off, stride, total


def create_world(size: int, ring_bytes: int | None = None) -> int:
    """An inheritable memfd holding an initialised world block for ``size`` ranks.

    The caller owns the fd (close it once every rank has it).
    """
    if not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"world size must be an int in 1..{MAX_SIZE}, got {size!r}")
    if ring_bytes is None:
        ring_bytes = default_ring_bytes(size)
    if ring_bytes % 64 or ring_bytes < 4096:
        raise ValueError("ring_bytes must be a multiple of 64 and at least 4096")
    rank_off, ring_off, stride, total = _layout(size, ring_bytes)
    fd = _linux.memfd_create(f"driller:mmpi-world-{size}")
    try:
        os.ftruncate(fd, total)
        _linux.add_seals(fd, _linux.F_SEAL_SHRINK | _linux.F_SEAL_GROW | _linux.F_SEAL_SEAL)
        # (written with pwrite, not through a mapping: the launcher does not load
        # segment, whose Handle dataclass costs its start-up, docs/launcher.md)
        h = memoryview(bytearray(8 * 8)).cast("Q")
        h[H_MAGIC] = MAGIC
        h[H_VERSION] = VERSION
        h[H_SIZE] = size
        h[H_RING_BYTES] = ring_bytes
        h[H_TOTAL] = total
        h[H_RANK_OFF] = rank_off
        h[H_RING_OFF] = ring_off
        h[H_RING_STRIDE] = stride
        if os.pwrite(fd, h, 0) != h.nbytes:    # pragma: no cover - a memfd writes it all
            raise OSError(f"short write of the world block's header ({h.nbytes} bytes)")
        os.set_inheritable(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class World:
    """A process's mapping of the world block, with word views.

    ``words`` is a memoryview of u64 over the whole block (fast single-word
    reads and aligned 8-byte stores); ``data`` is a byte memoryview.
    """

    region: Region | None

    def __init__(self, fd: int):
        from ..segment import Region   # (a rank's transport has loaded it already)
        self._read_header(fd)
        self.region = Region(fd, self.total)
        self.address = self.region.address
        self.data = self.region.memoryview()   # no numpy
        self.words = self.data.cast("Q")

    def _read_header(self, fd: int) -> None:
        h = memoryview(os.pread(fd, 8 * 8, 0)).cast("Q")
        if len(h) < 8 or h[H_MAGIC] != MAGIC or h[H_VERSION] != VERSION:
            raise ValueError(f"fd {fd} does not hold an mmpi world block (bad magic/version)")
        self.size = int(h[H_SIZE])
        self.ring_bytes = int(h[H_RING_BYTES])
        self.total = int(h[H_TOTAL])
        self.rank_off = int(h[H_RANK_OFF])
        self.ring_off = int(h[H_RING_OFF])
        self.ring_stride = int(h[H_RING_STRIDE])

    # word indices (into self.words) -------------------------------------
    def rank_word(self, rank: int, field: int) -> int:
        return (self.rank_off + rank * RANK_STRIDE) // 8 + field

    def pair_index(self, src: int, dst: int) -> int:
        return src * (self.size - 1) + (dst if dst < src else dst - 1)

    def ring_ctrl(self, src: int, dst: int) -> int:
        """Byte offset of the control block of the ring src -> dst."""
        return self.ring_off + self.pair_index(src, dst) * self.ring_stride

    def ring_data(self, src: int, dst: int) -> int:
        return self.ring_ctrl(src, dst) + RING_CTRL

    def deaths_word(self) -> int:
        return H_DEATHS

    def pid_word(self, rank: int) -> int:
        return self.rank_word(rank, R_PID)

    def coll_words(self, rank: int) -> tuple[int, int]:
        """Word indices of ``rank``'s collective words (written by that rank only):
        its shared-memory barrier count and its "asleep in a barrier" flag."""
        return self.rank_word(rank, R_COLL_EPOCH), self.rank_word(rank, R_COLL_SLEEP)

    def coll_slots(self) -> list[int] | None:
        """Byte offsets of every rank's collective slot (``COLL_SLOT`` bytes, written
        only by that rank); None if this block has no room for them."""
        off = _coll_off(self.rank_off, self.size)
        if off + self.size * COLL_SLOT > self.ring_off:
            return None
        return [off + r * COLL_SLOT for r in range(self.size)]

    def board(self, rank: int) -> int | None:
        """Word index of ``rank``'s collective board (``BOARD_BYTES`` bytes, written
        only by that rank); None if this block has no room for it."""
        off = _board_off(self.rank_off, self.size)
        if off + self.size * BOARD_BYTES > self.ring_off:
            return None
        return (off + rank * BOARD_BYTES) // 8

    def close(self) -> None:
        try:
            self.words.release()
            self.data.release()
        except BufferError:  # pragma: no cover - a view still exported
            return
        self.region = None


class _LauncherView(World):
    """The launcher's short-lived mapping of the block (:func:`mark_dead`,
    :func:`read_root_cause`): mmap and munmap, without ``segment.Region``, so that
    ``driller run``'s launcher never loads ``segment`` (docs/launcher.md, "Startup").
    Its views never leave the function that made it, which closes it."""

    def __init__(self, fd: int):
        self._read_header(fd)
        self.region = None
        self._length = _linux.page_ceil(self.total)
        self.address = _linux.mmap(self._length, fd=fd, shared=True)
        self.data = _linux.memory_at(self.address, self.total)
        self.words = self.data.cast("Q")

    def close(self) -> None:
        try:
            self.words.release()
            self.data.release()
        except BufferError:  # pragma: no cover - a view escaped: keep the mapping
            return
        _linux.munmap(self.address, self._length)


def mark_dead(fd: int, rank: int, status: int) -> None:
    """Launcher: rank died with wait ``status``; wake every sleeping rank.

    Only the launcher writes these words (one writer).  A rank waiting on
    anything raises PeerDiedError promptly when a peer died abnormally
    (status != 0), or when the peer it depends on is gone.
    """
    w = _LauncherView(fd)
    try:
        if not 0 <= rank < w.size:
            raise ValueError(f"rank {rank} out of range for a world of size {w.size}")
        words = w.words
        if status != 0 and not words[H_FIRST_DEAD] and not words[w.rank_word(rank, R_CAUSE)]:
            # the root cause: the first abnormal death that is not a rank dying of
            # the PeerDiedError another death provoked (one writer: the launcher)
            words[H_FIRST_DEAD] = rank + 1
        words[w.rank_word(rank, R_STATUS)] = status & 0xFFFFFFFF
        words[w.rank_word(rank, R_DEAD)] = 1
        words[H_DEATHS] = (words[H_DEATHS] + 1) & 0xFFFFFFFF
        _linux.futex_wake(w.address + H_DEATHS * 8)
        # also wake anyone sleeping on ring words only (e.g. a world > 127 ranks)
        for r in range(w.size):
            if words[w.rank_word(r, R_SLEEPING)]:
                for s in range(w.size):
                    if s != r:
                        _linux.futex_wake(w.address + w.ring_ctrl(s, r) + G_HEAD * 8)
    finally:
        w.close()


def root_cause(words, world: "World", rank: int) -> int:
    """The rank whose death started the failure that ``rank``'s death is part of:
    the recorded first death if any, else ``rank``'s chain of causes followed."""
    first = int(words[H_FIRST_DEAD])
    if first:
        return first - 1
    seen = set()
    while rank not in seen:
        seen.add(rank)
        cause = int(words[world.rank_word(rank, R_CAUSE)])
        if not cause or cause - 1 >= world.size:
            break
        rank = cause - 1
    return rank


def read_root_cause(fd: int, rank: int) -> int:
    """Launcher: :func:`root_cause` of ``rank`` from the world block in ``fd``."""
    w = _LauncherView(fd)
    try:
        return root_cause(w.words, w, rank)
    finally:
        w.close()


def register_pid(fd_or_world, rank: int, pid: int | None = None) -> None:
    """A rank writes its own pid (single writer) and marks itself ready."""
    w = fd_or_world if isinstance(fd_or_world, World) else World(fd_or_world)
    w.words[w.rank_word(rank, R_PID)] = os.getpid() if pid is None else pid
    w.words[w.rank_word(rank, R_READY)] = 1
    if w is not fd_or_world:
        w.close()


def read_pids(fd: int) -> list[int]:
    """The pids ranks registered so far (0 for a rank not yet started)."""
    w = World(fd)
    try:
        return [int(w.words[w.rank_word(r, R_PID)]) for r in range(w.size)]
    finally:
        w.close()
