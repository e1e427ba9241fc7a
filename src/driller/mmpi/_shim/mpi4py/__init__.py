"""driller's stand-in for mpi4py, first on PYTHONPATH under ``driller run --mpi4py``.

``from mpi4py import MPI`` (or ``import mpi4py.MPI``) gives :mod:`driller.MPI`,
so an unmodified mpi4py program runs on mmpi with no MPI library installed.

Every other ``mpi4py.*`` module (``mpi4py.util`` with ``pkl5``, ``dtlib``,
``pool``, ``sync``; ``mpi4py.futures``; ``mpi4py.run`` and ``python -m
mpi4py``; ``mpi4py.bench``) is served, unchanged, from the installed mpi4py
distribution's own pure-Python files: this package's ``__path__`` is the real
package directory, found on ``sys.path`` without importing the real
``mpi4py/__init__.py`` (which would install its finder for the compiled
``MPI`` extension), and ``mpi4py.MPI`` is pinned to driller.MPI.  mpi4py
installs from a wheel with no MPI library; only its ``MPI`` extension needs
one, and that is never loaded here.  Without mpi4py installed, ``MPI`` and
``python -m mpi4py`` still work (the latter from this directory), and the other
names raise a ModuleNotFoundError saying to ``pip install mpi4py``.

``mpi4py.rc`` and ``get_config`` exist so that programs which set options
before importing MPI keep working.
"""

import importlib.machinery as _machinery
import os as _os
import re as _re
import sys as _sys

__all__ = ["MPI", "rc", "get_config", "get_include", "profile"]

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_SHIM_ROOT = _os.path.dirname(_HERE)


def _same(a: str, b: str) -> bool:
    try:
        return _os.path.samefile(a, b)
    except OSError:
        return False


def _find_distribution():
    """The installed mpi4py's package directory (not this one), or None."""
    entries = [p for p in _sys.path if not _same(p or _os.getcwd(), _SHIM_ROOT)]
    spec = _machinery.PathFinder.find_spec("mpi4py", entries)
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        return None             # not found, or a namespace directory named mpi4py
    directory = _os.path.dirname(spec.origin)
    return None if _same(directory, _HERE) else directory


def _read_version(directory):
    try:
        with open(_os.path.join(directory, "__init__.py"), encoding="utf-8") as f:
            m = _re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", f.read(), _re.M)
    except OSError:
        return None
    return m.group(1) if m else None


_DISTRIBUTION = _find_distribution()
__version__ = (_read_version(_DISTRIBUTION) if _DISTRIBUTION else None) or "4.1.0"
# the real package's modules first; this directory supplies __main__ when mpi4py is absent
__path__ = [_DISTRIBUTION] if _DISTRIBUTION else [_HERE]

_MISSING = ("{name} comes from the mpi4py distribution, which is not installed in "
            "this Python ({exe}): `pip install mpi4py` (a wheel: no MPI library is "
            "needed, driller run --mpi4py serves mpi4py.MPI itself)")


class _MissingDistribution:
    """Last on sys.meta_path: names of the real mpi4py, asked for while it is absent."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if _DISTRIBUTION is None and fullname.startswith(__name__ + ".") \
                and fullname != __name__ + ".MPI":
            raise ModuleNotFoundError(_MISSING.format(name=fullname, exe=_sys.executable),
                                      name=fullname)
        return None

    @staticmethod
    def invalidate_caches():
        pass


if _DISTRIBUTION is None:
    _sys.meta_path.append(_MissingDistribution)


class _DistributionModules:
    """First on sys.meta_path: loads the distribution's ``mpi4py.*`` modules
    unchanged, except that (1) a name driller.MPI lacks, met while such a module
    is imported (``class Intercomm(Comm, MPI.Intercomm)``), makes the import fail
    with an ImportError naming it, as a missing ``from ..MPI import name`` does,
    so that ``try: import ... except ImportError`` keeps working; (2) after
    ``mpi4py.futures._core`` loads, driller marks a pool whose workers cannot be
    spawned broken instead of hanging (``driller.mmpi._pylayers.patch_futures``)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if (_DISTRIBUTION is None or not fullname.startswith(__name__ + ".")
                or fullname == __name__ + ".MPI"):
            return None
        spec = _machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_for_driller(module):
            from driller.errors import MmpiNotImplementedError
            try:
                exec_module(module)
            except MmpiNotImplementedError as e:
                raise ImportError(f"{fullname} cannot run on driller.MPI yet: {e}",
                                  name=fullname) from e
            if fullname == __name__ + ".futures._core":
                from driller.mmpi import _pylayers
                _pylayers.patch_futures(module)

        spec.loader.exec_module = exec_for_driller
        return spec

    @staticmethod
    def invalidate_caches():
        pass


_sys.meta_path.insert(0, _DistributionModules)


class _Rc:
    """Accepts and ignores mpi4py's runtime options (``mpi4py.rc.threads = False``...)."""

    def __init__(self, **kwargs):
        self.initialize = True
        self.threads = True
        self.thread_level = "multiple"
        self.finalize = None
        self.fast_reduce = True
        self.recv_mprobe = True
        self.irecv_bufsz = 32768
        self.errors = "exception"
        self.__dict__.update(kwargs)

    def __call__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __repr__(self):
        return f"<mpi4py.rc (driller shim) {self.__dict__}>"


rc = _Rc()
_sys.modules[__name__ + ".rc"] = rc      # as the real package does


def get_config():
    return {"driller": "mmpi"}


def get_include():
    raise RuntimeError("driller's mpi4py shim has no C headers: build extensions against "
                       "a real mpi4py")


def profile(*_args, **_kwargs):
    pass


from driller import MPI  # noqa: E402  (the facade; imports the communicator lazily)

_sys.modules[__name__ + ".MPI"] = MPI
