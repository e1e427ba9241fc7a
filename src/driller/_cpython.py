"""A work-around for a CPython 3.13 bug that lets an exception escape its ``try``.

CPython 3.13's compiler leaves some backward jumps out of the exception table
(python/cpython#130279): the jump that ends a ``while cond:`` loop (its condition
is copied to the bottom), the one that ends a ``for`` body whose last statement is
an ``if`` without ``else``, a comprehension's filter.  A signal handler's exception
(``KeyboardInterrupt``, or any handler that raises) runs at a backward jump, and
3.13 looks its handler up at that jump: there it finds none, so the exception
leaves the function past every ``except`` and ``finally`` around the loop.  Code
that must clean up after such an exception then does not: a receive published
for a direct write stayed published after its ``Recv`` raised (the sender wrote
into a buffer the program had moved on with), a ring's records served in a loop
were not marked taken, signals held by ``_shielded`` stayed held.

:func:`install` (called first thing by ``driller/__init__``) puts an import hook
that gives every ``driller.*`` module a code object whose uncovered backward jumps
are covered by the handler that covers their target (the loop's header, inside
the same ``try``): exactly the entry the compiler meant to write.  It does so only
where :data:`AFFECTED` (3.13+, and a probe compiled here shows the gap); 3.10 to
3.12 look the handler up at the instruction before the jump, which the table
covers.  tests/test_cpython_loops.py checks every module's code and the
behaviour (real signals at the jumps).

(This module and ``driller/__init__`` are compiled before the hook: neither has a
loop inside a ``try``.)"""

from __future__ import annotations

import dis
import importlib.machinery
import sys
import types

__all__ = ["AFFECTED", "install", "repair", "uncovered_jumps"]

_JB = dis.opmap.get("JUMP_BACKWARD", -1)   # (3.11+)
_EXT = dis.opmap.get("EXTENDED_ARG", -1)
_JB_BYTE = bytes([_JB]) if _JB >= 0 else b""
_INTRINSIC = dis.opmap.get("CALL_INTRINSIC_1", -1)


def _table(co: types.CodeType) -> list:
    """``co``'s exception table: [start, end, target, depth, lasti] (code units)."""
    raw = getattr(co, "co_exceptiontable", b"")   # (3.11+)
    out = []
    i = 0

    def varint():
        nonlocal i
        b = raw[i]
        i += 1
        v = b & 63
        while b & 64:
            b = raw[i]
            i += 1
            v = (v << 6) | (b & 63)
        return v

    while i < len(raw):
        start = varint()
        size = varint()
        target = varint()
        dl = varint()
        out.append([start, start + size, target, dl >> 1, dl & 1])
    return out


def _encode(entries: list) -> bytes:
    out = bytearray()

    def varint(v: int, first: bool) -> None:
        chunks = [v & 63]
        v >>= 6
        while v:
            chunks.append(v & 63)
            v >>= 6
        chunks.reverse()
        for k, c in enumerate(chunks):
            b = c | (64 if k < len(chunks) - 1 else 0)
            if first and k == 0:
                b |= 128
            out.append(b)

    for start, end, target, depth, lasti in entries:
        varint(start, True)
        varint(end - start, False)
        varint(target, False)
        varint(depth << 1 | lasti, False)
    return bytes(out)


