"""TensorFlow ops over the compiled sparse kernels.

The only place TensorFlow meets the kernels: importing it loads the op library (once) and
registers the gradients. Every function works eagerly, inside `tf.function` and in SavedModels.

Functions take a sparse operand as a `CSRTensor`, a `tf.SparseTensor` (converted to CSR on the
fly) or a `scipy.sparse` matrix (eager), and dense operands as tensors. float32 and float64
compute natively; float16 and bfloat16 (mixed precision) compute in float32 and are cast back.

Not supported: XLA. `tf.function(jit_compile=True)` cannot compile these ops (TensorFlow raises
an InvalidArgumentError naming the op); Keras only turns XLA on by itself on GPUs.
"""
import numpy as np
import tensorflow as tf

from sparsekeras import _kernels
from sparsekeras.ops import _gradients
from sparsekeras.ops._lib import load as _load
from sparsekeras.ops.csr import CSRTensor

__all__ = ["CSRTensor", "matmul", "csr_csr_matmul", "dense_csc_matmul", "dense_bcsc_matmul",
           "bcsc_expand", "dense_csr_matmul", "sddmm",
           "transpose", "transpose_structure", "to_csr", "conv2d", "csr_conv2d",
           "conv_kernel_structure", "layer_norm"]

_ops = _load()
_NATIVE = (tf.float32, tf.float64)
_HALF = (tf.float16, tf.bfloat16)


def _is_sparse(x):
    if isinstance(x, (CSRTensor, tf.SparseTensor, tf.compat.v1.SparseTensorValue)):
        return True
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(x)


def to_csr(x, index_dtype=tf.int64):
    """A `CSRTensor` from a CSRTensor, tf.SparseTensor, scipy.sparse matrix or dense 2-D tensor.

    A SparseTensor's indices are range-checked in int64 against its dense_shape (at run time
    in graphs) before the cast to `index_dtype`; scipy input is validated before conversion.
    """
    return _to_csr(x, index_dtype, "x")


def _to_csr(x, index_dtype, name):
    if isinstance(x, CSRTensor):
        return x
    if isinstance(x, (tf.SparseTensor, tf.compat.v1.SparseTensorValue)):
        return CSRTensor.from_sparse_tensor(tf.SparseTensor.from_value(x), index_dtype=index_dtype,
                                            name=name)
    if _is_sparse(x):
        return CSRTensor.from_scipy(x, name=name)
    return CSRTensor.from_dense(x, index_dtype=index_dtype)


def _index_tensor(x, name):
    """x as an int32/int64 tensor; bool, unsigned and floating dtypes are refused (a cast would
    silently change the indices)."""
    if isinstance(x, (list, tuple, np.ndarray, np.generic, int)):
        arr = np.asarray(x)
        if arr.dtype.kind not in "i" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise TypeError(f"{name} must hold int32 or int64 indices; received dtype {arr.dtype}")
        x = tf.convert_to_tensor(arr.astype(np.int64 if arr.dtype.kind == "f" else arr.dtype))
    else:
        x = tf.convert_to_tensor(x)
    if x.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"{name} must hold int32 or int64 indices; received dtype {x.dtype.name}")
    return x


def _index_pair(indptr, indices, prefix=""):
    """indptr and indices as index tensors of one dtype (int64 if they differ: widening only)."""
    indptr = _index_tensor(indptr, f"{prefix}indptr")
    indices = _index_tensor(indices, f"{prefix}indices")
    if indptr.dtype != indices.dtype:
        indptr, indices = tf.cast(indptr, tf.int64), tf.cast(indices, tf.int64)
    return indptr, indices


