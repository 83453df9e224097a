# The numpy-level def layer: argument checking and dispatch to the typed kernels.

_ISA_NAMES = {0: "generic", 1: "avx2", 2: "avx512"}
_ISA_LEVELS = {v: k for k, v in _ISA_NAMES.items()}


def isa():
    """Name of the instruction set the kernels use: 'avx512', 'avx2' or 'generic'."""
    return _ISA_NAMES[sk_isa()]


def _force_isa(name):
    """Force an instruction set (tests); None restores detection. Raises if the CPU lacks it."""
    if name is None:
        sk_isa_force(-1)
        return
    if name not in _ISA_LEVELS:
        raise ValueError(f"isa must be one of {sorted(_ISA_LEVELS)}; received: {name!r}")
    if sk_isa_force(_ISA_LEVELS[name]) != 0:
        raise ValueError(f"this CPU does not support isa={name!r}")


def available_isas():
    """Instruction sets this CPU can run, lowest first."""
    return [_ISA_NAMES[i] for i in range(sk_isa_detect() + 1)]


def release_scratch():
    """Free the large scratch buffers (packed panels, accumulators) that the kernels keep
    between calls on the calling thread (see sk_scratch.h); they are freed anyway when the
    thread exits. The next call allocates them again."""
    sk_scratch_release()


def _set_num_threads(int n, bint explicit=True):
    global _sk_num_threads, _sk_num_threads_set
    if n < 1:
        raise ValueError(f"n_threads must be >= 1; received: {n}")
    _sk_num_threads = n
    _sk_num_threads_set = explicit


def _get_num_threads():
    return _sk_num_threads


def _num_threads_is_set():
    return bool(_sk_num_threads_set)


def threads_for_work(work):
    """Threads a kernel doing `work` multiply-adds uses: 1 for small problems."""
    return sk_threads_for_work(<int64_t>min(work, 2**62))


# ---- argument checking -------------------------------------------------------------------

cdef inline void *_ptr(cnp.ndarray a) noexcept nogil:
    return cnp.PyArray_DATA(a)


def _shape2(shape, name="shape"):
    try:
        n_rows, n_cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of non-negative integers; received: {shape!r}") from None
    if n_rows < 0 or n_cols < 0:
        raise ValueError(f"{name} must be a pair of non-negative integers; received: {shape!r}")
    # Sizes travel as int64 and indptr has n_rows + 1 entries: both must fit.
    if n_rows >= 2**63 - 1 or n_cols >= 2**63 - 1:
        raise ValueError(f"{name} must be a pair of sizes below 2**63 - 1; received: {shape!r}")
    return n_rows, n_cols


def _index_arrays(indptr, indices, name):
    """indptr and indices as C-contiguous int32 or int64 arrays of one common dtype."""
    out = []
    for arr, what in ((indptr, "indptr"), (indices, "indices")):
        a = np.asarray(arr)
        if a.ndim != 1:
            raise ValueError(f"{name}.{what} must be 1-D; received shape {a.shape}")
        if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
            raise TypeError(f"{name}.{what} must have an integer dtype; received dtype {a.dtype}")
        if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name}.{what} has values beyond int64; received max {a.max()}")
        out.append(a)
    ip, ix = out
    if ip.dtype == np.int32 and ix.dtype == np.int32:
        dt = np.int32
    else:
        dt = np.int64
    return np.ascontiguousarray(ip, dtype=dt), np.ascontiguousarray(ix, dtype=dt)


def result_dtype(*dtypes, name="values"):
    """Compute dtype for values of these dtypes: float32 or float64.

    float16/bfloat16-like and float32 inputs compute in float32; float64, integers and booleans
    in float64. Complex and non-numeric dtypes raise TypeError.
    """
    res = np.result_type(*dtypes)
    if res.kind == "f":
        return np.dtype(np.float64) if res.itemsize >= 8 else np.dtype(np.float32)
    if res.kind in "iub":
        return np.dtype(np.float64)
    raise TypeError(f"{name} must be real numbers; received dtype {res}")


