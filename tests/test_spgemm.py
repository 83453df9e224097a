"""Sparse x sparse products (`csr_spgemm` kernels, the `CsrCsrMatMul` op, the layers' sparse-input
path with a pruned kernel) against plain NumPy float64 references.

Shapes: reference.SHAPES for A (odd sizes, empty rows, nnz = 0, density 1, duplicates, 0 rows),
each paired with kernels W of several densities (empty, ~20 %, full) and odd widths.
"""
import keras
import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import _kernels, ops
from sparsekeras.ops import CSRTensor

import reference as R

W_KINDS = {"w_nnz0": 0.0, "w_20pct": 0.2, "w_dense": 1.0}


def make_w(k, n, density, idt, vdt, seed=5):
    rng = np.random.default_rng(seed)
    mask = rng.random((k, n)) < density
    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=k))]).astype(idt)
    return indptr, cols.astype(idt), rng.standard_normal(len(cols)).astype(vdt), (k, n)


def ref_spgemm(a, w):
    """A @ W in float64 over stored entries (dense references built entry by entry)."""
    return R.ref_csr_to_dense(*a) @ R.ref_csr_to_dense(*w)


def ref_grads(a, w, dy):
    ad, wd = R.ref_csr_to_dense(*a), R.ref_csr_to_dense(*w)
    dy = np.asarray(dy, np.float64)
    ga, gw = dy @ wd.T, ad.T @ dy
    d_a = ga[R.row_ids(a[0]), np.asarray(a[1], np.int64)]
    d_w = gw[R.row_ids(w[0]), np.asarray(w[1], np.int64)]
    return d_a, d_w


