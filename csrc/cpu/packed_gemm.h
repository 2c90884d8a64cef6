// fp32 GEMM on a prepacked weight, the register tile shared by the CPU kernels that multiply by a weight matrix
// (token_conv.h's spatial-reduction and patch-embedding convs, conv_ffn.cpp's fc1 / fc2 bands, ops.cpp's sra_layer projections). Written over
// a vector policy V (kernels.h) and compiled per ISA like the other CPU kernels.
//
//   out[r, c] = Σ_k a_r[k'] · packed[c / 64][k][c % 64]  (+ bias[c])  (+ residual[r, c]),  r < rows, c < N
//
// The packed weight (ops.pack_weight in Python, the one place that lays it out; pvtv2/packing.h): (ceil(N / 64), K,
// 64) fp32, zero past N, so a tile streams (part of) one contiguous block of 64 output channels. A row's K values are
// read in `segs` segments of `seg_len` contiguous values, `seg_stride` apart (k' = (k / seg_len)·seg_stride +
// k % seg_len): one segment for a linear, s segments (the s kernel rows of a window) for the stride-s conv, which so
// needs no im2col copy.
//
// A tile is up to kRows rows × kCols channels in registers; each k loads its kCols weights once and broadcasts one
// value per row (AVX-512: 6 rows × 64 channels, 24 accumulators). The sums run over k in order with one accumulator,
// then the bias, then the residual are added: (Σ + bias) + residual, the reference's order.
//
// Why not the BLAS: MKL's sgemm packs its operand again on every call (~15% of conv_ffn's band schedule, profiled)
// and adds the bias in a pass of its own. Against it, single-threaded inside conv_ffn's bands, and split over the
// threads in the attention layer's small GEMMs (ops.sra_layer, 49-16384 rows), this tile measured faster
// (bench/results/cpu_layers.md); conv_ffn's large whole-map GEMMs stay on MKL's threads.
#pragma once

#include <stdint.h>

#include <algorithm>

#include "pvtv2/packing.h"

#ifndef PVT_ISA
#error "define PVT_ISA before including packed_gemm.h"
#endif

namespace pvtv2 {
namespace cpu {
namespace PVT_ISA {

template <typename V>
struct PackedGemm {
  static constexpr int W = V::kWidth;
  static constexpr int kBlock = static_cast<int>(kPackBlock);  // the packing is ISA-independent
  // A tile is kRows rows × kCols = NV·W columns of one block: NV·kRows accumulators + NV weight vectors + 1 broadcast
  // within the register file (AVX-512: 6 × 4 + 5 of 32, the whole block; AVX2: 3 × 4 + 5 of 16, half a block, the
  // weights then partly as memory operands). On one AVX-512 core, 6 × 64 measured 1.1-1.4x 12 × 32 on the layer's
  // GEMMs (fewer loads per FMA: 10 per 24 rather than 14).
  static constexpr int NV = 4;
  static constexpr int kCols = NV * W;
  static constexpr int kRows = W >= 16 ? 6 : W >= 8 ? 3 : 1;
  // Software prefetch of the weights kPrefetchSteps values of k ahead (4 KB of a 64-column block: the page after the
  // one being read, where the hardware's streamers stop). A tile reads its block's (K, 64) weights front to back,
  // and the first tile of a chunk finds them cold in L3 or memory in a model's forward (one pass over 25-100 MB of
  // weights). On cold weights (a 64 MB rotation of copies, 2 threads, AVX-512, interleaved) this measured 1.07-1.18x
  // on the 49-196-row GEMMs of 224²'s last two stages and level (0.98-1.03x) on the larger-map ones; a prefetch
  // cannot fault, so reading past a block's (or the buffer's) end is harmless.
  static constexpr int kPrefetchSteps = 16;
  static constexpr int kLineFloats = 16;  // 64-byte cache lines
  static_assert(kBlock % kCols == 0, "a block is a whole number of tiles");

  // Rows a[0..R) (R <= kRows) × the nc (<= kCols) columns from `col` of one packed block `pk` (its (K, kBlock)
  // values, K = segs·seg_len); bias and residual (row stride ldr) start at that column and may be nullptr; out rows
  // ldo apart.
  // NVt = NV / 2 (half the columns, same rows): a block's last kCols / 2 columns or fewer (N = 32 at C = 32, the
  // tail of N = 160), which the full tile would run with half its accumulators idle and a scalar epilogue.
  // R < kRows: a chunk's last rows (49 tokens = 8 × 6 + 1) run only their own FMAs, where padding them to a whole
  // tile ran 6 rows' FMAs for one.
  template <int NVt, int R>
  static void tile(const float* const* a, int64_t segs, int64_t seg_len, int64_t seg_stride,
                   const float* __restrict__ pk, int64_t col, const float* __restrict__ bias,
                   const float* __restrict__ residual, int64_t ldr, float* __restrict__ out, int64_t ldo, int64_t nc) {
    using reg = typename V::reg;
    constexpr int NV = NVt, kCols = NVt * W;
    const float* row[R];
    for (int r = 0; r < R; ++r) row[r] = a[r];
    reg acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
    for (int64_t g = 0; g < segs; ++g) {
      const float* wk = pk + g * seg_len * kBlock + col;
      const int64_t off = g * seg_stride;
      for (int64_t t = 0; t < seg_len; ++t) {
        reg w[NV];
        for (int c = 0; c < kCols; c += kLineFloats) __builtin_prefetch(wk + (t + kPrefetchSteps) * kBlock + c, 0, 3);
        for (int v = 0; v < NV; ++v) w[v] = V::load(wk + t * kBlock + v * W);
        for (int r = 0; r < R; ++r) {
          const reg xb = V::set1(row[r][off + t]);
          for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(xb, w[v], acc[r][v]);
        }
      }
    }
    if (nc == kCols) {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
          reg y = acc[r][v];
          if (bias) y = V::add(y, V::load(bias + v * W));
          if (residual) y = V::add(y, V::load(residual + r * ldr + v * W));
          V::store(out + r * ldo + v * W, y);
        }
      return;
    }
    alignas(64) float tmp[kCols];  // the columns past N in a last block: through a buffer
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < NV; ++v) V::store(tmp + v * W, acc[r][v]);
      for (int64_t c = 0; c < nc; ++c) {
        float y = tmp[c];
        if (bias) y += bias[c];
        if (residual) y += residual[r * ldr + c];
        out[r * ldo + c] = y;
      }
    }
  }

