// CUDA kernels of pvtv2_fast on the (B, N, C) token layout. No torch headers: plain pointers and a stream, so
// nvcc compiles this file in seconds; cuda/ops_cuda.cpp (host compiler) wraps the launchers as torch ops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "pvtv2/math.h"

namespace pvtv2 {
namespace cuda {

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// VEC contiguous channels per thread, moved as one aligned load/store (16 bytes when the layout allows).
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

// y[b, p, c] = GELU(bias[c] + Σ_taps ReLU?(x[b, p + tap, c]) · w[c, tap]); one thread per (b, p, VEC channels).
template <typename T, int VEC>
__global__ void dwconv_gelu_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                   T* __restrict__ y, int B, int H, int W, int C, bool relu) {
  const int groups = C / VEC;
  const int64_t total = static_cast<int64_t>(B) * H * W * groups;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int g = idx % groups;
    const int64_t pix = idx / groups;  // b·H·W + h·W + w
    const int wcol = pix % W, hrow = (pix / W) % H;
    const int64_t b = pix / (static_cast<int64_t>(H) * W);
    const int c0 = g * VEC;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = bias ? to_float(bias[c0 + k]) : 0.0f;
    const TapRange r = tap_range(hrow, wcol, H, W);
    for (int dh = r.dh0; dh <= r.dh1; ++dh) {
      for (int dw = r.dw0; dw <= r.dw1; ++dw) {
        const int64_t src = ((b * H + hrow + dh) * W + wcol + dw) * C + c0;
        const Pack<T, VEC> in = *reinterpret_cast<const Pack<T, VEC>*>(x + src);
        const int tap = (dh + 1) * 3 + (dw + 1);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          float v = to_float(in.v[k]);
          if (relu) v = fmaxf(v, 0.0f);
          acc[k] = fmaf(v, to_float(w[(c0 + k) * 9 + tap]), acc[k]);
        }
      }
    }
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = from_float<T>(gelu_erf(acc[k]));
    *reinterpret_cast<Pack<T, VEC>*>(y + pix * C + c0) = out;
  }
}

// One block per (b, output cell); threads stride over channels, summing the cell's bin in fp32.
template <typename T>
__global__ void adaptive_pool_kernel(const T* __restrict__ x, T* __restrict__ y, int H, int W, int C, int P) {
  const int cell = blockIdx.x % (P * P);
  const int64_t b = blockIdx.x / (P * P);
  const int i = cell / P, j = cell % P;
  const int h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
  const int w0 = adaptive_start(j, W, P), w1 = adaptive_end(j, W, P);
  const float scale = 1.0f / static_cast<float>((h1 - h0) * (w1 - w0));
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int hh = h0; hh < h1; ++hh)
      for (int ww = w0; ww < w1; ++ww) acc += to_float(x[((b * H + hh) * W + ww) * C + c]);
    y[(b * P * P + cell) * C + c] = from_float<T>(acc * scale);
  }
}

template <typename T>
static cudaError_t launch_dwconv(const void* x, const void* w, const void* bias, void* y, int B, int H, int W, int C,
                                 bool relu, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = C % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  const int vec = aligned ? kVec : 1;
  const int64_t work = static_cast<int64_t>(B) * H * W * (C / vec);
  const int threads = 256;
  const int blocks = static_cast<int>(work / threads + 1 < 65535 * 8 ? work / threads + 1 : 65535 * 8);
  const T* xp = static_cast<const T*>(x);
  const T* wp = static_cast<const T*>(w);
  const T* bp = static_cast<const T*>(bias);
  T* yp = static_cast<T*>(y);
  if (aligned)
    dwconv_gelu_kernel<T, kVec><<<blocks, threads, 0, stream>>>(xp, wp, bp, yp, B, H, W, C, relu);
  else
    dwconv_gelu_kernel<T, 1><<<blocks, threads, 0, stream>>>(xp, wp, bp, yp, B, H, W, C, relu);
  return cudaGetLastError();
}

template <typename T>
static cudaError_t launch_pool(const void* x, void* y, int B, int H, int W, int C, int P, cudaStream_t stream) {
  const int threads = C >= 256 ? 256 : ((C + 31) / 32) * 32;
  adaptive_pool_kernel<T><<<B * P * P, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), H, W, C, P);
  return cudaGetLastError();
}

// dtype: 0 = float32, 1 = float16, 2 = bfloat16.
cudaError_t dwconv_gelu(int dtype, const void* x, const void* w, const void* bias, void* y, int B, int H, int W, int C,
                        bool relu, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_dwconv<float>(x, w, bias, y, B, H, W, C, relu, stream);
    case 1: return launch_dwconv<__half>(x, w, bias, y, B, H, W, C, relu, stream);
    default: return launch_dwconv<__nv_bfloat16>(x, w, bias, y, B, H, W, C, relu, stream);
  }
}

cudaError_t adaptive_pool(int dtype, const void* x, void* y, int B, int H, int W, int C, int P, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_pool<float>(x, y, B, H, W, C, P, stream);
    case 1: return launch_pool<__half>(x, y, B, H, W, C, P, stream);
    default: return launch_pool<__nv_bfloat16>(x, y, B, H, W, C, P, stream);
  }
}

}  // namespace cuda
}  // namespace pvtv2
