"""Two threads inside mmpi at once: an error, never lost or mixed messages.

mmpi is single-threaded (THREAD_SINGLE).  Before the guard (mmpi/_threads.py), two
threads of a rank sending at once lost messages silently (both wrote the record at
the ring's head), and a thread probing while another waited moved records under
it.  Now the second thread gets MmpiError before its call touches anything; calls
from several threads one at a time still work; a program that never starts a thread
keeps the plain methods.  Real ranks (`driller run`), real threads.
"""

from __future__ import annotations

from test_mmpi_trust import driller_run

_POOL = """
STOP = True   # send until the guard refuses one (at most 20 N each)
import sys, threading, numpy as np
from concurrent.futures import ThreadPoolExecutor
from driller import MPI
from driller.errors import MmpiError
sys.setswitchinterval(1e-6)   # the GIL changes hands inside calls, often
comm = MPI.COMM_WORLD
N = 3000
if comm.Get_rank() == 0:
    sent, errors, together = {1: 0, 2: 0}, [], threading.Barrier(2)
    def work(k):
        together.wait()   # both threads send from the same moment on
        for i in range(N * 20 if STOP else N):
            if STOP and errors:   # (the other thread was refused: enough)
                return
            try:
                comm.Send(np.array([k, i], dtype=np.int64), dest=1, tag=k)
            except MmpiError as e:
                errors.append(str(e))
                return
            sent[k] += 1
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(work, [1, 2]))
    comm.send(sent, dest=1, tag=99)   # what each thread sent: all of it must arrive
    print("ERRORS", len(errors), errors[0] if errors else "", flush=True)
else:
    got, buf, st = {1: 0, 2: 0}, np.zeros(2, dtype=np.int64), MPI.Status()
    bad = 0
    while True:
        comm.Probe(source=0, tag=MPI.ANY_TAG, status=st)   # (the next one, in order)
        if st.Get_tag() == 99:
            sent = comm.recv(source=0, tag=99)
            break
        comm.Recv(buf, source=0, tag=MPI.ANY_TAG, status=st)
        k, i = int(buf[0]), int(buf[1])
        bad += st.Get_tag() != k or i != got.get(k, -1)
        got[k] = got.get(k, -1) + 1
    print("RECEIVED", got == sent, bad, got, sent, flush=True)
"""


def test_two_threads_sending_at_once_get_an_error_not_lost_messages():
    # integ18: no error, and the receiver saw fewer messages than were sent
    # (two threads' records written at the same place of the ring)
    r = driller_run(2, _POOL, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("ERRORS")]
    assert errors and not errors[0].startswith("ERRORS 0"), r.stdout
    assert "Comm.Send called from thread 'ThreadPoolExecutor-0_" in errors[0], errors[0]
    assert "is inside Comm.Send" in errors[0] and "THREAD_SINGLE" in errors[0]
    assert "hold one lock around every mmpi call" in errors[0]
    assert "RECEIVED True 0" in r.stdout, r.stdout


