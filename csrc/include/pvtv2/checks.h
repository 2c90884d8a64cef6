// Argument checks of the extension's ops, shared by the CPU and Meta registrations (ops.cpp) and the CUDA ones
// (cuda/ops_cuda.cpp), so every backend of an op accepts and rejects exactly the same calls.
//
// The registered ops are public (torch.ops.pvtv2_fast_C.*), so they do not trust their callers even though the Python
// wrappers (pvtv2_fast.ops) check first. The rule: every size is checked against the actual tensor, and every product
// of sizes is formed overflow-checked, BEFORE any data pointer is formed or any buffer is sized.
//
// Macros in the style of flash-attention's CHECK_*: each names the op through a `const char* op` that must be in
// scope and the argument by its source text, e.g. "conv_ffn: dw_weight must be (32, 1, 3, 3), got (31, 1, 3, 3)".
// They take a Tensor or an optional Tensor (an absent optional passes) and raise c10::Error (RuntimeError in Python)
// for every kind of bad input, so callers catch one exception type whichever backend ran.
// A meta tensor needs no check of its own: the device checks reject it, since a kernel that forms pointers requires
// its own device type for x (CHECK_DEVICE) and x's device for every other tensor (CHECK_LIKE).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "pvtv2/packing.h"

namespace pvtv2 {
namespace checks {

// The dtypes every kernel (CPU and CUDA) takes; written once, here.
inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }
constexpr const char* kKernelDtypes = "float32, bfloat16 and float16";

// (2, 3) / (5,) / (): Python's tuple spelling, as the Python wrappers print shapes.
inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

// The macros' argument: a tensor, or nullptr for an absent optional (nothing to check).
inline const at::Tensor* get(const at::Tensor& t) { return &t; }
inline const at::Tensor* get(const c10::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

inline void dim(const char* op, const char* name, const at::Tensor* t, int64_t d) {
  if (t) TORCH_CHECK(t->dim() == d, op, ": ", name, " must have ", d, " dimensions, got ", shape_str(t->sizes()));
}
inline void shape(const char* op, const char* name, const at::Tensor* t, std::initializer_list<int64_t> expected) {
  if (t)
    TORCH_CHECK(t->sizes() == at::IntArrayRef(expected), op, ": ", name, " must be ", shape_str(expected), ", got ",
                shape_str(t->sizes()));
}
inline void device(const char* op, const char* name, const at::Tensor* t, at::DeviceType type) {
  if (t) TORCH_CHECK(t->device().type() == type, op, ": ", name, " must be a ", type, " tensor, got ", t->device());
}
inline void strided(const char* op, const char* name, const at::Tensor* t) {
  if (t) TORCH_CHECK(t->layout() == at::kStrided, op, ": ", name, " must be a dense tensor, got layout ", t->layout());
}
inline void contiguous(const char* op, const char* name, const at::Tensor* t) {
  if (t) TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
}
inline void kernel_dtype(const char* op, const char* name, const at::Tensor* t) {
  if (t)
    TORCH_CHECK(is_kernel_dtype(t->scalar_type()), op, ": the kernel supports ", kKernelDtypes, ", got ",
                t->scalar_type(), " for ", name);
}
// Another input of an op must match x: same device (a meta or other-device weight is refused, not read), same
// dtype (no silent conversion), dense layout.
inline void like(const char* op, const char* name, const at::Tensor* t, const at::Tensor& x, const char* x_name) {
  if (!t) return;
  strided(op, name, t);
  TORCH_CHECK(t->device() == x.device(), op, ": ", name, " must be on ", x_name, "'s device (", x.device(), "), got ",
              t->device());
  TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have ", x_name, "'s dtype (",
              x.scalar_type(), "), got ", t->scalar_type());
}

#define CHECK_DIM(x, d) ::pvtv2::checks::dim(op, #x, ::pvtv2::checks::get(x), d)
#define CHECK_SHAPE(x, ...) ::pvtv2::checks::shape(op, #x, ::pvtv2::checks::get(x), {__VA_ARGS__})
#define CHECK_DEVICE(x, device_type) ::pvtv2::checks::device(op, #x, ::pvtv2::checks::get(x), device_type)
#define CHECK_STRIDED(x) ::pvtv2::checks::strided(op, #x, ::pvtv2::checks::get(x))
#define CHECK_CONTIGUOUS(x) ::pvtv2::checks::contiguous(op, #x, ::pvtv2::checks::get(x))
#define CHECK_KERNEL_DTYPE(x) ::pvtv2::checks::kernel_dtype(op, #x, ::pvtv2::checks::get(x))
#define CHECK_LIKE(t, x) ::pvtv2::checks::like(op, #t, ::pvtv2::checks::get(t), x, #x)

// a·b and a + b, or an error naming what overflowed int64 (sizes are products of user-supplied ints).
inline int64_t mul(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  TORCH_CHECK(!c10::mul_overflows(a, b, &out), op, ": ", what, " = ", a, " x ", b, " overflows int64");
  return out;
}
inline int64_t add(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  TORCH_CHECK(!c10::add_overflows(a, b, &out), op, ": ", what, " = ", a, " + ", b, " overflows int64");
  return out;
}

// ------------------------------------------------------------------------------------ the contract of each op
// Called first by every kernel of the op (CPU, CUDA and Meta), so all of them accept the same calls.
//
// C = 0, one rule for every backend: do what the PyTorch reference does. The depthwise conv of zero channels is
// F.conv2d(groups=0), which raises, so dwconv_gelu with C = 0 and conv_ffn with hidden = 0 raise; pooling zero
// channels (linear_sra_pool) and conv_ffn with zero input or output channels are well defined there (an empty or
// bias-only result) and are computed. An empty batch (B = 0) gives an empty result everywhere.

// x: (B, N, C) tokens of a height × width map, N = height·width, in a kernel dtype.
inline void token_map(const char* op, const at::Tensor& x, int64_t height, int64_t width) {
  CHECK_STRIDED(x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, N, C) tokens, got ", shape_str(x.sizes()));
  CHECK_KERNEL_DTYPE(x);
  TORCH_CHECK(height >= 1 && width >= 1, op, ": height and width must be >= 1, got ", height, "x", width);
  // Compared by division, so no product of the declared sizes is formed: 2^32 x 2^32 would wrap to 0 tokens.
  const int64_t n = x.size(1);
  TORCH_CHECK(n % height == 0 && n / height == width, op, ": ", n, " tokens are not a ", height, "x", width, " map");
}

inline void depthwise_channels(const char* op, const char* what, int64_t channels) {
  TORCH_CHECK(channels >= 1, op, ": ", what, " is 0; a depthwise conv of no channels is an error, as in PyTorch's "
              "F.conv2d(groups=0)");
}

// x (B, H·W, C), weight (C, 1, 3, 3), bias (C,) or absent.
inline void dwconv_gelu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t height, int64_t width) {
  const char* op = "dwconv_gelu";
  token_map(op, x, height, width);
  const int64_t C = x.size(2);
  depthwise_channels(op, "the channel count C of x", C);
  CHECK_LIKE(weight, x);
  CHECK_SHAPE(weight, C, 1, 3, 3);
  CHECK_LIKE(bias, x);
  CHECK_SHAPE(bias, C);
}

