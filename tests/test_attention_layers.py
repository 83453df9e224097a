"""SparseEinsumDense, CompactEinsumDense, SparseMultiHeadAttention and CompactMultiHeadAttention:
the 2-D form of einsum equations, agreement with EinsumDense / MultiHeadAttention (outputs and
gradients, all-ones / random / all-zero masks, dense and sparse compute), configs, sparsify /
strip / densify, fresh-process `.keras` round trips, and a small Transformer classifier pruned
to 0.9 in fit (coverage, stored forms, reload, accuracy against its dense twin)."""
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import sparsekeras
from sparsekeras import schedules
from sparsekeras.callbacks import GradualPruning, prunable_targets
from sparsekeras.layers import (CompactEinsumDense, CompactMultiHeadAttention, SparseEinsumDense,
                                SparseMultiHeadAttention)
from sparsekeras.layers.attention import matmul_split

from layer_helper import (_np, assert_config_has_init_parameters, assert_matches_twin,
                          run_layer_test)


def _mask(kind, shape, seed=0):
    if kind == "ones":
        return np.ones(shape, bool)
    if kind == "zeros":
        return np.zeros(shape, bool)
    return np.random.default_rng(seed).random(shape) < 0.2  # ~0.8 sparse: above the switch


def _run_fresh(code, cwd):
    """Run `code` in a fresh Python process (spawned, not forked: libgomp) in `cwd`."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---- the 2-D form of an equation ------------------------------------------------------------

@pytest.mark.parametrize("equation, contracted", [
    ("abc,cde->abde", 1),      # MHA query/key/value, rank 3
    ("abcd,cde->abe", 2),      # MHA output, rank 3
    ("abcd,def->abcef", 1),    # MHA query, rank 4 (attention over two axes)
    ("abcde,def->abcf", 2),    # MHA output, rank 4
    ("ab,bc->ac", 1),          # Dense
    ("...b,bc->...c", 1),      # ellipsis on the kept axes
    ("btd,df->btf", 1),
    ("ab,b->a", 1),
    ("abc,dc->abd", None),     # transposed kernel
    ("ab...,bc->ac...", None),  # ellipsis on the right
    ("abc,bcd->abd", None),    # a kernel axis shared with a kept input axis
    ("abc,cd->adb", None),     # output axes reordered
    ("abcd,dce->abe", None),   # contracted axes in another order
])
def test_matmul_split(equation, contracted):
    assert matmul_split(equation) == contracted


# ---- SparseEinsumDense against EinsumDense ---------------------------------------------------

# (equation, output_shape, bias_axes, input_shape)
EINSUM_CASES = [
    ("abc,cde->abde", (None, 3, 4), "de", (2, 5, 8)),       # MHA query/key/value
    ("abcd,cde->abe", (None, 6), "e", (2, 5, 3, 4)),        # MHA output projection
    ("abcd,def->abcef", (None, None, 2, 3), "ef", (2, 3, 4, 5)),  # rank-4 query
    ("abc,cd->abd", (5, 6), "bd", (2, 5, 7)),               # bias over a kept axis too
    ("ab,bc->ac", 6, None, (3, 7)),                         # Dense, no bias
    ("...b,bc->...c", 6, "c", (2, 3, 7)),
    ("abc,dc->abd", (None, 6), "d", (2, 5, 7)),             # no 2-D form: masked dense
]


def _einsum_pair(case, compute, mask_kind, seed=0):
    """A SparseEinsumDense with a mask of `mask_kind`, and its EinsumDense twin holding the
    masked kernel (and the same bias)."""
    equation, output_shape, bias_axes, input_shape = case
    rng = np.random.default_rng(seed)
    layer = SparseEinsumDense(equation, output_shape, bias_axes=bias_axes, compute=compute,
                              activation="tanh")
    layer.build(input_shape)
    if layer.bias is not None:
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype(np.float32))
    layer.set_mask(_mask(mask_kind, layer.mask.shape, seed))
    twin = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                                    activation="tanh")
    twin.build(input_shape)
    twin.kernel.assign(_np(layer.kernel))
    if twin.bias is not None:
        twin.bias.assign(_np(layer.bias))
    return layer, twin


def _outputs_and_grads(layer, x, r):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * r)
    weights = [layer.kernel] + ([layer.bias] if layer.bias is not None else [])
    grads = tape.gradient(loss, [x] + [w.value for w in weights])
    return _np(y), [_np(g) for g in grads]


# compute="sparse" is refused for an equation without a 2-D form (tested below)
AGREEMENT = [(case, compute) for case in EINSUM_CASES for compute in ("dense", "sparse", "auto")
             if compute != "sparse" or matmul_split(case[0]) is not None]


@pytest.mark.parametrize("mask_kind", ["ones", "random", "zeros"])
@pytest.mark.parametrize("case, compute", AGREEMENT,
                         ids=[f"{c[0]}-{compute}" for c, compute in AGREEMENT])
def test_sparse_einsum_matches_einsum_dense(case, compute, mask_kind):
    layer, twin = _einsum_pair(case, compute, mask_kind)
    expect_sparse = (matmul_split(case[0]) is not None
                     and (compute == "sparse" or (compute == "auto" and mask_kind != "ones")))
    assert layer.uses_sparse_kernels == expect_sparse
    rng = np.random.default_rng(1)
    x = rng.standard_normal(case[3]).astype(np.float32)
    y_twin = _np(twin(x))
    r = rng.standard_normal(y_twin.shape).astype(np.float32)
    y, grads = _outputs_and_grads(layer, x, r)
    y_ref, grads_ref = _outputs_and_grads(twin, x, r)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)
    if mask_kind == "zeros":
        assert not np.any(_np(layer.kernel))
    # and inside a traced function (the switch is a tf.cond in "auto" mode)
    np.testing.assert_allclose(_np(tf.function(layer)(x)), y_ref, rtol=1e-5, atol=1e-5)


def test_sparse_compute_refused_without_2d_form():
    with pytest.raises(ValueError, match="compute='sparse'"):
        SparseEinsumDense("abc,dc->abd", (None, 6), compute="sparse")


@pytest.mark.parametrize("kwargs, match", [
    (dict(lora_rank=4), "lora_rank"),
    (dict(quantization_config="int8"), "quantization_config"),
    (dict(compute="fast"), "compute"),
    (dict(switch_sparsity=1.5), "switch_sparsity"),
])
def test_sparse_einsum_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseEinsumDense("abc,cde->abde", (None, 3, 4), **kwargs)


@pytest.mark.parametrize("compute", ["auto", "dense", "sparse"])
def test_sparse_einsum_layer(compute):
    def set_mask(layer, x):
        layer.set_mask(_mask("random", layer.mask.shape, 3))

    run_layer_test(SparseEinsumDense, dict(equation="abc,cde->abde", output_shape=(5, 3, 4),
                                           bias_axes="de", compute=compute, activation="relu"),
                   (2, 5, 8), (2, 5, 3, 4), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=1, build_fn=set_mask)


@pytest.mark.parametrize("block", [1, 2])
def test_compact_einsum_layer(block):
    run_layer_test(CompactEinsumDense, dict(equation="abcd,cde->abe", output_shape=(5, 6),
                                            bias_axes="e", sparsity=0.7, block=block, seed=1),
                   (2, 5, 3, 4), (2, 5, 6), expected_num_trainable_weights=2,
                   expected_num_non_trainable_weights=2)


@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("equation, output_shape, bias_axes, activation, fused", [
    ("abc,cde->abde", (None, 4, 8), "de", None, True),     # MultiHeadAttention's projections
    ("abcd,cde->abe", (7, 16), "e", "relu", True),
    ("abc,cd->abd", (None, 16), "d", "gelu", True),
    ("abc,cde->abde", (None, 2, 8), "e", "relu6", True),   # broadcast over d
    ("abc,cde->abde", (None, 2, 8), "de", "tanh", True),    # the bias alone in the store
    ("abc,cd->abd", (7, 16), "bd", None, False),            # over a kept axis: added after
])
def test_compact_einsum_fuses_its_bias(equation, output_shape, bias_axes, activation, fused,
                                       block):
    """A bias over the kernel's output axes only (and a fusable activation) is applied in the
    product's output store: no add after the op, outputs and gradients as EinsumDense."""
    rng = np.random.default_rng(5)
    in_shape = (3, 7, 5, 4) if equation.startswith("abcd") else (3, 7, 24)
    twin = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes,
                                    activation=activation)
    twin.build(in_shape)
    kernel = np.asarray(twin.kernel) * (rng.random(twin.kernel.shape) < 0.3)
    twin.kernel.assign(kernel)
    twin.bias.assign(rng.standard_normal(twin.bias.shape).astype(np.float32) * 3)
    layer = CompactEinsumDense.from_kernel(kernel, np.asarray(twin.bias), equation, output_shape,
                                           in_shape, bias_axes=bias_axes, activation=activation,
                                           block=block)
    x = tf.constant(rng.standard_normal(in_shape).astype(np.float32))
    graph = tf.function(lambda t: layer(t)).get_concrete_function(x).graph
    types = [op.type for op in graph.get_operations()]
    has_fused = any(t.endswith("MatMulBiasAct") for t in types)
    assert has_fused == fused, types
    if fused:
        assert "AddV2" not in types and "Add" not in types, types
    assert_matches_twin(layer, twin, x, weights=[(layer.bias, twin.bias)])


