// TensorFlow op library of sparsekeras: CSR x dense products, SDDMM and CSR transposition.
//
// Every op validates its inputs in Compute (graph mode included) and calls the compiled Cython
// kernels through their C API (sparsekeras_kernels.h); this library links against the same
// extension module that numpy callers use, so both run the very same machine code.
//
// Ops (namespace SparseKeras>):
//   CsrMatMul(indptr, indices, values, dense_shape, b) -> A @ b               A: M x K (CSR)
//   DenseCscMatMul(x, indptr, indices, values, dense_shape) -> x @ W         W: K x N (CSC)
//   DenseCsrMatMul(x, indptr, indices, values, dense_shape) -> x @ B         B: N x K (CSR)
//   CsrSddmm(indptr, indices, dense_shape, u, v) -> values, out[p] = u[i] . v[j]
//   CsrSddmmT(indptr, indices, dense_shape, ut, vt) -> values, out[p] = ut[:, i] . vt[:, j]
//   CsrTransposeStructure(indptr, indices, dense_shape) -> (indptr_t, indices_t, perm)
// Gradients are registered in Python (sparsekeras/ops/_gradients.py).
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "op_common.h"
#include "sparsekeras_kernels.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/device_base.h"

namespace sparsekeras {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// ---- shape functions ----------------------------------------------------------------------

absl::Status CsrMatMulShape(InferenceContext* c) {
  ShapeHandle indptr, indices, values, dense_shape, b;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &dense_shape));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &b));
  DimensionHandle m;
  TF_RETURN_IF_ERROR(c->Subtract(c->Dim(indptr, 0), 1, &m));
  c->set_output(0, c->Matrix(m, c->Dim(b, 1)));
  return absl::OkStatus();
}

absl::Status DenseCscMatMulShape(InferenceContext* c) {
  ShapeHandle x, indptr, indices, values, dense_shape, t_indptr, t_indices, t_perm;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 1, &t_indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 1, &t_indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(7), 1, &t_perm));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &dense_shape));
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Subtract(c->Dim(indptr, 0), 1, &n));
  c->set_output(0, c->Matrix(c->Dim(x, 0), n));
  return absl::OkStatus();
}

absl::Status DenseCsrMatMulShape(InferenceContext* c) {
  ShapeHandle x, indptr, indices, values, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &dense_shape));
  const Tensor* ds = c->input_tensor(4);
  DimensionHandle k = c->UnknownDim();
  if (ds != nullptr && ds->NumElements() == 2) k = c->MakeDim(ds->flat<int64_t>()(1));
  c->set_output(0, c->Matrix(c->Dim(x, 0), k));
  return absl::OkStatus();
}

absl::Status CsrSddmmShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape, u, v;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &u));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &v));
  c->set_output(0, c->Vector(c->Dim(indices, 0)));
  return absl::OkStatus();
}

absl::Status CsrSddmmTShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape, ut, vt;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &ut));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &vt));
  c->set_output(0, c->Vector(c->Dim(indices, 0)));
  return absl::OkStatus();
}

absl::Status CsrTransposeShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  // The transpose has dense_shape[1] rows: known when dense_shape is a constant.
  const Tensor* ds = c->input_tensor(2);
  if (ds != nullptr && ds->NumElements() == 2) {
    c->set_output(0, c->Vector(ds->flat<int64_t>()(1) + 1));
  } else {
    c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
  }
  c->set_output(1, c->Vector(c->Dim(indices, 0)));
  c->set_output(2, c->Vector(c->Dim(indices, 0)));
  return absl::OkStatus();
}

}  // namespace
}  // namespace sparsekeras

REGISTER_OP("SparseKeras>CsrMatMul")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("dense_shape: int64")
    .Input("b: T")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::CsrMatMulShape)
    .Doc("out = A @ b, A sparse (M x K) given as CSR (indptr, indices, values, dense_shape).");

REGISTER_OP("SparseKeras>DenseCscMatMul")
    .Input("x: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("dense_shape: int64")
    .Input("t_indptr: Tindex")
    .Input("t_indices: Tindex")
    .Input("t_perm: int64")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseCscMatMulShape)
    .Doc("out = x @ W, W sparse (K x N) given in CSC form: indptr over its N columns, indices "
         "its row ids; dense_shape = [K, N]. t_indptr, t_indices, t_perm: W's CSR structure and "
         "the permutation CSC -> CSR (CsrTransposeStructure of the CSC arrays), read only by the "
         "gradient; empty tensors make the gradient compute them.");

