"""The dense/sparse choice per call (sparsekeras._dispatch): the cost model's break-even rows,
that the layers follow it (eagerly and inside tf.function, with a static or a dynamic batch),
and that either path gives the Keras twin's outputs and gradients."""
import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import _dispatch
from sparsekeras.layers import CompactDense, SparseDense, SparseEinsumDense
from sparsekeras.layers._base import _structure_from_mask

RNG = np.random.default_rng(7)


@pytest.fixture
def model_with_rows(monkeypatch):
    """Install a cost model whose sparse interval for every layer is [lo, hi]."""
    def install(lo, hi):
        monkeypatch.setattr(_dispatch, "sparse_rows", lambda *args, **kwargs: (lo, hi))
    return install


@pytest.fixture(autouse=True)
def fresh_model():
    previous = _dispatch.set_cost_model(None)
    yield
    _dispatch.set_cost_model(previous)


# ---- the cost model -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_interval_matches_the_predicted_times(seed):
    rng = np.random.default_rng(seed)
    constants = {kind: {key: float(rng.uniform(0, 1) * scale) for key, scale in
                        (("fixed", 2e-5), ("weight", 2e-10), ("mac", 2e-11), ("io", 1e-10))}
                 for kind in ("dense", "sparse")}
    model = _dispatch.CostModel(constants)
    for _ in range(20):
        k, n = (int(v) for v in rng.integers(1, 3000, size=2))
        nnz = int(rng.integers(0, k * n + 1))
        lo, hi = model.sparse_rows(k, n, nnz)
        for rows in (1, 2, 3, 7, 31, 100, 257, 1000, 4096, 70000):
            faster = model.sparse_time(rows, k, n, nnz) < model.dense_time(rows, k, n)
            assert faster == (lo <= rows <= hi), (k, n, nnz, rows, lo, hi)


