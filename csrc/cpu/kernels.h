// CPU kernels on the (B, N, C) token layout, written once over a vector policy `V` and compiled per ISA:
// kernels_default.cpp (ScalarOps, 1 lane), kernels_avx2.cpp (Avx2Ops, 8 lanes of AVX2 + FMA intrinsics) and
// kernels_avx512.cpp (Avx512Ops, 16 lanes of AVX-512F).
// Each translation unit defines PVT_ISA first, so every copy lives in its own namespace (no ODR clash between
// ISAs); ops.cpp picks one at run time.
//
// A policy V provides: kWidth, type `reg`, load(const float*), store(float*, reg), set1(float), zero(),
// fmadd(a, b, c) = a·b + c, add, sub, mul, min, abs, relu, recip (1/x, ~1e-7 relative) and copysign(magnitude,
// sign); the GELU below is built from these.
#pragma once

#include <math.h>
#include <stdint.h>

#include "pvtv2/math.h"

#ifndef PVT_ISA
#error "define PVT_ISA before including kernels.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

// erf without transcendental calls (so it vectorises): Abramowitz & Stegun 7.1.28, |error| <= 3e-7.
// erf(x) = 1 - 1 / (1 + a1 z + ... + a6 z^6)^16 for z = |x|, sign restored.
constexpr float kErfA[6] = {0.0705230784f, 0.0422820123f, 0.0092705272f, 0.0001520143f, 0.0002765672f, 0.0000430638f};

struct ScalarOps {
  static constexpr int kWidth = 1;
  using reg = float;
  static reg load(const float* p) { return *p; }
  static void store(float* p, reg v) { *p = v; }
  static reg zero() { return 0.0f; }
  static reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg min(reg a, reg b) { return fminf(a, b); }
  static reg abs(reg a) { return fabsf(a); }
  static reg set1(float v) { return v; }
  static reg relu(reg a) { return fmaxf(a, 0.0f); }
  static reg recip(reg a) { return 1.0f / a; }
  static reg copysign(reg magnitude, reg sign) { return copysignf(magnitude, sign); }
  static reg max(reg a, reg b) { return a > b ? a : b; }
  static float reduce_max(reg a) { return a; }
  static uint32_t eq_mask(reg a, reg b) { return a == b; }
  static uint32_t nan_mask(reg a) { return isnan(a); }
};

// Exact-form GELU, 0.5·v·(1 + erf(v/√2)), for any policy: erf(u) = sign(u)·(1 - 1/p(|u|)^16) with kErfA's
// polynomial p, written once here; each ISA supplies only its intrinsics (recip: 1/p to ~1e-7 relative, p >= 1).
template <typename V>
static inline typename V::reg gelu(typename V::reg v) {
  using reg = typename V::reg;
  const reg u = V::mul(v, V::set1(0.70710678118654752f));
  const reg z = V::min(V::abs(u), V::set1(4.0f));  // erf(4) = 1 - 1.5e-8: 1 in fp32
  reg p = V::set1(kErfA[5]);
  for (int k = 4; k >= 0; --k) p = V::fmadd(p, z, V::set1(kErfA[k]));
  p = V::fmadd(p, z, V::set1(1.0f));
  p = V::mul(p, p);
  p = V::mul(p, p);
  p = V::mul(p, p);
  p = V::mul(p, p);
  const reg erf = V::copysign(V::sub(V::set1(1.0f), V::recip(p)), u);
  return V::mul(V::mul(V::set1(0.5f), v), V::add(V::set1(1.0f), erf));
}

static inline float gelu_scalar(float v) { return gelu<ScalarOps>(v); }

