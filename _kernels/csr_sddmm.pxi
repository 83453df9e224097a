# csr_sddmm: sampled dense-dense product on a CSR pattern (the sparse operand's gradient).


cdef int _csr_sddmm(int64_t n_rows, int64_t n_cols, int64_t depth, const index_t *indptr,
                    const index_t *indices, const real_t *u, const real_t *v, real_t *out,
                    int n_threads) noexcept nogil:
    """out[p] = dot(u[i, :], v[indices[p], :]) for every stored entry p of row i.

    u: n_rows x depth, v: n_cols x depth (row-major); out: nnz entries.
    Row ranges per thread are balanced by nonzeros. Complexity O(nnz * depth).
    """
    cdef int isa = sk_isa()
    cdef int64_t *bounds
    cdef Py_ssize_t c
    cdef int64_t i, p, r0, r1
    cdef const real_t *urow
    if n_rows == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    if bounds == NULL:
        return -1
    _balanced_bounds(n_rows, indptr, 1, 1, n_threads, bounds)
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        for i in range(r0, r1):
            urow = u + i * depth
            for p in range(indptr[i], indptr[i + 1]):
                out[p] = _dot(isa, depth, urow, v + <int64_t>indices[p] * depth)
    free(bounds)
    return 0


cdef public int sk_csr_sddmm_f32_i32(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int32_t *indptr, const int32_t *indices, const float *u, const float *v,
        float *out, int n_threads) noexcept nogil:
    return _csr_sddmm(n_rows, n_cols, depth, indptr, indices, u, v, out, n_threads)

cdef public int sk_csr_sddmm_f32_i64(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int64_t *indptr, const int64_t *indices, const float *u, const float *v,
        float *out, int n_threads) noexcept nogil:
    return _csr_sddmm(n_rows, n_cols, depth, indptr, indices, u, v, out, n_threads)

cdef public int sk_csr_sddmm_f64_i32(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int32_t *indptr, const int32_t *indices, const double *u, const double *v,
        double *out, int n_threads) noexcept nogil:
    return _csr_sddmm(n_rows, n_cols, depth, indptr, indices, u, v, out, n_threads)

cdef public int sk_csr_sddmm_f64_i64(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int64_t *indptr, const int64_t *indices, const double *u, const double *v,
        double *out, int n_threads) noexcept nogil:
    return _csr_sddmm(n_rows, n_cols, depth, indptr, indices, u, v, out, n_threads)
