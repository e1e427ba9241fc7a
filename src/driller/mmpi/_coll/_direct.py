"""Direct access: collectives that read (or write) peers' buffers in place.

Large buffers are never relayed: ranks exchange buffer addresses
(:func:`g_exchange`), then read each other's memory with process_vm_readv (and
write results with process_vm_writev), once :func:`g_direct_ok` agreed that
every rank may.  Large reductions: each rank reduces its own slice reading
every peer's buffer directly, cache-sized chunk by chunk.
"""

from __future__ import annotations

import errno
import struct

import numpy as np

from ... import _linux
from ...errors import MmpiError, PeerDiedError
from .. import _transport as T
from ._barrier import g_barrier
from ._bcast import g_bcast
from ._context import INFO, address, first_error, pid, readv, xrecv, xsend
from ._shm import shm_barrier

__all__ = [
    "CHUNK", "g_exchange", "g_direct_ok", "g_same_size", "g_sync", "split_counts",
    "g_direct_reduce", "direct_part", "g_direct_refused", "g_direct_vote",
]

CHUNK = 1 << 19             # bytes per direct-read chunk (scratch + accumulator chunk ~ L2)


def g_exchange(cx, payload: bytes, base, blk=False):
    """Allgather of a small fixed-size record from every rank: gather to rank 0,
    then broadcast the table (2(n-1) eager messages)."""
    n, me = cx.size, cx.rank
    k = len(payload)
    out = bytearray(k * n)
    out[me * k:(me + 1) * k] = payload
    mv = memoryview(out)
    if me == 0:
        for r in range(1, n):
            yield from xrecv(cx, mv[r * k:(r + 1) * k], r, base, blk, "collective")
    else:
        s = xsend(cx, memoryview(payload), 0, base)
        if s is not None:
            yield [s]
            first_error((s,))
    yield from g_bcast(cx, mv, 0, base + 1, "collective", blk)
    return bytes(out)


def g_direct_ok(cx, base, blk):
    """Whether every rank of this communicator may read and write every
    other's memory (process_vm_readv/writev): the same answer on every rank,
    decided once per communicator by two small exchanges (tags base+64..67
    of this collective).  False (DRILLER_MMPI_SINGLE_COPY=0 on some rank, or a
    read denied: Yama, no CAP_SYS_PTRACE, a non-dumpable rank) selects the
    algorithms that move data by messages, which take the transport's
    two-copy fallback.  The probe reads a word of each peer's world block:
    reading and writing need the same ptrace access."""
    ok = cx.direct_ok
    if ok is not None:
        return ok
    t = cx.t
    n, me = cx.size, cx.rank
    info = struct.pack("<2q", t.base, 1 if t.single_copy else 0)
    table = yield from g_exchange(cx, info, base + 64, blk)
    peers = [struct.unpack_from("<2q", table, 16 * i) for i in range(n)]
    return (yield from g_direct_vote(cx, peers, base, blk))


def g_direct_vote(cx, peers, base, blk):
    """g_direct_ok once every rank's (world block address, single-copy flag) is known
    (``peers``): probe, then vote (tags base+66, 67)."""
    t = cx.t
    n, me = cx.size, cx.rank
    mine = all(flag for _, flag in peers)
    msg = None
    if mine:
        probe = bytearray(8)
        local = address(memoryview(probe), True)
        for i in range(1, n):
            r = (me + i) % n
            w = cx.group[r]
            if w in t.no_pull:
                mine = False
                break
            try:
                _linux.process_vm_readv(pid(cx, r), local, peers[r][0], 8)
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise PeerDiedError(f"collective: rank {r} of the communicator died "
                                        f"before rank {me} could probe it",
                                        rank=t.blame(w)) from None
                if e.errno not in T.DENIED:
                    raise MmpiError(f"collective: probing rank {r} failed: {e}") from None
                msg = T.denial_message(e, f"reading rank {r} (pid {pid(cx, r)}) of "
                                          f"{cx.name or 'a communicator'} from rank {me}")
                mine = False
                break
    votes = yield from g_exchange(cx, struct.pack("<q", 1 if mine else 0), base + 66, blk)
    ok = all(struct.unpack_from("<q", votes, 8 * i)[0] for i in range(n))
    cx.direct_ok = ok
    if msg:  # after the vote: every rank decided, whatever the warning filter does
        T.warn_once(msg)
    return ok


def g_same_size(cx, nb, isz, base, blk, what):
    """The direct path's size check (same error on every rank), for the
    message-based algorithms that replace it when g_direct_ok is False."""
    table = yield from g_exchange(cx, struct.pack("<2q", nb, isz), base + 68, blk)
    for i in range(cx.size):
        pnb, psz = struct.unpack_from("<2q", table, 16 * i)
        if pnb < 0 and nb >= 0:
            raise MmpiError(f"{what}: rank {i} refused its arguments of {what}; no rank got "
                            f"a result: every rank must pass valid arguments")
        if pnb != nb or psz != isz:
            raise MmpiError(f"{what}: rank {i} passes {pnb} bytes but rank {cx.rank} "
                            f"passes {nb}: every rank must pass the same count and "
                            f"datatype")


