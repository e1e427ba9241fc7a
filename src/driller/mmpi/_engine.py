"""The matching engine of mmpi: MPI point-to-point semantics as a pure state machine.

No I/O here (in the way h11 keeps HTTP/1.1 apart from sockets): the transport
feeds the engine what happened (a receive was posted, a message arrived, an
acknowledgement came back, a rendezvous copy finished) and carries out the
*actions* the engine returns (copy this payload into that receive, fetch that
message from the sender's memory, send an ACK/FIN, put a message on the wire,
this operation is complete).

MPI rules implemented here:

* a message is matched by (source, tag, context); a receive may use
  ``ANY_SOURCE`` and/or ``ANY_TAG`` but never a wildcard context;
* an arriving message goes to the *earliest posted* receive that matches it,
  else joins the unexpected queue in arrival order;
* a posted receive takes the *earliest arrived* unexpected message that
  matches it; together with per-pair FIFO delivery by the transport this gives
  non-overtaking order per (source, tag, context);
* a message larger than the receive's capacity is still matched (and consumed);
  the receive completes with ``error = ERR_TRUNCATE``;
* probing does not consume; a *matched* probe (``mprobe``) does: it takes the
  message out of matching at probe time, so that only the receive started on
  its handle (``post_matched``) can ever get it;
* only a receive that is still posted can be cancelled;
* small messages travel *eager* (payload inline); large ones by *rendezvous*
  (the envelope only; the receiver fetches the data from the sender's memory
  and answers FIN); a synchronous eager send completes when its ACK returns;
  mid-size standard sends may be *streamed* (the envelope, then the payload in
  chunks the sender writes while the receiver copies them out): the send is
  complete once its last chunk is out (as an eager one), the receive when its
  last chunk is in (no FIN).
"""

from __future__ import annotations

import itertools

from .._errcodes import ERR_TRUNCATE
from ._const import ANY_SOURCE, ANY_TAG, PROC_NULL

__all__ = [
    "ANY_SOURCE", "ANY_TAG", "PROC_NULL", "EAGER", "RNDV", "STREAM", "ERR_TRUNCATE",
    "ACK", "FIN", "Message", "Receive", "Send",
    "Deliver", "Fetch", "Reply", "Transmit", "Complete", "Engine",
]

EAGER, RNDV, STREAM = 0, 1, 2
ACK, FIN = 1, 2

# receive states
R_NEW, R_POSTED, R_FETCHING, R_DONE, R_CANCELLED = "new", "posted", "fetching", "done", "cancelled"
# send states
S_NEW, S_QUEUED, S_WAIT_ACK, S_WAIT_FIN, S_DONE = "new", "queued", "wait-ack", "wait-fin", "done"


class Message:
    """The envelope of a message that arrived (``payload`` is the transport's)."""

    __slots__ = ("source", "tag", "context", "nbytes", "protocol", "sync", "sender_id",
                 "payload", "flags")

    def __init__(self, source: int, tag: int, context: int, nbytes: int,
                 protocol: int = EAGER, sync: bool = False, sender_id: int = 0,
                 payload=None, flags: int = 0):
        self.source = source
        self.tag = tag
        self.context = context
        self.nbytes = nbytes
        self.protocol = protocol
        self.sync = sync
        self.sender_id = sender_id
        self.payload = payload
        self.flags = flags

    def __repr__(self) -> str:
        p = ("eager", "rndv", "stream")[self.protocol]
        s = " sync" if self.sync else ""
        return (f"Message(source={self.source}, tag={self.tag}, context={self.context}, "
                f"{self.nbytes} B {p}{s})")


class Receive:
    """A receive operation.  ``capacity`` None = unlimited (object receives)."""

    __slots__ = ("source", "tag", "context", "capacity", "state", "message", "error")

    def __init__(self, source: int, tag: int, context: int, capacity: int | None = None):
        self.source = source
        self.tag = tag
        self.context = context
        self.capacity = capacity
        self.state = R_NEW
        self.message = None
        self.error = 0

    def matches(self, m: Message) -> bool:
        return (m.context == self.context
                and (self.source == ANY_SOURCE or self.source == m.source)
                and (self.tag == ANY_TAG or self.tag == m.tag))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source}, tag={self.tag}, "
                f"context={self.context}, {self.state})")


class Send:
    """A send operation (``sync``: complete only once matched, as MPI_Ssend)."""

    __slots__ = ("dest", "tag", "context", "nbytes", "sync", "protocol", "id", "state")

    def __init__(self, dest: int, tag: int, context: int, nbytes: int, sync: bool = False):
        self.dest = dest
        self.tag = tag
        self.context = context
        self.nbytes = nbytes
        self.sync = sync
        self.protocol = EAGER
        self.id = 0
        self.state = S_NEW

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dest={self.dest}, tag={self.tag}, "
                f"context={self.context}, {self.nbytes} B, {self.state})")


# ------------------------------------------------------------------ actions

