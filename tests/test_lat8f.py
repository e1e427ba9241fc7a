"""The blocking small path, tenth round (issue 12): the transport's fused sender for
eager records (more than the header's line, up to the eager limit).

``senders[dst].spec(n, ctx)`` (Send's cached ``[mmap, count, dt]`` spec, Isend's
remembered spec) used to answer only for inline sizes (1..16 B); above, the caller
wrapped ``send`` around a bytes slice of the buffer.  Now up to ``SLICE_MAX`` it
writes the eager record itself (one call less per send), and above that it hands
``send`` a view of the buffer (one copy into the ring, not a bytes copy first),
released before it returns.  What these tests hold it to: the right bytes, sizes and
tags arrive, padded records keep the ring's framing (its end and its wrap), a
message queued behind a full ring is not overtaken, a shrunk or closed buffer ends
as on the general path (the same error, nothing sent), and no export of the buffer
outlives the call (it may be closed or resized at once)."""

from __future__ import annotations

import mmap

import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _bufspec
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T

from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)

# eager, not inline: a struct call with the payload, a separate copy, the largest
# sliced size, and views (the pair's ring is 64 KiB: its eager limit is 16 KiB)
SIZES = (T.INLINE_MAX + 1, 64, T._NPACKS - 1, T._NPACKS, 1000, T.SLICE_MAX,
         T.SLICE_MAX + 1, 8192, 16384)


def _pattern(n: int, salt: int) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


def _eager_fused(t0, n):
    """The fused sender ``spec`` gives for ``n`` bytes, asserting it is one."""
    fn = t0.senders[1].spec(n, 0)
    assert fn is not None, n
    return fn


def _said(call) -> str:
    """What ``call`` raised (an MmpiError's text; its traceback, which holds
    the general path's views of the buffer, dropped)."""
    try:
        call()
    except MmpiError as e:
        return str(e)
    raise AssertionError("no MmpiError")


@pytest.mark.parametrize("n", SIZES)
def test_cached_send_specs_of_eager_sizes_arrive_whole(pair, n):
    t0, _, c0, c1 = pair
    assert T.INLINE_MAX < n <= t0.eager_limit
    mm = mmap.mmap(-1, 2 * n)
    spec = [mm, n, MPI.BYTE]
    out = mmap.mmap(-1, 2 * n)
    st = MPI.Status()
    for i in range(6):                                # table, cache, rank, then fused
        mm[:n] = _pattern(n, i)
        mm[n:] = b"\xee" * n                          # past the count: never sent
        c0.Send(spec, 1, 10 + i)
        c1.Recv([out, 2 * n, MPI.BYTE], 0, MPI.ANY_TAG, st)
        assert out[:n] == _pattern(n, i), (n, i)
        assert st.Get_count(MPI.BYTE) == n and st.Get_tag() == 10 + i
    if n <= _bufspec._SMALL_COPY:                   # (Send caches the specs it copies)
        assert C._LAST_SEND[6] == 1 and C._LAST_SEND[7] is not None
    mm.close()
    out.close()


def test_eager_records_keep_the_ring_framed_past_its_end(pair):
    # sizes whose records (header + payload padded to 64 B) do not divide the ring:
    # the fused senders meet the ring's end at every offset and leave the wrap to
    # the general writer; a misframed record would show as wrong bytes or a hang
    t0, _, _, c1 = pair
    sizes = (17, 100, 129, 1000, 1025, 3000)
    fns = {n: _eager_fused(t0, n) for n in sizes}
    bufs = {n: bytearray(n) for n in sizes}
    out = bytearray(4096)
    st = MPI.Status()
    sent = 0
    for i in range(300):                              # ~3 ring lengths in all
        n = sizes[i % len(sizes)]
        bufs[n][:] = _pattern(n, i)
        assert fns[n](i, bufs[n])
        sent += T.HDR_BYTES + ((n + 63) & ~63)
        c1.Recv(out, 0, MPI.ANY_TAG, st)
        assert (st.Get_tag(), st.Get_count(MPI.BYTE)) == (i, n)
        assert out[:n] == _pattern(n, i), i
    assert sent > 3 * t0.ring_bytes


