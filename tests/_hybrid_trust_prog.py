"""A rank of a hybrid world (tests/test_hybrid_trust.py): 2 emulated nodes x 2 ranks
(world ranks 0, 1 on the first, 2, 3 on the second).

Mode "checks": routes on the world, Dup, Split, Create and the node's communicator
(Split_type); Win.Allocate_shared on the node communicator is zero copy; Iprobe /
Improbe / Mprobe with ANY_SOURCE and ANY_TAG see both routes; a cancelled receive
from another node; Ssend, ssend and Issend across nodes complete only once matched;
an object holding a large array and a shared array crosses nodes by value (the
receiver's copy is its own); an Alltoall whose send buffer one rank refuses raises on
every rank.  Each rank writes ok<rank> into the directory argv[2].

Mode "agreed <send|count> <rank> <dir>": that rank alone refuses its send buffer, or passes
another count, in a large Allreduce (lanes on every rank): the lanes agree that they
failed and every rank raises (nobody aborts the job); the next Allreduce works.  Each
rank writes what it raised into <dir>/<rank>-<attempt>.

Mode "refuse <collective> <rank>": that rank alone passes an argument the others do
not (a buffer spec that overruns its buffer, or another count) to a collective across
nodes, and catches what it raises; the job must end (the rank is named), never hang.
"""
import os
import sys
import time

import numpy as np

import driller
from driller import MPI, mmpi

comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
mode = sys.argv[1]

if mode == "refuse":
    what, bad = sys.argv[2], int(sys.argv[3])
    mine = r == bad
    overrun = [np.zeros(5), 9, MPI.DOUBLE]          # 9 doubles from a 5-double buffer
    try:
        if what == "Allreduce":
            comm.Allreduce(overrun if mine else np.ones(4), np.zeros(4))
        elif what == "Bcast":
            comm.Bcast(np.zeros(5 if mine else 4), root=0)
        elif what == "Reduce":
            comm.Reduce(overrun if mine else np.ones(4), np.zeros(4) if r == 0 else None,
                        root=0)
        elif what == "Allreduce-lanes":   # 4 elements here, lanes elsewhere
            k = 4 if mine else 100_000
            comm.Allreduce(np.ones(k), np.zeros(k))
        elif what == "Allgather":        # the receive buffer spec refused
            comm.Allgather(np.ones(4), [np.zeros(5), 99, MPI.DOUBLE] if mine
                           else np.zeros((n, 4)))
        elif what == "Scan":             # a flat collective across nodes
            comm.Scan(overrun if mine else np.ones(4), np.zeros(4))
        elif what == "bcast":
            comm.bcast((lambda: 0) if mine else None, root=bad)   # cannot be pickled
    except Exception as e:   # the program goes on (as a test of errors would)
        print(f"rank {r} caught {type(e).__name__}", flush=True)
    comm.Allreduce(np.ones(4), np.zeros(4))
    comm.Barrier()
    sys.exit(0)

if mode == "agreed":
    # the lanes (large buffers) fail on every rank, which each raises: the job goes on
    what, bad = sys.argv[2], int(sys.argv[3])
    mine, k = r == bad, 100_000
    from driller.errors import MmpiError
    for i in range(2):   # twice: the communicator stays in step after it
        try:
            if what == "send":      # a send buffer that only this rank refuses
                comm.Allreduce([np.zeros(5), k, MPI.DOUBLE] if mine else np.ones(k),
                               np.zeros(k))
            else:                   # a count that differs, lanes on every rank
                kk = k + 8 if mine else k
                comm.Allreduce(np.ones(kk), np.zeros(kk))
        except MmpiError as e:
            res = f"raised {type(e).__name__}: {e}"
        else:
            res = "returned"
        with open(os.path.join(sys.argv[4], f"{r}-{i}"), "w") as f:
            f.write(res)
        y = np.zeros(k)
        comm.Allreduce(np.full(k, float(r)), y)
        assert (y == 6.0).all(), y[:4]
    comm.Barrier()
    sys.exit(0)

assert n == 4 and mode == "checks", (n, mode)


def expected(c, k):
    """self / shm / mpi for rank k of communicator c (nodes: world ranks // 2)."""
    me, other = c.Get_group().Translate_ranks([c.Get_rank(), k], comm.Get_group())
    return "self" if me == other else "shm" if me // 2 == other // 2 else "mpi"


# routes on the world and on derived communicators
node = comm.Split_type(MPI.COMM_TYPE_SHARED)
comms = {"world": comm, "dup": comm.Dup(), "split": comm.Split(r % 2, -r),
         "create": comm.Create(comm.Get_group().Incl([3, 0, 1])), "node": node,
         "node-dup": node.Dup()}
for name, c in comms.items():
    if c == MPI.COMM_NULL:
        assert name == "create" and r == 2, (name, r)
        continue
    got = [mmpi.route(c, k) for k in range(c.Get_size())]
    assert got == [expected(c, k) for k in range(c.Get_size())], (r, name, got)
