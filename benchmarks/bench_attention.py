"""Benchmark: SparseEinsumDense (sparse compute) vs keras.layers.EinsumDense on MultiHeadAttention
projections, at a given mask sparsity.

Cases (float32, batch 8, sequence 128, model dim 256, 4 heads of 64):
    qkv     "abc,cde->abde": (8, 128, 256) x (256, 4, 64)   (query / key / value)
    output  "abcd,cde->abe": (8, 128, 4, 64) x (4, 64, 256) (attention output)
Kernel: unstructured random mask at sparsity s (default 0.9), the same kernel values in both
layers (EinsumDense holds the masked kernel).

For each case, inside a tf.function:
    forward      y = layer(x)
    train step   loss = reduce_sum(y * G); gradients w.r.t. x and the trainable weights
                 (the sparse layer's kernel gradient is the dense x^T dY GEMM, as in training
                 while pruning), applied by SGD
Each measured as the median (and min) of --repeats timed calls after a warm-up, every call
ending with .numpy(), the sparse and the dense layer's calls alternating (both meet the same
load); the run is repeated --runs times in one process and the medians of the
per-run medians reported, since the machine is shared (other processes' CPU use is recorded).
Outputs are checked against EinsumDense first (assert_allclose).

Usage:
    python benchmarks/bench_attention.py [--sparsity 0.9] [--repeats 30] [--runs 3] [--quick]
                                         [--wait-idle S] [--out DIR]
prints a table and writes --out DIR/bench_attention.json if given.
"""
import argparse
import json
import os
import time

import numpy as np

import _common
from _common import log

CASES = {
    "qkv": dict(equation="abc,cde->abde", output_shape=(None, 4, 64), bias_axes="de",
                x=(8, 128, 256)),
    "output": dict(equation="abcd,cde->abe", output_shape=(None, 256), bias_axes="e",
                   x=(8, 128, 4, 64)),
}
QUICK = {
    "qkv": dict(equation="abc,cde->abde", output_shape=(None, 2, 16), bias_axes="de",
                x=(2, 16, 32)),
    "output": dict(equation="abcd,cde->abe", output_shape=(None, 32), bias_axes="e",
                   x=(2, 16, 2, 16)),
}


def _alternating_times(fns, repeats):
    """{name: (median, min)} of each function in `fns`, called in turn (a, b, a, b, ...) so that
    both meet the same load on a shared machine; one warm-up call each first (traces)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (float(np.median(t)), float(np.min(t))) for name, t in times.items()}


def _case(tf, keras, layers, spec, sparsity, repeats, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal(spec["x"]).astype(np.float32))
    sparse = layers.SparseEinsumDense(spec["equation"], spec["output_shape"],
                                      bias_axes=spec["bias_axes"], compute="sparse")
    sparse.build(spec["x"])
    sparse.set_mask(rng.random(sparse.mask.shape) >= sparsity)
    dense = keras.layers.EinsumDense(spec["equation"], spec["output_shape"],
                                     bias_axes=spec["bias_axes"])
    dense.build(spec["x"])
    dense.kernel.assign(keras.ops.convert_to_numpy(sparse.kernel))
    np.testing.assert_allclose(sparse(x).numpy(), dense(x).numpy(), rtol=1e-4, atol=1e-4)
    g = tf.constant(rng.standard_normal(tuple(dense(x).shape)).astype(np.float32))

    def forward_fn(layer):
        fn = tf.function(lambda: layer(x))
        return lambda: fn().numpy()

    def step_fn(layer):
        opt = keras.optimizers.SGD(1e-6)
        opt.build(layer.trainable_variables)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(layer(x) * g)
            grads = tape.gradient(loss, [x] + layer.trainable_variables)
            opt.apply(grads[1:], layer.trainable_variables)
            return grads[0]

        return lambda: step().numpy()

    fwd = _alternating_times({"sparse": forward_fn(sparse), "dense": forward_fn(dense)}, repeats)
    stp = _alternating_times({"sparse": step_fn(sparse), "dense": step_fn(dense)}, repeats)
    return {name: dict(forward=fwd[name], step=stp[name]) for name in ("sparse", "dense")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="wait up to S seconds for a quiet machine before each run")
    args = parser.parse_args()
    tf = _common.setup_tf()
    import keras
    import sparsekeras  # noqa: F401  (loads the ops)
    from sparsekeras import layers

    cases = QUICK if args.quick else CASES
    rows = {}
    for name, spec in cases.items():
        runs = []
        for r in range(args.runs):
            if args.wait_idle:
                _common.wait_idle(args.wait_idle)
            before = _common.busy_cpu_s()
            result = _case(tf, keras, layers, spec, args.sparsity, args.repeats, seed=r)
            after = _common.busy_cpu_s()
            result["other_cpus"] = ((after[0] - before[0]) - (after[1] - before[1]))
            runs.append(result)
            log(f"  {name} run {r}: " + ", ".join(
                f"{k} {what} {1e3 * result[k][what][0]:.3f} ms"
                for k in ("sparse", "dense") for what in ("forward", "step"))
                + f" (other processes: {result['other_cpus']:.1f} CPU s)")
        med = {k: {what: float(np.median([run[k][what][0] for run in runs]))
                   for what in ("forward", "step")} for k in ("sparse", "dense")}
        rows[name] = dict(spec={k: v for k, v in spec.items()}, runs=runs, median=med)
    print(f"sparsity {args.sparsity}, {args.runs} runs x {args.repeats} calls, medians (ms):")
    print(f"{'case':8s} {'what':8s} {'EinsumDense':>12s} {'SparseEinsumDense':>18s} "
          f"{'speedup':>8s}")
    for name, row in rows.items():
        for what in ("forward", "step"):
            d, s = row["median"]["dense"][what], row["median"]["sparse"][what]
            print(f"{name:8s} {what:8s} {1e3 * d:12.3f} {1e3 * s:18.3f} {d / s:8.2f}x")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_attention.json"), "w") as f:
            json.dump(dict(sparsity=args.sparsity, cpu=_common.cpu_model(), rows=rows), f,
                      indent=1, default=str)


if __name__ == "__main__":
    main()