// x (B, N, C) tokens, normalised over C; weight and bias (C,) or absent; eps >= 0 and finite.
inline void layer_norm(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias, double eps) {
  const char* op = "layer_norm";
  CHECK_STRIDED(x);
  TORCH_CHECK(x.dim() == 3, op, ": x must be (B, N, C) tokens, got ", shape_str(x.sizes()));
  CHECK_KERNEL_DTYPE(x);
  TORCH_CHECK(x.size(2) >= 1, op, ": x has no channels to normalise (C = 0)");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  CHECK_LIKE(weight, x);
  CHECK_SHAPE(weight, x.size(2));
  CHECK_LIKE(bias, x);
  CHECK_SHAPE(bias, x.size(2));
}

// The weight, bias and packed weight of a k×k conv of x's tokens: weight (Co, Ci, k, k), k >= 1; bias (Co,); packed
// (ceil(Co / 64), k·k·Ci, 64), the weight as ops.pack_weight lays it out (packing.h), or in pairs of k
// ((ceil(Co / 64), k·k·Ci / 2, 64, 2), ops.pack_weight_pairs) for bf16 x with Ci even.
inline void conv_params(const char* op, const at::Tensor& x, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& packed) {
  CHECK_LIKE(weight, x);
  CHECK_DIM(weight, 4);
  const int64_t k = weight.size(2);
  TORCH_CHECK(k >= 1 && weight.size(3) == k, op, ": weight must be (Co, Ci, k, k) with k >= 1, got ",
              shape_str(weight.sizes()));
  CHECK_SHAPE(weight, weight.size(0), x.size(2), k, k);
  // PyTorch's conv2d answers 0 output channels there, not Co channels of bias: refused rather than either.
  TORCH_CHECK(x.size(2) > 0, op, ": x has no channels (a conv of 0 input channels is refused)");
  CHECK_LIKE(bias, x);
  CHECK_SHAPE(bias, weight.size(0));
  CHECK_LIKE(packed, x);
  const bool pairs = packed.dim() == 4;
  TORCH_CHECK(!pairs || x.scalar_type() == at::kBFloat16, op, ": a weight packed in pairs is for bf16 inputs, got x ",
              x.scalar_type());
  TORCH_CHECK(!pairs || x.size(2) % 2 == 0, op, ": a weight packed in pairs needs an even channel count, got ",
              x.size(2));
  const std::vector<int64_t> expected = packed_shape(weight.size(0), k * k * x.size(2), pairs);
  TORCH_CHECK(packed.sizes() == at::IntArrayRef(expected), op, ": packed must be ", shape_str(expected), ", got ",
              shape_str(packed.sizes()));
}

