"""Recurrent layers: `SparseLSTM`, `SparseGRU`, `SparseSimpleRNN`, drop-ins for
`keras.layers.LSTM`, `GRU` and `SimpleRNN` whose cell's `kernel` (the input projection,
`(input_dim, gates * units)`) and `recurrent_kernel` (`(units, gates * units)`) are prunable.

Each layer is its Keras class plus the `Prunable` protocol: one mask per weight (non-trainable
weights of the outer layer, named `<cell>_kernel_mask` and `<cell>_recurrent_kernel_mask`), and
a constraint on the cell's variables that keeps pruned entries at exactly zero after every
optimizer step. The recurrence runs in Keras' own loop (see Compute below). The weight layout
is the Keras layer's (`<cell>/kernel`, `<cell>/recurrent_kernel`, `<cell>/bias`) plus the
masks, so `sparsify` copies the weights by path. Every Keras configuration converts (dropout,
stateful, unroll, Bidirectional's inner layers included): none has a different behaviour here.

Compute (TensorFlow backend, CPU, float32, no dropout): the input projection of the whole
sequence is one product `(batch * timesteps, input_dim) @ kernel` before the loop, through the
sparse CSC product (`sparsekeras.ops.dense_csc_matmul`, as SparseDense) when the kernel's mask
keeps at most `1 - DEFAULT_SWITCH_SPARSITY` (30%) of it, densely otherwise (a `tf.cond` on the
mask's density: pruning during `fit` needs no retrace); the recurrent product `h @
recurrent_kernel` stays dense, per step, inside Keras' own loop (`keras.src.backend.rnn`, so
masking, `go_backwards`, `unroll`, `stateful` and `return_state` behave as in Keras). With
dropout, on a GPU (cuDNN) or in another dtype, Keras' own loop runs unchanged over the zeros
(masked dense compute). The sparse branch's gradient reaches the kept weights only (pruned
ones are held at zero anyway).

Measured with `benchmarks/bench_rnn.py` (LSTM, batch 32, 32 timesteps, both kernels at 0.9
sparsity, medians of 11 round-robin repeats, ratios to `keras.layers.LSTM` in the same run; a
shared 2-core machine at load 9-11, so the figures are noisy): forward 0.21x and 0.54x,
forward+backward 0.56x and 0.65x for input_dim = units = 256 and 512 (an earlier run, with the
structure computed outside the branch: forward 0.95x / 0.79x, train 0.59x / 0.61x). With all-ones
masks (the dense branch) the same layer measured 0.55x-0.76x forward and 0.66x-1.43x train:
noise dominates. A sparse recurrent product per step as well measured faster still in the
same runs (train 0.23x-0.63x) but is not in the layer: its per-step `tf.cond` inside the loop
failed TensorFlow's while-loop gradient (AssertionError in `fit`).

No stored form: `sparsekeras.strip` (and `densify`) give the Keras twin (`to_keras()`), holding
the pruned weights as zeros.

`SparseConvLSTM1D/2D/3D`: Keras' convolutional LSTMs with their cell's kernel and recurrent
kernel prunable, computed by Keras' own loop over the zeros (masked dense compute).
"""
import keras
import tensorflow as tf
from keras.src import backend as keras_backend

from sparsekeras import ops as sk_ops
from sparsekeras.layers._base import (DEFAULT_SWITCH_SPARSITY, NotConvertible, Prunable,
                                      convert_from_keras)
from sparsekeras.layers._registry import register
from sparsekeras.layers.conv import _channels_last_only, _conv_check

__all__ = ["SparseLSTM", "SparseGRU", "SparseSimpleRNN", "SparseConvLSTM1D", "SparseConvLSTM2D",
           "SparseConvLSTM3D"]


