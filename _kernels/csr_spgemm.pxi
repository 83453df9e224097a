# csr_spgemm: sparse x sparse products with a dense result, and their gradients.
#
# Y = A @ W with A (n_rows x n_inner) and W (n_inner x n_cols) both in CSR: a sparse data batch
# (bag-of-words) times a pruned kernel, neither densified. Row i of Y is built in a dense
# accumulator row (the output row itself): for each stored A[i, k], row k of W is scattered into
# it, scaled by A[i, k] (Gustavson's row-by-row product, with a dense output instead of a
# compressed one). One thread owns each output row and adds in storage order: the result is
# bitwise identical for every n_threads.


cdef int _csr_spgemm(int64_t n_rows, int64_t n_inner, int64_t n_cols, const index_t *a_indptr,
                     const index_t *a_indices, const real_t *a_data, const index_t *w_indptr,
                     const index_t *w_indices, const real_t *w_data, real_t *out,
                     int n_threads) noexcept nogil:
    """out (n_rows x n_cols, row-major) = A @ W.

    a_indptr: n_rows + 1; a_indices, a_data: nnz(A), column ids in [0, n_inner).
    w_indptr: n_inner + 1; w_indices, w_data: nnz(W), column ids in [0, n_cols).
    out: n_rows * n_cols, fully written.
    Complexity O(n_rows * n_cols + sum over A's entries (i, k) of nnz(W[k, :])).
    """
    cdef Py_ssize_t i
    cdef int64_t p, q, k, q0, q1
    cdef real_t a
    cdef real_t *o
    if n_rows == 0 or n_cols == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    for i in prange(n_rows, nogil=True, schedule='dynamic', chunksize=8, num_threads=n_threads):
        o = out + i * n_cols
        memset(o, 0, n_cols * sizeof(real_t))
        for p in range(a_indptr[i], a_indptr[i + 1]):
            k = a_indices[p]
            a = a_data[p]
            q0 = w_indptr[k]
            q1 = w_indptr[k + 1]
            for q in range(q0, q1):
                o[w_indices[q]] += a * w_data[q]
    return 0


cdef int _csr_spgemm_masked(int64_t n_rows, int64_t n_inner, int64_t n_cols,
                            const index_t *a_indptr, const index_t *a_indices,
                            const real_t *a_data, const index_t *p_indptr,
                            const index_t *p_indices, const real_t *w, real_t *out,
                            int n_threads) noexcept nogil:
    """out (n_rows x n_cols) = A @ (W restricted to the pattern P), W dense.

    The pruned kernel of a layer that keeps its kernel dense (SparseDense): P (n_inner x n_cols,
    CSR structure only: p_indptr n_inner + 1, p_indices nnz(P) column ids) lists the kept
    weights, read in place from w (n_inner x n_cols, row-major); pruned weights are never read.
    Same loop as _csr_spgemm with W's values looked up in W's dense row.
    Complexity O(n_rows * n_cols + sum over A's entries (i, k) of nnz(P[k, :])).
    """
    cdef Py_ssize_t i
    cdef int64_t p, q, k, q0, q1
    cdef real_t a
    cdef real_t *o
    cdef const real_t *wr
    if n_rows == 0 or n_cols == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    for i in prange(n_rows, nogil=True, schedule='dynamic', chunksize=8, num_threads=n_threads):
        o = out + i * n_cols
        memset(o, 0, n_cols * sizeof(real_t))
        for p in range(a_indptr[i], a_indptr[i + 1]):
            k = a_indices[p]
            a = a_data[p]
            wr = w + k * n_cols
            q0 = p_indptr[k]
            q1 = p_indptr[k + 1]
            for q in range(q0, q1):
                o[p_indices[q]] += a * wr[p_indices[q]]
    return 0


