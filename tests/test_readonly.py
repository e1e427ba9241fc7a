"""Read-only handles are enforced by the kernel (F_SEAL_FUTURE_WRITE), or refused.

A real peer process (another interpreter) gets each kind of read-only handle
and tries every route to writing the memory (tests/_ro_peer.py); each must be
refused with the errno the kernel gives, the owner's bytes must be unchanged,
and the owner must still write its own array, which the peer then sees.
"""

import errno
import gc
import mmap
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import driller
from driller import _linux, mapcache

import _ro_peer
from _helpers import heap_array as _heap_array

HERE = os.path.dirname(__file__)
SRC = os.path.join(os.path.dirname(HERE), "src")

EPERM, EACCES = errno.EPERM, errno.EACCES
# route (per fd of the memfd) -> the errno the kernel must refuse it with
FD_ROUTES = {
    "pwrite": EPERM, "write": EPERM, "mmap_shared_rw": EPERM, "mmap_raw_rw": EPERM,
    "ftruncate_shrink": EPERM, "ftruncate_grow": EPERM,
    "add_seal_write": EPERM, "add_seal_future_write": EPERM, "punch_hole": EPERM,
    "mprotect_new_ro_mapping": EACCES, "madvise_remove": EACCES,
    "reopen_rdwr_pwrite": EPERM, "reopen_wronly_pwrite": EPERM, "reopen_rdwr_mmap_rw": EPERM,
}


@pytest.fixture
def pool():
    with multiprocessing.get_context("spawn").Pool(1) as p:
        yield p


def _vma(arr) -> tuple[int, int]:
    m = _linux.query_mapping(arr.__array_interface__["data"][0])
    return m.start, m.end