// x (B, H·W, Ci) tokens of an H×W map; the s×s conv at stride s (no padding), s no larger than the map; the weight,
// bias and packed weight as conv_params.
inline void sr_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                    int64_t height, int64_t width, const at::Tensor& packed) {
  const char* op = "sr_conv";
  token_map(op, x, height, width);
  conv_params(op, x, weight, bias, packed);
  const int64_t s = weight.size(2);
  TORCH_CHECK(s <= height && s <= width, op, ": a ", s, "x", s, " kernel does not fit in a ", height, "x", width,
              " map");
}

// x (B, H·W, Ci) tokens of an H×W map; a k×k conv at stride >= 1 with zero padding >= 0 whose kernel fits in the
// padded map; the weight, bias and packed weight as conv_params.
inline void token_conv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       int64_t height, int64_t width, int64_t stride, int64_t padding, const at::Tensor& packed) {
  const char* op = "token_conv";
  token_map(op, x, height, width);
  conv_params(op, x, weight, bias, packed);
  TORCH_CHECK(stride >= 1 && padding >= 0, op, ": stride must be >= 1 and padding >= 0, got stride ", stride,
              ", padding ", padding);
  const int64_t k = weight.size(2);
  TORCH_CHECK(k <= height + 2 * padding && k <= width + 2 * padding, op, ": a ", k, "x", k, " kernel does not fit in a ",
              height, "x", width, " map padded by ", padding);
}

