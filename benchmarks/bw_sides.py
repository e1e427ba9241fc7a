"""osu_bw's 8 B window with the receives posted first, each phase on its own
(issue 12): CPU per message of posting the 64 ``Irecv``, the 64 ``Isend``,
the senders' ``Waitall`` and the receivers' ``Waitall`` (whose progress pass
matches the ring's records with the posted receives), osu's own calls
(``[mmap, 8, MPI.BYTE]``, one spec list per side, a request list
overwritten).  Both ranks in one process, as benchmarks/mmpi_cpu.py;
``time.process_time`` around each phase (its own cost, ≈ 0.03 µs per
message, is in every figure), 3000 windows.  ``--take``: the 64 ``Isend``
first, then the 64 ``Irecv``, each taking its record at once (osu_bw's
receiver between processes, running just behind its sender).

    .venv/bin/python benchmarks/bw_sides.py [--take]
"""

import mmap
import sys
import time

from driller import MPI
from driller.mmpi import _comm as C
from driller.mmpi import _transport as T
from driller.mmpi import _world as W


def main() -> None:
    fd = W.create_world(2)
    t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
    c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    sbuf, rbuf = mmap.mmap(-1, 1 << 22), mmap.mmap(-1, 1 << 22)
    s_msg, r_msg = [sbuf, 8, MPI.BYTE], [rbuf, 8, MPI.BYTE]
    window = 64
    sreqs = [MPI.REQUEST_NULL] * window
    rreqs = [MPI.REQUEST_NULL] * window
    js = list(range(window))
    pc = time.process_time
    acc = [0.0] * 4
    n = 3000
    take = "--take" in sys.argv[1:]
    for _ in range(n):
        if take:
            b = pc()
            for j in js:
                sreqs[j] = c0.Isend(s_msg, 1, 100)
            c = pc()
            for j in js:
                rreqs[j] = c1.Irecv(r_msg, 0, 100)
            a = pc()
            acc[0] += a - c
            acc[1] += c - b
            c = pc()
        else:
            a = pc()
            for j in js:
                rreqs[j] = c1.Irecv(r_msg, 0, 100)
            b = pc()
            for j in js:
                sreqs[j] = c0.Isend(s_msg, 1, 100)
            c = pc()
            acc[0] += b - a
            acc[1] += c - b
        MPI.Request.Waitall(sreqs)
        d = pc()
        MPI.Request.Waitall(rreqs)
        e = pc()
        acc[2] += d - c
        acc[3] += e - d
    names = ["64 Irecv " + ("taking" if take else "posted"), "64 Isend", "Waitall (sends)",
             "Waitall (receives)"]
    per = [v / n / window * 1e6 for v in acc]
    print("; ".join(f"{k}: {v:.3f}" for k, v in zip(names, per)) + " us CPU per message")
    print(f"receiver {per[0] + per[3]:.3f} us, sender {per[1] + per[2]:.3f} us per message")


if __name__ == "__main__":
    main()
