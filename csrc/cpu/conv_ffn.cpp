// PVTv2's convolutional FFN on CPU, streamed through the cache in bands of map rows:
//   fc1 (GEMM) → ring buffer of hidden rows → depthwise 3×3 + GELU (kernels.h, 3 row pointers) → fc2 (GEMM) → y.
// Why: the unfused FFN writes and re-reads a widened (B, H·W, hidden) tensor three times (fc1 out, conv out, fc2 in),
// and on CPU most of that cost was first-touch page faults of the fresh 16–64 MB tensors plus addmm's bias pass
// (profile in the C++/CUDA issue). Here the hidden state lives in per-thread buffers of about
// 512 KB (PVTV2_FAST_FFN_BAND_KB), reused band after band, so the only large memory traffic is reading x and writing y.
//
// Each thread walks its bands of one image top to bottom; fc1 rows are kept in a ring of (band + 2) rows, so the
// halo rows a band shares with the previous one are computed once (a thread's first band computes its own halo).
//
// Small hidden states (conv_ffn_whole_map: up to 4 MB, or 16 MB with large weights) run as whole-map GEMMs instead,
// in scratch kept per calling thread: there, bands would re-read large weights once per band and thread.
//
// bf16 (x, weights and y in bf16): the GEMMs are MKL's bf16 × bf16 → fp32 GEMM (AMX tiles or AVX512-BF16 where
// the CPU has them), so the ring stays fp32 (fc1's sums are not rounded before the conv, as the reference rounds
// them), the conv + GELU writes the bf16 band fc2 reads, and fc2's fp32 band is rounded once into y. With the
// weights packed in pairs (pvt_block's bf16 path) the GEMMs are packed_linear_bf16's instead, fc2 adds the block's
// fp32 residual before that rounding, and the whole-map schedule keeps its hidden state in bf16.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu_kernels.h"
#include "env.h"

// The Fortran BLAS sgemm that torch's CPU build links (MKL on x86-64 wheels, OpenBLAS on others). Weak: a build
// without one still loads, and conv_ffn then has no CPU kernel (ops.cpp registers it only when this resolves).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's mixed-precision GEMM, same Fortran conventions: c (fp32) = alpha·op(a)·op(b) + beta·c, a and b bf16 (raw
// uint16 bits). Weak as sgemm_; absent from OpenBLAS builds.
extern "C" void gemm_bf16bf16f32_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                                  const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b,
                                  const int* ldb, const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace pvtv2 {
namespace cpu {

bool has_sgemm() { return sgemm_ != nullptr; }

bool has_bf16_gemm() {
  static const bool ok = [] {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
    // Linux hands out AMX tile state only to processes that ask (ARCH_REQ_XCOMP_PERM for XTILEDATA), as oneDNN does
    // on its first bf16 primitive. Asking here lets MKL use AMX even when no oneDNN op ran before; on CPUs or
    // kernels without AMX the call fails harmlessly and MKL takes its AVX512-BF16 / AVX-512 / AVX2 path.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    (void)syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata);
#endif
    return gemm_bf16bf16f32_ != nullptr;
  }();
  return ok;
}

namespace {

// Bias rows before an accumulating GEMM: out (rows, n) = bias, or zeros when there is no input channel to sum.
// Returns the GEMM's beta. Parallel when called outside a parallel region (the whole-map path), inline inside one.
float init_rows(int64_t rows, int64_t k, const float* bias, int64_t n, float* out) {
  if (bias == nullptr && k != 0) return 0.0f;
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (bias != nullptr)
        std::memcpy(out + r * n, bias, n * sizeof(float));
      else
        std::memset(out + r * n, 0, n * sizeof(float));
    }
  });
  return bias != nullptr ? 1.0f : 0.0f;
}

