"""The convolution family beyond Conv2D: SparseConv1D (and CompactConv1D), grouped
SparseConv2D, SparseSeparableConv2D/1D, SparseConv2DTranspose, SparseConv3D. Each against its
Keras twin (outputs and gradients with an all-ones, a random and an all-zero mask), the layer
helper, the registry's checks, `.keras` round trips in a fresh process, and a CNN with every
one of them sparsified, pruned to 0.9 in `fit`, stripped and reloaded."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import callbacks, schedules
from sparsekeras.layers import (CompactConv1D, CompactConv2D, CompactSeparableConv1D,
                                CompactSeparableConv2D, SparseConv1D, SparseConv2D,
                                SparseConv1DTranspose, SparseConv2DTranspose, SparseConv3D,
                                SparseConv3DTranspose, SparseDepthwiseConv1D,
                                SparseSeparableConv1D, SparseSeparableConv2D)
from sparsekeras.layers._registry import lookup

from layer_helper import _np, assert_config_has_init_parameters, run_layer_test

TESTS = os.path.dirname(os.path.abspath(__file__))


def _fresh(code, cwd, timeout=300):
    """Run code in a fresh Python process (spawned, not forked); returns its stdout."""
    prelude = f"import sys; sys.path.insert(0, {TESTS!r})\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# (name, Keras class, kwargs, input shape) of every new layer configuration checked against
# its Keras twin.
CASES = {
    "conv1d_causal": (keras.layers.Conv1D, dict(filters=5, kernel_size=3, padding="causal",
                                                dilation_rate=2), (2, 9, 4)),
    "conv1d_same_strided_grouped": (keras.layers.Conv1D, dict(filters=6, kernel_size=3,
                                                              padding="same", strides=2,
                                                              groups=2), (2, 9, 4)),
    "conv2d_grouped": (keras.layers.Conv2D, dict(filters=6, kernel_size=3, padding="same",
                                                 groups=2), (2, 7, 6, 4)),
    "conv2d_grouped_strided": (keras.layers.Conv2D, dict(filters=4, kernel_size=(3, 2),
                                                         strides=2, groups=4), (2, 7, 6, 4)),
    "separable2d": (keras.layers.SeparableConv2D, dict(filters=5, kernel_size=3, padding="same",
                                                       depth_multiplier=2), (2, 7, 6, 3)),
    "separable2d_strided": (keras.layers.SeparableConv2D, dict(filters=4, kernel_size=3,
                                                               strides=2), (2, 8, 7, 3)),
    "separable1d": (keras.layers.SeparableConv1D, dict(filters=5, kernel_size=3, padding="same",
                                                       depth_multiplier=2, dilation_rate=2),
                    (2, 9, 3)),
    "transpose2d": (keras.layers.Conv2DTranspose, dict(filters=3, kernel_size=3, strides=2,
                                                       padding="same"), (2, 5, 4, 4)),
    "conv3d": (keras.layers.Conv3D, dict(filters=3, kernel_size=2, padding="same"),
               (2, 4, 5, 3, 2)),
    "transpose1d": (keras.layers.Conv1DTranspose, dict(filters=3, kernel_size=3, strides=2,
                                                       padding="same"), (2, 5, 4)),
    "transpose3d": (keras.layers.Conv3DTranspose, dict(filters=2, kernel_size=2, strides=2),
                    (2, 3, 2, 3, 3)),
    "depthwise1d": (keras.layers.DepthwiseConv1D, dict(kernel_size=3, padding="same",
                                                       depth_multiplier=2), (2, 7, 3)),
}
SPARSE_OF = {keras.layers.Conv1D: SparseConv1D, keras.layers.Conv2D: SparseConv2D,
             keras.layers.SeparableConv2D: SparseSeparableConv2D,
             keras.layers.SeparableConv1D: SparseSeparableConv1D,
             keras.layers.Conv2DTranspose: SparseConv2DTranspose,
             keras.layers.Conv3D: SparseConv3D,
             keras.layers.Conv1DTranspose: SparseConv1DTranspose,
             keras.layers.Conv3DTranspose: SparseConv3DTranspose,
             keras.layers.DepthwiseConv1D: SparseDepthwiseConv1D}
WITH_SWITCH = (SparseConv1D, SparseConv2D, SparseSeparableConv2D, SparseSeparableConv1D)


def _targets(layer):
    """[(weight, mask)] of a sparse layer: its one kernel or its Prunable targets."""
    return [(t.kernel, t.mask) if hasattr(t, "layer") else (t._kernel_variable(), t.mask)
            for t in layer.pruning_targets()]


def _set_masks(layer, kind, seed=0):
    rng = np.random.default_rng(seed)
    for t in layer.pruning_targets():
        shape = tuple(t.mask.shape)
        mask = {"ones": np.ones(shape, bool), "zeros": np.zeros(shape, bool),
                "random": rng.random(shape) < 0.4}[kind]
        t.set_mask(mask)


# ---- each layer against its Keras twin ------------------------------------------------------

@pytest.mark.parametrize("mask_kind", ["ones", "random", "zeros"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras_twin(case, mask_kind):
    keras_cls, kwargs, shape = CASES[case]
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    dense = keras_cls(**kwargs, bias_initializer="random_normal")
    dense.build(shape)
    cls = SPARSE_OF[keras_cls]
    computes = ["dense", "sparse"] if cls in WITH_SWITCH else [None]  # "auto": see below
    for compute in computes:
        options = {} if compute is None else dict(compute=compute)
        sparse = cls.from_keras(dense, **options)
        _set_masks(sparse, mask_kind, seed=2)
        # The twin holds the pruned weights as zeros (what densify gives, made by hand here).
        twin = keras_cls.from_config(dense.get_config())
        twin.build(shape)
        masked = {w.path.split("/")[-1]: _np(w) * _np(m) for w, m in _targets(sparse)}
        for w in twin.weights:
            key = w.path.split("/")[-1]
            w.assign(masked.get(key, _np(dense.weights[[v.path.split("/")[-1] for v in
                                                        dense.weights].index(key)])))

        def forward_and_grads(layer, weights):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            return y, tape.gradient(loss, [x] + weights)

        sw = [w for w, _ in _targets(sparse)]
        keys = [w.path.split("/")[-1] for w in sw]
        tw = [next(w for w in twin.weights if w.path.split("/")[-1] == k) for k in keys]
        ys, gs = forward_and_grads(sparse, sw + [sparse.bias])
        yt, gt = forward_and_grads(twin, tw + [twin.bias])
        where = f"{case} compute={compute} mask={mask_kind}"
        np.testing.assert_allclose(_np(ys), _np(yt), rtol=1e-4, atol=1e-5, err_msg=where)
        np.testing.assert_allclose(_np(gs[0]), _np(gt[0]), rtol=1e-4, atol=1e-4, err_msg=where)
        np.testing.assert_allclose(_np(gs[-1]), _np(gt[-1]), rtol=1e-4, atol=1e-4, err_msg=where)
        for (w, m), g_s, g_t in zip(_targets(sparse), gs[1:-1], gt[1:-1]):
            keep = _np(m) != 0
            np.testing.assert_allclose(_np(tf.convert_to_tensor(g_s))[keep], _np(g_t)[keep],
                                       rtol=1e-4, atol=1e-4, err_msg=where)
        if mask_kind == "zeros":
            assert np.abs(_np(gs[0])).max() == 0.0  # no path from x to y is left
        if compute == "sparse":
            assert sparse.uses_sparse_kernels
        # to_keras is the twin
        np.testing.assert_allclose(_np(sparse.to_keras()(x)), _np(yt), rtol=1e-5, atol=1e-5)


def test_auto_switch_per_part_of_a_separable_convolution():
    layer = SparseSeparableConv2D(8, 3, depth_multiplier=2, switch_sparsity=0.6)
    layer.build((None, 6, 6, 4))
    assert layer.sparse_parts == {"depthwise": False, "pointwise": False}
    dw, pw = layer.pruning_targets()
    assert (dw.name, pw.name) == (f"{layer.name}/depthwise_kernel",
                                  f"{layer.name}/pointwise_kernel")
    pw.set_mask(np.random.default_rng(0).random(pw.mask.shape) < 0.2)
    assert layer.sparse_parts == {"depthwise": False, "pointwise": True}
    assert (_np(layer.pointwise_kernel)[_np(pw.mask) == 0] == 0).all()
    layer.set_weights([_np(w) for w in layer.weights[:3]] + [np.zeros(dw.mask.shape),
                                                             np.ones(pw.mask.shape)])
    assert layer.sparse_parts == {"depthwise": True, "pointwise": False}


def test_sparse_path_under_tf_function():
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 9, 4)).astype(np.float32))
    layer = SparseConv1D(4, 3, padding="causal", compute="auto", switch_sparsity=0.5)
    layer.build(x.shape)
    layer.set_mask(np.random.default_rng(1).random(layer.mask.shape) < 0.3)
    assert layer.uses_sparse_kernels
    eager = _np(layer(x))
    np.testing.assert_allclose(_np(tf.function(layer)(x)), eager, rtol=1e-6, atol=1e-6)


# ---- the layer-test helper ----------------------------------------------------------------

def _random_masks(layer, x):
    _set_masks(layer, "random", seed=3)


@pytest.mark.parametrize("cls, kwargs, in_shape, out_shape, n_train, n_fixed", [
    (SparseConv1D, dict(filters=4, kernel_size=3, padding="causal", compute="sparse"),
     (2, 7, 3), (2, 7, 4), 2, 1),
    (SparseConv1D, dict(filters=4, kernel_size=3, strides=2, groups=2, compute="dense"),
     (2, 9, 4), (2, 4, 4), 2, 1),
    (SparseConv2D, dict(filters=6, kernel_size=3, groups=3, padding="same", compute="sparse"),
     (2, 5, 5, 3), (2, 5, 5, 6), 2, 1),
    (SparseSeparableConv2D, dict(filters=4, kernel_size=3, padding="same", compute="sparse"),
     (2, 5, 5, 3), (2, 5, 5, 4), 3, 2),
    (SparseSeparableConv2D, dict(filters=4, kernel_size=3, switch_sparsity=0.5),
     (2, 5, 5, 3), (2, 3, 3, 4), 3, 2),
    (SparseSeparableConv1D, dict(filters=4, kernel_size=3, depth_multiplier=2, compute="sparse"),
     (2, 7, 3), (2, 5, 4), 3, 2),
    (SparseConv2DTranspose, dict(filters=3, kernel_size=3, strides=2, padding="same"),
     (2, 4, 4, 2), (2, 8, 8, 3), 2, 1),
    (SparseConv3D, dict(filters=3, kernel_size=2), (2, 3, 4, 3, 2), (2, 2, 3, 2, 3), 2, 1),
    (SparseConv1DTranspose, dict(filters=3, kernel_size=3, strides=2), (2, 4, 2), (2, 9, 3),
     2, 1),
    (SparseConv3DTranspose, dict(filters=2, kernel_size=2, strides=2, padding="same"),
     (2, 2, 3, 2, 3), (2, 4, 6, 4, 2), 2, 1),
    (SparseDepthwiseConv1D, dict(kernel_size=3, depth_multiplier=2), (2, 7, 3), (2, 5, 6),
     2, 1),
])
def test_layer_helper(cls, kwargs, in_shape, out_shape, n_train, n_fixed):
    run_layer_test(cls, kwargs, in_shape, out_shape, expected_num_trainable_weights=n_train,
                   expected_num_non_trainable_weights=n_fixed, build_fn=_random_masks)


def test_compact_conv1d():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 4, 5)).astype(np.float32)
    kernel[np.abs(kernel) < 1.0] = 0
    x = rng.standard_normal((2, 8, 4)).astype(np.float32)
    for padding in ("causal", "same", "valid"):
        layer = CompactConv1D.from_kernel(kernel, np.arange(5, dtype=np.float32),
                                          padding=padding, dilation_rate=2)
        assert layer.nnz == int((kernel != 0).sum())
        twin = keras.layers.Conv1D(5, 3, padding=padding, dilation_rate=2)
        twin.build(x.shape)
        twin.set_weights([kernel, np.arange(5, dtype=np.float32)])
        np.testing.assert_allclose(_np(layer(x)), _np(twin(x)), rtol=1e-5, atol=1e-5)
        assert tuple(layer.compute_output_shape(x.shape)) == tuple(twin(x).shape)
        np.testing.assert_array_equal(layer.to_dense_kernel(), kernel)
        np.testing.assert_allclose(_np(layer.to_keras()(x)), _np(twin(x)), rtol=1e-5, atol=1e-5)
        clone = CompactConv1D.from_config(layer.get_config())
        clone.build(x.shape)
        clone.set_weights(layer.get_weights())
        np.testing.assert_allclose(_np(clone(x)), _np(layer(x)))
        assert clone.get_config() == layer.get_config()
        assert_config_has_init_parameters(layer)
    with pytest.raises(ValueError, match="padding"):
        CompactConv1D(4, 3, nnz=2, padding="full")


def test_grouped_conv2d_stores_the_block_diagonal_kernel():
    layer = SparseConv2D(6, 3, groups=3, padding="same", bias_initializer="random_normal")
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 6)).astype(np.float32)
    y = layer(x)
    layer.set_mask(np.random.default_rng(1).random(layer.mask.shape) < 0.5)
    y = _np(layer(x))
    stored = layer.to_stored()
    assert isinstance(stored, CompactConv2D)
    assert stored.nnz == int(_np(layer.mask).sum())
    np.testing.assert_allclose(_np(stored(x)), y, rtol=1e-5, atol=1e-5)
    full = stored.to_dense_kernel()                       # (3, 3, 6, 6), block diagonal
    for g in range(3):
        inside = full[:, :, 2 * g:2 * g + 2, 2 * g:2 * g + 2]
        np.testing.assert_array_equal(inside, _np(layer.kernel)[:, :, :, 2 * g:2 * g + 2])
    assert np.count_nonzero(full) == np.count_nonzero(_np(layer.kernel))


# ---- arguments and the registry's checks --------------------------------------------------

@pytest.mark.parametrize("keras_cls", list(SPARSE_OF))
def test_channels_first_is_refused_with_a_reason(keras_cls):
    args = () if keras_cls is keras.layers.DepthwiseConv2D else (4, 3)
    layer = keras_cls(*args, data_format="channels_first")
    reason = lookup(layer).check(layer)
    assert reason is not None and "channels_last" in reason
    with pytest.raises(ValueError, match="channels_last"):
        SPARSE_OF[keras_cls](*args, data_format="channels_first")


@pytest.mark.parametrize("cls", [SparseConv1D, SparseSeparableConv2D, SparseSeparableConv1D])
@pytest.mark.parametrize("kwargs, match", [(dict(switch_sparsity=1.5), "switch_sparsity"),
                                           (dict(compute="fast"), "compute")])
def test_invalid_sparse_options(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(4, 3, **kwargs)


@pytest.mark.parametrize("cls", [SparseConv1D, SparseConv3D])
def test_lora_is_refused(cls):
    with pytest.raises(ValueError, match="lora_rank"):
        cls(4, 3, lora_rank=2)


def test_registry_maps_each_keras_class():
    for keras_cls, sparse_cls in SPARSE_OF.items():
        args = (4, 3)
        assert lookup(keras_cls(*args)).sparse_class is sparse_cls
        assert lookup(keras_cls(*args)).check(keras_cls(*args)) is None
    grouped = keras.layers.Conv2D(4, 3, groups=2)
    assert lookup(grouped).check(grouped) is None


def test_sparsify_passes_compute_to_separable_layers():
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.SeparableConv2D(4, 3)])
    sparse = sparsekeras.sparsify(model, compute="sparse", switch_sparsity=0.3)
    layer = sparse.layers[0]
    assert isinstance(layer, SparseSeparableConv2D)
    assert layer.compute == "sparse" and layer.switch_sparsity == 0.3


# ---- saving -------------------------------------------------------------------------------

def test_keras_round_trip_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    seq = keras.Input((10, 3))
    img = keras.Input((6, 6, 4))
    vol = keras.Input((4, 4, 4, 2))
    a = SparseConv1D(4, 3, padding="causal", compute="sparse", name="c1d")(seq)
    a = SparseSeparableConv1D(4, 3, padding="same", name="sep1d")(a)
    b = SparseConv2D(4, 3, groups=2, padding="same", switch_sparsity=0.5, name="grouped")(img)
    b = SparseSeparableConv2D(6, 3, padding="same", depth_multiplier=2, switch_sparsity=0.5,
                              name="sep2d")(b)
    b = SparseConv2DTranspose(3, 3, strides=2, padding="same", name="up")(b)
    a = SparseDepthwiseConv1D(3, padding="same", name="dw1d")(a)
    a = SparseConv1DTranspose(3, 3, strides=2, name="up1d")(a)
    c = SparseConv3D(2, 2, padding="same", name="c3d")(vol)
    c = SparseConv3DTranspose(2, 2, strides=2, name="up3d")(c)
    model = keras.Model([seq, img, vol], [a, b, c])
    for i, layer in enumerate(model.layers):
        if hasattr(layer, "pruning_targets"):
            _set_masks(layer, "random", seed=i)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2,) + tuple(t.shape[1:])).astype(np.float32)
          for t in model.inputs]
    assert model.get_layer("grouped").uses_sparse_kernels
    assert model.get_layer("sep2d").sparse_parts == {"depthwise": True, "pointwise": True}
    np.savez(tmp_path / "io.npz", *xs, *[_np(y) for y in model(xs)])
    model.save(tmp_path / "m.keras")
    _fresh("""
        import numpy as np, keras, sparsekeras
        d = np.load("io.npz")
        xs, want = [d["arr_%d" % i] for i in range(3)], [d["arr_%d" % i] for i in range(3, 6)]
        m = keras.models.load_model("m.keras")
        for got, w in zip(m(xs), want):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(got), w, rtol=1e-5, atol=1e-5)
        assert type(m.get_layer("sep2d")).__name__ == "SparseSeparableConv2D"
        assert m.get_layer("sep2d").sparse_parts == {"depthwise": True, "pointwise": True}
        assert m.get_layer("grouped").uses_sparse_kernels
        for name in ("c1d", "sep1d", "grouped", "sep2d", "up", "c3d", "dw1d", "up1d", "up3d"):
            layer = m.get_layer(name)
            for t in layer.pruning_targets():
                kernel = keras.ops.convert_to_numpy(t.kernel)
                mask = keras.ops.convert_to_numpy(t.mask)
                assert 0 < mask.mean() < 1 and (kernel[mask == 0] == 0).all(), name
        print("ok")
    """, tmp_path)


# ---- the CNN ----------------------------------------------------------------------

def _cnn():
    """Image branch: grouped Conv2D, SeparableConv2D, BatchNormalization, a residual Add,
    Conv2DTranspose; sequence branch: Conv1D (causal) and SeparableConv1D; a Dense head."""
    img = keras.Input((8, 8, 4), name="img")
    seq = keras.Input((12, 3), name="seq")
    h = keras.layers.Conv2D(8, 3, padding="same", groups=2, name="grouped")(img)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.Activation("relu")(h)
    r = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep2d")(h)
    r = keras.layers.BatchNormalization(name="bn2")(r)
    h = keras.layers.Add(name="residual")([h, r])
    h = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    s = keras.layers.Conv1D(8, 3, padding="causal", activation="relu", name="c1d")(seq)
    s = keras.layers.SeparableConv1D(8, 3, padding="same", name="sep1d")(s)
    s = keras.layers.GlobalAveragePooling1D()(s)
    out = keras.layers.Dense(10, name="head")(keras.layers.Concatenate()([h, s]))
    return keras.Model([img, seq], out)


def test_cnn_sparsify_prune_strip_reload(tmp_path):
    keras.utils.set_random_seed(3)
    dense = _cnn()
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((32, 8, 8, 4)).astype(np.float32),
         rng.standard_normal((32, 12, 3)).astype(np.float32)]
    y = rng.integers(0, 10, 32)
    model, report = sparsekeras.sparsify(dense, return_report=True)
    converted = {r["path"]: r["to"] for r in report.converted()}
    assert converted == {"grouped": "SparseConv2D", "sep2d": "SparseSeparableConv2D",
                         "up": "SparseConv2DTranspose", "c1d": "SparseConv1D",
                         "sep1d": "SparseSeparableConv1D", "head": "SparseDense"}
    assert not report.kept() and report.prunable_fraction == 1.0
    np.testing.assert_allclose(_np(model(x)), _np(dense(x)), rtol=1e-5, atol=1e-5)

    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # compact=False: compaction (SparseDense's) would only retrace the step here.
    cb = callbacks.GradualPruning(schedules.PolynomialDecay(0.0, 0.9, 0, 6, frequency=2),
                                  compact=False)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert np.isfinite(hist.history["loss"]).all()
    targets = callbacks.prunable_targets(model)
    assert len(targets) == 8   # grouped, 2 separable x 2, up, c1d, head
    for t in targets:
        kernel = _np(t.kernel)
        assert np.mean(kernel == 0) >= 0.89, (t.name, np.mean(kernel == 0))
    assert hist.history["sparsity"][-1] >= 0.89

    want = _np(model(x))
    small = sparsekeras.strip(model)
    assert type(small.get_layer("grouped")) is CompactConv2D
    assert type(small.get_layer("c1d")) is CompactConv1D
    assert type(small.get_layer("sep2d")) is CompactSeparableConv2D
    assert type(small.get_layer("sep1d")) is CompactSeparableConv1D
    # No stored form: the Keras twin holding zeros.
    assert type(small.get_layer("up")) is keras.layers.Conv2DTranspose
    np.testing.assert_allclose(_np(small(x)), want, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    np.savez(tmp_path / "io.npz", img=x[0], seq=x[1], want=want)
    out = _fresh("""
        import numpy as np, keras, sparsekeras
        d = np.load("io.npz")
        m = keras.models.load_model("small.keras")
        got = keras.ops.convert_to_numpy(m([d["img"], d["seq"]]))
        np.testing.assert_allclose(got, d["want"], rtol=0, atol=1e-5)
        sep = m.get_layer("sep2d")
        dk, pk = sep.to_dense_kernel()
        print(type(m.get_layer("c1d")).__name__, type(sep).__name__, np.mean(pk == 0))
    """, tmp_path)
    c1d, sep, zeros = out.split()
    assert (c1d, sep) == ("CompactConv1D", "CompactSeparableConv2D") and float(zeros) >= 0.89
    # densify: plain Keras layers with the same outputs.
    plain = sparsekeras.densify(small)
    assert type(plain.get_layer("sep2d")) is keras.layers.SeparableConv2D
    assert type(plain.get_layer("c1d")) is keras.layers.Conv1D
    np.testing.assert_allclose(_np(plain(x)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, shape", [(SparseConv2D, (None, 6, 6, 4)),
                                        (SparseConv1D, (None, 9, 4))])
def test_grouped_layers_compute_sparse_from_the_start(cls, shape):
    """Keras' grouped convolution on CPU is slower than the sparse kernels at any sparsity."""
    grouped, plain = cls(4, 3, groups=2), cls(4, 3)
    grouped.build(shape)
    plain.build(shape)
    assert grouped.switch_sparsity == 0.0 and grouped.uses_sparse_kernels
    assert grouped.get_config()["switch_sparsity"] == 0.0
    assert plain.switch_sparsity == 0.75 and not plain.uses_sparse_kernels


