"""Benchmark: one pruned model in the runtimes it is deployed on, side by side (issue 24).

Models (float32, weights random: timing does not depend on their values):
    mlp_small    MLP 784-300-100-10 (ReLU)                         batches 1, 256
    mlp_wide     MLP 1024-4096-4096-1000 (ReLU)                    batches 32, 256
    bert         BERT-like encoder from Keras layers: 4 blocks of MultiHeadAttention (4 heads
                 of 64) + LayerNorm + FFN 1024 (ReLU: tf2onnx does not convert the exact GELU),
                 hidden 256, sequence 128 (inputs are the embedded tokens)   batch 8
    mobilenetv2  keras.applications.MobileNetV2(input_shape=(128, 128, 3), weights=None)
                                                                   batches 1, 16
    resnet       a ResNet-style CNN: 64x64x3, 3x3 stem, three stages of two basic blocks (32,
                 64, 128 filters, BatchNorm, projection shortcuts), global pooling, Dense 10
                                                                   batches 1, 16
Variants:
    dense        the Keras model.
    sparse90     90% of each pruned kernel zeroed by magnitude (the Dense kernels and
                 MultiHeadAttention projections; MobileNetV2's 1x1 convolutions; the ResNet's
                 convolutions but the stem). TensorFlow runs `sparsekeras.strip` of it
                 (CompactDense / CompactConv2D through the sparse kernels, BatchNorm folded);
                 ONNX Runtime and LiteRT run `sparsekeras.densify` of it exported: the zeros are
                 stored and computed as numbers there (they have no sparse kernels that engage).
    shrink50     50% of the prunable channels removed (units, filters, heads, FFN units): with
                 `sparsekeras.shrink(model, fold_batchnorm=True)` when the tree has it (the
                 deployment path of docs/deploying.md: channels removed, BatchNorm folded; the
                 converters of the other engines fold it in the dense model too), else a
                 stand-in built directly at half width (labelled "shrink50 (stand-in)"
                 everywhere: same shapes a shrink would give at 50%, not produced by shrink).
Engines, 2 threads each: TensorFlow (the model called in a tf.function, 2 intra-op threads,
sparsekeras 2 threads), ONNX Runtime (CPUExecutionProvider, intra_op_num_threads=2) and LiteRT
(ai_edge_litert Interpreter, num_threads=2, its default XNNPACK delegate). Exports go through
Keras' own `model.export(path, format="onnx" / "litert")`.

Before timing, each engine's output is checked against the same variant's Keras model run in
TensorFlow (and the dense model's TF output is the reference of the dense column): a mismatch
(rtol 1e-4, atol 1e-4 x max |reference|) marks the cell wrong and it is not timed.

Timing, per (model, batch): every (variant, engine) callable is warmed up, then ROUNDS rounds
run each callable in turn for ~TARGET_S / ROUNDS seconds (TARGET_S per callable in all; engines
and variants interleaved in one run, so load changes hit all alike); the median over all calls
is reported with the IQR, and ratios are taken to TensorFlow dense at the same batch and to the
same engine's dense.

`--fold`: MobileNetV2 (128x128) sparsified on its 1x1 convolutions, pruned 90% by magnitude,
`strip(fold_batchnorm=False)` against `strip()` (BatchNorm folded) and the dense Keras model,
in TensorFlow at batches 1 and 16, interleaved the same way.

Usage:
    python benchmarks/bench_runtimes.py --out DIR [--quick] [--fold] [--models a,b]
writes DIR/bench_runtimes.json, DIR/bench_runtimes.png and DIR/bench_runtimes.md (the table),
and prints the table. The load (`uptime`) is recorded at the start and the end.
"""
import argparse
import datetime
import json
import os
import platform
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import _common
from _common import log

THREADS = 2
TARGET_S = 2.0
ROUNDS = 5
QUICK_TARGET_S = 0.3
RTOL = 1e-4

tf = _common.setup_tf()
import keras  # noqa: E402  (after TensorFlow's thread setup)
import sparsekeras  # noqa: E402
from sparsekeras._masks import magnitude_mask  # noqa: E402
from sparsekeras.callbacks import prunable_targets  # noqa: E402

sparsekeras.set_num_threads(THREADS)


def uptime():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


# ---- models -----------------------------------------------------------------------------------

def mlp(sizes, name):
    layers = [keras.Input((sizes[0],))]
    for i, n in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(keras.layers.Dense(n, activation=None if last else "relu", name=f"fc{i}"))
    return keras.Sequential(layers, name=name)


