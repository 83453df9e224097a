"""The convolution with a Conv2D layer's epilogue fused into its output store (bias, then
linear / ReLU / ReLU6 / GELU: the CsrConv2DBiasAct op and `_kernels.csr_conv2d(..., bias,
activation)`): outputs and gradients against float64 dense references on every path of the
kernel (banded, strided planes, pointwise, strided pointwise, dilated), bitwise against the
unfused op, on every instruction set and thread count; its checks; and CompactConv2D using it."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import _kernels
from sparsekeras.layers.conv import CompactConv2D
from sparsekeras.ops._lib import load

from layer_helper import assert_matches_twin
from reference import INDEX_DTYPES, VALUE_DTYPES

_ops = load()

ACTIVATIONS = ["linear", "relu", "relu6", "gelu"]
# (x shape, kernel size, strides, padding, dilations): each reaches another path of the kernel
GEOMETRIES = [
    ((2, 9, 9, 6), 3, 1, "SAME", 1),      # banded, stride 1
    ((3, 10, 11, 5), 3, 2, "SAME", 1),    # planes by row phase, stride 2
    ((2, 7, 5, 6), 1, 1, "VALID", 1),     # pointwise
    ((2, 9, 8, 6), 1, 2, "VALID", 1),     # strided pointwise
    ((1, 11, 9, 4), 3, 1, "VALID", 2),    # dilated
]


def _case(geometry, idt, vdt, seed=0, cout=19, keep=0.3):
    """x, a (k, k, cin, cout) kernel with an empty output channel, its CSC arrays (indptr,
    indices, values), a bias, and the stored values' flat positions in the kernel."""
    shape, k, s, pad, d = geometry
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((k, k, shape[3], cout)) * (rng.random((k, k, shape[3], cout))
                                                             < keep)
    kernel[..., 0] = 0  # an empty output channel: its output is act(bias)
    kernel = kernel.astype(vdt)
    ip, ix, pos = (np.asarray(a) for a in sparsekeras.ops.conv_kernel_structure(
        kernel != 0, index_dtype=tf.as_dtype(idt)))
    x = (rng.standard_normal(shape) * 2).astype(vdt)
    bias = (rng.standard_normal(cout) * 2).astype(vdt)
    return x, kernel, ip, ix, kernel.reshape(-1)[pos], bias, pos


def _act64(z, activation):
    """activation(z) and its derivative, float64 (exact GELU through scipy's erf)."""
    from scipy.special import erf
    if activation == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if activation == "relu6":
        return np.clip(z, 0.0, 6.0), ((z > 0) & (z < 6)).astype(np.float64)
    if activation == "gelu":
        cdf = 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
        return z * cdf, cdf + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    return z, np.ones_like(z)


def _reference(x, kernel, bias, activation, geometry, dy):
    """(y, dx, d_kernel, d_bias) in float64 through tf.nn.conv2d with the dense kernel."""
    _, k, s, pad, d = geometry
    # the dilated kernel written out (TensorFlow's CPU conv2d has no dilated gradient)
    kd = np.zeros(((k - 1) * d + 1, (k - 1) * d + 1) + kernel.shape[2:])
    kd[::d, ::d] = kernel
    x64, k64 = tf.constant(x, tf.float64), tf.constant(kd, tf.float64)
    b64 = tf.constant(0.0 if bias is None else bias, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x64, k64, b64])
        z = tf.nn.conv2d(x64, k64, s, pad) + b64
        y, slope = _act64(z.numpy(), activation)
        loss = tf.reduce_sum(z * (np.asarray(dy, np.float64) * slope))
    dx, dk, db = (g.numpy() for g in tape.gradient(loss, [x64, k64, b64]))
    return y, dx, dk[::d, ::d], db


