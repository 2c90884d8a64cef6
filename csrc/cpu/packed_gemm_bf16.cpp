// bf16 GEMM on a prepacked weight with AVX512-BF16's dot product (vdpbf16ps: fp32 += a0·b0 + a1·b1 per lane), for
// CPUs that have it without AMX (AMD Zen 4 / 5, Intel Cooper Lake), where the bf16 block (ops.cpp, pvt_block) runs
// its GEMMs on it. Called only where bf16_dot_available() (ops.cpp: the CPU reports AVX512-BF16 and the active ISA
// is AVX-512).
//
//   out[r, c] = Σ_k a_r[k'] · w[c][k]  (+ bias[c])  (+ residual[r, c]),  fp32 sums and output,
//
// a bf16 rows, k' as in packed_gemm.h (segments, for the stride-s conv), the weight packed in pairs of k
// (ops.pack_weight_pairs, pvtv2/packing.h): (ceil(N / 64), K / 2, 64, 2) bf16, zero past N, K even. For a pair of
// k, one 64-byte load gives 16 columns' two weights, and one 32-bit broadcast a row's two values: each vdpbf16ps
// does 32 multiply-adds where fp32's FMA does 16. The register tile and the order of the loops are packed_gemm.h's
// (6 rows × 64 columns, 24 accumulators; chunks of rows sweeping the column blocks). Products of bf16 values are
// exact in fp32; the sums round as vdpbf16ps does (round to nearest even, denormals flushed), not in the order of
// the fp32 GEMM, so results agree with an fp32 GEMM on the same bf16 values to fp32 rounding, not bit for bit.
// Every shared header before the target pragma (why: cpu_kernels.h, "ISA files").
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "cpu_kernels.h"
#include "pvtv2/packing.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512bf16,fma")
#include <immintrin.h>
#endif

namespace pvtv2 {
namespace cpu {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

constexpr int kW = 16;                                   // fp32 lanes
constexpr int kBlock = static_cast<int>(kPackBlock);     // columns per packed block
constexpr int kRows = 6;                                 // packed_gemm_tile_rows() on AVX-512
constexpr int kPrefetchPairs = 16;                       // 4 KB ahead in a block's weights, as packed_gemm.h

inline void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store(uint16_t* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
inline void store1(float* p, float v) { *p = v; }
inline void store1(uint16_t* p, float v) { *p = round_bf16_bits(v); }  // the columns past the vectors
// A residual of fp32 values or of bf16 ones (widened exactly).
inline __m512 load_res(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_res(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline float res1(const float* p) { return *p; }
inline float res1(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Rows a[0..R) × nc (<= NV·16) columns from `col` of one packed block pk ((K / 2, 64, 2) bf16 as uint32 pairs); out
// fp32, or bf16 (O = uint16_t: the sums rounded once, as vcvtneps2bf16 does); the residual fp32 or bf16 (Rs).
template <int NV, int R, typename O, typename Rs>
void tile(const uint16_t* const* a, int64_t segs, int64_t seg_pairs, int64_t seg_stride, const uint32_t* pk,
          int64_t col, const float* bias, const Rs* residual, int64_t ldr, O* out, int64_t ldo, int64_t nc) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t g = 0; g < segs; ++g) {
    const uint32_t* wk = pk + g * seg_pairs * kBlock + col;
    const uint32_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = reinterpret_cast<const uint32_t*>(a[r] + g * seg_stride);
    for (int64_t t = 0; t < seg_pairs; ++t) {
      __m512bh w[NV];
      for (int c = 0; c < NV * kW; c += kW) __builtin_prefetch(wk + (t + kPrefetchPairs) * kBlock + c, 0, 3);
      for (int v = 0; v < NV; ++v) w[v] = (__m512bh)_mm512_loadu_si512(wk + t * kBlock + v * kW);
      for (int r = 0; r < R; ++r) {
        uint32_t pair;
        std::memcpy(&pair, rows[r] + t, sizeof(pair));
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xb, w[v]);
      }
    }
  }
  if (nc == NV * kW) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        __m512 y = acc[r][v];
        if (bias) y = _mm512_add_ps(y, _mm512_loadu_ps(bias + v * kW));
        if (residual) y = _mm512_add_ps(y, load_res(residual + r * ldr + v * kW));
        store(out + r * ldo + v * kW, y);
      }
    return;
  }
  alignas(64) float tmp[NV * kW];  // the columns past N in a last block: through a buffer
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) _mm512_store_ps(tmp + v * kW, acc[r][v]);
    for (int64_t c = 0; c < nc; ++c) {
      float y = tmp[c];
      if (bias) y += bias[c];
      if (residual) y += res1(residual + r * ldr + c);
      store1(out + r * ldo + c, y);
    }
  }
}

