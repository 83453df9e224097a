"""Whole-model benchmark: pruned models against their dense Keras twins, from small MLPs to a
BERT-like encoder (issue 19).

Models (0.9 sparsity on every layer `sparsekeras.sparsify` converts):
  mlp       MLP 784-300-100-10
  demo      the demo's MLP 64-2048-2048-10
  resnet    a small ResNet-style CNN on 32x32x3 (3 stages of one residual block, 32/64/128)
  mobilenet a MobileNet-style CNN on 32x32x3 (depthwise 3x3 + pointwise 1x1 blocks)
  bert      a BERT-like encoder from Keras layers (4 layers, hidden 256, 4 heads, FFN 1024,
            sequence 128; the input is the embedded sequence; MultiHeadAttention,
            LayerNormalization, Dense), mean-pooled into a 2-class head
  lstm      an LSTM text classifier (Embedding 5000x64, LSTM 128, sequence 64, Dense 2)

Variants: `dense` (the Keras model, never pruned), `unstructured` and, for the models made of
Dense / EinsumDense layers, `block1x8` ((1, 8) blocks of the weight's 2-D view). The masks are
set by weight magnitude straight to 0.9, without training (the weights are the initial random
ones): the timings do not depend on the values, only on the patterns' density and shape.
Inference runs on `sparsekeras.strip(pruned)`; its outputs are checked against the dense model
holding the same pruned weights (`sparsekeras.densify`), which is the `correct` flag.

Cells, each a ratio dense time / sparse time measured in the same process (> 1: faster):
  inference at batch 1 (eager `model(x)`, `predict_on_batch`, the served SavedModel from
  `model.export(format="tf_saved_model")`), and `predict_on_batch` at 32 and 256 (sequence
  models: 8); the training step (`train_on_batch`, Adam) while pruning (the sparsified model,
  masks at 0.9) and after `sparsekeras.compact`, at batch 32 (sequence models: 8); the `.keras`
  file size. Dense and sparse calls alternate within each repeat, so slow phases of the shared
  machine hit both. Every model runs `--runs` times, each in a fresh process (multiprocessing
  spawn); the table gives the median ratio over the runs and their spread (min-max).

Usage: python benchmarks/bench_models.py --out DIR [--quick] [--runs N] [--repeats R]
       [--models mlp,demo,...]
Writes DIR/bench_models.json, DIR/bench_models.png and DIR/bench_models.md.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SPARSITY = 0.9
MODELS = ("mlp", "demo", "resnet", "mobilenet", "bert", "lstm")
SEQUENCE_MODELS = ("bert", "lstm")
BLOCK_MODELS = ("mlp", "demo", "bert")  # made of Dense / EinsumDense: (1, 8) blocks apply


# ---- the models --------------------------------------------------------------------------

def build_model(name, quick=False):
    """(Keras model, input maker(batch, rng), label maker(batch, rng)) for `name`."""
    import keras
    from keras import layers as L

    def images(batch, rng):
        return rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)

    def classes(n):
        return lambda batch, rng: rng.integers(0, n, size=(batch,)).astype(np.int32)

    if name == "mlp":
        m = keras.Sequential([keras.Input((784,)), L.Dense(300, activation="relu"),
                              L.Dense(100, activation="relu"), L.Dense(10)], name="mlp")
        return m, lambda b, rng: rng.standard_normal((b, 784)).astype(np.float32), classes(10)
    if name == "demo":
        m = keras.Sequential([keras.Input((64,)), L.Dense(2048, activation="relu"),
                              L.Dense(2048, activation="relu"), L.Dense(10)], name="demo")
        return m, lambda b, rng: rng.standard_normal((b, 64)).astype(np.float32), classes(10)
    if name == "resnet":
        inp = keras.Input((32, 32, 3))
        x = L.Conv2D(32, 3, padding="same", use_bias=False)(inp)
        x = L.ReLU()(L.BatchNormalization()(x))
        for i, filters in enumerate((32, 64, 128)):
            stride = 1 if i == 0 else 2
            y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
            y = L.ReLU()(L.BatchNormalization()(y))
            y = L.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = L.BatchNormalization()(y)
            skip = x if stride == 1 and x.shape[-1] == filters else \
                L.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
            x = L.ReLU()(L.Add()([y, skip]))
        out = L.Dense(10)(L.GlobalAveragePooling2D()(x))
        return keras.Model(inp, out, name="resnet"), images, classes(10)
    if name == "mobilenet":
        inp = keras.Input((32, 32, 3))
        x = L.Conv2D(32, 3, strides=1, padding="same", use_bias=False)(inp)
        x = L.ReLU(6.0)(L.BatchNormalization()(x))
        for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
            x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
            x = L.ReLU(6.0)(L.BatchNormalization()(x))
            x = L.Conv2D(filters, 1, use_bias=False)(x)
            x = L.ReLU(6.0)(L.BatchNormalization()(x))
        out = L.Dense(10)(L.GlobalAveragePooling2D()(x))
        return keras.Model(inp, out, name="mobilenet"), images, classes(10)
    if name == "bert":
        seq, hidden, heads, ffn, depth = (16, 64, 2, 128, 1) if quick else (128, 256, 4, 1024, 4)
        inp = keras.Input((seq, hidden))
        x = inp
        for _ in range(depth):
            a = L.MultiHeadAttention(heads, hidden // heads)(x, x)
            x = L.LayerNormalization(epsilon=1e-12)(L.Add()([x, a]))
            f = L.Dense(ffn, activation="gelu")(x)
            f = L.Dense(hidden)(f)
            x = L.LayerNormalization(epsilon=1e-12)(L.Add()([x, f]))
        out = L.Dense(2)(L.GlobalAveragePooling1D()(x))
        return (keras.Model(inp, out, name="bert"),
                lambda b, rng: rng.standard_normal((b, seq, hidden)).astype(np.float32),
                classes(2))
    if name == "lstm":
        seq, vocab = 64, 5000
        m = keras.Sequential([keras.Input((seq,), dtype="int32"), L.Embedding(vocab, 64),
                              L.LSTM(128), L.Dense(2)], name="lstm")
        return (m, lambda b, rng: rng.integers(0, vocab, size=(b, seq)).astype(np.int32),
                classes(2))
    raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}")


def prune_to(model, granularity):
    """Set every pruning target of every sparse layer of `model` to SPARSITY by magnitude."""
    import keras

    import sparsekeras
    from sparsekeras import _masks

    options = dict(granularity="unstructured")
    if granularity == "block1x8":
        options = dict(granularity="block", block_shape=(1, 8))
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not hasattr(layer, "pruning_targets") or not layer.built:
            continue
        for t in layer.pruning_targets():
            w = keras.ops.convert_to_numpy(t.kernel)
            opts = options
            if opts.get("granularity") == "block" and (w.ndim < 2 or w.shape[-1] % 8):
                opts = dict(granularity="unstructured")
            t.set_mask(_masks.magnitude_mask(w, SPARSITY, **opts))
            n += 1
    if not n:
        raise RuntimeError(f"sparsekeras.sparsify converted no layer of {model.name!r}")
    del sparsekeras
    return n


# ---- timing ------------------------------------------------------------------------------

def interleaved(fns, repeats, warmup=2):
    """{name: median seconds} of the callables in `fns`, called in turn `repeats` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _repeats_for(seconds_per_call, budget, lo=3, hi=200):
    return int(min(hi, max(lo, budget / max(seconds_per_call, 1e-6))))


