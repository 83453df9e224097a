"""Sparse convolution layers (exported by `sparsekeras.layers`).

- `SparseConv2D`: `keras.layers.Conv2D` with a pruning mask; overrides one seam,
  `convolution_op`, so every Conv2D argument and behaviour is kept. Once the mask is sparse
  enough it convolves through the compiled sparse kernels (forward and both gradients).
- `SparseDepthwiseConv2D`: the same for `keras.layers.DepthwiseConv2D` (which TensorFlow Model
  Optimization never prunes): a depthwise kernel is a sparse full kernel whose nonzeros sit on
  each output channel's own input channel, so the same kernels run it.
- `CompactConv2D`: the inference form of both: the kernel only as CSC arrays of its
  `(k_h * k_w * in_channels, out_channels)` reshape. `sparsekeras.strip` produces it.

Masks, the dense/sparse switch and saving behave as in `SparseDense`.
"""
import numpy as np
import keras
import tensorflow as tf

from sparsekeras import ops as sk_ops
from sparsekeras.ops._gradients import take as _take
from sparsekeras.layers._base import _PrunableKernel, _pop_unsupported, _structure_from_mask
from sparsekeras.layers._registry import register

__all__ = ["SparseConv2D", "SparseDepthwiseConv2D", "CompactConv2D",
           "DEFAULT_CONV_SWITCH_SPARSITY"]

# Mask sparsity from which the sparse convolution beats tf.nn.conv2d (oneDNN): measured with
# benchmarks/bench_conv.py (3x3 64->64 and 1x1 128->128 on 56x56, batch 8, 2 threads): both
# layers' forward and training step cross near 0.7 (3x3 at 0.7: 1.07x forward, 0.95x step; 1x1:
# 1.04x / 1.09x; at 0.8 both are 1.2-1.45x faster). Override per layer with `switch_sparsity`.
DEFAULT_CONV_SWITCH_SPARSITY = 0.75


def conv_structure(mask):
    """CSC structure of a conv kernel mask (k_h, k_w, in_c, out_c): dict of `indptr`
    (out_c + 1, int32), `indices` (nnz, int32 patch positions) and `positions` (nnz, int64 flat
    row-major positions into the kernel)."""
    mask = np.asarray(mask) != 0
    return _structure_from_mask(mask.reshape(-1, mask.shape[-1]))


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