def _close(actual, expected, dtype, k):
    expected = np.asarray(expected, np.float64)
    assert np.asarray(actual).dtype == np.dtype(dtype)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    tol = R.RTOL[np.dtype(dtype)] * np.sqrt(max(k, 1)) * 10
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("wkind", list(W_KINDS))
@pytest.mark.parametrize("idt", R.INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("vdt", R.VALUE_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_kernel_matches_reference(case, vdt, idt, wkind):
    a = R.make_csr(case, index_dtype=idt, value_dtype=vdt)
    w = make_w(case.k, 17, W_KINDS[wkind], idt, vdt)
    y = _kernels.csr_spgemm(*a, *w)
    _close(y, ref_spgemm(a, w), vdt, case.k)
    dy = np.random.default_rng(2).standard_normal((case.m, 17)).astype(vdt)
    d_a, d_w = _kernels.csr_spgemm_grad(*a, *w, dy)
    ref_a, ref_w = ref_grads(a, w, dy)
    _close(d_a, ref_a, vdt, 17)
    _close(d_w, ref_w, vdt, max(case.m, 1))


@pytest.mark.parametrize("idt", R.INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("vdt", R.VALUE_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_masked_kernel_reads_only_the_pattern(case, vdt, idt):
    """A @ (W on P) with W dense: entries of W outside P must not matter (they are NaN here)."""
    a = R.make_csr(case, index_dtype=idt, value_dtype=vdt)
    p_ip, p_ix, p_vals, _ = make_w(case.k, 19, 0.25, idt, vdt)
    w = np.full((case.k, 19), np.nan, vdt)
    w[R.row_ids(p_ip), p_ix] = p_vals
    y = _kernels.csr_spgemm_masked(*a, p_ip, p_ix, w)
    _close(y, ref_spgemm(a, (p_ip, p_ix, p_vals, (case.k, 19))), vdt, case.k)


def test_kernel_threads_bitwise_identical():
    rng = np.random.default_rng(0)
    a = sp.random_array((300, 2000), density=0.02, format="csr", rng=rng, dtype=np.float32)
    w = sp.random_array((2000, 129), density=0.1, format="csr", rng=rng, dtype=np.float32)
    dy = rng.standard_normal((300, 129)).astype(np.float32)
    args = (a.indptr, a.indices, a.data, a.shape, w.indptr, w.indices, w.data, w.shape)
    y1 = _kernels.csr_spgemm(*args, n_threads=1)
    y2 = _kernels.csr_spgemm(*args, n_threads=2)
    np.testing.assert_array_equal(y1, y2)
    g1 = _kernels.csr_spgemm_grad(*args, dy, n_threads=1)
    g2 = _kernels.csr_spgemm_grad(*args, dy, n_threads=2)
    for u, v in zip(g1, g2):
        np.testing.assert_array_equal(u, v)
    # and through the op, eagerly, under both thread settings
    outs = []
    for n in (1, 2):
        with sparsekeras.num_threads(n):
            outs.append(ops.csr_csr_matmul(a, w).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], y1)
    wd = w.toarray()
    m1 = _kernels.csr_spgemm_masked(a.indptr, a.indices, a.data, a.shape, w.indptr, w.indices, wd,
                                    n_threads=1)
    m2 = _kernels.csr_spgemm_masked(a.indptr, a.indices, a.data, a.shape, w.indptr, w.indices, wd,
                                    n_threads=2)
    np.testing.assert_array_equal(m1, m2)


def test_kernel_rejects_malformed_csr():
    ip, ix, d, shape = np.array([0, 1, 2]), np.array([0, 7]), np.ones(2), (2, 3)
    w = make_w(3, 4, 0.5, np.int64, np.float64)
    with pytest.raises(ValueError, match=r"a: malformed CSR: indices must lie in \[0, 3\); received indices\[1\]=7"):
        _kernels.csr_spgemm(ip, ix, d, shape, *w)
    with pytest.raises(ValueError, match=r"w must have 3 rows to match a.shape=\(2, 3\); received w.shape=\(4, 4\)"):
        _kernels.csr_spgemm(ip, np.array([0, 1]), d, shape, *make_w(4, 4, 0.5, np.int64, np.float64))
    with pytest.raises(ValueError, match=r"w: malformed CSR: indptr\[0\] must be 0"):
        _kernels.csr_spgemm(ip, np.array([0, 1]), d, shape, np.array([1, 1, 1, 1]),
                            np.zeros(0, np.int64), np.zeros(0), (3, 4))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 4\).*received dy.shape=\(2, 5\)"):
        _kernels.csr_spgemm_grad(ip, np.array([0, 1]), d, shape, *w, np.ones((2, 5)))


@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    graph = request.param == "tf_function"
    return (lambda fn, *a: tf.function(fn)(*a)) if graph else (lambda fn, *a: fn(*a))


def _csr_t(ip, ix, d, shape):
    return CSRTensor(tf.constant(ip), tf.constant(ix), tf.constant(d), tf.constant(shape, tf.int64))


@pytest.mark.parametrize("idt", R.INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("vdt", R.VALUE_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_op_forward_and_gradients(case, vdt, idt, run):
    a = R.make_csr(case, index_dtype=idt, value_dtype=vdt)
    w = make_w(case.k, 13, 0.3, idt, vdt)
    dy = np.random.default_rng(4).standard_normal((case.m, 13)).astype(vdt)
    at, wt = _csr_t(*a), _csr_t(*w)

    def f(av, wv):
        with tf.GradientTape() as tape:
            tape.watch([av, wv])
            y = ops.matmul(at.with_values(av), wt.with_values(wv))  # both sparse: CsrCsrMatMul
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [av, wv]))

    y, d_a, d_w = run(f, tf.constant(a[2]), tf.constant(w[2]))
    assert y.shape == (case.m, 13)
    ref_a, ref_w = ref_grads(a, w, dy)
    _close(y.numpy(), ref_spgemm(a, w), vdt, case.k)
    _close(d_a.numpy(), ref_a, vdt, 13)
    _close(d_w.numpy(), ref_w, vdt, max(case.m, 1))


def test_op_accepts_sparse_tensor_and_scipy_and_mixed_index_dtypes():
    rng = np.random.default_rng(0)
    a = sp.random_array((9, 11), density=0.3, format="csr", rng=rng)
    w = sp.random_array((11, 5), density=0.4, format="csr", rng=rng)
    ref = (a @ w).toarray()
    st = tf.sparse.from_dense(a.toarray())
    w32 = CSRTensor.from_scipy(w, index_dtype=np.int32)
    for x, ww in ((a, w), (st, w32), (CSRTensor.from_scipy(a, index_dtype=np.int64), w32)):
        np.testing.assert_allclose(ops.csr_csr_matmul(x, ww).numpy(), ref, rtol=1e-12)


def test_op_rejects_bad_operands_with_clear_errors(run):
    a = _csr_t(np.array([0, 1, 2], np.int64), np.array([0, 2], np.int64), np.ones(2), (2, 3))
    w = _csr_t(*make_w(4, 2, 0.5, np.int64, np.float64))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"w must have 3 rows to match a.dense_shape \[2, 3\]; received w.dense_shape \[4, 2\]"):
        run(ops.csr_csr_matmul, a, w)
    bad = _csr_t(np.array([0, 1, 2], np.int64), np.array([0, 9], np.int64), np.ones(2), (2, 3))
    w3 = _csr_t(*make_w(3, 2, 0.5, np.int64, np.float64))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"a: malformed CSR: indices must lie in \[0, 3\); received indices\[1\]=9"):
        run(ops.csr_csr_matmul, bad, w3)
    bad_w = _csr_t(np.array([0, 1, 1, 0], np.int64), np.array([0], np.int64), np.ones(1), (3, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"w: malformed CSR: indptr"):
        run(ops.csr_csr_matmul, a, bad_w)


@pytest.mark.parametrize("masked", [False, True], ids=["all_of_b", "pattern"])
@pytest.mark.parametrize("idt", R.INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("vdt", R.VALUE_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", [R.SHAPES[0], R.SHAPES[5], R.SHAPES[6], R.SHAPES[7], R.SHAPES[8]],
                         ids=[R.SHAPE_IDS[i] for i in (0, 5, 6, 7, 8)])
def test_variable_op_forward_and_registered_gradient(case, vdt, idt, masked, run):
    """CsrMatMulVariable: A @ b with b read from a variable (with a pattern P: b is zero outside
    it and only P's entries are read; the others are NaN here to prove it); gradients dA on A's
    pattern and dB = A^T dY as IndexedSlices over the touched rows."""
    from sparsekeras.ops import _ops

    a = R.make_csr(case, index_dtype=idt, value_dtype=vdt)
    p_ip, p_ix, _, _ = make_w(case.k, 11, 0.3, idt, vdt)
    pattern = np.zeros((case.k, 11), bool)
    pattern[R.row_ids(p_ip), p_ix] = True
    if not masked:
        p_ip = p_ix = np.zeros(0, idt)
        pattern[:] = True
    w = np.where(pattern, np.random.default_rng(8).standard_normal((case.k, 11)), 0).astype(vdt)
    var = tf.Variable(w)
    if masked:  # entries outside P are never read: NaN there leaves the forward unchanged
        nan_var = tf.Variable(np.where(pattern, w, np.nan).astype(vdt))
        y_nan = _ops.sparse_keras_csr_mat_mul_variable(a[0], a[1], a[2], tf.constant(a[3], tf.int64),
                                                       nan_var.handle, p_ip, p_ix)
        _close(y_nan.numpy(), R.ref_csr_to_dense(*a) @ w, vdt, case.k)
    dy = np.random.default_rng(9).standard_normal((case.m, 11)).astype(vdt)

    def f(av):
        with tf.GradientTape() as tape:
            tape.watch(av)
            var.sparse_read(tf.zeros([0], tf.int32))
            y = _ops.sparse_keras_csr_mat_mul_variable(a[0], a[1], av,
                                                       tf.constant(a[3], tf.int64), var.handle,
                                                       p_ip, p_ix)
            loss = tf.reduce_sum(y * dy)
        d_a, d_w = tape.gradient(loss, [av, var])
        return y, d_a, tf.convert_to_tensor(d_w), d_w.indices

    y, d_a, d_w, rows = run(f, tf.constant(a[2]))
    wp = np.where(pattern, w, 0.0)
    ad = R.ref_csr_to_dense(*a)
    _close(y.numpy(), ad @ wp, vdt, case.k)
    _close(d_a.numpy(), (dy.astype(np.float64) @ wp.T)[R.row_ids(a[0]), np.asarray(a[1], np.int64)],
           vdt, 11)
    _close(d_w.numpy(), ad.T @ dy, vdt, max(case.m, 1))
    assert sorted(rows.numpy().tolist()) == sorted(set(np.asarray(a[1]).tolist()))


def test_variable_op_rejects_bad_operands(run):
    from sparsekeras.ops import _ops

    a = (np.array([0, 1], np.int64), np.array([1], np.int64), np.ones(1), tf.constant([1, 3], tf.int64))
    var = tf.Variable(tf.ones((3, 2), tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"pattern \(of b's shape\): malformed CSR: indices must lie in \[0, 2\); received indices\[0\]=5"):
        run(lambda: _ops.sparse_keras_csr_mat_mul_variable(*a, var.handle, np.array([0, 1, 1, 1], np.int64),
                                                           np.array([5], np.int64)))
    var2 = tf.Variable(tf.ones((2, 2), tf.float64))
    empty = np.zeros(0, np.int64)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"b \(a variable\) must be a matrix with 3 rows to match a.dense_shape \[1, 3\]; received shape \[2,2\]"):
        run(lambda: _ops.sparse_keras_csr_mat_mul_variable(*a, var2.handle, empty, empty))
    var3 = tf.Variable(tf.ones((3, 2), tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"b \(a variable\) must have the dtype of a.values, double; received float"):
        run(lambda: _ops.sparse_keras_csr_mat_mul_variable(*a, var3.handle, empty, empty))


# ---- layers: sparse input x pruned kernel ---------------------------------------------------

def _bow(rng, batch, vocab, per_row):
    rows = np.repeat(np.arange(batch), per_row)
    m = sp.csr_array((rng.random(batch * per_row).astype(np.float32),
                      (rows, rng.integers(0, vocab, batch * per_row))), shape=(batch, vocab))
    m.sum_duplicates()
    return m


@pytest.mark.parametrize("compute", ["sparse", "auto", "dense"])
def test_sparse_dense_sparse_input_modes_agree(compute):
    """Every compute mode gives the dense reference's output and the kernel gradient A^T dY over
    the touched rows (unmasked, as for dense inputs: the mask constraint zeroes pruned weights
    after each step). The kernel is read through its handle: no ReadVariableOp of it."""
    rng = np.random.default_rng(0)
    x = _bow(rng, 12, 200, 4)
    layer = sparsekeras.layers.SparseDense(9, compute=compute, kernel_initializer="random_normal")
    layer.build((None, 200))
    mask = rng.random((200, 9)) > 0.98
    layer.set_mask(mask)
    assert layer.uses_sparse_kernels == (compute != "dense")
    assert layer.uses_sparse_input_kernel == (compute != "dense")
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    st = tf.sparse.from_dense(x.toarray())
    for fn in (lambda f: f, tf.function):
        with tf.GradientTape() as tape:
            y = fn(lambda s: layer(s))(st)
            loss = tf.reduce_sum(y ** 2)
        grad = tape.gradient(loss, layer.kernel.value)
        ref_y = x.toarray() @ kernel + keras.ops.convert_to_numpy(layer.bias)
        np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-5, atol=1e-5)
        assert isinstance(grad, tf.IndexedSlices)
        np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(),
                                   x.toarray().T @ (2 * ref_y), rtol=1e-4, atol=1e-4)
    cf = tf.function(lambda s: layer(s)).get_concrete_function(st)
    inner = [i for e, i in cf.graph.captures if e is layer.kernel.value.handle]
    assert inner, "kernel handle not captured"
    types = {op.type for op in cf.graph.get_operations()}
    assert "SparseKeras>CsrMatMulVariable" in types
    reads = [op for op in cf.graph.get_operations()
             if op.type == "ReadVariableOp" and op.inputs[0] is inner[0]]
    assert not reads


def test_kernel_is_not_copied_after_a_sparse_update():
    """After plain SGD applied an IndexedSlices update (scatter), TensorFlow copies a variable on
    every ReadVariableOp; the layer must still read its kernel in place: forward results follow
    later assignments and the gradient still reaches the kernel."""
    rng = np.random.default_rng(2)
    x = _bow(rng, 32, 120, 4)
    inputs = keras.Input((120,), sparse=True)
    layer = sparsekeras.layers.SparseDense(5)
    model = keras.Model(inputs, layer(inputs))
    model.compile("sgd", "mse")
    before = keras.ops.convert_to_numpy(layer.kernel).copy()
    model.fit(x, np.zeros((32, 5), np.float32), batch_size=8, epochs=1, verbose=0)
    after = keras.ops.convert_to_numpy(layer.kernel)
    assert not np.allclose(before, after)
    layer.kernel.assign(after * 2)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               x.toarray() @ (after * 2) + keras.ops.convert_to_numpy(layer.bias),
                               rtol=1e-5, atol=1e-5)


