"""Compaction: a pruned SparseDense trains its nonzero values only (`SparseDense.compact`,
`sparsekeras.compact`, `GradualPruning(compact=True)`), with the optimizer's state carried over.
"""
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.callbacks import GradualPruning
from sparsekeras.layers import SparseDense
from sparsekeras.schedules import ConstantSparsity, PolynomialDecay

from layer_helper import _np

N_IN, N_HIDDEN, N_OUT = 24, 32, 4


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_IN)).astype(np.float32)
    return x, np.tanh(x[:, :N_OUT] + 0.5 * x[:, N_OUT:2 * N_OUT]).astype(np.float32)


def _model(name="m", **layer_kwargs):
    return keras.Sequential([keras.Input((N_IN,)),
                             SparseDense(N_HIDDEN, activation="relu", name="h1", **layer_kwargs),
                             SparseDense(N_HIDDEN, activation="relu", name="h2", **layer_kwargs),
                             keras.layers.Dense(N_OUT, name="out")], name=name)


def _pruned(optimizer=None, granularity="unstructured", block_shape=(1, 1), compact=True,
            epochs=4, seed=3, sparsity=0.8, **layer_kwargs):
    """A model pruned by GradualPruning whose schedule ends at step 12 of 8 per epoch."""
    keras.utils.set_random_seed(seed)
    model = _model(**layer_kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-2), loss="mse")
    x, y = _data()
    callback = GradualPruning(PolynomialDecay(0.0, sparsity, 0, 12, frequency=4),
                              granularity=granularity, block_shape=block_shape, compact=compact)
    history = model.fit(x, y, batch_size=12, epochs=epochs, verbose=0, shuffle=False,
                        callbacks=[callback])
    return model, history, callback


