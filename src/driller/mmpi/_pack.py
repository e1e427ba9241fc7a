"""Gather and scatter of byte runs with numpy: the engine under derived datatypes.

A derived datatype is flattened (in :mod:`._datatype`) into a typemap: element
byte offsets and basic numpy dtypes.  For moving data only the bytes matter, so
the typemap of ``count`` items is turned into *runs*: maximal contiguous byte
ranges ``(offset, length)`` in typemap order.  :func:`gather` copies the runs of a
buffer into one contiguous array (MPI_Pack, the sender's single copy) and
:func:`scatter` copies a contiguous array back into the runs (MPI_Unpack).

Runs of one length at a constant stride (a vector, the rows of a 2-D subarray...)
are copied with ONE ``np.copyto`` between a strided view of the buffer and the
packed array, by 8-, 4- or 2-byte words when the sizes allow: one copy, no index
array.  Other run sets are copied slice by slice when there are at most 16 runs,
else one fancy-indexing call per run length over overlapping windows of the
buffer (``as_strided``): numpy goes through a temporary there, so two copies of
those bytes.

External32 (:func:`swap_external`) is the packed stream with every basic element
in big-endian byte order (complex numbers: each half; long double: its 16 bytes
as one unit, which is not IEEE quad: see docs/mmpi.md, "Datatypes").
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["Runs", "runs_of", "tile_runs", "gather", "scatter", "swap_external"]

_FEW_RUNS = 16


def runs_of(off: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge elements (byte offset, byte length), in order, into maximal runs."""
    if off.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keep = nbytes > 0
    if not keep.all():
        off, nbytes = off[keep], nbytes[keep]
        if off.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
    end = off + nbytes
    # a new run starts where an element does not continue the previous one
    start = np.empty(off.size, bool)
    start[0] = True
    np.not_equal(off[1:], end[:-1], out=start[1:])
    idx = np.flatnonzero(start)
    roff = off[idx]
    rend = np.empty(idx.size, np.int64)
    rend[:-1] = end[idx[1:] - 1]
    rend[-1] = end[-1]
    return roff.astype(np.int64, copy=False), rend - roff


