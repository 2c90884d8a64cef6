// CUDA registrations of pvtv2_fast_C's ops: checks and layout on the host, kernels in cuda/kernels.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

namespace pvtv2 {
namespace cuda {
cudaError_t dwconv_gelu(int, const void*, const void*, const void*, void*, int, int, int, int, bool, cudaStream_t);
cudaError_t adaptive_pool(int, const void*, void*, int, int, int, int, int, cudaStream_t);
}  // namespace cuda

static int dtype_code(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, op, ": CUDA kernel supports float32, float16 and bfloat16, got ", t.scalar_type());
  }
}

at::Tensor dwconv_gelu_cuda(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            int64_t height, int64_t width, bool relu_input) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == height * width, "dwconv_gelu: x must be (B, H*W, C) tokens");
  const int64_t C = x_in.size(2);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef({C, 1, 3, 3}), "dwconv_gelu: weight must be (C, 1, 3, 3)");
  const int code = dtype_code(x_in, "dwconv_gelu");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.to(x.scalar_type()).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const cudaError_t err = cuda::dwconv_gelu(code, x.data_ptr(), w.data_ptr(), b.defined() ? b.data_ptr() : nullptr,
                                            y.data_ptr(), x.size(0), height, width, C, relu_input,
                                            c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "dwconv_gelu CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}

at::Tensor adaptive_pool_tokens_cuda(const at::Tensor& x_in, int64_t height, int64_t width, int64_t pool_size) {
  TORCH_CHECK(x_in.dim() == 3 && x_in.size(1) == height * width, "adaptive_pool_tokens: x must be (B, H*W, C)");
  const int code = dtype_code(x_in, "adaptive_pool_tokens");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), pool_size * pool_size, x.size(2)}, x.options());
  if (y.numel() == 0) return y;
  const cudaError_t err = cuda::adaptive_pool(code, x.data_ptr(), y.data_ptr(), x.size(0), height, width, x.size(2),
                                              pool_size, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "adaptive_pool_tokens CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}
}  // namespace pvtv2

TORCH_LIBRARY_IMPL(pvtv2_fast_C, CUDA, m) {
  m.impl("dwconv_gelu", &pvtv2::dwconv_gelu_cuda);
  m.impl("adaptive_pool_tokens", &pvtv2::adaptive_pool_tokens_cuda);
}
