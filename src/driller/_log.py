"""The library's diagnostics go through :mod:`logging`, under the ``driller`` logger.

Each module logs to its own child logger (``logging.getLogger(__name__)``:
``driller.proxy._client``, ``driller.mmpi._transport``...).  The library
configures no handler but a :class:`logging.NullHandler` on ``driller``, so
nothing is printed unless the application configures logging, e.g.
``logging.basicConfig(level=logging.DEBUG)`` or
``logging.getLogger("driller").setLevel(logging.DEBUG)`` with a handler.

Modules import this one where they log, not at their own import: ``logging``
costs a few ms (and imports ``threading``), which ``driller run``'s launcher and
the fd proxy process do not pay (docs/configuration.md, "Logging").
"""

from __future__ import annotations

import logging

__all__ = ["get_logger"]

logging.getLogger("driller").addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (a child of ``driller``)."""
    if name != "driller" and not name.startswith("driller."):
        raise ValueError(f"{name!r} is not a driller module name")
    return logging.getLogger(name)
