"""The syscall layer: maps parsing, PROCMAP_QUERY, futex, cross-process copy."""

import mmap
import os
import subprocess
import sys
import threading
import time

import numpy as np

from driller import _linux

SAMPLE = b"""\
55d0c7a00000-55d0c7a21000 rw-p 00000000 00:00 0                          [heap]
7f1c2a400000-7f1c2a600000 rw-s 00000000 00:01 1234                       /memfd:driller:arena (deleted)
7f1c2b000000-7f1c2b028000 r--p 00000000 fd:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd3c9e0000-7ffd3ca01000 rw-p 00000000 00:00 0                          [stack]
7f1c2c000000-7f1c2c100000 rw-p 00000000 00:00 0 
garbage line
"""


def test_parse_maps():
    ms = _linux.parse_maps(SAMPLE)
    assert len(ms) == 5
    heap, memfd, libc, stack, anon = ms
    assert heap.name == "[heap]" and heap.writable and not heap.shared and not heap.anonymous
    assert memfd.shared and memfd.inode == 1234 and memfd.dev == os.makedev(0, 1)
    assert memfd.name == "/memfd:driller:arena (deleted)"
    assert libc.readable and not libc.writable and libc.dev == os.makedev(0xfd, 1)
    assert stack.name == "[stack]"
    assert anon.anonymous and anon.end - anon.start == 0x100000


def test_query_agrees_with_proc_maps():
    m = mmap.mmap(-1, 3 * _linux.PAGE_SIZE)
    addr, _, _ = _linux.buffer_address(m)
    q = _linux.query_mapping(addr + 5)
    parsed = [x for x in _linux.read_maps() if x.start <= addr < x.end]
    assert len(parsed) == 1
    assert (q.start, q.end, q.shared, q.writable, q.inode) == \
        (parsed[0].start, parsed[0].end, parsed[0].shared, parsed[0].writable, parsed[0].inode)
    m.close()


def test_memfd_seals_refuse_resize():
    fd = _linux.memfd_create("test")
    try:
        os.ftruncate(fd, 8192)
        _linux.add_seals(fd, _linux.F_SEAL_SHRINK | _linux.F_SEAL_GROW)
        for size in (4096, 16384):
            try:
                os.ftruncate(fd, size)
            except PermissionError:
                pass
            else:
                raise AssertionError("sealed memfd was resized")
        assert _linux.get_seals(fd) & _linux.F_SEAL_GROW
    finally:
        os.close(fd)


def test_futex_wake_from_another_thread():
    word = np.zeros(1, np.uint32)
    addr = word.ctypes.data
    woke = []

    def waiter():
        deadline = time.monotonic() + 10
        while word[0] == 0 and time.monotonic() < deadline:
            _linux.futex_wait(addr, 0, 1.0)
        woke.append(int(word[0]))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    word[0] = 7
    _linux.futex_wake(addr)
    t.join(15)
    assert woke == [7]


def test_futex_waitv_times_out_when_nothing_changes():
    words = np.zeros(2, np.uint32)
    assert _linux.futex_waitv([(words.ctypes.data, 0), (words.ctypes.data + 4, 0)], 0.01) is False
    # a value that already differs returns at once
    assert _linux.futex_waitv([(words.ctypes.data, 1)], 5.0) is True


def test_process_vm_readv_from_a_child():
    src = np.arange(1 << 16, dtype=np.int64)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child keeps src alive at the same address until told to go
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        dst = np.zeros_like(src)
        src[:] = -1  # the child's copy is the original arange (copy on write)
        _linux.process_vm_readv(pid, dst.ctypes.data, src.ctypes.data, src.nbytes)
        assert (dst == np.arange(1 << 16)).all()
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)


def test_pidfd_sees_exit():
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    fd = _linux.pidfd_open(pid)
    try:
        deadline = time.monotonic() + 10
        while _linux.pidfd_alive(fd) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _linux.pidfd_alive(fd)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)


def test_query_falls_back_to_proc_maps(monkeypatch):
    m = mmap.mmap(-1, 2 * _linux.PAGE_SIZE, flags=mmap.MAP_PRIVATE)
    addr, _, _ = _linux.buffer_address(m)
    fast = _linux.query_mapping(addr)
    monkeypatch.setitem(_linux._procmap, "ok", False)  # as on a kernel before 6.11
    slow = _linux.query_mapping(addr)
    assert slow == fast
    assert _linux.query_mapping(0x1000) is None  # nothing is mapped at page 1
    m.close()


