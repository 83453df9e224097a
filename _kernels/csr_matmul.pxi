# csr_matmul: sparse x dense products, both orientations.
#
# Both reduce to one row-panel SpMM: for each CSR row i and each column tile t of a dense panel,
#   out[i, t*tile + j] = sum_p data[p] * panel_t[indices[p], j]        (j < width of tile t),
# with a tile of the output row held in vector registers while the row's nonzeros stream by.
# The dense operand is packed into column panels of `tile` columns (K x tile, contiguous), so
# one panel (K * tile * sizeof(T) bytes: 1 MiB at K=4096, float32, AVX2) stays in L2 while
# every row of the thread's partition reuses it. Threads own contiguous row ranges balanced
# by nonzeros (+ a per-row cost); each output element is one FMA chain in storage order.


cdef enum:
    SK_ROW_GROUP = 16   # rows buffered before a transposed store (one cache line of float32)

# The epilogue of the x @ W products (a Dense layer's bias and activation, fused into the
# output store): act is one of these (defined in the C API header).
cdef extern from "sparsekeras_kernels.h":
    enum:
        SK_ACT_LINEAR
        SK_ACT_RELU
        SK_ACT_GELU
        SK_ACT_RELU6

cdef extern from "sk_simd.h" nogil:
    float sk_gelu_f32(float v)
    double sk_gelu_f64(double v)


cdef inline real_t _gelu(real_t v) noexcept nogil:
    if real_t is float:
        return sk_gelu_f32(v)
    else:
        return sk_gelu_f64(v)


cdef inline void _bias_act_rows(real_t *buf, int64_t rows, int64_t w, const real_t *bias,
                                int act) noexcept nogil:
    _bias_act_block(buf, rows, w, w, bias, act)


cdef inline void _bias_act_block(real_t *buf, int64_t rows, int64_t ld, int64_t w,
                                 const real_t *bias, int act) noexcept nogil:
    """buf (rows x w, row r = output feature r at buf + r * ld) <- act(buf + bias[r]) in place: the epilogue,
    applied to the buffered rows (in L1) before their transposed store. bias may be NULL (no
    bias); act SK_ACT_LINEAR, SK_ACT_RELU, SK_ACT_GELU or SK_ACT_RELU6. The same float
    operations, in the same order, as TensorFlow's BiasAdd then Relu / Relu6 (a NaN stays NaN);
    GELU as sk_gelu_*."""
    cdef int64_t r, j
    cdef real_t bv, v
    cdef real_t *row
    # one branch-free loop per case, so that the compiler vectorizes each
    for r in range(rows):
        row = buf + r * ld
        if bias != NULL and act == SK_ACT_GELU:
            bv = bias[r]
            for j in range(w):
                row[j] = _gelu(row[j] + bv)
        elif act == SK_ACT_GELU:
            for j in range(w):
                row[j] = _gelu(row[j])
        elif bias != NULL and act == SK_ACT_RELU:
            bv = bias[r]
            for j in range(w):
                v = row[j] + bv
                row[j] = 0 if v < 0 else v
        elif bias != NULL and act == SK_ACT_RELU6:
            bv = bias[r]
            for j in range(w):
                v = row[j] + bv
                v = 0 if v < 0 else v
                row[j] = 6 if v > 6 else v
        elif act == SK_ACT_RELU6:
            for j in range(w):
                v = row[j]
                v = 0 if v < 0 else v
                row[j] = 6 if v > 6 else v
        elif bias != NULL:
            bv = bias[r]
            for j in range(w):
                row[j] = row[j] + bv
        elif act == SK_ACT_RELU:
            for j in range(w):
                v = row[j]
                row[j] = 0 if v < 0 else v


cdef inline void _store_rows(int isa, real_t *buf, int64_t rows, int64_t w, const real_t *bias,
                             int act, real_t *dst, int64_t ldd) noexcept nogil:
    """The epilogue (see _bias_act_rows) and the transposed store of buf (rows x w) into dst
    (dst[j * ldd + i] = act(buf[i * w + j] + bias[i])). AVX-512 float32: both in registers,
    after each 16 x 16 transpose (a separate pass over buf, compiled for baseline x86-64, cost
    as much as TensorFlow's own BiasAdd and Relu ops)."""
    if real_t is float:
        if sk_transpose_store_epi_f32(isa, buf, w, dst, ldd, rows, w, bias, act):
            return
    _bias_act_rows(buf, rows, w, bias, act)
    _transpose_store(isa, buf, w, dst, ldd, rows, w)


