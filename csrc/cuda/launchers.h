// The CUDA launchers of cuda/kernels.cu, declared once for cuda/ops_cuda.cpp, which calls them after checks.h has
// validated the arguments. Plain pointers to contiguous (B, N, C) tokens, int64_t sizes and the caller's stream
// (ops_cuda.cpp passes the current one); each launch is followed by C10_CUDA_KERNEL_LAUNCH_CHECK(), so a failed
// launch raises at its call.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace pvtv2 {
namespace cuda {

enum class Dtype { kFloat32, kFloat16, kBFloat16 };

// y = GELU(dwconv3x3(ReLU?(x)) + bias): x, y (B, H·W, C); w (C, 1, 3, 3); bias (C,) or nullptr.
void dwconv_gelu(Dtype dtype, const void* x, const void* w, const void* bias, void* y, int64_t B, int64_t H, int64_t W,
                 int64_t C, bool relu, cudaStream_t stream);
// y (B, P·P, C): the P×P adaptive average pool of x (B, H·W, C).
void linear_sra_pool(Dtype dtype, const void* x, void* y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t P,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace pvtv2
