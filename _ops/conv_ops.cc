// TensorFlow ops of sparsekeras: 2-D convolution with a sparse kernel (NHWC activations).
//
// The kernel W (k_h, k_w, in_c, out_c) travels as the CSC arrays of its (k_h * k_w * in_c) x
// out_c reshape (indptr over output channels, indices = patch positions (i * k_w + j) * in_c + c,
// values); see _kernels/sparsekeras_conv.h. Inputs are validated in Compute (graph mode too).
//
// Ops (namespace SparseKeras>):
//   CsrConv2D(x, indptr, indices, values) -> y                       (N, OH, OW, out_c)
//   CsrConv2DBiasAct(x, indptr, indices, values, bias; activation) -> act(y + bias)
//   CsrConv2DBackpropInput(dy, indptr, indices, values, input_sizes) -> dx
//   CsrConv2DBackpropValues(x, dy, indptr, indices) -> d_values      (nnz,)
// Attributes: kernel_size [k_h, k_w], strides [s_h, s_w], dilations [d_h, d_w], padding
// SAME | VALID, with TensorFlow's conv2d semantics. Gradients: sparsekeras/ops/_gradients.py.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "op_common.h"
#include "sparsekeras_conv.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace sparsekeras {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

struct ConvAttrs {
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  bool same = false;
  // kernel_shape (k_h, k_w, in_channels, out_channels) as the caller declared it, checked at
  // run time against x's channels and indptr's length; empty (old graphs): not checked.
  std::vector<int64_t> kernel_shape;
};

template <typename Ctx>
absl::Status ReadAttrs(Ctx* c, ConvAttrs* a) {
  std::vector<int32_t> ks, st, dl;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &ks));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &st));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dl));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  std::vector<int64_t> kshape;
  TF_RETURN_IF_ERROR(c->GetAttr("kernel_shape", &kshape));
  auto pair = [](const std::vector<int32_t>& v, const char* name, int64_t* a0,
                 int64_t* a1) -> absl::Status {
    if (v.size() != 2 || v[0] < 1 || v[1] < 1) {
      std::string got;
      for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&got, i ? ", " : "", v[i]);
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be 2 positive integers; received [", got, "]"));
    }
    *a0 = v[0];
    *a1 = v[1];
    return absl::OkStatus();
  };
  TF_RETURN_IF_ERROR(pair(ks, "kernel_size", &a->kh, &a->kw));
  TF_RETURN_IF_ERROR(pair(st, "strides", &a->sh, &a->sw));
  TF_RETURN_IF_ERROR(pair(dl, "dilations", &a->dh, &a->dw));
  a->same = padding == "SAME";
  if (!kshape.empty()) {
    std::string got;
    for (size_t i = 0; i < kshape.size(); ++i) absl::StrAppend(&got, i ? ", " : "", kshape[i]);
    if (kshape.size() != 4 || kshape[0] != a->kh || kshape[1] != a->kw || kshape[2] < 0 ||
        kshape[3] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kernel_shape must be (k_h, k_w, in_channels, out_channels) with (k_h, k_w) = "
          "kernel_size (", a->kh, ", ", a->kw, ") and non-negative channels; received (", got,
          ")"));
    }
  }
  a->kernel_shape = kshape;
  return absl::OkStatus();
}

// Output size and leading pad of one spatial dimension (TensorFlow's SAME / VALID rules);
// returns false if VALID leaves no room for the dilated kernel.
bool OutAndPad(int64_t size, int64_t k, int64_t s, int64_t d, bool same, int64_t* out,
               int64_t* pad) {
  const int64_t ek = (k - 1) * d + 1;  // k, d < 2**31: fits
  if (same) {
    // ceil(size / s) and the SAME padding, in an order that cannot overflow for any size.
    *out = size == 0 ? 0 : (size - 1) / s + 1;
    *pad = *out == 0 ? 0 : std::max<int64_t>(((*out - 1) * s - size) + ek, 0) / 2;
    return true;
  }
  *pad = 0;
  if (size < ek) return false;
  *out = (size - ek) / s + 1;
  return true;
}

