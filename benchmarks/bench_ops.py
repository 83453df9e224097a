"""Benchmark: sparsekeras TensorFlow ops (forward and forward+backward) vs the TF alternatives.

The product is the Dense-layer one, X (B x 4096) @ W (4096 x 4096), float32, with W unstructured
random sparse (scipy.sparse.random_array, CSC) at sparsity s (fraction of zeros). For every
(s, B), on the same operands and in the same process:

Forward (Y = X @ W):
    sk_eager     sparsekeras.ops.dense_csc_matmul(X, indptr, indices, values, [K, N], ts)
                 called eagerly (values a tf.Variable, ts the cached transpose structure)
    sk_fn        the same call inside a tf.function
    tf_matmul    tf.matmul(X, W_dense) in a tf.function: the baseline
    tf_sparse    tf.sparse.sparse_dense_matmul(X, W_SparseTensor) in a tf.function
    tf_csr       tf.transpose(csr_ops.matmul(CSRSparseMatrix(W^T), X, transpose_b=True)) in a
                 tf.function (the fastest orientation found by bench_matmul.py); the
                 CSRSparseMatrix is built once, outside the timed region

Forward+backward (one training step's three products: Y = X W, dX, dW), each in a tf.function
with a tf.GradientTape; loss = reduce_sum(Y * G) with G a fixed random (B x N) tensor, so dY = G
is dense; gradients w.r.t. X and the trainable parameters:
    sk_fn        w.r.t. the `values` tf.Variable (nnz,), transpose structure cached (as the
                 layers do)
    sk_fn_nots   same without transpose_structure (the gradient recomputes it every call); only
                 measured at one configuration (--nots-config, default s=0.9, B=256)
    tf_matmul    w.r.t. the dense W tf.Variable (K x N)
    tf_sparse    w.r.t. the SparseTensor's values (a tf.Variable; the SparseTensor is built from
                 it inside the function, which is free)
    tf_csr       w.r.t. the values of W^T's SparseTensor (a tf.Variable): the CSRSparseMatrix must
                 be rebuilt from them inside the function (SparseTensorToCSRSparseMatrix) because
                 that is where the gradient flows; this conversion is part of its training step

Block-sparse rows (--block, default 8; 0 skips them): W pruned in (1, G) blocks (G consecutive
outputs share each stored input row: GradualPruning(granularity="block", block_shape=(1, G))) at
the sparsities --block-sparsities (default 0.9) and batches --block-batches (default 32 256):
    sk_block_fn  sparsekeras.ops.dense_bcsc_matmul(X, indptr, indices, values_var, [K, N], G) in
                 a tf.function (forward, and forward+backward w.r.t. X and values_var)
    tf_matmul    tf.matmul(X, W_var) on the same W, dense, as above
checked against np.matmul / the dense TF gradient like the unstructured rows.

Per-call overhead: a tiny 1x16 @ 16x16 product (W 50% sparse) in a tf.function, sparsekeras op vs
tf.matmul, median of OVERHEAD_CALLS calls, in microseconds; timed both as `f(X)` (the call alone)
and `f(X).numpy()`.

Timing (as bench_matmul.py): a SETTLE_S pause, one warm-up call (also traces the tf.function),
then repeats chosen so that each measurement takes ~TARGET seconds (at least MIN_REPEATS calls);
each call is timed separately with time.perf_counter; median, min and IQR are reported. Every
timed call ends with `.numpy()` on all of its outputs to force completion. A method whose single
call exceeds SLOW_LIMIT_S seconds is not repeated (recorded as skipped-too-slow). TensorFlow is
limited to 2 intra-op threads and 1 inter-op thread before any op runs, and sparsekeras runs
under `sparsekeras.num_threads(2)`.

Correctness, once per configuration: every forward result vs np.matmul; every backward result
(dX and the gradient on the pattern) vs the dense TF gradient (dW gathered at W's pattern), with
np.testing.assert_allclose (rtol=1e-4, atol=1e-3 * RMS of the reference). A wrong sparsekeras
result aborts the run; other methods that disagree are flagged in the JSON.

Usage:
    python benchmarks/bench_ops.py --out DIR [--quick] [--wait-idle SECONDS --retries N]
writes DIR/bench_ops.json and DIR/bench_ops.png and prints a table to stdout.
"""
import argparse
import datetime
import json
import math
import os
import platform
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from _common import busy_cpu_s, cpu_model, log, setup_tf, wait_idle  # noqa: E402
import sparsekeras  # noqa: E402
import sparsekeras.ops  # noqa: E402,F401

