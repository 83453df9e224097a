"""Dense layers: `SparseDense` (a drop-in for `keras.layers.Dense` that owns a pruning mask) and
`CompactDense` (its stored form: the kernel as (block-)CSC arrays only).

- `SparseDense`: pruned weights are exactly zero after every optimizer step (the mask is applied
  as a kernel constraint, inside the training step, so momentum cannot revive them and any
  checkpoint is sparse). Once the mask is sparse enough, the layer computes through the
  compiled sparse kernels (forward and backward).
- `CompactDense`: the inference (and static-sparse training) form: memory, file size and
  compute scale with the nonzeros, and the optimizer updates the nonzero values only.
  `sparsekeras.strip` turns SparseDense into it.
"""
import contextlib

import numpy as np
import keras
import tensorflow as tf

from sparsekeras import _compact, _dispatch, _kernels
from sparsekeras import linalg as _linalg
from sparsekeras import ops as sk_ops
from sparsekeras.layers._registry import register
from sparsekeras.layers._base import (
    DEFAULT_SWITCH_SPARSITY, SPARSE_INPUT_SWITCH_SPARSITY, _MaskConstraint,
    _PrunableKernel, _dynamic_variable, masked_csc_product, _pop_unsupported, _resolve_block,
    _fused_activation, _stored_product, _stored_sparse_input_product, _structure_from_mask)

__all__ = ["SparseDense", "CompactDense"]


_FAST_DTYPES = (tf.float32, tf.float64)


def _epilogue(y, bias, activation):
    """y + bias, then activation: the layer's epilogue, applied by TensorFlow."""
    if bias is not None:
        y = y + tf.cast(bias, y.dtype)
    return activation(y) if activation is not None else y


def _fast_stored_product(layer, x, values, indptr, indices, block, k, n,
                         transpose_structure=None, bias=None, activation=None):
    """`_stored_product` with the fixed per-call cost cut for the common case (a 2-D float32 or
    float64 x of the values' dtype, or (batch, ..., k) with static inner dimensions; int32
    structure): the compiled op is called directly, with
    its constant arguments made once per layer in eager mode (a small eager op costs ~10 us,
    as much as the whole sparse product of a 784 x 300 layer at batch 1). Gradients are the
    op's registered ones, as through `sparsekeras.ops`. Anything else takes `_stored_product`.
    Returns activation(x @ W + bias) (bias may be None, activation a Keras activation or None):
    on the fast path the op applies the bias and a linear / ReLU / ReLU6 / GELU activation as
    it stores each output tile (the *BiasAct ops), where separate BiasAdd and Relu ops would
    pass over the whole output twice more; another activation runs after the op."""
    values_t = tf.convert_to_tensor(values)
    indptr_t, indices_t = tf.convert_to_tensor(indptr), tf.convert_to_tensor(indices)
    rank = x.shape.rank
    # (batch, d1, ..., k) with d1... static (a sequence): one reshape each way, where the
    # general path computes the shapes with five more ops.
    inner = x.shape[1:-1] if rank is not None and rank > 2 else None
    if (rank is None or rank < 2 or (inner is not None and not inner.is_fully_defined())
            or x.dtype != values_t.dtype or x.dtype not in _FAST_DTYPES
            or indptr_t.dtype != tf.int32 or indices_t.dtype != tf.int32):
        return _epilogue(_stored_product(x, values_t, indptr_t, indices_t, block, k, n,
                                         transpose_structure=transpose_structure),
                         bias, activation)
    x_in = x
    if inner is not None:
        x = tf.reshape(x, [-1, k])
    eager = tf.executing_eagerly()
    consts = layer.__dict__.get("_fast_consts") if eager else None
    if consts is None:
        consts = (tf.constant([k, n], tf.int64), tf.zeros([0], tf.int32),
                  tf.zeros([0], tf.int64))
        if eager:
            layer.__dict__["_fast_consts"] = consts  # untracked: not a weight
    shape, empty, empty64 = consts
    act = _fused_activation(activation)
    post = None
    if act is None:  # an activation the ops do not have: the bias in the store, it after
        act, post = "linear", activation
    fuse = bias is not None or act != "linear"
    if fuse:
        bias_t = tf.cast(bias, x.dtype) if bias is not None else tf.zeros([0], x.dtype)
    # Eager: one kernel thread for a small call (see _dispatch.eager_threads).
    threads = _dispatch.eager_threads(int(x.shape[0]) * int(values_t.shape[0])) if eager \
        else contextlib.nullcontext()
    with threads:
        if block > 1:
            if fuse:
                y = sk_ops._ops.sparse_keras_dense_bcsc_mat_mul_bias_act(
                    x, indptr_t, indices_t, values_t, shape, bias_t, block=block,
                    activation=act)
            else:
                y = sk_ops._ops.sparse_keras_dense_bcsc_mat_mul(x, indptr_t, indices_t,
                                                                values_t, shape, block=block)
        else:
            t_indptr, t_indices, t_perm = (empty, empty, empty64) \
                if transpose_structure is None \
                else (tf.convert_to_tensor(v) for v in transpose_structure)
            if fuse:
                y = sk_ops._ops.sparse_keras_dense_csc_mat_mul_bias_act(
                    x, indptr_t, indices_t, values_t, shape, t_indptr, t_indices, t_perm,
                    bias_t, activation=act)
            else:
                y = sk_ops._ops.sparse_keras_dense_csc_mat_mul(x, indptr_t, indices_t, values_t,
                                                               shape, t_indptr, t_indices,
                                                               t_perm)
    if post is not None:
        y = post(y)
    if inner is not None:
        y = tf.reshape(y, [-1] + inner.as_list() + [n])
        if not eager:
            y.set_shape(x_in.shape[:-1].concatenate([n]))
    elif not eager:
        y.set_shape([x.shape[0], n])
    return y