  // Rows a[0..np) × every column of block cb (of N columns in all): its tiles side by side.
  static void block(const float* const* a, int np, int64_t segs, int64_t seg_len, int64_t seg_stride,
                    const float* packed, int64_t cb, int64_t N, const float* bias, const float* residual, int64_t ldr,
                    float* out, int64_t ldo) {
    const int64_t K = segs * seg_len;
    for (int64_t col = 0; col < kBlock; col += kCols) {
      const int64_t n0 = cb * kBlock + col;
      if (n0 >= N) break;
      const int64_t nc = N - n0 < kCols ? N - n0 : kCols;
      const float* pk = packed + cb * K * kBlock;
      if (nc <= kCols / 2 && NV % 2 == 0)
        rows_tile<NV / 2>(a, np, segs, seg_len, seg_stride, pk, col, bias ? bias + n0 : nullptr,
                          residual ? residual + n0 : nullptr, ldr, out + n0, ldo, nc);
      else
        rows_tile<NV>(a, np, segs, seg_len, seg_stride, pk, col, bias ? bias + n0 : nullptr,
                      residual ? residual + n0 : nullptr, ldr, out + n0, ldo, nc);
    }
  }

  // tile<NVt, np> for a runtime np in [1, kRows].
  template <int NVt, int R = kRows>
  static void rows_tile(const float* const* a, int np, int64_t segs, int64_t seg_len, int64_t seg_stride,
                        const float* pk, int64_t col, const float* bias, const float* residual, int64_t ldr, float* out,
                        int64_t ldo, int64_t nc) {
    if constexpr (R > 1) {
      if (np < R) {
        rows_tile<NVt, R - 1>(a, np, segs, seg_len, seg_stride, pk, col, bias, residual, ldr, out, ldo, nc);
        return;
      }
    }
    tile<NVt, R>(a, segs, seg_len, seg_stride, pk, col, bias, residual, ldr, out, ldo, nc);
  }

  // out (rows, N) = rows · weight + bias (+ residual, rows ldr apart), over the column blocks [cb0, cb1), on the
  // calling thread; row_ptr(r) gives row r's first segment (segs segments of seg_len values, seg_stride apart). Rows
  // go in chunks of about kGemmChunkTiles tiles; each chunk sweeps the column blocks, and each block its chunk's
  // tiles: the block's (K, 64) weights are reused from L1/L2 across the chunk, the chunk's rows from L2 across the
  // blocks.
  // Measured against other orders on one core (AVX-512, the FFN's fc1 / fc2 shapes at 224²-512²): within a few % of
  // the best of them everywhere, while sweeping all blocks per tile lost up to 25% once the weight passes L2
  // (2048 × 512). Chunks of equal size: gemm_chunk_rows (pvtv2/packing.h).
  template <typename RowPtr>
  static void sweep(const RowPtr& row_ptr, int64_t n_rows, int64_t segs, int64_t seg_len, int64_t seg_stride,
                    const float* packed, int64_t N, const float* bias, const float* residual, int64_t ldr, float* out,
                    int64_t ldo, int64_t cb0, int64_t cb1) {
    const int64_t chunk_rows = gemm_chunk_rows(n_rows, kRows);
    for (int64_t c0 = 0; c0 < n_rows; c0 += chunk_rows) {
      const int64_t c1 = std::min(c0 + chunk_rows, n_rows);
      for (int64_t cb = cb0; cb < cb1; ++cb) {
        for (int64_t r0 = c0; r0 < c1; r0 += kRows) {
          const int np = static_cast<int>(std::min<int64_t>(c1 - r0, kRows));
          const float* arows[kRows] = {};
          for (int r = 0; r < np; ++r) arows[r] = row_ptr(r0 + r);
          block(arows, np, segs, seg_len, seg_stride, packed, cb, N, bias, residual ? residual + r0 * ldr : nullptr,
                ldr, out + r0 * ldo, ldo);
        }
      }
    }
  }

  // The plain GEMM: rows of a (rows, K) matrix, lda apart.
  static void rows(const float* a, int64_t lda, int64_t n_rows, int64_t K, const float* packed, int64_t N,
                   const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo, int64_t cb0,
                   int64_t cb1) {
    sweep([a, lda](int64_t r) { return a + r * lda; }, n_rows, 1, K, 0, packed, N, bias, residual, ldr, out, ldo, cb0,
          cb1);
  }
};

template <typename V>
static inline void packed_gemm_rows_impl(const float* a, int64_t lda, int64_t n_rows, int64_t K, const float* packed,
                                         int64_t N, const float* bias, const float* residual, int64_t ldr, float* out,
                                         int64_t ldo, int64_t cb0, int64_t cb1) {
  PackedGemm<V>::rows(a, lda, n_rows, K, packed, N, bias, residual, ldr, out, ldo, cb0, cb1);
}

template <typename V>
static inline int64_t packed_gemm_tile_rows_impl() {
  return PackedGemm<V>::kRows;
}

}  // namespace PVT_ISA
}  // namespace cpu
}  // namespace pvtv2
