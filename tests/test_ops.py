"""TensorFlow ops (`sparsekeras.ops`) against the float64 NumPy references of tests/reference.py.

Every forward op runs eagerly and inside `tf.function` (the `run` fixture, in the spirit of
tensorflow-addons' `maybe_run_functions_eagerly`), for float32/float64 values and int32/int64
indices, over reference.SHAPES (empty rows, nnz=0, density 1, duplicates, 0 rows).
"""
import re

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import ops
from sparsekeras.ops import CSRTensor, _gradients, _lib

import reference as R

CASES = {c.name: c for c in R.SHAPES}
VDTS = [np.float32, np.float64]
IDTS = [np.int32, np.int64]
VDT_IDS = ["f32", "f64"]
IDT_IDS = ["i32", "i64"]


# ---- helpers ----------------------------------------------------------------------------------

@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    """`run(fn, *args)`: calls fn eagerly, or through a fresh `tf.function` (graph mode)."""
    graph = request.param == "tf_function"

    def call(fn, *args):
        seen = []

        def wrapped(*a):
            seen.append(tf.executing_eagerly())
            return fn(*a)

        out = (tf.function(wrapped) if graph else wrapped)(*args)
        assert seen and seen[0] is (not graph), "the function did not run in the intended mode"
        return out

    call.graph = graph
    return call


def make(case, idt=np.int64, vdt=np.float64, seed=0):
    return R.make_csr(case, index_dtype=idt, value_dtype=vdt, seed=seed)


def csr_tensor(indptr, indices, data, shape):
    return CSRTensor(tf.constant(indptr), tf.constant(indices), tf.constant(data),
                     tf.constant(shape, tf.int64))


def sparse_tensor(indptr, indices, data, shape):
    coo = np.stack([R.row_ids(indptr), np.asarray(indices, np.int64)], axis=1).astype(np.int64)
    return tf.SparseTensor(tf.constant(coo.reshape(-1, 2)), tf.constant(data),
                           tf.constant(shape, tf.int64))


def scipy_csr(indptr, indices, data, shape):
    return sp.csr_array((data, indices, indptr), shape=shape)


def dense_rand(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def tol(dtype):
    return {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]


def assert_grad_close(actual, expected, dtype):
    assert actual is not None
    actual = np.asarray(actual)
    assert actual.dtype == np.dtype(dtype)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tol(dtype),
                               atol=tol(dtype) * scale)


# ---- forward products -------------------------------------------------------------------------

SPARSE_KINDS = ["csr_i32", "csr_i64", "sparse_tensor", "scipy"]


@pytest.mark.parametrize("kind", SPARSE_KINDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_matmul_sparse_dense(case, vdt, kind, run):
    idt = np.int32 if kind == "csr_i32" else np.int64
    ip, ix, data, shape = make(case, idt, vdt)
    b = dense_rand((case.k, 17), vdt)
    expected = R.ref_csr_matmul(ip, ix, data, shape, b)
    mag = R.ref_csr_matmul(ip, ix, np.abs(data), shape, np.abs(b))
    if kind == "scipy":  # not a tensor: closed over (constant-folded into the graph)
        a = scipy_csr(ip, ix, data, shape)
        out = run(lambda bb: ops.matmul(a, bb), tf.constant(b))
    else:
        a = (sparse_tensor if kind == "sparse_tensor" else csr_tensor)(ip, ix, data, shape)
        out = run(ops.matmul, a, tf.constant(b))
    assert out.shape == (case.m, 17)
    R.assert_close(out.numpy(), expected, mag, vdt, case.k)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_matmul_dense_sparse(case, vdt, idt, rank, run):
    """x (..., M) @ W (M, K), W sparse: goes through the CSR transpose and DenseCscMatMul."""
    ip, ix, data, shape = make(case, idt, vdt)
    lead = (7,) if rank == 2 else (2, 3)
    x = dense_rand(lead + (case.m,), vdt)
    w_dense = R.ref_csr_to_dense(ip, ix, data, shape)
    x2 = x.reshape(int(np.prod(lead)), case.m).astype(np.float64)
    expected = (x2 @ w_dense).reshape(lead + (case.k,))
    mag = (np.abs(x2) @ R.ref_csr_to_dense(ip, ix, np.abs(data), shape)).reshape(lead + (case.k,))
    out = run(ops.matmul, tf.constant(x), csr_tensor(ip, ix, data, shape))
    assert out.shape == lead + (case.k,)
    R.assert_close(out.numpy(), expected, mag, vdt, case.m)


@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", [CASES["3x5"], CASES["empty_rows_20x30"], CASES["nnz0_6x9"],
                                  CASES["dups_unsorted_8x10"]], ids=lambda c: c.name)
def test_matmul_vector_right(case, vdt, run):
    ip, ix, data, shape = make(case, np.int64, vdt)
    b = dense_rand((case.k,), vdt)
    out = run(ops.matmul, csr_tensor(ip, ix, data, shape), tf.constant(b))
    assert out.shape == (case.m,)
    R.assert_close(out.numpy(), R.ref_csr_matmul(ip, ix, data, shape, b),
                   R.ref_csr_matmul(ip, ix, np.abs(data), shape, np.abs(b)), vdt, case.k)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_dense_csc_matmul(case, vdt, idt, rank, run):
    """The case's CSR arrays read as the CSC form of W (K=case.k, N=case.m)."""
    ip, ix, data, _ = make(case, idt, vdt)
    k, n = case.k, case.m
    lead = {1: (), 2: (5,), 3: (2, 3)}[rank]
    x = dense_rand(lead + (k,), vdt)
    x2 = x.reshape(int(np.prod(lead)), k)
    expected = R.ref_dense_csc_matmul(x2, ip, ix, data, (k, n)).reshape(lead + (n,))
    mag = R.ref_dense_csc_matmul(np.abs(x2), ip, ix, np.abs(data), (k, n)).reshape(lead + (n,))
    out = run(lambda xx, a, b, c: ops.dense_csc_matmul(xx, a, b, c, [k, n]),
              tf.constant(x), tf.constant(ip), tf.constant(ix), tf.constant(data))
    assert out.shape == lead + (n,)
    R.assert_close(out.numpy(), expected, mag, vdt, k)


