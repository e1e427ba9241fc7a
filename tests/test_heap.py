"""Shared arrays: allocation, pickling by reference, sharing across processes."""

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import driller
from driller import heap
from driller import _linux

import _peer

HERE = os.path.dirname(__file__)


def _mapping_name(arr) -> str:
    return _linux.query_mapping(arr.__array_interface__["data"][0]).name


@pytest.mark.parametrize("shape,dtype,order", [
    ((10,), np.float64, "C"), ((3, 4), np.int32, "F"), ((0,), np.uint8, "C"),
    ((2, 3, 4), np.complex128, "C"), (7, np.dtype([("a", "i4"), ("b", "f8")]), "C"),
])
def test_constructors_match_numpy(shape, dtype, order):
    e = driller.empty(shape, dtype, order)
    z = driller.zeros(shape, dtype, order)
    ref = np.zeros(shape, dtype, order)
    for a in (e, z):
        assert isinstance(a, driller.SharedArray) and isinstance(a, np.ndarray)
        assert a.shape == ref.shape and a.dtype == ref.dtype
        assert a.size == 0 or a.strides == ref.strides
    assert (z == ref).all()
    assert driller.zeros_like(ref).shape == ref.shape
    assert ref.size == 0 or driller.empty_like(ref).strides == ref.strides
    src = np.arange(int(np.prod(shape)) * 2).reshape(-1)[: int(np.prod(shape))]
    if dtype is not None and np.dtype(dtype).fields is None:
        c = driller.array(src.astype(dtype))
        assert (c == src.astype(dtype)).all() and c.dtype == np.dtype(dtype)


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="negative"):
        driller.empty((-1, 3))


def test_small_arrays_share_an_arena_large_get_their_own_segment():
    small = [driller.empty(100) for _ in range(10)]
    names = {_mapping_name(a) for a in small}
    assert names == {"/memfd:driller:arena (deleted)"}
    big = driller.empty(1 << 20)
    assert _mapping_name(big) == "/memfd:driller:array (deleted)"
    assert big.__array_interface__["data"][0] % _linux.PAGE_SIZE == 0


def test_arena_memory_is_reused_after_free():
    before = heap.heap_info()["arenas"]
    for _ in range(50):
        arrs = [driller.zeros(1000) for _ in range(200)]  # 1.6 MB live
        assert all((a == 0).all() for a in arrs[:5])
        del arrs
        gc.collect()
    assert heap.heap_info()["arenas"] <= before + 1


def test_pickle_is_small_and_by_reference():
    a = driller.zeros(64 << 20, np.uint8)
    data = pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 1000
    b = pickle.loads(data)
    assert b.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    b[123] = 7
    assert a[123] == 7


def test_views_pickle_by_reference():
    a = driller.array(np.arange(10000, dtype=np.float64).reshape(100, 100))
    for view in (a[10:20], a[:, 3], a[::-1, ::2], a.T, a[5, 5:6]):
        data = pickle.dumps(view, protocol=5)
        assert len(data) < 1000
        back = pickle.loads(data)
        assert back.shape == view.shape and (back == view).all()
        back[...] = -1
        assert (view == -1).all()


def test_results_of_computations_are_private():
    a = driller.zeros(1 << 16)
    b = a + 1
    assert type(b) is np.ndarray
    assert len(pickle.dumps(b, protocol=5)) > b.nbytes  # by value
    assert isinstance(a.sum(), float)


