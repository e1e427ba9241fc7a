"""The one module that talks to the kernel.

Every ctypes call and every raw syscall of driller lives here (as psutil keeps
its platform calls in one module).  The rest of the package calls these thin
functions and never touches ctypes or syscall numbers itself.

Syscall numbers are per architecture: x86_64 (the machine driller runs on) and
aarch64 (kept for a port; ``import driller`` refuses aarch64: docs/mmpi.md, "Machines").
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap as _mmap
import os
import select
import struct as _struct

__all__ = [
    "PAGE_SIZE", "page_floor", "page_ceil",
    "mmap", "munmap", "mprotect", "madvise", "mremap_over", "mremap_keep", "pwrite_from",
    "memfd_create", "add_seals", "get_seals", "set_mmap_threshold",
    "futex_wait", "futex_wake", "futex_waitv",
    "process_vm_readv", "process_vm_readv_many", "process_vm_writev", "allow_ptrace_by_any",
    "set_dumpable", "is_dumpable", "has_capability", "drop_capability", "ptrace_scope",
    "deny_syscalls", "seccomp_mode",
    "new_bytes", "new_bytearray",
    "pidfd_open", "pidfd_alive", "pid_alive",
    "Mapping", "query_mapping", "read_maps", "parse_maps",
    "buffer_address", "memmove", "read_word", "fd_inode",
    "MUTEX_BYTES", "shared_mutex_init", "shared_mutex_lock", "shared_mutex_unlock",
    "open_peer_fd",
    "capsule_pointer", "read_memory", "host_accessible", "memory_at",
    "KERNEL_FEATURES", "probe_features",
]

PAGE_SIZE = _mmap.PAGESIZE

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE = 0x4000
MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK = 4, 10, 11
MAP_FAILED = ctypes.c_void_p(-1).value

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
F_SEAL_FUTURE_WRITE = 0x10  # Linux >= 5.1: no new writable mapping, no write(); old ones stay
F_ADD_SEALS, F_GET_SEALS = 1033, 1034

_MACHINE = os.uname().machine   # not platform.machine(): `platform` loads subprocess and threading on 3.10
_SYSCALLS = {
    # name: (x86_64, aarch64)
    "futex": (202, 98),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "futex_waitv": (449, 449),
}
# the column of _SYSCALLS; `import driller` refuses other machines (driller._platform),
# and nothing here may take another machine's numbers for these
_ARCHES = {"x86_64": 0, "amd64": 0, "aarch64": 1, "arm64": 1}
if _MACHINE.lower() not in _ARCHES:
    raise ImportError(f"driller knows the system calls of x86_64 and aarch64 only; this is "
                      f"{_MACHINE!r} (its system call numbers are unknown to driller)")
_ARCH = _ARCHES[_MACHINE.lower()]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_memmove = ctypes.memmove


def _nr(name: str) -> int:
    return _SYSCALLS[name][_ARCH]


def _oserror(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def page_floor(addr: int) -> int:
    return addr & ~(PAGE_SIZE - 1)


def page_ceil(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


# ---------------------------------------------------------------- mappings

def mmap(length: int, *, fd: int = -1, offset: int = 0, addr: int | None = None,
         shared: bool = True, readonly: bool = False) -> int:
    """mmap(2).  With ``addr`` the mapping replaces whatever is there (MAP_FIXED)."""
    prot = PROT_READ if readonly else PROT_READ | PROT_WRITE
    flags = MAP_SHARED if shared else MAP_PRIVATE
    if fd < 0:
        flags |= MAP_ANONYMOUS
    if addr is not None:
        flags |= MAP_FIXED
    res = _libc.mmap(addr or 0, length, prot, flags, fd, offset)
    if res is None or res == MAP_FAILED:
        raise _oserror("mmap")
    return res


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        raise _oserror("munmap")


def mprotect(addr: int, length: int, readonly: bool) -> None:
    prot = PROT_READ if readonly else PROT_READ | PROT_WRITE
    if _libc.mprotect(addr, length, prot) != 0:
        raise _oserror("mprotect")


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc.madvise(addr, length, advice) != 0:
        raise _oserror("madvise")


MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]


def mremap_over(src: int, length: int, dst: int) -> None:
    """Move the pages of [src, src+length) to dst, replacing what is there (no copy)."""
    res = _libc.mremap(src, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    if res is None or res == MAP_FAILED:
        raise _oserror("mremap")


def mremap_keep(src: int, length: int, dst: int) -> bool:
    """Move the pages of [src, src+length) to dst (replacing what is there) and leave
    src mapped to the same memory (MREMAP_DONTUNMAP): no moment where src is unmapped,
    and no new mapping of the file is made, so seals such as F_SEAL_FUTURE_WRITE do
    not apply.  Returns False where the kernel cannot do it for this mapping (shared
    mappings need Linux >= 5.13); nothing changed then.
    """
    res = _libc.mremap(src, length, length, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                       dst)
    if res is None or res == MAP_FAILED:
        e = ctypes.get_errno()
        if e == errno.EINVAL:
            return False
        raise OSError(e, f"mremap(MREMAP_DONTUNMAP): {os.strerror(e)}")
    return True


def pwrite_from(fd: int, addr: int, n: int, offset: int = 0) -> None:
    """Write n bytes at raw address addr into fd at offset (one copy, no page faults in fd)."""
    done = 0
    while done < n:
        chunk = min(n - done, 1 << 30)
        buf = (ctypes.c_char * chunk).from_address(addr + done)
        done += os.pwrite(fd, buf, offset + done)


def memmove(dst: int, src: int, n: int) -> None:
    """Copy n bytes between raw addresses (one memcpy, GIL held)."""
    if n:
        _memmove(dst, src, n)


def read_word(addr: int) -> int:
    """Read an unsigned machine word at a raw address (caller checks it is mapped)."""
    return ctypes.c_size_t.from_address(addr).value


def memory_at(address: int, nbytes: int, *, readonly: bool = False, keep=None) -> memoryview:
    """A byte memoryview of ``nbytes`` of mapped memory at ``address``, without numpy.

    ``keep`` (e.g. the Region owning the mapping) stays alive as long as the view
    or any view cast or sliced from it.  A read-only view refuses stores.
    """
    buf = (ctypes.c_ubyte * nbytes).from_address(address)
    buf._driller_keep = keep
    mv = memoryview(buf).cast("B")   # ctypes says '<B'; cast() wants plain 'B'
    return mv.toreadonly() if readonly else mv


def buffer_address(obj, writable: bool = False) -> tuple[int, int, bool]:
    """(address, nbytes, readonly) of a C-contiguous buffer-protocol object."""
    mv = obj if isinstance(obj, memoryview) else memoryview(obj)
    if not mv.c_contiguous:
        raise BufferError("buffer is not C-contiguous")
    n = mv.nbytes
    if mv.readonly:
        if writable:
            raise BufferError("buffer is read-only")
        # ctypes refuses read-only buffers: go through a one-byte cast
        # and numpy-free trick: from_buffer_copy would copy, so use
        # PyObject_GetBuffer via ctypes.pythonapi.
        return _readonly_address(mv), n, True
    if n == 0:
        return 0, 0, False
    # (the first byte's address: a one-byte object needs no array type per size,
    # ≈ 0.4 µs against 1.1: docs/mmpi.md, "sixteenth round (mid-size)")
    return ctypes.addressof(ctypes.c_char.from_buffer(mv)), n, False


class _Py_buffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object),
                ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int]
_ReleaseBuffer = ctypes.pythonapi.PyBuffer_Release
_ReleaseBuffer.argtypes = [ctypes.POINTER(_Py_buffer)]


def _readonly_address(mv: memoryview) -> int:
    if mv.nbytes == 0:
        return 0
    view = _Py_buffer()
    if _GetBuffer(mv, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE
        raise BufferError("cannot get buffer address")
    try:
        return view.buf or 0
    finally:
        _ReleaseBuffer(ctypes.byref(view))


# ---------------------------------------------------------------- memfd

def memfd_create(name: str) -> int:
    """A sealable, close-on-exec memfd."""
    return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)


def add_seals(fd: int, seals: int) -> None:
    fcntl.fcntl(fd, F_ADD_SEALS, seals)


def get_seals(fd: int) -> int:
    return fcntl.fcntl(fd, F_GET_SEALS)


M_MMAP_THRESHOLD = -3
_mallopt = getattr(_libc, "mallopt", None)  # glibc (and musl, as a no-op returning 0)
if _mallopt is not None:
    _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _mallopt.restype = ctypes.c_int


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD, nbytes)``: allocations of at least nbytes get a
    mapping of their own, and glibc stops raising the threshold as large blocks are
    freed (its "dynamic" threshold).  False where the C library refused (not glibc)."""
    return _mallopt is not None and _mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1