def _values(arr, dtype, name, ndim=None):
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers; received dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; received shape {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


_CHECK_MESSAGES = {
    1: "indptr[0] must be 0; received indptr[0]={v}",
    2: "indptr[-1] must equal the number of stored entries ({nnz}); received indptr[-1]={v}",
    3: "indptr must be non-decreasing; received indptr[{w}]={v} < indptr[{wm}]={vm}",
    4: "indices must lie in [0, {n_cols}); received indices[{w}]={v}",
}


def check_csr(indptr, indices, data, shape, name="a"):
    """Validate a CSR structure; return (indptr, indices, n_rows, n_cols) normalised.

    Raises ValueError naming the argument and the offending value: wrong lengths, indptr not
    starting at 0, not non-decreasing or not ending at nnz, column indices out of range.
    """
    n_rows, n_cols = _shape2(shape, f"{name}.shape")
    indptr, indices = _index_arrays(indptr, indices, name)
    if indptr.shape[0] != n_rows + 1:
        raise ValueError(f"{name}.indptr must have n_rows + 1 = {n_rows + 1} entries for shape "
                         f"{(n_rows, n_cols)}; received {indptr.shape[0]}")
    nnz = indices.shape[0]
    if data is not None and np.shape(data) != (nnz,):
        raise ValueError(f"{name}.data must have one entry per index ({nnz}); "
                         f"received shape {np.shape(data)}")
    cdef int64_t where = 0
    cdef int rc
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int64_t c_rows = n_rows, c_cols = n_cols, c_nnz = nnz
    cdef int nt = sk_threads_for_work(c_nnz // 8)
    cdef bint i32 = indptr.dtype == np.int32
    with nogil:
        if i32:
            rc = sk_csr_check_i32(c_rows, c_cols, c_nnz, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                  &where, nt)
        else:
            rc = sk_csr_check_i64(c_rows, c_cols, c_nnz, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                  &where, nt)
    if rc:
        w = int(where)
        msg = _CHECK_MESSAGES[rc].format(
            w=w, wm=w - 1, nnz=nnz, n_cols=n_cols,
            v=(indices[w] if rc == 4 else indptr[w]), vm=(indptr[w - 1] if rc == 3 else None))
        raise ValueError(f"{name}: malformed CSR: {msg}")
    return indptr, indices, n_rows, n_cols


def _threads(n_threads, work):
    if n_threads is None:
        return sk_threads_for_work(<int64_t>min(work, 2**62))
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise ValueError(f"n_threads must be a positive integer or None; received: {n_threads!r}")
    n = int(n_threads)
    if n < 1:
        raise ValueError(f"n_threads must be >= 1 or None; received: {n_threads!r}")
    return n


# ---- kernels -----------------------------------------------------------------------------

def csr_matmul(indptr, indices, data, shape, b, *, n_threads=None):
    """Y = A @ B with A sparse (CSR, M x K) and B dense (K x N, or K for a vector).

    Returns a C-contiguous (M, N) array (or (M,) for a vector B) of the compute dtype
    (see `result_dtype`). Complexity O(nnz(A) * N).
    """
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, data, shape, "a")
    b_arr = np.asarray(b)
    if b_arr.ndim not in (1, 2):
        raise ValueError(f"b must be 1-D or 2-D; received shape {b_arr.shape}")
    if b_arr.shape[0] != n_cols:
        raise ValueError(f"b must have {n_cols} rows to match a.shape={(n_rows, n_cols)}; "
                         f"received b.shape={b_arr.shape}")
    dt = result_dtype(np.asarray(data).dtype, b_arr.dtype, name="a.data and b")
    cdef cnp.ndarray d = _values(data, dt, "a.data")
    cdef cnp.ndarray bb = _values(b_arr.reshape(n_cols, b_arr.shape[1] if b_arr.ndim == 2 else 1), dt, "b")
    cdef int64_t m = n_rows, k = n_cols, n = bb.shape[1]
    cdef cnp.ndarray out = np.empty((n_rows, n), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, indices.shape[0] * n + k * n)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_matmul_f32_i32(m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                       <float *>_ptr(d), <float *>_ptr(bb), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_matmul_f32_i64(m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                       <float *>_ptr(d), <float *>_ptr(bb), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_matmul_f64_i32(m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                       <double *>_ptr(d), <double *>_ptr(bb), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_matmul_f64_i64(m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                       <double *>_ptr(d), <double *>_ptr(bb), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_matmul: could not allocate scratch memory")
    return out.reshape(n_rows) if b_arr.ndim == 1 else out


# SK_ACT_LINEAR, _RELU, _GELU, _RELU6
_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1, "gelu": 2, "relu6": 3}


def _epilogue(bias, activation, n, dt):
    """(bias as a contiguous (n,) array of dtype dt or None, the kernel's act code), checked."""
    if not isinstance(activation, (str, type(None))) or activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'linear', 'relu', 'gelu' or 'relu6' (exact); "
                         f"received activation={activation!r}")
    if bias is not None:
        bias = _values(bias, dt, "bias")
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},) (one entry per output column); "
                             f"received bias.shape={bias.shape}")
    return bias, _ACTIVATIONS[activation]


