"""Which systems driller runs on: checked once, at ``import driller``.

driller needs Linux >= 5.16 (``futex_waitv``; memfd seals, pidfds and
``MREMAP_DONTUNMAP`` on shared mappings come earlier) on x86_64.  Other machines are
refused, aarch64 included: ``driller.mmpi``'s lock-free rings, collective slots and
flag words publish a payload and then its head with plain stores, and only x86-64's
total store order keeps a peer from seeing the head first (aarch64 would need a
barrier between the two stores, and another between the reader's loads, which pure
Python cannot issue); nothing of driller has ever run there either (docs/mmpi.md,
"Machines").  The check at import costs
one ``os.uname()``; only a kernel that reports an older version is probed for the
feature itself (a distribution kernel may carry it back), which loads ctypes.
``driller info`` probes every feature by name (:func:`driller._linux.probe_features`).
"""

from __future__ import annotations

import os
import sys

__all__ = ["MIN_KERNEL", "MACHINES", "kernel_version", "problems", "check"]

MIN_KERNEL = (5, 16)
MACHINES = {"x86_64": "x86_64", "amd64": "x86_64"}


def kernel_version(release: str) -> tuple[int, int] | None:
    """``"6.18.0-1-cloud"`` -> (6, 18); None if the release names no version."""
    parts = release.split(".", 2)        # (no `re`: this runs at every `import driller`)
    if len(parts) < 2:
        return None
    minor = parts[1]
    for i, c in enumerate(minor):
        if not c.isdigit():
            minor = minor[:i]
            break
    if not (parts[0].isdigit() and minor):
        return None
    return int(parts[0]), int(minor)


def problems(platform: str, machine: str, release: str, probe=None) -> list[str]:
    """What keeps driller from running here (empty: nothing).  ``probe()`` is asked,
    only for a kernel older than MIN_KERNEL, whether futex_waitv works anyway: it
    returns an error text or None."""
    if not platform.startswith("linux"):
        return [f"driller runs on Linux only (this is {platform!r}): it is built on memfds, "
                f"Linux futexes and process_vm_readv"]
    out = []
    if machine.lower() not in MACHINES:
        out.append(f"the machine is {machine!r}: driller runs on x86_64 only (mmpi's "
                   f"shared-memory rings rely on x86-64's ordered stores: docs/mmpi.md, "
                   f"\"Machines\")")
    version = kernel_version(release)
    if version is None or version < MIN_KERNEL:
        why = probe() if probe is not None else "not probed"
        if why:
            need = ".".join(map(str, MIN_KERNEL))
            out.append(f"the kernel is Linux {release}: driller needs Linux >= {need} "
                       f"(futex_waitv: {why})")
    return out


def _probe_waitv() -> str | None:
    from . import _linux
    try:
        _linux._probe_futex_waitv()
    except OSError as e:
        return str(e)
    return None


def check() -> None:
    """Raise :class:`driller.errors.UnsupportedPlatformError` (an ImportError) naming
    what is missing, if driller cannot run on this system."""
    if sys.platform.startswith("linux"):
        u = os.uname()
        machine, release = u.machine, u.release
    else:
        machine = release = ""
    found = problems(sys.platform, machine, release,
                     _probe_waitv if machine.lower() in MACHINES else None)
    if found:
        from .errors import UnsupportedPlatformError
        raise UnsupportedPlatformError("driller cannot run on this system: " + "; ".join(found)
                                       + ". It needs Linux >= 5.16 on x86_64.")
