"""Keras-level benchmark: what a user of the layers sees.

1. One training step (forward + backward + Adam) of a 4096 -> 4096 layer at 90% sparsity,
   batch 256: keras.layers.Dense vs SparseDense (dense kernel + mask, sparse compute) vs
   SparseDense compacted (`sparsekeras.compact`, what GradualPruning does when its schedule
   ends: the optimizer updates the nonzeros only), unstructured and with a (1, 8) block mask, vs
   CompactDense (CSC values only) and CompactDense in (1, 8) blocks (block-CSC).
2. A 784-4096-4096-10 MLP pruned to 90% (hidden layers), by weight magnitude, unstructured and
   in (1, 8) blocks (GradualPruning(granularity="block", block_shape=(1, 8))'s masks):
   `predict` latency on batch 256 and 1, dense vs stripped (`sparsekeras.strip`, which stores the
   block-pruned kernels in block-CSC form), and the `.keras` file sizes.

Usage: python benchmarks/bench_layers.py --out DIR [--quick] [--step-only] [--runs N]
Writes DIR/bench_layers.json and prints a table. Medians of repeated runs, same process; with
--runs N, N fresh processes (DIR/runN/...), every run's ratios and their medians
(DIR/bench_layers_runs.json).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np


def _median_ms(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, float(np.min(times)) * 1e3


def train_step_bench(width, batch, sparsity, repeats):
    import keras
    import tensorflow as tf

    import sparsekeras

    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, width), dtype=np.float32))
    y = tf.constant(rng.standard_normal((batch, width), dtype=np.float32))
    mask = rng.random((width, width)) >= sparsity
    block_mask = np.repeat(rng.random((width, width // 8)) >= sparsity, 8, axis=1)
    masks = {"SparseDense": mask, "SparseDenseCompacted": mask, "SparseDenseCompacted1x8": block_mask}
    results = {}
    makers = {
        "Dense": lambda: keras.layers.Dense(width),
        "SparseDense": lambda: sparsekeras.layers.SparseDense(width),
        "SparseDenseCompacted": lambda: sparsekeras.layers.SparseDense(width),
        "SparseDenseCompacted1x8": lambda: sparsekeras.layers.SparseDense(width),
        "CompactDense": lambda: sparsekeras.layers.CompactDense(width, sparsity=sparsity, seed=0),
        "CompactDense1x8": lambda: sparsekeras.layers.CompactDense(width, sparsity=sparsity, seed=0,
                                                                   block=8),
    }
    for name, make in makers.items():
        layer = make()
        model = keras.Sequential([keras.Input((width,)), layer])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        if name in masks:
            layer.set_mask(masks[name])
            assert layer.uses_sparse_kernels
        if name.startswith("SparseDenseCompacted"):
            model.train_on_batch(x, y)  # the optimizer is built, as when GradualPruning compacts
            sparsekeras.compact(model)
            assert layer.compacted and layer.compact_block == (8 if name.endswith("1x8") else 1)
        med, best = _median_ms(lambda: model.train_on_batch(x, y), repeats)
        results[name] = {"median_ms": med, "min_ms": best}
        print(f"  train step {name:24s} {med:9.2f} ms (min {best:.2f})", file=sys.stderr, flush=True)
    return results


GRANULARITIES = {"unstructured": dict(granularity="unstructured"),
                 "block1x8": dict(granularity="block", block_shape=(1, 8))}


def mlp_bench(sparsity, repeats, quick):
    import keras
    import tensorflow as tf

    import sparsekeras
    from sparsekeras import _masks

    hidden = 1024 if quick else 4096
    rng = np.random.default_rng(0)
    dense = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(hidden, activation="relu", name="hidden1"),
        keras.layers.Dense(hidden, activation="relu", name="hidden2"),
        keras.layers.Dense(10, name="logits"),
    ])
    models = {"dense": dense}
    blocks = {}
    for gname, options in GRANULARITIES.items():
        sparse = sparsekeras.sparsify(dense, layer_names=["hidden1", "hidden2"])
        for layer in sparse.layers:
            if isinstance(layer, sparsekeras.layers.SparseDense):
                w = keras.ops.convert_to_numpy(layer.kernel)
                layer.set_mask(_masks.magnitude_mask(w, sparsity, **options))
        models[gname] = sparsekeras.strip(sparse)
        blocks[gname] = [layer.block for layer in models[gname].layers
                         if isinstance(layer, sparsekeras.layers.CompactDense)]
    out = {"hidden": hidden, "granularities": list(GRANULARITIES), "blocks": blocks}
    for batch in (1, 256):
        x = tf.constant(rng.standard_normal((batch, 784), dtype=np.float32))
        for name, model in models.items():
            fn = tf.function(lambda t, m=model: m(t, training=False))
            med, best = _median_ms(lambda: fn(x).numpy(), repeats)
            out[f"{name}_b{batch}_ms"] = med
            pred_med, _ = _median_ms(lambda: model.predict_on_batch(x), repeats)
            out[f"{name}_b{batch}_predict_on_batch_ms"] = pred_med
            print(f"  MLP {name:12s} batch {batch:3d}: call {med:8.3f} ms, predict_on_batch "
                  f"{pred_med:8.3f} ms", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = os.path.join(tmp, f"{name}.keras")
            model.save(path)
            out[f"{name}_file_bytes"] = os.path.getsize(path)
    return out


def _ratios(result):
    """{row: ratio to the dense baseline} of one run's JSON."""
    out = {}
    step = result["train_step"]
    dense = step["Dense"]["median_ms"]
    for name, r in step.items():
        if isinstance(r, dict) and name != "Dense":
            out[f"train step {name}"] = dense / r["median_ms"]
    mlp = result.get("mlp")
    if mlp:
        for g in mlp["granularities"]:
            for b in (1, 256):
                out[f"MLP predict {g} batch {b}"] = mlp[f"dense_b{b}_ms"] / mlp[f"{g}_b{b}_ms"]
    return out


