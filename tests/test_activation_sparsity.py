"""Activation sparsity: the KL-divergence regularizer and the ActivationSparsity callback."""
import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras.callbacks import ActivationSparsity
from sparsekeras.regularizers import KLSparsity


def _kl_reference(a, rho, beta, eps=1e-6):
    q = np.clip(np.asarray(a, np.float64).reshape(-1, a.shape[-1]).mean(axis=0), eps, 1 - eps)
    return beta * np.sum(rho * np.log(rho / q) + (1 - rho) * np.log((1 - rho) / (1 - q)))


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 6), (1, 1)])
def test_kl_value_matches_formula(shape):
    a = np.random.default_rng(0).uniform(0.01, 0.99, shape).astype(np.float32)
    reg = KLSparsity(rho=0.1, beta=2.5)
    got = float(keras.ops.convert_to_numpy(reg(a)))
    np.testing.assert_allclose(got, _kl_reference(a, 0.1, 2.5), rtol=1e-4)


def test_kl_is_zero_at_target_and_positive_elsewhere():
    reg = KLSparsity(rho=0.2, beta=1.0)
    assert abs(float(keras.ops.convert_to_numpy(reg(np.full((4, 3), 0.2, np.float32))))) < 1e-6
    assert float(keras.ops.convert_to_numpy(reg(np.full((4, 3), 0.7, np.float32)))) > 0.1
    # saturated units stay finite (clipped)
    assert np.isfinite(float(keras.ops.convert_to_numpy(reg(np.ones((4, 3), np.float32)))))


def test_kl_serialization_and_validation():
    reg = KLSparsity(rho=0.03, beta=4.0)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(reg))
    assert isinstance(again, KLSparsity) and again.get_config() == reg.get_config()
    for kwargs, bad in ((dict(rho=0.0), "rho=0.0"), (dict(rho=1.5), "rho=1.5"),
                        (dict(beta=-1), "beta=-1"), (dict(epsilon=0.7), "epsilon=0.7")):
        with pytest.raises(ValueError, match=f"Received: {bad}"):
            KLSparsity(**kwargs)


def test_sparse_autoencoder_learns_a_sparse_code(tmp_path):
    """A sigmoid code under KLSparsity(rho=0.05) ends with a low mean activation, unlike the same
    model without the penalty; the model saves and loads with the regularizer."""
    rng = np.random.default_rng(0)
    x = rng.random((512, 32)).astype(np.float32)

    def build(reg):
        keras.utils.set_random_seed(0)
        inp = keras.Input((32,))
        code = keras.layers.Dense(16, activation="sigmoid", activity_regularizer=reg,
                                  name="code")(inp)
        out = keras.layers.Dense(32)(code)
        model = keras.Model(inp, out)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        model.fit(x, x, epochs=20, batch_size=64, verbose=0)
        encoder = keras.Model(inp, code)
        return model, float(np.mean(encoder.predict(x, verbose=0)))

    model, mean_sparse = build(KLSparsity(rho=0.05, beta=3.0))
    _, mean_plain = build(None)
    assert mean_sparse < 0.15 < mean_plain, (mean_sparse, mean_plain)
    model.save(tmp_path / "ae.keras")
    loaded = keras.models.load_model(tmp_path / "ae.keras")
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_activation_sparsity_callback_logs_relu_zeros():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    y = rng.standard_normal((256, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((20,)),
                              keras.layers.Dense(32, activation="relu", name="h1"),
                              sparsekeras.layers.SparseDense(16, activation="relu", name="h2"),
                              keras.layers.Dense(1, name="out")])
    model.compile("adam", "mse")
    cb = ActivationSparsity(x[:128])
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    for name in ("h1", "h2"):
        values = history.history[f"activation_sparsity/{name}"]
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    # the logged value is what a direct count gives: fraction of exact zeros of the ReLU output
    probe = keras.Model(model.inputs, model.get_layer("h1").output)
    expected = float(np.mean(probe.predict(x[:128], verbose=0) == 0.0))
    assert abs(cb.measure()["h1"] - expected) < 1e-9 and expected > 0.1


def test_activation_sparsity_unknown_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                              keras.layers.Dense(1)])
    cb = ActivationSparsity(np.ones((2, 4), np.float32), layers=["missing"])
    cb.set_model(model)
    with pytest.raises(ValueError, match=r"no layer named \['missing'\]"):
        cb.measure()
