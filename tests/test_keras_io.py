"""Saving and serving: `.keras` files at every pruning stage, `strip`, SavedModel export, the demo."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras.callbacks import GradualPruning, prunable_layers
from sparsekeras.layers import CompactDense, SparseDense
from sparsekeras.schedules import PolynomialDecay

from layer_helper import _np

N_IN, N_HIDDEN, N_OUT = 16, 32, 4


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, N_IN)).astype(np.float32),
            rng.standard_normal((n, N_OUT)).astype(np.float32))


def _model():
    # Different switch points, so that mid-pruning one layer computes sparse and one dense.
    return keras.Sequential([keras.Input((N_IN,)),
                             SparseDense(N_HIDDEN, activation="relu", switch_sparsity=0.3,
                                         name="h1"),
                             SparseDense(N_HIDDEN, activation="relu", switch_sparsity=0.9,
                                         name="h2"),
                             keras.layers.Dense(N_OUT, name="out")])


def _prune(model, steps, end_step=16, final=0.8):
    """Fit `steps` steps of a PolynomialDecay(0 -> final over end_step steps, every 2 steps)."""
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x, y = _data(8 * steps)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[GradualPruning(PolynomialDecay(0.0, final, 0, end_step, frequency=2))])
    return model


def _subprocess(code, cwd, timeout=300):
    """Run Python code in a fresh interpreter, away from the source tree (see conftest)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _assert_same_sparse_state(loaded, original, x):
    np.testing.assert_allclose(_np(loaded(x)), _np(original(x)), rtol=1e-6, atol=1e-6)
    pairs = list(zip(prunable_layers(loaded), prunable_layers(original)))
    assert len(pairs) == len(prunable_layers(original)) > 0
    for new, old in pairs:
        assert type(new) is SparseDense and new.name == old.name
        np.testing.assert_array_equal(_np(new.mask), _np(old.mask))
        np.testing.assert_array_equal(_np(new.kernel), _np(old.kernel))
        assert new.sparsity == old.sparsity
        assert new.uses_sparse_kernels == old.uses_sparse_kernels
        assert (new.switch_sparsity, new.compute) == (old.switch_sparsity, old.compute)


# ---- .keras at every stage ----------------------------------------------------------------

@pytest.mark.parametrize("stage", ["before", "mid", "after"])
@pytest.mark.parametrize("compiled", [True, False])
def test_keras_file_round_trip(tmp_path, stage, compiled):
    keras.utils.set_random_seed(0)
    model = _model()
    if stage == "mid":
        _prune(model, steps=6)    # last pruned at step 4 of 16: 46% sparse
    elif stage == "after":
        _prune(model, steps=20)   # past end_step: 80%
    if not compiled and model.compiled:
        # Past the schedule the callback compacted the layers: their weights list holds the
        # nonzero values; an uncompacted clone takes Dense's layout, so decompact first.
        sparsekeras.decompact(model)
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        for layer in prunable_layers(clone):
            layer.refresh_structure()
        model = clone
    x, _ = _data(10, seed=1)
    layers = prunable_layers(model)
    expected_sparsity = {"before": 0.0, "mid": None, "after": 0.8}[stage]
    for layer in layers:
        if expected_sparsity is not None:
            assert layer.sparsity == pytest.approx(expected_sparsity, abs=1.0 / 512)
        else:
            assert 0.3 < layer.sparsity < 0.7
    if stage == "mid":
        assert [layer.uses_sparse_kernels for layer in layers] == [True, False]
    path = tmp_path / f"{stage}.keras"
    model.save(str(path))
    loaded = keras.models.load_model(str(path))  # no custom_objects
    _assert_same_sparse_state(loaded, model, x)
    if compiled and stage != "before":
        assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    # The loaded model keeps training with its masks in force.
    if not loaded.compiled:
        loaded.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    xs, ys = _data(16, seed=2)
    loaded.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
    for layer, old in zip(prunable_layers(loaded), layers):
        kernel, mask = _np(layer.kernel), _np(layer.mask)
        assert (kernel[mask == 0] == 0).all()
        np.testing.assert_array_equal(mask, _np(old.mask))