@pytest.mark.parametrize("kind", ["csr", "sparse_tensor", "scipy"])
@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_sddmm(case, vdt, idt, kind, run):
    ip, ix, data, shape = make(case, idt, vdt)
    u = dense_rand((case.m, 7), vdt, seed=2)
    v = dense_rand((case.k, 7), vdt, seed=3)
    if kind == "scipy":
        pat = scipy_csr(ip, ix, data, shape)
        out = run(lambda uu, vv: ops.sddmm(pat, uu, vv), tf.constant(u), tf.constant(v))
    else:
        pat = (csr_tensor if kind == "csr" else sparse_tensor)(ip, ix, data, shape)
        out = run(ops.sddmm, pat, tf.constant(u), tf.constant(v))
    assert isinstance(out, CSRTensor)
    if kind == "sparse_tensor":  # converted with from_sparse_tensor: int64, row-major sorted
        order = np.lexsort((ix, R.row_ids(ip)))
        ip_e, ix_e = ip.astype(np.int64), ix[order].astype(np.int64)
    else:
        ip_e, ix_e = ip, ix
    np.testing.assert_array_equal(out.indptr.numpy(), ip_e)
    np.testing.assert_array_equal(out.indices.numpy(), ix_e)
    assert out.indptr.dtype == tf.as_dtype(ip_e.dtype)
    np.testing.assert_array_equal(out.dense_shape.numpy(), shape)
    R.assert_close(out.values.numpy(), R.ref_csr_sddmm(ip_e, ix_e, shape, u, v),
                   R.ref_csr_sddmm(ip_e, ix_e, shape, np.abs(u), np.abs(v)), vdt, 7)


@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_transpose(case, vdt, idt, run):
    ip, ix, data, shape = make(case, idt, vdt)
    t = run(ops.transpose, csr_tensor(ip, ix, data, shape))
    t_ip, t_ix, t_d, _ = R.ref_csr_transpose(ip, ix, data, shape)
    assert isinstance(t, CSRTensor)
    assert t.indptr.dtype == tf.as_dtype(idt) and t.values.dtype == tf.as_dtype(vdt)
    np.testing.assert_array_equal(t.indptr.numpy(), t_ip)
    np.testing.assert_array_equal(t.indices.numpy(), t_ix)
    np.testing.assert_array_equal(t.values.numpy(), t_d)
    np.testing.assert_array_equal(t.dense_shape.numpy(), shape[::-1])
    # transpose twice gives back the same matrix
    tt = ops.transpose(t)
    np.testing.assert_allclose(tt.to_dense().numpy(), R.ref_csr_to_dense(ip, ix, data, shape),
                               rtol=tol(vdt))


# ---- CSRTensor conversions ------------------------------------------------------------------------

@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_csr_scipy_round_trip(case, vdt, idt):
    ip, ix, data, shape = make(case, idt, vdt)
    m = scipy_csr(ip, ix, data, shape)
    c = CSRTensor.from_scipy(m)
    assert c.dtype == tf.as_dtype(vdt)
    assert c.shape == tf.TensorShape(shape)
    back = c.to_scipy()
    assert back.shape == shape
    np.testing.assert_array_equal(back.indptr, ip)
    np.testing.assert_array_equal(back.indices, ix)
    np.testing.assert_array_equal(back.data, data)
    c32 = CSRTensor.from_scipy(m, dtype=tf.float32, index_dtype=np.int32)
    assert c32.indptr.dtype == tf.int32 and c32.dtype == tf.float32


@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_csr_tensor_conversions(case, vdt, idt, run):
    ip, ix, data, shape = make(case, idt, vdt)
    dense_ref = R.ref_csr_to_dense(ip, ix, data, shape)

    def fn(c):
        st = c.to_sparse_tensor()
        back = CSRTensor.from_sparse_tensor(st, index_dtype=c.indptr.dtype)
        dense = c.to_dense()
        from_dense = CSRTensor.from_dense(dense, index_dtype=c.indptr.dtype)
        doubled = c.with_values(c.values * 2)
        return (tf.sparse.to_dense(tf.sparse.reorder(st)) if case.kind != "dups" else dense,
                back, dense, from_dense, doubled, c.nnz, c.row_ids())

    st_dense, back, dense, from_dense, doubled, nnz, rows = run(fn, csr_tensor(ip, ix, data, shape))
    np.testing.assert_allclose(dense.numpy(), dense_ref, rtol=tol(vdt), atol=tol(vdt))
    np.testing.assert_allclose(st_dense.numpy(), dense_ref, rtol=tol(vdt), atol=tol(vdt))
    assert int(nnz) == len(ix)
    np.testing.assert_array_equal(rows.numpy(), R.row_ids(ip))
    # from_sparse_tensor keeps the structure (sorted row-major: the cases other than dups are)
    assert back.indptr.dtype == tf.as_dtype(idt)
    np.testing.assert_array_equal(back.indptr.numpy(), ip)
    if case.kind != "dups":
        np.testing.assert_array_equal(back.indices.numpy(), ix)
        np.testing.assert_array_equal(back.values.numpy(), data)
    np.testing.assert_allclose(back.to_dense().numpy(), dense_ref, rtol=tol(vdt), atol=tol(vdt))
    # from_dense keeps exactly the nonzeros, row-major
    e_ip, e_ix, e_d = R.ref_dense_to_csr(dense.numpy())
    np.testing.assert_array_equal(from_dense.indptr.numpy(), e_ip)
    np.testing.assert_array_equal(from_dense.indices.numpy(), e_ix)
    np.testing.assert_array_equal(from_dense.values.numpy(), e_d)
    np.testing.assert_array_equal(from_dense.dense_shape.numpy(), shape)
    np.testing.assert_array_equal(doubled.values.numpy(), data * 2)
    np.testing.assert_array_equal(doubled.indices.numpy(), ix)


def test_to_csr_accepts_every_form():
    ip, ix, data, shape = make(CASES["3x5"])
    dense = R.ref_csr_to_dense(ip, ix, data, shape)
    c = csr_tensor(ip, ix, data, shape)
    assert ops.to_csr(c) is c
    for x in (sparse_tensor(ip, ix, data, shape), scipy_csr(ip, ix, data, shape),
              sp.coo_matrix(dense), tf.constant(dense), dense):
        got = ops.to_csr(x)
        assert isinstance(got, CSRTensor)
        np.testing.assert_array_equal(got.to_dense().numpy(), dense)


