"""``pack_weight(weight)``: a weight matrix in the layout of the C++ packed-weight GEMM (csrc/cpu/packed_gemm.h),
the one place that defines it. Used by ``sr_conv`` (the spatial-reduction conv) and ``conv_ffn`` (fc1 / fc2);
modules cache the packed copies for inference."""

from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor

# Output channels per block (csrc/include/pvtv2/packing.h: kPackBlock).
PACK_BLOCK = 64


def packed_shape(out_features: int, in_features: int) -> Tuple[int, int, int]:
    """The shape :func:`pack_weight` gives a weight of ``out_features`` outputs over ``in_features`` (K) inputs."""
    return -(-out_features // PACK_BLOCK), in_features, PACK_BLOCK


def pack_weight(weight: Tensor) -> Tensor:
    """A linear weight ``(N, K)``, or a conv weight ``(Co, Ci, s, s)`` (K = s·s·Ci in (kh, kw, ci) order, a window's
    channels-last order), as ``(ceil(N / 64), K, 64)``: blocks of 64 output channels, each its ``(K, 64)`` values
    contiguous, zero past N. Same dtype and device as ``weight``; detached (a copy for the forward kernels: gradients
    flow through the ops' recomputed reference)."""
    weight = weight.detach()
    if weight.ndim == 4:
        co, ci, kh, kw = weight.shape
        weight = weight.permute(0, 2, 3, 1).reshape(co, kh * kw * ci)
    if weight.ndim != 2:
        raise ValueError(f"pack_weight: expected a (N, K) or (Co, Ci, s, s) weight, got {tuple(weight.shape)}")
    n, k = weight.shape
    blocks = packed_shape(n, k)[0]
    padded = F.pad(weight.t(), (0, blocks * PACK_BLOCK - n))  # (K, blocks·64)
    return padded.reshape(k, blocks, PACK_BLOCK).transpose(0, 1).contiguous()