def _shape_tensor(shape, name):
    """A [rows, cols] size vector as int64; non-integer dtypes are refused, not cast."""
    if not isinstance(shape, (list, tuple, np.ndarray, np.generic)):
        shape = tf.convert_to_tensor(shape)
        if shape.dtype not in (tf.int32, tf.int64):
            raise TypeError(f"{name} must be int32 or int64 sizes; received dtype {shape.dtype.name}")
        return tf.cast(shape, tf.int64)
    arr = np.asarray(shape)
    if arr.dtype.kind not in "iu" or (arr.dtype.kind == "u" and arr.size and arr.max() > 2**63 - 1):
        raise TypeError(f"{name} must be integer sizes; received {shape!r}")
    if arr.shape != (2,):
        raise ValueError(f"{name} must be 2 sizes [rows, cols]; received {shape!r}")
    return tf.constant(arr.astype(np.int64))


def _checked_values(csr, name):
    """csr.values, asserted (at run time too) to hold one entry per index before any gather."""
    if csr.values.shape[0] is not None and csr.indices.shape[0] is not None:
        if csr.values.shape[0] != csr.indices.shape[0]:
            raise tf.errors.InvalidArgumentError(
                None, None, f"{name}.values must be a vector with one entry per index "
                f"({csr.indices.shape[0]}); received shape {csr.values.shape}")
        return csr.values
    check = tf.debugging.assert_equal(
        tf.size(csr.values, out_type=tf.int64), tf.size(csr.indices, out_type=tf.int64),
        message=f"{name}.values must be a vector with one entry per index")
    with tf.control_dependencies([check]):
        return tf.identity(csr.values)


def _compute_dtype(*dtypes):
    """(compute dtype, output dtype) for operands of these dtypes."""
    for dt in dtypes:
        if not (dt.is_floating):
            raise TypeError(f"sparsekeras ops need floating-point operands; received {dt.name}")
    if tf.float64 in dtypes:
        return tf.float64, tf.float64
    out = tf.float32 if tf.float32 in dtypes else dtypes[0]
    return tf.float32, out


def _cast(x, dtype):
    return x if x.dtype == dtype else tf.cast(x, dtype)


def matmul(a, b, name=None, *, indexed_slices_grad=False):
    """Product of a sparse and a dense operand, in either order.

    Args:
        a: `(M, K)`: sparse (CSRTensor, tf.SparseTensor, scipy) or dense.
        b: `(K, N)`: dense or sparse if `a` is sparse, sparse if `a` is dense. A dense `a` may
            have any rank >= 2, `(..., K)`, like `Dense`'s input; a dense `b` may be 1-D. With
            both sparse, see `csr_csr_matmul`.

    Returns:
        A dense tensor `(M, N)` (`(..., N)`), in the operands' dtype.

    Raises:
        TypeError: neither operand sparse, or non-float dtypes.
        tf.errors.InvalidArgumentError: shape mismatch or malformed CSR (at run time in graphs).

    Gradients flow to the dense operand and to the sparse operand's values (on its pattern).
    """
    with tf.name_scope(name or "sparsekeras_matmul"):
        a_sp, b_sp = _is_sparse(a), _is_sparse(b)
        if a_sp and b_sp:
            return csr_csr_matmul(a, b)
        if not a_sp and not b_sp:
            raise TypeError("sparsekeras.ops.matmul needs one sparse operand (CSRTensor, "
                            f"tf.SparseTensor or scipy.sparse); received {type(a).__name__} and "
                            f"{type(b).__name__}")
        if a_sp:
            csr = _to_csr(a, tf.int64, "a")
            b = tf.convert_to_tensor(b)
            vector = b.shape.rank == 1
            unknown_rank = b.shape.rank is None
            if b.shape.rank is not None and b.shape.rank not in (1, 2):
                raise ValueError(f"b must be a vector or a matrix; received shape {b.shape}")
            b_in = b
            if vector:
                b = b[:, tf.newaxis]
            elif unknown_rank:
                # 1-D or 2-D, known only at run time: a (K, N) view, the result reshaped back.
                check = tf.debugging.assert_less_equal(
                    tf.rank(b), 2, message="b must be a vector or a matrix")
                with tf.control_dependencies([check]):
                    b_shape = tf.shape(b, out_type=tf.int64)
                    b = tf.reshape(b, tf.stack([b_shape[0], tf.reduce_prod(b_shape[1:])]))
            compute, out_dtype = _compute_dtype(csr.dtype, b.dtype)
            if indexed_slices_grad and not vector:
                y = _csr_matmul_sliced_grad(csr.indptr, csr.indices, csr.dense_shape,
                                            _cast(csr.values, compute), _cast(b, compute))
            else:
                y = _ops.sparse_keras_csr_mat_mul(csr.indptr, csr.indices,
                                                  _cast(csr.values, compute), csr.dense_shape,
                                                  _cast(b, compute))
            y = _cast(y, out_dtype)
            if unknown_rank:
                return tf.reshape(y, tf.concat([tf.shape(y, out_type=tf.int64)[:1],
                                                tf.shape(b_in, out_type=tf.int64)[1:]], axis=0))
            return y[:, 0] if vector else y
        csr = _to_csr(b, tf.int64, "b")
        a = tf.convert_to_tensor(a)
        # The op would call a "x": check the static shapes here, where the names are known
        # (only for a plausible structure: a malformed one is reported by the op first).
        k = tf.get_static_value(csr.dense_shape)
        k = None if k is None else [int(q) for q in k]  # Python ints: k[0] + 1 cannot overflow
        if a.shape.rank is not None and a.shape.rank >= 1 and a.shape[-1] is not None and \
                k is not None and len(k) == 2 and a.shape[-1] != k[0] and \
                csr.indptr.shape[0] == k[0] + 1:
            raise tf.errors.InvalidArgumentError(
                None, None, f"a must have {k[0]} columns to match b.dense_shape [{k[0]}, {k[1]}]; "
                f"received a.shape [{','.join(str(d) for d in a.shape)}]")
        # x @ W with W in CSR: the scatter product reads W's arrays as they are (no transpose).
        return dense_csr_matmul(a, csr.indptr, csr.indices, _checked_values(csr, "b"),
                                csr.dense_shape)


