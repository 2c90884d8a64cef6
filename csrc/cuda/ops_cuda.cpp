// CUDA registrations of pvtv2_fast_C's ops: the same argument checks as the CPU kernels (pvtv2/checks.h), layout on
// the host, kernels in cuda/kernels.cu (launchers.h), launched on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launchers.h"
#include "pvtv2/checks.h"

namespace pvtv2 {

// x's dtype as the launchers name it; checks.h has already restricted it to the kernel dtypes.
static cuda::Dtype launcher_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return cuda::Dtype::kFloat16;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default: return cuda::Dtype::kFloat32;
  }
}

at::Tensor dwconv_gelu_cuda(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            int64_t height, int64_t width, bool relu_input) {
  constexpr const char* op = "dwconv_gelu";
  checks::dwconv_gelu(x_in, weight, bias, height, width);
  CHECK_DEVICE(x_in, at::kCUDA);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (y.numel() == 0) return y;  // B = 0
  CHECK_CONTIGUOUS(y);
  cuda::dwconv_gelu(launcher_dtype(x), x.data_ptr(), w.data_ptr(), b.defined() ? b.data_ptr() : nullptr, y.data_ptr(),
                    x.size(0), height, width, x.size(2), relu_input, c10::cuda::getCurrentCUDAStream());
  return y;
}

at::Tensor linear_sra_pool_cuda(const at::Tensor& x_in, int64_t height, int64_t width, int64_t pool_size) {
  constexpr const char* op = "linear_sra_pool";
  checks::linear_sra_pool(x_in, height, width, pool_size);
  CHECK_DEVICE(x_in, at::kCUDA);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({x.size(0), pool_size * pool_size, x.size(2)}, x.options());  // size checked
  if (y.numel() == 0) return y;  // B = 0 or C = 0
  cuda::linear_sra_pool(launcher_dtype(x), x.data_ptr(), y.data_ptr(), x.size(0), height, width, x.size(2), pool_size,
                        c10::cuda::getCurrentCUDAStream());
  return y;
}
}  // namespace pvtv2

TORCH_LIBRARY_IMPL(pvtv2_fast_C, CUDA, m) {
  m.impl("dwconv_gelu", &pvtv2::dwconv_gelu_cuda);
  m.impl("linear_sra_pool", &pvtv2::linear_sra_pool_cuda);
}