cdef int _csr_spgemm_grad_a(int64_t n_rows, int64_t n_inner, int64_t n_cols,
                            const index_t *a_indptr, const index_t *a_indices,
                            const index_t *w_indptr, const index_t *w_indices,
                            const real_t *w_data, const real_t *dy, real_t *out,
                            int n_threads) noexcept nogil:
    """Gradient w.r.t. A's values: out[p] = sum_{q in W[k, :]} W[k, j_q] * dy[i, j_q] for every
    stored entry p = (i, k) of A (dY @ W^T sampled on A's pattern).

    a_indptr: n_rows + 1; a_indices: nnz(A). w_*: as in _csr_spgemm. dy: n_rows x n_cols.
    out: nnz(A). Complexity O(nnz(A) + sum over A's entries (i, k) of nnz(W[k, :])).
    """
    cdef Py_ssize_t i
    cdef int64_t p, q, k
    cdef real_t s
    cdef const real_t *g
    if n_rows == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    for i in prange(n_rows, nogil=True, schedule='dynamic', chunksize=8, num_threads=n_threads):
        g = dy + i * n_cols
        for p in range(a_indptr[i], a_indptr[i + 1]):
            k = a_indices[p]
            s = 0
            for q in range(w_indptr[k], w_indptr[k + 1]):
                s = s + w_data[q] * g[w_indices[q]]
            out[p] = s
    return 0


cdef int _csr_spgemm_grad_w(int64_t n_rows, int64_t n_inner, int64_t n_cols,
                            const index_t *at_indptr, const index_t *at_indices,
                            const real_t *at_data, const index_t *w_indptr,
                            const index_t *w_indices, const real_t *dy, real_t *out,
                            int n_threads) noexcept nogil:
    """Gradient w.r.t. W's values: out[q] = sum_i A[i, k] * dy[i, j] for every stored entry
    q = (k, j) of W (A^T @ dY sampled on W's pattern), from A^T in CSR.

    at_indptr: n_inner + 1 (rows of A^T = columns of A); at_indices, at_data: nnz(A), row ids of
    A in [0, n_rows). w_indptr: n_inner + 1; w_indices: nnz(W). dy: n_rows x n_cols.
    out: nnz(W), fully written (zero on rows of W that no column of A touches). Each W row is
    owned by one thread and summed in A^T's storage order (bitwise identical for any n_threads).
    Complexity O(nnz(W) + n_inner + sum_k nnz(A[:, k]) * nnz(W[k, :])).
    """
    cdef Py_ssize_t k
    cdef int64_t p, q, q0, q1
    cdef real_t a
    cdef const real_t *g
    if n_inner == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    for k in prange(n_inner, nogil=True, schedule='dynamic', chunksize=64, num_threads=n_threads):
        q0 = w_indptr[k]
        q1 = w_indptr[k + 1]
        for q in range(q0, q1):
            out[q] = 0
        for p in range(at_indptr[k], at_indptr[k + 1]):
            a = at_data[p]
            g = dy + <int64_t>at_indices[p] * n_cols
            for q in range(q0, q1):
                out[q] += a * g[w_indices[q]]
    return 0


# ---- C API (sparsekeras_kernels.h) --------------------------------------------------------

cdef public int sk_csr_spgemm_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const float *a_data,
        const int32_t *w_indptr, const int32_t *w_indices, const float *w_data, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, w_indptr,
                       w_indices, w_data, out, n_threads)

cdef public int sk_csr_spgemm_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const float *a_data,
        const int64_t *w_indptr, const int64_t *w_indices, const float *w_data, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, w_indptr,
                       w_indices, w_data, out, n_threads)

cdef public int sk_csr_spgemm_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const double *a_data,
        const int32_t *w_indptr, const int32_t *w_indices, const double *w_data, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, w_indptr,
                       w_indices, w_data, out, n_threads)

cdef public int sk_csr_spgemm_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const double *a_data,
        const int64_t *w_indptr, const int64_t *w_indices, const double *w_data, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, w_indptr,
                       w_indices, w_data, out, n_threads)

