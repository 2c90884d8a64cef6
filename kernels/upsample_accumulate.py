"""Separable 2-tap resampling of a channels-last ``(B, R_in, W_in, C)`` map added into an fp32 accumulator
``(B, R, W, C)``: the decode head's sum of per-stage maps resampled to one resolution, without materialising any
stage's resampled map.

Taps as in :mod:`resample`: output row ``r`` reads source rows ``row_index[r, 0..1]`` with weights
``row_weight[r, 0..1]``, output column ``c`` source columns ``col_index[c, 0..1]`` with ``col_weight[c, 0..1]``.
Each program owns one output row, ``BLOCK_W`` columns and ``BLOCK_C`` channels (loads along channels are
contiguous). Arithmetic in fp32, rows first: ``t = x[r0]·rw0 + x[r1]·rw1`` at both source columns, then
``acc += t0·cw0 + t1·cw1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import MAX_GRID_AXIS12, check_grid
from .resample import load_taps

# Tiles, defined once here; kernels/aot.py compiles exactly these.
BLOCK_W = 32
MAX_BLOCK_C = 64
NUM_WARPS = 4  # 8 warps spill a few bytes in fp16 on sm_90 (kernels/aot.py); 4: ~185 registers, no spills
INTERPRETED_TILE = (128, 256)  # (BLOCK_W, max BLOCK_C): the interpreter pays per program


@triton.jit(do_not_specialize=["R", "W_out"])
def upsample_accumulate_kernel(
    X,
    RowIndex,
    RowWeight,
    ColIndex,
    ColWeight,
    Acc,
    R,
    W_out,
    C,
    stride_xb,
    stride_xr,
    stride_xw,
    stride_xc,
    stride_ab,
    stride_ar,
    stride_aw,
    stride_ac,
    FIRST: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # ((b·R + r) · W-blocks + w-block)
    n_wb = tl.cdiv(W_out, BLOCK_W)
    row = pid // n_wb
    b = row // R
    r = row % R
    offs_w = (pid % n_wb) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_w = offs_w < W_out
    mask = mask_w[:, None] & (offs_c < C)[None, :]

    r0, r1, rw0, rw1, c0, c1, cw0, cw1 = load_taps(RowIndex, RowWeight, ColIndex, ColWeight, r, offs_w, mask_w)

    image = X + b.to(tl.int64) * stride_xb  # 64-bit: large maps pass 2³¹ elements
    row0 = image + r0 * stride_xr
    row1 = image + r1 * stride_xr
    lane = (offs_c * stride_xc)[None, :]
    col0 = (c0 * stride_xw)[:, None] + lane
    col1 = (c1 * stride_xw)[:, None] + lane
    x00 = tl.load(row0 + col0, mask=mask, other=0.0).to(tl.float32)
    x10 = tl.load(row1 + col0, mask=mask, other=0.0).to(tl.float32)
    x01 = tl.load(row0 + col1, mask=mask, other=0.0).to(tl.float32)
    x11 = tl.load(row1 + col1, mask=mask, other=0.0).to(tl.float32)
    t0 = x00 * rw0 + x10 * rw1
    t1 = x01 * rw0 + x11 * rw1
    v = t0 * cw0 + t1 * cw1

    acc = (
        Acc
        + b.to(tl.int64) * stride_ab
        + r.to(tl.int64) * stride_ar
        + (offs_w * stride_aw)[:, None]
        + (offs_c * stride_ac)[None, :]
    )
    if not FIRST:
        v += tl.load(acc, mask=mask, other=0.0)
    tl.store(acc, v, mask=mask)


def upsample_accumulate_fwd(
    xs, row_index, row_weight, col_index, col_weight, bias: torch.Tensor | None, relu: bool
) -> torch.Tensor:
    """``xs``: maps ``(B, R_i, W_i, C)`` (any strides), per map taps ``(R, 2)`` / ``(W, 2)`` (int64 index, float32
    weight) → ``(B, R, W, C)`` in the maps' dtype: ``ReLU?(Σ_i resample(xs[i]) + bias)``, summed in fp32."""
    from . import INTERPRETED

    b, _, _, c = xs[0].shape
    rows, cols = row_index[0].shape[0], col_index[0].shape[0]
    acc = torch.empty((b, rows, cols, c), device=xs[0].device, dtype=torch.float32)
    if acc.numel() == 0:
        return acc.to(xs[0].dtype)
    block_w, max_block_c = INTERPRETED_TILE if INTERPRETED else (BLOCK_W, MAX_BLOCK_C)
    block_w = min(block_w, triton.next_power_of_2(cols))
    block_c = min(max_block_c, triton.next_power_of_2(c))
    grid = check_grid((b * rows * triton.cdiv(cols, block_w), triton.cdiv(c, block_c)))
    if grid[1] > MAX_GRID_AXIS12:
        raise ValueError(f"upsample_accumulate: {c} channels need {grid[1]} channel blocks")
    for i, x in enumerate(xs):
        upsample_accumulate_kernel[grid](
            x,
            row_index[i].contiguous(),
            row_weight[i].contiguous(),
            col_index[i].contiguous(),
            col_weight[i].contiguous(),
            acc,
            rows,
            cols,
            c,
            *x.stride(),
            *acc.stride(),
            FIRST=i == 0,
            BLOCK_W=block_w,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS,
        )
    if bias is not None:
        acc += bias.float()
    if relu:
        acc.relu_()
    return acc.to(xs[0].dtype)
