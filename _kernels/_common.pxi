# Shared declarations: fused types, the SIMD inner loops of sk_simd.h, partitioning, threads.

ctypedef fused real_t:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

cdef extern from "sk_simd.h" nogil:
    enum:
        SK_ISA_AVX512
    int sk_isa()
    int sk_isa_detect()
    int sk_isa_force(int level)
    int64_t sk_tile_f32()
    int64_t sk_tile_f64()
    void sk_spmm_row_f32_i32(int isa, int64_t nnz, const int32_t *idx, const float *val,
                             const float *panel, int64_t ldp, int64_t w, float *out, int64_t os)
    void sk_spmm_row_f32_i64(int isa, int64_t nnz, const int64_t *idx, const float *val,
                             const float *panel, int64_t ldp, int64_t w, float *out, int64_t os)
    void sk_spmm_row_f64_i32(int isa, int64_t nnz, const int32_t *idx, const double *val,
                             const double *panel, int64_t ldp, int64_t w, double *out, int64_t os)
    void sk_spmm_row_f64_i64(int isa, int64_t nnz, const int64_t *idx, const double *val,
                             const double *panel, int64_t ldp, int64_t w, double *out, int64_t os)
    float sk_dot_gather_f32_i32(int64_t nnz, const int32_t *idx, const float *val, const float *x, int64_t incx)
    float sk_dot_gather_f32_i64(int64_t nnz, const int64_t *idx, const float *val, const float *x, int64_t incx)
    double sk_dot_gather_f64_i32(int64_t nnz, const int32_t *idx, const double *val, const double *x, int64_t incx)
    double sk_dot_gather_f64_i64(int64_t nnz, const int64_t *idx, const double *val, const double *x, int64_t incx)
    void sk_sddmm_row_f32_i32(int isa, int64_t nnz, const int32_t *idx, const float *u,
                              const float *panel, int64_t w, float *out, int accumulate)
    void sk_sddmm_row_f32_i64(int isa, int64_t nnz, const int64_t *idx, const float *u,
                              const float *panel, int64_t w, float *out, int accumulate)
    void sk_sddmm_row_f64_i32(int isa, int64_t nnz, const int32_t *idx, const double *u,
                              const double *panel, int64_t w, double *out, int accumulate)
    void sk_sddmm_row_f64_i64(int isa, int64_t nnz, const int64_t *idx, const double *u,
                              const double *panel, int64_t w, double *out, int accumulate)
    void sk_minmax_i32(const int32_t *a, int64_t n, int64_t *lo, int64_t *hi)
    void sk_minmax_i64(const int64_t *a, int64_t n, int64_t *lo, int64_t *hi)
    void sk_axpy_rows_f32_i32(int isa, int64_t nnz, const int32_t *idx, const float *val,
                              const float *xv, int64_t w, float *out)
    void sk_axpy_rows_f32_i64(int isa, int64_t nnz, const int64_t *idx, const float *val,
                              const float *xv, int64_t w, float *out)
    void sk_axpy_rows_f64_i32(int isa, int64_t nnz, const int32_t *idx, const double *val,
                              const double *xv, int64_t w, double *out)
    void sk_axpy_rows_f64_i64(int isa, int64_t nnz, const int64_t *idx, const double *val,
                              const double *xv, int64_t w, double *out)
    float sk_dot_f32_any(int isa, int64_t n, const float *a, const float *b)
    double sk_dot_f64_any(int isa, int64_t n, const double *a, const double *b)

# Work (multiply-adds) below which a kernel runs on one thread: an OpenMP fork/join costs about
# 10 us here, the time of ~1e5 multiply-adds on one core.
cdef int64_t SK_PARALLEL_MIN_WORK = 200000
cdef int _sk_num_threads = 1
cdef int _sk_num_threads_set = 0


cdef public int sk_get_num_threads() noexcept nogil:
    """The thread count set by sparsekeras.set_num_threads (or its default)."""
    return _sk_num_threads


cdef public int sk_num_threads_is_set() noexcept nogil:
    """1 if the user chose the thread count (set_num_threads), 0 for the default."""
    return _sk_num_threads_set


cdef public int sk_threads_for_work(int64_t work) noexcept nogil:
    """Threads to use for a kernel call doing `work` multiply-adds: 1 below the threshold."""
    if work < SK_PARALLEL_MIN_WORK:
        return 1
    return _sk_num_threads


cdef public int sk_kernels_isa() noexcept nogil:
    return sk_isa()


cdef inline int64_t _tile(real_t *dummy) noexcept nogil:
    if real_t is float:
        return sk_tile_f32()
    else:
        return sk_tile_f64()


cdef inline void _spmm_row(int isa, int64_t nnz, const index_t *idx, const real_t *val,
                           const real_t *panel, int64_t ldp, int64_t w, real_t *out,
                           int64_t os) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            sk_spmm_row_f32_i32(isa, nnz, idx, val, panel, ldp, w, out, os)
        else:
            sk_spmm_row_f32_i64(isa, nnz, idx, val, panel, ldp, w, out, os)
    else:
        if index_t is int32_t:
            sk_spmm_row_f64_i32(isa, nnz, idx, val, panel, ldp, w, out, os)
        else:
            sk_spmm_row_f64_i64(isa, nnz, idx, val, panel, ldp, w, out, os)


