// Operator schemas and the CPU / Meta kernels of pvtv2_fast's C++ extension (namespace pvtv2_fast_C).
// CUDA kernels are registered in cuda/ops_cuda.cpp when the extension is built with CUDA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <string>
#include <vector>

#include "block_cache.h"
#include "cpu_kernels.h"
#include "env.h"
#include "pvtv2/checks.h"

namespace pvtv2 {
namespace cpu {

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"default", "avx2", "avx512"};  // indexed by Isa

static Isa detect_isa() {
  Isa best = Isa::kDefault;
#if defined(__x86_64__) || defined(_M_X64)
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
#endif
  // A cap above what the CPU has runs the widest it has (documented: the variable caps, it does not force).
  const int cap = env::choice("PVTV2_FAST_CPU_ISA", {kIsaNames[0], kIsaNames[1], kIsaNames[2]}, -1,
                              "the widest the CPU supports");
  return cap < 0 ? best : std::min(best, static_cast<Isa>(cap));
}

static Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

std::string isa() { return kIsaNames[static_cast<int>(active_isa())]; }

// The entry point NAME_<isa> of the active ISA (only the portable one off x86-64).
#if defined(__x86_64__) || defined(_M_X64)
#define PVT_FOR_ACTIVE_ISA(NAME) \
  (active_isa() == Isa::kAvx512 ? NAME##_avx512 : active_isa() == Isa::kAvx2 ? NAME##_avx2 : NAME##_default)
#else
#define PVT_FOR_ACTIVE_ISA(NAME) NAME##_default
#endif

DwconvGeluRowFn dwconv_gelu_row() { return PVT_FOR_ACTIVE_ISA(dwconv_gelu_row); }
LinearSraPoolCellFn linear_sra_pool_cell() { return PVT_FOR_ACTIVE_ISA(linear_sra_pool_cell); }
RoundToBf16Fn round_to_bf16() { return PVT_FOR_ACTIVE_ISA(round_to_bf16); }
LayerNormRowsFn layer_norm_rows() { return PVT_FOR_ACTIVE_ISA(layer_norm_rows); }
AttentionGeometryFn attention_geometry() { return PVT_FOR_ACTIVE_ISA(attention_geometry); }
AttentionPackFn attention_pack() { return PVT_FOR_ACTIVE_ISA(attention_pack); }
AttentionRowsFn attention_rows() { return PVT_FOR_ACTIVE_ISA(attention_rows); }
TokenConvRangeFn token_conv_range() { return PVT_FOR_ACTIVE_ISA(token_conv_range); }
PackedGemmRowsFn packed_gemm_rows() { return PVT_FOR_ACTIVE_ISA(packed_gemm_rows); }
PackedGemmTileRowsFn packed_gemm_tile_rows() { return PVT_FOR_ACTIVE_ISA(packed_gemm_tile_rows); }
UpsampleArgmaxRowFn upsample_argmax_row() { return PVT_FOR_ACTIVE_ISA(upsample_argmax_row); }
UpsampleAccumulateRowFn upsample_accumulate_row() { return PVT_FOR_ACTIVE_ISA(upsample_accumulate_row); }

static bool cpu_has_bf16_dot() {
#if defined(__x86_64__) || defined(_M_X64)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool bf16_dot_available() { return cpu_has_bf16_dot() && active_isa() == Isa::kAvx512; }

// The same answer for Python's dispatch rules (ops.pvt_block.BF16_PAIRS, read at import), without fixing the ISA for
// the process: that is read at the first kernel call, so a bad PVTV2_FAST_CPU_ISA set after import still raises there.
bool bf16_dot_query() { return cpu_has_bf16_dot() && detect_isa() == Isa::kAvx512; }
}  // namespace cpu

// Large outputs are written once, right after allocation: on Linux, ask for transparent huge pages on them, so the
// first touch costs one fault per 2 MB instead of one per 4 KB (measured: a fresh 33 MB output cost 18.6 ms to
// touch vs 2.3 ms to refill). Only this buffer is advised; a no-op where THP is off or the range is too small.
static void advise_huge_pages(void* ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = 2u << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + nbytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

// The CPU kernels below read and write fp32 and bf16 tensors as they are (contiguous), computing in fp32; fp16 is
// converted to fp32 copies on the way in and rounded once on the way out. `op` names the op in the checks' messages
// (checks.h).

// The kernels' element type for a tensor dtype: bf16 is read natively, everything else (fp32; fp16 after the
// conversion above) as fp32.
static cpu::Elem elem_of(at::ScalarType dtype) { return dtype == at::kBFloat16 ? cpu::Elem::kBF16 : cpu::Elem::kF32; }

// A small parameter (bias, LayerNorm or depthwise weight; any kernel dtype) as fp32 values: the tensor's own memory
// when it is contiguous fp32 (an fp32 model's parameters: no copy), else a copy converted by a plain loop: per call,
// `.to(kFloat)` on each of them cost more in dispatch and allocation than the copies (measured with the (9, C)
// transpose below: 50 -> 26 us per conv_ffn call on a 2x2 map, 33 -> 14 us per dwconv_gelu call). Absent: nullptr.
// Not copyable (data() may point into its own copy); as_floats returns it by guaranteed elision.
class Floats {
 public:
  Floats() = default;
  explicit Floats(const at::Tensor& t) {
    if (t.scalar_type() == at::kFloat && t.is_contiguous()) {
      data_ = t.data_ptr<float>();  // the caller's tensor outlives this view
      return;
    }
    const at::Tensor c = t.contiguous();
    copy_.resize(c.numel());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "as_floats", [&] {
      const scalar_t* p = c.data_ptr<scalar_t>();
      for (size_t i = 0; i < copy_.size(); ++i) copy_[i] = static_cast<float>(p[i]);
    });
    data_ = copy_.data();
  }
  Floats(int64_t n, float fill) : copy_(n, fill), data_(copy_.data()) {}  // n copies of `fill`
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  const float* data() const { return data_; }
  float operator[](int64_t i) const { return data_[i]; }

 private:
  std::vector<float> copy_;
  const float* data_ = nullptr;
};
static Floats as_floats(const at::Tensor& t) { return Floats(t); }
static Floats as_floats(const c10::optional<at::Tensor>& t) {
  if (t.has_value()) return Floats(*t);
  return Floats();
}
// An optional parameter of n values as fp32, n copies of `absent` when it is not given.
static Floats as_floats(const c10::optional<at::Tensor>& t, int64_t n, float absent) {
  if (t.has_value()) return Floats(*t);
  return Floats(n, absent);
}
static const float* data_or_null(const Floats& v) { return v.data(); }

// The depthwise weight (C, 1, 3, 3) as fp32 (9, C) tap-major: each tap's channels contiguous for the vector loop.
static std::vector<float> tap_major(const at::Tensor& weight) {
  const Floats w = as_floats(weight);
  const int64_t C = weight.size(0);
  std::vector<float> out(9 * C);
  // Tap by tap: the writes run along a row of the output and the reads stay in the cache lines of 9-value rows; the
  // other order wrote 9 rows C floats apart per channel (a dwconv_gelu call on a 1×1 map of 2048 channels: 46 -> 15 us).
  const float* wp = w.data();
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t c = 0; c < C; ++c) out[t * C + c] = wp[c * 9 + t];
  return out;
}

// t as `dtype`, contiguous; no dispatch at all when it already is (the common case: parameters, activations).
static at::Tensor as_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return (t.scalar_type() == dtype ? t : t.to(dtype)).contiguous();
}

