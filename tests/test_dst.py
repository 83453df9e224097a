"""Dynamic sparse training (RigL, SET): the mask maths against their formulas, and the callbacks
in `fit` (exact sparsity, drop/grow counts, optimizer state, determinism, save/load, strip)."""
import math

import numpy as np
import keras
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import _compact, _dst
from sparsekeras.callbacks import RigL, SET
from sparsekeras.layers import CompactDense, SparseConv2D, SparseDense


# ---- mask maths ------------------------------------------------------------------------------

def test_erk_densities_match_formula_without_cap():
    shapes = [(64, 48), (48, 32), (3, 3, 8, 16)]
    d = _dst.erk_densities(shapes, 0.8)
    raw = [sum(s) / np.prod(s) for s in shapes]
    sizes = [np.prod(s) for s in shapes]
    eps = 0.2 * sum(sizes) / sum(r * n for r, n in zip(raw, sizes))
    np.testing.assert_allclose(d, [eps * r for r in raw], rtol=1e-12)
    assert max(d) < 1
    np.testing.assert_allclose(sum(x * n for x, n in zip(d, sizes)), 0.2 * sum(sizes))


def test_erk_caps_dense_layers_and_rescales_the_rest():
    shapes = [(784, 300), (300, 100), (100, 10)]
    d = _dst.erk_densities(shapes, 0.9)
    sizes = [np.prod(s) for s in shapes]
    assert d[2] == 1.0  # the head's raw density exceeds 1: kept dense
    # the others share what is left of the budget, in the ERK ratio
    eps = (0.1 * sum(sizes) - sizes[2]) / sum(sum(s) for s in shapes[:2])
    np.testing.assert_allclose(d[:2], [eps * sum(s) / np.prod(s) for s in shapes[:2]], rtol=1e-12)
    np.testing.assert_allclose(sum(x * n for x, n in zip(d, sizes)), 0.1 * sum(sizes))


def test_uniform_densities_and_bad_arguments():
    assert _dst.uniform_densities([(4, 4), (8, 2)], 0.75) == [0.25, 0.25]
    with pytest.raises(ValueError, match="distribution='lognormal'"):
        _dst.densities([(4, 4)], 0.5, "lognormal")
    with pytest.raises(ValueError, match="sparsity=1.0"):
        _dst.erk_densities([(4, 4)], 1.0)


def test_random_mask_count_and_seed():
    a = _dst.random_mask((30, 20), 0.1, _dst.rng(3, 0))
    b = _dst.random_mask((30, 20), 0.1, _dst.rng(3, 0))
    c = _dst.random_mask((30, 20), 0.1, _dst.rng(4, 0))
    assert a.sum() == 60 and np.array_equal(a, b) and not np.array_equal(a, c)


