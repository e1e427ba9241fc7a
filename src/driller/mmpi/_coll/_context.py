"""The context of a communicator's collectives, and the plumbing every algorithm uses.

Every collective runs on the communicator's collective context (``cx.cctx``),
so it never matches user point-to-point traffic; each call takes the next
sequence number of its communicator (:func:`cbase`) and tags its messages
``seq << 8 | step``, so consecutive (or concurrent nonblocking) collectives
never match each other either.  MPI requires every rank to call the
collectives of a communicator in the same order, which keeps the sequence
numbers in agreement.

Algorithms are generators yielding the point-to-point operations they wait on:
:func:`drive` runs one to its end (blocking calls); ``_nonblocking`` advances
them at Test/Wait and inside every progress of the transport.
"""

from __future__ import annotations

import errno
import pickle
import struct

import numpy as np

from ... import _errcodes, _linux
from ...errors import MmpiError, MmpiTypeError, MmpiValueError, PeerDiedError
from .. import _transport as T
from .. import _objects
from . import _board
from .._bufspec import parse
from .._const import ANY_SOURCE, IN_PLACE
from .._objects import loads

__all__ = [
    "Context", "TAGMASK", "INFO", "peer_of", "drive", "waitall", "first_error", "address",
    "cbase", "cs", "cr", "co_send", "co_recv", "orecv", "oval", "check_root", "count_check", "count_errors",
    "xsend", "xrecv", "brecv", "bsend", "pid", "readv", "writev", "notify", "g_then",
    "Failed", "raise_failed", "obj_items", "Refused", "refused_of", "refused_error",
    "refusal", "size_error", "send_refused", "co_send_r", "oval_r", "xrecv_r", "brecv_r", "absorb", "size_hint",
    "g_sent", "co_recv_any", "sender", "co_send_raw",
]

TAGMASK = (1 << 20) - 1   # tags < 2**28: Barrier's own tags are 2**29 + round
INFO = struct.Struct("<5q")   # a direct-access record: address, bytes, dtype num, itemsize, extra


class Context:
    """What the collectives of one communicator work with: the transport ``t``,
    the world ranks of its ``group``, its point-to-point context ``ctx`` and
    collective context ``cctx`` (= ctx + 1), this process's ``rank`` and the
    ``size``, whether the group is the world's (``identity``) and may use the
    world block's shared-memory algorithms (``shm``: all on this node), the ``name``, and
    per-communicator collective state (``seq``: the calls so far, which number
    the tags; ``direct_ok``: whether ranks may read each other's memory, once
    decided; ``topo``: the process topology, whose neighbours the neighbourhood
    collectives exchange with, set by ``_topo``, else None).  ``Comm`` makes one;
    requests keep it (``t``, ``rank_of``)."""

    __slots__ = ("t", "group", "ctx", "cctx", "rank", "size", "identity", "shm", "name",
                 "index", "seq", "direct_ok", "hier", "topo", "kr", "bw", "bwords", "bhi",
                 "nb", "unexp", "berr", "__weakref__")

    def __init__(self, t, group, ctx: int, name: str = ""):
        self.t = t
        self.group = list(group)
        self.ctx = ctx
        self.cctx = ctx + 1
        self.index = {w: i for i, w in enumerate(self.group)}
        self.rank = self.index[t.rank]
        self.size = len(self.group)
        self.identity = self.group == list(range(t.size))
        # the world-group shared-memory algorithms (barrier words, collective slots)
        # need every rank of the world on this node (a hybrid world spans nodes)
        self.shm = self.identity and t.all_local
        self.name = name
        self.seq = 0
        self.direct_ok = None
        self.hier = None    # _hier's node/leaders split (False: on one node), once made
        self.topo = None
        # the collective board (_board): this rank's word for this context (bw, in
        # bwords), its records' high bits (bhi)
        self.kr = None      # (seq, name, root) of its last rooted collective
        self.nb = []        # its nonblocking collectives in flight (their numbers)
        self.unexp = ()     # the transport's unexpected messages (swept by cbase)
        self.berr = 0       # the world block's "board errors" flag word
        _board.setup(self)

    def rank_of(self, world_rank: int) -> int:
        """The communicator rank of a world rank."""
        return world_rank if self.identity else self.index.get(world_rank, world_rank)