def _fused(x, ip, ix, v, bias, activation, geometry, kshape):
    _, k, s, pad, d = geometry
    return _ops.sparse_keras_csr_conv2d_bias_act(
        x, ip, ix, v, bias, activation=activation, kernel_size=[k, k], strides=[s, s],
        dilations=[d, d], padding=pad, kernel_shape=list(kshape))


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[1]}x{g[1]}s{g[2]}{g[3]}d{g[4]}")
@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("vdt", VALUE_DTYPES)
def test_fused_conv_op_and_gradients(vdt, idt, geometry, activation, with_bias, graph):
    x, kernel, ip, ix, v, bias, pos = _case(geometry, idt, vdt)
    want_y = _reference(x, kernel, bias if with_bias else None, activation, geometry, 0.0)[0]
    dy = np.random.default_rng(5).standard_normal(want_y.shape).astype(vdt)
    want_y, want_dx, want_dk, want_db = _reference(x, kernel, bias if with_bias else None,
                                                   activation, geometry, dy)

    def fn(x, v, b):
        with tf.GradientTape() as tape:
            tape.watch([x, v, b])
            y = _fused(x, ip, ix, v, b if with_bias else tf.zeros([0], vdt), activation,
                       geometry, kernel.shape)
            loss = tf.reduce_sum(y * dy)
        return (y,) + tuple(tape.gradient(loss, [x, v, b]))

    y, dx, dv, db = (tf.function(fn) if graph else fn)(tf.constant(x), tf.constant(v),
                                                       tf.constant(bias))
    tol = 1e-4 if vdt == np.float32 else 1e-10
    assert y.dtype == vdt and y.shape == want_y.shape
    np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(dv, want_dk.reshape(-1)[pos], rtol=tol, atol=tol)
    if with_bias:
        np.testing.assert_allclose(db, want_db, rtol=tol, atol=tol)
    else:
        assert db is None


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[1]}x{g[1]}s{g[2]}{g[3]}d{g[4]}")
@pytest.mark.parametrize("vdt", VALUE_DTYPES)
def test_fused_conv_equals_unfused_bitwise(vdt, geometry, isa):
    """ReLU and ReLU6 (and the bias alone) are the same float operations as BiasAdd then
    Relu / Relu6 after the plain convolution: equal bits, on every instruction set (the
    AVX-512 in-register epilogue and the scalar one) and thread count; a NaN input stays NaN,
    values above 6 clamp."""
    x, kernel, ip, ix, v, bias, pos = _case(geometry, np.int32, vdt, seed=7, cout=33)
    x[0, 0, 0, :] = np.nan  # read by every geometry
    x[-1] *= 40  # values far above 6
    _, k, s, pad, d = geometry
    geo = dict(strides=(s, s), padding=pad, dilations=(d, d))
    plain = _kernels.csr_conv2d(x, ip, ix, v, kernel.shape, n_threads=1, **geo)
    z = tf.nn.bias_add(tf.constant(plain), tf.constant(bias))
    for activation, want in (("linear", z), ("relu", tf.nn.relu(z)), ("relu6", tf.nn.relu6(z))):
        for nt in (1, 2, 3):
            got = _kernels.csr_conv2d(x, ip, ix, v, kernel.shape, bias=bias,
                                      activation=activation, n_threads=nt, **geo)
            np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{activation} {nt}")
    nobias = _kernels.csr_conv2d(x, ip, ix, v, kernel.shape, activation="relu6", **geo)
    np.testing.assert_array_equal(nobias, tf.nn.relu6(plain).numpy())
    assert np.isnan(nobias).any() and np.nanmax(nobias) == 6.0
    gelu = [_kernels.csr_conv2d(x, ip, ix, v, kernel.shape, bias=bias, activation="gelu",
                                n_threads=nt, **geo) for nt in (1, 2)]
    np.testing.assert_array_equal(gelu[0], gelu[1])
    ok = ~np.isnan(z.numpy())
    np.testing.assert_allclose(gelu[0][ok], tf.nn.gelu(tf.cast(z, tf.float64),
                                                       approximate=False).numpy()[ok],
                               rtol=1e-5, atol=1e-5)


