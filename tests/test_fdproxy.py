"""The fd proxy with real processes, sockets and memfds."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _helpers import fd_count, in_child, wait_until

from driller import _linux
from driller.errors import ProxyError, SegmentReleasedError
from driller.proxy import ENV_VAR, ProxyClient, proxy_info
from driller.proxy import _client as _client_mod
from driller.proxy._wire import _show
from driller.segment import Region, Segment

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/src"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(monkeypatch):
    """A private client (not the process singleton) with its own, fresh proxy."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_client_mod, "_own_proxy", None)   # no proxy of ours yet
    c = ProxyClient()
    yield c
    pid = c._own.server_pid if c._own is not None and not c._own.dead else None
    c.close()
    while _made:
        _made.pop().close_fd()
    if pid is not None:  # no leaked proxy: it exits once its last client is gone
        assert wait_until(lambda: not _linux.pid_alive(pid)), f"proxy {pid} outlived its clients"


_made: list[Segment] = []  # closed by the client fixture


def make_segment(client, nbytes=1 << 16, fill=None, **meta):
    seg = Segment(nbytes)
    _made.append(seg)
    if fill is not None:
        np.asarray(seg.region)[:] = fill
    client.publish(seg.key, seg.fd, {"nbytes": seg.nbytes, "dtype": "uint8", **meta})
    return seg


# ------------------------------------------------------------------ basics

def test_publish_then_fetch_in_forked_child_shares_memory(client):
    seg = make_segment(client, fill=7)
    addr, secret = client.address, client.secret
    assert ENV_VAR not in os.environ        # the secret stays in memory (see below)

    def child():
        c = ProxyClient.get()
        fd, meta = c.fetch(addr, secret, seg.key)
        try:
            region = Region(fd, meta["nbytes"])
        finally:
            os.close(fd)
        a = np.asarray(region)
        seen = int(a[0]), int(a[-1])
        a[:] = 42
        return seen, meta

    status, res = in_child(child)
    assert status == "ok", res
    assert res == ((7, 7), {"nbytes": seg.nbytes, "dtype": "uint8"})
    assert np.all(np.asarray(seg.region) == 42)  # written through the child's mapping


def test_fetch_from_fresh_subprocess(client):
    seg = make_segment(client, nbytes=8192, fill=3)
    code = textwrap.dedent("""
        import os, sys
        import numpy as np
        from driller.proxy import ProxyClient
        from driller.segment import Region
        addr, secret, key = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
        addr = "\\0" + addr[1:]
        fd, meta = ProxyClient.get().fetch(addr, secret, key)
        r = Region(fd, meta["nbytes"]); os.close(fd)
        a = np.asarray(r)
        print(int(a.sum()), meta["nbytes"])
        a[:] = 9
    """)
    env = dict(os.environ, PYTHONPATH=SRC)
    assert ENV_VAR not in env  # the address+secret come only from the command line
    out = subprocess.run([sys.executable, "-c", code, _show(client.address),
                          client.secret.hex(), seg.key],
                         capture_output=True, text=True, env=env, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(3 * 8192), "8192"]
    assert np.all(np.asarray(seg.region) == 9)


def test_fetch_own_segment_and_meta_roundtrip(client):
    seg = make_segment(client, fill=1)
    fd, meta = client.fetch(client.address, client.secret, seg.key)
    try:
        assert _linux.fd_size(fd) == seg.nbytes
        assert _linux.fd_inode(fd) == seg.inode  # the very same memfd
    finally:
        os.close(fd)
    assert meta["nbytes"] == seg.nbytes


def test_segments_and_proxy_info(client):
    seg = make_segment(client)
    info = proxy_info()  # this process's own proxy (started by the first publish)
    assert info["pid"] == client.proxy_pid
    assert info["address"] == client.address
    assert [s["key"] for s in info["segments"]] == [seg.key]
    assert os.getpid() in [c["pid"] for c in info["clients"]]
    os.close(client.fetch(client.address, client.secret, seg.key)[0])
    [s] = client.segments()
    assert (s["key"], s["owner"], s["nbytes"], s["subscribers"]) == (
        seg.key, os.getpid(), seg.nbytes, [os.getpid()])
    # by explicit "address|secret"
    assert proxy_info(f"{_show(client.address)}|{client.secret.hex()}")["pid"] == info["pid"]


