"""BatchNorm folding (`sparsekeras.fold_batchnorm`, and `strip`'s default): a Dense / convolution
whose output feeds only an inference BatchNormalization takes its scale and shift, outputs
unchanged; what cannot fold is left whole and named."""
import warnings

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras._fold import FoldedBatchNormalization
from sparsekeras.layers import CompactConv2D, CompactDense, SparseConv2D, SparseDense

from layer_helper import randomize_batchnorms

RTOL = 1e-5


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _close(got, want):
    got, want = _np(got), _np(want)
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= RTOL * scale, float(np.abs(got - want).max()) / scale


def _bns(model):
    return [layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, (keras.layers.BatchNormalization, FoldedBatchNormalization))]


def _x(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _quiet_fold(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a model that folds entirely warns nothing
        return sparsekeras.fold_batchnorm(model, return_report=True, **kwargs)


@pytest.mark.parametrize("make, shape", [
    (lambda: keras.layers.Dense(7, name="p"), (4, 5)),
    (lambda: keras.layers.Dense(7, use_bias=False, name="p"), (4, 3, 5)),
    (lambda: keras.layers.Conv2D(6, 3, padding="same", name="p"), (2, 6, 6, 3)),
    (lambda: keras.layers.Conv2D(6, 3, use_bias=False, strides=2, name="p"), (2, 7, 7, 3)),
    (lambda: keras.layers.Conv2D(6, 3, groups=3, name="p"), (2, 6, 6, 3)),
    (lambda: keras.layers.Conv1D(6, 3, padding="causal", name="p"), (2, 9, 4)),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="p"),
     (2, 6, 6, 3)),
    (lambda: keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, name="p"), (2, 6, 6, 3)),
    (lambda: keras.layers.Conv2DTranspose(4, 3, strides=2, name="p"), (2, 5, 5, 3)),
], ids=["dense", "dense-nobias-rank3", "conv2d", "conv2d-nobias", "grouped", "conv1d",
        "depthwise-nobias", "separable", "transpose"])
def test_keras_producer_folds(make, shape):
    model = randomize_batchnorms(keras.Sequential([
        keras.Input(shape[1:]), make(), keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU()]))
    x = _x(shape)
    want = model(x, training=False)
    folded, report = _quiet_fold(model)
    assert report["folded"] == [("p", "bn")] and not report["skipped"]
    assert _bns(folded) == [] and type(folded) is keras.Sequential
    _close(folded(x), want)
    assert folded.get_layer("p").bias is not None
    _close(model(x, training=False), want)  # the original is untouched (a copy was folded)


def test_functional_mobilenet_block_folds_and_reloads(tmp_path):
    """Conv -> BN -> ReLU, depthwise -> BN, 1x1 projection -> BN feeding a residual Add; the
    BN's own output used twice (that is fine: the producer's output feeds the BN only)."""
    inp = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(8, 1, use_bias=False, name="expand")(inp)
    h = keras.layers.BatchNormalization(name="expand_bn")(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.Conv2D(4, 1, use_bias=False, name="project")(h)
    h = keras.layers.BatchNormalization(name="project_bn")(h)
    h = keras.layers.Add(name="add")([inp, h])  # named: an automatic name depends on test order
    out = keras.layers.Concatenate()([h, keras.layers.BatchNormalization(name="bn_in")(h)])
    model = randomize_batchnorms(keras.Model(inp, out))
    x = _x((3, 8, 8, 4))
    want = model(x)
    with pytest.warns(UserWarning, match=r"bn_in: its input comes from 'add' \(Add\)"):
        folded, report = sparsekeras.fold_batchnorm(model, return_report=True)
    assert sorted(report["folded"]) == [("dw", "dw_bn"), ("expand", "expand_bn"),
                                        ("project", "project_bn")]
    assert _bns(folded) == ["bn_in"]
    _close(folded(x), want)
    folded.save(tmp_path / "f.keras")
    _close(keras.models.load_model(tmp_path / "f.keras")(x), want)


def test_activation_inside_the_conv_is_not_folded():
    model = randomize_batchnorms(keras.Sequential([
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="c"),
        keras.layers.BatchNormalization(name="bn")]))
    x = _x((2, 6, 6, 3))
    with pytest.warns(UserWarning, match=r"bn: 'c' applies activation='relu' before"):
        folded, report = sparsekeras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [] and _bns(folded) == ["bn"]
    _close(folded(x), model(x))


def test_producer_with_two_consumers_is_not_folded():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="d")(inp)
    a = keras.layers.BatchNormalization(name="bn")(h)
    model = randomize_batchnorms(keras.Model(inp, keras.layers.Add()([a, h])))
    with pytest.warns(UserWarning, match=r"'d''s output feeds 2 layers"):
        folded, report = sparsekeras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == [] and _bns(folded) == ["bn"]
    x = _x((3, 5))
    _close(folded(x), model(x))