// x as the kernels read it: contiguous, bf16 kept, other dtypes as fp32.
static at::Tensor kernel_input(const at::Tensor& x) {
  return as_dtype(x, x.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat);
}

// ------------------------------------------------------------------------------------------ dwconv + GELU
at::Tensor dwconv_gelu_cpu(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           int64_t height, int64_t width, bool relu_input) {
  constexpr const char* op = "dwconv_gelu";
  checks::dwconv_gelu(x_in, weight, bias, height, width);
  CHECK_DEVICE(x_in, at::kCPU);
  const int64_t B = x_in.size(0), C = x_in.size(2);
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = kernel_input(x_in);
  const cpu::Elem elem = elem_of(x.scalar_type());
  at::Tensor y = at::empty_like(x);
  if (y.numel() == 0) return y.to(dtype);  // B = 0
  CHECK_CONTIGUOUS(y);  // the row pointers below assume dense (B, H, W, C) rows
  const std::vector<float> wt = tap_major(weight);
  const Floats b = as_floats(bias);
  advise_huge_pages(y.data_ptr(), y.nbytes());
  const char* xp = static_cast<const char*>(x.data_ptr());
  const float* bp = data_or_null(b);
  char* yp = static_cast<char*>(y.data_ptr());
  // In bytes, so one loop serves both element types; all offsets <= x.nbytes() (the checks matched N to x).
  const int64_t row_bytes = width * C * static_cast<int64_t>(x.element_size()), image_bytes = height * row_bytes;
  const cpu::DwconvGeluRowFn row = cpu::dwconv_gelu_row();
  at::parallel_for(0, B * height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bi = r / height, h = r % height;
      const char* image = xp + bi * image_bytes;
      const void* rows[3] = {h > 0 ? image + (h - 1) * row_bytes : nullptr, image + h * row_bytes,
                             h + 1 < height ? image + (h + 1) * row_bytes : nullptr};
      row(rows, elem, wt.data(), bp, yp + bi * image_bytes + h * row_bytes, elem, width, C, relu_input);
    }
  });
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

// ------------------------------------------------------------------------------------------ Linear SRA pool
at::Tensor linear_sra_pool_cpu(const at::Tensor& x_in, int64_t height, int64_t width, int64_t pool_size) {
  constexpr const char* op = "linear_sra_pool";
  checks::linear_sra_pool(x_in, height, width, pool_size);
  CHECK_DEVICE(x_in, at::kCPU);
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = kernel_input(x_in);
  const cpu::Elem elem = elem_of(x.scalar_type());
  const int64_t B = x.size(0), C = x.size(2), N = height * width, P = pool_size;
  at::Tensor y = at::empty({B, P * P, C}, x.options());  // B·P·P·C checked not to overflow
  if (y.numel() == 0) return y.to(dtype);  // B = 0 or C = 0
  CHECK_CONTIGUOUS(x);
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  const int64_t es = x.element_size();
  const cpu::LinearSraPoolCellFn cell = cpu::linear_sra_pool_cell();
  at::parallel_for(0, B * P * P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t bi = k / (P * P), ij = k % (P * P);
      cell(xp + bi * N * C * es, yp + k * C * es, elem, ij / P, ij % P, height, width, C, P);
    }
  });
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

// ------------------------------------------------------------------------------------------ LayerNorm
// Over the channels of (B, N, C) tokens. PyTorch's CPU LayerNorm measured 4-15x the time of a plain copy of its
// input at PVTv2's channel counts (C = 32-512; 11x in bf16 at C = 32); this one 2.0-2.1x PyTorch's at stage 1 @512²
// (bench.report's fused-op table).
// LayerNorm of `rows` contiguous rows of C elements of type `elem` (x → y, not aliased), weight / bias optional, on
// the row kernel in parallel (also the C++ attention layer's and block's LayerNorms).
static void layer_norm_into(const void* x, void* y, cpu::Elem elem, int64_t rows, int64_t C,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            double eps) {
  const Floats w = as_floats(weight, C, 1.0f), b = as_floats(bias, C, 0.0f);
  const int64_t row_bytes = C * (elem == cpu::Elem::kBF16 ? 2 : 4);
  const char* xp = static_cast<const char*>(x);
  char* yp = static_cast<char*>(y);
  const cpu::LayerNormRowsFn fn = cpu::layer_norm_rows();
  const float feps = static_cast<float>(eps);
  // Grain: about 64 KB of rows per task, so small maps stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / row_bytes);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    fn(xp + begin * row_bytes, yp + begin * row_bytes, elem, w.data(), b.data(), end - begin, C, feps);
  });
}

