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

#endif /* SK_SIMD_H */