// q (B, N, C) queries; k and v (B, M, C) keys and values (any strides, e.g. views into one (B, M, 2C) projection);
// num_heads divides C; M >= 1; the scale finite.
inline void sra_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t num_heads,
                          double scale) {
  const char* op = "sra_attention";
  CHECK_STRIDED(q);
  TORCH_CHECK(q.dim() == 3, op, ": q must be (B, N, C) tokens, got ", shape_str(q.sizes()));
  CHECK_KERNEL_DTYPE(q);
  CHECK_LIKE(k, q);
  CHECK_LIKE(v, q);
  CHECK_DIM(k, 3);
  CHECK_SHAPE(k, q.size(0), k.size(1), q.size(2));
  CHECK_SHAPE(v, q.size(0), k.size(1), q.size(2));
  TORCH_CHECK(k.size(1) >= 1, op, ": at least one key is needed (M >= 1)");
  TORCH_CHECK(num_heads >= 1 && q.size(2) % num_heads == 0, op, ": ", q.size(2),
              " channels are not divisible into ", num_heads, " heads");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  // The CPU kernel packs every head's keys and values, each head's K and V padded to 16 keys and 16 channels:
  // at most B·(M + 15)·(2·C + 15·heads) floats.
  mul(op, "packed keys and values", mul(op, "B x (M + 15)", q.size(0), add(op, "M + 15", k.size(1), 15)),
      add(op, "2C + 15 heads", mul(op, "2 x C", 2, q.size(2)), mul(op, "15 x heads", 15, num_heads)));
}

// The whole SRA layer (ops.sra_layer): x (B, H·W, C) tokens; q_weight and proj_weight (C, C), kv_weight (2C, C),
// biases (C,) / (2C,) / (C,) or absent; sr_weight (C, C, s, s) with its bias and the LayerNorm's weight / bias (C,),
// or none of the four (no spatial reduction: keys from x itself); residual like x or absent; heads divide C; packed
// the [q, kv, proj] weights (and sr_weight last) as ops.pack_weight lays them out.
inline void sra_layer(const at::Tensor& x, const at::Tensor& q_weight, const c10::optional<at::Tensor>& q_bias,
                      const at::Tensor& kv_weight, const c10::optional<at::Tensor>& kv_bias,
                      const at::Tensor& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                      const c10::optional<at::Tensor>& sr_weight, const c10::optional<at::Tensor>& sr_bias,
                      const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                      const c10::optional<at::Tensor>& residual, int64_t height, int64_t width, int64_t num_heads,
                      double scale, double eps, at::TensorList packed, bool pairs = false) {
  const char* op = "sra_layer";
  token_map(op, x, height, width);
  const int64_t C = x.size(2);
  TORCH_CHECK(C >= 1, op, ": x has no channels (C = 0)");
  TORCH_CHECK(num_heads >= 1 && C % num_heads == 0, op, ": ", C, " channels are not divisible into ", num_heads,
              " heads");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  CHECK_LIKE(q_weight, x);
  CHECK_SHAPE(q_weight, C, C);
  CHECK_LIKE(q_bias, x);
  CHECK_SHAPE(q_bias, C);
  CHECK_LIKE(kv_weight, x);
  CHECK_SHAPE(kv_weight, 2 * C, C);
  CHECK_LIKE(kv_bias, x);
  CHECK_SHAPE(kv_bias, 2 * C);
  CHECK_LIKE(proj_weight, x);
  CHECK_SHAPE(proj_weight, C, C);
  CHECK_LIKE(proj_bias, x);
  CHECK_SHAPE(proj_bias, C);
  CHECK_LIKE(residual, x);
  CHECK_SHAPE(residual, x.size(0), x.size(1), C);
  const bool reduce = sr_weight.has_value();
  TORCH_CHECK(reduce || !(sr_bias.has_value() || norm_weight.has_value() || norm_bias.has_value()), op,
              ": sr_bias, norm_weight and norm_bias belong to the spatial reduction: pass sr_weight with them");
  int64_t s = 1;
  if (reduce) {
    CHECK_LIKE(sr_weight, x);
    CHECK_DIM(sr_weight, 4);
    s = sr_weight->size(2);
    TORCH_CHECK(s >= 1 && sr_weight->size(3) == s, op, ": sr_weight must be (C, C, s, s) with s >= 1, got ",
                shape_str(sr_weight->sizes()));
    CHECK_SHAPE(sr_weight, C, C, s, s);
    TORCH_CHECK(s <= height && s <= width, op, ": a ", s, "x", s, " reduction does not fit in a ", height, "x", width,
                " map");
    CHECK_LIKE(sr_bias, x);
    CHECK_SHAPE(sr_bias, C);
    CHECK_LIKE(norm_weight, x);
    CHECK_SHAPE(norm_weight, C);
    CHECK_LIKE(norm_bias, x);
    CHECK_SHAPE(norm_bias, C);
    TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, op, ": eps must be finite and >= 0, got ", eps);
  }
  const size_t expected = reduce ? 4 : 3;
  TORCH_CHECK(packed.size() == expected, op, ": packed must hold the ", expected, " packed weights [q, kv, proj",
              reduce ? ", sr" : "", "] (ops.pack_weight), got ", packed.size());
  const char* names[4] = {"packed[0] (q)", "packed[1] (kv)", "packed[2] (proj)", "packed[3] (sr)"};
  if (pairs) TORCH_CHECK(C % 2 == 0, op, ": weights packed in pairs need an even channel count, got C = ", C);
  const std::vector<int64_t> shapes[4] = {packed_shape(C, C, pairs), packed_shape(2 * C, C, pairs),
                                          packed_shape(C, C, pairs), packed_shape(C, s * s * C, pairs)};
  for (size_t i = 0; i < expected; ++i) {
    like(op, names[i], &packed[i], x, "x");
    TORCH_CHECK(packed[i].sizes() == at::IntArrayRef(shapes[i]), op, ": ", names[i], " must be ",
                shape_str(at::IntArrayRef(shapes[i])), ", got ", shape_str(packed[i].sizes()));
  }
}