def tile_runs(roff: np.ndarray, rlen: np.ndarray, count: int,
              extent: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of ``count`` consecutive items (item i displaced by i * extent)."""
    if count == 1 or roff.size == 0:
        return roff, rlen
    o = (np.arange(count, dtype=np.int64)[:, None] * extent + roff[None, :]).ravel()
    n = np.broadcast_to(rlen, (count, rlen.size)).ravel()
    return runs_of(o, n)


def _windows(a: np.ndarray, length: int) -> np.ndarray:
    n = a.size - length + 1
    return as_strided(a, shape=(max(n, 0), length), strides=(a.strides[0], a.strides[0]),
                      writeable=a.flags.writeable)


def _word(*sizes: int) -> int:
    """The largest word (8, 4, 2, 1 bytes) dividing every size: copies go by words."""
    for w in (8, 4, 2):
        if all(x % w == 0 for x in sizes):
            return w
    return 1


def _grid(a: np.ndarray, start: int, k: int, length: int, stride: int, w: int) -> np.ndarray:
    """A (k, length/w) view of ``a``: k runs of ``length`` bytes, ``stride`` apart."""
    return np.ndarray((k, length // w), dtype=np.dtype(f"u{w}"), buffer=a, offset=start,
                      strides=(stride, w))


def _regular(roff: np.ndarray, rlen: np.ndarray):
    """(length, stride) if the runs have one length and a constant positive stride."""
    first = int(rlen[0])
    if not (rlen == first).all():
        return None
    if roff.size == 1:
        return first, first
    d = np.diff(roff)
    stride = int(d[0])
    if stride < first or not (d == stride).all():
        return None
    return first, stride


class Runs:
    """Byte runs ``(off + base, len)`` with what the copies need precomputed once:
    the span ``[lo, hi)``, the total length, the regular shape (length, stride)."""

    __slots__ = ("off", "len", "base", "reg", "lo", "hi", "total")

    def __init__(self, off: np.ndarray, length: np.ndarray, base: int = 0):
        self.off, self.len, self.base = off, length, base
        if off.size:
            self.reg = _regular(off, length)
            if self.reg is not None:
                self.lo = int(off[0]) + base
                self.hi = int(off[-1]) + self.reg[0] + base
            else:
                self.lo = int(off.min()) + base
                self.hi = int((off + length).max()) + base
            self.total = int(length.sum())
        else:
            self.reg, self.lo, self.hi, self.total = None, 0, 0, 0

    def shifted(self, d: int) -> Runs:
        """The same runs ``d`` bytes further (O(1): the offsets are shared)."""
        r = Runs.__new__(Runs)
        r.off, r.len, r.base, r.reg = self.off, self.len, self.base + d, self.reg
        r.lo, r.hi, r.total = self.lo + d, self.hi + d, self.total
        return r


def gather(src: np.ndarray, runs: Runs, out: np.ndarray) -> None:
    """Copy the runs of ``src`` (uint8, 1-D) into ``out`` (uint8, contiguous, the
    runs' total length), in order.  Offsets are checked by the caller."""
    _move(runs, src, out, True)


def scatter(packed: np.ndarray, runs: Runs, dst: np.ndarray) -> None:
    """Copy ``packed`` (uint8, contiguous) into the runs of ``dst`` (uint8, 1-D)."""
    _move(runs, dst, packed, False)


def _move(runs: Runs, spread: np.ndarray, packed: np.ndarray, pack: bool) -> None:
    """Between the runs of ``spread`` and the contiguous ``packed``: into ``packed``
    (``pack``, :func:`gather`) or out of it (:func:`scatter`)."""
    roff, rlen = runs.off, runs.len
    k = roff.size
    if k == 0:
        return
    reg = runs.reg
    if reg is not None:          # a vector, a subarray's rows...: one strided copy
        length, stride = reg
        w = _word(length, stride, runs.lo)
        runs_view = _grid(spread, runs.lo, k, length, stride, w)
        packed_view = _grid(packed, 0, k, length, length, w)
        if pack:
            np.copyto(packed_view, runs_view)
        else:
            np.copyto(runs_view, packed_view)
        return
    if runs.base:
        roff = roff + runs.base
    if k <= _FEW_RUNS:
        p = 0
        for o, n in zip(roff.tolist(), rlen.tolist()):
            if pack:
                packed[p:p + n] = spread[o:o + n]
            else:
                spread[o:o + n] = packed[p:p + n]
            p += n
        return
    pos = np.zeros(k, np.int64)
    np.cumsum(rlen[:-1], out=pos[1:])
    for length in np.unique(rlen).tolist():
        sel = rlen == length
        spread_w, packed_w = _windows(spread, length), _windows(packed, length)
        if pack:
            packed_w[pos[sel]] = spread_w[roff[sel]]
        else:
            spread_w[roff[sel]] = packed_w[pos[sel]]


def swap_external(packed: np.ndarray, sizes: np.ndarray, halves: np.ndarray) -> None:
    """Reverse, in place, the bytes of each basic element of a packed stream
    (native little-endian <-> external32 big-endian).  ``sizes``: each element's
    byte size in stream order; ``halves``: True for complex elements (each half
    is swapped on its own)."""
    if packed.size == 0 or sizes.size == 0:
        return
    if np.little_endian is False:  # pragma: no cover - big-endian hosts: nothing to do
        return
    pos = np.zeros(sizes.size, np.int64)
    np.cumsum(sizes[:-1], out=pos[1:])
    for size in np.unique(sizes).tolist():
        if size <= 1:
            continue
        for cplx in (False, True):
            sel = (sizes == size) & (halves == cplx)
            if not sel.any():
                continue
            w = _windows(packed, size)
            p = pos[sel]
            block = w[p]
            if cplx:
                h = size // 2
                block = block.reshape(-1, 2, h)[:, :, ::-1].reshape(-1, size)
            else:
                block = block[:, ::-1]
            w[p] = block