@pytest.mark.parametrize("make", [
    lambda: SparseEinsumDense("abc,cde->abde", (None, 3, 4), bias_axes="de"),
    lambda: SparseMultiHeadAttention(num_heads=2, key_dim=4),
    lambda: CompactEinsumDense("abc,cde->abde", (None, 3, 4), nnz=4),
    lambda: CompactMultiHeadAttention(num_heads=2, key_dim=4, projections={}),
], ids=["SparseEinsumDense", "SparseMultiHeadAttention", "CompactEinsumDense",
        "CompactMultiHeadAttention"])
def test_config_has_every_init_parameter(make):
    assert_config_has_init_parameters(make())


def test_sparse_mha_config_is_mha_config_plus_sparse_options():
    kwargs = dict(num_heads=2, key_dim=4, value_dim=3, dropout=0.1, use_bias=False,
                  output_shape=(5,), attention_axes=(1,), name="mha")
    config = SparseMultiHeadAttention(**kwargs, switch_sparsity=0.5, compute="sparse",
                                      prunable=False).get_config()
    expected = keras.layers.MultiHeadAttention(**kwargs).get_config()
    expected.update(switch_sparsity=0.5, compute="sparse", prunable=False)
    assert config == expected


@pytest.mark.parametrize("mask_kind", ["ones", "random", "zeros"])
@pytest.mark.parametrize("compute", ["dense", "sparse"])
def test_einsum_sparse_stored_and_keras_forms_agree(compute, mask_kind):
    """to_stored (CompactEinsumDense) and to_keras (EinsumDense with zeros) give the outputs
    and input gradients of the pruned layer."""
    layer, _ = _einsum_pair(EINSUM_CASES[0], compute, mask_kind)
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    r = np.random.default_rng(3).standard_normal((2, 5, 3, 4)).astype(np.float32)
    y, (dx, *_) = _outputs_and_grads(layer, x, r)
    for other in (layer.to_stored(block=1), layer.to_stored(block="auto"), layer.to_keras()):
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(other(xt) * r)
        np.testing.assert_allclose(_np(other(x)), y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(tape.gradient(loss, xt)), dx, rtol=1e-5, atol=1e-5)
    stored = layer.to_stored(block=1)
    assert stored.nnz == int(_mask(mask_kind, layer.mask.shape).sum())
    np.testing.assert_array_equal(stored.to_dense_kernel(), _np(layer.kernel))
    np.testing.assert_array_equal(_np(stored.to_keras().kernel), _np(layer.kernel))