// out (rows, n) = in · wᵀ + beta · out on the BLAS (sgemm, or MKL's bf16 GEMM for bf16 in and w).
template <typename T>
void blas_gemm(const T* in, int64_t rows, int64_t k, const T* w, int64_t n, float beta, float* out) {
  // Column-major view of the same memory: outᵀ (n × rows) = w (stored k × n, transposed) · inᵀ (k × rows).
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
  const int lda = k_, ldb = k_, ldc = m_;
  const float alpha = 1.0f;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_("T", "N", &m_, &n_, &k_, &alpha, w, &lda, in, &ldb, &beta, out, &ldc);
  } else {
    static_assert(std::is_same_v<T, bf16> && sizeof(bf16) == sizeof(uint16_t));
    gemm_bf16bf16f32_("T", "N", &m_, &n_, &k_, &alpha, reinterpret_cast<const uint16_t*>(w), &lda,
                      reinterpret_cast<const uint16_t*>(in), &ldb, &beta, out, &ldc);
  }
}

// out (rows, n) = in (rows, k) · w (n, k)ᵀ + bias, row-major and contiguous; bias may be nullptr; out is fp32, in and
// w fp32 (sgemm) or bf16 (MKL's bf16 GEMM, fp32 accumulation).
// Called from inside at::parallel_for (the band loop), the BLAS runs single-threaded (it sees the OpenMP region);
// called outside one (the whole-map path), it runs on its own threads. The caller keeps rows, k and n below 2^31
// (the BLAS takes ints).
// `packed` (fp32 only; ops.pack_weight's layout of w) or `pairs` (bf16 only; ops.pack_weight_pairs'): the packed-weight
// GEMM instead, bias (and residual: (rows, n) fp32, or nullptr) in its epilogue. The BLAS adds the residual in a pass
// after its GEMM: the same (Σ + bias) + residual.
template <typename T>
void linear_rows(const T* in, int64_t rows, int64_t k, const T* w, const float* packed, const bf16* pairs,
                 const float* bias, int64_t n, float* out, const float* residual = nullptr) {
  if constexpr (std::is_same_v<T, float>) {
    if (packed != nullptr) {
      packed_linear(in, k, rows, k, packed, n, bias, residual, n, out, n);
      return;
    }
  } else {
    if (pairs != nullptr) {
      packed_linear_bf16(in, k, rows, k, pairs, n, bias, residual, n, out, n);
      return;
    }
  }
  const float beta = init_rows(rows, k, bias, n, out);
  if (k != 0) blas_gemm(in, rows, k, w, n, beta, out);  // no input channels: out is the bias (BLAS rejects lda = 0)
  if (residual != nullptr)
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0 * n; i < r1 * n; ++i) out[i] += residual[i];
    });
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], FreeDeleter>;

template <typename T>
Buffer<T> alloc(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  TORCH_CHECK(p != nullptr, "conv_ffn: could not allocate ", bytes, " bytes of band buffer");
  return Buffer<T>(p);
}

// A buffer of at least n elements, kept per calling thread and reused by later calls (the whole-map path's hidden
// state: fresh pages cost a first-touch fault each, which measured more than the small GEMMs they feed).
template <typename T>
T* scratch(int64_t n, int which) {
  thread_local Buffer<char> buffers[3];
  thread_local int64_t sizes[3] = {0, 0, 0};
  const int64_t bytes = std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T));
  if (sizes[which] < bytes) {
    buffers[which].reset();
    buffers[which] = alloc<char>(bytes);
    sizes[which] = bytes;
  }
  return reinterpret_cast<T*>(buffers[which].get());
}

constexpr int64_t kPackedWholeMaxWeightBytes = int64_t{1} << 20;  // see conv_ffn_whole_t
constexpr int64_t kPackedWholeMaxTokens = 196;

int64_t band_target_bytes() {
  // 512 KB of hidden rows per band. Bands this small keep the ring (band + 2 rows) and the activation band in
  // L2/L3, yet give the GEMMs hundreds of rows; measured on a 2-core EPYC (512 KB L2 per core, 32 MB L3) over the
  // b0/b2 stage shapes, 128 KB-1 MB were within noise at large maps and 512 KB was best at 16×16 and 32×32 maps.
  // Read once; a bad value raises on every call (a static whose initialiser throws is retried next time).
  static const int64_t kb = env::integer("PVTV2_FAST_FFN_BAND_KB", 1, int64_t{1} << 20, 512, "a whole number of KB");
  return kb * 1024;
}

}  // namespace