REGISTER_OP("SparseKeras>DenseCsrMatMul")
    .Input("x: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("dense_shape: int64")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseCsrMatMulShape)
    .Doc("out = x @ B, B sparse (N x K) given as CSR; dense_shape = [N, K]. The scatter "
         "(transposed-kernel) product: a Dense layer's dX = dY @ W^T from W's CSC arrays.");

REGISTER_OP("SparseKeras>CsrSddmm")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Input("u: T")
    .Input("v: T")
    .Output("values: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::CsrSddmmShape)
    .Doc("values[p] = dot(u[i], v[j]) for each stored entry p = (i, j) of the CSR pattern.");

REGISTER_OP("SparseKeras>CsrSddmmT")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Input("ut: T")
    .Input("vt: T")
    .Output("values: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::CsrSddmmTShape)
    .Doc("values[p] = sum_d ut[d, i] * vt[d, j] for each stored entry p = (i, j): SDDMM with "
         "transposed operands (a Dense layer's X and dY as they are, batch-major).");

REGISTER_OP("SparseKeras>CsrTransposeStructure")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Output("indptr_t: Tindex")
    .Output("indices_t: Tindex")
    .Output("perm: int64")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::CsrTransposeShape)
    .Doc("CSR structure of A^T and perm such that values_t = gather(values, perm).");

namespace sparsekeras {
namespace {

// ---- typed kernel entry points ------------------------------------------------------------

#define SK_OVERLOADS(T, I, TS, IS)                                                                \
  inline int CsrMatMul(int64_t m, int64_t k, int64_t n, const I* ip, const I* ix, const T* d,      \
                       const T* b, T* out, int nt) {                                               \
    return sk_csr_matmul_##TS##_##IS(m, k, n, ip, ix, d, b, out, nt);                              \
  }                                                                                                \
  inline int DenseCscMatMul(int64_t m, int64_t k, int64_t n, const I* ip, const I* ix, const T* d, \
                            const T* x, T* out, int nt) {                                          \
    return sk_dense_csc_matmul_##TS##_##IS(m, k, n, ip, ix, d, x, out, nt);                        \
  }                                                                                                \
  inline int DenseCsrMatMul(int64_t m, int64_t k, int64_t n, const I* ip, const I* ix, const T* d, \
                            const T* x, T* out, int nt) {                                          \
    return sk_dense_csr_matmul_##TS##_##IS(m, k, n, ip, ix, d, x, out, nt);                        \
  }                                                                                                \
  inline int CsrSddmm(int64_t m, int64_t n, int64_t depth, const I* ip, const I* ix, const T* u,   \
                      const T* v, T* out, int nt) {                                                \
    return sk_csr_sddmm_##TS##_##IS(m, n, depth, ip, ix, u, v, out, nt);                           \
  }                                                                                                \
  inline int CsrSddmmT(int64_t m, int64_t n, int64_t depth, const I* ip, const I* ix, const T* ut, \
                       const T* vt, T* out, int nt) {                                              \
    return sk_csr_sddmm_t_##TS##_##IS(m, n, depth, ip, ix, ut, vt, out, nt);                       \
  }
SK_OVERLOADS(float, int32_t, f32, i32)
SK_OVERLOADS(float, int64_t, f32, i64)
SK_OVERLOADS(double, int32_t, f64, i32)
SK_OVERLOADS(double, int64_t, f64, i64)
#undef SK_OVERLOADS

// Structure-only transpose (no values: they are gathered with perm by the caller, which keeps
// that step differentiable).
inline int CsrTransposeStructure(int64_t m, int64_t n, const int32_t* ip, const int32_t* ix,
                                 int32_t* t_ip, int32_t* t_ix, int64_t* perm, int nt) {
  return sk_csr_transpose_f32_i32(m, n, ip, ix, nullptr, t_ip, t_ix, nullptr, perm, nt);
}
inline int CsrTransposeStructure(int64_t m, int64_t n, const int64_t* ip, const int64_t* ix,
                                 int64_t* t_ip, int64_t* t_ix, int64_t* perm, int nt) {
  return sk_csr_transpose_f32_i64(m, n, ip, ix, nullptr, t_ip, t_ix, nullptr, perm, nt);
}

// ---- kernels ------------------------------------------------------------------------------

template <typename T, typename I>
class CsrMatMulOp : public OpKernel {
 public:
  explicit CsrMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& values = ctx->input(2);
    const Tensor& dense_shape = ctx->input(3);
    const Tensor& b = ctx->input(4);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, &values, dense_shape, "a", false, &d));
    OP_REQUIRES(ctx, b.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat("b must be a matrix; received shape ",
                                                        b.shape().DebugString())));
    OP_REQUIRES(ctx, b.dim_size(0) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "b must have ", d.cols, " rows to match a.dense_shape [", d.rows, ", ", d.cols,
                    "]; received b.shape ", b.shape().DebugString())));
    const int64_t n = b.dim_size(1);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.rows, n}), &out));
    if (d.rows == 0 || n == 0) return;
    ThreadLease lease(ctx, d.nnz * n + d.cols * n);
    int rc = CsrMatMul(d.rows, d.cols, n, indptr.flat<I>().data(), indices.flat<I>().data(),
                       values.flat<T>().data(), b.flat<T>().data(), out->flat<T>().data(),
                       lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrMatMul"));
  }
};