cdef inline real_t _bias_act1(real_t v, const real_t *bias, int64_t col, int act) noexcept nogil:
    """The epilogue of one output element of column col (see _bias_act_rows)."""
    if bias != NULL:
        v = v + bias[col]
    if act == SK_ACT_RELU and v < 0:
        v = 0
    elif act == SK_ACT_GELU:
        v = _gelu(v)
    elif act == SK_ACT_RELU6:
        v = 0 if v < 0 else v
        v = 6 if v > 6 else v
    return v


cdef void _spmm_panels(int64_t n_rows, int64_t k, int64_t width, const index_t *indptr,
                       const index_t *indices, const real_t *data, const real_t *panels,
                       int64_t tile, bint packed, const real_t *bias, int act, real_t *out,
                       int64_t row_stride, int64_t col_stride, real_t *scratch,
                       const int64_t *bounds, int n_parts) noexcept nogil:
    """Row-panel SpMM over column panels of the dense operand.

    packed: panel t (columns [t*tile, t*tile + w_t)) at panels + t*tile*k, row stride w_t;
    not packed: the dense operand as it is (k x width, row-major): panel t at panels + t*tile,
    row stride width.
    out element (i, col) is written at out[i * row_stride + col * col_stride].
    When col_stride != 1 (a transposed output, row_stride == 1), each thread computes
    SK_ROW_GROUP rows into its scratch block (n_parts * SK_ROW_GROUP * tile entries) and writes
    them out column by column: SK_ROW_GROUP consecutive elements per store run instead of one
    element per cache line; there the epilogue (bias: one entry per row, or NULL; act) is applied
    to the buffered rows before the store (direct stores: to each row's tile as it is stored).
    Complexity O(nnz * width).
    """
    cdef int isa = sk_isa()
    cdef int64_t n_tiles = (width + tile - 1) // tile
    cdef Py_ssize_t c
    cdef int64_t t, i, w, r0, r1, p0, g0, g, r, ldp
    cdef real_t *buf
    cdef const real_t *pt
    for c in prange(n_parts, nogil=True, schedule='static', chunksize=1, num_threads=n_parts):
        r0 = bounds[c]
        r1 = bounds[c + 1]
        buf = scratch + c * SK_ROW_GROUP * tile
        for t in range(n_tiles):
            w = width - t * tile
            if w > tile:
                w = tile
            if packed:
                pt = panels + t * tile * k
                ldp = w
            else:
                pt = panels + t * tile
                ldp = width
            if col_stride == 1:
                for i in range(r0, r1):
                    p0 = indptr[i]
                    _spmm_row(isa, indptr[i + 1] - p0, indices + p0, data + p0,
                              pt, ldp, w, out + i * row_stride + t * tile, 1)
                    # (x @ W with a single output column stores directly too)
                    _bias_act_rows(out + i * row_stride + t * tile, 1, w,
                                   bias + i if bias != NULL else NULL, act)
            else:
                g0 = r0
                while g0 < r1:
                    g = r1 - g0
                    if g > SK_ROW_GROUP:
                        g = SK_ROW_GROUP
                    for r in range(g):
                        p0 = indptr[g0 + r]
                        _spmm_row(isa, indptr[g0 + r + 1] - p0, indices + p0, data + p0,
                                  pt, ldp, w, buf + r * w, 1)
                    # g output rows x w batch columns, stored transposed by register tiles
                    _store_rows(isa, buf, g, w, bias + g0 if bias != NULL else NULL, act,
                                out + t * tile * col_stride + g0, col_stride)
                    g0 = g0 + g


cdef void _pack_columns(int64_t k, int64_t n, const real_t *b, int64_t tile, real_t *panels,
                        int n_threads) noexcept nogil:
    """Copy b (k x n, row-major) into column panels: panel t holds b[:, t*tile : t*tile + w_t]."""
    cdef int64_t n_tiles = (n + tile - 1) // tile
    cdef Py_ssize_t r
    cdef int64_t t, w
    for r in prange(k, nogil=True, schedule='static', num_threads=n_threads):
        for t in range(n_tiles):
            w = n - t * tile
            if w > tile:
                w = tile
            memcpy(panels + t * tile * k + r * w, b + r * n + t * tile, w * sizeof(real_t))