assert node.Get_size() == 2 and all(mmpi.route(node, k) != "mpi" for k in range(2))

# Allocate_shared on the node: stores seen by the other rank without any call
win = MPI.Win.Allocate_shared(16 if node.Get_rank() == 0 else 0, 8, MPI.INFO_NULL, node)
mem, _ = win.Shared_query(0)
words = np.ndarray(2, np.int64, mem)
node.Barrier()
deadline = time.monotonic() + 60
if node.Get_rank() == 1:
    words[1] = 1000 + r
    while words[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert words[0] == 2000 + r - 1, words
else:
    while words[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert words[1] == 1000 + r + 1, words
    words[0] = 2000 + r
node.Barrier()
del words, mem
win.Free()

# probes with ANY_SOURCE / ANY_TAG: messages of rank 1 (shared memory), 2 and 3 (MPI)
if r == 0:
    seen = set()
    while len(seen) < 3:
        st = MPI.Status()
        if comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, st):
            msg = comm.Improbe(st.Get_source(), st.Get_tag())
            assert msg is not None
            assert msg.recv() == ("hi", st.Get_source(), st.Get_tag())
            seen.add(st.Get_source())
        else:
            time.sleep(0.001)   # (more ranks than cores: no pure spinning)
    comm.Barrier()
    got = set()
    for _ in range(3):
        st = MPI.Status()
        msg = comm.Mprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)
        big = np.empty(st.Get_count(MPI.BYTE), np.uint8)
        msg.Recv(big)
        assert (big == st.Get_source()).all() and st.Get_tag() == 50 + st.Get_source()
        got.add(st.Get_source())
    assert seen == got == {1, 2, 3}
else:
    comm.send(("hi", r, 40 + r), 0, 40 + r)
    comm.Barrier()
    comm.Send(np.full(100_000 * r, r, np.uint8), 0, 50 + r)
comm.Barrier()

# a receive from another node, cancelled; the pair's traffic goes on right after it
if r in (0, 2):
    peer = 2 - r
    req = comm.Irecv(np.empty(10), peer, 77)
    req.Cancel()
    st = MPI.Status()
    req.Wait(st)
    assert st.Is_cancelled()
comm.Barrier()
if r in (0, 2):
    comm.Send(np.full(10, float(r)), peer, 77)
    x = np.empty(10)
    comm.Recv(x, peer, 77)
    assert (x == peer).all()
comm.Barrier()

# synchronous sends across nodes complete only once the receive is matched: after the
# receiver posted it (CLOCK_MONOTONIC is one clock for every process of the machine)
if r == 0:
    for k, send in enumerate((lambda: comm.Ssend(np.ones(4), 2, 60),
                              lambda: comm.ssend("x", 2, 61))):
        send()
        done = time.monotonic()
        posted = comm.recv(source=2, tag=64)
        assert done >= posted, (k, done, posted)
    req = comm.Issend(np.ones(100_000), 2, 62)
    time.sleep(0.3)
    assert not req.Test()
    comm.send("go", 2, 63)
    req.Wait()
elif r == 2:
    time.sleep(0.3)
    posted = time.monotonic()
    comm.Recv(np.empty(4), 0, 60)
    comm.send(posted, 0, 64)
    time.sleep(0.3)
    posted = time.monotonic()
    comm.recv(source=0, tag=61)
    comm.send(posted, 0, 64)
    comm.recv(source=0, tag=63)
    comm.Recv(np.empty(100_000), 0, 62)
comm.Barrier()

# an object with a large array and a shared array, across nodes: by value
N = (96 << 20) // 8
if r == 1:
    obj = {"a": np.arange(N, dtype=np.int64), "z": driller.zeros(1000)}
    obj["z"][:] = 5
    comm.send(obj, 3, 70)
    assert comm.recv(source=3, tag=71) == "changed"
    assert (obj["z"] == 5).all() and obj["a"][-1] == N - 1   # the sender's are untouched
elif r == 3:
    got = comm.recv(source=1, tag=70)
    assert got["a"].size == N and (got["a"][::4099] == np.arange(0, N, 4099)).all()
    assert (got["z"] == 5).all()
    got["z"][:] = 9
    got["a"][:] = 0
    comm.send("changed", 1, 71)
comm.Barrier()

# Alltoall (small blocks: through the leaders) whose send buffer one rank refuses, a
# node's leader or not: every rank raises (as on one node), the refusing one its own error
from driller.errors import MmpiError   # noqa: E402
for bad in (2, 3):
    try:
        comm.Alltoall([np.zeros(5), 9 * n, MPI.DOUBLE] if r == bad else np.ones((n, 4)),
                      np.zeros((n, 4)))
    except MmpiError as e:
        assert ("overruns" in str(e)) == (r == bad), (bad, r, e)
    else:
        raise AssertionError(f"rank {r}: Alltoall with a refused buffer on rank {bad} returned")
comm.Barrier()
with open(os.path.join(sys.argv[2], f"ok{r}"), "w") as f:
    f.write("ok")