def test_csr_tensor_validates_dtypes():
    with pytest.raises(TypeError, match="indptr must be int32 or int64"):
        CSRTensor(tf.constant([0, 1], tf.float32), tf.constant([0], tf.int64), tf.ones(1),
                  tf.constant([1, 1], tf.int64))
    with pytest.raises(TypeError, match="indices must have indptr's dtype"):
        CSRTensor(tf.constant([0, 1], tf.int64), tf.constant([0], tf.int32), tf.ones(1),
                  tf.constant([1, 1], tf.int64))
    with pytest.raises(TypeError, match="dense_shape must be int64"):
        CSRTensor(tf.constant([0, 1], tf.int64), tf.constant([0], tf.int64), tf.ones(1),
                  tf.constant([1, 1], tf.int32))


# ---- tf.function signatures and static shapes -------------------------------------------------

def _spec(idt=tf.int64, vdt=tf.float32, rows=None):
    return CSRTensor.Spec(indptr=tf.TensorSpec([None if rows is None else rows + 1], idt),
                          indices=tf.TensorSpec([None], idt), values=tf.TensorSpec([None], vdt),
                          dense_shape=tf.TensorSpec([2], tf.int64))


@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
def test_input_signature_traces_once(idt):
    tf_idt = tf.as_dtype(idt)

    @tf.function(input_signature=[_spec(tf_idt), tf.TensorSpec([None, None], tf.float32)])
    def sparse_dense(a, b):
        return ops.matmul(a, b)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32), _spec(tf_idt)])
    def dense_sparse(x, w):
        return ops.matmul(x, w)

    @tf.function(input_signature=[_spec(tf_idt), tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None, None], tf.float32)])
    def sddmm(p, u, v):
        return ops.sddmm(p, u, v)

    for i, case in enumerate([CASES["3x5"], CASES["129x257"], CASES["empty_rows_20x30"]]):
        ip, ix, data, shape = make(case, idt, np.float32, seed=i)
        a = csr_tensor(ip, ix, data, shape)
        b = dense_rand((case.k, 3 + i), np.float32)
        R.assert_close(sparse_dense(a, b).numpy(), R.ref_csr_matmul(ip, ix, data, shape, b),
                       R.ref_csr_matmul(ip, ix, np.abs(data), shape, np.abs(b)), np.float32, case.k)
        x = dense_rand((2, 4 + i, case.m), np.float32)
        wd = R.ref_csr_to_dense(ip, ix, data, shape)
        R.assert_close(dense_sparse(x, a).numpy(), x.astype(np.float64) @ wd,
                       np.abs(x.astype(np.float64)) @ np.abs(wd), np.float32, case.m)
        u = dense_rand((case.m, 5), np.float32)
        v = dense_rand((case.k, 5), np.float32)
        R.assert_close(sddmm(a, u, v).values.numpy(), R.ref_csr_sddmm(ip, ix, shape, u, v),
                       R.ref_csr_sddmm(ip, ix, shape, np.abs(u), np.abs(v)), np.float32, 5)
    for f in (sparse_dense, dense_sparse, sddmm):
        assert f.experimental_get_tracing_count() == 1


def test_static_shapes_sparse_left():
    # a fresh tf.function per signature: a traced (None,) signature would serve [6] too
    f = tf.function(lambda a, b: ops.matmul(a, b))
    assert f.get_concrete_function(_spec(), tf.TensorSpec([None, 7])).output_shapes == (None, 7)
    f5 = tf.function(lambda a, b: ops.matmul(a, b))
    assert f5.get_concrete_function(_spec(rows=5), tf.TensorSpec([None, 7])).output_shapes == (5, 7)
    fv = tf.function(lambda a, b: ops.matmul(a, b))
    assert fv.get_concrete_function(_spec(rows=5), tf.TensorSpec([None])).output_shapes == (5,)
    g = tf.function(lambda x, a, b, c: ops.dense_csc_matmul(x, a, b, c, [4, 6]))
    cf = g.get_concrete_function(tf.TensorSpec([None, 4]), tf.TensorSpec([7], tf.int64),
                                 tf.TensorSpec([None], tf.int64), tf.TensorSpec([None]))
    assert cf.output_shapes == (None, 6)
    g3 = tf.function(lambda x, a, b, c: ops.dense_csc_matmul(x, a, b, c, [4, 6]))
    cf3 = g3.get_concrete_function(tf.TensorSpec([None, 3, 4]), tf.TensorSpec([7], tf.int64),
                                  tf.TensorSpec([None], tf.int64), tf.TensorSpec([None]))
    assert cf3.output_shapes == (None, 3, 6)
    h = tf.function(lambda p, u, v: ops.sddmm(p, u, v).values)
    spec = CSRTensor.Spec(indptr=tf.TensorSpec([None], tf.int64), indices=tf.TensorSpec([11], tf.int64),
                          values=tf.TensorSpec([11]), dense_shape=tf.TensorSpec([2], tf.int64))
    assert h.get_concrete_function(spec, tf.TensorSpec([None, 3]),
                                   tf.TensorSpec([None, 3])).output_shapes == (11,)


@pytest.mark.parametrize("rank", [2, 3])
def test_static_shapes_dense_left_constant_weight(rank):
    """x @ W with W a constant (N known): the output's last dimension is static, at any rank.

    A Keras layer needs it to build the next layer.
    """
    w = CSRTensor.from_dense(tf.constant(dense_rand((4, 6), np.float32)))
    f = tf.function(lambda x: ops.matmul(x, w))
    spec = tf.TensorSpec([None] * (rank - 1) + [4])
    assert f.get_concrete_function(spec).output_shapes.as_list() == [None] * (rank - 1) + [6]


# ---- gradients ------------------------------------------------------------------------------------

GRAD_CASES = [CASES[n] for n in ("3x5", "empty_rows_20x30", "nnz0_6x9", "density1_5x7",
                                 "dups_unsorted_8x10", "no_rows_0x5", "sputnik_7x96_333")]


def _dense_grads(ip, ix, data, shape, fn, other):
    """Gradients of sum(fn(A, other) * w) with A dense float64: (dA at the pattern, d_other)."""
    a = tf.constant(R.ref_csr_to_dense(ip, ix, data, shape))
    other = tf.constant(np.asarray(other, np.float64))
    with tf.GradientTape() as tape:
        tape.watch([a, other])
        y = fn(a, other)
        loss = tf.reduce_sum(y * tf.constant(dense_rand(y.shape, np.float64, seed=9)))
    ga, go = tape.gradient(loss, [a, other])
    coo = np.stack([R.row_ids(ip), np.asarray(ix, np.int64)], axis=1).reshape(-1, 2)
    return tf.gather_nd(ga, coo).numpy(), go.numpy(), y.shape


