"""A peer process that tries every route to writing memory it was given read-only.

Run in another interpreter (spawn pool) by tests/test_readonly.py.  Every
attempt is recorded as ("refused", exception name, errno) or ("ALLOWED", ...);
the test asserts each one.  Plain ctypes here (fallocate) only to attack.
"""

import ctypes
import dataclasses
import errno
import mmap
import os
import pickle

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
MADV_REMOVE = 9

_kept = {}  # arrays kept attached between calls of the pool worker


def _proxy_client():
    from driller import mapcache
    return mapcache.ProxyClient.get()


def _try(fn):
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - we record what refused us
        return ("refused", type(e).__name__, getattr(e, "errno", None))
    return ("ALLOWED", repr(res)[:80], None)


def _punch(fd, n):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, n) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _fd_routes(prefix: str, fd: int, size: int, out: dict) -> None:
    """Every write route through one fd of the memfd."""
    from driller import _linux
    page = _linux.PAGE_SIZE
    out[prefix + "pwrite"] = _try(lambda: os.pwrite(fd, b"\x7f" * 8, 0))
    out[prefix + "write"] = _try(lambda: os.write(fd, b"\x7f" * 8))
    out[prefix + "mmap_shared_rw"] = _try(lambda: mmap.mmap(fd, size, mmap.MAP_SHARED,
                                                           mmap.PROT_READ | mmap.PROT_WRITE))
    out[prefix + "mmap_raw_rw"] = _try(lambda: _linux.mmap(size, fd=fd, shared=True))
    out[prefix + "ftruncate_shrink"] = _try(lambda: os.ftruncate(fd, size - page))
    out[prefix + "ftruncate_grow"] = _try(lambda: os.ftruncate(fd, size + page))
    out[prefix + "add_seal_write"] = _try(lambda: _linux.add_seals(fd, _linux.F_SEAL_WRITE))
    out[prefix + "add_seal_future_write"] = _try(
        lambda: _linux.add_seals(fd, _linux.F_SEAL_FUTURE_WRITE))
    out[prefix + "punch_hole"] = _try(lambda: _punch(fd, size))

    def mprotect_ro_mapping():
        addr = _linux.mmap(size, fd=fd, shared=True, readonly=True)
        try:
            _linux.mprotect(addr, size, readonly=False)
        finally:
            _linux.munmap(addr, size)
    out[prefix + "mprotect_new_ro_mapping"] = _try(mprotect_ro_mapping)

    def madv_remove():
        addr = _linux.mmap(size, fd=fd, shared=True, readonly=True)
        try:
            _linux.madvise(addr, size, MADV_REMOVE)
        finally:
            _linux.munmap(addr, size)
    out[prefix + "madvise_remove"] = _try(madv_remove)

    for name, flags in (("reopen_rdwr", os.O_RDWR), ("reopen_wronly", os.O_WRONLY)):
        try:
            fd2 = os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)
        except OSError as e:
            out[prefix + name] = ("refused", type(e).__name__, e.errno)
            continue
        try:
            out[prefix + name + "_pwrite"] = _try(lambda: os.pwrite(fd2, b"\x7f" * 8, 0))
            if flags == os.O_RDWR:
                out[prefix + name + "_mmap_rw"] = _try(
                    lambda: _linux.mmap(size, fd=fd2, shared=True))
        finally:
            os.close(fd2)


def attack(h, owner_pid: int, owner_range: tuple[int, int], proxy_pid: int,
           pickled: bytes | None = None) -> dict:
    """Attach h (or unpickle ``pickled``) read-only and try every route to writing it."""
    import driller
    from driller import _linux
    out = {}
    out["attach_writable"] = _try(lambda: driller.attach(h, readonly=False))
    forged = dataclasses.replace(h, readonly=False)
    out["attach_forged_writable_handle"] = _try(lambda: driller.attach(forged))
    arr = pickle.loads(pickled) if pickled is not None else driller.attach(h)
    _kept["arr"] = arr
    out["writeable_flag"] = arr.flags.writeable
    out["handle_of_attached_is_readonly"] = driller.handle(arr).readonly

    def flip():
        arr.flags.writeable = True
    out["flip_writeable"] = _try(flip)

    def store():
        arr.reshape(-1).view(np.uint8)[0] = 0x7f
    out["numpy_store"] = _try(store)

    addr = arr.__array_interface__["data"][0]
    m = _linux.query_mapping(addr)
    size = m.end - m.start
    out["own_mapping_writable"] = m.writable
    out["mprotect_own_mapping"] = _try(lambda: _linux.mprotect(m.start, size, readonly=False))

    # /proc/self/map_files of our own read-only mapping
    path = f"/proc/self/map_files/{m.start:x}-{m.end:x}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        out["map_files_self_open"] = ("refused", type(e).__name__, e.errno)
    else:
        try:
            _fd_routes("map_files_self:", fd, size, out)
        finally:
            os.close(fd)

    # /proc/<owner>/map_files of the owner's own, writable mapping
    lo, hi = owner_range
    try:
        fd = os.open(f"/proc/{owner_pid}/map_files/{lo:x}-{hi:x}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        out["map_files_owner_open"] = ("refused", type(e).__name__, e.errno)
    else:
        try:
            _fd_routes("map_files_owner:", fd, hi - lo, out)
        finally:
            os.close(fd)

    # the fd itself, fetched from the proxy as any holder of the handle can
    fd, _meta = _proxy_client().fetch(h.proxy, h.secret, h.key)
    try:
        _fd_routes("proxy_fd:", fd, os.fstat(fd).st_size, out)
        ino = os.fstat(fd).st_ino
    finally:
        os.close(fd)

    # the proxy's own fd of the memfd, reopened through /proc/<proxy>/fd
    found = False
    for name in os.listdir(f"/proc/{proxy_pid}/fd"):
        p = f"/proc/{proxy_pid}/fd/{name}"
        try:
            if os.stat(p).st_ino != ino:
                continue
            fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        found = True
        try:
            _fd_routes("proxy_proc_fd:", fd, os.fstat(fd).st_size, out)
        finally:
            os.close(fd)
        break
    out["proxy_proc_fd_found"] = found
    out["sum"] = float(np.asarray(arr, dtype=np.float64).sum())
    return out


def kept_sum() -> float:
    """The sum of the array attached by attack(), read again now."""
    return float(np.asarray(_kept["arr"], dtype=np.float64).sum())


def drop() -> None:
    _kept.clear()


def try_add_seal(h) -> tuple:
    """A holder of a writable handle tries to lock its owner out with a seal."""
    from driller import _linux
    fd, _meta = _proxy_client().fetch(h.proxy, h.secret, h.key)
    try:
        return _try(lambda: _linux.add_seals(fd, _linux.F_SEAL_FUTURE_WRITE))
    finally:
        os.close(fd)


def reshare_readonly(pickled: bytes) -> tuple:
    """Unpickle a writable array, then ask a read-only handle of it (only its owner can)."""
    import driller
    arr = pickle.loads(pickled)
    try:
        driller.handle(arr, readonly=True)
    except driller.DrillerError as e:
        return (type(e).__name__, str(e))
    return ("made", "")


def load_readonly_flags(pickled: bytes) -> tuple:
    """Unpickle and report (writeable flag, handle readonly, sum)."""
    import driller
    arr = pickle.loads(pickled)
    return (arr.flags.writeable, driller.handle(arr).readonly,
            float(np.asarray(arr, dtype=np.float64).sum()))


def errno_name(code):
    return errno.errorcode.get(code, str(code)) if code is not None else None