// tile<NV, np> for a runtime np in [1, kRows].
template <int NV, typename O, typename Rs, int R = kRows>
void rows_tile(const uint16_t* const* a, int np, int64_t segs, int64_t seg_pairs, int64_t seg_stride,
               const uint32_t* pk, int64_t col, const float* bias, const Rs* residual, int64_t ldr, O* out,
               int64_t ldo, int64_t nc) {
  if constexpr (R > 1) {
    if (np < R) {
      rows_tile<NV, O, Rs, R - 1>(a, np, segs, seg_pairs, seg_stride, pk, col, bias, residual, ldr, out, ldo, nc);
      return;
    }
  }
  tile<NV, R, O, Rs>(a, segs, seg_pairs, seg_stride, pk, col, bias, residual, ldr, out, ldo, nc);
}

// Rows row_ptr(r) (segs segments of 2·seg_pairs values, seg_stride values apart) × the column blocks [cb0, cb1), on
// the calling thread: packed_gemm.h's sweep.
template <typename RowPtr, typename O, typename Rs>
void sweep(const RowPtr& row_ptr, int64_t n_rows, int64_t segs, int64_t seg_pairs, int64_t seg_stride,
           const uint16_t* packed, int64_t N, const float* bias, const Rs* residual, int64_t ldr, O* out,
           int64_t ldo, int64_t cb0, int64_t cb1) {
  const int64_t K2 = segs * seg_pairs;  // pairs of k
  const int64_t chunk_rows = gemm_chunk_rows(n_rows, kRows);
  for (int64_t c0 = 0; c0 < n_rows; c0 += chunk_rows) {
    const int64_t c1 = std::min(c0 + chunk_rows, n_rows);
    for (int64_t cb = cb0; cb < cb1; ++cb) {
      const uint32_t* pk = reinterpret_cast<const uint32_t*>(packed) + cb * K2 * kBlock;
      for (int64_t r0 = c0; r0 < c1; r0 += kRows) {
        const int np = static_cast<int>(std::min<int64_t>(c1 - r0, kRows));
        const uint16_t* arows[kRows] = {};
        for (int r = 0; r < np; ++r) arows[r] = row_ptr(r0 + r);
        const Rs* res = residual ? residual + r0 * ldr : nullptr;
        for (int64_t col = 0; col < kBlock; col += 4 * kW) {
          const int64_t n0 = cb * kBlock + col;
          if (n0 >= N) break;
          const int64_t nc = std::min<int64_t>(N - n0, 4 * kW);
          const float* b = bias ? bias + n0 : nullptr;
          const Rs* rs = res ? res + n0 : nullptr;
          O* o = out + r0 * ldo + n0;
          if (nc <= 2 * kW)
            rows_tile<2, O, Rs>(arows, np, segs, seg_pairs, seg_stride, pk, col, b, rs, ldr, o, ldo, nc);
          else
            rows_tile<4, O, Rs>(arows, np, segs, seg_pairs, seg_stride, pk, col, b, rs, ldr, o, ldo, nc);
        }
      }
    }
  }
}

