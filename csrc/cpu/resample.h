// Separable 2-tap (bilinear) resampling of channels-last maps, one output row at a time, fused with what consumes
// it: the argmax over labels (upsample_argmax) or a sum over several maps (upsample_accumulate). Written over a
// vector policy V (see kernels.h) and compiled per ISA like the other CPU kernels (included by kernels_<isa>.cpp
// after kernels.h).
//
// Beyond kernels.h's policy, V provides: max(a, b), reduce_max(a) (the largest lane), eq_mask(a, b) (bit i set where
// lane i of a == b) and nan_mask(a) (bit i set where lane i is NaN).
//
// Arithmetic (fp32), rows first as F.interpolate's separable kernel: t = src0·rw0 + src1·rw1 for every source
// column, then t[j0]·cw0 + t[j1]·cw1 per output column, each with one fused multiply-add where the ISA has it.
//
// Why fused: for segmentation labels the resampled logits are only needed long enough to find their maximum. The
// unfused path writes num_labels × W floats per output row three times (row gather, column resample, argmax read);
// here each output pixel's L values live in an L1-sized buffer and only its label is written. Likewise the decode
// head's per-stage resampled maps are only ever added up: each is added into the output row as it is resampled.
#pragma once

#include <math.h>
#include <stdint.h>

#ifndef PVT_ISA
#error "define PVT_ISA before including resample.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

// The first index of the maximum of v[0, L) (NaN counts as the maximum, the first NaN wins: torch.argmax's rule),
// given best = the largest non-NaN value and whether any value is NaN.
template <typename V>
static inline int32_t first_index_of(const float* __restrict__ v, int64_t L, float best, bool any_nan) {
  if (any_nan) {
    for (int64_t l = 0; l < L; ++l)
      if (isnan(v[l])) return static_cast<int32_t>(l);
  }
  const int64_t vec_end = L - L % V::kWidth;
  const typename V::reg target = V::set1(best);
  for (int64_t l = 0; l < vec_end; l += V::kWidth) {
    const uint32_t mask = V::eq_mask(V::load(v + l), target);
    if (mask) return static_cast<int32_t>(l + __builtin_ctz(mask));
  }
  for (int64_t l = vec_end; l < L; ++l)
    if (v[l] == best) return static_cast<int32_t>(l);
  return 0;  // unreachable: best is one of the values
}

// tmp[0, n) = src0·rw0 + src1·rw1: the row pass, over a whole (W_in, C) source row at once.
template <typename V>
static inline void lerp_rows(const float* __restrict__ src0, const float* __restrict__ src1, float rw0, float rw1,
                             int64_t n, float* __restrict__ tmp) {
  const int64_t n_vec = n - n % V::kWidth;
  const typename V::reg a = V::set1(rw0), b = V::set1(rw1);
  for (int64_t i = 0; i < n_vec; i += V::kWidth)
    V::store(tmp + i, V::fmadd(V::load(src1 + i), b, V::mul(V::load(src0 + i), a)));
  for (int64_t i = n_vec; i < n; ++i) tmp[i] = src0[i] * rw0 + src1[i] * rw1;
}

// One output row of upsample_argmax. src0 / src1: the two source rows (W_in, L) of this output row with weights
// rw0 / rw1; col_index / col_weight: (W_out, 2) taps and weights per output column; tmp: W_in·L floats and v: L floats
// of scratch; labels: W_out int32 outputs.
template <typename V>
static inline void upsample_argmax_row_impl(const float* __restrict__ src0, const float* __restrict__ src1, float rw0,
                                            float rw1, const int64_t* __restrict__ col_index,
                                            const float* __restrict__ col_weight, int64_t W_in, int64_t W_out,
                                            int64_t L, float* __restrict__ tmp, float* __restrict__ v,
                                            int32_t* __restrict__ labels) {
  lerp_rows<V>(src0, src1, rw0, rw1, W_in * L, tmp);
  const int64_t vec_end = L - L % V::kWidth;
  for (int64_t c = 0; c < W_out; ++c) {
    const float* t0 = tmp + col_index[2 * c] * L;
    const float* t1 = tmp + col_index[2 * c + 1] * L;
    const float cw0 = col_weight[2 * c], cw1 = col_weight[2 * c + 1];
    const typename V::reg p = V::set1(cw0), q = V::set1(cw1);
    typename V::reg m = V::set1(-INFINITY);
    uint32_t nan = 0;
    for (int64_t l = 0; l < vec_end; l += V::kWidth) {
      const typename V::reg x = V::fmadd(V::load(t1 + l), q, V::mul(V::load(t0 + l), p));
      V::store(v + l, x);
      m = V::max(m, x);
      nan |= V::nan_mask(x);
    }
    float best = vec_end ? V::reduce_max(m) : -INFINITY;
    for (int64_t l = vec_end; l < L; ++l) {
      const float x = t0[l] * cw0 + t1[l] * cw1;
      v[l] = x;
      if (isnan(x))
        nan = 1;
      else if (x > best)
        best = x;
    }
    labels[c] = first_index_of<V>(v, L, best, nan != 0);
  }
}

// One output row of upsample_accumulate: out (W_out, C) += the resampled row of one source map (same arguments as
// upsample_argmax_row_impl, C channels instead of L labels; tmp: W_in·C floats).
template <typename V>
static inline void upsample_accumulate_row_impl(const float* __restrict__ src0, const float* __restrict__ src1,
                                                float rw0, float rw1, const int64_t* __restrict__ col_index,
                                                const float* __restrict__ col_weight, int64_t W_in, int64_t W_out,
                                                int64_t C, float* __restrict__ tmp, float* __restrict__ out) {
  lerp_rows<V>(src0, src1, rw0, rw1, W_in * C, tmp);
  const int64_t vec_end = C - C % V::kWidth;
  for (int64_t c = 0; c < W_out; ++c) {
    const float* t0 = tmp + col_index[2 * c] * C;
    const float* t1 = tmp + col_index[2 * c + 1] * C;
    const float cw0 = col_weight[2 * c], cw1 = col_weight[2 * c + 1];
    const typename V::reg p = V::set1(cw0), q = V::set1(cw1);
    float* o = out + c * C;
    for (int64_t k = 0; k < vec_end; k += V::kWidth)
      V::store(o + k, V::add(V::load(o + k), V::fmadd(V::load(t1 + k), q, V::mul(V::load(t0 + k), p))));
    for (int64_t k = vec_end; k < C; ++k) o[k] += t0[k] * cw0 + t1[k] * cw1;
  }
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2