def test_fused_conv_rejects_bad_arguments():
    geometry = GEOMETRIES[0]
    x, kernel, ip, ix, v, bias, pos = _case(geometry, np.int32, np.float32)
    for wrap in (lambda f: f, tf.function):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"bias must be a vector of 19 entries \(one per output column "
                                 r"or channel\) or empty \(no bias\); received shape \[5\]"):
            wrap(lambda: _fused(x, ip, ix, v, tf.ones([5]), "relu", geometry, kernel.shape))()
    with pytest.raises(ValueError, match=r"bias must have shape \(19,\).*received bias.shape"):
        sparsekeras.ops.csr_conv2d(x, ip, ix, v, kernel.shape, padding="same", bias=np.ones(4))
    with pytest.raises(ValueError, match=r"activation must be None or one of .*received "
                                         r"activation='tanh'"):
        sparsekeras.ops.csr_conv2d(x, ip, ix, v, kernel.shape, padding="same",
                                   activation="tanh")
    with pytest.raises(ValueError, match=r"activation must be None, 'linear', 'relu', 'gelu' or "
                                         r"'relu6' \(exact\); received activation='elu'"):
        _kernels.csr_conv2d(x, ip, ix, v, kernel.shape, padding="SAME", activation="elu")
    with pytest.raises(ValueError, match=r"bias must have shape \(19,\)"):
        _kernels.csr_conv2d(x, ip, ix, v, kernel.shape, padding="SAME", bias=np.ones(3))


def _op_types(layer, x):
    f = tf.function(lambda t: layer(t))
    return {op.type for op in f.get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("activation", ["relu", "relu6", "gelu", None, "tanh"])
def test_compact_conv2d_fuses_its_epilogue(activation, use_bias):
    """CompactConv2D on its sparse path: one CsrConv2DBiasAct op for a linear / ReLU / ReLU6 /
    GELU layer (no BiasAdd, Relu, Relu6 or Erf left), the activation after the op otherwise;
    outputs and gradients equal to the Keras Conv2D with the same kernel."""
    rng = np.random.default_rng(11)
    kernel = (rng.standard_normal((3, 3, 8, 16)) * (rng.random((3, 3, 8, 16)) < 0.1) * 3
              ).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32) * 3 if use_bias else None
    layer = CompactConv2D.from_kernel(kernel, bias, padding="same", activation=activation)
    layer.__dict__["_sparse_rows_cache"] = (1, 10 ** 12)  # always the sparse path
    twin = keras.layers.Conv2D(16, 3, padding="same", activation=activation, use_bias=use_bias)
    x = tf.constant(rng.standard_normal((4, 12, 12, 8)).astype(np.float32))
    twin.build(x.shape)
    twin.kernel.assign(kernel)
    if use_bias:
        twin.bias.assign(bias)
    types = _op_types(layer, x)
    fused = activation != "tanh"
    assert ("SparseKeras>CsrConv2DBiasAct" in types) == (fused and (use_bias or activation
                                                                    is not None))
    if fused:
        assert not types & {"BiasAdd", "AddV2", "Relu", "Relu6", "Erf"}, types
    else:
        assert "Tanh" in types
    assert_matches_twin(layer, twin, x, weights=[(layer.bias, twin.bias)] if use_bias else [])


def test_compact_depthwise_dense_path_keeps_its_epilogue():
    """A stripped depthwise convolution on its dense path (the cost model's choice for these
    layers) applies the bias as a BiasAdd and the activation after it, and equals the Keras
    DepthwiseConv2D."""
    rng = np.random.default_rng(4)
    kernel = (rng.standard_normal((3, 3, 16, 1)) * (rng.random((3, 3, 16, 1)) < 0.3) * 3
              ).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    layer = CompactConv2D.from_depthwise_kernel(kernel, bias, padding="same", activation="relu6")
    layer.__dict__["_sparse_rows_cache"] = (2, 1)  # never sparse
    twin = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")
    x = tf.constant(rng.standard_normal((2, 8, 8, 16)).astype(np.float32) * 4)
    twin.build(x.shape)
    twin.kernel.assign(kernel)
    twin.bias.assign(bias)
    types = _op_types(layer, x)
    assert {"BiasAdd", "Relu6"} <= types and "SparseKeras>CsrConv2DBiasAct" not in types
    np.testing.assert_allclose(layer(x), twin(x), rtol=1e-5, atol=1e-5)
    assert float(tf.reduce_max(layer(x))) == 6.0
