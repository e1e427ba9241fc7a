"""A rank of a hybrid world for tests/test_topo.py: 2 emulated nodes x 3 ranks under
mpirun; every neighbourhood collective of test_topo's sweep, on every topology, with
neighbours both through shared memory and through MPI."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driller import MPI, mmpi  # noqa: E402
import test_topo  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == 6
routes = {mmpi.route(comm, k) for k in range(comm.size)}
assert routes == {"self", "shm", "mpi"}, routes
checks = 0
for kind in ("cart", "cart-periodic", "graph", "dist-graph"):
    for dtype in (np.float64, np.int32):
        checks += test_topo._neighbor_sweep(comm, kind, dtype)
print("OK", comm.rank, checks, flush=True)
