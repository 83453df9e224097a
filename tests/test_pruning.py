"""Gradual pruning during `model.fit`: `GradualPruning`, `prunable_layers`, `sparsify`."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.callbacks import GradualPruning, prunable_layers
from sparsekeras.layers import SparseDense
from sparsekeras.schedules import ConstantSparsity, PolynomialDecay

from layer_helper import _np

N_IN, N_HIDDEN, N_OUT = 16, 32, 4
BATCH, N_SAMPLES = 8, 64  # 8 steps per epoch


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N_SAMPLES, N_IN)).astype(np.float32),
            rng.standard_normal((N_SAMPLES, N_OUT)).astype(np.float32))


def _sequential(name="seq"):
    return keras.Sequential([keras.Input((N_IN,)),
                             SparseDense(N_HIDDEN, activation="relu", name="h1"),
                             SparseDense(N_HIDDEN, activation="relu", name="h2"),
                             SparseDense(N_OUT, name="out")], name=name)


def _functional():
    inputs = keras.Input((N_IN,))
    h = SparseDense(N_HIDDEN, activation="relu", name="h1")(inputs)
    h = SparseDense(N_HIDDEN, activation="relu", name="h2")(h)
    return keras.Model(inputs, SparseDense(N_OUT, name="out")(h))


class SubclassedModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.h1 = SparseDense(N_HIDDEN, activation="relu", name="h1")
        self.h2 = SparseDense(N_HIDDEN, activation="relu", name="h2")
        self.out = SparseDense(N_OUT, name="out")

    def call(self, x):
        return self.out(self.h2(self.h1(x)))


def _subclassed():
    model = SubclassedModel()
    model(np.zeros((1, N_IN), np.float32))
    return model


def _nested():
    inner = keras.Sequential([keras.Input((N_IN,)),
                              SparseDense(N_HIDDEN, activation="relu", name="h1"),
                              SparseDense(N_HIDDEN, activation="relu", name="h2")], name="inner")
    inputs = keras.Input((N_IN,))
    return keras.Model(inputs, SparseDense(N_OUT, name="out")(inner(inputs)))


MODELS = {"sequential": _sequential, "functional": _functional, "subclassed": _subclassed,
          "nested": _nested}


def _fit(model, callback, epochs, seed=0, optimizer="adam", **kwargs):
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.Adam(1e-2) if optimizer == "adam" else optimizer,
                      loss="mse")
    x, y = _data(seed)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=[callback] + kwargs.pop("callbacks", []), **kwargs)


def _assert_pruned_weights_are_zero(layers):
    for layer in layers:
        kernel, mask = _np(layer.kernel), _np(layer.mask)
        assert (kernel[mask == 0] == 0.0).all(), layer.name


# ---- reaching the schedule ----------------------------------------------------------------

@pytest.mark.parametrize("kind", list(MODELS))
def test_polynomial_decay_reaches_target(kind):
    keras.utils.set_random_seed(0)
    model = MODELS[kind]()
    layers = prunable_layers(model)
    assert sorted(layer.name for layer in layers) == ["h1", "h2", "out"]
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=3)
    history = _fit(model, GradualPruning(schedule), epochs=3)  # 24 steps
    assert int(model.optimizer.iterations.numpy()) == 24
    for layer in layers:
        size = int(np.prod(layer.mask.shape))
        assert abs(layer.sparsity - 0.8) <= 1.0 / size, layer.name
        assert abs((1.0 - _np(layer.mask).mean()) - 0.8) <= 1.0 / size
    # 12 more Adam steps after the last pruning step: pruned weights are still exactly zero.
    _assert_pruned_weights_are_zero(layers)
    logs = history.history
    assert "sparsity" in logs
    for layer in layers:
        assert f"sparsity/{layer.name}" in logs
        assert logs[f"sparsity/{layer.name}"][-1] == pytest.approx(layer.sparsity)
    sizes = np.array([np.prod(layer.mask.shape) for layer in layers])
    overall = float(np.sum(sizes * [layer.sparsity for layer in layers]) / sizes.sum())
    assert logs["sparsity"][-1] == pytest.approx(overall)
    # The sparsity never decreases over the epochs and the schedule's midpoint is visible.
    assert np.all(np.diff(logs["sparsity"]) >= 0)
    assert 0.0 < logs["sparsity"][0] < 0.8


def test_pruned_weights_stay_zero_with_momentum():
    """Adam's moments of a pruned weight are nonzero: without the in-step constraint, the next
    update would revive it. Check after every single step."""
    keras.utils.set_random_seed(1)
    model = _sequential()
    layers = prunable_layers(model)

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            _assert_pruned_weights_are_zero(layers)

    _fit(model, GradualPruning(ConstantSparsity(0.6, begin_step=2, frequency=100)), epochs=2,
         callbacks=[Check()])
    for layer in layers:
        assert layer.sparsity == pytest.approx(0.6, abs=1.0 / np.prod(layer.mask.shape))
    _assert_pruned_weights_are_zero(layers)
    # Training again without the callback keeps the mask (the constraint lives in the layer).
    masks = [_np(layer.mask) for layer in layers]
    x, y = _data(2)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    _assert_pruned_weights_are_zero(layers)
    for layer, mask in zip(layers, masks):
        np.testing.assert_array_equal(_np(layer.mask), mask)


def test_masks_only_shrink():
    keras.utils.set_random_seed(2)
    model = _sequential()
    layers = prunable_layers(model)
    previous = [np.ones(layer.mask.shape, bool) for layer in layers]

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for i, layer in enumerate(layers):
                mask = _np(layer.mask) != 0
                assert not (mask & ~previous[i]).any(), "a pruned weight came back"
                previous[i] = mask

    _fit(model, GradualPruning(PolynomialDecay(0.0, 0.9, 0, 14, frequency=2)), epochs=2,
         callbacks=[Check()])


def test_no_pruning_before_begin_step():
    keras.utils.set_random_seed(0)
    model = _sequential()
    _fit(model, GradualPruning(PolynomialDecay(0.3, 0.8, begin_step=100, end_step=200)), epochs=1)
    assert all(layer.sparsity == 0.0 for layer in prunable_layers(model))


def test_global_scope_reaches_global_fraction():
    keras.utils.set_random_seed(3)
    model = _sequential()
    layers = prunable_layers(model)
    # Different scales per layer: a global threshold prunes the small layer harder.
    layers[1].kernel.assign(_np(layers[1].kernel) * 0.1)
    # The plain global ranking: the floor that holds the small layer (min_layer_density) is
    # tested in test_global_floor.py.
    _fit(model, GradualPruning(PolynomialDecay(0.0, 0.7, 0, 8, frequency=2), scope="global",
                               min_layer_density=0.0), epochs=2)
    sizes = np.array([np.prod(layer.mask.shape) for layer in layers])
    pruned = sum(int(np.sum(_np(layer.mask) == 0)) for layer in layers)
    assert abs(pruned / sizes.sum() - 0.7) <= 1.0 / sizes.sum()
    assert layers[1].sparsity > 0.7 > layers[0].sparsity
    _assert_pruned_weights_are_zero(layers)


# ---- granularities ------------------------------------------------------------------------

def test_block_granularity():
    keras.utils.set_random_seed(4)
    model = _sequential()
    _fit(model, GradualPruning(PolynomialDecay(0.0, 0.5, 0, 8, frequency=4), granularity="block",
                               block_shape=(4, 4)), epochs=2)
    for layer in prunable_layers(model):
        mask = _np(layer.mask)
        k, n = mask.shape
        nb = -(-n // 4)
        padded = np.full((k, nb * 4), np.nan)
        padded[:, :n] = mask
        blocks = padded.reshape(k // 4, 4, nb, 4)
        lo, hi = np.nanmin(blocks, axis=(1, 3)), np.nanmax(blocks, axis=(1, 3))
        np.testing.assert_array_equal(lo, hi, err_msg=f"{layer.name}: mask not constant on blocks")
        assert 0.3 < layer.sparsity < 0.7
    _assert_pruned_weights_are_zero(prunable_layers(model))


def test_n_m_granularity():
    keras.utils.set_random_seed(5)
    model = _sequential()
    _fit(model, GradualPruning(ConstantSparsity(0.5, begin_step=0, frequency=4),
                               granularity="n:m", n_m=(2, 4)), epochs=1)
    for layer in prunable_layers(model):
        mask = _np(layer.mask)
        k, n = mask.shape
        kept = mask.reshape(k // 4, 4, n).sum(axis=1)
        np.testing.assert_array_equal(kept, 2, err_msg=layer.name)
        assert layer.sparsity == 0.5
    _assert_pruned_weights_are_zero(prunable_layers(model))


def test_channel_granularity():
    keras.utils.set_random_seed(6)
    model = _sequential()
    _fit(model, GradualPruning(PolynomialDecay(0.0, 0.5, 0, 8, frequency=4),
                               granularity="channel"), epochs=2)
    for layer in prunable_layers(model):
        mask = _np(layer.mask)
        columns = mask.all(axis=0) | (~mask.astype(bool)).all(axis=0)
        assert columns.all(), f"{layer.name}: a column is partially pruned"
        assert int((mask == 0).all(axis=0).sum()) == round(0.5 * mask.shape[1])
    _assert_pruned_weights_are_zero(prunable_layers(model))


@pytest.mark.parametrize("kwargs, match", [
    (dict(granularity="rows"), "Received: granularity='rows'"),
    (dict(scope="model"), "Received: scope='model'"),
    (dict(schedule=0.5), "Received: schedule=0.5"),
])
def test_callback_invalid_arguments(kwargs, match):
    kwargs.setdefault("schedule", ConstantSparsity(0.5))
    with pytest.raises(ValueError, match=match):
        GradualPruning(**kwargs)


def test_callback_without_sparse_layers_raises():
    model = keras.Sequential([keras.Input((N_IN,)), keras.layers.Dense(N_OUT)])
    with pytest.raises(ValueError, match="no prunable layer"):
        _fit(model, GradualPruning(ConstantSparsity(0.5)), epochs=1)


def test_non_prunable_layer_is_skipped():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((N_IN,)),
                              SparseDense(N_HIDDEN, name="h1"),
                              SparseDense(N_OUT, prunable=False, name="out")])
    history = _fit(model, GradualPruning(ConstantSparsity(0.5, frequency=4)), epochs=1)
    assert [layer.name for layer in prunable_layers(model)] == ["h1"]
    assert model.layers[1].sparsity == 0.0
    assert model.layers[0].sparsity == 0.5
    assert "sparsity/out" not in history.history


def test_log_layers_false():
    keras.utils.set_random_seed(0)
    history = _fit(_sequential(), GradualPruning(ConstantSparsity(0.5), log_layers=False),
                   epochs=1)
    assert "sparsity" in history.history
    assert not [key for key in history.history if key.startswith("sparsity/")]


def test_tensorboard_scalars(tmp_path):
    keras.utils.set_random_seed(0)
    log_dir = tmp_path / "tb"
    _fit(_sequential(), GradualPruning(PolynomialDecay(0.0, 0.5, 0, 8, frequency=4),
                                       log_dir=str(log_dir)), epochs=2)
    files = [p for p in log_dir.rglob("*") if p.is_file() and "tfevents" in p.name]
    assert files, f"no event file in {log_dir}"
    tags = set()
    for path in files:
        for raw in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(value.tag for value in event.summary.value)
    assert {"sparsity", "sparsity/h1", "sparsity/h2", "sparsity/out"} <= tags


# ---- resume from a saved model ------------------------------------------------------------

def _schedule():
    return PolynomialDecay(0.0, 0.75, begin_step=0, end_step=28, frequency=3)


def test_resume_continues_schedule(tmp_path):
    """Fit 2 epochs with a checkpoint, load the .keras file (no custom objects), fit 2 more
    with a fresh callback: the sparsity per epoch is that of an uninterrupted 4-epoch run."""
    keras.utils.set_random_seed(7)
    full = _sequential()
    initial = full.get_weights()
    history_full = _fit(full, GradualPruning(_schedule()), epochs=4)

    keras.utils.set_random_seed(7)
    first = _sequential()
    first.set_weights(initial)
    path = tmp_path / "ckpt.keras"
    history_first = _fit(first, GradualPruning(_schedule()), epochs=2,
                         callbacks=[keras.callbacks.ModelCheckpoint(str(path))])
    assert path.exists()
    resumed = keras.models.load_model(str(path))
    assert int(resumed.optimizer.iterations.numpy()) == 16
    saved_masks = [_np(layer.mask) for layer in prunable_layers(first)]
    for layer, mask in zip(prunable_layers(resumed), saved_masks):
        np.testing.assert_array_equal(_np(layer.mask), mask)
        assert layer.sparsity == pytest.approx(1.0 - mask.mean())
    history_second = _fit(resumed, GradualPruning(_schedule()), epochs=2)
    assert int(resumed.optimizer.iterations.numpy()) == 32

    for key in ["sparsity", "sparsity/h1", "sparsity/h2", "sparsity/out"]:
        combined = history_first.history[key] + history_second.history[key]
        np.testing.assert_allclose(combined, history_full.history[key], rtol=0, atol=1e-12,
                                   err_msg=key)
    for layer, mask in zip(prunable_layers(resumed), saved_masks):
        assert not ((_np(layer.mask) != 0) & (mask == 0)).any()  # masks only shrank
        size = mask.size
        assert abs(layer.sparsity - 0.75) <= 1.0 / size
    _assert_pruned_weights_are_zero(prunable_layers(resumed))


def test_resume_with_manual_save_mid_epoch_schedule(tmp_path):
    """model.save after 10 steps; the fresh callback prunes at the schedule's next steps."""
    keras.utils.set_random_seed(8)
    model = _sequential()
    schedule = _schedule()
    x, y = _data()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x[:80], y[:80], batch_size=BATCH, epochs=1, steps_per_epoch=None, verbose=0,
              shuffle=False, callbacks=[GradualPruning(schedule)])
    steps = int(model.optimizer.iterations.numpy())
    path = tmp_path / "manual.keras"
    model.save(str(path))
    resumed = keras.models.load_model(str(path))
    callback = GradualPruning(schedule)
    resumed.fit(x[:8], y[:8], batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    # The first step after the resume is `steps`; the sparsity is that of the last pruning
    # step at or before it.
    last = max(t for t in range(steps + 1) if schedule(t)[0])
    for layer in prunable_layers(resumed):
        size = int(np.prod(layer.mask.shape))
        expected = round(schedule(last)[1] * size) / size
        assert layer.sparsity == pytest.approx(expected), layer.name


# ---- sparsify -----------------------------------------------------------------------------

def _dense_sequential():
    return keras.Sequential([keras.Input((N_IN,)),
                             keras.layers.Dense(N_HIDDEN, activation="relu", name="h1"),
                             keras.layers.Dropout(0.1, name="drop"),
                             keras.layers.Dense(N_HIDDEN, activation="relu", name="h2"),
                             keras.layers.Dense(N_OUT, name="out")])


def _dense_functional():
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(N_HIDDEN, activation="relu", name="h1")(inputs)
    h = keras.layers.Dense(N_HIDDEN, activation="relu", name="h2")(h)
    skip = keras.layers.Dense(N_HIDDEN, name="skip")(inputs)
    h = keras.layers.Add(name="add")([h, skip])
    return keras.Model(inputs, keras.layers.Dense(N_OUT, name="out")(h))


@pytest.mark.parametrize("builder", [_dense_sequential, _dense_functional],
                         ids=["sequential", "functional"])
def test_sparsify_keeps_outputs(builder):
    keras.utils.set_random_seed(9)
    dense = builder()
    x, y = _data()
    expected = _np(dense(x))
    sparse = sparsekeras.sparsify(dense)
    assert type(sparse) is type(dense)
    dense_names = [layer.name for layer in dense.layers
                   if isinstance(layer, keras.layers.Dense)]
    for layer in sparse.layers:
        if layer.name in dense_names:
            assert isinstance(layer, SparseDense), layer.name
            assert layer.sparsity == 0.0
    np.testing.assert_allclose(_np(sparse(x)), expected, rtol=1e-6, atol=1e-6)
    # The original model is untouched and the copy prunes and trains.
    assert not any(isinstance(layer, SparseDense) for layer in dense.layers)
    _fit(sparse, GradualPruning(ConstantSparsity(0.5, frequency=4)), epochs=1)
    for layer in prunable_layers(sparse):
        assert layer.sparsity == pytest.approx(0.5, abs=1.0 / np.prod(layer.mask.shape))
    np.testing.assert_allclose(_np(dense(x)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("builder", [_dense_sequential, _dense_functional],
                         ids=["sequential", "functional"])
def test_sparsify_layer_names(builder):
    keras.utils.set_random_seed(10)
    dense = builder()
    x, _ = _data()
    sparse = sparsekeras.sparsify(dense, layer_names=["h2"], compute="sparse", switch_sparsity=0.4)
    kinds = {layer.name: type(layer) for layer in sparse.layers}
    assert kinds["h2"] is SparseDense
    assert kinds["h1"] is keras.layers.Dense and kinds["out"] is keras.layers.Dense
    h2 = sparse.get_layer("h2")
    assert (h2.compute, h2.switch_sparsity) == ("sparse", 0.4)
    np.testing.assert_allclose(_np(sparse(x)), _np(dense(x)), rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in prunable_layers(sparse)] == ["h2"]


class PlainSubclassed(keras.Model):
    """A subclassed model of plain Dense layers, not registered (cannot be copied)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.h = keras.layers.Dense(N_HIDDEN, activation="relu")
        self.out = keras.layers.Dense(N_OUT)

    def call(self, x):
        return self.out(self.h(x))


def test_sparsify_rejects_unknown_names_and_uncopyable_subclassed():
    dense = _dense_sequential()
    with pytest.raises(ValueError, match="Received: layer_names"):
        sparsekeras.sparsify(dense, layer_names=["nope"])
    model = PlainSubclassed()
    model(np.random.default_rng(0).standard_normal((4, N_IN)).astype(np.float32))
    with pytest.raises(ValueError, match="inplace=True"):
        sparsekeras.sparsify(model)


def test_sparsify_subclassed_in_place():
    model = PlainSubclassed()
    x = np.random.default_rng(0).standard_normal((4, N_IN)).astype(np.float32)
    y = _np(model(x))
    same = sparsekeras.sparsify(model, inplace=True)
    assert same is model
    assert type(model.h) is SparseDense and type(model.out) is SparseDense
    np.testing.assert_allclose(_np(model(x)), y, rtol=1e-6, atol=1e-6)
    assert [layer.name for layer in prunable_layers(model)] == [model.h.name, model.out.name]
    model.compile(optimizer="adam", loss="mse")
    schedule = sparsekeras.schedules.ConstantSparsity(0.8, begin_step=0, frequency=1)
    model.fit(x, np.zeros((4, N_OUT), np.float32), epochs=1, verbose=0,
              callbacks=[GradualPruning(schedule)])
    assert abs(model.h.sparsity - 0.8) < 0.01


# ---- tf.distribute ------------------------------------------------------------------------

_MIRRORED = textwrap.dedent("""
    import os
    import tempfile

    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    import sparsekeras
    from sparsekeras.callbacks import GradualPruning, prunable_layers
    from sparsekeras.layers import SparseDense
    from sparsekeras.schedules import PolynomialDecay

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = keras.Sequential([keras.Input((16,)), SparseDense(32, activation="relu"),
                                  SparseDense(4)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype("float32")
    y = rng.standard_normal((64, 4)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.8, 0, 8, frequency=2))])
    for layer in prunable_layers(model):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        mask = keras.ops.convert_to_numpy(layer.mask)
        size = mask.size
        assert abs(layer.sparsity - 0.8) <= 1.0 / size, (layer.name, layer.sparsity)
        assert abs((1.0 - mask.mean()) - 0.8) <= 1.0 / size
        assert (kernel[mask == 0] == 0).all(), layer.name
        # The schedule ended at step 8 of 12: the callback compacted the layers under the
        # strategy (values and optimizer slots created in its scope), and training went on.
        assert layer.compacted, layer.name
        assert [v.name for v in layer.trainable_weights] == ["values", "bias"]
    more = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(more.history["loss"]).all()
    path = os.path.join(tempfile.mkdtemp(), "mirrored_compacted.keras")
    model.save(path)  # the dense layout, optimizer state included
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)

    # The sparse convolutions too (compute="sparse": the custom ops run in each replica).
    from sparsekeras.layers import SparseConv2D, SparseDepthwiseConv2D
    with strategy.scope():
        cnn = keras.Sequential([keras.Input((6, 6, 2)),
                                SparseConv2D(4, 3, padding="same", activation="relu", compute="sparse"),
                                SparseDepthwiseConv2D(3, padding="same", compute="sparse"),
                                keras.layers.Flatten(), keras.layers.Dense(2)])
        cnn.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    xc = rng.standard_normal((32, 6, 6, 2)).astype("float32")
    yc = rng.standard_normal((32, 2)).astype("float32")
    hist = cnn.fit(xc, yc, batch_size=8, epochs=3, verbose=0, shuffle=False,
                   callbacks=[GradualPruning(PolynomialDecay(0.0, 0.75, 0, 8, frequency=2))])
    assert np.isfinite(hist.history["loss"]).all()
    for layer in prunable_layers(cnn):
        mask = keras.ops.convert_to_numpy(layer.mask)
        assert abs(layer.sparsity - 0.75) <= 1.0 / mask.size, (layer.name, layer.sparsity)
        assert (keras.ops.convert_to_numpy(layer.kernel)[mask == 0] == 0).all(), layer.name

    # A block-CSC CompactDense (the block product and its gradient ops in each replica).
    from sparsekeras.layers import CompactDense
    with strategy.scope():
        bm = keras.Sequential([keras.Input((16,)),
                               CompactDense(32, sparsity=0.75, block=8, seed=0, activation="relu"),
                               keras.layers.Dense(4)])
        bm.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    before = keras.ops.convert_to_numpy(bm.layers[0].values).copy()
    hb = bm.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(hb.history["loss"]).all()
    assert not np.array_equal(keras.ops.convert_to_numpy(bm.layers[0].values), before)
    print("MIRRORED_OK")
""")


def test_mirrored_strategy_two_cpus(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # cwd away from the repository: `-c` puts the cwd first on sys.path, and the source tree's
    # package has no compiled extensions.
    result = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0 and "MIRRORED_OK" in result.stdout, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
        f"stderr:\n{result.stderr[-6000:]}")


def test_sparsify_nested_model():
    """Dense layers inside a nested model are converted too (the docstring promises every Dense
    layer), so GradualPruning prunes them."""
    keras.utils.set_random_seed(11)
    inner = keras.Sequential([keras.Input((N_IN,)),
                              keras.layers.Dense(N_HIDDEN, activation="relu", name="h1")],
                             name="inner")
    inputs = keras.Input((N_IN,))
    dense = keras.Model(inputs, keras.layers.Dense(N_OUT, name="out")(inner(inputs)))
    x, _ = _data()
    sparse = sparsekeras.sparsify(dense)
    np.testing.assert_allclose(_np(sparse(x)), _np(dense(x)), rtol=1e-6, atol=1e-6)
    assert sorted(layer.name for layer in prunable_layers(sparse)) == ["h1", "out"]


@pytest.mark.parametrize("steps_per_execution", [1, 3, 5])
def test_schedule_reaches_target_with_steps_per_execution(steps_per_execution):
    """Keras calls batch callbacks once per execution of `steps_per_execution` steps: pruning
    steps that fall inside an execution (the schedule's last one, at end_step, included) are
    done at the next call, so the final sparsity is reached."""
    keras.utils.set_random_seed(3)
    model = _sequential()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  steps_per_execution=steps_per_execution)
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, shuffle=False,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.8, 0, 12, frequency=3),
                                        compact=False)])
    for layer in prunable_layers(model):
        assert layer.sparsity == pytest.approx(0.8, abs=1.0 / layer.mask.shape[0] / 2), layer.name
    _assert_pruned_weights_are_zero(prunable_layers(model))