def fd_inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------- futex

FUTEX_WAIT, FUTEX_WAKE = 0, 1
FUTEX_32 = 2  # futex_waitv flag: 32-bit futex word (shared, not private)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _FutexWaitv(ctypes.Structure):
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


def _timespec(timeout: float | None):
    if timeout is None:
        return None
    ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
    return ctypes.byref(ts)


_FUTEX = _nr("futex")


def _futex_woken(what: str) -> bool:
    """After a failed futex wait: False on timeout, True when woken early (the word
    changed before the sleep, or a signal); any other errno raises."""
    e = ctypes.get_errno()
    if e == errno.ETIMEDOUT:
        return False
    if e in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(e, f"{what}: {os.strerror(e)}")


def futex_wait(addr: int, expected: int, timeout: float | None = None) -> bool:
    """Sleep while the 32-bit word at addr equals expected (shared futex).

    Returns False on timeout, True otherwise (woken, value changed, signal).
    """
    r = _libc.syscall(ctypes.c_long(_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAIT),
                      ctypes.c_uint32(expected & 0xFFFFFFFF), _timespec(timeout), None,
                      ctypes.c_uint32(0))
    return r != -1 or _futex_woken("futex wait")


def futex_wake(addr: int, n: int = 2**31 - 1) -> int:
    r = _libc.syscall(ctypes.c_long(_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(FUTEX_WAKE),
                      ctypes.c_int(n), None, None, ctypes.c_uint32(0))
    if r == -1:
        raise _oserror("futex wake")
    return r


_WAITV = _nr("futex_waitv")
_CLOCK_MONOTONIC = 1


def futex_waitv(words: list[tuple[int, int]], timeout: float | None = None) -> bool:
    """Sleep until any of the 32-bit words (addr, expected) changes or is woken.

    Linux ≥ 5.16.  The timeout is relative; returns False on timeout.
    """
    n = len(words)
    arr = (_FutexWaitv * n)()
    for i, (addr, val) in enumerate(words):
        arr[i].val = val & 0xFFFFFFFF
        arr[i].uaddr = addr
        arr[i].flags = FUTEX_32
    ts = None
    if timeout is not None:
        now = time_monotonic()
        t = now + timeout
        ts = ctypes.byref(_Timespec(int(t), int((t % 1) * 1e9)))
    r = _libc.syscall(ctypes.c_long(_WAITV), arr, ctypes.c_uint(n), ctypes.c_uint(0), ts,
                      ctypes.c_int(_CLOCK_MONOTONIC))
    return r != -1 or _futex_woken("futex_waitv")


def time_monotonic() -> float:
    return _clock_gettime_monotonic()


def _clock_gettime_monotonic() -> float:
    import time
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------- cross-process copy

class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_VM_READV = _nr("process_vm_readv")
_VM_WRITEV = _nr("process_vm_writev")
_IOV_CHUNK = 1 << 30  # the kernel caps one call's total at MAX_RW_COUNT (~2 GiB)


def _vm_copy(nr: int, what: str, pid: int, local: int, remote: int, n: int) -> None:
    done = 0
    while done < n:
        chunk = min(n - done, _IOV_CHUNK)
        liov = _Iovec(local + done, chunk)
        riov = _Iovec(remote + done, chunk)
        r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(pid), ctypes.byref(liov),
                          ctypes.c_ulong(1), ctypes.byref(riov), ctypes.c_ulong(1),
                          ctypes.c_ulong(0))
        if r < 0:
            raise _oserror(f"{what} of {chunk} bytes from pid {pid}")
        if r == 0:
            raise OSError(errno.EFAULT, f"{what}: no progress copying from pid {pid}")
        done += r