// The channel loop of one output pixel with NT taps (NT = 9 for interior pixels: a fixed trip count the compiler
// unrolls, with the ReLU decision hoisted out as RELU), vector lanes first, then the C % kWidth tail.
template <typename V, int NT, bool RELU>
static inline void dwconv_gelu_pixel(const float* const* taps, const float* const* kern, int n,
                                     const float* __restrict__ bias, float* __restrict__ out, int64_t C) {
  const int nt = NT > 0 ? NT : n;
  const int64_t vec_end = C - C % V::kWidth;
  int64_t c = 0;
  // Two vectors per step: GELU is a long dependent chain (polynomial, squarings, reciprocal), and two independent
  // chains in flight keep the FMA pipes busy (measured 1.6x over one vector per step).
  for (; c + 2 * V::kWidth <= vec_end; c += 2 * V::kWidth) {
    typename V::reg acc0 = bias ? V::load(bias + c) : V::zero();
    typename V::reg acc1 = bias ? V::load(bias + c + V::kWidth) : V::zero();
    for (int t = 0; t < nt; ++t) {
      typename V::reg v0 = V::load(taps[t] + c), v1 = V::load(taps[t] + c + V::kWidth);
      if (RELU) {
        v0 = V::relu(v0);
        v1 = V::relu(v1);
      }
      acc0 = V::fmadd(v0, V::load(kern[t] + c), acc0);
      acc1 = V::fmadd(v1, V::load(kern[t] + c + V::kWidth), acc1);
    }
    V::store(out + c, gelu<V>(acc0));
    V::store(out + c + V::kWidth, gelu<V>(acc1));
  }
  for (; c < vec_end; c += V::kWidth) {
    typename V::reg acc = bias ? V::load(bias + c) : V::zero();
    for (int t = 0; t < nt; ++t) {
      typename V::reg v = V::load(taps[t] + c);
      if (RELU) v = V::relu(v);
      acc = V::fmadd(v, V::load(kern[t] + c), acc);
    }
    V::store(out + c, gelu<V>(acc));
  }
  for (c = vec_end; c < C; ++c) {
    float acc = bias ? bias[c] : 0.0f;
    for (int t = 0; t < nt; ++t) acc += (RELU ? fmaxf(taps[t][c], 0.0f) : taps[t][c]) * kern[t][c];
    out[c] = gelu_scalar(acc);
  }
}

template <typename V, bool RELU>
static inline void dwconv_gelu_row_t(const float* const* rows, const float* __restrict__ wt,
                                     const float* __restrict__ bias, float* __restrict__ y, int64_t W, int64_t C) {
  for (int64_t w = 0; w < W; ++w) {
    const float* taps[9];
    const float* kern[9];
    int n = 0;
    const TapRange cols = tap_range(0, w, 1, W);  // only its dw range is used
    for (int dh = -1; dh <= 1; ++dh) {
      if (rows[dh + 1] == nullptr) continue;
      for (int dw = cols.dw0; dw <= cols.dw1; ++dw, ++n) {
        taps[n] = rows[dh + 1] + (w + dw) * C;
        kern[n] = wt + ((dh + 1) * 3 + (dw + 1)) * C;
      }
    }
    if (n == 9)
      dwconv_gelu_pixel<V, 9, RELU>(taps, kern, n, bias, y + w * C, C);
    else
      dwconv_gelu_pixel<V, 0, RELU>(taps, kern, n, bias, y + w * C, C);
  }
}

// One output row of the 3×3 depthwise conv: y[w, c] = GELU(bias[c] + Σ_taps ReLU?(row[dh][w+dw, c]) · wt[tap, c]).
// rows[0], rows[1], rows[2]: the input rows above, at and below the output row, each (W, C) contiguous floats;
// rows[0] / rows[2] are nullptr at the top / bottom border (zero padding). Taking rows by pointer lets callers keep
// them anywhere: in the input tensor (dwconv_gelu) or in a ring buffer of fc1 rows (conv_ffn).
// wt: (9, C), tap-major; y: the (W, C) output row. Channels advance V::kWidth at a time with the accumulators in
// registers across all 9 taps; the C % kWidth tail runs scalar.
template <typename V>
static inline void dwconv_gelu_row_impl(const float* const* rows, const float* __restrict__ wt,
                                        const float* __restrict__ bias, float* __restrict__ y, int64_t W, int64_t C,
                                        bool relu_input) {
  if (relu_input)
    dwconv_gelu_row_t<V, true>(rows, wt, bias, y, W, C);
  else
    dwconv_gelu_row_t<V, false>(rows, wt, bias, y, W, C);
}

