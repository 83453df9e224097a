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

from layer_helper import assert_loads_without_sparsekeras


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

VOCAB, SEQ, HIDDEN, FF, HEADS = 50, 8, 32, 64, 4


def _bert_classifier(keras_hub):
    """A user's model: a BertBackbone built from config (no weights) under a Dense head."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=2,
                                             num_heads=HEADS, hidden_dim=HIDDEN,
                                             intermediate_dim=FF, max_sequence_length=SEQ,
                                             name="bert_backbone")  # not bert_backbone_3
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


def test_keras_hub_bert_ffn_units_and_heads_pruned_in_fit_and_shrunk(tmp_path):
    """Half the feedforward units and half the heads of each encoder go; the encoders, whose
    config cannot hold fewer heads of the same size, become plain Keras blocks."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(21)
    model = sparsekeras.sparsify(_bert_classifier(keras_hub))
    model.compile(keras.optimizers.Adam(1e-3), _classifier_loss())
    x, y = _tokens(32), np.arange(32) % 2
    _, messages = _recorded(model.fit, x, y, batch_size=8, epochs=1, verbose=0, callbacks=[
        GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="channel",
                       coupled=True),
        GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="head")])
    # The residual width is named as not pruned (LayerNormalization); the units and heads are.
    (kept,) = [m for m in messages if "channels are not pruned" in m]
    assert "transformer_layer_1/feedforward_output_dense" in kept
    assert "feedforward_intermediate_dense" not in kept
    assert not [m for m in messages if "heads are not pruned" in m or "prunes nothing" in m]

    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    print(report)
    assert any("token_embedding" in m for m in messages), messages  # not followed, kept anyway
    rows = {(r["kind"], r["layers"][0]): r for r in report.rows}
    for i in (0, 1):
        ff = rows[("channel", f"transformer_layer_{i}/feedforward_intermediate_dense")]
        heads = rows[("head", f"transformer_layer_{i}/self_attention_layer")]
        assert ff["status"] == heads["status"] == "shrunk", (ff, heads)
        assert (ff["size"], ff["kept"], heads["size"], heads["kept"]) == (FF, FF // 2, HEADS,
                                                                          HEADS // 2)
    _no_sparsekeras_class(small)
    assert not _encoders(small)
    for i in (0, 1):
        mha = small.get_layer("bert_backbone").get_layer(
            f"transformer_layer_{i}_self_attention_layer")
        assert isinstance(mha, keras.layers.MultiHeadAttention)
        assert (mha.num_heads, mha.key_dim) == (HEADS // 2, HIDDEN // HEADS)
    # Parameters drop by what the removed units and heads held (and the pooler's units):
    # counted from the sizes, not written down.
    key_dim = HIDDEN // HEADS
    per_head = 3 * (HIDDEN * key_dim + key_dim) + key_dim * HIDDEN
    per_unit = HIDDEN + 1 + HIDDEN  # intermediate column and bias, output row
    pooled = rows[("channel", "pooled_dense")]
    assert pooled["status"] == "shrunk"
    removed = 2 * ((HEADS // 2) * per_head + (FF // 2) * per_unit) + (
        pooled["size"] - pooled["kept"]) * (HIDDEN + 1 + 2)
    assert report.params_after == small.count_params() == report.params_before - removed
    xt = _tokens(6, seed=1)  # padded sequences: the padding mask is rebuilt as the encoder's
    assert xt["padding_mask"].min() == 0
    np.testing.assert_allclose(_np(small(xt)), _np(model(xt)), rtol=1e-4, atol=1e-5)
    # Saved, it loads and predicts in a fresh interpreter with keras_hub (its embeddings) and
    # without sparsekeras.
    assert_loads_without_sparsekeras(small, xt, _np(model(xt)), tmp_path, imports=["keras_hub"],
                                     rtol=1e-4, atol=1e-5)


def _no_sparsekeras_class(model):
    for _, layer, path in sparsekeras._tree.walk(model):
        assert type(layer).__module__.startswith(("keras.", "keras_hub.")), (path, type(layer))


def test_keras_hub_encoder_without_mask_argument_keeps_heads_shrinks_ffn():
    """An encoder called without padding_mask: its feedforward units shrink (the keras_hub
    layer rebuilt with a smaller intermediate_dim); its zero heads are reported kept, with the
    reason."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(22)
    i = keras.Input((SEQ, HIDDEN))
    enc = keras_hub.layers.TransformerEncoder(intermediate_dim=FF, num_heads=HEADS,
                                              activation="relu", name="enc")
    pooled = keras.layers.GlobalAveragePooling1D()(enc(i))
    model = keras.Model(i, keras.layers.Dense(3, name="out")(pooled))
    ff1 = enc._feedforward_intermediate_dense
    k, bias = _np(ff1.kernel), _np(ff1.bias)
    k[:, :10], bias[:10] = 0, 0  # 10 units give zero
    ff1.kernel.assign(k)
    ff1.bias.assign(bias)
    out = _np(enc._self_attention_layer._output_dense.kernel)
    out[1] = 0  # head 1 contributes nothing
    enc._self_attention_layer._output_dense.kernel.assign(out)

    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    assert any("kept pruned channels whole" in m and "without padding_mask" in m
               for m in messages), messages
    rows = {r["kind"]: r for r in report.rows}
    assert rows["head"]["status"] == "kept whole" and rows["head"]["zero"] == 1
    assert rows["head"]["layers"] == ["enc/self_attention_layer"]
    assert rows["channel"]["status"] == "shrunk" and rows["channel"]["kept"] == FF - 10
    (new,) = _encoders(small)
    assert type(new).__module__.startswith("keras_hub.")
    assert (new.intermediate_dim, new.num_heads) == (FF - 10, HEADS)
    assert report.params_before - report.params_after == 10 * (HIDDEN + 1 + HIDDEN)
    x = np.random.default_rng(2).random((4, SEQ, HIDDEN), dtype=np.float32)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


def test_keras_hub_pre_norm_encoder_with_padding_mask_written_out_exactly():
    """normalize_first=True (GPT-2-like order), zero heads and units set by hand: the encoder
    is written out as Keras layers with fewer heads; same outputs on padded sequences."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(26)
    i = keras.Input((SEQ, HIDDEN))
    pad = keras.Input((SEQ,), dtype="int32")
    enc = keras_hub.layers.TransformerEncoder(intermediate_dim=FF, num_heads=HEADS,
                                              normalize_first=True, dropout=0.1, name="enc")
    h = keras.layers.Dense(HIDDEN, name="pre")(i)
    model = keras.Model([i, pad], keras.layers.Dense(3, name="out")(
        keras.layers.GlobalAveragePooling1D()(enc(h, padding_mask=pad))))
    mha, ff1 = enc._self_attention_layer, enc._feedforward_intermediate_dense
    out = _np(mha._output_dense.kernel)
    out[[0, 2]] = 0  # heads 0 and 2 contribute nothing
    mha._output_dense.kernel.assign(out)
    k, bias = _np(ff1.kernel), _np(ff1.bias)
    k[:, 5:20], bias[5:20] = 0, 0
    ff1.kernel.assign(k)
    ff1.bias.assign(bias)
    (small, report), _ = _recorded(sparsekeras.shrink, model, return_report=True)
    assert {(r["kind"], r["status"], r["kept"]) for r in report.rows} == {
        ("head", "shrunk", HEADS - 2), ("channel", "shrunk", FF - 15)}, report
    assert not _encoders(small)
    new_mha = small.get_layer("enc_self_attention_layer")
    assert (new_mha.num_heads, new_mha.key_dim) == (HEADS - 2, HIDDEN // HEADS)
    assert small.get_layer("enc_feedforward_intermediate_dense").units == FF - 15
    rng = np.random.default_rng(3)
    x = [rng.random((4, SEQ, HIDDEN), dtype=np.float32),
         (np.arange(SEQ)[None, :] < np.array([[2], [5], [8], [7]])).astype("int32")]
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


# ---- separable convolutions and embeddings pruned by the callback -------------------------------

def test_embedding_and_separable_convolution_groups_pruned_in_fit_and_shrunk():
    keras.utils.set_random_seed(24)
    i = keras.Input((10,), dtype="int32")
    e = keras.layers.Embedding(30, 16, name="emb")(i)
    c = keras.layers.Conv1D(12, 3, activation="relu", name="c1")(e)
    s = keras.layers.SeparableConv1D(10, 3, depth_multiplier=2, activation="relu",
                                     name="sep")(c)
    pooled = keras.layers.GlobalAveragePooling1D()(s)
    model = sparsekeras.sparsify(keras.Model(i, keras.layers.Dense(3, name="out")(pooled)))
    assert type(model.get_layer("sep")).__name__ == "SparseSeparableConv1D"
    assert type(model.get_layer("emb")).__name__ == "SparseEmbedding"
    model.compile(keras.optimizers.Adam(0.01), _classifier_loss())
    rng = np.random.default_rng(24)
    x, y = rng.integers(0, 30, (48, 10)).astype("int32"), rng.integers(0, 3, 48)
    _, messages = _recorded(model.fit, x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        GradualPruning(PolynomialDecay(0.0, 0.5, 0, 3, frequency=1), granularity="channel",
                       coupled=True)])
    assert not [m for m in messages if "not pruned" in m or "prunes nothing" in m], messages
    # The table's columns and the pointwise kernel's filters are pruned, the separable
    # convolution's bias held at zero there (a fit after the schedule: it stayed zero).
    table = _np(model.get_layer("emb").embeddings)
    assert int((~table.any(axis=0)).sum()) == 8
    sep = model.get_layer("sep")
    cut = ~_np(sep.pointwise_kernel).reshape(-1, 10).any(axis=0)
    assert int(cut.sum()) == 5 and np.all(_np(sep.bias)[cut] == 0)
    small, report = sparsekeras.shrink(model, return_report=True)
    assert all(r["status"] == "shrunk" for r in report.rows), report
    assert tuple(small.get_layer("emb").embeddings.shape) == (30, 8)
    assert small.get_layer("c1").filters == 6
    assert tuple(small.get_layer("sep").depthwise_kernel.shape) == (3, 6, 2)
    assert tuple(small.get_layer("sep").pointwise_kernel.shape) == (1, 12, 5)
    np.testing.assert_allclose(_np(small(x[:8])), _np(model(x[:8])), rtol=1e-4, atol=1e-5)


# ---- subclassed models: traced through their call ----------------------------------------------

class _ResidualNet(keras.Model):
    """A subclassed model: convolution, BatchNorm, a residual Add (a layer and `+`), pooling
    and a classifier."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.c1 = keras.layers.Conv2D(8, 3, padding="same", name="c1")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.c2 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.fc = keras.layers.Dense(12, activation="relu", name="fc")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x, training=None):
        a = keras.ops.relu(self.bn(self.c1(x), training=training))
        a = a + self.c2(a)
        return self.out(self.fc(self.pool(a)))


def test_subclassed_model_traced_pruned_in_fit_and_shrunk():
    keras.utils.set_random_seed(25)
    rng = np.random.default_rng(25)
    x, y = rng.random((48, 6, 6, 3), dtype=np.float32), rng.integers(0, 3, 48)
    net = _ResidualNet(name="resnet")
    net(x[:2])
    model = sparsekeras.sparsify(net, inplace=True)  # (a subclassed model: not copied)
    model.compile(keras.optimizers.Adam(0.01), _classifier_loss())
    _, messages = _recorded(model.fit, x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        GradualPruning(PolynomialDecay(0.0, 0.5, 0, 3, frequency=1), granularity="channel",
                       coupled=True)])
    assert not [m for m in messages if "not pruned" in m], messages
    # c1, bn, c2 (the residual `+`, keras.ops.relu between) are one group; fc another.
    for layer in (model.c1, model.c2, model.fc):
        cut = ~_np(layer.mask).reshape(-1, layer.mask.shape[-1]).any(axis=0)
        assert int(cut.sum()) == layer.mask.shape[-1] // 2, layer.name
        assert np.all(_np(layer.bias)[cut] == 0), layer.name
    small, report = sparsekeras.shrink(model, return_report=True)
    assert not report.unsupported, report
    assert isinstance(small, keras.Model) and not isinstance(small, _ResidualNet)
    assert (small.get_layer("c1").filters, small.get_layer("c2").filters) == (4, 4)
    assert small.get_layer("bn").gamma.shape == (4,)
    assert small.get_layer("fc").units == 6
    assert tuple(small.get_layer("fc").kernel.shape) == (4, 6)
    assert report.params_after == small.count_params() < 0.5 * report.params_before
    np.testing.assert_allclose(_np(small(x[:8])), _np(model(x[:8])), rtol=1e-4, atol=1e-5)


def test_indexing_other_axes_keeps_the_channels():
    """x[:, 0, :] (a [CLS] token) and x[..., :] keep the channel axis: followed; x[..., :3]
    cuts it: not followed, named."""
    keras.utils.set_random_seed(27)
    i = keras.Input((5, 4))
    a = keras.layers.Dense(8, activation="relu", name="a")(i)
    b = keras.layers.Dense(6, activation="relu", name="b")(i)
    model = keras.Model(i, [keras.layers.Dense(3, name="out")(a[:, 0, :]),
                            keras.layers.Dense(2, name="out_b")(b[..., :3])])
    for name in ("a", "b"):
        layer = model.get_layer(name)
        k, bias = _np(layer.kernel), _np(layer.bias)
        k[:, :2], bias[:2] = 0, 0
        layer.kernel.assign(k)
        layer.bias.assign(bias)
    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    assert small.get_layer("a").units == 6 and tuple(small.get_layer("out").kernel.shape) == (6, 3)
    assert small.get_layer("b").units == 6  # behind x[..., :3]: kept whole, and said
    assert len(report.unsupported) == 1 and "get_item" in report.unsupported[0][0], report
    assert any("get_item" in m for m in messages), messages
    x = np.random.default_rng(4).random((3, 5, 4), dtype=np.float32)
    for got, want in zip(small(x), model(x)):
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-4, atol=1e-5)


# ---- channels that hold a constant once pruned, multiplied by zero again ----------------------

def _se_hardswish_net():
    """MobileNetV3 / EfficientNet's block, as keras.applications writes it: a 1x1 expansion,
    a depthwise convolution, a squeeze-excite gate (sigmoid: a pruned channel's gate is 0.5,
    not 0, times a zero channel) and hard-swish from keras.ops with numbers
    (x * relu6(x + 3) * (1 / 6)), then a 1x1 projection."""
    i = keras.Input((6, 6, 4))
    e = keras.layers.Conv2D(16, 1, activation="relu", name="expand")(i)
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(e)
    d = keras.layers.BatchNormalization(name="dw_bn")(d)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(d)
    gate = keras.layers.Conv2D(8, 1, activation="relu", name="se_reduce")(gate)
    gate = keras.layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(gate)
    d = keras.layers.Multiply(name="se_mul")([d, gate])
    d = d * (keras.layers.ReLU(6.0)(d + 3.0) * (1.0 / 6.0))  # hard-swish
    p = keras.layers.Conv2D(8, 1, name="project")(d)
    pooled = keras.layers.GlobalAveragePooling2D()(p)
    return keras.Model(i, keras.layers.Dense(3, name="out")(pooled))


def test_squeeze_excite_and_hard_swish_channels_pruned_in_fit_and_shrunk():
    keras.utils.set_random_seed(28)
    rng = np.random.default_rng(28)
    x, y = rng.random((48, 6, 6, 4), dtype=np.float32), rng.integers(0, 3, 48)
    model = sparsekeras.sparsify(_se_hardswish_net())
    model.compile(keras.optimizers.Adam(0.01), _classifier_loss())
    _, messages = _recorded(model.fit, x, y, batch_size=16, epochs=2, verbose=0, callbacks=[
        GradualPruning(PolynomialDecay(0.0, 0.5, 0, 3, frequency=1), granularity="channel",
                       coupled=True)])
    assert not [m for m in messages if "not pruned" in m or "maps 0" in m], messages
    # expand, dw, dw_bn, se_expand (and the gate's product, hard-swish) are one group of 16
    for name in ("expand", "se_expand", "se_reduce", "project"):
        layer = model.get_layer(name)
        cut = ~_np(layer.mask).reshape(-1, layer.mask.shape[-1]).any(axis=0)
        assert int(cut.sum()) == layer.mask.shape[-1] // 2, name
    small, report = sparsekeras.shrink(model, return_report=True)
    assert not report.unsupported, report
    assert all(r["status"] == "shrunk" for r in report.rows), report
    assert [small.get_layer(n).filters for n in ("expand", "se_reduce", "se_expand",
                                                 "project")] == [8, 4, 8, 4]
    assert tuple(small.get_layer("dw").kernel.shape) == (3, 3, 8, 1)
    assert small.get_layer("dw_bn").gamma.shape == (8,)
    np.testing.assert_allclose(_np(small(x[:8])), _np(model(x[:8])), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["read_by_dense", "plus_number", "added", "gate_times_gate"])
def test_a_channel_holding_a_constant_is_kept_where_a_layer_reads_it(case):
    """A pruned channel that holds a nonzero constant (after a sigmoid or `x + 1`) stays
    when a kernel reads it, also through an Add or a product of two such channels; the
    reason names where the constant comes from."""
    keras.utils.set_random_seed(29)
    i = keras.Input((8,))
    a = keras.layers.Dense(6, activation="relu", name="a")(i)
    source = "b: its activation maps 0 to 0.5"
    if case == "plus_number":
        h = keras.layers.Dense(6, name="b")(a) + 1.0
        source = "maps 0 to 1,"  # (the op is named add, add_1, ... in the process)
    else:
        h = keras.layers.Dense(6, activation="sigmoid", name="b")(a)
        if case == "added":
            h = keras.layers.Add()([h, keras.layers.Dense(6, name="b2")(a)])
        elif case == "gate_times_gate":
            h = keras.layers.Multiply()([h, keras.layers.Dense(6, activation="sigmoid",
                                                              name="b2")(a)])
    model = keras.Model(i, keras.layers.Dense(2, name="out")(
        keras.layers.Dense(5, activation="relu", name="c")(h)))
    for layer in model.layers:
        if layer.name in ("b", "b2"):
            k = _np(layer.kernel)
            k[:, :2] = 0
            layer.kernel.assign(k)
            layer.bias.assign(np.zeros(6, np.float32))
    (small, report), _ = _recorded(sparsekeras.shrink, model, return_report=True)
    rows = {r["layers"][0]: r for r in report.rows}
    assert rows["b"]["status"] == "kept whole", report
    assert source in rows["b"]["reason"], rows["b"]
    assert "c reads it" in rows["b"]["reason"], rows["b"]
    assert small.get_layer("b").units == 6
    x = np.random.default_rng(29).random((8, 8), dtype=np.float32)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


# ---- a custom layer whose weight has no name ---------------------------------------------------

@keras.saving.register_keras_serializable(package="test_shrink_reach")
class _LayerScale(keras.layers.Layer):
    """ConvNeXt's LayerScale (keras.applications.convnext): a per-channel scale added without
    a name, so Keras names it from a process-wide counter ('variable_54')."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(self.dim,), initializer="ones")

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return dict(super().get_config(), dim=self.dim)


def test_unnamed_weight_of_a_custom_layer_is_copied_by_position():
    """ConvNeXt's block: the residual width is bounded by LayerNormalization (LayerScale is
    not followed, and says so), the feedforward units shrink; LayerScale's weight, named
    'variable_N' in the model and 'variable_M' in its rebuilt twin, is copied."""
    keras.utils.set_random_seed(30)
    i = keras.Input((4, 8))
    h = keras.layers.LayerNormalization(name="ln")(i)
    h = keras.layers.Dense(16, activation="gelu", name="ff1")(h)
    h = keras.layers.Dense(8, name="ff2")(h)
    scale = _LayerScale(8, name="scale")
    h = keras.layers.Add()([i, scale(h)])
    model = keras.Model(i, h)
    scale.gamma.assign(np.linspace(0.5, 2.0, 8).astype(np.float32))
    ff1 = model.get_layer("ff1")
    k = _np(ff1.kernel)
    k[:, ::2] = 0
    ff1.kernel.assign(k)
    ff1.bias.assign(np.zeros(16, np.float32))
    small, messages = _recorded(sparsekeras.shrink, model)
    assert any("scale" in m and "LayerScale is not followed" in m for m in messages), messages
    assert small.get_layer("ff1").units == 8
    np.testing.assert_array_equal(_np(small.get_layer("scale").gamma), _np(scale.gamma))
    assert small.get_layer("scale").gamma.path != scale.gamma.path  # the case at hand
    x = np.random.default_rng(30).random((5, 4, 8), dtype=np.float32)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


# ---- keras_hub's TransformerDecoder (GPT-2) ----------------------------------------------------

def test_keras_hub_gpt2_ffn_units_pruned_in_fit_and_shrunk_heads_said_to_stay(tmp_path):
    """A GPT2Backbone from config under a Dense head: each decoder's feedforward units are a
    group, pruned in fit and removed (the decoder rebuilt with a smaller intermediate_dim);
    its heads stay, and GradualPruning(granularity="head") says why instead of nothing."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(31)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=2,
                                             num_heads=HEADS, hidden_dim=HIDDEN,
                                             intermediate_dim=FF, max_sequence_length=SEQ)
    inputs = {k: keras.Input((SEQ,), dtype="int32", name=k)
              for k in ("token_ids", "padding_mask")}
    model = sparsekeras.sparsify(keras.Model(
        inputs, keras.layers.Dense(2, name="cls")(backbone(inputs)[:, -1, :])))
    model.compile(keras.optimizers.Adam(1e-3), _classifier_loss())
    tokens = _tokens(32)
    x = {k: tokens[k] for k in ("token_ids", "padding_mask")}
    _, messages = _recorded(model.fit, x, np.arange(32) % 2, batch_size=8, epochs=1,
                            verbose=0, callbacks=[
                                GradualPruning(ConstantSparsity(0.5, 0, frequency=2),
                                               granularity="channel", coupled=True),
                                GradualPruning(ConstantSparsity(0.5, 0, frequency=2),
                                               granularity="head")])
    (heads,) = [m for m in messages if "heads are not pruned" in m]
    assert "transformer_layer_1/self_attention" in heads and "not written out" in heads
    (kept,) = [m for m in messages if "channels are not pruned" in m]
    assert "feedforward_intermediate_dense" not in kept
    (small, report), messages = _recorded(sparsekeras.shrink, model, return_report=True)
    # The backbone comes back as a plain Functional model, and shrink says so.
    assert any("(GPT2Backbone)" in m and "generate()" in m for m in messages), messages
    rows = {(r["kind"], r["layers"][0]): r for r in report.rows}
    for i in (0, 1):
        ff = rows[("channel", f"transformer_layer_{i}/feedforward_intermediate_dense")]
        assert (ff["status"], ff["size"], ff["kept"]) == ("shrunk", FF, FF // 2), ff
        assert ("head", f"transformer_layer_{i}/self_attention") not in rows  # nothing cut
    _no_sparsekeras_class(small)
    decoders = [layer for layer in small._flatten_layers(recursive=True)
                if type(layer).__name__ == "TransformerDecoder"]
    assert [d.intermediate_dim for d in decoders] == [FF // 2, FF // 2]
    per_unit = HIDDEN + 1 + HIDDEN  # intermediate column and bias, output row
    assert report.params_after == report.params_before - 2 * (FF // 2) * per_unit
    xt = {k: v for k, v in _tokens(6, seed=1).items() if k != "segment_ids"}
    np.testing.assert_allclose(_np(small(xt)), _np(model(xt)), rtol=1e-4, atol=1e-5)
    assert_loads_without_sparsekeras(small, xt, _np(model(xt)), tmp_path, imports=["keras_hub"],
                                     rtol=1e-4, atol=1e-5)


# ---- a layer that its own config does not rebuild ----------------------------------------------

@keras.saving.register_keras_serializable(package="test_shrink_reach")
class _BadConfig(keras.layers.Layer):
    """keras_hub's ViTPatchingAndEmbedding in small: get_config() writes a derived value that
    __init__ does not take."""

    def call(self, x):
        return x * 2.0

    def get_config(self):
        return dict(super().get_config(), derived=3)


@keras.saving.register_keras_serializable(package="test_shrink_reach")
class _Block(keras.Model):
    """A Functional model that saves as its own config, as keras_hub's backbones do: Keras
    copies and loads it whole, never through its inner layers' configs."""

    def __init__(self, width=8, **kwargs):
        i = keras.Input((6,))
        h = keras.layers.Dense(width, activation="relu", name="a")(i)
        super().__init__(i, _BadConfig(name="bad")(h), **kwargs)
        self.width = width

    def get_config(self):
        return {"width": self.width, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="test_shrink_reach")
class _OwnBlock(keras.Model):
    """A user's Functional subclass (Keras puts Functional right after it in the MRO)."""

    def __init__(self, **kwargs):
        i = keras.Input((6,))
        h = keras.layers.Dense(8, activation="relu", name="a")(i)
        super().__init__(i, keras.layers.Dense(4, name="b")(h), **kwargs)

    def extra(self):
        return "a method the shrunk copy does not have"


def test_a_users_functional_subclass_is_named_as_coming_back_plain():
    i = keras.Input((6,))
    model = keras.Model(i, keras.layers.Dense(2, name="out")(_OwnBlock(name="own")(i)))
    a = model.get_layer("own").get_layer("a")
    a.kernel.assign(np.concatenate([_np(a.kernel)[:, :4], np.zeros((6, 4), np.float32)], 1))
    a.bias.assign(np.zeros(8, np.float32))
    small, messages = _recorded(sparsekeras.shrink, model)
    assert any("'own' (_OwnBlock)" in m and "plain Keras models" in m for m in messages), messages
    assert type(small.get_layer("own")) is not _OwnBlock
    assert small.get_layer("own").get_layer("a").units == 4
    x = np.random.default_rng(34).random((4, 6), dtype=np.float32)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


def test_layer_not_rebuilt_by_its_config_is_a_clear_error():
    i = keras.Input((6,))
    block = _Block(name="block")
    model = keras.Model(i, keras.layers.Dense(2, name="out")(block(i)))
    a = block.get_layer("a")
    a.kernel.assign(np.concatenate([_np(a.kernel)[:, :4], np.zeros((6, 4), np.float32)], 1))
    with pytest.raises(ValueError, match=r"(?s)layer 'bad' \(.*_BadConfig\) cannot be rebuilt from "
                                         r"its own get_config\(\).*derived.*unstructured"):
        _recorded(sparsekeras.shrink, model)


def test_keras_hub_bart_decoder_with_cross_attention_ffn_units_shrunk():
    """BART's TransformerDecoder attends to the encoder's sequence (cross-attention): its
    feedforward units are pruned and removed as the encoder's are; its heads, its
    cross-attention and the encoder's sequence stay, and the fit's warning names them."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(32)
    backbone = keras_hub.models.BartBackbone(vocabulary_size=VOCAB, num_layers=1,
                                             num_heads=HEADS, hidden_dim=HIDDEN,
                                             intermediate_dim=FF, max_sequence_length=SEQ)
    names = ("encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
             "decoder_padding_mask")
    inputs = {k: keras.Input((SEQ,), dtype="int32", name=k) for k in names}
    hidden = backbone(inputs)["decoder_sequence_output"][:, 0, :]
    model = sparsekeras.sparsify(keras.Model(inputs, keras.layers.Dense(2, name="cls")(hidden)))
    model.compile(keras.optimizers.Adam(1e-3), _classifier_loss())
    tokens = _tokens(16)
    x = {"encoder_token_ids": tokens["token_ids"], "encoder_padding_mask": tokens["padding_mask"],
         "decoder_token_ids": tokens["token_ids"][:, ::-1].copy(),
         "decoder_padding_mask": np.ones((16, SEQ), "int32")}
    _, messages = _recorded(model.fit, x, np.arange(16) % 2, batch_size=8, epochs=1, verbose=0,
                            callbacks=[GradualPruning(ConstantSparsity(0.5, 0, frequency=2),
                                                      granularity="channel", coupled=True)])
    (kept,) = [m for m in messages if "channels are not pruned" in m]
    assert "transformer_decoder_layer_0/feedforward_output_dense" in kept
    assert "feedforward_intermediate_dense" not in kept
    (small, report), _ = _recorded(sparsekeras.shrink, model, return_report=True)
    rows = {(r["kind"], r["layers"][0]): r for r in report.rows}
    for block in ("transformer_encoder_layer_0", "transformer_decoder_layer_0"):
        ff = rows[("channel", f"{block}/feedforward_intermediate_dense")]
        assert (ff["status"], ff["size"], ff["kept"]) == ("shrunk", FF, FF // 2), ff
    assert not any("transformer_decoder_layer_0" in name for name, _ in report.unsupported)
    decoder = small.get_layer(backbone.name).get_layer("transformer_decoder_layer_0")
    assert decoder.intermediate_dim == FF // 2
    _no_sparsekeras_class(small)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)


# ---- transposed convolutions -------------------------------------------------------------------

def test_transposed_convolutions_pruned_in_fit_and_shrunk():
    """Conv1D/2D/3DTranspose produce their filters like a convolution, from a kernel whose
    output axis comes before the input axis: coupled pruning zeroes whole filters there (and
    the BatchNormalization after), shrink removes them and the input rows of what reads them."""
    keras.utils.set_random_seed(33)
    L = keras.layers
    img, seq, vol = keras.Input((8, 8, 3)), keras.Input((10, 4)), keras.Input((3, 3, 3, 2))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="enc")(img)
    h = L.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu",
                          name="up")(L.MaxPooling2D()(h))
    h = L.Conv2D(4, 1, name="head")(L.BatchNormalization(name="bn")(h))
    s = L.Conv1DTranspose(6, 3, strides=2, activation="relu", name="up1d")(seq)
    v = L.Conv3DTranspose(4, 2, strides=2, activation="relu", name="up3d")(vol)
    pooled = L.Concatenate()([L.GlobalAveragePooling2D()(h), L.GlobalAveragePooling1D()(s),
                              L.GlobalAveragePooling3D()(v)])
    model = sparsekeras.sparsify(keras.Model([img, seq, vol], L.Dense(3, name="out")(pooled)))
    rng = np.random.default_rng(33)
    x = [rng.random((32, 8, 8, 3), dtype=np.float32), rng.random((32, 10, 4), dtype=np.float32),
         rng.random((32, 3, 3, 3, 2), dtype=np.float32)]
    model.compile(keras.optimizers.Adam(0.01), _classifier_loss())
    _, messages = _recorded(model.fit, x, rng.integers(0, 3, 32), batch_size=8, epochs=2,
                            verbose=0, callbacks=[
                                GradualPruning(PolynomialDecay(0.0, 0.5, 0, 3, frequency=1),
                                               granularity="channel", coupled=True)])
    assert not [m for m in messages if "not pruned" in m], messages
    up = model.get_layer("up")
    kernel = _np(up.kernel)  # (3, 3, filters, in_channels)
    cut = ~kernel.reshape(9, 6, 8).transpose(1, 0, 2).reshape(6, -1).any(axis=1)
    assert int(cut.sum()) == 3 and np.all(_np(up.bias)[cut] == 0)
    assert np.all(_np(model.get_layer("bn").beta)[cut] == 0)
    small, report = sparsekeras.shrink(model, return_report=True)
    assert not report.unsupported and all(r["status"] == "shrunk" for r in report.rows), report
    assert [small.get_layer(n).filters for n in ("enc", "up", "head", "up1d", "up3d")] == [
        4, 3, 2, 3, 2]
    assert tuple(small.get_layer("up").kernel.shape) == (3, 3, 3, 4)
    assert tuple(small.get_layer("up1d").kernel.shape) == (3, 3, 4)
    assert tuple(small.get_layer("out").kernel.shape) == (2 + 3 + 2, 3)
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-4, atol=1e-5)