cdef inline void _sddmm_row(int isa, int64_t nnz, const index_t *idx, const real_t *u,
                            const real_t *panel, int64_t w, real_t *out,
                            int accumulate) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            sk_sddmm_row_f32_i32(isa, nnz, idx, u, panel, w, out, accumulate)
        else:
            sk_sddmm_row_f32_i64(isa, nnz, idx, u, panel, w, out, accumulate)
    else:
        if index_t is int32_t:
            sk_sddmm_row_f64_i32(isa, nnz, idx, u, panel, w, out, accumulate)
        else:
            sk_sddmm_row_f64_i64(isa, nnz, idx, u, panel, w, out, accumulate)


cdef inline void _axpy_rows(int isa, int64_t nnz, const index_t *idx, const real_t *val,
                            const real_t *xv, int64_t w, real_t *out) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            sk_axpy_rows_f32_i32(isa, nnz, idx, val, xv, w, out)
        else:
            sk_axpy_rows_f32_i64(isa, nnz, idx, val, xv, w, out)
    else:
        if index_t is int32_t:
            sk_axpy_rows_f64_i32(isa, nnz, idx, val, xv, w, out)
        else:
            sk_axpy_rows_f64_i64(isa, nnz, idx, val, xv, w, out)


cdef inline real_t _dot_gather(int64_t nnz, const index_t *idx, const real_t *val,
                               const real_t *x, int64_t incx) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            return sk_dot_gather_f32_i32(nnz, idx, val, x, incx)
        else:
            return sk_dot_gather_f32_i64(nnz, idx, val, x, incx)
    else:
        if index_t is int32_t:
            return sk_dot_gather_f64_i32(nnz, idx, val, x, incx)
        else:
            return sk_dot_gather_f64_i64(nnz, idx, val, x, incx)


cdef inline real_t _dot(int isa, int64_t n, const real_t *a, const real_t *b) noexcept nogil:
    if real_t is float:
        return sk_dot_f32_any(isa, n, a, b)
    else:
        return sk_dot_f64_any(isa, n, a, b)


cdef extern from "sk_simd.h" nogil:
    void sk_transpose_f32(int isa, const float *src, int64_t lds, float *dst, int64_t ldd,
                          int64_t rows, int64_t cols)
    void sk_transpose_f64(int isa, const double *src, int64_t lds, double *dst, int64_t ldd,
                          int64_t rows, int64_t cols)


cdef extern from "sk_simd.h" nogil:
    void sk_transpose_store_f32(int isa, const float *src, int64_t lds, float *dst, int64_t ldd,
                                int64_t rows, int64_t cols)
    void sk_transpose_store_f64(int isa, const double *src, int64_t lds, double *dst,
                                int64_t ldd, int64_t rows, int64_t cols)
    int sk_transpose_store_epi_f32(int isa, const float *src, int64_t lds, float *dst,
                                   int64_t ldd, int64_t rows, int64_t cols, const float *bias,
                                   int act)


cdef inline void _transpose_store(int isa, const real_t *src, int64_t lds, real_t *dst,
                                  int64_t ldd, int64_t rows, int64_t cols) noexcept nogil:
    """dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols: the batch-major store of a
    block of output features (rows) by a batch tile (cols). 16 x 16 register transposes writing
    whole 64-byte runs (AVX-512 float32), else a scalar loop."""
    if real_t is float:
        sk_transpose_store_f32(isa, src, lds, dst, ldd, rows, cols)
    else:
        sk_transpose_store_f64(isa, src, lds, dst, ldd, rows, cols)


cdef inline void _transpose(int isa, const real_t *src, int64_t lds, real_t *dst, int64_t ldd,
                            int64_t rows, int64_t cols) noexcept nogil:
    """dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols: 8 x 8 register transposes
    (AVX2 and up) for float32; the panel packing and transposed stores of every product."""
    if real_t is float:
        sk_transpose_f32(isa, src, lds, dst, ldd, rows, cols)
    else:
        sk_transpose_f64(isa, src, lds, dst, ldd, rows, cols)


cdef void _balanced_bounds(int64_t n_rows, const index_t *indptr, int64_t nnz_weight,
                           int64_t row_cost, int n_parts, int64_t *bounds) noexcept nogil:
    """Split rows [0, n_rows) into n_parts contiguous ranges of about equal cost.

    Cost of rows [0, i) is nnz_weight * indptr[i] + row_cost * i (monotone in i), so the split is
    a binary search per part. bounds: n_parts + 1 entries, bounds[0] = 0, bounds[n_parts] = n_rows.
    Balancing by nonzeros, not rows, keeps threads even when row lengths are skewed.
    """
    cdef int64_t total = nnz_weight * <int64_t>indptr[n_rows] + row_cost * n_rows
    cdef int64_t target, lo, hi, mid
    cdef int c
    bounds[0] = 0
    for c in range(1, n_parts):
        target = (total * c) // n_parts
        lo = bounds[c - 1]
        hi = n_rows
        while lo < hi:
            mid = (lo + hi) // 2
            if nnz_weight * <int64_t>indptr[mid] + row_cost * mid < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[c] = lo
    bounds[n_parts] = n_rows


cdef extern from "sk_scratch.h" nogil:
    void *sk_scratch_alloc(size_t nbytes)
    void sk_scratch_free(void *p)
    void sk_scratch_release()


cdef inline void *_scratch_alloc(size_t nbytes) noexcept nogil:
    """A 64-byte aligned buffer for packed panels and accumulators, from the calling thread's
    cache (sk_scratch.h); return it with _scratch_free. Small arrays use malloc / free."""
    return sk_scratch_alloc(nbytes)


cdef inline void _scratch_free(void *p) noexcept nogil:
    sk_scratch_free(p)
