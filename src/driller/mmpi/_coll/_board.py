"""The collective board: what each rank of a node passed to its current collective.

A user error seen on one rank only (an invalid root, different roots, a refused
buffer whose algorithm the rank cannot guess, two refusals at once) used to leave
the others waiting forever.  Detecting it in every call would cost every valid call
an agreement; here the valid calls pay one store and only a rank that is stuck
looks.

Each rank owns ``_world.BOARD_BYTES`` of the world block (``World.board``):
``BOARD_SLOTS`` groups of four words, one per communicator context modulo
``BOARD_SLOTS``, then the text of its last error.  Words (little-endian u64)::

    entered  ctx(20) << 44 | seq(20) << 24
    raised   ctx(20) << 44 | seq(20) << 24 | kind(8) << 16 | class(8) << 8 | reason(8)
    nonblk   ctx(20) << 44 | the lowest seq in flight(20) << 24 | 1, or ctx << 44 | 2: none
    rooted   ctx(20) << 44 | seq(20) << 24 | kind(8) << 16 | root + 1 (16)

``cbase`` (every collective's start) stores ``entered``: one store, no message, no
wait (``check_root`` keeps the kind and root in the Context, not on the board).  A
rank that refuses its arguments or passes an invalid root stores ``raised`` (after
its text); a rank stuck in a rooted collective stores ``rooted`` before it looks.  A rank whose
wait inside a collective went to futex naps and lasted ``GRACE`` seconds (its slow
path only: the transport's ``on_stuck`` hook, and the shared-memory barrier) reads
its local peers' pairs for that communicator (:func:`check`): a peer that raised in
this collective, one in it with another kind or root, or the peer it waits for
already past it (a blocking collective only: a nonblocking one's part may still run
in the background) makes it raise a clear ``MmpiError`` naming that peer.  Before it
raises it stores its own ``raised``, waits (bounded) until every local peer has
raised in this collective or left it, then drops the messages of this collective
still unreceived or posted: the communicator stays usable, the next collectives
are in step.  The board is node-local: peers on other nodes of a hybrid world are
not read.
"""

from __future__ import annotations

import time
import weakref

from ... import _errcodes
from ...errors import MmpiError
from .. import _world as W
from .._env import env_float

__all__ = [
    "GRACE", "KINDS", "KIND_CODE", "setup", "kind_of", "post", "invalid_root", "check", "stuck",
    "R_REFUSED", "R_ROOT", "R_RAISED", "nb_end", "check_shm", "purge", "sweep",
]

GRACE = env_float("DRILLER_MMPI_BOARD_GRACE_MS", 250, "milliseconds") * 1e-3
SETTLE = 10.0         # seconds a raising rank waits for its peers to leave the collective
CTX_SHIFT, SEQ_SHIFT = 44, 24
MASK20 = (1 << 20) - 1
R_REFUSED, R_ROOT, R_RAISED = 1, 2, 3     # why a rank raised (``raised``'s low byte)
LEFT = 0x80       # ... and it has left the collective (a refusing rank may still take part)
STEP = 4                                  # words per context slot
TEXT_WORD = STEP * W.BOARD_SLOTS          # the text's header word (the ``raised`` it is of)
TEXT_AT = (TEXT_WORD + 2) * 8             # its bytes (the length is at TEXT_WORD + 1)
TEXT_MAX = W.BOARD_BYTES - TEXT_AT
KINDS = ("", "Bcast", "Ibcast", "Reduce", "Ireduce", "Gather", "Gatherv", "Igather",
         "Igatherv", "Scatter", "Scatterv", "Iscatter", "Iscatterv", "bcast", "reduce",
         "gather", "scatter", "Allreduce", "Iallreduce", "Reduce_scatter",
         "Reduce_scatter_block", "Ireduce_scatter", "Ireduce_scatter_block", "Scan", "Exscan",
         "Iscan", "Iexscan", "allreduce", "scan", "exscan", "Allgather", "Allgatherv",
         "Alltoall", "Alltoallv")
ROOTED = 17      # KINDS[1:ROOTED] are rooted (check_root records them on entry)
KIND_CODE = {k: i for i, k in enumerate(KINDS) if k}


def kind_of(what: str) -> int:
    """The board's code of a rooted collective's name (0: not recorded)."""
    return KIND_CODE.get(what, 0)