class Deliver:
    """Copy the eager ``message``'s payload into ``receive`` (its first
    ``min(nbytes, capacity)`` bytes); the receive is complete after this."""

    __slots__ = ("receive", "message")

    def __init__(self, receive: Receive, message: Message):
        self.receive = receive
        self.message = message

    def __repr__(self) -> str:
        return f"Deliver({self.receive!r}, {self.message!r})"


class Fetch:
    """Copy the rendezvous ``message`` from the sender's memory into ``receive``
    (or, streamed, take its chunks as they come), then call :meth:`Engine.fetched`."""

    __slots__ = ("receive", "message")

    def __init__(self, receive: Receive, message: Message):
        self.receive = receive
        self.message = message

    def __repr__(self) -> str:
        return f"Fetch({self.receive!r}, {self.message!r})"


class Reply:
    """Send a control message (ACK or FIN) for ``sender_id`` back to ``dest``."""

    __slots__ = ("kind", "dest", "sender_id")

    def __init__(self, kind: int, dest: int, sender_id: int):
        self.kind = kind
        self.dest = dest
        self.sender_id = sender_id

    def __eq__(self, other) -> bool:
        return (isinstance(other, Reply) and (self.kind, self.dest, self.sender_id)
                == (other.kind, other.dest, other.sender_id))

    def __repr__(self) -> str:
        return f"Reply({'ACK' if self.kind == ACK else 'FIN'}, dest={self.dest}, id={self.sender_id})"


class Transmit:
    """Put ``send`` on the wire (payload inline if EAGER, envelope if RNDV),
    then call :meth:`Engine.transmitted`."""

    __slots__ = ("send",)

    def __init__(self, send: Send):
        self.send = send

    def __repr__(self) -> str:
        return f"Transmit({self.send!r})"


class Complete:
    """``op`` (a Send or a Receive) is complete."""

    __slots__ = ("op",)

    def __init__(self, op):
        self.op = op

    def __repr__(self) -> str:
        return f"Complete({self.op!r})"


# ------------------------------------------------------------------ engine

