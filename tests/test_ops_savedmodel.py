"""SavedModels with sparsekeras ops: save here, load in a fresh Python process.

The graph refers to the custom ops by name (`SparseKeras>CsrMatMul`, ...), so the process that
loads the model must `import sparsekeras` first, which loads the op library and registers the
ops, their gradients and the CSRTensor extension type; without it loading fails.
"""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

from sparsekeras import ops
from sparsekeras.ops import CSRTensor

K, N = 40, 13


class SparseModule(tf.Module):
    def __init__(self, w):
        super().__init__()
        self.indptr = tf.constant(w.indptr.astype(np.int64))
        self.indices = tf.constant(w.indices.astype(np.int64))
        self.dense_shape = tf.constant(w.shape, tf.int64)
        self.values = tf.Variable(w.data.astype(np.float32), name="values")

    def _w(self):
        return CSRTensor(self.indptr, self.indices, self.values, self.dense_shape)

    @tf.function(input_signature=[tf.TensorSpec([None, K], tf.float32)])
    def dense_layer(self, x):
        return ops.matmul(x, self._w())

    @tf.function(input_signature=[tf.TensorSpec([None, K], tf.float32)])
    def values_grad(self, x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(ops.matmul(x, self._w()) ** 2)
        return tf.convert_to_tensor(tape.gradient(loss, self.values))

    @tf.function(input_signature=[
        CSRTensor.Spec(indptr=tf.TensorSpec([None], tf.int64), indices=tf.TensorSpec([None], tf.int64),
                       values=tf.TensorSpec([None], tf.float32),
                       dense_shape=tf.TensorSpec([2], tf.int64)),
        tf.TensorSpec([None, None], tf.float32)])
    def sparse_input(self, a, b):
        return ops.matmul(a, b)


def _env():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(code, cwd):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("savedmodel")
    rng = np.random.default_rng(0)
    w = sp.random(K, N, density=0.3, format="csr", random_state=1, dtype=np.float32)
    module = SparseModule(w)
    module.values.assign(module.values * 2.0)  # the Variable's state must be saved
    x = rng.standard_normal((5, K)).astype(np.float32)
    a = sp.random(6, 9, density=0.4, format="csr", random_state=2, dtype=np.float32)
    b = rng.standard_normal((9, 4)).astype(np.float32)
    path = str(tmp / "model")
    tf.saved_model.save(module, path)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "b.npy", b)
    for name in ("indptr", "indices", "data"):
        np.save(tmp / f"a_{name}.npy", getattr(a, name).astype(np.int64 if name != "data" else np.float32))
    expected = {
        "dense_layer": module.dense_layer(x).numpy(),
        "values_grad": module.values_grad(x).numpy(),
        "sparse_input": module.sparse_input(CSRTensor.from_scipy(a, index_dtype=np.int64), b).numpy(),
    }
    # the references are the plain products, independently of the ops
    w2 = w.toarray().astype(np.float64) * 2
    np.testing.assert_allclose(expected["dense_layer"], x @ w2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(expected["sparse_input"], a.toarray() @ b, rtol=1e-5, atol=1e-5)
    for k, v in expected.items():
        np.save(tmp / f"expected_{k}.npy", v)
    return tmp


def test_load_in_fresh_process(saved):
    code = f"""
        import numpy as np
        import sparsekeras, tensorflow as tf
        from sparsekeras.ops import CSRTensor
        d = {str(saved)!r}
        m = tf.saved_model.load(d + "/model")
        x, b = np.load(d + "/x.npy"), np.load(d + "/b.npy")
        a = CSRTensor(*(tf.constant(np.load(d + f"/a_{{n}}.npy")) for n in ("indptr", "indices", "data")),
                      tf.constant([6, 9], tf.int64))
        got = {{"dense_layer": m.dense_layer(x), "values_grad": m.values_grad(x),
                "sparse_input": m.sparse_input(a, b)}}
        for name, value in got.items():
            exp = np.load(d + f"/expected_{{name}}.npy")
            np.testing.assert_allclose(value.numpy(), exp, rtol=1e-6, atol=1e-6)
            print(name, value.shape)
        # the restored Variable is still a Variable: assigning changes the result
        m.values.assign(tf.zeros_like(m.values))
        assert not np.any(m.dense_layer(x).numpy())
        print("OK")
    """
    proc = _run(code, saved)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.split()
    assert "OK" in lines
    assert "dense_layer" in lines and "values_grad" in lines and "sparse_input" in lines


def test_load_without_import_fails(saved):
    """Without `import sparsekeras`, TensorFlow does not know the custom ops: loading fails."""
    code = f"""
        import tensorflow as tf
        m = tf.saved_model.load({str(saved / "model")!r})
        print(m.dense_layer(tf.ones((1, {K}))))
    """
    proc = _run(code, saved)
    assert proc.returncode != 0
    assert re.search(r"Op type not registered 'SparseKeras>\w+'", proc.stderr), proc.stderr[-4000:]
