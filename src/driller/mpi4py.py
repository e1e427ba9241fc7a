"""``mpiexec -n N python -m driller.mpi4py prog.py [args]``: an unmodified mpi4py
program on a hybrid driller world.

Under a real MPI launcher (Open MPI's mpirun/mpiexec, MPICH's hydra, Slurm's
srun), this loads the installed mpi4py's ``MPI`` (the launcher's MPI library)
for driller's own use between nodes, then makes ``from mpi4py import MPI`` in
the program give :mod:`driller.MPI`: ranks on one node talk through driller's
shared memory, ranks on other nodes through MPI (docs/scaleout.md).  The rest
of mpi4py (``mpi4py.util``, ``mpi4py.futures``...) stays the installed one, on
driller.MPI.  ``-m module`` runs a module instead of a file.
"""

from __future__ import annotations

import runpy
import sys

__all__ = ["main"]

USAGE = "usage: python -m driller.mpi4py (prog.py | -m module) [args...]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help") or (args[0] == "-m" and len(args) < 2):
        print(__doc__.strip() + "\n\n" + USAGE, file=sys.stderr if not args else sys.stdout)
        return 0 if args else 2
    try:
        import mpi4py
        from mpi4py import MPI as real
    except ImportError as e:
        print(f"driller.mpi4py: mpi4py is not installed ({e}): `pip install mpi4py` "
              f"(or driller[mpi]) with the MPI library your launcher belongs to",
              file=sys.stderr)
        return 2
    from .mmpi import _hybrid
    _hybrid.set_engine(real)
    from . import MPI as facade
    sys.modules["mpi4py.MPI"] = facade
    mpi4py.MPI = facade
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        runpy.run_path(args[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
