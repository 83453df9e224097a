/*
 * sparsekeras_conv.h -- C API of the sparse-weight 2-D convolution kernels (csr_conv2d.pxi).
 *
 * Same conventions as sparsekeras_kernels.h (argument order, n_threads, return codes,
 * bitwise-identical results for every n_threads). Activations are NHWC, as Keras uses them.
 *
 * The kernel W (k_h, k_w, in_c, out_c) is stored as the CSC form of the (k_h * k_w * in_c) x out_c
 * matrix it reshapes to (the Dense orientation of an im2col product): indptr has out_c + 1
 * entries, indices are patch positions k = (i * k_w + j) * in_c + c in [0, k_h * k_w * in_c),
 * data the values. A depthwise kernel is the same object with nonzeros only where c is the
 * output channel's input channel, so these kernels serve depthwise convolutions too.
 *
 * The caller computes the geometry (TensorFlow's SAME/VALID rules) and validates the CSR arrays
 * (sk_csr_check_*); out_h, out_w >= 0, strides and dilations >= 1, pads >= 0.
 *
 * sk_csr_conv2d: out (batch, out_h, out_w, out_c) =
 *     sum_{i, j, c} x[b, oh * stride_h + i * dil_h - pad_top, ow * stride_w + j * dil_w - pad_left, c]
 *                   * W[i, j, c, o]           (x is zero outside the image).
 *   Complexity O(nnz * batch * out_h * out_w + size(x)).
 * sk_csr_conv2d_bias_act: out = act(that sum + bias[o]), the epilogue of a Conv2D layer fused
 *   into the output store: bias has out_c entries (or is NULL), act is SK_ACT_LINEAR, SK_ACT_RELU,
 *   SK_ACT_GELU or SK_ACT_RELU6 (sparsekeras_kernels.h). The same values as the convolution
 *   followed by the bias add and the activation (bitwise for ReLU / ReLU6).
 * sk_csr_conv2d_grad_input: dx (batch, in_h, in_w, in_c) = the gradient of that sum w.r.t. x
 *   for dy (batch, out_h, out_w, out_c). Complexity O(nnz * batch * in_h * in_w * ...), stride
 *   > 1 costs stride_h * stride_w times more (it runs on the zero-dilated dy).
 * sk_csr_conv2d_grad_values: out_values (nnz) = the gradient w.r.t. W's stored values, on W's
 *   pattern: sum over (b, oh, ow) of x[b, ..., c] * dy[b, oh, ow, o]. Complexity as the forward.
 */
#ifndef SPARSEKERAS_CONV_H
#define SPARSEKERAS_CONV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sk_conv2d_geom {
    int64_t batch, in_h, in_w, in_c;
    int64_t out_h, out_w, out_c;
    int64_t k_h, k_w;
    int64_t stride_h, stride_w, dil_h, dil_w;
    int64_t pad_top, pad_left;
} sk_conv2d_geom;

#define SK_CONV_DECL(TS, T, IS, I)                                                                \
    int sk_csr_conv2d_##TS##_##IS(const sk_conv2d_geom *g, const I *indptr, const I *indices,     \
                                  const T *data, const T *x, T *out, int n_threads);              \
    int sk_csr_conv2d_bias_act_##TS##_##IS(const sk_conv2d_geom *g, const I *indptr,             \
                                           const I *indices, const T *data, const T *bias,       \
                                           int act, const T *x, T *out, int n_threads);          \
    int sk_csr_conv2d_grad_input_##TS##_##IS(const sk_conv2d_geom *g, const I *indptr,            \
                                             const I *indices, const T *data, const T *dy,        \
                                             T *dx, int n_threads);                               \
    int sk_csr_conv2d_grad_values_##TS##_##IS(const sk_conv2d_geom *g, const I *indptr,           \
                                              const I *indices, const T *x, const T *dy,          \
                                              T *out_values, int n_threads);
SK_CONV_DECL(f32, float, i32, int32_t)
SK_CONV_DECL(f32, float, i64, int64_t)
SK_CONV_DECL(f64, double, i32, int32_t)
SK_CONV_DECL(f64, double, i64, int64_t)
#undef SK_CONV_DECL

#ifdef __cplusplus
}
#endif

#endif /* SPARSEKERAS_CONV_H */
