"""A pure first-fit allocator over one arena (no I/O; unit-tested in one process).

It plays the part dlmalloc played in the C library: carving small blocks out
of a shared segment.  Blocks are aligned to ``ALIGN`` bytes; free blocks are
kept sorted by offset and coalesced with their neighbours on free.
"""

from __future__ import annotations

import bisect

__all__ = ["FreeList", "ALIGN"]

ALIGN = 64  # a cache line; also satisfies every numpy dtype's alignment


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class FreeList:
    """Offsets in ``[0, capacity)`` handed out and taken back."""

    __slots__ = ("capacity", "_starts", "_sizes", "_used", "used_bytes")

    def __init__(self, capacity: int):
        if capacity <= 0 or capacity % ALIGN:
            raise ValueError(f"capacity must be a positive multiple of {ALIGN}")
        self.capacity = capacity
        self._starts = [0]          # free block starts, sorted
        self._sizes = [capacity]    # free block sizes, parallel to _starts
        self._used: dict[int, int] = {}  # offset -> size of live blocks
        self.used_bytes = 0

    def alloc(self, nbytes: int) -> int | None:
        """Offset of a new block of at least nbytes (≥ 1), or None if none fits."""
        size = _round_up(max(nbytes, 1))
        for i, free in enumerate(self._sizes):
            if free >= size:
                off = self._starts[i]
                if free == size:
                    del self._starts[i], self._sizes[i]
                else:
                    self._starts[i] = off + size
                    self._sizes[i] = free - size
                self._used[off] = size
                self.used_bytes += size
                return off
        return None

    def free(self, offset: int) -> None:
        size = self._used.pop(offset, None)
        if size is None:
            raise KeyError(f"offset {offset} is not an allocated block")
        self.used_bytes -= size
        i = bisect.bisect_left(self._starts, offset)
        starts, sizes = self._starts, self._sizes
        # merge with the next free block
        if i < len(starts) and offset + size == starts[i]:
            size += sizes[i]
            del starts[i], sizes[i]
        # merge with the previous free block
        if i > 0 and starts[i - 1] + sizes[i - 1] == offset:
            sizes[i - 1] += size
        else:
            starts.insert(i, offset)
            sizes.insert(i, size)

    def size_of(self, offset: int) -> int:
        return self._used[offset]

    @property
    def empty(self) -> bool:
        return not self._used

    def free_blocks(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._sizes))

    def check(self) -> None:
        """Invariants (for tests): free and used blocks tile the arena exactly."""
        blocks = sorted([(s, z, "free") for s, z in self.free_blocks()]
                        + [(s, z, "used") for s, z in self._used.items()])
        pos, prev = 0, None
        for start, size, kind in blocks:
            assert start == pos, f"gap or overlap at {pos} (next block at {start})"
            assert size > 0 and start % ALIGN == 0
            assert not (kind == prev == "free"), f"two adjacent free blocks at {start}"
            pos, prev = start + size, kind
        assert pos == self.capacity, f"blocks end at {pos}, capacity {self.capacity}"
        assert self.used_bytes == sum(self._used.values())
