"""GradualPruning(scope="global") keeps every layer above `min_layer_density` (issue 23, item 8)."""
import warnings

import keras
import numpy as np
import pytest

from sparsekeras.callbacks import GradualPruning, prunable_targets
from sparsekeras.layers import SparseDense
from sparsekeras.schedules import ConstantSparsity


def _model():
    """Three layers; the middle one's weights are 1000x smaller than the others'."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), SparseDense(32, name="big1"),
                              SparseDense(32, name="small"), SparseDense(32, name="big2")])
    small = model.get_layer("small")
    small.kernel.assign(small.kernel.value * 1e-3)
    return model


def _pruned(target, **kwargs):
    model = _model()
    callback = GradualPruning(ConstantSparsity(target, 0), scope="global", **kwargs)
    callback.set_model(model)
    callback.prune(target)
    return {t.name: t.sparsity for t in prunable_targets(model)}, callback


def test_without_floor_a_small_layer_is_pruned_entirely():
    sparsity, _ = _pruned(0.6, min_layer_density=0.0)
    assert sparsity["small"] == 1.0  # the network is cut: what the floor prevents


def test_floor_keeps_every_layer_and_the_total_reaches_the_target():
    with warnings.catch_warnings(record=True) as caught:  # (not pytest.warns: it re-raises
        warnings.simplefilter("always")                  # Keras' unrelated deprecations)
        sparsity, callback = _pruned(0.6)
    held = [str(w.message) for w in caught if "is held at" in str(w.message)]
    assert len(held) == 1 and "layer 'small' is held at min_layer_density=0.02" in held[0], held
    kept_small = round((1 - sparsity["small"]) * 32 * 32)
    assert kept_small == int(np.ceil(0.02 * 32 * 32))  # at the floor, not below
    assert sum(sparsity.values()) / 3 == pytest.approx(0.6, abs=1 / 3072)  # budget spread
    assert sparsity["big1"] < 0.6 and sparsity["big2"] < 0.6
    # Warned once per layer: pruning again at the same target says nothing new.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.prune(0.6)
    assert not [w for w in caught if "is held at" in str(w.message)]


def test_floor_at_the_default_changes_nothing_when_no_layer_reaches_it():
    model = keras.Sequential([keras.Input((16,)), SparseDense(16, name="a"),
                              SparseDense(16, name="b")])
    sparsities = []
    for floor in (0.0, 0.02):
        keras.utils.set_random_seed(1)
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        callback = GradualPruning(ConstantSparsity(0.5, 0), scope="global",
                                  min_layer_density=floor)
        callback.set_model(clone)
        callback.prune(0.5)
        sparsities.append([keras.ops.convert_to_numpy(t.mask) for t in prunable_targets(clone)])
    for a, b in zip(*sparsities):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_floor_argument_is_checked(value):
    with pytest.raises(ValueError, match="min_layer_density"):
        GradualPruning(ConstantSparsity(0.5, 0), scope="global", min_layer_density=value)
