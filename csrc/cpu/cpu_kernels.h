// The CPU side's internal interface: the per-ISA entry points of kernels.h, the pick for this CPU, and the
// band-streaming conv FFN of conv_ffn.cpp. Raw pointers only; ops.cpp turns tensors into these calls.
//
// ISA files (kernels_avx2.cpp, kernels_avx512.cpp, attention_bf16.cpp, packed_gemm_bf16.cpp) compile under a
// `#pragma GCC target`, and every shared header (the standard library, ATen, ours) is included before it. Included
// after it, their inline functions would be compiled for the pragma's ISA: the linker may keep that copy for every
// caller (an AVX-512 at::empty once: SIGILL on AVX2 CPUs; tests/ops/test_cpu_kernels.py checks the disassembly), and
// GCC 13 refuses to build it ("target specific option mismatch" on libstdc++'s always_inline functions).
#pragma once

#include <stdint.h>

#include <cstring>
#include <functional>
#include <string>

namespace pvtv2 {
namespace cpu {

// The element types the kernels read and write. bf16 is computed in fp32 (loads widen exactly; stores round to
// nearest even, as c10::BFloat16 does); fp16 is converted by ops.cpp around fp32 kernels.
enum class Elem : int { kF32 = 0, kBF16 = 1 };
// A bf16 value as stored: the upper 16 bits of the fp32 with the same sign and exponent (c10::BFloat16's layout).
struct bf16 {
  uint16_t bits;
};

// fp32 → bf16 bits, round to nearest even, NaN kept quiet (c10::BFloat16's rounding): the scalar tails of the bf16
// kernels.
inline uint16_t round_bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if (v != v) return 0x7fc0;
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

// 2^f on f in [-1/2, 1/2] (Cephes exp2f's minimax polynomial, ~2e-7 relative): the vector exp2 of each ISA (and of
// attention_bf16.cpp) is 2^round(x) · p(x - round(x)), p(f) = 1 + f·(P0·f^5 + ... + P5).
constexpr float kExp2P[6] = {1.535336188319500e-4f, 1.339887440266574e-3f, 9.618437357674640e-3f,
                             5.550332471162809e-2f, 2.402264791363012e-1f, 6.931472028550421e-1f};

// rows: 3 pointers to (W, C) input rows of element type `in` (above / at / below; nullptr = zero padding); y: the
// (W, C) output row of type `out`; wt: (9, C) fp32 tap-major weights, bias: C floats or nullptr.
using DwconvGeluRowFn = void (*)(const void* const* rows, Elem in, const float* wt, const float* bias, void* y,
                                 Elem out, int64_t W, int64_t C, bool relu_input);
// x: one image's (H·W, C) tokens; y: the C values of output cell (i, j) of its P×P adaptive average pool; both of
// element type `elem` (sums in fp32).
using LinearSraPoolCellFn = void (*)(const void* x, void* y, Elem elem, int64_t i, int64_t j, int64_t H, int64_t W,
                                     int64_t C, int64_t P);
// One output row of upsample_argmax (resample.h): src0 / src1 the (W_in, L) source rows with weights w0 / w1,
// col_index / col_weight (W_out, 2), scratch tmp (W_in·L floats) and v (L floats), labels (W_out,) out.
using UpsampleArgmaxRowFn = void (*)(const float* src0, const float* src1, float w0, float w1,
                                     const int64_t* col_index, const float* col_weight, int64_t W_in, int64_t W_out,
                                     int64_t L, float* tmp, float* v, int32_t* labels);
// One output row of upsample_accumulate (resample.h): out (W_out, C) += one source map's resampled row.
using UpsampleAccumulateRowFn = void (*)(const float* src0, const float* src1, float w0, float w1,
                                         const int64_t* col_index, const float* col_weight, int64_t W_in,
                                         int64_t W_out, int64_t C, float* tmp, float* out);
// LayerNorm of `rows` contiguous rows of C elements of type `elem` (x → y), w and b C floats.
using LayerNormRowsFn = void (*)(const void* x, void* y, Elem elem, const float* w, const float* b, int64_t rows,
                                 int64_t C, float eps);
// y[k] = bf16(x[k]), k < n.
using RoundToBf16Fn = void (*)(const float* x, bf16* y, int64_t n);
// Spatial-reduction attention of one (image, head) (attention.h). Sizes, in floats, for M keys of head dim D:
// task_rows query rows per attention_rows call, packed floats per head, scratch floats per calling thread.
struct AttentionGeometry {
  int64_t task_rows, packed, scratch;
};
using AttentionGeometryFn = AttentionGeometry (*)(int64_t M, int64_t D);
// k, v: M rows of D elements of type `elem` (row strides in elements) → `packed` (geometry.packed floats).
using AttentionPackFn = void (*)(const void* k, int64_t k_stride, const void* v, int64_t v_stride, Elem elem,
                                 int64_t M, int64_t D, float* packed);
// Up to task_rows query rows q (row stride q_stride) → out rows (row stride out_stride), both of type `elem`;
// qscale = softmax scale · log2(e).
using AttentionRowsFn = void (*)(const void* q, int64_t q_stride, Elem elem, int64_t n_rows, const float* packed,
                                 int64_t M, int64_t D, float qscale, void* out, int64_t out_stride, float* scratch);

// The strided k×k conv of a token map (token_conv.h), on the calling thread: output pixels [p0, p1) × output channel
// blocks [cb0, cb1) of one image: x its (H·W, Ci) fp32 tokens (map width `width`, padded where the conv pads), packed
// the (ceil(Co / 64), k·k·Ci, 64) weight (pvtv2/packing.h), bias Co floats or nullptr, out its (Ho·Wo, Co) tokens
// (output width Wo), stride s.
using TokenConvRangeFn = void (*)(const float* x, const float* packed, const float* bias, float* out, int64_t width,
                                  int64_t Ci, int64_t Co, int64_t k, int64_t s, int64_t Wo, int64_t p0, int64_t p1,
                                  int64_t cb0, int64_t cb1);
// fp32 GEMM on a prepacked weight (packed_gemm.h), on the calling thread: out (rows, N) = a (rows, K; rows lda apart)
// · weight + bias (+ residual, rows ldr apart; bias / residual may be nullptr) over the 64-channel column blocks
// [cb0, cb1) of packed, the (ceil(N / 64), K, 64) weight as ops.pack_weight lays it out; out rows ldo apart.
using PackedGemmRowsFn = void (*)(const float* a, int64_t lda, int64_t rows, int64_t K, const float* packed, int64_t N,
                                  const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo,
                                  int64_t cb0, int64_t cb1);
// Rows per register tile of that GEMM and of token_conv (split rows across threads in multiples of it).
using PackedGemmTileRowsFn = int64_t (*)();

#define PVT_DECLARE_ENTRY_POINTS(SUFFIX)                                                                            \
  void dwconv_gelu_row_##SUFFIX(const void* const*, Elem, const float*, const float*, void*, Elem, int64_t, int64_t, \
                                bool);                                                                             \
  void linear_sra_pool_cell_##SUFFIX(const void*, void*, Elem, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                                     int64_t);                                                                     \
  void layer_norm_rows_##SUFFIX(const void*, void*, Elem, const float*, const float*, int64_t, int64_t, float);      \
  void round_to_bf16_##SUFFIX(const float*, bf16*, int64_t);                                                       \
  AttentionGeometry attention_geometry_##SUFFIX(int64_t, int64_t);                                                 \
  void attention_pack_##SUFFIX(const void*, int64_t, const void*, int64_t, Elem, int64_t, int64_t, float*);        \
  void attention_rows_##SUFFIX(const void*, int64_t, Elem, int64_t, const float*, int64_t, int64_t, float, void*,   \
                               int64_t, float*);                                                                   \
  void upsample_argmax_row_##SUFFIX(const float*, const float*, float, float, const int64_t*, const float*, int64_t,  \
                                    int64_t, int64_t, float*, float*, int32_t*);                                   \
  void token_conv_range_##SUFFIX(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,       \
                                 int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);                   \
  void packed_gemm_rows_##SUFFIX(const float*, int64_t, int64_t, int64_t, const float*, int64_t, const float*,       \
                                 const float*, int64_t, float*, int64_t, int64_t, int64_t);                        \
  int64_t packed_gemm_tile_rows_##SUFFIX();                                                                        \
  void upsample_accumulate_row_##SUFFIX(const float*, const float*, float, float, const int64_t*, const float*,      \
                                        int64_t, int64_t, int64_t, float*, float*);
