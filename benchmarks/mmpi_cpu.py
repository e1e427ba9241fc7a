"""CPU cost of the mmpi fast paths, in one process (no waiting, no scheduler).

Two transports (ranks 0 and 1) over one world block in this process; blocking
``Send`` + ``Recv`` pairs (8 B, a bare numpy buffer and the mpi4py buffer specs
``[buf, n, MPI.BYTE]`` and ``[buf, MPI.DOUBLE]``), a window of 64 ``Isend`` of
8 B completed by ``Waitall`` then received (osu_bw's pattern, per message), the
exact calls of mpi4py's ``osu_latency.py`` / ``osu_bw.py`` (mmap buffers, one
spec list reused, a request list overwritten), the layers under them (the
transport's per-peer closures, ``spec_view``), a
``send`` + ``recv`` pair (a small int) go through the rings exactly as between
processes.  "floor" is the least Python a matched ring hand-over can be: a
writer and a reader function on a ring of another world block (a header packed
with one ``struct`` call, one slice copy, the head / tail words), no checks, no
API; how far the API pairs are above it is what the API costs.  Reports the best of 15 repeats of process CPU time per pair, which
is far steadier than wall time on a shared VM.

    .venv/bin/python benchmarks/mmpi_cpu.py [--profile NAME]

``--profile NAME`` runs one case under cProfile instead and prints where its
time goes (the per-layer costs quoted in docs/mmpi.md).
"""

import mmap
import sys
import time
import timeit

import numpy as np

from driller import MPI
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T
from driller.mmpi import _world as W
try:
    from driller.mmpi._bufspec import spec_view
except ImportError:   # a tree from before issue 12 (osu_compare --base-src style comparisons)
    spec_view = None


