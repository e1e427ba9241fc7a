"""The mid-size protocols chosen by measuring the machine (_calib): the rule, the
cache (corrupt, old or foreign files are measured again, never an error), and
real ranks honouring the choice on both sides at every threshold (eager, split
rendezvous, streamed), with truncation, Ssend, ANY_SOURCE and large objects."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from driller import MPI
from driller.mmpi import _calib as C

from test_mmpi_p2p import run_ranks, values

KIB = 1024
MIB = 1 << 20

# figures measured on the machine of docs/mmpi.md (µs): memmove, process_vm_readv
THIS_VM = ({262144: 7.0, 524288: 13.1, 1048576: 39.2, 2097152: 148.2},
           {262144: 14.5, 524288: 25.3, 1048576: 66.2, 2097152: 182.7})
# the earlier machine: memmove twice as fast, process_vm_readv pinning dearer
EARLIER = ({262144: 3.5, 524288: 7.0, 1048576: 15.0, 2097152: 34.0},
           {262144: 20.0, 524288: 40.0, 1048576: 80.0, 2097152: 170.0})


# ------------------------------------------------------------------ the rule

def test_choose_this_machine_splits_above_512k():
    assert C.choose(*THIS_VM) == (512 * KIB, True)


def test_choose_earlier_machine_keeps_eager_1m_and_streams():
    assert C.choose(*EARLIER) == (MIB, False)


def test_choose_without_single_copy_keeps_the_constants():
    assert C.choose(THIS_VM[0], None) == (MIB, False)


def test_choose_eager_limit_follows_the_handshake():
    copy, cma = THIS_VM
    assert C.choose(copy, cma, handshake_us=0.0) == (64 * KIB, True)   # even 256K loses
    assert C.choose(copy, cma, handshake_us=1000.0) == (MIB, True)   # capped at 1 MiB
    # a size that loses stops the limit even if a larger one would pass
    bumpy = {**copy, 524288: 2000.0}
    assert C.choose(bumpy, cma, handshake_us=1000.0).eager_limit == 256 * KIB


# ------------------------------------------------------------------ the cache

def _figures(copy, cma):
    return {"copy": dict(copy), "cma": None if cma is None else dict(cma)}


def _counting(fig):
    calls = []

    def measure():
        calls.append(1)
        return fig
    return measure, calls


def test_cache_measures_once_then_reads(tmp_path):
    path = str(tmp_path / "sub" / "c.json")
    measure, calls = _counting(_figures(*THIS_VM))
    assert C.load(path, measure) == _figures(*THIS_VM)
    assert C.load(path, measure) == _figures(*THIS_VM)
    assert len(calls) == 1
    d = json.loads(open(path).read())
    assert d["version"] == C.VERSION and d["key"] == C.machine_key()


@pytest.mark.parametrize("content", [
    b"", b"\x00\xff garbage", b'{"version": 1, "key"', b"[1, 2]", b'"text"',
    "old version", "other machine", "missing size", "negative", "nan", "string value",
    "bool value", "cma not a dict",
])
def test_corrupt_or_stale_cache_is_measured_again(tmp_path, content):
    path = str(tmp_path / "c.json")
    good = {"version": C.VERSION, "key": C.machine_key(),
            "copy": {str(k): v for k, v in EARLIER[0].items()},
            "cma": {str(k): v for k, v in EARLIER[1].items()}}
    if isinstance(content, str):
        bad = json.loads(json.dumps(good))
        if content == "old version":
            bad["version"] = C.VERSION - 1
        elif content == "other machine":
            bad["key"] = "another|host"
        elif content == "missing size":
            del bad["copy"][str(C.SIZES[0])]
        elif content == "negative":
            bad["cma"][str(C.SIZES[1])] = -3.0
        elif content == "nan":
            bad["copy"][str(C.SIZES[2])] = float("nan")
        elif content == "string value":
            bad["copy"][str(C.SIZES[0])] = "7"
        elif content == "bool value":
            bad["cma"][str(C.SIZES[0])] = True
        else:
            bad["cma"] = [1, 2, 3]
        content = json.dumps(bad).encode()
    open(path, "wb").write(content)
    measure, calls = _counting(_figures(*THIS_VM))
    assert C.load(path, measure) == _figures(*THIS_VM)
    assert len(calls) == 1
    assert C.read_cache(path, C.machine_key()) == _figures(*THIS_VM)   # rewritten whole
    assert sorted(os.listdir(tmp_path)) == ["c.json", "c.json.lock"]   # no temporary left


def test_valid_cache_is_used_as_is(tmp_path):
    path = str(tmp_path / "c.json")
    C._write(path, C.machine_key(), _figures(*EARLIER))
    measure, calls = _counting(_figures(*THIS_VM))
    assert C.load(path, measure) == _figures(*EARLIER)
    assert not calls


def test_denied_single_copy_is_cached_as_none(tmp_path):
    path = str(tmp_path / "c.json")
    measure, calls = _counting(_figures(THIS_VM[0], None))
    assert C.load(path, measure) == _figures(THIS_VM[0], None)
    assert C.load(path, measure) == _figures(THIS_VM[0], None)
    assert len(calls) == 1


def test_unwritable_cache_means_no_measurement(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    measure, calls = _counting(_figures(*THIS_VM))
    assert C.load(str(blocker / "c.json"), measure) is None
    assert not calls


def test_no_home_means_no_measurement(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DRILLER_MMPI_CALIB_FILE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)   # as without a passwd entry
    monkeypatch.setenv("DRILLER_MMPI_CALIBRATE", "1")
    assert C.cache_path() == ""
    assert C.choice() is None
    assert os.listdir(tmp_path) == []   # nothing made under the working directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.cache_path() == str(tmp_path / "xdg" / "driller" / "mmpi-copies.json")


def test_measure_gives_positive_figures_for_every_size():
    m = C.measure(sizes=(64 * KIB, 128 * KIB), reps=2)
    assert sorted(m["copy"]) == [64 * KIB, 128 * KIB]
    assert all(v > 0 for v in m["copy"].values())
    assert m["cma"] is not None and all(v > 0 for v in m["cma"].values())


def test_calibration_off_and_env_handshake(tmp_path, monkeypatch):
    path = str(tmp_path / "c.json")
    C._write(path, C.machine_key(), _figures(*THIS_VM))
    monkeypatch.setenv("DRILLER_MMPI_CALIB_FILE", path)
    monkeypatch.setenv("DRILLER_MMPI_CALIBRATE", "0")
    assert C.choice() is None
    monkeypatch.setenv("DRILLER_MMPI_CALIBRATE", "1")
    assert C.choice() == (512 * KIB, True)
    monkeypatch.setenv("DRILLER_MMPI_HANDSHAKE_US", "0")
    assert C.choice() == (64 * KIB, True)


# ------------------------------------------------------------------ real ranks

@pytest.fixture
def measured(tmp_path, monkeypatch):
    """Calibration on, with figures of our choosing in a cache file of this
    machine: every rank reads them."""
    path = str(tmp_path / "c.json")
    monkeypatch.setenv("DRILLER_MMPI_CALIBRATE", "1")
    monkeypatch.setenv("DRILLER_MMPI_CALIB_FILE", path)
    for v in ("DRILLER_MMPI_EAGER_LIMIT", "DRILLER_MMPI_STREAM_MAX", "DRILLER_MMPI_SPLIT_MIN",
              "DRILLER_MMPI_HANDSHAKE_US"):
        monkeypatch.delenv(v, raising=False)

    def use(copy, cma):
        C._write(path, C.machine_key(), _figures(copy, cma))
        return path
    return use


def pattern(n: int, seed: int = 0) -> np.ndarray:
    return ((np.arange(n, dtype=np.int64) * 7 + seed) % 251).astype(np.uint8)


def _settings(comm):
    t = comm._t
    return t.eager_limit, t.stream_max, t.split_min


def _sizes_both_ways(comm, sizes):
    """Ping-pong each size (a distinct pattern each way), every byte and the
    status checked; per size the bytes this rank received split and streamed."""
    t = comm._t
    out = []
    for i, n in enumerate(sizes):
        b = np.full(n + 1, 0xEE, np.uint8)
        st = MPI.Status()
        s0, m0 = t.stats_split, t.stats_streamed
        if comm.rank == 0:
            comm.Send(pattern(n, i), 1, i)
            comm.Recv(b, 1, 100 + i, st)
            want = pattern(n, 50 + i)
        else:
            comm.Recv(b, 0, i, st)
            want = pattern(n, i)
            comm.Send(pattern(n, 50 + i), 0, 100 + i)
        ok = bool((b[:n] == want).all()) and b[n] == 0xEE
        out.append((n, ok, st.Get_count(MPI.BYTE), t.stats_split - s0, t.stats_streamed - m0))
    return out


def _around(limit):
    return [limit - 1, limit, limit + 1, limit + 4097, 2 * limit + 3, 3 * MIB + 5]


@pytest.mark.parametrize("figures, limit, split", [(THIS_VM, 512 * KIB, True),
                                                    (EARLIER, MIB, False)])
def test_both_ranks_take_the_measured_choice(measured, figures, limit, split):
    """Split above the measured limit (no stream), or streamed above it (no split):
    both ranks, both ways, every size around the limit and beyond."""
    measured(*figures)
    want = (limit, 0, limit + 1) if split else (limit, 8 * MIB, 0)
    assert values(run_ranks(_settings, 2)) == [want] * 2
    for rank_out in values(run_ranks(_sizes_both_ways, 2, _around(limit))):
        for n, ok, count, got_split, got_streamed in rank_out:
            assert ok and count == n, n
            big = n if n > limit else 0
            assert (got_split, got_streamed) == ((big, 0) if split else (0, big)), n


def test_env_overrides_the_measurement(measured, monkeypatch):
    measured(*THIS_VM)
    monkeypatch.setenv("DRILLER_MMPI_EAGER_LIMIT", str(256 * KIB))
    assert values(run_ranks(_settings, 2)) == [(256 * KIB, 0, 256 * KIB + 1)] * 2
    monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", str(2 * MIB))   # streams: no split
    assert values(run_ranks(_settings, 2)) == [(256 * KIB, 2 * MIB, 0)] * 2
    monkeypatch.delenv("DRILLER_MMPI_STREAM_MAX")
    monkeypatch.setenv("DRILLER_MMPI_SPLIT_MIN", str(4 * MIB))
    assert values(run_ranks(_settings, 2)) == [(256 * KIB, 8 * MIB, 4 * MIB)] * 2


def test_more_ranks_than_cpus_keep_the_constants(measured):
    measured(*THIS_VM)
    n = (os.cpu_count() or 1) + 1
    out = values(run_ranks(_settings, n))
    # eager 1 MiB, streamed above it up to half a ring (oversubscribed), no split
    assert len(set(out)) == 1 and out[0][0] == MIB and out[0][1] > MIB and out[0][2] == 0


def test_corrupt_cache_file_ranks_start_and_agree(measured, tmp_path):
    path = measured(*THIS_VM)
    with open(path, "wb") as f:
        f.write(b"{\"version\": 1, \"key\": \x00 truncated")
    out = values(run_ranks(_settings, 2))
    assert out[0] == out[1]   # measured again once (under the lock), read by both
    assert C.read_cache(path, C.machine_key()) is not None


def _split_edges(comm, n):
    """Above the measured eager limit: a truncated receive, Ssend, ANY_SOURCE, a
    pre-posted Irecv, and an object holding a large array, every byte checked."""
    t = comm._t
    out = {}
    if comm.rank == 0:
        comm.Send(pattern(n, 1), 1, 1)
        comm.Ssend(pattern(n, 2), 1, 2)
        comm.Send(pattern(n, 3), 1, 3)
        comm.Barrier()
        comm.Send(pattern(n, 4), 1, 4)
        comm.send({"a": pattern(n, 5), "b": bytes(pattern(n, 6))}, 1, 5)
        return t.stats_split
    small = np.full(n - 1000, 0xEE, np.uint8)
    try:
        comm.Recv(small, 0, 1)
        out["trunc"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["trunc"] = (type(e).__name__, bool((small == pattern(n, 1)[:n - 1000]).all()))
    b = np.zeros(n, np.uint8)
    comm.Recv(b, 0, 2)
    out["ssend"] = bool((b == pattern(n, 2)).all())
    st = MPI.Status()
    comm.Recv(b, MPI.ANY_SOURCE, MPI.ANY_TAG, st)
    out["any"] = (bool((b == pattern(n, 3)).all()), st.Get_source(), st.Get_tag())
    req = comm.Irecv(b, 0, 4)
    comm.Barrier()
    req.Wait()
    out["posted"] = bool((b == pattern(n, 4)).all())
    obj = comm.recv(source=0, tag=5)
    out["object"] = (bool((obj["a"] == pattern(n, 5)).all()), obj["b"] == bytes(pattern(n, 6)))
    out["split"] = t.stats_split
    return out


def test_split_protocol_edges(measured):
    measured(*THIS_VM)
    n = MIB + 333
    sent_split, got = values(run_ranks(_split_edges, 2, n))
    assert got["trunc"] == ("TruncationError", True)
    assert got["ssend"] and got["posted"]
    assert got["any"] == (True, 0, 3)
    assert got["object"] == (True, True)
    assert got["split"] == 3 * n   # Ssend, ANY_SOURCE, pre-posted (truncation: one read)
    assert sent_split == 0
