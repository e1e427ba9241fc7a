"""Buffer exporters without the buffer protocol: DLPack and the CUDA array interface.

mpi4py accepts host objects exposing ``__dlpack__``/``__dlpack_device__`` or
``__cuda_array_interface__``; so does driller.MPI, for host memory only.  Real
ranks (mmpi.spawn) move data through them; the refusals (read-only receive
buffers, memory that is not host memory) are checked in one process, where the
memory they point at is made unmapped on purpose: a dereference would crash the
test process, a refusal is an exception.
"""

from __future__ import annotations

import array
import gc
import weakref

import numpy as np
import pytest

from driller import MPI, _linux, mmpi
from driller.errors import MmpiBufferError, MmpiError, MmpiKeyError, MmpiTypeError


class CAI:
    """A host array seen only through the CUDA array interface (as mpi4py's tests'
    CAIBuf / FakeGPUArray)."""

    def __init__(self, arr, readonly=False, address=None):
        self.arr = arr
        self.__cuda_array_interface__ = {
            "version": 3, "typestr": arr.dtype.str, "shape": arr.shape, "strides": None,
            "data": (arr.ctypes.data if address is None else address, readonly)}


class DL:
    """A host array seen only through DLPack (numpy's own capsules)."""

    def __init__(self, arr, device=(1, 0), legacy=False):
        self.arr = arr
        self.device = device
        self.legacy = legacy
        self.calls = 0

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, stream=None, max_version=None, copy=None, dl_device=None):
        self.calls += 1
        if self.legacy:
            if max_version is not None:
                raise TypeError("__dlpack__() got an unexpected keyword 'max_version'")
            return self.arr.__dlpack__()
        return self.arr.__dlpack__(max_version=max_version, copy=copy)


def _pair(kind, arr, **kw):
    return CAI(arr, **kw) if kind == "cai" else DL(arr, **kw)


# ----------------------------------------------------------------- real ranks