at::Tensor layer_norm_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias, double eps) {
  checks::layer_norm(x_in, weight, bias, eps);
  constexpr const char* op = "layer_norm";
  CHECK_DEVICE(x_in, at::kCPU);
  const int64_t C = x_in.size(2), rows = x_in.size(0) * x_in.size(1);
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = kernel_input(x_in);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y.to(dtype);
  layer_norm_into(x.data_ptr(), y.data_ptr(), elem_of(x.scalar_type()), rows, C, weight, bias, eps);
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

// ------------------------------------------------------------------------------------------ SRA attention
// softmax(q kᵀ · scale) v per head, flash-style (cpu/attention.h): each (image, head)'s keys and values are packed
// once (K transposed into key blocks), then tasks of query rows run in parallel. fp32 and bf16 are read and written
// as they are (fp32 compute); fp16 through fp32 copies.
// One (B, N, C) → (B, N, C) attention over element pointers: q / k / v / out rows `*_row` elements apart and images
// `*_img` apart (k and v may be strided views into one (B, M, 2C) projection); elem / esize their storage.
struct AttentionIo {
  const char* q;
  int64_t q_img, q_row;
  const char* k;
  int64_t k_img, k_row;
  const char* v;
  int64_t v_img, v_row;
  char* out;
  int64_t out_img, out_row;
};
static void attention_into(const AttentionIo& io, cpu::Elem elem, int64_t esize, int64_t B, int64_t N, int64_t M,
                           int64_t C, int64_t num_heads, double scale) {
  const int64_t D = C / num_heads;
  const cpu::AttentionGeometry geo = cpu::attention_geometry()(M, D);
  const cpu::AttentionPackFn pack = cpu::attention_pack();
  const cpu::AttentionRowsFn rows = cpu::attention_rows();
  const int64_t heads = B * num_heads;
  // Tensors rather than std::vector: PyTorch's CPU allocator aligns them to 64 B, so the kernel's vector loads of K,
  // V and its scratch never split cache lines (a 16 B-aligned buffer measured 1.10-1.15x slower at 1024 keys), and
  // nothing is zero-filled before the kernel writes every element.
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor packed_t = at::empty({heads * geo.packed}, f32);
  float* packed = packed_t.data_ptr<float>();
  at::parallel_for(0, heads, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / num_heads, h = bh % num_heads;
      pack(io.k + (b * io.k_img + h * D) * esize, io.k_row, io.v + (b * io.v_img + h * D) * esize, io.v_row, elem, M,
           D, packed + bh * geo.packed);
    }
  });
  const int64_t per_head = (N + geo.task_rows - 1) / geo.task_rows;
  const float qscale = static_cast<float>(scale * 1.4426950408889634);  // log2(e): the kernel's softmax is base 2
  at::parallel_for(0, heads * per_head, 1, [&](int64_t t0, int64_t t1) {
    const at::Tensor scratch_t = at::empty({geo.scratch}, f32);
    float* scratch = scratch_t.data_ptr<float>();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bh = t / per_head, n0 = (t % per_head) * geo.task_rows;
      const int64_t b = bh / num_heads, h = bh % num_heads;
      rows(io.q + (b * io.q_img + n0 * io.q_row + h * D) * esize, io.q_row, elem, std::min(geo.task_rows, N - n0),
           packed + bh * geo.packed, M, D, qscale, io.out + (b * io.out_img + n0 * io.out_row + h * D) * esize,
           io.out_row, scratch);
    }
  });
}

// fp32 attention of contiguous q (B, N, C) over the keys and values of one contiguous (B, M, 2C) projection, into
// o (B, N, C): the SRA layer's and the bf16 block's fallback (heads it does not take).
static void attention_fp32(const float* q, const float* kv, float* o, int64_t B, int64_t N, int64_t M, int64_t C,
                           int64_t num_heads, double scale) {
  const AttentionIo io{reinterpret_cast<const char*>(q),      N * C,     C,
                       reinterpret_cast<const char*>(kv),     M * 2 * C, 2 * C,
                       reinterpret_cast<const char*>(kv + C), M * 2 * C, 2 * C,
                       reinterpret_cast<char*>(o),            N * C,     C};
  attention_into(io, cpu::Elem::kF32, sizeof(float), B, N, M, C, num_heads, scale);
}

at::Tensor sra_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, int64_t num_heads,
                             double scale) {
  constexpr const char* op = "sra_attention";
  checks::sra_attention(q_in, k_in, v_in, num_heads, scale);
  CHECK_DEVICE(q_in, at::kCPU);
  const auto dtype = q_in.scalar_type();
  const auto io_dtype = dtype == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  // q is read through its row stride and k / v through theirs; only a channel stride other than 1 needs a copy.
  const auto dense_rows = [&](const at::Tensor& t) {
    const at::Tensor c = t.scalar_type() == io_dtype ? t : t.to(io_dtype);
    return c.stride(2) == 1 ? c : c.contiguous();
  };
  const at::Tensor q = dense_rows(q_in), k = dense_rows(k_in), v = dense_rows(v_in);
  const int64_t B = q.size(0), N = q.size(1), C = q.size(2), M = k.size(1);
  at::Tensor out = at::empty({B, N, C}, q.options());
  if (out.numel() == 0) return out.to(dtype);
  const AttentionIo io{static_cast<const char*>(q.data_ptr()), q.stride(0), q.stride(1),
                       static_cast<const char*>(k.data_ptr()), k.stride(0), k.stride(1),
                       static_cast<const char*>(v.data_ptr()), v.stride(0), v.stride(1),
                       static_cast<char*>(out.data_ptr()),     out.stride(0), out.stride(1)};
  attention_into(io, elem_of(io_dtype), q.element_size(), B, N, M, C, num_heads, scale);
  return out.scalar_type() == dtype ? out : out.to(dtype);
}

// ------------------------------------------------------------------------------------------ token-map conv
// Stride-s k×k conv of a token map (cpu/token_conv.h): tasks of output pixels × 64-channel blocks in parallel, in fp32
// (bf16 / fp16 through fp32 copies), or bf16 × bf16 → fp32 with the weight packed in pairs. `packed` is the weight as
// ops.pack_weight (or pack_weight_pairs) lays it out (the one place that knows the layout; the Python ops pack it when
// the caller did not). Two ops share it: sr_conv (k = s, no padding) and token_conv (any stride and zero padding).
// out (B, Ho·Wo, co) fp32 = the stride-s k×k conv of x (B, height·width, ci) fp32 tokens (padded where the conv pads:
// Ho = conv_out(height, k, s), likewise Wo) on the packed weight.
static void token_conv_into(const float* xp, const float* wp, const float* bp, float* op_, int64_t B, int64_t height,
                            int64_t width, int64_t ci, int64_t co, int64_t k, int64_t s) {
  const int64_t wo = cpu::conv_out(width, k, s), m = cpu::conv_out(height, k, s) * wo;
  const cpu::TokenConvRangeFn range = cpu::token_conv_range();
  // Rows are the B·m output pixels; a share of them may span images.
  cpu::split_gemm(B * m, pack_blocks(co), k * k * ci, [&](int64_t r0, int64_t r1, int64_t cb0, int64_t cb1) {
    for (int64_t img = r0 / m; img * m < r1; ++img) {
      const int64_t p0 = std::max(r0, img * m) - img * m, p1 = std::min(r1, (img + 1) * m) - img * m;
      range(xp + img * height * width * ci, wp, bp, op_ + img * m * co, width, ci, co, k, s, wo, p0, p1, cb0, cb1);
    }
  });
}

// x (B, height·width, C) contiguous, zero-padded by `pad` on every side: (B, (height + 2·pad)·(width + 2·pad), C), so
// that every window of the conv reads whole rows (the GEMM tile's segments); x itself when pad is 0. One pass, rows in
// parallel.
static at::Tensor zero_padded(const at::Tensor& x, int64_t height, int64_t width, int64_t pad) {
  if (pad == 0) return x;
  const int64_t B = x.size(0), C = x.size(2), hp = height + 2 * pad, wp = width + 2 * pad;
  at::Tensor y = at::empty({B, hp * wp, C}, x.options());
  const int64_t es = x.element_size(), row = width * C * es, prow = wp * C * es, side = pad * C * es;
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(y.data_ptr());
  at::parallel_for(0, B * hp, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / hp, i = r % hp - pad;
      char* d = dst + r * prow;
      if (i < 0 || i >= height) {
        std::memset(d, 0, prow);
        continue;
      }
      std::memset(d, 0, side);
      std::memcpy(d + side, src + (b * height + i) * row, row);
      std::memset(d + side + row, 0, side);
    }
  });
  return y;
}

