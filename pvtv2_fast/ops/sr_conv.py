"""``sr_conv(x, weight, bias, height, width)``: the spatial-reduction conv of SRA, a stride-s s×s conv (no padding)
of a token map, tokens in and tokens out."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .checks import check_conv_params, check_token_map
from .packing import with_packed_weight
from .registry import define, register_native
from .token_conv import token_conv_reference


def sr_conv_reference(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int, packed: Optional[Tensor] = None
) -> Tensor:
    """``F.conv2d`` at stride s on the channels-last view of the tokens (what the fast path ran before this op;
    oneDNN's convolution on CPU), back to ``(B, M, Co)`` tokens: :func:`token_conv_reference` without padding.
    ``packed`` is not used."""
    s = weight.shape[2]
    return token_conv_reference(x, weight, bias, height, width, s, 0)


# "auto" takes the C++ kernel for fp32 calls of up to this many FLOPs (2·B·M·Co·s²·Ci). Against oneDNN's prepacked
# convolution through ops.sr_conv (2 threads, AVX-512, interleaved): 1.03-1.41x from 6 to 34 MFLOP (224²'s stages of
# b0 / b2 but b2's last, b0's 128² stage 1, batch 2 at 224²: oneDNN's per-call cost dominates there), level at
# 40-75 MFLOP (0.96-1.05x; b2's C = 320 stage at 224²), 0.83-0.98x from 134 MFLOP up (512² and 1024² stages).
CPU_MAX_FLOPS = 36_000_000


def cpu_kernel_pays(x: Tensor, weight: Tensor, height: int, width: int) -> bool:
    """Whether the C++ kernel measured faster than PyTorch's (oneDNN's) convolution for this call: fp32 (bf16 /
    fp16 keep oneDNN's AMX / native paths) up to CPU_MAX_FLOPS."""
    co, ci, s, _ = weight.shape
    flops = 2 * x.shape[0] * (height // s) * (width // s) * co * s * s * ci
    return x.dtype == torch.float32 and flops <= CPU_MAX_FLOPS


def _cpu_slower(args: Sequence) -> bool:
    x, weight, _, height, width, _ = args
    return not cpu_kernel_pays(x, weight, height, width)


OP = define("sr_conv", sr_conv_reference, stand_ins={"triton": "torch", "cuda": "torch"})
register_native(OP, "sr_conv", 3, 3, devices=("cpu",), slower=_cpu_slower, prepare=with_packed_weight)


def sr_conv(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    height: int,
    width: int,
    packed: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, H·W, Ci)`` tokens of an H×W map; weight ``(Co, Ci, s, s)``, bias ``(Co,)`` or None. Returns the
    ``(B, ⌊H/s⌋·⌊W/s⌋, Co)`` tokens of ``conv2d(map, weight, bias, stride=s)`` (rows and columns past the last whole
    window are dropped, as the conv does). ``packed``: :func:`~pvtv2_fast.ops.pack_weight` of the weight, cached by
    the caller (packed per call for the C++ kernel otherwise); for bf16 ``x`` also
    :func:`~pvtv2_fast.ops.pack_weight_pairs` of it, which runs the C++ kernel's bf16 GEMM (bf16 products, fp32 sums,
    one rounding; AVX512-BF16 CPUs), the spatial reduction of ``pvt_block``'s bf16 path.

    ``"cpu"``: a C++ kernel (fp32 compute; bf16 / fp16 through fp32 copies) whose register tiles of output pixels ×
    64 channels read each window's rows in place (channels-last: s·Ci contiguous values per kernel row). On CUDA,
    cuDNN's convolution stands in.
    """
    check_token_map("sr_conv", x, height, width)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"sr_conv: weight must be (Co, Ci, s, s), got {getattr(weight, 'shape', type(weight))}")
    s = weight.shape[2]
    if s < 1 or s > height or s > width:
        raise ValueError(f"sr_conv: a {s}×{s} kernel does not fit in a {height}×{width} map")
    check_conv_params("sr_conv", x, weight, bias, packed)
    return OP(backend, x, weight, bias, height, width, packed)
