// The packed weight layout of the CPU's packed-weight GEMM (cpu/packed_gemm.h), as ops.pack_weight lays it out in
// Python: a (N, K) weight as (ceil(N / kPackBlock), K, kPackBlock), blocks of kPackBlock output channels, zero past N.
#pragma once

#include <stdint.h>

namespace pvtv2 {

constexpr int64_t kPackBlock = 64;  // ops.packing.PACK_BLOCK

inline int64_t pack_blocks(int64_t n) { return (n + kPackBlock - 1) / kPackBlock; }

}  // namespace pvtv2
