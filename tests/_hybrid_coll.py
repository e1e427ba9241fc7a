"""Gathers, scatters, allgathers and all-to-alls of a hybrid world against numpy
(tests/_hybrid_prog.py runs them on 2 + 2 and 3 + 2 emulated nodes): every root,
IN_PLACE, ragged counts with gaps and reversed displacements, a derived send
datatype, small (eager) and large (rendezvous) blocks, and the object forms."""
import os

import numpy as np

from driller.errors import MmpiError


def _ragged(n, unit, k0=0):
    """Counts (some zero) and displacements in reverse rank order with gaps."""
    counts = [((k + k0) % 3) * unit + (k % 2) for k in range(n)]
    displs, pos = [0] * n, 0
    for k in reversed(range(n)):
        displs[k] = pos
        pos += counts[k] + 2
    return counts, displs, pos


def _head_of(comm, k):
    """The lowest rank of ``comm`` on rank k's node (DRILLER_NODE)."""
    nodes = comm.allgather(os.environ.get("DRILLER_NODE"))
    return min(j for j in range(comm.Get_size()) if nodes[j] == nodes[k])


def check(comm, MPI, label=""):
    r, n = comm.Get_rank(), comm.Get_size()
    val = lambda k, c: np.arange(c, dtype=np.float64) + 1000.0 * k + 1   # noqa: E731
    for unit in (3, 40_000):            # eager-sized and rendezvous-sized blocks
        for root in range(n):
            where = (label, unit, root)
            # Gather, Gather IN_PLACE
            x = val(r, unit)
            g = np.full((n, unit), -1.0) if r == root else None
            comm.Gather(x, g, root=root)
            if r == root:
                assert all((g[k] == val(k, unit)).all() for k in range(n)), where
            g = np.full((n, unit), -1.0)
            g[r] = x
            comm.Gather(MPI.IN_PLACE if r == root else x, g if r == root else None, root=root)
            if r == root:
                assert all((g[k] == val(k, unit)).all() for k in range(n)), where
            # Bcast: the root (a node's lowest rank or not) sends the other nodes
            b = val(root, unit) if r == root else np.full(unit, -1.0)
            comm.Bcast(b, root=root)
            assert (b == val(root, unit)).all(), where
            # Gatherv, ragged (zero counts, gaps, reversed order); a derived send type
            counts, displs, total = _ragged(n, unit)
            mine = val(r, counts[r])
            gv = np.full(total, -7.0) if r == root else None
            comm.Gatherv(mine, [gv, counts, displs, MPI.DOUBLE] if r == root else None,
                         root=root)
            if r == root:
                for k in range(n):
                    assert (gv[displs[k]:displs[k] + counts[k]] == val(k, counts[k])).all(), where
                holes = np.ones(total, bool)
                for k in range(n):
                    holes[displs[k]:displs[k] + counts[k]] = False
                assert (gv[holes] == -7.0).all(), where       # nothing written between blocks
            spread = np.zeros(2 * max(counts[r], 1))
            spread[::2][:counts[r]] = mine
            vec = MPI.DOUBLE.Create_vector(counts[r], 1, 2).Commit() if counts[r] else MPI.DOUBLE
            gv2 = np.full(total, -7.0) if r == root else None
            comm.Gatherv([spread, 1 if counts[r] else 0, vec],
                         [gv2, counts, displs, MPI.DOUBLE] if r == root else None, root=root)
            if counts[r]:
                vec.Free()
            if r == root:
                assert (gv2 == gv).all(), where
            # Scatter, Scatter IN_PLACE, Scatterv ragged
            s = np.array([val(k, unit) for k in range(n)]) if r == root else None
            got = np.full(unit, -1.0)
            comm.Scatter(s, got, root=root)
            assert (got == val(r, unit)).all(), where
            if r == root:
                s2 = s.copy()
                comm.Scatter(s2, MPI.IN_PLACE, root=root)
                assert (s2 == s).all(), where
            else:
                got = np.full(unit, -1.0)
                comm.Scatter(None, got, root=root)
                assert (got == val(r, unit)).all(), where
            sv = np.full(total, -7.0)
            for k in range(n):
                sv[displs[k]:displs[k] + counts[k]] = val(k, counts[k])
            got = np.full(counts[r], -1.0)
            comm.Scatterv([sv, counts, displs, MPI.DOUBLE] if r == root else None, got,
                          root=root)
            assert (got == val(r, counts[r])).all(), where
            # objects
            objs = comm.gather({"r": r, "a": val(r, unit)}, root=root)
            if r == root:
                assert [o["r"] for o in objs] == list(range(n)), where
                assert all((o["a"] == val(o["r"], unit)).all() for o in objs), where
            else:
                assert objs is None
            got = comm.scatter([(k, val(k, unit)) for k in range(n)] if r == root else None,
                               root=root)
            assert got[0] == r and (got[1] == val(r, unit)).all(), where
        where = (label, unit)
        # Allgather, IN_PLACE, Allgatherv ragged (gaps: packed path) and dense
        ag = np.full((n, unit), -1.0)
        comm.Allgather(val(r, unit), ag)
        assert all((ag[k] == val(k, unit)).all() for k in range(n)), where
        ag = np.full((n, unit), -1.0)
        ag[r] = val(r, unit)
        comm.Allgather(MPI.IN_PLACE, ag)
        assert all((ag[k] == val(k, unit)).all() for k in range(n)), where
        counts, displs, total = _ragged(n, unit, 1)
        agv = np.full(total, -7.0)
        comm.Allgatherv(val(r, counts[r]), [agv, counts, displs, MPI.DOUBLE])
        for k in range(n):
            assert (agv[displs[k]:displs[k] + counts[k]] == val(k, counts[k])).all(), where
        holes = np.ones(total, bool)
        for k in range(n):
            holes[displs[k]:displs[k] + counts[k]] = False
        assert (agv[holes] == -7.0).all(), where
        dense = np.full(sum(counts), -1.0)
        comm.Allgatherv(val(r, counts[r]), [dense, counts, MPI.DOUBLE])
        assert (dense == np.concatenate([val(k, counts[k]) for k in range(n)])).all(), where
        got = comm.allgather((r, val(r, 5)))
        assert [k for k, _ in got] == list(range(n)) and all(
            (a == val(k, 5)).all() for k, a in got), where
        # Alltoall (aggregated when small, direct when large), IN_PLACE, Alltoallv ragged
        blk = lambda src, dst, c: val(src, c) * 7 + dst                     # noqa: E731
        for c in (unit, 1):
            sa = np.array([blk(r, k, c) for k in range(n)])
            ra = np.full((n, c), -1.0)
            comm.Alltoall(sa, ra)
            assert all((ra[k] == blk(k, r, c)).all() for k in range(n)), (where, c)
            comm.Alltoall(MPI.IN_PLACE, sa)
            assert all((sa[k] == blk(k, r, c)).all() for k in range(n)), (where, c)
        scounts = [(r + k) % 3 * (unit // 3 + 1) for k in range(n)]
        rcounts = [(k + r) % 3 * (unit // 3 + 1) for k in range(n)]
        sbuf = np.concatenate([blk(r, k, scounts[k]) for k in range(n)])
        rbuf = np.full(sum(rcounts), -1.0)
        comm.Alltoallv([sbuf, scounts, MPI.DOUBLE], [rbuf, rcounts, MPI.DOUBLE])
        assert (rbuf == np.concatenate([blk(k, r, rcounts[k]) for k in range(n)])).all(), where
        got = comm.alltoall([(r, k) for k in range(n)])
        assert got == [(k, r) for k in range(n)], where
    # an argument error seen by some ranks only: they raise, nobody hangs
    bad = n - 1                                  # on the last node, not the root's
    x = np.ones(4 if r != bad else 3)
    g = np.empty((n, 4)) if r == 0 else None
    try:
        comm.Gather(x, g, root=0)
    except MmpiError as e:
        assert r == 0 and "expected" in str(e), (r, e)
    else:
        assert r != 0, "the root took a short block"
    # a block longer than the others' (its node's head cannot hold it), then a head's
    # own block shorter than the others': the root raises, nobody hangs, and the root
    # never takes the node's message for the blocks
    # (eager-sized and rendezvous-sized blocks)
    for k in (4, 40_000):
        for bad, c in ((n - 1, k + 1), (_head_of(comm, n - 1), k - 1)):
            x = np.full(k if r != bad else c, float(r))
            g = np.full((n, k), -1.0) if r == 0 else None
            try:
                comm.Gather(x, g, root=0)
            except MmpiError:
                assert r == 0, r
            else:
                assert r != 0, f"the root took a block of {c} items from rank {bad} for {k}"
        # Scatter to a head whose count is one short: it raises, and so may its node's
        # other ranks (the node's message does not fit it); a rank that completes has
        # its own block, and the other nodes complete
        hd = _head_of(comm, n - 1)
        nodes = comm.allgather(os.environ.get("DRILLER_NODE"))
        s = np.array([np.full(k, float(j)) for j in range(n)]) if r == 0 else None
        got = np.full(k - 1 if r == hd else k, -1.0)
        try:
            comm.Scatter(s, got, root=0)
        except MmpiError:
            assert nodes[r] == nodes[hd] and r != 0, r
        else:
            assert r != hd, f"rank {hd} took a block of {k} items for {k - 1}"
            assert (got == r).all(), (r, k)
    check_scatter_direct(comm, MPI, label)
    g = np.empty((n, 0)) if r == 0 else None     # zero-sized blocks
    comm.Gather(np.empty(0), g, root=0)
    s = np.ones(4 * n + 1) if r == 0 else None   # does not split into n blocks
    try:
        comm.Scatter(s, np.empty(4), root=0)
    except MmpiError:
        pass
    else:
        raise AssertionError(f"rank {r}: a refused Scatter returned")
    try:                                         # the root passes one item too few
        comm.scatter(list(range(n - 1)) if r == 0 else None, root=0)
    except MmpiError as e:
        assert ("expecting" if r == 0 else "rank 0 passed invalid") in str(e), (r, e)
    else:
        raise AssertionError(f"rank {r}: a refused scatter returned")
    comm.Barrier()


def check_scatter_direct(comm, MPI, label=""):
    r, n = comm.Get_rank(), comm.Get_size()
    # Scatter(v) of blocks the root sends straight to ranks of other nodes (64 KiB
    # and up) or through their head (smaller): a rank of another node (its head or
    # not) expects a block of another size, on the other side of that line or not
    # (a rank that is not its head would wait on the other sender), or refuses its
    # receive buffer: it raises, and every other rank completes with its block
    # (its node's included: a head no longer relays large blocks), nobody hangs
    big = (64 << 10) // 8
    nodes = comm.allgather(os.environ.get("DRILLER_NODE"))
    for root in range(n):
        for vector in (False, True):
            for bad in [k for k in range(n) if nodes[k] != nodes[root]]:
                for mine, theirs in ((big + 8, 8), (8, big + 8), (big, big - 1), (None, big)):
                    counts = [8 + 9 * k if vector else theirs for k in range(n)]
                    counts[bad] = theirs
                    sbuf = np.concatenate([np.full(c, float(k)) for k, c in enumerate(counts)])
                    if r != bad:
                        got = np.full(counts[r], -1.0)
                    else:
                        got = np.full(mine, -1.0) if mine is not None else "refused"
                    where = (label, root, vector, bad, mine, theirs)
                    try:
                        if vector:
                            comm.Scatterv([sbuf, counts, MPI.DOUBLE] if r == root else None,
                                          got, root=root)
                        else:
                            comm.Scatter(sbuf if r == root else None, got, root=root)
                    except MmpiError as e:
                        assert r == bad, (r, where, e)
                    else:
                        assert r != bad, f"rank {bad} took a block for {mine} items: {where}"
                        assert (got == r).all(), (r, where)


def check_reductions(comm, MPI, label=""):
    """Allreduce (lanes for large buffers, the leaders for small ones) against numpy:
    builtin ops on float64 and int32, IN_PLACE, counts that do not split evenly, a
    zero count, a user op that commutes and one that does not, and refused
    arguments on one rank (it raises; the others raise or complete, none waits)."""
    from driller.errors import MmpiError
    r, n = comm.Get_rank(), comm.Get_size()

    def data(k, c, dt=np.float64):
        return ((np.arange(c) * (k + 3)) % 1001 + k).astype(dt)

    for c in (0, 1, 1000, 300_001):
        where = (label, c)
        ref = [data(k, c) for k in range(n)]
        y = np.full(c, -1.0)
        comm.Allreduce(data(r, c), y, op=MPI.SUM)
        assert np.array_equal(y, np.sum(ref, axis=0)), where
        y = data(r, c)
        comm.Allreduce(MPI.IN_PLACE, y, op=MPI.MAX)
        assert np.array_equal(y, np.max(ref, axis=0)), where
        iref = [data(k, c, np.int32) for k in range(n)]
        yi = np.zeros(c, np.int32)
        comm.Allreduce(data(r, c, np.int32), yi, op=MPI.BOR)
        assert np.array_equal(yi, np.bitwise_or.reduce(iref, axis=0)), where
    c = 80_001                                   # int32: 320 KB, lanes
    iref = [data(k, c, np.int32) for k in range(n)]
    yi = np.zeros(c, np.int32)
    comm.Allreduce(data(r, c, np.int32), yi, op=MPI.PROD)
    assert np.array_equal(yi, np.prod(iref, axis=0, dtype=np.int32)), label

    def add(a, b, dt):                           # a user op that commutes
        b += a
    def first(a, b, dt):                         # associative, not commutative
        b[:] = a
    uadd = MPI.Op.Create(add, commute=True)
    ufirst = MPI.Op.Create(first, commute=False)
    try:
        for c in (5, 300_001):
            ref = [data(k, c) for k in range(n)]
            y = np.empty(c)
            comm.Allreduce(data(r, c), y, op=uadd)
            assert np.array_equal(y, np.sum(ref, axis=0)), (label, c)
            y = np.empty(c)
            comm.Allreduce(data(r, c), y, op=ufirst)
            assert np.array_equal(y, ref[0]), (label, c)    # rank order kept
            y = data(r, c)
            comm.Allreduce(MPI.IN_PLACE, y, op=ufirst)
            assert np.array_equal(y, ref[0]), (label, c)
    finally:
        uadd.Free()
        ufirst.Free()
    # refused arguments on the last rank only, large buffers (lanes): a count that
    # differs from the others', then a send buffer that does not match its receive
    # buffer.  It raises; every other rank raises or completes; none waits
    big = 300_000
    for case in ("count", "sendrecv"):
        x = np.ones(big + (8 if case == "count" and r == n - 1 else 0))
        y = np.empty(big + (8 if r == n - 1 else 0))
        try:
            comm.Allreduce(x, y, op=MPI.SUM)
        except MmpiError:
            pass
        else:
            assert r != n - 1, (label, case, "the refused Allreduce returned")
        comm.Barrier()
    # and an Allgather whose last rank sends a block of the wrong size
    unit = 100_000
    x = np.ones(unit + (3 if r == n - 1 else 0))
    try:
        comm.Allgather(x, np.empty((n, unit)))
    except MmpiError:
        pass
    else:
        assert r != n - 1, (label, "the refused Allgather returned")
    comm.Barrier()


def check_alltoallv(comm, MPI, label=""):
    """Alltoallv and alltoall (objects) across nodes: blocks of mixed sizes in one call
    (small ones through the leaders, large ones direct), zero counts, gaps and
    reversed displacements, IN_PLACE, and refused or mismatched arguments on one
    rank (it raises; the others raise or complete; none waits)."""
    from driller.errors import MmpiError
    r, n = comm.Get_rank(), comm.Get_size()
    sizes = (0, 1, 700, 2100, 40_000)          # elements: 0 B .. 320 KB

    def cnt(src, dst):
        return sizes[(3 * src + 5 * dst) % len(sizes)]

    def blk(src, dst):
        return np.arange(cnt(src, dst), dtype=np.float64) * (src + 1) + 100.0 * dst

    def layout(counts):
        """Reversed order with a gap of 3 elements after each block."""
        displs, pos = [0] * n, 0
        for k in reversed(range(n)):
            displs[k] = pos
            pos += counts[k] + 3
        return displs, pos

    sc = [cnt(r, k) for k in range(n)]
    rc = [cnt(k, r) for k in range(n)]
    sd, stot = layout(sc)
    rd, rtot = layout(rc)
    sbuf = np.full(stot, -5.0)
    for k in range(n):
        sbuf[sd[k]:sd[k] + sc[k]] = blk(r, k)
    rbuf = np.full(rtot, -7.0)
    comm.Alltoallv([sbuf, sc, sd, MPI.DOUBLE], [rbuf, rc, rd, MPI.DOUBLE])
    holes = np.ones(rtot, bool)
    for k in range(n):
        assert (rbuf[rd[k]:rd[k] + rc[k]] == blk(k, r)).all(), (label, k)
        holes[rd[k]:rd[k] + rc[k]] = False
    assert (rbuf[holes] == -7.0).all(), label          # nothing written between blocks
    # IN_PLACE: symmetric counts
    c2 = [sizes[(r + k) % len(sizes)] for k in range(n)]
    d2, tot2 = layout(c2)
    buf = np.full(tot2, -1.0)
    for k in range(n):
        buf[d2[k]:d2[k] + c2[k]] = np.arange(c2[k]) + 10.0 * r + 1000.0 * k
    comm.Alltoallv(MPI.IN_PLACE, [buf, c2, d2, MPI.DOUBLE])
    for k in range(n):
        assert (buf[d2[k]:d2[k] + c2[k]] == np.arange(c2[k]) + 10.0 * k + 1000.0 * r).all(), \
            (label, "IN_PLACE", k)
    # objects: small (through the leaders), large arrays (direct), bytes, None
    def item(src, dst):
        kind = (src + 2 * dst) % 4
        if kind == 0:
            return (src, dst)
        if kind == 1:
            return {"a": np.full(100_000, src * 10.0 + dst)}
        if kind == 2:
            return bytes([src, dst]) * 30_000
        return None
    got = comm.alltoall([item(r, k) for k in range(n)])
    for k in range(n):
        want, g = item(k, r), got[k]
        if isinstance(want, dict):
            assert (g["a"] == want["a"]).all(), (label, k)
        else:
            assert g == want, (label, k, g)
    # refused and mismatched arguments on the last rank
    bad = n - 1
    rc_bad = [c + (1 if r == bad and c else 0) for c in rc]  # expects 1 more of each
    rbuf = np.empty(sum(rc_bad))
    try:
        comm.Alltoallv([sbuf, sc, sd, MPI.DOUBLE], [rbuf, rc_bad, MPI.DOUBLE])
    except MmpiError:
        pass
    else:
        assert r != bad, (label, "the mismatched Alltoallv returned")
    comm.Barrier()
    try:                                       # counts that overrun the send buffer
        comm.Alltoallv([np.empty(1) if r == bad else sbuf, sc, sd, MPI.DOUBLE],
                       [np.empty(sum(rc)), rc, MPI.DOUBLE])
    except MmpiError as e:
        assert r != bad or "passed invalid" not in str(e), (label, e)
    else:
        assert r != bad, (label, "the refused Alltoallv returned")
    comm.Barrier()
    try:                                       # one item too few
        comm.alltoall([item(r, k) for k in range(n - (1 if r == bad else 0))])
    except MmpiError as e:
        assert ("expecting" if r == bad else f"rank {bad} passed invalid") in str(e), (r, e)
    else:
        raise AssertionError(f"rank {r}: a refused alltoall returned")
    comm.Barrier()


def check_alltoall_paths(comm, MPI, label=""):
    """Alltoall on each side of the hybrid thresholds (blocks up to the fused size:
    carried by the size exchange itself; a rank's buffer up to
    ALLTOALL_NATIVE_MAX: the MPI library's own Alltoall; up to ALLTOALL_AGG_MAX:
    through the leaders; above: direct) against numpy: odd sizes, a strided
    (non-contiguous) datatype on both sides, IN_PLACE, and a rank whose blocks are
    one element longer (it and the others raise; none waits)."""
    from driller.errors import MmpiError
    from driller.mmpi._coll import _hiergather as HG
    r, n = comm.Get_rank(), comm.Get_size()
    nat, agg = HG.ALLTOALL_NATIVE_MAX // (8 * n), HG.ALLTOALL_AGG_MAX // (8 * n)
    fused = min(HG.ALLTOALL_FUSED_BLOCK, HG.ALLTOALL_NATIVE_MAX // n) // 8   # doubles

    def blk(src, dst, c):
        return np.arange(c, dtype=np.float64) * (src + 2) + 1000.0 * dst + 0.5

    for c in (1, 7, fused, fused + 1, nat, nat + 1, agg, agg + 1):
        where = (label, c)
        sa = np.array([blk(r, k, c) for k in range(n)])
        ra = np.full((n, c), -1.0)
        comm.Alltoall(sa, ra)
        assert all((ra[k] == blk(k, r, c)).all() for k in range(n)), where
        comm.Alltoall(MPI.IN_PLACE, sa)
        assert all((sa[k] == blk(k, r, c)).all() for k in range(n)), where
        # every other double of 2c per block, sent and received
        vt = MPI.DOUBLE.Create_vector(c, 1, 2).Create_resized(0, 16 * c).Commit()
        try:
            ss = np.full((n, c, 2), -3.0)
            ss[:, :, 0] = [blk(r, k, c) for k in range(n)]
            rs = np.full((n, c, 2), -4.0)
            comm.Alltoall([ss, 1, vt], [rs, 1, vt])   # one vt per block
            assert all((rs[k, :, 0] == blk(k, r, c)).all() for k in range(n)), where
            assert (rs[:, :, 1] == -4.0).all(), where      # the gaps are left alone
        finally:
            vt.Free()
        # the last rank's blocks are one element longer than everyone else's
        cc = c + (1 if r == n - 1 else 0)
        try:
            comm.Alltoall(np.ones((n, cc)), np.empty((n, cc)))
        except MmpiError:
            pass
        else:
            raise AssertionError(f"rank {r}: a mismatched Alltoall returned {where}")
        comm.Barrier()
        # the last rank's send buffer does not match its receive buffer (it refuses)
        try:
            comm.Alltoall(np.ones((n, c + (1 if r == n - 1 else 0))), np.empty((n, c)))
        except MmpiError as e:
            assert r != n - 1 or "every block must have the same size" in str(e), (where, e)
        else:
            raise AssertionError(f"rank {r}: a refused Alltoall returned {where}")
        comm.Barrier()


def check_lanes_freed(comm, MPI, label=""):
    """Communicators that ran the collectives which make MPI communicators (lanes,
    the whole communicator) free those when freed, Dup after Dup: none is left."""
    from driller.mmpi._coll import _hierlane
    r, n = comm.Get_rank(), comm.Get_size()
    big = _hierlane.LANE_MIN // 8 + 5
    made = []
    for i in range(3):
        c = comm.Dup()
        y = np.empty(big)
        c.Allreduce(np.full(big, float(r + i)), y, op=MPI.SUM)
        assert (y == sum(range(n)) + n * i).all(), (label, i)
        a = np.empty(n)
        c.Alltoall(np.arange(n, dtype=np.float64) + 10 * r, a)
        assert (a == 10.0 * np.arange(n) + r).all(), (label, i)
        h = c._cx.hier
        null = c._t.MPI.COMM_NULL                            # the engine's (real mpi4py)
        natives = [ln.native for ln in h.lanes.values()]
        in_lane = h.node.rank < min(len(ws) for ws in h.order)
        assert len(natives) == 1 + in_lane, (label, len(natives))   # its lane, the whole
        assert all(x != null for x in natives), (label, i)
        made += natives
        (c.Disconnect if i % 2 else c.Free)()
        assert h.lanes is None and all(x == null for x in natives), (label, i)
    assert id(h) not in _hierlane._LIVE



def check_alltoall_fast(comm, MPI, label=""):
    """Alltoall's kept-array fast path (plain contiguous numpy arrays whose blocks the
    size exchange carries) against numpy: every plain numeric type on each side of
    the fused size, one rank through the buffer parser and the others straight from
    their arrays in the same call, IN_PLACE, a shared array (driller.zeros),
    views (a read-only slice sent, a 3-d view received into), one dtype after another on buffers of one size, a
    read-only receive buffer on one rank, then shorter blocks on one rank (every
    rank raises, none waits); then Alltoallv and alltoall (objects) between fast-path
    calls, which must each see only their own messages."""
    import driller
    from driller.errors import MmpiError
    from driller.mmpi._coll import _hiergather as HG
    r, n = comm.Get_rank(), comm.Get_size()
    cap = min(HG.ALLTOALL_FUSED_BLOCK, HG.ALLTOALL_NATIVE_MAX // n) // 8 * 8   # bytes

    def blk(src, dst, c, dt, salt=0):
        v = (np.arange(c) * (src + 3) + 7 * dst + src + salt) % 97
        return (v % 2).astype(dt) if dt is np.bool_ else v.astype(dt)

    def arrays(c, dt, salt=0):
        sa = np.array([blk(r, k, c, dt, salt) for k in range(n)], dt).reshape(n, c)
        want = np.array([blk(k, r, c, dt, salt) for k in range(n)], dt).reshape(n, c)
        return sa, want

    for dt in (np.int8, np.uint16, np.int32, np.float32, np.float64, np.complex64,
               np.complex128, np.bool_, np.float16, np.uint64):
        isz = np.dtype(dt).itemsize
        for c in (0, 1, 5, cap // isz, cap // isz + 1):
            where = (label, np.dtype(dt).name, c)
            sa, want = arrays(c, dt)
            ra = np.zeros((n, c), dt)
            comm.Alltoall(sa, ra)
            assert np.array_equal(ra, want), where
            # rank 0 passes a spec list (the general path), the others bare arrays
            ra = np.zeros((n, c), dt)
            comm.Alltoall([sa, c, MPI._typedict[np.dtype(dt).char]] if r == 0 else sa,
                          ra)
            assert np.array_equal(ra, want), where
            # the last rank receives into a shared array (not a bare ndarray)
            ra = driller.zeros((n, c), dt) if r == n - 1 else np.zeros((n, c), dt)
            comm.Alltoall(sa, ra)
            assert np.array_equal(np.asarray(ra), want), where
            ip = sa.copy()
            comm.Alltoall(MPI.IN_PLACE, ip)
            assert np.array_equal(ip, want), where
    # one size of buffer, the dtype changing from call to call (the kept columns)
    for salt, dt in enumerate((np.float64, np.int64, np.float64, np.int32, np.int64)):
        c = 8 // np.dtype(dt).itemsize * 3
        sa, want = arrays(c, dt, salt)
        ra = np.full((n, c), 99, dt)
        comm.Alltoall(sa, ra)
        assert np.array_equal(ra, want), (label, "dtypes", salt)
    # views: a read-only flat slice of a longer array sent, a 3-d view received into
    sa, want = arrays(6, np.float64)
    longer = np.zeros(n * 6 + 5)
    longer[5:] = sa.ravel()
    send = longer[5:]
    send.flags.writeable = False
    big = np.zeros((2, n, 3, 2))
    comm.Alltoall(send, big[1])
    assert np.array_equal(big[1].reshape(n, 6), want) and not big[0].any(), (label, "views")
    # a refused receive buffer on the last rank: read-only, then one block short
    for bad in ("read-only", "short"):
        ro = np.zeros((n, 3)) if r != n - 1 or bad == "read-only" else np.zeros((n, 2))
        if r == n - 1 and bad == "read-only":
            ro.flags.writeable = False
        try:
            comm.Alltoall(np.ones(ro.shape), ro)
        except MmpiError as e:
            assert r == n - 1 or f"rank {n - 1}" in str(e), (label, bad, e)
        else:
            raise AssertionError(f"rank {r}: an Alltoall refused on rank {n - 1} ({bad}) "
                                 f"returned")
        comm.Barrier()
    # Alltoallv and alltoall between fast-path Alltoalls
    for i in range(3):
        sa, want = arrays(4, np.float64, i)
        ra = np.zeros((n, 4))
        comm.Alltoall(sa, ra)
        assert np.array_equal(ra, want), (label, "mixed", i)
        sc = [(r + k + i) % 3 for k in range(n)]
        rc = [(k + r + i) % 3 for k in range(n)]
        sd = [sum(sc[:k]) for k in range(n)]
        rd = [sum(rc[:k]) for k in range(n)]
        sv = np.concatenate([np.full(sc[k], 100.0 * r + k + i) for k in range(n)])
        rv = np.full(sum(rc), -1.0)
        comm.Alltoallv([sv, sc, sd, MPI.DOUBLE], [rv, rc, rd, MPI.DOUBLE])
        for k in range(n):
            assert (rv[rd[k]:rd[k] + rc[k]] == 100.0 * k + r + i).all(), (label, "v", i, k)
        got = comm.alltoall([(r, k, i, np.full(3, r + k)) for k in range(n)])
        for k, (a, b, j, arr) in enumerate(got):
            assert (a, b, j) == (k, r, i) and (arr == k + r).all(), (label, "obj", i, k)
        ra = np.zeros((n, 4))
        comm.Alltoall(MPI.IN_PLACE, sa) if i % 2 else comm.Alltoall(sa, ra)
        assert np.array_equal(sa if i % 2 else ra, want), (label, "mixed2", i)
    comm.Barrier()
