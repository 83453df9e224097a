"""sparsify / strip / densify on the whole layer tree: layers inside custom blocks (made in
code, as keras_hub's are), nested and shared-input models, the report, layer_names, the
Prunable protocol, and saving such models (fresh-process loads)."""
import os
import subprocess
import sys
import re
import textwrap
import warnings

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras.callbacks import GradualPruning, prunable_targets
from sparsekeras.layers import CompactDense, SparseDense

import convert_blocks
from convert_blocks import Block, OwnWeights

TESTS = os.path.dirname(os.path.abspath(__file__))


def _np(value):
    return np.array(keras.ops.convert_to_numpy(value))


def _block_model():
    inp = keras.Input((8,))
    h = Block(8, name="block")(inp)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h), name="blocky")


def _x(n=16, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _fresh(code, tmp_path, timeout=300):
    """Run code in a fresh Python process (tests dir importable); returns its stdout."""
    prelude = f"import sys; sys.path.insert(0, {TESTS!r})\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sparsify_reaches_layers_made_inside_a_custom_block():
    model = _block_model()
    x = _x()
    y = _np(model(x))
    sparse, report = sparsekeras.sparsify(model, return_report=True)
    block = sparse.get_layer("block")
    assert type(block.ffn) is SparseDense and type(block.proj) is SparseDense
    assert type(sparse.get_layer("head")) is SparseDense
    assert type(model.get_layer("block").ffn) is keras.layers.Dense  # the original is untouched
    assert [r["path"] for r in report.converted()] == ["block/ffn", "block/proj", "head"]
    assert report.prunable_fraction == 1.0 and sparsekeras.coverage(sparse) == 1.0
    np.testing.assert_allclose(_np(sparse(x)), y, rtol=1e-6, atol=1e-6)
    # weights come by path: the block's two kernels have the same shape in both orders
    np.testing.assert_array_equal(_np(block.proj.kernel), _np(model.get_layer("block").proj.kernel))
    assert "proj" in str(report) and "100.0%" in str(report)


def test_prune_compact_strip_and_reload_nested_layers(tmp_path):
    model = sparsekeras.sparsify(_block_model())
    x, y = _x(64), np.random.default_rng(1).integers(0, 3, 64)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = sparsekeras.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=8,
                                                     frequency=2)
    pruning = GradualPruning(schedule)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[pruning])
    block = model.get_layer("block")
    for layer in (block.ffn, block.proj, model.get_layer("head")):
        assert layer.sparsity == pytest.approx(0.9, abs=0.02), layer.name
        assert np.mean(_np(layer.kernel) == 0) >= 0.89
    assert block.ffn.compacted and block.proj.compacted  # compaction reaches nested layers
    assert history.history["sparsity"][-1] == pytest.approx(0.9, abs=0.02)
    y_model = _np(model(x))
    model.save(tmp_path / "pruned.keras")
    stripped = sparsekeras.strip(model)
    assert isinstance(stripped.get_layer("block").ffn, CompactDense)
    np.testing.assert_allclose(_np(stripped(x)), y_model, rtol=1e-5, atol=1e-5)
    stripped.save(tmp_path / "stripped.keras")
    assert sorted(sparsekeras.decompact(model)) == sorted(
        [block.ffn.name, block.proj.name, model.get_layer("head").name])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y_model)
    out = _fresh("""
        import numpy as np, keras, sparsekeras, convert_blocks
        x, y = np.load("x.npy"), np.load("y.npy")
        for name in ("pruned", "stripped"):
            m = keras.saving.load_model(name + ".keras")
            ffn = m.get_layer("block").ffn
            err = np.abs(keras.ops.convert_to_numpy(m(x)) - y).max()
            print(name, type(ffn).__name__, float(np.mean(
                keras.ops.convert_to_numpy(ffn.kernel if hasattr(ffn, "mask") else
                                           ffn.to_dense_kernel()) == 0)), err)
            m.save(name + "_again.keras")  # loads as it was saved, and saves the same way
            m2 = keras.saving.load_model(name + "_again.keras")
            print(name + "_again", type(m2.get_layer("block").ffn).__name__)
    """, tmp_path)
    lines = dict((line.split()[0], line.split()[1:]) for line in out.strip().splitlines())
    assert lines["pruned"][0] == "SparseDense" and float(lines["pruned"][1]) >= 0.89
    assert lines["stripped"][0] == "CompactDense"
    assert float(lines["pruned"][2]) <= 1e-5 and float(lines["stripped"][2]) <= 1e-5
    assert lines["pruned_again"] == ["SparseDense"] and lines["stripped_again"] == ["CompactDense"]


