/*
 * sk_block_isa.h -- the block-CSC inner loops (sk_bspmm: forward; sk_bscatter: dX) for one ISA.
 * Included by sk_simd_impl.h in its AVX2 and AVX-512 sections, once per (value, index) type,
 * with: SK_BISA (name token), SK_BTARGET (target attribute string), SK_BACC (accumulator
 * registers to use), SK_BV / SK_BL (vector type and lanes), SK_BMASK / SK_BMASK_MAKE(last)
 * (tail-mask type and constructor), SK_BV_ZERO/SET1/LOAD/STORE/FMA/MLOAD/MSTORE. It undefines
 * them at the end. Do not include directly.
 */
/* Block-CSC SpMM (SK_BISA): gc (1, 2, 4 or 8) outputs x nv vectors of accumulators (the last vector
 * masked by m), one pass over the group's blocks (value stride vs: see SK_BTILES). */
__attribute__((target(SK_BTARGET), always_inline)) static inline void
SK_FN(sk_bspmm_gv, SK_BISA)(const int gc, const int nv, int64_t nb, const SK_I *idx, const SK_T *val,
                        int64_t vs, const SK_T *panel, int64_t ldp, SK_BMASK m, SK_T *out,
                        int64_t ldo) {
    SK_BV acc[16];
    for (int i = 0; i < gc * nv; i++) acc[i] = SK_BV_ZERO();
    for (int64_t b = 0; b < nb; b++) {
        const SK_T *r = panel + (int64_t)idx[b] * ldp;
        if (ldp >= SK_BL && b + SK_SPMM_PREFETCH < nb) {
            const char *f = (const char *)(panel + (int64_t)idx[b + SK_SPMM_PREFETCH] * ldp);
            for (int v = 0; v < (nv * SK_BL * (int)sizeof(SK_T) + 63) / 64; v++)
                _mm_prefetch(f + v * 64, _MM_HINT_T0);
        }
        SK_BV x[4];
        for (int v = 0; v < nv - 1; v++) x[v] = SK_BV_LOAD(r + v * SK_BL);
        x[nv - 1] = SK_BV_MLOAD(r + (nv - 1) * SK_BL, m);
        const SK_T *a = val + b * vs;
        for (int g = 0; g < gc; g++) {
            SK_BV s = SK_BV_SET1(a[g]);
            for (int v = 0; v < nv; v++) acc[g * nv + v] = SK_BV_FMA(s, x[v], acc[g * nv + v]);
        }
    }
    for (int g = 0; g < gc; g++) {
        for (int v = 0; v < nv - 1; v++) SK_BV_STORE(out + g * ldo + v * SK_BL, acc[g * nv + v]);
        SK_BV_MSTORE(out + g * ldo + (nv - 1) * SK_BL, m, acc[g * nv + nv - 1]);
    }
}

/* The tiling both block drivers share (defined once, though this file is included per ISA):
 * the G outputs of a group in chunks gc of 8, 4, 2 or 1 rows, the w columns in runs of up to
 * nvmax vectors (the last one masked by m). TILE (statements) sets up the tile at (g0, j); then
 * CALL(G_, V_, VS), with g0, j, m and TILE's names in scope, runs the kernel instantiated for
 * (gc, nv) with the value stride VS a constant where it can be (vs == gc, or 16): a run-time
 * stride costs ~30% at 4096 x 4096, G = 8. */
#ifndef SK_BTILES
#define SK_BSTRIDE(CALL, G_, V_)                                                               \
    case G_ * 16 + V_:                                                                         \
        if (vs == G_) CALL(G_, V_, G_);                                                        \
        else if (vs == 16) CALL(G_, V_, 16);                                                   \
        else CALL(G_, V_, vs);                                                                 \
        break;
