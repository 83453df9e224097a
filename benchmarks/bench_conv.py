"""Benchmark: sparse-kernel 2-D convolution (sparsekeras op) vs tf.nn.conv2d (oneDNN), same run.

Layers (NHWC, float32, batch 8, 56x56, SAME, stride 1):
    resnet3x3     3x3, 64 -> 64 channels       (a ResNet basic-block convolution)
    mobilenet1x1  1x1, 128 -> 128 channels     (a MobileNet pointwise convolution)
Kernel: unstructured random mask at sparsity s (fraction of zeros), s in 0.5 ... 0.95.

For each (layer, s), on the same operands, each inside a tf.function:
Forward:
    sk            sparsekeras.ops.csr_conv2d(x, indptr, indices, values, kernel_shape) (structure
                  precomputed, as SparseConv2D caches it)
    tf_conv2d     tf.nn.conv2d(x, masked dense kernel): the dense baseline, zeros or not
Forward+backward (a training step's three products: y, dx and the kernel gradient), with a
tf.GradientTape and loss = reduce_sum(y * G), G a fixed random tensor:
    sk            gradients w.r.t. x and the values tf.Variable (nnz,)
    tf_conv2d     gradients w.r.t. x and the dense kernel tf.Variable

Timing: one warm-up call (traces), then calls repeated for ~TARGET_S seconds (at least
MIN_REPEATS), each timed separately; median, min and IQR reported; every call ends with .numpy().
TensorFlow runs 2 intra-op threads, sparsekeras 2 threads. Other processes' CPU use during each
row is recorded (the machine is shared); --wait-idle waits for a quiet machine first.

Correctness, once per (layer, s): sparsekeras forward vs tf.nn.conv2d, dx vs the dense dx, and
the values gradient vs the dense kernel gradient at the kept positions (assert_allclose, rtol
1e-4, atol 1e-3 x RMS of the reference). A wrong result aborts the run.

Usage:
    python benchmarks/bench_conv.py --out DIR [--quick] [--sparsities 0.5,0.9] [--wait-idle S]
writes DIR/bench_conv.json and DIR/bench_conv.png and prints a table.
"""
import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

import _common
from _common import log

LAYERS = {
    "resnet3x3": dict(batch=8, hw=56, cin=64, cout=64, k=3),
    "mobilenet1x1": dict(batch=8, hw=56, cin=128, cout=128, k=1),
}
QUICK_LAYERS = {
    "resnet3x3": dict(batch=2, hw=14, cin=16, cout=16, k=3),
    "mobilenet1x1": dict(batch=2, hw=14, cin=32, cout=32, k=1),
}
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
TARGET_S = 1.0
MIN_REPEATS = 7


def timed(fn, target_s, min_repeats):
    fn()  # warm-up / trace
    times = []
    t_end = time.perf_counter() + target_s
    while len(times) < min_repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) > 2000:
            break
    a = np.array(times) * 1e3
    q1, q3 = np.percentile(a, [25, 75])
    return dict(median_ms=float(np.median(a)), min_ms=float(a.min()), iqr_ms=float(q3 - q1),
                repeats=len(a))


def check(actual, expected, what):
    expected = np.asarray(expected, np.float64)
    rms = float(np.sqrt(np.mean(expected ** 2))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4,
                               atol=1e-3 * rms + 1e-6, err_msg=what)


