"""keras_hub models built from config (no download): sparsify reaches the encoder's layers,
GradualPruning prunes them in fit, strip gives the stored forms, and the files load in a
fresh process with the same outputs. keras-hub is a test dependency installed without its
dependencies (requirements-keras-hub.txt), so that it does not pull the full tensorflow."""
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import sparsekeras
from sparsekeras.callbacks import GradualPruning, prunable_targets

keras_hub = pytest.importorskip("keras_hub")

VOCAB, SEQ = 100, 16
MIN_COVERAGE = 0.95  # of the weight-matrix parameters (the bar)


def _backbone():
    return keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2,
                                         hidden_dim=32, intermediate_dim=64,
                                         max_sequence_length=SEQ)


def _classifier():
    return keras_hub.models.BertTextClassifier(backbone=_backbone(), num_classes=2,
                                               preprocessor=None)


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(0, VOCAB, (n, SEQ)).astype("int32"),
            "segment_ids": np.zeros((n, SEQ), "int32"),
            "padding_mask": np.ones((n, SEQ), "int32")}


def _out(model, x):
    y = model(x)
    return keras.ops.convert_to_numpy(y["sequence_output"] if isinstance(y, dict) else y)


def _weight_matrices(model):
    seen, out = set(), []
    for v in model.trainable_weights:
        if id(v) not in seen and len(v.shape) >= 2:
            seen.add(id(v))
            out.append(v)
    return out


