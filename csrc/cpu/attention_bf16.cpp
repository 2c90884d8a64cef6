// Spatial-reduction attention on bf16 q, k, v with AVX512-BF16's dot product (vdpbf16ps), for the bf16 block
// (ops.cpp, pvt_block on weights packed in pairs) on CPUs without AMX. attention.h's flash schedule (tasks of 48
// query rows, chunks of keys whose K and V stay in L1, 12 × 32 score tiles, an online softmax on base-2 exponentials
// in fp32), with both products on pairs:
//   scores: K packed per head as kt[M/16][D/2][16][2] (16 keys' channel pairs side by side), a query row's channel
//           pair broadcast as 32 bits; the sums (fp32) scaled by scale·log2(e) afterwards, so q is not rounded again;
//   P·V:    the probabilities rounded to bf16 (as SDPA's bf16 kernels do), V packed as vp[M/2][Dp][2] (pairs of
//           keys), a row's pair of probabilities broadcast as 32 bits.
// Each vdpbf16ps does 32 multiply-adds where attention.h's fp32 FMA does 16. The row sums are the fp32
// probabilities'. D must be even (PVTv2's heads are 32 or 64 wide).
// Every shared header before the target pragma (why: cpu_kernels.h, "ISA files").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstring>

#include "cpu_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512bf16,fma")
#include <immintrin.h>
#endif

namespace pvtv2 {
namespace cpu {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

constexpr int W = 16;
constexpr int kRows = 12;
constexpr int kSubBlocks = 4;
constexpr int kTaskRows = kRows * kSubBlocks;
constexpr int kStrip = 128;

inline int64_t padded_dim(int64_t D) { return (D + W - 1) / W * W; }
// Keys per chunk: packed K and V of a chunk (2·KC·D bf16) at most 32 KB; a multiple of the 2·W-key score tile.
inline int64_t chunk(int64_t D) {
  const int64_t kc = (int64_t{8192} / (D > 0 ? D : 1)) / (2 * W) * (2 * W);
  return kc < 2 * W ? 2 * W : kc > kStrip ? kStrip : kc;
}
// Packed K and V of one head, in uint16: kt (blocks·W·D) then vp (blocks·W·Dp), keys padded to whole blocks.
inline int64_t packed_elems(int64_t M, int64_t D) {
  const int64_t keys = (M + W - 1) / W * W;
  return keys * D + keys * padded_dim(D);
}

__m512 exp2v(__m512 x) {  // attention.h's exp2 (kExp2P; 0 below 2^-125, NaN kept)
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_NLT_UQ);
  x = _mm512_max_ps(_mm512_set1_ps(-125.0f), x);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kExp2P[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2P[i]));
  return _mm512_maskz_scalef_ps(keep, _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f)), n);
}

float reduce_max(__m512 a) {
  alignas(64) float t[W];
  _mm512_store_ps(t, a);
  float m = t[0];
  for (int i = 1; i < W; ++i) m = t[i] > m || t[i] != t[i] ? t[i] : m;
  return m;
}
float reduce_add(__m512 a) {
  alignas(64) float t[W];
  _mm512_store_ps(t, a);
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += t[i];
  return s;
}

// kt[b][d/2][l][2] = k[b·W + l][d, d + 1], vp[j/2][c][2] = v[j, j + 1][c] (zero past M and D).
void pack(const uint16_t* k, int64_t k_stride, const uint16_t* v, int64_t v_stride, int64_t M, int64_t D,
          uint16_t* kt) {
  const int64_t dp = padded_dim(D), blocks = (M + W - 1) / W, keys = blocks * W;
  uint16_t* vp = kt + keys * D;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t d2 = 0; d2 < D / 2; ++d2)
      for (int l = 0; l < W; ++l) {
        const int64_t j = b * W + l;
        uint16_t* o = kt + ((b * (D / 2) + d2) * W + l) * 2;
        o[0] = j < M ? k[j * k_stride + 2 * d2] : 0;
        o[1] = j < M ? k[j * k_stride + 2 * d2 + 1] : 0;
      }
  for (int64_t j2 = 0; j2 < keys / 2; ++j2)
    for (int64_t c = 0; c < dp; ++c)
      for (int e = 0; e < 2; ++e) {
        const int64_t j = 2 * j2 + e;
        vp[(j2 * dp + c) * 2 + e] = j < M && c < D ? v[j * v_stride + c] : 0;
      }
}