@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.name)
def test_grad_matmul_sparse_dense(case, vdt, idt, run):
    ip, ix, data, shape = make(case, idt, vdt)
    b = dense_rand((case.k, 6), vdt)
    e_dv, e_db, yshape = _dense_grads(ip, ix, data, shape, lambda a, bb: a @ bb, b)
    w = tf.constant(dense_rand(yshape, vdt, seed=9).astype(vdt))

    def fn(indptr, indices, values, bb):
        with tf.GradientTape() as tape:
            tape.watch([values, bb])
            y = ops.matmul(CSRTensor(indptr, indices, values, tf.constant(shape, tf.int64)), bb)
            loss = tf.reduce_sum(y * w)
        return tape.gradient(loss, [values, bb])

    dv, db = run(fn, tf.constant(ip), tf.constant(ix), tf.constant(data), tf.constant(b))
    assert_grad_close(dv, e_dv, vdt)
    assert_grad_close(db, e_db, vdt)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.name)
def test_grad_matmul_dense_sparse(case, vdt, idt, rank, run):
    ip, ix, data, shape = make(case, idt, vdt)
    lead = (5,) if rank == 2 else (2, 3)
    x = dense_rand(lead + (case.m,), vdt)
    e_dv, e_dx, yshape = _dense_grads(ip, ix, data, shape,
                                      lambda a, xx: tf.linalg.matmul(xx, a), x)
    w = tf.constant(dense_rand(yshape, vdt, seed=9).astype(vdt))

    def fn(indptr, indices, values, xx):
        with tf.GradientTape() as tape:
            tape.watch([values, xx])
            y = ops.matmul(xx, CSRTensor(indptr, indices, values, tf.constant(shape, tf.int64)))
            loss = tf.reduce_sum(y * w)
        # d values comes back as IndexedSlices (gradient of the gather by perm)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, [values, xx])]

    dv, dx = run(fn, tf.constant(ip), tf.constant(ix), tf.constant(data), tf.constant(x))
    assert_grad_close(dv, e_dv, vdt)
    assert_grad_close(dx, e_dx, vdt)


@pytest.mark.parametrize("cached", ["", "cached", "cached-gather"])
@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.name)
def test_grad_dense_csc_matmul(case, vdt, idt, cached, run, monkeypatch):
    """W (K=case.k, N=case.m) given in CSC by the case's arrays: W^T is the CSR matrix.

    cached: the caller passes W's CSR structure (`transpose_structure`) for the gradient, which
    then picks the dX product by batch and density (batch 4: the scatter one); cached-gather
    forces the gather product over the cached structure."""
    if cached == "cached-gather":
        monkeypatch.setattr(_gradients, "_dx_by_gather", lambda *a: True)
    ip, ix, data, shape = make(case, idt, vdt)
    k, n = case.k, case.m
    x = dense_rand((4, k), vdt)
    # A = W^T (n, k) in CSR; x @ W = x @ A^T
    e_dv, e_dx, yshape = _dense_grads(ip, ix, data, shape,
                                      lambda a, xx: tf.linalg.matmul(xx, a, transpose_b=True), x)
    w = tf.constant(dense_rand(yshape, vdt, seed=9).astype(vdt))

    def fn(indptr, indices, values, xx):
        with tf.GradientTape() as tape:
            tape.watch([values, xx])
            ts = ops.transpose_structure(indptr, indices, [n, k]) if cached else None
            y = ops.dense_csc_matmul(xx, indptr, indices, values, [k, n], transpose_structure=ts)
            loss = tf.reduce_sum(y * w)
        # d values comes back as IndexedSlices (gradient of the gather by perm)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, [values, xx])]

    dv, dx = run(fn, tf.constant(ip), tf.constant(ix), tf.constant(data), tf.constant(x))
    assert_grad_close(dv, e_dv, vdt)
    assert_grad_close(dx, e_dx, vdt)


def test_dx_by_gather_rule():
    """The measured crossover of the dX products (scatter below, gather from the batch on)."""
    rule = _gradients._dx_by_gather
    n = 4096 * 4096
    assert not rule(32, int(0.5 * n), 4096, 4096) and rule(300, int(0.5 * n), 4096, 4096)
    assert not rule(32, int(0.1 * n), 4096, 4096) and rule(128, int(0.1 * n), 4096, 4096)
    assert rule(32, int(0.01 * n), 4096, 4096) and not rule(8, int(0.01 * n), 4096, 4096)
    as_tensor = rule(tf.constant(128), tf.constant(int(0.1 * n)), tf.constant(4096),
                     tf.constant(4096))
    assert as_tensor.dtype == tf.bool and bool(as_tensor.numpy())