def test_dumpable_and_capabilities_deny_process_vm_readv():
    """A non-dumpable child refuses process_vm_readv from a reader without
    CAP_SYS_PTRACE (EPERM); dropping the capability is for good."""
    import errno

    from _helpers import in_child

    src = np.arange(64, dtype=np.uint8)

    def reader():
        r, w = os.pipe()    # child -> parent: ready
        r2, w2 = os.pipe()  # parent -> child: done
        pid = os.fork()
        if pid == 0:  # the non-dumpable peer
            _linux.set_dumpable(False)
            os.write(w, b"1" if not _linux.is_dumpable() else b"0")
            os.read(r2, 1)
            os._exit(0)
        try:
            ok = os.read(r, 1) == b"1"
            out = np.zeros(64, np.uint8)
            if _linux.has_capability(_linux.CAP_SYS_PTRACE):
                _linux.drop_capability(_linux.CAP_SYS_PTRACE)
            had = _linux.has_capability(_linux.CAP_SYS_PTRACE)
            try:
                _linux.process_vm_readv(pid, out.ctypes.data, src.ctypes.data, 64)
                res = "read"
            except OSError as e:
                res = errno.errorcode[e.errno]
            return ok, had, res, _linux.is_dumpable()
        finally:
            os.write(w2, b"x")
            os.waitpid(pid, 0)
            for fd in (r, w, r2, w2):
                os.close(fd)

    assert in_child(reader) == ("ok", (True, False, "EPERM", True))
    assert _linux.is_dumpable()
    scope = _linux.ptrace_scope()
    assert scope is None or scope in (0, 1, 2, 3)


def test_seccomp_filter_denies_process_vm_readv():
    import errno

    from _helpers import in_child

    src = np.arange(8, dtype=np.uint8)

    def denied(err):
        _linux.deny_syscalls(["process_vm_readv", "process_vm_writev"], err)
        out = np.zeros(8, np.uint8)
        res = []
        for fn in (_linux.process_vm_readv, _linux.process_vm_writev):
            try:
                fn(os.getppid(), out.ctypes.data, src.ctypes.data, 8)
                res.append("allowed")
            except OSError as e:
                res.append(errno.errorcode[e.errno])
        return res, os.getpid() > 0 and len(_linux.read_maps()) > 0  # the rest still works

    assert in_child(denied, errno.ENOSYS) == ("ok", (["ENOSYS", "ENOSYS"], True))
    assert in_child(denied, errno.EPERM) == ("ok", (["EPERM", "EPERM"], True))


_FENCE_PROBE = r"""
import ctypes, sys
from driller import _linux
libc = ctypes.CDLL(None)
single = ctypes.c_char.in_dll(libc, "__libc_single_threaded").value
# glibc x86-64 pthread_mutex_t: int __lock at byte 0, int __kind at byte 16 (ABI: static
# initialisers); kind bit 128 is PTHREAD_MUTEX_PSHARED_BIT, which sends lock and unlock
# to their atomic paths (a private mutex in a one-thread process gets plain stores)
kind = ctypes.c_int.from_buffer(_linux._FENCE, 16).value
lock = ctypes.c_int.from_buffer(_linux._FENCE, 0)
libc.pthread_mutex_lock(_linux._FENCE)   # left locked, as by an exception between its calls
_linux.fence()                           # must not block, and must leave it unlocked
print(single[0], kind & 128, lock.value)
"""


def test_fence_takes_the_atomic_path_in_a_one_thread_process():
    """fence()'s mutex is process-shared: in a process with one thread, glibc locks and
    unlocks a private mutex with plain stores, which order nothing (the handshakes that
    rely on fence() then race); and a fence left locked (an exception between its two
    calls) neither blocks the next one nor stays locked."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", _FENCE_PROBE], env=env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    single, pshared, lock = map(int, out.stdout.split())
    assert single == 1, "the probe process was meant to have one thread"
    assert pshared == 128, "fence()'s mutex is private: plain stores in a one-thread process"
    assert lock == 0, "fence() left its mutex locked"
