"""Regression tests for issue 23: inputs that aborted the process, gave wrong answers through
narrowing casts or unchecked graph-mode shapes, segfaulted through scipy, were refused though
valid, or raised errors that did not name the argument.

Cases that used to abort run in a spawned interpreter: an abort there is a failed test with the
case named, not a dead pytest.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import linalg, ops

# ---- aborts (run in a child interpreter) -----------------------------------------------------

_ABORT_CASES = {
    "dense_csr_matmul_2_62": """
ops.dense_csr_matmul(tf.ones([2, 3]), tf.constant([0, 1, 1, 1], tf.int64), tf.constant([5], tf.int64),
                     tf.ones([1]), tf.constant([3, 2**62], tf.int64))""",
    "dense_csr_matmul_2_62_graph": """
tf.function(lambda: ops.dense_csr_matmul(tf.ones([2, 3]), tf.constant([0, 1, 1, 1], tf.int64),
            tf.constant([5], tf.int64), tf.ones([1]), tf.constant([3, 2**62], tf.int64)))()""",
    "matmul_dense_sparse_2_62": """
ops.matmul(tf.ones([2, 3]), tf.SparseTensor([[0, 5]], [1.], [3, 2**62]))""",
    "matmul_sparse_dense_2_62": """
a = ops.CSRTensor(tf.zeros([5], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]), tf.constant([4, 0], tf.int64))
ops.matmul(a, tf.zeros([0, 2**62]))""",
    "csr_conv2d_2_62": """