bool conv_ffn_whole_map(int64_t hidden_bytes, int64_t weight_bytes) {
  // Read per call (a getenv, next to GEMMs of tens of microseconds at least), so tests switch schedules in-process.
  const int64_t kb = env::integer("PVTV2_FAST_FFN_WHOLE_KB", 0, int64_t{1} << 30, -1, "a whole number of KB",
                                 "the measured rule");
  if (kb >= 0) return hidden_bytes <= kb * 1024;
  // Measured (2 threads, b0/b2 stage shapes, batch 1-8, fp32 and bf16; bench/results/cpu_conv_ffn_schedule*.md):
  // bands re-read the weights once per band and thread, whole-map GEMMs move the hidden state through memory.
  // Whole-map won up to 1.25-1.9x where the weights pass 1 MB (C >= 128) and the map is small, and wherever the
  // hidden state is below 4 MB; bands won up to 1.5x for small weights over larger maps (C = 64 / 160 at 64² and
  // up). The rule picked within 0.94-1.09x of the faster schedule on all 21 shapes. The cap of 16 MB also bounds the
  // scratch the calling thread keeps (scratch(): hidden + activation, at most 32 MB).
  constexpr int64_t MB = 1 << 20;
  return hidden_bytes <= 4 * MB || (weight_bytes >= MB && hidden_bytes <= 16 * MB);
}

int64_t conv_ffn_band_rows(int64_t row_floats, int64_t height, int64_t batch) {
  int64_t rows = std::max<int64_t>(1, band_target_bytes() / (row_floats * static_cast<int64_t>(sizeof(float))));
  // Enough bands that every thread gets work, even for one small image.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t bands_per_image = (threads + batch - 1) / batch;
  rows = std::min(rows, (height + bands_per_image - 1) / bands_per_image);
  return std::max<int64_t>(1, std::min(rows, height));
}