@pytest.mark.parametrize("batch", [5, 700])
def test_grad_dense_csc_matmul_dynamic_batch(batch):
    """Batch unknown when traced: the gradient chooses its dX product at run time (tf.cond);
    a dense 8 x 6 kernel takes the scatter product at batch 5 and the gather one at 700."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    csc = sp.csc_matrix(w)
    ip, ix = tf.constant(csc.indptr.astype(np.int32)), tf.constant(csc.indices.astype(np.int32))
    values = tf.constant(csc.data)
    ts = ops.transpose_structure(ip, ix, [6, 8])
    assert _gradients._dx_by_gather(700, 48, 8, 6) and not _gradients._dx_by_gather(5, 48, 8, 6)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch([x, values])
            y = ops.dense_csc_matmul(x, ip, ix, values, [8, 6], transpose_structure=ts)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, values])

    x = rng.standard_normal((batch, 8)).astype(np.float32)
    dx, dv = grads(tf.constant(x))
    y = x.astype(np.float64) @ w
    np.testing.assert_allclose(dx.numpy(), 2 * y @ w.T, rtol=1e-4, atol=1e-4)
    dw = 2 * x.astype(np.float64).T @ y
    np.testing.assert_allclose(tf.convert_to_tensor(dv).numpy(), dw.T[w.T != 0], rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("idt", IDTS, ids=IDT_IDS)
@pytest.mark.parametrize("vdt", VDTS, ids=VDT_IDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.name)
def test_grad_sddmm(case, vdt, idt, run):
    ip, ix, data, shape = make(case, idt, vdt)
    u = dense_rand((case.m, 5), vdt, seed=2)
    v = dense_rand((case.k, 5), vdt, seed=3)
    g = dense_rand((len(ix),), vdt, seed=4)
    coo = np.stack([R.row_ids(ip), np.asarray(ix, np.int64)], axis=1).reshape(-1, 2)
    u64, v64 = tf.constant(u.astype(np.float64)), tf.constant(v.astype(np.float64))
    with tf.GradientTape() as tape:  # dense reference: gather (u v^T) at the pattern
        tape.watch([u64, v64])
        loss = tf.reduce_sum(tf.gather_nd(u64 @ tf.transpose(v64), coo) * g.astype(np.float64))
    e_du, e_dv = tape.gradient(loss, [u64, v64])

    def fn(indptr, indices, uu, vv):
        with tf.GradientTape() as tape:
            tape.watch([uu, vv])
            out = ops.sddmm(CSRTensor(indptr, indices, tf.zeros(tf.shape(indices), uu.dtype),
                                      tf.constant(shape, tf.int64)), uu, vv)
            loss = tf.reduce_sum(out.values * g)
        return tape.gradient(loss, [uu, vv])

    du, dv = run(fn, tf.constant(ip), tf.constant(ix), tf.constant(u), tf.constant(v))
    assert_grad_close(du, e_du.numpy(), vdt)
    assert_grad_close(dv, e_dv.numpy(), vdt)


def _max_jacobian_error(f, xs):
    theoretical, numerical = tf.test.compute_gradient(f, xs)
    errs = [np.max(np.abs(t - n)) for t, n in zip(theoretical, numerical) if t.size]
    assert errs, "empty Jacobians: nothing was checked"
    return max(errs)


@pytest.mark.parametrize("case", [CASES["3x5"], CASES["dups_unsorted_8x10"]], ids=lambda c: c.name)
def test_numerical_gradients(case):
    ip, ix, data, shape = make(case, np.int64, np.float64)
    ds = tf.constant(shape, tf.int64)
    b = tf.constant(dense_rand((case.k, 3), np.float64))
    x = tf.constant(dense_rand((2, case.m), np.float64))
    xc = tf.constant(dense_rand((2, case.k), np.float64))
    u = tf.constant(dense_rand((case.m, 4), np.float64))
    v = tf.constant(dense_rand((case.k, 4), np.float64))
    vals = tf.constant(data)
    csr = lambda vv: CSRTensor(tf.constant(ip), tf.constant(ix), vv, ds)  # noqa: E731
    checks = {
        "sparse@dense": (lambda vv, bb: ops.matmul(csr(vv), bb), [vals, b]),
        "dense@sparse": (lambda vv, xx: ops.matmul(xx, csr(vv)), [vals, x]),
        "dense_csc": (lambda vv, xx: ops.dense_csc_matmul(xx, ip, ix, vv, shape[::-1]), [vals, xc]),
        "sddmm": (lambda uu, vv: ops.sddmm(csr(vals), uu, vv).values, [u, v]),
    }
    for name, (f, args) in checks.items():
        assert _max_jacobian_error(f, args) < 1e-6, name


# ---- mixed precision ------------------------------------------------------------------------------

HALF = [(tf.float16, 2e-2), (tf.bfloat16, 6e-2)]


@pytest.mark.parametrize("half,rtol", HALF, ids=["f16", "bf16"])
def test_mixed_precision_forward_and_grads(half, rtol, run):
    ip, ix, data, shape = make(CASES["sputnik_7x96_333"], np.int64, np.float32)
    k, m = shape[1], shape[0]
    # inputs representable in the half dtype, so the float32 result is the exact reference
    q = lambda a: tf.cast(tf.cast(a, half), tf.float32).numpy()  # noqa: E731
    data, b, x, u, v = (q(data), q(dense_rand((k, 9), np.float32)),
                        q(dense_rand((3, m), np.float32)), q(dense_rand((m, 4), np.float32)),
                        q(dense_rand((k, 4), np.float32)))
    xc = q(dense_rand((3, k), np.float32))

    def fn(dtype):
        def f(values, b, x, u, v, xc):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([values, b, x, u, v, xc])
                a = CSRTensor(tf.constant(ip), tf.constant(ix), values, tf.constant(shape, tf.int64))
                outs = [ops.matmul(a, b), ops.matmul(x, a), ops.sddmm(a, u, v).values,
                        ops.dense_csc_matmul(xc, ip, ix, values, [k, m])]
                losses = [tf.reduce_sum(tf.cast(o, tf.float32) ** 2) for o in outs]
            grads = [tape.gradient(losses[0], [values, b]), tape.gradient(losses[1], [values, x]),
                     tape.gradient(losses[2], [u, v]), tape.gradient(losses[3], [values, xc])]
            grads = [[tf.convert_to_tensor(g) for g in pair] for pair in grads]
            return outs, grads
        args = [tf.cast(t, dtype) for t in (data, b, x, u, v, xc)]
        return run(f, *args)

    outs_h, grads_h = fn(half)
    outs_f, grads_f = fn(tf.float32)
    for oh, of in zip(outs_h, outs_f):
        assert oh.dtype == half
        of = of.numpy()
        np.testing.assert_allclose(tf.cast(oh, tf.float32).numpy(), of, rtol=rtol,
                                   atol=rtol * np.abs(of).max())
    for gh_pair, gf_pair in zip(grads_h, grads_f):
        for gh, gf in zip(gh_pair, gf_pair):
            assert gh is not None and gh.dtype == half
            gf = gf.numpy()
            np.testing.assert_allclose(tf.cast(gh, tf.float32).numpy(), gf, rtol=3 * rtol,
                                       atol=3 * rtol * np.abs(gf).max())


def test_mixed_dtypes_promote():
    a = CSRTensor.from_dense(tf.constant([[1.0, 0.0], [0.0, 2.0]], tf.float16))
    assert ops.matmul(a, tf.ones((2, 3), tf.float32)).dtype == tf.float32
    assert ops.matmul(a, tf.ones((2, 3), tf.float64)).dtype == tf.float64
    np.testing.assert_array_equal(ops.matmul(a, tf.ones((2, 1), tf.float64)).numpy(), [[1], [2]])


# ---- bad input ---------------------------------------------------------------------------------

def _csr_args(indptr=(0, 2, 2, 3), indices=(0, 4, 1), values=(1.0, 2.0, 3.0), shape=(3, 5)):
    return (tf.constant(indptr, tf.int64), tf.constant(indices, tf.int64),
            tf.constant(values, tf.float32), tf.constant(shape, tf.int64))


MALFORMED = {
    "index_out_of_range": (dict(indices=(0, 5, 1)),
                           r"a: malformed CSR: indices must lie in \[0, 5\); received indices\[1\]=5"),
    "negative_index": (dict(indices=(0, -1, 1)), r"indices must lie in \[0, 5\); received indices\[1\]=-1"),
    "non_monotone_indptr": (dict(indptr=(0, 2, 1, 3)),
                            r"indptr must be non-decreasing; received indptr\[2\]=1 < indptr\[1\]=2"),
    "indptr0": (dict(indptr=(1, 2, 2, 3)), r"indptr\[0\] must be 0; received indptr\[0\]=1"),
    "indptr_last": (dict(indptr=(0, 2, 2, 2)),
                    r"indptr\[-1\] must equal the number of stored entries \(3\); received indptr\[-1\]=2"),
    "indptr_length": (dict(indptr=(0, 2, 3)),
                      r"a.indptr must be a vector of 4 entries for dense_shape \[3, 5\]; received shape \[3\]"),
    "values_length": (dict(values=(1.0, 2.0)),
                      r"a.values must be a vector with one entry per index \(3\); received shape \[2\]"),
    "values_too_long": (dict(values=(1.0, 2.0, 3.0, 4.0)),
                        r"a.values must be a vector with one entry per index \(3\); received shape \[4\]"),
    "dense_shape_negative": (dict(shape=(3, -5)), r"a.dense_shape must be non-negative; received \[3, -5\]"),
    "dense_shape_rows": (dict(shape=(4, 5)),
                         r"a.indptr must be a vector of 5 entries for dense_shape \[4, 5\]; received shape \[4\]"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_csr_sparse_left(name, run):
    kwargs, msg = MALFORMED[name]
    a = CSRTensor(*_csr_args(**kwargs))
    with pytest.raises(tf.errors.InvalidArgumentError, match=msg):
        run(lambda aa, b: ops.matmul(aa, b), a, tf.ones((5, 2)))


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_csr_dense_left_and_sddmm_and_transpose(name, run):
    kwargs, msg = MALFORMED[name]
    a = CSRTensor(*_csr_args(**kwargs))
    if name.startswith("values"):
        # the values are permuted (tf.gather) before any op sees them: the error must still be
        # an InvalidArgumentError naming the values and both lengths, and never pass silently
        n_values = len(kwargs["values"])
        msg = rf"values.*\b3\b.*\b{n_values}\b|values.*\b{n_values}\b.*\b3\b"
    # dense @ sparse: the sparse operand is matmul's `b`, and the error names it so
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=msg.replace("a.", "b.").replace("a: ", "b: ")):
        run(lambda x, aa: ops.matmul(x, aa), tf.ones((2, 3)), a)
    with pytest.raises(tf.errors.InvalidArgumentError, match=msg):
        run(lambda aa: ops.transpose(aa).values, a)
    if "values" not in name:  # sddmm ignores the pattern's values
        with pytest.raises(tf.errors.InvalidArgumentError, match=msg.replace("a.", "pattern.")
                           .replace("a: ", "pattern: ")):
            run(lambda aa, u, v: ops.sddmm(aa, u, v).values, a, tf.ones((3, 2)), tf.ones((5, 2)))


@pytest.mark.parametrize("bad,msg", [
    (dict(indices=(0, 3, 1)), r"w: malformed CSR: indices must lie in \[0, 3\); received indices\[1\]=3"),
    (dict(indptr=(0, 2, 1, 3)), r"w: malformed CSR: indptr must be non-decreasing"),
    (dict(indptr=(0, 3)), r"w.indptr must be a vector of 4 entries for dense_shape \[3, 3\] "
                          r"\(CSC: one per column, plus one\); received shape \[2\]"),
    (dict(values=(1.0,)), r"w.values must be a vector with one entry per index \(3\); received shape \[1\]"),
], ids=["index", "indptr_order", "indptr_length", "values_length"])
def test_malformed_csc(bad, msg, run):
    ip, ix, vals, _ = _csr_args(**{"shape": (3, 3), **bad})
    with pytest.raises(tf.errors.InvalidArgumentError, match=msg):
        run(lambda x, a, b, c: ops.dense_csc_matmul(x, a, b, c, [3, 3]), tf.ones((2, 3)), ip, ix, vals)


def test_shape_mismatch(run):
    a = CSRTensor(*_csr_args())
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"b must have 5 rows to match a.dense_shape \[3, 5\]; received b.shape \[4,2\]"):
        run(lambda aa, b: ops.matmul(aa, b), a, tf.ones((4, 2)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(a|x) must have 3 columns to match b.dense_shape \[3, 5\]; "
                             r"received (a|x).shape \[2,4\]"):
        # matmul(a, b) names its arguments when the shapes are known (eagerly); inside a graph
        # with unknown shapes the op's own names remain (issue 23)
        run(lambda x, aa: ops.matmul(x, aa), tf.ones((2, 4)), a)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"x must have 5 columns .*; received x.shape \[2,4\]"):
        run(lambda x: ops.dense_csc_matmul(x, [0, 1, 2, 3], [0, 1, 2], [1.0, 2.0, 3.0], [5, 3]),
            tf.ones((2, 4)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"u must be a matrix with 3 rows \(pattern.dense_shape \[3, 5\]\); "
                             r"received u.shape \[4,2\]"):
        run(lambda aa, u, v: ops.sddmm(aa, u, v).values, a, tf.ones((4, 2)), tf.ones((5, 2)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"v must be a matrix with 5 rows .*"
                                                              r"received v.shape \[6,2\]"):
        run(lambda aa, u, v: ops.sddmm(aa, u, v).values, a, tf.ones((3, 2)), tf.ones((6, 2)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"u and v must have the same number of columns; received u.shape \[3,2\], "
                             r"v.shape \[5,3\]"):
        run(lambda aa, u, v: ops.sddmm(aa, u, v).values, a, tf.ones((3, 2)), tf.ones((5, 3)))
    # the transposed (depth-major) SDDMM of the Dense gradient: same checks along the other axis
    sddmm_t = _lib.load().sparse_keras_csr_sddmm_t
    ip, ix, _, shape = _csr_args()

    def t(ut, vt):
        return run(lambda u, v: sddmm_t(ip, ix, shape, u, v), ut, vt)

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"ut must be a matrix with 3 columns \(pattern.dense_shape \[3, 5\]\); "
                             r"received ut.shape \[2,4\]"):
        t(tf.ones((2, 4)), tf.ones((2, 5)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"vt must be a matrix with 5 columns .*received vt.shape \[2,6\]"):
        t(tf.ones((2, 3)), tf.ones((2, 6)))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"ut and vt must have the same number of rows; received ut.shape "
                             r"\[2,3\], vt.shape \[4,5\]"):
        t(tf.ones((2, 3)), tf.ones((4, 5)))


def test_operand_types():
    a = CSRTensor(*_csr_args())
    m = sp.random(5, 3, density=0.5, format="csr", random_state=0)
    # both sparse: the sparse x sparse product (tests/test_spgemm.py), shapes checked by the op
    np.testing.assert_allclose(ops.matmul(a, m).numpy(), a.to_dense().numpy() @ m.toarray())
    with pytest.raises(tf.errors.InvalidArgumentError, match="w must have 5 rows"):
        ops.matmul(a, m.T)
    np.testing.assert_allclose(ops.matmul(tf.sparse.from_dense(tf.ones((2, 3))), a).numpy(),
                               np.ones((2, 3)) @ a.to_dense().numpy())
    with pytest.raises(TypeError, match="needs one sparse operand"):
        ops.matmul(tf.ones((3, 5)), tf.ones((5, 2)))
    with pytest.raises(TypeError, match="needs one sparse operand"):
        ops.matmul(np.ones((3, 5)), np.ones((5, 2)))
    with pytest.raises(TypeError, match="floating-point operands; received int32"):
        ops.matmul(a, tf.ones((5, 2), tf.int32))
    with pytest.raises(TypeError, match="floating-point operands; received int64"):
        ops.matmul(tf.ones((2, 3), tf.int64), a)
    with pytest.raises(TypeError, match="floating-point operands; received int32"):
        ops.sddmm(a, tf.ones((3, 2), tf.int32), tf.ones((5, 2), tf.int32))
    int_a = CSRTensor(*_csr_args()[:2], tf.constant([1, 2, 3]), tf.constant([3, 5], tf.int64))
    with pytest.raises(TypeError, match="floating-point operands; received int32"):
        ops.matmul(int_a, tf.ones((5, 2)))


def test_operand_types_in_tf_function():
    """The TypeErrors are raised while tracing, too."""
    a = CSRTensor(*_csr_args())
    with pytest.raises(TypeError, match="needs one sparse operand"):
        tf.function(lambda x, y: ops.matmul(x, y))(tf.ones((3, 5)), tf.ones((5, 2)))
    with pytest.raises(TypeError, match="floating-point operands"):
        tf.function(lambda aa, y: ops.matmul(aa, y))(a, tf.ones((5, 2), tf.int32))


def test_empty_batch(run):
    ip, ix, data, shape = make(CASES["3x5"], np.int64, np.float32)
    a = csr_tensor(ip, ix, data, shape)
    out = run(lambda x, aa: ops.matmul(x, aa), tf.zeros((0, 3)), a)
    assert out.shape == (0, 5) and out.dtype == tf.float32
    out3 = run(lambda x, aa: ops.matmul(x, aa), tf.zeros((0, 4, 3)), a)
    assert out3.shape == (0, 4, 5)
    out_b = run(lambda aa, b: ops.matmul(aa, b), a, tf.zeros((5, 0)))
    assert out_b.shape == (3, 0)
    e_ip, e_ix, e_d, e_shape = make(CASES["no_rows_0x5"], np.int64, np.float32)
    out_e = run(lambda aa, b: ops.matmul(aa, b), csr_tensor(e_ip, e_ix, e_d, e_shape), tf.ones((5, 4)))
    assert out_e.shape == (0, 4)


def test_nan_propagates(run):
    # a = [[nan, 0, 1], [0, 2, 0]] with the NaN stored; b finite (with a zero row).
    a = CSRTensor(tf.constant([0, 2, 3], tf.int64), tf.constant([0, 2, 1], tf.int64),
                  tf.constant([np.nan, 1.0, 2.0]), tf.constant([2, 3], tf.int64))
    b = tf.constant([[0.0, 1.0], [1.0, 1.0], [1.0, 2.0]])
    y = run(lambda aa, bb: ops.matmul(aa, bb), a, b).numpy()
    assert np.isnan(y[0]).all()  # NaN * 0 is NaN too
    np.testing.assert_array_equal(y[1], [2.0, 2.0])
    x = tf.constant([[1.0, 1.0], [0.0, 3.0]])
    z = run(lambda xx, aa: ops.matmul(xx, aa), x, a).numpy()  # x (2, 2) @ a (2, 3)
    assert np.isnan(z[:, 0]).all()
    np.testing.assert_array_equal(z[:, 1:], [[2.0, 1.0], [6.0, 0.0]])


# ---- XLA --------------------------------------------------------------------------------------

def test_jit_compile_is_refused():
    """XLA cannot compile the custom ops: TensorFlow raises InvalidArgumentError ("Detected
    unsupported operations when trying to compile graph ... SparseKeras>CsrMatMul (No registered
    'SparseKeras>CsrMatMul' OpKernel for XLA_CPU_JIT devices ...)"). Observed with TF 2.21."""
    a = CSRTensor(*_csr_args())

    @tf.function(jit_compile=True)
    def f(aa, b):
        return ops.matmul(aa, b)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"SparseKeras>CsrMatMul") as info:
        f(a, tf.ones((5, 2)))
    assert "XLA" in str(info.value)


