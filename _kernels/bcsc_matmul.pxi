# bcsc_matmul: dense x block-sparse product, the weight stored in 1 x G blocks ("block-CSC").
#
# W (n_inner x n_cols) is cut into groups of G consecutive columns (outputs); a block is one input
# row k of one group, stored when any of its G weights is nonzero. Arrays: indptr (n_cols / G + 1
# entries over groups), indices (one input row per block, in [0, n_inner)), data (G values per
# block, block-major: data[b * G + g] = W[indices[b], q * G + g] for block b of group q). This is
# the CSC kernel with G columns sharing one index list: each packed panel row loaded from L2 feeds
# G accumulators instead of one, so a layer pruned in (1, G) blocks computes at up to G times the
# arithmetic intensity of an unstructured one.

cdef extern from "sk_simd.h" nogil:
    void sk_bspmm_f32_i32(int isa, int64_t nb, const int32_t *idx, const float *val, int64_t vs,
                          int G, const float *panel, int64_t ldp, int64_t w, float *out,
                          int64_t ldo)
    void sk_bspmm_f32_i64(int isa, int64_t nb, const int64_t *idx, const float *val, int64_t vs,
                          int G, const float *panel, int64_t ldp, int64_t w, float *out,
                          int64_t ldo)
    void sk_bspmm_f64_i32(int isa, int64_t nb, const int32_t *idx, const double *val, int64_t vs,
                          int G, const double *panel, int64_t ldp, int64_t w, double *out,
                          int64_t ldo)
    void sk_bspmm_f64_i64(int isa, int64_t nb, const int64_t *idx, const double *val, int64_t vs,
                          int G, const double *panel, int64_t ldp, int64_t w, double *out,
                          int64_t ldo)


cdef extern from "sk_simd.h" nogil:
    int64_t sk_bsddmm_f32_i32(int isa, int64_t nb, const int32_t *idx, const float *xt,
                              const float *y, int G, int64_t depth, float *out,
                              int accumulate)
    int64_t sk_bsddmm_f32_i64(int isa, int64_t nb, const int64_t *idx, const float *xt,
                              const float *y, int G, int64_t depth, float *out,
                              int accumulate)
    int64_t sk_bsddmm_f64_i32(int isa, int64_t nb, const int32_t *idx, const double *xt,
                              const double *y, int G, int64_t depth, double *out,
                              int accumulate)
    int64_t sk_bsddmm_f64_i64(int isa, int64_t nb, const int64_t *idx, const double *xt,
                              const double *y, int G, int64_t depth, double *out,
                              int accumulate)


cdef extern from "sk_simd.h" nogil:
    void sk_bscatter_f32_i32(int isa, int64_t nb, const int32_t *idx, const float *val, int64_t vs,
                             int G, const float *y, int64_t w, float *acc)
    void sk_bscatter_f32_i64(int isa, int64_t nb, const int64_t *idx, const float *val, int64_t vs,
                             int G, const float *y, int64_t w, float *acc)
    void sk_bscatter_f64_i32(int isa, int64_t nb, const int32_t *idx, const double *val,
                             int64_t vs, int G, const double *y, int64_t w, double *acc)
    void sk_bscatter_f64_i64(int isa, int64_t nb, const int64_t *idx, const double *val,
                             int64_t vs, int G, const double *y, int64_t w, double *acc)


cdef inline void _bscatter(int isa, int64_t nb, const index_t *idx, const real_t *val, int64_t vs,
                           int G, const real_t *y, int64_t w, real_t *acc) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            sk_bscatter_f32_i32(isa, nb, idx, val, vs, G, y, w, acc)
        else:
            sk_bscatter_f32_i64(isa, nb, idx, val, vs, G, y, w, acc)
    else:
        if index_t is int32_t:
            sk_bscatter_f64_i32(isa, nb, idx, val, vs, G, y, w, acc)
        else:
            sk_bscatter_f64_i64(isa, nb, idx, val, vs, G, y, w, acc)