class _Board:
    """A transport's board state: its contexts by collective context id, the key
    and start of the current stuck wait."""

    __slots__ = ("contexts", "p2p", "key", "since", "base")

    def __init__(self, base: int):
        self.contexts = weakref.WeakValueDictionary()
        self.p2p = set()     # the point-to-point context ids (never a collective's)
        self.key = None
        self.since = 0.0
        self.base = base


def setup(cx) -> None:
    """Give a new Context its board word (``bw``, in ``bwords``) and the high bits
    of its records (``bhi``); a transport without a board gets a scratch list."""
    t = cx.t
    b = getattr(t, "coll_board", None)
    if b is None:
        world = getattr(t, "world", None)
        base = world.board(t.rank) if world is not None else None
        if base is None:
            cx.bwords, cx.bw, cx.bhi = [0, 0], 0, 0
            return
        b = t.coll_board = _Board(base)
        t.on_stuck = lambda op, peer: stuck(t, op, peer)
    b.contexts[cx.cctx] = cx
    b.p2p.add(cx.ctx)
    cx.bwords = t.words
    cx.bw = b.base + STEP * (cx.cctx % W.BOARD_SLOTS)
    cx.bhi = (cx.cctx & MASK20) << CTX_SHIFT
    cx.bwords[cx.bw + 2] = cx.bhi | 2
    eng = getattr(t, "engine", None)
    if eng is not None:
        cx.unexp = eng.unexpected      # (the engine never rebinds its queues)
        cx.berr = W.H_BOARD


def nb_end(cx, seq: int) -> None:
    """The nonblocking collective ``seq`` of ``cx`` is finished on this rank (its
    start is recorded by CollOp: ``cx.nb`` and the ``nonblk`` word)."""
    nb = cx.nb
    nb.remove(seq)
    cx.bwords[cx.bw + 2] = (cx.bhi | (nb[0] & MASK20) << SEQ_SHIFT | 1) if nb else cx.bhi | 2


def _done_part(n: int, key: int, seq: int) -> bool:
    """Whether a peer's nonblocking word ``n`` says it has no part of ``seq`` in flight."""
    if n >> CTX_SHIFT != key >> 20:
        return False
    if n & 2:
        return True
    return _after(n >> SEQ_SHIFT, seq)


def _after(s: int, seq: int) -> bool:
    """Whether collective number ``s`` (its low 20 bits) comes after ``seq`` (the
    numbers wrap at 2**20; half the range ahead counts as after)."""
    return 0 < (s - seq) & MASK20 < 1 << 19


def _tag_seq(tag: int):
    """The collective number a collective message's tag carries (``cbase``'s
    ``(seq + 1) << 8``), or None for another tag."""
    return (tag >> 8) - 1 if 256 <= tag < 1 << 28 else None


def _key(cx, seq: int) -> int:
    return ((cx.cctx & MASK20) << 20) | (seq & MASK20)


def post(cx, seq: int, kind: int, reason: int, eclass: int, text: str) -> None:
    """Store this rank's ``raised`` record for collective ``seq`` (its text first)."""
    if not cx.bw:
        return
    words = cx.bwords
    b = cx.t.coll_board.base
    e = (cx.bhi | (seq & MASK20) << SEQ_SHIFT | (kind & 255) << 16
         | (eclass & 255) << 8 | reason)
    raw = text.encode("utf-8", "replace")[:TEXT_MAX]
    at = b * 8 + TEXT_AT
    cx.t.data[at:at + len(raw)] = raw
    words[b + TEXT_WORD + 1] = len(raw)
    words[b + TEXT_WORD] = e
    words[cx.bw + 1] = e
    if not words[W.H_BOARD]:
        words[W.H_BOARD] = 1     # (cbase's sweeps start: this job had an error)


def invalid_root(cx, kind: int, text: str) -> None:
    """This rank passed an invalid root to the collective it starts: it takes the
    collective's sequence number (as its peers do) and records why, so that the
    peers waiting for it raise instead of waiting forever."""
    s = cx.seq + 1
    cx.seq = s
    if not cx.bw:
        return
    cx.bwords[cx.bw] = cx.bhi | (s & MASK20) << SEQ_SHIFT
    cx.bwords[cx.bw + 3] = cx.bhi | (s & MASK20) << SEQ_SHIFT | kind << 16 | 0xFFFF
    post(cx, s, kind, R_ROOT | LEFT, _errcodes.ERR_ROOT, text)
    _leave(cx, s)