def test_default_model_orders_layers_sensibly():
    m = _dispatch.CostModel()
    big_lo, big_hi = m.sparse_rows(4096, 4096, int(0.1 * 4096 * 4096))
    assert (big_lo, big_hi) == (1, _dispatch.MAX_ROWS)           # 90%: sparse at every batch
    assert m.sparse_rows(4096, 4096, 4096 * 4096 // 2)[0] > 10 ** 6  # 50%: dense
    tiny_lo, _ = m.sparse_rows(100, 10, 100)
    assert tiny_lo > 256                                            # fixed cost dominates
    lo_70, hi_70 = m.sparse_rows(4096, 4096, int(0.3 * 4096 * 4096))
    assert lo_70 == 1 and 1 < hi_70 < 256                          # sparse at small batches only


def test_bad_constants_are_refused():
    with pytest.raises(ValueError, match="dense.mac"):
        _dispatch.CostModel({"dense": {"mac": -1.0}})
    with pytest.raises(ValueError, match="Unknown cost-model part"):
        _dispatch.CostModel({"gpu": {}})
    with pytest.raises(ValueError, match="Unknown cost constant"):
        _dispatch.CostModel({"dense": {"flops": 1.0}})
    with pytest.raises(ValueError, match="CostModel or None"):
        _dispatch.set_cost_model({"dense": {}})


def test_calibration_file_is_read_and_a_bad_one_said(tmp_path, monkeypatch):
    path = tmp_path / "dispatch.json"
    monkeypatch.setenv("SPARSEKERAS_DISPATCH_CACHE", str(path))
    assert _dispatch.cost_model(reload=True).source == "built-in"
    path.write_text(json.dumps({"constants": {"sparse": {"fixed": 1.0}}}))
    model = _dispatch.cost_model(reload=True)
    assert model.source == str(path) and model.constants["sparse"]["fixed"] == 1.0
    assert model.sparse_rows(784, 300, 23520)[0] > 10 ** 4  # 1 s per sparse call: dense
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring the dispatch calibration file"):
        assert _dispatch.cost_model(reload=True).source == "built-in"


def test_quick_calibration_fits_and_saves(tmp_path):
    path = tmp_path / "sub" / "dispatch.json"
    model = _dispatch.calibrate(save=True, quick=True, path=str(path))
    assert _dispatch.cost_model() is model
    saved = json.loads(path.read_text())
    assert set(saved["constants"]) == {"dense", "sparse", "conv_dense", "conv_sparse"}
    assert all(np.isfinite(v) and v >= 0 for part in saved["constants"].values()
               for v in part.values())
    assert len(model.measurements["sparse"]) > 0
    # the convolution parts are fitted too, from their own measurements
    assert len(model.measurements["conv_dense"]) > 0 and len(model.measurements["conv_sparse"]) > 0
    assert model.constants["conv_sparse"] == saved["constants"]["conv_sparse"]
    kept = _dispatch.calibrate(quick=True, conv=False)
    assert "conv_dense" not in kept.measurements
    assert kept.constants["conv_dense"] == model.constants["conv_dense"]  # the current ones


# ---- the layers follow the model ----------------------------------------------------------

def _counting(layer):
    """Wrap the layer's two products so that each counts its runs (also inside a graph)."""
    runs = {"sparse": tf.Variable(0), "dense": tf.Variable(0)}
    for name, attr in (("sparse", "_sparse_matmul"), ("dense", "_dense_matmul")):
        fn = getattr(layer, attr)

        def wrapped(x, fn=fn, name=name):
            with tf.control_dependencies([runs[name].assign_add(1)]):
                return tf.identity(fn(x))
        setattr(layer, attr, wrapped)
    return runs


def _pruned_dense(k=48, n=40, sparsity=0.9, **kwargs):
    layer = SparseDense(n, **kwargs)
    layer.build((None, k))
    layer.set_mask(RNG.random((k, n)) >= sparsity)
    return layer


@pytest.mark.parametrize("mode", ["eager", "static", "dynamic"])
def test_choice_follows_the_rows(model_with_rows, mode):
    model_with_rows(8, 100)
    layer = _pruned_dense()
    assert layer._sparse_rows_py == (8, 100)
    runs = _counting(layer)
    if mode == "eager":
        call = layer
    elif mode == "static":
        call = tf.function(lambda x: layer(x))
    else:
        call = tf.function(lambda x: layer(x),
                           input_signature=[tf.TensorSpec([None, 48], tf.float32)])
    expected = {"sparse": 0, "dense": 0}
    for batch in (1, 7, 8, 64, 100, 101, 300):
        call(tf.constant(RNG.standard_normal((batch, 48)), tf.float32))
        expected["sparse" if 8 <= batch <= 100 else "dense"] += 1
        assert {k: int(v.numpy()) for k, v in runs.items()} == expected, batch


def test_rows_count_every_leading_dimension(model_with_rows):
    model_with_rows(10, 10 ** 6)
    layer = _pruned_dense()
    runs = _counting(layer)
    layer(tf.ones((2, 3, 48)))            # 6 rows: dense
    layer(tf.ones((2, 5, 48)))            # 10 rows: sparse
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, None, 48])])
    fn(tf.ones((3, 4, 48)))               # 12 rows, known at run time only: sparse
    fn(tf.ones((1, 4, 48)))               # 4: dense
    assert int(runs["sparse"].numpy()) == 2 and int(runs["dense"].numpy()) == 2


def test_switch_sparsity_stays_a_floor(model_with_rows):
    model_with_rows(1, 10 ** 6)  # the model would always pick sparse
    layer = _pruned_dense(sparsity=0.5)  # below the default switch sparsity
    runs = _counting(layer)
    layer(tf.ones((4, 48)))
    tf.function(lambda x: layer(x))(tf.ones((4, 48)))
    assert int(runs["sparse"].numpy()) == 0 and not layer.uses_sparse_kernels