def process_vm_readv(pid: int, local: int, remote: int, n: int) -> None:
    """Copy n bytes from address ``remote`` of process pid to our ``local``: one copy."""
    _vm_copy(_VM_READV, "process_vm_readv", pid, local, remote, n)


_IOV_MAX = 1024  # UIO_MAXIOV


def process_vm_readv_many(pid: int, segs) -> None:
    """Copy several (local, remote, n) ranges from process pid in as few
    process_vm_readv calls as possible (up to 1024 ranges and 1 GiB per call)."""
    segs = [s for s in segs if s[2]]
    i = 0
    nseg = len(segs)
    while i < nseg:
        j = i
        total = 0
        while j < nseg and j - i < _IOV_MAX and total + segs[j][2] <= _IOV_CHUNK:
            total += segs[j][2]
            j += 1
        if j == i:  # one range larger than a call: the plain loop chunks it
            process_vm_readv(pid, *segs[i])
            i += 1
            continue
        k = j - i
        lv = []
        rv = []
        for x in range(i, j):
            local, remote, n = segs[x]
            lv += (local, n)
            rv += (remote, n)
        r = _libc.syscall(ctypes.c_long(_VM_READV), ctypes.c_int(pid),
                          _struct.pack(f"{2 * k}Q", *lv), ctypes.c_ulong(k),
                          _struct.pack(f"{2 * k}Q", *rv), ctypes.c_ulong(k), ctypes.c_ulong(0))
        if r < 0:
            raise _oserror(f"process_vm_readv of {total} bytes in {k} ranges from pid {pid}")
        if r < total:  # a short copy (a range failed part way): finish range by range
            for x in range(i, j):
                local, remote, n = segs[x]
                if r >= n:
                    r -= n
                    continue
                process_vm_readv(pid, local + r, remote + r, n - r)
                r = 0
        i = j


