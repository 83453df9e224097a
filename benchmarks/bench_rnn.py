"""Recurrent layers at 0.9 sparsity: does a sparse product pay inside an LSTM?

For an LSTM of `units` units on `(batch, timesteps, input_dim)` float32 input, times in the
same run (medians of repeated calls, each variant in a `tf.function`, forward and
forward+backward):

- `keras_lstm`: `keras.layers.LSTM` (TF backend, CPU: Keras' while-loop, the cell's input
  product per step) - the baseline.
- `sparse_lstm`: `sparsekeras.layers.SparseLSTM` with both kernels 90% pruned (what the layer
  does now: masked dense compute; should equal the baseline).
- `hoisted_dense`: a hand-written LSTM with the input projection of the whole sequence done
  as one dense product `(batch * timesteps, input_dim) @ kernel` before the loop, the
  recurrent product `h @ recurrent_kernel` per step (dense).
- `hoisted_sparse_in`: the same with the input projection as one sparse product
  (`sparsekeras.ops.dense_csc_matmul` on the kernel's CSC structure, as SparseDense does).
- `hoisted_sparse_both`: also the per-step recurrent product through `dense_csc_matmul`.
- `proj_dense` / `proj_sparse`: the input projection alone (dense matmul vs sparse product).

The backward of the sparse variants differentiates w.r.t. x and the CSC values (the layer
would also need a dense kernel gradient, one more GEMM, so these are lower bounds for it).

    .venv/bin/python benchmarks/bench_rnn.py [--repeats 15] [--json out.json]

Prints a table of medians (ms) and the ratios to `keras_lstm` and to `hoisted_dense`.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import log, setup_tf  # noqa: E402

tf = setup_tf()
import numpy as np  # noqa: E402
import keras  # noqa: E402

import sparsekeras  # noqa: E402
from sparsekeras import ops as sk_ops  # noqa: E402
from sparsekeras.layers._base import _structure_from_mask  # noqa: E402


def csc(kernel, mask):
    s = _structure_from_mask(mask)
    values = kernel.reshape(-1)[s["positions"]]
    return (tf.constant(s["indptr"]), tf.constant(s["indices"]), tf.Variable(values),
            tf.constant(list(kernel.shape), tf.int64))


def run(batch, steps, input_dim, units, sparsity, repeats):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, steps, input_dim)).astype(np.float32))
    lstm = keras.layers.LSTM(units)
    lstm.build(x.shape)
    sparse = sparsekeras.layers.SparseLSTM.from_keras(lstm)
    for t in sparse.pruning_targets():
        t.set_mask(rng.random(tuple(t.mask.shape)) >= sparsity)
    k = sparse.cell.kernel.numpy()
    u = sparse.cell.recurrent_kernel.numpy()
    b = tf.constant(sparse.cell.bias.numpy())
    km, um = k != 0, u != 0
    kv, uv = tf.Variable(k), tf.Variable(u)
    k_csc, u_csc = csc(k, km), csc(u, um)

    def cell_loop(z, recurrent):
        # z: (steps, batch, 4 units), input projection plus bias, time-major.
        h0 = tf.zeros((batch, units))

        def step(carry, z_t):
            h, c = carry
            g = z_t + recurrent(h)
            i, f, cc, o = tf.split(g, 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cc)
            h = tf.sigmoid(o) * tf.tanh(c)
            return h, c

        h, _ = tf.scan(step, z, initializer=(h0, h0))
        return h[-1]

    def dense_in(x2):
        return tf.matmul(x2, kv)

    def sparse_in(x2):
        return sk_ops.dense_csc_matmul(x2, *k_csc[:2], k_csc[2], k_csc[3])

    def hoisted(project, recurrent):
        def f(x):
            xt = tf.transpose(x, [1, 0, 2])
            z = tf.reshape(project(tf.reshape(xt, [-1, input_dim])), [steps, batch, 4 * units])
            return cell_loop(z + b, recurrent)
        return f

    dense_rec = lambda h: tf.matmul(h, uv)  # noqa: E731
    sparse_rec = lambda h: sk_ops.dense_csc_matmul(h, *u_csc[:2], u_csc[2], u_csc[3])  # noqa

    dense_mask = sparsekeras.layers.SparseLSTM.from_keras(lstm)   # all-ones masks

    variants = {
        "keras_lstm": (lambda x: lstm(x), lstm.trainable_variables),
        "sparse_lstm": (lambda x: sparse(x), sparse.trainable_variables),
        "sparse_lstm_ones": (lambda x: dense_mask(x), dense_mask.trainable_variables),
        "hoisted_dense": (hoisted(dense_in, dense_rec), [kv, uv]),
        "hoisted_sparse_in": (hoisted(sparse_in, dense_rec), [k_csc[2], uv]),
        "hoisted_sparse_both": (hoisted(sparse_in, sparse_rec), [k_csc[2], u_csc[2]]),
        "proj_dense": (lambda x: dense_in(tf.reshape(x, [-1, input_dim])), [kv]),
        "proj_sparse": (lambda x: sparse_in(tf.reshape(x, [-1, input_dim])), [k_csc[2]]),
    }
    # Same function, same answer (the hand-written LSTM is Keras' with the same weights).
    want = sparse(x).numpy()
    for name in ("hoisted_dense", "hoisted_sparse_in", "hoisted_sparse_both"):
        got = tf.function(variants[name][0])(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)

    def make_fwd_bwd(f, weights):
        # A closure, not default arguments: tf.function would make variables passed as
        # arguments into placeholders the layer does not read (no gradient).
        @tf.function
        def fwd_bwd(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(f(x))
            return tape.gradient(loss, [x] + list(weights))
        return fwd_bwd

    # Round robin: each repeat times every variant once, so that a loaded machine slows them
    # alike (the ratios are what this measures).
    calls = {}
    for name, (f, weights) in variants.items():
        fwd, fwd_bwd = tf.function(f), make_fwd_bwd(f, weights)
        missing = [i for i, g in enumerate(fwd_bwd(x)) if g is None]
        assert not missing, f"{name}: no gradient for inputs {missing}"
        calls[(name, "forward")] = lambda fwd=fwd: fwd(x).numpy()
        calls[(name, "train")] = lambda fwd_bwd=fwd_bwd: [g.numpy() for g in fwd_bwd(x)]
    times = {key: [] for key in calls}
    for key, call in calls.items():   # warm up
        call()
    for _ in range(repeats):
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - t0)
    out = {name: {mode: 1e3 * float(np.median(times[(name, mode)]))
                  for mode in ("forward", "train")} for name in variants}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    configs = [(32, 32, 256, 256), (32, 32, 512, 512)]
    results = []
    for batch, steps, input_dim, units in configs:
        log(f"batch={batch} steps={steps} input_dim={input_dim} units={units}")
        r = run(batch, steps, input_dim, units, args.sparsity, args.repeats)
        results.append({"batch": batch, "steps": steps, "input_dim": input_dim, "units": units,
                        "sparsity": args.sparsity, "ms": r})
        print(f"\nbatch={batch} steps={steps} input_dim={input_dim} units={units} "
              f"sparsity={args.sparsity} (median ms; ratio to keras_lstm, to hoisted_dense)")
        for mode in ("forward", "train"):
            base, hd = r["keras_lstm"][mode], r["hoisted_dense"][mode]
            for name, t in r.items():
                print(f"  {mode:8s} {name:20s} {t[mode]:9.2f}  x{t[mode] / base:5.2f}  "
                      f"x{t[mode] / hd:5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
