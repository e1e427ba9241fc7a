"""Not imported: the directory ``driller run --mpi4py`` puts first on the ranks' PYTHONPATH.

It is a package only so that setuptools ships ``mpi4py/__init__.py`` in wheels.
"""
