"""Issue 24, the reach of shrinking structured pruning: a keras_hub encoder under a classifier
head (its feedforward units shrink; its heads are reported, with the reason), and the
zero-holds of coupled pruning re-established in a fit resumed from a `.keras` file."""
import warnings

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras import _groups
from sparsekeras.callbacks import GradualPruning
from sparsekeras.schedules import ConstantSparsity, PolynomialDecay


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else keras.ops.convert_to_numpy(x))


def _recorded(fn, *args, **kwargs):
    """fn's result and its warnings' messages (pytest.warns would re-raise TensorFlow's own
    DeprecationWarnings at the test's line, where the filters turn them into errors)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in record]


def _classifier_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---- keras_hub's TransformerEncoder ------------------------------------------------------------

VOCAB, SEQ, HIDDEN, FF = 50, 8, 32, 64


def _bert_classifier(keras_hub):
    """A user's model: a BertBackbone built from config (no weights) under a Dense head."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2,
                                             hidden_dim=HIDDEN, intermediate_dim=FF,
                                             max_sequence_length=SEQ)
    inputs = {k: keras.Input((SEQ,), dtype="int32", name=k)
              for k in ("token_ids", "segment_ids", "padding_mask")}
    logits = keras.layers.Dense(2, name="cls")(backbone(inputs)["pooled_output"])
    return keras.Model(inputs, logits)


def _tokens(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(0, VOCAB, (n, SEQ)).astype("int32"),
            "segment_ids": np.zeros((n, SEQ), "int32"),
            "padding_mask": (np.arange(SEQ)[None, :] < rng.integers(3, SEQ + 1, (n, 1))
                             ).astype("int32")}


def _encoders(model):
    return [layer for layer in model._flatten_layers(recursive=True)
            if type(layer).__name__ == "TransformerEncoder"]


