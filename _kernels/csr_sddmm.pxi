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


cdef int _csr_sddmm_t(int64_t n_rows, int64_t n_cols, int64_t depth, const index_t *indptr,
                      const index_t *indices, const real_t *ut, const real_t *vt, real_t *out,
                      int n_threads) noexcept nogil:
    """out[p] = sum_d ut[d, i] * vt[d, j] for every stored entry p = (i, j): SDDMM with both
    dense operands given transposed, ut (depth x n_rows) and vt (depth x n_cols), row-major.

    This is the layout of a Dense layer's gradient (dW = X^T dY sampled on W's pattern, with X
    and dY as they come, batch-major). The depth (batch) is cut into tiles of `tile` entries; per
    tile both operands are packed transposed (rows x tile), so the v panel a thread sweeps stays
    in L2, and out[p] accumulates the per-tile dots in tile order. Complexity O(nnz * depth).
    """
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_tiles = (depth + tile - 1) // tile
    cdef int64_t *bounds
    cdef real_t *pu
    cdef real_t *pv
    cdef Py_ssize_t c
    cdef int64_t t, i, p, r0, r1, w
    cdef const real_t *pvt
    if n_rows == 0 or indptr[n_rows] == 0:
        return 0
    if depth == 0:
        for p in range(indptr[n_rows]):
            out[p] = 0
        return 0
    if n_threads < 1:
        n_threads = 1
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    pu = <real_t *>_scratch_alloc(depth * n_rows * sizeof(real_t))
    pv = <real_t *>_scratch_alloc(depth * n_cols * sizeof(real_t))
    if bounds == NULL or pu == NULL or pv == NULL:
        free(bounds)
        _scratch_free(pu)
        _scratch_free(pv)
        return -1
    _pack_transposed(depth, n_rows, ut, tile, pu, n_threads)
    _pack_transposed(depth, n_cols, vt, tile, pv, n_threads)
    _balanced_bounds(n_rows, indptr, 1, 1, n_threads, bounds)
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        for t in range(n_tiles):
            w = depth - t * tile
            if w > tile:
                w = tile
            pvt = pv + t * tile * n_cols
            for i in range(r0, r1):
                p = indptr[i]
                _sddmm_row(isa, indptr[i + 1] - p, indices + p, pu + t * tile * n_rows + i * w,
                           pvt, w, out + p, t > 0)
    _scratch_free(pu)
    _scratch_free(pv)
    free(bounds)
    return 0


cdef public int sk_csr_sddmm_t_f32_i32(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int32_t *indptr, const int32_t *indices, const float *ut, const float *vt,
        float *out, int n_threads) noexcept nogil:
    return _csr_sddmm_t(n_rows, n_cols, depth, indptr, indices, ut, vt, out, n_threads)

cdef public int sk_csr_sddmm_t_f32_i64(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int64_t *indptr, const int64_t *indices, const float *ut, const float *vt,
        float *out, int n_threads) noexcept nogil:
    return _csr_sddmm_t(n_rows, n_cols, depth, indptr, indices, ut, vt, out, n_threads)

cdef public int sk_csr_sddmm_t_f64_i32(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int32_t *indptr, const int32_t *indices, const double *ut, const double *vt,
        double *out, int n_threads) noexcept nogil:
    return _csr_sddmm_t(n_rows, n_cols, depth, indptr, indices, ut, vt, out, n_threads)

cdef public int sk_csr_sddmm_t_f64_i64(int64_t n_rows, int64_t n_cols, int64_t depth,
        const int64_t *indptr, const int64_t *indices, const double *ut, const double *vt,
        double *out, int n_threads) noexcept nogil:
    return _csr_sddmm_t(n_rows, n_cols, depth, indptr, indices, ut, vt, out, n_threads)
