# csr_transpose: CSR of A^T (= CSC of A), parallel counting sort.


cdef int _csr_transpose(int64_t n_rows, int64_t n_cols, const index_t *indptr,
                        const index_t *indices, const real_t *data, index_t *out_indptr,
                        index_t *out_indices, real_t *out_data, int64_t *out_perm,
                        int n_threads) noexcept nogil:
    """CSR of A^T. Each thread counts the columns of its row range, an exclusive scan over
    (column, thread) gives every thread its own write cursor per column, then each thread
    scatters its rows in order: output rows list source rows in increasing order, for any
    thread count. out_perm (nullable) gets the source position of every output entry;
    out_data may be NULL (data is then not read) to transpose the structure only.
    Scratch: n_threads * n_cols int64. Complexity O(nnz + n_cols * n_threads).
    """
    cdef int64_t nnz = indptr[n_rows]
    cdef int64_t *cursor
    cdef int64_t *bounds
    cdef Py_ssize_t c
    cdef int64_t i, p, q, j, pos, cnt, r0, r1
    cdef int cc
    if n_threads < 1:
        n_threads = 1
    if nnz < 100000:
        n_threads = 1
    cursor = <int64_t *>calloc(n_threads * n_cols + 1, sizeof(int64_t))
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    if cursor == NULL or bounds == NULL:
        free(cursor)
        free(bounds)
        return -1
    _balanced_bounds(n_rows, indptr, 1, 1, n_threads, bounds)
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        for p in range(indptr[bounds[c]], indptr[bounds[c + 1]]):
            cursor[c * n_cols + indices[p]] += 1
    pos = 0
    for j in range(n_cols):
        out_indptr[j] = <index_t>pos
        for cc in range(n_threads):
            cnt = cursor[cc * n_cols + j]
            cursor[cc * n_cols + j] = pos
            pos += cnt
    out_indptr[n_cols] = <index_t>pos
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        for i in range(r0, r1):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                q = cursor[c * n_cols + j]
                cursor[c * n_cols + j] = q + 1
                out_indices[q] = <index_t>i
                if out_data != NULL:
                    out_data[q] = data[p]
                if out_perm != NULL:
                    out_perm[q] = p
    free(cursor)
    free(bounds)
    return 0


cdef public int sk_csr_transpose_f32_i32(int64_t n_rows, int64_t n_cols, const int32_t *indptr,
        const int32_t *indices, const float *data, int32_t *out_indptr, int32_t *out_indices,
        float *out_data, int64_t *out_perm, int n_threads) noexcept nogil:
    return _csr_transpose(n_rows, n_cols, indptr, indices, data, out_indptr, out_indices,
                          out_data, out_perm, n_threads)

cdef public int sk_csr_transpose_f32_i64(int64_t n_rows, int64_t n_cols, const int64_t *indptr,
        const int64_t *indices, const float *data, int64_t *out_indptr, int64_t *out_indices,
        float *out_data, int64_t *out_perm, int n_threads) noexcept nogil:
    return _csr_transpose(n_rows, n_cols, indptr, indices, data, out_indptr, out_indices,
                          out_data, out_perm, n_threads)

cdef public int sk_csr_transpose_f64_i32(int64_t n_rows, int64_t n_cols, const int32_t *indptr,
        const int32_t *indices, const double *data, int32_t *out_indptr, int32_t *out_indices,
        double *out_data, int64_t *out_perm, int n_threads) noexcept nogil:
    return _csr_transpose(n_rows, n_cols, indptr, indices, data, out_indptr, out_indices,
                          out_data, out_perm, n_threads)

cdef public int sk_csr_transpose_f64_i64(int64_t n_rows, int64_t n_cols, const int64_t *indptr,
        const int64_t *indices, const double *data, int64_t *out_indptr, int64_t *out_indices,
        double *out_data, int64_t *out_perm, int n_threads) noexcept nogil:
    return _csr_transpose(n_rows, n_cols, indptr, indices, data, out_indptr, out_indices,
                          out_data, out_perm, n_threads)