def csr_csr_matmul(a, w, name=None):
    """Product of two sparse operands, dense result: a sparse data batch times a pruned kernel,
    neither densified (row-by-row scatter of W's rows into each output row).

    Args:
        a: sparse `(M, K)` (CSRTensor, tf.SparseTensor or scipy.sparse).
        w: sparse `(K, N)`, same kinds.

    Returns:
        A dense tensor `(M, N)`. Work O(M * N + sum over a's entries (i, k) of nnz(w[k, :])).

    Gradients flow to both operands' values, on their own patterns: `(dY @ W^T)` at a's entries,
    `(A^T @ dY)` at w's entries; the index arrays and shapes get None.

    Example:
        >>> x = tf.sparse.from_dense([[0., 1., 0.], [2., 0., 0.]])
        >>> w = sparsekeras.ops.to_csr(tf.constant([[1., 0.], [0., 3.], [0., 0.]]))
        >>> sparsekeras.ops.csr_csr_matmul(x, w)   # [[0, 3], [2, 0]]
    """
    with tf.name_scope(name or "sparsekeras_csr_csr_matmul"):
        ca, cw = _to_csr(a, tf.int64, "a"), _to_csr(w, tf.int64, "w")
        if ca.indptr.dtype != cw.indptr.dtype:
            ca, cw = _with_index_dtype(ca, tf.int64), _with_index_dtype(cw, tf.int64)
        compute, out_dtype = _compute_dtype(ca.dtype, cw.dtype)
        y = _ops.sparse_keras_csr_csr_mat_mul(
            ca.indptr, ca.indices, _cast(_checked_values(ca, "a"), compute), ca.dense_shape,
            cw.indptr, cw.indices, _cast(_checked_values(cw, "w"), compute), cw.dense_shape)
        return _cast(y, out_dtype)


