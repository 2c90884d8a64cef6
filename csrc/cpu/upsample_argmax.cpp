// The upsample_argmax op's CPU and Meta kernels (the row kernel is in resample.h, compiled per ISA).
// Registered as a fragment of the pvtv2_fast_C library that ops.cpp defines.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu_kernels.h"
#include "pvtv2/checks.h"

namespace pvtv2 {

// Labels of one output row, int32 → the output dtype.
template <typename T>
static void store_labels(const int32_t* labels, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(labels[i]);
}

at::Tensor upsample_argmax_cpu(const at::Tensor& x_in, const at::Tensor& row_index, const at::Tensor& row_weight,
                               const at::Tensor& col_index, const at::Tensor& col_weight, at::ScalarType dtype) {
  constexpr const char* op = "upsample_argmax";
  checks::upsample_argmax(x_in, row_index, row_weight, col_index, col_weight, dtype);
  CHECK_DEVICE(x_in, at::kCPU);
  const int64_t B = x_in.size(0), W_in = x_in.size(2), L = x_in.size(3);
  const int64_t R = row_index.size(0), W_out = col_index.size(0);
  at::Tensor out = at::empty({B, R, W_out}, x_in.options().dtype(dtype));
  if (out.numel() == 0) return out;
  // Rows of (W_in, L) must be dense; the batch and row strides may be anything (a band sliced from a larger map
  // is read in place). Half types are widened to fp32 once (the band is small by construction).
  at::Tensor x = x_in.to(at::kFloat);
  if (x.stride(3) != 1 || x.stride(2) != L) x = x.contiguous();
  const at::Tensor ri = row_index.contiguous(), ci = col_index.contiguous();
  const at::Tensor rw = row_weight.contiguous(), cw = col_weight.contiguous();
  const float* xp = x.data_ptr<float>();
  const int64_t sb = x.stride(0), sr = x.stride(1);
  const int64_t* rip = ri.data_ptr<int64_t>();
  const float* rwp = rw.data_ptr<float>();
  const int64_t* cip = ci.data_ptr<int64_t>();
  const float* cwp = cw.data_ptr<float>();
  const cpu::UpsampleArgmaxRowFn row = cpu::upsample_argmax_row();
  const int64_t row_floats = checks::mul(op, "W_in x L", W_in, L);
  AT_DISPATCH_INTEGRAL_TYPES(dtype, "upsample_argmax", [&] {
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * R, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> tmp(row_floats), v(L);
      std::vector<int32_t> labels(W_out);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / R, r = k % R;
        const float* image = xp + b * sb;
        row(image + rip[2 * r] * sr, image + rip[2 * r + 1] * sr, rwp[2 * r], rwp[2 * r + 1], cip, cwp, W_in, W_out,
            L, tmp.data(), v.data(), labels.data());
        store_labels(labels.data(), outp + k * W_out, W_out);
      }
    });
  });
  return out;
}

at::Tensor upsample_argmax_meta(const at::Tensor& x, const at::Tensor& row_index, const at::Tensor& row_weight,
                                const at::Tensor& col_index, const at::Tensor& col_weight, at::ScalarType dtype) {
  checks::upsample_argmax(x, row_index, row_weight, col_index, col_weight, dtype);
  return at::empty({x.size(0), row_index.size(0), col_index.size(0)}, x.options().dtype(dtype));
}

}  // namespace pvtv2

TORCH_LIBRARY_FRAGMENT(pvtv2_fast_C, m) {
  m.def(
      "upsample_argmax(Tensor x, Tensor row_index, Tensor row_weight, Tensor col_index, Tensor col_weight, "
      "ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(pvtv2_fast_C, CPU, m) { m.impl("upsample_argmax", &pvtv2::upsample_argmax_cpu); }

TORCH_LIBRARY_IMPL(pvtv2_fast_C, Meta, m) { m.impl("upsample_argmax", &pvtv2::upsample_argmax_meta); }
