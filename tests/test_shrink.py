"""`sparsekeras.shrink` and coupled channel / head pruning (issue 24): the shrunk model is plain
Keras, smaller, and computes what the pruned model computes."""
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


def _assert_same_outputs(small, pruned, x, atol=1e-5):
    np.testing.assert_allclose(_np(small(x)), _np(pruned(x)), rtol=1e-4, atol=atol)


def _plain_keras_only(model):
    for _, layer, path in sparsekeras._tree.walk(model):
        assert type(layer).__module__.startswith("keras."), (path, type(layer))


def _compiled(model):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _mlp():
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(32, activation="relu", name="h1"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(24, activation="gelu", name="h2"),
        keras.layers.Dense(5, name="out")])


def _cnn():
    """BatchNorm, a residual Add, a depthwise convolution, a Concatenate, a BatchNorm over the
    concatenation, pooling and a Flatten before the classifier."""
    i = keras.Input((10, 10, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="c1")(i)
    a = keras.layers.BatchNormalization(name="bn1")(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(a)
    b = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(b)
    r = keras.layers.Add(name="residual")([a, b])
    c = keras.layers.Conv2D(6, 1, activation="relu", name="c3")(r)
    cat = keras.layers.Concatenate(name="cat")([r, c])
    cat = keras.layers.BatchNormalization(name="bn2")(cat)
    p = keras.layers.MaxPooling2D()(cat)
    f = keras.layers.Flatten()(p)
    f = keras.layers.Dense(16, activation="relu", name="fc")(f)
    return keras.Model(i, keras.layers.Dense(4, name="out")(f))


def _data(shape, n=64, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n)


class _CheckGroups(keras.callbacks.Callback):
    """After every batch: in each prunable group, the same channels are pruned in every
    member (kernel masks of the producers and depthwise followers), and their biases and
    BatchNorm scales/offsets are zero."""

    def __init__(self):
        super().__init__()
        self.checked = 0
        self.max_pruned = 0

    def on_train_batch_end(self, batch, logs=None):
        analysis = _groups.analyze(self.model)
        for g in analysis.prunable_groups("channel"):
            patterns = []
            for layer, role, pos in analysis.members(g):
                kind = analysis.kinds[id(layer)]
                if role == "out":
                    m = _np(_groups._mask_of(layer).mask)
                    cut = ~m.reshape(-1, m.shape[-1]).any(axis=0)
                    patterns.append(cut[pos[0]])
                    bias = _groups._produced(layer)[1]
                    if bias is not None:
                        assert np.all(_np(bias)[pos[0]][patterns[-1]] == 0), layer.name
                elif role == "in" and kind == "follower":
                    patterns.append(None)
                    follower_pos = pos
                    if isinstance(layer, keras.layers.BatchNormalization):
                        values = [_np(layer.gamma), _np(layer.beta)]
                    else:
                        values = [_np(layer.bias)]
                        m = _np(layer.mask)
                        values.append(m.reshape(-1, m.shape[-2], m.shape[-1]).any(axis=0)[:, 0])
                    patterns[-1] = (layer, follower_pos, values)
            cuts = [p for p in patterns if isinstance(p, np.ndarray)]
            assert cuts, g
            for cut in cuts[1:]:
                np.testing.assert_array_equal(cut, cuts[0])
            for p in patterns:
                if isinstance(p, tuple):
                    layer, pos, values = p
                    for v in values:
                        assert np.all(v[pos][:, cuts[0]] == 0), layer.name
            self.max_pruned = max(self.max_pruned, int(cuts[0].sum()))
            self.checked += 1


# ---- exactness -----------------------------------------------------------------------------

def test_mlp_pruned_by_coupled_channels_shrinks_exactly():
    keras.utils.set_random_seed(1)
    model = _compiled(sparsekeras.sparsify(_mlp()))
    x, y = _data((20,), classes=5)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[GradualPruning(
        PolynomialDecay(0.0, 0.5, 0, 4, frequency=2), granularity="channel", coupled=True)])
    small, report = sparsekeras.shrink(model, return_report=True)
    _plain_keras_only(small)
    units = [small.get_layer(n).units for n in ("h1", "h2", "out")]
    assert units == [16, 12, 5], units  # the output layer is never shrunk
    expected = 20 * 16 + 16 + 16 * 12 + 12 + 12 * 5 + 5
    assert small.count_params() == report.params_after == expected
    assert report.params_before == 20 * 32 + 32 + 32 * 24 + 24 + 24 * 5 + 5
    _assert_same_outputs(small, model, x)


def test_cnn_with_bn_residual_concat_depthwise_shrinks_exactly():
    keras.utils.set_random_seed(2)
    model = _compiled(sparsekeras.sparsify(_cnn()))
    x, y = _data((10, 10, 3))
    check = _CheckGroups()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[GradualPruning(
        PolynomialDecay(0.0, 0.5, 0, 6, frequency=2), granularity="channel", coupled=True),
        check])
    assert check.checked and check.max_pruned >= 3
    small, report = sparsekeras.shrink(model, return_report=True)
    _plain_keras_only(small)
    # c1, bn1, c2, dw and the residual Add are one group; c3 another; fc a third.
    assert small.get_layer("c1").filters == small.get_layer("c2").filters == 4
    assert small.get_layer("bn1").gamma.shape == (4,)
    assert small.get_layer("dw").kernel.shape == (3, 3, 4, 1)
    assert small.get_layer("c3").filters == 3
    assert small.get_layer("bn2").gamma.shape == (7,)  # concatenation: 4 + 3
    assert small.get_layer("fc").units == 8
    assert small.get_layer("fc").kernel.shape == (5 * 5 * 7, 8)  # Flatten: every 7th entry
    assert small.get_layer("out").units == 4
    assert report.params_after < 0.4 * report.params_before, report
    xt, _ = _data((10, 10, 3), n=8, seed=3)
    _assert_same_outputs(small, model, xt)