def test_mask_change_updates_the_rows():
    layer = _pruned_dense(k=512, n=512, sparsity=0.95)
    dense_model = _dispatch.cost_model()
    assert layer._sparse_rows_py == dense_model.sparse_rows(512, 512, int(
        np.count_nonzero(keras.ops.convert_to_numpy(layer.mask))))
    np.testing.assert_array_equal(layer._sparse_rows.numpy(), layer._sparse_rows_py)
    layer.set_mask(np.ones((512, 512)))
    assert layer._sparse_rows_py[0] > layer._sparse_rows_py[1]  # dense layer: never sparse


# ---- same outputs and gradients on every path ---------------------------------------------

def _twin(layer):
    twin = keras.layers.Dense(layer.units, activation=layer.activation)
    twin.build((None, layer.mask.shape[0]))
    twin.kernel.assign(keras.ops.convert_to_numpy(layer.kernel)
                       * keras.ops.convert_to_numpy(layer.mask))
    twin.bias.assign(keras.ops.convert_to_numpy(layer.bias))
    return twin


def _tensors(layer, x, variables):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.cos(y))
    grads = tape.gradient(loss, [x] + variables)
    return [y] + [tf.convert_to_tensor(g) for g in grads]


def _value_and_grads(layer, x, variables, graph=False):
    """The output and the gradients w.r.t. x and `variables` (NumPy), eagerly or traced."""
    fn = tf.function(lambda: _tensors(layer, x, variables)) if graph else \
        (lambda: _tensors(layer, x, variables))
    return [np.asarray(t) for t in fn()]


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("shape", [(5, 48), (2, 3, 48)])
def test_forced_path_matches_keras(model_with_rows, path, graph, shape):
    model_with_rows(*((1, 10 ** 6) if path == "sparse" else (10 ** 6, 0)))
    layer = _pruned_dense(activation="relu")
    layer.bias.assign(RNG.standard_normal(40).astype(np.float32))
    runs = _counting(layer)
    twin = _twin(layer)
    x = tf.constant(RNG.standard_normal(shape), tf.float32)
    got = _value_and_grads(layer, x, [layer.kernel, layer.bias], graph)
    want = _value_and_grads(twin, x, [twin.kernel, twin.bias])
    assert int(runs[path].numpy()) >= 1
    assert int(runs["dense" if path == "sparse" else "sparse"].numpy()) == 0
    mask = keras.ops.convert_to_numpy(layer.mask)
    for i, (g, w) in enumerate(zip(got, want)):
        if i == 2:  # the kernel's gradient: the masked entries do not matter (constraint)
            g, w = g * mask, w * mask
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_einsum_paths_match_keras(model_with_rows, path):
    model_with_rows(*((1, 10 ** 6) if path == "sparse" else (10 ** 6, 0)))
    layer = SparseEinsumDense("abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de")
    layer.build((None, 6, 32))
    mask = RNG.random((32, 4, 8)) >= 0.9
    layer.set_mask(mask)
    twin = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de")
    twin.build((None, 6, 32))
    twin.kernel.assign(keras.ops.convert_to_numpy(layer.kernel) * mask)
    twin.bias.assign(RNG.standard_normal((4, 8)).astype(np.float32))
    layer.bias.assign(keras.ops.convert_to_numpy(twin.bias))
    assert layer._sparse_rows_py == ((1, 10 ** 6) if path == "sparse" else (10 ** 6, 0))
    x = tf.constant(RNG.standard_normal((3, 6, 32)), tf.float32)
    for graph in (False, True):
        got = _value_and_grads(layer, x, [layer.kernel], graph)
        want = _value_and_grads(twin, x, [twin.kernel])
        got[2], want[2] = got[2] * mask, want[2] * mask
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compact_fast_path_matches_keras(block, dtype):
    k, n = 40, 32
    kernel = RNG.standard_normal((k, n))
    keep = np.repeat(RNG.random((k, n // 8)) >= 0.8, 8, axis=1) if block > 1 else \
        RNG.random((k, n)) >= 0.8
    kernel = (kernel * keep).astype(dtype)
    bias = RNG.standard_normal(n).astype(dtype)
    layer = CompactDense.from_kernel(kernel, bias, block=block, activation="tanh", dtype=dtype)
    twin = keras.layers.Dense(n, activation="tanh", dtype=dtype)
    twin.build((None, k))
    twin.kernel.assign(kernel)
    twin.bias.assign(bias)
    np.testing.assert_array_equal(layer.to_dense_kernel(), kernel)
    for shape in ((1, k), (9, k), (2, 3, k)):
        x = tf.constant(RNG.standard_normal(shape), dtype)
        for graph in (False, True):
            got = _value_and_grads(layer, x, [layer.values], graph)
            want = _value_and_grads(twin, x, [twin.kernel])
            tol = 1e-4 if dtype == "float32" else 1e-10
            np.testing.assert_allclose(got[0], want[0], rtol=tol, atol=tol)
            np.testing.assert_allclose(got[1], want[1], rtol=tol, atol=tol)
            # the values' gradient is the kernel's at the stored positions
            positions = _structure_from_mask(keep, block)["positions"]
            np.testing.assert_allclose(got[2], want[2].reshape(-1)[positions], rtol=tol,
                                       atol=tol)


def test_stripped_mlp_matches_dense_at_every_batch():
    dense = keras.Sequential([keras.Input((30,)), keras.layers.Dense(24, activation="relu"),
                              keras.layers.Dense(8)])
    pruned = sparsekeras.sparsify(dense)
    for layer in pruned.layers:
        layer.set_mask(RNG.random(tuple(layer.mask.shape)) >= 0.85)
    stripped = sparsekeras.strip(pruned)
    reference = sparsekeras.densify(pruned)
    for batch in (1, 3, 64):
        x = RNG.standard_normal((batch, 30)).astype(np.float32)
        want = reference.predict_on_batch(x)
        np.testing.assert_allclose(stripped(x), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stripped.predict_on_batch(x), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pruned.predict_on_batch(x), want, rtol=1e-5, atol=1e-5)


# ---- convolutions -------------------------------------------------------------------------

def _conv_twin_grads(layer, twin, x, variables, twin_variables):
    got = _value_and_grads(layer, x, variables)
    want = _value_and_grads(twin, x, twin_variables)
    return got, want


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("kind", ["conv", "depthwise"])
def test_conv_paths_match_keras(model_with_rows, path, kind):
    model_with_rows(*((1, 10 ** 6) if path == "sparse" else (10 ** 6, 0)))
    if kind == "conv":
        twin = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")
        layer_cls = sparsekeras.layers.SparseConv2D
    else:
        twin = keras.layers.DepthwiseConv2D(3, padding="same")
        layer_cls = sparsekeras.layers.SparseDepthwiseConv2D
    twin.build((None, 9, 9, 6))
    layer = layer_cls.from_keras(twin)
    target = layer.pruning_targets()[0]
    mask = RNG.random(tuple(target.mask.shape)) >= 0.85
    target.set_mask(mask)
    kernel = twin.weights[0]
    kernel.assign(keras.ops.convert_to_numpy(kernel) * mask)
    assert layer._sparse_rows_py == ((1, 10 ** 6) if path == "sparse" else (10 ** 6, 0))
    x = tf.constant(RNG.standard_normal((2, 9, 9, 6)), tf.float32)
    for graph in (False, True):
        got = _value_and_grads(layer, x, [layer.weights[0]], graph)
        want = _value_and_grads(twin, x, [kernel], graph)
        got[2], want[2] = got[2] * mask, want[2] * mask
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_conv_choice_follows_output_positions(model_with_rows):
    model_with_rows(100, 10 ** 6)  # sparse from 100 output positions on
    layer = sparsekeras.layers.SparseConv2D(4, 3, padding="same")
    layer.build((None, None, None, 3))
    layer.set_mask(RNG.random((3, 3, 3, 4)) >= 0.9)
    runs = {"sparse": tf.Variable(0), "dense": tf.Variable(0)}
    sparse_conv = layer._sparse_conv

    def counted(*args, **kwargs):
        with tf.control_dependencies([runs["sparse"].assign_add(1)]):
            return tf.identity(sparse_conv(*args, **kwargs))
    layer._sparse_conv = counted
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, None, None, 3])])
    fn(tf.ones((1, 8, 8, 3)))     # 64 positions: dense
    fn(tf.ones((2, 8, 8, 3)))     # 128: sparse
    layer(tf.ones((1, 10, 10, 3)))  # eager, 100: sparse
    layer(tf.ones((1, 9, 9, 3)))    # 81: dense
    assert int(runs["sparse"].numpy()) == 2


