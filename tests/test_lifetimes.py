"""Lifetimes that follow the data (issue 8, parts 1 and 2), with real processes.

A worker may return a fresh shared array and drop it, exit or be recycled: the
parent still gets the right bytes, by reference (a transfer lease at the fd
proxy keeps the segment fetchable until the pickle is loaded).  A stale pickle
never reads another array's bytes.  Pickles that are never loaded cannot grow
the proxy without bound.
"""

import concurrent.futures
import dataclasses
import gc
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import driller
from driller import heap, mmpi
from driller.proxy import _client as proxy_client

import _lifetimes_peer as peer

SMALL = 100          # float64: an arena block
LARGE = 1 << 17      # float64, 1 MiB: a segment of its own
SIZES = pytest.mark.parametrize("n", [SMALL, LARGE], ids=["small", "large"])


def _check_filled(results, n, values):
    assert len(results) == len(values)
    for r, v in zip(results, values):
        assert isinstance(r, driller.SharedArray), type(r)  # by reference, not by value
        assert r.shape == (n,)
        assert (r == v).all(), f"expected all {v}, got {np.unique(r)[:5]}"


@SIZES
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_return_fresh_arrays(method, n):
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.starmap(peer.make_filled, [(v, n) for v in range(6)])
        _check_filled(got, n, range(6))
        it = list(pool.imap(peer.Fill(n), range(6, 12)))
        _check_filled(it, n, range(6, 12))


@SIZES
def test_pool_workers_that_exit_after_each_task(n):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        _check_filled(pool.starmap(peer.make_filled, [(v, n) for v in range(6)]), n, range(6))


@SIZES
@pytest.mark.parametrize("max_tasks", [None, pytest.param(1, marks=pytest.mark.skipif(
    sys.version_info < (3, 11), reason="ProcessPoolExecutor(max_tasks_per_child=) is "
    "Python 3.11+; workers that exit are covered by the Pool tests"))],
    ids=["reused", "max_tasks_per_child=1"])
def test_process_pool_executor_returns_fresh_arrays(n, max_tasks):
    ctx = multiprocessing.get_context("spawn")
    kw = {} if max_tasks is None else {"max_tasks_per_child": max_tasks}
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, **kw) as ex:
        futs = [ex.submit(peer.make_filled, v, n) for v in range(6)]
        _check_filled([f.result(timeout=60) for f in futs], n, range(6))


EMPTY_VIEWS = {"(0, 5)[:, 1:]": lambda: driller.zeros((0, 5))[:, 1:],
               "(0, 5)[:, ::-1]": lambda: driller.zeros((0, 5))[:, ::-1],
               "(3, 0)[1:]": lambda: driller.zeros((3, 0))[1:],
               "(0, 5)": lambda: driller.zeros((0, 5)),
               "(10,)[10:]": lambda: driller.zeros(10)[10:],
               "(4, 5)[:, 5:]": lambda: driller.zeros((4, 5))[:, 5:]}


def test_empty_views_load_and_a_pool_worker_can_return_one():
    # an empty view of an empty array, at an offset (a filter that matched no rows,
    # then a[:, 1:]) pickled but did not load (numpy refused its offset past the
    # segment): the owner's load raised, so Pool's result thread died and map()
    # waited for ever, and ProcessPoolExecutor broke with "terminated abruptly"
    for name, make in EMPTY_VIEWS.items():
        v = make()
        got = pickle.loads(pickle.dumps(v))
        assert got.shape == v.shape and got.dtype == v.dtype and got.size == 0, name
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork")) as ex:
        a = driller.zeros((0, 5))
        got = ex.submit(peer.empty_column_view, a).result(timeout=60)
        assert got.shape == (0, 4), got.shape