def _transformer(dim=16, heads=4, ff=32, seq=6):
    i = keras.Input((seq, dim))
    a = keras.layers.MultiHeadAttention(heads, 8, name="mha")(i, i)
    h = keras.layers.LayerNormalization(name="ln1")(keras.layers.Add()([i, a]))
    f = keras.layers.Dense(ff, activation="relu", name="ff1")(h)
    f = keras.layers.Dense(dim, name="ff2")(f)
    h = keras.layers.LayerNormalization(name="ln2")(keras.layers.Add()([h, f]))
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(i, keras.layers.Dense(3, name="out")(pooled))


def test_transformer_block_heads_and_ffn_units_removed():
    keras.utils.set_random_seed(3)
    model = _compiled(sparsekeras.sparsify(_transformer()))
    x, y = _data((6, 16), classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the residual width is reported kept
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[
            GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="channel",
                           coupled=True),
            GradualPruning(ConstantSparsity(0.5, 0, frequency=2), granularity="head")])
    small, report = sparsekeras.shrink(model, return_report=True)
    _plain_keras_only(small)
    mha = small.get_layer("mha")
    assert mha.num_heads == 2
    assert tuple(mha._query_dense.kernel.shape) == (16, 2, 8)
    assert tuple(mha._output_dense.kernel.shape) == (2, 8, 16)
    assert small.get_layer("ff1").units == 16
    assert small.get_layer("ff2").units == 16  # the residual width (LayerNorm) stays
    assert small.get_layer("ln1").gamma.shape == (16,)
    kinds = {(r["kind"], r["status"]) for r in report.rows}
    assert ("head", "shrunk") in kinds and ("channel", "shrunk") in kinds
    _assert_same_outputs(small, model, x[:4])