def bert(blocks=4, hidden=256, heads=4, key_dim=64, ffn=1024, seq=128, name="bert"):
    inp = keras.Input((seq, hidden), name="tokens")
    h = inp
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, key_dim, name=f"mha{i}")(h, h)
        h = keras.layers.LayerNormalization(name=f"ln{i}a")(keras.layers.Add()([h, a]))
        # ReLU, not GELU: tf2onnx does not convert TensorFlow's exact GELU (its Erfc op).
        f = keras.layers.Dense(ffn, activation="relu", name=f"ffn{i}a")(h)
        f = keras.layers.Dense(hidden, name=f"ffn{i}b")(f)
        h = keras.layers.LayerNormalization(name=f"ln{i}b")(keras.layers.Add()([h, f]))
    return keras.Model(inp, h, name=name)


def resnet(size=64, widths=(32, 64, 128), blocks=2, classes=10, name="resnet"):
    def conv_bn(x, filters, k, stride, cname, relu=True):
        x = keras.layers.Conv2D(filters, k, strides=stride, padding="same", use_bias=False,
                                name=cname)(x)
        x = keras.layers.BatchNormalization(name=cname + "_bn")(x)
        return keras.layers.ReLU(name=cname + "_relu")(x) if relu else x

    inp = keras.Input((size, size, 3))
    h = conv_bn(inp, widths[0], 3, 1, "stem")
    for s, w in enumerate(widths):
        for b in range(blocks):
            stride = 2 if (b == 0 and s > 0) else 1
            r = conv_bn(h, w, 3, stride, f"s{s}b{b}c1")
            r = conv_bn(r, w, 3, 1, f"s{s}b{b}c2", relu=False)
            if stride != 1 or int(h.shape[-1]) != w:
                h = conv_bn(h, w, 1, stride, f"s{s}b{b}proj", relu=False)
            h = keras.layers.ReLU(name=f"s{s}b{b}_out")(keras.layers.Add()([h, r]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(classes, name="head")(h), name=name)


def mobilenet(size=128, alpha=1.0):
    # Logits (no softmax): a softmax over 1000 classes of a random network is ~1/1000 in
    # every entry, which would make the output checks vacuous.
    return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                          weights=None, classifier_activation=None)


