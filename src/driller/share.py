"""attach(): a numpy array onto a peer's (or our own) published memory."""

from __future__ import annotations

import os

import numpy as np

from . import _publish, mapcache
from .heap import SharedArray
from .errors import DrillerError, SegmentReleasedError
from .segment import Handle, Region

__all__ = ["attach", "cache_info"]


def _region_for(h: Handle, readonly: bool) -> Region:
    mine = _publish.owned(h.key)
    if mine is not None:
        region = mine.region_for_handle(h)
        if region is not None:
            return region
    if h.owner == os.getpid():
        raise SegmentReleasedError(f"segment {h.key} was released by its owner (this process)")
    region = mapcache.cache().map(h.proxy, h.secret, h.key, h.nbytes, readonly=readonly)
    if region.origin is None:
        region.origin = h
    return region


def attach(handle: Handle, readonly: bool | None = None) -> np.ndarray:
    """A numpy array over the memory ``handle`` names: zero copy, through the map cache.

    The array has the owner's dtype and shape when the handle carries them,
    else it is uint8 over the whole segment.  ``readonly`` defaults to the
    handle's; a read-only handle cannot be attached writable.

    Raises :class:`~driller.SegmentReleasedError` if the owner released the
    segment, :class:`~driller.ProxyError` if its proxy is unknown or unreachable.
    """
    if type(handle) is not Handle:
        raise DrillerError(f"attach() takes a driller.Handle, not {type(handle).__name__}; "
                           "get one from Hole.handle or driller.handle(shared_array)")
    if readonly is None:
        readonly = handle.readonly
    elif handle.readonly and not readonly:
        raise DrillerError(f"handle {handle.key} is read-only: attach it with readonly=True")
    region = _region_for(handle, readonly)
    raw = np.asarray(region)
    if handle.dtype is None:
        arr = raw[handle.offset:]
    else:
        arr = np.ndarray(handle.shape, dtype=handle.dtype, buffer=raw, offset=handle.offset,
                         strides=handle.strides)
    arr = arr.view(SharedArray)
    if readonly:
        arr.flags.writeable = False
    return arr


def cache_info() -> dict:
    """This process's map cache: hits, misses, evictions, entries, bytes mapped."""
    return mapcache.cache().info()
