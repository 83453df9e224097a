"""The ops' rows on TensorFlow's intra-op pool (SPARSEKERAS_OP_POOL, `_ops/op_common.h`
RunRows): x @ W and dy @ W^T split their batch rows into one single-threaded kernel call per
thread on TensorFlow's pool; convolutions keep their OpenMP team (checked to stay whole). Each child process below forces two threads for every op
(intra-op pool of 2, 2 kernel threads, no work bound) so the split happens whatever the host.

Checked: results are bitwise equal to the OpenMP path and to one thread, for odd row counts,
both value and index dtypes, and equal a float64 NumPy reference; a bad setting is said in a
warning and the default used. Children are exec'd (libgomp is not fork-safe)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_CHILD = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp, tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(2)
    import sparsekeras
    from sparsekeras import linalg, ops
    from sparsekeras.ops._lib import load
    sparsekeras.set_num_threads(THREADS)
    _ops = load()
    out = {}
    for vdt in (np.float32, np.float64):
        for idt in (np.int32, np.int64):
            tag = f"{np.dtype(vdt).name}_{np.dtype(idt).name}"
            rng = np.random.default_rng(0)
            for rows in (1, 63, 129, 257, 300, 520):  # below, at and above two and four row tiles
                k, n = 90, 48
                w = (rng.standard_normal((k, n)) * (rng.random((k, n)) < 0.2)).astype(vdt)
                w[:, 5] = 0  # an empty output column
                x = rng.standard_normal((rows, k)).astype(vdt)
                dy = rng.standard_normal((rows, n)).astype(vdt)
                out[f"ref_{tag}_{rows}"] = x.astype(np.float64) @ w.astype(np.float64)
                out[f"ref_t_{tag}_{rows}"] = dy.astype(np.float64) @ w.T.astype(np.float64)
                csc = sp.csc_matrix(w)
                ip, ix = csc.indptr.astype(idt), csc.indices.astype(idt)
                out[f"csc_{tag}_{rows}"] = ops.dense_csc_matmul(
                    x, ip, ix, csc.data.astype(vdt), [k, n]).numpy()
                empty = tf.zeros([0], idt)
                bias = rng.standard_normal(n).astype(vdt)
                out[f"csc_relu_{tag}_{rows}"] = _ops.sparse_keras_dense_csc_mat_mul_bias_act(
                    x, ip, ix, csc.data.astype(vdt), tf.constant([k, n], tf.int64), empty, empty,
                    tf.zeros([0], tf.int64), bias, activation="relu").numpy()
                out[f"ref_relu_{tag}_{rows}"] = np.maximum(out[f"ref_{tag}_{rows}"] + bias, 0)
                bip, bix, bv = linalg.bcsc_from_dense(w, 8, index_dtype=idt)
                xt = tf.constant(x)
                with tf.GradientTape() as tape:
                    tape.watch(xt)
                    y = ops.dense_bcsc_matmul(xt, bip, bix, bv, [k, n], 8)
                out[f"bcsc_{tag}_{rows}"] = y.numpy()
                out[f"bcsc_t_{tag}_{rows}"] = tape.gradient(y, xt, output_gradients=dy).numpy()
                csr = sp.csr_matrix(w)  # x @ B with B (k, n) in CSR
                out[f"csr_{tag}_{rows}"] = ops.dense_csr_matmul(
                    x, csr.indptr.astype(idt), csr.indices.astype(idt), csr.data.astype(vdt),
                    [k, n]).numpy()
            for images in (1, 3, 5):
                kern = (rng.standard_normal((3, 3, 16, 12)) * (rng.random((3, 3, 16, 12)) < 0.3)
                        ).astype(vdt)
                x = tf.constant(rng.standard_normal((images, 15, 17, 16)).astype(vdt))
                for stride in (1, 2):
                    name = f"{tag}_{images}_{stride}"
                    cip, cix, pos = ops.conv_kernel_structure(kern != 0, index_dtype=idt)
                    vals = tf.gather(tf.reshape(kern, [-1]), pos)
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        y = ops.csr_conv2d(x, cip, cix, vals, kern.shape, strides=stride,
                                           padding="same")
                    dy = tf.constant(rng.standard_normal(y.shape).astype(vdt))
                    out[f"conv_{name}"] = y.numpy()
                    out[f"conv_dx_{name}"] = tape.gradient(y, x, output_gradients=dy).numpy()
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        yr = tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(kern, tf.float64),
                                          stride, "SAME")
                    out[f"ref_conv_{name}"] = yr.numpy()
                    out[f"ref_conv_dx_{name}"] = tape.gradient(
                        yr, x, output_gradients=tf.cast(dy, tf.float64)).numpy()
    np.savez(OUT, **out)
    print("OK")
""")


def _run(tmp_path, label, pool, threads=2):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARSEKERAS_OP_POOL", "SPARSEKERAS_OP_PARALLEL_MIN_WORK")}
    env["SPARSEKERAS_OP_PARALLEL_MIN_WORK"] = "0"  # every op takes its threads
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the library's LOG(WARNING) shows from 0 and 1
    env["TF_CPP_VMODULE"] = "op_common=1"  # RunRows says when it splits
    if pool is not None:
        env["SPARSEKERAS_OP_POOL"] = pool
    out = tmp_path / f"{label}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", f"OUT = {str(out)!r}\nTHREADS = {threads}\n" + _CHILD],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout
    return dict(np.load(out)), proc.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    return {label: _run(tmp, label, pool, threads)
            for label, pool, threads in (("tensorflow", None, 2), ("openmp", "openmp", 2),
                                         ("one", "openmp", 1))}


def test_split_rows_bitwise_equal_to_openmp_and_one_thread(results):
    pool, _ = results["tensorflow"]
    names = [name for name in pool if not name.startswith("ref_")]
    assert len(names) == 2 * 2 * (6 * 5 + 3 * 2 * 2)
    # the split happened (its VLOG), and not on the OpenMP path
    stderr = results["tensorflow"][1]
    for rows in (129, 257, 300, 520):
        assert f"sparsekeras: {rows} rows in 2 parts on the intra-op pool" in stderr, rows
    # convolutions keep their OpenMP team (split over images, the CNNs' training steps ran
    # 1.6-2.5x slower in bench_models)
    for images in (3, 5):
        assert f"sparsekeras: {images} rows in" not in stderr, images
    assert "on the intra-op pool" not in results["openmp"][1]
    for other in ("openmp", "one"):
        for name in names:
            np.testing.assert_array_equal(pool[name], results[other][0][name],
                                          err_msg=f"{name}: tensorflow pool vs {other}")


def test_split_rows_match_float64_reference(results):
    pool, _ = results["tensorflow"]
    for name, got in pool.items():
        if name.startswith("ref_"):
            continue
        kind, rest = name.split("_", 1)  # csc_relu_X -> ref_relu_X, bcsc_t_X -> ref_t_X
        ref = pool["ref_" + (name if kind == "conv" else rest)]
        tol = 1e-4 if got.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=name)


def test_bad_pool_setting_warns_and_uses_default(tmp_path, results):
    got, stderr = _run(tmp_path, "bad", "threads-please")
    assert "ignoring SPARSEKERAS_OP_POOL=threads-please" in stderr, stderr[-2000:]
    for name, value in results["tensorflow"][0].items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