def cases():
    fd = W.create_world(2)
    t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
    c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    a, b = np.ones(8, np.uint8), np.zeros(8, np.uint8)
    sa, sb = [a, 8, MPI.BYTE], [b, 8, MPI.BYTE]
    da, db = np.ones(1, np.float64), np.zeros(1, np.float64)
    ta, tb = [da, MPI.DOUBLE], [db, MPI.DOUBLE]
    window = 64
    bufs = [np.zeros(8, np.uint8) for _ in range(window)]
    rspecs = [[x, 8, MPI.BYTE] for x in bufs]

    def pair():
        c0.Send(a, 1, 1)
        c1.Recv(b, 0, 1)

    def spec_pair():
        c0.Send(sa, 1, 1)
        c1.Recv(sb, 0, 1)

    def typed_pair():
        c0.Send(ta, 1, 1)
        c1.Recv(tb, 0, 1)

    ma8, mb8 = mmap.mmap(-1, 1 << 22), mmap.mmap(-1, 1 << 22)   # osu's allocate()
    osa, osb = [ma8, 8, MPI.BYTE], [mb8, 8, MPI.BYTE]
    reqs = [MPI.REQUEST_NULL] * window
    js = list(range(window))

    def osu_pair():  # osu_latency.py's loop body (rank 0's Send, rank 1's Recv)
        c0.Send(osa, 1, 1)
        c1.Recv(osb, 0, 1)

    def osu_window():  # osu_bw.py's window, as the demo writes it (per message)
        for j in js:
            reqs[j] = c0.Isend(osa, 1, 100)
        MPI.Request.Waitall(reqs)
        for j in js:
            reqs[j] = c1.Irecv(osb, 0, 100)
        MPI.Request.Waitall(reqs)

    rreqs = [MPI.REQUEST_NULL] * window

    def osu_posted():  # osu_bw's window, the receiver's 64 Irecv posted before the data
        for j in js:
            rreqs[j] = c1.Irecv(osb, 0, 100)
        for j in js:
            reqs[j] = c0.Isend(osa, 1, 100)
        MPI.Request.Waitall(reqs)
        MPI.Request.Waitall(rreqs)

    def window_pair():  # per message: osu_bw's window (Isend x64, Waitall; Irecv x64)
        C.Request.Waitall([c0.Isend(sa, 1, 100) for _ in range(window)])
        C.Request.Waitall([c1.Irecv(r, 0, 100) for r in rspecs])

    def transport_pair():  # the transport's fast paths alone (the floor under Send/Recv)
        t0.send_fast(1, 0, 1, ma)
        t1.recv_fast(0, 1, 0, mb)

    ma, mb = memoryview(a), memoryview(b)

    def parse_only():  # spec_view of both specs: the buffer-spec layer alone
        spec_view(sa, False)
        spec_view(sb, True)

    def posted_window():  # the receives posted first (osu_bw's receiver when it is ahead)
        rr = [c1.Irecv(r, 0, 100) for r in rspecs]
        C.Request.Waitall([c0.Isend(sa, 1, 100) for _ in range(window)])
        C.Request.Waitall(rr)

    def ahead_window():  # the receiver ran ahead: 8 receives posted, then the data came
        rr = [c1.Irecv(r, 0, 100) for r in rspecs[:8]]
        C.Request.Waitall([c0.Isend(sa, 1, 100) for _ in range(window)])
        rr += [c1.Irecv(r, 0, 100) for r in rspecs[8:]]
        C.Request.Waitall(rr)

    layers = []
    if hasattr(t0, "senders"):   # this tree's per-peer closures (issue 12, second round)
        snd, tk = t0.senders[1], t1.takers[0]
        bv, mvb = bytes(8), memoryview(mb8)[:8]

        def closure_pair():   # the transport's per-peer closures alone
            snd(0, 1, bv)
            tk(1, 0, mvb)

        def osu_specs():      # spec_view of osu's two specs, as Send and Recv call it
            spec_view(osa, False, True)
            spec_view(osb, True)

        layers = [("layer: senders[1] + takers[0] closures (8 B)", closure_pair, 1),
                  ("layer: spec_view of osu's [mmap, 8, BYTE] (send copy + recv view)",
                   osu_specs, 1)]

    # the floor: a minimal writer and reader on a ring of their own world block
    w = W.World(W.create_world(2))
    rb, ctrl = w.ring_bytes, w.ring_ctrl(0, 1)
    fdata, fwords = w.data, w.words
    fbase, fhw, ftw = ctrl + W.RING_CTRL, ctrl // 8 + W.G_HEAD, ctrl // 8 + W.G_TAIL
    fpack, funpack = T.HDR.pack_into, T._HDR5.unpack_from
    fmsg, fbuf = bytes(8), mmap.mmap(-1, 4096)   # (osu: an mmap receive buffer)
    fstate = [fwords[fhw], fwords[ftw]]   # the writer's head, the reader's tail

    def fsend(msg):
        head = fstate[0]
        p = fbase + head % rb
        fpack(fdata, p, T.K_EAGER, 0, 1, 8, 0, 0, 8, 0)
        fdata[p + 64:p + 72] = msg
        head += 128
        fstate[0] = fwords[fhw] = head

    def frecv(buf):
        t = fstate[1]
        if fwords[fhw] != t:
            p = fbase + t % rb
            kf, c, tg, nb, plen = funpack(fdata, p)
            p += 64
            buf[0:nb] = fdata[p:p + nb]
            t += 64 + ((plen + 63) & ~63)
            fstate[1] = fwords[ftw] = t

    def floor_pair():
        fsend(fmsg)
        frecv(fbuf)

    def opair():
        c0.send(5, 1, 1)
        c1.recv(source=0, tag=1)

    return [("Send+Recv (8 B)", pair, 1), ("Send+Recv [buf, 8, BYTE]", spec_pair, 1),
            ("Send+Recv [buf, DOUBLE]", typed_pair, 1),
            ("osu_latency: Send+Recv [mmap, 8, BYTE]", osu_pair, 1),
            ("osu_bw: window of 64 Isend [mmap, 8, BYTE] + Waitall, Irecv x64 + Waitall",
             osu_window, window),
            ("osu_bw: the same window, the 64 Irecv posted first", osu_posted, window),
            ("Isend+Irecv window of 64 (8 B)", window_pair, window),
            ("Irecv posted first, window of 64 (8 B)", posted_window, window),
            ("8 Irecv posted first, then 56 (8 B, per message)", ahead_window, window),
            ("send+recv (int)", opair, 1),
            ("transport only: send_fast+recv_fast (8 B)", transport_pair, 1),
            ("spec_view x2 ([buf, 8, BYTE])", parse_only, 1)][:None if spec_view else -1] + layers + [
            ("floor: a bare ring writer + reader, header and copy (8 B, no API)", floor_pair, 1)]


def main():
    cs = cases()
    if len(sys.argv) > 2 and sys.argv[1] == "--profile":
        import cProfile
        import pstats
        f = next(f for name, f, _ in cs if sys.argv[2] in name)
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(20000 // next(k for name, g, k in cs if g is f)):
            f()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)
        return
    n = 20000
    for name, f, k in cs:
        best = min(timeit.Timer(f, timer=time.process_time).repeat(number=n // k, repeat=15))
        print(f"{name}: {best / (n // k * k) * 1e6:.2f} us CPU per pair")


if __name__ == "__main__":
    main()
