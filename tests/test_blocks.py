"""Block-CSC (1 x G blocks) products: the kernel, the NumPy helpers, the TensorFlow op and its
gradient, and CompactDense's block storage, against float64 dense references."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import _kernels, linalg, ops
from sparsekeras.layers import CompactDense

import reference as R
from reference import SHAPE_IDS, SHAPES, VALUE_DTYPES, INDEX_DTYPES

BLOCKS = [1, 3, 4, 8, 16]


def kernel_grid(test):
    """The kernel tests' grid: every shared shape x value type x index type x block x batch."""
    for mark in (pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS),
                 pytest.mark.parametrize("dtype", VALUE_DTYPES),
                 pytest.mark.parametrize("index_dtype", INDEX_DTYPES),
                 pytest.mark.parametrize("block", BLOCKS),
                 pytest.mark.parametrize("batch", [1, 17, 129])):
        test = mark(test)
    return test


def make_bcsc(case, block, index_dtype, dtype, seed=0):
    """A case's CSR arrays read as block-CSC: its m rows are the groups, its k columns the
    input rows; G random values per stored index. Returns (indptr, indices, values, (K, N))."""
    ip, ix, _, (m, k) = R.make_csr(case, index_dtype, dtype, seed=seed)
    values = np.random.default_rng(seed + 1).standard_normal(len(ix) * block).astype(dtype)
    return ip, ix, values, (k, m * block)


def ref_bcsc_dense(indptr, indices, values, shape, block):
    """Dense float64 W (duplicate indices inside a group are summed, as the kernel does)."""
    k, n = shape
    w = np.zeros((k, n))
    v = np.asarray(values, np.float64).reshape(len(indices), block)
    group = R.row_ids(indptr)
    for b in range(len(indices)):
        w[indices[b], group[b] * block: (group[b] + 1) * block] += v[b]
    return w


# ---- kernel -----------------------------------------------------------------------------------

@kernel_grid
def test_dense_bcsc_matmul(isa, case, dtype, index_dtype, block, batch):
    ip, ix, v, shape = make_bcsc(case, block, index_dtype, dtype, seed=batch)
    x = np.random.default_rng(3).standard_normal((batch, shape[0])).astype(dtype)
    w = ref_bcsc_dense(ip, ix, v, shape, block)
    w_abs = ref_bcsc_dense(ip, ix, np.abs(v), shape, block)
    out = _kernels.dense_bcsc_matmul(x, ip, ix, v, shape, block)
    R.assert_close(out, x.astype(np.float64) @ w, np.abs(x.astype(np.float64)) @ w_abs, dtype,
                   shape[0])
    assert out.flags.c_contiguous
    # (nblocks, block) values and a 1-D x are accepted too
    out2 = _kernels.dense_bcsc_matmul(x[0], ip, ix, v.reshape(len(ix), block), shape, block)
    np.testing.assert_array_equal(out2, _kernels.dense_bcsc_matmul(x[:1], ip, ix, v, shape,
                                                                   block)[0])


@pytest.mark.parametrize("with_bias, activation", [(True, None), (True, "relu"),
                                                    (False, "relu")])
