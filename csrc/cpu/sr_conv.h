// The spatial-reduction convolution on CPU: a stride-s s×s conv (no padding) of a channels-last token map, i.e.
// out[p, co] = bias[co] + Σ_{kh, kw, ci} x[(i·s + kh, j·s + kw), ci] · w[co, ci, kh, kw] for output pixel p = (i, j).
// Written over a vector policy V (kernels.h) and compiled per ISA like the other CPU kernels.
//
// The windows do not overlap, so each output pixel reads s input row segments of s·Ci contiguous values (channels-
// last: the kw taps of one kernel row are adjacent). A task is up to kRows output pixels × one block of kBlock
// output channels: kRows × kBlock / W accumulators in registers; each step over the window's K = s·s·Ci values loads
// the block's weights once (the packed weight, below) and broadcasts one input value per pixel. No im2col copy.
//
// The packed weight (sr_conv_pack in Python): (ceil(Co / kBlock), K, kBlock) fp32, K in (kh, kw, ci) order, zero
// past Co, so each task streams one contiguous block. The sums run over K in that order, as oneDNN's direct
// convolution does here (its results matched bit for bit on b0/b2's stage shapes).
//
// Why not always oneDNN's convolution (what the fast path ran before): over the ≤ 49 output pixels of 224² inputs its
// per-call cost dominated, and this kernel measured up to 1.4x its speed; from ~134 MFLOP per call (512² and up)
// oneDNN's brgemm kernels are faster (0.83-0.98x), so "auto" takes this one only for small calls (ops/sr_conv.py,
// CPU_MAX_FLOPS; README, "CPU spatial-reduction conv").
#pragma once

#include <stdint.h>

#ifndef PVT_ISA
#error "define PVT_ISA before including sr_conv.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

template <typename V>
struct SrConv {
  static constexpr int W = V::kWidth;
  static constexpr int kBlock = 32;  // output channels per packed block (fixed: the packing is ISA-independent)
  static constexpr int NV = kBlock / W;
  // Pixels per task: kRows·NV accumulators + NV weight vectors + 1 broadcast within the register file
  // (AVX-512: 12 × 2 + 3 of 32; AVX2: 3 × 4 + 5 of 16).
  static constexpr int kRows = W >= 16 ? 12 : W >= 8 ? 3 : 1;

  // Output pixels [p0, p0 + np) (np <= kRows) of one image, channels [cb·kBlock, cb·kBlock + kBlock) ∩ [0, Co).
  // x: the image's (H·W, Ci) tokens of row width `width`; out: its (Ho·Wo, Co) tokens.
  static void tile(const float* __restrict__ x, const float* __restrict__ packed, const float* __restrict__ bias,
                   float* __restrict__ out, int64_t width, int64_t Ci, int64_t Co, int64_t s, int64_t Wo, int64_t p0,
                   int64_t np, int64_t cb) {
    using reg = typename V::reg;
    const int64_t sc = s * Ci, K = s * sc;
    const float* base[kRows];
    for (int r = 0; r < kRows; ++r) {
      const int64_t p = p0 + (r < np ? r : 0), i = p / Wo, j = p % Wo;  // idle rows re-read pixel p0
      base[r] = x + (i * s * width + j * s) * Ci;
    }
    reg acc[kRows][NV];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    const float* wb = packed + cb * K * kBlock;
    for (int64_t kh = 0; kh < s; ++kh) {
      const float* wk = wb + kh * sc * kBlock;
      const int64_t row = kh * width * Ci;
      for (int64_t t = 0; t < sc; ++t) {
        reg w[NV];
        for (int v = 0; v < NV; ++v) w[v] = V::load(wk + t * kBlock + v * W);
        for (int r = 0; r < kRows; ++r) {
          const reg xb = V::set1(base[r][row + t]);
          for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(xb, w[v], acc[r][v]);
        }
      }
    }
    const int64_t c0 = cb * kBlock, nc = Co - c0 < kBlock ? Co - c0 : kBlock;
    alignas(64) float tmp[kBlock];
    for (int r = 0; r < np; ++r) {
      for (int v = 0; v < NV; ++v) V::store(tmp + v * W, acc[r][v]);
      float* o = out + (p0 + r) * Co + c0;
      for (int64_t c = 0; c < nc; ++c) o[c] = tmp[c] + (bias ? bias[c0 + c] : 0.0f);
    }
  }
};

template <typename V>
static inline void sr_conv_tile_impl(const float* x, const float* packed, const float* bias, float* out, int64_t width,
                                     int64_t Ci, int64_t Co, int64_t s, int64_t Wo, int64_t p0, int64_t np,
                                     int64_t cb) {
  SrConv<V>::tile(x, packed, bias, out, width, Ci, Co, s, Wo, p0, np, cb);
}

template <typename V>
static inline int64_t sr_conv_rows_impl() {
  return SrConv<V>::kRows;
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2