def test_nested_model_shrinks_with_its_inputs():
    keras.utils.set_random_seed(4)
    inner = keras.Sequential([keras.Input((12,)),
                              keras.layers.Dense(10, activation="relu", name="in1"),
                              keras.layers.Dense(8, activation="relu", name="in2")],
                             name="inner")
    xi = keras.Input((6,))
    h = keras.layers.Dense(12, activation="relu", name="pre")(xi)
    model = keras.Model(xi, keras.layers.Dense(3, name="out")(inner(h)))
    model = _compiled(sparsekeras.sparsify(model))
    x, y = _data((6,), classes=3)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradualPruning(
        ConstantSparsity(0.5, 0, frequency=1), granularity="channel", coupled=True)])
    small = sparsekeras.shrink(model)
    _plain_keras_only(small)
    nested = small.get_layer("inner")
    assert isinstance(nested, keras.Sequential)
    assert nested.inputs[0].shape[-1] == 6  # pre: 12 -> 6, so the nested model's input too
    assert [nested.get_layer(n).units for n in ("in1", "in2")] == [5, 4]
    _assert_same_outputs(small, model, x)


def _zero_units(layer, units):
    k, bias = _np(layer.kernel), _np(layer.bias)
    k[..., units], bias[units] = 0, 0
    layer.kernel.assign(k)
    layer.bias.assign(bias)


def test_ops_addition_and_a_shared_layer():
    """`a + b` (a keras.ops operation) unites its inputs' channels, as Add does; a layer called
    twice reads the same channels in both calls (so `d` joins `a` and `b`), and its own units
    appear twice in the Concatenate."""
    keras.utils.set_random_seed(9)
    i = keras.Input((8,))
    a = keras.layers.Dense(6, activation="relu", name="a")(i)
    b = keras.layers.Dense(6, activation="relu", name="b")(i)
    shared = keras.layers.Dense(5, activation="relu", name="shared")
    c1, c2 = shared(a + b), shared(keras.layers.Dense(6, name="d")(i))
    model = keras.Model(i, keras.layers.Dense(2, name="out")(
        keras.layers.Concatenate()([c1, c2])))
    for name in ("a", "b", "d", "shared"):
        _zero_units(model.get_layer(name), [0, 1])
    small, report = sparsekeras.shrink(model, return_report=True)
    assert not report.unsupported
    assert [small.get_layer(n).units for n in ("a", "b", "d", "shared")] == [4, 4, 4, 3]
    assert tuple(small.get_layer("out").kernel.shape) == (6, 2)
    x, _ = _data((8,))
    _assert_same_outputs(small, model, x)
    _zero_units(model.get_layer("b"), [2])  # b's channel 2 is not zero in a: both stay
    small = sparsekeras.shrink(model)
    assert [small.get_layer(n).units for n in ("a", "b", "d")] == [4, 4, 4]


def test_separable_convolution_reads_and_produces_channels():
    keras.utils.set_random_seed(10)
    i = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(i)
    b = keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, activation="relu", name="sep")(a)
    model = keras.Model(i, keras.layers.Dense(2, name="out")(
        keras.layers.GlobalAveragePooling2D()(b)))
    _zero_units(model.get_layer("c1"), [1, 4, 5])
    sep = model.get_layer("sep")
    k, bias = _np(sep.pointwise_kernel), _np(sep.bias)
    k[..., [0, 3]], bias[[0, 3]] = 0, 0
    sep.pointwise_kernel.assign(k)
    sep.bias.assign(bias)
    small = sparsekeras.shrink(model)
    assert tuple(small.get_layer("sep").depthwise_kernel.shape) == (3, 3, 5, 2)
    assert tuple(small.get_layer("sep").pointwise_kernel.shape) == (1, 1, 10, 4)
    x, _ = _data((8, 8, 3), n=4)
    _assert_same_outputs(small, model, x)


