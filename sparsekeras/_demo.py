"""The main job: prune a network to 90% during `model.fit` and compare it with the dense one.

Data: scikit-learn's handwritten digits (1,797 8x8 images, shipped with scikit-learn; nothing is
downloaded). A 64-2048-2048-10 MLP is trained dense, then converted with `sparsekeras.sparsify`
and pruned gradually (PolynomialDecay to 90%) by the `GradualPruning` callback during `fit`;
`sparsekeras.strip` then gives a compact model whose sparse layers hold CSC arrays only.
"""
import os
import tempfile
import time

import numpy as np


def _load_digits(seed):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].astype(np.int32)
    n_test = len(x) // 5
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


class _History:
    """Records (step, sparsity, test accuracy) at every epoch end of the pruning run."""

    def __init__(self, x_test, y_test):
        import keras

        outer = self

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                step = int(self.model.optimizer.iterations.numpy())
                _, acc = self.model.evaluate(x_test, y_test, verbose=0)
                outer.rows.append((step, float(logs.get("sparsity", 0.0)), float(acc)))

        self.rows = []
        self.callback = Recorder()


def _step_timer():
    """A Keras callback recording (optimizer step, seconds) of every training batch."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._step = int(self.model.optimizer.iterations.numpy())
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append((self._step, time.perf_counter() - self._t0))

    return StepTimer()


def _median_step_ms(times, lo, hi):
    """Median ms of the recorded steps in [lo, hi) (None if there are none)."""
    picked = [t for step, t in times if lo <= step < hi]
    return float(np.median(picked)) * 1e3 if picked else None


def run(hidden=2048, epochs_dense=15, epochs_prune=25, target=0.9, batch_size=64, repeats=20,
        out_dir=".", seed=0, verbose=1, block=1):
    """Train dense, prune to `target` during fit, strip; print the comparison; return a dict.
    block > 1 prunes in (1, block) blocks (strip then stores the layers in block-CSC form)."""
    import keras
    import tensorflow as tf

    import sparsekeras
    from sparsekeras import callbacks, schedules

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = _load_digits(seed)
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))

    dense = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hidden, activation="relu", name="hidden1"),
        keras.layers.Dense(hidden, activation="relu", name="hidden2"),
        keras.layers.Dense(10, name="logits"),
    ])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    print(f"1/3  training the dense {64}-{hidden}-{hidden}-10 network on digits "
          f"({len(x_train)} train / {len(x_test)} test images), {epochs_dense} epochs")
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_dense, verbose=verbose)
    _, acc_dense = dense.evaluate(x_test, y_test, verbose=0)

    sparse = sparsekeras.sparsify(dense, layer_names=["hidden1", "hidden2"])
    sparse.compile(optimizer=keras.optimizers.Adam(5e-4), loss=loss, metrics=["accuracy"])
    end_step = int(0.7 * epochs_prune * steps_per_epoch)
    schedule = schedules.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target,
                                         begin_step=0, end_step=end_step,
                                         frequency=max(1, steps_per_epoch // 2))
    history = _History(x_test, y_test)
    granularity = dict(granularity="block", block_shape=(1, block)) if block > 1 else {}
    print(f"\n2/3  pruning to {target:.0%} during fit"
          f"{f' in (1, {block}) blocks' if block > 1 else ''}: PolynomialDecay over {end_step} "
          f"steps, then fine-tuning (the pruned layers compacted: nonzeros only); "
          f"{epochs_prune} epochs")
    timer = _step_timer()
    sparse.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_prune, verbose=verbose,
               callbacks=[callbacks.GradualPruning(schedule, log_layers=False, **granularity),
                          history.callback, timer])
    compacted = [layer.name for layer in sparse.layers if getattr(layer, "compacted", False)]
    print(f"     compacted after step {end_step}: {', '.join(compacted) or 'none'}")
    _, acc_sparse = sparse.evaluate(x_test, y_test, verbose=0)
    # Fair baseline: the dense network trained for the same total number of epochs.
    dense.compile(optimizer=keras.optimizers.Adam(5e-4), loss=loss, metrics=["accuracy"])
    print(f"\n     baseline: the dense network trained {epochs_prune} more epochs too")
    dense_timer = _step_timer()
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_prune, verbose=0,
              callbacks=[dense_timer])
    _, acc_dense = dense.evaluate(x_test, y_test, verbose=0)
    # Steady-state steps (a few steps after each retrace: the first epoch, compaction).
    step_ms = {"dense": _median_step_ms(dense_timer.times, steps_per_epoch, 1 << 62),
               "pruning": _median_step_ms(timer.times, steps_per_epoch, end_step),
               "compacted": _median_step_ms(timer.times, end_step + 5, 1 << 62)}
    compact = sparsekeras.strip(sparse)
    compact_logits = compact.predict(x_test, verbose=0, batch_size=256)
    acc_compact = float(np.mean(np.argmax(compact_logits, axis=1) == y_test))

    print("\n3/3  measuring size and latency")
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "dense.keras")
        compact_path = os.path.join(tmp, "stripped.keras")
        # Weights only on both sides (no optimizer state): an uncompiled copy of the dense model.
        from sparsekeras._convert import uncompiled

        dense_copy = uncompiled(keras.models.clone_model(dense))
        dense_copy.set_weights(dense.get_weights())
        dense_copy.save(dense_path)
        compact.save(compact_path)
        size_dense = os.path.getsize(dense_path)
        size_compact = os.path.getsize(compact_path)
        reloaded = keras.models.load_model(compact_path)
        reload_ok = np.allclose(reloaded.predict(x_test[:64], verbose=0), compact_logits[:64],
                                rtol=1e-5, atol=1e-5)

    def latency(model, batch):
        x = tf.constant(np.resize(x_test, (batch, 64)))
        fn = tf.function(lambda t: model(t, training=False))
        return _median_ms(lambda: fn(x).numpy(), repeats)

    lat = {(name, b): latency(m, b) for name, m in (("dense", dense), ("sparse", compact))
           for b in (1, 256)}
    params_dense = dense.count_params()
    params_compact = int(sum(np.prod(w.shape) for w in compact.trainable_weights))
    layer_rows = [(layer.name, layer.sparsity) for layer in sparse.layers
                  if isinstance(layer, sparsekeras.layers.SparseDense)]

    print("\n" + "=" * 64)
    print(f"{'':28}{'dense':>14}{'pruned + stripped':>22}")
    print(f"{'test accuracy':28}{acc_dense:>14.4f}{acc_compact:>22.4f}")
    print(f"{'parameters (stored values)':28}{params_dense:>14,d}{params_compact:>22,d}")
    print(f"{'.keras file size':28}{size_dense / 1e6:>12.2f}MB{size_compact / 1e6:>20.2f}MB")
    for b in (1, 256):
        print(f"{f'latency, batch {b}':28}{lat[('dense', b)]:>12.3f}ms"
              f"{lat[('sparse', b)]:>20.3f}ms  ({lat[('dense', b)] / lat[('sparse', b)]:.1f}x)")
    if None not in step_ms.values():
        print(f"{f'training step, batch {batch_size}':28}{step_ms['dense']:>12.2f}ms"
              f"{step_ms['compacted']:>20.2f}ms  ({step_ms['dense'] / step_ms['compacted']:.1f}x)"
              f"\n{'  (while pruning)':28}{'':14}{step_ms['pruning']:>20.2f}ms  (dense kernels"
              f" + masks)")
    print("-" * 64)
    for name, s in layer_rows:
        print(f"sparsity of {name:16}{s:>14.3f}")
    print(f"stripped model reloads from .keras with the same outputs: {reload_ok}")
    print("=" * 64)

    plot_path = _plot(history.rows, acc_dense, target, out_dir,
                      compacted_at=end_step + 1 if compacted else None)
    if plot_path:
        print(f"plot of sparsity and accuracy over the steps: {plot_path}")
    if block == 1:
        print("faster sparse layers: prune in (1, 8) blocks (`sparsekeras demo --block 8`; "
              "docs/pruning-guide.md)")
    return dict(acc_dense=float(acc_dense), acc_pruned=float(acc_sparse),
                acc_stripped=acc_compact, sparsity=layer_rows, size_dense=size_dense,
                size_stripped=size_compact, latency_ms={f"{k[0]}_b{k[1]}": v for k, v in lat.items()},
                reload_ok=bool(reload_ok), history=history.rows, plot=plot_path,
                step_ms=step_ms)


def _plot(rows, acc_dense, target, out_dir, compacted_at=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return None
    steps = [r[0] for r in rows]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(steps, [r[1] for r in rows], "o-", color="tab:blue", label="sparsity")
    ax1.axhline(target, color="tab:blue", ls=":", lw=1)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("sparsity", color="tab:blue")
    ax1.set_ylim(0, 1)
    ax2 = ax1.twinx()
    ax2.plot(steps, [r[2] for r in rows], "s-", color="tab:red", label="test accuracy (pruned)")
    ax2.axhline(acc_dense, color="tab:red", ls="--", lw=1, label="test accuracy (dense)")
    ax2.set_ylabel("test accuracy", color="tab:red")
    ax2.set_ylim(min([r[2] for r in rows] + [acc_dense]) - 0.02, 1.0)
    if compacted_at is not None:  # the schedule's end: the layers train their nonzeros only
        ax1.axvline(compacted_at, color="gray", ls="-.", lw=1)
        ax1.text(compacted_at, 0.25, " layers compacted:\n nonzeros only", color="gray",
                 fontsize=8)
    ax2.legend(loc="lower right")
    ax1.set_title("Gradual pruning of a 64-2048-2048-10 MLP on digits")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(out_dir, "sparsekeras_demo.png"))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cnn_data(seed):
    (x_train, y_train), (x_test, y_test) = _load_digits(seed)
    return (x_train.reshape(-1, 8, 8, 1), y_train), (x_test.reshape(-1, 8, 8, 1), y_test)


def build_digits_cnn(width=64):
    """The demo's small CNN for 8x8 digits: three 3x3 convolutions (one depthwise-separable
    block) and a linear classifier."""
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(width // 2, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
        keras.layers.Conv2D(2 * width, 1, activation="relu", name="pointwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="logits"),
    ])


def run_cnn(width=64, epochs_dense=20, epochs_prune=30, target=0.8, batch_size=64, repeats=20,
            seed=0, verbose=1):
    """Train a small CNN on digits, prune its convolutions to `target` during fit, strip it,
    and print accuracy, size and latency against the dense CNN trained as long."""
    import keras
    import tensorflow as tf

    import sparsekeras
    from sparsekeras import callbacks, schedules
    from sparsekeras._convert import uncompiled

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = _cnn_data(seed)
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense = build_digits_cnn(width)
    dense.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"])
    print(f"1/3  training the dense CNN on 8x8 digits ({dense.count_params():,d} parameters), "
          f"{epochs_dense} epochs")
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_dense, verbose=verbose)

    conv_names = ["conv1", "conv2", "depthwise", "pointwise"]
    sparse = sparsekeras.sparsify(dense, layer_names=conv_names)
    sparse.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    end_step = int(0.6 * epochs_prune * steps_per_epoch)
    schedule = schedules.PolynomialDecay(0.0, target, begin_step=0, end_step=end_step,
                                         frequency=max(1, steps_per_epoch // 2))
    print(f"\n2/3  pruning every convolution to {target:.0%} during fit ({end_step} steps), "
          f"then fine-tuning; {epochs_prune} epochs")
    sparse.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_prune, verbose=verbose,
               callbacks=[callbacks.GradualPruning(schedule, log_layers=False)])
    _, acc_pruned = sparse.evaluate(x_test, y_test, verbose=0)
    dense.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=epochs_prune, verbose=0)
    _, acc_dense = dense.evaluate(x_test, y_test, verbose=0)
    compact = sparsekeras.strip(sparse)
    acc_compact = float(np.mean(np.argmax(compact.predict(x_test, verbose=0), axis=1) == y_test))

    print("\n3/3  measuring size and latency")
    with tempfile.TemporaryDirectory() as tmp:
        dense_copy = uncompiled(keras.models.clone_model(dense))
        dense_copy.set_weights(dense.get_weights())
        dense_copy.save(os.path.join(tmp, "dense.keras"))
        compact.save(os.path.join(tmp, "stripped.keras"))
        size_dense = os.path.getsize(os.path.join(tmp, "dense.keras"))
        size_compact = os.path.getsize(os.path.join(tmp, "stripped.keras"))

    def latency(model, batch):
        x = tf.constant(np.resize(x_test, (batch, 8, 8, 1)))
        fn = tf.function(lambda t: model(t, training=False))
        return _median_ms(lambda: fn(x).numpy(), repeats)

    lat = {(name, b): latency(m, b) for name, m in (("dense", dense), ("sparse", compact))
           for b in (1, 256)}
    sparsity = {name: sparse.get_layer(name).sparsity for name in conv_names}
    print("\n" + "=" * 64)
    print(f"{'':28}{'dense CNN':>14}{'pruned + stripped':>22}")
    print(f"{'test accuracy':28}{acc_dense:>14.4f}{acc_compact:>22.4f}")
    print(f"{'.keras file size':28}{size_dense / 1e3:>12.1f}kB{size_compact / 1e3:>20.1f}kB")
    for b in (1, 256):
        print(f"{f'latency, batch {b}':28}{lat[('dense', b)]:>12.3f}ms{lat[('sparse', b)]:>20.3f}ms")
    print("-" * 64)
    for name, s in sparsity.items():
        print(f"sparsity of {name:16}{s:>14.3f}")
    print(f"accuracy change: {100 * (acc_compact - acc_dense):+.2f} points")
    print("=" * 64)
    return dict(acc_dense=float(acc_dense), acc_pruned=float(acc_pruned), acc_stripped=acc_compact,
                sparsity=sparsity, size_dense=size_dense, size_stripped=size_compact,
                latency_ms={f"{k[0]}_b{k[1]}": v for k, v in lat.items()})


class _EpochRecorder:
    """Records (optimizer step, sparsity, test accuracy) at every epoch end of a fit."""

    def __init__(self, x_test, y_test, sparsity_of=None):
        import keras

        outer = self

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                step = int(self.model.optimizer.iterations.numpy())
                _, acc = self.model.evaluate(x_test, y_test, verbose=0)
                sp = sparsity_of() if sparsity_of is not None else 0.0
                outer.rows.append((step, float(sp), float(acc)))

        self.rows = []
        self.callback = Recorder()


def run_rigl(hidden=2048, epochs=20, target=0.9, batch_size=64, update_every=50, out_dir=".",
             seed=0, verbose=1, block=1):
    """Train a 64-hidden-hidden-10 MLP on digits sparse from the first step with RigL (ERK at
    `target`, compacted: the kept weights only) and the same network dense for the same epochs
    from the same initial weights; print accuracy, sparsity and training time; plot both.

    Args:
        hidden: hidden layer width.
        epochs: epochs of both fits.
        target: RigL's overall sparsity.
        batch_size: batch size of both fits.
        update_every: RigL's steps between mask updates.
        out_dir: folder for the plot `sparsekeras_demo_rigl.png`.
        seed: seed of the data split, the initial weights and RigL's decisions.
        verbose: Keras' fit verbosity.
        block: > 1 moves whole (1, block) blocks (the head, not tiled, stays dense).

    Returns:
        dict of the figures printed (accuracies, sparsity, seconds, per-epoch rows, plot path).
    """
    import keras

    import sparsekeras
    from sparsekeras.layers import SparseDense

    (x_train, y_train), (x_test, y_test) = _load_digits(seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def build(layer):
        keras.utils.set_random_seed(seed)  # the same initial weights for both
        model = keras.Sequential([
            keras.Input((64,)),
            layer(hidden, activation="relu", name="hidden1"),
            layer(hidden, activation="relu", name="hidden2"),
            layer(10, name="logits"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        return model

    dense = build(keras.layers.Dense)
    print(f"1/3  training the dense 64-{hidden}-{hidden}-10 network on digits "
          f"({len(x_train)} train / {len(x_test)} test images), {epochs} epochs")
    dense_rows = _EpochRecorder(x_test, y_test)
    dense_timer = _step_timer()
    t0 = time.perf_counter()
    dense.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
              callbacks=[dense_rows.callback, dense_timer])
    dense_s = time.perf_counter() - t0

    sparse = build(SparseDense)
    granularity = (dict(granularity="block", block_shape=(1, block), exclude=["logits"])
                   if block > 1 else {})
    rigl = sparsekeras.callbacks.RigL(sparsity=target, update_every=update_every, seed=seed,
                                      data=(x_train, y_train), **granularity)
    print(f"\n2/3  training the same network sparse from the first step with RigL: "
          f"{target:.0%} sparse (ERK){f' in (1, {block}) blocks' if block > 1 else ''}, "
          f"compacted (the kept weights only), weights moved every {update_every} steps; "
          f"{epochs} epochs")
    sparse_rows = _EpochRecorder(x_test, y_test, rigl.overall_sparsity)
    timer = _step_timer()
    t0 = time.perf_counter()
    sparse.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
               callbacks=[rigl, sparse_rows.callback, timer])
    sparse_s = time.perf_counter() - t0
    _, acc_dense = dense.evaluate(x_test, y_test, verbose=0)
    _, acc_sparse = sparse.evaluate(x_test, y_test, verbose=0)
    compact = sparsekeras.strip(sparse)
    acc_compact = float(np.mean(np.argmax(compact.predict(x_test, verbose=0, batch_size=256),
                                          axis=1) == y_test))
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    step_ms = {"dense": _median_step_ms(dense_timer.times, steps_per_epoch, 1 << 62),
               "rigl": _median_step_ms(timer.times, steps_per_epoch, 1 << 62)}
    params_dense = dense.count_params()
    params_compact = int(sum(np.prod(w.shape) for w in compact.trainable_weights))
    layer_rows = [(t.name, float(t.sparsity), bool(getattr(t, "compacted", False)))
                  for t in rigl.targets]
    moved = sum(u["moved"] for u in rigl.updates)
    update_s = sum(u["seconds"] for u in rigl.updates)

    print("\n3/3  results")
    print("=" * 64)
    print(f"{'':28}{'dense':>14}{'RigL (stripped)':>22}")
    print(f"{'test accuracy':28}{acc_dense:>14.4f}{acc_compact:>22.4f}")
    print(f"{'sparsity':28}{0.0:>14.3f}{rigl.overall_sparsity():>22.3f}")
    print(f"{'parameters (stored values)':28}{params_dense:>14,d}{params_compact:>22,d}")
    print(f"{'training time (whole fit)':28}{dense_s:>13.1f}s{sparse_s:>21.1f}s  "
          f"({sparse_s / dense_s:.2f}x)")
    if None not in step_ms.values():
        print(f"{f'median step, batch {batch_size}':28}{step_ms['dense']:>12.2f}ms"
              f"{step_ms['rigl']:>20.2f}ms  ({step_ms['rigl'] / step_ms['dense']:.2f}x)")
    print("-" * 64)
    print(f"mask updates: {len(rigl.updates)}, {moved:,d} weights moved, {update_s:.2f} s in all "
          "(included in the training time)")
    for name, s, c in layer_rows:
        note = "  (compacted)" if c else "  (dense under ERK)" if s == 0 else "  (trained masked)"
        print(f"sparsity of {name:16}{s:>14.3f}{note}")
    print("=" * 64)
    plot_path = _plot_rigl(dense_rows.rows, sparse_rows.rows, target, out_dir, hidden)
    if plot_path:
        print(f"plot of test accuracy and sparsity over the steps: {plot_path}")
    return dict(acc_dense=float(acc_dense), acc_rigl=float(acc_sparse), acc_stripped=acc_compact,
                sparsity=rigl.overall_sparsity(), layers=layer_rows, seconds_dense=dense_s,
                seconds_rigl=sparse_s, step_ms=step_ms, updates=len(rigl.updates), moved=moved,
                history_dense=dense_rows.rows, history_rigl=sparse_rows.rows, plot=plot_path)


def _plot_rigl(dense_rows, sparse_rows, target, out_dir, hidden):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return None
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot([r[0] for r in sparse_rows], [r[1] for r in sparse_rows], "o-", color="tab:blue",
             label="sparsity (RigL)")
    ax1.axhline(target, color="tab:blue", ls=":", lw=1)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("sparsity", color="tab:blue")
    ax1.set_ylim(0, 1)
    ax2 = ax1.twinx()
    ax2.plot([r[0] for r in sparse_rows], [r[2] for r in sparse_rows], "s-", color="tab:red",
             label="test accuracy (RigL)")
    ax2.plot([r[0] for r in dense_rows], [r[2] for r in dense_rows], "^--", color="tab:gray",
             label="test accuracy (dense)")
    ax2.set_ylabel("test accuracy", color="tab:red")
    ax2.set_ylim(min(r[2] for r in dense_rows + sparse_rows) - 0.02, 1.0)
    ax2.legend(loc="lower right")
    ax1.set_title(f"RigL: a 64-{hidden}-{hidden}-10 MLP on digits, sparse from the first step")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(out_dir, "sparsekeras_demo_rigl.png"))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