def test_load_in_fresh_process(tmp_path):
    """A mid-pruning .keras file loads in a new interpreter after `import sparsekeras` only."""
    keras.utils.set_random_seed(1)
    model = _prune(_model(), steps=6)
    x, _ = _data(10, seed=3)
    model.save(str(tmp_path / "m.keras"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(model(x)))
    np.save(tmp_path / "sparse.npy", np.array([l.uses_sparse_kernels
                                               for l in prunable_layers(model)]))
    code = textwrap.dedent("""
        import numpy as np, keras, sparsekeras
        m = keras.models.load_model("m.keras")
        x, y = np.load("x.npy"), np.load("y.npy")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(m(x)), y, rtol=1e-6, atol=1e-6)
        flags = [l.uses_sparse_kernels for l in sparsekeras.callbacks.prunable_layers(m)]
        assert flags == list(np.load("sparse.npy")), flags
        print("LOAD_OK")
    """)
    result = _subprocess(code, tmp_path)
    assert result.returncode == 0 and "LOAD_OK" in result.stdout, result.stderr[-5000:]


# ---- strip --------------------------------------------------------------------------------

def test_strip_outputs_and_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    model = _prune(_model(), steps=20)
    x, _ = _data(10, seed=4)
    stripped = sparsekeras.strip(model)
    kinds = {layer.name: type(layer) for layer in stripped.layers}
    assert kinds == {"h1": CompactDense, "h2": CompactDense, "out": keras.layers.Dense}
    for layer in prunable_layers(model):
        compact = stripped.get_layer(layer.name)
        assert compact.nnz == int(np.count_nonzero(_np(layer.kernel)))
        np.testing.assert_array_equal(compact.to_dense_kernel(),
                                      _np(layer.kernel) * _np(layer.mask))
    np.testing.assert_allclose(_np(stripped(x)), _np(model(x)), rtol=1e-5, atol=1e-6)
    # The original is untouched.
    assert all(type(layer) is SparseDense for layer in prunable_layers(model))

    path = tmp_path / "stripped.keras"
    stripped.save(str(path))
    loaded = keras.models.load_model(str(path))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in stripped.layers]
    np.testing.assert_allclose(_np(loaded(x)), _np(stripped(x)), rtol=1e-6, atol=1e-6)
    for layer in loaded.layers[:2]:
        assert layer.nnz == stripped.get_layer(layer.name).nnz
        assert [w.name for w in layer.trainable_weights] == ["values", "bias"]


def test_stripped_file_is_small(tmp_path):
    keras.utils.set_random_seed(3)
    dense = keras.Sequential([keras.Input((256,)),
                              keras.layers.Dense(256, activation="relu", name="h1"),
                              keras.layers.Dense(256, name="h2")])
    sparse = sparsekeras.sparsify(dense)
    callback = GradualPruning(PolynomialDecay(0.0, 0.9, 0, 1))
    callback.set_model(sparse)
    callback.prune(0.9)
    for layer in prunable_layers(sparse):
        assert layer.sparsity == pytest.approx(0.9, abs=1e-4)
    stripped = sparsekeras.strip(sparse)
    dense.save(str(tmp_path / "dense.keras"))
    stripped.save(str(tmp_path / "stripped.keras"))
    size_dense = os.path.getsize(tmp_path / "dense.keras")
    size_stripped = os.path.getsize(tmp_path / "stripped.keras")
    assert size_stripped <= 0.25 * size_dense, (size_stripped, size_dense)
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    np.testing.assert_allclose(_np(stripped(x)), _np(sparse(x)), rtol=1e-5, atol=1e-5)


def test_strip_subclassed_in_place_or_says_how():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = SparseDense(4)

        def call(self, x):
            return self.d(x)

    model = Sub()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    model(x)
    model.d.set_mask(np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]]))
    y = keras.ops.convert_to_numpy(model(x))
    with pytest.raises(ValueError, match=r"strip\(model, inplace=True\)"):
        sparsekeras.strip(model)  # an unregistered class cannot be copied through serialization
    assert sparsekeras.strip(model, inplace=True) is model
    assert isinstance(model.d, CompactDense) and model.d.nnz == 5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), y, rtol=1e-6, atol=1e-6)


# ---- SavedModel export, served in a fresh process -----------------------------------------

_SERVE = textwrap.dedent("""
    import numpy as np
    import sparsekeras
    import tensorflow as tf
    m = tf.saved_model.load("exported")
    x, y = np.load("x.npy"), np.load("y.npy")
    out = m.serve(tf.constant(x))
    np.testing.assert_allclose(out.numpy(), y, rtol=1e-5, atol=1e-5)
    print("SERVE_OK")
""")


@pytest.mark.parametrize("form", ["pruned_mid", "pruned", "stripped", "stripped_blocks"])
def test_export_and_serve(tmp_path, form):
    keras.utils.set_random_seed(4)
    model = _prune(_model(), steps=6 if form == "pruned_mid" else 20)
    if form == "stripped":
        model = sparsekeras.strip(model)
    if form == "stripped_blocks":  # the block-CSC op in a served SavedModel
        model = sparsekeras.strip(model, block=2)
        assert [layer.block for layer in model.layers[:2]] == [2, 2]
    x, _ = _data(6, seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(model(x)))
    model.export(str(tmp_path / "exported"), verbose=False)
    result = _subprocess(_SERVE, tmp_path)
    assert result.returncode == 0 and "SERVE_OK" in result.stdout, (
        f"exit {result.returncode}\n{result.stderr[-5000:]}")


# ---- the demo -----------------------------------------------------------------------------

def test_demo_quick(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-m", "sparsekeras", "demo", "--quick", "--out",
                             str(out)], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "test accuracy" in result.stdout
    assert "same outputs: True" in result.stdout
    assert (out / "sparsekeras_demo.png").is_file()


def test_demo_rigl_quick(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-m", "sparsekeras", "demo", "--rigl", "--quick",
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    lines = {line.split("  ")[0]: line.split() for line in result.stdout.splitlines()}
    assert float(lines["sparsity"][-1]) == pytest.approx(0.9, abs=0.002)
    assert float(lines["test accuracy"][-1]) > 0.3  # far above chance (0.1) after 3 epochs
    assert "mask updates: 5," in result.stdout  # 3 x 23 steps, every 10 until 75%
    assert "training time (whole fit)" in result.stdout
    assert (out / "sparsekeras_demo_rigl.png").is_file()
