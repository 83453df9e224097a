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
//   DenseBcscMatMul(x, indptr, indices, values, dense_shape; block) -> x @ W  W: K x N (1 x block blocks)
//   DenseCscMatMulBiasAct, DenseBcscMatMulBiasAct(..., bias; activation) -> act(x @ W + bias):
//     the two products with a Dense layer's epilogue fused into their output store
//   BcscExpand(indptr, indices, dense_shape; block) -> (e_indptr, e_indices, positions, inverse)
//   DenseBcscMatMulT(dy, indptr, indices, values, dense_shape; block) -> dy @ W^T
//   BcscSddmm(indptr, indices, dense_shape, x, dy; block) -> block values of x^T dy
//   CsrSddmm(indptr, indices, dense_shape, u, v) -> values, out[p] = u[i] . v[j]
//   CsrSddmmT(indptr, indices, dense_shape, ut, vt) -> values, out[p] = ut[:, i] . vt[:, j]
//   CsrTransposeStructure(indptr, indices, dense_shape) -> (indptr_t, indices_t, perm)
// Gradients are registered in Python (sparsekeras/ops/_gradients.py).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "op_common.h"
#include "sparsekeras_kernels.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"

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

// dense_shape[i] when dense_shape is a constant of 2 sizes (else an unknown dimension), refusing
// a negative size with a message naming the argument (a negative DimensionHandle would reach
// TensorShape later and abort the process).
absl::Status DenseShapeDim(InferenceContext* c, int input, int i, const char* name,
                           DimensionHandle* out) {
  *out = c->UnknownDim();
  const Tensor* ds = c->input_tensor(input);
  if (ds == nullptr || ds->NumElements() != 2) return absl::OkStatus();
  auto v = ds->flat<int64_t>();
  if (v(0) < 0 || v(1) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ".dense_shape must be non-negative; received [", v(0), ", ", v(1), "]"));
  }
  *out = c->MakeDim(v(i));
  return absl::OkStatus();
}

// The number of rows of a CSR structure, indptr's length minus one, refusing an empty indptr
// with a message naming it.
absl::Status RowsOf(InferenceContext* c, int input, const char* name, DimensionHandle* out) {
  DimensionHandle len = c->Dim(c->input(input), 0);
  if (c->ValueKnown(len) && c->Value(len) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " must have at least one entry (rows + 1); received shape [0]"));
  }
  return c->Subtract(len, 1, out);
}

absl::Status CsrMatMulShape(InferenceContext* c) {
  ShapeHandle indptr, indices, values, dense_shape, b;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &dense_shape));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &b));
  DimensionHandle m;
  TF_RETURN_IF_ERROR(RowsOf(c, 0, "a.indptr", &m));
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
  TF_RETURN_IF_ERROR(RowsOf(c, 1, "w.indptr", &n));
  c->set_output(0, c->Matrix(c->Dim(x, 0), n));
  return absl::OkStatus();
}

absl::Status DenseBcscMatMulShape(InferenceContext* c) {
  ShapeHandle x, indptr, indices, values, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &dense_shape));
  int64_t block = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("block", &block));
  DimensionHandle groups, n;
  TF_RETURN_IF_ERROR(RowsOf(c, 1, "w.indptr", &groups));
  TF_RETURN_IF_ERROR(c->Multiply(groups, block, &n));
  c->set_output(0, c->Matrix(c->Dim(x, 0), n));
  return absl::OkStatus();
}

// The fused epilogue's bias (input `input`): a vector (N entries, or none: no bias).
absl::Status BiasShape(InferenceContext* c, int input) {
  ShapeHandle bias;
  return c->WithRank(c->input(input), 1, &bias);
}

absl::Status DenseCscMatMulBiasActShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(BiasShape(c, 8));
  return DenseCscMatMulShape(c);
}

absl::Status DenseBcscMatMulBiasActShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(BiasShape(c, 5));
  return DenseBcscMatMulShape(c);
}

absl::Status DenseBcscMatMulTShape(InferenceContext* c) {
  ShapeHandle dy, indptr, indices, values, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &dy));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &dense_shape));
  c->set_output(0, c->Matrix(c->Dim(dy, 0), c->UnknownDim()));
  return absl::OkStatus();
}

absl::Status BcscSddmmShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape, x, dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &dy));
  int64_t block = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("block", &block));
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(indices, 0), block, &n));
  c->set_output(0, c->Vector(n));
  return absl::OkStatus();
}

absl::Status BcscExpandShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  int64_t block = 1;
  TF_RETURN_IF_ERROR(c->GetAttr("block", &block));
  DimensionHandle groups, cols, n_indptr, entries;
  TF_RETURN_IF_ERROR(RowsOf(c, 0, "w.indptr", &groups));
  TF_RETURN_IF_ERROR(c->Multiply(groups, block, &cols));
  TF_RETURN_IF_ERROR(c->Add(cols, 1, &n_indptr));
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(indices, 0), block, &entries));
  c->set_output(0, c->Vector(n_indptr));
  for (int i = 1; i < 4; i++) c->set_output(i, c->Vector(entries));
  return absl::OkStatus();
}

absl::Status DenseCsrMatMulShape(InferenceContext* c) {
  ShapeHandle x, indptr, indices, values, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &dense_shape));
  DimensionHandle k;
  TF_RETURN_IF_ERROR(DenseShapeDim(c, 4, 1, "b", &k));
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

absl::Status TakeValuesShape(InferenceContext* c) {
  ShapeHandle params, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &params));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  c->set_output(0, indices);
  return absl::OkStatus();
}

absl::Status CsrTransposeShape(InferenceContext* c) {
  ShapeHandle indptr, indices, dense_shape;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &dense_shape));
  // The transpose has dense_shape[1] rows: known when dense_shape is a constant.
  DimensionHandle cols, n_indptr;
  TF_RETURN_IF_ERROR(DenseShapeDim(c, 2, 1, "a", &cols));
  if (c->ValueKnown(cols) && c->Value(cols) == std::numeric_limits<int64_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a.dense_shape[1] must be below 2**63 - 1 (the transpose's indptr has dense_shape[1] + 1 "
        "entries); received ", c->Value(cols)));
  }
  TF_RETURN_IF_ERROR(c->Add(cols, 1, &n_indptr));
  c->set_output(0, c->Vector(n_indptr));
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

