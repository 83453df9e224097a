"""A small layer-test helper after Keras' `run_layer_test`, for the sparsekeras layers.

`run_layer_test` checks, for one layer configuration and input shape: the output shape (eager
and symbolic), the weight counts, that `get_config`/`from_config` (and a JSON round trip of the
serialized layer) rebuild a layer giving the same outputs once the weights are copied, that
every `__init__` parameter is in `get_config`, and that one training step runs and changes every
trainable weight.
"""
import inspect
import json

import keras
import numpy as np
import tensorflow as tf


def _np(value):
    """A NumPy copy of a tensor or Keras variable (np.array(variable) warns under NumPy 2)."""
    return np.array(keras.ops.convert_to_numpy(value))


def init_parameters(cls):
    """Names of the explicit `__init__` parameters of a layer class (no self, *args, **kwargs)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# Keras' own Layer.get_config writes `activity_regularizer` only when one is set (None is the
# default on rebuild), so its absence for a layer without one is not a dropped argument.
_OMITTED_WHEN_NONE = ("activity_regularizer",)


def assert_config_has_init_parameters(layer):
    config = layer.get_config()
    missing = [name for name in init_parameters(type(layer)) if name not in config
               and not (name in _OMITTED_WHEN_NONE and getattr(layer, name, None) is None)]
    assert not missing, f"{type(layer).__name__}.get_config() lacks {missing}"


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape,
                   expected_num_trainable_weights, expected_num_non_trainable_weights,
                   rtol=1e-5, atol=1e-6, seed=0, train=True, build_fn=None):
    """Build `layer_cls(**init_kwargs)` on random input of `input_shape` and check it.

    Args:
        build_fn: optional `fn(layer, x)` called after the first call (e.g. to set a mask).

    Returns:
        The layer, built and called once.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(np.float32)

    layer = layer_cls(**init_kwargs)
    y = layer(x)
    if build_fn is not None:
        build_fn(layer, x)
        y = layer(x)
    assert tuple(y.shape) == tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape(input_shape)) == tuple(expected_output_shape)
    symbolic = layer_cls(**init_kwargs)
    sym_out = symbolic(keras.KerasTensor((None,) + tuple(input_shape[1:])))
    assert tuple(sym_out.shape) == (None,) + tuple(expected_output_shape[1:])

    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    assert len(layer.weights) == (expected_num_trainable_weights
                                  + expected_num_non_trainable_weights)

    # get_config / from_config, and the JSON form that a .keras file holds.
    assert_config_has_init_parameters(layer)
    config = layer.get_config()
    for clone in (layer_cls.from_config(config),
                  keras.saving.deserialize_keras_object(
                      json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))):
        assert type(clone) is layer_cls
        if not clone.built:  # the serialized form carries a build config
            clone.build(input_shape)
        assert len(clone.weights) == len(layer.weights)
        # Copy by path/name: the order of weights is the same by construction.
        clone.set_weights(layer.get_weights())
        if hasattr(clone, "refresh_structure"):
            clone.refresh_structure()
        if hasattr(clone, "_refresh_transpose"):
            clone._refresh_transpose()
        np.testing.assert_allclose(_np(clone(x)), _np(layer(x)),
                                   rtol=rtol, atol=atol)
        assert clone.get_config() == config

    if train:
        inputs = keras.Input(input_shape[1:])
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [_np(w) for w in layer.trainable_weights]
        target = rng.standard_normal(tuple(expected_output_shape)).astype(np.float32)
        loss = model.train_on_batch(x, target)
        assert np.isfinite(loss)
        after = [_np(w) for w in layer.trainable_weights]
        for w, b, a in zip(layer.trainable_weights, before, after):
            assert not np.array_equal(b, a), f"trainable weight {w.path} did not change"
    return layer


def dense_reference(x, kernel, mask, bias):
    """x @ (kernel * mask) + bias with plain TensorFlow ops."""
    y = tf.matmul(x, tf.convert_to_tensor(kernel) * tf.convert_to_tensor(mask))
    return y if bias is None else y + bias


def assert_loads_without_sparsekeras(model, inputs, expected, tmp_path, imports=(),
                                     rtol=1e-5, atol=1e-5):
    """Save `model` to `.keras`; a fresh interpreter loads it, predicts `inputs` (an array or a
    dict of arrays) equal to `expected`, and must not have imported sparsekeras. `imports` are
    modules the child needs for the model's classes (e.g. "keras_hub"). The child is exec'd, not
    forked: libgomp hangs in a child forked after the parent used OpenMP."""
    import os
    import subprocess
    import sys
    import textwrap

    model.save(tmp_path / "model.keras")
    if isinstance(inputs, dict):
        np.savez(tmp_path / "x.npz", **inputs)
        load_x = 'dict(np.load("x.npz"))'
    else:
        np.save(tmp_path / "x.npy", inputs)
        load_x = 'np.load("x.npy")'
    np.save(tmp_path / "y.npy", np.asarray(expected))
    code = textwrap.dedent(f"""
        import sys, numpy as np, keras
        {"; ".join(f"import {name}" for name in imports) or "pass"}
        m = keras.models.load_model("model.keras")
        got = m.predict({load_x}, verbose=0)
        np.testing.assert_allclose(got, np.load("y.npy"), rtol={rtol}, atol={atol})
        assert not any(name.startswith("sparsekeras") for name in sys.modules), "imported"
        print("loaded without sparsekeras")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded without sparsekeras" in proc.stdout


def randomize_batchnorms(model, seed=0, gamma_scale=1.0):
    """Give every BatchNormalization of `model` statistics and affine weights far from the
    identity (gamma drawn with `gamma_scale`), so that a wrong fold shows. Returns `model`."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size=n))
            if layer.gamma is not None:
                layer.gamma.assign(rng.normal(scale=gamma_scale, size=n))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(size=n))
    return model


def assert_matches_twin(layer, twin, x, weights=(), rtol=1e-5, atol=1e-5):
    """`layer` and its Keras `twin` agree on `x`, eagerly and under tf.function: the outputs,
    the gradient of sum(y * y) w.r.t. x, and w.r.t. each (layer weight, twin weight) pair of
    `weights` (rtol 1e-4; atol 1e-4 for x, 1e-3 for the weights)."""
    for run in (lambda t: layer(t), tf.function(lambda t: layer(t))):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y, y_twin = run(x), twin(x)
            loss, loss_twin = tf.reduce_sum(y * y), tf.reduce_sum(y_twin * y_twin)
        np.testing.assert_allclose(y, y_twin, rtol=rtol, atol=atol)
        np.testing.assert_allclose(tape.gradient(loss, x), tape.gradient(loss_twin, x),
                                   rtol=1e-4, atol=1e-4)
        for mine, theirs in weights:
            np.testing.assert_allclose(tape.gradient(loss, mine),
                                       tape.gradient(loss_twin, theirs), rtol=1e-4, atol=1e-3)