# ------------------------------------------------------------------ driving


def peer_of(op):
    if type(op) is T.SendOp:
        return op.dest
    s = op.source
    return None if s < 0 else s


def drive(t, gen):
    """Run an algorithm generator to the end (blocking); its return value."""
    try:
        ops = gen.send(None)
        while True:
            for op in ops:
                if op is not None and not op.done:
                    t.wait(op, peer_of(op))
            ops = gen.send(None)
    except StopIteration as e:
        return e.value


def g_then(gen, *after):
    """The algorithm generator ``gen``, then each callable of ``after`` that is not
    None (the unpack of a staged receive of a derived datatype), if ``gen`` ended
    without an error; gen's value."""
    res = yield from gen
    for fn in after:
        if fn is not None:
            fn()
    return res


def waitall(t, ops):
    """Wait for every op of a list (errors are the caller's to check)."""
    for op in ops:
        if op is not None and not op.done:
            t.wait(op, peer_of(op))


def first_error(ops):
    for op in ops:
        if op is not None and op.exc is not None:
            raise op.exc


def g_sent(ops):
    """Wait for the sends started in ``ops`` (None: one done at once) and raise the
    first one's error (a generator step of an algorithm)."""
    ops = [o for o in ops if o is not None]
    if ops:
        yield ops
        first_error(ops)


def address(mv, writable=False) -> int:
    return _linux.buffer_address(mv, writable)[0] if len(mv) else 0


# ------------------------------------------------------------------ plumbing


def cbase(cx) -> int:
    """Start a collective: the base tag of this call.  Records it on the board (one
    store: the context and the sequence number)."""
    s = cx.seq + 1
    cx.seq = s
    m = s & TAGMASK
    w = cx.bwords
    w[cx.bw] = cx.bhi | m << 24
    if cx.unexp and w[cx.berr]:   # (a rank of this job left a collective with an
        _board.sweep(cx)          # error: drop the messages it left unreceived)
    return (m + 1) << 8  # >= 512: never Barrier's round tags (0..63)


def cs(cx, mv, dst: int, tag: int):
    op = T.SendOp(cx.group[dst], tag, cx.cctx, mv)
    cx.t.isend(op)
    return op


def cr(cx, mv, src: int, tag: int):
    op = T.RecvOp(cx.group[src], tag, cx.cctx, mv)
    cx.t.irecv(op)
    return op


def co_send(cx, obj, dst, tag):
    """Start sending an object to rank ``dst`` on the collective context (None: done)."""
    return cx.t.send_object(cx.group[dst], cx.cctx, tag, obj, False, "collective")


def co_send_raw(cx, data: bytes, dst, tag):
    """Start sending ``data`` as the stream of an object, unpickled (None: done): the
    receiver of an object takes it as ``(data, [])``, and tells it from raw data."""
    return cx.t.send_object(cx.group[dst], cx.cctx, tag, None, False, "collective", (data, []))


def co_recv(cx, src, tag):
    """Start receiving an object from rank ``src`` on the collective context."""
    op = T.RecvOp(cx.group[src], tag, cx.cctx, None)
    cx.t.irecv(op)
    return op


def orecv(cx, src, tag):
    """Receive an object from rank ``src`` (blocking; straight from the ring when
    it is there already, as Comm.recv)."""
    t = cx.t
    res = t.recv_fast(cx.group[src], tag, cx.cctx, None)
    if res is not None:
        v = res[2]
        if type(v) is bytes:
            return _objects.unpickle(v)
        return loads(v[:2])   # a packed object: (stream, parts, nbytes)
    op = co_recv(cx, src, tag)
    if not op.done:
        t.wait(op, op.source)
    return oval(op)


def oval(op):
    if op.exc is not None:
        raise op.exc
    return loads(op.value)