// s[r][0, NV·W) = qscale · q_r · (NV·W keys), mx[r] = max(mx[r], those), for kRows query rows (pairs q2[r]).
template <int NV>
inline void score_tile(const uint32_t* const* q2, int64_t D2, const uint32_t* kt, float qscale, float* s, float* mx,
                       const float* tail) {
  __m512 acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t d2 = 0; d2 < D2; ++d2) {
    __m512bh kv[NV];
    for (int t = 0; t < NV; ++t) kv[t] = (__m512bh)_mm512_loadu_si512(kt + (t * D2 + d2) * W);
    for (int r = 0; r < kRows; ++r) {
      const __m512bh qb = (__m512bh)_mm512_set1_epi32(static_cast<int>(q2[r][d2]));
      for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], qb, kv[t]);
    }
  }
  const __m512 sc = _mm512_set1_ps(qscale);
  for (int r = 0; r < kRows; ++r) {
    __m512 m = _mm512_loadu_ps(mx + r * W);
    for (int t = 0; t < NV; ++t) {
      __m512 y = _mm512_mul_ps(acc[r][t], sc);
      if (tail && t == NV - 1) y = _mm512_add_ps(y, _mm512_loadu_ps(tail));
      _mm512_storeu_ps(s + r * kStrip + t * W, y);
      m = _mm512_max_ps(m, y);  // the score where either is NaN (max returns its 2nd operand): NaN propagates
    }
    _mm512_storeu_ps(mx + r * W, m);
  }
}

// ob[r][c, c + NV·W) = alpha[r]·ob[r][...] + Σ_j p[r][j]·vp[j][...], for RT rows and n2 key pairs.
template <int NV, int RT>
inline void pv_tile(const uint16_t* p16, const uint32_t* vp, int64_t dp, int64_t n2, const float* alpha, float* ob) {
  __m512 acc[RT][NV];
  for (int r = 0; r < RT; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_mul_ps(a, _mm512_loadu_ps(ob + r * dp + t * W));
  }
  for (int64_t j2 = 0; j2 < n2; ++j2) {
    __m512bh vv[NV];
    for (int t = 0; t < NV; ++t) vv[t] = (__m512bh)_mm512_loadu_si512(vp + j2 * dp + t * W);
    for (int r = 0; r < RT; ++r) {
      uint32_t pair;
      std::memcpy(&pair, p16 + r * kStrip + 2 * j2, sizeof(pair));
      const __m512bh pb = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      for (int t = 0; t < NV; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], pb, vv[t]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int t = 0; t < NV; ++t) _mm512_storeu_ps(ob + r * dp + t * W, acc[r][t]);
}

// Up to kTaskRows query rows of one head (q rows q_stride apart, bf16) → out rows (bf16), on its packed K and V.
void rows(const uint16_t* q, int64_t q_stride, int64_t n_rows, const uint16_t* packed, int64_t M, int64_t D,
          float qscale, uint16_t* out, int64_t out_stride, float* scratch, uint16_t* p16) {
  const int64_t dp = padded_dim(D), kc = chunk(D), blocks = (M + W - 1) / W, keys = blocks * W, D2 = D / 2;
  const uint32_t* kt = reinterpret_cast<const uint32_t*>(packed);
  const uint32_t* vp = reinterpret_cast<const uint32_t*>(packed + keys * D);
  const int groups = static_cast<int>((n_rows + kRows - 1) / kRows);
  float* ob = scratch;                // (groups·kRows, dp) unnormalised outputs
  float* lsum = ob + kTaskRows * dp;  // (groups·kRows, W) row sums
  float* mrow = lsum + kTaskRows * W;  // (groups·kRows) row maxima so far
  float* s = mrow + kTaskRows;        // (kRows, kStrip) one group's scores, then probabilities
  float* mx = s + kRows * kStrip;     // (kRows, W)
  alignas(64) static thread_local uint32_t zero_row[64] = {};  // D <= 128 (checked by attention_bf16)
  for (int64_t r = 0; r < groups * kRows; ++r) {
    for (int64_t d = 0; d < dp; ++d) ob[r * dp + d] = 0.0f;
    for (int l = 0; l < W; ++l) lsum[r * W + l] = 0.0f;
    mrow[r] = -INFINITY;
  }
  for (int64_t j0 = 0; j0 < M; j0 += kc) {
    const int64_t n = M - j0 < kc ? M - j0 : kc;
    const int64_t nb = (n + W - 1) / W, npad = nb * W;
    const uint32_t* ktc = kt + (j0 / W) * D2 * W;
    alignas(64) float tail[W];
    for (int l = 0; l < W; ++l) tail[l] = (nb - 1) * W + l < n ? 0.0f : -INFINITY;
    const float* last = n < npad ? tail : nullptr;
    for (int g = 0; g < groups; ++g) {
      const uint32_t* q2[kRows];
      for (int r = 0; r < kRows; ++r) {
        const int64_t row = g * kRows + r;
        // rows past n_rows score against zeros (their outputs are never written)
        q2[r] = row < n_rows ? reinterpret_cast<const uint32_t*>(q + row * q_stride) : zero_row;
      }
      for (int i = 0; i < kRows * W; ++i) mx[i] = -INFINITY;
      int64_t b = 0;
      for (; b + 2 <= nb; b += 2)
        score_tile<2>(q2, D2, ktc + b * D2 * W, qscale, s + b * W, mx, b + 2 == nb ? last : nullptr);
      if (b < nb) score_tile<1>(q2, D2, ktc + b * D2 * W, qscale, s + b * W, mx, last);
      alignas(64) float m_old[16], m_new[16], alpha[16];
      for (int r = 0; r < 16; ++r) m_old[r] = m_new[r] = 0.0f;
      for (int r = 0; r < kRows; ++r) {
        const float chunk_max = reduce_max(_mm512_loadu_ps(mx + r * W));
        float& m = mrow[g * kRows + r];
        m_old[r] = m;
        m = m_new[r] = chunk_max > m ? chunk_max : m;
      }
      _mm512_store_ps(alpha, exp2v(_mm512_sub_ps(_mm512_load_ps(m_old), _mm512_load_ps(m_new))));
      for (int r = 0; r < kRows; ++r) {
        float* sr = s + r * kStrip;
        uint16_t* pr = p16 + r * kStrip;
        const __m512 mv = _mm512_set1_ps(mrow[g * kRows + r]);
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < npad; j += W) {
          const __m512 p = exp2v(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mv));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), (__m256i)_mm512_cvtneps_pbh(p));
          sum = _mm512_add_ps(sum, p);
        }
        float* lr = lsum + (g * kRows + r) * W;
        _mm512_storeu_ps(lr, _mm512_fmadd_ps(_mm512_loadu_ps(lr), _mm512_set1_ps(alpha[r]), sum));
      }
      float* og = ob + g * kRows * dp;
      const uint32_t* vpc = vp + (j0 / 2) * dp;
      const int64_t n2 = npad / 2;
      int64_t c = 0;
      for (; c + 4 * W <= dp; c += 4 * W)
        for (int r0 = 0; r0 < kRows; r0 += kRows / 2)
          pv_tile<4, kRows / 2>(p16 + r0 * kStrip, vpc + c, dp, n2, alpha + r0, og + r0 * dp + c);
      for (; c + 2 * W <= dp; c += 2 * W) pv_tile<2, kRows>(p16, vpc + c, dp, n2, alpha, og + c);
      if (c < dp) pv_tile<1, kRows>(p16, vpc + c, dp, n2, alpha, og + c);
    }
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    const float inv = 1.0f / reduce_add(_mm512_loadu_ps(lsum + r * W));
    const __m512 vinv = _mm512_set1_ps(inv);
    const float* o = ob + r * dp;
    uint16_t* y = out + r * out_stride;
    int64_t d = 0;
    for (; d + W <= D; d += W)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + d),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o + d), vinv)));
    for (; d < D; ++d) y[d] = round_bf16_bits(o[d] * inv);
  }
}

}  // namespace

