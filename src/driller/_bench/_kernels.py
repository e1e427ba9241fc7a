"""Benchmark kernels, written once against the mpi4py-like API.

A *comm* here is anything with ``Send(buf, dest, tag)``, ``Recv(buf, source, tag)``,
``send(obj, dest, tag)``, ``recv(source=, tag=)`` and ``Barrier()`` -- an mpi4py
communicator, a ``driller.mmpi`` communicator, an ``mpi4py.util.pkl5`` wrapper, or the
multiprocessing adapters of :mod:`.mpworker`.  ``Isend``/``Irecv`` are used when the
comm has them (the osu_bw window); otherwise the window is sent with blocking calls.

Every kernel runs ``warmup`` untimed iterations, then ``iters`` timed ones, and
returns a dict with ``elapsed`` (seconds of the timed part), ``iters`` and ``t``
(seconds per operation: one-way message, one barrier, one copy...).
Only rank 0's ``t`` is used for point-to-point kernels; barrier times are averaged
over ranks by the caller.
"""

from __future__ import annotations

from time import perf_counter

import numpy as np

TAG = 7
TAG_ACK = 8
TAG_CTL = 9


def bw_window(size: int) -> int:
    """Messages in flight per osu_bw iteration: 64 (as OSU) but at most 16 MiB."""
    return int(max(1, min(64, (16 << 20) // max(size, 1))))


def make_object(nbytes: int, parts: int = 8) -> dict:
    """A dict of ``parts`` float64 arrays totalling ``nbytes`` (the objects test)."""
    per = max(1, nbytes // parts // 8)
    return {f"a{i}": np.full(per, float(i), dtype=np.float64) for i in range(parts)}


def _sync(comm) -> None:
    comm.Barrier()


def _drive(comm, rank, body, iters, warmup, cap, nranks=2):
    """Run ``body(n)`` for ``warmup`` untimed then ``iters`` timed iterations.

    The timed part runs in up to 32 blocks; after each, rank 0 tells the others (a
    lowercase send, not timed) whether to go on: past ``cap`` seconds it stops early,
    so a measurement disturbed by a busy machine (a spinning rank descheduled for a
    whole tick per message) cannot take minutes.  Returns (elapsed, iterations done).
    """
    if warmup:
        body(warmup)
    _sync(comm)
    block = max(1, -(-iters // 32))
    done, el = 0, 0.0
    while done < iters:
        n = min(block, iters - done)
        t0 = perf_counter()
        body(n)
        el += perf_counter() - t0
        done += n
        if done >= iters:
            break
        if rank == 0:
            stop = cap is not None and el > cap
            for r in range(1, nranks):
                comm.send(stop, r, TAG_CTL)
        else:
            stop = comm.recv(source=0, tag=TAG_CTL)
        if stop:
            break
    return el, done


def pingpong_buf(comm, rank, sbuf, rbuf, iters, warmup, cap=None):
    """osu_latency: half the round trip of Send/Recv between ranks 0 and 1."""
    peer = 1 - rank
    Send, Recv = comm.Send, comm.Recv

    def body(n):
        if rank == 0:
            for _ in range(n):
                Send(sbuf, peer, TAG)
                Recv(rbuf, peer, TAG)
        else:
            for _ in range(n):
                Recv(rbuf, peer, TAG)
                Send(sbuf, peer, TAG)
    el, n = _drive(comm, rank, body, iters, warmup, cap)
    return {"elapsed": el, "iters": n, "t": el / (2 * n)}


def pingpong_obj(comm, rank, obj, iters, warmup, cap=None):
    """Half the round trip of lowercase send/recv; rank 1 echoes what it got."""
    peer = 1 - rank
    send, recv = comm.send, comm.recv

    def body(n):
        if rank == 0:
            for _ in range(n):
                send(obj, peer, TAG)
                recv(source=peer, tag=TAG)
        else:
            for _ in range(n):
                got = recv(source=peer, tag=TAG)
                send(got, peer, TAG)
                del got
    el, n = _drive(comm, rank, body, iters, warmup, cap)
    return {"elapsed": el, "iters": n, "t": el / (2 * n)}


def bandwidth_buf(comm, rank, sbuf, rbuf, iters, warmup, window, waitall=None, cap=None):
    """osu_bw: ``window`` non-blocking sends, wait all, a small ack back.

    Returns ``t`` as seconds per message (size / t is the bandwidth).  Like OSU,
    every receive of a window lands in the same buffer.
    """
    peer = 1 - rank
    ack = np.zeros(4, np.uint8)
    Send, Recv = comm.Send, comm.Recv
    Isend = getattr(comm, "Isend", None)
    Irecv = getattr(comm, "Irecv", None)
    nonblocking = Isend is not None and Irecv is not None and waitall is not None

    def body(n):
        for _ in range(n):
            if rank == 0:
                if nonblocking:
                    waitall([Isend(sbuf, peer, TAG) for _ in range(window)])
                else:
                    for _ in range(window):
                        Send(sbuf, peer, TAG)
                Recv(ack, peer, TAG_ACK)
            else:
                if nonblocking:
                    waitall([Irecv(rbuf, peer, TAG) for _ in range(window)])
                else:
                    for _ in range(window):
                        Recv(rbuf, peer, TAG)
                Send(ack, peer, TAG_ACK)
    el, n = _drive(comm, rank, body, iters, warmup, cap)
    return {"elapsed": el, "iters": n, "t": el / (window * n),
            "window": window, "nonblocking": nonblocking}


def bandwidth_obj(comm, rank, obj, iters, warmup, window, cap=None):
    """osu_bw for lowercase send/recv: a window of blocking sends, a small ack."""
    peer = 1 - rank
    send, recv = comm.send, comm.recv

    def body(n):
        for _ in range(n):
            if rank == 0:
                for _ in range(window):
                    send(obj, peer, TAG)
                recv(source=peer, tag=TAG_ACK)
            else:
                for _ in range(window):
                    recv(source=peer, tag=TAG)
                send(b"ack", peer, TAG_ACK)
    el, n = _drive(comm, rank, body, iters, warmup, cap)
    return {"elapsed": el, "iters": n, "t": el / (window * n),
            "window": window, "nonblocking": False}


def barrier(comm, iters, warmup, cap=None):
    """osu_barrier: time per Barrier on this rank (the caller averages ranks)."""
    B = comm.Barrier

    def body(n):
        for _ in range(n):
            B()
    el, n = _drive(comm, comm.Get_rank(), body, iters, warmup, cap, comm.Get_size())
    return {"elapsed": el, "iters": n, "t": el / n}


def bcast(comm, buf, iters, warmup, cap=None):
    """osu_bcast: time per Bcast of ``buf`` from rank 0 on this rank."""
    B = comm.Bcast

    def body(n):
        for _ in range(n):
            B(buf, 0)
    el, n = _drive(comm, comm.Get_rank(), body, iters, warmup, cap, comm.Get_size())
    return {"elapsed": el, "iters": n, "t": el / n}


def allreduce(comm, sbuf, rbuf, op, iters, warmup, cap=None):
    """osu_allreduce: time per Allreduce(sbuf -> rbuf, op) on this rank."""
    A = comm.Allreduce

    def body(n):
        for _ in range(n):
            A(sbuf, rbuf, op)
    el, n = _drive(comm, comm.Get_rank(), body, iters, warmup, cap, comm.Get_size())
    return {"elapsed": el, "iters": n, "t": el / n}


def memcpy(size, iters, warmup, bufs=None, cap=None):
    """The physical limit of one copy: np.copyto in one process."""
    if bufs is None:
        src = np.ones(size, np.uint8)
        dst = np.zeros(size, np.uint8)
    else:
        src, dst = bufs
    copyto = np.copyto
    for _ in range(warmup):
        copyto(dst, src)
    block = max(1, -(-iters // 8))
    done, el = 0, 0.0
    while done < iters and not (cap is not None and el > cap):
        n = min(block, iters - done)
        t0 = perf_counter()
        for _ in range(n):
            copyto(dst, src)
        el += perf_counter() - t0
        done += n
    return {"elapsed": el, "iters": done, "t": el / done}
