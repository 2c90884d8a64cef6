"""``dwconv_gelu(x, weight, bias, height, width)``: depthwise 3×3 conv + bias + exact GELU on tokens."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_params, check_token_map
from .registry import define, register_native, register_recompute_autograd, triton_why_not


def dwconv_gelu_reference(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int, relu_input: bool
) -> Tensor:
    """The PyTorch composition (transformers' and timm's math): tokens → NCHW map → conv → GELU → tokens."""
    b, n, c = x.shape
    if relu_input:
        x = F.relu(x)
    grid = x.transpose(1, 2).reshape(b, c, height, width)
    # GELU on the token view, as transformers and timm apply it: PyTorch's CPU GELU rounds differently on the
    # conv's channels-last 4-D output than on the same values seen as (B, N, C) (up to 2.4e-7 here).
    return F.gelu(F.conv2d(grid, weight, bias, padding=1, groups=c).flatten(2).transpose(1, 2))


@torch.library.custom_op("pvtv2_fast::dwconv_gelu_triton", mutates_args=())
def dwconv_gelu_triton(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], height: int, width: int, relu_input: bool
) -> Tensor:
    from ..kernels.dwconv_gelu import dwconv_gelu_fwd

    return dwconv_gelu_fwd(
        x, weight.contiguous(), None if bias is None else bias.contiguous(), height, width, relu_input
    )


@dwconv_gelu_triton.register_fake
def _(x, weight, bias, height, width, relu_input):
    return x.new_empty(x.shape)


OP = define("dwconv_gelu", dwconv_gelu_reference)
register_recompute_autograd(dwconv_gelu_triton, dwconv_gelu_reference, 3, 3)
OP.register("triton", dwconv_gelu_triton, triton_why_not)
register_native(OP, "dwconv_gelu", 3, 3)


def dwconv_gelu(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    height: int,
    width: int,
    relu_input: bool = False,
    backend: str = "auto",
) -> Tensor:
    """x: ``(B, N, C)`` tokens of an H×W map; weight ``(C, 1, 3, 3)``; bias ``(C,)`` or None.

    Returns ``GELU(dwconv3x3(ReLU?(x)) + bias)`` as ``(B, N, C)`` (zero padding 1, exact erf GELU); the fused
    kernels read and write the tensor once, with no NCHW round trip.
    """
    check_token_map("dwconv_gelu", x, height, width)
    c = x.shape[2]
    if c == 0:
        raise ValueError("dwconv_gelu: a depthwise conv of no channels (C = 0) is an error, as in F.conv2d")
    check_params("dwconv_gelu", x, {"weight": (weight, (c, 1, 3, 3)), "bias": (bias, (c,))}, f" for {c} channels")
    if not isinstance(relu_input, bool):
        raise TypeError(f"dwconv_gelu: relu_input must be a bool, got {relu_input!r}")
    return OP(backend, x, weight, bias, height, width, relu_input)
