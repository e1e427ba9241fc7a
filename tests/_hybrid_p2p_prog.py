"""A rank of a hybrid world (tests/test_hybrid_p2p.py): 2 emulated nodes x 2 ranks
(ranks 0, 1 on one node, 2, 3 on the other).  Point-to-point across nodes on both
of its protocols (records inline up to INLINE bytes; beyond, a request followed by
the data as MPI messages of their own), sizes around the threshold, both ways:
buffers (blocking, nonblocking, synchronous, truncated), objects with large arrays
and bytes, large pickles, tables longer than a record; order of small/large mixes
per pair, receives by tag out of order, ANY_SOURCE seeing both routes, Waitany and
Waitall over requests of both routes, probes; the fast paths' order when the engine
holds messages of other communicators or sources; a large blocking Send's buffer
written over as soon as it returns; the small-message route's shortcuts (a pool slot
restarted lazily, a sender's header reused), and the same lazy restart after a large
buffer's request or a small object taken by a blocking receive; an Isend that does
not wait for its receiver to enter MPI."""
import os
import sys
import time

import numpy as np

from driller import MPI, mmpi
from driller.mmpi import _hybrid

comm = MPI.COMM_WORLD
r, n = comm.Get_rank(), comm.Get_size()
assert n == 4
L = _hybrid.INLINE
assert L == int(os.environ.get("DRILLER_MMPI_REMOTE_INLINE", 16 << 10)), L
peer = (r + 2) % 4            # the same local index on the other node
local = r ^ 1                 # the other rank of this node
assert mmpi.route(comm, peer) == "mpi" and mmpi.route(comm, local) == "shm"
SIZES = sorted({0, 1, L - 64, L - 1, L, L + 1, L + 64, 4 * L, 65536, 1 << 20, 3_000_001})


def pattern(nbytes, seed):
    return (np.arange(nbytes, dtype=np.uint64) * 2654435761 + seed).astype(np.uint8)


# 1. buffers both ways around the threshold: blocking, then nonblocking, then Ssend
for mode in ("blocking", "nonblocking", "ssend"):
    for size in SIZES:
        out, got = pattern(size, r), np.empty(size, np.uint8)
        st = MPI.Status()
        if mode == "nonblocking":
            rq = [comm.Irecv(got, peer, 8), comm.Isend(out, peer, 8)]
            MPI.Request.Waitall(rq, [st, MPI.Status()])
        else:
            send = comm.Ssend if mode == "ssend" else comm.Send
            if r < 2:
                send(out, peer, 7)
                comm.Recv(got, peer, 7, st)
            else:
                comm.Recv(got, peer, 7, st)
                send(out, peer, 7)
        assert (got == pattern(size, peer)).all(), (mode, size)
        assert st.Get_source() == peer and st.Get_count(MPI.BYTE) == size, (mode, size)
comm.Barrier()

