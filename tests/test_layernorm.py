"""The LayerNorm op (`sparsekeras.ops.layer_norm`) and `FusedLayerNormalization`: outputs and
gradients against float64 NumPy references (odd widths, with and without gamma / beta,
eagerly and under tf.function), row independence (a row computes the same bits alone or in a
batch, whatever the split over threads), special values, bad input, the layer against
`keras.layers.LayerNormalization`, its fallbacks, a fresh-process `.keras` round trip, and
`strip(fuse_layernorm=...)` / `densify`."""
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.layers import FusedLayerNormalization

from layer_helper import run_layer_test


def _reference(x, gamma, beta, eps, dy):
    """(y, dx, d_gamma, d_beta) in float64, by the textbook formulas."""
    x = x.astype(np.float64)
    h = x.shape[-1]
    g = np.ones(h) if gamma is None else gamma.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    y = xhat * g + (0.0 if beta is None else beta.astype(np.float64))
    dg = dy * g
    dx = rstd * (dg - dg.mean(-1, keepdims=True) - xhat * (dg * xhat).mean(-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return y, dx, (dy * xhat).sum(lead), dy.sum(lead)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("params", ["both", "gamma", "beta", "none"])
@pytest.mark.parametrize("shape", [(5,), (3, 1), (2, 3, 17), (4, 256), (2, 2, 3, 1000)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_op_and_gradients(dtype, shape, params, graph):
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    h = shape[-1]
    gamma = (rng.random(h) + 0.5).astype(dtype) if params in ("both", "gamma") else None
    beta = rng.standard_normal(h).astype(dtype) if params in ("both", "beta") else None
    dy = rng.standard_normal(shape)
    eps = 1e-5
    want = _reference(x, gamma, beta, eps, dy)

    def fn(x, g, b):
        with tf.GradientTape() as tape:
            tape.watch([x, g, b])
            y = sparsekeras.ops.layer_norm(x, g if gamma is not None else None,
                                           b if beta is not None else None, epsilon=eps)
            loss = tf.reduce_sum(y * tf.cast(dy, y.dtype))
        return (y,) + tuple(tape.gradient(loss, [x, g, b]))

    g0 = gamma if gamma is not None else np.ones(h, dtype)
    b0 = beta if beta is not None else np.zeros(h, dtype)
    y, dx, dg, db = (tf.function(fn) if graph else fn)(tf.constant(x), tf.constant(g0),
                                                       tf.constant(b0))
    tol = 2e-5 if dtype == np.float32 else 1e-10
    assert y.dtype == dtype and tuple(y.shape) == shape
    np.testing.assert_allclose(y, want[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, want[1], rtol=10 * tol, atol=10 * tol)
    if gamma is not None:
        np.testing.assert_allclose(dg, want[2], rtol=10 * tol, atol=10 * tol)
    else:
        assert dg is None
    if beta is not None:
        np.testing.assert_allclose(db, want[3], rtol=10 * tol, atol=10 * tol)
    else:
        assert db is None


def test_rows_are_independent_bitwise():
    """A row gives the same bits computed alone or among 4096 others (split over the thread
    pool's parts); a NaN stays in its row; a constant row gives beta."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 77)).astype(np.float32) * 5
    x[10] = 3.25
    x[11, 5] = np.nan
    gamma = rng.random(77).astype(np.float32) + 0.5
    beta = rng.standard_normal(77).astype(np.float32)
    batch = sparsekeras.ops.layer_norm(x, gamma, beta, epsilon=1e-6).numpy()
    for r in (0, 10, 11, 2047, 4095):
        alone = sparsekeras.ops.layer_norm(x[r:r + 1], gamma, beta, epsilon=1e-6).numpy()
        np.testing.assert_array_equal(alone[0], batch[r])
    np.testing.assert_allclose(batch[10], beta, rtol=0, atol=1e-6)
    assert np.isnan(batch[11]).all() and not np.isnan(np.delete(batch, 11, axis=0)).any()
    again = tf.function(lambda t: sparsekeras.ops.layer_norm(t, gamma, beta, 1e-6))(x).numpy()
    np.testing.assert_array_equal(again, batch)


def test_layer_norm_rejects_bad_input():
    x = tf.ones((2, 4))
    ops = sparsekeras.ops
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\).*received gamma.shape"):
        ops.layer_norm(x, tf.ones(3))
    with pytest.raises(ValueError, match=r"beta must have shape \(4,\)"):
        ops.layer_norm(x, None, tf.ones((1, 4)))
    with pytest.raises(ValueError, match=r"epsilon must be a finite number >= 0; received "
                                         r"epsilon=-1.0"):
        ops.layer_norm(x, epsilon=-1.0)
    with pytest.raises(ValueError, match=r"epsilon must be a number >= 0; received "
                                         r"epsilon='small'"):
        ops.layer_norm(x, epsilon="small")
    with pytest.raises(ValueError, match="at least one dimension"):
        ops.layer_norm(tf.constant(1.0))
    # the op itself, with shapes only known when it runs
    op = ops._ops.sparse_keras_layer_norm
    fn = tf.function(lambda a, g: op(a, g, tf.zeros([0]), epsilon=1e-3),
                     input_signature=[tf.TensorSpec(None), tf.TensorSpec([None])])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"gamma must be a vector of 4 entries \(x's last dimension\) or "
                             r"empty \(none\); received shape \[3\]"):
        fn(x, tf.ones(3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one dimension"):
        fn(tf.constant(1.0), tf.ones(0))
    # an empty tensor is fine
    assert ops.layer_norm(tf.zeros((0, 4)), tf.ones(4)).shape == (0, 4)


def test_fused_layer_normalization_layer():
    run_layer_test(FusedLayerNormalization, dict(epsilon=1e-6), (3, 5, 16), (3, 5, 16),
                   expected_num_trainable_weights=2, expected_num_non_trainable_weights=0)


@pytest.mark.parametrize("kwargs, fused", [
    (dict(), True), (dict(epsilon=1e-12, center=False), True), (dict(scale=False), True),
    (dict(axis=1), False), (dict(axis=[1, 2]), False),
])
def test_fused_layer_equals_keras_layer(kwargs, fused):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((4, 6, 24)).astype(np.float32) * 2 + 1)
    plain = keras.layers.LayerNormalization(**kwargs)
    plain.build(x.shape)
    for w in plain.weights:
        w.assign(rng.standard_normal(w.shape).astype(np.float32))
    layer = FusedLayerNormalization.from_keras(plain)
    types = {op.type for op in tf.function(lambda t: layer(t)).get_concrete_function(x)
             .graph.get_operations()}
    assert ("SparseKeras>LayerNorm" in types) == fused
    if fused:
        assert not types & {"Mean", "SquaredDifference", "Rsqrt"}, types
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = tf.reduce_sum(tf.sin(plain(x))), tf.reduce_sum(tf.sin(layer(x)))
    np.testing.assert_allclose(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    for u, v in zip(tape.gradient(a, [x] + plain.trainable_weights),
                    tape.gradient(b, [x] + layer.trainable_weights)):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4)
    back = layer.to_keras()
    assert type(back) is keras.layers.LayerNormalization
    np.testing.assert_array_equal(back(x), plain(x))


def _transformer(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 32))
    a = keras.layers.MultiHeadAttention(2, 16)(inp, inp)
    x = keras.layers.LayerNormalization(epsilon=1e-12)(keras.layers.Add()([inp, a]))
    f = keras.layers.Dense(64, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(keras.layers.Add()([x, keras.layers.Dense(32)(f)]))
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inp, out)


def test_strip_fuses_layernorm_and_densify_restores(tmp_path):
    model = _transformer()
    pruned = sparsekeras.sparsify(model)
    for layer in pruned._flatten_layers(include_self=False, recursive=True):
        for t in getattr(layer, "pruning_targets", lambda: [])():
            t.set_mask(np.random.default_rng(0).random(t.kernel.shape) < 0.3)
    x = np.random.default_rng(1).standard_normal((3, 12, 32)).astype(np.float32)
    want = pruned.predict_on_batch(x)
    stripped = sparsekeras.strip(pruned)
    kinds = [type(layer) for layer in stripped.layers]
    assert kinds.count(FusedLayerNormalization) == 2
    assert keras.layers.LayerNormalization not in kinds
    np.testing.assert_allclose(stripped.predict_on_batch(x), want, rtol=1e-5, atol=1e-5)
    kept = sparsekeras.strip(pruned, fuse_layernorm=False)
    assert [type(layer) for layer in kept.layers].count(keras.layers.LayerNormalization) == 2
    with pytest.raises(ValueError, match=r"`fuse_layernorm` must be True or False. "
                                         r"Received: fuse_layernorm='yes'"):
        sparsekeras.strip(pruned, fuse_layernorm="yes")
    dense = sparsekeras.densify(stripped)
    assert [type(layer) for layer in dense.layers].count(keras.layers.LayerNormalization) == 2
    np.testing.assert_allclose(dense.predict_on_batch(x), want, rtol=1e-5, atol=1e-5)
    # a fresh process loads the stripped model's .keras file after `import sparsekeras`
    path = tmp_path / "stripped.keras"
    stripped.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", want)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import sparsekeras
        m = keras.saving.load_model({str(path)!r})
        names = [type(l).__name__ for l in m.layers]
        assert names.count("FusedLayerNormalization") == 2, names
        got = m.predict_on_batch(np.load({str(tmp_path / 'x.npy')!r}))
        np.testing.assert_allclose(got, np.load({str(tmp_path / 'want.npy')!r}), rtol=1e-5,
                                   atol=1e-5)
        print("ok")
    """)
    # cwd: the temporary folder, so that the child imports the installed package, not the
    # source tree it would find first from the checkout's root
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
