/*
 * sk_simd_impl.h -- template body, included by sk_simd.h once per (value, index) type with
 *   SK_T (float/double), SK_TS (f32/f64), SK_F64 (0/1), SK_I (int32_t/int64_t), SK_IS, SK_I64.
 * Do not include directly.
 */
#define SK_CAT4_(a, b, c, d) a##_##b##_##c##_##d
#define SK_CAT4(a, b, c, d) SK_CAT4_(a, b, c, d)
#define SK_CAT3_(a, b, c) a##_##b##_##c
#define SK_CAT_(a, b) a##_##b
#define SK_CAT(a, b) SK_CAT_(a, b)
#define SK_CAT3(a, b, c) SK_CAT3_(a, b, c)
#define SK_FN(base, isa) SK_CAT4(base, isa, SK_TS, SK_IS)   /* per (isa, T, I) */
#define SK_FNT(base, isa) SK_CAT3(base, isa, SK_TS)         /* per (isa, T) */

/* ================================ generic C ================================================ */
#define SK_GT (64 / (int)sizeof(SK_T))
#ifndef SK_SPMM_PREFETCH
/* Row-panel SpMM: nonzeros ahead whose panel rows are prefetched into L1 (the rows are random,
 * so the hardware prefetchers cannot; 8 measured best of 4..32 at 4096 x 4096, batch 256). */
#define SK_SPMM_PREFETCH 8
#endif

/* Row-panel SpMM, one output row tile:
 *   out[j * os] = sum_{p < nnz} val[p] * panel[idx[p] * ldp + j]      for 0 <= j < w.
 * idx, val: nnz entries of one CSR row. panel: dense, row stride ldp. Complexity O(nnz * w). */
static inline void SK_FN(sk_spmm_row, generic)(int64_t nnz, const SK_I *idx, const SK_T *val,
                                        const SK_T *panel, int64_t ldp, int64_t w,
                                        SK_T *out, int64_t os) {
    for (int64_t j0 = 0; j0 < w; j0 += SK_GT) {
        int64_t n = w - j0 < SK_GT ? w - j0 : SK_GT;
        SK_T acc[SK_GT];
        for (int64_t j = 0; j < SK_GT; j++) acc[j] = 0;
        for (int64_t p = 0; p < nnz; p++) {
            const SK_T *r = panel + (int64_t)idx[p] * ldp + j0;
            SK_T a = val[p];
            for (int64_t j = 0; j < n; j++) acc[j] += a * r[j];
        }
        for (int64_t j = 0; j < n; j++) out[(j0 + j) * os] = acc[j];
    }
}

/* Block-CSC SpMM, one tile of a group of G outputs (1 x G blocks of W: the G consecutive outputs
 * of a group share each stored input row):
 *   out[g * ldo + j] = sum_{b < nb} val[b * vs + g] * panel[idx[b] * ldp + j]   (g < G, j < w).
 * Each panel row loaded serves G outputs (G FMAs per load where the CSC kernel does one), which
 * is what lifts a block-pruned layer off the L2 bandwidth bound. One FMA chain per output element
 * over the blocks in storage order, as in sk_spmm_row. Complexity O(nb * G * w). */
static inline void SK_FN(sk_bspmm, generic)(int64_t nb, const SK_I *idx, const SK_T *val, int64_t vs,
                                          int G, const SK_T *panel, int64_t ldp, int64_t w,
                                          SK_T *out, int64_t ldo) {
    for (int g = 0; g < G; g++)
        for (int64_t j0 = 0; j0 < w; j0 += SK_GT) {
            int64_t n = w - j0 < SK_GT ? w - j0 : SK_GT;
            SK_T acc[SK_GT];
            for (int64_t j = 0; j < SK_GT; j++) acc[j] = 0;
            for (int64_t b = 0; b < nb; b++) {
                const SK_T *r = panel + (int64_t)idx[b] * ldp + j0;
                SK_T a = val[b * vs + g];
                for (int64_t j = 0; j < n; j++) acc[j] += a * r[j];
            }
            for (int64_t j = 0; j < n; j++) out[g * ldo + j0 + j] = acc[j];
        }
}

/* Block-CSC scatter product (dX = dY @ W^T for a block-CSC W), one group and one batch tile:
 *   acc[idx[b] * w + j] += sum_{g < G} val[b * vs + g] * y[g * w + j]   (b < nb, j < w),
 * y: the group's G rows of the packed dY^T tile (contiguous, w entries each); acc: K rows of w.
 * The G rows stay in registers while the blocks stream by: G FMAs per accumulator row loaded. */
static inline void SK_FN(sk_bscatter, generic)(int64_t nb, const SK_I *idx, const SK_T *val,
                                             int64_t vs, int G, const SK_T *y, int64_t w,
                                             SK_T *acc) {
    for (int64_t b = 0; b < nb; b++) {
        SK_T *o = acc + (int64_t)idx[b] * w;
        for (int64_t j = 0; j < w; j++) {
            SK_T t = o[j];
            for (int g = 0; g < G; g++) t += val[b * vs + g] * y[g * w + j];
            o[j] = t;
        }
    }
}

#if !SK_I64
/* Dense dot product, fixed summation order (8 partial sums), for SDDMM. */
static inline SK_T SK_FNT(sk_dot, generic)(int64_t n, const SK_T *a, const SK_T *b) {
    SK_T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int q = 0; q < 8; q++) s[q] += a[k + q] * b[k + q];
    for (int q = 0; k < n; k++, q++) s[q] += a[k] * b[k];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}
#endif

/* SDDMM row over one depth tile: out[p] (+)= dot(u[0:w], panel[idx[p] * w : +w]) for p < nnz;
 * accumulate = 0 overwrites. u: w entries; panel rows: w entries each (a packed tile, w <= 64). */
static inline void SK_FN(sk_sddmm_row, generic)(int64_t nnz, const SK_I *idx, const SK_T *u,
                                               const SK_T *panel, int64_t w, SK_T *out,
                                               int accumulate) {
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *v = panel + (int64_t)idx[p] * w;
        SK_T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 8 <= w; k += 8)
            for (int q = 0; q < 8; q++) s[q] += u[k + q] * v[k + q];
        for (int q = 0; k < w; k++, q++) s[q] += u[k] * v[k];
        SK_T d = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
        out[p] = accumulate ? out[p] + d : d;
    }
}

/* Scatter-add one sparse row into a panel: out[idx[p] * w + j] += val[p] * xv[j], j < w.
 * The transposed-kernel product (dense @ CSR): one output panel row per nonzero. */
static inline void SK_FN(sk_axpy_rows, generic)(int64_t nnz, const SK_I *idx, const SK_T *val,
                                               const SK_T *xv, int64_t w, SK_T *out) {
    for (int64_t p = 0; p < nnz; p++) {
        SK_T *o = out + (int64_t)idx[p] * w;
        SK_T a = val[p];
        for (int64_t j = 0; j < w; j++) o[j] += a * xv[j];
    }
}

/* Sparse-dense dot (gather): sum_p val[p] * x[idx[p] * incx], 4 partial sums in fixed order.
 * Used when the dense operand has a single column (matrix-vector). */