def _several_runs(args, argv):
    """Run this script args.runs times in fresh processes; write every run and the medians."""
    import subprocess

    rest, skip = [], False
    for a in argv:  # the same options, without --out and --runs
        if skip:
            skip = False
            continue
        if a in ("--out", "--runs"):
            skip = True
            continue
        if a.startswith(("--out=", "--runs=")):
            continue
        rest.append(a)
    runs = []
    for i in range(args.runs):
        out = os.path.join(args.out, f"run{i + 1}")
        print(f"run {i + 1}/{args.runs} (fresh process)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--out", out, *rest],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "bench_layers.json")) as f:
            runs.append(json.load(f))
    table = [_ratios(r) for r in runs]
    medians = {row: float(np.median([t[row] for t in table])) for row in table[0]}
    with open(os.path.join(args.out, "bench_layers_runs.json"), "w") as f:
        json.dump({"runs": runs, "ratios": table, "median_ratios": medians}, f, indent=2)
    print(f"\nSpeed-up over the dense baseline, {args.runs} runs (fresh processes), and median")
    for row, med in medians.items():
        each = ", ".join(f"{t[row]:.2f}" for t in table)
        print(f"  {row:40s} {each}   median {med:.2f}x")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step-only", action="store_true",
                        help="only the training-step part (no MLP)")
    parser.add_argument("--runs", type=int, default=1,
                        help="run the benchmark this many times, each in a fresh process, and "
                             "report every run's ratios and their medians (this shared machine "
                             "has slow phases that last a process)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1; received {args.runs}")
    if args.runs > 1:
        return _several_runs(args, argv if argv is not None else sys.argv[1:])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import sparsekeras

    repeats = 5 if args.quick else 20
    width = 1024 if args.quick else 4096
    print(f"training step, {width} -> {width}, batch 256, sparsity 0.9", file=sys.stderr)
    step = train_step_bench(width, 256, 0.9, repeats)
    mlp = None
    if not args.step_only:
        print("784-H-H-10 MLP at 90% sparsity", file=sys.stderr)
        mlp = mlp_bench(0.9, repeats, args.quick)
    result = {
        "machine": {"platform": platform.platform(), "isa": sparsekeras._kernels.isa(),
                    "threads": sparsekeras.get_num_threads(), "tensorflow": tf.__version__,
                    "sparsekeras": sparsekeras.__version__},
        "train_step": {"width": width, "batch": 256, "sparsity": 0.9, **step},
        "mlp": mlp,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_layers.json"), "w") as f:
        json.dump(result, f, indent=2)

    d = step["Dense"]["median_ms"]
    print(f"\nTraining step ({width} -> {width}, batch 256, 90% sparse, Adam), median ms")
    for name, r in step.items():
        print(f"  {name:24s} {r['median_ms']:9.2f} ms   {d / r['median_ms']:5.2f}x vs Dense")
    if mlp is None:
        return 0
    h = mlp["hidden"]
    for g in mlp["granularities"]:
        print(f"\n784-{h}-{h}-10 MLP, hidden layers 90% sparse, {g} (stripped; CompactDense "
              f"blocks {mlp['blocks'][g]})")
        for b in (1, 256):
            dm, sm = mlp[f"dense_b{b}_ms"], mlp[f"{g}_b{b}_ms"]
            print(f"  batch {b:3d}: dense {dm:8.3f} ms  stripped {sm:8.3f} ms  {dm / sm:5.2f}x   "
                  f"(predict_on_batch: {mlp[f'dense_b{b}_predict_on_batch_ms']:.3f} vs "
                  f"{mlp[f'{g}_b{b}_predict_on_batch_ms']:.3f} ms)")
        ratio = mlp[f"{g}_file_bytes"] / mlp["dense_file_bytes"]
        print(f"  .keras file: dense {mlp['dense_file_bytes'] / 1e6:.2f} MB, stripped "
              f"{mlp[f'{g}_file_bytes'] / 1e6:.2f} MB ({ratio:.1%} of dense)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