cdef inline int64_t _bsddmm(int isa, int64_t nb, const index_t *idx, const real_t *xt,
                            const real_t *y, int G, int64_t depth, real_t *out,
                            int accumulate) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            return sk_bsddmm_f32_i32(isa, nb, idx, xt, y, G, depth, out, accumulate)
        else:
            return sk_bsddmm_f32_i64(isa, nb, idx, xt, y, G, depth, out, accumulate)
    else:
        if index_t is int32_t:
            return sk_bsddmm_f64_i32(isa, nb, idx, xt, y, G, depth, out, accumulate)
        else:
            return sk_bsddmm_f64_i64(isa, nb, idx, xt, y, G, depth, out, accumulate)


cdef inline void _bspmm(int isa, int64_t nb, const index_t *idx, const real_t *val, int64_t vs,
                        int G, const real_t *panel, int64_t ldp, int64_t w, real_t *out,
                        int64_t ldo) noexcept nogil:
    if real_t is float:
        if index_t is int32_t:
            sk_bspmm_f32_i32(isa, nb, idx, val, vs, G, panel, ldp, w, out, ldo)
        else:
            sk_bspmm_f32_i64(isa, nb, idx, val, vs, G, panel, ldp, w, out, ldo)
    else:
        if index_t is int32_t:
            sk_bspmm_f64_i32(isa, nb, idx, val, vs, G, panel, ldp, w, out, ldo)
        else:
            sk_bspmm_f64_i64(isa, nb, idx, val, vs, G, panel, ldp, w, out, ldo)