static inline SK_T SK_CAT3(sk_dot_gather, SK_TS, SK_IS)(int64_t nnz, const SK_I *idx, const SK_T *val,
                                                 const SK_T *x, int64_t incx) {
    SK_T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t p = 0;
    for (; p + 4 <= nnz; p += 4) {
        s0 += val[p] * x[(int64_t)idx[p] * incx];
        s1 += val[p + 1] * x[(int64_t)idx[p + 1] * incx];
        s2 += val[p + 2] * x[(int64_t)idx[p + 2] * incx];
        s3 += val[p + 3] * x[(int64_t)idx[p + 3] * incx];
    }
    for (; p < nnz; p++) s0 += val[p] * x[(int64_t)idx[p] * incx];
    return (s0 + s1) + (s2 + s3);
}

#if SK_I64
/* Convolution filter gradient over a block of rows (offsets are always int64):
 *   out[p] (+)= sum_{r < n_rows} sum_{j < w} u[r * us + j] * base[r * ts + off[p] + j],  p < nnz.
 * Fixed summation order: one partial sum per lane slot, combined at the end. w <= 8 vectors. */
static inline void SK_FNT(sk_dot_rows, generic)(int64_t nnz, const int64_t *off, const SK_T *u,
                                               int64_t us, const SK_T *base, int64_t ts,
                                               int64_t n_rows, int64_t w, SK_T *out,
                                               int accumulate) {
    for (int64_t p = 0; p < nnz; p++) {
        SK_T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t r = 0; r < n_rows; r++) {
            const SK_T *a = u + r * us;
            const SK_T *b = base + r * ts + off[p];
            for (int64_t j = 0; j < w; j++) s[j & 7] += a[j] * b[j];
        }
        SK_T d = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
        out[p] = accumulate ? out[p] + d : d;
    }
}

/* Convolution filter gradient over one contiguous run (the fused stride-1 path):
 *   out[p] = sum_{j < len} u[j] * base[off[p] + j],  p < nnz.
 * Per entry one fixed summation order (8 partial sums here), whatever the grouping. */
static inline void SK_FNT(sk_dot_run, generic)(int64_t nnz, const int64_t *off, const SK_T *u,
                                              const SK_T *base, int64_t len, SK_T *out) {
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *b = base + off[p];
        SK_T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = 0; j < len; j++) s[j & 7] += u[j] * b[j];
        out[p] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    }
}
#endif

#ifdef SK_X86
/* ================================ AVX2 + FMA =============================================== */
#if SK_F64
#define SK_V2 __m256d
#define SK_L2 4
#define SK_V2_ZERO _mm256_setzero_pd
#define SK_V2_SET1 _mm256_set1_pd
#define SK_V2_LOAD _mm256_loadu_pd
#define SK_V2_STORE _mm256_storeu_pd
#define SK_V2_FMA _mm256_fmadd_pd
#define SK_V2_MASK(rem) _mm256_cmpgt_epi64(_mm256_set1_epi64x(rem), _mm256_setr_epi64x(0, 1, 2, 3))
#define SK_V2_MLOAD(p, m) _mm256_maskload_pd((p), (m))
#define SK_V2_MSTORE(p, m, v) _mm256_maskstore_pd((p), (m), (v))
#else
#define SK_V2 __m256
#define SK_L2 8
#define SK_V2_ZERO _mm256_setzero_ps
#define SK_V2_SET1 _mm256_set1_ps
#define SK_V2_LOAD _mm256_loadu_ps
#define SK_V2_STORE _mm256_storeu_ps
#define SK_V2_FMA _mm256_fmadd_ps
#define SK_V2_MASK(rem) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define SK_V2_MLOAD(p, m) _mm256_maskload_ps((p), (m))
#define SK_V2_MSTORE(p, m, v) _mm256_maskstore_ps((p), (m), (v))
#endif

/* nv full vectors (nv <= 8) of one row tile; nv is a constant after inlining, so acc[] lives in
 * registers. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
SK_FN(sk_spmm_nv, avx2)(const int nv, int64_t nnz, const SK_I *idx, const SK_T *val,
                        const SK_T *panel, int64_t ldp, SK_T *out, int64_t os) {
    SK_V2 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = SK_V2_ZERO();
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * ldp;
        SK_V2 a = SK_V2_SET1(val[p]);
        for (int v = 0; v < nv; v++) acc[v] = SK_V2_FMA(a, SK_V2_LOAD(r + v * SK_L2), acc[v]);
    }
    if (os == 1) {
        for (int v = 0; v < nv; v++) SK_V2_STORE(out + v * SK_L2, acc[v]);
    } else {
        SK_T tmp[8 * SK_L2];
        for (int v = 0; v < nv; v++) SK_V2_STORE(tmp + v * SK_L2, acc[v]);
        for (int j = 0; j < nv * SK_L2; j++) out[j * os] = tmp[j];
    }
}

/* One pass over the row's nonzeros for a tile of nv vectors whose last one is masked (mask m):
 * the tile widths of a convolution's output rows (56, 28, ...) are rarely multiples of 16. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
SK_FN(sk_spmm_nvm, avx2)(const int nv, int64_t nnz, const SK_I *idx, const SK_T *val,
                         const SK_T *panel, int64_t ldp, __m256i m, SK_T *out) {
    SK_V2 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = SK_V2_ZERO();
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * ldp;
        SK_V2 a = SK_V2_SET1(val[p]);
        for (int v = 0; v < nv - 1; v++) acc[v] = SK_V2_FMA(a, SK_V2_LOAD(r + v * SK_L2), acc[v]);
        acc[nv - 1] = SK_V2_FMA(a, SK_V2_MLOAD(r + (nv - 1) * SK_L2, m), acc[nv - 1]);
    }
    for (int v = 0; v < nv - 1; v++) SK_V2_STORE(out + v * SK_L2, acc[v]);
    SK_V2_MSTORE(out + (nv - 1) * SK_L2, m, acc[nv - 1]);
}

__attribute__((target("avx2,fma"))) static void
SK_FN(sk_spmm_row, avx2)(int64_t nnz, const SK_I *idx, const SK_T *val, const SK_T *panel,
                         int64_t ldp, int64_t w, SK_T *out, int64_t os) {
    if (os == 1 && w < 8 * SK_L2 && w % SK_L2 != 0 && w > SK_L2) {
        int nv = (int)((w + SK_L2 - 1) / SK_L2);
        int64_t rem = w - (int64_t)(nv - 1) * SK_L2;
        __m256i m = SK_V2_MASK(rem);
        switch (nv) {
#define SK_CASE(k) case k: SK_FN(sk_spmm_nvm, avx2)(k, nnz, idx, val, panel, ldp, m, out); return;
            SK_CASE(2) SK_CASE(3) SK_CASE(4) SK_CASE(5) SK_CASE(6) SK_CASE(7) SK_CASE(8)
#undef SK_CASE
        }
    }
    int64_t j = 0;
    for (; w - j >= 8 * SK_L2; j += 8 * SK_L2)
        SK_FN(sk_spmm_nv, avx2)(8, nnz, idx, val, panel + j, ldp, out + j * os, os);
    if (w - j >= 4 * SK_L2) {
        SK_FN(sk_spmm_nv, avx2)(4, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += 4 * SK_L2;
    }
    if (w - j >= 2 * SK_L2) {
        SK_FN(sk_spmm_nv, avx2)(2, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += 2 * SK_L2;
    }
    if (w - j >= SK_L2) {
        SK_FN(sk_spmm_nv, avx2)(1, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += SK_L2;
    }
    if (j < w) { /* masked tail: masked-off lanes are neither read nor written */
        int64_t rem = w - j;
        __m256i m = SK_V2_MASK(rem);
        SK_V2 acc = SK_V2_ZERO();
        for (int64_t p = 0; p < nnz; p++)
            acc = SK_V2_FMA(SK_V2_SET1(val[p]), SK_V2_MLOAD(panel + (int64_t)idx[p] * ldp + j, m), acc);
        SK_T tmp[SK_L2];
        SK_V2_STORE(tmp, acc);
        for (int64_t q = 0; q < rem; q++) out[(j + q) * os] = tmp[q];
    }
}