@pytest.mark.parametrize("batch", [1, 129])
@pytest.mark.parametrize("block", [3, 8])
@pytest.mark.parametrize("dtype, index_dtype", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_bcsc_matmul_bias_act(isa, case, dtype, index_dtype, block, batch, with_bias,
                                    activation):
    """The fused epilogue act(x @ W + bias) against the float64 reference, bitwise equal to the
    unfused product followed by the same bias add and ReLU, for every thread count."""
    ip, ix, v, shape = make_bcsc(case, block, index_dtype, dtype, seed=batch)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((batch, shape[0])).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype) if with_bias else None
    w = ref_bcsc_dense(ip, ix, v, shape, block)
    w_abs = ref_bcsc_dense(ip, ix, np.abs(v), shape, block)
    outs = [_kernels.dense_bcsc_matmul(x, ip, ix, v, shape, block, bias=bias,
                                       activation=activation, n_threads=nt) for nt in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    out = outs[0]
    want = x.astype(np.float64) @ w + (0.0 if bias is None else bias.astype(np.float64))
    mag = np.abs(x.astype(np.float64)) @ w_abs + (0.0 if bias is None else np.abs(bias))
    if activation == "relu":
        want = np.maximum(want, 0.0)
    R.assert_close(out, want, mag, dtype, shape[0] + 1)
    unfused = _kernels.dense_bcsc_matmul(x, ip, ix, v, shape, block)
    if bias is not None:
        unfused = unfused + bias
    if activation == "relu":
        unfused = np.where(unfused < 0, np.zeros_like(unfused), unfused)
    np.testing.assert_array_equal(out, unfused)


@pytest.mark.parametrize("block", [4, 8, 16])
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_dense_bcsc_matmul_same_bits_for_any_thread_count(isa, dtype, block):
    rng = np.random.default_rng(0)
    k, n, batch = 300, 64 * block, 200
    keep = rng.random((k, n // block)) < 0.2
    keep[:, 3] = False  # an empty group
    w = rng.standard_normal((k, n)).astype(dtype) * np.repeat(keep, block, axis=1)
    ip, ix, v = linalg.bcsc_from_dense(w, block)
    x = rng.standard_normal((batch, k)).astype(dtype)
    one = _kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), block, n_threads=1)
    for nt in (2, 3):
        np.testing.assert_array_equal(
            _kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), block, n_threads=nt), one)
    np.testing.assert_allclose(one, x.astype(np.float64) @ w, rtol=1e-4, atol=1e-3)


def test_dense_bcsc_matmul_nan_reaches_only_its_outputs():
    k, n, g = 6, 8, 4
    w = np.zeros((k, n), np.float32)
    w[2, 0:4] = 1.0  # group 0 reads input 2 only
    w[5, 4:8] = 1.0  # group 1 reads input 5 only
    ip, ix, v = linalg.bcsc_from_dense(w, g)
    x = np.ones((3, k), np.float32)
    x[:, 2] = np.nan
    out = _kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), g)
    assert np.isnan(out[:, :4]).all() and (out[:, 4:] == 1.0).all()


@pytest.mark.parametrize("call, match", [
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, ip, ix, v, (6, 8), 3),
     r"multiple of block=3; received w.shape=\(6, 8\)"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, ip, ix, v, (6, 8), 0),
     "block must be a positive integer; received block=0"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, ip, ix, v[:-1], (6, 8), 4),
     r"4 values per block \(2 blocks\).*received shape \(7,\)"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, ip[:-1], ix, v, (6, 8), 4),
     "indptr must have n_rows"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, ip, np.array([1, 6], np.int32), v,
                                                      (6, 8), 4),
     r"indices\[1\]=6"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x, np.array([0, 3, 2], np.int32), ix, v,
                                                      (6, 8), 4),
     "non-decreasing"),
    (lambda x, ip, ix, v: _kernels.dense_bcsc_matmul(x[:, :5], ip, ix, v, (6, 8), 4),
     r"x must have 6 columns.*received x.shape=\(2, 5\)"),
])
def test_dense_bcsc_matmul_rejects_bad_input(call, match):
    w = np.zeros((6, 8), np.float32)
    w[1, :4] = 1.0
    w[4, 4:] = 2.0
    ip, ix, v = linalg.bcsc_from_dense(w, 4)
    with pytest.raises(ValueError, match=match):
        call(np.ones((2, 6), np.float32), ip, ix, v)


@kernel_grid
def test_bcsc_gradient_kernels(isa, case, dtype, index_dtype, block, batch):
    """dX = dY @ W^T (dense_bcsc_matmul_t) and the block values' gradient (bcsc_sddmm)."""
    ip, ix, v, shape = make_bcsc(case, block, index_dtype, dtype, seed=batch)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, shape[0])).astype(dtype)
    dy = rng.standard_normal((batch, shape[1])).astype(dtype)
    w = ref_bcsc_dense(ip, ix, v, shape, block)
    w_abs = ref_bcsc_dense(ip, ix, np.abs(v), shape, block)
    dx = _kernels.dense_bcsc_matmul_t(dy, ip, ix, v, shape, block)
    R.assert_close(dx, dy.astype(np.float64) @ w.T, np.abs(dy.astype(np.float64)) @ w_abs.T,
                   dtype, shape[1])
    dv = _kernels.bcsc_sddmm(ip, ix, shape, block, x, dy)
    group = R.row_ids(ip)
    cols = group[:, None] * block + np.arange(block)[None, :]
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    ref = np.einsum("ib,ibg->bg", x64[:, ix], dy64[:, cols]).reshape(-1)
    mag = np.einsum("ib,ibg->bg", np.abs(x64[:, ix]), np.abs(dy64[:, cols])).reshape(-1)
    R.assert_close(dv, ref, mag, dtype, batch)