K = N = 4096
SLOW_LIMIT_S = 3.0
SETTLE_S = 0.2  # let other libraries' spinning worker threads go idle (see bench_matmul.py)
SK_THREADS = 2
OVERHEAD_CALLS = 2000
OVERHEAD_SHAPE = (1, 16, 16)  # (B, K, N) of the per-call overhead product
OVERHEAD_SPARSITY = 0.5
# TF's gradients w.r.t. the sparse values, both of SparseTensorDenseMatMul (sparse_grad.py) and
# of SparseMatrixMatMul (sparse_csr_matrix_grad.py, _PrunedDenseMatrixMultiplication), gather two
# (nnz x B) dense blocks: 17 GB at s=0.5, B=256 (a first full run peaked at 21 GB RSS). tf_sparse
# and tf_csr fwd+bwd are skipped (status skipped-memory) when 2 * nnz * B * 4 bytes exceeds this
# (--max-gather-gb).
MAX_GATHER_GB = 4.0
GATHER_GRAD_METHODS = ("tf_sparse", "tf_csr")

FWD_METHODS = ["sk_eager", "sk_fn", "tf_matmul", "tf_sparse", "tf_csr"]
BWD_METHODS = ["sk_fn", "sk_fn_nots", "tf_matmul", "tf_sparse", "tf_csr"]
SK_METHODS = {"sk_eager", "sk_fn", "sk_fn_nots"}


class BusyTracker:
    """Average number of CPUs used by *other* processes between start() and stop()."""

    def start(self):
        self.b0, self.o0 = busy_cpu_s()
        self.w0 = time.perf_counter()

    def stop(self):
        b1, o1 = busy_cpu_s()
        return round(((b1 - self.b0) - (o1 - self.o0)) / (time.perf_counter() - self.w0), 3)


def time_fn(fn, target_s, min_reps, max_reps):
    """Warm up, then time `fn` repeatedly. Returns a stats dict (times in ms)."""
    time.sleep(SETTLE_S)
    fn()  # warm-up (tracing, page faults, thread pool start)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > SLOW_LIMIT_S:
        return {"status": "skipped-too-slow", "single_call_ms": first * 1e3}
    reps = max(min_reps, min(max_reps, int(math.ceil(target_s / max(first, 1e-6)))))
    return _stats(_time_reps(fn, reps) * 1e3)


def _time_reps(fn, reps):
    times = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def _stats(times):
    q25, q75 = np.percentile(times, [25, 75])
    return {"status": "ok", "median_ms": float(np.median(times)), "min_ms": float(times.min()),
            "iqr_ms": float(q75 - q25), "q25_ms": float(q25), "q75_ms": float(q75),
            "repeats": int(len(times))}


def check_close(got, ref, name, strict):
    atol = 1e-3 * max(1.0, float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))))
    try:
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=atol, err_msg=name)
        return True
    except AssertionError:
        if strict:
            raise
        # TF may accumulate differently; flag only gross disagreements.
        return bool(np.allclose(got, ref, rtol=1e-3, atol=10 * atol))


def make_weights(s, k, n, seed):
    """W (k x n) scipy CSC, sorted indices; values uniform in [0, 1) (scipy's default)."""
    rng = np.random.default_rng(seed)
    w = sp.random_array((k, n), density=1.0 - s, format="csc", dtype=np.float32, rng=rng)
    w.sum_duplicates()
    w.sort_indices()
    return w


class Operands:
    """All per-sparsity TF operands, built once (untimed)."""

    def __init__(self, tf, w_csc):
        ops = sparsekeras.ops
        k, n = w_csc.shape
        self.nnz = int(w_csc.nnz)
        self.indptr = tf.constant(w_csc.indptr.astype(np.int32))
        self.indices = tf.constant(w_csc.indices.astype(np.int32))
        self.dense_shape = tf.constant([k, n], dtype=tf.int64)
        self.values = tf.Variable(w_csc.data, name="sk_values")
        self.ts = tuple(ops.transpose_structure(self.indptr, self.indices,
                                                tf.constant([n, k], dtype=tf.int64)))
        # CSC order = (col, row) order: the (row, col) of each stored value, for gathering.
        self.csc_rows = w_csc.indices.astype(np.int64)
        self.csc_cols = np.repeat(np.arange(n), np.diff(w_csc.indptr)).astype(np.int64)

        w_dense = w_csc.toarray()
        self.w_dense = w_dense
        self.W_const = tf.constant(w_dense)
        self.W_var = tf.Variable(w_dense, name="dense_W")

        coo = w_csc.tocsr().tocoo()  # row-major (canonical SparseTensor order)
        self.sp_idx = tf.constant(np.stack([coo.row, coo.col], 1).astype(np.int64))
        self.sp_rows, self.sp_cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        self.sp_values = tf.Variable(coo.data.astype(np.float32), name="sp_values")
        self.W_sp = tf.SparseTensor(self.sp_idx, tf.constant(coo.data.astype(np.float32)),
                                    [k, n])

        # W^T in CSR has exactly W's CSC arrays: row-major (col, row) order = CSC order.
        self.wt_idx = tf.constant(np.stack([self.csc_cols, self.csc_rows], 1))
        self.wt_values = tf.Variable(w_csc.data, name="csr_values")
        self.csr_error = None
        try:
            from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops as csr_ops

            self.csr_ops = csr_ops
            self.Wt_csr = csr_ops.CSRSparseMatrix(
                tf.SparseTensor(self.wt_idx, tf.constant(w_csc.data), [n, k]))
        except Exception as e:
            self.csr_ops = None
            self.csr_error = f"unavailable: {type(e).__name__}: {e}"


