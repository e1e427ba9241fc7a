"""The fd proxy process: one epoll loop serving every client of one user.

Run only through ``_boot._start_proxy`` (``_main`` reads its boot data from the
environment).  Imports only ``driller._linux``, ``driller.errors`` and ``._wire``
(the proxy starts fast and has nothing else that could break).

Transfer leases (``lease``, ``claim``, ``unhold``, and ``publish`` with a block
generation; the rules are in :mod:`driller.sharedarray`) keep a segment's fd
here after its owner let go of it, while a pickle naming it may still be loaded.
"""

from __future__ import annotations

import array
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
                    _GONE_MEMORY, _LAST, _LOG_VAR, _MAGIC, _MAX_PACKET, _MORE,
                    _NOSIGNAL_DONTWAIT, _SCM_RIGHTS, _SOL_SOCKET, _TRUNC, ENV_VAR,
                    _close_all, _fds_of, _owner_of, _packets, _show)


_LEASE_SECONDS_VAR = "DRILLER_LEASE_SECONDS"
_LEASE_ORPHANS_VAR = "DRILLER_LEASE_MAX_ORPHANS"
_LEASE_SECONDS = 300.0           # an unclaimed lease nobody holds lives this long
_LEASE_ORPHANS = 4096            # at most this many unclaimed leases nobody holds
_LEASE_IDLE_VAR = "DRILLER_LEASE_IDLE_SECONDS"
_LEASE_IDLE = 5.0                # with no client left, leases wait this long for a loader
_ENDED_MEMORY = 4096             # ended leases remembered for error messages


def _env_number(name: str, default: float) -> float:
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


class _Lease:
    """A transfer lease: keeps its segment's fd here while anyone may still load a
    handle naming (segment, block generation).  ``holders``: peer -> count (the
    pickling process until its block dies, each claimant until it unmaps)."""

    __slots__ = ("id", "seg", "gen", "holders", "claimed")

    def __init__(self, lid: int, seg: _Seg, gen: int):
        self.id, self.seg, self.gen = lid, seg, gen
        self.holders: dict[_Peer, int] = {}
        self.claimed = False


