// The kernels with AVX2 + FMA intrinsics; only called when the CPU reports both (ops.cpp checks at run time).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define PVT_ISA avx2
#include "kernels.h"

namespace pvtv2 {
namespace cpu {
namespace avx2 {

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
  // 0.5·v·(1 + erf(v/√2)) with erf_poly's polynomial, eight lanes at a time.
  static reg gelu(reg v) {
    const reg sign = _mm256_set1_ps(-0.0f);
    const reg u = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
    const reg z = _mm256_min_ps(_mm256_andnot_ps(sign, u), _mm256_set1_ps(4.0f));
    reg p = _mm256_set1_ps(kErfA[5]);
    for (int k = 4; k >= 0; --k) p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kErfA[k]));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.0f));
    p = _mm256_mul_ps(p, p);
    p = _mm256_mul_ps(p, p);
    p = _mm256_mul_ps(p, p);
    p = _mm256_mul_ps(p, p);
    // 1/p by reciprocal estimate + one Newton step (relative error ~1e-7; p >= 1 so no edge cases).
    reg inv = _mm256_rcp_ps(p);
    inv = _mm256_mul_ps(inv, _mm256_fnmadd_ps(p, inv, _mm256_set1_ps(2.0f)));
    const reg magnitude = _mm256_sub_ps(_mm256_set1_ps(1.0f), inv);
    const reg erf = _mm256_or_ps(magnitude, _mm256_and_ps(sign, u));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
  }
};

}  // namespace avx2
}  // namespace cpu
}  // namespace pvtv2

PVT_DEFINE_ENTRY_POINTS(avx2, Avx2Ops)
#endif