// The two ops' CPU kernel: x (B, height·width, ci) tokens; weight (co, ci, k, k); stride s; zero padding `pad`.
static at::Tensor token_conv_impl(const char* op, const at::Tensor& x_in, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, int64_t height, int64_t width, int64_t s,
                                  int64_t pad, const at::Tensor& packed_in) {
  CHECK_DEVICE(x_in, at::kCPU);
  const int64_t B = x_in.size(0), ci = x_in.size(2), co = weight.size(0), k = weight.size(2);
  const int64_t hp = height + 2 * pad, wp = width + 2 * pad;
  const int64_t m = cpu::conv_out(hp, k, s) * cpu::conv_out(wp, k, s);
  const auto dtype = x_in.scalar_type();
  const Floats b = as_floats(bias);
  if (packed_in.dim() == 4) {  // bf16 with the weight packed in pairs (checked): the bf16 GEMM, one rounding
    TORCH_CHECK(cpu::bf16_dot_available(), op, ": a weight packed in pairs needs a CPU with AVX512-BF16 running the "
                "AVX-512 kernels; here they run ", cpu::isa(), ": pack with ops.pack_weight instead");
    const at::Tensor packed = packed_in.contiguous();
    at::Tensor out = at::empty({B, m, co}, x_in.options().dtype(at::kFloat));
    if (out.numel() == 0) return out.to(dtype);
    const at::Tensor x = zero_padded(x_in.contiguous(), height, width, pad);
    cpu::token_conv_bf16(static_cast<const cpu::bf16*>(x.data_ptr()),
                         static_cast<const cpu::bf16*>(packed.data_ptr()), data_or_null(b), out.data_ptr<float>(), B,
                         hp, wp, ci, co, k, s);
    return out.to(dtype);
  }
  at::Tensor out = at::empty({B, m, co}, x_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return out.to(dtype);
  const at::Tensor x = zero_padded(as_dtype(x_in, at::kFloat), height, width, pad);
  const at::Tensor packed = as_dtype(packed_in, at::kFloat);
  token_conv_into(x.data_ptr<float>(), packed.data_ptr<float>(), data_or_null(b), out.data_ptr<float>(), B, hp, wp,
                  ci, co, k, s);
  return dtype == at::kFloat ? out : out.to(dtype);
}

at::Tensor sr_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       int64_t height, int64_t width, const at::Tensor& packed) {
  checks::sr_conv(x, weight, bias, height, width, packed);
  return token_conv_impl("sr_conv", x, weight, bias, height, width, weight.size(2), 0, packed);
}

at::Tensor token_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          int64_t height, int64_t width, int64_t stride, int64_t padding, const at::Tensor& packed) {
  checks::token_conv(x, weight, bias, height, width, stride, padding, packed);
  return token_conv_impl("token_conv", x, weight, bias, height, width, stride, padding, packed);
}

// ------------------------------------------------------------------------------------------ SRA layer
// The attention of a PVTv2 block in one call, so that none of its six steps pays a dispatch, an allocation of its
// own or a Python round trip (at 224² the unfused layer spent about as long between its ops as in them):
//   q = x·Wqᵀ + bq;  r = LN(sr_conv(x)) (x itself without sr_weight);  [k v] = r·Wkvᵀ + bkv;
//   o = softmax(q kᵀ · scale) v per head;  y = o·Wpᵀ + bp (+ residual, in the GEMM's epilogue).
// fp32 compute (bf16 / fp16 through fp32 copies). The GEMMs run on the packed weights (packed_gemm.h), the reduction
// on sr_conv's tiles, the attention on attention.h's kernel, LayerNorm on its row kernel.
// The layer on fp32 tensors: x (B, N, C) contiguous → y (B, N, C) (may not alias x), residual like x or undefined;
// pk the packed weights as fp32.
static void sra_layer_fp32(const at::Tensor& x, const c10::optional<at::Tensor>& q_bias,
                           const c10::optional<at::Tensor>& kv_bias, const c10::optional<at::Tensor>& proj_bias,
                           const c10::optional<at::Tensor>& sr_weight, const c10::optional<at::Tensor>& sr_bias,
                           const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                           const float* residual, int64_t height, int64_t width, int64_t num_heads, double scale,
                           double eps, const std::vector<at::Tensor>& pk, float* y) {
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  const Floats bq = as_floats(q_bias), bkv = as_floats(kv_bias), bp = as_floats(proj_bias);
  const float* xp = x.data_ptr<float>();

  at::Tensor q = at::empty({B, N, C}, x.options());
  cpu::packed_linear(xp, C, B * N, C, pk[0].data_ptr<float>(), C, data_or_null(bq), nullptr, 0,
                     q.data_ptr<float>(), C);

  // Keys and values come from M tokens per image: the reduced map, normalised, or x itself.
  const float* src = xp;
  int64_t M = N;
  at::Tensor reduced;
  if (sr_weight.has_value()) {
    const int64_t s = sr_weight->size(2);
    M = (height / s) * (width / s);
    const at::Tensor conv = at::empty({B, M, C}, x.options());
    reduced = at::empty({B, M, C}, x.options());
    const Floats bsr = as_floats(sr_bias);
    token_conv_into(xp, pk[3].data_ptr<float>(), data_or_null(bsr), conv.data_ptr<float>(), B, height, width, C, C, s,
                    s);
    layer_norm_into(conv.data_ptr(), reduced.data_ptr(), cpu::Elem::kF32, B * M, C, norm_weight, norm_bias, eps);
    src = reduced.data_ptr<float>();
  }
  at::Tensor kv = at::empty({B, M, 2 * C}, x.options());
  float* kvp = kv.data_ptr<float>();
  cpu::packed_linear(src, C, B * M, C, pk[1].data_ptr<float>(), 2 * C, data_or_null(bkv), nullptr, 0, kvp, 2 * C);

  at::Tensor o = at::empty({B, N, C}, x.options());
  attention_fp32(q.data_ptr<float>(), kvp, o.data_ptr<float>(), B, N, M, C, num_heads, scale);
  cpu::packed_linear(o.data_ptr<float>(), C, B * N, C, pk[2].data_ptr<float>(), C, data_or_null(bp), residual, C, y,
                     C);
}

static std::vector<at::Tensor> as_float_list(at::TensorList ts) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : ts) out.push_back(as_dtype(t, at::kFloat));
  return out;
}