absl::Status Geometry(const ConvAttrs& a, int64_t n, int64_t h, int64_t w, int64_t c,
                      int64_t out_c, const char* what, sk_conv2d_geom* g) {
  g->batch = n;
  g->in_h = h;
  g->in_w = w;
  g->in_c = c;
  g->out_c = out_c;
  g->k_h = a.kh;
  g->k_w = a.kw;
  g->stride_h = a.sh;
  g->stride_w = a.sw;
  g->dil_h = a.dh;
  g->dil_w = a.dw;
  if (!OutAndPad(h, a.kh, a.sh, a.dh, a.same, &g->out_h, &g->pad_top) ||
      !OutAndPad(w, a.kw, a.sw, a.dw, a.same, &g->out_w, &g->pad_left)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "with padding='VALID' the input (", h, " x ", w, ") must be at least the dilated kernel "
        "size (", (a.kh - 1) * a.dh + 1, " x ", (a.kw - 1) * a.dw + 1, "); received ", what,
        " [", n, ", ", h, ", ", w, ", ", c, "]"));
  }
  return absl::OkStatus();
}

// Validates the kernel's CSC arrays against (k_h * k_w * in_c) x out_c.
template <typename I>
absl::Status ValidateKernel(const Tensor& indptr, const Tensor& indices, const Tensor* values,
                            const ConvAttrs& a, int64_t in_c, const char* x_name,
                            CsrDims* d) {
  if (indptr.dims() != 1 || indptr.NumElements() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel.indptr must be a non-empty vector (out_channels + 1 entries); received shape ",
        indptr.shape().DebugString()));
  }
  if (!a.kernel_shape.empty()) {
    const auto& ks = a.kernel_shape;
    if (in_c != ks[2]) {
      return absl::InvalidArgumentError(absl::StrCat(
          x_name, " has ", in_c, " channels but kernel_shape=(", ks[0], ", ", ks[1], ", ", ks[2],
          ", ", ks[3], ") expects ", ks[2]));
    }
    if (indptr.NumElements() - 1 != ks[3]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kernel.indptr must have out_channels + 1 = ", ks[3] + 1, " entries for kernel_shape=(",
          ks[0], ", ", ks[1], ", ", ks[2], ", ", ks[3], "); received ", indptr.NumElements()));
    }
  }
  const int64_t patch = MulSize(a.kh * a.kw, in_c);  // kh, kw < 2**31
  if (patch < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the kernel's patch size k_h * k_w * in_channels = ", a.kh, " * ", a.kw, " * ", in_c,
        " does not fit in int64; received ", x_name, " with ", in_c, " channels"));
  }
  Tensor shape(::tensorflow::DT_INT64, TensorShape({2}));
  shape.flat<int64_t>()(0) = patch;
  shape.flat<int64_t>()(1) = indptr.NumElements() - 1;
  return ValidateCsr<I>(indptr, indices, values, shape, "kernel", true, d);
}

absl::Status Rank4(const Tensor& t, const char* name) {
  if (t.dims() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " must be 4-D (batch, height, width, channels); received shape ",
        t.shape().DebugString()));
  }
  return absl::OkStatus();
}

#define SK_CONV_OVERLOADS(T, I, TS, IS)                                                            \
  inline int Conv(const sk_conv2d_geom* g, const I* ip, const I* ix, const T* d, const T* x,     \
                  T* out, int nt) {                                                               \
    return sk_csr_conv2d_##TS##_##IS(g, ip, ix, d, x, out, nt);                                   \
  }                                                                                               \
  inline int ConvBiasAct(const sk_conv2d_geom* g, const I* ip, const I* ix, const T* d,         \
                         const T* bias, int act, const T* x, T* out, int nt) {                   \
    return sk_csr_conv2d_bias_act_##TS##_##IS(g, ip, ix, d, bias, act, x, out, nt);               \
  }                                                                                               \
  inline int ConvGradInput(const sk_conv2d_geom* g, const I* ip, const I* ix, const T* d,       \
                           const T* dy, T* dx, int nt) {                                          \
    return sk_csr_conv2d_grad_input_##TS##_##IS(g, ip, ix, d, dy, dx, nt);                        \
  }                                                                                               \
  inline int ConvGradValues(const sk_conv2d_geom* g, const I* ip, const I* ix, const T* x,      \
                            const T* dy, T* out, int nt) {                                        \
    return sk_csr_conv2d_grad_values_##TS##_##IS(g, ip, ix, x, dy, out, nt);                      \
  }
