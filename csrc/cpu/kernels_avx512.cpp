// The kernels with AVX-512F intrinsics (16 lanes); only called when the CPU and OS report AVX-512F (ops.cpp checks
// at run time). Same loops as the AVX2 build, twice the lanes: the depthwise conv + GELU is bound by the GELU's
// arithmetic on these shapes, not by memory, so the wider vectors pay directly.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,fma")
#include <immintrin.h>

#define PVT_ISA avx512
#include "kernels.h"

namespace pvtv2 {
namespace cpu {
namespace avx512 {

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
  // 0.5·v·(1 + erf(v/√2)) with erf_poly's polynomial, sixteen lanes at a time (as Avx2Ops::gelu).
  static reg gelu(reg v) {
    const reg u = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
    const reg z = _mm512_min_ps(_mm512_abs_ps(u), _mm512_set1_ps(4.0f));
    reg p = _mm512_set1_ps(kErfA[5]);
    for (int k = 4; k >= 0; --k) p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kErfA[k]));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.0f));
    p = _mm512_mul_ps(p, p);
    p = _mm512_mul_ps(p, p);
    p = _mm512_mul_ps(p, p);
    p = _mm512_mul_ps(p, p);
    // 1/p: 14-bit reciprocal estimate + one Newton step (relative error ~1e-8; p >= 1 so no edge cases).
    reg inv = _mm512_rcp14_ps(p);
    inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(p, inv, _mm512_set1_ps(2.0f)));
    const reg magnitude = _mm512_sub_ps(_mm512_set1_ps(1.0f), inv);
    // erf's sign is u's: OR u's sign bit into the non-negative magnitude (integer ops: AVX-512F has no float OR).
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32(static_cast<int>(0x80000000u)));
    const reg erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
  }
};

}  // namespace avx512
}  // namespace cpu
}  // namespace pvtv2

PVT_DEFINE_ENTRY_POINTS(avx512, Avx512Ops)
#endif
