/*
 * sparsekeras_kernels.h -- C API of the compiled sparse kernels (sparsekeras._kernels).
 *
 * These functions are defined in Cython (the .pxi files in _kernels, `cdef public ... noexcept nogil`); the
 * generated C includes this header, so the compiler rejects any drift between the two. The
 * TensorFlow op library links against the same extension module and calls these functions.
 *
 * Conventions (all functions):
 *   - argument order: dimensions, CSR arrays (indptr, indices, data), dense inputs, outputs,
 *     n_threads; outputs are the only non-const pointers and are preallocated by the caller;
 *   - CSR: indptr has n_rows + 1 entries with indptr[0] == 0 and indptr[n_rows] == nnz,
 *     non-decreasing; indices has nnz entries in [0, n_cols). Duplicates are summed; indices
 *     need not be sorted. The caller validates (sk_csr_check); the kernels trust their input;
 *   - dense arrays are C-contiguous (row-major);
 *   - suffix _f32/_f64 is the value type, _i32/_i64 the index type;
 *   - n_threads >= 1 is the number of OpenMP threads to use; kernels never choose it;
 *   - return 0 on success, -1 if scratch memory could not be allocated (outputs undefined).
 *
 * Results are bitwise identical for every n_threads.
 */
#ifndef SPARSEKERAS_KERNELS_H
#define SPARSEKERAS_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The epilogues of the *_bias_act products (a Dense layer's activation). */
#define SK_ACT_LINEAR 0
#define SK_ACT_RELU 1
/* Exact GELU, 0.5 v (1 + erf(v / sqrt(2))): float32 through a rational approximation of erf on
 * [-4, 4] (Eigen's, the one TensorFlow's Erf uses on CPU; within a few ulp of erf), float64
 * through libm's erf. Not bitwise TensorFlow's Gelu: within float rounding of it. */
#define SK_ACT_GELU 2
/* ReLU6, min(max(v, 0), 6) as TensorFlow's Relu6 (a NaN stays NaN). */
#define SK_ACT_RELU6 3

/* sk_csr_matmul: out (n_rows x n_out) = A (n_rows x n_cols, CSR) @ b (n_cols x n_out).
 *   Complexity O(nnz(A) * n_out + n_cols * n_out).
 * sk_dense_csc_matmul: out (n_rows x n_cols) = x (n_rows x n_inner) @ W (n_inner x n_cols),
 *   W in CSC form: indptr has n_cols + 1 entries, indices are row ids of W in [0, n_inner)
 *   (equivalently W^T in CSR). The Dense-layer orientation. Complexity O(nnz(W) * n_rows).
 * sk_dense_csc_matmul_bias_act: the same with a Dense layer's epilogue fused into the output
 *   store, out = act(x @ W + bias): bias has n_cols entries (or is NULL: no bias), act is
 *   SK_ACT_LINEAR, SK_ACT_RELU, SK_ACT_GELU or SK_ACT_RELU6. Equal, bitwise, to the product followed by the
 *   bias add and the activation (ReLU; GELU within float rounding of TensorFlow's).
 * sk_dense_csr_matmul: out (n_rows x n_cols) = x (n_rows x n_inner) @ B (n_inner x n_cols, CSR):
 *   the transposed-kernel product (scatter formulation), e.g. a Dense layer's dX = dY @ W^T from
 *   W's CSC arrays. Bitwise identical for every n_threads. Complexity O(nnz(B) * n_rows).
 * sk_csr_sddmm: out[p] = dot(u[i, :], v[indices[p], :]) for every stored p of row i;
 *   u is n_rows x depth, v is n_cols x depth, out has nnz entries. Complexity O(nnz * depth).
 * sk_csr_sddmm_t: the same with u and v given transposed: out[p] = sum_d ut[d, i] * vt[d, j],
 *   ut is depth x n_rows, vt is depth x n_cols (a Dense layer's X and dY, batch-major).
 * sk_csr_transpose: the CSR form of A^T (n_cols x n_rows): out_indptr n_cols + 1, out_indices
 *   and out_data nnz; out_perm (may be NULL) receives, for each output entry, the position of
 *   its source entry in A, so later values can be transposed with a gather; out_data may be
 *   NULL (data is then not read) to transpose the structure only. Entries of each
 *   output row come in increasing source-row order. Complexity O(nnz + n_cols * n_threads).
 */
int sk_csr_matmul_f32_i32(int64_t n_rows, int64_t n_cols, int64_t n_out, const int32_t *indptr,
    const int32_t *indices, const float *data, const float *b, float *out, int n_threads);