# ---- SparseMultiHeadAttention against MultiHeadAttention --------------------------------------

def _mha_inputs(seed=0, q_len=6, v_len=6, dim=8):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, q_len, dim)).astype(np.float32)
    v = rng.standard_normal((2, v_len, dim)).astype(np.float32)
    attention_mask = rng.random((2, q_len, v_len)) < 0.7
    attention_mask[:, :, 0] = True  # every query attends to something
    return q, v, attention_mask


@pytest.mark.parametrize("compute", ["dense", "sparse"])
@pytest.mark.parametrize("mask_kind", ["ones", "random", "zeros"])
def test_sparse_mha_matches_mha(mask_kind, compute):
    keras.utils.set_random_seed(0)
    q, v, attention_mask = _mha_inputs()
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3)
    mha(q, v)
    sparse = SparseMultiHeadAttention.from_keras(mha, compute=compute)
    assert {type(p) for p in sparse.projections().values()} == {SparseEinsumDense}
    for i, proj in enumerate(sparse.projections().values()):
        proj.set_mask(_mask(mask_kind, proj.mask.shape, seed=i))
        if proj.bias is not None and mask_kind == "zeros":
            proj.bias.assign(np.full(proj.bias.shape, 0.1, np.float32))
    twin = sparse.to_keras()
    assert type(twin) is keras.layers.MultiHeadAttention
    for kwargs in (dict(), dict(attention_mask=attention_mask), dict(use_causal_mask=True),
                   dict(key=q)):
        y, scores = sparse(q, v, return_attention_scores=True, **kwargs)
        y_ref, scores_ref = twin(q, v, return_attention_scores=True, **kwargs)
        np.testing.assert_allclose(_np(y), _np(y_ref), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(scores), _np(scores_ref), rtol=1e-5, atol=1e-5)
    if mask_kind == "ones":  # unpruned: the very MultiHeadAttention it came from
        np.testing.assert_allclose(_np(sparse(q, v)), _np(mha(q, v)), rtol=1e-5, atol=1e-5)
    # gradients w.r.t. the inputs and every projection weight
    qt, vt = tf.convert_to_tensor(q), tf.convert_to_tensor(v)
    grads = []
    for layer in (sparse, twin):
        with tf.GradientTape() as tape:
            tape.watch([qt, vt])
            loss = tf.reduce_sum(tf.sin(layer(qt, vt, use_causal_mask=True)))
        ws = [w for w in layer.trainable_weights]
        grads.append([_np(g) for g in tape.gradient(loss, [qt, vt] + [w.value for w in ws])])
    for g, g_ref in zip(*grads):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_sparse_mha_same_init_as_mha_and_gate():
    """With the same seed, SparseMultiHeadAttention initializes as MultiHeadAttention does (it
    converts the projections MHA's build makes); use_gate's gate projection is sparse too."""
    q, v, _ = _mha_inputs()
    keras.utils.set_random_seed(4)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, use_gate=True)
    y_ref = _np(mha(q, v))
    keras.utils.set_random_seed(4)
    sparse = SparseMultiHeadAttention(num_heads=2, key_dim=4, use_gate=True)
    np.testing.assert_allclose(_np(sparse(q, v)), y_ref, rtol=1e-6, atol=1e-6)
    assert sorted(sparse.projections()) == ["attention_output", "gate", "key", "query", "value"]
    assert len(prunable_targets(sparse)) == 5


