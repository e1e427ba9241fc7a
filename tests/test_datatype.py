"""Datatypes: predefined and derived types, typemaps and extents against hand
computations, Pack/Unpack (external32 byte order), addresses, and messages of
derived types between real ranks (mmpi.spawn forks them) against numpy references."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from driller import MPI, mmpi
from driller.errors import MmpiError


def runs(dt):
    roff, rlen = dt._t.runs()
    return list(zip(roff.tolist(), rlen.tolist()))


# ---------------------------------------------------------------- predefined

def test_predefined_names_sizes_codes():
    assert MPI.INT.Get_name() == "MPI_INT" and MPI.INT.size == 4 and MPI.INT.extent == 4
    assert MPI.DOUBLE.typechar == "d" and MPI.DOUBLE.typestr == "f8"
    assert MPI.INT32_T.tocode() == "i4" and MPI.INT.tocode() == "i"
    assert MPI.Datatype.fromcode("i4") == MPI.INT32_T
    assert MPI.COMPLEX.Get_name() == "MPI_COMPLEX" and MPI.COMPLEX != MPI.C_FLOAT_COMPLEX
    assert MPI.INTEGER8.size == 8 and MPI.LOGICAL.size == 4 and MPI.CHARACTER.size == 1
    # pair types: size without the padding, extent with it (C struct {short; int})
    assert (MPI.SHORT_INT.size, MPI.SHORT_INT.extent) == (6, 8)
    assert (MPI.DOUBLE_INT.size, MPI.DOUBLE_INT.extent) == (12, 16)
    assert MPI.INT_INT.typechar == "V" and MPI.INT_INT.typestr == "V8"
    with pytest.raises(ValueError):
        MPI.INT_INT.tocode()
    assert MPI.TWOINT is MPI.INT_INT
    assert MPI.Datatype.Get_value_index(MPI.DOUBLE, MPI.INT) is MPI.DOUBLE_INT
    assert MPI.BFLOAT16_T == MPI.DATATYPE_NULL      # numpy has no bfloat16
    assert MPI.INT.Get_envelope() == (0, 0, 0, 0, MPI.COMBINER_NAMED)
    assert MPI.INT.is_named and MPI.INT.is_predefined
    assert MPI.INT.decode() == (MPI.INT, "NAMED", {})


def test_handles_equality_and_pickling():
    d = MPI.Datatype(MPI.INT)
    assert d == MPI.INT and d is not MPI.INT
    assert pickle.loads(pickle.dumps(MPI.INT)) is MPI.INT
    assert pickle.loads(pickle.dumps(MPI.DATATYPE_NULL)) is MPI.DATATYPE_NULL
    assert MPI.Datatype() == MPI.DATATYPE_NULL and not MPI.Datatype()
    assert MPI.DATATYPE_NULL.Get_name() == "MPI_DATATYPE_NULL"
    with pytest.raises(TypeError):
        MPI.Datatype((1, 2))
    v = MPI.INT.Create_vector(2, 1, 3).Commit()
    w = pickle.loads(pickle.dumps(v))
    assert w != v and w.decode()[1:] == ("VECTOR", {"count": 2, "blocklength": 1, "stride": 3})
    assert runs(w) == runs(v)


# ---------------------------------------------------------------- typemaps

def test_vector_typemap_and_extent():
    v = MPI.INT.Create_vector(3, 2, 4)     # blocks of 2 ints every 4 ints
    assert v.size == 24
    assert v.Get_extent() == (0, (2 * 4 + 2) * 4)          # 40
    assert v.Get_true_extent() == (0, 40)
    assert runs(v) == [(0, 8), (16, 8), (32, 8)]
    assert v.Get_envelope() == (3, 0, 0, 1, MPI.COMBINER_VECTOR)
    i, a, c, d = v.Get_contents()
    assert (i, a, c) == ([3, 2, 4], [], []) and d == [MPI.INT]
    assert not v.is_named and not v.is_predefined


def test_hvector_indexed_struct_subarray_extents():
    hv = MPI.DOUBLE.Create_hvector(2, 1, 20)
    assert (hv.lb, hv.ub, hv.size) == (0, 28, 16)
    ix = MPI.INT.Create_indexed([2, 1], [5, 1])       # ints 5,6 then 1
    assert (ix.lb, ix.ub, ix.size) == (4, 28, 12)
    assert runs(ix) == [(20, 8), (4, 4)]
    ib = MPI.SHORT.Create_indexed_block(2, [0, 3])
    assert (ib.lb, ib.ub, ib.size) == (0, 10, 8) and runs(ib) == [(0, 4), (6, 4)]
    hb = MPI.SHORT.Create_hindexed_block(1, [0, 7])
    assert (hb.lb, hb.ub) == (0, 9)
    st = MPI.Datatype.Create_struct([1, 2], [0, 8], [MPI.CHAR, MPI.DOUBLE])
    assert st.size == 17 and (st.lb, st.ub) == (0, 24)   # padded to double alignment
    assert st.true_extent == 24 and st.typestr == "V24"
    # a 2x2 block at (1, 1) of a 4x4 int array, C and Fortran order
    sc = MPI.INT.Create_subarray([4, 4], [2, 2], [1, 1], order=MPI.ORDER_C)
    assert sc.size == 16 and sc.extent == 64 and runs(sc) == [(20, 8), (36, 8)]
    sf = MPI.INT.Create_subarray([4, 3], [2, 1], [1, 2], order=MPI.ORDER_FORTRAN)
    # Fortran: element (i, j) at (i + 4 j) * 4; j = 2, i = 1..2
    assert runs(sf) == [(36, 8)]
    r = MPI.INT.Create_resized(-4, 16)
    assert (r.lb, r.ub, r.true_lb, r.true_ub) == (-4, 12, 0, 4)
    c3 = r.Create_contiguous(3)
    assert (c3.lb, c3.ub, c3.true_lb, c3.true_ub) == (-4, 44, 0, 36)
    assert runs(c3) == [(0, 4), (16, 4), (32, 4)]


def test_darray_cyclic_and_block():
    # 8 ints over 4 processes, cyclic: rank 1 owns 1 and 5
    d = MPI.INT.Create_darray(4, 1, [8], [MPI.DISTRIBUTE_CYCLIC], [MPI.DISTRIBUTE_DFLT_DARG],
                              [4])
    assert d.size == 8 and d.extent == 32 and runs(d) == [(4, 4), (20, 4)]
    b = MPI.INT.Create_darray(2, 1, [5], [MPI.DISTRIBUTE_BLOCK], [MPI.DISTRIBUTE_DFLT_DARG],
                              [2])
    assert runs(b) == [(12, 8)]            # block of 3: rank 1 owns 3, 4


def test_huge_contiguous_is_not_flattened():
    big = MPI.BYTE.Create_contiguous(2 ** 31 + 10)
    assert big.size == 2 ** 31 + 10
    big.Free()
    assert big == MPI.DATATYPE_NULL


def test_f90_and_match_size():
    t = MPI.Datatype.Create_f90_integer(4)
    assert t.size == 2 and t.is_predefined and not t.is_named
    assert t.Get_envelope() == (1, 0, 0, 0, MPI.COMBINER_F90_INTEGER)
    assert MPI.Datatype.Create_f90_real(15, 300).size == 8
    assert MPI.Datatype.Create_f90_complex(6, 30).size == 8
    assert MPI.Datatype.Match_size(MPI.TYPECLASS_REAL, 8).size == 8
    with pytest.raises(MPI.Exception):
        MPI.Datatype.Match_size(MPI.TYPECLASS_INTEGER, 16)


def test_errors():
    with pytest.raises(MPI.Exception) as e:
        MPI.INT.Create_contiguous(-1)
    assert e.value.Get_error_class() == MPI.ERR_COUNT
    with pytest.raises(MPI.Exception) as e:
        MPI.INT.Free()
    assert e.value.Get_error_class() == MPI.ERR_TYPE
    with pytest.raises(MPI.Exception) as e:
        MPI.DATATYPE_NULL.Get_size()
    assert e.value.Get_error_class() == MPI.ERR_TYPE
    with pytest.raises(ValueError):
        MPI.Datatype.Create_struct([1], [0], [MPI.INT, MPI.FLOAT])
    v = MPI.INT.Create_vector(2, 1, 2)
    a = np.zeros(8, "i")
    with pytest.raises(MPI.Exception, match="not committed") as e:
        MPI.COMM_SELF.Isend([a, 1, v], 0, 0)
    assert e.value.Get_error_class() == MPI.ERR_TYPE
    v.Commit()
    v2 = MPI.Datatype(v)
    v2.Free()
    with pytest.raises(MPI.Exception, match="DATATYPE_NULL"):
        MPI.COMM_SELF.Isend([a, 1, v2], 0, 0)
    with pytest.raises(MPI.Exception, match="reach bytes"):
        MPI.COMM_SELF.Isend([a, 5, v], 0, 0)     # 5 items need 9 ints


# ---------------------------------------------------------------- packing

def test_pack_unpack_vector_roundtrip():
    v = MPI.INT.Create_vector(3, 1, 2).Commit()
    src = np.arange(6, dtype="i")
    buf = bytearray(v.Pack_size(1, MPI.COMM_SELF) + 4)
    pos = v.Pack(src, buf, 0, MPI.COMM_SELF)
    assert pos == 12
    assert np.frombuffer(buf[:12], "i").tolist() == [0, 2, 4]
    out = np.full(6, -1, "i")
    assert v.Unpack(buf, 0, out, MPI.COMM_SELF) == 12
    assert out.tolist() == [0, -1, 2, -1, 4, -1]


def test_pack_external32_is_big_endian():
    a = np.array([1, 2], "i")
    b = bytearray(8)
    assert MPI.INT.Pack_external("external32", a, b, 0) == 8
    assert bytes(b) == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    d = np.array([1.5], "d")
    b = bytearray(8)
    MPI.DOUBLE.Pack_external("external32", d, b, 0)
    assert bytes(b) == np.array([1.5], ">f8").tobytes()
    c = np.array([1 + 2j], "F")
    b = bytearray(8)
    MPI.C_FLOAT_COMPLEX.Pack_external("external32", c, b, 0)
    assert bytes(b) == np.array([1, 2], ">f4").tobytes()
    # a struct of mixed elements: each element swapped on its own
    st = MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.SHORT, MPI.DOUBLE]).Commit()
    rec = np.zeros(1, np.dtype([("h", "i2"), ("d", "f8")], align=True))
    rec["h"], rec["d"] = 7, 2.5
    n = st.Pack_external_size("external32", 1)
    out = bytearray(n)
    assert st.Pack_external("external32", rec, out, 0) == 10
    assert bytes(out) == np.array([7], ">i2").tobytes() + np.array([2.5], ">f8").tobytes()
    back = np.zeros_like(rec)
    st.Unpack_external("external32", out, 0, back)
    assert back["h"][0] == 7 and back["d"][0] == 2.5
    with pytest.raises(MPI.Exception, match="external32"):
        MPI.INT.Pack_external_size("native", 1)


def test_pack_many_runs_one_numpy_copy():
    # 1000 runs of equal length: the windowed np.take path
    v = MPI.DOUBLE.Create_vector(1000, 3, 5).Commit()
    src = np.arange(5000, dtype="d")
    buf = bytearray(v.Pack_size(1, MPI.COMM_SELF))
    v.Pack(src[:4998], buf, 0, MPI.COMM_SELF)
    ref = src.reshape(1000, 5)[:, :3].ravel()
    assert np.array_equal(np.frombuffer(buf, "d"), ref)
    # mixed run lengths (indexed with 1-, 2- and 3-element blocks, many of them)
    bl = [1, 2, 3] * 20
    dp = list(range(0, 60 * 5, 5))
    ix = MPI.DOUBLE.Create_indexed(bl, dp).Commit()
    out = bytearray(ix.Pack_size(1, MPI.COMM_SELF))
    ix.Pack(src[:ix.extent // 8], out, 0, MPI.COMM_SELF)
    ref = np.concatenate([src[d:d + b] for b, d in zip(bl, dp)])
    assert np.array_equal(np.frombuffer(out, "d"), ref)
    back = np.zeros(ix.extent // 8)
    ix.Unpack(out, 0, back, MPI.COMM_SELF)
    mask = np.zeros(back.size, bool)
    for b, d in zip(bl, dp):
        mask[d:d + b] = True
    assert np.array_equal(back[mask], src[:back.size][mask]) and not back[~mask].any()


# ---------------------------------------------------------------- addresses

def test_addresses():
    a = np.arange(10, dtype="i")
    assert MPI.Get_address(a) == a.__array_interface__["data"][0]
    assert MPI.Get_address(a[3:]) - MPI.Get_address(a) == 12
    assert MPI.Get_address(None) == 0 and MPI.Get_address(MPI.BOTTOM) == 0
    assert MPI.Aint_add(100, 8) == 108 and MPI.Aint_diff(108, 100) == 8


# ---------------------------------------------------------------- messages between ranks

def _vector_pingpong(comm):
    v = MPI.DOUBLE.Create_vector(4, 2, 3).Commit()
    if comm.rank == 0:
        a = np.arange(12, dtype="d")
        comm.Send([a, 1, v], 1, tag=5)
        return None
    r = np.full(12, -1.0)
    st = MPI.Status()
    comm.Recv([r, 1, v], 0, tag=5, status=st)
    return r.tolist(), st.Get_count(v), st.Get_elements(MPI.DOUBLE), st.Get_count(MPI.DOUBLE)


def test_send_recv_vector_between_ranks():
    res = mmpi.spawn(_vector_pingpong, 2)
    got, count, elems, doubles = res[1]
    ref = np.full(12, -1.0)
    src = np.arange(12, dtype="d")
    for b in range(4):
        ref[3 * b:3 * b + 2] = src[3 * b:3 * b + 2]
    assert got == ref.tolist()
    assert (count, elems, doubles) == (1, 8, 8)


def _struct_and_subarray(comm):
    rec_t = np.dtype([("i", "i4"), ("d", "f8")], align=True)
    st = MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.INT, MPI.DOUBLE]).Commit()
    sub = MPI.INT.Create_subarray([5, 6], [2, 3], [1, 2]).Commit()
    idx = MPI.SHORT.Create_indexed([1, 3], [4, 0]).Commit()
    if comm.rank == 0:
        recs = np.zeros(3, rec_t)
        recs["i"] = [1, 2, 3]
        recs["d"] = [0.5, 1.5, 2.5]
        comm.Send([recs, 3, st], 1, 1)
        grid = np.arange(30, dtype="i").reshape(5, 6)
        req = comm.Isend([grid, 1, sub], 1, 2)
        sh = np.arange(5, dtype="h")
        comm.Send([sh, idx], 1, 3)
        req.Wait()
        return None
    recs = np.zeros(3, rec_t)
    comm.Recv([recs, 3, st], 0, 1)
    grid = np.zeros((5, 6), "i")
    req = comm.Irecv([grid, 1, sub], 0, 2)
    st2 = MPI.Status()
    req.Wait(st2)
    sh = np.zeros(5, "h")
    comm.Recv([sh, 1, idx], 0, 3)
    return recs["i"].tolist(), recs["d"].tolist(), grid.tolist(), st2.Get_count(sub), sh.tolist()


def test_send_recv_struct_subarray_indexed_between_ranks():
    res = mmpi.spawn(_struct_and_subarray, 2)
    ints, dbls, grid, count, sh = res[1]
    assert ints == [1, 2, 3] and dbls == [0.5, 1.5, 2.5]
    ref = np.zeros((5, 6), "i")
    ref[1:3, 2:5] = np.arange(30, dtype="i").reshape(5, 6)[1:3, 2:5]
    assert grid == ref.tolist() and count == 1
    # indexed [1 at 4, 3 at 0] of 0..4 sends [4, 0, 1, 2]; received the same way
    assert sh == [0, 1, 2, 0, 4]


def _bottom_and_sendrecv(comm):
    a = np.zeros(4, "i")
    b = np.zeros(2, "d")
    st = MPI.Datatype.Create_struct([4, 2], [MPI.Get_address(a), MPI.Get_address(b)],
                                    [MPI.INT, MPI.DOUBLE]).Commit()
    peer = 1 - comm.rank
    if comm.rank == 0:
        a[:] = [1, 2, 3, 4]
        b[:] = [0.25, 0.75]
    v = MPI.INT.Create_vector(2, 1, 2).Commit()
    x = np.arange(4, dtype="i") + 10 * comm.rank
    y = np.full(4, -1, "i")
    comm.Sendrecv([x, 1, v], peer, 7, [y, 1, v], peer, 7)
    if comm.rank == 0:
        comm.Send([MPI.BOTTOM, 1, st], 1, 9)
        return y.tolist()
    comm.Recv([MPI.BOTTOM, 1, st], 0, 9)
    return y.tolist(), a.tolist(), b.tolist()


def test_bottom_absolute_addresses_and_sendrecv():
    res = mmpi.spawn(_bottom_and_sendrecv, 2)
    assert res[0] == [10, -1, 12, -1]
    y, a, b = res[1]
    assert y == [0, -1, 2, -1]
    assert a == [1, 2, 3, 4] and b == [0.25, 0.75]


def _truncated(comm):
    v = MPI.INT.Create_vector(3, 1, 2).Commit()
    if comm.rank == 0:
        comm.Send(np.array([7, 8], "i"), 1, 0)    # 2 ints for a 3-int type
        return None
    r = np.full(6, -1, "i")
    st = MPI.Status()
    comm.Recv([r, 1, v], 0, 0, st)
    return r.tolist(), st.Get_count(v), st.Get_elements(v)


def test_partial_receive_of_derived_type():
    r, count, elems = mmpi.spawn(_truncated, 2)[1]
    assert r == [7, -1, 8, -1, -1, -1]
    assert count == MPI.UNDEFINED and elems == 2


def test_collectives_with_derived_types():
    def fn(comm):
        v = MPI.INT.Create_vector(2, 1, 2).Commit()
        a = np.arange(4, dtype="i") + 100 * comm.rank
        out = np.zeros(2 * comm.size, "i") if comm.rank == 0 else None
        comm.Gather([a, 1, v], [out, MPI.INT] if comm.rank == 0 else None, root=0)
        comm.Bcast([a, 1, v], root=0)        # non-roots: scattered into a[0], a[2]
        b = np.arange(6, dtype="i") + 100 * comm.rank
        comm.Ibcast([b, 1, v], root=1).Wait()   # non-roots: scattered into b[0], b[2]
        return (out.tolist() if out is not None else None), a.tolist(), b.tolist()
    res = mmpi.spawn(fn, 2)
    assert res[0][0] == [0, 2, 100, 102]
    assert res[0][1] == [0, 1, 2, 3] and res[1][1] == [0, 101, 2, 103]
    assert res[0][2] == [100, 1, 102, 3, 4, 5] and res[1][2] == [100, 101, 102, 103, 104, 105]


def test_collective_send_buffers_of_derived_types_are_packed():
    def fn(comm):
        v = MPI.INT.Create_vector(2, 1, 2).Commit()      # items: [a0, a2], [a3, a5]
        a = np.arange(8, dtype="i") + 100 * comm.rank
        sc = np.zeros(2, "i")
        comm.Scatter([a, 1, v] if comm.rank == 0 else None, [sc, MPI.INT], root=0)
        sv = np.zeros(2, "i")
        comm.Scatterv([a, ([1, 1], [1, 0]), v] if comm.rank == 0 else None, [sv, MPI.INT],
                      root=0)
        at = np.zeros(4, "i")
        comm.Alltoall([a, 1, v], [at, MPI.INT])
        try:
            comm.Allreduce([a, 1, v], [np.zeros(2, "i"), MPI.INT])
        except MmpiError:
            refused = True
        else:
            refused = False
        return sc.tolist(), sv.tolist(), at.tolist(), refused
    res = mmpi.spawn(fn, 2)
    assert res[0][:3] == ([0, 2], [3, 5], [0, 2, 100, 102])
    assert res[1][:3] == ([3, 5], [0, 2], [3, 5, 103, 105])
    assert res[0][3] and res[1][3]      # reductions of derived types: refused everywhere


def test_typed_block_for_w_collectives():
    from driller.mmpi._bufspec import typed_block
    sbuf = bytearray(b"abcxyz")
    rbuf = bytearray(6)
    st = MPI.Datatype.Create_struct([6], [MPI.Get_address(sbuf)], [MPI.CHAR]).Commit()
    rt = MPI.Datatype.Create_struct([6], [MPI.Get_address(rbuf)], [MPI.CHAR]).Commit()
    smv, none = typed_block(MPI.BOTTOM, 1, 0, st, False, "Alltoallw")
    rmv, unpack = typed_block(MPI.BOTTOM, 1, 0, rt, True, "Alltoallw")
    assert none is None and bytes(smv) == b"abcxyz"
    rmv[:] = smv
    unpack(len(rmv))
    assert rbuf == sbuf
    a = np.arange(6, dtype="i")
    mv, un = typed_block(a, 2, 8, MPI.INT, False, "Alltoallw")    # bytes 8..16: a[2], a[3]
    assert un is None and np.frombuffer(mv, "i").tolist() == [2, 3]
    v = MPI.INT.Create_vector(2, 1, 2).Commit()
    mv, un = typed_block(a, 1, 4, v, False, "Alltoallw")          # a[1], a[3]
    assert np.frombuffer(mv, "i").tolist() == [1, 3]
    with pytest.raises(MPI.Exception, match="overruns"):
        typed_block(a, 7, 0, MPI.INT, False, "Alltoallw")


def test_message_value_errors_as_mpi4py():
    buf = bytearray(8)
    empty = [None, 0, "B"]
    t = MPI.INT.Create_resized(0, -4).Commit()
    for spec in ([buf, 0, 1, MPI.DATATYPE_NULL], [buf, None, 0, MPI.DATATYPE_NULL],
                 [buf, None, t], [buf, 0, 1, t]):
        with pytest.raises(ValueError):
            MPI.COMM_SELF.Sendrecv(spec, 0, 0, empty, 0, 0)
    with pytest.raises(MPI.Exception) as e:     # an explicit count: MPI's own ERR_TYPE
        MPI.COMM_SELF.Sendrecv([buf, 1, MPI.DATATYPE_NULL], 0, 0, empty, 0, 0)
    assert e.value.Get_error_class() == MPI.ERR_TYPE
    v = MPI.SHORT.Create_vector(2, 1, 2).Commit()   # extent 6: 8 bytes are no whole items
    with pytest.raises(ValueError, match="multiple"):
        MPI.COMM_SELF.Isend([buf, v], 0, 0)


def _persistent_and_probe(comm):
    v = MPI.INT.Create_vector(2, 1, 3).Commit()
    if comm.rank == 0:
        for k in range(3):
            comm.Send(np.arange(2, dtype="i") + 10 * k, 1, 4)
        return None
    r = np.zeros(4, "i")
    req = comm.Recv_init([r, 1, v], 0, 4)
    got = []
    for _ in range(3):
        st = MPI.Status()
        comm.Probe(0, 4, st)
        n = st.Get_count(v)
        req.Start()
        req.Wait()
        got.append((n, r.tolist()))
    req.Free()
    return got


def test_persistent_receive_of_derived_type_and_probe_count():
    got = mmpi.spawn(_persistent_and_probe, 2)[1]
    assert got == [(1, [0, 0, 0, 1]), (1, [10, 0, 0, 11]), (1, [20, 0, 0, 21])]


def test_datatype_attributes_copy_and_delete():
    k = MPI.Datatype.Create_keyval(copy_fn=lambda o, kv, v: MPI.Datatype.Dup(v),
                                   delete_fn=lambda o, kv, v: MPI.Datatype.Free(v))
    obj = MPI.INT.Dup()
    d1 = obj.Dup()
    obj.Set_attr(k, d1)
    assert obj.Get_attr(k) is d1
    obj2 = obj.Dup()
    d2 = obj2.Get_attr(k)
    assert d2 != d1 and d2 != MPI.DATATYPE_NULL
    obj2.Free()
    assert d2 == MPI.DATATYPE_NULL            # freed by the delete callback
    obj.Delete_attr(k)
    assert d1 == MPI.DATATYPE_NULL and obj.Get_attr(k) is None
    assert MPI.Datatype.Free_keyval(k) == MPI.KEYVAL_INVALID
    bad = MPI.Datatype.Create_keyval(copy_fn=lambda o, kv, v: 1 / 0)
    obj.Set_attr(bad, "x")
    with pytest.raises(MPI.Exception) as e:
        obj.Dup()
    assert e.value.Get_error_class() == MPI.ERR_OTHER
    obj.Delete_attr(bad)
    obj.Free()
