"""Adaptive average pooling of ``(B, N, C)`` tokens of an H×W map to ``P×P`` tokens ``(B, P·P, C)``, no NCHW copy.

Bins are exactly those of ``torch.nn.AdaptiveAvgPool2d``: output row ``i`` averages input rows
``[⌊i·H/P⌋, ⌈(i+1)·H/P⌉)`` (likewise for columns), so bins may overlap, and for H < P several outputs share a row.
Each program owns one output cell and a block of channels: it reads the cell's bin as flat ``BLOCK_BIN × BLOCK_C``
tiles (channels contiguous) and accumulates in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import check_grid

# Tiles, defined once here; kernels/aot.py compiles exactly these.
MAX_BLOCK_BIN = 32  # bin pixels per step (a 4096² stage-1 map's 147×147 bins take ~700 steps)
MAX_BLOCK_C = 128
NUM_WARPS = 4
INTERPRETED_MAX_TILE = (4096, 256)  # (BLOCK_BIN, BLOCK_C): the interpreter pays per step, so one step per bin


# H, W are the map's size: specialising on them (Triton specialises ints on == 1 and divisibility by 16)
# gains nothing, loads run along channels; not doing it keeps one binary per dtype and tile, not per map size.
@triton.jit(do_not_specialize=["H", "W"])
def linear_sra_pool_kernel(
    X,
    Y,
    H,
    W,
    C,
    stride_xb,
    stride_xn,
    stride_xc,
    stride_yb,
    stride_yn,
    stride_yc,
    P: tl.constexpr,
    BLOCK_BIN: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_cell = tl.program_id(0)  # b·P·P + i·P + j
    pid_c = tl.program_id(1)
    b = pid_cell // (P * P)
    cell = pid_cell % (P * P)
    i = cell // P
    j = cell % P
    h0 = (i * H) // P
    h1 = ((i + 1) * H + P - 1) // P
    w0 = (j * W) // P
    w1 = ((j + 1) * W + P - 1) // P
    bin_w = w1 - w0
    bin_size = (h1 - h0) * bin_w

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros([BLOCK_BIN, BLOCK_C], tl.float32)
    # 64-bit: b·stride_b and the bin's first token × stride_n pass 2³¹ once B·N·C does; offsets inside the bin
    # (bounded by its rows × W) stay 32-bit.
    first = h0 * W + w0
    base = X + (b.to(tl.int64) * stride_xb + first.to(tl.int64) * stride_xn) + offs_c[None, :] * stride_xc
    # The bin's pixels as one flat range, BLOCK_BIN at a time (usually a single step).
    for k0 in range(0, bin_size, BLOCK_BIN):
        k = k0 + tl.arange(0, BLOCK_BIN)
        token = (k // bin_w) * W + k % bin_w  # relative to the bin's first token
        mask = (k < bin_size)[:, None] & mask_c[None, :]
        acc += tl.load(base + token[:, None] * stride_xn, mask=mask, other=0.0).to(tl.float32)
    out = tl.sum(acc, axis=0) / bin_size.to(tl.float32)
    y_ptrs = Y + b.to(tl.int64) * stride_yb + cell * stride_yn + offs_c * stride_yc
    tl.store(y_ptrs, out.to(Y.dtype.element_ty), mask=mask_c)


def linear_sra_pool_fwd(x: torch.Tensor, height: int, width: int, pool_size: int = 7) -> torch.Tensor:
    """``x (B, H·W, C)`` → ``(B, P·P, C)`` averages over AdaptiveAvgPool2d's bins."""
    from . import INTERPRETED

    b, n, c = x.shape
    y = torch.empty((b, pool_size * pool_size, c), device=x.device, dtype=x.dtype)
    max_bin = (-(-height // pool_size) + 1) * (-(-width // pool_size) + 1)
    max_bin_tile, max_c_tile = INTERPRETED_MAX_TILE if INTERPRETED else (MAX_BLOCK_BIN, MAX_BLOCK_C)
    block_bin, block_c = min(max_bin_tile, triton.next_power_of_2(max_bin)), min(max_c_tile, triton.next_power_of_2(c))
    grid = check_grid((b * pool_size * pool_size, triton.cdiv(c, block_c)))  # cells on axis 0: no 65535 limit
    linear_sra_pool_kernel[grid](
        x,
        y,
        height,
        width,
        c,
        *x.stride(),
        *y.stride(),
        P=pool_size,
        BLOCK_BIN=block_bin,
        BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )
    return y