namespace {

// The band loop for element type T (float or bf16) of x, the weights, the fc2 input band and y.
template <typename T>
void conv_ffn_forward_t(const ConvFfnArgs& a) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  constexpr Elem kElem = kF32 ? Elem::kF32 : Elem::kBF16;
  const int64_t H = a.height, W = a.width, N = H * W, hid = a.hidden;
  const int64_t row_floats = W * hid;
  const int64_t R = conv_ffn_band_rows(row_floats, H, a.batch);
  const int64_t bands = (H + R - 1) / R;
  const int64_t cap = R + 2;  // ring capacity in rows: one band plus its halo above and below
  // The most rows one GEMM gets is cap·W (fc1 over the whole ring); the BLAS takes ints.
  TORCH_CHECK(cap * W <= INT_MAX, "conv_ffn: the CPU kernel's GEMMs take below 2^31 rows, got bands of ", cap, " x ",
              W, " tokens");
  const T* x = static_cast<const T*>(a.x);
  const T* fc1_w = static_cast<const T*>(a.fc1_w);
  const T* fc2_w = static_cast<const T*>(a.fc2_w);
  T* y = static_cast<T*>(a.y);
  const DwconvGeluRowFn row_fn = dwconv_gelu_row();
  const RoundToBf16Fn round_fn = round_to_bf16();
  at::parallel_for(0, a.batch * bands, 1, [&](int64_t begin, int64_t end) {
    Buffer<float> ring = alloc<float>(cap * row_floats);
    Buffer<T> act = alloc<T>(R * row_floats);
    // bf16: fc2's fp32 result for one band, rounded into y (fp32 writes y directly).
    Buffer<float> out = alloc<float>(kF32 ? 0 : R * W * a.c_out);
    // fc1 rows [have_lo, have_hi) of image have_image are in the ring, row h at slot h % cap.
    int64_t have_image = -1, have_lo = 0, have_hi = 0;
    auto slot = [&](int64_t h) { return ring.get() + (h % cap) * row_floats; };
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / bands, r0 = (item % bands) * R, r1 = std::min(H, r0 + R);
      const int64_t lo = std::max<int64_t>(0, r0 - 1), hi = std::min(H, r1 + 1);
      const T* xb = x + b * N * a.c_in;
      const bool carry = have_image == b && have_lo <= lo && lo <= have_hi;
      int64_t from = carry ? have_hi : lo;
      have_lo = carry ? std::max(have_lo, hi - cap) : lo;
      have_image = b;
      have_hi = hi;
      while (from < hi) {  // fc1 for the missing rows, split where the ring wraps
        const int64_t s = from % cap, n = std::min(hi - from, cap - s);
        linear_rows(xb + from * W * a.c_in, n * W, a.c_in, fc1_w, a.fc1_packed, a.fc1_pairs, a.fc1_b, hid,
                    ring.get() + s * row_floats);
        from += n;
      }
      for (int64_t h = r0; h < r1; ++h) {
        const void* rows[3] = {h > 0 ? slot(h - 1) : nullptr, slot(h), h + 1 < H ? slot(h + 1) : nullptr};
        row_fn(rows, Elem::kF32, a.dw_wt, a.dw_b, act.get() + (h - r0) * row_floats, kElem, W, hid, a.relu_input);
      }
      const int64_t tokens = (r1 - r0) * W;
      T* yb = y + (b * N + r0 * W) * a.c_out;
      const float* res = a.residual ? a.residual + (b * N + r0 * W) * a.c_out : nullptr;
      if constexpr (kF32) {
        linear_rows(act.get(), tokens, hid, fc2_w, a.fc2_packed, a.fc2_pairs, a.fc2_b, a.c_out, yb, res);
      } else {
        linear_rows(act.get(), tokens, hid, fc2_w, a.fc2_packed, a.fc2_pairs, a.fc2_b, a.c_out, out.get(), res);
        round_fn(out.get(), yb, tokens * a.c_out);
      }
    }
  });
}

