// The CPU block cache (see block_cache.h): a pool of mapped, already-touched pages.
//
// Memory is handed out in page-aligned ranges. A freed block's range goes back to the idle pool whole; a request
// takes the smallest idle range that holds it (its unused tail stays idle), or, on Linux, when no idle range is large
// enough, gathers several idle ranges into one fresh virtual range with mremap, which moves their page-table entries
// and neither faults nor zeroes. Fresh pages are mapped only when the idle pool holds too little in all, so the pages
// the cache holds (live + idle) never exceed the largest live total of any moment, plus rounding: a forward keeps the
// peak memory it had without the cache, and the next call faults none of it.
#include "block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "env.h"

namespace pvtv2 {
namespace cpu {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kMinTail = size_t{64} << 10;  // a range cut to a request keeps a tail this large or more apart

// Blocks start at a varying offset into their first page ("colour": 0, 128, ..., 3968 bytes, round robin). Blocks
// that all began on a page boundary would give every tensor the same address modulo 4 KB, and a kernel streaming one
// into another then stalls on 4K aliasing (a load taken for a store to the same page offset); malloc's chunks sit at
// scattered offsets, and so do these. So a block of n bytes takes a range of round_up(n, 4 KB) + one page.
constexpr int kColours = 32;

thread_local int scope_depth = 0;

char* page_of(void* p) { return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(kPage - 1)); }

// Fresh pages of `bytes` (a multiple of the page size), or nullptr when the system has no memory for them.
char* map_range(size_t bytes) {
#if defined(__linux__)
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  return static_cast<char*>(p);
#else
  return static_cast<char*>(std::aligned_alloc(kPage, bytes));
#endif
}

void unmap_range(char* p, size_t bytes) {
#if defined(__linux__)
  munmap(p, bytes);
#else
  (void)bytes;
  std::free(p);  // whole ranges only: without mremap, ranges are never split (see take_idle)
#endif
}

class BlockCache final : public c10::Allocator {
 public:
  explicit BlockCache(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (scope_depth == 0 || limit_bytes_.load(std::memory_order_relaxed) == 0 ||
        static_cast<int64_t>(n) < kMinBlockBytes)
      return base_->allocate(n);
    const size_t need = (n + kPage - 1) / kPage * kPage + kPage;
    auto [range, bytes] = take_idle(need);
    if (range == nullptr) {
      range = map_range(need);
      bytes = need;
      if (range == nullptr) {
        release();  // out of memory for fresh pages: give the idle ones back and try once more
        range = map_range(need);
      }
      TORCH_CHECK(range != nullptr, "pvtv2_fast CPU block cache: could not map ", need, " bytes");
    }
    char* p = range + (next_colour_.fetch_add(1, std::memory_order_relaxed) % kColours) * (kPage / kColours);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[p] = bytes;
      live_bytes_ += bytes;
    }
    return {p, p, &BlockCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  // A cached tensor died: its range goes back to the idle pool, or is unmapped past the limit. Pointers this cache
  // does not own reach here through raw_deallocate (oneDNN's weight buffers, say, allocated from the base allocator
  // before this one was installed and freed after): the base allocator's deleter frees them.
  void give_back(void* p) {
    size_t bytes = 0;
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        bytes = it->second;
        live_.erase(it);
        live_bytes_ -= bytes;
        keep = idle_bytes_ + static_cast<int64_t>(bytes) <= limit_bytes_.load(std::memory_order_relaxed);
        if (keep) add_idle(page_of(p), bytes);
      }
    }
    if (bytes == 0) {  // not a block of this cache (they are never empty)
      // A deleter must not throw (it runs in destructors): without the base's raw deleter the buffer is leaked.
      const c10::DeleterFnPtr base_delete = base_->raw_deleter();
      if (base_delete != nullptr)
        base_delete(p);
      else
        TORCH_WARN_ONCE("pvtv2_fast CPU block cache: the allocator it wraps has no raw deleter; leaking a buffer");
    } else if (!keep) {
      unmap_range(page_of(p), bytes);
    }
  }

