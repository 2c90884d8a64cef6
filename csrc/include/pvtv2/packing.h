// The packed weight layout of the CPU's packed-weight GEMM (cpu/packed_gemm.h), as ops.pack_weight lays it out in
// Python: a (N, K) weight as (ceil(N / kPackBlock), K, kPackBlock), blocks of kPackBlock output channels, zero past N.
// The bf16 GEMM's (cpu/packed_gemm_bf16.cpp, ops.pack_weight_pairs): (ceil(N / kPackBlock), K / 2, kPackBlock, 2),
// each column's two consecutive k side by side, K even.
#pragma once

#include <stdint.h>

#include <vector>

namespace pvtv2 {

constexpr int64_t kPackBlock = 64;  // ops.packing.PACK_BLOCK

inline int64_t pack_blocks(int64_t n) { return (n + kPackBlock - 1) / kPackBlock; }

// The packed shape of an (n, k) weight, in pairs or not.
inline std::vector<int64_t> packed_shape(int64_t n, int64_t k, bool pairs) {
  if (pairs) return {pack_blocks(n), k / 2, kPackBlock, 2};
  return {pack_blocks(n), k, kPackBlock};
}

}  // namespace pvtv2