void attention_bf16(const bf16* q, int64_t q_img, int64_t q_row, const bf16* k, int64_t k_img, int64_t k_row,
                    const bf16* v, int64_t v_img, int64_t v_row, bf16* out, int64_t out_img, int64_t out_row,
                    int64_t B, int64_t N, int64_t M, int64_t C, int64_t num_heads, double scale) {
  const int64_t D = C / num_heads, heads = B * num_heads, dp = padded_dim(D);
  TORCH_CHECK(D % 2 == 0 && D <= 128, "attention_bf16: head dims must be even and at most 128, got ", D);
  const int64_t per_head = packed_elems(M, D);
  const at::Tensor packed_t = at::empty({heads * per_head}, at::TensorOptions().dtype(at::kBFloat16));
  uint16_t* packed = reinterpret_cast<uint16_t*>(packed_t.data_ptr());
  const auto u16 = [](const bf16* p) { return reinterpret_cast<const uint16_t*>(p); };
  at::parallel_for(0, heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / num_heads, h = bh % num_heads;
      pack(u16(k) + b * k_img + h * D, k_row, u16(v) + b * v_img + h * D, v_row, M, D, packed + bh * per_head);
    }
  });
  const int64_t tasks = (N + kTaskRows - 1) / kTaskRows;
  const float qscale = static_cast<float>(scale * 1.4426950408889634);  // log2(e): the softmax is base 2
  const int64_t scratch_floats = kTaskRows * dp + kTaskRows * W + kTaskRows + kRows * kStrip + kRows * W;
  at::parallel_for(0, heads * tasks, 1, [&](int64_t t0, int64_t t1) {
    const at::Tensor scratch_t = at::empty({scratch_floats + kRows * kStrip / 2 + 16}, at::kFloat);
    float* scratch = scratch_t.data_ptr<float>();
    uint16_t* p16 = reinterpret_cast<uint16_t*>(scratch + scratch_floats);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / tasks, n0 = (t % tasks) * kTaskRows;
      const int64_t b = bh / num_heads, h = bh % num_heads;
      rows(u16(q) + b * q_img + n0 * q_row + h * D, q_row, std::min<int64_t>(kTaskRows, N - n0), packed + bh * per_head, M,
           D, qscale, reinterpret_cast<uint16_t*>(out) + b * out_img + n0 * out_row + h * D, out_row, scratch, p16);
    }
  });
}
#else
void attention_bf16(const bf16*, int64_t, int64_t, const bf16*, int64_t, int64_t, const bf16*, int64_t, int64_t,
                    bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double) {
  TORCH_CHECK(false, "attention_bf16 needs an x86-64 CPU with AVX512-BF16");
}
#endif

}  // namespace cpu
}  // namespace pvtv2
