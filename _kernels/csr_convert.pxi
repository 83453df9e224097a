# csr_convert: dense <-> CSR, and canonical form (sorted indices, duplicates summed).


cdef inline bint _keep(real_t x, bint use_threshold, double threshold) noexcept nogil:
    # "not (|x| <= t)" rather than "|x| > t": NaN is kept, so it propagates instead of vanishing.
    if not use_threshold:
        return True
    return not (fabs(<double>x) <= threshold)


cdef void _dense_to_csr_count(int64_t n_rows, int64_t n_cols, const real_t *x,
                              const uint8_t *mask, bint use_threshold, double threshold,
                              int64_t *counts, int n_threads) noexcept nogil:
    """counts[i] = number of kept entries of row i. An entry is kept if mask (nullable) is
    nonzero there and, with use_threshold, not |x| <= threshold. Complexity O(n_rows * n_cols)."""
    cdef Py_ssize_t i
    cdef int64_t j, cnt
    for i in prange(n_rows, nogil=True, schedule='static', num_threads=n_threads):
        cnt = 0
        for j in range(n_cols):
            if (mask == NULL or mask[i * n_cols + j] != 0) and _keep(x[i * n_cols + j], use_threshold, threshold):
                cnt = cnt + 1
        counts[i] = cnt


cdef void _dense_to_csr_fill(int64_t n_rows, int64_t n_cols, const real_t *x,
                             const uint8_t *mask, bint use_threshold, double threshold,
                             const index_t *indptr, index_t *indices, real_t *data,
                             int n_threads) noexcept nogil:
    """Fill indices/data of the rows counted by _dense_to_csr_count (indptr = its scan)."""
    cdef Py_ssize_t i
    cdef int64_t j, q
    for i in prange(n_rows, nogil=True, schedule='static', num_threads=n_threads):
        q = indptr[i]
        for j in range(n_cols):
            if (mask == NULL or mask[i * n_cols + j] != 0) and _keep(x[i * n_cols + j], use_threshold, threshold):
                indices[q] = <index_t>j
                data[q] = x[i * n_cols + j]
                q = q + 1


cdef void _csr_to_dense(int64_t n_rows, int64_t n_cols, const index_t *indptr,
                        const index_t *indices, const real_t *data, real_t *out,
                        int n_threads) noexcept nogil:
    """out (zero-filled by the caller) += A; duplicates add up. Complexity O(nnz)."""
    cdef Py_ssize_t i
    cdef int64_t p
    for i in prange(n_rows, nogil=True, schedule='static', num_threads=n_threads):
        for p in range(indptr[i], indptr[i + 1]):
            out[i * n_cols + indices[p]] += data[p]


cdef void _sort_pairs(int64_t n, index_t *idx, real_t *val, index_t *tmp_idx,
                      real_t *tmp_val) noexcept nogil:
    """Stable sort of (idx, val) pairs by idx: insertion sort for short runs, then bottom-up
    merges through the scratch arrays (n entries each). Stable, so duplicates keep their
    storage order and are summed in it."""
    cdef int64_t run = 16
    cdef int64_t s, i, j, width, lo, mid, hi, a, b, k
    cdef index_t ki
    cdef real_t kv
    cdef index_t *src_i = idx
    cdef real_t *src_v = val
    cdef index_t *dst_i = tmp_idx
    cdef real_t *dst_v = tmp_val
    cdef index_t *swap_i
    cdef real_t *swap_v
    s = 0
    while s < n:
        hi = s + run
        if hi > n:
            hi = n
        for i in range(s + 1, hi):
            ki = idx[i]
            kv = val[i]
            j = i - 1
            while j >= s and idx[j] > ki:
                idx[j + 1] = idx[j]
                val[j + 1] = val[j]
                j -= 1
            idx[j + 1] = ki
            val[j + 1] = kv
        s = hi
    width = run
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width
            if mid > n:
                mid = n
            hi = lo + 2 * width
            if hi > n:
                hi = n
            a = lo
            b = mid
            k = lo
            while a < mid and b < hi:
                if src_i[b] < src_i[a]:
                    dst_i[k] = src_i[b]
                    dst_v[k] = src_v[b]
                    b += 1
                else:
                    dst_i[k] = src_i[a]
                    dst_v[k] = src_v[a]
                    a += 1
                k += 1
            while a < mid:
                dst_i[k] = src_i[a]
                dst_v[k] = src_v[a]
                a += 1
                k += 1
            while b < hi:
                dst_i[k] = src_i[b]
                dst_v[k] = src_v[b]
                b += 1
                k += 1
            lo = hi
        swap_i = src_i
        src_i = dst_i
        dst_i = swap_i
        swap_v = src_v
        src_v = dst_v
        dst_v = swap_v
        width *= 2
    if src_i != idx:
        memcpy(idx, src_i, n * sizeof(index_t))
        memcpy(val, src_v, n * sizeof(real_t))


cdef void _csr_sort_rows(int64_t n_rows, const index_t *indptr, index_t *idx, real_t *val,
                         index_t *tmp_idx, real_t *tmp_val, int64_t *counts,
                         int n_threads) noexcept nogil:
    """Sort every row of (idx, val) in place (copies of the input) and count each row's
    distinct indices into counts. Complexity O(nnz log(row length))."""
    cdef Py_ssize_t i
    cdef int64_t p0, n, p, cnt
    for i in prange(n_rows, nogil=True, schedule='guided', num_threads=n_threads):
        p0 = indptr[i]
        n = indptr[i + 1] - p0
        _sort_pairs(n, idx + p0, val + p0, tmp_idx + p0, tmp_val + p0)
        cnt = 0
        for p in range(n):
            if p == 0 or idx[p0 + p] != idx[p0 + p - 1]:
                cnt = cnt + 1
        counts[i] = cnt


cdef void _csr_merge_duplicates(int64_t n_rows, const index_t *indptr, const index_t *idx,
                                const real_t *val, const index_t *out_indptr,
                                index_t *out_indices, real_t *out_data,
                                int n_threads) noexcept nogil:
    """Write sorted rows with equal neighbours summed (left to right) into the output CSR."""
    cdef Py_ssize_t i
    cdef int64_t p, q
    for i in prange(n_rows, nogil=True, schedule='guided', num_threads=n_threads):
        q = out_indptr[i] - 1
        for p in range(indptr[i], indptr[i + 1]):
            if p == indptr[i] or idx[p] != idx[p - 1]:
                q = q + 1
                out_indices[q] = idx[p]
                out_data[q] = val[p]
            else:
                out_data[q] = out_data[q] + val[p]