cdef public int sk_csr_spgemm_grad_a_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const int32_t *w_indptr,
        const int32_t *w_indices, const float *w_data, const float *dy, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_a(n_rows, n_inner, n_cols, a_indptr, a_indices, w_indptr,
                              w_indices, w_data, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_a_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const int64_t *w_indptr,
        const int64_t *w_indices, const float *w_data, const float *dy, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_a(n_rows, n_inner, n_cols, a_indptr, a_indices, w_indptr,
                              w_indices, w_data, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_a_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const int32_t *w_indptr,
        const int32_t *w_indices, const double *w_data, const double *dy, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_a(n_rows, n_inner, n_cols, a_indptr, a_indices, w_indptr,
                              w_indices, w_data, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_a_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const int64_t *w_indptr,
        const int64_t *w_indices, const double *w_data, const double *dy, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_a(n_rows, n_inner, n_cols, a_indptr, a_indices, w_indptr,
                              w_indices, w_data, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_w_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *at_indptr, const int32_t *at_indices, const float *at_data,
        const int32_t *w_indptr, const int32_t *w_indices, const float *dy, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_w(n_rows, n_inner, n_cols, at_indptr, at_indices, at_data,
                              w_indptr, w_indices, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_w_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *at_indptr, const int64_t *at_indices, const float *at_data,
        const int64_t *w_indptr, const int64_t *w_indices, const float *dy, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_w(n_rows, n_inner, n_cols, at_indptr, at_indices, at_data,
                              w_indptr, w_indices, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_w_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *at_indptr, const int32_t *at_indices, const double *at_data,
        const int32_t *w_indptr, const int32_t *w_indices, const double *dy, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_w(n_rows, n_inner, n_cols, at_indptr, at_indices, at_data,
                              w_indptr, w_indices, dy, out, n_threads)

cdef public int sk_csr_spgemm_grad_w_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *at_indptr, const int64_t *at_indices, const double *at_data,
        const int64_t *w_indptr, const int64_t *w_indices, const double *dy, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_grad_w(n_rows, n_inner, n_cols, at_indptr, at_indices, at_data,
                              w_indptr, w_indices, dy, out, n_threads)


cdef public int sk_csr_spgemm_masked_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const float *a_data,
        const int32_t *p_indptr, const int32_t *p_indices, const float *w, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_masked(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, p_indptr,
                              p_indices, w, out, n_threads)

cdef public int sk_csr_spgemm_masked_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const float *a_data,
        const int64_t *p_indptr, const int64_t *p_indices, const float *w, float *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_masked(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, p_indptr,
                              p_indices, w, out, n_threads)

cdef public int sk_csr_spgemm_masked_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *a_indptr, const int32_t *a_indices, const double *a_data,
        const int32_t *p_indptr, const int32_t *p_indices, const double *w, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_masked(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, p_indptr,
                              p_indices, w, out, n_threads)

cdef public int sk_csr_spgemm_masked_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *a_indptr, const int64_t *a_indices, const double *a_data,
        const int64_t *p_indptr, const int64_t *p_indices, const double *w, double *out,
        int n_threads) noexcept nogil:
    return _csr_spgemm_masked(n_rows, n_inner, n_cols, a_indptr, a_indices, a_data, p_indptr,
                              p_indices, w, out, n_threads)


# ---- numpy level --------------------------------------------------------------------------

def _spgemm_operands(a_indptr, a_indices, a_data, a_shape, w_indptr, w_indices, w_data, w_shape):
    """Validated, common-dtype CSR arrays of A and W (data may be None: not checked)."""
    a_ip, a_ix, m, k = check_csr(a_indptr, a_indices, a_data, a_shape, "a")
    w_ip, w_ix, k2, n = check_csr(w_indptr, w_indices, w_data, w_shape, "w")
    if k2 != k:
        raise ValueError(f"w must have {k} rows to match a.shape={(m, k)}; "
                         f"received w.shape={(k2, n)}")
    it = np.int32 if a_ip.dtype == np.int32 and w_ip.dtype == np.int32 else np.int64
    return (a_ip.astype(it, copy=False), a_ix.astype(it, copy=False),
            w_ip.astype(it, copy=False), w_ix.astype(it, copy=False), m, k, n)


def csr_spgemm(a_indptr, a_indices, a_data, a_shape, w_indptr, w_indices, w_data, w_shape, *,
               n_threads=None):
    """Y = A @ W with A (M x K) and W (K x N) both sparse (CSR arrays); Y dense (M, N).

    Neither operand is densified. Complexity O(M * N + sum over A's entries (i, k) of
    nnz(W[k, :])). Index arrays of both operands are brought to one dtype (int32 if both are).
    """
    a_ip, a_ix, w_ip, w_ix, m, k, n = _spgemm_operands(a_indptr, a_indices, a_data, a_shape,
                                                       w_indptr, w_indices, w_data, w_shape)
    dt = result_dtype(np.asarray(a_data).dtype, np.asarray(w_data).dtype, name="a.data and w.data")
    cdef cnp.ndarray ad = _values(a_data, dt, "a.data")
    cdef cnp.ndarray wd = _values(w_data, dt, "w.data")
    cdef cnp.ndarray out = np.empty((m, n), dtype=dt)
    cdef cnp.ndarray aip = a_ip, aix = a_ix, wip = w_ip, wix = w_ix
    cdef int64_t cm = m, ck = k, cn = n
    cdef int nt = _threads(n_threads, a_ix.shape[0] * max(1, w_ix.shape[0] // max(1, k)) + m * n)
    cdef bint f32 = dt == np.float32, i32 = a_ip.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_spgemm_f32_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                       <float *>_ptr(ad), <int32_t *>_ptr(wip), <int32_t *>_ptr(wix),
                                       <float *>_ptr(wd), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_spgemm_f32_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                       <float *>_ptr(ad), <int64_t *>_ptr(wip), <int64_t *>_ptr(wix),
                                       <float *>_ptr(wd), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_spgemm_f64_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                       <double *>_ptr(ad), <int32_t *>_ptr(wip), <int32_t *>_ptr(wix),
                                       <double *>_ptr(wd), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_spgemm_f64_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                       <double *>_ptr(ad), <int64_t *>_ptr(wip), <int64_t *>_ptr(wix),
                                       <double *>_ptr(wd), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_spgemm: could not allocate scratch memory")
    return out


def csr_spgemm_grad(a_indptr, a_indices, a_data, a_shape, w_indptr, w_indices, w_data, w_shape,
                    dy, *, n_threads=None):
    """Gradients of Y = A @ W (both CSR) given dY (M, N): `(d_a_data, d_w_data)`, each on its
    operand's pattern: d_a_data[p] = (dY @ W^T)[i, k], d_w_data[q] = (A^T @ dY)[k, j].

    d_w_data reads A^T (csr_transpose of A). Complexity O(nnz(A) + nnz(W) + K + work of
    csr_spgemm).
    """
    a_ip, a_ix, w_ip, w_ix, m, k, n = _spgemm_operands(a_indptr, a_indices, a_data, a_shape,
                                                       w_indptr, w_indices, w_data, w_shape)
    dy_arr = np.asarray(dy)
    if dy_arr.shape != (m, n):
        raise ValueError(f"dy must have shape {(m, n)} (rows of a, columns of w); "
                         f"received dy.shape={dy_arr.shape}")
    dt = result_dtype(np.asarray(a_data).dtype, np.asarray(w_data).dtype, dy_arr.dtype,
                      name="a.data, w.data and dy")
    cdef cnp.ndarray ad = _values(a_data, dt, "a.data")
    cdef cnp.ndarray wd = _values(w_data, dt, "w.data")
    cdef cnp.ndarray g = _values(dy_arr, dt, "dy")
    t_ip, t_ix, t_d = csr_transpose(a_ip, a_ix, ad, (m, k), n_threads=n_threads)
    cdef cnp.ndarray tip = t_ip, tix = t_ix, td = t_d
    cdef cnp.ndarray da = np.empty(a_ix.shape[0], dtype=dt)
    cdef cnp.ndarray dw = np.empty(w_ix.shape[0], dtype=dt)
    cdef cnp.ndarray aip = a_ip, aix = a_ix, wip = w_ip, wix = w_ix
    cdef int64_t cm = m, ck = k, cn = n
    cdef int nt = _threads(n_threads, a_ix.shape[0] * max(1, w_ix.shape[0] // max(1, k)) + m * n)
    cdef bint f32 = dt == np.float32, i32 = a_ip.dtype == np.int32
    cdef int rc = 0, rc2 = 0
    with nogil:
        if f32 and i32:
            rc = sk_csr_spgemm_grad_a_f32_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                              <int32_t *>_ptr(wip), <int32_t *>_ptr(wix), <float *>_ptr(wd),
                                              <float *>_ptr(g), <float *>_ptr(da), nt)
            rc2 = sk_csr_spgemm_grad_w_f32_i32(cm, ck, cn, <int32_t *>_ptr(tip), <int32_t *>_ptr(tix),
                                               <float *>_ptr(td), <int32_t *>_ptr(wip), <int32_t *>_ptr(wix),
                                               <float *>_ptr(g), <float *>_ptr(dw), nt)
        elif f32:
            rc = sk_csr_spgemm_grad_a_f32_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                              <int64_t *>_ptr(wip), <int64_t *>_ptr(wix), <float *>_ptr(wd),
                                              <float *>_ptr(g), <float *>_ptr(da), nt)
            rc2 = sk_csr_spgemm_grad_w_f32_i64(cm, ck, cn, <int64_t *>_ptr(tip), <int64_t *>_ptr(tix),
                                               <float *>_ptr(td), <int64_t *>_ptr(wip), <int64_t *>_ptr(wix),
                                               <float *>_ptr(g), <float *>_ptr(dw), nt)
        elif i32:
            rc = sk_csr_spgemm_grad_a_f64_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                              <int32_t *>_ptr(wip), <int32_t *>_ptr(wix), <double *>_ptr(wd),
                                              <double *>_ptr(g), <double *>_ptr(da), nt)
            rc2 = sk_csr_spgemm_grad_w_f64_i32(cm, ck, cn, <int32_t *>_ptr(tip), <int32_t *>_ptr(tix),
                                               <double *>_ptr(td), <int32_t *>_ptr(wip), <int32_t *>_ptr(wix),
                                               <double *>_ptr(g), <double *>_ptr(dw), nt)
        else:
            rc = sk_csr_spgemm_grad_a_f64_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                              <int64_t *>_ptr(wip), <int64_t *>_ptr(wix), <double *>_ptr(wd),
                                              <double *>_ptr(g), <double *>_ptr(da), nt)
            rc2 = sk_csr_spgemm_grad_w_f64_i64(cm, ck, cn, <int64_t *>_ptr(tip), <int64_t *>_ptr(tix),
                                               <double *>_ptr(td), <int64_t *>_ptr(wip), <int64_t *>_ptr(wix),
                                               <double *>_ptr(g), <double *>_ptr(dw), nt)
    if rc or rc2:
        raise MemoryError("csr_spgemm_grad: could not allocate scratch memory")
    return da, dw


def csr_spgemm_masked(a_indptr, a_indices, a_data, a_shape, p_indptr, p_indices, w, *,
                      n_threads=None):
    """Y = A @ (W on the pattern P): A sparse (CSR, M x K), W dense (K x N), P a CSR structure
    (K x N) of the entries of W to use; the others are never read. Returns dense (M, N).
    Complexity O(M * N + sum over A's entries (i, k) of nnz(P[k, :]))."""
    w_arr = np.asarray(w)
    if w_arr.ndim != 2:
        raise ValueError(f"w must be 2-D; received shape {w_arr.shape}")
    a_ip, a_ix, p_ip, p_ix, m, k, n = _spgemm_operands(a_indptr, a_indices, a_data, a_shape,
                                                       p_indptr, p_indices, None, w_arr.shape)
    dt = result_dtype(np.asarray(a_data).dtype, w_arr.dtype, name="a.data and w")
    cdef cnp.ndarray ad = _values(a_data, dt, "a.data")
    cdef cnp.ndarray wd = _values(w_arr, dt, "w")
    cdef cnp.ndarray out = np.empty((m, n), dtype=dt)
    cdef cnp.ndarray aip = a_ip, aix = a_ix, pip = p_ip, pix = p_ix
    cdef int64_t cm = m, ck = k, cn = n
    cdef int nt = _threads(n_threads, a_ix.shape[0] * max(1, p_ix.shape[0] // max(1, k)) + m * n)
    cdef bint f32 = dt == np.float32, i32 = a_ip.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_csr_spgemm_masked_f32_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                              <float *>_ptr(ad), <int32_t *>_ptr(pip), <int32_t *>_ptr(pix),
                                              <float *>_ptr(wd), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_csr_spgemm_masked_f32_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                              <float *>_ptr(ad), <int64_t *>_ptr(pip), <int64_t *>_ptr(pix),
                                              <float *>_ptr(wd), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_csr_spgemm_masked_f64_i32(cm, ck, cn, <int32_t *>_ptr(aip), <int32_t *>_ptr(aix),
                                              <double *>_ptr(ad), <int32_t *>_ptr(pip), <int32_t *>_ptr(pix),
                                              <double *>_ptr(wd), <double *>_ptr(out), nt)
        else:
            rc = sk_csr_spgemm_masked_f64_i64(cm, ck, cn, <int64_t *>_ptr(aip), <int64_t *>_ptr(aix),
                                              <double *>_ptr(ad), <int64_t *>_ptr(pip), <int64_t *>_ptr(pix),
                                              <double *>_ptr(wd), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("csr_spgemm_masked: could not allocate scratch memory")
    return out
