// A strided k×k convolution of a channels-last token map on CPU, tokens in and tokens out:
// out[p, co] = bias[co] + Σ_{kh, kw, ci} x[(i·s + kh, j·s + kw), ci] · w[co, ci, kh, kw] for output pixel p = (i, j),
// on a map already zero-padded by the caller where the conv pads. Its two uses: SRA's spatial-reduction conv (k = s,
// no padding) and the overlapping patch embeddings (k = 3, s = 2, padding 1; the first one 7, 4, 3).
// Written over a vector policy V (kernels.h) and compiled per ISA like the other CPU kernels.
//
// A GEMM of the output pixels by the packed weight (packed_gemm.h's register tiles), with no im2col copy: each output
// pixel reads k input row segments of k·Ci contiguous values (channels-last: the kw taps of one kernel row are
// adjacent), one map row apart, which the tile reads as k segments of its row. A task is up to kRows output pixels ×
// one block of output channels.
//
// The packed weight (ops.pack_weight in Python): K = k·k·Ci in (kh, kw, ci) order. The sums run over K in that order,
// as oneDNN's direct convolution does here (its results matched bit for bit on b0/b2's stage shapes).
//
// Why not always oneDNN's convolution (what the fast path ran before): over the ≤ 49 output pixels of 224² inputs its
// per-call cost dominated, and this kernel measured up to 1.4x its speed as the spatial reduction; from ~134 MFLOP per
// call (512² and up) oneDNN's brgemm kernels are faster there when hot (0.83-0.98x), so "auto" takes this one only for
// small calls (ops/sr_conv.py, CPU_MAX_FLOPS; README, "CPU spatial-reduction conv"); the patch embeddings' rule is
// ops/token_conv.py's.
#pragma once

#include <stdint.h>

#include "packed_gemm.h"

#ifndef PVT_ISA
#error "define PVT_ISA before including token_conv.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

template <typename V>
struct TokenConv {
  using Gemm = PackedGemm<V>;

  // Output pixels [p0, p1) × channel blocks [cb0, cb1) of one image, on the calling thread. x: the image's (H·W, Ci)
  // tokens of row width `width` (padded, where the conv pads); out: its (Ho·Wo, Co) tokens. A pixel's window is k
  // segments (kernel rows) of k·Ci contiguous values, one map row (width·Ci values) apart.
  static void range(const float* x, const float* packed, const float* bias, float* out, int64_t width, int64_t Ci,
                    int64_t Co, int64_t k, int64_t s, int64_t Wo, int64_t p0, int64_t p1, int64_t cb0, int64_t cb1) {
    const auto window = [=](int64_t r) {
      const int64_t p = p0 + r, i = p / Wo, j = p % Wo;
      return x + (i * s * width + j * s) * Ci;
    };
    Gemm::sweep(window, p1 - p0, k, k * Ci, width * Ci, packed, Co, bias, nullptr, 0, out + p0 * Co, Co, cb0, cb1);
  }
};

template <typename V>
static inline void token_conv_range_impl(const float* x, const float* packed, const float* bias, float* out,
                                         int64_t width, int64_t Ci, int64_t Co, int64_t k, int64_t s, int64_t Wo,
                                         int64_t p0, int64_t p1, int64_t cb0, int64_t cb1) {
  TokenConv<V>::range(x, packed, bias, out, width, Ci, Co, k, s, Wo, p0, p1, cb0, cb1);
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2
