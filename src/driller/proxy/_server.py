"""The fd proxy process: one epoll loop serving every client of one user.

Run only through ``_boot._start_proxy`` (``_main`` reads its boot data from the
environment).  Imports only ``driller._linux``, ``driller.errors`` and ``._wire``
(the proxy starts fast and has nothing else that could break).

Transfer leases (``lease``, ``claim``, ``unhold``; the rules are in
:mod:`driller.sharedarray`) keep a segment's fd
here after its owner let go of it, while a pickle naming it may still be loaded.

Bounds (a client of our own uid may be buggy or hostile; the proxy must stay
responsive for the others):

* at the open-file limit (EMFILE/ENFILE on accept) it stops polling the listening
  socket for ``_ACCEPT_PAUSE`` seconds or until a client leaves, logs once, and
  refuses whoever waits in the backlog with a clear message (a reserve fd is
  closed to accept them): no spinning, connected clients keep being served;
* at most ``_MAX_UNAUTH`` connections may be unauthenticated (the oldest is
  dropped for a new one) and each for ``_AUTH_TIMEOUT`` seconds;
* one client owns at most half the fds the proxy can hold (``max_owned``: half its
  open file limit); a publish beyond is refused, saying why;
* one request (continuation packets included) is at most ``_MAX_REQUEST`` bytes
  and ``_MAX_REQUEST_FDS`` fds: a client over it is disconnected (everything it
  held freed); a packet of more than 8 fds (``_ANC``) is refused (the kernel
  closes the ones that do not fit);
* a client that does not read its replies is not read from while more than
  ``_MAX_OUTQ`` bytes of replies, or ``_MAX_OUTQ_FDS`` fds, wait for it
  (back-pressure, nothing dropped);
  release notices are never dropped (they are bounded by its subscriptions);
* at most ``_ACCEPT_BATCH`` connections are accepted per wake-up, and no work per
  loop iteration depends on the number of idle connections.
"""

from __future__ import annotations

import _thread
import array
import errno
import hmac
import os
import pickle
import select
import socket
import sys
import time
from collections import OrderedDict, deque

from .. import _linux
from ._wire import (_ANC, _AUTH_TIMEOUT, _BOOT_VAR, _CLOEXEC, _CTRUNC, _DONTWAIT, _EPOLL_IN,
                    _GONE_MEMORY, _LAST, _LEASE_IDLE_VAR, _LEASE_ORPHANS_VAR,
                    _LEASE_SECONDS_VAR, _LOG_VAR, _MAGIC, _MAX_PACKET,
                    _NOSIGNAL_DONTWAIT, _SCM_RIGHTS, _SOL_SOCKET, _TRUNC, ENV_VAR,
                    _Message, _close_all, _fds_of, _owner_of, _packets, _show, add_run, covers,
                    FORWARDED, FORWARD_SPAN, RANGES_KEPT_PROXY)

_MAX_UNAUTH = 256                # connections waiting to authenticate
_MAX_REQUEST = 1 << 20           # bytes of one request, continuation packets included
_MAX_REQUEST_FDS = 16            # fds attached to one request's packets
_MAX_OUTQ = 1 << 20              # queued reply bytes before a peer's requests wait
_MAX_OUTQ_FDS = 64               # queued replies' fds (our dups) before they wait too
_ACCEPT_PAUSE = 0.25             # seconds not accepting after EMFILE/ENFILE
_ACCEPT_BATCH = 64               # connections accepted per wake-up
_BACKLOG = 128                   # listen() backlog of _boot._start_proxy
_NOFILE_VAR = "_DRILLER_PROXY_NOFILE"  # tests only: the proxy's RLIMIT_NOFILE
_HUP = select.EPOLLHUP | select.EPOLLERR


_LEASE_SECONDS = 300.0           # an unclaimed lease nobody holds lives this long
_LEASE_ORPHANS = 4096            # at most this many unclaimed leases nobody holds
_LEASE_IDLE = 5.0                # with no client left, leases wait this long for a loader
_ENDED_MEMORY = 4096             # ended leases remembered for error messages


def _env_number(name: str, default: float) -> float:
    # (the client that started this proxy refused a bad value: _boot._check_settings;
    # one set by hand for a proxy started otherwise gives the default)
    try:
        v = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return v if v >= 0 else default


class _Seg:
    __slots__ = ("key", "fd", "owner", "meta", "subs", "size", "leases", "released")

    def __init__(self, key, fd, owner, meta, size):
        self.key, self.fd, self.owner, self.meta, self.size = key, fd, owner, meta, size
        self.subs: set[_Peer] = set()
        self.leases: set[int] = set()    # live leases: they keep fd after the owner let go
        self.released: str | None = None  # why the owner let go (kept only for leases)


_MAX_FORWARD_RANGES = 4096   # ranges of forwarded numbers one lease gives (op "number")


