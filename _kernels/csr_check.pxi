# csr_check: structural validation of CSR arrays, run before any other kernel sees them.

# Error codes of sk_csr_check_*.
CHECK_OK = 0
CHECK_INDPTR_START = 1       # indptr[0] != 0                          (where = 0)
CHECK_INDPTR_END = 2         # indptr[n_rows] != nnz                   (where = n_rows)
CHECK_INDPTR_DECREASING = 3  # indptr[where] < indptr[where - 1]
CHECK_INDEX_RANGE = 4        # indices[where] < 0 or >= n_cols


cdef int _csr_check(int64_t n_rows, int64_t n_cols, int64_t nnz, const index_t *indptr,
                    const index_t *indices, int64_t *where) noexcept nogil:
    """Check a CSR structure.

    indptr: n_rows + 1 entries; indices: nnz entries. Returns 0 or an error code, with *where the
    offending position. Complexity O(n_rows + nnz).
    """
    cdef int64_t i, p
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
    for p in range(nnz):
        if indices[p] < 0 or indices[p] >= n_cols:
            where[0] = p
            return 4
    return 0


cdef public int sk_csr_check_i32(int64_t n_rows, int64_t n_cols, int64_t nnz,
                                 const int32_t *indptr, const int32_t *indices,
                                 int64_t *where) noexcept nogil:
    return _csr_check(n_rows, n_cols, nnz, indptr, indices, where)


cdef public int sk_csr_check_i64(int64_t n_rows, int64_t n_cols, int64_t nnz,
                                 const int64_t *indptr, const int64_t *indices,
                                 int64_t *where) noexcept nogil:
    return _csr_check(n_rows, n_cols, nnz, indptr, indices, where)
