"""Python objects on the wire: the pickling policy and the object wire formats.

Lowercase methods (``send``, ``bcast``...) move picklable objects.  The policy
(:func:`scan`): an object with nothing large inside is plain pickled (the
fastest); large buffers inside (numpy data, bytes/bytearray of at least
``OOB_MIN`` bytes) go out of band (pickle protocol 5, and persistent ids for
bytes/bytearray), so the transport copies them once, straight from the
sender's memory.  :func:`dumps` gives ``(stream, parts)``, :func:`loads` the
object back.  The formats the transport puts in its records:

* ``F_ARRAY`` payload (a bare numeric numpy array, eager-sized): ``ARR`` header
  (dtype.str, ndim), ndim x i64 shape, then the data (:func:`pack_array`);
* an object table (packed, or a rendezvous' inline payload)::

      TABLE: i64 count, i64 stream_len, i64 stream_addr (0: stream inline after it)
      count x PART: (i64 address, i64 length, i64 how)   how: bit0 readonly, bit1 persistent
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np

__all__ = ["OOB_MIN", "ARR", "ARRAY_KINDS", "TABLE", "PART", "SIMPLE", "OOB_ARRAYS",
           "OOB_BYTES", "scan", "dumps", "loads", "own_copy", "unpickle", "use_pickler", "user_pickler",
           "pack_array", "unpack_array"]

ARR = struct.Struct("<8sq")   # F_ARRAY payload: dtype.str, ndim; ndim x i64 shape; the data
ARRAY_KINDS = "biufc"         # bare arrays of these kinds, eager-sized, travel raw, unpickled
TABLE = struct.Struct("<3q")
PART = struct.Struct("<3q")
OOB_MIN = 65536               # pickle buffers this large travel out of band


_BIG = (bytes, bytearray)

# The user's pickler (``MPI.pickle.__init__(dumps, loads, protocol)``), or None for
# the default, whose policy is below (plain pickle, or protocol 5 with large buffers
# out of band).  ``unpickle`` turns a plain stream back into an object: callers look
# it up on this module at each call (``_objects.unpickle(v)``, no dearer than
# ``pickle.loads(v)``), so :func:`use_pickler` swaps it at no cost to the default.
_user = None
unpickle = pickle.loads


def _user_unpickle(stream):
    if not len(stream):   # an empty message is None, as mpi4py's pickle_load
        return None
    return _user.loads(stream)


def use_pickler(p) -> None:
    """Install ``p`` (an object with ``dumps(obj) -> bytes`` and ``loads(buffer)``,
    e.g. an :class:`MPI.Pickle`) for every object message, or None for the default."""
    global _user, unpickle
    _user = p
    unpickle = pickle.loads if p is None else _user_unpickle


def user_pickler():
    """The pickler installed by :func:`use_pickler`, None for the default."""
    return _user


def _oob_identity(x):
    return x


_SCALARS = (int, float, str, bool, type(None), complex)
SIMPLE, OOB_ARRAYS, OOB_BYTES = 0, 1, 2


def scan(obj, budget=256, depth=3) -> int:
    """A bounded look inside containers: SIMPLE (only scalars, small bytes and small
    numpy arrays: plain pickle is fastest), OOB_BYTES (a large bytes/bytearray),
    or OOB_ARRAYS (anything else: protocol 5 with a buffer callback)."""
    stack = [(obj, 0)]
    seen = 0
    out = SIMPLE
    while stack:
        o, d = stack.pop()
        t = type(o)
        if t in _BIG:
            if len(o) >= OOB_MIN:
                return OOB_BYTES
            continue
        if t in _SCALARS:
            continue
        if t is np.ndarray:
            if o.nbytes >= OOB_MIN or o.dtype.hasobject:
                out = OOB_ARRAYS
            continue
        if d >= depth:
            out = OOB_ARRAYS
            continue
        if t is list or t is tuple:
            items = o
        elif t is dict:
            items = o.values()
        else:
            out = OOB_ARRAYS
            continue
        for x in items:
            seen += 1
            if seen > budget:
                return OOB_ARRAYS
            stack.append((x, d + 1))
    return out


def _has_big_bytes(obj) -> bool:
    return scan(obj) == OOB_BYTES


class _OobPickler(pickle.Pickler):
    """Pickler sending large bytes/bytearray out of band (by persistent id)."""

    def __init__(self, f, parts):
        super().__init__(f, 5, buffer_callback=self._cb)
        self.parts = parts

    def _cb(self, pb):
        raw = pb.raw()
        if raw.nbytes < OOB_MIN:
            return True
        self.parts.append((raw, 1 if raw.readonly else 0))
        return False

    def persistent_id(self, o):
        t = type(o)
        if t in _BIG and len(o) >= OOB_MIN:
            i = len(self.parts)
            self.parts.append((memoryview(o), 3 if t is bytes else 2))
            return i
        return None


def dumps(obj):
    """(stream, parts): parts are (byte view, how) of out-of-band buffers."""
    if _user is not None:  # the user's pickler: one in-band stream, as mpi4py sends it
        stream = _user.dumps(obj)
        if type(stream) is not bytes:
            try:
                stream = bytes(memoryview(stream))
            except TypeError:
                raise TypeError(f"the pickler's dumps returned {type(stream).__name__}, not "
                                f"bytes (MPI.pickle's dumps must return a bytes-like "
                                f"object)") from None
        return stream, []
    parts = []
    kind = scan(obj)
    if kind == SIMPLE:  # nothing large inside: the plain (faster) pickle
        return pickle.dumps(obj, 5), parts   # (5: numpy keeps a non-native byte order)
    if kind == OOB_BYTES:
        f = io.BytesIO()
        _OobPickler(f, parts).dump(obj)
        return f.getvalue(), parts

    def cb(pb, append=parts.append, oob_min=OOB_MIN):
        raw = pb.raw()
        if raw.nbytes < oob_min:
            return True
        append((raw, 1 if raw.readonly else 0))
        return False

    return pickle.dumps(obj, 5, buffer_callback=cb), parts


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, buffers, parts):
        super().__init__(f, buffers=buffers)
        self._parts = parts

    def persistent_load(self, pid):
        return self._parts[pid][0]


def loads(value):
    stream, parts = value
    if parts is None:  # a bare array sent raw (F_ARRAY): already built
        return stream
    if stream is None:  # a buffer message received as an object: unpickled, as mpi4py
        return pickle.loads(parts) if len(parts) else None
    if not parts:
        return unpickle(stream)
    buffers = [b for b, how in parts if not how & 2]
    if len(buffers) == len(parts):  # no persistent (bytes/bytearray) parts
        return pickle.loads(stream, buffers=buffers)
    return _Unpickler(io.BytesIO(stream), buffers, parts).load()


_IMMUTABLE = (int, float, str, bool, type(None), complex, bytes, range)


def own_copy(obj):
    """``obj`` as a receiver of it would get it: a pickle round trip (the user's
    pickler if one is installed, else :func:`dumps`, out-of-band buffers copied
    once).  mpi4py's lowercase collectives give a rank its own contribution that
    way (the root's ``bcast`` result, its item of ``gather``/``scatter``/
    ``allgather``/``alltoall``, a reduction over one rank), so that changing the
    result never changes the object passed in; driller gives the same.
    Immutable scalars, bytes and flat tuples of them are returned as they are
    (nobody can tell); shared arrays inside stay by reference, as every other
    rank gets them."""
    t = type(obj)
    if t in _IMMUTABLE or (t is tuple and all(type(x) in _IMMUTABLE for x in obj)):
        return obj
    stream, parts = dumps(obj)
    if parts:   # copies: bytes (read-only, or a bytes object) or bytearray (writable)
        parts = [(bytes(mv) if how & 1 else bytearray(mv), how) for mv, how in parts]
    return loads((stream, parts))


def pack_array(a) -> bytes:
    """The F_ARRAY payload of a small C-contiguous numpy array of a plain kind:
    ~1 µs where pickle takes ~8 µs to dump and ~5 µs to load."""
    return b"".join((ARR.pack(a.dtype.str.encode(), a.ndim),
                     struct.pack(f"<{a.ndim}q", *a.shape), a.tobytes()))


def unpack_array(buf):
    """A new, writable array from an F_ARRAY payload."""
    buf = memoryview(buf)
    dt, ndim = ARR.unpack_from(buf, 0)
    shape = struct.unpack_from(f"<{ndim}q", buf, ARR.size)
    dtype = np.dtype(dt.rstrip(b"\0").decode())
    count = 1
    for x in shape:
        count *= x
    if not count:
        return np.empty(shape, dtype)
    return np.frombuffer(buf, dtype, count, ARR.size + 8 * ndim).reshape(shape).copy()