def _with_index_dtype(csr, dtype):
    if csr.indptr.dtype == dtype:
        return csr
    return CSRTensor(tf.cast(csr.indptr, dtype), tf.cast(csr.indices, dtype), csr.values,
                     csr.dense_shape)


def _csr_matmul_sliced_grad(indptr, indices, dense_shape, values, b):
    """A @ b (A CSR, M x K) whose gradient w.r.t. b is a tf.IndexedSlices.

    dB = A^T dY is nonzero only on the rows of B whose index is a column of A. Those columns,
    renumbered 0..U-1 by `tf.unique`, give a compact CSR of A (M x U); its transpose (U x M) times
    dY is dB restricted to them: O(nnz + U + nnz * N) work and a (U, N) result, never (K, N).
    The gradient w.r.t. A's values is the SDDMM on A's pattern, as for CsrMatMul.
    (SparseDense reads its kernel variable in place instead: CsrMatMulVariable, whose registered
    gradient builds the same IndexedSlices.)
    """
    @tf.custom_gradient
    def product(values, b):
        y = _ops.sparse_keras_csr_mat_mul(indptr, indices, values, dense_shape, b)

        def grad(dy):
            d_values = _ops.sparse_keras_csr_sddmm(indptr, indices, dense_shape, dy, b)
            touched, local = tf.unique(indices, out_idx=indices.dtype)
            shape_c = tf.stack([dense_shape[0], tf.size(touched, out_type=tf.int64)])
            t_indptr, t_indices, perm = _gradients.transpose_structure(indptr, local, shape_c)
            rows = _ops.sparse_keras_csr_mat_mul(t_indptr, t_indices, _gradients.take(values, perm),
                                                 tf.reverse(shape_c, axis=[0]), dy)
            d_b = tf.IndexedSlices(rows, touched, dense_shape=tf.shape(b, out_type=indices.dtype))
            return d_values, d_b

        return y, grad

    return product(values, b)


def dense_csc_matmul(x, indptr, indices, values, dense_shape, transpose_structure=None,
                     name=None):
    """`x @ W` with W `(K, N)` given in CSC form: the Dense-layer product.

    Args:
        x: dense `(..., K)`.
        indptr: `(N + 1,)` int32/int64, over W's columns. indices: `(nnz,)`, W's row ids.
        values: `(nnz,)`. dense_shape: `[K, N]` int64.
        transpose_structure: optional `(csr_indptr, csr_indices, perm)`: W's CSR structure and
            the permutation with `csr_values = gather(values, perm)`, as returned by
            `transpose_structure(indptr, indices, [N, K])`. Only the gradient uses it: without
            it, dX comes from the scatter product over the CSC arrays as they are; with it, from
            a gather of the values and the row-panel product when the batch is large enough to
            pay for the gather (measured crossover: ~70 rows at 10% density, ~280 at 50%, below
            32 at 5%), else from the scatter product too.

    Returns:
        `(..., N)`. Differentiable w.r.t. x and values.
    """
    with tf.name_scope(name or "sparsekeras_dense_csc_matmul"):
        if transpose_structure is None:
            transpose_structure = (None, None, None)

        def op(x2, indptr, indices, values, dense_shape):
            t_indptr, t_indices, t_perm = transpose_structure
            if t_indptr is None:  # empty: the gradient uses the scatter product instead
                t_indptr = t_indices = tf.zeros([0], indptr.dtype)
                t_perm = tf.zeros([0], tf.int64)
            return _ops.sparse_keras_dense_csc_mat_mul(x2, indptr, indices, values, dense_shape,
                                                       t_indptr, t_indices, t_perm)

        return _dense_times_sparse(x, indptr, indices, values, dense_shape, op)


