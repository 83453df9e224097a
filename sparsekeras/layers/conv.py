"""Sparse convolution layers (exported by `sparsekeras.layers`).

- `SparseConv2D`: `keras.layers.Conv2D` with a pruning mask; overrides one seam,
  `convolution_op`, so every Conv2D argument and behaviour is kept. Once the mask is sparse
  enough it convolves through the compiled sparse kernels (forward and both gradients). A
  grouped kernel (`groups > 1`) is a block-diagonal full kernel: the same kernels run it.
- `SparseConv1D`: the same for `keras.layers.Conv1D` (a height-1 2-D convolution; "causal"
  padding too).
- `SparseDepthwiseConv2D`: the same for `keras.layers.DepthwiseConv2D` (which TensorFlow Model
  Optimization never prunes): a depthwise kernel is a sparse full kernel whose nonzeros sit on
  each output channel's own input channel, so the same kernels run it.
- `SparseSeparableConv2D`, `SparseSeparableConv1D`: both kernels (depthwise and pointwise)
  prunable (`Prunable` protocol, two masks); each part convolves sparse from the switch point.
  Stored forms `CompactSeparableConv2D`, `CompactSeparableConv1D`.
- `SparseConv2DTranspose`, `SparseConv3D`, `SparseConv1DTranspose`, `SparseConv3DTranspose`,
  `SparseDepthwiseConv1D`: masked dense compute (`Prunable` protocol).
- `CompactConv2D`, `CompactConv1D`: the inference forms: the kernel only as CSC arrays of its
  `(k_h * k_w * in_channels, out_channels)` reshape. `sparsekeras.strip` produces them.

Masks, the dense/sparse switch and saving behave as in `SparseDense`. channels_last only.
"""
import contextlib

import numpy as np
import keras
import tensorflow as tf

from sparsekeras import _dispatch
from sparsekeras import ops as sk_ops
from sparsekeras.ops._gradients import take as _take
from sparsekeras.layers._base import (
    _COMPUTE_MODES, _fused_activation, _PrunableKernel, _dynamic_variable, _pop_unsupported,
    _structure_from_mask, MaskTarget, Prunable, refresh_on_assign)
from sparsekeras.layers._registry import register

__all__ = ["SparseConv2D", "SparseConv1D", "SparseDepthwiseConv2D", "SparseSeparableConv2D",
           "SparseSeparableConv1D", "SparseConv2DTranspose", "SparseConv3D",
           "SparseConv1DTranspose", "SparseConv3DTranspose", "SparseDepthwiseConv1D",
           "CompactConv2D",
           "CompactConv1D", "CompactSeparableConv2D", "CompactSeparableConv1D",
           "DEFAULT_CONV_SWITCH_SPARSITY",
           "DEFAULT_GROUPED_CONV_SWITCH_SPARSITY"]

# Mask sparsity from which the sparse convolution beats tf.nn.conv2d (oneDNN): measured with
# benchmarks/bench_conv.py (3x3 64->64 and 1x1 128->128 on 56x56, batch 8, 2 threads): both
# layers' forward and training step cross near 0.7 (3x3 at 0.7: 1.07x forward, 0.95x step; 1x1:
# 1.04x / 1.09x; at 0.8 both are 1.2-1.45x faster). Override per layer with `switch_sparsity`.
DEFAULT_CONV_SWITCH_SPARSITY = 0.75
# The same for a grouped convolution (groups > 1): Keras runs it on CPU through an XLA-compiled
# grouped convolution that is slower than the sparse kernels even with no zeros at all (3x3
# 64->64, groups=4, 28x28, batch 8, 2 threads, layer level: at sparsity 0 the sparse path was
# 5.0x faster forward and 29x faster for a training step; at 0.5, 12x / 52x), so "auto"
# computes sparse from the start.
DEFAULT_GROUPED_CONV_SWITCH_SPARSITY = 0.0


def conv_structure(mask):
    """CSC structure of a conv kernel mask (k_h, k_w, in_c, out_c): dict of `indptr`
    (out_c + 1, int32), `indices` (nnz, int32 patch positions) and `positions` (nnz, int64 flat
    row-major positions into the kernel)."""
    mask = np.asarray(mask) != 0
    return _structure_from_mask(mask.reshape(-1, mask.shape[-1]))