cdef int _dense_bcsc_matmul(int64_t n_rows, int64_t n_inner, int64_t n_cols, int64_t block,
                            const index_t *indptr, const index_t *indices, const real_t *data,
                            const real_t *x, const real_t *bias, int act, real_t *out,
                            int n_threads) noexcept nogil:
    """out (n_rows x n_cols) = act(x (n_rows x n_inner) @ W + bias), W in block-CSC form (see
    above); bias (n_cols) may be NULL, act SK_ACT_LINEAR or SK_ACT_RELU (applied to each output
    tile in cache, before its store).

    As the CSC kernel: x^T packed in panels of `tile` batch rows; a thread owns a range of groups
    balanced by blocks; per panel, the groups' outputs are buffered (SK_ROW_GROUP rows or one
    group) and stored transposed into out. Complexity O(nblocks * block * n_rows)."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_groups = n_cols // block
    cdef int64_t gpc = SK_ROW_GROUP // block
    cdef int64_t n_tiles = (n_rows + tile - 1) // tile
    cdef Py_ssize_t c, qq
    cdef int64_t q, q0, q1, gq, t, w, j, r, rows, b, g
    cdef int64_t *bounds
    cdef real_t *panels
    cdef real_t *scratch
    cdef real_t *buf
    cdef real_t *o
    cdef const real_t *pt
    cdef real_t acc
    if n_rows == 0 or n_cols == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    if gpc < 1:
        gpc = 1
    if n_rows == 1:
        # One input row: per group, the blocks' G contiguous values scale x[row] into the G
        # outputs (a G-wide vector update per block; the weights are read once, in order).
        for qq in prange(n_groups, nogil=True, schedule='guided', num_threads=n_threads):
            o = out + qq * block
            for g in range(block):
                o[g] = 0
            for b in range(indptr[qq], indptr[qq + 1]):
                acc = x[indices[b]]
                for g in range(block):
                    o[g] = o[g] + data[b * block + g] * acc
            for g in range(block):
                o[g] = _bias_act1(o[g], bias, qq * block + g, act)
        return 0
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    if bounds == NULL:
        return -1
    panels = <real_t *>_scratch_alloc(n_inner * n_rows * sizeof(real_t))
    scratch = <real_t *>_scratch_alloc(n_threads * gpc * block * tile * sizeof(real_t))
    if panels == NULL or scratch == NULL:
        _scratch_free(panels)
        _scratch_free(scratch)
        free(bounds)
        return -1
    _balanced_bounds(n_groups, indptr, block, 4 * block, n_threads, bounds)
    _pack_transposed(n_rows, n_inner, x, tile, panels, n_threads)
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        q0 = bounds[c]
        q1 = bounds[c + 1]
        buf = scratch + c * gpc * block * tile
        for t in range(n_tiles):
            w = n_rows - t * tile
            if w > tile:
                w = tile
            pt = panels + t * tile * n_inner
            q = q0
            while q < q1:
                gq = q1 - q
                if gq > gpc:
                    gq = gpc
                for r in range(gq):
                    _bspmm(isa, indptr[q + r + 1] - indptr[q + r], indices + indptr[q + r],
                           data + indptr[q + r] * block, block, <int>block, pt, w, w,
                           buf + r * block * w, w)
                rows = gq * block
                _store_rows(isa, buf, rows, w, bias + q * block if bias != NULL else NULL, act,
                            out + t * tile * n_cols + q * block, n_cols)
                q = q + gq
    _scratch_free(scratch)
    _scratch_free(panels)
    free(bounds)
    return 0


cdef public int sk_dense_bcsc_matmul_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const float *data,
        const float *x, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, NULL,
                              SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_bcsc_matmul_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const float *data,
        const float *x, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, NULL,
                              SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_bcsc_matmul_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const double *data,
        const double *x, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, NULL,
                              SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_bcsc_matmul_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const double *data,
        const double *x, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, NULL,
                              SK_ACT_LINEAR, out, n_threads)

cdef public int sk_dense_bcsc_matmul_bias_act_f32_i32(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, int64_t block, const int32_t *indptr, const int32_t *indices, const float *data,
        const float *x, const float *bias, int act, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, bias, act,
                              out, n_threads)

cdef public int sk_dense_bcsc_matmul_bias_act_f32_i64(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, int64_t block, const int64_t *indptr, const int64_t *indices, const float *data,
        const float *x, const float *bias, int act, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, bias, act,
                              out, n_threads)

cdef public int sk_dense_bcsc_matmul_bias_act_f64_i32(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, int64_t block, const int32_t *indptr, const int32_t *indices, const double *data,
        const double *x, const double *bias, int act, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, bias, act,
                              out, n_threads)

cdef public int sk_dense_bcsc_matmul_bias_act_f64_i64(int64_t n_rows, int64_t n_inner,
        int64_t n_cols, int64_t block, const int64_t *indptr, const int64_t *indices, const double *data,
        const double *x, const double *bias, int act, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul(n_rows, n_inner, n_cols, block, indptr, indices, data, x, bias, act,
                              out, n_threads)



def check_block(block):
    """`block` as an int: a positive integer (NumPy integers too), else ValueError naming it."""
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer; received block={block!r}")
    return int(block)


def _check_bcsc(indptr, indices, shape, block):
    """(indptr, indices, n_inner, n_cols, block) of a validated block-CSC structure of
    w.shape = shape: ValueError naming the argument for a bad block, a width it does not divide,
    or a malformed structure (checked as the CSR of the n_cols / block groups)."""
    n_inner, n_cols = _shape2(shape, "w.shape")
    block = check_block(block)
    if n_cols % block:
        raise ValueError(f"w.shape[1] must be a multiple of block={block}; "
                         f"received w.shape={(n_inner, n_cols)}")
    indptr, indices, _, _ = check_csr(indptr, indices, None, (n_cols // block, n_inner), "w")
    return indptr, indices, n_inner, n_cols, block


def _bcsc_data(data, nb, block):
    """The block values as an array, of shape (nb * block,) or (nb, block), else ValueError."""
    data_arr = np.asarray(data)
    if data_arr.shape not in ((nb * block,), (nb, block)):
        raise ValueError(f"w.data must have block={block} values per block ({nb} blocks): shape "
                         f"({nb * block},) or ({nb}, {block}); received shape {data_arr.shape}")
    return data_arr


def dense_bcsc_matmul(x, indptr, indices, data, shape, block, *, bias=None, activation=None,
                      n_threads=None):
    """Y = act(X @ W + bias) with X dense (M x K, or K for a vector) and W (K x N) in block-CSC
    form: groups of `block` consecutive columns, one index list per group (see
    `bcsc_from_dense`).

    indptr: N / block + 1 entries over groups; indices: input rows in [0, K), one per block;
    data: block values, shape (nblocks * block,) or (nblocks, block), data[b, g] the weight of
    column q * block + g of block b's group q. bias: None or N values added to every row;
    activation: None / "linear", "relu", "gelu" or "relu6" (both applied to each output tile before it is
    stored). Returns (M, N) (or (N,)).
    Complexity O(nblocks * block * M).

    Raises:
        ValueError: for a malformed W, a shape mismatch, a bias not of shape (N,) or an
            activation other than None, "linear" or "relu".
    """
    indptr, indices, n_inner, n_cols, block = _check_bcsc(indptr, indices, shape, block)
    nb = indices.shape[0]
    data_arr = _bcsc_data(data, nb, block)
    x_arr = np.asarray(x)
    if x_arr.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D; received shape {x_arr.shape}")
    if x_arr.shape[x_arr.ndim - 1] != n_inner:
        raise ValueError(f"x must have {n_inner} columns to match w.shape={(n_inner, n_cols)}; "
                         f"received x.shape={x_arr.shape}")
    dt = result_dtype(data_arr.dtype, x_arr.dtype, name="w.data and x")
    cdef cnp.ndarray d = _values(data_arr.reshape(nb * block), dt, "w.data")
    cdef cnp.ndarray xx = _values(x_arr.reshape(x_arr.shape[0] if x_arr.ndim == 2 else 1, n_inner), dt, "x")
    cdef int64_t m = xx.shape[0], k = n_inner, n = n_cols, g = block
    bias_arr, act_code = _epilogue(bias, activation, n_cols, dt)
    cdef cnp.ndarray out = np.empty((m, n), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef void *bp = NULL if bias_arr is None else _ptr(<cnp.ndarray>bias_arr)
    cdef int act = act_code
    cdef int nt = _threads(n_threads, nb * block * m + m * k)
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_dense_bcsc_matmul_bias_act_f32_i32(
                m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <float *>_ptr(d),
                <float *>_ptr(xx), <float *>bp, act, <float *>_ptr(out), nt)
        elif f32:
            rc = sk_dense_bcsc_matmul_bias_act_f32_i64(
                m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <float *>_ptr(d),
                <float *>_ptr(xx), <float *>bp, act, <float *>_ptr(out), nt)
        elif i32:
            rc = sk_dense_bcsc_matmul_bias_act_f64_i32(
                m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix), <double *>_ptr(d),
                <double *>_ptr(xx), <double *>bp, act, <double *>_ptr(out), nt)
        else:
            rc = sk_dense_bcsc_matmul_bias_act_f64_i64(
                m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix), <double *>_ptr(d),
                <double *>_ptr(xx), <double *>bp, act, <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("dense_bcsc_matmul: could not allocate scratch memory")
    return out.reshape(n) if x_arr.ndim == 1 else out


cdef void _bcsc_expand(int64_t n_groups, int64_t block, const index_t *indptr,
                       const index_t *indices, index_t *e_indptr, index_t *e_indices,
                       int64_t *positions, int64_t *inverse, int n_threads) noexcept nogil:
    """The CSC form of a block-CSC structure: column n = q * block + g holds group q's rows.
    e_indptr (n_groups * block + 1), e_indices and positions (CSC entry -> block value
    b * block + g), inverse (block value -> CSC entry); nblocks * block entries each.
    Complexity O(nblocks * block)."""
    cdef Py_ssize_t qq
    cdef int64_t g, b, p, c, q
    e_indptr[0] = 0
    for q in range(n_groups):
        c = indptr[q + 1] - indptr[q]
        for g in range(block):
            e_indptr[q * block + g + 1] = e_indptr[q * block + g] + c
    for qq in prange(n_groups, nogil=True, schedule='guided', num_threads=n_threads):
        for g in range(block):
            p = e_indptr[qq * block + g]
            for b in range(indptr[qq], indptr[qq + 1]):
                e_indices[p] = indices[b]
                positions[p] = b * block + g
                inverse[b * block + g] = p
                p = p + 1


cdef public void sk_bcsc_expand_i32(int64_t n_groups, int64_t block, const int32_t *indptr,
        const int32_t *indices, int32_t *e_indptr, int32_t *e_indices, int64_t *positions,
        int64_t *inverse, int n_threads) noexcept nogil:
    _bcsc_expand(n_groups, block, indptr, indices, e_indptr, e_indices, positions, inverse,
                 n_threads)

cdef public void sk_bcsc_expand_i64(int64_t n_groups, int64_t block, const int64_t *indptr,
        const int64_t *indices, int64_t *e_indptr, int64_t *e_indices, int64_t *positions,
        int64_t *inverse, int n_threads) noexcept nogil:
    _bcsc_expand(n_groups, block, indptr, indices, e_indptr, e_indices, positions, inverse,
                 n_threads)


def bcsc_expand(indptr, indices, block, n_inner, *, n_threads=None):
    """(e_indptr, e_indices, positions, inverse): the CSC form of a block-CSC structure with
    n_inner input rows (see `_bcsc_expand`); validates the structure first."""
    block = check_block(block)
    indptr, indices, n_groups, _ = check_csr(indptr, indices, None,
                                             (len(np.asarray(indptr)) - 1, n_inner), "w")
    nb = indices.shape[0]
    cdef int64_t c_groups = n_groups, g = block
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef cnp.ndarray e_ip = np.empty(n_groups * block + 1, dtype=indptr.dtype)
    cdef cnp.ndarray e_ix = np.empty(nb * block, dtype=indptr.dtype)
    cdef cnp.ndarray pos = np.empty(nb * block, dtype=np.int64)
    cdef cnp.ndarray inv = np.empty(nb * block, dtype=np.int64)
    cdef int nt = _threads(n_threads, nb * block // 4)
    cdef bint i32 = indptr.dtype == np.int32
    with nogil:
        if i32:
            sk_bcsc_expand_i32(c_groups, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                               <int32_t *>_ptr(e_ip), <int32_t *>_ptr(e_ix), <int64_t *>_ptr(pos),
                               <int64_t *>_ptr(inv), nt)
        else:
            sk_bcsc_expand_i64(c_groups, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                               <int64_t *>_ptr(e_ip), <int64_t *>_ptr(e_ix), <int64_t *>_ptr(pos),
                               <int64_t *>_ptr(inv), nt)
    return e_ip, e_ix, pos, inv


cdef int _bcsc_sddmm(int64_t n_rows, int64_t n_inner, int64_t n_cols, int64_t block,
                     const index_t *indptr, const index_t *indices, const real_t *x,
                     const real_t *dy, real_t *out, int n_threads) noexcept nogil:
    """The block values' gradient of out = x @ W (W block-CSC): for block b of group q,
    out[b * block + g] = sum_i x[i, indices[b]] * dy[i, q * block + g]; x is n_rows x n_inner,
    dy n_rows x n_cols. x^T and dy^T are packed in panels of `tile` batch rows (as for the
    products: a tile-wide transpose stays in L1, a whole-depth one did not and cost 2.6 ms of 5.4
    at 4096 x 4096, batch 256); a thread owns a range of groups (balanced by blocks) and, panel
    by panel, reads its group's `block` rows of dy^T from L1 for every block, adding each
    panel's dots to out. Each value is one thread's fixed-order sum: bitwise identical for any
    thread count. Complexity O(nblocks * block * n_rows)."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_tiles = (n_rows + tile - 1) // tile
    cdef int64_t n_groups = n_cols // block
    cdef Py_ssize_t c
    cdef int64_t q, b, g, p0, nb, done, t, w
    cdef int acc
    cdef int64_t *bounds
    cdef real_t *xt
    cdef real_t *yt
    cdef const real_t *xp
    cdef const real_t *yp
    cdef real_t d
    if n_cols == 0:
        return 0
    if n_rows == 0:
        memset(out, 0, indptr[n_groups] * block * sizeof(real_t))
        return 0
    if n_threads < 1:
        n_threads = 1
    bounds = <int64_t *>malloc((n_threads + 1) * sizeof(int64_t))
    xt = <real_t *>_scratch_alloc(n_inner * n_rows * sizeof(real_t))
    yt = <real_t *>_scratch_alloc(n_cols * n_rows * sizeof(real_t))
    if bounds == NULL or xt == NULL or yt == NULL:
        free(bounds)
        _scratch_free(xt)
        _scratch_free(yt)
        return -1
    _balanced_bounds(n_groups, indptr, block, 4 * block, n_threads, bounds)
    _pack_transposed(n_rows, n_inner, x, tile, xt, n_threads)
    _pack_transposed(n_rows, n_cols, dy, tile, yt, n_threads)
    for c in prange(n_threads, nogil=True, schedule='static', chunksize=1, num_threads=n_threads):
        for t in range(n_tiles):
            w = n_rows - t * tile
            if w > tile:
                w = tile
            xp = xt + t * tile * n_inner
            yp = yt + t * tile * n_cols
            acc = t > 0
            for q in range(bounds[c], bounds[c + 1]):
                p0 = indptr[q]
                nb = indptr[q + 1] - p0
                done = _bsddmm(isa, nb, indices + p0, xp, yp + q * block * w, <int>block, w,
                               out + p0 * block, acc)
                for b in range(p0 + done, p0 + nb):
                    for g in range(block):
                        d = _dot(isa, w, xp + indices[b] * w, yp + (q * block + g) * w)
                        if acc:
                            out[b * block + g] = out[b * block + g] + d
                        else:
                            out[b * block + g] = d
    _scratch_free(yt)
    _scratch_free(xt)
    free(bounds)
    return 0