def dense_bcsc_matmul(x, indptr, indices, values, dense_shape, block, name=None):
    """`x @ W` with W `(K, N)` in block-CSC form: the product of a Dense layer pruned in
    `(1, block)` blocks (`GradualPruning(granularity="block", block_shape=(1, block))`).

    W's columns come in groups of `block` consecutive outputs; each group stores a list of input
    rows (blocks), each with `block` weights. The kernel loads each input row once per block and
    feeds `block` outputs with it, where the CSC product feeds one: at 90% sparsity, 4096 x 4096,
    batch 256, blocks of 8 run ~2.4x faster than the same density unstructured.

    Args:
        x: dense `(..., K)`.
        indptr: `(N / block + 1,)` int32/int64, over groups. indices: `(nblocks,)` input rows.
        values: `(nblocks * block,)`, block-major (`values[b * block + g]` is the weight of
            output `q * block + g` of block b of group q). dense_shape: `[K, N]`.
        block: the group width, a positive int dividing N (`sparsekeras.linalg.bcsc_from_dense`
            builds the arrays from a dense kernel).

    Returns:
        `(..., N)`. Differentiable w.r.t. x and values (the gradients run on the equivalent CSC
        structure, `bcsc_expand`).
    """
    block = _kernels.check_block(block)
    with tf.name_scope(name or "sparsekeras_dense_bcsc_matmul"):
        def op(x2, indptr, indices, values, dense_shape):
            return _ops.sparse_keras_dense_bcsc_mat_mul(x2, indptr, indices, values, dense_shape,
                                                        block=block)

        return _dense_times_sparse(x, indptr, indices, values, dense_shape, op)


bcsc_expand = _gradients.bcsc_expand


def _dense_times_sparse(x, indptr, indices, values, dense_shape, op):
    """Shared handling of `x (..., in) @ sparse (in, out)`: converts and validates the arguments,
    runs `op` on a 2-D view of x in the compute dtype (no reshape for the common 2-D case: fewer
    ops per call), restores the batch shape and sets the static output width from dense_shape."""
    x = tf.convert_to_tensor(x)
    indptr, indices = _index_pair(indptr, indices)
    values = tf.convert_to_tensor(values)
    dense_shape = _shape_tensor(dense_shape, "dense_shape")
    compute, out_dtype = _compute_dtype(x.dtype, values.dtype)
    rank = x.shape.rank
    if rank is not None and rank < 1:
        raise ValueError(f"x must have rank >= 1; received shape {x.shape}")
    if rank == 2:
        x2 = x
    else:
        # Explicit int64 sizes: [-1, 0] is ambiguous for an empty x (keras Dense takes (2, 0, 0)),
        # and tf.shape's int32 fails on a dimension >= 2**31.
        x_shape = tf.shape(x, out_type=tf.int64)
        x2 = tf.reshape(x, tf.stack([tf.reduce_prod(x_shape[:-1]), x_shape[-1]]))
    y = _cast(op(_cast(x2, compute), indptr, indices, _cast(values, compute), dense_shape),
              out_dtype)
    static = tf.get_static_value(dense_shape)
    n = None if static is None or len(static) != 2 else int(static[1])
    if y.shape[-1] is not None and n is not None and y.shape[-1] != n:
        n = None  # inconsistent structure: the kernel reports it at run time
    if rank == 1:
        y = y[0]
        y.set_shape([n])
        return y
    if rank == 2:
        y.set_shape([x.shape[0], n])
        return y
    out = tf.reshape(y, tf.concat([tf.shape(x, out_type=tf.int64)[:-1],
                                   tf.shape(y, out_type=tf.int64)[-1:]], axis=0))
    if rank is not None:
        out.set_shape(x.shape[:-1].concatenate([n]))
    return out


def dense_csr_matmul(x, indptr, indices, values, dense_shape, name=None):
    """`x @ B` with B `(N, K)` given in CSR form (the scatter product: no transpose of B).

    Args:
        x: dense `(..., N)`. indptr: `(N + 1,)`; indices: `(nnz,)` column ids in [0, K);
        values: `(nnz,)`; dense_shape: `[N, K]`.

    Returns:
        `(..., K)`. Differentiable w.r.t. x and values.
    """
    with tf.name_scope(name or "sparsekeras_dense_csr_matmul"):
        return _dense_times_sparse(x, indptr, indices, values, dense_shape,
                                   _ops.sparse_keras_dense_csr_mat_mul)


