# csr_check: structural validation of CSR arrays, run before any other kernel sees them.

# Error codes of sk_csr_check_*.
CHECK_OK = 0
CHECK_INDPTR_START = 1       # indptr[0] != 0                          (where = 0)
CHECK_INDPTR_END = 2         # indptr[n_rows] != nnz                   (where = n_rows)
CHECK_INDPTR_DECREASING = 3  # indptr[where] < indptr[where - 1]
CHECK_INDEX_RANGE = 4        # indices[where] < 0 or >= n_cols


cdef inline void _minmax(const index_t *a, int64_t n, int64_t *lo, int64_t *hi) noexcept nogil:
    """Min and max of n >= 1 indices (vectorized in sk_simd.h)."""
    if index_t is int32_t:
        sk_minmax_i32(a, n, lo, hi)
    else:
        sk_minmax_i64(a, n, lo, hi)


cdef int _csr_check(int64_t n_rows, int64_t n_cols, int64_t nnz, const index_t *indptr,
                    const index_t *indices, int64_t *where, int n_threads) noexcept nogil:
    """Check a CSR structure.

    indptr: n_rows + 1 entries; indices: nnz entries. Returns 0 or an error code, with *where the
    offending position. The index range is checked as a vectorized min/max over chunks in
    parallel; only a failing structure pays a second, serial scan for the first offender.
    Complexity O(n_rows + nnz).
    """
    cdef int64_t i, p, chunk
    cdef int64_t lo_all, hi_all
    cdef int64_t *lo
    cdef int64_t *hi
    cdef Py_ssize_t c
    cdef int n_parts
    if indptr[0] != 0:
        where[0] = 0
        return 1
    if indptr[n_rows] != nnz:
        where[0] = n_rows
        return 2
    for i in range(n_rows):
        if indptr[i + 1] < indptr[i]:
            where[0] = i + 1
            return 3
    if nnz == 0:
        return 0
    n_parts = n_threads if n_threads >= 1 else 1
    if nnz < 1000000:
        n_parts = 1
    lo = <int64_t *>malloc(n_parts * sizeof(int64_t))
    hi = <int64_t *>malloc(n_parts * sizeof(int64_t))
    if lo == NULL or hi == NULL:
        free(lo)
        free(hi)
        n_parts = 0  # no scratch: fall through to the serial scan
    else:
        chunk = (nnz + n_parts - 1) // n_parts
        for c in prange(n_parts, nogil=True, schedule='static', chunksize=1, num_threads=n_parts):
            _minmax(indices + c * chunk, min(chunk, nnz - c * chunk), lo + c, hi + c)
        lo_all = lo[0]
        hi_all = hi[0]
        for c in range(1, n_parts):
            lo_all = min(lo_all, lo[c])
            hi_all = max(hi_all, hi[c])
        free(lo)
        free(hi)
        if lo_all >= 0 and hi_all < n_cols:
            return 0
    for p in range(nnz):
        if indices[p] < 0 or indices[p] >= n_cols:
            where[0] = p
            return 4
    return 0


cdef public int sk_csr_check_i32(int64_t n_rows, int64_t n_cols, int64_t nnz,
                                 const int32_t *indptr, const int32_t *indices,
                                 int64_t *where, int n_threads) noexcept nogil:
    return _csr_check(n_rows, n_cols, nnz, indptr, indices, where, n_threads)


cdef public int sk_csr_check_i64(int64_t n_rows, int64_t n_cols, int64_t nnz,
                                 const int64_t *indptr, const int64_t *indices,
                                 int64_t *where, int n_threads) noexcept nogil:
    return _csr_check(n_rows, n_cols, nnz, indptr, indices, where, n_threads)