PVT_DECLARE_ENTRY_POINTS(default)
#if defined(__x86_64__) || defined(_M_X64)
PVT_DECLARE_ENTRY_POINTS(avx2)
PVT_DECLARE_ENTRY_POINTS(avx512)
#endif
#undef PVT_DECLARE_ENTRY_POINTS

// The widest ISA the CPU (and OS) support: "avx512" (AVX-512F), "avx2" (AVX2 + FMA) or "default"; the
// environment variable PVTV2_FAST_CPU_ISA (one of those names) caps it, so tests cover every path on one machine.
std::string isa();
DwconvGeluRowFn dwconv_gelu_row();
LinearSraPoolCellFn linear_sra_pool_cell();
RoundToBf16Fn round_to_bf16();
LayerNormRowsFn layer_norm_rows();
TokenConvRangeFn token_conv_range();
PackedGemmRowsFn packed_gemm_rows();
PackedGemmTileRowsFn packed_gemm_tile_rows();
AttentionGeometryFn attention_geometry();
AttentionPackFn attention_pack();
AttentionRowsFn attention_rows();
UpsampleArgmaxRowFn upsample_argmax_row();
UpsampleAccumulateRowFn upsample_accumulate_row();

// packed_gemm_rows over the whole GEMM, split across the calling thread pool (on the calling thread alone inside a
// parallel region): out (rows, N) = a · weight + bias (+ residual), packed as for packed_gemm_rows (packed_gemm.cpp).
void packed_linear(const float* a, int64_t lda, int64_t rows, int64_t K, const float* packed, int64_t N,
                   const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo);
