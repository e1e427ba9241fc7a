"""A rank of a hybrid world (tests/test_hybrid_interrupted.py): 2 emulated nodes x 1
rank.  Rank 0 sends 2 MiB to rank 1 (a rendezvous across nodes: MPI carries the
data), then 8 bytes; rank 1's receive is interrupted once as the transfer's
completion runs (a real SIGUSR1 to its own thread at the engine's ``fetched``,
called from the hybrid's ``_poll_data``); rank 1 catches the handler's exception,
waits again, and writes what it saw into argv[1]/result."""
import os
import signal
import sys
import threading

import numpy as np

from driller import MPI

comm = MPI.COMM_WORLD
N = 2 << 20
pattern = ((np.arange(N, dtype=np.uint32) * 7) % 251).astype(np.uint8)


class Boom(Exception):
    pass


def on_usr1(*_):
    raise Boom()


if comm.Get_rank() == 0:
    comm.Recv(np.empty(1, np.uint8), source=1, tag=9)   # rank 1's receive is posted
    comm.Send(pattern, dest=1, tag=1)
    comm.Send(np.full(8, 99, np.uint8), dest=1, tag=3)
    comm.Recv(np.empty(1, np.uint8), source=1, tag=0)
    sys.exit(0)

t = comm._t
signal.signal(signal.SIGUSR1, on_usr1)
fetched = t.engine.fetched
shots = [1]


def cut_fetched(r):
    f = sys._getframe(1)
    while f is not None and f.f_code.co_name != "_poll_data":
        f = f.f_back
    if f is not None and shots[0]:
        shots[0] -= 1
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    return fetched(r)


t.engine.fetched = cut_fetched
buf = np.zeros(N, np.uint8)
req = comm.Irecv(buf, source=0, tag=1)
comm.Send(np.zeros(1, np.uint8), dest=0, tag=9)
raised = 0
while True:
    try:
        req.Wait()
        break
    except Boom:
        raised += 1
small = np.zeros(8, np.uint8)
st = MPI.Status()
comm.Recv(small, source=0, tag=MPI.ANY_TAG, status=st)
comm.Send(np.zeros(1, np.uint8), dest=0, tag=0)
with open(os.path.join(sys.argv[1], "result"), "w") as out:
    out.write(repr((raised, shots[0], bool(np.array_equal(buf, pattern)), st.Get_tag(),
                    bool((small == 99).all()), len(t._data_recvs), len(t.ends))))
