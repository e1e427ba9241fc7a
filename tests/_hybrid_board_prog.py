"""A rank of a hybrid world (tests/test_hybrid_board.py): 2 emulated nodes x 2 ranks
(world ranks 0, 1 on the first, 2, 3 on the second).

Mode "wrong <case> [exit]": one rank (or one node) calls a collective with another root, or
another collective, than the others (case "exit": rank 2 exits instead).  Each rank prints what it got ("rank R got X"):
a rank that printed another root's data took a wrong result without a word.  The
job must end (the ranks named), never hang, never return such data; with "exit"
the ranks call no other collective after it (they exit: Finalize's barrier).

Mode "stray": two ranks of different nodes each leave the other a message unreceived.

Mode "right <dir>": a correct program whose ranks wait for a slow rank (and for each
other) in many hierarchical collectives with varying roots, on the world and on a
Split communicator: every result is checked, each rank writes ok<rank> into <dir>.
"""
import os
import sys
import time

import numpy as np

from driller import MPI

comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
mode = sys.argv[1]

if mode == "wrong":
    case = sys.argv[2]
    if case.startswith("Bcast-"):              # Bcast-<rank>-<its root>
        bad, broot = map(int, case.split("-")[1:])
        root = broot if r == bad else 0
        a = np.full(4, float(r))
        comm.Bcast(a, root=root)
        print(f"rank {r} got {a[0]}", flush=True)
        if a[0] != root:
            print(f"rank {r} WRONG DATA: root {root} but got {a[0]}", flush=True)
    elif case == "kind":                       # rank 2 a Barrier, the others a Bcast
        if r == 2:
            comm.Barrier()
        else:
            comm.Bcast(np.zeros(4), root=0)
    elif case == "Reduce":                     # rank 3 reduces to 1, the others to 0
        root = 1 if r == 3 else 0
        out = np.zeros(4)
        comm.Reduce(np.full(4, 1.0 + r), out, root=root)
        if r == root:
            print(f"rank {r} got {out[0]}", flush=True)
            if out[0] != 10.0:
                print(f"rank {r} WRONG DATA: {out[0]}", flush=True)
    elif case == "gather":                     # rank 1 gathers to 3, the others to 0
        root = 3 if r == 1 else 0
        got = comm.gather(r, root=root)
        print(f"rank {r} got {got}", flush=True)
        if r == root and got != list(range(n)):
            print(f"rank {r} WRONG DATA: {got}", flush=True)
    elif case == "Scatter":                    # rank 2 scatters from 1, the others from 0
        root = 1 if r == 2 else 0
        out = np.zeros(4)
        comm.Scatter(np.arange(4.0 * n).reshape(n, 4) + 100 * root, out, root=root)
        print(f"rank {r} got {out[0]}", flush=True)
    elif case == "exit":                       # rank 2 exits (code 3), the others
        if r == 2:                             # call a Barrier
            sys.exit(3)
        comm.Barrier()
    else:
        raise SystemExit(f"unknown case {case}")
    if len(sys.argv) > 3 and sys.argv[3] == "exit":   # no other collective: the exit's
        print(f"rank {r} finished", flush=True)       # (every rank but the odd one)
        sys.exit(0)
    comm.Barrier()
    print(f"rank {r} finished", flush=True)
    sys.exit(0)

if mode == "right":
    sub = comm.Split(r % 2, r)       # ranks 0, 2 and 1, 3: each spans both nodes
    for i in range(6):
        if r == (i % n):
            time.sleep(0.4)          # a slow rank: the others wait for it
        for c in (comm, sub):
            m, k = c.Get_rank(), c.Get_size()
            root = i % k
            a = np.full(5, float(m))
            c.Bcast(a, root=root)
            assert (a == root).all(), (i, a)
            assert c.bcast(("x", m), root=root) == ("x", root)
            out = np.zeros(5)
            c.Reduce(np.full(5, 1.0 + m), out, root=root)
            if m == root:
                assert (out == k * (k + 1) / 2).all(), out
            g = c.gather(m * 10, root=root)
            assert g == ([j * 10 for j in range(k)] if m == root else None), g
            s = np.zeros(3)
            c.Scatter(np.arange(3.0 * k).reshape(k, 3) if m == root else None, s, root=root)
            assert (s == np.arange(3.0) + 3 * m).all(), s
            assert c.scatter([j + i for j in range(k)] if m == root else None,
                             root=root) == m + i
            b = np.zeros((k, 2))
            c.Gather(np.full(2, float(m)), b if m == root else None, root=root)
            if m == root:
                assert (b == np.arange(k)[:, None]).all(), b
            tot = np.zeros(2)
            c.Allreduce(np.full(2, 1.0), tot)
            assert (tot == k).all(), tot
            assert c.allgather(m) == list(range(k))
            c.Barrier()
    sub.Free()
    with open(os.path.join(sys.argv[2], f"ok{r}"), "w") as f:
        f.write("ok")
    sys.exit(0)

if mode == "stray":
    # ranks 0 and 2 (other nodes) each send the other a message nobody receives, then
    # every rank exits: MPI_Finalize used to corrupt Open MPI's heap (abort, segfault)
    # in about 6 runs of 10 when a record was still on its way
    if r in (0, 2):
        comm.Send(np.zeros(4), dest=2 - r, tag=5)
    print(f"rank {r} finished", flush=True)
    sys.exit(0)

raise SystemExit(f"unknown mode {mode}")
