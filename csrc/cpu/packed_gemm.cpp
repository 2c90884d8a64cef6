// The threaded driver of the packed-weight GEMM (packed_gemm.h): splits a GEMM over the calling thread pool, or runs
// it on the calling thread inside a parallel region (conv_ffn's bands).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <memory>

#include "cpu_kernels.h"
#include "pvtv2/packing.h"

namespace pvtv2 {
namespace cpu {

namespace {
constexpr int64_t kL2Bytes = int64_t{1} << 20;  // the weight share a thread keeps in its L2 (of 1-2 MB per core)
constexpr int64_t kEvenSplitMinTiles = 16;      // see split_gemm

// Units [0, n) shared among `threads` as contiguous ranges, each taken from its front one unit at a time by its owner
// and, once a thread's own range is done, by the others (in range order): every unit runs exactly once, on whichever
// thread claims it first, and computes the same bits on any thread. Against fixed ranges, this absorbs a thread that
// runs late or slow (a VM's vCPU, the other thread still in the previous region): measured on a 2-core EPYC, two
// fast=True models interleaved in one process, bit-identical outputs: b2 224² 1.015-1.022x, b2 512² 1.007x, b0 224²
// and b2 batch 8 at 224² level (0.998-0.999x).
template <typename F>
void run_units(int64_t n, int64_t threads, const F& unit) {
  struct alignas(64) Front {
    std::atomic<int64_t> next;
  };
  std::unique_ptr<Front[]> fronts(new Front[threads]);
  for (int64_t t = 0; t < threads; ++t) fronts[t].next.store(n * t / threads, std::memory_order_relaxed);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t k = 0; k < threads; ++k) {
        const int64_t r = (t + k) % threads, end = n * (r + 1) / threads;
        for (int64_t u; (u = fronts[r].next.fetch_add(1, std::memory_order_relaxed)) < end;) unit(u);
      }
  });
}
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
  // at 224²); otherwise each thread takes row tiles over all columns. Threads claim the pieces one at a time from
  // contiguous ranges (run_units): whole blocks, (block, row tile) units, or row tiles.
  if (blocks >= 2 * threads && (weight_bytes > kL2Bytes || tiles < 4 * threads)) {
    if (tiles < kEvenSplitMinTiles) {
      run_units(blocks, threads, [&](int64_t b) { fn(0, rows, b, b + 1); });
      return;
    }
    // Blocks that do not divide among the threads (C = 320: 5 blocks, 3 + 2) are shared out evenly as (block, row
    // tile) units in column order: a thread's range is whole blocks but for at most its first and last, which it
    // splits by rows with its neighbour, both then streaming that block's weights. On cold weights (2 threads, AVX-512,
    // interleaved) this measured 1.15-1.23x the 3 + 2 split over 98-392 rows (b2's 14² stage: fc2, 196 × 1280 →
    // 320), but 0.89x over 49 rows, whose GEMMs are bound by streaming the weights: hence whole blocks there.
    const int64_t units = blocks * tiles;
    run_units(units, threads, [&](int64_t u) {
      const int64_t b = u / tiles, first = u % tiles;
      fn(first * tile, std::min(rows, (first + 1) * tile), b, b + 1);
    });
  } else {
    run_units(tiles, threads, [&](int64_t u) { fn(u * tile, std::min(rows, (u + 1) * tile), 0, blocks); });
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