@pytest.mark.parametrize("rows", [(1, 10 ** 6), (10 ** 6, 0), (50, 10 ** 6)])
def test_compact_conv_dense_path_matches_sparse(rows):
    kernel = RNG.standard_normal((3, 3, 5, 6)).astype(np.float32)
    kernel *= RNG.random(kernel.shape) >= 0.8
    layer = sparsekeras.layers.CompactConv2D.from_kernel(kernel, RNG.standard_normal(6),
                                                         strides=(2, 1), padding="same")
    layer.__dict__["_sparse_rows_cache"] = rows
    twin = layer.to_keras()
    x = tf.constant(RNG.standard_normal((2, 7, 8, 5)), tf.float32)  # 2 x 4 x 8 = 64 positions
    for graph in (False, True):
        got = _value_and_grads(layer, x, [layer.values], graph)
        want = _value_and_grads(twin, x, [twin.kernel], graph)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
        positions = _structure_from_mask(kernel.reshape(-1, 6) != 0)["positions"]
        np.testing.assert_allclose(got[2], want[2].reshape(-1)[positions], rtol=1e-4, atol=1e-4)


# ---- eager calls: one kernel thread for small products --------------------------------------

def test_eager_threads_chooses_one_thread_for_small_eager_work():
    from sparsekeras import _kernels

    sparsekeras.set_num_threads(None)  # the default (conftest's fixture sets it explicitly)
    before = (_kernels._get_num_threads(), _kernels._num_threads_is_set())
    small = 1000
    large = int(10 * _dispatch.EAGER_SERIAL_SECONDS
                / _dispatch.cost_model().constants["sparse"]["mac"])
    with _dispatch.eager_threads(small):
        assert _kernels._get_num_threads() == 1
    assert (_kernels._get_num_threads(), _kernels._num_threads_is_set()) == before
    with _dispatch.eager_threads(large):
        assert _kernels._get_num_threads() == before[0]
    with _dispatch.eager_threads(None):
        assert _kernels._get_num_threads() == before[0]

    seen = []

    @tf.function
    def traced():
        with _dispatch.eager_threads(small):
            seen.append(_kernels._num_threads_is_set())
        return tf.constant(0)

    traced()
    assert seen == [before[1]]  # not changed while tracing: the op runs later
    with sparsekeras.num_threads(2):  # the user's choice wins
        with _dispatch.eager_threads(small):
            assert _kernels._get_num_threads() == 2


