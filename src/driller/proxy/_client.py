"""The fd proxy's client side: one connection per proxy, ``ProxyClient``, ``proxy_info``."""

from __future__ import annotations

import array
import errno
import hmac
import os
import pickle
import select
import socket
import threading
import time
import weakref

from .. import _linux
from ..errors import ProxyError, SegmentReleasedError
from ._boot import _start_proxy
from ._wire import (_ANC, _CLOEXEC, _DONTWAIT, _HELLO_TIMEOUT, _LAST, _MAGIC, _MAX_PACKET,
                    _SCM_RIGHTS, _SOCK_TYPE, _SOL_SOCKET, _TRUNC, _CTRUNC, ENV_VAR,
                    _Message, _close_all, _fds_of, _packets, _parse_env, _show)

__all__ = ["ProxyClient", "proxy_info"]


# the reply whose fds the kernel dropped (MSG_CTRUNC: our open file limit)
_FDS_LOST = ("fds lost",)


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
        self._message = _Message()            # the one being read
        self._fds_lost = False                # its fds did not fit our open file limit
        self._owed = 0                        # replies still due to interrupted calls
        sock = socket.socket(socket.AF_UNIX, _SOCK_TYPE)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            raise ProxyError(
                f"cannot reach the driller fd proxy at {_show(address)}: {e.strerror or e}; "
                "it exits when its last client is gone, so the process that published this "
                "handle (and every other user of that proxy) has probably exited, or the proxy "
                "was killed") from None
        self.sock = sock
        self.fd = sock.fileno()
        self._hup = select.poll()   # (POLLHUP and POLLERR are always reported)
        self._hup.register(self.fd, 0)
        try:
            _pid, uid, _gid = _linux.peer_cred(sock)
            if uid != os.getuid():
                raise ProxyError(
                    f"the socket {_show(address)} belongs to uid {uid}, not to our uid "
                    f"{os.getuid()}: driller proxies only serve processes of one user")
            sock.settimeout(_HELLO_TIMEOUT)  # a stopped or wedged proxy: give up, don't hang
            try:
                sock.sendmsg([_LAST + _MAGIC + secret])
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at once (e.g. at its fd limit): the reason is still readable
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

    def hung_up(self) -> bool:
        """Whether the proxy closed its end (it exited, was killed, or dropped us):
        one poll(2) with no wait."""
        return bool(self._hup.poll(0))

    # -- receiving
    def _recv_packet(self, flags: int):
        """One packet; None if it would block (only with MSG_DONTWAIT). Raises on EOF."""
        try:
            n, anc, mflags, _ = self.sock.recvmsg_into([self._mv], _ANC,
                                                       flags | _CLOEXEC)
        except BlockingIOError:
            return None
        except OSError as e:
            # (a proxy that closed with our data unread resets us first, and its last
            # reply, e.g. why it refused us, is still queued behind: read it)
            got = None
            if e.errno == errno.ECONNRESET:
                try:
                    got = self.sock.recvmsg_into([self._mv], _ANC,
                                                 _DONTWAIT | _CLOEXEC)
                except OSError:
                    pass
            if not got or not got[0]:
                self._die()
                raise ProxyError(f"lost the fd proxy at {_show(self.address)}: {e}") from None
            n, anc, mflags, _ = got
        fds = _fds_of(anc) if anc else []
        if n == 0:
            _close_all(fds)
            self._die()
            raise ProxyError(
                f"the fd proxy at {_show(self.address)} closed our connection (it exited, was "
                "killed, or refused our secret/uid)")
        if mflags & _TRUNC:  # pragma: no cover - protocol bug
            _close_all(fds)
            self._die()
            raise ProxyError(f"oversized message from the fd proxy at {_show(self.address)}")
        if mflags & _CTRUNC:   # the kernel dropped fds we had no room for (EMFILE): the
            _close_all(fds)    # message is whole, the connection sound (closing it made
            fds = []           # the proxy release every segment this process owns)
            self._fds_lost = True
        return bytes(self._mv[:n]), fds

    def _next_message(self, flags: int):
        """One whole message (obj, fds), None if it would block."""
        while True:
            pkt = self._recv_packet(flags)
            if pkt is None:
                return None
            if self._message.add(*pkt):
                data, fds = self._message.take()
                if self._fds_lost:   # (a reply: taken as one, raised by request)
                    self._fds_lost = False
                    _close_all(fds)
                    return _FDS_LOST, []
                return pickle.loads(data), fds

    def _notice(self, keys) -> None:
        keys = set(keys)
        self.subscribed -= keys
        if self.on_release is not None:
            self.on_release(keys)

    def _read_reply(self, deadline: float | None = None):
        while True:
            if deadline is not None:
                p = select.poll()   # (poll, not select: our fd may be past 1023)
                p.register(self.fd, select.POLLIN)
                if not p.poll(max(0.0, deadline - time.monotonic()) * 1000):
                    raise ProxyError(f"the fd proxy at {_show(self.address)} did not "
                                     "answer in time (stopped?)")
            msg, fds = self._next_message(0)
            if msg[0] == "notice":
                _close_all(fds)
                self._notice(msg[1])
                continue
            return msg, fds

    def request(self, obj, fd: int | None = None, timeout: float | None = None):
        """Send one request, wait for its reply (handling notices meanwhile).  With
        ``timeout`` (seconds from the call), replies not come by then raise
        :class:`ProxyError`; the request went, and its reply is read by the next
        call (the connection stays up)."""
        pkts = _packets(obj)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            if self.dead:
                raise ProxyError(f"the connection to the fd proxy at {_show(self.address)} "
                                 "is closed")
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
            # ours is the last of the replies owed: first those of calls interrupted
            # earlier (KeyboardInterrupt, a timeout), or of posts
            self._owed += 1
            while True:
                reply = self._read_reply(deadline)
                self._owed -= 1
                if not self._owed:
                    if reply[0] is _FDS_LOST:
                        raise ProxyError(
                            "this process is at its open file limit (RLIMIT_NOFILE, `ulimit "
                            f"-n` {_linux.nofile_limit()}): the file descriptor the fd proxy "
                            "sent could not be received; close files you no longer need or "
                            "raise the limit (resource.setrlimit), then try again")
                    return reply
                _close_all(reply[1])

    def post(self, obj) -> bool:
        """Send one request without waiting for its reply (read by the next call, as
        an interrupted call's): for a process at its exit, which must not hang on
        a proxy that does not answer.  False if it could not go at once."""
        pkts = _packets(obj)
        if not self.lock.acquire(timeout=1):
            return False
        try:
            if self.dead:
                return False
            sent = 0
            try:
                for p in pkts:
                    self.sock.sendmsg([p], [], _DONTWAIT)
                    sent += 1
            except OSError:
                if sent:  # half a message: the stream cannot be resynchronised
                    self._die()
                return False
            self._owed += 1
            return True
        finally:
            self.lock.release()

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
        self._message.discard()
        # we can no longer vouch for what we fetched: report it as released
        if self.subscribed:
            keys, self.subscribed = self.subscribed, set()
            if self.on_release is not None:
                self.on_release(keys)

    def close(self) -> None:
        """Close our end (in a forked child this closes only the child's copy)."""
        self.on_release = None
        self._die()


