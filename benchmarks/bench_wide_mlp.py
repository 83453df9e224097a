"""Benchmark: the wide MLP 1024-4096-4096-1000 at 90% sparsity in TensorFlow, dense vs stripped.

The model of issue 24's table (part 5, kernels at large batch): three Dense layers (ReLU, ReLU,
linear), every kernel pruned to 90% by weight magnitude, unstructured and in (1, 8) blocks
(`sparsekeras._masks.magnitude_mask`, what GradualPruning computes), then `sparsekeras.strip`ped
(CompactDense layers: CSC, resp. block-CSC with G = 8). For every batch size, in one process:

    dense         the Keras model with its dense kernels: the baseline
    unstructured  the stripped model pruned unstructured
    block1x8      the stripped model pruned in (1, 8) blocks

each called as `f(x).numpy()` with `f = tf.function(model(x, training=False))`, TensorFlow limited
to 2 intra-op threads and 1 inter-op thread, sparsekeras to 2 threads. The models are timed
interleaved (round r calls every model `calls` times before round r + 1 starts), so a change of
load on this shared machine affects them alike; the median of the rounds is reported, with the
ratio dense / stripped. Before timing, each stripped model's output is checked against the pruned
model computed densely (assert_allclose, rtol 1e-4, atol 1e-4 * RMS).

--kernels adds the products alone (`_kernels.dense_csc_matmul` / `dense_bcsc_matmul` on the three
layers' arrays, numpy level, 1 and 2 threads, median of repeats) with their roofline counts: flops
(2 * stored weights * batch), the sparse operand's bytes, the activations' bytes (input + output)
and the bytes the product streams from the packed activation panels (one panel row per stored
weight, resp. block, per batch tile: the traffic that bounds the unstructured kernel).

--unfused adds, per granularity, the stripped model with its bias and ReLU applied by TensorFlow
after the product (BiasAdd and Relu ops) instead of fused into the product's output store (the
*BiasAct ops CompactDense uses for linear and ReLU layers): the same layers and weights, timed
interleaved with the others, so the epilogue's share is measured within one process.

--cpu-time runs everything on 1 thread (TensorFlow and sparsekeras) and reports the process CPU
time per call (the products alone: the calling thread's CPU time): on a machine shared by many busy processes, wall times mostly measure waiting for
a core, CPU times the work done (both still suffer the others' use of the shared caches).

--compare TREE_A TREE_B --runs N runs this script N times for each of two source trees (built in
place; e.g. the tree before and after a kernel change), alternating A, B, A, B, ... in fresh
processes (PYTHONPATH=TREE), and prints every run's ratios and times and their medians: a fair
before/after on a machine whose load changes.

Usage:
    python benchmarks/bench_wide_mlp.py --out DIR [--quick] [--batches 32 256] [--kernels]
                                        [--cpu-time] [--unfused]
    python benchmarks/bench_wide_mlp.py --out DIR --compare /path/before /path/after --runs 3
Writes DIR/bench_wide_mlp.json (DIR/bench_wide_mlp_compare.json with --compare) and prints a table.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

LAYERS = [(1024, 4096, "relu"), (4096, 4096, "relu"), (4096, 1000, None)]
QUICK_LAYERS = [(256, 1024, "relu"), (1024, 1024, "relu"), (1024, 250, None)]
GRANULARITIES = {"unstructured": dict(granularity="unstructured"),
                 "block1x8": dict(granularity="block", block_shape=(1, 8))}
SPARSITY = 0.9


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_models(layers, seed=0):
    """The dense model and, per granularity, the pruned model stripped (plus its masked twin)."""
    import keras

    import sparsekeras
    from sparsekeras import _masks

    keras.utils.set_random_seed(seed)
    dense = keras.Sequential([keras.Input((layers[0][0],))] + [
        keras.layers.Dense(n, activation=act, name=f"dense{i}")
        for i, (_, n, act) in enumerate(layers)])
    stripped, masked = {}, {}
    for gname, options in GRANULARITIES.items():
        sparse = sparsekeras.sparsify(dense)
        for layer in sparse.layers:
            if isinstance(layer, sparsekeras.layers.SparseDense):
                w = keras.ops.convert_to_numpy(layer.kernel)
                layer.set_mask(_masks.magnitude_mask(w, SPARSITY, **options))
        masked[gname] = sparse
        stripped[gname] = sparsekeras.strip(sparse)
    return dense, stripped, masked


def unfused_twins(stripped):
    """{granularity + "_unfused": a copy of the stripped model whose activations are wrapped so
    that CompactDense does not recognise (and fuse) them: its bias and ReLU then run as
    TensorFlow ops after the product."""
    import keras

    twins = {}
    for gname, model in stripped.items():
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        for layer in twin.layers:
            act = layer.activation
            layer.activation = lambda y, act=act: act(y)
        twins[f"{gname}_unfused"] = twin
    return twins


def _check(stripped, masked, x):
    """Each stripped model computes its pruned model (dense compute, masked kernels)."""
    for gname, model in stripped.items():
        want = _masked_forward(masked[gname], x.numpy())
        got = model(x, training=False).numpy()
        rms = float(np.sqrt(np.mean(want.astype(np.float64) ** 2))) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * rms,
                                   err_msg=f"stripped {gname} model differs from the pruned one")


def _masked_forward(model, x):
    """The pruned model in NumPy float64 (kernel * mask, bias, activation)."""
    import keras

    y = x.astype(np.float64)
    for layer in model.layers:
        k = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
        mask = getattr(layer, "mask", None)
        if mask is not None:
            k = k * keras.ops.convert_to_numpy(mask).astype(np.float64)
        y = y @ k + keras.ops.convert_to_numpy(layer.bias).astype(np.float64)
        if layer.activation is keras.activations.relu:
            y = np.maximum(y, 0.0)
    return y


def time_models(models, x, rounds, calls, clock=time.perf_counter):
    """{name: [ms per call, one per round]}: the models called interleaved, round by round.
    clock: time.perf_counter (wall) or time.process_time (CPU time of the process)."""
    import tensorflow as tf

    fns = {name: tf.function(lambda t, m=m: m(t, training=False)) for name, m in models.items()}
    for f in fns.values():  # trace and warm up (scratch buffers, thread pools)
        f(x).numpy()
        f(x).numpy()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = clock()
            for _ in range(calls):
                f(x).numpy()
            times[name].append((clock() - t0) / calls * 1e3)
    return times


def kernel_rows(stripped, batch, repeats, tile, cpu_time=False):
    """The three products alone, per granularity, 1 and 2 threads (1 thread and the calling
    thread's CPU time with cpu_time), with roofline counts."""
    import keras

    from sparsekeras import _kernels

    rng = np.random.default_rng(1)
    rows = []
    for gname, model in stripped.items():
        for layer in model.layers:
            ip = keras.ops.convert_to_numpy(layer.indptr)
            ix = keras.ops.convert_to_numpy(layer.indices)
            v = keras.ops.convert_to_numpy(layer.values)
            k, n, g = layer.input_dim, layer.units, layer.block
            x = rng.standard_normal((batch, k)).astype(np.float32)
            if g > 1:
                def f(nt, x=x, ip=ip, ix=ix, v=v, k=k, n=n, g=g):
                    return _kernels.dense_bcsc_matmul(x, ip, ix, v, (k, n), g, n_threads=nt)
            else:
                def f(nt, x=x, ip=ip, ix=ix, v=v, k=k, n=n):
                    return _kernels.dense_csc_matmul(x, ip, ix, v, (k, n), n_threads=nt)
            n_tiles = -(-batch // tile)
            row = {"granularity": gname, "shape": [k, n], "block": g, "batch": batch,
                   "stored_weights": int(len(v)), "flops": 2 * int(len(v)) * batch,
                   "sparse_bytes": int(v.nbytes + ix.nbytes + ip.nbytes),
                   "activation_bytes": 4 * batch * (k + n),
                   # one panel row (tile floats) per stored index and batch tile
                   "panel_bytes": 4 * int(len(ix)) * batch,
                   "panel_rows_per_tile": int(len(ix)), "tile": tile, "batch_tiles": n_tiles}
            clock = time.thread_time if cpu_time else time.perf_counter
            for nt in (1,) if cpu_time else (1, 2):
                f(nt)
                ts = []
                for _ in range(repeats):
                    t0 = clock()
                    f(nt)
                    ts.append(clock() - t0)
                ms = float(np.median(ts)) * 1e3
                row[f"ms_{nt}t"] = ms
                row[f"gflops_{nt}t"] = row["flops"] / ms / 1e6
                row[f"panel_gbs_{nt}t"] = row["panel_bytes"] / ms / 1e6
            rows.append(row)
    return rows


def run(args):
    """One measurement run in this process: JSON written to args.out; returns the result."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = 1 if args.cpu_time else 2
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import sparsekeras
    from sparsekeras import _kernels

    sparsekeras.set_num_threads(threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    layers = QUICK_LAYERS if args.quick else LAYERS
    rounds, calls = (3, 2) if args.quick else (args.rounds, args.calls)
    dense, stripped, masked = build_models(layers)
    extra = unfused_twins(stripped) if args.unfused else {}
    rng = np.random.default_rng(0)
    load0 = os.getloadavg()
    result = {"machine": {"platform": platform.platform(), "isa": _kernels.isa(),
                          "sparsekeras_file": sparsekeras.__file__,
                          "kernels_file": _kernels.__file__, "tensorflow": tf.__version__,
                          "cpu_count": os.cpu_count()},
              "layers": [list(t) for t in layers], "sparsity": SPARSITY,
              "blocks": {g: [layer.block for layer in m.layers] for g, m in stripped.items()},
              "rounds": rounds, "calls_per_round": calls, "threads": threads,
              "clock": "process CPU time" if args.cpu_time else "wall", "batches": {}}
    for batch in args.batches:
        x = tf.constant(rng.standard_normal((batch, layers[0][0]), dtype=np.float32))
        _check(stripped, masked, x)
        for name, twin in extra.items():  # the same outputs, epilogue unfused
            fused = stripped[name[:-len("_unfused")]]
            np.testing.assert_allclose(twin(x, training=False).numpy(),
                                       fused(x, training=False).numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=name)
        times = time_models({"dense": dense, **stripped, **extra}, x, rounds, calls, clock)
        med = {name: float(np.median(t)) for name, t in times.items()}
        result["batches"][str(batch)] = {
            "median_ms": med, "all_ms": times,
            "ratio": {g: med["dense"] / med[g] for g in [*stripped, *extra]}}
        _log(f"  batch {batch}: " + "  ".join(
            f"{n} {m:.2f} ms" for n, m in med.items()))
    if args.kernels:
        tile = 64 if _kernels.isa() != "generic" else 16
        result["kernels"] = kernel_rows(stripped, max(args.batches), 5 if args.quick else 9, tile,
                                        args.cpu_time)
    result["load_before"] = list(load0)
    result["load_after"] = list(os.getloadavg())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_wide_mlp.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def print_result(result):
    dims = "-".join([str(result["layers"][0][0])] + [str(n) for _, n, _ in result["layers"]])
    print(f"MLP {dims} at {result['sparsity']:.0%} sparsity, TensorFlow, {result['threads']} "
          f"thread(s); median ms of {result['clock']} per call (ratio dense / stripped); load "
          f"{result['load_before'][0]:.2f} -> "
          f"{result['load_after'][0]:.2f}")
    for batch, r in result["batches"].items():
        m = r["median_ms"]
        cells = "  ".join(f"{g} {m[g]:8.2f} ({r['ratio'][g]:.2f}x)" for g in r["ratio"])
        print(f"  batch {batch:>4s}: dense {m['dense']:8.2f}  {cells}")
    for row in result.get("kernels", []):
        two = (f"  2t {row['ms_2t']:7.2f} ms ({row['gflops_2t']:5.1f} GFLOP/s)"
               if "ms_2t" in row else "")
        print(f"  kernel {row['granularity']:12s} {row['shape'][0]}x{row['shape'][1]} "
              f"b{row['batch']}: 1t {row['ms_1t']:7.2f} ms ({row['gflops_1t']:5.1f} GFLOP/s, "
              f"panel {row['panel_gbs_1t']:5.1f} GB/s){two}")


def compare(args):
    """Alternate fresh runs of two source trees; every run's figures and their medians."""
    here = os.path.abspath(__file__)
    runs = {"A": [], "B": []}
    trees = {"A": os.path.abspath(args.compare[0]), "B": os.path.abspath(args.compare[1])}
    for i in range(args.runs):
        for label in ("A", "B"):
            out = os.path.join(args.out, f"{label}{i + 1}")
            env = {**os.environ, "PYTHONPATH": trees[label], "SPARSEKERAS_ALLOW_SOURCE_TREE": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
            cmd = [sys.executable, here, "--out", out, "--rounds", str(args.rounds),
                   "--calls", str(args.calls), "--batches", *map(str, args.batches)]
            if args.quick:
                cmd.append("--quick")
            if args.kernels:
                cmd.append("--kernels")
            if args.cpu_time:
                cmd.append("--cpu-time")
            if args.unfused:
                cmd.append("--unfused")
            _log(f"run {i + 1}/{args.runs} {label} ({trees[label]})")
            subprocess.run(cmd, check=True, env=env, cwd=args.out, stdout=subprocess.DEVNULL)
            with open(os.path.join(out, "bench_wide_mlp.json")) as f:
                r = json.load(f)
            if not r["machine"]["kernels_file"].startswith(trees[label]):
                raise RuntimeError(f"run {label} loaded {r['machine']['kernels_file']}, not a "
                                   f"build of {trees[label]}")
            runs[label].append(r)
    summary = {}
    print(f"A = {trees['A']}\nB = {trees['B']}\n{args.runs} alternating runs (A, B, A, B, ...)")
    for batch in map(str, args.batches):
        for g in GRANULARITIES:
            for label in ("A", "B"):
                ratios = [r["batches"][batch]["ratio"][g] for r in runs[label]]
                ms = [r["batches"][batch]["median_ms"][g] for r in runs[label]]
                summary[f"b{batch} {g} {label}"] = {"ratios": ratios, "ms": ms,
                                                    "median_ratio": float(np.median(ratios)),
                                                    "median_ms": float(np.median(ms))}
                print(f"  batch {batch:>4s} {g:12s} {label}: dense/stripped "
                      + ", ".join(f"{x:.2f}" for x in ratios)
                      + f"  median {np.median(ratios):.2f}x   (stripped ms "
                      + ", ".join(f"{x:.1f}" for x in ms) + ")")
            a = summary[f"b{batch} {g} A"]["median_ratio"]
            b = summary[f"b{batch} {g} B"]["median_ratio"]
            print(f"  batch {batch:>4s} {g:12s} B / A: {b / a:.2f}x")
    loads = [(r["load_before"][0], r["load_after"][0]) for lab in "AB" for r in runs[lab]]
    print(f"  1-minute loads during the runs: {min(min(lo) for lo in loads):.1f} - "
          f"{max(max(lo) for lo in loads):.1f}")
    with open(os.path.join(args.out, "bench_wide_mlp_compare.json"), "w") as f:
        json.dump({"trees": trees, "runs": runs, "summary": summary}, f, indent=2)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="a 4x narrower MLP, few rounds")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per model and round")
    parser.add_argument("--kernels", action="store_true", help="also time the products alone")
    parser.add_argument("--cpu-time", action="store_true",
                        help="1 thread everywhere and the process CPU time per call instead of "
                             "wall time: the work each model does, for a machine so loaded that "
                             "wall times mostly measure waiting")
    parser.add_argument("--unfused", action="store_true",
                        help="also time each stripped model with its bias and ReLU as separate "
                             "TensorFlow ops (not fused into the product)")
    parser.add_argument("--compare", nargs=2, metavar=("TREE_A", "TREE_B"))
    parser.add_argument("--runs", type=int, default=3, help="runs per tree with --compare")
    args = parser.parse_args(argv)
    for name in ("rounds", "calls", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; received {getattr(args, name)}")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive; received {args.batches}")
    os.makedirs(args.out, exist_ok=True)
    if args.compare:
        return compare(args)
    print_result(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
