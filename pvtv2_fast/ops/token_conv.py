"""``token_conv(x, weight, bias, height, width, stride, padding)``: a strided k×k convolution with zero padding of a
token map, tokens in and tokens out — the overlapping patch embedding's conv on the previous stage's tokens."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_conv_params, check_token_map
from .packing import with_packed_weight
from .registry import define, register_native


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """The conv's output rows (or columns) for ``size`` input ones, as ``F.conv2d`` computes them."""
    return (size + 2 * padding - kernel) // stride + 1


def token_conv_reference(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    height: int,
    width: int,
    stride: int,
    padding: int,
    packed: Optional[Tensor] = None,
) -> Tensor:
    """``F.conv2d`` on the channels-last view of the tokens (oneDNN's convolution on CPU), back to ``(B, Ho·Wo, Co)``
    tokens. ``packed`` is not used."""
    b, _, c = x.shape
    grid = x.reshape(b, height, width, c).permute(0, 3, 1, 2)
    return F.conv2d(grid, weight, bias, stride=stride, padding=padding).flatten(2).transpose(1, 2)


def cpu_kernel_pays(x: Tensor, weight: Tensor, height: int, width: int, stride: int, padding: int) -> bool:
    """Whether "auto" takes the C++ kernel over oneDNN's prepacked convolution: fp32 calls of at least
    :data:`CPU_MIN_OUT` output channels and up to :data:`CPU_MAX_FLOPS` (:data:`CPU_MAX_FLOPS_ON_IMAGE` for convs of
    the image itself, fewer than :data:`CPU_MIN_IN` input channels), where it measured faster inside a model's
    forward. bf16 and fp16 keep oneDNN's native paths (bf16 with the weight packed in pairs measured level with
    oneDNN's bf16 convolution, the same sums bit for bit)."""
    co, ci, k, _ = weight.shape
    ho, wo = output_size(height, k, stride, padding), output_size(width, k, stride, padding)
    flops = 2 * x.shape[0] * ho * wo * co * k * k * ci
    limit = CPU_MAX_FLOPS if ci >= CPU_MIN_IN else CPU_MAX_FLOPS_ON_IMAGE
    return x.dtype == torch.float32 and co >= CPU_MIN_OUT and flops <= limit


# Measured per embedding inside the model's forward (the rule toggled per call, interleaved; 2 threads, AVX-512, fp32;
# README, "CPU patch embeddings"). The 3×3 ones on a stage's map: 1.10-1.39x oneDNN's prepacked convolution from 29 to
# 145 MFLOP (b0 / b2 at 224²), 0.98-1.09x from 151 to 289 (b0 at 512², b0 / b2 at batch 2-8), 0.93-1.02x above (b2
# at 512², 604-755 MFLOP). The first, 7×7 on the image's 3 channels, where oneDNN has a kernel of its own: 1.09-1.27x
# up to 118 MFLOP (b2 at 224², batch 1-2), 0.92x at 236 (batch 4), 0.81x at 308 (512²); and on 32 output channels
# (b0's: half-width register tiles) 0.69-0.99x at any size.
CPU_MAX_FLOPS = 300_000_000
CPU_MAX_FLOPS_ON_IMAGE = 150_000_000
CPU_MIN_IN = 8
CPU_MIN_OUT = 64


def _cpu_slower(args: Sequence) -> bool:
    x, weight, _, height, width, stride, padding, _ = args
    return not cpu_kernel_pays(x, weight, height, width, stride, padding)


OP = define("token_conv", token_conv_reference, stand_ins={"triton": "torch", "cuda": "torch"})
register_native(OP, "token_conv", 3, 5, devices=("cpu",), slower=_cpu_slower, prepare=with_packed_weight)


def token_conv(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    height: int,
    width: int,
    stride: int,
    padding: int,
    packed: Optional[Tensor] = None,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, H·W, Ci)`` tokens of an H×W map; weight ``(Co, Ci, k, k)``, bias ``(Co,)`` or None. Returns the
    ``(B, Ho·Wo, Co)`` tokens of ``conv2d(map, weight, bias, stride=stride, padding=padding)`` (zero padding; ``Ho =
    (H + 2·padding - k) // stride + 1``, likewise ``Wo``). ``packed``: :func:`~pvtv2_fast.ops.pack_weight` of the
    weight, cached by the caller (packed per call for the C++ kernel otherwise); for bf16 ``x`` with an even ``Ci``
    also :func:`~pvtv2_fast.ops.pack_weight_pairs` of it (bf16 products, fp32 sums, one rounding; AVX512-BF16 CPUs).

    ``"cpu"``: a C++ kernel (fp32 compute; bf16 / fp16 through fp32 copies) that copies the map once with its zero
    border, then runs the packed-weight GEMM's register tiles of output pixels × 64 channels on each window's rows in
    place (channels-last: k·Ci contiguous values per kernel row), as ``sr_conv`` does. On CUDA, cuDNN's convolution
    stands in.
    """
    check_token_map("token_conv", x, height, width)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"token_conv: weight must be (Co, Ci, k, k), got {getattr(weight, 'shape', type(weight))}")
    if not (isinstance(stride, int) and isinstance(padding, int) and stride >= 1 and padding >= 0):
        raise ValueError(f"token_conv: stride must be an int >= 1 and padding an int >= 0, got {stride!r}, {padding!r}")
    k = weight.shape[2]
    if k < 1 or k > height + 2 * padding or k > width + 2 * padding:
        raise ValueError(f"token_conv: a {k}×{k} kernel does not fit in a {height}×{width} map padded by {padding}")
    check_conv_params("token_conv", x, weight, bias, packed)
    return OP(backend, x, weight, bias, height, width, stride, padding, packed)
