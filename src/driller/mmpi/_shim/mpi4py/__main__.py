"""``python -m mpi4py prog.py`` under ``driller run --mpi4py``.

mpi4py's runner executes a script, ``-m module`` or ``-c code`` and aborts the
job if it raises.  Under ``driller run`` a rank that raises already stops the
job, so this only runs the program the way mpi4py's runner would.
"""

import os
import runpy
import sys

_USAGE = ("usage: python -m mpi4py [--rc key=value ...] "
          "(<pyfile> | -m <module> | -c <cmd> | -) [args ...]")


def _main(argv):
    import mpi4py
    i = 0
    while i < len(argv) and argv[i].startswith("--rc"):
        spec = argv[i][5:] if argv[i].startswith("--rc=") else (
            argv[i + 1] if i + 1 < len(argv) else "")
        i += 1 if argv[i].startswith("--rc=") else 2
        for item in filter(None, spec.split(",")):
            key, _, value = item.partition("=")
            setattr(mpi4py.rc, key.strip(), value.strip())
    rest = argv[i:]
    if rest and rest[0] in ("-h", "--help"):
        print(_USAGE)
        return
    if not rest:
        sys.exit(_USAGE)
    if rest[0] == "-m" and len(rest) > 1:
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    elif rest[0] == "-c" and len(rest) > 1:
        sys.argv = ["-c", *rest[2:]]
        sys.path.insert(0, "")
        exec(compile(rest[1], "<string>", "exec"), {"__name__": "__main__"})
    elif rest[0] == "-":
        sys.argv = ["-", *rest[1:]]
        exec(compile(sys.stdin.read(), "<stdin>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(rest)
        sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    _main(sys.argv[1:])