@pytest.mark.parametrize("kind", ["cai", "dlpack", "dlpack-legacy"])
def test_exporters_move_data_between_ranks(kind):
    def fn(comm, kind):
        me, n = comm.Get_rank(), comm.Get_size()
        wrap = (lambda a: CAI(a)) if kind == "cai" else \
            (lambda a: DL(a, legacy=(kind == "dlpack-legacy")))
        # point-to-point: rank 0 sends 1000 doubles through the exporter
        if me == 0:
            comm.Send(wrap(np.arange(1000, dtype="d")), dest=1, tag=3)
        elif me == 1:
            r = np.zeros(1000, "d")
            comm.Recv(wrap(r), source=0, tag=3)
            assert np.array_equal(r, np.arange(1000, dtype="d"))
        # datatype inferred from the exporter: [buf, count] counts int32 elements
        if me == 0:
            comm.Send([wrap(np.arange(10, dtype=np.int32)), 4], dest=1, tag=4)
        elif me == 1:
            r = np.full(10, -1, np.int32)
            comm.Recv([wrap(r), 4], source=0, tag=4)
            assert list(r) == [0, 1, 2, 3] + [-1] * 6
        # a collective: Allreduce and Allgather
        out = np.zeros(5, np.int64)
        comm.Allreduce(wrap(np.arange(5, dtype=np.int64) * (me + 1)), wrap(out), op=MPI.SUM)
        assert list(out) == [i * n * (n + 1) // 2 for i in range(5)]
        got = np.zeros((n, 3), np.float32)
        comm.Allgather(wrap(np.full(3, me, np.float32)), wrap(got))
        assert np.array_equal(got, np.repeat(np.arange(n, dtype=np.float32), 3).reshape(n, 3))
        return True

    assert mmpi.spawn(fn, 3, args=(kind,)) == [True] * 3


def test_array_array_and_bytes():
    def fn(comm):
        me = comm.Get_rank()
        if me == 0:
            comm.Send(array.array("i", [1, 2, 3]), dest=1)
            comm.Send(b"xyz", dest=1)
            return True
        a = array.array("i", [0, 0, 0])
        comm.Recv(a, source=0)
        assert list(a) == [1, 2, 3]
        with pytest.raises(BufferError, match="read-only"):
            comm.Recv(b"\0\0\0", source=0)   # bytes: refused before anything is received
        r = bytearray(3)
        comm.Recv(r, source=0)
        return bytes(r)

    assert mmpi.spawn(fn, 2) == [True, b"xyz"]


# ----------------------------------------------------------------- one process


def test_readonly_exporters_refused_as_receive_buffer():
    comm = MPI.COMM_SELF
    src = np.arange(4, dtype=np.int32)
    ro = np.arange(4, dtype=np.int32)
    ro.flags.writeable = False       # numpy flags its versioned capsule read-only
    for rbuf in (CAI(np.zeros(4, np.int32), readonly=True), DL(ro)):
        with pytest.raises(MmpiBufferError, match="not writable") as ei:
            comm.Sendrecv(src, 0, 0, rbuf, 0, 0)
        assert isinstance(ei.value, BufferError)
    # as send buffers they are fine
    r = np.zeros(4, np.int32)
    comm.Sendrecv(DL(ro), 0, 0, r, 0, 0)
    assert list(r) == [0, 1, 2, 3]
    r[:] = 0
    comm.Sendrecv(CAI(src, readonly=True), 0, 0, CAI(r), 0, 0)
    assert list(r) == [0, 1, 2, 3]


def test_malformed_cai_errors_are_mpi4pys():
    comm = MPI.COMM_SELF
    s = np.arange(3, dtype=np.uint8)

    def bad(mutate):
        c = CAI(np.zeros(3, np.uint8))
        mutate(c.__cuda_array_interface__)
        return c

    with pytest.raises(MmpiKeyError, match="'data'"):
        comm.Sendrecv(s, 0, 0, bad(lambda d: d.pop("data")), 0, 0)
    with pytest.raises(MmpiTypeError):
        comm.Sendrecv(s, 0, 0, bad(lambda d: d.update(shape=3)), 0, 0)
    with pytest.raises(ValueError):
        comm.Sendrecv(s, 0, 0, bad(lambda d: d.update(data=(1,))), 0, 0)
    with pytest.raises(BufferError, match="masked"):
        comm.Sendrecv(s, 0, 0, bad(lambda d: d.update(mask=True)), 0, 0)
    with pytest.raises(BufferError, match="contiguous"):
        c = CAI(np.zeros((3, 2), np.uint8))
        c.__cuda_array_interface__["strides"] = (2, 2)      # neither C nor F order
        comm.Sendrecv(np.zeros(6, np.uint8), 0, 0, c, 0, 0)


def test_memory_that_is_not_host_memory_is_refused_never_read():
    """A GPU pointer is no readable mapping of this process: refused with a clear
    error, never dereferenced (a read would SIGSEGV this very test process)."""
    comm = MPI.COMM_SELF
    length = 1 << 16
    addr = _linux.mmap(length, shared=False)
    _linux.munmap(addr, length)            # now certainly unmapped
    gpu = CAI(np.zeros(4, np.float64), address=addr)
    for what, call in (("send", lambda: comm.Send(gpu, 0)),
                       ("recv", lambda: comm.Recv(gpu, 0))):
        with pytest.raises(MmpiBufferError, match="not .* host memory") as ei:
            call()
        assert "GPU" in str(ei.value), what
    # DLPack: a CUDA-device tensor whose data pointer is not mapped here
    base = _linux.mmap(length, shared=False)
    view = np.frombuffer(_linux.memory_at(base, length), np.uint8)
    dev = DL(view, device=(2, 0))
    caps = dev.__dlpack__(max_version=(1, 0))   # the producer's tensor, alive
    del caps
    _linux.munmap(base, length)   # the tensor's memory goes away under the view
    with pytest.raises(MmpiBufferError, match="host memory"):
        comm.Send(dev, 0)
    # a host-memory tensor labelled CUDA (managed/host memory) is accepted
    r = np.zeros(3)
    comm.Sendrecv(DL(np.arange(3.0), device=(2, 0)), 0, 0, r, 0, 0)
    assert list(r) == [0.0, 1.0, 2.0]


def test_dlpack_capsule_kept_alive_while_used_and_released_once():
    """The capsule (whose destructor calls the producer's deleter, exactly once) lives
    as long as the transfer needs the memory; we never consume or rename it."""
    comm = MPI.COMM_SELF
    arr = np.zeros(1 << 12, np.int64)
    alive = weakref.ref(arr)
    dst = DL(arr)
    req = comm.Irecv(dst, source=0, tag=7)
    del arr, dst
    gc.collect()
    assert alive() is not None, "the producer's memory was freed under a pending receive"
    comm.Send(np.arange(1 << 12, dtype=np.int64), dest=0, tag=7)   # matched: copied in
    assert np.array_equal(alive(), np.arange(1 << 12))
    req.Wait()
    gc.collect()
    assert alive() is None, "the capsule (and the producer's tensor) was never released"

    # the same capsule used twice (mpi4py's testCapsule): still an unconsumed capsule
    a = np.arange(4, dtype=np.int32)
    d = DL(a)
    cap = a.__dlpack__(max_version=(1, 0))
    d.__dlpack__ = lambda *args, **kw: cap
    r = np.zeros(4, np.int32)
    comm.Sendrecv(d, 0, 0, r, 0, 0)
    comm.Sendrecv(d, 0, 0, r, 0, 0)
    assert list(r) == [0, 1, 2, 3]
    assert _linux.capsule_pointer(cap, b"dltensor_versioned") is not None
    # not a capsule at all
    d.__dlpack__ = lambda *args, **kw: None
    with pytest.raises(BufferError, match="invalid capsule"):
        comm.Send(d, 0)


def test_dlpack_device_errors():
    comm = MPI.COMM_SELF
    d = DL(np.arange(4, dtype=np.int32))
    for dev, exc in (((None, 0), TypeError), ((1,), ValueError), (None, TypeError)):
        d.device = dev
        with pytest.raises(exc) as ei:
            comm.Send(d, 0)
        assert isinstance(ei.value, MmpiError)


def test_no_buffer_at_all_is_a_type_error():
    with pytest.raises(MmpiTypeError, match="buffer protocol"):
        MPI.COMM_SELF.Send(object(), 0)


def test_non_native_byte_order_needs_an_explicit_datatype():
    comm = MPI.COMM_SELF
    s = np.arange(3, dtype=">i4")
    r = np.zeros(3, ">i4")
    with pytest.raises(MmpiBufferError, match="byte order"):
        comm.Sendrecv(s, 0, 0, r, 0, 0)
    with pytest.raises(BufferError, match="byte order"):
        comm.Allreduce(s, r, op=MPI.SUM)
    comm.Sendrecv([s, MPI.INT], 0, 0, [r, MPI.INT], 0, 0)   # bytes as they are
    assert list(r) == [0, 1, 2]


def test_get_buffer_reports_the_kind_as_mpi4py():
    """What an MPI.buffer-like wrapper needs: the view and mpi4py's kind (0 buffer
    protocol, the DLPack device, 2 = kDLCUDA for the CUDA array interface)."""
    from driller.mmpi._bufspec import get_buffer
    a = np.arange(4, dtype=np.int32)
    mv, kind = get_buffer(a, True)
    assert kind == 0 and mv.nbytes == 16 and not mv.readonly
    mv, kind = get_buffer(DL(a), True)
    assert kind == 1 and bytes(mv) == a.tobytes()
    mv, kind = get_buffer(DL(a, device=(2, 0)), False)
    assert kind == 2 and bytes(mv) == a.tobytes()
    mv, kind = get_buffer(CAI(a), True)
    assert kind == 2 and bytes(mv) == a.tobytes()
    with pytest.raises(BufferError):
        get_buffer(b"abc", True)


def test_mpi_buffer_of_exporters_as_mpi4py():
    """MPI.buffer(obj) / MPI.buffer.frombuffer(obj) of DLPack and CUDA-array-interface
    exporters: host memory (DLPack kDLCPU) is a plain byte buffer; device memory (a
    DLPack device, the CUDA array interface) is refused CPU access with BufferError
    (cast, tobytes, items, MPI.Get_address) as mpi4py's, and still moves in messages."""
    a = np.arange(4, dtype=np.int32)
    cpu = MPI.buffer.frombuffer(DL(a))
    assert cpu.nbytes == 16 and not cpu.readonly
    assert cpu.cast("i").tolist() == [0, 1, 2, 3] and cpu.tobytes("i") == a.tobytes()
    cpu[0] = 7                                    # the exporter's own memory
    assert a[0] == 7 and MPI.Get_address(cpu) == a.ctypes.data
    assert MPI.buffer(DL(a))[0] == 7
    for dev in (CAI(a), DL(a, device=(2, 0))):
        buf = MPI.buffer.frombuffer(dev)
        assert buf.nbytes == 16
        for f in (lambda: buf.cast("i"), lambda: buf.tobytes("i"), lambda: buf[0],
                  lambda: MPI.Get_address(buf)):
            with pytest.raises(BufferError):
                f()
        with pytest.raises(BufferError):
            buf[0] = 1
        r = bytearray(16)
        MPI.COMM_SELF.Sendrecv(buf, 0, 0, r, 0, 0)
        assert bytes(r) == a.tobytes()
    ro = np.arange(4, dtype=np.int32)
    ro.flags.writeable = False
    with pytest.raises(BufferError):               # read-only exporter, readonly=False
        MPI.buffer.frombuffer(CAI(ro, readonly=True))
    assert MPI.buffer(CAI(ro, readonly=True)).readonly
    with pytest.raises(TypeError):
        MPI.buffer.frombuffer(object())