# ---- library loading --------------------------------------------------------------------------

def test_check_tf_version():
    with pytest.raises(ImportError) as info:
        _lib.check_tf_version("2.22.0", "2.21.0")
    msg = str(info.value)
    assert "2.22.0" in msg and "2.21.0" in msg and "pip" in msg
    _lib.check_tf_version("2.21.3", "2.21.0")  # same minor: fine
    _lib.check_tf_version()  # the running TF against the build info
    with pytest.raises(ImportError, match="3.0"):
        _lib.check_tf_version("3.0.0", "2.21.0")


def test_second_copy_is_refused(monkeypatch):
    loaded = _lib._LIBRARY
    assert loaded is not None
    monkeypatch.setattr(_lib, "_LIBRARY", None)
    with pytest.raises(ImportError, match="another copy"):
        _lib.load()
    monkeypatch.undo()
    assert _lib._LIBRARY is loaded and _lib.load() is loaded


# ---- no Python on the compute path --------------------------------------------------------------

_PY_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def _op_types(concrete):
    gd = concrete.graph.as_graph_def()
    types = {n.op for n in gd.node}
    for fdef in gd.library.function:
        types |= {n.op for n in fdef.node_def}
    return types


def test_no_python_in_graphs():
    spec = _spec()

    def csc_product(a, x):  # the layers' product: x @ W from W's CSC arrays (here W = a^T)
        return ops.dense_csc_matmul(x[:, :2] @ tf.ones((2, 5)), a.indptr, a.indices, a.values,
                                    tf.reverse(a.dense_shape, [0]))

    @tf.function
    def forward(a, b, x):
        return ops.matmul(a, b), ops.matmul(x, a), csc_product(a, x)

    @tf.function
    def backward(a, b, x, u, v):
        with tf.GradientTape() as tape:
            tape.watch([a.values, b, x, u, v])
            loss = (tf.reduce_sum(ops.matmul(a, b)) + tf.reduce_sum(ops.matmul(x, a))
                    + tf.reduce_sum(ops.sddmm(a, u, v).values)
                    + tf.reduce_sum(csc_product(a, x)))
        return tape.gradient(loss, [a.values, b, x, u, v])

    dyn = tf.TensorSpec([None, None])
    fwd = _op_types(forward.get_concrete_function(spec, dyn, dyn))
    bwd = _op_types(backward.get_concrete_function(spec, dyn, dyn, dyn, dyn))
    assert not fwd & _PY_OPS and not bwd & _PY_OPS
    assert {"SparseKeras>CsrMatMul", "SparseKeras>DenseCsrMatMul",
            "SparseKeras>DenseCscMatMul"} <= fwd
    assert {"SparseKeras>CsrMatMul", "SparseKeras>DenseCsrMatMul", "SparseKeras>DenseCscMatMul",
            "SparseKeras>CsrSddmm", "SparseKeras>CsrSddmmT",
            "SparseKeras>CsrTransposeStructure"} <= bwd
    # the gradient function really computes: run it
    ip, ix, data, shape = make(CASES["3x5"], np.int64, np.float32)
    grads = backward(csr_tensor(ip, ix, data, shape), tf.ones((5, 2)), tf.ones((2, 3)),
                     tf.ones((3, 2)), tf.ones((5, 2)))
    assert all(g is not None for g in grads)
    # and scipy operands are just constants in the graph, no Python call either
    m = scipy_csr(ip, ix, data, shape)
    cf = tf.function(lambda b: ops.matmul(m, b)).get_concrete_function(dyn)
    assert not _op_types(cf) & _PY_OPS and "SparseKeras>CsrMatMul" in _op_types(cf)