def test_sparse_mha_rank4_attention_axes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, attention_axes=(1, 2))
    mha(x, x)
    sparse = SparseMultiHeadAttention.from_keras(mha, compute="sparse")
    for i, proj in enumerate(sparse.projections().values()):
        assert proj.sparse_compute_applies
        proj.set_mask(_mask("random", proj.mask.shape, seed=i))
    np.testing.assert_allclose(_np(sparse(x, x)), _np(sparse.to_keras()(x, x)), atol=1e-5)
    stored = sparse.to_stored()
    assert type(stored) is CompactMultiHeadAttention
    np.testing.assert_allclose(_np(stored(x, x)), _np(sparse(x, x)), atol=1e-5)


def test_sparse_mha_invalid_arguments():
    with pytest.raises(ValueError, match="compute"):
        SparseMultiHeadAttention(num_heads=2, key_dim=4, compute="fast")
    with pytest.raises(ValueError, match="switch_sparsity"):
        SparseMultiHeadAttention(num_heads=2, key_dim=4, switch_sparsity=-0.1)
    with pytest.raises(ValueError, match="projections"):
        CompactMultiHeadAttention(num_heads=2, key_dim=4)


def _mha_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 8))
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(inputs, inputs)
    x = keras.layers.EinsumDense("abc,cd->abd", (None, 5), bias_axes="d", name="proj")(x)
    return keras.Model(inputs, x)