class Failed:
    """What a rank whose arguments were bad sends the ranks waiting for its object
    instead: they raise too (naming it), instead of waiting forever."""

    __slots__ = ("rank", "text")

    def __init__(self, rank: int, text: str):
        self.rank, self.text = rank, text

    def __reduce__(self):
        return Failed, (self.rank, self.text)


class Refused:
    """What a rank sends, in the same round of a collective, instead of its data when
    it refused its arguments (or learnt that a peer did): the first rank that did and
    why.  Receivers carry it on (so every rank ends the collective in the same round,
    none waits) and raise :func:`refused_error`."""

    __slots__ = ("rank", "text", "ranks", "flood")

    def __init__(self, rank: int, text: str, ranks: tuple = (), flood: bool = False):
        self.rank, self.text = rank, text
        self.ranks = ranks or (rank,)      # every rank known to have refused
        # a broadcast's root sent it to every rank directly (it could not know the
        # algorithm): a rank that got it from its tree parent takes the root's too
        self.flood = flood

    def __reduce__(self):
        return Refused, (self.rank, self.text, self.ranks, self.flood)

    def merge(self, other: Refused | None) -> Refused:
        """This refusal and ``other`` (None: this one): the lower rank's, naming all."""
        if other is None or set(other.ranks) <= set(self.ranks):
            return self
        first = self if self.rank <= other.rank else other
        return Refused(first.rank, first.text, tuple(sorted(set(self.ranks) | set(other.ranks))),
                       self.flood or other.flood)


def refusal(cx, e: BaseException, what: str) -> Refused:
    """This rank's :class:`Refused` for the error ``e`` it raises (called once the
    collective has its sequence number: :func:`cbase`); recorded on the board too,
    for the peers whose algorithm this rank could not guess."""
    text = f"{type(e).__name__}: {e}"
    ecls = e.error_class if isinstance(e, MmpiError) else _errcodes.ERR_ARG
    _board.post(cx, cx.seq, _board.kind_of(what), _board.R_REFUSED, ecls, text)
    return Refused(cx.rank, f"refused its arguments of {what} ({text})")


def refused_error(f: Refused, what: str) -> MmpiError:
    """The error raised by a rank that received ``f`` instead of a peer's data."""
    return MmpiError(f"{what}: rank {f.rank} {f.text}; no rank got a result: every rank "
                     f"must pass valid arguments")


def refused_of(op):
    """The :class:`Refused` a finished receive got instead of data, else None."""
    v = op.value
    if v is None or type(v) is not tuple or v[0] is None:
        return None          # data (a raw buffer message received as an object included)
    if op.exc is not None and op.mv is None:
        return None
    try:
        o = loads(v)
    except Exception:
        return None
    return o if type(o) is Refused else None


def send_refused(cx, f: Refused, dst: int, tag: int):
    """Start sending ``f`` to rank ``dst`` instead of data (None: done)."""
    return co_send(cx, f, dst, tag)


def co_send_r(cx, obj, dst: int, tag: int, what: str):
    """Start sending an object (:func:`co_send`); one that cannot be pickled (or
    sent) is replaced by a :class:`Refused`, so the receiver does not wait.  Returns
    (the op or None, this rank's error or None: to raise once its part is done)."""
    try:
        return co_send(cx, obj, dst, tag), None
    except PeerDiedError:
        raise
    except Exception as e:
        f = Refused(cx.rank, f"could not send its object of {what} ({type(e).__name__}: {e})")
        return co_send(cx, f, dst, tag), e


def oval_r(v, what: str):
    """An object received in a collective, or the error of the :class:`Refused` it is."""
    if type(v) is Refused:
        raise refused_error(v, what)
    return v


def xrecv_r(cx, mv, src: int, tag: int, blk: bool, what: str):
    """:func:`xrecv`, but a peer's :class:`Refused` is returned (None: the data came)."""
    if blk:
        res = cx.t.recv_fast(cx.group[src], tag, cx.cctx, mv)
        if res is not None:
            if res[2] != len(mv):
                raise size_error(cx, len(mv), src, res[2], what)
            return None
    r = cr(cx, mv, src, tag)
    yield [r]
    if r.exc is not None:
        f = refused_of(r)
        if f is not None:
            return f
    count_check(cx, r, len(mv), what, src)
    return None


