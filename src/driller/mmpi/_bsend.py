"""Buffered sends: the buffer attached with ``Attach_buffer`` and its accounting.

MPI's buffered mode (Bsend, Ibsend, Bsend_init and the lowercase ``bsend``)
completes locally: the message is copied into the space of the buffer the
program attached (``MPI.Attach_buffer`` for the process, ``Comm.Attach_buffer``
for one communicator, which takes precedence), and the send goes on from there
while the program reuses its own buffer.  Each message takes its size plus
``BSEND_OVERHEAD`` bytes of the attached buffer until the transport is done with
it (at once for an eager message; once its last chunk is in the ring for a
streamed one; once the receiver fetched it for a rendezvous one); a message that does not fit fails with ``ERR_BUFFER``, as MPI
says, never blocks.  ``Detach_buffer`` (and ``Flush_buffer``) wait until every
message placed in the buffer is delivered; ``BUFFER_AUTOMATIC`` attaches a
buffer without a size limit (MPI 4.1): each message is then copied into memory
of its own.

Placement is first fit over the attached bytes (a handful of blocks at a time).
"""

from __future__ import annotations

from .._errcodes import ERR_BUFFER
from ..errors import MmpiError
from ._bufspec import byteview
from ._const import BSEND_OVERHEAD, BUFFER_AUTOMATIC

__all__ = ["BsendBuffer", "attach", "detach", "current", "process_buffer"]


class BsendBuffer:
    """An attached buffer: ``obj`` as attached, its bytes ``mv`` (None for
    BUFFER_AUTOMATIC), and the blocks in use ``[offset, size, op]``."""

    def __init__(self, obj, what: str):
        self.obj = obj
        self.blocks: list[list] = []
        if obj is BUFFER_AUTOMATIC:
            self.mv = None
            return
        try:
            mv = memoryview(obj)
        except TypeError:  # an exporter without the buffer protocol (DLPack, CAI...)
            mv = byteview(obj, True, what)
        if mv.readonly:
            raise BufferError(f"{what}: the buffer is read-only; attach a writable one "
                              f"(bytearray, numpy array, MPI.Alloc_mem)")
        if not mv.c_contiguous:
            raise MmpiError(f"{what}: the buffer must be contiguous", error_class=ERR_BUFFER)
        self.mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv

    @property
    def size(self) -> int:
        return -1 if self.mv is None else len(self.mv)

    def collect(self) -> None:
        """Forget the blocks whose sends are done."""
        self.blocks = [b for b in self.blocks if b[2] is None or not b[2].done]

    def place(self, n: int, what: str, progress=None):
        """Space for an ``n``-byte message: a writable byte view (its block is
        reserved until :meth:`track`'s op is done).  ERR_BUFFER if it does not fit."""
        if self.mv is None:
            blk = [0, n, None]
            self.blocks.append(blk)
            return memoryview(bytearray(n)), blk
        need = n + BSEND_OVERHEAD
        for attempt in (0, 1):
            self.collect()
            off = 0
            for i, (o, s, _) in enumerate(self.blocks):
                if o - off >= need:
                    blk = [off, need, None]
                    self.blocks.insert(i, blk)
                    return self.mv[off:off + n], blk
                off = o + s
            if len(self.mv) - off >= need:
                blk = [off, need, None]
                self.blocks.append(blk)
                return self.mv[off:off + n], blk
            if attempt == 0 and progress is not None and self.blocks:
                progress()  # completions may free blocks
        used = sum(s for _, s, _ in self.blocks)
        raise MmpiError(
            f"{what}: a {n}-byte message needs {need} bytes of the attached buffer "
            f"(its size + BSEND_OVERHEAD {BSEND_OVERHEAD}), but the {len(self.mv)}-byte "
            f"buffer has {len(self.mv) - used} bytes free (in {len(self.blocks)} pending "
            f"messages' gaps); attach a larger buffer (MPI.Attach_buffer), wait for "
            f"earlier buffered sends, or use Send/Isend", error_class=ERR_BUFFER)

    @staticmethod
    def release(blk) -> None:
        """The message was never sent: give its block back at once."""
        blk[2] = _DONE

    def pending(self) -> list:
        self.collect()
        return [b[2] for b in self.blocks if b[2] is not None]


class _Done:
    done = True


_DONE = _Done()


class _State:
    process: BsendBuffer | None = None


_state = _State()


def attach(holder: dict | None, obj, what: str) -> None:
    """Attach ``obj`` for the process (``holder`` None) or a communicator
    (``holder``: the dict where the communicator keeps it)."""
    cur = _state.process if holder is None else holder.get("buffer")
    if cur is not None:
        raise MmpiError(f"{what}: a buffer is attached already; Detach_buffer it first",
                        error_class=ERR_BUFFER)
    b = BsendBuffer(obj, what)
    if holder is None:
        _state.process = b
    else:
        holder["buffer"] = b


def detach(holder: dict | None, wait, what: str):
    """Detach the buffer (after ``wait(op)`` for each message still in it); the
    object that was attached."""
    b = _state.process if holder is None else holder.get("buffer")
    if b is None:
        raise MmpiError(f"{what}: no buffer is attached", error_class=ERR_BUFFER)
    for op in b.pending():
        wait(op)
    if holder is None:
        _state.process = None
    else:
        holder.pop("buffer", None)
    return b.obj


def process_buffer() -> BsendBuffer | None:
    return _state.process


def current(holder: dict | None) -> BsendBuffer | None:
    """The buffer a buffered send on a communicator uses: its own, else the process's."""
    if holder is not None:
        b = holder.get("buffer")
        if b is not None:
            return b
    return _state.process