def test_sparsify_converts_mha_and_targets_each_projection_once():
    model = _mha_model()
    x = _mha_inputs()[0]
    sparse, report = sparsekeras.sparsify(model, return_report=True)
    rows = {r["path"]: r for r in report.rows}
    assert rows["mha"]["to"] == "SparseMultiHeadAttention"
    assert rows["proj"]["to"] == "SparseEinsumDense"
    assert report.prunable_fraction == 1.0 and sparsekeras.coverage(sparse) == 1.0
    np.testing.assert_allclose(_np(sparse(x)), _np(model(x)), rtol=1e-5, atol=1e-5)
    targets = prunable_targets(sparse)
    names = sorted(t.name for t in targets)
    assert names == ["attention_output", "key", "proj", "query", "value"], names
    assert len({id(t.kernel) for t in targets}) == 5
    # and a layer_names selection of the attention layer converts it
    only = sparsekeras.sparsify(model, layer_names=["mha"])
    assert type(only.get_layer("mha")) is SparseMultiHeadAttention
    assert type(only.get_layer("proj")) is keras.layers.EinsumDense


class Attend(keras.Model):
    """A subclassed model: its layers are built by Keras inside the first traced train step."""

    def __init__(self):
        super().__init__()
        self.mha = SparseMultiHeadAttention(num_heads=2, key_dim=4, name="mha")
        self.proj = SparseEinsumDense("abc,cd->abd", (None, 5), bias_axes="d", name="proj")

    def call(self, x):
        return self.proj(self.mha(x, x))


def test_gradual_pruning_prunes_projections_in_fit():
    """GradualPruning to 0.9 in fit of a subclassed model built lazily in its first step: each
    projection is a target, pruned to 0.9 zeros, and then computes through the sparse kernels."""
    keras.utils.set_random_seed(0)
    model = Attend()
    x = np.random.default_rng(0).standard_normal((32, 6, 8)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((32, 6, 5)).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    schedule = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=6, frequency=2)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[GradualPruning(schedule)])
    targets = prunable_targets(model)
    assert sorted(t.name for t in targets) == ["attention_output", "key", "proj", "query",
                                               "value"]
    for t in targets:
        assert t.sparsity >= 0.89, (t.name, t.sparsity)
        assert np.mean(_np(t.kernel) == 0) >= 0.89
        assert t.uses_sparse_kernels  # 0.9 >= the default switch sparsity
    y_pruned = _np(model(x))
    stripped = sparsekeras.strip(model, inplace=True)
    np.testing.assert_allclose(_np(stripped(x)), y_pruned, rtol=1e-5, atol=1e-5)
    assert type(stripped.mha) is CompactMultiHeadAttention