@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_bcsc_gradient_kernels_same_bits_for_any_thread_count(isa, dtype, block):
    rng = np.random.default_rng(1)
    k, n, batch = 300, 48 * block, 200  # 200: four batch tiles, the last partial
    keep = rng.random((k, n // block)) < 0.2
    w = rng.standard_normal((k, n)).astype(dtype) * np.repeat(keep, block, axis=1)
    ip, ix, v = linalg.bcsc_from_dense(w, block)
    x = rng.standard_normal((batch, k)).astype(dtype)
    dy = rng.standard_normal((batch, n)).astype(dtype)
    for small in (dy[:40], dy):  # one batch tile (two parts) and several
        one = _kernels.dense_bcsc_matmul_t(small, ip, ix, v, (k, n), block, n_threads=1)
        for nt in (2, 3):
            np.testing.assert_array_equal(
                _kernels.dense_bcsc_matmul_t(small, ip, ix, v, (k, n), block, n_threads=nt), one)
    one = _kernels.bcsc_sddmm(ip, ix, (k, n), block, x, dy, n_threads=1)
    for nt in (2, 3):
        np.testing.assert_array_equal(
            _kernels.bcsc_sddmm(ip, ix, (k, n), block, x, dy, n_threads=nt), one)


def test_bcsc_gradient_kernels_reject_bad_input():
    w = np.zeros((6, 8), np.float32)
    w[1, :4] = 1.0
    ip, ix, v = linalg.bcsc_from_dense(w, 4)
    x, dy = np.ones((2, 6), np.float32), np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"dy must have 8 columns.*received dy.shape=\(2, 7\)"):
        _kernels.dense_bcsc_matmul_t(dy[:, :7], ip, ix, v, (6, 8), 4)
    with pytest.raises(ValueError, match=r"dy must be \(2, 8\); received shape \(3, 8\)"):
        _kernels.bcsc_sddmm(ip, ix, (6, 8), 4, x, np.ones((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"x must be \(M, 6\); received shape \(2, 5\)"):
        _kernels.bcsc_sddmm(ip, ix, (6, 8), 4, x[:, :5], dy)
    with pytest.raises(ValueError, match=r"indices\[0\]=6"):
        _kernels.bcsc_sddmm(ip, np.array([6], np.int32), (6, 8), 4, x, dy)
    with pytest.raises(ValueError, match=r"4 values per block"):
        _kernels.dense_bcsc_matmul_t(dy, ip, ix, v[:3], (6, 8), 4)


# ---- NumPy helpers ----------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 2, 4, 8])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_bcsc_from_dense_round_trip_and_fill(block, index_dtype):
    rng = np.random.default_rng(block)
    k, n = 23, 8 * block
    keep = rng.random((k, n // block)) < 0.3
    w = rng.standard_normal((k, n)) * np.repeat(keep, block, axis=1)
    w[0, 0] = 0.0  # a zero inside a stored block (if block 0 of row 0 is stored) is kept
    ip, ix, v = linalg.bcsc_from_dense(w, block, index_dtype=index_dtype)
    assert ip.dtype == ix.dtype == np.dtype(index_dtype)
    assert len(ix) == keep.sum() - (1 if block == 1 and keep[0, 0] else 0)
    assert v.shape == (len(ix) * block,)
    np.testing.assert_array_equal(linalg.bcsc_to_dense(ip, ix, v, (k, n), block), w)
    assert linalg.block_fill(w, block) <= (keep.sum() * block) / max(np.count_nonzero(w), 1)
    unstructured = rng.standard_normal((64, 64)) * (rng.random((64, 64)) < 0.1)
    assert linalg.block_fill(unstructured, 8) > 3.0
    assert linalg.block_fill(unstructured, 1) == 1.0
    assert linalg.block_fill(unstructured, 7) == float("inf")


def test_bcsc_from_dense_rejects_bad_input():
    with pytest.raises(ValueError, match=r"multiple of block=3; received shape \(4, 8\)"):
        linalg.bcsc_from_dense(np.ones((4, 8)), 3)
    with pytest.raises(ValueError, match="received block=True"):
        linalg.bcsc_from_dense(np.ones((4, 8)), True)
    with pytest.raises(ValueError, match=r"2-D \(input, output\); received shape \(8,\)"):
        linalg.bcsc_from_dense(np.ones(8), 2)


# ---- TensorFlow op ----------------------------------------------------------------------------

@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    def call(fn, *args):
        return (tf.function(fn) if request.param == "tf_function" else fn)(*args)
    return call


def _case(block, idt, vdt, seed=0, k=19, groups=7, keep=0.4):
    rng = np.random.default_rng(seed)
    mask = rng.random((k, groups)) < keep
    mask[:, 2] = False  # an empty group
    w = rng.standard_normal((k, groups * block)).astype(vdt) * np.repeat(mask, block, axis=1)
    ip, ix, v = linalg.bcsc_from_dense(w, block, index_dtype=idt)
    return w, ip, ix, v


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("block", [1, 3, 8])
@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("vdt", VALUE_DTYPES)
def test_dense_bcsc_matmul_op_and_gradients(vdt, idt, block, rank, run):
    w, ip, ix, v = _case(block, idt, vdt)
    shape = {1: (w.shape[0],), 2: (5, w.shape[0]), 3: (2, 3, w.shape[0])}[rank]
    x = np.random.default_rng(1).standard_normal(shape).astype(vdt)
    dy = np.random.default_rng(2).standard_normal(shape[:-1] + (w.shape[1],)).astype(vdt)

    def fn(x, v):
        with tf.GradientTape() as tape:
            tape.watch([x, v])
            y = ops.dense_bcsc_matmul(x, ip, ix, v, w.shape, block)
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [x, v]))

    y, dx, dv = run(fn, tf.constant(x), tf.constant(v))
    tol = 1e-4 if vdt == np.float32 else 1e-10
    w64 = w.astype(np.float64)
    assert y.dtype == vdt and y.shape == shape[:-1] + (w.shape[1],)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w64, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w64.T, rtol=tol, atol=tol)
    dw = (x.reshape(-1, w.shape[0]).astype(np.float64).T @ dy.reshape(-1, w.shape[1]))
    stored = linalg.bcsc_to_dense(ip, ix, np.ones_like(v), w.shape, block) != 0
    np.testing.assert_allclose(linalg.bcsc_to_dense(ip, ix, dv.numpy(), w.shape, block),
                               np.where(stored, dw, 0.0), rtol=tol, atol=tol)


def test_dense_bcsc_matmul_gradient_error():
    w, ip, ix, v = _case(4, np.int32, np.float64, k=6, groups=3, keep=0.6)
    x = np.random.default_rng(0).standard_normal((3, 6))
    theoretical, numerical = tf.test.compute_gradient(
        lambda x, v: ops.dense_bcsc_matmul(x, ip, ix, v, w.shape, 4), [x, v])
    for t, n in zip(theoretical, numerical):
        assert t.shape == n.shape and np.abs(t).max() > 0
        np.testing.assert_allclose(t, n, atol=1e-7)


def test_block_gradient_ops_have_gradients():
    """The ops the gradient uses (DenseBcscMatMulT, BcscSddmm) are differentiable too."""
    from sparsekeras.ops._gradients import _ops as raw

    w, ip, ix, v = _case(4, np.int64, np.float64, k=5, groups=3, keep=0.6)
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 5)), rng.standard_normal((3, w.shape[1]))
    shape = tf.constant(w.shape, tf.int64)
    for fn, args in [
        (lambda dy, v: raw.sparse_keras_dense_bcsc_mat_mul_t(dy, ip, ix, v, shape, block=4),
         [dy, v]),
        (lambda x, dy: raw.sparse_keras_bcsc_sddmm(ip, ix, shape, x, dy, block=4), [x, dy]),
    ]:
        theoretical, numerical = tf.test.compute_gradient(fn, args)
        for t, n in zip(theoretical, numerical):
            assert np.abs(t).max() > 0
            np.testing.assert_allclose(t, n, atol=1e-7)