def sddmm(pattern, u, v, name=None):
    """`(u @ v^T)` sampled at `pattern`'s stored entries, as a CSRTensor with its structure.

    Args:
        pattern: sparse `(M, N)` (its values are ignored). u: `(M, D)`. v: `(N, D)`.
    """
    with tf.name_scope(name or "sparsekeras_sddmm"):
        csr = _to_csr(pattern, tf.int64, "pattern")
        u = tf.convert_to_tensor(u)
        v = tf.convert_to_tensor(v)
        compute, out_dtype = _compute_dtype(u.dtype, v.dtype)
        values = _ops.sparse_keras_csr_sddmm(csr.indptr, csr.indices, csr.dense_shape,
                                             _cast(u, compute), _cast(v, compute))
        return csr.with_values(_cast(values, out_dtype))


def transpose_structure(indptr, indices, dense_shape):
    """CSR structure of a CSR matrix's transpose: `(indptr_t, indices_t, perm)` with
    `values_t = tf.gather(values, perm)`. O(nnz) parallel counting sort; not differentiable."""
    indptr, indices = _index_pair(indptr, indices)
    return _gradients.transpose_structure(indptr, indices, _shape_tensor(dense_shape, "dense_shape"))


def transpose(a, name=None):
    """The transpose of a sparse matrix, as a CSRTensor (parallel counting sort, O(nnz))."""
    with tf.name_scope(name or "sparsekeras_transpose"):
        csr = _to_csr(a, tf.int64, "a")
        t_indptr, t_indices, perm = _gradients.transpose_structure(csr.indptr, csr.indices,
                                                                   csr.dense_shape)
        return CSRTensor(t_indptr, t_indices, _gradients.take(_checked_values(csr, "a"), perm),
                         tf.reverse(csr.dense_shape, axis=[0]))


# ---- convolution ---------------------------------------------------------------------------