cdef public int sk_bcsc_sddmm_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const float *x,
        const float *dy, float *out, int n_threads) noexcept nogil:
    return _bcsc_sddmm(n_rows, n_inner, n_cols, block, indptr, indices, x, dy, out, n_threads)

cdef public int sk_bcsc_sddmm_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const float *x,
        const float *dy, float *out, int n_threads) noexcept nogil:
    return _bcsc_sddmm(n_rows, n_inner, n_cols, block, indptr, indices, x, dy, out, n_threads)

cdef public int sk_bcsc_sddmm_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const double *x,
        const double *dy, double *out, int n_threads) noexcept nogil:
    return _bcsc_sddmm(n_rows, n_inner, n_cols, block, indptr, indices, x, dy, out, n_threads)

cdef public int sk_bcsc_sddmm_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const double *x,
        const double *dy, double *out, int n_threads) noexcept nogil:
    return _bcsc_sddmm(n_rows, n_inner, n_cols, block, indptr, indices, x, dy, out, n_threads)


def bcsc_sddmm(indptr, indices, shape, block, x, dy, *, n_threads=None):
    """Gradient of the block values of Y = X @ W, W (K x N) block-CSC: for block b of group q,
    out[b * block + g] = X[:, indices[b]] . dY[:, q * block + g]. x: (M, K), dy: (M, N).
    Returns (nblocks * block,). Complexity O(nblocks * block * M)."""
    indptr, indices, n_inner, n_cols, block = _check_bcsc(indptr, indices, shape, block)
    x_arr, dy_arr = np.asarray(x), np.asarray(dy)
    if x_arr.ndim != 2 or x_arr.shape[1] != n_inner:
        raise ValueError(f"x must be (M, {n_inner}); received shape {x_arr.shape}")
    if dy_arr.ndim != 2 or dy_arr.shape != (x_arr.shape[0], n_cols):
        raise ValueError(f"dy must be ({x_arr.shape[0]}, {n_cols}); received shape {dy_arr.shape}")
    dt = result_dtype(x_arr.dtype, dy_arr.dtype, name="x and dy")
    cdef cnp.ndarray xx = _values(x_arr, dt, "x")
    cdef cnp.ndarray yy = _values(dy_arr, dt, "dy")
    cdef int64_t m = x_arr.shape[0], k = n_inner, n = n_cols, g = block
    cdef int64_t nb = indices.shape[0]
    cdef cnp.ndarray out = np.empty(nb * block, dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, nb * block * m + m * (k + n))
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_bcsc_sddmm_f32_i32(m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                       <float *>_ptr(xx), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_bcsc_sddmm_f32_i64(m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                       <float *>_ptr(xx), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_bcsc_sddmm_f64_i32(m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                       <double *>_ptr(xx), <double *>_ptr(yy), <double *>_ptr(out), nt)
        else:
            rc = sk_bcsc_sddmm_f64_i64(m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                       <double *>_ptr(xx), <double *>_ptr(yy), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("bcsc_sddmm: could not allocate scratch memory")
    return out


cdef int _dense_bcsc_matmul_t(int64_t n_rows, int64_t n_inner, int64_t n_cols, int64_t block,
                              const index_t *indptr, const index_t *indices, const real_t *data,
                              const real_t *dy, real_t *out, int n_threads) noexcept nogil:
    """out (n_rows x n_inner) = dy (n_rows x n_cols) @ W^T, W (n_inner x n_cols) block-CSC: the
    input gradient of the block product, with no transpose of W. For each group, its `block`
    rows of the packed dy^T tile stay in registers while the group's blocks scatter-add
    sum_g W[k, q * block + g] * dy^T[q * block + g, :] into row k of an accumulator panel
    (n_inner x tile, in L2): `block` FMAs per accumulator row loaded. Work items and parts as in
    _dense_csr_matmul, and its final sum + transposed store (_sum_parts_transposed); the part
    count depends on the shape only: the same bits for any thread count.
    Complexity O(nblocks * block * n_rows)."""
    cdef int isa = sk_isa()
    cdef int64_t tile = _tile(out)
    cdef int64_t n_tiles = (n_rows + tile - 1) // tile
    cdef int64_t n_groups = n_cols // block
    cdef int n_parts = 1 if n_tiles >= 2 else 2
    cdef int64_t n_items = n_tiles * n_parts
    cdef int64_t part_size = n_inner * n_rows
    cdef int64_t *bounds
    cdef real_t *panels
    cdef real_t *acc
    cdef Py_ssize_t item
    cdef int64_t t, p, w, q, p0
    cdef real_t *a
    cdef const real_t *yp
    if n_rows == 0 or n_inner == 0:
        return 0
    if n_threads < 1:
        n_threads = 1
    bounds = <int64_t *>malloc((n_parts + 1) * sizeof(int64_t))
    panels = <real_t *>_scratch_alloc(n_cols * n_rows * sizeof(real_t))
    acc = <real_t *>_scratch_alloc(n_parts * part_size * sizeof(real_t))
    if bounds == NULL or panels == NULL or acc == NULL:
        free(bounds)
        _scratch_free(panels)
        _scratch_free(acc)
        return -1
    _balanced_bounds(n_groups, indptr, block, 4 * block, n_parts, bounds)
    _pack_transposed(n_rows, n_cols, dy, tile, panels, n_threads)
    for item in prange(n_items, nogil=True, schedule='dynamic', chunksize=1, num_threads=n_threads):
        t = item // n_parts
        p = item % n_parts
        w = n_rows - t * tile
        if w > tile:
            w = tile
        a = acc + p * part_size + t * tile * n_inner
        memset(a, 0, w * n_inner * sizeof(real_t))
        yp = panels + t * tile * n_cols
        for q in range(bounds[p], bounds[p + 1]):
            p0 = indptr[q]
            _bscatter(isa, indptr[q + 1] - p0, indices + p0, data + p0 * block, block,
                      <int>block, yp + q * block * w, w, a)
    _sum_parts_transposed(acc, n_parts, part_size, n_rows, n_inner, tile, out, n_threads)
    _scratch_free(acc)
    _scratch_free(panels)
    free(bounds)
    return 0


cdef public int sk_dense_bcsc_matmul_t_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const float *data,
        const float *dy, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul_t(n_rows, n_inner, n_cols, block, indptr, indices, data, dy, out,
                                n_threads)

cdef public int sk_dense_bcsc_matmul_t_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const float *data,
        const float *dy, float *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul_t(n_rows, n_inner, n_cols, block, indptr, indices, data, dy, out,
                                n_threads)

cdef public int sk_dense_bcsc_matmul_t_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int32_t *indptr, const int32_t *indices, const double *data,
        const double *dy, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul_t(n_rows, n_inner, n_cols, block, indptr, indices, data, dy, out,
                                n_threads)

cdef public int sk_dense_bcsc_matmul_t_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
        int64_t block, const int64_t *indptr, const int64_t *indices, const double *data,
        const double *dy, double *out, int n_threads) noexcept nogil:
    return _dense_bcsc_matmul_t(n_rows, n_inner, n_cols, block, indptr, indices, data, dy, out,
                                n_threads)


def dense_bcsc_matmul_t(dy, indptr, indices, data, shape, block, *, n_threads=None):
    """dX = dY @ W^T with W (K x N) block-CSC (as in dense_bcsc_matmul) and dY (M x N, or N):
    the input gradient of the block product. Returns (M, K) (or (K,)).
    Complexity O(nblocks * block * M)."""
    indptr, indices, n_inner, n_cols, block = _check_bcsc(indptr, indices, shape, block)
    nb = indices.shape[0]
    data_arr = _bcsc_data(data, nb, block)
    dy_arr = np.asarray(dy)
    if dy_arr.ndim not in (1, 2) or dy_arr.shape[dy_arr.ndim - 1] != n_cols:
        raise ValueError(f"dy must have {n_cols} columns to match w.shape={(n_inner, n_cols)}; "
                         f"received dy.shape={dy_arr.shape}")
    dt = result_dtype(data_arr.dtype, dy_arr.dtype, name="w.data and dy")
    cdef cnp.ndarray d = _values(data_arr.reshape(nb * block), dt, "w.data")
    cdef cnp.ndarray yy = _values(dy_arr.reshape(dy_arr.shape[0] if dy_arr.ndim == 2 else 1, n_cols), dt, "dy")
    cdef int64_t m = yy.shape[0], k = n_inner, n = n_cols, g = block
    cdef cnp.ndarray out = np.empty((m, k), dtype=dt)
    cdef cnp.ndarray ip = indptr, ix = indices
    cdef int nt = _threads(n_threads, nb * block * m + m * (k + n))
    cdef bint f32 = dt == np.float32, i32 = indptr.dtype == np.int32
    cdef int rc
    with nogil:
        if f32 and i32:
            rc = sk_dense_bcsc_matmul_t_f32_i32(m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                                <float *>_ptr(d), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif f32:
            rc = sk_dense_bcsc_matmul_t_f32_i64(m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                                <float *>_ptr(d), <float *>_ptr(yy), <float *>_ptr(out), nt)
        elif i32:
            rc = sk_dense_bcsc_matmul_t_f64_i32(m, k, n, g, <int32_t *>_ptr(ip), <int32_t *>_ptr(ix),
                                                <double *>_ptr(d), <double *>_ptr(yy), <double *>_ptr(out), nt)
        else:
            rc = sk_dense_bcsc_matmul_t_f64_i64(m, k, n, g, <int64_t *>_ptr(ip), <int64_t *>_ptr(ix),
                                                <double *>_ptr(d), <double *>_ptr(yy), <double *>_ptr(out), nt)
    if rc:
        raise MemoryError("dense_bcsc_matmul_t: could not allocate scratch memory")
    return out.reshape(k) if dy_arr.ndim == 1 else out
