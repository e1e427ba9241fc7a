"""The pure arena allocator: invariants under random alloc/free sequences."""

import pytest
from hypothesis import given, settings, strategies as st

from driller._alloc import ALIGN, FreeList


def test_alloc_aligned_and_disjoint():
    fl = FreeList(ALIGN * 100)
    a, b, c = fl.alloc(1), fl.alloc(ALIGN + 1), fl.alloc(ALIGN)
    assert [a, b, c] == [0, ALIGN, 3 * ALIGN]
    fl.check()


def test_full_arena_returns_none_and_free_makes_room():
    fl = FreeList(ALIGN * 4)
    offs = [fl.alloc(ALIGN) for _ in range(4)]
    assert fl.alloc(1) is None
    fl.free(offs[1])
    fl.free(offs[2])
    assert fl.alloc(2 * ALIGN) == offs[1]  # the two freed neighbours coalesced
    fl.check()


def test_double_free_is_an_error():
    fl = FreeList(ALIGN * 4)
    off = fl.alloc(10)
    fl.free(off)
    with pytest.raises(KeyError):
        fl.free(off)


def test_everything_freed_coalesces_to_one_block():
    fl = FreeList(ALIGN * 64)
    offs = [fl.alloc(ALIGN * (i % 3 + 1)) for i in range(20)]
    for off in offs[::2] + offs[1::2]:
        fl.free(off)
    assert fl.free_blocks() == [(0, ALIGN * 64)]
    assert fl.empty and fl.used_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5000), st.integers(0, 10**6)),
                max_size=200))
def test_random_sequences_keep_invariants(ops):
    fl = FreeList(ALIGN * 1024)
    live = {}
    for is_alloc, size, pick in ops:
        if is_alloc or not live:
            off = fl.alloc(size)
            if off is not None:
                assert off % ALIGN == 0
                for o, s in live.items():  # no overlap with any live block
                    assert off + size <= o or o + s <= off
                live[off] = size
        else:
            off = sorted(live)[pick % len(live)]
            fl.free(off)
            del live[off]
        fl.check()
    for off in list(live):
        fl.free(off)
    assert fl.free_blocks() == [(0, ALIGN * 1024)]