_PyBytes_New = ctypes.pythonapi.PyBytes_FromStringAndSize
_PyBytes_New.restype = ctypes.py_object
_PyBytes_New.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_PyByteArray_New = ctypes.pythonapi.PyByteArray_FromStringAndSize
_PyByteArray_New.restype = ctypes.py_object
_PyByteArray_New.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]


def new_bytes(n: int) -> bytes:
    """A fresh, uninitialised bytes object of n bytes, to be filled at once
    (by process_vm_readv) before anyone else sees it (bytes(n) zero-fills)."""
    return _PyBytes_New(None, n)


def new_bytearray(n: int) -> bytearray:
    """A fresh, uninitialised bytearray of n bytes (bytearray(n) zero-fills)."""
    return _PyByteArray_New(None, n)


def process_vm_writev(pid: int, local: int, remote: int, n: int) -> None:
    """Copy n bytes from our ``local`` to address ``remote`` of process pid."""
    _vm_copy(_VM_WRITEV, "process_vm_writev", pid, local, remote, n)


PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = ctypes.c_ulong(-1).value


def allow_ptrace_by_any() -> None:
    """Let sibling processes use process_vm_readv on us under Yama ptrace_scope=1."""
    _libc.prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0)  # EINVAL without Yama: fine


PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def set_dumpable(on: bool) -> None:
    """prctl(PR_SET_DUMPABLE): a non-dumpable process refuses process_vm_readv /
    ptrace from peers that lack CAP_SYS_PTRACE (as setuid programs do)."""
    if _libc.prctl(PR_SET_DUMPABLE, 1 if on else 0, 0, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_DUMPABLE)")


def is_dumpable() -> bool:
    r = _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    if r < 0:  # pragma: no cover
        raise _oserror("prctl(PR_GET_DUMPABLE)")
    return r == 1


