// TensorFlow op of sparsekeras: layer normalization over the last axis in one pass over memory.
//
//   LayerNorm(x, gamma, beta; epsilon) -> y
//     y[r, j] = (x[r, j] - mean_r) * rsqrt(var_r + epsilon) * gamma[j] + beta[j]
//   over the rows r of x seen as (rows, H), H its last dimension; mean_r and var_r (biased) over
//   the row, computed in two passes (the mean, then the squared differences) as tf.nn.moments
//   does. gamma and beta have H values, or none (shape [0]: scale 1, offset 0).
//
// Keras' LayerNormalization runs as ten TensorFlow ops (two Means, SquaredDifference, Rsqrt,
// Muls, AddV2s), each a pass over the whole tensor: ~0.26 ms a layer for 8 x 128 x 256 floats,
// where one pass with the row in L1 takes a fifth of it. `strip` puts this op in stripped
// models (sparsekeras.layers.FusedLayerNormalization). Its gradient is composed of TensorFlow
// ops (sparsekeras/ops/_gradients.py). Rows split over TensorFlow's intra-op pool.
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "op_common.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace sparsekeras {
namespace {

using ::tensorflow::OpKernel;

// One row: kP partial sums (a fixed order, the same for every thread count and instruction
// set), then the output; written so that the compiler vectorizes each loop.
constexpr int kP = 16;

template <typename T>
__attribute__((always_inline)) inline void NormRow(const T* x, const T* gamma, const T* beta,
                                                   int64_t h, T epsilon, T* y) {
  T s[kP] = {};
  int64_t j = 0;
  for (; j + kP <= h; j += kP)
    for (int k = 0; k < kP; ++k) s[k] += x[j + k];
  for (int w = kP / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) s[k] += s[k + w];
  T sum = s[0];
  for (; j < h; ++j) sum += x[j];
  const T mean = sum / static_cast<T>(h);
  T q[kP] = {};
  j = 0;
  for (; j + kP <= h; j += kP)
    for (int k = 0; k < kP; ++k) {
      const T d = x[j + k] - mean;
      q[k] += d * d;
    }
  for (int w = kP / 2; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) q[k] += q[k + w];
  T sq = q[0];
  for (; j < h; ++j) {
    const T d = x[j] - mean;
    sq += d * d;
  }
  const T rstd = T(1) / std::sqrt(sq / static_cast<T>(h) + epsilon);
  if (gamma != nullptr && beta != nullptr) {
    for (j = 0; j < h; ++j) y[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
  } else if (gamma != nullptr) {
    for (j = 0; j < h; ++j) y[j] = (x[j] - mean) * rstd * gamma[j];
  } else if (beta != nullptr) {
    for (j = 0; j < h; ++j) y[j] = (x[j] - mean) * rstd + beta[j];
  } else {
    for (j = 0; j < h; ++j) y[j] = (x[j] - mean) * rstd;
  }
}

// Rows [lo, hi) of (rows, h), compiled for AVX-512, AVX2 and baseline x86-64 and chosen at
// load time by the CPU (the wheel stays baseline x86-64). -ffp-contract=off in every clone:
// the same bits whichever one runs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SK_NORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), \
                                      optimize("fp-contract=off")))
#else
#define SK_NORM_CLONES
#endif
SK_NORM_CLONES void NormRowsF32(const float* x, const float* g, const float* b, int64_t h,
                                float eps, int64_t lo, int64_t hi, float* y) {
  for (int64_t r = lo; r < hi; ++r) NormRow<float>(x + r * h, g, b, h, eps, y + r * h);
}
SK_NORM_CLONES void NormRowsF64(const double* x, const double* g, const double* b, int64_t h,
                                double eps, int64_t lo, int64_t hi, double* y) {
  for (int64_t r = lo; r < hi; ++r) NormRow<double>(x + r * h, g, b, h, eps, y + r * h);
}
inline void NormRows(const float* x, const float* g, const float* b, int64_t h, float eps,
                     int64_t lo, int64_t hi, float* y) {
  NormRowsF32(x, g, b, h, eps, lo, hi, y);
}
inline void NormRows(const double* x, const double* g, const double* b, int64_t h, double eps,
                     int64_t lo, int64_t hi, double* y) {
  NormRowsF64(x, g, b, h, eps, lo, hi, y);
}

template <typename T>
class LayerNormOp : public OpKernel {
 public:
  explicit LayerNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    float epsilon;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon));
    OP_REQUIRES(ctx, epsilon >= 0 && std::isfinite(epsilon),
                absl::InvalidArgumentError(absl::StrCat(
                    "epsilon must be a finite number >= 0; received ", epsilon)));
    epsilon_ = static_cast<T>(epsilon);
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, x.dims() >= 1,
                absl::InvalidArgumentError(absl::StrCat(
                    "x must have at least one dimension (the normalized last axis); received "
                    "shape ", x.shape().DebugString())));
    const int64_t h = x.dim_size(x.dims() - 1);
    const T* params[2] = {nullptr, nullptr};
    const char* names[2] = {"gamma", "beta"};
    for (int i = 0; i < 2; ++i) {
      const Tensor& p = ctx->input(1 + i);
      OP_REQUIRES(ctx, p.dims() == 1 && (p.dim_size(0) == 0 || p.dim_size(0) == h),
                  absl::InvalidArgumentError(absl::StrCat(
                      names[i], " must be a vector of ", h, " entries (x's last dimension) or "
                      "empty (none); received shape ", p.shape().DebugString())));
      if (p.dim_size(0) != 0) params[i] = p.flat<T>().data();
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (x.NumElements() == 0) return;
    const int64_t rows = x.NumElements() / h;
    const T* xp = x.flat<T>().data();
    T* yp = y->flat<T>().data();
    const T eps = epsilon_;
    ThreadLease lease(ctx, rows * h);
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(h, 1));
    RunRows(ctx, lease.n(), rows, grain, true, [&](int64_t lo, int64_t hi, int) {
      NormRows(xp, params[0], params[1], h, eps, lo, hi, yp);
      return 0;
    });
  }

 private:
  T epsilon_;
};

}  // namespace
}  // namespace sparsekeras

REGISTER_OP("SparseKeras>LayerNorm")
    .Input("x: T")
    .Input("gamma: T")
    .Input("beta: T")
    .Output("y: T")
    .Attr("epsilon: float = 0.001")
    .Attr("T: {float, double}")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &unused));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("Layer normalization over x's last axis: (x - mean) * rsqrt(var + epsilon) * gamma + "
         "beta, mean and (biased) variance per row; gamma / beta: H values or none (shape [0]).");

namespace sparsekeras {
namespace {
REGISTER_KERNEL_BUILDER(
    Name("SparseKeras>LayerNorm").Device(::tensorflow::DEVICE_CPU).TypeConstraint<float>("T"),
    LayerNormOp<float>);
REGISTER_KERNEL_BUILDER(
    Name("SparseKeras>LayerNorm").Device(::tensorflow::DEVICE_CPU).TypeConstraint<double>("T"),
    LayerNormOp<double>);
}  // namespace
}  // namespace sparsekeras
