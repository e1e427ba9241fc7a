"""A process's cache of peers' segments it has mapped.

Attaching to a peer's segment costs a round trip to the fd proxy and an mmap;
attaching again to the same segment should cost neither.  :class:`MapCache`
keeps the :class:`~driller.segment.Region` of every segment mapped through it,
keyed by (segment key, read-only), in LRU order, bounded by a number of entries
(each costs a VMA; ``vm.max_map_count`` is finite) and by mapped bytes.

No fd is kept per entry: the fd fetched from the proxy is closed as soon as the
segment is mapped (the mapping holds the memory).

Dropping an entry (eviction, invalidation, :meth:`MapCache.clear`) only drops
the cache's reference: a Region unmaps itself when its last numpy view is gone,
so memory still in use is never unmapped under anyone.

Release notices from the fd proxy are drained on every :meth:`MapCache.map`
(one non-blocking poll when there are none) and invalidate the released keys,
so a segment whose owner released it is never served from the cache once the
notice has arrived.

Transfer leases (rules in :mod:`driller.sharedarray`): a handle naming a lease
is mapped through a *claim* (the fetch names the lease), and a cache hit for a
lease this mapping has not claimed yet costs one claim round trip (which also
tells us if the lease ended).  Each mapping holds its claims until it is
unmapped; they are let go asynchronously from its finalizer (a drop still
queued is sent before a new claim of the same lease, so that a lease we let go
of is seen as ended, and a new claim is never undone by an old drop).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict

from . import _linux, _publish
from ._env import read
from .errors import DrillerError
from .proxy import ProxyClient
from .proxy._wire import add_run, claim_said
from .segment import Region
from .errors import ReadOnlyError  # on its own line: eases merging the proxy split

__all__ = ["MapCache", "cache"]

ENV_MAX_BYTES = "DRILLER_CACHE_MAX_BYTES"
ENV_MAX_ENTRIES = "DRILLER_CACHE_MAX_ENTRIES"
_GiB = 1 << 30
# The numbers of a lease's handles a mapping loaded without a claim (from the cache)
# are said with its drop as runs (lo, hi) (proxy._wire.add_run): an array sent a
# million times in order is one run, so a drop stays small whatever the handles (an
# arena's thousands of leases in one request).  Numbers that would make more than
# RANGES_KEPT runs go unsaid: that lease waits DRILLER_LEASE_SECONDS at the proxy
# once its holders let go, as one never loaded does, instead of ending then.


def _runs(seq: int) -> list[list[int]]:
    """The runs of loaded numbers of a claim of handle number seq (0: not counted)."""
    return [[seq, seq]] if seq > 0 else []


def default_max_entries() -> int:
    """min(4096, vm.max_map_count // 8): leaves most VMAs to the rest of the process."""
    return max(16, min(4096, _linux.max_map_count() // 8))


def default_max_bytes() -> int:
    """min(8 GiB, half the physical memory), at least 256 MiB.

    Mapped bytes cost address space and page tables, not memory, while the owner
    keeps its segment; the bound matters for segments the owner has freed and we
    have not yet heard of.
    """
    return max(256 << 20, min(8 * _GiB, _linux.mem_total() // 2))


def _positive(v: str) -> int:
    """A positive whole number, also written ``1e9``, ``0x1000`` or ``017``
    (ValueError if not)."""
    try:
        n = int(v, 0)
    except ValueError:
        try:
            n = int(v)   # (017: int(v, 0) refuses a leading zero)
        except ValueError:
            f = float(v)
            if not f.is_integer():   # (1.5; inf and nan too)
                raise ValueError(v) from None
            n = int(f)
    if n <= 0:
        raise ValueError(v)
    return n


def _env_int(name: str) -> int | None:
    return read(name, None, _positive, "a positive whole number (1e9 is taken)")


def _sealed_readonly(fd: int) -> bool:
    """Whether the owner sealed this memfd read-only (no new writable mapping)."""
    try:
        return bool(_linux.get_seals(fd) & _linux.F_SEAL_FUTURE_WRITE)
    except OSError:  # not a sealable file: the mmap itself will tell
        return False


class MapCache:
    """LRU cache of mapped peer segments (thread-safe)."""

    def __init__(self, max_bytes: int | None = None, max_entries: int | None = None):
        if max_bytes is None:
            max_bytes = _env_int(ENV_MAX_BYTES) or default_max_bytes()
        if max_entries is None:
            max_entries = _env_int(ENV_MAX_ENTRIES) or default_max_entries()
        if max_bytes <= 0 or max_entries <= 0:
            raise ValueError("cache bounds must be positive")
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[tuple[str, bool], Region] = OrderedDict()
        self._claims: "weakref.WeakKeyDictionary[Region, dict]" = weakref.WeakKeyDictionary()
        self._addresses: "weakref.WeakKeyDictionary[Region, str]" = weakref.WeakKeyDictionary()
        self._bytes = 0
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = self.invalidations = 0

    @staticmethod
    def _size(region: Region) -> int:
        return max(_linux.page_ceil(region.nbytes), _linux.PAGE_SIZE)

    def map(self, address: str, secret: bytes, key: str, nbytes: int,
            readonly: bool = False, lease: int = 0, gen: int = 0, seq: int = 0) -> Region:
        """A Region of at least ``nbytes`` over segment ``key`` of the proxy at ``address``.

        With ``lease``, the mapping claims that transfer lease, which must be on the
        block of generation ``gen``, for the lease's handle number ``seq`` (see the
        module doc).
        Raises :class:`~driller.SegmentReleasedError` if the owner released it (or
        the lease ended), :class:`~driller.ProxyError` if the proxy is unreachable
        or refuses us.
        """
        client = ProxyClient.get()
        ek = (key, bool(readonly))
        with self._lock:   # (notices drained under it: one drained is dropped before any hit)
            released = client.released_keys()
            if released:
                for k in released:
                    self._drop_key(k)
                self._close_idle(client)
            region = self._entries.get(ek)
            if region is not None and region.nbytes >= nbytes:
                if lease:
                    claims = self._claims.get(region)
                    c = claims.get(lease) if claims is not None else None
                    if c is None or c[0] != gen:
                        self._send_drops(address, lease)
                        client.claim(address, secret, key, lease, gen, want_fd=False,
                                     seq=seq)
                        self._claims_of(region, address)[lease] = [gen, _runs(seq)]
                    elif seq > 0:   # held already: its number goes with the drop
                        add_run(c[1], seq, seq)
                self._entries.move_to_end(ek)
                self.hits += 1
                return region
            self.misses += 1
            owner_gone = False
            if lease:
                self._send_drops(address, lease)
                fd, _meta, owner_gone = client.claim(address, secret, key, lease, gen,
                                                       want_fd=True, seq=seq)
            else:
                fd, _meta = client.fetch(address, secret, key)
            try:
                size = _linux.fd_size(fd)
                if nbytes > size:
                    raise DrillerError(
                        f"segment {key!r} has {size} bytes, fewer than the {nbytes} asked "
                        "for: the handle does not match the segment")
                if not readonly and _sealed_readonly(fd):
                    raise ReadOnlyError(
                        f"segment {key!r} is sealed read-only by its owner: the kernel "
                        "refuses writable mappings of it; attach it with readonly=True")
                region = Region(fd, nbytes, readonly=bool(readonly))
            except BaseException:
                if lease:  # we hold the claim: let it go
                    _publish.drop_leases(os.getpid(), address, (lease,))
                raise
            finally:
                os.close(fd)
            if lease:
                self._claims_of(region, address)[lease] = [gen, _runs(seq)]
                if owner_gone:  # no notice will come: not cached, unmapped with its views
                    return region
            old = self._entries.pop(ek, None)
            if old is not None:  # a smaller mapping of the same segment
                self._bytes -= self._size(old)
            self._entries[ek] = region
            self._bytes += self._size(region)
            self._evict()
            return region

    def _claims_of(self, region: Region, address: str) -> dict:
        """The leases claimed by region's mapping: id -> [block generation, the
        numbers of the lease's handles loaded through it]."""
        claims = self._claims.get(region)
        if claims is None:
            claims = self._claims[region] = {}
            self._addresses[region] = address
            # let go of them when the mapping is unmapped (queued: finalizer-safe)
            f = weakref.finalize(region, _publish.drop_leases, os.getpid(), address, claims)
            f.atexit = False
            _publish.hook_exit()
        return claims

    def forward_number(self, region: Region, lease: int) -> int:
        """The number of a new handle of ``lease`` naming region's memory (this
        process pickles a view of what it loaded: it forwards it), 0 if region's
        mapping does not hold that lease.  The first asks the proxy for a range of
        numbers of our own (one round trip); the rest count on in it, said with the
        claim's drop (``_wire.claim_said``) so that the lease lasts until each is
        loaded.  Raises :class:`~driller.ProxyError` or
        :class:`~driller.SegmentReleasedError` (the lease is not ours)."""
        with self._lock:
            claims = self._claims.get(region)
            c = claims.get(lease) if claims is not None else None
            if c is None:
                return 0
            if len(c) < 3:
                c.append([ProxyClient.get().number(self._addresses[region], lease), 0])
            forwarded = c[2]
            forwarded[1] += 1
            return int(forwarded[0] + forwarded[1])

    def say_loaded(self) -> None:
        """At this process's exit (``_publish.at_exit``): the numbers of the handles
        loaded from this cache without a claim, of mappings still mapped (said, else,
        as each mapping is unmapped), so their leases end as their loaders go."""
        by_address: dict[str, list] = {}
        # (under the lock: a thread pickling meanwhile counts its number in, or after
        # this; never waited for long at exit, where a daemon thread may hold it)
        locked = self._lock.acquire(timeout=1.0)
        try:
            for region, claims in list(self._claims.items()):
                address = self._addresses.get(region)
                for lid, c in list(claims.items()):
                    if address is not None and (c[1] or len(c) > 2):
                        by_address.setdefault(address, []).append((lid, claim_said(c)))
        finally:
            if locked:
                self._lock.release()
        for address, items in by_address.items():
            _publish.say_issued(address, items)

    @staticmethod
    def _send_drops(address: str, lease: int) -> None:
        # our queued drop of this very lease reaches the proxy before we claim it again:
        # a lease that we were the last to hold is then seen as ended, not revived
        if _publish.dropping(address, lease):
            _publish.flush()

    def _close_idle(self, client: ProxyClient) -> None:
        """After release notices: let go of connections to proxies nothing mapped
        here claims through and no queued drop is still to reach."""
        claimed = set(self._addresses.values())   # (before the queue: a mapping that
        # dies meanwhile has its drop queued by then)
        _publish.while_not_sending(lambda unsent: client.close_idle(claimed | unsent))

    def _close_idle_quietly(self) -> None:
        """The sender's call once drops went out: :meth:`_close_idle` if the cache
        is free (never waited for)."""
        if self._lock.acquire(blocking=False):
            try:
                self._close_idle(ProxyClient.get())
            finally:
                self._lock.release()

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > 1 and (len(entries) > self.max_entries
                                    or self._bytes > self.max_bytes):
            _, region = entries.popitem(last=False)
            self._bytes -= self._size(region)
            self.evictions += 1

    def _drop_key(self, key: str) -> None:
        for ek in ((key, False), (key, True)):
            region = self._entries.pop(ek, None)
            if region is not None:
                self._bytes -= self._size(region)
                self.invalidations += 1

    def invalidate(self, key: str) -> None:
        """Forget key's mappings (views already handed out stay valid)."""
        with self._lock:
            self._drop_key(key)

    def info(self) -> dict:
        """Counters and sizes: hits, misses, evictions, invalidations, entries, bytes
        mapped, and the bounds (max_entries, max_bytes)."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "invalidations": self.invalidations, "entries": len(self._entries),
                    "bytes": self._bytes, "max_entries": self.max_entries,
                    "max_bytes": self.max_bytes}

    def clear(self) -> None:
        """Forget every mapping (views already handed out stay valid)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return (key, False) in self._entries or (key, True) in self._entries

    def __repr__(self) -> str:
        return (f"<driller.MapCache {len(self._entries)}/{self.max_entries} entries, "
                f"{self._bytes}/{self.max_bytes} bytes>")


_cache: MapCache | None = None
_cache_lock = threading.Lock()


def _say_loaded() -> None:
    if _cache is not None:
        _cache.say_loaded()


_publish.at_exit_calls.append(_say_loaded)


def _close_idle() -> None:
    if _cache is not None:
        _cache._close_idle_quietly()


_publish.after_send_calls.append(_close_idle)


def cache() -> MapCache:
    """This process's cache (a fresh, empty one in a forked child)."""
    global _cache
    c = _cache
    if c is None:
        with _cache_lock:
            if _cache is None:
                _cache = MapCache()
            c = _cache
    return c


def _after_fork_in_child() -> None:
    # the parent's entries were fetched on the parent's connection: no notices reach
    # us for them, so start empty (the inherited mappings go with their last view)
    global _cache, _cache_lock
    _cache = None
    _cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
