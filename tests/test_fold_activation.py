"""Activation folding (`strip`'s `fold_activations=True`, the default): a `ReLU()`, `ReLU(6.0)`
or `Activation(fn)` layer whose input is a Dense / convolution's output (and nothing else's)
becomes that layer's own `activation`; the activation layer leaves the graph, outputs
unchanged. What follows a Dense / convolution and cannot fold is named in a warning; an
activation after anything else is no candidate and is left alone, silently."""
import re
import warnings

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras import _fold
from sparsekeras._fold import FoldedActivation, FoldedBatchNormalization
from sparsekeras.layers import CompactConv2D, CompactDense

from layer_helper import randomize_batchnorms

RTOL = 1e-5
ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                     FoldedActivation)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _x(shape, seed=1, scale=4.0):
    """Inputs wide enough that the activations see negatives, zeros and values above 6."""
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _close(got, want):
    got, want = _np(got), _np(want)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= RTOL * scale, float(np.abs(got - want).max()) / scale


def _prune(sparse, keep=0.4, seed=3):
    rng = np.random.default_rng(seed)
    targets = sparsekeras.callbacks.prunable_targets(sparse)
    assert targets
    for t in targets:
        t.set_mask(rng.random(tuple(t.mask.shape)) < keep)
    return sparse


def _layers(model, classes):
    return sorted(layer.name for layer in model._flatten_layers(include_self=False,
                                                                recursive=True)
                  if isinstance(layer, classes))