class _PrunableRNN(Prunable):
    """`Prunable` for Keras' recurrent layers: the cell's kernel and recurrent kernel are the
    prunable weights; conversions `from_keras` (sparsify) and `to_keras` (strip, densify)."""

    def get_prunable_weights(self):
        return [self.cell.kernel, self.cell.recurrent_kernel]

    # ---- compute: the input projection of the whole sequence at once -----------------------

    def _hoists(self, training):
        """Whether this call projects the whole sequence before the loop (see the module's
        docstring). Not with dropout (Keras draws its masks per cell call), not where Keras
        would use cuDNN (a GPU), not for use_cudnn=True (Keras' own error), not outside
        float32 (the sparse op's type)."""
        cell = self.cell
        return (keras.backend.backend() == "tensorflow" and self.built
                and self.pruning_masks is not None
                and not cell.dropout and not cell.recurrent_dropout
                and getattr(self, "use_cudnn", "auto") is not True
                and self.compute_dtype == "float32"
                and not tf.config.list_physical_devices("GPU"))

    def _input_projection(self, sequences):
        """`sequences @ kernel` for `(batch, timesteps, input_dim)` sequences, as one product
        over all the timesteps: through the sparse CSC product when the kernel's mask keeps at
        most `1 - DEFAULT_SWITCH_SPARSITY` of it (SparseDense's measured crossover for the same
        product), else dense. The structure is read from the mask in the graph (one pass over
        it, small next to the product), so pruning during fit needs no retrace and no cache."""
        kernel = tf.convert_to_tensor(self.cell.kernel)
        mask = tf.convert_to_tensor(self.pruning_masks[0])
        k, n = kernel.shape
        shape = tf.shape(sequences)
        x2 = tf.reshape(sequences, [-1, k])
        density = tf.reduce_mean(tf.cast(mask != 0, tf.float32))

        def structure():
            # CSC of the kernel from its mask: one pass over the mask, ~40% of the dense
            # product's time (measured at 512 x 2048, 1024 rows), hence only in the sparse
            # branch.
            keep = tf.transpose(mask) != 0
            where = tf.where(keep)                 # (nnz, 2) [column, row], column-major
            indices = tf.cast(where[:, 1], tf.int32)
            indptr = tf.concat([tf.zeros([1], tf.int32),
                                tf.cumsum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=1))], 0)
            return indptr, indices, where[:, 1] * n + where[:, 0]

        # The gradient recomputes the structure from the mask rather than reusing the forward's:
        # inside a tf.cond, int arrays the gradient reuses become the cond's intermediate
        # outputs, which TensorFlow pairs with the dense branch's float ones and then logs a
        # long "Type inference failed" warning (see _PrunableKernel._switch).
        @tf.custom_gradient
        def sparse_product(x2, kernel):
            indptr, indices, positions = structure()
            values = tf.gather(tf.reshape(kernel, [-1]), positions)
            y = sk_ops.dense_csc_matmul(x2, indptr, indices, values,
                                        tf.constant([k, n], tf.int64))

            def grad(dy):
                indptr, indices, positions = structure()
                values = tf.gather(tf.reshape(kernel, [-1]), positions)
                # dX = dY @ W^T: W's CSC arrays are W^T's CSR ones (as SparseDense does).
                dx = sk_ops.dense_csr_matmul(dy, indptr, indices, values,
                                             tf.constant([n, k], tf.int64))
                # dW at the kept entries only (an SDDMM over W^T's pattern: (dY^T X)[n, k]);
                # the pruned entries are held at zero whatever their gradient.
                d_values = sk_ops._ops.sparse_keras_csr_sddmm(
                    indptr, indices, tf.constant([n, k], tf.int64), tf.transpose(dy),
                    tf.transpose(x2))
                dk = tf.reshape(tf.scatter_nd(positions[:, None], d_values, [k * n]), [k, n])
                return dx, dk

            return y, grad

        def sparse():
            return sparse_product(x2, kernel)

        def dense():
            return tf.matmul(x2, kernel)

        y = tf.cond(density <= 1.0 - DEFAULT_SWITCH_SPARSITY, sparse, dense)
        return tf.reshape(y, tf.concat([shape[:-1], [n]], 0))

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._hoists(training):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        if isinstance(initial_state, (list, tuple)) and len(initial_state) == 1 \
                and isinstance(initial_state[0], (list, tuple)):
            initial_state = initial_state[0]
        if not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        projected = self._input_projection(sequences)
        input_bias = self._input_bias()
        if input_bias is not None:
            projected = projected + input_bias
        return keras_backend.rnn(self._projected_step, projected, list(initial_state),
                                 go_backwards=self.go_backwards, mask=mask, unroll=self.unroll,
                                 input_length=sequences.shape[1],
                                 zero_output_for_mask=self.zero_output_for_mask,
                                 return_all_outputs=self.return_sequences)

    def _input_bias(self):
        """The part of the bias added to the input projection (None without bias)."""
        return self.cell.bias if self.cell.use_bias else None

    def _projected_step(self, z_t, states):
        """One step of the cell given its projected input `z_t` (input product + input bias):
        the cell's own arithmetic (implementation 2) without the input product."""
        raise NotImplementedError

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
        return convert_from_keras(cls, layer, **cls._options_of(layer), **options)


