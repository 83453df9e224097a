"""TensorFlow convolution ops (`sparsekeras.ops.conv2d`, `csr_conv2d`) against tf.nn.conv2d
and the float64 references: eager and tf.function, gradients, validation, SavedModel."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from sparsekeras import ops

import reference as R

CONFIGS = [
    ((2, 9, 8, 3), (3, 3, 3, 5), 1, "same", 1),
    ((2, 9, 8, 3), (3, 3, 3, 5), 1, "valid", 1),
    ((1, 10, 11, 4), (3, 3, 4, 6), 2, "same", 1),
    ((1, 10, 11, 4), (3, 2, 4, 6), (2, 1), "valid", 1),
    ((2, 12, 12, 2), (3, 3, 2, 3), 1, "same", 2),
    ((3, 6, 7, 8), (1, 1, 8, 4), 1, "same", 1),
    ((2, 5, 70, 3), (3, 3, 3, 2), 1, "same", 1),
]
IDS = [f"x{c[0]}-k{c[1]}-s{c[2]}-{c[3]}-d{c[4]}".replace(" ", "") for c in CONFIGS]


@pytest.fixture(params=["eager", "tf_function"])
def run(request):
    graph = request.param == "tf_function"

    def call(fn, *args):
        return (tf.function(fn) if graph else fn)(*args)

    return call


def _case(cfg, dtype=np.float32, density=0.4, seed=0):
    xs, ks, strides, padding, dil = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    mask = rng.random(ks) < density
    kernel = (rng.standard_normal(ks) * mask).astype(dtype)
    return x, kernel, mask, dict(strides=strides, padding=padding, dilations=dil)


def _tf_kw(kw):
    return dict(strides=kw["strides"], padding=kw["padding"].upper(), dilations=kw["dilations"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_conv2d_forward(run, cfg, dtype):
    x, kernel, _, kw = _case(cfg, dtype)
    y = run(lambda a, k: ops.conv2d(a, k, **kw), tf.constant(x), tf.constant(kernel))
    assert y.dtype == dtype
    want = R.ref_conv2d(x, kernel, kw["strides"] if isinstance(kw["strides"], tuple) else (kw["strides"],) * 2,
                        kw["padding"], (kw["dilations"],) * 2)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y.numpy(), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(y.numpy(), tf.nn.conv2d(x, kernel, **_tf_kw(kw)).numpy(),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_conv2d_gradients_match_dense(run, cfg, index_dtype):
    x, kernel, mask, kw = _case(cfg, np.float64, seed=1)
    indptr, indices, positions = ops.conv_kernel_structure(mask, index_dtype)
    xt = tf.Variable(x)
    kt = tf.Variable(kernel)

    def grads():
        with tf.GradientTape() as tape:
            values = tf.gather(tf.reshape(kt, [-1]), positions)
            y = ops.csr_conv2d(xt, indptr, indices, values, kernel.shape, **kw)
            loss = tf.reduce_sum(y * tf.sin(y))
        return tape.gradient(loss, [xt, kt])

    # Dense float64 reference (TensorFlow's CPU conv gradients refuse dilations > 1).
    s2 = kw["strides"] if isinstance(kw["strides"], tuple) else (kw["strides"],) * 2
    geo = (s2, kw["padding"], (kw["dilations"],) * 2)
    y = R.ref_conv2d(x, kernel, *geo)
    dx_ref, dk_ref = R.ref_conv2d_grads(x, kernel, np.sin(y) + y * np.cos(y), *geo)
    dx, dk = run(grads)
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dk.numpy(), dk_ref * mask, rtol=1e-9, atol=1e-9)


def test_conv2d_gradient_error_small():
    x, kernel, mask, kw = _case(((1, 5, 4, 2), (3, 3, 2, 3), 2, "same", 1), np.float64, 0.5, seed=2)
    indptr, indices, positions = ops.conv_kernel_structure(mask)
    values = tf.gather(tf.reshape(tf.constant(kernel), [-1]), positions)
    err = tf.test.compute_gradient(
        lambda a, v: ops.csr_conv2d(a, indptr, indices, v, kernel.shape, **kw), [x, values])
    theo, num = err
    for t, n in zip(theo, num):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_conv2d_half_precision(dtype):
    x, kernel, _, kw = _case(CONFIGS[0], np.float32)
    y = ops.conv2d(tf.cast(x, dtype), tf.cast(kernel, dtype), **kw)
    assert y.dtype == dtype
    want = tf.nn.conv2d(tf.cast(tf.cast(x, dtype), tf.float32), tf.cast(tf.cast(kernel, dtype), tf.float32),
                        **_tf_kw(kw))
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), want.numpy(), rtol=0.05, atol=0.05)


def test_conv2d_static_shape_in_graph():
    kernel = np.ones((3, 3, 4, 6), np.float32)
    f = tf.function(lambda a: ops.conv2d(a, kernel, strides=2, padding="same"),
                    input_signature=[tf.TensorSpec([None, 15, 16, 4], tf.float32)])
    out = f.get_concrete_function().structured_outputs
    assert out.shape.as_list() == [None, 8, 8, 6]


def test_conv2d_empty_batch_and_empty_kernel():
    kernel = np.zeros((3, 3, 2, 4), np.float32)
    y = ops.conv2d(tf.zeros([0, 5, 5, 2]), np.ones_like(kernel), padding="same")
    assert y.shape == (0, 5, 5, 4)
    x = tf.random.normal([2, 5, 5, 2])
    y = ops.conv2d(x, kernel, padding="same")
    np.testing.assert_array_equal(y.numpy(), 0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.conv2d(x, kernel, padding="same")
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), 0)


@pytest.mark.parametrize("graph", [False, True])
def test_conv2d_bad_structure_raises(graph):
    x = tf.zeros([1, 5, 5, 2])
    cases = [
        (tf.constant([0, 1, 2, 4], tf.int64), tf.constant([0, 18, 2, 3], tf.int64),
         r"indices must lie in \[0, 18\); received indices\[1\]=18"),
        (tf.constant([0, 3, 2, 4], tf.int64), tf.constant([0, 1, 2, 3], tf.int64),
         "indptr must be non-decreasing"),
        (tf.constant([0, 1, 2, 5], tf.int64), tf.constant([0, 1, 2, 3], tf.int64),
         "indptr\\[-1\\] must equal the number of stored entries"),
    ]
    for indptr, indices, msg in cases:
        fn = lambda: ops.csr_conv2d(x, indptr, indices, tf.ones([4]), (3, 3, 2, 3), padding="same")
        with pytest.raises(tf.errors.InvalidArgumentError, match=msg):
            (tf.function(fn) if graph else fn)()


def test_conv2d_bad_arguments_raise():
    x = tf.zeros([1, 5, 5, 2])
    k = np.ones((3, 3, 2, 3), np.float32)
    with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
        ops.conv2d(x, k, padding="full")
    with pytest.raises(ValueError, match="strides must be positive"):
        ops.conv2d(x, k, strides=0)
    with pytest.raises(ValueError, match="x has 4 channels"):
        ops.conv2d(tf.zeros([1, 5, 5, 4]), k)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv2d(tf.zeros([5, 5, 2]), k)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="at least the dilated kernel"):
        ops.conv2d(tf.zeros([1, 2, 2, 2]), k, padding="valid")
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy must have shape"):
        from sparsekeras.ops._lib import load
        ip, ix, _ = ops.conv_kernel_structure(k)
        load().sparse_keras_csr_conv2d_backprop_values(
            x, tf.zeros([1, 4, 4, 3]), ip, ix, kernel_size=[3, 3], padding="SAME")


def test_conv2d_nan_propagates():
    x = np.ones((1, 4, 4, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    y = ops.conv2d(x, np.ones((3, 3, 1, 1), np.float32), padding="same").numpy()
    assert np.isnan(y[0, :2, :2, 0]).all() and not np.isnan(y[0, 2:, :, 0]).any()


def test_conv2d_savedmodel_fresh_process(tmp_path):
    kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype(np.float32)
    kernel[np.abs(kernel) < 0.8] = 0

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(kernel)

        @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 2], tf.float32)])
        def __call__(self, x):
            return ops.conv2d(x, self.k, padding="same")

    m = M()
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", m(x).numpy())
    tf.saved_model.save(m, str(tmp_path / "sm"))
    code = f"""
        import numpy as np, sparsekeras, tensorflow as tf
        m = tf.saved_model.load({str(tmp_path / 'sm')!r})
        y = m(np.load({str(tmp_path / 'x.npy')!r})).numpy()
        np.testing.assert_allclose(y, np.load({str(tmp_path / 'y.npy')!r}), rtol=1e-6, atol=1e-6)
        print("OK")
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