def _seals_of(arr) -> int:
    lo, hi = _vma(arr)
    fd = os.open(f"/proc/self/map_files/{lo:x}-{hi:x}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _linux.get_seals(fd)
    finally:
        os.close(fd)


def _make(kind):
    """(owner's array, read-only handle, pickle or None, closer)."""
    if kind == "drill":
        a = np.arange(1 << 16, dtype=np.float64)  # 512 KiB: a glibc mapping of its own
        hole = driller.drill(a, readonly=True)
        return a, hole.handle, None, hole.close
    if kind == "drill-heap":
        a = _heap_array()
        a[:] = np.arange(a.size)
        hole = driller.drill(a, readonly=True)
        return a, hole.handle, None, hole.close
    a = driller.zeros(1 << 16)  # 512 KiB: a segment of its own
    a[:] = np.arange(a.size)
    h = driller.handle(a, readonly=True)
    return a, h, (pickle.dumps(a) if kind == "sharedarray-pickle" else None), lambda: None


def _check_refused(res: dict, key: str, want_errno: int | None, want_type=None):
    got = res[key]
    assert got[0] == "refused", f"{key}: the peer could write: {got}"
    if want_errno is not None:
        assert got[2] == want_errno, \
            f"{key}: refused with {_ro_peer.errno_name(got[2])} ({got[1]}), " \
            f"not {_ro_peer.errno_name(want_errno)}"
    if want_type is not None:
        assert got[1] == want_type, f"{key}: {got}"


@pytest.mark.parametrize("kind", ["drill", "drill-heap", "sharedarray", "sharedarray-pickle"])
def test_every_write_route_is_refused_to_a_readonly_peer(kind, pool):
    a, h, pickled, close = _make(kind)
    try:
        assert h.readonly
        expected = a.copy()
        proxy_pid = mapcache.ProxyClient.get().proxy_pid
        res = pool.apply(_ro_peer.attack, (h, os.getpid(), _vma(a), proxy_pid, pickled))

        assert not [k for k, v in res.items() if isinstance(v, tuple) and v[0] == "ALLOWED"], res
        _check_refused(res, "attach_writable", None, "DrillerError")
        _check_refused(res, "attach_forged_writable_handle", None, "ReadOnlyError")
        assert res["writeable_flag"] is False and res["own_mapping_writable"] is False
        assert res["handle_of_attached_is_readonly"] is True
        _check_refused(res, "flip_writeable", None, "ValueError")
        _check_refused(res, "numpy_store", None, "ValueError")
        _check_refused(res, "mprotect_own_mapping", EACCES)
        assert res["proxy_proc_fd_found"], "the proxy's fd of the memfd was not found"
        prefixes = ["proxy_fd:", "proxy_proc_fd:", "map_files_self:", "map_files_owner:"]
        for prefix in prefixes:
            if prefix == "map_files_self:" and "map_files_self_open" in res:
                _check_refused(res, "map_files_self_open", None)  # also fine: no fd at all
                continue
            if prefix == "map_files_owner:" and "map_files_owner_open" in res:
                _check_refused(res, "map_files_owner_open", None)
                continue
            for route, want in FD_ROUTES.items():
                _check_refused(res, prefix + route, want)
        assert res["sum"] == float(expected.sum())

        # the owner's bytes are unchanged; the owner still writes, the peer sees it
        assert np.array_equal(a, expected)
        a[:] = 3.0
        assert pool.apply(_ro_peer.kept_sum) == 3.0 * a.size
        pool.apply(_ro_peer.drop)
    finally:
        close()


def test_readonly_segment_is_sealed_and_every_later_handle_is_readonly(pool):
    a = driller.zeros(1 << 16)
    a[:] = 2.0
    h = driller.handle(a, readonly=True)
    seals = _seals_of(a)
    assert seals & _linux.F_SEAL_FUTURE_WRITE and seals & _linux.F_SEAL_SEAL
    assert driller.handle(a).readonly and driller.handle(a[10:20]).readonly
    assert pickle.loads(pickle.dumps(h)).readonly
    writeable, ro, total = pool.apply(_ro_peer.load_readonly_flags, (pickle.dumps(a[::2]),))
    assert (writeable, ro, total) == (False, True, 2.0 * (a.size // 2))
    a[0] = 5.0  # the owner's own mapping stays writable
    assert a[0] == 5.0


def test_a_segment_shared_writable_cannot_become_readonly(pool):
    a = driller.zeros(1 << 16)
    data = pickle.dumps(a)  # shared writable (pickles are writable by default)
    seals = _seals_of(a)
    assert seals & _linux.F_SEAL_SEAL and not seals & _linux.F_SEAL_FUTURE_WRITE
    with pytest.raises(driller.ReadOnlyError, match="already shared writable.*read-only "
                       "handle first"):
        driller.handle(a, readonly=True)
    assert not driller.handle(a).readonly
    # a holder of the writable handle cannot lock the owner out with a seal either
    kind, name, code = pool.apply(_ro_peer.try_add_seal, (driller.handle(a),))
    assert (kind, code) == ("refused", EPERM), (kind, name, code)
    # nor make a read-only handle of it: only the owner can seal, and it is too late
    kind, msg = pool.apply(_ro_peer.reshare_readonly, (data,))
    assert kind == "ReadOnlyError" and "shared writable" in msg, msg
    # what the message says to do instead works: a copy, read-only from the start
    h = driller.handle(driller.array(a), readonly=True)
    assert h.readonly


def test_arena_array_readonly_handle_is_refused_and_the_advice_works(pool):
    a = driller.zeros(100)
    a[:] = np.arange(100)
    with pytest.raises(driller.ReadOnlyError, match="arena") as info:
        driller.handle(a, readonly=True)
    assert "drill(buf, readonly=True)" in str(info.value)
    assert not driller.handle(a).readonly  # the arena stays writable-shared, as always
    # the advice in the message
    n = -(-a.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE)
    v = np.frombuffer(buf, a.dtype, a.size).reshape(a.shape)
    v[...] = a
    hole = driller.drill(buf, readonly=True)
    h = driller.handle(v, readonly=True)
    assert h.readonly and h.shape == a.shape
    proxy_pid = mapcache.ProxyClient.get().proxy_pid
    res = pool.apply(_ro_peer.attack, (h, os.getpid(), _vma(v), proxy_pid))
    assert not [k for k, val in res.items() if isinstance(val, tuple) and val[0] == "ALLOWED"]
    assert res["sum"] == float(a.sum())
    pool.apply(_ro_peer.drop)
    del v
    hole.close()
    buf.close()


def test_hole_shared_writable_then_readonly_is_refused():
    a = np.ones(1 << 16)
    with driller.drill(a) as hole:
        assert not hole.handle.readonly
        with pytest.raises(driller.ReadOnlyError, match=r"drill\(obj, readonly=True\) from "
                           "the start"):
            driller.handle(a, readonly=True)
        with pytest.raises(driller.ReadOnlyError):
            hole.handle_for(None, readonly=True)
        assert not hole.readonly


def test_hole_first_shared_readonly_stays_readonly():
    a = np.ones(1 << 16)
    with driller.drill(a) as hole:
        assert not hole.readonly
        assert driller.handle(a[5:], readonly=True).readonly  # never shared: sealed now
        assert hole.readonly and hole.handle.readonly
        assert _seals_of(a) & _linux.F_SEAL_FUTURE_WRITE


@pytest.mark.parametrize("where", ["own-mapping", "heap", "heap-no-dontunmap"])
def test_fork_of_a_readonly_hole_keeps_the_owner_writable_and_shared(where, request,
                                                                      monkeypatch):
    """The fork hooks never map the sealed memfd again: edge pages are parked (mremap).

    The peer pool (multiprocessing runs three threads beside it) starts after the
    forks: forking a process with threads may deadlock the child."""
    if where == "heap-no-dontunmap":  # as on Linux < 5.13: the parked page is moved
        monkeypatch.setattr(_linux, "mremap_keep", lambda *a: False)
    a = _heap_array() if where.startswith("heap") else np.full(1 << 16, 1.0)
    a[:] = 1.0
    with driller.drill(a, readonly=True) as hole:
        h = hole.handle
        proxy_pid = mapcache.ProxyClient.get().proxy_pid
        for _ in range(20):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 0
                try:
                    junk = [bytearray(64 + i) for i in range(2000)]
                    del junk
                    a[:] = 2.0  # private in the child
                    m = _linux.query_mapping(a.ctypes.data + 8 * (a.size // 2))
                    code = 0 if not m.shared else 3
                except BaseException:
                    code = 4
                os._exit(code)
            junk = [bytearray(64 + i) for i in range(2000)]
            del junk
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert (a == 1.0).all()
        assert hole.verify()  # every page, edges included, is the memfd mapping again
        pool = request.getfixturevalue("pool")
        res = pool.apply(_ro_peer.attack, (h, os.getpid(), _vma(a), proxy_pid))
        assert not [k for k, v in res.items() if isinstance(v, tuple) and v[0] == "ALLOWED"]
        a[:] = 7.0  # first and last elements live on the edge pages
        assert pool.apply(_ro_peer.kept_sum) == 7.0 * a.size
        pool.apply(_ro_peer.drop)


_THRESHOLD_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np
    import driller
    from driller import hole
    if sys.argv[1] == "drill":
        buf = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)
        driller.drill(buf).close()
    own = []
    for freed, size in ((16 << 20, 8 << 20), (24 << 20, 4 << 20)):
        big = np.ones(freed // 8)   # glibc maps it; freeing it raises the dynamic threshold
        del big
        keep = []
        for make in (lambda: np.ones(size // 8), lambda: bytearray(size)):
            x = make()
            mv = memoryview(x).cast("B")
            p = ctypes.addressof((ctypes.c_char * len(mv)).from_buffer(mv))
            mv.release()
            own.append(hole._glibc_chunk_extent(p) is not None)
            keep.append(x)
        del keep
    print(" ".join(map(str, own)))
""")


def test_first_drill_fixes_the_mmap_threshold():
    """Freeing a 16 MiB array raises glibc's dynamic mmap threshold to 16 MiB, and
    later 4-8 MiB arrays and bytearrays land in the heap; after the first drill()
    the threshold stays at 128 KiB and they get mappings of their own."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):  # glibc defaults, as users have
        env.pop(var, None)
    out = {}
    for mode in ("plain", "drill"):
        r = subprocess.run([sys.executable, "-c", _THRESHOLD_PROBE, mode], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[mode] = r.stdout.split()
    assert out["drill"] == ["True"] * 4, out   # every buffer: a mapping of its own
    assert out["plain"] == ["False"] * 4, out  # glibc's dynamic threshold otherwise


def test_set_mmap_threshold_reports_success():
    assert _linux.set_mmap_threshold(128 << 10) is True
    gc.collect()


def test_seal_state_is_read_back_when_another_process_sealed_first():
    """A forked child may publish (and so seal) an inherited segment first: the
    owner then follows the seal the kernel holds instead of failing on F_SEAL_SEAL.
    The child may only seal it writable, as the owner would: a read-only seal is
    the owner's to choose (it binds every later handle of the owner's)."""
    from driller.segment import Segment
    import _helpers
    seg = Segment(1 << 16, "array")
    try:
        got = _helpers.in_child(seg.seal, True)
        assert got[0] == "err" and got[1].startswith("ReadOnlyError: ") \
            and f"belongs to process {os.getpid()}" in got[1] \
            and "driller.array(a), readonly=True" in got[1], got
        assert not _linux.get_seals(seg.fd) & _linux.F_SEAL_SEAL  # left unsealed
        assert _helpers.in_child(seg.seal, False) == ("ok", False)
        assert seg.sealed_readonly is None  # this process has not sealed it
        with pytest.raises(driller.ReadOnlyError, match="already shared writable"):
            seg.seal(True)
        assert seg.seal(False) is False
    finally:
        seg.close_fd()
    seg = Segment(1 << 16, "array")   # the owner's read-only seal is the child's too
    try:
        assert seg.seal(True) is True
        assert _helpers.in_child(seg.seal, True) == ("ok", True)
        assert _helpers.in_child(seg.seal, False) == ("ok", True)
    finally:
        seg.close_fd()


_INHERITED = None   # an array a fork worker finds in its copy of this module


def _readonly_handle_of_inherited():
    try:
        return ("ok", driller.handle(_INHERITED, readonly=True).readonly)
    except driller.ReadOnlyError as e:
        return ("refused", str(e))


def _write_all(a, value):
    a[...] = value
    return float(a.sum())


def test_a_fork_worker_cannot_make_its_parents_array_readonly(request):
    """A fork Pool worker asking a read-only handle of an array it inherited (its
    parent had not shared it) is refused: the seal would have made every later
    pickle of the parent's read-only, and the workers the parent then sends the
    array to could not write their results into it.  (The spawn pool starts
    after the fork: forking a process with threads may deadlock the child.)"""
    global _INHERITED
    _INHERITED = a = driller.zeros(1 << 16)   # 512 KiB: a segment of its own
    try:
        with multiprocessing.get_context("fork").Pool(1) as forked:
            got = forked.apply(_readonly_handle_of_inherited)
    finally:
        _INHERITED = None
    assert got[0] == "refused" and f"belongs to process {os.getpid()}" in got[1], got
    pool = request.getfixturevalue("pool")
    assert pool.apply(_write_all, (a[1:], 3.0)) == 3.0 * (a.size - 1)
    assert (a[1:] == 3.0).all() and a[0] == 0.0


def _try_subtract_mean(x):
    try:
        x -= x.mean()
        return ("wrote", bool(x.flags.writeable))
    except ValueError as e:
        return ("refused", str(e))


@pytest.mark.parametrize("n", [100, 1 << 16])   # an arena's block; a segment of its own
def test_a_pickle_of_a_non_writeable_array_loads_non_writeable(pool, n):
    # numpy's writeable=False was not carried by the pickle: a worker got a
    # writable view of the owner's memory, and its in-place writes landed there
    a = driller.array(np.arange(float(n)))
    a.flags.writeable = False
    kind, msg = pool.apply(_try_subtract_mean, (a,))
    assert kind == "refused" and "read-only" in msg, (kind, msg)
    assert (a == np.arange(float(n))).all()
    assert driller.handle(a[1:]).readonly
    w = driller.array(np.arange(float(n)))   # a writeable one stays writable
    assert pool.apply(_try_subtract_mean, (w,)) == ("wrote", True)
    assert w.mean() == 0.0