// The operands of x @ W with W in CSC (and its transposed structure, read by the gradient) or
// block-CSC form: shared by the plain products and their fused-epilogue twins, so the two stay
// one signature plus the epilogue's inputs.
#define SK_DENSE_CSC_INPUTS                                                             \
  .Input("x: T").Input("indptr: Tindex").Input("indices: Tindex").Input("values: T")     \
      .Input("dense_shape: int64").Input("t_indptr: Tindex").Input("t_indices: Tindex") \
      .Input("t_perm: int64")
#define SK_DENSE_BCSC_INPUTS                                                        \
  .Input("x: T").Input("indptr: Tindex").Input("indices: Tindex").Input("values: T") \
      .Input("dense_shape: int64")

REGISTER_OP("SparseKeras>DenseCscMatMul")
    SK_DENSE_CSC_INPUTS
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseCscMatMulShape)
    .Doc("out = x @ W, W sparse (K x N) given in CSC form: indptr over its N columns, indices "
         "its row ids; dense_shape = [K, N]. t_indptr, t_indices, t_perm: W's CSR structure and "
         "the permutation CSC -> CSR (CsrTransposeStructure of the CSC arrays), read only by the "
         "gradient; empty tensors make the gradient compute them.");

REGISTER_OP("SparseKeras>DenseBcscMatMul")
    SK_DENSE_BCSC_INPUTS
    .Output("out: T")
    .Attr("block: int >= 1")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseBcscMatMulShape)
    .Doc("out = x @ W, W sparse (K x N) in block-CSC form: groups of `block` consecutive "
         "columns, indptr over the N / block groups, indices one row id per stored block, values "
         "`block` weights per block (block-major); dense_shape = [K, N].");

REGISTER_OP("SparseKeras>DenseCscMatMulBiasAct")
    SK_DENSE_CSC_INPUTS
    .Input("bias: T")
    .Output("out: T")
    .Attr("activation: {'linear', 'relu', 'gelu', 'relu6'} = 'linear'")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseCscMatMulBiasActShape)
    .Doc("out = activation(x @ W + bias): DenseCscMatMul with a Dense layer's epilogue applied "
         "to each output tile before it is stored (no second pass over out). bias: N values, or "
         "none (shape [0]). Equal, bitwise, to the product, then the bias add, then the "
         "activation (relu, relu6; gelu is exact GELU, within float rounding of tf.nn.gelu).");

REGISTER_OP("SparseKeras>DenseBcscMatMulBiasAct")
    SK_DENSE_BCSC_INPUTS
    .Input("bias: T")
    .Output("out: T")
    .Attr("block: int >= 1")
    .Attr("activation: {'linear', 'relu', 'gelu', 'relu6'} = 'linear'")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseBcscMatMulBiasActShape)
    .Doc("out = activation(x @ W + bias): DenseBcscMatMul with a Dense layer's epilogue applied "
         "to each output tile before it is stored. bias: N values, or none (shape [0]).");

REGISTER_OP("SparseKeras>DenseBcscMatMulT")
    .Input("dy: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("dense_shape: int64")
    .Output("out: T")
    .Attr("block: int >= 1")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::DenseBcscMatMulTShape)
    .Doc("out = dy @ W^T, W (K x N) block-CSC as in DenseBcscMatMul: the input gradient of the "
         "block product; dy is (M, N), out (M, K).");

REGISTER_OP("SparseKeras>BcscSddmm")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Input("x: T")
    .Input("dy: T")
    .Output("out: T")
    .Attr("block: int >= 1")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::BcscSddmmShape)
    .Doc("The block values of x^T @ dy on W's block-CSC pattern (the values' gradient of "
         "x @ W): out[b * block + g] = x[:, indices[b]] . dy[:, q * block + g].");

REGISTER_OP("SparseKeras>BcscExpand")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Output("e_indptr: Tindex")
    .Output("e_indices: Tindex")
    .Output("positions: int64")
    .Output("inverse: int64")
    .Attr("block: int >= 1")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::BcscExpandShape)
    .Doc("The CSC form of a block-CSC structure (see DenseBcscMatMul): column q * block + g "
         "holds group q's rows; positions maps a CSC entry to its block value, inverse back.");

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

REGISTER_OP("SparseKeras>TakeValues")
    .Input("params: T")
    .Input("indices: Tindex")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::TakeValuesShape)
    .Doc("out[p] = params[indices[p]] (1-D): the value permutations of the gradients and the "
         "kept-weight gathers of the layers; parallel, with software prefetch (tf.gather copies "
         "one element per call there).");

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
  inline int DenseBcscMatMul(int64_t m, int64_t k, int64_t n, int64_t block, const I* ip,      \
                             const I* ix, const T* d, const T* x, T* out, int nt) {               \
    return sk_dense_bcsc_matmul_##TS##_##IS(m, k, n, block, ip, ix, d, x, out, nt);             \
  }                                                                                                \
  inline int DenseCscMatMulBiasAct(int64_t m, int64_t k, int64_t n, const I* ip, const I* ix,    \
                                   const T* d, const T* x, const T* bias, int act, T* out,        \
                                   int nt) {                                                       \
    return sk_dense_csc_matmul_bias_act_##TS##_##IS(m, k, n, ip, ix, d, x, bias, act, out, nt);    \
  }                                                                                                \
  inline int DenseBcscMatMulBiasAct(int64_t m, int64_t k, int64_t n, int64_t block, const I* ip, \
                                    const I* ix, const T* d, const T* x, const T* bias, int act,  \
                                    T* out, int nt) {                                              \
    return sk_dense_bcsc_matmul_bias_act_##TS##_##IS(m, k, n, block, ip, ix, d, x, bias, act,     \
                                                     out, nt);                                     \
  }                                                                                                \
  inline int DenseBcscMatMulT(int64_t m, int64_t k, int64_t n, int64_t block, const I* ip,     \
                              const I* ix, const T* d, const T* dy, T* out, int nt) {             \
    return sk_dense_bcsc_matmul_t_##TS##_##IS(m, k, n, block, ip, ix, d, dy, out, nt);          \
  }                                                                                                \
  inline int BcscSddmm(int64_t m, int64_t k, int64_t n, int64_t block, const I* ip, const I* ix,  \
                       const T* x, const T* dy, T* out, int nt) {                                  \
    return sk_bcsc_sddmm_##TS##_##IS(m, k, n, block, ip, ix, x, dy, out, nt);                   \
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
  }                                                                                                \
  inline int64_t TakeValues(int64_t n_params, int64_t n, const I* ix, const T* params, T* out,     \
                            int nt) {                                                              \
    return sk_take_values_##TS##_##IS(n_params, n, ix, params, out, nt);                           \
  }