def dense_csc_matmul(x, indptr, indices, data, shape, *, bias=None, activation=None,
                     n_threads=None, names=("x", "w")):
    """Y = act(X @ W + bias) with X dense (M x K, or K for a vector) and W sparse (K x N) in CSC
    form (indptr: N + 1 entries over columns, indices: row ids in [0, K)).

    This is the Dense-layer orientation (batch x in @ in x out). Returns (M, N) (or (N,)).
    bias: None or N values added to every row; activation: None / "linear", "relu", "gelu" or "relu6". Both are
    applied to each output tile before it is stored (a Dense layer's epilogue, fused).
    names: what the messages call X and W (linalg.matmul(a, b) passes ("a", "b")).
    Complexity O(nnz(W) * M).

    Raises:
        ValueError: for a malformed W, a shape mismatch, a bias not of shape (N,) or an
            activation other than None, "linear" or "relu".
    """
    xn, wn = names
    n_inner, n_cols = _shape2(shape, f"{wn}.shape")
    # CSC of W is CSR of W^T: validate it as such.
    indptr, indices, _, _ = check_csr(indptr, indices, data, (n_cols, n_inner), wn)
    x_arr = np.asarray(x)
    if x_arr.ndim not in (1, 2):
        raise ValueError(f"{xn} must be 1-D or 2-D; received shape {x_arr.shape}")
    if x_arr.shape[x_arr.ndim - 1] != n_inner:
        raise ValueError(f"{xn} must have {n_inner} columns to match {wn}.shape={(n_inner, n_cols)}; "
                         f"received {xn}.shape={x_arr.shape}")
    dt = result_dtype(np.asarray(data).dtype, x_arr.dtype, name=f"{wn}.data and {xn}")
    cdef cnp.ndarray d = _values(data, dt, f"{wn}.data")
    cdef cnp.ndarray xx = _values(x_arr.reshape(x_arr.shape[0] if x_arr.ndim == 2 else 1, n_inner), dt, xn)
    cdef int64_t m = xx.shape[0], k = n_inner, n = n_cols
    bias_arr, act_code = _epilogue(bias, activation, n_cols, dt)
    cdef cnp.ndarray out = np.empty((m, n), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef void *bp = NULL if bias_arr is None else _ptr(<cnp.ndarray>bias_arr)
    cdef int act = act_code
    cdef int nt = _threads(n_threads, indices.shape[0] * m + m * k)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_dense_csc_matmul_bias_act_f32_i32(
                m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d),
                <float *>_ptr(xx), <float *>bp, act, <float *>_ptr(out), nt)
        elif f32:
            rc = sk_dense_csc_matmul_bias_act_f32_i64(
                m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d),
                <float *>_ptr(xx), <float *>bp, act, <float *>_ptr(out), nt)
        elif i32:
            rc = sk_dense_csc_matmul_bias_act_f64_i32(
                m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d),
                <double *>_ptr(xx), <double *>bp, act, <double *>_ptr(out), nt)
        else:
            rc = sk_dense_csc_matmul_bias_act_f64_i64(
                m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d),
                <double *>_ptr(xx), <double *>bp, act, <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("dense_csc_matmul: could not allocate scratch memory")
    return out.reshape(n) if x_arr.ndim == 1 else out