// x (B, H·W, C) → (B, P·P, C).
inline void linear_sra_pool(const at::Tensor& x, int64_t height, int64_t width, int64_t pool_size) {
  const char* op = "linear_sra_pool";
  token_map(op, x, height, width);
  TORCH_CHECK(pool_size >= 1, op, ": pool_size must be >= 1, got ", pool_size);
  // The bins (math.h) form (i + 1)·H + P - 1 for i < P, at most P·max(H, W) + P; the output has B·P·P·C elements.
  add(op, "pool bin bound", mul(op, "pool_size x max(height, width)", pool_size, std::max(height, width)), pool_size);
  mul(op, "output elements", mul(op, "B x pool_size^2", x.size(0), mul(op, "pool_size^2", pool_size, pool_size)),
      x.size(2));
}

// x (B, H·W, c_in), fc1 (hidden, c_in), dw (hidden, 1, 3, 3), fc2 (c_out, hidden); biases may be absent.
inline void conv_ffn(const at::Tensor& x, const at::Tensor& fc1_weight, const c10::optional<at::Tensor>& fc1_bias,
                     const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
                     const at::Tensor& fc2_weight, const c10::optional<at::Tensor>& fc2_bias, int64_t height,
                     int64_t width, const c10::optional<at::Tensor>& fc1_packed,
                     const c10::optional<at::Tensor>& fc2_packed, bool pairs = false) {
  const char* op = "conv_ffn";
  token_map(op, x, height, width);
  CHECK_LIKE(fc1_weight, x);
  CHECK_DIM(fc1_weight, 2);
  const int64_t c_in = x.size(2), hidden = fc1_weight.size(0);
  CHECK_SHAPE(fc1_weight, hidden, c_in);
  depthwise_channels(op, "the hidden width fc1_weight.size(0)", hidden);
  CHECK_LIKE(fc1_bias, x);
  CHECK_SHAPE(fc1_bias, hidden);
  CHECK_LIKE(dw_weight, x);
  CHECK_SHAPE(dw_weight, hidden, 1, 3, 3);
  CHECK_LIKE(dw_bias, x);
  CHECK_SHAPE(dw_bias, hidden);
  CHECK_LIKE(fc2_weight, x);
  CHECK_DIM(fc2_weight, 2);
  const int64_t c_out = fc2_weight.size(0);
  CHECK_SHAPE(fc2_weight, c_out, hidden);
  CHECK_LIKE(fc2_bias, x);
  CHECK_SHAPE(fc2_bias, c_out);
  TORCH_CHECK(fc1_packed.has_value() == fc2_packed.has_value(), op,
              ": pass both fc1_packed and fc2_packed (ops.pack_weight of each weight) or neither");
  if (pairs)
    TORCH_CHECK(c_in % 2 == 0 && hidden % 2 == 0, op, ": weights packed in pairs need even channel counts, got c_in ",
                c_in, " and hidden ", hidden);
  const std::vector<int64_t> shapes[2] = {packed_shape(hidden, c_in, pairs), packed_shape(c_out, hidden, pairs)};
  const char* names[2] = {"fc1_packed", "fc2_packed"};
  const c10::optional<at::Tensor>* given[2] = {&fc1_packed, &fc2_packed};
  for (int i = 0; i < 2; ++i) {
    if (!given[i]->has_value()) continue;
    like(op, names[i], get(*given[i]), x, "x");
    TORCH_CHECK((*given[i])->sizes() == at::IntArrayRef(shapes[i]), op, ": ", names[i], " must be ",
                shape_str(at::IntArrayRef(shapes[i])), ", got ", shape_str((*given[i])->sizes()));
  }
}