int sk_dense_csc_matmul_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int32_t *indptr,
    const int32_t *indices, const float *data, const float *x, float *out, int n_threads);
int sk_dense_csc_matmul_bias_act_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
    const int32_t *indptr, const int32_t *indices, const float *data, const float *x, const float *bias, int act,
    float *out, int n_threads);
int sk_dense_csr_matmul_f32_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int32_t *indptr,
    const int32_t *indices, const float *data, const float *x, float *out, int n_threads);
int sk_csr_sddmm_f32_i32(int64_t n_rows, int64_t n_cols, int64_t depth, const int32_t *indptr,
    const int32_t *indices, const float *u, const float *v, float *out, int n_threads);
int sk_csr_sddmm_t_f32_i32(int64_t n_rows, int64_t n_cols, int64_t depth, const int32_t *indptr,
    const int32_t *indices, const float *ut, const float *vt, float *out, int n_threads);
int sk_csr_transpose_f32_i32(int64_t n_rows, int64_t n_cols, const int32_t *indptr, const int32_t *indices,
    const float *data, int32_t *out_indptr, int32_t *out_indices, float *out_data, int64_t *out_perm,
    int n_threads);

int sk_csr_matmul_f32_i64(int64_t n_rows, int64_t n_cols, int64_t n_out, const int64_t *indptr,
    const int64_t *indices, const float *data, const float *b, float *out, int n_threads);
int sk_dense_csc_matmul_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int64_t *indptr,
    const int64_t *indices, const float *data, const float *x, float *out, int n_threads);
int sk_dense_csc_matmul_bias_act_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
    const int64_t *indptr, const int64_t *indices, const float *data, const float *x, const float *bias, int act,
    float *out, int n_threads);
int sk_dense_csr_matmul_f32_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int64_t *indptr,
    const int64_t *indices, const float *data, const float *x, float *out, int n_threads);
int sk_csr_sddmm_f32_i64(int64_t n_rows, int64_t n_cols, int64_t depth, const int64_t *indptr,
    const int64_t *indices, const float *u, const float *v, float *out, int n_threads);
int sk_csr_sddmm_t_f32_i64(int64_t n_rows, int64_t n_cols, int64_t depth, const int64_t *indptr,
    const int64_t *indices, const float *ut, const float *vt, float *out, int n_threads);
int sk_csr_transpose_f32_i64(int64_t n_rows, int64_t n_cols, const int64_t *indptr, const int64_t *indices,
    const float *data, int64_t *out_indptr, int64_t *out_indices, float *out_data, int64_t *out_perm,
    int n_threads);

int sk_csr_matmul_f64_i32(int64_t n_rows, int64_t n_cols, int64_t n_out, const int32_t *indptr,
    const int32_t *indices, const double *data, const double *b, double *out, int n_threads);
int sk_dense_csc_matmul_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int32_t *indptr,
    const int32_t *indices, const double *data, const double *x, double *out, int n_threads);
int sk_dense_csc_matmul_bias_act_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols,
    const int32_t *indptr, const int32_t *indices, const double *data, const double *x, const double *bias, int act,
    double *out, int n_threads);
int sk_dense_csr_matmul_f64_i32(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int32_t *indptr,
    const int32_t *indices, const double *data, const double *x, double *out, int n_threads);
int sk_csr_sddmm_f64_i32(int64_t n_rows, int64_t n_cols, int64_t depth, const int32_t *indptr,
    const int32_t *indices, const double *u, const double *v, double *out, int n_threads);
int sk_csr_sddmm_t_f64_i32(int64_t n_rows, int64_t n_cols, int64_t depth, const int32_t *indptr,
    const int32_t *indices, const double *ut, const double *vt, double *out, int n_threads);
int sk_csr_transpose_f64_i32(int64_t n_rows, int64_t n_cols, const int32_t *indptr, const int32_t *indices,
    const double *data, int32_t *out_indptr, int32_t *out_indices, double *out_data, int64_t *out_perm,
    int n_threads);

int sk_csr_matmul_f64_i64(int64_t n_rows, int64_t n_cols, int64_t n_out, const int64_t *indptr,
    const int64_t *indices, const double *data, const double *b, double *out, int n_threads);
int sk_dense_csc_matmul_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int64_t *indptr,
    const int64_t *indices, const double *data, const double *x, double *out, int n_threads);
int sk_dense_csc_matmul_bias_act_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols,
    const int64_t *indptr, const int64_t *indices, const double *data, const double *x, const double *bias, int act,
    double *out, int n_threads);