def test_proxy_info_without_proxy_raises(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_client_mod, "_own_proxy", None)   # no proxy of ours yet
    with pytest.raises(ProxyError):
        proxy_info()
    with pytest.raises(ProxyError, match="cannot reach"):
        proxy_info("@driller-nonexistent-0|" + "00" * 16)


def test_large_messages_are_split(client):
    # > 64 KiB of listing: several SEQPACKET parts
    segs = [make_segment(client, 4096, blob="x" * 4000) for _ in range(40)]
    listing = client.segments()
    assert sorted(x["key"] for x in listing) == sorted(s.key for s in segs)
    assert all(x["meta"]["blob"] == "x" * 4000 for x in listing)


def test_duplicate_publish_refused(client):
    seg = make_segment(client)
    with pytest.raises(ProxyError, match="already published"):
        client.publish(seg.key, seg.fd, {})


# ------------------------------------------------------------------ auth

def test_wrong_secret_refused(client):
    seg = make_segment(client)
    addr = client.address
    bad = bytes(16)

    def child():  # a fresh connection: the proxy itself refuses
        return ProxyClient.get().fetch(addr, bad, seg.key)

    status, res = in_child(child)
    assert status == "err" and res.startswith("ProxyError") and "wrong secret" in res, res
    # an already open connection: refused without asking the proxy
    with pytest.raises(ProxyError, match="wrong secret"):
        client.fetch(addr, bad, seg.key)


def test_other_user_cannot_get_fds(client):
    seg = make_segment(client)
    addr, secret = client.address, client.secret

    def child(raw: bool):
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        if not raw:
            return ProxyClient.get().fetch(addr, secret, seg.key)
        # bypass the client's own uid check: speak the protocol by hand
        from driller.proxy import _wire
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(addr)
        got = []
        try:  # the proxy may have hung up already (EPIPE): that is a refusal too
            s.sendmsg([_wire._LAST + _wire._MAGIC + secret])
            for _ in range(3):
                data, anc, _, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(64))
                if not data:
                    break
                got.append((pickle.loads(data[1:])[0], len(anc)))
                s.sendmsg([_wire._packets(("fetch", seg.key))[0]])
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
        return got

    status, res = in_child(child, False)
    assert status == "err" and res.startswith("ProxyError") and "uid" in res, res
    status, res = in_child(child, True)
    assert status == "ok", res
    assert res in ([("refused", 0)], [])  # at most a refusal; never hello, never an fd


# ------------------------------------------------------------------ release

def test_release_notifies_subscriber(client):
    seg = make_segment(client)
    addr, secret = client.address, client.secret
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            c = ProxyClient.get()
            fd, _ = c.fetch(addr, secret, seg.key)
            os.close(fd)
            before = c.released_keys()
            os.write(to_parent_w, b"f")
            os.read(to_child_r, 1)           # parent has released
            after = c.released_keys()
            try:
                c.fetch(addr, secret, seg.key)
                err = "no error"
            except SegmentReleasedError as e:
                err = str(e)
            ok = not before and after == {seg.key} and seg.key in err and \
                str(os.getppid()) in err and c.released_keys() == set()
            code = 0 if ok else 2
            if not ok:
                os.write(2, f"{before} {after} {err}\n".encode())
        finally:
            os._exit(code)
    assert os.read(to_parent_r, 1) == b"f"
    assert client.segments()[0]["subscribers"] == [pid]
    client.release(seg.key)        # returns once the proxy has processed it
    client.release(seg.key)        # unknown key now: no error
    client.release("never-published")
    os.write(to_child_w, b"r")
    _, status = os.waitpid(pid, 0)
    for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(SegmentReleasedError, match=seg.key):
        client.fetch(client.address, client.secret, seg.key)


