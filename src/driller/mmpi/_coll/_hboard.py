"""The hybrid board: which collective each rank of a communicator spanning nodes is
in, compared across nodes by the ranks that are stuck.

The collective board (``_board``) lives in a node's world block: it cannot see a
rank of another node that called another collective, or passed another root, than
its peers.  Across nodes such a call left every rank waiting forever (two node
leaders each waiting for the other's broadcast), or, where the hierarchical path
hid the difference, gave the odd rank another root's data without a word.

Now every hierarchical collective of a communicator spanning nodes (``_hier``,
``_hiergather``) numbers itself and notes its kind and root in a small history
on the communicator's split (:func:`enter`: a few stores, no message), and the
node step of a rooted collective runs on a context of its root (``_Split.rnode``),
so that a rank with another root never takes another root's data.  A rank whose
wait has found nothing to do for ``GRACE`` seconds since it entered its latest
collective (the hybrid transport's slow path only: ``on_remote_stuck``, called
from its idle waits) sends its history once per collective to its two
neighbours in the communicator's rank order, whatever their node (one small MPI
message each on a communicator of their own: two per stuck rank, whatever the size), and reads
the histories that came to it.  If the ranks did not all call the same, two
neighbours differ; once both wait (in that collective, a later one, or
Finalize's barrier) one of them sees it.  The same collective number of the same
communicator with another kind or root on two ranks is a user error that the
ranks cannot all learn of, and the rank that sees it ends the job through the
launcher, naming both ranks and what each passed (as ``_hier.refused`` does for a
refused argument).  The comparison is exact: a slow rank is never taken for a
wrong one.
"""

from __future__ import annotations

import operator
import struct
import sys
import time

from ._board import GRACE

__all__ = ["GRACE", "KINDS", "HIST", "setup", "forget", "enter", "root_of"]

KINDS = ("", "Barrier", "Bcast", "bcast", "Reduce", "reduce", "Allreduce", "allreduce",
         "Gather", "Gatherv", "gather", "Scatter", "Scatterv", "scatter", "Allgather",
         "Allgatherv", "allgather", "Alltoall", "Alltoallv", "alltoall", "Finalize")
KIND = {k: i for i, k in enumerate(KINDS) if k}
HIST = 8                   # collectives of a communicator remembered (and sent)
_HEAD = struct.Struct("<3q")
_SEEN_MAX = 4096           # reports kept from other nodes


class _State:
    """A transport's hybrid board: the split of the current collective, what it sent
    last, what other ranks reported."""

    __slots__ = ("cur", "key", "since", "probe", "sent", "seen")

    def __init__(self):
        self.cur = None
        self.key = None     # the collective this rank was last found waiting in,
        self.since = 0.0    # since when
        self.probe = 0.0    # when to read the others' histories next
        self.sent = None
        self.seen = {}     # (cctx, number) -> [(comm rank, kind, root)]


def setup(h) -> None:
    """Register a new split (a communicator spanning nodes) with its transport's
    hybrid board, made (and hooked to the transport's slow path) on first use."""
    t = h.cx.t
    st = getattr(t, "hboard", None)
    if st is None:
        if not hasattr(t, "board_send"):
            return
        st = t.hboard = _State()
        t.on_remote_stuck = lambda: _stuck(t, st)
    h.hb = st


def forget(h) -> None:
    """The split's communicator is freed."""
    st = h.hb
    if st is not None and st.cur is h:
        st.cur = None


def root_of(root) -> int:
    """A root as every rank compares it (an int; -2 for what is not one)."""
    try:
        return operator.index(root)
    except TypeError:
        return -2


def enter(h, what: str, root: int = -1) -> None:
    """This rank starts the hierarchical collective ``what`` (``root``: its root,
    -1 for none) on the communicator of split ``h``."""
    s = h.hseq + 1
    h.hseq = s
    h.hist[s % HIST] = (s, KIND[what], root)
    st = h.hb
    if st is not None:
        st.cur = h


def _text(kind: int, root: int) -> str:
    if KINDS[kind] == "Finalize":   # (also a rank's exit without it: sys.exit, or its end)
        return "Finalize (MPI.Finalize() or its program's exit)"
    return KINDS[kind] + ("" if root == -1 else
                          f"(root={root})" if root >= 0 else "(an invalid root)")


def _stuck(t, st: _State) -> None:
    """The transport's ``on_remote_stuck`` hook (a wait found nothing to do): once
    this rank has been found waiting for GRACE seconds since it entered its latest
    collective, send its history once, and read the others' (every 10 ms), compare."""
    h = st.cur
    if h is None:
        return
    cx = h.cx
    key = (cx.cctx, h.hseq)
    now = time.monotonic()
    if st.key != key:
        st.key, st.since = key, now
        return
    if now - st.since < GRACE or now < st.probe:
        return
    st.probe = now + 0.01
    if st.sent != key:
        st.sent = key
        ents = [e for e in h.hist if e is not None]
        words = _HEAD.pack(cx.cctx, cx.rank, len(ents)) + b"".join(
            _HEAD.pack(*e) for e in ents)
        n, me = cx.size, cx.rank
        for w in {cx.group[(me - 1) % n], cx.group[(me + 1) % n]}:
            t.board_send(w, words)
    for _src, data in t.board_recv():
        cctx, r, n = _HEAD.unpack_from(data, 0)
        if len(st.seen) > _SEEN_MAX:
            st.seen.clear()
        for i in range(n):
            s, k, root = _HEAD.unpack_from(data, _HEAD.size * (i + 1))
            st.seen.setdefault((cctx, s), []).append((r, k, root))
    _compare(t, st, h)


def _compare(t, st: _State, h) -> None:
    cx = h.cx
    for e in h.hist:
        if e is None:
            continue
        s, k, root = e
        for r, pk, proot in st.seen.get((cx.cctx, s), ()):
            if (pk, proot) != (k, root):
                _abort(t, cx, s, k, root, r, pk, proot)


def _abort(t, cx, s: int, k: int, root: int, r: int, pk: int, proot: int) -> None:
    name = cx.name or "a communicator"
    sys.stderr.write(
        f"driller: collective #{s} on {name} spanning nodes: rank {r} called "
        f"{_text(pk, proot)} but rank {cx.rank} (world rank {t.rank}) called "
        f"{_text(k, root)}: every rank must call the same collectives in the same order "
        f"with the same root; the ranks on other nodes cannot learn of it and would wait "
        f"forever: aborting the MPI job\n")
    sys.stderr.flush()
    t.abort(1)