def _units(co: types.CodeType) -> list:
    """The handler of each code unit of ``co``: (target, depth, lasti), or None."""
    units = [None] * (len(co.co_code) // 2)
    for start, end, target, depth, lasti in _table(co):
        units[start:end] = [(target, depth, lasti)] * (end - start)
    return units


def _jumps(co: types.CodeType):
    """(first unit, end unit, target unit) of each JUMP_BACKWARD in ``co`` (its
    EXTENDED_ARG prefix and inline caches counted in; co_code's caches are zeros)."""
    code = co.co_code
    k = code.find(_JB_BYTE)
    while k >= 0:
        if not k & 1:   # (an opcode, not an argument)
            u = first = k // 2
            arg = code[k + 1]
            shift = 8
            while first and code[2 * first - 2] == _EXT:
                first -= 1
                arg |= code[2 * first + 1] << shift
                shift += 8
            end = u + 1 + _JB_CACHES
            yield first, end, end - arg
        k = code.find(_JB_BYTE, k + 1)


def _wrapper(co: types.CodeType, h) -> bool:
    # a generator's own handler (StopIteration -> RuntimeError), around its whole body
    return co.co_code[2 * h[0]] == _INTRINSIC and co.co_code[2 * h[0] + 1] == 3


def uncovered_jumps(co: types.CodeType) -> list:
    """The backward jumps of ``co`` (not its nested code) whose handler is not
    their target's, which has one: no handler, or only a generator's own:
    [(first unit, end unit, the target's handler (target, depth, lasti))]."""
    if not getattr(co, "co_exceptiontable", b""):   # (no try: nothing to cover)
        return []
    units = None
    out = []
    for first, end, target in _jumps(co):
        if units is None:
            units = _units(co)
        if not 0 <= target < len(units):   # (not a jump this module understands)
            continue
        want = units[target]
        if want is None or _wrapper(co, want):
            continue
        got = set(units[first:end])
        if got != {want} and all(h is None or _wrapper(co, h) for h in got):
            out.append((first, end, want))
    return out


def repair(co: types.CodeType) -> types.CodeType:
    """``co`` with each uncovered backward jump given its target's handler (in
    ``co`` and every code object nested in it)."""
    consts = tuple(repair(c) if isinstance(c, types.CodeType) else c for c in co.co_consts)
    changes = {}
    if any(a is not b for a, b in zip(consts, co.co_consts)):
        changes["co_consts"] = consts
    gaps = uncovered_jumps(co)
    if gaps:
        units = _units(co)
        for first, end, want in gaps:
            units[first:end] = [want] * (end - first)
        entries = []
        for u, h in enumerate(units):
            if h is None:
                continue
            if entries and entries[-1][1] == u and entries[-1][2:] == list(h):
                entries[-1][1] = u + 1
            else:
                entries.append([u, u + 1, *h])
        changes["co_exceptiontable"] = _encode(entries)
    return co.replace(**changes) if changes else co


def _jb_caches() -> int:
    # the inline cache units after a JUMP_BACKWARD, read off a compiled loop
    ins = list(dis.get_instructions(compile("while x:\n    pass\nx = 1\n", "<probe>", "exec")))
    jb = next(k for k, i in enumerate(ins) if i.opcode == _JB)
    return (ins[jb + 1].offset - ins[jb].offset) // 2 - 1


_JB_CACHES = _jb_caches() if sys.version_info >= (3, 12) else 0   # (3.11: other jumps)

_PROBE = """
def f(w):
    try:
        while w[0]:
            w[1] += 1
    except BaseException:
        w[2] = 1
        raise
"""


def _affected() -> bool:
    if sys.version_info < (3, 13) or sys.implementation.name != "cpython":
        return False
    mod = compile(_PROBE, "<probe>", "exec")
    f = next(c for c in mod.co_consts if isinstance(c, types.CodeType))
    return bool(uncovered_jumps(f))


#: True where this interpreter compiles loops with uncovered backward jumps and
#: looks a handler up at the jump (the hook then repairs driller's code)
AFFECTED = _affected()


class _Loader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):
        return repair(super().get_code(fullname))


class _Finder:
    """Finds ``driller.*`` modules as the path finder does, loaded by :class:`_Loader`."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if not fullname.startswith("driller."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _Loader(spec.loader.name, spec.loader.path)
        return spec

    @staticmethod
    def invalidate_caches():
        pass


def install() -> None:
    """Put the import hook (once) where :data:`AFFECTED`."""
    if AFFECTED and _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)