cdef void _pack_transposed(int64_t m, int64_t k, const real_t *x, int64_t tile, real_t *panels,
                           int n_threads) noexcept nogil:
    """Pack x^T (x is m x k, row-major) into panels: panel t holds x[t*tile : t*tile + w_t, :]^T
    as a k x w_t row-major block. Blocked over k so reads and writes both stay in cache."""
    cdef int isa = sk_isa()
    cdef int64_t n_tiles = (m + tile - 1) // tile
    cdef int64_t kb = 64
    cdef int64_t n_kblocks = (k + kb - 1) // kb
    cdef Py_ssize_t blk
    cdef int64_t t, w, k0, k1
    for blk in prange(n_tiles * n_kblocks, nogil=True, schedule='static', num_threads=n_threads):
        t = blk // n_kblocks
        k0 = (blk % n_kblocks) * kb
        k1 = k0 + kb
        if k1 > k:
            k1 = k
        w = m - t * tile
        if w > tile:
            w = tile
        if real_t is float and isa == SK_ISA_AVX512:  # 16 x 16 tiles, whole 64-byte runs
            _transpose_store(isa, x + t * tile * k + k0, k, panels + t * tile * k + k0 * w, w,
                             w, k1 - k0)
        else:
            _transpose(isa, x + t * tile * k + k0, k, panels + t * tile * k + k0 * w, w, w,
                       k1 - k0)


cdef int _csr_matmul(int64_t n_rows, int64_t n_cols, int64_t n_out, const index_t *indptr,
                     const index_t *indices, const real_t *data, const real_t *b, real_t *out,
                     int n_threads) noexcept nogil:
    """out (n_rows x n_out) = A (n_rows x n_cols, CSR) @ b (n_cols x n_out, row-major)."""
    cdef int64_t tile = _tile(out)
    cdef int64_t i
    cdef Py_ssize_t ii
    cdef int64_t *bounds
    cdef real_t *panels = NULL
    if n_rows == 0 or n_out == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    if n_out == 1:
        for ii in prange(n_rows, nogil=True, schedule='guided', num_threads=n_threads):
            out[ii] = _dot_gather(indptr[ii + 1] - indptr[ii], indices + indptr[ii],
                                  data + indptr[ii], b, 1)
        return 0
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    if bounds == NULL:
        return -1
    _balanced_bounds(n_rows, indptr, 1, 4, n_threads, bounds)
    # Packing b into column panels copies all of b; it pays only when b's rows are reused
    # (nnz >= 2 n_cols). A bag-of-words batch touches few of b's rows: read b in place.
    if n_out > tile and indptr[n_rows] >= 2 * n_cols:
        panels = <real_t *>_scratch_alloc(n_cols * n_out * sizeof(real_t))
        if panels == NULL:
            free(bounds)
            return -1
        _pack_columns(n_cols, n_out, b, tile, panels, n_threads)
    _spmm_panels(n_rows, n_cols, n_out, indptr, indices, data,
                 panels if panels != NULL else b, tile, panels != NULL, NULL, SK_ACT_LINEAR, out,
                 n_out, 1, NULL, bounds, n_threads)
    _scratch_free(panels)
    free(bounds)
    return 0


cdef int _dense_csc_matmul(int64_t n_rows, int64_t n_inner, int64_t n_cols, const index_t *indptr,
                           const index_t *indices, const real_t *data, const real_t *x,
                           const real_t *bias, int act, real_t *out,
                           int n_threads) noexcept nogil:
    """out (n_rows x n_cols) = act(x (n_rows x n_inner) @ W + bias), W (n_inner x n_cols) in CSC
    form; bias (n_cols) may be NULL, act SK_ACT_LINEAR or SK_ACT_RELU (the epilogue is applied
    to each output tile in cache, before its store: no second pass over out).

    CSC of W is CSR of W^T, so out^T = W^T @ x^T: the row-panel SpMM over W^T's rows with x^T
    packed in panels of `tile` batch rows; each output row n is scattered into column n of out.
    """
    cdef int64_t tile = _tile(out)
    cdef Py_ssize_t nn
    cdef int64_t *bounds
    cdef real_t *panels
    cdef real_t *scratch
    if n_rows == 0 or n_cols == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    if n_rows == 1:
        for nn in prange(n_cols, nogil=True, schedule='guided', num_threads=n_threads):
            out[nn] = _bias_act1(_dot_gather(indptr[nn + 1] - indptr[nn], indices + indptr[nn],
                                             data + indptr[nn], x, 1), bias, nn, act)
        return 0
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    if bounds == NULL:
        return -1
    panels = <real_t *>_scratch_alloc(n_inner * n_rows * sizeof(real_t))
    scratch = <real_t *>_scratch_alloc(n_threads * SK_ROW_GROUP * tile * sizeof(real_t))
    if panels == NULL or scratch == NULL:
        _scratch_free(panels)
        _scratch_free(scratch)
        free(bounds)
        return -1
    _balanced_bounds(n_cols, indptr, 1, 4, n_threads, bounds)
    _pack_transposed(n_rows, n_inner, x, tile, panels, n_threads)
    _spmm_panels(n_cols, n_inner, n_rows, indptr, indices, data, panels, tile, True, bias, act,
                 out, 1, n_cols, scratch, bounds, n_threads)
    _scratch_free(scratch)
    _scratch_free(panels)
    free(bounds)
    return 0


