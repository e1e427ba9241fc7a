"""The docs site builds without a warning (`make docs` is `mkdocs build --strict`), and
its API reference is generated from the docstrings of the public names."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_site_builds_strict_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                        "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(site)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("index.html", "mmpi/index.html", "configuration/index.html"):
        assert (site / page).is_file(), page
    pages = {name: (site / "api" / name / "index.html").read_text()
             for name in ("driller", "mmpi", "MPI", "errors")}
    text = {name: _text(page) for name, page in pages.items()}
    # names and their docstrings, as written in the source
    from driller import sharedarray
    from driller.mmpi import _comm
    assert 'id="driller.sharedarray.zeros"' in pages["driller"]
    assert _first_line(sharedarray.zeros) in text["driller"]
    assert 'id="driller.mmpi.Comm.Send"' in pages["mmpi"]
    assert _first_line(_comm.Comm) in text["mmpi"]
    assert 'id="driller.errors.UnsupportedPlatformError"' in pages["errors"]


def _squash(text: str) -> str:
    """Letters and digits only: markup, spacing and punctuation do not count."""
    return re.sub(r"\W+", "", text)


def _text(page: str) -> str:
    """A page's text (tags dropped, entities decoded), squashed."""
    return _squash(html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _first_line(obj) -> str:
    """The first line of obj's docstring, squashed."""
    return _squash(obj.__doc__.strip().split("\n")[0])