def test_cosine_drop_fraction():
    assert _dst.drop_fraction_at(0, 0.3, 100) == pytest.approx(0.3)
    assert _dst.drop_fraction_at(50, 0.3, 100) == pytest.approx(0.15)
    assert _dst.drop_fraction_at(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert _dst.drop_fraction_at(100, 0.3, 100) == 0.0
    assert _dst.drop_fraction_at(70, 0.3, 100, decay="constant") == 0.3
    assert [t for t in range(12) if _dst.is_update_step(t, 4, 10)] == [4, 8]


def test_drop_grow_counts_and_choices():
    rs = np.random.default_rng(0)
    w = rs.normal(size=(20, 10))
    mask = rs.random((20, 10)) < 0.3
    w = w * mask
    scores = rs.random((20, 10))
    new, dropped, grown = _dst.drop_grow(w, mask, 0.25, _dst.rng(0, 1), grow_scores=scores)
    k = round(0.25 * mask.sum())
    assert len(dropped) == len(grown) == k and new.sum() == mask.sum()
    flat_m, flat_w, flat_s = mask.reshape(-1), np.abs(w.reshape(-1)), scores.reshape(-1)
    active = np.flatnonzero(flat_m)
    # dropped: the k smallest active magnitudes
    assert flat_w[dropped].max() <= np.sort(flat_w[active])[k]
    # grown: inactive before the update, the k largest scores among them
    inactive = np.flatnonzero(~flat_m)
    assert not flat_m[grown].any()
    assert flat_s[grown].min() >= np.sort(flat_s[inactive])[::-1][k - 1]
    assert not new.reshape(-1)[dropped].any() and new.reshape(-1)[grown].all()
    # SET: random growth, still from the inactive ones, seeded
    new2, _, g2 = _dst.drop_grow(w, mask, 0.25, _dst.rng(0, 1))
    new3, _, _ = _dst.drop_grow(w, mask, 0.25, _dst.rng(0, 1))
    assert not flat_m[g2].any() and np.array_equal(new2, new3) and new2.sum() == mask.sum()


@pytest.mark.parametrize("zeros", [0.0, 0.9])
def test_top_k_large_arrays_with_ties(zeros):
    """The ranking of millions of entries (a bounded pool, ranked in place among the eligible
    ones): k distinct eligible indices, none below an eligible one left out, seeded ties."""
    rs = np.random.default_rng(0)
    score = np.round(rs.random(1_200_000) * 2000).astype(np.float32)  # many ties
    score[rs.random(score.size) < zeros] = 0  # dead units: most gradients exactly zero
    eligible = rs.random(score.size) < 0.9
    for k in (1, 1000, 50_000, 200_000):
        got = _dst._top_k(score, k, _dst.rng(0, k), eligible=eligible)
        assert len(got) == k == len(np.unique(got)) and eligible[got].all()
        left = np.ones(score.size, bool)
        left[got] = False
        assert score[got].min() >= score[left & eligible].max()
        np.testing.assert_array_equal(got, _dst._top_k(score, k, _dst.rng(0, k), eligible))
        # the same choices as ranking the gathered eligible scores
        idx = np.flatnonzero(eligible)
        np.testing.assert_array_equal(np.sort(got), np.sort(idx[_dst._top_k(
            score[idx], k, _dst.rng(0, k))]))


# ---- callbacks in fit ------------------------------------------------------------------------

def _data(n=256, seed=0):
    rs = np.random.default_rng(seed)
    x = rs.normal(size=(n, 24)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((24,)), SparseDense(96, activation="relu", name="h1"),
                              SparseDense(96, activation="relu", name="h2"),
                              SparseDense(2, name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class _Spy(keras.callbacks.Callback):
    """Records each target's mask after every batch."""

    def __init__(self, dst):
        super().__init__()
        self.dst = dst
        self.masks = []
        self.functions = set()

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append([keras.ops.convert_to_numpy(t.mask) != 0 for t in self.dst.targets])
        self.functions.add(id(self.model.train_function))


def _fit(model, cb, epochs=3, **kwargs):
    x, y = _data()
    return model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
                     callbacks=[cb] + kwargs.pop("extra", []), **kwargs)


@pytest.mark.parametrize("kind", ["rigl", "set"])
def test_exact_sparsity_and_moving_masks(kind):
    model = _model()
    x, y = _data()
    cb = (RigL(sparsity=0.9, update_every=3, seed=1, data=(x, y), batch_size=64)
          if kind == "rigl" else SET(sparsity=0.9, update_every=3, seed=1))
    spy = _Spy(cb)
    history = _fit(model, cb, extra=[spy])
    counts = [[int(m.sum()) for m in step] for step in spy.masks]
    densities = cb.layer_densities()
    expected = [_dst.n_active(tuple(t.mask.shape), d) for t, d in zip(cb.targets, densities)]
    assert all(c == expected for c in counts)  # every layer's count, after every step
    total = sum(int(np.prod(t.mask.shape)) for t in cb.targets)
    assert history.history["sparsity"][-1] == pytest.approx(1 - sum(expected) / total)
    assert abs(history.history["sparsity"][-1] - 0.9) < 0.002
    # 24 steps, end at 18: updates at 3, 6, ..., 15, each moving round(f(t) * active) per layer
    assert [u["step"] for u in cb.updates] == [3, 6, 9, 12, 15]
    for u in cb.updates:
        f = _dst.drop_fraction_at(u["step"], 0.3, 18)
        assert u["layers"] == {t.name: min(round(f * n), int(np.prod(t.mask.shape)) - n)
                               for t, n in zip(cb.targets, expected)}
    first, last = spy.masks[0], spy.masks[-1]
    assert not np.array_equal(first[0], last[0])  # masks moved
    # the weights moved per update are those that changed between consecutive steps
    moved = [sum(int((a & ~b).sum()) for a, b in zip(spy.masks[s], spy.masks[s - 1]))
             for s in (3, 6)]  # the batch ending at step s+1 follows the update at step s
    assert moved == [cb.updates[0]["moved"], cb.updates[1]["moved"]]
    assert sum(history.history["moved"]) == sum(u["moved"] for u in cb.updates)
    # compacted layers move in place: the traced step is never retraced (no leaked functions)
    assert len(spy.functions) == 1
    # compacted from the first step (out has density 1 under ERK: trains dense)
    assert [layer.compacted for layer in model.layers] == [True, True, False]
    for layer in model.layers:  # pruned weights are zero
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert not kernel[keras.ops.convert_to_numpy(layer.mask) == 0].any()


def _dense_state(optimizer, layer):
    """Adam's (momentum, velocity) of the layer's kernel in the kernel's layout."""
    var = layer.values if layer.compacted else layer.kernel
    idx = optimizer._trainable_variables_indices[optimizer._var_key(var)]
    out = []
    for slot in (optimizer._momentums[idx], optimizer._velocities[idx]):
        value = keras.ops.convert_to_numpy(slot)
        if layer.compacted:
            positions = keras.ops.convert_to_numpy(layer._compact.positions)
            value = _compact.dense_from_values(value, positions, tuple(layer.mask.shape))
        out.append(value)
    return out


@pytest.mark.parametrize("compact", [True, False])
def test_optimizer_state_grown_zero_kept_unchanged(compact):
    model = _model()
    x, y = _data()
    cb = RigL(sparsity=0.8, distribution="uniform", update_every=1000, end_step=2000, seed=2,
              data=(x, y), compact=compact)
    _fit(model, cb, epochs=1)
    layer = model.layers[0]
    assert layer.compacted == compact
    before_mask = keras.ops.convert_to_numpy(layer.mask) != 0
    before_kernel = keras.ops.convert_to_numpy(layer.kernel)
    before_state = _dense_state(model.optimizer, layer)
    assert all(np.abs(s[before_mask]).sum() > 0 for s in before_state)
    moved = cb.update_masks(1000)
    assert moved > 0 and layer.compacted == compact
    mask = keras.ops.convert_to_numpy(layer.mask) != 0
    kept, grown = before_mask & mask, mask & ~before_mask
    assert grown.sum() == (before_mask & ~mask).sum() > 0
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_array_equal(kernel[kept], before_kernel[kept])
    assert not kernel[grown].any() and not kernel[~mask].any()
    for new, old in zip(_dense_state(model.optimizer, layer), before_state):
        np.testing.assert_array_equal(new[kept], old[kept])
        assert not new[grown].any()
    # and training goes on with the new structure
    _fit(model, cb, epochs=1)
    assert int((keras.ops.convert_to_numpy(layer.mask) != 0).sum()) == int(mask.sum())


def test_rigl_grows_where_the_dense_gradient_is_largest():
    model = _model()
    x, y = _data()
    cb = RigL(sparsity=0.9, update_every=1000, end_step=2000, seed=0, data=(x, y), batch_size=64)
    _fit(model, cb, epochs=1)
    step = 1000
    cb._decompact(cb.targets)  # the gradient is taken on the dense kernels
    scores = cb._grow_scores(step)  # the batch and so the scores depend on the step only
    layer = model.layers[1]
    before = keras.ops.convert_to_numpy(layer.mask) != 0
    cb.update_masks(step)
    grown = (keras.ops.convert_to_numpy(layer.mask) != 0) & ~before
    s = scores[1][~before]
    # the grown entries hold the top |gradient| scores among the previously inactive ones
    assert scores[1][grown].min() >= np.sort(s)[::-1][int(grown.sum()) - 1]
    assert scores[1][grown].min() > np.median(s)


def test_determinism_with_a_seed():
    def run(seed):
        model = _model()
        _fit(model, SET(sparsity=0.9, update_every=2, seed=seed), epochs=1)
        return [keras.ops.convert_to_numpy(layer.mask) for layer in model.layers[:2]]
    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_resume_equals_uninterrupted():
    x, y = _data()

    def cb():
        return RigL(sparsity=0.9, update_every=3, end_step=40, seed=3, data=(x, y), batch_size=64)

    whole = _model()
    _fit(whole, cb(), epochs=2)
    split = _model()
    _fit(split, cb(), epochs=1)
    _fit(split, cb(), epochs=2, initial_epoch=1)
    for a, b in zip(whole.layers, split.layers):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.mask),
                                      keras.ops.convert_to_numpy(b.mask))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a.kernel),
                                   keras.ops.convert_to_numpy(b.kernel), atol=1e-6)


