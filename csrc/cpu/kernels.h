// CPU kernels on the (B, N, C) token layout, written once over a vector policy `V` and compiled per ISA:
// kernels_default.cpp (ScalarOps, 1 lane), kernels_avx2.cpp (Avx2Ops, 8 lanes of AVX2 + FMA intrinsics) and
// kernels_avx512.cpp (Avx512Ops, 16 lanes of AVX-512F).
// Each translation unit defines PVT_ISA first, so every copy lives in its own namespace (no ODR clash between
// ISAs); ops.cpp picks one at run time.
//
// A policy V provides: kWidth, type `reg`, load(const float*), store(float*, reg), set1(float), zero(),
// fmadd(a, b, c) = a·b + c, add, sub, mul, min, abs, relu, recip (1/x, ~1e-7 relative) and select_negative(s, a,
// b) (per lane: a where s < 0, else b); the GELU below is built from these. Horizontal reductions: reduce_max,
// reduce_add (LayerNorm's moments); exp2 (attention.h's softmax, see kExp2P). Each ISA also specialises Bf16<V>
// (below): bf16 loads and stores, so the kernels read and write bf16 tensors directly and compute in fp32.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

#include "cpu_kernels.h"
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
  static reg select_negative(reg s, reg a, reg b) { return s < 0.0f ? a : b; }
  static reg max(reg a, reg b) { return a > b ? a : b; }
  static float reduce_max(reg a) { return a; }
  static float reduce_add(reg a) { return a; }
  static reg exp2(reg x) { return exp2f(x); }
  static uint32_t eq_mask(reg a, reg b) { return a == b; }
  static uint32_t nan_mask(reg a) { return isnan(a); }
};

// Exact-form GELU, v·Φ(v) with Φ(v) = ½(1 + erf(v/√2)), for any policy: erf(u) = sign(u)·(1 - 1/p(|u|)^16) with
// kErfA's polynomial p, written once here; each ISA supplies only its intrinsics (recip: 1/x to ~1e-7 relative,
// x >= 2).
// Φ is then 1 - h for u >= 0 and h for u < 0, h = 1/(2·p^16): a subtraction and a select, where ½·v·(1 + erf) took
// a sign copy and two more operations, and rounded 1 - erf's cancellation for negative v (1-thread micro, AVX-512:
// border-heavy 7×7 maps 1.4-1.5× faster, interior rows level).
template <typename V>
static inline typename V::reg gelu(typename V::reg v) {
  using reg = typename V::reg;
  const reg u = V::mul(v, V::set1(0.70710678118654752f));
  // The clamp keeps p^16 finite (it overflows past |u| ~ 13.5); at 9, h = 3e-28, so GELU(v) is v·h ~ 0 below
  // v = -12.7 and v above 12.7. (Clamping at 4, where erf is 1 in fp32, would leave h at 1e-8 for every
  // lower v: -1e-5 at v = -1000.)
  const reg z = V::min(V::abs(u), V::set1(9.0f));
  reg p = V::set1(kErfA[5]);
  for (int k = 4; k >= 0; --k) p = V::fmadd(p, z, V::set1(kErfA[k]));
  p = V::fmadd(p, z, V::set1(1.0f));
  p = V::mul(p, p);
  p = V::mul(p, p);
  p = V::mul(p, p);
  p = V::mul(p, p);
  const reg h = V::recip(V::add(p, p));
  return V::mul(v, V::select_negative(u, h, V::sub(V::set1(1.0f), h)));
}

static inline float gelu_scalar(float v) { return gelu<ScalarOps>(v); }

