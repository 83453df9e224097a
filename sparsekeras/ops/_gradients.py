"""Gradients of the sparsekeras ops, registered with TensorFlow at import.

Built from the other kernels (as in sgk): the sparse operand's gradient is an SDDMM on its own
pattern (never a dense K x N matrix), the dense operand's a product with the transpose, whose
structure comes from the parallel CSR transpose and whose values are a gather by `perm`.
"""
import tensorflow as tf

from sparsekeras.ops._lib import load

_ops = load()


def _reverse(dense_shape):
    return tf.reverse(dense_shape, axis=[0])


def take(params, indices):
    """`tf.gather(params, indices)` for a 1-D params and indices through the TakeValues op
    (parallel, prefetching: TF's gather copies one element per call here, 3.6-8 ms for the
    1.7M-entry permutation of a 4096 x 4096 kernel at 90% sparsity against ~0.8 ms); other
    dtypes fall back to tf.gather. Differentiable w.r.t. params (tf.IndexedSlices, as gather)."""
    params = tf.convert_to_tensor(params)
    indices = tf.convert_to_tensor(indices)
    if (params.dtype not in (tf.float32, tf.float64) or indices.dtype not in (tf.int32, tf.int64)
            or params.shape.rank != 1 or indices.shape.rank != 1):
        return tf.gather(params, indices)
    return _ops.sparse_keras_take_values(params, indices)


@tf.RegisterGradient("SparseKeras>TakeValues")
def _take_values_grad(op, grad):
    params, indices = op.inputs
    return [tf.IndexedSlices(grad, indices, dense_shape=tf.shape(params, out_type=indices.dtype)),
            None]


def transpose_structure(indptr, indices, dense_shape):
    """(indptr_t, indices_t, perm) of the CSR transpose: values_t = gather(values, perm)."""
    return _ops.sparse_keras_csr_transpose_structure(indptr, indices, dense_shape)


@tf.RegisterGradient("SparseKeras>CsrMatMul")
def _csr_matmul_grad(op, grad):
    """Y = A @ B: dA = SDDMM(A's pattern; dY, B); dB = A^T @ dY."""
    indptr, indices, values, dense_shape, b = op.inputs
    d_values = _ops.sparse_keras_csr_sddmm(indptr, indices, dense_shape, grad, b)
    t_indptr, t_indices, perm = transpose_structure(indptr, indices, dense_shape)
    d_b = _ops.sparse_keras_csr_mat_mul(t_indptr, t_indices, take(values, perm),
                                        _reverse(dense_shape), grad)
    return [None, None, d_values, None, d_b]


def _dx_by_gather(batch, nnz, n_in, n_out):
    """Whether dX = dY @ W^T should run as the gather product over a cached CSR of W (values
    permuted by `perm`, then the row-panel product) rather than the scatter product over W's CSC
    arrays. Both cost ~nnz * batch; the gather's product moves half the bytes, but it first
    permutes the values (random reads over nnz entries, the larger the slower per entry).
    Crossover measured at 4096 x 4096, NumPy level, 2 threads (session 5): batch ~280 at 50%
    density, ~85 at 20%, ~70 at 10%, below 32 at 5% and 1%. Python numbers give a bool, tensors
    a boolean tensor."""
    if all(isinstance(v, (int, float)) for v in (batch, nnz, n_in, n_out)):
        density = nnz / max(1, n_in * n_out)
        return batch >= 25 + 600 * max(0.0, density - 0.05)
    f = [tf.cast(v, tf.float64) for v in (batch, nnz, n_in, n_out)]
    density = f[1] / tf.maximum(f[2] * f[3], 1.0)
    return f[0] >= 25.0 + 600.0 * tf.maximum(density - 0.05, 0.0)


def _static_or_tensor(static, make_tensor):
    """The static size as a Python int, else the run-time tensor make_tensor() builds."""
    return int(static) if static is not None else make_tensor()