/* SDDMM row, u tile held in registers (w <= 8 vectors); masked tail lanes are zero. */
__attribute__((target("avx2,fma"))) static void
SK_FN(sk_sddmm_row, avx2)(int64_t nnz, const SK_I *idx, const SK_T *u, const SK_T *panel, int64_t w,
                          SK_T *out, int accumulate) {
    /* Narrow tiles (small batches): a horizontal reduction per nonzero would cost more than
     * the dot itself. */
    if (w < SK_L2) { SK_FN(sk_sddmm_row, generic)(nnz, idx, u, panel, w, out, accumulate); return; }
    SK_V2 uu[8];
    int nv = (int)((w + SK_L2 - 1) / SK_L2);
    int64_t rem = w - (int64_t)(nv - 1) * SK_L2;
    __m256i m = SK_V2_MASK(rem);
    for (int v = 0; v < nv - 1; v++) uu[v] = SK_V2_LOAD(u + v * SK_L2);
    uu[nv - 1] = SK_V2_MLOAD(u + (nv - 1) * SK_L2, m);
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * w;
        SK_V2 a0 = SK_V2_ZERO(), a1 = SK_V2_ZERO();
        int v = 0;
        for (; v + 2 <= nv - 1; v += 2) {
            a0 = SK_V2_FMA(uu[v], SK_V2_LOAD(r + v * SK_L2), a0);
            a1 = SK_V2_FMA(uu[v + 1], SK_V2_LOAD(r + (v + 1) * SK_L2), a1);
        }
        for (; v < nv - 1; v++) a0 = SK_V2_FMA(uu[v], SK_V2_LOAD(r + v * SK_L2), a0);
        a1 = SK_V2_FMA(uu[nv - 1], SK_V2_MLOAD(r + (nv - 1) * SK_L2, m), a1);
        SK_T tmp[SK_L2];
        SK_V2_STORE(tmp, a0 + a1);
        SK_T d = 0;
        for (int q = 0; q < SK_L2; q++) d += tmp[q];
        out[p] = accumulate ? out[p] + d : d;
    }
}

__attribute__((target("avx2,fma"))) static void
SK_FN(sk_axpy_rows, avx2)(int64_t nnz, const SK_I *idx, const SK_T *val, const SK_T *xv, int64_t w,
                          SK_T *out) {
    if (w < SK_L2) { SK_FN(sk_axpy_rows, generic)(nnz, idx, val, xv, w, out); return; }
    SK_V2 xx[8];
    int nv = (int)(w / SK_L2);
    int64_t rem = w - (int64_t)nv * SK_L2;
    __m256i m = SK_V2_MASK(rem);
    SK_V2 xt = rem ? SK_V2_MLOAD(xv + nv * SK_L2, m) : SK_V2_ZERO();
    for (int v = 0; v < nv; v++) xx[v] = SK_V2_LOAD(xv + v * SK_L2);
    for (int64_t p = 0; p < nnz; p++) {
        SK_T *o = out + (int64_t)idx[p] * w;
        SK_V2 a = SK_V2_SET1(val[p]);
        for (int v = 0; v < nv; v++) SK_V2_STORE(o + v * SK_L2, SK_V2_FMA(a, xx[v], SK_V2_LOAD(o + v * SK_L2)));
        if (rem) SK_V2_MSTORE(o + nv * SK_L2, m, SK_V2_FMA(a, xt, SK_V2_MLOAD(o + nv * SK_L2, m)));
    }
}

#if !SK_I64
__attribute__((target("avx2,fma"))) static SK_T
SK_FNT(sk_dot, avx2)(int64_t n, const SK_T *a, const SK_T *b) {
    SK_V2 s0 = SK_V2_ZERO(), s1 = SK_V2_ZERO(), s2 = SK_V2_ZERO(), s3 = SK_V2_ZERO();
    int64_t k = 0;
    for (; k + 4 * SK_L2 <= n; k += 4 * SK_L2) {
        s0 = SK_V2_FMA(SK_V2_LOAD(a + k), SK_V2_LOAD(b + k), s0);
        s1 = SK_V2_FMA(SK_V2_LOAD(a + k + SK_L2), SK_V2_LOAD(b + k + SK_L2), s1);
        s2 = SK_V2_FMA(SK_V2_LOAD(a + k + 2 * SK_L2), SK_V2_LOAD(b + k + 2 * SK_L2), s2);
        s3 = SK_V2_FMA(SK_V2_LOAD(a + k + 3 * SK_L2), SK_V2_LOAD(b + k + 3 * SK_L2), s3);
    }
    for (; k + SK_L2 <= n; k += SK_L2) s0 = SK_V2_FMA(SK_V2_LOAD(a + k), SK_V2_LOAD(b + k), s0);
    if (k < n) {
        __m256i m = SK_V2_MASK(n - k);
        s1 = SK_V2_FMA(SK_V2_MLOAD(a + k, m), SK_V2_MLOAD(b + k, m), s1);
    }
    SK_T tmp[SK_L2];
    SK_V2_STORE(tmp, (s0 + s1) + (s2 + s3));
    SK_T r = 0;
    for (int q = 0; q < SK_L2; q++) r += tmp[q];
    return r;
}
#endif