def test_only_the_owner_connection_releases(client):
    seg = make_segment(client)
    addr, secret = client.address, client.secret

    def child():  # a forked child inherits the Segment object but not the ownership
        c = ProxyClient.get()
        c.release(seg.key)
        c.ping()
        fd, _ = c.fetch(addr, secret, seg.key)
        os.close(fd)
        return True

    assert in_child(child) == ("ok", True)
    assert [s["key"] for s in client.segments()] == [seg.key]


def test_owner_sigkill_releases_and_notifies(client):
    # the parent only fetches; a forked child owns the segment
    addr, secret = client.address, client.secret
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            c = ProxyClient.get()
            seg = Segment(1 << 16)
            np.asarray(seg.region)[:] = 5
            c.publish(seg.key, seg.fd, {"nbytes": seg.nbytes})
            os.write(w, seg.key.encode())
            signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    key = os.read(r, 200).decode()
    os.close(r)
    fd, meta = client.fetch(addr, secret, key)
    region = Region(fd, meta["nbytes"])
    os.close(fd)
    view = np.asarray(region)
    assert view.sum() == 5 * view.size
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    got = set()

    def noticed():
        client.ping()
        got.update(client.released_keys())
        return key in got

    assert wait_until(noticed)
    with pytest.raises(SegmentReleasedError, match=f"pid {pid}"):
        client.fetch(addr, secret, key)
    assert view.sum() == 5 * view.size  # our mapping outlives the owner
    view[:] = 6
    assert view.sum() == 6 * view.size


def test_notices_arrive_while_waiting_for_a_reply(client):
    # a second client in this process subscribes to many keys and does not drain notices
    # while the owner releases them all; its next request must still get the right reply
    # (1000 notices overflow the socket buffer: the proxy must queue, not block)
    keep = make_segment(client, nbytes=4096)
    keys = [f"{os.getpid()}-many-{i}" for i in range(1000)]
    for k in keys:
        client.publish(k, keep.fd, {"nbytes": 4096})
    other = ProxyClient()
    try:
        for k in keys:
            os.close(other.fetch(client.address, client.secret, k)[0])
        for k in keys:
            client.release(k)
        fd, meta = other.fetch(client.address, client.secret, keep.key)
        os.close(fd)
        assert meta["nbytes"] == 4096
        assert other.released_keys() == set(keys)
        assert other.released_keys() == set()
        assert [s["key"] for s in client.segments()] == [keep.key]
    finally:
        other.close()


# ------------------------------------------------------------------ lifetime

def test_proxy_exits_when_last_client_is_gone(client):
    seg = make_segment(client)
    proxy_pid = client.proxy_pid
    addr, secret = client.address, client.secret

    def child():
        os.close(ProxyClient.get().fetch(addr, secret, seg.key)[0])
        return len(proxy_info()["clients"])

    assert in_child(child) == ("ok", 2)  # the child's and ours
    assert _linux.pid_alive(proxy_pid)  # still serving us after the child's exit
    os.close(client.fetch(addr, secret, seg.key)[0])
    client.close()
    assert wait_until(lambda: not _linux.pid_alive(proxy_pid))
    with pytest.raises(ProxyError, match="cannot reach"):
        ProxyClient().fetch(addr, secret, seg.key)


def _abstract_names() -> set[str]:
    with open("/proc/net/unix") as f:
        return {line.split()[-1] for line in f if line.split()[-1].startswith("@driller-")}


def test_proxy_process_imports_only_linux_errors_and_wire():
    # the proxy's own boot command, minus the fork and the serving: what does it load?
    from driller.proxy import _boot
    script = _boot._BOOT.replace("if os.fork(): os._exit(0)\n", "").replace(
        "_main()\n", "print(' '.join(sorted(sys.modules)))\n")
    assert script != _boot._BOOT
    pkgdir = os.path.dirname(os.path.dirname(os.path.abspath(_boot.__file__)))
    env = dict(os.environ, _DRILLER_PROXY_BOOT=f"3|00|x|5.0|{pkgdir}")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    ours = {m for m in out if m.startswith("driller")}
    assert ours == {"driller", "driller._linux", "driller.errors", "driller.proxy",
                    "driller.proxy._wire", "driller.proxy._server"}
    assert "numpy" not in out and "threading" not in out and "subprocess" not in out


