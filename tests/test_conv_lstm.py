"""SparseConvLSTM1D/2D/3D: Keras' convolutional LSTMs with prunable kernels (masked dense
compute). Each against its Keras twin holding the pruned weights as zeros (outputs and
gradients), the layer helper, the registry's checks, and a model sparsified, pruned in `fit`,
stripped to the Keras layer and reloaded from a `.keras` file in a fresh process."""
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
from sparsekeras.layers import SparseConvLSTM1D, SparseConvLSTM2D, SparseConvLSTM3D
from sparsekeras.layers._registry import lookup

from layer_helper import _np, run_layer_test

TESTS = os.path.dirname(os.path.abspath(__file__))

# Keras class, sparse class, kwargs, input shape (batch, time, *spatial, channels)
CASES = {
    "1d": (keras.layers.ConvLSTM1D, SparseConvLSTM1D, dict(filters=3, kernel_size=3,
                                                           padding="same"), (2, 4, 7, 2)),
    "2d_sequences": (keras.layers.ConvLSTM2D, SparseConvLSTM2D,
                     dict(filters=3, kernel_size=2, return_sequences=True), (2, 3, 5, 4, 2)),
    "3d": (keras.layers.ConvLSTM3D, SparseConvLSTM3D, dict(filters=2, kernel_size=2,
                                                           padding="same"), (2, 3, 3, 4, 3, 2)),
}


@pytest.mark.parametrize("mask_kind", ["random", "zeros"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras_twin(case, mask_kind):
    keras_cls, sparse_cls, kwargs, shape = CASES[case]
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    dense = keras_cls(**kwargs, bias_initializer="random_normal")
    dense(x)
    sparse = sparse_cls.from_keras(dense)
    masks = []
    for t in sparse.pruning_targets():
        shape_m = tuple(t.mask.shape)
        m = rng.random(shape_m) < 0.4 if mask_kind == "random" else np.zeros(shape_m, bool)
        t.set_mask(m)
        masks.append(m)
    twin = keras_cls.from_config(dense.get_config())
    twin(x)
    twin.set_weights(dense.get_weights())
    twin.cell.kernel.assign(_np(dense.cell.kernel) * masks[0])
    twin.cell.recurrent_kernel.assign(_np(dense.cell.recurrent_kernel) * masks[1])

    def forward_and_grads(layer):
        weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        return y, tape.gradient(loss, [x] + weights)

    ys, gs = forward_and_grads(sparse)
    yt, gt = forward_and_grads(twin)
    np.testing.assert_allclose(_np(ys), _np(yt), rtol=1e-5, atol=1e-6)
    for a, b, m in zip(gs, gt, [None] + masks + [None]):
        a, b = _np(a), _np(b)
        if m is not None:  # the pruned entries' gradient does not matter: they stay zero
            a, b = a * m, b * m
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert type(sparse.to_keras()) is keras_cls
    np.testing.assert_allclose(_np(sparse.to_keras()(x)), _np(yt), rtol=1e-5, atol=1e-6)


def test_layer_helper():
    def random_masks(layer, x):
        rng = np.random.default_rng(0)
        for t in layer.pruning_targets():
            t.set_mask(rng.random(tuple(t.mask.shape)) < 0.5)

    run_layer_test(SparseConvLSTM2D, dict(filters=3, kernel_size=3, padding="same"),
                   (2, 3, 5, 5, 2), (2, 5, 5, 3), expected_num_trainable_weights=3,
                   expected_num_non_trainable_weights=2, build_fn=random_masks)


@pytest.mark.parametrize("case", list(CASES))
def test_registry_and_channels_first(case):
    keras_cls, sparse_cls, kwargs, _ = CASES[case]
    layer = keras_cls(**kwargs)
    assert lookup(layer).sparse_class is sparse_cls and lookup(layer).check(layer) is None
    first = keras_cls(**kwargs, data_format="channels_first")
    assert "channels_last" in lookup(first).check(first)
    with pytest.raises(ValueError, match="channels_last.*data_format='channels_first'"):
        sparse_cls(**kwargs, data_format="channels_first")


def test_sparsify_prune_strip_reload_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x, y = rng.random((32, 3, 6, 6, 2), dtype=np.float32), rng.integers(0, 3, 32)
    model = keras.Sequential([keras.Input((3, 6, 6, 2)),
                              keras.layers.ConvLSTM2D(6, 3, padding="same", name="clstm"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, name="out")])
    sparse, report = sparsekeras.sparsify(model, return_report=True)
    assert not report.kept() and type(sparse.get_layer("clstm")) is SparseConvLSTM2D
    sparse.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sparse.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callbacks.GradualPruning(
        schedules.PolynomialDecay(0.0, 0.8, 0, 4, frequency=1))])
    layer = sparse.get_layer("clstm")
    for t in layer.pruning_targets():
        kernel, mask = _np(t.kernel), _np(t.mask)
        assert abs(1 - mask.mean() - 0.8) < 0.02 and (kernel[mask == 0] == 0).all()
    want = _np(sparse(x[:4]))
    stripped = sparsekeras.strip(sparse)
    assert type(stripped.get_layer("clstm")) is keras.layers.ConvLSTM2D
    np.testing.assert_allclose(_np(stripped(x[:4])), want, rtol=1e-5, atol=1e-6)
    sparse.save(tmp_path / "sparse.keras")
    stripped.save(tmp_path / "stripped.keras")
    np.savez(tmp_path / "io.npz", x=x[:4], want=want)
    code = """
        import numpy as np, keras, sparsekeras
        d = np.load("io.npz")
        m = keras.models.load_model("stripped.keras")   # its Dense head is a CompactDense
        assert type(m.get_layer("clstm")) is keras.layers.ConvLSTM2D
        np.testing.assert_allclose(keras.ops.convert_to_numpy(m(d["x"])), d["want"],
                                   rtol=1e-5, atol=1e-6)
        s = keras.models.load_model("sparse.keras")
        assert type(s.get_layer("clstm")).__name__ == "SparseConvLSTM2D"
        np.testing.assert_allclose(keras.ops.convert_to_numpy(s(d["x"])), d["want"],
                                   rtol=1e-5, atol=1e-6)
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
