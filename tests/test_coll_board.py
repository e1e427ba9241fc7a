"""The collective board: user errors on one rank that used to leave the others waiting.

Each case is a collective where some ranks pass what the others cannot know
about (a refused IN_PLACE receive buffer of another size class, an invalid root on
one rank, different valid roots, two refusing ranks at once).  Every rank must end
the call (alarm: a hang kills the rank and the test fails), either completing with
correct data or raising an MmpiError that names the culprit with the right error
class; the next collectives give correct results everywhere (NumPy-checked) and no
message of the failed collective is left unreceived.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError
from test_coll_refused import ALARM, after, mine, total
from test_coll_refused_size import FEW, LARGE, MID, wrong_class

pytestmark = pytest.mark.timeout(300)


def stale(comm, c=None):
    """The messages left unreceived on this rank once every rank has sent all it
    will (first barrier) and one more collective started on the communicator(s) of
    the case (its start drops what a collective that failed left behind)."""
    comm.Barrier()
    t = comm._cx.t
    t.progress()
    for k in ([comm] if c is None or c is comm else [comm, c]):
        out = np.zeros(1)
        k.Allreduce(np.ones(1), out, op=MPI.SUM)
    left = len(t.engine.unexpected) + len(t.engine.posted)
    comm.Barrier()
    return left


def bad_root(comm, case, bad, root, other):
    """Collective ``case`` where rank ``bad`` passes root ``other``, the rest ``root``."""
    n, me = comm.Get_size(), comm.Get_rank()
    r = other if me == bad else root
    if case == "Bcast":
        buf = mine(me, FEW) if me == r else np.zeros(FEW)
        comm.Bcast(buf, root=r)
        return buf, mine(root, FEW)
    if case == "Ibcast":
        buf = mine(me, FEW) if me == r else np.zeros(FEW)
        comm.Ibcast(buf, root=r).Wait()
        return buf, mine(root, FEW)
    if case == "Reduce":
        out = np.zeros(FEW) if me == r else None
        comm.Reduce(mine(me, FEW), out, op=MPI.SUM, root=r)
        return out, (total(n, FEW) if me == root else None)
    if case == "Gather":
        out = np.zeros(n * FEW) if me == r else None
        comm.Gather(mine(me, FEW), out, root=r)
        return out, (np.concatenate([mine(k, FEW) for k in range(n)]) if me == root else None)
    if case == "Scatter":
        src = np.concatenate([mine(k, FEW) for k in range(n)]) if me == r else None
        out = np.zeros(FEW)
        comm.Scatter(src, out, root=r)
        return out, mine(me, FEW)
    if case == "bcast":
        return comm.bcast(("data", me) if me == r else None, root=r), ("data", root)
    if case == "gather":
        return comm.gather(me, root=r), (list(range(n)) if me == root else None)
    raise AssertionError(case)


def outcome(fn):
    try:
        return "ok", fn(), None
    except MmpiError as e:
        return "err", str(e), e.Get_error_class()


def run_roots(comm, cases):
    res = []
    for case, bad, root, other, sub in cases:
        signal.alarm(ALARM)
        c = comm.Split(0, comm.Get_rank()) if sub else comm
        kind, val, cls = outcome(lambda: bad_root(c, case, bad, root, other))
        good = None
        if kind == "ok":
            got, want = val
            good = (got is None and want is None) or (
                got is not None and want is not None and
                (bool(np.array_equal(got, want)) if isinstance(want, np.ndarray) else got == want))
            val = ""
        res.append((kind, val, cls, good, after(c) and not stale(comm, c)))
        if sub:
            c.Free()
    signal.alarm(0)
    return res


def check_roots(n, cases, results):
    for i, (case, bad, root, other, sub) in enumerate(cases):
        label = f"{case} n={n} root={root} bad={bad} passes {other!r} sub={sub}"
        errs = 0
        for me in range(n):
            kind, msg, cls, good, later = results[me][i]
            assert later, f"{label}: rank {me}: wrong results or a message left after it"
            if kind == "ok":
                assert good, f"{label}: rank {me} completed with wrong data"
                continue
            errs += 1
            assert cls == MPI.ERR_ROOT and "root" in msg, (label, me, cls, msg)
        # some rank waited for a message that the other root kept from coming
        assert errs >= 1, label


@pytest.mark.parametrize("n", [3, 5])
def test_invalid_root_on_one_rank(n):
    # the rank raises ERR_ROOT at once; the ranks that wait for it raise ERR_ROOT
    # naming it (before: they waited forever)
    cases = [(c, bad, root, other, sub)
             for c in ("Bcast", "Reduce", "Gather", "Scatter", "bcast", "gather", "Ibcast")
             for root, bad in ((0, n - 1), (n - 1, 0), (0, 0))
             for other in (n, -1, "x")
             for sub in (False,)]
    cases += [("Reduce", 1, 0, n, True), ("Bcast", n - 1, 0, "x", True)]
    results = mmpi.spawn(run_roots, n, args=(cases,))
    for i, (case, bad, root, other, sub) in enumerate(cases):
        label = f"{case} n={n} root={root} bad={bad} passes {other!r}"
        for me in range(n):
            kind, msg, cls, good, later = results[me][i]
            assert later, f"{label}: rank {me}: wrong results or a message left after it"
            if me == bad:
                assert kind == "err" and cls == MPI.ERR_ROOT and "invalid root" in msg, \
                    (label, me, kind, msg)
            elif kind == "ok":
                assert good, f"{label}: rank {me} completed with wrong data"
            else:
                assert cls == MPI.ERR_ROOT and f"rank {bad} passed an invalid root" in msg, \
                    (label, me, msg)
        # the ones that needed the rank's part raised (the root of a Reduce/Gather)
        if case in ("Reduce", "Gather", "gather") and bad != root:
            assert results[root][i][0] == "err", label


@pytest.mark.parametrize("n", [3, 4])
def test_different_roots(n):
    # one rank passes another valid root: the ranks waiting for a message that will
    # not come raise ERR_ROOT (naming the rank in the way) instead of waiting
    cases = [("Bcast", n - 1, 0, 1, False), ("Ibcast", n - 1, 0, 1, False),
             ("Bcast", 1, 0, n - 1, True), ("bcast", n - 1, 0, 1, False),
             ("Reduce", n - 1, 0, n - 1, False), ("Reduce", 1, 0, 1, True),
             ("Reduce", 1, n - 1, 0, False),
             ("Gather", n - 1, 0, n - 1, False), ("gather", 1, 0, 1, False),
             ("Scatter", n - 1, 0, 1, False)]
    results = mmpi.spawn(run_roots, n, args=(cases,))
    check_roots(n, cases, results)


def inplace_call(comm, bad, count):
    me = comm.Get_rank()
    out = mine(me, count)
    comm.Allreduce(MPI.IN_PLACE, wrong_class(count) if me == bad else out, op=MPI.SUM)
    return out


def run_inplace(comm, cases):
    res = []
    for bad, count, sub in cases:
        signal.alarm(ALARM)
        c = comm.Split(0, comm.Get_rank()) if sub else comm
        try:
            out = inplace_call(c, bad, count)
            kind, msg, good = "ok", "", bool(np.array_equal(out, total(c.Get_size(), count)))
        except MmpiError as e:
            kind, msg, good = "err", str(e), None
        res.append((kind, msg, good, after(c) and not stale(comm, c)))
        if sub:
            c.Free()
    signal.alarm(0)
    return res


@pytest.mark.parametrize("n", [3, 4])
def test_inplace_allreduce_refused_other_size_class(n):
    # the refusing rank's receive buffer names memory of the other size class: it
    # guesses another algorithm than its peers' (slots, recursive doubling, direct)
    cases = [(bad, count, sub) for count in (FEW, MID, LARGE) for bad in (0, n - 1)
             for sub in (False, True)]
    results = mmpi.spawn(run_inplace, n, args=(cases,))
    for i, (bad, count, sub) in enumerate(cases):
        label = f"Allreduce IN_PLACE n={n} count={count} bad={bad} sub={sub}"
        for me in range(n):
            kind, msg, good, later = results[me][i]
            assert later, f"{label}: rank {me}: wrong results or a message left after it"
            assert kind == "err", (label, me)
            if me == bad:
                assert "overruns" in msg, (label, me, msg)
            else:
                assert f"rank {bad} refused its arguments" in msg, (label, me, msg)


def two_refusals(comm, case, bads, root, count):
    me = comm.Get_rank()
    if case == "Bcast":
        buf = wrong_class(count) if me in bads else (
            mine(root, count) if me == root else np.zeros(count))
        comm.Bcast(buf, root=root)
        return buf
    if case == "Reduce":
        sb = wrong_class(count) if me in bads else mine(me, count)
        rb = wrong_class(count) if me in bads else (np.zeros(count) if me == root else None)
        comm.Reduce(sb, rb, op=MPI.SUM, root=root)
        return rb
    raise AssertionError(case)


def run_two(comm, cases):
    res = []
    for case, bads, root, count in cases:
        signal.alarm(ALARM)
        try:
            two_refusals(comm, case, bads, root, count)
            kind, msg = "ok", ""
        except MmpiError as e:
            kind, msg = "err", str(e)
        res.append((kind, msg, after(comm) and not stale(comm)))
    signal.alarm(0)
    return res


@pytest.mark.parametrize("n", [4, 5, 9])
def test_two_refusals(n):
    # a refusing Bcast root and another refusing rank; a refusing Reduce root and
    # all its children of the reduction tree refusing too
    kids = tuple(sorted({(0 + m) % n for m in (1, 2, 4, 8) if m < n}))
    cases = [("Bcast", (root, other), root, count) for root in (0, 1)
             for other in sorted({(root + 1) % n, (root + 3) % n, n - 1} - {root})
             for count in (FEW, LARGE)]
    cases += [("Reduce", (0,) + kids, 0, count) for count in (FEW, LARGE)]
    results = mmpi.spawn(run_two, n, args=(cases,))
    for i, (case, bads, root, count) in enumerate(cases):
        label = f"{case} n={n} refusing={bads} root={root} count={count}"
        for me in range(n):
            kind, msg, later = results[me][i]
            assert later, f"{label}: rank {me}: wrong results or a message left after it"
            if me in bads:
                assert kind == "err" and "overruns" in msg, (label, me, kind, msg)
            else:
                assert kind == "ok" or "refused its arguments" in msg, (label, me, msg)
            if case == "Bcast" and me not in bads:
                assert kind == "err", (label, me)
