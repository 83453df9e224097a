"""Benchmark: sparse inputs (a bag-of-words batch) times a dense kernel, forward and forward+backward.

A (B x V) is a batch of B documents over a vocabulary of V words with about NNZ_PER_ROW distinct
words each (uniformly drawn word ids, values standard normal), float32; W (V x N) is a dense
kernel. Defaults: B = 256, V = 50,000, NNZ_PER_ROW = 50, N = 256 (--quick: 32 x 5,000, 20 per
row, N = 64). All methods run on the same operands, in the same process.

Forward (Y = A W):
    sk_layer        sparsekeras.layers.SparseDense(N, use_bias=False)(A_SparseTensor), the layer's
                    path for keras.Input(sparse=True): SparseTensor -> CSR conversion + CSR kernel
                    reading the kernel variable in place (CsrMatMulVariable)
    sk_ops          sparsekeras.ops.matmul(A_CSRTensor, W): the op alone, CSR built once
    sk_layer_s99    SparseDense (compute="auto") with a 99 %-sparse mask: past
                    SPARSE_INPUT_SWITCH_SPARSITY, it multiplies by the kept weights only
                    (CsrMatMulVariable with the mask pattern: weights read in place from the
                    kernel variable); reference A (W * mask)
    sk_compact_s99  CompactDense holding W * mask (CSC arrays only): sparse x sparse
                    (CsrCsrMatMul), CSR of the kernel from a transpose of its CSC arrays per call
    tf_sparse       tf.sparse.sparse_dense_matmul(A_SparseTensor, W)
    tf_embedding    tf.nn.embedding_lookup_sparse(W, ids, weights, combiner="sum"): the input as
                    (word id, weight) SparseTensors, the usual TF bag-of-words layer
    tf_csr          TensorFlow's CSR kernel, tensorflow.python.ops.linalg.sparse: csr_ops.matmul(
                    CSRSparseMatrix(A), W), the CSRSparseMatrix built once (forward only) or from
                    the SparseTensor inside the function (fwd+bwd: where the data arrives)
    scipy           A_csr @ W_numpy (scipy.sparse, single-threaded)
    sk_numpy        sparsekeras.linalg.matmul(A_csr, W_numpy) (the numpy-level kernel)
    mkl             sparse_dot_mkl.dot_product_mkl(A_csr, W_numpy), if sparse_dot_mkl is installed
                    (skipped otherwise), MKL_NUM_THREADS=2 unless set; MKL_RT is pointed at
                    <prefix>/lib/libmkl_rt.so* (pip's `mkl` wheel) unless set

Forward+backward (one training step's products for a data input: Y and the kernel gradient
dW = A^T dY), each TF method in a tf.function with a GradientTape on loss = reduce_sum(Y * G),
G a fixed random (B x N) tensor, gradient w.r.t. the kernel tf.Variable:
    sk_layer, sk_ops (indexed_slices_grad=True), sk_layer_s99: dW is a tf.IndexedSlices over the
        kernel rows the batch touches, built from A's nonzeros only (unmasked, as SparseDense's
        dense-input gradient: the mask constraint zeroes pruned weights after the step)
    sk_compact_s99  gradient w.r.t. CompactDense's values variable: (A^T dY) on the kernel's
        pattern (nnz values), checked against A^T G at the pattern
    sk_ops_dense    sparsekeras.ops.matmul's default gradient: dW dense (V x N)
    tf_sparse, tf_csr: dW dense (V x N); tf_embedding: dW an IndexedSlices (one row per
        distinct word id)
    scipy, sk_numpy, mkl: Y = A W and dW = A^T G (dense V x N), numpy level
Each TF method has its own copy of the kernel variable (a gather on a variable, as in
embedding_lookup_sparse, makes TensorFlow copy it on every later dense read). Every timed TF call
ends with .numpy() on all of its outputs (values and indices of an
IndexedSlices). Correctness, once, untimed: Y vs A W in float64 and dW (densified) vs A^T G
(np.testing.assert_allclose, rtol 1e-4, atol 1e-4 x RMS); a wrong sparsekeras result aborts.

Timing as bench_ops.py: a settle pause, a warm-up call (tracing), then repeats for ~TARGET s (at
least MIN_REPEATS); median, min, IQR. TensorFlow runs with 2 intra-op threads and 1 inter-op
thread, sparsekeras under sparsekeras.num_threads(2).

Usage:
    python benchmarks/bench_sparse_input.py --out DIR [--quick] [--wait-idle SECONDS]
writes DIR/bench_sparse_input.json and DIR/bench_sparse_input.png and prints a table.
"""
import argparse
import datetime
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from _common import cpu_model, log, setup_tf, wait_idle  # noqa: E402
from bench_ops import BusyTracker, SETTLE_S, SLOW_LIMIT_S, time_fn  # noqa: E402
import sparsekeras  # noqa: E402
import sparsekeras.ops  # noqa: E402,F401