template <typename O, typename Rs>
void linear(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed, int64_t N, const float* bias,
            const Rs* residual, int64_t ldr, O* out, int64_t ldo) {
  const uint16_t* ap = reinterpret_cast<const uint16_t*>(a);
  const uint16_t* pk = reinterpret_cast<const uint16_t*>(packed);
  // split_gemm sizes the weight in fp32 values: K / 2 of them per column is the bf16 weight's size.
  split_gemm(rows, pack_blocks(N), K / 2, [&](int64_t r0, int64_t r1, int64_t cb0, int64_t cb1) {
    const uint16_t* base = ap + r0 * lda;
    sweep([base, lda](int64_t r) { return base + r * lda; }, r1 - r0, 1, K / 2, 0, pk, N, bias,
          residual ? residual + r0 * ldr : nullptr, ldr, out + r0 * ldo, ldo, cb0, cb1);
  });
}

}  // namespace

void packed_linear_bf16(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed, int64_t N,
                        const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo) {
  linear(a, lda, rows, K, packed, N, bias, residual, ldr, out, ldo);
}

void packed_linear_bf16(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed, int64_t N,
                        const float* bias, const float* residual, int64_t ldr, bf16* out, int64_t ldo) {
  linear(a, lda, rows, K, packed, N, bias, residual, ldr, reinterpret_cast<uint16_t*>(out), ldo);
}

void packed_linear_bf16_bf16_residual(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed,
                                      int64_t N, const float* bias, const bf16* residual, int64_t ldr, float* out,
                                      int64_t ldo) {
  linear(a, lda, rows, K, packed, N, bias, reinterpret_cast<const uint16_t*>(residual), ldr, out, ldo);
}

void token_conv_bf16(const bf16* x, const bf16* packed, const float* bias, float* out, int64_t B, int64_t height,
                     int64_t width, int64_t ci, int64_t co, int64_t k, int64_t s) {
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x);
  const uint16_t* pk = reinterpret_cast<const uint16_t*>(packed);
  const int64_t wo = conv_out(width, k, s), m = conv_out(height, k, s) * wo;
  split_gemm(B * m, pack_blocks(co), k * k * ci / 2, [&](int64_t r0, int64_t r1, int64_t cb0, int64_t cb1) {
    for (int64_t img = r0 / m; img * m < r1; ++img) {
      const int64_t p0 = std::max(r0, img * m) - img * m, p1 = std::min(r1, (img + 1) * m) - img * m;
      const uint16_t* xi = xp + img * height * width * ci;
      // A pixel's window: k kernel rows of k·ci contiguous values, one map row apart.
      const auto window = [=](int64_t r) {
        const int64_t p = p0 + r, i = p / wo, j = p % wo;
        return xi + (i * s * width + j * s) * ci;
      };
      sweep(window, p1 - p0, k, k * ci / 2, width * ci, pk, co, bias, static_cast<const float*>(nullptr), 0,
            out + (img * m + p0) * co, co,
            cb0, cb1);
    }
  });
}
#else
void packed_linear_bf16(const bf16*, int64_t, int64_t, int64_t, const bf16*, int64_t, const float*, const float*,
                        int64_t, float*, int64_t) {
  TORCH_CHECK(false, "the bf16 packed GEMM needs an x86-64 CPU with AVX512-BF16");
}
void packed_linear_bf16(const bf16*, int64_t, int64_t, int64_t, const bf16*, int64_t, const float*, const float*,
                        int64_t, bf16*, int64_t) {
  TORCH_CHECK(false, "the bf16 packed GEMM needs an x86-64 CPU with AVX512-BF16");
}
void packed_linear_bf16_bf16_residual(const bf16*, int64_t, int64_t, int64_t, const bf16*, int64_t, const float*,
                                      const bf16*, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "the bf16 packed GEMM needs an x86-64 CPU with AVX512-BF16");
}
void token_conv_bf16(const bf16*, const bf16*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                     int64_t, int64_t) {
  TORCH_CHECK(false, "the bf16 packed GEMM needs an x86-64 CPU with AVX512-BF16");
}
#endif

}  // namespace cpu
}  // namespace pvtv2