class Engine:
    """Matching and protocol state of one process.

    ``eager_limit``: messages of at most this many bytes go eager.
    """

    def __init__(self, eager_limit: int = 65536):
        self.eager_limit = eager_limit
        self.posted: list[Receive] = []      # in posting order
        self.unexpected: list[Message] = []  # in arrival order
        self.awaiting: dict[int, Send] = {}  # sender id -> send waiting for ACK/FIN
        # the actions of the last match ``arrive`` (or ``post``) made, kept for a
        # caller that an exception (a signal handler's: CPython 3.10 runs one as a
        # call returns) stopped before it stored them; the caller clears it once
        # it has them
        self.arrived: list | None = None
        self._ids = itertools.count(1)

    # -- receive side ------------------------------------------------
    def post(self, r: Receive) -> list:
        """A receive is posted: match the earliest unexpected message, or queue it."""
        if r.state != R_NEW:
            raise ValueError(f"receive already started: {r!r}")
        unexpected = self.unexpected
        src, tag, ctx = r.source, r.tag, r.context
        for i, m in enumerate(unexpected):
            if (m.context == ctx and (src == ANY_SOURCE or src == m.source)
                    and (tag == ANY_TAG or tag == m.tag)):
                acts = self._match(r, m)
                del unexpected[i]   # (no call between: matched and taken, both or neither)
                self.arrived = acts   # (nor here: as arrive's, for the caller)
                return acts
        r.state = R_POSTED
        self.posted.append(r)
        return []

    def arrive(self, m: Message) -> list:
        """A message arrived: give it to the earliest matching posted receive,
        or queue it as unexpected (then it returns [])."""
        posted = self.posted
        for i, r in enumerate(posted):
            if (m.context == r.context and (r.source == ANY_SOURCE or r.source == m.source)
                    and (r.tag == ANY_TAG or r.tag == m.tag)):
                acts = self._match(r, m)
                del posted[i]   # (no call between: matched and taken, both or neither)
                self.arrived = acts   # (nor here: the caller's way to them, below)
                return acts
        self.unexpected.append(m)
        return []

    def _match(self, r: Receive, m: Message) -> list:
        """The actions of ``r`` matching ``m``, built before ``r`` changes (its
        steps last, no call among them or after): an exception raised in here (a
        signal handler's, at any call) leaves ``r`` as it was.  Callers take
        ``r`` or ``m`` out of their queue after it returns, with no call between."""
        if m.protocol == EAGER:
            state = R_DONE
            if m.sync:
                acts = [Deliver(r, m), Reply(ACK, m.source, m.sender_id), Complete(r)]
            else:
                acts = [Deliver(r, m), Complete(r)]
        else:
            state = R_FETCHING
            acts = [Fetch(r, m)]
        r.message = m
        if r.capacity is not None and m.nbytes > r.capacity:
            r.error = ERR_TRUNCATE
        r.state = state
        return acts

    def fetched(self, r: Receive) -> list:
        """The rendezvous copy of ``r`` finished (or failed locally): FIN the sender
        (a streamed message's sender waits for nothing: no FIN)."""
        if r.state != R_FETCHING:
            raise ValueError(f"receive is not fetching: {r!r}")
        m = r.message
        if m.protocol == STREAM:
            acts = [Complete(r)]
        else:
            acts = [Reply(FIN, m.source, m.sender_id), Complete(r)]
        r.state = R_DONE   # (last, no call after: an exception raised in here changed nothing)
        return acts

    def probe(self, source: int, tag: int, context: int) -> Message | None:
        """The message a receive posted now would match, without consuming it."""
        for m in self.unexpected:
            if (m.context == context and (source == ANY_SOURCE or source == m.source)
                    and (tag == ANY_TAG or tag == m.tag)):
                return m
        return None

    def take(self, m: Message) -> None:
        """Remove a probed message from the unexpected queue (matched probe)."""
        self.unexpected.remove(m)

    def mprobe(self, source: int, tag: int, context: int) -> Message | None:
        """Matched probe: the message a receive posted now would match, taken out
        of matching (no receive can match it any more), or None."""
        unexpected = self.unexpected
        for i, m in enumerate(unexpected):
            if (m.context == context and (source == ANY_SOURCE or source == m.source)
                    and (tag == ANY_TAG or tag == m.tag)):
                del unexpected[i]
                return m
        return None

    def post_matched(self, r: Receive, m: Message) -> list:
        """Receive ``m``, a message taken by :meth:`mprobe`, into ``r`` (a new
        receive): the actions of a match, as when ``r`` is posted and finds it."""
        if r.state != R_NEW:
            raise ValueError(f"receive already started: {r!r}")
        if m in self.unexpected:
            raise ValueError(f"{m!r} was not taken by mprobe: it is still in matching")
        return self._match(r, m)

    def cancel(self, r: Receive) -> bool:
        """Cancel a posted receive; False when it is already matched or done."""
        if r.state == R_POSTED:
            posted = self.posted
            i = posted.index(r)   # (the one call: an exception raised at it changed nothing;
            r.state = R_CANCELLED  # these two steps, no call between, are done both or neither)
            del posted[i]
            return True
        if r.state == R_NEW:
            r.state = R_CANCELLED
            return True
        return False

    # -- send side ---------------------------------------------------
    def send(self, s: Send, protocol: int | None = None) -> list:
        """Start a send: choose eager or rendezvous (unless ``protocol`` says:
        STREAM only for a standard send) and ask to transmit it."""
        if s.state != S_NEW:
            raise ValueError(f"send already started: {s!r}")
        if protocol == STREAM and s.sync:
            raise ValueError(f"a synchronous send cannot be streamed: {s!r}")
        if protocol is None:
            protocol = RNDV if s.nbytes > self.eager_limit else EAGER
        s.protocol = protocol
        s.id = next(self._ids)
        s.state = S_QUEUED
        return [Transmit(s)]

    def transmitted(self, s: Send) -> list:
        """``s`` is on the wire (streamed: its last chunk): an eager or streamed
        standard send is complete now."""
        if s.state != S_QUEUED:
            raise ValueError(f"send is not queued: {s!r}")
        if s.protocol == RNDV:
            s.state = S_WAIT_FIN
        elif s.sync:
            s.state = S_WAIT_ACK
        else:
            s.state = S_DONE
            return [Complete(s)]
        self.awaiting[s.id] = s
        return []

    def control(self, kind: int, sender_id: int) -> list:
        """An ACK or FIN for one of our sends came back."""
        s = self.awaiting.get(sender_id)
        if s is None:
            raise ValueError(f"unexpected {'ACK' if kind == ACK else 'FIN'} for send id {sender_id}")
        want = FIN if s.protocol == RNDV else ACK
        if kind != want:
            raise ValueError(f"{s!r} expected {'FIN' if want == FIN else 'ACK'}, got the other")
        acts = [Complete(s)]   # (first: an exception raised at this call changes nothing)
        del self.awaiting[sender_id]
        s.state = S_DONE
        return acts

    def withdraw(self, s: Send, source: int) -> bool:
        """Take back send ``s`` whose message still waits, unmatched, in this
        engine's unexpected queue (a send to oneself, arrived from ``source``):
        True if it was there; it then never matches and ``s`` is done."""
        for i, m in enumerate(self.unexpected):
            if m.source == source and m.sender_id == s.id and m.context == s.context:
                del self.unexpected[i]
                self.awaiting.pop(s.id, None)
                s.state = S_DONE
                return True
        return False

    # -- introspection -------------------------------------------------
    def pending_sources(self) -> set:
        """Sources that posted receives wait on (ANY_SOURCE included)."""
        return {r.source for r in self.posted}

    def __repr__(self) -> str:
        return (f"<Engine posted={len(self.posted)} unexpected={len(self.unexpected)} "
                f"awaiting={len(self.awaiting)}>")