cdef void _sum_parts_transposed(const real_t *acc, int n_parts, int64_t part_size,
                                int64_t n_rows, int64_t width, int64_t tile, real_t *out,
                                int n_threads) noexcept nogil:
    """The last step of the scatter products: out (n_rows x width) = the sum, in part order, of
    n_parts accumulator panels (part q at acc + q * part_size; batch tile t of a part is a
    width x w_t block at t * tile * width, row k holding out[t * tile + j, k] at k * w_t + j),
    stored transposed 16 consecutive columns of out per store run."""
    cdef int64_t n_tiles = (n_rows + tile - 1) // tile
    cdef int64_t kb = 16
    cdef int64_t n_kblocks = (width + kb - 1) // kb
    cdef Py_ssize_t blk
    cdef int64_t t, k0, k1, w, j, k, q
    cdef real_t ssum
    for blk in prange(n_tiles * n_kblocks, nogil=True, schedule='static', num_threads=n_threads):
        t = blk // n_kblocks
        k0 = (blk % n_kblocks) * kb
        k1 = k0 + kb
        if k1 > width:
            k1 = width
        w = n_rows - t * tile
        if w > tile:
            w = tile
        for j in range(w):
            for k in range(k0, k1):
                ssum = acc[t * tile * width + k * w + j]
                for q in range(1, n_parts):
                    ssum = ssum + acc[q * part_size + t * tile * width + k * w + j]
                out[(t * tile + j) * width + k] = ssum


cdef int _dense_csr_matmul(int64_t n_rows, int64_t n_inner, int64_t n_cols, const index_t *indptr,
                           const index_t *indices, const real_t *data, const real_t *x,
                           real_t *out, int n_threads) noexcept nogil:
    """out (n_rows x n_cols) = x (n_rows x n_inner) @ B, B (n_inner x n_cols) in CSR.

    The transposed-kernel product: a Dense layer's dX = dY @ W^T reads W's CSC arrays as the
    CSR of W^T, with no transpose and no gather of values. Each nonzero B[n, k] scatter-adds
    x[:, n] (a packed batch tile held in registers) into row k of an accumulator panel (n_cols x
    tile) that stays in L2. Work items are (batch tile, part of B's rows); with a single batch
    tile B's rows are split into 2 nnz-balanced parts (separate accumulators, summed in part
    order), so two threads have work. The part count depends on the shape only: results are
    the same for any thread count. Each accumulator block is zeroed by the thread that fills it.
    Scratch: n_rows * (n_inner + parts * n_cols). Complexity O(nnz * n_rows).
    """
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_tiles = (n_rows + tile - 1) // tile
    cdef int n_parts = 1 if n_tiles >= 2 else 2
    cdef int64_t n_items = n_tiles * n_parts
    cdef int64_t part_size = n_cols * n_rows
    cdef int64_t *bounds
    cdef real_t *panels
    cdef real_t *acc
    cdef Py_ssize_t item
    cdef int64_t t, q, w, n, p0
    cdef real_t *a
    cdef const real_t *xp
    if n_rows == 0 or n_cols == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    bounds = <int64_t *>malloc((n_parts + 1) * sizeof(int64_t))
    panels = <real_t *>_scratch_alloc(n_inner * n_rows * sizeof(real_t))
    acc = <real_t *>_scratch_alloc(n_parts * part_size * sizeof(real_t))
    if bounds == NULL or panels == NULL or acc == NULL:
        free(bounds)
        _scratch_free(panels)
        _scratch_free(acc)
        return -1
    _balanced_bounds(n_inner, indptr, 1, 1, n_parts, bounds)
    _pack_transposed(n_rows, n_inner, x, tile, panels, n_threads)
    for item in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_threads):
        t = item // n_parts
        q = item % n_parts
        w = n_rows - t * tile
        if w > tile:
            w = tile
        a = acc + q * part_size + t * tile * n_cols
        memset(a, 0, w * n_cols * sizeof(real_t))
        xp = panels + t * tile * n_inner
        for n in range(bounds[q], bounds[q + 1]):
            p0 = indptr[n]
            _axpy_rows(isa, indptr[n + 1] - p0, indices + p0, data + p0, xp + n * w, w, a)
    _sum_parts_transposed(acc, n_parts, part_size, n_rows, n_cols, tile, out, n_threads)
    _scratch_free(acc)
    _scratch_free(panels)
    free(bounds)
    return 0