SK_THREADS = 2
FULL = dict(B=256, V=50_000, per_row=50, N=256)
QUICK = dict(B=32, V=5_000, per_row=20, N=64)
MASK_SPARSITY = 0.99
TARGETS = {"forward_ms_max": 1.2, "fwd_bwd_speedup_vs_tf_sparse_min": 5.0}
NUMPY_METHODS = ("scipy", "sk_numpy", "mkl")
SK_METHODS = {"sk_layer", "sk_ops", "sk_layer_s99", "sk_compact_s99", "sk_ops_dense", "sk_numpy"}


def make_batch(B, V, per_row, seed):
    """A (B x V) scipy CSR, sorted indices, ~per_row distinct word ids per row."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(B), per_row)
    cols = rng.integers(0, V, B * per_row)
    a = sp.csr_array((rng.standard_normal(B * per_row).astype(np.float32), (rows, cols)),
                     shape=(B, V))
    a.sum_duplicates()
    a.sort_indices()
    return a


def mkl_dot():
    # pip's `mkl` wheel puts libmkl_rt.so.N in <prefix>/lib, where sparse_dot_mkl does not look.
    import glob
    import sys

    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if found:
        os.environ.setdefault("MKL_RT", found[0])
    os.environ.setdefault("MKL_NUM_THREADS", str(SK_THREADS))
    try:
        from sparse_dot_mkl import dot_product_mkl
    except Exception as e:  # ImportError, or MKL runtime missing
        return f"unavailable: sparse_dot_mkl not importable ({type(e).__name__})"
    return dot_product_mkl


def build(tf, a, w, mask, G):
    """(forward, fwd_bwd): {name: callable() -> list of numpy arrays, or 'unavailable: ...'}.

    Each callable returns [Y] (forward) or [Y, dW-as-returned...] with the gradient's parts as
    numpy arrays; `densify` turns a fwd_bwd result into (Y, dense dW) for checking."""
    from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops as csr_ops

    B, V = a.shape
    N = w.shape[1]
    coo = a.tocoo()
    idx = np.stack([coo.row, coo.col], 1).astype(np.int64)
    st = tf.SparseTensor(tf.constant(idx), tf.constant(coo.data), [B, V])
    csr = sparsekeras.ops.CSRTensor.from_scipy(a)
    # embedding_lookup_sparse: ids and weights as SparseTensors over (row, position in row)
    pos = np.arange(a.nnz) - np.repeat(a.indptr[:-1], np.diff(a.indptr))
    e_idx = tf.constant(np.stack([coo.row, pos], 1).astype(np.int64))
    e_shape = [B, int(np.diff(a.indptr).max()) if a.nnz else 1]
    sp_ids = tf.SparseTensor(e_idx, tf.constant(coo.col.astype(np.int64)), e_shape)
    sp_w = tf.SparseTensor(e_idx, tf.constant(coo.data), e_shape)
    # One kernel variable per method: a gather on a resource variable (embedding_lookup_sparse's
    # ResourceGather) switches it to copy-on-read for good, after which every dense read of it
    # copies all 50,000 x 256 floats; with one shared variable that copy (~3 ms) landed in the
    # timings of every method measured after tf_embedding.
    Wv = {k: tf.Variable(w, name=f"W_{k}") for k in
          ("sk_ops", "sk_ops_dense", "tf_sparse", "tf_embedding", "tf_csr")}
    a_csr_tf = csr_ops.CSRSparseMatrix(st)

    layer = sparsekeras.layers.SparseDense(N, use_bias=False, compute="dense")
    layer.build((None, V))
    layer.kernel.assign(w)
    layer99 = sparsekeras.layers.SparseDense(N, use_bias=False)
    layer99.build((None, V))
    layer99.set_mask(mask)
    layer99.kernel.assign(w * mask)
    assert layer99.uses_sparse_input_kernel
    compact = sparsekeras.layers.CompactDense.from_kernel(w * mask, None)

    ops = sparsekeras.ops
    fwd_tf = {
        "sk_layer": tf.function(lambda: layer(st)),
        "sk_ops": tf.function(lambda: ops.matmul(csr, Wv["sk_ops"])),
        "sk_layer_s99": tf.function(lambda: layer99(st)),
        "sk_compact_s99": tf.function(lambda: compact(st)),
        "tf_sparse": tf.function(lambda: tf.sparse.sparse_dense_matmul(st, Wv["tf_sparse"])),
        "tf_embedding": tf.function(
            lambda: tf.nn.embedding_lookup_sparse(Wv["tf_embedding"], sp_ids, sp_w,
                                                  combiner="sum")),
        "tf_csr": tf.function(lambda: csr_ops.matmul(a_csr_tf, Wv["tf_csr"])),
    }
    forward = {k: (lambda f=f: [f().numpy()]) for k, f in fwd_tf.items()}
    a64 = a.astype(np.float32)
    forward["scipy"] = lambda: [a64 @ w]
    forward["sk_numpy"] = lambda: [sparsekeras.linalg.matmul(a, w)]
    mkl = mkl_dot()
    forward["mkl"] = mkl if isinstance(mkl, str) else (lambda: [mkl(a64, w)])

    def step(fwd, var):
        @tf.function
        def f():
            with tf.GradientTape() as tape:
                y = fwd()
                loss = tf.reduce_sum(y * G)
            return y, tape.gradient(loss, var)
        return f

    def csr_fwd():
        return csr_ops.matmul(csr_ops.CSRSparseMatrix(st), Wv["tf_csr"])

    bwd_tf = {
        "sk_layer": step(lambda: layer(st), layer.kernel.value),
        "sk_ops": step(lambda: ops.matmul(csr, Wv["sk_ops"], indexed_slices_grad=True),
                       Wv["sk_ops"]),
        "sk_layer_s99": step(lambda: layer99(st), layer99.kernel.value),
        "sk_compact_s99": step(lambda: compact(st), compact.values.value),
        "sk_ops_dense": step(lambda: ops.matmul(csr, Wv["sk_ops_dense"]), Wv["sk_ops_dense"]),
        "tf_sparse": step(lambda: tf.sparse.sparse_dense_matmul(st, Wv["tf_sparse"]),
                          Wv["tf_sparse"]),
        "tf_embedding": step(
            lambda: tf.nn.embedding_lookup_sparse(Wv["tf_embedding"], sp_ids, sp_w,
                                                  combiner="sum"), Wv["tf_embedding"]),
        "tf_csr": step(csr_fwd, Wv["tf_csr"]),
    }

    def as_numpy(out):
        y, g = out
        if isinstance(g, tf.IndexedSlices):
            return [y.numpy(), g.values.numpy(), g.indices.numpy()]
        return [y.numpy(), g.numpy()]

    fwd_bwd = {k: (lambda f=f: as_numpy(f())) for k, f in bwd_tf.items()}
    # CompactDense's values are in CSC order: (row, col) of each, to scatter dW for checking
    ip, ix = (np.asarray(v) for v in (compact.indptr.numpy(), compact.indices.numpy()))
    compact_coords = (ix.astype(np.int64), np.repeat(np.arange(N), np.diff(ip)))
    g_np = G.numpy()
    a_t = a64.T.tocsr()
    fwd_bwd["scipy"] = lambda: [a64 @ w, a_t @ g_np]
    fwd_bwd["sk_numpy"] = lambda: [sparsekeras.linalg.matmul(a, w),
                                   sparsekeras.linalg.matmul(a_t, g_np)]
    fwd_bwd["mkl"] = mkl if isinstance(mkl, str) else (
        lambda: [mkl(a64, w), mkl(a_t, g_np)])
    return forward, fwd_bwd, compact_coords


def densify(parts, V):
    """(Y, dense dW) from a fwd_bwd result: [Y, dW] or [Y, values, indices] (IndexedSlices;
    repeated indices add up)."""
    if len(parts) == 2:
        return parts[0], np.asarray(parts[1])
    y, values, indices = parts
    dw = np.zeros((V, values.shape[1]), np.float64)
    np.add.at(dw, indices.astype(np.int64), values)
    return y, dw


def close(got, ref):
    atol = 1e-4 * max(1.0, float(np.sqrt(np.mean(ref ** 2))))
    return bool(np.allclose(np.asarray(got, np.float64), ref, rtol=1e-4, atol=atol))


def run(args):
    tf = setup_tf()
    cfg = QUICK if args.quick else FULL
    B, V, per_row, N = cfg["B"], cfg["V"], cfg["per_row"], cfg["N"]
    timing = (0.05, 3, 30) if args.quick else (0.5, 20, 2000)
    rng = np.random.default_rng(1234)
    a = make_batch(B, V, per_row, seed=1)
    w = (rng.standard_normal((V, N)) * 0.05).astype(np.float32)
    mask = rng.random((V, N)) >= MASK_SPARSITY
    g = rng.standard_normal((B, N)).astype(np.float32)
    G = tf.constant(g)
    ad = a.toarray().astype(np.float64)
    ref_y = ad @ w
    ref_y99 = ad @ (w * mask)
    ref_dw = ad.T @ g

    row = {"B": B, "V": V, "N": N, "nnz": int(a.nnz), "touched_rows": int(len(np.unique(a.indices))),
           "mask_sparsity_s99": MASK_SPARSITY, "forward": {}, "fwd_bwd": {}}
    with sparsekeras.num_threads(SK_THREADS):
        forward, fwd_bwd, compact_coords = build(tf, a, w, mask, G)
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)
        tracker = BusyTracker()
        tracker.start()
        # TensorFlow methods first, numpy-level ones last, so that other libraries' thread pools
        # (MKL brings its own OpenMP runtime) are not yet running while TF methods are timed.
        order = [(ph, name) for ph, methods in (("forward", forward), ("fwd_bwd", fwd_bwd))
                 for name in methods if name not in NUMPY_METHODS]
        order += [(ph, name) for ph, methods in (("forward", forward), ("fwd_bwd", fwd_bwd))
                  for name in methods if name in NUMPY_METHODS]
        for phase, name in order:
            f = (forward if phase == "forward" else fwd_bwd)[name]
            if isinstance(f, str):
                row[phase][name] = {"status": f}
                log(f"  {phase:8s} {name:14s} {f}")
                continue
            parts = f()
            y_ref = ref_y99 if name.endswith("_s99") else ref_y
            if phase == "forward":
                ok = close(parts[0], y_ref)
            elif name == "sk_compact_s99":  # d(values): an IndexedSlices over the nnz values
                dv = np.zeros(len(compact_coords[0]))
                if len(parts) == 3:
                    np.add.at(dv, parts[2].astype(np.int64), parts[1])
                else:
                    dv = parts[1]
                ok = close(parts[0], y_ref) and close(dv, ref_dw[compact_coords])
            else:
                y, dw = densify(parts, V)
                ok = close(y, y_ref) and close(dw, ref_dw)
            if not ok and name in SK_METHODS:
                raise AssertionError(f"sparsekeras result wrong: {phase} {name}")
            stats = time_fn(f, *timing)
            stats["correct"] = ok
            if phase == "fwd_bwd" and len(parts) == 3:
                stats["grad_rows"] = int(parts[1].shape[0])
            row[phase][name] = stats
            log(f"  {phase:8s} {name:14s} {stats.get('median_ms', float('nan')):9.3f} ms"
                + ("" if ok else "  (DISAGREES with the reference)"))
        row["other_procs_cpus"] = tracker.stop()
    for phase in ("forward", "fwd_bwd"):
        base = row[phase].get("tf_sparse", {}).get("median_ms")
        row[f"{phase}_speedup_vs_tf_sparse"] = {
            k: (base / v["median_ms"] if base and v.get("median_ms") else None)
            for k, v in row[phase].items()}
    sk_f = row["forward"]["sk_layer"]["median_ms"]
    sk_s = row["fwd_bwd_speedup_vs_tf_sparse"]["sk_layer"]
    full = not args.quick
    row["targets"] = {**TARGETS, "forward_ms": sk_f, "fwd_bwd_speedup": sk_s,
                      "forward_met": (sk_f <= TARGETS["forward_ms_max"]) if full else None,
                      "fwd_bwd_met": bool(sk_s and sk_s >= TARGETS["fwd_bwd_speedup_vs_tf_sparse_min"])
                      if full else None,
                      "applies_to": "full size only (B=256, V=50,000, 50 per row, N=256)"}
    return tf, row, {"target_s": timing[0], "min_repeats": timing[1], "max_repeats": timing[2]}


def fmt(v, w=9, p=3):
    return f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"


def print_table(row):
    print(f"\nSparse input A ({row['B']} x {row['V']}, {row['nnz']} nonzeros, "
          f"{row['touched_rows']} distinct columns) @ W ({row['V']} x {row['N']}), float32; "
          f"median ms; speed-up = tf_sparse time / method time")
    print(f"{'method':15s} {'forward':>9s} {'x tf.sp':>8s} {'fwd+bwd':>9s} {'x tf.sp':>8s}")
    names = list(dict.fromkeys(list(row["forward"]) + list(row["fwd_bwd"])))
    for name in names:
        f = row["forward"].get(name, {})
        b = row["fwd_bwd"].get(name, {})
        if f.get("status", "ok") != "ok" and b.get("status", "ok") != "ok":
            print(f"{name:15s} {f.get('status')}")
            continue
        print(f"{name:15s} {fmt(f.get('median_ms'))} "
              f"{fmt(row['forward_speedup_vs_tf_sparse'].get(name), 8, 2)} "
              f"{fmt(b.get('median_ms'))} {fmt(row['fwd_bwd_speedup_vs_tf_sparse'].get(name), 8, 2)}"
              + ("" if f.get("correct", True) and b.get("correct", True) else "  (disagrees)"))
    t = row["targets"]
    if t["forward_met"] is None:
        print("targets: apply to the full size only (this is --quick)")
        return
    print(f"targets (full size): forward <= {t['forward_ms_max']} ms: {t['forward_ms']:.3f} ms "
          f"({'met' if t['forward_met'] else 'NOT met'}); fwd+bwd >= "
          f"{t['fwd_bwd_speedup_vs_tf_sparse_min']}x tf_sparse: {fmt(t['fwd_bwd_speedup'], 0, 2)}x "
          f"({'met' if t['fwd_bwd_met'] else 'NOT met'})")
    if row.get("other_procs_cpus", 0) > 0.1:
        print(f"* other processes used {row['other_procs_cpus']:.2f} CPUs: timings unreliable")


def plot(row, info, path):
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, phase, title in ((axes[0], "forward", "forward  Y = A W"),
                             (axes[1], "fwd_bwd", "forward + backward  (Y, dW = A^T dY)")):
        items = [(k, v["median_ms"]) for k, v in row[phase].items() if v.get("median_ms")]
        names = [k for k, _ in items]
        vals = [v for _, v in items]
        colors = ["tab:blue" if k.startswith("sk_") else "tab:gray" for k in names]
        ax.barh(names, vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_yaxis()
        ax.set_xlabel("median time per call, ms (log scale; lower is better)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(f"Sparse input A ({row['B']} x {row['V']}, {row['nnz']} nonzeros) @ dense W "
                 f"({row['V']} x {row['N']}), float32; {info['cpu_model']}, 2 threads",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--quick", action="store_true",
                    help="32 x 5,000 batch, N=64, few repeats (CI smoke test)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="wait up to SECONDS for other processes to go idle before measuring")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    tf, row, timing = run(args)
    from sparsekeras import _kernels

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(), "n_cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "isa": _kernels.isa(), "sparsekeras_threads": SK_THREADS,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__, "tensorflow": tf.__version__,
                     "sparsekeras": sparsekeras.__version__},
        "quick": args.quick, "dtype": "float32",
        "timing": {**timing, "slow_limit_s": SLOW_LIMIT_S, "settle_s": SETTLE_S,
                   "clock": "time.perf_counter",
                   "tf_timing": ".numpy() on every output of every timed call"},
        "methods": "see the module docstring of benchmarks/bench_sparse_input.py",
    }
    info["wall_time_s"] = round(time.perf_counter() - t0, 1)
    with open(os.path.join(args.out, "bench_sparse_input.json"), "w") as f:
        json.dump({"info": info, "results": [row]}, f, indent=1)
    print_table(row)
    plot(row, info, os.path.join(args.out, "bench_sparse_input.png"))
    log(f"wrote {args.out}/bench_sparse_input.json and {args.out}/bench_sparse_input.png "
        f"({info['wall_time_s']} s)")


if __name__ == "__main__":
    main()
