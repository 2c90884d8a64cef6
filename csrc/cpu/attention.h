// Spatial-reduction attention on CPU, softmax(q kᵀ · scale) v for one (image, head) at a time, flash-style: the
// N×M scores never exist beyond a register tile and an L1-sized strip. Written over a vector policy V (see
// kernels.h) and compiled per ISA like the other CPU kernels (included by kernels_<isa>.cpp after kernels.h).
//
// Beyond kernels.h's policy, V provides: max(a, b) (b where either is NaN, so NaN scores propagate), reduce_max and
// exp2(x) for x <= 0 (2^x to ~2e-7 relative; 0 below 2^-125, never a subnormal; NaN stays NaN).
//
// Layout, per (image, head) (attention_pack): K transposed into key blocks of kWidth, kt[M/W][D][W], so one vector
// load gives channel d of W keys; V as contiguous (M, Dp) rows, Dp = D rounded up to a multiple of kWidth (zero
// columns). fp32 q is read in place (strided rows; other types through a transposed fp32 copy), and the scores are
// scaled by scale·log2(e), so the softmax runs on exp2.
//
// One task (attention_rows) is up to kSubBlocks·kRows query rows. For each chunk of KC keys (K and V of the chunk:
// <= 32 KB, in L1 while the task's row groups reuse it), each group of kRows rows:
//   1. scores: a kRows × 2·kWidth register tile per step (24 zmm accumulators on AVX-512, 12 ymm on AVX2), written
//      to the strip s (kRows × kStrip floats, L1) with each row's running maximum kept as a vector;
//   2. online softmax: the row maximum m' = max(m, chunk max), p = 2^(s - m') in place, the row sum kept as a vector
//      (reduced once at the end), and alpha = 2^(m - m') for what was accumulated so far;
//   3. P·V: the output rows (fp32, in the task's scratch) scaled by alpha and accumulated in kRows × 2·kWidth
//      register tiles of channels (kRows / 2 × 4·kWidth where the head is that wide: half the broadcasts).
// Finally each row is divided by its sum. Horizontal reductions are done per row and chunk, independent across the
// rows of a group, so they overlap instead of serialising (measured: 2.0 -> 1.1 ns per score when reordered so).
//
// Why not PyTorch's SDPA: its CPU flash kernel runs both products through BLAS calls per block. Over 1024 keys the
// fused tiles measured 1.34-1.38x its speed at b0's 32-wide heads and 1.07-1.27x at b2's 64-wide heads, over 224²'s
// 49 keys 1.14-1.40x (bench/results/cpu_attention.md); in bf16 (AMX) SDPA wins, so "auto" keeps SDPA there
// (ops/sra_attention.py).
#pragma once

#include <math.h>
#include <stdint.h>

#include <type_traits>

#ifndef PVT_ISA
#error "define PVT_ISA before including attention.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

template <typename V>
struct Attention {
  static constexpr int W = V::kWidth;
  // Query rows per register tile: 2·kRows accumulators + 2 operands + 1 broadcast fit the ISA's register file.
  static constexpr int kRows = W >= 16 ? 12 : W >= 8 ? 6 : 4;  // even: P·V also runs kRows / 2 × 4 tiles
  static constexpr int kSubBlocks = 4;
  static constexpr int kTaskRows = kRows * kSubBlocks;
  static constexpr int kRowsPad = (kRows + W - 1) / W * W;

  // The score strip's row stride and the largest chunk: a compile-time constant, so a tile addresses its rows off
  // one pointer (a runtime stride measured slower), and 512 B rows (2 KB rows measured slower: L1 set conflicts).
  static constexpr int kStrip = 128;

  static int64_t padded_dim(int64_t D) { return (D + W - 1) / W * W; }
  // Keys per chunk: packed K and V of a chunk (2·KC·D floats) at most 32 KB; a multiple of the 2·W-key score tile.
  static int64_t chunk(int64_t D) {
    const int64_t kc = (int64_t{4096} / (D > 0 ? D : 1)) / (2 * W) * (2 * W);
    return kc < 2 * W ? 2 * W : kc > kStrip ? kStrip : kc;
  }
  static int64_t packed_floats(int64_t M, int64_t D) { return (M + W - 1) / W * W * D + M * padded_dim(D); }
  static int64_t scratch_floats(int64_t D) {
    const int64_t dp = padded_dim(D);
    return 2 * kTaskRows * dp + kTaskRows * W + kTaskRows + kRows * kStrip + kRows * W;
  }