def test_producer_output_also_a_model_output_is_not_folded():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="d")(inp)
    model = randomize_batchnorms(
        keras.Model(inp, [h, keras.layers.BatchNormalization(name="bn")(h)]))
    with pytest.warns(UserWarning, match="also a model output"):
        _, report = sparsekeras.fold_batchnorm(model, return_report=True)
    assert report["folded"] == []


def test_shared_producer_training_call_and_other_axis_are_not_folded():
    inp = keras.Input((4, 5))
    shared = keras.layers.Dense(5, name="shared")
    h = keras.layers.BatchNormalization(name="bn_shared")(shared(inp))
    h = shared(h)
    h = keras.layers.Dense(5, name="d2")(h)
    h = keras.layers.BatchNormalization(name="bn_train")(h, training=True)
    h = keras.layers.Dense(5, name="d3")(h)
    out = keras.layers.BatchNormalization(axis=1, name="bn_axis1")(h)
    model = randomize_batchnorms(keras.Model(inp, out))
    with pytest.warns(UserWarning) as record:
        folded, report = sparsekeras.fold_batchnorm(model, return_report=True)
    text = " ".join(str(w.message) for w in record)
    assert "bn_shared: 'shared' is called 2 times" in text
    assert "bn_train: called with training=True" in text
    assert "bn_axis1: axis=1 is not 'd3''s channel axis" in text
    assert report["folded"] == []


def test_sparse_layers_keep_their_pattern_and_strip_folds_by_default():
    """SparseConv2D and SparseDense with 90% masks: the folded kernels are zero exactly where
    the masks are, strip's stored forms hold as many values as the masks keep, outputs equal."""
    rng = np.random.default_rng(5)
    dense = randomize_batchnorms(keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(16, 3, use_bias=False, name="c"),
        keras.layers.BatchNormalization(name="bn_c"),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(12, name="d"),
        keras.layers.BatchNormalization(name="bn_d")]))
    sparse = sparsekeras.sparsify(dense)
    masks = {}
    for name in ("c", "d"):
        layer = sparse.get_layer(name)
        masks[name] = rng.random(tuple(layer.mask.shape)) > 0.9
        layer.set_mask(masks[name])
    x = _x((4, 8, 8, 3))
    want = sparse(x)
    folded, report = _quiet_fold(sparse)
    assert len(report["folded"]) == 2 and _bns(folded) == []
    for name in ("c", "d"):
        layer = folded.get_layer(name)
        assert isinstance(layer, (SparseConv2D, SparseDense))
        np.testing.assert_array_equal(_np(layer.mask) != 0, masks[name])
        assert np.all(_np(layer.kernel)[~masks[name]] == 0)
    _close(folded(x), want)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        stripped = sparsekeras.strip(sparse)
    assert _bns(stripped) == []
    assert type(stripped.get_layer("c")) is CompactConv2D
    assert type(stripped.get_layer("d")) is CompactDense
    assert stripped.get_layer("c").nnz == int(masks["c"].sum())
    assert stripped.get_layer("d").nnz <= int(masks["d"].sum())  # a kept weight may be 0
    _close(stripped(x), want)
    kept = sparsekeras.strip(sparse, fold_batchnorm=False)
    assert _bns(kept) == ["bn_c", "bn_d"]
    _close(kept(x), want)
    with pytest.raises(ValueError, match="fold_batchnorm='yes'"):
        sparsekeras.strip(sparse, fold_batchnorm="yes")