def _hidden(model):
    return [model.get_layer("h1"), model.get_layer("h2")]


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.05),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-2),
    "adam_ema": lambda: keras.optimizers.Adam(1e-2, use_ema=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_compacted_training_equals_dense_training(name):
    """Compacting when the schedule ends changes nothing but the speed: the optimizer's state of
    the kept weights is carried over, so the weights match the uncompacted run to rounding."""
    plain, h_plain, _ = _pruned(OPTIMIZERS[name](), compact=False)
    comp, h_comp, _ = _pruned(OPTIMIZERS[name](), compact=True)
    assert [layer.compacted for layer in _hidden(plain)] == [False, False]
    assert [layer.compacted for layer in _hidden(comp)] == [True, True]
    np.testing.assert_allclose(h_comp.history["loss"], h_plain.history["loss"], rtol=1e-4)
    for a, b in zip(plain.layers, comp.layers):
        np.testing.assert_allclose(_np(b.kernel), _np(a.kernel), rtol=1e-4, atol=1e-5)
        if a.bias is not None:
            np.testing.assert_allclose(_np(b.bias), _np(a.bias), rtol=1e-4, atol=1e-5)
    for layer in _hidden(plain) + _hidden(comp):  # with EMA too (its final overwrite re-masked)
        kernel, mask = _np(layer.kernel), _np(layer.mask)
        assert (kernel[mask == 0] == 0).all()
    for layer in _hidden(comp):
        assert [v.name for v in layer.trainable_weights] == ["values", "bias"]
        assert int(layer.values.shape[0]) == int(_np(layer.mask).sum())
    # The optimizer's state of the values, not of the dense kernels: nnz entries per slot.
    shapes = {tuple(v.shape) for v in comp.optimizer.variables}
    assert (N_IN, N_HIDDEN) not in shapes and (N_HIDDEN, N_HIDDEN) not in shapes


def test_compact_gathers_optimizer_state_exactly():
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = _data()
    layer = model.get_layer("h1")
    layer.set_mask(np.random.default_rng(1).random((N_IN, N_HIDDEN)) > 0.75)
    model.fit(x, y, batch_size=12, epochs=1, verbose=0)
    opt = model.optimizer
    before = {v.name: _np(v) for v in opt.variables if tuple(v.shape) == (N_IN, N_HIDDEN)}
    assert len(before) == 2  # momentum and velocity of h1's kernel
    kernel = _np(layer.kernel)
    assert sparsekeras.compact(model) == ["h1"]  # h2 is not pruned: dense compute
    assert layer.compacted and layer.compact_block == 1
    mask = _np(layer.mask) != 0
    csc_order = np.argwhere(mask.T)[:, ::-1]  # (row, col) in column-major order
    flat = csc_order[:, 0] * N_HIDDEN + csc_order[:, 1]
    np.testing.assert_array_equal(_np(layer.values), kernel.reshape(-1)[flat])
    after = {v.name: _np(v) for v in opt.variables if v.name.startswith("m_h1_values")}
    for slot in ("momentum", "velocity"):
        old = before[f"m_h1_kernel_{slot}"]
        np.testing.assert_array_equal(after[f"m_h1_values_{slot}"], old.reshape(-1)[flat])
    # Same count and order of optimizer variables (the saved layout).
    assert len(opt.variables) == 2 + 2 * len(model.trainable_variables)
    # Back: the state scattered into dense slots again, the pruned entries zero.
    sparsekeras.decompact(model)
    assert not layer.compacted
    back = {v.name: _np(v) for v in opt.variables if v.name.startswith("m_h1_kernel")}
    for slot in ("momentum", "velocity"):
        expected = np.where(mask, before[f"m_h1_kernel_{slot}"], 0)
        np.testing.assert_array_equal(back[f"m_h1_kernel_{slot}"], expected)
    np.testing.assert_array_equal(_np(layer.kernel), kernel)
    model.fit(x, y, batch_size=12, epochs=1, verbose=0)
    assert (_np(layer.kernel)[~mask] == 0).all()


@pytest.mark.parametrize("block", [2, 4, 8])
def test_block_masks_compact_to_block_storage(block):
    model, history, _ = _pruned(granularity="block", block_shape=(1, block))
    for layer in _hidden(model):
        assert layer.compacted and layer.compact_block == block
    assert np.isfinite(history.history["loss"]).all()


def test_forced_block_keeps_pruned_entries_of_stored_blocks_zero():
    """An unstructured mask compacted into (1, 4) blocks stores pruned entries inside blocks:
    training must keep them zero (the pattern is the mask, not the blocks)."""
    keras.utils.set_random_seed(5)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = _data()
    rng = np.random.default_rng(2)
    for layer in _hidden(model):
        layer.set_mask(rng.random(tuple(layer.mask.shape)) > 0.8)
    model.fit(x, y, batch_size=12, epochs=1, verbose=0)
    sparsekeras.compact(model, block=4)
    for layer in _hidden(model):
        assert layer.compact_block == 4
        assert int(layer.values.shape[0]) > int(_np(layer.mask).sum())  # zeros stored in blocks
    before = [_np(layer.kernel) for layer in _hidden(model)]
    model.fit(x, y, batch_size=12, epochs=2, verbose=0)
    for layer, old in zip(_hidden(model), before):
        kernel, mask = _np(layer.kernel), _np(layer.mask)
        assert (kernel[mask == 0] == 0).all()
        assert not np.array_equal(kernel, old)


def test_compacted_outputs_and_gradients_match_dense_layer():
    """Forward and the gradients (input, values, bias) of a compacted layer equal the dense
    computation with the masked kernel; ranks 2 and 3; sparse inputs too."""
    rng = np.random.default_rng(7)
    layer = SparseDense(N_HIDDEN, compute="dense")
    layer.build((None, N_IN))
    layer.set_mask(rng.random((N_IN, N_HIDDEN)) > 0.7)
    kernel = _np(layer.kernel)
    bias = rng.standard_normal(N_HIDDEN).astype(np.float32)
    layer.bias.assign(bias)
    layer.compact()
    assert _np(layer._compact.transposed[2]).size == int(layer.values.shape[0])
    # Batch 5 and 6: dX by the scatter product; 400: by the gather product over the cached
    # transpose structure (_dx_by_gather: 25 + 600 * (0.3 - 0.05) = 175 rows at 30% density).
    for shape in ((5, N_IN), (2, 3, N_IN), (400, N_IN)):
        x = tf.constant(rng.standard_normal(shape).astype(np.float32))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        np.testing.assert_allclose(_np(y), _np(x) @ kernel + bias, rtol=1e-5, atol=1e-5)
        dy = 2 * (_np(x) @ kernel + bias)
        np.testing.assert_allclose(_np(tape.gradient(loss, x)), dy @ kernel.T, rtol=1e-4,
                                   atol=1e-4)
        dk = _np(x).reshape(-1, N_IN).T @ dy.reshape(-1, N_HIDDEN)
        positions = _np(layer._compact.positions)
        np.testing.assert_allclose(_np(tape.gradient(loss, layer.values)),
                                   dk.reshape(-1)[positions], rtol=1e-4, atol=1e-3)
    dense_x = np.where(rng.random((6, N_IN)) > 0.6, 1.0, 0.0).astype(np.float32)
    out = layer(tf.sparse.from_dense(dense_x))
    np.testing.assert_allclose(_np(out), dense_x @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_compacted_model_saves_in_the_dense_layout(tmp_path):
    """Saving a compacted model writes what the uncompacted model would (kernels, masks, the
    optimizer's state of the kernels): it loads uncompacted, and compacting it again gives back
    the same state, so training goes on the same way."""
    model, _, _ = _pruned()
    x, y = _data(seed=1)
    expected = _np(model(x))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert not any(layer.compacted for layer in _hidden(loaded))
    np.testing.assert_allclose(_np(loaded(x)), expected, rtol=1e-6, atol=1e-6)
    shapes = [tuple(v.shape) for v in loaded.optimizer.variables]
    assert (N_IN, N_HIDDEN) in shapes and (N_HIDDEN, N_HIDDEN) in shapes  # the dense layout
    sparsekeras.compact(loaded)
    saved, got = model.optimizer.variables, loaded.optimizer.variables
    assert len(got) == len(saved)
    for a, b in zip(saved, got):
        np.testing.assert_array_equal(_np(b), _np(a))
    model.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=12, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


def test_weights_files_cross_between_states(tmp_path):
    """Weight files (layers and optimizer) have one layout: saved compacted, loaded into an
    uncompacted model, and saved uncompacted, loaded into a compacted one."""
    model, _, _ = _pruned()
    x, y = _data(seed=2)
    expected = _np(model(x))
    model.save_weights(str(tmp_path / "c.weights.h5"))
    fresh = _model()
    fresh.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    fresh.optimizer.build(fresh.trainable_variables)  # Keras loads optimizer state into a built one
    fresh.load_weights(str(tmp_path / "c.weights.h5"))
    assert not any(layer.compacted for layer in _hidden(fresh))
    np.testing.assert_allclose(_np(fresh(x)), expected, rtol=1e-5, atol=1e-5)
    fresh.save_weights(str(tmp_path / "d.weights.h5"))
    model.fit(x, y, batch_size=12, epochs=1, verbose=0)  # move the compacted model away
    model.load_weights(str(tmp_path / "d.weights.h5"))  # uncompacted file, compacted layers
    assert all(layer.compacted for layer in _hidden(model))
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-5)
    sparsekeras.decompact(model)  # the optimizer state loaded onto the values, scattered back
    for a, b in zip(fresh.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(_np(b), _np(a))


def test_export_compacted_model_serves(tmp_path):
    model, _, _ = _pruned()
    x, _ = _data(8, seed=4)
    expected = _np(model(x))
    model.export(str(tmp_path / "exported"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", expected)
    script = textwrap.dedent("""
        import numpy as np, sparsekeras, tensorflow as tf
        m = tf.saved_model.load("exported")
        out = m.serve(tf.constant(np.load("x.npy")))
        np.testing.assert_allclose(out.numpy(), np.load("y.npy"), rtol=1e-5, atol=1e-5)
        print("SERVE_OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0 and "SERVE_OK" in result.stdout, result.stderr[-4000:]


def test_strip_and_kernel_of_compacted_model():
    model, _, _ = _pruned()
    x, _ = _data(seed=3)
    stripped = sparsekeras.strip(model)
    np.testing.assert_allclose(_np(stripped(x)), _np(model(x)), rtol=1e-5, atol=1e-5)
    layer = model.get_layer("h1")
    kernel = layer.kernel
    assert isinstance(kernel, tf.Tensor) and tuple(kernel.shape) == (N_IN, N_HIDDEN)


def test_later_prune_decompacts_then_recompacts():
    """A schedule that prunes again after compaction: the layer is decompacted (its state
    scattered back), pruned further, and compacted again once that schedule ends."""
    model, _, callback = _pruned(sparsity=0.6, compute="sparse")
    assert all(layer.compacted for layer in _hidden(model))
    x, y = _data()
    step = int(model.optimizer.iterations.numpy())
    more = GradualPruning(PolynomialDecay(0.6, 0.85, step, step + 8, frequency=4))
    model.fit(x, y, batch_size=12, epochs=2, verbose=0, callbacks=[more])
    for layer in _hidden(model):
        assert layer.compacted
        assert layer.sparsity == pytest.approx(0.85, abs=2e-3)
        assert (_np(layer.kernel)[_np(layer.mask) == 0] == 0).all()
    # Re-applying the same sparsity leaves compacted layers as they are.
    callback.set_model(model)
    assert callback.prune(0.5) is False
    assert all(layer.compacted for layer in _hidden(model))


def test_compact_false_and_unended_schedule_keep_dense_kernels():
    model, _, _ = _pruned(compact=False)
    assert not any(layer.compacted for layer in _hidden(model))
    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer="adam", loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=12, epochs=2, verbose=0,
              callbacks=[GradualPruning(ConstantSparsity(0.8, 0, frequency=4))])  # no end
    assert not any(layer.compacted for layer in _hidden(model))


def test_layers_below_switch_are_not_compacted():
    model, _, _ = _pruned(sparsity=0.5)  # switch_sparsity 0.7: dense compute
    assert not any(layer.compacted for layer in _hidden(model))
    model, _, _ = _pruned(sparsity=0.5, compute="sparse")
    assert all(layer.compacted for layer in _hidden(model))


def test_non_elementwise_optimizer_warns_and_does_not_compact():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, history, callback = _pruned(keras.optimizers.Adafactor(1e-2))
    assert any("elementwise optimizer" in str(w.message) for w in caught)
    assert not any(layer.compacted for layer in _hidden(model))
    assert callback.compact is False
    assert np.isfinite(history.history["loss"]).all()
    with pytest.raises(ValueError, match="Received: optimizer=Adafactor"):
        model.get_layer("h1").compact(model.optimizer)


def test_mixed_float16_compacts_and_trains(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, history, _ = _pruned(keras.optimizers.Adam(1e-2))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert all(layer.compacted for layer in _hidden(model))
        assert np.isfinite(history.history["loss"]).all()
        x, y = _data()
        before = _np(model.get_layer("h1").values).copy()
        model.fit(x, y, batch_size=12, epochs=1, verbose=0)
        assert not np.array_equal(_np(model.get_layer("h1").values), before)
        path = str(tmp_path / "mixed.keras")  # the loss-scale optimizer saves the dense layout
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-2, atol=1e-2)
        loaded.fit(x, y, batch_size=12, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_subclassed_and_nested_models_compact():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = keras.Sequential([SparseDense(N_HIDDEN, activation="relu", name="h1")])
            self.out = keras.layers.Dense(N_OUT)

        def call(self, x):
            return self.out(self.block(x))

    keras.utils.set_random_seed(2)
    model = Net()
    model.compile(optimizer="adam", loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=12, epochs=3, verbose=0,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.8, 0, 8, frequency=4))])
    assert model.block.layers[0].compacted


def test_kernel_regularizer_applies_to_values():
    reg = keras.regularizers.L2(0.1)
    layer = SparseDense(N_HIDDEN, kernel_regularizer=reg, compute="sparse")
    layer.build((None, N_IN))
    layer.set_mask(np.random.default_rng(0).random((N_IN, N_HIDDEN)) > 0.7)
    expected = float(reg(layer.kernel * layer.mask))
    layer.compact()
    assert float(sum(layer.losses)) == pytest.approx(expected, rel=1e-5)


def test_compact_errors():
    layer = SparseDense(8)
    with pytest.raises(ValueError, match="must be built"):
        layer.compact()
    layer.build((None, 4))
    with pytest.raises(ValueError, match="Received: block='wide'"):
        layer.compact(block="wide")
    with pytest.raises(ValueError, match="Received: block=3"):
        layer.compact(block=3)
    constrained = SparseDense(8, kernel_constraint=keras.constraints.NonNeg())
    constrained.build((None, 4))
    with pytest.raises(ValueError, match="kernel_constraint"):
        constrained.compact()
    layer.set_mask(np.random.default_rng(0).random((4, 8)) > 0.5)
    layer.compact()
    layer.compact()  # a no-op when compacted
    with pytest.raises(ValueError, match="is compacted"):
        layer.set_mask(np.ones((4, 8)))
    layer.decompact()
    layer.decompact()  # a no-op when not compacted
    layer.set_mask(np.ones((4, 8)))


def test_mask_with_other_count_is_refused_by_compacted_layer():
    layer = SparseDense(8, compute="sparse")
    layer.build((None, 4))
    layer.set_mask(np.eye(4, 8))
    layer.compact()
    with pytest.raises(ValueError, match="compacted with 4 stored values"):
        layer.mask.assign(np.ones((4, 8), np.float32))


def test_resume_from_checkpoint_across_compaction(tmp_path):
    """A ModelCheckpoint taken after the layers were compacted loads compacted, with the
    optimizer's state of the values; training on from it gives the uninterrupted run's weights."""
    x, y = _data()

    def fit(model, epochs, callbacks=()):
        schedule = PolynomialDecay(0.0, 0.8, 0, 12, frequency=4)
        return model.fit(x, y, batch_size=12, epochs=epochs, verbose=0, shuffle=False,
                         callbacks=[GradualPruning(schedule), *callbacks])

    keras.utils.set_random_seed(9)
    full = _model()
    initial = full.get_weights()
    full.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    fit(full, 5)

    keras.utils.set_random_seed(9)
    first = _model()
    first.set_weights(initial)
    first.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    path = str(tmp_path / "ckpt.keras")
    fit(first, 3, [keras.callbacks.ModelCheckpoint(path)])
    assert all(layer.compacted for layer in _hidden(first))  # compacted at step 13 of 24
    resumed = keras.models.load_model(path)
    assert not any(layer.compacted for layer in _hidden(resumed))  # files: the dense layout
    assert int(resumed.optimizer.iterations.numpy()) == 24
    fit(resumed, 2)  # the callback compacts again at its first step (the schedule is over)
    assert all(layer.compacted for layer in _hidden(resumed))
    for a, b in zip(full.layers, resumed.layers):
        np.testing.assert_allclose(_np(b.kernel), _np(a.kernel), rtol=1e-4, atol=1e-5)


def test_backup_and_restore_across_compaction(tmp_path):
    """A fit interrupted after compaction resumes from BackupAndRestore's files into a fresh
    model (built and compiled uncompacted) and ends where the uninterrupted fit does."""
    x, y = _data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    def fit(model, extra=()):
        schedule = PolynomialDecay(0.0, 0.8, 0, 12, frequency=4)
        model.fit(x, y, batch_size=12, epochs=5, verbose=0, shuffle=False,
                  callbacks=[GradualPruning(schedule), *extra])

    def fresh():
        keras.utils.set_random_seed(10)
        model = _model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return model

    full = fresh()
    fit(full)
    backup = str(tmp_path / "backup")
    first = fresh()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(first, [keras.callbacks.BackupAndRestore(backup), Interrupt()])
    assert all(layer.compacted for layer in _hidden(first))
    resumed = fresh()
    fit(resumed, [keras.callbacks.BackupAndRestore(backup)])
    assert int(resumed.optimizer.iterations.numpy()) == 40
    assert all(layer.compacted for layer in _hidden(resumed))
    for a, b in zip(full.layers, resumed.layers):
        np.testing.assert_allclose(_np(b.kernel), _np(a.kernel), rtol=1e-4, atol=1e-5)


def test_sparsify_copies_compacted_layers():
    """sparsify clones the model (uncompacted layers) and copies a compacted layer's weights in
    Dense's layout."""
    model, _, _ = _pruned()
    x, _ = _data(seed=6)
    again = sparsekeras.sparsify(model)
    assert not any(layer.compacted for layer in _hidden(again))
    np.testing.assert_allclose(_np(again(x)), _np(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["pruning_first", "early_stopping_first"])
def test_early_stopping_restores_best_weights_of_compacted_layers(order):
    """EarlyStopping(restore_best_weights=True) keeps get_weights() lists from epochs after the
    compaction and sets them back at the end, in either callback order."""
    keras.utils.set_random_seed(12)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(5e-2), loss="mse")
    x, y = _data()
    pruning = GradualPruning(PolynomialDecay(0.0, 0.8, 0, 8, frequency=4))
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=2, restore_best_weights=True,
                                         start_from_epoch=2)
    record = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            record.append((logs["loss"], [_np(v).copy() for v in self.model.weights]))

    callbacks = [pruning, stop] if order == "pruning_first" else [stop, pruning]
    model.fit(x, y, batch_size=12, epochs=12, verbose=0, shuffle=False,
              callbacks=callbacks + [Record()])
    assert all(layer.compacted for layer in _hidden(model))
    losses = [loss for loss, _ in record]
    best_epoch = stop.best_epoch
    assert best_epoch >= 2 and losses[best_epoch] == min(losses[2:])
    assert best_epoch < len(record) - 1  # the restored weights are not the last epoch's
    for got, want in zip(model.weights, record[best_epoch][1]):
        np.testing.assert_array_equal(_np(got), want)