#if SK_I64
/* sk_dot_rows (see the generic version); nv vectors per row, the last one masked (mask m). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
SK_FNT(sk_dot_rows_nv, avx2)(const int nv, int64_t nnz, const int64_t *off, const SK_T *u,
                             int64_t us, const SK_T *base, int64_t ts, int64_t n_rows,
                             __m256i m, SK_T *out, int accumulate) {
    for (int64_t p = 0; p < nnz; p++) {
        SK_V2 acc[8];
        for (int v = 0; v < nv; v++) acc[v] = SK_V2_ZERO();
        for (int64_t r = 0; r < n_rows; r++) {
            const SK_T *a = u + r * us;
            const SK_T *b = base + r * ts + off[p];
            for (int v = 0; v < nv - 1; v++)
                acc[v] = SK_V2_FMA(SK_V2_LOAD(a + v * SK_L2), SK_V2_LOAD(b + v * SK_L2), acc[v]);
            acc[nv - 1] = SK_V2_FMA(SK_V2_MLOAD(a + (nv - 1) * SK_L2, m),
                                    SK_V2_MLOAD(b + (nv - 1) * SK_L2, m), acc[nv - 1]);
        }
        SK_V2 t = acc[0];
        for (int v = 1; v < nv; v++) t = t + acc[v];
        SK_T tmp[SK_L2];
        SK_V2_STORE(tmp, t);
        SK_T d = 0;
        for (int q = 0; q < SK_L2; q++) d += tmp[q];
        out[p] = accumulate ? out[p] + d : d;
    }
}

__attribute__((target("avx2,fma"))) static void
SK_FNT(sk_dot_rows, avx2)(int64_t nnz, const int64_t *off, const SK_T *u, int64_t us,
                          const SK_T *base, int64_t ts, int64_t n_rows, int64_t w, SK_T *out,
                          int accumulate) {
    int nv = (int)((w + SK_L2 - 1) / SK_L2);
    __m256i m = SK_V2_MASK(w - (int64_t)(nv - 1) * SK_L2);
    switch (nv) {
#define SK_CASE(k) case k: SK_FNT(sk_dot_rows_nv, avx2)(k, nnz, off, u, us, base, ts, n_rows, m, out, accumulate); return;
        SK_CASE(1) SK_CASE(2) SK_CASE(3) SK_CASE(4) SK_CASE(5) SK_CASE(6) SK_CASE(7) SK_CASE(8)
#undef SK_CASE
        default: SK_FNT(sk_dot_rows, generic)(nnz, off, u, us, base, ts, n_rows, w, out, accumulate);
    }
}

/* sk_dot_run: NQ entries at a time share each load of u; 2 vectors per entry and step. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
SK_FNT(sk_dot_run_q, avx2)(const int NQ, const int64_t *off, const SK_T *u, const SK_T *base,
                           int64_t len, SK_T *out) {
    SK_V2 acc[4][2];
    const SK_T *b[4];
    for (int q = 0; q < NQ; q++) {
        b[q] = base + off[q];
        acc[q][0] = SK_V2_ZERO();
        acc[q][1] = SK_V2_ZERO();
    }
    int64_t j = 0;
    for (; j + 2 * SK_L2 <= len; j += 2 * SK_L2) {
        SK_V2 a0 = SK_V2_LOAD(u + j), a1 = SK_V2_LOAD(u + j + SK_L2);
        for (int q = 0; q < NQ; q++) {
            acc[q][0] = SK_V2_FMA(a0, SK_V2_LOAD(b[q] + j), acc[q][0]);
            acc[q][1] = SK_V2_FMA(a1, SK_V2_LOAD(b[q] + j + SK_L2), acc[q][1]);
        }
    }
    for (int v = 0; j < len; j += SK_L2, v++) {
        __m256i m = SK_V2_MASK(len - j);
        SK_V2 a = SK_V2_MLOAD(u + j, m);
        for (int q = 0; q < NQ; q++) acc[q][v] = SK_V2_FMA(a, SK_V2_MLOAD(b[q] + j, m), acc[q][v]);
    }
    for (int q = 0; q < NQ; q++) {
        SK_T tmp[SK_L2];
        SK_V2_STORE(tmp, acc[q][0] + acc[q][1]);
        SK_T d = 0;
        for (int k = 0; k < SK_L2; k++) d += tmp[k];
        out[q] = d;
    }
}

__attribute__((target("avx2,fma"))) static void
SK_FNT(sk_dot_run, avx2)(int64_t nnz, const int64_t *off, const SK_T *u, const SK_T *base,
                         int64_t len, SK_T *out) {
    int64_t p = 0;
    for (; p + 4 <= nnz; p += 4) SK_FNT(sk_dot_run_q, avx2)(4, off + p, u, base, len, out + p);
    for (; p < nnz; p++) SK_FNT(sk_dot_run_q, avx2)(1, off + p, u, base, len, out + p);
}
#endif

/* The block-CSC inner loops (sk_bspmm, sk_bscatter) for AVX2: sk_block_isa.h. */
#define SK_BISA avx2
#define SK_BTARGET "avx2,fma"
#define SK_BACC 8
#define SK_BV SK_V2
#define SK_BL SK_L2
#define SK_BMASK __m256i
#define SK_BMASK_MAKE(last) SK_V2_MASK(last)
#define SK_BV_ZERO SK_V2_ZERO
#define SK_BV_SET1 SK_V2_SET1
#define SK_BV_LOAD SK_V2_LOAD
#define SK_BV_STORE SK_V2_STORE
#define SK_BV_FMA SK_V2_FMA
#define SK_BV_MLOAD SK_V2_MLOAD
#define SK_BV_MSTORE SK_V2_MSTORE
#include "sk_block_isa.h"

#undef SK_V2
#undef SK_L2
#undef SK_V2_ZERO
#undef SK_V2_SET1
#undef SK_V2_LOAD
#undef SK_V2_STORE
#undef SK_V2_FMA
#undef SK_V2_MASK
#undef SK_V2_MLOAD
#undef SK_V2_MSTORE

/* ================================ AVX-512F ================================================= */
#if SK_F64
#define SK_V5 __m512d
#define SK_L5 8
#define SK_M5 __mmask8
#define SK_V5_ZERO _mm512_setzero_pd
#define SK_V5_SET1 _mm512_set1_pd
#define SK_V5_LOAD _mm512_loadu_pd
#define SK_V5_STORE _mm512_storeu_pd
#define SK_V5_FMA _mm512_fmadd_pd
#define SK_V5_MLOAD(p, m) _mm512_maskz_loadu_pd((m), (p))
#define SK_V5_MSTORE(p, m, v) _mm512_mask_storeu_pd((p), (m), (v))
#define SK_V5_HSUM _mm512_reduce_add_pd
#else
#define SK_V5 __m512
#define SK_L5 16
#define SK_M5 __mmask16
#define SK_V5_ZERO _mm512_setzero_ps
#define SK_V5_SET1 _mm512_set1_ps
#define SK_V5_LOAD _mm512_loadu_ps
#define SK_V5_STORE _mm512_storeu_ps
#define SK_V5_FMA _mm512_fmadd_ps
#define SK_V5_MLOAD(p, m) _mm512_maskz_loadu_ps((m), (p))
#define SK_V5_MSTORE(p, m, v) _mm512_mask_storeu_ps((p), (m), (v))
#define SK_V5_HSUM _mm512_reduce_add_ps
#endif

__attribute__((target("avx512f"), always_inline)) static inline void
SK_FN(sk_spmm_nv, avx512)(const int nv, int64_t nnz, const SK_I *idx, const SK_T *val,
                          const SK_T *panel, int64_t ldp, SK_T *out, int64_t os) {
    SK_V5 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = SK_V5_ZERO();
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * ldp;
        if (ldp >= SK_L5 && p + SK_SPMM_PREFETCH < nnz) {  /* rows a line or more apart */
            const char *f = (const char *)(panel + (int64_t)idx[p + SK_SPMM_PREFETCH] * ldp);
            for (int v = 0; v < nv; v++) _mm_prefetch(f + v * 64, _MM_HINT_T0);
        }
        SK_V5 a = SK_V5_SET1(val[p]);
        for (int v = 0; v < nv; v++) acc[v] = SK_V5_FMA(a, SK_V5_LOAD(r + v * SK_L5), acc[v]);
    }
    if (os == 1) {
        for (int v = 0; v < nv; v++) SK_V5_STORE(out + v * SK_L5, acc[v]);
    } else {
        SK_T tmp[8 * SK_L5];
        for (int v = 0; v < nv; v++) SK_V5_STORE(tmp + v * SK_L5, acc[v]);
        for (int j = 0; j < nv * SK_L5; j++) out[j * os] = tmp[j];
    }
}

