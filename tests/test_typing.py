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
