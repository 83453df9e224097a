"""Dense or sparse compute, per call: a measured break-even cost model.

A pruned layer that holds its dense kernel (SparseDense, SparseEinsumDense while pruning) can
compute either way. Which is faster depends on the layer's shape, its density and the number of
rows of the product (the batch, times the sequence for 3-D inputs), not on the sparsity alone:
a 4096-wide layer at 70% sparsity is faster sparse at batch 256, a 300 x 100 layer at 90% can be
faster dense. The model predicts the time of one product of `rows` rows:

    dense(rows)  = d_fixed + d_weight * K * N + rows * (d_mac * K * N + d_io * (K + N))
    sparse(rows) = s_fixed + s_weight * nnz  + rows * (s_mac * nnz   + s_io * (K + N))

(fixed cost per call: op dispatch, thread wake-up; reading the weights once per call: 4 bytes
per weight for the dense kernel, 8 per stored weight (value and row index) for the sparse one,
what decides batch 1; multiply-adds, what decides large batches; reading x and writing y).
Both are linear in `rows`, so the rows where sparse is predicted
faster form one interval [lo, hi] (`sparse_rows`), computed once per mask (eager, when the
pattern changes) and compared with the call's row count inside the traced function (a
`tf.cond`): the row count is often known only at run time (`predict` with a last short batch,
a served model).

Why a formula with measured constants rather than a lookup table: a layer's shape, density and
batch vary continuously, the two kernels' costs are close to linear in the work on both
machines seen, and eight numbers are cheap to calibrate. The built-in constants
(`DEFAULT_CONSTANTS`) come from the idle-machine measurements of the development machine (AMD
EPYC, 2 threads, TF 2.21) in docs/performance.md: the 4096 x 4096 products at batch 1, 32 and
256 (bench_matmul: tf.matmul 1.39 / 3.6 / 19.3 ms; the CSC product at 90% 0.36 / 0.97 / 6.5
ms, at 80% 1.88 / 12.0 ms at 32 / 256) and the per-call overhead of a 1x16 @ 16x16 product in
`tf.function` (the sparse op ~9 us above tf.matmul's). They put the large-batch break-even at
~72% sparsity (measured: 0.68 at batch 256) and make sparse win at batch 1 from a much lower
sparsity (weights read once: 8 bytes per stored weight against 4 per weight).
`calibrate(save=True)` refits them on the user's machine (about a minute: the products on
four layer shapes, the convolutions on six small-image layers, 3x3 and 1x1) and
caches them in `<user cache dir>/sparsekeras/dispatch.json` (`$XDG_CACHE_HOME` or
`~/.cache`; `SPARSEKERAS_DISPATCH_CACHE` names another file), which later processes read.

The model only decides among what the layer may do: `compute="dense"` / `"sparse"` force a
path, and a layer computes sparse only from its `switch_sparsity` on (the user's floor).
"""
import contextlib
import json
import os
import time

import numpy as np

__all__ = ["DEFAULT_CONSTANTS", "CostModel", "calibrate", "cost_model", "sparse_rows",
           "cache_path", "eager_threads"]

# Largest row count the interval can name (int32 row counts of a traced tf.shape).
MAX_ROWS = 2 ** 31 - 1

# Seconds (see the module docstring for where they come from). The convolution parts ("rows" =
# output positions, K = taps x input channels, N = output channels) are fitted to the
# idle-machine table of docs/performance.md (bench_conv: 3x3 64->64 and 1x1 128->128 on 56x56,
# batch 8, sparsity 0.5-0.95: tf.nn.conv2d 4.1 / 2.4 ms; the sparse convolution crosses it near
# 0.7-0.78), erring towards dense (its 3x3 at 90% is predicted 1.5x faster, measured 2.5x).
DEFAULT_CONSTANTS = {
    "dense": {"fixed": 0.0, "weight": 8.3e-11, "mac": 4.1e-12, "io": 0.0},
    "sparse": {"fixed": 9.0e-6, "weight": 2.0e-10, "mac": 1.47e-11, "io": 0.0},
    "conv_dense": {"fixed": 2.5e-4, "weight": 0.0, "mac": 4.4e-12, "io": 0.0},
    "conv_sparse": {"fixed": 2.0e-5, "weight": 0.0, "mac": 1.2e-11, "io": 1.0e-10},
}
# tf.nn.conv2d's fixed cost (oneDNN) measured on small images (32x32 and 16x16, batch 1, 3-128
# channels, 90%, in tf.function): 0.36-0.53 ms against the sparse convolution's 0.20-0.31 ms
# with the same call overhead, so ~0.25 ms more. A strided sparse convolution builds its input
# planes for the whole batch (stride 1 fuses them into bands): its multiply-adds and traffic
# count this many times. 3.0 until the strided kernel ran flat tiles over several output rows
# (session 12); since then, the stripped ResNet of benchmarks/bench_models.py at batch 32, 90%,
# in tf.function: 3x3 32 -> 64 stride 2 sparse 1.45 ms / dense path 2.74 ms, 64 -> 128 stride 2
# 1.11 / 2.18 ms, both predicted dense at 3.0 (sparse from below ~1.4 and ~2.0); the strided
# depthwise layers of the MobileNet stay dense (sparse 1.3-3.4 ms / 0.5-0.7 ms) at 1.3.
STRIDED_SPARSE_FACTOR = 1.3
_KEYS = ("fixed", "weight", "mac", "io")


