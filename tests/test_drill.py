"""drill(): existing buffers made shareable in place, and everything that must be refused."""

import gc
import mmap
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import pickle
import signal

import numpy as np
import pytest

import driller
from driller import _linux, _pep3118

import _peer
from _helpers import heap_array as _heap_array

HERE = os.path.dirname(__file__)


def _addr(obj) -> int:
    return _linux.buffer_address(memoryview(obj))[0]


def _is_memfd(addr: int) -> bool:
    m = _linux.query_mapping(addr)
    return m.shared and "memfd:driller:hole" in m.name


def _spawn_pool():
    return multiprocessing.get_context("spawn").Pool(1)


@pytest.mark.parametrize("make", [
    lambda: np.arange(1 << 20, dtype=np.float64),               # 8 MiB, own glibc mapping
    lambda: np.arange(1 << 17, dtype=np.int32),                 # 512 KiB
    lambda: mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE),        # one page, page-aligned
    lambda: bytearray(os.urandom(1 << 20)),                     # 1 MiB bytearray
], ids=["8MiB-array", "512KiB-array", "1-page-mmap", "1MiB-bytearray"])
def test_drill_keeps_address_and_bytes_and_shares(make):
    obj = make()
    before = bytes(memoryview(obj).cast("B"))
    addr = _addr(obj)
    with driller.drill(obj) as hole:
        assert _addr(obj) == addr and hole.address == addr
        assert bytes(memoryview(obj).cast("B")) == before
        assert _is_memfd(addr)
        with _spawn_pool() as pool:  # an unrelated interpreter writes our memory
            s = pool.apply(_peer.attach_and_fill, (hole.handle, 3))
        view = np.frombuffer(memoryview(obj).cast("B"), np.uint8) if not \
            isinstance(obj, np.ndarray) else obj
        assert (view == 3).all()
        assert s == float(3 * view.size)
    assert not _is_memfd(addr)                # private again, same place, same bytes
    assert _addr(obj) == addr
    assert (view == 3).all()


def test_attached_array_has_owner_dtype_and_shape():
    a = np.zeros((512, 256), np.float32)
    with driller.drill(a) as hole:
        b = driller.attach(hole.handle)  # same process: a view of the same memory
        assert b.shape == a.shape and b.dtype == a.dtype
        b[3, 4] = 9
        assert a[3, 4] == 9


@pytest.mark.parametrize("obj,match", [
    (np.zeros(10), "shares its first or last page"),
    (bytearray(100), "shares its first or last page"),
    (bytes(1 << 20), "read-only"),
    (np.zeros((1024, 1024))[:, ::2], "contiguous"),
    (object(), "buffer protocol"),
    (bytearray(), "empty"),
])
def test_refused_buffers(obj, match):
    with pytest.raises(driller.DrillError, match=match):
        driller.drill(obj)


def test_file_backed_and_already_shared_memory_refused():
    with tempfile.TemporaryFile() as f:
        f.truncate(1 << 16)
        m = mmap.mmap(f.fileno(), 1 << 16)
        with pytest.raises(driller.DrillError, match="file-backed"):
            driller.drill(m)
        m.close()
    shared = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_SHARED)
    with pytest.raises(driller.DrillError, match="already shared.*MAP_PRIVATE"):
        driller.drill(shared)
    shared.close()
    with pytest.raises(driller.DrillError, match="already shared"):
        driller.drill(driller.zeros(1 << 20))


def test_drilling_twice_is_refused():
    a = np.ones(1 << 18)
    with driller.drill(a):
        with pytest.raises(driller.DrillError, match="already drilled"):
            driller.drill(a[10:])
    driller.drill(a).close()  # fine again once closed


def test_drilled_bytearray_cannot_resize_until_closed():
    buf = bytearray(1 << 20)
    hole = driller.drill(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x" * 100)
    with pytest.raises(BufferError):
        del buf[:10]
    hole.close()
    buf.extend(b"x" * 100)
    assert len(buf) == (1 << 20) + 100


def test_memfd_is_sealed_against_resizing():
    a = np.zeros(1 << 18)
    with driller.drill(a) as hole:
        fd = hole.segment.fd
        seals = _linux.get_seals(fd)
        assert seals & _linux.F_SEAL_SHRINK and seals & _linux.F_SEAL_GROW
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)


@pytest.mark.parametrize("where", ["own-mapping", "heap"])
def test_fork_after_drill_gives_the_child_a_copy(where):
    if where == "heap":  # a buffer sharing its edge pages with malloc's heap
        a = _heap_array()
    else:
        a = np.full(1 << 18, 1.0)
    a[:] = 1.0
    with driller.drill(a):
        for _ in range(30):  # and malloc survives, many times in a row
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    junk = [bytearray(64 + i) for i in range(2000)]
                    del junk
                    a[:] = 2.0  # private in the child
                    code = 0 if _is_memfd(_addr(a)) is False else 3
                except BaseException:
                    code = 4
                os._exit(code)
            junk = [bytearray(64 + i) for i in range(2000)]
            del junk
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert (a == 1.0).all()