/* One pass over the row's nonzeros for a tile of nv vectors whose last one is masked (mask m):
 * the tile widths of a convolution's output rows (56, 28, ...) are rarely multiples of 16. */
__attribute__((target("avx512f"), always_inline)) static inline void
SK_FN(sk_spmm_nvm, avx512)(const int nv, int64_t nnz, const SK_I *idx, const SK_T *val,
                         const SK_T *panel, int64_t ldp, SK_M5 m, SK_T *out) {
    SK_V5 acc[8];
    for (int v = 0; v < nv; v++) acc[v] = SK_V5_ZERO();
    for (int64_t p = 0; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * ldp;
        SK_V5 a = SK_V5_SET1(val[p]);
        for (int v = 0; v < nv - 1; v++) acc[v] = SK_V5_FMA(a, SK_V5_LOAD(r + v * SK_L5), acc[v]);
        acc[nv - 1] = SK_V5_FMA(a, SK_V5_MLOAD(r + (nv - 1) * SK_L5, m), acc[nv - 1]);
    }
    for (int v = 0; v < nv - 1; v++) SK_V5_STORE(out + v * SK_L5, acc[v]);
    SK_V5_MSTORE(out + (nv - 1) * SK_L5, m, acc[nv - 1]);
}

__attribute__((target("avx512f"))) static void
SK_FN(sk_spmm_row, avx512)(int64_t nnz, const SK_I *idx, const SK_T *val, const SK_T *panel,
                           int64_t ldp, int64_t w, SK_T *out, int64_t os) {
    if (os == 1 && w < 8 * SK_L5 && w % SK_L5 != 0 && w > SK_L5) {
        int nv = (int)((w + SK_L5 - 1) / SK_L5);
        int64_t rem = w - (int64_t)(nv - 1) * SK_L5;
        SK_M5 m = (SK_M5)((1u << rem) - 1u);
        switch (nv) {
#define SK_CASE(k) case k: SK_FN(sk_spmm_nvm, avx512)(k, nnz, idx, val, panel, ldp, m, out); return;
            SK_CASE(2) SK_CASE(3) SK_CASE(4) SK_CASE(5) SK_CASE(6) SK_CASE(7) SK_CASE(8)
#undef SK_CASE
        }
    }
    int64_t j = 0;
    for (; w - j >= 8 * SK_L5; j += 8 * SK_L5)
        SK_FN(sk_spmm_nv, avx512)(8, nnz, idx, val, panel + j, ldp, out + j * os, os);
    if (w - j >= 4 * SK_L5) {
        SK_FN(sk_spmm_nv, avx512)(4, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += 4 * SK_L5;
    }
    if (w - j >= 2 * SK_L5) {
        SK_FN(sk_spmm_nv, avx512)(2, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += 2 * SK_L5;
    }
    if (w - j >= SK_L5) {
        SK_FN(sk_spmm_nv, avx512)(1, nnz, idx, val, panel + j, ldp, out + j * os, os);
        j += SK_L5;
    }
    if (j < w) {
        int64_t rem = w - j;
        SK_M5 m = (SK_M5)((1u << rem) - 1u);
        SK_V5 acc = SK_V5_ZERO();
        for (int64_t p = 0; p < nnz; p++)
            acc = SK_V5_FMA(SK_V5_SET1(val[p]), SK_V5_MLOAD(panel + (int64_t)idx[p] * ldp + j, m), acc);
        if (os == 1) {
            SK_V5_MSTORE(out + j, m, acc);
        } else {
            SK_T tmp[SK_L5];
            SK_V5_STORE(tmp, acc);
            for (int64_t q = 0; q < rem; q++) out[(j + q) * os] = tmp[q];
        }
    }
}

#if !SK_F64 && !SK_I64
/* Sixteen dot products of 64 floats, a[s] for s < 16, reduced at once: lane L of the result is
 * the sum of the 16 lanes of a[(L >> 2) + 4 * (L & 3)]. Four levels of in-register shuffles and
 * adds, 45 instructions for 16 sums (a horizontal sum per dot costs ~8 in a dependent chain). */
__attribute__((target("avx512f"), always_inline)) static inline __m512
sk_hsum16_avx512_f32(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)  /* b[i] = [8 partials of a[2i] | 8 partials of a[2i+1]] */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)  /* c[i]: 128-bit lane j holds 4 partials of a[4i + j] */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)  /* d[i], lane j: 2 partials of a[8i + j], 2 of a[8i + 4 + j] */
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
    /* lane 4j + k = sum of a[j + 4k] */
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}
#endif

#if !SK_F64
/* SDDMM row over a full 64-float depth tile, sixteen entries per step (the dot of entry
 * p + q goes to a[(q >> 2) + 4 * (q & 3)] so that the reduction leaves it in lane q). Each
 * dot is one chain u0*r0 + u1*r1 + u2*r2 + u3*r3 over four vectors, then the lane tree.
 * Returns the number of entries done (a multiple of 16); the caller finishes the rest. */
__attribute__((target("avx512f"))) static int64_t
SK_FN(sk_sddmm_row64x16, avx512)(int64_t nnz, const SK_I *idx, const __m512 *uu,
                                 const float *panel, float *out, int accumulate) {
    const __m512 u0 = uu[0], u1 = uu[1], u2 = uu[2], u3 = uu[3];
    int64_t p = 0;
    for (; p + 16 <= nnz; p += 16) {
        __m512 a[16];
        for (int q = 0; q < 16; q++) {
            const float *r = panel + (int64_t)idx[p + q] * 64;
            __m512 t = _mm512_mul_ps(u0, _mm512_loadu_ps(r));
            t = _mm512_fmadd_ps(u1, _mm512_loadu_ps(r + 16), t);
            t = _mm512_fmadd_ps(u2, _mm512_loadu_ps(r + 32), t);
            a[(q >> 2) + 4 * (q & 3)] = _mm512_fmadd_ps(u3, _mm512_loadu_ps(r + 48), t);
        }
        __m512 sums = sk_hsum16_avx512_f32(a);
        if (accumulate) sums = _mm512_add_ps(sums, _mm512_loadu_ps(out + p));
        _mm512_storeu_ps(out + p, sums);
    }
    return p;
}
#endif

