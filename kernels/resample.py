"""What the resampling kernels (:mod:`upsample_argmax`, :mod:`upsample_accumulate`) share: reading the taps.

Taps are data: output row ``r`` reads source rows ``row_index[r, 0..1]`` with weights ``row_weight[r, 0..1]``, output
column ``c`` source columns ``col_index[c, 0..1]`` with ``col_weight[c, 0..1]`` (``(n, 2)`` int64 / float32).
"""

import triton
import triton.language as tl


@triton.jit
def load_taps(RowIndex, RowWeight, ColIndex, ColWeight, r, offs_w, mask_w):
    """``(r0, r1, rw0, rw1, c0, c1, cw0, cw1)``: output row ``r``'s source rows and weights (scalars), and the source
    columns ``(BLOCK_W,)`` and weights ``(BLOCK_W, 1)`` of output columns ``offs_w`` (masked lanes read column 0
    with weight 0)."""
    r0 = tl.load(RowIndex + 2 * r)
    r1 = tl.load(RowIndex + 2 * r + 1)
    rw0 = tl.load(RowWeight + 2 * r)
    rw1 = tl.load(RowWeight + 2 * r + 1)
    c0 = tl.load(ColIndex + 2 * offs_w, mask=mask_w, other=0)
    c1 = tl.load(ColIndex + 2 * offs_w + 1, mask=mask_w, other=0)
    cw0 = tl.load(ColWeight + 2 * offs_w, mask=mask_w, other=0.0)[:, None]
    cw1 = tl.load(ColWeight + 2 * offs_w + 1, mask=mask_w, other=0.0)[:, None]
    return r0, r1, rw0, rw1, c0, c1, cw0, cw1