def test_keras_save_load_mid_training_then_strip(tmp_path):
    x, y = _data()
    model = _model()
    cb = RigL(sparsity=0.9, update_every=3, end_step=40, seed=4, data=(x, y), batch_size=64)
    _fit(model, cb, epochs=1)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    for a, b in zip(model.layers, loaded.layers):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.mask),
                                      keras.ops.convert_to_numpy(b.mask))
    # the optimizer state, moved in place with the masks, was saved at the new positions
    assert model.layers[0].compacted and not loaded.layers[0].compacted
    for new, old in zip(_dense_state(loaded.optimizer, loaded.layers[0]),
                        _dense_state(model.optimizer, model.layers[0])):
        np.testing.assert_array_equal(new, old)
    # training resumes from the loaded masks (step > 0: no new random masks), compacted again
    cb2 = RigL(sparsity=0.9, update_every=3, end_step=40, seed=4, data=(x, y), batch_size=64)
    counts = [int(keras.ops.convert_to_numpy(layer.mask).sum()) for layer in loaded.layers]
    _fit(loaded, cb2, epochs=2, initial_epoch=1)
    assert loaded.layers[0].compacted and cb2.updates and cb2.updates[0]["step"] == 9
    assert [int(keras.ops.convert_to_numpy(layer.mask).sum()) for layer in loaded.layers] == counts
    stored = sparsekeras.strip(loaded)
    assert isinstance(stored.layers[0], CompactDense)
    assert stored.layers[0].nnz == counts[0]
    np.testing.assert_allclose(stored.predict(x, verbose=0), loaded.predict(x, verbose=0),
                               atol=1e-5)