def test_sparse_depthwise_and_separable_fold_through_strip():
    """SparseDepthwiseConv2D (stored as a CompactConv2D) and SparseSeparableConv2D (its pointwise
    part) with BatchNorm after them, pruned: strip folds both, outputs equal."""
    rng = np.random.default_rng(7)
    dense = randomize_batchnorms(keras.Sequential([
        keras.Input((7, 7, 4)),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw"),
        keras.layers.BatchNormalization(name="bn_dw"),
        keras.layers.SeparableConv2D(6, 3, padding="same", name="sep"),
        keras.layers.BatchNormalization(name="bn_sep")]))
    sparse = sparsekeras.sparsify(dense)
    for t in sparsekeras.callbacks.prunable_targets(sparse):
        t.set_mask(rng.random(tuple(t.mask.shape)) > 0.5)
    x = _x((2, 7, 7, 4))
    want = sparse(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        stripped = sparsekeras.strip(sparse)
    assert _bns(stripped) == []
    assert stripped.get_layer("dw").bias is not None and stripped.get_layer("sep").bias is not None
    _close(stripped(x), want)


@pytest.mark.parametrize("block", [1, 4])
def test_stored_forms_fold_on_their_values(block):
    """A model stripped without folding, folded afterwards: CompactDense (CSC and (1, 4)
    blocks) and CompactConv2D scale their stored values; the structure is unchanged."""
    rng = np.random.default_rng(2)
    dense = randomize_batchnorms(keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(8, 3, name="c"),
        keras.layers.BatchNormalization(name="bn_c"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, name="d"),
        keras.layers.BatchNormalization(name="bn_d")]))
    sparse = sparsekeras.sparsify(dense)
    sparse.get_layer("c").set_mask(rng.random((3, 3, 2, 8)) > 0.7)
    blocks = np.repeat(rng.random((128, 16 // block)) > 0.8, block, axis=1)
    sparse.get_layer("d").set_mask(blocks)
    stripped = sparsekeras.strip(sparse, fold_batchnorm=False, block=block)
    assert stripped.get_layer("d").block == block
    x = _x((3, 6, 6, 2))
    want = stripped(x)
    before = {n: _np(stripped.get_layer(n).indices).copy() for n in ("c", "d")}
    folded, report = _quiet_fold(stripped)
    assert len(report["folded"]) == 2
    for n in ("c", "d"):
        np.testing.assert_array_equal(_np(folded.get_layer(n).indices), before[n])
    _close(folded(x), want)


def test_compacted_sparse_dense_folds():
    dense = randomize_batchnorms(keras.Sequential([
        keras.Input((10,)), keras.layers.Dense(8, name="d"),
        keras.layers.BatchNormalization(name="bn")]))
    sparse = sparsekeras.sparsify(dense)
    sparse.get_layer("d").set_mask(np.random.default_rng(0).random((10, 8)) > 0.8)
    sparsekeras.compact(sparse)
    assert sparse.get_layer("d").compacted
    x = _x((5, 10))
    want = sparse(x)
    folded, _ = _quiet_fold(sparse)
    assert _bns(folded) == []
    _close(folded(x), want)


def test_nested_models_fold_and_strip_in_place_keeps_the_object(tmp_path):
    inner_seq = keras.Sequential([keras.Input((6, 6, 4)),
                                  keras.layers.Conv2D(4, 3, padding="same", name="ic"),
                                  keras.layers.BatchNormalization(name="ibn")], name="inner_seq")
    i = keras.Input((6, 6, 4))
    j = keras.layers.DepthwiseConv2D(3, padding="same", name="fdw")(i)
    inner_fn = keras.Model(i, keras.layers.BatchNormalization(name="fbn")(j), name="inner_fn")
    inp = keras.Input((6, 6, 4))
    h = inner_seq(inp)
    h = inner_fn(h)
    h = keras.layers.BatchNormalization(name="after_nested")(h)  # follows a model: not folded
    model = randomize_batchnorms(keras.Model(inp, h))
    x = _x((2, 6, 6, 4))
    want = model(x)
    with pytest.warns(UserWarning, match="after_nested: its input comes from the nested model"):
        folded, report = sparsekeras.fold_batchnorm(model, return_report=True)
    assert sorted(report["folded"]) == [("inner_fn/fdw", "inner_fn/fbn"),
                                        ("inner_seq/ic", "inner_seq/ibn")]
    assert _bns(folded) == ["after_nested"]
    _close(folded(x), want)

    sparse = sparsekeras.sparsify(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", UserWarning)
        same = sparsekeras.strip(sparse, inplace=True)
    assert same is sparse
    assert any("after_nested" in str(w.message) for w in record
               if issubclass(w.category, UserWarning))
    assert sorted(_bns(same)) == ["after_nested", "fbn", "ibn"]  # identities where folded
    assert sum(isinstance(la, FoldedBatchNormalization)
               for la in same._flatten_layers(recursive=True)) == 2
    _close(same(x), want)
    same.save(tmp_path / "same.keras")  # the identity placeholders serialize
    _close(keras.models.load_model(tmp_path / "same.keras")(x), want)


def test_user_subclass_is_not_folded():
    class MyConv(keras.layers.Conv2D):
        def call(self, x):
            return super().call(x) * 2.0

    model = randomize_batchnorms(keras.Sequential([
        keras.Input((5, 5, 2)), MyConv(3, 1, name="mine"),
        keras.layers.BatchNormalization(name="bn")]))
    with pytest.warns(UserWarning, match=r"bn: its input comes from 'mine' \(MyConv\), a user"):
        folded, report = sparsekeras.fold_batchnorm(model, inplace=True, return_report=True)
    assert folded is model and report["folded"] == []


def test_bad_input():
    with pytest.raises(ValueError, match="fold_batchnorm expects a Keras model. Received: Dense"):
        sparsekeras.fold_batchnorm(keras.layers.Dense(3))
