"""The fd proxy: a small server process that forwards segment memfds to peers.

A process that publishes a segment hands its memfd to the proxy; any process of
the same user that knows the proxy's address and secret can fetch a new fd for
that key (SCM_RIGHTS) and map it.  When the owner releases the key, or dies
(its connection reaches EOF), the proxy drops its fd and tells every process
that fetched the key (a *release notice*, sent asynchronously on the same
connection).

Transport: an abstract-namespace ``SOCK_SEQPACKET`` unix socket (nothing on
disk; message boundaries and the fd attached to each message are kept by the
kernel).  Every packet is one flag byte (0 = last part, 1 = more parts follow)
and a piece of a pickled tuple.  Pickles are only ever read from peers whose
uid is ours (SO_PEERCRED, checked on both ends) and, on the server, only after
the peer has sent the secret as raw bytes.

Lifetime: the first process that needs a proxy (its first publish, or reading
``ProxyClient.get().address``) starts one: ``python -c`` that forks once more,
so the proxy is nobody's child, and imports only this module, ``_linux`` and
``errors``.  The starting process binds and listens itself and hands the socket
over, so the proxy is reachable when the call returns.  It puts
``DRILLER_PROXY=@<name>|<secret hex>`` into ``os.environ`` (``@`` stands for the
leading NUL of the abstract address) so children join the same proxy.  The
proxy exits when its last client has disconnected, or if nobody authenticates
within a few seconds of its start.

Release notices: a key released explicitly or by its owner's death (EOF on the
owner's connection) is reported to every connection that fetched it.  If a
proxy connection itself is lost, the keys fetched through it are reported as
released too (nobody can vouch for them any more).  ``released_keys()`` is
consumed by the map cache; other code should not drain it.
"""

from __future__ import annotations

import array
import hmac
import os
import pickle
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque

from . import _linux
from .errors import ProxyError, SegmentReleasedError

__all__ = ["ProxyClient", "proxy_info", "ENV_VAR"]

ENV_VAR = "DRILLER_PROXY"
_BOOT_VAR = "_DRILLER_PROXY_BOOT"
_LOG_VAR = "DRILLER_PROXY_LOG"
_MAGIC = b"DRLRPX1:"
_MAX_PACKET = 1 << 16            # one SEQPACKET message, flag byte included
_CHUNK = _MAX_PACKET - 1
_MORE, _LAST = b"\x01", b"\x00"
_ANC = socket.CMSG_SPACE(4 * 8)  # room for a few fds; extra ones are closed by the kernel
_SOCK_TYPE = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_START_IDLE = 5.0                # seconds a new proxy waits for its first client
_AUTH_TIMEOUT = 10.0             # seconds a connection may stay unauthenticated
_HELLO_TIMEOUT = 30.0            # seconds a client waits for the proxy's greeting
_GONE_MEMORY = 4096              # released keys remembered for error messages
_PROTO = pickle.HIGHEST_PROTOCOL
_EPOLL_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
# plain ints: the enum versions cost microseconds per | on the hot path
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_DONTWAIT = int(socket.MSG_DONTWAIT)
_NOSIGNAL_DONTWAIT = int(socket.MSG_DONTWAIT) | int(socket.MSG_NOSIGNAL)
_TRUNC = int(socket.MSG_TRUNC)
_CTRUNC = int(socket.MSG_CTRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)


def _packets(obj) -> list[bytes]:
    data = pickle.dumps(obj, _PROTO)
    if len(data) <= _CHUNK:
        return [_LAST + data]
    out = [_MORE + data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK)]
    out[-1] = _LAST + out[-1][1:]
    return out


def _fds_of(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[:len(data) - len(data) % a.itemsize])
            fds.extend(a)
    return fds


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _owner_of(key: str) -> int | None:
    """The owner pid encoded in a key made by segment.new_key(), if any."""
    head = key.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _parse_env(value: str) -> tuple[str, bytes]:
    address, sep, hexsecret = value.rpartition("|")
    if not sep or not address:
        raise ProxyError(f"malformed {ENV_VAR}={value!r}: expected '<address>|<secret hex>'")
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        return address, bytes.fromhex(hexsecret)
    except ValueError:
        raise ProxyError(f"malformed secret in {ENV_VAR}: not hex") from None