def _spy(monkeypatch, owner, name):
    """Replace owner.name by a wrapper recording the kernel thread count at each call."""
    from sparsekeras import _kernels

    seen, original = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        seen.append(_kernels._get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return seen


@pytest.mark.parametrize("layer_kind", ["compact", "pruning", "conv"])
def test_layers_call_small_eager_products_on_one_thread(monkeypatch, layer_kind):
    from sparsekeras import _kernels
    from sparsekeras import ops as sk_ops
    from sparsekeras.layers import CompactConv2D, SparseConv2D
    from sparsekeras.layers import dense as dense_module

    sparsekeras.set_num_threads(None)  # the default (conftest's fixture sets it explicitly)
    if _kernels._get_num_threads() < 2:
        pytest.skip("needs the default thread count of at least 2 to tell the paths apart")
    default = _kernels._get_num_threads()
    if layer_kind == "compact":
        w = RNG.standard_normal((64, 32)).astype(np.float32) * (RNG.random((64, 32)) < 0.1)
        layer = CompactDense.from_kernel(w, block=1)
        seen = _spy(monkeypatch, sk_ops._ops, "sparse_keras_dense_csc_mat_mul")
        x = RNG.standard_normal((2, 64)).astype(np.float32)
    elif layer_kind == "pruning":
        layer = SparseDense(32, compute="auto")
        layer.build((None, 64))
        layer.set_mask(RNG.random((64, 32)) < 0.1)
        layer._sparse_rows_py = (1, _dispatch.MAX_ROWS)  # the sparse path at every batch
        seen = _spy(monkeypatch, dense_module, "masked_csc_product")
        x = RNG.standard_normal((2, 64)).astype(np.float32)
    else:
        k = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32) * (RNG.random((3, 3, 8, 8)) < 0.1)
        layer = CompactConv2D.from_kernel(k)
        seen = _spy(monkeypatch, sk_ops, "csr_conv2d")
        x = RNG.standard_normal((1, 6, 6, 8)).astype(np.float32)
    expected = np.asarray(layer(x))
    assert seen == [1]
    assert _kernels._get_num_threads() == default and not _kernels._num_threads_is_set()
    with sparsekeras.num_threads(default):  # same result on the user's thread count
        np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-6, atol=1e-6)
    assert seen == [1, default]