def build_forward(tf, o):
    """{name: callable(X) -> Tensor, or an 'unavailable: ...' string}."""
    dcm = sparsekeras.ops.dense_csc_matmul

    def sk(X):
        return dcm(X, o.indptr, o.indices, o.values, o.dense_shape, transpose_structure=o.ts)

    out = {"sk_eager": sk, "sk_fn": tf.function(sk),
           "tf_matmul": tf.function(lambda X: tf.matmul(X, o.W_const)),
           "tf_sparse": tf.function(lambda X: tf.sparse.sparse_dense_matmul(X, o.W_sp))}
    if o.csr_ops is None:
        out["tf_csr"] = o.csr_error
    else:
        out["tf_csr"] = tf.function(
            lambda X: tf.transpose(o.csr_ops.matmul(o.Wt_csr, X, transpose_b=True)))
    return out


def grad_step(tf, fwd, param):
    """A tf.function (X, G) -> (Y, dX, dparam) with loss = reduce_sum(fwd(X) * G)."""
    def f(X, G):
        with tf.GradientTape() as tape:
            tape.watch(X)
            Y = fwd(X)
            loss = tf.reduce_sum(Y * G)
        dX, dp = tape.gradient(loss, [X, param])
        return Y, dX, dp
    return tf.function(f)


def build_backward(tf, o, with_nots):
    """{name: callable(X, G) -> (Y, dX, dparams)}; dparams are the gradient on W's stored
    values in that method's own value order (for tf_matmul: the dense K x N gradient)."""
    dcm = sparsekeras.ops.dense_csc_matmul

    out = {
        "sk_fn": grad_step(tf, lambda X: dcm(X, o.indptr, o.indices, o.values, o.dense_shape,
                                             transpose_structure=o.ts), o.values),
        "tf_matmul": grad_step(tf, lambda X: tf.matmul(X, o.W_var), o.W_var),
        "tf_sparse": grad_step(tf, lambda X: tf.sparse.sparse_dense_matmul(
            X, tf.SparseTensor(o.sp_idx, o.sp_values, [K, N])), o.sp_values),
    }
    if with_nots:
        out["sk_fn_nots"] = grad_step(tf, lambda X: dcm(X, o.indptr, o.indices, o.values,
                                                        o.dense_shape), o.values)
    if o.csr_ops is None:
        out["tf_csr"] = o.csr_error
    else:
        def csr_fwd(X):
            m = o.csr_ops.CSRSparseMatrix(tf.SparseTensor(o.wt_idx, o.wt_values, [N, K]))
            return tf.transpose(o.csr_ops.matmul(m, X, transpose_b=True))
        out["tf_csr"] = grad_step(tf, csr_fwd, o.wt_values)
    return out


def value_order(o, name):
    """(rows, cols) of the stored values in method `name`'s order."""
    if name == "tf_sparse":
        return o.sp_rows, o.sp_cols
    return o.csc_rows, o.csc_cols  # sparsekeras (CSC values) and tf_csr (W^T CSR = CSC order)


