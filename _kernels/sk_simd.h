/*
 * sk_simd.h -- SIMD inner loops of the sparse kernels, with run-time ISA dispatch.
 *
 * The Cython kernels (the .pxi files of _kernels) own the parallel structure (prange over row partitions,
 * packing, validation). The innermost loops live here because they need exact control of the
 * vector registers: a row-panel SpMM keeps a whole tile of the output row in registers while it
 * walks the row's nonzeros, and a C compiler only does that reliably with explicit vectors.
 *
 * Each inner loop exists for three ISAs, chosen once at run time with __builtin_cpu_supports:
 *   SK_ISA_AVX512 (avx512f), SK_ISA_AVX2 (avx2 + fma), SK_ISA_GENERIC (plain C).
 * The wheel is compiled for baseline x86-64; only these functions use wider instructions
 * (GCC target attributes), so the same binary runs everywhere.
 *
 * Determinism: every output element is one FMA chain over the row's nonzeros in storage order,
 * whatever tile or thread computes it, so results are bitwise identical for any thread count.
 */
#ifndef SK_SIMD_H
#define SK_SIMD_H

#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SK_X86 1
#endif

#define SK_ISA_GENERIC 0
#define SK_ISA_AVX2 1
#define SK_ISA_AVX512 2

static int sk_isa_forced = -1;

static inline int sk_isa_detect(void) {
#ifdef SK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return SK_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SK_ISA_AVX2;
#endif
    return SK_ISA_GENERIC;
}

static int sk_isa_cached = -1;

static inline int sk_isa(void) {
    if (sk_isa_forced >= 0) return sk_isa_forced;
    if (sk_isa_cached < 0) sk_isa_cached = sk_isa_detect();
    return sk_isa_cached;
}

/* Force an ISA (for tests): returns 0, or -1 if the CPU lacks it. -1 restores detection. */
static inline int sk_isa_force(int level) {
    if (level < 0) { sk_isa_forced = -1; return 0; }
    if (level > sk_isa_detect()) return -1;
    sk_isa_forced = level;
    return 0;
}

/* Tile width: elements of a dense panel row that a row-panel SpMM keeps in registers (256 bytes).
 * The kernel streams one panel row per nonzero from L2, so it is bound by L2 bandwidth
 * (~256 B per nonzero); a 256-byte tile keeps a 4096-row panel at 1 MiB, the L2 size of the
 * machines we measured, where a 512-byte tile (8 zmm) spilled to L3 and ran 20% slower. */
static inline int64_t sk_tile_f32(void) {
    int isa = sk_isa();
    return isa == SK_ISA_GENERIC ? 16 : 64;
}
static inline int64_t sk_tile_f64(void) {
    int isa = sk_isa();
    return isa == SK_ISA_GENERIC ? 8 : 32;
}

/* ------------------------------------------------------------------------------------------ */
/* Instantiate the templates in sk_simd_impl.h for each (value type, index type).              */
/* ------------------------------------------------------------------------------------------ */
#define SK_T float
#define SK_TS f32
#define SK_F64 0
#define SK_I int32_t
#define SK_IS i32
#define SK_I64 0
#include "sk_simd_impl.h"
#undef SK_I
#undef SK_IS
#undef SK_I64
#define SK_I int64_t
#define SK_IS i64
#define SK_I64 1
#include "sk_simd_impl.h"
#undef SK_I
#undef SK_IS
#undef SK_I64
#undef SK_T
#undef SK_TS
#undef SK_F64

#define SK_T double
#define SK_TS f64
#define SK_F64 1
#define SK_I int32_t
#define SK_IS i32
#define SK_I64 0
#include "sk_simd_impl.h"
#undef SK_I
#undef SK_IS
#undef SK_I64
#define SK_I int64_t
#define SK_IS i64
#define SK_I64 1
#include "sk_simd_impl.h"
#undef SK_I
#undef SK_IS
#undef SK_I64
#undef SK_T
#undef SK_TS
#undef SK_F64