# ---- a stored depthwise kernel: its dense path is the depthwise convolution ------------------

@pytest.mark.parametrize("strides,padding,multiplier", [((1, 1), "same", 1), ((2, 2), "valid", 2),
                                                        ((1, 1), "valid", 2)])
def test_stored_depthwise_dense_path_is_the_depthwise_convolution(strides, padding, multiplier):
    from sparsekeras.layers import CompactConv2D

    rng = np.random.default_rng(3)
    c = 6
    kernel = rng.standard_normal((3, 3, c, multiplier)).astype(np.float32)
    kernel *= rng.random(kernel.shape) < 0.3
    layer = CompactConv2D.from_depthwise_kernel(kernel, strides=strides, padding=padding)
    assert layer.depth_multiplier == multiplier
    twin = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding,
                                        depth_multiplier=multiplier, use_bias=False)
    x = rng.standard_normal((2, 9, 9, c)).astype(np.float32)
    twin.build(x.shape)
    twin.kernel.assign(kernel)
    want = np.asarray(twin(x))
    xt = tf.constant(x)
    for path in (layer._dense_conv, layer._sparse_conv):
        np.testing.assert_allclose(np.asarray(path(xt)), want, rtol=1e-4, atol=1e-4)
    with tf.GradientTape() as tape:  # the values get their gradient through the dense path too
        loss = tf.reduce_sum(layer._dense_conv(xt) ** 2)
    grad = tape.gradient(loss, layer.values)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer._sparse_conv(xt) ** 2)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(tape.gradient(loss, layer.values)),
                               rtol=1e-3, atol=1e-3)
    # the cost model compares with the depthwise kernel's work: dense from fewer rows than a
    # full convolution of the same stored weights would be
    full = CompactConv2D.from_depthwise_kernel(kernel, strides=strides, padding=padding,
                                               depth_multiplier=None)
    assert full.depth_multiplier is None
    assert layer._sparse_rows()[1] <= full._sparse_rows()[1]
    again = CompactConv2D.from_config(layer.get_config())
    assert again.depth_multiplier == multiplier
    with pytest.raises(ValueError, match="depth_multiplier"):
        CompactConv2D(filters=6, kernel_size=3, nnz=1, depth_multiplier=4)


