"""Mid-size protocol thresholds chosen by measuring the running machine.

Which protocol is fastest for a message of 64 KiB - 8 MiB depends on how fast
this machine copies memory in one process (``memmove``) against how fast
``process_vm_readv`` copies it from another (page pinning), and neither is a
constant across machines (docs/mmpi.md, "Mid-size messages, measured on the
running machine").  :func:`measure` times both, a few milliseconds in all;
:func:`choose` turns the figures into the eager limit and whether a rendezvous
copy is split between both ranks (pure, unit-tested); :func:`load` keeps the
figures in a small JSON file under ``~/.cache/driller`` keyed by host, boot id
and CPU model and count, so a machine measures once per boot and every rank of a world
reads the same figures (so they agree on the eager limit, which the collectives
also consult).  A missing, corrupt, old or foreign file is measured again under
a lock, never an error; a cache that cannot be written means no measurement at
all (the built-in constants: ranks must agree).

Environment: ``DRILLER_MMPI_CALIBRATE=0`` turns it off (the constants);
``DRILLER_MMPI_CALIB_FILE`` names the file (default
``$XDG_CACHE_HOME/driller/mmpi-copies.json``); ``DRILLER_MMPI_HANDSHAKE_US``
the handshake cost the rule assumes.  ``DRILLER_MMPI_EAGER_LIMIT``,
``DRILLER_MMPI_STREAM_MAX`` and ``DRILLER_MMPI_SPLIT_MIN`` still override what
the measurement chose (Transport).
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import time
from typing import NamedTuple

from .. import _linux

__all__ = ["SIZES", "HANDSHAKE_US", "VERSION", "Choice", "choose", "measure", "cache_path",
           "machine_key", "read_cache", "load", "choice"]

VERSION = 1
KIB = 1024
SIZES = (256 * KIB, 512 * KIB, 1024 * KIB, 2048 * KIB)  # measured; the largest decides split
EAGER_MIN = 64 * KIB     # the eager limit never goes below this
EAGER_MAX = 1024 * KIB   # ... nor above (the limit measured before; a quarter ring caps it)
HANDSHAKE_US = 30.0      # what a split rendezvous's RTS, CTS and WDONE cost more than
                         # one eager record (2 ranks, this VM: docs/mmpi.md)
REPS = 4                 # best of this many timings per size and way


class Choice(NamedTuple):
    """Messages up to ``eager_limit`` go eager; above it a rendezvous copy is split
    between both ranks when ``split`` (else: streamed, as before)."""

    eager_limit: int
    split: bool


def choose(copy: dict, cma: dict | None, handshake_us: float = HANDSHAKE_US) -> Choice:
    """The protocols for figures ``copy[n]`` (µs for one in-process memmove of n
    bytes) and ``cma[n]`` (µs for one process_vm_readv of n bytes; None: single
    copy denied).

    * **split or stream** above the eager limit: a split rendezvous has each rank
      read or write half the bytes once with process_vm_readv/writev; a stream has
      each rank copy all of them once (pipelined).  Split when, at the largest size
      measured, half a process_vm_readv costs less than a memmove.
    * **eager limit**: eager costs two copies one after the other; the largest
      measured size (64 KiB - 1 MiB) up to which ``2 copy(n)`` is at most the
      alternative's own copying (``cma(n) / 2`` split, ``copy(n)`` streamed) plus
      the handshake, each smaller size passing too.
    """
    sizes = sorted(copy)
    if not cma or not sizes:
        return Choice(EAGER_MAX, False)
    big = sizes[-1]
    split = cma[big] / 2 < copy[big]
    eager = EAGER_MIN
    for n in sizes:
        if n > EAGER_MAX:
            break
        other = cma[n] / 2 if split else copy[n]
        if 2 * copy[n] > other + handshake_us:
            break
        eager = max(eager, n)
    return Choice(eager, split)


def _best(f, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def measure(sizes=SIZES, reps: int = REPS) -> dict:
    """Time one memmove and one process_vm_readv (from this very process: the
    page pinning is the same as from a peer) of each size, buffers warm; best of
    ``reps``.  {"copy": {n: µs}, "cma": {n: µs} or None when denied}."""
    top = max(sizes)
    a = mmap.mmap(-1, top)
    b = mmap.mmap(-1, top)
    try:
        a.write(b"\1" * top)   # fault both in: warm buffers, as a ping-pong's are
        b.write(b"\2" * top)
        src = _linux.buffer_address(a)[0]
        dst = _linux.buffer_address(b, True)[0]
        pid = os.getpid()
        copy, cma = {}, {}
        for n in sizes:
            copy[n] = _best(lambda: _linux.memmove(dst, src, n), reps)
        try:
            for n in sizes:
                cma[n] = _best(lambda: _linux.process_vm_readv(pid, dst, src, n), reps)
        except OSError:
            cma = None
        return {"copy": copy, "cma": cma}
    finally:
        a.close()
        b.close()


def cache_path() -> str:
    """The cache file; "" when there is no home to keep it in (no measurement)."""
    p = os.environ.get("DRILLER_MMPI_CALIB_FILE")
    if p:
        return p
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):   # no HOME: never a directory relative to where we run
        return ""
    return os.path.join(base, "driller", "mmpi-copies.json")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def machine_key() -> str:
    """What the figures belong to: this host, this boot, this CPU model and count."""
    boot = _read("/proc/sys/kernel/random/boot_id").strip()
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:   # (the first CPU's: the whole file is long on big machines)
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return f"{os.uname().nodename}|{boot}|{model}|{os.cpu_count()}"


def _figures(d, sizes) -> dict | None:
    """``d``'s {n: µs} for every size, each a positive finite number; else None."""
    if not isinstance(d, dict):
        return None
    out = {}
    for n in sizes:
        v = d.get(str(n))
        if type(v) not in (int, float) or not (0 < v < math.inf):
            return None
        out[n] = float(v)
    return out