/* ------------------------------------------------------------------------------------------ */
/* Out-of-place transpose: dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols.          */
/* The NHWC <-> channel-major rewrites of the convolution kernels. 8 x 8 register transposes    */
/* (AVX2) for float32, blocked scalar loops otherwise.                                          */
/* ------------------------------------------------------------------------------------------ */
#define SK_TRANSPOSE_SCALAR(T)                                                                  \
    for (int64_t i0 = 0; i0 < rows; i0 += 8)                                                     \
        for (int64_t j0 = 0; j0 < cols; j0 += 8) {                                               \
            int64_t i1 = i0 + 8 < rows ? i0 + 8 : rows, j1 = j0 + 8 < cols ? j0 + 8 : cols;      \
            for (int64_t j = j0; j < j1; j++)                                                    \
                for (int64_t i = i0; i < i1; i++) dst[j * ldd + i] = src[i * lds + j];           \
        }

static inline void sk_transpose_generic_f32(const float *src, int64_t lds, float *dst,
                                            int64_t ldd, int64_t rows, int64_t cols) {
    SK_TRANSPOSE_SCALAR(float)
}

static inline void sk_transpose_f64(int isa, const double *src, int64_t lds, double *dst,
                                    int64_t ldd, int64_t rows, int64_t cols) {
    (void)isa;
    SK_TRANSPOSE_SCALAR(double)
}

#ifdef SK_X86
/* In-register 8x8 transpose: r[k] (row k) becomes column k. */
__attribute__((target("avx2"), always_inline)) static inline void sk_tr8x8_avx2(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

__attribute__((target("avx2"))) static void
sk_transpose_avx2_f32(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows,
                      int64_t cols) {
    int64_t r8 = rows & ~(int64_t)7, c8 = cols & ~(int64_t)7;
    __m256 r[8];
    for (int64_t i0 = 0; i0 < r8; i0 += 8) {
        for (int64_t j0 = 0; j0 < c8; j0 += 8) {
            const float *s0 = src + i0 * lds + j0;
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(s0 + k * lds);
            sk_tr8x8_avx2(r);
            float *d0 = dst + j0 * ldd + i0;
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(d0 + k * ldd, r[k]);
        }
        if (c8 < cols) {
            /* Column remainder (a tile's row segment rarely ends on 8): the same transpose on
             * masked loads, storing the rem valid output rows. */
            int64_t rem = cols - c8;
            __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem),
                                           _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            const float *s0 = src + i0 * lds + c8;
            for (int k = 0; k < 8; k++) r[k] = _mm256_maskload_ps(s0 + k * lds, m);
            sk_tr8x8_avx2(r);
            float *d0 = dst + c8 * ldd + i0;
            for (int64_t k = 0; k < rem; k++) _mm256_storeu_ps(d0 + k * ldd, r[k]);
        }
    }
    for (int64_t j = 0; j < cols; j++)
        for (int64_t i = r8; i < rows; i++) dst[j * ldd + i] = src[i * lds + j];
}
#endif

static inline void sk_transpose_f32(int isa, const float *src, int64_t lds, float *dst,
                                    int64_t ldd, int64_t rows, int64_t cols) {
#ifdef SK_X86
    if (isa >= SK_ISA_AVX2) { sk_transpose_avx2_f32(src, lds, dst, ldd, rows, cols); return; }
#endif
    sk_transpose_generic_f32(src, lds, dst, ldd, rows, cols);
}
#undef SK_TRANSPOSE_SCALAR

