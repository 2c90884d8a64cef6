// The kernels for the baseline ISA (any CPU): the same loops with one scalar lane.
#define PVT_ISA generic
#include "kernels.h"

namespace pvtv2 {
namespace cpu {
void dwconv_gelu_row_default(const float* x, const float* wt, const float* bias, float* y, int64_t h, int64_t H,
                             int64_t W, int64_t C, bool relu) {
  generic::dwconv_gelu_row_impl<generic::ScalarOps>(x, wt, bias, y, h, H, W, C, relu);
}
void pool_cell_default(const float* x, float* y, int64_t i, int64_t j, int64_t H, int64_t W, int64_t C, int64_t P) {
  generic::pool_cell_impl<generic::ScalarOps>(x, y, i, j, H, W, C, P);
}
}  // namespace cpu
}  // namespace pvtv2
