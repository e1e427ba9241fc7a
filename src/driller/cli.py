"""`driller` command line: run, bench, info, demo.

One argparse parser for ``driller [-h] [-V] COMMAND``; each command parses its
own arguments with its own argparse parser (``driller COMMAND --help``).  Usage
errors print a short usage and one error line on stderr and exit with 2.

This module imports no more than it needs: ``driller --version`` and
``driller --help`` do not import numpy, and a command's modules are imported
only when that command runs.
"""

from __future__ import annotations

import sys

from . import __version__

TYPE_CHECKING = False   # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse

__all__ = ["main", "COMMANDS"]

COMMANDS = {
    "run": "launch an mmpi program on N ranks (driller run -n 4 prog.py)",
    "bench": "performance test, side by side with mpi4py/Open MPI and multiprocessing",
    "info": "the fd proxy in use, its published segments, this process's map cache",
    "demo": "two processes sharing one array (a minute's tour)",
}


def _parser() -> argparse.ArgumentParser:
    import argparse   # here: `driller run` parses its own arguments (docs/launcher.md, "Startup")
    p = argparse.ArgumentParser(
        prog="driller",
        description="driller: cooperating Linux processes read and write one another's memory.",
        epilog="'driller COMMAND --help' shows the options of a command.")
    p.add_argument("-V", "--version", action="version", version=f"driller {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help in COMMANDS.items():
        sp = sub.add_parser(name, help=help, add_help=False)
        sp.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def _run(command: str, argv: list[str], program: bool = False) -> int:
    if command == "run":
        if program:      # the `driller` command itself: see _launcher.run_program
            import gc
            gc.disable()
            from .mmpi._launcher import run_program
            run_program(argv)
        from .mmpi._launcher import main as run_main
        return run_main(argv, supervised=True)
    if command == "bench":
        from ._bench import main as bench_main
        return bench_main(argv)
    if command == "info":
        from ._info import main as info_main
        return info_main(argv)
    from ._demo import main as demo_main
    return demo_main(argv)


def main(argv: list[str] | None = None) -> int:
    """``driller ARGV``: the exit status (argparse may raise SystemExit for
    ``--help``, ``--version`` and usage errors, as usual).

    Without ``argv`` (the ``driller`` command, ``python -m driller``) this is the
    program itself: ``driller run`` then ends the process when the job is over
    (see ``driller.mmpi._launcher.run_program``)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["help"]:                    # `driller help`, `driller help run`
        argv = [*argv[1:2], "--help"]
    if argv and argv[0] in COMMANDS:
        # the command's own parser sees every argument, '--' included
        return _run(argv[0], argv[1:], program)
    p = _parser()
    ns = p.parse_args(argv)
    if ns.command is None:
        p.print_usage(sys.stderr)
        print("driller: error: a command is required: "
              f"{', '.join(COMMANDS)} (driller --help says what they do)", file=sys.stderr)
        return 2
    return _run(ns.command, ns.args)


if __name__ == "__main__":
    sys.exit(main())