@tf.RegisterGradient("SparseKeras>DenseCscMatMul")
def _dense_csc_matmul_grad(op, grad):
    """Y = X @ W, W (K x N) in CSC = CSR of W^T (N x K).

    dX = dY @ W^T: the scatter product over CSR(W^T), i.e. W's CSC arrays as they are; or, if
    the caller cached W's CSR structure and the batch is large enough to pay for permuting the
    values (`_dx_by_gather`), the gather product over it.
    dW[k, n] = X[:, k] . dY[:, n] = SDDMM_T(CSR(W^T); dY, X): no transposes.
    """
    x, indptr, indices, values, dense_shape, t_indptr, t_indices, perm = op.inputs
    shape_t = _reverse(dense_shape)  # [N, K]: the CSR(W^T) view of the structure

    def scatter():
        return _ops.sparse_keras_dense_csr_mat_mul(grad, indptr, indices, values, shape_t)

    def gather():
        empty = tf.zeros([0], indptr.dtype)
        return _ops.sparse_keras_dense_csc_mat_mul(grad, t_indptr, t_indices, take(values, perm),
                                                   shape_t, empty, empty, tf.zeros([0], tf.int64))

    if t_indptr.shape.rank == 1 and t_indptr.shape[0] == 0:
        d_x = scatter()  # no cached transpose
    else:
        static_shape = tf.get_static_value(dense_shape)
        static_shape = (None, None) if static_shape is None else static_shape
        use_gather = _dx_by_gather(
            _static_or_tensor(grad.shape[0], lambda: tf.shape(grad, out_type=tf.int64)[0]),
            _static_or_tensor(indices.shape[0], lambda: tf.size(indices, out_type=tf.int64)),
            _static_or_tensor(static_shape[0], lambda: dense_shape[0]),
            _static_or_tensor(static_shape[1], lambda: dense_shape[1]))
        if use_gather is True:
            d_x = gather()
        elif use_gather is False:
            d_x = scatter()
        else:
            d_x = tf.cond(use_gather, gather, scatter)
    d_values = _ops.sparse_keras_csr_sddmm_t(indptr, indices, shape_t, grad, x)
    return [d_x, None, None, d_values, None, None, None, None]


def bcsc_expand(indptr, indices, block, dense_shape=None):
    """The CSC structure of a block-CSC W (see `dense_bcsc_matmul`), for its gradients.

    Returns (e_indptr, e_indices, positions, inverse): W's CSC arrays (column n = q * block + g
    holds group q's rows), `positions` (CSC entry -> block value: csc_values =
    take(values, positions)) and `inverse` (block value -> CSC entry). One pass of the
    BcscExpand op over nblocks * block entries (~1 ms at 4096 x 4096, 90%). `dense_shape`
    ([K, N]) lets it check the row ids; without it they are only checked to be >= 0."""
    indptr = tf.convert_to_tensor(indptr)
    indices = tf.convert_to_tensor(indices, dtype=indptr.dtype)
    if dense_shape is None:
        n_groups = tf.size(indptr, out_type=tf.int64) - 1
        big = tf.constant(2**31 - 1 if indptr.dtype == tf.int32 else 2**62, tf.int64)
        dense_shape = tf.stack([big, n_groups * block])
    return _ops.sparse_keras_bcsc_expand(indptr, indices, tf.cast(dense_shape, tf.int64),
                                         block=block)


@tf.RegisterGradient("SparseKeras>DenseBcscMatMul")
def _dense_bcsc_matmul_grad(op, grad):
    """Y = X @ W, W block-CSC: dX = dY @ W^T by the block scatter product (DenseBcscMatMulT),
    the block values' gradient by the block SDDMM (BcscSddmm): no expansion, no permutation."""
    x, indptr, indices, values, dense_shape = op.inputs
    block = op.get_attr("block")
    d_x = _ops.sparse_keras_dense_bcsc_mat_mul_t(grad, indptr, indices, values, dense_shape,
                                                 block=block)
    d_values = _ops.sparse_keras_bcsc_sddmm(indptr, indices, dense_shape, x, grad, block=block)
    return [d_x, None, None, d_values, None]


