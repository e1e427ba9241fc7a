"""The map cache with real proxies, memfds and mappings.

Each test body runs in a forked child: the process-wide ProxyClient and cache()
are per process, so the pytest process's own (which other test files may use)
stay untouched, and the child's exit proves nothing outlives it.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal

import numpy as np
import pytest

from _helpers import in_child, wait_until

from driller import _linux
from driller.errors import DrillerError, SegmentReleasedError
from driller.proxy import ENV_VAR, ProxyClient
from driller.proxy import _client
from driller.mapcache import MapCache, cache, default_max_entries
from driller.segment import Segment

pytestmark = pytest.mark.timeout(60)


def run(body, *args):
    """body(owner, *args) in a child with a fresh proxy; owner publishes, cache() fetches."""
    def child():
        os.environ.pop(ENV_VAR, None)
        _client._own_proxy = None   # not the parent's proxy (inherited through the fork)
        owner = ProxyClient()
        try:
            res = body(owner, *args)
            pid = owner.proxy_pid
        finally:
            owner.close()
            ProxyClient.get().close()
        return res, pid

    status, res = in_child(child)
    assert status == "ok", res
    result, proxy_pid = res
    assert wait_until(lambda: not _linux.pid_alive(proxy_pid)), "proxy outlived its job"
    return result


def publish(owner, nbytes=4096, fill=None):
    seg = Segment(nbytes)
    if fill is not None:
        np.asarray(seg.region)[:] = fill
    owner.publish(seg.key, seg.fd, {"nbytes": seg.nbytes})
    return seg


def counts(info):
    return {k: info[k] for k in ("hits", "misses", "evictions", "invalidations", "entries")}


# ------------------------------------------------------------------

def test_hits_misses_and_separate_readonly_entries():
    def body(owner):
        a, s = owner.address, owner.secret
        seg = publish(owner, 8192, fill=4)
        mc = MapCache()
        r1 = mc.map(a, s, seg.key, 8192)
        r2 = mc.map(a, s, seg.key, 8192)
        r3 = mc.map(a, s, seg.key, 4096)       # smaller: served by the same mapping
        ro = mc.map(a, s, seg.key, 8192, readonly=True)
        ro2 = mc.map(a, s, seg.key, 8192, readonly=True)
        assert r1 is r2 is r3 and ro is ro2 and ro is not r1
        assert ro.readonly and not r1.readonly
        assert np.asarray(ro).sum() == 4 * 8192
        with pytest.raises(ValueError):
            np.asarray(ro)[0] = 1
        np.asarray(r1)[0] = 99
        assert np.asarray(seg.region)[0] == 99 and np.asarray(ro)[0] == 99
        info = mc.info()
        assert info["bytes"] == 2 * 8192
        return counts(info)

    assert run(body) == {"hits": 3, "misses": 2, "evictions": 0, "invalidations": 0,
                         "entries": 2}


def test_entry_bound_is_lru():
    def body(owner):
        a, s = owner.address, owner.secret
        segs = [publish(owner) for _ in range(5)]
        mc = MapCache(max_entries=3)
        for seg in segs[:3]:
            mc.map(a, s, seg.key, 4096)
        mc.map(a, s, segs[0].key, 4096)        # 0 is now the most recent
        mc.map(a, s, segs[3].key, 4096)        # evicts 1
        mc.map(a, s, segs[4].key, 4096)        # evicts 2
        present = [seg.key in mc for seg in segs]
        return present, counts(mc.info()), mc.info()["bytes"]

    present, c, nbytes = run(body)
    assert present == [True, False, False, True, True]
    assert c == {"hits": 1, "misses": 5, "evictions": 2, "invalidations": 0, "entries": 3}
    assert nbytes == 3 * 4096


def test_byte_bound():
    def body(owner):
        a, s = owner.address, owner.secret
        small = [publish(owner, 4096) for _ in range(4)]
        big = publish(owner, 5 * 4096)
        mc = MapCache(max_bytes=3 * 4096)
        seen = []
        for seg in small:
            mc.map(a, s, seg.key, 4096)
            seen.append(mc.info()["bytes"])
        mc.map(a, s, big.key, big.nbytes)      # alone above the bound: kept, all else out
        return seen, counts(mc.info()), mc.info()["bytes"], big.key in mc

    seen, c, nbytes, big_in = run(body)
    assert seen == [4096, 8192, 12288, 12288]
    assert c["entries"] == 1 and c["evictions"] == 4 and big_in and nbytes == 5 * 4096


def test_release_invalidates():
    def body(owner):
        a, s = owner.address, owner.secret
        seg, other = publish(owner, fill=1), publish(owner)
        mc = MapCache()
        rw = mc.map(a, s, seg.key, 4096)
        mc.map(a, s, seg.key, 4096, readonly=True)
        view = np.asarray(rw)
        owner.release(seg.key)                 # synchronous: the notice is on its way
        with pytest.raises(SegmentReleasedError, match=seg.key):
            mc.map(a, s, seg.key, 4096)
        mc.map(a, s, other.key, 4096)
        info = counts(mc.info())
        return info, int(view.sum()), seg.key in mc

    info, total, still = run(body)
    assert info == {"hits": 0, "misses": 4, "evictions": 0, "invalidations": 2, "entries": 1}
    assert total == 4096 and not still        # the view handed out earlier still works


def test_a_drained_notice_is_never_followed_by_a_hit():
    """Thread A drains key K's release notice and is descheduled before it drops
    K; thread B maps K meanwhile: B must not get the released region from the
    cache (before: a stale hit, A's notice taken and not yet acted on)."""
    import threading
    import time

    def body(owner):
        a, s = owner.address, owner.secret
        seg = publish(owner, fill=1)
        mc = MapCache()
        r0 = mc.map(a, s, seg.key, 4096)
        owner.release(seg.key)
        client = ProxyClient.get()
        real = client.released_keys
        drained, b_started = threading.Event(), threading.Event()

        def late_released_keys():
            out = real()
            if threading.current_thread().name == "A" and out:
                drained.set()        # A has the notice ...
                b_started.wait(10)   # ... and B runs before A drops the key
                time.sleep(0.2)
            return out

        client.released_keys = late_released_keys
        res = {}

        def map_as(name):
            if name == "B":
                drained.wait(10)
                b_started.set()
            try:
                res[name] = "stale hit" if mc.map(a, s, seg.key, 4096) is r0 else "new"
            except SegmentReleasedError:
                res[name] = "released"

        ts = [threading.Thread(target=map_as, args=(n,), name=n) for n in "AB"]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        client.released_keys = real
        return res, drained.is_set()

    res, drained = run(body)
    assert drained and res == {"A": "released", "B": "released"}, res


def test_owner_death_invalidates():
    def body(owner):
        a, s = owner.address, owner.secret
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - grandchild: the owner
            try:
                seg = publish(ProxyClient.get(), fill=3)
                os.write(w, seg.key.encode())
                signal.pause()
            finally:
                os._exit(1)
        os.close(w)
        key = os.read(r, 200).decode()
        os.close(r)
        mc = MapCache()
        view = mc.map(a, s, key, 4096).array(np.int32)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        def gone():
            try:
                mc.map(a, s, key, 4096)
            except SegmentReleasedError:
                return True
            return False

        assert wait_until(gone)
        return int(view[0]), counts(mc.info())["invalidations"]

    assert run(body) == (0x03030303, 1)


def test_eviction_never_breaks_a_live_view():
    def body(owner):
        a, s = owner.address, owner.secret
        segs = [publish(owner, 1 << 16, fill=i + 1) for i in range(3)]
        mc = MapCache(max_entries=1)
        view = mc.map(a, s, segs[0].key, 1 << 16).array(np.uint16)
        addr = view.__array_interface__["data"][0]
        for seg in segs[1:]:
            mc.map(a, s, seg.key, 1 << 16)     # evicts the region under `view`
        mc.clear()
        gc.collect()
        mapped = _linux.query_mapping(addr) is not None
        ok = bool(np.all(view == 0x0101))
        view[:] = 7                            # still the owner's memory
        shared = int(np.asarray(segs[0].region).view(np.uint16)[5])
        del view
        gc.collect()
        m = _linux.query_mapping(addr)
        unmapped = m is None or m.inode != segs[0].inode[1]
        return mapped, ok, shared, unmapped, mc.info()["evictions"]

    assert run(body) == (True, True, 7, True, 2)


def test_1000_segments_no_fd_or_mapping_growth():
    def maps_lines():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    def cycle(owner, mc, n):
        a, s = owner.address, owner.secret
        for i in range(n):
            seg = publish(owner)
            v = mc.map(a, s, seg.key, 4096).array(np.uint32)
            v[0] = i
            assert np.asarray(seg.region).view(np.uint32)[0] == i
            del v
            owner.release(seg.key)
            seg.close_fd()
            del seg
        mc.map(a, s, keep.key, 4096)           # drains the last notices

    def body(owner):
        global keep
        keep = publish(owner)
        mc = MapCache()
        cycle(owner, mc, 20)                   # warm up (allocator, sockets)
        gc.collect()
        fds, maps = len(os.listdir("/proc/self/fd")), maps_lines()
        cycle(owner, mc, 1000)
        gc.collect()
        return (len(os.listdir("/proc/self/fd")) - fds, maps_lines() - maps,
                counts(mc.info()))

    dfds, dmaps, c = run(body)
    assert dfds == 0
    assert dmaps <= 8                          # a leak would be >= 1000 lines
    assert c["entries"] == 1 and c["misses"] == 1021 and c["invalidations"] == 1020


def test_handle_larger_than_segment_is_refused():
    def body(owner):
        seg = publish(owner, 4096)
        with pytest.raises(DrillerError, match="fewer than"):
            MapCache().map(owner.address, owner.secret, seg.key, 1 << 20)
        return True

    assert run(body) is True


def test_process_cache_is_fresh_after_fork():
    def body(owner):
        seg = publish(owner)
        a, s = owner.address, owner.secret
        c = cache()
        c.map(a, s, seg.key, 4096)
        assert cache() is c and len(c) == 1

        def grandchild():
            g = cache()
            return g is not c, len(g), g.map(a, s, seg.key, 4096).nbytes
        return in_child(grandchild)

    assert run(body) == ("ok", (True, 0, 4096))


def test_bounds_defaults_and_env(monkeypatch):
    assert default_max_entries() <= min(4096, _linux.max_map_count() // 8)
    mc = MapCache()
    assert mc.max_entries == default_max_entries() and mc.max_bytes >= 256 << 20
    monkeypatch.setenv("DRILLER_CACHE_MAX_ENTRIES", "7")
    monkeypatch.setenv("DRILLER_CACHE_MAX_BYTES", "1048576")
    mc = MapCache()
    assert (mc.max_entries, mc.max_bytes) == (7, 1 << 20)
    assert MapCache(max_entries=3).max_entries == 3
    monkeypatch.setenv("DRILLER_CACHE_MAX_ENTRIES", "lots")
    with pytest.raises(DrillerError):
        MapCache()


@pytest.mark.parametrize("value, taken", [
    ("1e3", 1000), ("0x10", 16), ("0xE0", 224), (" 12 ", 12), ("017", 17), ("+0x1e3", 483),
    ("lots", None), ("0", None), ("-5", None), ("1.5", None), ("1e999", None), ("nan", None),
    ("inf", None)])
def test_cache_bounds_from_the_environment_are_refused_by_name(monkeypatch, value, taken):
    # one reader for every DRILLER_* number (driller._env): a bad value names the
    # variable, what it takes and the docs; before, 1e999 raised OverflowError,
    # 1.5 was taken as 1 and 0xE0 (an 'E' in it) was refused as "not a number"
    monkeypatch.setenv("DRILLER_CACHE_MAX_ENTRIES", value)
    if taken is not None:
        assert MapCache().max_entries == taken
        return
    with pytest.raises(DrillerError) as e:
        MapCache()
    assert str(e.value) == (f"DRILLER_CACHE_MAX_ENTRIES={value!r}: give a positive whole number "
                            "(1e9 is taken) (docs/configuration.md), or leave it unset for the "
                            "default"), str(e.value)