def _text(t, w: int, e: int) -> str:
    b = t.coll_board.base + (w - t.rank) * (W.BOARD_BYTES // 8)
    words = t.words
    if words[b + TEXT_WORD] != e:
        return ""
    n = min(int(words[b + TEXT_WORD + 1]), TEXT_MAX)
    at = b * 8 + TEXT_AT
    return bytes(t.data[at:at + n]).decode("utf-8", "replace")


def _peers(cx):
    t = cx.t
    remote = t.remote
    return [w for w in cx.group if w != t.rank and w not in remote]


def _root_text(v: int) -> str:
    r = v & 0xFFFF
    return "an invalid root" if r == 0xFFFF else f"root={r - 1}"


def stuck(t, op, peer) -> None:
    """The transport's ``on_stuck`` hook: a wait on ``op`` (from world rank ``peer``,
    None: any) timed out in its futex nap.  If ``op`` belongs to a collective (its
    context and tag say which) and the wait has lasted ``GRACE``, :func:`check`."""
    ctx = getattr(op, "context", None)
    if ctx is None:
        return
    seq = _tag_seq(op.tag)
    if seq is None:
        return
    b = t.coll_board
    cx = b.contexts.get(ctx)
    if cx is None or ctx in b.p2p:
        return
    if not _grace(b, (ctx, seq)):
        return
    src = getattr(op, "source", None) if hasattr(op, "capacity") else None
    # (a nonblocking collective of this rank: the peers' parts may lag behind theirs)
    blocking = all((q & MASK20) != seq for q in cx.nb)
    check(cx, seq, src if src is not None and src >= 0 else None, op, blocking)


def _grace(b, key) -> bool:
    now = time.monotonic()
    if b.key != key:
        b.key, b.since = key, now
        return False
    return now - b.since >= GRACE


def check_shm(cx, seq: int, undo) -> None:
    """:func:`check` from the shared-memory barrier of collective ``seq`` (its own
    timed-out naps); ``undo()`` takes this rank's barrier count back first."""
    b = getattr(cx.t, "coll_board", None)
    if b is None or not _grace(b, (cx.cctx, seq & MASK20)):
        return
    check(cx, seq & MASK20, None, None, False, undo)


def check(cx, seq: int, src, op, blocking: bool, undo=None) -> None:
    """Raise if a local peer's board shows why collective ``seq`` of ``cx`` cannot
    complete (``src``: the world rank whose message ``op`` waits for, or None;
    ``undo``: called before this rank says it has left)."""
    if not cx.bw:
        return
    t = cx.t
    words = cx.bwords
    me = t.rank
    key = _key(cx, seq)
    kr = cx.kr
    my_kind = kind_of(kr[1]) if kr is not None and kr[0] & MASK20 == seq else 0
    mine = 0
    if my_kind:     # this rank's kind and root, for the peers stuck in it too
        mine = words[cx.bw + 3] = (cx.bhi | seq << SEQ_SHIFT | my_kind << 16
                                   | (kr[2] + 1) & 0xFFFF)
    what = KINDS[my_kind] or "collective"
    stride = W.BOARD_BYTES // 8
    base = cx.bw - me * stride     # + w * stride: rank w's pair for this context
    err = None
    for w in _peers(cx):
        a = words[base + w * stride]
        e = words[base + w * stride + 1]
        r = cx.rank_of(w)
        if e >> SEQ_SHIFT == key:
            reason, ecls = e & 127, (e >> 8) & 255
            text = _text(t, w, e)
            kname = KINDS[(e >> 16) & 255] or what
            what = what if my_kind else kname
            if reason == R_REFUSED:
                err = (f"{what}: rank {r} refused its arguments of {kname} ({text}); "
                       f"no rank got a result: every rank must pass valid arguments",
                       ecls or _errcodes.ERR_OTHER)
            elif reason == R_ROOT:
                err = (f"{kname}: rank {r} passed an invalid root ({text}); every rank "
                       f"must pass the same valid root", _errcodes.ERR_ROOT)
            else:     # (its text names the ranks and what they passed)
                err = (text or f"{what}: rank {r} raised an error in this collective",
                       ecls or _errcodes.ERR_OTHER)
            break
        rt = words[base + w * stride + 3]
        if my_kind and rt >> SEQ_SHIFT == key:
            pk = (rt >> 16) & 255
            if pk != my_kind:
                err = (f"{what}: rank {r} called {KINDS[pk]} where rank {cx.rank} called "
                       f"{what} (collective #{seq} of this communicator): every rank must "
                       f"call the same collectives in the same order", _errcodes.ERR_OTHER)
                break
            if (rt & 0xFFFF) != (mine & 0xFFFF):
                err = (f"{what}: rank {r} passed {_root_text(rt)} but rank {cx.rank} "
                       f"passed {_root_text(mine)}: every rank must pass the same root",
                       _errcodes.ERR_ROOT)
                break
        if (w == src and a >> CTX_SHIFT == key >> 20
                and _after(a >> SEQ_SHIFT, seq)
                and (blocking or _done_part(words[base + w * stride + 2], key, seq))):
            t.progress()
            if op is not None and op.done:
                return
            how = (f" (this rank passed {_root_text(mine)}: did rank {r} pass another "
                   f"root?)" if my_kind else "")
            err = (f"{what}: rank {r} has left collective #{seq} of this communicator "
                   f"without sending rank {cx.rank} its part{how}: every rank must call the "
                   f"same collectives with the same root",
                   _errcodes.ERR_ROOT if my_kind else _errcodes.ERR_OTHER)
            break
    if err is None:
        return
    msg, ecls = err
    if undo is not None:
        undo()
    own = words[cx.bw + 1]
    if own >> SEQ_SHIFT == key:    # a refusing rank keeps its record (and text): left now
        words[cx.bw + 1] = own | LEFT
    else:
        post(cx, seq, my_kind, R_RAISED | LEFT, ecls, msg)
    _leave(cx, seq)
    raise MmpiError(msg, error_class=ecls)


def _leave(cx, seq: int) -> None:
    """This rank leaves collective ``seq`` with an error: wait (bounded, napping)
    until every local peer has raised in it or entered a later one, so that all it
    sent us is here, then drop this collective's messages still unreceived and its
    receives still posted (a message for a path not taken must not wait there)."""
    t = cx.t
    words = cx.bwords
    key = _key(cx, seq)
    stride = W.BOARD_BYTES // 8
    base = cx.bw - cx.t.rank * stride
    end = time.monotonic() + SETTLE
    peers = _peers(cx)
    while peers and time.monotonic() < end:
        left = []
        for w in peers:
            a = words[base + w * stride]
            e = words[base + w * stride + 1]
            if e >> SEQ_SHIFT == key and e & LEFT:
                continue
            if a >> CTX_SHIFT == key >> 20 and _after(a >> SEQ_SHIFT, seq):
                continue
            left.append(w)
        peers = left
        if peers:
            t.progress()
            time.sleep(0.002)
    t.progress()
    purge(cx, seq)


def sweep(cx) -> None:
    """``cbase`` found messages unreceived: drop those of this communicator's earlier
    collectives that some local rank left with an error (a message sent for a path
    its receiver did not take; it would also keep the receives off the transport's
    fast path).  A nonblocking collective still in flight here keeps its own."""
    if not cx.bw or not cx.bwords[W.H_BOARD]:
        return
    ctx = cx.cctx
    cur = cx.seq & MASK20
    old = set()
    for m in cx.unexp:
        if m.context == ctx:
            sq = _tag_seq(m.tag)
            if sq is not None and _after(cur, sq):
                old.add(sq)
    old -= {q & MASK20 for q in cx.nb}
    if not old:
        return
    words = cx.bwords
    stride = W.BOARD_BYTES // 8
    base = cx.bw - cx.t.rank * stride + 1
    ranks = [cx.t.rank] + _peers(cx)
    for sq in old:
        key = _key(cx, sq)
        if any(words[base + w * stride] >> SEQ_SHIFT == key for w in ranks):
            purge(cx, sq)


def purge(cx, seq: int) -> None:
    """Drop the messages of collective ``seq`` of ``cx`` still unreceived, and cancel
    its receives still posted."""
    eng = cx.t.engine
    ctx = cx.cctx
    s = seq & MASK20

    def ours(o):
        return o.context == ctx and _tag_seq(o.tag) == s

    eng.unexpected[:] = [m for m in eng.unexpected if not ours(m)]
    for r in [r for r in eng.posted if ours(r)]:
        eng.cancel(r)