def test_densify_gives_plain_keras_that_loads_without_sparsekeras(tmp_path):
    model = sparsekeras.sparsify(_block_model())
    model.get_layer("block").ffn.set_mask(np.random.default_rng(0).random((8, 16)) > 0.8)
    x = _x()
    y = _np(model(x))
    for source in (model, sparsekeras.strip(model)):
        plain = sparsekeras.densify(source)
        kinds = {type(layer).__module__.split(".")[0]
                 for layer in plain._flatten_layers(include_self=False, recursive=True)}
        assert kinds <= {"keras", "convert_blocks"}, kinds
        np.testing.assert_allclose(_np(plain(x)), y, rtol=1e-5, atol=1e-5)
    plain.save(tmp_path / "plain.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = _fresh("""
        import numpy as np, keras, convert_blocks
        m = keras.saving.load_model("plain.keras")
        print("sparsekeras" in sys.modules, np.abs(keras.ops.convert_to_numpy(
            m(np.load("x.npy"))) - np.load("y.npy")).max())
    """, tmp_path)
    loaded_sk, err = out.split()
    assert loaded_sk == "False" and float(err) <= 1e-5


def test_inner_model_on_the_outer_models_input():
    """The keras_hub pattern: a task model reuses its backbone's own Input."""
    inp = keras.Input((8,), name="tokens")
    h = keras.layers.Dense(16, activation="relu", name="h")(inp)
    inner = keras.Model(inp, h, name="backbone")
    out = keras.layers.Dense(3, name="out")(inner(inp))
    outer = keras.Model(inp, out, name="outer_shared")
    x = _x()
    sparse = sparsekeras.sparsify(outer)
    assert type(sparse.get_layer("backbone").get_layer("h")) is SparseDense
    assert type(sparse.get_layer("out")) is SparseDense
    np.testing.assert_allclose(_np(sparse(x)), _np(outer(x)), rtol=1e-6, atol=1e-6)
    stripped = sparsekeras.strip(sparse)
    assert isinstance(stripped.get_layer("backbone").get_layer("h"), CompactDense)


def test_layer_names_select_blocks_and_reject_unconvertible_layers():
    model = _block_model()
    sparse = sparsekeras.sparsify(model, layer_names=["block"])
    assert type(sparse.get_layer("block").ffn) is SparseDense
    assert type(sparse.get_layer("head")) is keras.layers.Dense
    with pytest.raises(ValueError, match=r"'norm' \(LayerNormalization\)"):
        sparsekeras.sparsify(model, layer_names=["norm"])
    with pytest.raises(ValueError, match=r"no layer named \['nope'\]"):
        sparsekeras.sparsify(model, layer_names=["nope"])
    inp = keras.Input((8,))
    own = keras.Model(inp, OwnWeights(4, name="own")(inp))
    with pytest.raises(ValueError, match=r"'own' \(OwnWeights\): no sparse counterpart"):
        sparsekeras.sparsify(own, layer_names=["own"])


def test_layers_left_dense_are_said_once():
    inp = keras.Input((8,))
    h = keras.layers.Dense(8, name="d")(inp)
    model = keras.Model(inp, OwnWeights(4, name="own")(h))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparse, report = sparsekeras.sparsify(model, return_report=True)
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)
            and "sparsify left" in str(w.message)]
    assert len(said) == 1
    assert re.search(r"left 1 layers with weight matrices dense: own \(OwnWeights: no sparse "
                     r"counterpart", said[0])
    assert [r["path"] for r in report.kept()] == ["own"]
    assert report.prunable_fraction == pytest.approx(64 / (64 + 32))


