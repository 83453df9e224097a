"""The products with a Dense layer's epilogue fused into their output store (the
DenseCscMatMulBiasAct and DenseBcscMatMulBiasAct ops): outputs and gradients against float64
dense references, eagerly and under tf.function; their checks; and CompactDense using them."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from sparsekeras import linalg
from sparsekeras.layers import CompactDense
from sparsekeras.ops._lib import load

from reference import INDEX_DTYPES, VALUE_DTYPES

_ops = load()


@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    def call(fn, *args):
        return (tf.function(fn) if request.param == "tf_function" else fn)(*args)
    return call


def _case(block, idt, vdt, seed=0, k=23, n=24, keep=0.35):
    """A (k, n) kernel pruned in (1, block) blocks, an empty output group included, and its
    stored form: CSC arrays (block 1) or block-CSC."""
    rng = np.random.default_rng(seed)
    mask = np.repeat(rng.random((k, n // block)) < keep, block, axis=1)
    mask[:, :block] = False  # an empty group
    w = (rng.standard_normal((k, n)) * mask).astype(vdt)
    if block == 1:
        ip, ix, v = linalg.bcsc_from_dense(w, 1, index_dtype=idt)
    else:
        ip, ix, v = linalg.bcsc_from_dense(w, block, index_dtype=idt)
    return w, ip, ix, v


def _fused(x, ip, ix, v, shape, block, bias, activation):
    if block == 1:
        empty = tf.zeros([0], ip.dtype)
        return _ops.sparse_keras_dense_csc_mat_mul_bias_act(
            x, ip, ix, v, tf.constant(shape, tf.int64), empty, empty, tf.zeros([0], tf.int64),
            bias, activation=activation)
    return _ops.sparse_keras_dense_bcsc_mat_mul_bias_act(
        x, ip, ix, v, tf.constant(shape, tf.int64), bias, block=block, activation=activation)


def _gelu64(z):
    """Exact GELU and its derivative in float64."""
    from scipy.special import erf
    cdf = 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
    return z * cdf, cdf + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", ["linear", "relu", "relu6", "gelu"])
@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("vdt", VALUE_DTYPES)
def test_fused_op_and_gradients(vdt, idt, block, activation, with_bias, run):
    w, ip, ix, v = _case(block, idt, vdt)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, w.shape[0])).astype(vdt)
    b = rng.standard_normal(w.shape[1]).astype(vdt)
    dy = rng.standard_normal((70, w.shape[1])).astype(vdt)

    def fn(x, v, b):
        with tf.GradientTape() as tape:
            tape.watch([x, v, b])
            y = _fused(x, ip, ix, v, w.shape, block, b if with_bias else tf.zeros([0], vdt),
                       activation)
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [x, v, b]))

    y, dx, dv, db = run(fn, tf.constant(x), tf.constant(v), tf.constant(b))
    tol = 1e-4 if vdt == np.float32 else 1e-10
    w64 = w.astype(np.float64)
    pre = x.astype(np.float64) @ w64 + (b.astype(np.float64) if with_bias else 0.0)
    gelu, dgelu = _gelu64(pre)
    want = {"relu": np.maximum(pre, 0.0), "relu6": np.clip(pre, 0.0, 6.0),
            "gelu": gelu}.get(activation, pre)
    assert y.dtype == vdt and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    g = dy.astype(np.float64) * {"relu": pre > 0, "relu6": (pre > 0) & (pre < 6),
                                 "gelu": dgelu}.get(activation, 1.0)
    np.testing.assert_allclose(dx, g @ w64.T, rtol=tol, atol=tol)
    stored = linalg.bcsc_to_dense(ip, ix, np.ones_like(v), w.shape, block) != 0
    np.testing.assert_allclose(linalg.bcsc_to_dense(ip, ix, dv.numpy(), w.shape, block),
                               np.where(stored, x.astype(np.float64).T @ g, 0.0), rtol=tol,
                               atol=tol)
    if with_bias:
        np.testing.assert_allclose(db, g.sum(axis=0), rtol=tol, atol=tol)
    else:
        assert db is None


@pytest.mark.parametrize("block", [1, 4])
def test_fused_op_equals_unfused_bitwise(block):
    w, ip, ix, v = _case(block, np.int32, np.float32, seed=3)
    x = tf.constant(np.random.default_rng(2).standard_normal((130, w.shape[0])), tf.float32)
    b = tf.constant(np.random.default_rng(3).standard_normal(w.shape[1]), tf.float32)
    got = _fused(x, ip, ix, v, w.shape, block, b, "relu")
    if block == 1:
        empty = tf.zeros([0], tf.int32)
        plain = _ops.sparse_keras_dense_csc_mat_mul(x, ip, ix, v, tf.constant(w.shape, tf.int64),
                                                    empty, empty, tf.zeros([0], tf.int64))
    else:
        plain = _ops.sparse_keras_dense_bcsc_mat_mul(x, ip, ix, v,
                                                     tf.constant(w.shape, tf.int64), block=block)
    np.testing.assert_array_equal(got.numpy(), tf.nn.relu(plain + b).numpy())


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("block", [1, 4])
def test_fused_op_rejects_bad_bias(block, graph):
    w, ip, ix, v = _case(block, np.int32, np.float32)
    x = tf.ones((2, w.shape[0]))
    wrap = tf.function if graph else (lambda f: f)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"bias must be a vector of {w.shape[1]} entries \(one per output "
                             r"column or channel\) or empty \(no bias\); received shape \[5\]"):
        wrap(lambda: _fused(x, ip, ix, v, w.shape, block, tf.ones([5]), "relu"))()
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        wrap(lambda: _fused(x, ip, ix, v, w.shape, block, tf.ones([1, w.shape[1]]), "relu"))()
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        _fused(x, ip, ix, v, w.shape, block, tf.ones([w.shape[1]]), "tanh")


def _op_types(layer, x):
    f = tf.function(lambda t: layer(t))
    return {op.type for op in f.get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("activation", ["relu", None, "tanh", "gelu"])
@pytest.mark.parametrize("block", [1, 8])
def test_compact_dense_fuses_bias_and_relu(block, activation, use_bias):
    """CompactDense computes act(x @ W + b) through the fused op when its activation is ReLU,
    exact GELU or linear (and there is something to fuse); another activation (tanh) runs in
    TensorFlow after the op, which still adds the bias; outputs and gradients equal the dense
    layer's either way."""
    w, _, _, _ = _case(block, np.int32, np.float32, seed=5, k=40, n=32)
    b = np.random.default_rng(6).standard_normal(32).astype(np.float32)
    layer = CompactDense.from_kernel(w, b if use_bias else None, block=block,
                                     activation=activation)
    dense = keras.layers.Dense(32, activation=activation, use_bias=use_bias)
    dense.build((None, 40))
    dense.kernel.assign(w)
    if use_bias:
        dense.bias.assign(b)
    x = tf.constant(np.random.default_rng(7).standard_normal((33, 40)), tf.float32)
    types = _op_types(layer, x)
    fused = "SparseKeras>DenseBcscMatMulBiasAct" if block > 1 else \
        "SparseKeras>DenseCscMatMulBiasAct"
    expect_fused = activation in ("relu", "gelu") or use_bias
    assert (fused in types) == expect_fused, types
    assert "Relu" not in types and "BiasAdd" not in types and "AddV2" not in types, types
    assert ("Tanh" in types) == (activation == "tanh")
    assert "Erf" not in types  # GELU in the epilogue, not TensorFlow's
    np.testing.assert_allclose(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y1 = tf.reduce_sum(tf.sin(layer(x)))
        y2 = tf.reduce_sum(tf.sin(dense(x)))
    np.testing.assert_allclose(tape.gradient(y1, x), tape.gradient(y2, x), rtol=1e-4, atol=1e-5)
    if use_bias:
        np.testing.assert_allclose(tape.gradient(y1, layer.bias), tape.gradient(y2, dense.bias),
                                   rtol=1e-4, atol=1e-5)
    dv = tape.gradient(y1, layer.values)
    dk = tape.gradient(y2, dense.kernel).numpy()
    np.testing.assert_allclose(
        linalg.bcsc_to_dense(layer.indptr.numpy(), layer.indices.numpy(),
                             tf.convert_to_tensor(dv).numpy(), w.shape, block),
        np.where(layer.to_dense_kernel() != 0, dk, 0.0), rtol=1e-4, atol=1e-5)


def test_compact_dense_fused_on_a_sequence_input():
    """(batch, steps, k) inputs take the fused op through the reshape of the fast path."""
    w, _, _, _ = _case(8, np.int32, np.float32, seed=9, k=16, n=24)
    b = np.random.default_rng(10).standard_normal(24).astype(np.float32)
    layer = CompactDense.from_kernel(w, b, block=8, activation="relu")
    x = np.random.default_rng(11).standard_normal((3, 5, 16)).astype(np.float32)
    assert "SparseKeras>DenseBcscMatMulBiasAct" in _op_types(layer, tf.constant(x))
    np.testing.assert_allclose(layer(x), np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)


def test_gelu_epilogue_special_values_and_threads():
    """The GELU epilogue: large |z| gives z (positive) or 0 (negative) as the exact function
    does in float32, a NaN stays NaN, and 1, 2 and 3 kernel threads give the same bits (the
    in-register and the scalar path run the same operations)."""
    from sparsekeras import _kernels
    w, ip, ix, v = _case(1, np.int32, np.float32, seed=12, k=30, n=40, keep=0.5)
    x = np.random.default_rng(13).standard_normal((150, 30)).astype(np.float32) * 3
    x[5] = np.nan
    bias = np.zeros(40, np.float32)
    bias[:4] = [60.0, -60.0, 1e30, -1e30]
    outs = [_kernels.dense_csc_matmul(x, ip, ix, v, w.shape, bias=bias, activation="gelu",
                                      n_threads=nt) for nt in (1, 2, 3)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    out = outs[0]
    pre = x.astype(np.float64) @ w.astype(np.float64) + bias
    ok = np.arange(len(x)) != 5
    stored = (w != 0).any(axis=0)
    assert np.isnan(out[5, stored]).all()
    np.testing.assert_array_equal(out[ok, 0], pre[ok, 0].astype(np.float32))  # GELU(z) = z
    assert (np.abs(out[ok, 1]) == 0).all() and (out[ok, 3] == 0).all()
    np.testing.assert_array_equal(out[ok, 2], np.float32(1e30))
    np.testing.assert_allclose(out[ok], _gelu64(pre[ok])[0], rtol=1e-4, atol=1e-4)