def test_stripped_depthwise_layer_keeps_its_multiplier():
    model = keras.Sequential([keras.Input((8, 8, 4)),
                              keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")])
    sparse = sparsekeras.sparsify(model)
    sparse.get_layer("dw").set_mask(RNG.random((3, 3, 4, 2)) < 0.2)
    stripped = sparsekeras.strip(sparse)
    assert stripped.get_layer("dw").depth_multiplier == 2
    x = RNG.standard_normal((2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(stripped(x)), np.asarray(sparse(x)), rtol=1e-4,
                               atol=1e-4)


# ---- the choice made while tracing -----------------------------------------------------------

def _graph_ops(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    ops = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:
        ops |= {node.op for node in f.node_def}
    return ops


@pytest.mark.parametrize("sparsity, sparse", [(0.5, False), (0.95, True)])
def test_static_rows_are_chosen_while_tracing(model_with_rows, sparsity, sparse):
    """A static row count (or a mask below switch_sparsity, whatever the rows) is decided when
    the function is traced: no tf.cond in the graph, only the chosen product."""
    model_with_rows(1, 10 ** 6)
    layer = _pruned_dense(sparsity=sparsity)
    x = tf.constant(RNG.standard_normal((16, 48)), tf.float32)
    ops = _graph_ops(tf.function(lambda x: layer(x)), x)
    assert not ops & {"If", "StatelessIf"}, sorted(ops)
    assert ("SparseKeras>DenseCscMatMul" in ops) == sparse and ("MatMul" in ops) != sparse
    dynamic = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, 48])])
    ops = _graph_ops(dynamic, x)  # rows known at run time only: a cond once the mask is sparse
    assert bool(ops & {"If", "StatelessIf"}) == sparse, sorted(ops)
    want = x.numpy() @ (layer.kernel.numpy() * layer.mask.numpy()) + layer.bias.numpy()
    for fn in (tf.function(lambda x: layer(x)), dynamic):
        np.testing.assert_allclose(fn(x).numpy(), want, rtol=1e-4, atol=1e-4)


