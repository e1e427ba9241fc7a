"""A rank of a hybrid world (tests/test_hybrid.py): 2 emulated nodes (DRILLER_NODE a
and b) x 2 ranks under mpirun/mpiexec.  Mode "all" checks routes, point-to-point
both ways, objects with large arrays, shared arrays, ANY_SOURCE, every collective
against numpy, Split_type, Dup and Split; "coll" (any layout of nodes, e.g. 3 + 2)
the routes and the gathers, scatters and all-to-alls (tests/_hybrid_coll.py) on
the world and on a communicator whose nodes interleave; "a2a" the all-to-alls
alone; "raise" and "kill" make
rank 2 fail while the others wait on it (rank 3 through shared memory, ranks 0 and
1 through MPI)."""
import os
import signal
import sys

import numpy as np

import _hybrid_coll

import driller
from driller import MPI, mmpi

comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
node = os.environ["DRILLER_NODE"]
mode = sys.argv[1]
if mode in ("raise", "kill"):
    comm.Barrier()
    if r == 2:
        if mode == "raise":
            raise ValueError("rank 2 fails on purpose")
        os.kill(os.getpid(), signal.SIGKILL)
    comm.Recv(np.empty(4), source=2, tag=1)
    sys.exit(0)
if mode == "a2a":
    # the all-to-alls alone (any layout of nodes, e.g. 3 + 1), on the world and
    # on the ranks in reverse order
    rev = comm.Split(0, n - r)
    for c, label in ((comm, "world"), (rev, "reversed")):
        _hybrid_coll.check_alltoall_fast(c, MPI, label)
        _hybrid_coll.check_alltoall_paths(c, MPI, label)
        _hybrid_coll.check_alltoallv(c, MPI, label)
    rev.Free()
    comm.Barrier()
    with open(os.path.join(sys.argv[2], f"ok{r}"), "w") as f:
        f.write("ok")
    sys.exit(0)
if mode == "coll":
    nodes = comm.allgather(node)
    routes = [mmpi.route(comm, k) for k in range(n)]
    assert routes == [("self" if k == r else "shm" if nodes[k] == node else "mpi")
                      for k in range(n)], routes
    _hybrid_coll.check(comm, MPI, "world")
    _hybrid_coll.check_reductions(comm, MPI, "world")
    _hybrid_coll.check_alltoallv(comm, MPI, "world")
    _hybrid_coll.check_alltoall_paths(comm, MPI, "world")
    _hybrid_coll.check_alltoall_fast(comm, MPI, "world")
    _hybrid_coll.check_lanes_freed(comm, MPI, "world")
    # ranks in reverse order: every node's ranks interleave with the other's
    rev = comm.Split(0, n - r)
    _hybrid_coll.check(rev, MPI, "reversed")
    _hybrid_coll.check_reductions(rev, MPI, "reversed")
    _hybrid_coll.check_alltoallv(rev, MPI, "reversed")
    _hybrid_coll.check_alltoall_paths(rev, MPI, "reversed")
    _hybrid_coll.check_alltoall_fast(rev, MPI, "reversed")
    rev.Free()
    comm.Barrier()
    with open(os.path.join(sys.argv[2], f"ok{r}"), "w") as f:
        f.write("ok")
    sys.exit(0)
