"""The TensorFlow ops under concurrency: Python threads, kernel thread counts, TF threading config."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import sparsekeras
from sparsekeras import ops
from sparsekeras.ops import CSRTensor


@pytest.fixture(scope="module")
def problem():
    """x (256, 1024) dense, W (1024, 1024) 90% sparse, A (256, 1024) 90% sparse, B dense."""
    rng = np.random.default_rng(0)
    w = sp.random(1024, 1024, density=0.1, format="csr", random_state=1, dtype=np.float32)
    a = sp.random(256, 1024, density=0.1, format="csr", random_state=2, dtype=np.float32)
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    return dict(w=w, a=a, x=x, b=b, w_t=CSRTensor.from_scipy(w), a_t=CSRTensor.from_scipy(a),
                x_t=tf.constant(x), b_t=tf.constant(b))


def _calls(p):
    """The products, by name: each a zero-argument function returning a numpy array."""
    u = p["x_t"][:, :32]
    v = tf.constant(p["b"][:, :32])
    return {
        "dense@sparse": lambda: ops.matmul(p["x_t"], p["w_t"]).numpy(),
        "sparse@dense": lambda: ops.matmul(p["a_t"], p["b_t"]).numpy(),
        "sddmm": lambda: ops.sddmm(p["a_t"], u, v).values.numpy(),
    }


def test_concurrent_python_threads(problem):
    calls = _calls(problem)
    with sparsekeras.num_threads(1):
        reference = {name: f() for name, f in calls.items()}
    # the single-threaded results are right in the first place
    np.testing.assert_allclose(reference["dense@sparse"], problem["x"] @ problem["w"].toarray(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reference["sparse@dense"], problem["a"] @ problem["b"],
                               rtol=1e-4, atol=1e-4)

    def worker(i):
        mismatches = []
        for j in range(20):
            name = list(calls)[(i + j) % len(calls)]
            out = calls[name]()
            if not np.array_equal(out, reference[name]):
                mismatches.append((i, j, name, float(np.max(np.abs(out - reference[name])))))
        return mismatches

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(worker, range(4)))
    mismatches = [m for r in results for m in r]
    assert not mismatches, mismatches[:5]


def test_thread_count_is_bitwise_invisible(problem):
    p = problem
    calls = _calls(p)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch([p["w_t"].values, p["x_t"]])
            loss = tf.reduce_sum(ops.matmul(p["x_t"], p["w_t"]) ** 2)
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [p["w_t"].values, p["x_t"]])]

    def everything():
        out = {name: f() for name, f in calls.items()}
        out["transpose"] = ops.transpose(p["w_t"]).indices.numpy()
        out["grad_values"], out["grad_x"] = grads()
        return out

    from sparsekeras import _kernels
    with sparsekeras.num_threads(2):  # the problems are big enough to take both threads
        assert _kernels.threads_for_work(p["w"].nnz * 256) == 2
        assert _kernels.threads_for_work(p["a"].nnz * 32) == 2
    results = {}
    for n in (1, 2):
        with sparsekeras.num_threads(n):
            assert sparsekeras.get_num_threads() == n
            results[n] = everything()
    for name in results[1]:
        np.testing.assert_array_equal(results[1][name], results[2][name], err_msg=name)


def test_after_tf_threading_config(tmp_path):
    """tf.config.threading can only be set before TensorFlow initializes: a fresh process."""
    code = textwrap.dedent("""
        import numpy as np, scipy.sparse as sp, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)
        import sparsekeras
        from sparsekeras import ops
        assert tf.config.threading.get_intra_op_parallelism_threads() == 1
        w = sp.random(300, 200, density=0.1, format="csr", random_state=1)
        x = np.random.default_rng(0).standard_normal((64, 300))
        y = ops.matmul(x, w).numpy()
        z = tf.function(lambda a, b: ops.matmul(a, b))(ops.CSRTensor.from_scipy(w.T.tocsr()), x.T)
        np.testing.assert_allclose(y, x @ w.toarray(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z.numpy(), y.T, rtol=1e-12, atol=1e-12)
        print("OK", y.shape)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK (64, 200)" in proc.stdout


@pytest.mark.parametrize("value", ["0", "not-a-number"])
def test_op_parallel_min_work_setting(tmp_path, value):
    """SPARSEKERAS_OP_PARALLEL_MIN_WORK (read once by the ops library): 0 lets every op take
    the kernel threads, a bad value is said in a warning and the default used; the results
    are the same as with the default bound (the thread count is bitwise invisible)."""
    code = textwrap.dedent("""
        import numpy as np, scipy.sparse as sp
        from sparsekeras import ops
        rng = np.random.default_rng(0)
        out = {}
        for rows, k, n in ((4, 300, 100), (256, 1024, 1024)):  # below / above the default
            w = sp.random(k, n, density=0.1, format="csr", random_state=1, dtype=np.float32)
            x = rng.standard_normal((rows, k)).astype(np.float32)
            out[f"y{rows}"] = ops.matmul(x, w).numpy()
        np.savez(OUT, **out)
        print("OK")
    """)
    results = {}
    for label, setting in (("default", None), ("set", value)):
        env = {k: v for k, v in os.environ.items() if k != "SPARSEKERAS_OP_PARALLEL_MIN_WORK"}
        # TensorFlow's C++ log level hides the library's LOG(WARNING) from 2 on; a package
        # imported earlier in the session (tf2onnx) may have set it in os.environ.
        env["TF_CPP_MIN_LOG_LEVEL"] = "0"
        if setting is not None:
            env["SPARSEKERAS_OP_PARALLEL_MIN_WORK"] = setting
        out = tmp_path / f"{label}.npz"
        proc = subprocess.run([sys.executable, "-c", f"OUT = {str(out)!r}\n" + code],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        warned = "ignoring SPARSEKERAS_OP_PARALLEL_MIN_WORK=not-a-number" in proc.stderr
        assert warned == (setting == "not-a-number"), proc.stderr[-2000:]
        results[label] = dict(np.load(out))
    for name in results["default"]:
        np.testing.assert_array_equal(results["default"][name], results["set"][name], err_msg=name)