class _PrunableConv(_PrunableKernel):
    """The sparse conv layers' part of `_PrunableKernel`: their default switch point and the
    sparse convolution itself."""

    _default_switch_sparsity = DEFAULT_CONV_SWITCH_SPARSITY

    def to_stored(self, block="auto"):
        """The stored form (`CompactConv2D`): the kept weights only, as CSC arrays."""
        kernel = keras.ops.convert_to_numpy(self.kernel) * keras.ops.convert_to_numpy(self.mask)
        bias = keras.ops.convert_to_numpy(self.bias) if self.bias is not None else None
        build = (CompactConv2D.from_depthwise_kernel if isinstance(self, SparseDepthwiseConv2D)
                 else CompactConv2D.from_kernel)
        return build(kernel, bias, name=self.name, strides=self.strides, padding=self.padding,
                     dilation_rate=self.dilation_rate,
                     activation=keras.activations.serialize(self.activation),
                     dtype=self.dtype_policy)

    def _sparse_conv(self, inputs, kernel, full_kernel_shape):
        indptr = tf.convert_to_tensor(self._csc_indptr)
        indices = tf.convert_to_tensor(self._csc_indices)
        positions = tf.convert_to_tensor(self._positions)
        values = _take(tf.reshape(kernel, [-1]), positions)
        return sk_ops.csr_conv2d(inputs, indptr, indices, values, full_kernel_shape,
                                 strides=tuple(self.strides), padding=self.padding,
                                 dilations=tuple(self.dilation_rate))


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseConv2D(_PrunableConv, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a pruning mask and compiled sparse convolution.

    Same arguments and behaviour as `Conv2D` (channels_last, groups=1), plus:

    Args:
        switch_sparsity: mask sparsity from which the layer convolves through the sparse
            kernels; below it through `tf.nn.conv2d`. Default `DEFAULT_CONV_SWITCH_SPARSITY`.
        compute: "auto", "dense" or "sparse".
        prunable: whether `GradualPruning` prunes this layer.

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
        _pop_unsupported("SparseConv2D", kwargs, ("lora_rank", "lora_alpha"))
        if groups != 1:
            raise ValueError(f"SparseConv2D supports groups=1 only (a grouped kernel is a sparse "
                             f"kernel: prune a groups=1 layer instead). Received: groups={groups}")
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
        return conv_structure(mask)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_sparse()

    def convolution_op(self, inputs, kernel):
        inputs = tf.convert_to_tensor(inputs)
        shape = tuple(int(d) for d in self._kernel.shape)
        return self._switch(lambda: self._sparse_conv(inputs, kernel, shape),
                            lambda: super(SparseConv2D, self).convolution_op(inputs, kernel))

    def get_config(self):
        config = super().get_config()
        config["kernel_constraint"] = keras.constraints.serialize(self._user_kernel_constraint)
        for key in ("lora_rank", "lora_alpha"):
            config.pop(key, None)
        return self._sparse_config(config)

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

    def pruning_view(self, array):
        """The kernel (or mask) as GradualPruning scores it: `(k_h, k_w, 1, channels *
        depth_multiplier)`, so that "channel" granularity prunes whole depthwise filters."""
        a = np.asarray(array)
        return a.reshape(a.shape[0], a.shape[1], 1, -1)

    def from_pruning_view(self, mask):
        return np.asarray(mask).reshape(tuple(self.kernel.shape))

    def build(self, input_shape):
        super().build(input_shape)
        self._build_sparse()

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        kh, kw, c, m = (int(d) for d in self.kernel.shape)

        def dense():
            return keras.ops.depthwise_conv(x, tf.cast(self.kernel, x.dtype), strides=self.strides,
                                            padding=self.padding, dilation_rate=self.dilation_rate,
                                            data_format=self.data_format)

        y = self._switch(lambda: self._sparse_conv(x, tf.cast(self.kernel, x.dtype),
                                                   (kh, kw, c, c * m)), dense)
        if self.use_bias:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def get_config(self):
        config = super().get_config()
        config["depthwise_constraint"] = keras.constraints.serialize(self._user_kernel_constraint)
        return self._sparse_config(config)

    @classmethod
    def from_depthwise(cls, layer, **kwargs):
        """A SparseDepthwiseConv2D with the configuration of a `keras.layers.DepthwiseConv2D`."""
        config = layer.get_config()
        config.update(kwargs)
        return cls(**config)


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
    """

    def __init__(self, filters, kernel_size, nnz, strides=(1, 1), padding="valid",
                 dilation_rate=(1, 1), activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"Expected a positive integer `filters`. Received: filters={filters}")
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
        """A built CompactConv2D computing the depthwise convolution of `kernel` (k_h, k_w, C, M)."""
        kernel = np.asarray(kernel)
        kh, kw, c, m = kernel.shape
        s = depthwise_structure(kernel != 0)
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
        dense[keras.ops.convert_to_numpy(self.indices), cols] = keras.ops.convert_to_numpy(self.values)
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
        y = sk_ops.csr_conv2d(x, self.indptr, self.indices, tf.cast(self.values, x.dtype),
                              self.kernel_size + (self.in_channels, self.filters),
                              strides=self.strides, padding=self.padding,
                              dilations=self.dilation_rate)
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

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
                      use_bias=self.use_bias)
        return config


def _conv_check(layer):
    if layer.data_format != "channels_last":
        return (f"data_format={layer.data_format!r}: the sparse convolutions take channels_last "
                "(NHWC) only")
    if getattr(layer, "groups", 1) != 1:
        return f"groups={layer.groups}: grouped convolutions are not converted yet"
    return None


SparseConv2D._keras_class = keras.layers.Conv2D
SparseDepthwiseConv2D._keras_class = keras.layers.DepthwiseConv2D
register(keras.layers.Conv2D, SparseConv2D, check=_conv_check)
register(keras.layers.DepthwiseConv2D, SparseDepthwiseConv2D, check=_conv_check)