/* ------------------------------------------------------------------------------------------ */
/* Transposed store of a row-major block: dst[j * ldd + i] = src[i * lds + j] for i < rows,     */
/* j < cols. The output side of the products whose result is batch-major (x @ W): src holds a    */
/* few output features (rows) by a batch tile (cols), dst is the (batch, features) result, whose */
/* row stride is often a power of two. AVX-512 (float32): 16 x 16 register transposes, each      */
/* destination row written as one 64-byte run (half-line runs at a 2^k stride thrash L1);        */
/* otherwise scalar, feature-innermost.                                                          */
/* ------------------------------------------------------------------------------------------ */
/* GELU of the fused epilogues (SK_ACT_GELU): 0.5 v (1 + erf(v / sqrt(2))), erf as Eigen's
 * float rational approximation, x clamped to [-4, 4], erf(x) = x P(x^2) / Q(x^2). The scalar and
 * the AVX-512 versions run the same operations in the same order (fused multiply-adds, one
 * division), so a tile gets the same bits whichever path stores it. */
#define SK_ERF_A13 -2.72614225801306e-10f
#define SK_ERF_A11 2.77068142495902e-08f
#define SK_ERF_A9 -2.10102402082508e-06f
#define SK_ERF_A7 -5.69250639462346e-05f
#define SK_ERF_A5 -7.34990630326855e-04f
#define SK_ERF_A3 -2.95459980854025e-03f
#define SK_ERF_A1 -1.60960333262415e-02f
#define SK_ERF_B8 -1.45660718464996e-05f
#define SK_ERF_B6 -2.13374055278905e-04f
#define SK_ERF_B4 -1.68282697438203e-03f
#define SK_ERF_B2 -7.37332916720468e-03f
#define SK_ERF_B0 -1.42647390514189e-02f
#define SK_SQRT1_2F 0.70710678118654752f

static inline float sk_gelu_f32(float v) {
    float x = v * SK_SQRT1_2F;
    x = x < -4.0f ? -4.0f : x;
    x = x > 4.0f ? 4.0f : x;
    const float x2 = x * x;
    float p = fmaf(x2, SK_ERF_A13, SK_ERF_A11);
    p = fmaf(x2, p, SK_ERF_A9);
    p = fmaf(x2, p, SK_ERF_A7);
    p = fmaf(x2, p, SK_ERF_A5);
    p = fmaf(x2, p, SK_ERF_A3);
    p = fmaf(x2, p, SK_ERF_A1);
    p = x * p;
    float q = fmaf(x2, SK_ERF_B8, SK_ERF_B6);
    q = fmaf(x2, q, SK_ERF_B4);
    q = fmaf(x2, q, SK_ERF_B2);
    q = fmaf(x2, q, SK_ERF_B0);
    const float e = p / q;
    const float h = v * 0.5f;
    return fmaf(h, e, h);
}

static inline double sk_gelu_f64(double v) {
    return 0.5 * v * (1.0 + erf(v * 0.70710678118654752440));
}

#ifdef SK_X86
__attribute__((target("avx512f"), always_inline)) static inline void sk_tr16x16_avx512(__m512 r[16]) {
    __m512 t[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        __m512d a0 = _mm512_castps_pd(t[4 * k]), a1 = _mm512_castps_pd(t[4 * k + 1]);
        __m512d a2 = _mm512_castps_pd(t[4 * k + 2]), a3 = _mm512_castps_pd(t[4 * k + 3]);
        r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    /* r[4k + c] now holds, per 128-bit lane L, column 4L + c of rows 4k..4k+3 */
    for (int c = 0; c < 4; c++) {
        __m512 b0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);       /* lanes 0,2 of rows 0-7 */
        __m512 b1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);       /* lanes 1,3 */
        __m512 b2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        __m512 b3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(b0, b2, 0x88);       /* lane 0: column c */
        t[8 + c] = _mm512_shuffle_f32x4(b0, b2, 0xDD);   /* lane 2: column 8 + c */
        t[4 + c] = _mm512_shuffle_f32x4(b1, b3, 0x88);   /* lane 1: column 4 + c */
        t[12 + c] = _mm512_shuffle_f32x4(b1, b3, 0xDD);  /* lane 3: column 12 + c */
    }
    for (int k = 0; k < 16; k++) r[k] = t[k];
}