def brecv_r(cx, mv, src: int, tag: int, what: str):
    """:func:`brecv`, but a peer's :class:`Refused` is returned (None: the data came)."""
    t = cx.t
    res = t.recv_fast(cx.group[src], tag, cx.cctx, mv)
    if res is None:
        r = cr(cx, mv, src, tag)
        t.wait(r, r.source)
        if r.exc is not None:
            f = refused_of(r)
            if f is not None:
                return f
        count_check(cx, r, len(mv), what, src)
    elif res[2] != len(mv):
        raise size_error(cx, len(mv), src, res[2], what)
    return None


def co_recv_any(cx, tag: int):
    """Start receiving an object (or data of any size) from any rank on the collective
    context; the sender's rank is :func:`sender` once it is done."""
    op = T.RecvOp(ANY_SOURCE, tag, cx.cctx, None)
    cx.t.irecv(op)
    return op


def sender(cx, op) -> int:
    """The communicator rank whose message a finished receive took."""
    return cx.rank_of(op.message.source)


def absorb(cx, src: int, tag: int, f: Refused | None):
    """Receive whatever rank ``src`` sends (data of any size, or a Refused) and drop
    it (a generator): a rank that cannot use it still takes it, so the sender never
    waits.  Returns ``f`` merged with the Refused received, if any."""
    r = co_recv(cx, src, tag)
    yield [r]
    if r.exc is not None:
        raise r.exc
    g = refused_of(r)
    return g if f is None else f.merge(g)


def size_hint(*specs) -> int:
    """The size in bytes a rank whose arguments were refused takes its peers to pass
    (the algorithm depends on it): its first buffer spec that parses, else the size
    of the memory its first spec names (a count that overruns its buffer: the buffer
    is what the program holds), else 0."""
    for s in specs:
        if s is None or s is IN_PLACE:
            continue
        try:
            return parse(s, False, "collective").nbytes
        except Exception:
            pass
    for s in specs:
        if s is None or s is IN_PLACE:
            continue
        b = s[0] if type(s) in (list, tuple) and s else s
        try:
            return memoryview(b).nbytes
        except Exception:
            pass
    return 0


def raise_failed(v, what: str):
    """``v``, or the error a :class:`Failed` stands for."""
    if type(v) is Failed:
        raise MmpiError(f"{what}: rank {v.rank} passed invalid arguments ({v.text})")
    return v


def obj_items(sendobj, n: int, what: str, rank: int):
    """The ``n`` objects of a scatter/alltoall as mpi4py reads them: None is ``n``
    Nones, any iterable is listed; ``(items, None)``, or ``([Failed] * n, error)``
    for a non-iterable (TypeError) or a wrong count (ValueError), so that the caller
    still sends every rank something and raises the error after."""
    if sendobj is None:
        return [None] * n, None
    try:
        items = list(sendobj)
    except TypeError:
        err = MmpiTypeError(f"{what}: pass a sequence of {n} items (one per rank), or "
                            f"None; got {type(sendobj).__name__}")
    else:
        if len(items) == n:
            return items, None
        err = MmpiValueError(f"{what}: expecting {n} items, got {len(items)}: pass a "
                             f"sequence of {n} items (one per rank), or None")
    return [Failed(rank, str(err))] * n, err


def check_root(cx, root, what) -> int:
    """The root of a rooted collective, checked (ERR_ROOT), kept with the name and
    the sequence number of the collective it starts (``cx.kr``): a rank stuck in
    it puts them on the board."""
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or \
            not 0 <= root < cx.size:
        msg = (f"{what}: invalid root {root!r} (communicator of size {cx.size}; valid: "
               f"0..{cx.size - 1})")
        _board.invalid_root(cx, _board.kind_of(what), f"{root!r:.60}")
        raise MmpiError(msg, error_class=_errcodes.ERR_ROOT)
    root = int(root)
    cx.kr = (cx.seq + 1, what, root)   # (the board's checks read it when stuck)
    return root


def count_check(cx, op, expect, what, src):
    """A receive finished: raise its error, or a size mismatch."""
    if op.exc is not None:
        raise op.exc
    if op.count != expect:
        raise size_error(cx, expect, src, op.count, what)