  int64_t release() {
    std::map<char*, size_t> idle;
    int64_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle.swap(by_addr_);
      by_size_.clear();
      bytes = idle_bytes_;
      idle_bytes_ = 0;
    }
    for (const auto& [p, size] : idle) unmap_range(p, size);
    return bytes;
  }

  void set_limit(int64_t bytes) {
    if (limit_bytes_.exchange(bytes) == bytes) return;
    int64_t idle = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle = idle_bytes_;
    }
    if (bytes < idle) release();
  }

  std::array<int64_t, 5> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {idle_bytes_, live_bytes_, reused_, gathered_, fresh_};
  }

 private:
  static void deleter(void* p);

  // Caller holds mutex_. Joins the range with idle neighbours that touch it (Linux: all ranges are anonymous
  // mappings, so a joined range unmaps as one), so a range cut for a smaller request is whole again once both
  // pieces are idle, and the next call finds the same ranges as the last. First among ranges of its size: the next
  // request of that size takes the most recently freed one, the likeliest to be still in cache.
  void add_idle(char* range, size_t bytes) {
#if defined(__linux__)
    auto next = by_addr_.find(range + bytes);
    if (next != by_addr_.end()) {
      bytes += next->second;
      erase_idle(next->first, next->second);
    }
    auto prev = by_addr_.lower_bound(range);
    if (prev != by_addr_.begin() && std::prev(prev)->first + std::prev(prev)->second == range) {
      --prev;
      range = prev->first;
      bytes += prev->second;
      erase_idle(prev->first, prev->second);
    }
#endif
    by_size_.emplace_hint(by_size_.lower_bound(bytes), bytes, range);
    by_addr_.emplace(range, bytes);
    idle_bytes_ += static_cast<int64_t>(bytes);
  }

  // Caller holds mutex_. Takes the idle range at `range` out of the pool.
  void erase_idle(char* range, size_t bytes) {
    auto [first, last] = by_size_.equal_range(bytes);
    for (auto it = first; it != last; ++it)
      if (it->second == range) {
        by_size_.erase(it);
        break;
      }
    by_addr_.erase(range);
    idle_bytes_ -= static_cast<int64_t>(bytes);
  }

  // A range of `need` bytes from idle pages, as (range, its bytes), or (nullptr, 0) when the pool cannot make one.
  std::pair<char*, size_t> take_idle(size_t need) {
#if defined(__linux__)
    std::vector<std::pair<char*, size_t>> parts;  // idle ranges (or prefixes) to gather, in order
#endif
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = by_size_.lower_bound(need);
      if (it != by_size_.end()) {
        // The smallest idle range that holds the request: its prefix, the tail staying idle where it is.
        size_t bytes = it->first;
        char* range = it->second;
        erase_idle(range, bytes);
#if defined(__linux__)
        if (bytes - need >= kMinTail) {
          add_idle(range + need, bytes - need);
          bytes = need;
        }
#endif
        ++reused_;
        return {range, bytes};
      }
#if defined(__linux__)
      if (by_size_.empty()) {
        ++fresh_;
        return {nullptr, 0};
      }
      // No single range is large enough: the largest ranges, the last one cut to fit; fresh pages for the rest.
      size_t got = 0;
      while (got < need && !by_size_.empty()) {
        auto last = std::prev(by_size_.end());
        const size_t bytes = last->first;
        char* range = last->second;
        erase_idle(range, bytes);
        const size_t use = std::min(bytes, need - got);
        if (use < bytes) add_idle(range + use, bytes - use);
        parts.emplace_back(range, use);
        got += use;
      }
#else
      ++fresh_;
      return {nullptr, 0};
#endif
    }
#if defined(__linux__)
    char* dest = map_range(need);
    size_t offset = 0;
    bool ok = dest != nullptr;
    for (const auto& [range, bytes] : parts) {
      // Moves the pages over the fresh (untouched) ones at dest + offset; where that fails, the part's pages are
      // given back to the system and dest keeps fresh pages there.
      if (!ok || mremap(range, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED, dest + offset) == MAP_FAILED)
        munmap(range, bytes);
      offset += bytes;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ++(ok ? gathered_ : fresh_);
    return {dest, ok ? need : 0};
#endif
  }

  c10::Allocator* const base_;
  std::atomic<int64_t> limit_bytes_{0};
  std::atomic<unsigned> next_colour_{0};
  std::mutex mutex_;
  std::multimap<size_t, char*> by_size_;  // the idle ranges (page-aligned) by size
  std::map<char*, size_t> by_addr_;  // and by address
  std::unordered_map<void*, size_t> live_;  // block pointer -> bytes of its range
  int64_t idle_bytes_ = 0, live_bytes_ = 0, reused_ = 0, gathered_ = 0, fresh_ = 0;
};

// Installed once and never destroyed: tensors may die during static destruction, and their deleter needs it.
BlockCache* the_cache = nullptr;
std::once_flag install_once;

void BlockCache::deleter(void* p) { the_cache->give_back(p); }

BlockCache* cache() {
  std::call_once(install_once, [] {
    the_cache = new BlockCache(c10::GetCPUAllocator());
    // Priority of the default allocator: ours replaces it, and a higher-priority one installed by someone else
    // stays (then allocations never reach this cache, and it is inert).
    c10::SetCPUAllocator(the_cache, /*priority=*/0);
  });
  return the_cache;
}

}  // namespace

void block_cache_enter() {
  const int64_t mb = env::integer("PVTV2_FAST_CPU_CACHE_MB", 0, int64_t{1} << 22, 1024, "a whole number of MB");
  cache()->set_limit(mb << 20);
  ++scope_depth;
}

void block_cache_exit() {
  TORCH_CHECK(scope_depth > 0, "block_cache_exit without a matching block_cache_enter on this thread");
  --scope_depth;
}

int64_t block_cache_release() { return the_cache == nullptr ? 0 : the_cache->release(); }

std::array<int64_t, 5> block_cache_stats() {
  return the_cache == nullptr ? std::array<int64_t, 5>{} : the_cache->stats();
}

}  // namespace cpu
}  // namespace pvtv2
