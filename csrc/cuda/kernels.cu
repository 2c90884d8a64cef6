// CUDA kernels of pvtv2_fast on the (B, N, C) token layout, behind the launchers of launchers.h. No ATen: plain
// pointers and a stream (the only torch header is c10's launch check), so nvcc compiles this file in seconds;
// cuda/ops_cuda.cpp validates the arguments (checks.h) and wraps the launchers as torch ops.
//
// Index arithmetic: every offset into a tensor is int64_t (B·N·C passes 2^31 at batch 8 on a 4096² image's stage-1
// map), and every grid axis is capped at its hardware limit (x: 2^31 - 1; y, z: 65535) with the kernels looping over
// whatever the cap leaves, so every size checks.h accepts launches.
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>

#include "launchers.h"
#include "pvtv2/math.h"

namespace pvtv2 {
namespace cuda {

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// VEC contiguous channels per thread, moved as one aligned load/store.
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

constexpr int64_t kMaxGridX = 2147483647, kMaxGridYZ = 65535;
// Blocks for n work items on an axis capped at `cap` (the kernel loops over the rest); at least 1.
static unsigned grid_size(int64_t n, int64_t cap) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(n, cap)));
}

// ------------------------------------------------------------------------------------------ dwconv + GELU
// Rows one thread computes in a row: its weights are loaded once per strip (and per image), not per output.
constexpr int kRowsPerStrip = 4;
// Channels per thread when C and the pointers allow (else 1): 4 for every dtype (16-byte loads in fp32, 8 in fp16 /
// bf16). The thread holds 9·VEC weights, VEC biases and VEC sums in registers: at VEC = 4 that fits the 128
// registers that let two 256-thread blocks share an SM (ptxas -v, sm_90: 102 registers, no spills); 16-byte half
// loads (VEC = 8) needed 130 registers, one block per SM.
constexpr int kVec = 4;
constexpr int kDwconvThreads = 256;

// y[b, h·W + w, c] = GELU(bias[c] + Σ_taps ReLU?(x[b, (h + dh)·W + w + dw, c]) · w[c, tap]).
// threadIdx.x: a group of VEC channels; threadIdx.y: a column; blockIdx.x: (channel tile, column tile);
// blockIdx.y: a strip of kRowsPerStrip rows; blockIdx.z: an image. A thread's channels and column stay fixed while it
// walks its strip (and the strips and images the capped grid leaves), so its 9·VEC weights and VEC biases sit in
// registers for all of them: the 3×3 loops are fully unrolled, so each tap's index into `wr` is a compile-time
// constant (a runtime index would put the array in local memory).
template <typename T, int VEC>
__global__ void __launch_bounds__(kDwconvThreads, 2)
    dwconv_gelu_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                       int64_t B, int64_t H, int64_t W, int64_t C, int64_t channel_tiles, bool relu) {
  const int64_t groups = C / VEC, strips = (H + kRowsPerStrip - 1) / kRowsPerStrip;
  const int64_t tiles = channel_tiles * ((W + blockDim.y - 1) / blockDim.y);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t g = (tile % channel_tiles) * blockDim.x + threadIdx.x;
    const int64_t col = (tile / channel_tiles) * blockDim.y + threadIdx.y;
    if (g >= groups || col >= W) continue;
    const int64_t c0 = g * VEC;
    float wr[9][VEC], br[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      br[k] = bias ? to_float(bias[c0 + k]) : 0.0f;
#pragma unroll
      for (int t = 0; t < 9; ++t) wr[t][k] = to_float(w[(c0 + k) * 9 + t]);
    }
    for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
      for (int64_t strip = blockIdx.y; strip < strips; strip += gridDim.y) {
        const int64_t h_end = (strip + 1) * kRowsPerStrip < H ? (strip + 1) * kRowsPerStrip : H;
        for (int64_t h = strip * kRowsPerStrip; h < h_end; ++h) {
          const TapRange r = tap_range(h, col, H, W);
          const int64_t pix = (b * H + h) * W + col;  // token index of this output in the batch
          float acc[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] = br[k];
#pragma unroll
          for (int dh = -1; dh <= 1; ++dh) {
#pragma unroll
            for (int dw = -1; dw <= 1; ++dw) {
              if (dh < r.dh0 || dh > r.dh1 || dw < r.dw0 || dw > r.dw1) continue;  // zero padding
              const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(x + (pix + dh * W + dw) * C + c0);
#pragma unroll
              for (int k = 0; k < VEC; ++k) {
                float v = to_float(in.v[k]);
                if (relu) v = fmaxf(v, 0.0f);
                acc[k] = fmaf(v, wr[(dh + 1) * 3 + (dw + 1)][k], acc[k]);
              }
            }
          }
          Pack<T, VEC> out;
#pragma unroll
          for (int k = 0; k < VEC; ++k) out.v[k] = from_float<T>(gelu_erf(acc[k]));
          *reinterpret_cast<Pack<T, VEC>*>(y + pix * C + c0) = out;
        }
      }
    }
  }
}

