// The CPU side's internal interface: the per-ISA entry points of kernels.h, the pick for this CPU, and the
// band-streaming conv FFN of conv_ffn.cpp. Raw pointers only; ops.cpp turns tensors into these calls.
#pragma once

#include <stdint.h>

#include <string>

namespace pvtv2 {
namespace cpu {

// rows: 3 pointers to (W, C) input rows (above / at / below; nullptr = zero padding); y: the (W, C) output row.
using DwconvGeluRowFn = void (*)(const float* const* rows, const float* wt, const float* bias, float* y, int64_t W,
                                 int64_t C, bool relu_input);
// x: one image's (H·W, C) tokens; y: the C floats of output cell (i, j) of its P×P adaptive average pool.
using LinearSraPoolCellFn = void (*)(const float* x, float* y, int64_t i, int64_t j, int64_t H, int64_t W,
                                     int64_t C, int64_t P);

// One output row of upsample_argmax (resample.h): src0 / src1 the (W_in, L) source rows with weights w0 / w1,
// col_index / col_weight (W_out, 2), scratch tmp (W_in·L floats) and v (L floats), labels (W_out,) out.
using UpsampleArgmaxRowFn = void (*)(const float* src0, const float* src1, float w0, float w1,
                                     const int64_t* col_index, const float* col_weight, int64_t W_in, int64_t W_out,
                                     int64_t L, float* tmp, float* v, int32_t* labels);
// One output row of upsample_accumulate (resample.h): out (W_out, C) += one source map's resampled row.
using UpsampleAccumulateRowFn = void (*)(const float* src0, const float* src1, float w0, float w1,
                                         const int64_t* col_index, const float* col_weight, int64_t W_in,
                                         int64_t W_out, int64_t C, float* tmp, float* out);

void dwconv_gelu_row_default(const float* const*, const float*, const float*, float*, int64_t, int64_t, bool);
void linear_sra_pool_cell_default(const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
void upsample_accumulate_row_default(const float*, const float*, float, float, const int64_t*, const float*,
                                     int64_t, int64_t, int64_t, float*, float*);
void upsample_argmax_row_default(const float*, const float*, float, float, const int64_t*, const float*, int64_t,
                                 int64_t, int64_t, float*, float*, int32_t*);
#if defined(__x86_64__) || defined(_M_X64)
void upsample_accumulate_row_avx2(const float*, const float*, float, float, const int64_t*, const float*, int64_t,
                                  int64_t, int64_t, float*, float*);
void upsample_accumulate_row_avx512(const float*, const float*, float, float, const int64_t*, const float*, int64_t,
                                    int64_t, int64_t, float*, float*);
void upsample_argmax_row_avx2(const float*, const float*, float, float, const int64_t*, const float*, int64_t,
                              int64_t, int64_t, float*, float*, int32_t*);
void upsample_argmax_row_avx512(const float*, const float*, float, float, const int64_t*, const float*, int64_t,
                                int64_t, int64_t, float*, float*, int32_t*);
void dwconv_gelu_row_avx2(const float* const*, const float*, const float*, float*, int64_t, int64_t, bool);
void linear_sra_pool_cell_avx2(const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
void dwconv_gelu_row_avx512(const float* const*, const float*, const float*, float*, int64_t, int64_t, bool);
void linear_sra_pool_cell_avx512(const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
#endif

// The widest ISA the CPU (and OS) support: "avx512" (AVX-512F), "avx2" (AVX2 + FMA) or "default"; the
// environment variable PVTV2_FAST_CPU_ISA (one of those names) caps it, so tests cover every path on one machine.
std::string isa();
DwconvGeluRowFn dwconv_gelu_row();
LinearSraPoolCellFn linear_sra_pool_cell();
UpsampleArgmaxRowFn upsample_argmax_row();
UpsampleAccumulateRowFn upsample_accumulate_row();

// y = fc2(GELU(dwconv3x3(ReLU?(fc1(x))))) for B images of H×W tokens, all float32 and contiguous:
// x (B, H·W, c_in), fc1_w (hidden, c_in), dw_wt (9, hidden) tap-major, fc2_w (c_out, hidden), y (B, H·W, c_out);
// biases may be nullptr. The widened hidden state only ever exists for a few rows per thread (see conv_ffn.cpp).
struct ConvFfnArgs {
  const float* x;
  const float* fc1_w;
  const float* fc1_b;
  const float* dw_wt;
  const float* dw_b;
  const float* fc2_w;
  const float* fc2_b;
  float* y;
  int64_t batch, height, width, c_in, hidden, c_out;
  bool relu_input;
};

// Whether a BLAS sgemm is linked in (the conv FFN's GEMMs run on it); false on torch builds without one.
bool has_sgemm();
// Rows per band for a hidden state of `row_floats` floats per map row (override: PVTV2_FAST_FFN_BAND_KB, a whole
// number of KB from 1 to 1048576; any other value set raises).
int64_t conv_ffn_band_rows(int64_t row_floats, int64_t height, int64_t batch);
void conv_ffn_forward(const ConvFfnArgs& args);

}  // namespace cpu
}  // namespace pvtv2
