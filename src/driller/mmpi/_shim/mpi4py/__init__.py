"""driller's stand-in for mpi4py, first on PYTHONPATH under ``driller run --mpi4py``.

``from mpi4py import MPI`` (or ``import mpi4py.MPI``) gives :mod:`driller.MPI`,
so an unmodified mpi4py program runs on mmpi with no MPI library installed.
Only the ``MPI`` module is provided; ``mpi4py.rc`` and ``get_config`` exist so
that programs which set options before importing MPI keep working.
"""

import sys as _sys

__version__ = "4.1.0"
__all__ = ["MPI", "rc", "get_config", "get_include", "profile"]


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


def get_config():
    return {"driller": "mmpi"}


def get_include():
    raise RuntimeError("driller's mpi4py shim has no C headers: build extensions against "
                       "a real mpi4py")


def profile(*_args, **_kwargs):
    pass


from driller import MPI  # noqa: E402  (the facade; imports the communicator lazily)

_sys.modules[__name__ + ".MPI"] = MPI