def test_public_names():
    for name in ["CSRTensor", "matmul", "dense_csc_matmul", "sddmm", "transpose", "to_csr"]:
        assert name in ops.__all__ and getattr(ops, name).__doc__, name
    assert sparsekeras.ops is ops and sparsekeras.CSRTensor is CSRTensor
    assert re.search("XLA", ops.__doc__)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_dense_csr_matmul_op_and_gradients(run, index_dtype):
    """x @ B with B in CSR (the scatter op): value, gradients w.r.t. x and B's values against
    the dense computation, and the numerical Jacobian on float64."""
    rng = np.random.default_rng(7)
    b = sp.random_array((7, 5), density=0.4, format="csr", dtype=np.float64, rng=rng)
    ip, ix = tf.constant(b.indptr.astype(index_dtype)), tf.constant(b.indices.astype(index_dtype))
    vals = tf.constant(b.data)
    x = tf.constant(rng.standard_normal((3, 7)))
    out = run(lambda xx, v: ops.dense_csr_matmul(xx, ip, ix, v, [7, 5]), x, vals)
    np.testing.assert_allclose(out.numpy(), x.numpy() @ b.toarray(), rtol=1e-12, atol=1e-12)
    g = tf.constant(rng.standard_normal((3, 5)))
    with tf.GradientTape() as tape:
        tape.watch([x, vals])
        loss = tf.reduce_sum(ops.dense_csr_matmul(x, ip, ix, vals, [7, 5]) * g)
    dx, dv = tape.gradient(loss, [x, vals])
    bd = tf.constant(b.toarray())
    with tf.GradientTape() as tape:
        tape.watch([x, bd])
        loss = tf.reduce_sum((x @ bd) * g)
    rdx, rdb = tape.gradient(loss, [x, bd])
    coo = b.tocoo()
    np.testing.assert_allclose(dx.numpy(), rdx.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tf.convert_to_tensor(dv).numpy(), rdb.numpy()[coo.row, coo.col],
                               rtol=1e-12, atol=1e-12)
    theo, num = tf.test.compute_gradient(lambda xx, v: ops.dense_csr_matmul(xx, ip, ix, v, [7, 5]),
                                         [x, vals])
    assert max(np.abs(t - n).max() for t, n in zip(theo, num)) < 1e-6