class _KeepConstraint(keras.constraints.Constraint):
    """Keeps the pruned entries inside the stored blocks of a compacted layer at zero."""

    def __init__(self, state):
        self.state = state

    def __call__(self, w):
        return w * keras.ops.cast(self.state.keep, w.dtype)

    def get_config(self):
        return {}


class _CompactState:
    """What a compacted SparseDense trains and computes with (see SparseDense.compact). The
    structure lives in untracked tf.Variables (not saved: it is a function of the mask)."""

    def __init__(self, block):
        self.block = block      # 1 (CSC) or the width of the (1, G) blocks
        self.values = None      # trainable: the stored values, in storage order
        self.indptr = None      # (block-)CSC structure
        self.indices = None
        self.positions = None   # flat k * units + n of each stored value (int64)
        self.keep = None        # block > 1: 1.0 where the mask keeps a stored value, else 0.0
        self.transposed = None  # block == 1: the CSC arrays' transpose_structure (for dX)


@keras.saving.register_keras_serializable(package="sparsekeras")
class SparseDense(_PrunableKernel, keras.layers.Dense):
    """`keras.layers.Dense` with a pruning mask and compiled sparse compute.

    Same arguments and behaviour as `Dense`, plus:

    Args:
        switch_sparsity: mask sparsity from which the layer computes through the sparse kernels
            (forward and backward); below it, through dense `matmul`. Default
            `DEFAULT_SWITCH_SPARSITY` (measured, see benchmarks/).
        compute: "auto" (sparse from `switch_sparsity` on, and per call only where the cost
            model of `sparsekeras._dispatch` predicts the sparse product faster for the call's
            row count: the batch, times the sequence for 3-D inputs), "dense" or "sparse"
            (always).
        prunable: whether `GradualPruning` prunes this layer.

    The mask is a non-trainable weight of the kernel's shape (1 = kept). Use
    `set_mask(mask)` to change it (the pruning callback does). Input: `(..., input_dim)`;
    output: `(..., units)`.

    Example:
        >>> layer = sparsekeras.layers.SparseDense(256, activation="relu")
        >>> y = layer(tf.ones((8, 64)))
        >>> layer.set_mask(np.random.rand(64, 256) > 0.9)   # 90% sparse
        >>> layer.sparsity
        0.9...
    """

    _default_switch_sparsity = DEFAULT_SWITCH_SPARSITY

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 switch_sparsity=None, compute="auto", prunable=True, **kwargs):
        _pop_unsupported("SparseDense", kwargs, ("lora_rank", "lora_alpha", "quantization_config"))
        super().__init__(units, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
                         kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint,
                         **kwargs)
        self._init_sparse(switch_sparsity, compute, prunable, self.kernel_constraint)
        self._compact = None

    # ---- weights ------------------------------------------------------------------------

    def build(self, input_shape):
        super().build(input_shape)
        k = int(input_shape[-1])
        self._input_dim = k
        with tf.init_scope():  # eagerly, also when Keras builds the layer in a traced step
            self._sparse_input_on = tf.Variable(False, trainable=False, name="sparse_input_on")
        # CSR (row-major) structure of the mask: sparse inputs times the pruned kernel.
        self._csr_indptr = _dynamic_variable(np.zeros(k + 1), np.int32, "csr_indptr")
        self._csr_indices = _dynamic_variable(np.zeros(0), np.int32, "csr_indices")
        _dispatch.attach(self)  # the rows where the cost model picks sparse compute
        self._build_sparse()

    def _kernel_variable(self):
        if self._compact is not None:
            raise ValueError(f"Layer {self.name!r} is compacted (it trains its nonzero values "
                             "only): call decompact(optimizer) before changing its mask or kernel.")
        return self._kernel

    def _structure(self, mask):
        s = _structure_from_mask(mask)
        # Kept for _refresh_compact, which follows in the same refresh: a compacted CSC layer's
        # structure is these arrays, so a mask assignment computes them once. (Instance dict:
        # out of Keras' attribute tracking.)
        self.__dict__["_csc_of"] = (mask, s)
        return s

    @property
    def kernel(self):
        """The (input_dim, units) kernel: the variable, or while compacted a dense tensor made
        from the trained nonzero values (read-only)."""
        if self._compact is None:
            return super().kernel
        c = self._compact
        flat = tf.scatter_nd(tf.reshape(tf.convert_to_tensor(c.positions), [-1, 1]),
                             tf.convert_to_tensor(c.values), [self._input_dim * self.units])
        return tf.reshape(flat, [self._input_dim, self.units])

    # ---- compaction ---------------------------------------------------------------------

    @property
    def compacted(self):
        """Whether the layer trains its nonzero values only (see `compact`)."""
        return self._compact is not None

    @property
    def values(self):
        """While compacted, the trainable variable of the stored values (else None)."""
        return None if self._compact is None else self._compact.values

    @property
    def compact_block(self):
        """While compacted, the width G of the (1, G) blocks the values are stored in (1: CSC)."""
        return None if self._compact is None else self._compact.block

    def compact(self, optimizer=None, block="auto"):
        """Train the kept weights only: freeze the mask and replace the dense trainable kernel
        by a variable of its nonzero values (block-CSC with (1, G) blocks where the mask comes
        in such blocks, else CSC).

        The optimizer then updates nnz weights instead of input_dim x units, and the product,
        its input gradient and its values gradient go through the compiled sparse kernels:
        a training step at 90% sparsity costs what `CompactDense`'s does. Eager only; the
        `GradualPruning` callback calls it once its schedule has ended (`compact=True`), and
        `sparsekeras.compact(model)` for a whole model.

        Args:
            optimizer: the built optimizer training this layer (e.g. `model.optimizer`), whose
                state of the kernel (momentum...) is carried over to the values, exactly: it
                must be elementwise (SGD, Adam, AdamW, RMSprop, ...). None if it has not been
                built yet. Retrace the training function afterwards
                (`model.make_train_function(force=True)`); the callback does.
            block: "auto", 1 or a width G dividing units, as in `CompactDense.from_kernel`.

        While compacted, `kernel` is a read-only tensor made from the values and the weights
        are (values, bias, mask). Compaction is a training-time state, not a format: saving
        (`.keras`, `.weights.h5`, checkpoints, BackupAndRestore) writes Dense's layout (kernel,
        bias, mask) and the optimizer's state of the kernel, scattered from the values', so a
        saved model loads uncompacted anywhere, and `GradualPruning` (or `sparsekeras.compact`)
        compacts it again, exactly, when training resumes.
        """
        if self._compact is not None:
            return
        if not self.built:
            raise ValueError(f"Layer {self.name!r} must be built before compact().")
        if self._user_kernel_constraint is not None:
            raise ValueError(f"Layer {self.name!r} has a kernel_constraint, which applies to the "
                             "dense kernel: it cannot be compacted. Received: kernel_constraint="
                             f"{self._user_kernel_constraint!r}")
        if optimizer is not None:
            _compact.check_optimizer(optimizer)
        mask = np.asarray(keras.ops.convert_to_numpy(self.mask)) != 0
        block = _resolve_block(mask, block)
        kernel = self._kernel
        s = _structure_from_mask(mask, block)
        positions = s["positions"]
        self._compact_in(block, len(positions))
        self._set_compact_structure(mask, s)
        self._compact.values.assign(
            self._keep_values(keras.ops.convert_to_numpy(kernel).reshape(-1)[positions]))
        if optimizer is not None:
            _compact.swap_variable(optimizer, kernel, self._compact.values,
                                   lambda state: state.reshape(-1)[positions],
                                   dense_layout=(positions, tuple(kernel.shape)))

    def _compact_in(self, block, nnz):
        """Put a trainable `values` variable of nnz entries in the kernel's place (its position
        in the layer's variables, so that the layer's and the optimizer's variable orders keep
        their layout) and drop the kernel; the structure is filled by _refresh_compact."""
        state = _CompactState(block)
        values = self._new_weight("values", (nnz,), _KeepConstraint(state) if block > 1 else None)
        self._replace_tracked(self._kernel, values)
        state.values = values
        state.indptr = _dynamic_variable(np.zeros(1), np.int32, "compact_indptr")
        state.indices = _dynamic_variable(np.zeros(0), np.int32, "compact_indices")
        state.positions = _dynamic_variable(np.zeros(0), np.int64, "compact_positions")
        state.keep = (_dynamic_variable(np.zeros(0), np.float32, "compact_keep")
                      if block > 1 else None)
        if block == 1:
            state.transposed = (_dynamic_variable(np.zeros(1), np.int32, "compact_t_indptr"),
                                _dynamic_variable(np.zeros(0), np.int32, "compact_t_indices"),
                                _dynamic_variable(np.zeros(0), np.int64, "compact_t_perm"))
        self._compact = state
        self._kernel = None

    def _refresh_compact(self, mask):
        """The compacted layer's structure from the (boolean) mask, its block width fixed."""
        c = self._compact
        cached = self.__dict__.pop("_csc_of", None)
        s = (cached[1] if c.block == 1 and cached is not None and cached[0] is mask
             else _structure_from_mask(mask, c.block))
        nnz = int(c.values.shape[0])
        if len(s["positions"]) != nnz:
            raise ValueError(f"Layer {self.name!r} is compacted with {nnz} stored values; the "
                             f"mask assigned to it needs {len(s['positions'])}: decompact it "
                             "before changing its mask.")
        self._set_compact_structure(mask, s)

    def _set_compact_structure(self, mask, s):
        """Store the structure `s` (_structure_from_mask(mask, block)) of the compacted layer."""
        c = self._compact
        c.indptr.assign(s["indptr"])
        c.indices.assign(s["indices"])
        c.positions.assign(s["positions"])
        if c.keep is not None:
            c.keep.assign(mask.reshape(-1)[s["positions"]].astype(np.float32))
        if c.transposed is not None:
            k, n = mask.shape
            for var, value in zip(c.transposed, sk_ops.transpose_structure(
                    tf.constant(s["indptr"]), tf.constant(s["indices"]), [n, k])):
                var.assign(value)

    def _keep_values(self, values):
        c = self._compact
        return values if c.keep is None else values * keras.ops.convert_to_numpy(c.keep)

    def decompact(self, optimizer=None):
        """Undo `compact`: a dense trainable kernel again, holding the trained values (and the
        optimizer's state of the values scattered back into the kernel's). Eager only."""
        c = self._compact
        if c is None:
            return
        positions = keras.ops.convert_to_numpy(c.positions)
        shape = (self._input_dim, self.units)

        def scatter(flat_values):
            return _compact.dense_from_values(flat_values, positions, shape)

        kernel = self._new_weight("kernel", shape, None)
        self._replace_tracked(c.values, kernel)
        kernel.assign(scatter(keras.ops.convert_to_numpy(c.values)))
        kernel.constraint = _MaskConstraint(self, self._user_kernel_constraint)
        self._kernel = kernel
        self._compact = None
        if optimizer is not None:
            _compact.swap_variable(optimizer, c.values, kernel, scatter)

    def _new_weight(self, name, shape, constraint):
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            return self.add_weight(name=name, shape=shape, initializer="zeros",
                                   regularizer=self.kernel_regularizer, constraint=constraint,
                                   dtype=self.variable_dtype, trainable=True)
        finally:
            if locked:
                self._tracker.lock()

    def _replace_tracked(self, old, new):
        """Put `new` (just appended to the trainable variables) where `old` was; untrack `old`."""
        store = self._trainable_variables
        _compact.replace_in_list(store, new, None)
        _compact.replace_in_list(store, old, new)
        ids = self._tracker.stored_ids["trainable_variables"]
        ids.discard(id(old))
        ids.add(id(new))

    # ---- mask ---------------------------------------------------------------------------

    def _refresh_more(self, m):
        if self._compact is not None:
            self._refresh_compact(m)
        _dispatch.refresh(self, m.shape[0], m.shape[1], int(np.count_nonzero(m)))
        self.__dict__.pop("_csc_of", None)
        counts = np.count_nonzero(m, axis=1)
        self._csr_indptr.assign(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        self._csr_indices.assign(np.nonzero(m)[1].astype(np.int32))  # row-major: CSR order
        self._sparse_input_on.assign(
            self._mask_sparsity >= max(self.switch_sparsity, SPARSE_INPUT_SWITCH_SPARSITY))

    @property
    def uses_sparse_input_kernel(self):
        """Whether a sparse input is multiplied by the kept weights only (sparse x sparse)."""
        if self.compute != "auto":
            return self.compute == "sparse"
        return bool(self._sparse_input_on.numpy())

    # ---- compute ------------------------------------------------------------------------

    def _sparse_matmul(self, x):
        """x @ (kernel * mask) through the sparse kernels, differentiable w.r.t. x and kernel
        (`_base.masked_csc_product`: dX by the sparse scatter product, the dense kernel's
        gradient by one GEMM)."""
        k, n = self.mask.shape
        flat = x.shape.rank == 2
        x2 = x if flat else tf.reshape(x, [-1, k])
        # Read the variables out here: custom_gradient must see tensors, not variable reads.
        y = masked_csc_product(x2, tf.convert_to_tensor(self.kernel),
                               tf.convert_to_tensor(self._csc_indptr),
                               tf.convert_to_tensor(self._csc_indices),
                               tf.convert_to_tensor(self._positions), k, n)
        if flat:
            return y
        out = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [n]], axis=0))
        out.set_shape(x.shape[:-1].concatenate([n]))
        return out

    def _dense_matmul(self, x):
        return tf.matmul(x, tf.cast(self.kernel, x.dtype)) if x.shape.rank == 2 else \
            keras.ops.matmul(x, tf.cast(self.kernel, x.dtype))

    def _sparse_input_matmul(self, inputs):
        """Sparse inputs (tf.SparseTensor, e.g. from keras.Input(sparse=True) or scipy data in
        fit; or a CSRTensor). Forward: either the CSR kernel times the dense kernel, reading
        the whole rows the batch touches (SIMD over contiguous rows), or the sparse x sparse
        kernel over the kept weights only (the mask's CSR structure is cached with it; kept
        weights are read in place from the kernel, pruned ones never). compute="dense" takes the
        first, compute="sparse" the second; "auto" the second from a mask sparsity of
        max(switch_sparsity, SPARSE_INPUT_SWITCH_SPARSITY), where it becomes the faster.
        Backward, in both modes: the kernel's gradient A^T dY from the input's nonzeros only, as
        a tf.IndexedSlices over the kernel rows the batch touches (the optimizer updates only
        those rows; the mask constraint zeroes the pruned ones, as on the dense path)."""
        if inputs.shape.rank is not None and inputs.shape.rank != 2:
            raise ValueError("SparseDense supports sparse inputs of rank 2 (batch, features). "
                             f"Received: inputs.shape={inputs.shape}")
        var = self.kernel.value  # the tf.Variable under the Keras variable
        csr = sk_ops.to_csr(inputs, index_dtype=tf.int32)
        if var.dtype not in (tf.float32, tf.float64):  # e.g. a float16 kernel: cast a read
            kernel = tf.cast(tf.convert_to_tensor(var), tf.float32)
            y = sk_ops.matmul(csr.with_values(tf.cast(csr.values, tf.float32)), kernel,
                              indexed_slices_grad=True)
            y.set_shape([inputs.shape[0], self.units])
            return y
        # Empty pattern: whole touched rows; the mask's CSR structure: its kept weights only.
        empty = tf.zeros([0], tf.int32)
        w_indptr = tf.convert_to_tensor(self._csr_indptr)
        w_indices = tf.convert_to_tensor(self._csr_indices)
        if self.compute == "sparse":
            p_indptr, p_indices = w_indptr, w_indices
        elif self.compute == "dense":
            p_indptr, p_indices = empty, empty
        else:
            # Either the whole pattern or none of it: a slice, cheaper than two tf.conds.
            on = tf.cast(tf.convert_to_tensor(self._sparse_input_on), tf.int32)
            p_indptr = w_indptr[:tf.size(w_indptr) * on]
            p_indices = w_indices[:tf.size(w_indices) * on]
        # The kernel is read in place through its handle, not with a ReadVariableOp: that copies
        # the whole kernel on every read once an optimizer has applied a sparse (IndexedSlices)
        # update to it (TensorFlow's copy-on-read mode; plain SGD does). sparse_read of no rows
        # marks the variable as accessed, so that gradient tapes watch it, without reading it.
        var.sparse_read(empty)
        y = sk_ops._ops.sparse_keras_csr_mat_mul_variable(
            csr.indptr, csr.indices, tf.cast(csr.values, var.dtype), csr.dense_shape, var.handle,
            p_indptr, p_indices)
        y.set_shape([inputs.shape[0], self.units])
        return y

    def call(self, inputs, training=None):
        c = self._compact
        if isinstance(inputs, (tf.SparseTensor, sk_ops.CSRTensor)):
            if c is not None:
                y = _stored_sparse_input_product(self, inputs, c.values, c.indptr, c.indices,
                                                 c.block, self._input_dim, self.units)
            else:
                y = self._sparse_input_matmul(inputs)
            y = tf.cast(y, self.compute_dtype)
            if self.bias is not None:
                y = y + tf.cast(self.bias, y.dtype)
            return self.activation(y) if self.activation is not None else y
        x = tf.convert_to_tensor(inputs)
        if c is not None:  # the product with the bias and activation (fused where it can)
            return _fast_stored_product(self, x, c.values, c.indptr, c.indices, c.block,
                                        self._input_dim, self.units, c.transposed,
                                        bias=self.bias, activation=self.activation)
        y = self._switch(lambda: self._sparse_matmul(x), lambda: self._dense_matmul(x),
                         rows=_dispatch.rows_of(x))
        if self.bias is not None:  # BiasAdd, as Keras' Dense: fused with a dense MatMul
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        if self.activation is not None:
            y = self.activation(y)
        return y

    def save_own_variables(self, store):
        """Dense's layout (kernel, bias, mask) in either state: a compacted layer writes its
        kernel made from the values."""
        c = self._compact
        all_vars = self._trainable_variables + self._non_trainable_variables
        for i, v in enumerate(all_vars):
            store[f"{i}"] = (keras.ops.convert_to_numpy(self.kernel)
                             if c is not None and v is c.values else v)

    def load_own_variables(self, store):
        """Dense's layout (kernel, bias, mask), into either state: a compacted layer takes its
        values from the kernel on the loaded mask's pattern."""
        c = self._compact
        all_vars = self._trainable_variables + self._non_trainable_variables
        if len(store.keys()) != len(all_vars):
            raise ValueError(f"Layer {self.name!r} expected {len(all_vars)} variables, but the "
                             f"saved layer has {len(store.keys())}.")
        kernel = None
        for i, v in enumerate(all_vars):
            if c is not None and v is c.values:
                kernel = np.asarray(store[f"{i}"])
            else:
                v.assign(store[f"{i}"])  # the mask's assign refreshes the structure (hook)
        if kernel is not None:
            if kernel.shape != (self._input_dim, self.units):
                raise ValueError(f"Layer {self.name!r} expected a saved kernel of shape "
                                 f"{(self._input_dim, self.units)}. Received: {kernel.shape}")
            positions = keras.ops.convert_to_numpy(c.positions)
            c.values.assign(self._keep_values(kernel.reshape(-1)[positions]))

    def get_config(self):
        return self._sparse_config(super().get_config(),
                                   drop=("quantization_config", "lora_rank", "lora_alpha"))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("quantization_config", None)
        return cls(**config)

    def to_stored(self, block="auto"):
        """The stored form (`CompactDense`): the kept weights only, as (block-)CSC arrays."""
        kernel = keras.ops.convert_to_numpy(self.kernel) * keras.ops.convert_to_numpy(self.mask)
        bias = keras.ops.convert_to_numpy(self.bias) if self.bias is not None else None
        return CompactDense.from_kernel(kernel, bias, name=self.name, block=block,
                                        activation=keras.activations.serialize(self.activation),
                                        dtype=self.dtype_policy)

    @classmethod
    def from_dense(cls, layer, **kwargs):
        """A SparseDense with the configuration of a `keras.layers.Dense` (weights not copied;
        `sparsekeras.sparsify` copies them)."""
        config = layer.get_config()
        for key in ("quantization_config", "lora_rank", "lora_alpha"):
            config.pop(key, None)
        config.update(kwargs)
        return cls(**config)