template <typename T, typename I>
class DenseCscMatMulOp : public OpKernel {
 public:
  explicit DenseCscMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& indptr = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const Tensor& values = ctx->input(3);
    const Tensor& dense_shape = ctx->input(4);
    CsrDims d;  // rows = N (columns of W), cols = K
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, &values, dense_shape, "w", true, &d));
    OP_REQUIRES(ctx, x.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat("x must be a matrix; received shape ",
                                                        x.shape().DebugString())));
    OP_REQUIRES(ctx, x.dim_size(1) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "x must have ", d.cols, " columns to match w.dense_shape [", d.cols, ", ",
                    d.rows, "]; received x.shape ", x.shape().DebugString())));
    const int64_t m = x.dim_size(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, d.rows}), &out));
    if (m == 0 || d.rows == 0) return;
    ThreadLease lease(ctx, d.nnz * m + m * d.cols);
    int rc = DenseCscMatMul(m, d.cols, d.rows, indptr.flat<I>().data(), indices.flat<I>().data(),
                            values.flat<T>().data(), x.flat<T>().data(), out->flat<T>().data(),
                            lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("DenseCscMatMul"));
  }
};

template <typename T, typename I>
class DenseCsrMatMulOp : public OpKernel {
 public:
  explicit DenseCsrMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& indptr = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const Tensor& values = ctx->input(3);
    const Tensor& dense_shape = ctx->input(4);
    CsrDims d;  // rows = N, cols = K
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, &values, dense_shape, "b", false, &d));
    OP_REQUIRES(ctx, x.dims() == 2,
                absl::InvalidArgumentError(absl::StrCat("x must be a matrix; received shape ",
                                                        x.shape().DebugString())));
    OP_REQUIRES(ctx, x.dim_size(1) == d.rows,
                absl::InvalidArgumentError(absl::StrCat(
                    "x must have ", d.rows, " columns to match b.dense_shape [", d.rows, ", ",
                    d.cols, "]; received x.shape ", x.shape().DebugString())));
    const int64_t m = x.dim_size(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({m, d.cols}), &out));
    if (m == 0 || d.cols == 0) return;
    ThreadLease lease(ctx, d.nnz * m + m * d.rows);
    int rc = DenseCsrMatMul(m, d.rows, d.cols, indptr.flat<I>().data(), indices.flat<I>().data(),
                            values.flat<T>().data(), x.flat<T>().data(), out->flat<T>().data(),
                            lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("DenseCsrMatMul"));
  }
};