# ---- TakeValues (the gradients' value permutations) -------------------------------------------

@pytest.mark.parametrize("idt", [tf.int32, tf.int64], ids=IDT_IDS)
@pytest.mark.parametrize("vdt", [tf.float32, tf.float64], ids=VDT_IDS)
def test_take_values_op(vdt, idt, run):
    from sparsekeras.ops._gradients import take
    rng = np.random.default_rng(0)
    params = tf.Variable(rng.standard_normal(200000).astype(vdt.as_numpy_dtype))
    idx = tf.constant(rng.permutation(200000)[:150000], idt)
    weights = tf.constant(rng.standard_normal(150000).astype(vdt.as_numpy_dtype))

    def f(p, i):
        with tf.GradientTape() as tape:
            y = take(p, i)
            loss = tf.reduce_sum(y * weights)
        return y, tf.convert_to_tensor(tape.gradient(loss, p))

    y, g = run(f, params, idx)
    np.testing.assert_array_equal(y.numpy(), params.numpy()[idx.numpy()])
    expected = np.zeros(200000)
    np.add.at(expected, idx.numpy(), weights.numpy())
    np.testing.assert_allclose(g.numpy(), expected)
    assert g.dtype == vdt


def test_take_values_op_rejects_bad_indices(run):
    from sparsekeras.ops._gradients import take
    params = tf.constant(np.arange(10, dtype=np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"indices must lie in \[0, 10\); received indices\[2\]=-4"):
        run(lambda p, i: take(p, i), params, tf.constant([1, 2, -4, 0], tf.int64))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="params must be a vector|rank"):
        run(lambda p, i: _lib.load().sparse_keras_take_values(p, i),
            tf.zeros([2, 2]), tf.constant([0], tf.int64))