int sk_dense_csr_matmul_f64_i64(int64_t n_rows, int64_t n_inner, int64_t n_cols, const int64_t *indptr,
    const int64_t *indices, const double *data, const double *x, double *out, int n_threads);
int sk_csr_sddmm_f64_i64(int64_t n_rows, int64_t n_cols, int64_t depth, const int64_t *indptr,
    const int64_t *indices, const double *u, const double *v, double *out, int n_threads);
int sk_csr_sddmm_t_f64_i64(int64_t n_rows, int64_t n_cols, int64_t depth, const int64_t *indptr,
    const int64_t *indices, const double *ut, const double *vt, double *out, int n_threads);
int sk_csr_transpose_f64_i64(int64_t n_rows, int64_t n_cols, const int64_t *indptr, const int64_t *indices,
    const double *data, int64_t *out_indptr, int64_t *out_indices, double *out_data, int64_t *out_perm,
    int n_threads);

/* sk_csr_check: 0 if the CSR structure is valid, otherwise an error code (see _kernels.pyx)
 * with *where set to the offending position. */
int sk_csr_check_i32(int64_t n_rows, int64_t n_cols, int64_t nnz, const int32_t *indptr,
    const int32_t *indices, int64_t *where, int n_threads);
int sk_csr_check_i64(int64_t n_rows, int64_t n_cols, int64_t nnz, const int64_t *indptr,
    const int64_t *indices, int64_t *where, int n_threads);

/* The instruction set the kernels dispatch to: 0 generic, 1 AVX2+FMA, 2 AVX-512F. */
int sk_kernels_isa(void);

/* Threads: the count set by sparsekeras.set_num_threads (or its default), whether the user set
 * it explicitly, and the count a call doing `work` multiply-adds should use (1 when small). */
int sk_get_num_threads(void);
int sk_num_threads_is_set(void);
int sk_threads_for_work(int64_t work);

/* ---- csr_spgemm (issue 6): sparse x sparse with a dense result (csr_spgemm.pxi) -----------
 * sk_csr_spgemm: out (n_rows x n_cols) = A (n_rows x n_inner, CSR) @ W (n_inner x n_cols, CSR).
 *   Complexity O(n_rows * n_cols + sum over A's entries (i, k) of nnz(W[k, :])).
 * sk_csr_spgemm_masked: out = A @ (w on the pattern P): w dense (n_inner x n_cols, row-major),
 *   P a CSR structure (p_indptr n_inner + 1, p_indices column ids) of the entries of w to read;
 *   a layer that keeps its pruned kernel dense multiplies by its kept weights only.
 * sk_csr_spgemm_grad_a: out[p] = (dy @ W^T)[i, k] for every stored p = (i, k) of A; out nnz(A).
 * sk_csr_spgemm_grad_w: out[q] = (A^T @ dy)[k, j] for every stored q = (k, j) of W, from A^T in
 *   CSR (at_*: n_inner + 1 / nnz(A), row ids of A); out nnz(W). dy is n_rows x n_cols.
 */
#define SK_SPGEMM_DECL(TS, IS, T, I)                                                              \
  int sk_csr_spgemm_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,                 \
      const I *a_indptr, const I *a_indices, const T *a_data, const I *w_indptr,                  \
      const I *w_indices, const T *w_data, T *out, int n_threads);                                \
  int sk_csr_spgemm_grad_a_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,          \
      const I *a_indptr, const I *a_indices, const I *w_indptr, const I *w_indices,               \
      const T *w_data, const T *dy, T *out, int n_threads);                                       \
  int sk_csr_spgemm_grad_w_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,          \
      const I *at_indptr, const I *at_indices, const T *at_data, const I *w_indptr,               \
      const I *w_indices, const T *dy, T *out, int n_threads);                                    \
  int sk_csr_spgemm_masked_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,          \
      const I *a_indptr, const I *a_indices, const T *a_data, const I *p_indptr,                  \
      const I *p_indices, const T *w, T *out, int n_threads);
SK_SPGEMM_DECL(f32, i32, float, int32_t)
SK_SPGEMM_DECL(f32, i64, float, int64_t)
SK_SPGEMM_DECL(f64, i32, double, int32_t)
SK_SPGEMM_DECL(f64, i64, double, int64_t)
#undef SK_SPGEMM_DECL
/* ---- end csr_spgemm ---------------------------------------------------------------------- */