@tf.RegisterGradient("SparseKeras>DenseBcscMatMulT")
def _dense_bcsc_matmul_t_grad(op, grad):
    """out = dY @ W^T: d(dY) = grad @ W; the values' gradient = BcscSddmm(grad, dY)."""
    dy, indptr, indices, values, dense_shape = op.inputs
    block = op.get_attr("block")
    d_dy = _ops.sparse_keras_dense_bcsc_mat_mul(grad, indptr, indices, values, dense_shape,
                                                block=block)
    d_values = _ops.sparse_keras_bcsc_sddmm(indptr, indices, dense_shape, grad, dy, block=block)
    return [d_dy, None, None, d_values, None]


@tf.RegisterGradient("SparseKeras>BcscSddmm")
def _bcsc_sddmm_grad(op, grad):
    """out = block values of x^T dY: dx = dY @ S^T, d(dY) = x @ S (S: the pattern holding grad)."""
    indptr, indices, dense_shape, x, dy = op.inputs
    block = op.get_attr("block")
    d_x = _ops.sparse_keras_dense_bcsc_mat_mul_t(dy, indptr, indices, grad, dense_shape,
                                                 block=block)
    d_dy = _ops.sparse_keras_dense_bcsc_mat_mul(x, indptr, indices, grad, dense_shape, block=block)
    return [None, None, None, d_x, d_dy]


@tf.RegisterGradient("SparseKeras>DenseCsrMatMul")
def _dense_csr_matmul_grad(op, grad):
    """Y = X @ B, B (N x K) in CSR: dX = dY @ B^T (B^T in CSC form = B's CSR: the gather
    product); dB[n, k] = X[:, n] . dY[:, k] = SDDMM_T(CSR(B); X, dY)."""
    x, indptr, indices, values, dense_shape = op.inputs
    empty = tf.zeros([0], indptr.dtype)
    d_x = _ops.sparse_keras_dense_csc_mat_mul(grad, indptr, indices, values, _reverse(dense_shape),
                                              empty, empty, tf.zeros([0], tf.int64))
    d_values = _ops.sparse_keras_csr_sddmm_t(indptr, indices, dense_shape, x, grad)
    return [d_x, None, None, d_values, None]


@tf.RegisterGradient("SparseKeras>CsrSddmm")
def _csr_sddmm_grad(op, grad):
    """out[p] = u[i] . v[j]: du = S @ v, dv = S^T @ u with S the pattern holding grad."""
    indptr, indices, dense_shape, u, v = op.inputs
    d_u = _ops.sparse_keras_csr_mat_mul(indptr, indices, grad, dense_shape, v)
    t_indptr, t_indices, perm = transpose_structure(indptr, indices, dense_shape)
    d_v = _ops.sparse_keras_csr_mat_mul(t_indptr, t_indices, take(grad, perm),
                                        _reverse(dense_shape), u)
    return [None, None, None, d_u, d_v]


@tf.RegisterGradient("SparseKeras>CsrSddmmT")
def _csr_sddmm_t_grad(op, grad):
    """out[p] = ut[:, i] . vt[:, j]: dut = vt @ S^T, dvt = ut @ S (S: the pattern holding grad).

    S^T in CSC form is S's own CSR; S in CSC form is the CSR of S^T.
    """
    indptr, indices, dense_shape, ut, vt = op.inputs
    empty = tf.zeros([0], indptr.dtype)
    no_perm = tf.zeros([0], tf.int64)
    d_ut = _ops.sparse_keras_dense_csc_mat_mul(vt, indptr, indices, grad, _reverse(dense_shape),
                                               empty, empty, no_perm)
    t_indptr, t_indices, perm = transpose_structure(indptr, indices, dense_shape)
    d_vt = _ops.sparse_keras_dense_csc_mat_mul(ut, t_indptr, t_indices, take(grad, perm),
                                               dense_shape, empty, empty, no_perm)
    return [None, None, None, d_ut, d_vt]


