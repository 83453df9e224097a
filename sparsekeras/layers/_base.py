"""What every prunable sparsekeras layer shares: the mask and its kernel constraint, the cached
sparse structure and the dense/sparse switch (`_PrunableKernel`), the (block-)CSC structure of a
mask, and the stored-form products that compact layers compute with.

Layer families live beside this module (`dense`, `conv`, ...) and import from it; it imports
none of them.
"""
import contextlib
import warnings

import numpy as np
import keras
import tensorflow as tf

from sparsekeras import _dispatch, _kernels
from sparsekeras import linalg as _linalg
from sparsekeras import ops as sk_ops
from sparsekeras.ops._gradients import take as _take

__all__ = ["DEFAULT_SWITCH_SPARSITY", "SPARSE_INPUT_SWITCH_SPARSITY", "AUTO_BLOCKS",
           "AUTO_BLOCK_MAX_FILL"]

# Sparsity from which the sparse kernels beat dense tf.matmul for a Dense layer: measured by
# benchmarks/bench_matmul.py (4096 x 4096, batch 32 and 256, 2 threads), where dense and
# sparse times cross between 0.5 and 0.8 sparsity. Override per layer with `switch_sparsity`.
DEFAULT_SWITCH_SPARSITY = 0.7
_COMPUTE_MODES = ("auto", "dense", "sparse")
# Sparsity from which, in "auto" mode, a sparse input (bag-of-words batch) is multiplied by the
# kept weights only (the mask's pattern) rather than by the whole rows of the dense kernel that
# it touches (SIMD over contiguous rows). Measured on a 256 x 50,000 batch with 50 words
# per row times a 50,000 x 256 kernel, 2 threads: dense rows 0.42-0.45 ms at every sparsity;
# kept weights only 1.51 ms at 0.9, 0.69 at 0.95, 0.31 at 0.98, 0.23 at 0.99.
SPARSE_INPUT_SWITCH_SPARSITY = 0.97
# Block widths CompactDense.from_kernel(block="auto") tries, widest first: a kernel whose nonzeros
# come in (1, G) blocks (GradualPruning(granularity="block", block_shape=(1, G)) or (r, G)) is
# stored in block-CSC form. 4096 x 4096 at 90%, batch 256, 2 threads, NumPy level: G=8 2.3 ms,
# G=4 2.4, G=2 3.4, unstructured (CSC) 5.4-5.9; 16 is no faster than 8.
AUTO_BLOCKS = (8, 4, 2)
# Stored entries per nonzero up to which "auto" takes a block width (zeros inside stored blocks
# are computed; a kept weight that trained to exactly 0 should not rule the blocks out).
AUTO_BLOCK_MAX_FILL = 1.02


def _fused_activation(activation):
    """The compiled ops' name for a layer activation they fuse into their output store
    ("linear", "relu", "relu6" or "gelu": Keras' exact GELU, `activation="gelu"`), or None
    (not fusable: applied by TensorFlow after the product). Shared by the Dense products
    (*BiasAct ops) and the convolutions (CsrConv2DBiasAct)."""
    if activation is None or activation is keras.activations.linear:
        return "linear"
    if activation is keras.activations.relu:
        return "relu"
    if activation is keras.activations.relu6:
        return "relu6"
    if activation is keras.activations.gelu:
        return "gelu"
    return None


def _dynamic_variable(value, dtype, name):
    """A non-trainable tf.Variable whose length may change (pattern caches); not saved by Keras.

    Created eagerly (`tf.init_scope`), also when Keras builds the layer inside a traced step,
    and never with zero elements: TensorFlow aborts the process when a zero-element variable is
    created under MultiWorkerMirroredStrategy (its initial value is broadcast from the chief).
    An empty `value` is assigned after creation (an assignment broadcasts nothing), so readers
    always see the real length and the hot path pays nothing."""
    value = np.asarray(value, dtype=dtype)
    with tf.init_scope():
        var = tf.Variable(value if value.size else np.zeros(1, dtype), shape=tf.TensorShape([None]),
                          trainable=False, name=name)
        if not value.size:
            var.assign(value)
    return var