def test_keras_hub_bert_ffn_units_pruned_in_fit_and_shrunk(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(21)
    model = sparsekeras.sparsify(_bert_classifier(keras_hub))
    model.compile(keras.optimizers.Adam(1e-3), _classifier_loss())
    x, y = _tokens(32), np.arange(32) % 2
    _, messages = _recorded(model.fit, x, y, batch_size=8, epochs=1, verbose=0, callbacks=[
        GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="channel",
                       coupled=True),
        GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="head")])
    # Never silent: the heads are named as not prunable, with the reason, and the head
    # callback says it prunes nothing.
    heads = [m for m in messages if "heads are not pruned" in m]
    assert heads and all(f"transformer_layer_{i}/self_attention_layer" in heads[0]
                         for i in (0, 1)), messages
    assert "hidden_dim // num_heads" in heads[0]
    assert any("found no prunable head group" in m for m in messages), messages

    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    assert any("token_embedding" in m for m in messages), messages  # not followed, kept anyway
    print(report)
    rows = {r["layers"][0]: r for r in report.rows}
    for i in (0, 1):
        row = rows[f"transformer_layer_{i}/feedforward_intermediate_dense"]
        assert row["status"] == "shrunk" and (row["size"], row["kept"]) == (FF, FF // 2), row
    encoders = _encoders(small)
    assert len(encoders) == 2
    for enc in encoders:
        assert type(enc).__module__.startswith("keras_hub."), type(enc)
        assert (enc.intermediate_dim, enc.num_heads) == (FF // 2, 2)
        assert tuple(enc._feedforward_intermediate_dense.kernel.shape) == (HIDDEN, FF // 2)
        assert tuple(enc._feedforward_output_dense.kernel.shape) == (FF // 2, HIDDEN)
    # Parameters drop by the removed units' rows and columns (and the pooler's): counted from
    # the layers, not written down.
    per_unit = HIDDEN + 1 + HIDDEN  # intermediate column and bias, output row
    pooled = rows["pooled_dense"]
    assert pooled["status"] == "shrunk"
    removed = 2 * (FF // 2) * per_unit + (pooled["size"] - pooled["kept"]) * (HIDDEN + 1 + 2)
    assert report.params_after == small.count_params() == report.params_before - removed
    xt = _tokens(6, seed=1)
    np.testing.assert_allclose(_np(small(xt)), _np(model(xt)), rtol=1e-4, atol=1e-5)
    path = tmp_path / "small.keras"
    small.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(again(xt)), _np(model(xt)), rtol=1e-4, atol=1e-5)


def test_keras_hub_encoder_zero_heads_are_reported_kept_with_the_reason():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(22)
    model = _bert_classifier(keras_hub)
    (enc,) = [e for e in _encoders(model) if e.name == "transformer_layer_0"]
    mha = enc._self_attention_layer
    out = _np(mha._output_dense.kernel)
    out[0] = 0  # head 0 contributes nothing
    mha._output_dense.kernel.assign(out)
    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    assert any("kept pruned channels whole" in m and "hidden_dim // num_heads" in m
               for m in messages), messages
    (row,) = [r for r in report.rows if r["kind"] == "head"]
    assert row["status"] == "kept whole" and row["zero"] == 1
    assert row["layers"] == ["transformer_layer_0/self_attention_layer"]
    assert [e.num_heads for e in _encoders(small)] == [2, 2]
    x = _tokens(4)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


# ---- the zero-holds in a fit resumed from a .keras file -----------------------------------------

def _bn_net():
    i = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="conv")(i)
    a = keras.layers.BatchNormalization(name="bn")(a)
    a = keras.layers.ReLU()(a)
    a = keras.layers.GlobalAveragePooling2D()(a)
    a = keras.layers.Dense(12, activation="relu", name="hidden")(a)
    return keras.Model(i, keras.layers.Dense(3, name="out")(a))


def _pruned_channels_are_zero(model):
    """Asserts that every channel whose kernel columns are all masked has a zero bias (and zero
    BatchNorm scale and offset); returns the number of such channels."""
    count = 0
    for name in ("conv", "hidden"):
        layer = model.get_layer(name)
        m = _np(layer.mask)
        cut = ~m.reshape(-1, m.shape[-1]).any(axis=0)
        count += int(cut.sum())
        assert np.all(_np(layer.bias)[cut] == 0), (name, _np(layer.bias)[cut])
        if name == "conv":
            bn = model.get_layer("bn")
            for v in (bn.gamma, bn.beta):
                assert np.all(_np(v)[cut] == 0), (v.path, _np(v)[cut])
    return count


def test_zero_holds_are_re_established_in_a_fit_resumed_from_a_keras_file(tmp_path):
    keras.utils.set_random_seed(23)
    rng = np.random.default_rng(23)
    x, y = rng.random((64, 6, 6, 3), dtype=np.float32), rng.integers(0, 3, 64)
    model = sparsekeras.sparsify(_bn_net())
    # A large step, so that a bias the callback no longer holds moves off zero at once.
    model.compile(keras.optimizers.Adam(0.05), _classifier_loss())

    def pruning():  # the same schedule in both fits: over at step 4 (of 8 in the first fit)
        return GradualPruning(PolynomialDecay(0.0, 0.5, 0, 4, frequency=2),
                              granularity="channel", coupled=True)

    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[pruning()])
    pruned = _pruned_channels_are_zero(model)
    assert pruned == 4 + 6  # half of conv's 8 filters and of hidden's 12 units
    units = (sparsekeras.shrink(model).get_layer("conv").filters,
             sparsekeras.shrink(model).get_layer("hidden").units)
    assert units == (4, 6)

    path = tmp_path / "pruned.keras"
    model.save(path)
    resumed = keras.saving.load_model(path)
    assert int(resumed.optimizer.iterations.numpy()) == 8  # past the schedule's end
    resumed.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[pruning()])
    assert _pruned_channels_are_zero(resumed) == pruned
    small = sparsekeras.shrink(resumed)
    assert (small.get_layer("conv").filters, small.get_layer("hidden").units) == units
    np.testing.assert_allclose(_np(small(x[:8])), _np(resumed(x[:8])), rtol=1e-4, atol=1e-5)