def test_conv_model_trains_masked_or_compacted():
    keras.utils.set_random_seed(0)
    rs = np.random.default_rng(0)
    x = rs.normal(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              SparseConv2D(16, 3, activation="relu", name="c1"),
                              SparseConv2D(16, 3, activation="relu", name="c2"),
                              keras.layers.Flatten(), SparseDense(2, name="out")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    cb = RigL(sparsity=0.8, update_every=2, end_step=100, seed=0, data=(x, y), batch_size=32)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    assert cb.updates and all(u["moved"] > 0 for u in cb.updates)
    densities = cb.layer_densities()
    for t, d in zip(cb.targets, densities):
        assert int(keras.ops.convert_to_numpy(t.mask).sum()) == _dst.n_active(
            tuple(t.mask.shape), d)
        kernel = keras.ops.convert_to_numpy(t.kernel)
        assert not kernel[keras.ops.convert_to_numpy(t.mask) == 0].any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), "sparsity=1.0"),
    (dict(distribution="normal"), "distribution='normal'"),
    (dict(update_every=0), "update_every=0"),
    (dict(drop_fraction=1.5), "drop_fraction=1.5"),
    (dict(end_step=0), "end_step=0"),
    (dict(decay="linear"), "decay='linear'"),
    (dict(exclude="h1"), "exclude='h1'"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SET(**kwargs)


def test_rescale_init_bad_value():
    with pytest.raises(ValueError, match="rescale_init='yes'"):
        SET(rescale_init="yes")


def test_rescale_init_scales_kept_weights_by_inverse_sqrt_density():
    """At step 0 the kept weights of product layers are the initializer's times
    1 / sqrt(density); a lookup table's are not rescaled; rescale_init=False keeps them. The
    masks do not depend on it."""
    from sparsekeras._dst_callbacks import _kernel_of
    from sparsekeras.layers import SparseEmbedding

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input((5,), dtype="int32")
        h = keras.layers.Flatten()(SparseEmbedding(50, 24, name="emb")(inp))
        h = SparseDense(96, activation="relu", name="h1")(h)
        model = keras.Model(inp, SparseDense(2, name="out")(h))
        # learning rate 0: after fit the weights are the ones set at step 0
        model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss="sparse_categorical_crossentropy")
        return model

    x = np.random.default_rng(0).integers(0, 50, size=(64, 5)).astype("int32")
    y = np.random.default_rng(1).integers(0, 2, size=64).astype("int32")
    fresh = build()
    before = {"emb": fresh.get_layer("emb").embeddings, "h1": fresh.get_layer("h1").kernel,
              "out": fresh.get_layer("out").kernel}
    before = {k: keras.ops.convert_to_numpy(v) for k, v in before.items()}
    runs = {}
    for rescale in (True, False):
        model = build()
        cb = SET(sparsity=0.8, distribution="uniform", update_every=1000, seed=0,
                 compact=False, rescale_init=rescale)
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
        layers = [getattr(t, "layer", t).name for t in cb.targets]
        runs[rescale] = dict(
            names=layers, densities=cb.layer_densities(),
            masks=[keras.ops.convert_to_numpy(t.mask) != 0 for t in cb.targets],
            kernels=[keras.ops.convert_to_numpy(_kernel_of(t)) for t in cb.targets],
            before=[before[n] for n in layers],
            tables=[type(t).__name__ == "_TableTarget" for t in cb.targets])
    on, off = runs[True], runs[False]
    assert on["tables"].count(True) == 1 and len(on["names"]) == 3
    for i, name in enumerate(on["names"]):
        mask, d = on["masks"][i], on["densities"][i]
        np.testing.assert_array_equal(mask, off["masks"][i])
        assert 0 < d < 1, (name, d)
        np.testing.assert_allclose(off["kernels"][i], on["before"][i] * mask, rtol=1e-6)
        scale = 1.0 if on["tables"][i] else 1.0 / math.sqrt(d)
        np.testing.assert_allclose(on["kernels"][i], on["before"][i] * mask * scale, rtol=1e-5,
                                   err_msg=name)