def test_threads_taking_turns_under_a_lock_lose_nothing():
    # THREAD_SERIALIZED use (mpi4py.futures' manager thread, a lock around each
    # call) is not refused: the same pool, each Send under one lock
    code = _POOL.replace("STOP = True", "STOP = False").replace(
        "            try:\n                comm.Send(",
                         "            try:\n                with LOCK: comm.Send(")
    code = code.replace("from driller import MPI\n",
                        "from driller import MPI\nimport threading\nLOCK = threading.Lock()\n")
    assert "with LOCK: comm.Send(" in code
    r = driller_run(2, code, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERRORS 0" in r.stdout and "RECEIVED True 0 {1: 3000, 2: 3000}" in r.stdout, \
        r.stdout


_PROBE_WHILE_WAITING = """
import threading
from driller import MPI
from driller.errors import MmpiError
comm = MPI.COMM_WORLD
inside, done, seen = threading.Event(), threading.Event(), []

def query(status):   # runs inside the main thread's Wait (its call is in progress)
    inside.set()
    done.wait()

req = comm.Irecv(bytearray(8), source=MPI.ANY_SOURCE, tag=99)   # (never sent)
CALLS = [   # a poller thread, as users write them; each progresses the transport
    lambda: comm.Iprobe(source=MPI.ANY_SOURCE),
    lambda: MPI.Request.Testall([req]),          # class methods
    lambda: MPI.Request.Get_status_all([req]),
    lambda: MPI.Prequest.Startall([]),
    lambda: req.Get_status(),                    # a Get_ that is not a local read
    lambda: MPI.Flush_buffer(),                  # a module function
]

def background():
    inside.wait()
    for call in CALLS:
        try:
            call()
        except MmpiError as e:
            seen.append(str(e))
    done.set()

t = threading.Thread(target=background, name="poller")
t.start()
g = MPI.Grequest.Start(query)
g.Complete()
g.Wait()
t.join()
print("SEEN", seen, flush=True)
req.Cancel(); req.Wait()
comm.Barrier()   # the refused calls left nothing behind: the rank still communicates
print("OK", comm.allreduce(1), flush=True)
"""


def test_a_thread_polling_while_another_waits_inside_mmpi_gets_an_error():
    # integ18: the poller's Iprobe ran inside the other thread's call (drained the
    # rings under it); now it raises at once, naming both threads and calls
    r = driller_run(2, _PROBE_WHILE_WAITING)
    assert r.returncode == 0, r.stderr[-3000:]
    # (and the class methods, the Get_status ones and the module functions that
    # progress the transport: the review found those unguarded, messages mixed)
    seen = [line for line in r.stdout.splitlines() if line.startswith("SEEN")]
    assert len(seen) == 2, r.stdout
    names = ["Comm.Iprobe", "Request.Testall", "Request.Get_status_all",
             "Prequest.Startall", "Request.Get_status", "MPI.Flush_buffer"]
    for line in seen:
        assert line.count(" called from thread ") == len(names), line
        for name in names:
            assert f"{name} called from thread 'poller' while thread 'MainThread' is " \
                   "inside Request.Wait" in line, (name, line)
    assert r.stdout.count("OK 2") == 2, r.stdout


def test_a_program_without_threads_keeps_the_plain_methods():
    # the guard costs nothing until a second thread exists: the methods are the
    # classes' own functions (no wrapper on the 8-byte path); the first thread
    # started puts it in place
    r = driller_run(2, """
import threading
from driller import MPI
from driller.mmpi import _threads
comm = MPI.COMM_WORLD
comm.Barrier()
before = (_threads.installed(), hasattr(MPI.Comm.Send, "__wrapped__"))
t = threading.Thread(target=lambda: None)
t.start(); t.join()
after = (_threads.installed(), hasattr(MPI.Comm.Send, "__wrapped__"),
         hasattr(MPI.Intracomm.Bcast, "__wrapped__"), hasattr(MPI.Comm.Get_rank, "__wrapped__"))
comm.Barrier()
print("GUARD", before, after, threading.getprofile(), flush=True)
""")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("GUARD (False, False) (True, True, True, False) None") == 2, r.stdout


def test_the_refusal_names_the_call_the_holder_has_just_entered():
    # CI (3.10): "... while thread 'ThreadPoolExecutor-0_1' is inside : mmpi is
    # single-threaded": the refused thread read the holder's call name before the
    # holder, which had taken the slot, wrote it.  The holder is stopped here just
    # after taking the slot (a line tracer in its thread), the other thread calls.
    import sys
    import threading

    import pytest

    from driller.errors import MmpiError
    from driller.mmpi import _threads

    entered, refused, seen = threading.Event(), threading.Event(), []

    def tracer(frame, event, arg):
        if frame.f_code.co_name != "call" or frame.f_code.co_filename != _threads.__file__:
            return None

        def line(frame, event, arg):
            if event == "line" and "holder" in frame.f_locals and not entered.is_set():
                entered.set()   # the slot is taken, nothing else done yet
                refused.wait(30)
            return line
        return line

    def outer():
        return "done"

    def inner():
        return "never"

    held = _threads._guarded(outer, "Comm.Outer")
    other = _threads._guarded(inner, "Comm.Other")

    def holder():
        sys.settrace(tracer)
        try:
            seen.append(held())
        finally:
            sys.settrace(None)

    t = threading.Thread(target=holder, name="holder")
    t.start()
    try:
        assert entered.wait(30)
        with pytest.raises(MmpiError) as e:
            other()
    finally:
        refused.set()
        t.join(30)
    assert "Comm.Other called from thread 'MainThread' while thread 'holder' is " \
           "inside Comm.Outer: mmpi is single-threaded" in str(e.value), str(e.value)
    assert seen == ["done"] and not _threads._slot   # the holder's call went on, and left
    assert other() == "never"                         # the slot free again
