"""Embedding layers: `SparseEmbedding` (a drop-in for `keras.layers.Embedding` whose table is
prunable), `SparseReversibleEmbedding` (for `keras.layers.ReversibleEmbedding`, the tied
input/output embedding of keras_hub's language models), `SparsePositionEmbedding` (for
keras_hub's `PositionEmbedding`), and the stored forms `CompactEmbedding` /
`CompactReversibleEmbedding` (the table's nonzeros only, as CSR arrays: row = token).

A lookup is a gather: it reads `batch * sequence` rows whatever the sparsity, so the sparse
layers compute densely on the masked table (the `Prunable` protocol: a mask per table, pruned
entries held at zero by a constraint). What pruning buys is the stored form: memory and file
size proportional to the nonzeros, and for the tied embedding a reverse projection
(`x @ embeddings.T`, the language model's output layer) through the sparse kernels.

How GradualPruning sees a table: as its transpose `(output_dim, input_dim)`, the kernel of the
reverse projection, whose output units are the tokens. So `granularity="channel"` prunes whole
tokens (rows of the table), `"n:m"` keeps n of every m consecutive entries of each token's row,
and `block_shape=(r, c)` means r embedding dimensions by c tokens.
"""
import numpy as np
import keras
import tensorflow as tf

from sparsekeras import ops as sk_ops
from sparsekeras.layers._base import (MaskTarget, NotConvertible, Prunable, _pop_unsupported,
                                      _stored_product, build_like, copy_weights, keras_config)
from sparsekeras.layers._registry import register, register_when_imported

__all__ = ["SparseEmbedding", "SparseReversibleEmbedding", "SparsePositionEmbedding",
           "CompactEmbedding", "CompactReversibleEmbedding"]

_UNSUPPORTED = ("lora_rank", "lora_alpha", "quantization_config")


class _TableTarget(MaskTarget):
    """A table's (weight, mask) pair, seen by GradualPruning through its transpose (rows =
    tokens become output units: "channel" prunes whole tokens)."""

    @staticmethod
    def pruning_view(a):
        return np.asarray(a).T

    @staticmethod
    def from_pruning_view(mask):
        return np.asarray(mask).T


class _TablePrunable(Prunable):
    """The `Prunable` protocol for layers holding lookup tables (rows = tokens or positions):
    their masks are saved with the layer (Embedding's own save writes the table only), the
    tables are pruned through their transpose (see the module docstring), LoRA and
    quantization are refused, and `to_keras` gives the Keras twin holding the zeros."""

    _table_labels = ("embeddings",)
    _keras_class = None

    def pruning_targets(self):
        return [_TableTarget(t.layer, t.kernel, t.mask, t.label) if t.label in self._table_labels
                else t for t in super().pruning_targets()]

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)  # every variable, masks included

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def quantize(self, mode=None, **kwargs):
        raise ValueError(f"{type(self).__name__} cannot be quantized (its mask applies to the "
                         f"float table): densify the model first. Received: mode={mode!r}")

    def enable_lora(self, rank, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} does not support LoRA (a low-rank delta would "
                         f"fill the pruned entries). Received: rank={rank!r}")

    def _keras_config(self):
        config = self.get_config()
        config.pop("prunable", None)
        return config

    def _masked_values(self):
        """{path inside the layer: value} of every weight but the masks, pruned entries zeroed."""
        masked = {id(w): m for w, m in zip(self.get_prunable_weights(), self.pruning_masks or [])}
        own = self.path
        out = {}
        for w in self.weights:
            if any(w is m for m in (self.pruning_masks or [])):
                continue
            value = keras.ops.convert_to_numpy(w)
            if id(w) in masked:
                value = value * keras.ops.convert_to_numpy(masked[id(w)])
            out[w.path[len(own) + 1:] if w.path.startswith(own + "/") else w.name] = value
        return out

    def to_keras(self):
        """The Keras twin of this layer (same config, built), holding the pruned entries as
        zeros: what `sparsekeras.densify` puts in its place."""
        twin = self._keras_class.from_config(self._keras_config())
        build_like(twin, self)
        if self.built:
            if not twin.built:
                twin.build()
            values = self._masked_values()
            own = twin.path
            for w in twin.weights:
                w.assign(values[w.path[len(own) + 1:] if w.path.startswith(own + "/") else w.name])
        return twin

    @classmethod
    def from_keras(cls, layer, **options):
        """A built layer of this class with the configuration and weights of the Keras
        `layer` (masks all ones). `options`: prunable."""
        reason = _not_convertible(layer)
        if reason is not None:
            raise NotConvertible(reason)
        new = cls(**keras_config(layer), **options)
        build_like(new, layer)
        if layer.built:
            if not new.built:
                new.build()
            copy_weights(layer, new)
        return new