template <typename T, typename I>
class CsrSddmmOp : public OpKernel {
 public:
  explicit CsrSddmmOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    const Tensor& u = ctx->input(3);
    const Tensor& v = ctx->input(4);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "pattern", false, &d));
    OP_REQUIRES(ctx, u.dims() == 2 && u.dim_size(0) == d.rows,
                absl::InvalidArgumentError(absl::StrCat(
                    "u must be a matrix with ", d.rows, " rows (pattern.dense_shape [", d.rows,
                    ", ", d.cols, "]); received u.shape ", u.shape().DebugString())));
    OP_REQUIRES(ctx, v.dims() == 2 && v.dim_size(0) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "v must be a matrix with ", d.cols, " rows (pattern.dense_shape [", d.rows,
                    ", ", d.cols, "]); received v.shape ", v.shape().DebugString())));
    OP_REQUIRES(ctx, u.dim_size(1) == v.dim_size(1),
                absl::InvalidArgumentError(absl::StrCat(
                    "u and v must have the same number of columns; received u.shape ",
                    u.shape().DebugString(), ", v.shape ", v.shape().DebugString())));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz}), &out));
    if (d.nnz == 0) return;
    const int64_t depth = u.dim_size(1);
    ThreadLease lease(ctx, d.nnz * depth);
    int rc = CsrSddmm(d.rows, d.cols, depth, indptr.flat<I>().data(), indices.flat<I>().data(),
                      u.flat<T>().data(), v.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrSddmm"));
  }
};

template <typename T, typename I>
class CsrSddmmTOp : public OpKernel {
 public:
  explicit CsrSddmmTOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    const Tensor& ut = ctx->input(3);
    const Tensor& vt = ctx->input(4);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "pattern", false, &d));
    OP_REQUIRES(ctx, ut.dims() == 2 && ut.dim_size(1) == d.rows,
                absl::InvalidArgumentError(absl::StrCat(
                    "ut must be a matrix with ", d.rows, " columns (pattern.dense_shape [", d.rows,
                    ", ", d.cols, "]); received ut.shape ", ut.shape().DebugString())));
    OP_REQUIRES(ctx, vt.dims() == 2 && vt.dim_size(1) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "vt must be a matrix with ", d.cols, " columns (pattern.dense_shape [", d.rows,
                    ", ", d.cols, "]); received vt.shape ", vt.shape().DebugString())));
    OP_REQUIRES(ctx, ut.dim_size(0) == vt.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat(
                    "ut and vt must have the same number of rows; received ut.shape ",
                    ut.shape().DebugString(), ", vt.shape ", vt.shape().DebugString())));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz}), &out));
    if (d.nnz == 0) return;
    const int64_t depth = ut.dim_size(0);
    ThreadLease lease(ctx, d.nnz * depth);
    int rc = CsrSddmmT(d.rows, d.cols, depth, indptr.flat<I>().data(), indices.flat<I>().data(),
                       ut.flat<T>().data(), vt.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrSddmmT"));
  }
};

template <typename I>
class CsrTransposeStructureOp : public OpKernel {
 public:
  explicit CsrTransposeStructureOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "a", false, &d));
    Tensor *t_ip = nullptr, *t_ix = nullptr, *perm = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.cols + 1}), &t_ip));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({d.nnz}), &t_ix));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({d.nnz}), &perm));
    ThreadLease lease(ctx, d.nnz);
    int rc = CsrTransposeStructure(d.rows, d.cols, indptr.flat<I>().data(), indices.flat<I>().data(),
                                   t_ip->flat<I>().data(), t_ix->flat<I>().data(),
                                   perm->flat<int64_t>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrTransposeStructure"));
  }
};

#define SK_REGISTER(T, I)                                                               \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>CsrMatMul")                                 \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindex"),                             \
                          CsrMatMulOp<T, I>);                                           \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>DenseCscMatMul")                            \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindex"),                             \
                          DenseCscMatMulOp<T, I>);                                      \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>DenseCsrMatMul")                            \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindex"),                             \
                          DenseCsrMatMulOp<T, I>);                                      \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>CsrSddmm")                                  \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindex"),                             \
                          CsrSddmmOp<T, I>);                                            \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>CsrSddmmT")                                 \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<I>("Tindex"),                             \
                          CsrSddmmTOp<T, I>);
SK_REGISTER(float, int32_t)
SK_REGISTER(float, int64_t)
SK_REGISTER(double, int32_t)
SK_REGISTER(double, int64_t)
#undef SK_REGISTER

REGISTER_KERNEL_BUILDER(Name("SparseKeras>CsrTransposeStructure")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<int32_t>("Tindex"),
                        CsrTransposeStructureOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("SparseKeras>CsrTransposeStructure")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<int64_t>("Tindex"),
                        CsrTransposeStructureOp<int64_t>);

}  // namespace
}  // namespace sparsekeras
