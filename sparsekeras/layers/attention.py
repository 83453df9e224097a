"""Attention layers: `SparseEinsumDense` (a drop-in for `keras.layers.EinsumDense` that owns a
pruning mask), `SparseMultiHeadAttention` (`keras.layers.MultiHeadAttention` whose projections
are SparseEinsumDense), and their stored forms `CompactEinsumDense` and
`CompactMultiHeadAttention` (the kernels as (block-)CSC arrays only).

Every projection `MultiHeadAttention` makes ("abc,cde->abde" for query, key and value,
"abcd,cde->abe" for the output, and their variants for other ranks) contracts the input's last
axes with the kernel's leading axes, and outputs the input's other axes followed by the
kernel's other axes. Such an einsum is one matrix product, x (N, K) @ kernel (K, M), once the
input and the kernel are reshaped to 2-D: these layers compute it through the same compiled
sparse products as `SparseDense` / `CompactDense`.
"""
import re

import numpy as np
import keras
import tensorflow as tf
from keras.src.layers.core.einsum_dense import _analyze_einsum_string

from sparsekeras import _dispatch, _tree
from sparsekeras.layers._registry import register
from sparsekeras.layers._base import (
    _COMPUTE_MODES, DEFAULT_SWITCH_SPARSITY, NotConvertible, _PrunableKernel, _pop_unsupported,
    _structure_from_mask, build_like, copy_weights, keras_config, masked_csc_product,
    relative_paths)
from sparsekeras.layers.dense import CompactDense, _fast_stored_product

__all__ = ["SparseEinsumDense", "CompactEinsumDense", "SparseMultiHeadAttention",
           "CompactMultiHeadAttention"]

# EinsumDense options the sparse layers do not implement (LoRA, quantization).
_UNSUPPORTED = ("lora_rank", "lora_alpha", "quantization_config", "gptq_unpacked_column_size")


def matmul_split(equation):
    """The number c of contracted axes if `equation` is one matrix product after reshaping to
    2-D, else None.

    That is the case when the input's last c axes are contracted with the kernel's first c
    axes (in the same order), and the output is the input's other axes followed by the
    kernel's other axes: "abc,cde->abde" (c=1), "abcd,cde->abe" (c=2), "ab,bc->ac",
    "...b,bc->...c". Then `x.reshape(-1, K) @ kernel.reshape(K, M)`, reshaped to the output,
    is the einsum (K: the product of the contracted sizes, M: of the kernel's other ones).
    """
    spec = re.sub(r"\.\.\.", "0", equation.replace(" ", ""))
    match = re.fullmatch(r"([a-zA-Z0]+),([a-zA-Z]+)->([a-zA-Z0]+)", spec)
    if match is None:
        return None
    inp, ker, out = match.groups()
    if "0" in inp[1:] or "0" in out[1:] or (inp[0] == "0") != (out[0] == "0"):
        return None  # an ellipsis that is not the leading (kept) axes
    if any(len(set(s)) != len(s) for s in (inp, ker, out)):
        return None  # a repeated axis (a diagonal or a trace)
    contracted = [a for a in inp if a in ker and a not in out]
    c = len(contracted)
    if c == 0 or "".join(contracted) != inp[-c:] or ker[:c] != inp[-c:]:
        return None
    rest = ker[c:]
    if any(a in inp for a in rest) or out != inp[:-c] + rest:
        return None
    return c


def _to_2d(x, c, k):
    """x (kept..., contracted...) as (N, k), and the kept part of its shape (dynamic, static)."""
    rank = x.shape.rank
    kept = tf.shape(x)[:rank - c]
    return tf.reshape(x, [-1, k]), kept, x.shape[:rank - c]