def dense_csr_matmul(x, indptr, indices, data, shape, *, n_threads=None):
    """Y = X @ B with X dense (M x N, or N for a vector) and B sparse (N x K) in CSR form.

    The scatter (transposed-kernel) formulation: no transpose of B. Returns (M, K) (or (K,)).
    Complexity O(nnz(B) * M).
    """
    indptr, indices, n_inner, n_cols = check_csr(indptr, indices, data, shape, "b")
    x_arr = np.asarray(x)
    if x_arr.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D; received shape {x_arr.shape}")
    if x_arr.shape[x_arr.ndim - 1] != n_inner:
        raise ValueError(f"x must have {n_inner} columns to match b.shape={(n_inner, n_cols)}; "
                         f"received x.shape={x_arr.shape}")
    dt = result_dtype(np.asarray(data).dtype, x_arr.dtype, name="b.data and x")
    cdef cnp.ndarray d = _values(data, dt, "b.data")
    cdef cnp.ndarray xx = _values(x_arr.reshape(x_arr.shape[0] if x_arr.ndim == 2 else 1, n_inner), dt, "x")
    cdef int64_t m = xx.shape[0], k = n_inner, n = n_cols
    cdef cnp.ndarray out = np.empty((m, n), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, indices.shape[0] * m + m * k)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_dense_csr_matmul_f32_i32(m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                             <float *>_ptr(d), <float *>_ptr(xx), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_dense_csr_matmul_f32_i64(m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                             <float *>_ptr(d), <float *>_ptr(xx), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_dense_csr_matmul_f64_i32(m, k, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                             <double *>_ptr(d), <double *>_ptr(xx), <double *>_ptr(out), nt)
        else:
            rc = sk_dense_csr_matmul_f64_i64(m, k, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                             <double *>_ptr(d), <double *>_ptr(xx), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("dense_csr_matmul: could not allocate scratch memory")
    return out.reshape(n) if x_arr.ndim == 1 else out


def csr_sddmm(indptr, indices, shape, u, v, *, n_threads=None):
    """out[p] = dot(U[i, :], V[j, :]) for every stored entry p = (i, j) of the CSR pattern.

    U is (M, D), V is (N, D) for a pattern of shape (M, N). Returns the nnz values, in the
    pattern's storage order. Complexity O(nnz * D).
    """
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, None, shape, "pattern")
    u_arr = np.asarray(u)
    v_arr = np.asarray(v)
    if u_arr.ndim != 2 or u_arr.shape[0] != n_rows:
        raise ValueError(f"u must be 2-D with {n_rows} rows (pattern.shape={(n_rows, n_cols)}); "
                         f"received u.shape={u_arr.shape}")
    if v_arr.ndim != 2 or v_arr.shape[0] != n_cols:
        raise ValueError(f"v must be 2-D with {n_cols} rows (pattern.shape={(n_rows, n_cols)}); "
                         f"received v.shape={v_arr.shape}")
    if u_arr.shape[1] != v_arr.shape[1]:
        raise ValueError(f"u and v must have the same number of columns; received "
                         f"u.shape={u_arr.shape}, v.shape={v_arr.shape}")
    dt = result_dtype(u_arr.dtype, v_arr.dtype, name="u and v")
    cdef cnp.ndarray uu = _values(u_arr, dt, "u")
    cdef cnp.ndarray vv = _values(v_arr, dt, "v")
    cdef int64_t m = n_rows, n = n_cols, depth = uu.shape[1]
    cdef int64_t nnz = indices.shape[0]
    cdef cnp.ndarray out = np.empty(nnz, dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, nnz * depth)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_sddmm_f32_i32(m, n, depth, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                      <float *>_ptr(uu), <float *>_ptr(vv), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_sddmm_f32_i64(m, n, depth, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                      <float *>_ptr(uu), <float *>_ptr(vv), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_sddmm_f64_i32(m, n, depth, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                      <double *>_ptr(uu), <double *>_ptr(vv), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_sddmm_f64_i64(m, n, depth, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                      <double *>_ptr(uu), <double *>_ptr(vv), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_sddmm: could not allocate scratch memory")
    return out


def csr_sddmm_t(indptr, indices, shape, ut, vt, *, n_threads=None):
    """SDDMM with transposed dense operands: out[p] = sum_d UT[d, i] * VT[d, j] for every stored
    entry p = (i, j); UT is (D, M), VT is (D, N) for a pattern of shape (M, N).

    Equal to csr_sddmm(indptr, indices, shape, UT.T, VT.T) up to summation order. This is the
    gradient of a Dense layer's sparse kernel, dW = X^T dY on W's pattern, without transposes.
    """
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, None, shape, "pattern")
    u_arr = np.asarray(ut)
    v_arr = np.asarray(vt)
    if u_arr.ndim != 2 or u_arr.shape[1] != n_rows:
        raise ValueError(f"ut must be 2-D with {n_rows} columns (pattern.shape={(n_rows, n_cols)}); "
                         f"received ut.shape={u_arr.shape}")
    if v_arr.ndim != 2 or v_arr.shape[1] != n_cols:
        raise ValueError(f"vt must be 2-D with {n_cols} columns (pattern.shape={(n_rows, n_cols)}); "
                         f"received vt.shape={v_arr.shape}")
    if u_arr.shape[0] != v_arr.shape[0]:
        raise ValueError(f"ut and vt must have the same number of rows; received "
                         f"ut.shape={u_arr.shape}, vt.shape={v_arr.shape}")
    dt = result_dtype(u_arr.dtype, v_arr.dtype, name="ut and vt")
    cdef cnp.ndarray uu = _values(u_arr, dt, "ut")
    cdef cnp.ndarray vv = _values(v_arr, dt, "vt")
    cdef int64_t m = n_rows, n = n_cols, depth = uu.shape[0]
    cdef int64_t nnz = indices.shape[0]
    cdef cnp.ndarray out = np.empty(nnz, dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, nnz * depth)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_sddmm_t_f32_i32(m, n, depth, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                        <float *>_ptr(uu), <float *>_ptr(vv), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_sddmm_t_f32_i64(m, n, depth, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                        <float *>_ptr(uu), <float *>_ptr(vv), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_sddmm_t_f64_i32(m, n, depth, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                        <double *>_ptr(uu), <double *>_ptr(vv), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_sddmm_t_f64_i64(m, n, depth, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                        <double *>_ptr(uu), <double *>_ptr(vv), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_sddmm_t: could not allocate scratch memory")
    return out


def csr_transpose(indptr, indices, data, shape, *, n_threads=None, return_perm=False):
    """CSR arrays of A^T (equivalently, the CSC arrays of A).

    Returns (indptr, indices, data) of the (N, M) transpose, plus `perm` (int64, nnz) when
    return_perm: t_data = data[perm], so later values on the same pattern transpose with a
    gather. Index dtype and value dtype are kept. Complexity O(nnz + N).
    """
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, data, shape, "a")
    d_arr = np.asarray(data)
    dt = result_dtype(d_arr.dtype, name="a.data")
    cdef cnp.ndarray d = _values(d_arr, dt, "a.data")
    cdef int64_t m = n_rows, n = n_cols, nnz = indices.shape[0]
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef cnp.ndarray t_ip = np.empty(n_cols + 1, dtype=indptr.dtype)
    cdef cnp.ndarray t_ix = np.empty(nnz, dtype=indptr.dtype)
    cdef cnp.ndarray t_d = np.empty(nnz, dtype=dt)
    cdef cnp.ndarray perm = np.empty(nnz if return_perm else 0, dtype=np.int64)
    cdef int64_t *pp = <int64_t *>_ptr(perm) if return_perm else NULL
    cdef int nt = _threads(n_threads, nnz)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_transpose_f32_i32(m, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d),
                                          <int32_t *>_ptr(t_ip), <int32_t *>_ptr(t_ix), <float *>_ptr(t_d), pp, nt)
        elif f32:
            rc = sk_csr_transpose_f32_i64(m, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d),
                                          <int64_t *>_ptr(t_ip), <int64_t *>_ptr(t_ix), <float *>_ptr(t_d), pp, nt)
        elif i32:
            rc = sk_csr_transpose_f64_i32(m, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d),
                                          <int32_t *>_ptr(t_ip), <int32_t *>_ptr(t_ix), <double *>_ptr(t_d), pp, nt)
        else:
            rc = sk_csr_transpose_f64_i64(m, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d),
                                          <int64_t *>_ptr(t_ip), <int64_t *>_ptr(t_ix), <double *>_ptr(t_d), pp, nt)
    if rc:
        raise MemoryError("csr_transpose: could not allocate scratch memory")
    if return_perm:
        return t_ip, t_ix, t_d, perm
    return t_ip, t_ix, t_d


def dense_to_csr(x, *, threshold=None, mask=None, index_dtype=None, n_threads=None):
    """CSR arrays (indptr, indices, data) of a dense 2-D array.

    Keeps the entries where `mask` (same shape, truthy) is set, and, with `threshold`, where
    not |x| <= threshold (NaN is kept). With neither, keeps the nonzeros (threshold=0). With a
    mask alone, masked-in zeros are stored explicitly: the mask is the structure.
    index_dtype: int32 or int64; by default int32 when it can hold nnz and the column count.
    """
    x_arr = np.asarray(x)
    if x_arr.ndim != 2:
        raise ValueError(f"x must be 2-D; received shape {x_arr.shape}")
    dt = result_dtype(x_arr.dtype, name="x")
    cdef cnp.ndarray xx = _values(x_arr, dt, "x")
    cdef cnp.ndarray mm
    cdef uint8_t *mp = NULL
    if mask is not None:
        mask_arr = np.asarray(mask)
        if mask_arr.shape != x_arr.shape:
            raise ValueError(f"mask must have the shape of x {x_arr.shape}; received {mask_arr.shape}")
        mm = np.ascontiguousarray(mask_arr != 0, dtype=np.uint8)
        mp = <uint8_t *>_ptr(mm)
    if threshold is None and mask is None:
        threshold = 0.0
    cdef bint use_thr = threshold is not None
    cdef double thr = 0.0
    if use_thr:
        try:
            thr = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a finite number >= 0; received: {threshold!r}") from None
        if not np.isfinite(thr) or thr < 0:
            raise ValueError(f"threshold must be a finite number >= 0; received: {threshold!r}")
    cdef int64_t m = xx.shape[0], n = xx.shape[1]
    cdef int nt = _threads(n_threads, m * n)
    cdef cnp.ndarray counts = np.empty(m, dtype=np.int64)
    cdef bint f32 = dt == np.float32
    with nogil:
        if f32:
            _dense_to_csr_count(m, n, <float *>_ptr(xx), mp, use_thr, thr, <int64_t *>_ptr(counts), nt)
        else:
            _dense_to_csr_count(m, n, <double *>_ptr(xx), mp, use_thr, thr, <int64_t *>_ptr(counts), nt)
    nnz = int(counts.sum())
    if index_dtype is None:
        index_dtype = np.int32 if max(nnz, n) <= np.iinfo(np.int32).max else np.int64
    index_dtype = np.dtype(index_dtype)
    if index_dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"index_dtype must be int32 or int64; received: {index_dtype}")
    if max(nnz, n) > np.iinfo(index_dtype).max:
        raise ValueError(f"index_dtype={index_dtype} cannot hold nnz={nnz} / n_cols={n}")
    cdef cnp.ndarray ip = np.zeros(m + 1, dtype=index_dtype)
    np.cumsum(counts, out=ip[1:])
    cdef cnp.ndarray ix = np.empty(nnz, dtype=index_dtype)
    cdef cnp.ndarray d = np.empty(nnz, dtype=dt)
    cdef bint i32 = index_dtype == np.int32
    with nogil:
        if f32 and i32:
            _dense_to_csr_fill(m, n, <float *>_ptr(xx), mp, use_thr, thr, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d), nt)
        elif f32:
            _dense_to_csr_fill(m, n, <float *>_ptr(xx), mp, use_thr, thr, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d), nt)
        elif i32:
            _dense_to_csr_fill(m, n, <double *>_ptr(xx), mp, use_thr, thr, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d), nt)
        else:
            _dense_to_csr_fill(m, n, <double *>_ptr(xx), mp, use_thr, thr, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d), nt)
    return ip, ix, d


