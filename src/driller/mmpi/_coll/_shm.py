"""Shared-memory collectives of world-group communicators: the barrier and small Allreduce.

Each rank owns two words of the world block (``World.coll_words``: its barrier
count and its asleep-in-a-barrier flag) and a collective slot
(``World.coll_slots``); the state kept per transport is ``Transport.coll_state``
(made by :func:`shm_state`).
"""

from __future__ import annotations

import os
import struct
import threading
import time

import numpy as np

from ... import _linux
from ...errors import MmpiError, PeerDiedError
from .. import _transport as T
from .. import _world as W
from . import _board

__all__ = [
    "SHM_HALF", "SHM_HDR", "SHM_MAX", "shm_barrier", "shm_state", "coll_slots", "shm_sleep",
    "shm_allreduce", "shm_refused",
]

SHM_HALF = 4096             # a collective slot is two halves (see _world.COLL_SLOT)
SHM_HDR = 64                # half = (nbytes, dtype) header, then data
SHM_MAX = SHM_HALF - SHM_HDR  # small world Allreduce up to this many bytes: in the slots
SLOT_HDR = struct.Struct("<2q")
FENCE = threading.Lock()


def shm_barrier(cx, what: str = "Barrier", seq: int | None = None) -> None:
    """Barrier of a communicator whose group is the whole world, in shared memory.

    Each rank owns one word of the world block (its rank-table entry, word
    ``the first of ``_world.World.coll_words````): it writes its barrier count there, wakes whoever sleeps
    on it, and waits until every rank's word reached the same count: one
    store and n loads instead of log2(n) rounds of messages, which matters
    when ranks outnumber cores (every message needs its receiver scheduled).
    Blocking barriers on communicators with the same group are called in the
    same order by every rank (else MPI deadlocks), so one count serves them
    all.  While waiting it keeps the transport progressing (rings drained,
    queued sends flushed, nonblocking collectives advanced), spins with
    sched_yield for the transport's ``spin_seconds``, then sleeps on the
    missing ranks' words, the rings and the deaths word; a dead peer raises
    PeerDiedError.  ``seq``: the collective this barrier is part of (its sequence
    number): a wait that lasts reads the collective board (_board.check_shm), and a
    peer's error there makes this rank take its count back and raise.
    """
    t = cx.t
    words = t.words
    st = t.coll_state or shm_state(cx)
    e = st[0] + 1
    st[0] = e
    ep = st[1]
    mine = ep[t.rank]
    words[mine] = e
    base = t.base
    # wake sleepers (a futex_wake on a shared mapping costs several us: only when
    # someone sleeps).  The lock round trip is a locked instruction, i.e. a full
    # fence: our count is visible before we read the flags, and a sleeper's flag
    # is visible before its futex_waitv compares (the syscall fences): no lost
    # wake-up.
    FENCE.acquire()
    FENCE.release()
    for f in st[2]:
        if words[f]:
            _linux.futex_wake(base + mine * 8)
            break
    n = len(ep)
    j = 0
    spin_end = None
    polls = 0
    try:
        while True:
            while j < n and words[ep[j]] >= e:
                j += 1
            if j == n:
                return
            polls += 1
            # the transport needs us only for liveness (drain rings, flush queued
            # sends, advance nonblocking collectives): not on every poll
            if (polls & 15 == 0 or t.npending) and t.progress():
                spin_end = None
                continue
            if words[W.H_DEATHS] != t.deaths_seen:
                # (j may have arrived, then exited, since we looked: not a death)
                t.check_dead(None, j, False, lambda: words[ep[j]] >= e)
            now = time.perf_counter()
            if spin_end is None:
                spin_end = now + t.spin_seconds
            elif now > spin_end:
                if not shm_sleep(cx, e, ep, j):
                    t.check_dead(None, j, True, lambda: words[ep[j]] >= e)
                    if seq is not None:
                        # a peer's error on the board: nobody passed this barrier (a
                        # rank never came), the count goes back (the next is in step)
                        _board.check_shm(cx, seq, lambda: _undo(st, words, mine, e))
                continue
            os.sched_yield()
    except PeerDiedError as err:
        raise PeerDiedError(f"{what}: {err}", rank=err.rank, status=err.status) from None


def _undo(st, words, mine: int, e: int) -> None:
    st[0] = e - 1
    words[mine] = e - 1


def shm_state(cx):
    """The collectives' state of this process's transport, made on first use:
    [barrier count, count words, sleep-flag words, collective slots (byte
    offsets; None: the world block has none)]."""
    t = cx.t
    w = t.world
    words = [w.coll_words(r) for r in range(t.size)]
    ep = [e for e, _ in words]
    sl = [s for _, s in words]
    slots = w.coll_slots() if W.COLL_SLOT >= 2 * SHM_HALF else None
    st = t.coll_state = [t.words[ep[t.rank]], ep, sl, slots]
    return st


