"""One-sided communication (MPI.Win) with real forked ranks, and MPI.buffer.

Every rank computes the expected window contents with numpy by itself; atomicity
is checked by counting (N increments from each rank give an exact total, each
fetched value seen once).  No timed assertions: sleeps only order events.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

from driller import MPI
from driller.errors import MmpiError, PeerDiedError

from test_mmpi_p2p import run_ranks, values

FLAVORS = ["create", "create-allocmem", "allocate", "shared", "dynamic"]


def make_win(comm, flavor, nbytes, unit=1):
    """A window of ``nbytes`` per rank; returns (win, local uint8 array, disp of byte 0)."""
    if flavor == "create":
        mem = np.zeros(nbytes, np.uint8)
        win = MPI.Win.Create(mem, unit, MPI.INFO_NULL, comm)
        return win, mem, 0
    if flavor == "create-allocmem":   # driller heap memory: peers map it, no syscalls
        mem = np.frombuffer(MPI.Alloc_mem(nbytes), np.uint8)
        mem[:] = 0
        win = MPI.Win.Create(mem, unit, MPI.INFO_NULL, comm)
        me = comm.rank
        assert all(win._fast[r][0] is not None for r in range(comm.size)
                   if r != me), "peers' Alloc_mem memory should be mapped here"
        return win, mem, 0
    if flavor == "dynamic":
        mem = np.zeros(nbytes, np.uint8)
        win = MPI.Win.Create_dynamic(MPI.INFO_NULL, comm)
        win.Attach(mem)
        base = comm.allgather(mem.ctypes.data)
        win._test_keep = mem
        return win, mem, base
    make = MPI.Win.Allocate if flavor == "allocate" else MPI.Win.Allocate_shared
    win = make(nbytes, unit, MPI.INFO_NULL, comm)
    mem = np.frombuffer(win, np.uint8)
    mem[:] = 0
    return win, mem, 0


def disp_of(base, r, off):
    return (base[r] + off) if isinstance(base, list) else off


def data(rank, count, salt=0):
    return ((np.arange(count, dtype=np.int64) * 7 + rank * 13 + salt) % 11).astype(np.float64)


# ------------------------------------------------------------------ correctness

def _put_get_acc(comm, flavor):
    n, me = comm.size, comm.rank
    count = 1000
    win, mem, base = make_win(comm, flavor, (n + 1) * count * 8)
    arr = mem.view(np.float64)
    win.Fence()
    # every rank puts its data into slot `me` of every rank
    for r in range(n):
        win.Put(data(me, count), r, [disp_of(base, r, me * count * 8), count, MPI.DOUBLE])
    win.Fence()
    for s in range(n):
        assert np.array_equal(arr[s * count:(s + 1) * count], data(s, count)), (flavor, s)
    # get every rank's slot 0 back
    for r in range(n):
        got = np.full(count, -1.0)
        win.Get(got, r, [disp_of(base, r, 0), count, MPI.DOUBLE])
        assert np.array_equal(got, data(0, count))
    win.Fence()
    # everyone accumulates into the last slot of rank 0 (SUM), then MAX into rank 1's
    last = n * count * 8
    win.Accumulate(data(me, count, 1), 0, [disp_of(base, 0, last), count, MPI.DOUBLE], MPI.SUM)
    win.Fence()
    if me == 0:
        want = sum(data(r, count, 1) for r in range(n))
        assert np.array_equal(arr[n * count:], want)
    win.Fence()
    # Get_accumulate with NO_OP reads atomically; REPLACE writes
    res = np.empty(count)
    win.Lock(0, MPI.LOCK_SHARED)
    win.Get_accumulate(np.zeros(count), res, 0, [disp_of(base, 0, last), count, MPI.DOUBLE],
                       MPI.NO_OP)
    win.Unlock(0)
    assert np.array_equal(res, sum(data(r, count, 1) for r in range(n)))
    win.Fence()
    win.Free()
    assert win == MPI.WIN_NULL
    return True


@pytest.mark.parametrize("flavor", FLAVORS)
def test_put_get_accumulate_match_numpy(flavor):
    assert values(run_ranks(_put_get_acc, 3, flavor)) == [True] * 3


def _large_cma(comm):
    """4 MiB through process_vm_writev/readv (Create) and memcpy (Allocate)."""
    n, me = comm.size, comm.rank
    big = 1 << 19   # doubles: 4 MiB
    out = []
    for flavor in ("create", "allocate"):
        win, mem, _ = make_win(comm, flavor, big * 8)
        win.Fence()
        src = np.arange(big, dtype=np.float64) + me
        win.Put(src, (me + 1) % n)
        win.Fence()
        out.append(bool(np.array_equal(mem.view(np.float64),
                                       np.arange(big, dtype=np.float64) + (me - 1) % n)))
        got = np.empty(big)
        win.Get(got, (me + 1) % n)
        out.append(bool(np.array_equal(got, src)))
        win.Fence()
        win.Free()
    return out


def test_large_put_get_single_copy_paths():
    assert values(run_ranks(_large_cma, 2)) == [[True] * 4] * 2


# ------------------------------------------------------------------ atomics

def _counter(comm, flavor, times):
    n, me = comm.size, comm.rank
    win, mem, base = make_win(comm, flavor, 16)
    win.Fence()
    one = np.ones(1, np.int64)
    got = np.empty(1, np.int64)
    seen = []
    win.Lock_all()
    for _ in range(times):
        win.Fetch_and_op(one, got, 0, disp_of(base, 0, 0), MPI.SUM)
        seen.append(int(got[0]))
    win.Unlock_all()
    win.Fence()
    total = int(mem.view(np.int64)[0]) if me == 0 else None
    allseen = comm.gather(seen, 0)
    win.Free()
    if me == 0:
        flat = sorted(v for s in allseen for v in s)
        return total, flat == list(range(n * times))
    return None


@pytest.mark.parametrize("flavor", ["allocate", "create", "create-allocmem"])
def test_fetch_and_op_counter_is_atomic(flavor):
    times = 1500
    res = values(run_ranks(_counter, 4, flavor, times))
    assert res[0] == (4 * times, True)


def _cas(comm):
    n, me = comm.size, comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    mem.view(np.int64)[0] = -1
    win.Fence()
    old = np.empty(1, np.int64)
    win.Lock(0, MPI.LOCK_SHARED)
    win.Compare_and_swap(np.array([me], np.int64), np.array([-1], np.int64), old, 0, 0)
    win.Unlock(0)
    win.Fence()
    final = comm.bcast(int(mem.view(np.int64)[0]) if me == 0 else None, 0)
    won = int(old[0]) == -1
    # the loser saw the winner's value
    ok = (final == me) if won else (int(old[0]) == final)
    win.Free()
    return won, ok


def test_compare_and_swap_one_winner():
    res = values(run_ranks(_cas, 4))
    assert sum(w for w, _ in res) == 1
    assert all(ok for _, ok in res)


def _locks(comm):
    me = comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    win.Fence()
    if me == 0:
        win.Lock(1, MPI.LOCK_EXCLUSIVE)
        comm.send("locked", 2)
        time.sleep(0.3)                       # rank 2 is waiting for the lock meanwhile
        win.Put(np.array([42], np.int64), 1)
        win.Unlock(1)
    elif me == 2:
        comm.recv(source=0)
        win.Lock(1, MPI.LOCK_SHARED)          # only after rank 0's Unlock
        got = np.empty(1, np.int64)
        win.Get(got, 1)
        win.Unlock(1)
        assert got[0] == 42, got
    comm.Barrier()
    # shared locks coexist: both hold one across a barrier (would deadlock otherwise)
    if me in (0, 2):
        win.Lock(1, MPI.LOCK_SHARED)
    comm.Barrier()
    if me in (0, 2):
        win.Unlock(1)
    comm.Barrier()
    win.Free()
    return True


def test_lock_exclusive_excludes_shared_coexist():
    assert values(run_ranks(_locks, 3)) == [True] * 3


def _pscw_unit(comm):
    n, me = comm.size, comm.rank
    mem = np.zeros(n, np.int64)
    win = MPI.Win.Create(mem, 8, MPI.INFO_NULL, comm)
    group = win.Get_group()
    if me == 0:
        win.Post(group.Excl([0]))
        while not win.Test():
            time.sleep(0.001)
        out = mem.tolist()
    else:
        win.Start(group.Incl([0]))
        win.Put(np.array([me * 10], np.int64), 0, me)
        win.Complete()
        out = None
    win.Free()
    return out


def test_post_start_complete_wait():
    assert values(run_ranks(_pscw_unit, 3))[0] == [0, 10, 20]


# ------------------------------------------------------------------ shared windows

def _shared_query(comm):
    me = comm.rank
    win = MPI.Win.Allocate_shared(8 * 4 if me == 0 else 0, 8, MPI.INFO_NULL, comm)
    buf, unit = win.Shared_query(0)
    assert unit == 8 and len(buf) == 32
    view = np.frombuffer(buf, np.int64)
    comm.Barrier()
    if me == 1:
        view[1] = 1234                 # a plain store into rank 0's memory
    comm.Barrier()
    seen = int(np.frombuffer(win, np.int64)[1]) if me == 0 else int(view[1])
    # PROC_NULL: the first rank with memory
    b2, _ = win.Shared_query(MPI.PROC_NULL)
    same = b2.address == buf.address
    # contiguous by default: rank 1's part (empty) starts where rank 0's ends
    b1, _ = win.Shared_query(1)
    same = same and b1.address == buf.address + 32 and len(b1) == 0
    del view, buf, b2, b1
    win.Free()
    return seen, same


def test_shared_query_zero_copy():
    assert values(run_ranks(_shared_query, 3)) == [(1234, True)] * 3


def _no_leftovers(comm):
    def ours():
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "driller-win" in os.readlink(f"/proc/self/fd/{fd}"):
                    fds.append(fd)
            except OSError:      # the fd of the listing itself
                pass
        with open("/proc/self/maps") as f:
            maps = [ln for ln in f if "driller-win" in ln]
        return len(fds), len(maps)
    before = ours()
    wins = [MPI.Win.Allocate(100, 1, MPI.INFO_NULL, comm),
            MPI.Win.Allocate_shared(100, 1, MPI.INFO_NULL, comm),
            MPI.Win.Create(np.zeros(10), 1, MPI.INFO_NULL, comm),
            MPI.Win.Create_dynamic(MPI.INFO_NULL, comm)]
    during = ours()
    for w in wins:
        w.Free()
    del wins, w
    gc.collect()
    return before, during, ours()


def test_freed_windows_leave_nothing():
    for before, during, after in values(run_ranks(_no_leftovers, 3)):
        assert before == (0, 0)
        assert during[0] == 0 and during[1] >= 4   # mapped, no fd kept
        assert after == (0, 0)


# ------------------------------------------------------------------ failures

def _killed_holding_lock(comm):
    me = comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    win.Fence()
    if me == 1:
        win.Lock(0, MPI.LOCK_EXCLUSIVE)
        comm.send("locked", 2)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)
    if me == 2:
        comm.recv(source=1)
        win.Lock(0, MPI.LOCK_SHARED)     # the holder dies: PeerDiedError, no hang
        return "locked?!"
    comm.Barrier()                       # rank 0 notices the death here
    return "barrier?!"


def test_rank_killed_holding_a_lock():
    res = run_ranks(_killed_holding_lock, 3)
    ok2, v2 = res[2]
    assert not ok2 and v2[0] == "PeerDiedError", v2
    assert "rank 1" in v2[1] and "lock" in v2[1], v2[1]
    assert not res[0][0] and res[0][1][0] == "PeerDiedError", res[0]


def _unlocked_then_exited(comm):
    """Rank 1 holds an exclusive lock on rank 0's window, releases it and exits
    while rank 0 waits to lock it; rank 0 checks the holder after it woke and
    finds it gone (its pid_alive waits until rank 1 has exited, the state a
    descheduled waiter finds): the lock is free, so Lock must take it, not
    raise PeerDiedError."""
    from driller import _linux
    me = comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    win.Fence()
    if me == 1:
        win.Lock(0, MPI.LOCK_EXCLUSIVE)
        comm.send("locked", 0)
        time.sleep(0.2)
        win.Unlock(0)
        return "unlocked"
    real = _linux.pid_alive
    late = []

    def late_alive(pid):
        end = time.monotonic() + 30
        while real(pid) and time.monotonic() < end:
            time.sleep(0.005)
        late.append(real(pid))
        return late[-1]

    comm.recv(source=1)
    _linux.pid_alive = late_alive
    try:
        win.Lock(0, MPI.LOCK_SHARED)
    finally:
        _linux.pid_alive = real
    win.Unlock(0)
    return late


def test_lock_released_then_holder_exited_is_taken():
    res = run_ranks(_unlocked_then_exited, 2)
    assert res[1] == (True, "unlocked"), res[1]
    ok, late = res[0]
    assert ok, late
    assert late and late[0] is False, late   # rank 0 saw rank 1 gone, then locked


def _killed_in_atomic(comm):
    me = comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    win.Fence()
    if me == 1:
        win._mlock(0, "test")            # inside an atomic update of rank 0's memory...
        comm.send("in", 2)
        os.kill(os.getpid(), signal.SIGKILL)   # ...and gone
    if me == 2:
        comm.recv(source=1)
        errs = []
        for _ in range(2):               # EOWNERDEAD, then the poisoned window
            try:
                win.Fetch_and_op(np.ones(1, np.int64), np.empty(1, np.int64), 0, 0)
            except PeerDiedError as e:
                errs.append(str(e))
        return errs
    return None


def test_rank_killed_inside_an_atomic_update():
    res = run_ranks(_killed_in_atomic, 3)
    ok2, errs = res[2]
    assert ok2, errs
    assert len(errs) == 2 and all("died in the middle of an atomic update" in e for e in errs)


def _bad_args(comm):
    me = comm.rank
    out = []
    try:   # a bad size on one rank only: every rank raises, nobody hangs
        MPI.Win.Allocate(-1 if me == 1 else 8, 1, MPI.INFO_NULL, comm)
    except MmpiError as e:
        out.append(("alloc", "rank 1" in str(e) or me == 1))
    win = MPI.Win.Allocate(16, 4, MPI.INFO_NULL, comm)
    for call, cls in ((lambda: win.Put(np.zeros(2, np.int32), 7), MPI.ERR_RANK),
                      (lambda: win.Put(np.zeros(2, np.int32), 0, 3), MPI.ERR_RMA_RANGE),
                      (lambda: win.Unlock(0), MPI.ERR_RMA_SYNC),
                      (lambda: win.Lock(0, 99), MPI.ERR_LOCKTYPE),
                      (lambda: win.Accumulate(np.zeros(1), 0, None,
                                              MPI.Op.Create(lambda a, b, t: None)),
                       MPI.ERR_OP)):
        try:
            call()
            out.append(("no error", cls))
        except MmpiError as e:
            out.append((e.Get_error_class() == cls, cls))
    try:
        win.Fetch_and_op(np.zeros(2, np.int32), np.zeros(2, np.int32), 0)
    except ValueError:
        out.append((True, "fetch"))
    win.Free()
    try:
        win.Put(b"x", 0)
    except MmpiError as e:
        out.append((e.Get_error_class() == MPI.ERR_WIN, "freed"))
    return out


def test_bad_arguments_raise_clear_errors():
    for out in values(run_ranks(_bad_args, 2)):
        assert out[0] == ("alloc", True)
        assert len(out) == 8 and all(ok is True for ok, _ in out[1:]), out


# ------------------------------------------------------------------ MPI.buffer

def test_buffer_object():
    b = MPI.buffer.allocate(8, clear=True)
    assert type(b) is MPI.buffer and MPI.memory is MPI.buffer
    assert b.nbytes == 8 and not b.readonly and b.address != 0
    b[2:4] = b"ab"
    assert b[2] == ord("a") and b.tobytes()[2:4] == b"ab"
    assert type(b[1:3]) is MPI.buffer and b[1:3].address == b.address + 1
    assert b.cast("i").nbytes == 8
    ro = MPI.buffer(b"xyz")
    assert ro.readonly and ro.obj == b"xyz"
    with pytest.raises(TypeError):
        ro[0] = 1
    f = MPI.buffer.fromaddress(b.address, 8)
    f[0] = 9
    assert b[0] == 9
    m = MPI.Alloc_mem(32)
    assert len(m) == 32 and m.address
    MPI.Free_mem(m)
    assert m.address == 0 and m.nbytes == 0
    win = MPI.Win.Allocate(8, 1, MPI.INFO_NULL, MPI.COMM_SELF)
    mem = win.tomemory()
    assert mem.address == win.Get_attr(MPI.WIN_BASE) and len(mem) == 8
    assert win.Get_attr(MPI.WIN_CREATE_FLAVOR) == MPI.WIN_FLAVOR_ALLOCATE
    assert win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
    win.Free()


def test_forked_child_cannot_use_the_window():
    win = MPI.Win.Allocate(16, 1, MPI.INFO_NULL, MPI.COMM_SELF)
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            win.Put(np.ones(2), 0)
            msg = b"no error"
        except MmpiError as e:
            msg = str(e).encode()
        os.write(wfd, msg)
        os._exit(0)
    os.close(wfd)
    msg = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert "fork of a rank" in msg, msg
    win.Put(np.ones(2), 0)          # the parent's window still works
    assert np.frombuffer(win, np.float64).tolist() == [1.0, 1.0]
    win.Free()


def test_hybrid_world_windows_per_node():
    """Under mpirun with 2 emulated nodes x 2 ranks: a window over the whole job raises
    MmpiNotImplementedError on every rank; a node's windows work."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun in the venv")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMI", "PMIX", "SLURM_", "DRILLER_MMPI_"))}
    env["PYTHONPATH"] = os.path.join(os.path.dirname(here), "src") + os.pathsep + \
        env.get("PYTHONPATH", "")
    prog = [sys.executable, os.path.join(here, "_rma_hybrid_prog.py")]
    cmd = [mpirun] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + \
        ["--oversubscribe", "--bind-to", "none",
         "-n", "2", "-x", "DRILLER_NODE=a-rma", *prog, ":",
         "-n", "2", "-x", "DRILLER_NODE=b-rma", *prog]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    # ranks print concurrently: lines may interleave, so look for each one's words
    for r in range(4):
        assert p.stdout.count(f"rank {r} ok") == 1, p.stdout