def _pair(v, name):
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an integer or a pair of integers; received: {v!r}")
    if isinstance(v, int):
        v = (v, v)
    try:
        a, b = (int(q) for q in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer or a pair of integers; received: {v!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be positive; received: {v!r}")
    return [a, b]


def _padding(padding):
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'same' or 'valid'; received: {padding!r}")
    return padding.upper()


_CONV_ACTIVATIONS = ("linear", "relu", "relu6", "gelu")


def csr_conv2d(x, indptr, indices, values, kernel_shape, strides=1, padding="valid", dilations=1,
               bias=None, activation=None, name=None):
    """2-D convolution of NHWC `x` with a sparse kernel, through the compiled kernels.

    Same semantics as `tf.nn.conv2d(x, kernel, strides, padding, dilations=...)` (NHWC). The
    kernel `(k_h, k_w, in_channels, out_channels)` is given as the CSC arrays of its
    `(k_h * k_w * in_channels, out_channels)` reshape (see `conv_kernel_structure`).

    Args:
        x: `(batch, height, width, in_channels)`.
        indptr: `(out_channels + 1,)` int32/int64.
        indices: `(nnz,)` patch positions `(i * k_w + j) * in_channels + c`.
        values: `(nnz,)`.
        kernel_shape: `(k_h, k_w, in_channels, out_channels)`.
        strides: int or pair.
        padding: "same" or "valid" (any case).
        dilations: int or pair.
        bias: None or `(out_channels,)` values added to every output pixel.
        activation: None / "linear", "relu", "relu6" or "gelu" (exact GELU). With a bias or an
            activation the op applies both to each output tile as it stores it (a Conv2D
            layer's epilogue, one pass over the output instead of three).

    Returns:
        `activation(conv2d(x, W) + bias)`, `(batch, out_h, out_w, out_channels)`;
        differentiable w.r.t. x, values and bias.
        float16/bfloat16 compute in float32. Not XLA-compilable.
    """
    with tf.name_scope(name or "sparsekeras_csr_conv2d"):
        try:
            kh, kw, cin, cout = (int(q) for q in kernel_shape)
        except (TypeError, ValueError):
            raise ValueError(f"kernel_shape must be (k_h, k_w, in_channels, out_channels); "
                             f"received: {kernel_shape!r}") from None
        x = tf.convert_to_tensor(x)
        indptr, indices = _index_pair(indptr, indices, "kernel.")
        values = tf.convert_to_tensor(values)
        if x.shape.rank is not None and x.shape.rank != 4:
            raise ValueError(f"x must be 4-D (batch, height, width, channels); received shape {x.shape}")
        if x.shape.rank == 4 and x.shape[3] is not None and x.shape[3] != cin:
            raise ValueError(f"x has {x.shape[3]} channels but kernel_shape={tuple(kernel_shape)} "
                             f"expects {cin}; received x.shape {x.shape}")
        if indptr.shape.rank == 1 and indptr.shape[0] is not None and indptr.shape[0] != cout + 1:
            raise ValueError(f"indptr must have out_channels + 1 = {cout + 1} entries for "
                             f"kernel_shape={tuple(kernel_shape)}; received {indptr.shape[0]}")
        if activation is not None and activation not in _CONV_ACTIVATIONS:
            raise ValueError(f"activation must be None or one of {_CONV_ACTIVATIONS}; received "
                             f"activation={activation!r}")
        compute, out_dtype = _compute_dtype(x.dtype, values.dtype)
        attrs = dict(kernel_size=[kh, kw], strides=_pair(strides, "strides"),
                     dilations=_pair(dilations, "dilations"), padding=_padding(padding),
                     kernel_shape=[kh, kw, cin, cout])
        if bias is None and activation in (None, "linear"):
            y = _ops.sparse_keras_csr_conv2d(_cast(x, compute), indptr, indices,
                                             _cast(values, compute), **attrs)
            return _cast(y, out_dtype)
        if bias is None:
            bias = tf.zeros((0,), compute)
        bias = tf.convert_to_tensor(bias)
        if bias.shape.rank is not None and (bias.shape.rank != 1 or (
                bias.shape[0] is not None and bias.shape[0] not in (0, cout))):
            raise ValueError(f"bias must have shape ({cout},) (one entry per output channel of "
                             f"kernel_shape={tuple(kernel_shape)}); received bias.shape "
                             f"{bias.shape}")
        y = _ops.sparse_keras_csr_conv2d_bias_act(
            _cast(x, compute), indptr, indices, _cast(values, compute), _cast(bias, compute),
            activation=activation or "linear", **attrs)
        return _cast(y, out_dtype)


def conv_kernel_structure(mask, index_dtype=tf.int32):
    """CSC structure of a conv kernel's pattern: `(indptr, indices, positions)`.

    Args:
        mask: `(k_h, k_w, in_channels, out_channels)`, nonzero where the kernel is kept.
    Returns:
        indptr `(out_channels + 1,)`, indices `(nnz,)` (patch positions), and positions
        `(nnz,)` int64: the flat row-major indices into the kernel, so that
        `values = tf.gather(tf.reshape(kernel, [-1]), positions)`.
    """
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank != 4:
        raise ValueError(f"mask must be 4-D (k_h, k_w, in_channels, out_channels); received shape {mask.shape}")
    cout = tf.shape(mask, out_type=tf.int64)[3]
    m2 = tf.reshape(tf.cast(mask, tf.bool), [-1, cout])
    where = tf.where(tf.transpose(m2))                       # (out_channel, patch), sorted
    counts = tf.math.bincount(tf.cast(where[:, 0], tf.int32), minlength=tf.cast(cout, tf.int32),
                              maxlength=tf.cast(cout, tf.int32), dtype=tf.int64)
    indptr = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], axis=0)
    positions = where[:, 1] * cout + where[:, 0]
    return tf.cast(indptr, index_dtype), tf.cast(where[:, 1], index_dtype), positions