class _Peer:
    __slots__ = ("sock", "fd", "pid", "uid", "authed", "since", "owned", "subscribed",
                 "outq", "notices", "parts", "part_fds", "writing", "dead", "held")

    def __init__(self, sock, pid, uid):
        self.sock, self.fd, self.pid, self.uid = sock, sock.fileno(), pid, uid
        self.authed = False
        self.since = time.monotonic()
        self.owned: set[str] = set()
        self.subscribed: set[str] = set()
        self.outq: deque = deque()         # (packet, fd or None); fds here are our dups
        self.notices: set[str] = set()
        self.parts: list[bytes] = []
        self.part_fds: list[int] = []
        self.writing = False
        self.dead = False
        self.held: set[int] = set()        # leases this peer holds


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
        self.max_orphans = int(_env_number(_LEASE_ORPHANS_VAR, _LEASE_ORPHANS))
        self.lease_idle = _env_number(_LEASE_IDLE_VAR, _LEASE_IDLE)
        self.alone_since: float | None = None   # no client left, leases still live
        lsock.setblocking(False)
        self.ep.register(self.lfd, select.EPOLLIN)

    def say(self, *a) -> None:
        if self.log:
            print(f"[driller-proxy {os.getpid()}]", *a, file=self.log, flush=True)

    # -- main loop
    def run(self) -> None:
        while True:
            now = time.monotonic()
            timeout = None
            if not self.peers and self.leases:
                timeout = self._lone_leases(now)
            if not self.peers and not self.leases:
                if self.ever or now - self.started >= self.idle:
                    if not self._accept():      # nobody waiting in the backlog: done
                        return
                    continue
                timeout = self.started + self.idle - now
            if self.unauth:
                t = max(0.0, min(self.unauth.values()) + _AUTH_TIMEOUT - now)
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
                if ev & _EPOLL_IN and not peer.dead:
                    self._readable(peer)
            if self.unauth:
                now = time.monotonic()
                for p, since in list(self.unauth.items()):
                    if now - since > _AUTH_TIMEOUT:
                        self._drop(p)
            self._drop_pending()
            if self.orphans:
                self._expire_orphans(time.monotonic())
            if self.peers:
                self.alone_since = None

    def _accept(self) -> bool:
        got = False
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return got
            except OSError as e:  # pragma: no cover - e.g. EMFILE
                self.say("accept failed:", e)
                return got
            got = True
            sock.setblocking(False)
            pid, uid, _gid = _linux.peer_cred(sock)
            if uid != self.uid:
                self.say(f"refused pid {pid}: uid {uid}")
                try:
                    sock.send(_packets(("refused", f"uid {uid} is not the proxy's uid "
                                        f"{self.uid}"))[0], _DONTWAIT)
                except OSError:
                    pass
                sock.close()
                continue
            peer = _Peer(sock, pid, uid)
            self.peers[peer.fd] = peer
            self.unauth[peer] = peer.since
            self.ep.register(peer.fd, select.EPOLLIN)

    def _readable(self, peer: _Peer) -> None:
        for _ in range(1):  # one message per wake-up: epoll is level-triggered
            try:
                n, anc, flags, _ = peer.sock.recvmsg_into([self.mv], _ANC,
                                                          _CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._mark(peer)
                return
            fds = _fds_of(anc) if anc else []
            if n == 0:
                _close_all(fds)
                self._mark(peer)
                return
            if flags & _TRUNC:
                _close_all(fds)
                self._mark(peer)
                return
            data = bytes(self.mv[:n])
            if not peer.authed:
                _close_all(fds)
                self._auth(peer, data)
                if peer.dead:
                    return
                continue
            if flags & _CTRUNC:
                _close_all(fds)
                self._send(peer, ("err", "the proxy could not receive the fd (out of file "
                                  "descriptors?)"))
                continue
            peer.part_fds.extend(fds)
            if data[:1] == _MORE:
                peer.parts.append(data[1:])
                continue
            if peer.parts:
                peer.parts.append(data[1:])
                data = b"".join(peer.parts)
                peer.parts = []
            else:
                data = data[1:]
            fds, peer.part_fds = peer.part_fds, []
            try:
                msg = pickle.loads(data)
                self._handle(peer, msg, fds)
            except Exception as e:  # a bad request must not kill the proxy
                _close_all(fds)
                self.say(f"bad request from pid {peer.pid}: {e!r}")
                self._send(peer, ("err", f"bad request: {e!r}"))

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
            else:
                try:
                    size = _linux.fd_size(fds[0])
                except OSError:
                    size = None
                seg = self.segs[key] = _Seg(key, fds[0], peer, meta, size)
                peer.owned.add(key)
                self.gone.pop(key, None)
                if len(msg) > 3:  # ("publish", key, meta, gen): and a lease, at once
                    self._send(peer, ("ok", self._new_lease(peer, seg, msg[3])))
                else:
                    self._send(peer, ("ok",))
        elif op == "release":
            _close_all(fds)
            seg = self.segs.get(msg[1])
            ok = seg is not None and seg.owner is peer and seg.released is None
            if ok:
                self._release(msg[1], f"released by its owner (pid {peer.pid})")
            self._send(peer, ("ok", ok))
        elif op in ("lease", "claim", "unhold"):
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
                                       "leases": self._lease_info()}))
        else:
            _close_all(fds)
            self._send(peer, ("err", f"unknown request {op!r}"))

    def _segments(self) -> list[dict]:
        out = []
        for s in self.segs.values():
            nbytes = s.meta.get("nbytes", s.size) if isinstance(s.meta, dict) else s.size
            out.append({"key": s.key, "owner": s.owner.pid, "nbytes": nbytes, "size": s.size,
                        "meta": s.meta, "subscribers": sorted(p.pid for p in s.subs),
                        "leases": len(s.leases), "released": s.released})
        return out

    def _gone_message(self, key: str) -> str:
        why = self.gone.get(key)
        if why is None and key in self.segs:
            why = self.segs[key].released
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
        _close_all([seg.fd])
        self.gone[seg.key] = seg.released
        while len(self.gone) > _GONE_MEMORY:
            self.gone.popitem(last=False)

    # -- transfer leases (see driller.sharedarray for the rules)
    def _lease_op(self, peer: _Peer, op: str, msg) -> None:
        if op == "unhold":
            for lid in msg[1]:
                self._unhold(peer, lid)
            self._send(peer, ("ok",))
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
        if lease.claimed:
            self._end_lease(lease, "loaded, then let go by every process that held it")
            return
        self.orphans[lid] = time.monotonic()
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
            self._end_lease(self.leases[lid], f"never loaded within {self.lease_seconds:g} s "
                            f"of its last holder letting go ({_LEASE_SECONDS_VAR})")

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
        return (f"segment {key!r}{who}: the array this handle names is gone — its owner freed "
                f"it and its transfer lease {lid} ended ({why}); ask the owner for a new "
                "handle, and keep the array (or a view) alive until the handle is loaded")

    def _lease_info(self) -> dict:
        return {"live": len(self.leases), "orphaned": len(self.orphans),
                "segments_kept": sum(1 for s in self.segs.values() if s.released is not None),
                "seconds": self.lease_seconds, "max_orphans": self.max_orphans}

    # -- sending, never blocking
    def _send(self, peer: _Peer, obj, fd: int | None = None) -> None:
        if peer.dead:
            return
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
            peer.outq.append((pkts[j], qfd))
        if peer.outq:
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
        except OSError:
            self._mark(peer)
            return False

    def _flush(self, peer: _Peer) -> None:
        while not peer.dead:
            while peer.outq:
                pkt, fd = peer.outq[0]
                if not self._sendpkt(peer, pkt, fd):
                    if not peer.dead:
                        if not peer.writing:
                            self.say(f"pid {peer.pid} is not reading: holding "
                                     f"{len(peer.outq)} packets, {len(peer.notices)} notices")
                        self._want_write(peer, True)
                    return
                peer.outq.popleft()
                if fd is not None:
                    _close_all([fd])
            if not peer.notices:
                break
            keys, peer.notices = sorted(peer.notices), set()
            for pkt in _packets(("notice", keys)):
                peer.outq.append((pkt, None))
        if not peer.dead:
            self._want_write(peer, False)

    def _want_write(self, peer: _Peer, on: bool) -> None:
        if peer.writing != on and not peer.dead:
            self.ep.modify(peer.fd, select.EPOLLIN | (select.EPOLLOUT if on else 0))
            peer.writing = on

    # -- dropping peers
    def _mark(self, peer: _Peer) -> None:
        if not peer.dead:
            peer.dead = True
            self.to_drop.append(peer)

    def _drop_pending(self) -> None:
        while self.to_drop:
            self._drop(self.to_drop.pop())

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
        _close_all([fd for _, fd in peer.outq if fd is not None])
        _close_all(peer.part_fds)
        peer.outq.clear()
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