def _from_2d(y2, kept, kept_static, out_dims):
    y = tf.reshape(y2, tf.concat([kept, tf.constant(out_dims, tf.int32)], axis=0))
    y.set_shape(kept_static.concatenate(out_dims))
    return y


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseEinsumDense(_PrunableKernel, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with a pruning mask and compiled sparse compute.

    Same arguments and behaviour as `EinsumDense` (LoRA and quantization are not supported:
    setting `lora_rank`, `lora_alpha` or `quantization_config` raises), plus:

    Args:
        switch_sparsity: mask sparsity from which the layer computes through the sparse kernels
            (forward and backward); below it, through the dense einsum. Default
            `DEFAULT_SWITCH_SPARSITY`.
        compute: "auto" (sparse from `switch_sparsity` on, and per call only where the cost
            model of `sparsekeras._dispatch` predicts the sparse product faster for the call's
            rows), "dense" or "sparse" (always).
        prunable: whether `GradualPruning` prunes this layer.

    Sparse compute applies when the equation is a matrix product once reshaped to 2-D (see
    `matmul_split`): the input's last axes contracted with the kernel's leading axes, the
    output being the input's other axes then the kernel's other axes. That covers every
    projection of `MultiHeadAttention` ("abc,cde->abde", "abcd,cde->abe", ...) and of
    keras_hub's transformer layers. Any other equation (a transposed kernel "abc,dc->abd", a
    right ellipsis "ab...,bc->ac...", a kernel axis shared with a kept input axis
    "abc,bcd->abd") computes with the dense einsum on the
    masked kernel (masked dense compute): it prunes, saves and strips, but is no faster;
    `compute="sparse"` is then an error.

    The mask is a non-trainable weight of the kernel's shape (1 = kept).

    Example:
        >>> layer = sparsekeras.layers.SparseEinsumDense("abc,cde->abde",
        ...                                              output_shape=(None, 4, 64),
        ...                                              bias_axes="de")
        >>> y = layer(tf.ones((8, 128, 256)))            # (8, 128, 4, 64)
        >>> layer.set_mask(np.random.rand(256, 4, 64) > 0.9)
        >>> layer.uses_sparse_kernels
        True
    """

    _default_switch_sparsity = DEFAULT_SWITCH_SPARSITY

    def __init__(self, equation, output_shape, activation=None, bias_axes=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, switch_sparsity=None, compute="auto", prunable=True,
                 **kwargs):
        _pop_unsupported("SparseEinsumDense", kwargs, _UNSUPPORTED)
        super().__init__(equation, output_shape, activation=activation, bias_axes=bias_axes,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_sparse(switch_sparsity, compute, prunable, self.kernel_constraint)
        self._contracted = matmul_split(equation)
        if self._contracted is None and compute == "sparse":
            raise ValueError("SparseEinsumDense computes sparsely only equations that are one "
                             "matrix product after reshaping to 2-D (e.g. 'abc,cde->abde'); "
                             "use compute='auto' or 'dense' for this one. "
                             f"Received: equation={equation!r}, compute='sparse'")

    def build(self, input_shape):
        super().build(input_shape)
        shape = tuple(int(d) for d in self._kernel.shape)
        if self._contracted is not None:
            c = self._contracted
            self._k = int(np.prod(shape[:c]))
            self._m = int(np.prod(shape[c:]))
            self._out_dims = list(shape[c:])
            _dispatch.attach(self)  # the rows where the cost model picks sparse compute
        self._build_sparse()

    def _kernel_variable(self):
        return self._kernel

    def _refresh_more(self, mask):
        if self._contracted is not None:
            _dispatch.refresh(self, self._k, self._m, int(np.count_nonzero(mask)))

    def _structure(self, mask):
        if self._contracted is None:  # masked dense compute only: no structure to cache
            return dict(indptr=np.zeros(1, np.int32), indices=np.zeros(0, np.int32),
                        positions=np.zeros(0, np.int64))
        return _structure_from_mask(mask.reshape(self._k, self._m))

    def pruning_view(self, array):
        """The kernel (or mask) as GradualPruning scores it: the 2-D (K, M) matrix the sparse
        product uses, so that "block" blocks and "channel" units are those of the product
        (whole output features); for an equation without a 2-D form, the kernel as it is."""
        array = np.asarray(array)
        return array if self._contracted is None else array.reshape(self._k, self._m)

    def from_pruning_view(self, mask):
        return np.asarray(mask).reshape(tuple(self.mask.shape))

    @property
    def sparse_compute_applies(self):
        """Whether the equation is a matrix product the sparse kernels can compute."""
        return self._contracted is not None

    @property
    def uses_sparse_kernels(self):
        """Whether the next call computes through the sparse kernels."""
        return self._contracted is not None and _PrunableKernel.uses_sparse_kernels.fget(self)

    # ---- compute ------------------------------------------------------------------------

    def _sparse_einsum(self, x):
        x2, kept, kept_static = _to_2d(x, self._contracted, self._k)
        y2 = masked_csc_product(x2, tf.convert_to_tensor(self.kernel),
                          tf.convert_to_tensor(self._csc_indptr),
                          tf.convert_to_tensor(self._csc_indices),
                          tf.convert_to_tensor(self._positions), self._k, self._m)
        return _from_2d(y2, kept, kept_static, self._out_dims)

    def _dense_einsum(self, x):
        return keras.ops.einsum(self.equation, x, tf.cast(self.kernel, x.dtype))

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        if self._contracted is None:
            y = self._dense_einsum(x)
        else:
            y = self._switch(lambda: self._sparse_einsum(x), lambda: self._dense_einsum(x),
                             rows=_dispatch.rows_of(x, self._contracted))
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    # ---- config and conversions -----------------------------------------------------------

    def get_config(self):
        return self._sparse_config(super().get_config(), drop=_UNSUPPORTED)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("quantization_config", None)
        return cls(**config)

    @classmethod
    def from_keras(cls, layer, **options):
        """A built SparseEinsumDense with the configuration and weights of the
        `keras.layers.EinsumDense` `layer` (mask all ones). `options`: switch_sparsity,
        compute, prunable."""
        reason = _einsum_check(layer)
        if reason is not None:
            raise NotConvertible(reason)
        new = cls(**keras_config(layer, drop=("gptq_unpacked_column_size",)), **options)
        build_like(new, layer)
        if layer.built:
            copy_weights(layer, new)
        return new

    def to_stored(self, block="auto"):
        """The stored form: a `CompactEinsumDense` holding the kept weights only (as
        (block-)CSC arrays of the 2-D kernel); for an equation without a 2-D form, the Keras
        twin holding the pruned weights as zeros."""
        if self._contracted is None:
            return self.to_keras()
        kernel = keras.ops.convert_to_numpy(self.kernel) * keras.ops.convert_to_numpy(self.mask)
        bias = keras.ops.convert_to_numpy(self.bias) if self.bias is not None else None
        return CompactEinsumDense.from_kernel(
            kernel, bias, self.equation, self.partial_output_shape,
            self.get_build_config()["input_shape"], bias_axes=self.bias_axes,
            activation=keras.activations.serialize(self.activation), name=self.name,
            dtype=self.dtype_policy, block=block)


def _einsum_check(layer):
    """Why an EinsumDense instance is not converted (None if it is): LoRA and quantized
    layers. Every equation converts (those without a 2-D form with masked dense compute)."""
    if getattr(layer, "quantization_mode", None) is not None:
        return f"quantized (quantization_mode={layer.quantization_mode!r})"
    if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
        return f"LoRA is enabled (lora_rank={layer.lora_rank!r})"
    if layer.built and getattr(layer, "_kernel", None) is None:
        return "it has no dense kernel"
    return None


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactEinsumDense(keras.layers.Layer):
    """An `EinsumDense` whose kernel is stored only as (block-)CSC arrays of its 2-D form
    (K, M): memory, file size and compute scale with the nonzeros. What `sparsekeras.strip`
    makes of a `SparseEinsumDense`. Trainable on its nonzero values.

    The equation must be a matrix product once reshaped to 2-D (see `matmul_split`). The
    product is a `CompactDense` sublayer (`sparse_kernel`) on the input reshaped to (N, K); the
    bias has EinsumDense's shape (from `bias_axes`).

    Args:
        equation: as in EinsumDense.
        output_shape: as in EinsumDense.
        activation: as in EinsumDense.
        bias_axes: as in EinsumDense.
        bias_initializer: as in EinsumDense.
        nnz: number of stored weights (a multiple of `block`; set by from_kernel). None: a
            random pattern of `sparsity` drawn at build time (static sparse training).
        block: 1 (CSC) or the width G of the (1, G) blocks the 2-D kernel is stored in.
        sparsity: the random pattern's fraction of zeros, when nnz is None (as in
            CompactDense).
        kernel_initializer: the initializer of the random pattern's values (over the 2-D
            (K, M) kernel).
        seed: the random pattern's seed.

    Input: as the equation says, e.g. (batch, seq, dim) for "abc,cde->abde"; output
    (batch, seq, heads, head_dim).

    Example:
        >>> stored = sparsekeras.layers.CompactEinsumDense.from_kernel(
        ...     kernel, bias, "abc,cde->abde", (None, 4, 64), input_shape=(None, 128, 256),
        ...     bias_axes="de")
    """

    def __init__(self, equation, output_shape, nnz=None, block=1, activation=None,
                 bias_axes=None, bias_initializer="zeros", sparsity=None,
                 kernel_initializer="glorot_uniform", seed=None, **kwargs):
        super().__init__(**kwargs)
        self._contracted = matmul_split(equation)
        if self._contracted is None:
            raise ValueError("CompactEinsumDense needs an equation that is one matrix product "
                             f"after reshaping to 2-D (e.g. 'abc,cde->abde'). Received: "
                             f"equation={equation!r}")
        self.equation = equation
        self.partial_output_shape = ((output_shape,) if isinstance(output_shape, int)
                                     else tuple(output_shape))
        if nnz is None and sparsity is None:
            raise ValueError("CompactEinsumDense needs `nnz` (use CompactEinsumDense.from_kernel) "
                             "or `sparsity` (random pattern). Received: nnz=None, sparsity=None")
        self.nnz = None if nnz is None else int(nnz)
        self.target_sparsity = None if sparsity is None else float(sparsity)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.block = block
        self.activation = keras.activations.get(activation)
        self.bias_axes = bias_axes
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        kernel_shape, bias_shape, _, _, _ = _analyze_einsum_string(
            self.equation, self.bias_axes, input_shape, self.partial_output_shape)
        c = self._contracted
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self._k = int(np.prod(self.kernel_shape[:c]))
        self._m = int(np.prod(self.kernel_shape[c:]))
        self._out_dims = list(self.kernel_shape[c:])
        self.sparse_kernel = CompactDense(units=self._m, nnz=self.nnz, block=self.block,
                                          sparsity=self.target_sparsity, use_bias=False,
                                          kernel_initializer=self.kernel_initializer,
                                          seed=self.seed, name="sparse_kernel",
                                          dtype=self.dtype_policy)
        self.sparse_kernel.build((None, self._k))
        self.nnz = self.sparse_kernel.nnz
        self.bias = (self.add_weight(name="bias", shape=tuple(bias_shape),
                                     initializer=self.bias_initializer)
                     if bias_shape is not None else None)
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))

    @classmethod
    def from_kernel(cls, kernel, bias, equation, output_shape, input_shape, bias_axes=None,
                    block="auto", **kwargs):
        """A built CompactEinsumDense holding the nonzeros of `kernel` (EinsumDense's kernel
        shape) exactly. block: 1, a width G, or "auto", as in `CompactDense.from_kernel`."""
        c = matmul_split(equation)
        if c is None:
            raise ValueError("CompactEinsumDense needs an equation that is one matrix product "
                             f"after reshaping to 2-D. Received: equation={equation!r}")
        kernel = np.asarray(kernel)
        k = int(np.prod(kernel.shape[:c]))
        stored = CompactDense.from_kernel(kernel.reshape(k, -1), None, block=block)
        layer = cls(equation, output_shape, nnz=stored.nnz, block=stored.block,
                    bias_axes=bias_axes, **kwargs)
        layer.build(tuple(input_shape))
        if layer.kernel_shape != kernel.shape:
            raise ValueError(f"kernel of shape {kernel.shape} does not fit equation "
                             f"{equation!r} on input_shape={tuple(input_shape)}: expected "
                             f"{layer.kernel_shape}")
        for name in ("indptr", "indices", "values"):
            getattr(layer.sparse_kernel, name).assign(
                keras.ops.convert_to_numpy(getattr(stored, name)))
        if bias is not None:
            layer.bias.assign(np.asarray(bias))
        return layer

    @property
    def sparsity(self):
        return self.sparse_kernel.sparsity

    def to_dense_kernel(self):
        """The kernel as a dense array of EinsumDense's kernel shape (for inspection)."""
        return self.sparse_kernel.to_dense_kernel().reshape(self.kernel_shape)

    def to_keras(self):
        """A built `keras.layers.EinsumDense` holding this kernel (zeros where nothing is
        stored): what `sparsekeras.densify` puts in its place."""
        twin = keras.layers.EinsumDense(self.equation, self.partial_output_shape,
                                        activation=self.activation, bias_axes=self.bias_axes,
                                        name=self.name, dtype=self.dtype_policy)
        build_like(twin, self)
        twin.kernel.assign(self.to_dense_kernel())
        if self.bias is not None:
            twin.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return twin

    def _column_bias(self, dtype):
        """The bias as one value per column of the 2-D product (the kernel's output axes,
        flattened), when it varies over those axes only (MultiHeadAttention's projections:
        bias_axes over heads and head size); else None."""
        shape = tuple(self.bias.shape)
        if len(shape) > len(self._out_dims) or any(
                b not in (1, o) for b, o in zip(shape[::-1], self._out_dims[::-1])):
            return None
        return tf.reshape(tf.broadcast_to(tf.cast(self.bias, dtype), self._out_dims), [-1])

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        x2, kept, kept_static = _to_2d(x, self._contracted, self._k)
        sk = self.sparse_kernel
        bias = None if self.bias is None else self._column_bias(x2.dtype)
        if self.bias is None or bias is not None:
            # the bias (and a linear / ReLU / ReLU6 / GELU activation) in the product's store:
            # a separate add passed over the whole output (~0.6 ms per projection in a BERT
            # encoder at batch 8)
            y2 = _fast_stored_product(sk, x2, sk.values, sk.indptr, sk.indices, sk.block,
                                      self._k, self._m, bias=bias, activation=self.activation)
            return _from_2d(y2, kept, kept_static, self._out_dims)
        y = _from_2d(sk(x2), kept, kept_static, self._out_dims)
        y = y + tf.cast(self.bias, y.dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def compute_output_shape(self, input_shape):
        _, _, full_output_shape, _, _ = _analyze_einsum_string(
            self.equation, self.bias_axes, input_shape, self.partial_output_shape)
        return tuple(full_output_shape)

    def get_config(self):
        config = super().get_config()
        config.update(equation=self.equation, output_shape=self.partial_output_shape,
                      nnz=self.nnz, block=self.block,
                      activation=keras.activations.serialize(self.activation),
                      bias_axes=self.bias_axes,
                      bias_initializer=keras.initializers.serialize(self.bias_initializer),
                      sparsity=self.target_sparsity,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      seed=self.seed)
        return config


# ---- multi-head attention -----------------------------------------------------------------

# MultiHeadAttention's projection attributes (the gate exists with use_gate=True).
_PROJECTIONS = ("_query_dense", "_key_dense", "_gate_dense", "_value_dense", "_output_dense")


class _ProjectionsMHA(keras.layers.MultiHeadAttention):
    """MultiHeadAttention whose EinsumDense projections are replaced, as soon as its build has
    made them, by `self._projection(dense)`.

    MultiHeadAttention creates its projections inline in `build` (there is no factory method
    to override for query/key/value), so the subclass lets it build them and then puts its own
    layer in each one's place (the attribute and Keras' tracking list, at the same position:
    weights keep MultiHeadAttention's order and paths, query/kernel, ...)."""

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        # Eagerly (init_scope), also where Keras builds the layer inside a traced step (the
        # first fit of a subclassed model): the new projections take the weights of MHA's.
        with tf.init_scope():
            for attr in _PROJECTIONS:
                old = getattr(self, attr, None)
                if old is not None:
                    _tree.replace_layer(self, old, self._projection(old))

    def _projection(self, dense):
        raise NotImplementedError

    def projections(self):
        """{name: projection layer} (query, key, value, attention_output, and gate)."""
        return {layer.name: layer for layer in
                (getattr(self, attr, None) for attr in _PROJECTIONS) if layer is not None}

    def _plain_twin(self, drop):
        config = self.get_config()
        for key in drop:
            config.pop(key, None)
        twin = keras.layers.MultiHeadAttention.from_config(config)
        build_like(twin, self)
        return twin


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseMultiHeadAttention(_ProjectionsMHA):
    """`keras.layers.MultiHeadAttention` whose query, key, value and output projections (and
    gate, with `use_gate=True`) are `SparseEinsumDense` layers: each one owns its pruning mask
    and computes through the sparse kernels once pruned (all of MultiHeadAttention's
    projections have a 2-D form). `GradualPruning` prunes the projections (they are its
    targets; this layer adds none of its own).

    Same arguments and behaviour as `MultiHeadAttention`, plus `switch_sparsity`, `compute`
    and `prunable`, passed to every projection (see `SparseEinsumDense`). The weights have
    MultiHeadAttention's paths (query/kernel, query/bias, ...) plus a mask per projection
    (query/mask, ...). `sparsekeras.strip` turns it into `CompactMultiHeadAttention`.

    Example:
        >>> mha = sparsekeras.layers.SparseMultiHeadAttention(num_heads=4, key_dim=32)
        >>> y = mha(x, x)                                  # x: (batch, seq, dim)
        >>> mha.query_dense.set_mask(np.random.rand(*mha.query_dense.mask.shape) > 0.9)
    """

    def __init__(self, num_heads, key_dim, switch_sparsity=None, compute="auto",
                 prunable=True, **kwargs):
        if switch_sparsity is not None and not 0.0 <= float(switch_sparsity) <= 1.0:
            raise ValueError("Expected `switch_sparsity` in [0, 1]. "
                             f"Received: switch_sparsity={switch_sparsity}")
        if compute not in _COMPUTE_MODES:
            raise ValueError(f"Expected `compute` in {_COMPUTE_MODES}. "
                             f"Received: compute={compute!r}")
        super().__init__(num_heads, key_dim, **kwargs)
        self.switch_sparsity = None if switch_sparsity is None else float(switch_sparsity)
        self.compute = compute
        self.prunable = bool(prunable)

    def _projection(self, dense):
        return SparseEinsumDense.from_keras(dense, switch_sparsity=self.switch_sparsity,
                                            compute=self.compute, prunable=self.prunable)

    def pruning_targets(self):
        """None of its own: the projections (SparseEinsumDense sublayers) are the targets."""
        return []

    @property
    def sparsity(self):
        """Fraction of the projections' kernel entries that are pruned."""
        subs = list(self.projections().values())
        total = sum(int(np.prod(s.mask.shape)) for s in subs)
        return sum(s.sparsity * int(np.prod(s.mask.shape)) for s in subs) / total if total else 0.0

    def get_config(self):
        config = super().get_config()
        config.update(switch_sparsity=self.switch_sparsity, compute=self.compute,
                      prunable=self.prunable)
        return config

    @classmethod
    def from_keras(cls, layer, **options):
        """A built SparseMultiHeadAttention with the configuration and weights of the
        `keras.layers.MultiHeadAttention` `layer` (masks all ones), copied projection by
        projection and weight by weight by their paths (query/kernel, ...)."""
        new = cls(**keras_config(layer), **options)
        build_like(new, layer)
        if layer.built:
            mine = new.projections()
            for name, sub in _plain_projections(layer).items():
                copy_weights(sub, mine[name])
        return new

    def to_keras(self):
        """The `keras.layers.MultiHeadAttention` twin (built), holding the pruned weights as
        zeros: what `sparsekeras.densify` puts in its place."""
        twin = self._plain_twin(("switch_sparsity", "compute", "prunable"))
        if self.built:
            mine = self.projections()
            for name, sub in _plain_projections(twin).items():
                for path, var in relative_paths(sub).items():
                    var.assign(mine[name]._masked_weight(path))
        return twin

    def to_stored(self, block="auto"):
        """The stored form: a `CompactMultiHeadAttention` whose projections hold their kept
        weights only (CompactEinsumDense)."""
        stored = {name: sub.to_stored(block=block) for name, sub in self.projections().items()}
        config = self.get_config()
        for key in ("switch_sparsity", "compute", "prunable"):
            config.pop(key)
        config["projections"] = {name: {"nnz": s.nnz, "block": s.block}
                                 for name, s in stored.items()}
        new = CompactMultiHeadAttention.from_config(config)
        build_like(new, self)
        mine = new.projections()
        for name, sub in stored.items():
            copy_weights(sub, mine[name], skip_missing=())
        return new


def _plain_projections(layer):
    return {sub.name: sub for sub in
            (getattr(layer, attr, None) for attr in _PROJECTIONS) if sub is not None}


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactMultiHeadAttention(_ProjectionsMHA):
    """`keras.layers.MultiHeadAttention` whose projections are `CompactEinsumDense` layers
    (kept weights only, as (block-)CSC arrays, computed through the sparse kernels): the
    stored form `sparsekeras.strip` makes of a `SparseMultiHeadAttention`. It saves and loads
    as itself: its config carries each projection's number of stored weights and block width.

    Args:
        projections: {projection name ("query", "key", "value", "attention_output", "gate"):
            {"nnz": stored weights, "block": block width}}.
        num_heads: as in MultiHeadAttention.
        key_dim: as in MultiHeadAttention.
        **kwargs: the other arguments of MultiHeadAttention.
    """

    def __init__(self, num_heads, key_dim, projections=None, **kwargs):
        super().__init__(num_heads, key_dim, **kwargs)
        if not isinstance(projections, dict):
            raise ValueError("CompactMultiHeadAttention needs `projections`, {name: {'nnz': "
                             "int, 'block': int}} for each projection (sparsekeras.strip "
                             f"makes it). Received: projections={projections!r}")
        self.projection_storage = {name: {"nnz": int(p["nnz"]), "block": int(p["block"])}
                                   for name, p in projections.items()}

    def _projection(self, dense):
        spec = self.projection_storage.get(dense.name)
        if spec is None:
            raise ValueError(f"CompactMultiHeadAttention {self.name!r}: no storage given for "
                             f"projection {dense.name!r}. Received: "
                             f"projections={self.projection_storage}")
        new = CompactEinsumDense(dense.equation, dense.partial_output_shape, nnz=spec["nnz"],
                                 block=spec["block"], bias_axes=dense.bias_axes,
                                 activation=keras.activations.serialize(dense.activation),
                                 name=dense.name, dtype=dense.dtype_policy)
        build_like(new, dense)
        return new

    def get_config(self):
        config = super().get_config()
        config["projections"] = {name: dict(p) for name, p in self.projection_storage.items()}
        return config

    def to_dense_kernel(self):
        """{projection name: its kernel as a dense array} (zeros where nothing is stored; for
        inspection)."""
        return {name: sub.to_dense_kernel() for name, sub in self.projections().items()}

    def to_keras(self):
        """The `keras.layers.MultiHeadAttention` twin (built) with the stored kernels as dense
        ones (zeros where nothing is stored): what `sparsekeras.densify` puts in its place."""
        twin = self._plain_twin(("projections",))
        mine = self.projections()
        for name, sub in _plain_projections(twin).items():
            sub.kernel.assign(mine[name].to_dense_kernel())
            if sub.bias is not None:
                sub.bias.assign(keras.ops.convert_to_numpy(mine[name].bias))
        return twin


SparseEinsumDense._keras_class = keras.layers.EinsumDense
SparseMultiHeadAttention._keras_class = keras.layers.MultiHeadAttention
register(keras.layers.EinsumDense, SparseEinsumDense, check=_einsum_check)
register(keras.layers.MultiHeadAttention, SparseMultiHeadAttention)