@tf.RegisterGradient("SparseKeras>CsrCsrMatMul")
def _csr_csr_matmul_grad(op, grad):
    """Y = A @ W, both CSR: dA = (dY W^T) on A's pattern; dW = (A^T dY) on W's pattern, from A^T's
    CSR (structure transpose + gather of A's values). The index arrays and shapes get None."""
    a_ip, a_ix, a_v, a_shape, w_ip, w_ix, w_v, w_shape = op.inputs
    d_a = _ops.sparse_keras_csr_csr_mat_mul_grad_a(a_ip, a_ix, a_shape, w_ip, w_ix, w_v, w_shape,
                                                   grad)
    t_ip, t_ix, perm = transpose_structure(a_ip, a_ix, a_shape)
    d_w = _ops.sparse_keras_csr_csr_mat_mul_grad_w(t_ip, t_ix, take(a_v, perm), a_shape,
                                                   w_ip, w_ix, w_shape, grad)
    return [None, None, d_a, None, None, None, d_w, None]


@tf.RegisterGradient("SparseKeras>CsrMatMulVariable")
def _csr_matmul_variable_grad(op, grad):
    """Y = A @ B, B a resource variable (zero outside the pattern P when one is given: P only
    says which entries to read). dB = A^T dY as tf.IndexedSlices over the rows of B that A's
    columns touch, from A's nonzeros only (a compact CSR of A over its distinct columns,
    transposed, times dY); dA = SDDMM(A's pattern; dY, B), B read in place."""
    indptr, indices, values, dense_shape, handle, _, _ = op.inputs
    touched, local = tf.unique(indices, out_idx=indices.dtype)
    shape_c = tf.stack([dense_shape[0], tf.size(touched, out_type=tf.int64)])
    t_indptr, t_indices, perm = transpose_structure(indptr, local, shape_c)
    rows = _ops.sparse_keras_csr_mat_mul(t_indptr, t_indices, take(values, perm),
                                         _reverse(shape_c), grad)
    d_b = tf.IndexedSlices(rows, touched,
                           dense_shape=tf.raw_ops.VariableShape(input=handle,
                                                                out_type=indices.dtype))
    # Reads B in place and is stateless: pruned when nothing needs dA (a data input).
    d_values = _ops.sparse_keras_csr_sddmm_variable(indptr, indices, dense_shape, grad, handle)
    return [None, None, d_values, None, d_b, None, None]


tf.no_gradient("SparseKeras>CsrSddmmVariable")


tf.no_gradient("SparseKeras>CsrTransposeStructure")


def _conv_attrs(op):
    pad = op.get_attr("padding")
    return dict(kernel_size=op.get_attr("kernel_size"), strides=op.get_attr("strides"),
                dilations=op.get_attr("dilations"),
                padding=pad.decode() if isinstance(pad, bytes) else pad,
                kernel_shape=op.get_attr("kernel_shape"))


@tf.RegisterGradient("SparseKeras>CsrConv2D")
def _csr_conv2d_grad(op, grad):
    """y = conv2d(x, W): dx = the convolution of dy with the flipped W^T (one kernel, no
    im2col); dW on W's pattern = a blocked SDDMM of x's patches with dy. Second-order gradients
    are not defined (the backprop ops have none)."""
    x, indptr, indices, values = op.inputs
    attrs = _conv_attrs(op)
    d_x = _ops.sparse_keras_csr_conv2d_backprop_input(grad, indptr, indices, values,
                                                      tf.shape(x, out_type=tf.int32), **attrs)
    d_values = _ops.sparse_keras_csr_conv2d_backprop_values(x, grad, indptr, indices, **attrs)
    return [d_x, None, None, d_values]


tf.no_gradient("SparseKeras>CsrCsrMatMulGradA")
tf.no_gradient("SparseKeras>CsrCsrMatMulGradW")


class _LeadingInputs:
    """An op seen through its first n inputs (and its attrs): the fused *BiasAct ops reuse the
    gradient functions of their products on it."""

    def __init__(self, op, n):
        self.inputs = list(op.inputs)[:n]
        self.outputs = op.outputs
        self.get_attr = op.get_attr