class CostModel:
    """Predicted times of the dense and the sparse product (see the module docstring).

    Args:
        constants: {"dense": {...}, "sparse": {...}}, each with "fixed", "weight", "mac",
            "io" (seconds); missing keys take DEFAULT_CONSTANTS' values.
        source: where the constants come from ("built-in", a file path, "calibrated").

    Raises:
        ValueError: a constant is negative or not finite.
    """

    def __init__(self, constants=None, source="built-in"):
        merged = {kind: dict(values) for kind, values in DEFAULT_CONSTANTS.items()}
        for kind, values in (constants or {}).items():
            if kind not in merged:
                raise ValueError(f"Unknown cost-model part {kind!r}; expected one of "
                                 f"{sorted(merged)}. Received: constants={constants!r}")
            for key, value in values.items():
                if key not in _KEYS:
                    raise ValueError(f"Unknown cost constant {kind}.{key}; expected one of "
                                     f"{_KEYS}. Received: constants={constants!r}")
                value = float(value)
                if not np.isfinite(value) or value < 0:
                    raise ValueError(f"Expected finite non-negative cost constants. Received: "
                                     f"{kind}.{key}={value!r}")
                merged[kind][key] = value
        self.constants = merged
        self.source = source

    def dense_time(self, rows, k, n, kind="matmul", dense_kn=None):
        """Predicted seconds of `x (rows, k) @ W (k, n)` with the dense kernel (kind "conv":
        a convolution with `rows` output positions; `dense_kn`: its weights, if not k * n, as
        for a depthwise kernel)."""
        d = self.constants["conv_dense" if kind == "conv" else "dense"]
        kn = k * n if dense_kn is None else dense_kn
        return d["fixed"] + d["weight"] * kn + rows * (d["mac"] * kn + d["io"] * (k + n))

    def sparse_time(self, rows, k, n, nnz, kind="matmul", strided=False):
        """Predicted seconds of the same product over `nnz` stored weights (CSC kernel;
        `strided`: a convolution with a stride > 1)."""
        s = self.constants["conv_sparse" if kind == "conv" else "sparse"]
        f = STRIDED_SPARSE_FACTOR if strided and kind == "conv" else 1.0
        return s["fixed"] + s["weight"] * nnz + rows * f * (s["mac"] * nnz + s["io"] * (k + n))

    def sparse_rows(self, k, n, nnz, kind="matmul", dense_kn=None, strided=False):
        """(lo, hi): the row counts for which the sparse product is predicted faster, as an
        inclusive interval (lo > hi: never)."""
        if kind not in ("matmul", "conv"):
            raise ValueError(f"Expected kind 'matmul' or 'conv'. Received: kind={kind!r}")
        d = self.constants["conv_dense" if kind == "conv" else "dense"]
        s = self.constants["conv_sparse" if kind == "conv" else "sparse"]
        f = STRIDED_SPARSE_FACTOR if strided and kind == "conv" else 1.0
        kn = k * n if dense_kn is None else dense_kn
        a = s["fixed"] + s["weight"] * nnz - d["fixed"] - d["weight"] * kn  # at 0 rows
        b = f * (s["mac"] * nnz + s["io"] * (k + n)) - (d["mac"] * kn + d["io"] * (k + n))
        # sparse faster where a + b * rows < 0, for rows >= 1
        if b < 0:
            lo = 1 if a < 0 else int(np.floor(a / -b)) + 1
            return min(max(lo, 1), MAX_ROWS), MAX_ROWS
        if b == 0:
            return (1, MAX_ROWS) if a < 0 else (MAX_ROWS, 0)
        if a >= 0:
            return MAX_ROWS, 0
        hi = int(np.ceil(-a / b)) - 1
        return (1, min(hi, MAX_ROWS)) if hi >= 1 else (MAX_ROWS, 0)

    def to_json(self):
        return {"constants": self.constants, "source": self.source}