def test_compact_dense_sparse_input_matches_and_trains():
    rng = np.random.default_rng(1)
    vocab = 150
    x = _bow(rng, 40, vocab, 5)
    kernel = rng.standard_normal((vocab, 6)).astype(np.float32) * (rng.random((vocab, 6)) > 0.8)
    layer = sparsekeras.layers.CompactDense.from_kernel(kernel, np.zeros(6, np.float32))
    st = tf.sparse.from_dense(x.toarray())
    with tf.GradientTape() as tape:
        y = layer(st)
        loss = tf.reduce_sum(y ** 2)
    d_values = tf.convert_to_tensor(tape.gradient(loss, layer.values.value)).numpy()
    np.testing.assert_allclose(y.numpy(), x.toarray() @ kernel, rtol=1e-5, atol=1e-5)
    full = x.toarray().T @ (2 * (x.toarray() @ kernel))  # dW, dense, on the (CSC) pattern:
    ip, ix = (keras.ops.convert_to_numpy(v) for v in (layer.indptr, layer.indices))
    np.testing.assert_allclose(d_values, full[ix, np.repeat(np.arange(6), np.diff(ip))],
                               rtol=1e-4, atol=1e-4)

    inputs = keras.Input((vocab,), sparse=True)
    compact = sparsekeras.layers.CompactDense(8, sparsity=0.9, activation="relu", seed=0)
    model = keras.Model(inputs, keras.layers.Dense(1)(compact(inputs)))
    model.compile("adam", "mse")
    before = keras.ops.convert_to_numpy(compact.values).copy()
    hist = model.fit(x, rng.standard_normal(40).astype(np.float32), epochs=2, batch_size=8,
                     verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert not np.allclose(before, keras.ops.convert_to_numpy(compact.values))
    assert model.predict(x, verbose=0).shape == (40, 1)


def test_auto_mode_switches_sparse_inputs_at_its_own_threshold():
    """auto: dense-kernel rows below SPARSE_INPUT_SWITCH_SPARSITY (measured faster there), kept
    weights only from it on; the outputs agree either way."""
    from sparsekeras.layers import SPARSE_INPUT_SWITCH_SPARSITY

    rng = np.random.default_rng(3)
    x = tf.sparse.from_dense(_bow(rng, 8, 400, 6).toarray())
    layer = sparsekeras.layers.SparseDense(50, kernel_initializer="random_normal")
    layer.build((None, 400))
    flat = rng.permutation(400 * 50)
    outs = []
    for s in (0.9, SPARSE_INPUT_SWITCH_SPARSITY):
        mask = np.ones(400 * 50, bool)
        mask[flat[:int(round(s * mask.size))]] = False
        layer.set_mask(mask.reshape(400, 50))
        assert layer.uses_sparse_kernels
        assert layer.uses_sparse_input_kernel == (s >= SPARSE_INPUT_SWITCH_SPARSITY)
        ref = tf.sparse.to_dense(x).numpy() @ keras.ops.convert_to_numpy(layer.kernel)
        np.testing.assert_allclose(layer(x).numpy(), ref + keras.ops.convert_to_numpy(layer.bias),
                                   rtol=1e-5, atol=1e-5)


def test_sparse_input_models_save_and_load(tmp_path):
    """A .keras file of a sparse-Input model (pruned SparseDense on the kept-weights path, then its
    stripped CompactDense form) loads back and predicts the same on sparse data."""
    rng = np.random.default_rng(5)
    x = _bow(rng, 20, 300, 4)
    inputs = keras.Input((300,), sparse=True)
    first = sparsekeras.layers.SparseDense(12, activation="relu", name="first")
    model = keras.Model(inputs, keras.layers.Dense(2)(first(inputs)))
    first.set_mask(rng.random((300, 12)) > 0.985)
    assert first.uses_sparse_input_kernel
    expected = model.predict(x, verbose=0)
    for i, m in enumerate((model, sparsekeras.strip(model))):
        path = str(tmp_path / f"model{i}.keras")
        m.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert keras.models.load_model(str(tmp_path / "model0.keras")).get_layer(
        "first").uses_sparse_input_kernel
    assert isinstance(keras.models.load_model(str(tmp_path / "model1.keras")).get_layer("first"),
                      sparsekeras.layers.CompactDense)
