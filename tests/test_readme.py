"""Every ```python block of README.md runs as written, and prints what it says.

A block that uses mmpi (or mpi4py) runs under `driller run -n 2`, the others
with `python`, each from a file of its own in an empty directory.  A line
``print(...)  # VALUE`` promises VALUE in the output.  Fragments belong in
plain ``` blocks, not ```python ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
PY = sys.executable
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    README = f.read()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
MPI = re.compile(r"^\s*(from driller import mmpi|import driller\.mmpi|from driller\.mmpi |"
                 r"from mpi4py import|import mpi4py)", re.M)
PROMISE = re.compile(r"^\s*print\(.*\)\s*#\s*(\S+)\s*$", re.M)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


def test_readme_has_its_examples_as_python_blocks():
    assert len(BLOCKS) >= 4
    # no other spelling of a Python block that would escape the test below
    assert not re.search(r"^```(py|python3|pycon|ipython)\b", README, re.M)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs_as_written(i, tmp_path):
    code = BLOCKS[i]
    prog = tmp_path / f"example{i}.py"
    prog.write_text(code)
    if MPI.search(code):
        cmd = [PY, "-m", "driller", "run", "-n", "2", str(prog)]
    else:
        cmd = [PY, str(prog)]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, f"README example {i}:\n{code}\n{res.stderr}"
    promised = PROMISE.findall(code)
    assert promised, f"README example {i} shows no result (print(...)  # value):\n{code}"
    words = res.stdout.split()
    for value in promised:
        assert value in words, (value, res.stdout)