@pytest.mark.parametrize("graph", [False, True])
def test_block_gradient_ops_reject_bad_input(graph):
    from sparsekeras.ops._gradients import _ops as raw

    w, ip, ix, v = _case(4, np.int32, np.float32)
    k, n = w.shape
    shape = tf.constant(w.shape, tf.int64)
    wrap = tf.function if graph else (lambda f: f)
    cases = [
        (lambda: raw.sparse_keras_dense_bcsc_mat_mul_t(tf.ones((2, n - 1)), ip, ix, v, shape,
                                                       block=4),
         rf"dy must be a matrix of {n} columns"),
        (lambda: raw.sparse_keras_bcsc_sddmm(ip, ix, shape, tf.ones((2, k)), tf.ones((3, n)),
                                             block=4),
         rf"dy must be a matrix of shape \[2, {n}\]"),
        (lambda: raw.sparse_keras_bcsc_sddmm(ip, ix, shape, tf.ones((2, k + 1)), tf.ones((2, n)),
                                             block=4),
         rf"x must be a matrix of {k} columns"),
        (lambda: raw.sparse_keras_bcsc_sddmm(ip, np.full_like(ix, -1), shape, tf.ones((2, k)),
                                             tf.ones((2, n)), block=4),
         r"indices\[0\]=-1"),
    ]
    for fn, match in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            wrap(fn)()


