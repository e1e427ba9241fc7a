"""`driller bench`: the harness runs and writes well-formed results.

These tests check structure (files, methods, sizes, skip notes), never speeds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from driller._bench import _report, _runner, _stats

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(extra_path: str | None = None) -> dict:
    env = dict(os.environ)
    parts = [p for p in (extra_path, SRC, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _bench(args, out: Path, env=None, timeout=240):
    p = subprocess.run([sys.executable, "-m", "driller", "bench", *args, "--out", str(out)],
                       env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"driller bench failed:\n{p.stdout}\n{p.stderr}"
    return p


def _files(out: Path):
    js, cs, ps = (sorted(out.glob(f"bench-*.{e}")) for e in ("json", "csv", "png"))
    assert len(js) == 1 and len(cs) == 1, list(out.iterdir())
    return js[0], cs[0], (ps[0] if ps else None)


def _read_csv(path: Path):
    text = "".join(ln for ln in path.read_text().splitlines(True) if not ln.startswith("#"))
    return list(csv.DictReader(io.StringIO(text)))


# --- one quick run shared by the structure checks --------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = _bench(["--quick"], out)
    js, cs, png = _files(out)
    return {"proc": proc, "res": json.loads(js.read_text()), "csv": cs, "png": png}


@pytest.mark.timeout(300)
def test_quick_json_structure(quick):
    res = quick["res"]
    assert res["schema"] == _report.SCHEMA
    assert res["quick"] is True
    for k in ("cpu_model", "logical_cpus", "kernel", "python", "numpy", "mpi4py",
              "mpi_library", "driller"):
        assert k in res["machine"]
    assert set(res["methods"]) == set(_runner.METHOD)
    for key, m in res["methods"].items():
        assert m["status"] in ("ok", "skipped"), (key, m)
        if m["status"] == "skipped":  # an absent or failing peer: a note, not a crash
            assert m["reason"], key
            assert any(s["method"] == key and s["reason"] for s in res["skipped"])
    # the multiprocessing peers and the memcpy limit need nothing beyond the stdlib
    for key in ("mp.Pipe", "mp.Queue", "memcpy", "share.numpy", "share.sum"):
        assert res["methods"][key]["status"] == "ok", res["methods"][key]


@pytest.mark.timeout(300)
def test_quick_expected_cells(quick):
    res = quick["res"]
    cfg = res["config"]
    assert cfg["sizes"] == _runner.QUICK_SIZES
    coll = ("barrier", "bcast", "allreduce")  # parameter: a rank count
    cells = {(r["bench"], r["method"], r["ranks"] if r["bench"] in coll else r["size"])
             for r in res["results"]}
    for key, m in res["methods"].items():
        if m["status"] != "ok":
            continue
        for bench in m["benches"]:
            if bench in ("latency", "bandwidth"):
                params = [s for s in cfg["sizes"] if not (bench == "bandwidth" and s == 0)]
            elif bench == "objects":
                params = cfg["object_sizes"]
            elif bench in coll:
                params = cfg["barrier_ranks"]
            else:
                params = [cfg["share_size"]]
            for p in params:
                if bench in coll and (bench, key, p) not in cells:
                    # one rank count may fail alone; then a note says so
                    assert any(f"-{p}" in n for n in res["notes"]), (key, p)
                    continue
                assert (bench, key, p) in cells, (bench, key, p)
    for r in res["results"]:
        assert r["n"] >= 1 and r["min"] <= r["median"] <= r["max"]
        assert len(r["values"]) == cfg["rounds"]
        if r["bench"] == "bandwidth":
            assert r["bandwidth_Bps"]["median"] > 0
    ok = {k for k, m in res["methods"].items() if m["status"] == "ok"}
    if {"driller.Send", "mpi4py.Send"} <= ok:
        assert any(r["driller"] == "driller.Send" and r["peer"] == "mpi4py.Send"
                   for r in res["ratios"])


@pytest.mark.timeout(300)
def test_quick_csv_png_and_table(quick):
    rows = _read_csv(quick["csv"])
    assert rows and set(_report.CSV_FIELDS) <= set(rows[0])
    res = quick["res"]
    assert len(rows) == len(res["results"]) + len(res["ratios"])
    benches = {r["bench"] for r in rows}
    assert {"latency", "bandwidth", "objects", "sharing"} <= benches
    for r in rows:
        float(r["median"])
    header = [ln for ln in quick["csv"].read_text().splitlines() if ln.startswith("#")]
    assert any(ln.startswith("# cpu_model:") for ln in header)
    png = quick["png"]
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    out = quick["proc"].stdout
    assert "One-way latency" in out and "Bandwidth" in out and "wrote" in out


# --- a broken peer is skipped with a note ------------------------------------------------


@pytest.mark.timeout(180)
def test_broken_peer_is_skipped(tmp_path):
    fake = tmp_path / "fake"
    (fake / "mpi4py").mkdir(parents=True)
    (fake / "mpi4py" / "__init__.py").write_text("raise ImportError('mpi4py broken on purpose')\n")
    out = tmp_path / "out"
    p = _bench(["--quick", "--only", "latency", "--sizes", "8", "--rounds", "1", "--no-plot",
                "--skip", "Queue"], out, env=_env(str(fake)))
    js, cs, png = _files(out)
    res = json.loads(js.read_text())
    assert png is None
    assert res["methods"]["mpi4py.Send"]["status"] == "skipped"
    assert "broken on purpose" in res["methods"]["mpi4py.Send"]["reason"]
    assert res["methods"]["mp.Queue"]["status"] == "not run"
    assert res["methods"]["mp.Pipe"]["status"] == "ok"
    assert "skipped mpi4py Send/Recv" in p.stdout
    assert {r["method"] for r in res["results"]} >= {"mp.Pipe", "memcpy"}


# --- pure parts ------------------------------------------------------------------------


def test_parse_sizes():
    assert _stats.parse_sizes("8,1M,64M") == [8, 1 << 20, 64 << 20]
    assert _stats.parse_sizes("0, 1K,64KiB,2MB") == [0, 1024, 64 << 10, 2 << 20]
    with pytest.raises(ValueError):
        _stats.parse_sizes("lots")
    assert _stats.fmt_size(64 << 20) == "64 MiB" and _stats.fmt_size(3) == "3 B"
    assert _runner.DEFAULT_SIZES[0] == 0 and _runner.DEFAULT_SIZES[-1] == 64 << 20


def test_summary_and_round_ratios():
    s = _stats.summarize([3.0, None, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert s["wide"]
    assert _stats.summarize([None]) is None
    # ratios pair rounds: a round where either side is missing is left out
    assert _stats.round_ratios([2.0, None, 6.0], [1.0, 1.0, 3.0]) == [2.0, 2.0]


class _FakeRunner:
    """Stands in for a finished Runner: driller measured alongside its peers."""

    def __init__(self):
        self.data = {
            ("latency", "driller.Send", 8): {"values": [1e-6, 2e-6], "iters": 10, "warmup": 1},
            ("latency", "mpi4py.Send", 8): {"values": [2e-6, 2e-6], "iters": 10, "warmup": 1},
            ("bandwidth", "driller.Send", 8): {"values": [1e-6, 1e-6], "window": 64},
            ("bandwidth", "mpi4py.Send", 8): {"values": [4e-6, 2e-6], "window": 64},
            ("barrier", "driller.Barrier", 4): {"values": [5e-6, 6e-6]},
            ("barrier", "mpi4py.Barrier", 4): {"values": [10e-6, 12e-6]},
        }
        self.skipped = {"mp.Queue": "absent"}
        self.notes = []
        self.info = {"cma": True}

    def _skipped_by_user(self, key):
        return False

    def versions(self):
        return {"mpi_library": "Open MPI v5"}


def test_report_ratios_and_files(tmp_path):
    cfg = _runner.default_config(True)
    cfg.rounds = 2
    res = _report.build(_FakeRunner(), cfg, _report.machine_info(), 1.0, ["driller", "bench"])
    rat = {(r["bench"], r["driller"], r["peer"], r["param"]): r for r in res["ratios"]}
    assert rat[("latency", "driller.Send", "mpi4py.Send", 8)]["values"] == [0.5, 1.0]
    assert rat[("bandwidth", "driller.Send", "mpi4py.Send", 8)]["values"] == [0.25, 0.5]
    assert rat[("barrier", "driller.Barrier", "mpi4py.Barrier", 4)]["median"] == pytest.approx(0.5)
    assert res["methods"]["mp.Queue"]["status"] == "skipped"
    bw = next(r for r in res["results"]
              if r["bench"] == "bandwidth" and r["method"] == "mpi4py.Send")
    assert bw["bandwidth_Bps"]["median"] == pytest.approx(8 / 3e-6)
    _report.write_json(res, tmp_path / "r.json")
    _report.write_csv(res, tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == _report.SCHEMA
    assert len(_read_csv(tmp_path / "r.csv")) == len(res["results"]) + len(res["ratios"])
    from rich.console import Console
    con = Console(file=io.StringIO(), width=200)
    _report.print_report(res, con, [])
    text = con.file.getvalue()
    assert "time ratio driller / peer" in text and "0.75×" in text
    pytest.importorskip("matplotlib")
    from driller._bench import _plot
    _plot.plot(res, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_a_group_whose_launcher_exited_is_failed_with_its_ranks_error_hello(tmp_path):
    # the worker says why it cannot run (an error hello), then its launcher exits
    # before the runner looks: the runner must read the queued hello first, not
    # report a bare "exited with status 3"
    cfg = _runner.default_config(quick=True)
    r = _runner.Runner(cfg, log=lambda *a: None)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(r.sock_path)
    listener.listen(8)
    r.listener = listener
    code = ("import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(json.dumps({'group': 'g-2', 'error': 'no MPI here: install it'})"
            ".encode() + b'\\n')\n"
            "sys.exit(3)\n")
    g = _runner.Group("g-2", "driller", 2, [], {})
    g.log = tmp_path / "g.log"
    g.log.write_text("")
    g.proc = subprocess.Popen([sys.executable, "-c", code, r.sock_path])
    g.proc.wait(timeout=30)
    r.groups[g.gid] = g
    try:
        r._accept_hellos()
    finally:
        listener.close()
        shutil.rmtree(r.tmp, ignore_errors=True)
    assert g.error == "no MPI here: install it"