at::Tensor sra_layer_cpu(const at::Tensor& x_in, const at::Tensor& q_weight, const c10::optional<at::Tensor>& q_bias,
                         const at::Tensor& kv_weight, const c10::optional<at::Tensor>& kv_bias,
                         const at::Tensor& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                         const c10::optional<at::Tensor>& sr_weight, const c10::optional<at::Tensor>& sr_bias,
                         const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                         const c10::optional<at::Tensor>& residual_in, int64_t height, int64_t width,
                         int64_t num_heads, double scale, double eps, at::TensorList packed_in) {
  constexpr const char* op = "sra_layer";
  checks::sra_layer(x_in, q_weight, q_bias, kv_weight, kv_bias, proj_weight, proj_bias, sr_weight, sr_bias,
                    norm_weight, norm_bias, residual_in, height, width, num_heads, scale, eps, packed_in);
  CHECK_DEVICE(x_in, at::kCPU);
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = as_dtype(x_in, at::kFloat);
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (y.numel() == 0) return y.to(dtype);
  const at::Tensor residual = residual_in.has_value() ? as_dtype(*residual_in, at::kFloat) : at::Tensor();
  sra_layer_fp32(x, q_bias, kv_bias, proj_bias, sr_weight, sr_bias, norm_weight, norm_bias,
                 residual.defined() ? residual.data_ptr<float>() : nullptr, height, width, num_heads, scale, eps,
                 as_float_list(packed_in), y.data_ptr<float>());
  return dtype == at::kFloat ? y : y.to(dtype);
}

// cpu::conv_ffn_forward on x (B, H·W, c_in) contiguous, elements of type `elem`, into y: w1 (hidden, c_in) and w2
// (c_out, hidden) contiguous in that type, the biases as fp32 values, the depthwise weight tap-major; packed weights
// (fp32) or nullptr (conv_ffn_cpu). residual (fp32, like y; the blocks pass x1): y = residual + the FFN, added in
// fc2's epilogue. bf16 (pvt_block's native bf16 path): fc1 / fc2 packed in pairs, y rounded once.
static void conv_ffn_into(const void* x, void* y, cpu::Elem elem, int64_t B, int64_t height, int64_t width,
                          const at::Tensor& w1, const c10::optional<at::Tensor>& fc1_bias, const at::Tensor& dw_weight,
                          const c10::optional<at::Tensor>& dw_bias, const at::Tensor& w2,
                          const c10::optional<at::Tensor>& fc2_bias, const float* fc1_packed, const float* fc2_packed,
                          bool relu_input, const cpu::bf16* fc1_pairs = nullptr, const cpu::bf16* fc2_pairs = nullptr,
                          const float* residual = nullptr) {
  const Floats b1 = as_floats(fc1_bias), db = as_floats(dw_bias), b2 = as_floats(fc2_bias);
  const std::vector<float> dwt = tap_major(dw_weight);  // (9, hidden)
  cpu::ConvFfnArgs args{x,
                        w1.data_ptr(),
                        data_or_null(b1),
                        dwt.data(),
                        data_or_null(db),
                        w2.data_ptr(),
                        data_or_null(b2),
                        fc1_packed,
                        fc2_packed,
                        y,
                        B,
                        height,
                        width,
                        w1.size(1),
                        w1.size(0),
                        w2.size(0),
                        relu_input,
                        elem,
                        fc1_pairs,
                        fc2_pairs,
                        residual};
  cpu::conv_ffn_forward(args);
}

