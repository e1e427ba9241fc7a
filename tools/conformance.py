"""`make conformance`: mpi4py 4.1.2's own test suite, run on driller.MPI.

usage: python tools/conformance.py [--sizes 1,2,3] [--modules a,b] [--by-module]
                                   [--timeout SECONDS] [--stall SECONDS]
                                   [--update-baseline] [--json PATH] [--baseline PATH]

Fetches the mpi4py 4.1.2 source distribution once into ``.cache/conformance/``
(``pip download --no-deps --no-binary :all:``; the first time takes a few
minutes, later runs reuse it; the suite is neither edited nor vendored), runs
``test/main.py --no-builddir -q -i REGEX`` (REGEX: exactly the modules in
``MODULES``) under ``driller run --mpi4py`` at each size, and prints per size
the tests run / passed / failed / errors / skipped summed over the ranks,
against Open MPI's reference counts and the 95 % target; the same goes to
``conformance-results.json``.

Each rank runs through tools/conformance_rank.py, which writes its output to
``.cache/conformance/n<N>/rank<R>.log`` and its test events to ``rank<R>.events``.

A size that outlives ``--timeout`` (900 s) or logs nothing on any rank for
``--stall`` (120 s) is a hang: the ranks' stacks are dumped into their logs,
``driller run`` is stopped, and the test each rank was in is reported.

Exit status (a ratchet, so that CI stays green while the API is filled in):
0 if every size passes at least as many tests as ``tests/conformance_baseline.json``
says and none hangs or crashes; 1 otherwise; 2 if the suite cannot be fetched.
``--update-baseline`` (``make conformance-update``) writes the counts just
measured into the baseline (refused if a size hung or crashed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

VERSION = "4.1.2"
MODULES = (
    "p2p_obj p2p_buf p2p_obj_matched p2p_buf_matched request status msgzero msgspec pickle "
    "cco_obj cco_buf cco_vec cco_nb_buf cco_nb_vec cco_ngh_obj cco_ngh_buf comm_topo comm "
    "group comm_inter cco_obj_inter cco_buf_inter cco_vec_inter op datatype pack exceptions "
    "errhandler errorcode info attributes environ objmodel buffer address subclass win rma "
    "rma_nb util_sync util_pkl5 util_pool util_dtlib").split()
# main.py's -i REGEX is searched in each test file's name (test_comm.py): anchor it
REGEX = r"^test_(" + "|".join(MODULES) + r")\.py$"
# mpi4py 4.1.2 + Open MPI 5 on this machine kind: every non-skipped test passes
# (per rank; a size's reference is N times this)
REFERENCE_PER_RANK = {1: 1559, 2: 1633, 3: 1632}
TARGET = 0.95

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "conformance")
BASELINE = os.path.join(ROOT, "tests", "conformance_baseline.json")
RESULTS = os.path.join(ROOT, "conformance-results.json")
RANK_SCRIPT = os.path.join(ROOT, "tools", "conformance_rank.py")


# ---------------------------------------------------------------- parsing one rank

_RAN = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s$")
_STATUS = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$")
# "ERROR: testX (mod.Class.testX)", a subtest adds " (params)" or " [msg]"
_HEADER = re.compile(r"^(ERROR|FAIL|UNEXPECTED SUCCESS): (\S+) \(([^()\s]+)\)(?: (.*))?$")
_SEP1 = "=" * 70
_SEP2 = "-" * 70
_EXIT = re.compile(r"^conformance-rank: main\.py exited with (-?\d+)$")
_STATUS_KEYS = {"failures": "failed", "errors": "errors", "skipped": "skipped",
                "expected failures": "xfail", "unexpected successes": "xpass"}


@dataclass
class RankResult:
    rank: int
    run: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfail: int = 0
    xpass: int = 0
    summary: bool = False          # unittest printed its "Ran N tests" summary
    exit_code: int | None = None   # main.py's sys.exit code, if it got there
    running: str | None = None     # the test started last and not finished
    last_failure: str | None = None   # "test id: exception line" of the latest failure
    problems: list = field(default_factory=list)   # (kind, test id, exception line) each
    modules: dict = field(default_factory=dict)    # module -> Counter of outcomes


def test_module(test_id: str) -> str:
    """``test_comm.TestCommWorld.testDup`` -> ``test_comm``; failed imports too."""
    m = re.match(r"unittest\.loader\._FailedTest\.(\w+)", test_id)
    if m:
        return m.group(1)
    m = re.match(r"(?:setUpClass|tearDownClass|setUpModule|tearDownModule) \(([\w.]+)\)",
                 test_id)
    if m:
        test_id = m.group(1)
    return test_id.split(".", 1)[0]


def exception_line(block: list[str]) -> str:
    """The final exception of a unittest error block: ``Type: message`` (first line)."""
    last_frame = -1
    for i, line in enumerate(block):
        if line.startswith("  File "):
            last_frame = i
    for line in block[last_frame + 1:]:
        if line and not line.startswith(" "):
            return line.strip()
    for line in reversed(block):
        if line.strip():
            return line.strip()
    return "(no message)"


_MISSING_PATTERNS = (
    (re.compile(r"MPI\.(\w+) is not implemented"), "MPI.{0}"),
    (re.compile(r"cannot import name '(\w+)' from '([\w.]+)'"), "{1}.{0}"),
    (re.compile(r"No module named '([\w.]+)'"), "module {0}"),
    (re.compile(r"module '([\w.]+)' has no attribute '(\w+)'"), "{0}.{1}"),
    (re.compile(r"type object '(\w+)' has no attribute '(\w+)'"), "{0}.{1}"),
    (re.compile(r"'(\w+)' object has no attribute '(\w+)'"), "{0}.{1}"),
    (re.compile(r"(\w+)\.(\w+) is not implemented"), "{0}.{1}"),
)


def reason(line: str) -> str:
    """A failure's reason for counting: the missing name if one is missing, else the
    exception line with numbers and quoted values blurred (so alike failures group)."""
    for pattern, fmt in _MISSING_PATTERNS:
        m = pattern.search(line)
        if m:
            name = fmt.format(*m.groups())
            return f"missing {name.replace('driller.MPI.', 'MPI.')}"
    line = re.sub(r"\b0x[0-9a-f]+\b", "0x…", line)
    line = re.sub(r"\b\d+\b", "N", line)
    return line[:160]


def parse_log(text: str, rank: int = 0) -> RankResult:
    """Parse one rank's unittest output (main.py -q or -v; with or without our exit line)."""
    r = RankResult(rank)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _HEADER.match(line)
        if m and i > 0 and lines[i - 1] == _SEP1:
            test_id = m.group(3)
            if test_id.rsplit(".", 1)[-1] != m.group(2):    # Python < 3.11: (module.Class)
                test_id = f"{test_id}.{m.group(2)}"
            j = i + 1
            if j < len(lines) and lines[j] == _SEP2:
                j += 1
            block = []
            while j < len(lines) and lines[j] != _SEP1 and not (
                    lines[j] == _SEP2 and j + 1 < len(lines) and _RAN.match(lines[j + 1])):
                block.append(lines[j])
                j += 1
            r.problems.append((m.group(1), test_id, exception_line(block)))
            i = j
            continue
        m = _RAN.match(line)
        if m:
            r.run = int(m.group(1))
            r.summary = True
        m = _STATUS.match(line)
        if m and r.summary:
            for item in filter(None, (m.group(2) or "").split(", ")):
                key, _, value = item.partition("=")
                if key in _STATUS_KEYS and value.isdigit():
                    setattr(r, _STATUS_KEYS[key], int(value))
        m = _EXIT.match(line)
        if m:
            r.exit_code = int(m.group(1))
        i += 1
    if r.summary:
        r.passed = max(0, r.run - r.failed - r.errors - r.skipped - r.xfail - r.xpass)
    return r