def test_channel_granularity_prunes_whole_filters():
    """The separable layer's depthwise kernel is scored per depthwise filter and the
    transposed convolution's kernel per output filter (its axes swapped)."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 4))
    h = SparseSeparableConv2D(8, 3, padding="same", name="sep")(inp)
    h = SparseConv2DTranspose(6, 3, strides=2, padding="same", name="up")(h)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h))
    cb = callbacks.GradualPruning(schedules.ConstantSparsity(0.5, 0), granularity="channel")
    cb.set_model(model)
    cb.prune(0.5)
    dw, pw = model.get_layer("sep").pruning_targets()
    dw_mask = _np(dw.mask).reshape(9, 4)                         # taps x depthwise filters
    assert np.all(dw_mask.all(axis=0) | ~dw_mask.any(axis=0))
    assert 0 < dw_mask.all(axis=0).sum() < 4
    up = _np(model.get_layer("up").pruning_targets()[0].mask)   # (3, 3, filters=6, in=8)
    per_filter = up.transpose(2, 0, 1, 3).reshape(6, -1)
    assert np.all(per_filter.all(axis=1) | ~per_filter.any(axis=1))
    assert per_filter.all(axis=1).sum() == 3


@pytest.fixture
def dtype_policy():
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


def test_mixed_precision_trains(dtype_policy):
    keras.config.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    seq = keras.Input((10, 4))
    a = SparseConv1D(6, 3, padding="causal", compute="sparse")(seq)
    a = SparseSeparableConv1D(6, 3, padding="same", compute="sparse")(a)
    img = keras.Input((6, 6, 4))
    b = SparseConv2D(4, 3, groups=2, padding="same")(img)
    b = SparseSeparableConv2D(4, 3, padding="same", compute="sparse")(b)
    b = SparseConv2DTranspose(4, 3, strides=2, padding="same")(b)
    out = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D()(a),
                                      keras.layers.GlobalAveragePooling2D()(b)])
    model = keras.Model([seq, img], keras.layers.Dense(2, dtype="float32")(out))
    for layer in model.layers:
        if hasattr(layer, "pruning_targets"):
            _set_masks(layer, "random", seed=5)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x = [rng.standard_normal((8, 10, 4)).astype(np.float32),
         rng.standard_normal((8, 6, 6, 4)).astype(np.float32)]
    hist = model.fit(x, rng.standard_normal((8, 2)).astype(np.float32), epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    for layer in model.layers:
        if hasattr(layer, "pruning_targets") and layer.weights:
            for w, m in _targets(layer):
                assert (_np(w)[_np(m) == 0] == 0).all(), layer.name


@pytest.mark.parametrize("cls, keras_cls, kwargs, shape", [
    (CompactSeparableConv2D, keras.layers.SeparableConv2D,
     dict(padding="same", depth_multiplier=2), (2, 7, 6, 3)),
    (CompactSeparableConv2D, keras.layers.SeparableConv2D, dict(strides=2), (2, 7, 6, 3)),
    (CompactSeparableConv1D, keras.layers.SeparableConv1D,
     dict(padding="same", dilation_rate=2, activation="relu"), (2, 9, 3)),
])
def test_compact_separable(cls, keras_cls, kwargs, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    twin = keras_cls(4, 3, bias_initializer="random_normal", **kwargs)
    twin.build(shape)
    dk, pk, bias = (_np(w) for w in twin.weights)
    dk, pk = dk * (rng.random(dk.shape) < 0.5), pk * (rng.random(pk.shape) < 0.3)
    twin.set_weights([dk, pk, bias])
    layer = cls.from_kernels(dk, pk, bias,  # depth_multiplier comes from the kernel
                             **{k: v for k, v in kwargs.items() if k != "depth_multiplier"})
    assert (layer.depthwise_nnz, layer.pointwise_nnz) == (np.count_nonzero(dk),
                                                          np.count_nonzero(pk))
    np.testing.assert_allclose(_np(layer(x)), _np(twin(x)), rtol=1e-5, atol=1e-5)
    assert tuple(layer.compute_output_shape(shape)) == tuple(twin(x).shape)
    got_dk, got_pk = layer.to_dense_kernel()
    np.testing.assert_array_equal(got_dk, dk)
    np.testing.assert_array_equal(got_pk, pk)
    np.testing.assert_allclose(_np(layer.to_keras()(x)), _np(twin(x)), rtol=1e-5, atol=1e-5)
    clone = cls.from_config(layer.get_config())
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_np(clone(x)), _np(layer(x)), rtol=1e-6, atol=1e-6)
    assert clone.get_config() == layer.get_config()
    assert_config_has_init_parameters(layer)
    # Trainable on its values: one gradient step changes them.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None and np.abs(_np(tf.convert_to_tensor(g))).max() > 0 for g in grads)