// ------------------------------------------------------------------------------------------ PVTv2 block
// A whole block for inference in one call: x1 = x + SRA(LN1(x)) (sra_layer_fp32), y = x1 + FFN(LN2(x1))
// (conv_ffn_forward), so that nothing between its steps goes back to Python: through the modules, a block spent
// 0.3-0.4 ms per call more than its ops called back to back (b0 / b2 at 224², 2 threads). fp32 compute (bf16 / fp16
// through fp32 copies). attention: [q_w, q_b, kv_w, kv_b, proj_w, proj_b, sr_w, sr_b, sr_norm_w, sr_norm_b];
// ffn: [fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b]; eps: [norm1, norm2, sr_norm]; packed: the layer's, then fc1's and
// fc2's (ops.pack_block_weights).
// The block on bf16 x with its weights packed in pairs (ops.pack_block_weights on a CPU with AVX512-BF16): every
// GEMM bf16 × bf16 → fp32 on AVX512-BF16's dot product (packed_linear_bf16, token_conv_bf16), and so the attention's
// two products for heads of even width up to 128 (attention_bf16: 1.10x b0 / b2 end to end at 512², 1.22x b2 at
// 1024², 1.01-1.03x at 224², against attention.h's fp32 kernel on fp32 q, k, v); the rest in fp32 as the fp32 block
// computes it. Values are rounded to bf16 where the module run in bf16 rounds them (the LayerNorms' outputs, q, k, v,
// the attention's output, the GELU's output; fc1's sums too in conv_ffn's whole-map schedule), the probabilities as
// SDPA's bf16 kernels round them; the residual stream and the other sums stay fp32, and y = x1 + FFN is rounded once.
// Why: on CPUs without AMX the per-op bf16 path spent more time between its oneDNN calls than in them (the attention
// module at b2's 14² stage: 0.9 ms, 0.35 ms of it GEMM arithmetic).
static at::Tensor pvt_block_bf16(const at::Tensor& x_in, const c10::optional<at::Tensor>& norm1_weight,
                                 const c10::optional<at::Tensor>& norm1_bias,
                                 const c10::List<c10::optional<at::Tensor>>& attention,
                                 const c10::optional<at::Tensor>& norm2_weight,
                                 const c10::optional<at::Tensor>& norm2_bias,
                                 const c10::List<c10::optional<at::Tensor>>& ffn, int64_t height, int64_t width,
                                 int64_t num_heads, double scale, at::ArrayRef<double> eps, bool relu_input,
                                 at::TensorList packed_in) {
  constexpr const char* op = "pvt_block";
  TORCH_CHECK(cpu::bf16_dot_available(), op, ": weights packed in pairs (ops.pack_weight_pairs) need a CPU with "
              "AVX512-BF16 running the AVX-512 kernels; here the kernels run ", cpu::isa(),
              " (PVTV2_FAST_CPU_ISA caps them): pack with ops.pack_weight instead");
  const at::Tensor xb = x_in.contiguous();
  const int64_t B = xb.size(0), N = xb.size(1), C = xb.size(2);
  at::Tensor y = at::empty_like(xb, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const auto f32 = xb.options().dtype(at::kFloat);
  std::vector<at::Tensor> pk;
  for (const at::Tensor& t : packed_in) pk.push_back(t.contiguous());
  const auto pairs = [&](size_t i) { return static_cast<const cpu::bf16*>(pk[i].data_ptr()); };
  const auto bf = [](const at::Tensor& t) { return static_cast<cpu::bf16*>(t.data_ptr()); };
  const cpu::RoundToBf16Fn round_fn = cpu::round_to_bf16();
  const auto round = [&](const at::Tensor& from, const at::Tensor& to) {
    const float* src = from.data_ptr<float>();
    cpu::bf16* dst = static_cast<cpu::bf16*>(to.data_ptr());
    at::parallel_for(0, from.numel(), 1 << 14, [&](int64_t i0, int64_t i1) { round_fn(src + i0, dst + i0, i1 - i0); });
  };
  const Floats bq = as_floats(attention.get(1)), bkv = as_floats(attention.get(3));
  const Floats bp = as_floats(attention.get(5));

  at::Tensor hb = at::empty({B, N, C}, xb.options());  // the bf16 input of the next GEMM
  // LN1 reads x's bf16 and rounds once on store: the bits of LN1 of the fp32 copy, rounded (one pass, not two).
  layer_norm_into(xb.data_ptr(), hb.data_ptr(), cpu::Elem::kBF16, B * N, C, norm1_weight, norm1_bias, eps[0]);
  // Heads of even width up to 128 (PVTv2's 32 / 64) run attention_bf16 on bf16 q, k, v (AVX512-BF16 dot products),
  // others attention.h's fp32 kernel on fp32 ones.
  const int64_t D = C / num_heads;
  const bool bf16_attention = D % 2 == 0 && D <= 128;
  at::Tensor q = at::empty({B, N, C}, bf16_attention ? xb.options() : f32);
  if (bf16_attention)
    cpu::packed_linear_bf16(bf(hb), C, B * N, C, pairs(0), C, data_or_null(bq), nullptr, 0, bf(q), C);
  else
    cpu::packed_linear_bf16(bf(hb), C, B * N, C, pairs(0), C, data_or_null(bq), nullptr, 0, q.data_ptr<float>(), C);
  // Keys and values from the reduced map, normalised, or from LN1(x) itself.
  const cpu::bf16* src = bf(hb);
  int64_t M = N;
  at::Tensor reduced_b;
  if (attention.get(6).has_value()) {
    const int64_t s = attention.get(6)->size(2);
    M = (height / s) * (width / s);
    const at::Tensor conv = at::empty({B, M, C}, f32), reduced = at::empty({B, M, C}, f32);
    const Floats bsr = as_floats(attention.get(7));
    cpu::token_conv_bf16(bf(hb), pairs(3), data_or_null(bsr), conv.data_ptr<float>(), B, height, width, C, C, s, s);
    layer_norm_into(conv.data_ptr(), reduced.data_ptr(), cpu::Elem::kF32, B * M, C, attention.get(8),
                    attention.get(9), eps[2]);
    reduced_b = at::empty({B, M, C}, xb.options());
    round(reduced, reduced_b);
    src = bf(reduced_b);
  }
  if (bf16_attention) {  // q, k, v rounded to bf16, as the module run in bf16 rounds its projections
    const at::Tensor kv = at::empty({B, M, 2 * C}, xb.options());
    cpu::packed_linear_bf16(src, C, B * M, C, pairs(1), 2 * C, data_or_null(bkv), nullptr, 0, bf(kv), 2 * C);
    cpu::attention_bf16(bf(q), N * C, C, bf(kv), M * 2 * C, 2 * C, bf(kv) + C, M * 2 * C, 2 * C, bf(hb), N * C, C, B,
                        N, M, C, num_heads, scale);
  } else {
    at::Tensor kv = at::empty({B, M, 2 * C}, f32);
    float* kvp = kv.data_ptr<float>();
    cpu::packed_linear_bf16(src, C, B * M, C, pairs(1), 2 * C, data_or_null(bkv), nullptr, 0, kvp, 2 * C);
    at::Tensor o = at::empty({B, N, C}, f32);
    attention_fp32(q.data_ptr<float>(), kvp, o.data_ptr<float>(), B, N, M, C, num_heads, scale);
    round(o, hb);
  }
  at::Tensor x1 = at::empty({B, N, C}, f32);  // x + the attention, fp32
  // x's bf16 widened in the epilogue: the sums of an fp32 copy of x (no pass to make one).
  cpu::packed_linear_bf16_bf16_residual(bf(hb), C, B * N, C, pairs(2), C, data_or_null(bp),
                                        static_cast<const cpu::bf16*>(xb.data_ptr()), C, x1.data_ptr<float>(), C);
  const at::Tensor h = at::empty({B, N, C}, f32);  // LN2 of the fp32 x1, then rounded
  layer_norm_into(x1.data_ptr(), h.data_ptr(), cpu::Elem::kF32, B * N, C, norm2_weight, norm2_bias, eps[1]);
  round(h, hb);
  const size_t n_attn = pk.size() - 2;
  conv_ffn_into(hb.data_ptr(), y.data_ptr(), cpu::Elem::kBF16, B, height, width, as_dtype(*ffn.get(0), at::kBFloat16),
                ffn.get(1), *ffn.get(2), ffn.get(3), as_dtype(*ffn.get(4), at::kBFloat16), ffn.get(5), nullptr,
                nullptr, relu_input, pairs(n_attn), pairs(n_attn + 1), x1.data_ptr<float>());
  return y;
}

at::Tensor pvt_block_cpu(const at::Tensor& x_in, const c10::optional<at::Tensor>& norm1_weight,
                         const c10::optional<at::Tensor>& norm1_bias,
                         const c10::List<c10::optional<at::Tensor>>& attention,
                         const c10::optional<at::Tensor>& norm2_weight, const c10::optional<at::Tensor>& norm2_bias,
                         const c10::List<c10::optional<at::Tensor>>& ffn, int64_t height, int64_t width,
                         int64_t num_heads, double scale, at::ArrayRef<double> eps, bool relu_input,
                         at::TensorList packed_in) {
  constexpr const char* op = "pvt_block";
  checks::pvt_block(x_in, norm1_weight, norm1_bias, attention, norm2_weight, norm2_bias, ffn, height, width, num_heads,
                    scale, eps, packed_in);
  CHECK_DEVICE(x_in, at::kCPU);
  if (packed_in[0].dim() == 4)  // bf16 weights packed in pairs (the checks matched them to a bf16 x)
    return pvt_block_bf16(x_in, norm1_weight, norm1_bias, attention, norm2_weight, norm2_bias, ffn, height, width,
                          num_heads, scale, eps, relu_input, packed_in);
  const auto dtype = x_in.scalar_type();
  const at::Tensor x = as_dtype(x_in, at::kFloat);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (y.numel() == 0) return y.to(dtype);
  const std::vector<at::Tensor> pk = as_float_list(packed_in);
  const size_t n_attn = pk.size() - 2;  // the layer's packed weights; fc1's and fc2's last
  const std::vector<at::Tensor> pk_attn(pk.begin(), pk.begin() + n_attn);

  at::Tensor h = at::empty(x.sizes(), x.options());
  layer_norm_into(x.data_ptr(), h.data_ptr(), cpu::Elem::kF32, B * N, C, norm1_weight, norm1_bias, eps[0]);
  at::Tensor x1 = at::empty(x.sizes(), x.options());
  sra_layer_fp32(h, attention.get(1), attention.get(3), attention.get(5), attention.get(6),
                 attention.get(7), attention.get(8), attention.get(9), x.data_ptr<float>(), height, width,
                 num_heads, scale, eps[2], pk_attn, x1.data_ptr<float>());
  layer_norm_into(x1.data_ptr(), h.data_ptr(), cpu::Elem::kF32, B * N, C, norm2_weight, norm2_bias, eps[1]);

  conv_ffn_into(h.data_ptr(), y.data_ptr(), cpu::Elem::kF32, B, height, width, as_dtype(*ffn.get(0), at::kFloat),
                ffn.get(1), *ffn.get(2), ffn.get(3), as_dtype(*ffn.get(4), at::kFloat), ffn.get(5),
                pk[n_attn].data_ptr<float>(), pk[n_attn + 1].data_ptr<float>(), relu_input, nullptr, nullptr,
                x1.data_ptr<float>());  // y = x1 + FFN in fc2's epilogue (fp addition commutes: the bits of x1 + ffn)
  return dtype == at::kFloat ? y : y.to(dtype);
}

// ------------------------------------------------------------------------------------------ conv FFN
at::Tensor conv_ffn_cpu(const at::Tensor& x_in, const at::Tensor& fc1_weight, const c10::optional<at::Tensor>& fc1_bias,
                        const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
                        const at::Tensor& fc2_weight, const c10::optional<at::Tensor>& fc2_bias, int64_t height,
                        int64_t width, bool relu_input, const c10::optional<at::Tensor>& fc1_packed,
                        const c10::optional<at::Tensor>& fc2_packed) {
  constexpr const char* op = "conv_ffn";
  checks::conv_ffn(x_in, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, height, width, fc1_packed,
                   fc2_packed);
  CHECK_DEVICE(x_in, at::kCPU);
  const int64_t B = x_in.size(0), c_in = x_in.size(2), hidden = fc1_weight.size(0), c_out = fc2_weight.size(0);
  // The GEMMs run on the Fortran BLAS, whose sizes are 32-bit ints (rows per GEMM are checked in conv_ffn_forward).
  TORCH_CHECK(std::max({c_in, hidden, c_out, width}) <= INT_MAX, op, ": the CPU kernel's BLAS takes channel counts "
              "and widths below 2^31, got c_in ", c_in, ", hidden ", hidden, ", c_out ", c_out, ", width ", width);
  const auto dtype = x_in.scalar_type();
  // bf16 natively (bf16 GEMMs, fp32 accumulation) when the BLAS has a bf16 GEMM; otherwise, and for fp16, fp32 copies
  // in and one rounding out.
  const bool native_bf16 = dtype == at::kBFloat16 && cpu::has_bf16_gemm();
  const auto io_dtype = native_bf16 ? at::kBFloat16 : at::kFloat;
  const at::Tensor x = as_dtype(x_in, io_dtype);
  const at::Tensor w1 = as_dtype(fc1_weight, io_dtype), w2 = as_dtype(fc2_weight, io_dtype);
  at::Tensor y = at::empty({B, height * width, c_out}, x.options());
  if (y.numel() == 0) return y.to(dtype);  // B = 0 or c_out = 0 (c_in = 0 runs: fc1 gives its bias)
  // fp32 GEMMs run on the packed weights when given (packed_gemm.h), else on the BLAS's sgemm.
  const bool packed = io_dtype == at::kFloat && fc1_packed.has_value();
  const at::Tensor p1 = packed ? as_dtype(*fc1_packed, at::kFloat) : at::Tensor();
  const at::Tensor p2 = packed ? as_dtype(*fc2_packed, at::kFloat) : at::Tensor();
  conv_ffn_into(x.data_ptr(), y.data_ptr(), elem_of(io_dtype), B, height, width, w1, fc1_bias, dw_weight, dw_bias, w2,
                fc2_bias, packed ? p1.data_ptr<float>() : nullptr, packed ? p2.data_ptr<float>() : nullptr,
                relu_input);
  return y.scalar_type() == dtype ? y : y.to(dtype);
}

// ------------------------------------------------------------------------------------------ meta (shapes)
// The same checks as the kernels, so tracing (FakeTensor, torch.compile, torch.export) rejects what running would.
at::Tensor dwconv_gelu_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            int64_t height, int64_t width, bool) {
  checks::dwconv_gelu(x, weight, bias, height, width);
  return at::empty(x.sizes(), x.options());
}
at::Tensor conv_ffn_meta(const at::Tensor& x, const at::Tensor& fc1_weight, const c10::optional<at::Tensor>& fc1_bias,
                         const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
                         const at::Tensor& fc2_weight, const c10::optional<at::Tensor>& fc2_bias, int64_t height,
                         int64_t width, bool, const c10::optional<at::Tensor>& fc1_packed,
                         const c10::optional<at::Tensor>& fc2_packed) {
  checks::conv_ffn(x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, height, width, fc1_packed,
                   fc2_packed);
  return at::empty({x.size(0), x.size(1), fc2_weight.size(0)}, x.options());
}
at::Tensor sr_conv_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t height, int64_t width, const at::Tensor& packed) {
  checks::sr_conv(x, weight, bias, height, width, packed);
  const int64_t s = weight.size(2);
  return at::empty({x.size(0), (height / s) * (width / s), weight.size(0)}, x.options());
}
at::Tensor token_conv_meta(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           int64_t height, int64_t width, int64_t stride, int64_t padding, const at::Tensor& packed) {
  checks::token_conv(x, weight, bias, height, width, stride, padding, packed);
  const int64_t k = weight.size(2), ho = cpu::conv_out(height + 2 * padding, k, stride);
  return at::empty({x.size(0), ho * cpu::conv_out(width + 2 * padding, k, stride), weight.size(0)}, x.options());
}
at::Tensor sra_layer_meta(const at::Tensor& x, const at::Tensor& q_weight, const c10::optional<at::Tensor>& q_bias,
                          const at::Tensor& kv_weight, const c10::optional<at::Tensor>& kv_bias,
                          const at::Tensor& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                          const c10::optional<at::Tensor>& sr_weight, const c10::optional<at::Tensor>& sr_bias,
                          const c10::optional<at::Tensor>& norm_weight, const c10::optional<at::Tensor>& norm_bias,
                          const c10::optional<at::Tensor>& residual, int64_t height, int64_t width, int64_t num_heads,
                          double scale, double eps, at::TensorList packed) {
  checks::sra_layer(x, q_weight, q_bias, kv_weight, kv_bias, proj_weight, proj_bias, sr_weight, sr_bias, norm_weight,
                    norm_bias, residual, height, width, num_heads, scale, eps, packed);
  return at::empty(x.sizes(), x.options());
}
at::Tensor pvt_block_meta(const at::Tensor& x, const c10::optional<at::Tensor>& norm1_weight,
                          const c10::optional<at::Tensor>& norm1_bias,
                          const c10::List<c10::optional<at::Tensor>>& attention,
                          const c10::optional<at::Tensor>& norm2_weight, const c10::optional<at::Tensor>& norm2_bias,
                          const c10::List<c10::optional<at::Tensor>>& ffn, int64_t height, int64_t width,
                          int64_t num_heads, double scale, at::ArrayRef<double> eps, bool,
                          at::TensorList packed) {
  checks::pvt_block(x, norm1_weight, norm1_bias, attention, norm2_weight, norm2_bias, ffn, height, width, num_heads,
                    scale, eps, packed);
  return at::empty(x.sizes(), x.options());
}
at::Tensor linear_sra_pool_meta(const at::Tensor& x, int64_t height, int64_t width, int64_t pool_size) {
  checks::linear_sra_pool(x, height, width, pool_size);
  return at::empty({x.size(0), pool_size * pool_size, x.size(2)}, x.options());
}