def g_direct_refused(cx, base, blk, what):
    """A large reduction whose arguments this rank refused: it still takes part in the
    decision and the exchange that start it, with a size of -1, so every rank raises
    there (none reads or writes a peer's memory).  The caller raises its own error."""
    if (yield from g_direct_ok(cx, base, blk)):
        yield from g_exchange(cx, INFO.pack(0, -1, 0, 0, 0), base, blk)
    else:
        yield from g_same_size(cx, -1, 0, base, blk, what)


def g_sync(cx, base, blk):
    """A barrier inside a collective: the shared-memory one when blocking on a
    world-group communicator, else dissemination (tags base..base+12)."""
    if blk and cx.shm:
        shm_barrier(cx, "collective")
        return
    yield from g_barrier(cx, base, blk)


def split_counts(cx, count, isz):
    n = cx.size
    # block boundaries aligned to 64 bytes where possible
    align = max(1, 64 // isz) if isz <= 64 else 1
    bounds = [min(count, (count * i // n) // align * align) for i in range(n)] + [count]
    counts = [bounds[i + 1] - bounds[i] for i in range(n)]
    return counts, bounds[:-1]


def g_direct_reduce(cx, send_mv, acc_arr, op, dtype, dt, counts, displs, base, what,
                     in_place, blk=False, extra=0):
    """Each rank reduces its own block ``[displs[me], +counts[me])`` (elements)
    reading every peer's ``send_mv`` directly, into ``acc_arr`` (its block).
    First every rank learns every peer's (send address, size, dtype, ``extra``)
    and checks sizes agree (the same error on every rank).  Returns that table.
    Uses tags base, base + 1."""
    n, me = cx.size, cx.rank
    nb = len(send_mv)
    info = INFO.pack(address(send_mv), nb, dtype.num, dtype.itemsize, extra)
    allinfo = yield from g_exchange(cx, info, base, blk)
    peers = [INFO.unpack_from(allinfo, i * INFO.size) for i in range(n)]
    for i, (_, pnb, pnum, psz, _) in enumerate(peers):
        if pnb < 0:
            raise MmpiError(f"{what}: rank {i} refused its arguments of {what}; no rank got "
                            f"a result: every rank must pass valid arguments")
        if pnb != nb or psz != dtype.itemsize:
            raise MmpiError(f"{what}: rank {i} passes {pnb} bytes but rank {me} passes "
                            f"{nb}: every rank must pass the same count and datatype")
    direct_part(cx, send_mv, acc_arr, op, dtype, dt, counts, displs, what, in_place,
                      peers)
    return peers


def direct_part(cx, send_mv, acc_arr, op, dtype, dt, counts, displs, what, in_place,
                 peers):
    n, me = cx.size, cx.rank
    isz = dtype.itemsize
    lo = displs[me] * isz
    blen = counts[me] * isz
    if not blen:
        return
    mine = np.frombuffer(send_mv, dtype)[displs[me]:displs[me] + counts[me]]
    step = max(isz, (CHUNK // isz) * isz)
    scratch = np.empty(step // isz, dtype)
    saddr = scratch.ctypes.data
    if op.commute:
        # a builtin op combines our own chunk with the first peer's straight into
        # acc_arr (ufunc out=): no copy of our own data first
        fuse = op.user is None and not in_place and n > 1
        if not in_place and not fuse:
            np.copyto(acc_arr, mine)
        order = [(me + i) % n for i in range(1, n)]
        for off in range(0, blen, step):
            ln = min(step, blen - off)
            e0, e1 = off // isz, (off + ln) // isz
            a = acc_arr[e0:e1]
            s = scratch[:e1 - e0]
            for r in order:
                readv(cx, r, saddr, peers[r][0] + lo + off, ln, what)
                if fuse and r == order[0]:
                    op.ufunc(mine[e0:e1], s, out=a)
                else:
                    op.lohi(a, s, dt) if op.user is None else op.user(s, a, dt)
        return
    # noncommutative: result = a0 op (a1 op (... op a_{n-1})), right to left
    own = mine.copy() if in_place else mine
    scratch2 = np.empty_like(scratch)
    for off in range(0, blen, step):
        ln = min(step, blen - off)
        e0, e1 = off // isz, (off + ln) // isz
        a = scratch2[:e1 - e0]
        if n - 1 == me:
            np.copyto(a, own[e0:e1])
        else:
            readv(cx, n - 1, a.ctypes.data, peers[n - 1][0] + lo + off, ln, what)
        s = scratch[:e1 - e0]
        for r in range(n - 2, -1, -1):
            if r == me:
                np.copyto(s, own[e0:e1])
            else:
                readv(cx, r, saddr, peers[r][0] + lo + off, ln, what)
            op.user(s, a, dt)
        np.copyto(acc_arr[e0:e1], a)