  // kt[M/W][D][W] (zero for the keys past M) and vp (M, Dp) (zero channels past D) from strided rows of T.
  template <typename T>
  static void pack(const T* k, int64_t k_stride, const T* v, int64_t v_stride, int64_t M, int64_t D, float* kt) {
    const int64_t dp = padded_dim(D), blocks = (M + W - 1) / W;
    float* vp = kt + blocks * W * D;
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t d = 0; d < D; ++d)
        for (int l = 0; l < W; ++l) {
          const int64_t j = b * W + l;
          kt[(b * D + d) * W + l] = j < M ? scalar_elem(k[j * k_stride + d]) : 0.0f;
        }
    for (int64_t j = 0; j < M; ++j)
      for (int64_t d = 0; d < dp; ++d) vp[j * dp + d] = d < D ? scalar_elem(v[j * v_stride + d]) : 0.0f;
  }

  // s[r][0, NV·W) = qscale · q_r · (NV·W keys of kt), and mx[r] = max(mx[r], those scores), for the kRows rows
  // q(r, d) gives (fp32 rows read in place, or a transposed copy: see rows).
  // tail (W floats, 0 or -inf) is added to the last vector: -inf for the zero-padded keys past M, so they neither
  // count in the maximum nor weigh in the softmax (2^-inf = 0).
  template <int NV, typename Q>
  static inline void score_tile(const Q& q, int64_t D, float qscale, const float* __restrict__ kt,
                                float* __restrict__ s, float* __restrict__ mx, const float* __restrict__ tail) {
    using reg = typename V::reg;
    reg acc[kRows][NV];
    for (int r = 0; r < kRows; ++r)
      for (int t = 0; t < NV; ++t) acc[r][t] = V::zero();
    for (int64_t d = 0; d < D; ++d) {
      reg kv[NV];
      for (int t = 0; t < NV; ++t) kv[t] = V::load(kt + (t * D + d) * W);
      for (int r = 0; r < kRows; ++r) {
        const reg qv = V::set1(q(r, d));
        for (int t = 0; t < NV; ++t) acc[r][t] = V::fmadd(qv, kv[t], acc[r][t]);
      }
    }
    const reg scale = V::set1(qscale);
    for (int r = 0; r < kRows; ++r)
      for (int t = 0; t < NV; ++t) acc[r][t] = V::mul(acc[r][t], scale);
    if (tail) {
      const reg bias = V::load(tail);
      for (int r = 0; r < kRows; ++r) acc[r][NV - 1] = V::add(acc[r][NV - 1], bias);
    }
    for (int r = 0; r < kRows; ++r) {
      reg m = V::load(mx + r * W);
      for (int t = 0; t < NV; ++t) {
        V::store(s + r * kStrip + t * W, acc[r][t]);
        m = V::max(m, acc[r][t]);
      }
      V::store(mx + r * W, m);
    }
  }

  // ob[r][c, c + NV·W) = alpha[r]·ob[r][...] + Σ_j p[r][j]·vp[j][...], for RT rows and n keys.
  template <int NV, int RT = kRows>
  static inline void pv_tile(const float* __restrict__ p, const float* __restrict__ vp, int64_t dp,
                             int64_t n, const float* __restrict__ alpha, float* __restrict__ ob) {
    using reg = typename V::reg;
    reg acc[RT][NV];
    for (int r = 0; r < RT; ++r) {
      const reg a = V::set1(alpha[r]);
      for (int t = 0; t < NV; ++t) acc[r][t] = V::mul(a, V::load(ob + r * dp + t * W));
    }
    for (int64_t j = 0; j < n; ++j) {
      reg vv[NV];
      for (int t = 0; t < NV; ++t) vv[t] = V::load(vp + j * dp + t * W);
      for (int r = 0; r < RT; ++r) {
        const reg pr = V::set1(p[r * kStrip + j]);
        for (int t = 0; t < NV; ++t) acc[r][t] = V::fmadd(pr, vv[t], acc[r][t]);
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int t = 0; t < NV; ++t) V::store(ob + r * dp + t * W, acc[r][t]);
  }

  // Up to kTaskRows query rows (row stride q_stride, in elements) of one head against its packed keys and values;
  // out rows likewise. qscale = scale·log2(e).
  template <typename T>
  static void rows(const T* q, int64_t q_stride, int64_t n_rows, const float* kt, int64_t M, int64_t D, float qscale,
                   T* out, int64_t out_stride, float* scratch) {
    using reg = typename V::reg;
    const int64_t dp = padded_dim(D), kc = chunk(D), blocks = (M + W - 1) / W;
    const float* vp = kt + blocks * W * D;
    const int groups = static_cast<int>((n_rows + kRows - 1) / kRows);
    // fp32 queries are read in place, kRows row pointers per group (rows past n_rows read zeros), as the GEMM tile
    // reads its rows: transposing them first cost ~15% of a task over 49 keys. Others are converted once into qt,
    // groups × (D, kRows) transposed (zero past n_rows). The scale multiplies the scores (score_tile).
    constexpr bool kInPlace = std::is_same_v<T, float>;
    float* qt = scratch;                    // the transposed queries, or (fp32) D zeros
    float* ob = qt + kTaskRows * dp;        // (groups·kRows, dp) unnormalised outputs
    float* lsum = ob + kTaskRows * dp;      // (groups·kRows, W) row sums, one vector per row
    float* mrow = lsum + kTaskRows * W;     // (groups·kRows) row maxima so far
    float* s = mrow + kTaskRows;            // (kRows, kStrip) one group's scores, then probabilities
    float* mx = s + kRows * kStrip;         // (kRows, W) the group's chunk maxima, per lane
    if constexpr (kInPlace) {
      for (int64_t d = 0; d < D; ++d) qt[d] = 0.0f;
    }
    for (int64_t r = 0; r < groups * kRows; ++r) {
      if constexpr (!kInPlace) {
        float* qg = qt + r / kRows * kRows * D + r % kRows;
        for (int64_t d = 0; d < D; ++d) qg[d * kRows] = r < n_rows ? scalar_elem(q[r * q_stride + d]) : 0.0f;
      }
      for (int64_t d = 0; d < dp; ++d) ob[r * dp + d] = 0.0f;
      for (int l = 0; l < W; ++l) lsum[r * W + l] = 0.0f;
      mrow[r] = -INFINITY;
    }
    for (int64_t j0 = 0; j0 < M; j0 += kc) {
      const int64_t n = M - j0 < kc ? M - j0 : kc;
      const int64_t nb = (n + W - 1) / W, npad = nb * W;
      const float* ktc = kt + (j0 / W) * D * W;
      float tail[W];  // 0 for the keys of the chunk's last block, -inf past them
      for (int l = 0; l < W; ++l) tail[l] = (nb - 1) * W + l < n ? 0.0f : -INFINITY;
      const float* last = n < npad ? tail : nullptr;
      for (int g = 0; g < groups; ++g) {
        for (int i = 0; i < kRows * W; ++i) mx[i] = -INFINITY;
        const auto scores = [&](const auto& qa) {
          int64_t b = 0;
          for (; b + 2 <= nb; b += 2)
            score_tile<2>(qa, D, qscale, ktc + b * D * W, s + b * W, mx, b + 2 == nb ? last : nullptr);
          if (b < nb) score_tile<1>(qa, D, qscale, ktc + b * D * W, s + b * W, mx, last);
        };
        if constexpr (kInPlace) {
          const float* rows_g[kRows];
          for (int r = 0; r < kRows; ++r) {
            const int64_t row = g * kRows + r;
            rows_g[r] = row < n_rows ? q + row * q_stride : qt;
          }
          scores([&](int r, int64_t d) { return rows_g[r][d]; });
        } else {
          const float* qg = qt + g * kRows * D;
          scores([qg](int r, int64_t d) { return qg[d * kRows + r]; });
        }
        // new row maxima, then alpha = 2^(m_old - m_new) for all rows of the group at once
        float m_old[kRowsPad], m_new[kRowsPad], alpha[kRowsPad];
        for (int r = 0; r < kRowsPad; ++r) m_old[r] = m_new[r] = 0.0f;
        for (int r = 0; r < kRows; ++r) {
          const float chunk_max = V::reduce_max(V::load(mx + r * W));
          float& m = mrow[g * kRows + r];
          m_old[r] = m;
          m = m_new[r] = chunk_max > m ? chunk_max : m;  // a NaN maximum keeps m: the NaN scores still propagate
        }
        for (int r = 0; r < kRowsPad; r += W)
          V::store(alpha + r, V::exp2(V::sub(V::load(m_old + r), V::load(m_new + r))));
        for (int r = 0; r < kRows; ++r) {
          float* sr = s + r * kStrip;
          const reg mv = V::set1(mrow[g * kRows + r]);
          reg sum0 = V::zero(), sum1 = V::zero();
          int64_t j = 0;
          for (; j + 2 * W <= npad; j += 2 * W) {
            const reg p0 = V::exp2(V::sub(V::load(sr + j), mv));
            const reg p1 = V::exp2(V::sub(V::load(sr + j + W), mv));
            V::store(sr + j, p0);
            V::store(sr + j + W, p1);
            sum0 = V::add(sum0, p0);
            sum1 = V::add(sum1, p1);
          }
          for (; j < npad; j += W) {
            const reg p0 = V::exp2(V::sub(V::load(sr + j), mv));
            V::store(sr + j, p0);
            sum0 = V::add(sum0, p0);
          }
          float* lr = lsum + (g * kRows + r) * W;
          V::store(lr, V::fmadd(V::load(lr), V::set1(alpha[r]), V::add(sum0, sum1)));
        }
        float* og = ob + g * kRows * dp;
        int64_t c = 0;
        // 4·W channels at a time for half the rows where the head is that wide: half the probability broadcasts
        for (; c + 4 * W <= dp; c += 4 * W)
          for (int r0 = 0; r0 < kRows; r0 += kRows / 2)
            pv_tile<4, kRows / 2>(s + r0 * kStrip, vp + j0 * dp + c, dp, n, alpha + r0, og + r0 * dp + c);
        for (; c + 2 * W <= dp; c += 2 * W) pv_tile<2>(s, vp + j0 * dp + c, dp, n, alpha, og + c);
        if (c < dp) pv_tile<1>(s, vp + j0 * dp + c, dp, n, alpha, og + c);
      }
    }
    for (int64_t r = 0; r < n_rows; ++r) {
      const float inv = 1.0f / V::reduce_add(V::load(lsum + r * W));
      const reg vinv = V::set1(inv);
      const float* o = ob + r * dp;
      T* y = out + r * out_stride;
      const int64_t vec_end = D - D % W;
      for (int64_t d = 0; d < vec_end; d += W) store_elem<V>(y + d, V::mul(V::load(o + d), vinv));
      for (int64_t d = vec_end; d < D; ++d) store_scalar(y + d, o[d] * inv);
    }
  }
};