# 2. a receive buffer larger than the message; a truncated one (the error, the head of
# the message, and the next message intact)
for size in (L // 2, 4 * L):
    if r < 2:
        comm.Send(pattern(size, 1), peer, 10)
        comm.Send(pattern(size, 2), peer, 10)
        comm.Send(pattern(8, 3), peer, 10)
    else:
        big = np.zeros(size + 100, np.uint8)
        st = MPI.Status()
        comm.Recv(big, peer, 10, st)
        assert st.Get_count(MPI.BYTE) == size and (big[:size] == pattern(size, 1)).all()
        assert (big[size:] == 0).all()
        small = np.zeros(size // 2, np.uint8)
        try:
            comm.Recv(small, peer, 10)
        except MPI.Exception as e:
            assert e.Get_error_class() == MPI.ERR_TRUNCATE, e
        else:
            raise AssertionError("no truncation error")
        assert (small == pattern(size, 2)[:size // 2]).all()
        last = np.empty(8, np.uint8)
        comm.Recv(last, peer, 10)
        assert (last == pattern(8, 3)).all()
comm.Barrier()

# 3. objects across nodes, both ways: large arrays (out of band), large bytes and
# bytearray (kept as such), a large pickle without buffers, empty arrays, small objects;
# blocking, nonblocking and synchronous
objs = [
    {"r": r, "x": np.arange(500_000) * r, "b": bytes(200_000), "ba": bytearray(b"z" * 70_000)},
    {"r": r, "many": [np.full(70_000 // 8 + k, r + k, dtype=np.float64) for k in range(5)]},
    {"r": r, "plain": list(range(20_000)), "e": np.zeros(0), "s": "x" * (L + 5)},
    {"r": r, "tiny": 1},
    np.arange(L // 8 + 3, dtype=np.int64) * r,
]


def check_obj(i, o, src):
    if i == 0:
        assert o["r"] == src and (o["x"] == np.arange(500_000) * src).all()
        assert type(o["b"]) is bytes and o["b"] == bytes(200_000)
        assert type(o["ba"]) is bytearray and o["ba"] == bytearray(b"z" * 70_000)
    elif i == 1:
        assert all((a == src + k).all() and a.size == 70_000 // 8 + k
                   for k, a in enumerate(o["many"]))
    elif i == 2:
        assert o["plain"] == list(range(20_000)) and o["e"].size == 0 and o["s"] == "x" * (L + 5)
    elif i == 3:
        assert o == {"r": src, "tiny": 1}
    else:
        assert (o == np.arange(L // 8 + 3) * src).all()


for i, obj in enumerate(objs):
    if r < 2:
        comm.send(obj, peer, 20 + i)
        got = comm.recv(source=peer, tag=20 + i)
    else:
        got = comm.recv(source=peer, tag=20 + i)
        comm.send(obj, peer, 20 + i)
    check_obj(i, got, peer)
    rq = comm.irecv(source=peer, tag=30 + i)
    sq = comm.isend(obj, peer, 30 + i)
    check_obj(i, rq.wait(), peer)
    sq.wait()
    if r < 2:
        comm.ssend(obj, peer, 40 + i)
    else:
        check_obj(i, comm.recv(source=peer, tag=40 + i), peer)
comm.Barrier()

# 4. a table longer than a record: an object of many out-of-band buffers (rank 0 -> 2,
# rank 3 -> 1)
nparts = L // 24 + 10
if r in (0, 3):
    comm.send([np.full(65536 // 8, float(k + r)) for k in range(nparts)], 2 if r == 0 else 1, 50)
elif r in (1, 2):
    src = 0 if r == 2 else 3
    got = comm.recv(source=src, tag=50)
    assert len(got) == nparts and all((a == k + src).all() for k, a in enumerate(got))
comm.Barrier()

# 5. order per pair of a small/large mix under one tag, then received by tag out of
# order (the large messages' data are told apart by their own MPI tags)
mix = [8, L + 1, 3, 1 << 20, L, 2 * L, 0, 300_000, 5]
if r < 2:
    for k, size in enumerate(mix):
        comm.Send(pattern(size, k), peer, 60)
    # (nonblocking: a large message is received only once matched, as MPI's rendezvous)
    outs = [pattern(size, 100 + k) for k, size in enumerate(mix)]
    MPI.Request.Waitall([comm.Isend(o, peer, 70 + k) for k, o in enumerate(outs)])
    sent = [np.full(size, k, np.uint8) for k, size in enumerate(mix)]
    reqs = [comm.isend({"k": k, "a": a}, peer, 80) for k, a in enumerate(sent)]
    for a in sent:   # (isend sends the object as it was at the call, as mpi4py's)
        a[:] = 255
    MPI.Request.Waitall(reqs)
else:
    for k, size in enumerate(mix):
        got = np.empty(size, np.uint8)
        comm.Recv(got, peer, 60)
        assert (got == pattern(size, k)).all(), (k, size)
    for k in reversed(range(len(mix))):
        got = np.empty(mix[k], np.uint8)
        comm.Recv(got, peer, 70 + k)
        assert (got == pattern(mix[k], 100 + k)).all(), k
    for k, size in enumerate(mix):
        o = comm.recv(source=peer, tag=80)
        assert o["k"] == k and o["a"].size == size and (o["a"] == k).all()
comm.Barrier()

# 6. ANY_SOURCE sees both routes (rank 0 gets from 1 by shared memory, from 2 and 3 by
# MPI, small and large), order per source kept; probes see large remote messages
if r == 0:
    seen = {1: [], 2: [], 3: []}
    for _ in range(3 * len(mix)):
        st = MPI.Status()
        comm.Probe(MPI.ANY_SOURCE, 90, st)
        src, cnt = st.Get_source(), st.Get_count(MPI.BYTE)
        got = np.empty(cnt, np.uint8)
        comm.Recv(got, src, 90, st)
        k = len(seen[src])
        assert cnt == mix[k] and (got == pattern(cnt, 10 * src + k)).all(), (src, k)
        seen[src].append(cnt)
    assert all(v == mix for v in seen.values()), seen
    got = []
    for _ in range(3):
        st = MPI.Status()
        got.append((comm.recv(source=MPI.ANY_SOURCE, tag=91, status=st), st.Get_source()))
    assert sorted((o["r"], s) for o, s in got) == [(1, 1), (2, 2), (3, 3)]
    assert all((o["x"] == o["r"]).all() for o, _ in got)
else:
    for k, size in enumerate(mix):
        comm.Send(pattern(size, 10 * r + k), 0, 90)
    comm.send({"r": r, "x": np.full(200_000, r)}, 0, 91)
comm.Barrier()

# 7. Waitany / Waitall over requests of both routes (shared memory and MPI), large
# and small; Mprobe of a large remote message
bufs = {s: np.empty(sz, np.uint8) for s, sz in ((local, 2 * L), (peer, 3 * L))}
rq = [comm.Irecv(bufs[local], local, 95), comm.Irecv(bufs[peer], peer, 95)]
sq = [comm.Isend(pattern(2 * L, r), local, 95), comm.Isend(pattern(3 * L, r), peer, 95)]
done = set()
while len(done) < 2:
    done.add(MPI.Request.Waitany(rq))
MPI.Request.Waitall(sq)
assert (bufs[local] == pattern(2 * L, local)).all() and (bufs[peer] == pattern(3 * L, peer)).all()
if r < 2:
    comm.Send(pattern(5 * L, 7), peer, 96)
else:
    st = MPI.Status()
    m = comm.Mprobe(peer, 96, st)
    assert st.Get_count(MPI.BYTE) == 5 * L
    got = np.empty(5 * L, np.uint8)
    m.Recv(got)
    assert (got == pattern(5 * L, 7)).all()
comm.Barrier()

# 8. the fast paths across nodes (a buffer of more than INLINE bytes sent without the
# engine; a blocking receive taking the pool's head record) keep MPI's order when the
# engine holds something: (a) ANY_SOURCE receives without probes of interleaved small
# and large messages from both routes; (b) an unexpected message of another
# communicator from the same source does not stop the fast path, one of this
# communicator from the same source is received first; (c) an ANY_SOURCE receive
# posted before a receive from a given source takes the first message; (d) Sendrecv,
# persistent and synchronous sends of large buffers both ways
sizes = [8, L + 1, 0, L, 1 << 20, 3, L - 1, 2 * L, 65536, 1]
if r == 0:
    seen = {1: 0, 2: 0, 3: 0}
    got = np.empty(1 << 20, np.uint8)
    for _ in range(3 * len(sizes)):
        st = MPI.Status()
        comm.Recv(got, MPI.ANY_SOURCE, 100, st)
        src, k = st.Get_source(), seen[st.Get_source()]
        assert st.Get_count(MPI.BYTE) == sizes[k], (src, k, st.Get_count(MPI.BYTE))
        assert (got[:sizes[k]] == pattern(sizes[k], 20 * src + k)).all(), (src, k)
        seen[src] += 1
    assert seen == {1: len(sizes), 2: len(sizes), 3: len(sizes)}, seen
else:
    for k, size in enumerate(sizes):
        comm.Send(pattern(size, 20 * r + k), 0, 100)
comm.Barrier()
other = comm.Dup()
for size in (8, 4 * L):
    if r == 2:   # (nonblocking: a large standard send may wait for its receive)
        MPI.Request.Waitall([
            other.Isend(pattern(size, 1), 0, 101),   # (b) another communicator's, first
            comm.Isend(pattern(size, 2), 0, 101),
            comm.Isend(pattern(size, 3), 0, 102),    # same communicator, 102, then 101
            comm.Isend(pattern(size, 4), 0, 101),
            comm.Isend(pattern(size, 5), 0, 103),    # (c) to an ANY_SOURCE receive,
            comm.Isend(pattern(size, 6), 0, 103)])   # then to a receive from rank 2
    elif r == 0:
        while not other.Iprobe(2, 101):           # in the engine, unexpected
            pass
        a = np.empty(size, np.uint8)
        comm.Recv(a, 2, 101)
        assert (a == pattern(size, 2)).all()
        while not comm.Iprobe(2, 102):            # unexpected: comes before tag 101's
            pass
        comm.Recv(a, 2, 101)
        assert (a == pattern(size, 4)).all()
        comm.Recv(a, 2, 102)
        assert (a == pattern(size, 3)).all()
        other.Recv(a, 2, 101)
        assert (a == pattern(size, 1)).all()
        b = np.empty(size, np.uint8)
        rq = comm.Irecv(b, MPI.ANY_SOURCE, 103)
        st = MPI.Status()
        comm.Recv(a, 2, 103, st)
        rq.Wait()
        assert (b == pattern(size, 5)).all() and (a == pattern(size, 6)).all()
    comm.Barrier()
other.Free()
for size in (L - 1, L + 1, 1 << 20):
    got = np.empty(size, np.uint8)
    st = MPI.Status()
    comm.Sendrecv(pattern(size, r), peer, 104, got, peer, 104, st)
    assert (got == pattern(size, peer)).all() and st.Get_count(MPI.BYTE) == size
    out = pattern(size, r + 7)
    ps, pr = comm.Send_init(out, peer, 105), comm.Recv_init(got, peer, 105)
    for k in range(3):
        out[:] = pattern(size, r + k)
        MPI.Prequest.Startall([pr, ps])
        MPI.Request.Waitall([pr, ps])
        assert (got == pattern(size, peer + k)).all(), (size, k)
    ps.Free(), pr.Free()
    rq = comm.Irecv(got, peer, 106)
    comm.Ssend(pattern(size, r + 50), peer, 106) if r < 2 else comm.Issend(
        pattern(size, r + 50), peer, 106).Wait()
    rq.Wait()
    assert (got == pattern(size, peer + 50)).all()
comm.Barrier()

# a blocking Recv from another node that waits while this node's rank sends to it:
# the records from this node are handled during the wait (a posted receive from the
# local rank completes, messages it sent on this and another communicator arrive
# after, in order); a posted ANY_SOURCE receive on the communicator, or one posted
# from the remote source, keeps the order of both routes
import time  # noqa: E402

dup = comm.Dup()
for size in (8, 1 << 20):
    if r == 0:
        early = np.empty(size, np.uint8)
        rq = comm.Irecv(early, 1, 123)            # from this node: does not hold the wait
        big = np.empty(size, np.uint8)
        st = MPI.Status()
        comm.Recv(big, 2, 120, st)                # waits; rank 1's records arrive meanwhile
        assert (big == pattern(size, 20)).all() and st.Get_source() == 2, size
        rq.Wait()
        assert (early == pattern(size, 23)).all(), size
        for k in range(3):
            assert comm.recv(source=1, tag=121) == ("local", k, size)
            assert dup.recv(source=1, tag=121) == ("dup", k, size)
        anyq = comm.Irecv(early, MPI.ANY_SOURCE, 124)   # posted first: takes the first
        comm.Recv(big, 2, 124, st)                # of rank 2's, this one the second
        anyq.Wait(st)
        assert st.Get_source() == 2 and (early == pattern(size, 24)).all(), size
        assert (big == pattern(size, 25)).all(), size
    elif r == 1:
        comm.Send(pattern(size, 23), 0, 123)
        for k in range(3):
            comm.send(("local", k, size), 0, 121)
            dup.send(("dup", k, size), 0, 121)
    elif r == 2:
        time.sleep(0.001)                         # past the pure poll, within the spin
        comm.Send(pattern(size, 20), 0, 120)
        comm.Send(pattern(size, 24), 0, 124)
        comm.Send(pattern(size, 25), 0, 124)
    comm.Barrier()
dup.Free()

# 9. small messages across nodes on both record sends (up to SEND_MAX bytes a blocking
# MPI Send, beyond it an Isend) and the nonblocking fast paths (numpy arrays taken
# as bytes; a remote Irecv posted straight into the engine, completed by Wait, Waitany,
# Test): (a) order per pair of a mix around SEND_MAX and INLINE, received by Irecvs
# all posted before anything is sent, next to an ANY_SOURCE Irecv posted first that
# a message from the other node's rank takes; (b) a remote Irecv cancelled, the
# message meant for it received after; (c) probes of small remote records; (d) float64
# arrays by Isend/Irecv on both routes, their counts in doubles
S = _hybrid.SEND_MAX - 64
small_mix = [8, S, S + 1, 0, S - 1, L + 3, 1, 2 * S, 16]
if r in (0, 2):   # ranks 0 and 2 exchange; 1 and 3 send one message to 0 and 2
    srcp = 2 - r
    outs = [pattern(sz, 30 + k) for k, sz in enumerate(small_mix)]
    anyb = np.empty(64, np.uint8)
    ra = comm.Irecv(anyb, MPI.ANY_SOURCE, 110)
    gots = [np.empty(sz, np.uint8) for sz in small_mix]
    rq = [comm.Irecv(g, srcp, 110) for g in gots]
    comm.Barrier()
    st = MPI.Status()
    ra.Wait(st)      # (the other node's odd rank sends first: see below)
    assert st.Get_source() == 3 - r and (anyb[:5] == pattern(5, 3 - r)).all(), st.Get_source()
    comm.Barrier()
    sq = []
    for k, o in enumerate(outs):   # blocking and nonblocking sends, in turn
        if k % 2:
            sq.append(comm.Isend(o, srcp, 110))
        else:
            comm.Send(o, srcp, 110)
    done = set()
    while len(done) < len(rq):
        done.add(MPI.Request.Waitany(rq, st))
    MPI.Request.Waitall(sq)
    for k, g in enumerate(gots):
        assert (g == pattern(small_mix[k], 30 + k)).all(), k
else:
    comm.Barrier()
    comm.Send(pattern(5, r), 3 - r, 110)   # 1 -> 2, 3 -> 0: the ANY_SOURCE receive
    comm.Barrier()
comm.Barrier()
if r in (0, 2):
    srcp = 2 - r
    c = np.empty(8, np.uint8)
    rc = comm.Irecv(c, srcp, 111)
    rc.Cancel()
    st = MPI.Status()
    rc.Wait(st)
    assert st.Is_cancelled()
    comm.Barrier()
    comm.Send(pattern(8, r + 1), srcp, 111)
    comm.Send(pattern(S, r + 2), srcp, 112)
    st = MPI.Status()
    comm.Probe(srcp, 112, st)     # tag 111's message is ahead of it, still unreceived
    assert st.Get_count(MPI.BYTE) == S and st.Get_source() == srcp
    while not comm.Iprobe(srcp, 111, st):
        pass
    assert st.Get_count(MPI.BYTE) == 8
    comm.Recv(c, srcp, 111)
    assert (c == pattern(8, srcp + 1)).all()
    d = np.empty(S, np.uint8)
    comm.Recv(d, srcp, 112)
    assert (d == pattern(S, srcp + 2)).all()
else:
    comm.Barrier()
comm.Barrier()
for other_rank in (local, peer):
    x = np.arange(5, dtype=np.float64) + 10 * r
    y = np.empty(5, np.float64)
    rq = comm.Irecv(y, other_rank, 113)
    sq = comm.Isend(x, other_rank, 113)
    st = MPI.Status()
    while not rq.Test(st):
        pass
    sq.Wait()
    assert (y == np.arange(5) + 10 * other_rank).all() and st.Get_count(MPI.DOUBLE) == 5
    comm.Barrier()
comm.Barrier()

# 10. a large send to another node waits for its data message alone (blocking Send,
# Isend + Wait; Waitany mixes it with a receive): the records that arrive meanwhile
# (a burst of small, large and object messages from the receiver) stay in MPI's pool
# and are seen, in order, by a receive posted before the send (ANY_SOURCE), a probe,
# ANY_SOURCE/ANY_TAG receives, receives by tag out of order and an object receive
for size in (L + 1, 1 << 20):
    for mode in ("Send", "Isend+Wait", "Waitany"):
        for a, b in ((0, 2), (2, 0)):   # a sends the large message, b the burst
            if r == a:
                early, x135 = np.empty(8, np.uint8), np.empty(8, np.uint8)
                pre = comm.Irecv(early, MPI.ANY_SOURCE, 131)   # posted before it all
                comm.Barrier()
                big = pattern(size, 40 + a)
                if mode == "Send":
                    comm.Send(big, b, 130)
                elif mode == "Isend+Wait":
                    comm.Isend(big, b, 130).Wait()
                else:
                    rq = [comm.Irecv(x135, b, 135), comm.Isend(big, b, 130)]
                    done = [MPI.Request.Waitany(rq), MPI.Request.Waitany(rq)]
                    assert sorted(done) == [0, 1], done
                st = MPI.Status()
                pre.Wait(st)
                assert st.Get_source() == b and (early == pattern(8, 41)).all(), (size, mode)
                comm.Probe(b, MPI.ANY_TAG, st)
                assert st.Get_tag() == 132 and st.Get_count(MPI.BYTE) == 1, (size, mode)
                one = np.empty(1, np.uint8)
                comm.Recv(one, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
                assert st.Get_tag() == 132 and st.Get_source() == b, (size, mode)
                assert (one == pattern(1, 42)).all(), (size, mode)
                comm.Recv(one, b, 132, st)              # the 0-byte one, past 133 and 134
                assert st.Get_count(MPI.BYTE) == 0, (size, mode)
                comm.Recv(early, b, 131, st)            # the second of tag 131
                assert (early == pattern(8, 46)).all(), (size, mode)
                got = np.empty(size, np.uint8)
                comm.Recv(got, MPI.ANY_SOURCE, 133, st)
                assert st.Get_source() == b and (got == pattern(size, 43)).all(), (size, mode)
                assert comm.recv(source=b, tag=134) == {"size": size, "mode": mode}
                if mode != "Waitany":
                    comm.Recv(x135, b, 135)
                assert (x135 == pattern(8, 47)).all(), (size, mode)
            elif r == b:
                comm.Barrier()
                sq = [comm.Isend(pattern(8, 41), a, 131), comm.Isend(pattern(1, 42), a, 132),
                      comm.Isend(pattern(size, 43), a, 133)]
                comm.send({"size": size, "mode": mode}, a, 134)
                sq += [comm.Isend(pattern(0, 0), a, 132), comm.Isend(pattern(8, 46), a, 131),
                       comm.Isend(pattern(8, 47), a, 135)]
                got = np.empty(size, np.uint8)
                comm.Recv(got, a, 130)
                assert (got == pattern(size, 40 + a)).all(), (size, mode)
                MPI.Request.Waitall(sq)
            else:
                comm.Barrier()
            comm.Barrier()
comm.Barrier()

# 11. a blocking Send of a large buffer to another node returns only once the buffer may
# be used again (the receiver's MPI reads the data straight out of it, when the receive
# is matched): written over at once, it still arrives as sent to a receiver that matches
# it late (past the sender's yield-polling window: the general wait completes it); a
# small message with the same tag right behind it is received after it
for size in (L + 1, 1 << 20):
    if r < 2:
        buf = pattern(size, 50 + r)
        comm.Send(buf, peer, 140)
        buf[:] = 0
        comm.Send(pattern(8, 51), peer, 140)
    else:
        time.sleep(0.3)
        st = MPI.Status()
        got = np.empty(size, np.uint8)
        comm.Recv(got, peer, 140, st)
        assert st.Get_count(MPI.BYTE) == size, (size, st.Get_count(MPI.BYTE))
        assert (got == pattern(size, 50 + peer)).all(), size
        small = np.empty(8, np.uint8)
        comm.Recv(small, peer, 140)
        assert (small == pattern(8, 51)).all(), size
comm.Barrier()

# 12. the small-message route's shortcuts: a blocking receive leaves the pool slot it
# took to be started again at the next look at the pool (the next take, or any poll
# of MPI), and a sender reuses the header of its last buffer message when context,
# tag and size are the same.  Messages whose context, tag or size change one at a
# time (objects among them), in three bursts: one taken by a blocking receive (its
# slot left to restart), then more than the pool holds taken by ANY_SOURCE receives
# (the general path: the pool's head passes that slot), then more than the pool
# holds taken by blocking receives (each take passes the slot the last one left),
# then by every kind of receive in turn; each checked for its order, source, tag,
# size and bytes
dup = comm.Dup()
P = _hybrid.POOL
CYCLE = [(0, 20, 8), (0, 20, 8), (1, 20, 8), (1, 21, 8), (1, 21, 16), (0, 21, 16),
         (0, 20, 16), (0, 20, 8)]   # from one to the next, one of the three changes
plan = [((comm, dup)[c], tg, size, k % 11 == 5)
        for k, (c, tg, size) in enumerate(CYCLE[k % 8] for k in range(5 * P + 6))]
bursts = [(0, 1), (1, 2 * P + 1), (2 * P + 1, len(plan))]
go = np.zeros(1, np.uint8)


def in_bursts(plan, go_tag, room):
    """Send ``plan`` ((communicator, tag, size, object?) per message) from ranks 0, 1
    to 2, 3 in ``bursts`` (each once the receiver, with a message of ``go_tag``, says
    it is done with the one before); received by the kinds of receive named above
    (into a buffer of ``room`` bytes), each checked for order, source, tag, size, bytes."""
    if r < 2:
        for b, (lo, hi) in enumerate(bursts):
            if b:
                comm.Recv(go, r + 2, go_tag)
            for k in range(lo, hi):
                c, tg, size, obj = plan[k]
                if obj:
                    c.send(("obj", k, tg), r + 2, tg)
                else:
                    c.Send(pattern(size, k), r + 2, tg)
        return
    src = r - 2
    got = np.empty(room, np.uint8)
    for k, (c, tg, size, obj) in enumerate(plan):
        if k in (bursts[1][0], bursts[2][0]):
            comm.Send(go, src, go_tag)
        st = MPI.Status()
        how = "any" if k < bursts[2][0] and k else "blocking" if k < 4 * P + 2 else \
            ("blocking", "probe", "irecv", "any")[k % 4]
        if obj:
            if how == "any":
                o = c.recv(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st)
            else:
                o = c.recv(source=src, tag=tg, status=st)
            assert o == ("obj", k, tg) and st.Get_tag() == tg, (k, how, o)
            continue
        got[:] = 255
        if how == "blocking":
            c.Recv(got, src, tg, st)
        elif how == "probe":
            c.Probe(src, MPI.ANY_TAG, st)
            assert st.Get_tag() == tg and st.Get_count(MPI.BYTE) == size, (k, how)
            c.Recv(got, src, MPI.ANY_TAG, st)
        elif how == "irecv":
            c.Irecv(got, src, tg).Wait(st)
        else:
            c.Recv(got, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
        assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (src, tg, size), \
            (k, how, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))
        assert (got[:size] == pattern(size, k)).all() and (got[size:] == 255).all(), (k, how)
    assert not comm.Iprobe(src, MPI.ANY_TAG) and not dup.Iprobe(src, MPI.ANY_TAG)


in_bursts(plan, 19, 16)
comm.Barrier()

# 13. the same shortcut for the other records a blocking receive takes at the pool's
# head: a buffer's rendezvous request (its data received straight into the buffer)
# and a small object leave their slots to be started again at the next look at the
# pool too.  Large buffers (just past INLINE, and 1 MiB), small ones and small objects
# from one sender on two communicators, in the bursts of 12: the first taken by a
# blocking receive, then more than the pool holds by ANY_SOURCE receives, then more
# than the pool holds by blocking receives (large ones in a row among them), then by
# every kind of receive in turn; each checked for its order, source, tag, size and bytes
BIG = (L + 1, 1 << 20)
CYCLE = [(0, 30, BIG[0]), (0, 30, BIG[0]), (0, 30, 8), (1, 31, BIG[1]), (1, 30, BIG[0]),
         (0, 31, 0), (0, 30, BIG[1]), (1, 30, 16)]
plan = [((comm, dup)[c], tg, size, k % 7 == 3)
        for k, (c, tg, size) in enumerate(CYCLE[k % 8] for k in range(5 * P + 6))]
in_bursts(plan, 29, BIG[1] + 16)
comm.Barrier()

# 14. Send's path for a numpy array to another node (the array itself joined to the
# record's header: no memoryview, no cast; _hybrid._array_sender) and its fallbacks to
# the parsed path: other dtypes, byte order, layouts, sizes, subclasses; each arrives
# as the bytes the parsed path sends, in order with the others.  Then Isend of a
# buffer larger than a record to another node started by the transport itself
# (isend_buffer), not by the facade's general path (which fails here if used).
SMALL = min(_hybrid.SEND_MAX - 64, L)   # the largest array the array path takes
pair = [("x", "<i4"), ("y", "<f8")]
base = np.arange(64, dtype=np.float64) + r


def arrays(seed):
    """Arrays sent as their bytes: by the array path, or by the parsed one."""
    a = np.arange(64, dtype=np.float64) * 3 + seed
    return [a[:1], a[:0], a.astype(np.int32), a.astype(np.uint8), a.astype(bool),
            a.astype(np.float16), np.resize(a, SMALL // 8), np.resize(a, SMALL // 8 + 1),
            a.astype(np.complex128), np.array([(seed, seed)] * 3, pair),
            np.asfortranarray(a.reshape(8, 8)), np.ascontiguousarray(a.reshape(8, 8)[:, :4]),
            a.view(np.matrix), a.astype(np.int64)]


if r < 2:
    for k, a in enumerate(arrays(r)):
        comm.Send(a, peer, 40 + k)
    # the path taken for a plain one (its table entry for the peer: a function), and
    # for the rank of this node (False: the byte view first, for the rings)
    assert callable(comm._p.asends[peer]), comm._p.asends[peer]
    comm.Send(base[:1], local, 39)
    assert comm._p.asends[local] is False, comm._p.asends[local]
    got = np.empty(1)
    comm.Recv(got, local, 39)
    assert got[0] == local, got
    # what the parser refuses is refused as before (nothing sent)
    for bad in (base[::2], base.astype(">f8")):
        try:
            comm.Send(bad, peer, 38)
        except MPI.Exception as e:
            assert e.Get_error_class() == MPI.ERR_BUFFER, e
        else:
            raise AssertionError(f"sent {bad.dtype} {bad.strides}")
else:
    from driller.mmpi._bufspec import message
    for k, a in enumerate(arrays(peer)):
        want = bytes(message(a, False, "Send"))
        got = bytearray(len(want) + 8)
        st = MPI.Status()
        comm.Recv(got, peer, 40 + k, st)
        assert st.Get_count(MPI.BYTE) == len(want), (k, st.Get_count(MPI.BYTE), len(want))
        assert bytes(got[:len(want)]) == want, (k, a.dtype, a.shape)
comm.Barrier()
assert not comm.Iprobe(peer, 38)
big_out, big_in = pattern(L + 64, r), np.empty(L + 64, np.uint8)


def _general_isend(*args, **kw):
    raise AssertionError("Isend of a large buffer to another node took the general path")


comm.__dict__["_isend"] = _general_isend
try:
    rq = comm.Irecv(big_in, peer, 60)
    rs = comm.Isend(big_out, peer, 60)
finally:
    del comm.__dict__["_isend"]
MPI.Request.Waitall([rq, rs])
assert (big_in == pattern(L + 64, peer)).all()
comm.Barrier()

# 15. Wait on an Irecv from another node still posted (its record not handled yet):
# received as a blocking Recv receives (_hybrid._take_posted: no record handler, no
# engine match, no fetch) for a large buffer and a small one (the data right either
# way; taken by that path at least once: a record that comes after the path's window
# goes the general way, as it should, and the same-node peer's records are handled
# meanwhile, so the general path is watched, not forbidden); then the cases it leaves
# to the engine, as before: a receive too small (truncated), and a receive posted after
# an ANY_SOURCE one (each gets its message in order).
t = comm._p.t
go = np.zeros(1, np.uint8)
sizes = (L + 64, 8, 3 * L)
if r < 2:
    for k, size in enumerate(sizes):
        comm.Recv(go, peer, 62)
        comm.Send(pattern(size, k), peer, 63)
else:
    took = []
    take_posted = t._take_posted

    def _watched(op, src):
        res = take_posted(op, src)
        took.append(res)
        return res

    for k, size in enumerate(sizes[:2]):
        got = np.empty(size + 16, np.uint8)
        rq = comm.Irecv(got, peer, 63)
        st = MPI.Status()
        comm.Send(go, peer, 62)   # (sent on: the record is not handled before Wait)
        t.__dict__["_take_posted"] = _watched
        try:
            rq.Wait(st)
        finally:
            del t.__dict__["_take_posted"]
        assert (st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE)) == (peer, 63, size)
        assert (got[:size] == pattern(size, k)).all(), (k, size)
    assert True in took, f"Wait on a posted Irecv from another node never took it: {took}"
    small = np.empty(L, np.uint8)
    rq = comm.Irecv(small, peer, 63)
    comm.Send(go, peer, 62)
    try:
        rq.Wait()
    except MPI.Exception as e:
        assert e.Get_error_class() == MPI.ERR_TRUNCATE, e
    else:
        raise AssertionError("no truncation error")
comm.Barrier()
if r < 2:
    for k in range(2):
        comm.Send(pattern(L + 8 * k, k), peer, 64)
else:
    first, second = np.empty(L + 8, np.uint8), np.empty(L + 8, np.uint8)
    ra = comm.Irecv(first, MPI.ANY_SOURCE, 64)
    rb = comm.Irecv(second, peer, 64)
    sb, sa = MPI.Status(), MPI.Status()
    rb.Wait(sb)
    ra.Wait(sa)
    assert sa.Get_count(MPI.BYTE) == L and (first[:L] == pattern(L, 0)).all()
    assert sb.Get_count(MPI.BYTE) == L + 8 and (second == pattern(L + 8, 1)).all()
comm.Barrier()
dup.Free()
comm.Barrier()

# 11. an Isend to another node returns before its receiver enters MPI: a record of
# 720-1000 bytes went by a blocking MPI Send, which under Open MPI's shared memory
# waited for the receiver, so a receiver waiting (outside MPI) for word that the
# sender went on never got it.  Rank 2 waits for rank 0's flag file before receiving.
flag = os.path.join(sys.argv[1], "isent")
ISIZES = (8, 656, 800, 960, L + 1)
if r == 0:
    for k, size in enumerate(ISIZES):
        rq = comm.Isend(pattern(size, k), 2, 70 + k)
        open(f"{flag}{k}", "w").close()
        rq.Wait()
elif r == 2:
    for k, size in enumerate(ISIZES):
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{flag}{k}"):
            assert time.monotonic() < deadline, f"an Isend of {size} bytes waited for me"
            time.sleep(0.01)
        os.remove(f"{flag}{k}")
        got = np.empty(size, np.uint8)
        comm.Recv(got, 0, 70 + k)
        assert (got == pattern(size, k)).all(), size
comm.Barrier()
with open(os.path.join(sys.argv[1], f"ok{r}"), "w") as f:
    f.write("ok")