def conv2d(x, kernel, strides=1, padding="valid", dilations=1, mask=None, name=None):
    """`tf.nn.conv2d` computed through the sparse kernels, skipping the kernel's zeros.

    Args:
        x: `(batch, height, width, in_channels)`.
        kernel: dense `(k_h, k_w, in_channels, out_channels)`; only its nonzeros (or the
            entries where `mask` is set) are used.
        strides: int or pair.
        padding: "same" or "valid".
        dilations: int or pair.
        mask: optional pattern of the same shape.
    Returns:
        `(batch, out_h, out_w, out_channels)`; differentiable w.r.t. x and the kernel (its
        gradient is nonzero only on the pattern).

    Example:
        >>> k = tf.random.normal([3, 3, 16, 32]) * tf.cast(tf.random.uniform([3, 3, 16, 32]) > 0.9, tf.float32)
        >>> y = sparsekeras.ops.conv2d(tf.random.normal([8, 28, 28, 16]), k, padding="same")
    """
    with tf.name_scope(name or "sparsekeras_conv2d"):
        kernel = tf.convert_to_tensor(kernel)
        if kernel.shape.rank != 4 or not kernel.shape.is_fully_defined():
            raise ValueError(f"kernel must be 4-D with a known shape (k_h, k_w, in_channels, "
                             f"out_channels); received shape {kernel.shape}")
        indptr, indices, positions = conv_kernel_structure(
            tf.not_equal(kernel, 0) if mask is None else mask)
        values = _gradients.take(tf.reshape(kernel, [-1]), positions)
        return csr_conv2d(x, indptr, indices, values, kernel.shape.as_list(), strides, padding,
                          dilations)


def layer_norm(x, gamma=None, beta=None, epsilon=1e-3, name=None):
    """Layer normalization over the last axis of `x`, as one compiled op (one pass over memory):
    `(x - mean) * rsqrt(var + epsilon) * gamma + beta`, with the mean and the (biased) variance
    of each row over the last axis.

    Args:
        x: a float tensor of rank >= 1 (float16 / bfloat16 compute in float32).
        gamma: None, or `(H,)` scales for x's last dimension H.
        beta: None, or `(H,)` offsets.
        epsilon: a number >= 0 added to the variance.

    Returns:
        A tensor of x's shape and dtype; differentiable w.r.t. x, gamma and beta. What
        `keras.layers.LayerNormalization(axis=-1, epsilon=epsilon)` computes, within float
        rounding; ten TensorFlow ops there, one here (`sparsekeras.layers.FusedLayerNormalization`).
    """
    with tf.name_scope(name or "sparsekeras_layer_norm"):
        x = tf.convert_to_tensor(x)
        if x.shape.rank == 0:
            raise ValueError(f"x must have at least one dimension; received shape {x.shape}")
        try:
            epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise ValueError(f"epsilon must be a number >= 0; received epsilon={epsilon!r}") \
                from None
        if not (epsilon >= 0 and np.isfinite(epsilon)):
            raise ValueError(f"epsilon must be a finite number >= 0; received epsilon={epsilon!r}")
        compute, out_dtype = _compute_dtype(x.dtype)
        h = x.shape[-1] if x.shape.rank is not None else None

        def param(p, what):
            if p is None:
                return tf.zeros([0], compute)
            p = tf.convert_to_tensor(p)
            if p.shape.rank is not None and (p.shape.rank != 1 or (
                    h is not None and p.shape[0] is not None and p.shape[0] != h)):
                raise ValueError(f"{what} must have shape ({h},) (x's last dimension); "
                                 f"received {what}.shape {p.shape}")
            return _cast(p, compute)

        y = _ops.sparse_keras_layer_norm(_cast(x, compute), param(gamma, "gamma"),
                                         param(beta, "beta"), epsilon=epsilon)
        return _cast(y, out_dtype)
