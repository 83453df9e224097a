"""`model.export()` (TensorFlow SavedModel) at every stage of a model's life: while
GradualPruning prunes it, compacted after the schedule, after `decompact`, stripped; the served
endpoint takes what `model(x)` takes, and the SavedModel serves in a fresh process."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

import sparsekeras
from sparsekeras.callbacks import GradualPruning
from sparsekeras.layers import CompactDense, SparseConv2D, SparseDense
from sparsekeras.schedules import PolynomialDecay

N_IN, N_OUT = 12, 3


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, N_IN)).astype(np.float32),
            rng.standard_normal((n, N_OUT)).astype(np.float32))


def _model():
    return keras.Sequential([keras.Input((N_IN,)),
                             SparseDense(24, activation="relu", name="h1"),
                             SparseDense(24, activation="relu", name="h2"),
                             keras.layers.Dense(N_OUT, name="out")])


def _fit(model, steps, end_step):
    """`steps` training steps under a PolynomialDecay(0 -> 0.8 over end_step steps)."""
    x, y = _data(8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.8, 0, end_step, frequency=2))])


def _subprocess(code, cwd, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _serves_in_fresh_process(tmp_path, exported):
    """Each of `exported` (name -> (x, expected)) is loaded in ONE fresh process (after
    `import sparsekeras`: the ops live there) and called as `serve(x)`, with a plain tensor as
    `model(x)` takes it; its outputs are compared there."""
    for name, (x, expected) in exported.items():
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_y.npy", expected)
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, sparsekeras
        for name in {sorted(exported)!r}:
            served = tf.saved_model.load(name)
            x = np.load(name + "_x.npy")
            got = served.serve(tf.constant(x)).numpy()
            np.testing.assert_allclose(got, np.load(name + "_y.npy"), rtol=1e-5, atol=1e-5)
            sig = served.signatures["serving_default"]
            assert len(sig.structured_input_signature[1]) == 1, sig.structured_input_signature
            print("served", name)
    """)
    proc = _subprocess(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in exported:
        assert f"served {name}" in proc.stdout


def test_export_at_every_stage(tmp_path):
    """The model fit is pruning, the same model compacted by the callback at the end of its
    schedule, decompacted again, and its stripped copy: each exports (the compacted one used to
    raise TensorFlow's "Unable to save the object ... (a dictionary wrapper ...)", from the
    optimizer's variable index that compaction edited) and serves the model's outputs in a
    fresh process."""
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    x, _ = _data(5, seed=1)
    exported = {}

    _fit(model, steps=6, end_step=12)                     # mid-schedule
    layers = [model.get_layer("h1"), model.get_layer("h2")]
    assert all(0.0 < layer.sparsity < 0.8 and not layer.compacted for layer in layers)
    model.export(str(tmp_path / "pruning"), verbose=False)
    exported["pruning"] = (x, keras.ops.convert_to_numpy(model(x)))

    _fit(model, steps=10, end_step=12)                    # the schedule ends: compacted
    assert all(layer.compacted for layer in layers), [layer.compacted for layer in layers]
    model.export(str(tmp_path / "compacted"), verbose=False)
    exported["compacted"] = (x, keras.ops.convert_to_numpy(model(x)))

    stripped = sparsekeras.strip(model)
    assert sum(isinstance(layer, CompactDense) for layer in stripped.layers) == 2
    stripped.export(str(tmp_path / "stripped"), verbose=False)
    exported["stripped"] = (x, keras.ops.convert_to_numpy(stripped(x)))

    assert sorted(sparsekeras.decompact(model)) == ["h1", "h2"]
    model.export(str(tmp_path / "decompacted"), verbose=False)
    exported["decompacted"] = (x, keras.ops.convert_to_numpy(model(x)))
    for name in ("compacted", "stripped", "decompacted"):
        np.testing.assert_allclose(exported[name][1], exported["compacted"][1], atol=1e-5)

    _serves_in_fresh_process(tmp_path, exported)


def test_compacted_model_still_trains_saves_and_checkpoints_after_export(tmp_path):
    """Exporting does not disturb the compacted model: training continues compacted, and its
    `.keras` file and weights file hold the uncompacted layout (compaction edits the optimizer's
    variable index through its tracked dict, which must stay saveable by Keras too)."""
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    _fit(model, steps=8, end_step=4)
    assert model.get_layer("h1").compacted
    model.export(str(tmp_path / "served"), verbose=False)
    x, y = _data(16, seed=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert not loaded.get_layer("h1").compacted
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.get_layer("h1").mask),
                                  keras.ops.convert_to_numpy(model.get_layer("h1").mask))


def test_served_signature_is_the_call_structure(tmp_path):
    """A compiled Functional model with sparse convolutions and a dense head, and its stripped
    and densified copies: every export serves `serve(x)` with one tensor, as `model(x)`."""
    inputs = keras.Input((6, 6, 2))
    h = SparseConv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = SparseDense(N_OUT, name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 6, 6, 2)).astype(np.float32)
    model.fit(x, rng.standard_normal((16, N_OUT)).astype(np.float32), epochs=1, verbose=0,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.75, 0, 2, frequency=1))])
    for name, m in (("model", model), ("stripped", sparsekeras.strip(model)),
                    ("densified", sparsekeras.densify(model))):
        m.export(str(tmp_path / name), verbose=False)
        # Loaded here (test_export_at_every_stage serves in a fresh process).
        served = tf.saved_model.load(str(tmp_path / name))
        np.testing.assert_allclose(served.serve(tf.constant(x[:3])).numpy(),
                                   keras.ops.convert_to_numpy(m(x[:3])), rtol=1e-5, atol=1e-5,
                                   err_msg=name)
        specs = served.signatures["serving_default"].structured_input_signature
        assert specs[0] == () and len(specs[1]) == 1, (name, specs)
