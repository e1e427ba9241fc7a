"""docs/configuration.md names every environment variable the project reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names_in_code() -> set[str]:
    names = set()
    for top in ("src", "tools"):
        for path in (ROOT / top).rglob("*.py"):
            names |= set(re.findall(r"\b_?DRILLER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def test_every_environment_variable_is_in_the_table():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| `")]
    documented = {n for row in rows for n in re.findall(r"`(_?DRILLER_[A-Z0-9_]+)`",
                                                        row.split("|")[1])}
    names = _names_in_code()
    assert {"DRILLER_PROXY", "DRILLER_PROXY_LOG", "DRILLER_MMPI_RANK"} <= names  # the scan works
    missing = sorted(names - documented)
    assert not missing, f"not in docs/configuration.md's table: {missing}"
    stale = sorted(documented - names)
    assert not stale, f"documented but read nowhere: {stale}"
    assert "docs/configuration.md" in (ROOT / "README.md").read_text()
