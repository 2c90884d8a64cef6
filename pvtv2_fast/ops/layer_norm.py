"""``layer_norm(x, weight, bias, eps)``: LayerNorm over the channels of ``(B, N, C)`` tokens."""

from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .checks import check_params, check_tokens
from .registry import define, register_native


def layer_norm_reference(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """PyTorch's ``F.layer_norm`` over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


# On CUDA PyTorch's LayerNorm is already one fused kernel: it stands in for the Triton and CUDA backends there.
OP = define("layer_norm", layer_norm_reference, stand_ins={"triton": "torch", "cuda": "torch"})
register_native(OP, "layer_norm", 3, 1, devices=("cpu",))


def layer_norm(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-6, backend: str = "auto"
) -> Tensor:
    """x: ``(B, N, C)`` tokens → ``(B, N, C)``, each token normalised over its C channels (mean 0, variance 1, then
    ``· weight + bias``; either may be None); what ``nn.LayerNorm(C, eps)`` computes. The C++ CPU kernel keeps the
    moments in fp32 and reads / writes bf16 natively."""
    check_tokens("layer_norm", "x", x)
    if x.shape[2] < 1:
        raise ValueError("layer_norm: x has no channels to normalise (C = 0)")
    check_params("layer_norm", x, {"weight": (weight, (x.shape[2],)), "bias": (bias, (x.shape[2],))})
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"layer_norm: eps must be a finite number >= 0, got {eps!r}")
    return OP(backend, x, weight, bias, float(eps))
