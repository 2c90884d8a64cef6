// The kernels with AVX2 + FMA intrinsics; only called when the CPU reports both (ops.cpp checks at run time).
// Every shared header before the target pragma (why: cpu_kernels.h, "ISA files").
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "pvtv2/math.h"
#include "pvtv2/packing.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define PVT_ISA avx2
#include "kernels.h"
#include "resample.h"
#include "attention.h"
#include "token_conv.h"

namespace pvtv2 {
namespace cpu {
namespace avx2 {

// bf16 ↔ fp32 for 8 lanes with AVX2 integer instructions, rounding as float_to_bf16.
struct Avx2Ops;
template <>
struct Bf16<Avx2Ops> {
  static __m256 load(const bf16* p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static void store(bf16* p, __m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // r holds 8 values below 2^16: pack to 16 bits (packus works per 128-bit lane, so reorder the lanes after)
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
};

struct Avx2Ops {
  static constexpr int kWidth = 8;
  using reg = __m256;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static reg relu(reg a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  // reciprocal estimate (12 bits) + one Newton step: ~1e-7 relative
  static reg recip(reg a) {
    const reg r = _mm256_rcp_ps(a);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(a, r, _mm256_set1_ps(2.0f)));
  }
  // blendv selects by each lane's sign bit: -0 takes `a` too, where the GELU's two sides agree (Φ(0) = ½)
  static reg select_negative(reg s, reg a, reg b) { return _mm256_blendv_ps(b, a, s); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static float reduce_max(reg a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float reduce_add(reg a) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
  }
  // 2^x for x <= 0 (kExp2P): 2^n built in the exponent bits; below 2^-125 the result is 0 (an ordered compare, so
  // NaN stays NaN through p). Never a subnormal (a microcode assist per instruction): from -125 up, p·2^n is normal.
  static reg exp2(reg x) {
    const reg n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm256_sub_ps(x, n);
    reg p = _mm256_set1_ps(kExp2P[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2P[i]));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_max_ps(_mm256_set1_ps(-125.0f), n)),
                                                         _mm256_set1_epi32(127)), 23);
    const reg tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-125.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
  static uint32_t eq_mask(reg a, reg b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
  static uint32_t nan_mask(reg a) { return _mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
};

}  // namespace avx2
}  // namespace cpu
}  // namespace pvtv2

PVT_DEFINE_ENTRY_POINTS(avx2, Avx2Ops)
#endif
