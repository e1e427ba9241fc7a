"""CPython 3.13 leaves some backward jumps out of the exception table
(python/cpython#130279), so a signal handler's exception raised there escapes every
``except`` and ``finally`` around the loop (driller/_cpython.py).  These tests fire
real SIGALRMs into loops of each shape and check that the handler ran every time
once the code is repaired, that the unrepaired code escaped where the interpreter
has the bug (so the test can fail), and that every driller module's code, as its
import hook loads it, has no backward jump left without its handler."""

from __future__ import annotations

import itertools
import signal
import sys
import types
from pathlib import Path

import pytest

import driller
from driller import _cpython as C

# each shape in a try whose handler counts; `it` runs until the signal comes
SHAPES = '''
def while_cond(it, seen):
    w = [1, 0]
    try:
        seen.append(0)
        while w[0]:
            w[1] = next(it)
    except BaseException:
        seen.append(1)
        raise

def for_if(it, seen):
    w = [0]
    try:
        seen.append(0)
        for i in it:
            if i:
                w[0] = i
    except BaseException:
        seen.append(1)
        raise

def comp_filter(it, seen):
    try:
        seen.append(0)
        return [i for i in it if i]
    finally:
        seen.append(1)

def nested(it, seen):
    w = [1, 0]
    try:
        seen.append(0)
        try:
            while w[0]:
                w[1] = next(it)
        except ValueError:
            pass
    finally:
        seen.append(1)

def generator(it, seen):
    try:
        seen.append(0)
        for i in it:
            if i:
                yield i
    finally:
        seen.append(1)
'''

SHAPE_NAMES = ["while_cond", "for_if", "comp_filter", "nested", "generator"]


class _Boom(Exception):
    pass


def _boom(*_):
    raise _Boom()


def _functions(repaired: bool) -> dict:
    code = compile(SHAPES, "<shapes>", "exec")
    ns: dict = {}
    exec(C.repair(code) if repaired else code, ns)   # noqa: S102 - our own source above
    return ns


def _escapes(fn, entered: int = 60, stop_at: int = 0) -> int:
    """How many SIGALRMs raised inside ``fn``'s ``try`` (``entered`` of them; one
    that came before the ``try`` was entered does not count) left it without its
    handler running; ``stop_at``: return once that many escaped."""
    old = signal.signal(signal.SIGALRM, _boom)
    esc = 0
    try:
        for _ in range(20 * entered):
            seen: list = []
            it = itertools.repeat(0, 10 ** 9)   # (falsy: the `if`s and the filter skip)
            try:   # (armed inside: one that comes at once is caught here, not counted)
                signal.setitimer(signal.ITIMER_REAL, 0.0003)
                r = fn(it, seen)
                if isinstance(r, types.GeneratorType):
                    list(r)
            except _Boom:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if not seen:
                continue   # (the signal came before the try)
            esc += seen == [0]   # (entered, and the handler never ran)
            entered -= 1
            if not entered or (stop_at and esc >= stop_at):
                break
        assert not entered or (stop_at and esc >= stop_at), "the loops were not entered"
    finally:
        signal.signal(signal.SIGALRM, old)
    return esc


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_signal_in_loop_reaches_its_handler(shape):
    assert _escapes(_functions(True)[shape]) == 0


def test_unrepaired_loops_escape_where_affected():
    """The test above can fail: on an interpreter with the bug the same shapes,
    unrepaired, let the signal's exception past their handler."""
    raw = _functions(False)
    esc = {s: _escapes(raw[s], 200, stop_at=1) for s in SHAPE_NAMES}
    if C.AFFECTED:
        assert esc["while_cond"] and esc["for_if"] and esc["nested"], esc
    else:
        assert not any(esc.values()), esc


def _sources():
    """(module name, path) of every driller source file (the mpi4py shim's
    package directory is the real mpi4py's: not ours, not walked)."""
    root = Path(driller.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _gaps(co, name, hit):
    hit += [(name, co.co_qualname, f) for f, _, _ in C.uncovered_jumps(co)]
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            _gaps(c, name, hit)
    return hit


def test_every_driller_module_is_repaired():
    """Every module's code as the import hook loads it: no backward jump left
    without its target's handler (3.12 and 3.13 tables; 3.10/3.11 compile loops
    with other jumps).  On an affected interpreter the sources compiled plainly
    have such jumps (so this can fail), and driller/__init__ and _cpython,
    compiled before the hook, have none."""
    if sys.version_info < (3, 12):
        pytest.skip("3.10/3.11 compile loops with other jumps (and have no such gap)")
    left, raw = [], 0
    for name, path in _sources():
        _gaps(C._Loader(name, str(path)).get_code(name), name, left)
        plain = _gaps(compile(path.read_text(), str(path), "exec"), name, [])
        raw += len(plain)
        if name in ("driller", "driller._cpython"):
            assert not plain, plain
    assert not left, left
    if C.AFFECTED:
        assert raw > 20, raw
    else:
        assert C._Finder not in sys.meta_path


def test_imports_go_through_the_hook():
    """A driller module imported for real was loaded by the hook where the
    interpreter is affected: its live functions' code has no gap (the one that
    dropped a published receive's withdrawal first among them)."""
    from driller.mmpi import _transport

    loader = type(_transport.__spec__.loader)
    live = _gaps(_transport.Transport._direct_wait.__code__, "_direct_wait", [])
    live += _gaps(_transport.Transport._shielded.__code__, "_shielded", [])
    if C.AFFECTED:
        assert C._Finder in sys.meta_path and loader is C._Loader
        assert not live, live
        plain = compile(Path(_transport.__file__).read_text(), _transport.__file__, "exec")
        assert _gaps(plain, "_transport", []), "the probe found nothing to repair"
    else:
        assert loader is not C._Loader


def test_repair_keeps_the_table_and_changes_only_gaps():
    """The table re-encoded as read is the same bytes; a repaired function still
    runs as before."""
    for co in (compile(SHAPES, "<shapes>", "exec"), C.repair.__code__):
        for c in [co] + [x for x in co.co_consts if isinstance(x, types.CodeType)]:
            if sys.version_info >= (3, 11):
                assert C._encode(C._table(c)) == c.co_exceptiontable
    f = _functions(True)
    assert f["comp_filter"](iter([0, 1, 2, 0, 3]), []) == [1, 2, 3]
    assert list(f["generator"](iter([0, 4, 0, 5]), [])) == [4, 5]
