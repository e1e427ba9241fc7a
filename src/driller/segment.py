"""memfd-backed shared regions: create, seal, map, unmap; identity and handles.

A :class:`Region` is one mapping of (part of) a memfd.  It exposes the numpy
array interface, so ``np.asarray(region)`` is a zero-copy uint8 view whose
``base`` is the region: the mapping is unmapped only when the region and every
view of it are gone.  Nothing is unmapped under a live view.

Seals, in two steps.  At creation a segment's memfd is sealed against
shrinking and growing (no one can truncate it under a peer's mapping).  At its
first publication (:meth:`Segment.seal`, before the fd leaves this process)
what peers may do is fixed for good, with ``F_SEAL_SEAL`` so no peer can add
seals later:

* writable: ``F_SEAL_SEAL`` only;
* read-only: ``F_SEAL_FUTURE_WRITE | F_SEAL_SEAL``.  The owner's own mapping,
  made before, stays writable; every other route to writing is refused by the
  kernel, for every fd of the memfd however it was obtained (the proxy,
  ``/proc/*/fd`` or ``/proc/*/map_files`` reopened ``O_RDWR``): a new writable
  shared mapping (EPERM), ``write``/``pwrite`` (EPERM), ``mprotect(PROT_WRITE)``
  of a read-only mapping (EACCES), hole punching (EPERM), ``ftruncate`` to
  another size (EPERM), adding seals (EPERM).  So the owner must never need a
  new writable mapping of a read-only segment: it keeps the one it has (holes
  move pages with ``mremap``, never map the memfd again).
"""

from __future__ import annotations

import itertools
import os
import weakref
from dataclasses import dataclass
TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing (mypy knows the idiom)

from . import _linux
from .errors import ReadOnlyError

if TYPE_CHECKING:  # numpy loads in Region.array only: the launcher maps without it
    from typing import Any, Literal

    import numpy as np
    import numpy.typing as npt

    NDArray = npt.NDArray[Any]

__all__ = ["Region", "Segment", "Handle", "new_key"]

_SEALS = _linux.F_SEAL_SHRINK | _linux.F_SEAL_GROW  # F_SEAL_SEAL comes at first publish
_serial = itertools.count(1)

# What to do instead when a read-only handle cannot be enforced, by segment name.
_READONLY_INSTEAD = {
    "arena": (
        "Small shared arrays (under 256 KiB) live in such arenas. For a read-only share use "
        "an array of at least 256 KiB (a segment of its own), or drill a page-aligned "
        "copy read-only: buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE) with n = "
        "a.nbytes rounded up to a multiple of mmap.PAGESIZE; "
        "v = np.frombuffer(buf, a.dtype, a.size).reshape(a.shape); v[...] = a; "
        "hole = driller.drill(buf, readonly=True) (keep it); "
        "h = driller.handle(v, readonly=True)."),
    "array": (
        "Ask for the read-only handle first, before any writable handle or pickle of "
        "the array (it is then sealed read-only for good), or share a read-only copy: "
        "driller.handle(driller.array(a), readonly=True)."),
    "hole": (
        "Drill it with driller.drill(obj, readonly=True) from the start (all its handles "
        "are then read-only), or drill a copy read-only."),
}
_nonce = os.urandom(4).hex()   # (secrets.token_hex, without importing secrets)


def _refresh_nonce() -> None:
    global _nonce
    _nonce = os.urandom(4).hex()


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
        self._finalizer = weakref.finalize(self, _unmap if unmap else _keep, address, length)
        self._finalizer.atexit = False
        return self

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.nbytes,), "typestr": "|u1", "version": 3,
                "data": (self.address, self.readonly)}

    def array(self, dtype: Any = "u1", shape: tuple[int, ...] | None = None, offset: int = 0,
              strides: tuple[int, ...] | None = None,
              order: Literal["C", "F"] = "C") -> NDArray:
        """A numpy view of part of the region (base chain keeps the region alive)."""
        import numpy as np  # here, not at module level: the launcher maps without numpy
        dtype = np.dtype(dtype)
        if shape is None:
            shape = ((self.nbytes - offset) // dtype.itemsize,)
        raw = np.asarray(self)
        return np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, strides=strides,
                          order=order)

    def memoryview(self) -> memoryview:
        """A byte memoryview of the whole region (keeps the region alive), without numpy."""
        return _linux.memory_at(self.address, self.nbytes, readonly=self.readonly, keep=self)

    def __repr__(self) -> str:
        ro = " readonly" if self.readonly else ""
        return f"<driller.Region {self.nbytes} bytes at {self.address:#x}{ro}>"


def _keep(address: int, nbytes: int) -> None:
    """The release of a region adopted with ``unmap=False``: the mapping stays."""


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
    dtype: Any = None       # a numpy dtype (or its str), None: raw bytes
    shape: tuple[int, ...] | None = None
    strides: tuple[int, ...] | None = None
    readonly: bool = False
    gen: int = 0      # the block's generation (driller.heap), 0 for a whole segment
    lease: int = 0    # the transfer lease at the proxy (driller.sharedarray), 0: none
    seq: int = 0      # which of the lease's handles this is (1, 2...; 0: not counted)

    def __repr__(self) -> str:
        what = (f"{self.dtype}{list(self.shape)}" if self.dtype is not None and self.shape
                is not None else f"{self.nbytes} bytes")
        ro = ", readonly" if self.readonly else ""
        return f"Handle(key={self.key!r}, owner={self.owner}, {what}{ro})"


