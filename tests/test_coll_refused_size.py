"""A refused argument whose size is not the others' size class, on one node, real ranks.

A rank that refuses every buffer it was given cannot know the size the others pass,
and where the algorithm depends on the size (a Bcast of more than 8 ranks: binomial
or flat; the tree root of a Reduce: small or large) it must still take the
others' path.  (An Allreduce with IN_PLACE and a refused receive buffer is not covered:
docs/collectives.md says why.)  Here the refused spec names 100 bytes with a count of megabytes (or
megabytes with the others' buffers small): every rank either raises an error
naming the refusing rank or completes with correct data, none waits (alarm), and
the next collectives are correct everywhere (tests/test_coll_refused.py's checks).
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from driller import MPI, mmpi
from test_coll_refused import ALARM, after, call, mine, outcome, total

pytestmark = pytest.mark.timeout(240)

FEW = 12                   # doubles: small everywhere (binomial Bcast, slots, doubling)
MID = 2000                 # doubles: recursive doubling (past the slots)
LARGE = 1 << 16            # doubles: 512 KiB, a direct reduction
HUGE = 160_000             # doubles: 1.25 MiB, past the eager limit: a flat Bcast


def wrong_class(count):
    """A refused spec naming memory of the other size class than ``count`` doubles:
    100 bytes for a large count, 2.4 MB for a small one, with an overrunning count."""
    mem = 12 if count * 8 >= (1 << 19) else 300_000
    return [np.zeros(mem), 10 ** 8, MPI.DOUBLE]


def case_call(comm, case, bad, count, root):
    me = comm.Get_rank()
    refuse = me == bad
    if case in ("Bcast", "Ibcast"):
        return call(comm, case, [bad], count, root, wrong_class)
    if case in ("Reduce", "Ireduce", "Reduce_userop"):
        if refuse:     # both buffers refused (the receive buffer counts at the root)
            sb, rb = wrong_class(count), wrong_class(count)
        else:
            sb, rb = mine(me, count), (np.zeros(count) if me == root else None)
        if case == "Reduce":
            comm.Reduce(sb, rb, op=MPI.SUM, root=root)
        elif case == "Ireduce":
            comm.Ireduce(sb, rb, op=MPI.SUM, root=root).Wait()
        else:              # non-commutative: the tree's root is rank 0
            op = MPI.Op.Create(lambda a, b, dt: np.add(np.frombuffer(a), np.frombuffer(b),
                                                       out=np.frombuffer(b)), commute=False)
            try:
                comm.Reduce(sb, rb, op=op, root=root)
            finally:
                op.Free()
        return rb
    if case == "Allreduce_userop":      # non-commutative: a Reduce, then a Bcast from 0
        return call(comm, case, [bad], count, root)
    raise AssertionError(case)


def stale(comm):
    """The messages left unreceived on this rank (none may be: a message sent for a
    path the receiver did not take would wait there): every rank has sent all it
    will once the first barrier is passed; none sends again before the second."""
    comm.Barrier()
    t = comm._cx.t
    t.progress()
    left = len(t.engine.unexpected)
    comm.Barrier()
    return left


def run(comm, cases):
    res = []
    for case, bad, count, root, sub in cases:
        signal.alarm(ALARM)
        c = comm.Split(0, -comm.Get_rank()) if sub else comm
        kind, val = outcome(lambda: case_call(c, case, bad, count, root))
        good = None
        if kind == "ok":
            n, me = c.Get_size(), c.Get_rank()
            if case.endswith("cast"):
                good = bool(np.array_equal(val, mine(root, count)))
            elif "educe" in case and not case.startswith(("Allreduce", "Iallreduce")):
                good = val is None if me != root else bool(np.array_equal(val, total(n, count)))
            else:
                good = bool(np.array_equal(val, total(n, count)))
            val = ""
        res.append((kind, val, good, after(c) and not stale(comm)))
        if sub:
            c.Free()
    signal.alarm(0)
    return res


def matrix(n, cases):
    results = mmpi.spawn(run, n, args=(cases,))
    for i, (case, bad, count, root, sub) in enumerate(cases):
        label = f"{case} n={n} count={count} root={root} bad={bad} sub={sub}"
        for me in range(n):
            kind, msg, good, later = results[me][i]
            cme = n - 1 - me if sub else me
            assert later, f"{label}: rank {cme} wrong results after it"
            if cme == bad:
                assert kind == "err" and "overruns" in msg, (label, cme, kind, msg)
            elif kind == "ok":
                assert good, f"{label}: rank {cme} completed with wrong data"
                # only where nothing was to come from the refusing rank
                assert (case.endswith("cast") and bad != root) or \
                    ("educe" in case and "allreduce" not in case.lower() and cme != root), (label, cme)
            else:
                assert f"rank {bad} refused its arguments" in msg, (label, cme, msg)


@pytest.mark.parametrize("n", [9, 12])
def test_bcast_many_ranks_refused_other_size_class(n):
    # beyond 8 ranks: binomial up to the eager limit, flat past it
    cases = [(c, bad, count, root, False)
             for c in ("Bcast", "Ibcast") for count in (FEW, HUGE)
             for root in (0, 5) for bad in sorted({root, (root + 1) % n, (root + 3) % n,
                                                   (root + 8) % n})]
    # the broadcast that ends a non-commutative Allreduce carries a refusal from rank 0
    cases += [("Allreduce_userop", bad, FEW, 0, False) for bad in (0, 1, 3, n - 1)]
    matrix(n, cases)


@pytest.mark.parametrize("n", [3, 5])
def test_reduce_root_refuses_both_buffers_other_size_class(n):
    cases = [(c, root, count, root, sub) for c in ("Reduce", "Ireduce")
             for count in (FEW, LARGE) for root in (0, n - 1) for sub in (False, True)]
    # non-commutative: rank 0 is the tree's root, whichever the root
    cases += [("Reduce_userop", 0, count, root, False) for count in (FEW, LARGE)
              for root in (0, n - 1)]
    matrix(n, cases)


def bad_op_call(comm, case, bad, count, root, badop):
    """Collective ``case`` where rank ``bad`` passes the invalid op ``badop``."""
    me = comm.Get_rank()
    op = badop if me == bad else MPI.SUM
    a = mine(me, count)
    if case == "Reduce":
        out = np.zeros(count) if me == root else None
        comm.Reduce(a, out, op=op, root=root)
        return out
    if case == "Ireduce":
        out = np.zeros(count) if me == root else None
        comm.Ireduce(a, out, op=op, root=root).Wait()
        return out
    if case in ("Allreduce", "Iallreduce", "Scan", "Exscan"):
        out = np.zeros(count)
        if case[0] == "I":
            comm.Iallreduce(a, out, op=op).Wait()
        else:
            getattr(comm, case)(a, out, op=op)
        return out
    if case == "Allreduce_inplace":
        comm.Allreduce(MPI.IN_PLACE, a, op=op)
        return a
    if case == "Reduce_scatter_block":
        out = np.zeros(count)
        comm.Reduce_scatter_block(mine(me, count * comm.Get_size()), out, op=op)
        return out
    if case == "reduce":
        return comm.reduce(me + 1, op=op, root=root)
    if case in ("allreduce", "scan", "exscan"):
        return getattr(comm, case)(me + 1, op=op)
    raise AssertionError(case)


def bad_op_want(comm, case, count, root):
    n, me = comm.Get_size(), comm.Get_rank()
    if case in ("Reduce", "Ireduce"):
        return total(n, count) if me == root else None
    if case == "Scan":
        return total(me + 1, count)
    if case == "Exscan":
        return total(me, count) if me else None
    if case == "Reduce_scatter_block":
        return total(n, count * n)[me * count:(me + 1) * count]
    if case == "reduce":
        return n * (n + 1) // 2 if me == root else None
    if case == "allreduce":
        return n * (n + 1) // 2
    if case == "scan":
        return (me + 1) * (me + 2) // 2
    if case == "exscan":
        return me * (me + 1) // 2 if me else None
    return total(n, count)


def run_bad_op(comm, cases):
    res = []
    for case, bad, count, root, badop in cases:
        signal.alarm(ALARM)
        badop = {"None": None, "OP_NULL": MPI.OP_NULL}[badop]
        kind, val = outcome(lambda: bad_op_call(comm, case, bad, count, root, badop))
        good = None
        if kind == "ok":
            w = bad_op_want(comm, case, count, root)
            if w is None:     # (Exscan's buffer at rank 0 is undefined, as in MPI)
                good = case == "Exscan" or val is None
            else:
                good = bool(np.array_equal(val, w))
            val = ""
        res.append((kind, val, good, after(comm) and not stale(comm)))
    signal.alarm(0)
    return res


@pytest.mark.parametrize("n", [3, 4])
def test_invalid_op_on_one_rank(n):
    # the rank with the invalid op raises it; it takes part with SUM's algorithm (what
    # the others pass here), carrying its refusal: none waits
    cases = [(c, bad, count, root, badop)
             for c, counts, roots in [
                 ("Reduce", (FEW, LARGE), (0, n - 1)), ("Ireduce", (FEW,), (0, n - 1)),
                 ("Allreduce", (FEW, MID, LARGE), (0,)), ("Allreduce_inplace", (FEW,), (0,)),
                 ("Iallreduce", (FEW, LARGE), (0,)), ("Scan", (FEW,), (0,)),
                 ("Exscan", (FEW,), (0,)), ("Reduce_scatter_block", (FEW,), (0,)),
                 ("reduce", (1,), (0, n - 1)), ("allreduce", (1,), (0,)),
                 ("scan", (1,), (0,)), ("exscan", (1,), (0,))]
             for count in counts for root in roots for bad in sorted({0, 1, n - 1})
             for badop in ("None", "OP_NULL")]
    results = mmpi.spawn(run_bad_op, n, args=(cases,))
    for i, (case, bad, count, root, badop) in enumerate(cases):
        label = f"{case} n={n} count={count} root={root} bad={bad} op={badop}"
        for me in range(n):
            kind, msg, good, later = results[me][i]
            assert later, f"{label}: rank {me} wrong results after it"
            if me == bad:
                assert kind == "err" and "invalid op" in msg, (label, me, kind, msg)
            elif kind == "ok":
                assert good, f"{label}: rank {me} completed with wrong data"
                assert (case.lower() in ("reduce", "ireduce") and me != root) or \
                    (case.lower().endswith("scan") and me < bad), (label, me)
            else:
                # (the large direct reductions' size exchange names the rank, not why)
                assert f"rank {bad} refused its arguments" in msg and (
                    "invalid op" in msg or count == LARGE), (label, me, msg)