@pytest.mark.slow
def test_mobilenetv2_shrinks_exactly():
    """keras.applications' MobileNetV2 (ZeroPadding, depthwise, BatchNorm, ReLU6, inverted
    residual Adds): every group is followed (nothing reported), half the channels go."""
    keras.utils.set_random_seed(13)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                          classes=10)
    model = sparsekeras.sparsify(base)
    cb = GradualPruning(ConstantSparsity(0.5, 0), granularity="channel", coupled=True)
    cb.set_model(model)
    cb.prune(0.5)
    small, report = sparsekeras.shrink(model, return_report=True)
    assert not report.unsupported
    assert all(r["status"] == "shrunk" for r in report.rows) and len(report.rows) >= 20
    assert report.params_after < 0.35 * report.params_before, report
    x, _ = _data((32, 32, 3), n=2)
    _assert_same_outputs(small, model, x)


def _grouped_model():
    i = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(16, 1, activation="relu", name="c1")(i)
    g = keras.layers.Conv2D(16, 3, padding="same", groups=4, activation="relu",
                            name="grouped")(a)
    c = keras.layers.Conv2D(8, 1, activation="relu", name="c3")(g)
    return keras.Model(i, keras.layers.Dense(3, name="out")(
        keras.layers.GlobalAveragePooling2D()(c)))


def test_grouped_convolution_keeps_equal_channels_per_group():
    keras.utils.set_random_seed(8)
    model = _compiled(sparsekeras.sparsify(_grouped_model()))
    x, y = _data((8, 8, 4), n=32, classes=3)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradualPruning(
        ConstantSparsity(0.5, 0, frequency=1), granularity="channel", coupled=True)])
    for name in ("c1", "grouped"):  # 2 of every block of 4 channels pruned
        cut = ~_np(model.get_layer(name).mask).reshape(-1, 16).any(axis=0)
        np.testing.assert_array_equal(cut.reshape(4, 4).sum(axis=1), 2, err_msg=name)
    small = sparsekeras.shrink(model)
    assert tuple(small.get_layer("grouped").kernel.shape) == (3, 3, 2, 8)
    assert small.get_layer("grouped").groups == 4
    _assert_same_outputs(small, model, x[:4])

    # Zeros that would leave the blocks unequal: c1's group is left whole, and says why.
    plain = _grouped_model()
    c1, grouped = plain.get_layer("c1"), plain.get_layer("grouped")
    k = _np(c1.kernel)
    k[..., :2] = 0
    c1.kernel.assign(k)
    c1.bias.assign(np.zeros(16, np.float32))
    k, b = _np(grouped.kernel), _np(grouped.bias)
    k[..., ::4], b[::4] = 0, 0
    grouped.kernel.assign(k)
    grouped.bias.assign(b)
    with pytest.warns(UserWarning, match="unequal channels per group"):
        small = sparsekeras.shrink(plain)
    assert tuple(small.get_layer("grouped").kernel.shape) == (3, 3, 4, 12)
    _assert_same_outputs(small, plain, x[:4])


def test_global_scope_keeps_a_floor_per_group():
    keras.utils.set_random_seed(5)
    model = sparsekeras.sparsify(_mlp())
    h1 = model.get_layer("h1")
    h1.kernel.assign(_np(h1.kernel) * 1e-3)  # h1 would lose every unit in a global ranking
    cb = GradualPruning(ConstantSparsity(0.5, 0), granularity="channel", coupled=True,
                        scope="global", min_layer_density=0.25)
    cb.set_model(model)
    cb.prune(0.5)
    kept = [int(_np(model.get_layer(n).mask).any(axis=0).sum()) for n in ("h1", "h2")]
    assert kept[0] == 8  # the floor: 25% of 32
    assert kept[0] + kept[1] == 56 - 28  # half of the prunable channels (32 + 24)
    assert int(_np(model.get_layer("out").mask).all()) == 1


# ---- what shrink does not follow ---------------------------------------------------------------

