"""The multiprocessing worker: Pipe and Queue peers, the memcpy limit, and sharing.

    python -m driller._bench.mpworker --role mp    --ctl SOCK --group G
    python -m driller._bench.mpworker --role share --ctl SOCK --group G

``--role mp``: this process is rank 0 and starts rank 1 with ``multiprocessing``;
the two talk through a ``Pipe`` (``send_bytes``/``recv_bytes_into`` for buffers,
``send``/``recv`` for objects) or a pair of ``Queue`` (``put``/``get``), wrapped in
tiny adapters with the mpi4py-like API so the kernels are the same as for MPI.
It also measures the single-process ``np.copyto`` limit.

``--role share``: passing a 64 MiB array to a ``multiprocessing.Pool`` worker that
returns its sum -- a plain numpy array (pickled by value) against a ``driller``
shared array (pickled by reference).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from time import perf_counter

import numpy as np

from . import _ctl, _kernels as K


class PipeComm:
    """mpi4py-like face of one end of ``multiprocessing.Pipe()`` (a socketpair)."""

    def __init__(self, conn, rank):
        self.c, self.rank = conn, rank

    def Send(self, buf, dest, tag=0):
        self.c.send_bytes(buf)

    def Recv(self, buf, source, tag=0):
        self.c.recv_bytes_into(buf)

    def send(self, obj, dest, tag=0):
        self.c.send(obj)

    def recv(self, source=None, tag=None):
        return self.c.recv()

    def Barrier(self):
        if self.rank == 0:
            self.c.send_bytes(b"")
            self.c.recv_bytes()
        else:
            self.c.recv_bytes()
            self.c.send_bytes(b"")


class QueueComm:
    """mpi4py-like face of two ``multiprocessing.Queue`` (one per direction).

    ``Recv`` does not copy into the buffer: a Queue user takes the object it gets.
    """

    def __init__(self, q_out, q_in, rank):
        self.o, self.i, self.rank = q_out, q_in, rank

    def Send(self, buf, dest, tag=0):
        self.o.put(buf)

    def Recv(self, buf, source, tag=0):
        self.i.get()

    def send(self, obj, dest, tag=0):
        self.o.put(obj)

    def recv(self, source=None, tag=None):
        return self.i.get()

    def Barrier(self):
        if self.rank == 0:
            self.o.put(None)
            self.i.get()
        else:
            self.i.get()
            self.o.put(None)


def _p2p_handler(rank, pipe_end, q_out, q_in):
    chans = {"pipe": PipeComm(pipe_end, rank), "queue": QueueComm(q_out, q_in, rank)}
    bufs: dict = {}
    objs: dict = {}

    def buffers(size):  # kept for the whole run, as in mpiworker
        if size not in bufs:
            bufs[size] = (np.full(size, 1, np.uint8), np.zeros(size, np.uint8))
        return bufs[size]

    def handle(cmd):
        op, size = cmd["op"], int(cmd.get("size", 0))
        iters, warmup = int(cmd["iters"]), int(cmd.get("warmup", 0))
        cap = cmd.get("cap")
        if op == "memcpy":
            return K.memcpy(size, iters, warmup, buffers(size), cap=cap)
        comm = chans[cmd["chan"]]
        if op == "obj":
            if size not in objs:  # kept for the whole run, like the buffers
                objs[size] = K.make_object(size)
            return K.pingpong_obj(comm, rank, objs[size], iters, warmup, cap=cap)
        s, r = buffers(size)
        if op == "lat":
            if cmd["api"] == "buf":
                return K.pingpong_buf(comm, rank, s, r, iters, warmup, cap=cap)
            return K.pingpong_obj(comm, rank, s, iters, warmup, cap=cap)
        if op == "bw":
            window = int(cmd.get("window") or K.bw_window(size))
            if cmd["api"] == "buf":
                return K.bandwidth_buf(comm, rank, s, r, iters, warmup, window, cap=cap)
            return K.bandwidth_obj(comm, rank, s, iters, warmup, window, cap=cap)
        raise ValueError(f"unknown op {op!r}")

    return handle


def _child_main(ctl_end, pipe_end, q_out, q_in):
    """Rank 1 of the multiprocessing pair: commands come from rank 0 over ctl_end."""
    handle = _p2p_handler(1, pipe_end, q_out, q_in)
    while True:
        try:
            cmd = ctl_end.recv()
        except EOFError:
            return
        if cmd.get("op") == "quit":
            return
        try:
            res = handle(cmd)
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ctl_end.send(res)


def run_mp(conn) -> None:
    ctl_parent, ctl_child = mp.Pipe()
    a, b = mp.Pipe()
    q01, q10 = mp.Queue(), mp.Queue()
    child = mp.Process(target=_child_main, args=(ctl_child, b, q10, q01), daemon=True)
    child.start()
    handle0 = _p2p_handler(0, a, q01, q10)

    def handle(cmd):
        if cmd["op"] == "memcpy":
            return handle0(cmd)
        ctl_parent.send(cmd)
        res = handle0(cmd)
        other = ctl_parent.recv()
        if other.get("ok") is False:
            raise RuntimeError(f"rank 1: {other.get('error')}")
        return res

    try:
        _ctl.serve_commands(conn, handle)
    finally:
        try:
            ctl_parent.send({"op": "quit"})
        except OSError:
            pass
        child.join(5)
        if child.is_alive():
            child.kill()


# --- sharing -------------------------------------------------------------------

def _sum(a):
    return float(a.sum())


def run_share(conn) -> None:
    pools = [mp.Pool(1)]
    state: dict = {}

    def source(nbytes):
        if state.get("nbytes") != nbytes:
            state.clear()
            n = nbytes // 8
            state["nbytes"] = nbytes
            state["src"] = np.arange(n, dtype=np.float64) % 1000.0
            state["expect"] = float(state["src"].sum())
        return state["src"], state["expect"]

    def handle(cmd):
        nbytes = int(cmd["size"])
        iters, warmup = int(cmd["iters"]), int(cmd.get("warmup", 0))
        kind = cmd["kind"]
        pass_timeout = float(cmd.get("pass_timeout", 10.0))
        src, expect = source(nbytes)
        if kind == "sum":  # the floor: summing in this process, nothing passed
            t0 = perf_counter()
            for i in range(warmup + iters):
                if i == warmup:
                    t0 = perf_counter()
                _sum(src)
            el = perf_counter() - t0
            return {"elapsed": el, "iters": iters, "t": el / iters}
        if kind == "numpy":
            make = lambda: src  # noqa: E731  pickled by value on every pass anyway
        elif kind in ("driller", "driller-reuse"):
            import driller
            zeros = getattr(driller, "zeros", None)
            if zeros is None:
                raise RuntimeError("driller.zeros is not available yet")

            def fresh():
                arr = zeros(src.shape, dtype=np.float64)
                np.copyto(arr, src)
                return arr
            if kind == "driller-reuse":
                if "reuse" not in state:
                    state["reuse"] = fresh()
                make = lambda: state["reuse"]  # noqa: E731
            else:
                make = fresh
        else:
            raise ValueError(f"unknown kind {kind!r}")
        el, done = 0.0, 0
        cap = cmd.get("cap")
        for i in range(warmup + iters):
            if cap is not None and done and el > cap:
                break
            arr = make()  # not timed: building the array
            t0 = perf_counter()
            try:
                # a worker that dies unpickling the task makes Pool.apply hang forever
                got = pools[0].apply_async(_sum, (arr,)).get(pass_timeout)
            except mp.TimeoutError:
                pools[0].terminate()
                pools[0] = mp.Pool(1)
                raise RuntimeError(f"the Pool worker gave no answer in {pass_timeout:.0f} s "
                                   "(did it fail to unpickle the array? see stderr)") from None
            dt = perf_counter() - t0
            del arr
            if got != expect:
                raise RuntimeError(f"worker summed {got}, expected {expect}")
            if i >= warmup:
                el += dt
                done += 1
        return {"elapsed": el, "iters": done, "t": el / done}

    try:
        _ctl.serve_commands(conn, handle)
    finally:
        pools[0].terminate()
        pools[0].join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m driller._bench.mpworker")
    p.add_argument("--role", required=True, choices=["mp", "share"])
    p.add_argument("--ctl", required=True)
    p.add_argument("--group", required=True)
    a = p.parse_args(argv)
    versions = {"start_method": mp.get_start_method()}
    conn = _ctl.connect(a.ctl, {"group": a.group, "rank": 0, "size": 1, "pid": os.getpid(),
                                "engine": "multiprocessing", "versions": versions})
    if a.role == "mp":
        run_mp(conn)
    else:
        run_share(conn)
    conn.close()
    return 0


if __name__ == "__main__":
    # run the importable module, not __main__, so pickled functions resolve anywhere
    from driller._bench.mpworker import main as _main
    sys.exit(_main())
