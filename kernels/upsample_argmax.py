"""Separable 2-tap resampling of a channels-last ``(B, R_in, W_in, L)`` band fused with the argmax over its L
labels: ``(B, R, W)`` labels without ever writing the resampled ``R × W × L`` values.

Output row ``r`` reads source rows ``row_index[r, 0..1]`` with weights ``row_weight[r, 0..1]``, output column ``c``
reads source columns ``col_index[c, 0..1]`` with ``col_weight[c, 0..1]`` (bilinear resizing is this with
PyTorch's taps). Each program owns one output row and ``BLOCK_W`` output columns and walks the labels
``BLOCK_L`` at a time (loads along labels are contiguous), keeping a running maximum and its first index.
Arithmetic in fp32, rows first: ``t = x[r0]·rw0 + x[r1]·rw1`` at both source columns, then ``t0·cw0 + t1·cw1``.
NaN is taken as +inf, so the first NaN or +inf wins (``torch.argmax`` lets a NaN win over an earlier +inf).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import check_grid
from .resample import load_taps

# Tiles, defined once here; kernels/aot.py compiles exactly these.
BLOCK_W = 32
MAX_BLOCK_L = 64
NUM_WARPS = 8  # 32×64 tiles at 4 warps spill on sm_80 (kernels/aot.py); 8 warps: ~160 registers, no spills
INTERPRETED_TILE = (128, 512)  # (BLOCK_W, max BLOCK_L): the interpreter pays per program and per step


@triton.jit(do_not_specialize=["R", "W_out"])
def upsample_argmax_kernel(
    X,
    RowIndex,
    RowWeight,
    ColIndex,
    ColWeight,
    Y,
    R,
    W_out,
    L,
    stride_xb,
    stride_xr,
    stride_xw,
    stride_xl,
    stride_yb,
    stride_yr,
    stride_yw,
    BLOCK_W: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0)  # ((b·R + r) · W-blocks + w-block)
    n_wb = tl.cdiv(W_out, BLOCK_W)
    row = pid // n_wb  # b·R + r
    b = row // R
    r = row % R
    offs_w = (pid % n_wb) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_w = offs_w < W_out

    r0, r1, rw0, rw1, c0, c1, cw0, cw1 = load_taps(RowIndex, RowWeight, ColIndex, ColWeight, r, offs_w, mask_w)

    # 64-bit: a band of a 8192² map's logits passes 2³¹ elements
    image = X + b.to(tl.int64) * stride_xb
    row0 = image + r0 * stride_xr
    row1 = image + r1 * stride_xr
    col0 = (c0 * stride_xw)[:, None]
    col1 = (c1 * stride_xw)[:, None]

    best = tl.full([BLOCK_W], float("-inf"), tl.float32)
    best_index = tl.zeros([BLOCK_W], tl.int32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask = mask_w[:, None] & (offs_l < L)[None, :]
        lane = (offs_l * stride_xl)[None, :]
        x00 = tl.load(row0 + col0 + lane, mask=mask, other=0.0).to(tl.float32)
        x10 = tl.load(row1 + col0 + lane, mask=mask, other=0.0).to(tl.float32)
        x01 = tl.load(row0 + col1 + lane, mask=mask, other=0.0).to(tl.float32)
        x11 = tl.load(row1 + col1 + lane, mask=mask, other=0.0).to(tl.float32)
        t0 = x00 * rw0 + x10 * rw1
        t1 = x01 * rw0 + x11 * rw1
        v = t0 * cw0 + t1 * cw1
        v = tl.where(v != v, float("inf"), v)
        v = tl.where(mask, v, float("-inf"))
        m = tl.max(v, axis=1)
        i = tl.argmax(v, axis=1, tie_break_left=True)
        better = m > best  # strictly: an equal maximum in a later chunk is not the first
        best = tl.where(better, m, best)
        best_index = tl.where(better, l0 + i, best_index)

    y = Y + b.to(tl.int64) * stride_yb + r.to(tl.int64) * stride_yr + offs_w * stride_yw
    tl.store(y, best_index.to(Y.dtype.element_ty), mask=mask_w)


def upsample_argmax_fwd(
    x: torch.Tensor,
    row_index: torch.Tensor,
    row_weight: torch.Tensor,
    col_index: torch.Tensor,
    col_weight: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``x (B, R_in, W_in, L)`` (any strides), taps ``(R, 2)`` / ``(W, 2)`` (int64 index, float32 weight) →
    ``(B, R, W)`` labels of ``dtype``."""
    from . import INTERPRETED

    b, _, _, labels = x.shape
    rows, cols = row_index.shape[0], col_index.shape[0]
    y = torch.empty((b, rows, cols), device=x.device, dtype=dtype)
    if y.numel() == 0:
        return y
    block_w, max_block_l = INTERPRETED_TILE if INTERPRETED else (BLOCK_W, MAX_BLOCK_L)
    block_w = min(block_w, triton.next_power_of_2(cols))
    block_l = min(max_block_l, triton.next_power_of_2(labels))
    grid = check_grid((b * rows * triton.cdiv(cols, block_w),))
    upsample_argmax_kernel[grid](
        x,
        row_index.contiguous(),
        row_weight.contiguous(),
        col_index.contiguous(),
        col_weight.contiguous(),
        y,
        rows,
        cols,
        labels,
        *x.stride(),
        *y.stride(),
        BLOCK_W=block_w,
        BLOCK_L=block_l,
        num_warps=NUM_WARPS,
    )
    return y