__attribute__((target("avx512f"))) static void
SK_FN(sk_sddmm_row, avx512)(int64_t nnz, const SK_I *idx, const SK_T *u, const SK_T *panel,
                            int64_t w, SK_T *out, int accumulate) {
    if (w < SK_L5 / 2) { SK_FN(sk_sddmm_row, generic)(nnz, idx, u, panel, w, out, accumulate); return; }
    SK_V5 uu[8];
    int nv = (int)((w + SK_L5 - 1) / SK_L5);
    int64_t rem = w - (int64_t)(nv - 1) * SK_L5;
    SK_M5 m = (SK_M5)((1u << rem) - 1u);
    for (int v = 0; v < nv - 1; v++) uu[v] = SK_V5_LOAD(u + v * SK_L5);
    uu[nv - 1] = SK_V5_MLOAD(u + (nv - 1) * SK_L5, m);
    int64_t p = 0;
#if !SK_F64
    if (w == 4 * SK_L5) p = SK_FN(sk_sddmm_row64x16, avx512)(nnz, idx, uu, panel, out, accumulate);
#endif
    for (; p < nnz; p++) {
        const SK_T *r = panel + (int64_t)idx[p] * w;
        SK_V5 a0 = SK_V5_ZERO(), a1 = SK_V5_ZERO();
        int v = 0;
        for (; v + 2 <= nv - 1; v += 2) {
            a0 = SK_V5_FMA(uu[v], SK_V5_LOAD(r + v * SK_L5), a0);
            a1 = SK_V5_FMA(uu[v + 1], SK_V5_LOAD(r + (v + 1) * SK_L5), a1);
        }
        for (; v < nv - 1; v++) a0 = SK_V5_FMA(uu[v], SK_V5_LOAD(r + v * SK_L5), a0);
        a1 = SK_V5_FMA(uu[nv - 1], SK_V5_MLOAD(r + (nv - 1) * SK_L5, m), a1);
        SK_T d = SK_V5_HSUM(a0 + a1);
        out[p] = accumulate ? out[p] + d : d;
    }
}

__attribute__((target("avx512f"))) static void
SK_FN(sk_axpy_rows, avx512)(int64_t nnz, const SK_I *idx, const SK_T *val, const SK_T *xv,
                            int64_t w, SK_T *out) {
    if (w < 4) { SK_FN(sk_axpy_rows, generic)(nnz, idx, val, xv, w, out); return; }
    SK_V5 xx[8];
    int nv = (int)(w / SK_L5);
    int64_t rem = w - (int64_t)nv * SK_L5;
    SK_M5 m = (SK_M5)((1u << rem) - 1u);
    SK_V5 xt = SK_V5_MLOAD(xv + nv * SK_L5, m);
    for (int v = 0; v < nv; v++) xx[v] = SK_V5_LOAD(xv + v * SK_L5);
    for (int64_t p = 0; p < nnz; p++) {
        SK_T *o = out + (int64_t)idx[p] * w;
        SK_V5 a = SK_V5_SET1(val[p]);
        for (int v = 0; v < nv; v++) SK_V5_STORE(o + v * SK_L5, SK_V5_FMA(a, xx[v], SK_V5_LOAD(o + v * SK_L5)));
        if (rem) SK_V5_MSTORE(o + nv * SK_L5, m, SK_V5_FMA(a, xt, SK_V5_MLOAD(o + nv * SK_L5, m)));
    }
}

#if !SK_I64
__attribute__((target("avx512f"))) static SK_T
SK_FNT(sk_dot, avx512)(int64_t n, const SK_T *a, const SK_T *b) {
    SK_V5 s0 = SK_V5_ZERO(), s1 = SK_V5_ZERO(), s2 = SK_V5_ZERO(), s3 = SK_V5_ZERO();
    int64_t k = 0;
    for (; k + 4 * SK_L5 <= n; k += 4 * SK_L5) {
        s0 = SK_V5_FMA(SK_V5_LOAD(a + k), SK_V5_LOAD(b + k), s0);
        s1 = SK_V5_FMA(SK_V5_LOAD(a + k + SK_L5), SK_V5_LOAD(b + k + SK_L5), s1);
        s2 = SK_V5_FMA(SK_V5_LOAD(a + k + 2 * SK_L5), SK_V5_LOAD(b + k + 2 * SK_L5), s2);
        s3 = SK_V5_FMA(SK_V5_LOAD(a + k + 3 * SK_L5), SK_V5_LOAD(b + k + 3 * SK_L5), s3);
    }
    for (; k + SK_L5 <= n; k += SK_L5) s0 = SK_V5_FMA(SK_V5_LOAD(a + k), SK_V5_LOAD(b + k), s0);
    if (k < n) {
        SK_M5 m = (SK_M5)((1u << (n - k)) - 1u);
        s1 = SK_V5_FMA(SK_V5_MLOAD(a + k, m), SK_V5_MLOAD(b + k, m), s1);
    }
    return SK_V5_HSUM((s0 + s1) + (s2 + s3));
}
#endif

#if SK_I64
__attribute__((target("avx512f"), always_inline)) static inline void
SK_FNT(sk_dot_rows_nv, avx512)(const int nv, int64_t nnz, const int64_t *off, const SK_T *u,
                               int64_t us, const SK_T *base, int64_t ts, int64_t n_rows,
                               SK_M5 m, SK_T *out, int accumulate) {
    for (int64_t p = 0; p < nnz; p++) {
        SK_V5 acc[8];
        for (int v = 0; v < nv; v++) acc[v] = SK_V5_ZERO();
        for (int64_t r = 0; r < n_rows; r++) {
            const SK_T *a = u + r * us;
            const SK_T *b = base + r * ts + off[p];
            for (int v = 0; v < nv - 1; v++)
                acc[v] = SK_V5_FMA(SK_V5_LOAD(a + v * SK_L5), SK_V5_LOAD(b + v * SK_L5), acc[v]);
            acc[nv - 1] = SK_V5_FMA(SK_V5_MLOAD(a + (nv - 1) * SK_L5, m),
                                    SK_V5_MLOAD(b + (nv - 1) * SK_L5, m), acc[nv - 1]);
        }
        SK_V5 t = acc[0];
        for (int v = 1; v < nv; v++) t = t + acc[v];
        SK_T d = SK_V5_HSUM(t);
        out[p] = accumulate ? out[p] + d : d;
    }
}

__attribute__((target("avx512f"))) static void
SK_FNT(sk_dot_rows, avx512)(int64_t nnz, const int64_t *off, const SK_T *u, int64_t us,
                            const SK_T *base, int64_t ts, int64_t n_rows, int64_t w, SK_T *out,
                            int accumulate) {
    int nv = (int)((w + SK_L5 - 1) / SK_L5);
    int64_t rem = w - (int64_t)(nv - 1) * SK_L5;
    SK_M5 m = (SK_M5)((1u << rem) - 1u);
    switch (nv) {
#define SK_CASE(k) case k: SK_FNT(sk_dot_rows_nv, avx512)(k, nnz, off, u, us, base, ts, n_rows, m, out, accumulate); return;
        SK_CASE(1) SK_CASE(2) SK_CASE(3) SK_CASE(4) SK_CASE(5) SK_CASE(6) SK_CASE(7) SK_CASE(8)
#undef SK_CASE
        default: SK_FNT(sk_dot_rows, generic)(nnz, off, u, us, base, ts, n_rows, w, out, accumulate);
    }
}

/* sk_dot_run: NQ entries at a time share each load of u (1 + 1/NQ loads per FMA instead of
 * 2); 4 vectors per entry and step, so 16 independent FMA chains hide the FMA latency. */
