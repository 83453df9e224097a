"""A model's whole life for every kind of model (issue 17): lazily built and subclassed models,
the sparsity reaching TensorBoard whatever the callback order, no TensorFlow warning in fit."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.callbacks import GradualPruning, prunable_targets
from sparsekeras.layers import SparseConv2D, SparseDense
from sparsekeras.schedules import PolynomialDecay

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.8


@keras.saving.register_keras_serializable(package="test_lifecycle")
class SubclassedNet(keras.Model):
    """Two SparseConv2D and two SparseDense, built by the first call (in fit's traced step)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.c1 = SparseConv2D(4, 3, padding="same", activation="relu")
        self.c2 = SparseConv2D(4, 3, padding="same", activation="relu")
        self.flat = keras.layers.Flatten()
        self.d1 = SparseDense(16, activation="relu")
        self.d2 = SparseDense(3)

    def call(self, x):
        return self.d2(self.d1(self.flat(self.c2(self.c1(x)))))


def _inputless_sequential():
    return keras.Sequential([SparseConv2D(4, 3, padding="same", activation="relu"),
                             SparseConv2D(4, 3, padding="same", activation="relu"),
                             keras.layers.Flatten(), SparseDense(16, activation="relu"),
                             SparseDense(3)])


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 6, 6, 2), dtype=np.float32), rng.integers(0, 3, n))


def _fresh(code, cwd, timeout=300, log_level="2"):
    """Run `code` in a fresh interpreter (spawn semantics: no fork), with this directory on
    the path so that the test module's registered model class can be imported."""
    prelude = f"import sys; sys.path.insert(0, {HERE!r})\n"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=log_level)
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kind", ["subclassed", "sequential_without_input"])
def test_lazy_model_first_fit_prunes_and_reloads(kind, tmp_path):
    """The layers are built inside the traced step of the first fit (no keras.Input): fit with
    GradualPruning reaches the target, and the .keras file predicts the same in a fresh process."""
    keras.utils.set_random_seed(0)
    model = SubclassedNet() if kind == "subclassed" else _inputless_sequential()
    assert not model.built
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[GradualPruning(PolynomialDecay(0.0, TARGET, 0, 4, frequency=1))])
    targets = prunable_targets(model)
    assert len(targets) == 4
    for t in targets:  # per layer to the target (up to rounding over a small kernel)
        assert abs(t.sparsity - TARGET) < 0.02, (t.name, t.sparsity)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(t.kernel)[
            keras.ops.convert_to_numpy(t.mask) == 0], 0.0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "lazy.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", expected)
    result = _fresh(f"""
        import numpy as np, keras, sparsekeras
        import test_lifecycle  # registers SubclassedNet
        model = keras.models.load_model({str(path)!r})
        got = model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        print("maxdiff", float(np.abs(got - np.load({str(tmp_path / 'y.npy')!r})).max()))
        print("sparsity", [round(t.sparsity, 3) for t in sparsekeras.callbacks.prunable_targets(model)])
    """, tmp_path)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("maxdiff"))
    assert float(line.split()[1]) <= 1e-5, result.stdout
    assert "sparsity" in result.stdout and "0.0," not in result.stdout, result.stdout


def test_build_inside_tf_function():
    """Keras may call build inside a traced function: the layers read no value there."""
    dense, conv = SparseDense(5), SparseConv2D(3, 3)

    @tf.function
    def f(a, b):
        return dense(a), conv(b)

    ya, yb = f(tf.ones((2, 4)), tf.ones((1, 5, 5, 2)))
    assert ya.shape == (2, 5) and yb.shape == (1, 3, 3, 3)
    assert dense.sparsity == 0.0 and not dense.uses_sparse_kernels
    # The structure cached at build is the all-ones mask's, and set_mask still refreshes it.
    assert int(dense._csc_indptr.numpy()[-1]) == 4 * 5
    dense.set_mask(np.eye(4, 5))
    assert int(dense._csc_indptr.numpy()[-1]) == 4 and dense.sparsity == pytest.approx(0.8)