def test_fork_shares_heap_arrays_and_child_allocations_do_not_collide():
    a = driller.zeros(1000, np.int64)
    b = driller.zeros(10, np.int64)
    pid = os.fork()
    if pid == 0:
        try:
            extra = [driller.zeros(1000, np.int64) for _ in range(20)]
            for e in extra:
                e[:] = 99
            a[:] = 5  # shared memory: the parent sees it
            os._exit(0 if (b == 0).all() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (a == 5).all() and (b == 0).all()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_share_with_multiprocessing(method):
    a = driller.zeros((256, 1024))
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        sums = pool.starmap(_peer.fill, [(a[:128], 1.0), (a[128:], 2.0)])
    assert sums == [128 * 1024.0, 2 * 128 * 1024.0]
    assert a[:128].sum() == 128 * 1024 and a[128:].sum() == 2 * 128 * 1024


def test_share_with_process_pool_executor():
    a = driller.array(np.ones(1 << 20))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(_peer.fill, a, 3.0).result() == 3.0 * (1 << 20)
    assert (a == 3).all()


def test_share_with_an_unrelated_process_over_a_pipe():
    a = driller.array(np.arange(1000, dtype=np.float64))
    p = subprocess.run([sys.executable, os.path.join(HERE, "_peer.py"), "stdin_peer"],
                       input=pickle.dumps(a), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert float(p.stdout) == float(np.arange(1000).sum() + 1000)
    assert a[0] == 1 and a[-1] == 1000  # the peer wrote our memory


def test_released_array_cannot_be_attached():
    a = driller.zeros(1 << 20)
    h = driller.handle(a)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_peer.attach_and_sum, (h,)) == 0.0
        del a
        gc.collect()
        driller._publish.flush()
        kind, msg = pool.apply(_peer.try_attach, (h,))
    assert kind == "released", msg
    assert h.key in msg


def test_owner_exit_keeps_peer_memory_then_releases():
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    p = ctx.Process(target=_peer.owner_main, args=(q, go))
    p.start()
    h = q.get(timeout=60)
    arr = driller.attach(h)
    assert (arr == 42).all()
    go.set()
    p.join(60)
    assert p.exitcode == 0
    assert (arr == 42).all()  # our mapping outlives the owner
    arr[:] = 1
    # we loaded h and still map it: our claim keeps its transfer lease, so h stays
    # loadable after the owner's exit (README "Lifetimes")
    again = driller.attach(h)
    assert (again == 1).all()
    del arr, again
    gc.collect()
    deadline = time.monotonic() + 10
    # nobody holds the lease any more: it ended, or (this process, its last client,
    # let go of its connection: mapcache closes idle ones) the owner's proxy exited
    with pytest.raises((driller.SegmentReleasedError, driller.ProxyError)) as e:
        while time.monotonic() < deadline:
            driller.attach(h)
            time.sleep(0.01)
    assert h.key in str(e.value) if e.type is driller.SegmentReleasedError else \
        "has probably exited" in str(e.value), e.value


_OBJECT_PEER = """
import pickle, sys, driller
try:
    a = driller.attach(pickle.load(sys.stdin.buffer))
    print("attached", repr(a[0]))
except driller.DrillerError as e:
    print("refused:", e)
"""


def test_python_objects_are_refused_in_shared_memory():
    # an object array in shared memory holds pointers into one process's heap: a
    # peer that read them crashed (SIGSEGV) and a Pool waiting for it hung
    for make in (lambda: driller.zeros(3, dtype=object),
                 lambda: driller.empty(4, dtype=[("x", "f8"), ("o", "O")]),
                 lambda: driller.zeros_like(np.empty(2, dtype=object)),
                 lambda: driller.empty_like(np.zeros(2), dtype=object),
                 lambda: driller.array(["a", None]),
                 lambda: driller.array(np.empty(100_000, dtype=object))):  # the large path
        with pytest.raises(driller.DrillerError, match="holding Python objects"):
            make()
    assert driller.array(["ab", "c"]).dtype == np.dtype("<U2")   # fixed-size: fine
    # a handle that names an object dtype (crafted, or from an older driller) is
    # refused by the loader, in a real peer, instead of reading pointers
    import dataclasses
    a = driller.zeros(1 << 16)
    h = dataclasses.replace(driller.handle(a), dtype=np.dtype(object), shape=(1 << 16,),
                            strides=(8,))
    a[:] = 12345.0          # garbage as pointers
    r = subprocess.run([sys.executable, "-c", _OBJECT_PEER], input=pickle.dumps(h),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r
    assert b"refused:" in r.stdout and b"holding Python objects" in r.stdout, r.stdout


def test_impossible_sizes_are_clear_errors_and_leak_no_fd(monkeypatch):
    # too big for numpy: an OverflowError from ftruncate ("Python int too large to
    # convert to C long") before; now numpy's ValueError
    for shape in ((1 << 40, 1 << 40), (1 << 62,)):
        with pytest.raises(ValueError, match="array is too big"):
            driller.empty(shape)
    # more than the address space (256 TiB > x86_64's 128 TiB): a bare OSError from
    # mmap, and the memfd of each failed attempt stayed open (the memory check
    # below made to pass, so that mmap is what refuses)
    monkeypatch.setattr(driller._linux, "memory_and_swap", lambda: 1 << 62)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(MemoryError, match="cannot allocate 281474976710656 bytes"):
            driller.zeros(1 << 45)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert driller.zeros(1 << 20).sum() == 0     # and allocation still works


def test_more_than_memory_and_swap_is_a_memory_error_as_in_numpy():
    # a memfd of any size is granted (its pages come as they are written):
    # driller.zeros(2**40) gave an 8 TiB array on a 24 GiB machine, where np.zeros
    # raises MemoryError (Linux's overcommit heuristic); writing it would have
    # called the OOM killer
    too_many = driller._linux.memory_and_swap() + 1
    fds = len(os.listdir("/proc/self/fd"))
    for make in (driller.zeros, driller.empty):
        with pytest.raises(MemoryError, match=f"cannot allocate {too_many} bytes of shared "
                           "memory: more than this machine's memory and swap"):
            make(too_many, dtype=np.uint8)
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("shape", [3.0, (2, "x"), None, "abc"])
def test_a_shape_that_is_not_integers_is_a_clear_type_error(shape):
    with pytest.raises(TypeError, match="a shape is an integer or a sequence of integers"):
        driller.zeros(shape)


@pytest.mark.parametrize("shape", [np.array([2, 3]), np.int64(4), [np.int32(2), 3],
                                   np.array(5)])
def test_a_shape_of_numpy_integers_is_numpys(shape):
    assert driller.zeros(shape).shape == np.zeros(shape).shape
