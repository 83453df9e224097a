# take: out[p] = params[idx[p]], the value gathers of the gradients and layers (parallel, with
# software prefetch; see sk_take in sk_simd.h).

cdef extern from "sk_simd.h" nogil:
    int64_t sk_take_f32_i32(int64_t n_params, int64_t n, const int32_t *idx, const float *params,
                            float *out)
    int64_t sk_take_f32_i64(int64_t n_params, int64_t n, const int64_t *idx, const float *params,
                            float *out)
    int64_t sk_take_f64_i32(int64_t n_params, int64_t n, const int32_t *idx, const double *params,
                            double *out)
    int64_t sk_take_f64_i64(int64_t n_params, int64_t n, const int64_t *idx, const double *params,
                            double *out)

# Entries per work item of the parallel take (a chunk's reads overlap through the prefetches).
cdef int64_t SK_TAKE_CHUNK = 16384


cdef inline int64_t _take_run(int64_t n_params, int64_t n, const index_t *idx,
                              const real_t *params, real_t *out) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            return sk_take_f32_i32(n_params, n, idx, params, out)
        else:
            return sk_take_f32_i64(n_params, n, idx, params, out)
    else:
        if index_t is int32_t:
            return sk_take_f64_i32(n_params, n, idx, params, out)
        else:
            return sk_take_f64_i64(n_params, n, idx, params, out)


cdef int64_t _take(int64_t n_params, int64_t n, const index_t *idx, const real_t *params,
                   real_t *out, int n_threads) noexcept nogil:
    """out[p] = params[idx[p]]. Returns -1, or the first p whose index is outside
    [0, n_params) (out is then undefined), or -2 if scratch memory could not be allocated.
    Complexity O(n), random reads of params."""
    cdef int64_t n_chunks = (n + SK_TAKE_CHUNK - 1) // SK_TAKE_CHUNK
    cdef int64_t bad = -1
    cdef int64_t *first
    cdef Py_ssize_t c
    cdef int64_t p0, m, r, t
    if n_threads < 1 or n < 4 * SK_TAKE_CHUNK:
        n_threads = 1
    if n_threads == 1:
        return _take_run(n_params, n, idx, params, out)
    first = <int64_t *>malloc(n_chunks * sizeof(int64_t))
    if first == NULL:
        return -2
    for c in prange(n_chunks, nogil=True, schedule='static', num_threads=n_threads):
        p0 = c * SK_TAKE_CHUNK
        m = n - p0
        if m > SK_TAKE_CHUNK:
            m = SK_TAKE_CHUNK
        r = _take_run(n_params, m, idx + p0, params, out + p0)
        if r >= 0:
            r = r + p0
        first[c] = r
    for t in range(n_chunks):
        if first[t] >= 0:
            bad = first[t]
            break
    free(first)
    return bad


cdef public int64_t sk_take_values_f32_i32(int64_t n_params, int64_t n, const int32_t *idx,
        const float *params, float *out, int n_threads) noexcept nogil:
    return _take(n_params, n, idx, params, out, n_threads)

cdef public int64_t sk_take_values_f32_i64(int64_t n_params, int64_t n, const int64_t *idx,
        const float *params, float *out, int n_threads) noexcept nogil:
    return _take(n_params, n, idx, params, out, n_threads)

cdef public int64_t sk_take_values_f64_i32(int64_t n_params, int64_t n, const int32_t *idx,
        const double *params, double *out, int n_threads) noexcept nogil:
    return _take(n_params, n, idx, params, out, n_threads)

cdef public int64_t sk_take_values_f64_i64(int64_t n_params, int64_t n, const int64_t *idx,
        const double *params, double *out, int n_threads) noexcept nogil:
    return _take(n_params, n, idx, params, out, n_threads)