class Segment:
    """A sealed memfd of fixed size owned by this process, mapped once.

    The size is sealed (no shrink, no grow) so no process can truncate it under
    a peer's mapping.  ``exclusive`` is False for a segment shared by several
    objects (an arena), which can then never be sealed read-only.
    """

    def __init__(self, nbytes: int, name: str = "driller", *, fd: int | None = None,
                 region: Region | None = None, data: tuple[int, int] | None = None,
                 exclusive: bool = True):
        if nbytes <= 0:
            raise ValueError("a segment needs at least one byte")
        self.name = name
        self.exclusive = exclusive
        self.sealed_readonly: bool | None = None  # fixed by seal(), at first publish
        self.key = new_key()
        self.owner = os.getpid()
        self.nbytes = _linux.page_ceil(nbytes)
        ours = fd is None
        if fd is None:
            fd = _linux.memfd_create(f"driller:{name}")
        try:
            if ours:
                os.ftruncate(fd, self.nbytes)
                if data is not None:  # initial bytes (address, length): written, not faulted in
                    _linux.pwrite_from(fd, data[0], data[1])
                _linux.add_seals(fd, _SEALS)
            self.inode = _linux.fd_inode(fd)
            self.region = region if region is not None else Region(fd, self.nbytes)
        except BaseException:   # (e.g. no address space left for the mapping: ENOMEM)
            if ours:
                os.close(fd)
            raise
        self.fd = fd
        self.published = False
        self.publisher = 0     # the pid whose proxy entry serves it (see _publish.publish)
        self.proxy = ""        # the address of the proxy it was published to
        self.closed = False

    @property
    def address(self) -> int:
        """Where the segment is mapped in this process."""
        return self.region.address

    def close_fd(self) -> None:
        """Close the memfd (the mapping stays; a published segment's proxy keeps its own fd)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def seal(self, readonly: bool) -> bool:
        """Fix what peers may do with this segment, once; returns whether handles
        of it are read-only.

        The first call seals the memfd (read-only: ``F_SEAL_FUTURE_WRITE`` too,
        see the module docstring) and must come before the fd leaves this
        process.  Later calls answer from that: a segment sealed read-only gives
        read-only handles whatever is asked; asking read-only of a segment
        sealed writable (peers may already map it writable) raises
        :class:`~driller.ReadOnlyError`, as does asking it of a segment shared
        by several objects (an arena), or of one this process inherited through
        fork that nobody sealed yet (the seal would bind its owner too).  The
        message says what to do instead.
        """
        if readonly and not self.exclusive:
            raise ReadOnlyError(
                f"segment {self.key} ({self.name}) holds several arrays: its pages cannot "
                "be made read-only for peers one array at a time. "
                + _READONLY_INSTEAD.get(self.name, ""))
        if self.sealed_readonly is None:
            if self.fd < 0:
                raise ReadOnlyError(f"segment {self.key} has no fd left to seal")
            seals = _linux.get_seals(self.fd)
            if not seals & _linux.F_SEAL_SEAL:  # else sealed already (by a forked child)
                if readonly and self.owner != os.getpid():
                    # (the seal is the memfd's: its owner's later handles would come out
                    # read-only, and the arrays it shares writable would not be)
                    raise ReadOnlyError(
                        f"segment {self.key} ({self.name}, {self.nbytes} bytes) belongs to "
                        f"process {self.owner}, which this process inherited it from "
                        "through fork: only its owner can make its handles read-only "
                        "(sealing it here would make every later handle of the owner's "
                        "read-only too). Ask the owner for a read-only handle, or share "
                        "a read-only copy: driller.handle(driller.array(a), readonly=True).")
                want = _linux.F_SEAL_SEAL | (_linux.F_SEAL_FUTURE_WRITE if readonly else 0)
                try:
                    _linux.add_seals(self.fd, want)
                    seals = want
                except PermissionError:   # another process of the fork sealed it just now
                    seals = _linux.get_seals(self.fd)
                    if not seals & _linux.F_SEAL_SEAL:
                        raise
            self.sealed_readonly = bool(seals & _linux.F_SEAL_FUTURE_WRITE)
        if readonly and not self.sealed_readonly:
            raise ReadOnlyError(
                f"segment {self.key} ({self.name}, {self.nbytes} bytes) was already shared "
                "writable: peers may hold writable mappings of it, so a read-only handle "
                "could not be enforced. " + _READONLY_INSTEAD.get(self.name, ""))
        return self.sealed_readonly

    def __repr__(self) -> str:
        return f"<driller.Segment {self.key} {self.nbytes} bytes at {self.address:#x}>"
