"""``driller bench``: driller.mmpi side by side with mpi4py/Open MPI and multiprocessing.

See benchmarks/README.md for what each number means and how it is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

BENCH_NAMES = ("latency", "bandwidth", "objects", "barrier", "bcast", "allreduce", "sharing")


def _parser():
    p = argparse.ArgumentParser(
        prog="driller bench",
        description="Point-to-point latency/bandwidth, objects, collectives (Barrier, Bcast, "
                    "Allreduce) and array sharing: "
                    "driller.mmpi against mpi4py on Open MPI, multiprocessing Pipe/Queue, "
                    "and the single-process memcpy limit.")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and rounds; finishes in under a minute")
    p.add_argument("--sizes", help="message sizes, e.g. 0,8,1K,1M,64M "
                   "(default 0 B and 1 B .. 64 MiB by powers of 4)")
    p.add_argument("--rounds", type=int, help="measured rounds after the warm-up round "
                   "(default 7, --quick 3)")
    p.add_argument("--object-sizes", help="total bytes of the dict-of-arrays objects "
                   "(default 1M,64M; --quick 1M)")
    p.add_argument("--barrier-ranks", help="rank counts for Barrier, Bcast and Allreduce "
                   "(default 2,4,8)")
    p.add_argument("--coll-size", help="bytes of the Bcast/Allreduce buffer "
                   "(default 16M; --quick 1M)")
    p.add_argument("--only", help=f"comma list of benchmarks among {','.join(BENCH_NAMES)}")
    p.add_argument("--skip", default="", help="comma list of methods or engines to leave out: "
                   "a method (driller.Send, mpi4py.pkl5, Queue, memcpy, ...) or an engine "
                   "(driller, mpi4py, mp, share)")
    p.add_argument("--target", type=float,
                   help="seconds per measurement (default 0.1, --quick 0.03)")
    p.add_argument("--budget", type=float, help="seconds from the start after which no new "
                   "round starts (default 420, --quick 40)")
    p.add_argument("--out", default="bench-results", help="directory for JSON/CSV/PNG "
                   "(default ./bench-results)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    from . import _report, _runner
    from ._stats import parse_sizes

    cfg = _runner.default_config(a.quick)
    try:
        if a.sizes:
            cfg.sizes = parse_sizes(a.sizes)
        if a.object_sizes:
            cfg.obj_sizes = parse_sizes(a.object_sizes)
        if a.coll_size:
            cfg.coll_size = parse_sizes(a.coll_size)[0]
        if a.barrier_ranks:
            cfg.barrier_ranks = sorted({int(x) for x in a.barrier_ranks.split(",") if x.strip()})
            if min(cfg.barrier_ranks) < 2:
                raise ValueError("barrier needs at least 2 ranks")
        if a.only:
            only = tuple(x.strip() for x in a.only.split(",") if x.strip())
            bad = [x for x in only if x not in BENCH_NAMES]
            if bad:
                raise ValueError(f"unknown benchmark {bad[0]!r}; "
                                 f"choose among {', '.join(BENCH_NAMES)}")
            cfg.benches = only
    except ValueError as e:
        print(f"driller bench: {e}", file=sys.stderr)
        return 2
    if a.rounds is not None:
        if a.rounds < 1:
            print("driller bench: --rounds must be at least 1", file=sys.stderr)
            return 2
        cfg.rounds = a.rounds
    if a.target is not None:
        cfg.target = a.target
    if a.budget is not None:
        cfg.budget = a.budget
    cfg.skip = tuple(x.strip() for x in a.skip.split(",") if x.strip())
    names = _runner.skip_names()
    bad = [x for x in cfg.skip if x not in names]
    if bad:
        print(f"driller bench: --skip {bad[0]!r} names no method or engine; "
              f"choose among {', '.join(sorted(names))}", file=sys.stderr)
        return 2

    try:
        import rich  # noqa: F401
    except ImportError:
        print("driller bench needs rich for its progress bar and tables: "
              "pip install rich (or pip install 'driller[bench]')", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    out = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    err = Console(stderr=True)
    machine = _report.machine_info()
    t_start = time.monotonic()
    runner = _runner.Runner(cfg)
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err, transient=False, disable=not err.is_terminal) as prog:
        task = prog.add_task("starting workers", total=None)

        last = [""]

        def progress(advance, desc):
            if desc:
                prog.update(task, description=desc[:70].ljust(70))
                phase = desc.split(":")[0]
                if not err.is_terminal and phase != last[0]:  # logs get one line per phase
                    last[0] = phase
                    err.print(phase)
            if advance:
                prog.advance(task, advance)

        runner.progress = progress
        try:
            runner.start()
            prog.update(task, total=sum(len(k) for _, _, k in runner.plan()) * (cfg.rounds + 1))
            runner.run()
            prog.update(task, description="done".ljust(70))
        except KeyboardInterrupt:
            err.print("interrupted: reporting what was measured")
        finally:
            runner.stop()
    wall = time.monotonic() - t_start

    res = _report.build(runner, cfg, machine, wall, ["driller", "bench", *argv])
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + time.strftime("%Y%m%d-%H%M%S") + ("-quick" if cfg.quick else "")
    files = [outdir / f"{stem}.json", outdir / f"{stem}.csv"]
    _report.write_json(res, files[0])
    _report.write_csv(res, files[1])
    if not a.no_plot:
        try:
            from . import _plot
            _plot.plot(res, outdir / f"{stem}.png")
            files.append(outdir / f"{stem}.png")
        except Exception as e:  # a missing matplotlib never loses the numbers
            err.print(f"plot skipped: {type(e).__name__}: {e}")
    _report.print_report(res, out, files)
    return 0