class _Lease:
    """A transfer lease: keeps its segment's fd here while anyone may still load a
    handle naming (segment, block generation).  ``holders``: peer -> count (the
    pickling process until its block dies, each claimant until it unmaps).
    ``issued``: how many handles the pickling process made (said as it lets go;
    0: not said); ``loaded``: the numbers of those that were loaded, as runs
    (``_wire.add_run``)."""

    __slots__ = ("id", "seg", "gen", "holders", "claimed", "issued", "loaded", "forwarded")

    def __init__(self, lid: int, seg: _Seg, gen: int):
        self.id, self.seg, self.gen = lid, seg, gen
        self.holders: dict[_Peer, int] = {}
        self.claimed = False
        self.issued = 0     # (0: not said: its maker left without letting go first)
        self.loaded: list[list[int]] = []
        # ranges of numbers given to processes forwarding a view: base -> how many
        # the process said it made (None: not said yet)
        self.forwarded: dict[int, int | None] = {}

    def said(self, what) -> None:
        """Take what a holder said of the lease's handles: how many were made (an
        int, from the pickling process), the numbers it loaded (runs: (lo, hi)
        pairs; a frozenset of numbers), both ((made, runs): the pickling process
        loaded some itself), or those and how many a forwarding process made in
        the ranges it was given ((made, runs, ((base, made), ...)))."""
        if type(what) is tuple and len(what) == 3 and type(what[0]) is int \
                and type(what[2]) is tuple:   # (three runs start with a tuple)
            for item in what[2]:
                if type(item) is tuple and len(item) == 2 and type(item[0]) is int \
                        and item[0] in self.forwarded \
                        and type(item[1]) is int and 0 <= item[1] < FORWARD_SPAN:
                    self.forwarded[item[0]] = max(self.forwarded[item[0]] or 0, item[1])
            what = what[:2]
        if type(what) is tuple and len(what) == 2 and type(what[0]) is int \
                and type(what[1]) is tuple:
            self.said(what[0])
            what = what[1]
        if type(what) is int:
            self.issued = max(self.issued, what)
        elif isinstance(what, frozenset):   # (the rest dropped at the first refusal:
            for n in what:                  # a request's cost is bounded by the cap)
                if type(n) is int and n > 0 and \
                        not add_run(self.loaded, n, n, RANGES_KEPT_PROXY):
                    break
        elif type(what) is tuple:
            for run in what:
                if type(run) is tuple and len(run) == 2 and type(run[0]) is int \
                        and type(run[1]) is int and 0 < run[0] <= run[1] and \
                        not add_run(self.loaded, run[0], run[1], RANGES_KEPT_PROXY):
                    break
        if self.loaded:
            self.claimed = True   # (loaded: by a claimant, or by its maker itself)

    def all_loaded(self) -> bool:
        """Claimed, and every handle its pickling process and its forwarders said
        they made was loaded (a handle made after the first load is loadable until
        loaded, too; a forwarder that never said its count, killed, is waited for)."""
        return self.claimed and covers(self.loaded, self.issued) and all(
            made is not None and covers(self.loaded, base + made, base + 1)
            for base, made in self.forwarded.items())


class _Peer:
    __slots__ = ("sock", "fd", "pid", "uid", "authed", "since", "owned", "subscribed",
                 "outq", "notices", "message", "writing", "dead",
                 "out_bytes", "reply_bytes", "paused", "events",
                 "held", "hung_up", "out_fds")

    def __init__(self, sock, pid, uid):
        self.sock, self.fd, self.pid, self.uid = sock, sock.fileno(), pid, uid
        self.authed = False
        self.since = time.monotonic()
        self.owned: set[str] = set()
        self.subscribed: set[str] = set()
        self.outq: deque = deque()         # (packet, fd or None, is_reply); fds: our dups
        self.notices: set[str] = set()
        self.message = _Message()          # the request being read
        self.writing = False
        self.dead = False
        self.held: set[int] = set()        # leases this peer holds
        self.hung_up = False               # closed its end: its queued messages to read
        self.out_bytes = 0                 # bytes in outq
        self.reply_bytes = 0               # bytes of replies (not notices) in outq
        self.out_fds = 0                   # fds (our dups) of replies in outq
        self.paused = False                # not reading requests: too many replies queued
        self.events = select.EPOLLIN       # what epoll watches for us


# The last close() of a segment's memfd frees its pages: 10-25 ms for 64 MiB under
# load.  Done in the loop, every request waiting behind it waited that long (the
# next claim of a worker returning arrays, README "Measured").  A short-lived
# thread closes them instead; the loop only queues the fd.  (The proxy never forks.)
_to_close: deque = deque()
_closing = _thread.allocate_lock()   # held by the closing thread while it runs


def _close_later(fd: int) -> None:
    _to_close.append(fd)
    if not _closing.acquire(False):
        return  # the running closer sees it before it leaves (see _closer)
    try:
        _thread.start_new_thread(_closer, ())
    except BaseException:  # no thread to be had: close it here
        _closing.release()
        _close_all([_to_close.pop()])