def test_rigl_needs_data_and_unknown_length_needs_end_step():
    with pytest.raises(ValueError, match="data=None"):
        RigL()
    x, y = _data()

    def gen():
        while True:
            yield x[:32], y[:32]

    # a dataset of unknown length: Keras gives params["steps"] = None
    ds = tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec((32, 24), tf.float32),
                               tf.TensorSpec((32,), tf.int32))).take(3)
    with pytest.raises(ValueError, match="end_step=None"):
        _model().fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[SET(seed=0)])


def test_exclude_keeps_a_layer_dense():
    model = _model()
    cb = SET(sparsity=0.8, update_every=3, seed=0, exclude=["h1"])
    _fit(model, cb, epochs=1)
    assert model.layers[0].sparsity == 0.0 and [t.name for t in cb.targets] == ["h2", "out"]


@pytest.mark.slow
def test_guide_example_runs(tmp_path):
    """docs/sparse-training.md: the example runs as written and does what it says."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "sparse-training.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0] + (
        "\nassert abs(rigl.overall_sparsity() - 0.9) < 0.002\n"
        "assert [u['step'] for u in rigl.updates] == list(range(20, 165, 20))\n"
        "assert rigl.updates[0]['moved'] > 0\n"
        "L = sparsekeras.layers\n"
        "assert all(l.compacted for l in model.layers[:2])\n"
        "assert isinstance(small.layers[0], L.CompactDense)\n"
        "np.testing.assert_allclose(small.predict(x[1400:], verbose=0),\n"
        "                           model.predict(x[1400:], verbose=0), atol=1e-5)\n"
        "assert model.evaluate(x[1400:], y[1400:], verbose=0)[1] > 0.8\n"
        "print('guide example OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "guide example OK" in proc.stdout


def test_mixed_precision():
    x, y = _data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _model()
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        cb = RigL(sparsity=0.9, update_every=3, seed=0, data=(x, y), batch_size=64)
        spy = _Spy(cb)
        history = _fit(model, cb, epochs=2, extra=[spy])
        expected = [_dst.n_active(tuple(t.mask.shape), d)
                    for t, d in zip(cb.targets, cb.layer_densities())]
        assert all([int(m.sum()) for m in step] == expected for step in spy.masks)
        assert cb.updates and all(u["moved"] > 0 for u in cb.updates)
        assert model.layers[0].compacted and len(spy.functions) == 1
        assert np.isfinite(history.history["loss"][-1])
    finally:
        keras.mixed_precision.set_global_policy("float32")


_MIRRORED = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, sparsekeras
from sparsekeras.layers import SparseDense
from sparsekeras.callbacks import RigL
rs = np.random.default_rng(0)
x = rs.normal(size=(256, 24)).astype("float32"); y = (x[:, :3].sum(1) > 0).astype("int32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24,)), SparseDense(96, activation="relu", name="h1"),
                              SparseDense(96, activation="relu", name="h2"), SparseDense(2, name="out")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
cb = RigL(sparsity=0.9, update_every=3, seed=0, data=(x, y), batch_size=64)
model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
assert cb.updates and all(u["moved"] > 0 for u in cb.updates), cb.updates
for layer in model.layers:
    for var in ([layer.mask] + ([layer.values] if layer.compacted else [layer.kernel])):
        v = getattr(var, "value", var)
        per = [np.asarray(t) for t in v.values]
        assert len(per) == 2 and all(np.array_equal(per[0], p) for p in per), layer.name
print("compacted", [l.compacted for l in model.layers], "updates", len(cb.updates))
print("MIRRORED OK")
"""