ops.csr_conv2d(tf.zeros([2**62, 1, 1, 0]), tf.zeros([5], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
               (1, 1, 0, 4))""",
    "conv2d_2_62": """
ops.conv2d(tf.zeros([2**62, 1, 1, 0]), tf.zeros([1, 1, 0, 4]))""",
    "transpose_cols_plus_one": """
ops.transpose(ops.CSRTensor(tf.constant([0, 0, 0, 0], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                            tf.constant([3, 2**63 - 1], tf.int64)))""",
    "transpose_cols_plus_one_graph": """
tf.function(lambda: ops.transpose(ops.CSRTensor(tf.constant([0, 0, 0, 0], tf.int64),
            tf.zeros([0], tf.int64), tf.zeros([0]), tf.constant([3, 2**63 - 1], tf.int64))).indptr)()""",
    "csr_csr_matmul_2_62": """
ops.csr_csr_matmul(tf.SparseTensor([[0, 1]], [1.], [2, 3]), tf.SparseTensor([[1, 5]], [1.], [3, 2**62]))""",
    "dense_csc_matmul_2_62": """
ops.dense_csc_matmul(tf.zeros([2**62, 0]), tf.zeros([5], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                     tf.constant([0, 4], tf.int64))""",
    "dense_bcsc_matmul_2_62": """
ops.dense_bcsc_matmul(tf.zeros([2**62, 0]), tf.zeros([3], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                      tf.constant([0, 4], tf.int64), block=2)""",
    "dense_bcsc_matmul_nnz_times_block": """
ops.dense_bcsc_matmul(tf.zeros([1, 3]), tf.constant([0, 2], tf.int64), tf.constant([0, 1], tf.int64), tf.zeros([1]),
                      tf.constant([3, 2**62], tf.int64), block=2**62)""",
    "bcsc_expand_nnz_times_block": """
ops.bcsc_expand(tf.constant([0, 2], tf.int64), tf.constant([0, 1], tf.int64), 2**62,
                tf.constant([3, 2**62], tf.int64))""",
    "conv_backprop_input_sizes": """
ops._ops.sparse_keras_csr_conv2d_backprop_input(tf.zeros([0, 1, 1, 1]), tf.constant([0, 0], tf.int64),
    tf.zeros([0], tf.int64), tf.zeros([0]), tf.constant([0, 2**31 - 1, 2**31 - 1, 2**31 - 1], tf.int32),
    kernel_size=[1, 1], padding="VALID")""",
    "scipy_coo_row_1e8": """
c = sp.coo_array((np.ones(1), ([0], [1])), shape=(2, 3)); c.coords = (np.array([10**8]), np.array([1]))
linalg.matmul(c, np.ones((3, 1)))""",
    "scipy_coo_row_1e8_ops": """
c = sp.coo_array((np.ones(1), ([0], [1])), shape=(2, 3)); c.coords = (np.array([10**8]), np.array([1]))
ops.matmul(c, tf.ones((3, 1)))""",
    "linalg_shape_2_63": """
from sparsekeras import _kernels
_kernels.csr_transpose(np.zeros(3, np.int64), np.zeros(0, np.int64), np.zeros(0), (2, 2**63 - 1))""",
}

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, scipy.sparse as sp, tensorflow as tf
    from sparsekeras import linalg, ops
    cases = json.loads(sys.argv[1])
    for name, code in cases.items():
        print("START", name, flush=True)
        try:
            exec(code)
            out = "ok"
        except Exception as e:
            out = type(e).__name__ + ": " + str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        print("RESULT", json.dumps([name, out]), flush=True)
""")


def _run_children(cases):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], capture_output=True,
                          text=True, timeout=600, env=env, cwd="/")
    results = {}
    last = None
    for line in proc.stdout.splitlines():
        if line.startswith("START "):
            last = line[6:]
        elif line.startswith("RESULT "):
            name, out = json.loads(line[7:])
            results[name] = out
    assert proc.returncode == 0, (f"child died with {proc.returncode} in case {last!r}:\n"
                                  f"{proc.stderr[-3000:]}")
    return results


@pytest.fixture(scope="module")
def abort_results():
    return _run_children(_ABORT_CASES)


@pytest.mark.parametrize("case", sorted(_ABORT_CASES))
def test_former_aborts_raise_named_errors(abort_results, case):
    out = abort_results[case]
    assert out.startswith(("InvalidArgumentError", "ValueError")), out
    # The message names an argument or output and the size that does not fit.
    if case.startswith("scipy"):
        assert "row[0]=100000000" in out, out
    elif case == "linalg_shape_2_63":
        assert "shape" in out and str(2**63 - 1) in out, out
    else:
        assert any(s in out for s in (str(2**62), str(2**63 - 1), str(2**31 - 1), "2**63")), out
        assert any(n in out for n in ("dense_shape", "x.shape", "input_sizes", "indices",
                                      "b.shape", "a.dense_shape", "w.dense_shape", "dy must",
                                      "w.indices")), out


# ---- wrong answers from int32 casts ----------------------------------------------------------

B = tf.constant([[1.], [10.], [100.]])


def test_sparse_tensor_row_beyond_int32_raises():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a\.indices\[0\] = \[4294967296, 1\]"):
        ops.matmul(tf.SparseTensor([[2**32, 1]], [1.], [2, 3]), B)


def test_sparse_tensor_column_beyond_int32_raises_dense_left():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"b\.indices\[0\] = \[1, 4294967297\]"):
        ops.matmul(tf.ones([1, 2]), tf.SparseTensor([[1, 2**32 + 1]], [1.], [2, 3]))


@pytest.mark.parametrize("bad", [[-1, 0], [0, -1], [2, 0], [0, 3], [0, -2**32 + 1]])
def test_sparse_tensor_out_of_range_named(bad):
    st = tf.SparseTensor([bad], [1.], [2, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0\] = "):
        ops.matmul(st, B)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0\] = "):
        ops.to_csr(st)