SK_OVERLOADS(float, int32_t, f32, i32)
SK_OVERLOADS(float, int64_t, f32, i64)
SK_OVERLOADS(double, int32_t, f64, i32)
SK_OVERLOADS(double, int64_t, f64, i64)
#undef SK_OVERLOADS

inline void BcscExpand(int64_t groups, int64_t block, const int32_t* ip, const int32_t* ix,
                       int32_t* e_ip, int32_t* e_ix, int64_t* pos, int64_t* inv, int nt) {
  sk_bcsc_expand_i32(groups, block, ip, ix, e_ip, e_ix, pos, inv, nt);
}
inline void BcscExpand(int64_t groups, int64_t block, const int64_t* ip, const int64_t* ix,
                       int64_t* e_ip, int64_t* e_ix, int64_t* pos, int64_t* inv, int nt) {
  sk_bcsc_expand_i64(groups, block, ip, ix, e_ip, e_ix, pos, inv, nt);
}

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
class TakeValuesOp : public OpKernel {
 public:
  explicit TakeValuesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& params = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    OP_REQUIRES(ctx, params.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat("params must be a vector; received shape ",
                                                        params.shape().DebugString())));
    OP_REQUIRES(ctx, indices.dims() == 1,
                absl::InvalidArgumentError(absl::StrCat("indices must be a vector; received shape ",
                                                        indices.shape().DebugString())));
    const int64_t n = indices.dim_size(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &out));
    if (n == 0) return;
    ThreadLease lease(ctx, 8 * n);
    const I* ix = indices.flat<I>().data();
    int64_t bad = TakeValues(params.dim_size(0), n, ix, params.flat<T>().data(),
                             out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, bad != -2, Allocation("TakeValues"));
    OP_REQUIRES(ctx, bad < 0,
                absl::InvalidArgumentError(absl::StrCat(
                    "indices must lie in [0, ", params.dim_size(0), "); received indices[", bad,
                    "]=", static_cast<int64_t>(ix[bad]))));
  }
};

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
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({d.rows, n}, "a @ b", absl::StrCat(
        "a.dense_shape ", Dims({d.rows, d.cols}), " and b.shape ", b.shape().DebugString()),
        &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (d.rows == 0 || n == 0) return;
    ThreadLease lease(ctx, WorkOf(d.nnz, n, d.cols, n));
    int rc = CsrMatMul(d.rows, d.cols, n, indptr.flat<I>().data(), indices.flat<I>().data(),
                       values.flat<T>().data(), b.flat<T>().data(), out->flat<T>().data(),
                       lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrMatMul"));
  }
};

// Row splitting (RunRows) for x @ W: each part streams all of W, so it pays only while W stays
// in cache; a larger W keeps the kernel's own split of W's columns over its OpenMP team (each
// thread streams its share of W).
inline constexpr int64_t kRowSplitMaxWeightBytes = int64_t{2} << 20;

template <typename T, typename I>
bool RowSplitPays(int64_t stored) {
  const int64_t bytes = MulSize(stored, sizeof(T) + sizeof(I));
  return bytes >= 0 && bytes <= kRowSplitMaxWeightBytes;
}

// Rows per part: the kernels' batch tile on AVX2 / AVX-512 (256 bytes of a row of x^T). The
// scatter products (DenseCsrMatMul, DenseBcscMatMulT) split W in two and sum the halves when
// they see a single batch tile, so their parts keep two tiles at least (scatter = true): the
// bits of a row do not depend on the split.
template <typename T>
constexpr int64_t RowGrain(bool scatter = false) {
  return (scatter ? 2 : 1) * static_cast<int64_t>(256 / sizeof(T));
}

// x @ W, W in CSC form (kFused: DenseCscMatMulBiasAct, act(x @ W + bias)).
template <typename T, typename I, bool kFused = false>
class DenseCscMatMulOp : public OpKernel {
 public:
  explicit DenseCscMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    if constexpr (kFused) epilogue_ = std::make_unique<Epilogue>(ctx);
  }
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
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({m, d.rows}, "x @ w", absl::StrCat(
        "x.shape ", x.shape().DebugString(), " and w.dense_shape ", Dims({d.cols, d.rows})),
        &out_shape));
    const T* bias = nullptr;
    if constexpr (kFused) OP_REQUIRES_OK(ctx, epilogue_->Bias<T>(ctx->input(8), d.rows, &bias));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (m == 0 || d.rows == 0) return;
    ThreadLease lease(ctx, WorkOf(d.nnz, m, m, d.cols));
    const I* ip = indptr.flat<I>().data();
    const I* ix = indices.flat<I>().data();
    const T* v = values.flat<T>().data();
    const T* xs = x.flat<T>().data();
    T* ys = out->flat<T>().data();
    const int64_t k = d.cols, n = d.rows;
    int rc = RunRows(ctx, lease.n(), m, RowGrain<T>(), RowSplitPays<T, I>(d.nnz),
                     [&](int64_t lo, int64_t hi, int nt) {
      if constexpr (kFused) {
        return DenseCscMatMulBiasAct(hi - lo, k, n, ip, ix, v, xs + lo * k, bias,
                                     epilogue_->act(), ys + lo * n, nt);
      } else {
        return DenseCscMatMul(hi - lo, k, n, ip, ix, v, xs + lo * k, ys + lo * n, nt);
      }
    });
    OP_REQUIRES(ctx, rc == 0, Allocation("DenseCscMatMul"));
  }

 private:
  std::unique_ptr<Epilogue> epilogue_;
};

// The block-CSC ops: their group width, attr "block".
class BlockOpKernel : public OpKernel {
 public:
  explicit BlockOpKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("block", &block_));
  }

 protected:
  int64_t block_ = 1;
};