template <typename T, int VEC>
static void launch_dwconv_vec(const T* x, const T* w, const T* bias, T* y, int64_t B, int64_t H, int64_t W, int64_t C,
                              bool relu, cudaStream_t stream) {
  const int64_t groups = C / VEC;
  // Up to 32 channel groups side by side (a warp reads neighbouring VEC-channel chunks), the rest of the block's
  // threads on neighbouring columns.
  unsigned bx = 1;
  while (bx < 32 && bx < groups) bx *= 2;
  const dim3 block(bx, kDwconvThreads / bx);
  const int64_t channel_tiles = (groups + bx - 1) / bx, column_tiles = (W + block.y - 1) / block.y;
  const dim3 grid(grid_size(channel_tiles * column_tiles, kMaxGridX),
                  grid_size((H + kRowsPerStrip - 1) / kRowsPerStrip, kMaxGridYZ), grid_size(B, kMaxGridYZ));
  dwconv_gelu_kernel<T, VEC><<<grid, block, 0, stream>>>(x, w, bias, y, B, H, W, C, channel_tiles, relu);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
static void launch_dwconv(const void* x, const void* w, const void* bias, void* y, int64_t B, int64_t H, int64_t W,
                          int64_t C, bool relu, cudaStream_t stream) {
  constexpr uintptr_t kAlign = sizeof(Pack<T, kVec>);
  const bool aligned =
      C % kVec == 0 && reinterpret_cast<uintptr_t>(x) % kAlign == 0 && reinterpret_cast<uintptr_t>(y) % kAlign == 0;
  const T* xp = static_cast<const T*>(x);
  const T* wp = static_cast<const T*>(w);
  const T* bp = static_cast<const T*>(bias);
  T* yp = static_cast<T*>(y);
  if (aligned)
    launch_dwconv_vec<T, kVec>(xp, wp, bp, yp, B, H, W, C, relu, stream);
  else
    launch_dwconv_vec<T, 1>(xp, wp, bp, yp, B, H, W, C, relu, stream);
}

// ------------------------------------------------------------------------------------------ Linear SRA pool
// One block per (image, output cell), looping over what the capped grid leaves; threads stride over channels, summing
// the cell's bin (math.h, int64_t) in fp32.
template <typename T>
__global__ void linear_sra_pool_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t B, int64_t H, int64_t W,
                                       int64_t C, int64_t P) {
  const int64_t cells = P * P;
  for (int64_t item = blockIdx.x; item < B * cells; item += gridDim.x) {
    const int64_t b = item / cells, cell = item % cells, i = cell / P, j = cell % P;
    const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
    const int64_t w0 = adaptive_start(j, W, P), w1 = adaptive_end(j, W, P);
    const float scale = 1.0f / static_cast<float>((h1 - h0) * (w1 - w0));
    const T* image = x + b * H * W * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t hh = h0; hh < h1; ++hh)
        for (int64_t ww = w0; ww < w1; ++ww) acc += to_float(image[(hh * W + ww) * C + c]);
      y[item * C + c] = from_float<T>(acc * scale);
    }
  }
}

template <typename T>
static void launch_pool(const void* x, void* y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t P,
                        cudaStream_t stream) {
  const unsigned threads = C >= 256 ? 256u : static_cast<unsigned>((C + 31) / 32 * 32);
  linear_sra_pool_kernel<T><<<grid_size(B * P * P, kMaxGridX), threads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(y), B, H, W, C, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------------------------ launchers.h
void dwconv_gelu(Dtype dtype, const void* x, const void* w, const void* bias, void* y, int64_t B, int64_t H, int64_t W,
                 int64_t C, bool relu, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch_dwconv<float>(x, w, bias, y, B, H, W, C, relu, stream);
    case Dtype::kFloat16: return launch_dwconv<__half>(x, w, bias, y, B, H, W, C, relu, stream);
    case Dtype::kBFloat16: return launch_dwconv<__nv_bfloat16>(x, w, bias, y, B, H, W, C, relu, stream);
  }
}

void linear_sra_pool(Dtype dtype, const void* x, void* y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t P,
                     cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32: return launch_pool<float>(x, y, B, H, W, C, P, stream);
    case Dtype::kFloat16: return launch_pool<__half>(x, y, B, H, W, C, P, stream);
    case Dtype::kBFloat16: return launch_pool<__nv_bfloat16>(x, y, B, H, W, C, P, stream);
  }
}

}  // namespace cuda
}  // namespace pvtv2
