// The kernels with AVX-512F intrinsics (16 lanes); only called when the CPU and OS report AVX-512F (ops.cpp checks
// at run time). Same loops as the AVX2 build, twice the lanes: the depthwise conv + GELU is mostly arithmetic (the
// GELU's polynomial), so the wider vectors pay where the data sits in cache (measured 1.7x the AVX2 build) and less
// where writing a fresh output competes (1.2-1.6x at stage-1 maps; bench/results/cpu_isa.md).
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
#pragma GCC target("avx512f,fma")
#include <immintrin.h>

#define PVT_ISA avx512
#include "kernels.h"
#include "resample.h"
#include "attention.h"
#include "token_conv.h"

namespace pvtv2 {
namespace cpu {
namespace avx512 {

// bf16 ↔ fp32 for 16 lanes with AVX-512F integer instructions (vpmovzxwd / vpmovdw), rounding as float_to_bf16.
struct Avx512Ops;
template <>
struct Bf16<Avx512Ops> {
  static __m512 load(const bf16* p) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
  static void store(bf16* p, __m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
};

struct Avx512Ops {
  static constexpr int kWidth = 16;
  using reg = __m512;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static reg relu(reg a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  // reciprocal estimate (14 bits) + one Newton step: ~1e-8 relative
  static reg recip(reg a) {
    const reg r = _mm512_rcp14_ps(a);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(2.0f)));
  }
  static reg select_negative(reg s, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LT_OQ), b, a);
  }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  // By shuffles rather than _mm512_reduce_max_ps, whose gcc 12 header warns of an uninitialised temporary.
  static float reduce_max(reg a) {
    reg t = _mm512_max_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E));  // 256-bit halves swapped
    t = _mm512_max_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));      // 128-bit quarters swapped
    __m128 m = _mm512_castps512_ps128(t);
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float reduce_add(reg a) {
    reg t = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E));
    t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));
    __m128 m = _mm512_castps512_ps128(t);
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
  }
  // 2^x for x <= 0 (kExp2P); 0 below 2^-125, NaN stays NaN. Never a subnormal: scalef into the subnormal range (or
  // underflowing past it) takes a microcode assist per instruction, which made every masked tail of keys (-inf
  // scores, e.g. 49 keys in tiles of 16) cost ~2x its tile (measured). So n stays >= -125, where p·2^n >= 2^-125.5
  // is normal, and the lanes below -125 are zeroed by the mask (an unordered compare: NaN lanes are kept).
  static reg exp2(reg x) {
    const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_NLT_UQ);
    x = _mm512_max_ps(_mm512_set1_ps(-125.0f), x);  // NaN stays (max returns its 2nd operand)
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm512_sub_ps(x, n);
    reg p = _mm512_set1_ps(kExp2P[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2P[i]));
    return _mm512_maskz_scalef_ps(keep, _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f)), n);
  }
  static uint32_t eq_mask(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static uint32_t nan_mask(reg a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
};

}  // namespace avx512
}  // namespace cpu
}  // namespace pvtv2

PVT_DEFINE_ENTRY_POINTS(avx512, Avx512Ops)
#endif