// x @ W (kTransposed = false: DenseBcscMatMul) or dy @ W^T (true: DenseBcscMatMulT), W block-CSC;
// kFused (with kTransposed = false): DenseBcscMatMulBiasAct, act(x @ W + bias).
template <typename T, typename I, bool kTransposed, bool kFused = false>
class DenseBcscMatMulOp : public BlockOpKernel {
 public:
  explicit DenseBcscMatMulOp(OpKernelConstruction* ctx) : BlockOpKernel(ctx) {
    static_assert(!(kTransposed && kFused), "the epilogue is fused into x @ W only");
    if constexpr (kFused) epilogue_ = std::make_unique<Epilogue>(ctx);
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dense = ctx->input(0);
    const Tensor& indptr = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const Tensor& values = ctx->input(3);
    const Tensor& dense_shape = ctx->input(4);
    CsrDims d;  // rows = N / block groups, cols = K, nnz = blocks
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, &values, dense_shape, "w", true, &d,
                                       block_));
    const int64_t n = d.rows * block_;
    const int64_t width_in = kTransposed ? n : d.cols, width_out = kTransposed ? d.cols : n;
    const char* name = kTransposed ? "dy" : "x";
    OP_REQUIRES(ctx, dense.dims() == 2 && dense.dim_size(1) == width_in,
                absl::InvalidArgumentError(absl::StrCat(
                    name, " must be a matrix of ", width_in, " columns to match w.dense_shape [",
                    d.cols, ", ", n, "]; received ", name, ".shape ",
                    dense.shape().DebugString())));
    const int64_t m = dense.dim_size(0);
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({m, width_out}, kTransposed ? "dy @ w^T" : "x @ w",
                                    absl::StrCat(name, ".shape ", dense.shape().DebugString(),
                                                 " and w.dense_shape ", Dims({d.cols, n})),
                                    &out_shape));
    const T* bias = nullptr;
    if constexpr (kFused) OP_REQUIRES_OK(ctx, epilogue_->Bias<T>(ctx->input(5), n, &bias));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (m == 0 || width_out == 0) return;
    ThreadLease lease(ctx, WorkOf(d.nnz * block_, m, m, d.cols + (kTransposed ? n : 0)));
    const I* ip = indptr.flat<I>().data();
    const I* ix = indices.flat<I>().data();
    const T* v = values.flat<T>().data();
    const T* xs = dense.flat<T>().data();
    T* ys = out->flat<T>().data();
    const int64_t k = d.cols, block = block_;
    int rc = RunRows(ctx, lease.n(), m, RowGrain<T>(kTransposed),
                     RowSplitPays<T, I>(d.nnz * block_),
                     [&](int64_t lo, int64_t hi, int nt) {
      if constexpr (kTransposed) {
        return DenseBcscMatMulT(hi - lo, k, n, block, ip, ix, v, xs + lo * n, ys + lo * k, nt);
      } else if constexpr (kFused) {
        return DenseBcscMatMulBiasAct(hi - lo, k, n, block, ip, ix, v, xs + lo * k, bias,
                                      epilogue_->act(), ys + lo * n, nt);
      } else {
        return DenseBcscMatMul(hi - lo, k, n, block, ip, ix, v, xs + lo * k, ys + lo * n, nt);
      }
    });
    OP_REQUIRES(ctx, rc == 0, Allocation(kTransposed ? "DenseBcscMatMulT" : "DenseBcscMatMul"));
  }

 private:
  std::unique_ptr<Epilogue> epilogue_;
};

template <typename T, typename I>
class BcscSddmmOp : public BlockOpKernel {
 public:
  explicit BcscSddmmOp(OpKernelConstruction* ctx) : BlockOpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    const Tensor& x = ctx->input(3);
    const Tensor& dy = ctx->input(4);
    CsrDims d;  // rows = N / block groups, cols = K
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "w", true, &d,
                                       block_));
    const int64_t n = d.rows * block_;
    OP_REQUIRES(ctx, x.dims() == 2 && x.dim_size(1) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "x must be a matrix of ", d.cols, " columns to match w.dense_shape [", d.cols,
                    ", ", n, "]; received x.shape ", x.shape().DebugString())));
    OP_REQUIRES(ctx, dy.dims() == 2 && dy.dim_size(0) == x.dim_size(0) && dy.dim_size(1) == n,
                absl::InvalidArgumentError(absl::StrCat(
                    "dy must be a matrix of shape [", x.dim_size(0), ", ", n,
                    "] to match x and w.dense_shape; received dy.shape ",
                    dy.shape().DebugString())));
    const int64_t m = x.dim_size(0);
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz * block_}), &out));
    if (d.nnz == 0) return;
    ThreadLease lease(ctx, WorkOf(d.nnz * block_, m, m, d.cols + n));
    int rc = BcscSddmm(m, d.cols, n, block_, indptr.flat<I>().data(), indices.flat<I>().data(),
                       x.flat<T>().data(), dy.flat<T>().data(), out->flat<T>().data(),
                       lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("BcscSddmm"));
  }

};

template <typename I>
class BcscExpandOp : public BlockOpKernel {
 public:
  explicit BcscExpandOp(OpKernelConstruction* ctx) : BlockOpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "w", true, &d,
                                       block_));
    const int64_t entries = d.nnz * block_;  // fits: checked by ValidateCsr
    Tensor *e_indptr = nullptr, *e_indices = nullptr, *positions = nullptr, *inverse = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.rows * block_ + 1}), &e_indptr));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({entries}), &e_indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({entries}), &positions));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({entries}), &inverse));
    ThreadLease lease(ctx, entries / 4);
    BcscExpand(d.rows, block_, indptr.flat<I>().data(), indices.flat<I>().data(),
               e_indptr->flat<I>().data(), e_indices->flat<I>().data(),
               positions->flat<int64_t>().data(), inverse->flat<int64_t>().data(), lease.n());
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
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({m, d.cols}, "x @ b", absl::StrCat(
        "x.shape ", x.shape().DebugString(), " and b.dense_shape ", Dims({d.rows, d.cols})),
        &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (m == 0 || d.cols == 0) return;
    ThreadLease lease(ctx, WorkOf(d.nnz, m, m, d.rows));
    const I* ip = indptr.flat<I>().data();
    const I* ix = indices.flat<I>().data();
    const T* v = values.flat<T>().data();
    const T* xs = x.flat<T>().data();
    T* ys = out->flat<T>().data();
    const int64_t k = d.rows, n = d.cols;
    int rc = RunRows(ctx, lease.n(), m, RowGrain<T>(true), RowSplitPays<T, I>(d.nnz),
                     [&](int64_t lo, int64_t hi, int nt) {
      return DenseCsrMatMul(hi - lo, k, n, ip, ix, v, xs + lo * k, ys + lo * n, nt);
    });
    OP_REQUIRES(ctx, rc == 0, Allocation("DenseCsrMatMul"));
  }
};

