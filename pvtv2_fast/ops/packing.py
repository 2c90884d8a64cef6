"""``pack_weight(weight)``: a weight matrix in the layout of the C++ packed-weight GEMM (csrc/cpu/packed_gemm.h),
the one place that defines it. Used by ``sr_conv`` and ``token_conv`` (the spatial-reduction and patch-embedding
convs) and ``conv_ffn`` (fc1 / fc2);
modules cache the packed copies for inference. ``pack_weight_pairs(weight)``: a bf16 weight in the layout of the bf16
GEMM (csrc/cpu/packed_gemm_bf16.cpp), which ``pvt_block`` runs on CPUs with AVX512-BF16."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Output channels per block (csrc/include/pvtv2/packing.h: kPackBlock).
PACK_BLOCK = 64


def packed_shape(out_features: int, in_features: int, pairs: bool = False) -> Tuple[int, ...]:
    """The shape :func:`pack_weight` (or with ``pairs``, :func:`pack_weight_pairs`) gives a weight of
    ``out_features`` outputs over ``in_features`` (K) inputs."""
    blocks = -(-out_features // PACK_BLOCK)
    return (blocks, in_features // 2, PACK_BLOCK, 2) if pairs else (blocks, in_features, PACK_BLOCK)


def in_pairs(packed: Optional[Tensor]) -> bool:
    """Whether ``packed`` is in :func:`pack_weight_pairs`' layout (4-D) rather than :func:`pack_weight`'s (3-D);
    False for None (not packed)."""
    return getattr(packed, "ndim", 3) == 4


def _as_matrix(weight: Tensor, what: str) -> Tensor:
    """A linear weight as is, a conv weight ``(Co, Ci, s, s)`` as ``(Co, s·s·Ci)`` in (kh, kw, ci) order; detached."""
    weight = weight.detach()
    if weight.ndim == 4:
        co, ci, kh, kw = weight.shape
        weight = weight.permute(0, 2, 3, 1).reshape(co, kh * kw * ci)
    if weight.ndim != 2:
        raise ValueError(f"{what}: expected a (N, K) or (Co, Ci, s, s) weight, got {tuple(weight.shape)}")
    return weight


def pack_weight(weight: Tensor) -> Tensor:
    """A linear weight ``(N, K)``, or a conv weight ``(Co, Ci, s, s)`` (K = s·s·Ci in (kh, kw, ci) order, a window's
    channels-last order), as ``(ceil(N / 64), K, 64)``: blocks of 64 output channels, each its ``(K, 64)`` values
    contiguous, zero past N. Same dtype and device as ``weight``; detached (a copy for the forward kernels: gradients
    flow through the ops' recomputed reference)."""
    weight = _as_matrix(weight, "pack_weight")
    n, k = weight.shape
    blocks = packed_shape(n, k)[0]
    padded = F.pad(weight.t(), (0, blocks * PACK_BLOCK - n))  # (K, blocks·64)
    return padded.reshape(k, blocks, PACK_BLOCK).transpose(0, 1).contiguous()


def pack_weight_pairs(weight: Tensor) -> Tensor:
    """A bf16 weight, ``(N, K)`` or ``(Co, Ci, s, s)`` as in :func:`pack_weight`, as ``(ceil(N / 64), K / 2, 64, 2)``:
    :func:`pack_weight`'s blocks with each column's consecutive k side by side, the operand of AVX512-BF16's pair dot
    product (one 32-bit broadcast of an input row's two values against 16 columns' pairs). K must be even."""
    weight = _as_matrix(weight, "pack_weight_pairs")
    if weight.dtype != torch.bfloat16 or weight.shape[1] % 2:
        raise ValueError(
            f"pack_weight_pairs: expected a bf16 weight with an even K, got {weight.dtype} {tuple(weight.shape)}"
        )
    blocks, k, _ = packed_shape(*weight.shape)
    return pack_weight(weight).view(blocks, k // 2, 2, PACK_BLOCK).transpose(2, 3).contiguous()


def with_packed_weight(args: tuple) -> tuple:
    """A conv op's kernel arguments ``(x, weight, ..., packed)`` (``sr_conv``, ``token_conv``): the kernel requires
    the packed weight; packed here (:func:`pack_weight`) when the caller passed None."""
    *rest, packed = args
    return (*rest, pack_weight(rest[1]) if packed is None else packed)