def csr_to_dense(indptr, indices, data, shape, *, n_threads=None):
    """Dense (M, N) array of a CSR matrix; duplicate entries add up."""
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, data, shape, "a")
    dt = result_dtype(np.asarray(data).dtype, name="a.data")
    cdef cnp.ndarray d = _values(data, dt, "a.data")
    cdef cnp.ndarray out = np.zeros((n_rows, n_cols), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int64_t m = n_rows, n = n_cols
    cdef int nt = _threads(n_threads, indices.shape[0])
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    with nogil:
        if f32 and i32:
            _csr_to_dense(m, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d), <float *>_ptr(out), nt)
        elif f32:
            _csr_to_dense(m, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d), <float *>_ptr(out), nt)
        elif i32:
            _csr_to_dense(m, n, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d), <double *>_ptr(out), nt)
        else:
            _csr_to_dense(m, n, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d), <double *>_ptr(out), nt)
    return out


def csr_canonicalize(indptr, indices, data, shape, *, n_threads=None):
    """Canonical CSR: indices sorted within each row, duplicates summed (in storage order).

    Explicit zeros are kept (they are structure). Returns new (indptr, indices, data).
    Complexity O(nnz log(max row length)).
    """
    indptr, indices, n_rows, n_cols = check_csr(indptr, indices, data, shape, "a")
    dt = result_dtype(np.asarray(data).dtype, name="a.data")
    cdef cnp.ndarray ip = indptr
    cdef cnp.ndarray ix = indices.copy()
    cdef cnp.ndarray d = np.array(data, dtype=dt, copy=True, order="C")
    cdef cnp.ndarray t_ix = np.empty_like(ix)
    cdef cnp.ndarray t_d = np.empty_like(d)
    cdef cnp.ndarray counts = np.empty(n_rows, dtype=np.int64)
    cdef int64_t m = n_rows
    cdef int nt = _threads(n_threads, 8 * indices.shape[0])
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    with nogil:
        if f32 and i32:
            _csr_sort_rows(m, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d), <int32_t *>_ptr(t_ix), <float *>_ptr(t_d), <int64_t *>_ptr(counts), nt)
        elif f32:
            _csr_sort_rows(m, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d), <int64_t *>_ptr(t_ix), <float *>_ptr(t_d), <int64_t *>_ptr(counts), nt)
        elif i32:
            _csr_sort_rows(m, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d), <int32_t *>_ptr(t_ix), <double *>_ptr(t_d), <int64_t *>_ptr(counts), nt)
        else:
            _csr_sort_rows(m, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d), <int64_t *>_ptr(t_ix), <double *>_ptr(t_d), <int64_t *>_ptr(counts), nt)
    cdef cnp.ndarray o_ip = np.zeros(n_rows + 1, dtype=indptr.dtype)
    np.cumsum(counts, out=o_ip[1:])
    cdef int64_t nnz_out = o_ip[n_rows]
    cdef cnp.ndarray o_ix = np.empty(nnz_out, dtype=indptr.dtype)
    cdef cnp.ndarray o_d = np.empty(nnz_out, dtype=dt)
    with nogil:
        if f32 and i32:
            _csr_merge_duplicates(m, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d), <int32_t *>_ptr(o_ip), <int32_t *>_ptr(o_ix), <float *>_ptr(o_d), nt)
        elif f32:
            _csr_merge_duplicates(m, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d), <int64_t *>_ptr(o_ip), <int64_t *>_ptr(o_ix), <float *>_ptr(o_d), nt)
        elif i32:
            _csr_merge_duplicates(m, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d), <int32_t *>_ptr(o_ip), <int32_t *>_ptr(o_ix), <double *>_ptr(o_d), nt)
        else:
            _csr_merge_duplicates(m, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d), <int64_t *>_ptr(o_ip), <int64_t *>_ptr(o_ix), <double *>_ptr(o_d), nt)
    return o_ip, o_ix, o_d