// SDDMM on a CSR pattern: out[p] = u[i, :] . v[j, :] for each stored (i, j). kTransposed: the
// dense operands come depth-major (ut: depth x rows, vt: depth x cols), the layout of a Dense
// layer's gradient; otherwise row-major (u: rows x depth, v: cols x depth).
template <typename T, typename I, bool kTransposed>
class CsrSddmmOp : public OpKernel {
 public:
  explicit CsrSddmmOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    const Tensor& u = ctx->input(3);
    const Tensor& v = ctx->input(4);
    const char* un = kTransposed ? "ut" : "u";
    const char* vn = kTransposed ? "vt" : "v";
    const int axis = kTransposed ? 1 : 0;  // the axis that runs over the pattern's rows / cols
    const char* along = kTransposed ? "columns" : "rows";
    const char* across = kTransposed ? "rows" : "columns";
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "pattern", false, &d));
    OP_REQUIRES(ctx, u.dims() == 2 && u.dim_size(axis) == d.rows,
                absl::InvalidArgumentError(absl::StrCat(
                    un, " must be a matrix with ", d.rows, " ", along, " (pattern.dense_shape [",
                    d.rows, ", ", d.cols, "]); received ", un, ".shape ", u.shape().DebugString())));
    OP_REQUIRES(ctx, v.dims() == 2 && v.dim_size(axis) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    vn, " must be a matrix with ", d.cols, " ", along, " (pattern.dense_shape [",
                    d.rows, ", ", d.cols, "]); received ", vn, ".shape ", v.shape().DebugString())));
    OP_REQUIRES(ctx, u.dim_size(1 - axis) == v.dim_size(1 - axis),
                absl::InvalidArgumentError(absl::StrCat(
                    un, " and ", vn, " must have the same number of ", across, "; received ", un,
                    ".shape ", u.shape().DebugString(), ", ", vn, ".shape ",
                    v.shape().DebugString())));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz}), &out));
    if (d.nnz == 0) return;
    const int64_t depth = u.dim_size(1 - axis);
    ThreadLease lease(ctx, WorkOf(d.nnz, depth));
    const I* ip = indptr.flat<I>().data();
    const I* ix = indices.flat<I>().data();
    int rc = kTransposed ? CsrSddmmT(d.rows, d.cols, depth, ip, ix, u.flat<T>().data(),
                                     v.flat<T>().data(), out->flat<T>().data(), lease.n())
                         : CsrSddmm(d.rows, d.cols, depth, ip, ix, u.flat<T>().data(),
                                    v.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation(kTransposed ? "CsrSddmmT" : "CsrSddmm"));
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
    OP_REQUIRES(ctx, d.cols < std::numeric_limits<int64_t>::max(),
                absl::InvalidArgumentError(absl::StrCat(
                    "a.dense_shape[1] must be below 2**63 - 1 (the transpose's indptr has "
                    "dense_shape[1] + 1 entries); received a.dense_shape ",
                    Dims({d.rows, d.cols}))));
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

#define SK_REGISTER_EXPAND(I)                                                          \
  REGISTER_KERNEL_BUILDER(Name("SparseKeras>BcscExpand")                                \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<I>("Tindex"),                             \
                          BcscExpandOp<I>);
SK_REGISTER_EXPAND(int32_t)
SK_REGISTER_EXPAND(int64_t)
#undef SK_REGISTER_EXPAND

#define SK_REGISTER(T, I)                                                                   \
  SK_REGISTER_CPU_TI("CsrMatMul", T, I, CsrMatMulOp<T, I>);                                 \
  SK_REGISTER_CPU_TI("DenseCscMatMul", T, I, DenseCscMatMulOp<T, I>);                       \
  SK_REGISTER_CPU_TI("DenseBcscMatMul", T, I, DenseBcscMatMulOp<T, I, false>);              \
  SK_REGISTER_CPU_TI("DenseBcscMatMulT", T, I, DenseBcscMatMulOp<T, I, true>);              \
  SK_REGISTER_CPU_TI("DenseCscMatMulBiasAct", T, I, DenseCscMatMulOp<T, I, true>);          \
  SK_REGISTER_CPU_TI("DenseBcscMatMulBiasAct", T, I, DenseBcscMatMulOp<T, I, false, true>); \
  SK_REGISTER_CPU_TI("BcscSddmm", T, I, BcscSddmmOp<T, I>);                                 \
  SK_REGISTER_CPU_TI("DenseCsrMatMul", T, I, DenseCsrMatMulOp<T, I>);                       \
  SK_REGISTER_CPU_TI("CsrSddmm", T, I, CsrSddmmOp<T, I, false>);                            \
  SK_REGISTER_CPU_TI("CsrSddmmT", T, I, CsrSddmmOp<T, I, true>);                            \
  SK_REGISTER_CPU_TI("TakeValues", T, I, TakeValuesOp<T, I>);
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

// ---- issue 6: sparse x sparse products (csr_spgemm.pxi) ------------------------------------
//   CsrCsrMatMul(a_indptr, a_indices, a_values, a_shape, w_indptr, w_indices, w_values, w_shape)
//       -> A @ W, dense (M x N); A: M x K (CSR), W: K x N (CSR). Neither is densified.
//   CsrCsrMatMulGradA(a_indptr, a_indices, a_shape, w_indptr, w_indices, w_values, w_shape, dy)
//       -> (dY @ W^T) sampled on A's pattern (nnz(A)).
//   CsrCsrMatMulGradW(at_indptr, at_indices, at_values, a_shape, w_indptr, w_indices, w_shape, dy)
//       -> (A^T @ dY) sampled on W's pattern (nnz(W)), from A^T in CSR (at_*: K + 1 / nnz(A)).
//   CsrMatMulVariable(indptr, indices, values, dense_shape, b: resource, p_indptr, p_indices)
//       -> A @ b; a non-empty pattern P lists b's possibly-nonzero entries, the only ones read,
//       b read in place from a variable: a SparseDense kernel (pruned or not) times a sparse input.
//   CsrSddmmVariable(indptr, indices, dense_shape, u, v: resource) -> values[p] = u[i] . v[j].

