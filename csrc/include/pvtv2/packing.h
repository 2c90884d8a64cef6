// The packed weight layout of the CPU's packed-weight GEMM (cpu/packed_gemm.h), as ops.pack_weight lays it out in
// Python: a (N, K) weight as (ceil(N / kPackBlock), K, kPackBlock), blocks of kPackBlock output channels, zero past N.
// The bf16 GEMM's (cpu/packed_gemm_bf16.cpp, ops.pack_weight_pairs): (ceil(N / kPackBlock), K / 2, kPackBlock, 2),
// each column's two consecutive k side by side, K even.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <vector>

namespace pvtv2 {

constexpr int64_t kPackBlock = 64;  // ops.packing.PACK_BLOCK

inline int64_t pack_blocks(int64_t n) { return (n + kPackBlock - 1) / kPackBlock; }

// Rows per chunk of the packed GEMMs' sweeps (cpu/packed_gemm.h, cpu/packed_gemm_bf16.cpp): about kGemmChunkTiles
// register tiles of `tile_rows` rows each (a few hundred KB of A at the FFN's K, in L2), the chunks of equal size
// (8 ± 4 tiles) rather than 8 tiles and a remainder: a last chunk of one row streams the whole weight again for it
// (49 tokens ran 1.14x the time of 48).
constexpr int64_t kGemmChunkTiles = 8;
inline int64_t gemm_chunk_rows(int64_t n_rows, int64_t tile_rows) {
  const int64_t tiles = (n_rows + tile_rows - 1) / tile_rows;
  const int64_t chunks = std::max<int64_t>(1, (tiles + kGemmChunkTiles / 2) / kGemmChunkTiles);
  return (tiles + chunks - 1) / chunks * tile_rows;
}

// The packed shape of an (n, k) weight, in pairs or not.
inline std::vector<int64_t> packed_shape(int64_t n, int64_t k, bool pairs) {
  if (pairs) return {pack_blocks(n), k / 2, kPackBlock, 2};
  return {pack_blocks(n), k, kPackBlock};
}

}  // namespace pvtv2
