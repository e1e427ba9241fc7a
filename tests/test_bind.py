"""``driller run --bind-to`` (and ``DRILLER_BIND``): ranks bound to CPUs only when
they outnumber them, in the layout asked for; unbound otherwise; and ranks bound
four to one CPU still make progress (waits yield or sleep, never spin)."""

from __future__ import annotations

import os
import textwrap

import pytest

from driller.mmpi._launcher import parse_args, placement
from test_launcher import _env, driller_run

REPORT = textwrap.dedent("""
    import os
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    print("AFF", c.rank, ",".join(map(str, sorted(os.sched_getaffinity(0)))),
          int(c._t.oversubscribed), flush=True)
""")


def _affinities(res) -> dict[int, list[int]]:
    assert res.returncode == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("AFF "):
            _, rank, cpus, _over = line.split()
            out[int(rank)] = [int(x) for x in cpus.split(",")]
    return out


@pytest.fixture
def cpus():
    """The launcher (a child of this process) may use these CPUs: at most two."""
    old = os.sched_getaffinity(0)
    mine = sorted(old)[:2]
    os.sched_setaffinity(0, mine)
    try:
        yield mine
    finally:
        os.sched_setaffinity(0, old)


def test_placement_layouts():
    assert placement(4, {0, 1}, "core") == [0, 0, 1, 1]        # mpirun's order
    assert placement(4, {1, 0}, "cyclic") == [0, 1, 0, 1]      # pairs i, i + n/2 together
    assert placement(5, [3, 7], "core") == [3, 3, 3, 7, 7]
    assert placement(5, [3, 7], "cyclic") == [3, 7, 3, 7, 3]
    assert placement(4, {0, 1}, "none") is None
    assert placement(2, {0, 1}, "core") is None                # not oversubscribed
    assert placement(3, {0, 1, 2, 3}, "cyclic") is None


def test_option_and_environment(monkeypatch):
    monkeypatch.delenv("DRILLER_BIND", raising=False)
    assert parse_args(["-c", "pass"]).bind == "none"
    assert parse_args(["--bind-to", "Cyclic", "-c", "pass"]).bind == "cyclic"
    monkeypatch.setenv("DRILLER_BIND", "core")
    assert parse_args(["-c", "pass"]).bind == "core"
    assert parse_args(["--bind-to=none", "-c", "pass"]).bind == "none"   # the option wins


@pytest.mark.parametrize("args, env, message", [
    (["--bind-to", "socket"], {}, "argument --bind-to: needs one of none, core, cyclic"),
    ([], {"DRILLER_BIND": "yes"}, "DRILLER_BIND needs one of none, core, cyclic, got 'yes'"),
])
def test_bad_binding_is_a_usage_error(args, env, message):
    res = driller_run(*args, "-n", "2", "-c", "print('RAN')", env=_env(**env))
    assert res.returncode == 2 and message in res.stderr and "RAN" not in res.stdout


@pytest.mark.parametrize("bind", ["core", "cyclic"])
def test_bound_when_oversubscribed(cpus, bind):
    n = 2 * len(cpus)
    got = _affinities(driller_run("-n", str(n), "--bind-to", bind, "-c", REPORT))
    if len(cpus) == 1:
        assert got == {r: cpus for r in range(n)}
    else:
        assert got == {r: [c] for r, c in enumerate(placement(n, cpus, bind))}
        assert len({c[0] for c in got.values()}) == len(cpus)   # every CPU used


def test_unbound_by_default_off_and_when_not_oversubscribed(cpus):
    n = 2 * len(cpus)
    env = {k: v for k, v in _env().items() if k != "DRILLER_BIND"}
    assert _affinities(driller_run("-n", str(n), "-c", REPORT, env=env)) == \
        {r: cpus for r in range(n)}
    off = _env(DRILLER_BIND="cyclic")
    assert _affinities(driller_run("--bind-to", "none", "-n", str(n), "-c", REPORT,
                                   env=off)) == {r: cpus for r in range(n)}
    assert _affinities(driller_run("-n", str(len(cpus)), "-c", REPORT, env=off)) == \
        {r: cpus for r in range(len(cpus))}


PROGRESS = textwrap.dedent("""
    import os
    import numpy as np
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    me, n = c.rank, c.size
    assert c._t.oversubscribed
    peer = (me + n // 2) % n            # osu_multi_lat's pairs
    s, r = bytearray(8), bytearray(8)
    for i in range(2000):
        if me < n // 2:
            s[0] = i % 256
            c.Send([s, 8, MPI.BYTE], peer, 1); c.Recv([r, 8, MPI.BYTE], peer, 1)
            assert r[0] == (i + 1) % 256
        else:
            c.Recv([r, 8, MPI.BYTE], peer, 1); s[0] = (r[0] + 1) % 256
            c.Send([s, 8, MPI.BYTE], peer, 1)
    x = np.full(1 << 18, me, np.int64)   # 2 MiB: beyond the eager limit
    y = np.empty_like(x)
    c.Sendrecv(x, (me + 1) % n, 2, y, (me - 1) % n, 2)
    assert (y == (me - 1) % n).all()
    tot = c.allreduce(me)
    c.Barrier()
    print("DONE", me, tot, ",".join(map(str, sorted(os.sched_getaffinity(0)))), flush=True)
""")


@pytest.mark.parametrize("bind", ["none", "core", "cyclic"])
def test_four_ranks_on_one_cpu_make_progress(bind):
    """As under `taskset -c 0`: every rank on one CPU, with and without binding."""
    old = os.sched_getaffinity(0)
    cpu = min(old)
    os.sched_setaffinity(0, {cpu})
    try:
        res = driller_run("-n", "4", "--bind-to", bind, "-c", PROGRESS, timeout=120)
    finally:
        os.sched_setaffinity(0, old)
    assert res.returncode == 0, res.stderr
    done = sorted(ln.split()[1:] for ln in res.stdout.splitlines() if ln.startswith("DONE"))
    assert done == [[str(r), "6", str(cpu)] for r in range(4)]