def _quiet_strip(model, **kwargs):
    """strip, failing on any UserWarning (a model that folds entirely warns nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return sparsekeras.strip(model, **kwargs)


def _strip_warning(model, **kwargs):
    """strip and the text of its activation warning ('' when there is none). (Models holding
    a lambda or a local class do not copy through serialization: pass inplace=True.)"""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", UserWarning)
        out = sparsekeras.strip(model, **kwargs)
    texts = [str(w.message) for w in record if issubclass(w.category, UserWarning)
             and "fold_activations" in str(w.message)]
    assert len(texts) <= 1, texts  # one warning for all the activation layers
    return out, (texts[0] if texts else "")


# ---- the folded functions compute what the layers do ------------------------------------------

_EDGES = np.array([-1e4, -7.0, -6.0, -1.0, -1e-3, -0.0, 0.0, 1e-3, 0.5, 1.0, 5.999, 6.0,
                   6.001, 7.0, 1e4], np.float32)


@pytest.mark.parametrize("make, name", [
    (lambda: keras.layers.ReLU(), "relu"),
    (lambda: keras.layers.ReLU(6.0), "relu6"),
    (lambda: keras.layers.ReLU(max_value=6), "relu6"),
    (lambda: keras.layers.Activation("relu"), "relu"),
    (lambda: keras.layers.Activation("relu6"), "relu6"),
    (lambda: keras.layers.Activation("gelu"), "gelu"),
    (lambda: keras.layers.Activation(keras.activations.gelu), "gelu"),
    (lambda: keras.layers.Activation("sigmoid"), "sigmoid"),
    (lambda: keras.layers.Activation("tanh"), "tanh"),
    (lambda: keras.layers.Activation("swish"), "silu"),
    (lambda: keras.layers.Activation("hard_sigmoid"), "hard_sigmoid"),
    (lambda: keras.layers.Activation("softmax"), "softmax"),
    (lambda: keras.layers.Activation("linear"), "linear"),
])
def test_folded_function_equals_the_layer(make, name):
    """The function a layer folds to, called as a producer calls its activation, gives the
    layer's values exactly: on the edges (negatives, 0, -0, 6 and around it, large values)
    and on a random 4-D tensor; and a Dense holding it equals Dense then the layer."""
    layer = make()
    fn = _fold._activation_function(layer)
    assert fn is getattr(keras.activations, name)
    np.testing.assert_array_equal(_np(fn(_EDGES[None, :])), _np(layer(_EDGES[None, :])))
    x = _x((2, 5, 5, 7))
    np.testing.assert_array_equal(_np(fn(x)), _np(layer(x)))
    if name in ("relu", "relu6"):
        want = {"relu": np.maximum(_EDGES, 0), "relu6": np.clip(_EDGES, 0, 6)}[name]
        np.testing.assert_array_equal(_np(layer(_EDGES)), want)
    dense = keras.layers.Dense(7, bias_initializer="glorot_uniform")
    y = _x((3, 5))
    want = _np(layer(dense(y)))
    dense.activation = fn
    np.testing.assert_array_equal(_np(dense(y)), want)


@pytest.mark.parametrize("make, match", [
    (lambda: keras.layers.ReLU(max_value=5.0), r"ReLU\(max_value=5.0"),
    (lambda: keras.layers.ReLU(negative_slope=0.1), r"negative_slope=0.1"),
    (lambda: keras.layers.ReLU(threshold=0.5), r"threshold=0.5"),
    (lambda: keras.layers.LeakyReLU(), "LeakyReLU has no activation function"),
    (lambda: keras.layers.PReLU(), "PReLU has no activation function"),
    (lambda: keras.layers.Activation(lambda t: t * 2.0), "does not serialize as itself"),
])
def test_other_activation_layers_have_no_function(make, match):
    reason = _fold._activation_function(make())
    assert isinstance(reason, str)
    assert re.search(match, reason), reason


# ---- whole models -------------------------------------------------------------------------

def _mobilenet_block():
    """Conv -> BN -> ReLU(6.0), depthwise -> BN -> ReLU(6.0), 1x1 projection -> BN into a
    residual Add, then a ReLU after the Add (no candidate)."""
    inp = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(12, 1, use_bias=False, name="expand")(inp)
    h = keras.layers.BatchNormalization(name="expand_bn")(h)
    h = keras.layers.ReLU(6.0, name="expand_relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = keras.layers.ReLU(6.0, name="dw_relu")(h)
    h = keras.layers.Conv2D(4, 1, use_bias=False, name="project")(h)
    h = keras.layers.BatchNormalization(name="project_bn")(h)
    h = keras.layers.Add(name="add")([inp, h])
    h = keras.layers.ReLU(6.0, name="after_add")(h)
    return randomize_batchnorms(keras.Model(inp, h), gamma_scale=3.0)


def test_mobilenet_block_folds_through_strip_and_reloads(tmp_path):
    sparse = _prune(sparsekeras.sparsify(_mobilenet_block()))
    x = _x((3, 8, 8, 4))
    want = sparse(x)
    # The folded values must straddle the clip: otherwise relu6 and identity look alike.
    pre = keras.Model(sparse.input, sparse.get_layer("expand_bn").output)(x)
    assert float(_np(pre).max()) > 6 and float(_np(pre).min()) < 0
    stripped = _quiet_strip(sparse)  # after_add (after an Add) is no candidate: no warning
    assert _layers(stripped, ACTIVATION_LAYERS) == ["after_add"]
    assert _layers(stripped, (keras.layers.BatchNormalization, FoldedBatchNormalization)) == []
    for name in ("expand", "dw"):
        assert type(stripped.get_layer(name)) is CompactConv2D
        assert stripped.get_layer(name).activation is keras.activations.relu6
    assert stripped.get_layer("project").activation is keras.activations.linear
    _close(stripped(x), want)
    stripped.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("dw").activation is keras.activations.relu6
    _close(loaded(x), want)


def test_fold_activations_false_keeps_them_and_bad_values_raise():
    sparse = _prune(sparsekeras.sparsify(_mobilenet_block()))
    x = _x((2, 8, 8, 4))
    want = sparse(x)
    kept = _quiet_strip(sparse, fold_activations=False)
    assert _layers(kept, ACTIVATION_LAYERS) == ["after_add", "dw_relu", "expand_relu"]
    assert _layers(kept, keras.layers.BatchNormalization) == []  # BN still folds
    assert kept.get_layer("dw").activation is keras.activations.linear
    _close(kept(x), want)
    neither = _quiet_strip(sparse, fold_batchnorm=False, fold_activations=False)
    assert _layers(neither, ACTIVATION_LAYERS) == ["after_add", "dw_relu", "expand_relu"]
    assert len(_layers(neither, keras.layers.BatchNormalization)) == 3
    _close(neither(x), want)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=rf"fold_activations={bad!r}"):
            sparsekeras.strip(sparse, fold_activations=bad)


def test_fold_activations_alone():
    """fold_batchnorm=False: the ReLUs follow BatchNormalization layers, which stay, so they
    are no candidates; the Activation right after a Dense folds."""
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(5, 3, name="c")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="r")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(6, name="d")(h)
    h = keras.layers.Activation("tanh", name="t")(h)
    model = randomize_batchnorms(keras.Model(inp, h), gamma_scale=3.0)
    sparse = _prune(sparsekeras.sparsify(model))
    x = _x((2, 6, 6, 3))
    want = sparse(x)
    stripped = _quiet_strip(sparse, fold_batchnorm=False)
    assert _layers(stripped, ACTIVATION_LAYERS) == ["r"]
    assert _layers(stripped, keras.layers.BatchNormalization) == ["bn"]
    assert stripped.get_layer("d").activation is keras.activations.tanh
    assert stripped.get_layer("c").activation is keras.activations.linear
    _close(stripped(x), want)


def test_resnet_block():
    """Conv -> BN -> ReLU folds; the ReLU after the residual Add is left, with no warning."""
    inp = keras.Input((7, 7, 6))
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.Add(name="add")([inp, h])
    h = keras.layers.ReLU(name="relu_out")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Activation("relu", name="after_pool")(h)
    model = randomize_batchnorms(keras.Model(inp, h), gamma_scale=3.0)
    sparse = _prune(sparsekeras.sparsify(model))
    x = _x((2, 7, 7, 6))
    want = sparse(x)
    stripped = _quiet_strip(sparse)
    assert _layers(stripped, ACTIVATION_LAYERS) == ["after_pool", "relu_out"]
    assert stripped.get_layer("c1").activation is keras.activations.relu
    assert stripped.get_layer("c2").activation is keras.activations.linear
    _close(stripped(x), want)


def test_sequential_mlp_with_activation_layers(tmp_path):
    """Dense -> Activation("relu"), Dense (no bias) -> Activation("gelu"), Dense ->
    Activation("softmax"); an Activation right after the Input is no candidate."""
    model = keras.Sequential([
        keras.Input((10,)),
        keras.layers.Activation("tanh", name="on_input"),
        keras.layers.Dense(32, name="d1"),
        keras.layers.Activation("relu", name="a1"),
        keras.layers.Dense(32, use_bias=False, name="d2"),
        keras.layers.Activation("gelu", name="a2"),
        keras.layers.Dense(5, name="d3"),
        keras.layers.Activation("softmax", name="a3")])
    sparse = _prune(sparsekeras.sparsify(model))
    x = _x((6, 10), scale=2.0)
    want = sparse(x)
    stripped = _quiet_strip(sparse)
    assert type(stripped) is keras.Sequential
    assert _layers(stripped, ACTIVATION_LAYERS) == ["on_input"]
    assert [type(la).__name__ for la in stripped.layers] == [
        "Activation", "CompactDense", "CompactDense", "CompactDense"]
    assert type(stripped.get_layer("d1")) is CompactDense
    assert stripped.get_layer("d1").activation is keras.activations.relu
    assert stripped.get_layer("d2").activation is keras.activations.gelu
    assert stripped.get_layer("d2").bias is None  # folding needs no bias
    assert stripped.get_layer("d3").activation is keras.activations.softmax
    _close(stripped(x), want)
    stripped.save(tmp_path / "mlp.keras")
    _close(keras.models.load_model(tmp_path / "mlp.keras")(x), want)


def test_nested_models_fold_and_in_place_keeps_placeholders(tmp_path):
    inner_seq = keras.Sequential([keras.Input((6, 6, 4)),
                                  keras.layers.Conv2D(4, 3, padding="same", name="ic"),
                                  keras.layers.BatchNormalization(name="ibn"),
                                  keras.layers.ReLU(6.0, name="irelu")], name="inner_seq")
    i = keras.Input((6, 6, 4))
    j = keras.layers.DepthwiseConv2D(3, padding="same", name="fdw")(i)
    j = keras.layers.Activation("relu", name="fact")(j)
    inner_fn = keras.Model(i, j, name="inner_fn")
    inp = keras.Input((6, 6, 4))
    h = inner_fn(inner_seq(inp))
    h = keras.layers.ReLU(name="after_nested")(h)  # follows a model: no candidate
    h = keras.layers.Conv2D(3, 1, name="head")(h)
    h = keras.layers.Activation("sigmoid", name="head_act")(h)
    model = randomize_batchnorms(keras.Model(inp, h), gamma_scale=3.0)
    sparse = _prune(sparsekeras.sparsify(model))
    x = _x((2, 6, 6, 4))
    want = sparse(x)

    stripped = _quiet_strip(sparse)
    assert _layers(stripped, ACTIVATION_LAYERS) == ["after_nested"]
    assert stripped.get_layer("inner_seq").get_layer("ic").activation is keras.activations.relu6
    assert stripped.get_layer("inner_fn").get_layer("fdw").activation is keras.activations.relu
    assert stripped.get_layer("head").activation is keras.activations.sigmoid
    _close(stripped(x), want)
    stripped.save(tmp_path / "nested.keras")
    _close(keras.models.load_model(tmp_path / "nested.keras")(x), want)

    same = _quiet_strip(sparse, inplace=True)
    assert same is sparse
    assert _layers(same, FoldedActivation) == ["fact", "head_act", "irelu"]
    assert _layers(same, FoldedBatchNormalization) == ["ibn"]
    assert _layers(same, (keras.layers.ReLU, keras.layers.Activation)) == ["after_nested"]
    _close(same(x), want)
    same.save(tmp_path / "same.keras")  # the placeholders serialize
    _close(keras.models.load_model(tmp_path / "same.keras")(x), want)


# ---- what is not folded, and says so ------------------------------------------------------

def test_producer_output_feeding_two_layers_warns():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="d")(inp)
    a = keras.layers.ReLU(name="r")(h)
    model = keras.Model(inp, keras.layers.Add(name="add")([a, h]))
    x = _x((3, 5))
    stripped, text = _strip_warning(model)
    assert "left 1 activation layers unfolded" in text
    assert "r: 'd''s output feeds 2 layers" in text
    assert _layers(stripped, ACTIVATION_LAYERS) == ["r"]
    assert stripped.get_layer("d").activation is keras.activations.linear
    _close(stripped(x), model(x))


def test_batchnorm_output_feeding_two_layers_warns():
    """conv -> BN -> [ReLU, Add]: the BN folds, the ReLU cannot (the Add needs the value
    before it): named."""
    inp = keras.Input((5, 5, 3))
    h = keras.layers.Conv2D(3, 3, padding="same", name="c")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    r = keras.layers.ReLU(name="r")(h)
    model = randomize_batchnorms(keras.Model(inp, keras.layers.Add(name="add")([r, h])),
                                 gamma_scale=3.0)
    x = _x((2, 5, 5, 3))
    stripped, text = _strip_warning(model)
    assert "r: 'bn''s output feeds 2 layers" in text
    assert _layers(stripped, ACTIVATION_LAYERS) == ["r"]
    assert _layers(stripped, keras.layers.BatchNormalization) == []
    _close(stripped(x), model(x))


def test_unfoldable_cases_are_named():
    inp = keras.Input((4, 6))
    h = keras.layers.Dense(6, activation="tanh", name="own")(inp)
    h = keras.layers.ReLU(name="r_own")(h)                      # producer has an activation
    shared = keras.layers.Dense(6, name="shared")
    h = keras.layers.ReLU(name="r_shared")(shared(h))            # producer called twice
    h = shared(h)
    h = keras.layers.Dense(6, name="d_leaky")(h)
    h = keras.layers.LeakyReLU(name="leaky")(h)                  # no activation function
    h = keras.layers.Dense(6, name="d_clip")(h)
    h = keras.layers.ReLU(max_value=4.0, name="r_clip")(h)       # other arguments
    h = keras.layers.Dense(6, name="d_lambda")(h)
    h = keras.layers.Activation(lambda t: t * 2.0, name="a_lambda")(h)  # not serializable
    h = keras.layers.Dense(6, name="d_reg")(h)
    h = keras.layers.ReLU(activity_regularizer="l2", name="r_reg")(h)  # a loss on its output
    h = keras.layers.Dense(6, activity_regularizer="l2", name="d_reg2")(h)
    h = keras.layers.ReLU(name="r_reg2")(h)                     # the producer's loss would move
    relu = keras.layers.ReLU(name="r_twice")
    h = relu(keras.layers.Dense(6, name="d_t1")(h))              # one ReLU called twice
    h = relu(keras.layers.Dense(6, name="d_t2")(h))
    out_d = keras.layers.Dense(6, name="d_out")(h)
    out = keras.layers.ReLU(name="r_out")(out_d)                 # producer output is an output
    model = keras.Model(inp, [out_d, out])
    x = _x((2, 4, 6))
    want = model(x)
    stripped, text = _strip_warning(model, inplace=True)
    for expected in ["r_own: 'own' applies its own activation='tanh'",
                     "r_shared: 'shared' is called 2 times",
                     "leaky: LeakyReLU has no activation function",
                     "r_clip: ReLU(max_value=4.0",
                     "a_lambda: its activation",
                     "r_twice: called 2 times",
                     "r_out: 'd_out''s output is also a model output",
                     "r_reg: it has an activity_regularizer",
                     "r_reg2: 'd_reg2' has an activity_regularizer"]:
        assert expected in text, (expected, text)
    assert "left 9 activation layers unfolded" in text
    assert _layers(stripped, ACTIVATION_LAYERS) == sorted(
        ["r_own", "r_shared", "leaky", "r_clip", "a_lambda", "r_twice", "r_out", "r_reg",
         "r_reg2"])
    for got, w in zip(stripped(x), want):
        _close(got, w)


def test_subclass_and_other_dtype_are_named():
    class MyReLU(keras.layers.ReLU):
        def call(self, x):
            return super().call(x) * 2.0

    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="d1")(inp)
    h = MyReLU(name="mine")(h)
    h = keras.layers.Dense(6, dtype="mixed_float16", name="d16")(h)
    h = keras.layers.Activation("relu", dtype="float32", name="a32")(h)
    model = keras.Model(inp, h)
    x = _x((3, 5))
    want = model(x)
    stripped, text = _strip_warning(model, inplace=True)
    assert "mine: a subclass (MyReLU), whose call may differ" in text
    assert "a32: it computes in float32, 'd16' in float16" in text
    assert _layers(stripped, ACTIVATION_LAYERS) == ["a32", "mine"]
    _close(stripped(x), want)


def test_fold_batchnorm_folds_batchnorm_only_and_placeholders_keep_their_names():
    """The public fold_batchnorm is unchanged: the ReLUs stay. The placeholders load under
    their registered names (saved models hold FoldedBatchNormalization)."""
    model = _mobilenet_block()
    x = _x((2, 8, 8, 4))
    folded = sparsekeras.fold_batchnorm(model)
    assert _layers(folded, ACTIVATION_LAYERS) == ["after_add", "dw_relu", "expand_relu"]
    assert folded.get_layer("dw").activation is keras.activations.linear
    _close(folded(x), model(x))
    assert (keras.saving.get_registered_name(FoldedBatchNormalization)
            == "sparsekeras>FoldedBatchNormalization")
    assert keras.saving.get_registered_name(FoldedActivation) == "sparsekeras>FoldedActivation"