namespace sparsekeras {
namespace {

absl::Status CsrCsrMatMulShape(InferenceContext* c) {
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7}) {
    ShapeHandle s;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &s));
  }
  DimensionHandle m, n;
  TF_RETURN_IF_ERROR(RowsOf(c, 0, "a.indptr", &m));
  TF_RETURN_IF_ERROR(DenseShapeDim(c, 7, 1, "w", &n));
  c->set_output(0, c->Matrix(m, n));
  return absl::OkStatus();
}

absl::Status SpgemmGradShape(InferenceContext* c, int pattern_indices) {
  for (int i = 0; i < 7; ++i) {
    ShapeHandle s;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &s));
  }
  ShapeHandle dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(7), 2, &dy));
  c->set_output(0, c->Vector(c->Dim(c->input(pattern_indices), 0)));
  return absl::OkStatus();
}

#define SK_SPGEMM_OVERLOADS(T, I, TS, IS)                                                        \
  inline int Spgemm(int64_t m, int64_t k, int64_t n, const I* aip, const I* aix, const T* ad,   \
                    const I* wip, const I* wix, const T* wd, T* out, int nt) {                  \
    return sk_csr_spgemm_##TS##_##IS(m, k, n, aip, aix, ad, wip, wix, wd, out, nt);             \
  }                                                                                             \
  inline int SpgemmGradA(int64_t m, int64_t k, int64_t n, const I* aip, const I* aix,           \
                         const I* wip, const I* wix, const T* wd, const T* dy, T* out, int nt) { \
    return sk_csr_spgemm_grad_a_##TS##_##IS(m, k, n, aip, aix, wip, wix, wd, dy, out, nt);      \
  }                                                                                             \
  inline int SpgemmGradW(int64_t m, int64_t k, int64_t n, const I* tip, const I* tix,           \
                         const T* td, const I* wip, const I* wix, const T* dy, T* out, int nt) { \
    return sk_csr_spgemm_grad_w_##TS##_##IS(m, k, n, tip, tix, td, wip, wix, dy, out, nt);      \
  }                                                                                             \
  inline int SpgemmMasked(int64_t m, int64_t k, int64_t n, const I* aip, const I* aix,          \
                          const T* ad, const I* pip, const I* pix, const T* w, T* out, int nt) { \
    return sk_csr_spgemm_masked_##TS##_##IS(m, k, n, aip, aix, ad, pip, pix, w, out, nt);       \
  }
SK_SPGEMM_OVERLOADS(float, int32_t, f32, i32)
SK_SPGEMM_OVERLOADS(float, int64_t, f32, i64)
SK_SPGEMM_OVERLOADS(double, int32_t, f64, i32)
SK_SPGEMM_OVERLOADS(double, int64_t, f64, i64)
#undef SK_SPGEMM_OVERLOADS

// W's rows must match A's columns.
absl::Status InnerMatch(const CsrDims& a, const CsrDims& w) {
  if (a.cols == w.rows) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "w must have ", a.cols, " rows to match a.dense_shape [", a.rows, ", ", a.cols,
      "]; received w.dense_shape [", w.rows, ", ", w.cols, "]"));
}

absl::Status CheckDy(const Tensor& dy, const CsrDims& a, const CsrDims& w) {
  if (dy.dims() == 2 && dy.dim_size(0) == a.rows && dy.dim_size(1) == w.cols) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("dy must have shape [", a.rows, ", ", w.cols,
                                                 "]; received dy.shape ", dy.shape().DebugString()));
}

// Multiply-adds of the product: nnz(A) times the mean row length of W, plus the output.
int64_t SpgemmWork(const CsrDims& a, const CsrDims& w) {
  return WorkOf(a.nnz, std::max<int64_t>(1, w.nnz / std::max<int64_t>(1, w.rows)), a.rows, w.cols);
}

template <typename T, typename I>
class CsrCsrMatMulOp : public OpKernel {
 public:
  explicit CsrCsrMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    CsrDims a, w;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(0), ctx->input(1), &ctx->input(2), ctx->input(3),
                                       "a", false, &a));
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(4), ctx->input(5), &ctx->input(6), ctx->input(7),
                                       "w", false, &w));
    OP_REQUIRES_OK(ctx, InnerMatch(a, w));
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({a.rows, w.cols}, "a @ w", absl::StrCat(
        "a.dense_shape ", Dims({a.rows, a.cols}), " and w.dense_shape ", Dims({w.rows, w.cols})),
        &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (a.rows == 0 || w.cols == 0) return;
    ThreadLease lease(ctx, SpgemmWork(a, w));
    int rc = Spgemm(a.rows, a.cols, w.cols, ctx->input(0).flat<I>().data(),
                    ctx->input(1).flat<I>().data(), ctx->input(2).flat<T>().data(),
                    ctx->input(4).flat<I>().data(), ctx->input(5).flat<I>().data(),
                    ctx->input(6).flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrCsrMatMul"));
  }
};

template <typename T, typename I>
class CsrCsrMatMulGradAOp : public OpKernel {
 public:
  explicit CsrCsrMatMulGradAOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    CsrDims a, w;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(0), ctx->input(1), nullptr, ctx->input(2), "a",
                                       false, &a));
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(3), ctx->input(4), &ctx->input(5), ctx->input(6),
                                       "w", false, &w));
    OP_REQUIRES_OK(ctx, InnerMatch(a, w));
    const Tensor& dy = ctx->input(7);
    OP_REQUIRES_OK(ctx, CheckDy(dy, a, w));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({a.nnz}), &out));
    if (a.nnz == 0) return;
    ThreadLease lease(ctx, SpgemmWork(a, w));
    int rc = SpgemmGradA(a.rows, a.cols, w.cols, ctx->input(0).flat<I>().data(),
                         ctx->input(1).flat<I>().data(), ctx->input(3).flat<I>().data(),
                         ctx->input(4).flat<I>().data(), ctx->input(5).flat<T>().data(),
                         dy.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrCsrMatMulGradA"));
  }
};