// One output cell (i, j) of a P×P adaptive average pool of one image's (H·W, C) tokens; y: C floats. All index
// arithmetic in int64_t (math.h): i·H and (hh·W + ww)·C pass 2^31 on large maps.
template <typename V>
static inline void linear_sra_pool_cell_impl(const float* __restrict__ x, float* __restrict__ y, int64_t i, int64_t j,
                                             int64_t H, int64_t W, int64_t C, int64_t P) {
  const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
  const int64_t w0 = adaptive_start(j, W, P), w1 = adaptive_end(j, W, P);
  const float scale = 1.0f / static_cast<float>((h1 - h0) * (w1 - w0));
  const int64_t vec_end = C - C % V::kWidth;
  for (int64_t c = 0; c < vec_end; c += V::kWidth) {
    typename V::reg acc = V::zero();
    for (int64_t hh = h0; hh < h1; ++hh)
      for (int64_t ww = w0; ww < w1; ++ww) acc = V::add(acc, V::load(x + (hh * W + ww) * C + c));
    V::store(y + c, V::mul(acc, V::set1(scale)));
  }
  for (int64_t c = vec_end; c < C; ++c) {
    float acc = 0.0f;
    for (int64_t hh = h0; hh < h1; ++hh)
      for (int64_t ww = w0; ww < w1; ++ww) acc += x[(hh * W + ww) * C + c];
    y[c] = acc * scale;
  }
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2

// The entry points ops.cpp calls for one ISA: dwconv_gelu_row_<SUFFIX> and linear_sra_pool_cell_<SUFFIX>, run with
// policy OPS.
#define PVT_DEFINE_ENTRY_POINTS(SUFFIX, OPS)                                                                        \
  namespace pvtv2 {                                                                                                \
  namespace cpu {                                                                                                  \
  void dwconv_gelu_row_##SUFFIX(const float* const* rows, const float* wt, const float* bias, float* y, int64_t W,   \
                                int64_t C, bool relu) {                                                            \
    PVT_ISA::dwconv_gelu_row_impl<PVT_ISA::OPS>(rows, wt, bias, y, W, C, relu);                                     \
  }                                                                                                                \
  void linear_sra_pool_cell_##SUFFIX(const float* x, float* y, int64_t i, int64_t j, int64_t H, int64_t W,          \
                                     int64_t C, int64_t P) {                                                       \
    PVT_ISA::linear_sra_pool_cell_impl<PVT_ISA::OPS>(x, y, i, j, H, W, C, P);                                      \
  }                                                                                                                \
  void upsample_argmax_row_##SUFFIX(const float* s0, const float* s1, float w0, float w1, const int64_t* ci,         \
                                    const float* cw, int64_t W_in, int64_t W_out, int64_t L, float* tmp, float* v, \
                                    int32_t* labels) {                                                             \
    PVT_ISA::upsample_argmax_row_impl<PVT_ISA::OPS>(s0, s1, w0, w1, ci, cw, W_in, W_out, L, tmp, v, labels);       \
  }                                                                                                                \
  void upsample_accumulate_row_##SUFFIX(const float* s0, const float* s1, float w0, float w1, const int64_t* ci,     \
                                        const float* cw, int64_t W_in, int64_t W_out, int64_t C, float* tmp,       \
                                        float* out) {                                                              \
    PVT_ISA::upsample_accumulate_row_impl<PVT_ISA::OPS>(s0, s1, w0, w1, ci, cw, W_in, W_out, C, tmp, out);         \
  }                                                                                                                \
  }                                                                                                                \
  }