@pytest.mark.parametrize("code", ["b", "B", "h", "i", "I", "q", "Q", "d"])
def test_one_word_fast_paths_match_numpy(code):
    """Repeated Fetch_and_op and Accumulate on one word (the Python-scalar fast path
    after the first call) wrap and round exactly as numpy does, for ndarray and
    array.array."""
    import array
    win = MPI.Win.Allocate(64, 8, MPI.INFO_NULL, MPI.COMM_SELF)
    dt = np.dtype(code)
    ops = [MPI.SUM, MPI.PROD, MPI.REPLACE, MPI.NO_OP] + \
        ([MPI.MAX, MPI.MIN, MPI.BAND, MPI.BOR, MPI.BXOR] if code != "d" else [])
    rng = np.random.default_rng(7)
    want = np.zeros(1, dt)
    win.Lock(0)
    for i in range(300):
        op = ops[i % len(ops)]
        v = rng.integers(-200, 200) if dt.kind != "u" else rng.integers(0, 250)
        if dt.kind == "f":
            v = v / 7
        v = np.array([v]).astype(dt)          # wrapped into the type's range
        if i % 2:
            o, r = v, np.zeros(1, dt)
        else:
            o, r = array.array(code, [v.item()]), array.array(code, [0])
        win.Fetch_and_op(o, r, 0, 1, op)
        win.Accumulate(o, 0, 2, op)          # the same on word 2, with Accumulate
        assert np.array([r[0]], dt)[0] == want[0], (i, op, r[0], want[0])
        ov = np.array([o[0]], dt)
        if op is MPI.REPLACE:
            want = ov.copy()
        elif op is not MPI.NO_OP:
            want = op.ufunc(want, ov)
    win.Unlock(0)
    assert np.frombuffer(win, dt)[8 // dt.itemsize] == want[0]
    assert np.frombuffer(win, dt)[16 // dt.itemsize] == want[0]
    win.Free()


def _free_in_epoch(comm):
    me = comm.rank
    win, mem, _ = make_win(comm, "allocate", 8)
    win.Fence()
    if me == 0:
        win.Lock(1, MPI.LOCK_EXCLUSIVE)     # ... and never Unlock
    err = None
    try:
        win.Free()                          # collective: nobody hangs
    except MmpiError as e:
        err = (e.Get_error_class() == MPI.ERR_RMA_SYNC, "lock on rank 1" in str(e))
    return win == MPI.WIN_NULL, err


def test_free_inside_an_epoch_raises_after_freeing():
    res = values(run_ranks(_free_in_epoch, 2))
    assert res[0] == (True, (True, True))
    assert res[1] == (True, None)


def test_a_derived_target_datatype_is_refused_as_not_supported():
    # it raised "datatype ... is derived: it has no single numpy dtype", as if the
    # program had passed a wrong argument, not met a limit of driller's windows
    mem = np.zeros(64)
    win = MPI.Win.Create(mem, comm=MPI.COMM_SELF)
    vt = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
    try:
        win.Fence()
        with pytest.raises(MmpiError, match="derived target datatype") as e:
            win.Put(np.ones(4), 0, target=[0, 1, vt])
        assert isinstance(e.value, NotImplementedError)
        win.Put(np.ones(4), 0, target=[0, 4, MPI.DOUBLE])   # contiguous: fine
        win.Fence()
        assert mem[:4].tolist() == [1.0] * 4   # (disp_unit 1: bytes)
    finally:
        vt.Free()
        win.Free()