@pytest.mark.slow
def test_mirrored_strategy_replicas_identical(tmp_path):
    """Under MirroredStrategy (two logical CPUs, a fresh process) the masks, compacted values
    and kernels are identical on both replicas after RigL's updates."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MIRRORED], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MIRRORED OK" in proc.stdout and "compacted [True, True, False]" in proc.stdout


def test_ties_broken_at_random_but_seeded():
    # dead units give many equal (zero) gradients: the grown ones among the ties are drawn by
    # the generator, the same for the same seed
    mask = np.zeros((40, 40), bool)
    mask[:4] = True
    w = np.where(mask, 1.0, 0.0)
    w[0, :10] = 0.5  # the 10 smallest active weights
    scores = np.zeros((40, 40))
    scores[10, :5] = 1.0  # 5 clear winners, the other 11 grown among 1435 zeros
    a = _dst.drop_grow(w, mask, 0.1, _dst.rng(0, 7), scores)
    b = _dst.drop_grow(w, mask, 0.1, _dst.rng(0, 7), scores)
    c = _dst.drop_grow(w, mask, 0.1, _dst.rng(1, 7), scores)
    assert len(a[2]) == 16 and set(range(400, 405)) <= set(a[2].tolist())
    assert set(range(10)) <= set(a[1].tolist())  # the ten 0.5s first, then 6 tied 1.0s
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resume_equals_uninterrupted(tmp_path):
    x, y = _data()

    def run(backup_dir, extra=()):
        rigl = RigL(sparsity=0.9, update_every=3, end_step=40, seed=5, data=(x, y),
                    batch_size=64)
        backup = keras.callbacks.BackupAndRestore(str(backup_dir))
        model = _model()
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0,
                  callbacks=[backup, rigl, *extra])
        return model, rigl

    whole, _ = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="interrupted"):
        run(tmp_path / "b", [_Interrupt()])
    resumed, rigl = run(tmp_path / "b")
    assert rigl.updates[0]["step"] == 9  # resumed at step 8: no new masks, updates go on
    for a, b in zip(whole.layers, resumed.layers):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.mask),
                                      keras.ops.convert_to_numpy(b.mask))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a.kernel),
                                   keras.ops.convert_to_numpy(b.kernel), atol=1e-6)


def test_logs_and_tensorboard(tmp_path):
    log_dir = tmp_path / "tb"
    cb = SET(sparsity=0.9, update_every=3, seed=0, log_dir=str(log_dir), log_layers=True)
    history = _fit(_model(), cb, epochs=2)
    assert history.history["moved"][0] == sum(u["moved"] for u in cb.updates if u["step"] < 8)
    assert history.history["moved"][0] > 0 and "sparsity/h1" in history.history
    tags = set()
    for path in [p for p in log_dir.rglob("*") if p.is_file() and "tfevents" in p.name]:
        for raw in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(value.tag for value in event.summary.value)
    assert {"sparsity", "moved", "sparsity/h1", "sparsity/h2", "sparsity/out"} <= tags


# ---- block granularity -----------------------------------------------------------------------

def test_block_helpers():
    rs = np.random.default_rng(0)
    w = rs.normal(size=(6, 8)).astype("float32")
    norms = _dst.block_norms(w, (2, 4))
    assert norms.shape == (3, 2)
    np.testing.assert_allclose(norms[1, 1], np.linalg.norm(w[2:4, 4:8]), rtol=1e-6)
    blocks = np.array([[1, 0], [0, 1], [1, 1]], bool)
    mask = _dst.expand_blocks(blocks, (6, 8), (2, 4))
    assert mask.sum() == 4 * 8 and mask[2:4, 4:8].all() and not mask[2:4, :4].any()
    np.testing.assert_array_equal(_dst.block_mask_of(mask, (2, 4)), blocks)
    # the flat element indices of blocks (1, 1) and (2, 0)
    pos = _dst.block_positions([3, 4], (6, 8), (2, 4))
    expected = np.zeros((6, 8), bool)
    expected[2:4, 4:8] = expected[4:6, :4] = True
    np.testing.assert_array_equal(pos, np.flatnonzero(expected))
    mask[0, 0] = False
    with pytest.raises(ValueError, match="partial blocks"):
        _dst.block_mask_of(mask, (2, 4))
    with pytest.raises(ValueError, match=r"block_shape=\(4, 4\) does not tile"):
        _dst.block_grid((6, 8), (4, 4))
    # a convolution's 2-D view: (kh * kw * c_in, c_out)
    assert _dst.block_grid((3, 3, 2, 8), (1, 4)) == (18, 2)
    for bad in [(0, 4), (1,), "x", (1, 2.0), (True, 4)]:
        with pytest.raises(ValueError, match="block_shape="):
            _dst.check_block_shape(bad)


@pytest.mark.parametrize("kind", ["rigl", "set"])
def test_block_granularity_keeps_whole_blocks(kind):
    model = _model()
    x, y = _data()
    # the 2-unit head is not tiled by (1, 4) blocks: left dense (else a ValueError, below)
    kw = dict(sparsity=0.9, update_every=3, seed=1, granularity="block", block_shape=(1, 4),
              exclude=["out"])
    cb = (RigL(data=(x, y), batch_size=64, **kw) if kind == "rigl" else SET(**kw))
    spy = _Spy(cb)
    _fit(model, cb, extra=[spy])
    grids = [_dst.block_grid(tuple(t.mask.shape), (1, 4)) for t in cb.targets]
    expected = [_dst.n_active(g, d) for g, d in zip(grids, cb.layer_densities())]
    # after every step: each mask made of whole (1, 4) blocks, each layer's block count exact
    for step in spy.masks:
        assert [int(_dst.block_mask_of(m, (1, 4)).sum()) for m in step] == expected
    assert not np.array_equal(spy.masks[0][0], spy.masks[-1][0])  # blocks moved
    assert [u["step"] for u in cb.updates] == [3, 6, 9, 12, 15]
    for u in cb.updates:  # whole blocks moved: round(f(t) * active blocks) x 4 weights
        f = _dst.drop_fraction_at(u["step"], 0.3, 18)
        assert u["layers"] == {t.name: 4 * min(round(f * n), int(np.prod(g)) - n)
                               for t, n, g in zip(cb.targets, expected, grids)}
    # compacted in the (1, 4) block storage from the first step, moved in place: no retrace
    assert [layer.compact_block for layer in model.layers[:2]] == [4, 4]
    assert len(spy.functions) == 1
    for layer in model.layers[:2]:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert not kernel[keras.ops.convert_to_numpy(layer.mask) == 0].any()
    # the inference layer in the same blocks stores exactly the kept blocks, same outputs
    h1 = model.layers[0]
    stored = CompactDense.from_kernel(keras.ops.convert_to_numpy(h1.kernel),
                                      keras.ops.convert_to_numpy(h1.bias), block=4,
                                      activation="relu")
    assert stored.block == 4 and stored.nnz == 4 * expected[0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stored(x)),
                               keras.ops.convert_to_numpy(h1(x)), atol=1e-5)
    assert isinstance(sparsekeras.strip(model).layers[0], CompactDense)


def test_block_granularity_bad_arguments():
    with pytest.raises(ValueError, match="granularity='channel'"):
        SET(granularity="channel")
    with pytest.raises(ValueError, match=r"block_shape=\(1, 0\)"):
        SET(granularity="block", block_shape=(1, 0))
    # 96 units are not a multiple of 64: named with the layer
    with pytest.raises(ValueError, match="layer 'h1'.*block_shape=\\(1, 64\\)"):
        _fit(_model(), SET(granularity="block", block_shape=(1, 64), seed=0), epochs=1)


def test_rigl_learns_digits_at_exact_sparsity():
    """A fast quality check (benchmarks/bench_dst.py --quality has the full one): an MLP
    trained from scratch at 0.9 with RigL on scikit-learn's digits ends far above chance (0.1),
    each layer at exactly its ERK count of kept weights."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), SparseDense(256, activation="relu"),
                              SparseDense(256, activation="relu"), SparseDense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    cb = RigL(sparsity=0.9, update_every=20, seed=0, data=(x[:1400], y[:1400]))
    model.fit(x[:1400], y[:1400], epochs=6, batch_size=32, verbose=0, callbacks=[cb])
    assert len(cb.updates) >= 5 and all(u["moved"] > 0 for u in cb.updates)
    expected = [_dst.n_active(tuple(t.mask.shape), d)
                for t, d in zip(cb.targets, cb.layer_densities())]
    assert [int(keras.ops.convert_to_numpy(t.mask).sum()) for t in cb.targets] == expected
    assert abs(cb.overall_sparsity() - 0.9) < 0.001
    assert model.evaluate(x[1400:], y[1400:], verbose=0)[1] > 0.7


