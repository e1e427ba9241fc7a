"""The mmpi matching engine, in one process: no I/O, exhaustive and fast."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driller.mmpi import _engine as E
from driller.mmpi._engine import (ACK, ANY_SOURCE, ANY_TAG, EAGER, ERR_TRUNCATE, FIN, RNDV,
                                  Complete, Deliver, Engine, Fetch, Message, Receive, Reply,
                                  Send, Transmit)


def msg(src, tag, ctx=0, n=8, proto=EAGER, sync=False, sid=0):
    return Message(src, tag, ctx, n, proto, sync, sid)


def kinds(actions):
    return [type(a).__name__ for a in actions]


# ------------------------------------------------------------------ matching

def test_posted_then_arrival_matches():
    e = Engine()
    r = Receive(1, 5, 0, 64)
    assert e.post(r) == [] and r.state == "posted"
    m = msg(1, 5)
    acts = e.arrive(m)
    assert kinds(acts) == ["Deliver", "Complete"]
    assert acts[0].receive is r and acts[0].message is m and acts[1].op is r
    assert r.state == "done" and r.message is m and not e.posted and not e.unexpected


def test_arrival_then_post_matches_from_unexpected_queue():
    e = Engine()
    m = msg(2, 1)
    assert e.arrive(m) == [] and e.unexpected == [m]
    r = Receive(2, 1, 0, 64)
    assert kinds(e.post(r)) == ["Deliver", "Complete"]
    assert e.unexpected == []


def test_no_match_on_other_source_tag_or_context():
    e = Engine()
    e.post(Receive(1, 5, 0, 64))
    for m in (msg(2, 5), msg(1, 6), msg(1, 5, ctx=2)):
        assert e.arrive(m) == []
    assert len(e.unexpected) == 3 and len(e.posted) == 1


def test_wildcards_match_but_never_the_context():
    e = Engine()
    r = Receive(ANY_SOURCE, ANY_TAG, 4, 64)
    e.post(r)
    assert e.arrive(msg(3, 9, ctx=5)) == []
    assert kinds(e.arrive(msg(7, 123, ctx=4))) == ["Deliver", "Complete"]


def test_earliest_posted_receive_wins():
    e = Engine()
    r1, r2, r3 = Receive(ANY_SOURCE, 1, 0), Receive(0, ANY_TAG, 0), Receive(0, 1, 0)
    for r in (r1, r2, r3):
        e.post(r)
    assert e.arrive(msg(0, 1))[0].receive is r1
    assert e.arrive(msg(0, 1))[0].receive is r2
    assert e.arrive(msg(0, 1))[0].receive is r3


def test_earliest_unexpected_message_wins_non_overtaking():
    e = Engine()
    ms = [msg(0, 1, sid=i) for i in range(3)] + [msg(1, 1, sid=9)]
    for m in ms:
        e.arrive(m)
    got = [e.post(Receive(ANY_SOURCE, ANY_TAG, 0))[0].message.sender_id for _ in range(4)]
    assert got == [0, 1, 2, 9]


def test_specific_tag_skips_earlier_other_tags():
    e = Engine()
    a, b, c = msg(0, 1, sid=1), msg(0, 2, sid=2), msg(0, 1, sid=3)
    for m in (a, b, c):
        e.arrive(m)
    assert e.post(Receive(0, 2, 0))[0].message is b
    assert e.post(Receive(0, 1, 0))[0].message is a
    assert e.post(Receive(0, ANY_TAG, 0))[0].message is c


def test_probe_does_not_consume_and_take_does():
    e = Engine()
    m = msg(3, 4)
    e.arrive(m)
    assert e.probe(ANY_SOURCE, ANY_TAG, 0) is m
    assert e.probe(3, 4, 0) is m and e.probe(3, 5, 0) is None and e.probe(3, 4, 1) is None
    assert e.unexpected == [m]
    e.take(m)
    assert e.probe(ANY_SOURCE, ANY_TAG, 0) is None


def test_cancel_only_unmatched_receives():
    e = Engine()
    r = Receive(0, 0, 0)
    e.post(r)
    assert e.cancel(r) and r.state == "cancelled" and not e.posted
    assert e.arrive(msg(0, 0)) == []  # a cancelled receive matches nothing
    r2 = Receive(0, 0, 0)
    e.post(r2)  # takes the message
    assert r2.state == "done" and not e.cancel(r2)
    r3 = Receive(0, 0, 0)
    assert e.cancel(r3) and r3.state == "cancelled"  # never posted


def test_double_post_is_refused():
    e = Engine()
    r = Receive(0, 0, 0)
    e.post(r)
    with pytest.raises(ValueError):
        e.post(r)


def test_truncation_is_flagged_and_message_consumed():
    e = Engine()
    r = Receive(0, 0, 0, capacity=4)
    e.post(r)
    acts = e.arrive(msg(0, 0, n=5))
    assert kinds(acts) == ["Deliver", "Complete"] and r.error == ERR_TRUNCATE
    r2 = Receive(0, 0, 0, capacity=5)
    e.post(r2)
    e.arrive(msg(0, 0, n=5))
    assert r2.error == 0
    r3 = Receive(0, 0, 0, capacity=None)  # objects: unlimited
    e.post(r3)
    e.arrive(msg(0, 0, n=10**9, proto=RNDV))
    assert r3.error == 0


# ------------------------------------------------------------------ protocols

def test_sync_eager_match_sends_ack():
    e = Engine()
    e.post(Receive(2, 0, 0))
    acts = e.arrive(msg(2, 0, sync=True, sid=77))
    assert kinds(acts) == ["Deliver", "Reply", "Complete"]
    assert acts[1] == Reply(ACK, 2, 77)


def test_rendezvous_fetch_then_fin():
    e = Engine()
    r = Receive(1, 0, 0)
    e.post(r)
    acts = e.arrive(msg(1, 0, n=10**6, proto=RNDV, sid=5))
    assert kinds(acts) == ["Fetch"] and r.state == "fetching"
    acts = e.fetched(r)
    assert acts[0] == Reply(FIN, 1, 5) and kinds(acts) == ["Reply", "Complete"]
    assert r.state == "done"
    with pytest.raises(ValueError):
        e.fetched(r)
    assert not e.cancel(r)


def test_rendezvous_unexpected_then_post():
    e = Engine()
    m = msg(1, 0, n=10**6, proto=RNDV, sid=5)
    e.arrive(m)
    r = Receive(ANY_SOURCE, ANY_TAG, 0)
    acts = e.post(r)
    assert kinds(acts) == ["Fetch"] and acts[0].message is m


def test_send_protocol_choice_and_completion():
    e = Engine(eager_limit=100)
    s = Send(1, 0, 0, 100)
    acts = e.send(s)
    assert kinds(acts) == ["Transmit"] and s.protocol == EAGER and s.state == "queued"
    assert kinds(e.transmitted(s)) == ["Complete"] and s.state == "done"

    big = Send(1, 0, 0, 101)
    e.send(big)
    assert big.protocol == RNDV
    assert e.transmitted(big) == [] and big.state == "wait-fin"
    with pytest.raises(ValueError):
        e.control(ACK, big.id)           # a rendezvous waits for FIN, not ACK
    assert kinds(e.control(FIN, big.id)) == ["Complete"] and big.state == "done"

    sync = Send(1, 0, 0, 1, sync=True)
    e.send(sync)
    assert e.transmitted(sync) == [] and sync.state == "wait-ack"
    assert kinds(e.control(ACK, sync.id)) == ["Complete"]
    with pytest.raises(ValueError):
        e.control(ACK, sync.id)          # a second ACK is a protocol error

    forced = Send(1, 0, 0, 10**6)
    e.send(forced, protocol=EAGER)
    assert forced.protocol == EAGER
    with pytest.raises(ValueError):
        e.send(forced)
    with pytest.raises(ValueError):
        e.transmitted(s)


def test_sender_ids_are_unique():
    e = Engine()
    ids = set()
    for _ in range(100):
        s = Send(0, 0, 0, 1)
        e.send(s)
        ids.add(s.id)
    assert len(ids) == 100 and 0 not in ids


def test_reprs_are_informative():
    r = Receive(1, 2, 3)
    m = msg(1, 2, 3, n=9, proto=RNDV, sync=True)
    s = Send(4, 5, 6, 7)
    for obj, words in [(r, ["source=1", "tag=2"]), (m, ["rndv", "sync", "9 B"]),
                       (s, ["dest=4", "7 B"]), (Deliver(r, m), ["Deliver"]),
                       (Fetch(r, m), ["Fetch"]), (Reply(FIN, 1, 2), ["FIN"]),
                       (Transmit(s), ["Transmit"]), (Complete(s), ["Complete"]),
                       (Engine(), ["posted=0"])]:
        for w in words:
            assert w in repr(obj)


# ------------------------------------------------------------------ property: vs a reference

class Reference:
    """MPI matching written the obvious way, to compare the engine against."""

    def __init__(self):
        self.posted = []      # receive ids, in order
        self.unexpected = []  # message ids, in order
        self.recvs = {}
        self.msgs = {}
        self.matches = []

    @staticmethod
    def ok(r, m):
        (rs, rt, rc), (ms, mt, mc) = r, m
        return rc == mc and rs in (ANY_SOURCE, ms) and rt in (ANY_TAG, mt)

    def post(self, rid, r):
        self.recvs[rid] = r
        for mid in self.unexpected:
            if self.ok(r, self.msgs[mid]):
                self.unexpected.remove(mid)
                self.matches.append((rid, mid))
                return
        self.posted.append(rid)

    def arrive(self, mid, m):
        self.msgs[mid] = m
        for rid in self.posted:
            if self.ok(self.recvs[rid], m):
                self.posted.remove(rid)
                self.matches.append((rid, mid))
                return
        self.unexpected.append(mid)

    def cancel(self, rid):
        if rid in self.posted:
            self.posted.remove(rid)
            return True
        return False

    def probe(self, r):
        for mid in self.unexpected:
            if self.ok(r, self.msgs[mid]):
                return mid
        return None


SRC = st.sampled_from([ANY_SOURCE, 0, 1, 2])
TAG = st.sampled_from([ANY_TAG, 0, 1, 2])
CTX = st.sampled_from([0, 2])
OPS = st.lists(st.one_of(
    st.tuples(st.just("post"), SRC, TAG, CTX),
    st.tuples(st.just("arrive"), st.integers(0, 2), st.integers(0, 2), CTX),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("probe"), SRC, TAG, CTX),
), max_size=60)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_matching_equals_reference_and_keeps_mpi_invariants(ops):
    e, ref = Engine(), Reference()
    receives, messages = [], []
    matched = []
    arrival = {}
    for op in ops:
        if op[0] == "post":
            _, s, t, c = op
            rid = len(receives)
            r = Receive(s, t, c)
            r.error = rid  # stash our id (error is free until a match)
            receives.append(r)
            acts = e.post(r)
            ref.post(rid, (s, t, c))
            matched += [(a.receive, a.message) for a in acts if type(a) is Deliver]
        elif op[0] == "arrive":
            _, s, t, c = op
            mid = len(messages)
            m = msg(s, t, c, sid=mid)
            messages.append(m)
            arrival[mid] = mid
            acts = e.arrive(m)
            ref.arrive(mid, (s, t, c))
            matched += [(a.receive, a.message) for a in acts if type(a) is Deliver]
        elif op[0] == "cancel":
            if op[1] < len(receives):
                assert e.cancel(receives[op[1]]) == ref.cancel(op[1])
        else:
            _, s, t, c = op
            got = e.probe(s, t, c)
            want = ref.probe((s, t, c))
            assert (None if got is None else got.sender_id) == want
    mine = [(r.error, m.sender_id) for r, m in matched]
    assert mine == ref.matches
    # invariants: each message and receive matched at most once, and compatibly
    assert len({m for _, m in mine}) == len(mine) and len({r for r, _ in mine}) == len(mine)
    for r, m in matched:
        assert r.matches(m)
    # nothing left behind that could match
    for r in e.posted:
        assert not any(r.matches(m) for m in e.unexpected)
    # non-overtaking: messages from one source/context matched in arrival order
    # whenever the later one's receive would also have taken the earlier one
    order = {m.sender_id: i for i, (_, m) in enumerate(matched)}
    for r2, m2 in matched:
        for m1 in messages[:m2.sender_id]:
            if m1.source == m2.source and r2.matches(m1):
                assert m1.sender_id in order and order[m1.sender_id] < order[m2.sender_id]


SENDS = st.lists(st.tuples(st.integers(0, 200), st.booleans()), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(SENDS, st.randoms(use_true_random=False))
def test_send_side_completes_each_send_exactly_once(sends, rnd):
    e = Engine(eager_limit=100)
    ops = []
    completions = []
    for n, sync in sends:
        s = Send(1, 0, 0, n, sync)
        acts = e.send(s)
        assert kinds(acts) == ["Transmit"]
        ops.append(s)
    order = list(ops)
    rnd.shuffle(order)
    for s in order:  # transmitted in any order (rings per destination are FIFO anyway)
        completions += [a.op for a in e.transmitted(s)]
    waiting = [s for s in ops if s.state in ("wait-ack", "wait-fin")]
    assert set(e.awaiting) == {s.id for s in waiting}
    rnd.shuffle(waiting)
    for s in waiting:
        completions += [a.op for a in e.control(FIN if s.protocol == RNDV else ACK, s.id)]
    assert sorted(id(s) for s in completions) == sorted(id(s) for s in ops)
    assert all(s.state == "done" for s in ops) and not e.awaiting
    for s, (n, sync) in zip(ops, sends):
        assert s.protocol == (RNDV if n > 100 else EAGER)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.booleans(), st.booleans()), max_size=25))
def test_receive_side_actions_follow_the_protocol(msgs):
    """Eager: Deliver (+ACK if sync) + Complete; rendezvous: Fetch, then FIN + Complete."""
    e = Engine(eager_limit=100)
    for i, (n, sync, post_first) in enumerate(msgs):
        proto = RNDV if n > 100 else EAGER
        r = Receive(0, i, 0, capacity=150)
        m = msg(0, i, n=n, proto=proto, sync=sync, sid=i + 1)
        if post_first:
            assert e.post(r) == []
            acts = e.arrive(m)
        else:
            assert e.arrive(m) == []
            acts = e.post(r)
        if proto == EAGER:
            want = ["Deliver", "Reply", "Complete"] if sync else ["Deliver", "Complete"]
            assert kinds(acts) == want
            if sync:
                assert acts[1] == Reply(ACK, 0, i + 1)
        else:
            assert kinds(acts) == ["Fetch"]
            acts = e.fetched(r)
            assert acts[0] == Reply(FIN, 0, i + 1)
        assert r.state == "done" and r.error == (ERR_TRUNCATE if n > 150 else 0)
    assert not e.posted and not e.unexpected


def test_engine_module_has_no_io():
    import ast
    import inspect

    from driller import _errcodes
    from driller.mmpi import _const

    def imports(mod):
        tree = ast.parse(inspect.getsource(mod))
        imported = {a.name.split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module}
        return imported

    # the engine takes its constants from _const and _errcodes, which import nothing
    assert imports(E) <= ({"__future__", "itertools", "annotations", "_const", "_errcodes"}
                          | set(_const.__all__) | set(_errcodes.__all__))
    assert imports(_const) <= {"__future__", "annotations"}
    assert imports(_errcodes) <= {"__future__", "annotations"}


def test_arrived_keeps_the_last_match_actions_for_an_interrupted_caller():
    # post and arrive leave the actions of the match they made in ``arrived`` (the
    # transport's way to them when a signal handler's exception came as the call
    # returned); a call that matches nothing leaves it as it was
    e = Engine()
    assert e.arrived is None
    r = Receive(1, 5, 0, 64)
    assert e.post(r) == [] and e.arrived is None          # posted, no match
    assert e.arrive(msg(2, 5)) == [] and e.arrived is None  # unexpected, no match
    acts = e.arrive(msg(1, 5))
    assert acts and e.arrived is acts                     # matched the posted receive
    e.arrived = None                                      # (the caller took them)
    r2 = Receive(2, 5, 0, 64)
    acts2 = e.post(r2)                                    # matches the unexpected one
    assert acts2 and e.arrived is acts2 and kinds(acts2)[0] == "Deliver"
    e.arrived = None
    assert e.post(Receive(3, 5, 0, 64)) == [] and e.arrived is None