def test_heap_buffer_shares_only_its_bytes_with_peers():
    a = _heap_array()
    a[:] = 5.0
    with driller.drill(a) as hole:
        b = driller.attach(hole.handle)
        assert b.shape == a.shape and (b == 5.0).all()
        assert b.__array_interface__["data"][0] == a.ctypes.data


def test_close_tells_peers_and_attach_is_refused():
    # close() ends handles at once: a peer that attached before, attaching again
    # right after close() returned, got the old mapping from its map cache (the
    # release was still queued) 17 times in 20, and its writes went nowhere
    with _spawn_pool() as pool:
        for _ in range(10):
            a = np.ones(1 << 18)
            hole = driller.drill(a)
            h = hole.handle
            assert pool.apply(_peer.attach_and_sum, (h,)) == float(1 << 18)
            hole.close()
            kind, msg = pool.apply(_peer.try_attach, (h,))
            assert kind == "released", msg
            with pytest.raises(driller.SegmentReleasedError):
                hole.handle


def test_readonly_hole_gives_readonly_peers():
    a = np.arange(1 << 16, dtype=np.int64)
    with driller.drill(a, readonly=True) as hole:
        h = hole.handle
        assert h.readonly
        with _spawn_pool() as pool:
            assert pool.apply(_peer.attach_and_sum, (h,)) == float(a.sum())
            kind, msg = pool.apply(_peer.try_attach_writable, (h,))
        assert kind == "DrillerError" and "read-only" in msg


def test_unmapped_behind_our_back_is_noticed_and_released():
    m = mmap.mmap(-1, 1 << 16, flags=mmap.MAP_PRIVATE)
    hole = driller.drill(m)
    h = hole.handle
    lo = _addr(m)
    # "C code" replaces the range by fresh anonymous memory behind driller's back
    _linux.mmap(1 << 16, addr=lo, shared=False)
    broken = driller.check()
    assert broken == [hole]
    with pytest.raises(driller.SegmentReleasedError, match="behind driller's back"):
        hole.handle
    driller._publish.flush()
    with _spawn_pool() as pool:
        kind, _ = pool.apply(_peer.try_attach, (h,))
    assert kind == "released"
    hole.close()
    m.close()


def test_buffers_of_python_objects_are_refused():
    # drilling an object array shared pointers into this heap: a peer that attached
    # it died of SIGSEGV on its first read
    for x in (np.empty(100_000, dtype=object), np.empty(50_000, dtype=[("o", "O"), ("v", "f8")]),
              memoryview(np.empty(100_000, dtype=object))):
        with pytest.raises(driller.DrillError, match="holds Python objects"):
            driller.drill(x)
    named = np.zeros(50_000, dtype=[("Open", "f8"), ("Obj", "i8")])   # an 'O' in names only
    with driller.drill(named) as hole:
        assert driller.attach(hole.handle)["Open"].shape == (50_000,)


def test_a_format_numpy_cannot_read_is_judged_by_its_type_codes_not_its_names():
    # a ctypes structure with a pointer member has a format numpy refuses
    # ('T{<P:Offset:}'); drill used to search that whole string for an 'O' and so
    # refused a plain pointer field named "Offset" as "Python objects"
    import ctypes

    class Plain(ctypes.Structure):
        _fields_ = [("Offset", ctypes.c_void_p), ("Other", ctypes.c_double)]

    class Objects(ctypes.Structure):
        _fields_ = [("Ptr", ctypes.c_void_p), ("Obj", ctypes.py_object)]

    plain = (Plain * 20_000)()
    plain[7].Other = 2.5
    with driller.drill(plain) as hole:
        got = driller.attach(hole.handle)
        assert got.nbytes == ctypes.sizeof(plain) and got.view(np.float64)[15] == 2.5
    objects = (Objects * 20_000)()
    with pytest.raises(driller.DrillError, match="holds Python objects"):
        driller.drill(objects)
    assert not _pep3118.holds_objects("T{<P:Offset:<d:Other:}")
    assert not _pep3118.holds_objects("T{<d:O:}")
    assert _pep3118.holds_objects("T{<P:Ptr:<O:Obj:}") and _pep3118.holds_objects("O")