def cache_path():
    """Where `calibrate(save=True)` writes the constants and `cost_model()` reads them."""
    explicit = os.environ.get("SPARSEKERAS_DISPATCH_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparsekeras", "dispatch.json")


_MODEL = None


def cost_model(reload=False):
    """The cost model of this process: the calibrated constants from `cache_path()` if that
    file exists, else the built-in ones. A file that cannot be read is said in a warning (and
    the built-in constants are used)."""
    global _MODEL
    if _MODEL is not None and not reload:
        return _MODEL
    path = cache_path()
    model = CostModel()
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            model = CostModel(data["constants"], source=path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            import warnings

            warnings.warn(f"sparsekeras: ignoring the dispatch calibration file {path} ({e}); "
                          "using the built-in cost model. Rerun "
                          "sparsekeras._dispatch.calibrate(save=True) to replace it.",
                          stacklevel=2)
    _MODEL = model
    return model


def set_cost_model(model):
    """Use `model` (a CostModel, or None: reload from the cache/built-in) in this process, for
    the masks set from now on. Returns the previous one."""
    global _MODEL
    if model is not None and not isinstance(model, CostModel):
        raise ValueError(f"Expected a CostModel or None. Received: model={model!r}")
    previous = _MODEL
    _MODEL = model
    return previous


def sparse_rows(k, n, nnz, kind="matmul", dense_kn=None, strided=False):
    """(lo, hi) rows for which this process' cost model picks the sparse product."""
    return cost_model().sparse_rows(int(k), int(n), int(nnz), kind, dense_kn, strided)


# ---- calibration ---------------------------------------------------------------------------

_SHAPES = ((64, 64), (300, 100), (784, 300), (2048, 2048))
_DENSITIES = (0.1, 0.3)
_ROWS = (1, 16, 256)
# Convolutions (image size, in channels, out channels, kernel size), stride 1, "same": the
# small images and 1x1 layers of the CNNs people prune (bench_models' ResNet and MobileNet
# layers), where tf.nn.conv2d's fixed cost and the pointwise layers decide.
_CONV_SHAPES = ((32, 32, 32, 3), (16, 64, 128, 1), (16, 64, 64, 3), (8, 128, 256, 1),
                (8, 128, 128, 3), (32, 32, 64, 1))
_CONV_BATCHES = (1, 8, 32)


def _time_per_call(fn, arg, min_time):
    """Seconds per call of the traced `fn(arg)`, the call overhead amortized: `fn` runs in a
    tf.while_loop of `iters` iterations inside one graph."""
    import tensorflow as tf

    @tf.function
    def loop(x, iters):
        def body(i, acc):
            return i + 1, acc + tf.reduce_sum(fn(x + acc * 0.0)[:1])
        return tf.while_loop(lambda i, acc: i < iters, body, (tf.constant(0), tf.constant(0.0)))

    loop(arg, tf.constant(2))
    iters = 4
    while True:
        t0 = time.perf_counter()
        loop(arg, tf.constant(iters))
        dt = time.perf_counter() - t0
        if dt >= min_time or iters >= 1 << 14:
            break
        iters *= 4
    best = dt
    for _ in range(4):  # the minimum: a shared machine only ever adds time
        t0 = time.perf_counter()
        loop(arg, tf.constant(iters))
        best = min(best, time.perf_counter() - t0)
    return best / iters


def _fit(features, times):
    """Non-negative least squares on relative errors (each row divided by its time)."""
    from scipy.optimize import nnls

    a = np.asarray(features, float) / np.asarray(times, float)[:, None]
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones(len(times)))
    return coef / scale