def size_error(cx, expect: int, src: int, got: int, what: str) -> MmpiError:
    """The error of a message from rank ``src`` of another size than expected."""
    return MmpiError(f"{what}: rank {cx.rank} expected {expect} bytes from rank {src} but "
                     f"got {got}: every rank must pass matching counts and datatypes")


def count_errors(cx, ops, counts, isz, what, check=count_check):
    """The first error among the finished receives ``ops`` ((rank, op) pairs, each
    expected to hold ``counts[rank] * isz`` bytes, checked by ``check``), or None;
    every one is checked, so none is left unread."""
    err = None
    for r, o in ops:
        try:
            check(cx, o, counts[r] * isz, what, r)
        except MmpiError as e:
            err = err or e
    return err


def xsend(cx, mv, dst: int, tag: int):
    """Start a send: straight into the ring when it fits (then complete: None),
    else a SendOp to wait for."""
    if cx.t.senders[cx.group[dst]](cx.cctx, tag, mv):
        return None
    return cs(cx, mv, dst, tag)


def xrecv(cx, mv, src: int, tag: int, blk: bool, what: str):
    """Receive exactly len(mv) bytes (a generator).  ``blk``: the caller
    blocks anyway, so try the transport's spinning fast path first."""
    if blk:
        res = cx.t.recv_fast(cx.group[src], tag, cx.cctx, mv)
        if res is not None:
            if res[2] != len(mv):
                raise size_error(cx, len(mv), src, res[2], what)
            return
    r = cr(cx, mv, src, tag)
    yield [r]
    count_check(cx, r, len(mv), what, src)


def notify(cx, ranks, tag: int) -> None:
    """This rank cannot take part (an argument error only it can see): send the
    ``ranks`` that wait for its message an empty one instead, so that their size
    check raises (or, expecting nothing, they finish): none is left waiting."""
    for r in ranks:
        xsend(cx, memoryview(b""), r, tag)


def brecv(cx, mv, src: int, tag: int, what: str) -> None:
    """Blocking receive of exactly len(mv) bytes (transport fast path first)."""
    t = cx.t
    res = t.recv_fast(cx.group[src], tag, cx.cctx, mv)
    if res is None:
        r = cr(cx, mv, src, tag)
        t.wait(r, r.source)
        count_check(cx, r, len(mv), what, src)
    elif res[2] != len(mv):
        raise size_error(cx, len(mv), src, res[2], what)


def bsend(cx, mv, dst: int, tag: int) -> None:
    s = xsend(cx, mv, dst, tag)
    if s is not None:
        if not s.done:
            cx.t.wait(s, s.dest)
        if s.exc is not None:
            raise s.exc


def pid(cx, r: int) -> int:
    return cx.t.pid_of(cx.group[r])


def readv(cx, r: int, local: int, remote: int, n: int, what: str) -> None:
    _vm_copy(cx, _linux.process_vm_readv, r, local, remote, n, what,
             "was reading its buffer", f"reading {n} bytes from rank {r}",
             f"reading {n} bytes from rank {r}")


def writev(cx, r: int, local: int, remote: int, n: int, what: str) -> None:
    _vm_copy(cx, _linux.process_vm_writev, r, local, remote, n, what,
             "was writing into its buffer", f"writing {n} bytes into rank {r}",
             f"writing {n} bytes to rank {r}")


def _vm_copy(cx, copy, r: int, local: int, remote: int, n: int, what: str,
             doing: str, denied: str, failed: str) -> None:
    """One single-copy transfer with rank r's memory; its errors said in MPI terms."""
    try:
        copy(pid(cx, r), local, remote, n)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise PeerDiedError(f"{what}: rank {r} of the communicator died while rank "
                                f"{cx.rank} {doing}",
                                rank=cx.t.blame(cx.group[r])) from None
        if e.errno in T.DENIED:
            raise MmpiError(f"{what}: " + T.denial_message(e, denied)) from None
        raise MmpiError(f"{what}: {failed} failed: {e}") from None
