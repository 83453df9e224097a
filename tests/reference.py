"""Plain NumPy float64 references for the compiled kernels, tolerances and shared test shapes.

Every reference works entry by entry over the *stored* entries (no dense intermediate for
the products), so an explicit zero times inf gives NaN exactly as IEEE arithmetic in the
kernels does, and unstored entries never touch the output.
"""
import dataclasses

import numpy as np

# Relative tolerance per compute dtype, scaled by sqrt(K) (the accumulation length) and by the
# magnitude of the terms (the same product computed on absolute values).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

VALUE_DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
# Dense widths (output columns / batch rows) that are not multiples of any vector width.
WIDTHS = [1, 2, 7, 17, 64, 100, 129, 300]


@dataclasses.dataclass(frozen=True)
class Case:
    """A sparse test matrix: shape (m, k), how to fill it, and the dense width to pair it with."""
    name: str
    m: int
    k: int
    nnz: int = 0
    kind: str = "random"  # random | empty_rows | dense | dups | skewed


SHAPES = [
    Case("sputnik_7x96_333", 7, 96, 333),
    Case("1x1", 1, 1, 1),
    Case("3x5", 3, 5, 6),
    Case("64x64", 64, 64, 410),
    Case("129x257", 129, 257, 1650),
    Case("empty_rows_20x30", 20, 30, 60, "empty_rows"),
    Case("nnz0_6x9", 6, 9, 0),
    Case("density1_5x7", 5, 7, 35, "dense"),
    Case("dups_unsorted_8x10", 8, 10, 40, "dups"),
    Case("skewed_50x300", 50, 300, 0, "skewed"),
    Case("no_rows_0x5", 0, 5, 0),
]
SHAPE_IDS = [c.name for c in SHAPES]


def _rows_from_counts(counts):
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr


def make_csr(case, index_dtype=np.int64, value_dtype=np.float64, seed=0):
    """(indptr, indices, data, shape) of a CSR matrix built for `case`."""
    rng = np.random.default_rng(seed)
    m, k = case.m, case.k
    if case.kind == "dense":
        indptr = _rows_from_counts(np.full(m, k))
        indices = np.tile(np.arange(k), m)
    elif case.kind == "dups":
        # Unsorted indices with duplicates inside rows (and one empty row).
        counts = rng.multinomial(case.nnz, np.ones(m) / m)
        counts[2] += counts[1]
        counts[1] = 0
        indptr = _rows_from_counts(counts)
        indices = rng.integers(0, k, size=case.nnz)
        assert len(np.unique(indices)) < len(indices)
    elif case.kind == "skewed":
        counts = rng.integers(0, 3, size=m)
        counts[3] = k  # one full row
        indptr = _rows_from_counts(counts)
        indices = np.concatenate([np.sort(rng.choice(k, size=c, replace=False)) for c in counts])
    else:
        weights = np.ones(m)
        if case.kind == "empty_rows":
            weights[[0, 5, 6, 7, 8, 9, m - 1]] = 0
        if m == 0:
            counts = np.zeros(0, dtype=np.int64)
        else:
            counts = np.minimum(rng.multinomial(case.nnz, weights / weights.sum()), k)
        indptr = _rows_from_counts(counts)
        indices = (np.concatenate([np.sort(rng.choice(k, size=c, replace=False)) for c in counts])
                   if m else np.zeros(0, dtype=np.int64))
    nnz = int(indptr[-1])
    data = rng.standard_normal(nnz).astype(value_dtype)
    return (indptr.astype(index_dtype), np.asarray(indices, dtype=index_dtype), data, (m, k))


