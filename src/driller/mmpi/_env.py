"""mmpi's numeric settings from the environment (``DRILLER_MMPI_*``,
docs/configuration.md), read in one place: an unset or empty variable gives the
default (callers that treat "not set" apart pass None); a value that is not a
number is refused with :class:`MmpiError` naming the variable, what it takes
and where it is documented, instead of a bare ``ValueError`` from ``int()``
deep in a rank's start (``driller._env.read``, which the map cache's
bounds use too)."""

from __future__ import annotations

from .._env import read
from ..errors import MmpiError

# what the settings take (the refusals say it)
BYTES = "a whole number of bytes"
POLLS = "a whole number of polls"
MICROSECONDS = "microseconds"


def _read(name: str, default, kind, what: str):
    return read(name, default, kind, what, MmpiError)


def env_int(name: str, default, what: str = "a whole number"):
    """``int`` of the variable ``name`` (``default`` when unset or empty)."""
    return _read(name, default, int, what)


def env_float(name: str, default, what: str = "a number"):
    """``float`` of the variable ``name`` (``default`` when unset or empty)."""
    return _read(name, default, float, what)