CAP_SYS_PTRACE = 19
_CAP_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def has_capability(cap: int) -> bool:
    """Whether ``cap`` is in this process's effective capability set."""
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:  # pragma: no cover
        raise _oserror("capget")
    return bool(data[cap // 32].effective >> (cap % 32) & 1)


def drop_capability(cap: int) -> None:
    """Remove ``cap`` from this process's effective and permitted sets for good
    (as a container started without it): e.g. CAP_SYS_PTRACE, after which
    process_vm_readv of a non-dumpable peer fails with EPERM even as root."""
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:  # pragma: no cover
        raise _oserror("capget")
    bit = ~(1 << (cap % 32)) & 0xFFFFFFFF
    data[cap // 32].effective &= bit
    data[cap // 32].permitted &= bit
    data[cap // 32].inheritable &= bit
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise _oserror("capset")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 22, 38, 2
_AUDIT_ARCH = (0xC000003E, 0xC00000B7)[_ARCH]   # x86_64, aarch64


def deny_syscalls(names, err: int) -> None:
    """Install a seccomp filter making the named syscalls fail with ``err`` in
    this process (and its future children) for good, as a container runtime's
    profile does (Docker's default refuses process_vm_readv without
    CAP_SYS_PTRACE).  Sets no_new_privs."""
    nrs = [_nr(n) for n in names]
    prog = [(0x20, 0, 0, 4),                           # A = seccomp_data.arch
            (0x15, 1, 0, _AUDIT_ARCH),                 # our arch: go on
            (0x06, 0, 0, 0x7FFF0000)]                  # else allow (never here)
    prog.append((0x20, 0, 0, 0))                       # A = seccomp_data.nr
    for i, nr in enumerate(nrs):                       # listed: jump to the ERRNO return
        prog.append((0x15, len(nrs) - i, 0, nr))
    prog.append((0x06, 0, 0, 0x7FFF0000))              # SECCOMP_RET_ALLOW
    prog.append((0x06, 0, 0, 0x00050000 | (err & 0xFFFF)))  # SECCOMP_RET_ERRNO | err
    filt = (_SockFilter * len(prog))(*[_SockFilter(*x) for x in prog])
    fprog = _SockFprog(len(prog), filt)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_NO_NEW_PRIVS)")
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                   ctypes.cast(ctypes.byref(fprog), ctypes.c_void_p).value, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_SECCOMP)")


def seccomp_mode() -> int:
    """This process's seccomp mode (0 none, 1 strict, 2 filter), from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return int(line.split()[1])
    except (OSError, ValueError):  # pragma: no cover
        pass
    return 0


def ptrace_scope() -> int | None:
    """Yama's kernel.yama.ptrace_scope (None: no Yama)."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- processes

def pidfd_open(pid: int) -> int:
    return os.pidfd_open(pid)


def pidfd_alive(pidfd: int) -> bool:
    """False once the process behind pidfd has exited (the pidfd polls readable)."""
    r, _, _ = select.select([pidfd], [], [], 0)
    return not r


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


# ---------------------------------------------------------------- mapping lookup

class Mapping:
    """One line of /proc/PID/maps (or a PROCMAP_QUERY answer); immutable.

    (A plain class, not a dataclass: `driller run`'s launcher imports this module,
    and `dataclasses` would cost its start-up ~10 ms, see docs/launcher.md "Startup".)
    """

    __slots__ = ("start", "end", "readable", "writable", "executable", "shared", "offset",
                 "dev", "inode", "name")
    start: int
    end: int
    readable: bool
    writable: bool
    executable: bool
    shared: bool
    offset: int
    dev: int          # os.makedev(major, minor)
    inode: int
    name: str         # path, "[heap]", "[stack]", "/memfd:name (deleted)", "" if anonymous

    def __init__(self, start: int, end: int, readable: bool, writable: bool,
                 executable: bool, shared: bool, offset: int, dev: int, inode: int,
                 name: str) -> None:
        put = object.__setattr__      # (frozen: as a frozen dataclass does it)
        put(self, "start", start)
        put(self, "end", end)
        put(self, "readable", readable)
        put(self, "writable", writable)
        put(self, "executable", executable)
        put(self, "shared", shared)
        put(self, "offset", offset)
        put(self, "dev", dev)
        put(self, "inode", inode)
        put(self, "name", name)

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a Mapping (immutable)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a Mapping (immutable)")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Mapping:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "Mapping(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"

    def __reduce__(self) -> tuple:
        return (Mapping, self._values())

    @property
    def anonymous(self) -> bool:
        return self.inode == 0 and self.name == ""


_MAPS_RE = None     # compiled at the first parse_maps (`re` costs the launcher's start-up)
_MAPS_PATTERN = (rb"^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([sp]) ([0-9a-f]+) "
                 rb"([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$")


def parse_maps(text: bytes) -> list[Mapping]:
    """Parse the text of /proc/PID/maps (pure; unit-tested)."""
    global _MAPS_RE
    if _MAPS_RE is None:
        import re
        _MAPS_RE = re.compile(_MAPS_PATTERN)
    out = []
    for line in text.splitlines():
        m = _MAPS_RE.match(line)
        if not m:
            continue
        g = m.groups()
        out.append(Mapping(int(g[0], 16), int(g[1], 16), g[2] == b"r", g[3] == b"w",
                           g[4] == b"x", g[5] == b"s", int(g[6], 16),
                           os.makedev(int(g[7], 16), int(g[8], 16)), int(g[9]),
                           g[10].decode("utf-8", "replace").rstrip()))
    return out


def read_maps(pid: int | str = "self") -> list[Mapping]:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return parse_maps(f.read())


class _ProcmapQuery(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("query_flags", ctypes.c_uint64),
                ("query_addr", ctypes.c_uint64), ("vma_start", ctypes.c_uint64),
                ("vma_end", ctypes.c_uint64), ("vma_flags", ctypes.c_uint64),
                ("vma_page_size", ctypes.c_uint64), ("vma_offset", ctypes.c_uint64),
                ("inode", ctypes.c_uint64), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("vma_name_size", ctypes.c_uint32),
                ("build_id_size", ctypes.c_uint32), ("vma_name_addr", ctypes.c_uint64),
                ("build_id_addr", ctypes.c_uint64)]


assert ctypes.sizeof(_ProcmapQuery) == 104
PROCMAP_QUERY = 0xC0686611  # _IOWR('f', 17, struct procmap_query)
_procmap = {"fd": None, "pid": None, "ok": None}
_NAME_BUF = ctypes.create_string_buffer(4096)


def _maps_fd() -> int | None:
    pid = os.getpid()
    if _procmap["pid"] != pid:  # after fork, /proc/self/maps must be reopened
        if _procmap["fd"] is not None:
            try:
                os.close(_procmap["fd"])
            except OSError:
                pass
        _procmap["fd"] = os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
        _procmap["pid"] = pid
    return _procmap["fd"]


def procmap_query_available() -> bool:
    if _procmap["ok"] is None:
        try:
            _ioctl_query(_maps_fd(), id(_procmap))
            _procmap["ok"] = True
        except OSError as e:
            _procmap["ok"] = e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)
    return bool(_procmap["ok"])


def _ioctl_query(fd: int, addr: int) -> Mapping | None:
    q = _ProcmapQuery()
    q.size = ctypes.sizeof(q)
    q.query_addr = addr
    q.vma_name_size = len(_NAME_BUF)
    q.vma_name_addr = ctypes.addressof(_NAME_BUF)
    if _libc.ioctl(fd, PROCMAP_QUERY, ctypes.byref(q)) != 0:
        e = ctypes.get_errno()
        if e == errno.ENOENT:
            return None
        raise OSError(e, f"PROCMAP_QUERY: {os.strerror(e)}")
    name = _NAME_BUF.value.decode("utf-8", "replace") if q.vma_name_size else ""
    return Mapping(q.vma_start, q.vma_end, bool(q.vma_flags & 1), bool(q.vma_flags & 2),
                   bool(q.vma_flags & 4), bool(q.vma_flags & 8), q.vma_offset,
                   os.makedev(q.dev_major, q.dev_minor), q.inode, name)


def query_mapping(addr: int) -> Mapping | None:
    """The mapping of this process that covers addr, or None.

    Uses the PROCMAP_QUERY ioctl (Linux ≥ 6.11), else parses /proc/self/maps.
    """
    if procmap_query_available():
        return _ioctl_query(_maps_fd(), addr)
    for m in read_maps():
        if m.start <= addr < m.end:
            return m
    return None


def mappings_covering(start: int, end: int) -> list[Mapping]:
    """The consecutive mappings covering [start, end); raises LookupError on a gap."""
    out = []
    addr = start
    while addr < end:
        m = query_mapping(addr)
        if m is None or m.start > addr:
            raise LookupError(f"address {addr:#x} is not mapped")
        out.append(m)
        addr = m.end
    return out



# ---------------------------------------------------------------- process supervision (launcher)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread exits."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_PDEATHSIG)")


def set_child_subreaper(on: bool = True) -> None:
    """Orphaned descendants of this process are reparented to it (not to init)."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise _oserror("prctl(PR_SET_CHILD_SUBREAPER)")


def child_pids(pid: int | str = "self") -> list[int]:
    """Direct children of a process (all its threads), from /proc/PID/task/*/children."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def group_pids(pgid) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid, or one of the
    pgids if a collection is given (one /proc scan)."""
    pgids = {pgid} if isinstance(pgid, int) else set(pgid)
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields: state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) in pgids and fields[0] not in (b"Z", b"X"):
            out.append(int(name))
    return out


# ---------------------------------------------------------------- fd proxy / map cache helpers

def peer_cred(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a connected unix socket (SO_PEERCRED)."""
    import socket as _socket
    import struct as _struct
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _struct.calcsize("3i"))
    return _struct.unpack("3i", raw)


def fd_size(fd: int) -> int:
    """Size in bytes of the file behind fd (fstat)."""
    return os.fstat(fd).st_size


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover - e.g. hard is infinity
            pass
    return soft


def set_nofile_limit(n: int) -> int:
    """Set the soft RLIMIT_NOFILE to n (at most the hard limit); returns the new soft limit."""
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        n = min(n, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    return n


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def max_map_count() -> int:
    """vm.max_map_count (65530 when it cannot be read)."""
    try:
        with open("/proc/sys/vm/max_map_count", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):  # pragma: no cover
        return 65530


def mem_total() -> int:
    """Physical memory in bytes."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE
    except (OSError, ValueError):  # pragma: no cover
        return 1 << 33


def memory_and_swap() -> int:
    """Physical memory and swap in bytes (MemTotal + SwapTotal, read once): more
    than this in one allocation, Linux's default overcommit heuristic refuses
    (numpy's ``np.zeros`` raises MemoryError), while a memfd of that size is
    granted and fails only as it is written."""
    if _memory_and_swap:
        return _memory_and_swap[0]
    _memory_and_swap.append(_read_memory_and_swap())
    return _memory_and_swap[0]


_memory_and_swap: list[int] = []


def _read_memory_and_swap() -> int:
    try:
        with open("/proc/meminfo", "rb") as f:
            kb = {k: int(v.split()[0]) for k, _, v in (line.partition(b":") for line in f)
                  if k in (b"MemTotal", b"SwapTotal")}
        return (kb[b"MemTotal"] + kb.get(b"SwapTotal", 0)) * 1024
    except (OSError, ValueError, KeyError):  # pragma: no cover
        return mem_total()


def proc_ids(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1]), int(fields[2])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


PR_GET_CHILD_SUBREAPER = 37


def get_child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    if _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.cast(ctypes.byref(flag), ctypes.c_void_p).value,
                   0, 0, 0) != 0:
        raise _oserror("prctl(PR_GET_CHILD_SUBREAPER)")
    return bool(flag.value)



# ---------------------------------------------------------------- process-shared locks
# (one-sided communication: a robust, process-shared pthread mutex placed in a memfd
# every rank maps; a holder that dies makes the next locker get EOWNERDEAD)

MUTEX_BYTES = 64                 # room for a pthread_mutex_t (40 B x86_64, 48 B aarch64)
_PTHREAD_PROCESS_SHARED, _PTHREAD_MUTEX_ROBUST = 1, 1
_vp = ctypes.c_void_p
for _fn, _args in (("pthread_mutexattr_init", [_vp]), ("pthread_mutexattr_destroy", [_vp]),
                   ("pthread_mutexattr_setpshared", [_vp, ctypes.c_int]),
                   ("pthread_mutexattr_setrobust", [_vp, ctypes.c_int]),
                   ("pthread_mutex_init", [_vp, _vp]), ("pthread_mutex_lock", [_vp]),
                   ("pthread_mutex_trylock", [_vp]), ("pthread_mutex_unlock", [_vp]),
                   ("pthread_mutex_consistent", [_vp])):
    getattr(_libc, _fn).argtypes = _args
    getattr(_libc, _fn).restype = ctypes.c_int
del _fn, _args


def _mutex_init(addr, robust: bool) -> None:
    """Initialise a process-shared mutex at ``addr`` (MUTEX_BYTES), robust or not."""
    attr = ctypes.create_string_buffer(64)
    for rc in (_libc.pthread_mutexattr_init(attr),
               _libc.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
               _libc.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST) if robust else 0,
               _libc.pthread_mutex_init(addr, attr)):
        if rc:
            raise OSError(rc, f"pthread mutex init: {os.strerror(rc)}")
    _libc.pthread_mutexattr_destroy(attr)


# fence()'s mutex, in this process's memory but process-shared: glibc (2.34+) locks and
# unlocks a *private* mutex with plain stores while the process has one thread
# (__libc_single_threaded), which orders nothing; a process-shared one always takes
# the atomic path (lock cmpxchg, xchg)
_FENCE = ctypes.create_string_buffer(MUTEX_BYTES)
_mutex_init(_FENCE, robust=False)


def fence() -> None:
    """A full memory barrier: every store made before it is visible to other cores
    before any load or store made after it, non-temporal ones (large
    memset/memcpy) included.  The unlock of a process-shared mutex is an
    ``xchg``, a locked instruction, which x86-64 never reorders with other loads
    and stores (the trylock before it is a ``lock cmpxchg`` when the mutex is
    free).  The unlock runs whether the trylock took the mutex or not, so the
    fence never blocks and always fences: a Python signal handler's exception
    between the two calls leaves the mutex locked (a blocking lock then waited
    forever, and glibc's trylock of a busy mutex is a plain load), and another
    thread's fence may hold it for an instant (mutual exclusion is not its use).
    Not for hot paths (≈ 0.8 µs)."""
    _libc.pthread_mutex_trylock(_FENCE)
    _libc.pthread_mutex_unlock(_FENCE)


def shared_mutex_init(addr: int) -> None:
    """Initialise a process-shared robust mutex at ``addr`` (MUTEX_BYTES of shared memory)."""
    _mutex_init(addr, robust=True)


def shared_mutex_lock(addr: int, block: bool = True) -> bool | None:
    """Lock the shared mutex at ``addr`` (sleeping in the kernel, GIL released).

    Returns False normally, True when the previous holder died holding it (the
    mutex is then made consistent and is held by the caller), None when
    ``block`` is False and someone else holds it."""
    rc = (_libc.pthread_mutex_lock if block else _libc.pthread_mutex_trylock)(addr)
    if rc == 0:
        return False
    if rc == errno.EOWNERDEAD:
        _libc.pthread_mutex_consistent(addr)
        return True
    if rc == errno.EBUSY and not block:
        return None
    raise OSError(rc, f"pthread_mutex_lock: {os.strerror(rc)}")


def shared_mutex_unlock(addr: int) -> None:
    rc = _libc.pthread_mutex_unlock(addr)
    if rc:
        raise OSError(rc, f"pthread_mutex_unlock: {os.strerror(rc)}")


def open_peer_fd(pid: int, fd: int) -> int:
    """A new fd (read-write, close-on-exec) for the file behind fd ``fd`` of process
    ``pid`` (a memfd it shares): needs the same ptrace access as process_vm_readv."""
    return os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
# ---------------------------------------------------------------- buffer exporters (DLPack, CAI)
# The exporters of mmpi's buffer specs that have no buffer protocol describe their
# memory by raw pointers: a PyCapsule holding a DLManagedTensor(Versioned) for DLPack,
# an (address, readonly) pair for the CUDA array interface.  Only these calls read them.

_CapsuleIsValid = ctypes.pythonapi.PyCapsule_IsValid
_CapsuleIsValid.restype = ctypes.c_int
_CapsuleIsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_CapsuleGetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_CapsuleGetPointer.restype = ctypes.c_void_p
_CapsuleGetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def capsule_pointer(capsule, name: bytes) -> int | None:
    """The pointer held by ``capsule`` if it is a valid PyCapsule named ``name``
    (None otherwise: not a capsule, another name, e.g. a DLPack capsule already
    consumed and renamed "used_dltensor").  The capsule is neither renamed nor
    released: its owner's destructor stays in charge of the memory."""
    if not _CapsuleIsValid(capsule, name):
        return None
    p = _CapsuleGetPointer(capsule, name)
    if not p:  # pragma: no cover - IsValid said yes
        raise BufferError(f"capsule {name!r} holds a NULL pointer")
    return p


def read_memory(address: int, nbytes: int) -> bytes:
    """A copy of ``nbytes`` at a raw address of this process (the caller vouches the
    address is readable: a descriptor handed over by an exporter)."""
    if nbytes <= 0:
        return b""
    if not address:
        raise BufferError("NULL pointer")
    return ctypes.string_at(address, nbytes)


def host_accessible(address: int, nbytes: int, writable: bool) -> bool:
    """Whether [address, address + nbytes) lies in mappings of this process that are
    readable (and writable if asked): host memory, never e.g. a GPU device pointer
    (reserved PROT_NONE under CUDA's unified addressing, or not mapped at all).
    Asks the kernel (PROCMAP_QUERY or /proc/self/maps): nothing is dereferenced."""
    if nbytes <= 0:
        return True
    if address <= 0:
        return False
    try:
        maps = mappings_covering(address, address + nbytes)
    except LookupError:
        return False
    return all(m.readable and (m.writable or not writable) for m in maps)


# ---------------------------------------------------------------- kernel feature probes

def _probe_futex_waitv() -> str:
    # no waiter at all: a kernel that has the call answers EINVAL, one without it ENOSYS
    r = _libc.syscall(ctypes.c_long(_WAITV), None, ctypes.c_uint(0), ctypes.c_uint(0), None,
                      ctypes.c_int(_CLOCK_MONOTONIC))
    e = ctypes.get_errno()
    if r == -1 and e == errno.ENOSYS:
        raise OSError(e, "futex_waitv: the kernel has no such system call")
    return ""


def _probe_seals() -> str:
    fd = memfd_create("driller-probe")
    try:
        os.ftruncate(fd, PAGE_SIZE)
        add_seals(fd, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
    finally:
        os.close(fd)
    return ""


def _probe_dontunmap() -> str:
    fd = memfd_create("driller-probe")
    try:
        os.ftruncate(fd, PAGE_SIZE)
        src = mmap(PAGE_SIZE, fd=fd)
        try:
            dst = mmap(PAGE_SIZE)
            try:
                if not mremap_keep(src, PAGE_SIZE, dst):
                    raise OSError(errno.EINVAL, "mremap(MREMAP_DONTUNMAP) refused a shared "
                                                "mapping (Linux >= 5.13 allows it)")
            finally:
                munmap(dst, PAGE_SIZE)
        finally:
            munmap(src, PAGE_SIZE)
    finally:
        os.close(fd)
    return ""


def _probe_vm_readv() -> str:
    src, dst = new_bytearray(64), new_bytearray(64)
    src[:] = b"\x5a" * 64
    process_vm_readv(os.getpid(), buffer_address(dst)[0], buffer_address(src)[0], 64)
    if bytes(dst) != bytes(src):
        raise OSError(errno.EIO, "process_vm_readv copied the wrong bytes")
    scope = ptrace_scope()
    return "" if scope in (None, 0, 1) else f"Yama ptrace_scope={scope}: peers cannot read us"


def _probe_pidfd() -> str:
    os.close(pidfd_open(os.getpid()))
    return ""


def _probe_seqpacket() -> str:
    import socket   # only here: the fd proxy's own process keeps its imports few
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.close()
    b.close()
    return ""


# (name, the Linux version that has it, what driller uses it for, probe)
KERNEL_FEATURES = (
    ("memfd_create+F_SEAL_FUTURE_WRITE", (5, 1), "shared segments, read-only sharing",
     _probe_seals),
    ("mremap(MREMAP_DONTUNMAP) on shared mappings", (5, 13), "fork safety of read-only arrays",
     _probe_dontunmap),
    ("pidfd_open", (5, 3), "peer death detection", _probe_pidfd),
    ("process_vm_readv", (3, 2), "single-copy messages between ranks", _probe_vm_readv),
    ("futex_waitv", (5, 16), "mmpi waits on several rings at once", _probe_futex_waitv),
    ("AF_UNIX SOCK_SEQPACKET", (2, 6), "the fd proxy", _probe_seqpacket),
)


def probe_features() -> list[tuple[str, tuple[int, int], str, bool, str]]:
    """Each kernel feature driller needs, tried for real on this machine:
    (name, Linux version that has it, what it is for, available, detail)."""
    out = []
    for name, since, use, probe in KERNEL_FEATURES:
        try:
            detail, ok = probe(), True
        except OSError as e:
            detail, ok = f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e}", False
        out.append((name, since, use, ok, detail))
    return out