@pytest.mark.slow  # a fresh process
def test_keras_round_trip_fresh_process(tmp_path):
    """A pruned model with SparseMultiHeadAttention, and its strip, save to .keras and load in
    a fresh process with the same classes, mask layout and outputs."""
    sparse = sparsekeras.sparsify(_mha_model())
    for i, t in enumerate(prunable_targets(sparse)):
        t.set_mask(_mask("random", t.mask.shape, seed=i))
    x = _mha_inputs()[0]
    y = _np(sparse(x))
    stripped = sparsekeras.strip(sparse)
    assert type(stripped.get_layer("mha")) is CompactMultiHeadAttention
    assert type(stripped.get_layer("proj")) is CompactEinsumDense
    np.testing.assert_allclose(_np(stripped(x)), y, rtol=1e-5, atol=1e-5)
    for densified in (sparsekeras.densify(sparse), sparsekeras.densify(stripped)):
        mha = densified.get_layer("mha")
        assert type(mha) is keras.layers.MultiHeadAttention
        assert type(mha.query_dense) is keras.layers.EinsumDense
        assert type(densified.get_layer("proj")) is keras.layers.EinsumDense
        np.testing.assert_allclose(_np(densified(x)), y, rtol=1e-5, atol=1e-5)
    sparse.save(tmp_path / "pruned.keras")
    stripped.save(tmp_path / "stripped.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "query_mask.npy", _np(sparse.get_layer("mha").query_dense.mask))
    out = _run_fresh("""
        import numpy as np, keras, sparsekeras
        x, y = np.load("x.npy"), np.load("y.npy")
        for name in ("pruned", "stripped"):
            m = keras.saving.load_model(name + ".keras")
            mha = m.get_layer("mha")
            kinds = sorted({type(p).__name__ for p in mha.projections().values()})
            err = float(np.abs(keras.ops.convert_to_numpy(m(x)) - y).max())
            print(name, type(mha).__name__, ",".join(kinds), err)
            if name == "pruned":
                same = np.array_equal(keras.ops.convert_to_numpy(mha.query_dense.mask),
                                      np.load("query_mask.npy"))
                print("mask", same, mha.query_dense.uses_sparse_kernels)
    """, tmp_path)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    cls, kinds, err = lines["pruned"].split()
    assert (cls, kinds) == ("SparseMultiHeadAttention", "SparseEinsumDense") and float(err) <= 1e-5
    cls, kinds, err = lines["stripped"].split()
    assert (cls, kinds) == ("CompactMultiHeadAttention", "CompactEinsumDense")
    assert float(err) <= 1e-5
    assert lines["mask"] == "True True"  # the loaded mask's structure: sparse compute


# ---- a Transformer classifier ------------------------------------------------------------------

VOCAB, SEQ, DIM = 50, 16, 32
# Steps are cheap (~25 ms); tracing the train step is what costs (seconds): many small steps, and
# no compaction at the schedule's end (it retraces the step).
TRAIN, BATCH, EPOCHS, FREQUENCY = 2000, 32, 8, 25
MIN_COVERAGE = 0.95  # of the weight-matrix parameters (the bar)


def _order_task(n, seed):
    """Sequences of SEQ tokens from 2..VOCAB-1 with one marker 0 and one marker 1 at random
    distinct positions; the label says whether marker 0 comes first."""
    rng = np.random.default_rng(seed)
    x = rng.integers(2, VOCAB, (n, SEQ)).astype("int32")
    pos = np.argsort(rng.random((n, SEQ)), axis=1)[:, :2]
    rows = np.arange(n)
    x[rows, pos[:, 0]] = 0
    x[rows, pos[:, 1]] = 1
    return x, (pos[:, 0] < pos[:, 1]).astype("int32")


def _transformer(seed=0):
    """Token + position Embedding, two blocks of MultiHeadAttention + LayerNormalization +
    Dense FFN, GlobalAveragePooling1D, Dense head. The position ids are a second input (a
    Functional model of Keras layers only: it loads anywhere)."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((SEQ,), dtype="int32", name="tokens")
    position_ids = keras.Input((SEQ,), dtype="int32", name="positions")
    x = keras.layers.Embedding(VOCAB, DIM, name="token_embedding")(tokens)
    x = x + keras.layers.Embedding(SEQ, DIM, name="position_embedding")(position_ids)
    for i in range(2):
        a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=DIM // 2, name=f"mha_{i}")(x, x)
        x = keras.layers.LayerNormalization(name=f"ln_a{i}")(x + a)
        f = keras.layers.Dense(2 * DIM, activation="relu", name=f"ffn_{i}a")(x)
        f = keras.layers.Dense(DIM, name=f"ffn_{i}b")(f)
        x = keras.layers.LayerNormalization(name=f"ln_f{i}")(x + f)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model([tokens, position_ids], keras.layers.Dense(2, name="head")(x))


def _with_positions(tokens):
    return [tokens, np.broadcast_to(np.arange(SEQ, dtype="int32"), tokens.shape).copy()]


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _accuracy(model, x, y):
    """Eager (no test function to trace)."""
    return float(np.mean(np.argmax(_np(model(x)), axis=-1) == y))


def _zero_fraction(weight):
    return float(np.mean(_np(weight) == 0))


def _graph_op_types(model, inputs):
    """The op type of each node of the model's forward pass traced as a tf.function (nested
    functions' too)."""
    fn = tf.function(lambda a, b: model([a, b]))
    graph = fn.get_concrete_function(*[tf.TensorSpec(i.shape, i.dtype) for i in inputs]).graph
    types = [op.type for op in graph.get_operations()]
    for f in graph._functions.values():
        types += [node.op for node in f.definition.node_def]
    return types


@pytest.mark.slow  # two fits (the traces cost seconds) and a fresh process
def test_transformer_sparsify_prune_strip_reload_accuracy(tmp_path):
    """The issue's Transformer classifier on a sequence task it generates (does marker 0 come
    before marker 1?): sparsify + GradualPruning to 0.9 in fit prunes >= 95% of the
    weight-matrix parameters to >= 0.89 zeros; strip -> .keras -> fresh process gives the same
    outputs, with the attention projections and the FFN computing through the sparse kernels;
    the pruned model's accuracy is within 2 points of its dense twin's."""
    x_train, y_train = _order_task(TRAIN, seed=0)
    x_test, y_test = _order_task(500, seed=1)
    train, test = _with_positions(x_train), _with_positions(x_test)

    dense = _compile(_transformer(seed=0))
    t0 = time.perf_counter()
    dense.fit(train, y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    t1 = time.perf_counter()
    dense_accuracy = _accuracy(dense, test, y_test)

    model = _transformer(seed=0)
    # Trained with dense compute: tracing the step with both paths of every layer (the "auto"
    # switch) doubles the test's time on a loaded machine; the sparse path's training is
    # tested in test_gradual_pruning_prunes_projections_in_fit and by the gradient tests.
    sparse, report = sparsekeras.sparsify(model, compute="dense", return_report=True)
    print(report)
    assert {r["path"]: r.get("to") for r in report.rows}["mha_0"] == "SparseMultiHeadAttention"
    steps = EPOCHS * -(-TRAIN // BATCH)
    schedule = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=steps * 2 // 3,
                                         frequency=FREQUENCY)
    _compile(sparse).fit(train, y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                         callbacks=[GradualPruning(schedule, compact=False)])
    t2 = time.perf_counter()
    sparse_accuracy = _accuracy(sparse, test, y_test)
    print(f"accuracy: dense {dense_accuracy:.4f}, pruned to 0.9 {sparse_accuracy:.4f} "
          f"(fit {t1 - t0:.1f} s and {t2 - t1:.1f} s)")
    assert dense_accuracy >= 0.9  # the task is learnt
    assert sparse_accuracy >= dense_accuracy - 0.02

    # coverage: the parameters of the model's weight matrices that are pruned to >= 0.89 zeros
    matrices = {id(v): v for v in sparse.trainable_weights
                if len(v.shape) >= 2 and v.name != "bias"}  # MHA's (heads, dim) biases
    total = sum(int(np.prod(v.shape)) for v in matrices.values())
    targets = prunable_targets(sparse)
    assert len({id(t.mask) for t in targets}) == len(targets) == 15  # each listed once
    pruned = sum(int(np.prod(t.mask.shape)) for t in targets if _zero_fraction(t.kernel) >= 0.89)
    print(f"coverage {sparsekeras.coverage(sparse):.4f}; pruned to >= 0.89 zeros: "
          f"{pruned} of {total} weight-matrix parameters ({pruned / total:.4f})")
    assert sparsekeras.coverage(sparse) >= MIN_COVERAGE
    assert pruned / total >= MIN_COVERAGE

    # strip -> .keras -> a fresh process
    y_pruned = _np(sparse(test))
    stripped = sparsekeras.strip(sparse)
    np.testing.assert_allclose(_np(stripped(test)), y_pruned, rtol=1e-5, atol=1e-5)
    for i in range(2):
        mha = stripped.get_layer(f"mha_{i}")
        assert type(mha) is CompactMultiHeadAttention
        assert {type(p) for p in mha.projections().values()} == {CompactEinsumDense}
        for name in ("a", "b"):
            assert type(stripped.get_layer(f"ffn_{i}{name}")).__name__ == "CompactDense"
    # one sparse product per stored layer (8 projections, 4 FFN layers, the head) in the graph
    ops = _graph_op_types(stripped, test)
    assert sum("Csc" in t for t in ops) == 13, sorted(set(ops))
    stripped.save(tmp_path / "stripped.keras")
    for name, value in (("tokens", x_test), ("y", y_pruned)):
        np.save(tmp_path / f"{name}.npy", value)
    out = _run_fresh(f"""
        import numpy as np, keras, sparsekeras
        t = np.load("tokens.npy")
        x = [t, np.broadcast_to(np.arange({SEQ}, dtype="int32"), t.shape).copy()]
        m = keras.saving.load_model("stripped.keras")
        err = float(np.abs(keras.ops.convert_to_numpy(m(x)) - np.load("y.npy")).max())
        kinds = sorted({{type(p).__name__ for i in range(2)
                        for p in m.get_layer(f"mha_{{i}}").projections().values()}})
        print(type(m.get_layer("mha_0")).__name__, ",".join(kinds),
              type(m.get_layer("ffn_0a")).__name__, err)
    """, tmp_path)
    mha_cls, kinds, ffn_cls, err = out.split()
    assert (mha_cls, kinds, ffn_cls) == ("CompactMultiHeadAttention", "CompactEinsumDense",
                                         "CompactDense")
    assert float(err) <= 1e-5, out


def test_quantized_einsum_dense_is_kept_with_its_reason():
    inputs = keras.Input((6, 8))
    layer = keras.layers.EinsumDense("abc,cd->abd", (None, 4), name="q")
    model = keras.Model(inputs, layer(inputs))
    layer.quantize("int8")
    # (its int8 kernel is not trainable: no weight-matrix parameter is left dense, no warning)
    _, report = sparsekeras.sparsify(model, inplace=True, return_report=True)
    (row,) = report.kept()
    assert row["path"] == "q" and "quantized" in row["reason"], report
    with pytest.raises(ValueError, match="quantized"):
        sparsekeras.sparsify(model, inplace=True, layer_names=["q"])