@keras.saving.register_keras_serializable(package="test_shrink")
class _Scale(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def test_unsupported_patterns_are_reported_by_name_and_left_whole():
    keras.utils.set_random_seed(6)
    i = keras.Input((8,))
    a = keras.layers.Dense(6, activation="relu", name="a")(i)
    a = _Scale(name="custom_scale")(a)
    b = keras.layers.Dense(6, activation="sigmoid", name="b")(a)
    c = keras.layers.Dense(6, activation="relu", name="c")(b)
    model = keras.Model(i, keras.layers.Dense(2, name="out")(c))
    for name in ("a", "b", "c"):
        layer = model.get_layer(name)
        k = _np(layer.kernel)
        k[:, :2] = 0
        layer.kernel.assign(k)
        layer.bias.assign(np.zeros(6, np.float32))
    with pytest.warns(UserWarning, match="custom_scale") as record:
        small, report = sparsekeras.shrink(model, return_report=True)
    print(report)
    assert any("custom_scale" in name for name, _ in report.unsupported)
    assert any("maps 0 to 0.5" in str(w.message) for w in record)  # sigmoid: a constant
    rows = {r["layers"][0]: r for r in report.rows}
    assert rows["a"]["status"] == "kept whole" and "custom_scale" in rows["a"]["reason"]
    assert rows["b"]["status"] == "kept whole" and "maps 0 to 0.5" in rows["b"]["reason"]
    assert rows["c"]["status"] == "shrunk"
    assert [small.get_layer(n).units for n in ("a", "b", "c")] == [6, 6, 4]
    x, _ = _data((8,))
    _assert_same_outputs(small, model, x)


def test_untraceable_subclassed_model_is_an_error_naming_its_class():
    """A subclassed model is traced through its call (tests/test_shrink_reach.py); one whose
    call symbolic tensors cannot run, or one not built, is a clear error."""
    import tensorflow as tf

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(tf.math.cumsum(x, axis=-1))  # a TensorFlow op on the input

    net = Net()
    with pytest.raises(ValueError, match="Net.*not built"):
        sparsekeras.shrink(net)
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="Net.*could not be traced.*Functional"):
        sparsekeras.shrink(net)
    with pytest.raises(ValueError, match="Received: coupled=1"):
        GradualPruning(ConstantSparsity(0.5), granularity="channel", coupled=1)
    with pytest.raises(ValueError, match="granularity='block'"):
        GradualPruning(ConstantSparsity(0.5), granularity="block", coupled=True)


# ---- deployment ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shrunk_cnn():
    keras.utils.set_random_seed(7)
    model = _compiled(sparsekeras.sparsify(_cnn()))
    x, y = _data((10, 10, 3))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradualPruning(
        ConstantSparsity(0.5, 0, frequency=1), granularity="channel", coupled=True)])
    return sparsekeras.shrink(model), model


def test_shrunk_model_loads_and_predicts_without_sparsekeras(shrunk_cnn, tmp_path):
    small, _ = shrunk_cnn
    x, _ = _data((10, 10, 3), n=4, seed=8)
    assert_loads_without_sparsekeras(small, x, _np(small(x)), tmp_path)


@pytest.mark.filterwarnings("ignore:In the future `np.object`:FutureWarning")
def test_shrunk_model_exports_savedmodel_litert_onnx(shrunk_cnn, tmp_path):
    import tensorflow as tf

    small, _ = shrunk_cnn
    x, _ = _data((10, 10, 3), n=2, seed=9)
    expected = _np(small(x))
    small.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(_np(restored.serve(x)), expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    small.export(str(tmp_path / "m.tflite"), format="litert", verbose=False)
    interp = Interpreter(model_path=str(tmp_path / "m.tflite"))
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    np.testing.assert_allclose(interp.get_tensor(out["index"]), expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    small.export(str(tmp_path / "m.onnx"), format="onnx", verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---- mixed structure: shrink, then prune what remains, then strip -----------------------------

# strip may fold BatchNormalizations (sparsekeras._fold) and name the ones it cannot (bn2 reads a
# Concatenate): that note is not what this test is about.
@pytest.mark.filterwarnings("ignore:.*BatchNormalization layers unfolded:UserWarning")
def test_shrink_then_unstructured_pruning_then_strip(shrunk_cnn):
    small, _ = shrunk_cnn
    x, y = _data((10, 10, 3), seed=10)
    sparse = _compiled(sparsekeras.sparsify(small))
    sparse.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[GradualPruning(
        ConstantSparsity(0.8, 0, frequency=1), compact=False)])
    for name in ("c2", "fc"):
        assert abs(sparse.get_layer(name).sparsity - 0.8) < 0.02
    stripped = sparsekeras.strip(sparse)
    assert type(stripped.get_layer("fc")).__name__ == "CompactDense"
    assert stripped.get_layer("fc").nnz <= 0.21 * np.prod(small.get_layer("fc").kernel.shape)
    _assert_same_outputs(stripped, sparse, x[:8])


# ---- accuracy after fine-tuning (scikit-learn digits) -------------------------------------------

def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], d.target[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _digits_mlp():
    return keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                             keras.layers.Dense(128, activation="relu", name="h1"),
                             keras.layers.Dense(64, activation="relu", name="h2"),
                             keras.layers.Dense(10, name="out")])