at::Tensor sra_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t num_heads,
                              double scale) {
  checks::sra_attention(q, k, v, num_heads, scale);
  return at::empty(q.sizes(), q.options());
}

at::Tensor layer_norm_meta(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, double eps) {
  checks::layer_norm(x, weight, bias, eps);
  return at::empty_like(x, at::MemoryFormat::Contiguous);
}

std::string cpu_isa() { return cpu::isa(); }

// The calling thread's sticky floating-point exception flags (x86 MXCSR bits 0-5: invalid, denormal operand, divide
// by zero, overflow, underflow, precision), cleared afterwards when `clear`; -1 where there is no MXCSR. For tests:
// a kernel run on one thread on ordinary data must not raise "denormal" or "underflow", the signs of subnormals,
// each of which costs a microcode assist (~100+ cycles) on x86.
int64_t fp_exception_flags(bool clear) {
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned int csr = __builtin_ia32_stmxcsr();
  if (clear) __builtin_ia32_ldmxcsr(csr & ~0x3fu);
  return static_cast<int64_t>(csr & 0x3fu);
#else
  (void)clear;
  return -1;
#endif
}
std::vector<int64_t> block_cache_stats() {
  const auto s = cpu::block_cache_stats();
  return {s.begin(), s.end()};
}

}  // namespace pvtv2