template <typename T, typename I>
class CsrCsrMatMulGradWOp : public OpKernel {
 public:
  explicit CsrCsrMatMulGradWOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    // at_* is A^T in CSR: validated against the transposed dense_shape of A.
    const Tensor& a_shape = ctx->input(3);
    OP_REQUIRES(ctx, a_shape.dims() == 1 && a_shape.NumElements() == 2,
                absl::InvalidArgumentError(absl::StrCat(
                    "a.dense_shape must be a vector of 2 sizes; received shape ",
                    a_shape.shape().DebugString())));
    Tensor at_shape(tensorflow::DT_INT64, TensorShape({2}));
    at_shape.flat<int64_t>()(0) = a_shape.flat<int64_t>()(1);
    at_shape.flat<int64_t>()(1) = a_shape.flat<int64_t>()(0);
    CsrDims at, w;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(0), ctx->input(1), &ctx->input(2), at_shape,
                                       "a_t", false, &at));
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(ctx->input(4), ctx->input(5), nullptr, ctx->input(6), "w",
                                       false, &w));
    CsrDims a{at.cols, at.rows, at.nnz};
    OP_REQUIRES_OK(ctx, InnerMatch(a, w));
    const Tensor& dy = ctx->input(7);
    OP_REQUIRES_OK(ctx, CheckDy(dy, a, w));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({w.nnz}), &out));
    if (w.nnz == 0) return;
    ThreadLease lease(ctx, SpgemmWork(a, w));
    int rc = SpgemmGradW(a.rows, a.cols, w.cols, ctx->input(0).flat<I>().data(),
                         ctx->input(1).flat<I>().data(), ctx->input(2).flat<T>().data(),
                         ctx->input(4).flat<I>().data(), ctx->input(5).flat<I>().data(),
                         dy.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrCsrMatMulGradW"));
  }
};

// A @ the value of a resource variable, read in place under the variable's shared lock (as
// ResourceGather reads it). A ReadVariableOp copies the whole variable on every read once the
// variable is in copy-on-read mode, which any sparse update (the scatter an optimizer applies
// for an IndexedSlices gradient) switches on for good.
template <typename T, typename I>
class CsrMatMulVariableOp : public OpKernel {
 public:
  explicit CsrMatMulVariableOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& values = ctx->input(2);
    const Tensor& dense_shape = ctx->input(3);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, &values, dense_shape, "a", false, &d));
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 4),
                                                     &var));
    ::tensorflow::tf_shared_lock lock(*var->mu());
    const Tensor& b = *var->tensor();
    OP_REQUIRES(ctx, b.dtype() == ::tensorflow::DataTypeToEnum<T>::v(),
                absl::InvalidArgumentError(absl::StrCat(
                    "b (a variable) must have the dtype of a.values, ",
                    ::tensorflow::DataTypeString(::tensorflow::DataTypeToEnum<T>::v()),
                    "; received ", ::tensorflow::DataTypeString(b.dtype()))));
    OP_REQUIRES(ctx, b.dims() == 2 && b.dim_size(0) == d.cols,
                absl::InvalidArgumentError(absl::StrCat(
                    "b (a variable) must be a matrix with ", d.cols, " rows to match "
                    "a.dense_shape [", d.rows, ", ", d.cols, "]; received shape ",
                    b.shape().DebugString())));
    const int64_t n = b.dim_size(1);
    const Tensor& p_indptr = ctx->input(5);
    const Tensor& p_indices = ctx->input(6);
    const bool masked = p_indptr.NumElements() > 0;
    CsrDims p;
    if (masked) {
      Tensor p_shape(::tensorflow::DT_INT64, TensorShape({2}));
      p_shape.flat<int64_t>()(0) = d.cols;
      p_shape.flat<int64_t>()(1) = n;
      OP_REQUIRES_OK(ctx, ValidateCsr<I>(p_indptr, p_indices, nullptr, p_shape,
                                         "pattern (of b's shape)", false, &p));
    }
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({d.rows, n}, "a @ b", absl::StrCat(
        "a.dense_shape ", Dims({d.rows, d.cols}), " and b.shape (a variable) ",
        b.shape().DebugString()), &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (d.rows == 0 || n == 0) return;
    int rc;
    if (masked) {
      ThreadLease lease(ctx, SpgemmWork(d, p));
      rc = SpgemmMasked(d.rows, d.cols, n, indptr.flat<I>().data(), indices.flat<I>().data(),
                        values.flat<T>().data(), p_indptr.flat<I>().data(),
                        p_indices.flat<I>().data(), b.flat<T>().data(), out->flat<T>().data(),
                        lease.n());
    } else {
      ThreadLease lease(ctx, WorkOf(d.nnz, n, d.cols, n));
      rc = CsrMatMul(d.rows, d.cols, n, indptr.flat<I>().data(), indices.flat<I>().data(),
                     values.flat<T>().data(), b.flat<T>().data(), out->flat<T>().data(),
                     lease.n());
    }
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrMatMulVariable"));
  }
};

