"""Sparse inputs (bag-of-words batches) times a dense kernel: the kernel's gradient comes from the
input's nonzeros only, as a `tf.IndexedSlices` over the kernel rows the batch touches.

Checked against a dense float64 reference (GradientTape on a dense input), eagerly and in
`tf.function`, for float32/float64 values and int32/int64 indices, over reference.SHAPES (empty
rows, nnz = 0, density 1, duplicates, 0 rows); and through Keras: fit with Adam and SGD on a
SparseDense layer keeps pruned weights at zero.
"""
import keras
import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import ops
from sparsekeras.ops import CSRTensor

import reference as R

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    graph = request.param == "tf_function"
    return (lambda fn, *a: tf.function(fn)(*a)) if graph else (lambda fn, *a: fn(*a))


def _dense_ref_grads(ip, ix, data, shape, b, g):
    """(dB, d_values) of sum(A @ B * G) in float64: dB = A^T G, d_values[p] = G[i] . B[j]."""
    a = R.ref_csr_to_dense(ip, ix, data, shape)
    d_b = a.T @ np.asarray(g, np.float64)
    d_values = R.ref_csr_sddmm(ip, ix, shape, g, b)
    return d_b, d_values


def _close(actual, expected, dtype):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=TOL[np.dtype(dtype)],
                               atol=TOL[np.dtype(dtype)] * scale)


