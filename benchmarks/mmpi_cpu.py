"""CPU cost of the mmpi fast paths, in one process (no waiting, no scheduler).

Two transports (ranks 0 and 1) over one world block in this process; a blocking
``Send`` + ``Recv`` pair (8 B numpy buffers) and a ``send`` + ``recv`` pair (a
small int) go through the rings exactly as between processes.  Reports the best
of 15 repeats of process CPU time per pair, which is far steadier than wall time
on a shared VM.

    .venv/bin/python benchmarks/mmpi_cpu.py
"""

import time
import timeit

import numpy as np

from driller.mmpi import _comm as C
from driller.mmpi import _transport as T
from driller.mmpi import _world as W


def main():
    fd = W.create_world(2)
    t0, t1 = T.Transport(W.World(fd), 0), T.Transport(W.World(fd), 1)
    c0, c1 = C.Comm(t0, [0, 1], 0, "w"), C.Comm(t1, [0, 1], 0, "w")
    a, b = np.ones(8, np.uint8), np.zeros(8, np.uint8)

    def pair():
        c0.Send(a, 1, 1)
        c1.Recv(b, 0, 1)

    def opair():
        c0.send(5, 1, 1)
        c1.recv(source=0, tag=1)

    n = 20000
    for name, f in [("Send+Recv (8 B)", pair), ("send+recv (int)", opair)]:
        best = min(timeit.Timer(f, timer=time.process_time).repeat(number=n, repeat=15))
        print(f"{name}: {best / n * 1e6:.2f} us CPU per pair")


if __name__ == "__main__":
    main()
