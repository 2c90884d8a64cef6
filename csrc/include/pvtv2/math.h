// Math shared by the CPU (g++) and CUDA (nvcc) kernels, so the CPU tests exercise the same definitions.
// Index arithmetic is int64_t throughout: products of sizes pass 2^31 on inputs that fit in memory (the FFN's
// hidden state of b0's stage 1 at 4096² in batch 8 is 8·1024²·256 = 2^31 elements; pool bins form i·H), and int32
// wrap-around would read out of bounds instead of failing.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define PVT_HD __host__ __device__ __forceinline__
#else
#define PVT_HD inline
#endif

namespace pvtv2 {

// torch.nn.AdaptiveAvgPool2d bins: output i of `out` averages inputs [start, end) of `in`; bins may overlap (in <
// out included). Exact in int64_t while (i + 1)·in + out < 2^63, which the ops' checks guarantee (checks.h,
// linear_sra_pool: pool_size·max(H, W) must not overflow).
PVT_HD int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
PVT_HD int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

// Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)) (transformers' "gelu", timm's nn.GELU()).
PVT_HD float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Depthwise 3×3 with zero padding 1: the taps of output (h, w) that fall inside an H×W map.
struct TapRange {
  int dh0, dh1, dw0, dw1;  // inclusive ranges of dh, dw in {-1, 0, 1}
};
PVT_HD TapRange tap_range(int64_t h, int64_t w, int64_t H, int64_t W) {
  return TapRange{h > 0 ? -1 : 0, h < H - 1 ? 1 : 0, w > 0 ? -1 : 0, w < W - 1 ? 1 : 0};
}

}  // namespace pvtv2