#define SK_BTILES(TILE, CALL)                                                                  \
    for (int g0 = 0; g0 < G;) {                                                                \
        const int gc = G - g0 >= 8 ? 8 : G - g0 >= 4 ? 4 : G - g0 >= 2 ? 2 : 1;                \
        const int nvmax = SK_BACC / gc < 4 ? SK_BACC / gc : 4;                                 \
        for (int64_t j = 0; j < w; j += nvmax * SK_BL) {                                       \
            int64_t rem = w - j;                                                               \
            int nv = rem >= nvmax * SK_BL ? nvmax : (int)((rem + SK_BL - 1) / SK_BL);          \
            int64_t last = rem - (int64_t)(nv - 1) * SK_BL;                                    \
            if (last > SK_BL) last = SK_BL;                                                    \
            SK_BMASK m = SK_BMASK_MAKE(last);                                                  \
            TILE                                                                               \
            switch (gc * 16 + nv) {                                                            \
                SK_BSTRIDE(CALL, 1, 1) SK_BSTRIDE(CALL, 1, 2)                                  \
                SK_BSTRIDE(CALL, 1, 3) SK_BSTRIDE(CALL, 1, 4)                                  \
                SK_BSTRIDE(CALL, 2, 1) SK_BSTRIDE(CALL, 2, 2)                                  \
                SK_BSTRIDE(CALL, 2, 3) SK_BSTRIDE(CALL, 2, 4)                                  \
                SK_BSTRIDE(CALL, 4, 1) SK_BSTRIDE(CALL, 4, 2)                                  \
                SK_BSTRIDE(CALL, 4, 3) SK_BSTRIDE(CALL, 4, 4)                                  \
                SK_BSTRIDE(CALL, 8, 1) SK_BSTRIDE(CALL, 8, 2)                                  \
                default: break;                                                                \
            }                                                                                  \
        }                                                                                      \
        g0 += gc;                                                                              \
    }
#endif

__attribute__((target(SK_BTARGET))) static void
SK_FN(sk_bspmm, SK_BISA)(int64_t nb, const SK_I *idx, const SK_T *val, int64_t vs, int G,
                     const SK_T *panel, int64_t ldp, int64_t w, SK_T *out, int64_t ldo) {
#define SK_BSPMM_CALL(G_, V_, VS)                                                              \
    SK_FN(sk_bspmm_gv, SK_BISA)(G_, V_, nb, idx, val + g0, VS, pj, ldp, m, oj, ldo)
    SK_BTILES(const SK_T *pj = panel + j; SK_T *oj = out + (int64_t)g0 * ldo + j;,
              SK_BSPMM_CALL)
#undef SK_BSPMM_CALL
}

/* Block-CSC scatter product (SK_BISA): gc (1, 2, 4 or 8) rows of y x nv vectors in registers (the
 * last vector masked by m), one pass over the group's blocks. */
__attribute__((target(SK_BTARGET), always_inline)) static inline void
SK_FN(sk_bscatter_gv, SK_BISA)(const int gc, const int nv, int64_t nb, const SK_I *idx,
                           const SK_T *val, const int64_t vs, const SK_T *y, int64_t w,
                           SK_BMASK m, SK_T *acc) {
    SK_BV yy[16];
    for (int g = 0; g < gc; g++) {
        for (int v = 0; v < nv - 1; v++) yy[g * nv + v] = SK_BV_LOAD(y + g * w + v * SK_BL);
        yy[g * nv + nv - 1] = SK_BV_MLOAD(y + g * w + (nv - 1) * SK_BL, m);
    }
    for (int64_t b = 0; b < nb; b++) {
        SK_T *o = acc + (int64_t)idx[b] * w;
        const SK_T *a = val + b * vs;
        SK_BV t[4];
        for (int v = 0; v < nv - 1; v++) t[v] = SK_BV_LOAD(o + v * SK_BL);
        t[nv - 1] = SK_BV_MLOAD(o + (nv - 1) * SK_BL, m);
        for (int g = 0; g < gc; g++) {
            SK_BV s = SK_BV_SET1(a[g]);
            for (int v = 0; v < nv; v++) t[v] = SK_BV_FMA(s, yy[g * nv + v], t[v]);
        }
        for (int v = 0; v < nv - 1; v++) SK_BV_STORE(o + v * SK_BL, t[v]);
        SK_BV_MSTORE(o + (nv - 1) * SK_BL, m, t[nv - 1]);
    }
}

__attribute__((target(SK_BTARGET))) static void
SK_FN(sk_bscatter, SK_BISA)(int64_t nb, const SK_I *idx, const SK_T *val, int64_t vs, int G,
                        const SK_T *y, int64_t w, SK_T *acc) {
#define SK_BSCATTER_CALL(G_, V_, VS)                                                           \
    SK_FN(sk_bscatter_gv, SK_BISA)(G_, V_, nb, idx, val + g0, VS, yj, w, m, acc + j)
    SK_BTILES(const SK_T *yj = y + (int64_t)g0 * w + j;, SK_BSCATTER_CALL)
#undef SK_BSCATTER_CALL
}

#undef SK_BISA
#undef SK_BTARGET
#undef SK_BACC
#undef SK_BV
#undef SK_BL
#undef SK_BMASK
#undef SK_BMASK_MAKE
#undef SK_BV_ZERO
#undef SK_BV_SET1
#undef SK_BV_LOAD
#undef SK_BV_STORE
#undef SK_BV_FMA
#undef SK_BV_MLOAD
#undef SK_BV_MSTORE