def coll_slots(cx):
    """Byte offsets of every rank's collective slot in the world block (None: the
    block has none)."""
    return (cx.t.coll_state or shm_state(cx))[3]


def shm_sleep(cx, e, ep, j) -> bool:
    """Futex-sleep until a missing rank arrives, a ring moves or a peer dies;
    False on timeout (the transport's ``sleep_seconds``)."""
    t = cx.t
    words = t.words
    base = t.base
    if t.npending:
        return True               # queued sends: keep spinning (flushed by progress)
    if t.deferred:                # a deferred run of takes ends before sleeping (its
        t.flush_deferred()        # producer may be waiting for the room)
    flag = t.coll_state[2][t.rank]
    fwas = words[flag]   # (a barrier's sleep nested in another's puts it back too)
    ms = t.my_sleeping
    was = words[ms]   # (as Transport._sleep: a nested sleep restores it)
    try:
        words[flag] = 1   # (raised inside the try: an exception cannot leave them up)
        words[ms] = 1
        waits = []
        for r in range(j, len(ep)):
            v = words[ep[r]]
            if v < e:
                waits.append((base + ep[r] * 8, v))
        if not waits:
            return True
        waits = waits[:64]
        for src, hw in t.in_list:
            h = words[hw]
            if h != t.in_tail[src]:
                return True
            waits.append((base + hw * 8, h))
        d = words[W.H_DEATHS]
        if d != t.deaths_seen:
            return True
        waits = waits[:127]
        waits.append((base + W.H_DEATHS * 8, d))
        return _linux.futex_waitv(waits, t.sleep_seconds)
    finally:
        words[ms] = was
        words[flag] = fwas


def shm_allreduce(cx, acc, op) -> bool:
    """Small Allreduce of a world-group communicator in shared memory: write our
    data into our slot (the half chosen by the barrier count's parity), one
    shared-memory barrier, then fold every rank's slot in rank order locally
    (the same operands in the same order on every rank: identical results).
    A half is rewritten two barriers later, when everyone has read it.
    False: no slots (the caller takes the message path)."""
    slots = coll_slots(cx)
    if slots is None:
        return False
    t = cx.t
    st = t.coll_state or shm_state(cx)
    h = ((st[0] + 1) & 1) * SHM_HALF
    data = t.data
    nb = acc.nbytes
    num = acc.dtype.num
    o = slots[t.rank] + h
    SLOT_HDR.pack_into(data, o, nb, num)
    if nb:
        data[o + SHM_HDR:o + SHM_HDR + nb] = memoryview(acc).cast("B")
    shm_barrier(cx, "Allreduce", cx.seq)
    n = len(slots)
    unpack = SLOT_HDR.unpack_from
    for r in range(n):
        if unpack(data, slots[r] + h) != (nb, num):
            pnb, pnum = unpack(data, slots[r] + h)
            if pnb < 0:
                raise MmpiError(_refused_text(data, slots[r] + h, r, pnum))
            raise MmpiError(f"Allreduce: rank {r} passes {pnb} bytes (dtype #{pnum}) but "
                            f"rank {t.rank} passes {nb} (dtype #{num}): every rank must "
                            f"pass the same count and datatype")
    if not nb:
        return True
    # all slots as one strided (n, count) view: one ufunc.reduce over axis 0
    # accumulates rows 0, 1, ... n-1 in order, the same on every rank
    stride = slots[1] - slots[0]
    view = np.ndarray((n, acc.size), acc.dtype, data, slots[0] + h + SHM_HDR,
                      (stride, acc.dtype.itemsize))
    op.ufunc.reduce(view, axis=0, out=acc)
    return True


def shm_refused(cx, text: str) -> bool:
    """This rank refused its arguments of a small world Allreduce: it still takes part,
    writing a refusal (size -1, then ``text``) into its slot, so that every rank meets
    it after the same barrier and raises (:func:`shm_allreduce`).  False: no slots."""
    slots = coll_slots(cx)
    if slots is None:
        return False
    t = cx.t
    st = t.coll_state or shm_state(cx)
    o = slots[t.rank] + ((st[0] + 1) & 1) * SHM_HALF
    raw = text.encode("utf-8", "replace")[:SHM_MAX]
    SLOT_HDR.pack_into(t.data, o, -1, len(raw))
    t.data[o + SHM_HDR:o + SHM_HDR + len(raw)] = raw
    shm_barrier(cx, "Allreduce", cx.seq)
    return True


def _refused_text(data, o: int, r: int, ln: int) -> str:
    text = bytes(data[o + SHM_HDR:o + SHM_HDR + ln]).decode("utf-8", "replace")
    return (f"Allreduce: rank {r} {text}; no rank got a result: every rank must pass "
            f"valid arguments")