def test_bcsc_expand_matches_the_csc_form():
    w, ip, ix, v = _case(4, np.int64, np.float32, seed=5)
    e_indptr, e_indices, positions, inverse = [t.numpy() for t in ops.bcsc_expand(ip, ix, 4)]
    csc_ip, csc_ix, csc_v = _kernels.dense_to_csr(np.ascontiguousarray(w.T),
                                                  mask=np.ascontiguousarray(
                                                      linalg.bcsc_to_dense(ip, ix, np.ones_like(v),
                                                                           w.shape, 4).T != 0))
    np.testing.assert_array_equal(e_indptr, csc_ip)
    np.testing.assert_array_equal(e_indices, csc_ix)
    np.testing.assert_array_equal(v[positions], csc_v)
    np.testing.assert_array_equal(positions[inverse], np.arange(len(v)))
    assert e_indptr.dtype == np.int64 and e_indices.dtype == np.int64
    # the same from the NumPy-level kernel, and with the shape given
    for got, want in zip(_kernels.bcsc_expand(ip, ix, 4, w.shape[0]),
                         (e_indptr, e_indices, positions, inverse)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(ops.bcsc_expand(ip, ix, 4, w.shape), (e_indptr, e_indices, positions,
                                                                inverse)):
        np.testing.assert_array_equal(got.numpy(), want)
    bad = ix.copy()
    bad[0] = w.shape[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"indices\[0\]={w.shape[0]}"):
        ops.bcsc_expand(ip, bad, 4, w.shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0\]=-1"):
        ops.bcsc_expand(ip, np.where(np.arange(len(ix)) == 0, -1, ix), 4)


@pytest.mark.parametrize("graph", [False, True])
def test_dense_bcsc_matmul_op_rejects_bad_input(graph):
    w, ip, ix, v = _case(4, np.int32, np.float32)
    x = tf.ones((2, w.shape[0]))
    bad_ix = ix.copy()
    bad_ix[1] = w.shape[0]
    wrap = tf.function if graph else (lambda f: f)
    cases = [
        (lambda: ops.dense_bcsc_matmul(x, ip, bad_ix, v, w.shape, 4),
         rf"indices must lie in \[0, {w.shape[0]}\); received indices\[1\]={w.shape[0]}"),
        (lambda: ops.dense_bcsc_matmul(x, ip, ix, v[:-1], w.shape, 4),
         rf"w.values must be a vector with 4 entries per index \({len(v)}\)"),
        (lambda: ops.dense_bcsc_matmul(x, ip, ix, v, [w.shape[0], w.shape[1] - 2], 4),
         r"w.dense_shape\[1\] must be a multiple of block=4"),
        (lambda: ops.dense_bcsc_matmul(x, ip[:-1], ix, v, w.shape, 4),
         r"block-CSC: one per group of 4 columns"),
        (lambda: ops.dense_bcsc_matmul(tf.ones((2, 3)), ip, ix, v, w.shape, 4),
         rf"x must be a matrix of {w.shape[0]} columns to match w.dense_shape"),
    ]
    for fn, match in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            wrap(fn)()
    with pytest.raises(ValueError, match="block must be a positive integer; received block=0"):
        ops.dense_bcsc_matmul(x, ip, ix, v, w.shape, 0)


def test_dense_bcsc_matmul_half_precision():
    w, ip, ix, v = _case(8, np.int32, np.float32)
    x = np.random.default_rng(0).standard_normal((4, w.shape[0])).astype(np.float16)
    y = ops.dense_bcsc_matmul(tf.constant(x), ip, ix, tf.constant(v.astype(np.float16)),
                              w.shape, 8)
    assert y.dtype == tf.float16
    ref = x.astype(np.float64) @ w.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(y.numpy().astype(np.float64), ref, rtol=2e-2, atol=5e-2)


# ---- CompactDense in blocks -------------------------------------------------------------------

def _block_kernel(k, n, block, keep, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.repeat(rng.random((k, n // block)) < keep, block, axis=1)
    return (rng.standard_normal((k, n)) * mask).astype(np.float32)


def test_from_kernel_auto_block():
    kernel = _block_kernel(30, 32, 8, 0.2)
    layer = CompactDense.from_kernel(kernel, np.ones(32, np.float32))
    assert layer.block == 8 and layer.nnz == np.count_nonzero(kernel)
    assert layer.indices.shape == (layer.nnz // 8,) and layer.indptr.shape == (32 // 8 + 1,)
    np.testing.assert_array_equal(layer.to_dense_kernel(), kernel)
    x = np.random.default_rng(1).standard_normal((6, 30)).astype(np.float32)
    np.testing.assert_allclose(layer(x), x @ kernel + 1.0, rtol=1e-5, atol=1e-5)
    # blocks of 4 in a width of 12: 8 does not divide it, 4 does
    assert CompactDense.from_kernel(_block_kernel(30, 12, 4, 0.3)).block == 4
    # unstructured: CSC
    rng = np.random.default_rng(2)
    unstructured = (rng.standard_normal((30, 32)) * (rng.random((30, 32)) < 0.1)).astype(np.float32)
    assert CompactDense.from_kernel(unstructured).block == 1
    assert CompactDense.from_kernel(kernel, block=1).block == 1
    assert CompactDense.from_kernel(kernel, block=np.int64(4)).block == 4
    forced = CompactDense.from_kernel(unstructured, block=4)  # zeros inside blocks are stored
    assert forced.block == 4 and forced.nnz > np.count_nonzero(unstructured)
    np.testing.assert_allclose(forced(x), x @ unstructured, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Expected `block` dividing units=32. Received: block=5"):
        CompactDense.from_kernel(kernel, block=5)
    with pytest.raises(ValueError, match="Received: block='wide'"):
        CompactDense.from_kernel(kernel, block="wide")


def test_compact_dense_block_arguments():
    with pytest.raises(ValueError, match=r"Received: block=3, units=8"):
        CompactDense(8, sparsity=0.5, block=3)
    with pytest.raises(ValueError, match=r"nnz` a multiple of block=4. Received: nnz=6"):
        CompactDense(8, nnz=6, block=4)


def test_compact_dense_random_blocks_train_and_round_trip(tmp_path):
    layer = CompactDense(16, sparsity=0.75, seed=2, block=4, activation="relu")
    inputs = keras.Input((12,))
    model = keras.Model(inputs, layer(inputs))
    assert layer.nnz == round(0.25 * 12 * 16 / 4) * 4
    dense = layer.to_dense_kernel()
    assert np.count_nonzero(dense) == layer.nnz
    blocks = dense.T.reshape(4, 4, 12)
    assert np.array_equal((blocks != 0).any(axis=1), (blocks != 0).all(axis=1))  # whole blocks
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    model.fit(x, rng.standard_normal((32, 16)).astype(np.float32), batch_size=8, epochs=2,
              verbose=0)
    after = layer.to_dense_kernel()
    assert not np.array_equal(after, dense)
    np.testing.assert_array_equal(after != 0, dense != 0)  # the pattern is fixed
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[-1].block == 4
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_strip_stores_block_pruned_layers_in_blocks(tmp_path):
    from sparsekeras import _masks

    model = keras.Sequential([keras.Input((24,)),
                              sparsekeras.layers.SparseDense(32, activation="relu", name="h1"),
                              sparsekeras.layers.SparseDense(16, name="h2")])
    h1, h2 = model.layers
    h1.set_mask(_masks.magnitude_mask(keras.ops.convert_to_numpy(h1.kernel), 0.75,
                                      granularity="block", block_shape=(1, 8)))
    h2.set_mask(_masks.magnitude_mask(keras.ops.convert_to_numpy(h2.kernel), 0.75))
    stripped = sparsekeras.strip(model)
    assert [layer.block for layer in stripped.layers] == [8, 1]
    assert [layer.block for layer in sparsekeras.strip(model, block=1).layers] == [1, 1]
    forced = sparsekeras.strip(model, block=4)
    assert [layer.block for layer in forced.layers] == [4, 4]
    x0 = np.random.default_rng(1).standard_normal((3, 24)).astype(np.float32)
    np.testing.assert_allclose(forced(x0), model(x0), rtol=1e-5, atol=1e-5)
    x = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float32)
    np.testing.assert_allclose(stripped(x), model(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "s.keras"
    stripped.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_block_layer_takes_sparse_inputs():
    kernel = _block_kernel(20, 16, 8, 0.3, seed=4)
    layer = CompactDense.from_kernel(kernel)
    assert layer.block == 8
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 20)) * (rng.random((6, 20)) < 0.3)).astype(np.float32)
    st = tf.sparse.from_dense(x)
    np.testing.assert_allclose(layer(st), x @ kernel, rtol=1e-5, atol=1e-5)


def test_gradual_block_pruning_then_strip_gives_block_layers():
    """The pruning guide's recipe: GradualPruning in (1, 8) blocks during fit, then strip."""
    from sparsekeras import callbacks, schedules

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 24)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    model = keras.Sequential([keras.Input((24,)),
                              sparsekeras.layers.SparseDense(64, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = schedules.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=4)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0,
              callbacks=[callbacks.GradualPruning(schedule, granularity="block",
                                                  block_shape=(1, 8))])
    sparse = model.layers[0]
    assert sparse.sparsity == pytest.approx(0.75, abs=0.02)
    small = sparsekeras.strip(model)
    compact = small.layers[0]
    assert isinstance(compact, CompactDense) and compact.block == 8
    assert compact.nnz == np.count_nonzero(keras.ops.convert_to_numpy(sparse.mask))
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_block_products_batch_one_and_empty_batch():
    rng = np.random.default_rng(0)
    k, n, g = 50, 64, 8
    keep = rng.random((k, n // g)) < 0.3
    w = (rng.standard_normal((k, n)) * np.repeat(keep, g, 1)).astype(np.float32)
    ip, ix, v = linalg.bcsc_from_dense(w, g)
    x = rng.standard_normal((1, k)).astype(np.float32)
    one = _kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), g, n_threads=1)
    for nt in (2, 3):  # the batch-1 path has its own loop
        np.testing.assert_array_equal(_kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), g,
                                                                 n_threads=nt), one)
    np.testing.assert_allclose(one, x @ w, rtol=1e-5, atol=1e-5)
    x0, vv = tf.zeros((0, k)), tf.Variable(v)
    with tf.GradientTape() as tape:
        tape.watch(x0)
        y = ops.dense_bcsc_matmul(x0, ip, ix, vv, (k, n), g)
        loss = tf.reduce_sum(y)
    dx, dv = tape.gradient(loss, [x0, vv])
    assert y.shape == (0, n) and dx.shape == (0, k)
    np.testing.assert_array_equal(dv.numpy(), np.zeros_like(v))
    assert not _kernels.bcsc_sddmm(ip, ix, (k, n), g, np.zeros((0, k), np.float32),
                                   np.zeros((0, n), np.float32)).any()


@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"),
                                             ("mixed_bfloat16", "bfloat16")])
def test_block_layer_mixed_precision_trains(policy, compute):
    keras.config.set_dtype_policy(policy)
    try:
        layer = CompactDense(32, sparsity=0.75, block=8, seed=0)
        inputs = keras.Input((24,))
        model = keras.Model(inputs, keras.layers.Dense(4)(layer(inputs)))
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        rng = np.random.default_rng(0)
        x = rng.random((64, 24)).astype("float32")
        before = keras.ops.convert_to_numpy(layer.values).copy()
        history = model.fit(x, rng.random((64, 4)).astype("float32"), epochs=3, verbose=0)
        assert layer.values.dtype == "float32" and tf.as_dtype(layer(x).dtype).name == compute
        assert np.isfinite(history.history["loss"]).all()
        assert not np.array_equal(keras.ops.convert_to_numpy(layer.values), before)
    finally:
        keras.config.set_dtype_policy("float32")
