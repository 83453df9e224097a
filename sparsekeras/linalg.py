"""NumPy-level sparse linear algebra over the compiled kernels.

One operand is a `scipy.sparse` matrix or array (CSR, CSC, COO, or any format scipy can turn
into CSR), the other a dense ndarray. Results are dense ndarrays (products) or scipy sparse
arrays with the input's structure (`sddmm`).

Values compute in float32 when both operands are float32 (or float16), otherwise in float64.
Entries that are not stored are not multiplied: a NaN or inf in a dense row that the sparse
operand never references does not reach the output (as in scipy); stored entries follow IEEE
arithmetic.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> from sparsekeras import linalg
    >>> w = sp.random_array((512, 256), density=0.1, format="csr", dtype=np.float32)
    >>> x = np.ones((32, 512), np.float32)
    >>> linalg.matmul(x, w).shape
    (32, 256)
"""
import numpy as np
import scipy.sparse as sp

from sparsekeras import _kernels

__all__ = ["matmul", "sddmm", "to_csr", "to_dense", "canonicalize", "transpose", "validate",
           "bcsc_from_dense", "bcsc_to_dense", "block_fill"]


def _kind(x):
    return "sparse array" if isinstance(x, sp.sparray) else "sparse matrix"


def _coords(a):
    """(row, col) of a COO operand as int64 arrays (scipy >= 1.13 keeps them in .coords)."""
    coords = getattr(a, "coords", None)
    if coords is None:
        coords = (a.row, a.col)
    return coords


def _checked_coo(a, name):
    """(row, col, data) of a COO operand, range-checked in int64 against its shape.

    scipy's tocsr() does not bounds-check the coordinates: a row beyond the shape writes outside
    the arrays it allocates (a segfault), a row of -1 is dropped silently.
    """
    coords = _coords(a)
    if len(coords) != 2:
        raise ValueError(f"{name} must be 2-D; received {len(coords)} coordinate arrays")
    out = []
    for axis, (c, what) in enumerate(zip(coords, ("row", "col"))):
        c = np.asarray(c)
        if c.dtype.kind not in "iu":
            raise ValueError(f"{name}.{what} (COO coordinates) must have an integer dtype; "
                             f"received dtype {c.dtype}")
        if c.ndim != 1:
            raise ValueError(f"{name}.{what} (COO coordinates) must be 1-D; received shape {c.shape}")
        size = a.shape[axis]
        bad = np.flatnonzero((c < 0) | (c >= size)) if c.size else ()
        if len(bad):
            p = int(bad[0])
            raise ValueError(f"{name}: COO coordinate {what}[{p}]={int(c[p])} lies outside "
                             f"[0, {size}) for shape {tuple(a.shape)}")
        out.append(c.astype(np.int64, copy=False))
    row, col = out
    if row.shape != col.shape:
        raise ValueError(f"{name}: COO row and col must have the same length; received "
                         f"{row.shape[0]} and {col.shape[0]}")
    data = np.asarray(a.data)
    if data.shape != row.shape:
        raise ValueError(f"{name}.data must have one entry per coordinate ({row.shape[0]}); "
                         f"received shape {data.shape}")
    return row, col, data


