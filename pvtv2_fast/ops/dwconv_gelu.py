"""``dwconv_gelu(x, weight, bias, height, width)``: depthwise 3×3 conv + bias + exact GELU on tokens."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ext
from ._dispatch import check_token_map, choose, register_recompute_autograd


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int) -> None:
    check_token_map("dwconv_gelu", x, height, width)
    c = x.shape[2]
    if tuple(weight.shape) != (c, 1, 3, 3):
        raise ValueError(f"dwconv_gelu: weight must be ({c}, 1, 3, 3) for {c} channels, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"dwconv_gelu: bias must be ({c},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"dwconv_gelu: {name} must share x's dtype and device ({x.dtype}, {x.device}), "
                             f"got {t.dtype}, {t.device}")


def dwconv_gelu_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int,
                          relu_input: bool) -> Tensor:
    b, n, c = x.shape
    if relu_input:
        x = F.relu(x)
    grid = x.transpose(1, 2).reshape(b, c, height, width)
    return F.gelu(F.conv2d(grid, weight, bias, padding=1, groups=c)).flatten(2).transpose(1, 2)


@torch.library.custom_op("pvtv2_fast::dwconv_gelu_triton", mutates_args=())
def dwconv_gelu_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int,
                       relu_input: bool) -> Tensor:
    from ..kernels.dwconv_gelu import dwconv_gelu_fwd

    return dwconv_gelu_fwd(x, weight.contiguous(), None if bias is None else bias.contiguous(), height, width,
                           relu_input)


@dwconv_gelu_triton.register_fake
def _(x, weight, bias, height, width, relu_input):
    return x.new_empty(x.shape)


register_recompute_autograd(dwconv_gelu_triton, dwconv_gelu_reference, 3, 3)
if _ext.available():
    register_recompute_autograd("pvtv2_fast_C::dwconv_gelu", dwconv_gelu_reference, 3, 3)


def dwconv_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int,
                relu_input: bool = False, backend: str = "auto") -> Tensor:
    """x: ``(B, N, C)`` tokens of an H×W map; weight ``(C, 1, 3, 3)``; bias ``(C,)`` or None.

    Returns ``GELU(dwconv3x3(ReLU?(x)) + bias)`` as ``(B, N, C)`` (zero padding 1, exact erf GELU); the fused
    kernel reads and writes the tensor once, with no NCHW round trip.
    """
    _check(x, weight, bias, height, width)
    chosen = choose("dwconv_gelu", backend, (x,), native_op="dwconv_gelu")
    if chosen == "triton":
        return dwconv_gelu_triton(x, weight, bias, height, width, relu_input)
    if chosen in ("cpu", "cuda"):
        return torch.ops.pvtv2_fast_C.dwconv_gelu(x, weight, bias, height, width, relu_input)
    return dwconv_gelu_reference(x, weight, bias, height, width, relu_input)