def _not_convertible(layer):
    """Why an Embedding-family layer cannot be converted (None if it can)."""
    if getattr(layer, "lora_enabled", False):
        return "LoRA is enabled"
    if getattr(layer, "quantization_mode", None) is not None:
        return f"quantized ({layer.quantization_mode})"
    return None


def _embedding_kwargs(name, kwargs):
    _pop_unsupported(name, kwargs, _UNSUPPORTED)
    return kwargs.pop("weights", None)


def _without_unsupported(config):
    config = dict(config)
    for key in _UNSUPPORTED:  # Embedding's config carries quantization_config=None
        config.pop(key, None)
    return config


def _sparse_embedding_config(layer, config):
    config = _without_unsupported(config)
    config["prunable"] = layer.prunable
    return config


def _set_initial_weights(layer, weights):
    """Embedding's `weights=` argument: the initial table (a list of one array or the array)."""
    if weights is None:
        return
    if isinstance(weights, (list, tuple)) and len(weights) == 1:
        weights = weights[0]
    layer.build()
    layer._embeddings.assign(np.asarray(weights))


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseEmbedding(_TablePrunable, keras.layers.Embedding):
    """`keras.layers.Embedding` whose table is prunable by `GradualPruning`.

    Same arguments and behaviour as `Embedding` (`mask_zero`, `embeddings_constraint`, the
    `weights` initial table...), plus `prunable`; LoRA and quantization are refused. The mask
    is a non-trainable weight `embeddings_mask` of the table's shape (1 = kept), saved with the
    layer; pruned entries stay exactly zero after every optimizer step. Lookups gather from the
    masked table; `sparsekeras.strip` turns the layer into `CompactEmbedding` (the nonzeros
    only, as CSR arrays).

    Args:
        input_dim: vocabulary size.
        output_dim: embedding size.
        embeddings_initializer: as in `keras.layers.Embedding`.
        embeddings_regularizer: as in `keras.layers.Embedding`.
        embeddings_constraint: as in `keras.layers.Embedding`.
        mask_zero: as in `keras.layers.Embedding`.
        prunable: whether `GradualPruning` prunes this layer.

    Input: integer `(batch, ...)`; output: `(batch, ..., output_dim)`.

    Example:
        >>> layer = sparsekeras.layers.SparseEmbedding(1000, 64, mask_zero=True)
        >>> y = layer(np.array([[3, 7, 0]]))            # (1, 3, 64)
        >>> layer.pruning_targets()[0].set_mask(np.random.rand(1000, 64) > 0.9)
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 prunable=True, **kwargs):
        weights = _embedding_kwargs("SparseEmbedding", kwargs)
        super().__init__(input_dim, output_dim, embeddings_initializer=embeddings_initializer,
                         embeddings_regularizer=embeddings_regularizer,
                         embeddings_constraint=embeddings_constraint, mask_zero=mask_zero,
                         **kwargs)
        self.prunable = bool(prunable)
        _set_initial_weights(self, weights)

    def get_prunable_weights(self):
        return [self._embeddings]

    def get_config(self):
        return _sparse_embedding_config(self, super().get_config())

    @classmethod
    def from_config(cls, config):
        return cls(**_without_unsupported(config))

    def to_stored(self, block="auto"):
        """The stored form (`CompactEmbedding`): the table's nonzeros as CSR arrays. `block`
        (how `strip` stores Dense kernels) does not apply to a table and is ignored."""
        table = self._masked_values()["embeddings"]
        return CompactEmbedding.from_table(table, mask_zero=self.mask_zero, name=self.name,
                                           dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseReversibleEmbedding(_TablePrunable, keras.layers.ReversibleEmbedding):
    """`keras.layers.ReversibleEmbedding` (keras_hub's tied input/output embedding) whose
    table, and with `tie_weights=False` its `reverse_embeddings` kernel, are prunable.

    Same arguments and behaviour as `ReversibleEmbedding` (`call(inputs, reverse=False)`:
    `reverse=True` projects `(..., output_dim)` to `(..., input_dim)` logits through the
    transposed table), plus `prunable`. The reverse kernel `(output_dim, input_dim)` is pruned
    as a Dense kernel (output units = tokens), the table through its transpose: either way
    `granularity="channel"` prunes whole tokens. `sparsekeras.strip` gives
    `CompactReversibleEmbedding` for a tied layer (lookups and the reverse projection from the
    same CSR arrays), the Keras twin holding zeros for an untied one.

    Example:
        >>> emb = sparsekeras.layers.SparseReversibleEmbedding(1000, 64)
        >>> h = emb(np.array([[3, 7]]))                 # (1, 2, 64)
        >>> logits = emb(h, reverse=True)               # (1, 2, 1000)
    """

    def __init__(self, input_dim, output_dim, tie_weights=True, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero=False,
                 reverse_dtype=None, logit_soft_cap=None, prunable=True, **kwargs):
        weights = _embedding_kwargs("SparseReversibleEmbedding", kwargs)
        super().__init__(input_dim, output_dim, tie_weights=tie_weights,
                         embeddings_initializer=embeddings_initializer,
                         embeddings_regularizer=embeddings_regularizer,
                         embeddings_constraint=embeddings_constraint, mask_zero=mask_zero,
                         reverse_dtype=reverse_dtype, logit_soft_cap=logit_soft_cap, **kwargs)
        self.prunable = bool(prunable)
        _set_initial_weights(self, weights)

    def get_prunable_weights(self):
        if self.tie_weights:
            return [self._embeddings]
        return [self._embeddings, self.reverse_embeddings]

    def get_config(self):
        return _sparse_embedding_config(self, super().get_config())

    @classmethod
    def from_config(cls, config):
        return cls(**_without_unsupported(config))

    def to_stored(self, block="auto"):
        """`CompactReversibleEmbedding` for a tied layer; the Keras twin (zeros stored) for an
        untied one, which has no stored form. `block` does not apply to a table."""
        if not self.tie_weights:
            return self.to_keras()
        table = self._masked_values()["embeddings"]
        return CompactReversibleEmbedding.from_table(
            table, mask_zero=self.mask_zero, reverse_dtype=self.reverse_dtype,
            logit_soft_cap=self.logit_soft_cap, name=self.name, dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparsePositionEmbedding(_TablePrunable, keras.layers.Layer):
    """keras_hub's `PositionEmbedding` (a learned `(sequence_length, features)` table added to
    a sequence) with a prunable table; it needs no keras_hub itself (only `to_keras` does).

    Args:
        sequence_length: the longest sequence. initializer: of the table.
        prunable: whether `GradualPruning` prunes this layer.

    Call: `inputs` `(batch, sequence, features)` (only its shape is read), `start_index`
    (the first position, for cached decoding) or `positions` (`(sequence,)` or
    `(batch, sequence)`); returns the position embeddings broadcast to the input's shape.

    Example:
        >>> pos = sparsekeras.layers.SparsePositionEmbedding(sequence_length=16)
        >>> pos(np.zeros((2, 10, 32)))                   # (2, 10, 32)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", prunable=True, **kwargs):
        super().__init__(**kwargs)
        if sequence_length is None:
            raise ValueError("`sequence_length` must be an Integer, received `None`.")
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)
        self.prunable = bool(prunable)

    def build(self, inputs_shape):
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=[self.sequence_length, inputs_shape[-1]],
            initializer=self.initializer, trainable=True)

    def get_prunable_weights(self):
        return [self.position_embeddings]

    def call(self, inputs, start_index=0, positions=None):
        shape = keras.ops.shape(inputs)
        table = keras.ops.convert_to_tensor(self.position_embeddings)
        if positions is not None:
            if len(keras.ops.shape(positions)) == 1:
                positions = keras.ops.expand_dims(positions, axis=0)
            table = keras.ops.take(table, positions, axis=0)
        else:
            table = keras.ops.slice(table, (start_index, 0), (shape[-2], shape[-1]))
        return keras.ops.broadcast_to(table, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(sequence_length=self.sequence_length,
                      initializer=keras.initializers.serialize(self.initializer),
                      prunable=self.prunable)
        return config

    @property
    def _keras_class(self):
        from keras_hub.layers import PositionEmbedding  # only a keras_hub model has this layer
        return PositionEmbedding


# ---- stored forms -----------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactEmbedding(keras.layers.Layer):
    """An Embedding whose table `(input_dim, output_dim)` is stored only as CSR arrays (row =
    token): memory and file size are proportional to the nonzeros (plus `input_dim + 1` row
    pointers). A lookup multiplies the tokens, as a one-hot CSR matrix, by the table's CSR
    (the compiled sparse x sparse product): it reads each token's stored entries only, and is
    differentiable w.r.t. the stored values, so the compact form can be fine-tuned (its
    pattern fixed).

    Build it with `CompactEmbedding.from_table(table)` (what `sparsekeras.strip` does).

    Args:
        input_dim: vocabulary size. output_dim: embedding size.
        nnz: number of stored entries.
        mask_zero: as in `keras.layers.Embedding` (token 0 is padding).
        embeddings_regularizer: applied to the stored values.

    Input: integer `(batch, ...)`; output: `(batch, ..., output_dim)`.

    Example:
        >>> table = np.where(np.random.rand(1000, 64) > 0.9, np.random.randn(1000, 64), 0)
        >>> layer = sparsekeras.layers.CompactEmbedding.from_table(table.astype("float32"))
        >>> layer(np.array([[3, 7]]))                    # (1, 2, 64)
    """

    def __init__(self, input_dim, output_dim, nnz, mask_zero=False, embeddings_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Expected a positive integer `{arg}`. Received: {arg}={value!r}")
        if not isinstance(nnz, int) or isinstance(nnz, bool) or not 0 <= nnz <= input_dim * output_dim:
            raise ValueError(f"Expected `nnz` an integer in [0, input_dim * output_dim]. "
                             f"Received: nnz={nnz!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.nnz = nnz
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.autocast = False

    def build(self, input_shape=None):
        self.indptr = self.add_weight(name="indptr", shape=(self.input_dim + 1,), dtype="int32",
                                      initializer="zeros", trainable=False)
        self.indices = self.add_weight(name="indices", shape=(self.nnz,), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.values = self.add_weight(name="values", shape=(self.nnz,), initializer="zeros",
                                      regularizer=self.embeddings_regularizer, trainable=True)

    @classmethod
    def from_table(cls, table, name=None, **kwargs):
        """A built layer holding the nonzeros of `table` `(input_dim, output_dim)` exactly."""
        table = np.asarray(table)
        if table.ndim != 2:
            raise ValueError(f"Expected a 2-D table (input_dim, output_dim). Received: "
                             f"table.shape={table.shape}")
        rows, cols = np.nonzero(table)  # row-major: CSR order
        layer = cls(input_dim=int(table.shape[0]), output_dim=int(table.shape[1]),
                    nnz=len(rows), name=name, **kwargs)
        layer.build()
        counts = np.bincount(rows, minlength=table.shape[0])
        layer.indptr.assign(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        layer.indices.assign(cols.astype(np.int32))
        layer.values.assign(table[rows, cols].astype(layer.values.dtype))
        return layer

    @property
    def sparsity(self):
        return 1.0 - self.nnz / float(self.input_dim * self.output_dim)

    def to_dense_table(self):
        """The table as a dense `(input_dim, output_dim)` array."""
        indptr = keras.ops.convert_to_numpy(self.indptr)
        table = np.zeros((self.input_dim, self.output_dim),
                         keras.ops.convert_to_numpy(self.values).dtype)
        rows = np.repeat(np.arange(self.input_dim), np.diff(indptr))
        table[rows, keras.ops.convert_to_numpy(self.indices)] = keras.ops.convert_to_numpy(
            self.values)
        return table

    def _lookup(self, inputs):
        tokens = tf.convert_to_tensor(inputs)
        if tokens.dtype != tf.int32:
            tokens = tf.cast(tokens, tf.int32)
        flat = tf.reshape(tokens, [-1])
        n = tf.size(flat)
        values = tf.convert_to_tensor(self.values)
        if values.dtype not in (tf.float32, tf.float64):
            values = tf.cast(values, tf.float32)
        # one-hot rows (n, input_dim) in CSR form times the table's CSR: row i of the result is
        # the stored entries of token flat[i]; the values' gradient is A^T dY on their pattern.
        y = sk_ops._ops.sparse_keras_csr_csr_mat_mul(
            tf.range(n + 1), flat, tf.ones([n], values.dtype),
            tf.cast(tf.stack([n, self.input_dim]), tf.int64),
            tf.convert_to_tensor(self.indptr), tf.convert_to_tensor(self.indices), values,
            tf.constant([self.input_dim, self.output_dim], tf.int64))
        y = tf.reshape(y, tf.concat([tf.shape(tokens), [self.output_dim]], 0))
        y.set_shape(tokens.shape.concatenate([self.output_dim]))
        return tf.cast(y, self.compute_dtype)

    def call(self, inputs):
        return self._lookup(inputs)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return keras.ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def _twin_config(self):
        return dict(input_dim=self.input_dim, output_dim=self.output_dim,
                    mask_zero=self.mask_zero,
                    embeddings_regularizer=self.embeddings_regularizer, name=self.name,
                    dtype=self.dtype_policy)

    _keras_class = keras.layers.Embedding

    def to_keras(self):
        """A built `keras.layers.Embedding` holding this table (zeros where nothing is
        stored): what `sparsekeras.densify` puts in its place."""
        twin = self._keras_class(**self._twin_config())
        twin.build()
        twin.embeddings.assign(self.to_dense_table())
        return twin

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim, nnz=self.nnz,
                      mask_zero=self.mask_zero,
                      embeddings_regularizer=keras.regularizers.serialize(
                          self.embeddings_regularizer))
        return config


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactReversibleEmbedding(CompactEmbedding):
    """The stored form of a tied `ReversibleEmbedding`: the table's CSR arrays serve both the
    lookup and the reverse projection `x @ embeddings.T` (`call(x, reverse=True)`), whose
    kernel `(output_dim, input_dim)` they hold in CSC form: the logits are computed by the
    compiled sparse product, proportional to the nonzeros.

    Args:
        input_dim: as in `CompactEmbedding`.
        output_dim: as in `CompactEmbedding`.
        nnz: as in `CompactEmbedding`.
        mask_zero: as in `CompactEmbedding`.
        embeddings_regularizer: as in `CompactEmbedding`.
        reverse_dtype: as in `keras.layers.ReversibleEmbedding`.
        logit_soft_cap: as in `keras.layers.ReversibleEmbedding`.

    Example:
        >>> layer = sparsekeras.layers.CompactReversibleEmbedding.from_table(table)
        >>> logits = layer(layer(np.array([[3, 7]])), reverse=True)   # (1, 2, input_dim)
    """

    def __init__(self, input_dim, output_dim, nnz, mask_zero=False, embeddings_regularizer=None,
                 reverse_dtype=None, logit_soft_cap=None, **kwargs):
        super().__init__(input_dim, output_dim, nnz, mask_zero=mask_zero,
                         embeddings_regularizer=embeddings_regularizer, **kwargs)
        self.reverse_dtype = reverse_dtype
        self.logit_soft_cap = logit_soft_cap

    def call(self, inputs, reverse=False):
        if not reverse:
            return self._lookup(inputs)
        x = tf.convert_to_tensor(inputs)
        # As ReversibleEmbedding: the product of the inputs and the (float32, not autocast)
        # table, so under mixed precision the logits are float32, unless reverse_dtype is set.
        dtype = self.reverse_dtype or keras.backend.result_type(x.dtype, self.values.dtype)
        x = tf.cast(x, dtype)
        values = tf.cast(self.values, dtype)
        if x.dtype not in (tf.float32, tf.float64):  # the sparse kernels' dtypes
            x, values = tf.cast(x, tf.float32), tf.cast(values, tf.float32)
        logits = _stored_product(x, values, self.indptr, self.indices, 1, self.output_dim,
                                 self.input_dim)
        logits = tf.cast(logits, dtype)
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = tf.tanh(logits / cap) * cap
        return logits

    def compute_mask(self, inputs, mask=None):
        # Only a lookup (integer tokens) has a padding mask; the reverse projection has none.
        if not self.mask_zero or "int" not in keras.backend.standardize_dtype(inputs.dtype):
            return None
        return keras.ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return (*input_shape[:-1], self.input_dim)
        return (*input_shape, self.output_dim)

    def compute_output_spec(self, inputs, reverse=False):
        dtype = self.compute_dtype
        if reverse:
            dtype = self.reverse_dtype or keras.backend.result_type(inputs.dtype,
                                                                    self.values.dtype)
        return keras.KerasTensor(self.compute_output_shape(inputs.shape, reverse), dtype=dtype)

    _keras_class = keras.layers.ReversibleEmbedding

    def _twin_config(self):
        config = super()._twin_config()
        config.update(tie_weights=True, reverse_dtype=self.reverse_dtype,
                      logit_soft_cap=self.logit_soft_cap)
        return config

    def get_config(self):
        config = super().get_config()
        config.update(reverse_dtype=self.reverse_dtype, logit_soft_cap=self.logit_soft_cap)
        return config


# ---- registry -------------------------------------------------------------------------------

SparseEmbedding._keras_class = keras.layers.Embedding
SparseReversibleEmbedding._keras_class = keras.layers.ReversibleEmbedding
register(keras.layers.Embedding, SparseEmbedding, check=_not_convertible)
register(keras.layers.ReversibleEmbedding, SparseReversibleEmbedding, check=_not_convertible)


def _register_keras_hub():
    """keras_hub's ReversibleEmbedding (a subclass of Keras', identical) and PositionEmbedding;
    done once keras_hub has been imported (sparsekeras does not import it)."""
    import keras_hub

    hub_reversible = getattr(keras_hub.layers, "ReversibleEmbedding", None)
    if hub_reversible is not None and hub_reversible is not keras.layers.ReversibleEmbedding:
        register(hub_reversible, SparseReversibleEmbedding, check=_not_convertible)
    hub_position = getattr(keras_hub.layers, "PositionEmbedding", None)
    if hub_position is not None:
        register(hub_position, SparsePositionEmbedding, check=_not_convertible)


register_when_imported("keras_hub", _register_keras_hub)
