"""Numeric settings from the environment (``DRILLER_*``, docs/configuration.md),
refused one way: an unset or empty variable gives the default; a value that is
not what the setting takes (each setting's converter says what it takes) is
refused with an exception (a :class:`~driller.DrillerError` subclass) naming the
variable, what it takes and where it is documented, instead of a bare
``ValueError`` from ``int()`` deep in a call.  ``driller.mmpi._env`` reads the
``DRILLER_MMPI_*`` numbers through it, ``driller.mapcache`` its bounds, and the
client that starts an fd proxy checks the proxy's ``DRILLER_LEASE_*`` settings
with it (the proxy process reads them where it has nobody to raise to)."""

from __future__ import annotations

import os

from .errors import DrillerError


def read(name: str, default, kind, what: str, error: type = DrillerError):
    """``kind(value)`` of the variable ``name``, ``default`` when it is unset or
    empty.  ``kind`` raises ValueError on a value it does not take; ``error`` is
    then raised, saying ``what`` the setting takes."""
    v = os.environ.get(name)
    if v is None or not v.strip():
        return default
    try:
        return kind(v)
    except ValueError:
        raise error(f"{name}={v!r}: give {what} (docs/configuration.md), or leave it "
                    f"unset for the default") from None