assert n == 4, n
expected = {0: "a", 1: "a", 2: "b", 3: "b"}
assert node == expected[r][0] or node.startswith(expected[r]), (r, node)
routes = [mmpi.route(comm, k) for k in range(n)]
assert routes == [("self" if k == r else "shm" if k // 2 == r // 2 else "mpi")
                  for k in range(n)], routes
# buffers both ways between every pair, eager and rendezvous sizes
for size in (0, 8, 100_000, 3_000_000):
    for k in range(1, n):
        a = np.full(size, r * 10 + k, dtype=np.int64)
        b = np.empty(size, dtype=np.int64)
        comm.Sendrecv(a, (r + k) % n, 5, b, (r - k) % n, 5)
        assert (b == ((r - k) % n) * 10 + k).all(), (r, size, k)
# Sendrecv and Sendrecv_replace with the partner on the other node, larger than a
# record, both ranks at once (after a barrier), many times: neither may wait for
# its own send before taking the other's request
partner = (r + 2) % n
for i in range(40):
    a = np.full(4096 + i, r * 100.0 + i)
    b = np.empty_like(a)
    comm.Barrier()
    comm.Sendrecv(a, partner, 6, b, partner, 6)
    assert (b == partner * 100.0 + i).all(), (r, i)
    comm.Sendrecv_replace(a, partner, 7, partner, 7)
    assert (a == partner * 100.0 + i).all(), (r, i)
# blocking Send/Recv between nodes (the remote fast path), with a message of another
# tag queued before the one received first
x = np.empty(1)
if r == 0:
    comm.Send(np.array([1.0]), 2, 11)
    comm.Send(np.array([2.0]), 2, 12)
    for i in range(50):
        comm.Send(np.array([float(i)]), 2, 13)
        comm.Recv(x, 2, 13)
        assert x[0] == -i
elif r == 2:
    comm.Recv(x, 0, 12)
    assert x[0] == 2.0
    comm.Recv(x, 0, 11)
    assert x[0] == 1.0
    for i in range(50):
        comm.Recv(x, 0, 13)
        assert x[0] == i
        comm.Send(-x, 0, 13)
# objects with large arrays, to every rank
obj = {"r": r, "x": np.arange(500_000) * r, "b": bytes(200_000)}
for k in range(1, n):
    got = comm.sendrecv(obj, (r + k) % n, 6, source=(r - k) % n, recvtag=6)
    assert got["r"] == (r - k) % n and (got["x"] == np.arange(500_000) * got["r"]).all()
# Split_type gives the node
sh = comm.Split_type(MPI.COMM_TYPE_SHARED)
names = sh.allgather(node)
assert set(names) == {node}, names
assert all(mmpi.route(sh, k) in ("self", "shm") for k in range(sh.Get_size()))
# shared arrays: by reference on the node, by value across
a = driller.zeros(1000); a[:] = r
if r == 0:
    comm.send(a, 2, 1)   # other node: by value (first: rank 1 writes into a below)
    comm.send(a, 1, 1)   # same node: by reference
    comm.recv(source=1, tag=2); comm.recv(source=2, tag=2)
elif r in (1, 2):
    b = comm.recv(source=0, tag=1)
    assert (b == 0).all()
    b[:] = 42 if r == 1 else 99
    comm.send("done", 0, 2)
comm.Barrier()
if r == 0:
    assert (a == 42).all(), a[:3]   # rank 1 wrote through the reference; rank 2's copy is its own
# collectives vs numpy
rng = np.random.default_rng(r)
for count in (1, 1000, 300_000):
    x = np.arange(count, dtype=np.float64) + r
    y = np.empty(count); comm.Allreduce(x, y, op=MPI.SUM)
    assert np.allclose(y, n * np.arange(count) + n * (n - 1) / 2)
    z = np.empty(count) if r == 1 else None
    comm.Reduce(x, z, op=MPI.MAX, root=1)
    if r == 1: assert np.allclose(z, np.arange(count) + n - 1)
    b = x.copy() if r == 2 else np.empty(count)
    comm.Bcast(b, root=2)
    assert np.allclose(b, np.arange(count) + 2)
    g = np.empty((n, count)) if r == 3 else None
    comm.Gather(x, g, root=3)
    if r == 3: assert all(np.allclose(g[k], np.arange(count) + k) for k in range(n))
    ag = np.empty((n, count)); comm.Allgather(x, ag)
    assert all(np.allclose(ag[k], np.arange(count) + k) for k in range(n))
    s = np.arange(n * count, dtype=np.float64).reshape(n, count) * (r + 1)
    t = np.empty((n, count)); comm.Alltoall(s, t)
    assert all(np.allclose(t[k], np.arange(r * count, (r + 1) * count) * (k + 1)) for k in range(n))
    sc = np.empty(count); comm.Scatter(s if r == 0 else None, sc, root=0)
    assert np.allclose(sc, np.arange(r * count, (r + 1) * count))
# hierarchical Barrier/Bcast/Allreduce: every root (leader or not), IN_PLACE, a
# sub-communicators that span both nodes ({0, 3} and {1, 2})
for root in range(n):
    b = np.arange(1000.0) * (root + 1) if r == root else np.empty(1000)
    comm.Bcast([b, MPI.DOUBLE], root=root)
    assert np.allclose(b, np.arange(1000.0) * (root + 1)), (r, root)
ip = np.full(7, r + 1.0)
comm.Allreduce(MPI.IN_PLACE, ip, op=MPI.PROD)
assert np.allclose(ip, 24.0)
sub = comm.Split(0 if r in (0, 3) else 1, r)      # {0, 3} spans both nodes
v = np.array([float(r)]); w = np.empty(1)
sub.Allreduce(v, w)
assert w[0] == 3.0, w      # 0 + 3 and 1 + 2
sub.Barrier()
comm.Barrier()
# rooted reductions and object forms from every root; interleaved nodes (ranks 0, 2 on
# one "node" of the split below, 1, 3 on the other) keep rank order for lists
for root in range(n):
    red = np.empty(5) if r == root else None
    comm.Reduce(np.full(5, 2.0 ** r), red, op=MPI.SUM, root=root)
    if r == root:
        assert np.allclose(red, 15.0), red
    red = np.full(5, 2.0 ** r) if r == root else None
    comm.Reduce(MPI.IN_PLACE if r == root else np.full(5, 2.0 ** r), red, op=MPI.MAX,
                root=root)
    if r == root:
        assert np.allclose(red, 8.0), red
    assert comm.reduce([r], op=MPI.SUM, root=root) == (list(range(n)) if r == root else None)
    assert comm.bcast({"v": root} if r == root else None, root=root) == {"v": root}
assert comm.allreduce([r]) == list(range(n))
inter = comm.Split(0, [0, 2, 1, 3][r])          # comm ranks 0..3 = world 0, 2, 1, 3
assert inter.allreduce([r]) == [0, 2, 1, 3]      # lists: rank order, not node order
assert inter.reduce([r], root=3) == ([0, 2, 1, 3] if r == 3 else None)
_hybrid_coll.check(comm, MPI, "world")
_hybrid_coll.check(inter, MPI, "interleaved")
_hybrid_coll.check_reductions(comm, MPI, "world")
_hybrid_coll.check_reductions(inter, MPI, "interleaved")
_hybrid_coll.check_alltoallv(comm, MPI, "world")
_hybrid_coll.check_alltoallv(inter, MPI, "interleaved")
_hybrid_coll.check_alltoall_paths(comm, MPI, "world")
_hybrid_coll.check_alltoall_paths(inter, MPI, "interleaved")
_hybrid_coll.check_alltoall_fast(comm, MPI, "world")
_hybrid_coll.check_alltoall_fast(inter, MPI, "interleaved")
_hybrid_coll.check_lanes_freed(inter, MPI, "interleaved")
assert comm.bcast({"v": r} if r == 0 else None, root=0) == {"v": 0}
assert comm.gather(r, root=0) == (list(range(n)) if r == 0 else None)
assert comm.allgather(r * 2) == [k * 2 for k in range(n)]
assert comm.alltoall([r * 10 + k for k in range(n)]) == [k * 10 + r for k in range(n)]
assert comm.scatter([k * 3 for k in range(n)] if r == 1 else None, root=1) == r * 3
assert comm.reduce(r, op=MPI.SUM, root=2) == (n * (n - 1) // 2 if r == 2 else None)
assert comm.scan(r) == r * (r + 1) // 2
comm.Barrier()
# Dup / Split across nodes
d = comm.Dup(); assert d.allreduce(1) == n
sp = comm.Split(r % 2, r); assert sp.allgather(r) == [k for k in range(n) if k % 2 == r % 2]
# ANY_SOURCE, order per pair under load
if r == 0:
    last = {k: -1 for k in range(1, n)}
    for _ in range(200 * (n - 1)):
        st = MPI.Status()
        v = comm.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
        src = st.Get_source(); assert v[0] == src and v[1] == last[src] + 1, (v, last); last[src] = v[1]
else:
    for i in range(200):
        comm.send((r, i), 0, i % 5)
comm.Barrier()
# each rank says it got here in a file of its own (launchers may interleave output)
with open(os.path.join(sys.argv[2], f"ok{r}"), "w") as f:
    f.write("ok")