// A whole block (ops.pvt_block): x (B, H·W, C); the two LayerNorms' weight / bias (C,) or absent; attention the 10
// sra_layer tensors [q_w, q_b, kv_w, kv_b, proj_w, proj_b, sr_w, sr_b, sr_norm_w, sr_norm_b] (checked as sra_layer
// does, the residual being x); ffn the 6 conv_ffn tensors [fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b], fc2 back to C
// channels; eps [norm1, norm2, sr_norm]; packed the layer's packed weights, then fc1's and fc2's.
inline void pvt_block(const at::Tensor& x, const c10::optional<at::Tensor>& norm1_weight,
                      const c10::optional<at::Tensor>& norm1_bias,
                      const c10::List<c10::optional<at::Tensor>>& attention,
                      const c10::optional<at::Tensor>& norm2_weight, const c10::optional<at::Tensor>& norm2_bias,
                      const c10::List<c10::optional<at::Tensor>>& ffn, int64_t height, int64_t width,
                      int64_t num_heads, double scale, at::ArrayRef<double> eps, at::TensorList packed) {
  const char* op = "pvt_block";
  token_map(op, x, height, width);
  TORCH_CHECK(attention.size() == 10, op, ": attention must hold the 10 sra_layer tensors, got ", attention.size());
  TORCH_CHECK(ffn.size() == 6, op, ": ffn must hold the 6 conv_ffn tensors, got ", ffn.size());
  TORCH_CHECK(eps.size() == 3, op, ": eps must hold 3 values (norm1, norm2, the reduction's norm), got ", eps.size());
  for (double e : eps) TORCH_CHECK(std::isfinite(e) && e >= 0.0, op, ": eps must be finite and >= 0, got ", e);
  const char* required[3] = {"attention[0] (q_weight)", "attention[2] (kv_weight)", "attention[4] (proj_weight)"};
  for (size_t i = 0; i < 3; ++i) TORCH_CHECK(attention.get(2 * i).has_value(), op, ": ", required[i], " is required");
  const char* ffn_required[3] = {"ffn[0] (fc1_weight)", "ffn[2] (dw_weight)", "ffn[4] (fc2_weight)"};
  for (size_t i = 0; i < 3; ++i) TORCH_CHECK(ffn.get(2 * i).has_value(), op, ": ", ffn_required[i], " is required");
  const int64_t C = x.size(2);
  CHECK_LIKE(norm1_weight, x);
  CHECK_SHAPE(norm1_weight, C);
  CHECK_LIKE(norm1_bias, x);
  CHECK_SHAPE(norm1_bias, C);
  CHECK_LIKE(norm2_weight, x);
  CHECK_SHAPE(norm2_weight, C);
  CHECK_LIKE(norm2_bias, x);
  CHECK_SHAPE(norm2_bias, C);
  const bool reduce = attention.get(6).has_value();
  const size_t n_attn = reduce ? 4 : 3;
  TORCH_CHECK(packed.size() == n_attn + 2, op, ": packed must hold ", n_attn + 2,
              " packed weights (the layer's, then fc1's and fc2's: ops.pack_block_weights), got ", packed.size());
  // bf16 weights packed in pairs of k (ops.pack_block_weights where the CPU has AVX512-BF16) are 4-D.
  const bool pairs = packed[0].dim() == 4;
  TORCH_CHECK(!pairs || x.scalar_type() == at::kBFloat16, op, ": weights packed in pairs are for bf16 inputs, got x ",
              x.scalar_type());
  sra_layer(x, *attention.get(0), attention.get(1), *attention.get(2), attention.get(3), *attention.get(4),
            attention.get(5), attention.get(6), attention.get(7), attention.get(8), attention.get(9), x, height, width,
            num_heads, scale, eps[2], packed.slice(0, n_attn), pairs);
  const at::Tensor fc2_weight = *ffn.get(4);  // a copy: List::get returns a temporary
  TORCH_CHECK(fc2_weight.dim() == 2 && fc2_weight.size(0) == C, op, ": fc2_weight (ffn[4]) must map back to the ", C,
              " channels of x, got ", shape_str(fc2_weight.sizes()));
  conv_ffn(x, *ffn.get(0), ffn.get(1), *ffn.get(2), ffn.get(3), fc2_weight, ffn.get(5), height, width,
           packed[n_attn], packed[n_attn + 1], pairs);
}