TORCH_LIBRARY(pvtv2_fast_C, m) {
  m.def("dwconv_gelu(Tensor x, Tensor weight, Tensor? bias, int height, int width, bool relu_input) -> Tensor");
  m.def("linear_sra_pool(Tensor x, int height, int width, int pool_size) -> Tensor");
  m.def(
      "conv_ffn(Tensor x, Tensor fc1_weight, Tensor? fc1_bias, Tensor dw_weight, Tensor? dw_bias, Tensor fc2_weight, "
      "Tensor? fc2_bias, int height, int width, bool relu_input, Tensor? fc1_packed=None, Tensor? fc2_packed=None) -> "
      "Tensor");
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.def("sr_conv(Tensor x, Tensor weight, Tensor? bias, int height, int width, Tensor packed) -> Tensor");
  m.def(
      "token_conv(Tensor x, Tensor weight, Tensor? bias, int height, int width, int stride, int padding, "
      "Tensor packed) -> Tensor");
  m.def("sra_attention(Tensor q, Tensor k, Tensor v, int num_heads, float scale) -> Tensor");
  m.def(
      "sra_layer(Tensor x, Tensor q_weight, Tensor? q_bias, Tensor kv_weight, Tensor? kv_bias, Tensor proj_weight, "
      "Tensor? proj_bias, Tensor? sr_weight, Tensor? sr_bias, Tensor? norm_weight, Tensor? norm_bias, "
      "Tensor? residual, int height, int width, int num_heads, float scale, float eps, Tensor[] packed) -> Tensor");
  m.def(
      "pvt_block(Tensor x, Tensor? norm1_weight, Tensor? norm1_bias, Tensor?[] attention, Tensor? norm2_weight, "
      "Tensor? norm2_bias, Tensor?[] ffn, int height, int width, int num_heads, float scale, float[] eps, "
      "bool relu_input, Tensor[] packed) -> Tensor");
  m.def("cpu_isa() -> str", &pvtv2::cpu_isa);
  m.def("cpu_bf16_dot() -> bool", &pvtv2::cpu::bf16_dot_query);
  m.def("fp_exception_flags(bool clear) -> int", &pvtv2::fp_exception_flags);
  // The CPU block cache (csrc/cpu/block_cache.h): process state, not tensor ops; called around eager forwards only.
  m.def("block_cache_enter() -> ()", &pvtv2::cpu::block_cache_enter);
  m.def("block_cache_exit() -> ()", &pvtv2::cpu::block_cache_exit);
  m.def("block_cache_release() -> int", &pvtv2::cpu::block_cache_release);
  m.def("block_cache_stats() -> int[]", &pvtv2::block_cache_stats);
}

TORCH_LIBRARY_IMPL(pvtv2_fast_C, CPU, m) {
  m.impl("dwconv_gelu", &pvtv2::dwconv_gelu_cpu);
  m.impl("linear_sra_pool", &pvtv2::linear_sra_pool_cpu);
  m.impl("layer_norm", &pvtv2::layer_norm_cpu);
  m.impl("sra_attention", &pvtv2::sra_attention_cpu);
  m.impl("sr_conv", &pvtv2::sr_conv_cpu);
  m.impl("token_conv", &pvtv2::token_conv_cpu);
  m.impl("sra_layer", &pvtv2::sra_layer_cpu);
  // The conv FFN's GEMMs need a BLAS; without one the op has no CPU kernel and Python uses the composition.
  if (pvtv2::cpu::has_sgemm()) m.impl("conv_ffn", &pvtv2::conv_ffn_cpu);
  if (pvtv2::cpu::has_sgemm()) m.impl("pvt_block", &pvtv2::pvt_block_cpu);  // its FFN is conv_ffn's
}

TORCH_LIBRARY_IMPL(pvtv2_fast_C, Meta, m) {
  m.impl("dwconv_gelu", &pvtv2::dwconv_gelu_meta);
  m.impl("linear_sra_pool", &pvtv2::linear_sra_pool_meta);
  m.impl("conv_ffn", &pvtv2::conv_ffn_meta);
  m.impl("layer_norm", &pvtv2::layer_norm_meta);
  m.impl("sra_attention", &pvtv2::sra_attention_meta);
  m.impl("sr_conv", &pvtv2::sr_conv_meta);
  m.impl("token_conv", &pvtv2::token_conv_meta);
  m.impl("sra_layer", &pvtv2::sra_layer_meta);
  m.impl("pvt_block", &pvtv2::pvt_block_meta);
}

// Importable as pvtv2_fast._C; importing it runs the registrations above.
static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pvtv2_fast C++/CUDA operators", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
