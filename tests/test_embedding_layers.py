"""The embedding family: SparseEmbedding, SparseReversibleEmbedding, SparsePositionEmbedding and
the stored forms CompactEmbedding / CompactReversibleEmbedding, against their Keras (and
keras_hub) twins on outputs and gradients, masks, configs, pruning in fit, strip, and `.keras`
files loaded in fresh processes; keras_hub's BertBackbone built from config."""
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import callbacks, schedules
from sparsekeras.layers import (CompactEmbedding, CompactReversibleEmbedding, SparseEmbedding,
                                SparsePositionEmbedding, SparseReversibleEmbedding)

from layer_helper import _np, assert_config_has_init_parameters, run_layer_test

VOCAB, DIM = 37, 12   # odd sizes


def _tokens(shape=(3, 5), vocab=VOCAB, seed=0):
    tokens = np.random.default_rng(seed).integers(0, vocab, shape).astype("int32")
    tokens[0, -1] = 0          # a padding token
    tokens[1, 0] = vocab - 1   # the last row of the table
    return tokens


def _mask(kind, shape, seed=1):
    if kind == "ones":
        return np.ones(shape, bool)
    if kind == "zeros":
        return np.zeros(shape, bool)
    return np.random.default_rng(seed).random(shape) < 0.3


def _run_fresh(code, cwd):
    """Run `code` in a fresh Python process (spawned, not forked) in `cwd`; its stdout."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _grads(layer, var, x, upstream):
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return y, tf.convert_to_tensor(tape.gradient(loss, var))


# ---- SparseEmbedding against Embedding ----------------------------------------------------

@pytest.mark.parametrize("kind", ["ones", "random", "zeros"])
def test_sparse_embedding_matches_embedding(kind):
    keras.utils.set_random_seed(0)
    sparse = SparseEmbedding(VOCAB, DIM)
    x = _tokens()
    sparse(x)
    mask = _mask(kind, (VOCAB, DIM))
    (target,) = sparse.pruning_targets()
    target.set_mask(mask)
    assert target.sparsity == pytest.approx(1 - mask.mean())
    table = _np(sparse.embeddings)
    assert np.all(table[~mask] == 0)

    twin = keras.layers.Embedding(VOCAB, DIM)
    twin.build()
    twin.embeddings.assign(table)
    upstream = np.random.default_rng(2).standard_normal(x.shape + (DIM,)).astype("float32")
    y, g = _grads(sparse, sparse.embeddings, x, upstream)
    y_ref, g_ref = _grads(twin, twin.embeddings, x, upstream)
    np.testing.assert_allclose(_np(y), _np(y_ref), rtol=0, atol=0)
    np.testing.assert_allclose(_np(g), _np(g_ref), rtol=1e-6, atol=1e-6)

    # an optimizer step keeps the pruned entries at zero (the constraint), the kept ones move
    model = keras.Sequential([keras.Input((5,), dtype="int32"), sparse])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.train_on_batch(x, upstream)
    after = _np(sparse.embeddings)
    assert np.all(after[~mask] == 0)
    touched = np.zeros((VOCAB, DIM), bool)
    touched[np.unique(x)] = True
    assert np.any(after[mask & touched] != table[mask & touched]) == bool(mask.any())

    # the stored form: same lookups, and the gradient of its stored values is the table's
    stored = sparse.to_stored()
    assert type(stored) is CompactEmbedding and stored.nnz == int(mask.sum())
    y_s, g_s = _grads(stored, stored.values, x, upstream)
    _, g_table = _grads(sparse, sparse.embeddings, x, upstream)
    np.testing.assert_allclose(_np(y_s), _np(sparse(x)), rtol=0, atol=1e-6)
    rows, cols = np.nonzero(after)
    np.testing.assert_allclose(_np(g_s), _np(g_table)[rows, cols], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stored.to_dense_table(), after)


def test_sparse_embedding_config_and_clone():
    layer = SparseEmbedding(VOCAB, DIM, embeddings_initializer="normal", mask_zero=True,
                            embeddings_regularizer="l2", prunable=False, name="emb")
    x = _tokens()
    layer(x)
    assert_config_has_init_parameters(layer)
    config = layer.get_config()
    assert config["prunable"] is False and config["mask_zero"] is True
    assert not {"lora_rank", "quantization_config"} & set(config)
    assert layer.pruning_targets() == []   # prunable=False
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    for clone in (SparseEmbedding.from_config(config),
                  keras.saving.deserialize_keras_object(serialized)):
        assert type(clone) is SparseEmbedding
        clone(x)
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(_np(clone(x)), _np(layer(x)))
        assert clone.get_config() == config
    # Keras' `weights=` argument gives the initial table
    table = np.arange(VOCAB * DIM, dtype="float32").reshape(VOCAB, DIM)
    init = SparseEmbedding(VOCAB, DIM, weights=[table])
    np.testing.assert_array_equal(_np(init(x)), table[x])


def test_sparse_embedding_mask_zero():
    x = _tokens()
    sparse = SparseEmbedding(VOCAB, DIM, mask_zero=True)
    sparse(x)
    sparse.pruning_targets()[0].set_mask(_mask("random", (VOCAB, DIM)))
    twin = sparse.to_keras()
    assert type(twin) is keras.layers.Embedding and twin.mask_zero
    stored = sparse.to_stored()
    expected = x != 0
    for layer in (sparse, twin, stored):
        np.testing.assert_array_equal(_np(layer.compute_mask(x)), expected)
    # the mask reaches a masking consumer (pooling averages the non-padding steps only)
    outs = []
    for layer in (sparse, twin, stored):
        inputs = keras.Input((5,), dtype="int32")
        outs.append(_np(keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(
            layer(inputs)))(x)))
    manual = (_np(sparse(x)) * expected[..., None]).sum(1) / expected.sum(1, keepdims=True)
    for out in outs:
        np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-6)


def test_unsupported_options_raise():
    for key, value in (("lora_rank", 4), ("quantization_config", "int8")):
        with pytest.raises(ValueError, match=key):
            SparseEmbedding(VOCAB, DIM, **{key: value})
    layer = SparseEmbedding(VOCAB, DIM)
    layer.build()
    with pytest.raises(ValueError, match="quantized"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match="LoRA"):
        layer.enable_lora(4)
    for bad in (dict(input_dim=0, output_dim=3, nnz=0), dict(input_dim=4, output_dim=3, nnz=13)):
        with pytest.raises(ValueError, match="Received"):
            CompactEmbedding(**bad)

    # sparsify keeps a LoRA Embedding dense and says why
    inputs = keras.Input((5,), dtype="int32")
    lora = keras.layers.Embedding(VOCAB, DIM, name="lora_emb")
    model = keras.Model(inputs, lora(inputs))
    lora.enable_lora(2)
    with pytest.warns(UserWarning, match="lora_emb"):
        _, report = sparsekeras.sparsify(model, return_report=True)
    (row,) = [r for r in report.rows if r["path"] == "lora_emb"]
    assert row["status"] == "kept" and "LoRA" in row["reason"]


# ---- the tied embedding ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ones", "random", "zeros"])
def test_sparse_reversible_embedding_matches(kind):
    keras.utils.set_random_seed(0)
    x = _tokens()
    hidden = np.random.default_rng(3).standard_normal((3, 5, DIM)).astype("float32")
    up = np.random.default_rng(4).standard_normal((3, 5, VOCAB)).astype("float32")
    sparse = SparseReversibleEmbedding(VOCAB, DIM, logit_soft_cap=5.0)
    sparse(x)
    mask = _mask(kind, (VOCAB, DIM))
    sparse.pruning_targets()[0].set_mask(mask)
    twin = sparse.to_keras()
    assert type(twin) is keras.layers.ReversibleEmbedding and twin.logit_soft_cap == 5.0
    stored = sparse.to_stored()
    assert type(stored) is CompactReversibleEmbedding and stored.nnz == int(mask.sum())

    def reverse(layer, var):
        h = tf.constant(hidden)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(h)
            logits = layer(h, reverse=True)
            loss = tf.reduce_sum(logits * up)
        return [_np(logits), _np(tape.gradient(loss, h)),
                _np(tf.convert_to_tensor(tape.gradient(loss, var)))]

    ref = reverse(twin, twin.embeddings)
    got = reverse(sparse, sparse.embeddings)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    logits, dh, dvalues = reverse(stored, stored.values)
    np.testing.assert_allclose(logits, ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dh, ref[1], rtol=1e-5, atol=1e-5)
    rows, cols = np.nonzero(mask & (_np(sparse.embeddings) != 0))
    np.testing.assert_allclose(dvalues, ref[2][rows, cols], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(stored(x)), _np(twin(x)), rtol=0, atol=1e-6)


def test_untied_reversible_embedding_prunes_both():
    x = _tokens()
    layer = SparseReversibleEmbedding(VOCAB, DIM, tie_weights=False, mask_zero=True)
    h = layer(x)
    assert_config_has_init_parameters(layer)
    targets = layer.pruning_targets()
    assert [t.label for t in targets] == ["embeddings", "reverse_embeddings"]
    for i, t in enumerate(targets):
        t.set_mask(_mask("random", tuple(t.mask.shape), seed=i))
    twin = layer.to_keras()   # an untied layer has no stored form: the twin holds the zeros
    assert type(layer.to_stored()) is keras.layers.ReversibleEmbedding
    np.testing.assert_allclose(_np(twin(h, reverse=True)), _np(layer(h, reverse=True)),
                               rtol=1e-6, atol=1e-6)
    assert np.mean(_np(twin.reverse_embeddings) == 0) >= 0.6


def test_mixed_precision_matches_keras():
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((5,), dtype="int32")
        emb = keras.layers.ReversibleEmbedding(VOCAB, DIM, name="emb")
        model = keras.Model(inputs, emb(keras.layers.Dense(DIM)(emb(inputs)[:, 0]), reverse=True))
        sparse = sparsekeras.sparsify(model)
        sparse.get_layer("emb").pruning_targets()[0].set_mask(_mask("random", (VOCAB, DIM)))
        x = _tokens()
        y = sparse(x)
        twin = sparsekeras.densify(sparse)(x)
        stored = sparsekeras.strip(sparse)
        assert type(stored.get_layer("emb")) is CompactReversibleEmbedding
        # the logits of the float32 table are float32 in all three forms, as in Keras
        assert y.dtype == twin.dtype == stored(x).dtype == model(x).dtype
        np.testing.assert_allclose(_np(stored(x)), _np(y), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(_np(twin), _np(y), rtol=1e-3, atol=1e-3)
    finally:
        keras.config.set_dtype_policy(before)


# ---- keras_hub's PositionEmbedding, without keras_hub ----------------------------------------

def test_sparse_position_embedding_layer():
    def set_mask(layer, x):
        layer.pruning_targets()[0].set_mask(_mask("random", (9, 4)))

    layer = run_layer_test(SparsePositionEmbedding, dict(sequence_length=9), (2, 6, 4),
                           (2, 6, 4), expected_num_trainable_weights=1,
                           expected_num_non_trainable_weights=1, build_fn=set_mask)
    assert layer.sparsity == pytest.approx(1 - _mask("random", (9, 4)).mean())


# ---- pruning in fit -------------------------------------------------------------------------

def _tiny_model(tied=False):
    inputs = keras.Input((6,), dtype="int32")
    emb = (keras.layers.ReversibleEmbedding(VOCAB, DIM, name="emb") if tied
           else keras.layers.Embedding(VOCAB, DIM, name="emb"))
    h = keras.layers.GlobalAveragePooling1D()(emb(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(h))


@pytest.mark.parametrize("granularity", ["unstructured", "channel", "n:m"])
def test_gradual_pruning_in_fit(granularity):
    keras.utils.set_random_seed(0)
    model = sparsekeras.sparsify(_tiny_model(), layer_names=["emb"])
    emb = model.get_layer("emb")
    assert type(emb) is SparseEmbedding
    x = _tokens((64, 6))
    y = (x.sum(1) % 2).astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=8, frequency=2)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        callbacks=[callbacks.GradualPruning(schedule, granularity=granularity,
                                                            n_m=(1, 4))])
    table = _np(emb.embeddings)
    if granularity == "n:m":   # 1 of every 4 consecutive entries of each token's row
        assert np.all(np.count_nonzero(table.reshape(VOCAB, DIM // 4, 4), axis=-1) <= 1)
        assert np.mean(table == 0) >= 0.75
        return
    assert np.mean(table == 0) >= 0.89, np.mean(table == 0)
    assert history.history["sparsity/emb/embeddings"][-1] >= 0.89
    if granularity == "channel":   # whole tokens: each row kept whole or pruned whole
        kept_rows = np.any(table != 0, axis=1)
        assert np.all(np.all(table[kept_rows] != 0, axis=1))
        assert 0 < kept_rows.sum() <= int(np.ceil(0.11 * VOCAB))


# ---- saving, strip, fresh processes ----------------------------------------------------------

def _pruned_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,), dtype="int32")
    words = keras.layers.Embedding(VOCAB, DIM, mask_zero=True, name="words")
    tied = keras.layers.ReversibleEmbedding(VOCAB, DIM, name="tied")
    h = keras.layers.GlobalAveragePooling1D()(words(inputs)) + keras.layers.GlobalAveragePooling1D()(
        tied(inputs))
    logits = tied(keras.layers.Dense(DIM, name="mix")(h), reverse=True)
    model = sparsekeras.sparsify(keras.Model(inputs, logits))
    for i, t in enumerate(callbacks.prunable_targets(model)):
        t.set_mask(_mask("random", tuple(t.mask.shape), seed=i))
    return model


def test_keras_round_trip_and_strip_in_fresh_process(tmp_path):
    model = _pruned_model()
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"SparseEmbedding", "SparseReversibleEmbedding"} <= kinds
    x = _tokens()
    y = _np(model(x))
    stripped = sparsekeras.strip(model)
    skinds = {type(layer).__name__ for layer in stripped.layers}
    assert {"CompactEmbedding", "CompactReversibleEmbedding"} <= skinds, skinds
    np.testing.assert_allclose(_np(stripped(x)), y, rtol=1e-5, atol=1e-5)
    dense = sparsekeras.densify(model)
    assert {"Embedding", "ReversibleEmbedding"} <= {type(layer).__name__ for layer in dense.layers}
    np.testing.assert_allclose(_np(dense(x)), y, rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "pruned.keras")
    stripped.save(tmp_path / "stripped.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = _run_fresh("""
        import numpy as np, keras, sparsekeras
        x, y = np.load("x.npy"), np.load("y.npy")
        for name in ("pruned", "stripped"):
            m = keras.saving.load_model(name + ".keras")
            zeros = [float(np.mean(keras.ops.convert_to_numpy(l.embeddings) == 0))
                     for l in m.layers if hasattr(l, "embeddings")]
            err = float(np.abs(keras.ops.convert_to_numpy(m(x)) - y).max())
            print(name, err, min(zeros) if zeros else -1.0)
    """, tmp_path)
    for line in out.strip().splitlines():
        name, err, zeros = line.split()
        assert float(err) <= 1e-5, line
        if name == "pruned":   # the masks were saved: the tables are still pruned
            assert float(zeros) >= 0.6, line


def test_compact_embedding_file_scales_with_nnz(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {}
    for density in (1.0, 0.1):
        table = rng.standard_normal((2000, 64)).astype("float32")
        table[rng.random(table.shape) >= density] = 0
        layer = CompactEmbedding.from_table(table)
        assert layer.nnz == np.count_nonzero(table)
        inputs = keras.Input((4,), dtype="int32")
        path = tmp_path / f"d{density}.keras"
        keras.Model(inputs, layer(inputs)).save(path)
        sizes[density] = path.stat().st_size
    # values + indices (8 bytes per entry) plus indptr: 10% of the entries, ~10% of the bytes
    assert sizes[0.1] < 0.2 * sizes[1.0], sizes


def test_compact_embedding_fine_tunes_values():
    table = np.where(np.random.default_rng(0).random((VOCAB, DIM)) < 0.2, 1.0, 0.0).astype("float32")
    layer = CompactEmbedding.from_table(table)
    inputs = keras.Input((5,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = _tokens()
    before = _np(layer.values)
    model.train_on_batch(x, np.zeros((3, 5, DIM), "float32"))
    after = _np(layer.values)
    assert layer.trainable_weights == [layer.values]
    assert np.any(after != before) and after.shape == before.shape
    dense = layer.to_dense_table()
    assert np.all(dense[table == 0] == 0)   # the pattern is fixed


def test_out_of_range_token_raises():
    layer = CompactEmbedding.from_table(np.eye(4, dtype="float32"))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        layer(np.array([[1, 4]]))


# ---- keras_hub ------------------------------------------------------------------------------

def _hub():
    return pytest.importorskip("keras_hub")


def test_keras_hub_layers_convert():
    keras_hub = _hub()
    x = np.random.default_rng(0).standard_normal((2, 7, 8)).astype("float32")
    hub_pos = keras_hub.layers.PositionEmbedding(sequence_length=10)
    hub_pos(x)
    pos = SparsePositionEmbedding.from_keras(hub_pos)
    for kwargs in ({}, {"start_index": 2}, {"positions": np.array([3, 1, 0, 2, 9, 9, 4])}):
        np.testing.assert_array_equal(_np(pos(x, **kwargs)), _np(hub_pos(x, **kwargs)))
    pos.pruning_targets()[0].set_mask(_mask("random", (10, 8)))
    back = pos.to_keras()
    assert type(back) is keras_hub.layers.PositionEmbedding
    np.testing.assert_array_equal(_np(back(x)), _np(pos(x)))

    # TokenAndPositionEmbedding builds its sublayers itself: both become sparse in place
    tokens = _tokens((2, 7))
    tape = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 10, DIM)
    inputs = keras.Input((7,), dtype="int32")
    model = keras.Model(inputs, tape(inputs))
    y = _np(model(tokens))
    sparse, report = sparsekeras.sparsify(model, return_report=True)
    converted = {r["class"]: r["to"] for r in report.converted()}
    assert converted == {"ReversibleEmbedding": "SparseReversibleEmbedding",
                         "PositionEmbedding": "SparsePositionEmbedding"}, converted
    assert report.prunable_fraction == 1.0
    np.testing.assert_allclose(_np(sparse(tokens)), y, rtol=0, atol=1e-6)


def test_bert_backbone_embeddings_convert():
    keras_hub = _hub()
    backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
                                             hidden_dim=32, intermediate_dim=64,
                                             max_sequence_length=16)
    tokens = _tokens((4, 16), vocab=100)
    x = {"token_ids": tokens, "segment_ids": (tokens % 2).astype("int32"),
         "padding_mask": np.ones_like(tokens)}
    y = _np(backbone(x)["sequence_output"])
    sparse, report = sparsekeras.sparsify(backbone, return_report=True)
    print(report)
    converted = {r["path"]: r["to"] for r in report.converted()}
    assert converted["token_embedding"] == "SparseReversibleEmbedding"
    assert converted["position_embedding"] == "SparsePositionEmbedding"
    assert converted["segment_embedding"] == "SparseEmbedding"
    np.testing.assert_allclose(_np(sparse(x)["sequence_output"]), y, rtol=1e-5, atol=1e-5)
    labels = {t.name for t in callbacks.prunable_targets(sparse)}
    assert {"token_embedding/embeddings", "position_embedding/embeddings",
            "segment_embedding/embeddings"} <= labels
    assert sparsekeras.coverage(sparse) >= 0.95
    stripped = sparsekeras.strip(sparse)
    kinds = {type(layer).__name__
             for layer in stripped._flatten_layers(include_self=False, recursive=True)}
    assert {"CompactReversibleEmbedding", "CompactEmbedding"} <= kinds, kinds
    np.testing.assert_allclose(_np(stripped(x)["sequence_output"]), y, rtol=1e-5, atol=1e-5)