def apply_events(r: RankResult, text: str) -> RankResult:
    """Use a rank's event log: per-module outcomes, the test it was in, and the counts
    when unittest never printed its summary (a hang or a crash).  Tests with failed
    subtests count once as failed here (unittest counts each subtest)."""
    outcome: dict[str, str] = {}
    started: list[str] = []
    failures: list[tuple[str, str, str]] = []      # (kind, test id, exception line)
    for line in text.splitlines():
        head, _, exc = line.partition("\t")
        kind, _, test_id = head.partition(" ")
        if not test_id:
            continue
        if exc and kind in ("fail", "error", "subfail"):
            failures.append(("ERROR" if kind == "error" else "FAIL", test_id, exc))
        if kind == "start":
            started.append(test_id)
            outcome.setdefault(test_id, "")
        elif kind == "subfail":
            outcome[test_id] = "fail"
        elif not (outcome.get(test_id) == "fail" and kind == "ok"):
            outcome[test_id] = kind
    if failures:
        r.last_failure = f"{failures[-1][1]}: {failures[-1][2]}"
    if not r.summary and not r.problems:
        r.problems = failures          # unittest never printed its report: the events say why
    r.running = next((t for t in reversed(started) if not outcome.get(t)), None)
    modules: dict[str, Counter] = {}
    for test_id, kind in outcome.items():
        modules.setdefault(test_module(test_id), Counter())[kind or "unfinished"] += 1
    for _, test_id, _ in r.problems:              # failed imports, setUpClass errors
        if test_id not in outcome and not test_id.startswith("unittest.loader"):
            modules.setdefault(test_module(test_id), Counter())["error"] += 1
    r.modules = {k: dict(v) for k, v in sorted(modules.items())}
    passed = sum(1 for k in outcome.values() if k == "ok")
    if r.summary:
        r.passed = passed if outcome else r.passed    # exact even with subtests
    else:
        counts = Counter(outcome.values())
        r.run = len(outcome)
        r.passed = counts["ok"]
        r.failed = counts["fail"]
        r.errors = counts["error"]
        r.skipped = counts["skip"]
        r.xfail, r.xpass = counts["xfail"], counts["xpass"]
    return r