__attribute__((target("avx512f"), always_inline)) static inline void
SK_FNT(sk_dot_run_q, avx512)(const int NQ, const int64_t *off, const SK_T *u, const SK_T *base,
                             int64_t len, SK_T *out) {
    SK_V5 acc[4][4];
    const SK_T *b[4];
    for (int q = 0; q < NQ; q++) {
        b[q] = base + off[q];
        for (int v = 0; v < 4; v++) acc[q][v] = SK_V5_ZERO();
    }
    int64_t j = 0;
    for (; j + 4 * SK_L5 <= len; j += 4 * SK_L5) {
        for (int v = 0; v < 4; v++) {
            SK_V5 a = SK_V5_LOAD(u + j + v * SK_L5);
            for (int q = 0; q < NQ; q++)
                acc[q][v] = SK_V5_FMA(a, SK_V5_LOAD(b[q] + j + v * SK_L5), acc[q][v]);
        }
    }
    for (int v = 0; j < len; j += SK_L5, v++) {
        int64_t rem = len - j;
        SK_M5 m = rem >= SK_L5 ? (SK_M5)~0u : (SK_M5)((1u << rem) - 1u);
        SK_V5 a = SK_V5_MLOAD(u + j, m);
        for (int q = 0; q < NQ; q++) acc[q][v] = SK_V5_FMA(a, SK_V5_MLOAD(b[q] + j, m), acc[q][v]);
    }
    for (int q = 0; q < NQ; q++) out[q] = SK_V5_HSUM((acc[q][0] + acc[q][1]) + (acc[q][2] + acc[q][3]));
}

__attribute__((target("avx512f"))) static void
SK_FNT(sk_dot_run, avx512)(int64_t nnz, const int64_t *off, const SK_T *u, const SK_T *base,
                           int64_t len, SK_T *out) {
    int64_t p = 0;
    for (; p + 4 <= nnz; p += 4) SK_FNT(sk_dot_run_q, avx512)(4, off + p, u, base, len, out + p);
    for (; p < nnz; p++) SK_FNT(sk_dot_run_q, avx512)(1, off + p, u, base, len, out + p);
}
#endif

/* The block-CSC inner loops (sk_bspmm, sk_bscatter) for AVX-512: sk_block_isa.h. */
#define SK_BISA avx512
#define SK_BTARGET "avx512f"
#define SK_BACC 16
#define SK_BV SK_V5
#define SK_BL SK_L5
#define SK_BMASK SK_M5
#define SK_BMASK_MAKE(last) ((SK_M5)((1u << (last)) - 1u))
#define SK_BV_ZERO SK_V5_ZERO
#define SK_BV_SET1 SK_V5_SET1
#define SK_BV_LOAD SK_V5_LOAD
#define SK_BV_STORE SK_V5_STORE
#define SK_BV_FMA SK_V5_FMA
#define SK_BV_MLOAD SK_V5_MLOAD
#define SK_BV_MSTORE SK_V5_MSTORE
#include "sk_block_isa.h"

#if !SK_F64
/* Block-CSC SDDMM, one group, AVX-512 float: out[b * G + g] (+)= dot(xt + idx[b] * depth,
 * y + g * depth) over `depth` entries, for G in {1, 2, 4, 8, 16}: 16 / G blocks per step, whose
 * 16 values are consecutive in out, reduced at once by the lane tree (dot s of the step goes to
 * a[(s >> 2) + 4 * (s & 3)]). Each y vector loaded serves 16 / G blocks and each x vector G
 * outputs. Returns the number of blocks done (whole steps); the caller does the rest. */
__attribute__((target("avx512f"), always_inline)) static inline int64_t
SK_FN(sk_bsddmm_g, avx512)(const int G, int64_t nb, const SK_I *idx, const float *xt,
                           const float *y, int64_t depth, float *out, int accumulate) {
    const int per = 16 / G;
    const int64_t nvec = (depth + 15) / 16;
    const int64_t rem = depth - (nvec - 1) * 16;
    const __mmask16 mlast = (__mmask16)((1u << rem) - 1u);
    int64_t b = 0;
    for (; b + per <= nb; b += per) {
        __m512 a[16];
        const float *xr[16];
        for (int s = 0; s < 16; s++) a[s] = _mm512_setzero_ps();
        for (int j = 0; j < per; j++) xr[j] = xt + (int64_t)idx[b + j] * depth;
        for (int64_t d = 0; d < nvec; d++) {
            const __mmask16 m = d == nvec - 1 ? mlast : (__mmask16)0xFFFF;
            __m512 xv[16];
            for (int j = 0; j < per; j++) xv[j] = _mm512_maskz_loadu_ps(m, xr[j] + d * 16);
            for (int g = 0; g < G; g++) {
                const __m512 yv = _mm512_maskz_loadu_ps(m, y + (int64_t)g * depth + d * 16);
                for (int j = 0; j < per; j++) {
                    const int q = j * G + g;
                    a[(q >> 2) + 4 * (q & 3)] = _mm512_fmadd_ps(xv[j], yv, a[(q >> 2) + 4 * (q & 3)]);
                }
            }
        }
        __m512 sums = sk_hsum16_avx512_f32(a);
        if (accumulate) sums = _mm512_add_ps(sums, _mm512_loadu_ps(out + b * G));
        _mm512_storeu_ps(out + b * G, sums);
    }
    return b;
}

__attribute__((target("avx512f"))) static int64_t
SK_FN(sk_bsddmm, avx512)(int64_t nb, const SK_I *idx, const float *xt, const float *y, int G,
                         int64_t depth, float *out, int accumulate) {
    switch (G) {  /* G a constant in each case: the accumulators stay in registers */
        case 1: return SK_FN(sk_bsddmm_g, avx512)(1, nb, idx, xt, y, depth, out, accumulate);
        case 2: return SK_FN(sk_bsddmm_g, avx512)(2, nb, idx, xt, y, depth, out, accumulate);
        case 4: return SK_FN(sk_bsddmm_g, avx512)(4, nb, idx, xt, y, depth, out, accumulate);
        case 8: return SK_FN(sk_bsddmm_g, avx512)(8, nb, idx, xt, y, depth, out, accumulate);
        case 16: return SK_FN(sk_bsddmm_g, avx512)(16, nb, idx, xt, y, depth, out, accumulate);
        default: return 0;
    }
}
#endif

#undef SK_V5
#undef SK_L5
#undef SK_M5
#undef SK_V5_ZERO
#undef SK_V5_SET1
#undef SK_V5_LOAD
#undef SK_V5_STORE
#undef SK_V5_FMA
#undef SK_V5_MLOAD
#undef SK_V5_MSTORE
#undef SK_V5_HSUM
#endif /* SK_X86 */

/* ================================ index min/max ============================================ */
/* Branch-free min/max of n >= 1 indices, for the CSR range check; one copy per index type. The
 * plain loop vectorizes (vpminsd/vpmaxsd, or vpminsq under AVX-512) once the ISA allows it. */
#if !SK_F64
#define SK_MINMAX_BODY                                                        \
    SK_I mn = a[0], mx = a[0];                                                \
    for (int64_t p = 1; p < n; p++) {                                         \
        mn = a[p] < mn ? a[p] : mn;                                           \
        mx = a[p] > mx ? a[p] : mx;                                           \
    }                                                                         \
    *lo = mn;                                                                 \
    *hi = mx;