// x (B, R_in, W_in, L) in a kernel dtype, L >= 1; row_index / col_index (n, 2) int64 taps into R_in / W_in (checked
// element by element where they are readable, i.e. on the CPU), row_weight / col_weight (n, 2) float32 on x's device;
// labels of an integer dtype that holds L - 1.
inline void upsample_argmax_taps(const char* op, const char* name, const at::Tensor& index, const at::Tensor& weight,
                                 const at::Tensor& x, int64_t source) {
  TORCH_CHECK(index.dim() == 2 && index.size(1) == 2 && index.scalar_type() == at::kLong, op, ": ", name,
              "_index must be (n, 2) int64, got ", shape_str(index.sizes()), " ", index.scalar_type());
  TORCH_CHECK(weight.sizes() == index.sizes() && weight.scalar_type() == at::kFloat, op, ": ", name,
              "_weight must be ", shape_str(index.sizes()), " float32 like ", name, "_index, got ",
              shape_str(weight.sizes()), " ", weight.scalar_type());
  for (const at::Tensor* t : {&index, &weight}) {
    strided(op, name, t);
    TORCH_CHECK(t->device() == x.device(), op, ": ", name, " taps must be on x's device (", x.device(), "), got ",
                t->device());
  }
  if (index.device().is_cpu() && index.numel()) {
    const at::Tensor flat = index.contiguous();
    const int64_t* p = flat.data_ptr<int64_t>();
    const auto [lo, hi] = std::minmax_element(p, p + flat.numel());
    TORCH_CHECK(*lo >= 0 && *hi < source, op, ": ", name, "_index reads source ", name, "s [", *lo, ", ", *hi,
                "], x has ", source);
  }
}