# ---------------------------------------------------------------- one size

@dataclass
class SizeResult:
    n: int
    status: str = "ok"            # ok | hang | crash
    detail: str = ""
    wall_s: float = 0.0
    run: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    reference: int = 0
    target: int = 0
    baseline: int | None = None
    top_reasons: list = field(default_factory=list)
    modules: dict = field(default_factory=dict)
    ranks: list = field(default_factory=list)


def combine(n: int, ranks: list[RankResult], wall: float, launcher_rc: int | None,
            launcher_lines: list[str], hang: str | None) -> SizeResult:
    s = SizeResult(n=n, wall_s=round(wall, 1))
    s.reference = REFERENCE_PER_RANK.get(n, 0) * n
    s.target = math.ceil(TARGET * s.reference)
    reasons: Counter = Counter()       # failing tests per reason (subtests of one test: once)
    modules: dict[str, Counter] = {}
    for r in ranks:
        s.run += r.run
        s.passed += r.passed
        s.failed += r.failed
        s.errors += r.errors
        s.skipped += r.skipped
        for _, why in sorted({(test_id, reason(line)) for _, test_id, line in r.problems}):
            reasons[why] += 1
        for mod, counts in r.modules.items():
            modules.setdefault(mod, Counter()).update(counts)
    s.top_reasons = reasons.most_common(15)
    s.modules = {k: dict(v) for k, v in sorted(modules.items())}
    s.ranks = [{"rank": r.rank, "run": r.run, "passed": r.passed, "summary": r.summary,
                "exit_code": r.exit_code, "running": r.running,
                "last_failure": r.last_failure} for r in ranks]
    failure = next((line for line in launcher_lines if line.startswith("driller run:")), "")
    unfinished = [r for r in ranks if not r.summary]
    if hang:
        s.status = "hang"
        where = "; ".join(_where(r, "(between tests)") for r in ranks if not r.summary)
        s.detail = f"{hang}: {where or 'after the tests'}"
    elif launcher_rc != 0 or unfinished or len(ranks) < n:
        s.status = "crash"
        where = "; ".join(_where(r, "(outside a test)") for r in unfinished)
        s.detail = "; ".join(filter(None, [failure or f"driller run exited with {launcher_rc}",
                                           where]))
    return s


def _where(r: RankResult, outside: str) -> str:
    text = f"rank {r.rank} in {r.running or outside}"
    if r.last_failure:
        text += f" (its last failure: {r.last_failure[:200]})"
    return text


def _watch(proc: subprocess.Popen, outdir: str, n: int, timeout: float,
           stall: float) -> str | None:
    """Wait for the job; a hang (as text) if it outlives ``timeout`` seconds, or no
    rank logs a test event or output for ``stall`` seconds (a test of the suite takes
    seconds: one stuck waits for a peer that left it)."""
    t0 = time.monotonic()
    files = [os.path.join(outdir, f"rank{r}.{ext}") for r in range(n) for ext in ("events", "log")]
    last = time.time()
    while True:
        try:
            proc.wait(1.0)
            return None
        except subprocess.TimeoutExpired:
            pass
        for path in files:
            try:
                last = max(last, os.stat(path).st_mtime)
            except FileNotFoundError:
                pass
        if time.monotonic() - t0 >= timeout:
            return f"no result after the time limit ({timeout:.0f} s)"
        if time.time() - last >= stall:
            return f"no test event on any rank for {stall:.0f} s"


