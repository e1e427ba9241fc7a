"""memfd-backed shared regions: create, seal, map, unmap; identity and handles.

A :class:`Region` is one mapping of (part of) a memfd.  It exposes the numpy
array interface, so ``np.asarray(region)`` is a zero-copy uint8 view whose
``base`` is the region: the mapping is unmapped only when the region and every
view of it are gone.  Nothing is unmapped under a live view.
"""

from __future__ import annotations

import itertools
import os
import secrets
import weakref
from dataclasses import dataclass

import numpy as np

from . import _linux

__all__ = ["Region", "Segment", "Handle", "new_key"]

_SEALS = _linux.F_SEAL_SHRINK | _linux.F_SEAL_GROW | _linux.F_SEAL_SEAL
_serial = itertools.count(1)
_nonce = secrets.token_hex(4)


def _refresh_nonce() -> None:
    global _nonce
    _nonce = secrets.token_hex(4)


os.register_at_fork(after_in_child=_refresh_nonce)


def new_key() -> str:
    """A key unique across processes: owner pid, a per-process serial and a nonce."""
    return f"{os.getpid()}-{next(_serial)}-{_nonce}"


def _unmap(address: int, nbytes: int) -> None:
    try:
        _linux.munmap(address, nbytes)
    except OSError:  # pragma: no cover - the range was already gone
        pass


class Region:
    """A mapping of ``nbytes`` of memfd ``fd`` at ``offset`` (a page multiple).

    The fd is not kept: a mapping holds the memory by itself.
    """

    __slots__ = ("address", "nbytes", "readonly", "origin", "_finalizer", "__weakref__")

    def __init__(self, fd: int, nbytes: int, *, offset: int = 0, readonly: bool = False,
                 address: int | None = None):
        length = max(_linux.page_ceil(nbytes), _linux.PAGE_SIZE)
        self.address = _linux.mmap(length, fd=fd, offset=offset, addr=address,
                                   shared=True, readonly=readonly)
        self.nbytes = nbytes
        self.readonly = readonly
        self.origin = None  # the Handle it was attached from, for a peer's segment
        self._finalizer = weakref.finalize(self, _unmap, self.address, length)
        self._finalizer.atexit = False  # never unmap under code still running at exit

    @classmethod
    def adopt(cls, address: int, nbytes: int, readonly: bool = False,
              unmap: bool = True) -> "Region":
        """Wrap a mapping that already exists (unmapped with the region if ``unmap``)."""
        self = cls.__new__(cls)
        self.address, self.nbytes, self.readonly = address, nbytes, readonly
        self.origin = None
        length = max(_linux.page_ceil(nbytes), _linux.PAGE_SIZE)
        self._finalizer = weakref.finalize(self, _unmap if unmap else _noop, address, length)
        self._finalizer.atexit = False
        return self

    @property
    def __array_interface__(self) -> dict:
        return {"shape": (self.nbytes,), "typestr": "|u1", "version": 3,
                "data": (self.address, self.readonly)}

    def array(self, dtype=np.uint8, shape=None, offset: int = 0, strides=None,
              order: str = "C") -> np.ndarray:
        """A numpy view of part of the region (base chain keeps the region alive)."""
        dtype = np.dtype(dtype)
        if shape is None:
            shape = ((self.nbytes - offset) // dtype.itemsize,)
        raw = np.asarray(self)
        return np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, strides=strides,
                          order=order)

    def __repr__(self) -> str:
        ro = " readonly" if self.readonly else ""
        return f"<driller.Region {self.nbytes} bytes at {self.address:#x}{ro}>"


def _noop(*_a) -> None:
    pass


@dataclass(frozen=True)
class Handle:
    """A small, picklable name for (part of) a published segment.

    ``proxy`` and ``secret`` say where to fetch the memfd; ``key`` names the
    segment there, ``gen`` the block inside it and ``lease`` the transfer lease
    that keeps it fetchable until the handle is loaded.  ``dtype``/``shape``/``strides``/``offset`` describe the array
    an :func:`driller.attach` returns (uint8 over the whole segment if None).
    """

    proxy: str
    secret: bytes
    key: str
    owner: int
    nbytes: int
    offset: int = 0
    dtype: str | None = None
    shape: tuple | None = None
    strides: tuple | None = None
    readonly: bool = False
    gen: int = 0      # the block's generation (driller.heap), 0 for a whole segment
    lease: int = 0    # the transfer lease at the proxy (driller.sharedarray), 0: none

    def __repr__(self) -> str:
        what = f"{self.dtype}{list(self.shape)}" if self.dtype else f"{self.nbytes} bytes"
        ro = ", readonly" if self.readonly else ""
        return f"Handle(key={self.key!r}, owner={self.owner}, {what}{ro})"


class Segment:
    """A sealed memfd of fixed size owned by this process, mapped once.

    The size is sealed (no shrink, no grow) so no process can truncate it under
    a peer's mapping.
    """

    def __init__(self, nbytes: int, name: str = "driller", *, fd: int | None = None,
                 region: Region | None = None, data: tuple[int, int] | None = None):
        if nbytes <= 0:
            raise ValueError("a segment needs at least one byte")
        self.key = new_key()
        self.owner = os.getpid()
        self.nbytes = _linux.page_ceil(nbytes)
        if fd is None:
            fd = _linux.memfd_create(f"driller:{name}")
            try:
                os.ftruncate(fd, self.nbytes)
                if data is not None:  # initial bytes (address, length): written, not faulted in
                    _linux.pwrite_from(fd, data[0], data[1])
                _linux.add_seals(fd, _SEALS)
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        self.ro_fd: int | None = None  # a read-only reopening, published instead of fd
        self.inode = _linux.fd_inode(fd)
        self.region = region if region is not None else Region(fd, self.nbytes)
        self.published = False
        self.closed = False

    @property
    def address(self) -> int:
        return self.region.address

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.ro_fd is not None:
            os.close(self.ro_fd)
            self.ro_fd = None

    def __repr__(self) -> str:
        return f"<driller.Segment {self.key} {self.nbytes} bytes at {self.address:#x}>"
