"""driller: cooperating Linux processes read and write one another's memory.

(Provisional: the core API is being assembled.)
"""

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__all__ = list(_errors_all)
