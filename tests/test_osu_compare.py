"""benchmarks/osu_compare.py's ``--variant`` parsing (the runs themselves need
Open MPI and minutes: they are the benchmark's, not the suite's)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "osu_compare.py"


@pytest.fixture(scope="module")
def oc():
    spec = importlib.util.spec_from_file_location("osu_compare", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_parsed(oc):
    got = oc.parse_variants(["yield:DRILLER_MMPI_PURE_POLLS=0",
                             "two:DRILLER_BIND=core,DRILLER_MMPI_ADAPT_MAX=2000",
                             "eq:X=a=b"])
    assert got == {"yield": {"DRILLER_MMPI_PURE_POLLS": "0"},
                   "two": {"DRILLER_BIND": "core", "DRILLER_MMPI_ADAPT_MAX": "2000"},
                   "eq": {"X": "a=b"}}
    assert oc.parse_variants([]) == {}


@pytest.mark.parametrize("bad", ["yield", "yield:", ":X=1", "v:X", "v:=1", "v:X=1,Y",
                                 "driller:X=1", "base:X=1", "ompi:X=1"])
def test_bad_variant_named(oc, bad):
    with pytest.raises(ValueError, match="--variant"):
        oc.parse_variants([bad])


def test_duplicate_variant_refused(oc):
    with pytest.raises(ValueError, match="taken"):
        oc.parse_variants(["a:X=1", "a:X=2"])
