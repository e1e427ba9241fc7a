"""A rank of a hybrid world (tests/test_rma.py): 2 emulated nodes x 2 ranks.  Windows
over the whole job raise on every rank (none is left waiting); windows of a node's
communicator work, Allocate_shared included."""
import numpy as np

from driller import MPI

comm = MPI.COMM_WORLD
r = comm.Get_rank()
try:
    MPI.Win.Allocate(8, 1, MPI.INFO_NULL, comm)
    raise SystemExit(f"rank {r}: a window across nodes was created")
except NotImplementedError as e:
    assert "spans several nodes" in str(e), e
node = comm.Split_type(MPI.COMM_TYPE_SHARED)
me = node.Get_rank()
win = MPI.Win.Allocate_shared(8, 8, MPI.INFO_NULL, node)
peer, _ = win.Shared_query(1 - me)
node.Barrier()
np.frombuffer(peer, np.int64)[0] = 100 + r      # a store into the other rank's part
node.Barrier()
assert np.frombuffer(win, np.int64)[0] == 100 + (r ^ 1), np.frombuffer(win, np.int64)
del peer
node.Barrier()   # (both have read their part before either adds to rank 0's)
win.Lock_all()
win.Accumulate(np.array([1], np.int64), 0, 0, MPI.SUM)
win.Unlock_all()
node.Barrier()
if me == 0:
    assert np.frombuffer(win, np.int64)[0] == 100 + (r ^ 1) + 2
win.Free()
comm.Barrier()
print(f"rank {r} ok", flush=True)