// How packed_linear and token_conv share a GEMM of `rows` rows (tiles of packed_gemm_tile_rows()) × `blocks` column
// blocks of a packed weight of K rows among the calling thread pool: fn(r0, r1, cb0, cb1) runs each share (on the
// calling thread alone inside a parallel region).
void split_gemm(int64_t rows, int64_t blocks, int64_t K,
                const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn);

// bf16 GEMMs on AVX512-BF16's dot product (packed_gemm_bf16.cpp), only where bf16_dot_available(): the CPU has
// AVX512-BF16 and the active ISA (isa()) is AVX-512. Weights packed in pairs of k as ops.pack_weight_pairs lays them
// out ((ceil(N / 64), K / 2, 64, 2) bf16, K even); fp32 sums and output; split over the calling thread pool as
// packed_linear is (on the calling thread inside a parallel region).
bool bf16_dot_available();
// out (rows, N) = a (rows, K bf16; rows lda apart) · weight + bias (+ residual, rows ldr apart).
void packed_linear_bf16(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed, int64_t N,
                        const float* bias, const float* residual, int64_t ldr, float* out, int64_t ldo);
// The same with out rounded to bf16 once (round to nearest even).
void packed_linear_bf16(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed, int64_t N,
                        const float* bias, const float* residual, int64_t ldr, bf16* out, int64_t ldo);
// fp32 out with a bf16 residual (widened exactly: the sums of the fp32 one holding the same values).
void packed_linear_bf16_bf16_residual(const bf16* a, int64_t lda, int64_t rows, int64_t K, const bf16* packed,
                                      int64_t N, const float* bias, const bf16* residual, int64_t ldr, float* out,
                                      int64_t ldo);
