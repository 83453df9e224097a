"""Dynamic sparse training (RigL, SET): quality and wall-clock.

1. Quality (`--quality`): models trained from scratch for the same epochs and optimizer, dense
   and at 0.9 sparsity (ERK) with a static random mask (SET with drop_fraction=0), SET and
   RigL, several seeds (initial weights, masks, decisions; the same data split), on data
   shipped with scikit-learn: its digits, 1,000 training images with Gaussian pixel noise, the
   797 others for test. Tasks: "mlp", an MLP 784-300-100-10 on the digits upsampled to 28x28
   (784 features: digits, not MNIST); "cnn", a small CNN on the 8x8x1 digits. Writes
   DIR/bench_dst_quality.json, .md (the table) and .png. `--lr 0.001 0.003 0.01
   [--rescale-init tune]`: each variant first picks its own Adam learning rate (and
   rescale_init) on a validation split, then every seed trains with it.
2. Speed (`--skip-quality`): a whole training run of a 784-W-W-10 MLP (W=4096 by default) on
   random MNIST-shaped data, batch 256, Adam: dense `keras.layers.Dense` vs RigL at 0.9 (ERK;
   compacted from step 0; mask updates included) vs the static mask, in the same process;
   ratios of the fit's wall-clock, the median step, and each mask update's time. Writes
   DIR/bench_dst.json. Without either flag both run.

Usage: python benchmarks/bench_dst.py --out DIR [--quick] [--quality | --skip-quality]
       [--seeds N] [--tasks mlp cnn] [--modes dense static set rigl] [--epochs E]
       [--n-train N] [--noise S] [--q-update-every U] [--cnn-width M]
       [--lr LR [LR ...]] [--rescale-init off|on|tune] [--tune-seeds K] [--width W]
       [--steps S] [--update-every U]
The machine may be shared: the speed JSON records the CPU time other processes used during
each timed run and the load average.
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


def _mlp(sizes, sparse, seed, flat=False):
    """An MLP of layer `sizes`; with flat=True its input is an image, flattened to sizes[0]."""
    import keras
    from sparsekeras.layers import SparseDense

    keras.utils.set_random_seed(seed)
    layer = SparseDense if sparse else keras.layers.Dense
    if flat:
        side = int(round(np.sqrt(sizes[0])))
        inputs = keras.Input((side, side, 1))
        h = keras.layers.Flatten()(inputs)
    else:
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


def _callback(mode, sparsity, update_every, seed, data, rescale_init=False):
    from sparsekeras.callbacks import RigL, SET

    kw = dict(sparsity=sparsity, update_every=update_every, seed=seed,
              rescale_init=rescale_init)
    if mode == "dense":
        return []
    if mode == "static":
        return [SET(drop_fraction=0.0, **kw)]
    if mode == "set":
        return [SET(**kw)]
    return [RigL(data=data, batch_size=256, **kw)]


def _digits(size, n_train, noise, seed=0):
    """scikit-learn's digits (1,797 8x8 images, 16 grey levels) scaled to [0, 1], upsampled to
    size x size (bilinear) when size != 8, with Gaussian pixel noise of std `noise` added to
    train and test images (fixed seed), split stratified into `n_train` training images and
    the rest for test. Returns (x_tr, y_tr, x_te, y_te) with x of shape (n, size, size, 1)."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8)
    if size != 8:
        x = np.clip(zoom(x, (1, size / 8, size / 8), order=1), 0, 1).astype("float32")
    if noise:
        x = x + np.random.default_rng(seed).normal(0, noise, x.shape).astype("float32")
    x_tr, x_te, y_tr, y_te = train_test_split(x[..., None], y, train_size=n_train,
                                              random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _cnn(sparse, seed, width=32):
    """A small CNN for 8x8x1 digits: conv3x3(W) - conv3x3(2W) - maxpool - conv3x3(2W) -
    global average - dense(10)."""
    import keras
    from sparsekeras.layers import SparseConv2D, SparseDense

    keras.utils.set_random_seed(seed)
    conv = SparseConv2D if sparse else keras.layers.Conv2D
    dense = SparseDense if sparse else keras.layers.Dense
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        conv(width, 3, padding="same", activation="relu", name="c0"),
        conv(2 * width, 3, padding="same", activation="relu", name="c1"),
        keras.layers.MaxPooling2D(2),
        conv(2 * width, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(),
        dense(10, name="head"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


# name: (description, data, model builder, defaults). The defaults make sparsity matter:
# few training images with pixel noise (the clean 8x8 digits with 1,347 training images let a
# static random mask at 0.9 match dense: all variants within a point, last measured 0.97).
QUALITY_TASKS = {
    "mlp": ("MLP 784-300-100-10 on scikit-learn digits upsampled to 28x28 (784 features; "
            "digits, not MNIST)",
            dict(size=28), lambda sparse, seed: _mlp([784, 300, 100, 10], sparse, seed, flat=True),
            dict(n_train=1000, noise=0.6, epochs=30)),
    "cnn": ("CNN conv32-conv64-pool-conv64-gap-dense10 on scikit-learn digits (8x8x1)",
            dict(size=8), lambda sparse, seed, cnn_width=1: _cnn(sparse, seed,
                                                                 width=32 * cnn_width),
            dict(n_train=1000, noise=0.2, epochs=60)),
}


def _train_eval(build, mode, seed, lr, sparsity, update_every, train, test, epochs, batch,
                rescale_init=False):
    """One model trained from scratch; returns (test accuracy, last train accuracy,
    sparsity, seconds)."""
    model = build(mode != "dense", seed)
    model.optimizer.learning_rate.assign(lr)
    cbs = _callback(mode, sparsity, update_every, seed, train, rescale_init)
    t0 = time.perf_counter()
    hist = model.fit(*train, epochs=epochs, batch_size=batch, verbose=0, callbacks=cbs)
    secs = time.perf_counter() - t0
    acc = float(model.evaluate(*test, verbose=0)[1])
    return (acc, float(hist.history["accuracy"][-1]),
            cbs[0].overall_sparsity() if cbs else 0.0, secs)


def quality(seeds, sparsity, update_every, tasks=("mlp", "cnn"), batch=32,
            modes=("dense", "static", "set", "rigl"), cnn_width=1, first_seed=0,
            lrs=(1e-3,), rescale_inits=(False,), tune_seeds=1, **overrides):
    """Each task x mode x seed trained from scratch for the same epochs; test accuracy.
    `overrides` (n_train, noise, epochs; None: the task's default) apply to every task;
    `cnn_width` multiplies the CNN's filters (1: 32-64-64); the seeds are first_seed,
    first_seed + 1, ... (to split one grid across runs).

    Hyperparameters: the Adam learning rate (`lrs`) and, for the sparse modes, the
    callback's `rescale_init` (`rescale_inits`). With one setting of each, every mode trains
    with it. With several, each mode picks its own first: `tune_seeds` runs per setting
    (seeds first_seed, ...) on 80% of the training images, scored on the other 20% (a
    validation split; the test images are not looked at), the best mean kept (ties: the
    first in the grid);
    then every seed trains on all the training images with it. Each variant is compared at
    its own best setting, found the same way for all."""
    from sklearn.model_selection import train_test_split

    out = {}
    for task in tasks:
        desc, data_kw, build, defaults = QUALITY_TASKS[task]
        if task == "cnn" and cnn_width != 1:
            w = 32 * cnn_width
            desc = (f"CNN conv{w}-conv{2 * w}-pool-conv{2 * w}-gap-dense10 ({cnn_width}x the "
                    "filters) on scikit-learn digits (8x8x1)")
            build = (lambda b, m: lambda sparse, seed: b(sparse, seed, cnn_width=m))(build,
                                                                                    cnn_width)
        cfg = dict(defaults, **{k: v for k, v in overrides.items() if v is not None})
        n_train, noise, epochs = cfg["n_train"], cfg["noise"], cfg["epochs"]
        x_tr, y_tr, x_te, y_te = _digits(n_train=n_train, noise=noise, **data_kw)
        log(f"quality {task}: {desc}; {len(x_tr)} train / {len(x_te)} test, noise std {noise}, "
            f"{epochs} epochs, batch {batch}, learning rates {list(lrs)}, rescale_init "
            f"{list(rescale_inits)}")
        common = dict(sparsity=sparsity, update_every=update_every, epochs=epochs, batch=batch)
        tuning, chosen = {}, {}
        for mode in modes:
            grid = [(float(lr), bool(r)) for lr in sorted(lrs)
                    for r in (rescale_inits if mode != "dense" else rescale_inits[:1])]
            if len(grid) == 1:
                chosen[mode] = grid[0]
                continue
            x_fit, x_val, y_fit, y_val = train_test_split(x_tr, y_tr, test_size=0.2,
                                                          random_state=0, stratify=y_tr)
            scores = {}
            for lr, r in grid:
                scores[lr, r] = float(np.mean([
                    _train_eval(build, mode, first_seed + k, lr, rescale_init=r,
                                train=(x_fit, y_fit), test=(x_val, y_val), **common)[0]
                    for k in range(tune_seeds)]))
                log(f"  {task} {mode:6s} tuning: learning rate {lr:g}, rescale_init {r}: "
                    f"validation accuracy {scores[lr, r]:.4f}")
            chosen[mode] = max(grid, key=lambda g: scores[g])
            tuning[mode] = [dict(learning_rate=lr, rescale_init=r, validation_accuracy=v)
                            for (lr, r), v in scores.items()]
        rows = []
        for mode in modes:
            accs, train_accs, sps, secs = [], [], [], []
            for seed in range(first_seed, first_seed + seeds):
                lr, rescale = chosen[mode]
                acc, tr, sp, sec = _train_eval(build, mode, seed, lr, rescale_init=rescale,
                                               train=(x_tr, y_tr), test=(x_te, y_te), **common)
                accs.append(acc)
                train_accs.append(tr)
                sps.append(sp)
                secs.append(sec)
                log(f"  {task} {mode:6s} seed {seed}: test accuracy {acc:.4f} (learning rate "
                    f"{lr:g}, rescale_init {rescale}, last epoch's train accuracy {tr:.3f}, sparsity "
                    f"{sp:.4f}, {sec:.1f} s)")
            rows.append(dict(mode=mode, seeds=list(range(first_seed, first_seed + seeds)),
                             learning_rate=chosen[mode][0],
                             rescale_init=chosen[mode][1] if mode != "dense" else None,
                             accuracies=accs,
                             mean=float(np.mean(accs)), std=float(np.std(accs)),
                             train_accuracies=train_accs, sparsity=sps, seconds=secs,
                             **(dict(tuning=tuning[mode]) if mode in tuning else {})))
        out[task] = dict(description=desc, n_train=len(x_tr), n_test=len(x_te), noise=noise,
                         epochs=epochs, batch=batch, update_every=update_every,
                         learning_rates=[float(v) for v in lrs],
                         rescale_inits=[bool(v) for v in rescale_inits],
                         tune_seeds=tune_seeds,
                         modes=rows, **(dict(cnn_width=cnn_width) if task == "cnn" else {}))
    return out


MODE_NAMES = {"dense": "dense", "static": "static random mask (ERK)", "set": "SET",
              "rigl": "RigL"}


MODE_COLORS = {"dense": "#888888", "static": "#6a9fd4", "set": "#e3a33b", "rigl": "#3b9e5a"}


def quality_table(q):
    """Markdown table: one row per (task, mode), one column per seed, mean +- std."""
    lines = []
    for task, res in q.items():
        n = len(res["modes"][0]["accuracies"])
        seeds = res["modes"][0].get("seeds", range(n))
        lines.append(f"**{res['description']}**: {res['n_train']} train / {res['n_test']} test "
                     f"images, noise std {res['noise']}, {res['epochs']} epochs, batch "
                     f"{res['batch']}, update_every {res['update_every']}")
        lines.append("")
        lines.append("| | " + " | ".join(f"seed {i}" for i in seeds) +
                     " | mean ± std | sparsity | learning rate |")
        lines.append("|---" * (n + 4) + "|")
        for row in res["modes"]:
            lines.append(f"| {MODE_NAMES[row['mode']]} | "
                         + " | ".join(f"{a:.3f}" for a in row["accuracies"])
                         + f" | {row['mean']:.3f} ± {row['std']:.3f} | "
                         + f"{np.mean(row['sparsity']):.3f} | "
                         + f"{row.get('learning_rate', 1e-3):g}"
                         + (" (rescale_init)" if row.get("rescale_init") else "") + " |")
        lines.append("")
    return "\n".join(lines)


def quality_plot(q, path):
    """Bar chart of mean test accuracy per mode and task, with each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(q), figsize=(5 * len(q), 3.6), squeeze=False)
    for ax, (task, res) in zip(axes[0], q.items()):
        modes = res["modes"]
        xs = np.arange(len(modes))
        ax.bar(xs, [r["mean"] for r in modes], yerr=[r["std"] for r in modes],
               color=[MODE_COLORS[r["mode"]] for r in modes], capsize=4)
        for x, r in zip(xs, modes):
            ax.plot([x] * len(r["accuracies"]), r["accuracies"], "k.", ms=5)
        lo = min(min(r["accuracies"]) for r in modes)
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_xticks(xs, [MODE_NAMES[r["mode"]].replace(" random mask (ERK)", "\nmask")
                           for r in modes])
        ax.set_ylabel("test accuracy")
        width = f" {res['cnn_width']}x" if res.get("cnn_width", 1) != 1 else ""
        ax.set_title(f"{task}{width}: 0.9 sparsity, {res['n_train']} train", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def print_speed(s, args):
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for bench_dst*.json (and the PNG)")
    p.add_argument("--quick", action="store_true", help="tiny grid (the smoke test)")
    p.add_argument("--quality", action="store_true", help="the quality runs only")
    p.add_argument("--skip-quality", action="store_true", help="the speed run only")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds of the quality runs: first-seed .. first-seed + seeds - 1")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every quality run (default: the task's)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training images of the quality runs, the rest of the 1,797 are test "
                        "(default: the task's)")
    p.add_argument("--noise", type=float, default=None,
                   help="std of the pixel noise added (default: the task's)")
    p.add_argument("--tasks", nargs="+", default=["mlp", "cnn"], choices=sorted(QUALITY_TASKS))
    p.add_argument("--modes", nargs="+", default=["dense", "static", "set", "rigl"],
                   choices=["dense", "static", "set", "rigl"], help="variants of the quality runs")
    p.add_argument("--q-update-every", type=int, default=25,
                   help="RigL/SET update_every of the quality runs")
    p.add_argument("--cnn-width", type=int, default=1,
                   help="multiplier of the quality CNN's filters (1: 32-64-64; 2: 64-128-128)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3],
                   help="Adam learning rate(s) of the quality runs; several: each mode picks "
                        "its best on a validation split first (see quality())")
    p.add_argument("--rescale-init", choices=["off", "on", "tune"], default="off",
                   help="the sparse modes' rescale_init: off (the default), on, or tune "
                        "(chosen with the learning rate on the validation split)")
    p.add_argument("--tune-seeds", type=int, default=1,
                   help="runs (seeds) per setting when choosing among several (mean scored)")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--steps", type=int, default=240, help="training steps of the speed run")
    p.add_argument("--update-every", type=int, default=60,
                   help="RigL's update_every in the speed run (default: updates at steps 60 and "
                        "120, before 75%% of 240)")
    args = p.parse_args()
    if args.cnn_width < 1:
        p.error(f"--cnn-width must be a positive integer, got {args.cnn_width}")
    if args.quick:
        args.seeds, args.epochs, args.width, args.steps, args.update_every = 1, 2, 256, 8, 3
        args.q_update_every, args.n_train = 5, 200
    os.makedirs(args.out, exist_ok=True)
    setup_tf()
    run_quality = not args.skip_quality
    run_speed = not args.quality
    q = {}
    if run_quality:
        q = quality(args.seeds, 0.9, args.q_update_every, tasks=args.tasks, modes=args.modes,
                    cnn_width=args.cnn_width, first_seed=args.first_seed, lrs=args.lr,
                    rescale_inits={"off": (False,), "on": (True,),
                                   "tune": (False, True)}[args.rescale_init],
                    tune_seeds=args.tune_seeds,
                    n_train=args.n_train,
                    noise=args.noise, epochs=args.epochs)
        with open(os.path.join(args.out, "bench_dst_quality.json"), "w") as f:
            json.dump(dict(cpu=cpu_model(), args=vars(args), quality=q), f, indent=1)
        table = quality_table(q)
        with open(os.path.join(args.out, "bench_dst_quality.md"), "w") as f:
            f.write(table + "\n")
        try:
            quality_plot(q, os.path.join(args.out, "bench_dst_quality.png"))
        except ImportError:
            log("(matplotlib is not installed: no plot)")
        print(table)
    if run_speed:
        log(f"speed: MLP 784-{args.width}-{args.width}-10 at 0.9, batch 256, {args.steps} steps")
        s = speed(args.width, args.steps, 0.9, update_every=args.update_every, batch=256)
        with open(os.path.join(args.out, "bench_dst.json"), "w") as f:
            json.dump(dict(cpu=cpu_model(), args=vars(args), speed=s,
                           load=os.getloadavg()), f, indent=1)
        print_speed(s, args)


if __name__ == "__main__":
    main()
