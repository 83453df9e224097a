"""Correctness of the compiled kernels against the float64 references in reference.py."""
import numpy as np
import pytest
import scipy.sparse as sp

import sparsekeras
from sparsekeras import _kernels, linalg

import reference as ref
from reference import SHAPE_IDS, SHAPES, VALUE_DTYPES, INDEX_DTYPES, WIDTHS


def _abs(a):
    return np.abs(np.asarray(a, dtype=np.float64))


def _dense(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---- csr_matmul: A (CSR) @ B -------------------------------------------------------------

@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_matmul(isa, case, dtype, index_dtype, width):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype, seed=width)
    b = _dense(np.random.default_rng(1), (shape[1], width), dtype)
    out = _kernels.csr_matmul(ip, ix, d, shape, b)
    ref.assert_close(out, ref.ref_csr_matmul(ip, ix, d, shape, b),
                     ref.ref_csr_matmul(ip, ix, _abs(d), shape, _abs(b)), dtype, shape[1])
    assert out.flags.c_contiguous


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_matmul_vector(isa, case, dtype, index_dtype):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype)
    b = _dense(np.random.default_rng(2), shape[1], dtype)
    out = _kernels.csr_matmul(ip, ix, d, shape, b)
    assert out.shape == (shape[0],)
    ref.assert_close(out, ref.ref_csr_matmul(ip, ix, d, shape, b),
                     ref.ref_csr_matmul(ip, ix, _abs(d), shape, _abs(b)), dtype, shape[1])


# ---- dense_csc_matmul: X @ W (CSC) -------------------------------------------------------

@pytest.mark.parametrize("batch", WIDTHS)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_csc_matmul(isa, case, dtype, index_dtype, batch):
    # The case's CSR arrays (m x k) are the CSC arrays of W with shape (k, m).
    ip, ix, d, (m, k) = ref.make_csr(case, index_dtype, dtype, seed=batch)
    w_shape = (k, m)
    x = _dense(np.random.default_rng(3), (batch, k), dtype)
    out = _kernels.dense_csc_matmul(x, ip, ix, d, w_shape)
    ref.assert_close(out, ref.ref_dense_csc_matmul(x, ip, ix, d, w_shape),
                     ref.ref_dense_csc_matmul(_abs(x), ip, ix, _abs(d), w_shape), dtype, k)
    assert out.flags.c_contiguous


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_csc_matmul_vector(isa, case, dtype, index_dtype):
    ip, ix, d, (m, k) = ref.make_csr(case, index_dtype, dtype)
    x = _dense(np.random.default_rng(4), k, dtype)
    out = _kernels.dense_csc_matmul(x, ip, ix, d, (k, m))
    assert out.shape == (m,)
    ref.assert_close(out, ref.ref_dense_csc_matmul(x, ip, ix, d, (k, m)),
                     ref.ref_dense_csc_matmul(_abs(x), ip, ix, _abs(d), (k, m)), dtype, k)


def _epilogue_ref(y, bias, activation):
    """act(y + bias) in float64, and its magnitude bound's extra term (|bias|)."""
    y = np.asarray(y, np.float64) + (0.0 if bias is None else np.asarray(bias, np.float64))
    return np.maximum(y, 0.0) if activation == "relu" else y


EPILOGUES = [(True, None), (True, "relu"), (False, "relu"), (False, "linear")]