// softmax(q kᵀ · scale) v per (image, head) on bf16 q, k, v, out (attention_bf16.cpp: AVX512-BF16 dot products for
// both products, the probabilities rounded to bf16, softmax in fp32), rows and images `*_row` / `*_img` elements
// apart; head dims even and at most 128. Only where bf16_dot_available().
void attention_bf16(const bf16* q, int64_t q_img, int64_t q_row, const bf16* k, int64_t k_img, int64_t k_row,
                    const bf16* v, int64_t v_img, int64_t v_row, bf16* out, int64_t out_img, int64_t out_row,
                    int64_t B, int64_t N, int64_t M, int64_t C, int64_t num_heads, double scale);
// Output rows (or columns) of a k×k conv at stride s over `size` input ones (already padded, where the conv pads).
inline int64_t conv_out(int64_t size, int64_t k, int64_t s) { return (size - k) / s + 1; }
// out (B, Ho·Wo, co) = the stride-s k×k conv of x (B, height·width, ci) bf16 tokens (padded, where the conv pads;
// Ho = conv_out(height, k, s), likewise Wo), the weight packed in pairs with K = k·k·ci in (kh, kw, ci) order
// (token_conv.h's).
void token_conv_bf16(const bf16* x, const bf16* packed, const float* bias, float* out, int64_t B, int64_t height,
                     int64_t width, int64_t ci, int64_t co, int64_t k, int64_t s);

// y = fc2(GELU(dwconv3x3(ReLU?(fc1(x))))) for B images of H×W tokens, all contiguous:
// x (B, H·W, c_in), fc1_w (hidden, c_in), fc2_w (c_out, hidden) and y (B, H·W, c_out) of element type `elem`;
// dw_wt (9, hidden) tap-major and the biases fp32 (biases may be nullptr). The widened hidden state only ever exists
// for a few rows per thread (see conv_ffn.cpp); bf16 runs its GEMMs in bf16 with fp32 accumulation and output.
struct ConvFfnArgs {
  const void* x;
  const void* fc1_w;
  const float* fc1_b;
  const float* dw_wt;
  const float* dw_b;
  const void* fc2_w;
  const float* fc2_b;
  // fp32 runs: fc1_w / fc2_w packed as ops.pack_weight lays them out, for the packed-weight GEMM (packed_gemm.h);
  // nullptr: the BLAS's sgemm on the plain weights.
  const float* fc1_packed;
  const float* fc2_packed;
  void* y;
  int64_t batch, height, width, c_in, hidden, c_out;
  bool relu_input;
  Elem elem;
  // bf16 runs: fc1_w / fc2_w packed in pairs (packed_linear_bf16) instead of MKL's bf16 GEMM; nullptr: MKL's.
  const bf16* fc1_pairs = nullptr;
  const bf16* fc2_pairs = nullptr;
  // y = residual + fc2(...) (fp32, like y; nullptr: none), added to fc2's fp32 sums before y is rounded.
  const float* residual = nullptr;
};

// Whether a BLAS sgemm is linked in (the conv FFN's GEMMs run on it); false on torch builds without one.
bool has_sgemm();
// Whether the BLAS also has a bf16 × bf16 → fp32 GEMM (MKL's gemm_bf16bf16f32: AMX / AVX512-BF16 where the CPU has
// them, emulated elsewhere), which conv_ffn's bf16 path needs; false on builds without MKL.
bool has_bf16_gemm();
// Rows per band for a hidden state of `row_floats` floats per map row (override: PVTV2_FAST_FFN_BAND_KB, a whole
// number of KB from 1 to 1048576; any other value set raises).
int64_t conv_ffn_band_rows(int64_t row_floats, int64_t height, int64_t batch);
// Whether conv_ffn runs whole-map GEMMs rather than bands, for a hidden state of hidden_bytes (B·H·W·hidden fp32) and
// fc1 + fc2 weights of weight_bytes (fp32). PVTV2_FAST_FFN_WHOLE_KB replaces the measured rule with one cap (0: bands).
bool conv_ffn_whole_map(int64_t hidden_bytes, int64_t weight_bytes);
void conv_ffn_forward(const ConvFfnArgs& args);

}  // namespace cpu
}  // namespace pvtv2