@keras.saving.register_keras_serializable(package="sparsekeras")
class CompactDense(keras.layers.Layer):
    """A Dense layer whose kernel is stored only as CSC arrays: memory, file size and compute are
    proportional to the number of nonzeros. Trainable on its nonzero values (the structure is
    fixed), so the optimizer touches only `nnz` weights.

    Build it with `CompactDense.from_kernel(kernel, bias, ...)` (what `sparsekeras.strip` does),
    or let it draw a random pattern of the given `sparsity` when built (static sparse training).

    With `block` = G > 1 the kernel is stored in block-CSC form: groups of G consecutive
    outputs share their list of input rows (one (1, G) block per stored row), and the product
    feeds G outputs from each input row it loads (`sparsekeras.ops.dense_bcsc_matmul`). A
    kernel pruned in (1, G) blocks computes ~2.4x faster this way than unstructured at the
    same density (90%, 4096 x 4096, batch 256, G=8). `from_kernel(block="auto")` picks G
    from the kernel's nonzeros.

    Args:
        units: output size.
        nnz: number of stored weights (set by from_kernel; None: from `sparsity` at build time).
            With block > 1, a multiple of block (whole blocks are stored).
        sparsity: fraction of zeros of a random pattern drawn at build time, when nnz is None
            (random blocks when block > 1).
        block: 1 (CSC, unstructured) or the width G of the (1, G) blocks; divides `units`.
        activation: as in Dense.
        use_bias: as in Dense.
        kernel_initializer: as in Dense (for the values of a random pattern).
        bias_initializer: as in Dense.
        kernel_regularizer: as in Dense (on the values).
        bias_regularizer: as in Dense.
        seed: seed of the random pattern.
    """

    def __init__(self, units, nnz=None, sparsity=None, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, seed=None, block=1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"Expected a positive integer `units`. Received: units={units}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1 or units % block:
            raise ValueError("Expected `block` a positive integer dividing `units`. "
                             f"Received: block={block!r}, units={units}")
        if nnz is not None and int(nnz) % block:
            raise ValueError(f"Expected `nnz` a multiple of block={block}. Received: nnz={nnz}")
        self.block = block
        if nnz is None and sparsity is None:
            raise ValueError("CompactDense needs `nnz` (use CompactDense.from_kernel) or "
                             "`sparsity` (random pattern). Received: nnz=None, sparsity=None")
        if sparsity is not None and not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"Expected `sparsity` in [0, 1). Received: sparsity={sparsity}")
        self.units = units
        self.nnz = None if nnz is None else int(nnz)
        self.target_sparsity = None if sparsity is None else float(sparsity)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.seed = seed
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self._pending = None

    def build(self, input_shape):
        k, n, g = int(input_shape[-1]), self.units, self.block
        pattern = None
        if self.nnz is None:
            rng = np.random.default_rng(self.seed)
            n_blocks = int(round((1.0 - self.target_sparsity) * k * n / g))
            self.nnz = n_blocks * g
            flat = np.sort(rng.choice(k * (n // g), size=n_blocks, replace=False))
            block_mask = np.zeros(k * (n // g), bool)
            block_mask[flat] = True
            pattern = _structure_from_mask(np.repeat(block_mask.reshape(k, n // g), g, axis=1), g)
        self.input_dim = k
        self.indptr = self.add_weight(name="indptr", shape=(n // g + 1,), dtype="int32",
                                      initializer="zeros", trainable=False)
        self.indices = self.add_weight(name="indices", shape=(self.nnz // g,), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.values = self.add_weight(name="values", shape=(self.nnz,), initializer="zeros",
                                      regularizer=self.kernel_regularizer, trainable=True)
        self.bias = (self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer,
                                     regularizer=self.bias_regularizer)
                     if self.use_bias else None)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: k})
        if pattern is not None:
            self.indptr.assign(pattern["indptr"])
            self.indices.assign(pattern["indices"])
            dense_init = keras.ops.convert_to_numpy(self.kernel_initializer((k, n)))
            self.values.assign(dense_init.reshape(-1)[pattern["positions"]])

    @classmethod
    def from_kernel(cls, kernel, bias=None, name=None, block="auto", **kwargs):
        """A built CompactDense holding the nonzeros of `kernel` (input_dim, units) exactly.

        block: 1 (CSC), a block width G dividing units (block-CSC; zeros inside stored blocks
        are kept), or "auto": the widest of AUTO_BLOCKS whose blocks hold the nonzeros with at
        most AUTO_BLOCK_MAX_FILL stored entries per nonzero, else 1."""
        kernel = np.asarray(kernel)
        if kernel.ndim != 2:
            raise ValueError(f"Expected a 2-D kernel (input_dim, units). Received: "
                             f"kernel.shape={kernel.shape}")
        k, n = kernel.shape
        block = _resolve_block(kernel, block)
        if block > 1:
            csc_indptr, csc_indices, csc_values = _linalg.bcsc_from_dense(kernel, block)
        else:
            csc_indptr, csc_indices, csc_values = _kernels.dense_to_csr(
                np.ascontiguousarray(kernel.T), index_dtype=np.int32)
        layer = cls(units=n, nnz=len(csc_values), use_bias=bias is not None, name=name,
                    block=block, **kwargs)
        layer.build((None, k))
        layer.indptr.assign(csc_indptr)
        layer.indices.assign(csc_indices)
        layer.values.assign(csc_values.astype(layer.values.dtype))
        if bias is not None:
            layer.bias.assign(np.asarray(bias))
        return layer

    @property
    def sparsity(self):
        return 1.0 - self.nnz / float(self.input_dim * self.units)

    def to_dense_kernel(self):
        """The kernel as a dense (input_dim, units) array (for inspection)."""
        if self.block > 1:
            return _linalg.bcsc_to_dense(keras.ops.convert_to_numpy(self.indptr),
                                         keras.ops.convert_to_numpy(self.indices),
                                         keras.ops.convert_to_numpy(self.values),
                                         (self.input_dim, self.units), self.block)
        return _kernels.csr_to_dense(keras.ops.convert_to_numpy(self.indptr),
                                     keras.ops.convert_to_numpy(self.indices),
                                     keras.ops.convert_to_numpy(self.values),
                                     (self.units, self.input_dim)).T

    def _sparse_input_matmul(self, inputs):
        return _stored_sparse_input_product(self, inputs, self.values, self.indptr, self.indices,
                                            self.block, self.input_dim, self.units)

    def to_keras(self):
        """A built `keras.layers.Dense` holding this kernel (zeros where nothing is stored):
        what `sparsekeras.densify` puts in its place."""
        twin = keras.layers.Dense(self.units, activation=self.activation, use_bias=self.use_bias,
                                  name=self.name, dtype=self.dtype_policy)
        twin.build((None, self.input_dim))
        twin.kernel.assign(self.to_dense_kernel())
        if self.bias is not None:
            twin.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return twin

    def call(self, inputs):
        if isinstance(inputs, (tf.SparseTensor, sk_ops.CSRTensor)):
            y = self._sparse_input_matmul(inputs)
            if self.bias is not None:
                y = y + tf.cast(self.bias, y.dtype)
            return self.activation(y) if self.activation is not None else y
        x = tf.convert_to_tensor(inputs)
        # the product with the bias and activation (fused into the op where it can)
        return _fast_stored_product(self, x, self.values, self.indptr, self.indices, self.block,
                                    self.input_dim, self.units, bias=self.bias,
                                    activation=self.activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, nnz=self.nnz, sparsity=self.target_sparsity,
            activation=keras.activations.serialize(self.activation), use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            seed=self.seed, block=self.block)
        return config


SparseDense._keras_class = keras.layers.Dense
register(keras.layers.Dense, SparseDense)
