"""Functions run in other processes by test_lifetimes.py (importable under spawn)."""

import gc
import os

import numpy as np


def make_filled(value, n):
    """A fresh shared array of n float64 filled with value, dropped by us once returned."""
    import driller
    a = driller.zeros(n)
    a[:] = value
    return a


class Fill:
    """make_filled(value, n) as a one-argument callable (for Pool.imap)."""

    def __init__(self, n):
        self.n = n

    def __call__(self, value):
        return make_filled(value, self.n)


def put_and_exit(q, value, n):
    q.put(make_filled(value, n))  # the feeder thread pickles it; we exit right after


def send_and_exit(conn, value, n):
    a = make_filled(value, n)
    conn.send(a)
    del a
    gc.collect()
    conn.close()


def spawn_rank_returns(comm, n):
    return make_filled(comm.rank + 1, n)


def spawn_send_drop(comm, n):
    """Rank 0 sends fresh arrays and drops them at once; rank 1 loads them late."""
    import time

    import driller
    if comm.rank == 0:
        for v in range(3):
            comm.send(make_filled(v + 10, n), dest=1, tag=v)
        gc.collect()
        driller._publish.flush()  # our lease drops have reached the proxy
        comm.barrier()
        return None
    comm.barrier()
    time.sleep(0.05)
    out = []
    for v in range(3):
        got = comm.recv(source=0, tag=v)
        out.append((type(got).__name__, got.shape, float(np.min(got)), float(np.max(got))))
    return out


def load_all(pickles):
    """Load each pickle (of an array, or of a Handle then attached): its min and max,
    or ("released", message)."""
    import pickle

    import driller
    out = []
    for p in pickles:
        try:
            a = pickle.loads(p)
            if isinstance(a, driller.Handle):
                a = driller.attach(a)
        except driller.SegmentReleasedError as e:
            out.append(("released", str(e)))
            continue
        out.append(("ok", float(a.min()), float(a.max())))
        del a
    return out


def load_twice(p):
    """Load a pickle, let go of it, then load it again (the lease should have ended)."""
    import pickle

    import driller
    a = pickle.loads(p)
    first = (float(a.min()), float(a.max()))
    del a
    gc.collect()
    try:
        pickle.loads(p)
    except driller.SegmentReleasedError as e:
        return first, ("released", str(e))
    return first, ("loaded", "")


def total_and_fill(arr, value):
    """Sum a (shared) array we were given, then overwrite it in place."""
    s = float(np.asarray(arr).sum())
    arr[...] = value
    return s


def send_twice_then_exit(conn, go, n):
    """Send the same shared array twice (two pickles), the second after the first was
    loaded and let go of (``go``); then drop it and exit before the second is loaded."""
    import driller
    a = driller.zeros(n)
    a[:] = 1
    conn.send(a)
    go.wait(60)
    a[:] = 2
    conn.send(a)
    del a
    gc.collect()
    driller._publish.flush()
    conn.close()


def send_two_then_drop(conn, go, n):
    """Send the same shared array twice at once, then (``go``) drop it and wait."""
    import driller
    a = driller.zeros(n)
    a[:] = 3
    conn.send(a)
    conn.send(a)
    go.wait(60)
    del a
    gc.collect()
    driller._publish.flush()
    conn.send("dropped")
    conn.recv()   # (alive, so that its proxy stays up, until the test is done)


def spawn_collectives_then_free(comm, n):
    """Object collectives of fresh shared arrays, a rank's own contribution loaded
    by itself, everything freed: (orphaned leases of this rank's arrays at its
    proxy before, after: leases nobody holds, waiting for a handle to be loaded;
    the proxy may be the test process's, with other tests' leases).  A handle
    loaded by the process that made it used never to count as loaded: the proxy
    kept the freed memory for DRILLER_LEASE_SECONDS.  (Leases that loaders' map
    caches still hold are not counted: they end as those mappings go.)"""
    import time

    import driller
    from driller.proxy import proxy_info
    size, r = comm.size, comm.rank

    def fresh(v):
        a = driller.zeros(n)
        a[:] = v
        return a

    def settle():
        gc.collect()
        driller._publish.flush()
        comm.barrier()

    keep = fresh(0)
    driller.handle(keep)            # our proxy, and an arena, before the baseline
    settle()
    def orphaned():
        return proxy_info()["leases"]["orphaned_by_owner"].get(os.getpid(), 0)

    before = orphaned()
    for i in range(3):
        got = comm.bcast(fresh(10 + i) if r == 0 else None, root=0)
        assert (got == 10 + i).all()
        got = comm.scatter([fresh(20 + k) for k in range(size)] if r == 0 else None, root=0)
        assert (got == 20 + r).all()
        got = comm.gather(fresh(30 + r), root=0)
        assert r or [float(g[0]) for g in got] == [30.0 + k for k in range(size)]
        got = comm.allgather(fresh(40 + r))
        assert [float(g[0]) for g in got] == [40.0 + k for k in range(size)]
        got = comm.alltoall([fresh(50 + r) for _ in range(size)])
        assert [float(g[0]) for g in got] == [50.0 + k for k in range(size)]
        got = comm.sendrecv(fresh(60 + r), dest=r, source=r)
        assert (got == 60 + r).all()
        del got
    settle()
    deadline = time.monotonic() + 10
    while (after := orphaned()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        driller._publish.flush()
    return before, after


def forward_view(qin, qout, done):
    """A middle stage: pickle a view of the array received, let go of it, and
    (``done``) exit before the next stage loads it."""
    a = qin.get()
    qout.put(a[::2])
    qout.close()
    qout.join_thread()   # (the view is pickled and sent)
    del a
    gc.collect()
    import driller
    driller._publish.flush()   # (our claim let go of)
    done.set()


def forward_views(qin, qout, asked_out, k, exit_how):
    """A middle stage: pickle k views of the array received (each its own
    pickle), counting the proxy's "number" requests, then leave: let go of it and
    exit (``exit_how`` "exit"), exit holding it ("hold": its count said by the
    exit hook), or be killed holding it ("kill": its count never said)."""
    from driller.proxy import ProxyClient
    a = qin.get()
    asked = []
    number = ProxyClient.number
    ProxyClient.number = lambda self, *args: asked.append(args) or number(self, *args)
    for i in range(k):
        qout.put(a[i:])
    qout.close()
    qout.join_thread()   # (the views are pickled, by the queue's thread, and sent)
    asked_out.put(len(asked))
    asked_out.close()
    asked_out.join_thread()
    if exit_how == "kill":
        os.kill(os.getpid(), 9)
    if exit_how == "hold":
        return
    del a
    gc.collect()
    import driller
    driller.mapcache.cache().clear()
    gc.collect()
    driller._publish.flush()   # (our claim let go of, our count said)


def spawn_send_then_return(comm, n):
    """Rank 0 sends a fresh array (its first pickle) and returns it (its second),
    then leaves by os._exit holding it; rank 1 loads the first and lets go first."""
    import driller
    if comm.rank == 0:
        a = driller.zeros(n)
        a[:] = 9
        comm.send(a, dest=1)
        comm.barrier()
        return a
    got = comm.recv(source=0)
    ok = bool((got == 9).all())
    del got
    gc.collect()
    driller.mapcache.cache().clear()
    gc.collect()
    driller._publish.flush()
    comm.barrier()
    return ok


def empty_column_view(a):
    """A worker's result: an empty view (past column 0) of its empty argument."""
    return a[:, 1:]
