"""driller is typed (PEP 561: py.typed): mypy --strict passes on the public modules
listed in pyproject.toml, and a user's program sees the real types of the lazily
loaded names (driller.zeros, driller.attach, mmpi.COMM_WORLD), never Any."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import driller

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mypy(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_package_is_marked_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(driller.__file__), "py.typed"))


def test_public_modules_pass_mypy_strict():
    r = _mypy("--config-file", os.path.join(ROOT, "pyproject.toml"), cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_user_program_sees_real_types_not_any(tmp_path):
    prog = tmp_path / "user.py"
    prog.write_text(textwrap.dedent("""
        import driller
        from driller import mmpi
        a = driller.zeros((3, 4), dtype="f8")
        reveal_type(a)
        reveal_type(driller.zeros)
        reveal_type(driller.attach(driller.handle(a)))
        reveal_type(driller.drill)
        reveal_type(mmpi.COMM_WORLD)
        reveal_type(mmpi.COMM_WORLD.Get_rank())
        b: int = a     # a type error mypy must see
    """))
    r = _mypy("--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
              str(prog), cwd=str(tmp_path))
    out = r.stdout
    notes = [line.split("note: Revealed type is ", 1)[1].strip('"')
             for line in out.splitlines() if "Revealed type is" in line]
    assert len(notes) == 6, out
    assert notes[0] == "driller.sharedarray.SharedArray"
    assert "def (shape:" in notes[1] and "driller.sharedarray.SharedArray" in notes[1]
    assert notes[2].startswith("numpy.ndarray")
    assert "driller.hole.Hole" in notes[3]
    assert notes[4] == "driller.mmpi._comm.Intracomm"
    assert notes[5] in ("int", "builtins.int")
    assert not any(n == "Any" for n in notes), notes
    assert 'Incompatible types in assignment (expression has type "SharedArray"' in out


# ---------------------------------------------------------------- the MPI surface
def _public_callables():
    """(name, object) of every public class, method, property and function reachable
    from driller.mmpi.__all__ and driller.MPI.__all__ (methods defined in driller, not
    those a class inherits from Python; of the dunders, the constructors)."""
    import inspect

    from driller import MPI, mmpi
    seen, out = set(), []
    for mod in (mmpi, MPI):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type):
                if obj in seen:
                    continue
                seen.add(obj)
                out.append((f"{mod.__name__}.{name}", obj))
                for attr in dir(obj):
                    if attr.startswith("_") and attr not in ("__new__", "__init__"):
                        continue
                    owner = next(c for c in obj.__mro__ if attr in c.__dict__)
                    raw = owner.__dict__[attr]
                    if not owner.__module__.startswith("driller.") or (owner, attr) in seen:
                        continue
                    seen.add((owner, attr))
                    if isinstance(raw, (staticmethod, classmethod)):
                        raw = raw.__func__
                    if isinstance(raw, property) or inspect.isfunction(raw):
                        out.append((f"{owner.__module__}.{owner.__qualname__}.{attr}", raw))
            elif inspect.isfunction(obj) and obj not in seen:
                seen.add(obj)
                out.append((f"{mod.__name__}.{name}", obj))
    return out


def _missing(obj) -> list[str]:
    """What ``obj`` lacks: "docstring", "annotation of <param>", "return annotation"."""
    import inspect
    if isinstance(obj, type):
        return [] if obj.__dict__.get("__doc__") else ["docstring"]
    fn = obj.fget if isinstance(obj, property) else obj
    # a constructor's documentation is its class's
    out = [] if (obj.__doc__ or "").strip() or fn.__name__.startswith("__") else ["docstring"]
    sig = inspect.signature(fn)
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 and name in ("self", "cls"):
            continue
        if p.annotation is inspect.Parameter.empty:
            out.append(f"annotation of {name}")
    if sig.return_annotation is inspect.Signature.empty:
        out.append("return annotation")
    return out


def test_every_public_mpi_name_has_a_docstring_and_annotations():
    items = _public_callables()
    names = {q for q, _ in items}
    # the enumeration reaches the whole surface (not an empty list that passes)
    for q in ("driller.mmpi._comm.Comm.Send", "driller.mmpi._comm.Comm.recv",
              "driller.mmpi._request.Request.Wait", "driller.mmpi._request.Status.Get_source",
              "driller.mmpi._rma.Win.Put", "driller.mmpi._file.File.Open",
              "driller.mmpi._datatype.Datatype.Create_vector", "driller.MPI.Get_processor_name",
              "driller.errors.MmpiError.Get_error_code", "driller.mmpi._topo.Cartcomm.Get_coords",
              "driller.mmpi._inter.Intercomm.Merge", "driller.mmpi._buffer.buffer.cast",
              "driller.mmpi._comm.Intracomm.__new__", "driller.mmpi._request.Status.__new__"):
        assert q in names, q
    assert len(items) > 500, len(items)
    bad = [f"{q}: no {', '.join(m)}" for q, obj in items if (m := _missing(obj))]
    assert not bad, "public names of driller.mmpi / driller.MPI without a docstring or " \
                    "annotations:\n" + "\n".join(bad)


def test_help_of_comm_send_is_useful():
    import pydoc

    from driller import MPI
    text = pydoc.render_doc(MPI.Comm.Send, renderer=pydoc.plaintext)
    assert "Send(self, buf: 'BufSpec', dest: 'int', tag: 'int' = 0) -> 'None'" in text, text
    assert "Blocking send" in text, text


def _revealed(tmp_path, source: str) -> tuple[dict[int, str], str]:
    """mypy --strict on ``source``: {line: revealed type}, and the whole output."""
    prog = tmp_path / "user.py"
    prog.write_text(source)
    r = _mypy("--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
              str(prog), cwd=str(tmp_path))
    notes = {}
    for line in r.stdout.splitlines():
        if "note: Revealed type is " in line:
            lineno = int(line.split(":")[1])
            notes[lineno] = line.split("note: Revealed type is ", 1)[1].strip('"')
    return notes, r.stdout


def test_every_name_of_the_facades_has_its_type_for_mypy(tmp_path):
    """Names made at run time (datatypes and error classes through globals(),
    COMM_WORLD on first use) are declared for type checkers: none is Any or
    object (what the modules' __getattr__ would give)."""
    from driller import MPI, mmpi
    names = [("MPI", n) for n in MPI.__all__] + [("mmpi", n) for n in mmpi.__all__]
    src = "from driller import MPI, mmpi\n" + "".join(
        f"reveal_type({m}.{n})\n" for m, n in names)
    notes, out = _revealed(tmp_path, src)
    assert len(notes) == len(names), out
    bad = [f"{m}.{n}: {notes[i + 2]}" for i, (m, n) in enumerate(names)
           if notes[i + 2] in ("Any", "object", "builtins.object")]
    assert not bad, "\n".join(bad)
    assert notes[2 + names.index(("MPI", "INT"))] == "driller.mmpi._datatype.Datatype"
    assert notes[2 + names.index(("MPI", "ERR_ARG"))] in ("int", "builtins.int")


def test_user_program_sees_the_mpi_facade_types(tmp_path):
    notes, out = _revealed(tmp_path, textwrap.dedent("""\
        import numpy as np
        from driller import MPI
        comm = MPI.COMM_WORLD
        a = np.zeros(4)
        reveal_type(comm)
        reveal_type(MPI.COMM_SELF)
        reveal_type(comm.Send(a, dest=1, tag=3))
        reveal_type(comm.Isend([a, MPI.DOUBLE], 1))
        reveal_type(comm.recv(source=0))
        reveal_type(comm.Get_size())
        reveal_type(MPI.Comm.Send)
        reveal_type(comm.Split(0, 0))
        reveal_type(MPI.Wtime())
        comm.Send(a, dest="one")   # an error mypy must see
    """))
    assert notes[5] == "driller.mmpi._comm.Intracomm", out
    assert notes[6] == "driller.mmpi._comm.Intracomm", out
    assert notes[7] == "None", out
    assert notes[8] == "driller.mmpi._request.Request", out
    assert notes[9] == "Any", out
    assert notes[10] in ("int", "builtins.int"), out
    assert notes[11].startswith("def (self: driller.mmpi._comm.Comm, buf:"), out
    assert "dest: builtins.int" in notes[11] or "dest: int" in notes[11], out
    assert "->" not in notes[11].rsplit(")", 1)[1], out     # returns None
    assert notes[12] == "driller.mmpi._comm.Comm", out   # as mpi4py types Comm.Split
    assert notes[13] in ("float", "builtins.float"), out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out    # no other complaint (names not exported, Any...)
    assert ':14: error: Argument "dest" to "Send" of "Comm" has incompatible type "str"' in out, out