def worker(name, run, quick, repeats, budget=2.0):
    """One fresh process: every cell of model `name`. Returns a JSON-able dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = _common.setup_tf()
    import keras

    import sparsekeras

    keras.utils.set_random_seed(run)
    rng = np.random.default_rng(run)
    dense, make_x, make_y = build_model(name, quick)
    seq = name in SEQUENCE_MODELS
    batches = (1, 8) if seq else ((1, 32) if quick else (1, 32, 256))
    train_batch = 8 if seq else 32
    grans = ["unstructured"] + (["block1x8"] if name in BLOCK_MODELS else [])
    out = {"model": name, "run": run, "params": int(dense.count_params()),
           "variants": {}, "load_before": os.getloadavg()}
    xs = {b: tf.constant(make_x(b, rng)) for b in batches}

    pruned, stripped = {}, {}
    for g in grans:
        p = sparsekeras.sparsify(dense)
        out.setdefault("targets", {})[g] = prune_to(p, g)
        pruned[g] = p
        stripped[g] = sparsekeras.strip(p)
        ref = sparsekeras.densify(p)
        x = xs[batches[-1]]
        err = float(np.max(np.abs(np.asarray(stripped[g](x)) - np.asarray(ref(x)))))
        scale = float(np.max(np.abs(np.asarray(ref(x))))) + 1e-6
        out["variants"][g] = {"correct": err <= 1e-3 * scale + 1e-4, "max_abs_err": err}

    models = {"dense": dense, **stripped}
    cells = {}

    # inference
    with tempfile.TemporaryDirectory() as tmp:
        served, loaded = {}, []
        for k, m in models.items():
            path = os.path.join(tmp, f"{k}_export")
            m.export(path, format="tf_saved_model", verbose=False)
            loaded.append(tf.saved_model.load(path))  # keep it alive: serve reads its variables
            served[k] = loaded[-1].serve
            m.save(os.path.join(tmp, f"{k}.keras"))
            cells.setdefault("file_bytes", {})[k] = os.path.getsize(os.path.join(tmp, f"{k}.keras"))
        for b in batches:
            x = xs[b]
            kinds = {"predict_on_batch": lambda m, s: (lambda: m.predict_on_batch(x))}
            if b == 1:
                kinds = {"eager": lambda m, s: (lambda: np.asarray(m(x, training=False))),
                         **kinds,
                         "served": lambda m, s: (lambda: s(x).numpy())}
            for kind, make in kinds.items():
                fns = {k: make(m, served[k]) for k, m in models.items()}
                t0 = time.perf_counter()
                fns["dense"]()
                reps = repeats or _repeats_for(time.perf_counter() - t0, 1.0 if quick else budget)
                if quick:
                    reps = min(reps, 5)
                med = interleaved(fns, reps)
                cells[f"infer {kind} b{b}"] = {k: v * 1e3 for k, v in med.items()}
                _common.log(f"  [{name} run {run}] infer {kind} b{b}: " + ", ".join(
                    f"{k} {v * 1e3:.3f} ms" for k, v in med.items()))

    # training: while pruning (masks at 0.9, dense kernels), then compacted
    xt, yt = tf.constant(make_x(train_batch, rng)), tf.constant(make_y(train_batch, rng))
    trainable = {"dense": dense, **pruned}
    for m in trainable.values():
        m.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.train_on_batch(xt, yt)
    t0 = time.perf_counter()
    trainable["dense"].train_on_batch(xt, yt)
    # as many steps as the inference cells' time budget allows (at least 15): a small model's
    # step takes ~2 ms, and over 15 steps its ratio ranged 0.90-1.06 across three runs
    reps_train = repeats or (5 if quick else _repeats_for(time.perf_counter() - t0, budget,
                                                           lo=15))
    med = interleaved({k: (lambda m=m: m.train_on_batch(xt, yt)) for k, m in trainable.items()},
                      reps_train)
    cells["train pruning"] = {k: v * 1e3 for k, v in med.items()}
    compacted = {}
    for g in grans:
        compacted[g] = len(sparsekeras.compact(pruned[g]))
        pruned[g].train_on_batch(xt, yt)
    out["compacted_layers"] = compacted
    med = interleaved({k: (lambda m=m: m.train_on_batch(xt, yt)) for k, m in trainable.items()},
                      reps_train)
    cells["train compacted"] = {k: v * 1e3 for k, v in med.items()}
    _common.log(f"  [{name} run {run}] train: pruning {cells['train pruning']}, "
                f"compacted {cells['train compacted']}")
    out["cells"] = cells
    out["load_after"] = os.getloadavg()
    return out


def _worker_entry(args):
    return worker(*args)


# ---- summary -----------------------------------------------------------------------------

def summarize(runs):
    """{model: {cell: {variant: {median, min, max}}}} of dense/sparse ratios over the runs
    (file size: dense bytes / sparse bytes)."""
    table = {}
    for r in runs:
        for cell, t in r["cells"].items():
            for v, ms in t.items():
                if v == "dense":
                    continue
                table.setdefault(r["model"], {}).setdefault(cell, {}).setdefault(v, []).append(
                    t["dense"] / ms)
    return {m: {c: {v: {"median": float(np.median(x)), "min": float(min(x)),
                        "max": float(max(x)), "runs": len(x)} for v, x in cs.items()}
                for c, cs in cells.items()} for m, cells in table.items()}


CELL_ORDER = ["infer eager b1", "infer predict_on_batch b1", "infer served b1",
              "infer predict_on_batch b8", "infer predict_on_batch b32",
              "infer predict_on_batch b256", "train pruning", "train compacted", "file_bytes"]


def markdown(summary, runs, meta):
    cols = [c for c in CELL_ORDER if any(c in s for s in summary.values())]
    short = {"infer eager b1": "eager b1", "infer predict_on_batch b1": "pob b1",
             "infer served b1": "served b1", "infer predict_on_batch b8": "pob b8",
             "infer predict_on_batch b32": "pob b32", "infer predict_on_batch b256": "pob b256",
             "train pruning": "train (pruning)", "train compacted": "train (compacted)",
             "file_bytes": ".keras size"}
    lines = ["| model | variant | " + " | ".join(short[c] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for model, cells in summary.items():
        variants = sorted({v for c in cells.values() for v in c}, key=lambda v: v != "unstructured")
        for v in variants:
            row = []
            for c in cols:
                s = cells.get(c, {}).get(v)
                if s is None:
                    row.append("-")
                elif s["runs"] > 1:
                    row.append(f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
                else:
                    row.append(f"{s['median']:.2f}")
            lines.append(f"| {model} | {v} | " + " | ".join(row) + " |")
    dense_ms = {}
    for r in runs:
        for c in ("infer predict_on_batch b1", "infer eager b1"):
            if c in r["cells"]:
                dense_ms.setdefault((r["model"], c), []).append(r["cells"][c]["dense"])
    lines.append("")
    lines.append("Dense twin's own times (median over runs, ms): " + "; ".join(
        f"{m} {c.split()[1]} {np.median(v):.3f}" for (m, c), v in dense_ms.items()))
    lines.append("")
    lines.append(f"Ratios dense time / sparse time (> 1: the pruned model is faster; .keras "
                 f"size: dense bytes / sparse bytes), median over {meta['runs']} fresh "
                 f"process(es) per model, (min-max) over them. Load average "
                 f"{meta['load_start']} at the start, {meta['load_end']} at the end; "
                 f"{meta['cpu']}; command: `{meta['command']}`.")
    return "\n".join(lines) + "\n"


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(m, v) for m, cells in summary.items()
            for v in sorted({v for c in cells.values() for v in c})]
    cols = [c for c in CELL_ORDER if c != "file_bytes" and any(c in s for s in summary.values())]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.45 * len(rows) + 2))
    data = np.full((len(rows), len(cols)), np.nan)
    for i, (m, v) in enumerate(rows):
        for j, c in enumerate(cols):
            s = summary[m].get(c, {}).get(v)
            if s:
                data[i, j] = s["median"]
    im = ax.imshow(np.log2(data), cmap="RdYlGn", vmin=-2, vmax=2, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), [c.replace("infer ", "").replace("predict_on_batch", "pob")
                                     for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{m} {v}" for m, v in rows])
    ax.set_title(f"Pruned ({SPARSITY:.0%}) vs dense twin: dense time / sparse time")
    fig.colorbar(im, ax=ax, label="log2 ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: one run, few repeats, small grids; the MLP only unless "
                             "--models is given (bert: a one-layer encoder)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per model")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls per cell (0: from a time budget per cell)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {','.join(MODELS)}")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        parser.error(f"--models: unknown {bad}; expected names from {MODELS}")
    if args.runs < 1:
        parser.error(f"--runs must be >= 1; received {args.runs}")
    if args.quick:
        if args.models == ",".join(MODELS):
            models = ["mlp"]
        args.runs = 1
    os.makedirs(args.out, exist_ok=True)
    meta = {"runs": args.runs, "cpu": _common.cpu_model(), "tf_threads": _common.TF_THREADS,
            "load_start": tuple(round(x, 2) for x in os.getloadavg()),
            "command": "python benchmarks/bench_models.py " + " ".join(
                argv if argv is not None else sys.argv[1:]), "sparsity": SPARSITY}
    ctx = mp.get_context("spawn")  # libgomp hangs in a forked child
    runs = []
    for name in models:
        for run in range(args.runs):
            _common.log(f"{name}: run {run + 1}/{args.runs} (fresh process)")
            with ctx.Pool(1, maxtasksperchild=1) as pool:
                runs.append(pool.apply(_worker_entry, ((name, run, args.quick, args.repeats),)))
    meta["load_end"] = tuple(round(x, 2) for x in os.getloadavg())
    summary = summarize(runs)
    correct = all(v["correct"] for r in runs for v in r["variants"].values())
    with open(os.path.join(args.out, "bench_models.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs, "correct": correct}, f,
                  indent=1)
    md = markdown(summary, runs, meta)
    with open(os.path.join(args.out, "bench_models.md"), "w") as f:
        f.write(md)
    plot(summary, os.path.join(args.out, "bench_models.png"))
    print(md)
    if not correct:
        print("ERROR: a stripped model's outputs differ from its dense twin's with the same "
              "pruned weights (see 'variants' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