def take(params, idx, *, n_threads=None):
    """`params[idx]` for a 1-D params and 1-D int32/int64 idx (the value gathers of the gradients
    and layers): parallel, with software prefetch. Raises ValueError naming the first index
    outside [0, len(params)). Complexity O(len(idx))."""
    p_arr = np.asarray(params)
    dt = result_dtype(p_arr.dtype, name="params")
    cdef cnp.ndarray pv = _values(p_arr, dt, "params", ndim=1)
    i_arr = np.asarray(idx)
    if i_arr.ndim != 1 or i_arr.dtype.kind not in "iu":
        raise ValueError(f"idx must be a 1-D integer array; received dtype {i_arr.dtype}, "
                         f"shape {i_arr.shape}")
    cdef cnp.ndarray iv = np.ascontiguousarray(
        i_arr, dtype=np.int32 if i_arr.dtype == np.int32 else np.int64)
    cdef int64_t n_params = pv.shape[0], n = iv.shape[0]
    cdef cnp.ndarray out = np.empty(n, dtype=dt)
    cdef int nt = _threads(n_threads, n * 8)
    cdef bint f32 = dt == np.float32, i32 = iv.dtype == np.int32
    cdef int64_t bad
    with nogil:
        if f32 and i32:
            bad = sk_take_values_f32_i32(n_params, n, <int32_t *>_ptr(iv), <float *>_ptr(pv), <float *>_ptr(out), nt)
        elif f32:
            bad = sk_take_values_f32_i64(n_params, n, <int64_t *>_ptr(iv), <float *>_ptr(pv), <float *>_ptr(out), nt)
        elif i32:
            bad = sk_take_values_f64_i32(n_params, n, <int32_t *>_ptr(iv), <double *>_ptr(pv), <double *>_ptr(out), nt)
        else:
            bad = sk_take_values_f64_i64(n_params, n, <int64_t *>_ptr(iv), <double *>_ptr(pv), <double *>_ptr(out), nt)
    if bad == -2:
        raise MemoryError("take: could not allocate scratch memory")
    if bad >= 0:
        raise ValueError(f"idx must lie in [0, {n_params}); received idx[{bad}]={int(iv[bad])}")
    return out