def _stale_warnings(masks, layer):
    """The "traced before" warnings of setting each mask of `masks` on `layer` in turn."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for mask in masks:
            layer.set_mask(mask)
    return [str(w.message) for w in record if "traced before" in str(w.message)]


@pytest.mark.parametrize("interval, sparse", [((1, _dispatch.MAX_ROWS), True),
                                              ((_dispatch.MAX_ROWS, 0), False)])
def test_rows_known_at_run_time_need_no_cond_when_the_interval_decides(model_with_rows,
                                                                      interval, sparse):
    model_with_rows(*interval)
    layer = _pruned_dense(sparsity=0.95)
    runs = _counting(layer)
    x = tf.constant(RNG.standard_normal((16, 48)), tf.float32)
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, 48])])
    ops = _graph_ops(fn, x)
    assert not ops & {"If", "StatelessIf"}, sorted(ops)
    want = x.numpy() @ (layer.kernel.numpy() * layer.mask.numpy()) + layer.bias.numpy()
    np.testing.assert_allclose(fn(x).numpy(), want, rtol=1e-4, atol=1e-4)
    assert int(runs["sparse" if sparse else "dense"].numpy()) == 1
    # a mask that makes the interval partial marks the traced choice stale
    model_with_rows(8, 100)
    assert _stale_warnings([layer.mask.numpy()], layer)


def test_a_mask_change_after_tracing_warns_and_keeps_the_results(model_with_rows):
    model_with_rows(1, 10 ** 6)
    layer = _pruned_dense(sparsity=0.5)
    runs = _counting(layer)
    fn = tf.function(lambda x: layer(x))
    x = tf.constant(RNG.standard_normal((16, 48)), tf.float32)
    fn(x)  # traced dense (the mask is below switch_sparsity)
    assert {k: int(v.numpy()) for k, v in runs.items()} == {"sparse": 0, "dense": 1}
    stale = _stale_warnings([layer.mask.numpy() * (RNG.random((48, 40)) >= 0.9)], layer)  # sparse
    assert len(stale) == 1 and f"SparseDense '{layer.name}'" in stale[0], stale
    want = x.numpy() @ (layer.kernel.numpy() * layer.mask.numpy()) + layer.bias.numpy()
    np.testing.assert_allclose(fn(x).numpy(), want, rtol=1e-4, atol=1e-4)
    assert int(runs["dense"].numpy()) == 2  # the traced function keeps its choice
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-4, atol=1e-4)  # eager: sparse
    assert int(runs["sparse"].numpy()) == 1


def test_a_stale_layer_warns_once(model_with_rows):
    model_with_rows(1, 10 ** 6)
    layer = _pruned_dense(sparsity=0.5)
    tf.function(lambda x: layer(x))(tf.ones((4, 48)))
    masks = [RNG.random((48, 40)) >= sparsity for sparsity in (0.92, 0.95, 0.97)]
    assert len(_stale_warnings(masks, layer)) == 1


@pytest.mark.parametrize("static_batch", [True, False])
def test_pruning_callback_retraces_when_the_choice_changes(model_with_rows, static_batch):
    """GradualPruning crosses switch_sparsity during fit: the step traced dense is traced
    again (no warning, which the test configuration turns into an error) and computes sparse."""
    from sparsekeras.callbacks import GradualPruning
    from sparsekeras.schedules import PolynomialDecay
    model_with_rows(1, 10 ** 6)
    model = keras.Sequential([keras.Input((48,)), SparseDense(40, name="h"), SparseDense(3)])
    runs = _counting(model.get_layer("h"))
    model.compile("adam", "mse")
    x, y = RNG.random((64, 48)), RNG.random((64, 3))
    if static_batch:
        x, y = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True), None
    model.fit(x, y, batch_size=None if static_batch else 16, epochs=3, verbose=0, shuffle=False,
              callbacks=[GradualPruning(PolynomialDecay(0.0, 0.9, 0, 4, frequency=1),
                                         compact=False)])
    assert model.get_layer("h").sparsity == pytest.approx(0.9, abs=0.01)
    assert int(runs["dense"].numpy()) >= 1 and int(runs["sparse"].numpy()) >= 6, runs
    before = int(runs["sparse"].numpy())
    model.predict(RNG.random((16, 48)), verbose=0)
    assert int(runs["sparse"].numpy()) == before + 1


@pytest.mark.parametrize("callback", ["SET", "RigL"])
def test_dst_masks_after_a_traced_fit_retrace_without_a_warning(model_with_rows, callback):
    """A dense fit traces the step with the dense path; SET / RigL (not compacting) then give
    the layers 90% masks at the start of their fit (the optimizer is past step 0, but every
    mask is all ones) and update them: the step is retraced (no warning, which the test
    configuration turns into an error) and computes sparse."""
    model_with_rows(1, 10 ** 6)
    model = keras.Sequential([keras.Input((48,)), SparseDense(40, name="h"), SparseDense(3)])
    runs = _counting(model.get_layer("h"))
    model.compile("adam", "mse")
    x, y = RNG.random((64, 48)), RNG.random((64, 3))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(runs["sparse"].numpy()) == 0 and int(runs["dense"].numpy()) == 4
    kwargs = dict(data=(x, y), batch_size=16) if callback == "RigL" else {}
    cb = getattr(sparsekeras.callbacks, callback)(sparsity=0.9, distribution="uniform",
                                                  update_every=2, compact=False, seed=0,
                                                  **kwargs)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert model.get_layer("h").sparsity == pytest.approx(0.9, abs=0.02)
    # 8 training steps sparse; RigL also calls the layer for its dense gradient at updates
    assert int(runs["sparse"].numpy()) == 8, runs
    assert int(runs["dense"].numpy()) == 4 if callback == "SET" else int(runs["dense"].numpy()) > 4