def _show(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


# =============================================================== client side

class _Conn:
    """One authenticated connection to one proxy."""

    def __init__(self, address: str, secret: bytes, on_release=None):
        self.address = address
        self.secret = secret
        self.on_release = on_release          # callable(set_of_keys) or None
        self.lock = threading.Lock()
        self.dead = False
        self.subscribed: set[str] = set()     # keys fetched through us, not yet released
        self._buf = bytearray(_MAX_PACKET)
        self._mv = memoryview(self._buf)
        self._parts: list[bytes] = []
        self._part_fds: list[int] = []
        self._owed = 0                        # replies still due to interrupted calls
        sock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            raise ProxyError(
                f"cannot reach the driller fd proxy at {_show(address)}: {e.strerror or e}; "
                "it exits when its last client is gone, so the process that published this "
                "handle (and every other user of that proxy) has probably exited") from None
        self.sock = sock
        self.fd = sock.fileno()
        try:
            _pid, uid, _gid = _linux.peer_cred(sock)
            if uid != os.getuid():
                raise ProxyError(
                    f"the socket {_show(address)} belongs to uid {uid}, not to our uid "
                    f"{os.getuid()}: driller proxies only serve processes of one user")
            sock.settimeout(_HELLO_TIMEOUT)  # a stopped or wedged proxy: give up, don't hang
            sock.sendmsg([_LAST + _MAGIC + secret])
            reply, fds = self._read_reply()
            _close_all(fds)
            sock.settimeout(None)
            if reply[0] != "hello":
                raise ProxyError(f"the fd proxy at {_show(address)} refused us: {reply[1]}")
            self.server_pid = reply[1]
        except ProxyError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ProxyError(f"lost the fd proxy at {_show(address)} while connecting: {e}") \
                from None

    # -- receiving
    def _recv_packet(self, flags: int):
        """One packet; None if it would block (only with MSG_DONTWAIT). Raises on EOF."""
        try:
            n, anc, mflags, _ = self.sock.recvmsg_into([self._mv], _ANC,
                                                       flags | _CLOEXEC)
        except BlockingIOError:
            return None
        except OSError as e:
            self._die()
            raise ProxyError(f"lost the fd proxy at {_show(self.address)}: {e}") from None
        fds = _fds_of(anc) if anc else []
        if n == 0:
            _close_all(fds)
            self._die()
            raise ProxyError(
                f"the fd proxy at {_show(self.address)} closed our connection (it exited, was "
                "killed, or refused our secret/uid)")
        if mflags & (_TRUNC | _CTRUNC):  # pragma: no cover - protocol bug
            _close_all(fds)
            self._die()
            raise ProxyError(f"oversized message from the fd proxy at {_show(self.address)}")
        return bytes(self._mv[:n]), fds

    def _next_message(self, flags: int):
        """One whole message (obj, fds), None if it would block."""
        while True:
            pkt = self._recv_packet(flags)
            if pkt is None:
                return None
            data, fds = pkt
            self._part_fds.extend(fds)
            if data[:1] == _MORE:
                self._parts.append(data[1:])
                continue
            if self._parts:
                self._parts.append(data[1:])
                data = b"".join(self._parts)
                self._parts = []
            else:
                data = data[1:]
            fds, self._part_fds = self._part_fds, []
            return pickle.loads(data), fds

    def _notice(self, keys) -> None:
        keys = set(keys)
        self.subscribed -= keys
        if self.on_release is not None:
            self.on_release(keys)

    def _read_reply(self):
        while True:
            msg, fds = self._next_message(0)
            if msg[0] == "notice":
                _close_all(fds)
                self._notice(msg[1])
                continue
            return msg, fds

    def request(self, obj, fd: int | None = None):
        """Send one request, wait for its reply (handling notices meanwhile)."""
        pkts = _packets(obj)
        with self.lock:
            if self.dead:
                raise ProxyError(f"the connection to the fd proxy at {_show(self.address)} "
                                 "is closed")
            while self._owed:  # replies to calls interrupted earlier (KeyboardInterrupt)
                _, fds = self._read_reply()
                _close_all(fds)
                self._owed -= 1
            sent = 0
            try:
                for i, p in enumerate(pkts):
                    if i == 0 and fd is not None:
                        self.sock.sendmsg([p], [(_SOL_SOCKET, _SCM_RIGHTS,
                                                 array.array("i", [fd]))])
                    else:
                        self.sock.sendmsg([p])
                    sent += 1
            except OSError as e:
                self._die()
                raise ProxyError(f"lost the fd proxy at {_show(self.address)}: {e}") from None
            except BaseException:
                if sent:  # half a message: the stream cannot be resynchronised
                    self._die()
                raise
            self._owed = 1
            reply = self._read_reply()
            self._owed = 0
            return reply

    def drain(self) -> None:
        """Read pending notices without blocking (skips if another thread is reading)."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            while not self.dead:
                got = self._next_message(_DONTWAIT)
                if got is None:
                    return
                msg, fds = got
                _close_all(fds)
                if msg[0] == "notice":
                    self._notice(msg[1])
                elif self._owed:  # the reply of an interrupted call
                    self._owed -= 1
        except ProxyError:
            pass
        finally:
            self.lock.release()

    def _die(self) -> None:
        if self.dead:
            return
        self.dead = True
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass
        _close_all(self._part_fds)
        self._part_fds = []
        # we can no longer vouch for what we fetched: report it as released
        if self.subscribed:
            keys, self.subscribed = self.subscribed, set()
            if self.on_release is not None:
                self.on_release(keys)

    def close(self) -> None:
        """Close our end (in a forked child this closes only the child's copy)."""
        self.on_release = None
        self._die()


_client: "ProxyClient | None" = None
_client_lock = threading.Lock()
_all_clients: "weakref.WeakSet[ProxyClient]" = weakref.WeakSet()


class ProxyClient:
    """This process's connections to fd proxies (one per proxy address).

    Use :meth:`get`; the own proxy (the one ``publish`` uses) is connected, or
    started, on first need: reading ``address``/``secret`` or publishing.
    """

    @staticmethod
    def get() -> "ProxyClient":
        """This process's client (a fresh one in a forked child)."""
        global _client
        c = _client
        if c is None:
            with _client_lock:
                if _client is None:
                    _client = ProxyClient()
                c = _client
        return c

    def __init__(self):
        self._lock = threading.RLock()
        self._conns: dict[str, _Conn] = {}
        self._fdlist: list[int] = []
        self._poll = select.poll()
        self._own: _Conn | None = None
        self._pending: set[str] = set()
        self._plock = threading.Lock()
        self._stale = False
        _all_clients.add(self)

    # -- own proxy
    def _own_conn(self) -> _Conn:
        own = self._own
        if own is not None and not own.dead:
            return own
        with self._lock:
            self._check()
            if self._own is not None and not self._own.dead:
                return self._own
            self._own = None
            env = os.environ.get(ENV_VAR)
            if env:
                try:
                    address, secret = _parse_env(env)
                    self._own = self._conn_for(address, secret)
                except ProxyError:
                    self._own = None
            if self._own is None:
                address, secret = _start_proxy()
                self._own = self._conn_for(address, secret)
                os.environ[ENV_VAR] = f"{_show(address)}|{secret.hex()}"
            return self._own

    @property
    def address(self) -> str:
        """The own proxy's abstract socket address (starts with NUL)."""
        return self._own_conn().address

    @property
    def secret(self) -> bytes:
        return self._own_conn().secret

    @property
    def proxy_pid(self) -> int:
        return self._own_conn().server_pid

    # -- connections
    def _check(self) -> None:
        if self._stale:
            raise ProxyError("this ProxyClient belongs to the parent of a fork or was closed; "
                             "use ProxyClient.get()")

    def _conn_for(self, address: str, secret: bytes) -> _Conn:
        c = self._conns.get(address)
        if c is None or c.dead:
            with self._lock:
                self._check()
                c = self._conns.get(address)
                if c is None or c.dead:
                    c = _Conn(address, secret, self._add_released)
                    self._conns[address] = c
                    self._refresh_poll()
                    return c
        if not hmac.compare_digest(c.secret, secret):
            raise ProxyError(f"wrong secret for the fd proxy at {_show(address)}: use the "
                             "secret of the handle's publisher (DRILLER_PROXY of its job)")
        return c

    def _refresh_poll(self) -> None:
        for a in [a for a, c in self._conns.items() if c.dead]:
            del self._conns[a]
        p = select.poll()
        fds = []
        for c in self._conns.values():
            p.register(c.fd, select.POLLIN)
            fds.append(c.fd)
        self._poll, self._fdlist = p, fds

    def _add_released(self, keys: set[str]) -> None:
        with self._plock:
            self._pending |= keys

    # -- the API
    def publish(self, key: str, fd: int, meta: dict) -> None:
        """Hand a copy of fd to the own proxy under key (meta: a small picklable dict)."""
        for attempt in (0, 1):
            conn = self._own_conn()
            try:
                reply, fds = conn.request(("publish", key, meta), fd)
            except ProxyError:
                if attempt or not conn.dead:
                    raise
                continue  # our proxy was killed: start or join another one, once
            _close_all(fds)
            if reply[0] != "ok":
                raise ProxyError(f"the fd proxy refused to publish {key!r}: {reply[1]}")
            return

    def release(self, key: str) -> None:
        """Withdraw key: the proxy closes its fd and notifies subscribers. Never raises
        for an unknown key or a gone proxy."""
        conn = self._own
        if conn is None or conn.dead:
            return
        try:
            _, fds = conn.request(("release", key))
            _close_all(fds)
        except Exception:  # noqa: BLE001 - also at interpreter exit, from finalizers
            pass

    def fetch(self, address: str, secret: bytes, key: str) -> tuple[int, dict]:
        """A new fd (the caller owns it) and the meta of key at the proxy at address."""
        self._check()
        if address[:1] == "@":
            address = "\0" + address[1:]
        conn = self._conn_for(address, secret)
        reply, fds = conn.request(("fetch", key))
        if reply[0] == "fd":
            if len(fds) != 1:  # pragma: no cover - protocol bug
                _close_all(fds)
                raise ProxyError(f"the fd proxy sent {len(fds)} fds for {key!r}")
            conn.subscribed.add(key)
            return fds[0], reply[1]
        _close_all(fds)
        if reply[0] == "gone":
            raise SegmentReleasedError(reply[1])
        raise ProxyError(f"the fd proxy at {_show(address)} failed to fetch {key!r}: "
                         f"{reply[1]}")

    def released_keys(self) -> set[str]:
        """Keys released since the last call, of segments this process fetched (non-blocking)."""
        if self._fdlist:
            try:
                ready = self._poll.poll(0)
            except RuntimeError:  # another thread is polling the same object
                ready = [(fd, 0) for fd in select.select(self._fdlist, [], [], 0)[0]]
            if ready:
                fds = {fd for fd, _ in ready}
                dead = False
                for c in list(self._conns.values()):
                    if c.fd in fds:
                        c.drain()
                        dead |= c.dead
                if dead:
                    with self._lock:
                        self._refresh_poll()
        if not self._pending:
            return set()
        with self._plock:
            out, self._pending = self._pending, set()
        return out

    def segments(self) -> list[dict]:
        """Every segment published at the own proxy: key, owner, nbytes, meta, subscribers."""
        reply, fds = self._own_conn().request(("segments",))
        _close_all(fds)
        return reply[1]

    def ping(self) -> None:
        """One round trip to the own proxy (everything sent before has been processed)."""
        self._own_conn().request(("ping",))

    def close(self) -> None:
        global _client
        with self._lock:
            for c in self._conns.values():
                c.close()
            self._conns = {}
            self._own = None
            self._refresh_poll()
            self._stale = True
        if _client is self:
            _client = None

    def _forked(self) -> None:
        # in a fork child: drop the parent's connections (closing only our copies)
        for c in self._conns.values():
            c.close()
        self._conns, self._own, self._fdlist = {}, None, []
        self._poll = select.poll()
        self._stale = True


def _after_fork_in_child() -> None:
    global _client, _client_lock
    _client = None
    _client_lock = threading.Lock()
    for c in list(_all_clients):
        c._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def proxy_info(address: str | None = None) -> dict:
    """address, pid, uid, clients and segments of a proxy (default: os.environ's).

    ``address`` may be ``"<address>|<secret hex>"`` (the DRILLER_PROXY form) or a bare
    address whose secret is in os.environ or known to this process's client.
    """
    secret = None
    if address is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise ProxyError(f"no fd proxy: {ENV_VAR} is not set (no driller job here)")
        address, secret = _parse_env(env)
    elif "|" in address:
        address, secret = _parse_env(address)
    else:
        if not address.startswith("\0") and address.startswith("@"):
            address = "\0" + address[1:]
        env = os.environ.get(ENV_VAR)
        if env and _parse_env(env)[0] == address:
            secret = _parse_env(env)[1]
        elif _client is not None and address in _client._conns:
            secret = _client._conns[address].secret
        else:
            raise ProxyError(f"the secret of the fd proxy at {_show(address)} is unknown: pass "
                             "'<address>|<secret hex>' as found in the job's DRILLER_PROXY")
    conn = _Conn(address, secret)
    try:
        reply, fds = conn.request(("info",))
        _close_all(fds)
        return reply[1]
    finally:
        conn.close()


# =============================================================== starting a proxy

# The proxy imports only driller._linux and driller.errors (a stub package object
# stands in for driller/__init__.py): no numpy, no threads, nothing else to break.
_BOOT = ("import os,sys,types\n"
         "if os.fork(): os._exit(0)\n"
         "pkg = types.ModuleType('driller')\n"
         "pkg.__path__ = [os.environ['_DRILLER_PROXY_BOOT'].split('|')[4]]\n"
         "sys.modules['driller'] = pkg\n"
         "from driller.fdproxy import _main\n"
         "_main()\n")


def _start_proxy() -> tuple[str, bytes]:
    """Bind and listen here (so the proxy is ready when we return), serve elsewhere."""
    secret = secrets.token_bytes(16)
    lsock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
    try:
        for _ in range(20):
            address = f"\0driller-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                lsock.bind(address)
                break
            except OSError:
                continue
        else:  # pragma: no cover
            raise ProxyError("cannot bind an abstract unix socket for the fd proxy")
        lsock.listen(128)
        env = dict(os.environ)
        env.pop(ENV_VAR, None)
        pkgdir = os.path.dirname(os.path.abspath(__file__))
        env[_BOOT_VAR] = (f"{lsock.fileno()}|{secret.hex()}|{address[1:]}|{_START_IDLE}|"
                          f"{pkgdir}")
        log = env.get(_LOG_VAR)
        err = open(log, "ab") if log else subprocess.DEVNULL
        try:
            p = subprocess.Popen([sys.executable, "-c", _BOOT], pass_fds=[lsock.fileno()],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True, cwd="/", env=env)
        finally:
            if log:
                err.close()
        rc = p.wait()  # the intermediate process exits right after forking the proxy
        if rc != 0:
            raise ProxyError(f"the driller fd proxy failed to start (status {rc}); set "
                             f"{_LOG_VAR}=/some/file to see its error output")
    finally:
        lsock.close()  # the proxy holds the listening socket now
    return address, secret


# =============================================================== server side

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
        sys.exit("driller.fdproxy: not started by driller (missing boot data)")
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