def measure_overhead(tf, args, target_calls):
    """Median per-call time (us) of a tiny product in a tf.function: sparsekeras vs tf.matmul."""
    b, k, n = OVERHEAD_SHAPE
    w = make_weights(OVERHEAD_SPARSITY, k, n, seed=99)
    o_ip = tf.constant(w.indptr.astype(np.int32))
    o_ix = tf.constant(w.indices.astype(np.int32))
    o_sh = tf.constant([k, n], dtype=tf.int64)
    o_v = tf.Variable(w.data)
    o_ts = tuple(sparsekeras.ops.transpose_structure(o_ip, o_ix,
                                                     tf.constant([n, k], dtype=tf.int64)))
    W = tf.Variable(w.toarray())
    X = tf.constant(np.random.default_rng(5).standard_normal((b, k), dtype=np.float32))
    fns = {
        "sk_fn": tf.function(lambda X: sparsekeras.ops.dense_csc_matmul(
            X, o_ip, o_ix, o_v, o_sh, transpose_structure=o_ts)),
        "tf_matmul": tf.function(lambda X: tf.matmul(X, W)),
    }
    ref = X.numpy() @ w.toarray()
    for name, f in fns.items():
        check_close(f(X).numpy(), ref, f"overhead {name}", strict=name == "sk_fn")
    if args.wait_idle > 0:
        wait_idle(args.wait_idle)
    tracker = BusyTracker()
    tracker.start()
    res = {"shape": {"B": b, "K": k, "N": n}, "sparsity": OVERHEAD_SPARSITY, "calls": target_calls}
    # Interleave the methods in a few rounds so slow drifts (load, frequency) hit both alike.
    rounds = 4
    per = {(name, mode): [] for name in fns for mode in ("call", "call_numpy")}
    for name, f in fns.items():
        for _ in range(50):
            f(X).numpy()
    for _ in range(rounds):
        for name, f in fns.items():
            time.sleep(SETTLE_S / 4)
            per[(name, "call")].append(_time_reps(lambda: f(X), target_calls // rounds))
            per[(name, "call_numpy")].append(
                _time_reps(lambda: f(X).numpy(), target_calls // rounds))
    for (name, mode), chunks in per.items():
        st = _stats(np.concatenate(chunks) * 1e6)
        res.setdefault(name, {})[mode] = {k.replace("_ms", "_us"): v for k, v in st.items()}
    res["other_procs_cpus"] = tracker.stop()
    for mode in ("call", "call_numpy"):
        res[f"ratio_{mode}"] = (res["sk_fn"][mode]["median_us"]
                                / res["tf_matmul"][mode]["median_us"])
    return res


def run_config(tf, args, o, s, B, rng, timing, with_nots):
    target_s, min_reps, max_reps = timing
    x = rng.standard_normal((B, K), dtype=np.float32)
    g = rng.standard_normal((B, N), dtype=np.float32)
    X, G = tf.constant(x), tf.constant(g)
    ref_y = np.matmul(x, o.w_dense)
    fwd = build_forward(tf, o)
    bwd = build_backward(tf, o, with_nots)

    row = {"sparsity": s, "B": B, "nnz": o.nnz, "forward": {}, "fwd_bwd": {}}
    # Dense TF gradient: the backward reference (dX and dW gathered at the pattern).
    _, ref_dx, ref_dw = (t.numpy() for t in bwd["tf_matmul"](X, G))
    np.testing.assert_allclose(ref_dx, g @ o.w_dense.T, rtol=1e-4,
                               atol=1e-3 * float(np.sqrt(np.mean(ref_dx.astype(np.float64) ** 2))))

    tracker = BusyTracker()
    tracker.start()
    for name in FWD_METHODS:
        f = fwd[name]
        if isinstance(f, str):
            row["forward"][name] = {"status": f}
            continue
        strict = name in SK_METHODS
        try:
            correct = check_close(f(X).numpy(), ref_y, f"forward {name}", strict)
        except AssertionError:
            raise
        except Exception as e:
            row["forward"][name] = {"status": f"unavailable: {type(e).__name__}: {e}"}
            continue
        st = time_fn(lambda f=f: f(X).numpy(), target_s, min_reps, max_reps)
        st["correct"] = correct
        row["forward"][name] = st

    for name in BWD_METHODS:
        if name not in bwd:
            continue
        f = bwd[name]
        if isinstance(f, str):
            row["fwd_bwd"][name] = {"status": f}
            continue
        gather_gb = 2 * o.nnz * B * 4 / 1e9
        if name in GATHER_GRAD_METHODS and gather_gb > args.max_gather_gb:
            row["fwd_bwd"][name] = {"status": "skipped-memory",
                                    "gather_gb": round(gather_gb, 2)}
            continue
        strict = name in SK_METHODS
        try:
            y, dx, dp = (t.numpy() for t in f(X, G))
            if name == "tf_matmul":
                dp_ref, dp = ref_dw, dp  # compare the full dense gradient to itself: trivial
                correct = True
            else:
                rows, cols = value_order(o, name)
                dp_ref = ref_dw[rows, cols]
                correct = all([check_close(y, ref_y, f"fwd_bwd {name} Y", strict),
                               check_close(dx, ref_dx, f"fwd_bwd {name} dX", strict),
                               check_close(dp, dp_ref, f"fwd_bwd {name} dvalues", strict)])
        except AssertionError:
            raise
        except Exception as e:
            row["fwd_bwd"][name] = {"status": f"unavailable: {type(e).__name__}: {e}"}
            continue
        st = time_fn(lambda f=f: [t.numpy() for t in f(X, G)], target_s, min_reps, max_reps)
        st["correct"] = correct
        row["fwd_bwd"][name] = st
    row["other_procs_cpus"] = tracker.stop()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return row


def med(row, phase, name):
    return row[phase].get(name, {}).get("median_ms")


def ratio(a, b):
    return a / b if a and b else None


def run(args):
    tf = setup_tf()
    quick = args.quick
    sparsities = args.sparsities or ([0.9] if quick else [0.5, 0.8, 0.9, 0.95, 0.99])
    batches = args.batches or ([32] if quick else [1, 32, 256])
    timing = (0.05, 3, 20) if quick else (0.5, 5, 2000)
    nots_cfg = (0.9, 32) if quick else tuple(args.nots_config)

    rng = np.random.default_rng(1234)
    results = []
    t_start = time.perf_counter()
    with sparsekeras.num_threads(SK_THREADS):
        for si, s in enumerate(sparsities):
            o = Operands(tf, make_weights(s, K, N, seed=1000 + si))
            for B in batches:
                with_nots = (s, B) == nots_cfg
                for attempt in range(1 + args.retries):
                    if args.wait_idle > 0:
                        wait_idle(args.wait_idle)
                    row = run_config(tf, args, o, s, B, rng, timing, with_nots)
                    busy = row["other_procs_cpus"]
                    log(f"[{time.perf_counter() - t_start:6.1f}s] s={s} B={B}: fwd "
                        + ", ".join(f"{k}={med(row, 'forward', k) or float('nan'):.3f}"
                                    for k in row["forward"])
                        + " | fwd+bwd " + ", ".join(
                            f"{k}={med(row, 'fwd_bwd', k) or float('nan'):.3f}"
                            for k in row["fwd_bwd"])
                        + f" ms; peak RSS {row['peak_rss_mb']} MB"
                        + f"; other processes used {busy:.2f} CPUs"
                        + (" (BUSY MACHINE: timings unreliable)" if busy > 0.1 else ""))
                    if busy <= 0.1:
                        break
                row["attempts"] = attempt + 1
                for phase in ("forward", "fwd_bwd"):
                    sk = med(row, phase, "sk_fn")
                    row[f"{phase}_speedup"] = {k: ratio(med(row, phase, k), sk)
                                               for k in ("tf_matmul", "tf_sparse", "tf_csr")}
                results.append(row)
            del o
        block_rows = run_block(tf, args, timing, rng) if args.block else []
        n_calls = 200 if quick else OVERHEAD_CALLS
        for attempt in range(1 + args.retries):
            overhead = measure_overhead(tf, args, n_calls)
            log(f"overhead: sk_fn {overhead['sk_fn']['call']['median_us']:.1f} us, tf.matmul "
                f"{overhead['tf_matmul']['call']['median_us']:.1f} us per call; other processes"
                f" used {overhead['other_procs_cpus']:.2f} CPUs")
            if overhead["other_procs_cpus"] <= 0.1:
                break
        overhead["attempts"] = attempt + 1
    return tf, results, block_rows, overhead, {"target_s": timing[0], "min_repeats": timing[1],
                                               "max_repeats": timing[2]}


def run_block(tf, args, timing, rng):
    """Forward and fwd+bwd of W pruned in (1, G) blocks: the block-CSC product vs tf.matmul."""
    target_s, min_reps, max_reps = timing
    G = args.block
    ops = sparsekeras.ops
    rows = []
    for si, s in enumerate(args.block_sparsities):
        brng = np.random.default_rng(2000 + si)
        keep = brng.random((K, N // G)) >= s
        w = (brng.random((K, N), dtype=np.float32) * np.repeat(keep, G, axis=1)).astype(np.float32)
        ip, ix, v = sparsekeras.linalg.bcsc_from_dense(w, G)
        indptr, indices = tf.constant(ip), tf.constant(ix)
        values = tf.Variable(v, name="block_values")
        W_var = tf.Variable(w, name="dense_W")
        shape = tf.constant([K, N], tf.int64)

        def sk(X):
            return ops.dense_bcsc_matmul(X, indptr, indices, values, shape, G)

        fwd = {"sk_block_fn": tf.function(sk), "tf_matmul": tf.function(lambda X: tf.matmul(X, W_var))}
        bwd = {"sk_block_fn": grad_step(tf, sk, values),
               "tf_matmul": grad_step(tf, lambda X: tf.matmul(X, W_var), W_var)}
        stored = np.nonzero(sparsekeras.linalg.bcsc_to_dense(ip, ix, np.ones_like(v), (K, N), G))
        for B in args.block_batches:
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            x = rng.standard_normal((B, K), dtype=np.float32)
            g = rng.standard_normal((B, N), dtype=np.float32)
            X, Gr = tf.constant(x), tf.constant(g)
            row = {"sparsity": s, "B": B, "block": G, "stored": int(v.size), "forward": {},
                   "fwd_bwd": {}}
            tracker = BusyTracker()
            tracker.start()
            check_close(fwd["sk_block_fn"](X).numpy(), x @ w, "block forward", True)
            _, ref_dx, ref_dw = (t.numpy() for t in bwd["tf_matmul"](X, Gr))
            _, dx, dv = (t.numpy() for t in bwd["sk_block_fn"](X, Gr))
            check_close(dx, ref_dx, "block fwd_bwd dX", True)
            dense_dv = sparsekeras.linalg.bcsc_to_dense(ip, ix, dv, (K, N), G)
            check_close(dense_dv[stored], ref_dw[stored], "block fwd_bwd dvalues", True)
            for name, f in fwd.items():
                row["forward"][name] = time_fn(lambda f=f: f(X).numpy(), target_s, min_reps,
                                               max_reps)
            for name, f in bwd.items():
                row["fwd_bwd"][name] = time_fn(lambda f=f: [t.numpy() for t in f(X, Gr)],
                                               target_s, min_reps, max_reps)
            row["other_procs_cpus"] = tracker.stop()
            for phase in ("forward", "fwd_bwd"):
                row[f"{phase}_speedup"] = {"tf_matmul": ratio(med(row, phase, "tf_matmul"),
                                                              med(row, phase, "sk_block_fn"))}
            log(f"block (1, {G}) s={s} B={B}: fwd sk {med(row, 'forward', 'sk_block_fn'):.3f} vs "
                f"tf.matmul {med(row, 'forward', 'tf_matmul'):.3f} ms | fwd+bwd sk "
                f"{med(row, 'fwd_bwd', 'sk_block_fn'):.3f} vs {med(row, 'fwd_bwd', 'tf_matmul'):.3f}"
                f" ms; other processes used {row['other_procs_cpus']:.2f} CPUs")
            rows.append(row)
        del values, W_var
    return rows


def print_block_table(rows):
    if not rows:
        return
    print(f"\nW pruned in (1, G) blocks, block-CSC product (sk_block_fn) vs dense tf.matmul, "
          "tf.function, median ms")
    print(f"{'s':>5} {'B':>4} {'G':>3} | {'fwd sk':>8} {'tf.matmul':>9} {'ratio':>6} | "
          f"{'fwd+bwd sk':>10} {'tf.matmul':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['sparsity']:5.2f} {r['B']:4d} {r['block']:3d} | "
              f"{fmt(med(r, 'forward', 'sk_block_fn'))} {fmt(med(r, 'forward', 'tf_matmul'), 9)} "
              f"{fmt(r['forward_speedup']['tf_matmul'], 5, 2)}x | "
              f"{fmt(med(r, 'fwd_bwd', 'sk_block_fn'), 10)} {fmt(med(r, 'fwd_bwd', 'tf_matmul'), 9)} "
              f"{fmt(r['fwd_bwd_speedup']['tf_matmul'], 5, 2)}x")


def fmt(v, w=8, p=3):
    return f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def cell(st, w=8):
    if st is None:
        return f"{'':>{w}}"
    if st.get("median_ms") is not None:
        return fmt(st["median_ms"], w) + ("!" if st.get("correct") is False else "")
    if st["status"] == "skipped-memory":
        return f"{'mem':>{w}}"
    if st["status"] == "skipped-too-slow":
        return f"{'>' + format(st['single_call_ms'], '.0f'):>{w}}"
    return f"{'n/a':>{w}}"


def print_table(results, overhead):
    short = {"sk_eager": "sk_eager", "sk_fn": "sk_fn", "sk_fn_nots": "sk_nots",
             "tf_matmul": "tf", "tf_sparse": "tfsparse", "tf_csr": "tfcsr"}
    for phase, methods, title in (
            ("forward", FWD_METHODS, "FORWARD  Y = X @ W"),
            ("fwd_bwd", ["sk_fn", "tf_matmul", "tf_sparse", "tf_csr"],
             "FORWARD+BACKWARD  (Y, dX, dvalues) in tf.function with GradientTape")):
        print(f"\n{title}: median ms; x_* = speed-up of sparsekeras in tf.function (sk_fn) over"
              f" tf.matmul, tf.sparse.sparse_dense_matmul, TF CSR")
        hdr = (f"{'s':>5} {'B':>4} " + " ".join(f"{short[m]:>8}" for m in methods)
               + f" {'x_tf':>7} {'x_tfsp':>7} {'x_tfcsr':>7}")
        print(hdr)
        print("-" * len(hdr))
        for r in results:
            sp_ = r[f"{phase}_speedup"]
            print(f"{r['sparsity']:>5} {r['B']:>4} "
                  + " ".join(cell(r[phase].get(m)) for m in methods)
                  + f" {fmt(sp_['tf_matmul'], 7, 2)} {fmt(sp_['tf_sparse'], 7, 2)}"
                  + f" {fmt(sp_['tf_csr'], 7, 2)}"
                  + (" *" if r.get("other_procs_cpus", 0) > 0.1 else ""))
    for r in results:
        if "sk_fn_nots" in r["fwd_bwd"]:
            a, b = med(r, "fwd_bwd", "sk_fn"), med(r, "fwd_bwd", "sk_fn_nots")
            print(f"\nfwd+bwd without cached transpose_structure at s={r['sparsity']}, B={r['B']}:"
                  f" {cell(r['fwd_bwd']['sk_fn_nots']).strip()} ms vs {a:.3f} ms with it"
                  f" ({fmt(ratio(b, a), 0, 2)}x)")
    o = overhead
    sh = o["shape"]
    print(f"\nper-call overhead ({sh['B']}x{sh['K']} @ {sh['K']}x{sh['N']}, W {o['sparsity']:.0%}"
          f" sparse, tf.function, median of {o['calls']} calls): sparsekeras"
          f" {o['sk_fn']['call']['median_us']:.1f} us vs tf.matmul"
          f" {o['tf_matmul']['call']['median_us']:.1f} us ({o['ratio_call']:.2f}x);"
          f" with .numpy(): {o['sk_fn']['call_numpy']['median_us']:.1f} us vs"
          f" {o['tf_matmul']['call_numpy']['median_us']:.1f} us ({o['ratio_call_numpy']:.2f}x)"
          + (" *" if o.get("other_procs_cpus", 0) > 0.1 else ""))
    print("(a '>' cell is a method skipped as too slow, with its single-call time in ms; 'mem' ="
          " TF gradient skipped: its two (nnz x B) gathers would exceed --max-gather-gb;"
          " '!' ="
          " result disagreed with the reference; '*' = other processes used > 0.1 CPU during"
          " that row: timings unreliable)")


def plot(results, info, path):
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    batches = sorted({r["B"] for r in results})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, phase, title in ((axes[0], "forward", "forward  Y = X W"),
                             (axes[1], "fwd_bwd", "forward + backward  (Y, dX, dW)")):
        busy = False
        for i, B in enumerate(batches):
            rows = sorted((r for r in results if r["B"] == B), key=lambda r: r["sparsity"])
            c = colors[i % len(colors)]
            pts = [(r["sparsity"], r[f"{phase}_speedup"]["tf_matmul"], r) for r in rows
                   if r[f"{phase}_speedup"]["tf_matmul"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=c, lw=2,
                    label=f"sparsekeras (tf.function), B={B}")
            for key, mk, ls in (("tf_sparse", "^", "--"), ("tf_csr", "D", ":")):
                q = [(r["sparsity"], med(r, phase, "tf_matmul") / med(r, phase, key))
                     for r in rows if med(r, phase, key) and med(r, phase, "tf_matmul")]
                ax.plot([p[0] for p in q], [p[1] for p in q], ls, marker=mk, mfc="none",
                        color=c, lw=1, ms=5, alpha=0.7,
                        label=f"{'tf.sparse' if key == 'tf_sparse' else 'TF CSR'}, B={B}")
            for xv, yv, r in pts:
                if r.get("other_procs_cpus", 0) > 0.1:
                    ax.plot(xv, yv, "x", color="red", ms=10, mew=2)
                    busy = True
        ax.axhline(1.0, color="black", lw=1, ls="-.", label="break-even with dense tf.matmul")
        if busy:
            ax.plot([], [], "x", color="red", ms=8, mew=2, label="machine busy: unreliable")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity of W (fraction of zeros)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speed-up over dense tf.matmul (higher is better)")
    axes[1].legend(fontsize=7, loc="upper left", ncol=1)
    fig.suptitle(f"sparsekeras.ops.dense_csc_matmul: X (B x {K}) @ W ({K} x {N}), float32, random"
                 f" sparsity; {info['cpu_model']} ({info['n_cpus']} CPUs), 2 threads (sparsekeras"
                 f" and TF intra-op)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--quick", action="store_true", help="s=0.9, B=32, few repeats (CI smoke test)")
    ap.add_argument("--sparsities", type=float, nargs="+", help="override the sparsity grid")
    ap.add_argument("--batches", type=int, nargs="+", help="override the batch-size grid")
    ap.add_argument("--nots-config", type=float, nargs=2, default=[0.9, 256], metavar=("S", "B"),
                    help="configuration where fwd+bwd is also timed without a cached"
                         " transpose_structure (default 0.9 256)")
    ap.add_argument("--max-gather-gb", type=float, default=MAX_GATHER_GB,
                    help="skip tf_sparse/tf_csr fwd+bwd where its gradient's two (nnz x B) float32"
                         f" gathers exceed this many GB (default {MAX_GATHER_GB})")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each configuration, wait up to SECONDS for other processes to"
                         " go idle (for shared machines; default 0: do not wait)")
    ap.add_argument("--retries", type=int, default=0,
                    help="re-measure a configuration up to this many times if other processes"
                         " used > 0.1 CPU while it ran (the last attempt is kept)")
    ap.add_argument("--block", type=int, default=8,
                    help="width G of the (1, G) blocks of the block-sparse rows (0: skip them)")
    ap.add_argument("--block-sparsities", type=float, nargs="+", default=[0.9])
    ap.add_argument("--block-batches", type=int, nargs="+", default=None,
                    help="batches of the block-sparse rows (default 32 256; 32 with --quick)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    if args.quick and args.block_batches is None:
        args.block_batches = [32]
    args.block_batches = args.block_batches or [32, 256]
    tf, results, block_rows, overhead, timing = run(args)
    try:
        from sparsekeras import _kernels

        isa = _kernels.isa()
    except Exception:
        isa = "unknown"
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "n_cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "isa": isa,
        "sparsekeras_threads": SK_THREADS,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "tensorflow": tf.__version__,
                     "sparsekeras": sparsekeras.__version__},
        "sparsekeras_path": os.path.dirname(sparsekeras.__file__),
        "quick": args.quick,
        "max_gather_gb": args.max_gather_gb,
        "shape": {"K": K, "N": N},
        "dtype": "float32",
        "timing": {**timing, "slow_limit_s": SLOW_LIMIT_S, "settle_s": SETTLE_S,
                   "clock": "time.perf_counter",
                   "tf_timing": ".numpy() on every output of every timed call"},
        "methods": {
            "forward": {
                "sk_eager": "sparsekeras.ops.dense_csc_matmul(X, indptr, indices, values_var,"
                            " [K,N], transpose_structure=ts), eager",
                "sk_fn": "same, in tf.function",
                "tf_matmul": "tf.matmul(X, W_dense) in tf.function",
                "tf_sparse": "tf.sparse.sparse_dense_matmul(X, W_SparseTensor) in tf.function",
                "tf_csr": "tf.transpose(csr_ops.matmul(CSRSparseMatrix(W^T), X,"
                          " transpose_b=True)) in tf.function",
            },
            "fwd_bwd": {
                "common": "tf.function; GradientTape; loss=reduce_sum(Y*G), G fixed random;"
                          " returns (Y, dX, dparam)",
                "sk_fn": "dense_csc_matmul with cached transpose_structure; dparam=values var",
                "sk_fn_nots": "dense_csc_matmul without transpose_structure (one config)",
                "tf_matmul": "tf.matmul(X, W_var); dparam = dense K x N gradient",
                "tf_sparse": "sparse_dense_matmul(X, SparseTensor(idx, values_var));"
                             " dparam = values_var",
                "tf_csr": "CSRSparseMatrix(SparseTensor(idx_T, values_var)) rebuilt in the"
                          " function + transpose(csr matmul); dparam = values_var",
            },
        },
    }
    info["wall_time_s"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(args.out, "bench_ops.json"), "w") as f:
        json.dump({"info": info, "results": results, "block": block_rows, "overhead": overhead},
                  f, indent=1)
    print_table(results, overhead)
    print_block_table(block_rows)
    plot(results, info, os.path.join(args.out, "bench_ops.png"))
    log(f"wrote {args.out}/bench_ops.json and {args.out}/bench_ops.png ({info['wall_time_s']} s)")


if __name__ == "__main__":
    main()