SK_CONV_OVERLOADS(float, int32_t, f32, i32)
SK_CONV_OVERLOADS(float, int64_t, f32, i64)
SK_CONV_OVERLOADS(double, int32_t, f64, i32)
SK_CONV_OVERLOADS(double, int64_t, f64, i64)
#undef SK_CONV_OVERLOADS

int64_t Work(const sk_conv2d_geom& g, int64_t nnz) {
  // In double: saturates where the int64 products could overflow (a thread-count heuristic).
  const double w = static_cast<double>(nnz) * g.batch *
                       std::max(static_cast<double>(g.out_h) * g.out_w,
                                static_cast<double>(g.in_h) * g.in_w) +
                   static_cast<double>(g.batch) * g.in_h * g.in_w * g.in_c;
  return w >= 9.0e18 ? static_cast<int64_t>(9.0e18) : static_cast<int64_t>(w);
}

absl::Status CheckDy(const Tensor& dy, const sk_conv2d_geom& g) {
  TF_RETURN_IF_ERROR(Rank4(dy, "dy"));
  if (dy.dim_size(0) != g.batch || dy.dim_size(1) != g.out_h || dy.dim_size(2) != g.out_w ||
      dy.dim_size(3) != g.out_c) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dy must have shape [", g.batch, ", ", g.out_h, ", ", g.out_w, ", ", g.out_c,
        "] (the convolution's output); received ", dy.shape().DebugString()));
  }
  return absl::OkStatus();
}

// conv2d(x, W) (kFused: CsrConv2DBiasAct, act(conv2d(x, W) + bias), the epilogue applied to
// each output tile as the kernel stores it).
template <typename T, typename I, bool kFused = false>
class CsrConv2DOp : public OpKernel {
 public:
  explicit CsrConv2DOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &a_));
    if constexpr (kFused) epilogue_ = std::make_unique<Epilogue>(ctx);
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& indptr = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const Tensor& values = ctx->input(3);
    OP_REQUIRES_OK(ctx, Rank4(x, "x"));
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateKernel<I>(indptr, indices, &values, a_, x.dim_size(3), "x", &d));
    sk_conv2d_geom g;
    OP_REQUIRES_OK(ctx, Geometry(a_, x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3),
                                 d.rows, "x.shape", &g));
    TensorShape out_shape;
    OP_REQUIRES_OK(ctx, OutputShape({g.batch, g.out_h, g.out_w, g.out_c}, "conv2d(x, kernel)",
                                    absl::StrCat("x.shape ", x.shape().DebugString(), " and ",
                                                 g.out_c, " output channels (kernel.indptr)"),
                                    &out_shape));
    const T* bias = nullptr;
    if constexpr (kFused) {
      OP_REQUIRES_OK(ctx, epilogue_->Bias<T>(ctx->input(4), g.out_c, &bias));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (out->NumElements() == 0) return;
    ThreadLease lease(ctx, Work(g, d.nnz));
    int rc;
    if constexpr (kFused) {
      rc = ConvBiasAct(&g, indptr.flat<I>().data(), indices.flat<I>().data(),
                       values.flat<T>().data(), bias, epilogue_->act(), x.flat<T>().data(),
                       out->flat<T>().data(), lease.n());
    } else {
      rc = Conv(&g, indptr.flat<I>().data(), indices.flat<I>().data(), values.flat<T>().data(),
                x.flat<T>().data(), out->flat<T>().data(), lease.n());
    }
    OP_REQUIRES(ctx, rc == 0, Allocation(kFused ? "CsrConv2DBiasAct" : "CsrConv2D"));
  }

 private:
  ConvAttrs a_;
  std::unique_ptr<Epilogue> epilogue_;
};