@SIZES
def test_queue_sender_exits_before_the_load(n):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=peer.put_and_exit, args=(q, v, n)) for v in (3, 4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = sorted((q.get(timeout=30) for _ in procs), key=lambda a: float(a[0]))
    _check_filled(got, n, [3, 4])
    q.close()
    q.join_thread()


@SIZES
def test_pipe_sender_exits_before_the_load(n):
    ctx = multiprocessing.get_context("forkserver")
    mine, theirs = ctx.Pipe()
    p = ctx.Process(target=peer.send_and_exit, args=(theirs, 7, n))
    p.start()
    theirs.close()
    p.join(60)
    assert p.exitcode == 0
    assert mine.poll(0)  # the message waits in the pipe; its sender is gone
    _check_filled([mine.recv()], n, [7])
    mine.close()


@SIZES
def test_mmpi_spawn_ranks_return_fresh_arrays(n):
    got = mmpi.spawn(peer.spawn_rank_returns, 3, args=(n,))
    _check_filled(got, n, [1, 2, 3])


@SIZES
def test_mmpi_send_then_drop_at_once(n):
    got = mmpi.spawn(peer.spawn_send_drop, 2, args=(n,))
    assert got[0] is None
    assert got[1] == [("SharedArray", (n,), v + 10.0, v + 10.0) for v in range(3)]


@SIZES
def test_collectives_of_fresh_arrays_leave_no_lease_behind(n):
    # a rank's own contribution (bcast's and scatter's root, gather's, allgather's,
    # alltoall's and sendrecv's to itself) is a pickle its maker loads itself: it
    # never counted as loaded, and each waited DRILLER_LEASE_SECONDS at the proxy,
    # the freed memory with it (a training loop gathering arrays grew without bound)
    got = mmpi.spawn(peer.spawn_collectives_then_free, 3, args=(n,))
    assert all(after <= before for before, after in got), got


@SIZES
def test_a_view_forwarded_by_a_process_that_exited_stays_loadable(n):
    # owner -> B -> C: B pickled a view of the array it loaded with the owner's
    # handle number, already loaded (by B), so once B and the owner let go the
    # lease ended and C's load raised SegmentReleasedError ("loaded, then let go
    # by every process that held it"); now B's pickle has a number of its own
    ctx = multiprocessing.get_context("spawn")
    q1, q2, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    b = ctx.Process(target=peer.forward_view, args=(q1, q2, done))
    b.start()
    try:
        a = driller.zeros(n)
        a[:] = np.arange(n)
        q1.put(a)
        assert done.wait(60)
        b.join(60)
        assert b.exitcode == 0
        del a
        gc.collect()
        driller._publish.flush()   # (the owner let go too)
        got = q2.get(timeout=60)   # (this process plays C)
        assert isinstance(got, driller.SharedArray) and (got == np.arange(n)[::2]).all()
    finally:
        b.join(60)


@SIZES
@pytest.mark.parametrize("exit_how", ["exit", "hold", "kill"])
def test_views_a_process_forwards_are_numbered_by_it_and_stay_loadable(n, exit_how):
    # owner -> B -> C, B pickling 8 views: each pickle of B cost a round trip to the
    # proxy for a number; now B asks once for a range of numbers and says how many
    # it made as it lets go.  Every view loads after B and the owner let go, even
    # when B was killed before saying its count; once all are loaded and let go of,
    # the lease ends (unless B was killed: then it waits, as said in the README);
    # B exiting holding the array says its count at its exit
    from driller.proxy import proxy_info
    k = 8
    ctx = multiprocessing.get_context("spawn")
    q1, q2, q3 = ctx.Queue(), ctx.Queue(), ctx.Queue()
    b = ctx.Process(target=peer.forward_views, args=(q1, q2, q3, k, exit_how))
    b.start()
    try:
        a = driller.zeros(n)
        a[:] = np.arange(n)
        q1.put(a)
        asked = q3.get(timeout=60)
        b.join(60)
        assert b.exitcode == (-9 if exit_how == "kill" else 0)
        assert asked == 1, f"{asked} round trips to the proxy for {k} forwarded pickles"
        lid = driller.sharedarray._shared_base(a).lease[2]
        del a
        gc.collect()
        driller._publish.flush()   # (the owner let go too: nobody holds the lease)
        views = [q2.get(timeout=60) for _ in range(k)]   # (this process plays C)
        for i, v in enumerate(views):
            assert isinstance(v, driller.SharedArray) and (v == np.arange(n)[i:]).all()
        del views, v
        gc.collect()
        driller.mapcache.cache().clear()
        gc.collect()
        driller._publish.flush()
        waiting = lid in proxy_info()["leases"]["orphaned_ids"]
        assert waiting == (exit_how == "kill"), proxy_info()["leases"]
    finally:
        b.join(60)


@SIZES
def test_an_mmpi_spawn_rank_returning_an_array_it_sent_says_its_count(n):
    # a rank leaves by os._exit (no atexit): its array, sent (pickle 1, loaded and
    # let go of) and returned (pickle 2), never had its count said, and the
    # returned pickle could not load ("cannot reach the driller fd proxy")
    got = mmpi.spawn(peer.spawn_send_then_return, 2, args=(n,))
    assert got[1] is True
    assert isinstance(got[0], driller.SharedArray) and (got[0] == 9).all()


@SIZES
def test_a_loaded_result_passes_on_by_reference_after_its_worker_exited(n):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:   # a worker exits after each task
        r = pool.apply(peer.make_filled, (4, n))
        # its worker is gone: our claim keeps the lease, so a view of r pickles on
        total = pool.apply(peer.total_and_fill, (r[10:], 6))
    assert total == 4.0 * (n - 10)
    assert (r[10:] == 6).all() and (r[:10] == 4).all()  # the next worker wrote our memory


# ------------------------------------------------------------------ stale references

def _block(a):
    """(segment key, first byte, end) of the heap block under a shared array."""
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    assert isinstance(b, heap.Block)
    return b.segment.key, b.offset, b.offset + b.nbytes


def _overlaps(x, y) -> bool:
    return x[0] == y[0] and x[1] < y[2] and y[1] < x[2]


@SIZES
def test_freed_and_reallocated_blocks_never_give_other_bytes(n):
    pickles, spans = [], []
    for i in range(300):
        a = driller.zeros(n)
        a[:] = i
        pickles.append(pickle.dumps(a, protocol=5))
        spans.append(_block(a))
        del a
        others = [driller.zeros(n) for _ in range(3)]  # reuse whatever can be reused
        for o in others:
            o[:] = -1
            assert not any(_overlaps(_block(o), s) for s in spans), \
                "a freed block that had been pickled was handed to a new array"
    gc.collect()
    driller._publish.flush()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        remote = pool.apply(peer.load_all, (pickles,))
    here = peer.load_all(pickles)
    for i, (r, h) in enumerate(zip(remote, here)):
        for res in (r, h):  # the original bytes, or a clear error; never another array's
            assert res[0] in ("ok", "released"), res
            if res[0] == "ok":
                assert res[1:] == (float(i), float(i)), (i, res)
    # none had been loaded before the peer: every lease was still live (unclaimed);
    # the owner's second load may find leases the peer let go of ended (README)
    assert all(r[0] == "ok" for r in remote)


def test_non_exported_blocks_are_still_reused():
    addrs = set()
    keep = driller.zeros(SMALL)  # the arena stays
    for _ in range(50):
        a = driller.zeros(SMALL)
        addrs.add(_block(a))
        del a
    del keep
    assert len(addrs) < 5  # the allocator reuses blocks nobody could have a handle of


def test_a_handle_of_another_generation_raises():
    keep = driller.zeros(SMALL)          # keeps the arena published
    a = driller.zeros(SMALL)
    a[:] = 5
    h = driller.handle(a)
    forged = dataclasses.replace(h, gen=h.gen + 1000)
    with pytest.raises(driller.SegmentReleasedError, match=h.key):
        driller.attach(forged)           # the owner: no live block of that generation
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(peer.load_all, ([pickle.dumps(a)],))[0] == ("ok", 5.0, 5.0)
        kind, msg = pool.apply(peer.load_all, ([pickle.dumps(forged)],))[0]
    assert kind == "released" and h.key in msg and "generation" in msg, msg
    del keep


def test_lease_ends_once_loaded_and_let_go():
    a = driller.zeros(LARGE)
    a[:] = 9
    p = pickle.dumps(a)
    del a
    gc.collect()
    driller._publish.flush()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        first, second = pool.apply(peer.load_twice, (p,))
    assert first == (9.0, 9.0)
    assert second[0] == "released" and "lease" in second[1], second


def test_own_pickle_loads_after_the_array_is_dropped():
    for n in (SMALL, LARGE):
        a = driller.zeros(n)
        a[:] = 3
        p = pickle.dumps(a)
        del a
        gc.collect()
        driller._publish.flush()
        b = pickle.loads(p)  # in the owner itself: through the lease
        assert isinstance(b, driller.SharedArray) and (b == 3).all()
        again = pickle.loads(pickle.dumps(b[10:20]))  # a view re-pickles by reference
        assert (again == 3).all() and again.shape == (10,)


def test_forked_child_keeps_its_inherited_blocks():
    a = driller.zeros(SMALL, np.int64)
    a[:] = 7
    span = _block(a)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(w)
            os.read(r, 1)  # the parent has freed a and allocated many arrays
            code = 0 if (a == 7).all() else 3
        finally:
            os._exit(code)
    os.close(r)
    del a
    gc.collect()
    new = [driller.zeros(SMALL, np.int64) for _ in range(200)]
    for x in new:
        x[:] = -1
        assert not _overlaps(_block(x), span)
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("n", [100, 1 << 17])   # an arena's block; a segment of its own
def test_a_second_pickle_of_an_array_stays_loadable_until_loaded(n):
    # one lease per block: the first pickle loaded and let go of, then the owner's
    # drop (after making a second pickle) ended the lease, and the second pickle,
    # never loaded, raised SegmentReleasedError ("loaded, then let go by every
    # process that held it"); now the owner says how many handles it made and the
    # proxy keeps the lease until each was loaded
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    go = ctx.Event()
    p = ctx.Process(target=peer.send_twice_then_exit, args=(theirs, go, n))
    p.start()
    try:
        first = mine.recv()
        assert isinstance(first, driller.SharedArray) and (first == 1).all()
        del first
        gc.collect()
        driller._publish.flush()   # (our claim let go of)
        go.set()
        p.join(60)
        assert p.exitcode == 0
        second = mine.recv()
        assert isinstance(second, driller.SharedArray) and (second == 2).all()
    finally:
        go.set()
        p.join(60)


def test_a_lease_whose_handles_were_all_loaded_ends_at_once():
    # the two pickles of one block loaded by one process (the second from the map
    # cache, no claim sent: its number goes with the mapping's drop): once the owner
    # and the loader let go, the lease ends, it does not wait DRILLER_LEASE_SECONDS
    from driller.proxy import proxy_info
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    go = ctx.Event()
    p = ctx.Process(target=peer.send_two_then_drop, args=(theirs, go, 1 << 17))
    p.start()
    try:
        first, second = mine.recv(), mine.recv()
        assert (first == 3).all() and (second == 3).all()
        # (the handle it was loaded from: a new handle of it would be a pickle to load)
        h = driller.sharedarray._shared_base(first).origin
        address = h.proxy   # (the owner's proxy: a connection of ours knows its secret)
        driller.mapcache.cache().invalidate(h.key)   # (the mapping goes with the arrays)
        del first, second, h
        gc.collect()
        go.set()
        assert mine.recv() == "dropped"
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            driller._publish.flush()
            info = proxy_info(address)
            if info["leases"]["live"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert info["leases"]["live"] == 0 and info["leases"]["orphaned"] == 0, info["leases"]
    finally:
        go.set()
        mine.send("bye")
        p.join(60)


EXIT_HOLDING_SCRIPT = textwrap.dedent(r"""
    import os, pickle, sys
    import driller
    KEEP = []

    def produce(out, go):
        a = driller.zeros(int(sys.argv[2]))
        a[:] = 1
        KEEP.append(a)          # never freed: the process exits holding the array
        out(pickle.dumps(a))    # handle 1 of the block's lease
        go()
        a[:] = 2
        out(pickle.dumps(a[1:]))   # handle 2: loaded only after we exited
        if sys.argv[3] == "free":  # freed just before the exit: its drop is queued
            KEEP.clear()

    def emit(data):
        sys.stdout.buffer.write(len(data).to_bytes(8, "little") + data)
        sys.stdout.flush()

    if sys.argv[1] == "exit":   # this interpreter exits (atexit)
        produce(emit, sys.stdin.readline)
    else:                       # a multiprocessing fork child: it leaves by os._exit
        import multiprocessing as mp
        mine, theirs = mp.Pipe()
        p = mp.get_context("fork").Process(
            target=produce, args=(theirs.send_bytes, lambda: theirs.recv_bytes()))
        p.start()
        emit(mine.recv_bytes())
        sys.stdin.readline()
        mine.send_bytes(b"go")
        second = mine.recv_bytes()
        p.join(60)
        emit(second)
""")


def _read_pickle(f):
    return f.read(int.from_bytes(f.read(8), "little"))


@pytest.mark.parametrize("ending", ["hold", "free"])
@pytest.mark.parametrize("how", ["exit", "fork-child"])
def test_pickles_of_an_array_its_owner_exits_holding_stay_loadable(how, ending):
    # a process that exits holding a shared array never freed it, so it never said
    # how many pickles of it it made: once the first was loaded and let go of, the
    # lease ended, and the second, made before the exit, raised SegmentReleasedError;
    # now the process says its counts as it exits (atexit, multiprocessing's exit).
    # One that frees it just before its exit queues its drop, and the thread that
    # sends it rarely ran before the exit: the exit sends what is queued too
    n = 1 << 17
    p = subprocess.Popen([sys.executable, "-c", EXIT_HOLDING_SCRIPT, how, str(n), ending],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        first = pickle.loads(_read_pickle(p.stdout))
        assert isinstance(first, driller.SharedArray) and (first == 1).all()
        driller.mapcache.cache().invalidate(driller.sharedarray._shared_base(first).origin.key)
        del first
        gc.collect()
        driller._publish.flush()   # our claim is let go of
        p.stdin.write(b"go\n")
        p.stdin.flush()
        data = _read_pickle(p.stdout)
        assert p.wait(60) == 0
        second = pickle.loads(data)
        assert isinstance(second, driller.SharedArray) and second.shape == (n - 1,) \
            and (second == 2).all()
    finally:
        p.kill()
        p.wait()


KILLED_OWNER_SCRIPT = textwrap.dedent(r"""
    import pickle, sys, time
    import driller
    a = driller.zeros(1 << 17)
    a[:] = 3
    for data in (pickle.dumps(a), pickle.dumps(a[1:])):
        sys.stdout.buffer.write(len(data).to_bytes(8, "little") + data)
    sys.stdout.flush()
    time.sleep(300)   # (killed here)
    """)


def test_a_pickle_of_a_killed_owner_that_cannot_load_says_the_owner_was_killed():
    # a process killed after pickling an array twice never said how many pickles it
    # made: the first load ended the lease (by design), and the second said "its
    # owner freed it", which it never did
    p = subprocess.Popen([sys.executable, "-c", KILLED_OWNER_SCRIPT], stdout=subprocess.PIPE)
    closers = []
    try:
        first, second = _read_pickle(p.stdout), _read_pickle(p.stdout)
        p.kill()
        p.wait()
        a = pickle.loads(first)
        assert (a == 3).all()
        origin = driller.sharedarray._shared_base(a).origin
        # another process still using the killed owner's proxy (this process lets go
        # of its own connection once it needs it no more, and the proxy would exit)
        other = proxy_client._Conn(origin.proxy.replace("@", "\0", 1), origin.secret)
        closers.append(other)
        driller.mapcache.cache().invalidate(origin.key)
        del a
        gc.collect()
        driller._publish.flush()   # our claim is let go of: the lease ends
        with pytest.raises(driller.SegmentReleasedError) as e:
            pickle.loads(second)
        text = str(e.value)
        assert "freed it" not in text, text
        assert f"its owner (pid {p.pid}) exited or disconnected" in text, text
        assert "left without saying how many pickles it made (killed" in text, text
    finally:
        for c in closers:
            c.close()
        p.kill()
        p.wait()


NOTICE_AT_EXIT_SCRIPT = textwrap.dedent(r"""
    import gc, multiprocessing as mp, multiprocessing.util as mu, os, pickle, signal, sys
    import time
    import driller
    from driller.proxy import ProxyClient
    KEEP = []

    def child(conn, proxy_pid):
        KEEP.append(pickle.loads(conn.recv_bytes()))   # x (released, or held to the end)
        a = driller.zeros(1 << 17)
        a[:] = 7
        KEEP.append(a)                                 # exits holding a
        conn.send_bytes(pickle.dumps(a))               # handle 1
        conn.send_bytes(pickle.dumps(a[1:]))           # handle 2
        conn.recv_bytes()                              # (x released meanwhile: unread)
        # the proxy is not scheduled while we exit (made certain: stopped), so it reads
        # our last words only after our socket closed with its notice unread
        mu.Finalize(None, os.kill, args=(proxy_pid, signal.SIGSTOP), exitpriority=-50)

    x = driller.zeros(1 << 17)
    pid = ProxyClient.get().proxy_pid
    mine, theirs = mp.Pipe()
    p = mp.get_context("fork").Process(target=child, args=(theirs, pid))
    p.start()
    try:
        mine.send_bytes(pickle.dumps(x))
        p1, p2 = mine.recv_bytes(), mine.recv_bytes()
        if sys.argv[1] == "notice":
            del x
        gc.collect()
        driller._publish.flush()                       # x released: a notice to the child
        time.sleep(0.2)
        mine.send_bytes(b"go")
        p.join(60)
    finally:
        os.kill(pid, signal.SIGCONT)
    first = pickle.loads(p1)
    driller.mapcache.cache().invalidate(driller.sharedarray._shared_base(first).origin.key)
    del first
    gc.collect()
    driller._publish.flush()
    second = pickle.loads(p2)
    print("second", p.exitcode, float(second[0]))
""")


@pytest.mark.parametrize("unread", ["notice", "none"])
def test_an_exiting_processs_last_words_reach_the_proxy(unread):
    # a process posts what it must say as it exits (the numbers it loaded from its
    # cache, then its counts) and closes; the proxy, not scheduled meanwhile, found
    # the socket closed: with a release notice unread there the kernel gave it
    # ECONNRESET first, and it dropped the process unread; without, its reply to the
    # first post failed (EPIPE) and it dropped the rest: the lease ended after one load
    out = subprocess.run([sys.executable, "-c", NOTICE_AT_EXIT_SCRIPT, unread],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["second", "0", "7.0"], \
        (out.stdout, out.stderr[-3000:])


FORK_POOL_SCRIPT = textwrap.dedent(r"""
    import multiprocessing as mp, sys
    import driller

    a = None

    def total(x):
        return float(x.sum())

    def part(i):
        return a[i * 10:(i + 1) * 10]   # a view of the array inherited at fork

    if __name__ == "__main__":
        n, parent_first = int(sys.argv[1]), sys.argv[2] == "parent-first"
        keep = driller.zeros(1 << 17); driller.handle(keep)   # a proxy before the fork
        a = driller.zeros(n); a[:] = 1
        with mp.get_context("fork").Pool(2) as pool:
            if parent_first:
                print("PARENT", pool.apply(total, (a,)))   # the owner publishes first
            got = pool.map(part, range(4))
            a[:5] = 2   # the workers' views are of the parent's memory
            print("WORKERS", [float(g.sum()) for g in got])
            print("PARENT", pool.apply(total, (a,)))
    """)


@pytest.mark.parametrize("n", [1 << 17, 100])   # a segment of its own; an arena's block
@pytest.mark.parametrize("order", ["parent-first", "workers-first"])
def test_fork_pool_workers_return_views_of_inherited_arrays(n, order):
    # a fork Pool started while a shared array was live (and a proxy running):
    # a worker's pickle of its inherited array published the owner's key on the
    # same proxy, and the proxy refused it ("key ... is already published",
    # MaybeEncodingError in pool.map) when the parent had published first; when a
    # worker went first, the parent could not pickle its own array
    out = subprocess.run([sys.executable, "-c", FORK_POOL_SCRIPT, str(n), order],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    total = float(n + 5)
    lines = out.stdout.split("\n")
    assert "WORKERS [15.0, 10.0, 10.0, 10.0]" in lines, out.stdout
    assert f"PARENT {total}" in lines, out.stdout
    if order == "parent-first":
        assert lines[0] == f"PARENT {float(n)}", out.stdout


GRANDCHILD_SCRIPT = textwrap.dedent(r"""
    import os, pickle, sys, time
    import driller
    a = driller.zeros(int(sys.argv[1]))   # the parent's, never shared by it
    a[:] = 3.0
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        pickle.dumps(a[1:])               # the child publishes an entry of its own
        if os.fork() == 0:
            while os.getppid() == child:  # the child has exited: its entry is gone
                time.sleep(0.01)
            try:
                data = pickle.dumps(a[1:])
            except Exception as e:
                data = pickle.dumps(f"{type(e).__name__}: {e}")
            os.write(w, len(data).to_bytes(8, "little") + data)
            os._exit(0)
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    with os.fdopen(r, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        sys.stdout.buffer.write(f.read(n))
""")


@pytest.mark.parametrize("n", [1 << 17, 100])   # a segment of its own; an arena's block
def test_a_grandchild_pickles_an_array_after_its_publishing_parent_exited(n):
    # a fork child that published an inherited array (under a key of its own) and
    # forked: its child's pickles named the child's entry, gone with the child
    # ("segment ... was released: its owner (pid ...) exited"), so a grandchild
    # of a Pool worker could not share the array it inherited
    out = subprocess.run([sys.executable, "-c", GRANDCHILD_SCRIPT, str(n)],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    got = pickle.loads(out.stdout)   # loaded here: another process, once the writer left
    assert not isinstance(got, str), got
    assert isinstance(got, driller.SharedArray) and got.shape == (n - 1,) \
        and (got == 3.0).all(), got


# ------------------------------------------------------------------ bounds

BOUND_SCRIPT = textwrap.dedent(r"""
    import gc, json, os, pickle, sys, time
    import driller
    from driller.proxy import proxy_info

    def memfds(pid):                  # the proxy's memfd fds (its sockets come and go:
        n = 0                         # our own proxy_info() connection is one of them)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")
            except OSError:
                pass
        return n

    def state():
        info = proxy_info()
        # the proxy closes released memfds in a thread of its own, off its loop: let
        # the ones it has released already go before counting what it holds
        deadline = time.monotonic() + 5
        while (fds := memfds(info["pid"])) > len(info["segments"]) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        return {"leases": info["leases"]["live"], "orphaned": info["leases"]["orphaned"],
                "segments": len(info["segments"]), "fds": fds}

    keep = driller.zeros(10)          # our proxy, and an arena, before the baseline
    driller.handle(keep)
    base = state()
    pickles = []
    for i in range(200):               # never loaded: each a segment of its own
        a = driller.zeros(1 << 15)
        a[:] = i
        pickles.append(pickle.dumps(a))
        del a
        gc.collect()
    driller._publish.flush()
    full = state()
    newest = pickle.loads(pickles[-1])
    ok = bool((newest == 199).all())
    del newest
    gc.collect()
    try:
        pickle.loads(pickles[0])
        oldest = "loaded"
    except driller.SegmentReleasedError as e:
        oldest = str(e)
    driller._publish.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = state()
        if after["leases"] <= base["leases"] and after["segments"] <= base["segments"]:
            break
        time.sleep(0.1)
    print(json.dumps({"base": base, "full": full, "after": after, "ok": ok,
                      "oldest": oldest}))
""")


def test_a_proxy_with_no_cap_on_unclaimed_leases_starts():
    # DRILLER_LEASE_MAX_ORPHANS=inf (no cap): int(inf) raised in the proxy as it
    # started, and the first pickle of a shared array failed with "lost the fd
    # proxy ... Connection reset by peer"
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)   # (a proxy of its own, started with the setting)
    env.update(DRILLER_LEASE_MAX_ORPHANS="inf", DRILLER_LEASE_SECONDS="inf")
    out = subprocess.run([sys.executable, "-c", """
import pickle, driller
a = driller.zeros(10)
a[:] = 3
print("LOADED", int(pickle.loads(pickle.dumps(a)).sum()))
"""], capture_output=True, text=True, env=env, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "LOADED 30" in out.stdout, out.stdout


@pytest.mark.parametrize("name, value", [
    ("DRILLER_LEASE_SECONDS", "lots"), ("DRILLER_LEASE_SECONDS", "-1"),
    ("DRILLER_LEASE_MAX_ORPHANS", "1.5"), ("DRILLER_LEASE_IDLE_SECONDS", "nan")])
def test_a_bad_lease_setting_is_refused_by_the_client_that_starts_the_proxy(name, value):
    # the proxy reads these where it cannot raise to anyone: a bad value silently
    # gave the default (lots, -1, nan) or was truncated (1.5 leases: 1)
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)
    env[name] = value
    out = subprocess.run([sys.executable, "-c", """
import pickle, driller
from driller.errors import ProxyError
a = driller.zeros(10)
try:
    pickle.dumps(a)
except ProxyError as e:
    print("REFUSED", e)
"""], capture_output=True, text=True, env=env, timeout=90)
    assert out.returncode == 0, out.stderr
    assert f"REFUSED {name}={value!r}: give " in out.stdout, out.stdout
    assert "docs/configuration.md" in out.stdout, out.stdout


def test_never_loaded_pickles_are_bounded_and_expire():
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)  # a proxy of its own, with a small cap and TTL
    env.update(DRILLER_LEASE_MAX_ORPHANS="50", DRILLER_LEASE_SECONDS="1")
    out = subprocess.run([sys.executable, "-c", BOUND_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=90)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    base, full, after = r["base"], r["full"], r["after"]
    assert full["orphaned"] <= 50 and full["leases"] <= base["leases"] + 50, r
    assert full["segments"] <= base["segments"] + 50, r
    assert full["fds"] <= base["fds"] + 50, r      # one fd per kept segment at most
    assert r["ok"]                                   # the newest pickle still loads
    assert "never loaded" in r["oldest"], r          # the oldest ended (cap), clearly
    assert after["leases"] == base["leases"] and after["segments"] == base["segments"], r
    assert after["fds"] <= base["fds"] + 2, r        # back to baseline after the TTL


POOL_TASK_SCRIPT = textwrap.dedent(r"""
    import multiprocessing as mp, os, signal, sys, time
    import driller
    from driller.proxy import proxy_info

    def work(a):
        time.sleep(0.6)
        return float(a.sum())

    def arrays(k):
        for i in range(k):
            a = driller.zeros(10)
            a[:] = i
            yield a   # (and dropped at the next one: the queued pickle holds the lease)

    if __name__ == "__main__":
        method, why = sys.argv[1], sys.argv[2]
        with mp.get_context(method).Pool(1) as pool:
            if why != "proxy":   # tasks queued longer than the lease lasts unloaded
                it = pool.imap(work, arrays(8))   # (or more of them than the cap)
            else:                # the fd proxy killed while tasks are queued
                keep = list(arrays(4))
                it = pool.imap(work, keep)
                bound = pool.apply_async(keep[3].sum)   # (a method of an array: pickle
                time.sleep(0.3)                         # takes it while it unpickles)
                os.kill(proxy_info()["pid"], signal.SIGKILL)
            for i in range(4 if why == "proxy" else 8):
                try:
                    print("OK", i, it.next(timeout=30))
                except mp.TimeoutError:
                    print("HANG", i)
                    break
                except driller.DrillerError as e:
                    print("ERR", i, type(e).__name__, str(e).replace("\n", " "))
            if why == "proxy":
                try:
                    print("BOUND", bound.get(timeout=30))
                except mp.TimeoutError:
                    print("HANG bound method")
                except driller.DrillerError as e:
                    print("ERR bound", type(e).__name__, str(e).replace("\n", " "))
    """)


@pytest.mark.parametrize("why", ["lease", "orphans", "proxy"])
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_a_pool_task_whose_array_cannot_load_fails_instead_of_hanging_the_pool(
        method, why, tmp_path):
    # the worker reading its next task raised as it loaded the array (its lease
    # ended: queued by imap longer than DRILLER_LEASE_SECONDS after it was freed, or
    # beyond DRILLER_LEASE_MAX_ORPHANS unloaded; or the fd proxy was killed):
    # multiprocessing.Pool lost the task (the worker died, or for a ProxyError, an
    # OSError, exited quietly) and the caller waited for ever.  The advice names the
    # setting that ended the lease (it said "raise DRILLER_LEASE_SECONDS" for all)
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)   # (a proxy of its own: short leases, killed)
    env["DRILLER_LEASE_SECONDS"] = "300" if why == "orphans" else "1"
    env["DRILLER_LEASE_MAX_ORPHANS"] = "2" if why == "orphans" else "1000"
    script = tmp_path / "pool_task.py"   # (a file: spawn's workers import its main)
    script.write_text(POOL_TASK_SCRIPT)
    out = subprocess.run([sys.executable, str(script), method, why],
                         capture_output=True, text=True, env=env, timeout=200)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines, out.stderr
    assert not [x for x in lines if x.startswith("HANG")], out.stdout + out.stderr
    errors = [x for x in lines if x.startswith("ERR")]
    assert errors, out.stdout        # (the last tasks' arrays cannot load)
    assert why != "proxy" or [x for x in errors if x.startswith("ERR bound ProxyError")], \
        out.stdout
    for x in lines:                  # the others are right, never another array's bytes
        if x.startswith("OK"):
            _, i, got = x.split()
            assert float(got) == 10.0 * int(i), x
    for x in errors:
        assert "multiprocessing.Pool task" in x, x
        if why == "proxy":
            assert "ProxyError" in x, x
            continue
        assert "SegmentReleasedError" in x, x
        if why == "lease":
            assert "never loaded within 1 s" in x and "raise DRILLER_LEASE_SECONDS)" in x, x
        else:
            assert "more than 2 other handles" in x, x
            assert "raise DRILLER_LEASE_MAX_ORPHANS)" in x and "_SECONDS" not in x, x


PROXY_KILLED_SCRIPT = textwrap.dedent(r"""
    import multiprocessing as mp, os, signal, time
    import driller
    from driller.proxy import proxy_info

    def total(a):
        return float(a.sum())

    def attempt(what, f):
        try:
            print(what, "OK", f())
        except driller.DrillerError as e:
            print(what, "ERR", type(e).__name__, str(e).replace("\n", " "))

    if __name__ == "__main__":
        old = driller.zeros(10); driller.handle(old)        # its arena published
        unshared = driller.zeros(10)                        # same arena, never shared
        big = driller.zeros(1 << 16); driller.handle(big)   # a segment, published
        os.kill(proxy_info()["pid"], signal.SIGKILL)
        time.sleep(0.3)
        with mp.get_context("spawn").Pool(1) as pool:
            for i in range(3):
                a = driller.zeros(10); a[:] = i + 1
                attempt(f"small-{i}", lambda: pool.apply(total, (a,)))
                b = driller.zeros(1 << 16); b[:] = i + 1
                attempt(f"large-{i}", lambda: pool.apply(total, (b,)))
            attempt("unshared", lambda: driller.handle(unshared) and 0)
            attempt("big", lambda: pool.apply(total, (big[1:],)))
    """)


def test_after_the_fd_proxy_is_killed_new_arrays_share_and_old_ones_say_why_not(tmp_path):
    # the process started a new proxy, but kept giving handles of memory published
    # to the dead one, naming the new one: every small array from then on raised
    # SegmentReleasedError "unknown to the fd proxy ... released (or never
    # published there)" for good (its arena was published to the dead proxy only)
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)   # (a proxy of its own, to kill)
    script = tmp_path / "proxy_killed.py"
    script.write_text(PROXY_KILLED_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=200)
    assert out.returncode == 0, out.stderr
    got = {x.split()[0]: x.split(maxsplit=2)[1:] for x in out.stdout.splitlines()}
    for i in range(3):   # each large array a new segment: through the new proxy
        assert got[f"large-{i}"] == ["OK", f"{(i + 1) * 65536.0}"], out.stdout
    # the first small one came from the arena shared through the dead proxy
    assert got["small-1"] == ["OK", "20.0"] and got["small-2"] == ["OK", "30.0"], out.stdout
    for what in ("small-0", "unshared", "big"):
        status, text = got[what]
        if what == "small-0" and status == "OK":
            continue
        assert status == "ERR" and text.startswith("ProxyError"), (what, out.stdout)
        assert "which is gone (killed?)" in text and "driller.array(a)" in text, text


RECYCLED_WORKERS_SCRIPT = textwrap.dedent(r"""
    import gc, sys, multiprocessing as mp
    import driller
    from driller import _linux
    from driller.proxy import ProxyClient

    def task(i):
        a = driller.zeros(10)   # (in the worker's own arena, through its own proxy)
        a[:] = i
        return a

    if __name__ == "__main__":
        seen = set()
        with mp.get_context(sys.argv[1]).Pool(2, maxtasksperchild=1) as pool:
            for i in range(int(sys.argv[2])):
                a = pool.apply(task, (i,))
                assert (a == i).all(), (i, a)
                seen |= {c.server_pid for c in ProxyClient.get()._conns.values()}
                del a
                gc.collect()
        alive = [p for p in seen if _linux.pid_alive(p)]
        print(len(seen), len(alive), len(ProxyClient.get()._conns))
    """)


@pytest.mark.parametrize("method, tasks", [("fork", 16), ("spawn", 8)])
def test_recycled_pool_workers_leave_no_proxy_and_no_connection_behind(method, tasks,
                                                                       tmp_path):
    # each worker (maxtasksperchild=1) returned an array from its own proxy: the
    # parent kept its connection to that proxy after the worker exited and the array
    # was freed, so every finished worker left a proxy process (~9 MB) and the
    # parent an fd, until the parent exited (150 tasks: 151 proxies)
    script = tmp_path / "recycled.py"   # (a file: spawn's workers import its main)
    script.write_text(RECYCLED_WORKERS_SCRIPT)
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)   # (each process its own proxy, as a user's would)
    out = subprocess.run([sys.executable, str(script), method, str(tasks)],
                         capture_output=True, text=True, env=env, timeout=200)
    assert out.returncode == 0, out.stderr
    seen, alive, conns = map(int, out.stdout.split())
    assert seen >= tasks, out.stdout   # (a proxy per worker: the bound below means something)
    assert alive <= 4 and conns <= 5, out.stdout   # the last workers' (read at the next load)


REPICKLE_AFTER_KILL_SCRIPT = textwrap.dedent(r"""
    import os, pickle, signal, time
    import driller
    from driller.proxy import proxy_info

    small, big = driller.zeros(10), driller.zeros(1 << 16)
    pickle.dumps(small), pickle.dumps(big[1:])     # each has its transfer lease
    os.kill(proxy_info()["pid"], signal.SIGKILL)
    time.sleep(0.3)
    for what, a in (("big", big), ("small", small)):
        try:
            pickle.dumps(a)
            print(what, "OK")
        except driller.DrillerError as e:
            print(what, "ERR", type(e).__name__, str(e).replace("\n", " "))
    """)


def test_an_array_pickled_before_the_fd_proxy_was_killed_says_so_when_pickled_again():
    # its handle was kept (its transfer lease, cached on the block): the pickle
    # succeeded without a word, naming the dead proxy, and every loader got the
    # ProxyError instead, far from the cause
    env = dict(os.environ)
    env.pop("DRILLER_PROXY", None)   # (a proxy of its own, to kill)
    out = subprocess.run([sys.executable, "-c", REPICKLE_AFTER_KILL_SCRIPT],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = {x.split()[0]: x.split(maxsplit=1)[1] for x in out.stdout.splitlines()}
    for what in ("big", "small"):
        status, _, text = got[what].partition(" ")
        assert status == "ERR" and text.startswith("ProxyError"), (what, out.stdout)
        assert "which is gone (killed?)" in text and "driller.array(a)" in text, text


EMFILE_SCRIPT = textwrap.dedent(r"""
    import gc, os, pickle, resource, multiprocessing as mp
    import numpy as np, driller

    def worker(conn, ypickle):
        x = driller.zeros(1 << 16, dtype=np.uint8)
        x[:] = 5
        conn.send_bytes(pickle.dumps(x))      # (x is published: its proxy knows it)
        conn.recv_bytes()
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            pickle.loads(ypickle)
            conn.send("LOADED at the limit")
        except driller.DrillerError as e:
            conn.send(f"{type(e).__name__}: {e}")
        for f in hog:
            os.close(f)
        y = pickle.loads(ypickle)             # room again: the same handle loads
        conn.send(float(y[0]))
        conn.recv_bytes()
        x[:] = 6
        conn.send_bytes(pickle.dumps(x))      # a new pickle of its live array
        conn.recv_bytes()

    if __name__ == "__main__":
        y = driller.zeros(1 << 16, dtype=np.uint8)
        y[:] = 9
        a, b = mp.get_context("fork").Pipe()
        w = mp.get_context("fork").Process(target=worker, args=(b, pickle.dumps(y)))
        w.start()
        first = pickle.loads(a.recv_bytes())
        print("FIRST", int(first[0]))
        a.send_bytes(b"go")
        print("AT LIMIT", a.recv().replace("\n", " "))
        print("RETRY", a.recv())
        del first
        gc.collect()
        a.send_bytes(b"next")
        try:
            print("SECOND", int(pickle.loads(a.recv_bytes())[0]))
        except driller.DrillerError as e:
            print("SECOND", type(e).__name__, e)
        a.send_bytes(b"bye")
        w.join()
    """)


def test_a_load_at_the_open_file_limit_says_so_and_keeps_the_process_sharing(tmp_path):
    # the proxy's reply carried an fd the worker had no room for (MSG_CTRUNC): the
    # client took it for a protocol bug ("oversized message from the fd proxy") and
    # closed its connection, so the proxy released every array the worker owned: its
    # next pickle of a live array then loaded as "its owner freed it"
    script = tmp_path / "emfile.py"
    script.write_text(EMFILE_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = dict(x.split(" ", 1) for x in out.stdout.splitlines())
    assert got["FIRST"] == "5", out.stdout
    assert got["AT"].startswith("LIMIT ProxyError: this process is at its open file limit "
                                "(RLIMIT_NOFILE, `ulimit -n` 64)"), out.stdout
    assert got["RETRY"] == "9.0", out.stdout
    assert got["SECOND"] == "6", out.stdout


SAVE_SCRIPT = textwrap.dedent(r"""
    import pickle, sys
    import numpy as np, driller
    a = driller.array(np.arange(1000, dtype=float))
    with open(sys.argv[1], "wb") as f:
        if sys.argv[2] == "value":
            with driller.pickled_by_value():
                pickle.dump({"weights": a}, f)
        else:
            pickle.dump({"weights": a}, f)
    """)
LOAD_SCRIPT = textwrap.dedent(r"""
    import pickle, sys
    import driller
    try:
        with open(sys.argv[1], "rb") as f:
            w = pickle.load(f)["weights"]
        print("LOADED", type(w).__name__, float(w.sum()))
    except driller.DrillerError as e:
        print("REFUSED", type(e).__name__, e)
    """)


@pytest.mark.parametrize("how", ["value", "reference"])
def test_results_saved_to_a_file_need_pickled_by_value(tmp_path, how):
    # a SharedArray pickled into a file is a reference to the saving process's
    # memory: once that process (and its proxy) is gone, the file loads nothing,
    # and the error said only that the proxy could not be reached; pickled inside
    # driller.pickled_by_value() (now exported) the file holds the bytes
    env = dict(os.environ, DRILLER_LEASE_IDLE_SECONDS="0")   # (its proxy ends at once)
    env.pop("DRILLER_PROXY", None)
    path = str(tmp_path / "results.pkl")
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, path, how], check=True, env=env,
                   timeout=60)
    deadline = time.monotonic() + 30
    while True:   # (the saver's proxy exits once it is alone for 0 s)
        out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, path], capture_output=True,
                             text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        if how == "value" or "LOADED" not in out.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if how == "value":
        assert out.stdout.startswith("LOADED ndarray 499500.0"), out.stdout
        assert os.path.getsize(path) > 8000, os.path.getsize(path)   # the bytes are in it
    else:
        assert out.stdout.startswith("REFUSED ProxyError cannot reach the driller fd proxy"), \
            out.stdout
        assert "pickle them inside `with driller.pickled_by_value():`" in out.stdout, out.stdout


def test_a_copy_through_a_queue_is_a_plain_ndarray():
    # pickled_by_value() covers its own thread's pickles; a Queue pickles in its
    # feeder thread, later: the README's way to send a copy through it is
    # np.asarray(a), the array itself goes by reference
    a = driller.zeros(1 << 17)
    a[:] = 1.0
    q = multiprocessing.get_context("spawn").Queue()
    q.put(np.asarray(a))
    q.put(a)
    copy, by_ref = q.get(timeout=30), q.get(timeout=30)
    assert type(copy) is np.ndarray and type(by_ref) is driller.SharedArray
    copy[:] = 2.0
    by_ref[:1] = 3.0
    assert a[0] == 3.0 and (a[1:] == 1.0).all() and (copy == 2.0).all()
    q.close()
    q.join_thread()