#ifdef SK_X86
__attribute__((target("avx512f"))) static inline __m512 sk_gelu_avx512_f32(__m512 v) {
    __m512 x = _mm512_mul_ps(v, _mm512_set1_ps(SK_SQRT1_2F));
    x = _mm512_max_ps(x, _mm512_set1_ps(-4.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(4.0f));
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(SK_ERF_A13), _mm512_set1_ps(SK_ERF_A11));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(SK_ERF_A9));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(SK_ERF_A7));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(SK_ERF_A5));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(SK_ERF_A3));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(SK_ERF_A1));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(SK_ERF_B8), _mm512_set1_ps(SK_ERF_B6));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(SK_ERF_B4));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(SK_ERF_B2));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(SK_ERF_B0));
    const __m512 e = _mm512_div_ps(p, q);
    const __m512 h = _mm512_mul_ps(v, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(h, e, h);
}
#endif

/* The transposed store with a Dense layer's epilogue: dst[j * ldd + i] = act(src[i * lds + j] +
 * bias[i]) (bias may be NULL; act 1: ReLU, keeping a NaN as TensorFlow's Relu does: max(0, v)
 * returns its second operand when it is a NaN; act 2: GELU, sk_gelu_avx512_f32; act 3:
 * ReLU6, min(6, max(0, v)), NaN kept the same way). Applied in registers after the transpose, where
 * bias[i0..i0+16] is one vector: no pass over memory. */
__attribute__((target("avx512f"))) static void
sk_transpose_store_epi_avx512_f32(const float *src, int64_t lds, float *dst, int64_t ldd,
                                  int64_t rows, int64_t cols, const float *bias, int act) {
    __m512 r[16];
    for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        int64_t ni = rows - i0 < 16 ? rows - i0 : 16;
        __mmask16 mi = (__mmask16)((1u << ni) - 1u);
        const __m512 bv = bias != NULL ? _mm512_maskz_loadu_ps(mi, bias + i0) : _mm512_setzero_ps();
        for (int64_t j0 = 0; j0 < cols; j0 += 16) {
            int64_t nj = cols - j0 < 16 ? cols - j0 : 16;
            __mmask16 mj = (__mmask16)((1u << nj) - 1u);
            const float *s0 = src + i0 * lds + j0;
            for (int k = 0; k < 16; k++)
                r[k] = k < ni ? _mm512_maskz_loadu_ps(mj, s0 + k * lds) : _mm512_setzero_ps();
            sk_tr16x16_avx512(r);
            if (bias != NULL)
                for (int k = 0; k < 16; k++) r[k] = _mm512_add_ps(r[k], bv);
            if (act == 1)
                for (int k = 0; k < 16; k++) r[k] = _mm512_max_ps(_mm512_setzero_ps(), r[k]);
            else if (act == 2)
                for (int k = 0; k < nj; k++) r[k] = sk_gelu_avx512_f32(r[k]);
            else if (act == 3)  /* min(6, .) returns its second operand for a NaN, too */
                for (int k = 0; k < 16; k++)
                    r[k] = _mm512_min_ps(_mm512_set1_ps(6.0f),
                                         _mm512_max_ps(_mm512_setzero_ps(), r[k]));
            float *d0 = dst + j0 * ldd + i0;
            for (int64_t k = 0; k < nj; k++) _mm512_mask_storeu_ps(d0 + k * ldd, mi, r[k]);
        }
    }
}

__attribute__((target("avx512f"))) static void
sk_transpose_store_avx512_f32(const float *src, int64_t lds, float *dst, int64_t ldd,
                              int64_t rows, int64_t cols) {
    sk_transpose_store_epi_avx512_f32(src, lds, dst, ldd, rows, cols, NULL, 0);
}
#endif