def test_block_granularity_convolutions_trained_masked():
    keras.utils.set_random_seed(0)
    rs = np.random.default_rng(0)
    x = rs.normal(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              SparseConv2D(16, 3, activation="relu", name="c1"),
                              SparseConv2D(16, 3, activation="relu", name="c2"),
                              keras.layers.Flatten(), SparseDense(2, name="out")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    cb = RigL(sparsity=0.8, update_every=2, end_step=100, seed=0, data=(x, y), batch_size=32,
              granularity="block", block_shape=(1, 4), exclude=["out"])
    spy = _Spy(cb)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, spy])
    assert cb.updates and all(u["moved"] > 0 and u["moved"] % 4 == 0 for u in cb.updates)
    grids = [_dst.block_grid(tuple(t.mask.shape), (1, 4)) for t in cb.targets]
    assert grids == [(27, 4), (144, 4)]  # (k_h * k_w * c_in, c_out / 4)
    expected = [_dst.n_active(g, d) for g, d in zip(grids, cb.layer_densities())]
    for step in spy.masks:
        assert [int(_dst.block_mask_of(m, (1, 4)).sum()) for m in step] == expected
    assert not np.array_equal(spy.masks[0][1], spy.masks[-1][1])
    for t in cb.targets:
        kernel = keras.ops.convert_to_numpy(t.kernel)
        assert not kernel[keras.ops.convert_to_numpy(t.mask) == 0].any()