def row_ids(indptr):
    """Row of every stored entry."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(np.asarray(indptr, dtype=np.int64)))


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ---- references ---------------------------------------------------------------------------

def ref_csr_matmul(indptr, indices, data, shape, b):
    """A @ B, A (m, k) CSR, B (k, n) or (k,)."""
    b = _f64(b)
    vec = b.ndim == 1
    b2 = b.reshape(shape[1], -1)
    out = np.zeros((shape[0], b2.shape[1]))
    idx = np.asarray(indices, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        np.add.at(out, row_ids(indptr), _f64(data)[:, None] * b2[idx])
    return out.reshape(shape[0]) if vec else out


def ref_dense_csc_matmul(x, indptr, indices, data, shape):
    """X @ W, X (m, k) or (k,), W (k, n) given by its CSC arrays."""
    x = _f64(x)
    vec = x.ndim == 1
    x2 = x.reshape(-1, shape[0])
    out_t = np.zeros((shape[1], x2.shape[0]))
    idx = np.asarray(indices, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        np.add.at(out_t, row_ids(indptr), _f64(data)[:, None] * x2.T[idx])
    return out_t.T.reshape(shape[1]) if vec else out_t.T


def ref_dense_csr_matmul(x, indptr, indices, data, shape):
    """x @ B with B (N x K) in CSR, in float64 (stored entries only)."""
    return np.asarray(x, np.float64) @ ref_csr_to_dense(indptr, indices, data, shape)


def ref_csr_sddmm(indptr, indices, shape, u, v):
    idx = np.asarray(indices, dtype=np.int64)
    return np.einsum("pd,pd->p", _f64(u)[row_ids(indptr)], _f64(v)[idx])


def ref_csr_transpose(indptr, indices, data, shape):
    """(t_indptr, t_indices, t_data, perm): rows of A^T list source rows in increasing order,
    entries of one source row in storage order."""
    idx = np.asarray(indices, dtype=np.int64)
    perm = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=shape[1])
    t_indptr = _rows_from_counts(counts)
    return t_indptr, row_ids(indptr)[perm], np.asarray(data)[perm], perm


def ref_csr_to_dense(indptr, indices, data, shape):
    out = np.zeros(shape)
    np.add.at(out, (row_ids(indptr), np.asarray(indices, dtype=np.int64)), _f64(data))
    return out


def ref_csr_canonicalize(indptr, indices, data, shape):
    """Sorted indices, duplicates summed left to right in storage order, explicit zeros kept."""
    o_ip, o_ix, o_d = [0], [], []
    data = _f64(data)
    for i in range(shape[0]):
        lo, hi = int(indptr[i]), int(indptr[i + 1])
        order = np.argsort(np.asarray(indices[lo:hi]), kind="stable")
        for p in order:
            j, val = int(indices[lo + p]), data[lo + p]
            if len(o_ix) > o_ip[-1] and o_ix[-1] == j:
                o_d[-1] += val
            else:
                o_ix.append(j)
                o_d.append(val)
        o_ip.append(len(o_ix))
    return np.array(o_ip, np.int64), np.array(o_ix, np.int64), np.array(o_d, np.float64)


def ref_dense_to_csr(x, threshold=None, mask=None):
    x = np.asarray(x)
    keep = np.ones(x.shape, dtype=bool)
    if mask is not None:
        keep &= np.asarray(mask) != 0
    if threshold is None and mask is None:
        threshold = 0.0
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            keep &= ~(np.abs(x) <= threshold)
    rows, cols = np.nonzero(keep)
    indptr = _rows_from_counts(keep.sum(axis=1))
    return indptr, cols, x[rows, cols]


def is_valid_csr(indptr, indices, data, shape):
    """Pure-Python structural check, independent of the kernels."""
    try:
        m, k = (int(s) for s in shape)
    except (TypeError, ValueError):
        return False
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if m < 0 or k < 0 or indptr.ndim != 1 or indices.ndim != 1:
        return False
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        return False
    if data is not None and np.shape(data) != indices.shape:
        return False
    if len(indptr) != m + 1 or int(indptr[0]) != 0 or int(indptr[-1]) != len(indices):
        return False
    if np.any(np.diff(indptr.astype(np.int64)) < 0):
        return False
    return bool(np.all((indices >= 0) & (indices < k)))


# ---- comparison ---------------------------------------------------------------------------

def compute_dtype(*dtypes):
    res = np.result_type(*dtypes)
    if res.kind == "f" and res.itemsize < 8:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def assert_close(actual, expected, magnitude, dtype, k):
    """|actual - expected| <= rtol[dtype] * sqrt(k) * magnitude (+ a denormal floor), elementwise.

    magnitude: the same computation on absolute values (bounds every partial sum).
    NaN/inf must match exactly in position (and sign for inf).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    a = actual.astype(np.float64)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(expected), err_msg="NaN positions differ")
    np.testing.assert_array_equal(a[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])
    tol = RTOL[np.dtype(dtype)] * np.sqrt(max(k, 1)) * np.asarray(magnitude, np.float64) + 1e-30
    tol = np.broadcast_to(tol, expected.shape)
    err = np.abs(a[finite] - expected[finite])
    bad = err > tol[finite]
    assert not bad.any(), (f"{bad.sum()} of {bad.size} entries off; max err {err.max()} "
                           f"tol {tol[finite][bad].min()}")