template <typename T, typename I>
class CsrConv2DBackpropInputOp : public OpKernel {
 public:
  explicit CsrConv2DBackpropInputOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &a_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& indptr = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const Tensor& values = ctx->input(3);
    const Tensor& sizes = ctx->input(4);
    OP_REQUIRES(ctx, sizes.dims() == 1 && sizes.NumElements() == 4,
                absl::InvalidArgumentError(absl::StrCat(
                    "input_sizes must be a vector of 4 sizes; received shape ",
                    sizes.shape().DebugString())));
    auto s = sizes.flat<int32_t>();
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES(ctx, s(i) >= 0,
                  absl::InvalidArgumentError(absl::StrCat(
                      "input_sizes must be non-negative; received [", s(0), ", ", s(1), ", ",
                      s(2), ", ", s(3), "]")));
    }
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateKernel<I>(indptr, indices, &values, a_, s(3), "input_sizes", &d));
    sk_conv2d_geom g;
    OP_REQUIRES_OK(ctx, Geometry(a_, s(0), s(1), s(2), s(3), d.rows, "input_sizes", &g));
    OP_REQUIRES_OK(ctx, CheckDy(dy, g));
    TensorShape dx_shape;
    OP_REQUIRES_OK(ctx, OutputShape({s(0), s(1), s(2), s(3)}, "dx", "input_sizes", &dx_shape));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, dx_shape, &dx));
    if (dx->NumElements() == 0) return;
    ThreadLease lease(ctx, WorkOf(Work(g, d.nnz), a_.sh * a_.sw));
    int rc = ConvGradInput(&g, indptr.flat<I>().data(), indices.flat<I>().data(),
                           values.flat<T>().data(), dy.flat<T>().data(), dx->flat<T>().data(),
                           lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrConv2DBackpropInput"));
  }

 private:
  ConvAttrs a_;
};

template <typename T, typename I>
class CsrConv2DBackpropValuesOp : public OpKernel {
 public:
  explicit CsrConv2DBackpropValuesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &a_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    const Tensor& indptr = ctx->input(2);
    const Tensor& indices = ctx->input(3);
    OP_REQUIRES_OK(ctx, Rank4(x, "x"));
    CsrDims d;
    OP_REQUIRES_OK(ctx, ValidateKernel<I>(indptr, indices, nullptr, a_, x.dim_size(3), "x", &d));
    sk_conv2d_geom g;
    OP_REQUIRES_OK(ctx, Geometry(a_, x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3),
                                 d.rows, "x.shape", &g));
    OP_REQUIRES_OK(ctx, CheckDy(dy, g));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({d.nnz}), &out));
    if (d.nnz == 0) return;
    ThreadLease lease(ctx, Work(g, d.nnz));
    int rc = ConvGradValues(&g, indptr.flat<I>().data(), indices.flat<I>().data(),
                            x.flat<T>().data(), dy.flat<T>().data(), out->flat<T>().data(),
                            lease.n());
    OP_REQUIRES(ctx, rc == 0, Allocation("CsrConv2DBackpropValues"));
  }

 private:
  ConvAttrs a_;
};

// ---- shape functions ----------------------------------------------------------------------

absl::Status SpatialOut(InferenceContext* c, const ConvAttrs& a, DimensionHandle in, bool height,
                        DimensionHandle* out) {
  if (!c->ValueKnown(in)) {
    *out = c->UnknownDim();
    return absl::OkStatus();
  }
  int64_t o = 0, pad = 0;
  const int64_t size = c->Value(in);
  if (!OutAndPad(size, height ? a.kh : a.kw, height ? a.sh : a.sw, height ? a.dh : a.dw, a.same,
                 &o, &pad)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "with padding='VALID' the input ", height ? "height" : "width", " (", size,
        ") must be at least the dilated kernel size"));
  }
  *out = c->MakeDim(o);
  return absl::OkStatus();
}

absl::Status CsrConv2DShape(InferenceContext* c) {
  ConvAttrs a;
  TF_RETURN_IF_ERROR(ReadAttrs(c, &a));
  ShapeHandle x, indptr, indices, values;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &values));
  DimensionHandle oh, ow, oc;
  TF_RETURN_IF_ERROR(SpatialOut(c, a, c->Dim(x, 1), true, &oh));
  TF_RETURN_IF_ERROR(SpatialOut(c, a, c->Dim(x, 2), false, &ow));
  DimensionHandle len = c->Dim(indptr, 0);
  if (c->ValueKnown(len) && c->Value(len) < 1) {
    return absl::InvalidArgumentError(
        "kernel.indptr must be a non-empty vector (out_channels + 1 entries); received shape [0]");
  }
  TF_RETURN_IF_ERROR(c->Subtract(len, 1, &oc));
  if (a.kernel_shape.size() == 4) {
    DimensionHandle cin = c->Dim(x, 3);
    if (c->ValueKnown(cin) && c->Value(cin) != a.kernel_shape[2]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "x has ", c->Value(cin), " channels but kernel_shape expects ", a.kernel_shape[2]));
    }
    if (c->ValueKnown(oc) && c->Value(oc) != a.kernel_shape[3]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kernel.indptr must have out_channels + 1 = ", a.kernel_shape[3] + 1,
          " entries for kernel_shape; received ", c->Value(len)));
    }
    oc = c->MakeDim(a.kernel_shape[3]);
  }
  c->set_output(0, c->MakeShape({c->Dim(x, 0), oh, ow, oc}));
  return absl::OkStatus();
}

