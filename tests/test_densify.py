"""`sparsekeras.densify`: a pruned model back to plain Keras layers (pruned weights stored as
zeros), which loads without sparsekeras; and the edge path it opens: LiteRT (TFLite, with its
sparse weight encoding) and ONNX, run by their own runtimes."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.callbacks import GradualPruning
from sparsekeras.schedules import PolynomialDecay

SPARSITY = 0.9


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n))


def _pruned_cnn():
    """A small CNN with every sparse family here (SparseConv2D, SparseDepthwiseConv2D,
    SparseDense), pruned to SPARSITY in `fit`; the schedule ends early, so the dense layers
    are compacted when densify copies them."""
    model = sparsekeras.sparsify(keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="fc"),
        keras.layers.Dense(10, name="logits")]))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[GradualPruning(
        PolynomialDecay(0.0, SPARSITY, begin_step=0, end_step=8, frequency=2))])
    return model


@pytest.fixture(scope="module")
def pruned():
    return _pruned_cnn()


def _is_keras_layer(layer):
    return type(layer).__module__.startswith("keras.")


def _kernels_zero_where_pruned(model, plain):
    for name in ("conv", "dw", "fc", "logits"):
        sparse, dense = model.get_layer(name), plain.get_layer(name)
        mask = keras.ops.convert_to_numpy(sparse.mask)
        kernel = keras.ops.convert_to_numpy(dense.weights[0])
        assert kernel.shape == mask.shape, name
        assert np.all(kernel[mask == 0] == 0), name
        assert abs(float(np.mean(mask == 0)) - SPARSITY) < 0.02, name


def test_densify_gives_keras_layers_with_zeros_and_same_outputs(pruned):
    """Every layer of the copy is a Keras layer (of the twin class), the pruned weights are
    zeros, the outputs are the pruned model's; the pruned model is left as it was."""
    model = pruned
    assert model.get_layer("fc").compacted
    plain = sparsekeras.densify(model)
    assert all(_is_keras_layer(layer) for layer in plain.layers), [
        type(layer).__name__ for layer in plain.layers]
    assert [type(layer).__name__ for layer in plain.layers] == [
        "Conv2D", "DepthwiseConv2D", "Flatten", "Dense", "Dense"]
    _kernels_zero_where_pruned(model, plain)
    x, _ = _data(5, seed=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert type(model.get_layer("fc")).__name__ == "SparseDense"   # a copy, not in place


def test_densify_of_the_stripped_model(pruned):
    """Stored forms (CompactDense, CompactConv2D) densify to the same plain model."""
    stripped = sparsekeras.strip(pruned)
    assert {type(layer).__name__ for layer in stripped.layers} >= {"CompactDense",
                                                                   "CompactConv2D"}
    plain = sparsekeras.densify(stripped)
    assert all(_is_keras_layer(layer) for layer in plain.layers)
    x, _ = _data(5, seed=2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)),
                               keras.ops.convert_to_numpy(pruned(x)), rtol=1e-5, atol=1e-5)


def test_densified_file_loads_without_sparsekeras(pruned, tmp_path):
    """The `.keras` file of the densified model loads and predicts in a fresh process that
    never imports sparsekeras (checked in sys.modules), with the pruned model's outputs."""
    plain = sparsekeras.densify(pruned)
    plain.save(tmp_path / "plain.keras")
    x, _ = _data(6, seed=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(pruned(x)))
    code = textwrap.dedent("""
        import sys, numpy as np, keras
        m = keras.models.load_model("plain.keras")
        np.testing.assert_allclose(m.predict(np.load("x.npy"), verbose=0), np.load("y.npy"),
                                   rtol=1e-5, atol=1e-5)
        assert not any(name.startswith("sparsekeras") for name in sys.modules), "imported"
        print("loaded without sparsekeras", [type(l).__name__ for l in m.layers])
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded without sparsekeras" in proc.stdout


def _run_litert(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_litert_export_dense_and_sparse_encoded(pruned, tmp_path):
    """`densify(model).export(path, format="litert")` runs in the LiteRT interpreter with the
    Keras model's outputs; with TFLite's sparse weight encoding (converter optimization
    EXPERIMENTAL_SPARSITY) too, in a file at most half as large at 90% sparsity."""
    pytest.importorskip("ai_edge_litert")
    plain = sparsekeras.densify(pruned)
    x, _ = _data(4, seed=4)
    expected = keras.ops.convert_to_numpy(plain(x))
    dense_path, sparse_path = tmp_path / "model.tflite", tmp_path / "model_sparse.tflite"
    plain.export(str(dense_path), format="litert", verbose=False)
    plain.export(str(sparse_path), format="litert", verbose=False,
                 optimizations=[tf.lite.Optimize.EXPERIMENTAL_SPARSITY])
    for path in (dense_path, sparse_path):
        np.testing.assert_allclose(_run_litert(path, x), expected, rtol=1e-5, atol=1e-5,
                                   err_msg=path.name)
    dense_size, sparse_size = os.path.getsize(dense_path), os.path.getsize(sparse_path)
    print(f"litert file sizes: dense {dense_size} B, sparse-encoded {sparse_size} B")
    assert sparse_size < 0.5 * dense_size, (dense_size, sparse_size)


# Keras' tf2onnx shim tests `hasattr(np, "object")`, which NumPy 2 answers with a FutureWarning.
@pytest.mark.filterwarnings("ignore:In the future `np.object`:FutureWarning")
def test_onnx_export_runs_in_onnxruntime(pruned, tmp_path):
    """`densify(model).export(path, format="onnx")` runs in onnxruntime with the Keras model's
    outputs."""
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    plain = sparsekeras.densify(pruned)
    x, _ = _data(4, seed=5)
    path = tmp_path / "model.onnx"
    plain.export(str(path), format="onnx", verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (got,) = session.run(None, {inp.name: x})
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(plain(x)), rtol=1e-5, atol=1e-5)
