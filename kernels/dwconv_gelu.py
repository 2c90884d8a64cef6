"""Depthwise 3×3 convolution (zero padding 1) + bias + exact-erf GELU on ``(B, N, C)`` tokens of an H×W map,
with an optional ReLU on the input (PVTv2-Li applies ReLU after fc1). One read and one write of the tensor.

Each program owns ``BLOCK_P`` consecutive tokens (flat pixel index ``h·W + w``, so a tile may span rows) and
``BLOCK_C`` channels; channels are the contiguous axis, so every tap is a coalesced ``BLOCK_P × BLOCK_C`` tile
load, and the rows above and below are re-read from cache, not DRAM.

Grid: pixel blocks on axis 0 (a 4096² image's stage-1 map is 1,048,576 tokens = 65,536 blocks of 16, one more
than axes 1 and 2 allow), channel blocks on axis 1, the batch on axis 2 (launched in chunks past 65535).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import batch_chunks, check_grid

# Tiles, defined once here; kernels/aot.py compiles exactly these.
BLOCK_P = 16  # tokens per program: with BLOCK_C = 64, 8 outputs per thread and no spills (kernels/aot.py)
MAX_BLOCK_C = 64
NUM_WARPS = 4
INTERPRETED_MAX_TILE = (1024, 256)  # (BLOCK_P, BLOCK_C): the interpreter pays per program, so few large tiles


# H, W are the map's size: specialising on them (Triton specialises ints on == 1 and divisibility by 16)
# gains nothing, loads run along channels; not doing it keeps one binary per dtype and tile, not per map size.
@triton.jit(do_not_specialize=["H", "W"])
def dwconv_gelu_kernel(
    X,
    Wt,
    Bias,
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
    HAS_BIAS: tl.constexpr,
    RELU_INPUT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2)
    p0 = pid_p * BLOCK_P
    offs_p = p0 + tl.arange(0, BLOCK_P)  # flat pixel index h·W + w
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    h = offs_p // W
    w = offs_p % W

    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    # The tile's base in 64 bits (b·stride_b and p0·stride_n pass 2³¹ once B·N·C does, e.g. batch 8 at 4096²);
    # the taps' offsets from it span a row either side of the tile, so they stay 32-bit.
    x_base = X + (pid_b.to(tl.int64) * stride_xb + p0.to(tl.int64) * stride_xn) + offs_c[None, :] * stride_xc
    for dh in tl.static_range(3):
        hh = h + (dh - 1)
        row_ok = mask_p & (hh >= 0) & (hh < H)
        for dw in tl.static_range(3):
            ww = w + (dw - 1)
            m = (row_ok & (ww >= 0) & (ww < W))[:, None] & mask_c[None, :]
            tap = hh * W + ww - p0
            x = tl.load(x_base + tap[:, None] * stride_xn, mask=m, other=0.0).to(tl.float32)
            if RELU_INPUT:
                x = tl.maximum(x, 0.0)
            wt = tl.load(Wt + offs_c * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            acc += x * wt[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    # exact GELU: x·Φ(x) = 0.5·x·(1 + erf(x/√2)); tl.math.erf works compiled and interpreted
    y = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    y_base = Y + (pid_b.to(tl.int64) * stride_yb + p0.to(tl.int64) * stride_yn)
    y_ptrs = y_base + tl.arange(0, BLOCK_P)[:, None] * stride_yn + offs_c[None, :] * stride_yc
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


def tile(n: int, c: int, interpreted: bool) -> tuple:
    """``(BLOCK_P, BLOCK_C)`` for ``n`` tokens of ``c`` channels."""
    if interpreted:
        max_p, max_c = INTERPRETED_MAX_TILE
        return min(max_p, triton.next_power_of_2(n)), min(max_c, triton.next_power_of_2(c))
    return BLOCK_P, min(MAX_BLOCK_C, triton.next_power_of_2(c))


def launch_grid(n: int, c: int, batch: int, block_p: int, block_c: int) -> tuple:
    """The grid of one launch over ``batch`` items: (pixel blocks, channel blocks, batch)."""
    return check_grid((triton.cdiv(n, block_p), triton.cdiv(c, block_c), batch))


def dwconv_gelu_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, height: int, width: int, relu_input: bool = False
) -> torch.Tensor:
    """``x (B, H·W, C)``, ``weight (C, 1, 3, 3)`` contiguous, ``bias (C,)`` → ``(B, H·W, C)`` contiguous."""
    from . import INTERPRETED

    b, n, c = x.shape
    y = torch.empty((b, n, c), device=x.device, dtype=x.dtype)
    block_p, block_c = tile(n, c, INTERPRETED)
    for start, stop in batch_chunks(b):
        xs, ys = x[start:stop], y[start:stop]
        dwconv_gelu_kernel[launch_grid(n, c, stop - start, block_p, block_c)](
            xs,
            weight,
            bias if bias is not None else weight,
            ys,
            height,
            width,
            c,
            *xs.stride(),
            *ys.stride(),
            HAS_BIAS=bias is not None,
            RELU_INPUT=relu_input,
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS,
        )
    return y
