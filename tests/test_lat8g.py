"""The blocking small path, eleventh round (issue 12): Send's cached spec is keyed on
the communicator object, so that its hit reads no ``self._p``.

``_comm._LAST_SEND`` holds, with the rank and the fused sender, the communicator
object the spec was last sent on; a ``Send`` on that very object skips the generic
``self._p`` load.  That stands for the object's record only while the object stays
bound to the same handle: ``_bind`` (``_topo`` rebinds live objects) and
``_unbind`` (Free) drop it.  What these tests hold it to: an object rebound to
another context or group sends by its new binding, and a freed object is neither
used nor kept alive by the cache."""

from __future__ import annotations

import gc
import mmap
import weakref

import pytest

from driller import MPI
from driller.errors import MmpiError
from driller.mmpi import _comm as C

from test_smallpaths import pair  # noqa: F401  (the fixture: two ranks in this process)


def _nothing_waiting(c) -> bool:
    return not c.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


def _cache(c0, c1, spec, dest=1):
    """Send ``spec`` until ``c0`` and ``dest`` are cached with it (received by ``c1``)."""
    out = bytearray(64)
    for _ in range(3):
        c0.Send(spec, dest, 1)
        c1.Recv(out, 0, 1)
    c = C._LAST_SEND
    assert c[10] is c0 and c[5] is c0._p and c[6] is dest and c[7] is not None


def _arrives_only_at(c0, spec, payload, dest, where, source, quiet):
    """``c0.Send(spec, dest, 1)`` of ``payload``: nothing reaches the ``quiet``
    communicators; ``where`` receives it whole from ``source``."""
    spec[0][:8] = payload
    c0.Send(spec, dest, 1)
    assert all(_nothing_waiting(q) for q in quiet)
    out, st = bytearray(64), MPI.Status()
    where.Recv(out, source, 1, st)
    assert out[:8] == payload and st.Get_source() == source


def test_a_rebound_object_sends_by_its_new_context(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 20, "d"), C.Comm(t1, [0, 1], 20, "d")
    e0, e1 = C.Comm(t0, [0, 1], 22, "e"), C.Comm(t1, [0, 1], 22, "e")
    mm = mmap.mmap(-1, 64)
    spec = [mm, 8, MPI.BYTE]
    _cache(d0, d1, spec)
    d0._bind(e0._h)                                   # as _topo rebinds a live object
    assert C._LAST_SEND[10] is None and C._LAST_SEND[5] is None
    _arrives_only_at(d0, spec, b"rebound!", 1, e1, 0, (d1, c1))   # not the old context
    _cache(d0, e1, spec)                              # cached again, in the new context
    _arrives_only_at(d0, spec, b"again ok", 1, e1, 0, (d1, c1))
    mm.close()


def test_a_rebound_object_maps_ranks_by_its_new_group(pair):
    t0, t1, c0, c1 = pair
    r0 = C.Comm(t0, [1, 0], 24, "rev")
    mm = mmap.mmap(-1, 64)
    spec = [mm, 8, MPI.BYTE]
    _cache(c0, c1, spec)
    c0._bind(r0._h)                                   # rank 1 is now this process itself
    _arrives_only_at(c0, spec, b"own ring", 1, c0, 1, (c1,))
    mm.close()


def test_a_freed_object_is_neither_used_nor_kept(pair):
    t0, t1, c0, c1 = pair
    d0, d1 = C.Comm(t0, [0, 1], 26, "d"), C.Comm(t1, [0, 1], 26, "d")
    mm = mmap.mmap(-1, 64)
    spec = [mm, 8, MPI.BYTE]
    _cache(d0, d1, spec)
    d0.Free()
    with pytest.raises(MmpiError) as ei:
        d0.Send(spec, 1, 1)
    assert ei.value.Get_error_class() == MPI.ERR_COMM
    assert _nothing_waiting(d1)
    gone = weakref.ref(d0)
    del d0, ei
    gc.collect()
    assert gone() is None                             # the cache does not hold it
    mm.close()