absl::Status CsrConv2DBackpropInputShape(InferenceContext* c) {
  ShapeHandle dy, out;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &dy));
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensorTreatScalarAsUnknownShape(4, &out));
  TF_RETURN_IF_ERROR(c->WithRank(out, 4, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status CsrConv2DBackpropValuesShape(InferenceContext* c) {
  ShapeHandle x, dy, indptr, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &dy));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &indptr));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &indices));
  c->set_output(0, c->Vector(c->Dim(indices, 0)));
  return absl::OkStatus();
}

}  // namespace
}  // namespace sparsekeras

#define SK_CONV_ATTRS                                   \
  Attr("kernel_size: list(int) >= 2")                   \
      .Attr("strides: list(int) = [1, 1]")              \
      .Attr("dilations: list(int) = [1, 1]")            \
      .Attr("padding: {'SAME', 'VALID'}")               \
      .Attr("kernel_shape: list(int) = []")             \
      .Attr("T: {float, double}")                       \
      .Attr("Tindex: {int32, int64}")

REGISTER_OP("SparseKeras>CsrConv2D")
    .Input("x: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Output("y: T")
    .SK_CONV_ATTRS
    .SetShapeFn(sparsekeras::CsrConv2DShape)
    .Doc("y = conv2d(x, W): x NHWC, W (k_h, k_w, in_c, out_c) sparse, given as the CSC arrays "
         "of its (k_h * k_w * in_c) x out_c reshape.");

REGISTER_OP("SparseKeras>CsrConv2DBiasAct")
    .Input("x: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("bias: T")
    .Output("y: T")
    .Attr("activation: {'linear', 'relu', 'gelu', 'relu6'} = 'linear'")
    .SK_CONV_ATTRS
    .SetShapeFn(sparsekeras::CsrConv2DShape)
    .Doc("y = activation(conv2d(x, W) + bias): CsrConv2D with a Conv2D layer's epilogue applied "
         "to each output tile as it is stored. bias: out_c values, or none (shape [0]). Equal to "
         "the convolution, then the bias add, then the activation (bitwise for relu and relu6; "
         "gelu is exact GELU, within float rounding of tf.nn.gelu).");

REGISTER_OP("SparseKeras>CsrConv2DBackpropInput")
    .Input("dy: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Input("values: T")
    .Input("input_sizes: int32")
    .Output("dx: T")
    .SK_CONV_ATTRS
    .SetShapeFn(sparsekeras::CsrConv2DBackpropInputShape)
    .Doc("Gradient of CsrConv2D w.r.t. x (input_sizes = shape of x).");

REGISTER_OP("SparseKeras>CsrConv2DBackpropValues")
    .Input("x: T")
    .Input("dy: T")
    .Input("indptr: Tindex")
    .Input("indices: Tindex")
    .Output("d_values: T")
    .SK_CONV_ATTRS
    .SetShapeFn(sparsekeras::CsrConv2DBackpropValuesShape)
    .Doc("Gradient of CsrConv2D w.r.t. the kernel's stored values, on its pattern.");

#undef SK_CONV_ATTRS

namespace sparsekeras {
namespace {

#define SK_REGISTER_CONV(T, I)                                                              \
  SK_REGISTER_CPU_TI("CsrConv2D", T, I, CsrConv2DOp<T, I>);                                 \
  SK_REGISTER_CPU_TI("CsrConv2DBiasAct", T, I, (CsrConv2DOp<T, I, true>));                  \
  SK_REGISTER_CPU_TI("CsrConv2DBackpropInput", T, I, CsrConv2DBackpropInputOp<T, I>);       \
  SK_REGISTER_CPU_TI("CsrConv2DBackpropValues", T, I, CsrConv2DBackpropValuesOp<T, I>);
SK_REGISTER_CONV(float, int32_t)
SK_REGISTER_CONV(float, int64_t)
SK_REGISTER_CONV(double, int32_t)
SK_REGISTER_CONV(double, int64_t)
#undef SK_REGISTER_CONV

}  // namespace
}  // namespace sparsekeras