def grouped_structure(mask, groups=1):
    """CSC structure of a grouped conv kernel mask `(*taps, in_c // groups, out_c)` as the
    block-diagonal full kernel `(*taps, in_c, out_c)` it stands for: output channel f (of group
    f // (out_c // groups)) reads its group's input channels only. `indices` are patch
    positions `tap * in_c + channel` of the full kernel; `positions` index the grouped kernel
    (row-major), so the values are `grouped_kernel.reshape(-1)[positions]`."""
    mask = np.asarray(mask) != 0
    if groups == 1:
        return conv_structure(mask)
    cg, f = mask.shape[-2:]
    fg = f // groups
    tap, c, out = np.nonzero(mask.reshape(-1, cg, f))
    order = np.lexsort((c, tap, out))          # by output channel, then patch position
    tap, c, out = tap[order], c[order], out[order]
    indptr = np.zeros(f + 1, np.int64)
    np.cumsum(np.bincount(out, minlength=f), out=indptr[1:])
    indices = tap * (cg * groups) + (out // fg) * cg + c
    return dict(indptr=indptr.astype(np.int32), indices=indices.astype(np.int32),
                positions=((tap * cg + c) * f + out).astype(np.int64))


def depthwise_structure(mask):
    """CSC structure of a depthwise mask (k_h, k_w, C, M) as a full (k_h, k_w, C, C * M) sparse
    kernel: output channel c * M + q reads input channel c only. positions index the depthwise
    kernel (row-major)."""
    mask = np.asarray(mask) != 0
    kh, kw, c, m = mask.shape
    # (tap, c, q) -> output channel c*M+q, patch position tap*C + c
    tap, ch, q = np.nonzero(mask.reshape(kh * kw, c, m))
    out = ch * m + q
    order = np.lexsort((tap, out))          # by output channel, then tap
    tap, ch, q, out = tap[order], ch[order], q[order], out[order]
    indptr = np.zeros(c * m + 1, np.int64)
    np.cumsum(np.bincount(out, minlength=c * m), out=indptr[1:])
    return dict(indptr=indptr.astype(np.int32), indices=(tap * c + ch).astype(np.int32),
                positions=(tap * c + ch) * m + q)


def _channels_last_only(name, data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{name} supports data_format='channels_last' only. "
                         f"Received: data_format={data_format!r}")


class _PrunableConv(_PrunableKernel):
    """The sparse conv layers' part of `_PrunableKernel`: their default switch point, the
    sparse convolution itself and the stored form."""

    _default_switch_sparsity = DEFAULT_CONV_SWITCH_SPARSITY

    def _switch(self, sparse_fn, dense_fn, rows=None):
        if self.compute == "auto" and self.switch_sparsity <= 0.0:
            return sparse_fn()  # sparse at any mask: no dense branch to trace (grouped layers)
        return super()._switch(sparse_fn, dense_fn, rows=rows)

    def _refresh_more(self, mask):
        # The cost model's rows (output positions) for the sparse convolution: K = taps x
        # input channels of the full kernel, N = output channels; the dense convolution's work
        # per position is the kernel's own size (a depthwise or grouped kernel is smaller than
        # its block-diagonal full form).
        if getattr(self, "_sparse_rows", None) is not None:
            *taps, cin, cout = self._full_kernel_shape()
            _dispatch.refresh(self, int(np.prod(taps)) * cin, cout, int(np.count_nonzero(mask)),
                              kind="conv", dense_kn=int(mask.size),
                              strided=any(int(v) > 1 for v in self.strides))

    def _output_positions(self, x):
        """Output positions of a call on x (batch x output spatial size, 'same'-style ceil
        division by the strides; a Python int where x's shape is static)."""
        spatial = 1
        for size, stride in zip(x.shape[1:-1], self.strides):
            if size is None:
                return tf.shape(x)[0] * tf.reduce_prod(tf.shape(x)[1:-1])
            spatial *= -(-int(size) // int(stride))
        return spatial * (int(x.shape[0]) if x.shape[0] is not None else tf.shape(x)[0])

    def _full_kernel_shape(self):
        """The (k_h, k_w, in_channels, out_channels) kernel the sparse convolution computes
        with (a grouped or depthwise kernel as its block-diagonal full kernel)."""
        *taps, cg, f = (int(d) for d in self._kernel_variable().shape)
        return tuple(taps) + (cg * self.groups, f)

    def _stored_kwargs(self):
        return dict(name=self.name, strides=self.strides, padding=self.padding,
                    dilation_rate=self.dilation_rate,
                    activation=keras.activations.serialize(self.activation),
                    dtype=self.dtype_policy)

    def to_stored(self, block="auto"):
        """The stored form (`CompactConv2D`, `CompactConv1D` for `SparseConv1D`): the kept
        weights only, as CSC arrays (a grouped or depthwise kernel as its block-diagonal full
        kernel). `block` is accepted for `strip` and not used (convolutions store CSC)."""
        kernel = (keras.ops.convert_to_numpy(self._kernel_variable())
                  * keras.ops.convert_to_numpy(self.mask))
        bias = keras.ops.convert_to_numpy(self.bias) if self.bias is not None else None
        s = self._structure(kernel != 0)
        return self._stored_class.from_structure(s, kernel.reshape(-1)[s["positions"]],
                                                 self._full_kernel_shape(), bias,
                                                 **self._stored_kwargs())

    def _sparse_conv(self, inputs, kernel, full_kernel_shape, strides=None, dilations=None,
                     padding=None):
        indptr = tf.convert_to_tensor(self._csc_indptr)
        indices = tf.convert_to_tensor(self._csc_indices)
        positions = tf.convert_to_tensor(self._positions)
        values = _take(tf.reshape(kernel, [-1]), positions)
        return sk_ops.csr_conv2d(inputs, indptr, indices, values, full_kernel_shape,
                                 strides=tuple(strides or self.strides),
                                 padding=padding or self.padding,
                                 dilations=tuple(dilations or self.dilation_rate))


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv2D(_PrunableConv, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a pruning mask and compiled sparse convolution.

    Same arguments and behaviour as `Conv2D` (channels_last), plus:

    Args:
        switch_sparsity: mask sparsity from which the layer convolves through the sparse
            kernels; below it through `tf.nn.conv2d`. Default `DEFAULT_CONV_SWITCH_SPARSITY`
            (`DEFAULT_GROUPED_CONV_SWITCH_SPARSITY`, 0: always sparse, with `groups > 1`).
        compute: "auto", "dense" or "sparse".
        prunable: whether `GradualPruning` prunes this layer.

    With `groups > 1` the mask has the grouped kernel's shape `(k_h, k_w, in_channels //
    groups, filters)`; the sparse path computes the block-diagonal full kernel's nonzeros (the
    same work as the grouped convolution's), and `strip` stores it as a `CompactConv2D`.

    Input `(batch, height, width, channels)`; output `(batch, new_height, new_width, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv2D(32, 3, padding="same", activation="relu")
        >>> y = layer(tf.ones((8, 28, 28, 16)))
        >>> layer.set_mask(np.random.rand(3, 3, 16, 32) > 0.9)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, switch_sparsity=None,
                 compute="auto", prunable=True, **kwargs):
        _pop_unsupported(type(self).__name__, kwargs, ("lora_rank", "lora_alpha"))
        if switch_sparsity is None and groups != 1:
            switch_sparsity = DEFAULT_GROUPED_CONV_SWITCH_SPARSITY
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_sparse(switch_sparsity, compute, prunable, self.kernel_constraint)

    def _kernel_variable(self):
        return self._kernel

    def _structure(self, mask):
        return grouped_structure(mask, self.groups)

    def build(self, input_shape):
        super().build(input_shape)
        _dispatch.attach(self)  # the rows where the cost model picks sparse compute
        self._build_sparse()

    def convolution_op(self, inputs, kernel):
        inputs = tf.convert_to_tensor(inputs)
        shape = self._full_kernel_shape()
        return self._switch(lambda: self._sparse_conv(inputs, kernel, shape),
                            lambda: super(SparseConv2D, self).convolution_op(inputs, kernel),
                            rows=self._output_positions(inputs))

    def get_config(self):
        return self._sparse_config(super().get_config(), drop=("lora_rank", "lora_alpha"))

    @classmethod
    def from_conv(cls, layer, **kwargs):
        """A SparseConv2D with the configuration of a `keras.layers.Conv2D` (weights not copied;
        `sparsekeras.sparsify` copies them)."""
        config = layer.get_config()
        for key in ("lora_rank", "lora_alpha"):
            config.pop(key, None)
        config.update(kwargs)
        return cls(**config)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv1D(_PrunableConv, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with a pruning mask and compiled sparse convolution.

    Same arguments and behaviour as `Conv1D` (channels_last; "valid", "same" and "causal"
    padding; `groups`), plus `switch_sparsity`, `compute` and `prunable` as in `SparseConv2D`.
    The sparse path is the 2-D sparse convolution of the input seen as height 1:
    `(batch, length, channels)` -> `(batch, 1, length, channels)` with the kernel
    `(1, kernel_size, channels // groups, filters)`; "causal" pads the sequence on the left and
    convolves "valid", as Conv1D does. `strip` stores it as a `CompactConv1D`.

    Input `(batch, length, channels)`; output `(batch, new_length, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv1D(32, 5, padding="causal")
        >>> y = layer(tf.ones((8, 100, 16)))
        >>> layer.set_mask(np.random.rand(5, 16, 32) > 0.9)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, switch_sparsity=None,
                 compute="auto", prunable=True, **kwargs):
        _pop_unsupported(type(self).__name__, kwargs, ("lora_rank", "lora_alpha"))
        if switch_sparsity is None and groups != 1:
            switch_sparsity = DEFAULT_GROUPED_CONV_SWITCH_SPARSITY
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_sparse(switch_sparsity, compute, prunable, self.kernel_constraint)

    def _kernel_variable(self):
        return self._kernel

    def _structure(self, mask):
        mask = np.asarray(mask)
        return grouped_structure(mask.reshape((1,) + mask.shape), self.groups)

    def _full_kernel_shape(self):
        k, cg, f = (int(d) for d in self._kernel.shape)
        return (1, k, cg * self.groups, f)

    def _stored_kwargs(self):
        return dict(name=self.name, strides=self.strides, padding=self.padding,
                    dilation_rate=self.dilation_rate,
                    activation=keras.activations.serialize(self.activation),
                    dtype=self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        _dispatch.attach(self)  # the rows where the cost model picks sparse compute
        self._build_sparse()

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        padding = self.padding
        if padding == "causal":
            x = keras.ops.pad(x, self._compute_causal_padding())
            padding = "valid"
        kernel = self.kernel

        def sparse():
            y = self._sparse_conv(x[:, None], kernel, self._full_kernel_shape(),
                                  strides=(1, self.strides[0]),
                                  dilations=(1, self.dilation_rate[0]), padding=padding)
            return y[:, 0]

        def dense():
            return keras.ops.conv(x, kernel, strides=list(self.strides), padding=padding,
                                  dilation_rate=self.dilation_rate, data_format=self.data_format)

        y = self._switch(sparse, dense, rows=self._output_positions(x))
        if self.use_bias:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def get_config(self):
        return self._sparse_config(super().get_config(), drop=("lora_rank", "lora_alpha"))


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseDepthwiseConv2D(_PrunableConv, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with a pruning mask and compiled sparse convolution.

    Same arguments as `DepthwiseConv2D` (channels_last), plus `switch_sparsity`, `compute` and
    `prunable` as in `SparseConv2D`. The mask has the depthwise kernel's shape
    `(k_h, k_w, channels, depth_multiplier)`.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, switch_sparsity=None,
                 compute="auto", prunable=True, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding,
                         depth_multiplier=depth_multiplier, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self._init_sparse(switch_sparsity, compute, prunable, self.depthwise_constraint)

    def _kernel_variable(self):
        return self.kernel

    def _structure(self, mask):
        return depthwise_structure(mask)

    def _full_kernel_shape(self):
        kh, kw, c, m = (int(d) for d in self.kernel.shape)
        return (kh, kw, c, c * m)

    def pruning_view(self, array):
        """The kernel (or mask) as GradualPruning scores it: `(k_h, k_w, 1, channels *
        depth_multiplier)`, so that "channel" granularity prunes whole depthwise filters."""
        a = np.asarray(array)
        return a.reshape(a.shape[0], a.shape[1], 1, -1)

    def from_pruning_view(self, mask):
        return np.asarray(mask).reshape(tuple(self.kernel.shape))

    def build(self, input_shape):
        super().build(input_shape)
        _dispatch.attach(self)  # the rows where the cost model picks sparse compute
        self._build_sparse()

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)

        def dense():
            return keras.ops.depthwise_conv(x, tf.cast(self.kernel, x.dtype), strides=self.strides,
                                            padding=self.padding, dilation_rate=self.dilation_rate,
                                            data_format=self.data_format)

        y = self._switch(lambda: self._sparse_conv(x, tf.cast(self.kernel, x.dtype),
                                                   self._full_kernel_shape()), dense,
                         rows=self._output_positions(x))
        if self.use_bias:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def get_config(self):
        return self._sparse_config(super().get_config(), constraint_key="depthwise_constraint")

    def _stored_kwargs(self):
        # the stored CompactConv2D's dense path is then the depthwise convolution itself
        return dict(super()._stored_kwargs(), depth_multiplier=int(self.kernel.shape[-1]))

    @classmethod
    def from_depthwise(cls, layer, **kwargs):
        """A SparseDepthwiseConv2D with the configuration of a `keras.layers.DepthwiseConv2D`."""
        config = layer.get_config()
        config.update(kwargs)
        return cls(**config)


# ---- the Prunable-protocol convolutions (masks; sparse compute where a kernel applies) --------



class _ViewedTarget(MaskTarget):
    """A `MaskTarget` that GradualPruning scores in another shape (`pruning_view`), as
    `SparseDepthwiseConv2D` does: structured granularities ("channel", "n:m", "block") read the
    last axis as the output channels and the one before as the input channels."""

    def __init__(self, layer, weight, mask, label, view, unview):
        super().__init__(layer, weight, mask, label)
        self._view, self._unview = view, unview

    def pruning_view(self, array):
        return self._view(np.asarray(array))

    def from_pruning_view(self, mask):
        return self._unview(np.asarray(mask))


def _depthwise_view(shape):
    """A depthwise kernel `(*taps, C, M)` seen as `(*taps, 1, C * M)`: "channel" prunes whole
    depthwise filters."""
    return (lambda a: a.reshape(shape[:-2] + (1, -1)), lambda m: m.reshape(shape))


def _transpose_view(ndim):
    """A transposed convolution's kernel `(*taps, out, in)` seen as `(*taps, in, out)`."""
    axes = tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)
    return (lambda a: np.transpose(a, axes), lambda m: np.transpose(m, axes))


class _MaskedConv(Prunable):
    """`Prunable` with the conversions of the sparse layers: `from_keras` (sparsify),
    `to_keras` (strip without a stored form, densify), and Keras' generic saving of every
    variable (the Keras convolutions save kernel and bias only, which would drop the masks)."""

    def _init_prunable(self, prunable):
        _channels_last_only(type(self).__name__, self.data_format)
        self.prunable = bool(prunable)

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


    def get_config(self):
        config = super().get_config()
        for key in ("lora_rank", "lora_alpha"):
            config.pop(key, None)
        config["prunable"] = self.prunable
        return config


class _SparseSeparable(_MaskedConv):
    """The separable convolutions: depthwise kernel `(*kernel_size, C, M)` and pointwise
    kernel `(*1s, C * M, F)`, each with its own mask (the `Prunable` protocol) and its own
    dense/sparse switch: the depthwise part convolves through the sparse kernels as a sparse
    full `(*kernel_size, C, C * M)` kernel (as `SparseDepthwiseConv2D`), the pointwise part as
    a sparse 1x1 convolution (a sparse matrix product over the pixels). A 1-D layer computes as
    the 2-D one on a height-1 input."""

    _default_switch_sparsity = DEFAULT_CONV_SWITCH_SPARSITY
    _PARTS = ("depthwise", "pointwise")
    _takes_sparse_options = True  # sparsify passes its compute / switch_sparsity

    def _init_sparse_options(self, switch_sparsity, compute, prunable):
        self._init_prunable(prunable)
        if switch_sparsity is None:
            switch_sparsity = self._default_switch_sparsity
        if not 0.0 <= float(switch_sparsity) <= 1.0:
            raise ValueError("Expected `switch_sparsity` in [0, 1]. "
                             f"Received: switch_sparsity={switch_sparsity}")
        if compute not in _COMPUTE_MODES:
            raise ValueError(f"Expected `compute` in {_COMPUTE_MODES}. "
                             f"Received: compute={compute!r}")
        self.switch_sparsity = float(switch_sparsity)
        self.compute = compute

    def get_prunable_weights(self):
        return [self.depthwise_kernel, self.pointwise_kernel]

    def to_stored(self, block="auto"):
        """The stored form (`CompactSeparableConv2D` / `CompactSeparableConv1D`): each kernel's
        kept weights only. `block` is accepted for `strip` and not used (CSC)."""
        dk, pk = (keras.ops.convert_to_numpy(w) * keras.ops.convert_to_numpy(m)
                  for w, m in zip(self.get_prunable_weights(), self.pruning_masks))
        bias = keras.ops.convert_to_numpy(self.bias) if self.bias is not None else None
        return self._stored_class.from_kernels(
            dk, pk, bias, name=self.name, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate,
            activation=keras.activations.serialize(self.activation), dtype=self.dtype_policy)

    def pruning_targets(self):
        """Both kernels; the depthwise one scored as `(*kernel_size, 1, C * M)` (so "channel"
        granularity prunes whole depthwise filters, as for `SparseDepthwiseConv2D`)."""
        targets = super().pruning_targets()
        if targets:
            dw = targets[0]
            targets[0] = _ViewedTarget(self, dw.kernel, dw.mask, dw.label,
                                       *_depthwise_view(tuple(dw.mask.shape)))
        return targets

    def build(self, input_shape):
        super().build(input_shape)
        self._structures = {}
        for part in self._PARTS:
            self._structures[part] = dict(
                indptr=_dynamic_variable(np.zeros(1), np.int32, f"{part}_indptr"),
                indices=_dynamic_variable(np.zeros(0), np.int32, f"{part}_indices"),
                positions=_dynamic_variable(np.zeros(0), np.int64, f"{part}_positions"),
                on=tf.Variable(False, trainable=False, name=f"{part}_sparse_on"))

    def _post_build(self):
        super()._post_build()  # Prunable: the masks
        for mask in self.pruning_masks:
            refresh_on_assign(self, mask, "_structures")
        self.refresh_structure()

    def _kernels_2d_shapes(self):
        """(depthwise (k_h, k_w, C, M), pointwise (1, 1, C * M, F)) as the 2-D computation sees
        them."""
        dw = tuple(int(d) for d in self.depthwise_kernel.shape)
        pw = tuple(int(d) for d in self.pointwise_kernel.shape)
        if self.rank == 1:
            dw, pw = (1,) + dw, (1,) + pw
        return dw, pw

    def refresh_structure(self):
        """Recompute both cached sparse structures and switches from the masks."""
        if self.pruning_masks is None:
            return
        dw_shape, pw_shape = self._kernels_2d_shapes()
        dw_mask, pw_mask = (keras.ops.convert_to_numpy(m) != 0 for m in self.pruning_masks)
        found = {"depthwise": depthwise_structure(dw_mask.reshape(dw_shape)),
                 "pointwise": _structure_from_mask(pw_mask.reshape(pw_shape[2:]))}
        for part, mask in zip(self._PARTS, (dw_mask, pw_mask)):
            cached, s = self._structures[part], found[part]
            for key in ("indptr", "indices", "positions"):
                cached[key].assign(s[key])
            sparsity = 1.0 - float(mask.sum()) / mask.size if mask.size else 0.0
            cached["on"].assign(sparsity >= self.switch_sparsity)

    @property
    def sparse_parts(self):
        """{"depthwise": bool, "pointwise": bool}: which parts the next call computes through
        the sparse kernels."""
        if self.compute != "auto":
            return {part: self.compute == "sparse" for part in self._PARTS}
        return {part: bool(self._structures[part]["on"].numpy()) for part in self._PARTS}

    @property
    def uses_sparse_kernels(self):
        """Whether the next call computes either part through the sparse kernels."""
        return any(self.sparse_parts.values())

    def _part(self, part, sparse_fn, dense_fn):
        if self.compute == "sparse":
            return sparse_fn()
        return tf.cond(self._structures[part]["on"], sparse_fn, dense_fn)

    def _sparse_part(self, part, x, kernel, full_shape, strides, dilations, padding):
        s = self._structures[part]
        values = _take(tf.reshape(kernel, [-1]), tf.convert_to_tensor(s["positions"]))
        return sk_ops.csr_conv2d(x, tf.convert_to_tensor(s["indptr"]),
                                 tf.convert_to_tensor(s["indices"]), values, full_shape,
                                 strides=strides, padding=padding, dilations=dilations)

    def call(self, inputs):
        if self.compute == "dense":
            return super().call(inputs)  # the Keras layer's own separable convolution
        x = tf.convert_to_tensor(inputs)
        dw_shape, pw_shape = self._kernels_2d_shapes()
        strides, dilations = tuple(self.strides), tuple(self.dilation_rate)
        if self.rank == 1:
            x, strides, dilations = x[:, None], (1,) + strides, (1,) + dilations
        dk = tf.reshape(tf.cast(self.depthwise_kernel, x.dtype), dw_shape)
        pk = tf.reshape(tf.cast(self.pointwise_kernel, x.dtype), pw_shape)
        kh, kw, c, m = dw_shape

        h = self._part(
            "depthwise",
            lambda: self._sparse_part("depthwise", x, dk, (kh, kw, c, c * m), strides,
                                      dilations, self.padding),
            lambda: keras.ops.depthwise_conv(x, dk, strides=strides, padding=self.padding,
                                             dilation_rate=dilations))
        y = self._part(
            "pointwise",
            lambda: self._sparse_part("pointwise", h, pk, pw_shape, (1, 1), (1, 1), "valid"),
            # tf.nn.conv2d rather than keras.ops.conv: the latter's graph inside tf.cond made
            # TensorFlow's type inference log an error in every traced training step.
            lambda: tf.nn.conv2d(h, pk, 1, "VALID"))
        if self.rank == 1:
            y = y[:, 0]
        if self.use_bias:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def get_config(self):
        config = super().get_config()
        config.update(switch_sparsity=self.switch_sparsity, compute=self.compute)
        return config


_SEPARABLE_DOC = """

    Same arguments and behaviour as `keras.layers.{keras}` (channels_last), plus:

    Args:
        switch_sparsity: mask sparsity from which a part (depthwise or pointwise, each by its
            own mask) convolves through the sparse kernels; below it densely. Default
            `DEFAULT_CONV_SWITCH_SPARSITY`.
        compute: "auto", "dense" (the Keras layer's own computation) or "sparse" (both parts).
        prunable: whether `GradualPruning` prunes this layer.

    Both `depthwise_kernel` and `pointwise_kernel` are prunable (masks
    `depthwise_kernel_mask`, `pointwise_kernel_mask`; `pruning_targets()` gives both).
    `sparsekeras.strip` stores it as a `Compact{keras}` (both kernels as CSC arrays).
"""


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseSeparableConv2D(_SparseSeparable, keras.layers.SeparableConv2D):
    __doc__ = ("`keras.layers.SeparableConv2D` with a mask on each kernel and compiled sparse "
               "convolution." + _SEPARABLE_DOC.format(keras="SeparableConv2D") + """
    Input `(batch, height, width, channels)`; output `(batch, new_height, new_width, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseSeparableConv2D(32, 3, padding="same")
        >>> y = layer(tf.ones((8, 28, 28, 16)))
        >>> [t.name for t in layer.pruning_targets()]   # depthwise_kernel, pointwise_kernel
    """)

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, pointwise_constraint=None, bias_constraint=None,
                 switch_sparsity=None, compute="auto", prunable=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         pointwise_initializer=pointwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         pointwise_regularizer=pointwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         pointwise_constraint=pointwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self._init_sparse_options(switch_sparsity, compute, prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseSeparableConv1D(_SparseSeparable, keras.layers.SeparableConv1D):
    __doc__ = ("`keras.layers.SeparableConv1D` with a mask on each kernel and compiled sparse "
               "convolution." + _SEPARABLE_DOC.format(keras="SeparableConv1D") + """
    Input `(batch, length, channels)`; output `(batch, new_length, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseSeparableConv1D(32, 5, padding="same")
        >>> y = layer(tf.ones((8, 100, 16)))
    """)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, pointwise_constraint=None, bias_constraint=None,
                 switch_sparsity=None, compute="auto", prunable=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         pointwise_initializer=pointwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         pointwise_regularizer=pointwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         pointwise_constraint=pointwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)
        self._init_sparse_options(switch_sparsity, compute, prunable)


class _TransposedKernel:
    """The transposed convolutions' kernel `(*taps, filters, in_channels)`, pruned through its
    one mask and scored with its last two axes swapped, `(*taps, in_channels, filters)`, so
    that "channel" granularity prunes whole output filters as for a convolution."""

    def get_prunable_weights(self):
        return [self.kernel]

    def pruning_targets(self):
        """The kernel, scored with its last two axes swapped."""
        return [_ViewedTarget(self, t.kernel, t.mask, t.label, *_transpose_view(len(t.mask.shape)))
                for t in super().pruning_targets()]


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv2DTranspose(_TransposedKernel, _MaskedConv, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with a pruning mask (masked dense compute).

    Same arguments and behaviour as `Conv2DTranspose` (channels_last), plus `prunable`. The
    mask has the kernel's shape `(k_h, k_w, filters, in_channels)`; GradualPruning scores it
    with its last two axes swapped, so "channel" granularity prunes whole output filters. The
    layer computes with Keras' own transposed convolution over
    the kernel's zeros: there is no sparse transposed-convolution kernel with gradients. No
    stored form: `sparsekeras.strip` gives the Keras `Conv2DTranspose` holding the pruned
    weights as zeros.

    Input `(batch, height, width, channels)`; output `(batch, new_height, new_width, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv2DTranspose(16, 3, strides=2, padding="same")
        >>> y = layer(tf.ones((8, 14, 14, 32)))                        # (8, 28, 28, 16)
        >>> layer.pruning_targets()[0].set_mask(np.random.rand(3, 3, 16, 32) > 0.9)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, prunable=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         output_padding=output_padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_prunable(prunable)



@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv1DTranspose(_TransposedKernel, _MaskedConv, keras.layers.Conv1DTranspose):
    """`keras.layers.Conv1DTranspose` with a pruning mask (masked dense compute).

    Same arguments and behaviour as `Conv1DTranspose` (channels_last), plus `prunable`. The
    mask has the kernel's shape `(k, filters, in_channels)`, scored with its last two axes
    swapped (see `SparseConv2DTranspose`). No stored form: `sparsekeras.strip` gives the Keras
    `Conv1DTranspose` holding the pruned weights as zeros.

    Input `(batch, steps, channels)`; output `(batch, new_steps, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv1DTranspose(8, 3, strides=2, padding="same")
        >>> y = layer(tf.ones((4, 10, 6)))                               # (4, 20, 8)
    """

    def __init__(self, *args, prunable=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_prunable(prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv3DTranspose(_TransposedKernel, _MaskedConv, keras.layers.Conv3DTranspose):
    """`keras.layers.Conv3DTranspose` with a pruning mask (masked dense compute).

    Same arguments and behaviour as `Conv3DTranspose` (channels_last), plus `prunable`. The
    mask has the kernel's shape `(k_d, k_h, k_w, filters, in_channels)`, scored with its last
    two axes swapped (see `SparseConv2DTranspose`). No stored form: `sparsekeras.strip` gives
    the Keras `Conv3DTranspose` holding the pruned weights as zeros.

    Input `(batch, depth, height, width, channels)`; output `(batch, new_depth, new_height,
    new_width, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv3DTranspose(4, 2, strides=2)
        >>> y = layer(tf.ones((2, 3, 3, 3, 5)))                          # (2, 6, 6, 6, 4)
    """

    def __init__(self, *args, prunable=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_prunable(prunable)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseDepthwiseConv1D(_MaskedConv, keras.layers.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` with a pruning mask (masked dense compute).

    Same arguments and behaviour as `DepthwiseConv1D` (channels_last), plus `prunable`. The
    mask has the kernel's shape `(k, channels, depth_multiplier)`; GradualPruning scores it as
    `(k, 1, channels * depth_multiplier)`, so "channel" granularity prunes whole depthwise
    filters (as for `SparseDepthwiseConv2D`). No stored form: `sparsekeras.strip` gives the
    Keras `DepthwiseConv1D` holding the pruned weights as zeros.

    Input `(batch, steps, channels)`; output `(batch, new_steps, channels * depth_multiplier)`.

    Example:
        >>> layer = sparsekeras.layers.SparseDepthwiseConv1D(3, padding="same")
        >>> y = layer(tf.ones((4, 10, 6)))                               # (4, 10, 6)
    """

    def __init__(self, *args, prunable=True, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_prunable(prunable)

    def get_prunable_weights(self):
        return [self.kernel]

    def pruning_targets(self):
        """The kernel, scored as `(k, 1, channels * depth_multiplier)`."""
        return [_ViewedTarget(self, t.kernel, t.mask, t.label,
                              *_depthwise_view(tuple(t.mask.shape)))
                for t in super().pruning_targets()]


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv3D(_MaskedConv, keras.layers.Conv3D):
    """`keras.layers.Conv3D` with a pruning mask (masked dense compute).

    Same arguments and behaviour as `Conv3D` (channels_last, `groups` too), plus `prunable`.
    The mask has the kernel's shape `(k_d, k_h, k_w, in_channels // groups, filters)`; the layer
    computes with Keras' own convolution over the kernel's zeros. No stored form:
    `sparsekeras.strip` gives the Keras `Conv3D` holding the pruned weights as zeros.

    Input `(batch, depth, height, width, channels)`; output `(batch, new_depth, new_height,
    new_width, filters)`.

    Example:
        >>> layer = sparsekeras.layers.SparseConv3D(8, 3, padding="same")
        >>> y = layer(tf.ones((2, 8, 8, 8, 4)))
        >>> layer.pruning_targets()[0].set_mask(np.random.rand(3, 3, 3, 4, 8) > 0.9)
    """

    def __init__(self, filters, kernel_size, strides=(1, 1, 1), padding="valid",
                 data_format=None, dilation_rate=(1, 1, 1), groups=1, activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, prunable=True, **kwargs):
        _pop_unsupported(type(self).__name__, kwargs, ("lora_rank", "lora_alpha"))
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_prunable(prunable)

    def get_prunable_weights(self):
        return [self._kernel]


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactConv2D(keras.layers.Layer):
    """A 2-D convolution whose kernel is stored only as CSC arrays of its `(k_h * k_w *
    in_channels, filters)` reshape: memory, file size and compute scale with the nonzeros.
    Trainable on its nonzero values (fixed structure). Built by `sparsekeras.strip` from
    `SparseConv2D` and `SparseDepthwiseConv2D` (a depthwise kernel becomes a sparse full one),
    or with `CompactConv2D.from_kernel(kernel, bias, ...)`.

    Args:
        filters: output channels. kernel_size, strides, padding, dilation_rate, activation,
            use_bias: as in Conv2D (channels_last). nnz: number of stored weights.
        depth_multiplier: None, or M for a depthwise kernel stored as its block-diagonal full
            one (filters = in_channels * M; `from_depthwise_kernel`, `strip`): the dense path
            the cost model may pick is then the depthwise convolution (k_h * k_w * M
            multiply-adds per output value, not k_h * k_w * in_channels).
    """

    def __init__(self, filters, kernel_size, nnz, strides=(1, 1), padding="valid",
                 dilation_rate=(1, 1), activation=None, use_bias=True, depth_multiplier=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"Expected a positive integer `filters`. Received: filters={filters}")
        if depth_multiplier is not None and (
                isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int)
                or depth_multiplier <= 0 or filters % depth_multiplier):
            raise ValueError("Expected `depth_multiplier` None or a positive integer dividing "
                             f"`filters`. Received: depth_multiplier={depth_multiplier!r}, "
                             f"filters={filters!r}")
        self.depth_multiplier = depth_multiplier
        if not isinstance(nnz, int) or nnz < 0:
            raise ValueError(f"Expected a non-negative integer `nnz`. Received: nnz={nnz}")
        self.filters = filters
        self.kernel_size = tuple(sk_ops._pair(kernel_size, "kernel_size"))
        self.strides = tuple(sk_ops._pair(strides, "strides"))
        self.dilation_rate = tuple(sk_ops._pair(dilation_rate, "dilation_rate"))
        self.padding = sk_ops._padding(padding).lower()
        self.nnz = nnz
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        cin = int(input_shape[-1])
        if self.depth_multiplier is not None and cin * self.depth_multiplier != self.filters:
            raise ValueError(f"A depthwise CompactConv2D needs filters = in_channels x "
                             f"depth_multiplier. Received: filters={self.filters}, "
                             f"in_channels={cin}, depth_multiplier={self.depth_multiplier}")
        self.in_channels = cin
        self.indptr = self.add_weight(name="indptr", shape=(self.filters + 1,), dtype="int32",
                                      initializer="zeros", trainable=False)
        self.indices = self.add_weight(name="indices", shape=(self.nnz,), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.values = self.add_weight(name="values", shape=(self.nnz,), initializer="zeros",
                                      trainable=True)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: cin})

    def _sparse_rows(self):
        """(lo, hi): the output positions per call for which the cost model predicts the
        sparse convolution faster than tf.nn.conv2d with the dense kernel (fixed structure:
        computed once)."""
        rows = self.__dict__.get("_sparse_rows_cache")
        if rows is None:
            k = int(np.prod(self.kernel_size)) * self.in_channels
            dense_kn = None if self.depth_multiplier is None else \
                int(np.prod(self.kernel_size)) * self.filters  # the depthwise kernel's size
            rows = _dispatch.sparse_rows(k, self.filters, self.nnz, kind="conv",
                                         dense_kn=dense_kn,
                                         strided=any(int(v) > 1 for v in self.strides))
            self.__dict__["_sparse_rows_cache"] = rows
        return rows

    def _sparse_conv(self, x, epilogue=False):
        """The sparse convolution of x; with `epilogue`, the layer's output: the bias and a
        linear / ReLU / ReLU6 / GELU activation applied by the op as it stores each output
        tile (CsrConv2DBiasAct: a separate BiasAdd and Relu6 each pass over the whole
        output, ~0.2 ms a layer at batch 32 in a MobileNet), other activations after it."""
        act = _fused_activation(self.activation) if epilogue else "linear"
        fused = act is not None
        bias = tf.cast(self.bias, x.dtype) if epilogue and fused and self.bias is not None \
            else None
        # Eager: one kernel thread for a small call (see _dispatch.eager_threads).
        threads = _dispatch.eager_threads(
            _PrunableConv._output_positions(self, x) * self.nnz, "conv") \
            if tf.executing_eagerly() else contextlib.nullcontext()
        with threads:
            y = sk_ops.csr_conv2d(x, self.indptr, self.indices, tf.cast(self.values, x.dtype),
                                  self.kernel_size + (self.in_channels, self.filters),
                                  strides=self.strides, padding=self.padding,
                                  dilations=self.dilation_rate,
                                  bias=bias, activation=act if fused else None)
        return y if fused else self._epilogue(y)

    def _epilogue(self, y):
        """y + bias (a BiasAdd, which TensorFlow's graph optimizer fuses with the dense
        convolution and a ReLU / ReLU6 after it), then the activation."""
        if self.bias is not None:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y) if self.activation is not None else y

    def _dense_conv(self, x, epilogue=False):
        """tf.nn.conv2d with the dense kernel scattered from the stored values in this call
        (O(kernel size), against the convolution's O(positions x kernel size); the values
        get their gradient through the scatter). No dense copy is kept: memory stays
        proportional to the nonzeros, and trained values are never stale. With `epilogue`,
        the layer's output (`_epilogue`)."""
        if epilogue:
            return self._epilogue(self._dense_conv(x))
        k = int(np.prod(self.kernel_size)) * self.in_channels
        indptr = tf.convert_to_tensor(self.indptr)
        cols = tf.repeat(tf.range(self.filters, dtype=tf.int32), indptr[1:] - indptr[:-1])
        if self.depth_multiplier is not None:
            # row tap * C + c, column c * M + q -> the depthwise kernel's (tap, c, q)
            m = self.depth_multiplier
            flat = tf.cast(tf.convert_to_tensor(self.indices), tf.int64) * m + \
                tf.cast(cols % m, tf.int64)
            kernel = tf.reshape(
                tf.scatter_nd(flat[:, None], tf.cast(self.values, x.dtype),
                              tf.constant([k * m], tf.int64)),
                self.kernel_size + (self.in_channels, m))
            return keras.ops.depthwise_conv(x, kernel, strides=self.strides,
                                            padding=self.padding,
                                            dilation_rate=self.dilation_rate,
                                            data_format="channels_last")
        flat = tf.cast(tf.convert_to_tensor(self.indices), tf.int64) * self.filters + \
            tf.cast(cols, tf.int64)
        kernel = tf.reshape(
            tf.scatter_nd(flat[:, None], tf.cast(self.values, x.dtype),
                          tf.constant([k * self.filters], tf.int64)),
            self.kernel_size + (self.in_channels, self.filters))
        return tf.nn.conv2d(x, kernel, strides=(1,) + tuple(self.strides) + (1,),
                            padding=self.padding.upper(),
                            dilations=(1,) + tuple(self.dilation_rate) + (1,))

    @classmethod
    def from_structure(cls, structure, values, kernel_shape, bias=None, **kwargs):
        layer = cls(filters=int(kernel_shape[3]), kernel_size=tuple(kernel_shape[:2]),
                    nnz=int(len(values)), use_bias=bias is not None, **kwargs)
        layer.build((None, None, None, int(kernel_shape[2])))
        layer.indptr.assign(structure["indptr"])
        layer.indices.assign(structure["indices"])
        layer.values.assign(np.asarray(values).astype(layer.values.dtype))
        if bias is not None:
            layer.bias.assign(np.asarray(bias))
        return layer

    @classmethod
    def from_kernel(cls, kernel, bias=None, **kwargs):
        """A built CompactConv2D holding the nonzeros of `kernel` (k_h, k_w, in_c, filters)."""
        kernel = np.asarray(kernel)
        s = conv_structure(kernel != 0)
        return cls.from_structure(s, kernel.reshape(-1)[s["positions"]], kernel.shape, bias,
                                  **kwargs)

    @classmethod
    def from_depthwise_kernel(cls, kernel, bias=None, **kwargs):
        """A built CompactConv2D computing the depthwise convolution of `kernel`
        (k_h, k_w, C, M)."""
        kernel = np.asarray(kernel)
        kh, kw, c, m = kernel.shape
        s = depthwise_structure(kernel != 0)
        kwargs.setdefault("depth_multiplier", int(m))
        return cls.from_structure(s, kernel.reshape(-1)[s["positions"]], (kh, kw, c, c * m), bias,
                                  **kwargs)

    @property
    def sparsity(self):
        total = self.kernel_size[0] * self.kernel_size[1] * self.in_channels * self.filters
        return 1.0 - self.nnz / float(total) if total else 0.0

    def to_dense_kernel(self):
        """The kernel as a dense (k_h, k_w, in_channels, filters) array (for inspection)."""
        kh, kw = self.kernel_size
        dense = np.zeros((kh * kw * self.in_channels, self.filters),
                         keras.ops.convert_to_numpy(self.values).dtype)
        ip = keras.ops.convert_to_numpy(self.indptr)
        cols = np.repeat(np.arange(self.filters), np.diff(ip))
        values = keras.ops.convert_to_numpy(self.values)
        dense[keras.ops.convert_to_numpy(self.indices), cols] = values
        return dense.reshape(kh, kw, self.in_channels, self.filters)

    def to_keras(self):
        """A built `keras.layers.Conv2D` holding this kernel (zeros where nothing is stored):
        what `sparsekeras.densify` puts in its place. (A stripped depthwise convolution comes
        back as the equivalent full Conv2D.)"""
        twin = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                   padding=self.padding, dilation_rate=self.dilation_rate,
                                   activation=self.activation, use_bias=self.use_bias,
                                   name=self.name, dtype=self.dtype_policy)
        twin.build((None, None, None, self.in_channels))
        twin.kernel.assign(self.to_dense_kernel())
        if self.bias is not None:
            twin.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return twin

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        lo, hi = self._sparse_rows()
        sparse = lambda: self._sparse_conv(x, epilogue=True)  # noqa: E731
        dense = lambda: self._dense_conv(x, epilogue=True)  # noqa: E731
        if lo > hi:  # the cost model never picks sparse for this layer: no sparse branch
            return dense()
        if lo <= 1 and hi >= _dispatch.MAX_ROWS:
            return sparse()
        rows = _PrunableConv._output_positions(self, x)
        if isinstance(rows, int):  # static: chosen at trace time
            return sparse() if lo <= rows <= hi else dense()
        return tf.cond(tf.logical_and(rows >= lo, rows <= hi), sparse, dense)

    def compute_output_shape(self, input_shape):
        out = []
        for size, k, s, d in zip(input_shape[1:3], self.kernel_size, self.strides,
                                 self.dilation_rate):
            if size is None:
                out.append(None)
            elif self.padding == "same":
                out.append(-(-size // s))
            else:
                out.append((size - (k - 1) * d - 1) // s + 1)
        return (input_shape[0], out[0], out[1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, nnz=self.nnz,
                      strides=self.strides, padding=self.padding,
                      dilation_rate=self.dilation_rate,
                      activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias, depth_multiplier=self.depth_multiplier)
        return config


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactConv1D(CompactConv2D):
    """The stored form of `SparseConv1D`: a 1-D convolution whose kernel is stored only as the
    CSC arrays of its `(kernel_size * in_channels, filters)` reshape (a grouped kernel as its
    block-diagonal full kernel). Computes as `CompactConv2D` on the input seen as height 1;
    "causal" padding pads on the left. Built by `sparsekeras.strip`, or with
    `CompactConv1D.from_kernel(kernel, bias, ...)`.

    Args:
        filters: output channels. kernel_size, strides, padding ("valid", "same", "causal"),
            dilation_rate, activation, use_bias: as in Conv1D (channels_last, ints).
        nnz: number of stored weights.

    Input `(batch, length, channels)`; output `(batch, new_length, filters)`.

    Example:
        >>> k = np.random.randn(5, 16, 32) * (np.random.rand(5, 16, 32) > 0.9)
        >>> layer = sparsekeras.layers.CompactConv1D.from_kernel(k, padding="causal")
        >>> y = layer(tf.ones((8, 100, 16)))
    """

    def __init__(self, filters, kernel_size, nnz, strides=1, padding="valid", dilation_rate=1,
                 activation=None, use_bias=True, **kwargs):
        k, s, d = (_single(v, name) for v, name in ((kernel_size, "kernel_size"),
                                                      (strides, "strides"),
                                                      (dilation_rate, "dilation_rate")))
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same", "causal"):
            raise ValueError("Expected `padding` 'valid', 'same' or 'causal'. "
                             f"Received: padding={padding!r}")
        padding = padding.lower()
        self.causal = padding == "causal"
        super().__init__(filters, (1, k), nnz, strides=(1, s),
                         padding="valid" if self.causal else padding, dilation_rate=(1, d),
                         activation=activation, use_bias=use_bias, **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self.in_channels})

    @classmethod
    def from_structure(cls, structure, values, kernel_shape, bias=None, **kwargs):
        """A built layer from the CSC arrays of the kernel `(kernel_size, in_channels,
        filters)` (or its height-1 2-D form `(1, kernel_size, in_channels, filters)`)."""
        kernel_shape = tuple(int(d) for d in kernel_shape)[-3:]
        layer = cls(filters=kernel_shape[2], kernel_size=kernel_shape[0],
                    nnz=int(len(values)), use_bias=bias is not None, **kwargs)
        layer.build((None, None, kernel_shape[1]))
        layer.indptr.assign(structure["indptr"])
        layer.indices.assign(structure["indices"])
        layer.values.assign(np.asarray(values).astype(layer.values.dtype))
        if bias is not None:
            layer.bias.assign(np.asarray(bias))
        return layer

    @classmethod
    def from_kernel(cls, kernel, bias=None, **kwargs):
        """A built CompactConv1D holding the nonzeros of `kernel` (kernel_size, in_c, filters)."""
        kernel = np.asarray(kernel)
        s = conv_structure(kernel[None] != 0)
        return cls.from_structure(s, kernel.reshape(-1)[s["positions"]], kernel.shape, bias,
                                  **kwargs)

    @property
    def _padding_1d(self):
        return "causal" if self.causal else self.padding

    def to_dense_kernel(self):
        """The kernel as a dense (kernel_size, in_channels, filters) array."""
        return super().to_dense_kernel()[0]

    def to_keras(self):
        """A built `keras.layers.Conv1D` holding this kernel (zeros where nothing is stored; a
        stripped grouped kernel comes back as the equivalent groups=1 kernel)."""
        twin = keras.layers.Conv1D(self.filters, self.kernel_size[1], strides=self.strides[1],
                                   padding=self._padding_1d, dilation_rate=self.dilation_rate[1],
                                   activation=self.activation, use_bias=self.use_bias,
                                   name=self.name, dtype=self.dtype_policy)
        twin.build((None, None, self.in_channels))
        twin.kernel.assign(self.to_dense_kernel())
        if self.bias is not None:
            twin.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return twin

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if self.causal:
            left = self.dilation_rate[1] * (self.kernel_size[1] - 1)
            x = tf.pad(x, [[0, 0], [left, 0], [0, 0]])
        return super().call(x[:, None])[:, 0]

    def compute_output_shape(self, input_shape):
        length = input_shape[1]
        if length is not None and self.causal:
            length += self.dilation_rate[1] * (self.kernel_size[1] - 1)
        out = super().compute_output_shape((input_shape[0], 1, length, input_shape[2]))
        return (out[0], out[2], out[3])

    def get_config(self):
        config = super().get_config()
        config.pop("depth_multiplier", None)  # 2-D depthwise only
        config.update(kernel_size=self.kernel_size[1], strides=self.strides[1],
                      padding=self._padding_1d, dilation_rate=self.dilation_rate[1])
        return config


def _tuple(value, rank, name):
    """A tuple of `rank` positive ints from an int or a sequence."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * rank
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != rank or min(out) < 1:
        raise ValueError(f"Expected `{name}` a positive int or {rank} positive ints. "
                         f"Received: {name}={value!r}")
    return out


class _CompactSeparable(keras.layers.Layer):
    """The stored form of the separable convolutions: each kernel only as CSC arrays (the
    depthwise one as its sparse full `(*kernel_size, C, C * M)` kernel, the pointwise one as
    `(C * M, filters)`), computed through the sparse kernels. Trainable on the nonzero values
    (fixed structure)."""

    rank = None
    _keras_class = None

    def __init__(self, filters, kernel_size, depthwise_nnz, pointwise_nnz, strides=1,
                 padding="valid", depth_multiplier=1, dilation_rate=1, activation=None,
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("filters", filters), ("depth_multiplier", depth_multiplier)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Expected a positive integer `{name}`. "
                                 f"Received: {name}={value!r}")
        for name, value in (("depthwise_nnz", depthwise_nnz), ("pointwise_nnz", pointwise_nnz)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"Expected a non-negative integer `{name}`. "
                                 f"Received: {name}={value!r}")
        self.filters, self.depth_multiplier = int(filters), int(depth_multiplier)
        self.depthwise_nnz, self.pointwise_nnz = int(depthwise_nnz), int(pointwise_nnz)
        self.kernel_size = _tuple(kernel_size, self.rank, "kernel_size")
        self.strides = _tuple(strides, self.rank, "strides")
        self.dilation_rate = _tuple(dilation_rate, self.rank, "dilation_rate")
        self.padding = sk_ops._padding(padding).lower()
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    def build(self, input_shape):
        c = self.in_channels = int(input_shape[-1])
        cm = c * self.depth_multiplier

        def ints(name, n):
            return self.add_weight(name=name, shape=(n,), dtype="int32", initializer="zeros",
                                   trainable=False)

        self.depthwise_indptr = ints("depthwise_indptr", cm + 1)
        self.depthwise_indices = ints("depthwise_indices", self.depthwise_nnz)
        self.depthwise_values = self.add_weight(name="depthwise_values",
                                                shape=(self.depthwise_nnz,), initializer="zeros")
        self.pointwise_indptr = ints("pointwise_indptr", self.filters + 1)
        self.pointwise_indices = ints("pointwise_indices", self.pointwise_nnz)
        self.pointwise_values = self.add_weight(name="pointwise_values",
                                                shape=(self.pointwise_nnz,), initializer="zeros")
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                     if self.use_bias else None)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={-1: c})

    def _shapes_2d(self):
        """(depthwise full kernel, pointwise kernel) shapes of the 2-D computation."""
        taps = (1,) * (2 - self.rank) + self.kernel_size
        cm = self.in_channels * self.depth_multiplier
        return taps + (self.in_channels, cm), (1, 1, cm, self.filters)

    @classmethod
    def from_kernels(cls, depthwise_kernel, pointwise_kernel, bias=None, **kwargs):
        """A built layer holding the nonzeros of `depthwise_kernel` `(*kernel_size, C, M)` and
        `pointwise_kernel` `(*1s, C * M, filters)`."""
        dk, pk = np.asarray(depthwise_kernel), np.asarray(pointwise_kernel)
        *taps, c, m = dk.shape
        dw = depthwise_structure((dk != 0).reshape((1,) * (4 - dk.ndim) + dk.shape))
        pw = _structure_from_mask(pk.reshape(-1, pk.shape[-1]) != 0)
        layer = cls(filters=int(pk.shape[-1]), kernel_size=tuple(taps),
                    depthwise_nnz=len(dw["positions"]), pointwise_nnz=len(pw["positions"]),
                    depth_multiplier=int(m), use_bias=bias is not None, **kwargs)
        layer.build((None,) * (cls.rank + 1) + (int(c),))
        for part, s, k in (("depthwise", dw, dk), ("pointwise", pw, pk)):
            getattr(layer, f"{part}_indptr").assign(s["indptr"])
            getattr(layer, f"{part}_indices").assign(s["indices"])
            values = getattr(layer, f"{part}_values")
            values.assign(k.reshape(-1)[s["positions"]].astype(values.dtype))
        if bias is not None:
            layer.bias.assign(np.asarray(bias))
        return layer

    def _dense(self, part, rows, cols):
        ip = keras.ops.convert_to_numpy(getattr(self, f"{part}_indptr"))
        out = np.zeros((rows, cols), keras.ops.convert_to_numpy(self.depthwise_values).dtype)
        out[keras.ops.convert_to_numpy(getattr(self, f"{part}_indices")),
            np.repeat(np.arange(cols), np.diff(ip))] = keras.ops.convert_to_numpy(
                getattr(self, f"{part}_values"))
        return out

    def to_dense_kernel(self):
        """(depthwise_kernel, pointwise_kernel): both kernels as dense arrays of the Keras
        layer's shapes (for inspection; `densify` recognizes stored forms by this method)."""
        (kh, kw, c, cm), _ = self._shapes_2d()
        m = self.depth_multiplier
        full = self._dense("depthwise", kh * kw * c, cm).reshape(kh * kw, c, c, m)
        dk = full[:, np.arange(c), np.arange(c), :]                 # (taps, C, M)
        pk = self._dense("pointwise", cm, self.filters)
        return (dk.reshape(self.kernel_size + (c, m)),
                pk.reshape((1,) * self.rank + (cm, self.filters)))

    def to_keras(self):
        """A built Keras separable convolution holding these kernels (zeros where nothing is
        stored): what `sparsekeras.densify` puts in its place."""
        twin = self._keras_class(self.filters, self.kernel_size, strides=self.strides,
                                 padding=self.padding, depth_multiplier=self.depth_multiplier,
                                 dilation_rate=self.dilation_rate, activation=self.activation,
                                 use_bias=self.use_bias, name=self.name, dtype=self.dtype_policy)
        twin.build((None,) * (self.rank + 1) + (self.in_channels,))
        dk, pk = self.to_dense_kernel()
        twin.depthwise_kernel.assign(dk)
        twin.pointwise_kernel.assign(pk)
        if self.bias is not None:
            twin.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return twin

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        strides = (1,) * (2 - self.rank) + self.strides
        dilations = (1,) * (2 - self.rank) + self.dilation_rate
        if self.rank == 1:
            x = x[:, None]
        dw_shape, pw_shape = self._shapes_2d()
        h = sk_ops.csr_conv2d(x, self.depthwise_indptr, self.depthwise_indices,
                              tf.cast(self.depthwise_values, x.dtype), dw_shape,
                              strides=strides, padding=self.padding, dilations=dilations)
        y = sk_ops.csr_conv2d(h, self.pointwise_indptr, self.pointwise_indices,
                              tf.cast(self.pointwise_values, h.dtype), pw_shape)
        if self.rank == 1:
            y = y[:, 0]
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def compute_output_shape(self, input_shape):
        out = []
        for size, k, s, d in zip(input_shape[1:-1], self.kernel_size, self.strides,
                                 self.dilation_rate):
            if size is None:
                out.append(None)
            elif self.padding == "same":
                out.append(-(-size // s))
            else:
                out.append((size - (k - 1) * d - 1) // s + 1)
        return (input_shape[0],) + tuple(out) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        one = (lambda t: t[0]) if self.rank == 1 else (lambda t: t)
        config.update(filters=self.filters, kernel_size=one(self.kernel_size),
                      depthwise_nnz=self.depthwise_nnz, pointwise_nnz=self.pointwise_nnz,
                      strides=one(self.strides), padding=self.padding,
                      depth_multiplier=self.depth_multiplier,
                      dilation_rate=one(self.dilation_rate),
                      activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias)
        return config


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactSeparableConv2D(_CompactSeparable):
    """The stored form of `SparseSeparableConv2D` (what `sparsekeras.strip` makes of it): both
    kernels only as CSC arrays, both convolutions through the sparse kernels; memory, file size
    and compute scale with the nonzeros.

    Args:
        filters: as in `keras.layers.SeparableConv2D`.
        kernel_size: as in `keras.layers.SeparableConv2D`.
        depthwise_nnz: the number of stored weights of the depthwise kernel.
        pointwise_nnz: the number of stored weights of the pointwise kernel.
        strides: as in `keras.layers.SeparableConv2D`.
        padding: as in `keras.layers.SeparableConv2D`.
        depth_multiplier: as in `keras.layers.SeparableConv2D`.
        dilation_rate: as in `keras.layers.SeparableConv2D`.
        activation: as in `keras.layers.SeparableConv2D`.
        use_bias: as in `keras.layers.SeparableConv2D`.
        **kwargs: as in `keras.layers.Layer`. The data format is channels_last.

    Input `(batch, height, width, channels)`; output `(batch, new_height, new_width, filters)`.

    Example:
        >>> dk = np.random.randn(3, 3, 16, 1) * (np.random.rand(3, 3, 16, 1) > 0.5)
        >>> pk = np.random.randn(1, 1, 16, 32) * (np.random.rand(1, 1, 16, 32) > 0.9)
        >>> layer = sparsekeras.layers.CompactSeparableConv2D.from_kernels(dk, pk, padding="same")
        >>> y = layer(tf.ones((8, 28, 28, 16)))
    """

    rank = 2
    _keras_class = keras.layers.SeparableConv2D


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactSeparableConv1D(_CompactSeparable):
    """The stored form of `SparseSeparableConv1D`, as `CompactSeparableConv2D` (computed on
    the input seen as height 1).

    Input `(batch, length, channels)`; output `(batch, new_length, filters)`.

    Example:
        >>> dk = np.random.randn(5, 16, 1) * (np.random.rand(5, 16, 1) > 0.5)
        >>> pk = np.random.randn(1, 16, 32) * (np.random.rand(1, 16, 32) > 0.9)
        >>> layer = sparsekeras.layers.CompactSeparableConv1D.from_kernels(dk, pk)
        >>> y = layer(tf.ones((8, 100, 16)))
    """

    rank = 1
    _keras_class = keras.layers.SeparableConv1D


def _single(value, name):
    """An int from an int or a 1-tuple (Conv1D's own form)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected a positive integer `{name}`. Received: {name}={value!r}")
    return int(value)


def _conv_check(layer):
    if layer.data_format != "channels_last":
        return (f"data_format={layer.data_format!r}: the sparse convolutions take channels_last "
                "only")
    if getattr(layer, "lora_rank", None):
        return f"lora_rank={layer.lora_rank} is set"
    return None


SparseConv2D._keras_class = keras.layers.Conv2D
SparseConv1D._keras_class = keras.layers.Conv1D
SparseDepthwiseConv2D._keras_class = keras.layers.DepthwiseConv2D
SparseSeparableConv2D._keras_class = keras.layers.SeparableConv2D
SparseSeparableConv1D._keras_class = keras.layers.SeparableConv1D
SparseConv2DTranspose._keras_class = keras.layers.Conv2DTranspose
SparseConv3D._keras_class = keras.layers.Conv3D
SparseConv1DTranspose._keras_class = keras.layers.Conv1DTranspose
SparseConv3DTranspose._keras_class = keras.layers.Conv3DTranspose
SparseDepthwiseConv1D._keras_class = keras.layers.DepthwiseConv1D
SparseConv2D._stored_class = CompactConv2D
SparseDepthwiseConv2D._stored_class = CompactConv2D
SparseConv1D._stored_class = CompactConv1D
SparseSeparableConv2D._stored_class = CompactSeparableConv2D
SparseSeparableConv1D._stored_class = CompactSeparableConv1D
for _keras, _sparse in ((keras.layers.Conv2D, SparseConv2D), (keras.layers.Conv1D, SparseConv1D),
                        (keras.layers.DepthwiseConv2D, SparseDepthwiseConv2D),
                        (keras.layers.SeparableConv2D, SparseSeparableConv2D),
                        (keras.layers.SeparableConv1D, SparseSeparableConv1D),
                        (keras.layers.Conv2DTranspose, SparseConv2DTranspose),
                        (keras.layers.Conv3D, SparseConv3D),
                        (keras.layers.Conv1DTranspose, SparseConv1DTranspose),
                        (keras.layers.Conv3DTranspose, SparseConv3DTranspose),
                        (keras.layers.DepthwiseConv1D, SparseDepthwiseConv1D)):
    register(_keras, _sparse, check=_conv_check)
del _keras, _sparse
