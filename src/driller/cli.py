"""`driller` command line: run, bench, info, demo."""

from __future__ import annotations

import sys

USAGE = """usage: driller COMMAND [ARGS...]

commands:
  run    launch an mmpi program on N ranks   (driller run -n 4 prog.py)
  bench  performance test, side by side with mpi4py/Open MPI and multiprocessing
  info   the fd proxy in use, its published segments, this process's map cache
  demo   two processes sharing one array (a minute's tour)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        from .mmpi._launcher import main as run_main
        return run_main(rest, supervised=True)
    if cmd == "bench":
        from ._bench import main as bench_main
        return bench_main(rest)
    if cmd == "info":
        from ._info import main as info_main
        return info_main(rest)
    if cmd == "demo":
        from ._demo import main as demo_main
        return demo_main(rest)
    print(f"driller: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