inline void upsample_argmax(const at::Tensor& x, const at::Tensor& row_index, const at::Tensor& row_weight,
                            const at::Tensor& col_index, const at::Tensor& col_weight, at::ScalarType dtype) {
  const char* op = "upsample_argmax";
  CHECK_STRIDED(x);
  TORCH_CHECK(x.dim() == 4, op, ": x must be a (B, R, W, L) channels-last band, got ", shape_str(x.sizes()));
  CHECK_KERNEL_DTYPE(x);
  const int64_t L = x.size(3);
  TORCH_CHECK(L >= 1, op, ": x has no labels (L = 0): the argmax of nothing is undefined");
  TORCH_CHECK(dtype == at::kByte || dtype == at::kShort || dtype == at::kInt || dtype == at::kLong, op,
              ": labels must be uint8, int16, int32 or int64, got ", dtype);
  const int64_t limit = dtype == at::kByte ? 256 : dtype == at::kShort ? (1 << 15) : INT32_MAX;
  TORCH_CHECK(L <= limit, op, ": ", L, " labels do not fit in ", dtype);
  upsample_argmax_taps(op, "row", row_index, row_weight, x, x.size(1));
  upsample_argmax_taps(op, "col", col_index, col_weight, x, x.size(2));
  mul(op, "output elements", mul(op, "B x rows", x.size(0), row_index.size(0)), col_index.size(0));
}


// xs: n >= 1 maps (B, R_i, W_i, C) of one kernel dtype on one device; per map, taps (R, 2) / (W, 2) as in
// upsample_argmax (the same R and W for every map); bias (C,) of the maps' dtype, or absent.
inline void upsample_accumulate(at::TensorList xs, at::TensorList row_index, at::TensorList row_weight,
                                at::TensorList col_index, at::TensorList col_weight,
                                const c10::optional<at::Tensor>& bias) {
  const char* op = "upsample_accumulate";
  TORCH_CHECK(!xs.empty(), op, ": needs at least one map");
  const size_t n = xs.size();
  TORCH_CHECK(row_index.size() == n && row_weight.size() == n && col_index.size() == n && col_weight.size() == n, op,
              ": one row_index, row_weight, col_index and col_weight per map (", n, " maps), got ", row_index.size(),
              ", ", row_weight.size(), ", ", col_index.size(), ", ", col_weight.size());
  const at::Tensor& x = xs[0];
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& xi = xs[i];
    strided(op, "xs", &xi);
    TORCH_CHECK(xi.dim() == 4, op, ": xs[", i, "] must be a (B, R, W, C) channels-last map, got ",
                shape_str(xi.sizes()));
    kernel_dtype(op, "xs", &xi);
    TORCH_CHECK(xi.scalar_type() == x.scalar_type() && xi.device() == x.device(), op, ": xs[", i,
                "] must share xs[0]'s dtype and device");
    TORCH_CHECK(xi.size(0) == x.size(0) && xi.size(3) == x.size(3), op, ": xs[", i, "] ", shape_str(xi.sizes()),
                " must have xs[0]'s batch and channels ", shape_str(x.sizes()));
    upsample_argmax_taps(op, "row", row_index[i], row_weight[i], xi, xi.size(1));
    upsample_argmax_taps(op, "col", col_index[i], col_weight[i], xi, xi.size(2));
    TORCH_CHECK(row_index[i].size(0) == row_index[0].size(0) && col_index[i].size(0) == col_index[0].size(0), op,
                ": every map must resample to the same rows and columns");
  }
  like(op, "bias", get(bias), x, "x");
  if (bias.has_value()) CHECK_SHAPE(bias, x.size(3));
  mul(op, "output elements", mul(op, "B x rows", x.size(0), row_index[0].size(0)),
      mul(op, "cols x C", col_index[0].size(0), x.size(3)));
}

}  // namespace checks
}  // namespace pvtv2