def test_sparse_tensor_out_of_range_in_graph():
    f = tf.function(lambda i, v, s: ops.matmul(tf.SparseTensor(i, v, s), B),
                    input_signature=[tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([None]),
                                     tf.TensorSpec([2], tf.int64)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside its dense_shape"):
        f(tf.constant([[2**32, 1]], tf.int64), tf.ones([1]), tf.constant([2, 3], tf.int64))
    good = f(tf.constant([[1, 2]], tf.int64), tf.ones([1]), tf.constant([2, 3], tf.int64))
    np.testing.assert_array_equal(good.numpy(), [[0.], [100.]])


def test_sparse_dense_layer_column_beyond_int32_raises():
    layer = sparsekeras.layers.SparseDense(1, use_bias=False)
    layer.build((None, 3))
    layer.kernel.assign(B)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside its dense_shape|outside dense_shape"):
        layer(tf.SparseTensor([[1, 2**32 + 1]], [1.], [2, 3]))
    np.testing.assert_array_equal(layer(tf.SparseTensor([[1, 2]], [1.], [2, 3])).numpy(),
                                  [[0.], [100.]])


def test_from_sparse_tensor_int32_index_dtype_too_small():
    st = tf.SparseTensor([[0, 2**31]], [1.], [1, 2**31 + 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="index_dtype=int32"):
        ops.CSRTensor.from_sparse_tensor(st, index_dtype=tf.int32)
    csr = ops.CSRTensor.from_sparse_tensor(st)
    assert csr.indices.numpy().tolist() == [2**31]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint64, np.float32, np.bool_])
def test_index_dtypes_refused(dtype):
    with pytest.raises(TypeError, match=r"indptr must hold int32 or int64 indices; received dtype"):
        ops.dense_csr_matmul(tf.ones([1, 2]), np.array([0, 1, 1], dtype), np.array([0], np.int64),
                             [1.], [2, 2])
    with pytest.raises(TypeError, match=r"indices must hold int32 or int64"):
        ops.dense_csr_matmul(tf.ones([1, 2]), np.array([0, 1, 1], np.int64),
                             tf.constant(np.array([0], dtype)), [1.], [2, 2])
    with pytest.raises(TypeError, match=r"index_dtype must be int32 or int64"):
        ops.to_csr(tf.SparseTensor([[0, 0]], [1.], [1, 1]), index_dtype=dtype)


def test_dense_shape_float_refused():
    with pytest.raises(TypeError, match="dense_shape must be"):
        ops.dense_csr_matmul(tf.ones([1, 2]), [0, 1, 1], [0], [1.], tf.constant([2., 2.]))


# ---- run-time checks inside the conv op ------------------------------------------------------

def _conv_kernel(cin=4, cout=8):
    k = np.zeros((3, 3, cin, cout), np.float32)
    k[1, 1, 0, :] = 1.0
    ip, ix, _ = ops.conv_kernel_structure(k != 0, index_dtype=tf.int64)
    return ip, ix, tf.ones([int(ix.shape[0])])


def test_conv_channels_checked_in_graph():
    ip, ix, vals = _conv_kernel()
    f = tf.function(lambda x: ops.csr_conv2d(x, ip, ix, vals, (3, 3, 4, 8), padding="same"),
                    input_signature=[tf.TensorSpec([None, None, None, None])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="x has 5 channels but kernel_shape"):
        f(tf.ones([2, 6, 6, 5]))
    assert f(tf.ones([2, 6, 6, 4])).shape == (2, 6, 6, 8)


def test_conv_indptr_length_checked_in_graph():
    ip, ix, vals = _conv_kernel(cout=9)
    f = tf.function(lambda x, ip: ops.csr_conv2d(x, ip, ix, vals, (3, 3, 4, 8), padding="same"),
                    input_signature=[tf.TensorSpec([None, None, None, None]),
                                     tf.TensorSpec([None], tf.int64)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="out_channels \\+ 1 = 9 entries"):
        f(tf.ones([2, 6, 6, 4]), ip)


def test_conv_gradients_carry_kernel_shape():
    ip, ix, vals = _conv_kernel()
    x = tf.random.normal([2, 5, 5, 4])
    with tf.GradientTape() as tape:
        tape.watch([x, vals])
        y = ops.csr_conv2d(x, ip, ix, vals, (3, 3, 4, 8), padding="same")
        loss = tf.reduce_sum(y)
    dx, dv = tape.gradient(loss, [x, vals])
    assert dx.shape == x.shape and dv.shape == vals.shape
    # Each output channel reads input channel 0 at the kernel's centre: d loss / d value is the
    # sum of x[..., 0].
    np.testing.assert_allclose(dv.numpy(), np.full(8, tf.reduce_sum(x[..., 0]).numpy()), rtol=1e-5)


# ---- scipy inputs ----------------------------------------------------------------------------

def test_scipy_coo_negative_row_not_dropped():
    c = sp.coo_array((np.ones(1), ([0], [1])), shape=(2, 3))
    c.coords = (np.array([-1]), np.array([1]))
    with pytest.raises(ValueError, match=r"a: COO coordinate row\[0\]=-1 lies outside \[0, 2\)"):
        linalg.matmul(c, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"b: COO coordinate row\[0\]=-1"):
        linalg.matmul(np.ones((1, 2)), c)
    with pytest.raises(ValueError, match=r"pattern: COO coordinate"):
        linalg.sddmm(c, np.ones((2, 2)), np.ones((3, 2)))


def test_scipy_coo_float16():
    # scipy refuses float16 in its constructors and conversions; the data can still be float16.
    c = sp.coo_array((np.array([1.5, 2.0], np.float32), ([0, 1], [2, 0])), shape=(2, 3))
    c.data = c.data.astype(np.float16)
    dense = np.array([[0, 0, 1.5], [2, 0, 0]])
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(linalg.matmul(c, b), dense @ b)
    ct = sp.coo_array((np.array([1.5, 2.0], np.float32), ([2, 0], [0, 1])), shape=(3, 2))
    ct.data = ct.data.astype(np.float16)
    np.testing.assert_allclose(linalg.matmul(b.T, ct), b.T @ dense.T)


def test_sddmm_ignores_pattern_values():
    pat = sp.csc_array((np.array(["x", "y"], object), np.array([0, 1]), np.array([0, 1, 1, 2])),
                       shape=(2, 3))
    u, v = np.ones((2, 2)), np.arange(6.).reshape(3, 2)
    out = linalg.sddmm(pat, u, v)
    dense = out.toarray()
    np.testing.assert_allclose(dense, (u @ v.T) * (np.array([[1, 0, 0], [0, 0, 1]])))


def test_linalg_blames_the_right_operand():
    bad = sp.csr_array((np.ones(1), np.array([7]), np.array([0, 1, 1])), shape=(2, 3))
    with pytest.raises(ValueError, match=r"^b: malformed CSR: indices must lie in \[0, 3\)"):
        linalg.matmul(np.ones((1, 2)), bad)
    bad_csc = sp.csc_array((np.ones(1), np.array([7]), np.array([0, 1, 1, 1])), shape=(2, 3))
    with pytest.raises(ValueError, match=r"^b: malformed CSR"):
        linalg.matmul(np.ones((1, 2)), bad_csc)
    with pytest.raises(ValueError, match=r"^a must have 2 columns to match b.shape"):
        linalg.matmul(np.ones((1, 3)), sp.csc_array(np.ones((2, 3))))


# ---- valid input refused ---------------------------------------------------------------------

def test_empty_rank3_times_sparse_kernel():
    k = ops.to_csr(tf.zeros([0, 4]))
    y = ops.matmul(tf.zeros([2, 0, 0]), k)
    assert y.shape == (2, 0, 4)
    y = tf.function(lambda x: ops.matmul(x, k))(tf.zeros([2, 0, 0]))
    assert y.shape == (2, 0, 4)


def test_sparse_times_vector_of_unknown_rank():
    a = ops.to_csr(tf.constant([[1., 0., 2.], [0., 3., 0.]]))
    f = tf.function(lambda b: ops.matmul(a, b), input_signature=[tf.TensorSpec(None)])
    np.testing.assert_allclose(f(tf.constant([1., 2., 3.])).numpy(), [7., 6.])
    np.testing.assert_allclose(f(tf.ones([3, 2])).numpy(), [[3., 3.], [3., 3.]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="b must be a vector or a matrix"):
        f(tf.ones([3, 1, 1]))


# ---- messages --------------------------------------------------------------------------------

def test_csr_tensor_fields_named():
    with pytest.raises(ValueError, match=r"CSRTensor\.indptr must be a vector"):
        ops.CSRTensor(tf.zeros([1, 2], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                      tf.constant([0, 0], tf.int64))
    with pytest.raises(ValueError, match=r"CSRTensor\.dense_shape must be a vector of 2"):
        ops.CSRTensor(tf.zeros([1], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]),
                      tf.constant([0, 0, 0], tf.int64))


def test_dense_left_operand_named_a():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"^a must have 3 columns"):
        ops.matmul(tf.ones([2, 4]), tf.SparseTensor([[0, 1]], [1.], [3, 2]))


def test_rank3_dimension_beyond_int32():
    k = ops.to_csr(tf.constant([[1., 0.], [0., 2.], [3., 0.]]))
    y = ops.matmul(tf.zeros([0, 2**31, 3]), k)
    assert y.shape == (0, 2**31, 2)