def _closer() -> None:
    while True:
        while _to_close:
            _close_all([_to_close.popleft()])
        _closing.release()
        # an fd queued after the loop above but before the release found the lock
        # held and left it to us; one queued after the release started a closer
        if not _to_close or not _closing.acquire(False):
            return


class _Server:
    def __init__(self, lsock: socket.socket, secret: bytes, name: str, idle: float, log):
        self.lsock, self.secret, self.address, self.idle, self.log = (
            lsock, secret, "\0" + name, idle, log)
        self.ep = select.epoll()
        self.lfd = lsock.fileno()
        self.peers: dict[int, _Peer] = {}
        self.unauth: dict[_Peer, float] = {}
        self.segs: dict[str, _Seg] = {}
        self.gone: OrderedDict[str, str] = OrderedDict()
        self.started = time.monotonic()
        self.ever = False
        self.to_drop: list[_Peer] = []
        self.buf = bytearray(_MAX_PACKET)
        self.mv = memoryview(self.buf)
        self.uid = os.getuid()
        self.leases: dict[int, _Lease] = {}
        self.orphans: OrderedDict[int, float] = OrderedDict()  # unclaimed, no holder: since
        self.ended: OrderedDict[int, str] = OrderedDict()
        self.lease_serial = 0
        self.lease_seconds = _env_number(_LEASE_SECONDS_VAR, _LEASE_SECONDS)
        # (inf: no cap; int(inf) raised and the proxy died at its start)
        self.max_orphans = int(min(_env_number(_LEASE_ORPHANS_VAR, _LEASE_ORPHANS), 1 << 62))
        self.lease_idle = _env_number(_LEASE_IDLE_VAR, _LEASE_IDLE)
        self.alone_since: float | None = None   # no client left, leases still live
        self.accepting = True              # the listening socket is in the epoll set
        self.resume_at = 0.0               # when not accepting: when to try again
        self.at_limit = False              # logged the fd limit, not yet accepted again
        self.refused = 0                   # connections refused at the fd limit
        self.evicted = 0                   # unauthenticated connections dropped for new ones
        # one process may own half the fds the proxy can hold: a runaway publisher
        # (a leak loop) is refused before nobody else can connect or publish
        self.max_owned = max(16, _linux.nofile_limit() // 2)
        self.reserve = self._open_reserve()
        lsock.setblocking(False)
        self.ep.register(self.lfd, select.EPOLLIN)

    def say(self, *a) -> None:
        # The proxy's own tiny log, to stderr when DRILLER_PROXY_LOG names a file (the
        # client opens it as the proxy's stderr), not the logging module: this process
        # imports only _linux, errors and _wire (tests/test_fdproxy.py checks it), and
        # logging would bring threading, its locks and fork hooks, and a few ms of
        # start-up into a detached process no application configures (see
        # docs/configuration.md, "Logging").
        if self.log:
            print(f"[driller-proxy {os.getpid()}]", *a, file=self.log, flush=True)

    # -- main loop
    def run(self) -> None:
        while True:
            now = time.monotonic()
            timeout = None
            if not self.accepting and now >= self.resume_at:
                self._resume_accept()
            if not self.peers and self.leases:
                timeout = self._lone_leases(now)
            if not self.peers and not self.leases:
                if self.ever or now - self.started >= self.idle:
                    if self.accepting:
                        if not self._accept():  # nobody waiting in the backlog: done
                            return
                        continue
                else:
                    timeout = self.started + self.idle - now
            if not self.accepting:
                t = self.resume_at - now
                timeout = t if timeout is None else min(timeout, t)
            if self.unauth:  # insertion order is age order: the first is the oldest
                t = max(0.0, next(iter(self.unauth.values())) + _AUTH_TIMEOUT - now)
                timeout = t if timeout is None else min(timeout, t)
            if self.orphans:
                t = max(0.0, next(iter(self.orphans.values())) + self.lease_seconds - now)
                timeout = t if timeout is None else min(timeout, t)
            for fd, ev in self.ep.poll(-1 if timeout is None else timeout):
                if fd == self.lfd:
                    self._accept()
                    continue
                peer = self.peers.get(fd)
                if peer is None or peer.dead:
                    continue
                if ev & select.EPOLLOUT:
                    self._flush(peer)
                if ev & _EPOLL_IN and not peer.dead and (not peer.paused or ev & _HUP):
                    self._readable(peer)
            if self.unauth:
                now = time.monotonic()
                while self.unauth:
                    p, since = next(iter(self.unauth.items()))
                    if now - since <= _AUTH_TIMEOUT:
                        break
                    self._drop(p)
            self._drop_pending()
            if self.orphans:
                self._expire_orphans(time.monotonic())
            if self.peers:
                self.alone_since = None

    def _accept(self) -> bool:
        """Accept up to _ACCEPT_BATCH connections; False if nobody was waiting."""
        got = False
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return got
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self._at_limit(e)  # EMFILE, ENFILE, ENOBUFS, ENOMEM: stop for a while
                return True
            got = True
            if self.at_limit:
                self.at_limit = False
                self.say(f"accepting connections again ({len(self.peers)} open, "
                         f"{self.refused} refused meanwhile)")
            sock.setblocking(False)
            try:
                pid, uid, _gid = _linux.peer_cred(sock)
            except OSError:  # pragma: no cover - gone already
                sock.close()
                continue
            if uid != self.uid:
                self.say(f"refused pid {pid}: uid {uid}")
                try:
                    sock.send(_packets(("refused", f"uid {uid} is not the proxy's uid "
                                        f"{self.uid}"))[0], _DONTWAIT)
                except OSError:
                    pass
                sock.close()
                continue
            if len(self.unauth) >= _MAX_UNAUTH:  # make room: drop the oldest
                if not self.evicted:
                    self.say(f"{_MAX_UNAUTH} connections wait to authenticate: dropping the "
                             "oldest for each new one")
                self.evicted += 1
                self._drop(next(iter(self.unauth)))
            peer = _Peer(sock, pid, uid)
            self.peers[peer.fd] = peer
            self.unauth[peer] = peer.since
            self.ep.register(peer.fd, select.EPOLLIN)
        return got

    # -- at the open-file limit
    @staticmethod
    def _open_reserve() -> int | None:
        try:
            return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _at_limit(self, e: OSError) -> None:
        if not self.at_limit:
            self.at_limit = True
            self.say(f"accept failed ({e.strerror}) with {len(self.peers)} connections open: "
                     f"refusing new ones until a client leaves")
        self._refuse_backlog(e)
        if self.accepting:
            self.ep.unregister(self.lfd)
            self.accepting = False
        self.resume_at = time.monotonic() + _ACCEPT_PAUSE

    def _refuse_backlog(self, e: OSError) -> None:
        """Tell who waits in the backlog why they are not served (closing a reserve fd
        makes room to accept them), rather than leaving them hanging."""
        if self.reserve is None:
            self.reserve = self._open_reserve()
            return
        os.close(self.reserve)
        self.reserve = None
        why = _packets(("refused", f"the fd proxy is at its open file limit ({e.strerror}, "
                        f"{len(self.peers)} connections); retry when fewer processes use "
                        "it, or raise its limit (ulimit -n)"))[0]
        try:
            for _ in range(_BACKLOG):
                try:
                    sock, _ = self.lsock.accept()
                except OSError:  # empty backlog, or still no room
                    break
                try:
                    sock.send(why, _NOSIGNAL_DONTWAIT)
                    for _ in range(4):  # read what it sent: closing a socket with unread
                        sock.recv(_MAX_PACKET, _DONTWAIT)  # data resets the peer's, and
                except OSError:                            # the reason would be lost
                    pass
                sock.close()
                self.refused += 1
        finally:
            self.reserve = self._open_reserve()

    def _resume_accept(self) -> None:
        if not self.accepting:
            self.ep.register(self.lfd, select.EPOLLIN)
            self.accepting = True

    def _readable(self, peer: _Peer) -> None:
        # one message per wake-up: epoll is level-triggered
        try:
            n, anc, flags, _ = peer.sock.recvmsg_into([self.mv], _ANC, _CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno == errno.ECONNRESET:
                # a peer that closed with our replies unread resets us first, and what
                # it sent before closing is still queued behind
                peer.hung_up = True
            self._mark(peer)
            return
        self._take(peer, n, anc, flags)

    def _last_words(self, peer: _Peer) -> None:
        """Take what a peer that hung up had sent before (a client's posts at its
        exit: _Conn.post); our replies to it fail, its EOF comes after."""
        while True:
            try:
                n, anc, flags, _ = peer.sock.recvmsg_into([self.mv], _ANC,
                                                          _CLOEXEC | _DONTWAIT)
            except OSError:
                return
            if not self._take(peer, n, anc, flags):
                return

    def _take(self, peer: _Peer, n: int, anc, flags: int) -> bool:
        """Handle one packet read from peer; False when the peer is to be dropped (its
        EOF, an oversized or refused message)."""
        fds = _fds_of(anc) if anc else []
        if n == 0:
            _close_all(fds)
            self._mark(peer)
            return False
        if flags & _TRUNC:
            _close_all(fds)
            self._mark(peer)
            return False
        data = bytes(self.mv[:n])
        if not peer.authed:
            _close_all(fds)
            self._auth(peer, data)
            return not peer.dead
        if flags & _CTRUNC:
            _close_all(fds)
            self._send(peer, ("err", "the proxy could not receive the fds sent (more than 8 "
                              "in one packet, or it is out of file descriptors)"))
            return True
        message = peer.message
        last = message.add(data, fds)
        if message.size > _MAX_REQUEST or len(message.fds) > _MAX_REQUEST_FDS:
            self.say(f"dropped pid {peer.pid}: a request of more than {_MAX_REQUEST} "
                     f"bytes or {_MAX_REQUEST_FDS} fds")
            self._mark(peer)  # _drop frees its parts and fds
            return False
        if not last:
            return True
        data, fds = message.take()
        try:
            msg = pickle.loads(data)
            self._handle(peer, msg, fds)
        except Exception as e:  # a bad request must not kill the proxy
            _close_all(fds)
            self.say(f"bad request from pid {peer.pid}: {e!r}")
            self._send(peer, ("err", f"bad request: {e!r}"))
        return True

    def _auth(self, peer: _Peer, data: bytes) -> None:
        want = _LAST + _MAGIC + self.secret
        if hmac.compare_digest(data, want):
            peer.authed = True
            self.unauth.pop(peer, None)
            self.ever = True
            self._send(peer, ("hello", os.getpid()))
        else:
            self.say(f"refused pid {peer.pid}: wrong secret")
            try:
                peer.sock.send(_packets(("refused", "wrong secret"))[0], _DONTWAIT)
            except OSError:
                pass
            self._drop(peer)

    def _handle(self, peer: _Peer, msg, fds: list[int]) -> None:
        op = msg[0]
        if op == "fetch":
            _close_all(fds)
            key = msg[1]
            seg = self.segs.get(key)
            if seg is None or seg.released is not None:
                self._send(peer, ("gone", self._gone_message(key)))
                return
            seg.subs.add(peer)
            peer.subscribed.add(key)
            self._send(peer, ("fd", seg.meta, seg.owner.pid), seg.fd)
        elif op == "publish":
            key, meta = msg[1], msg[2]
            if len(fds) != 1:
                _close_all(fds)
                self._send(peer, ("err", f"publish of {key!r} needs exactly one fd"))
            elif key in self.segs:
                _close_all(fds)
                self._send(peer, ("err", f"key {key!r} is already published"))
            elif len(peer.owned) >= self.max_owned:
                _close_all(fds)
                self._send(peer, ("err", (
                    f"this process (pid {peer.pid}) already shares {len(peer.owned)} segments "
                    f"through it, the most one process may (half the proxy's open file limit, "
                    f"{_linux.nofile_limit()}): free shared arrays it no longer needs (each "
                    "array of 256 KiB or more is a segment of its own), or raise the hard open "
                    "file limit (`ulimit -Hn`; the proxy takes it whole, whatever `ulimit -n` "
                    "says) of the shell that starts the program")))
            else:
                try:
                    size = _linux.fd_size(fds[0])
                except OSError:
                    size = None
                self.segs[key] = _Seg(key, fds[0], peer, meta, size)
                peer.owned.add(key)
                self.gone.pop(key, None)
                self._send(peer, ("ok",))
        elif op == "release":
            _close_all(fds)
            seg = self.segs.get(msg[1])
            ok = seg is not None and seg.owner is peer and seg.released is None
            if ok:
                self._release(msg[1], f"released by its owner (pid {peer.pid})")
            self._send(peer, ("ok", ok))
        elif op in ("lease", "claim", "unhold", "issued", "number"):
            _close_all(fds)
            self._lease_op(peer, op, msg)
        elif op == "ping":
            _close_all(fds)
            self._send(peer, ("pong",))
        elif op == "segments":
            _close_all(fds)
            self._send(peer, ("segments", self._segments()))
        elif op == "info":
            _close_all(fds)
            clients = [{"pid": p.pid, "owned": len(p.owned), "subscribed": len(p.subscribed)}
                       for p in self.peers.values() if p.authed and not p.dead
                       and p is not peer]  # the asker is a one-shot connection
            self._send(peer, ("info", {"address": self.address, "pid": os.getpid(),
                                       "uid": self.uid, "clients": clients,
                                       "segments": self._segments(),
                                       "leases": self._lease_info(), **self._stats()}))
        else:
            _close_all(fds)
            self._send(peer, ("err", f"unknown request {op!r}"))

    def _stats(self) -> dict:
        """Load and bounds, for `info` (O(connections): on request only)."""
        return {"connections": len(self.peers), "unauthenticated": len(self.unauth),
                "buffered": sum(p.message.size + p.out_bytes for p in self.peers.values()),
                "accepting": self.accepting, "refused_at_limit": self.refused,
                "evicted_unauthenticated": self.evicted, "nofile": _linux.nofile_limit()}

    def _segments(self) -> list[dict]:
        out = []
        for s in self.segs.values():
            nbytes = s.meta.get("nbytes", s.size) if isinstance(s.meta, dict) else s.size
            out.append({"key": s.key, "owner": s.owner.pid, "nbytes": nbytes, "size": s.size,
                        "meta": s.meta, "subscribers": sorted(p.pid for p in s.subs),
                        "leases": len(s.leases), "released": s.released})
        return out

    def _released_why(self, key: str) -> str | None:
        """How key was released (its owner let go, or exited), None if not known."""
        why = self.gone.get(key)
        if why is None and key in self.segs:
            why = self.segs[key].released
        return why

    def _gone_message(self, key: str) -> str:
        why = self._released_why(key)
        if why is not None:
            return f"segment {key!r} was {why}; ask its owner for a new handle"
        owner = _owner_of(key)
        who = f" (owner pid {owner})" if owner is not None else ""
        return (f"segment {key!r}{who} is unknown to the fd proxy at {_show(self.address)}: "
                "it was released (or never published there)")

    def _release(self, key: str, why: str) -> None:
        """The owner let go of key: notify subscribers; keep the fd while leases live."""
        seg = self.segs[key]
        seg.owner.owned.discard(key)
        seg.released = why
        subs, seg.subs = seg.subs, set()
        for sub in subs:
            sub.subscribed.discard(key)
            if not sub.dead:
                sub.notices.add(key)
                self._flush(sub)
        if not seg.leases:
            self._close_seg(seg)

    def _close_seg(self, seg: _Seg) -> None:
        del self.segs[seg.key]
        _close_later(seg.fd)
        self.gone[seg.key] = seg.released
        while len(self.gone) > _GONE_MEMORY:
            self.gone.popitem(last=False)

    # -- transfer leases (see driller.sharedarray for the rules)
    def _lease_op(self, peer: _Peer, op: str, msg) -> None:
        if op in ("unhold", "issued"):   # items: a lease id, or (id, what the holder
            for item in msg[1]:           # says of its handles: _Lease.said); "issued":
                lid = item                # said by a pickling process as it exits
                if type(item) is tuple and len(item) == 2:   # holding them: no letting go
                    lid, what = item
                    lease = self.leases.get(lid)
                    if lease is not None and peer in lease.holders:
                        lease.said(what)
                if op == "unhold":
                    self._unhold(peer, lid)
            self._send(peer, ("ok",))
            return
        if op == "number":   # ("number", lease id): a holder pickles views of what it
            lease = self.leases.get(msg[1])   # loaded: a range of handle numbers of its
            if lease is None or peer not in lease.holders:   # own, each to be loaded
                self._send(peer, ("gone", f"transfer lease {msg[1]!r} is not held by pid "
                                  f"{peer.pid}"))
                return
            if len(lease.forwarded) >= _MAX_FORWARD_RANGES:   # (it then reuses its
                self._send(peer, ("err", f"transfer lease {msg[1]} has given "  # handle's)
                                  f"{_MAX_FORWARD_RANGES} ranges of numbers already"))
                return
            base = FORWARDED + (len(lease.forwarded) + 1) * FORWARD_SPAN
            lease.forwarded[base] = None   # (until the holder says how many it made)
            self._send(peer, ("number", base))
            return
        key = msg[1]
        if op == "lease":  # ("lease", key, gen): the pickling process holds it
            seg = self.segs.get(key)
            if seg is None or seg.released is not None:
                self._send(peer, ("gone", self._gone_message(key)))
                return
            self._send(peer, ("lease", self._new_lease(peer, seg, msg[2])))
            return
        # ("claim", key, lease id, want_fd, gen): a process loads a handle naming the lease
        lease = self.leases.get(msg[2])
        if lease is not None and (lease.seg.key != key or lease.gen != msg[4]):
            self._send(peer, ("gone", f"segment {key!r}: transfer lease {msg[2]} is not on "
                              f"block generation {msg[4]} of this segment: the handle is "
                              "stale or altered; ask the owner for a new handle"))
            return
        if lease is None:
            self._send(peer, ("gone", self._lease_gone_message(key, msg[2])))
            return
        lease.claimed = True
        if len(msg) > 5 and type(msg[5]) is int and msg[5] > 0:   # (the handle's number)
            add_run(lease.loaded, msg[5], msg[5], RANGES_KEPT_PROXY)
        self.orphans.pop(lease.id, None)
        self._hold(peer, lease)
        seg = lease.seg
        if not msg[3]:
            self._send(peer, ("ok",))
            return
        if seg.released is None:  # notices go to those who can still get one
            seg.subs.add(peer)
            peer.subscribed.add(key)
        self._send(peer, ("fd", seg.meta, seg.owner.pid, seg.released is not None), seg.fd)

    def _new_lease(self, peer: _Peer, seg: _Seg, gen: int) -> int:
        self.lease_serial += 1
        lease = _Lease(self.lease_serial, seg, gen)
        self.leases[lease.id] = lease
        seg.leases.add(lease.id)
        self._hold(peer, lease)
        return lease.id

    def _hold(self, peer: _Peer, lease: _Lease) -> None:
        lease.holders[peer] = lease.holders.get(peer, 0) + 1
        peer.held.add(lease.id)

    def _unhold(self, peer: _Peer, lid: int, everything: bool = False) -> None:
        lease = self.leases.get(lid)
        if lease is None or peer not in lease.holders:
            return  # ended already, or not ours (e.g. from a fork of a holder)
        n = 0 if everything else lease.holders[peer] - 1
        if n > 0:
            lease.holders[peer] = n
            return
        del lease.holders[peer]
        peer.held.discard(lid)
        if lease.holders:
            return
        if lease.all_loaded():
            self._end_lease(lease, "loaded, then let go by every process that held it" + (
                "" if lease.issued else "; the process that pickled it left without saying "
                "how many pickles it made (killed, or gone by os._exit), so the first "
                "load was the last one waited for"))
            return
        self.orphans[lid] = time.monotonic()   # (a handle not loaded yet: it waits)
        while len(self.orphans) > self.max_orphans:
            old = next(iter(self.orphans))
            self.say(f"more than {self.max_orphans} handles were never loaded: lease {old} "
                     "expires early")
            self._end_lease(self.leases[old], f"never loaded, and more than {self.max_orphans} "
                            f"other handles were waiting ({_LEASE_ORPHANS_VAR})")

    def _lone_leases(self, now: float) -> float | None:
        """No client left: leases wait lease_idle seconds for a loader to connect."""
        if self.alone_since is None:
            self.alone_since = now
        wait = self.alone_since + self.lease_idle - now
        if wait > 0:
            return wait
        if self.accepting and self._accept() and self.peers:
            return 0   # (a loader came just in time, waiting in the backlog: serve it)
        self.say(f"no client for {self.lease_idle:g} s: ending {len(self.leases)} leases")
        for lease in list(self.leases.values()):
            self._end_lease(lease, f"never loaded: no process connected to the proxy within "
                            f"{self.lease_idle:g} s of the last one leaving "
                            f"({_LEASE_IDLE_VAR})")
        self.alone_since = None
        return None

    def _expire_orphans(self, now: float) -> None:
        while self.orphans:
            lid, since = next(iter(self.orphans.items()))
            if now - since < self.lease_seconds:
                return
            self._end_lease(self.leases[lid], f"a handle of it never loaded within "
                            f"{self.lease_seconds:g} s of its last holder letting go "
                            f"({_LEASE_SECONDS_VAR})")

    def _end_lease(self, lease: _Lease, why: str) -> None:
        del self.leases[lease.id]
        self.orphans.pop(lease.id, None)
        for p in lease.holders:
            p.held.discard(lease.id)
        lease.holders.clear()
        self.ended[lease.id] = why
        while len(self.ended) > _ENDED_MEMORY:
            self.ended.popitem(last=False)
        seg = lease.seg
        seg.leases.discard(lease.id)
        if not seg.leases and seg.released is not None and self.segs.get(seg.key) is seg:
            self._close_seg(seg)

    def _lease_gone_message(self, key: str, lid) -> str:
        why = self.ended.get(lid)
        if why is None:
            return self._gone_message(key)
        owner = _owner_of(key)
        who = f" (owner pid {owner})" if owner is not None else ""
        released = self._released_why(key)
        what = "its owner freed it" if released is None or released.startswith(
            "released by its owner") else f"it was {released}"
        return (f"segment {key!r}{who}: the array this handle names is gone — {what} and "
                f"its transfer lease {lid} ended ({why}); ask the owner for a new "
                "handle, and keep the array (or a view) alive until the handle is loaded")

    def _lease_info(self) -> dict:
        by_owner: dict[int, int] = {}   # whose arrays the waiting leases keep
        for lid in self.orphans:
            pid = self.leases[lid].seg.owner.pid
            by_owner[pid] = by_owner.get(pid, 0) + 1
        return {"live": len(self.leases), "orphaned": len(self.orphans),
                "orphaned_by_owner": by_owner, "orphaned_ids": list(self.orphans),
                "segments_kept": sum(1 for s in self.segs.values() if s.released is not None),
                "seconds": self.lease_seconds, "max_orphans": self.max_orphans}

    # -- sending, never blocking
    def _send(self, peer: _Peer, obj, fd: int | None = None) -> None:
        if peer.dead:
            return
        notices = bool(peer.notices)
        if notices:  # notices of earlier releases go out before this reply
            self._queue_notices(peer)
        pkts = _packets(obj)
        i = 0
        if not peer.outq:
            while i < len(pkts):
                if not self._sendpkt(peer, pkts[i], fd if i == 0 else None):
                    break
                i += 1
            if peer.dead:
                return
        for j in range(i, len(pkts)):
            qfd = None
            if j == 0 and fd is not None:
                qfd = os.dup(fd)  # the segment's fd may be closed before this goes out
                peer.out_fds += 1
            peer.outq.append((pkts[j], qfd, True))
            peer.out_bytes += len(pkts[j])
            peer.reply_bytes += len(pkts[j])
        if peer.outq:
            if (peer.reply_bytes > _MAX_OUTQ or peer.out_fds > _MAX_OUTQ_FDS) \
                    and not peer.paused:
                self.say(f"pid {peer.pid} does not read its replies: not reading its requests "
                         f"until {peer.reply_bytes} queued bytes ({peer.out_fds} fds) go out")
                peer.paused = True
            if notices:
                self._flush(peer)
            else:
                self._want_write(peer, True)

    def _sendpkt(self, peer: _Peer, pkt: bytes, fd: int | None) -> bool:
        try:
            if fd is None:
                peer.sock.sendmsg([pkt], [], _NOSIGNAL_DONTWAIT)
            else:
                peer.sock.sendmsg([pkt], [(_SOL_SOCKET, _SCM_RIGHTS,
                                           array.array("i", [fd]))],
                                  _NOSIGNAL_DONTWAIT)
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:   # (it hung up: what it sent before is still to be read)
            peer.hung_up = True
            self._mark(peer)
            return False

    def _flush(self, peer: _Peer) -> None:
        while not peer.dead:
            while peer.outq:
                pkt, fd, is_reply = peer.outq[0]
                if not self._sendpkt(peer, pkt, fd):
                    if not peer.dead:
                        if not peer.writing:
                            self.say(f"pid {peer.pid} is not reading: holding "
                                     f"{len(peer.outq)} packets, {len(peer.notices)} notices")
                        if peer.paused and peer.reply_bytes <= _MAX_OUTQ // 2 \
                                and peer.out_fds <= _MAX_OUTQ_FDS // 2:
                            peer.paused = False
                        self._want_write(peer, True)
                    return
                peer.outq.popleft()
                peer.out_bytes -= len(pkt)
                if is_reply:
                    peer.reply_bytes -= len(pkt)
                if fd is not None:
                    peer.out_fds -= 1
                    _close_all([fd])
            if not peer.notices:
                break
            self._queue_notices(peer)
        if not peer.dead:
            peer.paused = False
            self._want_write(peer, False)

    def _queue_notices(self, peer: _Peer) -> None:
        keys, peer.notices = sorted(peer.notices), set()
        for pkt in _packets(("notice", keys)):
            peer.outq.append((pkt, None, False))
            peer.out_bytes += len(pkt)

    def _want_write(self, peer: _Peer, on: bool) -> None:
        peer.writing = on
        if peer.dead:
            return
        events = (0 if peer.paused else select.EPOLLIN) | (select.EPOLLOUT if on else 0)
        if events != peer.events:
            self.ep.modify(peer.fd, events)
            peer.events = events

    # -- dropping peers
    def _mark(self, peer: _Peer) -> None:
        if not peer.dead:
            peer.dead = True
            self.to_drop.append(peer)

    def _drop_pending(self) -> None:
        while self.to_drop:
            peer = self.to_drop.pop()
            if peer.hung_up and peer.authed and self.peers.get(peer.fd) is peer:
                peer.hung_up = False
                self._last_words(peer)
            self._drop(peer)

    def _drop(self, peer: _Peer) -> None:
        peer.dead = True
        self.unauth.pop(peer, None)
        if self.peers.get(peer.fd) is not peer:
            return
        del self.peers[peer.fd]
        try:
            self.ep.unregister(peer.fd)
        except (KeyError, ValueError, OSError):  # pragma: no cover
            pass
        peer.sock.close()
        _close_all([fd for _, fd, _ in peer.outq if fd is not None])
        peer.message.discard()
        peer.outq.clear()
        peer.notices = set()
        peer.out_bytes = peer.reply_bytes = peer.out_fds = 0
        if not self.accepting:
            self.resume_at = 0.0  # an fd is free again: try accepting at once
        for lid in list(peer.held):
            self._unhold(peer, lid, everything=True)
        for key in list(peer.owned):
            self._release(key, f"released: its owner (pid {peer.pid}) exited or disconnected")
        for key in peer.subscribed:
            seg = self.segs.get(key)
            if seg is not None:
                seg.subs.discard(peer)
        peer.subscribed.clear()
        if peer.authed:
            self.say(f"pid {peer.pid} disconnected; {len(self.peers)} left")

    def close(self) -> None:
        for p in list(self.peers.values()):
            self._drop(p)
        self.ep.close()
        self.lsock.close()
        if self.reserve is not None:
            _close_all([self.reserve])
            self.reserve = None


def _main() -> None:
    boot = os.environ.pop(_BOOT_VAR, None)
    if not boot:
        sys.exit("driller.proxy._server: not started by driller (missing boot data)")
    fd, hexsecret, name, idle, _pkgdir = boot.split("|")
    os.environ.pop(ENV_VAR, None)
    try:
        os.setsid()
    except OSError:
        pass
    lsock = socket.socket(fileno=int(fd))
    os.set_inheritable(lsock.fileno(), False)
    log = sys.stderr if os.environ.get(_LOG_VAR) else None
    nofile = os.environ.pop(_NOFILE_VAR, None)
    if nofile:  # tests only: a low limit to provoke EMFILE
        _linux.set_nofile_limit(int(nofile))
    else:
        _linux.raise_nofile_limit()
    server = _Server(lsock, bytes.fromhex(hexsecret), name, float(idle), log)
    server.say("serving", _show(server.address))
    try:
        server.run()
    finally:
        server.say("exiting")
        server.close()


if __name__ == "__main__":
    _main()