def _csr_arrays(a, name, structure_only=False):
    """(indptr, indices, data, shape) of the CSR form of a scipy sparse operand.

    The structure is validated (ValueError naming `name` and the value) before anything reads
    it. structure_only: the values are not used (SDDMM's pattern), so they are not checked and
    the returned data are zeros.
    """
    fmt = a.format
    if fmt == "csr":
        data = None if structure_only else a.data
        _kernels.check_csr(a.indptr, a.indices, data, a.shape, name)
        if structure_only:
            return a.indptr, a.indices, np.zeros(len(a.indices), np.float32), a.shape
        return a.indptr, a.indices, a.data, a.shape
    if fmt == "csc":
        # CSC arrays of a are the CSR arrays of a^T: transpose them back in the kernel.
        t_shape = (a.shape[1], a.shape[0])
        data = np.zeros(len(a.indices), np.float32) if structure_only else a.data
        _kernels.check_csr(a.indptr, a.indices, data, t_shape, name)
        ip, ix, d = _kernels.csr_transpose(a.indptr, a.indices, data, t_shape)
        return ip, ix, d, a.shape
    if fmt == "coo":
        row, col, data = _checked_coo(a, name)
        if structure_only:
            data = np.zeros(row.shape[0], np.float32)
        # CSR by a stable sort on (row, col), not scipy's tocsr: every stored entry is kept
        # (duplicates too, as a CSR operand keeps them), and float16 data need no conversion.
        order = np.lexsort((col, row))
        indptr = np.zeros(a.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=a.shape[0]), out=indptr[1:])
        return indptr, col[order], np.asarray(data)[order], a.shape
    if fmt == "bsr":
        r, c = a.blocksize
        _kernels.check_csr(a.indptr, a.indices, None, (a.shape[0] // r, a.shape[1] // c),
                           f"{name} (BSR block structure)")
        if not structure_only and np.shape(a.data) != (len(a.indices), r, c):
            raise ValueError(f"{name}.data must have one ({r}, {c}) block per index "
                             f"({len(a.indices)}); received shape {np.shape(a.data)}")
    try:
        if structure_only:
            a = a.copy()
            a.data = np.zeros(np.shape(a.data), np.float32)
        elif getattr(a, "dtype", None) == np.float16:
            a = a.astype(np.float32)
        c = a.tocsr()
    except Exception as e:  # scipy raises assorted errors for malformed DOK/LIL/DIA input
        raise ValueError(f"{name} could not be converted to CSR: {e}") from e
    return c.indptr, c.indices, c.data, c.shape


def _csc_arrays(a, name):
    """(indptr, indices, data, shape) of the CSC form of a scipy sparse operand."""
    if a.format == "csc":
        _kernels.check_csr(a.indptr, a.indices, a.data, (a.shape[1], a.shape[0]), name)
        return a.indptr, a.indices, a.data, a.shape
    ip, ix, d, shape = _csr_arrays(a, name)
    t_ip, t_ix, t_d = _kernels.csr_transpose(ip, ix, d, shape)
    return t_ip, t_ix, t_d, shape


def _check_sparse(a, name):
    if not sp.issparse(a):
        raise TypeError(f"{name} must be a scipy.sparse matrix or array; received {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D; received shape {a.shape}")


def matmul(a, b, *, n_threads=None):
    """Product of a sparse and a dense operand, in either order.

    Args:
        a: left operand, (M, K). Sparse (scipy) or dense (ndarray, 1-D or 2-D).
        b: right operand, (K, N). Dense if `a` is sparse, sparse if `a` is dense.
        n_threads: threads for this call; None uses `sparsekeras.get_num_threads()` (one
            thread for small problems).

    Returns:
        ndarray of shape (M, N) (1-D if the dense operand was 1-D), float32 or float64.

    Raises:
        TypeError: both or neither operand sparse; non-real dtypes.
        ValueError: shape mismatch, malformed sparse structure (names the argument and value).

    `X @ W` with W sparse (the Dense-layer orientation) is fastest with W in CSC form; a CSR W
    is transposed first (O(nnz)).
    """
    a_sp, b_sp = sp.issparse(a), sp.issparse(b)
    if a_sp and b_sp:
        raise TypeError("matmul needs one sparse and one dense operand; both a and b are sparse "
                        "(use scipy's a @ b for sparse x sparse)")
    if not a_sp and not b_sp:
        raise TypeError("matmul needs one sparse (scipy.sparse) operand; received "
                        f"a: {type(a).__name__}, b: {type(b).__name__}")
    if a_sp:
        _check_sparse(a, "a")
        ip, ix, d, shape = _csr_arrays(a, "a")
        return _kernels.csr_matmul(ip, ix, d, shape, b, n_threads=n_threads)
    _check_sparse(b, "b")
    ip, ix, d, shape = _csc_arrays(b, "b")
    return _kernels.dense_csc_matmul(a, ip, ix, d, shape, n_threads=n_threads, names=("a", "b"))


def sddmm(pattern, u, v, *, n_threads=None):
    """Sampled dense-dense product: `(u @ v.T)` evaluated only at `pattern`'s stored entries.

    Args:
        pattern: scipy sparse (M, N); only its structure is used.
        u: dense (M, D). v: dense (N, D).

    Returns:
        A CSR sparse array (or matrix, following `pattern`) with pattern's structure in CSR form
        and values out[i, j] = dot(u[i], v[j]).
    """
    _check_sparse(pattern, "pattern")
    ip, ix, _, shape = _csr_arrays(pattern, "pattern", structure_only=True)
    values = _kernels.csr_sddmm(ip, ix, shape, u, v, n_threads=n_threads)
    cls = sp.csr_array if isinstance(pattern, sp.sparray) else sp.csr_matrix
    return cls((values, np.array(ix, copy=True), np.array(ip, copy=True)), shape=shape)


def to_csr(x, *, threshold=None, mask=None, index_dtype=None, n_threads=None):
    """CSR sparse array of a dense 2-D array.

    Args:
        x: dense (M, N).
        threshold: keep entries with not |x| <= threshold (NaN kept). Default: nonzeros.
        mask: same shape as x; keep entries where it is truthy (explicit zeros included).
        index_dtype: int32 or int64 (default: int32 when it fits).
    """
    ip, ix, d = _kernels.dense_to_csr(x, threshold=threshold, mask=mask, index_dtype=index_dtype,
                                      n_threads=n_threads)
    x_shape = np.shape(x)
    return sp.csr_array((d, ix, ip), shape=x_shape)


def to_dense(a, *, n_threads=None):
    """Dense ndarray of a scipy sparse operand (duplicates add up)."""
    _check_sparse(a, "a")
    ip, ix, d, shape = _csr_arrays(a, "a")
    return _kernels.csr_to_dense(ip, ix, d, shape, n_threads=n_threads)


def canonicalize(a, *, n_threads=None):
    """CSR sparse array of `a` with sorted indices and duplicates summed (zeros kept)."""
    _check_sparse(a, "a")
    ip, ix, d, shape = _csr_arrays(a, "a")
    o_ip, o_ix, o_d = _kernels.csr_canonicalize(ip, ix, d, shape, n_threads=n_threads)
    return sp.csr_array((o_d, o_ix, o_ip), shape=shape)


def transpose(a, *, n_threads=None):
    """CSR sparse array of a.T, computed by a parallel counting sort (no dense intermediate)."""
    _check_sparse(a, "a")
    ip, ix, d, shape = _csr_arrays(a, "a")
    t_ip, t_ix, t_d = _kernels.csr_transpose(ip, ix, d, shape, n_threads=n_threads)
    return sp.csr_array((t_d, t_ix, t_ip), shape=(shape[1], shape[0]))


def validate(a):
    """Check a scipy sparse operand's structure; raise ValueError naming what is wrong."""
    _check_sparse(a, "a")
    if a.format == "csr":
        _kernels.check_csr(a.indptr, a.indices, a.data, a.shape, "a")
    elif a.format == "csc":
        _kernels.check_csr(a.indptr, a.indices, a.data, (a.shape[1], a.shape[0]), "a")
    else:
        _csr_arrays(a, "a")


def bcsc_from_dense(w, block, *, index_dtype=np.int32):
    """Block-CSC arrays of a dense `(K, N)` kernel cut into groups of `block` consecutive
    columns: a block (one input row of one group) is stored when any of its `block` weights is
    nonzero (zeros inside a stored block are kept).

    Returns:
        (indptr, indices, values): indptr `(N / block + 1,)` over groups, indices `(nblocks,)`
        input rows in increasing order per group, values `(nblocks * block,)` block-major. The
        product is `sparsekeras.ops.dense_bcsc_matmul` (TensorFlow) or
        `_kernels.dense_bcsc_matmul` (NumPy).
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (input, output); received shape {w.shape}")
    block = _kernels.check_block(block)
    k, n = w.shape
    if n % block:
        raise ValueError(f"w.shape[1] must be a multiple of block={block}; received shape {w.shape}")
    wt = w.T.reshape(n // block, block, k)              # (group, g, input)
    stored = (wt != 0).any(axis=1)                      # (group, input)
    group, rows = np.nonzero(stored)                    # group-major, rows increasing
    indptr = np.zeros(n // block + 1, dtype=index_dtype)
    np.cumsum(stored.sum(axis=1), out=indptr[1:])
    values = np.ascontiguousarray(wt[group, :, rows]).reshape(-1)
    return indptr, rows.astype(index_dtype), values


def bcsc_to_dense(indptr, indices, values, shape, block):
    """The dense `(K, N)` kernel of block-CSC arrays (inverse of `bcsc_from_dense`)."""
    k, n = (int(s) for s in shape)
    block = _kernels.check_block(block)
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    _kernels.check_csr(indptr, indices, None, (n // block if n % block == 0 else -1, k), "w")
    values = np.asarray(values).reshape(len(indices), block)
    group = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    out = np.zeros((k, n), dtype=values.dtype)
    cols = group[:, None] * block + np.arange(block)[None, :]
    out[np.asarray(indices)[:, None], cols] = values
    return out


def block_fill(w, block):
    """Stored entries of `bcsc_from_dense(w, block)` per nonzero of w (1.0: the nonzeros come
    in whole (1, block) blocks; an unstructured 90%-sparse kernel gives ~4 at block=8)."""
    w = np.asarray(w)
    block = _kernels.check_block(block)
    nnz = int(np.count_nonzero(w))
    if w.shape[1] % block:
        return float("inf")
    stored = (w.T.reshape(w.shape[1] // block, block, w.shape[0]) != 0).any(axis=1).sum()
    return float(stored * block) / max(nnz, 1)