def _structure_from_mask(mask, block=1):
    """CSC structure of a (K, N) boolean mask, or with block > 1 its block-CSC structure
    (groups of `block` outputs; a block is stored where any of its entries is set).

    Returns dict: indptr (N/block + 1), indices (row ids, one per entry or block), positions
    (flat k*N + n, into the row-major kernel, of each stored value in storage order). The
    gradient needs nothing more: dX comes from the scatter product over the same arrays.
    """
    k, n = mask.shape
    if block > 1:
        indptr, indices, _ = _linalg.bcsc_from_dense(mask, block)
        groups = np.repeat(np.arange(n // block, dtype=np.int64), np.diff(indptr))
        rows = np.repeat(indices.astype(np.int64), block)
        cols = (np.repeat(groups, block) * block
                + np.tile(np.arange(block, dtype=np.int64), len(indices)))
        return dict(indptr=indptr, indices=indices, positions=rows * n + cols)
    mask_t = np.ascontiguousarray(mask.T)  # transposed once (a 4096 x 4096 mask: 0.1-0.3 s)
    csc_indptr, csc_indices, _ = _kernels.dense_to_csr(mask_t, mask=mask_t, index_dtype=np.int32)
    rows = csc_indices.astype(np.int64)
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(csc_indptr))
    return dict(indptr=csc_indptr, indices=csc_indices, positions=rows * n + cols)


def _resolve_block(kernel, block):
    """The block width for storing `kernel` (K, N) (or its boolean mask): "auto" gives the
    widest of AUTO_BLOCKS whose blocks hold the nonzeros with at most AUTO_BLOCK_MAX_FILL stored
    entries per nonzero, else 1; an int (NumPy's too) must divide N."""
    n = kernel.shape[1]
    if isinstance(block, str):
        if block != "auto":
            raise ValueError(f"Expected `block` an int or 'auto'. Received: block={block!r}")
        return next((g for g in AUTO_BLOCKS
                     if _linalg.block_fill(kernel, g) <= AUTO_BLOCK_MAX_FILL), 1)
    block = _kernels.check_block(block)
    if n % block:
        raise ValueError(f"Expected `block` dividing units={n}. Received: block={block}")
    return block


def _stored_product(x, values, indptr, indices, block, k, n, transpose_structure=None):
    """x (..., k) times the kernel stored as (block-)CSC arrays: the compiled product, whose
    registered gradients give dX and the values' gradient (SDDMM). With the CSC arrays'
    `transpose_structure` (cached by the caller), dX at large batches comes from the gather
    product instead of the scatter one (4096 x 4096 at 90%, batch 256: fwd+bwd 1.25x faster)."""
    values = tf.cast(values, x.dtype)
    shape = tf.constant([k, n], tf.int64)
    if block > 1:
        return sk_ops.dense_bcsc_matmul(x, indptr, indices, values, shape, block)
    return sk_ops.dense_csc_matmul(x, indptr, indices, values, shape,
                                   transpose_structure=transpose_structure)


def _stored_sparse_input_product(layer, inputs, values, indptr, indices, block, k, n):
    """A sparse input (tf.SparseTensor or CSRTensor, rank 2) times the kernel stored as
    (block-)CSC arrays, with the sparse x sparse kernel: neither is densified. The kernel's CSR
    structure comes from a transpose of the CSC arrays (O(nnz + k) per call); the values'
    gradient is A^T dY on the kernel's pattern."""
    if inputs.shape.rank is not None and inputs.shape.rank != 2:
        raise ValueError(f"{type(layer).__name__} supports sparse inputs of rank 2 (batch, "
                         f"features). Received: inputs.shape={inputs.shape}")
    values = tf.convert_to_tensor(values)
    if values.dtype not in (tf.float32, tf.float64):
        values = tf.cast(values, tf.float32)
    csr = sk_ops.to_csr(inputs, index_dtype=tf.int32)
    if block > 1:  # the CSC form of the blocks
        indptr, indices, positions, _ = sk_ops.bcsc_expand(indptr, indices, block, [k, n])
        values = _take(values, positions)
    t_indptr, t_indices, perm = sk_ops.transpose_structure(indptr, indices, [n, k])
    y = sk_ops._ops.sparse_keras_csr_csr_mat_mul(
        csr.indptr, csr.indices, tf.cast(csr.values, values.dtype), csr.dense_shape,
        t_indptr, t_indices, _take(values, perm), tf.constant([k, n], tf.int64))
    y.set_shape([inputs.shape[0], n])
    return tf.cast(y, layer.compute_dtype)


def masked_csc_product(x2, kernel, indptr, indices, positions, k, m):
    """x2 (N, k) @ kernel.reshape(k, m) over the kept entries only (those at `positions` in
    the flat kernel, in the CSC order of `indptr`/`indices`), differentiable w.r.t. x2 and the
    kernel: the product of a pruned layer that trains its dense kernel (SparseDense,
    SparseEinsumDense).

    The trainable kernel is dense (the optimizer updates it densely while pruning), so its
    gradient is produced dense by one GEMM, x^T dY, instead of an SDDMM whose values would then
    be scattered into a dense tensor (the mask constraint zeroes the pruned entries after the
    step); dX comes from the sparse scatter product."""
    shape = tf.constant([k, m], tf.int64)
    shape_t = tf.constant([m, k], tf.int64)
    kernel_shape = tf.shape(kernel)

    @tf.custom_gradient
    def product(x2, kernel):
        values = tf.cast(_take(tf.reshape(kernel, [-1]), positions), x2.dtype)
        y = sk_ops.dense_csc_matmul(x2, indptr, indices, values, shape)

        def grad(dy):
            dx = sk_ops.dense_csr_matmul(dy, indptr, indices, values, shape_t)
            dk = tf.matmul(tf.cast(x2, dy.dtype), dy, transpose_a=True)
            return tf.cast(dx, x2.dtype), tf.reshape(tf.cast(dk, kernel.dtype), kernel_shape)

        return y, grad

    return product(x2, kernel)


def refresh_on_assign(layer, mask, ready_attr):
    """Make every eager assignment of `mask` call `layer.refresh_structure()` (once the layer
    has set `ready_attr`), however it is assigned (set_mask, layer or model set_weights,
    load_weights, checkpoint restore): a stale cached structure would silently compute with
    the old pattern."""
    assign = mask.assign

    def assign_and_refresh(value, *args, **kwargs):
        result = assign(value, *args, **kwargs)
        if tf.executing_eagerly() and getattr(layer, ready_attr, None) is not None:
            layer.refresh_structure()
        return result

    mask.assign = assign_and_refresh


def _pop_unsupported(layer_name, kwargs, keys):
    """Drop the Keras options in `keys` that the layer does not implement from kwargs; raise if
    one was actually set (None is what the Keras layers' own configs carry)."""
    for key in keys:
        if kwargs.get(key) is not None:
            raise ValueError(f"{layer_name} does not support `{key}`. "
                             f"Received: {key}={kwargs[key]!r}")
        kwargs.pop(key, None)


class _MaskConstraint(keras.constraints.Constraint):
    """Kernel constraint that zeroes pruned weights after each optimizer step (then applies the
    user's own constraint, if any). Internal: not serialized (the layer recreates it)."""

    def __init__(self, layer, inner=None):
        self.layer = layer
        self.inner = inner

    def __call__(self, w):
        w = w * keras.ops.cast(self.layer.mask, w.dtype)
        return self.inner(w) if self.inner is not None else w

    def get_config(self):
        return {}


_RETRACING = [0]  # > 0 inside `retrace_after()`: the caller retraces, no warning


def _symbolic():
    """Inside Keras' symbolic call (building a Functional model): nothing is traced to keep."""
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # pragma: no cover (a Keras without the module)
        return False
    return in_symbolic_scope()


def _warn_stale(layer):
    """Once per layer until its model is retraced (`_convert._retrace`), outside
    `retrace_after()`: a traced function keeps a choice the layer's new mask does not make."""
    if _RETRACING[0] or layer.__dict__.get("_stale_warned"):
        return
    layer.__dict__["_stale_warned"] = True
    now = "sparse" if layer._choice() else "dense"
    warnings.warn(
        f"{type(layer).__name__} {layer.name!r}: its new mask ({layer._mask_sparsity:.1%} "
        f"sparse) makes it compute {now} (for some batch sizes), but a function traced "
        "before (Keras' fit/evaluate/predict step, or your tf.function) chose the other "
        "path and keeps it until traced again: same results, maybe slower. The pruning "
        "callbacks retrace for you; after changing masks yourself, call "
        "`model.make_train_function(force=True)` and set `model.test_function` and "
        "`model.predict_function` to None (or compile the model again).", stacklevel=3)


@contextlib.contextmanager
def retrace_after():
    """Mask changes inside this block do not warn about traced choices going stale: the
    caller retraces the model afterwards (`_convert._retrace_if_stale`)."""
    _RETRACING[0] += 1
    try:
        yield
    finally:
        _RETRACING[0] -= 1


class _PrunableKernel:
    """Mask, cached sparse structure and dense/sparse switch shared by the prunable layers
    (SparseDense, SparseConv2D, SparseDepthwiseConv2D).

    Subclasses set `_default_switch_sparsity`, define `_kernel_variable()` and
    `_structure(mask_bool)` (dict of CSC `indptr`, `indices`, `positions`), call `_init_sparse`
    in __init__ and `_build_sparse` at the end of build."""

    _default_switch_sparsity = None

    def _init_sparse(self, switch_sparsity, compute, prunable, user_constraint):
        """Validate and keep the sparse options; `user_constraint` is the user's own kernel
        constraint, which `_build_sparse` chains after the mask (and get_config reports)."""
        if switch_sparsity is None:
            switch_sparsity = self._default_switch_sparsity
        if not 0.0 <= float(switch_sparsity) <= 1.0:
            raise ValueError("Expected `switch_sparsity` in [0, 1]. "
                             f"Received: switch_sparsity={switch_sparsity}")
        if compute not in _COMPUTE_MODES:
            raise ValueError(f"Expected `compute` in {_COMPUTE_MODES}. Received: compute={compute!r}")
        if getattr(self, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"{type(self).__name__} supports data_format='channels_last' (NHWC) "
                             f"only. Received: data_format={self.data_format!r}")
        self.switch_sparsity = float(switch_sparsity)
        self.compute = compute
        self.prunable = bool(prunable)
        self._user_kernel_constraint = user_constraint

    def _build_sparse(self):
        kernel = self._kernel_variable()
        self.mask = self.add_weight(name="mask", shape=tuple(kernel.shape), initializer="ones",
                                    trainable=False, dtype=self.variable_dtype)
        self._hook_mask_assign()
        kernel.constraint = _MaskConstraint(self, self._user_kernel_constraint)
        # A fresh mask is all ones: its structure comes from the kernel's shape, without reading
        # the mask, so that build works where Keras calls it inside a traced step (the first
        # fit of a subclassed model, or a Sequential without keras.Input), where no value can
        # be read. The caches are created eagerly (init_scope) with their real contents.
        ones = np.ones(tuple(int(d) for d in kernel.shape), bool)
        s = self._structure(ones)
        with tf.init_scope():
            self._sparse_on = tf.Variable(False, trainable=False, name="sparse_on")
        self._csc_indptr = _dynamic_variable(s["indptr"], np.int32, "csc_indptr")
        self._csc_indices = _dynamic_variable(s["indices"], np.int32, "csc_indices")
        self._positions = _dynamic_variable(s["positions"], np.int64, "positions")
        self._mask_sparsity = 0.0
        with tf.init_scope():
            self._apply_structure(ones, s)

    def _hook_mask_assign(self):
        refresh_on_assign(self, self.mask, "_csc_indptr")

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        # Layer's version (Dense's and Conv's only know kernel and bias); assigning the mask
        # refreshes the cached structure through the hook.
        keras.layers.Layer.load_own_variables(self, store)

    @property
    def sparsity(self):
        """Fraction of the kernel that is pruned (mask == 0)."""
        return self._mask_sparsity

    def set_mask(self, mask):
        """Set the pruning mask (bool or 0/1, kernel shape), zero the pruned weights, and update
        the sparse structure and compute path. Eager only (the callback calls it between steps)."""
        mask = np.asarray(mask)
        if mask.shape != tuple(self.mask.shape):
            raise ValueError(f"mask must have the kernel's shape {tuple(self.mask.shape)}. "
                             f"Received: mask.shape={mask.shape}")
        kernel = self._kernel_variable()
        self.mask.assign((mask != 0).astype(self.mask.dtype))  # the hook refreshes the structure
        kernel.assign(kernel * keras.ops.cast(self.mask, kernel.dtype))

    def refresh_structure(self):
        """Recompute the cached sparse structure from the mask (after loading weights, say)."""
        m = np.asarray(keras.ops.convert_to_numpy(self.mask)) != 0
        self._apply_structure(m)

    def _apply_structure(self, m, s=None):
        """Store the structure of the boolean mask `m` (`s`: its `_structure`, if known)."""
        self._mask_sparsity = 1.0 - (float(m.sum()) / m.size if m.size else 1.0)
        s = self._structure(m) if s is None else s
        self._csc_indptr.assign(s["indptr"])
        self._csc_indices.assign(s["indices"])
        self._positions.assign(s["positions"])
        self._sparse_on.assign(self._mask_sparsity >= self.switch_sparsity)
        self._refresh_more(m)
        if self._stale_trace():
            _warn_stale(self)

    def _refresh_more(self, mask):
        """Structure a subclass caches besides the CSC one, from the boolean mask."""

    @property
    def uses_sparse_kernels(self):
        """Whether the next call computes through the sparse kernels."""
        if self.compute != "auto":
            return self.compute == "sparse"
        return bool(self._sparse_on.numpy())

    _CACHE_ATTRS = ("_csc_indptr", "_csc_indices", "_positions")

    def _choice(self, rows=None):
        """Whether a call of `rows` rows (None: any) computes sparse, from the layer's Python
        state (the mask's sparsity against switch_sparsity, then the cost model's rows)."""
        if not self._mask_sparsity >= self.switch_sparsity:
            return False
        if rows is None:
            return True
        lo, hi = self._sparse_rows_py
        return lo <= rows <= hi

    def _choice_any_rows(self):
        """The choice for a row count known at run time only, where the mask decides it (below
        switch_sparsity, or the cost model's rows all or none): True / False, else None."""
        if not self._mask_sparsity >= self.switch_sparsity:
            return False
        lo, hi = self._sparse_rows_py
        if lo > hi:
            return False
        return True if lo <= 1 and hi >= _dispatch.MAX_ROWS else None

    def _stale_trace(self):
        """Whether a choice made while tracing (see _switch) differs from today's. `_traced`
        maps a static row count (None: the rows do not matter, "any": rows known at run time
        only) to the choice made for it."""
        traced = self.__dict__.get("_traced") or {}
        return any((self._choice_any_rows() if rows == "any" else self._choice(rows)) != choice
                   for rows, choice in traced.items())

    def _switch(self, sparse_fn, dense_fn, rows=None):
        if self.compute == "sparse":
            return sparse_fn()
        if self.compute == "dense":
            return dense_fn()
        # `rows` (the product's row count: a Python int or a scalar tensor): the layer keeps
        # `_sparse_rows`, the rows where the cost model (sparsekeras._dispatch) predicts the
        # sparse product faster, and computes sparse only there (and from switch_sparsity on).
        sparse_rows = getattr(self, "_sparse_rows", None) if rows is not None else None
        if tf.executing_eagerly():  # decided in Python: no variable reads, no cond
            if not self._choice(rows if sparse_rows is not None else None):
                return dense_fn()
            with _dispatch.layer_eager_threads(self, rows):  # one thread for small calls
                return sparse_fn()
        # Traced: where the choice is known now (a static row count; or the mask below
        # switch_sparsity, or the sparse product faster at any rows), it is made here, as in
        # eager mode. The traced step then has no tf.cond, and TensorFlow's graph optimizer can
        # fuse the dense product with the bias and the activation that follow it (it does not
        # look into a cond's branches): the MLP 784-300-100-10's training step while pruning
        # went from 0.94-0.96x the dense model's to 0.97-0.99x (docs/performance.md, session
        # 14). The choice is kept in `_traced`; a mask change that would choose otherwise warns
        # (`_apply_structure`) unless a pruning callback made it, which then retraces the
        # model's steps (`_convert._retrace_if_stale`).
        if sparse_rows is None or isinstance(rows, (int, np.integer)):
            key = None if sparse_rows is None else int(rows)
            choice = self._choice(key)
        else:
            key, choice = "any", self._choice_any_rows()
        if choice is not None:
            if not _symbolic():
                self.__dict__.setdefault("_traced", {})[key] = choice
            return sparse_fn() if choice else dense_fn()
        # The cached structure is read once here, outside the tf.cond, and the branches see
        # those reads in place of the variables. Read inside the sparse branch, the int32
        # arrays its gradient needs become the cond's intermediate outputs, which tf.cond's
        # gradient pairs by position with the dense branch's float ones: TensorFlow then
        # prints a 30-line "Type inference failed ... invalid graph" warning in every fit
        # (harmless, but it reads as a bug). Captured from outside, they are plain inputs.
        # (The attributes are swapped in the instance dict, out of Keras' and TF's tracking,
        # and restored whatever happens.)
        saved = {name: self.__dict__[name] for name in self._CACHE_ATTRS
                 if isinstance(self.__dict__.get(name), tf.Variable)}
        try:
            for name, var in saved.items():
                self.__dict__[name] = tf.convert_to_tensor(var)
            pred = self._sparse_on
            if sparse_rows is not None:
                rows = tf.cast(rows, tf.int32)
                pred = tf.logical_and(pred, tf.logical_and(rows >= sparse_rows[0],
                                                           rows <= sparse_rows[1]))
            return tf.cond(pred, sparse_fn, dense_fn)
        finally:
            self.__dict__.update(saved)

    def _sparse_config(self, config, constraint_key="kernel_constraint", drop=()):
        """The Keras layer's `config` with the user's own kernel constraint (not the mask's)
        under `constraint_key`, the Keras options in `drop` removed, and the sparse options."""
        config[constraint_key] = keras.constraints.serialize(self._user_kernel_constraint)
        for key in drop:
            config.pop(key, None)
        config.update(switch_sparsity=self.switch_sparsity, compute=self.compute,
                      prunable=self.prunable)
        return config

    def pruning_targets(self):
        """The (kernel, mask) pairs GradualPruning prunes: this layer's one kernel."""
        return [self] if self.prunable else []

    # Conversions (sparsify, strip, densify); a family module overrides what differs.
    _keras_class = None

    @classmethod
    def from_keras(cls, layer, **options):
        """A built layer of this class with the configuration and weights of the Keras
        `layer` (mask all ones). `options`: switch_sparsity, compute, prunable."""
        return convert_from_keras(cls, layer, **options)

    def to_keras(self):
        """The Keras twin of this layer (same config, built), holding the pruned weights as
        zeros: what `sparsekeras.densify` puts in its place."""
        config = self.get_config()
        for key in ("switch_sparsity", "compute", "prunable"):
            config.pop(key, None)
        twin = self._keras_class.from_config(config)
        build_like(twin, self)
        if self.built:
            for path, var in relative_paths(twin).items():
                var.assign(self._masked_weight(path))
        return twin

    def _masked_weight(self, path):
        """The value of the weight at `path` (inside the layer), pruned entries zeroed."""
        if path == self._kernel_path():
            return (keras.ops.convert_to_numpy(self._kernel_value())
                    * keras.ops.convert_to_numpy(self.mask))
        return keras.ops.convert_to_numpy(relative_paths(self)[path])

    def _kernel_path(self):
        return "kernel"

    def _kernel_value(self):
        return self.kernel


# ---- the protocol for every other prunable layer ----------------------------------------------

class _WeightMaskConstraint(keras.constraints.Constraint):
    """Zeroes the pruned entries of one weight after each optimizer step, then applies the
    weight's own constraint. Internal: not serialized (the layer recreates it in build)."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        w = w * keras.ops.cast(self.mask, w.dtype)
        return self.inner(w) if self.inner is not None else w

    def get_config(self):
        return {}


class MaskTarget:
    """One prunable weight of a `Prunable` layer and its mask, as `GradualPruning` sees it:
    `kernel` (the weight), `mask`, `set_mask(mask)`, `sparsity`, `name`, `layer`."""

    def __init__(self, layer, weight, mask, label):
        self.layer = layer
        self.kernel = weight
        self.mask = mask
        self.label = label

    @property
    def name(self):
        return f"{self.layer.name}/{self.label}" if self.label else self.layer.name

    @property
    def built(self):
        return self.layer.built

    @property
    def sparsity(self):
        """Fraction of the weight that is pruned (mask == 0). Eager only."""
        # .numpy(): NumPy 2 warns on np.asarray(variable) (its __array__ has no `copy`), and
        # this runs at every training step.
        m = (self.mask.numpy() if hasattr(self.mask, "numpy")
             else keras.ops.convert_to_numpy(self.mask))
        return 1.0 - float(np.count_nonzero(m)) / m.size if m.size else 0.0

    def set_mask(self, mask):
        """Set the mask (bool or 0/1, the weight's shape) and zero the pruned entries."""
        mask = np.asarray(mask)
        if mask.shape != tuple(self.mask.shape):
            raise ValueError(f"mask of {self.name!r} must have the weight's shape "
                             f"{tuple(self.mask.shape)}. Received: mask.shape={mask.shape}")
        self.mask.assign((mask != 0).astype(self.mask.dtype))
        self.kernel.assign(self.kernel * keras.ops.cast(self.mask, self.kernel.dtype))

    def __repr__(self):
        return f"<MaskTarget {self.name} shape={tuple(self.mask.shape)}>"


class Prunable:
    """Mixin that makes any Keras layer prunable by `GradualPruning`: the layer lists the
    weights to prune in `get_prunable_weights()` (as TensorFlow Model Optimization's
    `PrunableLayer` does), and the mixin gives each one a mask (a non-trainable weight named
    `<weight>_mask`, saved with the layer) and a constraint that keeps its pruned entries at
    exactly zero after every optimizer step. The layer's own `call` is unchanged: it computes
    densely with the zeros (masked dense compute). The masks are made right after the layer's
    own `build` (Keras' post-build hook), so nothing else is needed in the layer.

    Put it first among the bases. `prunable=False` (a constructor argument of the sparsekeras
    layers) keeps a layer out of pruning.

    Example:
        >>> class Scale(sparsekeras.layers.Prunable, keras.layers.Layer):
        ...     def build(self, input_shape):
        ...         self.w = self.add_weight(shape=(input_shape[-1], 8), name="w")
        ...     def call(self, x):
        ...         return x @ self.w
        ...     def get_prunable_weights(self):
        ...         return [self.w]
    """

    def get_prunable_weights(self):
        """The weights to prune (Keras variables of rank >= 2, say). Override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_prunable_weights() "
                                  "to be pruned.")

    def _prunable_labels(self):
        """A name for each prunable weight, unique within the layer (its path inside the layer)."""
        labels = []
        for w in self.get_prunable_weights():
            path = getattr(w, "path", w.name)
            own = getattr(self, "path", None) or self.name
            label = path[len(own) + 1:] if path.startswith(own + "/") else w.name
            labels.append(label)
        return labels

    def _post_build(self):
        super()._post_build()
        if getattr(self, "_pruning_masks", None) is not None:
            return
        weights = list(self.get_prunable_weights())
        masks = []
        for w, label in zip(weights, self._prunable_labels()):
            if len(w.shape) < 1:
                raise ValueError(f"{type(self).__name__}.get_prunable_weights() returned a "
                                 f"scalar weight {label!r}: prunable weights need rank >= 1.")
            mask = self.add_weight(name=label.replace("/", "_") + "_mask", shape=tuple(w.shape),
                                   initializer="ones", trainable=False, dtype=w.dtype)
            w.constraint = _WeightMaskConstraint(mask, w.constraint)
            masks.append(mask)
        self._pruning_masks = masks

    # Conversions (sparsify, strip without a stored form, densify).
    _keras_class = None
    _SPARSE_OPTIONS = ("switch_sparsity", "compute", "prunable")

    @classmethod
    def from_keras(cls, layer, **options):
        """A built layer of this class with the configuration and weights of the Keras
        `layer` (masks all ones)."""
        return convert_from_keras(cls, layer, **options)

    def to_keras(self):
        """The Keras twin of this layer (same config, built), holding the pruned weights as
        zeros: what `sparsekeras.densify` (and `strip`, for a layer without a stored form)
        puts in its place."""
        config = self.get_config()
        for key in self._SPARSE_OPTIONS:
            config.pop(key, None)
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

    @property
    def pruning_masks(self):
        """The masks of `get_prunable_weights()`, in order (1 = kept); None before build."""
        return getattr(self, "_pruning_masks", None)

    def pruning_targets(self):
        """The (weight, mask) pairs GradualPruning prunes (none with prunable=False)."""
        if not getattr(self, "prunable", True) or self.pruning_masks is None:
            return []
        return [MaskTarget(self, w, m, label) for w, m, label in
                zip(self.get_prunable_weights(), self._pruning_masks, self._prunable_labels())]

    @property
    def sparsity(self):
        """Fraction of the prunable weights' entries that are pruned."""
        targets = self.pruning_targets() if self.pruning_masks is not None else []
        total = sum(int(np.prod(t.mask.shape)) for t in targets)
        return (sum(t.sparsity * int(np.prod(t.mask.shape)) for t in targets) / total
                if total else 0.0)


# ---- conversion between a Keras layer and its sparse counterpart --------------------------

_DROPPED_KEYS = ("quantization_config", "lora_rank", "lora_alpha", "lora_enabled")


def keras_config(layer, drop=()):
    """The layer's config without the Keras options the sparse layers do not take; raises if
    one of them is set (a LoRA or quantized layer cannot be converted)."""
    config = dict(layer.get_config())
    for key in _DROPPED_KEYS + tuple(drop):
        value = config.pop(key, None)
        if value not in (None, False, 0) and key in _DROPPED_KEYS:
            raise NotConvertible(f"{key}={value!r} is set")
    return config


class NotConvertible(ValueError):
    """A layer whose configuration has no sparse counterpart (the message says why)."""


def relative_paths(layer):
    """{path of each variable inside the layer: variable}."""
    own = getattr(layer, "path", None) or layer.name
    out = {}
    for v in layer.weights:
        path = getattr(v, "path", v.name)
        out[path[len(own) + 1:] if path.startswith(own + "/") else v.name] = v
    return out


def copy_weights(src, dst, skip_missing=("mask",)):
    """Assign each weight of `src` to the weight of `dst` at the same path inside the layer
    (never by position). Weights of dst that src lacks keep their values when their path
    ends with one of `skip_missing` (a fresh mask: all ones); any other mismatch raises."""
    s, d = relative_paths(src), relative_paths(dst)
    for path, var in s.items():
        if path not in d:
            raise ValueError(f"cannot copy weight {path!r} of {src.name!r} ({type(src).__name__}) "
                             f"into {type(dst).__name__}: it has {sorted(d)}")
        if tuple(d[path].shape) != tuple(var.shape):
            raise ValueError(f"weight {path!r} of {src.name!r} has shape {tuple(var.shape)}; "
                             f"{type(dst).__name__} expects {tuple(d[path].shape)}")
        d[path].assign(keras.ops.convert_to_numpy(var))
    extra = [p for p in d if p not in s and not p.endswith(skip_missing)]
    if extra:
        raise ValueError(f"{type(dst).__name__} has weights {extra} that {src.name!r} "
                         f"({type(src).__name__}) lacks")


def convert_from_keras(cls, layer, **options):
    """A built `cls` layer with the config (plus `options`) and weights of the Keras `layer`:
    the masks are fresh (all ones), every other weight is copied by its path."""
    new = cls(**keras_config(layer), **options)
    build_like(new, layer)
    if layer.built:
        copy_weights(layer, new)
    return new


def build_like(new, old):
    """Build `new` as `old` was built (its recorded build shapes)."""
    config = old.get_build_config() if old.built else None
    if config is not None:
        new.build_from_config(config)
    return new