def run_size(n: int, suite: str, timeout: float, outdir: str | None = None,
             regex: str = REGEX, stall: float = 120.0) -> SizeResult:
    """Run the suite at n ranks (at most ``timeout`` s, or ``stall`` s without
    progress); outputs in outdir."""
    outdir = outdir or os.path.join(CACHE, f"n{n}")
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    cmd = [sys.executable, "-m", "driller", "run", "--mpi4py", "-n", str(n), "--grace", "2",
           RANK_SCRIPT, outdir, os.path.join(suite, "test", "main.py"),
           "--no-builddir", "-q", "-i", regex]
    env = dict(os.environ)
    env.pop("DRILLER_MMPI_RANK", None)
    t0 = time.monotonic()
    with open(os.path.join(outdir, "launcher.log"), "w+") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=outdir, env=env, start_new_session=True)
        hang = _watch(proc, outdir, n, timeout, stall)
        if hang:
            proc.send_signal(signal.SIGUSR1)     # passed on to the ranks: stack dumps
            time.sleep(2)
            proc.send_signal(signal.SIGTERM)     # stops every rank (then SIGKILL)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()                      # its supervisor then kills the ranks
                proc.wait()
        rc = proc.returncode
        wall = time.monotonic() - t0
        out.seek(0)
        launcher_lines = out.read().splitlines()
    ranks = []
    for rank in range(n):
        log = _read(os.path.join(outdir, f"rank{rank}.log"))
        events = _read(os.path.join(outdir, f"rank{rank}.events"))
        if log is None:
            continue
        ranks.append(apply_events(parse_log(log, rank), events or ""))
    return combine(n, ranks, wall, rc, launcher_lines, hang)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- the suite

def fetch_suite(cache: str = CACHE) -> str:
    """The unpacked mpi4py sdist (downloaded the first time)."""
    suite = os.path.join(cache, f"mpi4py-{VERSION}")
    if os.path.isfile(os.path.join(suite, "test", "main.py")):
        return suite
    os.makedirs(cache, exist_ok=True)
    archive = os.path.join(cache, f"mpi4py-{VERSION}.tar.gz")
    if not os.path.isfile(archive):
        print(f"conformance: downloading the mpi4py {VERSION} source distribution into "
              f"{os.path.relpath(cache, ROOT)} (once; pip prepares its metadata: a few "
              f"minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", f"mpi4py=={VERSION}", "-d", cache],
                       check=True)
    tmp = suite + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:                                        # Python < 3.12 without the backport
            tar.extractall(tmp)                      # noqa: S202  (pinned sdist from PyPI)
    os.rename(os.path.join(tmp, f"mpi4py-{VERSION}"), suite)
    shutil.rmtree(tmp, ignore_errors=True)
    return suite


# ---------------------------------------------------------------- report

def load_baseline(path: str) -> dict[int, int]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return {int(k): int(v) for k, v in data.get("passed", {}).items()}


def write_baseline(path: str, results: list[SizeResult]) -> None:
    data = {"suite": f"mpi4py {VERSION}",
            "note": "tests passed per size (summed over ranks); `make conformance` fails "
                    "below these; `make conformance-update` rewrites them",
            "passed": {str(s.n): s.passed for s in results}}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def verdict(s: SizeResult) -> tuple[bool, str]:
    if s.status != "ok":
        return False, f"{s.status.upper()}: {s.detail}"
    if s.baseline is not None and s.passed < s.baseline:
        return False, f"REGRESSION: {s.passed} passed < baseline {s.baseline}"
    if s.baseline is not None and s.passed > s.baseline:
        return True, (f"above the baseline {s.baseline} by {s.passed - s.baseline}: "
                      f"`make conformance-update` raises it")
    return True, "holds the baseline" if s.baseline is not None else "no baseline yet"


def format_size(s: SizeResult) -> list[str]:
    ok, why = verdict(s)
    pct = 100.0 * s.passed / s.reference if s.reference else 0.0
    short = max(0, s.target - s.passed)
    lines = [
        f"n={s.n}: run {s.run}, passed {s.passed}, failures {s.failed}, errors {s.errors}, "
        f"skipped {s.skipped}  ({s.wall_s:.0f} s, {s.status})",
        f"     vs Open MPI {s.reference} passes ({s.n} x {REFERENCE_PER_RANK.get(s.n, 0)}): "
        f"{pct:.1f} %; 95 % target {s.target}: "
        + ("MET" if short == 0 else f"{short} more passes needed"),
        f"     ratchet: {'ok' if ok else 'FAIL'} ({why})",
    ]
    if s.top_reasons:
        lines.append("     most frequent reasons (failing tests, summed over ranks):")
    for text, count in s.top_reasons[:8]:
        lines.append(f"     {count:6d}  {text}")
    return lines