def read_cache(path: str, key: str, sizes=SIZES) -> dict | None:
    """The figures in ``path`` if it is a cache of this version for ``key`` with
    every size; None for anything else (missing, corrupt, old, another machine)."""
    import json   # (here: only a rank that takes the measurement pays its import)
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read(1 << 16))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict) or d.get("version") != VERSION or d.get("key") != key:
        return None
    copy = _figures(d.get("copy"), sizes)
    if copy is None:
        return None
    cma = None
    if d.get("cma") is not None:
        cma = _figures(d.get("cma"), sizes)
        if cma is None:
            return None
    return {"copy": copy, "cma": cma}


def _write(path: str, key: str, m: dict) -> None:
    import json
    d = {"version": VERSION, "key": key,
         "copy": {str(n): v for n, v in m["copy"].items()},
         "cma": None if m["cma"] is None else {str(n): v for n, v in m["cma"].items()}}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(d, f)
        os.replace(tmp, path)   # readers see the old file or the new one, whole
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path: str | None = None, measure_fn=measure) -> dict | None:
    """This machine's figures: from the cache, else measured (one process at a
    time, under a lock next to the file) and cached.  None when the cache cannot
    be kept (no directory, read-only): then nobody measures, so that every rank
    of a world falls back to the same constants."""
    path = path or cache_path()
    if not path:
        return None
    key = machine_key()
    m = read_cache(path, key)
    if m is not None:
        return m
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        m = read_cache(path, key)   # another process may have measured meanwhile
        if m is None:
            m = measure_fn()
            try:
                _write(path, key, m)
            except OSError:
                return None
        return m
    finally:
        os.close(fd)   # (releases the lock)


def choice() -> Choice | None:
    """The measured choice for this machine, or None: calibration turned off
    (``DRILLER_MMPI_CALIBRATE=0``) or the figures cannot be cached."""
    if os.environ.get("DRILLER_MMPI_CALIBRATE", "1") in ("0", "", "no", "off", "false"):
        return None
    m = load()
    if m is None:
        return None
    h = float(os.environ.get("DRILLER_MMPI_HANDSHAKE_US", HANDSHAKE_US))
    return choose(m["copy"], m["cma"], h)