// ---- bf16 storage: the upper 16 bits of an fp32. Widening is exact; narrowing rounds to nearest, ties to even, and
// keeps NaN a (quiet) NaN: what c10::BFloat16 does, so results match PyTorch's rounding bit for bit.
static inline float bf16_to_float(bf16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.bits) << 16;
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
}
static inline bf16 float_to_bf16(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  if (v != v) return bf16{0x7fc0};
  return bf16{static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}

// Vector bf16 loads / stores of policy V (8 or 16 lanes): specialised by each ISA's translation unit, with the same
// rounding as float_to_bf16. Only integer and fp32 instructions: no AVX512-BF16 needed, so the same code is correct
// on every CPU of its ISA.
template <typename V>
struct Bf16;
template <>
struct Bf16<ScalarOps> {
  static float load(const bf16* p) { return bf16_to_float(*p); }
  static void store(bf16* p, float v) { *p = float_to_bf16(v); }
};

// Element access for the kernels templated on their storage type T (float or bf16).
template <typename V>
static inline typename V::reg load_elem(const float* p) {
  return V::load(p);
}
template <typename V>
static inline typename V::reg load_elem(const bf16* p) {
  return Bf16<V>::load(p);
}
template <typename V>
static inline void store_elem(float* p, typename V::reg v) {
  V::store(p, v);
}
template <typename V>
static inline void store_elem(bf16* p, typename V::reg v) {
  Bf16<V>::store(p, v);
}
static inline float scalar_elem(float v) { return v; }
static inline float scalar_elem(bf16 v) { return bf16_to_float(v); }
static inline void store_scalar(float* p, float v) { *p = v; }
static inline void store_scalar(bf16* p, float v) { *p = float_to_bf16(v); }

// The channel loop of one output pixel with NT taps (NT = 9 for interior pixels: a fixed trip count the compiler
// unrolls, with the ReLU decision hoisted out as RELU), vector lanes first, then the C % kWidth tail.
template <typename V, int NT, bool RELU, typename TIn, typename TOut>
static inline void dwconv_gelu_pixel(const TIn* const* taps, const float* const* kern, int n,
                                     const float* __restrict__ bias, TOut* __restrict__ out, int64_t C) {
  const int nt = NT > 0 ? NT : n;
  const int64_t vec_end = C - C % V::kWidth;
  int64_t c = 0;
  // Two vectors per step: GELU is a long dependent chain (polynomial, squarings, reciprocal), and two independent
  // chains in flight keep the FMA pipes busy (measured 1.6x over one vector per step).
  for (; c + 2 * V::kWidth <= vec_end; c += 2 * V::kWidth) {
    typename V::reg acc0 = bias ? V::load(bias + c) : V::zero();
    typename V::reg acc1 = bias ? V::load(bias + c + V::kWidth) : V::zero();
    for (int t = 0; t < nt; ++t) {
      typename V::reg v0 = load_elem<V>(taps[t] + c), v1 = load_elem<V>(taps[t] + c + V::kWidth);
      if (RELU) {
        v0 = V::relu(v0);
        v1 = V::relu(v1);
      }
      acc0 = V::fmadd(v0, V::load(kern[t] + c), acc0);
      acc1 = V::fmadd(v1, V::load(kern[t] + c + V::kWidth), acc1);
    }
    store_elem<V>(out + c, gelu<V>(acc0));
    store_elem<V>(out + c + V::kWidth, gelu<V>(acc1));
  }
  for (; c < vec_end; c += V::kWidth) {
    typename V::reg acc = bias ? V::load(bias + c) : V::zero();
    for (int t = 0; t < nt; ++t) {
      typename V::reg v = load_elem<V>(taps[t] + c);
      if (RELU) v = V::relu(v);
      acc = V::fmadd(v, V::load(kern[t] + c), acc);
    }
    store_elem<V>(out + c, gelu<V>(acc));
  }
  for (c = vec_end; c < C; ++c) {
    float acc = bias ? bias[c] : 0.0f;
    for (int t = 0; t < nt; ++t) {
      const float v = scalar_elem(taps[t][c]);
      acc += (RELU ? fmaxf(v, 0.0f) : v) * kern[t][c];
    }
    store_scalar(out + c, gelu_scalar(acc));
  }
}

// The interior pixels (1 <= w <= W - 2) of a row with all three input rows, channels [0, vec_end): one channel
// vector at a time across the row, its 9 weights in registers and a 3 × 3 window of input vectors sliding along w,
// so each output loads 3 input vectors (the new column) instead of 9 inputs and 9 weights. Same taps in the same
// order as dwconv_gelu_pixel (bit-identical sums); consecutive pixels are independent, so their GELU chains overlap.
// Measured against the pixel-by-pixel loop on one core (AVX-512, interleaved A/B): 1.0-1.2x on b0/b2 FFN rows
// (fp32 and bf16 out); what remains is mostly the GELU (~22 of ~36-45 cycles per 16 outputs).
// The window slides over kDwChunkPixels pixels at a time, all channel vectors of one chunk before the next: a row's
// pixels are C elements apart (4 KB at C = 1024), so a sweep over a whole row touched a new page per pixel and row,
// ~200 streams that the hardware's prefetchers do not follow; per chunk each pixel's channels are read front to
// back, 30 streams they do. Measured on the whole-map FFN at 512²'s 64² stage (4096 tokens × 1024, its hidden state
// in memory): 1.20x the FFN with 8 (4: 1.21x, 16: 1.14x), level on maps in cache (2 threads, AVX-512,
// interleaved). Same sums, in the same order.
constexpr int64_t kDwChunkPixels = 8;

template <typename V, bool RELU, typename TIn, typename TOut>
static inline void dwconv_gelu_interior(const TIn* const* rows, const float* __restrict__ wt,
                                        const float* __restrict__ bias, TOut* __restrict__ y, int64_t W, int64_t C,
                                        int64_t vec_end) {
  using reg = typename V::reg;
  for (int64_t w0 = 1; w0 + 1 < W; w0 += kDwChunkPixels) {
    const int64_t w1 = std::min(w0 + kDwChunkPixels, W - 1);
    for (int64_t c = 0; c < vec_end; c += V::kWidth) {
      reg k[9];
      for (int t = 0; t < 9; ++t) k[t] = V::load(wt + t * C + c);
      const reg b = bias ? V::load(bias + c) : V::zero();
      reg win[3][3];
      for (int r = 0; r < 3; ++r)
        for (int j = 0; j < 2; ++j) {
          win[r][j] = load_elem<V>(rows[r] + (w0 - 1 + j) * C + c);
          if (RELU) win[r][j] = V::relu(win[r][j]);
        }
      for (int64_t w = w0; w < w1; ++w) {
        for (int r = 0; r < 3; ++r) {
          win[r][2] = load_elem<V>(rows[r] + (w + 1) * C + c);
          if (RELU) win[r][2] = V::relu(win[r][2]);
        }
        reg acc = b;
        for (int r = 0; r < 3; ++r)
          for (int j = 0; j < 3; ++j) acc = V::fmadd(win[r][j], k[r * 3 + j], acc);
        store_elem<V>(y + w * C + c, gelu<V>(acc));
        for (int r = 0; r < 3; ++r) {
          win[r][0] = win[r][1];
          win[r][1] = win[r][2];
        }
      }
    }
  }
}

template <typename V, bool RELU, typename TIn, typename TOut>
static inline void dwconv_gelu_row_t(const TIn* const* rows, const float* __restrict__ wt,
                                     const float* __restrict__ bias, TOut* __restrict__ y, int64_t W, int64_t C) {
  // Interior pixels' vector channels by the sliding window; what remains (border pixels, the C % kWidth tail of
  // interior ones) pixel by pixel below.
  const bool interior = rows[0] && rows[2] && W >= 3 && C >= V::kWidth;
  const int64_t done = interior ? C - C % V::kWidth : 0;
  if (interior) dwconv_gelu_interior<V, RELU>(rows, wt, bias, y, W, C, done);
  for (int64_t w = 0; w < W; ++w) {
    const int64_t c0 = (w == 0 || w == W - 1) ? 0 : done;
    if (c0 == C) continue;
    const TIn* taps[9];
    const float* kern[9];
    int n = 0;
    const TapRange cols = tap_range(0, w, 1, W);  // only its dw range is used
    for (int dh = -1; dh <= 1; ++dh) {
      if (rows[dh + 1] == nullptr) continue;
      for (int dw = cols.dw0; dw <= cols.dw1; ++dw, ++n) {
        taps[n] = rows[dh + 1] + (w + dw) * C + c0;
        kern[n] = wt + ((dh + 1) * 3 + (dw + 1)) * C + c0;
      }
    }
    const float* b = bias ? bias + c0 : nullptr;
    if (n == 9)
      dwconv_gelu_pixel<V, 9, RELU>(taps, kern, n, b, y + w * C + c0, C - c0);
    else
      dwconv_gelu_pixel<V, 0, RELU>(taps, kern, n, b, y + w * C + c0, C - c0);
  }
}

// One output row of the 3×3 depthwise conv: y[w, c] = GELU(bias[c] + Σ_taps ReLU?(row[dh][w+dw, c]) · wt[tap, c]).
// rows[0], rows[1], rows[2]: the input rows above, at and below the output row, each (W, C) contiguous elements;
// rows[0] / rows[2] are nullptr at the top / bottom border (zero padding). Taking rows by pointer lets callers keep
// them anywhere: in the input tensor (dwconv_gelu) or in a ring buffer of fc1 rows (conv_ffn).
// wt: (9, C), tap-major; y: the (W, C) output row. Channels advance V::kWidth at a time with the accumulators in
// registers across all 9 taps; the C % kWidth tail runs scalar. Rows and output are fp32 or bf16 (`in`, `out`):
// conv_ffn's bf16 path reads its fp32 fc1 ring and writes the bf16 input of its fc2 GEMM.
template <typename V, typename TIn, typename TOut>
static inline void dwconv_gelu_row_typed(const void* const* rows, const float* __restrict__ wt,
                                         const float* __restrict__ bias, void* y, int64_t W, int64_t C,
                                         bool relu_input) {
  const TIn* r[3] = {static_cast<const TIn*>(rows[0]), static_cast<const TIn*>(rows[1]),
                     static_cast<const TIn*>(rows[2])};
  if (relu_input)
    dwconv_gelu_row_t<V, true>(r, wt, bias, static_cast<TOut*>(y), W, C);
  else
    dwconv_gelu_row_t<V, false>(r, wt, bias, static_cast<TOut*>(y), W, C);
}

template <typename V>
static inline void dwconv_gelu_row_impl(const void* const* rows, Elem in, const float* __restrict__ wt,
                                        const float* __restrict__ bias, void* y, Elem out, int64_t W, int64_t C,
                                        bool relu_input) {
  if (in == Elem::kF32 && out == Elem::kF32)
    dwconv_gelu_row_typed<V, float, float>(rows, wt, bias, y, W, C, relu_input);
  else if (in == Elem::kF32)
    dwconv_gelu_row_typed<V, float, bf16>(rows, wt, bias, y, W, C, relu_input);
  else if (out == Elem::kF32)
    dwconv_gelu_row_typed<V, bf16, float>(rows, wt, bias, y, W, C, relu_input);
  else
    dwconv_gelu_row_typed<V, bf16, bf16>(rows, wt, bias, y, W, C, relu_input);
}

// One output cell (i, j) of a P×P adaptive average pool of one image's (H·W, C) tokens; y: C floats. All index
// arithmetic in int64_t (math.h): i·H and (hh·W + ww)·C pass 2^31 on large maps.
template <typename V, typename T>
static inline void linear_sra_pool_cell_typed(const T* __restrict__ x, T* __restrict__ y, int64_t i, int64_t j,
                                              int64_t H, int64_t W, int64_t C, int64_t P) {
  const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
  const int64_t w0 = adaptive_start(j, W, P), w1 = adaptive_end(j, W, P);
  const float scale = 1.0f / static_cast<float>((h1 - h0) * (w1 - w0));
  const int64_t vec_end = C - C % V::kWidth;
  for (int64_t c = 0; c < vec_end; c += V::kWidth) {
    typename V::reg acc = V::zero();
    for (int64_t hh = h0; hh < h1; ++hh)
      for (int64_t ww = w0; ww < w1; ++ww) acc = V::add(acc, load_elem<V>(x + (hh * W + ww) * C + c));
    store_elem<V>(y + c, V::mul(acc, V::set1(scale)));
  }
  for (int64_t c = vec_end; c < C; ++c) {
    float acc = 0.0f;
    for (int64_t hh = h0; hh < h1; ++hh)
      for (int64_t ww = w0; ww < w1; ++ww) acc += scalar_elem(x[(hh * W + ww) * C + c]);
    store_scalar(y + c, acc * scale);
  }
}

// x and y both fp32 or both bf16 (`elem`); bf16 sums in fp32 and rounds each mean once.
template <typename V>
static inline void linear_sra_pool_cell_impl(const void* x, void* y, Elem elem, int64_t i, int64_t j, int64_t H,
                                             int64_t W, int64_t C, int64_t P) {
  if (elem == Elem::kBF16)
    linear_sra_pool_cell_typed<V>(static_cast<const bf16*>(x), static_cast<bf16*>(y), i, j, H, W, C, P);
  else
    linear_sra_pool_cell_typed<V>(static_cast<const float*>(x), static_cast<float*>(y), i, j, H, W, C, P);
}

// LayerNorm of `rows` contiguous rows of C elements (fp32 or bf16, x and y alike): y = (x - mean)·rstd·w + b with
// the moments in fp32, two passes over the row (it is in L1: C ≤ a few thousand), the variance from the centred
// values (no E[x²] - mean² cancellation). w and b are C floats (ones / zeros when the module has none).
// NR rows at once, each with exactly the one-row arithmetic (so the bits do not depend on the grouping): at PVTv2's
// narrow stages (C = 32 or 64: 2–4 vectors a row) one row is a chain of dependent reductions and a square root, so
// NR independent chains keep the vector units busy where one row alone left them waiting.
template <typename V, int NR, typename T>
static inline void layer_norm_group(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ w,
                                    const float* __restrict__ b, int64_t C, float eps) {
  using reg = typename V::reg;
  const int64_t vec_end = C - C % V::kWidth;
  const float inv_c = 1.0f / static_cast<float>(C);
  reg acc[NR];
  for (int i = 0; i < NR; ++i) acc[i] = V::zero();
  for (int64_t c = 0; c < vec_end; c += V::kWidth)
    for (int i = 0; i < NR; ++i) acc[i] = V::add(acc[i], load_elem<V>(x + i * C + c));
  float mean[NR], rstd[NR];
  reg vmean[NR], sq[NR];
  for (int i = 0; i < NR; ++i) {
    float sum = V::reduce_add(acc[i]);
    for (int64_t c = vec_end; c < C; ++c) sum += scalar_elem(x[i * C + c]);
    mean[i] = sum * inv_c;
    vmean[i] = V::set1(mean[i]);
    sq[i] = V::zero();
  }
  for (int64_t c = 0; c < vec_end; c += V::kWidth)
    for (int i = 0; i < NR; ++i) {
      const reg d = V::sub(load_elem<V>(x + i * C + c), vmean[i]);
      sq[i] = V::fmadd(d, d, sq[i]);
    }
  reg vrstd[NR];
  for (int i = 0; i < NR; ++i) {
    float ss = V::reduce_add(sq[i]);
    for (int64_t c = vec_end; c < C; ++c) {
      const float d = scalar_elem(x[i * C + c]) - mean[i];
      ss += d * d;
    }
    rstd[i] = 1.0f / sqrtf(ss * inv_c + eps);
    vrstd[i] = V::set1(rstd[i]);
  }
  for (int64_t c = 0; c < vec_end; c += V::kWidth) {
    const reg wc = V::load(w + c), bc = V::load(b + c);
    for (int i = 0; i < NR; ++i) {
      const reg d = V::mul(V::sub(load_elem<V>(x + i * C + c), vmean[i]), vrstd[i]);
      store_elem<V>(y + i * C + c, V::fmadd(d, wc, bc));
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int64_t c = vec_end; c < C; ++c)
      store_scalar(y + i * C + c, (scalar_elem(x[i * C + c]) - mean[i]) * rstd[i] * w[c] + b[c]);
}

// Rows of exactly NV vectors, NR at a time, held in registers between the passes (one read of x instead of three);
// the same arithmetic, in the same order, as layer_norm_group.
template <typename V, int NV, int NR, typename T>
static inline void layer_norm_fixed(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ w,
                                    const float* __restrict__ b, float eps) {
  using reg = typename V::reg;
  constexpr int64_t C = int64_t{NV} * V::kWidth;
  const float inv_c = 1.0f / static_cast<float>(C);
  reg xv[NR][NV], acc[NR], sq[NR], vmean[NR], vrstd[NR];
  for (int i = 0; i < NR; ++i) {
    acc[i] = V::zero();
    for (int v = 0; v < NV; ++v) {
      xv[i][v] = load_elem<V>(x + i * C + v * V::kWidth);
      acc[i] = V::add(acc[i], xv[i][v]);
    }
  }
  for (int i = 0; i < NR; ++i) {
    vmean[i] = V::set1(V::reduce_add(acc[i]) * inv_c);
    sq[i] = V::zero();
    for (int v = 0; v < NV; ++v) {
      xv[i][v] = V::sub(xv[i][v], vmean[i]);
      sq[i] = V::fmadd(xv[i][v], xv[i][v], sq[i]);
    }
  }
  for (int i = 0; i < NR; ++i) vrstd[i] = V::set1(1.0f / sqrtf(V::reduce_add(sq[i]) * inv_c + eps));
  for (int v = 0; v < NV; ++v) {
    const reg wc = V::load(w + v * V::kWidth), bc = V::load(b + v * V::kWidth);
    for (int i = 0; i < NR; ++i)
      store_elem<V>(y + i * C + v * V::kWidth, V::fmadd(V::mul(xv[i][v], vrstd[i]), wc, bc));
  }
}

template <typename V, int NV, typename T>
static inline void layer_norm_rows_fixed(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ w,
                                         const float* __restrict__ b, int64_t rows, float eps) {
  constexpr int64_t C = int64_t{NV} * V::kWidth;
  constexpr int kGroup = NV <= 2 ? 4 : NV <= 4 ? 2 : 1;  // NR·NV vectors of x stay within the register file
  int64_t r = 0;
  for (; r + kGroup <= rows; r += kGroup) layer_norm_fixed<V, NV, kGroup>(x + r * C, y + r * C, w, b, eps);
  for (; r < rows; ++r) layer_norm_fixed<V, NV, 1>(x + r * C, y + r * C, w, b, eps);
}

template <typename V, typename T>
static inline void layer_norm_rows_typed(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ w,
                                         const float* __restrict__ b, int64_t rows, int64_t C, float eps) {
  if (V::kWidth > 1 && C == 2 * V::kWidth) return layer_norm_rows_fixed<V, 2>(x, y, w, b, rows, eps);
  if (V::kWidth > 1 && C == 4 * V::kWidth) return layer_norm_rows_fixed<V, 4>(x, y, w, b, rows, eps);
  if (V::kWidth > 1 && C == 8 * V::kWidth) return layer_norm_rows_fixed<V, 8>(x, y, w, b, rows, eps);
  constexpr int kGroup = 4;
  int64_t r = 0;
  for (; r + kGroup <= rows; r += kGroup) layer_norm_group<V, kGroup>(x + r * C, y + r * C, w, b, C, eps);
  for (; r < rows; ++r) layer_norm_group<V, 1>(x + r * C, y + r * C, w, b, C, eps);
}

template <typename V>
static inline void layer_norm_rows_impl(const void* x, void* y, Elem elem, const float* w, const float* b,
                                        int64_t rows, int64_t C, float eps) {
  if (elem == Elem::kBF16)
    layer_norm_rows_typed<V>(static_cast<const bf16*>(x), static_cast<bf16*>(y), w, b, rows, C, eps);
  else
    layer_norm_rows_typed<V>(static_cast<const float*>(x), static_cast<float*>(y), w, b, rows, C, eps);
}

// y[k] = bf16(x[k]) for k < n (round to nearest even): conv_ffn's bf16 path rounds its fp32 fc2 band into the output.
template <typename V>
static inline void round_to_bf16_impl(const float* __restrict__ x, bf16* __restrict__ y, int64_t n) {
  const int64_t vec_end = n - n % V::kWidth;
  for (int64_t k = 0; k < vec_end; k += V::kWidth) Bf16<V>::store(y + k, V::load(x + k));
  for (int64_t k = vec_end; k < n; ++k) y[k] = float_to_bf16(x[k]);
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2

// The entry points ops.cpp calls for one ISA: dwconv_gelu_row_<SUFFIX>, linear_sra_pool_cell_<SUFFIX>,
// layer_norm_rows_<SUFFIX>, round_to_bf16_<SUFFIX>, the attention's (attention.h), the spatial-reduction conv's
// (token_conv.h) and the resampling rows (resample.h), run with policy OPS.
#define PVT_DEFINE_ENTRY_POINTS(SUFFIX, OPS)                                                                        \
  namespace pvtv2 {                                                                                                \
  namespace cpu {                                                                                                  \
  void dwconv_gelu_row_##SUFFIX(const void* const* rows, Elem in, const float* wt, const float* bias, void* y,      \
                                Elem out, int64_t W, int64_t C, bool relu) {                                       \
    PVT_ISA::dwconv_gelu_row_impl<PVT_ISA::OPS>(rows, in, wt, bias, y, out, W, C, relu);                            \
  }                                                                                                                \
  void linear_sra_pool_cell_##SUFFIX(const void* x, void* y, Elem elem, int64_t i, int64_t j, int64_t H, int64_t W, \
                                     int64_t C, int64_t P) {                                                       \
    PVT_ISA::linear_sra_pool_cell_impl<PVT_ISA::OPS>(x, y, elem, i, j, H, W, C, P);                                \
  }                                                                                                                \
  void layer_norm_rows_##SUFFIX(const void* x, void* y, Elem elem, const float* w, const float* b, int64_t rows,     \
                                int64_t C, float eps) {                                                            \
    PVT_ISA::layer_norm_rows_impl<PVT_ISA::OPS>(x, y, elem, w, b, rows, C, eps);                                    \
  }                                                                                                                \
  void round_to_bf16_##SUFFIX(const float* x, bf16* y, int64_t n) {                                                \
    PVT_ISA::round_to_bf16_impl<PVT_ISA::OPS>(x, y, n);                                                             \
  }                                                                                                                \
  AttentionGeometry attention_geometry_##SUFFIX(int64_t M, int64_t D) {                                            \
    return PVT_ISA::attention_geometry_impl<PVT_ISA::OPS>(M, D);                                                    \
  }                                                                                                                \
  void attention_pack_##SUFFIX(const void* k, int64_t ks, const void* v, int64_t vs, Elem elem, int64_t M,          \
                               int64_t D, float* packed) {                                                         \
    PVT_ISA::attention_pack_impl<PVT_ISA::OPS>(k, ks, v, vs, elem, M, D, packed);                                   \
  }                                                                                                                \
  void attention_rows_##SUFFIX(const void* q, int64_t qs, Elem elem, int64_t n, const float* packed, int64_t M,      \
                               int64_t D, float qscale, void* out, int64_t os, float* scratch) {                   \
    PVT_ISA::attention_rows_impl<PVT_ISA::OPS>(q, qs, elem, n, packed, M, D, qscale, out, os, scratch);            \
  }                                                                                                                \
  void upsample_argmax_row_##SUFFIX(const float* s0, const float* s1, float w0, float w1, const int64_t* ci,         \
                                    const float* cw, int64_t W_in, int64_t W_out, int64_t L, float* tmp, float* v, \
                                    int32_t* labels) {                                                             \
    PVT_ISA::upsample_argmax_row_impl<PVT_ISA::OPS>(s0, s1, w0, w1, ci, cw, W_in, W_out, L, tmp, v, labels);       \
  }                                                                                                                \
  void token_conv_range_##SUFFIX(const float* x, const float* packed, const float* bias, float* out, int64_t width,   \
                                 int64_t Ci, int64_t Co, int64_t k, int64_t s, int64_t Wo, int64_t p0, int64_t p1, \
                                 int64_t cb0, int64_t cb1) {                                                       \
    PVT_ISA::token_conv_range_impl<PVT_ISA::OPS>(x, packed, bias, out, width, Ci, Co, k, s, Wo, p0, p1, cb0, cb1);  \
  }                                                                                                                \
  void packed_gemm_rows_##SUFFIX(const float* a, int64_t lda, int64_t rows, int64_t K, const float* packed,          \
                                 int64_t N, const float* bias, const float* res, int64_t ldr, float* out,           \
                                 int64_t ldo, int64_t cb0, int64_t cb1) {                                          \
    PVT_ISA::packed_gemm_rows_impl<PVT_ISA::OPS>(a, lda, rows, K, packed, N, bias, res, ldr, out, ldo, cb0, cb1);   \
  }                                                                                                                \
  int64_t packed_gemm_tile_rows_##SUFFIX() { return PVT_ISA::packed_gemm_tile_rows_impl<PVT_ISA::OPS>(); }         \
  void upsample_accumulate_row_##SUFFIX(const float* s0, const float* s1, float w0, float w1, const int64_t* ci,     \
                                        const float* cw, int64_t W_in, int64_t W_out, int64_t C, float* tmp,       \
                                        float* out) {                                                              \
    PVT_ISA::upsample_accumulate_row_impl<PVT_ISA::OPS>(s0, s1, w0, w1, ci, cw, W_in, W_out, C, tmp, out);         \
  }                                                                                                                \
  }                                                                                                                \
  }