def test_a_handle_of_a_view_past_the_drilled_range_is_refused():
    # only the start of a view was checked: the handle was made, and a peer's
    # attach failed in numpy ("strides is incompatible with shape")
    big = np.arange(1_000_000, dtype=np.float64)
    with driller.drill(big[:500_000]) as hole:
        for view in (big, big[499_990:510_000], big[510_000:499_990:-1]):
            with pytest.raises(driller.DrillError, match="past the drilled range"):
                driller.handle(view)
        inside = big[1000:2000:3]
        h = driller.handle(inside)
        assert (driller.attach(h) == inside).all()
        back = big[:499_999][::-2]        # negative strides, inside
        assert (driller.attach(driller.handle(back)) == back).all()
        assert hole.handle.shape == (500_000,)


CLOSE_WITH_PROXY_STOPPED = textwrap.dedent("""
    import os, signal, time
    import numpy as np
    import driller
    from driller import hole as hole_mod
    from driller.proxy import ProxyClient
    hole_mod.CLOSE_WAIT = 1.0
    holes = [driller.drill(np.zeros(1 << 18)) for _ in range(2)]
    for h in holes:
        h.handle
    pid = ProxyClient.get().proxy_pid
    print(pid, flush=True)
    os.kill(pid, signal.SIGSTOP)
    took = []
    try:
        for h in holes:               # (the second with the first's answer still owed)
            t = time.monotonic()
            h.close()
            took.append(round(time.monotonic() - t))
    finally:
        os.kill(pid, signal.SIGCONT)
    driller._publish.flush()          # (the answers owed are read first: nothing lost)
    print(*took, ProxyClient.get().segments())
""")


def test_close_does_not_hang_on_a_stopped_proxy():
    # close() waits for the proxy's answer to its release (so that peers are told
    # when it returns), at most CLOSE_WAIT seconds: a stopped proxy hung it for good
    p = subprocess.Popen([sys.executable, "-c", CLOSE_WITH_PROXY_STOPPED], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = None
    try:
        pid = int(p.stdout.readline())
        out, err = p.communicate(timeout=60)
    finally:
        if pid is not None:           # (never leave it stopped)
            os.kill(pid, signal.SIGCONT)
        p.kill()
        p.wait()
    assert p.returncode == 0 and out.split() == ["1", "1", "[]"], (out, err)


def test_a_dropped_hole_says_so_when_its_memory_is_handed_out():
    # drill(x) as a statement: the Hole is garbage at once and the drill undone;
    # handle(x) then said "not in driller shared memory ... make it shareable in
    # place with driller.drill()", which the user had just done
    x = np.zeros(1_000_000)
    driller.drill(x)
    gc.collect()
    with pytest.raises(driller.DrillerError, match="Hole was garbage-collected"):
        driller.handle(x)
    v = np.zeros(1 << 20).reshape(1024, 1024)   # (a drilled view: its base's memory)
    driller.drill(v)
    gc.collect()
    with pytest.raises(driller.DrillerError, match="Hole was garbage-collected"):
        driller.handle(v[1:])
    with driller.drill(x):            # drilled anew: handed out again
        assert driller.handle(x).shape == x.shape
    y = np.zeros(1_000_000)
    with pytest.raises(driller.DrillerError, match="not in driller shared memory"):
        driller.handle(y)


def test_a_read_only_array_outside_shared_memory_is_told_to_copy_not_to_drill():
    # handle(np.frombuffer(bytes)) advised driller.drill(), which then refused the
    # read-only memory: the advice must be one that works
    a = np.frombuffer(b"x" * 1_000_000, dtype=np.uint8)
    with pytest.raises(driller.DrillerError) as e:
        driller.handle(a)
    assert "read-only" in str(e.value) and "driller.array(a)" in str(e.value)
    assert "drill()" not in str(e.value)
    with pytest.raises(driller.DrillError):   # (what the old advice led to)
        driller.drill(a)
    b = driller.array(a)                  # the advice works
    assert driller.attach(driller.handle(b, readonly=True)).tobytes() == a.tobytes()


def test_a_shared_view_of_memory_whose_hole_was_dropped_refuses_to_pickle():
    # x.view(driller.SharedArray), the README's way to pass drilled memory by
    # reference, pickled by value once the Hole was dropped: Pool workers wrote into
    # their copies and the parent's array stayed zero, without a word
    x = np.zeros(1_000_000)
    driller.drill(x)
    gc.collect()
    with pytest.raises(driller.DrillerError, match="Hole was garbage-collected"):
        pickle.dumps(x.view(driller.SharedArray)[:500_000])
    with driller.pickled_by_value():   # asked for by value: given
        assert pickle.loads(pickle.dumps(x.view(driller.SharedArray)[:4])).tolist() == [0] * 4
    y = np.zeros(8).view(driller.SharedArray)   # never drilled: by value, as documented
    assert pickle.loads(pickle.dumps(y)).tolist() == [0] * 8
