// The upsample_accumulate op's CPU and Meta kernels (the row kernel is in resample.h, compiled per ISA).
// Registered as a fragment of the pvtv2_fast_C library that ops.cpp defines.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "pvtv2/checks.h"

namespace pvtv2 {

at::Tensor upsample_accumulate_cpu(at::TensorList xs_in, at::TensorList row_index, at::TensorList row_weight,
                                   at::TensorList col_index, at::TensorList col_weight,
                                   const c10::optional<at::Tensor>& bias, bool relu) {
  constexpr const char* op = "upsample_accumulate";
  checks::upsample_accumulate(xs_in, row_index, row_weight, col_index, col_weight, bias);
  CHECK_DEVICE(xs_in[0], at::kCPU);
  const size_t n = xs_in.size();
  const auto dtype = xs_in[0].scalar_type();
  const int64_t B = xs_in[0].size(0), C = xs_in[0].size(3), R = row_index[0].size(0), W = col_index[0].size(0);
  at::Tensor out = at::empty({B, R, W, C}, xs_in[0].options().dtype(at::kFloat));
  if (out.numel() == 0) return out.to(dtype);
  // Per map: fp32 with dense (W_i, C) rows (batch and row strides may be anything: bands sliced from larger maps
  // are read in place); taps contiguous.
  std::vector<at::Tensor> xs, keep;
  std::vector<const float*> xp;
  std::vector<const int64_t*> rip, cip;
  std::vector<const float*> rwp, cwp;
  int64_t tmp_floats = 0;
  for (size_t i = 0; i < n; ++i) {
    at::Tensor x = xs_in[i].to(at::kFloat);
    if (x.stride(3) != 1 || x.stride(2) != C) x = x.contiguous();
    xs.push_back(x);
    xp.push_back(x.data_ptr<float>());
    for (const at::Tensor& t : {row_index[i].contiguous(), col_index[i].contiguous(), row_weight[i].contiguous(),
                                col_weight[i].contiguous()})
      keep.push_back(t);
    const size_t k = keep.size() - 4;
    rip.push_back(keep[k].data_ptr<int64_t>());
    cip.push_back(keep[k + 1].data_ptr<int64_t>());
    rwp.push_back(keep[k + 2].data_ptr<float>());
    cwp.push_back(keep[k + 3].data_ptr<float>());
    tmp_floats = std::max(tmp_floats, checks::mul(op, "W_i x C", x.size(2), C));
  }
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* outp = out.data_ptr<float>();
  const int64_t row_floats = W * C;
  const cpu::UpsampleAccumulateRowFn row = cpu::upsample_accumulate_row();
  at::parallel_for(0, B * R, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(tmp_floats);
    for (int64_t k = begin; k < end; ++k) {
      const int64_t bi = k / R, r = k % R;
      float* o = outp + k * row_floats;
      std::fill(o, o + row_floats, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        const float* image = xp[i] + bi * xs[i].stride(0);
        const int64_t sr = xs[i].stride(1);
        row(image + rip[i][2 * r] * sr, image + rip[i][2 * r + 1] * sr, rwp[i][2 * r], rwp[i][2 * r + 1], cip[i],
            cwp[i], xs[i].size(2), W, C, tmp.data(), o);
      }
      // Bias after the sum (the folded head's order: stages summed, then the composed bias), then ReLU.
      if (bp || relu)
        for (int64_t p = 0; p < W; ++p)
          for (int64_t c = 0; c < C; ++c) {
            float v = o[p * C + c] + (bp ? bp[c] : 0.0f);
            o[p * C + c] = relu ? std::max(v, 0.0f) : v;
          }
    }
  });
  return dtype == at::kFloat ? out : out.to(dtype);
}

at::Tensor upsample_accumulate_meta(at::TensorList xs, at::TensorList row_index, at::TensorList row_weight,
                                    at::TensorList col_index, at::TensorList col_weight,
                                    const c10::optional<at::Tensor>& bias, bool) {
  checks::upsample_accumulate(xs, row_index, row_weight, col_index, col_weight, bias);
  return at::empty({xs[0].size(0), row_index[0].size(0), col_index[0].size(0), xs[0].size(3)}, xs[0].options());
}

}  // namespace pvtv2

TORCH_LIBRARY_FRAGMENT(pvtv2_fast_C, m) {
  m.def(
      "upsample_accumulate(Tensor[] xs, Tensor[] row_index, Tensor[] row_weight, Tensor[] col_index, "
      "Tensor[] col_weight, Tensor? bias, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(pvtv2_fast_C, CPU, m) { m.impl("upsample_accumulate", &pvtv2::upsample_accumulate_cpu); }

TORCH_LIBRARY_IMPL(pvtv2_fast_C, Meta, m) { m.impl("upsample_accumulate", &pvtv2::upsample_accumulate_meta); }
