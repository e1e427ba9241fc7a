"""One rank of `make conformance`: run mpi4py's test/main.py, its output in files.

usage (by tools/conformance.py, under ``driller run --mpi4py``):
    conformance_rank.py OUTDIR path/to/test/main.py [main.py's arguments ...]

* stdout and stderr of this rank go to ``OUTDIR/rank<R>.log`` (no interleaving
  with other ranks, and nothing is lost if the job is stopped);
* ``OUTDIR/rank<R>.events`` gets one line per test event: ``start <id>`` before
  a test runs and ``<outcome> <id>`` after (ok, fail, error, skip, xfail,
  xpass, subfail), a failure followed by a tab and its exception's first line;
  its last ``start`` names the test a hung rank was in, and its failures say
  why, before unittest prints anything;
* SIGUSR1 (which ``driller run`` passes on to every rank) dumps every thread's
  stack into the log (faulthandler), so a hang shows where each rank waits;
* main.py ends with ``sys.exit(not success)``: the exit code is written to the
  log as ``conformance-rank: main.py exited with <code>`` and the rank exits 0,
  so one rank's failed tests do not make ``driller run`` stop the ranks still
  running theirs.  Anything else main.py raises ends the rank as usual (a crash).

The suite itself is not changed: unittest's result class is wrapped to log the
events, nothing else.
"""

import faulthandler
import os
import runpy
import signal
import sys
import traceback
import unittest


def _redirect(path: str):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _log_events(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def emit(kind, test, err=None):
        try:
            line = f"{kind} {test.id()}"
            if err is not None and err[0] is not None:
                lines = "".join(traceback.format_exception_only(err[0], err[1])).splitlines()
                lines = [x for x in lines if x.strip()] or [""]
                # a failed import's message holds the whole traceback: its last line is why
                text = lines[-1] if "Traceback (most recent call last):" in lines else lines[0]
                line += "\t" + text.strip()[:300].replace("\t", " ")
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        except Exception:   # noqa: BLE001  (a test object with a broken id() or str())
            pass

    result = unittest.TestResult

    def wrap(name, kind, first=False):
        original = getattr(result, name)

        def hooked(self, test, *args, **kwargs):
            if first:
                emit(kind, test)
            try:
                return original(self, test, *args, **kwargs)
            finally:
                if not first:
                    err = args[0] if kind in ("fail", "error") and args else None
                    emit(kind, test, err if isinstance(err, tuple) else None)
        setattr(result, name, hooked)

    wrap("startTest", "start", first=True)
    for name, kind in (("addSuccess", "ok"), ("addFailure", "fail"), ("addError", "error"),
                       ("addSkip", "skip"), ("addExpectedFailure", "xfail"),
                       ("addUnexpectedSuccess", "xpass")):
        wrap(name, kind)
    original_subtest = result.addSubTest

    def add_subtest(self, test, subtest, err):
        original_subtest(self, test, subtest, err)
        if err is not None:
            emit("subfail", test, err)
    result.addSubTest = add_subtest


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.exit(__doc__)
    outdir, script, args = argv[0], argv[1], argv[2:]
    rank = os.environ.get("DRILLER_MMPI_RANK", "0")
    _redirect(os.path.join(outdir, f"rank{rank}.log"))
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    _log_events(os.path.join(outdir, f"rank{rank}.events"))
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"conformance-rank: main.py exited with {code}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