@pytest.mark.parametrize("with_bias, activation", EPILOGUES)
@pytest.mark.parametrize("batch", [1, 65])
@pytest.mark.parametrize("dtype, index_dtype", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_csc_matmul_bias_act(isa, case, dtype, index_dtype, batch, with_bias, activation):
    """The fused epilogue act(x @ W + bias) against the float64 reference, and bitwise equal to
    the unfused product followed by the same bias add and ReLU in the same dtype."""
    ip, ix, d, (m, k) = ref.make_csr(case, index_dtype, dtype, seed=batch)
    rng = np.random.default_rng(5)
    x = _dense(rng, (batch, k), dtype)
    bias = _dense(rng, m, dtype) if with_bias else None
    out = _kernels.dense_csc_matmul(x, ip, ix, d, (k, m), bias=bias, activation=activation)
    plain = ref.ref_dense_csc_matmul(x, ip, ix, d, (k, m))
    mag = ref.ref_dense_csc_matmul(_abs(x), ip, ix, _abs(d), (k, m)) + (
        0.0 if bias is None else _abs(bias))
    ref.assert_close(out, _epilogue_ref(plain, bias, activation), mag, dtype, k + 1)
    unfused = _kernels.dense_csc_matmul(x, ip, ix, d, (k, m))
    if bias is not None:
        unfused = unfused + bias
    if activation == "relu":
        unfused = np.where(unfused < 0, np.zeros_like(unfused), unfused)
    np.testing.assert_array_equal(out, unfused)
    if activation == "relu":
        assert (out >= 0).all()
    # a 1-D x (the batch-one path) gets the same epilogue
    out1 = _kernels.dense_csc_matmul(x[0], ip, ix, d, (k, m), bias=bias, activation=activation)
    one = _kernels.dense_csc_matmul(x[0], ip, ix, d, (k, m))
    one = one + bias if bias is not None else one
    np.testing.assert_array_equal(out1, np.where(one < 0, 0, one).astype(dtype)
                                  if activation == "relu" else one)


def test_dense_csc_matmul_bias_act_threads_bitwise_and_nan(big_problem):
    """Fused epilogue: 1 and 2 threads bitwise equal; a NaN stays NaN through the ReLU (as
    TensorFlow's Relu keeps it)."""
    _, _, w, x = big_problem
    x = x.copy()
    x[3, :] = np.nan
    bias = np.random.default_rng(6).standard_normal(w.shape[1]).astype(np.float32)
    outs = [_kernels.dense_csc_matmul(x, w.indptr, w.indices, w.data, w.shape, bias=bias,
                                      activation="relu", n_threads=nt) for nt in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    stored = np.diff(w.indptr) > 0
    assert np.isnan(outs[0][3, stored]).all()
    assert (outs[0][3, ~stored] == np.maximum(bias[~stored], 0)).all()
    assert (outs[0][np.arange(len(x)) != 3] >= 0).all()


@pytest.mark.parametrize("fn", ["csc", "bcsc"])
def test_bias_act_rejects_bad_arguments(fn):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    if fn == "csc":
        ip, ix, d = _kernels.dense_to_csr(np.ascontiguousarray(w.T))

        def call(**kw):
            return _kernels.dense_csc_matmul(x, ip, ix, d, (6, 8), **kw)
    else:
        ip, ix, d = linalg.bcsc_from_dense(w, 4)

        def call(**kw):
            return _kernels.dense_bcsc_matmul(x, ip, ix, d, (6, 8), 4, **kw)
    with pytest.raises(ValueError,
                       match=r"bias must have shape \(8,\).*received bias.shape=\(7,\)"):
        call(bias=np.zeros(7, np.float32))
    with pytest.raises(ValueError,
                       match=r"bias must have shape \(8,\).*received bias.shape=\(1, 8\)"):
        call(bias=np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match=r"activation must be None, 'linear', 'relu', 'gelu' or "
                                         r"'relu6' \(exact\); received activation='tanh'"):
        call(activation="tanh")
    with pytest.raises(ValueError, match="activation must be None"):
        call(activation=np.maximum)


@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_dense_matmul_transposed_store_edges(isa, dtype, block):
    """The batch-major store of the x @ W products (16 x 16 register transposes on AVX-512
    float32): batches around the 16-lane and 64-row tile edges, output counts that leave a
    partial group of 16 features in each thread's range, one and two threads bitwise equal,
    and each output written from its own feature and batch row only (a NaN input row stays in
    its output row)."""
    rng = np.random.default_rng(11)
    k = 37
    for n in (8, 24, 40, 136):
        keep = rng.random((k, n // block)) < 0.3
        keep[:, 0] = False  # an empty feature (group)
        w = rng.standard_normal((k, n)).astype(dtype) * np.repeat(keep, block, axis=1)
        if block == 1:
            ip, ix, d = _kernels.dense_to_csr(np.ascontiguousarray(w.T), index_dtype=np.int32)
        else:
            ip, ix, d = linalg.bcsc_from_dense(w, block)
        for batch in (15, 16, 17, 63, 65, 79, 130):
            x = _dense(rng, (batch, k), dtype)
            x[batch // 2] = np.nan
            outs = []
            for nt in (1, 2):
                if block == 1:
                    outs.append(_kernels.dense_csc_matmul(x, ip, ix, d, (k, n), n_threads=nt))
                else:
                    outs.append(_kernels.dense_bcsc_matmul(x, ip, ix, d, (k, n), block,
                                                           n_threads=nt))
            np.testing.assert_array_equal(outs[0], outs[1])
            out = outs[0]
            assert out.shape == (batch, n)
            # the NaN row: NaN exactly where W has a stored column, 0 in the empty ones
            stored = np.repeat(keep.any(axis=0), block) if block > 1 else keep.any(axis=0)
            assert np.isnan(out[batch // 2, stored]).all()
            assert (out[batch // 2, ~stored] == 0).all()
            rows = np.arange(batch) != batch // 2
            x64, w64 = x[rows].astype(np.float64), w.astype(np.float64)
            ref.assert_close(out[rows], x64 @ w64, np.abs(x64) @ np.abs(w64), dtype, k)


# ---- sddmm, transpose, to_dense, canonicalize --------------------------------------------

def _check_sddmm(ip, ix, shape, u, v, dtype, depth, transposed):
    """csr_sddmm (u: rows x depth, v: cols x depth) or, transposed, csr_sddmm_t (the Dense-layer
    gradient form, u: depth x rows, v: depth x cols) against the float64 reference."""
    if transposed:
        out = _kernels.csr_sddmm_t(ip, ix, shape, u, v)
        u, v = u.T, v.T
    else:
        out = _kernels.csr_sddmm(ip, ix, shape, u, v)
    ref.assert_close(out, ref.ref_csr_sddmm(ip, ix, shape, u, v),
                     ref.ref_csr_sddmm(ip, ix, shape, _abs(u), _abs(v)), dtype, depth)
    return out


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "transposed"])
@pytest.mark.parametrize("depth", [1, 7, 17, 64, 129, 200])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_sddmm(isa, case, dtype, index_dtype, depth, transposed):
    ip, ix, _, shape = ref.make_csr(case, index_dtype, dtype)
    rng = np.random.default_rng(5)
    u_shape, v_shape = (depth, shape[0]), (depth, shape[1])
    if not transposed:
        u_shape, v_shape = u_shape[::-1], v_shape[::-1]
    _check_sddmm(ip, ix, shape, _dense(rng, u_shape, dtype), _dense(rng, v_shape, dtype), dtype,
                 depth, transposed)


@pytest.mark.parametrize("depth", [64, 128, 130, 256])
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_csr_sddmm_t_sixteen_entry_steps(isa, dtype, depth):
    """Rows of 0..70 entries: the AVX-512 float path does 16 entries per step (one lane-tree
    reduction) and finishes the rest one by one; every full 64-deep tile takes it, the
    accumulating ones (tiles after the first) too, a short last tile (130) does not."""
    rng = np.random.default_rng(7)
    lengths = [0, 1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 70]
    n_cols = 97
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = np.concatenate([np.sort(rng.choice(n_cols, k, replace=False))
                              for k in lengths]).astype(np.int32)
    shape = (len(lengths), n_cols)
    ut, vt = _dense(rng, (depth, shape[0]), dtype), _dense(rng, (depth, shape[1]), dtype)
    out = _check_sddmm(indptr, indices, shape, ut, vt, dtype, depth, transposed=True)
    for n_threads in (1, 3):  # same bits for any thread count
        np.testing.assert_array_equal(
            _kernels.csr_sddmm_t(indptr, indices, shape, ut, vt, n_threads=n_threads), out)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_transpose(case, dtype, index_dtype):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype)
    t_ip, t_ix, t_d, perm = _kernels.csr_transpose(ip, ix, d, shape, return_perm=True)
    r_ip, r_ix, r_d, r_perm = ref.ref_csr_transpose(ip, ix, d, shape)
    assert t_ip.dtype == t_ix.dtype == np.dtype(index_dtype)
    assert t_d.dtype == np.dtype(dtype) and perm.dtype == np.int64
    np.testing.assert_array_equal(t_ip, r_ip)
    np.testing.assert_array_equal(t_ix, r_ix)
    np.testing.assert_array_equal(t_d, r_d)
    np.testing.assert_array_equal(perm, r_perm)
    np.testing.assert_array_equal(t_d, d[perm])
    no_perm = _kernels.csr_transpose(ip, ix, d, shape)
    assert len(no_perm) == 3
    for a, b in zip(no_perm, (t_ip, t_ix, t_d)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_to_dense(case, dtype, index_dtype):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype)
    out = _kernels.csr_to_dense(ip, ix, d, shape)
    ref.assert_close(out, ref.ref_csr_to_dense(ip, ix, d, shape),
                     ref.ref_csr_to_dense(ip, ix, _abs(d), shape), dtype, 4)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_csr_canonicalize(case, dtype, index_dtype):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype)
    d = d.copy()
    if len(d) > 2:
        d[len(d) // 2] = 0.0  # an explicit zero is structure and must stay
    o_ip, o_ix, o_d = _kernels.csr_canonicalize(ip, ix, d, shape)
    r_ip, r_ix, r_d = ref.ref_csr_canonicalize(ip, ix, d, shape)
    assert o_ip.dtype == o_ix.dtype == np.dtype(index_dtype)
    np.testing.assert_array_equal(o_ip, r_ip)
    np.testing.assert_array_equal(o_ix, r_ix)
    _, _, mag = ref.ref_csr_canonicalize(ip, ix, _abs(d), shape)
    ref.assert_close(o_d, r_d, mag, dtype, 8)
    if case.kind != "dups":
        assert len(o_d) == len(d)  # no duplicates: every entry, explicit zero included, survives


def test_canonicalize_sums_duplicates_in_storage_order():
    # float32: 1e8 + 1 - 1e8 = 0 left to right, 1 in another order.
    ip = np.array([0, 3]); ix = np.array([2, 2, 2]); d = np.array([1e8, 1.0, -1e8], np.float32)
    o_ip, o_ix, o_d = _kernels.csr_canonicalize(ip, ix, d, (1, 3))
    np.testing.assert_array_equal(o_ip, [0, 1])
    np.testing.assert_array_equal(o_ix, [2])
    assert o_d[0] == (np.float32(1e8) + np.float32(1.0)) + np.float32(-1e8)


# ---- dense_to_csr ------------------------------------------------------------------------

def _x_for_to_csr(dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((13, 37)).astype(dtype)
    x[rng.random(x.shape) < 0.5] = 0
    x[2, 3] = np.nan
    x[4, :] = 0
    x[5, 6] = np.inf
    return x


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("threshold", [None, 0.0, 0.5, 3.0])
def test_dense_to_csr_threshold(dtype, threshold):
    x = _x_for_to_csr(dtype)
    ip, ix, d = _kernels.dense_to_csr(x, threshold=threshold)
    r_ip, r_ix, r_d = ref.ref_dense_to_csr(x, threshold=threshold)
    np.testing.assert_array_equal(ip, r_ip)
    np.testing.assert_array_equal(ix, r_ix)
    np.testing.assert_array_equal(d, r_d)  # NaN kept (assert_array_equal matches NaN to NaN)
    assert np.isnan(d).sum() == 1
    assert d.dtype == np.dtype(dtype) and ip.dtype == np.int32


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_dense_to_csr_mask(dtype, threshold):
    x = _x_for_to_csr(dtype)
    mask = np.random.default_rng(7).random(x.shape) < 0.3
    mask[4, :5] = True  # masked-in zeros
    ip, ix, d = _kernels.dense_to_csr(x, mask=mask, threshold=threshold)
    r_ip, r_ix, r_d = ref.ref_dense_to_csr(x, threshold=threshold, mask=mask)
    np.testing.assert_array_equal(ip, r_ip)
    np.testing.assert_array_equal(ix, r_ix)
    np.testing.assert_array_equal(d, r_d)
    if threshold is None:
        assert (d == 0).sum() >= 5  # explicit zeros stored


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64, "int64", None])
def test_dense_to_csr_index_dtype(index_dtype):
    x = _x_for_to_csr(np.float64)
    ip, ix, d = _kernels.dense_to_csr(x, index_dtype=index_dtype)
    want = np.dtype(index_dtype) if index_dtype is not None else np.dtype(np.int32)
    assert ip.dtype == ix.dtype == want
    a = linalg.to_csr(x, index_dtype=index_dtype)
    assert a.indices.dtype == want


def test_to_csr_public():
    x = _x_for_to_csr(np.float32)
    a = linalg.to_csr(x, threshold=0.5)
    assert isinstance(a, sp.csr_array) and a.shape == x.shape
    expect = np.where(np.abs(x) <= 0.5, 0, x)
    np.testing.assert_array_equal(a.toarray(), expect)
    m = linalg.to_csr(x, mask=np.ones_like(x))
    assert m.nnz == x.size


# ---- linalg.matmul: formats, orientations --------------------------------------------------

def _scipy(case, fmt, cls, dtype=np.float64, index_dtype=np.int32):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype)
    a = cls((d, ix, ip), shape=shape)
    dense = ref.ref_csr_to_dense(ip, ix, d, shape)
    return a.asformat(fmt), dense


_FORMATS = ["csr", "csc", "coo"]
_CLASSES = [sp.csr_array, sp.csr_matrix]
_CASES = [c for c in SHAPES if c.name in
          ("sputnik_7x96_333", "1x1", "empty_rows_20x30", "nnz0_6x9", "dups_unsorted_8x10",
           "129x257")]


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("cls", _CLASSES, ids=["array", "matrix"])
@pytest.mark.parametrize("fmt", _FORMATS)
@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_matmul_sparse_left(isa, case, fmt, cls, dtype):
    a, dense = _scipy(case, fmt, cls, dtype)
    rng = np.random.default_rng(8)
    for b in (_dense(rng, (case.k, 19), dtype), _dense(rng, case.k, dtype)):
        out = linalg.matmul(a, b)
        ref.assert_close(out, dense @ b.astype(np.float64), _abs(dense) @ _abs(b), dtype, case.k)


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("cls", _CLASSES, ids=["array", "matrix"])
@pytest.mark.parametrize("fmt", _FORMATS)
@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_matmul_sparse_right(isa, case, fmt, cls, dtype):
    w, dense = _scipy(case, fmt, cls, dtype)
    rng = np.random.default_rng(9)
    for x in (_dense(rng, (23, case.m), dtype), _dense(rng, case.m, dtype)):
        out = linalg.matmul(x, w)
        ref.assert_close(out, x.astype(np.float64) @ dense, _abs(x) @ _abs(dense), dtype, case.m)


@pytest.mark.parametrize("fmt", _FORMATS)
def test_matmul_scipy_transpose(isa, fmt):
    a, dense = _scipy(SHAPES[4], fmt, sp.csr_array)
    b = np.random.default_rng(10).standard_normal((a.shape[0], 33))
    out = linalg.matmul(a.T, b)
    ref.assert_close(out, dense.T @ b, _abs(dense).T @ _abs(b), np.float64, a.shape[0])
    x = np.random.default_rng(11).standard_normal((5, a.shape[1]))
    ref.assert_close(linalg.matmul(x, a.T), x @ dense.T, _abs(x) @ _abs(dense).T, np.float64, 300)


def test_matmul_coo_duplicates_sum():
    a = sp.coo_array((np.array([1.0, 2.0, 4.0]), (np.array([0, 0, 1]), np.array([1, 1, 0]))),
                     shape=(2, 2))
    np.testing.assert_array_equal(linalg.matmul(a, np.eye(2)), [[0.0, 3.0], [4.0, 0.0]])
    np.testing.assert_array_equal(linalg.to_dense(a), [[0.0, 3.0], [4.0, 0.0]])


def test_public_wrappers_match_kernels():
    a, dense = _scipy(SHAPES[8], "csr", sp.csr_array)  # duplicates, unsorted
    ref.assert_close(linalg.to_dense(a), dense, _abs(dense) + 1, np.float64, 8)
    c = linalg.canonicalize(a)
    assert c.has_sorted_indices and isinstance(c, sp.csr_array)
    np.testing.assert_allclose(c.toarray(), dense, rtol=1e-12)
    t = linalg.transpose(a)
    assert t.shape == (a.shape[1], a.shape[0])
    np.testing.assert_allclose(t.toarray(), dense.T, rtol=1e-12)
    rng = np.random.default_rng(12)
    u, v = rng.standard_normal((a.shape[0], 5)), rng.standard_normal((a.shape[1], 5))
    s = linalg.sddmm(a, u, v)
    assert isinstance(s, sp.csr_array)
    np.testing.assert_array_equal(s.indices, a.indices)
    np.testing.assert_allclose(s.data, ref.ref_csr_sddmm(a.indptr, a.indices, a.shape, u, v),
                               rtol=1e-12)
    sm = linalg.sddmm(sp.csr_matrix(a), u, v)
    assert isinstance(sm, sp.csr_matrix)
    linalg.validate(a)
    linalg.validate(a.tocsc())
    linalg.validate(a.tocoo())


# ---- empty and degenerate shapes ---------------------------------------------------------

@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_empty_batch_and_zero_columns(isa, dtype):
    ip, ix, d, shape = ref.make_csr(SHAPES[0], np.int32, dtype)
    out = _kernels.csr_matmul(ip, ix, d, shape, np.zeros((shape[1], 0), dtype))
    assert out.shape == (shape[0], 0) and out.dtype == dtype
    w_shape = (shape[1], shape[0])
    out = _kernels.dense_csc_matmul(np.zeros((0, shape[1]), dtype), ip, ix, d, w_shape)
    assert out.shape == (0, shape[0]) and out.dtype == dtype
    # W with zero output columns: CSC indptr has a single 0.
    out = _kernels.dense_csc_matmul(np.ones((4, 6), dtype), np.zeros(1, np.int32),
                                    np.zeros(0, np.int32), np.zeros(0, dtype), (6, 0))
    assert out.shape == (4, 0)
    w = sp.csr_array((5, 0), dtype=dtype)
    assert linalg.matmul(np.ones((3, 5), dtype), w).shape == (3, 0)


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_zero_inner_dimension(dtype):
    """(3 x 0) @ (0 x 5) and (2 x 0) @ (0 x 5) are all-zero products."""
    out = _kernels.csr_matmul(np.zeros(4, np.int32), np.zeros(0, np.int32), np.zeros(0, dtype),
                              (3, 0), np.zeros((0, 5), dtype))
    np.testing.assert_array_equal(out, np.zeros((3, 5)))
    out = _kernels.dense_csc_matmul(np.zeros((2, 0), dtype), np.zeros(6, np.int32),
                                    np.zeros(0, np.int32), np.zeros(0, dtype), (0, 5))
    np.testing.assert_array_equal(out, np.zeros((2, 5)))


# ---- NaN / inf ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_nan_in_sparse_value_propagates_exactly(isa, dtype):
    ip, ix, d, shape = ref.make_csr(SHAPES[0], np.int32, dtype)  # 7 x 96, no empty row here
    d = d.copy()
    p = int(ip[3]) + 1
    d[p] = np.nan
    b = _dense(np.random.default_rng(13), (shape[1], 40), dtype)
    out = _kernels.csr_matmul(ip, ix, d, shape, b)
    expect_nan = np.zeros(out.shape, bool)
    expect_nan[3, :] = True  # row 3 of A touches every column of the output row
    np.testing.assert_array_equal(np.isnan(out), expect_nan)
    # X @ W orientation: the NaN at W[ix[p], 3] (CSC column 3) touches output column 3 only.
    x = _dense(np.random.default_rng(14), (17, shape[1]), dtype)
    out = _kernels.dense_csc_matmul(x, ip, ix, d, (shape[1], shape[0]))
    expect_nan = np.zeros(out.shape, bool)
    expect_nan[:, 3] = True
    np.testing.assert_array_equal(np.isnan(out), expect_nan)


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_nonfinite_dense_entries(isa, dtype):
    # A: row 0 stores columns 0 and 2 (an explicit zero at column 2); column 1 is never stored.
    ip = np.array([0, 2, 3]); ix = np.array([0, 2, 0]); d = np.array([1.0, 0.0, 2.0], dtype)
    b = np.ones((3, 9), dtype)
    b[1, :] = np.nan  # unreferenced row: must not reach the output
    b[2, 4] = np.inf  # explicit zero * inf = NaN (IEEE)
    b[0, 5] = np.inf
    out = _kernels.csr_matmul(ip, ix, d, (2, 3), b)
    expect = ref.ref_csr_matmul(ip, ix, d, (2, 3), b)
    np.testing.assert_array_equal(out, expect.astype(dtype))
    assert np.isnan(out[0, 4]) and out[1, 5] == np.inf and np.isfinite(out[:, :4]).all()


# ---- layouts, read-only, dtypes ----------------------------------------------------------

@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_noncontiguous_and_readonly_inputs(isa, dtype):
    ip, ix, d, shape = ref.make_csr(SHAPES[4], np.int64, dtype)  # 129 x 257
    rng = np.random.default_rng(15)
    big = _dense(rng, (2 * shape[1], 3 * 33), dtype)
    variants = [big[::2, ::3], np.asfortranarray(big[::2, ::3])]
    ro = np.ascontiguousarray(big[::2, ::3]); ro.setflags(write=False)
    variants.append(ro)
    base = _kernels.csr_matmul(ip, ix, d, shape, np.ascontiguousarray(big[::2, ::3]))
    for b in variants:
        np.testing.assert_array_equal(_kernels.csr_matmul(ip, ix, d, shape, b), base)
    d_ro, ip_ro, ix_ro = d.copy(), ip.copy(), ix.copy()
    for a in (d_ro, ip_ro, ix_ro):
        a.setflags(write=False)
    np.testing.assert_array_equal(_kernels.csr_matmul(ip_ro, ix_ro, d_ro, shape, ro), base)
    xbig = _dense(rng, (2 * 21, 2 * shape[1]), dtype)
    xs = [xbig[::2, ::2], np.asfortranarray(xbig[::2, ::2])]
    xro = np.ascontiguousarray(xbig[::2, ::2]); xro.setflags(write=False)
    xs.append(xro)
    w_shape = (shape[1], shape[0])
    xbase = _kernels.dense_csc_matmul(np.ascontiguousarray(xbig[::2, ::2]), ip, ix, d, w_shape)
    for x in xs:
        np.testing.assert_array_equal(_kernels.dense_csc_matmul(x, ip, ix, d, w_shape), xbase)
    # The strided data array and read-only u/v for sddmm.
    u = _dense(rng, (shape[0], 9), dtype); u.setflags(write=False)
    v = np.asfortranarray(_dense(rng, (shape[1], 9), dtype))
    np.testing.assert_array_equal(_kernels.csr_sddmm(ip, ix, shape, u, v),
                                  _kernels.csr_sddmm(ip, ix, shape, u.copy(), v.copy(order="C")))
    dd = np.repeat(d, 2)[::2]
    np.testing.assert_array_equal(_kernels.csr_to_dense(ip, ix, dd, shape),
                                  _kernels.csr_to_dense(ip, ix, d, shape))
    xf = np.asfortranarray(_x_for_to_csr(dtype))
    for got, want in zip(_kernels.dense_to_csr(xf), _kernels.dense_to_csr(np.ascontiguousarray(xf))):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("d_dtype,b_dtype,out_dtype", [
    (np.float16, np.float16, np.float32),
    (np.float32, np.float16, np.float32),
    (np.float32, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.int32, np.int32, np.float64),
    (np.int64, np.float32, np.float64),
    (np.bool_, np.float64, np.float64),
    (np.uint8, np.int16, np.float64),
])
def test_result_dtypes(d_dtype, b_dtype, out_dtype):
    ip, ix, d, shape = ref.make_csr(SHAPES[2], np.int32, np.float64)  # 3 x 5
    d = np.arange(1, len(d) + 1).astype(d_dtype)
    b = (np.arange(shape[1] * 4).reshape(shape[1], 4) % 3).astype(b_dtype)
    out = _kernels.csr_matmul(ip, ix, d, shape, b)
    assert out.dtype == out_dtype
    np.testing.assert_allclose(out, ref.ref_csr_matmul(ip, ix, d, shape, b), rtol=1e-6)
    x = (np.arange(2 * shape[1]).reshape(2, shape[1]) % 4).astype(b_dtype)
    out = _kernels.dense_csc_matmul(x, ip, ix, d, (shape[1], shape[0]))
    assert out.dtype == out_dtype
    np.testing.assert_allclose(out, ref.ref_dense_csc_matmul(x, ip, ix, d, (shape[1], shape[0])),
                               rtol=1e-6)
    d_only = np.float32 if np.dtype(d_dtype).kind == "f" and np.dtype(d_dtype).itemsize <= 4 else np.float64
    assert _kernels.csr_to_dense(ip, ix, d, shape).dtype == d_only
    assert _kernels.csr_transpose(ip, ix, d, shape)[2].dtype == d_only
    assert _kernels.csr_sddmm(ip, ix, shape, np.ones((3, 2), d_dtype), np.ones((5, 2), b_dtype)).dtype == out_dtype
    assert _kernels.dense_to_csr(np.ones((2, 2), d_dtype))[2].dtype == d_only


# ---- determinism across thread counts ----------------------------------------------------

@pytest.fixture(scope="module")
def big_problem():
    rng = np.random.default_rng(16)
    a = sp.random_array((300, 2000), density=0.1, format="csr", dtype=np.float32, rng=rng)
    b = rng.standard_normal((2000, 300)).astype(np.float32)
    w = sp.random_array((2048, 2048), density=0.1, format="csc", dtype=np.float32, rng=rng)
    x = rng.standard_normal((256, 2048)).astype(np.float32)
    return a, b, w, x


def test_big_problem_is_parallel(big_problem):
    a, b, w, x = big_problem
    sparsekeras.set_num_threads(2)
    assert _kernels.threads_for_work(a.nnz * b.shape[1]) == 2
    assert _kernels.threads_for_work(w.nnz * x.shape[0]) == 2


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
def test_threads_bitwise_identical(isa, big_problem, dtype):
    a, b, w, x = big_problem
    a, b, w, x = a.astype(dtype), b.astype(dtype), w.astype(dtype), x.astype(dtype)
    ip, ix, d, shape = a.indptr, a.indices, a.data, a.shape
    y1 = _kernels.csr_matmul(ip, ix, d, shape, b, n_threads=1)
    y2 = _kernels.csr_matmul(ip, ix, d, shape, b, n_threads=2)
    np.testing.assert_array_equal(y1, y2)
    assert np.abs(y1).sum() > 0
    ref.assert_close(y1[:20], ref.ref_csr_matmul(ip[:21], ix[:ip[20]], d[:ip[20]], (20, 2000), b),
                     ref.ref_csr_matmul(ip[:21], ix[:ip[20]], _abs(d[:ip[20]]), (20, 2000), _abs(b)),
                     dtype, 2000)
    z1 = _kernels.dense_csc_matmul(x, w.indptr, w.indices, w.data, w.shape, n_threads=1)
    z2 = _kernels.dense_csc_matmul(x, w.indptr, w.indices, w.data, w.shape, n_threads=2)
    np.testing.assert_array_equal(z1, z2)
    with sparsekeras.num_threads(1):
        l1 = linalg.matmul(x, w)
        m1 = linalg.matmul(a, b)
    with sparsekeras.num_threads(2):
        l2 = linalg.matmul(x, w)
        m2 = linalg.matmul(a, b)
    np.testing.assert_array_equal(l1, z1)
    np.testing.assert_array_equal(l2, z1)
    np.testing.assert_array_equal(m1, y1)
    np.testing.assert_array_equal(m2, y1)
    u = x[:300, :64].copy() if x.shape[0] >= 300 else np.resize(x[:, :64], (300, 64)).astype(dtype)
    v = np.resize(x[:, :64], (2000, 64)).astype(dtype)
    s1 = _kernels.csr_sddmm(ip, ix, shape, u, v, n_threads=1)
    s2 = _kernels.csr_sddmm(ip, ix, shape, u, v, n_threads=2)
    np.testing.assert_array_equal(s1, s2)


def test_other_kernels_thread_invariant(big_problem):
    a, _, w, x = big_problem
    big = sp.random_array((400, 3000), density=0.1, format="csr", dtype=np.float64,
                          rng=np.random.default_rng(17))  # nnz 120000: transpose goes parallel
    for m in (a, big):
        args = (m.indptr, m.indices, m.data, m.shape)
        for fn in (_kernels.csr_to_dense, _kernels.csr_canonicalize):
            r1, r2 = fn(*args, n_threads=1), fn(*args, n_threads=2)
            for p, q in zip(np.atleast_1d(r1) if fn is _kernels.csr_to_dense else r1,
                            np.atleast_1d(r2) if fn is _kernels.csr_to_dense else r2):
                np.testing.assert_array_equal(p, q)
        t1 = _kernels.csr_transpose(*args, n_threads=1, return_perm=True)
        t2 = _kernels.csr_transpose(*args, n_threads=2, return_perm=True)
        r = ref.ref_csr_transpose(*args)
        for p, q, s in zip(t1, t2, r):
            np.testing.assert_array_equal(p, q)
            np.testing.assert_array_equal(p, s)
    xd = x.astype(np.float64)
    xd[np.abs(xd) < 1] = 0
    for p, q in zip(_kernels.dense_to_csr(xd, n_threads=1), _kernels.dense_to_csr(xd, n_threads=2)):
        np.testing.assert_array_equal(p, q)


# ---- dense_csr_matmul: X @ B (CSR), the scatter product -------------------------------------

@pytest.mark.parametrize("batch", WIDTHS)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_csr_matmul(isa, case, dtype, index_dtype, batch):
    ip, ix, d, shape = ref.make_csr(case, index_dtype, dtype, seed=batch)
    x = _dense(np.random.default_rng(3), (batch, shape[0]), dtype)
    out = _kernels.dense_csr_matmul(x, ip, ix, d, shape)
    assert out.shape == (batch, shape[1]) and out.dtype == dtype
    ref.assert_close(out, ref.ref_dense_csr_matmul(x, ip, ix, d, shape),
                     ref.ref_dense_csr_matmul(_abs(x), ip, ix, _abs(d), shape), dtype, shape[0])


@pytest.mark.parametrize("case", SHAPES, ids=SHAPE_IDS)
def test_dense_csr_matmul_vector(isa, case):
    ip, ix, d, shape = ref.make_csr(case, np.int32, np.float64)
    x = _dense(np.random.default_rng(4), shape[0], np.float64)
    out = _kernels.dense_csr_matmul(x, ip, ix, d, shape)
    assert out.shape == (shape[1],)
    np.testing.assert_allclose(out, ref.ref_dense_csr_matmul(x[None], ip, ix, d, shape)[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 32, 256])
def test_dense_csr_matmul_threads_bitwise(batch):
    w = sp.random_array((2048, 1500), density=0.1, format="csr", dtype=np.float32,
                        rng=np.random.default_rng(5))
    x = _dense(np.random.default_rng(6), (batch, 2048), np.float32)
    one = _kernels.dense_csr_matmul(x, w.indptr, w.indices, w.data, w.shape, n_threads=1)
    two = _kernels.dense_csr_matmul(x, w.indptr, w.indices, w.data, w.shape, n_threads=2)
    assert np.array_equal(one, two)
    np.testing.assert_allclose(one, x.astype(np.float64) @ w.toarray(), rtol=1e-4, atol=1e-3)


# ---- take (value gathers of the gradients and layers) ---------------------------------------

@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("n", [0, 1, 31, 33, 70001, 300007])
def test_take(n, dtype, index_dtype, n_threads):
    rng = np.random.default_rng(n)
    params = rng.standard_normal(max(n, 1) * 2 + 5).astype(dtype)
    params[3] = np.nan  # copied, not interpreted
    idx = rng.integers(0, params.size, n).astype(index_dtype)
    if n:
        idx[0] = 3
        idx[-1] = params.size - 1
    got = _kernels.take(params, idx, n_threads=n_threads)
    assert got.dtype == np.dtype(dtype) and got.shape == (n,)
    np.testing.assert_array_equal(got, params[idx])


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("n", [40, 300007])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", [-1, "size"])
def test_take_rejects_out_of_range(n, index_dtype, where, bad):
    params = np.arange(1000, dtype=np.float32)
    idx = np.zeros(n, index_dtype)
    pos = {"first": 0, "middle": n // 2, "last": n - 1}[where]
    value = params.size if bad == "size" else -1
    idx[pos] = value
    with pytest.raises(ValueError, match=rf"idx must lie in \[0, 1000\); received idx\[{pos}\]={value}"):
        _kernels.take(params, idx, n_threads=2)


# ---- scratch cache (sk_scratch.h) -------------------------------------------------------------

def test_scratch_reuse_across_sizes_and_release():
    """Kernels reuse their cached scratch across calls of different sizes (a larger buffer
    serves a smaller call, a smaller one is replaced) with correct results, also after
    release_scratch(), and repeated calls stop mapping fresh pages."""
    import resource

    rng = np.random.default_rng(5)
    for depth, n, density in [(256, 1024, 0.02), (64, 300, 0.1), (256, 1024, 0.02), (96, 2000, 0.01)]:
        a = sp.random(n, n + 7, density=density, format="csr", random_state=1, dtype=np.float64)
        ut = rng.standard_normal((depth, n))
        vt = rng.standard_normal((depth, n + 7))
        got = _kernels.csr_sddmm_t(a.indptr, a.indices, a.shape, ut, vt)
        rows = np.repeat(np.arange(n), np.diff(a.indptr))
        want = np.einsum("dp,dp->p", ut[:, rows], vt[:, a.indices])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        x = rng.standard_normal((depth, n + 7))
        np.testing.assert_allclose(_kernels.dense_csc_matmul(x, a.indptr, a.indices, a.data,
                                                             (n + 7, n)),
                                   x @ a.T.toarray(), rtol=1e-12, atol=1e-10)
        _kernels.release_scratch()
    # Two 4 MiB panels per call: without the cache every call faulted them in again (~2000
    # minor faults per call here); with it, only the first call does.
    a = sp.random(4096, 4096, density=1e-4, format="csr", random_state=2, dtype=np.float32)
    ut = rng.standard_normal((256, 4096)).astype(np.float32)
    _kernels.csr_sddmm_t(a.indptr, a.indices, a.shape, ut, ut)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        _kernels.csr_sddmm_t(a.indptr, a.indices, a.shape, ut, ut)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 2000
