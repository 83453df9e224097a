"""Keras layers `SparseDense` and `CompactDense`: shapes, weights, config, training, compute paths."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras.layers import CompactDense, SparseDense

from layer_helper import _np, assert_config_has_init_parameters, dense_reference, run_layer_test


def _random_mask(shape, keep, seed=0):
    return np.random.default_rng(seed).random(shape) < keep


@pytest.fixture
def dtype_policy():
    """Restore the global dtype policy after a test that changes it."""
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


# ---- the layer-test helper ----------------------------------------------------------------

@pytest.mark.parametrize("input_shape, output_shape", [((4, 6), (4, 8)), ((2, 3, 6), (2, 3, 8))],
                         ids=["rank2", "rank3"])
@pytest.mark.parametrize("compute", ["auto", "dense", "sparse"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_sparse_dense_layer(input_shape, output_shape, compute, use_bias):
    run_layer_test(SparseDense, dict(units=8, activation="relu", use_bias=use_bias,
                                     compute=compute, switch_sparsity=0.5),
                   input_shape, output_shape,
                   expected_num_trainable_weights=2 if use_bias else 1,
                   expected_num_non_trainable_weights=1)


@pytest.mark.parametrize("input_shape, output_shape", [((4, 6), (4, 8)), ((2, 3, 6), (2, 3, 8))],
                         ids=["rank2", "rank3"])
def test_sparse_dense_layer_masked(input_shape, output_shape):
    """Round trip and training with a sparse mask on the sparse compute path."""
    def set_mask(layer, x):
        layer.set_mask(_random_mask(layer.mask.shape, 0.3, seed=1))
        assert layer.uses_sparse_kernels

    run_layer_test(SparseDense, dict(units=8, switch_sparsity=0.5), input_shape, output_shape,
                   expected_num_trainable_weights=2, expected_num_non_trainable_weights=1,
                   build_fn=set_mask)


@pytest.mark.parametrize("input_shape, output_shape", [((4, 6), (4, 8)), ((2, 3, 6), (2, 3, 8))],
                         ids=["rank2", "rank3"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_compact_dense_layer(input_shape, output_shape, use_bias):
    layer = run_layer_test(CompactDense, dict(units=8, sparsity=0.5, activation="tanh",
                                              use_bias=use_bias, seed=3),
                           input_shape, output_shape,
                           expected_num_trainable_weights=2 if use_bias else 1,
                           expected_num_non_trainable_weights=2)
    assert layer.nnz == 24


def test_sparse_dense_config_has_every_init_parameter():
    layer = SparseDense(4, activation="relu", use_bias=False, kernel_initializer="ones",
                        bias_initializer="ones", kernel_regularizer="l2", bias_regularizer="l1",
                        activity_regularizer="l2", kernel_constraint="non_neg",
                        bias_constraint="non_neg", switch_sparsity=0.3, compute="sparse",
                        prunable=False, name="sd")
    assert_config_has_init_parameters(layer)
    clone = SparseDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.switch_sparsity, clone.compute, clone.prunable) == (0.3, "sparse", False)
    assert isinstance(clone.kernel_constraint, keras.constraints.NonNeg)


def test_compact_dense_config_has_every_init_parameter():
    layer = CompactDense(4, sparsity=0.5, activation="relu", use_bias=False,
                         kernel_initializer="ones", bias_initializer="ones",
                         kernel_regularizer="l2", bias_regularizer="l1", seed=7)
    assert_config_has_init_parameters(layer)
    layer.build((None, 6))
    assert_config_has_init_parameters(layer)
    assert layer.get_config()["nnz"] == 12


def test_user_kernel_constraint_applies_with_mask():
    layer = SparseDense(6, kernel_constraint="non_neg", kernel_initializer="random_normal")
    inputs = keras.Input((5,))
    model = keras.Model(inputs, layer(inputs))
    mask = _random_mask((5, 6), 0.5, seed=2)
    layer.set_mask(mask)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((16, 5)).astype("float32"),
              rng.standard_normal((16, 6)).astype("float32"), epochs=1, verbose=0)
    kernel = _np(layer.kernel)
    assert (kernel >= 0).all()
    assert (kernel[~mask] == 0).all()


# ---- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(units=0), "Received: units=0"),
    (dict(units=-3), "Received: units=-3"),
    (dict(units=4, switch_sparsity=2), "Received: switch_sparsity=2"),
    (dict(units=4, switch_sparsity=-0.1), "Received: switch_sparsity=-0.1"),
    (dict(units=4, compute="x"), "Received: compute='x'"),
    (dict(units=4, lora_rank=4), "Received: lora_rank=4"),
    (dict(units=4, quantization_config="int8"), "Received: quantization_config"),
])
def test_sparse_dense_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseDense(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(units=0, sparsity=0.5), "Received: units=0"),
    (dict(units=4), "Received: nnz=None, sparsity=None"),
    (dict(units=4, sparsity=1.0), r"Received: sparsity=1\.0"),
    (dict(units=4, sparsity=-0.5), r"Received: sparsity=-0\.5"),
])
def test_compact_dense_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompactDense(**kwargs)


def test_set_mask_wrong_shape():
    layer = SparseDense(4)
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"Received: mask.shape=\(4, 3\)"):
        layer.set_mask(np.ones((4, 3)))


# ---- mask and compute paths ---------------------------------------------------------------

def test_set_mask_zeroes_pruned_entries_and_sparsity():
    layer = SparseDense(16, kernel_initializer="random_normal")
    layer.build((None, 12))
    assert layer.sparsity == 0.0
    mask = _random_mask((12, 16), 0.25, seed=4)
    before = _np(layer.kernel)
    layer.set_mask(mask.astype(np.float32))  # 0/1 numbers as well as bools
    kernel = _np(layer.kernel)
    assert (kernel[~mask] == 0.0).all()
    np.testing.assert_array_equal(kernel[mask], before[mask])
    np.testing.assert_array_equal(_np(layer.mask), mask.astype(np.float32))
    assert layer.sparsity == pytest.approx(1.0 - mask.mean())
    layer.set_mask(np.zeros((12, 16), bool))
    assert layer.sparsity == 1.0
    np.testing.assert_array_equal(_np(layer(np.ones((2, 12), np.float32))),
                                  np.broadcast_to(_np(layer.bias), (2, 16)))


@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "function"])
@pytest.mark.parametrize("rank", [2, 3])
def test_sparse_and_dense_compute_agree(rank, run_eagerly):
    rng = np.random.default_rng(5)
    shape = (6, 20) if rank == 2 else (2, 3, 20)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    mask = _random_mask((20, 24), 0.2, seed=6)  # 80% sparse
    layers = {}
    for compute in ("sparse", "dense"):
        layer = SparseDense(24, compute=compute, kernel_initializer="random_normal",
                            bias_initializer="random_normal")
        layer.build((None, 20))
        layers[compute] = layer
    layers["dense"].set_weights(layers["sparse"].get_weights())
    for layer in layers.values():
        layer.set_mask(mask)
    assert layers["sparse"].uses_sparse_kernels and not layers["dense"].uses_sparse_kernels

    def forward_and_grads(layer):
        def fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            return (y,) + tuple(tape.gradient(loss, [x, layer.kernel, layer.bias]))
        return fn(x) if run_eagerly else tf.function(fn)(x)

    def reference():
        kernel, bias = tf.convert_to_tensor(layers["dense"].kernel), layers["dense"].bias
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.watch(kernel)
            y = dense_reference(x, kernel, mask.astype(np.float32), bias)
            loss = tf.reduce_sum(y * tf.sin(y))
        return (y,) + tuple(tape.gradient(loss, [x, kernel, bias]))

    ys, dxs, dks, dbs = forward_and_grads(layers["sparse"])
    yd, dxd, dkd, dbd = forward_and_grads(layers["dense"])
    yr, dxr, dkr, dbr = reference()
    for y in (ys, yd):
        np.testing.assert_allclose(_np(y), _np(yr), rtol=1e-5, atol=1e-5)
    for dx in (dxs, dxd):
        np.testing.assert_allclose(_np(dx), _np(dxr), rtol=1e-5, atol=1e-5)
    for db in (dbs, dbd):
        np.testing.assert_allclose(_np(db), _np(dbr), rtol=1e-5, atol=1e-5)
    # The kernel gradient only matters on kept entries (the constraint zeroes the rest).
    for dk in (dks, dkd):
        dk = tf.convert_to_tensor(dk)  # the sparse path may return IndexedSlices
        np.testing.assert_allclose(_np(dk)[mask], _np(dkr)[mask],
                                   rtol=1e-5, atol=1e-5)


def test_auto_switches_at_switch_sparsity():
    layer = SparseDense(10, switch_sparsity=0.6)
    layer.build((None, 10))
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    assert not layer.uses_sparse_kernels
    mask = np.ones((10, 10), bool)
    mask.flat[:59] = False  # 59% sparse: still dense
    layer.set_mask(mask)
    assert layer.sparsity == pytest.approx(0.59)
    assert not layer.uses_sparse_kernels
    y_dense = _np(layer(x))
    mask.flat[59] = False  # 60%: sparse from here
    layer.set_mask(mask)
    assert layer.uses_sparse_kernels
    expected = _np(dense_reference(x, layer.kernel, mask.astype(np.float32), layer.bias))
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y_dense, expected)  # the mask change is visible
    # Compiled call follows the switch without retracing (the switch is a variable).
    fn = tf.function(lambda t: layer(t))
    np.testing.assert_allclose(_np(fn(x)), expected, rtol=1e-5, atol=1e-6)
    layer.set_mask(np.ones((10, 10), bool))
    assert not layer.uses_sparse_kernels
    np.testing.assert_allclose(_np(fn(x)), _np(layer(x)), rtol=1e-6)


def test_default_switch_sparsity():
    layer = SparseDense(4)
    assert layer.switch_sparsity == sparsekeras.layers.DEFAULT_SWITCH_SPARSITY


@pytest.mark.parametrize("compute", ["dense", "sparse"])
def test_fixed_compute_ignores_sparsity(compute):
    layer = SparseDense(8, compute=compute, switch_sparsity=0.5)
    layer.build((None, 8))
    for keep in (1.0, 0.1):
        layer.set_mask(_random_mask((8, 8), keep))
        assert layer.uses_sparse_kernels == (compute == "sparse")


# ---- mixed precision ----------------------------------------------------------------------

@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"),
                                                   ("mixed_bfloat16", "bfloat16")])
@pytest.mark.parametrize("compute", ["dense", "sparse"])
def test_mixed_precision_trains(policy, compute_dtype, compute, dtype_policy):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)),
                              SparseDense(16, activation="relu", compute=compute),
                              SparseDense(4, compute=compute),
                              keras.layers.Activation("linear", dtype="float32")])
    sparse_layers = model.layers[:2]
    for layer in sparse_layers:
        assert layer.compute_dtype == compute_dtype
        assert layer.kernel.dtype == "float32" and layer.mask.dtype == "float32"
        layer.set_mask(_random_mask(layer.mask.shape, 0.3, seed=1))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = rng.standard_normal((32, 4)).astype(np.float32)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    out = sparse_layers[0](tf.constant(x))
    assert out.dtype == compute_dtype
    for layer in sparse_layers:
        kernel, mask = _np(layer.kernel), _np(layer.mask)
        assert (kernel[mask == 0] == 0).all()


def test_compact_dense_mixed_precision(dtype_policy):
    keras.config.set_dtype_policy("mixed_float16")
    layer = CompactDense(8, sparsity=0.5, seed=0)
    y = layer(np.ones((2, 6), np.float32))
    assert y.dtype == "float16"
    assert layer.values.dtype == "float32"


# ---- CompactDense -------------------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [True, False])
def test_compact_from_kernel_reproduces_dense(use_bias):
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal((13, 9)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.8] = 0.0
    kernel[:, 3] = 0.0  # an empty column
    bias = rng.standard_normal(9).astype(np.float32) if use_bias else None
    layer = CompactDense.from_kernel(kernel, bias, name="c", activation="relu")
    assert layer.built and layer.name == "c"
    assert layer.nnz == np.count_nonzero(kernel)
    assert layer.sparsity == pytest.approx(1.0 - np.count_nonzero(kernel) / kernel.size)
    np.testing.assert_array_equal(layer.to_dense_kernel(), kernel)
    for shape in ((5, 13), (2, 3, 13)):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = x @ kernel + (bias if use_bias else 0.0)
        np.testing.assert_allclose(_np(layer(x)), np.maximum(expected, 0.0),
                                   rtol=1e-5, atol=1e-5)


def test_compact_random_pattern_nnz_and_training():
    layer = CompactDense(32, sparsity=0.9, seed=1)
    inputs = keras.Input((20,))
    model = keras.Model(inputs, layer(inputs))
    assert layer.nnz == round(0.1 * 20 * 32)
    dense = layer.to_dense_kernel()
    assert np.count_nonzero(dense) == layer.nnz  # glorot values are never exactly zero
    indptr, indices = _np(layer.indptr), _np(layer.indices)
    values = _np(layer.values)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((32, 20)).astype(np.float32),
              rng.standard_normal((32, 32)).astype(np.float32), batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(_np(layer.values), values)
    np.testing.assert_array_equal(_np(layer.indptr), indptr)
    np.testing.assert_array_equal(_np(layer.indices), indices)
    after = layer.to_dense_kernel()
    np.testing.assert_array_equal(after != 0, dense != 0)
    assert [w.name for w in layer.trainable_weights] == ["values", "bias"]


def test_compact_same_seed_same_pattern():
    a, b = CompactDense(8, sparsity=0.7, seed=3), CompactDense(8, sparsity=0.7, seed=3)
    a.build((None, 10))
    b.build((None, 10))
    np.testing.assert_array_equal(_np(a.indices), _np(b.indices))
    np.testing.assert_array_equal(_np(a.indptr), _np(b.indptr))


def test_compact_to_dense_kernel_round_trip():
    layer = CompactDense(12, sparsity=0.75, seed=2)
    layer.build((None, 10))
    kernel = layer.to_dense_kernel()
    assert kernel.shape == (10, 12)
    again = CompactDense.from_kernel(kernel, _np(layer.bias))
    np.testing.assert_array_equal(again.to_dense_kernel(), kernel)
    np.testing.assert_array_equal(_np(again.indptr), _np(layer.indptr))
    np.testing.assert_array_equal(_np(again.indices), _np(layer.indices))
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    np.testing.assert_allclose(_np(again(x)), _np(layer(x)), rtol=1e-6)


def test_sparse_dense_from_dense():
    dense = keras.layers.Dense(5, activation="relu", name="d1")
    layer = SparseDense.from_dense(dense, compute="sparse")
    assert (layer.units, layer.compute, layer.name) == (5, "sparse", "d1")
    assert layer.activation is keras.activations.relu


@pytest.mark.parametrize("how", ["layer.set_weights", "model.set_weights"])
def test_set_weights_refreshes_structure(how):
    """Weights (mask included) assigned through Keras' set_weights must update the cached sparse
    structure and the compute switch, as loading a .keras file does."""
    rng = np.random.default_rng(0)
    source = SparseDense(8, kernel_initializer="random_normal")
    source.build((None, 8))
    layer = SparseDense(8, kernel_initializer="random_normal")
    model = keras.Sequential([keras.Input((8,)), layer])
    layer.set_mask(rng.random((8, 8)) < 0.1)  # ~90% sparse: sparse path, sparse structure
    assert layer.uses_sparse_kernels
    if how == "layer.set_weights":
        layer.set_weights(source.get_weights())  # dense mask of ones
    else:
        model.set_weights(source.get_weights())
    x = rng.standard_normal((2, 8)).astype(np.float32)
    assert layer.sparsity == 0.0
    assert not layer.uses_sparse_kernels
    np.testing.assert_allclose(_np(layer(x)), _np(source(x)), rtol=1e-5, atol=1e-6)


def test_sparse_dense_accepts_sparse_inputs():
    """tf.SparseTensor inputs (keras.Input(sparse=True), scipy data in fit) go through the CSR
    kernel: same outputs and kernel gradient as the dense input, and fit trains."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    x_sp = sp.random_array((32, 50), density=0.1, format="csr", dtype=np.float32, rng=rng)
    x_dense = x_sp.toarray()
    layer = sparsekeras.layers.SparseDense(8, activation="relu", kernel_initializer="random_normal")
    layer.build((None, 50))
    layer.set_mask(rng.random((50, 8)) > 0.5)
    st = tf.sparse.from_dense(x_dense)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(st)),
                               keras.ops.convert_to_numpy(layer(x_dense)), rtol=1e-5, atol=1e-6)
    grads = []
    for x in (st, tf.constant(x_dense)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        grads.append(tape.gradient(loss, layer.kernel.value))
    assert isinstance(grads[0], tf.IndexedSlices)  # from the input's nonzeros only
    np.testing.assert_allclose(tf.convert_to_tensor(grads[0]).numpy(), grads[1].numpy(),
                               rtol=1e-5, atol=1e-6)

    inputs = keras.Input((50,), sparse=True)
    model = keras.Model(inputs, keras.layers.Dense(2)(
        sparsekeras.layers.SparseDense(8, activation="relu")(inputs)))
    model.compile("adam", "mse")
    y = rng.standard_normal((32, 2)).astype(np.float32)
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(x_sp, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert model.predict(x_sp, verbose=0).shape == (32, 2)