def _digits_cnn():
    i = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(16, 3, padding="same", name="c1")(i)
    a = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(a))
    b = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(a)
    a = keras.layers.MaxPooling2D()(keras.layers.Add()([a, b]))
    a = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c3")(a)
    a = keras.layers.Flatten()(keras.layers.MaxPooling2D()(a))
    return keras.Model(i, keras.layers.Dense(10, name="out")(a))


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(_np(model.predict(x, verbose=0)), axis=1) == y))


@pytest.mark.parametrize("make, shape, epochs", [(_digits_mlp, (8, 8), (12, 8)),
                                                 (_digits_cnn, (8, 8, 1), (20, 10))],
                         ids=["mlp", "cnn"])
def test_digits_accuracy_after_fine_tuning_within_1_5_points(make, shape, epochs):
    """Dense, then pruned to 50% of its prunable channels (coupled groups) while fine-tuning,
    then shrunk: the shrunk model's test accuracy is within 1.5 points of the dense one's."""
    keras.utils.set_random_seed(11)
    xtr, ytr, xte, yte = _digits()
    xtr, xte = xtr.reshape((-1,) + shape), xte.reshape((-1,) + shape)
    dense = _compiled(make())
    dense.fit(xtr, ytr, batch_size=32, epochs=epochs[0], verbose=0)
    dense_acc = _accuracy(dense, xte, yte)
    pruned = _compiled(sparsekeras.sparsify(dense))
    steps = len(xtr) // 32 + 1
    pruned.fit(xtr, ytr, batch_size=32, epochs=epochs[1], verbose=0, callbacks=[GradualPruning(
        PolynomialDecay(0.0, 0.5, 0, 3 * steps, frequency=steps // 2), granularity="channel",
        coupled=True)])
    small, report = sparsekeras.shrink(pruned, return_report=True)
    small_acc = _accuracy(small, xte, yte)
    print(f"{make.__name__}: dense {dense_acc:.4f}, shrunk {small_acc:.4f}, params "
          f"{report.params_before} -> {report.params_after}")
    assert report.params_after < 0.6 * report.params_before
    assert small_acc >= dense_acc - 0.015, (dense_acc, small_acc)


def test_fold_batchnorm_after_shrinking(shrunk_cnn):
    """shrink(fold_batchnorm=True) folds bn1 into c1 (sparsekeras._fold, the BatchNorm folding
    of issue 24) once shrunk; the outputs stay those of the pruned model."""
    pytest.importorskip("sparsekeras._fold")
    _, pruned = shrunk_cnn
    x, _ = _data((10, 10, 3), n=4, seed=12)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*BatchNormalization layers unfolded", UserWarning)
        folded = sparsekeras.shrink(pruned, fold_batchnorm=True)
    names = [layer.name for layer in folded.layers]
    assert "bn1" not in names and "c1" in names
    _plain_keras_only(folded)
    _assert_same_outputs(folded, pruned, x, atol=1e-4)
    with pytest.raises(ValueError, match="Received: fold_batchnorm='yes'"):
        sparsekeras.shrink(pruned, fold_batchnorm="yes")