def test_prunable_protocol_user_layer(tmp_path):
    scale_cls = convert_blocks.prunable_scale()
    inp = keras.Input((8,))
    h = scale_cls(6, name="scale")(inp)
    model = keras.Model(inp, SparseDense(3, name="out")(h))
    targets = prunable_targets(model)
    assert [t.name for t in targets] == ["scale/w", "out"]
    assert sparsekeras.coverage(model) == 1.0
    model.compile(optimizer="adam", loss="mse")
    x = _x(32)
    schedule = sparsekeras.schedules.ConstantSparsity(0.75, begin_step=0, frequency=1)
    history = model.fit(x, np.zeros((32, 3), np.float32), epochs=2, batch_size=8, verbose=0,
                        callbacks=[GradualPruning(schedule, compact=False)])
    scale = model.get_layer("scale")
    assert np.mean(_np(scale.w) == 0) == pytest.approx(0.75, abs=0.03)
    assert np.all(_np(scale.w)[_np(scale.pruning_masks[0]) == 0] == 0)
    assert scale.sparsity == pytest.approx(0.75, abs=0.03)
    assert history.history["sparsity/scale/w"][-1] == pytest.approx(0.75, abs=0.03)
    # the bias, not declared, is not pruned
    assert len(scale.pruning_masks) == 1


def test_callback_sparsity_is_over_all_prunable_parameters():
    inp = keras.Input((20,))
    h = SparseDense(30, name="big")(inp)          # 600 weights
    model = keras.Model(inp, SparseDense(2, name="small")(h))   # 60 weights
    model.compile(optimizer="sgd", loss="mse")
    big, small = model.get_layer("big"), model.get_layer("small")
    small.prunable = False
    pruning = GradualPruning(sparsekeras.schedules.ConstantSparsity(0.5, begin_step=100))
    pruning.set_model(model)
    big.set_mask(np.arange(600).reshape(20, 30) % 10 != 0)   # 10% pruned
    logs = pruning.sparsity_logs()
    assert logs["sparsity"] == pytest.approx(0.1)
    small.prunable = True
    pruning = GradualPruning(sparsekeras.schedules.ConstantSparsity(0.5, begin_step=100))
    pruning.set_model(model)
    small.set_mask(np.zeros((30, 2)))
    assert pruning.sparsity_logs()["sparsity"] == pytest.approx((60 + 60) / 660)


def test_new_model_on_a_sparsified_models_tensors_saves_its_blocks(tmp_path):
    """A block keeps what it needs to save wherever it goes: here into a new Functional model
    built on the sparsified model's tensors (as keras_hub task models are)."""
    sparse = sparsekeras.sparsify(_block_model())
    sparse.get_layer("block").ffn.set_mask(np.random.default_rng(0).random((8, 16)) > 0.8)
    head = keras.Model(sparse.inputs[0], sparse.get_layer("block").output, name="head_only")
    x = _x()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(head(x)))
    head.save(tmp_path / "head.keras")
    out = _fresh("""
        import numpy as np, keras, sparsekeras, convert_blocks
        m = keras.saving.load_model("head.keras")
        ffn = m.get_layer("block").ffn
        print(type(ffn).__name__, ffn.sparsity > 0.5,
              np.abs(keras.ops.convert_to_numpy(m(np.load("x.npy"))) - np.load("y.npy")).max())
    """, tmp_path)
    cls, pruned, err = out.split()
    assert (cls, pruned) == ("SparseDense", "True") and float(err) <= 1e-6


def test_log_names_are_unique_when_layer_names_repeat():
    """Two attention layers both have a `query` projection: their sparsity logs must not
    overwrite each other."""
    x_in = keras.Input((6, 8))
    h = keras.layers.MultiHeadAttention(2, 4, name="mha_a")(x_in, x_in)
    h = keras.layers.MultiHeadAttention(2, 4, name="mha_b")(h, h)
    model = sparsekeras.sparsify(keras.Model(x_in, h))
    pruning = GradualPruning(sparsekeras.schedules.ConstantSparsity(0.5, begin_step=100))
    pruning.set_model(model)
    keys = [k for k in pruning.sparsity_logs() if k.startswith("sparsity/")]
    assert len(keys) == len(set(keys)) == 8, keys
    assert "sparsity/mha_a/query" in keys and "sparsity/mha_b/query" in keys, keys
