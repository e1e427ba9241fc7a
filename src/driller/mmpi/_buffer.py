"""mpi4py's ``MPI.buffer`` (alias ``MPI.memory``), and ``Alloc_mem``/``Free_mem``.

A :class:`buffer` is a flat byte view of some memory that exports the buffer
protocol.  Python 3.10/3.11 classes cannot export it by themselves (PEP 688 came
with 3.12), so a buffer *is* a one-dimensional ``uint8`` numpy array (a
subclass that behaves like mpi4py's object: ``buf[i]`` is an int, slices are
buffers, ``address``, ``obj``, ``readonly``, ``release()``...).  The memory is
never copied: the array is a view of the object's memory (``buffer(obj)``,
``frombuffer``), of raw memory (``fromaddress``), of a new bytearray
(``allocate``) or of a block of driller's shared heap (``Alloc_mem``: memory
that is shareable from birth).

``release()`` detaches the object from its memory in mpi4py's terms (``address``
and ``nbytes`` read 0 and ``obj`` None afterwards); the array itself, like any
numpy view, keeps the memory it was made from alive until it is collected, so a
stale view never reads unmapped memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only (PEP 563 strings): no import at run time
    from ._typing import Buffer

from typing import Any

import numpy as np

from .. import _errcodes, _linux
from ..errors import MmpiError
from ._bufspec import get_buffer

__all__ = ["buffer", "memory", "Alloc_mem", "Free_mem"]

_UNSET = object()
_HOST_KINDS = (0, 1)   # get_buffer's kinds of CPU memory: the buffer protocol, DLPack kDLCPU


class buffer(np.ndarray):
    """Buffer: a flat byte view of memory, with the buffer protocol (mpi4py's ``MPI.buffer``)."""

    def __new__(cls, buf: Any = _UNSET) -> "buffer":
        if buf is _UNSET:
            return cls._wrap(np.empty(0, np.uint8), None, False, empty=True)
        try:
            readonly = memoryview(buf).readonly
        except TypeError:   # a DLPack / CUDA-array-interface exporter: its own flag
            readonly = get_buffer(buf, False, "buffer")[0].readonly
        return cls.frombuffer(buf, readonly=readonly)

    def __array_finalize__(self, obj) -> None:
        d = getattr(obj, "__dict__", None)
        self._obj = d.get("_obj") if d else None
        self._ro = bool(d.get("_ro")) if d else not self.flags.writeable
        self._released = False
        self._empty = False
        self._device = bool(d.get("_device")) if d else False

    @classmethod
    def _wrap(cls, arr: np.ndarray, obj, readonly: bool, empty: bool = False) -> "buffer":
        b = arr.view(cls)
        if readonly and b.flags.writeable:
            b.flags.writeable = False
        b._obj = obj
        b._ro = bool(readonly)
        b._released = False
        b._empty = empty
        b._device = False
        return b

    # -- constructors --
    @classmethod
    def allocate(cls, nbytes: int, clear: bool = False) -> "buffer":
        """Buffer allocation: a new writable buffer of ``nbytes`` bytes (zeroed)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
            raise TypeError(f"buffer.allocate: nbytes must be an int, got "
                            f"{type(nbytes).__name__}")
        if nbytes < 0:
            raise ValueError(f"buffer.allocate: negative size {nbytes}")
        obj = bytearray(int(nbytes))
        arr = np.frombuffer(obj, np.uint8) if nbytes else np.empty(0, np.uint8)
        return cls._wrap(arr, obj, False)

    @classmethod
    def frombuffer(cls, obj: Any, readonly: bool = False) -> "buffer":
        """Buffer from a buffer-like object (its memory, not a copy)."""
        kind = 0
        try:
            mv = memoryview(obj)
        except TypeError:
            if not (hasattr(obj, "__dlpack__") or hasattr(obj, "__cuda_array_interface__")):
                raise TypeError(f"buffer: a {type(obj).__name__} does not support the buffer "
                                f"protocol") from None
            mv, kind = get_buffer(obj, not readonly, "buffer")   # DLPack, CUDA array iface
        if not mv.c_contiguous:
            raise BufferError("buffer: the object's memory is not contiguous")
        if not readonly and mv.readonly:
            raise BufferError("buffer: the object is read-only (pass readonly=True)")
        if mv.nbytes:
            flat = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
            arr = np.frombuffer(flat, np.uint8)
            if not readonly and not arr.flags.writeable:
                arr.flags.writeable = True
        else:
            arr = np.empty(0, np.uint8)
        b = cls._wrap(arr, obj, readonly)
        b._device = kind not in _HOST_KINDS
        return b

    @classmethod
    def fromaddress(cls, address: int, nbytes: int, readonly: bool = False) -> "buffer":
        """Buffer from an address and a size in bytes (memory that must stay mapped)."""
        address, nbytes = int(address), int(nbytes)
        if nbytes < 0:
            raise ValueError(f"buffer.fromaddress: negative size {nbytes}")
        if address == 0 and nbytes > 0:
            raise ValueError("buffer.fromaddress: a NULL address with a nonzero size")
        if not nbytes:
            return cls._wrap(np.empty(0, np.uint8), None, readonly)
        mv = _linux.memory_at(address, nbytes, readonly=readonly)
        return cls._wrap(np.frombuffer(mv, np.uint8), None, readonly)

    # -- properties --
    def _host(self, what: str) -> None:
        if self._device:
            raise BufferError(f"buffer.{what}: the buffer's exporter says its memory is on "
                              f"a device (DLPack device, CUDA array interface): no CPU "
                              f"access through MPI.buffer")

    @property
    def __array_interface__(self) -> dict:
        # numpy's own, but an empty buffer() (mpi4py's NULL buffer) says address 0
        self._host("__array_interface__")   # (so MPI.Get_address refuses device memory)
        d = np.ndarray.__array_interface__.__get__(self)
        if self._empty:
            d["data"] = (0, d["data"][1])
        return d

    @property
    def address(self) -> int:
        """Buffer address."""
        if self._released or self._empty:
            return 0
        return np.ndarray.__array_interface__.__get__(self)["data"][0]

    @property
    def obj(self) -> Buffer | None:
        """Object exposing the buffer (None if none)."""
        return None if self._released else self._obj

    @property
    def nbytes(self) -> int:
        """Buffer size (in bytes)."""
        return 0 if self._released else self.size

    @property
    def readonly(self) -> bool:
        """Buffer is read-only."""
        return False if self._released else self._ro

    @property
    def format(self) -> str:
        """Format of each element ('B')."""
        return "B"

    @property
    def itemsize(self) -> int:
        """Size (in bytes) of each element (1)."""
        return 1

    # -- methods --
    def cast(self, format: str, shape: list[int] | tuple[int, ...] | None = None) -> memoryview:  # noqa: A002 (mpi4py's name)
        """Cast to a memoryview with a new format or shape."""
        self._host("cast")
        mv = memoryview(self)
        return mv.cast(format) if shape is None else mv.cast(format, shape)

    def tobytes(self, order: str | None = None) -> bytes:
        """Return the data in the buffer as a byte string (``order`` is accepted and
        ignored, as mpi4py's: the buffer is flat bytes)."""
        self._host("tobytes")
        return np.ndarray.tobytes(self)

    def tomemory(self) -> memoryview:
        """A memoryview of the buffer."""
        return memoryview(self)

    def toreadonly(self) -> "buffer":
        """A read-only buffer of the same memory."""
        b = self.view(type(self))
        b.flags.writeable = False
        b._obj, b._ro, b._released, b._empty = self._obj, True, False, self._empty
        return b

    def release(self) -> None:
        """Release the underlying buffer exposed by the buffer object."""
        self._released = True

    # -- sequence behaviour, as mpi4py's --
    def __len__(self) -> int:
        return self.nbytes

    def __getitem__(self, item):
        if isinstance(item, slice):
            if item.step not in (None, 1):
                raise IndexError("buffer: slice step must be 1")
            return np.ndarray.__getitem__(self, item)
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            self._host("__getitem__")
            return int(np.ndarray.__getitem__(self, item))
        raise TypeError(f"buffer indices must be integers or slices, not "
                        f"{type(item).__name__}")

    def __setitem__(self, item, value) -> None:
        if isinstance(item, slice):
            if item.step not in (None, 1):
                raise IndexError("buffer: slice step must be 1")
        elif not isinstance(item, (int, np.integer)) or isinstance(item, bool):
            raise TypeError(f"buffer indices must be integers or slices, not "
                            f"{type(item).__name__}")
        if self._ro:
            raise TypeError("buffer is read-only")
        self._host("__setitem__")
        if not isinstance(value, (int, np.integer)):
            try:
                value = np.frombuffer(memoryview(value).cast("B"), np.uint8)
            except TypeError:
                pass
        np.ndarray.__setitem__(self, item, value)

    def __delitem__(self, item) -> None:
        raise NotImplementedError("buffer: items cannot be deleted")

    def __repr__(self) -> str:
        return f"<MPI.buffer {self.nbytes} bytes at {self.address:#x}>"

    __str__ = __repr__

    def __reduce__(self):
        return (type(self).frombuffer, (self.tobytes(), self.readonly))

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        return True


memory = buffer


def Alloc_mem(size: int, info: Any = None) -> buffer:
    """Allocate memory for message passing and remote memory access: a block of
    driller's shared heap (shareable with peers from birth)."""
    from .. import heap
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"Alloc_mem: size must be an int, got {type(size).__name__}")
    if size < 0:
        raise MmpiError(f"Alloc_mem: negative size {size}", error_class=_errcodes.ERR_SIZE)
    block = heap.allocate(max(int(size), 1))
    arr = np.asarray(block)[:int(size)]
    return buffer._wrap(arr, None, False)


def Free_mem(mem: buffer) -> None:
    """Free memory allocated with Alloc_mem (the buffer reads as released)."""
    if not isinstance(mem, buffer):
        raise MmpiError(f"Free_mem: expected a buffer from MPI.Alloc_mem, got "
                        f"{type(mem).__name__}", error_class=_errcodes.ERR_BUFFER)
    mem.release()
