"""mpi4py's own osu demos under driller and under Open MPI, side by side.

Runs each of mpi4py's unmodified ``demo/osu_latency.py``, ``osu_bw.py`` and
``osu_multi_lat.py`` (from the conformance cache, ``make conformance`` fetches
it) once with ``driller run --mpi4py`` and once with Open MPI's ``mpirun``,
alternating which goes first, for ``--rounds`` rounds; prints per size the
median driller / Open MPI ratio (time: lower is better for driller; osu_bw
bandwidth: higher is better) with its spread (min..max over the rounds).
Ratios within a round cancel most of a shared machine's load.

    .venv/bin/python benchmarks/osu_compare.py [--rounds 3] [--only latency,bw,multi_lat]
        [--sizes 8,1M,4M] [--multi-ranks 4] [--json out.json] [--base-src DIR]
        [--variant NAME:KEY=VALUE[,KEY=VALUE]]... [--all]

``--base-src DIR`` adds a third column: driller imported from another source
tree (e.g. a worktree of the branch before a change), run in the same rounds,
so a before/after comparison shares the machine's load too.  ``--variant``
(repeatable) adds a column per name: this tree's driller with those
environment variables (a waiting policy's knobs, ``DRILLER_BIND``), in the same
rounds, e.g. ``--variant yield:DRILLER_MMPI_PURE_POLLS=0 --variant
core:DRILLER_BIND=core``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".cache" / "conformance" / "mpi4py-4.1.2" / "demo"
BIN = Path(sys.executable).parent


def _size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "KM" else s) * mult


def run(impl: str, prog: str, n: int, max_size: int, base_src: str | None = None,
        extra_env: dict[str, str] | None = None) -> dict[int, float]:
    """{size: figure} printed by one run of an osu demo (capped at max_size)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        src = (DEMO / prog).read_text()
        # the demos take their limits as keyword defaults: cap the largest size
        src = src.replace("MAX_MSG_SIZE=1 << 22", f"MAX_MSG_SIZE={max_size}")
        f.write(src)
        path = f.name
    try:
        py = str(BIN / "python")
        env = None
        if impl in ("driller", "base") or extra_env is not None:
            cmd = [str(BIN / "driller"), "run", "-n", str(n), "--mpi4py", path]
            if impl == "base":
                env = dict(os.environ, PYTHONPATH=base_src)
            elif extra_env is not None:   # a --variant: this tree, its environment
                env = dict(os.environ, **extra_env)
        else:
            cmd = [str(BIN / "mpirun"), "--oversubscribe", "--allow-run-as-root", "-n", str(n),
                   py, path]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode:
            print(f"# {impl}: {prog} failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1:] or ''}", file=sys.stderr)
            return {}
        out = proc.stdout
    finally:
        os.unlink(path)
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            res[int(parts[0])] = float(parts[1])
    return res


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """``--variant`` values ``NAME:KEY=VALUE[,KEY=VALUE]`` -> {name: environment}."""
    variants: dict[str, dict[str, str]] = {}
    for v in specs:
        name, _, kvs = v.partition(":")
        pairs = [kv.split("=", 1) for kv in kvs.split(",")] if kvs else []
        if not name or not pairs or any(len(kv) != 2 or not kv[0] for kv in pairs):
            raise ValueError(f"--variant {v!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        if name in variants or name in ("driller", "ompi", "base"):
            raise ValueError(f"--variant {v!r}: the name {name!r} is taken; give another")
        variants[name] = dict(pairs)
    return variants


PROGS = {"latency": ("osu_latency.py", 2, "us"), "bw": ("osu_bw.py", 2, "MB/s"),
         "multi_lat": ("osu_multi_lat.py", None, "us")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="latency,bw,multi_lat")
    ap.add_argument("--sizes", default="0,8,1K,64K,256K,1M,4M")
    ap.add_argument("--multi-ranks", type=int, default=4)
    ap.add_argument("--json")
    ap.add_argument("--all", action="store_true",
                    help="also print each round's figures (a bimodal spread shows as two groups)")
    ap.add_argument("--base-src", help="also run driller from this source tree (before/after)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V[,K=V]",
                    help="also run this tree's driller with these environment variables, "
                         "in the same rounds (e.g. yield:DRILLER_MMPI_PURE_POLLS=0); repeatable")
    a = ap.parse_args()
    try:
        variants = parse_variants(a.variant)
    except ValueError as e:
        ap.error(str(e))
    sizes = [_size(s) for s in a.sizes.split(",")]
    table = {}
    for key in a.only.split(","):
        prog, n, unit = PROGS[key]
        n = n or a.multi_ranks
        impls = ["driller", "ompi"] + (["base"] if a.base_src else []) + list(variants)
        rounds = {i: [] for i in impls}
        for r in range(a.rounds):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                rounds[impl].append(run(impl, prog, n, max(sizes), a.base_src,
                                        variants.get(impl)))
        print(f"# {prog} (-n {n}), {a.rounds} interleaved rounds; driller / Open MPI "
              f"({'bandwidth: >1 is faster' if key == 'bw' else 'time: <1 is faster'})")
        print(f"{'size':>10} {'driller ' + unit:>14} {'Open MPI ' + unit:>14} {'ratio':>7}  spread"
              + ("     before ratio  spread" if a.base_src else ""))
        for s in sizes:
            pairs = [(d[s], o[s]) for d, o in zip(rounds["driller"], rounds["ompi"])
                     if s in d and s in o and o[s] > 0]
            if not pairs:
                continue
            ratios = [d / o for d, o in pairs]
            med = statistics.median(ratios)
            dmed = statistics.median(d for d, _ in pairs)
            omed = statistics.median(o for _, o in pairs)
            line = (f"{s:>10} {dmed:>14.2f} {omed:>14.2f} {med:>7.2f}  "
                    f"{min(ratios):.2f}..{max(ratios):.2f}")
            row = {"driller": dmed, "ompi": omed, "ratio": med,
                   "spread": [min(ratios), max(ratios)]}
            if a.base_src:
                br = [b[s] / o[s] for b, o in zip(rounds["base"], rounds["ompi"])
                      if s in b and s in o and o[s] > 0]
                if br:
                    line += f"  {statistics.median(br):>11.2f}  {min(br):.2f}..{max(br):.2f}"
                    row["before_ratio"] = statistics.median(br)
                    row["before_spread"] = [min(br), max(br)]
            for name in variants:
                vr = [v[s] / o[s] for v, o in zip(rounds[name], rounds["ompi"])
                      if s in v and s in o and o[s] > 0]
                if vr:
                    line += f"  {name} {statistics.median(vr):.2f} {min(vr):.2f}..{max(vr):.2f}"
                    row[name] = {"ratio": statistics.median(vr), "spread": [min(vr), max(vr)]}
            print(line)
            if a.all:
                for impl in impls:
                    print(f"{'':>10} {impl:>14}: " + " ".join(
                        f"{d[s]:.2f}" if s in d else "-" for d in rounds[impl]))
            table.setdefault(key, {})[s] = row
        sys.stdout.flush()
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