def test_unused_proxy_exits_by_itself(monkeypatch):
    from driller.proxy._boot import _start_proxy
    address, _secret = _start_proxy()  # nobody ever connects
    name = _show(address)
    assert name in _abstract_names()
    assert wait_until(lambda: name not in _abstract_names(), limit=30)


def test_fork_child_uses_its_own_connection(client):
    seg = make_segment(client, fill=1)
    addr, secret = client.address, client.secret
    parent_fd = client._own.fd
    parent_ino = os.fstat(parent_fd).st_ino

    def child():
        c = ProxyClient.get()
        assert c is not client
        with pytest.raises(ProxyError, match="fork"):
            client.fetch(addr, secret, seg.key)  # the parent's object is unusable here
        try:  # the inherited copy of the parent's socket was closed at fork
            inherited = os.fstat(parent_fd).st_ino == parent_ino
        except OSError:
            inherited = False
        fd, _ = c.fetch(addr, secret, seg.key)
        os.close(fd)
        info = proxy_info()
        return inherited, c._conns[addr].fd != parent_fd or True, sorted(
            x["pid"] for x in info["clients"])

    status, res = in_child(child)
    assert status == "ok", res
    inherited, _, pids = res
    assert not inherited
    assert len(pids) == 2 and os.getpid() in pids
    # the parent's connection is intact after the child exited
    fd, _ = client.fetch(addr, secret, seg.key)
    os.close(fd)


def test_singleton_per_process_and_fresh_after_fork(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_client_mod, "_own_proxy", None)   # no proxy of ours yet

    def child():
        a = ProxyClient.get()
        seg = Segment(4096)
        a.publish(seg.key, seg.fd, {})
        pid = a.proxy_pid

        def grandchild():
            b = ProxyClient.get()
            return b is not a, b.proxy_pid  # joins the parent's proxy via os.environ

        res = in_child(grandchild)
        same = ProxyClient.get() is a
        a.close()
        return same, res, pid

    status, res = in_child(child)
    assert status == "ok", res
    same, (gstatus, (fresh, gpid)), pid = res
    assert same and gstatus == "ok" and fresh and gpid == pid
    assert wait_until(lambda: not _linux.pid_alive(pid))


# ------------------------------------------------------------------ no leaks

def test_1000_cycles_leak_no_fds(client):
    seg = make_segment(client)  # start the proxy; warm up
    addr, secret = client.address, client.secret
    proxy_fds = f"/proc/{client.proxy_pid}/fd"
    os.close(client.fetch(addr, secret, seg.key)[0])
    client.released_keys()
    mine, theirs = fd_count(), len(os.listdir(proxy_fds))
    fd = _linux.memfd_create("cycle")
    os.ftruncate(fd, 4096)
    released = set()
    for i in range(1000):
        key = f"{os.getpid()}-cycle-{i}"
        client.publish(key, fd, {"nbytes": 4096})
        f2, _ = client.fetch(addr, secret, key)
        os.close(f2)
        client.release(key)
        released |= client.released_keys()
    os.close(fd)
    assert len(released) == 1000
    assert fd_count() == mine
    # the proxy closes released memfds in a thread of its own, a moment later
    deadline = time.monotonic() + 10
    while len(os.listdir(proxy_fds)) > theirs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir(proxy_fds)) <= theirs  # a leak would be 1000 fds