def _bias_act_grad(op, grad, n_product_inputs, product_grad, linear):
    """Gradients of out = act(product + bias): g = grad masked where a ReLU output is not
    positive (TensorFlow's ReluGrad on the op's output; Relu6Grad likewise), or, for GELU,
    grad * GELU'(z) with the pre-activation z = product + bias recomputed by `linear(op)` (the
    same op with no activation: GELU is not invertible from its output); d_bias = sums of g
    over every axis but the last (None for an empty bias), then the product's own gradients
    of g."""
    act = op.get_attr("activation")
    act = act.decode() if isinstance(act, bytes) else act
    if act == "relu":
        grad = tf.raw_ops.ReluGrad(gradients=grad, features=op.outputs[0])
    elif act == "relu6":
        # Relu6Grad takes the op's input or its output: the same mask (0 < v < 6)
        grad = tf.raw_ops.Relu6Grad(gradients=grad, features=op.outputs[0])
    elif act == "gelu":
        z = linear(op)
        # d/dz [z Phi(z)] = Phi(z) + z phi(z), Phi(z) = (1 + erf(z / sqrt 2)) / 2
        phi = tf.exp(-0.5 * z * z) * tf.constant(0.3989422804014327, z.dtype)
        cdf = 0.5 * (1.0 + tf.math.erf(z * tf.constant(0.7071067811865476, z.dtype)))
        grad = grad * (cdf + z * phi)
    bias = op.inputs[n_product_inputs]
    d_bias = None
    if not (bias.shape.rank == 1 and bias.shape[0] == 0):
        # over every axis but the channels (a Dense's batch rows, a convolution's N, H, W)
        d_bias = tf.reduce_sum(grad, axis=tf.range(tf.rank(grad) - 1))
    return product_grad(_LeadingInputs(op, n_product_inputs), grad) + [d_bias]


@tf.RegisterGradient("SparseKeras>CsrConv2DBiasAct")
def _csr_conv2d_bias_act_grad(op, grad):
    """y = act(conv2d(x, W) + bias): see `_bias_act_grad` and `_csr_conv2d_grad`."""
    return _bias_act_grad(op, grad, 4, _csr_conv2d_grad, lambda op: (
        _ops.sparse_keras_csr_conv2d_bias_act(*op.inputs, activation="linear",
                                              **_conv_attrs(op))))


@tf.RegisterGradient("SparseKeras>DenseCscMatMulBiasAct")
def _dense_csc_matmul_bias_act_grad(op, grad):
    """out = act(x @ W + bias), W in CSC: see `_bias_act_grad` and `_dense_csc_matmul_grad`."""
    return _bias_act_grad(op, grad, 8, _dense_csc_matmul_grad, lambda op: (
        _ops.sparse_keras_dense_csc_mat_mul_bias_act(*op.inputs, activation="linear")))


@tf.RegisterGradient("SparseKeras>DenseBcscMatMulBiasAct")
def _dense_bcsc_matmul_bias_act_grad(op, grad):
    """out = act(x @ W + bias), W block-CSC: see `_bias_act_grad` and `_dense_bcsc_matmul_grad`."""
    return _bias_act_grad(op, grad, 5, _dense_bcsc_matmul_grad, lambda op: (
        _ops.sparse_keras_dense_bcsc_mat_mul_bias_act(*op.inputs, activation="linear",
                                                      block=op.get_attr("block"))))


@tf.RegisterGradient("SparseKeras>LayerNorm")
def _layer_norm_grad(op, grad):
    """y = xhat * gamma + beta, xhat = (x - mean) * rstd over the last axis (H values):
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad * gamma; d_gamma and d_beta
    sum over every other axis (None for an empty gamma / beta). Recomputes mean and rstd."""
    x, gamma, beta = op.inputs
    eps = op.get_attr("epsilon")
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    rstd = tf.math.rsqrt(var + tf.cast(eps, x.dtype))
    xhat = (x - mean) * rstd
    has_gamma = not (gamma.shape.rank == 1 and gamma.shape[0] == 0)
    has_beta = not (beta.shape.rank == 1 and beta.shape[0] == 0)
    g = grad * gamma if has_gamma else grad
    dx = rstd * (g - tf.reduce_mean(g, axis=-1, keepdims=True)
                 - xhat * tf.reduce_mean(g * xhat, axis=-1, keepdims=True))
    lead = tf.range(tf.rank(x) - 1)
    d_gamma = tf.reduce_sum(grad * xhat, axis=lead) if has_gamma else None
    d_beta = tf.reduce_sum(grad, axis=lead) if has_beta else None
    return [dx, d_gamma, d_beta]
