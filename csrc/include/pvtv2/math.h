// Math shared by the CPU (g++) and CUDA (nvcc) kernels, so the CPU tests exercise the same definitions.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define PVT_HD __host__ __device__ __forceinline__
#else
#define PVT_HD inline
#endif

namespace pvtv2 {

// torch.nn.AdaptiveAvgPool2d bins: output i of `out` averages inputs [start, end) of `in`; bins may overlap.
PVT_HD int adaptive_start(int i, int in, int out) { return (i * in) / out; }
PVT_HD int adaptive_end(int i, int in, int out) { return ((i + 1) * in + out - 1) / out; }

// Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)) (transformers' "gelu", timm's nn.GELU()).
PVT_HD float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Depthwise 3×3 with zero padding 1: the taps of output (h, w) that fall inside an H×W map.
struct TapRange {
  int dh0, dh1, dw0, dw1;  // inclusive ranges of dh, dw in {-1, 0, 1}
};
PVT_HD TapRange tap_range(int h, int w, int H, int W) {
  return TapRange{h > 0 ? -1 : 0, h < H - 1 ? 1 : 0, w > 0 ? -1 : 0, w < W - 1 ? 1 : 0};
}

}  // namespace pvtv2