class _CellImplementation:
    """LSTM and GRU take `implementation` (1 or 2: how the cell arranges its products, same
    maths) and `use_cudnn` but leave both out of their config; the sparse layers keep them in
    theirs, and the conversions carry them over (Keras' own LSTM and GRU accept both)."""

    @staticmethod
    def _options_of(layer):
        return {"implementation": layer.cell.implementation, "use_cudnn": layer.use_cudnn}


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseLSTM(_CellImplementation, _PrunableRNN, keras.layers.LSTM):
    """`keras.layers.LSTM` with prunable `kernel` and `recurrent_kernel` (the input projection
    through the sparse product at high sparsity, see the module's docstring).

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

    def _projected_step(self, z_t, states):
        cell = self.cell
        h_tm1, c_tm1 = states[0], states[1]
        z = z_t + keras.ops.matmul(h_tm1, cell.recurrent_kernel)
        c, o = cell._compute_carry_and_output_fused(keras.ops.split(z, 4, axis=1), c_tm1)
        h = o * cell.activation(c)
        return h, [h, c]


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseGRU(_CellImplementation, _PrunableRNN, keras.layers.GRU):
    """`keras.layers.GRU` with prunable `kernel` and `recurrent_kernel` (the input projection
    through the sparse product at high sparsity, see the module's docstring).

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

    def _input_bias(self):
        cell = self.cell
        if not cell.use_bias:
            return None
        return cell.bias[0] if cell.reset_after else cell.bias

    def _projected_step(self, z_t, states):
        # GRUCell.call, implementation 2, from its input product on.
        cell, u = self.cell, self.cell.units
        h_tm1 = states[0]
        x_z, x_r, x_h = keras.ops.split(z_t, 3, axis=-1)
        if cell.reset_after:
            inner = keras.ops.matmul(h_tm1, cell.recurrent_kernel)
            if cell.use_bias:
                inner = inner + cell.bias[1]
        else:
            inner = keras.ops.matmul(h_tm1, cell.recurrent_kernel[:, :2 * u])
        z = cell.recurrent_activation(x_z + inner[:, :u])
        r = cell.recurrent_activation(x_r + inner[:, u:2 * u])
        if cell.reset_after:
            recurrent_h = r * inner[:, 2 * u:]
        else:
            recurrent_h = keras.ops.matmul(r * h_tm1, cell.recurrent_kernel[:, 2 * u:])
        hh = cell.activation(x_h + recurrent_h)
        h = z * h_tm1 + (1 - z) * hh
        return h, [h]


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseSimpleRNN(_PrunableRNN, keras.layers.SimpleRNN):
    """`keras.layers.SimpleRNN` with prunable `kernel` and `recurrent_kernel` (the input
    projection through the sparse product at high sparsity, see the module's docstring).

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

    def _projected_step(self, z_t, states):
        cell = self.cell
        output = z_t + keras.ops.matmul(states[0], cell.recurrent_kernel)
        if cell.activation is not None:
            output = cell.activation(output)
        return output, [output]


class _MaskedConvLSTM(Prunable):
    """`Prunable` for Keras' convolutional LSTMs: the cell's `kernel` (`(*kernel_size,
    input_channels, 4 * filters)`) and `recurrent_kernel` (`(*kernel_size, filters,
    4 * filters)`) are prunable, computed by Keras' own loop over the zeros (masked dense
    compute: there is no sparse convolution inside the recurrence)."""

    def __init__(self, *args, prunable=True, **kwargs):
        super().__init__(*args, **kwargs)
        _channels_last_only(type(self).__name__, self.data_format)
        self.prunable = bool(prunable)

    def get_prunable_weights(self):
        return [self.cell.kernel, self.cell.recurrent_kernel]

    def get_config(self):
        return dict(super().get_config(), prunable=self.prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConvLSTM1D(_MaskedConvLSTM, keras.layers.ConvLSTM1D):
    """`keras.layers.ConvLSTM1D` with prunable kernels, as `SparseConvLSTM2D` is for
    `ConvLSTM2D`: input `(batch, time, steps, channels)`.

    Example:
        >>> y = sparsekeras.layers.SparseConvLSTM1D(4, 3)(np.ones((2, 5, 10, 3), "float32"))
    """


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConvLSTM2D(_MaskedConvLSTM, keras.layers.ConvLSTM2D):
    """`keras.layers.ConvLSTM2D` with prunable `kernel` and `recurrent_kernel` (masked dense
    compute: Keras' own loop runs over the zeros). Same arguments and behaviour as
    `ConvLSTM2D` (channels_last), plus `prunable`. Masks: the shapes of the cell's kernel,
    `(*kernel_size, channels, 4 * filters)`, and recurrent kernel, `(*kernel_size, filters,
    4 * filters)`. No stored form: `sparsekeras.strip` gives the Keras `ConvLSTM2D` holding
    the zeros.

    Example:
        >>> layer = sparsekeras.layers.SparseConvLSTM2D(4, 3, padding="same")
        >>> y = layer(np.ones((2, 5, 8, 8, 3), "float32"))       # (2, 8, 8, 4)
    """


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConvLSTM3D(_MaskedConvLSTM, keras.layers.ConvLSTM3D):
    """`keras.layers.ConvLSTM3D` with prunable kernels, as `SparseConvLSTM2D` is for
    `ConvLSTM2D`: input `(batch, time, depth, height, width, channels)`."""


def _conv_lstm_check(layer):
    return _conv_check(layer) or _rnn_check(layer)


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
for _keras, _sparse in ((keras.layers.ConvLSTM1D, SparseConvLSTM1D),
                        (keras.layers.ConvLSTM2D, SparseConvLSTM2D),
                        (keras.layers.ConvLSTM3D, SparseConvLSTM3D)):
    _sparse._keras_class = _keras
    register(_keras, _sparse, check=_conv_lstm_check)
del _keras, _sparse