/* ---- bcsc_matmul (bcsc_matmul.pxi) -------------------------------------------------------
 * sk_dense_bcsc_matmul: out (n_rows x n_cols) = x (n_rows x n_inner) @ W, W in block-CSC form:
 *   groups of `block` consecutive columns (n_cols a multiple of block); indptr has
 *   n_cols / block + 1 entries over groups, indices one input row in [0, n_inner) per block,
 *   data block values block-major (data[b * block + g] = W[indices[b], q * block + g] for a
 *   block b of group q). A layer pruned in (1, block) blocks. Complexity O(nblocks * block *
 *   n_rows). Bitwise identical for every n_threads.
 * sk_dense_bcsc_matmul_bias_act: the same with a Dense layer's epilogue fused into the output
 *   store, out = act(x @ W + bias): bias has n_cols entries (or is NULL: no bias), act is
 *   SK_ACT_LINEAR, SK_ACT_RELU, SK_ACT_GELU or SK_ACT_RELU6. Equal, bitwise, to the product followed by the
 *   bias add and the activation (ReLU; GELU within float rounding of TensorFlow's).
 * sk_dense_bcsc_matmul_t: out (n_rows x n_inner) = dy (n_rows x n_cols) @ W^T, W block-CSC as
 *   above: the input gradient of the block product (no transpose of W). Bitwise identical for
 *   every n_threads. Complexity O(nblocks * block * n_rows).
 * sk_bcsc_sddmm: the block values' gradient of out = x @ W: out[b * block + g] =
 *   sum_i x[i, indices[b]] * dy[i, q * block + g] for block b of group q (x n_rows x n_inner, dy
 *   n_rows x n_cols, out nblocks * block). Complexity O(nblocks * block * n_rows).
 * sk_bcsc_expand: the CSC form of a block-CSC structure (n_groups groups): e_indptr
 *   (n_groups * block + 1), e_indices, positions (CSC entry -> block value) and inverse (block
 *   value -> CSC entry), nblocks * block entries each; the caller validates the structure. The
 *   gradients of the block product run on this form. Complexity O(nblocks * block).
 */
void sk_bcsc_expand_i32(int64_t n_groups, int64_t block, const int32_t *indptr,
    const int32_t *indices, int32_t *e_indptr, int32_t *e_indices, int64_t *positions,
    int64_t *inverse, int n_threads);
void sk_bcsc_expand_i64(int64_t n_groups, int64_t block, const int64_t *indptr,
    const int64_t *indices, int64_t *e_indptr, int64_t *e_indices, int64_t *positions,
    int64_t *inverse, int n_threads);
#define SK_BCSC_DECL(TS, IS, T, I)                                                                \
  int sk_dense_bcsc_matmul_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,          \
      int64_t block, const I *indptr, const I *indices, const T *data, const T *x, T *out,        \
      int n_threads);                                                                             \
  int sk_dense_bcsc_matmul_bias_act_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols, \
      int64_t block, const I *indptr, const I *indices, const T *data, const T *x, const T *bias, \
      int act, T *out, int n_threads);                                                            \
  int sk_bcsc_sddmm_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols, int64_t block,  \
      const I *indptr, const I *indices, const T *x, const T *dy, T *out, int n_threads);         \
  int sk_dense_bcsc_matmul_t_##TS##_##IS(int64_t n_rows, int64_t n_inner, int64_t n_cols,       \
      int64_t block, const I *indptr, const I *indices, const T *data, const T *dy, T *out,       \
      int n_threads);
SK_BCSC_DECL(f32, i32, float, int32_t)
SK_BCSC_DECL(f32, i64, float, int64_t)
SK_BCSC_DECL(f64, i32, double, int32_t)
SK_BCSC_DECL(f64, i64, double, int64_t)
#undef SK_BCSC_DECL

/* ---- take (take.pxi) ----------------------------------------------------------------------
 * sk_take_values: out[p] = params[idx[p]] for p < n (params has n_params entries): the value
 *   permutations of the gradients (CSC -> CSR order) and the kept-weight gathers of the layers.
 *   Returns -1 on success, the first p with idx[p] outside [0, n_params) (out undefined), or -2
 *   if scratch memory could not be allocated. Complexity O(n), random reads of params.
 */
#define SK_TAKE_DECL(TS, IS, T, I)                                                                \
  int64_t sk_take_values_##TS##_##IS(int64_t n_params, int64_t n, const I *idx, const T *params,  \
      T *out, int n_threads);
SK_TAKE_DECL(f32, i32, float, int32_t)
SK_TAKE_DECL(f32, i64, float, int64_t)
SK_TAKE_DECL(f64, i32, double, int32_t)
SK_TAKE_DECL(f64, i64, double, int64_t)
#undef SK_TAKE_DECL

#ifdef __cplusplus
}
#endif

#endif /* SPARSEKERAS_KERNELS_H */