def test_threads_share_one_client(client):
    # fetches and notice drains from several threads on one connection
    import threading
    segs = [make_segment(client, nbytes=4096) for _ in range(50)]
    addr, secret = client.address, client.secret
    other = ProxyClient()
    errors, released = [], set()
    lock = threading.Lock()

    def worker(i):
        try:
            for j in range(100):
                fd, meta = other.fetch(addr, secret, segs[(i + j) % 50].key)
                os.close(fd)
                assert meta["nbytes"] == 4096
                got = other.released_keys()
                with lock:
                    released.update(got)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    os.close(other.fetch(addr, secret, segs[0].key)[0])  # opens other's connection
    before = fd_count()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert fd_count() == before
        for s in segs[:10]:
            client.release(s.key)
        os.close(other.fetch(addr, secret, segs[-1].key)[0])  # notices precede the reply
        released |= other.released_keys()
        assert released == {s.key for s in segs[:10]}
    finally:
        other.close()


def test_interrupted_call_does_not_desynchronise_replies(client, monkeypatch):
    from driller.proxy import _client as proxy_client
    a = make_segment(client, 4096, tag="a")
    b = make_segment(client, 8192, tag="b")
    real = proxy_client._Conn._read_reply
    calls = []

    def interrupted(self, *deadline):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt  # as if Ctrl-C hit while waiting for the reply
        return real(self, *deadline)

    monkeypatch.setattr(proxy_client._Conn, "_read_reply", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.fetch(client.address, client.secret, a.key)
    fd, meta = client.fetch(client.address, client.secret, b.key)  # not a's late reply
    try:
        assert meta["tag"] == "b" and _linux.fd_inode(fd) == b.inode
    finally:
        os.close(fd)
    before = fd_count()
    assert [s["key"] for s in client.segments()] == [a.key, b.key]
    assert fd_count() == before  # a's late fd was closed, not leaked


# ------------------------------------------------------------------ logging

def test_diagnostics_go_to_the_driller_logger_only(client, monkeypatch, caplog):
    import logging
    # a stale DRILLER_PROXY (nobody listens there): the client says so at DEBUG, under
    # driller.proxy.*, and starts its own proxy (logged too, without the secret)
    monkeypatch.setenv(ENV_VAR, f"@driller-gone-{os.getpid()}|{'ab' * 16}")
    with caplog.at_level(logging.DEBUG, logger="driller"):
        make_segment(client)
    recs = [r for r in caplog.records if r.name.startswith("driller.")]
    names = {r.name for r in recs}
    assert names == {"driller.proxy._client", "driller.proxy._boot"}, names
    text = "\n".join(r.getMessage() for r in recs)
    assert "DRILLER_PROXY: no usable fd proxy" in text and "started an fd proxy at" in text, text
    assert client.secret.hex() not in text and "ab" * 16 not in text
    # the library's only handler is a NullHandler on "driller" (nothing printed unless
    # the application configures logging)
    handlers = logging.getLogger("driller").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler], handlers