def _calibrate_conv(rng, quick, min_time):
    """(dense rows, sparse rows) of (output positions, K, N, stored weights, seconds): the
    dense convolution (tf.nn.conv2d) and the sparse one (csr_conv2d) on the `_CONV_SHAPES`."""
    import tensorflow as tf

    from sparsekeras import ops as sk_ops
    from sparsekeras.layers.conv import conv_structure

    shapes = _CONV_SHAPES[:3] if quick else _CONV_SHAPES
    batches = (1, 8) if quick else _CONV_BATCHES
    densities = _DENSITIES[:1] if quick else _DENSITIES
    dense_rows, sparse_rows_ = [], []
    for size, cin, cout, ks in shapes:
        w = rng.standard_normal((ks, ks, cin, cout)).astype(np.float32)
        wt = tf.constant(w)
        k = ks * ks * cin
        for batch in batches:
            x = tf.constant(rng.standard_normal((batch, size, size, cin)).astype(np.float32))
            rows = batch * size * size
            t = _time_per_call(lambda a: tf.nn.conv2d(a, wt, 1, "SAME"), x, min_time)
            dense_rows.append((rows, k, cout, 0, t))
            for density in densities:
                mask = rng.random(w.shape) < density
                st = conv_structure(mask)
                ip, ix = tf.constant(st["indptr"]), tf.constant(st["indices"])
                vals = tf.constant(w.reshape(-1)[st["positions"]])
                t = _time_per_call(
                    lambda a: sk_ops.csr_conv2d(a, ip, ix, vals, w.shape, padding="same"),
                    x, min_time)
                sparse_rows_.append((rows, k, cout, int(ix.shape[0]), t))
    return dense_rows, sparse_rows_


def calibrate(save=False, quick=False, path=None, conv=True):
    """Measure the dense and the sparse (CSC) product, and the dense and the sparse
    convolution, on this machine and fit the cost model's constants (about a minute; `quick`:
    a smaller grid, a few seconds, for tests).

    Args:
        save: write the constants to `path` (default `cache_path()`), where later processes
            read them, and use them in this process from now on.
        quick: a smaller grid of shapes and shorter timings.
        path: the file to write (with save=True).
        conv: also fit the convolution parts (stride 1; `STRIDED_SPARSE_FACTOR` still
            scales strided sparse convolutions). False keeps their current values.

    Returns:
        The fitted `CostModel` (its `measurements` attribute lists what was timed).
    """
    import tensorflow as tf

    from sparsekeras import _kernels
    from sparsekeras import ops as sk_ops

    rng = np.random.default_rng(0)
    shapes = _SHAPES[:3] if quick else _SHAPES
    densities = _DENSITIES[:1] if quick else _DENSITIES
    rows_list = (1, 64) if quick else _ROWS
    min_time = 0.005 if quick else 0.02
    dense_rows, sparse_rows_ = [], []
    for k, n in shapes:
        w = rng.standard_normal((k, n)).astype(np.float32)
        wt = tf.constant(w)
        for rows in rows_list:
            x = tf.constant(rng.standard_normal((rows, k)).astype(np.float32))
            t = _time_per_call(lambda a: tf.matmul(a, wt), x, min_time)
            dense_rows.append((rows, k, n, 0, t))
            for density in densities:
                m = w * (rng.random((k, n)) < density)
                ip, ix, vals = _kernels.dense_to_csr(np.ascontiguousarray(m.T),
                                                     index_dtype=np.int32)
                ip, ix, vals = tf.constant(ip), tf.constant(ix), tf.constant(vals)
                shape = tf.constant([k, n], tf.int64)
                t = _time_per_call(
                    lambda a: sk_ops.dense_csc_matmul(a, ip, ix, vals, shape), x, min_time)
                sparse_rows_.append((rows, k, n, int(ix.shape[0]), t))
    d = np.array(dense_rows, float)
    s = np.array(sparse_rows_, float)
    def features(r, work):  # fixed, weight, mac, io
        return np.stack([np.ones(len(r)), work, r[:, 0] * work, r[:, 0] * (r[:, 1] + r[:, 2])], 1)

    dc = _fit(features(d, d[:, 1] * d[:, 2]), d[:, 4])
    sc = _fit(features(s, s[:, 3]), s[:, 4])
    constants = {**cost_model().constants, "dense": dict(zip(_KEYS, dc)),
                 "sparse": dict(zip(_KEYS, sc))}
    measurements = {"dense": dense_rows, "sparse": sparse_rows_}
    if conv:
        conv_dense, conv_sparse = _calibrate_conv(rng, quick, min_time)
        cd = np.array(conv_dense, float)
        cs = np.array(conv_sparse, float)
        constants["conv_dense"] = dict(zip(_KEYS, _fit(features(cd, cd[:, 1] * cd[:, 2]),
                                                       cd[:, 4])))
        constants["conv_sparse"] = dict(zip(_KEYS, _fit(features(cs, cs[:, 3]), cs[:, 4])))
        measurements.update(conv_dense=conv_dense, conv_sparse=conv_sparse)
    model = CostModel(constants, source="calibrated")
    model.measurements = measurements
    if save:
        path = path or cache_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"constants": model.constants, "tf_version": tf.__version__,
                       "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f,
                      indent=1)
        model.source = path
        set_cost_model(model)
    return model