@pytest.mark.parametrize("idt", [np.int32, np.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("vdt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", R.SHAPES, ids=R.SHAPE_IDS)
def test_indexed_slices_grad_matches_dense_reference(case, vdt, idt, run):
    ip, ix, data, shape = R.make_csr(case, index_dtype=idt, value_dtype=vdt)
    rng = np.random.default_rng(3)
    n = 13
    b = rng.standard_normal((case.k, n)).astype(vdt)
    g = rng.standard_normal((case.m, n)).astype(vdt)
    a = CSRTensor(tf.constant(ip), tf.constant(ix), tf.constant(data),
                  tf.constant(shape, tf.int64))

    def f(values, b):
        with tf.GradientTape() as tape:
            tape.watch([values, b])
            y = ops.matmul(a.with_values(values), b, indexed_slices_grad=True)
            loss = tf.reduce_sum(y * g)
        d_values, d_b = tape.gradient(loss, [values, b])
        return y, d_values, d_b.values, d_b.indices, d_b.dense_shape

    y, d_values, rows, idx, dshape = run(f, tf.constant(data), tf.constant(b))
    ref_db, ref_dv = _dense_ref_grads(ip, ix, data, shape, b, g)
    _close(y.numpy(), R.ref_csr_matmul(ip, ix, data, shape, b), vdt)
    _close(d_values.numpy(), ref_dv, vdt)
    idx = idx.numpy()
    assert tuple(dshape.numpy()) == (case.k, n)
    # one row per distinct column of A: nothing of size (K, N) is built
    assert sorted(idx.tolist()) == sorted(set(np.asarray(ix).tolist()))
    assert rows.shape == (len(idx), n) and rows.dtype == vdt
    _close(rows.numpy(), ref_db[idx], vdt)
    dense = np.zeros((case.k, n))
    dense[idx] = rows.numpy()
    _close(dense, ref_db, vdt)  # untouched rows of the reference are zero


def test_default_matmul_gradient_stays_dense():
    a = CSRTensor.from_dense(tf.constant([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    b = tf.constant(np.ones((3, 4), np.float32))
    with tf.GradientTape() as tape:
        tape.watch(b)
        y = ops.matmul(a, b)
    d_b = tape.gradient(y, b)
    assert isinstance(d_b, tf.Tensor)
    np.testing.assert_allclose(d_b.numpy(), [[1] * 4, [2] * 4, [0] * 4])


def _bow(rng, batch, vocab, per_row, dtype=np.float32):
    rows = np.repeat(np.arange(batch), per_row)
    cols = rng.integers(0, vocab, batch * per_row)
    m = sp.csr_array((np.ones(batch * per_row, dtype), (rows, cols)), shape=(batch, vocab))
    m.sum_duplicates()
    return m


def test_sparse_dense_layer_kernel_grad_is_indexed_slices():
    rng = np.random.default_rng(0)
    x = _bow(rng, 16, 400, 5)
    layer = sparsekeras.layers.SparseDense(8, kernel_initializer="random_normal")
    layer.build((None, 400))
    st = tf.sparse.from_dense(x.toarray())
    for inputs in (st, tf.constant(x.toarray())):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs) ** 2)
        grad = tape.gradient(loss, layer.kernel.value)
        if inputs is st:
            assert isinstance(grad, tf.IndexedSlices)
            assert grad.values.shape[0] == len(np.unique(x.indices)) < 400
            sliced = tf.convert_to_tensor(grad).numpy()
        else:
            np.testing.assert_allclose(sliced, grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fit_with_sparse_inputs_keeps_the_mask(optimizer):
    """Keras optimizers apply the IndexedSlices gradient; pruned weights stay exactly zero and
    only kernel rows the data touches move (SGD, no weight decay)."""
    rng = np.random.default_rng(1)
    vocab = 300
    x = _bow(rng, 64, vocab, 6)
    unused = np.setdiff1d(np.arange(vocab), np.unique(x.indices))
    assert unused.size > 0
    y = rng.integers(0, 2, 64).astype(np.float32)
    inputs = keras.Input((vocab,), sparse=True)
    first = sparsekeras.layers.SparseDense(16, activation="relu", name="first")
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(first(inputs)))
    mask = rng.random((vocab, 16)) > 0.8
    first.set_mask(mask)
    model.compile(optimizer, "binary_crossentropy")
    before = keras.ops.convert_to_numpy(first.kernel).copy()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = keras.ops.convert_to_numpy(first.kernel)
    assert np.all(after[~mask] == 0)
    assert not np.allclose(before[mask], after[mask])
    if optimizer == "sgd":
        np.testing.assert_array_equal(after[unused], before[unused])
    assert model.predict(x, verbose=0).shape == (64, 1)


def test_csr_tensor_batches_from_tf_data_train():
    """The project's CSRTensor as a tf.data element: mapped to a SparseTensor (Keras layers take
    tensors and SparseTensors positionally), a sparse-Input SparseDense model fits and predicts,
    and the layer's own call takes the CSRTensor directly with the same result."""
    rng = np.random.default_rng(0)
    x = _bow(rng, 64, 100, 5)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    batches = [(CSRTensor.from_scipy(x[i:i + 16], index_dtype=np.int32), y[i:i + 16])
               for i in range(0, 64, 16)]
    spec = (CSRTensor.Spec(tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
                           tf.TensorSpec([None], tf.float32), tf.TensorSpec([2], tf.int64)),
            tf.TensorSpec([None, 1], tf.float32))
    ds = (tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec)
          .apply(tf.data.experimental.assert_cardinality(4))
          .map(lambda c, t: (c.to_sparse_tensor(), t)))
    inputs = keras.Input((100,), sparse=True)
    layer = sparsekeras.layers.SparseDense(8, activation="relu")
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    model.compile("adam", "mse")
    hist = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(hist.history["loss"]).all()
    assert model.predict(ds, verbose=0).shape == (64, 1)
    csr = batches[0][0]
    np.testing.assert_allclose(layer.call(csr).numpy(), layer(csr.to_sparse_tensor()).numpy(),
                               rtol=1e-6)


def test_mixed_precision_sparse_input_trains():
    """mixed_float16: the kernel variable stays float32 and is read in place; outputs are float16
    and match the float32 product."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        rng = np.random.default_rng(4)
        x = _bow(rng, 32, 100, 5)
        inputs = keras.Input((100,), sparse=True)
        layer = sparsekeras.layers.SparseDense(8)
        model = keras.Model(inputs, keras.layers.Dense(1, dtype="float32")(layer(inputs)))
        model.compile("sgd", "mse")
        hist = model.fit(x, np.zeros((32, 1), np.float32), epochs=1, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
        y = layer(tf.sparse.from_dense(x.toarray()))
        assert y.dtype == tf.float16
        ref = x.toarray() @ keras.ops.convert_to_numpy(layer.kernel) + \
            keras.ops.convert_to_numpy(layer.bias)
        np.testing.assert_allclose(y.numpy().astype(np.float32), ref, rtol=1e-2, atol=1e-2)
    finally:
        keras.config.set_dtype_policy(before)


def test_sparse_input_layer_in_a_savedmodel(tmp_path):
    """The in-place kernel read (a resource input) survives tf.saved_model save/load."""
    rng = np.random.default_rng(6)
    x = _bow(rng, 8, 100, 4)
    layer = sparsekeras.layers.SparseDense(4, kernel_initializer="random_normal")
    layer.build((None, 100))
    module = tf.Module()
    module.layer = layer
    module.f = tf.function(lambda st: layer(st), input_signature=[
        tf.SparseTensorSpec(tf.TensorShape([None, 100]), tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    st = tf.sparse.from_dense(x.toarray())
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded.f(st).numpy(), module.f(st).numpy(), rtol=1e-6)
    np.testing.assert_allclose(loaded.f(st).numpy(),
                               x.toarray() @ keras.ops.convert_to_numpy(layer.kernel),
                               rtol=1e-5, atol=1e-6)