@pytest.mark.parametrize("n", (1000, 4000))           # sliced, and a view
def test_a_message_queued_behind_a_full_ring_is_not_overtaken(pair, n):
    # once the ring is full a send is queued (the general path); a fused send must
    # not write past it, even when the receiver has made room since
    t0, _, c0, c1 = pair
    fused = _eager_fused(t0, n)
    bufs = []
    reqs = []
    per_ring = t0.ring_bytes // (T.HDR_BYTES + ((n + 63) & ~63))
    for i in range(per_ring + 3):                     # the last ones wait in the queue
        bufs.append(bytearray(b"seq%05d" % i) + bytes(n - 8))
        reqs.append(c0.Isend([bufs[-1], n, MPI.BYTE], 1, 5))
    assert t0.pending[1], "nothing queued: the ring did not fill"
    out = bytearray(n)
    c1.Recv(out, 0, 5)                                # room for one more, the queue waits
    assert out[:8] == b"seq00000"
    last = bytearray(b"seq%05d" % (per_ring + 3)) + bytes(n - 8)
    assert fused(5, last) is False                    # behind the queue: not written
    reqs.append(c0.Isend([last, n, MPI.BYTE], 1, 5))  # (the general path queues it)
    for i in range(1, per_ring + 4):
        MPI.Request.Testall(reqs)                      # (the sender's progress)
        c1.Recv(out, 0, 5)
        assert out[:8] == b"seq%05d" % i, (n, i)
    MPI.Request.Waitall(reqs)
    assert not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


@pytest.mark.parametrize("n", (64, T.SLICE_MAX, 8192))
def test_a_shrunk_or_closed_buffer_ends_as_on_the_general_path(pair, n):
    t0, _, c0, c1 = pair
    mm = mmap.mmap(-1, n)
    spec = [mm, n, MPI.BYTE]
    out = bytearray(n)
    for i in range(3):
        c0.Isend(spec, 1, 1).Wait()
        c1.Recv(out, 0, 1)
    fused = _eager_fused(t0, n)
    mm.resize(n - 1)                                  # shrunk: declined, nothing written
    assert fused(1, mm) is False
    assert _said(lambda: c0.Isend(spec, 1, 1)) == \
        _said(lambda: c0.Isend([mm, n, MPI.BYTE], 1, 1))   # a spec never remembered
    mm.resize(n)
    mm.close()                                        # closed: declined, nothing written
    assert fused(1, mm) is False
    with pytest.raises(MmpiError, match="closed"):
        c0.Isend(spec, 1, 1)
    assert not c1.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


@pytest.mark.parametrize("n", (T.SLICE_MAX + 1, 16384))
def test_no_view_of_the_buffer_outlives_the_send(pair, n):
    # a view fused sender: the caller may resize or close its buffer at once
    t0, _, c0, c1 = pair
    out = bytearray(n)
    fused = _eager_fused(t0, n)
    ba = bytearray(_pattern(n, 3))
    assert fused(2, ba)
    ba.extend(b"more")                                # BufferError if still exported
    c1.Recv(out, 0, 2)
    assert out == _pattern(n, 3)
    mm = mmap.mmap(-1, n)
    spec = [mm, n, MPI.BYTE]
    for i in range(3):                                # Isend's remembered spec: fused
        mm[:] = _pattern(n, i)
        c0.Isend(spec, 1, 4).Wait()
        mm.resize(n + 64)                             # (each: no export left)
        mm.resize(n)
        c1.Recv(out, 0, 4)
        assert out == _pattern(n, i)
    assert C._last_isend[8] is not None
    mm.close()
