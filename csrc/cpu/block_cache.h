// A cache of large CPU buffers for repeated inference calls, scoped to the threads that ask for it.
//
// PyTorch's CPU allocator hands large tensors to malloc, which maps them fresh and returns them to the OS when they
// die: every call of a forward pays a page fault per 4 KB of its large intermediates, the kernel zeroing each page
// (measured for fast=True on 2 cores: 6,100 faults and 19 ms of system time per b2 forward at 512², 42,500 and
// 115 ms at 1024²). OpenVINO and ONNX Runtime keep such buffers in an arena between calls. This allocator does the
// same for the threads inside a block_cache_enter() / block_cache_exit() pair: allocations of at least
// kMinBlockBytes are served from a pool of pages that earlier blocks used (block_cache.cpp: how, and why the pool
// never holds more than the largest live total), and go back to it when their tensor dies, whenever and on
// whichever thread that happens. All other allocations (small ones, other threads, outside the scope) go to the
// allocator that was installed before, untouched.
//
// Idle pages are kept up to PVTV2_FAST_CPU_CACHE_MB (default 1024; 0 turns the cache off: every allocation passes
// through); a block freed past that limit is unmapped. block_cache_release() unmaps every idle page.
#pragma once

#include <stdint.h>

#include <array>

namespace pvtv2 {
namespace cpu {

// Allocations below this many bytes always pass through (malloc serves them from its own free lists).
constexpr int64_t kMinBlockBytes = int64_t{256} << 10;

// Enter / leave the caching scope on the calling thread (nestable). The first enter installs the allocator
// (c10::SetCPUAllocator, wrapping the one installed before); reads PVTV2_FAST_CPU_CACHE_MB on every enter.
void block_cache_enter();
void block_cache_exit();

// Unmaps every idle page; returns the bytes released.
int64_t block_cache_release();

// {idle bytes, bytes of live blocks, blocks served from one idle range, blocks gathered from several (mremap),
// blocks of fresh pages} since the process started.
std::array<int64_t, 5> block_cache_stats();

}  // namespace cpu
}  // namespace pvtv2
