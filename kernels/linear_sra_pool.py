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


@triton.jit
def linear_sra_pool_kernel(
    X, Y,
    H, W, C,
    stride_xb, stride_xn, stride_xc,
    stride_yb, stride_yn, stride_yc,
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
    base = X + b * stride_xb + offs_c[None, :] * stride_xc
    # The bin's pixels as one flat range, BLOCK_BIN at a time (usually a single step).
    for k0 in range(0, bin_size, BLOCK_BIN):
        k = k0 + tl.arange(0, BLOCK_BIN)
        token = (h0 + k // bin_w) * W + (w0 + k % bin_w)
        mask = (k < bin_size)[:, None] & mask_c[None, :]
        acc += tl.load(base + token[:, None] * stride_xn, mask=mask, other=0.0).to(tl.float32)
    out = tl.sum(acc, axis=0) / bin_size.to(tl.float32)
    tl.store(Y + b * stride_yb + cell * stride_yn + offs_c * stride_yc, out.to(Y.dtype.element_ty), mask=mask_c)


def linear_sra_pool_fwd(x: torch.Tensor, height: int, width: int, pool_size: int = 7) -> torch.Tensor:
    """``x (B, H·W, C)`` → ``(B, P·P, C)`` averages over AdaptiveAvgPool2d's bins."""
    from . import INTERPRETED

    b, n, c = x.shape
    y = torch.empty((b, pool_size * pool_size, c), device=x.device, dtype=x.dtype)
    max_bin = (-(-height // pool_size) + 1) * (-(-width // pool_size) + 1)
    if INTERPRETED:  # the interpreter pays per program and per step: one step per bin
        block_bin, block_c = min(4096, triton.next_power_of_2(max_bin)), min(256, triton.next_power_of_2(c))
    else:
        block_bin, block_c = min(32, triton.next_power_of_2(max_bin)), min(128, triton.next_power_of_2(c))
    grid = (b * pool_size * pool_size, triton.cdiv(c, block_c))
    linear_sra_pool_kernel[grid](x, y, height, width, c, *x.stride(), *y.stride(), P=pool_size,
                                 BLOCK_BIN=block_bin, BLOCK_C=block_c, num_warps=4)
    return y