def _scalars(log_dir):
    """{tag: [(step, value)]} of the scalars in the event files under log_dir/train."""
    found = {}
    files = sorted((log_dir / "train").glob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.HasField("tensor") and value.tensor.dtype == tf.float32.as_datatype_enum:
                found.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return found


@pytest.mark.parametrize("order", ["tensorboard_first", "pruning_first"])
def test_sparsity_reaches_tensorboard_in_any_order(order, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), SparseDense(16, name="h"),
                              keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    pruning = GradualPruning(PolynomialDecay(0.0, 0.5, 0, 5, frequency=1))
    board = keras.callbacks.TensorBoard(str(tmp_path), update_freq="batch")
    callbacks = [board, pruning] if order == "tensorboard_first" else [pruning, board]
    rng = np.random.default_rng(0)
    history = model.fit(rng.random((32, 8)), rng.random((32, 2)), batch_size=8, epochs=2,
                        verbose=0, callbacks=callbacks)
    scalars = _scalars(tmp_path)
    # epoch 0 ends after step 3 (sparsity of the schedule at step 3), epoch 1 after step 7.
    epoch = dict(scalars["epoch_sparsity"])
    assert epoch[0] == pytest.approx(PolynomialDecay(0.0, 0.5, 0, 5)(3)[1], abs=1 / 128)
    assert epoch[1] == pytest.approx(0.5, abs=1 / 128)
    assert dict(scalars["epoch_sparsity/h"])[1] == pytest.approx(0.5, abs=1 / 128)
    assert any(tag.startswith("batch_sparsity") for tag in scalars), sorted(scalars)
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=1 / 128)
    # The metric lives for the fit only: afterwards the model's metrics are the compiled ones.
    assert "sparsity" not in model.evaluate(rng.random((8, 8)), rng.random((8, 2)), verbose=0,
                                            return_dict=True)


def test_conv_fit_prints_no_type_inference_warning(tmp_path):
    """The dense/sparse tf.cond of SparseConv2D made TensorFlow print "Type inference failed
    ... invalid graph" (30 lines) in every fit; its cause is gone (see _PrunableKernel._switch)."""
    result = _fresh("""
        import numpy as np, keras, sparsekeras
        from sparsekeras.layers import SparseConv2D, SparseDense
        from sparsekeras.callbacks import GradualPruning
        from sparsekeras.schedules import PolynomialDecay
        model = keras.Sequential([keras.Input((6, 6, 2)), SparseConv2D(4, 3, padding="same"),
                                  keras.layers.Flatten(), SparseDense(3)])
        model.compile("adam", "mse")
        x, y = np.random.rand(16, 6, 6, 2), np.random.rand(16, 3)
        model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                  callbacks=[GradualPruning(PolynomialDecay(0.0, 0.9, 0, 4, frequency=1))])
        assert model.layers[0].uses_sparse_kernels  # both branches were traced and taken
        print("done")
    """, tmp_path, log_level="0")  # TensorFlow's warnings shown, as by default
    assert "done" in result.stdout
    assert "Type inference failed" not in result.stderr, result.stderr[-3000:]


def test_evaluate_inside_fit_returns_the_compiled_metrics_only():
    """The sparsity metric exists for the training step only: a callback that unpacks
    `model.evaluate` during fit (and fit's validation) sees the compiled metrics."""
    model = keras.Sequential([keras.Input((8,)), SparseDense(16), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8)), rng.integers(0, 3, 16)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss, acc = self.model.evaluate(x, y, verbose=0)  # two values, as compiled
            seen.append((loss, acc))

    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y),
                        callbacks=[Probe(), GradualPruning(PolynomialDecay(0.0, 0.5, 0, 2,
                                                                           frequency=1))])
    assert len(seen) == 2
    assert {k for k in history.history if not k.startswith("sparsity/")} == {
        "loss", "accuracy", "sparsity", "val_loss", "val_accuracy"}
