"""SparseConv2D, SparseDepthwiseConv2D and CompactConv2D: layer helper, dense/sparse agreement,
gradients, masks, pruning granularities, sparsify/strip, saving, mixed precision."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import callbacks, schedules
from sparsekeras.layers import CompactConv2D, SparseConv2D, SparseDepthwiseConv2D

from layer_helper import _np, assert_config_has_init_parameters, run_layer_test


@pytest.fixture
def dtype_policy():
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


def _random_mask(shape, keep, seed=0):
    return np.random.default_rng(seed).random(shape) < keep


# ---- the layer-test helper ----------------------------------------------------------------

@pytest.mark.parametrize("compute", ["auto", "dense", "sparse"])
@pytest.mark.parametrize("padding, strides, out_hw", [("same", 1, 7), ("valid", 2, 3)])
def test_sparse_conv2d_layer(compute, padding, strides, out_hw):
    run_layer_test(SparseConv2D, dict(filters=5, kernel_size=3, padding=padding, strides=strides,
                                      activation="relu", compute=compute, switch_sparsity=0.5),
                   (2, 7, 7, 3), (2, out_hw, out_hw, 5), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=1)


def test_sparse_conv2d_layer_masked():
    def set_mask(layer, x):
        layer.set_mask(_random_mask(layer.mask.shape, 0.3, seed=1))
        assert layer.uses_sparse_kernels

    run_layer_test(SparseConv2D, dict(filters=4, kernel_size=(3, 2), padding="same",
                                      switch_sparsity=0.5),
                   (2, 6, 5, 3), (2, 6, 5, 4), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=1, build_fn=set_mask)


@pytest.mark.parametrize("compute", ["dense", "sparse"])
def test_sparse_depthwise_layer(compute):
    def set_mask(layer, x):
        layer.set_mask(_random_mask(layer.mask.shape, 0.5, seed=2))

    run_layer_test(SparseDepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2, padding="same",
                                               compute=compute),
                   (2, 6, 6, 3), (2, 6, 6, 6), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=1, build_fn=set_mask)


def test_compact_conv2d_layer():
    kernel = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32)
    kernel[np.abs(kernel) < 1.0] = 0
    layer = CompactConv2D.from_kernel(kernel, np.zeros(4, np.float32), padding="same")
    assert layer.nnz == int((kernel != 0).sum())
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(layer(x)), tf.nn.conv2d(x, kernel, 1, "SAME").numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.to_dense_kernel(), kernel)
    clone = CompactConv2D.from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_np(clone(x)), _np(layer(x)))


@pytest.mark.parametrize("cls", [SparseConv2D, SparseDepthwiseConv2D, CompactConv2D])
def test_config_has_every_init_parameter(cls):
    if cls is SparseConv2D:
        layer = cls(4, 3)
    elif cls is SparseDepthwiseConv2D:
        layer = cls(3)
    else:
        layer = cls(4, 3, nnz=5)
    assert_config_has_init_parameters(layer)


@pytest.mark.parametrize("kwargs, match", [
    (dict(groups=3), "divisible by the number of groups"),  # groups > 1 converts now
    (dict(data_format="channels_first"), "channels_last"),
    (dict(switch_sparsity=1.5), "switch_sparsity"),
    (dict(compute="fast"), "compute"),
    (dict(lora_rank=2), "lora_rank"),
])
def test_sparse_conv2d_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseConv2D(4, 3, **kwargs)


# ---- numerics -----------------------------------------------------------------------------

@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "function"])
@pytest.mark.parametrize("cfg", [dict(kernel_size=3, padding="same"),
                                 dict(kernel_size=3, strides=2, padding="valid"),
                                 dict(kernel_size=(1, 1)),
                                 dict(kernel_size=3, dilation_rate=2, padding="same")])
def test_sparse_and_dense_conv_agree(cfg, run_eagerly):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
    layers = {}
    for compute in ("sparse", "dense"):
        layer = SparseConv2D(6, compute=compute, bias_initializer="random_normal", **cfg)
        layer.build(x.shape)
        layers[compute] = layer
    layers["dense"].set_weights(layers["sparse"].get_weights())
    mask = _random_mask(layers["dense"].mask.shape, 0.25, seed=4)
    for layer in layers.values():
        layer.set_mask(mask)

    def forward_and_grads(layer):
        def fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            return (y,) + tuple(tape.gradient(loss, [x, layer.kernel, layer.bias]))
        return fn(x) if run_eagerly else tf.function(fn)(x)

    ys, dxs, dks, dbs = forward_and_grads(layers["sparse"])
    yd, dxd, dkd, dbd = forward_and_grads(layers["dense"])
    np.testing.assert_allclose(_np(ys), _np(yd), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(dxs), _np(dxd), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_np(dbs), _np(dbd), rtol=1e-4, atol=1e-4)
    dks = _np(tf.convert_to_tensor(dks))
    np.testing.assert_allclose(dks[mask], _np(dkd)[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strides, padding", [(1, "same"), (2, "valid")])
def test_sparse_and_dense_depthwise_agree(strides, padding):
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((2, 8, 7, 3)).astype(np.float32))
    sparse = SparseDepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=2,
                                   compute="sparse", bias_initializer="random_normal")
    dense = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=2)
    sparse.build(x.shape)
    dense.build(x.shape)
    mask = _random_mask(sparse.mask.shape, 0.4, seed=6)
    sparse.set_mask(mask)
    dense.set_weights([_np(sparse.kernel), _np(sparse.bias)])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ys, yd = sparse(x), dense(x)
        ls, ld = tf.reduce_sum(ys ** 2), tf.reduce_sum(yd ** 2)
    np.testing.assert_allclose(_np(ys), _np(yd), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(tape.gradient(ls, x)), _np(tape.gradient(ld, x)),
                               rtol=1e-4, atol=1e-4)
    dks = _np(tf.convert_to_tensor(tape.gradient(ls, sparse.kernel)))
    np.testing.assert_allclose(dks[mask], _np(tape.gradient(ld, dense.kernel))[mask],
                               rtol=1e-4, atol=1e-4)


def test_auto_switch_follows_mask():
    layer = SparseConv2D(4, 3, padding="same", switch_sparsity=0.6)
    layer.build((None, 6, 6, 2))
    assert not layer.uses_sparse_kernels
    layer.set_mask(_random_mask(layer.mask.shape, 0.3, seed=7))
    assert layer.sparsity > 0.6 and layer.uses_sparse_kernels
    assert (_np(layer.kernel)[~_np(layer.mask).astype(bool)] == 0).all()
    with pytest.raises(ValueError, match="mask must have the kernel's shape"):
        layer.set_mask(np.ones((3, 3, 2, 5)))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_conv_mixed_precision_trains(policy, dtype_policy):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              SparseConv2D(6, 3, padding="same", activation="relu", compute="sparse"),
                              SparseDepthwiseConv2D(3, padding="same", compute="sparse"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, dtype="float32")])
    for layer in model.layers[:2]:
        layer.set_mask(_random_mask(layer.mask.shape, 0.4, seed=1))
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    hist = model.fit(rng.standard_normal((16, 8, 8, 3)).astype(np.float32),
                     rng.standard_normal((16, 2)).astype(np.float32), epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    for layer in model.layers[:2]:
        assert (_np(layer.kernel)[_np(layer.mask) == 0] == 0).all()


# ---- pruning, sparsify, strip, saving -----------------------------------------------------

def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
        keras.layers.Conv2D(8, 1, name="pw"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, name="out")])


@pytest.mark.parametrize("granularity, kwargs", [("unstructured", {}),
                                                 ("block", dict(block_shape=(2, 2))),
                                                 ("n:m", dict(n_m=(2, 4))),
                                                 ("channel", {})])
def test_gradual_pruning_of_conv_layers(granularity, kwargs):
    keras.utils.set_random_seed(1)
    model = sparsekeras.sparsify(_cnn(), layer_names=["c1", "dw", "pw"])
    assert isinstance(model.get_layer("c1"), SparseConv2D)
    assert isinstance(model.get_layer("dw"), SparseDepthwiseConv2D)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    target = 0.75
    cb = callbacks.GradualPruning(schedules.PolynomialDecay(0.0, target, 0, 8, frequency=2),
                                  granularity=granularity, **kwargs)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    if granularity == "n:m":
        # n:m is a fixed pattern: 2 of every 4 input channels of pw; c1 (one input channel)
        # and the depthwise kernel (scored with one input channel) are partial groups, kept.
        assert model.get_layer("pw").sparsity == pytest.approx(0.5)
    else:
        assert hist.history["sparsity"][-1] == pytest.approx(target, abs=0.08)
    for name in ("c1", "pw"):
        layer = model.get_layer(name)
        mask = _np(layer.mask).astype(bool)
        assert (_np(layer.kernel)[~mask] == 0).all()
        if granularity == "channel":
            per_filter = mask.reshape(-1, mask.shape[-1])
            assert np.all(per_filter.all(axis=0) | ~per_filter.any(axis=0))
    if granularity == "n:m":
        m = _np(model.get_layer("pw").mask).reshape(8, 8)       # (in, out)
        assert (m.reshape(2, 4, 8).sum(axis=1) == 2).all()
    if granularity == "channel":
        dw = _np(model.get_layer("dw").mask).reshape(9, -1)       # taps x filters
        assert np.all(dw.all(axis=0) | ~dw.any(axis=0))


def test_sparsify_strip_and_save(tmp_path):
    keras.utils.set_random_seed(2)
    dense = _cnn()
    model = sparsekeras.sparsify(dense)
    x = np.random.default_rng(3).standard_normal((4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(_np(model(x)), _np(dense(x)), rtol=1e-5, atol=1e-5)
    for name in ("c1", "dw", "pw"):
        layer = model.get_layer(name)
        layer.set_mask(_random_mask(layer.mask.shape, 0.2, seed=len(name)))
    y = _np(model(x))
    # .keras at a pruned stage, no custom_objects.
    model.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(_np(loaded(x)), y, rtol=1e-5, atol=1e-5)
    assert loaded.get_layer("c1").sparsity == pytest.approx(model.get_layer("c1").sparsity)
    # strip: compact conv layers reproduce the outputs and the file shrinks.
    small = sparsekeras.strip(model)
    assert isinstance(small.get_layer("c1"), CompactConv2D)
    assert isinstance(small.get_layer("dw"), CompactConv2D)
    np.testing.assert_allclose(_np(small(x)), y, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    loaded_small = keras.models.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(_np(loaded_small(x)), y, rtol=1e-5, atol=1e-5)
    dense.save(tmp_path / "dense.keras")
    assert os.path.getsize(tmp_path / "small.keras") < os.path.getsize(tmp_path / "pruned.keras")


def test_depthwise_structure_matches_dense_depthwise():
    from sparsekeras.layers.conv import depthwise_structure
    rng = np.random.default_rng(8)
    k = rng.standard_normal((3, 3, 4, 2)) * _random_mask((3, 3, 4, 2), 0.5)
    s = depthwise_structure(k != 0)
    x = rng.standard_normal((1, 6, 6, 4))
    y = sparsekeras.ops.csr_conv2d(x, s["indptr"], s["indices"], k.reshape(-1)[s["positions"]],
                                   (3, 3, 4, 8), padding="same")
    want = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")
    np.testing.assert_allclose(_np(y), _np(want), rtol=1e-10, atol=1e-10)