/* sk_transpose_store_epi_avx512_f32 where the CPU has AVX-512: returns 1 when done, 0 when not
 * (the caller applies the epilogue and stores by the other paths). */
static inline int sk_transpose_store_epi_f32(int isa, const float *src, int64_t lds, float *dst,
                                             int64_t ldd, int64_t rows, int64_t cols,
                                             const float *bias, int act) {
#ifdef SK_X86
    if (isa >= SK_ISA_AVX512) {
        sk_transpose_store_epi_avx512_f32(src, lds, dst, ldd, rows, cols, bias, act);
        return 1;
    }
#endif
    (void)isa; (void)src; (void)lds; (void)dst; (void)ldd; (void)rows; (void)cols; (void)bias;
    (void)act;
    return 0;
}

#define SK_TRANSPOSE_STORE_DEF(TS, T)                                                            \
    static inline void sk_transpose_store_##TS(int isa, const T *src, int64_t lds, T *dst,        \
                                               int64_t ldd, int64_t rows, int64_t cols) {         \
        SK_TRANSPOSE_STORE_AVX512_##TS                                                            \
        (void)isa;                                                                                \
        for (int64_t j = 0; j < cols; j++)                                                        \
            for (int64_t i = 0; i < rows; i++) dst[j * ldd + i] = src[i * lds + j];               \
    }
#ifdef SK_X86
#define SK_TRANSPOSE_STORE_AVX512_f32                                                             \
    if (isa >= SK_ISA_AVX512) { sk_transpose_store_avx512_f32(src, lds, dst, ldd, rows, cols); return; }
#else
#define SK_TRANSPOSE_STORE_AVX512_f32
#endif
#define SK_TRANSPOSE_STORE_AVX512_f64
SK_TRANSPOSE_STORE_DEF(f32, float)
SK_TRANSPOSE_STORE_DEF(f64, double)
#undef SK_TRANSPOSE_STORE_DEF
#undef SK_TRANSPOSE_STORE_AVX512_f32
#undef SK_TRANSPOSE_STORE_AVX512_f64

/* ------------------------------------------------------------------------------------------ */
/* Gather out[p] = params[idx[p]] for p in [0, n): the value permutations of the gradients and  */
/* the kept-weight gather of the layers. The reads are random over params (a CSC -> CSR value   */
/* permutation jumps between columns at every step), so a plain loop waits on one cache miss    */
/* after another; prefetching SK_TAKE_AHEAD entries ahead keeps that many misses in flight.     */
/* Returns the first p whose index is outside [0, n_params), or -1 (nothing is read out of      */
/* range; prefetches never fault).                                                              */
/* ------------------------------------------------------------------------------------------ */
#define SK_TAKE_AHEAD 32
#define SK_TAKE_DEF(TS, IS, T, I)                                                               \
    static inline int64_t sk_take_##TS##_##IS(int64_t n_params, int64_t n, const I *idx,         \
                                              const T *params, T *out) {                         \
        for (int64_t p = 0; p < n; p++) {                                                        \
            if (p + SK_TAKE_AHEAD < n)                                                           \
                __builtin_prefetch((const void *)((uintptr_t)params                              \
                                                  + (uintptr_t)idx[p + SK_TAKE_AHEAD] * sizeof(T))); \
            uint64_t k = (uint64_t)idx[p];                                                       \
            if (k >= (uint64_t)n_params) return p;                                               \
            out[p] = params[k];                                                                  \
        }                                                                                        \
        return -1;                                                                               \
    }
SK_TAKE_DEF(f32, i32, float, int32_t)
SK_TAKE_DEF(f32, i64, float, int64_t)
SK_TAKE_DEF(f64, i32, double, int32_t)
SK_TAKE_DEF(f64, i64, double, int64_t)
#undef SK_TAKE_DEF

#endif /* SK_SIMD_H */
