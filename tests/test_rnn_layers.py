"""The recurrent family: SparseLSTM, SparseGRU, SparseSimpleRNN. Each against its Keras twin
(outputs and gradients with an all-ones, a random and an all-zero mask on both the kernel and
the recurrent kernel; return_sequences, go_backwards, a timestep mask), the layer helper,
training keeping pruned entries at zero, conversions, a `.keras` round trip in a fresh
process, and a text model `Embedding -> LSTM -> GRU -> Dense` sparsified, pruned to 0.9 in
`fit`, stripped and reloaded in a fresh process."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import callbacks, schedules
from sparsekeras.layers import SparseGRU, SparseLSTM, SparseSimpleRNN
from sparsekeras.layers._registry import lookup

from layer_helper import _np, assert_config_has_init_parameters, run_layer_test

TESTS = os.path.dirname(os.path.abspath(__file__))
SPARSE_OF = {keras.layers.LSTM: SparseLSTM, keras.layers.GRU: SparseGRU,
             keras.layers.SimpleRNN: SparseSimpleRNN}


def _fresh(code, cwd, timeout=300):
    """Run code in a fresh Python process (spawned, not forked); returns its stdout."""
    prelude = f"import sys; sys.path.insert(0, {TESTS!r})\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _set_masks(layer, kind, seed=0):
    rng = np.random.default_rng(seed)
    for t in layer.pruning_targets():
        shape = tuple(t.mask.shape)
        mask = {"ones": np.ones(shape, bool), "zeros": np.zeros(shape, bool),
                "random": rng.random(shape) < 0.4, "sparse": rng.random(shape) < 0.1}[kind]
        if kind == "sparse":
            mask.flat[rng.integers(mask.size)] = True   # tiny kernels: keep at least one
        t.set_mask(mask)


# (Keras class, kwargs, use a timestep mask)
CASES = {
    "lstm_last": (keras.layers.LSTM, dict(units=5), False),
    "lstm_seq_backwards_masked": (keras.layers.LSTM, dict(units=5, return_sequences=True,
                                                          go_backwards=True), True),
    "gru_seq": (keras.layers.GRU, dict(units=4, return_sequences=True), False),
    "gru_reset_before_backwards_masked": (keras.layers.GRU, dict(units=4, reset_after=False,
                                                                 go_backwards=True), True),
    "gru_implementation1": (keras.layers.GRU, dict(units=4, implementation=1), False),
    "simple_rnn_last_masked": (keras.layers.SimpleRNN, dict(units=6), True),
    "simple_rnn_seq_backwards": (keras.layers.SimpleRNN, dict(units=6, return_sequences=True,
                                                              go_backwards=True), False),
}


def _spy_sparse_product(monkeypatch):
    """Counts the sparse products the recurrent layers trace (the input projection)."""
    from sparsekeras.layers import rnn
    calls = []
    original = rnn.sk_ops.dense_csc_matmul

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(rnn.sk_ops, "dense_csc_matmul", spy)
    return calls


# "random" keeps 40% (the dense branch of the input projection), "sparse" 10% (the sparse
# CSC branch: DEFAULT_SWITCH_SPARSITY is 0.7), "zeros" none (sparse branch, nothing stored).
@pytest.mark.parametrize("mask_kind", ["ones", "random", "sparse", "zeros"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras_twin(case, mask_kind, monkeypatch):
    keras_cls, kwargs, timestep_mask = CASES[case]
    calls = _spy_sparse_product(monkeypatch)
    rng = np.random.default_rng(1)
    shape = (3, 6, 4)
    x = tf.constant(rng.standard_normal(shape).astype(np.float32))
    # A padded batch: the last timesteps of two sequences are masked out.
    mask = tf.constant(np.arange(6)[None, :] < np.array([[6], [4], [2]])) if timestep_mask \
        else None
    dense = keras_cls(**kwargs, bias_initializer="random_normal")
    dense.build(shape)
    sparse = SPARSE_OF[keras_cls].from_keras(dense)
    assert getattr(sparse.cell, "implementation", None) == getattr(dense.cell, "implementation",
                                                                    None)
    _set_masks(sparse, mask_kind, seed=2)
    twin = sparse.to_keras()
    assert type(twin) is keras_cls
    # The twin made by hand: the Keras layer's weights times the masks.
    masks = {t.kernel.path.split("/")[-1]: _np(t.mask) for t in sparse.pruning_targets()}
    by_hand = keras_cls.from_config(dense.get_config())
    by_hand.build(shape)
    for w, src in zip(by_hand.cell.weights, dense.cell.weights):
        key = w.path.split("/")[-1]
        w.assign(_np(src) * masks.get(key, 1.0))

    def forward_and_grads(layer):
        weights = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, mask=mask)
            loss = tf.reduce_sum(y * tf.sin(y + 0.3))
        return y, tape.gradient(loss, [x] + weights)

    ys, gs = forward_and_grads(sparse)
    # The sparse input projection differentiates the kept weights only; the pruned ones are
    # held at zero by the constraint whatever their gradient.
    kept = {"kernel": masks["kernel"] != 0}
    for reference in (twin, by_hand):
        yt, gt = forward_and_grads(reference)
        where = f"{case} mask={mask_kind} vs {reference.name}"
        np.testing.assert_allclose(_np(ys), _np(yt), rtol=1e-5, atol=1e-6, err_msg=where)
        for name, g_s, g_t in zip(("x", "kernel", "recurrent_kernel", "bias"), gs, gt):
            g_s, g_t = _np(g_s), _np(g_t)
            if name in kept:
                g_s, g_t = g_s[kept[name]], g_t[kept[name]]
            np.testing.assert_allclose(g_s, g_t, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{where}: gradient of {name}")
    if mask_kind == "zeros":
        assert np.abs(_np(gs[0])).max() == 0.0   # the kernel is zero: y does not depend on x
    else:
        assert np.abs(_np(gs[0])).max() > 0.0
    if mask_kind != "ones":
        assert not np.allclose(_np(ys), _np(dense(x, mask=mask)), atol=1e-4)  # the mask acts
    # The sparse input projection is built exactly when the kernel's mask keeps at most 30%.
    assert bool(calls) == (mask_kind in ("sparse", "zeros")), (mask_kind, len(calls))


@pytest.mark.parametrize("cls, kwargs, out_shape", [
    (SparseLSTM, dict(units=5, return_sequences=True), (2, 6, 5)),
    (SparseGRU, dict(units=4, go_backwards=True), (2, 4)),
    (SparseSimpleRNN, dict(units=3, dropout=0.1, seed=1), (2, 3)),
])
def test_layer_helper(cls, kwargs, out_shape):
    # 3 trainable (kernel, recurrent kernel, bias), 2 masks.
    layer = run_layer_test(cls, kwargs, (2, 6, 4), out_shape, 3, 2,
                           build_fn=lambda layer, x: _set_masks(layer, "random"))
    assert_config_has_init_parameters(layer)
    for t in layer.pruning_targets():   # the training step kept the pruned entries at zero
        assert (_np(t.kernel)[_np(t.mask) == 0] == 0).all()


def test_pruning_targets_and_prunable_false():
    layer = SparseLSTM(8)
    layer(np.zeros((1, 3, 5), np.float32))
    names = [t.name for t in layer.pruning_targets()]
    assert names == [f"{layer.name}/lstm_cell/kernel", f"{layer.name}/lstm_cell/recurrent_kernel"]
    assert [tuple(t.mask.shape) for t in layer.pruning_targets()] == [(5, 32), (8, 32)]
    assert layer.sparsity == 0.0
    layer.pruning_targets()[1].set_mask(np.zeros((8, 32)))
    assert layer.sparsity == pytest.approx(8 * 32 / (5 * 32 + 8 * 32))
    off = SparseGRU(4, prunable=False)
    off(np.zeros((1, 3, 5), np.float32))
    assert off.pruning_targets() == [] and off.get_config()["prunable"] is False


def test_conversions_carry_options_keras_leaves_out_of_its_config():
    lstm = keras.layers.LSTM(4, implementation=1, use_cudnn=False, recurrent_dropout=0.0)
    lstm.build((None, 3, 2))
    sparse = SparseLSTM.from_keras(lstm)
    assert sparse.cell.implementation == 1 and sparse.use_cudnn is False
    twin = sparse.to_keras()
    assert twin.cell.implementation == 1 and twin.use_cudnn is False
    clone = SparseLSTM.from_config(sparse.get_config())
    assert clone.cell.implementation == 1 and clone.use_cudnn is False
    # Every weight copied by path, the masks fresh (all ones).
    for a, b in zip(lstm.cell.weights, sparse.cell.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    assert all(_np(m).all() for m in sparse.pruning_masks)


def test_unbuilt_layer_converts_and_builds_later():
    sparse = SparseGRU.from_keras(keras.layers.GRU(3, return_sequences=True))
    assert not sparse.built
    assert tuple(sparse(np.ones((2, 4, 5), np.float32)).shape) == (2, 4, 3)
    assert len(sparse.pruning_targets()) == 2


def test_registry_maps_each_keras_class():
    for keras_cls, sparse_cls in SPARSE_OF.items():
        layer = keras_cls(3)
        entry = lookup(layer)
        assert entry.sparse_class is sparse_cls and entry.check(layer) is None


def test_fit_keeps_pruned_entries_at_zero():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)), SparseGRU(4, name="gru"),
                              keras.layers.Dense(1)])
    _set_masks(model.get_layer("gru"), "random", seed=4)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((16, 5, 3)), rng.standard_normal((16, 1)), epochs=2,
              batch_size=4, verbose=0)
    for t in model.get_layer("gru").pruning_targets():
        kernel, mask = _np(t.kernel), _np(t.mask)
        assert (kernel[mask == 0] == 0).all() and (kernel[mask == 1] != 0).all(), t.name


def test_keras_round_trip_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    tokens = keras.Input((7,), dtype="int32")
    h = keras.layers.Embedding(20, 6, mask_zero=True)(tokens)
    h = SparseLSTM(5, return_sequences=True, go_backwards=True, name="lstm")(h)
    h = SparseGRU(4, return_sequences=True, reset_after=False, name="gru")(h)
    h = SparseSimpleRNN(3, name="rnn")(h)
    model = keras.Model(tokens, keras.layers.Dense(2)(h))
    for i, name in enumerate(("lstm", "gru", "rnn")):
        _set_masks(model.get_layer(name), "random", seed=i)
    x = np.random.default_rng(1).integers(1, 20, (4, 7)).astype(np.int32)
    x[1, 4:] = 0   # padding, masked by the embedding
    x[3, 2:] = 0
    np.savez(tmp_path / "io.npz", x=x, want=_np(model(x)))
    model.save(tmp_path / "m.keras")
    _fresh("""
        import numpy as np, keras, sparsekeras
        d = np.load("io.npz")
        m = keras.models.load_model("m.keras")
        got = keras.ops.convert_to_numpy(m(d["x"]))
        np.testing.assert_allclose(got, d["want"], rtol=1e-5, atol=1e-5)
        for name, cls in (("lstm", "SparseLSTM"), ("gru", "SparseGRU"), ("rnn", "SparseSimpleRNN")):
            layer = m.get_layer(name)
            assert type(layer).__name__ == cls, type(layer)
            assert len(layer.pruning_targets()) == 2
            for t in layer.pruning_targets():
                kernel = keras.ops.convert_to_numpy(t.kernel)
                mask = keras.ops.convert_to_numpy(t.mask)
                assert 0 < mask.mean() < 1 and (kernel[mask == 0] == 0).all(), name
        assert m.get_layer("lstm").go_backwards and not m.get_layer("gru").reset_after
        print("ok")
    """, tmp_path)


def test_text_model_sparsify_prune_strip_reload(tmp_path):
    keras.utils.set_random_seed(3)
    tokens = keras.Input((8,), dtype="int32")
    h = keras.layers.Embedding(30, 8, mask_zero=True, name="embed")(tokens)
    h = keras.layers.LSTM(8, return_sequences=True, name="lstm")(h)
    h = keras.layers.GRU(6, name="gru")(h)
    dense = keras.Model(tokens, keras.layers.Dense(3, name="head")(h))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, (32, 8)).astype(np.int32)
    y = rng.integers(0, 3, 32)

    model, report = sparsekeras.sparsify(dense, return_report=True)
    converted = {r["path"]: r["to"] for r in report.converted()}
    assert converted["lstm"] == "SparseLSTM" and converted["gru"] == "SparseGRU"
    assert not report.kept()
    np.testing.assert_allclose(_np(model(x)), _np(dense(x)), rtol=1e-5, atol=1e-5)

    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb = callbacks.GradualPruning(schedules.PolynomialDecay(0.0, 0.9, 0, 6, frequency=2),
                                  compact=False)
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    assert np.isfinite(hist.history["loss"]).all()
    targets = {t.name: t for t in callbacks.prunable_targets(model)}
    rnn_targets = [t for name, t in targets.items() if name.split("/")[0] in ("lstm", "gru")]
    assert sorted(t.name.split("/", 1)[1] for t in rnn_targets) == [
        "gru_cell/kernel", "gru_cell/recurrent_kernel", "lstm_cell/kernel",
        "lstm_cell/recurrent_kernel"]
    for t in rnn_targets:
        zeros = np.mean(_np(t.kernel) == 0)
        assert zeros >= 0.89, (t.name, zeros)

    want = _np(model(x))
    small = sparsekeras.strip(model)
    # No stored form: the Keras twins holding zeros.
    assert type(small.get_layer("lstm")) is keras.layers.LSTM
    assert type(small.get_layer("gru")) is keras.layers.GRU
    assert np.mean(_np(small.get_layer("gru").cell.recurrent_kernel) == 0) >= 0.89
    np.testing.assert_allclose(_np(small(x)), want, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    np.savez(tmp_path / "io.npz", x=x, want=want)
    out = _fresh("""
        import numpy as np, keras, sparsekeras
        d = np.load("io.npz")
        m = keras.models.load_model("small.keras")
        got = keras.ops.convert_to_numpy(m(d["x"]))
        np.testing.assert_allclose(got, d["want"], rtol=0, atol=1e-5)
        lstm = m.get_layer("lstm")
        print(type(lstm).__name__,
              float(np.mean(keras.ops.convert_to_numpy(lstm.cell.kernel) == 0)))
    """, tmp_path)
    name, zeros = out.split()
    assert name == "LSTM" and float(zeros) >= 0.89


@pytest.mark.parametrize("cls, kwargs", [
    (SparseLSTM, dict(units=5, return_state=True, unroll=True)),
    (SparseGRU, dict(units=4, return_sequences=True, return_state=True, stateful=True)),
    (SparseSimpleRNN, dict(units=8, return_state=True, stateful=True, unroll=True)),
])
def test_states_unroll_stateful_match_keras_twin(cls, kwargs):
    """return_state, unroll and stateful through the sparse input projection (10% mask)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    sparse = cls(**kwargs, bias_initializer="random_normal")
    sparse.build(x.shape)
    # The kernel's mask only: a 10% recurrent kernel can be nilpotent over 4 steps (then no
    # state is carried from one call to the next, and the stateful check below means nothing).
    kernel = sparse.pruning_targets()[0]
    mask = rng.random(tuple(kernel.mask.shape)) < 0.1
    mask[0, 0] = True
    kernel.set_mask(mask)
    twin = sparse.to_keras()
    outputs = []
    for call in range(2):   # stateful: the second call starts from the first one's states
        got, want = sparse(x), twin(x)
        assert len(got) == len(want) == (3 if cls is SparseLSTM else 2)
        for g, w in zip(got, want):
            np.testing.assert_allclose(_np(g), _np(w), rtol=1e-5, atol=1e-6,
                                       err_msg=f"call {call}")
        outputs.append(_np(got[0]))
    # Stateful layers carried their states over; the others start from zeros each call.
    assert np.allclose(outputs[0], outputs[1]) != bool(kwargs.get("stateful"))


def test_bidirectional_lstm_is_converted():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((5, 3))
    bidi = keras.layers.Bidirectional(keras.layers.LSTM(4, name="lstm"), name="bidi")
    dense = keras.Model(inputs, keras.layers.Dense(2)(bidi(inputs)))
    model, report = sparsekeras.sparsify(dense, return_report=True)
    converted = {r["path"]: r["to"] for r in report.converted()}
    assert converted["bidi/forward_lstm"] == converted["bidi/backward_lstm"] == "SparseLSTM"
    layer = model.get_layer("bidi")
    assert type(layer.forward_layer) is SparseLSTM and type(layer.backward_layer) is SparseLSTM
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(model(x)), _np(dense(x)), rtol=1e-5, atol=1e-6)
    _set_masks(layer.backward_layer, "sparse")
    assert layer.backward_layer.go_backwards
    assert not np.allclose(_np(model(x)), _np(dense(x)), atol=1e-4)
