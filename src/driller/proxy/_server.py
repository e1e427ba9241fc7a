"""The fd proxy process: one epoll loop serving every client of one user.

Run only through ``_boot._start_proxy`` (``_main`` reads its boot data from the
environment).  Imports only ``driller._linux``, ``driller.errors`` and ``._wire``
(the proxy starts fast and has nothing else that could break).
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


class _Seg:
    __slots__ = ("key", "fd", "owner", "meta", "subs", "size")

    def __init__(self, key, fd, owner, meta, size):
        self.key, self.fd, self.owner, self.meta, self.size = key, fd, owner, meta, size
        self.subs: set[_Peer] = set()


class _Peer:
    __slots__ = ("sock", "fd", "pid", "uid", "authed", "since", "owned", "subscribed",
                 "outq", "notices", "parts", "part_fds", "writing", "dead")

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
            if not self.peers:
                if self.ever or now - self.started >= self.idle:
                    if not self._accept():      # nobody waiting in the backlog: done
                        return
                    continue
                timeout = self.started + self.idle - now
            if self.unauth:
                t = max(0.0, min(self.unauth.values()) + _AUTH_TIMEOUT - now)
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
            if seg is None:
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
                self.segs[key] = _Seg(key, fds[0], peer, meta, size)
                peer.owned.add(key)
                self.gone.pop(key, None)
                self._send(peer, ("ok",))
        elif op == "release":
            _close_all(fds)
            seg = self.segs.get(msg[1])
            ok = seg is not None and seg.owner is peer
            if ok:
                self._release(msg[1], f"released by its owner (pid {peer.pid})")
            self._send(peer, ("ok", ok))
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
                                       "segments": self._segments()}))
        else:
            _close_all(fds)
            self._send(peer, ("err", f"unknown request {op!r}"))

    def _segments(self) -> list[dict]:
        out = []
        for s in self.segs.values():
            nbytes = s.meta.get("nbytes", s.size) if isinstance(s.meta, dict) else s.size
            out.append({"key": s.key, "owner": s.owner.pid, "nbytes": nbytes, "size": s.size,
                        "meta": s.meta, "subscribers": sorted(p.pid for p in s.subs)})
        return out

    def _gone_message(self, key: str) -> str:
        why = self.gone.get(key)
        if why is not None:
            return f"segment {key!r} was {why}; ask its owner for a new handle"
        owner = _owner_of(key)
        who = f" (owner pid {owner})" if owner is not None else ""
        return (f"segment {key!r}{who} is unknown to the fd proxy at {_show(self.address)}: "
                "it was released (or never published there)")

    def _release(self, key: str, why: str) -> None:
        seg = self.segs.pop(key)
        _close_all([seg.fd])
        seg.owner.owned.discard(key)
        self.gone[key] = why
        while len(self.gone) > _GONE_MEMORY:
            self.gone.popitem(last=False)
        for sub in seg.subs:
            sub.subscribed.discard(key)
            if not sub.dead:
                sub.notices.add(key)
                self._flush(sub)

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