template <typename V>
static inline void attention_pack_impl(const void* k, int64_t k_stride, const void* v, int64_t v_stride, Elem elem,
                                       int64_t M, int64_t D, float* packed) {
  if (elem == Elem::kBF16)
    Attention<V>::pack(static_cast<const bf16*>(k), k_stride, static_cast<const bf16*>(v), v_stride, M, D, packed);
  else
    Attention<V>::pack(static_cast<const float*>(k), k_stride, static_cast<const float*>(v), v_stride, M, D, packed);
}

template <typename V>
static inline void attention_rows_impl(const void* q, int64_t q_stride, Elem elem, int64_t n_rows,
                                       const float* packed, int64_t M, int64_t D, float qscale, void* out,
                                       int64_t out_stride, float* scratch) {
  if (elem == Elem::kBF16)
    Attention<V>::rows(static_cast<const bf16*>(q), q_stride, n_rows, packed, M, D, qscale, static_cast<bf16*>(out),
                       out_stride, scratch);
  else
    Attention<V>::rows(static_cast<const float*>(q), q_stride, n_rows, packed, M, D, qscale,
                       static_cast<float*>(out), out_stride, scratch);
}

template <typename V>
static inline AttentionGeometry attention_geometry_impl(int64_t M, int64_t D) {
  return {Attention<V>::kTaskRows, Attention<V>::packed_floats(M, D), Attention<V>::scratch_floats(D)};
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2
