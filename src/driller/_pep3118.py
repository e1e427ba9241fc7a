"""PEP 3118 buffer format strings: what driller needs to know about one that numpy
cannot read (a ctypes structure with a pointer field, ``'T{<P:Offset:}'``).

Pure: no I/O, no numpy.  Shared by :mod:`driller.hole` (``drill`` refuses buffers of
Python objects) and :mod:`driller.mmpi._bufspec` (``Send``/``Recv`` refuse them).
"""

from __future__ import annotations

import re

__all__ = ["holds_objects"]

# a struct member's name, ``:name:`` after its type (``T{<d:x:<O:obj:}``)
_FIELD_NAMES = re.compile(r":[^:]*:")


def holds_objects(fmt: str) -> bool:
    """Whether items of format ``fmt`` hold Python object pointers (type code ``O``,
    alone or as a struct member).  Member names are dropped first: a field named
    ``Offset`` or ``O`` is not an object (``'T{<P:Offset:}'`` is False,
    ``'T{<d:x:<O:Obj:}'`` True)."""
    return "O" in _FIELD_NAMES.sub("", fmt)