def run_case(tf, sk_ops, cfg, s, seed, target_s, min_repeats):
    rng = np.random.default_rng(seed)
    b, hw, cin, cout, k = cfg["batch"], cfg["hw"], cfg["cin"], cfg["cout"], cfg["k"]
    kshape = (k, k, cin, cout)
    mask = rng.random(kshape) >= s
    kernel = (rng.standard_normal(kshape) * np.sqrt(2.0 / (k * k * cin)) * mask).astype(np.float32)
    x = tf.constant(rng.standard_normal((b, hw, hw, cin)).astype(np.float32))
    g = tf.constant(rng.standard_normal((b, hw, hw, cout)).astype(np.float32))
    indptr, indices, positions = sk_ops.conv_kernel_structure(mask)
    values = tf.Variable(tf.gather(tf.reshape(kernel, [-1]), positions))
    kvar = tf.Variable(kernel)

    sk_fwd = tf.function(lambda: sk_ops.csr_conv2d(x, indptr, indices, values, kshape, padding="same"))
    tf_fwd = tf.function(lambda: tf.nn.conv2d(x, kvar, 1, "SAME"))

    @tf.function
    def sk_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = sk_ops.csr_conv2d(x, indptr, indices, values, kshape, padding="same")
            loss = tf.reduce_sum(y * g)
        return tape.gradient(loss, [x, values])

    @tf.function
    def tf_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kvar, 1, "SAME")
            loss = tf.reduce_sum(y * g)
        return tape.gradient(loss, [x, kvar])

    y_ref = tf_fwd().numpy()
    check(sk_fwd().numpy(), y_ref, "forward")
    dx_ref, dk_ref = [t.numpy() for t in tf_step()]
    dx, dv = [t.numpy() for t in sk_step()]
    check(dx, dx_ref, "dx")
    check(dv, dk_ref.reshape(-1)[positions.numpy()], "d_values")

    row = dict(sparsity=s, nnz=int(mask.sum()), forward={}, fwd_bwd={})
    b0, o0 = _common.busy_cpu_s()
    t0 = time.perf_counter()
    for name, fn in (("sk", sk_fwd), ("tf_conv2d", tf_fwd)):
        row["forward"][name] = timed(lambda: fn().numpy(), target_s, min_repeats)
        row["forward"][name]["correct"] = True
    for name, fn in (("sk", sk_step), ("tf_conv2d", tf_step)):
        row["fwd_bwd"][name] = timed(lambda: [t.numpy() for t in fn()], target_s, min_repeats)
        row["fwd_bwd"][name]["correct"] = True
    b1, o1 = _common.busy_cpu_s()
    wall = time.perf_counter() - t0
    row["other_cpu_share"] = max(0.0, ((b1 - b0) - (o1 - o0)) / wall) if wall > 0 else 0.0
    for part in ("forward", "fwd_bwd"):
        row[part]["speedup_vs_tf_conv2d"] = (row[part]["tf_conv2d"]["median_ms"]
                                             / row[part]["sk"]["median_ms"])
    return row


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, part, title in zip(axes, ("forward", "fwd_bwd"), ("forward", "forward + backward")):
        for layer, rows in results.items():
            xs = [r["sparsity"] for r in rows]
            ax.plot(xs, [r[part]["speedup_vs_tf_conv2d"] for r in rows], "o-", label=layer)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("kernel sparsity")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speed-up vs tf.nn.conv2d (median)")
    axes[0].legend()
    fig.suptitle("sparsekeras sparse convolution vs tf.nn.conv2d (batch 8, 56x56, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="small layers, two sparsities (tests)")
    ap.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.5,0.9")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each row, wait up to S seconds for a quiet machine")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tf = _common.setup_tf()
    import sparsekeras
    from sparsekeras import ops as sk_ops

    layers = QUICK_LAYERS if args.quick else LAYERS
    sparsities = ([float(v) for v in args.sparsities.split(",")] if args.sparsities
                  else [0.5, 0.9] if args.quick else SPARSITIES)
    target_s, min_repeats = (0.05, 3) if args.quick else (TARGET_S, MIN_REPEATS)
    results = {}
    with sparsekeras.num_threads(2):
        for li, (name, cfg) in enumerate(layers.items()):
            results[name] = []
            for si, s in enumerate(sparsities):
                if args.wait_idle:
                    _common.wait_idle(args.wait_idle)
                log(f"{name} s={s} ...")
                results[name].append(run_case(tf, sk_ops, cfg, s, 100 * li + si, target_s,
                                              min_repeats))
    data = dict(
        benchmark="bench_conv", date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(cpu=_common.cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                     tensorflow=tf.__version__, sparsekeras=sparsekeras.__version__,
                     isa=sparsekeras._kernels.isa()),
        layers=layers, quick=args.quick,
        results=[dict(layer=name, **row) for name, rows in results.items() for row in rows])
    with open(os.path.join(args.out, "bench_conv.json"), "w") as f:
        json.dump(data, f, indent=1)
    plot(results, os.path.join(args.out, "bench_conv.png"))
    print(f"{'layer':<14}{'sparsity':>9}{'sk fwd':>10}{'conv2d fwd':>12}{'x':>7}"
          f"{'sk step':>10}{'conv2d step':>13}{'x':>7}{'other cpu':>11}")
    for name, rows in results.items():
        for r in rows:
            f, s2 = r["forward"], r["fwd_bwd"]
            print(f"{name:<14}{r['sparsity']:>9.2f}{f['sk']['median_ms']:>10.2f}"
                  f"{f['tf_conv2d']['median_ms']:>12.2f}{f['speedup_vs_tf_conv2d']:>7.2f}"
                  f"{s2['sk']['median_ms']:>10.2f}{s2['tf_conv2d']['median_ms']:>13.2f}"
                  f"{s2['speedup_vs_tf_conv2d']:>7.2f}{r['other_cpu_share']:>11.2f}")
    print("(milliseconds, medians; x = tf.nn.conv2d time / sparsekeras time)")


if __name__ == "__main__":
    main()