@pytest.mark.parametrize("build", [_backbone, _classifier], ids=["backbone", "classifier"])
def test_bert_sparsify_prune_strip_reload(build, tmp_path):
    keras.utils.set_random_seed(0)
    model = build()
    x = _inputs(32)
    y_dense = _out(model, x)
    sparse, report = sparsekeras.sparsify(model, return_report=True)
    print(report)
    np.testing.assert_allclose(_out(sparse, x), y_dense, rtol=1e-5, atol=1e-5)
    assert report.prunable_fraction >= MIN_COVERAGE, str(report)

    # prune in fit (a classifier trains on labels; a backbone on a regression of its pooled output)
    if isinstance(sparse.output, dict):  # the backbone: train its pooled output
        head = keras.Model(sparse.inputs, sparse.output["pooled_output"])
        target = np.zeros((32, 32), np.float32)
        loss = "mse"
    else:
        head, target = sparse, np.arange(32) % 2
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    schedule = sparsekeras.schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=6,
                                                     frequency=2)
    head.fit(x, target, batch_size=8, epochs=3, verbose=0, shuffle=False,
             callbacks=[GradualPruning(schedule)])
    total = sum(int(np.prod(v.shape)) for v in _weight_matrices(model))  # the dense model's
    targets = prunable_targets(sparse)
    assert targets and all(t.sparsity >= 0.89 for t in targets), [
        (t.name, t.sparsity) for t in targets if t.sparsity < 0.89]
    zeros = [float(np.mean(keras.ops.convert_to_numpy(t.kernel) == 0)) for t in targets]
    pruned = sum(int(np.prod(t.mask.shape)) for t, z in zip(targets, zeros) if z >= 0.89)
    assert pruned / total >= MIN_COVERAGE, (pruned, total)

    y_pruned = _out(sparse, x)
    stripped = sparsekeras.strip(sparse)
    np.testing.assert_allclose(_out(stripped, x), y_pruned, rtol=1e-5, atol=1e-5)
    kinds = {type(layer).__name__
             for layer in stripped._flatten_layers(include_self=False, recursive=True)}
    assert "CompactDense" in kinds, kinds   # the FFN runs through the sparse kernels
    assert not kinds & {"SparseDense", "Dense", "EinsumDense"}, kinds
    # the encoders' LayerNormalization layers (inside TransformerEncoder) run the fused op
    assert "FusedLayerNormalization" in kinds and "LayerNormalization" not in kinds, kinds
    stripped.save(tmp_path / "stripped.keras")
    sparse.save(tmp_path / "pruned.keras")
    np.save(tmp_path / "tokens.npy", x["token_ids"])
    np.save(tmp_path / "y_pruned.npy", y_pruned)
    code = textwrap.dedent("""
        import numpy as np, keras, keras_hub, sparsekeras
        t = np.load("tokens.npy")
        x = {"token_ids": t, "segment_ids": np.zeros_like(t), "padding_mask": np.ones_like(t)}
        y = np.load("y_pruned.npy")
        for name in ("stripped", "pruned"):
            m = keras.saving.load_model(name + ".keras")
            o = m(x)
            o = keras.ops.convert_to_numpy(o["sequence_output"] if isinstance(o, dict) else o)
            print(name, type(m).__name__, float(np.abs(o - y).max()))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.strip().splitlines():
        name, cls, err = line.split()
        assert cls == type(model).__name__ and float(err) <= 1e-5, line


def _tied_models():
    """keras_hub models whose token embedding is held twice: GPT-2's causal LM looks tokens up
    in the backbone and calls the same layer again (reverse=True) as its head, in the task's
    own graph; RoBERTa's backbone keeps its token embedding as an attribute beside the
    TokenAndPositionEmbedding that calls it."""
    gpt2 = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=1,
                                               num_heads=2, hidden_dim=32, intermediate_dim=64,
                                               max_sequence_length=SEQ),
        preprocessor=None)
    roberta = keras_hub.models.RobertaTextClassifier(
        backbone=keras_hub.models.RobertaBackbone(vocabulary_size=VOCAB, num_layers=1,
                                                  num_heads=2, hidden_dim=32,
                                                  intermediate_dim=64, max_sequence_length=SEQ),
        num_classes=3, preprocessor=None)
    return {"gpt2_causal_lm": (gpt2, lambda rng: rng.integers(0, VOCAB, (16, SEQ))),
            "roberta_classifier": (roberta, lambda rng: rng.integers(0, 3, 16))}


@pytest.mark.parametrize("name", ["gpt2_causal_lm", "roberta_classifier"])
def test_a_layer_held_twice_is_replaced_everywhere(name, tmp_path):
    """sparsify replaces a shared layer wherever it is held, so the dense original does not stay
    in the model beside its sparse replacement (its weights tracked, saved, and trained by
    nothing: Keras warned "Gradients do not exist" at every step); the same after a reload."""
    import warnings

    keras.utils.set_random_seed(5)
    model, labels = _tied_models()[name]
    rng = np.random.default_rng(5)
    x = {"token_ids": rng.integers(0, VOCAB, (16, SEQ)).astype("int32"),
         "padding_mask": np.ones((16, SEQ), "int32")}
    want = _out(model, x)
    sparse = sparsekeras.sparsify(model)

    def kinds(m):
        return [type(layer).__name__ for layer in m._flatten_layers(recursive=True)]

    assert "ReversibleEmbedding" not in kinds(sparse), kinds(sparse)
    assert len(sparse.trainable_weights) == len(model.trainable_weights)
    np.testing.assert_allclose(_out(sparse, x), want, rtol=1e-5, atol=1e-5)
    sparse.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sparse.fit(x, labels(rng), batch_size=8, epochs=1, verbose=0, callbacks=[
            GradualPruning(sparsekeras.schedules.ConstantSparsity(0.5, 0, frequency=1))])
    assert not [str(w.message) for w in record if "Gradients do not exist" in str(w.message)]
    table = [t for t in prunable_targets(sparse) if "token_embedding" in t.name]
    assert table and 0.45 <= table[0].sparsity <= 0.55, [(t.name, t.sparsity) for t in table]
    sparse.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        # keras_hub's tasks compile themselves when made: Keras says it skips the saved
        # optimizer's variables (the dense task alike)
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert "ReversibleEmbedding" not in kinds(loaded), kinds(loaded)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    np.testing.assert_allclose(_out(loaded, x), _out(sparse, x), rtol=1e-5, atol=1e-5)
