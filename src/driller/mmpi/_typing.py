"""The types of mmpi's annotations: what ``mpi4py.typing`` names, for driller.

Only type checkers and documentation tools read this module: the other modules
import it under ``if TYPE_CHECKING:`` (their annotations are strings, PEP 563),
so it costs nothing at run time.  The names and their meaning follow
``mpi4py.typing`` (a buffer is anything with the buffer protocol, DLPack or the
CUDA array interface; a buffer specification adds a count and a datatype).
"""

from __future__ import annotations

from typing import (TYPE_CHECKING, Any, Dict, List, Optional, Protocol, SupportsIndex, Tuple,
                    TypeAlias, Union)

if TYPE_CHECKING:
    # type-only references through the package facade (no import at run time)
    from . import Datatype
    from ._const import _InPlace

__all__ = ["SupportsBuffer", "SupportsDLPack", "SupportsCAI", "Buffer", "Bottom", "InPlace",
           "Aint", "Count", "Displ", "Offset", "TypeSpec", "BufSpec", "BufSpecB", "BufSpecV",
           "BufSpecW", "TargetSpec"]


class SupportsBuffer(Protocol):
    """An object exporting the Python buffer protocol (PEP 688 on Python >= 3.12)."""


class SupportsDLPack(Protocol):
    """An object exporting the DLPack data interchange protocol."""

    def __dlpack__(self, *, stream: Optional[Any] = None) -> object:
        """Export the data as a DLPack capsule."""

    def __dlpack_device__(self) -> Tuple[int, int]:
        """The device type and device ID, in DLPack's codes."""


class SupportsCAI(Protocol):
    """An object exporting the CUDA Array Interface."""

    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]:
        """The interface's description of the data."""


Buffer = Union[SupportsBuffer, SupportsDLPack, SupportsCAI]
"""Buffer-like object."""

Bottom: TypeAlias = None
"""Start of the address range (``MPI.BOTTOM``, which is ``None`` in driller)."""

InPlace = Union["_InPlace", None]
"""In-place buffer argument (``MPI.IN_PLACE``)."""

Aint = SupportsIndex
"""Address-sized integral type."""

Count = SupportsIndex
"""Integral type for counts."""

Displ = SupportsIndex
"""Integral type for displacements."""

Offset = SupportsIndex
"""Integral type for offsets."""

TypeSpec = Union["Datatype", str]
"""Datatype specification: a Datatype or a NumPy-style type code."""

BufSpec = Union[Buffer, Tuple[Buffer, Count], Tuple[Buffer, TypeSpec],
                Tuple[Buffer, Count, TypeSpec], Tuple[Bottom, Count, "Datatype"], List[Any]]
"""Buffer specification: buffer, or [buffer, count, datatype] (count, datatype optional)."""

BufSpecB = Union[Buffer, Tuple[Buffer, Count], Tuple[Buffer, TypeSpec],
                 Tuple[Buffer, Count, TypeSpec], List[Any]]
"""Buffer specification (block): the count is the count of each block."""

BufSpecV = Union[Buffer, Tuple[Buffer, Any], Tuple[Buffer, Any, Any],
                 Tuple[Buffer, Any, Any, Any], List[Any]]
"""Buffer specification (vector): [buffer, counts, displacements, datatype]."""

BufSpecW = Union[Tuple[Buffer, Any, Any], Tuple[Bottom, Any, Any, Any], List[Any]]
"""Buffer specification (generalized): [buffer, counts, displacements, datatypes]."""

TargetSpec = Union[Displ, Tuple[()], Tuple[Displ], Tuple[Displ, Count],
                   Tuple[Displ, Count, TypeSpec], List[Any]]
"""Target specification of one-sided operations: [displacement, count, datatype]."""
