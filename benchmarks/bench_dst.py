"""Dynamic sparse training (RigL, SET): quality and wall-clock.

1. Quality: scikit-learn's digits (1,797 8x8 images, shipped with scikit-learn), an MLP
   64-256-256-10 trained from scratch for the same epochs: dense; a static random mask at 0.9
   (ERK, no update: SET with drop_fraction=0); SET at 0.9; RigL at 0.9. Test accuracy over
   several seeds (same data split, same initial weights per seed).
2. Speed: a whole training run of a 784-W-W-10 MLP (W=4096 by default) on random MNIST-shaped
   data, batch 256, Adam: dense `keras.layers.Dense` vs RigL at 0.9 (ERK; compacted from step
   0; mask updates included) vs the static mask, in the same process; ratios of the fit's
   wall-clock, the median step, and each mask update's time.

Usage: python benchmarks/bench_dst.py --out DIR [--quick] [--seeds N] [--epochs E] [--width W]
       [--steps S] [--update-every U] [--skip-quality]
Writes DIR/bench_dst.json and prints a table. The machine may be shared: the JSON records the
CPU time other processes used during each timed run.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import busy_cpu_s, cpu_model, log, setup_tf  # noqa: E402


def _step_timer():
    """A Keras callback recording each batch's wall-clock."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def _mlp(sizes, sparse, seed):
    import keras
    from sparsekeras.layers import SparseDense

    keras.utils.set_random_seed(seed)
    layer = SparseDense if sparse else keras.layers.Dense
    inputs = keras.Input((sizes[0],))
    h = inputs
    for i, units in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        h = layer(units, activation=None if last else "relu", name=f"d{i}")(h)
    model = keras.Model(inputs, h)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _callback(mode, sparsity, update_every, seed, data):
    from sparsekeras.callbacks import RigL, SET

    if mode == "dense":
        return []
    if mode == "static":
        return [SET(sparsity=sparsity, drop_fraction=0.0, update_every=update_every, seed=seed)]
    if mode == "set":
        return [SET(sparsity=sparsity, update_every=update_every, seed=seed)]
    return [RigL(sparsity=sparsity, update_every=update_every, seed=seed, data=data,
                 batch_size=256)]


def quality(seeds, epochs, sparsity, update_every):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    rows = []
    for mode in ("dense", "static", "set", "rigl"):
        accs = []
        for seed in range(seeds):
            model = _mlp([64, 256, 256, 10], sparse=mode != "dense", seed=seed)
            cbs = _callback(mode, sparsity, update_every, seed, (x_tr, y_tr))
            model.fit(x_tr, y_tr, epochs=epochs, batch_size=32, verbose=0, callbacks=cbs)
            accs.append(float(model.evaluate(x_te, y_te, verbose=0)[1]))
            sp = cbs[0].overall_sparsity() if cbs else 0.0
            log(f"  digits {mode:6s} seed {seed}: test accuracy {accs[-1]:.4f} "
                f"(sparsity {sp:.3f})")
        rows.append(dict(mode=mode, accuracies=accs, mean=float(np.mean(accs)),
                         std=float(np.std(accs)), sparsity=sp))
    return rows


def speed(width, steps, sparsity, update_every, batch):
    rng = np.random.default_rng(0)
    n = steps * batch
    x = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    out = []
    for mode in ("dense", "static", "rigl"):
        model = _mlp([784, width, width, 10], sparse=mode != "dense", seed=0)
        # No warm-up: the whole fit is timed, tracing included (RigL retraces the step
        # after each update that recompacts: part of its cost).
        cbs = _callback(mode, sparsity, update_every, 0, (x, y))
        timer = _step_timer()
        b0, o0 = busy_cpu_s()
        t0 = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=batch, shuffle=False, verbose=0,
                  callbacks=cbs + [timer])
        wall = time.perf_counter() - t0
        b1, o1 = busy_cpu_s()
        updates = cbs[0].updates if cbs else []
        row = dict(mode=mode, wall_s=wall, steps=len(timer.times),
                   median_step_ms=float(np.median(timer.times[2:])) * 1e3,
                   first_step_s=timer.times[0],
                   updates=[dict(step=u["step"], moved=u["moved"], seconds=u["seconds"])
                            for u in updates],
                   other_cpu_s=(b1 - b0) - (o1 - o0),
                   sparsity=cbs[0].overall_sparsity() if cbs else 0.0)
        log(f"  {mode:6s} W={width}: fit {wall:.2f} s, median step {row['median_step_ms']:.1f} ms,"
            f" {len(updates)} updates ({sum(u['seconds'] for u in updates):.2f} s), other "
            f"processes {row['other_cpu_s']:.1f} CPU-s")
        out.append(row)
    dense = out[0]
    for row in out[1:]:
        row["wall_ratio_vs_dense"] = row["wall_s"] / dense["wall_s"]
        row["step_ratio_vs_dense"] = row["median_step_ms"] / dense["median_step_ms"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="tiny grid (the smoke test)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--steps", type=int, default=240, help="training steps of the speed run")
    p.add_argument("--update-every", type=int, default=60,
                   help="RigL's update_every in the speed run (default: updates at steps 60 and 120, before 75%% of 240)")
    p.add_argument("--skip-quality", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.width, args.steps, args.update_every = 1, 2, 256, 8, 3
    os.makedirs(args.out, exist_ok=True)
    setup_tf()
    log(f"quality: digits MLP 64-256-256-10 at 0.9, {args.epochs} epochs, {args.seeds} seeds")
    q = ([] if args.skip_quality else
         quality(args.seeds, args.epochs, 0.9, update_every=25 if not args.quick else 10))
    log(f"speed: MLP 784-{args.width}-{args.width}-10 at 0.9, batch 256, {args.steps} steps")
    s = speed(args.width, args.steps, 0.9, update_every=args.update_every, batch=256)
    result = dict(cpu=cpu_model(), args=vars(args), quality=q, speed=s)
    with open(os.path.join(args.out, "bench_dst.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("digits MLP 64-256-256-10, test accuracy (mean +- std over seeds):")
    for row in q:
        print(f"  {row['mode']:6s} {row['mean']:.4f} +- {row['std']:.4f}  "
              f"(sparsity {row['sparsity']:.3f}) {row['accuracies']}")
    print(f"MLP 784-{args.width}-{args.width}-10, batch 256, {args.steps} steps, one fit each:")
    for row in s:
        print(f"  {row['mode']:6s} fit {row['wall_s']:.2f} s"
              + (f" ({row['wall_ratio_vs_dense']:.2f}x dense)" if "wall_ratio_vs_dense" in row
                 else "")
              + f", median step {row['median_step_ms']:.1f} ms"
              + (f" ({row['step_ratio_vs_dense']:.2f}x)" if "step_ratio_vs_dense" in row else "")
              + (f", updates {[round(u['seconds'], 3) for u in row['updates']]} s"
                 if row["updates"] else "")
              + f", other processes {row['other_cpu_s']:.1f} CPU-s")


if __name__ == "__main__":
    main()