def randomize_batchnorm(model, seed=0):
    """BatchNormalization statistics and weights away from their initial identity, so that
    the output checks see a wrong fold (timing does not depend on the values)."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = int(layer.moving_mean.shape[0])
            layer.moving_mean.assign(rng.normal(0.0, 0.1, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0.0, 0.1, n))
    return model


def _half(n):
    return max(1, n // 2)


# name -> (build(width_factor), batches, prune_filter(layer) -> bool, input shape)
def model_specs(quick):
    if quick:
        return {
            "mlp_small": (lambda h=False: mlp([784, 300 // (1 + h), 100 // (1 + h), 10],
                                              "mlp_small"), [1], None),
        }
    return {
        "mlp_small": (lambda h=False: mlp([784, 300 // (1 + h), 100 // (1 + h), 10],
                                          "mlp_small"), [1, 256], None),
        "mlp_wide": (lambda h=False: mlp([1024, 4096 // (1 + h), 4096 // (1 + h), 1000],
                                         "mlp_wide"), [32, 256], None),
        "bert": (lambda h=False: bert(heads=2 if h else 4, ffn=512 if h else 1024), [8], None),
        "mobilenetv2": (lambda h=False: mobilenet(alpha=0.5 if h else 1.0), [1, 16],
                        lambda layer: tuple(getattr(layer, "kernel_size", ())) == (1, 1)
                        and type(layer) is keras.layers.Conv2D),
        "resnet": (lambda h=False: resnet(widths=(16, 32, 64) if h else (32, 64, 128)),
                   [1, 16], lambda layer: layer.name != "stem"),
    }


def _prunable_names(model, keep):
    kinds = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.MultiHeadAttention)
    return [layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, kinds) and (keep is None or keep(layer))]


def prune90(model, keep):
    """`model` sparsified on the layers `keep` selects, each kernel 90% zero by magnitude."""
    names = _prunable_names(model, keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = sparsekeras.sparsify(model, layer_names=names)
    for t in prunable_targets(sparse):
        kernel = keras.ops.convert_to_numpy(t.kernel)
        t.set_mask(magnitude_mask(kernel, 0.9))
    return sparse


def shrink50(build, dense):
    """(model, label): the 50%-channel-shrunk model and how it was made."""
    if hasattr(sparsekeras, "shrink"):
        try:
            return _real_shrink(dense), "shrink50"
        except Exception as e:  # noqa: BLE001  (reported, then the stand-in)
            log(f"  sparsekeras.shrink failed on {dense.name}: {type(e).__name__}: {e}; "
                "using the stand-in")
    return build(True), "shrink50 (stand-in)"


def _real_shrink(dense):
    """Channel-prune `dense` 50% by magnitude with GradualPruning(granularity="channel",
    coupled=True) (and granularity="head" where it has attention) in a fit of two steps with
    the learning rate at 0 (a one-step schedule), then `sparsekeras.shrink` with the
    BatchNormalization layers folded."""
    from sparsekeras.callbacks import GradualPruning
    from sparsekeras.schedules import ConstantSparsity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = sparsekeras.sparsify(dense)
    x = np.random.default_rng(0).normal(size=(4,) + tuple(dense.input_shape[1:]))
    x = x.astype(np.float32)
    y = keras.ops.convert_to_numpy(dense(x))
    sparse.compile(keras.optimizers.SGD(0.0), "mse")
    kinds = ["channel"]
    if any(isinstance(layer, keras.layers.MultiHeadAttention)
           for layer in sparse._flatten_layers(recursive=True)):
        kinds.append("head")
    for kind in kinds:
        cb = GradualPruning(ConstantSparsity(0.5, begin_step=0, frequency=1),
                            granularity=kind, coupled=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sparse.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small, report = sparsekeras.shrink(sparse, fold_batchnorm=True, return_report=True)
    log(f"  shrink: parameters {report.params_before} -> {report.params_after}")
    return small


# ---- engines ----------------------------------------------------------------------------------

def tf_callable(model, x):
    fn = tf.function(lambda t: model(t, training=False))
    xt = tf.constant(x)
    return lambda: fn(xt).numpy()


def ort_callable(path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})[0]


def litert_callable(path, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=THREADS)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()

    def call():
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(out["index"])
    return call


def export(model, path, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format=fmt, verbose=False)
    return path


# ---- timing -----------------------------------------------------------------------------------

def interleaved(callables, target_s, rounds=ROUNDS):
    """{key: stats}: each callable warmed up, then `rounds` rounds in which each callable in
    turn runs for ~target_s / rounds seconds (at least one call), each call timed alone."""
    per = {}
    for key, fn in callables.items():
        fn()
        t0 = time.perf_counter()
        fn()
        per[key] = max(time.perf_counter() - t0, 1e-6)
    budget = target_s / rounds
    times = {key: [] for key in callables}
    for _ in range(rounds):
        for key, fn in callables.items():
            n = max(1, int(budget / per[key]))
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    out = {}
    for key, ts in times.items():
        a = np.array(ts) * 1e3
        q1, q3 = np.percentile(a, [25, 75])
        out[key] = dict(median_ms=float(np.median(a)), iqr_ms=float(q3 - q1), calls=len(a))
    return out


def matches(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    tol = RTOL * max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got - want).max())
    return err <= tol, f"max |diff| {err:.3g} (tolerance {tol:.3g})"


# ---- the runtime table ------------------------------------------------------------------------

def run_model(name, spec, target_s, tmp):
    build, batches, keep = spec
    keras.utils.set_random_seed(0)
    dense = randomize_batchnorm(build(False))
    log(f"{name}: building variants")
    pruned = prune90(dense, keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a BatchNorm after an Add (ResNet's) stays: said in docs
        stripped = sparsekeras.strip(pruned)
    plain_pruned = sparsekeras.densify(pruned)
    small, small_label = shrink50(build, dense)
    variants = {  # label -> (TF model, exportable Keras model)
        "dense": (dense, dense),
        "sparse90": (stripped, plain_pruned),
        small_label: (small, small),
    }
    files = {}
    for label, (_, plain) in variants.items():
        for fmt, ext in (("onnx", "onnx"), ("litert", "tflite")):
            path = os.path.join(tmp, f"{name}_{label.split()[0]}.{ext}")
            t0 = time.perf_counter()
            try:
                files[label, fmt] = export(plain, path, fmt)
                log(f"  exported {label} to {fmt} in {time.perf_counter() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001  (reported in the table)
                files[label, fmt] = e
                log(f"  export {label} to {fmt} FAILED: {type(e).__name__}: {e}")
    rows = []
    for batch in batches:
        rng = np.random.default_rng(batch)
        x = rng.normal(size=(batch,) + tuple(dense.input_shape[1:])).astype(np.float32)
        callables, checks = {}, {}
        for label, (tf_model, plain) in variants.items():
            want = keras.ops.convert_to_numpy(plain(x, training=False))
            engines = {"tf": lambda m=tf_model: tf_callable(m, x)}
            for fmt, engine, make in (("onnx", "ort", ort_callable),
                                      ("litert", "litert", litert_callable)):
                f = files[label, fmt]
                engines[engine] = (lambda f=f, make=make: make(f, x)) if not isinstance(
                    f, Exception) else f
            for engine, make in engines.items():
                if isinstance(make, Exception):
                    checks[label, engine] = dict(ok=False, note=f"export failed: "
                                                 f"{type(make).__name__}: {str(make)[:200]}")
                    continue
                try:
                    fn = make()
                    ok, note = matches(fn(), want)
                except Exception as e:  # noqa: BLE001
                    ok, note = False, f"{type(e).__name__}: {str(e)[:200]}"
                checks[label, engine] = dict(ok=ok, note=note)
                if ok:
                    callables[label, engine] = fn
                else:
                    log(f"  {name} b{batch} {label} {engine}: NOT TIMED ({note})")
        log(f"{name} b{batch}: timing {len(callables)} callables, load {uptime()}")
        stats = interleaved(callables, target_s)
        ref = stats.get(("dense", "tf"), {}).get("median_ms")
        for (label, engine), check in checks.items():
            row = dict(model=name, batch=batch, variant=label, engine=engine,
                       correct=check["ok"], check=check["note"],
                       params=int(variants[label][1].count_params()))
            s = stats.get((label, engine))
            if s:
                row.update(s)
                if ref:
                    row["vs_tf_dense"] = ref / s["median_ms"]
                same = stats.get(("dense", engine), {}).get("median_ms")
                if same:
                    row["vs_engine_dense"] = same / s["median_ms"]
            rows.append(row)
    return rows


ENGINES = [("tf", "TensorFlow"), ("ort", "ONNX Runtime"), ("litert", "LiteRT")]


def table(rows):
    """Markdown: one line per (model, batch, variant), ms and ratio to TF dense per engine."""
    lines = ["| model, batch | variant | " + " | ".join(e for _, e in ENGINES) + " |",
             "|---|---|" + "---|" * len(ENGINES)]
    keys = []
    for r in rows:
        k = (r["model"], r["batch"], r["variant"])
        if k not in keys:
            keys.append(k)
    for model, batch, variant in keys:
        cells = []
        for engine, _ in ENGINES:
            r = next((r for r in rows if (r["model"], r["batch"], r["variant"], r["engine"])
                      == (model, batch, variant, engine)), None)
            if r is None:
                cells.append("-")
            elif "median_ms" not in r:
                cells.append(f"not timed ({r['check'][:60]})")
            else:
                cell = f"{r['median_ms']:.3g} ({r.get('vs_tf_dense', float('nan')):.2f}x"
                if variant != "dense" and "vs_engine_dense" in r:
                    cell += f"; {r['vs_engine_dense']:.2f}x same engine"
                cells.append(cell + ")")
        lines.append(f"| {model}, b{batch} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = []
    for r in rows:
        if (r["model"], r["batch"]) not in cells:
            cells.append((r["model"], r["batch"]))
    variants = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 3.6), squeeze=False)
    for ax, (model, batch) in zip(axes[0], cells):
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            ys = [next((r.get("vs_tf_dense", 0.0) for r in rows if (r["model"], r["batch"],
                        r["variant"], r["engine"]) == (model, batch, v, e)), 0.0)
                  for e, _ in ENGINES]
            ax.bar(np.arange(len(ENGINES)) + i * width, ys, width, label=v)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(ENGINES)) + 0.4 - width / 2)
        ax.set_xticklabels([e for e, _ in ENGINES])
        ax.set_title(f"{model} b{batch}", fontsize=9)
    axes[0][0].set_ylabel("speed vs TensorFlow dense (x)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- BatchNorm folding, MobileNetV2 in TensorFlow ----------------------------------------------

def run_fold(target_s, quick):
    size, batches = (32, [1]) if quick else (128, [1, 16])
    keras.utils.set_random_seed(0)
    dense = randomize_batchnorm(mobilenet(size, alpha=0.35 if quick else 1.0))
    keep = model_specs(False)["mobilenetv2"][2]
    pruned = prune90(dense, keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unfolded = sparsekeras.strip(pruned, fold_batchnorm=False)
        folded = sparsekeras.strip(pruned)
    n_bn = [sum(isinstance(la, keras.layers.BatchNormalization) for la in m.layers)
            for m in (unfolded, folded)]
    log(f"fold: BatchNormalization layers {n_bn[0]} -> {n_bn[1]}")
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).normal(size=(batch, size, size, 3)).astype(np.float32)
        want = keras.ops.convert_to_numpy(pruned(x, training=False))
        models = {"dense": dense, "strip, no fold": unfolded, "strip (fold)": folded}
        callables, notes = {}, {}
        for label, m in models.items():
            fn = tf_callable(m, x)
            ref = keras.ops.convert_to_numpy(dense(x, training=False)) if label == "dense" \
                else want
            ok, note = matches(fn(), ref)
            notes[label] = note
            if not ok:
                raise AssertionError(f"fold: {label} b{batch}: {note}")
            callables[label] = fn
        log(f"fold b{batch}: timing, load {uptime()}")
        stats = interleaved(callables, target_s)
        base = stats["strip, no fold"]["median_ms"]
        for label, s in stats.items():
            rows.append(dict(batch=batch, variant=label, correct=True, check=notes[label],
                             vs_unfolded=base / s["median_ms"],
                             vs_dense=stats["dense"]["median_ms"] / s["median_ms"], **s))
    return dict(model=f"MobileNetV2 {size}x{size}, 1x1 convolutions pruned 90%",
                batchnorm_layers=dict(unfolded=n_bn[0], folded=n_bn[1]), rows=rows)


def fold_table(fold):
    lines = ["| batch | variant | ms | vs strip without folding | vs dense |", "|---|---|---|---|---|"]
    for r in fold["rows"]:
        lines.append(f"| {r['batch']} | {r['variant']} | {r['median_ms']:.3g} | "
                     f"{r['vs_unfolded']:.2f}x | {r['vs_dense']:.2f}x |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=".")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fold", action="store_true", help="only the BatchNorm-folding comparison")
    p.add_argument("--no-fold", action="store_true", help="skip the BatchNorm-folding rows")
    p.add_argument("--models", default=None, help="comma-separated subset of the models")
    p.add_argument("--target-s", type=float, default=None)
    args = p.parse_args()
    target_s = args.target_s or (QUICK_TARGET_S if args.quick else TARGET_S)
    specs = model_specs(args.quick)
    if args.models:
        unknown = set(args.models.split(",")) - set(specs)
        if unknown:
            raise SystemExit(f"--models: unknown {sorted(unknown)}; known {sorted(specs)}")
        specs = {k: v for k, v in specs.items() if k in args.models.split(",")}
    os.makedirs(args.out, exist_ok=True)
    result = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(cpu=_common.cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                     tensorflow=tf.__version__, keras=keras.__version__,
                     sparsekeras=sparsekeras.__version__),
        threads=THREADS, target_s=target_s, rounds=ROUNDS, quick=args.quick,
        load_start=uptime(), shrink_in_tree=hasattr(sparsekeras, "shrink"))
    try:
        import onnxruntime
        import ai_edge_litert
        result["machine"].update(onnxruntime=onnxruntime.__version__,
                                 ai_edge_litert=getattr(ai_edge_litert, "__version__", "?"))
    except ImportError as e:
        raise SystemExit(f"bench_runtimes needs the `bench` extra (onnxruntime, ai-edge-litert, "
                         f"tf2onnx): {e}")
    md = []
    if not args.no_fold:
        result["fold"] = run_fold(target_s, args.quick)
        md += ["## BatchNorm folding, TensorFlow", "", result["fold"]["model"], "",
               fold_table(result["fold"]), ""]
    rows = []
    if not args.fold:
        with tempfile.TemporaryDirectory() as tmp:
            for name, spec in specs.items():
                rows += run_model(name, spec, target_s, tmp)
        result["results"] = rows
        md += ["## Runtimes (ms per call; in brackets: speed vs TensorFlow dense, and vs the "
               "same engine's dense)", "", table(rows), ""]
        plot(rows, os.path.join(args.out, "bench_runtimes.png"))
    result["load_end"] = uptime()
    md.append(f"Load average (1, 5, 15 min) at start {result['load_start']}, at end "
              f"{result['load_end']}; {THREADS} threads per engine; medians of interleaved "
              f"calls over ~{target_s} s per cell and callable set.")
    with open(os.path.join(args.out, "bench_runtimes.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "bench_runtimes.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    bad = [r for r in rows if not r["correct"]]
    if bad:
        log(f"{len(bad)} cells not timed (export failed or outputs differ): see the table")


if __name__ == "__main__":
    main()