# ---- what the layers call ------------------------------------------------------------------

def attach(layer):
    """Give a `_PrunableKernel` layer the `_sparse_rows` variable its `_switch` compares a call's
    row count with (made eagerly, also when Keras builds the layer inside a traced step). Call
    it in build, before `_build_sparse()`."""
    import tensorflow as tf

    with tf.init_scope():
        layer._sparse_rows = tf.Variable([MAX_ROWS, 0], dtype=tf.int32, trainable=False,
                                         name="sparse_rows")
    layer._sparse_rows_py = (MAX_ROWS, 0)


def refresh(layer, k, n, nnz, kind="matmul", dense_kn=None, strided=False):
    """Set the layer's rows for the sparse product of its (k, n) kernel with `nnz` kept weights
    (eager, when the mask changes: the layer's `_refresh_more`)."""
    rows = sparse_rows(k, n, nnz, kind, dense_kn, strided)
    layer._sparse_rows.assign(rows)
    layer._sparse_rows_py = rows
    layer._dispatch_work = (int(nnz), kind)  # for eager_threads: multiply-adds per row
    return rows


# An eager call of a sparse op whose 2-thread time the cost model predicts below this runs on
# one thread. In eager mode every op call comes after Python work (Keras' ~0.4 ms per layer), by
# which time libgomp's second worker sleeps (the throttled spin of `_openmp`); the op then waits
# until the scheduler runs it. On an idle machine that is a futex wake (~0.05 ms); with the
# cores busy, as on a shared machine, a time slice: a 3x3 64->64 sparse convolution on 16x16
# at batch 1 (0.5 ms on one thread) took a median 9-12 ms with two threads called eagerly after
# other work at load ~4, and 0.5-0.8 ms on one (docs/performance.md, whole models). Below this
# bound one thread loses at most about as much on an idle machine (the second thread's half).
# In a traced function the ops run back to back on TensorFlow's threads: not changed there.
EAGER_SERIAL_SECONDS = 5e-4


def eager_threads(work, kind="matmul"):
    """A context manager for one eager call of a sparse op doing `work` multiply-adds: one
    kernel thread where the cost model predicts the call under `EAGER_SERIAL_SECONDS` (see
    there), else nothing. Nothing either inside a traced function (the thread count is read
    when the op runs, not when it is traced) or when the user chose the thread count
    (`sparsekeras.set_num_threads`).

    Args:
        work: the call's multiply-adds (rows x stored weights), an int or None (unknown:
            nothing is changed).
        kind: "matmul" or "conv" (which constants predict the time).

    Returns:
        A context manager.
    """
    import tensorflow as tf

    from sparsekeras import _kernels, _threads

    if work is None or not tf.executing_eagerly() or _kernels._num_threads_is_set():
        return contextlib.nullcontext()
    mac = cost_model().constants["conv_sparse" if kind == "conv" else "sparse"]["mac"]
    if mac * float(work) >= EAGER_SERIAL_SECONDS:
        return contextlib.nullcontext()
    return _threads.num_threads(1)


def layer_eager_threads(layer, rows):
    """`eager_threads` for a call of `rows` rows of a layer `refresh` has set up (else
    nothing)."""
    info = getattr(layer, "_dispatch_work", None)
    if info is None or not isinstance(rows, (int, np.integer)):
        return contextlib.nullcontext()
    return eager_threads(int(rows) * info[0], info[1])


def rows_of(x, contracted=1):
    """The row count of x's 2-D view (the product's M): the product of x's dimensions but the
    last `contracted` ones. A Python int where those are static, else a scalar int32 tensor."""
    import tensorflow as tf

    lead = x.shape[:x.shape.rank - contracted]
    if lead.is_fully_defined():
        return int(np.prod(lead.as_list(), dtype=np.int64))
    shape = tf.shape(x)
    return shape[0] if lead.rank == 1 else tf.reduce_prod(shape[:x.shape.rank - contracted])
