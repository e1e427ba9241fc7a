"""mmpi's numeric settings (``DRILLER_MMPI_*``, docs/configuration.md): a value
that is not a number is refused with MmpiError naming the variable and what it
takes (it was a bare ``ValueError`` from ``int()``); an empty one is the
default.  Checked where each is read: a rank joining its world (the transport),
the world's creation (ring size), and module import (the hybrid transport's,
the collectives' board); and "unset" and empty alike where it matters (the
oversubscribed stream cap; the receive cache, whose negative values mean none)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from driller.errors import DrillerError, MmpiError
from driller.mmpi import _transport as T
from driller.mmpi import _world as W

BIN = Path(sys.executable).parent

# read by the transport as a rank joins its world
JOIN = ["DRILLER_MMPI_EAGER_LIMIT", "DRILLER_MMPI_PACKED_MAX", "DRILLER_MMPI_SPLIT_MIN",
        "DRILLER_MMPI_DIRECT_MIN", "DRILLER_MMPI_DSPLIT_MIN", "DRILLER_MMPI_PURE_POLLS",
        "DRILLER_MMPI_ADAPT_MAX", "DRILLER_MMPI_ADAPT_PROBE", "DRILLER_MMPI_ADAPT_EVERY",
        "DRILLER_MMPI_ADAPT_KEEP", "DRILLER_MMPI_SPIN_US", "DRILLER_MMPI_SLEEP_MS",
        "DRILLER_MMPI_PUSH_CHUNK", "DRILLER_MMPI_STREAM_MAX", "DRILLER_MMPI_RECV_CACHE"]


def _join(fd: int):
    w = W.World(fd)
    return T.Transport(w, 0)


@pytest.fixture
def world_fd():
    fd = W.create_world(2)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("name", JOIN)
def test_a_bad_value_is_refused_naming_the_variable(name, world_fd, monkeypatch):
    monkeypatch.setenv(name, "512K")
    with pytest.raises(MmpiError) as e:
        _join(world_fd)
    assert isinstance(e.value, DrillerError)
    msg = str(e.value)
    assert f"{name}='512K'" in msg and "docs/configuration.md" in msg, msg


def test_empty_values_are_the_defaults(world_fd, monkeypatch):
    for name in JOIN:
        monkeypatch.setenv(name, " ")
    t = _join(world_fd)
    assert (t.adapt_keep, t.adapt_max, t.direct_min, t.dsplit_min) == \
        (T.ADAPT_KEEP, T.ADAPT_MAX, T.DIRECT_MIN, T.DSPLIT_MIN)


def test_good_values_are_taken(world_fd, monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_ADAPT_KEEP", "-1")
    monkeypatch.setenv("DRILLER_MMPI_SPIN_US", "12.5")
    monkeypatch.setenv("DRILLER_MMPI_DIRECT_MIN", " 65536 ")
    t = _join(world_fd)
    assert t.adapt_keep == -1 and t.direct_min == 65536
    assert t.spin_seconds == pytest.approx(12.5e-6)


def test_ring_bytes_refused_at_the_worlds_creation(monkeypatch):
    monkeypatch.setenv("DRILLER_MMPI_RING_BYTES", "4MiB")
    with pytest.raises(MmpiError, match="DRILLER_MMPI_RING_BYTES='4MiB'"):
        W.create_world(2)


@pytest.mark.parametrize("name, module", [
    ("DRILLER_MMPI_REMOTE_SEND_MAX", "driller.mmpi._hybrid"),
    ("DRILLER_MMPI_REMOTE_INLINE", "driller.mmpi._hybrid"),
    ("DRILLER_MMPI_REMOTE_SPIN_US", "driller.mmpi._hybrid"),
    ("DRILLER_MMPI_BOARD_GRACE_MS", "driller.mmpi._coll._board"),
])
def test_import_time_settings_refused(name, module):
    env = dict(os.environ, **{name: "fast"})
    p = subprocess.run([sys.executable, "-c", f"import {module}"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "MmpiError" in p.stderr and f"{name}='fast'" in p.stderr, p.stderr


def test_driller_run_reports_the_bad_setting(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("from driller import MPI\nMPI.COMM_WORLD.Barrier()\n")
    env = dict(os.environ, DRILLER_MMPI_ADAPT_KEEP="512K")
    p = subprocess.run([str(BIN / "driller"), "run", "-n", "2", str(prog)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "DRILLER_MMPI_ADAPT_KEEP='512K'" in p.stderr, p.stderr


def test_driller_run_reports_a_bad_ring_size_in_one_line(tmp_path):
    """The ring size is read where the world is made (the supervisor, before any
    rank): a bad value is one line and exit 2, not the supervisor's traceback
    and exit 70."""
    prog = tmp_path / "prog.py"
    prog.write_text("print('ran')\n")
    env = dict(os.environ, DRILLER_MMPI_RING_BYTES="lots")
    p = subprocess.run([str(BIN / "driller"), "run", "-n", "2", str(prog)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("driller run: error: DRILLER_MMPI_RING_BYTES='lots': "), p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert "ran" not in p.stdout, p.stdout


def test_empty_stream_max_keeps_the_oversubscribed_cap(monkeypatch):
    """Oversubscribed, an unset STREAM_MAX is capped at half a ring; an empty one
    is unset too (it was taken as set: the 8 MiB default, uncapped)."""
    size = len(os.sched_getaffinity(0)) + 1
    fd = W.create_world(size)
    try:
        for v in (None, "", " "):
            if v is None:
                monkeypatch.delenv("DRILLER_MMPI_STREAM_MAX", raising=False)
            else:
                monkeypatch.setenv("DRILLER_MMPI_STREAM_MAX", v)
            t = T.Transport(W.World(fd), 0)
            assert t.oversubscribed
            assert t.stream_max == min(T.STREAM_MAX, t.ring_bytes // 2), (v, t.stream_max)
    finally:
        os.close(fd)


@pytest.mark.parametrize("v, cap", [("-1", -1), ("0", 0), ("4096", 4096)])
def test_recv_cache_values_as_given(v, cap, world_fd, monkeypatch):
    """A set DRILLER_MMPI_RECV_CACHE is the cache's cap, negative included (no
    cache, as before); unset, the automatic size."""
    monkeypatch.setenv("DRILLER_MMPI_RECV_CACHE", v)
    assert _join(world_fd).recv_cache.cap == cap
    monkeypatch.delenv("DRILLER_MMPI_RECV_CACHE")
    assert _join(world_fd).recv_cache.cap == T._recv_cache_bytes() > 0