# ---- C API (sparsekeras_kernels.h) --------------------------------------------------------

cdef public int sk_csr_matmul_f32_i32(int64_t n_rows, int64_t n_cols, int64_t n_out,
        const int32_t *indptr, const int32_t *indices, const float *data, const float *b,
        float *out, int n_threads) noexcept nogil:
    return _csr_matmul(n_rows, n_cols, n_out, indptr, indices, data, b, out, n_threads)

cdef public int sk_csr_matmul_f32_i64(int64_t n_rows, int64_t n_cols, int64_t n_out,
        const int64_t *indptr, const int64_t *indices, const float *data, const float *b,
        float *out, int n_threads) noexcept nogil:
    return _csr_matmul(n_rows, n_cols, n_out, indptr, indices, data, b, out, n_threads)

cdef public int sk_csr_matmul_f64_i32(int64_t n_rows, int64_t n_cols, int64_t n_out,
        const int32_t *indptr, const int32_t *indices, const double *data, const double *b,
        double *out, int n_threads) noexcept nogil:
    return _csr_matmul(n_rows, n_cols, n_out, indptr, indices, data, b, out, n_threads)

cdef public int sk_csr_matmul_f64_i64(int64_t n_rows, int64_t n_cols, int64_t n_out,
        const int64_t *indptr, const int64_t *indices, const double *data, const double *b,
        double *out, int n_threads) noexcept nogil:
    return _csr_matmul(n_rows, n_cols, n_out, indptr, indices, data, b, out, n_threads)

cdef public int sk_dense_csc_matmul_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *indptr, const int32_t *indices, const float *data, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, NULL,
                             SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_csc_matmul_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *indptr, const int64_t *indices, const float *data, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, NULL,
                             SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_csc_matmul_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *indptr, const int32_t *indices, const double *data, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, NULL,
                             SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_csc_matmul_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *indptr, const int64_t *indices, const double *data, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, NULL,
                             SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_csr_matmul_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *indptr, const int32_t *indices, const float *data, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _dense_csr_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, out, n_threads)

cdef public int sk_dense_csr_matmul_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *indptr, const int64_t *indices, const float *data, const float *x,
        float *out, int n_threads) noexcept nogil:
    return _dense_csr_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, out, n_threads)

cdef public int sk_dense_csr_matmul_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int32_t *indptr, const int32_t *indices, const double *data, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _dense_csr_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, out, n_threads)

cdef public int sk_dense_csr_matmul_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        const int64_t *indptr, const int64_t *indices, const double *data, const double *x,
        double *out, int n_threads) noexcept nogil:
    return _dense_csr_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, out, n_threads)

cdef public int sk_dense_csc_matmul_bias_act_f32_i32(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, const int32_t *indptr, const int32_t *indices, const float *data, const float *x,
        const float *bias, int act, float *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, bias, act, out,
                             n_threads)

cdef public int sk_dense_csc_matmul_bias_act_f32_i64(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, const int64_t *indptr, const int64_t *indices, const float *data, const float *x,
        const float *bias, int act, float *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, bias, act, out,
                             n_threads)

cdef public int sk_dense_csc_matmul_bias_act_f64_i32(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, const int32_t *indptr, const int32_t *indices, const double *data, const double *x,
        const double *bias, int act, double *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, bias, act, out,
                             n_threads)

cdef public int sk_dense_csc_matmul_bias_act_f64_i64(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, const int64_t *indptr, const int64_t *indices, const double *data, const double *x,
        const double *bias, int act, double *out, int n_threads) noexcept nogil:
    return _dense_csc_matmul(n_rows, n_inner, n_cols, indptr, indices, data, x, bias, act, out,
                             n_threads)
