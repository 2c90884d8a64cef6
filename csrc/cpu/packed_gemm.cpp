// The threaded driver of the packed-weight GEMM (packed_gemm.h): splits a GEMM over the calling thread pool, or runs
// it on the calling thread inside a parallel region (conv_ffn's bands).
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu_kernels.h"
#include "pvtv2/packing.h"

namespace pvtv2 {
namespace cpu {

namespace {
constexpr int64_t kL2Bytes = int64_t{1} << 20;  // the weight share a thread keeps in its L2 (of 1-2 MB per core)
constexpr int64_t kEvenSplitMinTiles = 16;      // see split_gemm
}  // namespace

void split_gemm(int64_t rows, int64_t blocks, int64_t K,
                const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn) {
  const int64_t tile = packed_gemm_tile_rows()(), tiles = (rows + tile - 1) / tile;
  const int64_t weight_bytes = K * blocks * kPackBlock * static_cast<int64_t>(sizeof(float));
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads <= 1 || rows == 0 || blocks == 0) {
    fn(0, rows, 0, blocks);
    return;
  }
  // Split the columns (each thread all rows, its share of the weight) when that share then fits in L2 where the whole
  // weight would not, or when there are too few row tiles to share (small maps under large weights, e.g. 49 tokens
  // at 224²); otherwise each thread takes a contiguous range of row tiles over all columns.
  if (blocks >= 2 * threads && (weight_bytes > kL2Bytes || tiles < 4 * threads)) {
    if (tiles < kEvenSplitMinTiles) {
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) { fn(0, rows, b0, b1); });
      return;
    }
    // Blocks that do not divide among the threads (C = 320: 5 blocks, 3 + 2) are shared out evenly as (block, row
    // tile) units in column order: a thread takes whole blocks, and splits at most its first and last by rows with
    // its neighbour, which then both stream that block's weights. On cold weights (2 threads, AVX-512,
    // interleaved) this measured 1.15-1.23x the 3 + 2 split over 98-392 rows (b2's 14² stage: fc2, 196 × 1280 →
    // 320), but 0.89x over 49 rows, whose GEMMs are bound by streaming the weights: hence whole blocks there.
    const int64_t units = blocks * tiles;
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t u1 = units * (t + 1) / threads;
        for (int64_t u = units * t / threads; u < u1;) {
          const int64_t b = u / tiles, first = u % tiles;
          if (first == 0 && u1 - u >= tiles) {
            const int64_t whole = (u1 - u) / tiles;
            fn(0, rows, b, b + whole);
            u += whole * tiles;
          } else {
            const int64_t end = std::min(u1, (b + 1) * tiles);
            fn(first * tile, std::min(rows, (end - b * tiles) * tile), b, b + 1);
            u = end;
          }
        }
      }
    });
  } else {
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      fn(t0 * tile, std::min(rows, t1 * tile), 0, blocks);
    });
  }
}

void packed_linear(const float* a, int64_t lda, int64_t rows, int64_t K, const float* packed, int64_t N,
                   const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo) {
  const PackedGemmRowsFn gemm = packed_gemm_rows();
  split_gemm(rows, pack_blocks(N), K, [&](int64_t r0, int64_t r1, int64_t cb0, int64_t cb1) {
    gemm(a + r0 * lda, lda, r1 - r0, K, packed, N, bias, residual ? residual + r0 * ldr : nullptr, ldr,
         out + r0 * ldo, ldo, cb0, cb1);
  });
}

}  // namespace cpu
}  // namespace pvtv2
