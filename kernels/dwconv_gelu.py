"""Depthwise 3×3 convolution (zero padding 1) + bias + exact-erf GELU on ``(B, N, C)`` tokens of an H×W map,
with an optional ReLU on the input (PVTv2-Li applies ReLU after fc1). One read and one write of the tensor.

Each program owns ``BLOCK_P`` consecutive tokens (flat pixel index ``h·W + w``, so a tile may span rows) and
``BLOCK_C`` channels; channels are the contiguous axis, so every tap is a coalesced ``BLOCK_P × BLOCK_C`` tile
load, and the rows above and below are re-read from cache, not DRAM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dwconv_gelu_kernel(
    X, Wt, Bias, Y,
    H, W, C,
    stride_xb, stride_xn, stride_xc,
    stride_yb, stride_yn, stride_yc,
    HAS_BIAS: tl.constexpr,
    RELU_INPUT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # flat pixel index h·W + w
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    h = offs_p // W
    w = offs_p % W

    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    x_base = X + pid_b * stride_xb + offs_c[None, :] * stride_xc
    for dh in tl.static_range(3):
        hh = h + (dh - 1)
        row_ok = mask_p & (hh >= 0) & (hh < H)
        for dw in tl.static_range(3):
            ww = w + (dw - 1)
            m = (row_ok & (ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
            x = tl.load(x_base + (hh * W + ww)[:, None] * stride_xn, mask=m, other=0.0).to(tl.float32)
            if RELU_INPUT:
                x = tl.maximum(x, 0.0)
            wt = tl.load(Wt + offs_c * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            acc += x * wt[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    # exact GELU: x·Φ(x) = 0.5·x·(1 + erf(x/√2)); tl.math.erf works compiled and interpreted
    y = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    y_ptrs = Y + pid_b * stride_yb + offs_p[:, None] * stride_yn + offs_c[None, :] * stride_yc
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


def dwconv_gelu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, height: int, width: int,
                    relu_input: bool = False) -> torch.Tensor:
    """``x (B, H·W, C)``, ``weight (C, 1, 3, 3)`` contiguous, ``bias (C,)`` → ``(B, H·W, C)`` contiguous."""
    from . import INTERPRETED

    b, n, c = x.shape
    y = torch.empty((b, n, c), device=x.device, dtype=x.dtype)
    if INTERPRETED:  # the interpreter pays per program: few, large tiles
        block_p, block_c = min(1024, triton.next_power_of_2(n)), min(256, triton.next_power_of_2(c))
    else:
        block_p, block_c = 16, min(64, triton.next_power_of_2(c))  # 8 outputs/thread: no spills (kernels/aot.py)
    grid = (b, triton.cdiv(n, block_p), triton.cdiv(c, block_c))
    dwconv_gelu_kernel[grid](x, weight, bias if bias is not None else weight, y, height, width, c, *x.stride(),
                             *y.stride(), HAS_BIAS=bias is not None, RELU_INPUT=relu_input, BLOCK_P=block_p,
                             BLOCK_C=block_c, num_warps=4)
    return y