# ---- 2-D convolution (NHWC, TensorFlow's SAME/VALID rules) ---------------------------------

def conv_out_and_pad(size, k, stride, dil, padding):
    """(out, pad_before) of one spatial dimension, written independently of the kernels."""
    ek = (k - 1) * dil + 1
    if padding.upper() == "SAME":
        out = -(-size // stride)
        return out, max((out - 1) * stride + ek - size, 0) // 2
    return (size - ek) // stride + 1, 0


def _conv_setup(x_shape, kshape, strides, padding, dilations):
    (kh, kw, _, _), (sh, sw), (dh, dw) = kshape, strides, dilations
    oh, pt = conv_out_and_pad(x_shape[1], kh, sh, dh, padding)
    ow, pl = conv_out_and_pad(x_shape[2], kw, sw, dw, padding)
    hp = max((oh - 1) * sh + (kh - 1) * dh + 1, x_shape[1] + pt)
    wp = max((ow - 1) * sw + (kw - 1) * dw + 1, x_shape[2] + pl)
    return oh, ow, pt, pl, hp, wp


def ref_conv2d(x, kernel, strides=(1, 1), padding="VALID", dilations=(1, 1)):
    """float64 reference of tf.nn.conv2d(x, kernel) for NHWC x and HWIO kernel."""
    x, kernel = _f64(x), _f64(kernel)
    (kh, kw, _, cout), (sh, sw), (dh, dw) = kernel.shape, strides, dilations
    oh, ow, pt, pl, hp, wp = _conv_setup(x.shape, kernel.shape, strides, padding, dilations)
    xp = np.zeros((x.shape[0], hp, wp, x.shape[3]))
    xp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]] = x
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            out += patch @ kernel[i, j]
    return out


def ref_conv2d_grads(x, kernel, dy, strides=(1, 1), padding="VALID", dilations=(1, 1)):
    """float64 (dx, dkernel) of sum(conv2d(x, kernel) * dy)."""
    x, kernel, dy = _f64(x), _f64(kernel), _f64(dy)
    (kh, kw, _, _), (sh, sw), (dh, dw) = kernel.shape, strides, dilations
    oh, ow, pt, pl, hp, wp = _conv_setup(x.shape, kernel.shape, strides, padding, dilations)
    xp = np.zeros((x.shape[0], hp, wp, x.shape[3]))
    xp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]] = x
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(i * dh, i * dh + (oh - 1) * sh + 1, sh),
                  slice(j * dw, j * dw + (ow - 1) * sw + 1, sw))
            dxp[sl] += dy @ kernel[i, j].T
            dk[i, j] = np.einsum("bhwc,bhwo->co", xp[sl], dy)
    return dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]], dk


def conv_kernel_csc(kernel, mask=None, index_dtype=np.int64):
    """CSC arrays (indptr, indices, data) of kernel (kh, kw, cin, cout) reshaped to
    (kh * kw * cin, cout), keeping the entries where mask (default: kernel != 0) is set."""
    kernel = np.asarray(kernel)
    m2 = kernel.reshape(-1, kernel.shape[3])
    keep = (m2 != 0) if mask is None else np.asarray(mask).reshape(m2.shape).astype(bool)
    cols, rows = np.nonzero(keep.T)            # column-major order: by output channel
    indptr = np.zeros(m2.shape[1] + 1, np.int64)
    np.add.at(indptr, cols + 1, 1)
    return (np.cumsum(indptr).astype(index_dtype), rows.astype(index_dtype), m2[rows, cols])