// values[p] = dot(u[i], v[indices[p]]) with v the value of a resource variable read in place:
// the gradient of CsrMatMulVariable w.r.t. A's values. Not stateful, so it is pruned from a
// graph that does not use it (a ResourceGather would not be).
template <typename T, typename I>
class CsrSddmmVariableOp : public OpKernel {
 public:
  explicit CsrSddmmVariableOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& indptr = ctx->input(0);
    const Tensor& indices = ctx->input(1);
    const Tensor& dense_shape = ctx->input(2);
    const Tensor& u = ctx->input(3);
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateCsr<I>(indptr, indices, nullptr, dense_shape, "pattern", false, &d));
    ::tensorflow::core::RefCountPtr<::tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(ctx, ::tensorflow::HandleFromInput(ctx, 4),
                                                     &var));
    ::tensorflow::tf_shared_lock lock(*var->mu());
    const Tensor& v = *var->tensor();
    OP_REQUIRES(ctx, v.dtype() == ::tensorflow::DataTypeToEnum<T>::v(),
                absl::InvalidArgumentError(absl::StrCat(
                    "v (a variable) must have u's dtype ",
                    ::tensorflow::DataTypeString(::tensorflow::DataTypeToEnum<T>::v()),
                    "; received ", ::tensorflow::DataTypeString(v.dtype()))));
    OP_REQUIRES(ctx, u.dims() == 2 && u.dim_size(0) == d.rows,
                absl::InvalidArgumentError(absl::StrCat(
                    "u must be a matrix with ", d.rows, " rows (pattern.dense_shape [", d.rows,
                    ", ", d.cols, "]); received u.shape ", u.shape().DebugString())));
    OP_REQUIRES(ctx, v.dims() == 2 && v.dim_size(0) == d.cols && v.dim_size(1) == u.dim_size(1),
                absl::InvalidArgumentError(absl::StrCat(
                    "v (a variable) must be a matrix of shape [", d.cols, ", ", u.dim_size(1),
                    "]; received shape ", v.shape().DebugString())));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz}), &out));
    if (d.nnz == 0) return;
    const int64_t depth = u.dim_size(1);
    ThreadLease lease(ctx, WorkOf(d.nnz, depth));
    int rc = CsrSddmm(d.rows, d.cols, depth, indptr.flat<I>().data(), indices.flat<I>().data(),
                      u.flat<T>().data(), v.flat<T>().data(), out->flat<T>().data(), lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrSddmmVariable"));
  }
};

#define SK_REGISTER_SPGEMM(T, I)                                                            \
  SK_REGISTER_CPU_TI("CsrCsrMatMul", T, I, CsrCsrMatMulOp<T, I>);                           \
  SK_REGISTER_CPU_TI("CsrCsrMatMulGradA", T, I, CsrCsrMatMulGradAOp<T, I>);                 \
  SK_REGISTER_CPU_TI("CsrCsrMatMulGradW", T, I, CsrCsrMatMulGradWOp<T, I>);                 \
  SK_REGISTER_CPU_TI("CsrMatMulVariable", T, I, CsrMatMulVariableOp<T, I>);                 \
  SK_REGISTER_CPU_TI("CsrSddmmVariable", T, I, CsrSddmmVariableOp<T, I>);
SK_REGISTER_SPGEMM(float, int32_t)
SK_REGISTER_SPGEMM(float, int64_t)
SK_REGISTER_SPGEMM(double, int32_t)
SK_REGISTER_SPGEMM(double, int64_t)
#undef SK_REGISTER_SPGEMM

}  // namespace
}  // namespace sparsekeras

REGISTER_OP("SparseKeras>CsrCsrMatMul")
    .Input("a_indptr: Tindex")
    .Input("a_indices: Tindex")
    .Input("a_values: T")
    .Input("a_shape: int64")
    .Input("w_indptr: Tindex")
    .Input("w_indices: Tindex")
    .Input("w_values: T")
    .Input("w_shape: int64")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn(sparsekeras::CsrCsrMatMulShape)
    .Doc("out = A @ W, dense (M x N), with A (M x K) and W (K x N) both given as CSR.");

REGISTER_OP("SparseKeras>CsrCsrMatMulGradA")
    .Input("a_indptr: Tindex")
    .Input("a_indices: Tindex")
    .Input("a_shape: int64")
    .Input("w_indptr: Tindex")
    .Input("w_indices: Tindex")
    .Input("w_values: T")
    .Input("w_shape: int64")
    .Input("dy: T")
    .Output("d_a_values: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      return sparsekeras::SpgemmGradShape(c, 1);
    })
    .Doc("(dy @ W^T) sampled on A's pattern: the gradient of CsrCsrMatMul w.r.t. a_values.");

REGISTER_OP("SparseKeras>CsrCsrMatMulGradW")
    .Input("at_indptr: Tindex")
    .Input("at_indices: Tindex")
    .Input("at_values: T")
    .Input("a_shape: int64")
    .Input("w_indptr: Tindex")
    .Input("w_indices: Tindex")
    .Input("w_shape: int64")
    .Input("dy: T")
    .Output("d_w_values: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      return sparsekeras::SpgemmGradShape(c, 5);
    })
    .Doc("(A^T @ dy) sampled on W's pattern, from A^T in CSR (at_*) and A's dense_shape: the "
         "gradient of CsrCsrMatMul w.r.t. w_values.");

REGISTER_OP("SparseKeras>CsrMatMulVariable")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("dense_shape: int64")
    .Input("b: resource")
    .Input("p_indptr: Tindex")
    .Input("p_indices: Tindex")
    .Output("out: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      for (int i : {0, 1, 2, 3, 5, 6}) {
        ::tensorflow::shape_inference::ShapeHandle s;
        TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &s));
      }
      ::tensorflow::shape_inference::DimensionHandle m, n = c->UnknownDim();
      TF_RETURN_IF_ERROR(sparsekeras::RowsOf(c, 0, "a.indptr", &m));
      auto* handle = c->input_handle_shapes_and_types(4);
      if (handle != nullptr && handle->size() == 1 && c->RankKnown((*handle)[0].shape) &&
          c->Rank((*handle)[0].shape) == 2) {
        n = c->Dim((*handle)[0].shape, 1);
      }
      c->set_output(0, c->Matrix(m, n));
      return absl::OkStatus();
    })
    .Doc("out = A @ b, A sparse (CSR) and b the value of a resource variable (M x K @ K x N), "
         "read in place under the variable's lock: no copy even in copy-on-read mode. A "
         "non-empty pattern P (p_indptr K + 1, p_indices column ids) lists the entries of b that "
         "may be nonzero (a pruned kernel under its mask): only those are read, the others are "
         "taken as zero. Empty p_indptr: all of b is read.");

REGISTER_OP("SparseKeras>CsrSddmmVariable")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("dense_shape: int64")
    .Input("u: T")
    .Input("v: resource")
    .Output("values: T")
    .Attr("T: {float, double}")
    .Attr("Tindex: {int32, int64}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle s;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &s));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &s));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &s));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &s));
      c->set_output(0, c->Vector(c->Dim(c->input(1), 0)));
      return absl::OkStatus();
    })
    .Doc("values[p] = dot(u[i], v[j]) for each stored entry p = (i, j), v the value of a "
         "resource variable read in place: CsrMatMulVariable's gradient w.r.t. A's values.");