static inline void SK_CAT3(sk_minmax, generic, SK_IS)(const SK_I *a, int64_t n, int64_t *lo, int64_t *hi) {
    SK_MINMAX_BODY
}
#ifdef SK_X86
__attribute__((target("avx2"))) static void
SK_CAT3(sk_minmax, avx2, SK_IS)(const SK_I *a, int64_t n, int64_t *lo, int64_t *hi) {
    SK_MINMAX_BODY
}
__attribute__((target("avx512f,avx512vl"))) static void
SK_CAT3(sk_minmax, avx512, SK_IS)(const SK_I *a, int64_t n, int64_t *lo, int64_t *hi) {
    SK_MINMAX_BODY
}
#endif
#undef SK_MINMAX_BODY
static inline void SK_CAT(sk_minmax, SK_IS)(const SK_I *a, int64_t n, int64_t *lo, int64_t *hi) {
#ifdef SK_X86
    int isa = sk_isa();
    if (isa == SK_ISA_AVX512) { SK_CAT3(sk_minmax, avx512, SK_IS)(a, n, lo, hi); return; }
    if (isa == SK_ISA_AVX2) { SK_CAT3(sk_minmax, avx2, SK_IS)(a, n, lo, hi); return; }
#endif
    SK_CAT3(sk_minmax, generic, SK_IS)(a, n, lo, hi);
}
#endif

/* ================================ dispatch ================================================ */
static inline void SK_CAT3(sk_spmm_row, SK_TS, SK_IS)(int isa, int64_t nnz, const SK_I *idx,
                                                      const SK_T *val, const SK_T *panel,
                                                      int64_t ldp, int64_t w, SK_T *out,
                                                      int64_t os) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FN(sk_spmm_row, avx512)(nnz, idx, val, panel, ldp, w, out, os); return; }
    if (isa == SK_ISA_AVX2) { SK_FN(sk_spmm_row, avx2)(nnz, idx, val, panel, ldp, w, out, os); return; }
#endif
    SK_FN(sk_spmm_row, generic)(nnz, idx, val, panel, ldp, w, out, os);
}

static inline void SK_CAT3(sk_bspmm, SK_TS, SK_IS)(int isa, int64_t nb, const SK_I *idx,
                                                  const SK_T *val, int64_t vs, int G,
                                                  const SK_T *panel, int64_t ldp, int64_t w,
                                                  SK_T *out, int64_t ldo) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FN(sk_bspmm, avx512)(nb, idx, val, vs, G, panel, ldp, w, out, ldo); return; }
    if (isa == SK_ISA_AVX2) { SK_FN(sk_bspmm, avx2)(nb, idx, val, vs, G, panel, ldp, w, out, ldo); return; }
#endif
    SK_FN(sk_bspmm, generic)(nb, idx, val, vs, G, panel, ldp, w, out, ldo);
}

/* Block-CSC SDDMM fast path (see sk_bsddmm, avx512): blocks done, 0 where there is none. */
static inline int64_t SK_CAT3(sk_bsddmm, SK_TS, SK_IS)(int isa, int64_t nb, const SK_I *idx,
                                                      const SK_T *xt, const SK_T *y, int G,
                                                      int64_t depth, SK_T *out, int accumulate) {
#if defined(SK_X86) && !SK_F64
    if (isa == SK_ISA_AVX512) return SK_FN(sk_bsddmm, avx512)(nb, idx, xt, y, G, depth, out, accumulate);
#endif
    (void)isa; (void)nb; (void)idx; (void)xt; (void)y; (void)G; (void)depth; (void)out;
    (void)accumulate;
    return 0;
}

static inline void SK_CAT3(sk_bscatter, SK_TS, SK_IS)(int isa, int64_t nb, const SK_I *idx,
                                                     const SK_T *val, int64_t vs, int G,
                                                     const SK_T *y, int64_t w, SK_T *acc) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FN(sk_bscatter, avx512)(nb, idx, val, vs, G, y, w, acc); return; }
    if (isa == SK_ISA_AVX2) { SK_FN(sk_bscatter, avx2)(nb, idx, val, vs, G, y, w, acc); return; }
#endif
    SK_FN(sk_bscatter, generic)(nb, idx, val, vs, G, y, w, acc);
}

static inline void SK_CAT3(sk_axpy_rows, SK_TS, SK_IS)(int isa, int64_t nnz, const SK_I *idx,
                                                       const SK_T *val, const SK_T *xv, int64_t w,
                                                       SK_T *out) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FN(sk_axpy_rows, avx512)(nnz, idx, val, xv, w, out); return; }
    if (isa == SK_ISA_AVX2) { SK_FN(sk_axpy_rows, avx2)(nnz, idx, val, xv, w, out); return; }
#endif
    SK_FN(sk_axpy_rows, generic)(nnz, idx, val, xv, w, out);
}

static inline void SK_CAT3(sk_sddmm_row, SK_TS, SK_IS)(int isa, int64_t nnz, const SK_I *idx,
                                                       const SK_T *u, const SK_T *panel, int64_t w,
                                                       SK_T *out, int accumulate) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FN(sk_sddmm_row, avx512)(nnz, idx, u, panel, w, out, accumulate); return; }
    if (isa == SK_ISA_AVX2) { SK_FN(sk_sddmm_row, avx2)(nnz, idx, u, panel, w, out, accumulate); return; }
#endif
    SK_FN(sk_sddmm_row, generic)(nnz, idx, u, panel, w, out, accumulate);
}

#if !SK_I64
static inline SK_T SK_CAT3(sk_dot, SK_TS, any)(int isa, int64_t n, const SK_T *a, const SK_T *b) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) return SK_FNT(sk_dot, avx512)(n, a, b);
    if (isa == SK_ISA_AVX2) return SK_FNT(sk_dot, avx2)(n, a, b);
#endif
    return SK_FNT(sk_dot, generic)(n, a, b);
}
#endif

#if SK_I64
static inline void SK_CAT3(sk_dot_rows, SK_TS, any)(int isa, int64_t nnz, const int64_t *off,
                                                    const SK_T *u, int64_t us, const SK_T *base,
                                                    int64_t ts, int64_t n_rows, int64_t w,
                                                    SK_T *out, int accumulate) {
    if (w <= 0) {
        for (int64_t p = 0; p < nnz; p++) out[p] = accumulate ? out[p] : 0;
        return;
    }
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FNT(sk_dot_rows, avx512)(nnz, off, u, us, base, ts, n_rows, w, out, accumulate); return; }
    if (isa == SK_ISA_AVX2) { SK_FNT(sk_dot_rows, avx2)(nnz, off, u, us, base, ts, n_rows, w, out, accumulate); return; }
#endif
    SK_FNT(sk_dot_rows, generic)(nnz, off, u, us, base, ts, n_rows, w, out, accumulate);
}

static inline void SK_CAT3(sk_dot_run, SK_TS, any)(int isa, int64_t nnz, const int64_t *off,
                                                   const SK_T *u, const SK_T *base, int64_t len,
                                                   SK_T *out) {
#ifdef SK_X86
    if (isa == SK_ISA_AVX512) { SK_FNT(sk_dot_run, avx512)(nnz, off, u, base, len, out); return; }
    if (isa == SK_ISA_AVX2) { SK_FNT(sk_dot_run, avx2)(nnz, off, u, base, len, out); return; }
#endif
    SK_FNT(sk_dot_run, generic)(nnz, off, u, base, len, out);
}
#endif

#undef SK_GT
#undef SK_FN
#undef SK_FNT
