"""Recurrent layers: `SparseLSTM`, `SparseGRU`, `SparseSimpleRNN`, drop-ins for
`keras.layers.LSTM`, `GRU` and `SimpleRNN` whose cell's `kernel` (the input projection,
`(input_dim, gates * units)`) and `recurrent_kernel` (`(units, gates * units)`) are prunable.

Each layer is its Keras class plus the `Prunable` protocol: one mask per weight (non-trainable
weights of the outer layer, named `<cell>_kernel_mask` and `<cell>_recurrent_kernel_mask`), and
a constraint on the cell's variables that keeps pruned entries at exactly zero after every
optimizer step. The recurrence itself is Keras' own (its scan, masking, `go_backwards`,
`stateful`, dropout, and on a GPU its cuDNN path), computing densely over the zeros: masked dense
compute. The weight layout is the Keras layer's (`<cell>/kernel`, `<cell>/recurrent_kernel`,
`<cell>/bias`) plus the masks, so `sparsify` copies the weights by path.

Compute: dense over the zeros, always (no sparse product yet; `benchmarks/bench_rnn.py`
measures the dense layer against the sparse input projection at 0.9 sparsity).

No stored form: `sparsekeras.strip` (and `densify`) give the Keras twin (`to_keras()`), holding
the pruned weights as zeros.
"""
import keras

from sparsekeras.layers._base import (NotConvertible, Prunable, build_like, copy_weights,
                                      keras_config, relative_paths)
from sparsekeras.layers._registry import register

__all__ = ["SparseLSTM", "SparseGRU", "SparseSimpleRNN"]


class _PrunableRNN(Prunable):
    """`Prunable` for Keras' recurrent layers: the cell's kernel and recurrent kernel are the
    prunable weights; conversions `from_keras` (sparsify) and `to_keras` (strip, densify)."""

    _keras_class = None

    def get_prunable_weights(self):
        return [self.cell.kernel, self.cell.recurrent_kernel]

    def get_config(self):
        config = super().get_config()
        config.update(self._options_of(self))
        config["prunable"] = self.prunable
        return config

    @staticmethod
    def _options_of(layer):
        """Constructor arguments the Keras layer holds but leaves out of its config."""
        return {}

    @classmethod
    def from_keras(cls, layer, **options):
        """A built layer of this class with the configuration and weights of the Keras
        recurrent `layer` (masks all ones). Raises `NotConvertible` for a configuration
        `_rnn_check` refuses."""
        reason = _rnn_check(layer)
        if reason is not None:
            raise NotConvertible(reason)
        new = cls(**keras_config(layer), **cls._options_of(layer), **options)
        build_like(new, layer)
        if layer.built:
            copy_weights(layer, new)
        return new

    def to_keras(self):
        """The Keras twin of this layer (same config, built), holding the pruned weights as
        zeros: what `sparsekeras.strip` and `densify` put in its place."""
        config = self.get_config()
        config.pop("prunable", None)
        twin = self._keras_class.from_config(config)
        build_like(twin, self)
        if self.built:
            own = relative_paths(self)
            masks = dict(zip(self._prunable_labels(), self.pruning_masks))
            for path, var in relative_paths(twin).items():
                value = keras.ops.convert_to_numpy(own[path])
                if path in masks:
                    value = value * keras.ops.convert_to_numpy(masks[path])
                var.assign(value)
        return twin


class _CellImplementation:
    """LSTM and GRU take `implementation` (1 or 2: how the cell arranges its products, same
    maths) and `use_cudnn` but leave both out of their config; the sparse layers keep them in
    theirs, and the conversions carry them over (Keras' own LSTM and GRU accept both)."""

    @staticmethod
    def _options_of(layer):
        return {"implementation": layer.cell.implementation, "use_cudnn": layer.use_cudnn}


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseLSTM(_CellImplementation, _PrunableRNN, keras.layers.LSTM):
    """`keras.layers.LSTM` with prunable `kernel` and `recurrent_kernel` (masked dense compute).

    Same arguments and behaviour as `LSTM` (see its documentation), plus `prunable` (False
    keeps the layer out of pruning). Masks: `(input_dim, 4 * units)` and `(units, 4 * units)`,
    the shapes of the cell's `kernel` and `recurrent_kernel`.

    Input `(batch, timesteps, input_dim)`; output `(batch, units)`, or `(batch, timesteps,
    units)` with `return_sequences=True` (plus the final states with `return_state=True`).

    Example:
        >>> layer = sparsekeras.layers.SparseLSTM(16, return_sequences=True)
        >>> y = layer(np.ones((2, 5, 8), "float32"))            # (2, 5, 16)
        >>> kernel, recurrent = layer.pruning_targets()
        >>> kernel.set_mask(np.random.rand(8, 64) > 0.9)
    """

    def __init__(self, units, prunable=True, **kwargs):
        super().__init__(units, **kwargs)
        self.prunable = bool(prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseGRU(_CellImplementation, _PrunableRNN, keras.layers.GRU):
    """`keras.layers.GRU` with prunable `kernel` and `recurrent_kernel` (masked dense compute).

    Same arguments and behaviour as `GRU` (`reset_after` too), plus `prunable`. Masks:
    `(input_dim, 3 * units)` and `(units, 3 * units)`.

    Input `(batch, timesteps, input_dim)`; output `(batch, units)`, or `(batch, timesteps,
    units)` with `return_sequences=True`.

    Example:
        >>> layer = sparsekeras.layers.SparseGRU(16)
        >>> y = layer(np.ones((2, 5, 8), "float32"))            # (2, 16)
        >>> layer.pruning_targets()[1].set_mask(np.random.rand(16, 48) > 0.9)
    """

    def __init__(self, units, prunable=True, **kwargs):
        super().__init__(units, **kwargs)
        self.prunable = bool(prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseSimpleRNN(_PrunableRNN, keras.layers.SimpleRNN):
    """`keras.layers.SimpleRNN` with prunable `kernel` and `recurrent_kernel` (masked dense
    compute).

    Same arguments and behaviour as `SimpleRNN`, plus `prunable`. Masks: `(input_dim, units)`
    and `(units, units)`.

    Input `(batch, timesteps, input_dim)`; output `(batch, units)`, or `(batch, timesteps,
    units)` with `return_sequences=True`.

    Example:
        >>> layer = sparsekeras.layers.SparseSimpleRNN(16)
        >>> y = layer(np.ones((2, 5, 8), "float32"))            # (2, 16)
        >>> layer.pruning_targets()[0].set_mask(np.random.rand(8, 16) > 0.9)
    """

    def __init__(self, units, prunable=True, **kwargs):
        super().__init__(units, **kwargs)
        self.prunable = bool(prunable)


def _rnn_check(layer):
    """None if the Keras recurrent layer converts, else why not."""
    cell = getattr(layer, "cell", None)
    for name in ("kernel", "recurrent_kernel"):
        if cell is not None and cell.built and getattr(cell, name, None) is None:
            return f"its cell has no {name}"
    return None


SparseLSTM._keras_class = keras.layers.LSTM
SparseGRU._keras_class = keras.layers.GRU
SparseSimpleRNN._keras_class = keras.layers.SimpleRNN
for _keras, _sparse in ((keras.layers.LSTM, SparseLSTM), (keras.layers.GRU, SparseGRU),
                        (keras.layers.SimpleRNN, SparseSimpleRNN)):
    register(_keras, _sparse, check=_rnn_check)
del _keras, _sparse