@pytest.mark.parametrize("configured", [False, True])
def test_library_logs_only_where_the_application_says(configured):
    # the same two diagnostics in a plain program: printed (by the application's
    # handler) only once it configures logging; never the secret
    code = textwrap.dedent(f"""
        import os, logging
        if {configured}:
            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        os.environ["DRILLER_PROXY"] = "@driller-gone-%d|%s" % (os.getpid(), "cd" * 16)
        import driller, pickle
        a = driller.zeros(1000)
        pickle.dumps(a)                       # publishes: starts a proxy
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop(ENV_VAR, None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"
    if not configured:
        assert res.stderr == "", res.stderr
    else:
        lines = res.stderr.splitlines()
        assert any(ln.startswith("driller.proxy._client: DRILLER_PROXY: no usable fd proxy")
                   for ln in lines), lines
        assert any(ln.startswith("driller.proxy._boot: started an fd proxy at @driller-")
                   for ln in lines), lines
        assert "cd" * 16 not in res.stderr


# ------------------------------------------------------------------ the secret stays out of os.environ

def test_proxy_secret_stays_out_of_environ_forks_share_the_proxy(client):
    seg = make_segment(client, fill=3)
    pid, secret = client.proxy_pid, client.secret
    assert ENV_VAR not in os.environ and secret.hex() not in repr(dict(os.environ))

    def forked():   # a fork child (multiprocessing's fork, mmpi.spawn) joins our proxy
        c = ProxyClient.get()
        return c.proxy_pid, ENV_VAR in os.environ

    status, res = in_child(forked)
    assert status == "ok" and res == (pid, False), res
    # a plain subprocess of ours does not inherit the secret; it starts its own proxy
    code = textwrap.dedent("""
        import os, sys
        from driller.proxy import ProxyClient
        assert "DRILLER_PROXY" not in os.environ
        assert sys.argv[1] not in repr(dict(os.environ))
        print(ProxyClient.get().proxy_pid)
    """)
    out = subprocess.run([sys.executable, "-c", code, secret.hex()], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=50)
    assert out.returncode == 0, out.stderr
    child_proxy = int(out.stdout)
    assert child_proxy != pid
    assert wait_until(lambda: not _linux.pid_alive(child_proxy))   # gone with its client
    # proxy_info() without an address reports our own proxy
    assert proxy_info()["pid"] == pid and seg.key in [s["key"] for s in proxy_info()["segments"]]


# ------------------------------------------------------------------ lease numbers

def test_loaded_handle_numbers_are_kept_as_runs():
    """A lease's loaded handle numbers travel and are kept as runs: an array
    pickled a hundred thousand times and loaded in order is one run (it was a set,
    capped at 16 numbers per drop, and the lease waited DRILLER_LEASE_SECONDS)."""
    from driller.proxy._wire import RANGES_KEPT, add_run, covers
    runs: list = []
    for n in range(1, 100_001):
        assert add_run(runs, n, n)
    assert runs == [[1, 100_000]] and covers(runs, 100_000) and not covers(runs, 100_001)
    runs = []
    for n in (5, 3, 1, 2, 4, 9):
        assert add_run(runs, n, n)
    assert runs == [[1, 5], [9, 9]] and covers(runs, 5) and not covers(runs, 9)
    runs = []
    for k in range(RANGES_KEPT):
        assert add_run(runs, 2 * k + 1, 2 * k + 1)
    assert not add_run(runs, 1000, 1000) and len(runs) == RANGES_KEPT   # refused, as is
    assert add_run(runs, 2, 2) and runs[0] == [1, 3]   # one that merges is taken
    assert covers([], 0) and not covers([], 1) and not covers([[2, 9]], 3)


def test_runs_added_in_any_order_are_the_numbers_merged():
    """add_run (by bisection) against the numbers themselves: random runs, in any
    order, overlapping, adjacent, inside others, each result sorted, disjoint and
    not adjacent, holding exactly the numbers added."""
    import random
    from driller.proxy._wire import add_run
    rng = random.Random(7)
    for trial in range(300):
        runs: list = []
        numbers: set = set()
        top = rng.choice((20, 200, 5000))
        for _ in range(rng.randint(1, 60)):
            lo = rng.randint(1, top)
            hi = lo + rng.choice((0, 0, 1, 2, rng.randint(0, top // 4)))
            assert add_run(runs, lo, hi, 10_000)
            numbers.update(range(lo, hi + 1))
        got = set()
        for k, (a, b) in enumerate(runs):
            assert a <= b and (k == 0 or runs[k - 1][1] + 1 < a), runs
            got.update(range(a, b + 1))
        assert got == numbers, (trial, runs)


def test_a_request_of_many_scattered_runs_costs_the_proxy_at_most_the_cap(monkeypatch):
    """One ("issued", ...) of 85,000 scattered runs held the proxy (each add past
    the cap sorted all 4,096 kept runs again before refusing): 67 s during which no
    other client was served.  Now the rest of a request is dropped at the first
    refusal, and each add costs a bisection."""
    from driller.proxy import _server
    from driller.proxy._wire import RANGES_KEPT_PROXY
    calls = []
    real = _server.add_run
    monkeypatch.setattr(_server, "add_run", lambda *a: calls.append(1) or real(*a))
    lease = _server._Lease(1, None, 0)
    lease.said(tuple((3 * k + 1, 3 * k + 1) for k in range(85_000)))
    assert len(lease.loaded) == RANGES_KEPT_PROXY and len(calls) == RANGES_KEPT_PROXY + 1
    calls.clear()
    lease.said(frozenset(3 * k + 2 for k in range(85_000)))   # (merges into kept runs)
    assert len(calls) <= 2 * RANGES_KEPT_PROXY + 1 and len(lease.loaded) <= RANGES_KEPT_PROXY


def test_a_lease_takes_what_its_holders_say_and_nothing_malformed():
    from driller.proxy._server import _Lease
    lease = _Lease(1, None, 0)
    lease.said((3, ((1, 2),)))        # its maker: 3 made, numbers 1 and 2 loaded itself
    assert lease.issued == 3 and lease.claimed and not lease.all_loaded()
    lease.said(frozenset({3}))        # a loader's numbers (the older form)
    assert lease.all_loaded()
    lease.said(5)                     # two more made later: each must be loaded
    assert not lease.all_loaded()
    lease.said(((4, 5),))
    assert lease.all_loaded() and lease.loaded == [[1, 5]]
    for bad in ("x", None, (1,), (1, "no"), ((0, 2),), ((3, 1),), ((1.0, 2),), (("a", "b"),),
                frozenset({-1, "z"}), (7, ((9,),))):
        lease.said(bad)               # ignored, never raises (a buggy or hostile client)
    assert lease.loaded == [[1, 5]] and lease.issued == 7 and not lease.all_loaded()
    from driller.proxy._wire import FORWARDED, FORWARD_SPAN
    lease.said(((6, 7),))
    assert lease.all_loaded()
    b1, b2 = FORWARDED + FORWARD_SPAN, FORWARDED + 2 * FORWARD_SPAN
    lease.forwarded = {b1: None, b2: None}   # ranges given to two forwarding processes
    lease.said((0, (), ((b1, 2),)))   # the first made 2 pickles, none loaded yet
    lease.said(((b1 + 1, b1 + 2),))
    assert not lease.all_loaded()     # (the second never said its count: waited for)
    for bad in ((0, (), ((b2 + 1, 1),)), (0, (), ((b2, -1),)), (0, (), ((b2, FORWARD_SPAN),)),
                (0, (), (([b2], 1),)), (0, (), ((b2, 1.0),)), (0, (), "x")):
        lease.said(bad)               # an unknown range, a bad count: ignored
    assert lease.forwarded == {b1: 2, b2: None} and not lease.all_loaded()
    lease.said((0, (), ((b2, 1),)))
    assert not lease.all_loaded()
    lease.said(frozenset({b2 + 1}))
    assert lease.all_loaded() and lease.loaded == [[1, 7], [b1 + 1, b1 + 2], [b2 + 1, b2 + 1]]
    lease = _Lease(3, None, 0)        # a loader's three runs are not the forwarder's
    lease.said(((1, 1), (3, 3), (5, 5)))    # (made, runs, ranges) form
    assert lease.loaded == [[1, 1], [3, 3], [5, 5]]
    lease = _Lease(2, None, 0)        # loads in any order: the proxy keeps more runs
    lease.said(34)
    for n in list(range(1, 35, 2)) + list(range(2, 35, 2)):
        lease.said(frozenset({n}))
    assert lease.all_loaded() and lease.loaded == [[1, 34]]


def test_a_lease_gives_a_bounded_number_of_forwarding_ranges():
    # each "number" request kept a range at the proxy (about 100 bytes) until the
    # lease ended: a holder asking in a loop grew the proxy without bound
    import driller
    from driller.proxy import ProxyClient
    from driller.proxy._server import _MAX_FORWARD_RANGES
    a = driller.zeros(10)
    h = driller.handle(a)
    client = ProxyClient.get()
    bases = {client.number(h.proxy, h.lease) for _ in range(_MAX_FORWARD_RANGES)}
    assert len(bases) == _MAX_FORWARD_RANGES
    with pytest.raises(ProxyError, match=f"has given {_MAX_FORWARD_RANGES} ranges"):
        client.number(h.proxy, h.lease)