def _number(got, kind: str, refused: str) -> int:
    """The number a ("lease" or "number") reply carries; raises for any other."""
    reply, fds = got
    _close_all(fds)
    if reply[0] == kind:
        return reply[1]
    if reply[0] == "gone":
        raise SegmentReleasedError(reply[1])
    raise ProxyError(f"{refused}: {reply[1]}")


_client: "ProxyClient | None" = None
_client_lock = threading.Lock()
# This process's own proxy (address, secret), kept in memory, never in os.environ
# (where every exec'd child and every crash report would see the secret).  A fork
# child (multiprocessing's fork, mmpi.spawn) inherits it and joins the same proxy; an
# exec'd child starts its own on first need (handles carry address and secret).
_own_proxy: "tuple[str, bytes] | None" = None
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
            if not own.hung_up():
                return own
            # the proxy is gone (killed) or dropped us: found now, before a handle
            # names it (a kept lease asks it nothing, and loaders would get the error)
            with own.lock:
                own._die()
        with self._lock:
            self._check()
            if self._own is not None and not self._own.dead:
                return self._own
            self._own = None
            global _own_proxy
            # this process's proxy (or its fork parent's), else one named explicitly
            # by DRILLER_PROXY (read, never written), else a new one
            env = os.environ.get(ENV_VAR)
            for where, known in (("this process's last proxy", _own_proxy), (ENV_VAR, env)):
                if not known:
                    continue
                try:
                    address, secret = _parse_env(known) if isinstance(known, str) else known
                    self._own = self._conn_for(address, secret)
                    break
                except ProxyError as e:
                    from .._log import get_logger
                    get_logger(__name__).debug("%s: no usable fd proxy (%s)", where, e)
                    self._own = None
            if self._own is None:
                address, secret = _start_proxy()
                self._own = self._conn_for(address, secret)
            _own_proxy = (self._own.address, self._own.secret)
            return self._own

    @property
    def address(self) -> str:
        """The own proxy's abstract socket address (starts with NUL)."""
        return self._own_conn().address

    @property
    def secret(self) -> bytes:
        """The secret of this process's own proxy (what a peer presents to connect)."""
        return self._own_conn().secret

    @property
    def proxy_pid(self) -> int:
        """The pid of this process's own proxy."""
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

    def close_idle(self, busy: set[str]) -> None:
        """Close our connections to other processes' proxies that nothing of ours
        needs any more: no segment fetched through it unreleased, no claim held
        through it (``busy``: the addresses of those), no reply owed.  A proxy
        exits with its last client: a worker's proxy kept alive by our connection
        after the worker exited was one process and one fd per finished worker
        (``Pool(maxtasksperchild=1)``).  A later handle of it connects again."""
        busy = {"\0" + a[1:] if a[:1] == "@" else a for a in busy}   # (as _conns names them)
        closed = False
        with self._lock:
            own = self._own
            for address, c in list(self._conns.items()):
                if c is own or c.dead or c.subscribed or c._owed or address in busy:
                    continue
                if not c.lock.acquire(blocking=False):
                    continue   # (in use: next time)
                try:
                    if not (c.subscribed or c._owed):
                        c.close()
                        closed = True
                finally:
                    c.lock.release()
            if closed:
                self._refresh_poll()

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

    def release(self, key: str, timeout: float | None = None) -> None:
        """Withdraw key: the proxy closes its fd and notifies subscribers (``timeout``:
        of the wait for its answer). Never raises for an unknown key or a gone proxy."""
        conn = self._own
        if conn is None or conn.dead:
            return
        try:
            _, fds = conn.request(("release", key), timeout=timeout)
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

    # -- transfer leases (the rules: driller.sharedarray)
    def lease(self, address: str, secret: bytes, key: str, gen: int) -> int:
        """A new transfer lease on (key, gen) at the proxy at address, held by this
        connection until :meth:`unhold` (or until we disconnect)."""
        self._check()
        if address[:1] == "@":
            address = "\0" + address[1:]
        return _number(self._conn_for(address, secret).request(("lease", key, gen)), "lease",
                       f"the fd proxy at {_show(address)} refused a lease on {key!r}")

    def claim(self, address: str, secret: bytes, key: str, lease: int, gen: int,
              want_fd: bool, seq: int = 0) -> tuple[int, dict, bool] | None:
        """Hold ``lease`` (one more count for this connection) and, if want_fd, get a
        new fd of its segment (the caller owns it), the segment's meta and whether
        its owner released it already (no release notice will come for it then).
        ``seq``: the number of the lease's handle being loaded (0: not counted).

        Raises :class:`~driller.SegmentReleasedError` if the lease has ended or does
        not name (key, gen)."""
        self._check()
        if address[:1] == "@":
            address = "\0" + address[1:]
        conn = self._conn_for(address, secret)
        reply, fds = conn.request(("claim", key, lease, bool(want_fd), gen, seq))
        if reply[0] == "fd" and want_fd:
            if len(fds) != 1:  # pragma: no cover - protocol bug
                _close_all(fds)
                raise ProxyError(f"the fd proxy sent {len(fds)} fds for {key!r}")
            if not reply[3]:
                conn.subscribed.add(key)
            return fds[0], reply[1], reply[3]
        _close_all(fds)
        if reply[0] == "ok" and not want_fd:
            return None
        if reply[0] == "gone":
            raise SegmentReleasedError(reply[1])
        raise ProxyError(f"the fd proxy at {_show(address)} failed to claim lease {lease} "
                         f"of {key!r}: {reply[1]}")

    def _held_conn(self, address: str) -> "_Conn | None":
        """Our live connection to the proxy at address (the one holding our leases
        there), or None."""
        if address[:1] == "@":
            address = "\0" + address[1:]
        conn = self._conns.get(address)
        return None if conn is None or conn.dead or self._stale else conn

    def unhold(self, address: str, leases, wait: bool = True,
               timeout: float | None = None) -> None:
        """Let go of one count of each lease held through the connection to address
        (``wait=False``: posted, its reply not waited for: at exit).  Never raises (a
        lost connection has let go of everything already)."""
        conn = self._held_conn(address)
        if conn is None:
            return
        try:
            if not wait:
                conn.post(("unhold", list(leases)))
                return
            _, fds = conn.request(("unhold", list(leases)), timeout=timeout)
            _close_all(fds)
        except Exception:  # noqa: BLE001 - also at interpreter exit
            pass

    def number(self, address: str, lease: int) -> int:
        """A new handle number of ``lease`` (held through our connection to the proxy
        at address) for a pickle of a view of what we loaded: the proxy keeps the
        lease until that handle is loaded too.  Raises :class:`ProxyError` or
        :class:`~driller.SegmentReleasedError` (the lease is not ours)."""
        conn = self._held_conn(address)
        if conn is None:
            raise ProxyError(f"no connection to the fd proxy at {_show(address)}")
        return _number(conn.request(("number", lease)), "number",
                       f"the fd proxy at {_show(address)} refused a number of lease {lease}")

    def issued(self, address: str, counts) -> None:
        """Tell the proxy at address what we say of the handles of leases this
        connection holds: ``counts``, (lease id, what) pairs (what a drop says,
        ``_server._Lease.said``, without letting go).  Sent without waiting for the
        reply (a process at its exit calls it); never raises."""
        conn = self._held_conn(address)
        if conn is None:
            return
        try:
            conn.post(("issued", list(counts)))
        except Exception:  # noqa: BLE001 - also at interpreter exit
            pass

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
        """Close every connection of this client (this process's segments are then
        released by their proxies); the next :meth:`get` makes a new client."""
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
    """address, pid, uid, clients and segments of a proxy (default: this process's own,
    else DRILLER_PROXY's).

    ``address`` may be ``"<address>|<secret hex>"`` (the DRILLER_PROXY form) or a bare
    address whose secret is known to this process (its own proxy, DRILLER_PROXY, a
    connection of its client).
    """
    secret = None
    if address is None:
        env = os.environ.get(ENV_VAR)
        if _own_proxy is not None:
            address, secret = _own_proxy
        elif env:
            address, secret = _parse_env(env)
        else:
            raise ProxyError(f"no fd proxy: this process has none and {ENV_VAR} is not set "
                             f"(no driller job here)")
    elif "|" in address:
        address, secret = _parse_env(address)
    else:
        if not address.startswith("\0") and address.startswith("@"):
            address = "\0" + address[1:]
        env = os.environ.get(ENV_VAR)
        if env and _parse_env(env)[0] == address:
            secret = _parse_env(env)[1]
        elif _own_proxy is not None and _own_proxy[0] == address:
            secret = _own_proxy[1]
        elif _client is not None and address in _client._conns:
            secret = _client._conns[address].secret
        else:
            raise ProxyError(f"the secret of the fd proxy at {_show(address)} is unknown: pass "
                             "'<address>|<secret hex>' as `driller info` lists it")
    conn = _Conn(address, secret)
    try:
        reply, fds = conn.request(("info",))
        _close_all(fds)
        return reply[1]
    finally:
        conn.close()