// The whole map at once, for small hidden states (conv_ffn_whole_map): fc1 over all
// B·H·W tokens in one GEMM, the conv + GELU row-parallel, fc2 in one GEMM. The GEMMs run outside any parallel region,
// so the BLAS splits them over its threads, and each weight matrix is read once rather than once per band.
template <typename T>
void conv_ffn_whole_t(const ConvFfnArgs& a) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  constexpr Elem kElem = kF32 ? Elem::kF32 : Elem::kBF16;
  const int64_t H = a.height, W = a.width, hid = a.hidden, tokens = a.batch * H * W;
  const int64_t row_floats = W * hid;
  float* hidden = scratch<float>(tokens * hid, 0);
  T* act = scratch<T>(tokens * hid, 1);
  // Whole-map GEMMs take the packed weights under at most kPackedWholeMaxWeightBytes of fc1 + fc2 weights or over at
  // most kPackedWholeMaxTokens tokens: against MKL's threaded sgemm, the packed-weight GEMM split over the same 2
  // threads measured 1.02-1.24x under <= 1 MB of weights (b0's stages at 224², b2's 28² one: 784 tokens), 1.07-1.35x
  // over 49-196 tokens (224²'s 14² and 7² maps, weights up to 8 MB: columns split), and 0.86-0.93x under 3-8 MB of
  // weights over 256-1024 tokens (b2's C = 320 / 512 stages at 512²; fp32, AVX-512, interleaved, through the FFN
  // module). The bands, whose GEMMs run single-threaded inside the band loop, take them always (1.02-1.14x: MKL packs
  // its operand again on every band).
  const bool packed = (a.c_in + a.c_out) * hid * static_cast<int64_t>(sizeof(float)) <= kPackedWholeMaxWeightBytes ||
                      tokens <= kPackedWholeMaxTokens;
  const float* fc1_packed = packed ? a.fc1_packed : nullptr;
  const float* fc2_packed = packed ? a.fc2_packed : nullptr;
  // bf16 with weights in pairs: fc1's sums rounded to a bf16 hidden state (as the module run in bf16 rounds them),
  // which halves the widened state's traffic between fc1 and the conv (b2's 28² stage at 224²: 1.6 MB, not 3.2).
  // Against an fp32 hidden state, end to end (EPYC, interleaved): b0 224² 1.04x, b2 512² 1.04x, b2 224² level.
  const bool hidden_bf16 = !kF32 && a.fc1_pairs != nullptr;
  const void* hid_base = hidden;
  if (hidden_bf16) {
    bf16* hb = reinterpret_cast<bf16*>(hidden);  // the fp32 scratch holds twice what it needs
    packed_linear_bf16(static_cast<const bf16*>(a.x), a.c_in, tokens, a.c_in, a.fc1_pairs, hid, a.fc1_b, nullptr, 0,
                       hb, hid);
  } else {
    linear_rows(static_cast<const T*>(a.x), tokens, a.c_in, static_cast<const T*>(a.fc1_w), fc1_packed, a.fc1_pairs,
                a.fc1_b, hid, hidden);
  }
  const Elem hid_elem = hidden_bf16 ? Elem::kBF16 : Elem::kF32;
  const int64_t row_bytes = row_floats * (hidden_bf16 ? 2 : 4);
  const DwconvGeluRowFn row_fn = dwconv_gelu_row();
  at::parallel_for(0, a.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t h = bh % H;
      const char* row = static_cast<const char*>(hid_base) + bh * row_bytes;
      const void* rows[3] = {h > 0 ? row - row_bytes : nullptr, row, h + 1 < H ? row + row_bytes : nullptr};
      row_fn(rows, hid_elem, a.dw_wt, a.dw_b, act + bh * row_floats, kElem, W, hid, a.relu_input);
    }
  });
  if constexpr (kF32) {
    linear_rows(act, tokens, hid, static_cast<const T*>(a.fc2_w), fc2_packed, a.fc2_pairs, a.fc2_b, a.c_out,
                static_cast<float*>(a.y), a.residual);
  } else {
    float* out = scratch<float>(tokens * a.c_out, 2);
    linear_rows(act, tokens, hid, static_cast<const T*>(a.fc2_w), fc2_packed, a.fc2_pairs, a.fc2_b, a.c_out, out,
                a.residual);
    const RoundToBf16Fn round_fn = round_to_bf16();
    bf16* y = static_cast<bf16*>(a.y);
    at::parallel_for(0, tokens, 256, [&](int64_t t0, int64_t t1) {
      round_fn(out + t0 * a.c_out, y + t0 * a.c_out, (t1 - t0) * a.c_out);
    });
  }
}

template <typename T>
void conv_ffn_dispatch_t(const ConvFfnArgs& a) {
  const int64_t hidden_bytes = a.batch * a.height * a.width * a.hidden * static_cast<int64_t>(sizeof(float));
  const int64_t weight_bytes = (a.c_in + a.c_out) * a.hidden * static_cast<int64_t>(sizeof(float));
  (void)band_target_bytes();  // both variables are checked on every call, whichever schedule runs
  // The whole-map GEMMs take all B·H·W tokens as one BLAS (int) row count; past that, bands check their own.
  if (conv_ffn_whole_map(hidden_bytes, weight_bytes) && a.batch * a.height * a.width <= INT_MAX)
    conv_ffn_whole_t<T>(a);
  else
    conv_ffn_forward_t<T>(a);
}

}  // namespace

void conv_ffn_forward(const ConvFfnArgs& a) {
  if (a.elem == Elem::kBF16) {
    TORCH_CHECK(has_bf16_gemm() || (a.fc1_pairs != nullptr && a.fc2_pairs != nullptr),
                "conv_ffn: the CPU kernel's bf16 path needs MKL's bf16 GEMM, absent from this build");
    conv_ffn_dispatch_t<bf16>(a);
  } else {
    conv_ffn_dispatch_t<float>(a);
  }
}

}  // namespace cpu
}  // namespace pvtv2