def format_modules(s: SizeResult) -> list[str]:
    """One line per module: its outcomes at this size, summed over the ranks."""
    kinds = ("ok", "fail", "error", "skip", "unfinished")
    lines = [f"     {'module':22s}" + "".join(f"{k:>11s}" for k in kinds)]
    for mod, counts in s.modules.items():
        lines.append(f"     {mod:22s}" + "".join(f"{counts.get(k, 0):11d}" for k in kinds))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,2,3", help="comma-separated rank counts")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="wall-clock limit per size in seconds (default 900)")
    p.add_argument("--stall", type=float, default=120.0,
                   help="a size hangs when no rank logs anything for this long (default 120)")
    p.add_argument("--update-baseline", action="store_true",
                   help="write the measured passes into the baseline file")
    p.add_argument("--baseline", default=BASELINE)
    p.add_argument("--json", default=RESULTS)
    p.add_argument("--modules", default="",
                   help="comma-separated subset of the modules (e.g. win,rma): a partial run "
                        "for development; no baseline check, no baseline update")
    p.add_argument("--by-module", action="store_true",
                   help="print each module's outcomes per size (summed over ranks)")
    args = p.parse_args(argv)
    regex, subset = REGEX, list(MODULES)
    if args.modules:
        subset = [m.strip() for m in args.modules.split(",") if m.strip()]
        unknown = sorted(set(subset) - set(MODULES))
        if unknown:
            p.error(f"--modules: {', '.join(unknown)} not in the conformance set "
                    f"({' '.join(MODULES)})")
        if args.update_baseline:
            p.error("--update-baseline needs the whole set: drop --modules")
        regex = r"^test_(" + "|".join(subset) + r")\.py$"
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    try:
        suite = fetch_suite()
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
        print(f"conformance: cannot fetch the mpi4py {VERSION} source distribution: {e}",
              file=sys.stderr)
        return 2
    baseline = load_baseline(args.baseline)
    results = []
    t0 = time.monotonic()
    for n in sizes:
        print(f"conformance: mpi4py {VERSION} test suite ({len(subset)} modules) under "
              f"driller run --mpi4py -n {n} ...", flush=True)
        s = run_size(n, suite, args.timeout, regex=regex, stall=args.stall)
        s.baseline = None if args.modules else baseline.get(n)
        results.append(s)
        print("\n".join(format_size(s)), flush=True)
        if args.by_module:
            print("\n".join(format_modules(s)), flush=True)
    total = time.monotonic() - t0
    verdicts = [verdict(s) for s in results]
    with open(args.json, "w") as f:
        json.dump({"suite": f"mpi4py {VERSION}", "regex": regex, "wall_s": round(total, 1),
                   "sizes": {str(s.n): asdict(s) for s in results},
                   "ok": all(ok for ok, _ in verdicts)}, f, indent=2)
        f.write("\n")
    print(f"conformance: results in {os.path.relpath(args.json, ROOT)}, per-rank logs in "
          f"{os.path.relpath(CACHE, ROOT)}/n<N>/ ({total:.0f} s in all)")
    if args.update_baseline:
        broken = [s for s in results if s.status != "ok"]
        if broken:
            print("conformance: baseline NOT updated: "
                  + "; ".join(f"n={s.n} {s.status}" for s in broken), file=sys.stderr)
            return 1
        merged = {**baseline, **{s.n: s.passed for s in results}}
        write_baseline(args.baseline, [SizeResult(n=k, passed=v)
                                       for k, v in sorted(merged.items())])
        print(f"conformance: baseline written to {os.path.relpath(args.baseline, ROOT)}: "
              + ", ".join(f"n={k}: {v}" for k, v in sorted(merged.items())))
        return 0
    if all(ok for ok, _ in verdicts):
        print("conformance: OK, no size below its baseline, no hang, no crash")
        return 0
    print("conformance: FAILED: " + "; ".join(f"n={s.n}: {why}" for s, (ok, why)
                                             in zip(results, verdicts) if not ok))
    return 1


if __name__ == "__main__":
    sys.exit(main())
